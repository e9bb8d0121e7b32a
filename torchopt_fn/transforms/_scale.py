"""Scaling by constants, learning rates, schedules and signs."""

from __future__ import annotations

from typing import NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    Schedule,
    record_hyperparams,
)
from torchopt_fn._scalar import step_scalar
from torchopt_fn._validate import check_non_negative
from torchopt_fn.transforms._common import init_count

__all__ = [
    "ScaleByScheduleState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_by_sign",
]


@record_hyperparams
def scale(step_size: float | torch.Tensor) -> GradientTransformation:
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

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_scale(step_size, updates), state

    return GradientTransformation(init_fn, update_fn)


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

    def init_fn(params):
        return ScaleByScheduleState(count=init_count(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        factor = step_scalar(step_size_fn(state.count))
        return _tree.tree_scale(factor, updates), ScaleByScheduleState(count=state.count + 1)

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
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):
        return scale_by_schedule(lambda count: sign * learning_rate(count))

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        # Negated here, not at construction, so a tensor learning rate changed in place counts.
        return _tree.tree_scale(sign * learning_rate, updates), state

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def scale_by_sign() -> GradientTransformation:
    r"""Replace every update by its element-wise sign: $u_t = \operatorname{sign}(g_t)$.

    Chain a learning-rate stage after it for signSGD.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_sign()
        >>> u, _ = tx.update({"w": torch.tensor([0.3, -2.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1., -1.])

    References:
        Bernstein et al., signSGD, ICML 2018. https://arxiv.org/abs/1802.04434
    """

    def init_fn(params):
        del params
        return EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(torch.sign, updates), state

    return GradientTransformation(init_fn, update_fn)
