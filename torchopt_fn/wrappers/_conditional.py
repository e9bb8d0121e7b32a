"""Apply a transformation only on some steps.

`conditionally_transform`, `conditionally_mask` and `apply_if_finite`, with optax's names,
arguments and states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, init_count, params_device
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_non_negative
from torchopt_fn.tree._math import tree_all_finite, tree_zeros_like
from torchopt_fn.tree._ops import check_like

__all__ = [
    "ApplyIfFiniteState",
    "ConditionFn",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "apply_if_finite",
    "conditionally_mask",
    "conditionally_transform",
]

ConditionFn = Callable[..., torch.Tensor | bool]
"""``should_transform_fn(step, **extra_args) -> bool``: a 0-d boolean tensor (or a bool)."""


class ConditionallyTransformState(NamedTuple):
    """State of `conditionally_transform`: the inner state and the number of calls so far.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.conditionally_transform(tf.trace(0.9), lambda step: step % 2 == 0)
        >>> tx.init({"w": torch.zeros(1)}).step
        tensor(0)
    """

    inner_state: Any
    step: torch.Tensor


class ConditionallyMaskState(NamedTuple):
    """State of `conditionally_mask`: the number of calls so far and the inner state.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.conditionally_mask(tf.trace(0.9), lambda step: step % 2 == 0)
        >>> tx.init({"w": torch.zeros(1)}).step
        tensor(0)
    """

    step: torch.Tensor
    inner_state: Any


def _conditional(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool,
    rejected: Callable[[Any], Any],
    make_state: Callable[[torch.Tensor, Any], Any],
    what: str,
) -> GradientTransformation:
    """Run ``inner`` where ``should_transform_fn(step)`` holds; else ``rejected(updates)``."""

    def init_fn(params):
        return make_state(init_count(params), inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        check_like(updates, params, what)
        condition_kwargs = extra_args if forward_extra_args else {}
        new_updates, inner_state = branch(
            should_transform_fn(state.step, **condition_kwargs),
            lambda: inner.update(updates, state.inner_state, params, **extra_args),
            lambda: (rejected(updates), state.inner_state),
        )
        return new_updates, make_state(state.step + 1, inner_state)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def conditionally_transform(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformation:
    """Run ``inner`` only on the steps where ``should_transform_fn(step)`` holds.

    On the other steps the updates pass through unchanged and the inner state is kept (to
    zero them instead, use `conditionally_mask`). ``step`` counts the calls so far (0-d int64).

    Args:
        inner: the transformation to run on some steps.
        should_transform_fn: ``f(step, **extra_args)`` returning a 0-d boolean tensor.
        forward_extra_args: pass ``update``'s extra keyword arguments to
            ``should_transform_fn`` too.

    Returns:
        A `GradientTransformation` with state `ConditionallyTransformState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.conditionally_transform(tf.scale(10.0), lambda step: step >= 1)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.ones(1)}, state)
        ...     print(u["w"])
        tensor([1.])
        tensor([10.])
    """
    return _conditional(
        inner,
        should_transform_fn,
        forward_extra_args,
        rejected=lambda updates: updates,
        make_state=lambda step, inner_state: ConditionallyTransformState(inner_state, step),
        what="conditionally_transform",
    )


@record_hyperparams
def conditionally_mask(
    inner: GradientTransformation,
    should_transform_fn: ConditionFn,
    forward_extra_args: bool = False,
) -> GradientTransformation:
    """Run ``inner`` only on the steps where ``should_transform_fn(step)`` holds, else zero.

    On the other steps the updates are zeros and the inner state is kept (to pass them
    through instead, use `conditionally_transform`).

    Args:
        inner: the transformation to run on some steps.
        should_transform_fn: ``f(step, **extra_args)`` returning a 0-d boolean tensor.
        forward_extra_args: pass ``update``'s extra keyword arguments to
            ``should_transform_fn`` too.

    Returns:
        A `GradientTransformation` with state `ConditionallyMaskState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.conditionally_mask(tf.sgd(1.0), lambda step: step % 2 == 1)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.ones(1)}, state)
        ...     print(u["w"])
        tensor([0.])
        tensor([-1.])
    """
    return _conditional(
        inner,
        should_transform_fn,
        forward_extra_args,
        rejected=tree_zeros_like,
        make_state=ConditionallyMaskState,
        what="conditionally_mask",
    )


class ApplyIfFiniteState(NamedTuple):
    """State of `apply_if_finite`.

    Attributes:
        notfinite_count: consecutive steps whose updates held an inf or a NaN (reset to 0 by
            a finite step).
        last_finite: whether the last step's updates were all finite.
        total_notfinite: steps with an inf or a NaN since ``init`` (never reset).
        inner_state: the inner transformation's state.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.apply_if_finite(tf.adam(0.1), max_consecutive_errors=3)
        >>> tx.init({"w": torch.zeros(1)}).total_notfinite
        tensor(0)
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: Any


@record_hyperparams
def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip steps whose updates hold an inf or a NaN, as `torch.amp.GradScaler` does.

    A skipped step returns zero updates and keeps the inner state, so one bad gradient
    cannot poison Adam's moments. After more than ``max_consecutive_errors`` bad steps in a
    row the update is applied anyway (optax's rule). The state counts bad steps.

    Args:
        inner: the transformation to protect.
        max_consecutive_errors: how many consecutive non-finite steps to skip.

    Returns:
        A `GradientTransformation` with state `ApplyIfFiniteState`.

    Raises:
        ValueError: if ``max_consecutive_errors`` is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.apply_if_finite(tf.adam(0.1), max_consecutive_errors=2)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> u, state = tx.update({"w": torch.tensor([float("nan")])}, state)
        >>> u["w"], state.total_notfinite
        (tensor([0.]), tensor(1))
    """
    check_non_negative("max_consecutive_errors", max_consecutive_errors)

    def init_fn(params):
        finite = torch.ones((), dtype=torch.bool, device=params_device(params))
        return ApplyIfFiniteState(
            init_count(params), finite, init_count(params), inner.init(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        check_like(updates, params, "apply_if_finite")
        isfinite = tree_all_finite(updates).to(state.last_finite.device)
        notfinite_count = torch.where(isfinite, 0, state.notfinite_count + 1)
        new_updates, inner_state = branch(
            isfinite | (notfinite_count > max_consecutive_errors),
            lambda: inner.update(updates, state.inner_state, params, **extra_args),
            lambda: (tree_zeros_like(updates), state.inner_state),
        )
        total = torch.where(isfinite, state.total_notfinite, state.total_notfinite + 1)
        return new_updates, ApplyIfFiniteState(notfinite_count, isfinite, total, inner_state)

    return GradientTransformation(init_fn, update_fn)
