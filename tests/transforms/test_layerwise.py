"""Reference maths for `torchopt_fn.transforms._layerwise`:
trust ratios, NovoGrad and centralization.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.transforms.loops import (
    case_id,
    check_against_loop,
    check_against_trajectory,
    random_problem,
    reference,
    trajectory_cases,
)


def ref_novograd(gs, p, b1=0.9, b2=0.25, eps=1e-8, eps_root=0.0, weight_decay=0.0):
    m, v, out = 0 * p, 0.0, []
    for t, g in enumerate(gs, 1):
        norm_sq = float((g * g).sum())
        if t == 1:  # the paper starts both moments at the first gradient's values
            v = norm_sq
            m = g / (math.sqrt(v + eps_root) + eps) + weight_decay * p
        else:
            v = b2 * v + (1 - b2) * norm_sq
            m = b1 * m + g / (math.sqrt(v + eps_root) + eps) + weight_decay * p
        out.append(m)
    return out


@reference
def ref_trust_ratio(state, g, p, t, value):
    """LARS/LAMB trust ratio per leaf: eta * max(|p|, m) / (max(|g|, m) + eps), 1 at a zero norm."""
    kw = {"min_norm": 0.0, "trust_coefficient": 1.0, "eps": 0.0}
    kw.update(state["kw"])
    u = {}
    for k in g:
        pn = max(p[k].norm().item(), kw["min_norm"])
        gn = max(g[k].norm().item(), kw["min_norm"])
        ratio = 1.0 if pn == 0 or gn == 0 else kw["trust_coefficient"] * pn / (gn + kw["eps"])
        u[k] = g[k] * ratio
    return u


@reference
def ref_centralize(state, g, p, t, value):
    return {k: v - v.mean(dim=1, keepdim=True) if v.dim() == 2 else v for k, v in g.items()}


REFERENCES = {
    "scale_by_novograd": ref_novograd,
}

REFERENCE_CASES: list[tuple[str, dict[str, Any]]] = [
    ("scale_by_novograd", {}),
    ("scale_by_novograd", {"b1": 0.5, "b2": 0.7, "eps_root": 1e-3, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=case_id)
def test_matches_reference_loop(case):
    check_against_loop(case, REFERENCES)


TRAJECTORY_CASES = [
    ("scale_by_trust_ratio", {}, ref_trust_ratio, {}),
    (
        "scale_by_trust_ratio",
        {"min_norm": 1.0, "trust_coefficient": 0.01, "eps": 1e-3},
        ref_trust_ratio,
        {},
    ),
    ("centralize", {}, ref_centralize, {}),
]


@trajectory_cases(TRAJECTORY_CASES)
def test_matches_reference_trajectory(name, kwargs, reference, how):
    check_against_trajectory(name, kwargs, reference, how)


def test_novograd_weight_decay_needs_params():
    params, grads = random_problem(seed=2, steps=1)
    tx = tf.scale_by_novograd(weight_decay=0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(grads[0], tx.init(params))
    no_decay = tf.scale_by_novograd()
    no_decay.update(grads[0], no_decay.init(params))


def test_trust_ratio_is_one_at_zero_norms():
    tx = tf.scale_by_trust_ratio(trust_coefficient=0.5)
    params = {"zero": torch.zeros(3), "p": torch.ones(3)}
    g = {"zero": torch.ones(3), "p": torch.zeros(3)}
    u, _ = tx.update(g, tx.init(params), params)
    torch.testing.assert_close(u["zero"], g["zero"])
    torch.testing.assert_close(u["p"], g["p"])
