"""Train an MLP on scikit-learn's digits with a functional loop, and compare optimizers.

The model's parameters are a plain dict of tensors; `torch.func.grad_and_value` differentiates a
loss written with `torch.func.functional_call`, and the optimizer is a pure `GradientTransformation`
composed from small transforms::

    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(schedule, weight_decay=1e-4, mask=...))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = tf.apply_updates(params, updates)

The script trains with that optimizer (a line per epoch), prints the test accuracy, trains the same
network with a few other optimizers and saves their loss curves to
``examples/out/quickstart_loss.png``. ``--quick`` trains for two epochs only (the smoke test).

Run it with ``python examples/quickstart.py [--quick] [--epochs N] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: the figure goes straight to a PNG

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.func import functional_call, grad_and_value

import torchopt_fn as tf

SEED = 0
BATCH_SIZE = 64
EPOCHS = 30
QUICK_EPOCHS = 2
TARGET_ACCURACY = 0.95

Params = dict[str, torch.Tensor]


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8x8 digits (1797 images, shipped with scikit-learn), standardised, 75/25 split."""
    x, y = load_digits(return_X_y=True)
    split = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    x_train, x_test, y_train, y_test = (torch.from_numpy(a) for a in split)
    x_train, x_test = x_train.float(), x_test.float()
    # Some border pixels are (almost) always 0: a floor on the scale keeps them from blowing up.
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1.0)
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def make_model() -> tuple[nn.Module, Params]:
    """A 64-256-10 MLP and its parameters as a dict of plain (detached) tensors."""
    torch.manual_seed(SEED)  # every optimizer starts from the same weights
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 10))
    return model, {name: p.detach() for name, p in model.named_parameters()}


def decay_mask(params: Params) -> dict[str, bool]:
    """Decay the weight matrices only, not the biases."""
    return {name: p.ndim > 1 for name, p in params.items()}


def optimizers(total_steps: int) -> dict[str, tf.GradientTransformation]:
    """The optimizers to compare; the first one is the main run."""
    schedule = tf.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=3e-3,
        warmup_steps=total_steps // 10,
        decay_steps=total_steps,
        end_value=3e-5,
    )
    return {
        "adamw + warmup-cosine": tf.chain(
            tf.clip_by_global_norm(1.0),
            tf.adamw(schedule, weight_decay=1e-4, mask=decay_mask),
        ),
        "adam": tf.adam(1e-3),
        "sgd + momentum": tf.sgd(0.05, momentum=0.9),
        "lion": tf.lion(3e-4, weight_decay=1e-3),
    }


def make_step(
    model: nn.Module, tx: tf.GradientTransformation
) -> Callable[[Params, tf.OptState, torch.Tensor, torch.Tensor], tuple]:
    """One training step: gradients by `torch.func`, then a pure optimizer update."""

    def loss_fn(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    grad_fn = grad_and_value(loss_fn)

    def step(params, state, x, y):
        grads, loss = grad_fn(params, x, y)
        updates, state = tx.update(grads, state, params)
        return tf.apply_updates(params, updates), state, loss

    return step


@torch.no_grad()
def accuracy(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> float:
    return (functional_call(model, params, (x,)).argmax(-1) == y).float().mean().item()


def train(
    tx: tf.GradientTransformation,
    data: tuple[torch.Tensor, ...],
    epochs: int,
    verbose: bool,
) -> tuple[list[float], list[float]]:
    """Train from the common initialisation; return mean train loss and test accuracy per epoch."""
    x_train, y_train, x_test, y_test = data
    model, params = make_model()
    state = tx.init(params)
    step = make_step(model, tx)
    shuffle = torch.Generator().manual_seed(SEED)  # the same batches for every optimizer
    losses, accuracies = [], []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(x_train), generator=shuffle)
        batch_losses = []
        for idx in order.split(BATCH_SIZE):
            params, state, loss = step(params, state, x_train[idx], y_train[idx])
            batch_losses.append(loss)
        losses.append(torch.stack(batch_losses).mean().item())
        accuracies.append(accuracy(model, params, x_test, y_test))
        if verbose:
            print(
                f"  epoch {epoch:3d}/{epochs}  train loss {losses[-1]:.4f}"
                f"  test accuracy {accuracies[-1]:.2%}",
                flush=True,
            )
    return losses, accuracies


def plot(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, (losses, accuracies) in curves.items():
        epochs = range(1, len(losses) + 1)
        ax_loss.plot(epochs, losses, marker=".", label=name)
        ax_acc.plot(epochs, [100 * a for a in accuracies], marker=".", label=name)
    ax_loss.set(xlabel="epoch", ylabel="mean train cross-entropy", yscale="log")
    ax_loss.set_title("training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=(75, 100))
    ax_acc.set_title("test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("torchopt_fn quickstart: MLP on scikit-learn digits")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"train {QUICK_EPOCHS} epochs only")
    parser.add_argument("--epochs", type=int, help=f"epochs per optimizer (default {EPOCHS})")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "out", help="folder for the PNG"
    )
    args = parser.parse_args()
    # A model this small gains nothing from intra-op threads, and on a busy machine they spend
    # their time waiting for each other.
    torch.set_num_threads(1)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)

    data = load_data()
    steps_per_epoch = math.ceil(len(data[0]) / BATCH_SIZE)
    curves = {}
    for i, (name, tx) in enumerate(optimizers(epochs * steps_per_epoch).items()):
        start = time.perf_counter()
        print(f"{name}:", flush=True)
        curves[name] = train(tx, data, epochs, verbose=i == 0)
        losses, accuracies = curves[name]
        print(
            f"  final train loss {losses[-1]:.4f}, test accuracy {accuracies[-1]:.2%}"
            f" ({time.perf_counter() - start:.1f} s)"
        )

    main_name = next(iter(curves))
    main_accuracy = curves[main_name][1][-1]
    print(f"test accuracy ({main_name}): {main_accuracy:.2%}")
    path = args.out / "quickstart_loss.png"
    plot(curves, path)
    print(f"loss curves saved to {path}")
    if args.epochs is None and not args.quick and main_accuracy < TARGET_ACCURACY:
        raise SystemExit(f"test accuracy {main_accuracy:.2%} is below {TARGET_ACCURACY:.0%}")


if __name__ == "__main__":
    main()
