"""Research optimizers optax lacks (LaProp, cautious optimizers, MARS), each against a float64
reference loop written from its paper (and the authors' code where the paper leaves a
choice), and, where heavyball is installed, against heavyball's float64 trajectories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn.contrib import (
    caution,
    cautious_adamw,
    cautious_lion,
    laprop,
    mars,
    scale_by_laprop,
    scale_by_mars,
)

F64 = torch.float64
STEPS = 12
Params = dict[str, torch.Tensor]


def _problem(seed: int = 0) -> tuple[Params, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = {
        "w": torch.randn(2, 3, generator=gen, dtype=F64),
        "b": torch.randn(3, generator=gen, dtype=F64),
    }
    return params, torch.randn(3, 3, generator=gen, dtype=F64)


def _grads(params: Params, a: torch.Tensor, scale: float) -> Params:
    """The gradient of a small non-convex loss, whose signs change along the trajectory."""
    p = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = (p["w"] @ a).sin().square().sum() + (p["b"] @ a).cos().sum() + 0.1 * (p["w"] ** 4).sum()
    gw, gb = torch.autograd.grad(scale * loss, (p["w"], p["b"]))
    return {"w": gw, "b": gb}


def _run(tx: tf.GradientTransformation, scale: float = 1.0) -> list[Params]:
    """The params after each of `STEPS` steps of ``tx``."""
    params, a = _problem()
    state = tx.init(params)
    out = []
    for _ in range(STEPS):
        updates, state = tx.update(_grads(params, a, scale), state, params)
        params = tf.apply_updates(params, updates)
        out.append(params)
    return out


def _reference(
    step: Callable[[int, str, torch.Tensor, torch.Tensor, dict], torch.Tensor],
    scale: float = 1.0,
) -> list[Params]:
    """The params after each step of a per-tensor loop: ``step(t, name, p, g, slots)`` returns
    the new ``p`` (``t`` from 1; ``slots`` the tensor's own dict of state)."""
    params, a = _problem()
    slots: dict[str, dict] = {k: {} for k in params}
    out = []
    for t in range(1, STEPS + 1):
        grads = _grads(params, a, scale)
        params = {k: step(t, k, params[k], grads[k], slots[k]) for k in params}
        out.append(params)
    return out


# --------------------------------------------------------------------------- LaProp


def test_laprop_matches_the_papers_algorithm_with_a_schedule_and_decay():
    b1, b2, eps, wd = 0.8, 0.95, 1e-8, 0.1
    lr = lambda t: 0.05 / (1 + 0.1 * t)  # noqa: E731  # of the 1-based step

    def step(t, name, p, g, s):
        # Ziyin et al., Algorithm 1: n, c_n, then the momentum of the normalised gradient.
        s["n"] = b2 * s.get("n", 0.0) + (1 - b2) * g * g
        s["cn"] = b2 * s.get("cn", 0.0) + (1 - b2)
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g / (torch.sqrt(s["n"] / s["cn"]) + eps)
        s["cm"] = b1 * s.get("cm", 0.0) + (1 - b1)
        return p - lr(t) * (s["m"] / s["cm"] + wd * p)

    schedule = lambda count: 0.05 / (1 + 0.1 * (count.to(F64) + 1))  # noqa: E731  # 0-based count
    got = _run(laprop(schedule, b1, b2, eps, weight_decay=wd))
    assert_trees_close(got, _reference(step), rtol=1e-12)


def test_laprop_stays_bounded_where_adam_blows_up():
    """The paper's point: with beta1^2 > beta2, after one large gradient and small ones Adam's
    slow momentum over its fast-forgetting second moment grows without bound; LaProp's
    update stays below 1 / sqrt(1 - beta2)."""
    b1, b2 = 0.99, 0.5
    laprop_tx, adam_tx = scale_by_laprop(b1, b2), tf.scale_by_adam(b1, b2)
    params = {"w": torch.zeros(1, dtype=F64)}
    s_l, s_a = laprop_tx.init(params), adam_tx.init(params)
    for g in [1.0] + [1e-6] * 30:
        u_l, s_l = laprop_tx.update({"w": torch.tensor([g], dtype=F64)}, s_l)
        u_a, s_a = adam_tx.update({"w": torch.tensor([g], dtype=F64)}, s_a)
        assert float(u_l["w"].abs()) <= 1 / (1 - b2) ** 0.5
    assert float(u_a["w"].abs()) > 100


# --------------------------------------------------------------------------- caution


def _cautious(u: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """Liang et al.'s mask on a descent direction ``u`` (the step is ``-lr * u``)."""
    m = (u * g > 0).to(u.dtype)
    return u * m / torch.clamp(m.mean(), min=eps)


def test_cautious_adamw_matches_the_authors_c_adamw():
    lr, b1, b2, eps, wd, c_eps = 0.05, 0.9, 0.99, 1e-8, 0.1, 1e-3

    def step(t, name, p, g, s):
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
        u = (s["m"] / (1 - b1**t)) / (torch.sqrt(s["v"] / (1 - b2**t)) + eps)
        return p - lr * (_cautious(u, g, c_eps) + wd * p)  # the decay is not masked

    got = _run(cautious_adamw(lr, b1, b2, eps, weight_decay=wd, caution_eps=c_eps))
    assert_trees_close(got, _reference(step), rtol=1e-12)


def test_cautious_lion_matches_the_authors_c_lion():
    lr, b1, b2, wd = 0.02, 0.9, 0.99, 0.1

    def step(t, name, p, g, s):
        m = s.get("m", torch.zeros_like(p))
        u = torch.sign(b1 * m + (1 - b1) * g)
        s["m"] = b2 * m + (1 - b2) * g
        return p - lr * (_cautious(u, g, 1e-3) + wd * p)

    got = _run(cautious_lion(lr, b1, b2, weight_decay=wd))
    assert_trees_close(got, _reference(step), rtol=1e-12)


def test_caution_of_a_whole_optimizer_masks_its_negated_updates():
    lr, mu = 0.05, 0.9

    def step(t, name, p, g, s):
        s["buf"] = g + mu * s.get("buf", 0.0)  # torch's (and optax's) heavy-ball momentum
        return p - lr * _cautious(s["buf"], g, 1e-3)

    got = _run(caution(tf.sgd(lr, momentum=mu)))
    assert_trees_close(got, _reference(step), rtol=1e-12)


def test_caution_sign_convention_follows_the_learning_rate_stage():
    lr = 0.05
    whole = caution(tf.chain(tf.scale_by_adam(), tf.scale_by_learning_rate(lr)))
    direction = tf.chain(caution(tf.scale_by_adam(), negated=False), tf.scale_by_learning_rate(lr))
    assert_trees_close(_run(whole), _run(direction), rtol=1e-14)


def test_caution_drops_everything_without_dividing_by_zero():
    tx = caution(tf.sgd(1.0, momentum=0.9))
    params = {"w": torch.zeros(3, dtype=F64)}
    _, state = tx.update({"w": torch.ones(3, dtype=F64)}, tx.init(params), params)
    u, _ = tx.update({"w": torch.full((3,), -0.1, dtype=F64)}, state, params)
    assert torch.equal(u["w"], torch.zeros(3, dtype=F64))


# --------------------------------------------------------------------------- MARS


def _mars_c(g: torch.Tensor, s: dict, b1: float, gamma: float) -> torch.Tensor:
    """Yuan et al.'s corrected, clipped gradient (MARS-approx; the last gradient starts at 0)."""
    c = g + gamma * b1 / (1 - b1) * (g - s.get("last", torch.zeros_like(g)))
    s["last"] = g
    s["clipped"] = s.get("clipped", False) or bool(torch.linalg.vector_norm(c) > 1)
    return c / torch.linalg.vector_norm(c) if torch.linalg.vector_norm(c) > 1 else c


@pytest.mark.parametrize("optimize_1d", [False, True])
def test_mars_adamw_matches_the_papers_algorithm_with_the_authors_defaults(optimize_1d: bool):
    lr, b1, b2, eps, wd, gamma = 3e-3, 0.95, 0.99, 1e-8, 0.0, 0.025
    lr1, b1_1d, b2_1d, wd1 = 3e-3, 0.9, 0.95, 0.1  # AdamW for the vector when not optimize_1d
    clipped = []

    def step(t, name, p, g, s):
        if name == "b" and not optimize_1d:
            s["m"] = b1_1d * s.get("m", 0.0) + (1 - b1_1d) * g
            s["v"] = b2_1d * s.get("v", 0.0) + (1 - b2_1d) * g * g
            u = (s["m"] / (1 - b1_1d**t)) / (torch.sqrt(s["v"] / (1 - b2_1d**t)) + eps)
            return p - lr1 * (u + wd1 * p)
        c = _mars_c(g, s, b1, gamma)
        clipped.append(s["clipped"])
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * c
        s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * c * c
        u = (s["m"] / (1 - b1**t)) / (torch.sqrt(s["v"] / (1 - b2**t)) + eps)
        return p - lr * (u + wd * p)

    got = _run(mars(optimize_1d=optimize_1d), scale=3.0)
    assert_trees_close(got, _reference(step, scale=3.0), rtol=1e-12)
    assert clipped[-1]  # the clipping branch was taken


def test_mars_lion_matches_the_authors_mars_lion_with_a_gamma_schedule():
    lr, b1, wd = 0.01, 0.9, 0.1
    gamma = lambda t: 0.05 * t  # noqa: E731  # of the 1-based step

    def step(t, name, p, g, s):
        c = _mars_c(g, s, b1, gamma(t))
        s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * c
        return p - lr * (torch.sign(s["m"]) + wd * p)

    schedule = lambda count: 0.05 * (count.to(F64) + 1)  # noqa: E731
    tx = mars(lr, b1, weight_decay=wd, gamma=schedule, mars_type="mars-lion", optimize_1d=True)
    assert_trees_close(_run(tx, scale=3.0), _reference(step, scale=3.0), rtol=1e-12)


def test_mars_needs_no_second_moment_for_lion():
    state = scale_by_mars(mars_type="mars-lion").init({"w": torch.zeros(2)})
    assert state.nu == tf.EmptyState()


# --------------------------------------------------------------------------- shared


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: scale_by_laprop(b1=1.0), "b1"),
        (lambda: laprop(0.1, b2=-0.1), "b2"),
        (lambda: laprop(0.1, weight_decay=-1.0), "weight_decay"),
        (lambda: caution(tf.adamw(0.1), eps=0.0), "eps"),
        (lambda: cautious_adamw(0.1, caution_eps=-1.0), "eps"),
        (lambda: scale_by_mars(gamma=-0.1), "gamma"),
        (lambda: mars(b1=1.0), "b1"),
        (lambda: mars(mars_type="mars-shampoo"), "mars_type"),
    ],
)
def test_invalid_hyperparameters_are_refused_naming_the_argument(make: Callable, match: str):
    with pytest.raises(ValueError, match=match):
        make()


def test_mars_gamma_schedule_compiles_without_recompiling():
    # (the common battery compiles every transform with fixed hyperparameters)
    tx = scale_by_mars(gamma=lambda count: 0.05 / (1 + 0.1 * count.to(F64)))
    params, a = _problem()
    torch._dynamo.reset()
    step = torch.compile(tx.update, backend="aot_eager", fullgraph=True)
    state, eager_state = tx.init(params), tx.init(params)
    for i in range(3):
        grads = _grads(params, a, 3.0)
        with torch.compiler.set_stance("fail_on_recompile" if i else "default"):
            u, state = step(grads, state, params)
        want, eager_state = tx.update(grads, eager_state, params)
        assert_trees_close(u, want, rtol=1e-12)


# --------------------------------------------------------------------------- heavyball


def _heavyball_run(make: Callable[[list], Any]) -> list[Params]:
    params, a = _problem()
    ps = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}
    opt = make([ps["w"], ps["b"]])
    out = []
    for _ in range(STEPS):
        grads = _grads({k: v.detach() for k, v in ps.items()}, a, 1.0)
        for k, p in ps.items():
            p.grad = grads[k]
        opt.step()
        out.append({k: v.detach().clone() for k, v in ps.items()})
    return out


# heavyball keeps its learning rate (and the decay) as float32 tensors: these are exact there.
_LR, _WD = 0.0625, 0.125


def test_laprop_matches_heavyball_laprop():
    heavyball = pytest.importorskip("heavyball")
    # heavyball clamps the denominator at eps where the paper adds eps: equal at eps=0.
    want = _heavyball_run(
        lambda ps: heavyball.LaProp(
            ps, lr=_LR, betas=(0.9, 0.99), eps=0.0, weight_decay=_WD, storage_dtype="float64"
        )
    )
    got = _run(laprop(_LR, 0.9, 0.99, eps=0.0, weight_decay=_WD))
    assert_trees_close(got, want, rtol=1e-12)


def test_cautious_adamw_matches_heavyball_adamw_with_caution():
    heavyball = pytest.importorskip("heavyball")
    want = _heavyball_run(
        lambda ps: heavyball.AdamW(
            ps,
            lr=_LR,
            betas=(0.9, 0.99),
            eps=0.0,
            weight_decay=_WD,
            caution=True,
            storage_dtype="float64",
        )
    )
    # heavyball rescales by numel / max(kept, 1) (eps below 1/numel here: the same), but
    # computes that ratio in float32, hence the tolerance.
    got = _run(cautious_adamw(_LR, 0.9, 0.99, eps=0.0, weight_decay=_WD, caution_eps=1e-9))
    assert_trees_close(got, want, rtol=1e-5)


_MOMENT_ALIASES = {
    "adopt": lambda **k: tf.contrib.adopt(0.01, **k),
    "ademamix": lambda **k: tf.contrib.ademamix(0.01, **k),
    "laprop": lambda **k: tf.contrib.laprop(0.01, **k),
    "mars": lambda **k: tf.contrib.mars(0.01, **k),
    "sophia": lambda **k: tf.contrib.sophia(0.01, update_interval=1, **k),
    "cautious_adamw": lambda **k: tf.contrib.cautious_adamw(0.01, **k),
}


@pytest.mark.parametrize("name", list(_MOMENT_ALIASES))
def test_contrib_moment_aliases_take_nu_dtype_and_state_dtype(name):
    """First moments (mu, m1, m2, ema) follow ``mu_dtype``, second ones (nu) ``nu_dtype``,
    both ``state_dtype``; the run stays finite and near float32's."""
    params = {
        "w": torch.randn(4, 3, generator=torch.Generator().manual_seed(0)),
        "b": torch.zeros(3),
    }

    def objective(p):
        return sum((x**2).sum() for x in tf.tree_leaves(p))

    def run(**kwargs):
        tx = _MOMENT_ALIASES[name](**kwargs)
        p, state = params, tx.init(params)
        for _ in range(3):
            grads = torch.func.grad(objective)(p)
            updates, state = tx.update(grads, state, p, obj_fn=objective)
            p = tf.apply_updates(p, updates)
        return p, tf.tree_state_dict(state)

    def moment_dtypes(state, kind):
        fields = {"nu"} if kind == "second" else {"mu", "m1", "m2", "ema"}
        return {x.dtype for key, x in state.items() if x.dim() and fields & set(key.split("."))}

    full, _ = run()
    low, bf16_state = run(state_dtype=torch.bfloat16)
    _, f64_state = run(nu_dtype=torch.float64)
    assert moment_dtypes(bf16_state, "first") == {torch.bfloat16}
    assert moment_dtypes(bf16_state, "second") == {torch.bfloat16}
    assert moment_dtypes(f64_state, "first") == {torch.float32}
    assert moment_dtypes(f64_state, "second") == {torch.float64}
    for k in params:
        torch.testing.assert_close(low[k], full[k], rtol=0, atol=0.05)
