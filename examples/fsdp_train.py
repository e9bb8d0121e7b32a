"""Train an MLP on scikit-learn's digits with FSDP2, checkpoint it, and resume on more ranks.

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every parameter along its first axis
across the ranks; the parameters become DTensors and so do their gradients. A torchopt_fn
optimizer runs on them as it is, through the `tf.Optimizer` adapter::

    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    opt = tf.Optimizer(model.parameters(), recipe)   # any transformation

Element-wise maths stays on each rank's shard; what needs more (the global norm of the
clip, here) communicates through DTensor. A checkpoint goes through
`torch.distributed.checkpoint` (DCP), which saves each rank's shards and reshards on load, so
a run saved on two ranks resumes on three with the same numbers.

The processes talk over gloo on 127.0.0.1, so everything runs on one CPU machine. Run it
with torchrun, or let the script start its own processes::

    torchrun --standalone --nproc_per_node 2 examples/fsdp_train.py
    python examples/fsdp_train.py [--nproc 2] [--quick] [--steps N] [--checkpoint-at K]
        [--resume] [--checkpoint DIR] [--state-8bit]

``--checkpoint-at K`` saves a checkpoint after step K, trains on, and at the end trains a
fresh model and optimizer from the checkpoint to check that it ends with the same weights.
``--resume`` starts from the checkpoint (on any number of processes). ``--state-8bit`` keeps
the two hidden weights' Adam moments in 8 bits (`tf.quantized_state`), each rank its own rows.
Rank 0 prints the loss every few steps, the optimizer state's bytes per parameter and the test
accuracy at the end.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

import torchopt_fn as tf

SEED = 0
BATCH_SIZE = 64  # the global batch: each rank takes its slice
STEPS = 300
QUICK_STEPS = 30
LOG_EVERY = 50


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8x8 digits (1797 images, shipped with scikit-learn), standardised, 75/25 split."""
    x, y = load_digits(return_X_y=True)
    split = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    x_train, x_test, y_train, y_test = (torch.from_numpy(a) for a in split)
    x_train, x_test = x_train.float(), x_test.float()
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1.0)
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def sharded_model() -> nn.Sequential:
    """The MLP, the same initial weights on every rank, each linear layer sharded by FSDP2."""
    torch.manual_seed(SEED)
    model = nn.Sequential(
        nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, 10)
    )
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    return model


# --8<-- [start:optimizer]
def make_optimizer(model: nn.Module, steps: int, state_8bit: bool = False) -> tf.Optimizer:
    """Clip by the global norm, then AdamW on a warmup-cosine schedule, decaying matrices only;
    with ``state_8bit``, the moments of leaves of 4096 elements or more kept in 8 bits, in
    blocks of 64 (the hidden weights' rows: 64 and 128 elements)."""
    schedule = tf.warmup_cosine_decay_schedule(0.0, 3e-3, steps // 10, steps)
    recipe = tf.chain(
        tf.clip_by_global_norm(1.0),
        tf.adamw(schedule, weight_decay=1e-2, mask=lambda p: tf.tree_map(lambda x: x.dim() > 1, p)),
    )
    if state_8bit:
        recipe = tf.quantized_state(recipe, block_size=64)
    return tf.Optimizer(model.parameters(), recipe)


def save(model: nn.Module, opt: tf.Optimizer, step: int, directory: Path) -> None:
    """Each rank writes its own shards; DCP keys them by parameter name."""
    model_sd, opt_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": opt_sd, "step": step}, checkpoint_id=directory)


def load(model: nn.Module, opt: tf.Optimizer, directory: Path) -> int:
    """Read the shards this rank now owns, however many ranks wrote them."""
    model_sd, opt_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": opt_sd, "step": 0}
    dcp.load(state, checkpoint_id=directory)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return state["step"]


# --8<-- [end:optimizer]


def batch(step: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the step's global batch (the same batches however many ranks)."""
    g = torch.Generator().manual_seed(SEED + step)
    index = torch.randint(0, len(x), (BATCH_SIZE,), generator=g)
    mine = index.chunk(dist.get_world_size())[dist.get_rank()]
    return x[mine], y[mine]


def train_steps(
    model: nn.Module, opt: tf.Optimizer, steps: range, data: tuple, log_total: int = 0
) -> None:
    """Train over ``steps``; print the loss every `LOG_EVERY` steps of ``log_total`` (0: quiet)."""
    x_train, y_train = data
    for step in steps:
        x, y = batch(step, x_train, y_train)
        opt.zero_grad()
        # Each rank's mean over its slice; FSDP averages the gradients over the ranks, so the
        # step is that of the mean over the global batch (for equal slices).
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if log_total and ((step + 1) % LOG_EVERY == 0 or step + 1 == log_total):
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
            if dist.get_rank() == 0:
                print(f"step {step + 1:4d}/{log_total}  loss {mean_loss.item():.4f}", flush=True)


def state_bytes_per_parameter(model: nn.Module, opt: tf.Optimizer) -> float:
    """The optimizer state's bytes over the parameters' count, all ranks together."""

    def local(x: torch.Tensor) -> torch.Tensor:
        return x.to_local() if hasattr(x, "to_local") else x

    counts = torch.tensor([0.0, 0.0], dtype=torch.float64)
    for p in model.parameters():
        counts[0] += local(p).numel()
        for value in opt.state[p].values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:  # not the step counts
                counts[1] += local(value).numel() * value.element_size()
    dist.all_reduce(counts)
    return float(counts[1] / counts[0])


def whole_weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor().detach() for p in model.parameters()]


def train(args: argparse.Namespace) -> None:
    rank = dist.get_rank()
    x_train, y_train, x_test, y_test = load_data()
    model = sharded_model()
    opt = make_optimizer(model, args.steps, args.state_8bit)
    start = load(model, opt, args.checkpoint) if args.resume else 0
    if rank == 0:
        resumed = f", resumed at step {start}" if args.resume else ""
        print(f"FSDP2 on {dist.get_world_size()} processes{resumed}", flush=True)
    at = args.checkpoint_at
    if at:
        train_steps(model, opt, range(start, at), (x_train, y_train), args.steps)
        save(model, opt, at, args.checkpoint)
        if rank == 0:
            print(f"saved a checkpoint after step {at} to {args.checkpoint}", flush=True)
        start = at
    train_steps(model, opt, range(start, args.steps), (x_train, y_train), args.steps)
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    per_parameter = state_bytes_per_parameter(model, opt)
    if rank == 0:
        print(f"optimizer state: {per_parameter:.2f} bytes per parameter", flush=True)
        print(f"test accuracy: {100 * accuracy:.1f}%", flush=True)
    if at:  # a fresh model and optimizer, from the checkpoint, to the same end
        again = sharded_model()
        opt = make_optimizer(again, args.steps, args.state_8bit)
        resumed_at = load(again, opt, args.checkpoint)
        train_steps(again, opt, range(resumed_at, args.steps), (x_train, y_train))
        same = all(torch.equal(a, b) for a, b in zip(whole_weights(model), whole_weights(again)))
        if rank == 0:
            print(f"resumed run ends where the uninterrupted one did: {same}")


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    run(args)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)  # one core per process
    dist.init_process_group("gloo")
    try:
        train(args)
        dist.barrier()  # no rank tears down its connections while another still uses them
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes (without torchrun)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps")
    parser.add_argument("--checkpoint-at", type=int, default=0, help="save after this step")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--state-8bit", action="store_true", help="tf.quantized_state moments")
    args = parser.parse_args()
    args.steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    if args.checkpoint is None:
        args.checkpoint = Path(tempfile.gettempdir()) / "torchopt_fn_fsdp_checkpoint"
    if "RANK" in os.environ:  # started by torchrun
        run(args)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _worker, args=(args.nproc, port, args), nprocs=args.nproc, start_method="spawn"
    )


if __name__ == "__main__":
    main()
