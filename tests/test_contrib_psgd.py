"""PSGD Kron (`torchopt_fn.contrib._psgd`) against a float64 reference loop written from
Li's paper and kron_torch's pseudocode (per leaf, unbatched, explicit matrices, the same random
draws fed in), its whitening, its randomness, and compile/vmap behaviour the battery does not
cover."""

from __future__ import annotations

import math

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn._record import recorded_arguments
from torchopt_fn.contrib import (
    PSGDKronState,
    _psgd,
    precond_update_prob_schedule,
    psgd_kron,
    scale_by_psgd_kron,
)
from torchopt_fn.transforms._adding import _path_seed
from torchopt_fn.tree._flatten import leaf_paths, tree_leaves

F64 = torch.float64


# --------------------------------------------------------------------------- the reference


def _lower_bound(a: torch.Tensor) -> torch.Tensor:
    """Li's cheap lower bound of the spectral norm, as psgd_jax writes it (rows and columns)."""
    max_abs = a.abs().max()
    if max_abs == 0:
        return max_abs
    a = a / max_abs
    aa = a * a
    s0, s1 = aa.sum(0), aa.sum(1)
    i, j = int(s0.argmax()), int(s1.argmax())
    if s0[i] > s1[j]:
        x = a[:, i] @ a
        return max_abs * torch.linalg.vector_norm((x / torch.linalg.vector_norm(x)) @ a.T)
    x = a @ a[j]
    return max_abs * torch.linalg.vector_norm(a.T @ (x / torch.linalg.vector_norm(x)))


def _full(q: torch.Tensor) -> torch.Tensor:
    return q if q.dim() == 2 else torch.diag(q)


def _reference(params, grad_fn, steps, *, lr, b1, prob, seed, balance_prob, one_diag=False):
    """kron's step on 0-, 1- and 2-d leaves, one leaf at a time, with explicit matrices."""
    key = torch.tensor(seed)
    tiny, damping = torch.finfo(F64).tiny, math.sqrt(torch.finfo(torch.float32).eps)
    names = list(params)
    words = {path[0]: _path_seed(path) for path in leaf_paths(params)}
    mu = {n: torch.zeros_like(p) for n, p in params.items()}
    qs = {}
    for n, p in params.items():
        dims = tuple(p.shape) or (1,)
        diag = [p.dim() < 2 or d == 1 for d in dims]
        if one_diag and p.dim() == 2:
            diag[max(range(2), key=lambda i: (dims[i], i))] = True
        qs[n] = [
            torch.ones(d, dtype=F64) if dg else torch.eye(d, dtype=F64) for d, dg in zip(dims, diag)
        ]
    fits = []
    for t in range(1, steps + 1):
        count = torch.tensor(t - 1)
        step_word = _psgd._step_word(key, count)
        u_fit, u_balance = _psgd._coins(step_word).tolist()
        fit, balance = u_fit < prob, u_balance < balance_prob
        fits.append(fit)
        grads = grad_fn(params)
        new = {}
        for n in names:
            g = grads[n]
            mu[n] = b1 * mu[n] + (1 - b1) * g
            m = (mu[n] / (1 - b1**t)).reshape(tuple(g.shape) or (1,))
            if m.dim() == 1:  # a vector is a column: one factor
                m = m[:, None]
            if fit:
                if balance and len(qs[n]) > 1:
                    norms = [q.abs().max() for q in qs[n]]
                    mean = math.prod(norms) ** (1 / len(norms))
                    qs[n] = [q * (mean / nrm) for q, nrm in zip(qs[n], norms)]
                v = _psgd._probe(step_word, torch.tensor([words[n]]), tuple(g.shape) or (1,), F64)[
                    0
                ]
                v = v.reshape(m.shape)
                h = m + damping * m.abs().mean() * v
                left = _full(qs[n][0])
                right = _full(qs[n][1]) if len(qs[n]) > 1 else torch.ones(1, 1, dtype=F64)
                a = left @ h @ right.T
                b = torch.linalg.inv(left).T @ v @ torch.linalg.inv(right)
                grams = [(a @ a.T, b @ b.T), (a.T @ a, b.T @ b)]
                for k, q in enumerate(qs[n]):
                    t1, t2 = grams[k]
                    if q.dim() == 2:
                        step = torch.triu(t1 - t2) / (_lower_bound(t1 + t2) + tiny)
                        qs[n][k] = q - 0.1 * step @ q
                    else:
                        d1, d2 = torch.diagonal(t1), torch.diagonal(t2)
                        qs[n][k] = q - 0.1 * (d1 - d2) / ((d1 + d2).abs().max() + tiny) * q
            left = _full(qs[n][0])
            right = _full(qs[n][1]) if len(qs[n]) > 1 else torch.ones(1, 1, dtype=F64)
            u = left.T @ left @ m @ right.T @ right
            u = u / max(1.0, float(u.square().mean().sqrt()) / 1.1)
            new[n] = params[n] - lr * u.reshape(g.shape)
        params = new
    return params, qs, fits


def _model_grads(params):
    """Gradients of a small two-layer model's loss (two matrix shapes, a bias, a scale)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 4, generator=gen, dtype=F64)
    y = torch.randn(8, 2, generator=gen, dtype=F64)

    def loss(p):
        hidden = torch.tanh(x @ p["w1"].T + p["b"]) + torch.tanh(x @ p["w2"].T)
        return ((p["s"] * hidden @ p["w3"] - y) ** 2).mean()

    return torch.func.grad(loss)(params)


def _model_params():
    gen = torch.Generator().manual_seed(0)
    shapes = {"w1": (5, 4), "w2": (5, 4), "w3": (5, 2), "b": (5,), "s": ()}
    return {n: 0.5 * torch.randn(s, generator=gen, dtype=F64) for n, s in shapes.items()}


@pytest.mark.parametrize("memory_save_mode", [None, "one_diag"])
def test_psgd_kron_matches_a_float64_reference_loop(monkeypatch, memory_save_mode):
    # Rescaling coins come up 1 in 100 fits; make them frequent to test that path too.
    monkeypatch.setattr(_psgd, "_BALANCE_PROBABILITY", 0.3)
    steps, kwargs = 15, {"b1": 0.9, "seed": 7}
    params = _model_params()
    want, want_qs, fits = _reference(
        params,
        _model_grads,
        steps,
        lr=0.05,
        prob=0.6,
        balance_prob=0.3,
        one_diag=memory_save_mode == "one_diag",
        **kwargs,
    )
    assert 0 < sum(fits) < steps  # steps that fit Q and steps that don't
    tx = psgd_kron(
        0.05, preconditioner_update_probability=0.6, memory_save_mode=memory_save_mode, **kwargs
    )
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(_model_grads(params), state, params)
        params = tf.apply_updates(params, updates)
    assert_trees_close(params, want, rtol=1e-10, atol=1e-13)
    got_qs = state[0].qs_preconditioners
    assert_trees_close(got_qs, want_qs, rtol=1e-10, atol=1e-13)


def test_psgd_kron_rescales_factors_on_the_balance_coin(monkeypatch):
    # With every fit rescaling first, the factors of a matrix end with equal max-norms
    # before their last fit step; a fit moves them by at most ~precond_lr.
    monkeypatch.setattr(_psgd, "_BALANCE_PROBABILITY", 1.0)
    tx = scale_by_psgd_kron(preconditioner_update_probability=1.0, precond_init_scale=9.0)
    state = tx.init({"w": torch.zeros(3, 4, dtype=F64)})
    state = state._replace(
        qs_preconditioners={"w": [q * s for q, s in zip(state.qs_preconditioners["w"], (4, 0.25))]}
    )
    _, state = tx.update({"w": torch.ones(3, 4, dtype=F64)}, state)
    n1, n2 = (q.abs().max() for q in state.qs_preconditioners["w"])
    assert 0.8 < float(n1 / n2) < 1.25


# --------------------------------------------------------------------------- behaviour


def test_psgd_kron_whitens_a_quadratic_towards_the_inverse_hessian():
    """Gradients of $\\frac12 x^\\top H x$ at random points have covariance $H^2$; the
    whitening fit drives $Q^\\top Q$ to $H^{-1}$ (here Kronecker structured, cond 100)."""
    gen = torch.Generator().manual_seed(1)

    def spd(n: int, scale: float) -> torch.Tensor:
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
        return scale * q @ torch.diag(torch.logspace(-0.5, 0.5, n, dtype=F64)) @ q.T

    h1, h2 = spd(3, 0.1), spd(4, 0.5)
    chol = torch.linalg.cholesky(torch.kron(h1, h2))
    tx = scale_by_psgd_kron(b1=0.0, preconditioner_update_probability=1.0)
    state = tx.init({"w": torch.zeros(3, 4, dtype=F64)})

    def spectrum(state: PSGDKronState) -> torch.Tensor:
        q1, q2 = state.qs_preconditioners["w"]
        p = torch.kron(q1.T @ q1, q2.T @ q2)
        return torch.linalg.eigvalsh(chol.T @ p @ chol)  # of P H

    assert float(spectrum(state).max()) < 0.5  # P = I is far from H^{-1}
    for _ in range(150):
        x = torch.randn(3, 4, generator=gen, dtype=F64)
        _, state = tx.update({"w": h1 @ x @ h2}, state)
    w = spectrum(state)
    assert float(w.min()) > 0.4 and float(w.max()) < 2.0


def test_psgd_kron_same_seed_same_trajectory_other_seed_another():
    params = _model_params()

    def run(seed: int) -> list:
        tx = psgd_kron(0.05, preconditioner_update_probability=0.5, seed=seed)
        state, p, out = tx.init(params), params, []
        for _ in range(4):
            u, state = tx.update(_model_grads(p), state, p)
            p = tf.apply_updates(p, u)
            out.append(u)
        return out

    a = run(1)
    assert_trees_close(a, run(1), rtol=0, atol=0)
    assert not torch.allclose(a[-1]["w1"], run(2)[-1]["w1"])


def test_psgd_kron_draws_are_standard_normal_and_coins_uniform():
    step = _psgd._step_word(torch.tensor(3), torch.tensor(11))
    z = _psgd._probe(step, torch.tensor([1, 2**62 + 5]), (200, 101), F64)
    assert z.shape == (2, 200, 101)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.var()) - 1) < 0.02
    assert abs(float(torch.corrcoef(z.flatten(1))[0, 1])) < 0.02  # two leaves, independent
    coins = torch.func.vmap(lambda t: _psgd._coins(_psgd._step_word(torch.tensor(0), t)))(
        torch.arange(4000)
    )
    assert abs(float((coins < 0.03).double().mean()) - 0.03) < 0.01
    assert abs(float(coins.mean()) - 0.5) < 0.02


def test_psgd_kron_leaf_draws_do_not_depend_on_the_other_leaves():
    """Leaves batched by shape give each leaf what it gets alone (its draws follow its path)."""
    gen = torch.Generator().manual_seed(0)
    g = {k: torch.randn(3, 4, generator=gen, dtype=F64) for k in ("a", "b", "c")}
    tx = scale_by_psgd_kron(preconditioner_update_probability=1.0)
    together, _ = tx.update(g, tx.init(g))
    alone, _ = tx.update({"b": g["b"]}, tx.init({"b": g["b"]}))
    torch.testing.assert_close(together["b"], alone["b"], rtol=1e-13, atol=1e-15)
    none_a = {**g, "a": None}
    partial, _ = tx.update(none_a, tx.init(g))
    torch.testing.assert_close(partial["b"], together["b"], rtol=1e-13, atol=1e-15)


def test_psgd_kron_compiles_once_over_steps_that_fit_and_steps_that_do_not():
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 4), "v": (3, 4), "b": (3,)}
    grads = [
        {k: torch.randn(s, generator=gen, dtype=F64) for k, s in shapes.items()} for _ in range(6)
    ]
    tx = scale_by_psgd_kron(preconditioner_update_probability=0.5, seed=7)
    key = torch.tensor(7)
    fits = [float(_psgd._coins(_psgd._step_word(key, torch.tensor(t)))[0]) < 0.5 for t in range(6)]
    assert any(fits[1:]) and not all(fits[1:])
    eager, eager_state = [], tx.init(grads[0])
    for g in grads:
        u, eager_state = tx.update(g, eager_state)
        eager.append(u)
    torch._dynamo.reset()
    step = torch.compile(tx.update, backend="aot_eager", fullgraph=True)
    state, compiled = tx.init(grads[0]), []
    for i, g in enumerate(grads):
        if i == 0:
            u, state = step(g, state)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                u, state = step(g, state)
        compiled.append(u)
    assert_trees_close((compiled, state), (eager, eager_state), rtol=1e-12)


def test_psgd_kron_vmap_over_seeds_equals_a_loop():
    g = {"w": torch.randn(3, 4, dtype=F64), "b": torch.randn(3, dtype=F64)}
    tx = scale_by_psgd_kron(preconditioner_update_probability=0.5)
    states = [tx.init(g)._replace(rng_key=torch.tensor(s)) for s in range(3)]
    want = []
    for s in states:
        for _ in range(3):
            u, s = tx.update(g, s)
        want.append(u)
    stacked = tf.tree_map(lambda *xs: torch.stack(xs), *states)
    step = torch.func.vmap(tx.update, in_dims=(None, 0))
    for _ in range(3):
        u, stacked = step(g, stacked)
    for i, w in enumerate(want):
        assert_trees_close(tf.tree_map(lambda x, i=i: x[i], u), w, rtol=1e-12)
    assert not torch.allclose(want[0]["w"], want[1]["w"])


# --------------------------------------------------------------------------- configuration


def test_psgd_kron_factor_kinds_follow_kron():
    def kinds(shape, **kw):
        qs = scale_by_psgd_kron(**kw).init({"p": torch.zeros(shape)}).qs_preconditioners["p"]
        return [tuple(q.shape) for q in qs]

    assert kinds((3, 4)) == [(3, 3), (4, 4)]
    assert kinds((5,)) == [(5,)] and kinds(()) == [(1,)]
    assert kinds((1, 4)) == [(1,), (4, 4)]
    assert kinds((3, 9), max_size_triangular=8) == [(3, 3), (9,)]
    assert kinds((3, 4), min_ndim_triangular=3) == [(3,), (4,)]
    assert kinds((4, 3), memory_save_mode="one_diag") == [(4,), (3, 3)]
    assert kinds((4, 4), memory_save_mode="one_diag") == [(4, 4), (4,)]
    assert kinds((4, 4), memory_save_mode="smart_one_diag") == [(4, 4), (4, 4)]
    assert kinds((3, 4), memory_save_mode="all_diag") == [(3,), (4,)]
    q = scale_by_psgd_kron(precond_init_scale=4.0).init({"p": torch.zeros(2, 2)})
    torch.testing.assert_close(q.qs_preconditioners["p"][0], 2.0 * torch.eye(2))


def test_psgd_kron_defaults_are_krons():
    sched = precond_update_prob_schedule()
    assert [round(float(sched(torch.tensor(t))), 4) for t in (0, 500, 1500, 4000, 10**5)] == [
        1.0,
        1.0,
        0.3679,
        0.0302,
        0.03,
    ]
    args = recorded_arguments(psgd_kron())
    assert args is not None
    assert (args["learning_rate"], args["b1"], args["weight_decay"]) == (0.001, 0.9, 0.0)
    assert (args["max_size_triangular"], args["min_ndim_triangular"]) == (8192, 2)
    assert (args["precond_lr"], args["precond_init_scale"]) == (0.1, 1.0)
    assert args["memory_save_mode"] is None and args["momentum_into_precond_update"] is True


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"b1": 1.0}, "b1"),
        ({"preconditioner_update_probability": 1.5}, "preconditioner_update_probability"),
        ({"precond_lr": -0.1}, "precond_lr"),
        ({"precond_init_scale": 0.0}, "precond_init_scale"),
        ({"max_size_triangular": -1}, "max_size_triangular"),
        ({"min_ndim_triangular": 1.5}, "min_ndim_triangular"),
        ({"memory_save_mode": "diag"}, "memory_save_mode"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_psgd_kron_refuses_bad_hyperparameters_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        scale_by_psgd_kron(**kwargs)


def test_psgd_kron_refuses_complex_parameters():
    with pytest.raises(ValueError, match="complex"):
        scale_by_psgd_kron().init({"w": torch.zeros(2, 2, dtype=torch.complex64)})


def test_psgd_kron_leaves_no_state_change_for_none_and_ignores_empty_leaves():
    params = {"w": torch.ones(2, 3, dtype=F64), "e": torch.ones(0, 3, dtype=F64)}
    tx = scale_by_psgd_kron(preconditioner_update_probability=1.0)
    state = tx.init(params)
    u, new = tx.update({"w": None, "e": torch.ones(0, 3, dtype=F64)}, state)
    assert u["w"] is None and u["e"].shape == (0, 3)
    assert_trees_close(new.qs_preconditioners, state.qs_preconditioners, rtol=0, atol=0)
    assert all(torch.isfinite(x).all() for x in tree_leaves(new) if x.is_floating_point())
