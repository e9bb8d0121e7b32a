"""DP-SGD against optax 0.2.8 (float64, noise off), the noise it adds, and its statistics.

The goldens come from /tmp/ckit/privacy_gen.py (optax 0.2.8, jax x64): per-example gradients
from the formula in `per_example_grads`, evaluated on both sides, with ``noise_multiplier=0``
(optax's JAX draws cannot be reproduced in torch). The noise is then checked by feeding it to
optax's formula: the aggregate of any gradients minus the aggregate of zeros with the same
state is the noiseless golden.
"""

from __future__ import annotations

import math

import pytest
import torch

import torchopt_fn as tf
from torchopt_fn.contrib import (
    DifferentiallyPrivateAggregateState,
    differentially_private_aggregate,
    dpsgd,
)

F64 = torch.float64
STEPS = 4
SCALES = [0.2, 1.0, 3.0, 0.05, 0.0]  # per example: some clipped at 1.0, some not, one zero
INIT = {"w": [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], "b": [0.1, 0.2, -0.3]}
CONFIGS = {
    "aggregate": lambda: differentially_private_aggregate(1.0, 0.0, key=0),
    "dpsgd": lambda: dpsgd(0.1, 1.0, 0.0, seed=0),
    "dpsgd_nesterov": lambda: dpsgd(0.1, 0.5, 0.0, seed=0, momentum=0.9, nesterov=True),
}
GOLDENS = {  # name: per step, the params (b, then w row-major) after the step
    "aggregate": [
        [
            -0.11380364599072967,
            0.07084562848471207,
            -0.2837617780234828,
            0.6513217215382103,
            -0.7810664106513177,
            2.1835775691567703,
            1.5618821497117847,
            -0.08891741167791506,
            -0.6978977249826084,
        ],
        [
            -0.11956568718160984,
            0.20813648364306941,
            -0.06798806092565082,
            0.8458527287344753,
            -0.6985145250699537,
            2.115324891425524,
            1.3749252094824411,
            -0.3066498441327218,
            -0.8440026845162778,
        ],
        [
            0.0912580297163412,
            0.41092934144606635,
            0.0313972880318311,
            0.7987025644473038,
            -0.873319583851813,
            1.8950784886984735,
            1.2128227874577053,
            -0.3343689834566955,
            -0.7243017967919254,
        ],
        [
            0.20961859273312633,
            0.3819514015358911,
            -0.13129037687274758,
            0.578994044281402,
            -1.049230889413866,
            1.8456982334360739,
            1.3131978881326383,
            -0.13144650509606307,
            -0.5142695530697875,
        ],
    ],
    "dpsgd": [
        [
            0.12138036459907298,
            0.2129154371515288,
            -0.3016238221976517,
            0.484867827846179,
            -1.0218933589348682,
            1.981642243084323,
            1.4938117850288215,
            0.008891741167791506,
            -0.48021022750173914,
        ],
        [
            0.12195656871816099,
            0.19918635163569307,
            -0.3232011939074349,
            0.4654147271265525,
            -1.0301485474930046,
            1.9884675108574477,
            1.5125074790517559,
            0.03066498441327218,
            -0.4655997315483722,
        ],
        [
            0.10087419702836589,
            0.17890706585539337,
            -0.3331397288031831,
            0.47012974355526965,
            -1.0126680416148186,
            2.0104921511301526,
            1.5287177212542293,
            0.03343689834566955,
            -0.4775698203208074,
        ],
        [
            0.08903814072668738,
            0.1818048598464109,
            -0.3168709623127252,
            0.4921005955718598,
            -0.9950769110586133,
            2.0154301766563925,
            1.5186802111867361,
            0.013144650509606302,
            -0.4985730446930212,
        ],
    ],
    "dpsgd_nesterov": [
        [
            0.12423414899921033,
            0.21570921354898887,
            -0.30020401049655476,
            0.48429547454772265,
            -1.024233064085111,
            1.9786355859733546,
            1.4915522537767292,
            0.008442028628583837,
            -0.4786386144939204,
        ],
        [
            0.13681923591096043,
            0.2083511590851464,
            -0.32404459834887217,
            0.4551479458608709,
            -1.0452662322342865,
            1.9756090059947307,
            1.5079557098242202,
            0.03656071901198403,
            -0.4520293492285813,
        ],
        [
            0.124040085225168,
            0.18514004838686843,
            -0.34677112101462637,
            0.44323375612484733,
            -1.0406157393029263,
            1.9946369821018994,
            1.532412014623668,
            0.05494317021622665,
            -0.44836630565462243,
        ],
        [
            0.10889082094601377,
            0.17689703721482505,
            -0.3442310621247444,
            0.4551847248635609,
            -1.0246083836293998,
            2.0071722152151477,
            1.5355796091750566,
            0.04725335699320766,
            -0.4632968873366172,
        ],
    ],
}


def per_example_grads(k: int) -> dict[str, torch.Tensor]:
    """Step ``k``'s gradients of 5 examples: {"w": (5, 2, 3), "b": (5, 3)}."""

    def g(b: int, j: int) -> float:
        return SCALES[b] * math.sin(0.7 * j + 1.3 * k + 0.5 * b + 0.1)

    w = [[[g(b, 3 * r + c) for c in range(3)] for r in range(2)] for b in range(len(SCALES))]
    bias = [[g(b, 6 + c) for c in range(3)] for b in range(len(SCALES))]
    return {"w": torch.tensor(w, dtype=F64), "b": torch.tensor(bias, dtype=F64)}


def _init() -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=F64) for k, v in INIT.items()}


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([params["b"], params["w"].ravel()])


@pytest.mark.parametrize("name", CONFIGS)
def test_dpsgd_matches_optax_without_noise(name: str):
    tx = CONFIGS[name]()
    params = _init()
    state = tx.init(params)
    for k in range(STEPS):
        updates, state = tx.update(per_example_grads(k), state, params)
        params = tf.apply_updates(params, updates)
        torch.testing.assert_close(
            _flat(params), torch.tensor(GOLDENS[name][k], dtype=F64), rtol=1e-12, atol=1e-14
        )


def test_dp_aggregate_noise_fed_to_optax_formula_gives_the_golden():
    """``(clipped sum + sigma C xi) / B``: the part that is not noise is optax's aggregate."""
    tx = differentially_private_aggregate(1.0, 1.3, key=5)
    params = _init()
    state = tx.init(params)
    grads = per_example_grads(0)
    noisy, new_state = tx.update(grads, state, params)
    noise, _ = tx.update(tf.tree_map(torch.zeros_like, grads), state, params)
    want = torch.tensor(GOLDENS["aggregate"][0], dtype=F64) - _flat(_init())
    torch.testing.assert_close(_flat(noisy) - _flat(noise), want, rtol=1e-12, atol=1e-14)
    assert float(_flat(noise).abs().min()) > 0
    assert new_state.rng_key.tolist() == [5, 1]


def test_dp_aggregate_noise_has_the_promised_scale():
    clip, multiplier, batch = 0.7, 1.3, 4
    tx = differentially_private_aggregate(clip, multiplier, key=1)
    grads = {"a": torch.zeros(batch, 200, 100, dtype=F64), "b": torch.zeros(batch, 100, dtype=F64)}
    state = tx.init(None)
    first, state = tx.update(grads, state)
    second, _ = tx.update(grads, state)
    sigma = clip * multiplier
    z = first["a"].ravel() * batch / sigma  # standard normal
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.std()) - 1.0) < 5 / math.sqrt(2 * n)
    # Fresh noise every step, independent across steps.
    z2 = second["a"].ravel() * batch / sigma
    assert abs(float((z * z2).mean())) < 5 / math.sqrt(n)


def test_dp_aggregate_noise_is_reproducible_and_seeded():
    grads = {"w": torch.zeros(3, 50, dtype=F64)}

    def draw(**key_kwargs):
        tx = differentially_private_aggregate(1.0, 1.0, **key_kwargs)
        return tx.update(grads, tx.init(None))[0]["w"]

    assert torch.equal(draw(key=3), draw(key=3))
    assert torch.equal(draw(key=3), draw(seed=3))
    assert not torch.equal(draw(key=3), draw(key=4))
    gen_a, gen_b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(draw(key=gen_a), draw(key=gen_b))


def test_dp_aggregate_state():
    tx = differentially_private_aggregate(1.0, 1.0, key=2)
    state = tx.init({"w": torch.zeros(2)})
    assert isinstance(state, DifferentiallyPrivateAggregateState)
    for step in range(1, 3):
        _, state = tx.update({"w": torch.ones(4, 2)}, state)
        assert state.rng_key.tolist() == [2, step]


def test_dp_aggregate_with_torch_func_per_example_gradients():
    """The usual way to get per-example gradients: vmap over grad."""
    w = torch.tensor([0.5, -1.0], dtype=F64)
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.1, 0.2]], dtype=F64)
    y = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    loss = lambda p, xi, yi: (xi @ p["w"] - yi) ** 2  # noqa: E731
    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))({"w": w}, x, y)
    tx = differentially_private_aggregate(1.0, 0.0)
    updates, _ = tx.update(grads, tx.init({"w": w}), {"w": w})
    g = grads["w"]
    want = (g / torch.clamp(g.norm(dim=1, keepdim=True), min=1.0)).mean(0)
    torch.testing.assert_close(updates["w"], want, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"l2_norm_clip": 0.0}, "l2_norm_clip"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"key": 1, "seed": 1}, "either key or seed"),
        ({"key": "0"}, "key must be an int"),
    ],
)
def test_dp_aggregate_refuses_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        differentially_private_aggregate(**{"l2_norm_clip": 1.0, "noise_multiplier": 1.0, **kwargs})


def test_dp_aggregate_refuses_gradients_without_a_batch_axis():
    tx = differentially_private_aggregate(1.0, 1.0)
    params = {"w": torch.zeros(3), "s": torch.zeros(())}
    with pytest.raises(ValueError, match="batch axis"):
        tx.update(params, tx.init(params), params)
    with pytest.raises(ValueError, match=r"\['w'\]"):
        tx.update({"w": torch.ones(4, 2), "s": torch.ones(4)}, tx.init(params), params)
