"""Reference maths for `torchopt_fn.transforms._sign`:
Lion and Rprop (against torch.optim.Rprop and optax's lagged golden).

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN, GOLDENS_PATH
from tests.transforms.loops import (
    F64,
    LR,
    STEPS,
    Params,
    assert_trajectories_close,
    case_id,
    check_against_loop,
    clone_params,
    trajectory,
)


def ref_lion(gs, p, b1=0.9, b2=0.99, mode="hard", smooth_beta=1.0):
    m, out = 0 * p, []
    for g in gs:
        c = b1 * m + (1 - b1) * g
        if mode == "hard":
            out.append(torch.sign(c))
        elif mode == "smooth":
            out.append(torch.tanh(smooth_beta * c))
        else:
            out.append(torch.where(c.abs() < 1, c, torch.sign(c)))
        m = b2 * m + (1 - b2) * g
    return out


def ref_rprop_optax_lagged(steps: int = STEPS, learning_rate: float = 0.01) -> list[Params]:
    """optax 0.2.8's scale_by_rprop, bug included: it returns the previous step's update."""
    p = GOLDEN.init_params(F64)
    step_size = {k: torch.full_like(v, learning_rate) for k, v in p.items()}
    prev = {k: torch.zeros_like(v) for k, v in p.items()}
    out = []
    for _ in range(steps):
        g = GOLDEN.grad(p)
        u = {}
        for k in p:
            s = g[k] * prev[k]
            grown = torch.where(s > 0, 1.2 * step_size[k], 0.5 * step_size[k]).clamp(1e-6, 50.0)
            step_size[k] = torch.where(s == 0, step_size[k], grown)
            new = torch.where(s < 0, 0.0, step_size[k] * g[k].sign())
            u[k] = torch.where(s < 0, 0.0, prev[k])
            prev[k] = new
        p = {k: p[k] + LR * u[k] for k in p}
        out.append(clone_params(p))
    return out


REFERENCES = {
    "scale_by_lion": ref_lion,
}

REFERENCE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("scale_by_lion", {}),
    ("scale_by_lion", {"b1": 0.5, "b2": 0.8, "mode": "smooth", "smooth_beta": 3.0}),
    ("scale_by_lion", {"b1": 0.3, "mode": "refined"}),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=case_id)
def test_matches_reference_loop(case):
    check_against_loop(case, REFERENCES)


def test_optax_rprop_golden_is_the_lagged_update_we_do_not_copy():
    case = next(
        c
        for c in json.loads(GOLDENS_PATH.read_text())["cases"]
        if c["id"] == "scale_by_rprop_optax"
    )
    traj = case["trajectory"]
    expected = [{k: torch.tensor(traj[k][s], dtype=F64) for k in traj} for s in range(STEPS)]
    assert_trajectories_close(ref_rprop_optax_lagged(**case["kwargs"]), expected, 1e-10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"learning_rate": 0.01},
        # Clipping at both bounds engages on this problem.
        {
            "learning_rate": 0.05,
            "eta_minus": 0.3,
            "eta_plus": 1.5,
            "min_step_size": 1e-2,
            "max_step_size": 0.1,
        },
    ],
)
def test_rprop_matches_torch_optim_rprop(kwargs):
    tx = tf.chain(tf.scale_by_rprop(**kwargs), tf.scale(-1.0))
    ours = trajectory(tx, steps=40)
    params = GOLDEN.init_params(F64)
    opt = torch.optim.Rprop(
        list(params.values()),
        lr=kwargs["learning_rate"],
        etas=(kwargs.get("eta_minus", 0.5), kwargs.get("eta_plus", 1.2)),
        step_sizes=(kwargs.get("min_step_size", 1e-6), kwargs.get("max_step_size", 50.0)),
    )
    expected = []
    for _ in range(40):
        for p, g in zip(params.values(), GOLDEN.grad(params).values()):
            p.grad = g
        opt.step()
        expected.append(clone_params(params))
    assert_trajectories_close(ours, expected, 1e-12)


def test_rprop_first_update_is_applied_at_once():
    tx = tf.scale_by_rprop(0.1)
    g = {"w": torch.tensor([2.0, -1.0, 0.0], dtype=F64)}
    u, state = tx.update(g, tx.init(g))
    torch.testing.assert_close(u["w"], torch.tensor([0.1, -0.1, 0.0], dtype=F64))
    # A sign flip shrinks the step size and skips the step; the flipped gradient is forgotten.
    u, state = tx.update({"w": torch.tensor([1.0, 1.0, 1.0], dtype=F64)}, state)
    torch.testing.assert_close(u["w"], torch.tensor([0.12, 0.0, 0.1], dtype=F64))
    torch.testing.assert_close(state.step_sizes["w"], torch.tensor([0.12, 0.05, 0.1], dtype=F64))
    u, state = tx.update({"w": torch.tensor([1.0, 1.0, 1.0], dtype=F64)}, state)
    torch.testing.assert_close(u["w"], torch.tensor([0.144, 0.05, 0.12], dtype=F64))
