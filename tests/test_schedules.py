"""Tests for `torchopt_fn.schedules`.

Every schedule is checked against a closed form written here in plain Python ``math`` (not
against its own implementation), and then for the schedule contract: int and tensor counts
agree, the result is a 0-d float64 tensor on the count's device, `torch.func.vmap` over counts
and ``torch.compile(fullgraph=True)`` without recompiles match eager. When
``tests/goldens/optax_goldens.json`` exists, every schedule recorded there from real optax is
rebuilt from its JSON encoding and compared to 1e-12.
"""

from __future__ import annotations

import doctest
import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchopt_fn import schedules
from torchopt_fn.schedules import (
    Schedule,
    _common,
    _join,
    _schedules,
    _warmup,
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_stable_decay_schedule,
)

GOLDENS = Path(__file__).parent / "goldens" / "optax_goldens.json"
COUNTS = [*range(131), 150, 200, 999, 10_000, 1_000_000]
RTOL = 1e-12
ATOL = 1e-300  # only so that an expected exact 0.0 compares equal to a computed 0.0


# --- Closed forms, in plain Python --------------------------------------------------------


def ref_polynomial(init: float, end: float, power: float, steps: int, begin: int = 0):
    def f(t: int) -> float:
        if t <= begin:
            return init
        if t >= begin + steps:
            return end
        return end + (init - end) * (1 - (t - begin) / steps) ** power

    return f


def ref_exponential(
    init: float,
    steps: int,
    rate: float,
    begin: int = 0,
    staircase: bool = False,
    end: float | None = None,
):
    def f(t: int) -> float:
        p = (t - begin) / steps
        if staircase:
            p = math.floor(p)
        try:
            factor = rate**p
        except OverflowError:
            factor = math.inf
        value = init if t <= begin else init * factor
        if end is None:
            return value
        return max(value, end) if rate < 1 else min(value, end)

    return f


def ref_cosine(init: float, steps: int, alpha: float = 0.0, exponent: float = 1.0):
    def f(t: int) -> float:
        c = 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        return init * ((1 - alpha) * c**exponent + alpha)

    return f


def ref_piecewise_constant(init: float, scales: dict[int, float]):
    def f(t: int) -> float:
        return init * math.prod(s for b, s in scales.items() if t >= b)

    return f


def ref_interpolate(kind: str, points: list[tuple[int, float]]):
    """Interpolate through ``(step, value)`` points (steps increasing, starting at 0)."""

    def f(t: int) -> float:
        if t < 0:
            return 0.0
        for (lo, a), (hi, b) in itertools.pairwise(points):
            if lo <= t < hi:
                x = (t - lo) / (hi - lo)
                if kind == "linear":
                    return a + (b - a) * x
                return b + (a - b) * (1 + math.cos(math.pi * x)) / 2
        return points[-1][1]

    return f


def ref_warmup_cosine(init: float, peak: float, warmup: int, total: int, end: float = 0.0, p=1.0):
    def f(t: int) -> float:
        if t < warmup:
            return init + (peak - init) * t / warmup
        c = 0.5 * (1 + math.cos(math.pi * min(t - warmup, total - warmup) / (total - warmup)))
        return end + (peak - end) * c**p

    return f


def ref_wsd(init, peak, warmup, total, decay, end=0.0, kind="linear"):
    shapes = {
        "linear": lambda x: 1 - x,
        "cosine": lambda x: 0.5 * (1 + math.cos(math.pi * x)),
        "sqrt": lambda x: 1 - math.sqrt(x),
    }

    def f(t: int) -> float:
        if warmup > 0 and t < warmup:
            return init + (peak - init) * max(t, 0) / warmup
        if t <= total - decay:
            return peak
        return end + (peak - end) * shapes[kind](min((t - total + decay) / decay, 1.0))

    return f


def ref_join(fns: list[Callable[[int], float]], boundaries: list[int]):
    def f(t: int) -> float:
        start = 0
        fn = fns[0]
        for b, g in zip(boundaries, fns[1:]):
            if t >= b:
                start, fn = b, g
        return fn(t - start)

    return f


# --- The table: (id, factory, closed form) -----------------------------------------------

SGDR_CYCLES = [
    dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=40, end_value=0.01),
    dict(init_value=0.01, peak_value=0.5, warmup_steps=10, decay_steps=60),
]

CASES: list[tuple[str, Callable[[], Schedule], Callable[[int], float]]] = [
    ("constant", lambda: constant_schedule(0.1), lambda t: 0.1),
    (
        "linear_begin",
        lambda: linear_schedule(1.0, 0.1, transition_steps=10, transition_begin=5),
        ref_polynomial(1.0, 0.1, 1, 10, 5),
    ),
    (
        "linear_increasing",
        lambda: linear_schedule(0.0, 2.0, transition_steps=7),
        ref_polynomial(0.0, 2.0, 1, 7),
    ),
    (
        "linear_zero_steps_is_constant",
        lambda: linear_schedule(1.0, 0.1, transition_steps=0),
        lambda t: 1.0,
    ),
    (
        "linear_negative_begin_is_zero",
        lambda: linear_schedule(1.0, 0.1, transition_steps=10, transition_begin=-3),
        ref_polynomial(1.0, 0.1, 1, 10, 0),
    ),
    (
        "polynomial_power2_begin",
        lambda: polynomial_schedule(1.0, 0.01, power=2, transition_steps=20, transition_begin=4),
        ref_polynomial(1.0, 0.01, 2, 20, 4),
    ),
    (
        "polynomial_sqrt",
        lambda: polynomial_schedule(0.5, 0.0, power=0.5, transition_steps=50),
        ref_polynomial(0.5, 0.0, 0.5, 50),
    ),
    (
        "exponential_plain",
        lambda: exponential_decay(1.0, transition_steps=10, decay_rate=0.5),
        ref_exponential(1.0, 10, 0.5),
    ),
    (
        "exponential_staircase_begin_end",
        lambda: exponential_decay(1.0, 7, 0.5, transition_begin=3, staircase=True, end_value=0.1),
        ref_exponential(1.0, 7, 0.5, 3, True, 0.1),
    ),
    (
        "exponential_growth_upper_bound",
        lambda: exponential_decay(0.1, 5, 2.0, end_value=1.0),
        ref_exponential(0.1, 5, 2.0, end=1.0),
    ),
    (
        "exponential_bound_applies_before_begin",
        lambda: exponential_decay(0.05, 5, 0.5, transition_begin=10, end_value=0.1),
        lambda t: 0.1,
    ),
    (
        "exponential_zero_rate_is_constant",
        lambda: exponential_decay(0.3, 5, 0.0),
        lambda t: 0.3,
    ),
    (
        "cosine_default",
        lambda: cosine_decay_schedule(1.0, decay_steps=100),
        ref_cosine(1.0, 100),
    ),
    (
        "cosine_alpha_exponent",
        lambda: cosine_decay_schedule(1.0, decay_steps=50, alpha=0.1, exponent=2.0),
        ref_cosine(1.0, 50, 0.1, 2.0),
    ),
    (
        "piecewise_constant",
        lambda: piecewise_constant_schedule(1.0, {10: 0.5, 20: 0.1, 30: 4.0}),
        ref_piecewise_constant(1.0, {10: 0.5, 20: 0.1, 30: 4.0}),
    ),
    (
        "piecewise_constant_none",
        lambda: piecewise_constant_schedule(0.7),
        lambda t: 0.7,
    ),
    (
        "piecewise_interpolate_linear",
        lambda: piecewise_interpolate_schedule("linear", 1.0, {10: 2.0, 40: 0.5, 80: 0.1}),
        ref_interpolate("linear", [(0, 1.0), (10, 2.0), (40, 1.0), (80, 0.1)]),
    ),
    (
        "piecewise_interpolate_cosine",
        lambda: piecewise_interpolate_schedule("cosine", 1.0, {10: 2.0, 40: 0.5, 80: 0.1}),
        ref_interpolate("cosine", [(0, 1.0), (10, 2.0), (40, 1.0), (80, 0.1)]),
    ),
    (
        "piecewise_interpolate_empty",
        lambda: piecewise_interpolate_schedule("linear", 0.3, {}),
        lambda t: 0.3,
    ),
    (
        "linear_onecycle",
        lambda: linear_onecycle_schedule(100, peak_value=1.0),
        ref_interpolate("linear", [(0, 0.04), (30, 1.0), (85, 0.04), (100, 0.04 / 1e4)]),
    ),
    (
        "linear_onecycle_options",
        lambda: linear_onecycle_schedule(
            60, 2.0, pct_start=0.25, pct_final=0.75, div_factor=10.0, final_div_factor=100.0
        ),
        ref_interpolate("linear", [(0, 0.2), (15, 2.0), (45, 0.2), (60, 0.002)]),
    ),
    (
        "cosine_onecycle",
        lambda: cosine_onecycle_schedule(100, peak_value=1.0),
        ref_interpolate("cosine", [(0, 0.04), (30, 1.0), (100, 0.04 / 1e4)]),
    ),
    (
        "cosine_onecycle_options",
        lambda: cosine_onecycle_schedule(
            50, 2.0, pct_start=0.4, div_factor=10.0, final_div_factor=100.0
        ),
        ref_interpolate("cosine", [(0, 0.2), (20, 2.0), (50, 0.002)]),
    ),
    (
        "warmup_constant",
        lambda: warmup_constant_schedule(0.0, 1.0, warmup_steps=8),
        ref_polynomial(0.0, 1.0, 1, 8),
    ),
    (
        "warmup_cosine_decay",
        lambda: warmup_cosine_decay_schedule(0.1, 1.0, 10, 60, end_value=0.05, exponent=1.5),
        ref_warmup_cosine(0.1, 1.0, 10, 60, 0.05, 1.5),
    ),
    (
        "warmup_cosine_decay_no_warmup",
        lambda: warmup_cosine_decay_schedule(0.1, 1.0, 0, 40),
        ref_warmup_cosine(0.1, 1.0, 0, 40),
    ),
    (
        "warmup_exponential_decay",
        lambda: warmup_exponential_decay_schedule(
            0.0, 1.0, 10, 5, 0.5, transition_begin=3, staircase=True, end_value=0.1
        ),
        ref_join(
            [ref_polynomial(0.0, 1.0, 1, 10), ref_exponential(1.0, 5, 0.5, 3, True, 0.1)], [10]
        ),
    ),
    (
        "sgdr",
        lambda: sgdr_schedule(SGDR_CYCLES),
        ref_join(
            [ref_warmup_cosine(0.0, 1.0, 5, 40, 0.01), ref_warmup_cosine(0.01, 0.5, 10, 60)], [40]
        ),
    ),
    (
        "join",
        lambda: join_schedules(
            [constant_schedule(1.0), linear_schedule(1.0, 0.0, 30), cosine_decay_schedule(0.5, 20)],
            [20, 50],
        ),
        ref_join([lambda t: 1.0, ref_polynomial(1.0, 0.0, 1, 30), ref_cosine(0.5, 20)], [20, 50]),
    ),
    (
        "join_python_callables",
        lambda: join_schedules([lambda c: 2, lambda c: 0.5], [3]),
        lambda t: 2.0 if t < 3 else 0.5,
    ),
    (
        "wsd_linear",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, 10, 100, 20, end_value=0.1),
        ref_wsd(0.0, 1.0, 10, 100, 20, 0.1),
    ),
    (
        "wsd_cosine",
        lambda: warmup_stable_decay_schedule(0.1, 1.0, 10, 100, 30, decay_type="cosine"),
        ref_wsd(0.1, 1.0, 10, 100, 30, kind="cosine"),
    ),
    (
        "wsd_sqrt_no_warmup",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, 0, 50, 25, 0.01, "sqrt"),
        ref_wsd(0.0, 1.0, 0, 50, 25, 0.01, "sqrt"),
    ),
    (
        "wsd_no_stable_phase",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, 20, 50, 30, decay_type="cosine"),
        ref_wsd(0.0, 1.0, 20, 50, 30, kind="cosine"),
    ),
]
CASE_IDS = [c[0] for c in CASES]
FACTORIES = {name: factory for name, factory, _ in CASES}


@pytest.mark.parametrize(("name", "factory", "ref"), CASES, ids=CASE_IDS)
def test_schedule_matches_closed_form(name: str, factory: Callable[[], Schedule], ref) -> None:
    sched = factory()
    got = [float(sched(torch.tensor(t))) for t in COUNTS]
    want = [float(ref(t)) for t in COUNTS]
    for t, g, w in zip(COUNTS, got, want):
        assert math.isclose(g, w, rel_tol=RTOL, abs_tol=ATOL), f"{name} at count {t}: {g} != {w}"


@pytest.mark.parametrize("name", CASE_IDS)
def test_schedule_int_and_tensor_counts_agree_and_give_0d_float64(name: str) -> None:
    sched = FACTORIES[name]()
    for t in (0, 1, 7, 10, 45, 99, 100, 101, 10_000):
        from_int = sched(t)
        for count in (torch.tensor(t), torch.tensor(t, dtype=torch.int32)):
            from_tensor = sched(count)
            assert from_tensor.shape == () and from_tensor.dtype == torch.float64
            assert from_tensor.device == count.device
            assert torch.equal(from_int, from_tensor), (name, t)


@pytest.mark.parametrize("name", CASE_IDS)
def test_schedule_follows_count_device(name: str) -> None:
    # The meta device runs the same code path as any non-CPU device, without hardware.
    out = FACTORIES[name]()(torch.tensor(12, device="meta"))
    assert out.device.type == "meta" and out.dtype == torch.float64 and out.shape == ()


def test_float_dtype_is_float32_only_on_mps() -> None:
    assert _common.float_dtype(torch.device("cpu")) == torch.float64
    assert _common.float_dtype(torch.device("meta")) == torch.float64
    assert _common.float_dtype(torch.device("mps")) == torch.float32


@pytest.mark.parametrize("name", CASE_IDS)
def test_schedule_vmaps_over_counts(name: str) -> None:
    sched = FACTORIES[name]()
    counts = torch.tensor([0, 3, 9, 10, 11, 29, 30, 31, 55, 99, 100, 120, 10_000])
    batched = torch.func.vmap(sched)(counts)
    eager = torch.stack([sched(c) for c in counts])
    assert batched.dtype == torch.float64
    # Vectorised transcendental kernels may differ from the scalar ones in the last bit.
    torch.testing.assert_close(batched, eager, rtol=1e-14, atol=0.0)


COMPILE_COUNTS = [*range(1, 40, 3), 45, 59, 60, 61, 80, 99, 100, 101, 150, 10_000]


def _assert_compiles_without_recompiles(sched: Schedule, backend: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(lambda c: sched(c), fullgraph=True, backend=backend)
    torch.testing.assert_close(compiled(torch.tensor(0)), sched(torch.tensor(0)), rtol=0, atol=0)
    with torch.compiler.set_stance("fail_on_recompile"):
        got = torch.stack([compiled(torch.tensor(t)) for t in COMPILE_COUNTS])
    want = torch.stack([sched(torch.tensor(t)) for t in COMPILE_COUNTS])
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0.0)


# One configuration per public schedule (the one exercising the most code paths).
COMPILE_CASE_IDS = [
    "constant",
    "linear_begin",
    "polynomial_power2_begin",
    "exponential_staircase_begin_end",
    "cosine_alpha_exponent",
    "piecewise_constant",
    "piecewise_interpolate_cosine",
    "linear_onecycle",
    "cosine_onecycle",
    "warmup_constant",
    "warmup_cosine_decay",
    "warmup_exponential_decay",
    "sgdr",
    "join",
    "wsd_sqrt_no_warmup",
]


@pytest.mark.parametrize("name", COMPILE_CASE_IDS)
def test_schedule_compiles_fullgraph_without_recompiles(name: str) -> None:
    # Recompiles are decided by Dynamo's guards, whatever the backend; aot_eager keeps it fast.
    _assert_compiles_without_recompiles(FACTORIES[name](), backend="aot_eager")


@pytest.mark.parametrize("name", ["piecewise_interpolate_cosine", "warmup_exponential_decay"])
def test_schedule_compiles_with_inductor(name: str) -> None:
    # Two representatives cover Inductor's float64 codegen (cos, cumprod, sum, pow, floor, where,
    # clamp); every schedule was checked once with Inductor by hand (~2 s each: too slow here).
    _assert_compiles_without_recompiles(FACTORIES[name](), backend="inductor")


# --- Gradients with respect to tensor hyperparameters -------------------------------------

GRAD_CASES: list[tuple[str, Callable[[torch.Tensor], Schedule], float, int]] = [
    ("linear_init", lambda x: linear_schedule(x, 0.1, 10), 0.8, 3),
    ("polynomial_power", lambda x: polynomial_schedule(1.0, 0.1, x, 10), 1.7, 4),
    ("exponential_init", lambda x: exponential_decay(x, 10, 0.5), 0.8, 13),
    ("exponential_end_bound", lambda x: exponential_decay(1.0, 10, 0.5, end_value=x), 0.3, 40),
    ("cosine_alpha", lambda x: cosine_decay_schedule(1.0, 50, alpha=x), 0.2, 20),
    ("cosine_exponent", lambda x: cosine_decay_schedule(1.0, 50, exponent=x), 1.5, 20),
    ("piecewise_constant_init", lambda x: piecewise_constant_schedule(x, {5: 0.5}), 0.8, 7),
    (
        "piecewise_interpolate_init",
        lambda x: piecewise_interpolate_schedule("cosine", x, {10: 0.5}),
        0.8,
        4,
    ),
    ("onecycle_peak", lambda x: linear_onecycle_schedule(100, x), 0.8, 50),
    ("warmup_cosine_peak", lambda x: warmup_cosine_decay_schedule(0.0, x, 10, 50, 0.01), 0.8, 30),
    ("warmup_cosine_end", lambda x: warmup_cosine_decay_schedule(0.0, 1.0, 10, 50, x), 0.1, 30),
    (
        "wsd_peak_sqrt",
        lambda x: warmup_stable_decay_schedule(0.0, x, 10, 100, 20, 0.1, "sqrt"),
        0.8,
        90,
    ),
    ("wsd_init_warmup", lambda x: warmup_stable_decay_schedule(x, 1.0, 10, 100, 20), 0.1, 4),
]


@pytest.mark.parametrize(
    ("name", "make", "x0", "count"), GRAD_CASES, ids=[c[0] for c in GRAD_CASES]
)
def test_schedule_grad_wrt_tensor_hyperparameter(name, make, x0: float, count: int) -> None:
    def value(x: torch.Tensor) -> torch.Tensor:
        return make(x)(torch.tensor(count))

    x = torch.tensor(x0, dtype=torch.float64)
    grad = torch.func.grad(value)(x)
    h = 1e-6
    finite_difference = (value(x + h) - value(x - h)) / (2 * h)
    assert grad.dtype == torch.float64
    torch.testing.assert_close(grad, finite_difference, rtol=1e-6, atol=1e-9)


def test_float32_hyperparameter_tensor_still_gives_float64() -> None:
    lr = torch.tensor(0.1, dtype=torch.float32)
    out = linear_schedule(lr, 0.0, 10)(torch.tensor(5))
    assert out.dtype == torch.float64
    assert float(out) == pytest.approx(float(lr) / 2, rel=1e-15)


# --- Validation ---------------------------------------------------------------------------

INVALID: list[tuple[str, Callable[[], Any], str]] = [
    (
        "exponential_negative_rate",
        lambda: exponential_decay(1.0, 10, -0.5),
        r"decay_rate must be >= 0",
    ),
    ("exponential_nan_rate", lambda: exponential_decay(1.0, 10, math.nan), r"decay_rate"),
    ("cosine_zero_steps", lambda: cosine_decay_schedule(1.0, 0), r"decay_steps must be > 0"),
    ("cosine_negative_steps", lambda: cosine_decay_schedule(1.0, -5), r"decay_steps must be > 0"),
    (
        "piecewise_constant_negative_scale",
        lambda: piecewise_constant_schedule(1.0, {10: -0.1}),
        r"scale .* must be >= 0, got -0.1 at boundary 10",
    ),
    (
        "piecewise_interpolate_type",
        lambda: piecewise_interpolate_schedule("cubic", 1.0, {10: 0.1}),
        r"interpolate_type must be 'linear' or 'cosine', got 'cubic'",
    ),
    (
        "piecewise_interpolate_negative_scale",
        lambda: piecewise_interpolate_schedule("linear", 1.0, {10: -1.0}),
        r"scale .* must be >= 0",
    ),
    (
        "linear_onecycle_zero_steps",
        lambda: linear_onecycle_schedule(0, 1.0),
        r"transition_steps must be > 0",
    ),
    (
        "cosine_onecycle_negative_steps",
        lambda: cosine_onecycle_schedule(-1, 1.0),
        r"transition_steps must be > 0",
    ),
    (
        "linear_onecycle_pcts",
        lambda: linear_onecycle_schedule(100, 1.0, pct_start=0.9, pct_final=0.5),
        r"0 <= pct_start <= pct_final <= 1",
    ),
    (
        "cosine_onecycle_pct",
        lambda: cosine_onecycle_schedule(100, 1.0, pct_start=1.5),
        r"pct_start must be in \[0, 1\]",
    ),
    (
        "linear_onecycle_div",
        lambda: linear_onecycle_schedule(100, 1.0, div_factor=0.0),
        r"div_factor must be > 0",
    ),
    (
        "cosine_onecycle_final_div",
        lambda: cosine_onecycle_schedule(100, 1.0, final_div_factor=-1.0),
        r"final_div_factor must be > 0",
    ),
    (
        "warmup_constant_negative",
        lambda: warmup_constant_schedule(0.0, 1.0, -1),
        r"warmup_steps must be >= 0",
    ),
    (
        "warmup_cosine_decay_too_short",
        lambda: warmup_cosine_decay_schedule(0.0, 1.0, 10, 10),
        r"decay_steps .* must be > warmup_steps=10, got 10",
    ),
    (
        "warmup_cosine_negative_warmup",
        lambda: warmup_cosine_decay_schedule(0.0, 1.0, -2, 10),
        r"warmup_steps must be >= 0",
    ),
    (
        "warmup_exponential_negative_warmup",
        lambda: warmup_exponential_decay_schedule(0.0, 1.0, -2, 10, 0.5),
        r"warmup_steps must be >= 0",
    ),
    ("sgdr_empty", lambda: sgdr_schedule([]), r"at least one cycle"),
    (
        "sgdr_bad_cycle",
        lambda: sgdr_schedule(
            [dict(init_value=0.0, peak_value=1.0, warmup_steps=5, decay_steps=5)]
        ),
        r"decay_steps",
    ),
    ("join_empty", lambda: join_schedules([], []), r"at least one schedule"),
    (
        "join_mismatched",
        lambda: join_schedules([constant_schedule(1.0), constant_schedule(2.0)], [1, 2]),
        r"boundaries must have len\(schedules\) - 1 = 1 entries, got 2",
    ),
    (
        "join_decreasing",
        lambda: join_schedules([constant_schedule(1.0)] * 3, [5, 2]),
        r"boundaries must be non-decreasing",
    ),
    (
        "wsd_zero_decay",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, 10, 100, 0),
        r"decay_steps must be > 0",
    ),
    (
        "wsd_negative_warmup",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, -1, 100, 10),
        r"warmup_steps must be >= 0",
    ),
    (
        "wsd_too_long",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, 60, 100, 50),
        r"warmup_steps \+ decay_steps <= total_steps",
    ),
    (
        "wsd_decay_type",
        lambda: warmup_stable_decay_schedule(0.0, 1.0, 10, 100, 10, decay_type="exp"),  # type: ignore[arg-type]
        r"decay_type must be 'linear', 'cosine' or 'sqrt', got 'exp'",
    ),
]


@pytest.mark.parametrize(("name", "build", "match"), INVALID, ids=[c[0] for c in INVALID])
def test_schedule_rejects_invalid_arguments(
    name: str, build: Callable[[], Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_optax_fallbacks_are_kept() -> None:
    # optax logs and falls back instead of raising; we do the same.
    assert float(polynomial_schedule(0.3, 0.0, 2, transition_steps=-4)(50)) == 0.3
    assert float(exponential_decay(0.3, transition_steps=0, decay_rate=0.5)(50)) == 0.3
    shifted = exponential_decay(1.0, 10, 0.5, transition_begin=-5)
    assert float(shifted(10)) == 0.5


def test_onecycle_colliding_boundaries_follow_optax() -> None:
    # With 1 step, int(0.3) == int(0.85) == 0: optax's dict literal keeps the later scale, so
    # the cycle is {0: 1/25, 1: 1e-4} and never reaches the peak. We keep that behaviour.
    sched = linear_onecycle_schedule(1, 1.0)
    expected = piecewise_interpolate_schedule("linear", 1.0 / 25.0, {0: 1.0 / 25.0, 1: 1e-4})
    for t in range(4):
        assert torch.equal(sched(t), expected(t))
    assert math.isclose(float(sched(0)), 0.04 * 0.04, rel_tol=1e-15)


# --- Property tests -----------------------------------------------------------------------

finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    init=finite,
    end=finite,
    power=st.sampled_from([1, 2, 3, 0.5, 1.5]),
    steps=st.integers(1, 50),
    begin=st.integers(0, 20),
    t=st.integers(-5, 100),
)
def test_polynomial_matches_closed_form_everywhere(init, end, power, steps, begin, t) -> None:
    got = float(polynomial_schedule(init, end, power, steps, begin)(t))
    want = ref_polynomial(init, end, power, steps, begin)(t)
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    init=st.floats(0.0, 1.0),
    peak=st.floats(0.0, 1.0),
    end=st.floats(0.0, 1.0),
    warmup=st.integers(0, 30),
    stable=st.integers(0, 30),
    decay=st.integers(1, 30),
    kind=st.sampled_from(["linear", "cosine", "sqrt"]),
    t=st.integers(-5, 120),
)
def test_wsd_matches_closed_form_and_stays_in_range(
    init, peak, end, warmup, stable, decay, kind, t
):
    total = warmup + stable + decay
    got = float(warmup_stable_decay_schedule(init, peak, warmup, total, decay, end, kind)(t))
    want = ref_wsd(init, peak, warmup, total, decay, end, kind)(t)
    assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15)
    assert min(init, peak, end) - 1e-15 <= got <= max(init, peak, end) + 1e-15


# --- Against optax ------------------------------------------------------------------------


def _decode(value: Any, key: str = "") -> Any:
    """Rebuild the Python arguments from the goldens' JSON encoding."""
    if isinstance(value, dict) and "schedule" in value:
        return getattr(schedules, value["schedule"])(**_decode(value["kwargs"]))
    if key == "boundaries_and_scales":
        return {int(k): v for k, v in value.items()}
    if isinstance(value, dict):
        return {k: _decode(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _golden_cases() -> list[Any]:
    if not GOLDENS.exists():
        return [pytest.param(None, id="no-goldens")]
    cases = json.loads(GOLDENS.read_text())["schedules"]
    return [pytest.param(case, id=case["id"]) for case in cases]


@pytest.mark.parametrize("case", _golden_cases())
def test_schedule_matches_optax_golden(case: dict[str, Any] | None) -> None:
    if case is None:
        pytest.skip(f"{GOLDENS} is absent; run tests/goldens/make_optax_goldens.py")
    sched = getattr(schedules, case["name"])(**_decode(case["kwargs"]))
    for t, want in zip(case["counts"], case["values"], strict=True):
        got = float(sched(torch.tensor(t)))
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=ATOL), (
            f"{case['id']} at count {t}: ours {got!r}, optax {want!r}"
        )


# --- Documentation ------------------------------------------------------------------------


def test_public_names_are_exported_and_documented() -> None:
    for name in schedules.__all__:
        obj = getattr(schedules, name)
        if name == "Schedule":
            continue
        doc = obj.__doc__ or ""
        for section in ("Args:", "Returns:", "Examples:", "optax equivalent"):
            assert section in doc, f"{name} docstring lacks {section!r}"
        assert "$" in doc, f"{name} docstring lacks its formula"


@pytest.mark.parametrize("module", [_join, _schedules, _warmup], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
