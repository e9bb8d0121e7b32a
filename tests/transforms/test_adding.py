"""Reference maths for `torchopt_fn.transforms._adding`:
annealed gradient noise (reproducibility and variance).

Each transform's updates are compared with a reference loop written here in plain float64 torch
from the paper's equations (with optax's conventions where the paper leaves a choice). Generic
properties are in tests/test_transforms.py; optax's own trajectories in test_optax_goldens.py.
"""

from __future__ import annotations

import pytest
import torch

import torchopt_fn as tf
from tests.transforms.loops import (
    F64,
    LR,
    Params,
    trajectory,
)


def _noisy_trajectory(tx: tf.GradientTransformation) -> list[Params]:
    return trajectory(tf.chain(tx, tf.scale(LR)))


def test_add_noise_same_seed_same_trajectory_and_other_seeds_differ():
    a = _noisy_trajectory(tf.add_noise(0.01, 0.55, 7))
    b = _noisy_trajectory(tf.add_noise(0.01, 0.55, key=7))
    c = _noisy_trajectory(tf.add_noise(0.01, 0.55, seed=7))
    d = _noisy_trajectory(tf.add_noise(0.01, 0.55, 8))
    for x, y, z, w in zip(a, b, c, d):
        for k in x:
            assert (
                torch.equal(x[k], y[k]) and torch.equal(x[k], z[k]) and not torch.equal(x[k], w[k])
            )
    # A torch.Generator is drawn from once, at construction, so equal generators agree.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    e, f = (_noisy_trajectory(tf.add_noise(0.01, 0.55, key=g)) for g in (g1, g2))
    assert all(torch.equal(x[k], y[k]) for x, y in zip(e, f) for k in x)


def test_add_noise_is_counter_based_and_ignores_the_global_rng():
    tx = tf.add_noise(0.5, 0.55, key=11)
    g = {"a": torch.zeros(4, 5, dtype=F64), "b": torch.zeros(3, dtype=F64)}
    state = tx.init(g)
    outs = []
    for _ in range(4):
        torch.randn(10)  # whatever else consumes random numbers must not matter
        u, state = tx.update(g, state)
        outs.append(u)
    # Resuming from a state rebuilt from its tensors gives the same noise at step 3.
    resumed = tf.AddNoiseState(count=torch.tensor(3), rng_key=state.rng_key.clone())
    u3, _ = tx.update(g, resumed)
    assert all(torch.equal(u3[k], outs[3][k]) for k in g)
    assert not torch.equal(outs[0]["a"], outs[1]["a"])
    assert not torch.equal(outs[0]["a"][:3, 0], outs[0]["b"])  # leaves get their own noise


@pytest.mark.parametrize("count", [0, 99])
def test_add_noise_variance_follows_the_annealing_schedule(count):
    eta, gamma = 0.3, 0.55
    tx = tf.add_noise(eta, gamma, key=0)
    g = {"w": torch.zeros(200_000, dtype=F64)}
    state = tf.AddNoiseState(count=torch.tensor(count), rng_key=tx.init(g).rng_key)
    u, state = tx.update(g, state)
    expected_std = (eta / (1 + count) ** gamma) ** 0.5
    assert abs(float(u["w"].std()) / expected_std - 1) < 0.01
    assert abs(float(u["w"].mean())) < 0.01 * expected_std * 2
    assert int(state.count) == count + 1
