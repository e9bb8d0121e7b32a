"""Tree helpers: properties, and the multi-tensor path equal to the per-leaf path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchopt_fn as tf
from torchopt_fn import _tree

shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=5)


def _tree_of(shape_list, seed):
    gen = torch.Generator().manual_seed(seed)
    return {
        f"p{i}": torch.randn(tuple(s), generator=gen, dtype=torch.float64)
        for i, s in enumerate(shape_list)
    }


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**16), st.floats(0.0, 0.999))
def test_update_moment_matches_per_leaf_formula(shape_list, seed, decay):
    g, m = _tree_of(shape_list, seed), _tree_of(shape_list, seed + 1)
    out = tf.tree_update_moment(g, m, decay, 2)
    for k in g:
        torch.testing.assert_close(
            out[k], decay * m[k] + (1 - decay) * g[k] ** 2, rtol=1e-14, atol=1e-15
        )


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_l2_norm_equals_norm_of_concatenation(shape_list, seed):
    t = _tree_of(shape_list, seed)
    flat = torch.cat([x.reshape(-1) for x in t.values()])
    torch.testing.assert_close(tf.tree_l2_norm(t), torch.linalg.vector_norm(flat))
    torch.testing.assert_close(tf.tree_l2_norm(t, squared=True), flat.dot(flat))
    torch.testing.assert_close(tf.tree_vdot(t, t), flat.dot(flat))


@settings(max_examples=30, deadline=None)
@given(shapes, st.integers(0, 2**16), st.floats(-3, 3), st.floats(-3, 3), st.floats(-3, 3))
def test_chain_is_associative_and_identity_is_neutral(shape_list, seed, a, b, c):
    g = _tree_of(shape_list, seed)
    txs = [tf.chain(tf.scale(a), tf.trace(0.5)), tf.chain(tf.clip(1.0), tf.scale(b)), tf.scale(c)]
    left = tf.chain(tf.chain(txs[0], txs[1]), txs[2])
    right = tf.chain(txs[0], tf.chain(txs[1], txs[2]))
    flat = tf.chain(tf.identity(), *txs, tf.identity())
    results = []
    for tx in (left, right, flat):
        state = tx.init(g)
        for _ in range(3):
            u, state = tx.update(g, state, g)
        results.append(u)
    for k in g:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=0, atol=0)
        torch.testing.assert_close(results[0][k], results[2][k], rtol=0, atol=0)


@settings(max_examples=20, deadline=None)
@given(shapes, st.integers(0, 2**16))
def test_tree_map_keeps_none_and_structure(shape_list, seed):
    t = _tree_of(shape_list, seed)
    t["none"] = None
    out = tf.tree_map(lambda x: x + 1, t)
    assert out["none"] is None and _tree.tree_structure(out) == _tree.tree_structure(t)


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: tf.scale_by_adam(nesterov=True),
        lambda: tf.trace(0.9, nesterov=True),
        lambda: tf.ema(0.8),
        lambda: tf.clip_by_global_norm(0.5),
        lambda: tf.add_decayed_weights(0.1),
    ],
)
def test_foreach_path_equals_per_leaf_path(monkeypatch, make_tx):
    params = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5), "c": None}
    grads = {"a": torch.randn(3, 4, dtype=torch.float64), "b": torch.randn(5), "c": None}

    def run():
        tx = make_tx()
        state = tx.init(params)
        for _ in range(3):
            u, state = tx.update(grads, state, params)
        return u, state

    fast = run()
    monkeypatch.setattr(_tree, "_use_foreach", lambda tensors: False)
    slow = run()
    for x, y in zip(_tree.tree_leaves(fast), _tree.tree_leaves(slow)):
        if x is None:
            assert y is None
        else:
            torch.testing.assert_close(x, y, rtol=1e-15, atol=0)


def test_bias_correction_is_computed_in_float64_for_float64_leaves():
    m = {"a": torch.ones(1, dtype=torch.float64)}
    out = tf.tree_bias_correction(m, 0.999, torch.tensor(3))
    assert out["a"].item() == 1.0 / (1 - 0.999**3)
