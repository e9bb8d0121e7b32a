"""Generate ``optax_goldens.json``: reference trajectories and schedules from optax.

The test-suite compares ``torchopt_fn`` against these numbers, so CI never needs JAX.
This script is not a test (no ``test_`` prefix) and is not imported by the package.

How to rerun (from the repository root)::

    python3 -m venv /tmp/optaxenv
    /tmp/optaxenv/bin/pip install 'optax==0.2.8' jax jaxlib numpy
    /tmp/optaxenv/bin/python tests/goldens/make_optax_goldens.py

The problem, in float64 (``jax_enable_x64``)::

    params = {"w": linspace(-1, 1, 12).reshape(4, 3), "b": [0.5, -0.3, 0.1]}
    L(w, b) = sum(w**4/4 - 0.25*w**2 + 0.1*sin(w)) + sum(b**2 - b - 0.1*cos(b))
              + 0.05*sum(w)*sum(b) + 2.0
    g_w = w**3 - 0.5*w + 0.1*cos(w) + 0.05*sum(b)
    g_b = 2*b - 1 + 0.1*sin(b) + 0.05*sum(w)

Each of the 12 steps computes the analytic gradient ``g`` at the current params,
calls ``tx.update(g, state, params)`` (adding ``value=L(params)`` only for cases
marked ``needs_value``), then ``params = optax.apply_updates(params, updates)``; the
params after every step are recorded, ``w`` flattened row-major. ``init`` holds the
exact starting params (linspace differs by an ulp between jax, numpy and torch), the
gradient and the loss there.

Encoding of ``kwargs`` in the JSON (the script builds every optax call from exactly this
encoding, so the JSON is the single source of truth):

* a schedule given as an argument is ``{"schedule": "<optax name>", "kwargs": {...}}``;
* ``boundaries_and_scales`` is a dict whose keys are the integer boundaries written as
  strings (JSON keys must be strings);
* ``join_schedules`` takes ``{"schedules": [<encodings>], "boundaries": [...]}``.

Other fields of a case: ``needs_value`` (pass ``value=L(params)`` to ``update``),
``note`` (an optax bug or float32 quirk the numbers carry) and, only for cases with a
schedule argument, ``trajectory_int64_count`` (the same run with every schedule fed an
int64 count). optax's own int32 step counter makes most schedules compute in float32
even under x64 (``int32 / int`` is float32 in JAX), so ``trajectory`` carries float32-
rounded learning rates while ``trajectory_int64_count`` is the float64 maths. Likewise
each schedule records ``values`` (int64 counts, float64) and ``values_int32_count``.

A ``"transform"`` case runs ``optax.chain(<transform>, optax.scale(-0.05))`` when its
``order`` is ``"transform_first"`` and ``optax.chain(optax.scale(-0.05), <transform>)``
when it is ``"scale_first"`` (used for ``keep_params_nonnegative``, which must see the
final, already negated update).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

OUT_PATH = Path(__file__).with_name("optax_goldens.json")
STEPS = 12
TRANSFORM_SCALE = -0.05
SCHEDULE_COUNTS = [*range(121), 150, 200, 250, 500, 1000, 10_000]
PROBLEM = (
    'params = {"w": linspace(-1, 1, 12).reshape(4, 3), "b": [0.5, -0.3, 0.1]} '
    "(float64); "
    "L(w, b) = sum(w**4/4 - 0.25*w**2 + 0.1*sin(w)) + sum(b**2 - b - 0.1*cos(b)) "
    "+ 0.05*sum(w)*sum(b) + 2.0; "
    "g_w = w**3 - 0.5*w + 0.1*cos(w) + 0.05*sum(b); "
    "g_b = 2*b - 1 + 0.1*sin(b) + 0.05*sum(w)"
)

Params = dict[str, jax.Array]
Json = dict[str, Any]


def sched(name: str, **kwargs: Any) -> Json:
    """Encode a schedule used as an argument."""
    return {"schedule": name, "kwargs": kwargs}


def opt(
    case_id: str,
    name: str,
    *,
    note: str = "",
    needs_value: bool = False,
    **kwargs: Any,
) -> Json:
    """Describe an ``optimizer`` case: ``optax.<name>(**kwargs)``."""
    case: Json = {"id": case_id, "kind": "optimizer", "name": name, "kwargs": kwargs}
    case["needs_value"] = needs_value
    if note:
        case["note"] = note
    return case


def trf(
    case_id: str,
    name: str,
    *,
    note: str = "",
    needs_value: bool = False,
    order: str = "transform_first",
    **kwargs: Any,
) -> Json:
    """Describe a ``transform`` case: ``optax.<name>(**kwargs)`` and a scale."""
    case: Json = {"id": case_id, "kind": "transform", "name": name, "kwargs": kwargs}
    case.update(needs_value=needs_value, order=order, scale=TRANSFORM_SCALE)
    if note:
        case["note"] = note
    return case


RPROP_NOTE = (
    "optax 0.2.8 bug: scale_by_rprop returns the update computed at the previous "
    "step (state.prev_updates), so the first update is exactly zero and every "
    "later step lags by one."
)
ADADELTA_NO_LR_NOTE = (
    "optax 0.2.8 bug: learning_rate=None makes scale_by_learning_rate the "
    "identity, so the positive adadelta step is added to the params and the loss "
    "increases (gradient ascent)."
)
ADAFACTOR_MOMENTUM_NOTE = (
    "dtype_momentum defaults to float32: the ema accumulator kept in the state is "
    "rounded to float32 every step (the update returned is still float64)."
)
KEEP_NONNEG_NOTE = (
    "Run as chain(scale(-0.05), keep_params_nonnegative()) so the constraint sees "
    "the final update: wherever p + u < 0 the update becomes -p."
)
FACTORED_NOTE = (
    "float32 inside optax: scale_by_factored_rms computes its decay rate as "
    "1 - float32(count + 1) ** -float32(decay_rate) in float32 (XLA's float32 pow "
    "is one ulp away from torch's at count 3), so expect ~1e-10 absolute "
    "differences."
)
SCHEDULE_NOTE = (
    "float32 inside optax: optax's int32 step counter makes most schedules compute "
    "in float32 (int32 / int is float32 in JAX even with x64); "
    "trajectory_int64_count is the same run with every schedule fed an int64 "
    "count, i.e. the float64 maths."
)

OPTIMIZER_CASES: list[Json] = [
    opt("sgd_plain", "sgd", learning_rate=0.05),
    opt("sgd_momentum", "sgd", learning_rate=0.05, momentum=0.9),
    opt("sgd_nesterov", "sgd", learning_rate=0.05, momentum=0.9, nesterov=True),
    opt(
        "sgd_exponential_decay",
        "sgd",
        learning_rate=sched(
            "exponential_decay", init_value=0.1, transition_steps=2, decay_rate=0.8
        ),
        momentum=0.9,
    ),
    opt("adam_default", "adam", learning_rate=0.01),
    opt("adam_nesterov", "adam", learning_rate=0.01, nesterov=True),
    opt("adam_eps_root", "adam", learning_rate=0.01, eps_root=1e-8),
    opt("adam_betas", "adam", learning_rate=0.05, b1=0.8, b2=0.95, eps=1e-6),
    opt("adamw_default", "adamw", learning_rate=0.01),
    opt("adamw_wd", "adamw", learning_rate=0.01, weight_decay=0.1),
    opt(
        "adamw_wd_nesterov",
        "adamw",
        learning_rate=0.01,
        weight_decay=0.1,
        nesterov=True,
    ),
    opt(
        "adamw_warmup_cosine",
        "adamw",
        learning_rate=sched(
            "warmup_cosine_decay_schedule",
            init_value=0.0,
            peak_value=0.05,
            warmup_steps=3,
            decay_steps=12,
            end_value=0.001,
        ),
        weight_decay=0.1,
    ),
    opt(
        "adamw_wd_schedule",
        "adamw",
        learning_rate=0.01,
        weight_decay=sched("linear_schedule", init_value=0.2, end_value=0.0, transition_steps=10),
    ),
    opt("nadam_default", "nadam", learning_rate=0.01),
    opt("nadam_no_nesterov", "nadam", learning_rate=0.01, nesterov=False),
    opt("nadamw_default", "nadamw", learning_rate=0.01),
    opt("nadamw_wd", "nadamw", learning_rate=0.01, weight_decay=0.1),
    opt("amsgrad_default", "amsgrad", learning_rate=0.01),
    opt(
        "amsgrad_no_bias_correction",
        "amsgrad",
        learning_rate=0.01,
        bias_correction_mu=False,
        bias_correction_nu=False,
    ),
    opt("adamax_default", "adamax", learning_rate=0.01),
    opt("adamaxw_default", "adamaxw", learning_rate=0.01),
    opt("adamaxw_wd", "adamaxw", learning_rate=0.01, weight_decay=0.1),
    opt("radam_default", "radam", learning_rate=0.01),
    opt(
        "radam_nesterov_threshold",
        "radam",
        learning_rate=0.01,
        threshold=4.0,
        nesterov=True,
    ),
    opt("adabelief_default", "adabelief", learning_rate=0.01),
    opt("adabelief_nesterov", "adabelief", learning_rate=0.01, nesterov=True),
    opt("yogi_default", "yogi", learning_rate=0.01),
    opt("yogi_eps", "yogi", learning_rate=0.05, b1=0.8, eps=1e-2),
    opt("lion_default", "lion", learning_rate=0.01),
    opt("lion_wd", "lion", learning_rate=0.01, b2=0.95, weight_decay=0.1),
    opt("lamb_default", "lamb", learning_rate=0.01),
    opt("lamb_wd", "lamb", learning_rate=0.01, weight_decay=0.1),
    opt("lars_default", "lars", learning_rate=0.1),
    opt(
        "lars_wd_nesterov",
        "lars",
        learning_rate=0.1,
        weight_decay=0.1,
        trust_coefficient=0.01,
        eps=1e-6,
        nesterov=True,
    ),
    opt("novograd_default", "novograd", learning_rate=0.01),
    opt("novograd_wd", "novograd", learning_rate=0.01, weight_decay=0.1),
    opt("rmsprop_plain", "rmsprop", learning_rate=0.01),
    opt("rmsprop_centered", "rmsprop", learning_rate=0.01, centered=True),
    opt("rmsprop_momentum", "rmsprop", learning_rate=0.01, momentum=0.9),
    opt(
        "rmsprop_centered_momentum_nesterov",
        "rmsprop",
        learning_rate=0.01,
        centered=True,
        momentum=0.9,
        nesterov=True,
    ),
    opt("rmsprop_bias_correction", "rmsprop", learning_rate=0.01, bias_correction=True),
    opt(
        "rmsprop_eps_outside_initial_scale",
        "rmsprop",
        learning_rate=0.01,
        decay=0.99,
        eps=1e-3,
        eps_in_sqrt=False,
        initial_scale=1.0,
    ),
    opt("adagrad_default", "adagrad", learning_rate=0.1),
    opt(
        "adagrad_zero_init",
        "adagrad",
        learning_rate=0.1,
        initial_accumulator_value=0.0,
        eps=1e-10,
    ),
    opt("adadelta_lr1", "adadelta", learning_rate=1.0),
    opt("adadelta_no_lr", "adadelta", note=ADADELTA_NO_LR_NOTE, learning_rate=None),
    opt("adadelta_wd", "adadelta", learning_rate=1.0, rho=0.95, weight_decay=0.1),
    opt("adafactor_default", "adafactor"),
    opt(
        "adafactor_lr_no_param_scale",
        "adafactor",
        learning_rate=0.01,
        multiply_by_parameter_scale=False,
    ),
    opt("adafactor_factored", "adafactor", learning_rate=0.01, min_dim_size_to_factor=2),
    opt(
        "adafactor_factored_options",
        "adafactor",
        learning_rate=0.05,
        min_dim_size_to_factor=2,
        decay_rate=0.9,
        multiply_by_parameter_scale=False,
        clipping_threshold=None,
        weight_decay_rate=0.01,
        eps=1e-20,
    ),
    opt(
        "adafactor_momentum_f32",
        "adafactor",
        note=ADAFACTOR_MOMENTUM_NOTE,
        learning_rate=0.01,
        min_dim_size_to_factor=2,
        momentum=0.9,
    ),
    opt("sm3_default", "sm3", learning_rate=0.1),
    opt("sm3_no_momentum", "sm3", learning_rate=0.1, momentum=0.0),
    opt("fromage_default", "fromage", learning_rate=0.01),
    opt("sign_sgd_default", "sign_sgd", learning_rate=0.01),
    opt("signum_default", "signum", learning_rate=0.01),
    opt("signum_beta", "signum", learning_rate=0.01, beta=0.5),
    opt("adan_default", "adan", learning_rate=0.01),
    opt("adan_wd", "adan", learning_rate=0.01, eps_root=0.0, weight_decay=0.1),
    opt("rprop_optax", "rprop", note=RPROP_NOTE, learning_rate=0.01),
    opt(
        "optimistic_gradient_descent_default",
        "optimistic_gradient_descent",
        learning_rate=0.05,
    ),
    opt(
        "optimistic_gradient_descent_alpha_beta",
        "optimistic_gradient_descent",
        learning_rate=0.05,
        alpha=0.5,
        beta=0.8,
    ),
    opt("polyak_sgd_default", "polyak_sgd", needs_value=True),
    opt(
        "polyak_sgd_options",
        "polyak_sgd",
        needs_value=True,
        max_learning_rate=0.1,
        scaling=0.5,
        f_min=1.2,
        eps=1e-3,
        variant="sps+",
    ),
]

TRANSFORM_CASES: list[Json] = [
    trf("scale_by_adam_default", "scale_by_adam"),
    trf("scale_by_adam_nesterov", "scale_by_adam", nesterov=True),
    trf("scale_by_amsgrad_default", "scale_by_amsgrad"),
    trf("scale_by_adamax_default", "scale_by_adamax"),
    trf("scale_by_radam_default", "scale_by_radam"),
    trf("scale_by_rms_default", "scale_by_rms"),
    trf("scale_by_rms_bias_correction", "scale_by_rms", bias_correction=True),
    trf(
        "scale_by_rms_eps_outside",
        "scale_by_rms",
        eps=1e-3,
        eps_in_sqrt=False,
        initial_scale=1.0,
    ),
    trf("scale_by_stddev_default", "scale_by_stddev"),
    trf("scale_by_rss_default", "scale_by_rss"),
    trf("scale_by_adadelta_default", "scale_by_adadelta"),
    trf("scale_by_rprop_optax", "scale_by_rprop", note=RPROP_NOTE, learning_rate=0.01),
    trf("scale_by_sign", "scale_by_sign"),
    trf("scale_by_belief_default", "scale_by_belief"),
    trf("scale_by_yogi_default", "scale_by_yogi"),
    trf("scale_by_lion_default", "scale_by_lion"),
    trf("scale_by_lion_smooth", "scale_by_lion", mode="smooth", smooth_beta=2.0),
    trf("scale_by_lion_refined", "scale_by_lion", mode="refined"),
    trf("scale_by_adan_default", "scale_by_adan"),
    trf("scale_by_novograd_default", "scale_by_novograd"),
    trf("scale_by_trust_ratio_default", "scale_by_trust_ratio"),
    trf(
        "scale_by_factored_rms_factored",
        "scale_by_factored_rms",
        min_dim_size_to_factor=2,
    ),
    trf("scale_by_sm3_default", "scale_by_sm3"),
    trf("scale_by_optimistic_gradient_default", "scale_by_optimistic_gradient"),
    trf("scale_by_param_block_rms_default", "scale_by_param_block_rms"),
    trf("scale_by_param_block_norm_default", "scale_by_param_block_norm"),
    trf("trace_decay", "trace", decay=0.9),
    trf("trace_nesterov", "trace", decay=0.9, nesterov=True),
    trf("ema_debias", "ema", decay=0.9),
    trf("ema_no_debias", "ema", decay=0.9, debias=False),
    trf("add_decayed_weights_wd", "add_decayed_weights", weight_decay=0.1),
    trf("clip_max_delta", "clip", max_delta=0.3),
    trf("clip_by_global_norm_1", "clip_by_global_norm", max_norm=1.0),
    trf("clip_by_block_rms_half", "clip_by_block_rms", threshold=0.5),
    trf("adaptive_grad_clip_0p1", "adaptive_grad_clip", clipping=0.1),
    trf("centralize", "centralize"),
    trf(
        "keep_params_nonnegative",
        "keep_params_nonnegative",
        note=KEEP_NONNEG_NOTE,
        order="scale_first",
    ),
    trf("scale_by_polyak_default", "scale_by_polyak", needs_value=True),
]

SCHEDULE_CASES: list[Json] = [
    {"id": "constant", "name": "constant_schedule", "kwargs": {"value": 0.1}},
    {
        "id": "linear_begin",
        "name": "linear_schedule",
        "kwargs": {
            "init_value": 0.1,
            "end_value": 0.01,
            "transition_steps": 50,
            "transition_begin": 10,
        },
    },
    {
        "id": "linear_zero_steps",
        "name": "linear_schedule",
        "kwargs": {"init_value": 0.1, "end_value": 0.01, "transition_steps": 0},
    },
    {
        "id": "polynomial_power2_begin",
        "name": "polynomial_schedule",
        "kwargs": {
            "init_value": 0.1,
            "end_value": 0.001,
            "power": 2,
            "transition_steps": 80,
            "transition_begin": 20,
        },
    },
    {
        "id": "exponential_decay_plain",
        "name": "exponential_decay",
        "kwargs": {"init_value": 0.1, "transition_steps": 10, "decay_rate": 0.5},
    },
    {
        "id": "exponential_decay_staircase_begin_end",
        "name": "exponential_decay",
        "kwargs": {
            "init_value": 0.1,
            "transition_steps": 10,
            "decay_rate": 0.5,
            "transition_begin": 15,
            "staircase": True,
            "end_value": 0.01,
        },
    },
    {
        "id": "exponential_decay_smooth_begin_end",
        "name": "exponential_decay",
        "kwargs": {
            "init_value": 0.1,
            "transition_steps": 10,
            "decay_rate": 0.5,
            "transition_begin": 15,
            "end_value": 0.01,
        },
    },
    {
        "id": "exponential_growth_upper_bound",
        "name": "exponential_decay",
        "kwargs": {
            "init_value": 0.1,
            "transition_steps": 10,
            "decay_rate": 1.5,
            "end_value": 1.0,
        },
    },
    {
        "id": "piecewise_constant",
        "name": "piecewise_constant_schedule",
        "kwargs": {
            "init_value": 0.1,
            "boundaries_and_scales": {"20": 0.5, "50": 0.1, "90": 2.0},
        },
    },
    {
        "id": "piecewise_interpolate_linear",
        "name": "piecewise_interpolate_schedule",
        "kwargs": {
            "interpolate_type": "linear",
            "init_value": 0.1,
            "boundaries_and_scales": {"10": 2.0, "40": 0.5, "80": 0.1},
        },
    },
    {
        "id": "piecewise_interpolate_cosine",
        "name": "piecewise_interpolate_schedule",
        "kwargs": {
            "interpolate_type": "cosine",
            "init_value": 0.1,
            "boundaries_and_scales": {"10": 2.0, "40": 0.5, "80": 0.1},
        },
    },
    {
        "id": "cosine_decay_default",
        "name": "cosine_decay_schedule",
        "kwargs": {"init_value": 0.1, "decay_steps": 100},
    },
    {
        "id": "cosine_decay_alpha_exponent",
        "name": "cosine_decay_schedule",
        "kwargs": {
            "init_value": 0.1,
            "decay_steps": 100,
            "alpha": 0.1,
            "exponent": 2.0,
        },
    },
    {
        "id": "warmup_constant",
        "name": "warmup_constant_schedule",
        "kwargs": {"init_value": 0.0, "peak_value": 0.1, "warmup_steps": 20},
    },
    {
        "id": "warmup_cosine_decay",
        "name": "warmup_cosine_decay_schedule",
        "kwargs": {
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "decay_steps": 100,
            "end_value": 0.001,
        },
    },
    {
        "id": "warmup_cosine_decay_exponent",
        "name": "warmup_cosine_decay_schedule",
        "kwargs": {
            "init_value": 0.01,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "decay_steps": 100,
            "end_value": 0.0,
            "exponent": 2.0,
        },
    },
    {
        "id": "warmup_exponential_decay",
        "name": "warmup_exponential_decay_schedule",
        "kwargs": {
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "transition_steps": 20,
            "decay_rate": 0.5,
            "transition_begin": 5,
            "staircase": True,
            "end_value": 0.005,
        },
    },
    {
        "id": "warmup_exponential_decay_smooth",
        "name": "warmup_exponential_decay_schedule",
        "kwargs": {
            "init_value": 0.0,
            "peak_value": 0.1,
            "warmup_steps": 10,
            "transition_steps": 20,
            "decay_rate": 0.5,
        },
    },
    {
        "id": "linear_onecycle",
        "name": "linear_onecycle_schedule",
        "kwargs": {"transition_steps": 100, "peak_value": 0.1},
    },
    {
        "id": "linear_onecycle_options",
        "name": "linear_onecycle_schedule",
        "kwargs": {
            "transition_steps": 100,
            "peak_value": 0.1,
            "pct_start": 0.25,
            "pct_final": 0.75,
            "div_factor": 10.0,
            "final_div_factor": 100.0,
        },
    },
    {
        "id": "cosine_onecycle",
        "name": "cosine_onecycle_schedule",
        "kwargs": {"transition_steps": 100, "peak_value": 0.1},
    },
    {
        "id": "cosine_onecycle_options",
        "name": "cosine_onecycle_schedule",
        "kwargs": {
            "transition_steps": 100,
            "peak_value": 0.1,
            "pct_start": 0.4,
            "div_factor": 10.0,
            "final_div_factor": 100.0,
        },
    },
    {
        "id": "sgdr",
        "name": "sgdr_schedule",
        "kwargs": {
            "cosine_kwargs": [
                {
                    "init_value": 0.0,
                    "peak_value": 0.1,
                    "warmup_steps": 5,
                    "decay_steps": 40,
                    "end_value": 0.001,
                },
                {
                    "init_value": 0.001,
                    "peak_value": 0.05,
                    "warmup_steps": 10,
                    "decay_steps": 60,
                },
            ]
        },
    },
    {
        "id": "join_constant_linear",
        "name": "join_schedules",
        "kwargs": {
            "schedules": [
                sched("constant_schedule", value=0.1),
                sched(
                    "linear_schedule",
                    init_value=0.1,
                    end_value=0.0,
                    transition_steps=50,
                ),
                sched("cosine_decay_schedule", init_value=0.05, decay_steps=30),
            ],
            "boundaries": [30, 60],
        },
    },
]


def decode(value: Any, key: str = "", count_dtype: Any = None) -> Any:
    """Turn the JSON encoding of an argument into the Python object optax expects.

    ``count_dtype``, when given, is the integer dtype every schedule casts its count to.
    """
    if isinstance(value, dict) and "schedule" in value:
        return build_schedule(value["schedule"], value["kwargs"], count_dtype)
    if key == "boundaries_and_scales":
        return {int(k): v for k, v in value.items()}
    if isinstance(value, dict):
        return {k: decode(v, k, count_dtype) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, count_dtype=count_dtype) for v in value]
    return value


def build_schedule(name: str, kwargs: Json, count_dtype: Any = None) -> optax.Schedule:
    """Build ``optax.<name>(**kwargs)`` from its JSON encoding."""
    fn = getattr(optax, name)(**decode(kwargs, count_dtype=count_dtype))
    if count_dtype is None:
        return fn
    return lambda count: fn(jnp.asarray(count, dtype=count_dtype))


def has_schedule(value: Any) -> bool:
    """Whether a JSON-encoded argument tree contains a schedule."""
    if isinstance(value, dict):
        return "schedule" in value or any(has_schedule(v) for v in value.values())
    if isinstance(value, list):
        return any(has_schedule(v) for v in value)
    return False


def build_case(case: Json, count_dtype: Any = None) -> optax.GradientTransformation:
    """Build the gradient transformation a case describes."""
    tx = getattr(optax, case["name"])(**decode(case["kwargs"], count_dtype=count_dtype))
    if case["kind"] == "optimizer":
        return tx
    scale = optax.scale(case["scale"])
    return optax.chain(tx, scale) if case["order"] == "transform_first" else optax.chain(scale, tx)


def initial_params() -> Params:
    """Return the starting point of every trajectory."""
    w = jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float64).reshape(4, 3)
    b = jnp.array([0.5, -0.3, 0.1], dtype=jnp.float64)
    return {"w": w, "b": b}


def loss(params: Params) -> jax.Array:
    """Evaluate the objective ``L(w, b)``."""
    w, b = params["w"], params["b"]
    return (
        jnp.sum(w**4 / 4 - 0.25 * w**2 + 0.1 * jnp.sin(w))
        + jnp.sum(b**2 - b - 0.1 * jnp.cos(b))
        + 0.05 * jnp.sum(w) * jnp.sum(b)
        + 2.0
    )


def grad(params: Params) -> Params:
    """Evaluate the analytic gradient of ``loss``."""
    w, b = params["w"], params["b"]
    return {
        "w": w**3 - 0.5 * w + 0.1 * jnp.cos(w) + 0.05 * jnp.sum(b),
        "b": 2 * b - 1 + 0.1 * jnp.sin(b) + 0.05 * jnp.sum(w),
    }


def to_lists(tree: Params) -> dict[str, list[float]]:
    """Flatten every leaf row-major into a list of Python floats."""
    return {k: np.asarray(v, dtype=np.float64).ravel().tolist() for k, v in tree.items()}


def trajectory(tx: optax.GradientTransformation, case: Json) -> dict[str, list[list[float]]]:
    """Run ``tx`` for ``STEPS`` steps and return the params after each step."""
    params = initial_params()
    state = tx.init(params)
    result: dict[str, list[list[float]]] = {"w": [], "b": []}
    for _ in range(STEPS):
        extra = {"value": loss(params)} if case["needs_value"] else {}
        updates, state = tx.update(grad(params), state, params, **extra)
        dtypes = {str(u.dtype) for u in jax.tree.leaves(updates)}
        if dtypes != {"float64"}:
            msg = f"{case['id']}: updates have dtypes {dtypes}"
            raise TypeError(msg)
        params = optax.apply_updates(params, updates)
        for key, values in to_lists(params).items():
            if not all(math.isfinite(x) for x in values):
                msg = f"{case['id']}: non-finite params"
                raise ValueError(msg)
            result[key].append(values)
    return result


def run_case(case: Json) -> Json:
    """Attach the trajectory of one case (and its float64-schedule twin, if any)."""
    notes = [case["note"]] if "note" in case else []
    if case["name"] in {"adafactor", "scale_by_factored_rms"}:
        notes.append(FACTORED_NOTE)
    out = {**case, "trajectory": trajectory(build_case(case), case)}
    if has_schedule(case["kwargs"]):
        notes.append(SCHEDULE_NOTE)
        out["trajectory_int64_count"] = trajectory(build_case(case, jnp.int64), case)
    if notes:
        out["note"] = " ".join(notes)
    return out


def run_schedule(case: Json) -> Json:
    """Evaluate one schedule at ``SCHEDULE_COUNTS`` with int64 and int32 counts."""
    fn = build_schedule(case["name"], case["kwargs"])
    values = {}
    for key, dtype in (("values", jnp.int64), ("values_int32_count", jnp.int32)):
        values[key] = [float(fn(jnp.asarray(c, dtype=dtype))) for c in SCHEDULE_COUNTS]
    return {**case, "counts": SCHEDULE_COUNTS, **values}


def dumps(goldens: Json) -> str:
    """Serialise with one case or schedule per line, so diffs stay readable."""
    lines = []
    for key, value in goldens.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = ",\n".join("  " + json.dumps(item, allow_nan=False) for item in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, allow_nan=False)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def main() -> None:
    """Compute every case and write ``optax_goldens.json``."""
    params = initial_params()
    goldens: Json = {
        "optax_version": optax.__version__,
        "jax_version": jax.__version__,
        "problem": PROBLEM,
        "steps": STEPS,
        "init": {
            "params": to_lists(params),
            "grad": to_lists(grad(params)),
            "loss": float(loss(params)),
        },
        "cases": [run_case(c) for c in OPTIMIZER_CASES + TRANSFORM_CASES],
        "schedules": [run_schedule(s) for s in SCHEDULE_CASES],
    }
    OUT_PATH.write_text(dumps(goldens))
    n_cases, n_schedules = len(goldens["cases"]), len(goldens["schedules"])
    print(f"wrote {n_cases} cases and {n_schedules} schedules to {OUT_PATH}")


if __name__ == "__main__":
    main()
