"""L-BFGS to convergence on two classic problems: torchopt_fn against torch.optim and SciPy.

Runs each L-BFGS once (after one untimed warm-up run) from the same start, in float64, and
prints one markdown table per problem: iterations, objective evaluations (counted by wrapping
the objective), the final objective value and gradient inf-norm, wall time, and why it
stopped. The contenders:

- ``tf.lbfgs()``: the functional, optax-style L-BFGS (memory 10, zoom line search), driven by
  ``value_and_grad_from_state`` + ``update`` + ``apply_updates``;
- ``tf.Optimizer(params, tf.from_torch("LBFGS", line_search_fn="strong_wolfe"))``: the drop-in
  for torch's closure-driven L-BFGS, driven by ``opt.step(closure)``;
- ``torch.optim.LBFGS(..., line_search_fn="strong_wolfe")`` itself (the script checks that the
  drop-in ends at the same parameters, bit for bit, with the same counts);
- ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` when SciPy is installed.

The problems: Rosenbrock in 10 dimensions from (-1.2, 1, -1.2, 1, ...), and L2-regularised
logistic regression on scikit-learn's bundled breast-cancer data (standardised features,
bias, weight decay 1e-3 * ||w||^2 / 2; a seeded synthetic data set when scikit-learn is not
installed).

Every method stops at a gradient inf-norm <= 1e-8, after 200 iterations, or when the objective
or the step changes by less than 1e-12 (torch's ``tolerance_change``; SciPy's ``ftol``; the same
rule is checked in the ``tf.lbfgs()`` loop); ``--change-tol 0`` leaves only the gradient and
iteration limits. The header printed first states them. Timings are never asserted anywhere.

    python benchmarks/bench_lbfgs.py                    # both problems, one thread, ~5 s
    python benchmarks/bench_lbfgs.py --change-tol 0     # run until the gradient test passes
    python benchmarks/bench_lbfgs.py --threads 2 --max-iter 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import torchopt_fn as tf

sys.path.insert(0, os.path.dirname(__file__))
from bench_step import machine_description

DTYPE = torch.float64
MEMORY = 10  # L-BFGS history, for every contender
WEIGHT_DECAY = 1e-3

# Why a run stopped (the table's last column).
GRAD = "gradient"
CHANGE = "f or step change"
MAX_ITER = "max iterations"
MAX_EVAL = "max evaluations"

Objective = Callable[[torch.Tensor], torch.Tensor]  # flat float64 vector -> 0-d tensor


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    name: str
    description: str
    objective: Objective
    x0: torch.Tensor


def rosenbrock(n: int = 10) -> Problem:
    """The chained Rosenbrock function in ``n`` dimensions; its minimum is 0 at all-ones."""

    def f(x: torch.Tensor) -> torch.Tensor:
        return (100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2).sum()

    x0 = torch.tensor([-1.2, 1.0] * (n // 2) + [-1.2] * (n % 2), dtype=DTYPE)
    return Problem(f"Rosenbrock {n}-D", "start (-1.2, 1, -1.2, 1, ...), minimum 0", f, x0)


def _breast_cancer() -> tuple[torch.Tensor, torch.Tensor, str] | None:
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        return None
    data = load_breast_cancer()
    features = torch.tensor(data.data, dtype=DTYPE)
    labels = torch.tensor(data.target, dtype=DTYPE)
    return features, labels, "scikit-learn's load_breast_cancer()"


def _synthetic(n: int = 569, d: int = 30) -> tuple[torch.Tensor, torch.Tensor, str]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, d, generator=gen, dtype=DTYPE)
    w_true = torch.randn(d, generator=gen, dtype=DTYPE)
    probs = torch.sigmoid(features @ w_true)
    labels = torch.bernoulli(probs, generator=gen)
    return features, labels, "SYNTHETIC data (scikit-learn not installed; torch.Generator seed 0)"


def logistic_regression() -> Problem:
    """Mean binary cross-entropy + WEIGHT_DECAY * ||w||^2 / 2; x = (w, b), starting at 0."""
    features, labels, source = _breast_cancer() or _synthetic()
    features = (features - features.mean(0)) / features.std(0)
    n, d = features.shape

    def f(x: torch.Tensor) -> torch.Tensor:
        w, b = x[:d], x[d]
        logits = features @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return loss + 0.5 * WEIGHT_DECAY * (w * w).sum()

    description = (
        f"{source}, {n} samples x {d} standardised features + bias, "
        f"weight decay {WEIGHT_DECAY:g} * ||w||^2 / 2, start 0"
    )
    return Problem("Logistic regression", description, f, torch.zeros(d + 1, dtype=DTYPE))


# --------------------------------------------------------------------------- contenders


@dataclass(frozen=True)
class Criteria:
    grad_tol: float  # stop when the gradient's inf-norm is at most this
    max_iter: int
    change_tol: float  # torch's tolerance_change, SciPy's ftol
    max_eval: int  # torch's max_eval, SciPy's maxfun


@dataclass
class Result:
    method: str
    iterations: int
    evals: int
    seconds: float
    stopped_by: str
    x: torch.Tensor
    value: float = float("nan")
    grad_norm: float = float("nan")
    note: str = ""


class Counted:
    """The objective, counting its calls (each call is one value-and-gradient evaluation)."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.objective(x)


def value_and_grad_norm(objective: Objective, x: torch.Tensor) -> tuple[float, float]:
    """f(x) and the inf-norm of its gradient (for the report: not counted)."""
    x = x.detach().clone().requires_grad_(True)
    value = objective(x)
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), float(grad.abs().max())


def run_tf_lbfgs(problem: Problem, crit: Criteria) -> Result:
    """The functional loop, with torch's stop rules applied to its values and updates."""
    f = Counted(problem.objective)

    def value_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return f(params["x"])

    start = time.perf_counter()
    opt = tf.lbfgs(memory_size=MEMORY)
    params = {"x": problem.x0.clone()}
    state = opt.init(params)
    value_and_grad = tf.value_and_grad_from_state(value_fn)
    value, grad = value_and_grad(params, state=state)  # the one evaluation outside a search
    linesearch_evals, iterations, stopped_by = 0, 0, GRAD
    while float(grad["x"].abs().max()) > crit.grad_tol:
        if iterations == crit.max_iter:
            stopped_by = MAX_ITER
            break
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
        params = tf.apply_updates(params, updates)
        linesearch_evals += int(tf.tree_get(state, "num_linesearch_steps"))
        iterations += 1
        prev_value = float(value)
        value, grad = value_and_grad(params, state=state)  # the search's last evaluation
        step = float(updates["x"].abs().max())
        if float(grad["x"].abs().max()) > crit.grad_tol and (
            step <= crit.change_tol or abs(float(value) - prev_value) < crit.change_tol
        ):
            stopped_by = CHANGE
            break
    seconds = time.perf_counter() - start
    expected = 1 + linesearch_evals
    note = "" if f.calls == expected else f"counted {f.calls} != 1 + line-search steps {expected}"
    return Result("tf.lbfgs()", iterations, f.calls, seconds, stopped_by, params["x"], note=note)


def _torch_closure_driven(
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    method: str,
    problem: Problem,
    crit: Criteria,
) -> Result:
    f = Counted(problem.objective)
    start = time.perf_counter()
    p = problem.x0.clone().requires_grad_(True)
    opt = make([p])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = f(p)
        loss.backward()
        return loss

    opt.step(closure)
    seconds = time.perf_counter() - start
    state = opt.state[p]
    iterations, func_evals = int(state["n_iter"]), int(state["func_evals"])
    note = "" if func_evals == f.calls else f"state func_evals {func_evals} != counted {f.calls}"
    # The last closure call may be at a point the line search rejected: re-evaluate.
    if value_and_grad_norm(problem.objective, p)[1] <= crit.grad_tol:
        stopped_by = GRAD
    elif iterations >= crit.max_iter:
        stopped_by = MAX_ITER
    elif func_evals >= crit.max_eval:
        stopped_by = MAX_EVAL
    else:
        stopped_by = CHANGE
    return Result(method, iterations, f.calls, seconds, stopped_by, p.detach().clone(), note=note)


def _lbfgs_options(crit: Criteria) -> dict[str, object]:
    return {
        "lr": 1,
        "max_iter": crit.max_iter,
        "max_eval": crit.max_eval,
        "tolerance_grad": crit.grad_tol,
        "tolerance_change": crit.change_tol,
        "history_size": MEMORY,
        "line_search_fn": "strong_wolfe",
    }


def run_tf_optimizer(problem: Problem, crit: Criteria) -> Result:
    def make(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return tf.Optimizer(params, tf.from_torch("LBFGS", **_lbfgs_options(crit)))

    return _torch_closure_driven(make, 'tf.Optimizer(from_torch("LBFGS"))', problem, crit)


def run_torch(problem: Problem, crit: Criteria) -> Result:
    def make(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(params, **_lbfgs_options(crit))

    return _torch_closure_driven(make, "torch.optim.LBFGS", problem, crit)


def _scipy_reason(message: str) -> str:
    for keyword, reason in (
        ("PROJECTED GRADIENT", GRAD),
        ("REDUCTION OF F", CHANGE),
        ("ITERATIONS", MAX_ITER),
        ("EVALUATIONS", MAX_EVAL),
    ):
        if keyword in message.upper():
            return reason
    return message


def run_scipy(problem: Problem, crit: Criteria) -> Result | None:
    try:
        from scipy.optimize import minimize
    except ImportError:
        return None
    f = Counted(problem.objective)

    def fun(x: Any) -> tuple[float, Any]:  # a NumPy vector in, (value, NumPy gradient) out
        xt = torch.from_numpy(x).requires_grad_(True)
        value = f(xt)
        (grad,) = torch.autograd.grad(value, xt)
        return float(value.detach()), grad.numpy()

    start = time.perf_counter()
    options = {
        "maxcor": MEMORY,
        "gtol": crit.grad_tol,
        "ftol": crit.change_tol,
        "maxiter": crit.max_iter,
        "maxfun": crit.max_eval,
    }
    res = minimize(fun, problem.x0.numpy().copy(), jac=True, method="L-BFGS-B", options=options)
    seconds = time.perf_counter() - start
    note = "" if res.nfev == f.calls else f"nfev {res.nfev} != counted {f.calls}"
    stopped_by = _scipy_reason(str(res.message))
    x = torch.from_numpy(res.x).clone()
    return Result("scipy L-BFGS-B", int(res.nit), f.calls, seconds, stopped_by, x, note=note)


def finish(result: Result, problem: Problem) -> Result:
    """The objective and gradient inf-norm at the final point (one evaluation, not counted)."""
    result.value, result.grad_norm = value_and_grad_norm(problem.objective, result.x)
    return result


RUNNERS: list[Callable[[Problem, Criteria], Result | None]] = [
    run_tf_lbfgs,
    run_tf_optimizer,
    run_torch,
    run_scipy,
]


def run_all(problem: Problem, crit: Criteria) -> list[Result]:
    results = []
    for runner in RUNNERS:
        runner(problem, crit)  # warm-up, untimed
        result = runner(problem, crit)
        if result is not None:
            results.append(finish(result, problem))
    return results


# --------------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    head = "| method | iterations | f evals | final f | grad inf-norm | ms | stopped by |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(
            f"| {r.method} | {r.iterations} | {r.evals} | {r.value:.6e} | {r.grad_norm:.1e} "
            f"| {r.seconds * 1e3:.1f} | {r.stopped_by} |"
        )
    return "\n".join(lines)


def checks(results: list[Result]) -> list[str]:
    """The drop-in against torch's LBFGS (same final x, same counts), and our counts."""
    lines = [f"COUNT MISMATCH: {r.method}: {r.note}" for r in results if r.note]
    if not lines:
        lines.append(
            "counted evaluations agree with each method's own count (tf.lbfgs: 1 + the sum of "
            "num_linesearch_steps; torch: state func_evals; scipy: nfev)"
        )
    by_name = {r.method: r for r in results}
    ours, theirs = by_name['tf.Optimizer(from_torch("LBFGS"))'], by_name["torch.optim.LBFGS"]
    diff = float((ours.x - theirs.x).abs().max())
    same = (ours.iterations, ours.evals) == (theirs.iterations, theirs.evals)
    verdict = "bit-identical" if diff == 0.0 and same else "DIFFERENT"
    lines.append(
        f"drop-in vs torch.optim.LBFGS: max |x_tf - x_torch| = {diff:.3e}, iterations "
        f"{ours.iterations} vs {theirs.iterations}, f evals {ours.evals} vs {theirs.evals}: "
        f"{verdict}"
    )
    return lines


def header(crit: Criteria, threads: int) -> str:
    return "\n".join(
        [
            f"Machine: {machine_description()}",
            f"torch and BLAS (SciPy's OpenBLAS) limited to {threads} thread(s). float64; every "
            "method keeps 10 pairs; one untimed warm-up run, then one timed run",
            "(time.perf_counter, ms); 'f evals' counts calls of the objective (each is one value "
            "+ gradient); final f and grad inf-norm are re-evaluated at the final x.",
            f"Stop: gradient inf-norm <= {crit.grad_tol:g}, or {crit.max_iter} iterations, or "
            f"a change below {crit.change_tol:g}:",
            "  tf.lbfgs(): torch's rules, checked in the loop: |f change| < change tol or "
            "update inf-norm <= change tol;",
            "    zoom line search from step 1, at most 20 evaluations per step;",
            f"  torch / drop-in: lr 1, strong_wolfe, tolerance_grad {crit.grad_tol:g}, "
            f"tolerance_change {crit.change_tol:g}, max_eval {crit.max_eval};",
            f"  scipy L-BFGS-B: gtol {crit.grad_tol:g} (projected gradient inf-norm), ftol "
            f"{crit.change_tol:g} (f change / max(|f|, 1)), maxiter {crit.max_iter}, "
            f"maxfun {crit.max_eval}.",
        ]
    )


def limit_threads(threads: int) -> None:
    """torch's intra-op threads, and the BLAS threads SciPy's L-BFGS-B calls into.

    SciPy's OpenBLAS uses every core by default; on a 2-core machine its thread hand-offs
    made L-BFGS-B's tiny BLAS calls about 30x slower (measured: 575 ms against 19 ms).
    """
    torch.set_num_threads(threads)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # BLAS libraries loaded later
        os.environ[var] = str(threads)
    try:  # those already loaded (NumPy's)
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    parser.add_argument("--max-iter", type=int, default=200)
    parser.add_argument("--grad-tol", type=float, default=1e-8)
    parser.add_argument("--change-tol", type=float, default=1e-12)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    crit = Criteria(args.grad_tol, args.max_iter, args.change_tol, 20 * args.max_iter)
    print(header(crit, args.threads))
    for problem in (rosenbrock(10), logistic_regression()):
        print(f"\n**{problem.name}** ({problem.description})\n")
        results = run_all(problem, crit)
        print(table(results))
        if not any(r.method == "scipy L-BFGS-B" for r in results):
            print("\nscipy L-BFGS-B: skipped (scipy is not installed)")
        print()
        for line in checks(results):
            print(line)
    print(f"\nload average at the end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
