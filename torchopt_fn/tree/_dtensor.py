"""DTensor leaves (FSDP2, tensor parallel): what the shared maths needs to stay exact on them.

Element-wise maths runs shard-locally on DTensors as it is. These do not:

- a reduction (a norm, an inner product) over a sharded tensor gives a 0-d DTensor with a
  pending sum; `plain` finishes it and returns an ordinary 0-d tensor, which then mixes with
  any leaf (DTensor takes 0-d plain tensors as scalars, and nothing else);
- a flat view (``x.reshape(-1)``) of an unevenly sharded tensor does not exist: `vdot` sums
  products instead;
- DTensor's maximum fails on a rank whose shard is empty (and the ranks then fall out of
  step): `abs_max`, `all_non_negative` and `vector_max_along` take each rank's own reduction;
- a tensor made whole on every rank (noise drawn from a seed, a whole-matrix result) is cut to
  a leaf's placement by `place_like`, without communication; an operand that fits no leaf's
  placement (per-example factors) is replicated by `replicated_like`;
- `replace_placement` puts an update back in its parameter's placement before it is added (a
  reduction such as SM3's may have left it replicated, and an in-place add cannot move it).
"""

from __future__ import annotations

from typing import Any

import torch

if torch.distributed.is_available():
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
else:  # pragma: no cover - builds without torch.distributed
    DTensor = Partial = Replicate = Shard = distribute_tensor = None

__all__: list[str] = []


def is_dtensor(x: Any) -> bool:
    """Whether ``x`` is a `torch.distributed.tensor.DTensor`."""
    return DTensor is not None and isinstance(x, DTensor)


def any_dtensor(leaves: list[Any]) -> bool:
    """Whether any of ``leaves`` is a DTensor."""
    return DTensor is not None and any(isinstance(x, DTensor) for x in leaves)


def plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` as an ordinary tensor: a DTensor's whole value (all-gathered or all-reduced)."""
    return x.full_tensor() if is_dtensor(x) else x


def place_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x``, the same whole tensor on every rank, in ``like``'s placement when it is a DTensor.

    Each rank keeps its own shard of its own copy: nothing is communicated.
    """
    if not is_dtensor(like) or is_dtensor(x):
        return x
    return distribute_tensor(x, like.device_mesh, like.placements, src_data_rank=None)


def replicated_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x``, the same on every rank, as a replicated DTensor on ``like``'s mesh (for an operand
    that no leaf's placement fits, such as per-example factors), else ``x``."""
    if not is_dtensor(like) or is_dtensor(x):
        return x
    replicate = [Replicate()] * like.device_mesh.ndim
    return DTensor.from_local(x, like.device_mesh, replicate, run_check=False)


def replace_placement(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """DTensor ``x`` redistributed to ``like``'s placement (where a reduction left it otherwise)."""
    if is_dtensor(x) and is_dtensor(like) and x.placements != like.placements:
        return x.redistribute(like.device_mesh, like.placements)
    return x


def placed_like(xs: list[Any], likes: list[Any]) -> list[Any]:
    """`replace_placement` over lists of leaves (the updates before they meet their params)."""
    if not any_dtensor(xs):
        return xs
    return [replace_placement(x, like) for x, like in zip(xs, likes)]


def abs_max(x: torch.Tensor) -> torch.Tensor:
    r"""$\max |x|$ of a DTensor, an ordinary 0-d tensor; NaN if any element is NaN.

    Each rank reduces its own shard (an empty one counts as 0: DTensor's ``amax`` fails
    there) and the ranks take the maximum; NaN is carried on its own, as a maximum across
    processes need not propagate it.
    """
    local = x.to_local().abs()
    mesh = x.device_mesh
    if local.numel():
        found = torch.stack([local.amax(), local.isnan().any().to(local.dtype)])
    else:
        found = local.new_zeros(2)
    found = DTensor.from_local(found, mesh, [Partial("max")] * mesh.ndim, run_check=False)
    largest, any_nan = plain(found).unbind()
    return torch.where(any_nan > 0, torch.nan, largest)


def all_non_negative(x: torch.Tensor) -> torch.Tensor:
    """Whether DTensor ``x`` has no negative (and no NaN) element: an ordinary 0-d bool, the
    same on every rank (an empty shard has none)."""
    local = x.to_local()
    ok = local.amin() >= 0 if local.numel() else local.new_ones((), dtype=torch.bool)
    mesh = x.device_mesh
    found = DTensor.from_local(
        ok.to(torch.float32).reshape(1), mesh, [Partial("min")] * mesh.ndim, run_check=False
    )
    return plain(found)[0] > 0


def sharded_by_rows(x: torch.Tensor) -> bool:
    """Whether each rank holds whole rows of DTensor ``x``: sharded along axis 0 or replicated."""
    return all(isinstance(p, Replicate) or p == Shard(0) for p in x.placements)


def vector_max_along(local: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """The vector along ``axis`` of DTensor ``x`` whose shard on each rank is ``local``, that
    rank's maximum over its shard's other axes: sharded where ``axis`` is sharded, the ranks'
    maximum where another axis is (SM3's statistics of a sharded matrix)."""
    placements = [
        (Shard(0) if p.dim == axis else Partial("max")) if isinstance(p, Shard) else p
        for p in x.placements
    ]
    vector = DTensor.from_local(
        local, x.device_mesh, placements, run_check=False, shape=(x.shape[axis],), stride=(1,)
    )
    whole = [Replicate() if isinstance(p, Partial) else p for p in placements]
    return vector.redistribute(x.device_mesh, whole)


def vdot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """$\\langle x, y \\rangle$ with ``x`` conjugated, a 0-d ordinary tensor for DTensors too."""
    if is_dtensor(x) or is_dtensor(y):
        return plain((x.conj() * y).sum())
    return torch.vdot(x.reshape(-1), y.reshape(-1))
