"""The common battery: every row of `helpers.OPTIMIZERS` goes through every test here."""

from __future__ import annotations

from typing import Any

import optree
import pytest
import torch

import torchopt_fn as tf
from tests.helpers import (
    MLP,
    OPTIMIZERS,
    QUADRATIC,
    ROSENBROCK,
    OptCase,
    all_finite,
    assert_trees_close,
    make_tx,
    run_case,
)
from torchopt_fn.tree import _flatten

FLOAT_DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _leaves_with_paths(tree: Any) -> list[tuple[tuple, Any]]:
    paths, leaves, _ = optree.tree_flatten_with_path(tree, none_is_leaf=True)
    return list(zip(paths, leaves))


def _signature(state: Any) -> tuple:
    """Structure plus (shape, dtype, device) of every leaf: what must not change across steps."""
    return (
        _flatten.tree_structure(state),
        tuple(
            None if x is None else (tuple(x.shape), x.dtype, x.device)
            for x in tf.tree_leaves(state)
        ),
    )


def _step(case: OptCase, tx, params, state, grads, **extra):
    if case.needs_value:
        extra.setdefault("value", torch.tensor(1.0, dtype=torch.float64))
    return tx.update(grads, state, params, **extra)


def test_table_covers_every_named_optimizer():
    assert {case.name for case in OPTIMIZERS} == set(tf.optimizers.__all__)
    assert len(tf.optimizers.__all__) >= 28


@pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
def test_converges_on_quadratic(case: OptCase):
    params, _ = run_case(case, QUADRATIC, case.quad_steps)
    assert float(QUADRATIC.loss(params)) < case.quad_tol


@pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
def test_converges_on_rosenbrock(case: OptCase):
    tx = make_tx(case, **case.rosen_overrides)
    params, _ = run_case(case, ROSENBROCK, case.rosen_steps, tx=tx)
    assert float(ROSENBROCK.loss(params)) < case.rosen_tol


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
def test_dtypes_are_preserved(case: OptCase, dtype: torch.dtype):
    tx = make_tx(case)
    params = MLP.init_params(dtype)
    state = tx.init(params)
    first = _signature(state)
    for _ in range(3):
        updates, state = _step(case, tx, params, state, MLP.grad(params))
        for u, p in zip(tf.tree_leaves(updates), tf.tree_leaves(params)):
            assert u.dtype == p.dtype and u.shape == p.shape
        assert _signature(state) == first
        params = tf.apply_updates(params, updates)
    assert all_finite(params)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
def test_state_is_tensors_only_and_stable(case: OptCase):
    tx = make_tx(case)
    params = MLP.init_params(torch.float64)
    state = tx.init(params)
    first = _signature(state)
    assert all(x is None or isinstance(x, torch.Tensor) for x in tf.tree_leaves(state))
    for _ in range(3):
        updates, state = _step(case, tx, params, state, MLP.grad(params))
        params = tf.apply_updates(params, updates)
        assert _signature(state) == first


@pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
def test_none_gradients_pass_through(case: OptCase):
    """A parameter without gradient is left alone, and so is its slice of the state."""
    tx = make_tx(case)
    frozen = torch.tensor([0.7, -1.3, 0.2], dtype=torch.float64)
    params = {"w": torch.tensor([[1.5, -0.5], [0.3, 2.0]], dtype=torch.float64), "frozen": frozen}
    state0 = tx.init(params)
    state = state0
    w_only = make_tx(case)
    w_params = {"w": params["w"]}
    w_state = w_only.init(w_params)
    for _ in range(3):
        grads = {"w": 2 * params["w"], "frozen": None}
        updates, state = _step(case, tx, params, state, grads)
        assert updates["frozen"] is None
        w_updates, w_state = _step(case, w_only, w_params, w_state, {"w": grads["w"]})
        torch.testing.assert_close(updates["w"], w_updates["w"], rtol=1e-12, atol=0)
        params = tf.apply_updates(params, updates)
        w_params = tf.apply_updates(w_params, w_updates)
    assert torch.equal(params["frozen"], frozen)
    before = dict(_leaves_with_paths(state0))
    for path, leaf in _leaves_with_paths(state):
        if "frozen" in path:
            assert (leaf is None and before[path] is None) or torch.equal(leaf, before[path])


@pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
def test_unknown_extra_kwargs_are_ignored(case: OptCase):
    params = QUADRATIC.init_params(torch.float64)
    grads = QUADRATIC.grad(params)
    tx, other = make_tx(case), make_tx(case)
    plain, plain_state = _step(case, tx, params, tx.init(params), grads)
    extra, extra_state = _step(case, other, params, other.init(params), grads, foo=1, bar="baz")
    torch.testing.assert_close(extra, plain, rtol=0, atol=0)
    assert _signature(extra_state) == _signature(plain_state)


@pytest.mark.parametrize(
    ("case", "override"),
    [pytest.param(c, o, id=f"{c.id}-{next(iter(o))}") for c in OPTIMIZERS for o in c.invalid],
)
def test_invalid_hyperparameters_raise(case: OptCase, override: dict[str, Any]):
    with pytest.raises(ValueError):
        make_tx(case, **override)


@pytest.mark.parametrize(
    "case", [c for c in OPTIMIZERS if isinstance(c.kwargs.get("learning_rate"), float)], ids=str
)
def test_tensor_learning_rate_matches_float(case: OptCase):
    """A 0-d tensor learning rate (how a compiled step avoids recompiling) changes nothing."""
    lr = case.kwargs["learning_rate"]
    as_float, _ = run_case(case, QUADRATIC, 5)
    as_tensor, _ = run_case(
        case, QUADRATIC, 5, tx=make_tx(case, learning_rate=torch.tensor(lr, dtype=torch.float64))
    )
    torch.testing.assert_close(as_tensor, as_float, rtol=1e-14, atol=0)


def test_adadelta_without_learning_rate_descends():
    """optax 0.2.8 ascends here (no learning-rate stage); ours uses a learning rate of 1."""
    with_none, _ = run_case(OptCase("a", tf.adadelta, {"learning_rate": None}), QUADRATIC, 20)
    with_one, _ = run_case(OptCase("b", tf.adadelta, {"learning_rate": 1.0}), QUADRATIC, 20)
    torch.testing.assert_close(with_none, with_one, rtol=0, atol=0)
    assert QUADRATIC.loss(with_none) < QUADRATIC.loss(QUADRATIC.init_params(torch.float64))


def test_rprop_first_step_moves():
    """optax 0.2.8's rprop returns the previous step's update, so its first step is zero."""
    tx = tf.rprop(learning_rate=0.1)
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    updates, _ = tx.update({"w": 2 * params["w"]}, tx.init(params), params)
    torch.testing.assert_close(updates["w"], torch.tensor([-0.1, 0.1], dtype=torch.float64))


def test_lars_default_masks_equal_no_mask():
    explicit = {"w": True, "b": True}
    default, _ = run_case(OptCase("l", tf.lars, {"learning_rate": 1.0}), QUADRATIC, 5)
    masked, _ = run_case(
        OptCase(
            "m",
            tf.lars,
            {"learning_rate": 1.0, "weight_decay_mask": explicit, "trust_ratio_mask": explicit},
        ),
        QUADRATIC,
        5,
    )
    torch.testing.assert_close(default, masked, rtol=1e-14, atol=0)


def _views_model(layout: str) -> list[torch.nn.Parameter]:
    """Parameters in odd layouts (or, for "contiguous", the same values plainly stored)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 3, 2, 2, generator=gen, dtype=torch.float64)
    if layout == "views":
        w = w.t().contiguous().t()  # transposed storage
        b = torch.stack([b, torch.zeros_like(b)], dim=-1)[..., 0]  # every other element
        k = k.contiguous(memory_format=torch.channels_last)
    return [torch.nn.Parameter(x) for x in (w, b, k)]


def _view_grads(params: list[torch.nn.Parameter], step: int, layout: str) -> None:
    """Gradients of the odd kinds: stride-0, and in one flat buffer (as DDP's buckets)."""
    w, b, k = params
    gw = torch.cos(w.detach() * (step + 1))
    gb = torch.full((1,), 0.3 * (step + 1), dtype=torch.float64)
    gk = torch.sin(k.detach() + step)
    if layout == "views":
        flat = torch.cat([gw.reshape(-1), gk.reshape(-1)])
        w.grad = flat[: gw.numel()].view(4, 3)
        b.grad = gb.expand(3)
        k.grad = flat[gw.numel() :].view(2, 3, 2, 2)  # contiguous, the parameter channels_last
    else:
        w.grad, b.grad, k.grad = gw.contiguous(), gb.expand(3).contiguous(), gk.contiguous()


@pytest.mark.parametrize("case", [c for c in OPTIMIZERS if not c.needs_value], ids=str)
def test_adapter_on_views_and_odd_gradients_equals_contiguous(case: OptCase):
    """Transposed, sliced and channels_last parameters; stride-0 and flat-buffer gradients."""
    results = []
    for layout in ("views", "contiguous"):
        params = _views_model(layout)
        opt = tf.Optimizer(params, make_tx(case))
        for step in range(4):
            _view_grads(params, step, layout)
            opt.step()
        results.append([p.detach().contiguous() for p in params])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def _trajectory(tx: tf.GradientTransformation, params: Any, grads: list) -> tuple[Any, Any]:
    """The params and state after one update per gradient in ``grads``."""
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = tf.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("name", ["adam", "adamw", "nadam", "nadamw"])
def test_state_dtype_and_nu_dtype_set_the_moments_dtypes(name):
    """``state_dtype`` is the shorthand for both moments; ``mu_dtype``/``nu_dtype`` win over
    it. The numbers are those of `scale_by_adam` with the same dtypes (the fused kernel, which
    keeps the params' dtype, steps aside)."""
    factory = getattr(tf, name)
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    grads = [tf.tree_map(torch.randn_like, params) for _ in range(5)]
    bf16, f64 = torch.bfloat16, torch.float64
    for kwargs, (mu, nu) in [
        ({"state_dtype": bf16}, (bf16, bf16)),
        ({"nu_dtype": f64}, (torch.float32, f64)),
        ({"state_dtype": bf16, "mu_dtype": torch.float32}, (torch.float32, bf16)),
    ]:
        tx = factory(1e-2, **kwargs)
        nesterov = name.startswith("nadam")
        by_hand = tf.chain(
            tf.scale_by_adam(mu_dtype=mu, nu_dtype=nu, nesterov=nesterov),
            *([tf.add_decayed_weights(1e-4)] if name.endswith("w") else []),
            tf.scale_by_learning_rate(1e-2),
        )
        runs = [_trajectory(t, params, grads) for t in (tx, by_hand)]
        assert runs[0][1][0].mu["w"].dtype == mu and runs[0][1][0].nu["w"].dtype == nu
        assert_trees_close(runs[0], runs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["amsgrad", "optimistic_adam_v2"])
def test_state_dtype_reaches_every_moment_of_the_other_adam_aliases(name):
    """amsgrad's maximum is a second moment too; the optimistic variants keep Adam's."""
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    grads = [tf.tree_map(torch.randn_like, params) for _ in range(4)]
    bf16, f64 = torch.bfloat16, torch.float64
    for kwargs, (mu, nu) in [
        ({"state_dtype": bf16}, (bf16, bf16)),
        ({"nu_dtype": f64}, (torch.float32, f64)),
    ]:
        tx = getattr(tf, name)(1e-2, **kwargs)
        if name == "amsgrad":
            scaling = tf.scale_by_amsgrad(mu_dtype=mu, nu_dtype=nu)
            by_hand = tf.chain(scaling, tf.scale_by_learning_rate(1e-2))
        else:
            scaling = tf.scale_by_adam(mu_dtype=mu, nu_dtype=nu, nesterov=True)
            by_hand = tf.chain(
                scaling, tf.scale_by_optimistic_gradient(), tf.scale_by_learning_rate(1e-2)
            )
        runs = [_trajectory(t, params, grads) for t in (tx, by_hand)]
        moments = runs[0][1][0]
        assert moments.mu["w"].dtype == mu and moments.nu["w"].dtype == nu
        if name == "amsgrad":
            assert moments.nu_max["w"].dtype == nu
        assert_trees_close(runs[0], runs[1], rtol=0, atol=0)
