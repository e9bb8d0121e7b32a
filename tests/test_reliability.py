"""Bad input and faults: a clear error before anything changes, or a correct result.

The classes, each with cases of its own: hyperparameters checked at construction; trees and
shapes checked before any state or parameter changes (functional, in place, compiled); fast
paths stepping aside for layouts they cannot handle; the `Optimizer` adapter never
half-stepping and never bricked by a checkpoint; dtypes kept; state that pickles and loads
with ``weights_only=True``; and a fuzz over random trees and chains.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn._validate import check_non_negative, checks_disabled

F64 = torch.float64
NAN = float("nan")


def _params() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=gen, dtype=F64),
        "b": torch.randn(3, generator=gen, dtype=F64),
    }


def _grads() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        "w": torch.randn(4, 3, generator=gen, dtype=F64),
        "b": torch.randn(3, generator=gen, dtype=F64),
    }


# --------------------------------------------------------------------------- hyperparameters

BAD_HYPERPARAMETERS = [
    ("adam-string-lr", lambda: tf.adam("0.1"), TypeError, "learning_rate"),
    ("adam-string-b1", lambda: tf.adam(0.1, b1="0.9"), TypeError, "b1"),
    ("adam-bool-lr", lambda: tf.adam(True), TypeError, "learning_rate"),
    ("adam-list-eps", lambda: tf.adam(0.1, eps=[1e-8]), TypeError, "eps"),
    # (a vector is one value per member of stacked params: tests/test_members.py)
    ("adam-matrix-lr", lambda: tf.adam(torch.ones(2, 3)), ValueError, "learning_rate"),
    ("adam-complex-lr", lambda: tf.adam(torch.tensor(0.1 + 0j)), TypeError, "real"),
    ("adam-nan-b2", lambda: tf.adam(0.1, b2=NAN), ValueError, "b2"),
    ("adamw-negative-wd", lambda: tf.adamw(0.1, weight_decay=-1.0), ValueError, "weight_decay"),
    ("adamw-nan-wd", lambda: tf.adamw(0.1, weight_decay=NAN), ValueError, "weight_decay"),
    (
        "adamw-nan-tensor-wd",
        lambda: tf.adamw(0.1, weight_decay=torch.tensor(NAN)),
        ValueError,
        "weight_decay",
    ),
    ("adamaxw-negative-wd", lambda: tf.adamaxw(0.1, weight_decay=-0.1), ValueError, "weight_decay"),
    ("adan-negative-wd", lambda: tf.adan(0.1, weight_decay=-0.1), ValueError, "weight_decay"),
    ("lion-negative-wd", lambda: tf.lion(0.1, weight_decay=-1e-3), ValueError, "weight_decay"),
    ("lamb-nan-wd", lambda: tf.lamb(0.1, weight_decay=NAN), ValueError, "weight_decay"),
    ("lars-negative-wd", lambda: tf.lars(0.1, weight_decay=-1.0), ValueError, "weight_decay"),
    (
        "adadelta-negative-wd",
        lambda: tf.adadelta(1.0, weight_decay=-1.0),
        ValueError,
        "weight_decay",
    ),
    (
        "adafactor-negative-wd",
        lambda: tf.adafactor(weight_decay_rate=-1.0),
        ValueError,
        "weight_decay_rate",
    ),
    ("add_decayed_weights-nan", lambda: tf.add_decayed_weights(NAN), ValueError, "weight_decay"),
    ("sgd-nan-momentum", lambda: tf.sgd(0.1, momentum=NAN), ValueError, "decay"),
    ("sgd-string-momentum", lambda: tf.sgd(0.1, momentum="0.9"), TypeError, "decay"),
    ("rmsprop-matrix-decay", lambda: tf.rmsprop(0.1, decay=torch.ones(2, 2)), ValueError, "decay"),
    ("clip_by_global_norm-zero", lambda: tf.clip_by_global_norm(0.0), ValueError, "max_norm"),
    ("clip_by_global_norm-negative", lambda: tf.clip_by_global_norm(-1.0), ValueError, "max_norm"),
    ("clip-string", lambda: tf.clip("1"), TypeError, "max_delta"),
    ("scale-string", lambda: tf.scale("2"), TypeError, "step_size"),
    ("scale-nan", lambda: tf.scale(NAN), ValueError, "step_size"),
    ("scale_by_schedule-number", lambda: tf.scale_by_schedule(0.5), TypeError, "step_size_fn"),
    (
        "inject-negative-lr",
        lambda: tf.inject_hyperparams(tf.adam)(learning_rate=-1.0),
        ValueError,
        "learning_rate",
    ),
    (
        "from_torch-negative-wd",
        lambda: tf.from_torch(torch.optim.AdamW, weight_decay=-1),
        ValueError,
        "weight_decay",
    ),
    ("from_torch-string-lr", lambda: tf.from_torch(torch.optim.Adam, lr="x"), TypeError, "Adam"),
    ("rprop-negative-lr", lambda: tf.rprop(-0.1), ValueError, "learning_rate"),
    ("scale_by_trust_ratio-nan", lambda: tf.scale_by_trust_ratio(eps=NAN), ValueError, "eps"),
]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [c[1:] for c in BAD_HYPERPARAMETERS],
    ids=[c[0] for c in BAD_HYPERPARAMETERS],
)
def test_bad_hyperparameter_is_refused_at_construction(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_checks_off_in_one_thread_are_on_in_another():
    """`checks_disabled` (used while `inject_hyperparams` rebuilds) is per thread."""
    inside, outside = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def silenced():
        with checks_disabled():
            check_non_negative("x", -1.0)  # no error here
            inside.set()
            outside.wait(5)

    thread = threading.Thread(target=silenced)
    thread.start()
    inside.wait(5)
    try:
        with pytest.raises(ValueError, match="x must be >= 0"):
            check_non_negative("x", -1.0)
    except BaseException as e:  # pragma: no cover - reported below
        errors.append(e)
    finally:
        outside.set()
        thread.join()
    assert not errors


def test_zero_gradient_through_global_norm_clipping_is_finite():
    tx = tf.clip_by_global_norm(1e-3)
    zeros = tf.tree_zeros_like(_params())
    updates, state = tx.update(zeros, tx.init(zeros))
    assert all(torch.equal(u, torch.zeros_like(u)) for u in updates.values())
    assert torch.isfinite(state.norm)


OUT_OF_RANGE = [
    (tf.scale_by_adadelta, {"rho": 1.5}, "rho"),
    (tf.scale_by_adamax, {"b1": 1.0}, "b1"),
    (tf.scale_by_adan, {"b3": 1.0}, "b3"),
    (tf.scale_by_amsgrad, {"b2": -0.1}, "b2"),
    (tf.scale_by_belief, {"eps_root": -1e-16}, "eps_root"),
    (tf.scale_by_lion, {"mode": "soft"}, "mode"),
    (tf.scale_by_lion, {"mode": "smooth", "smooth_beta": 0.0}, "smooth_beta"),
    (tf.scale_by_novograd, {"weight_decay": -0.1}, "weight_decay"),
    (tf.scale_by_radam, {"threshold": 3.0}, "threshold"),
    (tf.scale_by_rms, {"decay": 1.0, "bias_correction": True}, "decay"),
    (tf.scale_by_rss, {"initial_accumulator_value": -0.1}, "initial_accumulator_value"),
    (tf.scale_by_stddev, {"initial_scale": -1.0}, "initial_scale"),
    (tf.scale_by_yogi, {"initial_accumulator_value": 0.0}, "initial_accumulator_value"),
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
    ("factory", "kwargs", "match"),
    OUT_OF_RANGE,
    ids=[f"{f.__name__}-{m}" for f, _, m in OUT_OF_RANGE],
)
def test_transform_hyperparameter_out_of_range_is_refused(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: tf.scale_by_trust_ratio(),
        lambda: tf.adaptive_grad_clip(0.1),
        lambda: tf.keep_params_nonnegative(),
        lambda: tf.scale_by_novograd(weight_decay=0.1),
        lambda: tf.add_decayed_weights(0.1),
        lambda: tf.scale_by_torch_asgd(0.1),
    ],
)
def test_missing_params_are_a_clear_error(make):
    tx = make()
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(_grads(), tx.init(_params()))


def test_unsupported_inputs_raise():
    with pytest.raises(ValueError, match="complex"):
        tf.scale_by_sm3().init({"w": torch.zeros(2, 2, dtype=torch.complex64)})
    tx = tf.adaptive_grad_clip(0.1)
    p = {"w": torch.ones(2, 2, 2, 2, 2, 2)}
    with pytest.raises(ValueError, match="axis"):
        tx.update(p, tx.init(p), p)
    u, _ = tf.adaptive_grad_clip(0.1, axis=(0, 1)).update(p, tx.init(p), p)
    assert u["w"].shape == p["w"].shape


# --------------------------------------------------------------------------- trees and shapes


def _broadcastable_grads() -> dict[str, torch.Tensor]:
    return {**_grads(), "b": torch.ones(1, dtype=F64)}


@pytest.mark.parametrize(
    "make",
    [lambda: tf.adam(0.1), lambda: tf.adamw(0.1), lambda: tf.sgd(0.1, 0.9), lambda: tf.lion(0.1)],
)
def test_broadcastable_gradient_is_refused_before_any_state_changes(make):
    tx = make()
    params = _params()
    state = tx.init(params)
    before = copy.deepcopy(state)
    with pytest.raises(ValueError, match=r"\['b'\].*\(1,\).*\(3,\)"):
        tx.update(_broadcastable_grads(), state, params)
    assert_trees_close(state, before, rtol=0, atol=0)


def test_oversized_gradient_never_reaches_a_fused_kernel():
    """(4,) against (3,) state read past the moments; a large one segfaulted."""
    tx = tf.adam(0.1)
    params = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"\['w'\]"):
        tx.update({"w": torch.ones(1_000_000)}, tx.init(params), params)


def test_state_of_other_params_is_refused_naming_the_path():
    tx = tf.adam(0.1)
    state = tx.init({"w": torch.zeros(4, 1, dtype=F64), "b": torch.zeros(3, dtype=F64)})
    with pytest.raises(ValueError, match=r"\['w'\].*\(4, 3\).*\(4, 1\)"):
        tx.update(_grads(), state, _params())


@pytest.mark.parametrize(
    ("grads", "match"),
    [
        ({"w": torch.ones(4, 3, dtype=F64)}, r"\['b'\]"),
        ({**_grads(), "extra": torch.ones(1, dtype=F64)}, r"\['extra'\]"),
        ({"w": torch.ones(4, 3, dtype=F64), "c": torch.ones(3, dtype=F64)}, r"\['b'\]|\['c'\]"),
    ],
    ids=["missing", "extra", "renamed"],
)
def test_mismatched_tree_is_refused_naming_the_path(grads, match):
    tx = tf.adamw(0.1)
    with pytest.raises(ValueError, match=match):
        tx.update(grads, tx.init(_params()), _params())


def test_apply_updates_refuses_to_broadcast_an_update_into_a_parameter():
    params = {"w": torch.zeros(1, dtype=F64)}
    with pytest.raises(ValueError, match=r"\['w'\]"):
        tf.apply_updates(params, {"w": torch.ones(3, dtype=F64)})


def test_apply_updates_in_place_changes_nothing_when_one_leaf_is_wrong():
    params = _params()
    before = copy.deepcopy(params)
    updates = {"w": torch.ones(4, 3, dtype=F64), "b": torch.ones(1, dtype=F64)}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        tf.apply_updates_(params, updates)
    assert_trees_close(params, before, rtol=0, atol=0)


def test_copy_into_refuses_to_broadcast():
    with pytest.raises(ValueError, match=r"\['w'\]"):
        tf.copy_into_({"w": torch.zeros(3)}, {"w": torch.ones(1)})


@pytest.mark.parametrize(
    "leaf", [np.ones(3), 1.5, [torch.ones(3)]], ids=["numpy", "float", "list_in_place_of_tensor"]
)
def test_non_tensor_update_is_a_type_error_naming_the_leaf(leaf):
    tx = tf.adam(0.1)
    params = {"w": torch.zeros(3), "b": torch.zeros(3)}
    grads = {"w": torch.ones(3), "b": leaf}
    with pytest.raises((TypeError, ValueError), match=r"\['b'\]"):
        tx.update(grads, tx.init(params), params)


def test_numpy_update_in_apply_updates_is_a_type_error():
    with pytest.raises(TypeError, match=r"\['w'\].*ndarray"):
        tf.apply_updates({"w": torch.zeros(3)}, {"w": np.ones(3)})


def test_sparse_gradient_is_refused_naming_the_path():
    tx = tf.adam(0.1)
    params = {"w": torch.zeros(3)}
    with pytest.raises(ValueError, match=r"\['w'\].*sparse"):
        tx.update({"w": torch.ones(3).to_sparse()}, tx.init(params), params)


def test_adam_optimises_a_complex_parameter_as_a_pair_of_reals():
    tx = tf.adam(0.1)
    params = {"w": torch.zeros(3, dtype=torch.complex64)}
    u, _ = tx.update({"w": torch.full((3,), 1 - 1j)}, tx.init(params), params)
    assert u["w"].dtype == torch.complex64
    torch.testing.assert_close(u["w"], torch.full((3,), -0.1 + 0.1j))


def test_chain_refuses_a_state_of_another_length():
    tx = tf.chain(tf.scale(1.0), tf.trace(0.9))
    with pytest.raises(ValueError, match="2 transformations"):
        tx.update(_grads(), (tf.EmptyState(),), _params())


# --------------------------------------------------------------------------- compile_step


@pytest.mark.parametrize("donate", [True, False])
def test_compile_step_gives_the_eager_error_and_writes_nothing(donate):
    tx = tf.adamw(0.1)
    step = tf.compile_step(tx, donate=donate, backend="eager")
    params = _params()
    state = tx.init(params)
    params, state = step(params, _grads(), state)
    before = copy.deepcopy((params, state))
    with pytest.raises(ValueError, match=r"\['b'\]"):
        step(params, _broadcastable_grads(), state)
    assert_trees_close((params, state), before, rtol=0, atol=0)


def test_compile_step_refuses_state_of_other_params():
    tx = tf.adam(0.1)
    step = tf.compile_step(tx, backend="eager")
    state = tx.init({"w": torch.zeros(4, 1, dtype=F64), "b": torch.zeros(3, dtype=F64)})
    with pytest.raises(ValueError, match=r"\['w'\]"):
        step(_params(), _grads(), state)


def test_compile_step_refuses_to_donate_a_tied_parameter():
    shared = torch.zeros(3, dtype=F64)
    params = {"encoder": shared, "decoder": shared}
    tx = tf.sgd(0.1, momentum=0.9)
    grads = {"encoder": torch.ones(3, dtype=F64), "decoder": torch.ones(3, dtype=F64)}
    with pytest.raises(ValueError, match="share memory"):
        tf.compile_step(tx, backend="eager")(params, grads, tx.init(params))
    new_params, _ = tf.compile_step(tx, donate=False, backend="eager")(
        params, grads, tx.init(params)
    )
    assert torch.equal(shared, torch.zeros(3, dtype=F64))  # not donated, not written
    assert torch.allclose(new_params["encoder"], torch.full((3,), -0.1, dtype=F64))


def test_compile_step_refuses_overlapping_views_but_takes_disjoint_ones():
    flat = torch.zeros(6, dtype=F64)
    tx = tf.sgd(0.5)
    step = tf.compile_step(tx, backend="eager")
    disjoint = {"a": flat[:3], "b": flat[3:]}
    grads = {"a": torch.ones(3, dtype=F64), "b": torch.ones(3, dtype=F64)}
    step(disjoint, grads, tx.init(disjoint))
    assert torch.equal(flat, torch.full((6,), -0.5, dtype=F64))
    overlapping = {"a": flat[:3], "b": flat[2:5]}
    with pytest.raises(ValueError, match="share memory"):
        step(overlapping, grads, tx.init(overlapping))


# --------------------------------------------------------------------------- fast paths


def _func_grads_of_sum(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`torch.func.grad` of a loss using ``b`` only through ``.sum()``: a stride-0 gradient."""
    return torch.func.grad(lambda p: (p["w"] ** 2).sum() + p["b"].sum())(params)


def test_func_grad_stride0_gradient_through_functional_adam_is_right():
    """It read past the one-element storage: NaN at 1,000 elements, a segfault at 20M."""
    params = {"w": torch.randn(8, 4, dtype=F64), "b": torch.randn(100_000, dtype=F64)}
    grads = _func_grads_of_sum(params)
    assert grads["b"].stride() == (0,)
    for make in (lambda: tf.adam(1e-3), lambda: tf.adamw(1e-3, weight_decay=0.1)):
        tx = make()
        got, _ = tx.update(grads, tx.init(params), params)
        dense = {k: g.contiguous() for k, g in grads.items()}
        want, _ = tx.update(dense, tx.init(params), params)  # the fused kernel, as it may
        assert bool(torch.isfinite(got["b"]).all())
        assert_trees_close(got, want, rtol=1e-13, atol=0)


def _conv_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(64, 1)
    )
    return model.to(memory_format=torch.channels_last).double()


def _allreduce_style_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor):
    """Backward, then re-point every ``.grad`` into one flat buffer (as DDP's buckets do)."""
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.reshape(-1) for g in grads])
    offset = 0
    for p in model.parameters():
        p.grad = flat[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    opt.step()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda ps: tf.Optimizer(ps, tf.adam(1e-2)), lambda ps: torch.optim.Adam(ps, 1e-2)),
        (
            lambda ps: tf.Optimizer(ps, tf.adamw(1e-2, weight_decay=0.1)),
            lambda ps: torch.optim.AdamW(ps, 1e-2, weight_decay=0.1),
        ),
        (
            lambda ps: tf.Optimizer(ps, tf.sgd(1e-2, momentum=0.9)),
            lambda ps: torch.optim.SGD(ps, 1e-2, momentum=0.9),
        ),
    ],
    ids=["adam", "adamw", "sgd"],
)
def test_channels_last_with_flat_buffer_gradients_matches_torch(ours, theirs):
    x = torch.randn(5, 3, 6, 6, dtype=F64).contiguous(memory_format=torch.channels_last)
    mine, ref = _conv_model(), _conv_model()
    opt_mine, opt_ref = ours(mine.parameters()), theirs(ref.parameters())
    for _ in range(5):
        _allreduce_style_step(mine, opt_mine, x)
        _allreduce_style_step(ref, opt_ref, x)
    for p, q in zip(mine.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_sliced_and_transposed_parameters_match_torch():
    base = torch.randn(6, 8, dtype=F64)
    mine = [torch.nn.Parameter(base.clone()[:, ::2]), torch.nn.Parameter(base.clone().t())]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in mine]
    opt_mine, opt_ref = (
        tf.Optimizer(mine, tf.adamw(1e-2)),
        torch.optim.AdamW(ref, 1e-2, weight_decay=1e-4),
    )
    for _ in range(5):
        for ps, opt in ((mine, opt_mine), (ref, opt_ref)):
            opt.zero_grad()
            sum((p**3).sum() for p in ps).backward()
            opt.step()
    for p, q in zip(mine, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_group_override_of_eps_root_takes_effect():
    """The fused kernel has no eps_root: a group that sets one must take the generic path."""
    runs = []
    for eps_root in (0.0, 1e-2):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(5, dtype=F64))
        opt = tf.Optimizer([{"params": [p], "eps_root": eps_root}], tf.adam(1e-1))
        for _ in range(3):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
        runs.append(p.detach().clone())
    generic = torch.nn.Parameter(torch.randn(5, dtype=F64))
    torch.manual_seed(0)
    generic = torch.randn(5, dtype=F64)
    tx = tf.adam(1e-1, eps_root=1e-2)
    state = tx.init(generic)
    for _ in range(3):
        updates, state = tx.update(2 * generic, state, generic)
        generic = tf.apply_updates(generic, updates)
    assert not torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[1], generic, rtol=1e-14, atol=0)


# --------------------------------------------------------------------------- the adapter


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)
    ).double()


def _train(model, opt, steps=3):
    x = torch.linspace(-1, 1, 15, dtype=F64).reshape(5, 3)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _snapshot(model, opt):
    return copy.deepcopy(([p.detach() for p in model.parameters()], opt.state_dict()))


def _assert_unchanged(model, opt, before):
    params, sd = before
    for p, q in zip(model.parameters(), params):
        assert torch.equal(p, q)
    after = opt.state_dict()
    assert after["param_groups"] == sd["param_groups"]
    assert_trees_close(after["state"], sd["state"], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"lr": -1.0}, ValueError),
        ({"lr": NAN}, ValueError),
        ({"betas": (1.5, 0.999)}, ValueError),
        ({"betas": (0.9,)}, ValueError),
        ({"eps": -1.0}, ValueError),
        ({"weight_decay": -0.1}, ValueError),
        ({"lr": "0.1"}, TypeError),
    ],
    ids=[
        "negative-lr",
        "nan-lr",
        "beta-above-1",
        "one-beta",
        "negative-eps",
        "negative-wd",
        "string-lr",
    ],
)
def test_checkpoint_with_bad_hyperparameters_is_refused_and_changes_nothing(change, error):
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-2, weight_decay=1e-2))
    _train(model, opt)
    good = opt.state_dict()
    bad = copy.deepcopy(good)
    bad["param_groups"][0].update(change)
    before = _snapshot(model, opt)
    with pytest.raises(error, match="load_state_dict: param group 0"):
        opt.load_state_dict(bad)
    _assert_unchanged(model, opt, before)
    _train(model, opt)  # still usable ...
    opt.load_state_dict(good)  # ... and a valid checkpoint still loads
    assert opt.state_dict()["param_groups"] == good["param_groups"]


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda sd: sd["state"][0].update(exp_avg="x"),
        lambda sd: sd["state"].update({0: [1, 2]}),
        lambda sd: sd["state"][0].pop("exp_avg_sq"),
        lambda sd: sd["state"][0].update(exp_avg=torch.zeros(2)),
        lambda sd: sd["param_groups"][0]["params"].pop(),
        lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
    ],
    ids=[
        "string-value",
        "list-entry",
        "missing-key",
        "wrong-shape",
        "missing-param",
        "extra-group",
    ],
)
def test_malformed_checkpoint_is_refused_and_changes_nothing(corrupt):
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adam(1e-2))
    _train(model, opt)
    bad = copy.deepcopy(opt.state_dict())
    corrupt(bad)
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match="load_state_dict"):
        opt.load_state_dict(bad)
    _assert_unchanged(model, opt, before)


def test_step_with_an_integer_parameter_raises_and_changes_nothing():
    model = _model()
    counter = torch.zeros(3, dtype=torch.long)
    opt = tf.Optimizer(
        [{"params": list(model.parameters())}, {"params": [counter]}], tf.sgd(0.1, 0.9)
    )
    model(torch.ones(2, 3, dtype=F64)).sum().backward()
    counter.grad = torch.ones(3, dtype=torch.long)
    before = _snapshot(model, opt)
    with pytest.raises(TypeError, match="int64"):
        opt.step()
    _assert_unchanged(model, opt, before)


def test_step_with_a_sparse_gradient_in_a_later_group_changes_nothing():
    model = _model()
    emb = torch.nn.Embedding(5, 2, sparse=True).double()
    opt = tf.Optimizer(
        [{"params": list(model.parameters())}, {"params": list(emb.parameters())}], tf.adam(0.1)
    )
    model(torch.ones(2, 3, dtype=F64)).sum().backward()
    emb(torch.tensor([1, 2])).sum().backward()
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    _assert_unchanged(model, opt, before)


def test_step_with_a_gradient_of_the_wrong_shape_changes_nothing():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adam(0.1))
    _train(model, opt, steps=1)
    before = _snapshot(model, opt)
    model[2].bias.grad = torch.ones(1, dtype=F64)
    model[0].weight.grad = torch.ones(4, 3, dtype=F64)
    model[2].bias.grad.data = torch.ones(3, dtype=F64)  # `.data` bypasses torch's own check
    with pytest.raises(ValueError, match=r"shape \(3,\), the parameter \(1,\)"):
        opt.step()
    _assert_unchanged(model, opt, before)


def test_a_parameter_listed_twice_warns_and_one_in_two_groups_is_refused():
    # As torch.optim: a warning within a group (to become an error), an error across groups.
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        tf.Optimizer([p, p], tf.adam(0.1))
    with pytest.raises(ValueError, match="more than one parameter group"):
        tf.Optimizer([{"params": [p]}, {"params": [p]}], tf.adam(0.1))


def test_a_group_with_a_bad_value_is_refused_when_added():
    model = _model()
    opt = tf.Optimizer(model[0].parameters(), tf.adam(0.1))
    with pytest.raises(ValueError, match="learning_rate"):
        opt.add_param_group({"params": model[2].parameters(), "lr": -1.0})
    assert len(opt.param_groups) == 1


def test_parameters_that_never_get_a_gradient_get_no_state():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-2))
    model[2].weight.requires_grad_(False)
    _train(model, opt)
    assert model[2].weight not in opt.state or not opt.state[model[2].weight]
    assert set(opt.state[model[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}
    assert len(opt.state_dict()["state"]) == 3


def test_a_parameter_that_gets_its_first_gradient_late_joins_the_group_count():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adam(1e-2))
    model[2].weight.requires_grad_(False)
    _train(model, opt, steps=2)
    model[2].weight.requires_grad_(True)
    _train(model, opt, steps=1)
    assert int(opt.state[model[2].weight]["step"]) == 3  # the group's count (one per group)
    assert torch.count_nonzero(opt.state[model[2].weight]["exp_avg"]) > 0


def test_meta_device_parameters_step_and_checkpoint():
    p = torch.nn.Parameter(torch.empty(3, 4, device="meta"))
    opt = tf.Optimizer([p], tf.adamw(1e-3))
    p.grad = torch.empty(3, 4, device="meta")
    opt.step()
    assert opt.state[p]["exp_avg"].device.type == "meta"
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: tf.adamw(1e-2, weight_decay=1e-2),
        lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.adam(1e-2)),
        lambda: tf.inject_hyperparams(tf.adam)(learning_rate=1e-2),
        lambda: tf.from_torch(torch.optim.RMSprop, lr=1e-2, momentum=0.5),
    ],
    ids=["adamw", "chain", "inject_hyperparams", "from_torch"],
)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_optimizer_works_and_continues_the_same_trajectory(make_tx, how):
    model = _model()
    opt = tf.Optimizer(model.parameters(), make_tx())
    _train(model, opt, steps=2)
    if how == "deepcopy":
        model2, opt2 = copy.deepcopy((model, opt))
    else:
        model2, opt2 = pickle.loads(pickle.dumps((model, opt)))
    _train(model, opt, steps=2)
    _train(model2, opt2, steps=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_an_old_checkpoint_with_a_python_number_step_loads_and_steps():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adam(1e-2))
    _train(model, opt, steps=2)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        entry["step"] = 2  # as torch < 1.12 wrote it
    fresh = tf.Optimizer(model.parameters(), tf.adam(1e-2))
    fresh.load_state_dict(sd)
    _train(model, fresh, steps=1)
    assert int(fresh.state[model[0].weight]["step"]) == 3


def test_loaded_state_that_requires_grad_is_detached():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adam(1e-2))
    _train(model, opt, steps=1)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        entry["exp_avg"] = entry["exp_avg"].clone().requires_grad_()
    opt.load_state_dict(sd)
    assert not any(v.requires_grad for e in opt.state.values() for v in e.values())
    _train(model, opt, steps=1)


def test_counts_in_the_adapter_stay_exact_past_two_to_the_24():
    """A float32 count stops at 2**24 (2**24 + 1 rounds back): schedules would freeze there."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=F64))
    alternating = lambda count: torch.where(count % 2 == 0, 1.0, 0.0).double()  # noqa: E731
    opt = tf.Optimizer([p], tf.chain(tf.scale_by_adam(), tf.scale_by_learning_rate(alternating)))
    p.grad = torch.ones(1, dtype=F64)
    opt.step()
    big = 2**24
    opt.state[p]["step"] = torch.tensor(big, dtype=torch.int64)  # Adam's count
    opt.state[p]["count"] = torch.tensor(big, dtype=torch.int64)  # the schedule's
    moved = []
    for _ in range(4):
        before = p.detach().clone()
        opt.step()
        moved.append(not torch.equal(p, before))
    assert moved == [True, False, True, False]
    assert int(opt.state[p]["step"]) == big + 4 and int(opt.state[p]["count"]) == big + 4
    assert opt.state_dict()["state"][0]["step"].dtype == torch.float32  # torch's format


# --------------------------------------------------------------------------- dtypes and state


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "make",
    [
        lambda: tf.adam(torch.tensor(0.1, dtype=F64)),
        lambda: tf.sgd(tf.cosine_decay_schedule(0.1, 10), momentum=torch.tensor(0.9, dtype=F64)),
        lambda: tf.inject_hyperparams(tf.adamw)(learning_rate=0.1),
    ],
    ids=["tensor-lr", "schedule", "inject"],
)
def test_zero_d_leaves_keep_their_dtype_under_float64_hyperparameters(make, dtype):
    params = {"s": torch.tensor(1.0, dtype=dtype), "v": torch.ones(2, dtype=dtype)}
    tx = make()
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(params, state, params)
        params = tf.apply_updates(params, updates)
    assert params["s"].dtype == dtype and updates["s"].dtype == dtype


@pytest.mark.parametrize(
    "make",
    [
        lambda: tf.chain(
            tf.clip_by_global_norm(1.0),
            tf.adamw(0.1, mask=lambda p: tf.tree_map(lambda x: x.dim() > 1, p)),
        ),
        lambda: tf.partition({"a": tf.adafactor(0.1), "b": tf.sm3(0.1)}, {"w": "a", "b": "b"}),
        lambda: tf.inject_hyperparams(tf.lion)(learning_rate=0.1),
        lambda: tf.from_torch(torch.optim.NAdam, lr=0.1),
    ],
)
def test_functional_state_loads_with_weights_only(make):
    tx = make()
    params = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    _, state = tx.update(params, tx.init(params), params)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert_trees_close(torch.load(buffer, weights_only=True), state, rtol=0, atol=0)


# --------------------------------------------------------------------------- fuzz

_DTYPES = [torch.float16, torch.bfloat16, torch.float32, F64]
_CHAINS = {
    "adamw": lambda: tf.adamw(1e-2, weight_decay=1e-2),
    "clip+adam": lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.adam(1e-2)),
    "sgd_momentum": lambda: tf.sgd(1e-2, momentum=0.9),
    "lion": lambda: tf.lion(1e-3),
    "rmsprop_centered": lambda: tf.rmsprop(1e-2, centered=True, momentum=0.5),
    "novograd": lambda: tf.novograd(1e-2),
    "adafactor": lambda: tf.adafactor(1e-2, min_dim_size_to_factor=2),
    "lamb": lambda: tf.lamb(1e-2),
    "sm3": lambda: tf.sm3(1e-2),
    "from_torch_adagrad": lambda: tf.from_torch(torch.optim.Adagrad, lr=1e-2),
}
_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
_layouts = st.sampled_from(["contiguous", "transposed", "sliced"])


@st.composite
def _trees(draw, depth=0):
    """A random nested tree of dicts, lists and tuples with tensor (and None) leaves."""
    if depth >= 2 or draw(st.booleans()):
        shape, dtype = draw(_shapes), draw(st.sampled_from(_DTYPES))
        layout = draw(_layouts)
        return ("leaf", shape, dtype, layout)
    kind = draw(st.sampled_from(["dict", "list", "tuple"]))
    children = draw(st.lists(_trees(depth=depth + 1), min_size=1, max_size=3))
    return (kind, children)


def _build(spec, gen, as_view=True):
    if spec[0] == "leaf":
        _, shape, dtype, layout = spec
        x = (torch.rand(shape, generator=gen, dtype=F64) + 0.5).to(dtype)
        if not as_view or layout == "contiguous":
            return x
        if layout == "transposed" and x.dim() >= 2:
            return x.transpose(0, -1).contiguous().transpose(0, -1)
        big = torch.zeros((*x.shape, 2), dtype=dtype)
        big[..., 0] = x
        return big[..., 0]
    kind, children = spec
    built = [_build(c, gen, as_view) for c in children]
    if kind == "dict":
        return {f"k{i}": c for i, c in enumerate(built)}
    return built if kind == "list" else tuple(built)


@settings(max_examples=40, deadline=None)
@given(spec=_trees(), chain=st.sampled_from(sorted(_CHAINS)), seed=st.integers(0, 2**16))
def test_fuzz_random_trees_and_chains(spec, chain, seed):
    make = _CHAINS[chain]
    views = [_build(spec, torch.Generator().manual_seed(seed + k)) for k in range(2)]
    params, grads = views
    contiguous = tf.tree_map(lambda x: x.contiguous(), (params, grads))
    originals = copy.deepcopy((params, grads))
    tx = make()
    state = tx.init(params)
    updates, new_state = tx.update(grads, state, params)
    new_params = tf.apply_updates(params, updates)
    # Inputs are never mutated.
    assert_trees_close((params, grads), originals, rtol=0, atol=0)
    # Outputs keep structure, shapes and dtypes.
    for u, g in zip(tf.tree_leaves(updates), tf.tree_leaves(grads)):
        assert u.shape == g.shape and u.dtype == g.dtype
    for q, p in zip(tf.tree_leaves(new_params), tf.tree_leaves(params)):
        assert q.shape == p.shape and q.dtype == p.dtype
    assert [(x.dtype, x.shape) for x in tf.tree_leaves(new_state)] == [
        (x.dtype, x.shape) for x in tf.tree_leaves(state)
    ]
    # The same numbers as on contiguous copies (reductions may round in another order).
    c_params, c_grads = contiguous
    c_tx = make()
    c_updates, _ = c_tx.update(c_grads, c_tx.init(c_params), c_params)
    for u, c in zip(tf.tree_leaves(updates), tf.tree_leaves(c_updates)):
        tol = 1e-12 if u.dtype == F64 else 1e-2
        torch.testing.assert_close(u, c, rtol=tol, atol=tol * 1e-3, equal_nan=True)
    assert math.isfinite(1.0)
