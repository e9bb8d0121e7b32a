"""Reference maths for `torchopt_fn.transforms._scaling`: the Polyak step size.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN
from tests.transforms.loops import (
    F64,
    check_against_trajectory,
    reference,
    trajectory_cases,
)


@reference
def ref_polyak(state, g, p, t, value):
    """Stochastic Polyak step: min((f - f*) / (|g|^2 + eps), gamma_max), SPS+ clips the gap."""
    kw = {"f_min": 0.0, "max_learning_rate": 1.0, "eps": 0.0, "variant": "sps"}
    kw.update(state["kw"])
    sq = sum(float((v**2).sum()) for v in g.values())
    gap = float(value) - kw["f_min"]
    if kw["variant"] == "sps+":
        gap = max(gap, 0.0)
    step = (
        0.0 if sq + kw["eps"] <= 2.0**-52 else min(gap / (sq + kw["eps"]), kw["max_learning_rate"])
    )
    return {k: step * v for k, v in g.items()}


TRAJECTORY_CASES = [
    ("scale_by_polyak", {}, ref_polyak, {"value": True}),
    (
        "scale_by_polyak",
        {"f_min": 1.2, "max_learning_rate": 0.1, "eps": 1e-3, "variant": "sps+"},
        ref_polyak,
        {"value": True},
    ),
    ("scale_by_polyak", {"f_min": 1.5}, ref_polyak, {"value": True}),  # negative gap: ascent,
    ("scale_by_polyak", {"f_min": 1.5, "variant": "sps+"}, ref_polyak, {"value": True}),
]


@trajectory_cases(TRAJECTORY_CASES)
def test_matches_reference_trajectory(name, kwargs, reference, how):
    check_against_trajectory(name, kwargs, reference, how)


def test_polyak_step_is_zero_for_a_zero_gradient():
    tx = tf.scale_by_polyak()
    g = {"w": torch.zeros(3, dtype=F64)}
    u, _ = tx.update(g, tx.init(g), value=torch.tensor(5.0, dtype=F64))
    assert torch.equal(u["w"], g["w"])


def test_polyak_without_value_raises():
    tx = tf.scale_by_polyak()
    g = GOLDEN.grad(GOLDEN.init_params(F64))
    with pytest.raises(ValueError, match="value="):
        tx.update(g, tx.init(g))
