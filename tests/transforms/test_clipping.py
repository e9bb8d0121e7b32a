"""Reference maths for `torchopt_fn.transforms._clipping`: block-RMS and adaptive gradient clipping.

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import pytest
import torch

import torchopt_fn as tf
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


# --------------------------------------------------------------------------- torch's clip


def _torch_clip_then_adamw(dtype: torch.dtype, steps: int, **clip_kw):
    """torch's idiom: ``clip_grad_norm_`` over the model's parameters, then AdamW."""
    gen = torch.Generator().manual_seed(0)
    grads = [
        [
            torch.randn(4, 3, generator=gen, dtype=dtype) * 3,
            torch.randn(3, generator=gen, dtype=dtype),
        ]
        for _ in range(steps)
    ]
    start = [
        torch.randn(4, 3, generator=gen, dtype=dtype),
        torch.randn(3, generator=gen, dtype=dtype),
    ]
    theirs = [p.clone().requires_grad_() for p in start]
    ref = torch.optim.AdamW(theirs, lr=0.05, weight_decay=0.1, foreach=False)
    ours = [p.clone().requires_grad_() for p in start]
    tx = tf.chain(
        tf.clip_by_torch_global_norm(1.0, **clip_kw),
        tf.from_torch(torch.optim.AdamW, lr=0.05, weight_decay=0.1),
    )
    opt = tf.Optimizer(ours, tx)
    for g in grads:
        for p, q, x in zip(theirs, ours, g):
            p.grad, q.grad = x.clone(), x.clone()
        torch.nn.utils.clip_grad_norm_(theirs, 1.0, **clip_kw)
        ref.step()
        opt.step()
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
def test_clip_by_torch_global_norm_follows_clip_grad_norm_then_adamw(norm_type):
    ours, theirs = _torch_clip_then_adamw(torch.float64, 20, norm_type=norm_type)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    ours, theirs = _torch_clip_then_adamw(torch.float32, 20, norm_type=norm_type)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # a few float32 ulps


def test_clip_by_torch_global_norm_is_bit_equal_to_clip_grad_norm():
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        for scale in (0.01, 10.0):
            grads = [
                torch.randn(5, 3, generator=gen, dtype=dtype) * scale,
                torch.randn(7, generator=gen, dtype=dtype),
            ]
            params = [torch.zeros_like(g, requires_grad=True) for g in grads]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            tx = tf.clip_by_torch_global_norm(1.0)
            out, state = tx.update(grads, tx.init(grads))
            assert all(torch.equal(u, p.grad) for u, p in zip(out, params))
            assert torch.equal(state.norm, norm)


def test_clip_by_torch_global_norm_raises_on_a_non_finite_norm_when_asked():
    grads = {"w": torch.tensor([1.0, float("inf")])}
    tx = tf.clip_by_torch_global_norm(1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        tx.update(grads, tx.init(grads))
    out, _ = tf.clip_by_torch_global_norm(1.0).update(grads, tx.init(grads))
    assert out["w"].isnan().any()  # as torch: inf / inf
    with pytest.raises(ValueError, match="norm_type"):
        tf.clip_by_torch_global_norm(1.0, norm_type=0.0)
