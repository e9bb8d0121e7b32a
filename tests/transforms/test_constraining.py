"""Reference maths for `torchopt_fn.transforms._constraining`:
non-negative parameters and NaN-free updates.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import torch

import torchopt_fn as tf
from tests.transforms.loops import (
    check_against_trajectory,
    reference,
    trajectory_cases,
)


@reference
def ref_nonnegative(state, u, p, t, value):
    return {k: torch.where(p[k] + u[k] < 0, -p[k], u[k]) for k in u}


TRAJECTORY_CASES = [
    ("keep_params_nonnegative", {}, ref_nonnegative, {"scale_first": True}),
]


@trajectory_cases(TRAJECTORY_CASES)
def test_matches_reference_trajectory(name, kwargs, reference, how):
    check_against_trajectory(name, kwargs, reference, how)


def test_zero_nans_zeroes_nans_and_records_where():
    tx = tf.zero_nans()
    nan, inf = float("nan"), float("inf")
    params = {"a": torch.zeros(3), "b": torch.zeros(2)}
    state = tx.init(params)
    assert not any(tf.tree_leaves(state.found_nan))
    u, state = tx.update({"a": torch.tensor([1.0, nan, inf]), "b": torch.ones(2)}, state)
    torch.testing.assert_close(u["a"], torch.tensor([1.0, 0.0, inf]))
    assert bool(state.found_nan["a"]) and not bool(state.found_nan["b"])
    _, state = tx.update({"a": torch.ones(3), "b": torch.ones(2)}, state)
    assert not bool(state.found_nan["a"])


def test_keep_params_nonnegative_moves_negative_params_to_zero():
    tx = tf.keep_params_nonnegative()
    params = {"w": torch.tensor([-1.0, 0.5, 2.0])}
    u, _ = tx.update({"w": torch.tensor([0.5, -1.0, 0.1])}, tx.init(params), params)
    torch.testing.assert_close(tf.apply_updates(params, u)["w"], torch.tensor([0.0, 0.0, 2.1]))
