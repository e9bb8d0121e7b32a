"""The test zoo: problems, THE optimizer table, and small drivers shared by the generic tests.

Every generic test (the common battery, compile, vmap, the torch.optim adapter, ...) is
parametrised over `OPTIMIZERS`, so a new optimizer is tested everywhere by adding one row::

    @pytest.mark.parametrize("case", OPTIMIZERS, ids=str)
    def test_something(case):
        tx = make_tx(case)
        params, state = run_case(case, QUADRATIC, steps=10)

Problems give parameters in any floating dtype, a loss and its gradient (analytic where the
problem is shared with the optax goldens or simple enough, autograd otherwise).
"""

from __future__ import annotations

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
        is_stochastic: the update draws random numbers (results depend on the generator).
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
    is_stochastic: bool = False
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
        is_stochastic=True,
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
