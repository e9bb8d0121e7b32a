"""Numerics with safe gradients: `safe_norm`, `safe_root_mean_squares`, `scale_gradient`."""

from __future__ import annotations

from typing import Any

import torch

from torchopt_fn.tree._flatten import tree_map

__all__ = ["safe_norm", "safe_root_mean_squares", "scale_gradient"]


def safe_norm(
    x: torch.Tensor,
    min_norm: float,
    ord: int | float | str | None = None,
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> torch.Tensor:
    """``max(norm(x), min_norm)`` with a finite gradient where the norm is below ``min_norm``.

    The plain norm's gradient at 0 is NaN; here the masked elements are replaced by ones
    before the norm, so the gradient there is 0. ``ord`` and ``axis`` as in
    `torch.linalg.norm` (2, or Frobenius, by default).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.safe_norm(torch.zeros(3), 1e-3), tf.safe_norm(torch.tensor([3.0, 4.0]), 1e-3)
        (tensor(0.0010), tensor(5.))
    """
    norm = torch.linalg.norm(x, ord=ord, dim=axis, keepdim=True)
    masked = torch.where(norm <= min_norm, torch.ones_like(x), x)
    masked_norm = torch.linalg.norm(masked, ord=ord, dim=axis, keepdim=keepdims)
    small = norm if keepdims else norm.reshape(masked_norm.shape)
    return torch.where(small <= min_norm, torch.as_tensor(min_norm, dtype=norm.dtype), masked_norm)


def safe_root_mean_squares(x: torch.Tensor, min_rms: float) -> torch.Tensor:
    """``max(rms(x), min_rms)`` with a finite gradient below ``min_rms`` (see `safe_norm`).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.safe_root_mean_squares(torch.tensor([3.0, 4.0]), 1e-3) ** 2
        tensor(12.5000)
    """
    rms = torch.sqrt(torch.mean(x.abs().square()))
    masked = torch.where(rms <= min_rms, torch.ones_like(x), x)
    masked_rms = torch.sqrt(torch.mean(masked.abs().square()))
    return torch.where(rms <= min_rms, torch.as_tensor(min_rms, dtype=rms.dtype), masked_rms)


def scale_gradient(inputs: Any, scale: float) -> Any:
    """The identity forward; backward, the gradient times ``scale`` (0 stops it).

    Works under autograd and `torch.func` (a sum of a detached and an attached part).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> tf.scale_gradient(w, 0.1).sum().backward()
        >>> w.grad
        tensor([0.1000, 0.1000])
    """
    if scale == 1.0:
        return inputs
    if scale == 0.0:
        return tree_map(torch.Tensor.detach, inputs)
    return tree_map(lambda x: x * scale + (x - x * scale).detach(), inputs)
