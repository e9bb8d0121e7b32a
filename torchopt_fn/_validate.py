"""Construction-time checks of hyperparameters, with messages naming the argument.

A hyperparameter is a Python number, a 0-d real tensor, or (where documented) a schedule.
Anything else (a string, a list, a tensor with more than one element, a complex or boolean
tensor) is a `TypeError`/`ValueError` at construction, never a failure at the first step.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import torch

from torchopt_fn._scalar import is_schedule

__all__ = [
    "UnsupportedInputError",
    "check_in_range",
    "check_non_negative",
    "check_number",
    "check_positive",
    "checks_disabled",
    "checks_enabled",
    "require_params",
]


class UnsupportedInputError(ValueError, RuntimeError):
    """Input an algorithm cannot take though others can (a complex parameter for a method that
    factors or orthogonalises matrices): a `ValueError`, and the `RuntimeError` torch.optim
    raises for the same input, so code written against either catches it."""


# Per thread and per asyncio task: a factory rebuilt in one thread does not silence another's.
_CHECKS_OFF: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "torchopt_fn_checks_off", default=False
)


@contextlib.contextmanager
def checks_disabled() -> Iterator[None]:
    """Skip value checks: a factory rebuilt every step (`inject_hyperparams`) was checked once."""
    if torch.compiler.is_compiling():  # no check runs while tracing; Dynamo can't set a ContextVar
        yield
        return
    token = _CHECKS_OFF.set(True)
    try:
        yield
    finally:
        _CHECKS_OFF.reset(token)


def checks_enabled() -> bool:
    """Whether values are checked here (not under `checks_disabled`)."""
    return not _CHECKS_OFF.get()


def _value(name: str, x: Any) -> float | None:
    """The number to check, or None when ``x`` is a schedule or cannot be read eagerly.

    Raises:
        TypeError: ``x`` is not a number, a real 0-d tensor or a callable.
        ValueError: ``x`` is a tensor with other than one element.
    """
    if is_schedule(x) or torch.compiler.is_compiling():
        return None  # a factory called inside a compiled step was checked when first built
    off = _CHECKS_OFF.get()
    if isinstance(x, bool) or not isinstance(x, (int, float, torch.Tensor)):
        raise TypeError(f"{name} must be a number or a 0-d tensor, got {type(x).__name__} {x!r}.")
    if isinstance(x, (int, float)):
        return None if off else float(x)
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must be a real number, got a {x.dtype} tensor.")
    if x.dim() != 0:
        raise ValueError(f"{name} must be a 0-d tensor, got shape {tuple(x.shape)}.")
    if off or torch._C._are_functorch_transforms_active():
        return None
    try:
        return float(x.detach().item())
    except (RuntimeError, NotImplementedError):  # a fake or meta tensor
        return None


def check_number(name: str, x: Any) -> None:
    """Only the type: a number, a 0-d real tensor or a schedule; NaN is refused."""
    v = _value(name, x)
    if v is not None and math.isnan(v):
        raise ValueError(f"{name} must not be NaN.")


def check_non_negative(name: str, x: Any) -> None:
    v = _value(name, x)
    if v is not None and not (v >= 0.0):
        raise ValueError(f"{name} must be >= 0, got {v}.")


def check_positive(name: str, x: Any) -> None:
    v = _value(name, x)
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
    v = _value(name, x)
    if v is None:
        return
    ok_low = v >= low if low_inclusive else v > low
    ok_high = v <= high if high_inclusive else v < high
    if not (ok_low and ok_high) or math.isnan(v):
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {v}.")


def require_params(params: Any, name: str) -> None:
    """Raise unless ``update`` was given the parameters, which ``name`` needs."""
    if params is None:
        raise ValueError(f"{name} needs the parameters: call update(updates, state, params).")
