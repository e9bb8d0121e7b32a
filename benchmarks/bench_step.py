"""Optimizer step benchmark: torchopt_fn against torch.optim (and others when installed).

Times one optimizer step (update + apply) per contender, interleaving the contenders round-robin
so machine noise hits all of them alike, and measures each one's optimizer state and the peak of
the temporaries it allocates during a step. Prints markdown tables and saves a PNG.

    python benchmarks/bench_step.py                       # W1 and W2, all optimizers
    python benchmarks/bench_step.py --big --reps 20       # adds W3 (one 8192 x 8192 tensor)
    python benchmarks/bench_step.py --quick               # tiny smoke run
    python benchmarks/bench_step.py --workloads W2 --optimizers adamw --contenders fused,foreach

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

import torchopt_fn as tf

LR = 1e-3
WEIGHT_DECAY = 1e-2
MOMENTUM = 0.9

# fp32 bytes each step must move per parameter: Adam(W) reads p, g, m, v and writes p, m, v;
# SGD with momentum reads p, g, m and writes p, m.
BYTES_PER_PARAM = {"adamw": 28, "adam": 28, "sgdm": 20}
OPTIMIZERS = tuple(BYTES_PER_PARAM)
ALLOCATOR_ENV_PREFIXES = ("MALLOC_", "THP_MEM_ALLOC_ENABLE", "LD_PRELOAD")


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def transformer_shapes(
    d_model: int = 128, layers: int = 12, mlp_ratio: int = 3, vocab: int = 96, context: int = 64
) -> tuple[tuple[int, ...], ...]:
    """Parameter shapes of a small pre-LN transformer with separate q, k, v, out projections."""
    d, h = d_model, mlp_ratio * d_model
    shapes: list[tuple[int, ...]] = [(vocab, d), (context, d)]  # token and position embeddings
    for _ in range(layers):
        shapes += [(d,), (d,)]  # LayerNorm 1 weight, bias
        shapes += [(d, d), (d,)] * 4  # q, k, v, out projections with biases
        shapes += [(d,), (d,)]  # LayerNorm 2 weight, bias
        shapes += [(h, d), (h,), (d, h), (d,)]  # MLP
    shapes += [(d,), (d,), (vocab, d), (vocab,)]  # final LayerNorm, head
    return tuple(shapes)


WORKLOADS = {
    "W1": Workload("W1", "pre-LN transformer, d_model=128, 12 layers", transformer_shapes()),
    "W2": Workload("W2", "4 x (2000, 4000)", ((2000, 4000),) * 4),
    "W3": Workload("W3", "one 8192 x 8192", ((8192, 8192),)),
    "Q": Workload("Q", "smoke test: 2-layer d_model=16 transformer", transformer_shapes(16, 2)),
}


# --------------------------------------------------------------------------- contenders


@dataclass
class Runner:
    """A ready-to-time contender: ``step()`` runs one optimizer step in place."""

    step: Callable[[], None]
    state: Callable[[], list[torch.Tensor]]
    first_call_s: float | None = None
    # For a library outside torch (optax): its state's size; its temporaries are not measured.
    foreign_state_nbytes: Callable[[], int] | None = None


def _tx(opt: str, lib: Any = tf) -> Any:
    """``opt``'s transformation from ``lib``: torchopt_fn, TorchOpt and optax share these names."""
    if opt == "adamw":
        return lib.adamw(LR, weight_decay=WEIGHT_DECAY)
    if opt == "adam":
        return lib.adam(LR)
    return lib.sgd(LR, momentum=MOMENTUM)


def _torch_optim(opt: str, params: list[torch.Tensor], **impl: Any) -> torch.optim.Optimizer:
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, **impl)
    if opt == "adam":
        return torch.optim.Adam(params, lr=LR, **impl)
    return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, **impl)


def _timed_first_call(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _leaves(tree: Any) -> list[torch.Tensor]:
    return [x for x in tf.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples (heavyball nests its per-param state)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if not isinstance(obj, (dict, list, tuple)):
        return []
    children = obj.values() if isinstance(obj, dict) else obj
    return [t for child in children for t in _tensors_in(child)]


def _torch_state(optimizer: torch.optim.Optimizer) -> Callable[[], list[torch.Tensor]]:
    return lambda: _tensors_in(list(optimizer.state.values()))


def tf_eager(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    tx = _tx(opt)
    box = {"params": list(params), "state": tx.init(list(params))}

    def step() -> None:
        updates, box["state"] = tx.update(grads, box["state"], box["params"])
        box["params"] = tf.apply_updates(box["params"], updates)

    return Runner(step, lambda: _leaves(box["state"]))


def tf_compile_step(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    tx = _tx(opt)
    compiled = tf.compile_step(tx, donate=True)
    state = tx.init(params)

    def step() -> None:
        compiled(params, grads, state)  # donated: results are written into params and state

    return Runner(step, lambda: _leaves(state), first_call_s=_timed_first_call(step))


def tf_compile_step_raveled(
    opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]
) -> Runner:
    """`compile_step` on the flat layout: params and grads as one tensor (`tf.ravel_tree`).

    In a training loop the flat gradient comes straight from differentiating with respect to
    the flat params (the model reads views of it); here it is concatenated once, untimed.
    """
    flat_params, _ = tf.ravel_tree(params)
    flat_grads, _ = tf.ravel_tree(grads)
    tx = _tx(opt)
    compiled = tf.compile_step(tx, donate=True)
    state = tx.init(flat_params)

    def step() -> None:
        compiled(flat_params, flat_grads, state)

    return Runner(step, lambda: _leaves(state), first_call_s=_timed_first_call(step))


def _with_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [torch.nn.Parameter(p) for p in params]
    for p, g in zip(out, grads):
        p.grad = g  # shared across contenders: none of them writes to the gradients
    return out


def tf_optimizer(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    optimizer = tf.Optimizer(_with_grads(params, grads), _tx(opt))
    return Runner(optimizer.step, _torch_state(optimizer))


def _torch_runner(**impl: Any) -> Callable[..., Runner]:
    def make(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
        optimizer = _torch_optim(opt, _with_grads(params, grads), **impl)
        return Runner(optimizer.step, _torch_state(optimizer))

    return make


def torch_compiled(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    optimizer = _torch_optim(opt, _with_grads(params, grads))
    compiled = torch.compile(optimizer.step)
    return Runner(compiled, _torch_state(optimizer), first_call_s=_timed_first_call(compiled))


# --------------------------------------------------------------------------- other libraries
# Benchmarked when installed (none is installed by this script), with the same hyperparameters.
# Their algorithms differ in details (heavyball's defaults, optax's epsilon placement), not in
# the memory traffic a step needs.


def heavyball_runner(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    """heavyball's `AdamW` / `SGD` classes (compile-first: their step is `torch.compile`d)."""
    import heavyball

    params = _with_grads(params, grads)
    if opt == "sgdm":
        optimizer = heavyball.SGD(params, lr=LR, beta=MOMENTUM)
    else:
        decay = WEIGHT_DECAY if opt == "adamw" else 0.0
        optimizer = heavyball.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=decay)

    def step() -> None:
        optimizer.step()
        for p, g in zip(params, grads):  # heavyball sets `p.grad = None` after its step
            p.grad = g

    return Runner(step, _torch_state(optimizer), first_call_s=_timed_first_call(step))


def torchopt_runner(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    """TorchOpt's functional API: ``update`` out of place (the gradients are shared), then
    ``apply_updates(inplace=True)``."""
    import torchopt

    tx = _tx(opt, torchopt)
    box = {"state": tx.init(params)}

    def step() -> None:
        updates, box["state"] = tx.update(grads, box["state"], params=params, inplace=False)
        torchopt.apply_updates(params, updates, inplace=True)

    return Runner(step, lambda: _leaves(box["state"]))


def optax_runner(opt: str, params: list[torch.Tensor], grads: list[torch.Tensor]) -> Runner:
    """optax under ``jax.jit`` with params and state donated, on JAX's CPU backend."""
    import jax
    import jax.numpy as jnp
    import optax

    tx = _tx(opt, optax)

    def update(p: Any, g: Any, s: Any) -> Any:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    jitted = jax.jit(update, donate_argnums=(0, 2))
    jax_grads = [jnp.asarray(g.numpy()) for g in grads]
    jax_params = [jnp.asarray(p.numpy()) for p in params]
    box = {"params": jax_params, "state": tx.init(jax_params)}

    def step() -> None:
        box["params"], box["state"] = jitted(box["params"], jax_grads, box["state"])
        jax.block_until_ready(box["params"])

    return Runner(
        step,
        lambda: [],
        first_call_s=_timed_first_call(step),
        foreign_state_nbytes=lambda: sum(x.nbytes for x in jax.tree.leaves(box["state"])),
    )


OPTIONAL_CONTENDERS = {
    "heavyball": ("heavyball", heavyball_runner),
    "torchopt": ("torchopt", torchopt_runner),
    "optax jit+donate": ("optax", optax_runner),
}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


CONTENDERS: dict[str, Callable[[str, list[torch.Tensor], list[torch.Tensor]], Runner]] = {
    "tf eager": tf_eager,
    "tf compile_step": tf_compile_step,
    "tf compile_step (raveled)": tf_compile_step_raveled,
    "tf Optimizer": tf_optimizer,
    "torch for-loop": _torch_runner(foreach=False),
    "torch foreach": _torch_runner(foreach=True),
    "torch fused": _torch_runner(fused=True),
    "torch.compile(step)": torch_compiled,
    **{name: make for name, (module, make) in OPTIONAL_CONTENDERS.items() if _installed(module)},
}


def missing_optional_libraries() -> list[str]:
    return [module for module, _ in OPTIONAL_CONTENDERS.values() if not _installed(module)]


# --------------------------------------------------------------------------- measurements


def streaming_bandwidth_gbs(numel: int, reps: int = 10) -> dict[str, float]:
    """Median bandwidth of two streaming ops on fp32 tensors, counting bytes read and written.

    ``dst.copy_(src)`` (2 x size) and the in-place ``a.add_(b)`` (3 x size). A copy into another
    buffer also pays for reading the destination's cache lines before writing them, which an
    in-place update does not, so the in-place figure is the closer reference for optimizers.
    """
    a, b, dst = torch.rand(numel), torch.rand(numel), torch.empty(numel)
    probes = {
        "copy_": (lambda: dst.copy_(a), 2),
        "add_": (lambda: a.add_(b, alpha=1e-9), 3),
    }
    out = {}
    for name, (fn, streams) in probes.items():
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = streams * a.nbytes / statistics.median(times) / 1e9
    return out


def peak_temporary_bytes(step: Callable[[], None]) -> int:
    """Peak of torch's live CPU allocations during one step, relative to its start.

    Every allocation and free made through torch's CPU allocator (eager kernels and Inductor's
    compiled code alike) is recorded by the profiler; their running sum in time order peaks at
    the step's largest set of live temporaries. Memory that survives the step is counted too.
    Frees of blocks allocated before the step have no size in the record and are not subtracted,
    so the result is an upper bound when a step frees older tensors (the eager functional path).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def unique_nbytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages of ``tensors``."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


@dataclass
class Result:
    contender: str
    times: list[float] = field(default_factory=list)
    state_bytes: int = 0
    peak_temp_bytes: int | None = 0  # None: not measured (a library outside torch)
    first_call_s: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def run_case(
    workload: Workload,
    opt: str,
    contenders: list[str],
    reps: int,
    warmup: int,
    seed: int,
) -> list[Result]:
    """Time ``contenders`` on one workload and optimizer, interleaved round-robin."""
    gen = torch.Generator().manual_seed(seed)
    template = [torch.randn(s, generator=gen) for s in workload.shapes]
    grads = [torch.randn(s, generator=gen).mul_(1e-2) for s in workload.shapes]
    grad_sum = float(sum(g.double().sum() for g in grads))
    runners: dict[str, Runner] = {}
    results: dict[str, Result] = {}
    for name in contenders:
        print(f"  setting up {name} ...", file=sys.stderr, flush=True)
        runner = CONTENDERS[name](opt, [p.clone() for p in template], grads)
        for _ in range(warmup):
            runner.step()
        runners[name] = runner
        results[name] = Result(name, first_call_s=runner.first_call_s)
    order = list(contenders)
    shuffle = random.Random(seed).shuffle
    for _ in range(reps):
        shuffle(order)  # a fresh order each repetition: no contender always follows another
        for name in order:
            start = time.perf_counter()
            runners[name].step()
            results[name].times.append(time.perf_counter() - start)
    for name, runner in runners.items():
        if runner.foreign_state_nbytes is None:
            results[name].peak_temp_bytes = peak_temporary_bytes(runner.step)
            results[name].state_bytes = unique_nbytes(runner.state())
        else:
            results[name].peak_temp_bytes = None
            results[name].state_bytes = runner.foreign_state_nbytes()
    if not math.isclose(float(sum(g.double().sum() for g in grads)), grad_sum):
        raise RuntimeError("a contender modified the shared gradients")
    return [results[name] for name in contenders]


# --------------------------------------------------------------------------- reporting


def _ratio(value: float, reference: Result | None) -> str:
    return f"{value / reference.median:.2f}" if reference else "-"


def markdown_table(
    workload: Workload, opt: str, results: list[Result], bandwidth_gbs: float
) -> str:
    by_name = {r.contender: r for r in results}
    foreach, fused = by_name.get("torch foreach"), by_name.get("torch fused")
    limit_s = BYTES_PER_PARAM[opt] * workload.numel / (bandwidth_gbs * 1e9)
    lines = [
        f"**{workload.name} ({workload.description}; {len(workload.shapes)} tensors, "
        f"{workload.numel / 1e6:.2f}M params), {opt}** — bandwidth limit "
        f"{BYTES_PER_PARAM[opt]} B/param = {limit_s * 1e3:.2f} ms",
        "",
        "| contender | median ms | IQR ms | x foreach | x fused | % of limit | state MB "
        "| peak temp MB | first call s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        q = statistics.quantiles(r.times, n=4) if len(r.times) > 1 else [r.median] * 3
        first = f"{r.first_call_s:.1f}" if r.first_call_s is not None else ""
        temp = f"{r.peak_temp_bytes / 1e6:.1f}" if r.peak_temp_bytes is not None else "n/a"
        lines.append(
            f"| {r.contender} | {r.median * 1e3:.2f} | {(q[2] - q[0]) * 1e3:.2f} "
            f"| {_ratio(r.median, foreach)} | {_ratio(r.median, fused)} "
            f"| {100 * limit_s / r.median:.0f}% | {r.state_bytes / 1e6:.1f} "
            f"| {temp} | {first} |"
        )
    return "\n".join(lines)


def save_plot(all_results: dict[tuple[str, str], list[Result]], path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed, so no {path} (pip install 'torchopt_fn[examples]')")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({w for w, _ in all_results})
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        cases = [(opt, res) for (wl, opt), res in all_results.items() if wl == w]
        names = [r.contender for r in cases[0][1]]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = [next(r.median for r in res if r.contender == name) * 1e3 for _, res in cases]
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(cases))]
            ax.bar(xs, values, width, label=name)
        ax.set_xticks(range(len(cases)), [opt for opt, _ in cases])
        ax.set_yscale("log")
        ax.set_ylabel("median step time (ms, log)")
        ax.set_title(w)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}", file=sys.stderr)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
        f"load average {load}"
    )


# --------------------------------------------------------------------------- main


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=_csv, default=["W1", "W2"], help="e.g. W1,W2")
    parser.add_argument("--big", action="store_true", help="add W3 (~1.3 GB per contender)")
    parser.add_argument("--optimizers", type=_csv, default=list(OPTIMIZERS))
    parser.add_argument("--contenders", type=_csv, default=list(CONTENDERS))
    parser.add_argument("--reps", type=int, default=30, help="timed steps per contender")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--png", default="benchmarks/bench_step.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if args.threads == 1:  # read when JAX starts: one thread for XLA's CPU kernels too
            os.environ["XLA_FLAGS"] = " ".join(
                [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false"]
            ).strip()
    workloads = ["Q"] if args.quick else args.workloads + (["W3"] if args.big else [])
    reps, warmup = (5, 1) if args.quick else (args.reps, args.warmup)
    for name, known in (
        *((w, WORKLOADS) for w in workloads),
        *((o, BYTES_PER_PARAM) for o in args.optimizers),
        *((c, CONTENDERS) for c in args.contenders),
    ):
        if name not in known:
            parser.error(f"unknown name {name!r}; choose from {sorted(known)}")

    probes = streaming_bandwidth_gbs(1 << (22 if args.quick else 26))
    bandwidth = max(probes.values())
    print(f"Machine: {machine_description()}")
    # The allocator decides whether a pure step's fresh buffers cost page faults (docs: Benchmarks).
    allocator = [
        f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(ALLOCATOR_ENV_PREFIXES)
    ]
    print(f"Allocator settings: {' '.join(allocator) or 'defaults'}")
    print(
        "Streaming bandwidth (fp32, bytes read + written): "
        + ", ".join(f"`{name}` {gbs:.1f} GB/s" for name, gbs in probes.items())
        + f"; the limit below uses {bandwidth:.1f} GB/s"
    )
    missing = missing_optional_libraries()
    if missing:
        print(f"Not installed, skipped: {', '.join(missing)}")
    all_results: dict[tuple[str, str], list[Result]] = {}
    for w in workloads:
        workload = WORKLOADS[w]
        for opt in args.optimizers:
            print(f"{w} / {opt} ...", file=sys.stderr, flush=True)
            results = run_case(workload, opt, args.contenders, reps, warmup, args.seed)
            all_results[(w, opt)] = results
            print()
            print(markdown_table(workload, opt, results, bandwidth), flush=True)
    print(f"\nLoad average at the end: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    save_plot(all_results, args.png)


if __name__ == "__main__":
    main()
