"""Constraints on updates and parameters: non-negative parameters, NaN-free updates."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import EmptyState, GradientTransformation, empty_init
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import require_params
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "NonNegativeParamsState",
    "ZeroNansState",
    "keep_params_nonnegative",
    "zero_nans",
]


NonNegativeParamsState = EmptyState
"""State of `keep_params_nonnegative` (empty), under optax's name."""


@record_hyperparams
def keep_params_nonnegative() -> GradientTransformation:
    r"""Modify updates so that parameters stay non-negative: $u = -p$ wherever $p + u < 0$.

    Put it last in a chain, after the learning rate, so it sees the final update. Parameters
    that are already negative are moved to 0.

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: at ``update``, when ``params`` is missing.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.keep_params_nonnegative()
        >>> params = {"w": torch.tensor([0.5, 2.0])}
        >>> u, _ = tx.update({"w": torch.tensor([-1.0, -1.0])}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.5000, -1.0000])
    """

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "keep_params_nonnegative")
        out = map_leaves(
            lambda ops, us, ps: [torch.where(p + u < 0, -p.to(u.dtype), u) for u, p in zip(us, ps)],
            updates,
            params,
            batchable=True,
            what="keep_params_nonnegative",
        )
        return out, state

    return GradientTransformation(empty_init, update_fn)


class ZeroNansState(NamedTuple):
    """State of `zero_nans`: per parameter, a 0-d boolean, whether the last update had a NaN.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.zero_nans().init({"w": torch.zeros(2)}).found_nan
        {'w': tensor(False)}
    """

    found_nan: Any


@record_hyperparams
def zero_nans() -> GradientTransformation:
    r"""Replace NaNs in the updates by 0 and record, per parameter, whether any was found.

    The flags are not used by the transformation; read them to notice when NaNs were zeroed
    (``tf.tree_get(state, "found_nan")``). Infinities are left alone.

    Returns:
        A `GradientTransformation` with state `ZeroNansState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.zero_nans()
        >>> g = {"w": torch.tensor([1.0, float("nan")])}
        >>> u, state = tx.update(g, tx.init(g))
        >>> u["w"], state.found_nan["w"]
        (tensor([1., 0.]), tensor(True))
    """

    def init_fn(params):
        return ZeroNansState(
            found_nan=tree_map(lambda p: torch.zeros((), dtype=torch.bool, device=p.device), params)
        )

    def step(ops, gs, flags):
        nans = [torch.isnan(g) for g in gs]
        out = [torch.where(nan, torch.zeros_like(g), g) for g, nan in zip(gs, nans)]
        return out, [nan.any() for nan in nans]

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, found = map_leaves(
            step,
            updates,
            state.found_nan,
            keep=(None, 0),
            shapes={0: lambda shape: ()},
            what="zero_nans",
        )
        return out, ZeroNansState(found_nan=found)

    return GradientTransformation(init_fn, update_fn)
