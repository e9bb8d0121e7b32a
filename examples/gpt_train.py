"""Train a small GPT with the everyday recipe, as one compiled step (`tf.TrainStep`).

The model is a nanoGPT-style decoder (4 layers, width 128, 4 heads, 128 bytes of context,
tied embedding and head: 842,496 parameters) on the Python reference's help topics, which ship
with CPython (``pydoc_data.topics``, read as bytes: no download). The recipe is the usual one:
gradients clipped to global norm 1 as ``torch.nn.utils.clip_grad_norm_`` does, AdamW (betas
0.9 and 0.95) with weight decay 0.1 on the matrices only, and a warmup-cosine learning rate.
`tf.TrainStep` runs forward, gradient, clip, schedule and update as one graph and writes the
new weights into the module.

    python examples/gpt_train.py                 # train; loss curve and checkpoint in --out
    python examples/gpt_train.py --resume        # carry on from the checkpoint
    python examples/gpt_train.py --compare       # the table of docs/gpt.md

``--compare`` trains the same model from the same weights on the same batches six ways and
prints a markdown table: the first step with its compile (each contender in a process of its
own, with an empty Inductor cache, then with the cache it left) and the peak memory there;
the time per step and the final losses with all six in lockstep in one process. The six:
eager PyTorch (``clip_grad_norm_`` + fused AdamW + ``LambdaLR``), ``torch.compile(model)``
with the same, ``tf.Optimizer`` with the recipe, and `tf.TrainStep` on the parameters as
they are, on one flat buffer, and on one flat buffer without Inductor
(``backend="aot_eager"``). ``--quick``
shrinks everything (the smoke test); ``--stop-after N`` stops after step N, as an
interrupted run would (``--resume`` carries on); ``--threads`` sets torch's threads (default
1, as the table was measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics  # shipped with CPython: no download

import matplotlib

matplotlib.use("Agg")  # no display needed: the figure goes straight to a PNG

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import torchopt_fn as tf

SEED = 0


@dataclass(frozen=True)
class Config:
    layers: int = 4
    d_model: int = 128
    heads: int = 4
    context: int = 128
    batch: int = 16
    steps: int = 600
    warmup: int = 60
    peak_lr: float = 3e-3
    eval_windows: int = 128
    checkpoint_every: int = 200


QUICK = Config(layers=1, d_model=32, heads=2, context=32, batch=4, steps=12, warmup=3)
QUICK_EVAL = 16
MEMORY_STEPS = 10  # steps a --compare contender takes in its own process (peak memory)


# --------------------------------------------------------------------------- data


def load_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """The help topics as one byte stream: the first 90% to train on, the rest to validate."""
    text = "\n\n".join(topics[k] for k in sorted(topics))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


def batch_at(data: torch.Tensor, step: int, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s batch, a function of the step alone: a resumed run sees the same ones."""
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + step)
    starts = torch.randint(0, len(data) - cfg.context - 1, (cfg.batch,), generator=gen)
    chunk = data[starts[:, None] + torch.arange(cfg.context + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def eval_batch(data: torch.Tensor, cfg: Config, windows: int) -> tuple:
    starts = torch.linspace(0, len(data) - cfg.context - 1, windows).long()
    chunk = data[starts[:, None] + torch.arange(cfg.context + 1)]
    return chunk[:, :-1], chunk[:, 1:]


# --------------------------------------------------------------------------- model


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.Sequential(*(Block(cfg.d_model, cfg.heads) for _ in range(cfg.layers)))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)
        self.head.weight = self.embed.weight  # tied
        for name, p in self.named_parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def make_model(cfg: Config) -> GPT:
    torch.manual_seed(SEED)  # every contender starts from the same weights
    return GPT(cfg)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


# --------------------------------------------------------------------------- the recipe


def schedule(cfg: Config) -> tf.Schedule:
    return tf.warmup_cosine_decay_schedule(
        0.0, cfg.peak_lr, cfg.warmup, cfg.steps, 0.1 * cfg.peak_lr
    )


def recipe(cfg: Config, *, decay_mask: bool = True) -> tf.GradientTransformation:
    """Clip as ``clip_grad_norm_(params, 1.0)``, then AdamW with a warmup-cosine schedule and
    weight decay on the matrices (``decay_mask=False``: on everything)."""
    mask = (lambda params: tf.tree_map(lambda p: p.ndim >= 2, params)) if decay_mask else None
    return tf.chain(
        tf.clip_by_torch_global_norm(1.0),
        tf.adamw(schedule(cfg), b1=0.9, b2=0.95, weight_decay=0.1, mask=mask),
    )


def torch_optimizer(model: nn.Module, cfg: Config, *, fused: bool = True) -> tuple:
    """The same recipe in torch: two param groups, fused AdamW and ``LambdaLR``."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=(0.9, 0.95), fused=fused)
    lr_at = schedule(cfg)
    factor = lambda step: float(lr_at(torch.tensor(step))) / cfg.peak_lr  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --------------------------------------------------------------------------- one training run


@torch.no_grad()
def evaluate(model: nn.Module, batch: tuple) -> float:
    return float(loss_fn(model, *batch))


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak so far, in MB (Linux)."""
    status = Path("/proc/self/status").read_text()
    now = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return now / 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_loop(
    model: nn.Module, cfg: Config, *, compile_model: bool
) -> Callable[..., torch.Tensor]:
    opt, sched = torch_optimizer(model, cfg)
    forward = torch.compile(model) if compile_model else model

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(forward(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        return loss.detach()

    return step


def adapter_loop(model: nn.Module, cfg: Config) -> Callable[..., torch.Tensor]:
    # One param group, so that the clip is global as clip_grad_norm_'s is (with several
    # groups each would be clipped by its own norm); the mask splits the decay instead.
    opt = tf.Optimizer(model.parameters(), recipe(cfg))

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step


CONTENDERS: dict[str, Callable[[nn.Module, Config], Callable[..., torch.Tensor]]] = {
    "eager PyTorch (clip_grad_norm_ + fused AdamW)": lambda m, cfg: torch_loop(
        m, cfg, compile_model=False
    ),
    "torch.compile(model) + the same": lambda m, cfg: torch_loop(m, cfg, compile_model=True),
    "tf.Optimizer(recipe)": adapter_loop,
    "tf.TrainStep(model, recipe, loss_fn)": lambda m, cfg: tf.TrainStep(m, recipe(cfg), loss_fn),
    "the same, flat=True": lambda m, cfg: tf.TrainStep(m, recipe(cfg), loss_fn, flat=True),
    "the same, flat=True, backend='aot_eager'": lambda m, cfg: tf.TrainStep(
        m, recipe(cfg), loss_fn, flat=True, backend="aot_eager"
    ),
}


def first_steps(name: str, cfg: Config, data: tuple, steps: int) -> dict:
    """One contender's first step (with its compile) and its memory over ``steps`` steps, in
    a process of its own."""
    model = make_model(cfg)
    step = CONTENDERS[name](model, cfg)
    rss_before, _ = rss_mb()
    start = time.perf_counter()
    step(*batch_at(data[0], 0, cfg))
    first = time.perf_counter() - start
    for i in range(1, steps):
        step(*batch_at(data[0], i, cfg))
    return {"first": first, "growth": rss_mb()[1] - rss_before}


def lockstep(cfg: Config, data: tuple, windows: int) -> dict[str, dict]:
    """Every contender trained for ``cfg.steps`` in one process, a step of each in turn, so
    that the machine's state (load, the allocator's heap) is the same for all: the median
    step time and the final losses of each."""
    train, val = data
    models = {name: make_model(cfg) for name in CONTENDERS}
    steps, times, losses = {}, {}, {}
    for name, build in CONTENDERS.items():
        steps[name] = build(models[name], cfg)
        steps[name](*batch_at(train, 0, cfg))  # compiles
        times[name], losses[name] = [], []
    for i in tqdm(range(1, cfg.steps), desc="lockstep", file=sys.stdout, mininterval=10):
        x, y = batch_at(train, i, cfg)
        for name, step in steps.items():
            start = time.perf_counter()
            losses[name].append(float(step(x, y)))
            times[name].append(time.perf_counter() - start)
    val_batch = eval_batch(val, cfg, windows)
    out = {}
    for name in CONTENDERS:
        t = sorted(times[name])
        out[name] = {
            "ms": 1e3 * t[len(t) // 2],
            "train": sum(losses[name][-20:]) / len(losses[name][-20:]),
            "val": evaluate(models[name], val_batch),
        }
    return out


def compare(args: argparse.Namespace, cfg: Config, data: tuple, windows: int) -> str:
    """First steps and memory: each contender in its own process with an empty Inductor
    cache (a cold compile), then again with the cache it left. Step times and losses: all in
    lockstep in this process."""
    firsts = {}
    for name in tqdm(CONTENDERS, desc="first steps", file=sys.stdout):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            cmd = [sys.executable, __file__, "--contender", name, "--threads", str(args.threads)]
            cmd += ["--quick"] * args.quick
            runs = [
                subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                for _ in range(2)
            ]
        cold, warm = (json.loads(r.stdout.strip().splitlines()[-1]) for r in runs)
        firsts[name] = (cold["first"], warm["first"], cold["growth"])
    timed = lockstep(cfg, data, windows)
    base = timed[next(iter(CONTENDERS))]["ms"]
    lines = [
        "| contender | ms / step | x eager | first step s (cold / cached) "
        "| peak RSS growth MB | train loss (last 20) | val loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in timed.items():
        cold, warm, growth = firsts[name]
        lines.append(
            f"| {name} | {r['ms']:.1f} | {r['ms'] / base:.2f} | {cold:.1f} / {warm:.1f} "
            f"| {growth:.0f} | {r['train']:.4f} | {r['val']:.4f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the main job


def train_run(
    cfg: Config, data: tuple, out: Path, windows: int, *, resume: bool, stop_after: int | None
) -> None:
    train, val = data
    val_batch = eval_batch(val, cfg, windows)
    model = make_model(cfg)
    print(f"GPT: {sum(p.numel() for p in model.parameters()):,} parameters")
    step = tf.TrainStep(model, recipe(cfg), loss_fn)
    ckpt_path, start, history = out / "gpt_checkpoint.pt", 0, []
    if resume:
        ckpt = torch.load(ckpt_path, weights_only=True)
        model.load_state_dict(ckpt["model"])
        step.load_state_dict(ckpt["step"])
        start = int(ckpt["next_step"])
        history = [(int(i), loss) for i, loss in ckpt["history"].tolist()]
        print(f"resumed from {ckpt_path} at step {start}")
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    bar = tqdm(range(start, end), desc="train", file=sys.stdout, mininterval=2)
    for i in bar:
        loss = float(step(*batch_at(train, i, cfg)))
        history.append((i, loss))
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)  # shown at the bar's next refresh
        if (i + 1) % cfg.checkpoint_every == 0 or i + 1 == end:
            torch.save(
                {
                    "model": model.state_dict(),
                    "step": step.state_dict(),
                    "next_step": torch.tensor(i + 1),
                    "history": torch.tensor(history, dtype=torch.float64),
                },
                ckpt_path,
            )
    last = [loss for _, loss in history[-20:]]
    print(f"final train loss (mean of the last {len(last)} steps): {sum(last) / len(last):.4f}")
    print(f"validation loss: {evaluate(model, val_batch):.6f}")
    plot(history, out / "gpt_loss.png")
    print(f"loss curve: {out / 'gpt_loss.png'}; checkpoint: {ckpt_path}")


def plot(history: list[tuple[int, float]], path: Path) -> None:
    steps, losses = zip(*history)
    smooth = [
        sum(losses[max(0, i - 19) : i + 1]) / len(losses[max(0, i - 19) : i + 1])
        for i in range(len(losses))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.3, label="train loss")
    ax.plot(steps, smooth, label="mean of the last 20")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / byte)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model for a few steps")
    parser.add_argument("--compare", action="store_true", help="time six ways to train it")
    parser.add_argument("--resume", action="store_true", help="carry on from the checkpoint")
    parser.add_argument("--steps", type=int, help="training steps")
    parser.add_argument("--stop-after", type=int, help="stop after this step (then --resume)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("examples/out"))
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg, windows = (QUICK, QUICK_EVAL) if args.quick else (Config(), Config().eval_windows)
    if args.steps:
        warmup = min(cfg.warmup, args.steps // 10)
        cfg = Config(**{**cfg.__dict__, "steps": args.steps, "warmup": warmup})
    if args.contender:  # a first step of --compare, in a process of its own
        print(json.dumps(first_steps(args.contender, cfg, load_bytes(), MEMORY_STEPS)))
    elif args.compare:
        print(compare(args, cfg, load_bytes(), windows))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        data = load_bytes()
        train_run(cfg, data, args.out, windows, resume=args.resume, stop_after=args.stop_after)


if __name__ == "__main__":
    main()
