"""Applying updates to parameters, purely or in place, and copying trees into trees."""

from __future__ import annotations

from typing import Any

import torch

from torchopt_fn._base import Params, Updates
from torchopt_fn._branch import branch
from torchopt_fn.tree._flatten import flatten_like, leaf_paths, path_str, tree_flatten, tree_map
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = [
    "apply_updates",
    "apply_updates_",
    "copy_into_",
    "incremental_update",
    "periodic_update",
]


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return ``params + updates``, each result cast back to its parameter's dtype.

    Pure: nothing is modified. A `None` update leaves its parameter as it is. Every update
    must have its parameter's shape.

    Raises:
        ValueError: the trees differ, or an update's shape differs from its parameter's.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
        {'w': tensor([1.5000, 0.0000])}
    """
    return map_leaves(
        lambda ops, us, ps: ops.add(ps, cast_like(us, ps)),
        updates,
        params,
        keep=(0,),
        complex_as_real=True,
        what="apply_updates",
    )


def apply_updates_(params: Params, updates: Updates) -> Params:
    """Add ``updates`` into ``params`` in place (the adapter's variant) and return ``params``.

    Everything is checked before the first parameter changes.

    Raises:
        ValueError: the trees differ, or an update's shape differs from its parameter's.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> p = {"w": torch.ones(2)}
        >>> _ = tf.apply_updates_(p, {"w": torch.tensor([0.5, -1.0])})
        >>> p["w"]
        tensor([1.5000, 0.0000])
    """

    def add_(ops, us: list, ps: list) -> None:
        us = cast_like(us, ps)
        with torch.no_grad():
            if ops.foreach:
                torch._foreach_add_(ps, us)
            else:
                for p, u in zip(ps, us):
                    p.add_(u)

    map_leaves(
        add_, updates, params, complex_as_real=True, sparse_updates=True, what="apply_updates_"
    )
    return params


def copy_into_(dst: Any, src: Any) -> Any:
    """Copy every tensor leaf of ``src`` into the matching leaf of ``dst`` in place; return ``dst``.

    Leaves that are the same object, or `None`, are skipped.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> dst = {"w": torch.zeros(2)}
        >>> tf.copy_into_(dst, {"w": torch.ones(2)})["w"]
        tensor([1., 1.])
    """
    pairs = copy_pairs(dst, src, "copy_into_")
    with torch.no_grad():
        for d, s in pairs:
            d.copy_(s)
    return dst


def copy_pairs(dst: Any, src: Any, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (destination, source) tensor leaves of ``dst`` and ``src`` that need a copy."""
    dst_leaves, spec = tree_flatten(dst)
    src_leaves = flatten_like(spec, dst, src, what)
    pairs = [
        (d, s)
        for d, s in zip(dst_leaves, src_leaves)
        if isinstance(d, torch.Tensor) and isinstance(s, torch.Tensor) and d is not s
    ]
    if any(d.shape != s.shape for d, s in pairs):
        for path, d, s in zip(leaf_paths(dst), dst_leaves, src_leaves):
            if isinstance(d, torch.Tensor) and isinstance(s, torch.Tensor) and d.shape != s.shape:
                raise ValueError(
                    f"{what}: at {path_str(path)} the destination has shape {tuple(d.shape)} "
                    f"and the source {tuple(s.shape)}; nothing is broadcast."
                )
    return pairs


def incremental_update(new_tensors: Params, old_tensors: Params, step_size: Any) -> Params:
    """Polyak averaging: ``step_size * new + (1 - step_size) * old`` leaf by leaf.

    For target networks and EMA weights. `None` leaves of ``new_tensors`` stay `None`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.incremental_update({"w": torch.ones(1)}, {"w": torch.zeros(1)}, 0.1)
        {'w': tensor([0.1000])}
    """
    return tree_map(
        lambda new, old: step_size * new + (1.0 - step_size) * old, new_tensors, old_tensors
    )


def periodic_update(
    new_tensors: Params, old_tensors: Params, steps: Any, update_period: int
) -> Params:
    """``new_tensors`` on the steps that are multiples of ``update_period``, else ``old_tensors``.

    ``steps`` may be a tensor: under `torch.compile` and `torch.func.vmap` both are
    computed and ``torch.where`` picks.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.periodic_update({"w": torch.ones(1)}, {"w": torch.zeros(1)}, torch.tensor(3), 2)
        {'w': tensor([0.])}
    """
    return branch(steps % update_period == 0, lambda: new_tensors, lambda: old_tensors)
