"""Stochastic rounding of low-precision parameters: unbiased, seedable, and what it buys.

`stochastic_round` must give one of the two neighbours of each value, with the expected value
the value itself; `apply_updates`, `apply_updates_`, `compile_step`, `Optimizer` and
`TrainStep` take it for bfloat16 and float16 parameters; and a bfloat16 model trained with it
must track float32 training where rounding to nearest stalls.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import torchopt_fn as tf

LOW = [torch.bfloat16, torch.float16]


def _neighbours(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    near = x.to(dtype)
    up = torch.nextafter(near, torch.tensor(torch.inf, dtype=dtype))
    down = torch.nextafter(near, torch.tensor(-torch.inf, dtype=dtype))
    below = torch.where(near.float() <= x, near, down)
    above = torch.where(near.float() >= x, near, up)
    return below, above


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_stochastic_round_picks_a_neighbour_and_is_unbiased(dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, generator=gen) * torch.logspace(-3, 3, 64)
    draws = 4000
    many = x.repeat(draws, 1)
    r = tf.stochastic_round(many, dtype, torch.Generator().manual_seed(1))
    assert r.dtype == dtype
    below, above = _neighbours(x, dtype)
    assert ((r == below) | (r == above)).all()
    gap = (above.float() - below.float()).clamp_min(1e-30)
    # The mean of Bernoulli draws on the gap: within 5 standard deviations of x.
    err = (r.float().mean(0) - x).abs() / gap
    assert (err < 5 * 0.5 / draws**0.5).all()
    exact = below.float()  # values of the dtype stay themselves
    assert torch.equal(tf.stochastic_round(exact, dtype), below)


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_stochastic_round_passes_non_finite_values_and_overflows_as_to(dtype: torch.dtype):
    big = torch.finfo(dtype).max * 4.0
    x = torch.tensor([torch.inf, -torch.inf, torch.nan, big, -big])
    r = tf.stochastic_round(x, dtype)
    torch.testing.assert_close(r, x.to(dtype), equal_nan=True)


def test_a_generator_makes_the_rounding_reproducible():
    params = {"w": torch.ones(100, dtype=torch.bfloat16)}
    updates = {"w": torch.full((100,), 1e-3)}
    runs = [
        tf.apply_updates(
            params, updates, stochastic_rounding=True, generator=torch.Generator().manual_seed(s)
        )["w"]
        for s in (3, 3, 4)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    in_place = {"w": params["w"].clone()}
    tf.apply_updates_(
        in_place, updates, stochastic_rounding=True, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(in_place["w"], runs[0])
    # float32 and float64 leaves are untouched by the option.
    mixed = {"a": torch.ones(3), "b": torch.ones(3, dtype=torch.float64)}
    u = {"a": torch.full((3,), 1e-9), "b": torch.full((3,), 1e-20)}
    assert torch.equal(
        tf.apply_updates(mixed, u, stochastic_rounding=True)["a"], tf.apply_updates(mixed, u)["a"]
    )


def _regression(dtype: torch.dtype, rounding: bool, steps: int = 300) -> float:
    """SGD on least squares from a float32 start; the final loss in float32."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    y = x @ torch.randn(16, generator=gen) + 3.0
    params = {"w": torch.zeros(16).to(dtype), "b": torch.zeros(()).to(dtype)}
    tx = tf.sgd(1e-3)
    state = tx.init(params)
    rng = torch.Generator().manual_seed(1)

    def loss_fn(p: dict) -> torch.Tensor:
        return ((x @ p["w"].float() + p["b"].float() - y) ** 2).mean()

    for _ in range(steps):
        grads = torch.func.grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params)
        params = tf.apply_updates(params, updates, stochastic_rounding=rounding, generator=rng)
    return float(loss_fn(params))


def test_bfloat16_training_with_stochastic_rounding_tracks_float32():
    """Near the bias's value (3), bfloat16's gap is 1/64: steps of lr * grad fall below half
    of it and rounding to nearest stops the bias; stochastic rounding keeps it moving."""
    fp32 = _regression(torch.float32, False)
    nearest = _regression(torch.bfloat16, False)
    stochastic = _regression(torch.bfloat16, True)
    assert abs(stochastic - fp32) < 0.1 * abs(nearest - fp32)


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
def test_compile_step_rounds_stochastically_without_recompiling(flat: bool):
    params = {"w": torch.ones(8, dtype=torch.bfloat16), "b": torch.ones(3, dtype=torch.bfloat16)}
    tx = tf.sgd(1.0)
    if flat:
        tx = tf.flatten(tx)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    step = tf.compile_step(tx, stochastic_rounding=True, backend=counter)
    state = tx.init(params)
    grads = {"w": torch.full((8,), -2e-3), "b": torch.full((3,), -2e-3)}
    total = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in params.items()}
    for i in range(20):
        before = {k: v.float().clone() for k, v in params.items()}
        if i:
            with torch.compiler.set_stance("fail_on_recompile"):
                params, state = step(params, grads, state)
        else:
            params, state = step(params, grads, state)
        for k in params:
            total[k] += params[k].float() - before[k]
    assert counter.frame_count == 1
    assert all(v.dtype == torch.bfloat16 for v in params.values())
    # 20 steps of +2e-3 from 1 (a gap of 1/128): rounding to nearest would never move.
    for k in params:
        assert 0.0 < total[k].mean().item() < 0.1


def test_the_adapter_and_train_step_round_stochastically():
    model = torch.nn.Linear(4, 1).to(torch.bfloat16)
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-4), stochastic_rounding=True)
    assert opt._runtime(opt.param_groups[0]).plan is None  # the fused kernel rounds to nearest
    moved = []
    for seed in range(4):
        m = torch.nn.Linear(4, 1).to(torch.bfloat16)
        with torch.no_grad():
            m.bias.fill_(1.0)
        o = tf.Optimizer(m.parameters(), tf.sgd(1e-3), stochastic_rounding=True)
        torch.manual_seed(seed)
        for _ in range(20):
            m.bias.grad = -torch.ones(1, dtype=torch.bfloat16)
            m.weight.grad = torch.zeros(1, 4, dtype=torch.bfloat16)
            o.step()
        moved.append(m.bias.item() - 1.0)
    assert sum(moved) > 0  # 20 steps of 1e-3 against a gap of 1/128 above 1

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1).to(torch.bfloat16)
    with torch.no_grad():
        net.bias.fill_(1.0)

    def loss_fn(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return -model(x).float().sum()  # the bias's gradient is -len(x)

    step = tf.TrainStep(net, tf.sgd(1e-4), loss_fn, stochastic_rounding=True, compile=False)
    x = torch.zeros(8, 4, dtype=torch.bfloat16)
    for _ in range(20):
        step(x)
    assert net.bias.item() > 1.0  # +8e-4 a step against a gap of 1/128
