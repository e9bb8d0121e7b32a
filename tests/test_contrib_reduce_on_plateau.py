"""reduce_on_plateau against optax 0.2.8's float64 trajectory, compiled, and against
torch.optim.lr_scheduler.ReduceLROnPlateau where their rules coincide.

The goldens come from /tmp/ckit/plateau_gen.py (optax 0.2.8, jax x64): every configuration
is fed the losses in ``VALUES`` and records its state after each ``update``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchopt_fn as tf
from torchopt_fn.contrib import ReduceLROnPlateauState, reduce_on_plateau

F64 = torch.float64
INF = float("inf")
VALUES = [
    5.0,
    4.0,
    3.0,
    3.0,
    3.0001,
    3.0,
    2.9999,
    3.0,
    2.5,
    2.5,
    2.5,
    2.5,
    2.5,
    2.4,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    0.9999,
    0.99995,
    1.2,
    0.8,
    0.8,
    0.8,
    0.8,
    0.8,
    0.8,
    0.8,
    0.8,
    0.7,
    0.7,
    0.7,
    0.7,
    0.7,
    0.7,
    0.7,
]
CONFIGS = {
    "patience3": {"factor": 0.5, "patience": 3},
    "cooldown_atol": {"factor": 0.5, "patience": 2, "rtol": 0.0, "atol": 0.05, "cooldown": 3},
    "accumulate_min_scale": {
        "factor": 0.1,
        "patience": 1,
        "accumulation_size": 3,
        "min_scale": 0.05,
    },
    "rtol_min_scale": {"factor": 0.9, "patience": 1, "rtol": 0.1, "min_scale": 0.5, "cooldown": 1},
    "defaults": {},
    "both_tols": {
        "factor": 0.3,
        "patience": 2,
        "rtol": 0.001,
        "atol": 0.01,
        "cooldown": 2,
        "accumulation_size": 2,
    },
}
GOLDENS = {  # name: per step (scale, best_value, plateau_count, cooldown_count, count, avg_value)
    "patience3": [
        (1.0, 5.0, 0, 0, 0, 0.0),
        (1.0, 4.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 1, 0, 0, 0.0),
        (1.0, 3.0, 2, 0, 0, 0.0),
        (0.5, 3.0, 0, 0, 0, 0.0),
        (0.5, 3.0, 1, 0, 0, 0.0),
        (0.5, 3.0, 2, 0, 0, 0.0),
        (0.5, 2.5, 0, 0, 0, 0.0),
        (0.5, 2.5, 1, 0, 0, 0.0),
        (0.5, 2.5, 2, 0, 0, 0.0),
        (0.25, 2.5, 0, 0, 0, 0.0),
        (0.25, 2.5, 1, 0, 0, 0.0),
        (0.25, 2.4, 0, 0, 0, 0.0),
        (0.25, 1.0, 0, 0, 0, 0.0),
        (0.25, 1.0, 1, 0, 0, 0.0),
        (0.25, 1.0, 2, 0, 0, 0.0),
        (0.125, 1.0, 0, 0, 0, 0.0),
        (0.125, 1.0, 1, 0, 0, 0.0),
        (0.125, 1.0, 2, 0, 0, 0.0),
        (0.0625, 1.0, 0, 0, 0, 0.0),
        (0.0625, 1.0, 1, 0, 0, 0.0),
        (0.0625, 1.0, 2, 0, 0, 0.0),
        (0.03125, 1.0, 0, 0, 0, 0.0),
        (0.03125, 1.0, 1, 0, 0, 0.0),
        (0.03125, 0.8, 0, 0, 0, 0.0),
        (0.03125, 0.8, 1, 0, 0, 0.0),
        (0.03125, 0.8, 2, 0, 0, 0.0),
        (0.015625, 0.8, 0, 0, 0, 0.0),
        (0.015625, 0.8, 1, 0, 0, 0.0),
        (0.015625, 0.8, 2, 0, 0, 0.0),
        (0.0078125, 0.8, 0, 0, 0, 0.0),
        (0.0078125, 0.8, 1, 0, 0, 0.0),
        (0.0078125, 0.7, 0, 0, 0, 0.0),
        (0.0078125, 0.7, 1, 0, 0, 0.0),
        (0.0078125, 0.7, 2, 0, 0, 0.0),
        (0.00390625, 0.7, 0, 0, 0, 0.0),
        (0.00390625, 0.7, 1, 0, 0, 0.0),
        (0.00390625, 0.7, 2, 0, 0, 0.0),
        (0.001953125, 0.7, 0, 0, 0, 0.0),
    ],
    "cooldown_atol": [
        (1.0, 5.0, 0, 0, 0, 0.0),
        (1.0, 4.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 1, 0, 0, 0.0),
        (0.5, 3.0, 0, 3, 0, 0.0),
        (0.5, 3.0, 0, 2, 0, 0.0),
        (0.5, 3.0, 0, 1, 0, 0.0),
        (0.5, 3.0, 0, 0, 0, 0.0),
        (0.5, 2.5, 0, 0, 0, 0.0),
        (0.5, 2.5, 1, 0, 0, 0.0),
        (0.25, 2.5, 0, 3, 0, 0.0),
        (0.25, 2.5, 0, 2, 0, 0.0),
        (0.25, 2.5, 0, 1, 0, 0.0),
        (0.25, 2.4, 0, 0, 0, 0.0),
        (0.25, 1.0, 0, 0, 0, 0.0),
        (0.25, 1.0, 1, 0, 0, 0.0),
        (0.125, 1.0, 0, 3, 0, 0.0),
        (0.125, 1.0, 0, 2, 0, 0.0),
        (0.125, 1.0, 0, 1, 0, 0.0),
        (0.125, 1.0, 0, 0, 0, 0.0),
        (0.125, 1.0, 1, 0, 0, 0.0),
        (0.0625, 1.0, 0, 3, 0, 0.0),
        (0.0625, 1.0, 0, 2, 0, 0.0),
        (0.0625, 1.0, 0, 1, 0, 0.0),
        (0.0625, 1.0, 0, 0, 0, 0.0),
        (0.0625, 0.8, 0, 0, 0, 0.0),
        (0.0625, 0.8, 1, 0, 0, 0.0),
        (0.03125, 0.8, 0, 3, 0, 0.0),
        (0.03125, 0.8, 0, 2, 0, 0.0),
        (0.03125, 0.8, 0, 1, 0, 0.0),
        (0.03125, 0.8, 0, 0, 0, 0.0),
        (0.03125, 0.8, 1, 0, 0, 0.0),
        (0.015625, 0.8, 0, 3, 0, 0.0),
        (0.015625, 0.7, 0, 2, 0, 0.0),
        (0.015625, 0.7, 0, 1, 0, 0.0),
        (0.015625, 0.7, 0, 0, 0, 0.0),
        (0.015625, 0.7, 1, 0, 0, 0.0),
        (0.0078125, 0.7, 0, 3, 0, 0.0),
        (0.0078125, 0.7, 0, 2, 0, 0.0),
        (0.0078125, 0.7, 0, 1, 0, 0.0),
    ],
    "accumulate_min_scale": [
        (1.0, INF, 0, 0, 1, 5.0),
        (1.0, INF, 0, 0, 2, 4.5),
        (1.0, 4.0, 0, 0, 0, 0.0),
        (1.0, 4.0, 0, 0, 1, 3.0),
        (1.0, 4.0, 0, 0, 2, 3.00005),
        (1.0, 3.000033333333333, 0, 0, 0, 0.0),
        (1.0, 3.000033333333333, 0, 0, 1, 2.9999),
        (1.0, 3.000033333333333, 0, 0, 2, 2.99995),
        (1.0, 2.8333, 0, 0, 0, 0.0),
        (1.0, 2.8333, 0, 0, 1, 2.5),
        (1.0, 2.8333, 0, 0, 2, 2.5),
        (1.0, 2.5, 0, 0, 0, 0.0),
        (1.0, 2.5, 0, 0, 1, 2.5),
        (1.0, 2.5, 0, 0, 2, 2.45),
        (1.0, 1.9666666666666668, 0, 0, 0, 0.0),
        (1.0, 1.9666666666666668, 0, 0, 1, 1.0),
        (1.0, 1.9666666666666668, 0, 0, 2, 1.0),
        (1.0, 1.0, 0, 0, 0, 0.0),
        (1.0, 1.0, 0, 0, 1, 1.0),
        (1.0, 1.0, 0, 0, 2, 1.0),
        (0.1, 1.0, 0, 0, 0, 0.0),
        (0.1, 1.0, 0, 0, 1, 1.0),
        (0.1, 1.0, 0, 0, 2, 0.99995),
        (0.05, 1.0, 0, 0, 0, 0.0),
        (0.05, 1.0, 0, 0, 1, 1.2),
        (0.05, 1.0, 0, 0, 2, 1.0),
        (0.05, 0.9333333333333332, 0, 0, 0, 0.0),
        (0.05, 0.9333333333333332, 0, 0, 1, 0.8),
        (0.05, 0.9333333333333332, 0, 0, 2, 0.8),
        (0.05, 0.8000000000000002, 0, 0, 0, 0.0),
        (0.05, 0.8000000000000002, 0, 0, 1, 0.8),
        (0.05, 0.8000000000000002, 0, 0, 2, 0.8),
        (0.05, 0.8000000000000002, 0, 0, 0, 0.0),
        (0.05, 0.8000000000000002, 0, 0, 1, 0.7),
        (0.05, 0.8000000000000002, 0, 0, 2, 0.7),
        (0.05, 0.6999999999999998, 0, 0, 0, 0.0),
        (0.05, 0.6999999999999998, 0, 0, 1, 0.7),
        (0.05, 0.6999999999999998, 0, 0, 2, 0.7),
        (0.05, 0.6999999999999998, 0, 0, 0, 0.0),
        (0.05, 0.6999999999999998, 0, 0, 1, 0.7),
    ],
    "rtol_min_scale": [
        (1.0, 5.0, 0, 0, 0, 0.0),
        (1.0, 4.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 0, 0, 0, 0.0),
        (0.9, 3.0, 0, 1, 0, 0.0),
        (0.9, 3.0, 0, 0, 0, 0.0),
        (0.81, 3.0, 0, 1, 0, 0.0),
        (0.81, 3.0, 0, 0, 0, 0.0),
        (0.7290000000000001, 3.0, 0, 1, 0, 0.0),
        (0.7290000000000001, 2.5, 0, 0, 0, 0.0),
        (0.6561000000000001, 2.5, 0, 1, 0, 0.0),
        (0.6561000000000001, 2.5, 0, 0, 0, 0.0),
        (0.5904900000000002, 2.5, 0, 1, 0, 0.0),
        (0.5904900000000002, 2.5, 0, 0, 0, 0.0),
        (0.5314410000000002, 2.5, 0, 1, 0, 0.0),
        (0.5314410000000002, 1.0, 0, 0, 0, 0.0),
        (0.5, 1.0, 0, 1, 0, 0.0),
        (0.5, 1.0, 0, 0, 0, 0.0),
        (0.5, 1.0, 0, 1, 0, 0.0),
        (0.5, 1.0, 0, 0, 0, 0.0),
        (0.5, 1.0, 0, 1, 0, 0.0),
        (0.5, 1.0, 0, 0, 0, 0.0),
        (0.5, 1.0, 0, 1, 0, 0.0),
        (0.5, 1.0, 0, 0, 0, 0.0),
        (0.5, 1.0, 0, 1, 0, 0.0),
        (0.5, 1.0, 0, 0, 0, 0.0),
        (0.5, 0.8, 0, 0, 0, 0.0),
        (0.5, 0.8, 0, 1, 0, 0.0),
        (0.5, 0.8, 0, 0, 0, 0.0),
        (0.5, 0.8, 0, 1, 0, 0.0),
        (0.5, 0.8, 0, 0, 0, 0.0),
        (0.5, 0.8, 0, 1, 0, 0.0),
        (0.5, 0.8, 0, 0, 0, 0.0),
        (0.5, 0.8, 0, 1, 0, 0.0),
        (0.5, 0.7, 0, 0, 0, 0.0),
        (0.5, 0.7, 0, 1, 0, 0.0),
        (0.5, 0.7, 0, 0, 0, 0.0),
        (0.5, 0.7, 0, 1, 0, 0.0),
        (0.5, 0.7, 0, 0, 0, 0.0),
        (0.5, 0.7, 0, 1, 0, 0.0),
        (0.5, 0.7, 0, 0, 0, 0.0),
    ],
    "defaults": [
        (1.0, 5.0, 0, 0, 0, 0.0),
        (1.0, 4.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 1, 0, 0, 0.0),
        (1.0, 3.0, 2, 0, 0, 0.0),
        (1.0, 3.0, 3, 0, 0, 0.0),
        (1.0, 3.0, 4, 0, 0, 0.0),
        (1.0, 3.0, 5, 0, 0, 0.0),
        (1.0, 2.5, 0, 0, 0, 0.0),
        (1.0, 2.5, 1, 0, 0, 0.0),
        (1.0, 2.5, 2, 0, 0, 0.0),
        (1.0, 2.5, 3, 0, 0, 0.0),
        (1.0, 2.5, 4, 0, 0, 0.0),
        (1.0, 2.4, 0, 0, 0, 0.0),
        (1.0, 1.0, 0, 0, 0, 0.0),
        (1.0, 1.0, 1, 0, 0, 0.0),
        (1.0, 1.0, 2, 0, 0, 0.0),
        (1.0, 1.0, 3, 0, 0, 0.0),
        (1.0, 1.0, 4, 0, 0, 0.0),
        (1.0, 1.0, 5, 0, 0, 0.0),
        (1.0, 1.0, 6, 0, 0, 0.0),
        (1.0, 1.0, 7, 0, 0, 0.0),
        (1.0, 1.0, 8, 0, 0, 0.0),
        (1.0, 1.0, 9, 0, 0, 0.0),
        (0.1, 1.0, 0, 0, 0, 0.0),
        (0.1, 0.8, 0, 0, 0, 0.0),
        (0.1, 0.8, 1, 0, 0, 0.0),
        (0.1, 0.8, 2, 0, 0, 0.0),
        (0.1, 0.8, 3, 0, 0, 0.0),
        (0.1, 0.8, 4, 0, 0, 0.0),
        (0.1, 0.8, 5, 0, 0, 0.0),
        (0.1, 0.8, 6, 0, 0, 0.0),
        (0.1, 0.8, 7, 0, 0, 0.0),
        (0.1, 0.7, 0, 0, 0, 0.0),
        (0.1, 0.7, 1, 0, 0, 0.0),
        (0.1, 0.7, 2, 0, 0, 0.0),
        (0.1, 0.7, 3, 0, 0, 0.0),
        (0.1, 0.7, 4, 0, 0, 0.0),
        (0.1, 0.7, 5, 0, 0, 0.0),
        (0.1, 0.7, 6, 0, 0, 0.0),
    ],
    "both_tols": [
        (1.0, INF, 0, 0, 1, 5.0),
        (1.0, 4.5, 0, 0, 0, 0.0),
        (1.0, 4.5, 0, 0, 1, 3.0),
        (1.0, 3.0, 0, 0, 0, 0.0),
        (1.0, 3.0, 0, 0, 1, 3.0001),
        (1.0, 3.0, 1, 0, 0, 0.0),
        (1.0, 3.0, 1, 0, 1, 2.9999),
        (0.3, 3.0, 0, 2, 0, 0.0),
        (0.3, 3.0, 0, 2, 1, 2.5),
        (0.3, 2.5, 0, 1, 0, 0.0),
        (0.3, 2.5, 0, 1, 1, 2.5),
        (0.3, 2.5, 0, 0, 0, 0.0),
        (0.3, 2.5, 0, 0, 1, 2.5),
        (0.3, 2.45, 0, 0, 0, 0.0),
        (0.3, 2.45, 0, 0, 1, 1.0),
        (0.3, 1.0, 0, 0, 0, 0.0),
        (0.3, 1.0, 0, 0, 1, 1.0),
        (0.3, 1.0, 1, 0, 0, 0.0),
        (0.3, 1.0, 1, 0, 1, 1.0),
        (0.09, 1.0, 0, 2, 0, 0.0),
        (0.09, 1.0, 0, 2, 1, 1.0),
        (0.09, 1.0, 0, 1, 0, 0.0),
        (0.09, 1.0, 0, 1, 1, 0.9999),
        (0.09, 1.0, 0, 0, 0, 0.0),
        (0.09, 1.0, 0, 0, 1, 1.2),
        (0.09, 1.0, 1, 0, 0, 0.0),
        (0.09, 1.0, 1, 0, 1, 0.8),
        (0.09, 0.8, 0, 0, 0, 0.0),
        (0.09, 0.8, 0, 0, 1, 0.8),
        (0.09, 0.8, 1, 0, 0, 0.0),
        (0.09, 0.8, 1, 0, 1, 0.8),
        (0.027, 0.8, 0, 2, 0, 0.0),
        (0.027, 0.8, 0, 2, 1, 0.8),
        (0.027, 0.75, 0, 1, 0, 0.0),
        (0.027, 0.75, 0, 1, 1, 0.7),
        (0.027, 0.7, 0, 0, 0, 0.0),
        (0.027, 0.7, 0, 0, 1, 0.7),
        (0.027, 0.7, 1, 0, 0, 0.0),
        (0.027, 0.7, 1, 0, 1, 0.7),
        (0.0081, 0.7, 0, 2, 0, 0.0),
    ],
}


def _fields(state: ReduceLROnPlateauState) -> tuple[Any, ...]:
    return (
        float(state.scale),
        float(state.best_value),
        int(state.plateau_count),
        int(state.cooldown_count),
        int(state.count),
        float(state.avg_value),
    )


def _close(got: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
    return all(g == w or abs(g - w) <= 1e-12 * abs(w) for g, w in zip(got, want))


@pytest.mark.parametrize("name", CONFIGS)
def test_reduce_on_plateau_matches_optax(name: str):
    tx = reduce_on_plateau(**CONFIGS[name])
    params = {"w": torch.tensor([1.0, -2.0], dtype=F64), "b": None}
    state = tx.init(params)
    for k, (value, want) in enumerate(zip(VALUES, GOLDENS[name])):
        # Python floats and 0-d tensors alike.
        loss = value if k % 2 else torch.tensor(value, dtype=F64)
        updates, state = tx.update(params, state, params, value=loss)
        assert _close(_fields(state), want), (k, _fields(state), want)
        assert updates["b"] is None
        assert torch.equal(updates["w"], state.scale * params["w"])


def test_reduce_on_plateau_compiles_without_recompiling():
    tx = reduce_on_plateau(**CONFIGS["both_tols"])
    params = {"w": torch.tensor([1.0, -2.0], dtype=F64)}
    step = torch.compile(
        lambda s, v: tx.update(params, s, params, value=v), backend="aot_eager", fullgraph=True
    )
    torch._dynamo.reset()
    state = tx.init(params)
    for k, (value, want) in enumerate(zip(VALUES, GOLDENS["both_tols"])):
        if k == 0:
            updates, state = step(state, torch.tensor(value, dtype=F64))
        else:
            with torch.compiler.set_stance("fail_on_recompile"):
                updates, state = step(state, torch.tensor(value, dtype=F64))
        assert _close(_fields(state), want), (k, _fields(state), want)
        assert torch.equal(updates["w"], state.scale * params["w"])


# Where torch's scheduler follows the same rule: its ``patience`` counts the bad epochs it
# tolerates (it reduces after patience + 1), optax's the bad comparisons that trigger a
# reduction; ``threshold_mode="rel"`` is ``atol=0``, ``"abs"`` is ``rtol=0``.
TORCH_EQUIVALENTS = {
    "patience3": dict(factor=0.5, patience=2, threshold=1e-4, threshold_mode="rel"),
    "cooldown_atol": dict(factor=0.5, patience=1, threshold=0.05, threshold_mode="abs", cooldown=3),
    "rtol_min_scale": dict(
        factor=0.9, patience=0, threshold=0.1, threshold_mode="rel", cooldown=1, min_lr=0.5
    ),
    "defaults": dict(factor=0.1, patience=9, threshold=1e-4, threshold_mode="rel"),
}


@pytest.mark.parametrize("name", TORCH_EQUIVALENTS)
def test_reduce_on_plateau_matches_torch_scheduler(name: str):
    w = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([w], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", eps=0.0, **TORCH_EQUIVALENTS[name]
    )
    tx = reduce_on_plateau(**CONFIGS[name])
    params = {"w": torch.ones(1, dtype=F64)}
    state = tx.init(params)
    for value in VALUES:
        scheduler.step(value)
        _, state = tx.update(params, state, value=value)
        assert float(state.scale) == opt.param_groups[0]["lr"]


def test_reduce_on_plateau_state_dtypes():
    params = {"a": torch.zeros(2, dtype=torch.float16), "b": torch.zeros(2, dtype=torch.complex128)}
    state = reduce_on_plateau().init(params)
    assert state.scale.dtype == torch.float16
    assert state.best_value.dtype == state.avg_value.dtype == F64
    updates, state = reduce_on_plateau().update(params, state, value=1.0)
    assert updates["a"].dtype == torch.float16 and updates["b"].dtype == torch.complex128


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factor": 1.0}, "factor"),
        ({"factor": 0.0}, "factor"),
        ({"rtol": 1.5}, "rtol"),
        ({"atol": -1.0}, "atol"),
        ({"rtol": 0.0, "atol": 0.0}, "rtol or atol"),
        ({"patience": -1}, "patience"),
        ({"cooldown": -1}, "cooldown"),
        ({"accumulation_size": 0}, "accumulation_size"),
    ],
)
def test_reduce_on_plateau_refuses_invalid_hyperparameters(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        reduce_on_plateau(**kwargs)


def test_reduce_on_plateau_needs_a_value():
    tx = reduce_on_plateau()
    g = {"w": torch.ones(1)}
    with pytest.raises(ValueError, match="value=loss"):
        tx.update(g, tx.init(g))


def test_reduce_on_plateau_detaches_the_value():
    w = torch.ones(1, requires_grad=True)
    tx = reduce_on_plateau()
    g = {"w": torch.ones(1)}
    _, state = tx.update(g, tx.init(g), value=(w * 2).sum())
    assert not state.best_value.requires_grad and not state.avg_value.requires_grad


# --------------------------------------------------------------------------- the adapter


def _adapter_run(tx_factory, steps: int, compile: bool, by_value: bool) -> list[torch.Tensor]:
    """``tf.Optimizer`` on a linear model, fed the loss by ``step(closure)`` or ``value=``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    opt = tf.Optimizer(model.parameters(), tx_factory(), compile=compile)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(steps):
        if by_value:
            loss = closure()
            opt.step(value=loss)
        else:
            opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def _functional_run(tx_factory, steps: int) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    tx = tx_factory()
    state = tx.init(params)

    def loss_fn(p: dict) -> torch.Tensor:
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    for _ in range(steps):
        grads, loss = torch.func.grad_and_value(loss_fn)(params)
        updates, state = tx.update(grads, state, params, value=loss)
        params = tf.apply_updates(params, updates)
    return [params["weight"], params["bias"]]


@pytest.mark.parametrize("by_value", [False, True], ids=["closure", "value"])
def test_optimizer_feeds_the_loss_to_reduce_on_plateau_as_the_functional_loop_does(by_value):
    def make() -> tf.GradientTransformation:
        return tf.chain(tf.sgd(0.3), tf.contrib.reduce_on_plateau(patience=1, factor=0.5))

    expected = _functional_run(make, 12)
    for got, want in zip(_adapter_run(make, 12, False, by_value), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_optimizer_compiled_update_takes_the_loss_without_recompiling():
    def make() -> tf.GradientTransformation:
        return tf.chain(tf.sgd(0.3), tf.contrib.reduce_on_plateau(patience=1, factor=0.5))

    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = _adapter_run(make, 6, True, False)
    for g, want in zip(got, _functional_run(make, 6)):
        torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-14)


def test_optimizer_without_a_loss_for_a_loss_reader_says_what_to_do():
    model = torch.nn.Linear(3, 1)
    opt = tf.Optimizer(model.parameters(), tf.contrib.reduce_on_plateau())
    model(torch.ones(1, 3)).sum().backward()
    with pytest.raises(TypeError, match=r"step\(value=loss\)"):
        opt.step()
    plain = tf.Optimizer(model.parameters(), tf.sgd(0.1))
    with pytest.raises(TypeError, match="reads no loss"):
        plain.step(value=1.0)
