"""The adapter under torch.distributed's own wrappers, in two gloo processes on 127.0.0.1.

``DistributedDataParallel`` averages gradients across ranks; ``ZeroRedundancyOptimizer``
shards the optimizer state, building one ``optimizer_class(params, **kwargs)`` per rank from
its own param groups. With ``optimizer_class=tf.Optimizer, tx=...`` both must give exactly
the trajectory of the plain adapter, and the plain adapter torch.optim's; ZeRO's consolidated
checkpoint must load back and continue exactly, as ZeRO over torch.optim's class does.
"""

from __future__ import annotations

import copy
import os
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

import torchopt_fn as tf

WORLD = 2
STEPS = 6

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 1)
    ).double()


def _make(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    tx = tf.from_torch("AdamW", lr=1e-2, weight_decay=1e-2)
    params = [
        {"params": list(model[0].parameters())},
        {"params": [*model[2].parameters(), *model[3].parameters()], "lr": 5e-3},
    ]
    if kind == "torch":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    if kind == "zero":
        return ZeroRedundancyOptimizer(params, optimizer_class=tf.Optimizer, tx=tx)
    if kind == "zero_torch":
        return ZeroRedundancyOptimizer(
            params, optimizer_class=torch.optim.AdamW, lr=1e-2, weight_decay=1e-2
        )
    return tf.Optimizer(params, tx)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, steps: range) -> None:
    for t in steps:
        g = torch.Generator().manual_seed(100 * t + rank)  # each rank its own batch
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        results: dict[str, Any] = {}
        for kind in ("torch", "plain", "zero", "zero_torch"):
            model = DistributedDataParallel(_model())
            opt = _make(kind, model.module)
            _train(model, opt, rank, range(STEPS))
            results[kind] = [p.detach().clone() for p in model.parameters()]
            if kind.startswith("zero"):
                opt.consolidate_state_dict(to=0)
                checkpoint = opt.state_dict() if rank == 0 else None
                holder = [checkpoint]
                dist.broadcast_object_list(holder, src=0)
                resumed_model = DistributedDataParallel(_model())
                resumed_model.module.load_state_dict(model.module.state_dict())
                resumed = _make(kind, resumed_model.module)
                resumed.load_state_dict(copy.deepcopy(holder[0]))  # shares nothing with `opt`
                _train(model, opt, rank, range(STEPS, STEPS + 3))
                _train(resumed_model, resumed, rank, range(STEPS, STEPS + 3))
                results[kind + "_continued"] = [p.detach().clone() for p in model.parameters()]
                results[kind + "_resumed"] = [
                    p.detach().clone() for p in resumed_model.parameters()
                ]
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_and_zero_redundancy_optimizer_equal_the_plain_adapter_and_torch(tmp_path):
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=WORLD, start_method="spawn")
    results = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(WORLD)]
    for rank_results in results:
        for kind in ("plain", "zero"):
            for ours, theirs in zip(rank_results[kind], rank_results["torch"], strict=True):
                torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
        for kind in ("zero", "zero_torch"):
            resumed, continued = rank_results[f"{kind}_resumed"], rank_results[f"{kind}_continued"]
            for a, b in zip(resumed, continued, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=kind)
        for a, b in zip(rank_results["zero_resumed"], rank_results["zero_torch_resumed"]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(results[0]["zero"], results[1]["zero"], strict=True):
        assert torch.equal(a, b)  # the ranks agree
