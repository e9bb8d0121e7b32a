"""Every optimizer compiles with fullgraph=True, never recompiles, and equals eager.

The whole table runs on Dynamo + AOTAutograd (``aot_eager``): that is where tracing, graph
breaks, guards and functionalization are decided, so recompiles and fullgraph failures show up
there. A few representative optimizers also run through Inductor (slow to compile on CPU).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN, OPTIMIZERS, OptCase, assert_trees_close, make_tx
from torchopt_fn.tree import _flatten as _tree

STEPS = 4


def _clone(tree: Any) -> Any:
    return tf.tree_map(lambda x: x.clone(), tree)


def _eager(case: OptCase, params: Any, state: Any, grads: list[Any]) -> tuple[Any, Any]:
    tx = make_tx(case)
    for g in grads:
        extra = {"value": GOLDEN.loss(params)} if case.needs_value else {}
        updates, state = tx.update(g, state, params, **extra)
        params = tf.apply_updates(params, updates)
    return params, state


def _grads() -> list[Any]:
    gen = torch.Generator().manual_seed(0)
    params = GOLDEN.init_params(torch.float64)
    return [
        {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
        for _ in range(STEPS)
    ]


def _views(params: Any, grads: list[Any]) -> tuple[Any, list[Any]]:
    """The same values in odd layouts.

    A transposed and a sliced parameter (donation writes into them), a transposed gradient and a
    stride-0 one (as `torch.func.grad` gives for a parameter used through ``.sum()``).
    """

    def transposed(x: torch.Tensor) -> torch.Tensor:
        return x.t().contiguous().t()

    def sliced(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]

    params = {"w": transposed(params["w"]), "b": sliced(params["b"])}
    grads = [{"w": transposed(g["w"]), "b": g["b"][:1].expand(3)} for g in grads]
    return params, grads


def _check(case: OptCase, backend: str, donate: bool, views: bool = False) -> None:
    torch._dynamo.reset()
    tx = make_tx(case)
    params = GOLDEN.init_params(torch.float64)
    grads = _grads()
    if views:
        params, grads = _views(params, grads)
    state = tx.init(params)
    contiguous = [tf.tree_map(lambda x: x.contiguous(), g) for g in grads]
    expected = _eager(case, _clone(params), _clone(state), contiguous)

    step = tf.compile_step(tx, donate=donate, backend=backend)
    for i, g in enumerate(grads):
        extra = {"value": GOLDEN.loss(params)} if case.needs_value else {}
        if i == 0:
            new_params, new_state = step(params, g, state, **extra)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                new_params, new_state = step(params, g, state, **extra)
        if donate:  # results are written into the inputs
            assert new_params is params and new_state is state
        params, state = new_params, new_state
    assert_trees_close(params, expected[0])
    assert_trees_close(state, expected[1])


@pytest.mark.parametrize("case", OPTIMIZERS, ids=lambda c: c.id)
def test_compile_step_fullgraph_no_recompiles_equals_eager(case: OptCase):
    _check(case, backend="aot_eager", donate=False)


@pytest.mark.parametrize("case", OPTIMIZERS, ids=lambda c: c.id)
def test_compile_step_with_donation_writes_into_inputs(case: OptCase):
    """Into views too: transposed and sliced params, transposed and stride-0 gradients."""
    _check(case, backend="aot_eager", donate=True, views=True)


# Through Inductor with donation, the optimizers whose state Inductor (torch 2.13) wrote back
# wrongly with one `_foreach_copy_` (amsgrad ... rprop) or dropped (novograd's 0-d norms), next to
# plain ones. All 39 deterministic cases pass but adafactor_momentum, whose momentum is float32
# (as in optax): Inductor rounds fused float32 ops once where eager rounds each, so it differs by
# a float32 ulp, donated or not.
INDUCTOR_CASES = [
    "adamw",
    "sgd",
    "lion",
    "amsgrad",
    "adabelief",
    "rmsprop_centered_momentum",
    "adafactor",
    "sm3",
    "rprop",
    "novograd",
    "radam",  # float64 codegen for pow, sqrt and a where on the count (the rectifier switch)
]


@pytest.mark.slow
@pytest.mark.parametrize("name", INDUCTOR_CASES)
def test_compile_step_with_inductor(name: str):
    case = next(c for c in OPTIMIZERS if c.id == name)
    _check(case, backend="inductor", donate=True)


def test_step_scalars_are_computed_once_per_step():
    """Bias corrections and schedule values reach the graph through `step_scalar`.

    That opaque op makes Inductor compute each of them once per step into a 0-d buffer instead
    of inlining `pow`/`cos` into every element of every tensor they scale (1.6x slower on CPU).
    """
    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm

    tx = tf.adam(tf.cosine_decay_schedule(1e-2, 10))
    params = GOLDEN.init_params(torch.float64)
    tf.compile_step(tx, backend=capture)(params, _grads()[0], tx.init(params))
    (gm,) = graphs
    step_scalar = torch.ops.torchopt_fn.step_scalar.default
    calls = [n for n in gm.graph.nodes if n.target in (step_scalar, step_scalar.overloadpacket)]
    assert len(calls) == 4  # 1 - b1**t, 1 - b2**t, its square root and the learning rate


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"options": {"size_asserts": False}}),
        ({"options": {"size_asserts": True}}, {"options": {"size_asserts": True}}),
        ({"mode": "max-autotune"}, {"mode": "max-autotune"}),  # torch forbids mode + options
        ({"backend": "aot_eager"}, {"backend": "aot_eager"}),
    ],
)
def test_compile_step_inductor_options(monkeypatch, kwargs: dict, expected: dict):
    seen: list[dict] = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    tf.compile_step(tf.sgd(0.1), **kwargs)
    assert seen == [{**expected, "fullgraph": True}]


def test_schedule_and_injected_hyperparameters_do_not_recompile():
    """The count, the schedule and an injected value change every step: no recompile, and the
    results are those of the same steps run eagerly (so each new value took effect)."""
    tx = tf.inject_hyperparams(tf.adamw)(
        learning_rate=tf.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10), weight_decay=1e-2
    )

    def run(step):
        params = GOLDEN.init_params(torch.float64)
        state = tx.init(params)
        for i, g in enumerate(_grads() * 2):
            if i == 0:
                params, state = step(params, g, state)
                continue
            state = tf.tree_set(state, weight_decay=torch.tensor(0.1 * i, dtype=torch.float64))
            with torch.compiler.set_stance("fail_on_recompile"):
                params, state = step(params, g, state)
        return params, state

    def eager(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return tf.apply_updates(params, updates), state

    params, state = run(tf.compile_step(tx, backend="aot_eager"))
    assert state.count == 2 * STEPS
    assert_trees_close((params, state), run(eager))
    # A constant weight decay would have ended elsewhere.
    constant = tf.inject_hyperparams(tf.adamw)(
        learning_rate=tf.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 10), weight_decay=1e-2
    )
    params_const = GOLDEN.init_params(torch.float64)
    state_const = constant.init(params_const)
    for g in _grads() * 2:
        u, state_const = constant.update(g, state_const, params_const)
        params_const = tf.apply_updates(params_const, u)
    assert not torch.allclose(params["w"], params_const["w"])


def test_whole_training_step_compiles_as_one_graph():
    """The recipe from the docs: forward, torch.func.grad, update and apply in one graph."""
    torch.manual_seed(0)
    # float64: eagerly `adamw` runs torch's fused kernel, which rounds differently in float32.
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-2))
    state = tx.init(params)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)

    def loss_fn(p, x, y):
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), y)

    def train_step(p, s, x, y):
        grads, loss = torch.func.grad_and_value(loss_fn)(p, x, y)
        updates, s = tx.update(grads, s, p)
        return tf.apply_updates(p, updates), s, loss

    compiled = torch.compile(train_step, fullgraph=True, backend="aot_eager")
    eager_p, eager_s = params, state
    for i in range(4):
        if i == 0:
            params, state, loss = compiled(params, state, x, y)
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                params, state, loss = compiled(params, state, x, y)
        eager_p, eager_s, eager_loss = train_step(eager_p, eager_s, x, y)
        torch.testing.assert_close(loss, eager_loss)
    assert_trees_close(params, eager_p)


class _LoopState(NamedTuple):
    count: torch.Tensor
    mu: Any


@pytest.mark.parametrize("container", [dict, OrderedDict])
def test_tree_helpers_trace_with_the_loop_or_fall_back_to_optree(container: type):
    """While compiling, trees of our node types are flattened by a loop that Dynamo traces fast;
    other node types (an OrderedDict) go to optree. Both trace in one graph and equal eager."""

    def double(tree: Any) -> tuple[bool, Any, list[Any]]:
        leaves, spec = _tree.tree_flatten(tree)
        doubled = _tree.tree_unflatten(spec, [None if x is None else 2 * x for x in leaves])
        return (
            isinstance(spec, _tree._LoopSpec),
            doubled,
            _tree.flatten_like(spec, tree, doubled, "t"),
        )

    tree = container(
        w=[torch.ones(2), None],
        s=_LoopState(torch.tensor(3), _tree.ParamList([torch.zeros(1), torch.ones(3)])),
    )
    used_loop, doubled, flat = torch.compile(double, backend="eager", fullgraph=True)(tree)
    assert used_loop == (container is dict)
    _, expected, expected_flat = double(tree)
    assert _tree.tree_structure(doubled) == _tree.tree_structure(expected)
    assert list(doubled) == list(tree) and type(doubled["s"].mu) is _tree.ParamList
    assert_trees_close(doubled, expected)
    assert_trees_close(flat, expected_flat)
