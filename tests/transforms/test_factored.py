"""Reference maths for `torchopt_fn.transforms._factored`: Adafactor's factored RMS and SM3.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import torch

import torchopt_fn as tf
from tests.transforms.loops import (
    F64,
    LR,
    assert_trajectories_close,
    check_against_trajectory,
    reference,
    trajectory,
    trajectory_cases,
)


@reference
def ref_factored_rms(state, g, p, t, value):
    """Shazeer & Stern, Alg. 4: row/column sums R, C of G = g^2 + eps1; V = R C^T / 1^T R."""
    kw = {"decay_rate": 0.8, "step_offset": 0, "min_dim_size_to_factor": 128, "epsilon": 1e-30}
    kw.update(state["kw"])
    beta = 1.0 - (t - kw["step_offset"] + 1.0) ** (-kw["decay_rate"])
    u = {}
    for k, gk in g.items():
        G = gk**2 + kw["epsilon"]
        if gk.dim() == 2 and min(gk.shape) >= kw["min_dim_size_to_factor"]:
            R = beta * state.get(("R", k), 0.0) + (1 - beta) * G.sum(dim=1)
            C = beta * state.get(("C", k), 0.0) + (1 - beta) * G.sum(dim=0)
            state[("R", k)], state[("C", k)] = R, C
            V = torch.outer(R, C) / R.sum()
        else:
            V = beta * state.get(("V", k), 0.0) + (1 - beta) * G
            state[("V", k)] = V
        u[k] = gk / V.sqrt()
    return u


@reference
def ref_sm3(state, g, p, t, value):
    """Anil et al., SM3-II with cover sets = rows and columns, plus optax's momentum and eps."""
    kw = {"b1": 0.9, "b2": 1.0, "eps": 1e-8}
    kw.update(state["kw"])
    c = 1.0 if kw["b2"] == 1.0 else 1.0 - kw["b2"]
    u = {}
    for k, gk in g.items():
        if gk.dim() == 2:
            rows = state.get(("row", k), torch.zeros(gk.shape[0], dtype=F64))
            cols = state.get(("col", k), torch.zeros(gk.shape[1], dtype=F64))
            nu = c * gk**2 + kw["b2"] * torch.minimum(rows[:, None], cols[None, :])
            state[("row", k)], state[("col", k)] = nu.amax(dim=1), nu.amax(dim=0)
        else:
            nu = c * gk**2 + kw["b2"] * state.get(("acc", k), torch.zeros_like(gk))
            state[("acc", k)] = nu
        scaled = torch.where(nu > 0, gk / (nu + kw["eps"]).sqrt(), torch.zeros_like(gk))
        m = kw["b1"] * state.get(("m", k), torch.zeros_like(gk)) + (1 - kw["b1"]) * scaled
        state[("m", k)] = m
        u[k] = m
    return u


TRAJECTORY_CASES = [
    ("scale_by_factored_rms", {}, ref_factored_rms, {}),
    ("scale_by_factored_rms", {"min_dim_size_to_factor": 2}, ref_factored_rms, {}),
    (
        "scale_by_factored_rms",
        {"min_dim_size_to_factor": 3, "decay_rate": 0.5, "step_offset": -2, "epsilon": 1e-3},
        ref_factored_rms,
        {},
    ),
    ("scale_by_sm3", {}, ref_sm3, {}),
    ("scale_by_sm3", {"b1": 0.0, "b2": 0.95, "eps": 1e-4}, ref_sm3, {}),
]


@trajectory_cases(TRAJECTORY_CASES)
def test_matches_reference_trajectory(name, kwargs, reference, how):
    check_against_trajectory(name, kwargs, reference, how)


def test_factored_rms_with_a_float64_schedule_matches_the_paper_exactly():
    def decay(step, rate):
        return 1.0 - (step.to(F64) + 1.0) ** (-rate)

    tx = tf.chain(
        tf.scale_by_factored_rms(min_dim_size_to_factor=2, decay_rate_fn=decay), tf.scale(LR)
    )
    expected = ref_factored_rms(min_dim_size_to_factor=2)
    assert_trajectories_close(trajectory(tx), expected, 1e-12)


def test_factored_rms_state_shapes_follow_the_two_largest_axes():
    tx = tf.scale_by_factored_rms(min_dim_size_to_factor=2)
    params = {
        "t": torch.zeros(5, 2, 7),
        "m": torch.zeros(4, 4),
        "s": torch.zeros(1, 9),
        "v": torch.zeros(3),
    }
    state = tx.init(params)
    # (5, 2, 7): largest axis 2, second largest 0 -> v_row drops axis 2, v_col drops axis 0.
    assert state.v_row["t"].shape == (5, 2) and state.v_col["t"].shape == (2, 7)
    # Ties keep axis order, as optax's argsort: (4, 4) -> largest axis 1, second 0.
    assert state.v_row["m"].shape == (4,) and state.v_col["m"].shape == (4,)
    for k in ("s", "v"):  # not factored: a full moment and (1,) placeholders
        assert state.v[k].shape == params[k].shape and state.v_row[k].shape == (1,)
    u, _ = tx.update({k: torch.ones_like(v) for k, v in params.items()}, state)
    assert all(torch.allclose(x, torch.ones_like(x)) for x in u.values())


def test_sm3_accepts_scalars():
    tx = tf.scale_by_sm3(b1=0.0)
    g = {"s": torch.tensor(2.0, dtype=F64)}
    u, state = tx.update(g, tx.init(g))
    torch.testing.assert_close(u["s"], torch.tensor(2.0 / (4.0 + 1e-8) ** 0.5, dtype=F64))
    assert state.mu["s"][0].shape == ()
