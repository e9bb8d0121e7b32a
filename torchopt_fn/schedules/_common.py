"""Types and small helpers shared by the schedules.

Every schedule converts its count with `as_count` and its float hyperparameters with
`as_float`, so the arithmetic runs in float64 on the count's device (float32 on ``mps``, which
has no float64) and stays traceable: no ``.item()``, no Python branching on tensor values.
"""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import Tensor

ScalarLike: TypeAlias = float | Tensor
"""A hyperparameter: a Python number, or a 0-d tensor (differentiable under `torch.func.grad`)."""


def float_dtype(device: torch.device) -> torch.dtype:
    """The dtype schedules compute in: float64, or float32 on ``mps`` (no float64 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def as_count(count: Tensor | int) -> Tensor:
    """``count`` as a floating tensor in the schedule dtype, on its own device."""
    count = torch.as_tensor(count)
    return count.to(float_dtype(count.device))


def as_float(value: ScalarLike, like: Tensor) -> Tensor:
    """``value`` as a tensor with the dtype and device of ``like`` (a converted count)."""
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def check(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``; NaN comparisons count as failures."""
    if not ok:
        raise ValueError(message)
