"""ACProp against reference loops written from optax 0.2.8's rule (and apart from the paper's).

optax's rule, per leaf, with $t$ the count before the step: $u = g / (1 + \\epsilon)$ at
$t = 0$, else $u = g / (\\sqrt{s / (1 - \\beta_2^t)} + \\epsilon)$; then
$s \\leftarrow \\beta_2 s + (1-\\beta_2)(g - m)^2 + \\epsilon_{root}$ with the *old* $m$, and
$m \\leftarrow \\beta_1 m + (1-\\beta_1) g$. The paper (Zhuang et al., NeurIPS 2021) steps
along the momentum and centres on the new one.
"""

from __future__ import annotations

import pytest
import torch

from tests.transforms.loops import random_problem, run_updates
from torchopt_fn.contrib import acprop, scale_by_acprop

CASES = [
    {},
    {"b1": 0.5, "b2": 0.9, "eps": 1e-8, "eps_root": 1e-10},
]


def ref_optax(gs, p, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    m, s, out = torch.zeros_like(p), torch.zeros_like(p), []
    for t, g in enumerate(gs):
        denom = 1.0 + eps if t == 0 else torch.sqrt(s / (1 - b2**t)) + eps
        out.append(g / denom)
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root
        m = b1 * m + (1 - b1) * g
    return out


def ref_paper(gs, p, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16):
    """The paper's rule: the new momentum over the previous belief (1 on the first step)."""
    m, s, out = torch.zeros_like(p), torch.zeros_like(p), []
    for t, g in enumerate(gs):
        m = b1 * m + (1 - b1) * g
        out.append(m if t == 0 else m / (torch.sqrt(s) + eps))
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps_root
    return out


def _check(outs, expected_per_key, scale=1.0):
    for key, expected in expected_per_key.items():
        for step, (u, e) in enumerate(zip(outs, expected)):
            torch.testing.assert_close(
                u[key], scale * e, rtol=1e-12, atol=1e-15, msg=f"{key} step {step}"
            )


@pytest.mark.parametrize("kwargs", CASES, ids=["defaults", "options"])
def test_scale_by_acprop_matches_a_loop_of_optax_rule(kwargs):
    params, grads = random_problem(seed=0)
    outs = run_updates(scale_by_acprop(**kwargs), params, grads)
    _check(outs, {k: ref_optax([g[k] for g in grads], params[k], **kwargs) for k in params})


def test_acprop_adds_decayed_weights_then_the_learning_rate():
    params, grads = random_problem(seed=1)
    outs = run_updates(acprop(0.05, weight_decay=0.1), params, grads)
    expected = {
        k: [u + 0.1 * params[k] for u in ref_optax([g[k] for g in grads], params[k])]
        for k in params
    }
    _check(outs, expected, scale=-0.05)


def test_acprop_steps_along_the_gradient_not_the_papers_momentum():
    params, grads = random_problem(seed=2)
    outs = run_updates(scale_by_acprop(), params, grads)
    paper = ref_paper([g["a"] for g in grads], params["a"])
    assert not torch.allclose(outs[-1]["a"], paper[-1], rtol=1e-3)
