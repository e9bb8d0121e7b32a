"""optax's Muon beyond the goldens: dimension numbers with batch axes, the batched iteration,
and the errors. Its trajectories against optax are in the goldens (tests/test_wrappers.py)."""

from __future__ import annotations

import pytest
import torch

import torchopt_fn as tf

F64 = torch.float64
MDN = tf.contrib.MuonDimensionNumbers


def _reference_orthogonalize(x: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """One matrix, written from the Muon post: Frobenius-normalise, quintic iteration, wide."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.shape[0] > x.shape[1]
    y = x.T if tall else x
    y = y / (y.norm() + 1e-8)
    for _ in range(steps):
        gram = y @ y.T
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.T if tall else y


def test_orthogonalize_matches_the_reference_for_wide_and_tall_matrices():
    gen = torch.Generator().manual_seed(0)
    for shape in [(3, 5), (5, 3), (4, 4)]:
        x = torch.randn(shape, generator=gen, dtype=F64)
        out = tf.contrib.orthogonalize_via_newton_schulz(x)
        torch.testing.assert_close(out, _reference_orthogonalize(x), rtol=1e-13, atol=1e-14)


def test_dimension_numbers_orthogonalize_each_slice_of_a_conv_kernel():
    gen = torch.Generator().manual_seed(1)
    kernel = torch.randn(4, 3, 2, 2, generator=gen, dtype=F64)  # (out, in, kh, kw)
    out = tf.contrib.orthogonalize_via_newton_schulz(
        kernel, dimension_numbers=MDN(reduction_axis=1, output_axis=0)
    )
    for i in range(2):
        for j in range(2):
            # rows = in (reduced), columns = out: the (3, 4) matrix kernel[:, :, i, j].T
            expected = _reference_orthogonalize(kernel[:, :, i, j].T).T
            torch.testing.assert_close(out[:, :, i, j], expected, rtol=1e-13, atol=1e-14)
    # several reduction axes flatten into one: (in * kh * kw) rows, out columns
    flat = tf.contrib.orthogonalize_via_newton_schulz(kernel, dimension_numbers=MDN((1, 2, 3), 0))
    expected = _reference_orthogonalize(kernel.reshape(4, 12).T).T.reshape(4, 3, 2, 2)
    torch.testing.assert_close(flat, expected, rtol=1e-13, atol=1e-14)


def test_scale_by_muon_batches_same_shape_leaves_without_changing_any():
    gen = torch.Generator().manual_seed(2)
    grads = {f"w{i}": torch.randn(3, 5, generator=gen, dtype=F64) for i in range(4)}
    grads["tall"] = torch.randn(5, 3, generator=gen, dtype=F64)
    tx = tf.contrib.scale_by_muon()
    together, _ = tx.update(grads, tx.init(grads))
    for k, g in grads.items():
        alone, _ = tx.update({k: g}, tx.init({k: g}))
        torch.testing.assert_close(together[k], alone[k], rtol=1e-14, atol=1e-15)


def test_muon_sends_matrices_to_muon_and_the_rest_to_adamw_by_dimension_numbers():
    params = {
        "w": torch.ones(4, 3, dtype=F64),
        "emb": torch.ones(5, 3, dtype=F64),
        "b": torch.ones(3, dtype=F64),
    }
    dims = {"w": MDN(), "emb": None, "b": None}
    tx = tf.contrib.muon(0.1, muon_weight_dimension_numbers=dims)
    state = tx.init(params)
    assert set(state.inner_states["muon"][0].mu) == {"w", "emb", "b"}
    assert isinstance(state.inner_states["muon"][0].mu["emb"], tf.MaskedNode)
    grads = tf.tree_map(torch.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    adam, _ = tf.adamw(0.1, eps=1e-8, weight_decay=0.0, nesterov=True).update(
        {"emb": grads["emb"]}, tf.adamw(0.1).init({"emb": params["emb"]}), {"emb": params["emb"]}
    )
    torch.testing.assert_close(updates["emb"], adam["emb"])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: tf.contrib.muon(0.1, ns_coeffs="fast"), "unknown preset"),
        (lambda: tf.contrib.scale_by_muon(ns_coeffs=(1.0, 2.0)), r"shape \(3,\) or \(n, 3\)"),
        (lambda: tf.contrib.scale_by_muon(ns_coeffs=[(1.0, 2.0, 3.0)] * 6), "more than ns_steps"),
        (lambda: tf.contrib.scale_by_muon(preconditioning="polar"), "preconditioning"),
        (lambda: tf.contrib.scale_by_muon(beta=1.0), "beta"),
    ],
)
def test_muon_rejects_bad_hyperparameters_at_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_scale_by_muon_names_a_leaf_that_is_not_a_matrix():
    with pytest.raises(ValueError, match=r"shape \(3,\) needs MuonDimensionNumbers"):
        tf.contrib.scale_by_muon().init({"b": torch.zeros(3)})
    with pytest.raises(ValueError, match="disjoint"):
        tf.contrib.scale_by_muon(weight_dimension_numbers=MDN(0, -2)).init({"w": torch.zeros(2, 3)})


def test_muon_takes_torch_linear_layout_as_one_value_or_a_function_of_the_params():
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Linear(8, 2)).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    grads = tf.tree_map(torch.ones_like, params)
    one = MDN(reduction_axis=1, output_axis=0)  # nn.Linear's (out, in)
    results = []
    for dims in (one, lambda ps: tf.tree_map(lambda p: one if p.ndim == 2 else None, ps)):
        tx = tf.contrib.muon(0.1, muon_weight_dimension_numbers=dims)
        updates, _ = tx.update(grads, tx.init(params), params)
        results.append(updates)
    tf.tree_map(torch.testing.assert_close, *results)
    # the up-projection (fan-in 2, fan-out 8) gets the ratio sqrt(8 / 2) = 2, the down one 1
    up, down = results[0]["0.weight"], results[0]["1.weight"]
    mu_hat = (0.95 / 1.95 + 1.0) * grads["0.weight"]  # Nesterov's first bias-corrected step
    ortho = tf.contrib.orthogonalize_via_newton_schulz(mu_hat, dimension_numbers=one)
    torch.testing.assert_close(up, -0.1 * 2.0 * ortho)
    assert up.abs().max() > down.abs().max()
