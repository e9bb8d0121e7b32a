"""Small pieces shared by transforms: step counters and hyperparameter values."""

from __future__ import annotations

from typing import Any

import torch

from torchopt_fn import _tree
from torchopt_fn._base import Params, ScalarOrSchedule
from torchopt_fn._scalar import step_scalar

__all__ = ["init_count", "params_device", "resolve"]


def params_device(params: Params) -> torch.device:
    """The device of the first tensor leaf of ``params`` (CPU when there is none)."""
    for leaf in _tree.tree_leaves(params):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return torch.device("cpu")


def init_count(params: Params) -> torch.Tensor:
    """A 0-d int64 step counter on the params' device."""
    return torch.zeros((), dtype=torch.int64, device=params_device(params))


def resolve(value: ScalarOrSchedule, count: torch.Tensor) -> Any:
    """The value of a hyperparameter at step ``count``: a schedule is called, a number returned."""
    if callable(value) and not isinstance(value, torch.Tensor):
        return step_scalar(value(count))
    return value
