"""Projections against optax 0.2.8 (float64 goldens) and their torch-side behaviour."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import torchopt_fn as tf

F64 = torch.float64
GOLDENS = json.loads((Path(__file__).parent / "goldens" / "optax_wrapper_goldens.json").read_text())


def _inputs(dtype: torch.dtype = F64) -> dict[str, Any]:
    x = {k: torch.tensor(v, dtype=dtype) for k, v in GOLDENS["projection_input"].items()}
    a = tf.tree_map(lambda v: v**2 + 0.1, x)
    lo, hi = tf.tree_map(lambda v: -0.5 * v, a), a
    return {"x": x, "a": a, "lo": lo, "hi": hi}


@pytest.mark.parametrize("case", GOLDENS["projections"], ids=lambda c: c["expr"])
def test_projection_matches_optax(case):
    result = eval("tf." + case["expr"], {"tf": tf, **_inputs()})
    for k, expected in case["result"].items():
        torch.testing.assert_close(
            result[k].reshape(-1), torch.tensor(expected, dtype=F64), rtol=1e-13, atol=1e-15
        )


def test_bounds_may_be_numbers_and_the_hypercube_is_a_box():
    # optax 0.2.8 takes box bounds as trees only; numbers work here, as the docs promise.
    x = _inputs()["x"]
    for k, v in tf.projection_hypercube(x, 0.8).items():
        assert torch.equal(v, x[k].clamp(0.0, 0.8))
    for k, v in tf.projection_box(x, -0.5, torch.tensor(0.5)).items():
        assert torch.equal(v, x[k].clamp(-0.5, 0.5))


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_the_simplex_projection_is_the_closest_point(scale):
    # Optimality (KKT): on the support, x - p is the same constant; off it, x <= that constant.
    x = _inputs()["x"]
    p = tf.projection_simplex(x, scale)
    flat_x = torch.cat([x["b"], x["w"].reshape(-1)])
    flat_p = torch.cat([p["b"], p["w"].reshape(-1)])
    assert float(flat_p.sum()) == pytest.approx(scale, rel=1e-14) and (flat_p >= 0).all()
    gap = (flat_x - flat_p)[flat_p > 0]
    assert torch.allclose(gap, gap[0].expand_as(gap), rtol=0, atol=1e-14)
    assert (flat_x[flat_p == 0] <= gap[0] + 1e-14).all()


def test_simplex_gradient_is_the_projection_jacobian():
    values = torch.tensor([0.3, -1.2, 0.05, 2.0, -0.4, 0.7, 0.9], dtype=F64)
    jac = torch.func.jacrev(lambda v: tf.projection_simplex({"v": v}, 2.5)["v"])(values)
    support = (tf.projection_simplex({"v": values}, 2.5)["v"] > 0).to(F64)
    # d proj / d v = diag(s) - s s^T / |s| on the support s (optax's custom JVP).
    expected = torch.diag(support) - torch.outer(support, support) / support.sum()
    torch.testing.assert_close(jac, expected)


@pytest.mark.parametrize(
    "project",
    [
        lambda x: tf.projection_l1_ball(x, 1.5),
        lambda x: tf.projection_l2_ball(x, 1.0),
        lambda x: tf.projection_simplex(x, 2.0),
        lambda x: tf.projection_linf_ball(x, 0.5),
    ],
    ids=["l1_ball", "l2_ball", "simplex", "linf_ball"],
)
def test_projections_compile_vmap_and_keep_dtypes(project):
    x = _inputs()["x"]
    compiled = torch.compile(project, backend="aot_eager", fullgraph=True)
    for k, v in compiled(x).items():
        torch.testing.assert_close(v, project(x)[k], rtol=1e-14, atol=1e-15)
    batch = tf.tree_map(lambda v: torch.stack([v, 2 * v, -v]), x)
    batched = torch.func.vmap(project)(batch)
    for i in range(3):
        member = project(tf.tree_map(lambda v, i=i: v[i], batch))
        for k in x:
            torch.testing.assert_close(batched[k][i], member[k], rtol=1e-14, atol=1e-15)
    low = project(_inputs(torch.float32)["x"])
    assert all(v.dtype == torch.float32 for v in low.values())


def test_none_leaves_stay_none():
    tree = {"w": torch.tensor([3.0, 4.0]), "frozen": None}
    assert tf.projection_l2_ball(tree)["frozen"] is None
    assert tf.projection_simplex(tree)["frozen"] is None
    assert tf.projection_non_negative(tree)["frozen"] is None
