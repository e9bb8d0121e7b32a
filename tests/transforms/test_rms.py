"""Reference maths for `torchopt_fn.transforms._rms`:
RMSProp, its centred form, Adagrad and Adadelta.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.transforms.loops import (
    F64,
    case_id,
    check_against_loop,
)


def _rms_step(g, var, eps, eps_in_sqrt):
    return g / torch.sqrt(var + eps) if eps_in_sqrt else g / (torch.sqrt(var) + eps)


def ref_rms(gs, p, decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt=True, bias_correction=False):
    v, out = 0 * p + initial_scale, []
    for t, g in enumerate(gs, 1):
        v = decay * v + (1 - decay) * g * g
        v_hat = v / (1 - decay**t) if bias_correction else v
        out.append(_rms_step(g, v_hat, eps, eps_in_sqrt))
    return out


def ref_stddev(
    gs, p, decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt=True, bias_correction=False
):
    m, v, out = 0 * p, 0 * p + initial_scale, []
    for t, g in enumerate(gs, 1):
        m = decay * m + (1 - decay) * g
        v = decay * v + (1 - decay) * g * g
        c = 1 - decay**t if bias_correction else 1.0
        out.append(_rms_step(g, v / c - (m / c) ** 2, eps, eps_in_sqrt))
    return out


def ref_rss(gs, p, initial_accumulator_value=0.1, eps=1e-7):
    s, out = 0 * p + initial_accumulator_value, []
    for g in gs:
        s = s + g * g
        out.append(torch.where(s > 0, g / torch.sqrt(s + eps), 0.0))
    return out


def ref_adadelta(gs, p, rho=0.9, eps=1e-6):
    e_g, e_x, out = 0 * p, 0 * p, []
    for g in gs:
        e_g = rho * e_g + (1 - rho) * g * g
        dx = torch.sqrt(e_x + eps) / torch.sqrt(e_g + eps) * g
        e_x = rho * e_x + (1 - rho) * dx * dx
        out.append(dx)
    return out


REFERENCES = {
    "scale_by_rms": ref_rms,
    "scale_by_stddev": ref_stddev,
    "scale_by_rss": ref_rss,
    "scale_by_adadelta": ref_adadelta,
}

REFERENCE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("scale_by_adadelta", {}),
    ("scale_by_adadelta", {"rho": 0.5, "eps": 1e-3}),
    ("scale_by_rms", {}),
    ("scale_by_rms", {"decay": 0.99, "eps_in_sqrt": False, "bias_correction": True}),
    ("scale_by_rms", {"eps": 1e-2, "initial_scale": 0.3}),
    ("scale_by_stddev", {}),
    # With bias correction the first centred variance is 0 up to rounding, so eps goes inside.
    ("scale_by_stddev", {"eps": 1e-3, "bias_correction": True}),
    ("scale_by_stddev", {"decay": 0.5, "initial_scale": 1.0, "eps_in_sqrt": False}),
    ("scale_by_rss", {}),
    ("scale_by_rss", {"initial_accumulator_value": 0.0, "eps": 0.0}),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=case_id)
def test_matches_reference_loop(case):
    check_against_loop(case, REFERENCES)


def test_rms_and_stddev_state_types_follow_bias_correction():
    params = {"w": torch.zeros(2, dtype=F64)}
    assert type(tf.scale_by_rms().init(params)) is tf.ScaleByRmsState
    assert type(tf.scale_by_rms(bias_correction=True).init(params)) is tf.ScaleByRmsWithCountState
    assert type(tf.scale_by_stddev().init(params)) is tf.ScaleByRStdDevState
    with_count = tf.scale_by_stddev(bias_correction=True).init(params)
    assert type(with_count) is tf.ScaleByRStdDevWithCountState
