"""Clipping by value and by global norm."""

from __future__ import annotations

from typing import NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import EmptyState, GradientTransformation, record_hyperparams
from torchopt_fn._validate import check_non_negative

__all__ = ["ClipByGlobalNormState", "clip", "clip_by_global_norm"]


@record_hyperparams
def clip(max_delta: float | torch.Tensor) -> GradientTransformation:
    r"""Clip every element to $[-\delta, \delta]$.

    Args:
        max_delta: the bound $\delta \ge 0$.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``max_delta`` is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip(1.0)
        >>> tx.update({"w": torch.tensor([3.0, -0.5])}, tx.init(None))[0]["w"]
        tensor([ 1.0000, -0.5000])
    """
    check_non_negative("max_delta", max_delta)

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(lambda g: torch.clamp(g, -max_delta, max_delta), updates), state

    return GradientTransformation(init_fn, update_fn)


class ClipByGlobalNormState(NamedTuple):
    """State of `clip_by_global_norm`: the global norm of the last updates, before clipping.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.clip_by_global_norm(1.0).init({"w": torch.zeros(2)}).norm
        tensor(0.)
    """

    norm: torch.Tensor


@record_hyperparams
def clip_by_global_norm(max_norm: float | torch.Tensor) -> GradientTransformation:
    r"""Rescale all updates together so their global L2 norm is at most ``max_norm``.

    $u_t = g_t \cdot \min(1, c / \|g_t\|_2)$ where $\|g\|_2$ is taken over all leaves at once.
    The pre-clip norm is kept in the state for logging (``tf.tree_get(state, "norm")``).

    Args:
        max_norm: the bound $c > 0$.

    Returns:
        A `GradientTransformation` with state `ClipByGlobalNormState`.

    Raises:
        ValueError: if ``max_norm`` is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip_by_global_norm(1.0)
        >>> u, s = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"], s.norm
        (tensor([0.6000, 0.8000]), tensor(5.))

    References:
        Pascanu et al., On the difficulty of training recurrent neural networks, ICML 2013.

    torch equivalent: `torch.nn.utils.clip_grad_norm_` (which adds 1e-6 to the norm).
    """
    check_non_negative("max_norm", max_norm)

    def init_fn(params):
        leaves = [x for x in _tree.tree_leaves(params) if isinstance(x, torch.Tensor)]
        dtype = leaves[0].dtype if leaves else torch.float32
        device = leaves[0].device if leaves else None
        return ClipByGlobalNormState(
            norm=torch.zeros((), dtype=torch.promote_types(dtype, torch.float32), device=device)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g_norm = _tree.tree_l2_norm(updates)
        # Divide by max(norm, c) so that no Python branch on a tensor value is needed.
        factor = max_norm / torch.maximum(g_norm, torch.as_tensor(max_norm, dtype=g_norm.dtype))
        out = _tree.map_live(lambda ops, gs: ops.mul(gs, [factor.to(g.dtype) for g in gs]), updates)
        return out, ClipByGlobalNormState(norm=g_norm.to(state.norm.dtype))

    return GradientTransformation(init_fn, update_fn)
