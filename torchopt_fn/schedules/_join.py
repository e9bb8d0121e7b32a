"""Joining schedules one after another."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from torchopt_fn._base import Schedule
from torchopt_fn._record import record_hyperparams
from torchopt_fn.schedules._common import ScalarLike, as_count, as_float, check

__all__ = ["join_schedules"]


@record_hyperparams
def join_schedules(
    schedules: Sequence[Callable[[Tensor], ScalarLike]], boundaries: Sequence[int]
) -> Schedule:
    r"""Run schedules one after another, restarting the count at each boundary.

    With schedules $f_0, \dots, f_n$ and boundaries $b_1 \le \dots \le b_n$:
    $v_t = f_0(t)$ for $t < b_1$, $v_t = f_i(t - b_i)$ for $b_i \le t < b_{i+1}$, and
    $v_t = f_n(t - b_n)$ for $t \ge b_n$.

    Args:
        schedules: The schedules $f_i$; any callable of a 0-d integer tensor returning a
            number or a 0-d tensor works (its result is converted to float64).
        boundaries: The $n$ steps $b_i$ at which to switch, non-decreasing; exactly one fewer
            than ``schedules``.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``schedules`` is empty, ``len(boundaries) != len(schedules) - 1``, or
            the boundaries decrease.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> hold = schedules.constant_schedule(1.0)
        >>> anneal = schedules.linear_schedule(1.0, 0.0, transition_steps=10)
        >>> sched = schedules.join_schedules([hold, anneal], boundaries=[5])
        >>> [float(sched(torch.tensor(t))) for t in (0, 4, 5, 10, 15)]
        [1.0, 1.0, 1.0, 0.5, 0.0]

    optax equivalent: `optax.schedules.join_schedules` (same arguments); optax silently
    ignores extra schedules or boundaries instead of raising.
    """
    schedules = tuple(schedules)
    boundaries = tuple(boundaries)
    check(len(schedules) > 0, "join_schedules: schedules must contain at least one schedule.")
    check(
        len(boundaries) == len(schedules) - 1,
        f"join_schedules: boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
        f"entries, got {len(boundaries)}.",
    )
    check(
        all(a <= b for a, b in itertools.pairwise(boundaries)),
        f"join_schedules: boundaries must be non-decreasing, got {list(boundaries)}.",
    )

    def schedule(count: Tensor | int) -> Tensor:
        step = torch.as_tensor(count)
        like = as_count(step)
        value = as_float(schedules[0](step), like)
        for boundary, later in zip(boundaries, schedules[1:]):
            value = torch.where(step < boundary, value, as_float(later(step - boundary), like))
        return value

    return schedule
