"""`quantized_state`: the 8-bit code, what it costs in bytes and in loss, and where it runs.

The common batteries (compile without recompiles, vmap, grad, views, bad input, DTensor) run
it through its row of the transform table; here: the code's error bounds, AdamW's state in
bytes, a training run against float32, the adapter's checkpoint, and a stacked ensemble.
"""

from __future__ import annotations

import io

import pytest
import torch

import torchopt_fn as tf
from torchopt_fn.wrappers._quantized import dequantize, quantize

F64 = torch.float64


def _round_trip(x: torch.Tensor, block_size: int = 256) -> torch.Tensor:
    return dequantize(quantize(x, block_size), block_size)


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.bfloat16])
def test_signed_leaves_keep_a_sixteenth_of_each_value(dtype):
    x = torch.randn(37, 29, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = _round_trip(x, 64)
    assert y.dtype == dtype and y.shape == x.shape
    # e4m3: 3 mantissa bits, so rounding to nearest is within 1/16 of the value (normal
    # range: within 2^-15 of the block's largest magnitude, which randn never leaves).
    error = ((y.double() - x.double()).abs() / x.double().abs()).max()
    stored = torch.finfo(dtype).eps if dtype == torch.bfloat16 else 1e-6  # bf16 rounds again
    assert error <= 1 / 16 + stored
    blocks = x.double().reshape(-1)
    assert torch.equal(  # each block's largest magnitude is exact
        y.double().reshape(-1)[blocks.abs().argmax()], blocks[blocks.abs().argmax()]
    )


def test_non_negative_leaves_keep_an_eighth_over_many_octaves():
    g = torch.Generator().manual_seed(1)
    # 27 octaves in one block (e5m2's normal range is 30 below the block's largest value).
    v = (0.5 + torch.rand(4096, generator=g)) * torch.logspace(0, -8, 4096)
    leaf = quantize(v, 4096)
    assert bool(leaf.non_negative)
    w = dequantize(leaf, 4096)
    assert not bool((w == 0).any())  # a small second moment never becomes 0 (and 1/eps)
    assert ((w - v).abs() / v).max() <= 1 / 8 + 1e-6


def test_zeros_and_ragged_sizes_round_trip():
    assert torch.equal(_round_trip(torch.zeros(300)), torch.zeros(300))
    x = torch.linspace(-3, 5, 1000)  # 1000 = 3 blocks of 256 and a part
    y = _round_trip(x)
    assert ((y - x).abs() <= x.abs() / 16 + 1e-6).all()
    assert torch.isnan(_round_trip(torch.tensor([1.0, float("nan")] * 8), 16)).sum() >= 1


def test_small_leaves_and_counts_stay_as_they_are():
    tx = tf.quantized_state(tf.adam(0.1), min_size=10)
    state = tx.init({"big": torch.zeros(4, 4), "small": torch.zeros(3)})
    adam = state[0]
    assert isinstance(adam.mu["big"], tf.QuantizedLeaf)
    assert type(adam.mu["small"]) is torch.Tensor and type(adam.count) is torch.Tensor


@pytest.mark.parametrize(
    "kwargs", [{"bits": 4}, {"block_size": 8}, {"block_size": 256.0}, {"min_size": -1}]
)
def test_invalid_arguments_are_refused(kwargs):
    with pytest.raises(ValueError, match="quantized_state"):
        tf.quantized_state(tf.adam(0.1), **kwargs)


def _state_bytes(state) -> int:
    return sum(x.numel() * x.element_size() for x in tf.tree_leaves(state) if x is not None)


def test_adamw_keeps_at_most_2_1_bytes_of_state_per_parameter():
    params = {  # a small transformer's shapes (benchmarks/state_bytes.py)
        "embed": torch.zeros(4096, 128),
        "qkv": torch.zeros(128, 384),
        "proj": torch.zeros(128, 128),
        "up": torch.zeros(128, 512),
        "down": torch.zeros(512, 128),
        "norm": torch.zeros(128),
    }
    n = sum(p.numel() for p in params.values())
    plain = _state_bytes(tf.adamw(1e-3).init(params)) / n
    quantized = _state_bytes(tf.quantized_state(tf.adamw(1e-3)).init(params)) / n
    assert plain == pytest.approx(8.0, abs=0.01)
    assert quantized <= 2.1


def _regression(tx: tf.GradientTransformation, steps: int = 600) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=g)
    y = torch.tanh(x @ torch.randn(32, 16, generator=g))
    params = {
        "w1": 0.1 * torch.randn(32, 128, generator=g),
        "w2": 0.1 * torch.randn(128, 16, generator=g),
    }

    def loss(p):
        return ((torch.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2).mean()

    state = tx.init(params)
    for _ in range(steps):
        grads = torch.func.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = tf.apply_updates(params, updates)
    return float(loss(params))


def test_training_ends_within_a_few_percent_of_float32():
    full = _regression(tf.adamw(3e-3, weight_decay=1e-4))  # 5.59e-4
    eight = _regression(tf.quantized_state(tf.adamw(3e-3, weight_decay=1e-4), min_size=1024))
    assert abs(eight - full) <= 0.05 * full, (full, eight)  # 5.62e-4 (bf16 moments: 9.1e-4)


def test_the_adapter_checkpoints_and_resumes_exactly():
    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))

    def train(m, opt, steps) -> None:
        for t in steps:
            x = torch.randn(8, 16, generator=torch.Generator().manual_seed(t))
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()

    make = lambda: tf.quantized_state(tf.adamw(1e-2), min_size=64)  # noqa: E731
    m, resumed_model = model(), model()
    opt = tf.Optimizer(m.parameters(), make())
    train(m, opt, range(3))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_model.load_state_dict(m.state_dict())
    resumed = tf.Optimizer(resumed_model.parameters(), make())
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    train(m, opt, range(3, 6))
    train(resumed_model, resumed, range(3, 6))
    for a, b in zip(m.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_stacked_ensemble_under_vmap_equals_each_member():
    tx = tf.quantized_state(tf.adam(0.05), min_size=16, block_size=16)
    members = [
        {"w": torch.randn(8, 4, generator=torch.Generator().manual_seed(i))} for i in range(3)
    ]
    grads = [tf.tree_map(torch.sin, p) for p in members]
    states = [tx.init(p) for p in members]
    expected = [tx.update(g, s, p) for g, s, p in zip(grads, states, members)]
    stacked = tf.tree_stack(members), tf.tree_stack(grads), tf.tree_stack(states)
    updates, state = torch.func.vmap(lambda p, g, s: tx.update(g, s, p))(*stacked)
    for i, (u, s) in enumerate(expected):
        torch.testing.assert_close(updates["w"][i], u["w"], rtol=1e-6, atol=0)
        for a, b in zip(tf.tree_leaves(tf.tree_unstack(state)[i]), tf.tree_leaves(s)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
