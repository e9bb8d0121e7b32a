"""SOAP and Shampoo against float64 reference loops written from the papers' pseudocode.

The references run per leaf, unbatched, in plain torch (``tensordot`` as the authors' code
does); the transforms under test stack same-shape leaves and batch their linear algebra. An
eigenvector is defined up to its sign, so the comparisons are of sign-invariant quantities:
parameters, updates, moments, factors, and bases through their projectors. The factors of
these small gradients have eigenvalue gaps of ~1e-7 of their norm, so their eigenvectors are
determined only to ~1e-16 / 1e-7 by floating point: the trajectories agree to ~1e-10, not to
the last ulp, whichever way the factors are summed.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn.contrib import (
    ShampooState,
    SOAPState,
    scale_by_shampoo,
    scale_by_soap,
    shampoo,
    soap,
)

F64 = torch.float64
STEPS = 15


def _problem(seed: int = 0) -> tuple[dict[str, torch.Tensor], Any]:
    """A small tanh network (matrices of two shapes, two leaves sharing one, and a bias) and
    ``grad(params, t)``, the gradient on minibatch ``t``: a fresh batch each step, so that no
    step's gradient lies in the factors' span by construction (a repeated gradient's
    components in the factors' null space are rounding noise, which Adam's first, sign-like
    step would magnify)."""
    gen = torch.Generator().manual_seed(seed)
    params = {
        "w1": torch.randn(5, 4, generator=gen, dtype=F64) * 0.5,
        "b": torch.randn(5, generator=gen, dtype=F64) * 0.1,
        "w2": torch.randn(5, 5, generator=gen, dtype=F64) * 0.5,
        "w3": torch.randn(5, 5, generator=gen, dtype=F64) * 0.5,
    }
    x = torch.randn(4, 16, 4, generator=gen, dtype=F64)
    y = torch.randn(4, 16, 5, generator=gen, dtype=F64)

    def loss(p: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        h = torch.tanh(x[t % 4] @ p["w1"].T + p["b"])
        h = torch.tanh(h @ p["w2"].T)
        return ((h @ p["w3"].T - y[t % 4]) ** 2).mean()

    return params, torch.func.grad(loss)


def _contract_all_but(g: torch.Tensor, axis: int) -> torch.Tensor:
    others = [d for d in range(g.dim()) if d != axis]
    return torch.tensordot(g, g, dims=[others, others])


def _rotate(x: torch.Tensor, qs: list, back: bool = False) -> torch.Tensor:
    """The authors' projection: contract axis 0 with Q (or Q^T) and move it last, in turn."""
    for q in qs:
        if q is None:
            x = x.permute([*range(1, x.dim()), 0])
        else:
            x = torch.tensordot(x, q, dims=[[0], [1 if back else 0]])
    return x


def _train(tx: tf.GradientTransformation, steps: int = STEPS) -> tuple[list, Any]:
    params, grad = _problem()
    state = tx.init(params)
    trajectory = []
    for t in range(steps):
        updates, state = tx.update(grad(params, t), state, params)
        params = tf.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory, state


# --------------------------------------------------------------------------- SOAP


def _soap_reference(
    lr: float,
    b1: float,
    b2: float,
    shampoo_beta: float,
    eps: float,
    weight_decay: float,
    frequency: int,
    max_dim: int,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    steps: int = STEPS,
) -> tuple[list, dict]:
    """Vyas et al.'s Algorithm 3 as their reference code runs it, one leaf at a time.

    The first step only builds the factors and their eigenbases; the moving average of the
    gradients is kept in the eigenbasis and rotated with it. Weight decay as `soap`
    documents it: AdamW's, from the second step on.
    """
    params, grad = _problem()
    states: dict[str, dict] = {}
    trajectory = []

    def factored(shape: torch.Size) -> list[bool]:
        if len(shape) == 1 and not precondition_1d:
            return [False]
        return [d <= max_dim for d in shape]

    def update_preconditioner(g: torch.Tensor, s: dict) -> None:
        if s["Q"] is not None:
            s["m"] = _rotate(s["m"], s["Q"], back=True)
        for k, gg in enumerate(s["GG"]):
            if gg is not None:
                s["GG"][k] = shampoo_beta * gg + (1 - shampoo_beta) * _contract_all_but(g, k)
        if s["Q"] is None:
            s["Q"] = [
                None if gg is None else torch.flip(torch.linalg.eigh(gg)[1], [1]) for gg in s["GG"]
            ]
        if s["step"] > 0 and s["step"] % frequency == 0:
            v, qs = s["v"], []
            for k, (gg, q) in enumerate(zip(s["GG"], s["Q"])):
                if gg is None:
                    qs.append(None)
                    continue
                order = torch.argsort(torch.diag(q.T @ gg @ q), descending=True, stable=True)
                v = v.index_select(k, order)
                qs.append(torch.linalg.qr(gg @ q[:, order])[0])
            s["v"], s["Q"] = v, qs
        if s["step"] > 0:
            s["m"] = _rotate(s["m"], s["Q"])

    for t in range(steps):
        grads = grad(params, t)
        new = {}
        for name, p in params.items():
            g = grads[name]
            if name not in states:
                shape = g.shape
                states[name] = s = {
                    "step": 0,
                    "m": torch.zeros_like(g),
                    "v": torch.zeros_like(g),
                    "GG": [
                        torch.zeros(d, d, dtype=F64) if f else None
                        for d, f in zip(shape, factored(shape))
                    ]
                    if g.dim() > 0
                    else [],
                    "Q": None,
                }
                update_preconditioner(g, s)
                new[name] = p
                continue
            s = states[name]
            projected = _rotate(g, s["Q"])
            s["step"] += 1
            s["m"] = b1 * s["m"] + (1 - b1) * projected
            s["v"] = b2 * s["v"] + (1 - b2) * projected**2
            step_size = (1 - b2 ** s["step"]) ** 0.5 / (1 - b1 ** s["step"])
            direction = _rotate(s["m"] / (s["v"].sqrt() + eps), s["Q"], back=True)
            if normalize_grads:
                direction = direction / (1e-30 + direction.square().mean().sqrt())
            new[name] = p - lr * step_size * direction - lr * weight_decay * p
            update_preconditioner(g, s)
        params = new
        trajectory.append(params)
    return trajectory, states


SOAP_CONFIGS = {
    "defaults_frequency_3": dict(frequency=3, max_dim=10000),
    "identity_axes_1d_normalized": dict(
        frequency=4, max_dim=4, precondition_1d=True, normalize_grads=True
    ),
}


def _soap_pair(config: dict) -> tuple[tf.GradientTransformation, dict]:
    hyper = dict(lr=0.05, b1=0.95, b2=0.95, shampoo_beta=0.9, eps=1e-8, weight_decay=0.01)
    tx = soap(
        hyper["lr"],
        hyper["b1"],
        hyper["b2"],
        hyper["shampoo_beta"],
        hyper["eps"],
        hyper["weight_decay"],
        config["frequency"],
        config["max_dim"],
        config.get("precondition_1d", False),
        config.get("normalize_grads", False),
    )
    return tx, {**hyper, **config}


@pytest.mark.parametrize("config", SOAP_CONFIGS, ids=str)
def test_soap_matches_the_authors_reference_loop(config: str):
    tx, hyper = _soap_pair(SOAP_CONFIGS[config])
    got, chain_state = _train(tx)
    want, states = _soap_reference(**hyper)
    assert_trees_close(got, want, rtol=1e-8, atol=1e-10)

    state: SOAPState = chain_state[0]
    assert int(state.count) == STEPS
    for name, s in states.items():
        qs = [q for q in s["Q"] if q is not None]
        ours = state.bases[name]
        assert len(ours) == len(qs)
        # The moments and statistics are sign-invariant; the bases are compared through
        # their columns' projectors (|Q_ref^T Q| = I).
        torch.testing.assert_close(state.mu[name], _rotate(s["m"], s["Q"], back=True))
        torch.testing.assert_close(state.nu[name], s["v"])
        torch.testing.assert_close(state.factors[name], [g for g in s["GG"] if g is not None])
        for q_ref, q in zip(qs, ours):
            overlap = (q_ref.T @ q).abs()
            torch.testing.assert_close(overlap, torch.eye(len(q), dtype=F64), atol=1e-8, rtol=0)


def test_soap_update_is_invariant_to_the_signs_of_the_eigenvectors():
    params, grad = _problem()
    tx = scale_by_soap(precondition_frequency=2)
    state = tx.init(params)
    for t in range(3):
        _, state = tx.update(grad(params, t), state)
    signs = {
        k: [torch.where(torch.arange(len(q)) % 2 == 0, 1.0, -1.0) for q in qs]
        for k, qs in state.bases.items()
    }
    flipped = state._replace(
        bases={k: [q * s.to(F64) for q, s in zip(qs, signs[k])] for k, qs in state.bases.items()}
    )
    g = grad(params, 3)
    for _ in range(3):  # through a refresh (count 4)
        u, state = tx.update(g, state)
        u_flipped, flipped = tx.update(g, flipped)
        assert_trees_close(u_flipped, u, rtol=1e-12, atol=1e-15)
        assert_trees_close(flipped.nu, state.nu, rtol=1e-12, atol=1e-15)


def test_soap_first_step_only_builds_the_eigenbases():
    params, grad = _problem()
    u, _ = soap(weight_decay=0.1).update(grad(params, 0), soap().init(params), params)
    assert all(bool((x == 0).all()) for x in tf.tree_leaves(u))  # no decay either
    tx = scale_by_soap()
    state = tx.init(params)
    u, state = tx.update(grad(params, 0), state)
    assert all(bool((x == 0).all()) for x in tf.tree_leaves(u))
    assert all(bool((x == 0).all()) for x in tf.tree_leaves((state.mu, state.nu)))
    for f, q in zip(state.factors["w1"], state.bases["w1"]):
        # Q^T F Q is diagonal, with decreasing entries.
        d = q.T @ f @ q
        torch.testing.assert_close(d, torch.diag(d.diagonal()), atol=1e-12, rtol=0)
        assert bool((d.diagonal()[:-1] >= d.diagonal()[1:]).all())
    assert state.bases["b"] == []


# --------------------------------------------------------------------------- Shampoo


def _shampoo_reference(
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    momentum: float,
    frequency: int,
    start: int,
    max_dim: int,
    grafting: str,
    grafting_b2: float,
    grafting_eps: float,
    steps: int = STEPS,
) -> tuple[list, dict]:
    """Distributed Shampoo (Shi et al., 2023, Algorithm with grafting), one leaf at a time."""
    params, grad = _problem()
    states: dict[str, dict] = {}
    trajectory = []

    def root(a: torch.Tensor, r: int) -> torch.Tensor:
        lam, q = torch.linalg.eigh(a)
        lam = lam - torch.clamp(lam.min(), max=0) + eps
        return q @ torch.diag(lam ** (-1 / r)) @ q.T

    for t in range(1, steps + 1):
        grads = grad(params, t - 1)
        new = {}
        for name, p in params.items():
            g = grads[name]
            if name not in states:
                states[name] = {
                    "F": [torch.zeros(d, d, dtype=F64) if d <= max_dim else None for d in g.shape],
                    "inv": [torch.eye(d, dtype=F64) if d <= max_dim else None for d in g.shape],
                    "m": torch.zeros_like(g),
                    "A": torch.zeros_like(g),
                    "buf": torch.zeros_like(g),
                }
            s = states[name]
            for k, f in enumerate(s["F"]):
                if f is not None:
                    outer = _contract_all_but(g, k)
                    s["F"][k] = b2 * f + (1 - b2) * outer if b2 < 1 else f + outer
            if grafting == "adagrad":
                s["A"] = s["A"] + g * g
            elif grafting in ("rmsprop", "adam"):
                s["A"] = grafting_b2 * s["A"] + (1 - grafting_b2) * g * g
            bc2 = 1 - b2**t if b2 < 1 else 1.0
            if t % frequency == 0 and t >= start:
                r = 2 * g.dim()
                s["inv"] = [None if f is None else root(f / bc2, r) for f in s["F"]]
            s["m"] = b1 * s["m"] + (1 - b1) * g
            filtered = s["m"] / (1 - b1**t)
            if grafting in ("adagrad", "rmsprop", "adam"):
                a = s["A"] / (1 - grafting_b2**t) if grafting == "adam" else s["A"]
                grafted = filtered / (a.sqrt() + grafting_eps)
            else:
                grafted = filtered
            if t < start:
                direction = grafted
            else:
                direction = _rotate(filtered, s["inv"])
                if grafting != "none":
                    direction = direction * grafted.norm() / (direction.norm() + 1e-16)
            direction = direction + weight_decay * p
            if momentum:
                s["buf"] = momentum * s["buf"] + direction
                direction = s["buf"]
            new[name] = p - lr * direction
        params = new
        trajectory.append(params)
    return trajectory, states


SHAMPOO_CONFIGS = {
    "adagrad_grafting_every_step": dict(
        b2=1.0,
        frequency=1,
        start=1,
        max_dim=1024,
        grafting="adagrad",
        grafting_b2=1.0,
        grafting_eps=1e-3,
        momentum=0.0,
    ),
    "adam_grafting_refresh_3_start_6": dict(
        b2=0.99,
        frequency=3,
        start=6,
        max_dim=1024,
        grafting="adam",
        grafting_b2=0.999,
        grafting_eps=1e-8,
        momentum=0.5,
    ),
    "sgd_grafting_identity_axes": dict(
        b2=0.9,
        frequency=2,
        start=2,
        max_dim=4,
        grafting="sgd",
        grafting_b2=1.0,
        grafting_eps=1e-3,
        momentum=0.0,
    ),
    "no_grafting": dict(
        b2=0.95,
        frequency=2,
        start=4,
        max_dim=1024,
        grafting="none",
        grafting_b2=1.0,
        grafting_eps=1e-3,
        momentum=0.0,
    ),
}


@pytest.mark.parametrize("config", SHAMPOO_CONFIGS, ids=str)
def test_shampoo_matches_the_distributed_shampoo_reference_loop(config: str):
    c = SHAMPOO_CONFIGS[config]
    hyper = dict(lr=0.05, b1=0.9, eps=1e-10, weight_decay=0.01)
    tx = shampoo(
        hyper["lr"],
        hyper["b1"],
        c["b2"],
        hyper["eps"],
        hyper["weight_decay"],
        momentum=c["momentum"],
        precondition_frequency=c["frequency"],
        start_preconditioning_step=c["start"],
        max_preconditioner_dim=c["max_dim"],
        grafting=c["grafting"],
        grafting_b2=c["grafting_b2"],
        grafting_eps=c["grafting_eps"],
    )
    got, chain_state = _train(tx)
    want, states = _shampoo_reference(**hyper, **c)
    assert_trees_close(got, want, rtol=1e-8, atol=1e-10)
    state: ShampooState = chain_state[0]
    for name, s in states.items():
        torch.testing.assert_close(state.factors[name], [f for f in s["F"] if f is not None])
        torch.testing.assert_close(state.roots[name], [r for r in s["inv"] if r is not None])


def test_shampoo_inverse_root_of_a_matrix_is_l_and_r_to_the_minus_quarter():
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(4, 3, generator=gen, dtype=F64)
    tx = scale_by_shampoo(b1=0.0, eps=1e-30, grafting="none")
    u, state = tx.update({"w": g}, tx.init({"w": g}))
    left, right = g @ g.T + 1e-30 * torch.eye(4, dtype=F64), g.T @ g

    def power(a: torch.Tensor, e: float) -> torch.Tensor:
        lam, q = torch.linalg.eigh(a)
        return q @ torch.diag((lam - torch.clamp(lam.min(), max=0) + 1e-30) ** e) @ q.T

    torch.testing.assert_close(state.roots["w"][1], power(right, -0.25))
    # G has no component in L's null space, so L^{-1/4} G R^{-1/4} is well defined.
    torch.testing.assert_close(u["w"], power(left, -0.25) @ g @ power(right, -0.25))


# --------------------------------------------------------------------------- compile


def test_compiled_fullgraph_does_not_recompile_across_refreshes():
    """SOAP and Shampoo in one graph, stepped through a refresh (the third update)."""
    gen = torch.Generator().manual_seed(2)
    params = {"w": torch.randn(4, 3, generator=gen, dtype=F64), "b": torch.zeros(3, dtype=F64)}
    grads = [
        tf.tree_map(lambda p: torch.randn(p.shape, generator=gen, dtype=F64), params)
        for _ in range(4)
    ]
    txs = (
        soap(0.05, precondition_frequency=2),
        shampoo(0.05, b2=0.99, precondition_frequency=2, grafting="adam", grafting_b2=0.99),
    )

    def update(g, states, p):
        return tuple(zip(*(tx.update(g, s, p) for tx, s in zip(txs, states))))

    eager, states = [], tuple(tx.init(params) for tx in txs)
    for g in grads:
        u, states = update(g, states, params)
        eager.append(u)
    torch._dynamo.reset()
    step = torch.compile(update, backend="aot_eager", fullgraph=True)
    compiled, states_c = [], tuple(tx.init(params) for tx in txs)
    for i, g in enumerate(grads):
        with torch.compiler.set_stance("default" if i == 0 else "fail_on_recompile"):
            u, states_c = step(g, states_c, params)
        compiled.append(u)
    assert_trees_close((compiled, states_c), (eager, states), rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("factory", "kwargs", "name"),
    [
        (scale_by_soap, {"b1": 1.0}, "b1"),
        (scale_by_soap, {"shampoo_beta": -0.1}, "shampoo_beta"),
        (scale_by_soap, {"precondition_frequency": 0}, "precondition_frequency"),
        (scale_by_soap, {"max_precond_dim": 0}, "max_precond_dim"),
        (soap, {"weight_decay": -1.0}, "weight_decay"),
        (scale_by_shampoo, {"b2": 0.0}, "b2"),
        (scale_by_shampoo, {"eps": 0.0}, "eps"),
        (scale_by_shampoo, {"grafting": "lamb"}, "grafting"),
        (scale_by_shampoo, {"start_preconditioning_step": -1}, "start_preconditioning_step"),
        (scale_by_shampoo, {"exponent_override": 1.5}, "exponent_override"),
        (shampoo, {"momentum": 1.0}, "momentum"),
    ],
)
def test_invalid_hyperparameters_are_refused_naming_the_argument(factory, kwargs, name):
    with pytest.raises(ValueError, match=name):
        factory(**kwargs)


def test_leaves_of_one_shape_are_batched_and_equal_to_separate_runs():
    """Three same-shape leaves stepped together equal each stepped alone."""
    gen = torch.Generator().manual_seed(3)
    leaves = {k: torch.randn(4, 3, generator=gen, dtype=F64) for k in "abc"}
    grads = [{k: torch.randn(4, 3, generator=gen, dtype=F64) for k in "abc"} for _ in range(5)]
    for tx in (scale_by_soap(precondition_frequency=2), scale_by_shampoo()):
        together, state = [], tx.init(leaves)
        for g in grads:
            u, state = tx.update(g, state)
            together.append(u)
        for k in "abc":
            alone, s = [], tx.init({k: leaves[k]})
            for g in grads:
                u, s = tx.update({k: g[k]}, s)
                alone.append(u[k])
            assert_trees_close([u[k] for u in together], alone, rtol=1e-12, atol=1e-15)


def test_soap_decays_only_the_masked_leaves():
    params = {"w": torch.ones(2, 2, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    zero = tf.tree_map(torch.zeros_like, params)
    tx = soap(0.1, weight_decay=0.5, mask={"w": True, "b": False})
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(zero, state, params)
        params = tf.apply_updates(params, updates)
    assert (params["w"] < 1).all()
    torch.testing.assert_close(params["b"], torch.ones(2, dtype=torch.float64))
