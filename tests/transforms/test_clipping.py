"""Reference maths for `torchopt_fn.transforms._clipping`: block-RMS and adaptive gradient clipping.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import torch

from tests.transforms.loops import (
    check_against_trajectory,
    reference,
    trajectory_cases,
)


@reference
def ref_block_rms(state, g, p, t, value):
    tau = state["kw"]["threshold"]
    return {k: v / max(1.0, float(v.pow(2).mean().sqrt()) / tau) for k, v in g.items()}


@reference
def ref_agc(state, g, p, t, value):
    """Brock et al.: clip unit-wise to lambda * max(|W_i|, eps); units as in optax (or `axis`)."""
    kw = {"eps": 1e-3, "axis": None}
    kw.update(state["kw"])
    u = {}
    for k, gk in g.items():
        axis = (0 if gk.dim() == 2 else None) if kw["axis"] is None else kw["axis"]

        def norm(x, axis=axis):
            return x.norm() if axis is None else x.norm(dim=axis, keepdim=True)

        max_norm = kw["clipping"] * norm(p[k]).clamp(min=kw["eps"])
        gn = norm(gk)
        u[k] = torch.where(gn < max_norm, gk, gk * max_norm / gn.clamp(min=1e-6))
    return u


TRAJECTORY_CASES = [
    ("clip_by_block_rms", {"threshold": 0.5}, ref_block_rms, {}),
    ("clip_by_block_rms", {"threshold": 0.05}, ref_block_rms, {}),
    ("adaptive_grad_clip", {"clipping": 0.1}, ref_agc, {}),
    ("adaptive_grad_clip", {"clipping": 0.3, "eps": 0.5, "axis": -1}, ref_agc, {}),
]


@trajectory_cases(TRAJECTORY_CASES)
def test_matches_reference_trajectory(name, kwargs, reference, how):
    check_against_trajectory(name, kwargs, reference, how)
