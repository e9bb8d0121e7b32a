"""L-BFGS and line searches against optax 0.2.8 (float64 goldens), compiled, and vmapped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo.testing

import torchopt_fn as tf
from tests.helpers import GOLDEN, assert_trees_close

F64 = torch.float64
GOLDENS = json.loads((Path(__file__).parent / "goldens" / "optax_wrapper_goldens.json").read_text())
CASES = GOLDENS["linesearch_cases"]


def rosenbrock(params: dict[str, torch.Tensor]) -> torch.Tensor:
    x = params["x"]
    return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()


def _problem(case: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    if case.get("problem") == "rosenbrock":
        return rosenbrock, {"x": torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=F64)}
    return GOLDEN.loss, GOLDEN.init_params(F64)


def _run(case: dict[str, Any], tx: tf.GradientTransformation, step_fn=None):
    """The goldens' protocol; yields params, the line search's iterations and the value."""
    fn, params = _problem(case)
    state = tx.init(params)
    value_and_grad = tf.value_and_grad_from_state(fn)

    def step(params, state):
        if case["protocol"] == "from_state":
            value, grad = value_and_grad(params, state=state)
        else:
            grad, value = torch.func.grad_and_value(fn)(params)
        extra = {} if case["protocol"] == "plain" else {"value": value, "grad": grad}
        if extra:
            extra["value_fn"] = fn
        updates, state = tx.update(grad, state, params, **extra)
        return tf.apply_updates(params, updates), state

    step = step_fn(step) if step_fn else step
    for _ in range(case.get("steps", GOLDENS["steps"])):
        params, state = step(params, state)
        steps = tf.tree_get(state, "num_linesearch_steps")
        yield params, None if steps is None else int(steps), float(fn(params))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_matches_optax(case: dict[str, Any]):
    tx = eval(case["expr"], {"ox": tf})
    expected = case["trajectory"]
    # The line search decides the same at every step (its iteration count is asserted
    # exactly); the params differ by rounding only, which the ill-conditioned Rosenbrock
    # valley amplifies about tenfold every few steps (1e-16 at the first, 1e-10 at the 25th).
    rtol = 1e-9 if case.get("problem") == "rosenbrock" else 1e-11
    for i, (params, steps, value) in enumerate(_run(case, tx)):
        assert steps == expected["num_linesearch_steps"][i], f"step {i}"
        for k, v in params.items():
            torch.testing.assert_close(
                v.reshape(-1), torch.tensor(expected[k][i], dtype=F64), rtol=rtol, atol=1e-13
            )
        assert value == pytest.approx(expected["value"][i], rel=rtol, abs=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize(
    "expr",
    [
        # A short zoom: the compiled search unrolls all its trips (compile time grows with
        # max_linesearch_steps; the default 20 takes about a minute on CPU).
        "ox.lbfgs(linesearch=ox.scale_by_zoom_linesearch(4, initial_guess_strategy='one'))",
        "ox.chain(ox.sgd(1.0), ox.scale_by_backtracking_linesearch(6))",
    ],
    ids=["lbfgs_zoom", "backtracking"],
)
def test_compiled_line_search_is_a_fixed_trip_loop_with_the_same_numbers(expr):
    case = {"protocol": "from_state" if "lbfgs" in expr else "fresh", "steps": 6}
    tx = eval(expr, {"ox": tf})
    eager = [p for p, _, _ in _run(case, tx)]
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = [
        p for p, _, _ in _run(case, tx, lambda f: torch.compile(f, backend=counter, fullgraph=True))
    ]
    assert_trees_close(compiled, eager, rtol=1e-10)
    # One graph, and one more at most for the first step (the state's value is inf there).
    assert counter.frame_count <= 2


def test_vmapped_lbfgs_equals_each_member_alone():
    tx = tf.lbfgs(memory_size=4)
    starts = torch.tensor([[-1.2, 1.0], [0.5, 0.5], [2.0, -1.0]], dtype=F64)

    def run(x0: torch.Tensor, steps: int = 6) -> torch.Tensor:
        params = {"x": x0}
        state = tx.init(params)
        value_and_grad = tf.value_and_grad_from_state(rosenbrock)
        for _ in range(steps):
            value, grad = value_and_grad(params, state=state)
            updates, state = tx.update(
                grad, state, params, value=value, grad=grad, value_fn=rosenbrock
            )
            params = tf.apply_updates(params, updates)
        return params["x"]

    batched = torch.func.vmap(run)(starts)
    for i in range(3):
        torch.testing.assert_close(batched[i], run(starts[i]), rtol=1e-10, atol=1e-12)


def test_line_searches_need_their_extra_arguments_and_refuse_stray_ones():
    params = {"w": torch.ones(2)}
    tx = tf.chain(tf.sgd(1.0), tf.scale_by_zoom_linesearch(5))
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(params, tx.init(params), params)
    f = lambda p: (p["w"] ** 2).sum()  # noqa: E731
    with pytest.raises(TypeError, match="stray"):
        tx.update(params, tx.init(params), params, value=f(params), grad=params, value_fn=f,
                  stray=1)  # fmt: skip
    with pytest.raises(ValueError, match="initial_guess_strategy"):
        tf.scale_by_zoom_linesearch(5, initial_guess_strategy="double")
    with pytest.raises(ValueError, match="memory_size"):
        tf.scale_by_lbfgs(0)


def test_value_fn_gets_the_extra_arguments_it_names():
    def f(p, target):
        return ((p["w"] - target) ** 2).sum()

    params, target = {"w": torch.zeros(2, dtype=F64)}, torch.tensor([1.0, -2.0], dtype=F64)
    tx = tf.lbfgs()
    state = tx.init(params)
    value_and_grad = tf.value_and_grad_from_state(f)
    for _ in range(3):
        value, grad = value_and_grad(params, target, state=state)
        updates, state = tx.update(
            grad, state, params, value=value, grad=grad, value_fn=f, target=target
        )
        params = tf.apply_updates(params, updates)
    torch.testing.assert_close(params["w"], target)


def test_lbfgs_passes_none_gradients_through():
    params = {"w": torch.tensor([1.0, 2.0], dtype=F64), "frozen": torch.ones(1, dtype=F64)}
    tx = tf.lbfgs(learning_rate=0.5, linesearch=None)
    updates, _ = tx.update({"w": torch.tensor([1.0, 0.0], dtype=F64), "frozen": None},
                               tx.init(params), params)  # fmt: skip
    assert updates["frozen"] is None and torch.isfinite(updates["w"]).all()
