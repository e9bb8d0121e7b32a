"""`ravel_tree`: every leaf of a tree in one flat tensor, and the views to get the tree back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from torchopt_fn.tree._flatten import _loop_flatten, tree_flatten, tree_unflatten

__all__ = ["ravel_parameters_", "ravel_tree"]

Tree = Any


def ravel_tree(tree: Tree) -> tuple[torch.Tensor, Callable[[torch.Tensor], Tree]]:
    """Concatenate every tensor leaf of ``tree`` into one flat tensor; return it and the inverse.

    ``unravel(flat)`` rebuilds the tree from *views* into ``flat`` (no copy), so a loss written
    on the tree can be differentiated with respect to ``flat`` and yields one flat gradient.
    Optimizing the flat tensor instead of the tree is the same algorithm for element-wise
    optimizers (`sgd`, `adam`, `adamw`, `lion`, `rmsprop`, ...) and global-norm clipping, and
    makes `compile_step` trace and compile one tensor instead of hundreds (docs: "Speed").
    It is not the same for per-tensor transforms (`lamb`, `lars`, `adafactor`,
    `scale_by_trust_ratio`, masks).

    Raises:
        ValueError: if the leaves do not share one dtype and device, or a leaf is not a tensor.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> flat, unravel = tf.ravel_tree({"b": torch.zeros(2), "w": torch.ones(2, 2)})
        >>> flat
        tensor([0., 0., 1., 1., 1., 1.])
        >>> unravel(flat)["w"].shape
        torch.Size([2, 2])
    """
    # The loop's spec when it can (it also rebuilds inside a compiled function), else optree's.
    leaves, spec = _loop_flatten(tree) or tree_flatten(tree)
    tensors = [x for x in leaves if x is not None]
    for x in tensors:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"ravel_tree: every leaf must be a tensor or None, got {type(x)}.")
    kinds = {(x.dtype, x.device) for x in tensors}
    if len(kinds) > 1:
        raise ValueError(
            "ravel_tree: the leaves must share one dtype and device to share one buffer; got "
            f"{sorted(str(k) for k in kinds)}. Ravel each group separately (e.g. with `partition`)."
        )
    shapes = [x.shape for x in tensors]
    sizes = [x.numel() for x in tensors]
    total = sum(sizes)
    flat = torch.cat([x.reshape(-1) for x in tensors]) if tensors else torch.zeros(0)

    def unravel(flat: torch.Tensor) -> Tree:
        if flat.shape != (total,):
            raise ValueError(f"unravel: expected shape ({total},), got {tuple(flat.shape)}.")
        views = iter(chunk.view(shape) for chunk, shape in zip(flat.split(sizes), shapes))
        return tree_unflatten(spec, [None if x is None else next(views) for x in leaves])

    return flat, unravel


def ravel_parameters_(
    params: Iterable[torch.Tensor], *, grads: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Move tensors (a module's parameters) into one flat buffer, in place.

    Each tensor's data becomes a view of the buffer, in order, so that
    ``compile_step(flatten(tx))`` updates them where they lie, with no copy (and autograd,
    optimizers and ``state_dict`` see the same tensors as before). With ``grads``, each
    ``.grad`` becomes a view of a second flat buffer (zeros, or the current gradient), into
    which backward accumulates in place as long as the gradients are zeroed rather than set to
    `None` (``model.zero_grad(set_to_none=False)``).

    Returns:
        The flat parameters, and the flat gradients (or None).

    Raises:
        ValueError: if the tensors do not share one dtype and device.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> model = torch.nn.Linear(2, 1)
        >>> flat, _ = tf.ravel_parameters_(model.parameters())
        >>> flat.shape, model.weight.data_ptr() == flat.data_ptr()
        (torch.Size([3]), True)
    """
    params = list(params)
    if len({(p.dtype, p.device) for p in params}) > 1:
        raise ValueError("ravel_parameters_: the tensors must share one dtype and device.")
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        flat_grad = torch.zeros_like(flat) if grads else None
        offset = 0
        for p in params:
            n = p.numel()
            p.data = flat[offset : offset + n].view_as(p)
            if flat_grad is not None:
                view = flat_grad[offset : offset + n].view_as(p)
                if p.grad is not None:
                    view.copy_(p.grad)
                p.grad = view
            offset += n
    return flat, flat_grad
