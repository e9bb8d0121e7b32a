"""The common battery over every public transformation (`helpers.TRANSFORMS`).

Each transform, on params of every kind of leaf (a matrix, a 4-D kernel, a vector, a 0-d
scalar, a zero-size tensor, all nested in dicts): `None` leaves, every float dtype, state
stability, inputs never mutated, compiled == eager without recompiling, vmap == a loop,
finite gradients through the update, multi-tensor == per-leaf kernels, views and odd
layouts == contiguous copies, and mismatched shapes refused before anything is computed.
Reference maths lives in tests/transforms/.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import TRANSFORMS, TxCase, assert_trees_close, transform_inputs, tx_step
from torchopt_fn.tree import _flatten, _ops

F64 = torch.float64


def _run(case: TxCase, params, grads_seq, tx=None) -> tuple[Any, Any]:
    """Every step's updates (as a list) and the final state."""
    tx = case.make() if tx is None else tx
    state = tx.init(params)
    outs = []
    for grads in grads_seq:
        updates, state = tx_step(case, tx, grads, state, params)
        outs.append(updates)
    return outs, state


def _tensor_leaves(tree: Any) -> list[torch.Tensor]:
    return [x for x in _flatten.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def test_table_covers_every_public_transformation():
    factories = {
        name
        for name in tf.transforms.__all__
        if inspect.isfunction(getattr(tf, name)) or callable(getattr(tf, name))
        if not isinstance(getattr(tf, name), type)
    }
    factories |= {"chain", "named_chain", "masked", "partition", "inject_hyperparams"}
    factories |= {"identity", "set_to_zero", "stateless", "stateless_with_tree_map"}
    factories |= {"with_extra_args_support", "freeze", "selective_transform"}
    factories |= {
        name
        for name in tf.wrappers.__all__
        if callable(getattr(tf, name)) and not name.endswith("State")
    }
    covered = {case.id for case in TRANSFORMS}
    missing = sorted(
        f for f in factories if not any(c == f or c.startswith(f + "_") for c in covered)
    )
    # Aliases of covered ones; a function (not a transform); and SparseAdam's transform, which
    # takes sparse gradients only and is tested against torch in test_torch_optim_db.
    aliases = ("momentum", "add_decoupled_weight_decay")
    special = ("newton_schulz", "scale_by_torch_sparse_adam")
    # Functions used by MultiSteps; measure_with_ema and snapshot are in `monitor`'s row;
    # lookahead optimizes LookaheadParams (test_wrappers); a deprecated alias; types.
    special += ("skip_not_finite", "skip_large_updates", "measure_with_ema", "snapshot")
    special += ("lookahead",)
    # Line searches need value=, grad= and value_fn= (tests/test_linesearch.py).
    special += ("scale_by_backtracking_linesearch", "scale_by_zoom_linesearch")
    special += ("value_and_grad_from_state",)
    # Functions, not transformations (tests/test_second_order.py).
    special += ("per_example_global_norm_clip", "per_example_layer_norm_clip")
    special += ("unitwise_clip", "unitwise_norm", "ConditionFn")
    special += ("inject_stateful_hyperparams", "LookaheadParams", "ShouldSkipUpdateFunction")
    special += ("QuantizedLeaf",)  # quantized_state's state leaf (tests/test_quantized.py)
    missing = [m for m in missing if m not in aliases + special]
    assert not missing, f"add these to helpers.TRANSFORMS: {missing}"


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_none_leaves_pass_through_and_keep_their_state(case: TxCase):
    params, grads_seq = transform_inputs()
    tx = case.make()
    state0 = tx.init(params)
    state = state0
    for grads in grads_seq:
        grads = {**grads, "conv": None, "layer": {**grads["layer"], "b": None}}
        updates, state = tx_step(case, tx, grads, state, params)
        assert updates["conv"] is None and updates["layer"]["b"] is None
        assert updates["layer"]["w"].shape == params["layer"]["w"].shape
    # Where the update was None the state is what init made.
    before = dict(
        zip(map(_flatten.path_str, _flatten.leaf_paths(state0)), _flatten.tree_leaves(state0))
    )
    for path, leaf in zip(
        map(_flatten.path_str, _flatten.leaf_paths(state)), _flatten.tree_leaves(state)
    ):
        if "['conv']" in path or "['b']" in path:
            old = before[path]
            assert (leaf is None and old is None) or torch.equal(leaf, old), path


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_all_none_updates(case: TxCase):
    """A step in which no parameter has a gradient (a `partition` label, a frozen model)."""
    params, _ = transform_inputs()
    tx = case.make()
    state = tx.init(params)
    nones = tf.tree_map(lambda p: None, params)
    updates, new_state = tx_step(case, tx, nones, state, params)
    assert all(u is None for u in _flatten.tree_leaves(updates))
    assert _flatten.tree_structure(new_state) == _flatten.tree_structure(state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_keeps_dtypes_shapes_and_state_structure(case: TxCase, dtype: torch.dtype):
    params, grads_seq = transform_inputs(dtype)
    tx = case.make()
    state0 = tx.init(params)
    signature = [(x.dtype, x.shape) for x in _tensor_leaves(state0)]
    state = state0
    for grads in grads_seq:
        updates, state = tx_step(case, tx, grads, state, params)
        for u, g in zip(_flatten.tree_leaves(updates), _flatten.tree_leaves(grads)):
            assert u.dtype == g.dtype and u.shape == g.shape
            assert bool(torch.isfinite(u).all())
        assert _flatten.tree_structure(state) == _flatten.tree_structure(state0)
        assert [(x.dtype, x.shape) for x in _tensor_leaves(state)] == signature


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_does_not_mutate_its_inputs(case: TxCase):
    params, grads_seq = transform_inputs()
    tx = case.make()
    state = tx.init(params)
    for grads in grads_seq:
        before = copy.deepcopy((grads, state, params))
        _, new_state = tx_step(case, tx, grads, state, params)
        assert_trees_close((grads, state, params), before, rtol=0, atol=0)
        state = new_state


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_compiles_without_recompiling_and_equals_eager(case: TxCase):
    params, grads_seq = transform_inputs()
    expected = _run(case, params, grads_seq)
    tx = case.make()
    torch._dynamo.reset()
    step = torch.compile(
        lambda g, s, p: tx_step(case, tx, g, s, p), backend="aot_eager", fullgraph=True
    )
    state = tx.init(params)
    outs = []
    for i, grads in enumerate(grads_seq):
        if i == 0:
            updates, state = step(grads, state, params)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                updates, state = step(grads, state, params)
        outs.append(updates)
    assert_trees_close((outs, state), expected, rtol=1e-12)


def _stack(trees: list[Any]) -> Any:
    leaves = [_flatten.tree_leaves(t) for t in trees]
    spec = _flatten.tree_structure(trees[0])
    return _flatten.tree_unflatten(spec, [torch.stack(xs) for xs in zip(*leaves)])


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_vmap_equals_a_loop(case: TxCase):
    members = [transform_inputs(seed=i) for i in range(3)]
    expected = [_run(case, p, gs) for p, gs in members]
    tx = case.make()
    params = _stack([p for p, _ in members])
    state = torch.func.vmap(tx.init, randomness="same")(params)
    step = torch.func.vmap(lambda g, s, p: tx_step(case, tx, g, s, p))
    for k in range(len(members[0][1])):
        updates, state = step(_stack([gs[k] for _, gs in members]), state, params)
    for i, (outs, final_state) in enumerate(expected):
        unstack = lambda t, i=i: tf.tree_map(lambda x: x[i], t)  # noqa: E731
        assert_trees_close(unstack(updates), outs[-1], rtol=1e-12)
        assert_trees_close(unstack(state), final_state, rtol=1e-12)


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_gradients_through_the_update_are_finite(case: TxCase):
    params, grads_seq = transform_inputs()
    tx = case.make()
    state = tx.init(params)
    for grads in grads_seq[:-1]:
        _, state = tx_step(case, tx, grads, state, params)

    def total(grads: Any, params: Any) -> torch.Tensor:
        updates, _ = tx_step(case, tx, grads, state, params)
        return sum(u.sum() for u in _flatten.tree_leaves(updates))

    d_grads, d_params = torch.func.grad(total, argnums=(0, 1))(grads_seq[-1], params)
    assert all(bool(torch.isfinite(x).all()) for x in _tensor_leaves((d_grads, d_params)))


@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_multi_tensor_equals_per_leaf(case: TxCase, monkeypatch):
    params, grads_seq = transform_inputs()
    fast = _run(case, params, grads_seq)
    monkeypatch.setattr(_ops, "use_foreach", lambda tensors: False)
    slow = _run(case, params, grads_seq)
    assert_trees_close(fast, slow, rtol=1e-14)


# --------------------------------------------------------------------------- layouts


def _transposed(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, -1).contiguous().transpose(0, -1) if x.dim() >= 2 else x


def _sliced(x: torch.Tensor) -> torch.Tensor:
    """The same values in every other element of a bigger buffer (not dense)."""
    big = torch.zeros((*x.shape, 2), dtype=x.dtype)
    big[..., 0] = x
    return big[..., 0]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _stride0(x: torch.Tensor) -> torch.Tensor:
    """A gradient as `torch.func.grad` gives it for a parameter used through ``.sum()``."""
    return x.reshape(-1)[:1].reshape([1] * x.dim()).expand(x.shape) if x.numel() else x


LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    # name: (what it does to params, what it does to gradients)
    "transposed": (_transposed, _transposed),
    "sliced": (_sliced, _sliced),
    "channels_last": (_channels_last, lambda g: g.contiguous()),
    "stride0_grads": (lambda p: p, _stride0),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_transform_on_views_equals_contiguous_copies(case: TxCase, layout: str):
    on_params, on_grads = LAYOUTS[layout]
    params, grads_seq = transform_inputs()
    params = tf.tree_map(on_params, params)
    grads_seq = [tf.tree_map(on_grads, g) for g in grads_seq]
    contiguous = lambda t: tf.tree_map(lambda x: x.contiguous(), t)  # noqa: E731
    got = _run(case, params, grads_seq)
    want = _run(case, contiguous(params), [contiguous(g) for g in grads_seq])
    if case.exact:
        assert_trees_close(got, want, rtol=0, atol=0)
    else:  # a reduction may sum in another order
        assert_trees_close(got, want, rtol=1e-12, atol=1e-16)


# --------------------------------------------------------------------------- bad input


def _compares_shapes(case: TxCase) -> bool:
    """Whether the transform has params or per-parameter state to compare an update with."""
    if not case.touches_first_leaf:
        return False
    params, _ = transform_inputs()
    state = case.make().init(params)
    return case.needs_params or any(x.shape == (2, 3, 2, 2) for x in _tensor_leaves(state))


@pytest.mark.parametrize("case", [c for c in TRANSFORMS if _compares_shapes(c)], ids=str)
def test_transform_refuses_a_broadcastable_update_naming_its_path(case: TxCase):
    params, grads_seq = transform_inputs()
    tx = case.make()
    state = tx.init(params)
    # A gradient that broadcasts to its parameter, at the leaf every case touches (masks
    # and labels select the first leaf in flattening order, "conv").
    grads = {**grads_seq[0], "conv": torch.ones(1, 3, 2, 2, dtype=F64)}
    before = copy.deepcopy((grads, state, params))
    with pytest.raises(ValueError, match=r"\['conv'\]"):
        tx_step(case, tx, grads, state, params)
    assert_trees_close((grads, state, params), before, rtol=0, atol=0)


# --------------------------------------------------------------------------- vmap: whole batches


def _batch_path_runs(monkeypatch: pytest.MonkeyPatch, per_op: bool) -> list[bool]:
    """Record whether each batchable `map_leaves` call ran under the batch (`_batched`);
    with ``per_op``, make every one take the per-op path instead."""
    taken: list[bool] = []
    under_batch = _ops._under_batch

    def spy(*args: Any) -> Any:
        result = _ops._PER_OP if per_op else under_batch(*args)
        taken.append(result is not _ops._PER_OP)
        return result

    monkeypatch.setattr(_ops, "_under_batch", spy)
    return taken


def _vmapped_steps(case: TxCase, dtype: torch.dtype = torch.float64) -> tuple[Any, Any]:
    """Three steps under vmap: gradients batched along their *last* axis (the tensors under the
    batch need moving), the params shared by all members (in_dims None: stride-0 expanded)."""
    members = [transform_inputs(dtype, seed=i) for i in range(3)]
    params = members[0][0]
    tx = case.make()
    stacked = tf.tree_map(lambda p: torch.stack([p] * 3), params)
    state = torch.func.vmap(tx.init, randomness="same")(stacked)
    step = torch.func.vmap(
        lambda g, s, p: tx_step(case, tx, g, s, p), in_dims=(-1, 0, None), randomness="same"
    )
    for k in range(len(members[0][1])):
        grads = tf.tree_map(lambda *xs: torch.stack(xs, dim=-1), *[gs[k] for _, gs in members])
        updates, state = step(grads, state, params)
    return updates, state


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", TRANSFORMS, ids=str)
def test_vmapped_update_under_the_batch_equals_the_per_op_path(
    case: TxCase, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
):
    """Maths run on the tensors under a vmap's batch with multi-tensor kernels gives the
    per-op path's numbers bit for bit, for every transformation, in float64 and bfloat16."""
    _batch_path_runs(monkeypatch, per_op=True)
    expected = _vmapped_steps(case, dtype)
    _batch_path_runs(monkeypatch, per_op=False)
    got = _vmapped_steps(case, dtype)
    assert_trees_close(got, expected, rtol=0.0, atol=0.0)


# Transformations whose every step runs under the batch in a plain vmap: each is a row whose
# maths is all `Ops` primitives (the rest run per op, correct and slower).
UNDER_THE_BATCH = {
    "sgd_momentum": lambda: tf.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: tf.adam(0.1),
    "adamw": lambda: tf.adamw(0.1, weight_decay=0.1),
    "nadam": lambda: tf.nadam(0.1),
    "amsgrad": lambda: tf.amsgrad(0.1),
    "adamax": lambda: tf.adamax(0.1),
    "radam": lambda: tf.radam(0.1),
    "adabelief": lambda: tf.adabelief(0.1),
    "yogi": lambda: tf.yogi(0.1),
    "rmsprop_centered": lambda: tf.rmsprop(0.1, centered=True, momentum=0.9),
    "adagrad": lambda: tf.adagrad(0.1),
    "adadelta": lambda: tf.adadelta(0.1),
    "lion": lambda: tf.lion(0.1, weight_decay=0.1),
    "sign_sgd": lambda: tf.chain(tf.scale_by_sign(), tf.scale(-0.1)),
    "rprop": lambda: tf.rprop(0.1),
    "ema": lambda: tf.ema(0.9),
    "torch_adam": lambda: tf.from_torch("Adam", lr=0.1, amsgrad=True),
    "torch_nadam": lambda: tf.from_torch("NAdam", lr=0.1),
    "torch_radam": lambda: tf.from_torch("RAdam", lr=0.1),
    "torch_asgd": lambda: tf.from_torch("ASGD", lr=0.1),
    "torch_sgd": lambda: tf.from_torch("SGD", lr=0.1, momentum=0.9),
    # per-tensor norms, each member's under the batch
    "clip_adamw": lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(0.1)),
    "lamb": lambda: tf.lamb(0.1, weight_decay=0.1),
    "lars": lambda: tf.lars(0.1),
    "fromage": lambda: tf.fromage(0.1),
    "novograd": lambda: tf.novograd(0.1),
    "adan": lambda: tf.adan(0.1, weight_decay=0.1),
    "optimistic_adam": lambda: tf.optimistic_adam(0.1),
}


@pytest.mark.parametrize("name", list(UNDER_THE_BATCH))
def test_optimizers_run_under_the_batch(name: str, monkeypatch: pytest.MonkeyPatch):
    taken = _batch_path_runs(monkeypatch, per_op=False)
    tx = UNDER_THE_BATCH[name]()
    params = tf.tree_map(lambda p: torch.stack([p, 2 * p]), transform_inputs()[0])
    state = torch.func.vmap(tx.init)(params)
    updates, state = torch.func.vmap(tx.update)(tf.tree_map(torch.ones_like, params), state, params)
    torch.func.vmap(tf.apply_updates)(params, updates)
    assert taken and all(taken), taken


def test_per_member_hyperparameters_run_under_the_batch(monkeypatch: pytest.MonkeyPatch):
    """`tf.adamw(lrs)` on stacked params is a vmap inside: its scalars, batched there, are
    lifted to one value per member, so its steps run under the batch too."""
    taken = _batch_path_runs(monkeypatch, per_op=False)
    lrs = torch.tensor([0.1, 0.2], dtype=torch.float64)
    tx = tf.adamw(lrs, b1=torch.tensor([0.9, 0.8], dtype=torch.float64), weight_decay=0.1)
    params = tf.tree_map(lambda p: torch.stack([p, 2 * p]), transform_inputs()[0])
    state = tx.init(params)
    for _ in range(2):
        _, state = tx.update(tf.tree_map(torch.ones_like, params), state, params)
    assert taken and all(taken), taken


@pytest.mark.parametrize(
    "make",
    [
        lambda: tf.adamw(0.1, weight_decay=0.1),
        lambda: tf.adam(tf.linear_schedule(0.1, 0.01, 5)),
        lambda: tf.from_torch("AdamW", lr=0.1),
    ],
    ids=["adamw", "adam_schedule", "torch_adamw"],
)
def test_fused_adam_under_the_batch_gives_each_member_its_own_step(
    make: Callable[[], Any], monkeypatch: pytest.MonkeyPatch
):
    """Adam's fused kernel takes one step count and learning rate for all the tensors it gets.
    Under a vmap's batch it runs where every member has the same (read on the host), and the
    members whose counts differ (states stacked from different points of training) take the
    generic ops: each member's update equals its own unbatched update either way."""
    from torchopt_fn import _fused

    kernel_runs: list[int] = []
    run_fused_ = _fused.run_fused_
    monkeypatch.setattr(
        _fused, "run_fused_", lambda *args: (kernel_runs.append(1), run_fused_(*args))[1]
    )
    tx = make()
    params, grads = transform_inputs()
    params = {k: v for k, v in params.items() if k != "empty"}  # a dense layout, as fused needs
    members = [tf.tree_map(lambda p, i=i: (i + 1) * p, params) for i in range(3)]
    g = {k: v for k, v in grads[0].items() if k != "empty"}
    for counts in ((2, 2, 2), (0, 1, 3)):
        states = []
        for p, n in zip(members, counts):
            state = tx.init(p)
            for _ in range(n):
                _, state = tx.update(g, state, p)
            states.append(state)
        expected = [tx.update(g, s, p) for s, p in zip(states, members)]
        stack = lambda trees: tf.tree_map(lambda *xs: torch.stack(xs), *trees)  # noqa: E731
        kernel_runs.clear()
        got = torch.func.vmap(tx.update)(stack([g] * 3), stack(states), stack(members))
        assert_trees_close(got, stack(expected), rtol=1e-15, atol=1e-15)
        assert bool(kernel_runs) == (len(set(counts)) == 1), (counts, kernel_runs)


def test_nested_vmap_and_grad_take_the_per_op_path_with_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch,
):
    """Under two vmap levels, or grad around vmap, the tensors under the batch are not plain:
    the per-op path runs, and each member's update is its own."""
    taken = _batch_path_runs(monkeypatch, per_op=False)
    # (eps_root > 0: the gradient below differentiates through Adam's square root)
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(0.1, weight_decay=0.1, eps_root=1e-8))
    params = {"w": torch.randn(2, 3, 4, 5, dtype=torch.float64)}  # 2 x 3 members
    grads = {"w": torch.randn(2, 3, 4, 5, dtype=torch.float64)}
    vv = torch.func.vmap(torch.func.vmap(tx.update))
    state = torch.func.vmap(torch.func.vmap(tx.init))(params)
    got, _ = vv(grads, state, params)
    for i in range(2):
        for j in range(3):
            member = {"w": params["w"][i, j]}
            expected, _ = tx.update({"w": grads["w"][i, j]}, tx.init(member), member)
            torch.testing.assert_close(got["w"][i, j], expected["w"], rtol=1e-14, atol=1e-15)

    # grad around vmap (a meta-gradient through the update): equal to the loop's
    inner = {"w": params["w"][0]}
    inner_grads, inner_state = {"w": grads["w"][0]}, torch.func.vmap(tx.init)(inner)

    def batched_total(p: Any) -> torch.Tensor:
        return torch.func.vmap(tx.update)(inner_grads, inner_state, p)[0]["w"].sum()

    def looped_total(p: Any) -> torch.Tensor:
        members = [({"w": inner_grads["w"][j]}, {"w": p["w"][j]}) for j in range(3)]
        return sum(tx.update(g, tx.init(m), m)[0]["w"].sum() for g, m in members)

    got = torch.func.grad(batched_total)(inner)
    expected = torch.func.grad(looped_total)(inner)
    torch.testing.assert_close(got["w"], expected["w"], rtol=1e-13, atol=1e-15)
    assert not any(taken), taken
