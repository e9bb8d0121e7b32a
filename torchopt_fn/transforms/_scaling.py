"""Scaling by constants, learning rates, schedules, and the Polyak step size."""

from __future__ import annotations

from typing import NamedTuple

import torch

from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    Schedule,
    empty_init,
    init_count,
)
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import is_schedule, step_scalar
from torchopt_fn._validate import check_non_negative, check_number
from torchopt_fn.tree._math import norms_squared_sum, tree_l2_norm
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "ScaleByScheduleState",
    "ScaleState",
    "normalize_by_update_norm",
    "scale",
    "scale_by_learning_rate",
    "scale_by_polyak",
    "scale_by_schedule",
]


def _scaled(updates, factor):
    return map_leaves(
        lambda ops, gs: ops.mul(gs, factor),
        updates,
        complex_as_real=True,
        sparse_updates=True,  # a scaling keeps the sparsity: SparseAdam's lr stage
        batchable=True,
        what="scale",
    )


@record_hyperparams
def scale(step_size: Scalar) -> GradientTransformation:
    r"""Multiply every update by a constant: $u_t = \alpha g_t$.

    Args:
        step_size: the factor $\alpha$, a float or a 0-d tensor.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale(-0.1)
        >>> tx.update({"w": torch.tensor([1.0, 2.0])}, tx.init(None))[0]["w"]
        tensor([-0.1000, -0.2000])
    """
    check_number("step_size", step_size)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _scaled(updates, step_size), state

    return GradientTransformation(empty_init, update_fn)


class ScaleByScheduleState(NamedTuple):
    """State of `scale_by_schedule`: the number of steps taken.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_schedule(lambda t: 0.1).init({"w": torch.zeros(1)})
        ScaleByScheduleState(count=tensor(0))
    """

    count: torch.Tensor


@record_hyperparams
def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    r"""Multiply updates by a schedule of the step count: $u_t = s(t) g_t$, $t = 0, 1, \dots$

    Args:
        step_size_fn: a function of the 0-d integer count returning the factor.

    Returns:
        A `GradientTransformation` whose state counts steps.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_schedule(lambda t: 0.5 ** t)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for _ in range(3):
        ...     u, state = tx.update({"w": torch.ones(1)}, state)
        >>> u["w"]
        tensor([0.2500])
    """
    if not callable(step_size_fn):
        raise TypeError(f"step_size_fn must be a function of the count, got {step_size_fn!r}.")

    def init_fn(params):
        return ScaleByScheduleState(count=init_count(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        factor = step_scalar(step_size_fn(state.count))
        return _scaled(updates, factor), ScaleByScheduleState(count=state.count + 1)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    r"""Scale by the (negated) learning rate: $u_t = -\eta_t g_t$.

    Args:
        learning_rate: a float, a 0-d tensor, or a schedule of the step count.
        flip_sign: negate, so that `apply_updates` descends (the default).

    Returns:
        `scale` for a constant, `scale_by_schedule` for a schedule.

    Raises:
        ValueError: if a constant learning rate is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_learning_rate(0.1)
        >>> tx.update({"w": torch.ones(1)}, tx.init(None))[0]["w"]
        tensor([-0.1000])
    """
    check_non_negative("learning_rate", learning_rate)
    sign = -1.0 if flip_sign else 1.0
    if is_schedule(learning_rate):
        return scale_by_schedule(lambda count: sign * learning_rate(count))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        # Negated here, not at construction, so a tensor learning rate changed in place counts.
        return _scaled(updates, sign * learning_rate), state

    return GradientTransformation(empty_init, update_fn)


@record_hyperparams
def scale_by_polyak(
    f_min: Scalar = 0.0,
    max_learning_rate: Scalar = 1.0,
    eps: Scalar = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    r"""Scale updates by the Polyak step size, from the loss ``value`` given to ``update``.

    $u_t = \gamma_t g_t$ with $\gamma_t = \min\big((f(x_t) - f^\star) / (\|g_t\|^2 + \epsilon),
    \gamma_{max}\big)$ (``"sps"``), or with the gap $f(x_t) - f^\star$ clipped at 0 (``"sps+"``).
    $\gamma_t = 0$ when $\|g_t\|^2 + \epsilon$ is below float64's machine epsilon. Chain
    ``scale(-1.0)`` after it (`torchopt_fn.polyak_sgd` does).

    Args:
        f_min: a lower bound $f^\star$ on the objective.
        max_learning_rate: the largest step $\gamma_{max} \ge 0$.
        eps: added to the squared gradient norm, $\ge 0$.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        A stateless `GradientTransformation` whose ``update`` requires the keyword argument
        ``value`` (the loss at the current parameters, a float or 0-d tensor).

    Raises:
        ValueError: for a negative ``max_learning_rate`` or ``eps`` or an unknown ``variant`` (at
            construction, where optax checks at ``update``); at ``update``, when ``value`` is
            missing.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_polyak()
        >>> g = {"w": torch.tensor([1.0, 1.0])}
        >>> u, _ = tx.update(g, tx.init(g), value=torch.tensor(0.5))
        >>> u["w"]
        tensor([0.2500, 0.2500])

    References:
        Loizou et al., Stochastic Polyak Step-size for SGD: An Adaptive Learning Rate for Fast
        Convergence, AISTATS 2021. https://arxiv.org/abs/2002.10542 — Garrigos et al., Function
        value learning: Adaptive learning rates based on the Polyak stepsize and function
        splitting in ERM, 2023. https://arxiv.org/abs/2307.14528
    """
    check_number("f_min", f_min)
    check_non_negative("max_learning_rate", max_learning_rate)
    check_non_negative("eps", eps)
    if variant not in ("sps", "sps+"):
        raise ValueError(f"variant must be 'sps' or 'sps+', got {variant!r}.")
    tiny = torch.finfo(torch.float64).eps

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "scale_by_polyak needs the loss: call update(updates, state, params, value=loss)."
            )

        def step(ops, gs):
            sq_norm = norms_squared_sum(ops, gs)
            gap = torch.as_tensor(value, device=sq_norm.device).to(sq_norm.dtype) - f_min
            if variant == "sps+":
                gap = torch.clamp(gap, min=0.0)
            denom = sq_norm + eps
            # The unselected branch divides by a safe 1, so gradients through it stay finite.
            safe = torch.where(denom <= tiny, torch.ones_like(denom), denom)
            size = torch.where(
                denom <= tiny,
                torch.zeros_like(denom),
                torch.clamp(gap / safe, max=max_learning_rate),
            )
            return ops.mul(gs, ops.scalar(gs, lambda dt, dev: size.to(dev, dt)))

        return map_leaves(step, updates, batchable=True, what="scale_by_polyak"), state

    return GradientTransformation(empty_init, update_fn)


ScaleState = EmptyState
"""optax's name for the state of `scale` (stateless)."""


@record_hyperparams
def normalize_by_update_norm(
    scale_factor: Scalar = 1.0, eps: Scalar = 1e-6
) -> GradientTransformation:
    r"""Scale the updates to global norm ``scale_factor``: $u \cdot s / (\|u\|_2 + \epsilon)$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.normalize_by_update_norm(eps=0.0)
        >>> tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(None))[0]["w"]
        tensor([0.6000, 0.8000])
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        g_norm = (tree_l2_norm(updates) + eps) / scale_factor
        return map_leaves(
            lambda ops, gs: [g / g_norm.to(g.real.dtype) for g in gs],
            updates,
            what="normalize_by_update_norm",
        ), state

    return GradientTransformation(empty_init, update_fn)


# The `Optimizer` adapter passes these the loss as ``value`` (from ``step(closure)``).
scale_by_polyak.takes_loss = True  # type: ignore[attr-defined]
