"""`from_torch` against torch.optim itself: trajectories, options, validation, compile.

Every configuration runs our chain and torch's optimizer side by side for 100 steps in
float64 on a non-quadratic problem whose gradient is evaluated at each side's own current
parameters, so any difference in the maths would grow along the trajectory. Both sides run
under one default dtype: torch keeps its scalar state (NAdam's ``mu_product``, ASGD's ``eta``
and ``mu``) in float32 under the default float32, and so do we, rounding where it rounds.

The hyperparameters are chosen where torch's own trajectory is stable under rounding: moving
torch's parameters by 1e-15 (relative) at step 5, 20, 40, 60 or 75 moves the rest of its
trajectory by less than 1e-12. Adaptive methods that circle the minimum with tiny gradients
amplify rounding exponentially (here e.g. RMSprop with lr 1e-2 or Adam with betas (0.5, 0.9)
reach 1e-10..1e-6 by step 100, and torch's foreach and single-tensor kernels then disagree
with each other as much), so no tolerance would separate a wrong formula from reordered
rounding there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import optree
import pytest
import torch

import torchopt_fn as tf
from torchopt_fn import from_torch
from torchopt_fn.interop import _from_torch
from torchopt_fn.transforms import (
    ScaleByTorchAsgdState,
    scale_by_torch_adagrad,
    scale_by_torch_amsgrad,
    scale_by_torch_momentum,
    scale_by_torch_radam,
)

Params = dict[str, torch.Tensor]
STEPS = 100
RTOL, ATOL = 1e-12, 1e-14


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def init_params(dtype: torch.dtype = torch.float64) -> Params:
    return {
        "w": torch.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(4, 3),
        "b": torch.tensor([0.5, -0.3, 0.1], dtype=dtype),
        "s": torch.tensor(0.7, dtype=dtype),
    }


def grads(params: Params, sign: float = 1.0) -> Params:
    """Gradient of L = Σ(w⁴/4 - w²/4 + 0.1 sin w) + Σ(b² - b - 0.1 cos b) + 0.05 Σw Σb
    + s²/2 + 0.2 s Σb + 0.1 sin 3s (times ``sign``)."""
    w, b, s = params["w"], params["b"], params["s"]
    return {
        "w": sign * (w**3 - 0.5 * w + 0.1 * torch.cos(w) + 0.05 * b.sum()),
        "b": sign * (2 * b - 1 + 0.1 * torch.sin(b) + 0.05 * w.sum() + 0.2 * s),
        "s": sign * (s + 0.2 * b.sum() + 0.3 * torch.cos(3 * s)),
    }


# (optimizer, kwargs): every numerical option of every supported optimizer, in realistic mixes.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    (
        "SGD",
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01, "maximize": True},
    ),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "dampening": 0.5, "maximize": True}),
    ("SGD", {"lr": 0.05, "weight_decay": 0.1, "maximize": True}),
    ("Adam", {"lr": 1e-2}),
    ("Adam", {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}),
    ("Adam", {"lr": 1e-2, "amsgrad": True}),
    ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01, "maximize": True}),
    ("Adam", {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("AdamW", {"lr": 1e-2}),
    ("AdamW", {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", {"lr": 1e-2, "betas": (0.8, 0.95), "eps": 1e-4, "maximize": True}),
    ("NAdam", {"lr": 1e-2}),
    ("NAdam", {"lr": 1e-2, "weight_decay": 0.01}),
    (
        "NAdam",
        {"lr": 1e-2, "weight_decay": 0.05, "decoupled_weight_decay": True, "momentum_decay": 1e-2},
    ),
    (
        "NAdam",
        {"lr": 1e-2, "betas": (0.85, 0.99), "eps": 1e-4, "momentum_decay": 0.0, "maximize": True},
    ),
    ("RAdam", {"lr": 1e-2}),
    ("RAdam", {"lr": 1e-2, "weight_decay": 0.01}),
    ("RAdam", {"lr": 1e-2, "weight_decay": 0.05, "decoupled_weight_decay": True, "maximize": True}),
    ("RAdam", {"lr": 1e-2, "betas": (0.8, 0.9), "eps": 1e-4}),
    ("Adamax", {"lr": 1e-2}),
    (
        "Adamax",
        {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-4, "weight_decay": 0.02, "maximize": True},
    ),
    ("Adagrad", {"lr": 0.1}),
    (
        "Adagrad",
        {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
    ),
    ("Adagrad", {"lr": 0.1, "eps": 1e-6, "lr_decay": 0.05, "maximize": True}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.01}),
    ("Adadelta", {"rho": 0.95, "maximize": True}),
    ("RMSprop", {"lr": 5e-3}),
    ("RMSprop", {"lr": 5e-3, "centered": True}),
    ("RMSprop", {"lr": 1e-2, "momentum": 0.9}),
    (
        "RMSprop",
        {
            "lr": 5e-3,
            "alpha": 0.9,
            "eps": 1e-6,
            "centered": True,
            "momentum": 0.9,
            "weight_decay": 0.01,
        },
    ),
    ("RMSprop", {"lr": 5e-3, "weight_decay": 0.01, "maximize": True}),
    ("Rprop", {"lr": 0.01}),
    ("Rprop", {"lr": 0.02, "etas": (0.3, 1.5), "step_sizes": (1e-4, 0.05)}),
    ("Rprop", {"lr": 0.01, "maximize": True}),
    ("ASGD", {"lr": 0.01}),
    ("ASGD", {"lr": 0.05, "lambd": 1e-3, "alpha": 0.6, "t0": 10.0, "weight_decay": 0.01}),
    ("ASGD", {"lr": 0.05, "lambd": 0.01, "t0": 0.0, "maximize": True}),
]


def config_id(config: tuple[str, dict[str, Any]]) -> str:
    name, kwargs = config
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


class Pair:
    """Our transformation and torch's optimizer, stepped side by side; both trajectories kept."""

    def __init__(
        self,
        name: str,
        kwargs: dict[str, Any],
        params: Params | None = None,
        tx: tf.GradientTransformation | None = None,
        grad_fn: Callable[[Params], Params] | None = None,
        default: torch.dtype = torch.float32,
    ):
        sign = -1.0 if kwargs.get("maximize") else 1.0  # ascend -L when maximizing
        self.grad_fn = grad_fn or (lambda p: grads(p, sign))
        self.default = default
        self.params = params if params is not None else init_params()
        self.torch_params = {k: torch.nn.Parameter(v.clone()) for k, v in self.params.items()}
        with default_dtype(default):
            self.tx = tx if tx is not None else from_torch(name, **kwargs)
            self.state = self.tx.init(self.params)
            self.opt = getattr(torch.optim, name)(list(self.torch_params.values()), **kwargs)
        self.ours: list[Params] = []
        self.theirs: list[Params] = []

    def step(self, skip: tuple[str, ...] = ()) -> None:
        """One step on each side; the parameters named in ``skip`` get no gradient."""
        g = {k: None if k in skip else v for k, v in self.grad_fn(self.params).items()}
        with default_dtype(self.default):
            updates, self.state = self.tx.update(g, self.state, self.params)
        self.params = tf.apply_updates(self.params, updates)
        for k, v in self.grad_fn({k: p.detach() for k, p in self.torch_params.items()}).items():
            self.torch_params[k].grad = None if k in skip else v
        with default_dtype(self.default):
            self.opt.step()
        self.ours.append(self.params)
        self.theirs.append({k: p.detach().clone() for k, p in self.torch_params.items()})

    def assert_close(self, keys: tuple[str, ...] | None = None) -> None:
        """Every step's parameters agree (the message names the first step that does not)."""
        for k in keys or self.params:
            ours = torch.stack([p[k] for p in self.ours])
            theirs = torch.stack([p[k] for p in self.theirs])
            ok = torch.isclose(ours, theirs, rtol=RTOL, atol=ATOL).reshape(len(ours), -1).all(1)
            first = int((~ok).nonzero()[0]) + 1 if not ok.all() else None
            torch.testing.assert_close(
                ours,
                theirs,
                rtol=RTOL,
                atol=ATOL,
                msg=lambda m, k=k, first=first: f"param {k!r}, first differing step {first}: {m}",
            )


@pytest.mark.parametrize("default", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_from_torch_follows_torch_optim_trajectory(config, default):
    pair = Pair(*config, default=default)
    for _ in range(STEPS):
        pair.step()
    pair.assert_close()
    moved = max((pair.params[k] - v).abs().max() for k, v in init_params().items())
    assert moved > 0.1  # the run goes somewhere, so the comparison means something


def test_from_torch_asgd_average_matches_torch_ax():
    pair = Pair("ASGD", {"lr": 0.05, "lambd": 1e-3, "t0": 5.0})
    for _ in range(30):
        pair.step()
    (ax,) = [s.ax for s in pair.state if isinstance(s, ScaleByTorchAsgdState)]
    for k, p in pair.torch_params.items():
        torch.testing.assert_close(ax[k], pair.opt.state[p]["ax"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    "config",
    [
        ("Adam", {"lr": torch.tensor(1e-2, dtype=torch.float64), "amsgrad": True}),
        ("SGD", {"lr": torch.tensor(0.05, dtype=torch.float64), "momentum": 0.9, "dampening": 0.1}),
        ("NAdam", {"lr": torch.tensor([2e-3], dtype=torch.float64)}),
    ],
    ids=config_id,
)
def test_from_torch_tensor_learning_rate_matches(config):
    pair = Pair(*config)
    for _ in range(30):
        pair.step()
    pair.assert_close()


SCHEDULED = [
    ("AdamW", {"weight_decay": 0.1}),
    ("SGD", {"momentum": 0.9, "weight_decay": 0.01}),
    ("RMSprop", {"momentum": 0.9, "centered": True}),
    ("NAdam", {"weight_decay": 0.05, "decoupled_weight_decay": True}),
    ("Adagrad", {"lr_decay": 0.05}),
]


@pytest.mark.parametrize("config", SCHEDULED, ids=config_id)
def test_from_torch_lr_schedule_matches_torch_lambda_lr(config):
    name, kwargs = config
    base = 0.02

    def factor(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / 50))

    def schedule(count: torch.Tensor) -> torch.Tensor:
        # The count is 0 on the first step, as the torch scheduler's step counter.
        return base * 0.5 * (1 + torch.cos(math.pi * count.double() / 50))

    pair = Pair(name, {**kwargs, "lr": base}, tx=from_torch(name, **kwargs, lr=schedule))
    scheduler = torch.optim.lr_scheduler.LambdaLR(pair.opt, factor)
    for _ in range(50):
        pair.step()
        scheduler.step()
    pair.assert_close()


def test_from_torch_accepts_class_or_name():
    params = init_params()
    g = grads(params)
    expected, _ = from_torch(torch.optim.AdamW, lr=0.1).update(
        g, from_torch(torch.optim.AdamW, lr=0.1).init(params), params
    )
    for name in ("AdamW", "adamw", "torch.optim.AdamW"):
        tx = from_torch(name, lr=0.1)
        got, _ = tx.update(g, tx.init(params), params)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_from_torch_uses_torch_defaults():
    # AdamW's weight_decay defaults to 1e-2 in torch (optax's adamw: 1e-4).
    pair = Pair("AdamW", {})
    for _ in range(10):
        pair.step()
    pair.assert_close()


@pytest.mark.parametrize(
    "flags",
    [
        {"foreach": True},
        {"foreach": False},
        {"capturable": True},
        {"differentiable": True},
        {"fused": True},
    ],
    ids=str,
)
def test_from_torch_implementation_flags_do_not_change_the_maths(flags):
    params = init_params()
    plain, flagged = from_torch("Adam", lr=0.1), from_torch("Adam", lr=0.1, **flags)
    s1, s2 = plain.init(params), flagged.init(params)
    for _ in range(3):
        g = grads(params)
        u1, s1 = plain.update(g, s1, params)
        u2, s2 = flagged.update(g, s2, params)
        torch.testing.assert_close(u2, u1, rtol=0, atol=0)
        params = tf.apply_updates(params, u1)


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [
        ("Adam", {"lr": -1e-3}, ValueError, "Invalid learning rate"),
        ("SGD", {"lr": torch.tensor([0.1, 0.2])}, ValueError, "1-element"),
        ("AdamW", {"betas": (1.0, 0.999)}, ValueError, "beta parameter at index 0"),
        ("NAdam", {"momentum_decay": -1.0}, ValueError, "momentum_decay"),
        ("SGD", {"momentum": -0.5}, ValueError, "momentum"),
        ("SGD", {"nesterov": True}, ValueError, "Nesterov momentum requires a momentum"),
        ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError, "dampening"),
        ("Adagrad", {"lr_decay": -0.1}, ValueError, "lr_decay"),
        ("Adagrad", {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator"),
        ("Adadelta", {"rho": 1.5}, ValueError, "rho"),
        ("RMSprop", {"eps": -1.0}, ValueError, "epsilon"),
        ("Rprop", {"etas": (1.5, 1.2)}, ValueError, "eta values"),
        ("ASGD", {"weight_decay": -0.1}, ValueError, "weight_decay"),
        ("Adam", {"momentum": 0.9}, TypeError, "torch.optim.Adam has no option 'momentum'"),
        ("AdamW", {"nesterov": True}, TypeError, "nesterov"),
        ("Adam", {"fused": True, "foreach": True}, RuntimeError, "cannot be `True` together"),
        ("Adam", {"lr": torch.tensor(0.1), "foreach": True}, ValueError, "foreach=True"),
        ("SGD", {"learning_rate": 0.1}, TypeError, "'learning_rate'"),
    ],
)
def test_from_torch_rejects_invalid_options(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        from_torch(name, **kwargs)


@pytest.mark.parametrize("optimizer", ["Shampoo", "SGDP"], ids=str)
def test_from_torch_rejects_unsupported_optimizers(optimizer):
    with pytest.raises(ValueError, match=r"unsupported optimizer.*supported: SGD, Adam"):
        from_torch(optimizer)


@pytest.mark.parametrize("optimizer", [42, torch.nn.Linear, torch.optim.Adam], ids=str)
def test_from_torch_rejects_non_optimizer_classes(optimizer):
    if optimizer is torch.optim.Adam:  # an instance, not the class
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(TypeError, match=r"torch\.optim\.Optimizer class"):
        from_torch(optimizer)


def test_from_torch_refuses_an_option_it_does_not_read(monkeypatch):
    # An option a later torch adds (simulated by hiding one) is refused, never ignored.
    build, read = _from_torch._BUILDERS["SGD"]
    monkeypatch.setitem(_from_torch._BUILDERS, "SGD", (build, read.replace("dampening", "")))
    with pytest.raises(ValueError, match=r"option dampening of torch\.optim\.SGD is not supported"):
        from_torch("SGD", dampening=0.1)


def test_from_torch_takes_sparse_gradients_only_where_torch_does():
    params = {"w": torch.zeros(3)}
    sparse = {"w": torch.tensor([0.0, 1.0, 0.0]).to_sparse()}
    tx = from_torch("SGD", lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"sparse \(torch.sparse_coo\); densify it"):
        tx.update(sparse, tx.init(params), params)
    plain = from_torch("SGD", lr=0.1)  # a scaling keeps sparsity, as torch's plain SGD
    u, _ = plain.update(sparse, plain.init(params), params)
    assert torch.equal(u["w"].to_dense(), torch.tensor([0.0, -0.1, 0.0]))


def complex_grads(params: Params) -> Params:
    z, x = params["z"], params["x"]
    return {"z": z**3 - 0.5 * z + 0.1j + 0.1 * x.sum(), "x": x**3 - 0.2 + 0.1 * z.real.sum()}


@pytest.mark.parametrize(
    "config",
    [
        ("Adam", {"lr": 1e-2, "amsgrad": True, "weight_decay": 0.01}),
        ("NAdam", {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True}),
        ("RMSprop", {"lr": 1e-2, "centered": True, "momentum": 0.5}),
        ("Rprop", {"lr": 0.01}),
        ("ASGD", {"lr": 0.05, "t0": 3.0}),
        ("Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.1}),
        ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ],
    ids=config_id,
)
def test_from_torch_complex_params_follow_torch(config):
    # torch.optim optimises a complex parameter as a pair of real numbers; so do we.
    params = {
        "z": torch.tensor([0.5 + 0.2j, -0.3 + 0.8j], dtype=torch.complex128),
        "x": torch.tensor([0.4, -0.6], dtype=torch.float64),
    }
    pair = Pair(*config, params=params, grad_fn=complex_grads)
    for _ in range(40):
        pair.step()
    assert pair.params["z"].dtype == torch.complex128
    pair.assert_close()


def _leaves_under(tree: Any, key: str) -> list[torch.Tensor]:
    """The state's leaves stored under dict key ``key`` (one parameter's moments)."""
    paths, leaves, _ = optree.tree_flatten_with_path(tree, none_is_leaf=True)
    return [leaf for path, leaf in zip(paths, leaves) if key in path]


SKIPPED = (4, 5, 9)  # steps on which "b" gets no gradient


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_from_torch_none_gradient_skips_the_parameter_and_its_step(config):
    """As in torch, a `None` gradient skips the parameter entirely: it, its state and its
    step count stay, and when it has a gradient again its step-dependent factors (bias
    corrections, NAdam's momentum schedule, ASGD's eta) follow its own count."""
    name, kwargs = config
    pair = Pair(name, kwargs)
    for step in range(1, 21):
        skip = ("b",) if step in SKIPPED else ()
        before, state_before = pair.params["b"], _leaves_under(pair.state, "b")
        pair.step(skip)
        if skip:
            assert torch.equal(pair.params["b"], before)
            for old, new in zip(state_before, _leaves_under(pair.state, "b"), strict=True):
                assert torch.equal(old, new)
    pair.assert_close()
    # Where we count steps (the algorithms whose maths reads them), per parameter, as torch.
    ours = {k: [x for x in _leaves_under(pair.state, k) if x.dtype == torch.int64] for k in "wbs"}
    if ours["b"]:
        assert {k: [int(c) for c in v] for k, v in ours.items()} == {
            "w": [20],
            "b": [17],
            "s": [20],
        }
        if name != "SGD":  # torch's SGD keeps no count (its dampening reads the buffer's absence)
            theirs = {k: int(pair.opt.state[p]["step"]) for k, p in pair.torch_params.items()}
            assert theirs == {"w": 20, "b": 17, "s": 20}


def test_optax_named_aliases_count_steps_for_the_whole_tree():
    """`adam` and the other optax names keep optax's one count: a skipped leaf's bias
    corrections move on with it (the difference from `from_torch`, docs: concepts.md)."""
    params = {"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    for tx, per_parameter in ((tf.adam(0.1), False), (from_torch("Adam", lr=0.1), True)):
        state = tx.init(params)
        for step in range(4):
            g = {"a": torch.ones(2, dtype=torch.float64), "b": None if step else params["b"]}
            _, state = tx.update(g, state, params)
        count = state[0].count
        if per_parameter:
            assert (int(count["a"]), int(count["b"])) == (4, 1)
        else:
            assert int(count) == 4


@pytest.mark.parametrize(
    "config",
    [
        ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
        ("Adam", {"lr": 1e-2, "amsgrad": True}),
        ("NAdam", {"lr": 1e-2, "weight_decay": 0.01}),
        ("RAdam", {"lr": 1e-2}),
        ("Adagrad", {"lr": 0.1, "lr_decay": 0.01}),
        ("Rprop", {"lr": 0.01}),
        ("ASGD", {"lr": 0.05, "t0": 1.0}),
    ],
    ids=config_id,
)
def test_from_torch_vmaps_over_independent_runs(config):
    name, kwargs = config
    tx = from_torch(name, **kwargs)

    def run(params: Params) -> Params:
        state = tx.init(params)
        for _ in range(3):
            updates, state = tx.update(grads(params), state, params)
            params = tf.apply_updates(params, updates)
        return params

    batch = {
        k: torch.stack([v * (1 + 0.1 * i) for i in range(3)]) for k, v in init_params().items()
    }
    got = torch.func.vmap(run)(batch)
    for i in range(3):
        want = run({k: v[i] for k, v in batch.items()})
        torch.testing.assert_close({k: v[i] for k, v in got.items()}, want, rtol=1e-14, atol=1e-15)


def _assert_compiles_without_recompiles(
    tx: tf.GradientTransformation, backend: str, rtol: float = 1e-13
) -> None:
    """Compiled (fullgraph) steps 2..6 reuse the first graph and match eager steps."""

    def step(params, state):
        updates, state = tx.update(grads(params), state, params)
        return tf.apply_updates(params, updates), state

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    params = eager = init_params()
    state = eager_state = tx.init(params)
    params, state = compiled(params, state)
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(5):
            params, state = compiled(params, state)
    for _ in range(6):
        eager, eager_state = step(eager, eager_state)
    torch.testing.assert_close(params, eager, rtol=rtol, atol=1e-15)
    torch.testing.assert_close(state, eager_state, rtol=rtol, atol=1e-15)


_slow = pytest.mark.slow


@pytest.mark.parametrize(
    "config",
    [
        ("NAdam", {"lr": 1e-2, "weight_decay": 0.01, "decoupled_weight_decay": True}),
        ("Rprop", {"lr": 0.01, "maximize": True}),
        ("ASGD", {"lr": 0.05, "t0": 2.0}),
        pytest.param(("AdamW", {"lr": 1e-2, "amsgrad": True}), marks=_slow),
        pytest.param(("RAdam", {"lr": 1e-2}), marks=_slow),
        pytest.param(("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.2}), marks=_slow),
        pytest.param(("Adagrad", {"lr": 0.1, "lr_decay": 0.01}), marks=_slow),
        pytest.param(("RMSprop", {"lr": 5e-3, "centered": True, "momentum": 0.9}), marks=_slow),
    ],
    ids=config_id,
)
def test_from_torch_compiles_fullgraph_without_recompiles(config):
    # Recompiles are decided by Dynamo's guards whatever the backend; "eager" keeps it fast.
    name, kwargs = config
    _assert_compiles_without_recompiles(from_torch(name, **kwargs), backend="eager")


def test_torch_compat_transforms_compile_fullgraph_without_recompiles():
    # The remaining torch-compatible transforms, in one (numerically arbitrary) chain.
    tx = tf.chain(
        scale_by_torch_momentum(0.9, dampening=0.1),
        scale_by_torch_amsgrad(),
        scale_by_torch_radam(),
        scale_by_torch_adagrad(lr_decay=0.1),
        tf.scale_by_learning_rate(lambda count: 1e-2 / (1 + count)),
    )
    _assert_compiles_without_recompiles(tx, backend="eager")


@_slow
def test_from_torch_compiles_with_inductor():
    tx = from_torch("NAdam", lr=1e-2, weight_decay=0.01)
    _assert_compiles_without_recompiles(tx, backend="inductor", rtol=1e-12)


@pytest.mark.parametrize(
    "config", [c for c in CONFIGS if c[0] in ("Adam", "RAdam", "Rprop")][:4], ids=config_id
)
def test_from_torch_keeps_float32_and_mixed_dtypes(config):
    name, kwargs = config
    tx = from_torch(name, **kwargs)
    params = {"w": torch.ones(3, dtype=torch.float32), "h": torch.ones(2, dtype=torch.bfloat16)}
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update({k: v * 0.5 for k, v in params.items()}, state, params)
        assert {k: u.dtype for k, u in updates.items()} == {k: p.dtype for k, p in params.items()}
        params = tf.apply_updates(params, updates)


def test_from_torch_rprop_schedule_sets_the_initial_step_size():
    params = {"w": torch.tensor([1.0, -1.0], dtype=torch.float64)}
    tx = from_torch("Rprop", lr=lambda count: 0.1 / (1 + count))
    updates, _ = tx.update(
        {"w": torch.tensor([2.0, -3.0], dtype=torch.float64)}, tx.init(params), params
    )
    torch.testing.assert_close(updates["w"], torch.tensor([-0.1, 0.1], dtype=torch.float64))
