"""The functional `adam`/`adamw` fast path through `torch._fused_adam_` equals the generic chain."""

from __future__ import annotations

import copy

import pytest
import torch

import torchopt_fn as tf
from torchopt_fn import transforms

STEPS = 25


def _matrices(params):
    return tf.tree_map(lambda p: p.ndim >= 2, params)


def _generic(lr: float, weight_decay: float | None, mask=None):
    """The same chain as the alias, built from its parts (never fused)."""
    stages = [transforms.scale_by_adam(b1=0.8, b2=0.95, eps=1e-6)]
    if weight_decay is not None:
        stages.append(transforms.add_decayed_weights(weight_decay, mask))
    return tf.chain(*stages, transforms.scale_by_learning_rate(lr))


def _alias(name: str, lr: float, weight_decay: float | None, mask=None):
    if name == "adam":
        return tf.adam(lr, b1=0.8, b2=0.95, eps=1e-6)
    return tf.adamw(lr, b1=0.8, b2=0.95, eps=1e-6, weight_decay=weight_decay, mask=mask)


def _problem(dtype: torch.dtype):
    torch.manual_seed(0)
    params = {"w": torch.randn(5, 3, dtype=dtype), "b": torch.randn(3, dtype=dtype), "n": None}
    return params, lambda p: {"w": p["w"] ** 3 - p["w"], "b": torch.sin(p["b"]), "n": None}


def _run(tx, params, grad_fn):
    state = tx.init(params)
    for _ in range(STEPS):
        updates, state = tx.update(grad_fn(params), state, params)
        params = tf.apply_updates(params, updates)
    return params, state


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    kernel = torch._fused_adam_

    def counting(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", counting)
    return calls


# The masks: a function (the matrices decay), a tree, and one that keeps every leaf.
MASKS = {"matrices": _matrices, "tree": {"w": False, "b": True, "n": True}, "all": True}
CASES = [("adam", None, None), ("adamw", 0.0, None), ("adamw", 0.1, None)]
CASES += [("adamw", 0.1, name) for name in MASKS]
CASES += [("adam", None, "schedule"), ("adamw", 0.1, "schedule"), ("adamw", 0.1, "both")]


# float32 allows for the kernel rounding its moments differently (the generic moment is a lerp).
@pytest.mark.parametrize(
    ("dtype", "rtol", "atol"), [(torch.float64, 1e-13, 0.0), (torch.float32, 1e-5, 1e-7)]
)
@pytest.mark.parametrize(("name", "weight_decay", "mask"), CASES)
def test_fused_equals_generic(name, weight_decay, mask, dtype, rtol, atol, fused_calls):
    params, grad_fn = _problem(dtype)
    # A schedule, or a schedule and a mask: the kernel takes the schedule's value as a tensor.
    lr = (
        tf.warmup_cosine_decay_schedule(0.0, 0.05, 5, STEPS)
        if mask in ("schedule", "both")
        else 0.05
    )
    if callable(lr) and dtype == torch.float32:
        atol = 1e-6  # the kernel applies the schedule's float64 value; the chain, it rounded
    mask = _matrices if mask == "both" else MASKS.get(mask)
    got_params, got_state = _run(_alias(name, lr, weight_decay, mask), params, grad_fn)
    assert len(fused_calls) == STEPS
    want_params, want_state = _run(_generic(lr, weight_decay, mask), params, grad_fn)
    assert len(fused_calls) == STEPS  # the hand-built chain is never fused
    torch.testing.assert_close(got_params, want_params, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_state, want_state, rtol=rtol, atol=atol)
    assert got_params["n"] is None and got_state[0].mu["n"] is None


def test_fused_step_is_pure(fused_calls):
    params, grad_fn = _problem(torch.float64)
    tx = _alias("adamw", 0.05, 0.1)
    state = tx.update(grad_fn(params), tx.init(params), params)[1]
    grads = grad_fn(params)
    before = copy.deepcopy((params, grads, state))
    tx.update(grads, state, params)
    assert len(fused_calls) == 2
    torch.testing.assert_close((params, grads, state), before, rtol=0.0, atol=0.0)


def _requires_grad(params):
    return {k: None if v is None else v.requires_grad_() for k, v in params.items()}


@pytest.mark.parametrize(
    "case",
    [
        "float16",
        "requires_grad",
        "tensor_lr",
        "nesterov",
        "mixed_dtypes",
    ],
)
def test_generic_path_where_the_kernel_cannot_stand_in(case, fused_calls):
    dtype = torch.float16 if case == "float16" else torch.float64
    params, grad_fn = _problem(dtype)
    lr = {"tensor_lr": torch.tensor(0.05)}.get(case, 0.05)
    tx = tf.adamw(lr, weight_decay=0.1, nesterov=case == "nesterov")
    if case == "requires_grad":
        params = _requires_grad(params)
    if case == "mixed_dtypes":
        params = {**params, "b": params["b"].float()}
    tx.update(grad_fn(params), tx.init(params), params)
    assert fused_calls == []


def test_fused_path_keeps_the_error_for_a_missing_params():
    params, grad_fn = _problem(torch.float64)
    tx = tf.adamw(0.05, weight_decay=0.1)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(grad_fn(params), tx.init(params))
