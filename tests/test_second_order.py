"""Curvature utilities and optax's smaller functions: against optax 0.2.8 (float64 goldens)
and against dense references (`torch.autograd.functional.hessian`, `torch.linalg.eigh`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import torchopt_fn as tf

F64 = torch.float64
GOLDENS = json.loads((Path(__file__).parent / "goldens" / "optax_wrapper_goldens.json").read_text())


@pytest.mark.parametrize("case", GOLDENS["functions"], ids=lambda c: c["expr"])
def test_function_matches_optax(case):
    given = GOLDENS["function_input"]
    namespace = {
        "grads": {k: torch.tensor(v, dtype=F64) for k, v in given["grads"].items()},
        "spd": torch.tensor(given["spd"], dtype=F64),
        "v0": torch.tensor(given["v0"], dtype=F64),
    }
    result = eval("tf." + case["expr"], {"tf": tf, **namespace})
    expected = case["result"]
    got, want = result[0], expected[0]
    if isinstance(want, dict):
        for k in want:
            torch.testing.assert_close(got[k].to(F64), torch.tensor(want[k], dtype=F64))
    else:
        torch.testing.assert_close(torch.as_tensor(got, dtype=F64), torch.tensor(want, dtype=F64))
    if "clip" in case["expr"]:  # the counts of clipped examples
        counts = result[1]
        if isinstance(expected[1], dict):
            assert {k: int(v) for k, v in counts.items()} == expected[1]
        else:
            assert int(counts) == expected[1]
    elif "power_iteration" in case["expr"]:
        torch.testing.assert_close(result[1], torch.tensor(expected[1], dtype=F64))


def _loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = torch.tanh(x @ params["w"] + params["b"])
    return ((out - y) ** 2).sum() + 0.1 * (params["w"] ** 4).sum()


def _problem() -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = {
        "w": torch.randn(3, 2, generator=g, dtype=F64),
        "b": torch.randn(2, generator=g, dtype=F64),
    }
    x, y = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 2, generator=g, dtype=F64)
    flat, unravel = tf.ravel_tree(params)
    hessian = torch.autograd.functional.hessian(lambda v: _loss(unravel(v), x, y), flat)
    return params, x, y, hessian


def test_hvp_and_hessian_diag_equal_the_dense_hessian():
    params, x, y, hessian = _problem()
    v = torch.linspace(-1, 1, hessian.shape[0], dtype=F64)
    product = tf.ravel_tree(tf.hvp(_loss, v, params, x, y))[0]
    torch.testing.assert_close(product, hessian @ v)
    torch.testing.assert_close(tf.hessian_diag(_loss, params, x, y), torch.diagonal(hessian))


def test_fisher_diag_is_the_squared_gradient():
    params, x, y, _ = _problem()
    grads = torch.func.grad(_loss)(params, x, y)
    torch.testing.assert_close(tf.fisher_diag(_loss, params, x, y), tf.ravel_tree(grads)[0] ** 2)


def test_hutchinson_estimate_is_the_mean_of_z_times_hz_which_is_unbiased():
    params, x, y, hessian = _problem()
    n = 32
    estimate = tf.hutchinson_diag_hessian(
        lambda p: _loss(p, x, y), params, generator=torch.Generator().manual_seed(1), num_samples=n
    )
    g = torch.Generator().manual_seed(1)  # the same Rademacher draws, leaf by leaf

    def draw(p: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, p.shape, generator=g).to(F64) * 2 - 1

    zs = [tf.ravel_tree(tf.tree_map(draw, params))[0] for _ in range(n)]
    expected = torch.stack([z * (hessian @ z) for z in zs]).mean(0)
    torch.testing.assert_close(tf.ravel_tree(estimate)[0], expected, rtol=1e-12, atol=1e-12)
    # Unbiased: E[z z^T] = I, so over every sign pattern the mean of z * Hz is diag(H).
    d = hessian.shape[0]
    signs = torch.tensor([[(k >> i) & 1 for i in range(d)] for k in range(2**d)], dtype=F64)
    signs = 2 * signs - 1
    mean = (signs * (signs @ hessian.T)).mean(0)
    torch.testing.assert_close(mean, torch.diagonal(hessian), rtol=1e-12, atol=1e-12)


def test_power_iteration_on_a_hessian_vector_product():
    params, x, y, hessian = _problem()
    top = torch.linalg.eigvalsh(hessian).abs().max()
    flat, unravel = tf.ravel_tree(params)
    value, _ = tf.power_iteration(
        lambda v: tf.hvp(_loss, tf.ravel_tree(v)[0], params, x, y),
        v0=unravel(torch.ones_like(flat)),
        num_iters=500,
        error_tolerance=1e-10,
    )
    assert float(abs(value)) == pytest.approx(float(top), rel=1e-6)
    with pytest.raises(ValueError, match="v0"):
        tf.power_iteration(lambda v: v)


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_matrix_inverse_pth_root_equals_the_eigendecomposition(p):
    g = torch.Generator().manual_seed(p)
    a = torch.randn(5, 5, generator=g, dtype=F64)
    spd = a @ a.T + 0.5 * torch.eye(5, dtype=F64)
    root, error = tf.matrix_inverse_pth_root(spd, p, ridge_epsilon=0.0, error_tolerance=1e-12)
    values, vectors = torch.linalg.eigh(spd)
    expected = vectors @ torch.diag(values ** (-1.0 / p)) @ vectors.T
    torch.testing.assert_close(root, expected, rtol=1e-6, atol=1e-8)
    assert float(error) < 1e-6


def test_small_optax_functions():
    x = torch.tensor([0.0, 0.0])
    assert float(tf.safe_norm(x, 1e-3)) == pytest.approx(1e-3)  # the floor, finite gradient
    assert torch.isfinite(torch.func.grad(lambda v: tf.safe_norm(v, 1e-3))(x)).all()
    assert float(tf.safe_root_mean_squares(torch.tensor([3.0, 4.0]), 0.1)) == pytest.approx(
        12.5**0.5
    )
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    tf.scale_gradient(w, 0.5).sum().backward()
    assert w.grad.tolist() == [0.5, 0.5]
    assert (
        tf.tree_dtype({"a": torch.ones(1), "b": torch.ones(1, dtype=F64)}, "lowest")
        == torch.float32
    )
    with pytest.raises(ValueError, match="dtypes"):
        tf.tree_dtype({"a": torch.ones(1), "b": torch.ones(1, dtype=F64)})
    assert tf.tree_allclose({"a": torch.ones(1)}, {"a": torch.ones(1)})
    assert tf.multi_transform is tf.partition and tf.global_norm is tf.tree_l2_norm
    with pytest.raises(ValueError, match="batch axis"):
        tf.per_example_global_norm_clip({"w": torch.ones(()), "b": torch.ones(3)}, 1.0)
