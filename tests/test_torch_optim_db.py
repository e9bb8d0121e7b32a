"""The drop-in, driven by torch's own optimizer database (``optim_db``).

torch ships, in ``torch.testing._internal.common_optimizers``, the configurations its own
optimizer tests run (``optim_inputs_func``) and the inputs each optimizer must refuse
(``optim_error_inputs_func``). Every one of them that applies on CPU runs here with torch's
class replaced by ``Optimizer(params, from_torch(cls, **kwargs))``:

- trajectories equal torch's, in float64 to 1e-12 and in float32 to torch's own tolerances,
  over steps on which some parameters get no gradient, in two param groups;
- every error input raises (or warns) the same exception type, with torch's message;
- checkpoints move both ways and continue exactly, and a ``state_dict`` round trip is
  identical; a torch optimizer built with its defaults trains, after loading our checkpoint,
  with the options it carries;
- every option can be overridden per param group, with the effect it has in torch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.testing._internal.common_optimizers import OptimizerErrorEnum, optim_db

import torchopt_fn as tf

SUPPORTED = [
    "SGD",
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Adamax",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Rprop",
    "ASGD",
    "Adafactor",
    "Muon",
    "SparseAdam",
]
REAL_ONLY = {"Adafactor", "Muon", "SparseAdam"}  # torch refuses complex parameters
INFOS = {info.optim_cls.__name__: info for info in optim_db}
STEPS = 12
NO_GRAD = {3: (1,), 4: (1, 2), 7: (0,)}  # step -> indices of parameters without a gradient


def _inputs(dtype: torch.dtype) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (name, inp.desc, inp.kwargs)
        for name in SUPPORTED
        for inp in INFOS[name].optim_inputs_func("cpu", dtype)
    ]


def _id(case: tuple) -> str:
    return f"{case[0]}-{case[1].replace(' ', '_')}"


CASES = _inputs(torch.float64)


SHAPES = {
    "dense": [(4, 3), (3,), ()],  # a weight, a bias and a 0-d scale
    "matrices": [(4, 3), (3, 2), (2, 2)],  # Muon takes matrices only
    "embeddings": [(10, 3), (6, 3), (4, 3)],  # SparseAdam takes sparse gradients only
}


def make_params(dtype: torch.dtype, name: str | None = None) -> list[torch.Tensor]:
    kind = {"Muon": "matrices", "SparseAdam": "embeddings"}.get(name or "", "dense")
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES[kind]]


def loss_fn(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w, b, s = params
    if w.shape[0] == 10:  # embedding tables, looked up with sparse gradients
        rows = [(x.abs() * 100).long()[:, :2] % len(e) for e in params]
        looked_up = [torch.nn.functional.embedding(r, e, sparse=True) for r, e in zip(rows, params)]
        return sum(torch.tanh(v).pow(2).sum() for v in looked_up)
    if b.dim() == 2:  # three matrices: a small tanh network
        return (torch.tanh(torch.tanh(x @ w) @ b) @ s).pow(2).sum() + 0.01 * (w**4).sum()
    return ((torch.tanh(x @ w + b) * s) ** 2).sum() + 0.01 * (w**4).sum()


def grouped(params: list[torch.Tensor], **override: Any) -> list[dict[str, Any]]:
    return [{"params": params[:2]}, {"params": params[2:], **override}]


def train(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> list:
    """Steps of a small tanh regression; on some steps some parameters get no gradient."""
    trajectory = []
    for t in steps:
        g = torch.Generator().manual_seed(t)
        x = torch.randn(5, 4, generator=g, dtype=params[0].dtype)
        opt.zero_grad()
        loss_fn(params, x).backward()
        for i in NO_GRAD.get(t % 10, ()):
            params[i].grad = None
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def ours(name: str, params: Any, **kwargs: Any) -> tf.Optimizer:
    return tf.Optimizer(params, tf.from_torch(getattr(torch.optim, name), **kwargs))


def theirs(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    return getattr(torch.optim, name)(params, **kwargs)


def assert_same_trajectory(a: list, b: list, dtype: torch.dtype) -> None:
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else {}  # torch's for float32
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            where = f"step {step} param {i}"
            torch.testing.assert_close(u, v, **tol, msg=lambda m, where=where: f"{where}: {m}")


# --------------------------------------------------------------------------- trajectories


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_trajectory_equals_torch(case, dtype):
    name, _, kwargs = case
    ref_params, our_params = (
        make_params(dtype, name),
        make_params(dtype, name),
    )
    ref = train(theirs(name, grouped(ref_params), **kwargs), ref_params, range(STEPS))
    got = train(ours(name, grouped(our_params), **kwargs), our_params, range(STEPS))
    assert_same_trajectory(got, ref, dtype)


# --------------------------------------------------------------------------- error inputs


ERROR_CASES = [
    (name, e)
    for name in [*SUPPORTED, "LBFGS"]
    for e in INFOS[name].optim_error_inputs_func("cpu", torch.float64)
]


@pytest.mark.parametrize(
    "case",
    ERROR_CASES,
    ids=[f"{n}-{i}" for i, (n, _) in enumerate(ERROR_CASES)],
)
def test_error_input_raises_as_torch_does(case):
    name, error = case
    spec = error.optimizer_error_input
    params = spec.params if spec.params is not None else make_params(torch.float64, name)

    def build() -> None:
        opt = ours(name, params, **spec.kwargs)
        if error.error_on == OptimizerErrorEnum.STEP_ERROR:
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.rand_like(p)
            opt.step()

    if issubclass(error.error_type, Warning):
        with pytest.warns(error.error_type, match=error.error_regex):
            build()
    else:
        with pytest.raises(error.error_type) as raised:
            build()
        assert re.search(error.error_regex, str(raised.value)), str(raised.value)


# --------------------------------------------------------------------------- checkpoints


def _roundtrip(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint travels."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_state_dict(a: Any, b: Any, where: str = "") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            assert_same_state_dict(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state_dict(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_state_dict_round_trip_is_identical(case):
    name, _, kwargs = case
    params = make_params(torch.float64, name)
    opt = ours(name, grouped(params), **kwargs)
    train(opt, params, range(5))
    saved = opt.state_dict()
    first = _roundtrip(saved)
    opt.load_state_dict(first)
    assert_same_state_dict(opt.state_dict(), first)
    other_params = make_params(torch.float64, name)
    other = ours(name, grouped(other_params), **kwargs)
    other.load_state_dict(_roundtrip(saved))
    assert_same_state_dict(other.state_dict(), first)


def _resumed(make: Callable[..., Any], name: str, kwargs: dict, checkpoint: dict, at: list):
    """A new optimizer of ``make``'s side over copies of ``at``, loaded from ``checkpoint``."""
    params = [p.detach().clone().requires_grad_() for p in at]
    opt = make(name, grouped(params), **kwargs)
    opt.load_state_dict(_roundtrip(checkpoint))
    return opt, params


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_torch_checkpoints_load_and_continue_exactly(case):
    """Train torch 6 steps, load its checkpoint into ours: ours continues as torch does."""
    name, _, kwargs = case
    params = make_params(torch.float64, name)
    source = theirs(name, grouped(params), **kwargs)
    train(source, params, range(6))
    target, moved = _resumed(ours, name, kwargs, source.state_dict(), params)
    expected = train(source, params, range(6, STEPS))
    assert_same_trajectory(train(target, moved, range(6, STEPS)), expected, torch.float64)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_our_checkpoints_load_into_torch_and_continue_as_its_own(case):
    """Train both sides 6 steps; torch loading our checkpoint continues exactly as torch
    loading its own. (torch casts loaded state to the parameters' dtype, so NAdam's float32
    ``mu_product`` comes back float64: a resumed torch run is not its uninterrupted one.)"""
    name, _, kwargs = case
    ours_params, torch_params = (
        make_params(torch.float64, name),
        make_params(torch.float64, name),
    )
    mine = ours(name, grouped(ours_params), **kwargs)
    reference = theirs(name, grouped(torch_params), **kwargs)
    train(mine, ours_params, range(6))
    train(reference, torch_params, range(6))
    target, moved = _resumed(theirs, name, kwargs, mine.state_dict(), ours_params)
    twin, twin_params = _resumed(theirs, name, kwargs, reference.state_dict(), torch_params)
    expected = train(twin, twin_params, range(6, STEPS))
    assert_same_trajectory(train(target, moved, range(6, STEPS)), expected, torch.float64)


@pytest.mark.parametrize("case", [c for c in CASES if c[2]], ids=_id)
def test_a_torch_optimizer_loading_our_checkpoint_takes_its_options(case):
    """torch's param groups come from the checkpoint: ours carry every option."""
    name, _, kwargs = case
    ours_params, torch_params = (
        make_params(torch.float64, name),
        make_params(torch.float64, name),
    )
    mine = ours(name, grouped(ours_params), **kwargs)
    reference = theirs(name, grouped(torch_params), **kwargs)
    train(mine, ours_params, range(6))
    train(reference, torch_params, range(6))
    plain, moved = _resumed(theirs, name, {}, mine.state_dict(), ours_params)  # torch's defaults
    twin, twin_params = _resumed(theirs, name, kwargs, reference.state_dict(), torch_params)
    expected = train(twin, twin_params, range(6, STEPS))
    assert_same_trajectory(train(plain, moved, range(6, STEPS)), expected, torch.float64)


# --------------------------------------------------------------------------- param groups


# A non-default value for every option, and what it needs beside it.
OVERRIDES: dict[str, list[dict[str, Any]]] = {
    "SGD": [
        {"lr": 0.02},
        {"momentum": 0.5},
        {"momentum": 0.5, "dampening": 0.3},
        {"momentum": 0.5, "nesterov": True},
        {"weight_decay": 0.05},
        {"maximize": True},
    ],
    "Adam": [
        {"lr": 0.02},
        {"betas": (0.8, 0.95)},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"amsgrad": True},
        {"maximize": True},
        {"weight_decay": 0.05, "decoupled_weight_decay": True},
    ],
    "AdamW": [
        {"decoupled_weight_decay": False, "weight_decay": 0.05},
        {"lr": 0.02},
        {"betas": (0.8, 0.95)},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"amsgrad": True},
        {"maximize": True},
    ],
    "NAdam": [
        {"lr": 0.02},
        {"betas": (0.8, 0.95)},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"momentum_decay": 0.01},
        {"weight_decay": 0.05, "decoupled_weight_decay": True},
        {"maximize": True},
    ],
    "RAdam": [
        {"lr": 0.02},
        {"betas": (0.8, 0.95)},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"weight_decay": 0.05, "decoupled_weight_decay": True},
        {"maximize": True},
    ],
    "Adamax": [
        {"lr": 0.02},
        {"betas": (0.8, 0.95)},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"maximize": True},
    ],
    "Adagrad": [
        {"lr": 0.02},
        {"lr_decay": 0.01},
        {"weight_decay": 0.05},
        {"eps": 1e-6},
        {"maximize": True},
    ],
    "Adadelta": [
        {"lr": 0.5},
        {"rho": 0.8},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"maximize": True},
    ],
    "RMSprop": [
        {"lr": 0.02},
        {"alpha": 0.9},
        {"eps": 1e-4},
        {"weight_decay": 0.05},
        {"momentum": 0.5},
        {"centered": True},
        {"maximize": True},
    ],
    "Rprop": [
        {"etas": (0.4, 1.3)},
        {"step_sizes": (1e-5, 0.02)},
        {"maximize": True},
    ],
    "Adafactor": [
        {"lr": 0.02},
        {"beta2_decay": -0.5},
        {"eps": (1e-1, 2.0)},
        {"d": 1.5},
        {"weight_decay": 0.05},
        {"maximize": True},
    ],
    "Muon": [
        {"lr": 0.02},
        {"weight_decay": 0.3},
        {"momentum": 0.5},
        {"nesterov": False},
        {"ns_coefficients": (3.4, -4.7, 2.0)},
        {"eps": 10.0},
        {"ns_steps": 3},
        {"adjust_lr_fn": "match_rms_adamw"},
    ],
    "SparseAdam": [
        {"lr": 0.02},
        {"betas": (0.8, 0.95)},
        {"eps": 1e-2},
        {"maximize": True},
    ],
    "ASGD": [
        {"lr": 0.02},
        {"lambd": 1e-3},
        {"alpha": 0.6},
        {"t0": 3.0},
        {"weight_decay": 0.05},
        {"maximize": True},
    ],
}
OVERRIDE_CASES = [(name, o) for name, overrides in OVERRIDES.items() for o in overrides]


def _override_id(case: tuple[str, dict[str, Any]]) -> str:
    return case[0] + "".join(f"-{k}={v}" for k, v in case[1].items())


def test_every_option_has_an_override_case():
    """Each numerical option and flag of every class (but the kernel choices) is overridden."""
    flags = {"foreach", "fused", "capturable", "differentiable", "lr"}
    for name in SUPPORTED:
        options = set(tf.Optimizer([torch.zeros(1, 1)], tf.from_torch(name)).defaults) - flags
        covered = {k for o in OVERRIDES[name] for k in o}
        assert options <= covered | {"initial_accumulator_value"}, (name, options - covered)


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=_override_id)
def test_a_param_group_override_of_any_option_takes_effect(case):
    """Overridden in the second group only: ours follows torch, and torch's run differs from
    one with the defaults (in the parameters, or in the state: ASGD's t0 moves its average)."""
    name, override = case
    runs = {}
    for side, make, options in (("torch", theirs, override), ("ours", ours, override)):
        params = make_params(torch.float64, name)
        opt = make(name, grouped(params, **options))
        runs[side] = train(opt, params, range(STEPS)), opt.state[params[2]], opt
    plain_params = make_params(torch.float64, name)
    plain = theirs(name, grouped(plain_params))
    plain_run = train(plain, plain_params, range(STEPS))
    assert runs["ours"][2].param_groups[1].items() >= override.items()
    assert_same_trajectory(runs["ours"][0], runs["torch"][0], torch.float64)
    ours_state, torch_state = runs["ours"][1], runs["torch"][1]
    for key, value in torch_state.items():
        value = torch.as_tensor(value)  # SparseAdam's step is a Python int
        mine = ours_state[key].to(value.dtype)
        torch.testing.assert_close(mine, value, rtol=1e-12, atol=1e-14, msg=key)
    plain_state = plain.state[plain_params[2]]
    assert not torch.equal(runs["torch"][0][-1][2], plain_run[-1][2]) or any(
        key not in plain_state or not torch.equal(value, plain_state[key])
        for key, value in torch_state.items()
    )


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_torch_option_lives_in_param_groups(name):
    mine = ours(name, make_params(torch.float64, name))
    torch_group = theirs(name, make_params(torch.float64, name)).param_groups[0]
    assert mine.param_groups[0].keys() == torch_group.keys()
    for key, value in torch_group.items():
        if key != "params":
            assert mine.param_groups[0][key] == value, key


def test_an_override_that_cannot_be_honoured_is_refused_when_the_group_is_added():
    params = make_params(torch.float64)
    with pytest.raises(ValueError, match="Nesterov"):
        ours("SGD", grouped(params, nesterov=True))
    opt = ours("SGD", params[:1])
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": params[1:], "momentum": -1.0})
    assert len(opt.param_groups) == 1


# --------------------------------------------------------------------------- implementation flags


def _fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from torchopt_fn.interop import _optimizer

    calls: list[int] = []
    original = _optimizer.run_fused_

    def spy(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        original(*args, **kwargs)

    monkeypatch.setattr(_optimizer, "run_fused_", spy)
    return calls


@pytest.mark.parametrize("flags", [{"fused": False}, {"foreach": False}, {"foreach": True}])
def test_implementation_flags_are_recorded_and_select_kernels_not_maths(flags, monkeypatch):
    calls = _fused_calls(monkeypatch)
    ref_params, our_params = make_params(torch.float32), make_params(torch.float32)
    ref = train(theirs("AdamW", ref_params, lr=0.01), ref_params, range(STEPS))
    opt = ours("AdamW", our_params, lr=0.01, **flags)
    assert opt.param_groups[0].items() >= flags.items()
    assert_same_trajectory(train(opt, our_params, range(STEPS)), ref, torch.float32)
    fused_expected = flags.get("fused") is not False
    assert bool(calls) == fused_expected


def test_foreach_false_runs_one_op_per_tensor(monkeypatch):
    from torchopt_fn.tree import _ops

    seen: list[bool] = []
    original = _ops.use_foreach

    def spy(tensors: Any) -> bool:
        seen.append(original(tensors))
        return seen[-1]

    monkeypatch.setattr(_ops, "use_foreach", spy)
    params = make_params(torch.float64)
    train(ours("NAdam", params, foreach=False), params, range(2))
    assert seen and not any(seen)
    seen.clear()
    train(ours("NAdam", params), params, range(2))
    assert any(seen)


# --------------------------------------------------------------------------- hooks and formats


def test_state_dict_hooks_behave_as_torch_s():
    """torch's own hook tests: a pre-hook may store anything in ``state``, a post-hook may
    edit or replace the dict, load hooks may rewrite the checkpoint and see the result."""
    results = {}
    for side, make in (("torch", theirs), ("ours", ours)):
        params = make_params(torch.float64)
        opt = make("Adam", params, lr=0.01)
        train(opt, params, range(2))
        opt.register_state_dict_pre_hook(lambda o: o.state.__setitem__("test", 1))
        opt.register_state_dict_post_hook(lambda o, sd: sd.__setitem__("ran", True))
        state_dict = opt.state_dict()
        assert state_dict["state"]["test"] == 1 and state_dict["ran"]

        def pre(o: torch.optim.Optimizer, sd: dict[str, Any]) -> dict[str, Any]:
            sd = dict(sd)
            sd["param_groups"] = copy.deepcopy(sd["param_groups"])
            sd["param_groups"][0]["lr"] = 0.002
            return sd

        opt.register_load_state_dict_pre_hook(pre)
        opt.register_load_state_dict_post_hook(lambda o: o.state.__setitem__("loaded", True))
        opt.load_state_dict(state_dict)
        results[side] = (opt.param_groups[0]["lr"], opt.state["loaded"], opt.state["test"])
    assert results["ours"] == results["torch"] == (0.002, True, 1)


@pytest.mark.parametrize("name", SUPPORTED)
def test_old_checkpoint_formats_load(name):
    """A number ``step`` and groups without the options later torch versions added."""
    params = make_params(torch.float64, name)
    source = theirs(name, params)
    train(source, params, range(3))
    old = copy.deepcopy(source.state_dict())
    for entry in old["state"].values():
        for key, value in entry.items():
            if key in ("step", "mu_product", "eta", "mu") and isinstance(value, torch.Tensor):
                entry[key] = value.item()
    for group in old["param_groups"]:
        for key in ("maximize", "foreach", "differentiable", "capturable", "fused"):
            group.pop(key, None)
        group.pop("decoupled_weight_decay", None)
    moved = [p.detach().clone().requires_grad_() for p in params]
    opt = ours(name, moved)
    opt.load_state_dict(old)
    expected = train(source, params, range(3, 8))
    assert_same_trajectory(train(opt, moved, range(3, 8)), expected, torch.float64)


def test_adagrad_has_every_parameter_s_state_from_construction_as_in_torch():
    """torch.optim.Adagrad reads state it created in its constructor, so a checkpoint of ours
    must hold a parameter that never had a gradient."""
    params = make_params(torch.float64)
    opt = ours("Adagrad", params, lr=0.1, initial_accumulator_value=0.2)
    reference = theirs("Adagrad", make_params(torch.float64), lr=0.1, initial_accumulator_value=0.2)
    assert_same_state_dict(opt.state_dict(), reference.state_dict())
    for _ in range(2):
        opt.zero_grad()
        loss_fn([*params[:2], params[2].detach()], torch.ones(5, 4, dtype=torch.float64)).backward()
        opt.step()
    moved = [p.detach().clone().requires_grad_() for p in params]
    resumed = theirs("Adagrad", moved, lr=0.1)
    resumed.load_state_dict(_roundtrip(opt.state_dict()))
    expected = train(opt, params, range(2, 6))
    assert_same_trajectory(train(resumed, moved, range(2, 6)), expected, torch.float64)


def test_a_duplicated_parameter_warns_as_in_torch():
    p = torch.zeros(2, requires_grad=True)
    with pytest.warns(UserWarning, match="duplicate parameters"):
        ours("SGD", [p, p])


@pytest.mark.parametrize("name", SUPPORTED)
def test_deepcopy_and_pickle_keep_the_transformation(name):
    params = make_params(torch.float64, name)
    opt = ours(name, grouped(params))
    train(opt, params, range(3))
    clones = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    for clone in clones:
        assert clone.tx is not opt.tx
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert_same_state_dict(clone.state_dict(), opt.state_dict())
    expected = train(opt, params, range(3, 6))
    for clone in clones:
        own = [p for group in clone.param_groups for p in group["params"]]
        assert_same_trajectory(train(clone, own, range(3, 6)), expected, torch.float64)


# --------------------------------------------------------------------------- differentiable


DIFFERENTIABLE = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True, "maximize": True}),
    ("AdamW", {"weight_decay": 0.1}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("NAdam", {"weight_decay": 0.01}),
    ("RAdam", {}),
    ("Adamax", {}),
    ("Adagrad", {"lr_decay": 0.01}),
    ("Adadelta", {}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("Rprop", {}),
    ("ASGD", {"t0": 1.0}),
]
# torch reads ASGD's eta and mu as Python numbers (``.item()``) even in differentiable mode,
# so it does not differentiate through them; we do, so those two gradients are not compared.
NOT_DIFFERENTIATED_BY_TORCH = {"eta", "mu"}


def differentiate(make: Callable[..., Any], name: str, kwargs: dict, steps: int, tensor_lr: bool):
    """d(loss after ``steps``)/d(initial params, lr, initial state), torch.optim's way:
    non-leaf params and state (clones of leaves), ``differentiable=True``."""
    p0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()
    lr = torch.tensor(0.05, requires_grad=True) if tensor_lr else 0.05
    seed = torch.nn.Parameter(p0.detach().clone())  # a first step, for a non-trivial state
    seeded = theirs(name, [seed], lr=0.05, **kwargs)
    seed.grad = torch.ones_like(seed)
    seeded.step()
    state0 = {
        k: v.detach().clone().requires_grad_() if k != "step" else v.clone()
        for k, v in seeded.state[seed].items()
    }
    p = p0.clone()
    opt = make(name, [p], lr=lr, differentiable=True, **kwargs)
    opt.state[p] = {k: v.clone() for k, v in state0.items()}
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        p.grad = torch.randn(3, 2, generator=g)
        opt.step()
    state = opt.state[p]
    loss = (p**2).sum() + sum((v**2).sum() for k, v in state.items() if k != "step")
    inputs = {"params": p0, **({"lr": lr} if tensor_lr else {})}
    inputs.update((k, v) for k, v in state0.items() if v.requires_grad)
    grads = torch.autograd.grad(loss, list(inputs.values()), allow_unused=True)
    return {k: torch.zeros_like(x) if g is None else g for (k, x), g in zip(inputs.items(), grads)}


@pytest.mark.parametrize("case", DIFFERENTIABLE, ids=_override_id)
def test_differentiable_mode_gives_torch_s_gradients(case):
    """Through 1 and 3 steps, w.r.t. the params, a tensor lr and the initial state, wherever
    torch's own differentiable mode can compute them (some of its kernels take the lr only as a
    number, and several steps can trip its in-place state updates); ours computes all."""
    name, kwargs = case
    compared = 0
    with default_dtype(torch.float64):  # torch's float64 step counts, as ours
        for steps, tensor_lr in ((1, False), (1, True), (3, False), (3, True)):
            mine = differentiate(ours, name, kwargs, steps, tensor_lr)
            assert all(torch.isfinite(g).all() for g in mine.values())
            try:
                reference = differentiate(theirs, name, kwargs, steps, tensor_lr)
            except (RuntimeError, TypeError):
                continue
            for key, expected in reference.items():
                if key not in NOT_DIFFERENTIATED_BY_TORCH:
                    torch.testing.assert_close(mine[key], expected, rtol=1e-10, atol=1e-12)
            compared += 1
    assert compared >= 1


def test_differentiable_mode_optimizes_non_leaf_parameters_and_refuses_compile():
    p = torch.zeros(2, requires_grad=True).clone()
    with pytest.raises(ValueError, match="non-leaf"):
        ours("SGD", [p], lr=0.1)
    ours("SGD", [p], lr=0.1, differentiable=True)
    tf.Optimizer([p], tf.adam(0.1), differentiable=True)
    with pytest.raises(ValueError, match="eagerly"):
        tf.Optimizer([torch.zeros(1)], tf.adam(0.1), compile=True, differentiable=True)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# --------------------------------------------------------------------------- complex parameters


def make_complex_params() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g, dtype=torch.complex128)
    b = torch.randn(3, generator=g, dtype=torch.complex128)
    s = torch.randn((), generator=g, dtype=torch.float64)  # a real parameter beside them
    return [x.requires_grad_() for x in (w, b, s)]


def complex_loss(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Bounded, with bounded gradients: minimised or maximised, no run blows up (a diverging
    run would amplify rounding past any tolerance)."""
    w, b, s = params
    fit = torch.tanh(x.to(w.dtype) @ w + b).abs() ** 2 * torch.cos(s)
    return fit.sum() + 0.1 * torch.sin(w.real * w.imag).sum()


def train_complex(
    opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range, skip: bool = True
) -> list:
    trajectory = []
    for t in steps:
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        opt.zero_grad()
        complex_loss(params, x).backward()
        for i in NO_GRAD.get(t % 10, ()) if skip else ():
            params[i].grad = None
        opt.step()
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in REAL_ONLY], ids=_id)
def test_complex_parameters_follow_torch(case):
    """torch optimises a complex parameter as a pair of reals, its state complex; so do we."""
    name, _, kwargs = case
    ref_params, our_params = make_complex_params(), make_complex_params()
    reference = theirs(name, grouped(ref_params), **kwargs)
    mine = ours(name, grouped(our_params), **kwargs)
    expected = train_complex(reference, ref_params, range(STEPS))
    assert_same_trajectory(train_complex(mine, our_params, range(STEPS)), expected, torch.float64)
    for p, q in zip(our_params, ref_params):
        for key, value in reference.state[q].items():
            assert mine.state[p][key].dtype == value.dtype or key == "step", key
    # and their checkpoints move both ways
    back, moved = _resumed(theirs, name, kwargs, mine.state_dict(), our_params)
    forth, moved_again = _resumed(ours, name, kwargs, reference.state_dict(), ref_params)
    reference_next = train_complex(reference, ref_params, range(STEPS, STEPS + 3))
    assert_same_trajectory(
        train_complex(forth, moved_again, range(STEPS, STEPS + 3)), reference_next, torch.float64
    )
    mine_next = train_complex(mine, our_params, range(STEPS, STEPS + 3))
    assert_same_trajectory(
        train_complex(back, moved, range(STEPS, STEPS + 3)), mine_next, torch.float64
    )


ALIASES = [
    ("SGD", {"lr": 0.05, "momentum": 0.9}, lambda: tf.sgd(0.05, momentum=0.9)),
    ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}, lambda: tf.sgd(0.01, 0.9, True)),
    ("Adam", {"lr": 0.01}, lambda: tf.adam(0.01)),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}, lambda: tf.adamw(0.01, weight_decay=0.1)),
    ("Adamax", {"lr": 0.01}, lambda: tf.adamax(0.01)),
    ("Rprop", {"lr": 0.01}, lambda: tf.rprop(0.01)),
]


@pytest.mark.parametrize("case", ALIASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ALIASES)])
def test_optax_named_aliases_treat_complex_parameters_as_torch_does(case):
    name, kwargs, make_tx = case
    ref_params, our_params = make_complex_params(), make_complex_params()
    # Every parameter has a gradient on every step: the aliases keep optax's one step count.
    reference = theirs(name, ref_params, **kwargs)
    expected = train_complex(reference, ref_params, range(STEPS), skip=False)
    got = train_complex(tf.Optimizer(our_params, make_tx()), our_params, range(STEPS), skip=False)
    assert_same_trajectory(got, expected, torch.float64)


# --------------------------------------------------------------------------- LBFGS
# torch's L-BFGS is closure-driven (several evaluations per step), so it has its own driver.

LBFGS_CASES = [
    (inp.desc, inp.kwargs, dtype)
    for dtype in (torch.float64, torch.float32)
    for inp in INFOS["LBFGS"].optim_inputs_func("cpu", dtype)
]


def _lbfgs_params(dtype: torch.dtype, complex_too: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in [(4, 3), (3,)]]
    if complex_too:
        params.append(torch.randn(2, generator=g, dtype=torch.complex128).requires_grad_())
    return params


def _lbfgs_loss(params: list[torch.Tensor], t: int) -> torch.Tensor:
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(t), dtype=params[0].dtype)
    out = torch.tanh(x @ params[0] + params[1]).sum(1)
    loss = ((out - 0.5) ** 2).mean()
    if len(params) > 2:  # a complex parameter: |z - (1 + 1j)|^2
        loss = loss + (params[2] - (1 + 1j)).abs().pow(2).sum().to(loss.dtype)
    return loss


def _lbfgs_run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> list:
    trajectory = []
    for t in steps:

        def closure(t: int = t) -> torch.Tensor:
            opt.zero_grad()
            loss = _lbfgs_loss(params, t)
            loss.backward()
            return loss

        opt.step(closure)
        trajectory.append([p.detach().clone() for p in params])
    return trajectory


def _lbfgs_pair(kwargs: dict[str, Any], dtype: torch.dtype, complex_too: bool = False):
    a, b = _lbfgs_params(dtype, complex_too), _lbfgs_params(dtype, complex_too)
    return (ours("LBFGS", a, **kwargs), a), (theirs("LBFGS", b, **kwargs), b)


@pytest.mark.parametrize("case", LBFGS_CASES, ids=[f"{d}-{str(t)[6:]}" for d, _, t in LBFGS_CASES])
def test_lbfgs_step_with_closure_equals_torch_bit_for_bit(case):
    _, kwargs, dtype = case
    (opt, params), (ref, ref_params) = _lbfgs_pair({"max_iter": 6, **kwargs}, dtype)
    ours_run, torch_run = _lbfgs_run(opt, params, range(5)), _lbfgs_run(ref, ref_params, range(5))
    for a, b in zip(ours_run, torch_run):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert opt.state[params[0]]["func_evals"] == ref.state[ref_params[0]]["func_evals"]


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_on_complex_parameters_follows_torch(line_search_fn):
    kwargs = {"line_search_fn": line_search_fn, "max_iter": 5}
    (opt, params), (ref, ref_params) = _lbfgs_pair(kwargs, torch.float64, complex_too=True)
    for a, b in zip(_lbfgs_run(opt, params, range(4)), _lbfgs_run(ref, ref_params, range(4))):
        for x, y in zip(a, b):
            assert torch.equal(x, y)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_checkpoints_move_both_ways_mid_run(line_search_fn):
    kwargs = {"line_search_fn": line_search_fn, "history_size": 3, "max_iter": 4}
    (opt, params), (ref, ref_params) = _lbfgs_pair(kwargs, torch.float64)
    _lbfgs_run(opt, params, range(3))
    _lbfgs_run(ref, ref_params, range(3))
    ours_sd, torch_sd = _roundtrip(opt.state_dict()), _roundtrip(ref.state_dict())
    assert_same_state_dict(ours_sd, torch_sd)
    at_checkpoint = [p.detach().clone() for p in params]
    expected = _lbfgs_run(ref, ref_params, range(3, 6))
    for make, checkpoint in ((ours, torch_sd), (theirs, ours_sd)):
        moved = [p.clone().requires_grad_() for p in at_checkpoint]
        other = make("LBFGS", moved, **kwargs)
        other.load_state_dict(checkpoint)
        for a, b in zip(_lbfgs_run(other, moved, range(3, 6)), expected):
            for x, y in zip(a, b):
                assert torch.equal(x, y)


def test_lbfgs_needs_a_closure_and_one_group():
    params = _lbfgs_params(torch.float64)
    opt = ours("LBFGS", params)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="parameter groups"):
        ours("LBFGS", [{"params": params[:1]}, {"params": params[1:]}])
    with pytest.raises(TypeError, match="closure-driven"):
        tx = tf.from_torch("LBFGS")
        tx.update({"w": torch.ones(1)}, tx.init({"w": torch.ones(1)}))
