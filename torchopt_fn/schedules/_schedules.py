"""The basic schedules: constant, polynomial, exponential, cosine and piecewise ones.

Each factory validates its arguments once, in Python, and returns a closure that is a pure
torch function of the count, so it traces under ``torch.compile(fullgraph=True)`` without
recompiling as the count changes, and batches under `torch.func.vmap`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from torchopt_fn._base import Schedule
from torchopt_fn._record import record_hyperparams
from torchopt_fn.schedules._common import ScalarLike, as_count, as_float, check

__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
]

_logger = logging.getLogger(__name__)


@record_hyperparams
def constant_schedule(value: ScalarLike) -> Schedule:
    r"""Return the same value at every step.

    $v_t = c$.

    Args:
        value: The value $c$ to hold.

    Returns:
        A schedule mapping the step count to $c$ as a 0-d float64 tensor on the count's device.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.constant_schedule(0.1)
        >>> sched(torch.tensor(0))
        tensor(0.1000, dtype=torch.float64)
        >>> float(sched(1000))
        0.1

    optax equivalent: `optax.schedules.constant_schedule` (same argument).
    """

    def schedule(count: Tensor | int) -> Tensor:
        return as_float(value, as_count(count))

    return schedule


@record_hyperparams
def polynomial_schedule(
    init_value: ScalarLike,
    end_value: ScalarLike,
    power: ScalarLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Move from ``init_value`` to ``end_value`` along a polynomial of degree ``power``.

    With $I$ = ``init_value``, $E$ = ``end_value``, $P$ = ``power``, $T$ = ``transition_steps``
    and $B$ = ``transition_begin``:
    $v_t = (I - E)\,\bigl(1 - \tau_t / T\bigr)^{P} + E$ where
    $\tau_t = \min(\max(t - B, 0), T)$. So $v_t = I$ for $t \le B$ and $v_t = E$ for
    $t \ge B + T$.

    As in optax, a non-positive ``transition_steps`` is not an error: the schedule is then the
    constant ``init_value``; and a negative ``transition_begin`` falls back to 0. Both are
    logged at INFO level.

    Args:
        init_value: The value $I$ before and at ``transition_begin``.
        end_value: The value $E$ from ``transition_begin + transition_steps`` on.
        power: The exponent $P$ of the polynomial (1 is linear).
        transition_steps: The length $T$ of the transition, in steps.
        transition_begin: The step $B$ at which the transition starts.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
        >>> [round(float(sched(torch.tensor(t))), 4) for t in (0, 5, 10, 20)]
        [1.0, 0.25, 0.0, 0.0]

    optax equivalent: `optax.schedules.polynomial_schedule` (same arguments and fallbacks).
    """
    if transition_steps <= 0:
        _logger.info(
            "polynomial_schedule: transition_steps=%s is not positive; the schedule is the "
            "constant init_value.",
            transition_steps,
        )
        return constant_schedule(init_value)
    if transition_begin < 0:
        _logger.info(
            "polynomial_schedule: transition_begin=%s is negative; using 0 instead.",
            transition_begin,
        )
        transition_begin = 0

    def schedule(count: Tensor | int) -> Tensor:
        t = as_count(count)
        init, end = as_float(init_value, t), as_float(end_value, t)
        exponent = as_float(power, t) if isinstance(power, Tensor) else power
        frac = 1 - torch.clamp(t - transition_begin, 0, transition_steps) / transition_steps
        return (init - end) * frac**exponent + end

    return schedule


@record_hyperparams
def linear_schedule(
    init_value: ScalarLike,
    end_value: ScalarLike,
    transition_steps: int,
    transition_begin: int = 0,
) -> Schedule:
    r"""Move linearly from ``init_value`` to ``end_value`` over ``transition_steps`` steps.

    With $I$ = ``init_value``, $E$ = ``end_value``, $T$ = ``transition_steps`` and
    $B$ = ``transition_begin``: $v_t = (I - E)\,(1 - \tau_t / T) + E$ where
    $\tau_t = \min(\max(t - B, 0), T)$; this is `polynomial_schedule` with ``power=1``.

    As in optax, a non-positive ``transition_steps`` makes this the constant ``init_value``
    (a zero-length warm-up is common), and a negative ``transition_begin`` falls back to 0.

    Args:
        init_value: The value $I$ before and at ``transition_begin``.
        end_value: The value $E$ from ``transition_begin + transition_steps`` on.
        transition_steps: The length $T$ of the transition, in steps.
        transition_begin: The step $B$ at which the transition starts.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.linear_schedule(init_value=1.0, end_value=0.0, transition_steps=4)
        >>> [float(sched(torch.tensor(t))) for t in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]

    optax equivalent: `optax.schedules.linear_schedule` (same arguments and fallbacks).
    """
    return polynomial_schedule(
        init_value=init_value,
        end_value=end_value,
        power=1,
        transition_steps=transition_steps,
        transition_begin=transition_begin,
    )


@record_hyperparams
def exponential_decay(
    init_value: ScalarLike,
    transition_steps: int,
    decay_rate: float,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: ScalarLike | None = None,
) -> Schedule:
    r"""Decay (or grow) exponentially, continuously or in a staircase, with an optional bound.

    With $I$ = ``init_value``, $r$ = ``decay_rate``, $T$ = ``transition_steps`` and
    $B$ = ``transition_begin``: $v_t = I$ for $t \le B$ and $v_t = I\,r^{p_t}$ after, where
    $p_t = (t - B)/T$, or $\lfloor (t - B)/T \rfloor$ when ``staircase``. With an
    ``end_value`` $E$ the result is clipped: $\max(v_t, E)$ when $r < 1$, $\min(v_t, E)$
    otherwise (also before $B$, as in optax).

    As in optax, a non-positive ``transition_steps`` or a zero ``decay_rate`` makes this the
    constant ``init_value``, and a negative ``transition_begin`` falls back to 0 (logged at
    INFO level). Unlike optax, a negative ``decay_rate`` is rejected: it would give NaN (or,
    with ``staircase``, alternating signs).

    Args:
        init_value: The value $I$ before the decay starts.
        transition_steps: The number of steps $T$ over which the value is multiplied by $r$.
        decay_rate: The factor $r \ge 0$ per ``transition_steps`` steps; above 1 it grows.
        transition_begin: The step $B$ at which the decay starts.
        staircase: Decay at discrete intervals (every ``transition_steps`` steps) instead of
            continuously.
        end_value: A lower bound when $r < 1$, an upper bound otherwise; ``None`` for none.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``decay_rate`` is negative or NaN.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.exponential_decay(1.0, transition_steps=10, decay_rate=0.5)
        >>> [float(sched(torch.tensor(t))) for t in (0, 10, 20, 5)]
        [1.0, 0.5, 0.25, 0.7071067811865476]
        >>> stairs = schedules.exponential_decay(1.0, 10, 0.5, staircase=True, end_value=0.3)
        >>> [float(stairs(torch.tensor(t))) for t in (9, 10, 25)]
        [1.0, 0.5, 0.3]

    optax equivalent: `optax.schedules.exponential_decay` (same arguments and fallbacks).
    """
    check(decay_rate >= 0, f"exponential_decay: decay_rate must be >= 0, got {decay_rate}.")
    if transition_steps <= 0:
        _logger.info(
            "exponential_decay: transition_steps=%s is not positive; the schedule is the "
            "constant init_value.",
            transition_steps,
        )
        return constant_schedule(init_value)
    if decay_rate == 0:
        _logger.info("exponential_decay: decay_rate is 0; the schedule is the constant init_value.")
        return constant_schedule(init_value)
    if transition_begin < 0:
        _logger.info(
            "exponential_decay: transition_begin=%s is negative; using 0 instead.", transition_begin
        )
        transition_begin = 0
    clip: Callable[[Tensor, Tensor], Tensor] = torch.maximum if decay_rate < 1 else torch.minimum

    def schedule(count: Tensor | int) -> Tensor:
        t = as_count(count)
        init = as_float(init_value, t)
        elapsed = t - transition_begin
        p = elapsed / transition_steps
        if staircase:
            p = torch.floor(p)
        value = torch.where(elapsed <= 0, init, init * torch.pow(as_float(decay_rate, t), p))
        if end_value is not None:
            value = clip(value, as_float(end_value, t))
        return value

    return schedule


@record_hyperparams
def cosine_decay_schedule(
    init_value: ScalarLike,
    decay_steps: int,
    alpha: ScalarLike = 0.0,
    exponent: ScalarLike = 1.0,
) -> Schedule:
    r"""Decay along a half cosine from ``init_value`` to ``alpha * init_value``.

    With $I$ = ``init_value``, $T$ = ``decay_steps``, $\alpha$ = ``alpha`` and $p$ =
    ``exponent``: $v_t = I\,\bigl((1 - \alpha)\,c_t^{\,p} + \alpha\bigr)$ where
    $c_t = \tfrac12\bigl(1 + \cos(\pi \min(t, T) / T)\bigr)$, so $v_t = \alpha I$ for
    $t \ge T$.

    Args:
        init_value: The value $I$ at step 0.
        decay_steps: The length $T > 0$ of the decay, in steps.
        alpha: The final value as a fraction of ``init_value``.
        exponent: The power $p$ applied to the cosine factor (1 is the usual SGDR curve).

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``decay_steps`` is not positive.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.cosine_decay_schedule(1.0, decay_steps=100, alpha=0.1)
        >>> [round(float(sched(torch.tensor(t))), 6) for t in (0, 50, 100, 150)]
        [1.0, 0.55, 0.1, 0.1]

    References:
        Loshchilov & Hutter, SGDR: Stochastic Gradient Descent with Warm Restarts, ICLR 2017.
        https://arxiv.org/abs/1608.03983

    optax equivalent: `optax.schedules.cosine_decay_schedule` (same arguments).
    """
    check(decay_steps > 0, f"cosine_decay_schedule: decay_steps must be > 0, got {decay_steps}.")
    steps = float(decay_steps)

    def schedule(count: Tensor | int) -> Tensor:
        t = torch.clamp(as_count(count), max=steps)
        a = as_float(alpha, t)
        power = as_float(exponent, t) if isinstance(exponent, Tensor) else exponent
        cosine = 0.5 * (1 + torch.cos(math.pi * t / steps))
        return as_float(init_value, t) * ((1 - a) * cosine**power + a)

    return schedule


@record_hyperparams
def piecewise_constant_schedule(
    init_value: ScalarLike,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    r"""Multiply the value by a factor at each of a set of boundaries.

    With $I$ = ``init_value`` and ``boundaries_and_scales`` $= \{b_i: s_i\}$:
    $v_t = I \prod_{i:\, t \ge b_i} s_i$.

    Args:
        init_value: The value $I$ before the first boundary.
        boundaries_and_scales: A mapping from step $b_i$ to the factor $s_i \ge 0$ applied
            from that step on; ``None`` or empty for a constant schedule.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If a scale is negative or NaN.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.piecewise_constant_schedule(1.0, {10: 0.5, 20: 0.1})
        >>> [float(sched(torch.tensor(t))) for t in (9, 10, 19, 20)]
        [1.0, 0.5, 0.5, 0.05]

    optax equivalent: `optax.schedules.piecewise_constant_schedule` (same arguments).
    """
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale in items:
        check(
            scale >= 0,
            f"piecewise_constant_schedule: every scale in boundaries_and_scales must be >= 0, "
            f"got {scale} at boundary {boundary}.",
        )

    def schedule(count: Tensor | int) -> Tensor:
        t = as_count(count)
        value = as_float(init_value, t)
        for boundary, scale in items:
            value = torch.where(t >= boundary, value * as_float(scale, t), value)
        return value

    return schedule


def _linear_interpolate(start: Tensor, end: Tensor, pct: Tensor) -> Tensor:
    return (end - start) * pct + start


def _cosine_interpolate(start: Tensor, end: Tensor, pct: Tensor) -> Tensor:
    return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)


_INTERPOLATE: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "linear": _linear_interpolate,
    "cosine": _cosine_interpolate,
}


@record_hyperparams
def piecewise_interpolate_schedule(
    interpolate_type: str,
    init_value: ScalarLike,
    boundaries_and_scales: Mapping[int, float] | None = None,
) -> Schedule:
    r"""Interpolate, linearly or along a half cosine, between values scaled at boundaries.

    With $I$ = ``init_value`` and sorted boundaries $0 = b_0 < b_1 < \dots < b_n$ with scales
    $s_i$, the anchor values are $V_0 = I$, $V_i = V_{i-1} s_i$. For $b_{i-1} \le t < b_i$,
    $v_t = \operatorname{interp}(V_{i-1}, V_i, (t - b_{i-1}) / (b_i - b_{i-1}))$ where
    linear is $a + (b - a)\,x$ and cosine is $b + \tfrac{a - b}{2}(1 + \cos \pi x)$; for
    $t \ge b_n$, $v_t = V_n$. As in optax, a negative count gives 0.

    Args:
        interpolate_type: ``"linear"`` or ``"cosine"``.
        init_value: The value $I$ at step 0.
        boundaries_and_scales: A mapping from step $b_i$ to the factor $s_i \ge 0$ by which
            the anchor value is multiplied at that step (the schedule interpolates between the
            accumulated products, not between the raw scales).

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``interpolate_type`` is not ``"linear"`` or ``"cosine"``, or a scale is
            negative or NaN.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
        >>> [round(float(sched(torch.tensor(t))), 6) for t in (0, 2, 4, 6, 8, 10)]
        [1.0, 0.55, 0.1, 0.0505, 0.001, 0.001]

    optax equivalent: `optax.schedules.piecewise_interpolate_schedule` (same arguments).
    """
    check(
        interpolate_type in _INTERPOLATE,
        f"piecewise_interpolate_schedule: interpolate_type must be 'linear' or 'cosine', "
        f"got {interpolate_type!r}.",
    )
    interpolate = _INTERPOLATE[interpolate_type]
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale in items:
        check(
            scale >= 0,
            f"piecewise_interpolate_schedule: every scale in boundaries_and_scales must be >= 0, "
            f"got {scale} at boundary {boundary}.",
        )
    bounds_list = [0.0, *(float(b) for b, _ in items)]
    scales = [s for _, s in items]

    def schedule(count: Tensor | int) -> Tensor:
        t = as_count(count)
        bounds = torch.tensor(bounds_list, dtype=t.dtype, device=t.device)
        factors = [as_float(init_value, t), *(as_float(s, t) for s in scales)]
        values = torch.cumprod(torch.stack(factors), dim=0)
        lower, upper = bounds[:-1], bounds[1:]
        inside = ((lower <= t) & (t < upper)).to(t.dtype)
        pct = (t - lower) / torch.clamp(upper - lower, min=1)
        segments = (inside * interpolate(values[:-1], values[1:], pct)).sum()
        return segments + (bounds[-1] <= t).to(t.dtype) * values[-1]

    return schedule


@record_hyperparams
def linear_onecycle_schedule(
    transition_steps: int,
    peak_value: ScalarLike,
    pct_start: float = 0.3,
    pct_final: float = 0.85,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""The one-cycle policy with three linear phases.

    With $T$ = ``transition_steps``, $v^\star$ = ``peak_value``, $d$ = ``div_factor`` and
    $d_f$ = ``final_div_factor``, this is `piecewise_interpolate_schedule` (linear) from
    $v^\star/d$ at step 0 up to $v^\star$ at $\lfloor \text{pct\_start}\,T \rfloor$, back down
    to $v^\star/d$ at $\lfloor \text{pct\_final}\,T \rfloor$, then to $v^\star/(d\,d_f)$ at $T$,
    and constant after.

    Args:
        transition_steps: The length $T > 0$ of the cycle, in steps.
        peak_value: The maximum value $v^\star$.
        pct_start: The fraction of the cycle spent increasing, in $[0, 1]$.
        pct_final: The fraction of the cycle at which the value is back to $v^\star/d$, in
            $[\text{pct\_start}, 1]$.
        div_factor: The initial value is $v^\star/d$; must be $> 0$.
        final_div_factor: The final value is $v^\star/(d\,d_f)$; must be $> 0$.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``transition_steps`` is not positive, the fractions are not
            $0 \le$ ``pct_start`` $\le$ ``pct_final`` $\le 1$, or a divisor is not positive.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.linear_onecycle_schedule(100, peak_value=1.0)
        >>> [round(float(sched(torch.tensor(t))), 6) for t in (0, 30, 85, 100)]
        [0.04, 1.0, 0.04, 4e-06]

    References:
        Smith & Topin, Super-Convergence: Very Fast Training of Neural Networks Using Large
        Learning Rates, 2017. https://arxiv.org/abs/1708.07120

    optax equivalent: `optax.schedules.linear_onecycle_schedule` (same arguments); optax does
    not check the fractions or divisors.
    """
    check(
        transition_steps > 0,
        f"linear_onecycle_schedule: transition_steps must be > 0, got {transition_steps}.",
    )
    check(
        0 <= pct_start <= pct_final <= 1,
        f"linear_onecycle_schedule: need 0 <= pct_start <= pct_final <= 1, got "
        f"pct_start={pct_start}, pct_final={pct_final}.",
    )
    check(div_factor > 0, f"linear_onecycle_schedule: div_factor must be > 0, got {div_factor}.")
    check(
        final_div_factor > 0,
        f"linear_onecycle_schedule: final_div_factor must be > 0, got {final_div_factor}.",
    )
    # A dict literal, as in optax: a later boundary that rounds onto an earlier one wins.
    boundaries_and_scales = {
        int(pct_start * transition_steps): div_factor,
        int(pct_final * transition_steps): 1.0 / div_factor,
        transition_steps: 1.0 / final_div_factor,
    }
    return piecewise_interpolate_schedule("linear", peak_value / div_factor, boundaries_and_scales)


@record_hyperparams
def cosine_onecycle_schedule(
    transition_steps: int,
    peak_value: ScalarLike,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    r"""The one-cycle policy with two half-cosine phases.

    With $T$ = ``transition_steps``, $v^\star$ = ``peak_value``, $d$ = ``div_factor`` and
    $d_f$ = ``final_div_factor``, this is `piecewise_interpolate_schedule` (cosine) from
    $v^\star/d$ at step 0 up to $v^\star$ at $\lfloor \text{pct\_start}\,T \rfloor$, then down
    to $v^\star/(d\,d_f)$ at $T$, and constant after.

    Args:
        transition_steps: The length $T > 0$ of the cycle, in steps.
        peak_value: The maximum value $v^\star$.
        pct_start: The fraction of the cycle spent increasing, in $[0, 1]$.
        div_factor: The initial value is $v^\star/d$; must be $> 0$.
        final_div_factor: The final value is $v^\star/(d\,d_f)$; must be $> 0$.

    Returns:
        A schedule mapping the step count to a 0-d float64 tensor.

    Raises:
        ValueError: If ``transition_steps`` is not positive, ``pct_start`` is outside
            $[0, 1]$, or a divisor is not positive.

    Examples:
        >>> import torch
        >>> from torchopt_fn import schedules
        >>> sched = schedules.cosine_onecycle_schedule(100, peak_value=1.0)
        >>> [round(float(sched(torch.tensor(t))), 6) for t in (0, 15, 30, 100)]
        [0.04, 0.52, 1.0, 4e-06]

    References:
        Smith & Topin, Super-Convergence: Very Fast Training of Neural Networks Using Large
        Learning Rates, 2017. https://arxiv.org/abs/1708.07120

    optax equivalent: `optax.schedules.cosine_onecycle_schedule` (same arguments); optax does
    not check ``pct_start`` or the divisors.
    """
    check(
        transition_steps > 0,
        f"cosine_onecycle_schedule: transition_steps must be > 0, got {transition_steps}.",
    )
    check(
        0 <= pct_start <= 1,
        f"cosine_onecycle_schedule: pct_start must be in [0, 1], got {pct_start}.",
    )
    check(div_factor > 0, f"cosine_onecycle_schedule: div_factor must be > 0, got {div_factor}.")
    check(
        final_div_factor > 0,
        f"cosine_onecycle_schedule: final_div_factor must be > 0, got {final_div_factor}.",
    )
    boundaries_and_scales = {
        int(pct_start * transition_steps): div_factor,
        int(transition_steps): 1.0 / (div_factor * final_div_factor),
    }
    return piecewise_interpolate_schedule("cosine", peak_value / div_factor, boundaries_and_scales)
