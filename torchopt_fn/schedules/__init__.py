"""Schedules: pure torch functions of the step count, with optax's names and arguments.

A schedule maps a 0-d integer tensor (or an int) to a 0-d float64 tensor on the count's
device (float32 on ``mps``). Schedules trace under ``torch.compile(fullgraph=True)`` without
recompiling as the count changes, batch under `torch.func.vmap`, and are differentiable in
hyperparameters passed as tensors.
"""

from torchopt_fn._base import Schedule
from torchopt_fn.schedules._join import join_schedules
from torchopt_fn.schedules._schedules import (
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    exponential_decay,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
)
from torchopt_fn.schedules._warmup import (
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_stable_decay_schedule,
)

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_stable_decay_schedule",
]
