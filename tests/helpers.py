"""The test zoo: problems, THE optimizer and transform tables, and drivers shared by the batteries.

Every generic test (the common battery, compile, vmap, the torch.optim adapter, ...) is
parametrised over `OPTIMIZERS` or `TRANSFORMS`, so a new optimizer or transform is tested
everywhere by adding one row::

    @pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
    def test_something(case):
        tx = make_tx(case)
        params, state = run_case(case, QUADRATIC, steps=10)

Problems give parameters in any floating dtype, a loss and its gradient (analytic where the
problem is shared with the optax goldens or simple enough, autograd otherwise).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import torchopt_fn as tf
from torchopt_fn.tree import _flatten

Params = Any
GOLDENS_PATH = Path(__file__).parent / "goldens" / "optax_goldens.json"


# --------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """An objective over a pytree of parameters.

    Attributes:
        name: used in test ids.
        init_params: the starting point, built in the requested floating dtype.
        loss: the objective, a 0-d tensor.
        analytic_grad: the gradient in closed form, or `None` to differentiate ``loss`` with
            autograd.
    """

    name: str
    init_params: Callable[[torch.dtype], Params]
    loss: Callable[[Params], torch.Tensor]
    analytic_grad: Callable[[Params], Params] | None = None

    def grad(self, params: Params) -> Params:
        """The gradient of ``loss`` at ``params`` (same structure and dtypes)."""
        if self.analytic_grad is not None:
            return self.analytic_grad(params)
        # Plain autograd: torch.func.grad's first call costs seconds of imports.
        leaves = [p.detach().requires_grad_() for p in tf.tree_leaves(params)]
        with torch.enable_grad():
            loss = self.loss(_flatten.tree_unflatten(_flatten.tree_structure(params), leaves))
        return _flatten.tree_unflatten(
            _flatten.tree_structure(params), torch.autograd.grad(loss, leaves)
        )

    def __str__(self) -> str:
        return self.name


# A separable quadratic 0.5 * sum(a * (x - c)**2) with curvatures a in [0.5, 2] and an
# optimum away from 0 (trust-ratio and Fromage steps scale with the parameters' norm).
_QUAD_A = {"w": torch.linspace(0.5, 2.0, 6).reshape(3, 2), "b": torch.tensor([2.0, 1.0, 0.5])}
_QUAD_C = {"w": torch.linspace(-1.0, 1.0, 6).reshape(3, 2), "b": torch.tensor([0.5, -1.0, 1.5])}


def _quadratic_init(dtype: torch.dtype) -> Params:
    return {
        "w": torch.full((3, 2), 1.5, dtype=dtype),
        "b": torch.tensor([-1.0, 0.5, 2.5], dtype=dtype),
    }


def _quadratic_loss(params: Params) -> torch.Tensor:
    return sum(
        0.5 * (_QUAD_A[k].to(p.dtype) * (p - _QUAD_C[k].to(p.dtype)) ** 2).sum()
        for k, p in params.items()
    )


def _quadratic_grad(params: Params) -> Params:
    return {k: _QUAD_A[k].to(p.dtype) * (p - _QUAD_C[k].to(p.dtype)) for k, p in params.items()}


QUADRATIC = Problem("quadratic", _quadratic_init, _quadratic_loss, _quadratic_grad)


def _rosenbrock_init(dtype: torch.dtype) -> Params:
    return {"x": torch.tensor([-1.2, 1.0], dtype=dtype)}


def _rosenbrock_loss(params: Params) -> torch.Tensor:
    x, y = params["x"][0], params["x"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rosenbrock_grad(params: Params) -> Params:
    x, y = params["x"][0], params["x"][1]
    return {"x": torch.stack([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])}


ROSENBROCK = Problem("rosenbrock", _rosenbrock_init, _rosenbrock_loss, _rosenbrock_grad)
"""The 2-d Rosenbrock valley from the classic start (-1.2, 1); minimum 0 at (1, 1)."""


def golden_params(dtype: torch.dtype = torch.float64) -> Params:
    """The starting point of the optax goldens."""
    return {
        "w": torch.linspace(-1.0, 1.0, 12, dtype=dtype).reshape(4, 3),
        "b": torch.tensor([0.5, -0.3, 0.1], dtype=dtype),
    }


def golden_loss(params: Params) -> torch.Tensor:
    """The goldens' objective (a quartic in ``w``, coupled to ``b``)."""
    w, b = params["w"], params["b"]
    return (
        (w**4 / 4 - 0.25 * w**2 + 0.1 * torch.sin(w)).sum()
        + (b**2 - b - 0.1 * torch.cos(b)).sum()
        + 0.05 * w.sum() * b.sum()
        + 2.0
    )


def golden_grad(params: Params) -> Params:
    """The goldens' analytic gradient (exactly the formula optax was run with)."""
    w, b = params["w"], params["b"]
    return {
        "w": w**3 - 0.5 * w + 0.1 * torch.cos(w) + 0.05 * b.sum(),
        "b": 2 * b - 1 + 0.1 * torch.sin(b) + 0.05 * w.sum(),
    }


GOLDEN = Problem("golden", golden_params, golden_loss, golden_grad)
"""The problem the optax goldens were generated on (tests/goldens/optax_goldens.json)."""

_MLP_GEN = torch.Generator().manual_seed(0)
_MLP_X = torch.randn(32, 2, generator=_MLP_GEN, dtype=torch.float64)
_MLP_Y = torch.sin(_MLP_X[:, :1]) + 0.5 * _MLP_X[:, 1:] ** 2
_MLP_INIT = {
    "hidden": {
        "weight": 0.5 * torch.randn(8, 2, generator=_MLP_GEN, dtype=torch.float64),
        "bias": 0.1 * torch.randn(8, generator=_MLP_GEN, dtype=torch.float64),
    },
    "out": {
        "weight": 0.5 * torch.randn(1, 8, generator=_MLP_GEN, dtype=torch.float64),
        "bias": torch.zeros(1, dtype=torch.float64),
    },
}


def _mlp_init(dtype: torch.dtype) -> Params:
    return tf.tree_map(lambda p: p.to(dtype), _MLP_INIT)


def _mlp_loss(params: Params) -> torch.Tensor:
    dtype = params["out"]["bias"].dtype
    x, y = _MLP_X.to(dtype), _MLP_Y.to(dtype)
    h = torch.tanh(x @ params["hidden"]["weight"].T + params["hidden"]["bias"])
    return ((h @ params["out"]["weight"].T + params["out"]["bias"] - y) ** 2).mean()


MLP = Problem("mlp", _mlp_init, _mlp_loss)
"""A 2-8-1 tanh network fitted to 32 fixed points: nested dict params, weights and biases."""

PROBLEMS = [QUADRATIC, ROSENBROCK, GOLDEN, MLP]


# --------------------------------------------------------------------------- the optimizer table


@dataclass(frozen=True)
class OptCase:
    """One row of the optimizer table: an optimizer, its arguments, and what to expect of it.

    Attributes:
        id: the test id, ``<optimizer>`` or ``<optimizer>_<variant>``.
        factory: the public optimizer function, e.g. ``tf.adam``.
        kwargs: the arguments for ``factory``.
        quad_steps, quad_tol: after ``quad_steps`` float64 steps on `QUADRATIC`, the loss
            must be below ``quad_tol`` (its minimum is 0, the start 10.7).
        rosen_overrides: replace some ``kwargs`` on `ROSENBROCK`, whose curvature (~1e3 at the
            start) needs smaller steps than the quadratic's.
        rosen_steps, rosen_tol: as ``quad_*``, on `ROSENBROCK` (start 24.2, minimum 0).
        needs_value: ``update`` needs ``value=loss`` (Polyak step sizes).
        reduces: the update reduces over whole tensors or the whole tree (trust ratios,
            per-tensor or global norms, factored moments), so sharded runs must communicate.
        invalid: argument overrides that must make ``factory`` raise `ValueError`.
    """

    id: str
    factory: Callable[..., tf.GradientTransformation]
    kwargs: dict[str, Any] = field(default_factory=dict)
    quad_steps: int = 200
    quad_tol: float = 1e-4
    rosen_overrides: dict[str, Any] = field(default_factory=dict)
    rosen_steps: int = 500
    rosen_tol: float = 0.5
    needs_value: bool = False
    reduces: bool = False
    invalid: tuple[dict[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The optimizer's public name."""
        return self.factory.__name__

    def __str__(self) -> str:
        return self.id


_NEG_LR = {"learning_rate": -0.1}


def _matrices(params: Params) -> Params:
    """A weight-decay mask selecting matrices (not biases), as commonly used."""
    return tf.tree_map(lambda p: p.ndim > 1, params)


_ADAM_INVALID = (_NEG_LR, {"b1": 1.0}, {"b1": -0.1}, {"b2": 1.0}, {"eps": -1e-8})
# Adamax's infinity norm may keep every past gradient (b2 = 1).
_ADAMAX_INVALID = (_NEG_LR, {"b1": 1.0}, {"b2": 1.5}, {"eps": -1e-8})

OPTIMIZERS: list[OptCase] = [
    OptCase(
        "sgd",
        tf.sgd,
        {"learning_rate": 0.5},
        quad_steps=100,
        rosen_overrides={"learning_rate": 1e-3},
        rosen_steps=1000,
        rosen_tol=1.0,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "sgd_momentum",
        tf.sgd,
        {"learning_rate": 0.1, "momentum": 0.9},
        rosen_overrides={"learning_rate": 1e-3},
        rosen_steps=300,
        rosen_tol=0.1,
        invalid=(_NEG_LR, {"momentum": -0.5}, {"momentum": 1.5}),
    ),
    OptCase(
        "sgd_nesterov_schedule",
        tf.sgd,
        {
            "learning_rate": tf.exponential_decay(0.2, transition_steps=50, decay_rate=0.5),
            "momentum": 0.9,
            "nesterov": True,
        },
        quad_steps=100,
        rosen_overrides={"learning_rate": tf.exponential_decay(1e-3, 500, 0.5)},
        rosen_steps=300,
        rosen_tol=0.2,
    ),
    OptCase("adam", tf.adam, {"learning_rate": 0.05}, invalid=_ADAM_INVALID),
    OptCase("adam_nesterov", tf.adam, {"learning_rate": 0.05, "nesterov": True}),
    OptCase(
        "adamw",
        tf.adamw,
        {"learning_rate": 0.05, "weight_decay": 1e-4},
        invalid=_ADAM_INVALID,
    ),
    OptCase(
        "adamw_masked_schedule",
        tf.adamw,
        {
            "learning_rate": tf.warmup_cosine_decay_schedule(0.0, 0.1, 10, 400, 1e-3),
            "weight_decay": 1e-3,
            "mask": _matrices,
        },
        quad_tol=1e-3,
        rosen_overrides={"learning_rate": 0.05},
    ),
    OptCase("nadam", tf.nadam, {"learning_rate": 0.05}, invalid=_ADAM_INVALID),
    OptCase("nadamw", tf.nadamw, {"learning_rate": 0.05}, invalid=_ADAM_INVALID),
    OptCase(
        "amsgrad",
        tf.amsgrad,
        {"learning_rate": 0.05},
        quad_steps=300,
        rosen_overrides={"learning_rate": 0.2},
        rosen_steps=1000,
        invalid=_ADAM_INVALID,
    ),
    OptCase(
        "adamax",
        tf.adamax,
        {"learning_rate": 0.05},
        quad_steps=300,
        rosen_overrides={"learning_rate": 0.3},
        invalid=_ADAMAX_INVALID,
    ),
    OptCase(
        "adamaxw",
        tf.adamaxw,
        {"learning_rate": 0.05},
        quad_steps=300,
        rosen_overrides={"learning_rate": 0.3},
        invalid=_ADAMAX_INVALID,
    ),
    OptCase(
        "radam",
        tf.radam,
        {"learning_rate": 0.1},
        quad_steps=300,
        # RAdam starts with plain momentum-SGD steps: keep those small on Rosenbrock.
        rosen_overrides={"learning_rate": tf.piecewise_constant_schedule(1e-3, {6: 100.0})},
        rosen_tol=1.0,
        invalid=_ADAM_INVALID,
    ),
    OptCase(
        "radam_nesterov",
        tf.radam,
        {"learning_rate": 0.1, "nesterov": True},
        quad_steps=300,
        rosen_overrides={"learning_rate": tf.piecewise_constant_schedule(1e-3, {6: 100.0})},
        rosen_tol=1.0,
    ),
    OptCase("adabelief", tf.adabelief, {"learning_rate": 0.05}, invalid=_ADAM_INVALID),
    OptCase("adabelief_nesterov", tf.adabelief, {"learning_rate": 0.05, "nesterov": True}),
    OptCase("yogi", tf.yogi, {"learning_rate": 0.05}, invalid=_ADAM_INVALID),
    OptCase(
        "lion",
        tf.lion,
        {"learning_rate": tf.cosine_decay_schedule(0.05, 300), "weight_decay": 0.0},
        quad_steps=300,
        rosen_steps=300,
        rosen_tol=0.2,
        invalid=({"learning_rate": -0.1}, {"b1": 1.5}, {"b2": -0.1}),
    ),
    OptCase(
        "lamb",
        tf.lamb,
        {"learning_rate": tf.cosine_decay_schedule(0.05, 300)},
        quad_steps=300,
        # Trust-ratio steps shrink with the parameters' norm, which crosses 0 on Rosenbrock.
        rosen_overrides={"learning_rate": 0.05},
        reduces=True,
        invalid=_ADAM_INVALID,
    ),
    OptCase(
        "lars",
        tf.lars,
        {"learning_rate": tf.cosine_decay_schedule(5.0, 300), "trust_coefficient": 0.01},
        quad_steps=300,
        rosen_steps=200,
        reduces=True,
        invalid=(_NEG_LR, {"momentum": 1.5}),
    ),
    OptCase(
        "lars_masked",
        tf.lars,
        {
            "learning_rate": 0.1,
            "weight_decay": 1e-4,
            "weight_decay_mask": _matrices,
            "trust_coefficient": 0.1,
            "trust_ratio_mask": _matrices,
            "nesterov": True,
        },
        quad_steps=300,
        quad_tol=1e-3,
        # Rosenbrock's only parameter is a vector, so it is masked out: plain momentum SGD.
        rosen_overrides={"learning_rate": 1e-3},
        rosen_steps=300,
        rosen_tol=0.2,
        reduces=True,
    ),
    OptCase(
        "novograd",
        tf.novograd,
        {"learning_rate": tf.linear_schedule(0.05, 0.0, 300)},
        quad_steps=300,
        rosen_steps=200,
        reduces=True,
        invalid=(_NEG_LR, {"b1": 1.5}, {"b2": -0.1}, {"eps": -1.0}),
    ),
    OptCase(
        "rmsprop",
        tf.rmsprop,
        {"learning_rate": 0.03},
        rosen_steps=300,
        rosen_tol=1.0,
        invalid=(_NEG_LR, {"decay": 1.5}, {"eps": -1.0}, {"momentum": 1.5}),
    ),
    OptCase(
        "rmsprop_centered_momentum",
        tf.rmsprop,
        {"learning_rate": 0.01, "centered": True, "momentum": 0.9, "eps_in_sqrt": False},
        quad_steps=100,
        rosen_steps=250,
        rosen_tol=0.1,
    ),
    OptCase(
        "adagrad",
        tf.adagrad,
        {"learning_rate": 0.5},
        quad_steps=100,
        rosen_overrides={"learning_rate": 1.0},
        invalid=(_NEG_LR, {"eps": -1.0}, {"initial_accumulator_value": -1.0}),
    ),
    OptCase(
        "adadelta",
        tf.adadelta,
        {"learning_rate": 10.0},
        rosen_overrides={"learning_rate": 3.0},
        rosen_steps=300,
        rosen_tol=2.0,
        invalid=(_NEG_LR, {"rho": 1.5}, {"eps": -1.0}),
    ),
    OptCase(
        "adadelta_no_lr_wd",
        tf.adadelta,
        {"weight_decay": 1e-4},
        # Adadelta with a unit learning rate is slow: check steady descent, not convergence.
        quad_steps=400,
        quad_tol=1.0,
        rosen_tol=1.0,
    ),
    OptCase(
        "adafactor",
        tf.adafactor,
        {"learning_rate": 0.05, "min_dim_size_to_factor": 2},
        # Rosenbrock starts at zero, where parameter-scaled steps are 1e-3 * lr.
        rosen_overrides={"multiply_by_parameter_scale": False},
        reduces=True,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "adafactor_momentum",
        tf.adafactor,
        {
            "learning_rate": 0.05,
            "min_dim_size_to_factor": 2,
            "momentum": 0.9,
            "multiply_by_parameter_scale": False,
            "weight_decay_rate": 1e-4,
        },
        quad_tol=1e-3,
        rosen_steps=250,
        reduces=True,
    ),
    OptCase(
        "sm3",
        tf.sm3,
        {"learning_rate": 0.5},
        rosen_overrides={"learning_rate": 1.0},
        reduces=True,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "fromage",
        tf.fromage,
        {"learning_rate": 0.01},
        quad_steps=300,
        quad_tol=1e-3,
        rosen_overrides={"learning_rate": 0.05},
        reduces=True,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "fromage_schedule",
        tf.fromage,
        {"learning_rate": tf.cosine_decay_schedule(0.05, 300)},
        quad_steps=300,
        quad_tol=1e-3,
        rosen_overrides={"learning_rate": 0.05},
        reduces=True,
    ),
    OptCase(
        "sign_sgd",
        tf.sign_sgd,
        {"learning_rate": tf.cosine_decay_schedule(0.05, 300)},
        quad_steps=300,
        rosen_overrides={"learning_rate": 3e-3},
        rosen_steps=1000,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "signum",
        tf.signum,
        {"learning_rate": 0.01},
        quad_steps=400,
        quad_tol=1e-3,
        rosen_steps=250,
        invalid=(_NEG_LR, {"beta": 1.5}),
    ),
    OptCase(
        "adan",
        tf.adan,
        {"learning_rate": 0.2},
        quad_steps=300,
        quad_tol=1e-2,
        rosen_overrides={"learning_rate": 0.05},
        rosen_tol=0.1,
        invalid=(_NEG_LR, {"b1": 1.0}, {"b3": -0.1}, {"eps": -1.0}),
    ),
    OptCase(
        "adan_wd_masked",
        tf.adan,
        {"learning_rate": 0.2, "weight_decay": 1e-4, "mask": _matrices},
        quad_steps=300,
        quad_tol=1e-2,
        rosen_overrides={"learning_rate": 0.05},
        rosen_tol=0.1,
    ),
    OptCase(
        "rprop",
        tf.rprop,
        {"learning_rate": 0.01},
        quad_steps=100,
        rosen_steps=250,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "noisy_sgd",
        tf.noisy_sgd,
        {"learning_rate": 0.1, "key": 0},
        quad_steps=100,
        quad_tol=1e-3,
        # Only a check of progress (from 24.2): the noise makes each step slow.
        rosen_overrides={"learning_rate": 1e-3},
        rosen_steps=200,
        rosen_tol=5.0,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "optimistic_gradient_descent",
        tf.optimistic_gradient_descent,
        {"learning_rate": 0.1},
        rosen_overrides={"learning_rate": 1e-3},
        rosen_steps=1000,
        invalid=(_NEG_LR,),
    ),
    OptCase(
        "polyak_sgd",
        tf.polyak_sgd,
        {"max_learning_rate": 1.0},
        quad_steps=50,
        quad_tol=1e-10,
        rosen_steps=250,
        rosen_tol=0.01,
        needs_value=True,
        reduces=True,
        invalid=({"max_learning_rate": -1.0}, {"variant": "nope"}),
    ),
    OptCase(
        "optimistic_adam_v2",
        tf.optimistic_adam_v2,
        {"learning_rate": 0.05},
        quad_steps=400,
        quad_tol=1e-3,
        rosen_overrides={"learning_rate": 0.02},
        rosen_steps=1000,
        invalid=(_NEG_LR,),
    ),
    OptCase(  # deprecated in optax 0.2.8 (it warns): alpha = the lr, a unit step
        "optimistic_adam",
        tf.optimistic_adam,
        {"learning_rate": 0.05},
        quad_steps=400,
        quad_tol=1e-3,
        rosen_overrides={"learning_rate": 0.02},
        rosen_steps=1000,
        invalid=({"learning_rate": tf.constant_schedule(0.1)},),
    ),
    OptCase(  # a fixed step; with its line search it needs value_fn (test_linesearch.py)
        "lbfgs_fixed_step",
        tf.lbfgs,
        {"learning_rate": 0.5, "linesearch": None, "memory_size": 5},
        quad_steps=60,
        quad_tol=1e-10,
        rosen_overrides={"learning_rate": 0.1},
        rosen_steps=300,
        reduces=True,
        invalid=({"memory_size": 0},),
    ),
]
"""THE optimizer table: every named optimizer at least once, plus option variants."""


def make_tx(case: OptCase, **overrides: Any) -> tf.GradientTransformation:
    """Build the case's optimizer (``overrides`` replace some of its arguments)."""
    return case.factory(**{**case.kwargs, **overrides})


def run_steps(
    tx: tf.GradientTransformation,
    params: Params,
    grads_fn: Callable[[Params], Params],
    n: int,
    value_fn: Callable[[Params], torch.Tensor] | None = None,
    state: Any = None,
) -> tuple[Params, Any]:
    """Take ``n`` steps of ``tx`` from ``params`` and return the final params and state.

    ``value_fn`` (when given) supplies ``update(..., value=value_fn(params))``; ``state``
    continues from an existing state instead of ``tx.init(params)``.
    """
    state = tx.init(params) if state is None else state
    for _ in range(n):
        extra = {} if value_fn is None else {"value": value_fn(params)}
        updates, state = tx.update(grads_fn(params), state, params, **extra)
        params = tf.apply_updates(params, updates)
    return params, state


def run_case(
    case: OptCase,
    problem: Problem,
    steps: int,
    dtype: torch.dtype = torch.float64,
    tx: tf.GradientTransformation | None = None,
) -> tuple[Params, Any]:
    """Run ``case`` (or the given ``tx``) on ``problem`` from its start, in ``dtype``."""
    tx = make_tx(case) if tx is None else tx
    value_fn = problem.loss if case.needs_value else None
    return run_steps(tx, problem.init_params(dtype), problem.grad, steps, value_fn)


# --------------------------------------------------------------------------- optax goldens


def load_goldens() -> dict[str, Any]:
    """The optax goldens (see tests/goldens/make_optax_goldens.py for the format)."""
    return json.loads(GOLDENS_PATH.read_text())


def decode_golden_kwargs(value: Any, key: str = "") -> Any:
    """Turn a goldens JSON argument into what our functions take (schedules become callables)."""
    if isinstance(value, dict) and "schedule" in value:
        return getattr(tf, value["schedule"])(**decode_golden_kwargs(value["kwargs"]))
    if key == "boundaries_and_scales":
        return {int(k): v for k, v in value.items()}
    if isinstance(value, dict):
        return {k: decode_golden_kwargs(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_golden_kwargs(v) for v in value]
    return value


def all_finite(tree: Any) -> bool:
    """Whether every tensor leaf of ``tree`` is finite."""
    return all(
        bool(torch.isfinite(x).all()) for x in tf.tree_leaves(tree) if isinstance(x, torch.Tensor)
    )


# --------------------------------------------------------------------------- comparing trees


def assert_trees_close(
    actual: Any, expected: Any, rtol: float = 1e-12, atol: float = 1e-14
) -> None:
    """Same structure (container types, keys, `None` leaves), same dtypes and shapes, close values.

    Non-tensor leaves must be equal.
    """
    a_leaves, a_spec = _flatten.tree_flatten(actual)
    e_leaves, e_spec = _flatten.tree_flatten(expected)
    assert a_spec == e_spec, f"structures differ:\n{a_spec}\n{e_spec}"
    paths = [_flatten.path_str(p) for p in _flatten.leaf_paths(expected)]
    for path, a, e in zip(paths, a_leaves, e_leaves):
        if isinstance(e, torch.Tensor):
            assert isinstance(a, torch.Tensor), f"{path}: {type(a)} is not a tensor"
            assert a.dtype == e.dtype and a.shape == e.shape, (
                f"{path}: {a.dtype}{tuple(a.shape)} vs {e.dtype}{tuple(e.shape)}"
            )
            torch.testing.assert_close(
                a, e, rtol=rtol, atol=atol, msg=lambda m, path=path: f"{path}: {m}"
            )
        else:
            assert a == e, f"{path}: {a!r} != {e!r}"


# --------------------------------------------------------------------------- the transform table


@dataclass(frozen=True)
class TxCase:
    """One row of the transform table: a public transformation and how to call it.

    Attributes:
        id: the test id.
        make: builds the transformation (a lambda, so that each test gets a fresh one).
        needs_params: ``update`` needs ``params``.
        needs_value: ``update`` needs ``value=loss``.
        exact: the result is exactly the same on views as on contiguous copies (False where
            a reduction's order of summation may change in the last ulp).
        touches_first_leaf: it reads the first leaf in flattening order ("conv"), where the
            bad-input tests put their broadcastable gradient (Muon's mask skips it).
    """

    id: str
    make: Callable[[], tf.GradientTransformation]
    needs_params: bool = False
    needs_value: bool = False
    exact: bool = True
    touches_first_leaf: bool = True

    def __str__(self) -> str:
        return self.id


def _first(params: Params) -> Params:
    """A mask/label tree: the first leaf (in flattening order) vs the rest."""
    leaves, spec = _flatten.tree_flatten(params)
    return _flatten.tree_unflatten(spec, [i == 0 for i in range(len(leaves))])


def _matrices(params: Params) -> Params:
    """A mask of the 2-D leaves (Muon's)."""
    return tf.tree_map(lambda p: p.dim() == 2, params)


def _sophia_objective(params: Params) -> torch.Tensor:
    """A smooth objective of any params tree whose Hessian couples every leaf."""
    leaves = [x for x in tf.tree_leaves(params) if x is not None]
    return sum((x**4).sum() / 4 for x in leaves) + 0.1 * sum(x.sum() for x in leaves) ** 2


def _with_obj_fn(tx: tf.GradientTransformation) -> tf.GradientTransformation:
    """``tx`` given ``obj_fn=_sophia_objective`` on every update (the table passes none)."""
    return tf.GradientTransformation(
        tx.init, lambda u, s, p=None, **k: tx.update(u, s, p, obj_fn=_sophia_objective, **k)
    )


def _sin_grad_fn(params: Params, i: int) -> Params:
    return tf.tree_map(torch.sin, params)


def _sam_opaque() -> tf.GradientTransformation:
    """Opaque SAM, its gradient function given on every update."""
    tx = tf.contrib.sam(
        tf.adam(0.1), tf.chain(tf.contrib.normalize(), tf.sgd(0.05)), 3, opaque_mode=True
    )
    return tf.GradientTransformation(tx.init, functools.partial(tx.update, grad_fn=_sin_grad_fn))


def _per_example() -> tf.GradientTransformation:
    """Three per-example gradients from one (DP needs a leading batch axis); one is clipped."""
    return tf.stateless(lambda u, p: tf.tree_map(lambda g: torch.stack([g, -2 * g, 0.1 * g]), u))


def _galore_dims(params: Params) -> Params:
    """GaLore's matrix axes: a conv kernel as (out, in*kh*kw), a matrix as itself."""

    def dims(p: torch.Tensor) -> Any:
        if p.dim() == 4:
            return tf.contrib.GaLoreDimensionNumbers(0, (1, 2, 3))
        return tf.contrib.GaLoreDimensionNumbers() if p.dim() == 2 else None

    return tf.tree_map(dims, params)


TRANSFORMS: list[TxCase] = [
    # scaling
    TxCase("scale", lambda: tf.scale(-0.3)),
    TxCase("scale_by_learning_rate", lambda: tf.scale_by_learning_rate(0.1)),
    TxCase(
        "scale_by_learning_rate_schedule",
        lambda: tf.scale_by_learning_rate(tf.cosine_decay_schedule(0.1, 10)),
    ),
    TxCase("scale_by_schedule", lambda: tf.scale_by_schedule(tf.linear_schedule(1.0, 0.5, 5))),
    TxCase("scale_by_polyak", lambda: tf.scale_by_polyak(), needs_value=True, exact=False),
    TxCase("normalize_by_update_norm", lambda: tf.normalize_by_update_norm(0.5), exact=False),
    # accumulation
    TxCase("trace", lambda: tf.trace(0.9)),
    TxCase("trace_nesterov", lambda: tf.momentum(0.9, nesterov=True)),
    TxCase("ema", lambda: tf.ema(0.8)),
    TxCase("scale_by_optimistic_gradient", lambda: tf.scale_by_optimistic_gradient()),
    # adam family
    TxCase("scale_by_adam", lambda: tf.scale_by_adam()),
    TxCase(
        "scale_by_adam_nesterov_eps_root", lambda: tf.scale_by_adam(eps_root=1e-8, nesterov=True)
    ),
    TxCase("scale_by_amsgrad", lambda: tf.scale_by_amsgrad()),
    TxCase("scale_by_adamax", lambda: tf.scale_by_adamax()),
    TxCase("scale_by_radam", lambda: tf.scale_by_radam(threshold=4.0)),
    TxCase("scale_by_belief", lambda: tf.scale_by_belief()),
    TxCase("scale_by_yogi", lambda: tf.scale_by_yogi()),
    TxCase("scale_by_adan", lambda: tf.scale_by_adan()),
    # rms family
    TxCase("scale_by_rms", lambda: tf.scale_by_rms()),
    TxCase("scale_by_rms_debiased", lambda: tf.scale_by_rms(bias_correction=True)),
    TxCase("scale_by_stddev", lambda: tf.scale_by_stddev(eps_in_sqrt=False)),
    TxCase("scale_by_rss", lambda: tf.scale_by_rss()),
    TxCase("scale_by_adadelta", lambda: tf.scale_by_adadelta()),
    # sign
    TxCase("scale_by_sign", lambda: tf.scale_by_sign()),
    TxCase("scale_by_lion", lambda: tf.scale_by_lion()),
    TxCase("scale_by_rprop", lambda: tf.scale_by_rprop(0.01)),
    # layer-wise
    TxCase(
        "scale_by_trust_ratio", lambda: tf.scale_by_trust_ratio(), needs_params=True, exact=False
    ),
    TxCase(
        "scale_by_novograd",
        lambda: tf.scale_by_novograd(weight_decay=1e-3),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "scale_by_param_block_rms",
        lambda: tf.scale_by_param_block_rms(),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "scale_by_param_block_norm",
        lambda: tf.scale_by_param_block_norm(),
        needs_params=True,
        exact=False,
    ),
    TxCase("centralize", lambda: tf.centralize(), exact=False),
    # factored
    TxCase(
        "scale_by_factored_rms",
        lambda: tf.scale_by_factored_rms(min_dim_size_to_factor=2),
        exact=False,
    ),
    TxCase("scale_by_sm3", lambda: tf.scale_by_sm3()),
    # adding
    TxCase("add_decayed_weights", lambda: tf.add_decayed_weights(0.1), needs_params=True),
    TxCase(
        "add_decoupled_weight_decay_masked_schedule",
        lambda: tf.add_decoupled_weight_decay(tf.linear_schedule(0.1, 0.0, 5), mask=_first),
        needs_params=True,
    ),
    TxCase("add_noise", lambda: tf.add_noise(0.01, 0.55, key=3)),
    # clipping
    TxCase("clip", lambda: tf.clip(0.5)),
    TxCase("clip_by_global_norm", lambda: tf.clip_by_global_norm(0.5), exact=False),
    TxCase(
        "clip_by_torch_global_norm",
        lambda: tf.clip_by_torch_global_norm(0.5, norm_type=3.0),
        exact=False,
    ),
    TxCase("clip_by_block_rms", lambda: tf.clip_by_block_rms(0.5), exact=False),
    TxCase(
        "adaptive_grad_clip", lambda: tf.adaptive_grad_clip(0.05), needs_params=True, exact=False
    ),
    # constraining
    TxCase("keep_params_nonnegative", lambda: tf.keep_params_nonnegative(), needs_params=True),
    TxCase("zero_nans", lambda: tf.zero_nans()),
    # torch parity
    TxCase("scale_by_torch_momentum", lambda: tf.scale_by_torch_momentum(0.9, dampening=0.1)),
    TxCase("scale_by_torch_amsgrad", lambda: tf.scale_by_torch_amsgrad()),
    TxCase("scale_by_torch_nadam", lambda: tf.scale_by_torch_nadam()),
    TxCase("scale_by_torch_radam", lambda: tf.scale_by_torch_radam(threshold=4.0)),
    TxCase("scale_by_torch_adagrad", lambda: tf.scale_by_torch_adagrad(lr_decay=0.01)),
    TxCase("scale_by_torch_rprop", lambda: tf.scale_by_torch_rprop(0.01)),
    TxCase("scale_by_torch_asgd", lambda: tf.scale_by_torch_asgd(0.05, t0=1.0), needs_params=True),
    TxCase(
        "scale_by_torch_adafactor",
        lambda: tf.scale_by_torch_adafactor(0.01, weight_decay=0.1),
        needs_params=True,
        exact=False,
    ),
    TxCase(  # matrices only: the table's other leaves pass by; float64 iterations, so that
        # batched (vmap) and compiled matmuls agree with the loop to 1e-12 (bfloat16's don't)
        "scale_by_torch_muon",
        lambda: tf.masked(tf.scale_by_torch_muon(0.01, ns_dtype=torch.float64), _matrices),
        needs_params=True,
        exact=False,
        touches_first_leaf=False,
    ),
    # core: stateless builders and combinators
    TxCase("identity", lambda: tf.identity()),
    TxCase("set_to_zero", lambda: tf.set_to_zero()),
    TxCase("stateless", lambda: tf.stateless(lambda u, p: tf.tree_scale(2.0, u))),
    TxCase(
        "stateless_with_tree_map",
        lambda: tf.stateless_with_tree_map(lambda u, p: u * p),
        needs_params=True,
    ),
    TxCase("with_extra_args_support", lambda: tf.with_extra_args_support(tf.trace(0.5))),
    TxCase(
        "chain",
        lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.scale_by_adam(), tf.scale(-0.1)),
        exact=False,
    ),
    TxCase("named_chain", lambda: tf.named_chain(("m", tf.trace(0.5)), ("s", tf.scale(-1.0)))),
    TxCase("masked", lambda: tf.masked(tf.scale_by_adam(), _first)),
    TxCase(
        "partition",
        lambda: tf.partition({True: tf.scale_by_adam(), False: tf.trace(0.5)}, _first),
    ),
    TxCase("inject_hyperparams", lambda: tf.inject_hyperparams(tf.adam)(learning_rate=0.1)),
    TxCase(
        "scale_by_lbfgs", lambda: tf.scale_by_lbfgs(memory_size=3), needs_params=True, exact=False
    ),
    TxCase(
        "quantized_state",
        lambda: tf.quantized_state(tf.adamw(0.1, weight_decay=0.1), min_size=4, block_size=16),
        needs_params=True,
        exact=False,
    ),
    TxCase("freeze", lambda: tf.chain(tf.scale_by_adam(), tf.freeze(_first))),
    # contrib
    TxCase("contrib.scale_by_adopt", lambda: tf.contrib.scale_by_adopt(), exact=False),
    TxCase("contrib.scale_by_ademamix", lambda: tf.contrib.scale_by_ademamix(), exact=False),
    TxCase("contrib.madgrad", lambda: tf.contrib.madgrad(0.05), needs_params=True, exact=False),
    TxCase("contrib.cocob", lambda: tf.contrib.cocob(), needs_params=True, exact=False),
    TxCase("contrib.dog", lambda: tf.contrib.dog(), needs_params=True, exact=False),
    TxCase("contrib.prodigy", lambda: tf.contrib.prodigy(), needs_params=True, exact=False),
    TxCase("contrib.dowg", lambda: tf.contrib.dowg(), needs_params=True, exact=False),
    TxCase(
        "contrib.schedule_free_adamw",
        lambda: tf.contrib.schedule_free_adamw(0.1, weight_decay=0.1),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.scale_by_simplified_ademamix",
        lambda: tf.contrib.scale_by_simplified_ademamix(alpha=1.0),
        exact=False,
    ),
    TxCase(
        "contrib.muon",
        lambda: tf.contrib.muon(0.02, weight_decay=0.1),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.scale_by_muon",
        lambda: tf.masked(
            tf.contrib.scale_by_muon(adaptive=True, preconditioning="aol"), _matrices
        ),
        exact=False,
        touches_first_leaf=False,
    ),
    TxCase(
        "contrib.sophia",
        lambda: _with_obj_fn(tf.contrib.sophia(0.1, update_interval=2)),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.sophia_injected_diag",
        lambda: tf.contrib.sophia(
            0.1, hessian_diagonal_fn=tf.stateless_with_tree_map(lambda g, p: g * g)
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.hutchinson_estimator_diag_hessian",
        lambda: _with_obj_fn(tf.contrib.hutchinson_estimator_diag_hessian(3)),
        needs_params=True,
        exact=False,
    ),
    TxCase("contrib.normalize", lambda: tf.contrib.normalize(), exact=False),
    TxCase(
        "contrib.sam",
        lambda: tf.contrib.sam(
            tf.sgd(0.1, momentum=0.9), tf.chain(tf.contrib.normalize(), tf.adam(0.05))
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.sam_period3_no_reset",
        lambda: tf.contrib.sam(
            tf.adam(0.1), tf.chain(tf.contrib.normalize(), tf.adam(0.05)), 3, reset_state=False
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase("contrib.sam_opaque", lambda: _sam_opaque(), needs_params=True, exact=False),
    TxCase(
        "contrib.mechanize",
        lambda: tf.contrib.mechanize(tf.adam(0.1)),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.momo",
        lambda: tf.contrib.momo(weight_decay=0.1, adapt_lower_bound=True),
        needs_params=True,
        needs_value=True,
        exact=False,
    ),
    TxCase(
        "contrib.momo_adam",
        lambda: tf.contrib.momo_adam(weight_decay=0.1, adapt_lower_bound=True),
        needs_params=True,
        needs_value=True,
        exact=False,
    ),
    TxCase(
        "contrib.dadapt_adamw",
        lambda: tf.contrib.dadapt_adamw(weight_decay=0.1),
        needs_params=True,
        exact=False,
    ),
    TxCase("contrib.acprop", lambda: tf.contrib.acprop(0.1, weight_decay=0.1)),
    TxCase("contrib.scale_by_acprop", lambda: tf.contrib.scale_by_acprop()),
    TxCase(
        "contrib.reduce_on_plateau",
        lambda: tf.chain(tf.scale_by_adam(), tf.contrib.reduce_on_plateau(patience=1, cooldown=1)),
        needs_value=True,
    ),
    TxCase(
        "contrib.reduce_on_plateau_accumulate",
        lambda: tf.contrib.reduce_on_plateau(factor=0.5, patience=1, accumulation_size=2),
        needs_value=True,
    ),
    TxCase(
        "contrib.differentially_private_aggregate",
        lambda: tf.chain(
            _per_example(), tf.contrib.differentially_private_aggregate(1.0, 0.5, key=0)
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.dpsgd",
        lambda: tf.chain(
            _per_example(), tf.contrib.dpsgd(0.1, 1.0, 0.5, seed=0, momentum=0.9, nesterov=True)
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.split_real_and_imaginary",
        lambda: tf.contrib.split_real_and_imaginary(tf.adamw(0.1, weight_decay=0.1)),
        needs_params=True,
        exact=False,
    ),
    # Adam's eps: in float16 the second moment of small projected entries underflows to 0.
    TxCase(
        "contrib.scale_by_galore",
        lambda: tf.contrib.scale_by_galore(
            rank=2, update_proj_gap=2, base_optimizer=tf.scale_by_adam(eps=1e-3)
        ),
        exact=False,
    ),
    TxCase(
        "contrib.scale_by_galore_dimension_numbers",
        lambda: tf.contrib.scale_by_galore(
            rank=1,
            update_proj_gap=2,
            scale=0.5,
            base_optimizer=tf.scale_by_adam(eps=1e-3),
            weight_dimension_numbers=_galore_dims,
        ),
        exact=False,
    ),
    TxCase(
        "contrib.galore",
        lambda: tf.contrib.galore(
            0.05, rank=2, update_proj_gap=2, base_optimizer=tf.scale_by_lion(), weight_decay=0.1
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase("contrib.scale_by_laprop", lambda: tf.contrib.scale_by_laprop()),
    TxCase("contrib.laprop", lambda: tf.contrib.laprop(0.05, weight_decay=0.1), needs_params=True),
    TxCase(
        "contrib.caution",
        lambda: tf.contrib.caution(tf.adamw(0.05, weight_decay=0.1)),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.cautious_adamw",
        lambda: tf.contrib.cautious_adamw(0.05, weight_decay=0.1),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.cautious_lion",
        lambda: tf.contrib.cautious_lion(0.05),
        needs_params=True,
        exact=False,
    ),
    TxCase("contrib.scale_by_mars", lambda: tf.contrib.scale_by_mars(), exact=False),
    TxCase(
        "contrib.scale_by_mars_lion",
        lambda: tf.contrib.scale_by_mars(mars_type="mars-lion"),
        exact=False,
    ),
    TxCase(
        "contrib.mars",
        lambda: tf.contrib.mars(0.05, weight_decay=0.1),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.mars_optimize_1d",
        lambda: tf.contrib.mars(0.05, weight_decay=0.1, optimize_1d=True),
        needs_params=True,
        exact=False,
    ),
    TxCase("contrib.scale_by_psgd_kron", lambda: tf.contrib.scale_by_psgd_kron(), exact=False),
    TxCase(
        "contrib.psgd_kron",
        lambda: tf.contrib.psgd_kron(
            0.05,
            weight_decay=0.1,
            preconditioner_update_probability=0.5,
            memory_save_mode="one_diag",
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase(
        "contrib.scale_by_soap",
        lambda: tf.contrib.scale_by_soap(
            precondition_frequency=2, precondition_1d=True, normalize_grads=True
        ),
        exact=False,
    ),
    TxCase("contrib.soap", lambda: tf.contrib.soap(0.1), needs_params=True, exact=False),
    TxCase("contrib.scale_by_shampoo", lambda: tf.contrib.scale_by_shampoo(), exact=False),
    TxCase(
        "contrib.shampoo",
        lambda: tf.contrib.shampoo(
            0.1,
            b2=0.999,
            grafting="adam",
            grafting_b2=0.999,
            grafting_eps=1e-8,
            precondition_frequency=2,
            weight_decay=0.01,
            momentum=0.5,
        ),
        needs_params=True,
        exact=False,
    ),
    TxCase("selective_transform", lambda: tf.selective_transform(tf.adam(0.1), freeze_mask=True)),
    # wrappers
    TxCase("MultiSteps", lambda: tf.MultiSteps(tf.adam(0.1), 2).gradient_transformation()),
    TxCase(
        "MultiSteps_skip_not_finite_sum",
        lambda: tf.MultiSteps(
            tf.sgd(0.1, momentum=0.9), 2, False, tf.skip_not_finite
        ).gradient_transformation(),
    ),
    TxCase("apply_every", lambda: tf.chain(tf.trace(0.5), tf.apply_every(2))),
    TxCase("apply_if_finite", lambda: tf.apply_if_finite(tf.adam(0.1), 2), exact=False),
    TxCase(
        "conditionally_transform",
        lambda: tf.conditionally_transform(tf.scale_by_adam(), lambda step: step % 2 == 0),
    ),
    TxCase(
        "conditionally_mask",
        lambda: tf.conditionally_mask(tf.trace(0.9), lambda step: step % 2 == 1),
        needs_params=True,
    ),
    TxCase("flatten", lambda: tf.flatten(tf.adamw(0.1, weight_decay=0.1)), needs_params=True),
    TxCase(
        "monitor",
        lambda: tf.chain(
            tf.monitor({"norm": tf.tree_l2_norm, "ema": tf.measure_with_ema(tf.tree_sum, 0.9)}),
            tf.snapshot("max", tf.tree_linf_norm),
            tf.scale(-0.1),
        ),
        exact=False,
    ),
]
"""THE transform table: every public transformation (and combinator) at least once."""


def transform_inputs(
    dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[Params, list[Params]]:
    """Params of every kind of leaf, and a few steps of gradients for them.

    A nested dict with a matrix, a 4-D kernel (for channels_last), a vector, a 0-d scalar and a
    zero-size leaf; gradients are random, nonzero, of the params' dtypes.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype)

    params = {
        "layer": {"w": rand(4, 3), "b": rand(3)},
        "conv": rand(2, 3, 2, 2),
        "s": rand(),
        "empty": rand(0, 3),
    }
    grads = [
        tf.tree_map(
            lambda p: (torch.randn(p.shape, generator=gen, dtype=torch.float64)).to(dtype), params
        )
        for _ in range(3)
    ]
    return params, grads


def tx_step(
    case: TxCase, tx: tf.GradientTransformation, grads: Params, state: Any, params: Params
) -> tuple[Params, Any]:
    """One ``update`` with what the case needs (params, and a loss ``value``)."""
    extra = {"value": torch.tensor(1.5, dtype=torch.float64)} if case.needs_value else {}
    return tx.update(grads, state, params, **extra)
