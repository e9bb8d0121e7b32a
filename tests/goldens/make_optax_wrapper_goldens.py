"""Generate ``optax_wrapper_goldens.json``: trajectories of optax's wrappers in float64.

Same problem, starting point and protocol as ``make_optax_goldens.py`` (12 steps of
``tx.update(g, state, params)`` then ``apply_updates``), with these changes:

* each case is a Python expression over a namespace ``ox`` (``optax`` here,
  ``torchopt_fn`` in the test), ``F32``/``F64`` (the float dtypes) and ``partial``, so the
  JSON holds the single definition both sides build;
* the gradient at step ``t`` is the analytic one times ``1 + 0.25 * (t % 3)`` (mini-batches
  differ, so accumulating is not repeating);
* ``rtol``: where summation order matters more than ulps (Prodigy's estimate divides a
  sum that cancels, <g, x0 - x>, so XLA's and torch's reduction orders differ at ~1e-10);
* ``bad_steps`` lists the steps whose gradient has ``inf`` at ``w[0, 0]`` (``nan_steps``:
  NaN), for the wrappers that skip non-finite updates;
* ``projections``: each of optax's projections applied to ``projection_input``;
* ``projections``: each of optax's projections applied to ``projection_input``;
* ``functions``: optax's per-example clips, ``power_iteration`` and
  ``matrix_inverse_pth_root`` on ``function_input``;
* ``linesearch_cases``: L-BFGS and line searches on exact gradients (on the goldens'
  problem, or a 4-D Rosenbrock), ``update`` given ``value``, ``grad`` and ``value_fn``
  (``protocol``: from ``value_and_grad_from_state``, ``fresh``, or ``plain`` without them);
  each step also records the line search's iterations and the objective;
* with ``lookahead``, the params are ``LookaheadParams.init_synced(params)``, the gradient
  is taken at the fast params, and both fast and slow params are recorded.

How to rerun: as ``make_optax_goldens.py`` says, with this script's name.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

from make_optax_goldens import STEPS, grad, initial_params, loss, to_lists  # noqa: E402

OUT_PATH = Path(__file__).with_name("optax_wrapper_goldens.json")

CASES: list[dict[str, Any]] = [
    {
        "id": "multisteps_mean",
        "expr": "ox.MultiSteps(ox.adam(0.05), every_k_schedule=3, "
        "accumulator_dtype=F64).gradient_transformation()",
    },
    {
        "id": "multisteps_sum",
        "expr": "ox.MultiSteps(ox.sgd(0.02, momentum=0.9), 2, "
        "use_grad_mean=False, accumulator_dtype=F64).gradient_transformation()",
    },
    {
        "id": "multisteps_float32_accumulator",
        "expr": "ox.MultiSteps(ox.adam(0.05), 3, accumulator_dtype=F32).gradient_transformation()",
    },
    {
        "id": "multisteps_schedule",
        "expr": "ox.MultiSteps(ox.sgd(0.05, momentum=0.9), "
        "every_k_schedule=lambda step: 1 + step % 3, accumulator_dtype=F64)"
        ".gradient_transformation()",
    },
    {
        "id": "multisteps_skip_not_finite",
        "bad_steps": [2, 5],
        "nan_steps": [7],
        "expr": "ox.MultiSteps(ox.sgd(0.05, momentum=0.5), 2, "
        "should_skip_update_fn=ox.skip_not_finite, "
        "accumulator_dtype=F64).gradient_transformation()",
    },
    {
        "id": "multisteps_skip_large_updates",
        "expr": "ox.MultiSteps(ox.sgd(0.05), 2, "
        "should_skip_update_fn=partial(ox.skip_large_updates, max_squared_norm=4.4), "
        "accumulator_dtype=F64).gradient_transformation()",
    },
    {"id": "apply_every", "expr": "ox.chain(ox.sgd(0.02, momentum=0.5), ox.apply_every(3))"},
    {
        "id": "apply_if_finite",
        "bad_steps": [3, 4, 8],
        "nan_steps": [9],
        "expr": "ox.apply_if_finite(ox.adamw(0.05, weight_decay=0.1), max_consecutive_errors=2)",
    },
    {
        "id": "conditionally_transform",
        "expr": "ox.chain(ox.conditionally_transform("
        "ox.trace(0.9), lambda step: step % 3 != 1), ox.scale(-0.05))",
    },
    {
        "id": "conditionally_mask",
        "expr": "ox.conditionally_mask(ox.sgd(0.05, momentum=0.9), lambda step: step % 4 < 2)",
    },
    {
        "id": "lookahead",
        "lookahead": True,
        "expr": "ox.lookahead(ox.adam(0.05), sync_period=3, slow_step_size=0.5)",
    },
    {
        "id": "lookahead_reset_state",
        "lookahead": True,
        "expr": "ox.lookahead(ox.sgd(0.05, momentum=0.9), sync_period=4, slow_step_size=0.3, "
        "reset_state=True)",
    },
    {"id": "flatten_adam", "expr": "ox.flatten(ox.adam(0.05))"},
    {
        "id": "flatten_clip_adamw",
        "expr": "ox.flatten(ox.chain(ox.clip_by_global_norm(0.5), "
        "ox.adamw(0.05, weight_decay=0.1)))",
    },
    {"id": "freeze", "expr": "ox.chain(ox.adam(0.05), ox.freeze({'w': False, 'b': True}))"},
    {
        "id": "selective_transform",
        "expr": "ox.selective_transform(ox.adam(0.05), freeze_mask={'w': True, 'b': False})",
    },
    {"id": "masked_bool", "expr": "ox.masked(ox.adam(0.05), True)"},
    {
        "id": "normalize_by_update_norm",
        "expr": "ox.chain(ox.normalize_by_update_norm(0.5), ox.scale(-0.1))",
    },
    {"id": "optimistic_adam_v2", "expr": "ox.optimistic_adam_v2(0.05, alpha=0.8, beta=0.5)"},
    {"id": "optimistic_adam", "expr": "ox.optimistic_adam(0.05, optimism=0.02, nesterov=False)"},
    {"id": "contrib_adopt", "expr": "ox.contrib.adopt(0.05)"},
    {
        "id": "contrib_adopt_nesterov_noclip",
        "expr": "ox.contrib.adopt(0.05, b2=0.99, nesterov=True, use_clipping=False)",
    },
    {
        "id": "contrib_adopt_clip_fn",
        "expr": "ox.contrib.adopt(0.05, clip_value_fn=lambda c: 0.5 + c ** 0.5)",
    },
    {"id": "contrib_ademamix", "expr": "ox.contrib.ademamix(0.05, weight_decay=0.1)"},
    {
        "id": "contrib_ademamix_schedules",
        "note": "optax evaluates the schedules at its int32 "
        "count, in float32 (int32 / int is float32 in JAX even with x64); here in float64",
        "expr": "ox.contrib.ademamix(0.05, b3=ox.linear_schedule("
        "0.9, 0.999, 8), alpha=ox.linear_schedule(0.0, 5.0, 8))",
    },
    {
        "id": "contrib_scale_by_ademamix",
        "expr": "ox.chain(ox.contrib.scale_by_ademamix(), ox.scale(-0.02))",
    },
    {
        "id": "contrib_simplified_ademamix",
        "expr": "ox.contrib.simplified_ademamix(0.01, alpha=2.0, weight_decay=0.1)",
    },
    {"id": "contrib_schedule_free_sgd", "expr": "ox.contrib.schedule_free_sgd(0.1, b1=0.8)"},
    {
        "id": "contrib_schedule_free_adamw",
        "expr": "ox.contrib.schedule_free_adamw(0.05, weight_decay=0.1)",
    },
    {
        "id": "contrib_schedule_free_warmup",
        "note": "the warmup schedule at optax's int32 count is float32 there",
        "expr": "ox.contrib.schedule_free_adamw(0.05, warmup_steps=4)",
    },
    {
        "id": "contrib_schedule_free_adam_base",
        "expr": "ox.contrib.schedule_free(ox.adam(0.02), "
        "learning_rate=0.02, b1=0.95, weight_lr_power=1.0)",
    },
    {
        "id": "contrib_madgrad",
        "note": "optax computes lambda = (lr + eps) * sqrt(count + 1) in "
        "float32 (jnp.sqrt of an int32 is float32, and a Python float stays weak)",
        "expr": "ox.contrib.madgrad(0.02, weight_decay=0.01)",
    },
    {
        "id": "contrib_madgrad_schedule",
        "note": "the schedule at optax's int32 count is float32",
        "expr": "ox.contrib.madgrad(ox.linear_schedule(0.05, 0.01, 10), momentum=0.5)",
    },
    {"id": "contrib_cocob", "expr": "ox.contrib.cocob()"},
    {"id": "contrib_cocob_lr", "expr": "ox.contrib.cocob(0.5, alpha=10.0, weight_decay=0.1)"},
    {"id": "contrib_dog", "expr": "ox.contrib.dog()"},
    {
        "id": "contrib_dog_lr_init",
        "expr": "ox.contrib.dog(0.5, init_step=('learning_rate', 0.01), weight_decay=0.1)",
    },
    {"id": "contrib_dog_distance", "expr": "ox.contrib.dog(init_step=('distance', 0.05))"},
    {"id": "contrib_dowg", "expr": "ox.contrib.dowg()"},
    {
        "id": "contrib_dowg_init",
        "expr": "ox.contrib.dowg(0.5, init_estim_sq_dist=0.01, weight_decay=0.1)",
    },
    {"id": "contrib_prodigy", "rtol": 1e-8, "expr": "ox.contrib.prodigy()"},
    {
        "id": "contrib_prodigy_options",
        "rtol": 1e-8,
        "expr": "ox.contrib.prodigy(0.5, betas=(0.8, 0.99), "
        "beta3=0.95, estim_lr0=1e-3, weight_decay=0.1, safeguard_warmup=True)",
    },
    {"id": "contrib_muon", "expr": "ox.contrib.muon(0.02)"},
    {
        "id": "contrib_muon_options",
        "expr": "ox.contrib.muon(0.05, ns_steps=4, beta=0.9, weight_decay=0.1, nesterov=False, "
        "adam_b1=0.8, adam_weight_decay=0.05, adam_learning_rate=0.03, "
        "consistent_rms=0.2)",
    },
    {
        "id": "contrib_muon_dion_adaptive",
        "expr": "ox.contrib.muon(0.02, ns_coeffs='dion', adaptive=True)",
    },
    {"id": "contrib_muon_spectral", "expr": "ox.contrib.muon(0.02, preconditioning='spectral')"},
    {"id": "contrib_muon_aol", "expr": "ox.contrib.muon(0.02, preconditioning='aol')"},
    {"id": "contrib_muon_schatten", "expr": "ox.contrib.muon(0.02, preconditioning='schatten')"},
    {
        "id": "contrib_muon_dims",
        "expr": "ox.contrib.muon(0.02, muon_weight_dimension_numbers={'w': "
        "ox.contrib.MuonDimensionNumbers(1, 0), 'b': None})",
    },
    {
        "id": "contrib_scale_by_muon_dims_fn",
        "expr": "ox.masked(ox.chain(ox.contrib.scale_by_muon(weight_dimension_numbers=lambda "
        "p: {'w': ox.contrib.MuonDimensionNumbers((0,), (1,)), 'b': p['b']}), "
        "ox.scale(-0.01)), {'w': True, 'b': False})",
    },
    {
        "id": "contrib_muon_schedule",
        "note": "optax's linear_schedule is float32",
        "expr": "ox.contrib.muon(ox.linear_schedule(0.05, 0.01, 10), weight_decay=0.1)",
    },
    {
        "id": "contrib_sophia_injected_diag",
        "expr": "ox.contrib.sophia(0.05, hessian_diagonal_fn=ox.stateless_with_tree_map(lambda "
        "g, p: g * g + p * p))",
    },
    {
        "id": "contrib_sophia_interval_mask",
        "expr": "ox.contrib.sophia(0.05, b1=0.9, b2=0.9, gamma=0.05, weight_decay=0.1, "
        "weight_decay_mask={'w': True, 'b': False}, update_interval=3, "
        "hessian_diagonal_fn=ox.stateless_with_tree_map(lambda g, p: 3 * p * p - 0.5))",
    },
    {
        "id": "contrib_sophia_no_clip",
        "expr": "ox.contrib.sophia(0.03, eps=0.5, clip_threshold=None, update_interval=2, "
        "hessian_diagonal_fn=ox.stateless_with_tree_map(lambda g, p: g * g + 1.0))",
    },
    {
        "id": "contrib_sophia_clip_half",
        "expr": "ox.contrib.sophia(0.05, b2=0.5, gamma=1.0, clip_threshold=0.5, "
        "update_interval=1, hessian_diagonal_fn=ox.stateless_with_tree_map(lambda g, "
        "p: g * g + p * p))",
    },
    {
        "id": "contrib_sophia_hutchinson_separable",
        "expr": "(lambda h: ox.contrib.sophia(0.05, b2=0.5, gamma=1.0, update_interval=2, "
        "hessian_diagonal_fn=ox.GradientTransformation(h.init, lambda u, s, p=None, "
        "**k: h.update(u, s, p, obj_fn=lambda q: (q['w'] ** 4).sum() + (q['b'] ** "
        "4).sum() / "
        "2))))(ox.contrib.hutchinson_estimator_diag_hessian(random_seed=None))",
    },
    {
        "id": "contrib_sam",
        "expr": "ox.contrib.sam(ox.sgd(0.05), ox.chain(ox.contrib.normalize(), ox.sgd(0.1)))",
    },
    {
        "id": "contrib_sam_momentum_adam_adv",
        "expr": "ox.contrib.sam(ox.sgd(0.05, momentum=0.9), ox.chain(ox.contrib.normalize(), "
        "ox.adam(0.05)), sync_period=3)",
    },
    {
        "id": "contrib_sam_no_reset",
        "expr": "ox.contrib.sam(ox.adam(0.05), ox.chain(ox.contrib.normalize(), "
        "ox.adam(0.05)), sync_period=3, reset_state=False)",
    },
    {
        "id": "contrib_sam_adamw_period4",
        "expr": "ox.contrib.sam(ox.adamw(0.05, weight_decay=0.1), "
        "ox.chain(ox.contrib.normalize(), ox.sgd(0.02, momentum=0.5)), sync_period=4)",
    },
    {"id": "contrib_normalize", "expr": "ox.chain(ox.contrib.normalize(), ox.scale(-0.05))"},
    {"id": "contrib_mechanize_sgd", "expr": "ox.contrib.mechanize(ox.sgd(0.05))"},
    {
        "id": "contrib_mechanize_sgd_s_init",
        "expr": "ox.contrib.mechanize(ox.sgd(1.0), s_init=0.05, num_betas=3)",
    },
    {
        "id": "contrib_mechanize_adam",
        "expr": "ox.contrib.mechanize(ox.adam(0.05), weight_decay=0.1, s_init=1e-3, num_betas=4)",
    },
    {
        "id": "contrib_mechanize_momentum",
        "expr": "ox.contrib.mechanize(ox.sgd(0.1, momentum=0.9), weight_decay=0.0, eps=1e-6)",
    },
    {"id": "contrib_dadapt_adamw", "expr": "ox.contrib.dadapt_adamw()"},
    {
        "id": "contrib_dadapt_adamw_options",
        "expr": "ox.contrib.dadapt_adamw(0.5, betas=(0.8, 0.99), eps=1e-6, estim_lr0=1e-3, "
        "weight_decay=0.1)",
    },
    {
        "id": "contrib_dadapt_adamw_schedule",
        "note": "the schedule at optax's int32 count is float32",
        "expr": "ox.contrib.dadapt_adamw(ox.linear_schedule(1.0, 0.5, 10), estim_lr0=1e-2)",
    },
    {"id": "contrib_acprop", "expr": "ox.contrib.acprop(0.05)"},
    {
        "id": "contrib_acprop_options",
        "expr": "ox.contrib.acprop(0.02, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, "
        "weight_decay=0.1)",
    },
    {
        "id": "contrib_acprop_schedule",
        "expr": "ox.contrib.acprop(ox.cosine_decay_schedule(0.05, 10))",
    },
    {
        "id": "contrib_scale_by_acprop",
        "expr": "ox.chain(ox.contrib.scale_by_acprop(b1=0.5, b2=0.9), ox.scale(-0.02))",
    },
    {
        "id": "contrib_split_real_and_imaginary",
        "expr": "ox.contrib.split_real_and_imaginary(ox.chain(ox.clip_by_global_norm(1.0), "
        "ox.adamw(0.05, weight_decay=0.1)))",
    },
    {
        "id": "contrib_galore",
        "expr": "ox.contrib.galore(0.05)",
        "rtol": 2e-05,
        "note": "optax decomposes in float32 (we in float64): float32 rounding of the projector",
    },
    {
        "id": "contrib_galore_rank2_weight_decay",
        "expr": "ox.contrib.galore(0.05, rank=2, weight_decay=0.1)",
        "rtol": 2e-06,
        "note": "optax decomposes in float32 (we in float64): float32 rounding of the projector",
    },
    {
        "id": "contrib_galore_rank1_refresh_every_step",
        "expr": "ox.contrib.galore(0.05, rank=1, update_proj_gap=1, scale=0.5)",
        "rtol": 2e-06,
        "note": "optax decomposes in float32 (we in float64); refreshed every step, and "
        "optax's singular vectors keep their signs here (where they flip, we keep the old sign)",
    },
    {
        "id": "multi_transform",
        "expr": "ox.multi_transform({'a': ox.adam(0.05), 'b': ox.sgd(0.05)}, {'w': 'a', 'b': 'b'})",
    },
]


def step_grad(params: Any, step: int, case: dict[str, Any]) -> Any:
    # Mini-batch-like: the gradient's scale changes from step to step, so accumulating
    # mini-steps is not the same as repeating one.
    g = jax.tree.map(lambda x: x * (1 + 0.25 * (step % 3)), grad(params))
    for key, value in (("bad_steps", jnp.inf), ("nan_steps", jnp.nan)):
        if step in case.get(key, ()):
            g = {**g, "w": g["w"].at[0, 0].set(value)}
    return g


def run(case: dict[str, Any]) -> dict[str, Any]:
    tx = eval(
        case["expr"], {"ox": optax, "F32": jnp.float32, "F64": jnp.float64, "partial": partial}
    )
    params = initial_params()
    if case.get("lookahead"):
        params = optax.LookaheadParams.init_synced(params)
    state = tx.init(params)
    out: dict[str, list] = {}
    for step in range(STEPS):
        at = params.fast if case.get("lookahead") else params
        updates, state = tx.update(step_grad(at, step, case), state, params)
        params = optax.apply_updates(params, updates)
        parts = (
            {"fast": params.fast, "slow": params.slow} if case.get("lookahead") else {"": params}
        )
        for prefix, tree in parts.items():
            for k, v in to_lists(tree).items():
                out.setdefault(f"{prefix}.{k}" if prefix else k, []).append(v)
    return {**case, "trajectory": out}


PROJECTION_INPUT = {
    "w": [[0.3, -1.2, 0.05], [2.0, -0.4, 0.7]],
    "b": [0.1, -0.05, 0.6],
}
PROJECTIONS = [
    "projection_non_negative(x)",
    "projection_box(x, lo, hi)",
    "projection_simplex(x)",
    "projection_simplex(x, 2.5)",
    "projection_l1_sphere(x, 2.0)",
    "projection_l1_ball(x, 1.5)",
    "projection_l1_ball(x, 100.0)",
    "projection_l2_sphere(x, 2.0)",
    "projection_l2_ball(x, 1.0)",
    "projection_l2_ball(x, 100.0)",
    "projection_linf_ball(x, 0.5)",
    "projection_vector(x, a)",
    "projection_hyperplane(x, a, 0.3)",
    "projection_halfspace(x, a, 0.3)",
    "projection_halfspace(x, a, 100.0)",
]


def run_projections() -> list[dict[str, Any]]:
    """Each projection of ``x`` (``a = x ** 2 + 0.1``, box ``-0.5 * a <= x <= a``), float64.

    optax 0.2.8's ``projection_box`` takes its bounds as trees only (with a number it fails
    on any tree but a single array), so ``projection_hypercube`` has no golden here.
    """
    x = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in PROJECTION_INPUT.items()}
    a = jax.tree.map(lambda v: v**2 + 0.1, x)
    lo, hi = jax.tree.map(lambda v: -0.5 * v, a), a
    out = []
    for expr in PROJECTIONS:
        result = eval(
            "optax.projections." + expr, {"optax": optax, "x": x, "a": a, "lo": lo, "hi": hi}
        )
        out.append({"expr": expr, "result": to_lists(result)})
    return out


LINESEARCH_CASES: list[dict[str, Any]] = [
    {"id": "lbfgs_default", "expr": "ox.lbfgs()", "protocol": "from_state"},
    {
        "id": "lbfgs_rosenbrock",
        "expr": "ox.lbfgs()",
        "protocol": "from_state",
        "problem": "rosenbrock",
        "steps": 25,
    },
    {
        "id": "lbfgs_memory3_keep",
        "protocol": "from_state",
        "problem": "rosenbrock",
        "steps": 25,
        "expr": "ox.lbfgs(memory_size=3, linesearch=ox.scale_by_zoom_linesearch("
        "15, initial_guess_strategy='keep'))",
    },
    {
        "id": "lbfgs_no_scale_init",
        "expr": "ox.lbfgs(scale_init_precond=False)",
        "protocol": "from_state",
    },
    {
        "id": "lbfgs_fixed_step",
        "expr": "ox.lbfgs(learning_rate=0.1, linesearch=None)",
        "protocol": "plain",
    },
    {
        "id": "zoom_sgd_max_lr",
        "protocol": "from_state",
        "problem": "rosenbrock",
        "expr": "ox.chain(ox.sgd(1.0), ox.scale_by_zoom_linesearch(20, max_learning_rate=0.5))",
    },
    {
        "id": "zoom_sgd_tol",
        "protocol": "from_state",
        "expr": "ox.chain(ox.sgd(1.0), ox.scale_by_zoom_linesearch(10, tol=1e-3, "
        "approx_dec_rtol=None, curv_rtol=0.5))",
    },
    {
        "id": "backtracking_sgd",
        "protocol": "fresh",
        "expr": "ox.chain(ox.sgd(1.0), ox.scale_by_backtracking_linesearch(15))",
    },
    {
        "id": "backtracking_store_grad",
        "protocol": "from_state",
        "problem": "rosenbrock",
        "expr": "ox.chain(ox.sgd(1.0), ox.scale_by_backtracking_linesearch(20, store_grad=True, "
        "decrease_factor=0.5, increase_factor=2.0, max_learning_rate=10.0))",
    },
]


def rosenbrock(params: Any) -> jax.Array:
    x = params["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def run_linesearch(case: dict[str, Any]) -> dict[str, Any]:
    """Line-search cases: exact gradients of the objective, ``value``/``grad``/``value_fn``."""
    tx = eval(case["expr"], {"ox": optax})
    if case.get("problem") == "rosenbrock":
        fn, params = rosenbrock, {"x": jnp.array([-1.2, 1.0, -0.5, 0.8], dtype=jnp.float64)}
    else:
        fn, params = loss, initial_params()
    state = tx.init(params)
    out: dict[str, list] = {"num_linesearch_steps": [], "value": []}
    for _ in range(case.get("steps", STEPS)):
        if case["protocol"] == "from_state":
            value, g = optax.value_and_grad_from_state(fn)(params, state=state)
        else:
            value, g = jax.value_and_grad(fn)(params)
        extra = {} if case["protocol"] == "plain" else {"value": value, "grad": g, "value_fn": fn}
        updates, state = tx.update(g, state, params, **extra)
        params = optax.apply_updates(params, updates)
        for k, v in to_lists(params).items():
            out.setdefault(k, []).append(v)
        steps = optax.tree.get(state, "num_linesearch_steps")
        out["num_linesearch_steps"].append(None if steps is None else int(steps))
        out["value"].append(float(fn(params)))
    return {**case, "trajectory": out}


FUNCTION_INPUT = {
    "grads": {
        "w": [[[3.0, 4.0], [0.1, 0.2]], [[0.3, 0.1], [0.0, 0.2]], [[1.0, -2.0], [2.0, 1.0]]],
        "b": [[0.5], [-0.1], [2.0]],
    },
    "spd": [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]],
    "v0": [1.0, -0.5, 0.25],
}
FUNCTIONS = [
    "per_example_global_norm_clip(grads, 1.0)",
    "per_example_layer_norm_clip(grads, 1.5)",
    "per_example_layer_norm_clip(grads, 1.5, uniform=False)",
    "power_iteration(spd, v0=v0, num_iters=50, error_tolerance=1e-12)",
    "matrix_inverse_pth_root(spd, 2, ridge_epsilon=1e-6)",
    "matrix_inverse_pth_root(spd, 4, ridge_epsilon=1e-3)",
]


def run_functions() -> list[dict[str, Any]]:
    """optax's functions on ``function_input`` (float64), results as nested lists."""
    grads = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in FUNCTION_INPUT["grads"].items()}
    spd = jnp.asarray(FUNCTION_INPUT["spd"], dtype=jnp.float64)
    v0 = jnp.asarray(FUNCTION_INPUT["v0"], dtype=jnp.float64)
    out = []
    for expr in FUNCTIONS:
        result = eval("optax." + expr, {"optax": optax, "grads": grads, "spd": spd, "v0": v0})
        out.append({"expr": expr, "result": jax.tree.map(lambda x: np.asarray(x).tolist(), result)})
    return out


def main() -> None:
    goldens = {
        "optax_version": optax.__version__,
        "steps": STEPS,
        "cases": [run(c) for c in CASES],
        "projection_input": PROJECTION_INPUT,
        "projections": run_projections(),
        "linesearch_cases": [run_linesearch(c) for c in LINESEARCH_CASES],
        "function_input": FUNCTION_INPUT,
        "functions": run_functions(),
    }
    OUT_PATH.write_text(json.dumps(goldens, indent=1) + "\n")
    print(f"wrote {len(CASES)} cases to {OUT_PATH}")


if __name__ == "__main__":
    main()
