"""Applying updates to parameters, purely or in place, and copying trees into trees."""

from __future__ import annotations

from typing import Any

import torch

from torchopt_fn._base import Params, Updates
from torchopt_fn._branch import branch
from torchopt_fn.tree._dtensor import placed_like
from torchopt_fn.tree._flatten import flatten_like, leaf_paths, path_str, tree_flatten, tree_map
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = [
    "apply_updates",
    "apply_updates_",
    "copy_into_",
    "incremental_update",
    "periodic_update",
    "stochastic_round",
]


# The dtypes stochastic rounding applies to: where an update can be smaller than half a unit
# in the last place of the parameter, which rounding to nearest would drop every time.
_LOW_PRECISION = frozenset({torch.bfloat16, torch.float16})


def stochastic_round(
    x: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x`` rounded to ``dtype`` up or down at random, with probabilities that make the
    result unbiased: its expected value is ``x``.

    The two candidates are the nearest ``dtype`` value (what ``x.to(dtype)`` gives) and its
    neighbour on the other side of ``x``; the far one is taken with probability equal to the
    distance to the near one over the gap. Values beyond ``dtype``'s range overflow as
    ``x.to(dtype)`` does; non-finite values pass through. ``generator`` seeds the draws
    eagerly (compiled, torch's global generator draws them).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> x = torch.full((10000,), 1.0 + 2**-10)  # a quarter of bfloat16's gap above 1
        >>> r = tf.stochastic_round(x, torch.bfloat16, torch.Generator().manual_seed(0))
        >>> sorted(set(r.tolist())), round(r.float().mean().item(), 3)
        ([1.0, 1.0078125], 1.001)
    """
    near = x.to(dtype)
    back = near.to(x.dtype)
    toward = torch.where(x > back, torch.inf, -torch.inf).to(dtype)
    other = torch.nextafter(near, toward)
    frac = (x - back) / (other.to(x.dtype) - back)  # in [0, 1/2]; NaN where x is not finite
    if generator is None or torch.compiler.is_compiling():
        draws = torch.rand(x.shape, dtype=x.dtype, device=x.device)
    else:
        draws = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    return torch.where((draws < frac) & other.isfinite(), other, near)


def _rounded_sum(p: torch.Tensor, u: torch.Tensor, generator: torch.Generator | None) -> Any:
    """``p + u`` in float32, stochastically rounded to ``p``'s dtype (a low precision)."""
    return stochastic_round(p.float() + u.float(), p.dtype, generator)


def apply_updates(
    params: Params,
    updates: Updates,
    *,
    stochastic_rounding: bool = False,
    generator: torch.Generator | None = None,
) -> Params:
    """Return ``params + updates``, each result cast back to its parameter's dtype.

    Pure: nothing is modified. A `None` update leaves its parameter as it is. Every update
    must have its parameter's shape.

    With ``stochastic_rounding``, a bfloat16 or float16 parameter gets ``p + u`` computed in
    float32 and rounded to its dtype by `stochastic_round` (seeded by ``generator``): an
    update below half a unit in the last place still moves the parameter on average, where
    rounding to nearest would drop it every step. Other dtypes are unaffected.

    Raises:
        ValueError: the trees differ, or an update's shape differs from its parameter's.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.apply_updates({"w": torch.ones(2)}, {"w": torch.tensor([0.5, -1.0])})
        {'w': tensor([1.5000, 0.0000])}
        >>> p = {"w": torch.ones(1000, dtype=torch.bfloat16)}
        >>> small = {"w": torch.full((1000,), 1e-3)}  # an eighth of bfloat16's gap above 1
        >>> tf.apply_updates(p, small)["w"].eq(1).all().item()  # rounded to nearest: lost
        True
        >>> moved = tf.apply_updates(p, small, stochastic_rounding=True)["w"]
        >>> 0.0 < moved.float().mean().item() - 1 < 2e-3
        True
    """

    def add(ops: Any, us: list, ps: list) -> list:
        us = placed_like(us, ps)
        if not stochastic_rounding or all(p.dtype not in _LOW_PRECISION for p in ps):
            return ops.add(ps, cast_like(us, ps))
        return [
            _rounded_sum(p, u, generator) if p.dtype in _LOW_PRECISION else p + u.to(p.dtype)
            for p, u in zip(ps, us)
        ]

    return map_leaves(
        add,
        updates,
        params,
        keep=(0,),
        complex_as_real=True,
        batchable=not stochastic_rounding,  # random draws are not per member under vmap
        what="apply_updates",
    )


def apply_updates_(
    params: Params,
    updates: Updates,
    *,
    stochastic_rounding: bool = False,
    generator: torch.Generator | None = None,
) -> Params:
    """Add ``updates`` into ``params`` in place (the adapter's variant) and return ``params``.

    Everything is checked before the first parameter changes. ``stochastic_rounding`` and
    ``generator`` are `apply_updates`'s.

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
        us = placed_like(us, ps)
        with torch.no_grad():
            if stochastic_rounding and any(p.dtype in _LOW_PRECISION for p in ps):
                for p, u in zip(ps, us):
                    if p.dtype in _LOW_PRECISION and not u.is_sparse:
                        p.copy_(_rounded_sum(p, u, generator))
                    else:
                        p.add_(u.to(p.dtype))
                return
            us = cast_like(us, ps)
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
