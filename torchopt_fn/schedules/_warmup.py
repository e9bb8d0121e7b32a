"""Schedules with a linear warm-up, warm restarts, and warmup-stable-decay."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from torchopt_fn._base import Schedule
from torchopt_fn._record import record_hyperparams
from torchopt_fn.schedules._common import ScalarLike, as_count, as_float, check
from torchopt_fn.schedules._join import join_schedules
from torchopt_fn.schedules._schedules import (
    cosine_decay_schedule,
    exponential_decay,
    linear_schedule,
)

__all__ = [
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
]


def _check_warmup(name: str, warmup_steps: int) -> None:
    check(warmup_steps >= 0, f"{name}: warmup_steps must be >= 0, got {warmup_steps}.")


@record_hyperparams
def warmup_constant_schedule(
    init_value: ScalarLike,
    peak_value: ScalarLike,
    warmup_steps: int,
) -> Schedule:
    r"""Warm up linearly from ``init_value`` to ``peak_value``, then hold it.

    With $I$ = ``init_value``, $P$ = ``peak_value`` and $W$ = ``warmup_steps``:
    $v_t = I + (P - I)\,\min(t, W)/W$ (and $v_t = I$ for $t < 0$); $W = 0$ gives the
    constant $I$, as in optax.

    Args:
        init_value: The value $I$ at step 0.
        peak_value: The value $P$ reached at ``warmup_steps`` and held after.
        warmup_steps: The length $W \ge 0$ of the warm-up, in steps.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``warmup_steps`` is negative.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
        >>> [float(sched(torch.tensor(t))) for t in (0, 1, 4, 100)]
        [0.0, 0.25, 1.0, 1.0]

    optax equivalent: `optax.schedules.warmup_constant_schedule` (same arguments); optax
    accepts a negative ``warmup_steps`` (as a constant ``init_value``).
    """
    _check_warmup("warmup_constant_schedule", warmup_steps)
    return linear_schedule(
        init_value=init_value, end_value=peak_value, transition_steps=warmup_steps
    )


def _ratio(end_value: ScalarLike, peak_value: ScalarLike) -> ScalarLike:
    """``end_value / peak_value``, or 0 when ``peak_value`` is 0 (optax's ``alpha``)."""
    if isinstance(end_value, Tensor) or isinstance(peak_value, Tensor):
        peak = torch.as_tensor(peak_value)
        return torch.where(peak == 0, 0.0, torch.as_tensor(end_value) / peak)
    return 0.0 if peak_value == 0 else end_value / peak_value


@record_hyperparams
def warmup_cosine_decay_schedule(
    init_value: ScalarLike,
    peak_value: ScalarLike,
    warmup_steps: int,
    decay_steps: int,
    end_value: ScalarLike = 0.0,
    exponent: ScalarLike = 1.0,
) -> Schedule:
    r"""Warm up linearly to ``peak_value``, then decay along a half cosine to ``end_value``.

    With $I$ = ``init_value``, $P$ = ``peak_value``, $E$ = ``end_value``, $W$ =
    ``warmup_steps``, $D$ = ``decay_steps`` and $p$ = ``exponent``: for $t < W$,
    $v_t = I + (P - I)\,t/W$; for $t \ge W$, $v_t = P\,\bigl((1 - \alpha)\,c^{\,p} + \alpha\bigr)$
    with $\alpha = E/P$ and $c = \tfrac12\bigl(1 + \cos(\pi \min(t - W, D - W)/(D - W))\bigr)$,
    so $v_t = E$ from $t = D$ on. Note that $D$ is the total length, warm-up included.

    Args:
        init_value: The value $I$ at step 0.
        peak_value: The value $P$ at the end of the warm-up.
        warmup_steps: The length $W \ge 0$ of the warm-up, in steps.
        decay_steps: The total length $D > W$ of the schedule, warm-up included.
        end_value: The value $E$ reached at ``decay_steps`` and held after.
        exponent: The power $p$ applied to the cosine factor.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``warmup_steps`` is negative or ``decay_steps <= warmup_steps``.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.warmup_cosine_decay_schedule(
        ...     0.0, 1.0, warmup_steps=10, decay_steps=110)
        >>> [round(float(sched(torch.tensor(t))), 6) for t in (0, 5, 10, 60, 110, 200)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]

    References:
        Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, ICLR 2017.
        https://arxiv.org/abs/1608.03983

    optax equivalent: `optax.schedules.warmup_cosine_decay_schedule` (same arguments).
    """
    _check_warmup("warmup_cosine_decay_schedule", warmup_steps)
    check(
        decay_steps > warmup_steps,
        f"warmup_cosine_decay_schedule: decay_steps (the total length, warm-up included) must "
        f"be > warmup_steps={warmup_steps}, got {decay_steps}.",
    )
    warmup = linear_schedule(
        init_value=init_value, end_value=peak_value, transition_steps=warmup_steps
    )
    decay = cosine_decay_schedule(
        init_value=peak_value,
        decay_steps=decay_steps - warmup_steps,
        alpha=_ratio(end_value, peak_value),
        exponent=exponent,
    )
    return join_schedules([warmup, decay], [warmup_steps])


@record_hyperparams
def warmup_exponential_decay_schedule(
    init_value: ScalarLike,
    peak_value: ScalarLike,
    warmup_steps: int,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ScalarLike | None = None,
) -> Schedule:
    r"""Warm up linearly to ``peak_value``, then decay exponentially.

    With $I$ = ``init_value``, $P$ = ``peak_value`` and $W$ = ``warmup_steps``: for $t < W$,
    $v_t = I + (P - I)\,t/W$; for $t \ge W$, $v_t = f(t - W)$ where $f$ is
    `exponential_decay` started at $P$ with the remaining arguments (so ``transition_begin``
    counts from the end of the warm-up).

    Args:
        init_value: The value $I$ at step 0.
        peak_value: The value $P$ at the end of the warm-up.
        warmup_steps: The length $W \ge 0$ of the warm-up, in steps.
        transition_steps: See `exponential_decay`.
        decay_rate: See `exponential_decay`; must be $\ge 0$.
        transition_begin: Steps after the warm-up during which ``peak_value`` is held.
        staircase: See `exponential_decay`.
        end_value: See `exponential_decay`.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``warmup_steps`` or ``decay_rate`` is negative.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.warmup_exponential_decay_schedule(
        ...     0.0, 1.0, warmup_steps=10, transition_steps=10, decay_rate=0.5)
        >>> [float(sched(torch.tensor(t))) for t in (0, 5, 10, 20, 30)]
        [0.0, 0.5, 1.0, 0.5, 0.25]

    optax equivalent: `optax.schedules.warmup_exponential_decay_schedule` (same arguments).
    """
    _check_warmup("warmup_exponential_decay_schedule", warmup_steps)
    warmup = linear_schedule(
        init_value=init_value, end_value=peak_value, transition_steps=warmup_steps
    )
    decay = exponential_decay(
        init_value=peak_value,
        transition_steps=transition_steps,
        decay_rate=decay_rate,
        transition_begin=transition_begin,
        staircase=staircase,
        end_value=end_value,
    )
    return join_schedules([warmup, decay], [warmup_steps])


@record_hyperparams
def sgdr_schedule(cosine_kwargs: Iterable[Mapping[str, Any]]) -> Schedule:
    r"""Stochastic gradient descent with warm restarts: warm-up-cosine cycles back to back.

    Cycle $k$ is ``warmup_cosine_decay_schedule(**cosine_kwargs[k])``; it starts when the
    previous cycles' ``decay_steps`` have elapsed, and sees the count from its own start.
    The last cycle holds its ``end_value`` forever.

    Args:
        cosine_kwargs: One mapping of `warmup_cosine_decay_schedule` arguments per cycle
            (``init_value``, ``peak_value``, ``warmup_steps``, ``decay_steps`` and optionally
            ``end_value``, ``exponent``); ``decay_steps`` is the cycle's length.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``cosine_kwargs`` is empty, or a cycle's arguments are invalid.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)
        >>> sched = schedules.sgdr_schedule([cycle, cycle])
        >>> [round(float(sched(torch.tensor(t))), 6) for t in (0, 2, 6, 10, 12, 20)]
        [0.0, 1.0, 0.5, 0.0, 1.0, 0.0]

    References:
        Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, ICLR 2017.
        https://arxiv.org/abs/1608.03983

    optax equivalent: `optax.schedules.sgdr_schedule` (same argument).
    """
    schedules: list[Schedule] = []
    boundaries: list[int] = []
    step = 0
    for kwargs in cosine_kwargs:
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    check(len(schedules) > 0, "sgdr_schedule: cosine_kwargs must describe at least one cycle.")
    return join_schedules(schedules, boundaries[:-1])


def _linear_shape(p: Tensor) -> Tensor:
    return 1 - p


def _cosine_shape(p: Tensor) -> Tensor:
    return 0.5 * (1 + torch.cos(math.pi * p))


def _sqrt_shape(p: Tensor) -> Tensor:
    return 1 - torch.sqrt(p)


_DECAY_SHAPES: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": _linear_shape,
    "cosine": _cosine_shape,
    "sqrt": _sqrt_shape,
}


@record_hyperparams
def warmup_stable_decay_schedule(
    init_value: ScalarLike,
    peak_value: ScalarLike,
    warmup_steps: int,
    total_steps: int,
    decay_steps: int,
    end_value: ScalarLike = 0.0,
    decay_type: Literal["linear", "cosine", "sqrt"] = "linear",
) -> Schedule:
    r"""Warm up linearly, hold ``peak_value``, then decay to ``end_value`` over the last steps.

    The warmup-stable-decay (WSD, "trapezoidal") schedule. With $I$ = ``init_value``,
    $P$ = ``peak_value``, $E$ = ``end_value``, $W$ = ``warmup_steps``, $N$ = ``total_steps``,
    $D$ = ``decay_steps`` and $S = N - D$:
    $v_t = I + (P - I)\,\max(t, 0)/W$ for $t < W$ (no warm-up when $W = 0$); $v_t = P$ for
    $W \le t \le S$; and
    $v_t = E + (P - E)\,\phi\bigl(\min((t - S)/D, 1)\bigr)$ for $t > S$, where the decay
    shape $\phi$ is $1 - x$ (``"linear"``), $\tfrac12(1 + \cos \pi x)$ (``"cosine"``) or
    $1 - \sqrt{x}$ (``"sqrt"``). So $v_t = E$ from $t = N$ on.

    Args:
        init_value: The value $I$ at step 0.
        peak_value: The value $P$ held between the warm-up and the decay.
        warmup_steps: The length $W \ge 0$ of the warm-up, in steps.
        total_steps: The total length $N$ of the schedule; the decay ends here.
        decay_steps: The length $D > 0$ of the final decay, in steps (unlike the
            ``decay_steps`` of `warmup_cosine_decay_schedule`, which counts from step 0).
        end_value: The value $E$ reached at ``total_steps`` and held after.
        decay_type: The shape $\phi$ of the decay: ``"linear"``, ``"cosine"`` or ``"sqrt"``
            (the $1 - \sqrt{x}$ cool-down of Hägele et al.).

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``warmup_steps`` is negative, ``decay_steps`` is not positive,
            ``warmup_steps + decay_steps > total_steps``, or ``decay_type`` is unknown.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.warmup_stable_decay_schedule(
        ...     0.0, 1.0, warmup_steps=10, total_steps=100, decay_steps=20)
        >>> [float(sched(torch.tensor(t))) for t in (0, 5, 10, 80, 90, 100, 150)]
        [0.0, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0]

    References:
        Hu et al., MiniCPM: Unveiling the Potential of Small Language Models with Scalable
        Training Strategies, 2024. https://arxiv.org/abs/2404.06395 ;
        Hägele et al., Scaling Laws and Compute-Optimal Training Beyond Fixed Training
        Durations, NeurIPS 2024. https://arxiv.org/abs/2405.18392

    optax equivalent: none (optax 0.2.8 has no warmup-stable-decay schedule).
    """
    name = "warmup_stable_decay_schedule"
    _check_warmup(name, warmup_steps)
    check(decay_steps > 0, f"{name}: decay_steps must be > 0, got {decay_steps}.")
    check(
        warmup_steps + decay_steps <= total_steps,
        f"{name}: need warmup_steps + decay_steps <= total_steps, got warmup_steps="
        f"{warmup_steps}, decay_steps={decay_steps}, total_steps={total_steps}.",
    )
    check(
        decay_type in _DECAY_SHAPES,
        f"{name}: decay_type must be 'linear', 'cosine' or 'sqrt', got {decay_type!r}.",
    )
    shape = _DECAY_SHAPES[decay_type]
    decay_begin = total_steps - decay_steps

    def schedule(count: Tensor | int) -> Tensor:
        t = as_count(count)
        init, peak, end = (as_float(v, t) for v in (init_value, peak_value, end_value))
        if warmup_steps > 0:
            warm = init + (peak - init) * (torch.clamp(t, min=0) / warmup_steps)
        else:
            warm = peak
        progress = torch.clamp((t - decay_begin) / decay_steps, 0, 1)
        decay = end + (peak - end) * shape(progress)
        return torch.where(t < warmup_steps, warm, torch.where(t <= decay_begin, peak, decay))

    return schedule
