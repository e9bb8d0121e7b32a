"""The core contract: combinators, apply_updates, the None rule, errors naming paths."""

from __future__ import annotations

import pickle
from typing import NamedTuple

import pytest
import torch

import torchopt_fn as tf


def _params() -> dict:
    return {"w": torch.arange(6.0, dtype=torch.float64).reshape(2, 3), "b": torch.ones(3)}


def test_identity_returns_updates_unchanged():
    tx = tf.identity()
    g = _params()
    u, state = tx.update(g, tx.init(g))
    assert u is g
    assert state == tf.EmptyState()


def test_set_to_zero_zeros_every_leaf_and_keeps_none():
    tx = tf.set_to_zero()
    u, _ = tx.update({"a": torch.ones(2), "b": None}, tx.init(None))
    assert torch.equal(u["a"], torch.zeros(2)) and u["b"] is None


def test_stateless_sees_params():
    tx = tf.stateless(lambda u, p: tf.tree_map(lambda x, y: x * y, u, p))
    p = _params()
    u, _ = tx.update(p, tx.init(p), p)
    assert torch.equal(u["w"], p["w"] ** 2)


def test_chain_applies_in_order_and_forwards_extra_args():
    seen = {}

    def spy_update(updates, state, params=None, **extra):
        seen.update(extra)
        return updates, state

    spy = tf.GradientTransformation(lambda p: tf.EmptyState(), spy_update)
    tx = tf.chain(tf.scale(2.0), spy, tf.scale(-1.0))
    u, state = tx.update({"w": torch.ones(1)}, tx.init(None), None, value=torch.tensor(3.0))
    assert torch.equal(u["w"], torch.tensor([-2.0]))
    assert len(state) == 3 and "value" in seen


def test_chain_rejects_state_of_another_length():
    tx = tf.chain(tf.scale(1.0), tf.scale(2.0))
    with pytest.raises(ValueError, match="2 transformations"):
        tx.update({"w": torch.ones(1)}, (tf.EmptyState(),))


def test_named_chain_state_is_keyed_by_name():
    tx = tf.named_chain(("clip", tf.clip(0.5)), ("lr", tf.scale(-1.0)))
    u, state = tx.update({"w": torch.tensor([2.0])}, tx.init({"w": torch.zeros(1)}))
    assert set(state) == {"clip", "lr"}
    assert torch.equal(u["w"], torch.tensor([-0.5]))
    with pytest.raises(ValueError, match="unique"):
        tf.named_chain(("a", tf.identity()), ("a", tf.identity()))


def test_masked_applies_inner_only_where_mask_is_true():
    p = _params()
    tx = tf.masked(tf.scale_by_adam(), {"w": True, "b": False})
    state = tx.init(p)
    assert state.inner_state.mu["b"] == tf.MaskedNode()
    u, state = tx.update(p, state, p)
    assert torch.equal(u["b"], p["b"])
    assert not torch.equal(u["w"], p["w"])


def test_masked_accepts_a_mask_function():
    p = _params()
    tx = tf.masked(tf.set_to_zero(), lambda params: tf.tree_map(lambda x: x.ndim > 1, params))
    u, _ = tx.update(p, tx.init(p), p)
    assert torch.equal(u["w"], torch.zeros_like(p["w"])) and torch.equal(u["b"], p["b"])


def test_partition_routes_each_label_to_its_transform():
    p = _params()
    tx = tf.partition({"a": tf.scale(-1.0), "z": tf.set_to_zero()}, {"w": "a", "b": "z"})
    u, state = tx.update(p, tx.init(p), p)
    assert torch.equal(u["w"], -p["w"]) and torch.equal(u["b"], torch.zeros(3))
    assert set(state.inner_states) == {"a", "z"}


def test_partition_rejects_unknown_label():
    p = _params()
    tx = tf.partition({"a": tf.identity()}, {"w": "a", "b": "nope"})
    with pytest.raises(ValueError, match="nope"):
        tx.init(p)


def test_apply_updates_casts_back_and_is_pure():
    p = {"w": torch.ones(2, dtype=torch.bfloat16), "b": torch.ones(1)}
    u = {"w": torch.full((2,), 0.5, dtype=torch.float32), "b": None}
    new = tf.apply_updates(p, u)
    assert new["w"].dtype == torch.bfloat16 and new["b"] is p["b"]
    assert torch.equal(p["w"], torch.ones(2, dtype=torch.bfloat16))


def test_apply_updates_in_place_mutates_params():
    p = {"w": torch.ones(2)}
    out = tf.apply_updates_(p, {"w": torch.ones(2)})
    assert out is p and torch.equal(p["w"], torch.full((2,), 2.0))


def test_mismatched_trees_name_the_first_differing_path():
    tx = tf.scale_by_adam()
    state = tx.init({"layer": {"w": torch.zeros(2), "b": torch.zeros(2)}})
    with pytest.raises(ValueError, match=r"\['layer'\]\['c'\]|\['layer'\]\['b'\]"):
        tx.update({"layer": {"w": torch.zeros(2), "c": torch.zeros(2)}}, state)


def test_missing_leaf_is_reported_with_its_path():
    tx = tf.trace(0.9)
    state = tx.init({"a": torch.zeros(1), "b": [torch.zeros(1), torch.zeros(1)]})
    with pytest.raises(ValueError, match="leaves"):
        tx.update({"a": torch.zeros(1), "b": [torch.zeros(1)]}, state)


class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


@pytest.mark.parametrize(
    "params",
    [
        [torch.ones(2), torch.ones(3)],
        (torch.ones(2), {"k": torch.ones(1)}),
        Pair(torch.ones(2), torch.ones(2)),
        {"outer": {"inner": [torch.ones(2)]}},
    ],
    ids=["list", "tuple-dict", "namedtuple", "nested"],
)
def test_any_pytree_of_params_works(params):
    tx = tf.chain(tf.scale_by_adam(), tf.scale(-0.1))
    state = tx.init(params)
    u, state = tx.update(params, state, params)
    new = tf.apply_updates(params, u)
    assert type(new) is type(params)


def test_none_update_leaves_state_untouched():
    tx = tf.chain(tf.trace(0.9), tf.scale_by_adam())
    p = {"a": torch.ones(2), "b": torch.ones(2)}
    state = tx.init(p)
    _, state = tx.update(p, state, p)
    before = state[0].trace["b"].clone(), state[1].mu["b"].clone()
    u, state = tx.update({"a": torch.ones(2), "b": None}, state, p)
    assert u["b"] is None
    assert torch.equal(state[0].trace["b"], before[0]) and torch.equal(state[1].mu["b"], before[1])


def test_with_extra_args_support_drops_extras():
    strict = tf.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))
    tx = tf.with_extra_args_support(strict)
    assert tx.update({"w": torch.ones(1)}, (), None, value=1.0)[0]["w"].item() == 1.0


def test_state_is_tensor_only_and_picklable():
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.scale_by_adam(), tf.trace(0.9))
    p = _params()
    state = tx.init(p)
    _, state = tx.update(p, state, p)
    for leaf in tf.tree_leaves(state):
        assert leaf is None or isinstance(leaf, torch.Tensor)
    assert tf.tree_get(pickle.loads(pickle.dumps(state)), "count") == 1


def test_tree_get_and_tree_set_by_name():
    state = tf.chain(tf.scale_by_adam(), tf.scale(1.0)).init({"w": torch.zeros(1)})
    assert tf.tree_get(state, "count") == 0
    assert tf.tree_get(state, "missing", default="d") == "d"
    new = tf.tree_set(state, count=torch.tensor(7))
    assert tf.tree_get(new, "count") == 7 and tf.tree_get(state, "count") == 0
    with pytest.raises(KeyError):
        tf.tree_set(state, nope=1)
    two = tf.chain(tf.scale_by_adam(), tf.scale_by_adam()).init({"w": torch.zeros(1)})
    with pytest.raises(KeyError, match="2 times"):
        tf.tree_get(two, "count")


def test_inject_hyperparams_changes_take_effect_and_validate():
    tx = tf.inject_hyperparams(tf.scale_by_learning_rate)(learning_rate=0.1)
    p = {"w": torch.ones(1)}
    state = tx.init(p)
    u, state = tx.update(p, state, p)
    assert torch.allclose(u["w"], torch.tensor([-0.1]))
    state = tf.tree_set(state, learning_rate=torch.tensor(0.5, dtype=torch.float64))
    u, state = tx.update(p, state, p)
    assert torch.allclose(u["w"], torch.tensor([-0.5]))
    with pytest.raises(ValueError, match="learning_rate"):
        tf.inject_hyperparams(tf.scale_by_learning_rate)(learning_rate=-1.0)


def test_inject_hyperparams_evaluates_schedules_at_the_count():
    tx = tf.inject_hyperparams(tf.scale_by_learning_rate)(learning_rate=lambda c: 0.5**c)
    p = {"w": torch.ones(1)}
    state = tx.init(p)
    for expected in [1.0, 0.5, 0.25]:
        u, state = tx.update(p, state, p)
        assert torch.allclose(u["w"], torch.tensor([-expected]))
    assert torch.allclose(
        tf.tree_get(state, "learning_rate"), torch.tensor(0.25, dtype=torch.float64)
    )


def test_inject_hyperparams_compiles_without_recompiling_when_lr_changes():
    tx = tf.inject_hyperparams(tf.scale_by_learning_rate)(learning_rate=0.1)
    p = {"w": torch.ones(3)}

    @torch.compile(fullgraph=True)
    def step(p, g, s):
        u, s = tx.update(g, s, p)
        return tf.apply_updates(p, u), s

    state = tx.init(p)
    p, state = step(p, p, state)
    expected = 0.9  # p <- p - lr * p
    with torch.compiler.set_stance("fail_on_recompile"):
        for lr in [0.2, 0.3]:
            state = tf.tree_set(state, learning_rate=torch.tensor(lr, dtype=torch.float64))
            p, state = step(p, p, state)
            expected *= 1 - lr  # the new value took effect
            torch.testing.assert_close(p["w"], torch.full((3,), expected))


def test_sparse_gradients_fail_clearly_and_complex_ones_are_pairs_of_reals():
    p = {"w": torch.zeros(3)}
    tx = tf.scale_by_adam()
    with pytest.raises(ValueError, match="sparse"):
        tx.update({"w": torch.zeros(3).to_sparse()}, tx.init(p), p)
    c = {"w": torch.tensor([1 + 2j, -3j, 0.5], dtype=torch.complex128)}
    u, state = tx.update(c, tx.init(c), c)
    assert state.mu["w"].dtype == torch.complex128  # the state stays complex, as torch's
    real = {"w": torch.view_as_real(c["w"])}
    expected, _ = tx.update(real, tx.init(real), real)
    assert torch.equal(torch.view_as_real(u["w"]), expected["w"])
