"""Tests of `transforms._factored`, `transforms._special` and `transforms._misc`.

Each transform is checked against (1) a reference loop written here in plain float64 torch from
the paper's equations (with optax's conventions where the paper leaves a choice), (2) optax
0.2.8's own trajectories (``tests/goldens/optax_goldens.json``), and then for `None` leaves,
dtypes, hyperparameter validation, ``torch.compile(fullgraph=True)`` without recompiles and
``torch.func.vmap``. Rprop is checked against `torch.optim.Rprop` instead of optax, whose
0.2.8 version applies each update one step late; `add_noise` for reproducibility and variance.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN, GOLDENS_PATH, run_steps
from torchopt_fn.tree import _flatten

F64 = torch.float64
STEPS = 12
LR = -0.05  # the goldens chain every transform with scale(-0.05)

Params = dict[str, torch.Tensor]
Reference = Callable[..., list[Params]]


def _clone(p: Params) -> Params:
    return {k: v.clone() for k, v in p.items()}


def _trajectory(tx: tf.GradientTransformation, steps: int = STEPS, value: bool = False):
    """Our params after each step of ``tx`` on the goldens' problem."""
    params = GOLDEN.init_params(F64)
    state = tx.init(params)
    out = []
    for _ in range(steps):
        params, state = run_steps(tx, params, GOLDEN.grad, 1, GOLDEN.loss if value else None, state)
        out.append(_clone(params))
    return out


def _assert_trajectories_close(ours: list[Params], expected: list[Params], rtol: float) -> None:
    assert len(ours) == len(expected)
    for step, (a, b) in enumerate(zip(ours, expected)):
        for k in b:
            torch.testing.assert_close(
                a[k].reshape(-1), b[k].reshape(-1), rtol=rtol, atol=1e-14, msg=f"step {step} {k}"
            )


# --------------------------------------------------------------------------- references
# Each runs `STEPS` steps of p <- p + LR * u with the transform's update u, per leaf.


def _reference(update: Callable[[dict, Params, Params, int, Any], Params]) -> Reference:
    """Drive ``update(state, grads, params, step, value) -> u`` (state: a dict it may mutate)."""

    def run(steps: int = STEPS, scale_first: bool = False, **kwargs: Any) -> list[Params]:
        p = GOLDEN.init_params(F64)
        state: dict[str, Any] = {"kw": kwargs}
        out = []
        for t in range(steps):
            g = GOLDEN.grad(p)
            if scale_first:
                u = update(state, {k: LR * v for k, v in g.items()}, p, t, GOLDEN.loss(p))
                p = {k: p[k] + u[k] for k in p}
            else:
                u = update(state, g, p, t, GOLDEN.loss(p))
                p = {k: p[k] + LR * u[k] for k in p}
            out.append(_clone(p))
        return out

    return run


@_reference
def ref_factored_rms(state, g, p, t, value):
    """Shazeer & Stern, Alg. 4: row/column sums R, C of G = g^2 + eps1; V = R C^T / 1^T R."""
    kw = {"decay_rate": 0.8, "step_offset": 0, "min_dim_size_to_factor": 128, "epsilon": 1e-30}
    kw.update(state["kw"])
    beta = 1.0 - (t - kw["step_offset"] + 1.0) ** (-kw["decay_rate"])
    u = {}
    for k, gk in g.items():
        G = gk**2 + kw["epsilon"]
        if gk.dim() == 2 and min(gk.shape) >= kw["min_dim_size_to_factor"]:
            R = beta * state.get(("R", k), 0.0) + (1 - beta) * G.sum(dim=1)
            C = beta * state.get(("C", k), 0.0) + (1 - beta) * G.sum(dim=0)
            state[("R", k)], state[("C", k)] = R, C
            V = torch.outer(R, C) / R.sum()
        else:
            V = beta * state.get(("V", k), 0.0) + (1 - beta) * G
            state[("V", k)] = V
        u[k] = gk / V.sqrt()
    return u


@_reference
def ref_sm3(state, g, p, t, value):
    """Anil et al., SM3-II with cover sets = rows and columns, plus optax's momentum and eps."""
    kw = {"b1": 0.9, "b2": 1.0, "eps": 1e-8}
    kw.update(state["kw"])
    c = 1.0 if kw["b2"] == 1.0 else 1.0 - kw["b2"]
    u = {}
    for k, gk in g.items():
        if gk.dim() == 2:
            rows = state.get(("row", k), torch.zeros(gk.shape[0], dtype=F64))
            cols = state.get(("col", k), torch.zeros(gk.shape[1], dtype=F64))
            nu = c * gk**2 + kw["b2"] * torch.minimum(rows[:, None], cols[None, :])
            state[("row", k)], state[("col", k)] = nu.amax(dim=1), nu.amax(dim=0)
        else:
            nu = c * gk**2 + kw["b2"] * state.get(("acc", k), torch.zeros_like(gk))
            state[("acc", k)] = nu
        scaled = torch.where(nu > 0, gk / (nu + kw["eps"]).sqrt(), torch.zeros_like(gk))
        m = kw["b1"] * state.get(("m", k), torch.zeros_like(gk)) + (1 - kw["b1"]) * scaled
        state[("m", k)] = m
        u[k] = m
    return u


@_reference
def ref_trust_ratio(state, g, p, t, value):
    """LARS/LAMB trust ratio per leaf: eta * max(|p|, m) / (max(|g|, m) + eps), 1 at a zero norm."""
    kw = {"min_norm": 0.0, "trust_coefficient": 1.0, "eps": 0.0}
    kw.update(state["kw"])
    u = {}
    for k in g:
        pn = max(p[k].norm().item(), kw["min_norm"])
        gn = max(g[k].norm().item(), kw["min_norm"])
        ratio = 1.0 if pn == 0 or gn == 0 else kw["trust_coefficient"] * pn / (gn + kw["eps"])
        u[k] = g[k] * ratio
    return u


@_reference
def ref_optimistic(state, g, p, t, value):
    """Optimistic gradient: (alpha + beta) g_t - beta g_{t-1}, with g_0 := g_1."""
    alpha, beta = state["kw"].get("alpha", 1.0), state["kw"].get("beta", 1.0)
    prev = state.get("prev", g)
    state["prev"] = g
    return {k: (alpha + beta) * g[k] - beta * prev[k] for k in g}


@_reference
def ref_polyak(state, g, p, t, value):
    """Stochastic Polyak step: min((f - f*) / (|g|^2 + eps), gamma_max), SPS+ clips the gap."""
    kw = {"f_min": 0.0, "max_learning_rate": 1.0, "eps": 0.0, "variant": "sps"}
    kw.update(state["kw"])
    sq = sum(float((v**2).sum()) for v in g.values())
    gap = float(value) - kw["f_min"]
    if kw["variant"] == "sps+":
        gap = max(gap, 0.0)
    step = (
        0.0 if sq + kw["eps"] <= 2.0**-52 else min(gap / (sq + kw["eps"]), kw["max_learning_rate"])
    )
    return {k: step * v for k, v in g.items()}


@_reference
def ref_block_rms(state, g, p, t, value):
    tau = state["kw"]["threshold"]
    return {k: v / max(1.0, float(v.pow(2).mean().sqrt()) / tau) for k, v in g.items()}


@_reference
def ref_agc(state, g, p, t, value):
    """Brock et al.: clip unit-wise to lambda * max(|W_i|, eps); units as in optax (or `axis`)."""
    kw = {"eps": 1e-3, "axis": None}
    kw.update(state["kw"])
    u = {}
    for k, gk in g.items():
        axis = (0 if gk.dim() == 2 else None) if kw["axis"] is None else kw["axis"]

        def norm(x, axis=axis):
            return x.norm() if axis is None else x.norm(dim=axis, keepdim=True)

        max_norm = kw["clipping"] * norm(p[k]).clamp(min=kw["eps"])
        gn = norm(gk)
        u[k] = torch.where(gn < max_norm, gk, gk * max_norm / gn.clamp(min=1e-6))
    return u


@_reference
def ref_centralize(state, g, p, t, value):
    return {k: v - v.mean(dim=1, keepdim=True) if v.dim() == 2 else v for k, v in g.items()}


@_reference
def ref_nonnegative(state, u, p, t, value):
    return {k: torch.where(p[k] + u[k] < 0, -p[k], u[k]) for k in u}


# (transform, kwargs, reference, how the update is fed in)
REFERENCE_CASES = [
    ("scale_by_factored_rms", {}, ref_factored_rms, {}),
    ("scale_by_factored_rms", {"min_dim_size_to_factor": 2}, ref_factored_rms, {}),
    (
        "scale_by_factored_rms",
        {"min_dim_size_to_factor": 3, "decay_rate": 0.5, "step_offset": -2, "epsilon": 1e-3},
        ref_factored_rms,
        {},
    ),
    ("scale_by_sm3", {}, ref_sm3, {}),
    ("scale_by_sm3", {"b1": 0.0, "b2": 0.95, "eps": 1e-4}, ref_sm3, {}),
    ("scale_by_trust_ratio", {}, ref_trust_ratio, {}),
    (
        "scale_by_trust_ratio",
        {"min_norm": 1.0, "trust_coefficient": 0.01, "eps": 1e-3},
        ref_trust_ratio,
        {},
    ),
    ("scale_by_optimistic_gradient", {}, ref_optimistic, {}),
    ("scale_by_optimistic_gradient", {"alpha": 0.5, "beta": 0.8}, ref_optimistic, {}),
    ("scale_by_polyak", {}, ref_polyak, {"value": True}),
    (
        "scale_by_polyak",
        {"f_min": 1.2, "max_learning_rate": 0.1, "eps": 1e-3, "variant": "sps+"},
        ref_polyak,
        {"value": True},
    ),
    ("scale_by_polyak", {"f_min": 1.5}, ref_polyak, {"value": True}),  # negative gap: ascent
    ("scale_by_polyak", {"f_min": 1.5, "variant": "sps+"}, ref_polyak, {"value": True}),
    ("clip_by_block_rms", {"threshold": 0.5}, ref_block_rms, {}),
    ("clip_by_block_rms", {"threshold": 0.05}, ref_block_rms, {}),
    ("adaptive_grad_clip", {"clipping": 0.1}, ref_agc, {}),
    ("adaptive_grad_clip", {"clipping": 0.3, "eps": 0.5, "axis": -1}, ref_agc, {}),
    ("centralize", {}, ref_centralize, {}),
    ("keep_params_nonnegative", {}, ref_nonnegative, {"scale_first": True}),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "reference", "how"),
    REFERENCE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(REFERENCE_CASES)],
)
def test_matches_reference_loop(name, kwargs, reference, how):
    t = getattr(tf, name)(**kwargs)
    scale_first = how.get("scale_first", False)
    tx = tf.chain(tf.scale(LR), t) if scale_first else tf.chain(t, tf.scale(LR))
    expected = reference(scale_first=scale_first, **kwargs)
    _assert_trajectories_close(_trajectory(tx, value=how.get("value", False)), expected, 1e-12)


def test_factored_rms_with_a_float64_schedule_matches_the_paper_exactly():
    def decay(step, rate):
        return 1.0 - (step.to(F64) + 1.0) ** (-rate)

    tx = tf.chain(
        tf.scale_by_factored_rms(min_dim_size_to_factor=2, decay_rate_fn=decay), tf.scale(LR)
    )
    expected = ref_factored_rms(min_dim_size_to_factor=2)
    _assert_trajectories_close(_trajectory(tx), expected, 1e-12)


# --------------------------------------------------------------------------- optax's rprop bug
# (tests/test_optax_goldens.py compares every transform with optax; here: what its rprop golden is)


def ref_rprop_optax_lagged(steps: int = STEPS, learning_rate: float = 0.01) -> list[Params]:
    """optax 0.2.8's scale_by_rprop, bug included: it returns the previous step's update."""
    p = GOLDEN.init_params(F64)
    step_size = {k: torch.full_like(v, learning_rate) for k, v in p.items()}
    prev = {k: torch.zeros_like(v) for k, v in p.items()}
    out = []
    for _ in range(steps):
        g = GOLDEN.grad(p)
        u = {}
        for k in p:
            s = g[k] * prev[k]
            grown = torch.where(s > 0, 1.2 * step_size[k], 0.5 * step_size[k]).clamp(1e-6, 50.0)
            step_size[k] = torch.where(s == 0, step_size[k], grown)
            new = torch.where(s < 0, 0.0, step_size[k] * g[k].sign())
            u[k] = torch.where(s < 0, 0.0, prev[k])
            prev[k] = new
        p = {k: p[k] + LR * u[k] for k in p}
        out.append(_clone(p))
    return out


def test_optax_rprop_golden_is_the_lagged_update_we_do_not_copy():
    case = next(
        c
        for c in json.loads(GOLDENS_PATH.read_text())["cases"]
        if c["id"] == "scale_by_rprop_optax"
    )
    traj = case["trajectory"]
    expected = [{k: torch.tensor(traj[k][s], dtype=F64) for k in traj} for s in range(STEPS)]
    _assert_trajectories_close(ref_rprop_optax_lagged(**case["kwargs"]), expected, 1e-10)


# --------------------------------------------------------------------------- rprop vs torch


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.01},
        # Clipping at both bounds engages on this problem.
        {
            "learning_rate": 0.05,
            "eta_minus": 0.3,
            "eta_plus": 1.5,
            "min_step_size": 1e-2,
            "max_step_size": 0.1,
        },
    ],
)
def test_rprop_matches_torch_optim_rprop(kwargs):
    tx = tf.chain(tf.scale_by_rprop(**kwargs), tf.scale(-1.0))
    ours = _trajectory(tx, steps=40)
    params = GOLDEN.init_params(F64)
    opt = torch.optim.Rprop(
        list(params.values()),
        lr=kwargs["learning_rate"],
        etas=(kwargs.get("eta_minus", 0.5), kwargs.get("eta_plus", 1.2)),
        step_sizes=(kwargs.get("min_step_size", 1e-6), kwargs.get("max_step_size", 50.0)),
    )
    expected = []
    for _ in range(40):
        for p, g in zip(params.values(), GOLDEN.grad(params).values()):
            p.grad = g
        opt.step()
        expected.append(_clone(params))
    _assert_trajectories_close(ours, expected, 1e-12)


def test_rprop_first_update_is_applied_at_once():
    tx = tf.scale_by_rprop(0.1)
    g = {"w": torch.tensor([2.0, -1.0, 0.0], dtype=F64)}
    u, state = tx.update(g, tx.init(g))
    torch.testing.assert_close(u["w"], torch.tensor([0.1, -0.1, 0.0], dtype=F64))
    # A sign flip shrinks the step size and skips the step; the flipped gradient is forgotten.
    u, state = tx.update({"w": torch.tensor([1.0, 1.0, 1.0], dtype=F64)}, state)
    torch.testing.assert_close(u["w"], torch.tensor([0.12, 0.0, 0.1], dtype=F64))
    torch.testing.assert_close(state.step_sizes["w"], torch.tensor([0.12, 0.05, 0.1], dtype=F64))
    u, state = tx.update({"w": torch.tensor([1.0, 1.0, 1.0], dtype=F64)}, state)
    torch.testing.assert_close(u["w"], torch.tensor([0.144, 0.05, 0.12], dtype=F64))


# --------------------------------------------------------------------------- the battery

# name -> factory; every generic test below runs over all of them.
FACTORIES: dict[str, Callable[[], tf.GradientTransformation]] = {
    "scale_by_factored_rms": lambda: tf.scale_by_factored_rms(min_dim_size_to_factor=2),
    "scale_by_sm3": tf.scale_by_sm3,
    "scale_by_trust_ratio": tf.scale_by_trust_ratio,
    "scale_by_optimistic_gradient": tf.scale_by_optimistic_gradient,
    "scale_by_polyak": tf.scale_by_polyak,
    "scale_by_rprop": lambda: tf.scale_by_rprop(0.01),
    "clip_by_block_rms": lambda: tf.clip_by_block_rms(0.5),
    "adaptive_grad_clip": lambda: tf.adaptive_grad_clip(0.1),
    "centralize": tf.centralize,
    "zero_nans": tf.zero_nans,
    "keep_params_nonnegative": tf.keep_params_nonnegative,
    "add_noise": lambda: tf.add_noise(0.01, 0.55, key=3),
}


def _update(tx, g, state, params):
    return tx.update(g, state, params, value=GOLDEN.loss(params))


def _subtrees(tree: Any, key: str) -> list[Any]:
    """Everything stored under dict key ``key`` anywhere in ``tree``."""
    if isinstance(tree, dict):
        return [tree[key]] if key in tree else []
    if isinstance(tree, (list, tuple)):
        return [s for child in tree for s in _subtrees(child, key)]
    return []


def _same(a: Any, b: Any) -> bool:
    la, lb = tf.tree_leaves(a), tf.tree_leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))


@pytest.mark.parametrize("name", FACTORIES)
def test_none_leaves_pass_through(name):
    params = GOLDEN.init_params(F64)
    grads, value = GOLDEN.grad(params), GOLDEN.loss(params)
    tx = FACTORIES[name]()
    _, state = tx.update(grads, tx.init(params), params, value=value)
    u, new_state = tx.update({"w": grads["w"], "b": None}, state, params, value=value)
    assert u["b"] is None and u["w"] is not None
    assert _same(_subtrees(new_state, "b"), _subtrees(state, "b"))
    if name == "add_noise":  # its noise depends on the leaf's position in the tree
        return
    # A None leaf is as if the parameter were not there.
    w_only = {"w": params["w"]}
    alone = FACTORIES[name]()
    _, s = alone.update({"w": grads["w"]}, alone.init(w_only), w_only, value=value)
    u_alone, _ = alone.update({"w": grads["w"]}, s, w_only, value=value)
    torch.testing.assert_close(u["w"], u_alone["w"], rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_are_kept(name, dtype):
    tx = FACTORIES[name]()
    params = GOLDEN.init_params(dtype)
    state = tx.init(params)
    for _ in range(2):
        u, new_state = _update(tx, GOLDEN.grad(params), state, params)
        assert all(u[k].dtype == dtype for k in u)
        old, new = tf.tree_leaves(state), tf.tree_leaves(new_state)
        assert [(x.dtype, x.shape) for x in old] == [(x.dtype, x.shape) for x in new]
        state = new_state
    floating = [x for x in tf.tree_leaves(state) if x.is_floating_point()]
    assert all(x.dtype == dtype for x in floating)


@pytest.mark.parametrize("name", FACTORIES)
def test_compiled_without_recompiles_equals_eager(name):
    # aot_eager checks what matters here (one graph, functionalisation, no guard on the count)
    # in a second; Inductor's code generation for the same graphs takes ~10x longer.
    tx = FACTORIES[name]()

    def step(params, state):
        updates, state = _update(tx, GOLDEN.grad(params), state, params)
        return tf.apply_updates(params, tf.tree_scale(LR, updates)), state

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    params = eager = GOLDEN.init_params(F64)
    state = eager_state = tx.init(params)
    params, state = compiled(params, state)
    eager, eager_state = step(eager, eager_state)
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(3):
            params, state = compiled(params, state)
            eager, eager_state = step(eager, eager_state)
    for k in params:
        torch.testing.assert_close(params[k], eager[k], rtol=1e-14, atol=0)
    assert _same(state, eager_state)


def _stack(trees: list[Any]) -> Any:
    leaves = [tf.tree_leaves(t) for t in trees]
    spec = _flatten.tree_structure(trees[0])
    return _flatten.tree_unflatten(spec, [torch.stack(xs) for xs in zip(*leaves)])


@pytest.mark.parametrize("name", FACTORIES)
def test_vmap_over_a_batch_equals_a_loop(name):
    members = [FACTORIES[name]() for _ in range(3)]
    if name == "add_noise":  # each member its own seed, so the batched rng_key is exercised
        members = [tf.add_noise(0.01, 0.55, key=k) for k in range(3)]
    tx = members[0]
    params = [
        {k: v * (1.0 + 0.3 * i) for k, v in GOLDEN.init_params(F64).items()} for i in range(3)
    ]
    states = [m.init(p) for m, p in zip(members, params)]
    grads = [GOLDEN.grad(p) for p in params]
    losses = torch.stack([GOLDEN.loss(p) for p in params])
    loop = [
        m.update(g, s, p, value=v) for m, g, s, p, v in zip(members, grads, states, params, losses)
    ]

    def update(g, s, p, v):
        return tx.update(g, s, p, value=v)

    u, s = torch.func.vmap(update)(_stack(grads), _stack(states), _stack(params), losses)
    for i, (ui, si) in enumerate(loop):
        for k in ui:
            torch.testing.assert_close(u[k][i], ui[k], rtol=1e-14, atol=0)
        for a, b in zip(tf.tree_leaves(s), tf.tree_leaves(si)):
            torch.testing.assert_close(a[i], b, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------- validation

INVALID = [
    (tf.scale_by_factored_rms, {"decay_rate": -0.8}, "decay_rate"),
    (tf.scale_by_factored_rms, {"epsilon": -1.0}, "epsilon"),
    (tf.scale_by_factored_rms, {"min_dim_size_to_factor": -1}, "min_dim_size_to_factor"),
    (tf.scale_by_sm3, {"b1": 1.0}, "b1"),
    (tf.scale_by_sm3, {"b2": 1.5}, "b2"),
    (tf.scale_by_sm3, {"eps": -1e-8}, "eps"),
    (tf.scale_by_trust_ratio, {"min_norm": -1.0}, "min_norm"),
    (tf.scale_by_trust_ratio, {"trust_coefficient": -1.0}, "trust_coefficient"),
    (tf.scale_by_trust_ratio, {"eps": -1.0}, "eps"),
    (tf.scale_by_optimistic_gradient, {"alpha": -1.0}, "alpha"),
    (tf.scale_by_optimistic_gradient, {"beta": -1.0}, "beta"),
    (tf.scale_by_polyak, {"max_learning_rate": -1.0}, "max_learning_rate"),
    (tf.scale_by_polyak, {"eps": -1.0}, "eps"),
    (tf.scale_by_polyak, {"variant": "sgd"}, "variant"),
    (tf.scale_by_rprop, {"learning_rate": -0.1}, "learning_rate"),
    (tf.scale_by_rprop, {"learning_rate": 0.1, "eta_minus": 1.0}, "eta_minus"),
    (tf.scale_by_rprop, {"learning_rate": 0.1, "eta_plus": 1.0}, "eta_plus"),
    (tf.scale_by_rprop, {"learning_rate": 0.1, "min_step_size": -1.0}, "min_step_size"),
    (tf.scale_by_rprop, {"learning_rate": 0.1, "max_step_size": 0.0}, "max_step_size"),
    (
        tf.scale_by_rprop,
        {"learning_rate": 0.1, "min_step_size": 2.0, "max_step_size": 1.0},
        "min_step_size",
    ),
    (tf.clip_by_block_rms, {"threshold": 0.0}, "threshold"),
    (tf.adaptive_grad_clip, {"clipping": -0.1}, "clipping"),
    (tf.adaptive_grad_clip, {"clipping": 0.1, "eps": -1.0}, "eps"),
    (tf.add_noise, {"eta": -0.01, "gamma": 0.55}, "eta"),
    (tf.add_noise, {"eta": 0.01, "gamma": 0.55, "key": 1, "seed": 2}, "key or seed"),
    (tf.add_noise, {"eta": 0.01, "gamma": 0.55, "key": "0"}, "key"),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"), INVALID, ids=lambda x: getattr(x, "__name__", None)
)
def test_bad_hyperparameters_raise(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize(
    "name", ["scale_by_trust_ratio", "adaptive_grad_clip", "keep_params_nonnegative"]
)
def test_missing_params_raise(name):
    tx = FACTORIES[name]()
    g = GOLDEN.grad(GOLDEN.init_params(F64))
    with pytest.raises(ValueError, match="params"):
        tx.update(g, tx.init(g))


def test_polyak_without_value_raises():
    tx = tf.scale_by_polyak()
    g = GOLDEN.grad(GOLDEN.init_params(F64))
    with pytest.raises(ValueError, match="value="):
        tx.update(g, tx.init(g))


def test_unsupported_inputs_raise():
    with pytest.raises(ValueError, match="complex"):
        tf.scale_by_sm3().init({"w": torch.zeros(2, 2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="complex"):
        tx = tf.add_noise(0.1, 0.5)
        g = {"w": torch.zeros(2, dtype=torch.complex64)}
        tx.update(g, tx.init(g))
    tx = tf.adaptive_grad_clip(0.1)
    p = {"w": torch.ones(2, 2, 2, 2, 2, 2)}
    with pytest.raises(ValueError, match="axis"):
        tx.update(p, tx.init(p), p)
    u, _ = tf.adaptive_grad_clip(0.1, axis=(0, 1)).update(p, tx.init(p), p)
    assert u["w"].shape == p["w"].shape


# --------------------------------------------------------------------------- specifics


def test_factored_rms_state_shapes_follow_the_two_largest_axes():
    tx = tf.scale_by_factored_rms(min_dim_size_to_factor=2)
    params = {
        "t": torch.zeros(5, 2, 7),
        "m": torch.zeros(4, 4),
        "s": torch.zeros(1, 9),
        "v": torch.zeros(3),
    }
    state = tx.init(params)
    # (5, 2, 7): largest axis 2, second largest 0 -> v_row drops axis 2, v_col drops axis 0.
    assert state.v_row["t"].shape == (5, 2) and state.v_col["t"].shape == (2, 7)
    # Ties keep axis order, as optax's argsort: (4, 4) -> largest axis 1, second 0.
    assert state.v_row["m"].shape == (4,) and state.v_col["m"].shape == (4,)
    for k in ("s", "v"):  # not factored: a full moment and (1,) placeholders
        assert state.v[k].shape == params[k].shape and state.v_row[k].shape == (1,)
    u, _ = tx.update({k: torch.ones_like(v) for k, v in params.items()}, state)
    assert all(torch.allclose(x, torch.ones_like(x)) for x in u.values())


def test_sm3_accepts_scalars():
    tx = tf.scale_by_sm3(b1=0.0)
    g = {"s": torch.tensor(2.0, dtype=F64)}
    u, state = tx.update(g, tx.init(g))
    torch.testing.assert_close(u["s"], torch.tensor(2.0 / (4.0 + 1e-8) ** 0.5, dtype=F64))
    assert state.mu["s"][0].shape == ()


def test_trust_ratio_is_one_at_zero_norms():
    tx = tf.scale_by_trust_ratio(trust_coefficient=0.5)
    params = {"zero": torch.zeros(3), "p": torch.ones(3)}
    g = {"zero": torch.ones(3), "p": torch.zeros(3)}
    u, _ = tx.update(g, tx.init(params), params)
    torch.testing.assert_close(u["zero"], g["zero"])
    torch.testing.assert_close(u["p"], g["p"])


def test_optimistic_gradient_first_step_is_alpha_times_gradient():
    tx = tf.scale_by_optimistic_gradient(alpha=0.5, beta=2.0)
    g = {"w": torch.tensor([1.0, -2.0], dtype=F64)}
    u, state = tx.update(g, tx.init(g))
    torch.testing.assert_close(u["w"], 0.5 * g["w"])
    assert not state.is_initial_step
    u, _ = tx.update({"w": torch.tensor([3.0, 0.0], dtype=F64)}, state)
    torch.testing.assert_close(u["w"], torch.tensor([2.5 * 3.0 - 2.0, 4.0], dtype=F64))


def test_polyak_step_is_zero_for_a_zero_gradient():
    tx = tf.scale_by_polyak()
    g = {"w": torch.zeros(3, dtype=F64)}
    u, _ = tx.update(g, tx.init(g), value=torch.tensor(5.0, dtype=F64))
    assert torch.equal(u["w"], g["w"])


def test_zero_nans_zeroes_nans_and_records_where():
    tx = tf.zero_nans()
    nan, inf = float("nan"), float("inf")
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    assert not any(tf.tree_leaves(state.found_nan))
    u, state = tx.update({"a": torch.tensor([1.0, nan, inf]), "b": torch.ones(2)}, state)
    torch.testing.assert_close(u["a"], torch.tensor([1.0, 0.0, inf]))
    assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"])
    _, state = tx.update({"a": torch.ones(3), "b": torch.ones(2)}, state)
    assert not bool(state.found_nan["a"])


def test_keep_params_nonnegative_moves_negative_params_to_zero():
    tx = tf.keep_params_nonnegative()
    params = {"w": torch.tensor([-1.0, 0.5, 2.0])}
    u, _ = tx.update({"w": torch.tensor([0.5, -1.0, 0.1])}, tx.init(params), params)
    torch.testing.assert_close(tf.apply_updates(params, u)["w"], torch.tensor([0.0, 0.0, 2.1]))


# --------------------------------------------------------------------------- add_noise


def _noisy_trajectory(tx: tf.GradientTransformation) -> list[Params]:
    return _trajectory(tf.chain(tx, tf.scale(LR)))


def test_add_noise_same_seed_same_trajectory_and_other_seeds_differ():
    a = _noisy_trajectory(tf.add_noise(0.01, 0.55, 7))
    b = _noisy_trajectory(tf.add_noise(0.01, 0.55, key=7))
    c = _noisy_trajectory(tf.add_noise(0.01, 0.55, seed=7))
    d = _noisy_trajectory(tf.add_noise(0.01, 0.55, 8))
    for x, y, z, w in zip(a, b, c, d):
        for k in x:
            assert (
                torch.equal(x[k], y[k]) and torch.equal(x[k], z[k]) and not torch.equal(x[k], w[k])
            )
    # A torch.Generator is drawn from once, at construction, so equal generators agree.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    e, f = (_noisy_trajectory(tf.add_noise(0.01, 0.55, key=g)) for g in (g1, g2))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(e, f) for k in x)


def test_add_noise_is_counter_based_and_ignores_the_global_rng():
    tx = tf.add_noise(0.5, 0.55, key=11)
    g = {"a": torch.zeros(4, 5, dtype=F64), "b": torch.zeros(3, dtype=F64)}
    state = tx.init(g)
    outs = []
    for _ in range(4):
        torch.randn(10)  # whatever else consumes random numbers must not matter
        u, state = tx.update(g, state)
        outs.append(u)
    # Resuming from a state rebuilt from its tensors gives the same noise at step 3.
    resumed = tf.AddNoiseState(count=torch.tensor(3), rng_key=state.rng_key.clone())
    u3, _ = tx.update(g, resumed)
    assert all(torch.equal(u3[k], outs[3][k]) for k in g)
    assert not torch.equal(outs[0]["a"], outs[1]["a"])
    assert not torch.equal(outs[0]["a"][:3, 0], outs[0]["b"])  # leaves get their own noise


@pytest.mark.parametrize("count", [0, 99])
def test_add_noise_variance_follows_the_annealing_schedule(count):
    eta, gamma = 0.3, 0.55
    tx = tf.add_noise(eta, gamma, key=0)
    g = {"w": torch.zeros(200_000, dtype=F64)}
    state = tf.AddNoiseState(count=torch.tensor(count), rng_key=tx.init(g).rng_key)
    u, state = tx.update(g, state)
    expected_std = (eta / (1 + count) ** gamma) ** 0.5
    assert abs(float(u["w"].std()) / expected_std - 1) < 0.01
    assert abs(float(u["w"].mean())) < 0.01 * expected_std * 2
    assert int(state.count) == count + 1
