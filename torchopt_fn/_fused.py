"""The adapter's fast path: torch's fused kernels where a transformation is exactly their algorithm.

`torch._fused_adamw_`, `_fused_adam_` and `_fused_sgd_` update params and state in place in one
pass with no temporaries. `Optimizer` uses them for a param group when its transformation is
exactly one of these algorithms (`adam`, `adamw`, `sgd`, or their `from_torch` equivalents) with
options the kernels support; every other case takes the generic path. Both paths keep the same
state in ``opt.state`` and are tested against each other (tests/test_optim.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation, recorded_arguments

__all__ = ["fused_kernel_for", "fused_supported"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

FusedStep = Callable[[dict[str, Any], list[torch.Tensor], dict[torch.Tensor, dict]], None]


def _alias(name: str) -> Callable[..., Any]:
    from torchopt_fn.optimizers import _alias

    return getattr(_alias, name)


def _adam_like(weight_decay_key: str | None, kernel: Callable[..., None]) -> FusedStep:
    @torch.compiler.disable  # a fused kernel gains nothing from tracing
    def step(group: dict[str, Any], params: list[torch.Tensor], state: dict) -> None:
        grads = [p.grad for p in params]
        exp_avgs = [state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [state[p]["exp_avg_sq"] for p in params]
        new_step = state[params[0]]["step"] + 1
        beta1, beta2 = group["betas"]
        kernel(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            [new_step] * len(params),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group[weight_decay_key] if weight_decay_key else 0.0,
            amsgrad=False,
            maximize=False,
        )
        for p in group["params"]:
            state[p]["step"] = new_step

    return step


def _sgd_momentum(nesterov: bool) -> FusedStep:
    @torch.compiler.disable  # a fused kernel gains nothing from tracing
    def step(group: dict[str, Any], params: list[torch.Tensor], state: dict) -> None:
        # Our momentum buffer starts at zero, so the first step needs no special case.
        torch._fused_sgd_(
            params,
            [p.grad for p in params],
            [state[p]["momentum_buffer"] for p in params],
            weight_decay=0.0,
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=0.0,
            nesterov=nesterov,
            maximize=False,
            is_first_step=False,
        )

    return step


def fused_kernel_for(tx: GradientTransformation) -> FusedStep | None:
    """The fused step for ``tx`` if it is exactly an algorithm torch has a fused kernel for."""
    arguments = recorded_arguments(tx)
    if arguments is None:
        return None
    factory = tx.factory
    if factory in (_alias("adam"), _alias("adamw")):
        plain = (
            not callable(arguments["learning_rate"])
            and arguments["eps_root"] == 0.0
            and arguments["mu_dtype"] is None
            and not arguments["nesterov"]
            and arguments.get("mask") is None
        )
        if not plain:
            return None
        if factory is _alias("adam"):
            return _adam_like(None, torch._fused_adam_)
        return _adam_like("weight_decay", torch._fused_adamw_)
    if factory is _alias("sgd"):
        momentum = arguments["momentum"]
        plain = (
            not callable(arguments["learning_rate"])
            and isinstance(momentum, float)
            and momentum > 0.0
            and arguments["accumulator_dtype"] is None
        )
        return _sgd_momentum(arguments["nesterov"]) if plain else None
    return None


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether the fused kernels can run on these parameters and their gradients."""
    if not params:
        return False
    device = params[0].device
    if device.type not in ("cpu", "cuda"):
        return False
    for p in params:
        g = p.grad
        if (
            p.device != device
            or p.dtype not in _FLOAT_DTYPES
            or g is None
            or g.is_sparse
            or g.dtype != p.dtype
            or (type(p) is not torch.nn.Parameter and type(p) is not torch.Tensor)
        ):
            return False
    return True
