"""Train one small transformer with AdamW, Muon, SOAP, Schedule-Free AdamW and PSGD Kron.

The text is the Python reference's help topics, which ship with CPython
(``pydoc_data.topics``: no download), read as bytes (a vocabulary of 256); the last tenth is
the validation split. The model is a small decoder-only transformer written in plain torch.
Every optimizer is a `GradientTransformation`, so one functional loop trains them all::

    grads, loss = grad_and_value(loss_fn)(params, x, y)   # torch.func
    updates, state = tx.update(grads, state, params)
    params = tf.apply_updates(params, updates)

Each optimizer gets the same budget (steps, batch, batches in the same order), its own tuned
learning rate (``LEARNING_RATES``; ``--sweep`` checks a third and three times each), and the
optimizers step in lockstep so that a busy machine slows them alike. The script prints a
markdown table (final train and validation loss, time per step) and saves the validation loss
against the step and against training seconds to ``<out>/research_optimizers.png``;
docs/research.md shows and discusses them.

Run it with ``python examples/research_optimizers.py [--quick] [--sweep] [--only NAMES]
[--steps N] [--threads N] [--out DIR]``; ``--quick`` trains a tiny model for a few steps (the
smoke test).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from pydoc_data.topics import topics  # shipped with CPython: no download

import matplotlib

matplotlib.use("Agg")  # no display needed: the figure goes straight to a PNG

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value

import torchopt_fn as tf

SEED = 0
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Config:
    layers: int
    d_model: int
    heads: int
    context: int
    batch: int
    steps: int
    eval_every: int
    eval_windows: int  # windows of ``context`` bytes per evaluation set


FULL = Config(
    layers=2, d_model=64, heads=4, context=64, batch=32, steps=800, eval_every=50, eval_windows=256
)
QUICK = Config(
    layers=1, d_model=32, heads=2, context=32, batch=8, steps=12, eval_every=4, eval_windows=16
)

# Peak learning rates: the best of a factor-3 grid (1e-3, 3e-3, 9e-3, ...; Muon's pair moved
# together) at the full budget, by final validation loss; docs/research.md has the grid.
# ``--sweep`` reruns each at a third and three times its rate. Muon's second number is the rate
# of its AdamW leaves (embeddings, head, norms).
LEARNING_RATES = {
    "adamw": 9e-3,
    "muon": (0.06, 9e-3),
    "soap": 2.7e-2,
    "schedule_free_adamw": 2.7e-2,
    "psgd_kron": 9e-3,
}


# --------------------------------------------------------------------------- data


def load_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """The help topics as one byte stream: the first 90% to train on, the rest to validate."""
    text = "\n\n".join(topics[k] for k in sorted(topics))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    split = int(0.9 * len(data))
    return data[:split], data[split:]


def windows(data: torch.Tensor, starts: torch.Tensor, context: int) -> tuple:
    """Inputs and next-byte targets for the windows starting at ``starts``."""
    idx = starts[:, None] + torch.arange(context + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


def eval_set(data: torch.Tensor, cfg: Config) -> tuple:
    """``eval_windows`` windows spread evenly over ``data``: the same ones at every evaluation."""
    starts = torch.linspace(0, len(data) - cfg.context - 1, cfg.eval_windows).long()
    return windows(data, starts, cfg.context)


# --------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-norm attention and MLP, with separate q, k, v matrices (Muon orthogonalises each)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.proj = nn.Linear(d, d, bias=False)
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def qkv(self) -> tuple[nn.Module, ...]:
        return self.q, self.k, self.v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).unflatten(-1, (self.heads, -1)).transpose(1, 2) for m in self.qkv())
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ByteTransformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.embed = nn.Embedding(256, cfg.d_model)
        self.pos = nn.Parameter(torch.randn(cfg.context, cfg.d_model) * 0.02)
        self.blocks = nn.Sequential(*(Block(cfg.d_model, cfg.heads) for _ in range(cfg.layers)))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 256, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def make_model(cfg: Config) -> tuple[nn.Module, Params]:
    torch.manual_seed(SEED)  # every optimizer starts from the same weights
    model = ByteTransformer(cfg)
    return model, {name: p.detach() for name, p in model.named_parameters()}


def hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """The matrices inside the blocks: Muon's leaves. Embeddings and the head stay on AdamW."""
    return name.startswith("blocks.") and p.ndim == 2


# --------------------------------------------------------------------------- optimizers

# A torch Linear weight is (out, in): its input (reduction) axis is 1. Muon's default is
# optax's (in, out) layout, which would scale the MLP's two matrices by each other's ratio.
TORCH_LINEAR = tf.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=0)


def muon_dims(params: Params) -> dict:
    """Muon's dimension numbers: `None` sends a leaf to AdamW.

    A tree, not a function of the params: `muon` also calls such a function on its own part of
    the tree, where AdamW's leaves are `MaskedNode` placeholders, not tensors.
    """
    return {n: TORCH_LINEAR if hidden_matrix(n, p) else None for n, p in params.items()}


def optimizers(
    params: Params, steps: int, scale: float = 1.0
) -> dict[str, tf.GradientTransformation]:
    """The five optimizers, their peak learning rates multiplied by ``scale`` (for the sweep).

    The scheduled ones share one shape: linear warmup over 10% of the steps, then cosine decay
    to 10% of the peak. Schedule-Free gets the same warmup and no decay. No weight decay: in a
    run this short it only adds a knob to tune (and `soap` and `schedule_free_adamw` would
    decay the norms and biases, having no mask).
    """
    warmup = max(1, steps // 10)

    def schedule(peak: float) -> tf.Schedule:
        peak *= scale
        return tf.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=peak / 10)

    lr = LEARNING_RATES
    return {
        "adamw": tf.adamw(schedule(lr["adamw"]), weight_decay=0.0),
        "muon": tf.contrib.muon(
            schedule(lr["muon"][0]),
            adam_learning_rate=schedule(lr["muon"][1]),
            muon_weight_dimension_numbers=muon_dims(params),
        ),
        "soap": tf.contrib.soap(schedule(lr["soap"]), weight_decay=0.0),
        "schedule_free_adamw": tf.contrib.schedule_free_adamw(
            lr["schedule_free_adamw"] * scale, warmup_steps=warmup
        ),
        "psgd_kron": tf.contrib.psgd_kron(schedule(lr["psgd_kron"]), seed=SEED),
    }


# --------------------------------------------------------------------------- training


@dataclass
class Run:
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # training time when evaluated
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    step_ms: float = math.nan  # gradient + update, mean over the run
    update_ms: float = math.nan  # `tx.update` + `apply_updates` alone


def make_loss(model: nn.Module) -> Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss_fn(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, params, (x,))
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    return loss_fn


class Trainer:
    """One optimizer's run: its params and state, and the time its steps took."""

    def __init__(self, tx: tf.GradientTransformation, cfg: Config):
        model, self.params = make_model(cfg)
        self.loss_fn = make_loss(model)
        self.grad_fn = grad_and_value(self.loss_fn)
        self.tx, self.state = tx, tx.init(self.params)
        self.run = Run()
        self.elapsed = self.update_time = 0.0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        t0 = time.perf_counter()
        grads, _ = self.grad_fn(self.params, x, y)
        t1 = time.perf_counter()
        updates, self.state = self.tx.update(grads, self.state, self.params)
        self.params = tf.apply_updates(self.params, updates)
        t2 = time.perf_counter()
        self.update_time += t2 - t1
        self.elapsed += t2 - t0

    @torch.no_grad()
    def evaluate(self, step: int, train_eval: tuple, val_eval: tuple) -> None:
        params = self.params
        if isinstance(self.state, tf.contrib.ScheduleFreeState):
            # Schedule-Free trains at an interpolated point; its average is what to evaluate.
            params = tf.contrib.schedule_free_eval_params(self.state, params)
        self.run.steps.append(step)
        self.run.seconds.append(self.elapsed)
        self.run.train_loss.append(self.loss_fn(params, *train_eval).item())
        self.run.val_loss.append(self.loss_fn(params, *val_eval).item())


def train(
    txs: dict[str, tf.GradientTransformation], data: tuple, cfg: Config, verbose: bool
) -> dict[str, Run]:
    """Train every optimizer on the same batches, in lockstep.

    Step $t$ of each optimizer, in a fresh random order, runs before step $t + 1$ of any: on a
    shared machine, whatever else runs slows them all alike, and the wall-clock comparison
    stays fair.
    """
    train_data, val_data = data
    train_eval, val_eval = eval_set(train_data, cfg), eval_set(val_data, cfg)
    trainers = {name: Trainer(tx, cfg) for name, tx in txs.items()}
    batches = torch.Generator().manual_seed(SEED)
    order = torch.Generator().manual_seed(SEED + 1)
    in_order = list(trainers.values())

    def evaluate(step: int) -> None:
        for t in trainers.values():
            t.evaluate(step, train_eval, val_eval)
        if verbose:
            losses = "  ".join(f"{n} {t.run.val_loss[-1]:.3f}" for n, t in trainers.items())
            print(f"step {step:5d}  val: {losses}", flush=True)

    evaluate(0)
    for step in range(1, cfg.steps + 1):
        starts = torch.randint(len(train_data) - cfg.context - 1, (cfg.batch,), generator=batches)
        x, y = windows(train_data, starts, cfg.context)
        for i in torch.randperm(len(trainers), generator=order).tolist():
            in_order[i].step(x, y)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evaluate(step)
    for name, t in trainers.items():
        t.run.step_ms, t.run.update_ms = (1e3 * s / cfg.steps for s in (t.elapsed, t.update_time))
        if not math.isfinite(t.run.val_loss[-1]):
            print(f"{name}: the loss diverged")
    return {name: t.run for name, t in trainers.items()}


# --------------------------------------------------------------------------- reporting


def table(runs: dict[str, Run]) -> str:
    rows = [
        "| optimizer | final train loss | final val loss | ms / step | of which update | total s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in runs.items():
        rows.append(
            f"| {name} | {r.train_loss[-1]:.4f} | {r.val_loss[-1]:.4f} | {r.step_ms:.1f}"
            f" | {r.update_ms:.1f} | {r.seconds[-1]:.1f} |"
        )
    return "\n".join(rows)


def plot(runs: dict[str, Run], cfg: Config, path: Path) -> None:
    fig, (ax_step, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, r in runs.items():
        ax_step.plot(r.steps, r.val_loss, marker=".", label=name)
        ax_time.plot(r.seconds, r.val_loss, marker=".", label=name)
    ax_step.set(xlabel="step", ylabel="validation loss (nats per byte)")
    ax_time.set(xlabel="training seconds (one CPU thread, evaluation excluded)")
    # The first evaluation (about ln 256 = 5.5) would squash the part worth comparing.
    low = min(min(r.val_loss) for r in runs.values())
    high = max(r.val_loss[min(2, len(r.val_loss) - 1)] for r in runs.values())
    for ax in (ax_step, ax_time):
        ax.set_ylim(low - 0.05 * (high - low), high)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"byte-level transformer on pydoc topics: {cfg.layers} layers, d_model {cfg.d_model},"
        f" context {cfg.context}, batch {cfg.batch}, {cfg.steps} steps"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(data: tuple, cfg: Config, only: list[str]) -> None:
    """Each optimizer at its learning rate divided and multiplied by 3 (Muon: both its rates)."""
    scales = (1 / 3, 1.0, 3.0)
    print(f"learning-rate sweep, {cfg.steps} steps: final validation loss")
    print("| optimizer | " + " | ".join(f"lr x {s:.3g}" for s in scales) + " |")
    print("|---|" + "---:|" * len(scales))
    params = make_model(cfg)[1]
    for name in only:
        txs = {s: optimizers(params, cfg.steps, s)[name] for s in scales}
        runs = train(txs, data, cfg, verbose=False)
        print(f"| {name} | " + " | ".join(f"{r.val_loss[-1]:.4f}" for r in runs.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model for a few steps")
    parser.add_argument("--sweep", action="store_true", help="sweep the learning rates instead")
    parser.add_argument("--steps", type=int, help="training steps per optimizer")
    parser.add_argument("--only", help="a comma-separated subset of: " + ", ".join(LEARNING_RATES))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out", help="folder for the PNG"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    if args.steps:
        cfg = replace(cfg, steps=args.steps)

    only = args.only.split(",") if args.only else list(LEARNING_RATES)
    if unknown := set(only) - set(LEARNING_RATES):
        parser.error(f"--only: unknown optimizers {sorted(unknown)}")

    data = load_bytes()
    print(f"{len(data[0])} training bytes, {len(data[1])} validation bytes")
    if args.sweep:
        sweep(data, cfg, only)
        return
    txs = optimizers(make_model(cfg)[1], cfg.steps)
    runs = train({name: txs[name] for name in only}, data, cfg, verbose=True)
    print(table(runs))
    path = args.out / "research_optimizers.png"
    plot(runs, cfg, path)
    print(f"loss curves saved to {path}")


if __name__ == "__main__":
    main()
