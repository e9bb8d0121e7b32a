"""Scalars: the `Scalar` type, `is_schedule`, and `step_scalar`, the only way a step-dependent
scalar reaches a compiled graph.

Inductor inlines a pointwise 0-d computation into every kernel that reads it. A bias
correction ``1 - b1 ** t`` or a schedule's ``cos(...)`` then runs once per *element* of every
tensor it scales: on CPU two `std::pow` per 16-lane vector made a compiled AdamW step 1.6x
slower than torch's fused kernel (8M params: 19.2 ms vs 12.2 ms; with the scalar computed once,
12.7 ms vs 13.0 ms). Passing the scalar through an opaque identity op makes Inductor compute it
into its own 0-d buffer, which the element-wise kernels load.

Eagerly (and under vmap/grad outside compile) `step_scalar` is the identity and costs nothing.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import torch

__all__ = ["Scalar", "is_schedule", "step_scalar"]

Scalar: TypeAlias = float | torch.Tensor
"""A hyperparameter value: a Python number or a 0-d tensor."""


def is_schedule(value: Any) -> bool:
    """Whether ``value`` is a schedule (a function of the step count) rather than a number."""
    return callable(value) and not isinstance(value, torch.Tensor)


@torch.library.custom_op("torchopt_fn::step_scalar", mutates_args=())
def _materialize(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


@_materialize.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
    return grad


_materialize.register_autograd(_backward)


@_materialize.register_vmap
def _(info: object, in_dims: tuple[int | None], x: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    return _materialize(x), in_dims[0]


def step_scalar(x: Any) -> Any:
    """``x`` itself; under `torch.compile` a 0-d tensor ``x`` is computed into its own buffer."""
    if isinstance(x, torch.Tensor) and x.dim() == 0 and torch.compiler.is_compiling():
        return _materialize(x)
    return x
