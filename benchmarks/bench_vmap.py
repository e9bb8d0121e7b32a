"""The update of an ensemble inside `torch.func.vmap`, against the same update on the stacked tree.

An ensemble keeps its members' parameters stacked along a first axis. Its update can run inside
``vmap`` (the pattern of ``docs/func_transforms.md``: ``vmap(step)``, one member's code) or
directly on the stacked tree (the same numbers: every step here is element-wise). torch.optim
can only do the second. For each optimizer, one row, all timed in one process, round-robin:

- ``torch foreach`` / ``torch fused``: torch.optim's step on the stacked parameters;
- ``tf stacked``: ``update`` + ``apply_updates`` on the stacked tree;
- ``tf in vmap``: the same inside ``vmap``, which runs element-wise maths on the tensors under
  the batch (`torchopt_fn.tree._batched`);
- ``tf in vmap, per op``: inside ``vmap`` with that path switched off, one op per tensor
  through vmap's batching rules (what every release before it did).

Then the whole ensemble step (``vmap`` of gradient, update and apply) against the same step
with the update taken out of ``vmap`` and run on the stacked gradients. Medians of
``--reps`` calls, one thread by default. Prints markdown tables; nothing is asserted.

    python benchmarks/bench_vmap.py                       # 16 MLPs 784-256-256-10
    python benchmarks/bench_vmap.py --members 64 --width 64

On CPU a pure update pays page faults for its fresh tensors whenever glibc has handed freed
blocks back to the OS, and times then vary by 2x between runs; the numbers in
docs/func_transforms.md were taken with glibc told to keep them::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 \
        python benchmarks/bench_vmap.py
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.func import grad, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torchopt_fn as tf  # noqa: E402
from torchopt_fn.tree import _ops  # noqa: E402

LR = 1e-3

OPTIMIZERS: dict[str, tuple[Callable[[], tf.GradientTransformation], Any]] = {
    # name: (ours, (torch class, options, has a fused CPU kernel))
    "AdamW": (
        lambda: tf.adamw(LR, weight_decay=1e-2),
        (torch.optim.AdamW, {"lr": LR, "weight_decay": 1e-2}, True),
    ),
    "Adam": (lambda: tf.adam(LR), (torch.optim.Adam, {"lr": LR}, True)),
    "SGD momentum": (
        lambda: tf.sgd(LR, momentum=0.9),
        (torch.optim.SGD, {"lr": LR, "momentum": 0.9}, True),
    ),
    "RMSprop": (
        lambda: tf.rmsprop(LR, eps_in_sqrt=False),
        (torch.optim.RMSprop, {"lr": LR}, False),
    ),
    "Lion": (lambda: tf.lion(LR, weight_decay=1e-2), None),
}


Params = dict[str, torch.Tensor]


def ensemble(members: int, width: int) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """Stacked params of ``members`` MLPs 784-width-width-10, and one batch of inputs."""
    gen = torch.Generator().manual_seed(0)
    sizes = [(784, width), (width, width), (width, 10)]
    params = {}
    for i, (fan_in, fan_out) in enumerate(sizes):
        params[f"w{i}"] = torch.randn(members, fan_in, fan_out, generator=gen) / fan_in**0.5
        params[f"b{i}"] = torch.zeros(members, fan_out)
    x = torch.randn(64, 784, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    return params, x, y


def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ p["w0"] + p["b0"])
    h = torch.relu(h @ p["w1"] + p["b1"])
    return torch.nn.functional.cross_entropy(h @ p["w2"] + p["b2"], y)


@contextlib.contextmanager
def per_op_under_vmap() -> Iterator[None]:
    """Switch off the under-the-batch path: every op through vmap's batching rules."""
    saved = _ops._under_batch
    _ops._under_batch = lambda *args: _ops._PER_OP
    try:
        yield
    finally:
        _ops._under_batch = saved


def median_ms(fns: dict[str, Callable[[], Any]], reps: int) -> dict[str, float]:
    """Median time of each function, called round-robin so drift hits all alike."""
    for f in fns.values():
        f(), f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def update_contenders(name: str, params: dict, grads: dict) -> dict[str, Callable[[], Any]]:
    make, torch_side = OPTIMIZERS[name]
    tx = make()
    state = tx.init(params)
    vstate = vmap(tx.init)(params)

    def stacked() -> Any:
        updates, _ = tx.update(grads, state, params)
        return tf.apply_updates(params, updates)

    def member(g: Any, s: Any, p: Any) -> Any:
        updates, s = tx.update(g, s, p)
        return tf.apply_updates(p, updates), s

    in_vmap = vmap(member)

    def per_op() -> Any:
        with per_op_under_vmap():
            return in_vmap(grads, vstate, params)

    out: dict[str, Callable[[], Any]] = {}
    if torch_side is not None:
        cls, options, fused = torch_side
        kinds = {"torch foreach": {"foreach": True}}
        if fused:
            kinds["torch fused"] = {"fused": True}
        for label, kind in kinds.items():
            ps = [torch.nn.Parameter(v.clone()) for v in params.values()]
            for p, g in zip(ps, grads.values()):
                p.grad = g.clone()
            out[label] = cls(ps, **options, **kind).step
    out["tf stacked"] = stacked
    out["tf in vmap"] = lambda: in_vmap(grads, vstate, params)
    out["tf in vmap, per op"] = per_op
    return out


def step_contenders(params: dict, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable]:
    """The whole AdamW ensemble step: gradient, update and apply, in and out of vmap."""
    tx = tf.adamw(LR, weight_decay=1e-2)
    state, vstate = tx.init(params), vmap(tx.init)(params)

    def member(p: Any, s: Any) -> Any:
        updates, s = tx.update(grad(loss)(p, x, y), s, p)
        return tf.apply_updates(p, updates), s

    whole = vmap(member)
    grads_of = vmap(grad(loss), in_dims=(0, None, None))

    def update_outside() -> Any:
        updates, _ = tx.update(grads_of(params, x, y), state, params)
        return tf.apply_updates(params, updates)

    def per_op() -> Any:
        with per_op_under_vmap():
            return whole(params, vstate)

    return {
        "vmap(grad) + stacked update": update_outside,
        "vmap(grad + update)": lambda: whole(params, vstate),
        "vmap(grad + update), per op": per_op,
    }


def table(title: str, rows: dict[str, dict[str, float]], base: str) -> str:
    columns = list(next(iter(rows.values())))
    lines = [
        f"### {title}",
        "",
        "| | " + " | ".join(columns) + f" | in vmap / {base} |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for name, ms in rows.items():
        cells = [f"{ms[c]:.3f}" if c in ms else "" for c in columns]
        ratio = ms["tf in vmap"] / ms[base] if "tf in vmap" in ms else float("nan")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params, x, y = ensemble(args.members, args.width)
    grads = vmap(grad(loss), in_dims=(0, None, None))(params, x, y)
    n = sum(p.numel() for p in params.values())
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); {args.members} MLPs "
        f"784-{args.width}-{args.width}-10, {n / 1e6:.2f}M parameters stacked; "
        f"median ms of {args.reps}\n"
    )
    rows = {
        name: median_ms(update_contenders(name, params, grads), args.reps) for name in OPTIMIZERS
    }
    columns = ["torch foreach", "torch fused", "tf stacked", "tf in vmap", "tf in vmap, per op"]
    rows = {k: {c: v[c] for c in columns if c in v} for k, v in rows.items()}
    print(table("Update + apply (ms)", rows, "tf stacked"))
    print()
    for name, ms in rows.items():
        if "torch foreach" in ms:
            ratio = ms["tf stacked"] / ms["torch foreach"]
            print(f"{name}: tf stacked / torch foreach = {ratio:.2f}")
    step = median_ms(step_contenders(params, x, y), args.reps)
    print("\n### The whole AdamW ensemble step (ms)\n")
    print("| | ms | / vmap(grad) + stacked update |")
    print("|---|---:|---:|")
    base = step["vmap(grad) + stacked update"]
    for k, v in step.items():
        print(f"| {k} | {v:.3f} | {v / base:.2f} |")


if __name__ == "__main__":
    main()
