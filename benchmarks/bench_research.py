"""Research optimizers of `tf.contrib` (Muon, SOAP, Shampoo, PSGD Kron): step and compile time.

Times one optimizer step (update + apply) of each contender on a transformer-shaped workload
(bench_step.py's W1, or Q with ``--quick``), `tf.adamw` as the baseline, and prints one markdown
table per workload: the median step (for SOAP, Shampoo and PSGD Kron, a step without a refresh)
and the mean (the refreshes spread over the steps), ratios to AdamW run the same way and to the
fastest contender, state size, the first call of the compiled contenders (it traces, compiles
and runs one step; it is not part of the step times) and the graphs compiled after it, with the
time of the steps that compiled them (0: no recompiles). The contenders of one optimizer run
interleaved, in a fresh random order each repetition, as in bench_step.py; each optimizer
starts from a fresh Dynamo (`torch._dynamo.reset`). A contender that raises is reported in its
row ("failed at step N") and the others go on.

- ``tf eager``: ``tx.update`` + `tf.apply_updates_`;
- ``tf compile_step``: `tf.compile_step(tx)` (``fullgraph=True``: a graph break would raise);
- ``tf Optimizer``: `tf.Optimizer(params, tx).step()`;
- for Muon: `torch.optim.Muon` on the matrices with `torch.optim.AdamW` (fused) on the rest,
  and the same pair through `tf.Optimizer(tf.from_torch(...))`, which iterates in bfloat16 one
  matrix at a time exactly as torch does (`tf.contrib.muon` iterates in the leaves' dtype,
  float32 here, with the same coefficients, all same-shape matrices as one batch; it has no
  switch to turn the batching off, so only batched numbers are measured);
- heavyball's classes when ``import heavyball`` works (``AdamW``, ``MuonAdamW``, ``SOAP``,
  ``KLShampoo``, ``PSGDKron``, their defaults apart from the hyperparameters below). heavyball
  compiles its inner functions itself; with ``--no-compile`` or ``--quick`` it runs them
  uncompiled.

    python benchmarks/bench_research.py --quick          # Q, eager only: about 10 s
    python benchmarks/bench_research.py --threads 1      # W1, compiled too: about 20 min cold
    python benchmarks/bench_research.py --optimizers muon,soap --no-compile
    PYTHONPATH=. path/to/env-with-heavyball/bin/python benchmarks/bench_research.py --threads 1

Compiling on a small CPU is slow (cold, one thread: 1-3 minutes per optimizer on W1, and Q is
not much faster): the first calls are printed as they finish. See benchmarks/README.md for the
method shared with bench_step.py; timings are never asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo.utils

import torchopt_fn as tf

sys.path.insert(0, os.path.dirname(__file__))
from bench_step import (
    WORKLOADS,
    Runner,
    Workload,
    _csv,
    _tensors_in,
    _with_grads,
    machine_description,
    unique_nbytes,
)

# Shared by every contender of an optimizer (each library under its own argument names).
ADAMW = {"lr": 1e-3, "weight_decay": 1e-2}
MUON = {"lr": 0.02, "momentum": 0.95, "weight_decay": 1e-2, "ns_steps": 5}
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's, and optax's "standard"
SOAP = {"lr": 3e-3, "b1": 0.95, "b2": 0.95, "weight_decay": 1e-2, "frequency": 10}
SHAMPOO = {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "weight_decay": 1e-2, "frequency": 10}
PSGD = {"lr": 1e-3, "b1": 0.9, "probability": 0.1}

HYPERPARAMETERS = {
    "adamw": "lr 1e-3, weight decay 1e-2",
    "muon": (
        "lr 0.02, momentum 0.95 (Nesterov), weight decay 1e-2, 5 Newton-Schulz iterations with "
        "(3.4445, -4.7750, 2.0315); every 2-D tensor goes to Muon, the rest to AdamW "
        "(lr 1e-3, weight decay 1e-2)"
    ),
    "soap": "lr 3e-3, betas (0.95, 0.95), weight decay 1e-2, bases refreshed every 10 steps",
    "shampoo": (
        "lr 1e-3, b1 0.9, b2 0.999, Adam grafting, weight decay 1e-2, roots every 10 steps"
    ),
    "psgd_kron": "lr 1e-3, b1 0.9, preconditioner fit with probability 0.1 (about every 10 steps)",
}
OPTIMIZERS = tuple(HYPERPARAMETERS)


# --------------------------------------------------------------------------- transformations


def tf_tx(opt: str) -> tf.GradientTransformation:
    """``opt`` as a torchopt_fn transformation, with the hyperparameters above."""
    contrib = tf.contrib
    if opt == "adamw":
        return tf.adamw(ADAMW["lr"], weight_decay=ADAMW["weight_decay"])
    if opt == "muon":
        return contrib.muon(
            MUON["lr"],
            ns_coeffs=NS_COEFFS,
            ns_steps=MUON["ns_steps"],
            beta=MUON["momentum"],
            weight_decay=MUON["weight_decay"],
            adam_learning_rate=ADAMW["lr"],
            adam_weight_decay=ADAMW["weight_decay"],
        )
    if opt == "soap":
        return contrib.soap(
            SOAP["lr"],
            b1=SOAP["b1"],
            b2=SOAP["b2"],
            weight_decay=SOAP["weight_decay"],
            precondition_frequency=SOAP["frequency"],
        )
    if opt == "shampoo":
        return contrib.shampoo(
            SHAMPOO["lr"],
            b1=SHAMPOO["b1"],
            b2=SHAMPOO["b2"],
            weight_decay=SHAMPOO["weight_decay"],
            precondition_frequency=SHAMPOO["frequency"],
            grafting="adam",
            grafting_b2=SHAMPOO["b2"],
            grafting_eps=1e-8,
        )
    return contrib.psgd_kron(
        PSGD["lr"], b1=PSGD["b1"], preconditioner_update_probability=PSGD["probability"]
    )


# --------------------------------------------------------------------------- contenders

Make = Callable[[list[torch.Tensor], list[torch.Tensor]], Runner]


def _graphs() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _leaves(tree: Any) -> list[torch.Tensor]:
    return [x for x in tf.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def tf_eager(opt: str) -> Make:
    def make(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
        tx = tf_tx(opt)
        box = {"state": tx.init(params)}

        def step() -> None:
            updates, box["state"] = tx.update(grads, box["state"], params)
            tf.apply_updates_(params, updates)

        return Runner(step, lambda: _leaves(box["state"]))

    return make


def tf_compile_step(opt: str) -> Make:
    def make(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
        tx = tf_tx(opt)
        compiled = tf.compile_step(tx, donate=True)
        state = tx.init(params)

        def step() -> None:
            compiled(params, grads, state)  # donated: results are written into params and state

        return Runner(step, lambda: _leaves(state), first_call_s=_first_call(step, opt))

    return make


def tf_optimizer(opt: str) -> Make:
    def make(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
        optimizer = tf.Optimizer(_with_grads(params, grads), tf_tx(opt))
        return Runner(optimizer.step, _optimizer_state(optimizer))

    return make


def _first_call(step: Callable[[], None], what: str) -> float:
    print(f"    first call of {what} (compiles) ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    print(f"    ... {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def _optimizer_state(*optimizers: torch.optim.Optimizer) -> Callable[[], list[torch.Tensor]]:
    return lambda: [t for o in optimizers for t in _tensors_in(list(o.state.values()))]


def _split(params: list[torch.nn.Parameter]) -> tuple[list, list]:
    """Muon's matrices and AdamW's rest, as torch.optim.Muon requires them."""
    return [p for p in params if p.dim() == 2], [p for p in params if p.dim() != 2]


def torch_adamw_fused(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    optimizer = torch.optim.AdamW(_with_grads(params, grads), fused=True, **ADAMW)
    return Runner(optimizer.step, _optimizer_state(optimizer))


def _torch_muon_kwargs() -> dict[str, Any]:
    return {
        "lr": MUON["lr"],
        "weight_decay": MUON["weight_decay"],
        "momentum": MUON["momentum"],
        "nesterov": True,
        "ns_coefficients": NS_COEFFS,
        "ns_steps": MUON["ns_steps"],
    }


def torch_muon(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    matrices, rest = _split(_with_grads(params, grads))
    muon = torch.optim.Muon(matrices, **_torch_muon_kwargs())
    adamw = torch.optim.AdamW(rest, fused=True, **ADAMW)

    def step() -> None:
        muon.step()
        adamw.step()

    return Runner(step, _optimizer_state(muon, adamw))


def tf_from_torch_muon(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    matrices, rest = _split(_with_grads(params, grads))
    muon = tf.Optimizer(matrices, tf.from_torch(torch.optim.Muon, **_torch_muon_kwargs()))
    adamw = tf.Optimizer(rest, tf.from_torch(torch.optim.AdamW, **ADAMW))

    def step() -> None:
        muon.step()
        adamw.step()

    return Runner(step, _optimizer_state(muon, adamw))


def heavyball_runner(opt: str, compile: bool) -> Make:
    """heavyball's class for ``opt``, with its defaults apart from the shared hyperparameters.

    heavyball compiles its inner functions itself on their first call (with
    ``heavyball.utils.compile_mode``, "max-autotune-no-cudagraphs"), so its first call is timed
    like a compiled contender's; without ``compile`` that mode is set to None (eager).
    """

    def make(params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
        import heavyball
        import heavyball.utils

        if not compile:
            heavyball.utils.compile_mode = None
        params = _with_grads(params, grads)
        if opt == "adamw":
            optimizer = heavyball.AdamW(params, betas=(0.9, 0.999), **ADAMW)
        elif opt == "muon":
            optimizer = heavyball.MuonAdamW(
                params,
                lr=MUON["lr"],
                betas=(MUON["momentum"], 0.999),
                weight_decay=MUON["weight_decay"],
            )
        elif opt == "soap":
            optimizer = heavyball.SOAP(
                params,
                lr=SOAP["lr"],
                betas=(SOAP["b1"], SOAP["b2"]),
                shampoo_beta=SOAP["b2"],
                weight_decay=SOAP["weight_decay"],
                precondition_frequency=SOAP["frequency"],
            )
        elif opt == "shampoo":
            optimizer = heavyball.KLShampoo(
                params,
                lr=SHAMPOO["lr"],
                betas=(SHAMPOO["b1"], SHAMPOO["b2"]),
                weight_decay=SHAMPOO["weight_decay"],
                precondition_frequency=SHAMPOO["frequency"],
            )
        else:
            optimizer = heavyball.PSGDKron(
                params,
                lr=PSGD["lr"],
                betas=(PSGD["b1"], 0.999),
                preconditioner_update_probability=PSGD["probability"],
            )

        def step() -> None:
            optimizer.step()
            for p, g in zip(params, grads):  # heavyball sets `p.grad = None` after its step
                p.grad = g

        first = _first_call(step, f"heavyball {opt}") if compile else None
        return Runner(step, _optimizer_state(optimizer), first_call_s=first)

    return make


HEAVYBALL_CLASS = {
    "adamw": "AdamW",
    "muon": "MuonAdamW",
    "soap": "SOAP",
    "shampoo": "KLShampoo",
    "psgd_kron": "PSGDKron",
}


def heavyball_version() -> str | None:
    try:
        import heavyball  # noqa: F401
    except Exception:  # not installed, or installed against another torch
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("heavyball")
    except PackageNotFoundError:
        return "unknown version"


@dataclass(frozen=True)
class Contender:
    name: str
    make: Make
    compiled: bool = False  # left out by --no-compile
    baseline: str = "tf eager"  # the adamw contender its "x adamw" ratio divides by


def contenders(opt: str, compile: bool, heavyball: bool) -> list[Contender]:
    """The contenders of ``opt``, in table order."""
    out = [
        Contender("tf eager", tf_eager(opt)),
        Contender("tf compile_step", tf_compile_step(opt), True, "tf compile_step"),
        Contender("tf Optimizer", tf_optimizer(opt), baseline="tf Optimizer"),
    ]
    if opt == "adamw":
        out.append(Contender("torch AdamW fused", torch_adamw_fused, baseline="torch AdamW fused"))
    if opt == "muon":
        out += [
            Contender("torch Muon + AdamW fused", torch_muon, baseline="torch AdamW fused"),
            Contender(
                "tf Optimizer(from_torch(Muon)) + AdamW, bf16",
                tf_from_torch_muon,
                baseline="tf Optimizer",
            ),
        ]
    if heavyball:
        name = f"heavyball {HEAVYBALL_CLASS[opt]}"
        baseline = "heavyball AdamW"
        if compile:
            out.append(Contender(name, heavyball_runner(opt, True), True, baseline))
        else:
            name, baseline = f"{name} (uncompiled)", f"{baseline} (uncompiled)"
            out.append(Contender(name, heavyball_runner(opt, False), baseline=baseline))
    return [c for c in out if compile or not c.compiled]


# --------------------------------------------------------------------------- measurements


@dataclass
class Result:
    optimizer: str
    contender: Contender
    times: list[float] = field(default_factory=list)
    first_call_s: float | None = None
    state_bytes: int = 0
    later_graphs: int = 0  # graphs compiled after the first call
    later_compile_s: float = 0.0  # wall time of the steps that compiled them
    steps: int = 0  # steps run so far, the first call included
    error: str | None = None  # why the contender stopped, if it did

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)


def _timed_step(runner: Runner, result: Result) -> float:
    """Run one step; a step during which Dynamo compiled counts towards ``result``'s later
    compiles (heavyball compiles some functions only when a refresh first comes due)."""
    before = _graphs()
    start = time.perf_counter()
    runner.step()
    seconds = time.perf_counter() - start
    result.steps += 1
    if _graphs() > before:
        result.later_graphs += _graphs() - before
        result.later_compile_s += seconds
    return seconds


def _failed(result: Result, error: Exception) -> None:
    traceback.print_exc()
    message = (str(error).strip().splitlines() or [""])[0][:100]
    result.error = f"failed at step {result.steps + 1}: {type(error).__name__}: {message}"
    print(f"    {result.contender.name}: {result.error}", file=sys.stderr, flush=True)


def run_case(
    workload: Workload,
    opt: str,
    cases: list[Contender],
    reps: int,
    warmup: int,
    seed: int,
) -> list[Result]:
    """Time ``cases`` on one workload and optimizer, interleaved round-robin."""
    gen = torch.Generator().manual_seed(seed)
    template = [torch.randn(s, generator=gen) for s in workload.shapes]
    grads = [torch.randn(s, generator=gen).mul_(1e-2) for s in workload.shapes]
    reference = [g.clone() for g in grads]
    # A fresh Dynamo per optimizer: each compile is timed as in a process of its own, and
    # floats that differ from an earlier compile of `compile_step`'s shared step function are
    # not turned into symbolic inputs (which recompiles, and which torch.cond refuses).
    torch._dynamo.reset()
    runners: dict[str, Runner] = {}
    results: dict[str, Result] = {}
    for case in cases:
        print(f"  setting up {opt} / {case.name} ...", file=sys.stderr, flush=True)
        result = results[case.name] = Result(opt, case)
        try:
            runner = case.make([p.clone() for p in template], grads)
            result.first_call_s = runner.first_call_s
            result.steps = int(runner.first_call_s is not None)
            for _ in range(warmup):
                _timed_step(runner, result)
        except Exception as e:  # reported in the table; the other contenders go on
            _failed(result, e)
            continue
        runners[case.name] = runner
    order = list(runners)
    shuffle = random.Random(seed).shuffle
    for _ in range(reps):
        shuffle(order)  # a fresh order each repetition: no contender always follows another
        for name in order:
            if results[name].error is None:
                try:
                    results[name].times.append(_timed_step(runners[name], results[name]))
                except Exception as e:
                    _failed(results[name], e)
    for name, runner in runners.items():
        if results[name].error is None:
            results[name].state_bytes = unique_nbytes(runner.state())
    if not all(torch.equal(g, r) for g, r in zip(grads, reference)):
        raise RuntimeError("a contender modified the shared gradients")
    return [results[c.name] for c in cases]


# --------------------------------------------------------------------------- reporting


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}" if reference else ""


def markdown_table(workload: Workload, results: list[Result]) -> str:
    timed = [r for r in results if r.error is None]
    adamw = {r.contender.name: r.median for r in timed if r.optimizer == "adamw"}
    best: dict[str, float] = {}
    for r in timed:
        best[r.optimizer] = min(best.get(r.optimizer, r.median), r.median)
    lines = [
        f"**{workload.name} ({workload.description}; {len(workload.shapes)} tensors, "
        f"{workload.numel / 1e6:.2f}M params)**",
        "",
        "| optimizer | contender | median ms | mean ms | IQR ms | x adamw | x best "
        "| state MB | first call s | graphs later (their steps) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        first = f"{r.first_call_s:.1f}" if r.first_call_s is not None else ""
        if r.error is not None:
            lines.append(f"| {r.optimizer} | {r.contender.name} | {r.error} |||||| {first} | |")
            continue
        q = statistics.quantiles(r.times, n=4) if len(r.times) > 1 else [r.median] * 3
        later = ""
        if r.contender.compiled or r.later_graphs:
            later = f"{r.later_graphs} ({r.later_compile_s:.1f} s)" if r.later_graphs else "0"
        lines.append(
            f"| {r.optimizer} | {r.contender.name} | {r.median * 1e3:.2f} | {r.mean * 1e3:.2f} "
            f"| {(q[2] - q[0]) * 1e3:.2f} | {_ratio(r.median, adamw.get(r.contender.baseline))} "
            f"| {_ratio(r.median, best[r.optimizer])} | {r.state_bytes / 1e6:.1f} "
            f"| {first} | {later} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=_csv, default=["W1"], help="e.g. W1,Q")
    parser.add_argument("--optimizers", type=_csv, default=list(OPTIMIZERS))
    parser.add_argument("--reps", type=int, default=30, help="timed steps per contender")
    parser.add_argument(
        "--warmup", type=int, default=10, help="untimed steps first (Shampoo's roots start at 10)"
    )
    parser.add_argument("--quick", action="store_true", help="Q, 10 steps, eager only")
    parser.add_argument(
        "--no-compile", action="store_true", help="leave out the compiled contenders"
    )
    parser.add_argument("--no-heavyball", action="store_true", help="even when installed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Inductor's own deprecation notice, once per kernel it lowers for heavyball's graphs.
    warnings.filterwarnings(
        "ignore", message=r".*torch\._prims_common\.check", category=FutureWarning
    )
    workloads = ["Q"] if args.quick else args.workloads
    reps, warmup = (10, 10) if args.quick else (args.reps, args.warmup)
    for name, known in (
        *((w, WORKLOADS) for w in workloads),
        *((o, HYPERPARAMETERS) for o in args.optimizers),
    ):
        if name not in known:
            parser.error(f"unknown name {name!r}; choose from {sorted(known)}")
    optimizers = ["adamw", *(o for o in args.optimizers if o != "adamw")]  # the baseline first
    hb = None if args.no_heavyball else heavyball_version()
    compile = not (args.no_compile or args.quick)

    print(f"Machine: {machine_description()}")
    print(f"Inductor cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default location')}")
    if hb is None:
        print("heavyball: not run (not importable, or --no-heavyball)")
    else:
        import heavyball.utils

        mode = heavyball.utils.compile_mode if compile else None
        print(f"heavyball: {hb}, its inner functions compiled with mode {mode!r}")
    print(f"Steps: median and mean of {reps} after {warmup} untimed; compiled: {compile}")
    for opt in optimizers:
        print(f"- {opt}: {HYPERPARAMETERS[opt]}")
    for w in workloads:
        workload = WORKLOADS[w]
        results = []
        for opt in optimizers:
            print(f"{w} / {opt} ...", file=sys.stderr, flush=True)
            cases = contenders(opt, compile, hb is not None)
            results += run_case(workload, opt, cases, reps, warmup, args.seed)
        print()
        print(markdown_table(workload, results), flush=True)
    print(f"\nLoad average at the end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
