"""Reference maths for `torchopt_fn.transforms._accumulation`: optimistic gradients.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import torch

import torchopt_fn as tf
from tests.transforms.loops import (
    F64,
    check_against_trajectory,
    reference,
    trajectory_cases,
)


@reference
def ref_optimistic(state, g, p, t, value):
    """Optimistic gradient: (alpha + beta) g_t - beta g_{t-1}, with g_0 := g_1."""
    alpha, beta = state["kw"].get("alpha", 1.0), state["kw"].get("beta", 1.0)
    prev = state.get("prev", g)
    state["prev"] = g
    return {k: (alpha + beta) * g[k] - beta * prev[k] for k in g}


TRAJECTORY_CASES = [
    ("scale_by_optimistic_gradient", {}, ref_optimistic, {}),
    ("scale_by_optimistic_gradient", {"alpha": 0.5, "beta": 0.8}, ref_optimistic, {}),
]


@trajectory_cases(TRAJECTORY_CASES)
def test_matches_reference_trajectory(name, kwargs, reference, how):
    check_against_trajectory(name, kwargs, reference, how)


def test_optimistic_gradient_first_step_is_alpha_times_gradient():
    tx = tf.scale_by_optimistic_gradient(alpha=0.5, beta=2.0)
    g = {"w": torch.tensor([1.0, -2.0], dtype=F64)}
    u, state = tx.update(g, tx.init(g))
    torch.testing.assert_close(u["w"], 0.5 * g["w"])
    assert not state.is_initial_step
    u, _ = tx.update({"w": torch.tensor([3.0, 0.0], dtype=F64)}, state)
    torch.testing.assert_close(u["w"], torch.tensor([2.5 * 3.0 - 2.0, 4.0], dtype=F64))
