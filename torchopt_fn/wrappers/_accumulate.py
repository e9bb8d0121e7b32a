"""Gradient accumulation: `MultiSteps` (optax's names, arguments and state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from torchopt_fn._base import GradientTransformation, Params, Updates, init_count
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_positive
from torchopt_fn.tree._flatten import tree_leaves, tree_map
from torchopt_fn.tree._math import tree_l2_norm, tree_zeros_like
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "MultiSteps",
    "MultiStepsState",
    "ShouldSkipUpdateFunction",
    "skip_large_updates",
    "skip_not_finite",
]


class ShouldSkipUpdateFunction(Protocol):
    """``f(updates, gradient_step, params) -> (skip, skip_state)`` for `MultiSteps`.

    ``skip`` is a 0-d boolean tensor: True drops this mini-step as if it never happened.
    ``skip_state`` is any tree of tensors, stored in `MultiStepsState.skip_state`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> def skip_first_two(updates, gradient_step, params):
        ...     return gradient_step < 2, ()
        >>> tx = tf.MultiSteps(tf.sgd(1.0), 1, should_skip_update_fn=skip_first_two)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> tx.update({"w": torch.ones(1)}, state)[0]["w"]
        tensor([0.])
    """

    def __call__(
        self, updates: Updates, gradient_step: torch.Tensor, params: Params | None
    ) -> tuple[torch.Tensor, Any]: ...


def skip_not_finite(
    updates: Updates, gradient_step: torch.Tensor, params: Params | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Skip a mini-step whose updates hold an inf or a NaN (a `ShouldSkipUpdateFunction`).

    Returns:
        ``(should_skip, {"should_skip": ..., "num_not_finite": ...})``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.skip_not_finite({"w": torch.tensor([1.0, float("inf")])}, torch.tensor(0), None)
        (tensor(True), {'should_skip': tensor(True), 'num_not_finite': tensor(1)})
    """
    del gradient_step, params
    counts = [
        torch.logical_not(torch.isfinite(u)).sum() for u in tree_leaves(updates) if u is not None
    ]
    num_not_finite = torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.int64)
    should_skip = num_not_finite > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num_not_finite}


def skip_large_updates(
    updates: Updates,
    gradient_step: torch.Tensor,
    params: Params | None,
    max_squared_norm: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Skip a mini-step whose squared global norm is not below ``max_squared_norm``.

    Bind ``max_squared_norm`` with `functools.partial` to get a `ShouldSkipUpdateFunction`.

    Returns:
        ``(should_skip, {"should_skip": ..., "norm_squared": ...})``.

    Examples:
        >>> import functools, torch, torchopt_fn as tf
        >>> skip = functools.partial(tf.skip_large_updates, max_squared_norm=10.0)
        >>> skip({"w": torch.tensor([3.0, 4.0])}, torch.tensor(0), None)[0]
        tensor(True)
    """
    del gradient_step, params
    norm_sq = tree_l2_norm(updates, squared=True)
    should_skip = torch.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


def _never_skip(
    updates: Updates, gradient_step: torch.Tensor, params: Params | None
) -> tuple[torch.Tensor, tuple[()]]:
    del updates, params
    return torch.zeros((), dtype=torch.bool, device=gradient_step.device), ()


class MultiStepsState(NamedTuple):
    """State of `MultiSteps`.

    Attributes:
        mini_step: mini-steps accumulated since the last update (0 right after one).
        gradient_step: updates applied so far (the inner optimizer's steps).
        inner_opt_state: the inner transformation's state.
        acc_grads: the accumulated gradients (their mean, or their sum).
        skip_state: what ``should_skip_update_fn`` returned last (``()`` without one).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.MultiSteps(tf.sgd(0.1), every_k_schedule=2).init({"w": torch.zeros(1)})
        >>> state.mini_step, state.gradient_step
        (tensor(0), tensor(0))
    """

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()

    def has_updated(self) -> torch.Tensor:
        """Whether the step that produced this state applied an update (0-d boolean)."""
        return (self.mini_step == 0) & (self.gradient_step > 0)


@record_hyperparams
def multi_steps(
    opt: GradientTransformation,
    every_k_schedule: int | Callable[[torch.Tensor], Any],
    use_grad_mean: bool = True,
    should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """The transformation of `MultiSteps` (see there); recorded, so it pickles and mirrors."""
    if isinstance(every_k_schedule, int):
        check_positive("every_k_schedule", every_k_schedule)
    should_skip = should_skip_update_fn or _never_skip

    def k_steps(gradient_step: torch.Tensor) -> Any:
        if callable(every_k_schedule):
            return every_k_schedule(gradient_step)
        return every_k_schedule

    def acc_dtype(x: torch.Tensor) -> torch.dtype:
        return accumulator_dtype or torch.promote_types(x.dtype, torch.float32)

    def init_fn(params):
        gradient_step = init_count(params)
        _, skip_state = should_skip(tree_zeros_like(params), gradient_step, params)
        return MultiStepsState(
            mini_step=init_count(params),
            gradient_step=gradient_step,
            inner_opt_state=opt.init(params),
            acc_grads=tree_map(lambda p: torch.zeros_like(p, dtype=acc_dtype(p)), params),
            skip_state=skip_state,
        )

    def accumulate(mini_step: torch.Tensor) -> Callable[..., tuple[list, list]]:
        def fn(ops, gs, accs):
            if use_grad_mean:
                # A running mean, as optax computes it (in the wider of the two dtypes).
                new = [a + (g - a) / (mini_step + 1) for g, a in zip(gs, accs)]
            else:
                new = [g + a for g, a in zip(gs, accs)]
            return new, new  # for the inner update (cast to the gradient's dtype), and kept

        return fn

    def update_fn(updates, state, params=None, **extra_args):
        k = k_steps(state.gradient_step)
        skip, skip_state = should_skip(updates, state.gradient_step, params)
        if not (isinstance(skip, torch.Tensor) and skip.dtype == torch.bool and skip.dim() == 0):
            raise ValueError(
                "MultiSteps: should_skip_update_fn must return a 0-d boolean tensor first, "
                f"got {skip!r}."
            )

        def skipped():
            return tree_zeros_like(updates), state._replace(skip_state=skip_state)

        def accepted():
            acc, kept = map_leaves(
                accumulate(state.mini_step),
                updates,
                state.acc_grads,
                keep=(None, 0),
                what="MultiSteps",
            )
            emit = state.mini_step == k - 1
            mini_step = (state.mini_step + 1) % k
            gradient_step = torch.where(emit, state.gradient_step + 1, state.gradient_step)

            def apply():
                new_updates, inner_state = opt.update(
                    acc, state.inner_opt_state, params, **extra_args
                )
                return new_updates, inner_state, tree_zeros_like(kept)

            def wait():
                return tree_zeros_like(updates), state.inner_opt_state, kept

            new_updates, inner_state, acc_grads = branch(emit, apply, wait)
            new_state = MultiStepsState(
                mini_step, gradient_step, inner_state, acc_grads, skip_state
            )
            return new_updates, new_state

        return branch(skip, skipped, accepted)

    return GradientTransformation(init_fn, update_fn)


class MultiSteps:
    """Accumulate gradients over several mini-steps, then update once (optax's ``MultiSteps``).

    Each ``update`` adds its gradients to an accumulator (their running mean, or their sum)
    and returns zero updates, until ``every_k_schedule(gradient_step)`` mini-steps have been
    gathered; then the inner optimizer updates with the accumulated gradients, and the
    accumulator starts again. A schedule lets the effective batch size change during
    training. A mini-step that ``should_skip_update_fn`` rejects is dropped as if it never
    happened.

    Use `gradient_transformation` (or pass the `MultiSteps` itself to `Optimizer`): each
    ``Optimizer.step()`` is then a mini-step, and `Optimizer.has_updated` says when the
    parameters changed (step an lr scheduler only then, to count optimizer updates).

    Args:
        opt: the inner optimizer.
        every_k_schedule: mini-steps per update: an int, or a function of the update count.
        use_grad_mean: average the mini-steps' gradients (default); else sum them.
        should_skip_update_fn: a `ShouldSkipUpdateFunction`, e.g. `skip_not_finite`.
        accumulator_dtype: dtype of the accumulator. Default: the gradient's dtype, at least
            float32 (optax's default is always float32, which rounds float64 gradients).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.MultiSteps(tf.sgd(1.0), every_k_schedule=2)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for g in (1.0, 3.0):
        ...     u, state = tx.update({"w": torch.tensor([g])}, state)
        ...     print(u["w"], bool(tx.has_updated(state)))
        tensor([0.]) False
        tensor([-2.]) True
    """

    def __init__(
        self,
        opt: GradientTransformation,
        every_k_schedule: int | Callable[[torch.Tensor], Any],
        use_grad_mean: bool = True,
        should_skip_update_fn: ShouldSkipUpdateFunction | None = None,
        accumulator_dtype: torch.dtype | None = None,
    ):
        self._opt = opt
        self._tx = multi_steps(
            opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype
        )

    @property
    def inner_opt(self) -> GradientTransformation:
        """The wrapped optimizer."""
        return self._opt

    def init(self, params: Params) -> MultiStepsState:
        """The initial `MultiStepsState`."""
        return self._tx.init(params)

    def update(
        self,
        updates: Updates,
        state: MultiStepsState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, MultiStepsState]:
        """Accumulate one mini-step; every k-th returns the inner optimizer's update."""
        return self._tx.update(updates, state, params, **extra_args)

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """Whether the step that produced ``state`` applied an update (0-d boolean)."""
        return state.has_updated()

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulation as a `GradientTransformation`."""
        return self._tx
