"""Reduce on plateau: scale the updates down when the loss ``value`` stops improving."""

from __future__ import annotations

from typing import NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Params, Scalar, params_device
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import step_scalar
from torchopt_fn._validate import (
    check_in_range,
    check_non_negative,
    check_number,
    check_positive,
)
from torchopt_fn.tree._flatten import tree_leaves
from torchopt_fn.tree._ops import map_leaves

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    """State of `reduce_on_plateau`: the scale, the best (averaged) value, the plateau and
    cooldown counters, and the running average of the values of the current accumulation.

    ``scale`` has the params' narrowest floating dtype, ``best_value`` and ``avg_value`` their
    widest (as in optax); the counters are 0-d int64 tensors (optax: int32).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> state = tf.contrib.reduce_on_plateau().init({"w": torch.zeros(2)})
        >>> state.scale, state.best_value, state.plateau_count
        (tensor(1.), tensor(inf), tensor(0))
    """

    scale: torch.Tensor
    best_value: torch.Tensor
    plateau_count: torch.Tensor
    cooldown_count: torch.Tensor
    count: torch.Tensor
    avg_value: torch.Tensor


def _real_dtypes(params: Params) -> list[torch.dtype]:
    """The params' floating dtypes (a complex leaf counts as its real part's dtype)."""
    dtypes = []
    for x in tree_leaves(params):
        if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()):
            dtypes.append(x.dtype.to_real())
    return dtypes or [torch.get_default_dtype()]


def _as(x: Scalar, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


@record_hyperparams
def reduce_on_plateau(
    factor: Scalar = 0.1,
    patience: Scalar = 10,
    rtol: Scalar = 1e-4,
    atol: Scalar = 0.0,
    cooldown: Scalar = 0,
    accumulation_size: Scalar = 1,
    min_scale: Scalar = 0.0,
) -> GradientTransformation:
    r"""Scale the updates by $s_t$, multiplied by ``factor`` whenever the loss plateaus.

    ``update`` takes the loss as the keyword argument ``value``. Every ``accumulation_size``
    calls, the mean $\bar f$ of the values received is compared with the best mean so far,
    $f^\star$ (initially $\infty$): it improves when $\bar f < (1 - \text{rtol}) f^\star -
    \text{atol}$. After ``patience`` comparisons in a row without improvement the scale drops,
    $s \leftarrow \max(\text{factor} \cdot s,\ \text{min\_scale})$, and the next ``cooldown``
    comparisons are ignored (they still record a new best). The updates are $u_t = s_t g_t$
    with the scale after this call's comparison, so chain it after the learning rate:
    ``chain(adam(1e-3), reduce_on_plateau())``.

    The value is detached (the scale is piecewise constant in it, so no gradient is lost) and
    every decision is a ``torch.where`` on 0-d tensors: it compiles with ``fullgraph=True``
    and does not recompile as the counters change.

    torch.optim equivalent: `torch.optim.lr_scheduler.ReduceLROnPlateau` with
    ``mode="min"``, ``patience=patience - 1`` (torch reduces after more than ``patience`` bad
    epochs, optax after exactly ``patience``), ``threshold=rtol, threshold_mode="rel"`` when
    ``atol=0`` or ``threshold=atol, threshold_mode="abs"`` when ``rtol=0``, the same
    ``factor`` and ``cooldown``, ``min_lr=lr * min_scale``; torch has no
    ``accumulation_size`` (average the metric yourself) and skips reductions smaller than its
    ``eps=1e-8``, which this does not.

    Args:
        factor: the factor in $(0, 1)$ the scale is multiplied by on a plateau.
        patience: how many comparisons without improvement make a plateau.
        rtol: the relative improvement needed, in $[0, 1]$.
        atol: the absolute improvement needed, $\ge 0$ (``rtol`` and ``atol`` not both 0).
        cooldown: how many comparisons to ignore after the scale dropped.
        accumulation_size: how many values are averaged into one comparison (1 for a
            validation loss; more for noisy minibatch losses).
        min_scale: the scale below which it does not drop.

    Returns:
        A `GradientTransformation` with state `ReduceLROnPlateauState`, whose ``update``
        requires ``value=loss`` (a number or a 0-d tensor).

    Raises:
        ValueError: for ``factor`` outside $(0, 1)$, a negative or too large tolerance, both
            tolerances 0, a negative ``patience``/``cooldown``, or ``accumulation_size`` < 1;
            at ``update``, when ``value`` is missing.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.reduce_on_plateau(factor=0.5, patience=2)
        >>> g = {"w": torch.tensor([1.0])}
        >>> state = tx.init(g)
        >>> scales = []
        >>> for loss in (3.0, 2.0, 2.0, 2.0, 2.0):
        ...     u, state = tx.update(g, state, value=loss)
        ...     scales.append(u["w"].item())
        >>> scales
        [1.0, 1.0, 1.0, 0.5, 0.5]

    References:
        The Keras/PyTorch ``ReduceLROnPlateau`` callback, as optax's
        ``optax.contrib.reduce_on_plateau``.
        https://pytorch.org/docs/stable/generated/torch.optim.lr_scheduler.ReduceLROnPlateau.html
    """
    check_in_range("factor", factor, 0.0, 1.0, low_inclusive=False)
    check_non_negative("patience", patience)
    check_in_range("rtol", rtol, 0.0, 1.0, high_inclusive=True)
    check_non_negative("atol", atol)
    if not torch.compiler.is_compiling() and float(rtol) == 0.0 and float(atol) == 0.0:
        raise ValueError("At least one of rtol or atol must be positive, got rtol = atol = 0.")
    check_non_negative("cooldown", cooldown)
    check_positive("accumulation_size", accumulation_size)
    check_number("min_scale", min_scale)

    def init_fn(params):
        dtypes = _real_dtypes(params)
        lowest = min(dtypes, key=lambda d: torch.finfo(d).bits)
        highest = max(dtypes, key=lambda d: torch.finfo(d).bits)
        device = params_device(params)
        # Three distinct counters: aliased state tensors would make compiled code guard on
        # the aliasing and recompile once they part.
        zero = lambda: torch.zeros((), dtype=torch.int64, device=device)  # noqa: E731
        return ReduceLROnPlateauState(
            scale=torch.ones((), dtype=lowest, device=device),
            best_value=torch.full((), float("inf"), dtype=highest, device=device),
            plateau_count=zero(),
            cooldown_count=zero(),
            count=zero(),
            avg_value=torch.zeros((), dtype=highest, device=device),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "reduce_on_plateau needs the loss: call update(updates, state, params, value=loss)."
            )
        if isinstance(value, torch.Tensor):
            value = value.detach()
        value = _as(value, state.avg_value)
        count = state.count + 1
        avg = (state.count.to(value.dtype) * state.avg_value + value) / count.to(value.dtype)
        due = count == accumulation_size

        improved = avg < (1 - rtol) * state.best_value - atol
        plateau = torch.where(improved, 0, state.plateau_count + 1)
        cooling = state.cooldown_count > 0
        hit = ~cooling & (plateau == patience)
        reduced = torch.where(hit, state.scale * factor, state.scale).to(state.scale.dtype)
        reduced = torch.where(cooling, state.scale, torch.maximum(reduced, _as(min_scale, reduced)))
        left = torch.where(hit, _as(cooldown, count), 0)
        left = torch.where(cooling, state.cooldown_count - 1, left)

        new = ReduceLROnPlateauState(
            scale=torch.where(due, reduced, state.scale),
            best_value=torch.where(due & improved, avg, state.best_value),
            plateau_count=torch.where(
                due, torch.where(cooling | hit, 0, plateau), state.plateau_count
            ),
            cooldown_count=torch.where(due, left, state.cooldown_count),
            count=torch.where(due, 0, count),
            avg_value=torch.where(due, torch.zeros_like(avg), avg),
        )
        scale = step_scalar(new.scale)
        out = map_leaves(lambda ops, gs: ops.mul(gs, scale), updates, what="reduce_on_plateau")
        return out, new

    return GradientTransformation(init_fn, update_fn)


# The `Optimizer` adapter passes these the loss as ``value`` (from ``step(closure)``).
reduce_on_plateau.takes_loss = True  # type: ignore[attr-defined]
