"""Per-member hyperparameters: one value per member of parameters stacked along a member axis.

A vector hyperparameter must give, member by member, exactly the run of the same optimizer
built with that member's scalar values, eagerly, compiled (without recompiling) and under
`inject_hyperparams`; a wrong shape is an error naming the hyperparameter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchopt_fn as tf

F64 = torch.float64
M = 3


def _stacked() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(M, 4, 3, generator=g, dtype=F64),
        "b": torch.randn(M, 3, generator=g, dtype=F64),
    }
    return params, tf.tree_map(lambda p: torch.sin(3 * p), params)


def _run(tx: tf.GradientTransformation, params: Any, grads: Any, steps: int = 4) -> Any:
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grads, state, params)
        params = tf.apply_updates(params, updates)
    return params, state


def _without_recompiling(step: Callable, params: Any, grads: Any, state: Any, steps: int = 4):
    """``steps`` calls of ``step(params, grads, state)``; all but the first may not compile."""
    params, state = step(params, grads, state)
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(steps - 1):
            params, state = step(params, grads, state)
    return params, state


def _member(tree: Any, m: int) -> Any:
    return tf.tree_map(lambda x: x[m], tree)


CASES: dict[str, tuple[Callable[..., tf.GradientTransformation], dict[str, list[float]]]] = {
    "sgd": (tf.sgd, {"learning_rate": [0.1, 0.01, 0.3], "momentum": [0.0, 0.9, 0.5]}),
    "adamw": (tf.adamw, {"learning_rate": [1e-3, 1e-2, 1e-1], "weight_decay": [0.0, 0.1, 0.5]}),
    "lion": (tf.lion, {"learning_rate": [1e-3, 1e-2, 1e-1], "b1": [0.9, 0.8, 0.95]}),
    # trust ratios: per member and per tensor, as separate runs have them
    "lamb": (tf.lamb, {"learning_rate": [1e-3, 1e-2, 1e-1]}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_member_runs_as_its_own_scalar_optimizer(name):
    factory, values = CASES[name]
    params, grads = _stacked()
    stacked, _ = _run(
        factory(**{k: torch.tensor(v, dtype=F64) for k, v in values.items()}), params, grads
    )
    for m in range(M):
        alone, _ = _run(
            factory(**{k: v[m] for k, v in values.items()}), _member(params, m), _member(grads, m)
        )
        for k in params:
            torch.testing.assert_close(stacked[k][m], alone[k], rtol=1e-12, atol=1e-14)


def test_a_column_of_values_is_a_vector_and_the_state_has_the_member_axis():
    params, grads = _stacked()
    lrs = torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64)
    column, state = _run(tf.adam(lrs.view(M, 1, 1)), params, grads)
    vector, _ = _run(tf.adam(lrs), params, grads)
    assert all(torch.equal(column[k], vector[k]) for k in params)
    assert state[0].count.shape == (M,) and state[0].mu["w"].shape == (M, 4, 3)
    assert state[0].count.stride() == (1,)  # a real count per member, not a broadcast one


def test_compiled_per_member_step_equals_eager_without_recompiling():
    params, grads = _stacked()
    tx = tf.adamw(torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64), weight_decay=0.1)
    expected, _ = _run(tx, params, grads)
    update = torch.compile(tx.update, backend="aot_eager", fullgraph=True)

    def step(p: Any, g: Any, state: Any) -> tuple[Any, Any]:
        updates, state = update(g, state, p)
        return tf.apply_updates(p, updates), state

    p, _ = _without_recompiling(step, params, grads, tx.init(params))
    for k in params:
        torch.testing.assert_close(p[k], expected[k], rtol=1e-12, atol=1e-14)


def test_injected_per_member_values_can_be_changed_in_the_state():
    params, grads = _stacked()
    lrs = torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64)
    injected = tf.inject_hyperparams(tf.adamw)(learning_rate=lrs, weight_decay=0.1)
    expected, _ = _run(tf.adamw(lrs, weight_decay=0.1), params, grads)
    got, state = _run(injected, params, grads)
    for k in params:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-14)
    assert state.hyperparams["learning_rate"].shape == (M,)
    state.hyperparams["learning_rate"].copy_(lrs * 10)  # a sweep's next phase
    updates, _ = injected.update(grads, state, got)
    ten_times, _ = tf.adamw(lrs * 10, weight_decay=0.1).update(grads, state.inner_state, got)
    for k in params:
        torch.testing.assert_close(updates[k], ten_times[k], rtol=1e-12, atol=1e-14)


def test_wrong_per_member_shapes_name_the_hyperparameter():
    params, _ = _stacked()
    with pytest.raises(ValueError, match=r"learning_rate: .*got shape \(3, 2\)"):
        tf.adam(torch.ones(3, 2))
    with pytest.raises(ValueError, match="as many members"):
        tf.adamw(torch.ones(3), weight_decay=torch.ones(4))
    with pytest.raises(ValueError, match=r"learning_rate: 4 per-member values need params"):
        tf.adam(torch.full((4,), 0.1)).init(params)
    with pytest.raises(ValueError, match="b1 must be in"):
        tf.adam(0.1, b1=torch.tensor([0.9, 1.5, 0.9]))
    masked = tf.masked(tf.sgd(0.1), {"w": torch.ones(M, 4, 3, dtype=torch.bool), "b": False})
    masked.init(params)  # boolean element masks are masks, not per-member values


def test_compile_step_runs_a_stacked_ensemble_in_place_without_recompiling():
    """`compile_step` cannot be vmapped; on stacked params with per-member values it needs
    not be: the whole ensemble's update and apply are one donated graph."""
    params, grads = _stacked()
    tx = tf.adamw(torch.tensor([1e-3, 1e-2, 1e-1], dtype=F64), weight_decay=0.1)
    expected, _ = _run(tx, params, grads)
    p = tf.tree_map(torch.clone, params)
    p, _ = _without_recompiling(tf.compile_step(tx, backend="aot_eager"), p, grads, tx.init(p))
    for k in params:
        torch.testing.assert_close(p[k], expected[k], rtol=1e-12, atol=1e-14)


def test_a_per_member_clip_clips_each_member_on_its_own():
    params, grads = _stacked()
    scale = torch.tensor([0.1, 1.0, 10.0], dtype=F64)  # one member under the norm, two over
    grads = tf.tree_map(lambda g: g * scale.reshape(-1, *[1] * (g.dim() - 1)), grads)
    lrs = [0.1, 0.2, 0.3]
    tx = tf.chain(
        tf.clip_by_global_norm(torch.full((M,), 1.0, dtype=F64)),
        tf.sgd(torch.tensor(lrs, dtype=F64)),
    )
    stacked, _ = _run(tx, params, grads, steps=1)
    for m in range(M):
        alone_tx = tf.chain(tf.clip_by_global_norm(1.0), tf.sgd(lrs[m]))
        alone, _ = _run(alone_tx, _member(params, m), _member(grads, m), steps=1)
        for k in params:
            torch.testing.assert_close(stacked[k][m], alone[k], rtol=1e-12, atol=1e-14)
