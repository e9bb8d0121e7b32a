"""Where a param group's state lives in ``Optimizer.state``: torch's per-parameter dicts.

Every leaf of a group's state tree is a `Slot`: a key (torch's name, from the state class's
``torch_keys``, where there is one), and the parameter it belongs to (per-parameter leaves sit
under the adapter's `ParamList`) or none (group-wide values such as a step count, stored in
every parameter's dict, as torch stores ``step``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn.tree._flatten import ParamList, leaf_trails

__all__ = ["STEP", "Slot", "as_state", "meta", "state_layout"]

# torch.optim keeps a `step` for every algorithm but SGD; where the transformation has no
# counter of its own, the adapter keeps one, so checkpoints move between the two.
STEP = "step"


class Slot(NamedTuple):
    """Where one leaf of a group's state lives in ``self.state``."""

    key: str | None  # None for a None leaf
    index: int | None  # parameter index in the group, or None for a group-wide value
    dtype: torch.dtype | None
    shape: tuple[int, ...] | None
    fill: Any = None  # the value of a key torch's checkpoints lack (``torch_fill``)
    as_int: bool = False  # written to checkpoints as a Python int, as torch does (``torch_ints``)


def state_layout(state: Any) -> tuple[Any, list[Slot]]:
    """Name every leaf of a group's state and say which parameter it belongs to."""
    leaves, spec, trails = leaf_trails(state)
    described = []
    for leaf, trail in zip(leaves, trails):
        cut = next((i for i, (t, _) in enumerate(trail) if t is ParamList), None)
        index = None if cut is None else trail[cut][1]
        outer = trail if cut is None else trail[:cut]
        inner = [] if cut is None else trail[cut + 1 :]
        owner, field_name = (outer[-1][0], str(outer[-1][1])) if outer else (None, "value")
        suffix = "".join(f".{k}" for _, k in inner)
        full = ".".join(str(k) for _, k in outer) + suffix
        torch_keys = getattr(owner, "torch_keys", {})
        short = torch_keys.get(field_name, field_name) + suffix
        fill = getattr(owner, "torch_fill", {}).get(field_name)
        as_int = field_name in getattr(owner, "torch_ints", ())
        described.append((leaf, index, full, short, fill, as_int))
    # A short name is used only when no other state field takes it.
    owners: dict[str, set[str]] = {}
    for _, _, full, short, *_ in described:
        owners.setdefault(short, set()).add(full)
    slots = []
    for leaf, index, full, short, fill, as_int in described:
        if leaf is None:
            slots.append(Slot(None, index, None, None))
            continue
        key = short if len(owners[short]) == 1 else full
        slots.append(Slot(key, index, leaf.dtype, tuple(leaf.shape), fill, as_int))
    return spec, slots


def meta(p: torch.Tensor) -> torch.Tensor:
    """``p``'s shape, dtype and layout on the meta device, to learn a state's layout for free."""
    return torch.empty_like(p, device="meta")


def as_state(value: Any, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """A loaded state value as an own, detached tensor of its slot's dtype on ``device``.

    A Python number (``step`` in old checkpoints) becomes a tensor; a float count is rounded.
    """
    value = torch.as_tensor(value).detach()
    if dtype == torch.int64 and value.is_floating_point():
        value = value.round()
    out = value.to(device=device, dtype=dtype or value.dtype)
    return out.clone() if out is value or out.data_ptr() == value.data_ptr() else out
