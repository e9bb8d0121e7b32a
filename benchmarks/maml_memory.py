"""Peak memory and time of a MAML meta-gradient: all tasks in one vmap, in chunks, one by one.

The meta-gradient of MAML differentiates through every task's inner steps, so the backward
pass keeps every task's graph of activations and optimizer states alive until it runs:
``vmap`` over all tasks is fastest and holds all of them at once. Splitting the tasks into
chunks and adding the chunks' meta-gradients (each chunk's graph freed before the next is
built) bounds the memory by one chunk's, for the same meta-gradient. This script measures both,
and the task-by-task loop, on Finn et al.'s sine regression with a 1-W-W-1 ReLU network
(default W = 256), 25 tasks, 5 inner Adam steps, one thread. Each variant runs in its own
process; memory is the growth of the peak resident set over the process's state before the
meta-gradient (torch, the data and the network). Prints a markdown table:

    python benchmarks/maml_memory.py [--width 256] [--tasks 25] [--chunk 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torchopt_fn as tf  # noqa: E402

INNER_STEPS = 5
K_SHOT = 10


def problem(width: int, tasks: int):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1),
    )
    params = {k: v.detach() for k, v in net.named_parameters()}
    g = torch.Generator().manual_seed(1)
    amplitude = torch.empty(tasks, 1, 1).uniform_(0.1, 5.0, generator=g)
    phase = torch.empty(tasks, 1, 1).uniform_(0.0, 3.14, generator=g)
    x = torch.empty(tasks, 2 * K_SHOT, 1).uniform_(-5.0, 5.0, generator=g)
    y = amplitude * torch.sin(x - phase)
    data = (x[:, :K_SHOT], y[:, :K_SHOT], x[:, K_SHOT:], y[:, K_SHOT:])
    net = net.to("meta")

    def mse(p, x, y):
        return ((functional_call(net, p, (x,)) - y) ** 2).mean()

    def query_loss(meta, x_s, y_s, x_q, y_q):
        tx = tf.adam(0.01, eps_root=1e-8)
        p, state = meta, tx.init(meta)
        for _ in range(INNER_STEPS):
            updates, state = tx.update(grad(mse)(p, x_s, y_s), state, p)
            p = tf.apply_updates(p, updates)
        return mse(p, x_q, y_q)

    return params, data, query_loss


# --8<-- [start:chunked]
def meta_gradient_in_chunks(query_loss, meta, tasks, chunk: int):
    """The mean query loss's gradient over all tasks, ``chunk`` tasks' graphs at a time."""
    n = tasks[0].shape[0]

    def chunk_loss(meta, *chunk_tasks):  # the chunk's share of the mean over all n tasks
        losses = vmap(query_loss, in_dims=(None, 0, 0, 0, 0))(meta, *chunk_tasks)
        return losses.sum() / n

    total = None
    for start in range(0, n, chunk):
        part = grad(chunk_loss)(meta, *(t[start : start + chunk] for t in tasks))
        total = part if total is None else tf.tree_add(total, part)
    return total


# --8<-- [end:chunked]


def run(variant: str, width: int, tasks: int, chunk: int) -> dict[str, float]:
    torch.set_num_threads(1)
    params, data, query_loss = problem(width, tasks)
    chunk = {"vmap": tasks, "chunked": chunk, "loop": 1}[variant]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    grads = meta_gradient_in_chunks(query_loss, params, data, chunk)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    norm = float(tf.tree_l2_norm(grads))
    return {"seconds": seconds, "mb": (peak - before) / 1024, "norm": norm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tasks", type=int, default=25)
    parser.add_argument("--chunk", type=int, default=5)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a child process: one measurement, as JSON
        print(json.dumps(run(args.variant, args.width, args.tasks, args.chunk)))
        return
    rows = {}
    for variant in ("vmap", "chunked", "loop"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--width",
                str(args.width),
                "--tasks",
                str(args.tasks),
                "--chunk",
                str(args.chunk),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    labels = {
        "vmap": f"vmap over all {args.tasks} tasks",
        "chunked": f"{args.chunk} tasks per vmap, meta-gradients added",
        "loop": "one task at a time",
    }
    print(
        f"MAML meta-gradient, width {args.width}, {args.tasks} tasks, {INNER_STEPS} inner Adam "
        "steps, 1 thread\n"
    )
    print("| variant | time s | peak memory growth MB | meta-gradient norm |")
    print("|---|---:|---:|---:|")
    for variant, row in rows.items():
        print(f"| {labels[variant]} | {row['seconds']:.2f} | {row['mb']:.0f} | {row['norm']:.6f} |")


if __name__ == "__main__":
    main()
