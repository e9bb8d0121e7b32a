"""Every optimizer and transform on DTensor parameters, in gloo processes on 127.0.0.1.

- FSDP2 (``fully_shard``, two ranks): `tf.Optimizer` over every row of the ``OPTIMIZERS`` and
  ``TRANSFORMS`` tables gives the parameters of the same run on one process. Both ranks see
  the same batch, so FSDP's gradient average (g + g) / 2 is exact and the comparison is to
  1e-10 in float64, even for chaotic maths (eigenbases, sign-like steps).
- The functional ``update`` on DTensor leaves (each leaf sharded along each of its axes and
  replicated, over two layouts; with 5, 7 and 3 rows over two ranks shards are uneven, with 1
  some are empty) gives the plain run's numbers. The whole-tree reductions (norms, trust
  ratios, factored and SM3 statistics, preconditioner matrices) are where sharding would
  change them.
- A `torch.distributed.checkpoint` of the adapter (through ``get_state_dict``) and of a
  functional state (through `tf.tree_state_dict`) saved on two ranks resumes on three with the
  numbers of an uninterrupted run (FSDP2's average of three equal gradients may round: to
  1e-12).
"""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import torchopt_fn as tf
from tests.helpers import OPTIMIZERS, TRANSFORMS, make_tx
from torchopt_fn._record import recorded_arguments

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is missing"),
]

STEPS = 2
F64 = torch.float64


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], tf.GradientTransformation]
    needs_value: bool
    # What one process must equal, where it is not ``make`` itself.
    reference: Callable[[], tf.GradientTransformation] | None = None


def _reference(case: Any) -> Callable[[], tf.GradientTransformation] | None:
    if case.id == "quantized_state":  # keeps DTensor leaves as they are: its inner's numbers
        return lambda: recorded_arguments(case.make())["inner"]
    return None


CASES = [Case(c.id, lambda c=c: make_tx(c), c.needs_value) for c in OPTIMIZERS] + [
    Case(c.id, c.make, c.needs_value, _reference(c)) for c in TRANSFORMS
]


def _recipe() -> tf.GradientTransformation:
    """The everyday recipe the checkpoint tests resume."""
    schedule = tf.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10)
    return tf.chain(
        tf.clip_by_global_norm(1.0),
        tf.adamw(schedule, weight_decay=0.1, mask=lambda p: tf.tree_map(lambda x: x.dim() > 1, p)),
    )


# --------------------------------------------------------------------------- process plumbing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker: Callable[..., None], world: int, *args: Any) -> list[Any]:
    """Run ``worker(rank, world, *args, out)`` on ``world`` ranks; return each rank's result."""
    out = f"{args[-1]}/{worker.__name__}"
    mp.start_processes(
        _bootstrap,
        args=(world, _free_port(), worker, args, out),
        nprocs=world,
        start_method="spawn",
    )
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(world)]


def _bootstrap(rank: int, world: int, port: int, worker, args: tuple, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A timeout turns a rank that fell out of step (an error on one rank only) into a failure.
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
    torch.set_num_threads(1)
    try:
        torch.save(worker(rank, world, *args), f"{out}.{rank}")
        dist.barrier()  # no rank tears down its connections while another still uses them
    finally:
        dist.destroy_process_group()


def _whole(x: torch.Tensor) -> torch.Tensor:
    return (x.full_tensor() if hasattr(x, "full_tensor") else x).detach().clone()


def _error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))


def _failure(case: str, e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)[-3:]
    where = "; ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in frames)
    return f"{case}: {type(e).__name__}: {str(e).splitlines()[0][:200]} ({where})"


# --------------------------------------------------------------------------- FSDP2, two ranks


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3), torch.nn.Linear(3, 1)
    ).double()


def _sharded(model: torch.nn.Sequential) -> torch.nn.Sequential:
    from torch.distributed.fsdp import fully_shard

    for layer in (model[0], model[2], model[3]):
        fully_shard(layer)
    fully_shard(model)
    return model


def _batch(t: int) -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(t), dtype=F64)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, value: bool) -> None:
    for t in steps:

        def closure(t: int = t) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.sin(model(_batch(t))).pow(2).mean()
            loss.backward()
            return loss

        if value:
            opt.step(closure)
        else:
            closure()
            opt.step()


def _fsdp_worker(rank: int, world: int, checkpoint: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    failures = []
    for case in CASES:
        try:
            plain = _model()
            opt = tf.Optimizer(plain.parameters(), (case.reference or case.make)())
        except ValueError:  # refused by the adapter whatever the placement (flatten)
            continue
        try:
            _train(plain, opt, range(STEPS), case.needs_value)
            model = _sharded(_model())
            _train(
                model, tf.Optimizer(model.parameters(), case.make()), range(STEPS), case.needs_value
            )
            error = _error(
                [_whole(p) for p in model.parameters()], [_whole(p) for p in plain.parameters()]
            )
            if not error <= 1e-10:
                failures.append(f"{case.id}: differs by {error:.2e}")
        except Exception as e:
            failures.append(_failure(case.id, e))

    # Save the adapter (model and optimizer through DCP's own helpers) and a functional state.
    model = _sharded(_model())
    opt = tf.Optimizer(model.parameters(), _recipe())
    _train(model, opt, range(STEPS), False)
    model_sd, opt_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": opt_sd}, checkpoint_id=f"{checkpoint}/adapter")
    params, state = _functional_run(_distributed_params(_PARAMS, LAYOUTS["layout A"]), range(STEPS))
    dcp.save(
        {"params": dict(params), "state": tf.tree_state_dict(state)},
        checkpoint_id=f"{checkpoint}/functional",
    )
    failures += _quantized_adapter()
    params, state = _quantized_run(_distributed_params(_WIDE, _ROWS), range(STEPS))
    dcp.save(
        {"params": dict(params), "state": tf.tree_state_dict(state)},
        checkpoint_id=f"{checkpoint}/quantized",
    )
    return {
        "failures": failures + _functional_battery() + _quantized_layout(state),
        "quantized": {k: _whole(v) for k, v in params.items()},
    }


# --------------------------------------------------------------------------- DTensor leaves


_GEN = torch.Generator().manual_seed(0)
_PARAMS = {
    "w": torch.randn(5, 7, generator=_GEN, dtype=F64),
    "b": torch.randn(5, generator=_GEN, dtype=F64),
    "v": torch.randn(3, 4, 2, generator=_GEN, dtype=F64),
    "s": torch.randn(1, generator=_GEN, dtype=F64),
    "r": torch.randn(1, 3, generator=_GEN, dtype=F64),
}


def _grads(params: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
    return {k: torch.sin(v * (t + 1)) + 0.1 * v for k, v in params.items()}


def _value(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum((v**2).sum() for v in params.values())


# Two layouts of the same leaves: between them every leaf is sharded along each of its axes
# and replicated; some shards are uneven (5, 7 or 3 over 2 ranks) and some empty (1 over 2).
LAYOUTS = {
    "layout A": {
        "w": "Shard(0)",
        "b": "Replicate()",
        "v": "Shard(1)",
        "s": "Shard(0)",
        "r": "Shard(1)",
    },
    "layout B": {
        "w": "Shard(1)",
        "b": "Shard(0)",
        "v": "Shard(0)",
        "s": "Replicate()",
        "r": "Shard(0)",
    },
}


def _distributed_params(params: dict[str, torch.Tensor], layout: dict[str, str]) -> dict[str, Any]:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    placements = {"Shard(0)": Shard(0), "Shard(1)": Shard(1), "Replicate()": Replicate()}
    return {k: distribute_tensor(v, mesh, [placements[layout[k]]]) for k, v in params.items()}


def _like(x: torch.Tensor, like: Any) -> Any:
    """``x`` (the same on every rank) in ``like``'s placement, if ``like`` is a DTensor."""
    if not hasattr(like, "device_mesh"):
        return x
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(x, like.device_mesh, like.placements, src_data_rank=None)


def _functional_run(params, steps: range, tx=None, state=None, needs_value: bool = False):
    """``steps`` functional updates of ``tx`` (the recipe) from ``params`` (DTensors or not)."""
    tx = _recipe() if tx is None else tx
    state = tx.init(params) if state is None else state
    for t in steps:
        whole = {k: _whole(v) for k, v in params.items()}
        grads = {k: _like(g, params[k]) for k, g in _grads(whole, t).items()}
        extra = {"value": _value(whole)} if needs_value else {}
        updates, state = tx.update(grads, state, params, **extra)
        params = tf.apply_updates(params, updates)
    return params, state


def _functional_battery() -> list[str]:
    """Every case's functional updates on DTensor leaves, in both layouts: what differs."""
    failures = []
    for case in CASES:
        try:
            reference = (case.reference or case.make)()
            expected, _ = _functional_run(_PARAMS, range(2), reference, None, case.needs_value)
        except Exception as e:
            failures.append(_failure(f"{case.id} (one process)", e))
            continue
        for placement, layout in LAYOUTS.items():
            try:
                params = _distributed_params(_PARAMS, layout)
                params, _ = _functional_run(params, range(2), case.make(), None, case.needs_value)
                error = _error([_whole(params[k]) for k in _PARAMS], [expected[k] for k in _PARAMS])
                if not error <= 1e-10:
                    failures.append(f"{case.id} on {placement}: differs by {error:.2e}")
            except Exception as e:
                failures.append(_failure(f"{case.id} on {placement}", e))

    return failures


# `quantized_state` on DTensor leaves: rows of whole blocks (16), sharded along the first
# axis (unevenly over 2 and 3 ranks, "v" empty on all ranks but one) or replicated; "b" is 1-d
# and "t" sharded along its second axis, so both stay as they are (one process quantizes "t":
# it follows the inner optimizer's numbers instead, AdamW being element-wise).
_WIDE = {
    "w": torch.randn(5, 2, 16, generator=_GEN, dtype=F64),
    "v": torch.randn(1, 32, generator=_GEN, dtype=F64),
    "r": torch.randn(3, 16, generator=_GEN, dtype=F64),
    "b": torch.randn(7, generator=_GEN, dtype=F64),
    "t": torch.randn(3, 16, generator=_GEN, dtype=F64),
}
_ROWS = {"w": "Shard(0)", "v": "Shard(0)", "r": "Replicate()", "b": "Shard(0)", "t": "Shard(1)"}
_QUANTIZED = ("w", "v", "r")


def _quantized_inner() -> tf.GradientTransformation:
    return tf.adamw(0.05, weight_decay=0.1)


def _quantized_tx() -> tf.GradientTransformation:
    return tf.quantized_state(_quantized_inner(), block_size=16, min_size=16)


def _quantized_run(params, steps: range, state=None):
    return _functional_run(params, steps, _quantized_tx(), state)


def _quantized_layout(state: Any) -> list[str]:
    """What is not as `quantized_state` documents it: the leaves in `_QUANTIZED` held as
    8-bit DTensor codes with DTensor scales, the others as DTensors of the inner's state."""
    failures = []
    for moment in ("mu", "nu"):
        for k, leaf in getattr(state[0], moment).items():
            quantized = isinstance(leaf, tf.QuantizedLeaf)
            if quantized != (k in _QUANTIZED):
                failures.append(f"quantized_state: {moment}[{k}] quantized is {quantized}")
            elif quantized and not (
                hasattr(leaf.codes, "device_mesh") and hasattr(leaf.absmax, "device_mesh")
            ):
                failures.append(f"quantized_state: {moment}[{k}] codes are not DTensors")
    return failures


def _quantized_adapter() -> list[str]:
    """`quantized_state` through the `Optimizer` adapter under FSDP2: the first layer's weight
    (5 rows of one block, over 2 ranks) is quantized on each rank, the run equals one process,
    and DCP's `get_state_dict` takes its state. (Every other leaf is below ``min_size``, 16,
    so both runs keep it at full precision: one process would otherwise quantize a leaf of
    short rows, which FSDP2 keeps.)"""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    def model() -> torch.nn.Sequential:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))

    def run(net: torch.nn.Module) -> tf.Optimizer:
        opt = tf.Optimizer(net.parameters(), _quantized_tx())
        for t in range(STEPS):
            opt.zero_grad()
            x = torch.randn(8, 16, generator=torch.Generator().manual_seed(t), dtype=F64)
            torch.sin(net(x)).pow(2).mean().backward()
            opt.step()
        return opt

    from torch.distributed.fsdp import fully_shard

    plain, sharded = model().double(), model().double()
    run(plain)
    for layer in (sharded[0], sharded[2]):
        fully_shard(layer)
    opt = run(sharded)
    failures = []
    error = _error(
        [_whole(p) for p in sharded.parameters()], [_whole(p) for p in plain.parameters()]
    )
    if not error <= 1e-10:
        failures.append(f"quantized_state in the adapter under FSDP2: differs by {error:.2e}")
    weight = opt.state[sharded[0].weight]
    if not any("codes" in k and hasattr(v, "device_mesh") for k, v in weight.items()):
        failures.append(f"quantized_state in the adapter: weight state {sorted(weight)}")
    _, optim_sd = get_state_dict(sharded, opt)
    if not optim_sd["state"]:
        failures.append("quantized_state in the adapter: get_state_dict has no state")
    return failures


def _resume_worker(rank: int, world: int, checkpoint: str) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    # Resume the two-rank checkpoints on three ranks.
    model = _sharded(_model())
    opt = tf.Optimizer(model.parameters(), _recipe())
    _train(model, opt, range(1), False)  # any step: the load replaces it all
    model_sd, opt_sd = get_state_dict(model, opt)
    loaded = {"model": model_sd, "optim": opt_sd}
    dcp.load(loaded, checkpoint_id=f"{checkpoint}/adapter")
    set_state_dict(model, opt, model_state_dict=loaded["model"], optim_state_dict=loaded["optim"])
    _train(model, opt, range(STEPS, 2 * STEPS), False)

    params = _distributed_params(_PARAMS, LAYOUTS["layout A"])
    state = _recipe().init(params)
    loaded = {"params": params, "state": tf.tree_state_dict(state)}
    dcp.load(loaded, checkpoint_id=f"{checkpoint}/functional")  # into these tensors, resharded
    params, _ = _functional_run(params, range(STEPS, 2 * STEPS), state=state)

    wide = _distributed_params(_WIDE, _ROWS)
    wide_state = _quantized_tx().init(wide)
    loaded = {"params": wide, "state": tf.tree_state_dict(wide_state)}
    dcp.load(loaded, checkpoint_id=f"{checkpoint}/quantized")
    wide, _ = _quantized_run(wide, range(STEPS, 2 * STEPS), state=wide_state)
    return {
        "adapter": [_whole(p) for p in model.parameters()],
        "functional": {k: _whole(v) for k, v in params.items()},
        "quantized": {k: _whole(v) for k, v in wide.items()},
    }


def test_every_optimizer_under_fsdp2_and_on_dtensor_leaves_equals_one_process(tmp_path):
    two = _spawn(_fsdp_worker, 2, str(tmp_path))
    three = _spawn(_resume_worker, 3, str(tmp_path))
    for rank, result in enumerate(two):
        assert not result["failures"], f"rank {rank}:\n" + "\n".join(result["failures"])

    # The uninterrupted runs, on one process.
    model = _model()
    _train(model, tf.Optimizer(model.parameters(), _recipe()), range(2 * STEPS), False)
    params, _ = _functional_run(dict(_PARAMS), range(2 * STEPS))
    for result in three:
        for ours, theirs in zip(result["adapter"], model.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-14)
        for k in _PARAMS:
            torch.testing.assert_close(result["functional"][k], params[k], rtol=1e-12, atol=1e-14)

    # quantized_state on DTensors: the same blocks, the same numbers as one process, and a
    # resume on three ranks ends where one process does.
    for steps, results in ((STEPS, two), (2 * STEPS, three)):
        wide, _ = _quantized_run(dict(_WIDE), range(steps))
        wide["t"] = _functional_run(dict(_WIDE), range(steps), _quantized_inner())[0]["t"]
        for result in results:
            for k in _WIDE:
                torch.testing.assert_close(result["quantized"][k], wide[k], rtol=1e-12, atol=1e-14)
