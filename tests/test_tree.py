"""Tree helpers: properties, and the multi-tensor path equal to the per-leaf path."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, NamedTuple

import optree
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn.tree import _flatten as _tree
from torchopt_fn.tree import _ops

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
    monkeypatch.setattr(_ops, "use_foreach", lambda tensors: False)
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


# ----------------------------------------------------------------------- flattening while compiling


class _Pair(NamedTuple):
    first: Any
    second: Any


_leaves = st.one_of(
    st.none(),
    st.integers(0, 3).map(torch.zeros),
    st.integers(-3, 3),
    st.floats(-1, 1),
    st.text(max_size=2),
)
_trees = st.recursive(
    _leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.lists(kids, max_size=4).map(tuple),
        st.lists(kids, max_size=4).map(_tree.ParamList),
        st.builds(_Pair, kids, kids),
        st.dictionaries(st.text(max_size=2), kids, max_size=4),
        st.dictionaries(st.integers(-5, 5), kids, max_size=4),
    ),
    max_leaves=12,
)


def _assert_same(a: Any, b: Any) -> None:
    """Same node types, dict key order and leaf objects."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        a, b = list(a.values()), list(b.values())
    if isinstance(a, (list, tuple, collections.deque)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a is b


def _optree_flatten(tree: Any) -> tuple[list[Any], optree.PyTreeSpec]:
    return optree.tree_flatten(tree, none_is_leaf=True, namespace="torchopt_fn")


@settings(max_examples=200, deadline=None)
@given(_trees)
def test_loop_flatten_equals_optree(tree):
    leaves, spec = _tree._loop_flatten(tree)
    ref_leaves, ref_spec = _optree_flatten(tree)
    assert len(leaves) == len(ref_leaves) == spec.num_leaves
    assert all(x is y for x, y in zip(leaves, ref_leaves))
    rebuilt = _tree.tree_unflatten(spec, leaves)
    _assert_same(rebuilt, tree)
    assert _optree_flatten(rebuilt)[1] == ref_spec
    assert spec == _tree._loop_flatten(rebuilt)[1]
    new = [object() for _ in leaves]
    _assert_same(_tree.tree_unflatten(spec, new), optree.tree_unflatten(ref_spec, new))
    assert all(x is y for x, y in zip(spec.flatten_up_to(tree), ref_leaves))


@settings(max_examples=50, deadline=None)
@given(_trees)
def test_loop_flatten_up_to_takes_subtrees_at_leaves(tree):
    leaves, spec = _tree._loop_flatten(tree)
    fuller = _tree.tree_unflatten(spec, [[x, {"k": x}] for x in leaves])
    expected = _optree_flatten(tree)[1].flatten_up_to(fuller)
    _assert_same(spec.flatten_up_to(fuller), expected)


@dataclasses.dataclass
class _Registered:
    x: Any


optree.register_pytree_node(
    _Registered,
    lambda r: ([r.x], None, None),
    lambda _, xs: _Registered(*xs),
    namespace="torchopt_fn",
)


class _CustomPair(NamedTuple):
    first: Any
    second: Any


with pytest.warns(UserWarning, match="namedtuple"):
    optree.register_pytree_node(  # children reversed, to tell it from a NamedTuple node
        _CustomPair,
        lambda p: ([p.second, p.first], None, None),
        lambda _, xs: _CustomPair(xs[1], xs[0]),
        namespace="torchopt_fn",
    )


@pytest.mark.parametrize(
    "tree",
    [
        collections.OrderedDict(b=torch.ones(1), a=None),
        collections.defaultdict(list, {"a": torch.ones(1)}),
        collections.deque([torch.ones(1), None]),
        {"a": torch.ones(1), 1: torch.zeros(1)},  # keys that `sorted` cannot order
        {"w": [_Registered(torch.ones(1))]},
        _CustomPair(torch.ones(1), torch.zeros(1)),
        torch.max(torch.ones(2, 2), dim=0),  # a structseq
        [torch.Size([2, 3]), object()],  # leaves to optree, unknown to the loop
    ],
    ids=lambda t: type(t).__name__,
)
def test_loop_flatten_falls_back_to_optree(monkeypatch, tree):
    assert _tree._loop_flatten(tree) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    leaves, spec = _tree.tree_flatten(tree)
    ref_leaves, ref_spec = _optree_flatten(tree)
    assert spec == ref_spec and all(x is y for x, y in zip(leaves, ref_leaves))
    assert _tree.tree_leaves(tree) == leaves and _tree.tree_structure(tree) == ref_spec
    assert isinstance(spec, optree.PyTreeSpec)  # optree's own spec: rebuilt by optree


def test_tree_helpers_use_the_loop_while_compiling(monkeypatch):
    tree = {"b": [torch.ones(1), None], "a": _Pair(_tree.ParamList([torch.zeros(2)]), 3)}
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    leaves, spec = _tree.tree_flatten(tree)
    assert isinstance(spec, _tree._LoopSpec)
    assert isinstance(_tree.tree_structure(tree), _tree._LoopSpec)
    assert _tree.tree_leaves(tree) == leaves and len(leaves) == 4
    _assert_same(_tree.tree_unflatten(spec, leaves), tree)
    # As in optree, a dict matches any standard dict with the same keys, in any order.
    reordered = {"a": tree["a"], "b": tree["b"]}
    for other in (reordered, collections.OrderedDict(tree)):
        assert _tree.flatten_like(spec, tree, other, "test") == leaves
    assert _tree.tree_structure(reordered) == spec  # blind to the order, as optree is
    with pytest.raises(ValueError, match=r"test: .*\['b'\]\[1\]"):
        _tree.flatten_like(spec, tree, {"a": tree["a"], "b": [None]}, "test")
    with pytest.raises(ValueError, match=r"test: .*'c'"):
        _tree.flatten_like(spec, tree, {**tree, "c": None}, "test")
    with pytest.raises(ValueError, match=r"2 leaves for a spec of 4 \(LoopSpec\(\{'b': \[\*, \*\]"):
        _tree.tree_unflatten(spec, leaves[:2])


def test_loop_flatten_keeps_optree_dict_order_mode():
    tree = {"b": torch.ones(1), "a": torch.zeros(1)}
    with optree.dict_insertion_ordered(True, namespace="torchopt_fn"):
        assert _tree._loop_flatten(tree) is None
    assert _tree._loop_flatten(tree)[0][0] is tree["a"]


# --------------------------------------------------------------------------- ravel_tree


def _ravel_problem() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
        "b": torch.randn(3, generator=gen, dtype=torch.float64),
        "none": None,
    }


def test_ravel_tree_unravels_to_views_in_leaf_order():
    params = _ravel_problem()
    flat, unravel = tf.ravel_tree(params)
    torch.testing.assert_close(flat, torch.cat([params["b"], params["w"].reshape(-1)]))
    tree = unravel(flat)
    assert tree["none"] is None
    torch.testing.assert_close(tree, params)
    assert tree["w"].untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()


def test_optimizing_the_raveled_tree_is_the_same_for_elementwise_optimizers():
    params = _ravel_problem()
    flat, unravel = tf.ravel_tree(params)

    def loss(p: Any) -> torch.Tensor:
        return (p["w"] ** 4).sum() + (torch.sin(p["b"]) * p["w"].sum(0)).sum()

    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(0.1, weight_decay=0.1))
    state, flat_state = tx.init(params), tx.init(flat)
    for _ in range(10):
        live = {k: v for k, v in params.items() if v is not None}
        grads = {**torch.func.grad(loss)(live), "none": None}
        updates, state = tx.update(grads, state, params)
        params = tf.apply_updates(params, updates)
        flat_grads = torch.func.grad(lambda f: loss(unravel(f)))(flat)
        updates, flat_state = tx.update(flat_grads, flat_state, flat)
        flat = tf.apply_updates(flat, updates)
    torch.testing.assert_close(unravel(flat), params, rtol=1e-12, atol=1e-15)


def test_ravel_tree_rejects_mixed_dtypes_and_a_wrong_flat_shape():
    with pytest.raises(ValueError, match="share one dtype and device"):
        tf.ravel_tree({"a": torch.zeros(2), "b": torch.zeros(2, dtype=torch.float64)})
    _, unravel = tf.ravel_tree({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        unravel(torch.zeros(3))


# --------------------------------------------------------------------------- optax's tree_utils


def test_tree_norm_orders_and_errors():
    tree = {"a": torch.tensor([3.0, -1.0]), "b": None, "c": torch.tensor(-4.0, dtype=torch.float64)}
    assert float(tf.tree_norm(tree)) == pytest.approx(26**0.5)
    assert float(tf.tree_norm(tree, squared=True)) == pytest.approx(26.0)
    assert float(tf.tree_norm(tree, 1)) == 8.0
    assert float(tf.tree_norm(tree, float("inf"), squared=True)) == 16.0
    with pytest.raises(ValueError, match="ord"):
        tf.tree_norm(tree, 3)


def test_tree_max_min_size_skip_empty_and_none_leaves():
    tree = {"a": torch.tensor([3.0, -1.0]), "e": torch.zeros(0), "n": None}
    assert (float(tf.tree_max(tree)), float(tf.tree_min(tree)), tf.tree_size(tree)) == (3, -1, 2)
    with pytest.raises(ValueError, match="no elements"):
        tf.tree_max({"e": torch.zeros(0)})


def test_tree_get_all_with_path_by_name_type_and_filter():
    state = tf.chain(tf.scale_by_adam(), tf.trace(0.9)).init({"w": torch.zeros(1)})
    by_type = tf.tree_get_all_with_path(state, tf.ScaleByAdamState)
    assert [p for p, _ in by_type] == [(0,)] and isinstance(by_type[0][1], tf.ScaleByAdamState)
    named = tf.tree_get_all_with_path(state, "w")
    assert [p for p, _ in named] == [(0, "mu", "w"), (0, "nu", "w"), (1, "trace", "w")]
    kept = tf.tree_get_all_with_path(state, "w", filtering=lambda path, v: "nu" in path)
    assert [p for p, _ in kept] == [(0, "nu", "w")]


def test_tree_random_like_draws_from_the_generator():
    target = {"w": torch.zeros(2, 3, dtype=torch.float64), "b": torch.zeros(3)}
    a = tf.tree_random_like(torch.Generator().manual_seed(1), target)
    b = tf.tree_random_like(torch.Generator().manual_seed(1), target)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == target[k].dtype for k in target)
    assert tf.tree_batch_shape(target, (4,))["w"].shape == (4, 2, 3)


def test_tree_state_dict_round_trips_through_torch_save_and_dcp(tmp_path):
    """Stable dotted keys, the tree's own tensors: ``torch.load(weights_only=True)`` and
    `torch.distributed.checkpoint` (which loads in place into the dict's tensors) both work."""
    import torch.distributed.checkpoint as dcp

    params = {"w": torch.randn(3, 2), "b": torch.randn(2)}
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(0.1))
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(tf.tree_map(torch.ones_like, params), state, params)
    flat = tf.tree_state_dict(state)
    assert sorted(flat) == ["0.norm", "1.0.count", "1.0.mu.b", "1.0.mu.w", "1.0.nu.b", "1.0.nu.w"]
    assert flat["1.0.mu.w"] is state[1][0].mu["w"]
    path = tmp_path / "state.pt"
    torch.save(flat, path)
    fresh = tf.tree_load_state_dict_(tx.init(params), torch.load(path, weights_only=True))
    assert_trees_close(fresh, state, rtol=0, atol=0)
    dcp.save(flat, checkpoint_id=tmp_path / "dcp")
    again = tx.init(params)
    dcp.load(tf.tree_state_dict(again), checkpoint_id=tmp_path / "dcp")
    assert_trees_close(again, state, rtol=0, atol=0)


def test_tree_load_state_dict_refuses_a_malformed_dict_before_writing():
    state = tf.adam(0.1).init({"w": torch.zeros(2)})
    good = {k: v.clone() for k, v in tf.tree_state_dict(state).items()}
    cases = {
        "missing keys \\['0.nu.w'\\]": {k: v for k, v in good.items() if k != "0.nu.w"},
        "unexpected keys \\['extra'\\]": {**good, "extra": torch.zeros(1)},
        "0.mu.w has shape \\(3,\\), expected \\(2,\\)": {**good, "0.mu.w": torch.ones(3)},
    }
    for match, bad in cases.items():
        poisoned = {k: torch.full_like(v, 9) if k != "0.mu.w" else v for k, v in bad.items()}
        with pytest.raises(ValueError, match=match):
            tf.tree_load_state_dict_(state, poisoned)
        assert_trees_close(tf.tree_state_dict(state), good, rtol=0, atol=0)
