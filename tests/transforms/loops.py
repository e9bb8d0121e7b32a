"""Drivers for the reference-maths tests: run a transform and a reference loop, compare.

Two kinds of reference:

- ``ref_x(grads, param, **kwargs) -> updates``: one leaf at a time over a fixed gradient
  sequence (`check_against_loop`, on `random_problem`).
- ``@reference``-decorated ``update(state, grads, params, step, value) -> updates`` over the
  goldens' problem, where the parameters move (`check_against_trajectory`): for rules that
  read the parameters or the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN, run_steps

F64 = torch.float64
STEPS = 12
LR = -0.05  # the goldens chain every transform with scale(-0.05)

Params = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- fixed gradients


def random_problem(seed: int, steps: int = STEPS) -> tuple[Params, list[Params]]:
    """Random float64 params and a gradient sequence over a two-leaf tree."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    params = {"a": randn(4, 3), "b": randn(5)}
    grads = [{"a": randn(4, 3), "b": 0.1 * randn(5)} for _ in range(steps)]
    for g in grads[:3]:
        # A coordinate with no gradient yet: Adagrad's s = 0 branch, Lion's sign(0).
        g["a"][..., 0, 0] = 0.0
    return params, grads


def run_updates(tx: tf.GradientTransformation, params: Params, grads: list[Params]) -> list[Any]:
    """The updates of every step of ``tx`` (params fixed)."""
    state = tx.init(params)
    outs = []
    for g in grads:
        u, state = tx.update(g, state, params)
        outs.append(u)
    return outs


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items())


def check_against_loop(
    case: tuple[str, dict[str, Any]], references: dict[str, Callable[..., list[torch.Tensor]]]
) -> None:
    """The transform ``case = (name, kwargs)`` equals ``references[name]`` leaf by leaf."""
    name, kwargs = case
    params, grads = random_problem(seed=0)
    outs = run_updates(getattr(tf, name)(**kwargs), params, grads)
    for key in params:
        expected = references[name]([g[key] for g in grads], params[key], **kwargs)
        for step, (u, e) in enumerate(zip(outs, expected)):
            assert u[key].dtype == F64
            torch.testing.assert_close(
                u[key],
                e,
                rtol=1e-12,
                atol=1e-15,
                msg=lambda m, key=key, step=step: f"{key} step {step}: {m}",
            )


# --------------------------------------------------------------------------- moving params


def clone_params(p: Params) -> Params:
    return {k: v.clone() for k, v in p.items()}


def trajectory(tx: tf.GradientTransformation, steps: int = STEPS, value: bool = False):
    """Our params after each step of ``tx`` on the goldens' problem."""
    params = GOLDEN.init_params(F64)
    state = tx.init(params)
    out = []
    for _ in range(steps):
        params, state = run_steps(tx, params, GOLDEN.grad, 1, GOLDEN.loss if value else None, state)
        out.append(clone_params(params))
    return out


def assert_trajectories_close(ours: list[Params], expected: list[Params], rtol: float) -> None:
    assert len(ours) == len(expected)
    for step, (a, b) in enumerate(zip(ours, expected)):
        for k in b:
            torch.testing.assert_close(
                a[k].reshape(-1), b[k].reshape(-1), rtol=rtol, atol=1e-14, msg=f"step {step} {k}"
            )


def reference(update: Callable[[dict, Params, Params, int, Any], Params]) -> Callable:
    """Drive ``update(state, grads, params, step, value) -> u`` (state: a dict it may mutate).

    Runs `STEPS` steps of ``p <- p + LR * u`` (or, ``scale_first``, ``p <- p + u(LR * g)``).
    """

    def run(steps: int = STEPS, scale_first: bool = False, **kwargs: Any) -> list[Params]:
        p = GOLDEN.init_params(F64)
        state: dict[str, Any] = {"kw": kwargs}
        out = []
        for t in range(steps):
            g = GOLDEN.grad(p)
            if scale_first:
                u = update(state, {k: LR * v for k, v in g.items()}, p, t, GOLDEN.loss(p))
                p = {k: p[k] + u[k] for k in p}
            else:
                u = update(state, g, p, t, GOLDEN.loss(p))
                p = {k: p[k] + LR * u[k] for k in p}
            out.append(clone_params(p))
        return out

    return run


def check_against_trajectory(
    name: str, kwargs: dict[str, Any], ref: Callable, how: dict[str, bool]
) -> None:
    """The transform ``name(**kwargs)`` moves the params as the reference does."""
    t = getattr(tf, name)(**kwargs)
    scale_first = how.get("scale_first", False)
    tx = tf.chain(tf.scale(LR), t) if scale_first else tf.chain(t, tf.scale(LR))
    expected = ref(scale_first=scale_first, **kwargs)
    assert_trajectories_close(trajectory(tx, value=how.get("value", False)), expected, 1e-12)


def trajectory_cases(cases: list[tuple]) -> pytest.MarkDecorator:
    """Parametrize a test over ``(name, kwargs, reference, how)`` trajectory cases."""
    return pytest.mark.parametrize(
        ("name", "kwargs", "reference", "how"),
        cases,
        ids=[f"{c[0]}-{i}" for i, c in enumerate(cases)],
    )
