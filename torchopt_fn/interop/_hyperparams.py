"""Which hyperparameters the `Optimizer` adapter mirrors into param groups, under torch's names.

A recorded transformation remembers the arguments of every public factory inside it; its
real-number arguments become param-group keys (``learning_rate`` as ``lr``, ``b1``/``b2`` as
``betas``, ...), and a name two parts use with different values is ambiguous. A `from_torch`
transformation mirrors every torch option, flags included, under torch's own names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._record import recorded_arguments, recorded_nodes

__all__ = ["hyperparams", "is_number", "mirrored"]

# Argument names that torch spells differently. ``b1``/``b2`` become ``betas``.
TORCH_NAME = {"learning_rate": "lr"}
TORCH_NAME_BY_FACTORY = {"rmsprop": {"decay": "alpha"}}


def is_number(v: Any) -> bool:
    """A hyperparameter to mirror: a real number (torch writes ``weight_decay=0`` as an int)."""
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and v.is_floating_point()
    return isinstance(v, (float, int)) and not isinstance(v, bool)


def mirrored(factory: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Torch group key -> the names of the recorded call's arguments it stands for."""
    if getattr(factory, "hyperparams_in_state", False):
        return {}  # `inject_hyperparams`: its values live in the state, not in the call
    if getattr(factory, "torch_options", False):
        # `from_torch`: every option, numbers and flags, under torch's own name, as torch
        # keeps them in its param groups (so its checkpoints carry them both ways).
        return {name: (name,) for name in arguments if name != "optimizer"}
    renames = {**TORCH_NAME, **TORCH_NAME_BY_FACTORY.get(factory.__name__, {})}
    out: dict[str, tuple[str, ...]] = {}
    if is_number(arguments.get("b1")) and is_number(arguments.get("b2")):
        out["betas"] = ("b1", "b2")
    for name, value in arguments.items():
        if name in ("b1", "b2") and "betas" in out:
            continue
        if is_number(value) or (
            name == "betas" and isinstance(value, tuple) and all(map(is_number, value))
        ):
            out[renames.get(name, name)] = (name,)
    return out


def hyperparams(tx: GradientTransformation) -> tuple[dict[str, Any], set[str]]:
    """The defaults to mirror into param groups (torch key -> value), and the ambiguous keys.

    A name that two parts of the transformation use with different values (``trace`` and
    ``ema`` both have a ``decay``) is ambiguous: it is not mirrored, and a param group that
    sets it is an error.
    """
    defaults: dict[str, Any] = {}
    ambiguous: set[str] = set()
    for node in recorded_nodes(tx):
        arguments = recorded_arguments(node)
        for key, names in mirrored(node.factory, arguments).items():
            value = tuple(arguments[n] for n in names) if len(names) > 1 else arguments[names[0]]
            if key in defaults and defaults[key] != value:
                ambiguous.add(key)
            defaults.setdefault(key, value)
    return {k: v for k, v in defaults.items() if k not in ambiguous}, ambiguous
