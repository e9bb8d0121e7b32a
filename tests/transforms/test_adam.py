"""Reference maths for `torchopt_fn.transforms._adam`: Adam's relatives.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.transforms.loops import (
    case_id,
    check_against_loop,
)


def _nesterov(m: torch.Tensor, g: torch.Tensor, b1: float, t: int) -> torch.Tensor:
    return b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)


def ref_amsgrad(
    gs,
    p,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    bias_correction_mu=True,
    bias_correction_nu=True,
):
    m, v, v_max, out = 0 * p, 0 * p, 0 * p, []
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t) if bias_correction_mu else m
        v_hat = v / (1 - b2**t) if bias_correction_nu else v
        v_max = torch.maximum(v_max, v_hat)
        out.append(m_hat / (torch.sqrt(v_max + eps_root) + eps))
    return out


def ref_adamax(gs, p, b1=0.9, b2=0.999, eps=1e-8):
    m, u, out = 0 * p, 0 * p, []
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        u = torch.maximum(b2 * u, g.abs() + eps)
        out.append(m / (1 - b1**t) / u)
    return out


def ref_radam(gs, p, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0, nesterov=False):
    m, v, out = 0 * p, 0 * p, []
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = _nesterov(m, g, b1, t) if nesterov else m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho >= threshold:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            out.append(r * m_hat / (torch.sqrt(v_hat + eps_root) + eps))
        else:
            out.append(m_hat)
    return out


def ref_belief(gs, p, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
    m, s, out = 0 * p, 0 * p, []
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root
        m_hat = _nesterov(m, g, b1, t) if nesterov else m / (1 - b1**t)
        out.append(m_hat / (torch.sqrt(s / (1 - b2**t)) + eps))
    return out


def ref_yogi(gs, p, b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, initial_accumulator_value=1e-6):
    m, v, out = 0 * p + initial_accumulator_value, 0 * p + initial_accumulator_value, []
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        v = v - (1 - b2) * torch.sign(v - g * g) * g * g
        out.append(m / (1 - b1**t) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps))
    return out


def ref_adan(gs, p, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=0.0):
    m, v, n, prev, out = 0 * p, 0 * p, 0 * p, None, []
    for t, g in enumerate(gs, 1):
        diff = 0 * g if prev is None else g - prev
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diff
        n = b3 * n + (1 - b3) * (g + (1 - b2) * diff) ** 2
        m_hat, v_hat, n_hat = m / (1 - b1**t), v / (1 - b2**t), n / (1 - b3**t)
        out.append((m_hat + (1 - b2) * v_hat) / (torch.sqrt(n_hat + eps_root) + eps))
        prev = g
    return out


def ref_adam(gs, p, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, bias_correction="moments"):
    """Adam; ``"step"`` is the paper's efficient form (eps before the correction)."""
    m, v, out = 0 * p, 0 * p, []
    for t, g in enumerate(gs, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if bias_correction == "moments":
            out.append(m / (1 - b1**t) / (torch.sqrt(v / (1 - b2**t) + eps_root) + eps))
        else:
            scale = math.sqrt(1 - b2**t) / (1 - b1**t) if bias_correction == "step" else 1.0
            out.append(scale * m / (torch.sqrt(v + eps_root) + eps))
    return out


REFERENCES = {
    "scale_by_adam": ref_adam,
    "scale_by_amsgrad": ref_amsgrad,
    "scale_by_adamax": ref_adamax,
    "scale_by_radam": ref_radam,
    "scale_by_belief": ref_belief,
    "scale_by_yogi": ref_yogi,
    "scale_by_adan": ref_adan,
}

REFERENCE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("scale_by_adam", {"b1": 0.8, "eps": 1e-3, "eps_root": 1e-6}),
    ("scale_by_adam", {"b2": 0.9, "eps": 1e-2, "bias_correction": "step"}),
    ("scale_by_adam", {"eps": 1e-2, "eps_root": 1e-4, "bias_correction": "none"}),
    ("scale_by_adamax", {}),
    ("scale_by_adamax", {"b1": 0.5, "b2": 0.9, "eps": 1e-2}),
    ("scale_by_adan", {}),
    ("scale_by_adan", {"b1": 0.5, "b2": 0.6, "b3": 0.7, "eps": 1e-3, "eps_root": 1e-4}),
    ("scale_by_amsgrad", {}),
    ("scale_by_amsgrad", {"b1": 0.8, "b2": 0.95, "eps": 1e-3, "eps_root": 1e-4}),
    ("scale_by_amsgrad", {"bias_correction_mu": False, "bias_correction_nu": False}),
    ("scale_by_belief", {}),
    ("scale_by_belief", {"b1": 0.7, "eps_root": 1e-8, "nesterov": True}),
    ("scale_by_radam", {}),
    ("scale_by_radam", {"b2": 0.9, "eps_root": 1e-6, "threshold": 4.0, "nesterov": True}),
    ("scale_by_yogi", {}),
    (
        "scale_by_yogi",
        {"b1": 0.8, "b2": 0.9, "eps": 1e-2, "eps_root": 1e-5, "initial_accumulator_value": 0.5},
    ),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=case_id)
def test_matches_reference_loop(case):
    check_against_loop(case, REFERENCES)
