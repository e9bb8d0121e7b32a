"""GaLore beyond the goldens: larger matrices, dimension numbers, the refresh schedule, the
signs of singular vectors, non-finite gradients.

The goldens' problem has one 4x3 matrix (a left projection). Here: a left projection
(``w``, 8x6), a right one (``v``, 3x5), a 3-D leaf seen as a 3x4 matrix (``a``) and a vector,
rank 2, 8 steps. The numbers were made with optax 0.2.8 (float64):

* ``OPTAX_NO_REFRESH``: ``optax.contrib.galore`` itself with ``update_proj_gap=100`` (only the
  first projector). optax decomposes in float32, so they agree to float32 rounding.
* ``REFERENCE_REFRESH``: with ``update_proj_gap=2``, optax's code with our two deliberate
  differences patched in (its module's ``jnp.float32`` made float64, and its ``lax.cond``
  returning the new projector's columns signed to agree with the old ones). optax unpatched
  flips a projector's sign at most refreshes here (measured: at steps 2, 4 and 6), so its
  trajectory follows its LAPACK's sign choices.

Parameters start at ``0.8 sin(0.37 i + k)`` (``i`` the flat index, ``k`` the leaf's position
in w, v, a, b); the gradient at step ``t`` is ``(1 + (t % 3) / 4)(x^3 - x/2 + cos(x)/10 +
sum(params)/20)``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from torchopt_fn.contrib import GaLoreDimensionNumbers, GaLoreState, galore, scale_by_galore

F64 = torch.float64
SHAPES = {"w": (8, 6), "v": (3, 5), "a": (3, 2, 2), "b": (4,)}
DIMS = {
    "w": GaLoreDimensionNumbers(),
    "v": GaLoreDimensionNumbers(),
    "a": GaLoreDimensionNumbers(0, (1, 2)),
    "b": None,
}
STEPS = 8

OPTAX_NO_REFRESH = {
    "a": [
        7.247096156e-01,
        7.328622030e-01,
        5.798503577e-01,
        1.937993851e-01,
        -5.097636843e-01,
        -7.441869108e-01,
        -7.211327978e-01,
        -6.238661165e-01,
        -6.021846904e-01,
        -6.738291775e-01,
        -6.929704968e-01,
        -4.371886494e-01,
    ],
    "b": [5.022064632e-01, -5.484127561e-01, -7.697289642e-01, -7.417853265e-01],
    "v": [
        7.613673325e-01,
        6.994360487e-01,
        7.146991582e-01,
        7.950611469e-01,
        7.492607512e-01,
        5.894003052e-01,
        1.450508150e-01,
        -4.006257834e-01,
        -7.138752863e-01,
        -6.688855257e-01,
        -6.252250076e-01,
        -5.387371197e-01,
        -5.812637128e-01,
        -5.675835034e-01,
        -2.891343744e-01,
    ],
    "w": [
        -7.606543955e-02,
        5.253419960e-01,
        6.590381722e-01,
        5.887489528e-01,
        5.601514021e-01,
        6.483341154e-01,
        5.742067104e-01,
        6.729256679e-01,
        2.580721786e-01,
        -2.763318451e-01,
        -6.228260715e-01,
        -6.712346975e-01,
        -7.223950460e-01,
        -5.263557237e-01,
        -6.200503202e-01,
        -6.581167544e-01,
        -4.537296636e-01,
        4.804169674e-03,
        3.990045279e-01,
        7.082031906e-01,
        6.639159168e-01,
        6.001380631e-01,
        6.156141376e-01,
        7.060694887e-01,
        5.791702569e-01,
        2.313341718e-01,
        -2.548941863e-01,
        -5.613525660e-01,
        -6.597813498e-01,
        -5.765450117e-01,
        -5.392369156e-01,
        -6.518076191e-01,
        -6.720868695e-01,
        -4.038952929e-01,
        2.829945894e-02,
        4.996491233e-01,
        7.795787913e-01,
        6.874569489e-01,
        5.703044773e-01,
        6.062154651e-01,
        6.578676365e-01,
        6.356765278e-01,
        3.889314524e-01,
        -2.688394560e-01,
        -6.536269640e-01,
        -6.932633184e-01,
        -6.054658748e-01,
        -5.075104524e-01,
    ],
}

REFERENCE_REFRESH = {
    "a": [
        7.2252666161360435e-01,
        7.2419709776584018e-01,
        6.3093234240738605e-01,
        1.6389706135226217e-01,
        -5.8537714044228972e-01,
        -6.2859382022677102e-01,
        -6.2080807083740341e-01,
        -7.5367198315366224e-01,
        -6.1135132112504509e-01,
        -6.7360567665686100e-01,
        -7.2515423118279176e-01,
        -4.1279232401664090e-01,
    ],
    "b": [
        5.0272208690771214e-01,
        -5.4634396969877497e-01,
        -7.4530579568919642e-01,
        -7.0080574096602377e-01,
    ],
    "v": [
        7.8402733831657945e-01,
        6.9757104988056673e-01,
        6.5532062122704382e-01,
        7.6899750098927144e-01,
        7.5554615891875576e-01,
        4.9631992974009775e-01,
        -1.0205556702026083e-01,
        -5.4619282290901627e-01,
        -6.1163947540385799e-01,
        -6.1860529197497716e-01,
        -6.2680102069825094e-01,
        -6.7604348208143028e-01,
        -6.9315160775402540e-01,
        -6.3831898901121109e-01,
        -3.6569971539702573e-01,
    ],
    "w": [
        -8.2516941703154337e-02,
        5.3519195988630897e-01,
        6.9640456926283101e-01,
        6.7122110926114842e-01,
        6.3066563978625789e-01,
        7.0387226861412278e-01,
        6.9177007496050580e-01,
        6.0987018924665148e-01,
        1.7681545746218680e-01,
        -3.0311286393272396e-01,
        -5.6270886676037701e-01,
        -5.9660993630240367e-01,
        -6.6648951494496000e-01,
        -6.6591591736137490e-01,
        -6.9251333528357628e-01,
        -6.1595365484799336e-01,
        -3.3103834427400497e-01,
        5.3147817259537516e-02,
        4.4548791615861161e-01,
        7.0242067300316879e-01,
        6.8297940251085465e-01,
        6.0943026231133091e-01,
        6.6347420744894070e-01,
        7.3417849019669978e-01,
        6.4518356347921835e-01,
        2.1886157696765188e-01,
        -2.6374279451426186e-01,
        -6.1464655707267712e-01,
        -6.5420126553370095e-01,
        -5.7664300046931372e-01,
        -6.4044107109672455e-01,
        -6.1946508484041463e-01,
        -5.5092733519092729e-01,
        -3.2743446737488480e-01,
        5.0626230078357357e-02,
        4.4576459803221719e-01,
        6.7577821557976958e-01,
        7.8716495925950958e-01,
        7.3760339632877014e-01,
        6.5757350360370115e-01,
        6.3382428180813999e-01,
        5.6116904243382604e-01,
        3.4996228345694913e-01,
        -2.9883552632375182e-01,
        -6.0452570613682977e-01,
        -7.1961374246431709e-01,
        -6.2362899250647830e-01,
        -6.1431928884596976e-01,
    ],
}


def _init() -> dict[str, torch.Tensor]:
    return {
        k: 0.8 * torch.sin(0.37 * torch.arange(math.prod(s), dtype=F64) + i).reshape(s)
        for i, (k, s) in enumerate(SHAPES.items())
    }


def _grad(params: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
    total = sum(x.sum() for x in params.values())
    f = 1 + 0.25 * (t % 3)
    return {k: f * (x**3 - 0.5 * x + 0.1 * torch.cos(x) + 0.05 * total) for k, x in params.items()}


def _run(tx: tf.GradientTransformation, steps: int = STEPS) -> dict[str, torch.Tensor]:
    params = _init()
    state = tx.init(params)
    for t in range(steps):
        updates, state = tx.update(_grad(params, t), state, params)
        params = tf.apply_updates(params, updates)
    return params


def _assert_params(got: dict[str, torch.Tensor], want: dict[str, list], rtol: float, atol: float):
    for k, v in want.items():
        torch.testing.assert_close(
            got[k].reshape(-1), torch.tensor(v, dtype=F64), rtol=rtol, atol=atol, msg=k
        )


def _galore(update_proj_gap: int) -> tf.GradientTransformation:
    return galore(
        0.05,
        rank=2,
        update_proj_gap=update_proj_gap,
        weight_decay=0.1,
        weight_dimension_numbers=DIMS,
    )


def test_galore_matches_optax_until_its_first_refresh():
    _assert_params(_run(_galore(100)), OPTAX_NO_REFRESH, rtol=1e-5, atol=1e-6)


def test_galore_matches_optax_with_float64_svd_and_kept_signs():
    _assert_params(_run(_galore(2)), REFERENCE_REFRESH, rtol=1e-12, atol=1e-14)


def test_galore_does_not_depend_on_the_signs_lapack_gives(monkeypatch):
    svd = torch.linalg.svd
    calls = []

    def flipping_svd(x, full_matrices=True):
        u, s, vh = svd(x, full_matrices=full_matrices)
        k = s.shape[-1]
        signs = (-1.0) ** (len(calls) + torch.arange(k, dtype=x.dtype))
        calls.append(k)
        return u * signs, s, vh * signs[:, None]

    monkeypatch.setattr(torch.linalg, "svd", flipping_svd)
    _assert_params(_run(_galore(2)), REFERENCE_REFRESH, rtol=1e-12, atol=1e-14)
    assert len(calls) == 4 * 3  # steps 0, 2, 4, 6; three shapes of matrices each


@pytest.mark.parametrize(
    ("shape", "rank", "projector", "moment"),
    [
        ((32, 64), 8, (64, 8), (32, 8)),  # m < n: right projection, moments m x r
        ((64, 32), 8, (64, 8), (8, 32)),  # m > n: left projection, moments r x n
        ((64, 64), 8, (64, 8), (8, 64)),  # square: left
        ((10, 3), 999, (10, 3), (3, 3)),  # the rank clipped to min(m, n)
    ],
)
def test_scale_by_galore_state_shapes(shape, rank, projector, moment):
    state = scale_by_galore(rank=rank).init({"w": torch.zeros(shape)})
    assert isinstance(state, GaLoreState)
    assert state.projector["w"].shape == projector
    assert state.base_optimizer_state.mu["w"].shape == moment
    assert state.base_optimizer_state.nu["w"].shape == moment


def test_scale_by_galore_dimension_numbers_forms():
    params = {"attn": torch.ones(16, 2, 4), "mlp": torch.ones(16, 4), "bias": torch.ones(4)}
    attn = GaLoreDimensionNumbers(reduction_axis=0, output_axis=(1, 2))  # 16 x 8: left
    shapes = lambda tx: {k: tuple(v.shape) for k, v in tx.init(params).projector.items()}  # noqa: E731
    # Default: the 2-D leaves only.
    assert shapes(scale_by_galore(rank=2)) == {"attn": (0, 0), "mlp": (16, 2), "bias": (0, 0)}
    # One spec for every leaf of rank >= 2 (it must fit each of them).
    one = scale_by_galore(rank=2, weight_dimension_numbers=attn)
    three_d = {"attn": params["attn"], "k": torch.ones(3, 2, 4), "bias": params["bias"]}
    assert {k: tuple(v.shape) for k, v in one.init(three_d).projector.items()} == {
        "attn": (16, 2),
        "k": (8, 2),  # 3 x 8: right
        "bias": (0, 0),
    }
    # A tree (None: not projected), or a function of the params returning one.
    tree = {"attn": attn, "mlp": None, "bias": None}
    assert shapes(scale_by_galore(rank=2, weight_dimension_numbers=tree)) == {
        "attn": (16, 2),
        "mlp": (0, 0),
        "bias": (0, 0),
    }
    fn = scale_by_galore(rank=2, weight_dimension_numbers=lambda p: tree)
    grads = {k: torch.rand_like(v) for k, v in params.items()}
    updates, _ = fn.update(grads, fn.init(params))
    assert {k: tuple(v.shape) for k, v in updates.items()} == {
        "attn": (16, 2, 4),
        "mlp": (16, 4),
        "bias": (4,),
    }


@pytest.mark.parametrize(
    ("dims", "match"),
    [
        (GaLoreDimensionNumbers(0, (0, 1)), "disjoint"),
        (GaLoreDimensionNumbers(0, 1), "every axis"),  # axis 2 of the 3-D leaf missing
        (GaLoreDimensionNumbers(0, (1, 2, -1)), "every axis"),  # axis 2 twice
        ({"x": GaLoreDimensionNumbers(), "b": GaLoreDimensionNumbers()}, "rank >= 2"),
    ],
)
def test_scale_by_galore_refuses_dimension_numbers_that_do_not_fit(dims, match):
    params = {"x": torch.ones(4, 2, 3), "b": torch.ones(3)}
    if isinstance(dims, GaLoreDimensionNumbers):
        params = {"x": params["x"]}
    with pytest.raises(ValueError, match=match):
        scale_by_galore(weight_dimension_numbers=dims).init(params)


def test_scale_by_galore_refuses_a_dimension_numbers_tree_of_other_things():
    with pytest.raises(TypeError, match=r"\['w'\]"):
        scale_by_galore(weight_dimension_numbers={"w": (0, 1)}).init({"w": torch.ones(2, 2)})


def test_scale_by_galore_refreshes_every_update_proj_gap_steps(monkeypatch):
    svd = torch.linalg.svd
    calls = []
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    tx = scale_by_galore(rank=3, update_proj_gap=3)
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.zeros(12, 7, dtype=F64)}
    state = tx.init(params)
    projectors = []
    for _ in range(7):
        grads = {"w": torch.randn(12, 7, generator=gen, dtype=F64)}
        _, state = tx.update(grads, state)
        projectors.append(state.projector["w"])
    assert len(calls) == 3  # steps 0, 3, 6; eagerly none on the steps between
    assert projectors[0] is projectors[1] and projectors[1] is projectors[2]
    assert not torch.allclose(projectors[2], projectors[3])
    for p in projectors:
        torch.testing.assert_close(p.mT @ p, torch.eye(3, dtype=F64))


def test_scale_by_galore_same_shape_matrices_share_one_svd(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    grads = {k: torch.randn(6, 4, generator=gen, dtype=F64) for k in ("a", "b")}
    tx = scale_by_galore(rank=2)
    alone = {k: tx.update({k: g}, tx.init({k: g}))[0][k] for k, g in grads.items()}
    svd = torch.linalg.svd
    calls = []
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or svd(*a, **k))
    together, _ = tx.update(grads, tx.init(grads))
    assert len(calls) == 1
    torch.testing.assert_close(together, alone, rtol=1e-14, atol=1e-15)


def test_scale_by_galore_non_finite_gradient_gives_nan_not_an_error():
    params = {"w": torch.ones(4, 3, dtype=F64), "b": torch.ones(3, dtype=F64)}
    bad = {"w": torch.full((4, 3), 0.5, dtype=F64), "b": torch.ones(3, dtype=F64)}
    bad["w"][1, 2] = torch.inf
    tx = scale_by_galore(rank=2, update_proj_gap=1)
    updates, _ = tx.update(bad, tx.init(params))
    assert updates["w"].isnan().all() and updates["b"].isfinite().all()
    # So `apply_if_finite` skips the step and carries on.
    safe = tf.apply_if_finite(galore(0.1, rank=2, update_proj_gap=1), max_consecutive_errors=3)
    state = safe.init(params)
    updates, state = safe.update(bad, state, params)
    assert all(bool((u == 0).all()) for u in updates.values())
    good = {k: torch.full_like(v, 0.5) for k, v in params.items()}
    updates, state = safe.update(good, state, params)
    assert all(bool(u.isfinite().all() and (u != 0).any()) for u in updates.values())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank"),
        ({"rank": 2.0}, TypeError, "rank"),
        ({"update_proj_gap": 0}, ValueError, "update_proj_gap"),
        ({"update_proj_gap": True}, TypeError, "update_proj_gap"),
    ],
)
def test_scale_by_galore_validates_its_arguments(kwargs: dict[str, Any], error, match):
    with pytest.raises(error, match=match):
        scale_by_galore(**kwargs)


def test_galore_in_the_optimizer_adapter_round_trips_its_state():
    torch.manual_seed(0)
    x = torch.randn(16, 6, dtype=F64)

    def model() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    ours, theirs = model().to(F64), model().to(F64)
    make = lambda m: tf.Optimizer(m.parameters(), galore(0.05, rank=2, update_proj_gap=2))  # noqa: E731
    opt = make(ours)
    for _ in range(3):
        opt.zero_grad()
        ours(x).square().mean().backward()
        opt.step()
    theirs.load_state_dict(ours.state_dict())
    other = make(theirs)
    other.load_state_dict(opt.state_dict())
    for o, m in ((opt, ours), (other, theirs)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
