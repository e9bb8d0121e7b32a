"""split_real_and_imaginary against optax 0.2.8 on complex params (float64), against
torch.optim.Adam on complex params, compiled, vmapped, and with `None` leaves.

The goldens come from /tmp/ckit/complex_gen.py (optax 0.2.8, jax x64): params
{"w": complex128 (2, 3), "b": float64 (3,)}, gradients from the formula in `grads` evaluated
on both sides (fed to optax as they are: no conjugation, so both see the same numbers).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import assert_trees_close
from torchopt_fn.contrib import (
    SplitRealAndImaginaryState,
    reduce_on_plateau,
    split_real_and_imaginary,
)

F64, C128 = torch.float64, torch.complex128
STEPS = 6
INNER = {
    "adam": lambda: tf.adam(0.1),
    "adamw": lambda: tf.adamw(0.05, weight_decay=0.1),
    "clip_sgd_momentum": lambda: tf.chain(tf.clip_by_global_norm(0.5), tf.sgd(0.1, momentum=0.9)),
    "lamb": lambda: tf.lamb(0.05),
}
INIT_W = [[0.5 - 1.0j, 2.0 + 0.3j, -0.7 + 0.0j], [0.0 + 1.5j, 1.2 - 0.4j, -0.3 + 0.8j]]
INIT_B = [0.1, 0.2, -0.3]
GOLDENS = {  # inner: [params after step 1, params after the last step]
    "adam": [
        [
            0.1,
            0.10000000201681046,
            -0.200000007826529,
            0.4000000050334893,
            1.9000000011220732,
            -0.7999999989002498,
            -0.09999999582026015,
            1.2999999983656336,
            -0.20000000100007673,
            -1.0999999995,
            0.2000000005428522,
            -0.0999999992823379,
            1.4000000013798517,
            -0.3000000171235649,
            0.8999999987985011,
        ],
        [
            -0.332170739027992,
            -0.35355911885873914,
            0.28703259041067675,
            0.17978266753490557,
            1.7455944660887346,
            -0.8130310179334197,
            0.0868986801728178,
            1.5003984488602344,
            -0.10980916585161933,
            -1.2965238456686596,
            -0.09305829405542257,
            -0.4660635110269341,
            0.9908334437828026,
            -0.6927869340757588,
            0.652886793698769,
        ],
    ],
    "adamw": [
        [
            0.0995,
            0.14900000100840524,
            -0.2485000039132645,
            0.44750000251674465,
            1.9400000005610367,
            -0.7464999994501249,
            -0.04999999791013007,
            1.2439999991828168,
            -0.24850000050003837,
            -1.04499999975,
            0.2485000002714261,
            -0.04999999964116895,
            1.4425000006899258,
            -0.3480000085617825,
            0.8459999993992505,
        ],
        [
            -0.11701935294553298,
            -0.07905261738906966,
            -0.0012334603604333763,
            0.32813531289002795,
            1.816274648370792,
            -0.7341183905261638,
            0.04327512649594246,
            1.31162716300714,
            -0.19828589362254642,
            -1.1155854968399097,
            0.09796635224980697,
            -0.22946625968451229,
            1.2045503902095105,
            -0.5337876390352418,
            0.7022433062767732,
        ],
    ],
    "clip_sgd_momentum": [
        [
            0.1,
            0.1933528853907089,
            -0.29828711175928296,
            0.49733664480734496,
            1.988052500400273,
            -0.7121900145015451,
            -0.0032073694553217814,
            1.2082025488508354,
            -0.2865950582828655,
            -1.0268119410479362,
            0.27530456692724115,
            -0.018680059218717814,
            1.490284485248709,
            -0.39921710412942996,
            0.8111577044487872,
        ],
        [
            0.04819406337786758,
            0.11949113956671703,
            -0.22744781656019689,
            0.4600987044058924,
            1.9619889170450544,
            -0.7073548405450066,
            0.028867398559310514,
            1.2432433659500262,
            -0.2751063838870858,
            -1.1015458818261765,
            0.12259455096863428,
            -0.2252565966265394,
            1.2624553194422712,
            -0.6123296825626597,
            0.646407503602768,
        ],
    ],
    "lamb": [
        [
            0.1,
            0.18677120501724215,
            -0.28677128187222356,
            0.4488875166688979,
            1.9488873167469254,
            -0.7511126843940693,
            -0.05111252696817738,
            1.2511126570684414,
            -0.2488873105113596,
            -1.041533247133405,
            0.25846675464638574,
            -0.04153323809319758,
            1.458466789409647,
            -0.3584674432855226,
            0.8415332179979094,
        ],
        [
            0.056177766706628496,
            0.14025396415388622,
            -0.23715146317438932,
            0.3233813249268459,
            1.899170802724571,
            -0.7101214370104927,
            0.08086530110686885,
            1.341309474228118,
            -0.24364073588005228,
            -1.1260511259181163,
            0.1120850947952256,
            -0.2384503611646349,
            1.2266701875876793,
            -0.5918388539901074,
            0.6779650320247146,
        ],
    ],
}


def grads(k: int, dtype: torch.dtype = C128) -> dict[str, torch.Tensor]:
    w = [
        [
            complex(
                math.sin(0.9 * (3 * r + c) + 1.1 * k + 0.2),
                2.0 * math.cos(0.4 * (3 * r + c) - 0.7 * k),
            )
            for c in range(3)
        ]
        for r in range(2)
    ]
    b = [0.5 * math.sin(1.7 * j + 0.3 * k) for j in range(3)]
    return {"w": torch.tensor(w, dtype=dtype), "b": torch.tensor(b, dtype=dtype.to_real())}


def _init(dtype: torch.dtype = C128) -> dict[str, torch.Tensor]:
    return {
        "w": torch.tensor(INIT_W, dtype=dtype),
        "b": torch.tensor(INIT_B, dtype=dtype.to_real()),
    }


def _flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    w = params["w"]
    return torch.cat([params["b"], w.real.ravel(), w.imag.ravel()])


def _run(tx: tf.GradientTransformation, steps: int = STEPS, step_fn=None) -> list[Any]:
    params = _init()
    state = tx.init(params)
    step_fn = step_fn or tx.update
    trajectory = []
    for k in range(steps):
        updates, state = step_fn(grads(k), state, params)
        params = tf.apply_updates(params, updates)
        trajectory.append((updates, params))
    return trajectory


@pytest.mark.parametrize("name", INNER)
def test_split_real_and_imaginary_matches_optax(name: str):
    trajectory = _run(split_real_and_imaginary(INNER[name]()))
    for (updates, params), want in zip([trajectory[0], trajectory[-1]], GOLDENS[name]):
        assert updates["w"].dtype == C128 and updates["b"].dtype == F64
        torch.testing.assert_close(
            _flat(params), torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-14
        )


def test_split_real_and_imaginary_adam_matches_torch_adam_on_complex_params():
    params = _init()
    torch_params = [params["w"].clone().requires_grad_(), params["b"].clone().requires_grad_()]
    opt = torch.optim.Adam(torch_params, lr=0.1)
    for k, (_, ours) in enumerate(_run(split_real_and_imaginary(tf.adam(0.1)))):
        g = grads(k)
        torch_params[0].grad, torch_params[1].grad = g["w"], g["b"]
        opt.step()
        torch.testing.assert_close(ours["w"], torch_params[0].detach(), rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(ours["b"], torch_params[1].detach(), rtol=1e-14, atol=1e-15)


def test_split_real_and_imaginary_keeps_none_leaves_and_their_state():
    tx = split_real_and_imaginary(tf.adam(0.1))
    params = _init()
    state = tx.init(params)
    assert isinstance(state, SplitRealAndImaginaryState)
    updates, new_state = tx.update({"w": None, "b": grads(0)["b"]}, state, params)
    assert updates["w"] is None
    mu_w = new_state.inner_state[0].mu["w"]
    assert torch.equal(mu_w.real, torch.zeros(2, 3, dtype=F64))
    assert torch.equal(mu_w.imaginary, torch.zeros(2, 3, dtype=F64))


def test_split_real_and_imaginary_keeps_complex64():
    tx = split_real_and_imaginary(tf.adam(0.1))
    params = _init(torch.complex64)
    updates, _ = tx.update(grads(0, torch.complex64), tx.init(params), params)
    assert updates["w"].dtype == torch.complex64 and updates["b"].dtype == torch.float32


def test_split_real_and_imaginary_forwards_extra_arguments():
    tx = split_real_and_imaginary(tf.chain(tf.sgd(1.0), reduce_on_plateau(factor=0.5, patience=1)))
    params = _init()
    state = tx.init(params)
    for value in (1.0, 1.0):
        updates, state = tx.update(grads(0), state, params, value=value)
    torch.testing.assert_close(updates["w"], -0.5 * grads(0)["w"], rtol=0, atol=0)


def test_split_real_and_imaginary_compiles_without_recompiling():
    tx = split_real_and_imaginary(tf.adam(0.1))
    want = _run(tx, steps=3)
    torch._dynamo.reset()
    compiled = torch.compile(tx.update, backend="aot_eager", fullgraph=True)
    calls = []

    def step(g, s, p):
        if calls:
            with torch.compiler.set_stance("fail_on_recompile"):
                return compiled(g, s, p)
        calls.append(1)
        return compiled(g, s, p)

    assert_trees_close(_run(tx, steps=3, step_fn=step), want, rtol=1e-14)


def test_split_real_and_imaginary_vmap_equals_a_loop():
    tx = split_real_and_imaginary(tf.adam(0.1))
    members = [tf.tree_map(lambda x, i=i: x * (1 + i), grads(0)) for i in range(3)]
    params = _init()
    state = tx.init(params)
    want = [tx.update(g, state, params)[0] for g in members]
    stacked = tf.tree_map(lambda *xs: torch.stack(xs), *members)
    got = torch.func.vmap(lambda g: tx.update(g, state, params)[0])(stacked)
    for i, w in enumerate(want):
        assert_trees_close(tf.tree_map(lambda x, i=i: x[i], got), w, rtol=1e-14)
