"""Sophia and Hutchinson's estimator: what the optax goldens cannot check.

optax's trajectories (tests/goldens) fix Sophia's maths given a Hessian-diagonal estimate;
here: the estimator's randomness (its expectation, reproducibility from a seed), the refresh
interval, and the update compiled, vmapped and with the objective of each step's batch.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn.contrib import (
    HutchinsonState,
    hutchinson_estimator_diag_hessian,
    scale_by_sophia,
    sophia,
)

F64 = torch.float64

# A dense SPD Hessian over two leaves (w: 3 entries, b: 2), coupling them.
_M = torch.tensor(
    [
        [1.0, 0.4, -0.3, 0.2, 0.0],
        [0.0, 1.2, 0.5, -0.1, 0.3],
        [0.0, 0.0, 0.9, 0.4, -0.2],
        [0.0, 0.0, 0.0, 1.1, 0.5],
        [0.0, 0.0, 0.0, 0.0, 0.8],
    ],
    dtype=F64,
)
_H = _M @ _M.T + torch.eye(5, dtype=F64)


def _quadratic(params: dict) -> torch.Tensor:
    x = torch.cat([params["w"], params["b"]])
    return 0.5 * x @ _H @ x


def _params() -> dict:
    return {
        "w": torch.tensor([0.3, -1.0, 2.0], dtype=F64),
        "b": torch.tensor([0.5, 1.5], dtype=F64),
    }


def _estimate(tx: tf.GradientTransformation, state, params=None, obj_fn=_quadratic):
    params = _params() if params is None else params
    return tx.update(params, state, params, obj_fn=obj_fn)


# --------------------------------------------------------------------------- the estimator


def _draws(seed: int, n: int, obj_fn=_quadratic) -> torch.Tensor:
    """The estimator's first ``n`` draws from ``seed`` (one per row, w then b), vmapped."""
    tx = hutchinson_estimator_diag_hessian(random_seed=seed)
    keys = torch.stack([torch.tensor([seed, k]) for k in range(n)])
    diag, _ = torch.func.vmap(lambda s: _estimate(tx, s, obj_fn=obj_fn))(HutchinsonState(keys))
    return torch.cat([diag["w"], diag["b"]], dim=1)


def test_hutchinson_estimator_mean_is_the_hessian_diagonal():
    draws = _draws(seed=5, n=1024)
    # Each draw is diag(H) + z * (H_offdiag z): the mean's sd is <0.018 here.
    torch.testing.assert_close(draws.mean(0), torch.diagonal(_H), rtol=0, atol=0.08)
    assert (draws[0] - torch.diagonal(_H)).abs().max() > 0.1  # one draw is not exact


def test_hutchinson_estimator_draws_are_rademacher_products():
    # H = all-ones couples every entry: z_i (Hz)_i = z_i * sum(z) is odd (5 entries), and
    # its mean over draws is the diagonal (ones).
    draws = _draws(seed=1, n=256, obj_fn=lambda p: 0.5 * (p["w"].sum() + p["b"].sum()) ** 2)
    assert set(draws.abs().unique().tolist()) <= {1.0, 3.0, 5.0}
    torch.testing.assert_close(draws.mean(0), torch.ones(5, dtype=F64), rtol=0, atol=0.3)
    # The vmapped draws are the sequential ones.
    tx = hutchinson_estimator_diag_hessian(random_seed=1)
    state = tx.init(_params())
    for k in range(2):
        diag, state = _estimate(
            tx, state, obj_fn=lambda p: 0.5 * (p["w"].sum() + p["b"].sum()) ** 2
        )
        torch.testing.assert_close(torch.cat([diag["w"], diag["b"]]), draws[k], rtol=0, atol=0)


def test_hutchinson_estimator_is_exact_for_a_diagonal_hessian_in_every_dtype():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, F64):
        params = {"w": torch.tensor([1.0, -2.0, 0.5], dtype=dtype)}
        tx = hutchinson_estimator_diag_hessian(random_seed=11)
        diag, _ = tx.update(params, tx.init(params), params, obj_fn=lambda p: (p["w"] ** 3).sum())
        assert diag["w"].dtype == dtype
        torch.testing.assert_close(diag["w"], 6 * params["w"])


def test_hutchinson_estimator_is_reproducible_from_its_seed():
    def draws(tx: tf.GradientTransformation, steps: int = 3) -> list:
        state = tx.init(_params())
        out = []
        for _ in range(steps):
            diag, state = _estimate(tx, state)
            out.append(diag)
        return out

    first = draws(hutchinson_estimator_diag_hessian(random_seed=42))
    assert_trees_close(draws(hutchinson_estimator_diag_hessian(random_seed=42)), first, rtol=0)
    assert not torch.equal(first[0]["w"], first[1]["w"])  # a fresh draw every step
    other = draws(hutchinson_estimator_diag_hessian(random_seed=43))
    assert not all(torch.equal(a["w"], b["w"]) for a, b in zip(first, other))
    from_generator = [
        draws(hutchinson_estimator_diag_hessian(torch.Generator().manual_seed(0))) for _ in "ab"
    ]
    assert_trees_close(from_generator[0], from_generator[1], rtol=0)
    assert hutchinson_estimator_diag_hessian().init(_params()).key.tolist() == [0, 0]


def test_hutchinson_estimator_resumes_from_a_saved_state_and_ignores_none_leaves():
    tx = hutchinson_estimator_diag_hessian(random_seed=7)
    state = tx.init(_params())
    _, state = _estimate(tx, state)
    saved = HutchinsonState(key=state.key.clone())
    expected, _ = _estimate(tx, state)
    resumed, _ = _estimate(tx, saved)
    assert_trees_close(resumed, expected, rtol=0)
    # A leaf's draw depends on its path, not on which other leaves have updates.
    params = _params()
    partial, new_state = tx.update({**params, "b": None}, saved, params, obj_fn=_quadratic)
    assert partial["b"] is None
    torch.testing.assert_close(partial["w"], expected["w"], rtol=0, atol=0)
    assert new_state.key.tolist() == [7, 2]


def test_hutchinson_estimator_refuses_missing_arguments():
    tx = hutchinson_estimator_diag_hessian()
    params = _params()
    with pytest.raises(ValueError, match="obj_fn"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), obj_fn=_quadratic)
    with pytest.raises(ValueError, match="random_seed"):
        hutchinson_estimator_diag_hessian(random_seed=1.5)


# --------------------------------------------------------------------------- Sophia


def test_sophia_refreshes_the_hessian_diagonal_every_update_interval_steps():
    tx = scale_by_sophia(update_interval=3, hessian_diagonal_fn=hutchinson_estimator_diag_hessian())
    params = _params()
    state = tx.init(params)
    nus = []
    for _ in range(7):
        _, state = tx.update(params, state, params, obj_fn=_quadratic)
        nus.append(state.nu["w"])
    # Estimates are drawn at counts 0, 3 and 6 only.
    assert state.hessian_fn_state.key.tolist() == [0, 3]
    changed = [not torch.equal(a, b) for a, b in itertools.pairwise(nus)]
    assert changed == [False, False, True, False, False, True]


def test_sophia_with_hutchinson_on_a_separable_objective_is_sophia_with_the_exact_diagonal():
    # A diagonal Hessian makes every Hutchinson draw exact: the estimator path reduces to the
    # injected-diagonal path that the optax goldens check.
    obj = lambda p: (p["w"] ** 4).sum() + (p["b"] ** 4).sum() / 2  # noqa: E731
    exact = tf.stateless_with_tree_map(lambda g, p: 6 * p**2 * (2 if p.numel() == 3 else 1))
    runs = []
    for kwargs in ({}, {"hessian_diagonal_fn": exact}):
        tx = sophia(0.05, b2=0.5, gamma=1.0, update_interval=2, **kwargs)
        params = _params()
        state = tx.init(params)
        for _ in range(5):
            grads = torch.func.grad(obj)(params)
            updates, state = tx.update(grads, state, params, obj_fn=obj)
            params = tf.apply_updates(params, updates)
        runs.append(params)
    assert_trees_close(runs[0], runs[1], rtol=1e-14)


def _train_step(tx: tf.GradientTransformation):
    """One step whose objective is this step's batch: obj_fn is built inside the step."""

    def step(params, state, batch):
        obj = lambda p: _quadratic(p) + (batch * torch.cat([p["w"], p["b"]])).sum()  # noqa: E731
        grads = torch.func.grad(obj)(params)
        updates, state = tx.update(grads, state, params, obj_fn=obj)
        return tf.apply_updates(params, updates), state

    return step


def _batches(n: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(5, generator=gen, dtype=F64) for _ in range(n)]


@pytest.mark.slow  # compiling a Hessian-vector product takes seconds
def test_sophia_compiles_fullgraph_without_recompiling_and_equals_eager():
    tx = sophia(
        0.05, gamma=1.0, update_interval=2, hessian_diagonal_fn=hutchinson_estimator_diag_hessian(3)
    )
    step = _train_step(tx)
    params, state = _params(), tx.init(_params())
    eager = []
    for batch in _batches(4):
        params, state = step(params, state, batch)
        eager.append(params)
    torch._dynamo.reset()
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    params, state = _params(), tx.init(_params())
    for i, batch in enumerate(_batches(4)):
        if i == 0:
            params, state = compiled(params, state, batch)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                params, state = compiled(params, state, batch)
        assert_trees_close(params, eager[i], rtol=1e-12)


def test_sophia_vmapped_over_seeds_equals_one_run_per_seed():
    seeds = [0, 1, 2]
    tx_for = lambda seed: sophia(  # noqa: E731
        0.05,
        b2=0.5,
        gamma=10.0,
        update_interval=1,
        hessian_diagonal_fn=hutchinson_estimator_diag_hessian(seed),
    )
    expected = []
    for seed in seeds:
        step = _train_step(tx_for(seed))
        params, state = _params(), tx_for(seed).init(_params())
        for batch in _batches(3):
            params, state = step(params, state, batch)
        expected.append(params)
    # One transformation, the members' states stacked: each member draws from its own key.
    states = [tx_for(seed).init(_params()) for seed in seeds]
    state = tf.tree_map(lambda *xs: torch.stack(xs), *states)
    params = tf.tree_map(lambda x: x.expand(len(seeds), *x.shape), _params())
    step = torch.func.vmap(_train_step(tx_for(0)), in_dims=(0, 0, None))
    for batch in _batches(3):
        params, state = step(params, state, batch)
    for i in range(len(seeds)):
        assert_trees_close(tf.tree_map(lambda x, i=i: x[i], params), expected[i], rtol=1e-12)
    nu = state[0].nu["w"]  # the members' Hessian estimates differ: each drew its own signs
    assert not torch.equal(nu[0], nu[1]) and not torch.equal(params["w"][0], params["w"][1])


def test_sophia_prints_its_win_rate_eagerly(capsys):
    tx = scale_by_sophia(
        gamma=1.0,
        update_interval=1,
        hessian_diagonal_fn=hutchinson_estimator_diag_hessian(),
        verbose=True,
        print_win_rate_every_n_steps=2,
    )
    params = _params()
    state = tx.init(params)
    for _ in range(4):
        _, state = tx.update(params, state, params, obj_fn=_quadratic)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("Sophia optimizer win rate: ") for line in lines)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"b1": 1.0},
        {"b2": -0.1},
        {"eps": -1.0},
        {"gamma": -0.5},
        {"clip_threshold": 0.0},
        {"update_interval": 0},
    ],
    ids=lambda k: next(iter(k)),
)
def test_sophia_refuses_invalid_hyperparameters_naming_them(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        sophia(0.1, **kwargs)


def test_sophia_needs_params():
    tx = sophia(0.1)
    params = _params()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), obj_fn=_quadratic)
