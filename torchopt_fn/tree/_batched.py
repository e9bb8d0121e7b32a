"""A transform's list maths on a whole `torch.func.vmap` batch at once.

Under ``vmap`` every op on a batched tensor goes through its batching rule, and the
multi-tensor (``torch._foreach_*``) kernels have none, so an update inside ``vmap`` runs one op
per leaf, each with the batching rule's overhead: AdamW over a 16-member ensemble of MLPs took
1.9x (4.3M parameters) to 4x (0.9M) the same update on the stacked tree, and torch's fused Adam
kernel could not run at all. For maths that is element-wise, the batch axis is
an axis like any other. `map_leaves` then hands the list function the tensors *under* the
batch, each with its batch axis first, so the multi-tensor kernels run on them, and wraps the
results as batched tensors again (`under_batch`, `batched_again`). Scalars batched at the same
level (per-member hyperparameters, per-member step counts and what is computed from them) are
unwrapped by `Ops` into one ``(B, 1, ..., 1)`` view per leaf (`batched_operand`), which
broadcasts over each member's elements.

Per-tensor norms (`member_norm`) are each member's, batched again, so that global-norm clipping
and trust ratios run under the batch too.

This is only taken where it computes what the per-op path does: for list functions marked
batchable, under one ``vmap`` level and no other transform (the tensors under the batch are
plain), where nothing requires grad, and not while compiling (Dynamo traces vmap itself, and
Inductor fuses the per-op maths anyway). A function that mixes in a batched value `Ops` never
sees (one it closes over and uses directly) returns batched tensors, which `map_leaves` takes
as the sign to drop the result and take the per-op path. Tests check every transformation bit
for bit against the per-op path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch._C import _functorch

__all__ = [
    "VmapLevel",
    "batched_again",
    "batched_operand",
    "member_norm",
    "one_value",
    "sole_vmap",
    "under_batch",
]


class VmapLevel(NamedTuple):
    """The one active ``vmap``: its functorch level and its batch size."""

    level: int
    size: int


def sole_vmap(tensors: Iterable[torch.Tensor]) -> VmapLevel | None:
    """The active ``vmap`` if it is the only transform and ``tensors`` may run under its batch.

    That is: the interpreter stack holds one ``vmap`` and nothing else, at least one of
    ``tensors`` is batched, each is batched at that level around a plain tensor or is plain,
    and none requires grad while grad mode is on. `None` otherwise (and always while
    compiling).
    """
    if torch.compiler.is_compiling():
        return None
    stack = _functorch.get_interpreter_stack()
    if stack is None or len(stack) != 1 or stack[0].key() != _functorch.TransformType.Vmap:
        return None
    level = stack[0].level()
    grad_on = torch.is_grad_enabled()
    batched = False
    for t in tensors:
        if _functorch.is_batchedtensor(t):
            if _functorch.maybe_get_level(t) != level:
                return None
            t = _functorch.get_unwrapped(t)
            batched = True
        if _functorch.is_functorch_wrapped_tensor(t) or (grad_on and t.requires_grad):
            return None
    if not batched:
        return None
    return VmapLevel(level, _functorch.CVmapInterpreterPtr(stack[0]).batchSize())


def under_batch(x: torch.Tensor, vmap: VmapLevel) -> torch.Tensor:
    """The tensor under ``x``'s batch with its batch axis first; a plain ``x`` expanded to it.

    The expansion is a stride-0 view: the list functions never write into their inputs.
    """
    if _functorch.is_batchedtensor(x):
        inner, dim = _functorch._unwrap_batched(x, vmap.level)
        return inner.movedim(dim, 0) if dim else inner
    return x.expand(vmap.size, *x.shape)


def batched_again(x: torch.Tensor, vmap: VmapLevel) -> torch.Tensor:
    """A plain tensor computed under the batch (batch axis first) as a batched tensor again."""
    return _functorch._add_batch_dim(x, 0, vmap.level)


def batched_operand(y: torch.Tensor, vmap: VmapLevel, x: torch.Tensor) -> torch.Tensor:
    """``y``, batched at ``vmap``'s level, as a plain tensor that broadcasts against ``x``.

    ``x`` is a tensor under the batch (batch axis first). ``y``'s per-member value (a 0-d
    scalar, or any shape that broadcasts against a member of ``x``) gets the batch axis first
    and ones between it and its own axes, so each member meets its own value.
    """
    inner = under_batch(y, vmap)
    ones = x.dim() - inner.dim()
    if ones <= 0:
        return inner
    return inner.reshape(vmap.size, *(1,) * ones, *inner.shape[1:])


def one_value(x: Any, vmap: VmapLevel) -> Any:
    """``x`` as one plain value for every member, or `None` where the members' values differ.

    For what a kernel takes once for all members (a step count, a scheduled learning rate).
    A batched ``x`` is read on the host, so only on CPU (elsewhere the read would wait for the
    device, and this gives `None`); anything else is returned as it is.
    """
    if not isinstance(x, torch.Tensor) or not _functorch.is_batchedtensor(x):
        return x
    inner = under_batch(x, vmap)
    if inner.device.type != "cpu" or inner.numel() == 0:
        return None
    first = inner[0]
    return first if bool((inner == first).all()) else None


def member_norm(x: torch.Tensor, vmap: VmapLevel) -> torch.Tensor:
    """The L2 norm of each member of ``x`` (a tensor under the batch, batch axis first), as a
    0-d tensor batched at ``vmap``'s level: what ``torch.linalg.vector_norm`` gives per member."""
    rows = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (an empty member has -1 unknown)
    return batched_again(torch.linalg.vector_norm(rows, dim=1), vmap)
