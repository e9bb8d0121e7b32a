"""Our optimizers and transforms against trajectories recorded from optax 0.2.8 (float64).

Each case of tests/goldens/optax_goldens.json is rebuilt from its ``name`` and ``kwargs`` (a
transform as ``chain(transform, scale(-0.05))``, or the other way round where the case says
so) and run on the goldens' problem for 12 steps; the params after every step must match
optax's to ``rtol=1e-10``. Cases that record an optax bug must differ, and ours must descend.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN, decode_golden_kwargs, load_goldens, run_steps

GOLDENS = load_goldens()
OPTIMIZER_CASES = [c for c in GOLDENS["cases"] if c["kind"] == "optimizer"]
TRANSFORM_CASES = [c for c in GOLDENS["cases"] if c["kind"] == "transform"]

# optax 0.2.8 bugs that we fix on purpose (see the `rprop` and `adadelta` docstrings).
OPTAX_BUGS = {"rprop_optax", "adadelta_no_lr", "scale_by_rprop_optax"}

# Looser than 1e-10, with the reason: optax rounds the momentum accumulator to float32 after
# forming the average in float64, we form it in float32 (one float32 ulp apart).
RTOL = {"adafactor_momentum_f32": 1e-6}


def _float32_decay(step: torch.Tensor, exponent: float) -> torch.Tensor:
    """optax's Adafactor decay schedule, evaluated in float32 (exponent too) even in float64."""
    t = (step + 1).to(torch.float32)
    return (1.0 - torch.pow(t, -torch.tensor(exponent, dtype=torch.float32))).to(step.dtype)


@pytest.fixture
def optax_adafactor_decay(monkeypatch):
    """Make `adafactor` use optax's float32 decay schedule.

    Ours is computed in the params' precision (`scale_by_factored_rms`), a ~1e-8 relative
    difference in the decay that the trajectories amplify past 1e-10; with the schedule
    matched, everything else in the chain can be held to 1e-10.
    """
    factored_rms = tf.transforms.scale_by_factored_rms

    def with_float32_decay(*args, **kwargs):
        return factored_rms(*args, decay_rate_fn=_float32_decay, **kwargs)

    monkeypatch.setattr(tf.transforms, "scale_by_factored_rms", with_float32_decay)


def _build(case: dict[str, Any]) -> tf.GradientTransformation:
    kwargs = decode_golden_kwargs(case["kwargs"])
    if case["name"] == "scale_by_factored_rms":
        kwargs["decay_rate_fn"] = _float32_decay
    tx = getattr(tf, case["name"])(**kwargs)
    if case["kind"] == "optimizer":
        return tx
    lr = tf.scale(case["scale"])
    return tf.chain(tx, lr) if case["order"] == "transform_first" else tf.chain(lr, tx)


def _trajectory(case: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """Our params after each step, flattened like the goldens."""
    tx = _build(case)
    value_fn = GOLDEN.loss if case["needs_value"] else None
    params = GOLDEN.init_params(torch.float64)
    state = tx.init(params)
    out = []
    for _ in range(GOLDENS["steps"]):
        params, state = run_steps(tx, params, GOLDEN.grad, 1, value_fn, state)
        out.append({k: v.reshape(-1) for k, v in params.items()})
    return out


def _expected(case: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
    # Our step counts are int64; where optax's int32 count changes a schedule's rounding,
    # the goldens also record the run with an int64 count.
    trajectory = case.get("trajectory_int64_count", case["trajectory"])
    return {k: torch.tensor(v[step], dtype=torch.float64) for k, v in trajectory.items()}


def test_goldens_match_the_problem():
    init = GOLDENS["init"]
    params = GOLDEN.init_params(torch.float64)
    grads = GOLDEN.grad(params)
    for k in ("w", "b"):
        torch.testing.assert_close(
            params[k].reshape(-1), torch.tensor(init["params"][k], dtype=torch.float64)
        )
        torch.testing.assert_close(
            grads[k].reshape(-1), torch.tensor(init["grad"][k], dtype=torch.float64)
        )
    assert float(GOLDEN.loss(params)) == pytest.approx(init["loss"], rel=1e-14)


@pytest.mark.parametrize(
    "case", [c for c in OPTIMIZER_CASES if c["id"] not in OPTAX_BUGS], ids=lambda c: c["id"]
)
def test_optimizer_matches_optax(case: dict[str, Any], request: pytest.FixtureRequest):
    if case["name"] == "adafactor":
        request.getfixturevalue("optax_adafactor_decay")
    _assert_matches(case, rtol=RTOL.get(case["id"], 1e-10))


@pytest.mark.parametrize(
    "case", [c for c in OPTIMIZER_CASES if c["name"] == "adafactor"], ids=lambda c: c["id"]
)
def test_adafactor_with_float64_decay_is_close_to_optax(case: dict[str, Any]):
    # adafactor_default's parameter-scaled steps amplify the 1e-8 decay difference most.
    _assert_matches(case, rtol=1e-4)


def _assert_matches(case: dict[str, Any], rtol: float) -> None:
    for step, ours in enumerate(_trajectory(case)):
        expected = _expected(case, step)
        for k in ("w", "b"):
            where = f"step {step}, {k}"
            torch.testing.assert_close(
                ours[k], expected[k], rtol=rtol, atol=1e-12, msg=lambda m, w=where: f"{w}: {m}"
            )


@pytest.mark.parametrize(
    "case", [c for c in TRANSFORM_CASES if c["id"] not in OPTAX_BUGS], ids=lambda c: c["id"]
)
def test_transform_matches_optax(case: dict[str, Any]):
    _assert_matches(case, rtol=1e-10)


@pytest.mark.parametrize(
    "case", [c for c in GOLDENS["cases"] if c["id"] in OPTAX_BUGS], ids=lambda c: c["id"]
)
def test_optax_bug_is_not_copied(case: dict[str, Any]):
    ours = _trajectory(case)
    differs = any(
        not torch.allclose(ours[s][k], _expected(case, s)[k], rtol=1e-6, atol=1e-9)
        for s in range(len(ours))
        for k in ("w", "b")
    )
    assert differs, "matches optax's known bug"
    start = GOLDEN.loss(GOLDEN.init_params(torch.float64))
    final = GOLDEN.loss({k: v.reshape(GOLDEN.init_params(torch.float64)[k].shape)
                         for k, v in ours[-1].items()})  # fmt: skip
    assert final < start


def test_every_named_optimizer_but_noisy_sgd_has_goldens():
    covered = {c["name"] for c in OPTIMIZER_CASES}
    # lbfgs needs value=, grad=, value_fn=: its goldens are in test_linesearch.py; the
    # optimistic Adams' are in test_wrappers.py (optax_wrapper_goldens.json).
    later = {"lbfgs", "optimistic_adam", "optimistic_adam_v2"}
    assert set(tf.optimizers.__all__) - covered == {"noisy_sgd", *later}
