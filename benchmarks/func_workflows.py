"""torch.func workflows: torchopt_fn against TorchOpt and plain torch, time and peak memory.

Five workflows, each run by every contender that can run it:

- **ensemble**: 16 MLPs (64-64-64-10, ReLU) trained with AdamW on a fixed batch of 512 of
  scikit-learn's bundled digits; ms per training step (gradient + update + apply), and the
  part of it spent in the update where the update is a separate call.
- **sweep**: one such MLP trained with AdamW under 8 learning rates at once; the same columns.
- **maml**: the meta-gradient of benchmarks/maml_memory.py's problem (sine regression, a
  1-256-256-1 ReLU net, 25 tasks, 5 inner Adam steps with ``eps_root=1e-8``); ms per
  meta-gradient and peak memory growth.
- **imaml**: the implicit MAML meta-gradient (Rajeswaran et al., 2019) of that sine problem
  with 10 tasks: 10 gradient-descent steps on each task's support loss plus
  ``IMAML_REG / 2 * ||phi - theta||^2``, then 5 conjugate-gradient iterations on
  ``(I + H / IMAML_REG) g = grad(query loss)``, H the support loss's Hessian at phi, through
  ``custom_root`` or written out; ms per meta-gradient and peak memory growth.
- **implicit**: the gradient of a validation loss with respect to the ridge strength of a ridge
  regression (2000 x 200, float64), through ``custom_root`` and conjugate gradient; ms per
  hypergradient.

Every contender runs in its own process (TorchOpt's under ``--torchopt-python``), on one
thread: it builds its problem, runs a few warm-up units (steps or gradients), then times
``--reps`` units one by one and reports the median. Memory is the growth of the process's peak
resident set over its state before the first unit (torch, the data, the parameters and the
optimizer state), as maml_memory.py measures it. Agreement: each contender's result (the
parameters' displacement from their start; the meta-gradient; the hypergradient) against a
reference row (plain torch; the closed form for the hypergradient), as max |a - b| / max |b|,
once from the timed float32 run and once from the same contender rebuilt and rerun in float64.
The float64 column is the check (flagged above 1e-9): in float32, Adam amplifies rounding noise
in gradients near 0, so two orderings of the same arithmetic differ from the 4th digit on. A
contender that raises is listed as "fails" with the error's class.

    python benchmarks/func_workflows.py --torchopt-python /tmp/toenv/bin/python
    python benchmarks/func_workflows.py --workflows maml --reps 3

Without ``import torchopt`` in that interpreter, TorchOpt's rows say "not installed". Takes
about 2.5 minutes on a 2-core CPU, a third of it the 28 processes starting torch.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from maml_memory import INNER_STEPS, meta_gradient_in_chunks, problem  # noqa: E402

import torchopt_fn as tf  # noqa: E402

Tensors = dict[str, torch.Tensor]
LR, WEIGHT_DECAY = 1e-3, 1e-2
MEMBERS, SWEEP, BATCH = 16, 8, 512
MAML_WIDTH, MAML_TASKS, MAML_CHUNK, MAML_LR = 256, 25, 5, 0.01
# iMAML's reg 40 keeps every task's H + reg I positive definite (H's least eigenvalue is -24
# here); 5 CG iterations, as the paper's Omniglot runs, stop short of float64 round-off.
IMAML_TASKS, IMAML_STEPS, IMAML_LR, IMAML_REG, IMAML_CG = 10, 10, 0.004, 40.0, 5
RIDGE_N, RIDGE_D, RIDGE_LAMBDA = 2000, 200, 1.0
AGREE = 1e-9  # max relative difference in float64


@dataclass
class Case:
    """One contender, built: ``unit()`` runs one step or computes one gradient and returns
    the seconds it spent in the optimizer update where that can be told apart (else None);
    ``result()`` returns the flat tensor that the agreement check compares."""

    unit: Callable[[], float | None]
    result: Callable[[], torch.Tensor]


def seconds(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# ---------------------------------------------------------------- the digits MLP


def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:BATCH] / 16.0, dtype=torch.get_default_dtype()), torch.tensor(y[:BATCH])


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )


NAMES = [name for name, _ in mlp().named_parameters()]
TEMPLATE = mlp().to("meta")  # functional_call's module: holds no data


def member_params(members: int) -> list[Tensors]:
    torch.manual_seed(0)
    return [{k: v.detach() for k, v in mlp().named_parameters()} for _ in range(members)]


def sweep_lrs() -> torch.Tensor:
    return torch.logspace(-4, -1, SWEEP)  # in the default dtype: float64 for the check


def sweep_start() -> list[Tensors]:
    """The sweep's members: one network's initial parameters, once per learning rate."""
    return member_params(1) * SWEEP


def loss(p: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(functional_call(TEMPLATE, p, (x,)), y)


def flat_stacked(p: Tensors) -> torch.Tensor:
    """Member-major flat vector of a stacked tree, leaves in `NAMES` order (optree sorts keys)."""
    return torch.cat([p[k].reshape(p[k].shape[0], -1) for k in NAMES], dim=1).flatten()


def displacement(now: Callable[[], Tensors], start: Tensors) -> Callable[[], torch.Tensor]:
    """What training changed: comparing displacements, not parameters, keeps the small
    updates from drowning in the initial weights."""
    first = flat_stacked(start).clone()
    return lambda: flat_stacked(now()) - first


batched_grad = vmap(grad(loss), in_dims=(0, None, None))


# ---------------------------------------------------------------- ensemble and sweep contenders


def tf_stacked(tx: tf.GradientTransformation, start: list[Tensors], in_vmap: bool = False) -> Case:
    """``tx`` on the members' params stacked: the update on the stacked tree, or (``in_vmap``)
    one member's update under `vmap`."""
    init, update_fn = (vmap(tx.init), vmap(tx.update)) if in_vmap else (tx.init, tx.update)
    x, y = digits_batch()
    box = {"p": tf.tree_stack(start)}
    box["s"] = init(box["p"])

    def update(grads: Tensors) -> None:
        updates, box["s"] = update_fn(grads, box["s"], box["p"])
        box["p"] = tf.apply_updates(box["p"], updates)

    def unit() -> float:
        return seconds(update, batched_grad(box["p"], x, y))

    return Case(unit, displacement(lambda: box["p"], box["p"]))


def tf_vmap_step(members: int) -> Case:
    tx = _ensemble_adamw()
    x, y = digits_batch()
    box = {"p": tf.tree_stack(member_params(members))}
    box["s"] = vmap(tx.init)(box["p"])

    def step(p: Tensors, s: Any) -> tuple[Tensors, Any]:
        updates, s = tx.update(grad(loss)(p, x, y), s, p)
        return tf.apply_updates(p, updates), s

    vstep = vmap(step)

    def unit() -> None:
        box["p"], box["s"] = vstep(box["p"], box["s"])

    return Case(unit, displacement(lambda: box["p"], box["p"]))


def tf_sweep_inside_vmap() -> Case:
    x, y, lrs = *digits_batch(), sweep_lrs()
    box = {"p": tf.tree_stack(sweep_start())}
    box["s"] = vmap(lambda lr, p: tf.adamw(lr, weight_decay=WEIGHT_DECAY).init(p))(lrs, box["p"])

    def step(lr: torch.Tensor, p: Tensors, s: Any) -> tuple[Tensors, Any]:
        tx = tf.adamw(lr, weight_decay=WEIGHT_DECAY)  # built from the batched lr
        updates, s = tx.update(grad(loss)(p, x, y), s, p)
        return tf.apply_updates(p, updates), s

    vstep = vmap(step)

    def unit() -> None:
        box["p"], box["s"] = vstep(lrs, box["p"], box["s"])

    return Case(unit, displacement(lambda: box["p"], box["p"]))


def torchopt_vmap_step(start: list[Tensors], lrs: torch.Tensor | None) -> Case:
    """TorchOpt's functorch example: the whole step, ``inplace=False``, under ``vmap``. Given
    ``lrs`` (a sweep), the optimizer is built inside ``vmap`` from each member's lr."""
    import torchopt

    x, y = digits_batch()
    box = {"p": tf.tree_stack(start)}
    in_dims = (None if lrs is None else 0, 0, 0)

    def make(lr: torch.Tensor | None) -> Any:
        return torchopt.adamw(LR if lr is None else lr, weight_decay=WEIGHT_DECAY)

    def step(lr: torch.Tensor | None, p: Tensors, s: Any) -> tuple[Tensors, Any]:
        updates, s = make(lr).update(grad(loss)(p, x, y), s, params=p, inplace=False)
        return torchopt.apply_updates(p, updates, inplace=False), s

    box["s"] = vmap(lambda lr, p: make(lr).init(p), in_dims=in_dims[:2])(lrs, box["p"])
    vstep = vmap(step, in_dims=in_dims)

    def unit() -> None:
        box["p"], box["s"] = vstep(lrs, box["p"], box["s"])

    return Case(unit, displacement(lambda: box["p"], box["p"]))


def torchopt_stacked() -> Case:
    """TorchOpt's update on the stacked tree, with its defaults (``inplace=True``)."""
    import torchopt

    tx = torchopt.adamw(LR, weight_decay=WEIGHT_DECAY)
    x, y = digits_batch()
    params = tf.tree_stack(member_params(MEMBERS))
    start = {k: v.clone() for k, v in params.items()}
    box = {"s": tx.init(params)}

    def update(grads: Tensors) -> None:
        updates, box["s"] = tx.update(grads, box["s"], params=params)
        torchopt.apply_updates(params, updates)  # in place

    def unit() -> float:
        return seconds(update, batched_grad(params, x, y))

    return Case(unit, displacement(lambda: params, start))


def torchopt_loop(lrs: torch.Tensor) -> Case:
    """``vmap(grad)``, then one TorchOpt optimizer per member in a Python loop, each updating
    its member's slice of the stacked parameters in place (TorchOpt's defaults)."""
    import torchopt

    x, y = digits_batch()
    params = tf.tree_stack(sweep_start())
    start = {k: v.clone() for k, v in params.items()}
    members = [{k: v[i] for k, v in params.items()} for i in range(len(lrs))]  # views
    txs = [torchopt.adamw(float(lr), weight_decay=WEIGHT_DECAY) for lr in lrs]
    states = [tx.init(p) for tx, p in zip(txs, members)]

    def update(grads: Tensors) -> None:
        for i, (tx, p) in enumerate(zip(txs, members)):
            member_grads = {k: g[i] for k, g in grads.items()}
            updates, states[i] = tx.update(member_grads, states[i], params=p)
            torchopt.apply_updates(p, updates)

    def unit() -> float:
        return seconds(update, batched_grad(params, x, y))

    return Case(unit, displacement(lambda: params, start))


def torch_loop(lrs: torch.Tensor, members: list[Tensors]) -> Case:
    """One module and one ``torch.optim.AdamW(foreach=True)`` per member, autograd per member."""
    x, y = digits_batch()
    nets = [mlp() for _ in members]
    for net, p in zip(nets, members):
        net.load_state_dict(p)
    opts = [
        torch.optim.AdamW(net.parameters(), lr=float(lr), weight_decay=WEIGHT_DECAY, foreach=True)
        for net, lr in zip(nets, lrs)
    ]

    def unit() -> float:
        in_update = 0.0
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            in_update += seconds(opt.step)
        return in_update

    def now() -> Tensors:
        return tf.tree_stack([{k: v.detach() for k, v in net.named_parameters()} for net in nets])

    return Case(unit, displacement(now, tf.tree_stack(members)))


def torch_stacked() -> Case:
    """One ``torch.optim.AdamW(foreach=True)`` over the stacked parameters, vmapped grads."""
    x, y = digits_batch()
    params = {k: v.clone() for k, v in tf.tree_stack(member_params(MEMBERS)).items()}
    start = {k: v.clone() for k, v in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)

    def unit() -> float:
        grads = batched_grad(params, x, y)
        for k, p in params.items():
            p.grad = grads[k]
        return seconds(opt.step)

    return Case(unit, displacement(lambda: params, start))


# ---------------------------------------------------------------- MAML contenders


def maml_setup() -> tuple[Tensors, tuple[torch.Tensor, ...], Callable[..., torch.Tensor]]:
    return problem(MAML_WIDTH, MAML_TASKS)


def maml_layers() -> nn.Sequential:
    """maml_memory.py's network (its parameters come from `maml_setup`)."""
    return nn.Sequential(
        nn.Linear(1, MAML_WIDTH),
        nn.ReLU(),
        nn.Linear(MAML_WIDTH, MAML_WIDTH),
        nn.ReLU(),
        nn.Linear(MAML_WIDTH, 1),
    )


def maml_net(params: Tensors) -> nn.Sequential:
    net = maml_layers()
    net.load_state_dict(params)
    return net


MAML_TEMPLATE = maml_layers().to("meta")


def flat_grads(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def maml_chunks(chunk: int, query_loss: Callable[..., torch.Tensor] | None = None) -> Case:
    """maml_memory.py's meta-gradient (its ``query_loss``: torchopt_fn's Adam, unless given)."""
    params, data, tf_query_loss = maml_setup()
    query_loss = query_loss or tf_query_loss
    box: dict[str, Tensors] = {}

    def unit() -> None:
        box["g"] = meta_gradient_in_chunks(query_loss, params, data, chunk)

    return Case(unit, lambda: torch.cat([box["g"][k].flatten() for k in params]))


def maml_module_loop(net: nn.Module, inner: Any, extract: Callable, recover: Callable) -> Case:
    """The task loop of TorchOpt's MetaAdam tutorial, for either library's meta-optimizer."""
    x_s, y_s, x_q, y_q = maml_setup()[1]
    tasks = x_s.shape[0]
    net_state, inner_state = extract(net), extract(inner)

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((out - y) ** 2).mean()

    def unit() -> None:
        net.zero_grad()
        for t in range(tasks):
            for _ in range(INNER_STEPS):
                inner.step(mse(net(x_s[t]), y_s[t]))
            (mse(net(x_q[t]), y_q[t]) / tasks).backward()
            recover(net, net_state)
            recover(inner, inner_state)

    return Case(unit, lambda: flat_grads(net))


def maml_tf_meta_optimizer() -> Case:
    net = maml_net(maml_setup()[0])
    inner = tf.MetaOptimizer(net, tf.adam(MAML_LR, eps_root=1e-8))
    return maml_module_loop(net, inner, tf.extract_state, tf.recover_state)


def maml_torchopt_meta_adam() -> Case:
    import torchopt

    net = maml_net(maml_setup()[0])
    inner = torchopt.MetaAdam(net, lr=MAML_LR, eps_root=1e-8)
    return maml_module_loop(net, inner, torchopt.extract_state_dict, torchopt.recover_state_dict)


def adam_step(
    params: list[torch.Tensor],
    grads: Sequence[torch.Tensor],
    m: list[torch.Tensor],
    v: list[torch.Tensor],
    t: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Adam step ``t`` (1-based) as optax writes it, ``eps_root=1e-8``, out of place."""
    b1, b2, eps, eps_root = 0.9, 0.999, 1e-8, 1e-8
    m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
    v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
    params = [
        p - MAML_LR * (mi / (1 - b1**t)) / (torch.sqrt(vi / (1 - b2**t) + eps_root) + eps)
        for p, mi, vi in zip(params, m, v)
    ]
    return params, m, v


def differentiable_adam(
    loss_fn: Callable[[list[torch.Tensor]], torch.Tensor], params: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``INNER_STEPS`` Adam steps kept on the autograd graph."""
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, INNER_STEPS + 1):
        grads = torch.autograd.grad(loss_fn(params), params, create_graph=True)
        params, m, v = adam_step(params, grads, m, v, t)
    return params


def maml_mse(p: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((functional_call(MAML_TEMPLATE, p, (x,)) - y) ** 2).mean()


def torch_func_query_loss(meta: Tensors, *task: torch.Tensor) -> torch.Tensor:
    """One task's query loss after the inner steps, plain torch maths under `torch.func`."""
    x_s, y_s, x_q, y_q = task
    names, p = list(meta), list(meta.values())
    m, v = [torch.zeros_like(t) for t in p], [torch.zeros_like(t) for t in p]
    for t in range(1, INNER_STEPS + 1):
        grads = grad(maml_mse)(dict(zip(names, p)), x_s, y_s)
        p, m, v = adam_step(p, list(grads.values()), m, v, t)
    return maml_mse(dict(zip(names, p)), x_q, y_q)


def maml_torch_loop() -> Case:
    params, (x_s, y_s, x_q, y_q), _ = maml_setup()
    net = maml_net(params)
    names = [k for k, _ in net.named_parameters()]
    tasks = x_s.shape[0]

    def mse(p: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(net, dict(zip(names, p)), (x,)) - y) ** 2).mean()

    def unit() -> None:
        net.zero_grad()
        for t in range(tasks):
            support = functools.partial(mse, x=x_s[t], y=y_s[t])
            adapted = differentiable_adam(support, list(net.parameters()))
            (mse(adapted, x_q[t], y_q[t]) / tasks).backward()

    return Case(unit, lambda: flat_grads(net))


# ---------------------------------------------------------------- iMAML contenders


def imaml_setup() -> tuple[Tensors, tuple[torch.Tensor, ...]]:
    params, data, _ = problem(MAML_WIDTH, IMAML_TASKS)
    return params, data


def imaml_objective(phi: Tensors, theta: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """iMAML's inner objective: the support loss plus ``IMAML_REG / 2 * ||phi - theta||^2``."""
    distance = sum(((phi[k] - theta[k]) ** 2).sum() for k in phi)
    return maml_mse(phi, x, y) + IMAML_REG / 2 * distance


def imaml_autograd_grad(phi: Tensors, theta: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
    """The inner objective's gradient in ``phi`` by ``torch.autograd.grad`` (as TorchOpt's
    example takes it), ``theta`` held fixed."""
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_() for k, v in phi.items()}
        fixed = {k: v.detach() for k, v in theta.items()}
        loss = imaml_objective(leaves, fixed, x, y)
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def imaml_tf(func_grad: bool) -> Case:
    """Each task's query loss at ``tf.custom_root``'s solution (the inner solver ``tf.sgd``).
    With ``func_grad`` all in `torch.func`: inner gradients and the meta-gradient by
    ``torch.func.grad``; else as TorchOpt's row: inner gradients by ``torch.autograd.grad``
    and ``backward`` on leaf tensors."""
    params, (x_s, y_s, x_q, y_q) = imaml_setup()
    tasks, tx = x_s.shape[0], tf.sgd(IMAML_LR)
    solve = functools.partial(tf.solve_cg, tol=0.0, maxiter=IMAML_CG)  # tol 0: every iteration
    inner_grad = grad(imaml_objective) if func_grad else imaml_autograd_grad

    @tf.custom_root(grad(imaml_objective), solve=solve)
    def adapt(init: Tensors, theta: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
        phi, state = init, tx.init(init)
        for _ in range(IMAML_STEPS):
            updates, state = tx.update(inner_grad(phi, theta, x, y), state, phi)
            phi = tf.apply_updates(phi, updates)
        return phi

    def task_loss(theta: Tensors, t: int) -> torch.Tensor:
        return maml_mse(adapt(theta, theta, x_s[t], y_s[t]), x_q[t], y_q[t]) / tasks

    meta = {k: v.clone().requires_grad_(not func_grad) for k, v in params.items()}
    box: dict[str, Tensors] = {}

    def unit() -> None:
        if func_grad:
            total = grad(task_loss)(meta, 0)
            for t in range(1, tasks):
                total = tf.tree_add(total, grad(task_loss)(meta, t))
            box["g"] = total
            return
        for p in meta.values():
            p.grad = None
        for t in range(tasks):
            task_loss(meta, t).backward()
        box["g"] = {k: p.grad for k, p in meta.items()}

    return Case(unit, lambda: torch.cat([box["g"][k].flatten() for k in params]))


def imaml_torchopt() -> Case:
    """TorchOpt's iMAML example: ``custom_root(grad(objective), argnums=1)`` around a solver
    that runs ``torchopt.sgd`` in place under ``enable_grad``, the meta-parameters a tuple,
    ``backward`` per task. Its example passes ``solve_normal_cg``; this row uses ``solve_cg``."""
    import torchopt

    params, (x_s, y_s, x_q, y_q) = imaml_setup()
    names, tasks = list(params), x_s.shape[0]
    meta = tuple(p.clone().requires_grad_() for p in params.values())

    def objective(phi: tuple, theta: tuple, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return imaml_objective(dict(zip(names, phi)), dict(zip(names, theta)), x, y)

    solve = torchopt.linear_solve.solve_cg(maxiter=IMAML_CG, rtol=0.0, atol=0.0)

    @torchopt.diff.implicit.custom_root(grad(objective), argnums=1, solve=solve)
    def adapt(init: tuple, theta: tuple, x: torch.Tensor, y: torch.Tensor) -> tuple:
        inner = torchopt.sgd(IMAML_LR)
        phi = tuple(p.clone().detach_().requires_grad_() for p in init)
        state = inner.init(phi)
        with torch.enable_grad():
            for _ in range(IMAML_STEPS):
                grads = torch.autograd.grad(objective(phi, theta, x, y), phi)
                updates, state = inner.update(grads, state, inplace=True)
                phi = torchopt.apply_updates(phi, updates, inplace=True)
        return phi

    def unit() -> None:
        for p in meta:
            p.grad = None
        for t in range(tasks):
            phi = adapt(meta, meta, x_s[t], y_s[t])
            (maml_mse(dict(zip(names, phi)), x_q[t], y_q[t]) / tasks).backward()

    return Case(unit, lambda: torch.cat([p.grad.flatten() for p in meta]))


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((ai * bi).sum() for ai, bi in zip(a, b))


def conjugate_gradient(
    matvec: Callable[[list[torch.Tensor]], list[torch.Tensor]], b: list[torch.Tensor]
) -> list[torch.Tensor]:
    """``IMAML_CG`` iterations of conjugate gradient for ``A x = b``, from 0."""
    x, r, p = [torch.zeros_like(t) for t in b], list(b), list(b)
    rs = dot(r, r)
    for _ in range(IMAML_CG):
        ap = matvec(p)
        alpha = rs / dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs, rs_old = dot(r, r), rs
        p = [ri + (rs / rs_old) * pi for ri, pi in zip(r, p)]
    return x


def imaml_torch_loop() -> Case:
    """The iMAML paper's algorithm written out: gradient descent, then conjugate gradient on
    ``(I + H / reg) g = grad L_test``, H's products by double backward, a task loop."""
    params, (x_s, y_s, x_q, y_q) = imaml_setup()
    names, tasks = list(params), x_s.shape[0]
    theta = list(params.values())
    box: dict[str, list[torch.Tensor]] = {}

    def mse(p: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return maml_mse(dict(zip(names, p)), x, y)

    def meta_gradient(x_s: torch.Tensor, y_s: torch.Tensor, *query: torch.Tensor) -> list:
        phi = [p.clone().requires_grad_() for p in theta]
        for _ in range(IMAML_STEPS):
            grads = torch.autograd.grad(mse(phi, x_s, y_s), phi)
            with torch.no_grad():
                phi = [
                    p - IMAML_LR * (g + IMAML_REG * (p - t)) for p, g, t in zip(phi, grads, theta)
                ]
            phi = [p.requires_grad_() for p in phi]
        train_grads = torch.autograd.grad(mse(phi, x_s, y_s), phi, create_graph=True)
        test_grads = torch.autograd.grad(mse(phi, *query), phi)

        def matvec(v: list[torch.Tensor]) -> list[torch.Tensor]:
            hv = torch.autograd.grad(train_grads, phi, v, retain_graph=True)
            return [vi + hvi / IMAML_REG for vi, hvi in zip(v, hv)]

        return conjugate_gradient(matvec, list(test_grads))

    def unit() -> None:
        total = [torch.zeros_like(t) for t in theta]
        for t in range(tasks):
            g = meta_gradient(x_s[t], y_s[t], x_q[t], y_q[t])
            total = [a + gi / tasks for a, gi in zip(total, g)]
        box["g"] = total

    return Case(unit, lambda: torch.cat([g.flatten() for g in box["g"]]))


# ---------------------------------------------------------------- implicit differentiation


def ridge_problem() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(RIDGE_N, RIDGE_D, generator=g, dtype=torch.float64)
    w_true = torch.randn(RIDGE_D, generator=g, dtype=torch.float64)
    y = x @ w_true + 3.0 * torch.randn(RIDGE_N, generator=g, dtype=torch.float64)
    x_val = torch.randn(RIDGE_N // 2, RIDGE_D, generator=g, dtype=torch.float64)
    y_val = x_val @ w_true + 3.0 * torch.randn(RIDGE_N // 2, generator=g, dtype=torch.float64)
    return x, y, x_val, y_val


def ridge_solution(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(x.T @ x + lam * eye, x.T @ y)


def ridge_closed_form() -> torch.Tensor:
    """d val / d lambda = grad_w(val) . dw/dlambda, where dw/dlambda = -(X'X + lambda I)^-1 w."""
    x, y, x_val, y_val = ridge_problem()
    lam = torch.tensor(RIDGE_LAMBDA, dtype=torch.float64)
    w = ridge_solution(x, y, lam)
    dw = -torch.linalg.solve(x.T @ x + lam * torch.eye(RIDGE_D, dtype=x.dtype), w)
    dval = 2 * x_val.T @ (x_val @ w - y_val) / x_val.shape[0]
    return (dval @ dw).reshape(1)


def hypergradient_case(solver: Callable[..., torch.Tensor]) -> Case:
    """``solver(init, lam)`` returns the ridge solution, differentiable in ``lam``."""
    _, _, x_val, y_val = ridge_problem()
    box: dict[str, torch.Tensor] = {}

    def unit() -> None:
        lam = torch.tensor(RIDGE_LAMBDA, dtype=torch.float64, requires_grad=True)
        w = solver(torch.zeros(RIDGE_D, dtype=torch.float64), lam)
        (box["g"],) = torch.autograd.grad(((x_val @ w - y_val) ** 2).mean(), lam)

    return Case(unit, lambda: box["g"].reshape(1))


def ridge_optimality(x: torch.Tensor, y: torch.Tensor) -> Callable[..., torch.Tensor]:
    def optimality(w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return 2 * x.T @ (x @ w - y) + 2 * lam * w

    return optimality


def implicit_tf() -> Case:
    x, y, _, _ = ridge_problem()
    solve = functools.partial(tf.solve_cg, tol=1e-10)
    solver = tf.custom_root(ridge_optimality(x, y), solve=solve)(
        lambda init, lam: ridge_solution(x, y, lam)
    )
    return hypergradient_case(solver)


def implicit_torchopt() -> Case:
    import torchopt

    x, y, _, _ = ridge_problem()
    solve = torchopt.linear_solve.solve_cg(rtol=1e-10)
    solver = torchopt.diff.implicit.custom_root(ridge_optimality(x, y), argnums=1, solve=solve)(
        lambda init, lam: ridge_solution(x, y, lam)
    )
    return hypergradient_case(solver)


def implicit_torch() -> Case:
    x, y, _, _ = ridge_problem()
    return hypergradient_case(lambda init, lam: ridge_solution(x, y, lam))


# ---------------------------------------------------------------- the table of contenders


@dataclass(frozen=True)
class Contender:
    label: str
    library: str  # "tf", "torchopt" or "torch": TorchOpt's run under --torchopt-python
    build: Callable[[], Case]


def _ensemble_adamw() -> tf.GradientTransformation:
    return tf.adamw(LR, weight_decay=WEIGHT_DECAY)


def _sweep_adamw() -> tf.GradientTransformation:
    return tf.adamw(sweep_lrs(), weight_decay=WEIGHT_DECAY)  # one lr per member


WORKFLOWS: dict[str, list[Contender]] = {
    "ensemble": [
        Contender(
            "torchopt_fn: `vmap(grad)`, `tx.update` on the stacked tree",
            "tf",
            lambda: tf_stacked(_ensemble_adamw(), member_params(MEMBERS)),
        ),
        Contender(
            "torchopt_fn: `vmap(grad)`, `vmap(tx.update)`",
            "tf",
            lambda: tf_stacked(_ensemble_adamw(), member_params(MEMBERS), in_vmap=True),
        ),
        Contender(
            "torchopt_fn: the whole step in `vmap`",
            "tf",
            lambda: tf_vmap_step(MEMBERS),
        ),
        Contender(
            "TorchOpt: the whole step in `vmap` (its functorch example)",
            "torchopt",
            lambda: torchopt_vmap_step(member_params(MEMBERS), None),
        ),
        Contender(
            "TorchOpt: `vmap(grad)`, update on the stacked tree",
            "torchopt",
            torchopt_stacked,
        ),
        Contender(
            f"torch: {MEMBERS} modules, {MEMBERS} `AdamW(foreach=True)`, a loop",
            "torch",
            lambda: torch_loop(torch.full((MEMBERS,), LR), member_params(MEMBERS)),
        ),
        Contender(
            "torch: `vmap(grad)`, one `AdamW(foreach=True)` on the stacked params",
            "torch",
            torch_stacked,
        ),
    ],
    "sweep": [
        Contender(
            "torchopt_fn: `adamw(lrs)`, one lr per member of the stacked tree",
            "tf",
            lambda: tf_stacked(_sweep_adamw(), sweep_start()),
        ),
        Contender(
            "torchopt_fn: `adamw(lr)` built inside `vmap` over lr",
            "tf",
            tf_sweep_inside_vmap,
        ),
        Contender(
            "TorchOpt: `adamw(lr)` built inside `vmap` over lr",
            "torchopt",
            lambda: torchopt_vmap_step(sweep_start(), sweep_lrs()),
        ),
        Contender(
            f"TorchOpt: `vmap(grad)`, {SWEEP} `adamw` updates in a loop",
            "torchopt",
            lambda: torchopt_loop(sweep_lrs()),
        ),
        Contender(
            f"torch: {SWEEP} modules, {SWEEP} `AdamW(foreach=True)`, a loop",
            "torch",
            lambda: torch_loop(sweep_lrs(), sweep_start()),
        ),
    ],
    "maml": [
        Contender(
            f"torchopt_fn: `vmap` over all {MAML_TASKS} tasks",
            "tf",
            lambda: maml_chunks(MAML_TASKS),
        ),
        Contender(
            f"torchopt_fn: {MAML_CHUNK} tasks per `vmap`, meta-gradients added",
            "tf",
            lambda: maml_chunks(MAML_CHUNK),
        ),
        Contender("torchopt_fn: `MetaOptimizer`, a task loop", "tf", maml_tf_meta_optimizer),
        Contender("TorchOpt: `MetaAdam`, a task loop", "torchopt", maml_torchopt_meta_adam),
        Contender(
            "torch: hand-written Adam, `autograd.grad(create_graph=True)`, a task loop",
            "torch",
            maml_torch_loop,
        ),
        Contender(
            f"torch: hand-written Adam under `torch.func`, `vmap` over all {MAML_TASKS} tasks",
            "torch",
            lambda: maml_chunks(MAML_TASKS, torch_func_query_loss),
        ),
    ],
    "imaml": [
        Contender(
            "torchopt_fn: `custom_root` + `solve_cg`, all `torch.func.grad`, a task loop",
            "tf",
            lambda: imaml_tf(func_grad=True),
        ),
        Contender(
            "torchopt_fn: `custom_root` + `solve_cg`, `autograd.grad` inside, `backward` per task",
            "tf",
            lambda: imaml_tf(func_grad=False),
        ),
        Contender(
            "TorchOpt: `custom_root` + `solve_cg`, `autograd.grad` inside, `backward` per task",
            "torchopt",
            imaml_torchopt,
        ),
        Contender(
            "torch: CG written out, Hessian-vector products by double backward, a task loop",
            "torch",
            imaml_torch_loop,
        ),
    ],
    "implicit": [
        Contender("torchopt_fn: `custom_root` + `solve_cg`", "tf", implicit_tf),
        Contender("TorchOpt: `custom_root` + `solve_cg`", "torchopt", implicit_torchopt),
        Contender("torch: autograd through `torch.linalg.solve`", "torch", implicit_torch),
    ],
}

SCHEDULE = {
    "ensemble": (5, 40),
    "sweep": (5, 40),
    "maml": (1, 5),
    "imaml": (1, 5),
    "implicit": (2, 20),
}  # (warm-up, timed)
CHECK_STEPS = {"ensemble": 10, "sweep": 10}  # training steps of the float64 rerun
UNITS = {
    "ensemble": "ms / step",
    "sweep": "ms / step",
    "maml": "ms / meta-gradient",
    "imaml": "ms / meta-gradient",
    "implicit": "ms / hypergradient",
}
TITLES = {
    "ensemble": (
        f"Ensemble: {MEMBERS} MLPs 64-64-64-10 on {BATCH} digits, AdamW (lr {LR}, weight decay "
        f"{WEIGHT_DECAY}); one step = gradient + update + apply"
    ),
    "sweep": (
        f"LR sweep: one MLP 64-64-64-10 under {SWEEP} learning rates "
        "(1e-4 to 1e-1, log-spaced), AdamW; one step = gradient + update + apply"
    ),
    "maml": (
        f"MAML meta-gradient: sine regression, 1-{MAML_WIDTH}-{MAML_WIDTH}-1 ReLU net, "
        f"{MAML_TASKS} tasks, {INNER_STEPS} inner Adam steps (lr {MAML_LR}, eps_root 1e-8)"
    ),
    "imaml": (
        f"iMAML meta-gradient: the MAML problem with {IMAML_TASKS} tasks, {IMAML_STEPS} inner "
        f"gradient-descent steps (lr {IMAML_LR}) on the support loss + {IMAML_REG:g}/2 "
        f"||phi - theta||^2, {IMAML_CG} CG iterations on (I + H/{IMAML_REG:g}) g = grad(query loss)"
    ),
    "implicit": (
        f"Implicit differentiation: d(validation loss)/d(lambda) of ridge regression "
        f"({RIDGE_N} x {RIDGE_D}, float64), CG to tolerance 1e-10"
    ),
}
REFERENCE = {
    "ensemble": "torch",
    "sweep": "torch",
    "maml": "torch",
    "imaml": "torch",
    "implicit": "closed form",
}


# ---------------------------------------------------------------- one contender, in its process


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(case: Case, warmup: int, reps: int) -> dict[str, float]:
    before = peak_rss_mb()
    for _ in range(warmup):
        case.unit()
    times, in_update = [], []
    for _ in range(reps):
        start = time.perf_counter()
        update_seconds = case.unit()
        times.append(time.perf_counter() - start)
        in_update.append(update_seconds)
    update_ms = None if None in in_update else 1e3 * statistics.median(in_update)
    return {
        "ms": 1e3 * statistics.median(times),
        "update_ms": update_ms,
        "mb": peak_rss_mb() - before,
    }


def float64_result(workflow: str, build: Callable[[], Case]) -> torch.Tensor:
    """The contender rebuilt and rerun in float64: `CHECK_STEPS` training steps, or one
    meta- or hypergradient. float32 alone cannot show that two contenders compute the same
    thing: Adam amplifies rounding noise in gradients near 0 (by up to 1/sqrt(eps_root) = 1e4
    in MAML's meta-gradient), so float32 results of one computation differ in its 4th digit."""
    torch.set_default_dtype(torch.float64)
    case = build()
    for _ in range(CHECK_STEPS.get(workflow, 1)):
        case.unit()
    return case.result()


def run_child(workflow: str, index: int, reps: int | None, result_path: str) -> dict[str, Any]:
    """Build and measure one contender; an exception becomes the row's "fails" entry."""
    torch.set_num_threads(1)
    warmup, default_reps = SCHEDULE[workflow]
    build = WORKFLOWS[workflow][index].build
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            case = build()
            row: dict[str, Any] = measure(case, warmup, reps or default_reps)
            float32 = case.result()  # the timed run's
            torch.save(
                {"float32": float32, "float64": float64_result(workflow, build)}, result_path
            )
        except Exception as error:  # reported in the table, not hidden
            row = {"error": type(error).__name__, "message": str(error).splitlines()[0][:200]}
    row["warnings"] = sorted({str(w.message).splitlines()[0][:160] for w in caught})
    return row


# ---------------------------------------------------------------- the parent: launch and report


def torchopt_version(python: str) -> str | None:
    probe = subprocess.run(
        [python, "-c", "import torchopt; print(torchopt.__version__)"],
        capture_output=True,
        text=True,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def launch(python: str, workflow: str, index: int, reps: int | None, tmp: str) -> dict[str, Any]:
    result_path = os.path.join(tmp, f"{workflow}-{index}.pt")
    command = [python, __file__, "--child", workflow, str(index), "--result", result_path]
    if reps:
        command += ["--reps", str(reps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"crashed (exit {proc.returncode})", "message": tail}
    row = json.loads(lines[-1])
    if "error" not in row:
        row["result"] = torch.load(result_path)
    return row


def relative_difference(a: torch.Tensor, reference: torch.Tensor) -> float:
    """max |a - ref| / max |ref|: an element-wise ratio would blow up where ref is ~0."""
    return float((a.double() - reference.double()).abs().max() / reference.double().abs().max())


def reference_result(workflow: str, rows: list[dict[str, Any]]) -> tuple[str, dict | None]:
    if workflow == "implicit":
        closed_form = ridge_closed_form()
        return "the closed form", {"float32": closed_form, "float64": closed_form}
    for contender, row in zip(WORKFLOWS[workflow], rows):
        if contender.library == REFERENCE[workflow] and "result" in row:
            return "the first torch row", row["result"]
    return "none ran", None


def agreement(result: dict[str, torch.Tensor], reference: dict | None) -> str:
    if reference is None:
        return " | "
    diff = {k: relative_difference(result[k], reference[k]) for k in ("float32", "float64")}
    flag = "" if diff["float64"] <= AGREE else " **differs**"
    return f"{diff['float32']:.1e} | {diff['float64']:.1e}{flag}"


def format_table(workflow: str, rows: list[dict[str, Any]]) -> str:
    name, reference = reference_result(workflow, rows)
    fastest = min((row["ms"] for row in rows if "ms" in row), default=float("nan"))
    training = workflow in CHECK_STEPS  # the update's share can be timed apart
    lines = [
        f"{TITLES[workflow]}. Diff: max |a - ref| / max |ref| against {name}.\n",
        f"| contender | {UNITS[workflow]} | x fastest |"
        + (" of which update ms |" if training else "")
        + " peak memory growth MB | diff, timed run | diff, float64 rerun |",
        "|---|---:|---:|" + ("---:|" if training else "") + "---:|---:|---:|",
    ]
    for contender, row in zip(WORKFLOWS[workflow], rows):
        if "ms" not in row:
            lines.append(f"| {contender.label} | {row['status']} |" + " |" * (5 if training else 4))
            continue
        update = "" if row["update_ms"] is None else f"{row['update_ms']:.2f}"
        lines.append(
            f"| {contender.label} | {row['ms']:.2f} | {row['ms'] / fastest:.2f} |"
            + (f" {update} |" if training else "")
            + f" {row['mb']:.0f} | {agreement(row['result'], reference)} |"
        )
    return "\n".join(lines)


def run_workflow(
    workflow: str, args: argparse.Namespace, torchopt: str | None, tmp: str
) -> list[dict[str, Any]]:
    rows = []
    for index, contender in enumerate(WORKFLOWS[workflow]):
        if contender.library == "torchopt" and torchopt is None:
            row: dict[str, Any] = {"status": "not installed"}
        else:
            python = args.torchopt_python if contender.library == "torchopt" else sys.executable
            row = launch(python, workflow, index, args.reps, tmp)
            if "error" in row:
                row["status"] = f"fails ({row['error']})"
                print(f"  {contender.label}: {row['error']}: {row['message']}", file=sys.stderr)
        for message in row.get("warnings", []):
            print(f"  {contender.label} warned: {message}", file=sys.stderr)
        rows.append(row)
    return rows


def machine(torchopt: str | None) -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if "model name" in line), cpu)
    return (
        f"{cpu}, {os.cpu_count()} cores, 1 thread; Python {platform.python_version()}, "
        f"torch {torch.__version__}, TorchOpt {torchopt or 'not installed'}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchopt-python", default=sys.executable)
    parser.add_argument("--workflows", default=",".join(WORKFLOWS))
    parser.add_argument("--reps", type=int, help="timed units per contender (default per workflow)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one contender: a JSON line for the parent
        workflow, index = args.child
        print(json.dumps(run_child(workflow, int(index), args.reps, args.result)))
        return
    torchopt = torchopt_version(args.torchopt_python)
    print(machine(torchopt) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for workflow in args.workflows.split(","):
            print(format_table(workflow, run_workflow(workflow, args, torchopt, tmp)) + "\n")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
