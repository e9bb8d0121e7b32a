"""What each optimizer communicates per step on FSDP2-sharded parameters, counted.

Two gloo processes on 127.0.0.1 hold a small MLP's parameters (four matrices, four biases)
as DTensors sharded on their first axis, as ``fully_shard`` leaves them, and each optimizer
of the test table (contrib included, and the clipping and skipping transforms) runs two
functional updates on them under DTensor's ``CommDebugMode``, which counts the collectives
DTensor issues. The second step is counted
(the first may set up state). FSDP's own all-gather and reduce-scatter of the forward and
backward are not included: they are the same for every optimizer. Prints a markdown table,
optimizers with the same counts on one row (docs/distributed.md holds it):

    python benchmarks/dtensor_comms.py
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WORLD = 2
SHAPES = {"0.weight": (64, 32), "0.bias": (64,), "1.weight": (64, 64), "1.bias": (64,)}
SHAPES |= {"2.weight": (64, 64), "2.bias": (64,), "3.weight": (10, 64), "3.bias": (10,)}


def _count(tx, params, grads, value) -> Counter:
    from torch.distributed.tensor.debug import CommDebugMode

    import torchopt_fn as tf

    state = tx.init(params)
    extra = {"value": value} if value is not None else {}
    updates, state = tx.update(grads, state, params, **extra)
    params = tf.apply_updates(params, updates)
    with CommDebugMode() as comm:
        updates, state = tx.update(grads, state, params, **extra)
        tf.apply_updates(params, updates)
    return Counter({str(k).rsplit(".", 1)[-1]: v for k, v in comm.get_comm_counts().items()})


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    warnings.simplefilter("ignore")
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from tests.helpers import OPTIMIZERS, TRANSFORMS, make_tx

    mesh = init_device_mesh("cpu", (WORLD,))
    g = torch.Generator().manual_seed(0)
    whole = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    params = {k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in whole.items()}
    grads = {k: distribute_tensor(torch.sin(v), mesh, [Shard(0)]) for k, v in whole.items()}
    value = sum((v**2).sum() for v in whole.values())
    rows = {}
    cases = [(c.id, lambda c=c: make_tx(c), c.needs_value) for c in OPTIMIZERS]
    # contrib's optimizers, and the clipping and skipping that recipes chain before them.
    wanted = ("contrib.", "clip", "apply_if_finite", "MultiSteps")
    cases += [(c.id, c.make, c.needs_value) for c in TRANSFORMS if c.id.startswith(wanted)]
    for name, make, needs_value in cases:
        rows[name] = _count(make(), params, grads, value if needs_value else None)
    if rank == 0:
        torch.save({k: dict(v) for k, v in rows.items()}, out)
    dist.destroy_process_group()


def _describe(counts: dict[str, int]) -> str:
    if not counts:
        return "nothing"
    return ", ".join(f"{n} {kind.replace('_', '-')}" for kind, n in sorted(counts.items()))


def main() -> None:
    out = str(Path(os.environ.get("TMPDIR", "/tmp")) / "dtensor_comms.pt")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, out), nprocs=WORLD, start_method="spawn")
    rows = torch.load(out, weights_only=True)
    groups: dict[str, list[str]] = {}
    for name, counts in rows.items():
        groups.setdefault(_describe(counts), []).append(f"`{name}`")
    print(f"Collectives per update, {len(SHAPES)} tensors sharded on 2 ranks (FSDP's excluded)\n")
    print("| collectives per step | optimizers (test-table rows) |")
    print("|---|---|")

    def total(description: str) -> int:
        return sum(int(word) for word in description.split() if word.isdigit())

    for description, names in sorted(groups.items(), key=lambda kv: (total(kv[0]), kv[0])):
        print(f"| {description} | {', '.join(names)} |")


if __name__ == "__main__":
    main()
