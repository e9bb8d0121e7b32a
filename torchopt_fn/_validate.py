"""Construction-time checks of hyperparameters, with messages naming the argument."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["check_in_range", "check_non_negative", "check_positive", "checks_disabled"]

_DISABLED = [False]


@contextlib.contextmanager
def checks_disabled() -> Iterator[None]:
    """Skip the checks: a factory rebuilt every step (`inject_hyperparams`) was checked once."""
    _DISABLED.append(True)
    try:
        yield
    finally:
        _DISABLED.pop()


def _value(x: Any) -> float | None:
    """A Python number to check, or None when ``x`` cannot be checked eagerly."""
    if _DISABLED[-1] or torch.compiler.is_compiling():
        return None
    if callable(x) and not isinstance(x, torch.Tensor):
        return None  # a schedule
    if isinstance(x, torch.Tensor):
        if x.numel() != 1 or torch._C._are_functorch_transforms_active():
            return None
        try:
            return float(x.detach().reshape(()).item())
        except RuntimeError:  # a fake or meta tensor
            return None
    if isinstance(x, (int, float)):
        return float(x)
    return None


def check_non_negative(name: str, x: Any) -> None:
    v = _value(x)
    if v is not None and not (v >= 0.0):
        raise ValueError(f"{name} must be >= 0, got {v}.")


def check_positive(name: str, x: Any) -> None:
    v = _value(x)
    if v is not None and not (v > 0.0):
        raise ValueError(f"{name} must be > 0, got {v}.")


def check_in_range(
    name: str,
    x: Any,
    low: float,
    high: float,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
    v = _value(x)
    if v is None:
        return
    ok_low = v >= low if low_inclusive else v > low
    ok_high = v <= high if high_inclusive else v < high
    if not (ok_low and ok_high) or math.isnan(v):
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {v}.")
