"""Train an ensemble of MLPs, and sweep learning rates, in one vmapped program.

Eight MLPs on scikit-learn's digits are trained together: their parameters are stacked along a
leading dimension with `torch.func.stack_module_state`, and one training step written for a
single network is turned into a step for all of them with `torch.func.vmap`::

    def member_step(params, state, x, y):                 # one network, one minibatch
        grads, loss = grad_and_value(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return tf.apply_updates(params, updates), state, loss

    state = vmap(tx.init)(params)                          # a state per member
    params, state, loss = vmap(member_step)(params, state, x, y)

The optimizer, ``chain(clip_by_global_norm(1.0), adamw(...))``, is an ordinary pure function,
so under vmap every member keeps its own moments and step count, and global-norm clipping is
taken over each member's own gradients (not over the whole ensemble). Each member also sees
the training set in its own order. The script prints every member's test accuracy and the
accuracy of the ensemble (the average of the members' predicted probabilities).

The second part sweeps four learning rates the same way: the optimizer is built *inside* the
vmapped function from a batched 0-d learning-rate tensor, so four copies of one network train
side by side with ``adamw(lr)`` for four values of ``lr``.

Run it with ``python examples/ensemble_vmap.py [--quick] [--epochs N] [--members M]``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

import torchopt_fn as tf

SEED = 0
BATCH_SIZE = 64
EPOCHS = 20
QUICK_EPOCHS = 2
MEMBERS = 8
SWEEP_LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2)

Params = dict[str, torch.Tensor]
Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_data() -> Data:
    """The 8x8 digits (1797 images, shipped with scikit-learn), standardised, 75/25 split."""
    x, y = load_digits(return_X_y=True)
    split = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    x_train, x_test, y_train, y_test = (torch.from_numpy(a) for a in split)
    x_train, x_test = x_train.float(), x_test.float()
    # Some border pixels are (almost) always 0: a floor on the scale keeps them from blowing up.
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1.0)
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def make_ensemble(members: int) -> tuple[nn.Module, Params]:
    """``members`` 64-64-10 MLPs, each from its own random init, with stacked parameters.

    Returns a stateless copy of the architecture (on the ``meta`` device: it holds no weights)
    to run with `functional_call`, and the parameters with a leading member dimension.
    """
    models = []
    for i in range(members):
        torch.manual_seed(SEED + i)
        models.append(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    params, _ = stack_module_state(models)  # no buffers in this model
    base = copy.deepcopy(models[0]).to("meta")
    return base, {name: p.detach() for name, p in params.items()}


def make_member_step(base: nn.Module, tx: tf.GradientTransformation) -> Callable[..., tuple]:
    """A training step for ONE network; `vmap` turns it into a step for many."""

    def loss_fn(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, params, (x,)), y)

    def member_step(params, state, x, y):
        grads, loss = grad_and_value(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return tf.apply_updates(params, updates), state, loss

    return member_step


def make_tx(learning_rate: float | torch.Tensor, total_steps: int) -> tf.GradientTransformation:
    """Clip each member's gradient to global norm 1, then AdamW with a cosine-decayed rate."""
    schedule = tf.cosine_decay_schedule(learning_rate, decay_steps=total_steps, alpha=0.01)
    return tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(schedule, weight_decay=1e-4))


def predict(base: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits of every member on ``x``: shape (members, len(x), 10)."""
    with torch.no_grad():
        return vmap(lambda p: functional_call(base, p, (x,)))(params)


def train_ensemble(data: Data, members: int, epochs: int) -> None:
    x_train, y_train, x_test, y_test = data
    steps_per_epoch = -(-len(x_train) // BATCH_SIZE)
    base, params = make_ensemble(members)
    tx = make_tx(3e-3, epochs * steps_per_epoch)
    state = vmap(tx.init)(params)
    step = vmap(make_member_step(base, tx))  # data batched too: every member its own batches
    shuffle = torch.Generator().manual_seed(SEED)
    print(f"ensemble of {members} MLPs, chain(clip_by_global_norm(1.0), adamw(cosine 3e-3)):")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        orders = torch.stack(
            [torch.randperm(len(x_train), generator=shuffle) for _ in range(members)]
        )
        losses = []
        for idx in orders.split(BATCH_SIZE, dim=1):  # idx: (members, batch)
            params, state, loss = step(params, state, x_train[idx], y_train[idx])
            losses.append(loss)
        mean_loss = torch.stack(losses).mean(0)  # per member
        print(
            f"  epoch {epoch:3d}/{epochs}  train loss per member "
            f"{mean_loss.min():.4f}..{mean_loss.max():.4f}",
            flush=True,
        )
    elapsed = time.perf_counter() - start

    logits = predict(base, params, x_test)
    member_acc = (logits.argmax(-1) == y_test).float().mean(-1)
    ensemble_pred = logits.softmax(-1).mean(0).argmax(-1)
    ensemble_acc = (ensemble_pred == y_test).float().mean()
    # The clipping state holds each member's last pre-clip gradient norm: one per member.
    norms = tf.tree_get(state, "norm")
    print(f"  trained in {elapsed:.1f} s")
    print("  last gradient norm per member: " + " ".join(f"{n:.3f}" for n in norms))
    for i, acc in enumerate(member_acc):
        print(f"  member {i}: test accuracy {acc:.2%}")
    print(f"  mean member test accuracy: {member_acc.mean():.2%}")
    print(f"ensemble test accuracy: {ensemble_acc:.2%}")


def sweep_learning_rates(data: Data, epochs: int) -> None:
    x_train, y_train, x_test, y_test = data
    steps_per_epoch = -(-len(x_train) // BATCH_SIZE)
    base, params = make_ensemble(1)  # one initialisation, copied for every learning rate
    lrs = torch.tensor(SWEEP_LEARNING_RATES)
    params = {k: p.expand(len(lrs), *p.shape[1:]).clone() for k, p in params.items()}

    def sweep_init(lr: torch.Tensor, p: Params):
        return make_tx(lr, epochs * steps_per_epoch).init(p)

    def sweep_step(lr: torch.Tensor, p: Params, s, x: torch.Tensor, y: torch.Tensor):
        # The optimizer is rebuilt from the (batched) learning rate inside the vmapped step.
        return make_member_step(base, make_tx(lr, epochs * steps_per_epoch))(p, s, x, y)

    state = vmap(sweep_init)(lrs, params)
    # The learning rate, params and state are batched; every run sees the same minibatches.
    step = vmap(sweep_step, in_dims=(0, 0, 0, None, None))
    shuffle = torch.Generator().manual_seed(SEED)
    print(f"learning-rate sweep over {', '.join(f'{lr:g}' for lr in SWEEP_LEARNING_RATES)}:")
    start = time.perf_counter()
    for _ in range(epochs):
        losses = []
        for idx in torch.randperm(len(x_train), generator=shuffle).split(BATCH_SIZE):
            params, state, loss = step(lrs, params, state, x_train[idx], y_train[idx])
            losses.append(loss)
    final_loss = torch.stack(losses).mean(0)  # the last epoch's mean, per learning rate
    test_acc = (predict(base, params, x_test).argmax(-1) == y_test).float().mean(-1)
    print(f"  trained in {time.perf_counter() - start:.1f} s")
    for lr, loss, acc in zip(SWEEP_LEARNING_RATES, final_loss, test_acc):
        print(f"  lr {lr:<8g} final train loss {loss:.4f}  test accuracy {acc:.2%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"train {QUICK_EPOCHS} epochs only")
    parser.add_argument("--epochs", type=int, help=f"epochs (default {EPOCHS})")
    parser.add_argument("--members", type=int, default=MEMBERS, help="ensemble size")
    args = parser.parse_args()
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    # The networks are tiny, so every op is cheap and the time goes to dispatching them; extra
    # intra-op threads only add synchronisation (measured: 10x slower on a busy 2-core machine).
    torch.set_num_threads(1)

    data = load_data()
    train_ensemble(data, args.members, epochs)
    sweep_learning_rates(data, epochs)


if __name__ == "__main__":
    main()
