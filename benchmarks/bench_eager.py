"""Eager step times of every torch.optim algorithm torchopt_fn reproduces, against torch.optim.

For each torch optimizer that `tf.from_torch` supports (and the usual clip + AdamW recipe), one
workload, one row: the functional step (``update`` + ``apply_updates``) built with the named
optimizer where its maths is torch's and with ``from_torch``, the ``tf.Optimizer`` adapter, and
torch's for-loop, foreach and fused implementations, interleaved round-robin in one process.
Prints a markdown table of medians and ratios to torch foreach (and to fused, where torch has
it). Timings are never asserted anywhere.

    python benchmarks/bench_eager.py --threads 1            # W1, every optimizer
    python benchmarks/bench_eager.py --workloads W2 --rows AdamW,SGD
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import torchopt_fn as tf

sys.path.insert(0, os.path.dirname(__file__))
from bench_step import WORKLOADS, machine_description

LR = 1e-3


@dataclass(frozen=True)
class Row:
    """One torch algorithm: its class and options, and our ways of running it."""

    name: str
    torch_cls: type
    options: dict[str, Any]
    named: Callable[[], tf.GradientTransformation] | None = None  # the optax-named optimizer
    clip: bool = False  # clip the gradients' global norm to 1 first (torch: clip_grad_norm_)
    fused: bool = False  # torch has a fused CPU kernel for it


ROWS = [
    Row("SGD", torch.optim.SGD, {"lr": LR}, lambda: tf.sgd(LR)),
    Row(
        "SGD momentum",
        torch.optim.SGD,
        {"lr": LR, "momentum": 0.9},
        lambda: tf.sgd(LR, momentum=0.9),
        fused=True,
    ),
    Row("Adam", torch.optim.Adam, {"lr": LR}, lambda: tf.adam(LR), fused=True),
    Row(
        "AdamW",
        torch.optim.AdamW,
        {"lr": LR, "weight_decay": 1e-2},
        lambda: tf.adamw(LR, weight_decay=1e-2),
        fused=True,
    ),
    Row(
        "clip_grad_norm_ + AdamW",
        torch.optim.AdamW,
        {"lr": LR, "weight_decay": 1e-2},
        lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(LR, weight_decay=1e-2)),
        clip=True,
        fused=True,
    ),
    Row("NAdam", torch.optim.NAdam, {"lr": LR}, lambda: tf.nadam(LR)),
    Row("RAdam", torch.optim.RAdam, {"lr": LR}),
    Row("Adamax", torch.optim.Adamax, {"lr": LR}),
    Row("Adagrad", torch.optim.Adagrad, {"lr": LR}, fused=True),
    Row("Adadelta", torch.optim.Adadelta, {"lr": 1.0}, lambda: tf.adadelta(1.0)),
    Row("RMSprop", torch.optim.RMSprop, {"lr": LR}),
    Row("Rprop", torch.optim.Rprop, {"lr": LR}),
    Row("ASGD", torch.optim.ASGD, {"lr": LR}),
]

CONTENDERS = [
    "tf named",
    "tf from_torch",
    "tf Optimizer",
    "torch for-loop",
    "torch foreach",
    "torch fused",
]


def _parameters(params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(out, grads):
        p.grad = g.clone()
    return out


def _functional(tx: tf.GradientTransformation, params, grads) -> Callable[[], None]:
    box = {"params": [p.clone() for p in params]}
    box["state"] = tx.init(box["params"])

    def step() -> None:
        updates, box["state"] = tx.update(grads, box["state"], box["params"])
        box["params"] = tf.apply_updates(box["params"], updates)

    return step


def _torch(row: Row, params, grads, **impl: Any) -> Callable[[], None]:
    ps = _parameters(params, grads)
    opt = row.torch_cls(ps, **row.options, **impl)
    originals = [p.grad.clone() for p in ps]

    def step() -> None:
        if row.clip:  # clip_grad_norm_ works in place: restore the gradients first
            torch._foreach_copy_([p.grad for p in ps], originals)
            torch.nn.utils.clip_grad_norm_(ps, 1.0, foreach=impl.get("foreach"))
        opt.step()

    return step


def _ours(row: Row) -> tf.GradientTransformation:
    tx = tf.from_torch(row.torch_cls, **row.options)
    return tf.chain(tf.clip_by_global_norm(1.0), tx) if row.clip else tx


def runners(row: Row, params, grads) -> dict[str, Callable[[], None]]:
    out: dict[str, Callable[[], None]] = {}
    if row.named is not None:
        out["tf named"] = _functional(row.named(), params, grads)
    out["tf from_torch"] = _functional(_ours(row), params, grads)
    out["tf Optimizer"] = tf.Optimizer(_parameters(params, grads), _ours(row)).step
    out["torch for-loop"] = _torch(row, params, grads, foreach=False)
    out["torch foreach"] = _torch(row, params, grads, foreach=True)
    if row.fused:
        out["torch fused"] = _torch(row, params, grads, fused=True)
    return out


@dataclass
class Timing:
    times: dict[str, list[float]] = field(default_factory=dict)

    def median_ms(self, name: str) -> float | None:
        ts = self.times.get(name)
        return statistics.median(ts) * 1e3 if ts else None


def time_row(row: Row, params, grads, reps: int, warmup: int, seed: int) -> Timing:
    steps = runners(row, params, grads)
    for step in steps.values():
        for _ in range(warmup):
            step()
    timing = Timing({name: [] for name in steps})
    order = list(steps)
    rng = random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            steps[name]()
            timing.times[name].append(time.perf_counter() - start)
    return timing


def table(rows: list[Row], timings: list[Timing]) -> str:
    head = "| torch.optim | " + " | ".join(CONTENDERS) + " | best tf x foreach | x fused |"
    lines = [head, "|---" + "|---:" * (len(CONTENDERS) + 2) + "|"]
    for row, timing in zip(rows, timings):
        cells = []
        for name in CONTENDERS:
            ms = timing.median_ms(name)
            cells.append(f"{ms:.2f}" if ms is not None else "")
        foreach, fused = timing.median_ms("torch foreach"), timing.median_ms("torch fused")
        eager = [timing.median_ms(n) for n in ("tf named", "tf from_torch")]
        best = min(ms for ms in eager if ms is not None)
        adapter = timing.median_ms("tf Optimizer")
        vs_fused = f"{adapter / fused:.2f} (Optimizer)" if fused else ""
        lines.append(
            f"| {row.name} | " + " | ".join(cells) + f" | {best / foreach:.2f} | {vs_fused} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1", help="comma-separated, e.g. W1,W2")
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wanted = {r.strip() for r in args.rows.split(",") if r.strip()}
    rows = [r for r in ROWS if not wanted or r.name in wanted]
    print(f"Machine: {machine_description()}")
    for w in args.workloads.split(","):
        workload = WORKLOADS[w.strip()]
        gen = torch.Generator().manual_seed(args.seed)
        params = [torch.randn(s, generator=gen) for s in workload.shapes]
        grads = [torch.randn(s, generator=gen).mul_(1e-2) for s in workload.shapes]
        timings = []
        for row in rows:
            print(f"{workload.name} / {row.name} ...", file=sys.stderr, flush=True)
            timings.append(time_row(row, params, grads, args.reps, args.warmup, args.seed))
        print(
            f"\n**{workload.name}** ({workload.description}; {len(workload.shapes)} tensors, "
            f"{workload.numel / 1e6:.2f}M params): median ms per step\n"
        )
        print(table(rows, timings), flush=True)


if __name__ == "__main__":
    main()
