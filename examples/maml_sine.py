r"""MAML on few-shot sine regression: meta-learn an initialisation and an inner learning rate.

Each task is a sine wave $y = A \sin(x - \varphi)$ with amplitude $A \in [0.1, 5]$ and phase
$\varphi \in [0, \pi]$; a learner sees K = 10 points of it, takes a few optimizer steps, and is
scored on 10 other points of the same wave (Finn et al., 2017, https://arxiv.org/abs/1703.03400).
MAML learns the network's initialisation so that those few steps fit any such wave. Here it
also learns the inner learning rate, as a log-parametrised 0-d tensor.

The inner loop is an ordinary torchopt_fn optimizer built from that tensor and run for
`INNER_STEPS` steps; `torch.func.grad` differentiates the query loss through all of them
(second order) with respect to both the initialisation and the learning rate, and
`torch.func.vmap` runs a meta-batch of tasks at once. The outer optimizer is torchopt_fn's
`adam` over the tree ``meta = {"net": params, "log_lr": log_lr}``::

    def adapt(meta, x, y, steps):                          # the inner loop, one task
        tx = tf.sgd(meta["log_lr"].exp())                  # built from a differentiable lr
        params, state = meta["net"], tx.init(meta["net"])
        for _ in range(steps):
            updates, state = tx.update(grad(mse)(params, x, y), state, params)
            params = tf.apply_updates(params, updates)
        return params

    def meta_loss(meta, tasks, steps):                     # mean query loss of a task batch
        query_loss = lambda x_s, y_s, x_q, y_q: mse(adapt(meta, x_s, y_s, steps), x_q, y_q)
        return vmap(query_loss)(*tasks).mean()

    grads, loss = grad_and_value(meta_loss)(meta, tasks, INNER_STEPS)
    updates, outer_state = outer.update(grads, outer_state, meta)

With ``--inner adam`` the inner optimizer is ``adam(lr, eps_root=1e-8)``. ReLU networks have
exactly-zero gradient entries (dead units), where the derivative of Adam's $\sqrt{\hat v}$ is
infinite: with ``eps_root=0`` (optax's default) the meta-loss is NaN from the first meta-step
on. (Adam's sign-like first steps also adapt less well than SGD here.)

The script prints the meta-loss as it falls, then the query loss after adaptation on new tasks
for MAML and for two baselines without meta-learning: the same network trained on all tasks
jointly with the same budget (no adaptation in the loop: Finn et al.'s "pretrained" baseline)
and the random initialisation, both adapted with the fixed learning rate MAML started from.

Run it with ``python examples/maml_sine.py [--quick] [--inner sgd|adam] [--meta-steps N]``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, grad_and_value, vmap

import torchopt_fn as tf

SEED = 0
K_SHOT = 10  # support points per task, and as many query points
INNER_STEPS = 3
META_BATCH = 25
META_STEPS = 400
QUICK_META_STEPS = 50
META_LR = 1e-2
INITIAL_INNER_LR = 0.01  # Finn et al.'s fixed alpha; also the baselines' fine-tuning rate
EVAL_TASKS = 500
EVAL_STEPS = (0, 1, INNER_STEPS, 10)

Params = dict[str, torch.Tensor]
Tasks = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sample_tasks(n: int, generator: torch.Generator) -> Tasks:
    """``n`` sine tasks: support and query inputs/targets, each of shape (n, K_SHOT, 1)."""
    amplitude = torch.empty(n, 1, 1).uniform_(0.1, 5.0, generator=generator)
    phase = torch.empty(n, 1, 1).uniform_(0.0, math.pi, generator=generator)
    x = torch.empty(n, 2 * K_SHOT, 1).uniform_(-5.0, 5.0, generator=generator)
    y = amplitude * torch.sin(x - phase)
    return x[:, :K_SHOT], y[:, :K_SHOT], x[:, K_SHOT:], y[:, K_SHOT:]


def make_network() -> tuple[nn.Module, Params]:
    """The 1-40-40-1 ReLU network of Finn et al.; a weightless copy and its parameters."""
    torch.manual_seed(SEED)
    net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1))
    params = {name: p.detach() for name, p in net.named_parameters()}
    return net.to("meta"), params


def make_inner_tx(kind: str) -> Callable[[torch.Tensor], tf.GradientTransformation]:
    if kind == "sgd":
        return lambda lr: tf.sgd(lr)
    # eps_root > 0 keeps the meta-gradient finite where an inner gradient entry is exactly 0.
    return lambda lr: tf.adam(lr, eps_root=1e-8)


def make_meta_loss(
    net: nn.Module, inner_tx: Callable[[torch.Tensor], tf.GradientTransformation]
) -> Callable[..., torch.Tensor]:
    """The mean query loss over a batch of tasks after ``steps`` inner updates per task."""

    def mse(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(net, params, (x,)) - y) ** 2).mean()

    def adapt(meta: dict[str, Any], x: torch.Tensor, y: torch.Tensor, steps: int) -> Params:
        tx = inner_tx(meta["log_lr"].exp())
        params = meta["net"]
        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update(grad(mse)(params, x, y), state, params)
            params = tf.apply_updates(params, updates)
        return params

    def meta_loss(meta: dict[str, Any], tasks: Tasks, steps: int) -> torch.Tensor:
        def query_loss(x_s, y_s, x_q, y_q):
            return mse(adapt(meta, x_s, y_s, steps), x_q, y_q)

        return vmap(query_loss)(*tasks).mean()

    return meta_loss


def meta_train(
    meta_loss: Callable[..., torch.Tensor],
    meta: dict[str, Any],
    inner_steps: int,
    meta_steps: int,
    label: str,
) -> dict[str, Any]:
    """Outer loop: torchopt_fn's Adam on the initialisation and the log learning rate."""
    outer = tf.adam(META_LR)
    state = outer.init(meta)
    step_grad = grad_and_value(meta_loss)
    tasks_gen = torch.Generator().manual_seed(SEED)
    every = max(1, meta_steps // 10)
    running = []
    start = time.perf_counter()
    for it in range(1, meta_steps + 1):
        grads, loss = step_grad(meta, sample_tasks(META_BATCH, tasks_gen), inner_steps)
        updates, state = outer.update(grads, state, meta)
        meta = tf.apply_updates(meta, updates)
        running.append(loss)
        if it % every == 0 or it == meta_steps:
            print(
                f"  [{label}] meta-step {it:5d}/{meta_steps}  meta-loss "
                f"{torch.stack(running).mean():.4f}  inner lr {meta['log_lr'].exp():.4f}",
                flush=True,
            )
            running = []
    print(f"  [{label}] {time.perf_counter() - start:.1f} s")
    return meta


def evaluate(meta_loss: Callable[..., torch.Tensor], meta: dict[str, Any], tasks: Tasks) -> list:
    """Query loss on held-out tasks after each number of steps in `EVAL_STEPS`."""
    return [float(meta_loss(meta, tasks, steps)) for steps in EVAL_STEPS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_META_STEPS} meta-steps")
    parser.add_argument("--inner", choices=("sgd", "adam"), default="sgd", help="inner optimizer")
    parser.add_argument("--meta-steps", type=int, help=f"meta-steps (default {META_STEPS})")
    args = parser.parse_args()
    meta_steps = args.meta_steps or (QUICK_META_STEPS if args.quick else META_STEPS)
    # A small network: the time goes to dispatching ops, and intra-op threads only add
    # synchronisation.
    torch.set_num_threads(1)

    net, params = make_network()
    meta_loss = make_meta_loss(net, make_inner_tx(args.inner))
    initial = {"net": params, "log_lr": torch.tensor(math.log(INITIAL_INNER_LR))}

    print(f"MAML, inner optimizer {args.inner}, {INNER_STEPS} inner steps, K = {K_SHOT}:")
    maml = meta_train(meta_loss, initial, INNER_STEPS, meta_steps, "maml")
    # Same budget, no adaptation inside the loop: plain training on all tasks at once. With
    # zero inner steps the learning rate gets no gradient and stays at its initial value.
    print("baseline: joint training on all tasks (no meta-learning):")
    pretrained = meta_train(meta_loss, initial, 0, meta_steps, "pretrained")

    eval_tasks = sample_tasks(EVAL_TASKS, torch.Generator().manual_seed(SEED + 1))
    rows = [
        (f"MAML (learned inner lr {maml['log_lr'].exp():.4f})", maml),
        (f"pretrained, inner lr {INITIAL_INNER_LR}", pretrained),
        (f"random init, inner lr {INITIAL_INNER_LR}", initial),
    ]
    header = "".join(f"{f'{s} steps':>11}" for s in EVAL_STEPS)
    print(f"query MSE on {EVAL_TASKS} new tasks after adaptation on K = {K_SHOT} points:")
    print(f"  {'':42}{header}")
    losses = []
    for name, meta in rows:
        losses.append(evaluate(meta_loss, meta, eval_tasks))
        print(f"  {name:42}" + "".join(f"{v:11.4f}" for v in losses[-1]))
    at = EVAL_STEPS.index(INNER_STEPS)
    print(
        f"after {INNER_STEPS} steps: MAML {losses[0][at]:.4f} vs no-meta baseline "
        f"{losses[1][at]:.4f}"
    )


if __name__ == "__main__":
    main()
