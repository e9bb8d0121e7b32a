"""optax's wrappers: float64 trajectories against optax 0.2.8, and their torch-side behaviour.

The goldens (tests/goldens/optax_wrapper_goldens.json) hold each case as an expression over
``ox`` (optax there, torchopt_fn here), so both sides build the same thing. The common
battery (None leaves, dtypes, compile, vmap, views) runs over the wrappers' rows of
`helpers.TRANSFORMS`; this file adds what is particular to them: the `Optimizer` adapter
(gradient accumulation with schedulers, skipped steps), Lookahead's params, flatten's
refusals, and masks of extra arguments.
"""

from __future__ import annotations

import copy
import functools
import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch._dynamo.testing

import torchopt_fn as tf
from tests.helpers import GOLDEN, assert_trees_close

F64 = torch.float64
GOLDENS = json.loads((Path(__file__).parent / "goldens" / "optax_wrapper_goldens.json").read_text())


def _step_grad(params: Any, step: int, case: dict[str, Any]) -> Any:
    """The goldens' gradient at ``step``: scaled per step, inf or NaN at w[0, 0] on some."""
    g = tf.tree_map(lambda x: x * (1 + 0.25 * (step % 3)), GOLDEN.grad(params))
    for key, value in (("bad_steps", float("inf")), ("nan_steps", float("nan"))):
        if step in case.get(key, ()):
            w = g["w"].clone()
            w[0, 0] = value
            g = {**g, "w": w}
    return g


@pytest.mark.parametrize("case", GOLDENS["cases"], ids=lambda c: c["id"])
def test_wrapper_matches_optax(case: dict[str, Any]):
    namespace = {"ox": tf, "F32": torch.float32, "F64": F64, "partial": functools.partial}
    tx = eval(case["expr"], namespace)
    params = GOLDEN.init_params(F64)
    lookahead = case.get("lookahead", False)
    if lookahead:
        params = tf.LookaheadParams.init_synced(params)
    state = tx.init(params)
    for step in range(GOLDENS["steps"]):
        at = params.fast if lookahead else params
        updates, state = tx.update(_step_grad(at, step, case), state, params)
        params = tf.apply_updates(params, updates)
        parts = {"fast.": params.fast, "slow.": params.slow} if lookahead else {"": params}
        for prefix, tree in parts.items():
            for k, v in tree.items():
                expected = torch.tensor(case["trajectory"][prefix + k][step], dtype=F64)
                # A float32 quirk of optax's (its "note") leaves float32 rounding.
                tol = case.get("rtol") or (1e-6 if "note" in case else None)
                torch.testing.assert_close(
                    v.reshape(-1),
                    expected,
                    rtol=tol or 1e-12,
                    atol=tol or 1e-14,
                    msg=f"step {step} {k}",
                )


# --------------------------------------------------------------------------- MultiSteps


def _mlp_batches(k: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=gen, dtype=F64) for _ in range(k * steps)]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(
        F64
    )


def test_multisteps_in_the_optimizer_is_torch_gradient_accumulation():
    k, updates = 3, 4
    batches = _mlp_batches(k, updates)
    ours, theirs = _model(), _model()
    opt = tf.Optimizer(ours.parameters(), tf.MultiSteps(tf.adamw(0.05, weight_decay=0.1), k))
    ref = torch.optim.AdamW(theirs.parameters(), lr=0.05, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=1, gamma=0.5)
    flags = []
    for i, x in enumerate(batches):
        ours(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        flags.append(opt.has_updated)
        if opt.has_updated:
            sched.step()
        # torch's idiom: gradients of loss / k add up in .grad, one step per k batches
        (theirs(x).square().mean() / k).backward()
        if (i + 1) % k == 0:
            ref.step()
            ref.zero_grad()
            ref_sched.step()
    assert flags == [(i + 1) % k == 0 for i in range(k * updates)]
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.05 / 2**updates
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_multisteps_resumes_mid_accumulation_from_a_checkpoint():
    batches = _mlp_batches(3, 3)
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.MultiSteps(tf.adam(0.05), 3))

    def run(model: torch.nn.Module, opt: tf.Optimizer, xs: list[torch.Tensor]) -> None:
        for x in xs:
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()

    run(model, opt, batches[:4])  # one update, one mini-step accumulated
    checkpoint = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    run(model, opt, batches[4:])
    resumed = _model()
    resumed.load_state_dict(checkpoint["model"])
    opt2 = tf.Optimizer(resumed.parameters(), tf.MultiSteps(tf.adam(0.05), 3))
    opt2.load_state_dict(checkpoint["opt"])
    assert not opt2.has_updated
    run(resumed, opt2, batches[4:])
    for a, b in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_grad_scaler_drops_an_overflowing_mini_step_and_the_rest_accumulate():
    def run(poison: bool) -> list[torch.Tensor]:
        model = _model().float()
        opt = tf.Optimizer(model.parameters(), tf.MultiSteps(tf.sgd(0.1), 2))
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        batches = [x.float() for x in _mlp_batches(2, 2)]
        if poison:  # one extra mini-batch whose gradients overflow
            batches.insert(1, torch.full((4, 3), float("inf")))
        for x in batches:
            scaler.scale(model(x).square().mean()).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(poison=True), run(poison=False)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_multisteps_refuses_bad_arguments():
    with pytest.raises(ValueError, match="every_k_schedule"):
        tf.MultiSteps(tf.sgd(0.1), 0)
    tx = tf.MultiSteps(tf.sgd(0.1), 2, should_skip_update_fn=lambda u, s, p: (1.0, ()))
    params = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="0-d boolean"):
        tx.update(params, tx.init(params), params)


def test_skip_functions_report_what_they_saw():
    updates = {"a": torch.tensor([1.0, float("nan")]), "b": None, "c": torch.tensor([float("inf")])}
    skip, info = tf.skip_not_finite(updates, torch.tensor(0), None)
    assert bool(skip) and int(info["num_not_finite"]) == 2
    skip, info = tf.skip_large_updates({"a": torch.tensor([3.0, 4.0])}, torch.tensor(0), None, 26.0)
    assert not bool(skip) and float(info["norm_squared"]) == 25.0


# --------------------------------------------------------------------------- apply_if_finite


def test_apply_if_finite_in_the_optimizer_skips_like_grad_scaler_and_counts():
    ours, theirs = _model(), _model()
    opt = tf.Optimizer(ours.parameters(), tf.apply_if_finite(tf.adamw(0.05), 3))
    ref = torch.optim.AdamW(theirs.parameters(), lr=0.05, weight_decay=1e-4)
    batches = _mlp_batches(1, 5)
    for i, x in enumerate(batches):
        ours(x).square().mean().backward()
        if i == 2:  # an overflow: torch (with GradScaler) would skip this step
            next(ours.parameters()).grad[0, 0] = float("inf")
        opt.step()
        opt.zero_grad()
        assert opt.has_updated
        if i != 2:
            theirs(x).square().mean().backward()
            ref.step()
            ref.zero_grad()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    entry = opt.state[next(ours.parameters())]
    assert int(entry["total_notfinite"]) == 1 and int(entry["step"]) == 4
    assert all(torch.isfinite(v).all() for v in entry.values())


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
    tx = tf.apply_if_finite(tf.sgd(1.0), max_consecutive_errors=2)
    params = {"w": torch.zeros(1)}
    state = tx.init(params)
    bad = {"w": torch.tensor([float("inf")])}
    applied = []
    for _ in range(4):
        updates, state = tx.update(bad, state, params)
        applied.append(bool(torch.isinf(updates["w"]).all()))
    assert applied == [False, False, True, True]
    assert int(state.total_notfinite) == 4 and int(state.notfinite_count) == 4
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        tf.apply_if_finite(tf.sgd(1.0), -1)


# --------------------------------------------------------------------------- lookahead


def test_lookahead_compiles_once_and_equals_eager():
    tx = tf.lookahead(tf.adam(0.05), sync_period=2, slow_step_size=0.5, reset_state=True)

    def step(params, state):
        updates, state = tx.update(GOLDEN.grad(params.fast), state, params)
        return tf.apply_updates(params, updates), state

    def run(fn, steps=5):
        params = tf.LookaheadParams.init_synced(GOLDEN.init_params(F64))
        state = tx.init(params)
        for i in range(steps):
            if i == 0:
                params, state = fn(params, state)
            else:
                with torch.compiler.set_stance("fail_on_recompile"):
                    params, state = fn(params, state)
        return params, state

    torch._dynamo.reset()
    assert_trees_close(
        run(torch.compile(step, backend="aot_eager", fullgraph=True)), run(step), rtol=1e-12
    )


def test_lookahead_needs_lookahead_params():
    tx = tf.lookahead(tf.sgd(0.1), 2, 0.5)
    params = {"w": torch.zeros(1)}
    with pytest.warns(UserWarning, match="fast"):
        state = tx.init(params)
    with pytest.raises(ValueError, match="LookaheadParams"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match="sync_period"):
        tf.lookahead(tf.sgd(0.1), 0, 0.5)


# --------------------------------------------------------------------------- flatten


def test_flatten_refuses_per_tensor_transformations():
    whole_tensor = (
        tf.lamb(0.1),
        tf.chain(tf.clip_by_block_rms(1.0), tf.adam(0.1)),
        tf.adafactor(),
        tf.contrib.muon(0.1),
        tf.contrib.soap(0.1),
        tf.contrib.shampoo(0.1),
        tf.contrib.psgd_kron(0.1),
        tf.contrib.galore(0.1),
        tf.contrib.cautious_adamw(0.1),
        tf.contrib.mars(0.1),
        tf.contrib.dpsgd(0.1, 1.0, 0.5, seed=0),
        tf.contrib.sophia(0.1),
    )
    for tx in whole_tensor:
        with pytest.raises(ValueError, match="flatten"):
            tf.flatten(tx)


def _matrices(params: Any) -> Any:
    return tf.tree_map(lambda p: p.ndim >= 2, params)


# Masks on a flat buffer: resolved against the tree, they become element masks.
MASKED = {
    "adamw(mask=fn)": lambda: tf.adamw(0.1, weight_decay=0.3, mask=_matrices),
    "adamw(mask=tree)": lambda: tf.adamw(
        0.1, weight_decay=0.3, mask={"b": False, "a": True, "w": True, "z": False}
    ),
    "lion(mask=fn)": lambda: tf.lion(0.1, weight_decay=0.3, mask=_matrices),
    "masked(trace)": lambda: tf.masked(tf.trace(0.9), _matrices),
    "clip + adamw(mask)": lambda: tf.chain(
        tf.clip_by_torch_global_norm(0.5), tf.adamw(0.1, weight_decay=0.3, mask=_matrices)
    ),
    "adadelta(weight_decay_mask)": lambda: tf.adadelta(
        0.5, weight_decay=0.3, weight_decay_mask=_matrices
    ),
}


@pytest.mark.parametrize("name", MASKED)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile_step"])
def test_flatten_carries_masks_onto_the_buffer(name: str, compiled: bool):
    """The same selection as on the tree, over several steps, eager and through
    `compile_step`'s flat path; the leaves are in insertion order unlike the sorted keys."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 2), "b": (2,), "z": (), "a": (2, 2)}
    params = {k: torch.randn(s, generator=gen, dtype=F64) for k, s in shapes.items()}
    grads = [
        {k: torch.randn(s, generator=gen, dtype=F64) for k, s in shapes.items()} for _ in range(4)
    ]
    tx, flat = MASKED[name](), tf.flatten(MASKED[name]())
    want, state = dict(params), tx.init(params)
    for g in grads:
        u, state = tx.update(g, state, want)
        want = tf.apply_updates(want, u)
    got, flat_state = {k: v.clone() for k, v in params.items()}, flat.init(params)
    if compiled:
        torch._dynamo.reset()
        step = tf.compile_step(flat, backend="aot_eager")
        for g in grads:
            got, flat_state = step(got, g, flat_state)
    else:
        for g in grads:
            u, flat_state = flat.update(g, flat_state, got)
            got = tf.apply_updates(got, u)
    assert_trees_close(got, want, rtol=1e-13, atol=1e-15)


def test_masked_takes_element_masks_and_checks_their_shape():
    params = {"w": torch.ones(2, 2)}
    tx = tf.masked(tf.scale(0.0), {"w": torch.tensor([[True, False], [False, True]])})
    u, _ = tx.update(params, tx.init(params), params)
    assert u["w"].tolist() == [[0.0, 1.0], [1.0, 0.0]]
    bad = tf.masked(tf.scale(0.0), {"w": torch.tensor([True, False])})
    with pytest.raises(ValueError, match=r"\['w'\].*element mask is a bool tensor"):
        bad.update(params, bad.init(params), params)


def test_flatten_keeps_one_buffer_per_dtype_and_passes_none_leaves():
    params = {"a": torch.ones(2, 2), "b": torch.ones(3, dtype=F64), "c": torch.ones(1)}
    tx = tf.flatten(tf.adam(0.1))
    state = tx.init(params)
    assert [m.shape for m in state[0].mu] == [torch.Size([5]), torch.Size([3])]
    grads = {"a": torch.ones(2, 2), "b": None, "c": -torch.ones(1)}
    updates, state = tx.update(grads, state, params)
    assert updates["b"] is None
    expected, _ = tf.adam(0.1).update(grads, tf.adam(0.1).init(params), params)
    # Not bit-equal: beside a float64 buffer, the float32 one gets its bias corrections
    # computed in float64 (alone, in float32: 1 - 0.999 is 1.3e-5 off there).
    assert_trees_close(updates, expected, rtol=1e-5)


def test_flatten_compiles_to_one_graph():
    params = {f"p{i}": torch.randn(3, 2) for i in range(20)}
    tx = tf.flatten(tf.adamw(0.1, weight_decay=0.1))
    counter = torch._dynamo.testing.CompileCounter()
    torch._dynamo.reset()
    step = torch.compile(tx.update, backend=counter, fullgraph=True)
    state = tx.init(params)
    for _ in range(3):
        _, state = step(params, state, params)
    assert counter.frame_count == 1


# --------------------------------------------------------------------------- masks


class _UsesExtra:
    """A transformation that adds ``extra`` (a tree like the updates) to the updates."""

    @staticmethod
    def make() -> tf.GradientTransformation:
        def update(updates, state, params=None, **extra_args):
            return tf.tree_map(lambda u, e: u + e, updates, extra_args["extra"]), state

        return tf.GradientTransformation(lambda params: tf.EmptyState(), update)


@pytest.mark.parametrize("how", ["masked", "partition"])
def test_mask_compatible_extra_args_are_masked_like_the_updates(how):
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    extra = {"w": torch.ones(2), "b": torch.ones(1)}
    if how == "masked":
        tx = tf.masked(_UsesExtra.make(), {"w": True, "b": False}, mask_compatible_extra_args=True)
    else:
        tx = tf.partition(
            {"x": _UsesExtra.make(), "y": tf.set_to_zero()},
            {"w": "x", "b": "y"},
            mask_compatible_extra_args=True,
        )
    updates, _ = tx.update(params, tx.init(params), params, extra=extra)
    assert updates["w"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):  # unmasked, the extra tree does not fit the masked updates
        bare = tf.masked(_UsesExtra.make(), {"w": True, "b": False})
        bare.update(params, bare.init(params), params, extra=extra)


# --------------------------------------------------------------------------- the rest


def test_incremental_and_periodic_updates_compile_and_vmap():
    new, old = {"w": torch.ones(3)}, {"w": torch.zeros(3)}
    assert tf.incremental_update(new, old, 0.25)["w"].tolist() == [0.25] * 3
    periodic = torch.compile(tf.periodic_update, backend="aot_eager", fullgraph=True)
    assert periodic(new, old, torch.tensor(4), 2)["w"].tolist() == [1.0] * 3
    assert periodic(new, old, torch.tensor(5), 2)["w"].tolist() == [0.0] * 3
    steps = torch.arange(4)
    out = torch.func.vmap(lambda s: tf.periodic_update(new, old, s, 2)["w"])(steps)
    assert out[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]


def test_inject_stateful_hyperparams_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning):
        factory = tf.inject_stateful_hyperparams(tf.adam)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = factory(learning_rate=0.1).init({"w": torch.zeros(1)})
    assert float(state.hyperparams["learning_rate"]) == 0.1


def test_conditions_may_read_extra_arguments():
    tx = tf.conditionally_mask(tf.sgd(1.0), lambda step, loss: loss < 1.0, forward_extra_args=True)
    params = {"w": torch.zeros(1)}
    state = tx.init(params)
    u, state = tx.update({"w": torch.ones(1)}, state, params, loss=torch.tensor(2.0))
    assert u["w"].tolist() == [0.0]
    u, state = tx.update({"w": torch.ones(1)}, state, params, loss=torch.tensor(0.5))
    assert u["w"].tolist() == [-1.0] and int(state.step) == 2


@pytest.mark.parametrize("donate", [True, False])
def test_compile_step_of_flatten_compiles_the_flat_update_only(donate):
    g = torch.Generator().manual_seed(0)
    params = {f"p{i}": torch.randn(3, 2, generator=g, dtype=F64) for i in range(12)}
    params["half"] = torch.randn(4, generator=g).to(torch.float32)  # a second buffer
    tx = tf.flatten(tf.adamw(0.1, weight_decay=0.1))
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    step = tf.compile_step(tx, donate=donate, backend=counter)
    eager_params, eager_state = dict(params), tx.init(params)
    ours = {k: v.clone() for k, v in params.items()}
    state = tx.init(ours)
    for t in range(4):
        grads = tf.tree_map(lambda p, t=t: torch.sin(p * (t + 1)), eager_params)
        grads["p3"] = None  # no gradient: the parameter keeps its value
        updates, eager_state = tx.update(grads, eager_state, eager_params)
        eager_params = tf.apply_updates(eager_params, updates)
        ours, state = step(ours, tf.tree_map(lambda x: x.clone(), grads), state)
        assert_trees_close((ours, state), (eager_params, eager_state), rtol=1e-12)
    assert torch.equal(ours["p3"], params["p3"])
    # One graph per flat buffer layout (float64 and float32: one update, two leaves).
    assert counter.frame_count == 1


@pytest.mark.parametrize(
    "tx", [tf.flatten(tf.adam(0.1)), tf.chain(tf.clip(1.0), tf.lookahead(tf.sgd(0.1), 2, 0.5))]
)
def test_the_optimizer_refuses_what_does_not_split_per_parameter(tx):
    with pytest.raises(ValueError, match=r"Optimizer: (flatten|lookahead)"):
        tf.Optimizer([torch.zeros(2, requires_grad=True)], tx)


def test_flatten_updates_raveled_module_parameters_in_place_like_torch_adamw():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = model.to(F64)
    reference = copy.deepcopy(model)
    flat, flat_grad = tf.ravel_parameters_(model.parameters(), grads=True)
    tx = tf.flatten(tf.adamw(0.05, weight_decay=0.1))
    torch._dynamo.reset()
    step = tf.compile_step(tx, backend="aot_eager")
    params = list(model.parameters())
    state = tx.init(params)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1)
    for x in _mlp_batches(1, 4):
        model.zero_grad(set_to_none=False)  # the gradients stay views of flat_grad
        model(x).square().mean().backward()
        _, state = step(params, [p.grad for p in params], state)
        ref_opt.zero_grad()
        reference(x).square().mean().backward()
        ref_opt.step()
    assert params[0].data_ptr() == flat.data_ptr()  # updated where it lies
    assert params[0].grad.data_ptr() == flat_grad.data_ptr()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="one dtype"):
        tf.ravel_parameters_([torch.zeros(1), torch.zeros(1, dtype=F64)])


def test_schedule_free_in_the_optimizer_swaps_to_the_average_for_eval():
    model, functional = _model(), _model()
    tx = tf.contrib.schedule_free_adamw(0.05, weight_decay=0.1)
    opt = tf.Optimizer(model.parameters(), tx)
    params = {k: v.detach().clone() for k, v in functional.named_parameters()}
    state = tx.init(params)
    for x in _mlp_batches(1, 4):
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        grads = torch.func.grad(
            lambda p, x=x: torch.func.functional_call(functional, p, (x,)).square().mean()
        )(params)
        updates, state = tx.update(grads, state, params)
        params = tf.apply_updates(params, updates)
    trained = {k: v.detach().clone() for k, v in model.named_parameters()}
    for k, v in trained.items():
        torch.testing.assert_close(v, params[k], rtol=1e-12, atol=1e-14)
    opt.eval()
    expected = tf.contrib.schedule_free_eval_params(state, params)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="eval mode"):
        opt.step()
    opt.train()
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), trained[k], rtol=1e-12, atol=1e-14)


def test_schedule_free_adamw_decays_only_the_masked_leaves_and_evaluates_through_a_chain():
    params = {"w": torch.ones(2, 2, dtype=F64), "b": torch.ones(2, dtype=F64)}
    zero = tf.tree_map(torch.zeros_like, params)
    tx = tf.chain(
        tf.clip_by_global_norm(1.0),
        tf.contrib.schedule_free_adamw(0.1, weight_decay=0.5, mask={"w": True, "b": False}),
    )
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(zero, state, params)
        params = tf.apply_updates(params, updates)
    assert (params["w"] < 1).all()
    torch.testing.assert_close(params["b"], torch.ones(2, dtype=F64))
    evaluated = tf.contrib.schedule_free_eval_params(state, params)  # found inside the chain
    torch.testing.assert_close(evaluated["b"], torch.ones(2, dtype=F64))
