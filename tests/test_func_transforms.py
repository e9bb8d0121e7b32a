"""One implementation, four modes: the transforms under `torch.func.vmap` and `torch.func.grad`.

Eagerly the shared tree helpers run multi-tensor ``torch._foreach_*`` kernels; under functorch
transforms they fall back to one op per leaf (DESIGN.md §5). These tests pin down that the
per-leaf path gives the same numbers as running the optimizer once per member in a Python loop,
that a hyperparameter batched under vmap behaves like separate runs with Python floats, and that
`torch.func.grad` through unrolled optimizer steps is the true derivative (central finite
differences in float64).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch._dynamo.testing
from torch.func import grad, vmap

import torchopt_fn as tf
from tests.helpers import assert_trees_close, golden_grad, golden_loss, golden_params

F64 = torch.float64
Factory = Callable[..., tf.GradientTransformation]


def _run(
    tx: tf.GradientTransformation,
    params: Any,
    steps: int,
    grad_fn: Callable[[Any], Any] = golden_grad,
) -> tuple[Any, Any]:
    """``steps`` updates of ``tx`` starting from ``params`` (the goldens' objective by default)."""
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(grad_fn(params), state, params)
        params = tf.apply_updates(params, updates)
    return params, state


def _member(tree: Any, i: int) -> Any:
    return tf.tree_map(lambda x: x[i], tree)


def _stack(trees: list[Any]) -> Any:
    return tf.tree_map(lambda *xs: torch.stack(xs), *trees)


# --------------------------------------------------------------------------- vmap: ensembles

# Four members with their own starting points and their own objective, `GRAD_SCALES` times the
# goldens' one, so their gradient norms range from ~0.4 to ~30: global-norm clipping at 1.0
# leaves the first member alone and clips the others, and trust ratios differ between members.
# A reduction taken across members instead of per member would change every one of them.
PARAM_SCALES = (0.5, 1.0, 1.5, 0.75)
GRAD_SCALES = (0.2, 1.0, 4.0, 16.0)
ENSEMBLE_STEPS = 10

ENSEMBLE_CASES: dict[str, tuple[Callable[[], tf.GradientTransformation], bool]] = {
    # id: (optimizer, whether it reduces over tensors or the whole tree)
    "sgd_momentum": (lambda: tf.sgd(0.01, momentum=0.9), False),
    "sgd_nesterov": (lambda: tf.sgd(0.01, momentum=0.9, nesterov=True), False),
    "adam": (lambda: tf.adam(0.05), False),
    "adamw": (lambda: tf.adamw(0.05, weight_decay=0.1), False),
    "rmsprop": (lambda: tf.rmsprop(0.01), False),
    "rmsprop_centered_momentum": (
        lambda: tf.rmsprop(0.01, centered=True, momentum=0.9, eps_in_sqrt=False),
        False,
    ),
    "lion": (lambda: tf.lion(0.01, weight_decay=0.1), False),
    "lamb": (lambda: tf.lamb(0.05, weight_decay=0.1), True),
    "clip_adam": (lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.adam(0.05)), True),
    "clip_sgd": (lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.sgd(0.01)), True),
}


def _ensemble_params() -> Any:
    scales = torch.tensor(PARAM_SCALES, dtype=F64)
    return tf.tree_map(lambda p: scales.reshape(-1, *[1] * p.dim()) * p, golden_params(F64))


def _scaled_grad(scale: float | torch.Tensor) -> Callable[[Any], Any]:
    return lambda params: tf.tree_scale(scale, golden_grad(params))


def _ensemble_grads(params: Any) -> Any:
    """Every member's gradient of its own objective (stacked)."""
    scales = torch.tensor(GRAD_SCALES, dtype=F64)
    return vmap(lambda p, s: _scaled_grad(s)(p))(params, scales)


def _vmapped_run(tx: tf.GradientTransformation, params: Any, steps: int) -> tuple[Any, Any]:
    def step(p, s, g):
        updates, s = tx.update(g, s, p)
        return tf.apply_updates(p, updates), s

    state = vmap(tx.init)(params)
    for _ in range(steps):
        params, state = vmap(step)(params, state, _ensemble_grads(params))
    return params, state


def _looped_run(tx: tf.GradientTransformation, params: Any, steps: int) -> tuple[Any, Any]:
    runs = [_run(tx, _member(params, i), steps, _scaled_grad(s)) for i, s in enumerate(GRAD_SCALES)]
    return _stack([p for p, _ in runs]), _stack([s for _, s in runs])


@pytest.mark.parametrize("case", list(ENSEMBLE_CASES))
def test_vmapped_ensemble_trains_like_a_loop_over_members(case: str):
    make, _ = ENSEMBLE_CASES[case]
    tx = make()
    params = _ensemble_params()
    got_params, got_state = _vmapped_run(tx, params, ENSEMBLE_STEPS)
    expected_params, expected_state = _looped_run(tx, params, ENSEMBLE_STEPS)
    assert tf.tree_all_finite(expected_params)
    assert_trees_close(got_params, expected_params)
    # The state too: one count per member, moments and norms per member.
    assert_trees_close(got_state, expected_state)


@pytest.mark.parametrize("case", [c for c, (_, reduces) in ENSEMBLE_CASES.items() if reduces])
def test_ensemble_case_would_fail_if_reductions_mixed_members(case: str):
    """Guards the test above: without vmap, the stacked tree gives different numbers."""
    make, _ = ENSEMBLE_CASES[case]
    tx = make()
    params = _ensemble_params()
    vmapped, _ = _vmapped_run(tx, params, ENSEMBLE_STEPS)
    # The same gradients, but one tree whose leaves hold every member: norms mix members.
    mixed, _ = _run(tx, params, ENSEMBLE_STEPS, _ensemble_grads)
    gap = max(
        float((a - b).abs().max()) for a, b in zip(tf.tree_leaves(vmapped), tf.tree_leaves(mixed))
    )
    assert gap > 1e-3


def test_vmapped_global_norm_clipping_is_per_member():
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adam(0.05))
    params = _ensemble_params()
    state = vmap(tx.init)(params)
    grads = _ensemble_grads(params)
    _, state = vmap(tx.update)(grads, state, params)
    per_member = torch.stack([tf.tree_l2_norm(_member(grads, i)) for i in range(len(GRAD_SCALES))])
    torch.testing.assert_close(state[0].norm, per_member, rtol=1e-14, atol=0)
    # The case matters: one member is below the threshold and the others above.
    assert per_member[0] < 1.0 < per_member[1]


# --------------------------------------------------------------------------- vmap: sweeps

SWEEP_STEPS = 8

SWEEPS: dict[str, tuple[Factory, list[float]]] = {
    # id: (optimizer as a function of the swept value, the values)
    "adamw_learning_rate": (lambda v: tf.adamw(v, weight_decay=0.1), [0.001, 0.01, 0.05, 0.2]),
    "adamw_b1": (lambda v: tf.adamw(0.05, b1=v, weight_decay=0.1), [0.0, 0.5, 0.9, 0.99]),
    "adamw_weight_decay": (lambda v: tf.adamw(0.05, weight_decay=v), [0.0, 0.01, 0.1, 1.0]),
    "adam_b2": (lambda v: tf.adam(0.05, b2=v), [0.5, 0.9, 0.99, 0.999]),
    "sgd_learning_rate": (lambda v: tf.sgd(v, momentum=0.9), [0.001, 0.01, 0.05, 0.1]),
    "sgd_momentum": (lambda v: tf.sgd(0.02, momentum=v, nesterov=True), [0.0, 0.5, 0.9, 1.0]),
    "rmsprop_learning_rate": (lambda v: tf.rmsprop(v, momentum=0.9), [0.001, 0.01, 0.05, 0.1]),
    "lion_learning_rate": (lambda v: tf.lion(v, weight_decay=0.1), [0.001, 0.01, 0.05, 0.1]),
    "lamb_learning_rate": (lambda v: tf.lamb(v, weight_decay=0.1), [0.001, 0.01, 0.05, 0.1]),
    "clip_max_norm": (
        lambda v: tf.chain(tf.clip_by_global_norm(v), tf.sgd(0.05)),
        [0.01, 0.1, 1.0, 10.0],
    ),
    "warmup_cosine_peak": (
        lambda v: tf.adamw(tf.warmup_cosine_decay_schedule(0.0, v, 3, SWEEP_STEPS)),
        [0.001, 0.01, 0.05, 0.2],
    ),
}


@pytest.mark.parametrize("case", list(SWEEPS))
def test_vmapped_hyperparameter_sweep_equals_separate_runs(case: str):
    make, values = SWEEPS[case]
    params = golden_params(F64)

    def run_one(value: torch.Tensor) -> Any:
        # The optimizer is built inside the vmapped function from a batched 0-d tensor.
        return _run(make(value), params, SWEEP_STEPS)[0]

    swept = vmap(run_one)(torch.tensor(values, dtype=F64))
    separate = _stack([_run(make(v), params, SWEEP_STEPS)[0] for v in values])
    assert_trees_close(swept, separate)
    # The swept value makes a difference, so the comparison above is not trivially true.
    assert not torch.allclose(separate["w"][0], separate["w"][-1])


# --------------------------------------------------------------------------- grad: meta-gradients

UNROLL_STEPS = 5
FD_STEP = 1e-6

META_CASES: dict[str, Factory] = {
    # id: optimizer as a function of its learning rate
    "sgd_momentum": lambda lr: tf.sgd(lr, momentum=0.9),
    "adam": lambda lr: tf.adam(lr, eps_root=1e-12),
    "adamw": lambda lr: tf.adamw(lr, eps_root=1e-12, weight_decay=0.1),
    "rmsprop": lambda lr: tf.rmsprop(lr),
}


def _meta_loss(tx: tf.GradientTransformation, params: Any) -> torch.Tensor:
    """The objective after `UNROLL_STEPS` steps: differentiable in params and hyperparameters."""
    return golden_loss(_run(tx, params, UNROLL_STEPS)[0])


def _central_difference(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return (f(x + FD_STEP) - f(x - FD_STEP)) / (2 * FD_STEP)


def _finite_difference_grad(f: Callable[[Any], torch.Tensor], params: Any) -> Any:
    """Central differences of ``f`` with respect to every entry of every leaf of ``params``."""
    out = {}
    for name, leaf in params.items():
        entries = []
        for i in range(leaf.numel()):

            def f_i(
                x: torch.Tensor, name: str = name, leaf: torch.Tensor = leaf, i: int = i
            ) -> torch.Tensor:
                moved = leaf.reshape(-1).clone()
                moved[i] = x
                return f({**params, name: moved.reshape(leaf.shape)})

            entries.append(_central_difference(f_i, leaf.reshape(-1)[i]))
        out[name] = torch.stack(entries).reshape(leaf.shape)
    return out


@pytest.mark.parametrize("case", list(META_CASES))
def test_grad_through_unrolled_steps_wrt_initial_params_matches_finite_differences(case: str):
    tx = META_CASES[case](0.05)
    params = golden_params(F64)
    got = grad(lambda p: _meta_loss(tx, p))(params)
    expected = _finite_difference_grad(lambda p: _meta_loss(tx, p), params)
    assert_trees_close(got, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("case", list(META_CASES))
def test_grad_through_unrolled_steps_wrt_learning_rate_matches_finite_differences(case: str):
    make = META_CASES[case]
    params = golden_params(F64)
    lr = torch.tensor(0.05, dtype=F64)
    got = grad(lambda lr: _meta_loss(make(lr), params))(lr)
    expected = _central_difference(lambda lr: _meta_loss(make(lr), params), lr)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert got.abs() > 1e-3


@pytest.mark.parametrize(
    ("make", "value"),
    [
        pytest.param(lambda v: tf.adam(0.05, b1=v, eps_root=1e-12), 0.9, id="adam_b1"),
        pytest.param(lambda v: tf.adam(0.05, b2=v, eps_root=1e-12), 0.99, id="adam_b2"),
        pytest.param(
            lambda v: tf.adamw(0.05, eps_root=1e-12, weight_decay=v), 0.1, id="adamw_weight_decay"
        ),
        pytest.param(lambda v: tf.sgd(0.05, momentum=v), 0.9, id="sgd_momentum"),
    ],
)
def test_grad_wrt_other_hyperparameters_matches_finite_differences(make: Factory, value: float):
    params = golden_params(F64)
    x = torch.tensor(value, dtype=F64)
    got = grad(lambda v: _meta_loss(make(v), params))(x)
    expected = _central_difference(lambda v: _meta_loss(make(v), params), x)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-10)


def _autograd_meta_grads(make: Factory, lr: float | torch.Tensor) -> tuple[Any, Any]:
    """Meta-gradients by ``.backward()``: eagerly, where the helpers run foreach kernels."""
    params = tf.tree_map(lambda p: p.clone().requires_grad_(), golden_params(F64))
    _meta_loss(make(lr), params).backward()
    return tf.tree_map(lambda p: p.grad, params), getattr(lr, "grad", None)


@pytest.mark.parametrize("case", list(META_CASES))
def test_autograd_through_the_foreach_path_equals_func_grad(case: str):
    make = META_CASES[case]
    expected = grad(lambda p: _meta_loss(make(0.05), p))(golden_params(F64))
    got, _ = _autograd_meta_grads(make, 0.05)
    assert_trees_close(got, expected)


@pytest.mark.parametrize("case", list(META_CASES))
def test_autograd_wrt_a_tensor_learning_rate_equals_func_grad(case: str):
    make = META_CASES[case]
    lr = torch.tensor(0.05, dtype=F64)
    expected_p, expected_lr = grad(lambda p, lr: _meta_loss(make(lr), p), argnums=(0, 1))(
        golden_params(F64), lr
    )
    got_p, got_lr = _autograd_meta_grads(make, lr.clone().requires_grad_())
    assert_trees_close(got_p, expected_p)
    torch.testing.assert_close(got_lr, expected_lr, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- grad: eps_root
#
# Why `eps_root` matters when differentiating through Adam. The update is
# m̂ / (sqrt(v̂ + eps_root) + eps). Where a gradient entry is exactly 0 at every step, m̂ = v̂ = 0
# there, and the backward pass of sqrt at 0 computes  upstream / (2 * sqrt(0)) = 0 / 0 = NaN
# (the upstream gradient is -m̂ / (...)² = 0). That NaN then flows back through
# v = (1 - b2) g² (NaN * 0 is still NaN) into every input the zero entry was computed from: the
# initial parameters, the learning rate. Exactly-zero gradients are common in real networks
# (dead ReLUs, unused embedding rows, a parameter sitting at its optimum). eps_root > 0 keeps the
# square root away from 0, and the meta-gradient is finite. `eps` outside the root does not
# help. RMSProp has the same failure when eps is outside the root (eps_in_sqrt=False, torch's
# placement); with optax's default eps_in_sqrt=True, eps plays the role of eps_root.

_TARGET = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
# The first entry starts at its optimum: its gradient is exactly 0 at every step, but it is
# still computed from the parameters (so it sits on the differentiated graph).
_AT_OPTIMUM = torch.tensor([1.0, 0.0, 2.0], dtype=F64)


def _quadratic_meta_loss(tx: tf.GradientTransformation, params: torch.Tensor) -> torch.Tensor:
    state = tx.init(params)
    for _ in range(UNROLL_STEPS):
        updates, state = tx.update(2 * (params - _TARGET), state, params)
        params = tf.apply_updates(params, updates)
    return ((params - _TARGET) ** 2).sum()


@pytest.mark.parametrize(
    ("make", "finite"),
    [
        (lambda lr: tf.adam(lr), False),  # eps_root = 0, optax's default
        (lambda lr: tf.adam(lr, eps_root=1e-12), True),
        (lambda lr: tf.adam(lr, eps_root=1e-30), True),
        (lambda lr: tf.rmsprop(lr, eps_in_sqrt=False), False),
        (lambda lr: tf.rmsprop(lr), True),
    ],
    ids=["adam", "adam_eps_root_1e-12", "adam_eps_root_1e-30", "rmsprop_eps_outside", "rmsprop"],
)
def test_meta_gradient_with_an_exactly_zero_gradient_entry(make: Factory, finite: bool):
    lr = torch.tensor(0.05, dtype=F64)
    d_params, d_lr = grad(lambda p, lr: _quadratic_meta_loss(make(lr), p), argnums=(0, 1))(
        _AT_OPTIMUM, lr
    )
    assert bool(torch.isfinite(d_lr)) is finite
    assert bool(torch.isfinite(d_params[0])) is finite
    if finite:  # and it is the true derivative
        expected = _central_difference(lambda lr: _quadratic_meta_loss(make(lr), _AT_OPTIMUM), lr)
        torch.testing.assert_close(d_lr, expected, rtol=1e-6, atol=0)


def test_differentiating_through_adam_with_eps_root_zero_warns_of_nan_meta_gradients():
    params = {"w": torch.tensor([1.0, 2.0])}

    def meta_loss(scale: torch.Tensor, tx: tf.GradientTransformation) -> torch.Tensor:
        grads = {"w": torch.tensor([0.0, 1.0]) * scale}  # a dead unit: a gradient of 0
        updates, _ = tx.update(grads, tx.init(params), params)
        return tf.apply_updates(params, updates)["w"].sum()

    with pytest.warns(UserWarning, match="eps_root=1e-8"):
        assert torch.func.grad(meta_loss)(torch.tensor(1.0), tf.adam(0.1)).isnan()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.func.grad(meta_loss)(torch.tensor(1.0), tf.adam(0.1, eps_root=1e-8)).isfinite()
        meta_loss(torch.tensor(1.0), tf.adam(0.1))  # no differentiation, no warning


def test_compiled_vmapped_ensemble_step_equals_eager_without_recompiling():
    """``torch.compile(vmap(step), fullgraph=True)``: the ensemble's whole step (gradient,
    clip, Adam, apply) traced once; as the count moves nothing recompiles, and every step
    equals the eager vmapped one."""
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adam(1e-2))
    gen = torch.Generator().manual_seed(0)
    f64 = torch.float64
    params = {"w": torch.randn(4, 3, generator=gen, dtype=f64), "b": torch.zeros(4, dtype=f64)}
    x, y = torch.randn(16, 3, generator=gen, dtype=f64), torch.randn(16, generator=gen, dtype=f64)

    def loss(p, x, y):
        return ((x @ p["w"] + p["b"] - y) ** 2).mean()

    def step(p, state, x, y):
        updates, state = tx.update(torch.func.grad(loss)(p, x, y), state, p)
        return tf.apply_updates(p, updates), state

    ensemble_step = torch.func.vmap(step, in_dims=(0, 0, None, None))
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(ensemble_step, fullgraph=True, backend=counter)
    # vmap returns what init makes without reading the params (counts, norms) as stride-0
    # views; made contiguous, the state keeps its strides from step to step.
    fresh = lambda: tf.tree_map(torch.Tensor.contiguous, torch.func.vmap(tx.init)(params))  # noqa: E731
    eager, traced = (params, fresh()), (params, fresh())
    for i in range(4):
        eager = ensemble_step(*eager, x, y)
        if i:
            with torch.compiler.set_stance("fail_on_recompile"):
                traced = compiled(*traced, x, y)
        else:
            traced = compiled(*traced, x, y)
        assert_trees_close(traced, eager, rtol=1e-12)
    assert counter.frame_count == 1
