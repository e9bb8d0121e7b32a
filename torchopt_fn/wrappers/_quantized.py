"""`quantized_state`: keep any transformation's large state leaves in 8 bits.

Each large floating leaf of the inner state is stored blockwise, as 8-bit floats scaled so that
each block's largest magnitude is the format's largest finite value: a leaf with a negative
element in float8 e4m3 (3 mantissa bits, a relative spacing of at most 1/8 over 15 octaves,
for first moments), a leaf with none in float8 e5m2 (2 mantissa bits over 30 octaves: second
moments span many orders of magnitude, and an estimate that rounds to 0 would divide by eps).
Both are non-linear codes, dense near zero as 8-bit Adam's dynamic code is. The code is picked
per leaf on each step, by a 0-d flag in the state, so it compiles without branches. Each update
decodes the leaves, runs the inner update at the leaves' own precision and encodes the new
state, rounding to nearest.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn.tree._dtensor import (
    DTensor,
    all_non_negative,
    is_dtensor,
    replace_placement,
    sharded_by_rows,
)
from torchopt_fn.tree._flatten import tree_map

__all__ = ["QuantizedLeaf", "quantized_state"]

_SIGNED = torch.float8_e4m3fn  # first moments: finer steps, a narrower range
_NON_NEGATIVE = torch.float8_e5m2  # second moments: a wider range
_SIGNED_MAX = torch.finfo(_SIGNED).max  # 448
_NON_NEGATIVE_MAX = torch.finfo(_NON_NEGATIVE).max  # 57344


class QuantizedLeaf(NamedTuple):
    """One state leaf of `quantized_state`, in 8 bits.

    Attributes:
        codes: the leaf's shape, ``uint8``: float8 bit patterns (e5m2 where ``non_negative``,
            else e4m3), each block scaled by its ``absmax``.
        absmax: the largest magnitude of each block of ``block_size`` consecutive elements
            (the leaf flattened), in the leaf's dtype, which decoding restores: a vector, or,
            where each row of the leaf (index of its first axis) is a whole number of blocks,
            a ``(rows, blocks per row)`` matrix, which shards along with the rows.
        non_negative: a 0-d bool, whether the leaf had no negative element.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.quantized_state(tf.adam(1e-3), min_size=4)
        >>> leaf = tx.init({"w": torch.zeros(2, 4)})[0].nu["w"]
        >>> leaf.codes.dtype, leaf.codes.shape, leaf.absmax.shape
        (torch.uint8, torch.Size([2, 4]), torch.Size([1]))
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    non_negative: torch.Tensor


def _blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """``x`` flattened and zero-padded into rows of ``block_size``."""
    flat = x.reshape(-1)
    pad = -flat.numel() % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, block_size)


def blocks_per_row(shape: torch.Size, block_size: int) -> int | None:
    """How many blocks each row holds, where every row is a whole number of them, else `None`.

    A row is the elements at one index of the first axis. Where rows are whole blocks, the
    flat blocks are row blocks: the scales are kept as a ``(rows, blocks per row)`` matrix, and
    a shard of whole rows (FSDP2's ``Shard(0)``) is quantized on its own rank, with the numbers
    one process would get.
    """
    if len(shape) < 2 or shape[0] == 0:
        return None
    row = math.prod(shape[1:])
    return row // block_size if row and row % block_size == 0 else None


def quantizable(x: Any, block_size: int, min_size: int) -> bool:
    """Whether `quantized_state` stores state leaf ``x`` in 8 bits.

    A floating tensor of at least ``min_size`` elements; a DTensor only where its rows are
    whole blocks and it is sharded along its first axis or replicated (another shard is not
    a set of whole blocks).
    """
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() >= min_size):
        return False
    if not is_dtensor(x):
        return True
    return blocks_per_row(x.shape, block_size) is not None and sharded_by_rows(x)


def quantize(x: torch.Tensor, block_size: int) -> QuantizedLeaf:
    """``x`` as a `QuantizedLeaf` (blocks of ``block_size``, rounding to nearest).

    A DTensor (sharded by rows, see `quantizable`) is quantized shard by shard, and its codes
    and scales are DTensors placed as it is; the choice of code is agreed between the ranks.
    """
    if is_dtensor(x):
        shard = x.to_local()
        q = _quantized(shard, block_size, all_non_negative(x))
        per_row = blocks_per_row(x.shape, block_size)
        codes = DTensor.from_local(
            q.codes, x.device_mesh, x.placements, run_check=False, shape=x.shape, stride=x.stride()
        )
        absmax = DTensor.from_local(
            q.absmax.reshape(shard.shape[0], per_row),
            x.device_mesh,
            x.placements,
            run_check=False,
            shape=(x.shape[0], per_row),
            stride=(per_row, 1),
        )
        return QuantizedLeaf(codes, absmax, q.non_negative)
    return _quantized(x, block_size)


def _quantized(
    x: torch.Tensor, block_size: int, non_negative: torch.Tensor | None = None
) -> QuantizedLeaf:
    """`quantize` of an ordinary tensor; ``non_negative`` decided already (across ranks) or
    `None`, to be read off ``x``."""
    blocks = _blocks(x, block_size)
    if blocks.dtype.itemsize < 4:  # scale in float32 at least: a bf16 scale errs by 1/256
        blocks = blocks.float()
    absmax = blocks.abs().amax(dim=1)
    if non_negative is None:
        non_negative = blocks.amin() >= 0  # (torch.aminmax along rows is 10x slower on CPU)

    def encode(code: torch.dtype, code_max: float) -> torch.Tensor:
        # A block of zeros stays zeros; a non-finite value stays non-finite (no silent repair).
        scale = torch.where(absmax > 0, code_max / absmax, torch.zeros_like(absmax))
        return (blocks * scale.unsqueeze(1)).to(code).view(torch.uint8)

    # Eagerly only the chosen code is computed; traced, both, and a `torch.where` picks.
    codes = branch(
        non_negative,
        lambda: encode(_NON_NEGATIVE, _NON_NEGATIVE_MAX),
        lambda: encode(_SIGNED, _SIGNED_MAX),
    )
    codes = codes.reshape(-1)[: x.numel()].reshape(x.shape)
    per_row = blocks_per_row(x.shape, block_size)
    if per_row is not None:
        absmax = absmax.reshape(x.shape[0], per_row)
    return QuantizedLeaf(codes, absmax.to(x.dtype), non_negative)


def _code_values() -> torch.Tensor:
    """Every code's value as a fraction of its block's ``absmax``: row 0 e4m3, row 1 e5m2.

    Decoding looks codes up in this table: torch converts float8 to float32 element by
    element on CPU, 5x slower than an ``index_select``.
    """
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    signed = codes.view(_SIGNED).to(torch.float32) / _SIGNED_MAX
    return torch.stack([signed, codes.view(_NON_NEGATIVE).to(torch.float32) / _NON_NEGATIVE_MAX])


_CODE_VALUES = _code_values()


def dequantize(leaf: QuantizedLeaf, block_size: int) -> torch.Tensor:
    """The tensor a `QuantizedLeaf` stands for, in its original dtype (a DTensor, placed as
    its codes are, for a DTensor's)."""
    codes = leaf.codes
    if is_dtensor(codes):
        shard = _dequantized(
            codes.to_local(), leaf.absmax.to_local(), leaf.non_negative, block_size
        )
        return DTensor.from_local(
            shard,
            codes.device_mesh,
            codes.placements,
            run_check=False,
            shape=codes.shape,
            stride=codes.stride(),
        )
    return _dequantized(codes, leaf.absmax, leaf.non_negative, block_size)


def _dequantized(
    codes: torch.Tensor, absmax: torch.Tensor, non_negative: torch.Tensor, block_size: int
) -> torch.Tensor:
    """`dequantize` of ordinary tensors."""
    signed, non_negative_values = _CODE_VALUES.to(codes.device)
    table = torch.where(non_negative, non_negative_values, signed)
    unit = table.index_select(0, _blocks(codes, block_size).reshape(-1).int())
    dtype = absmax.dtype
    scales = (absmax if dtype.itemsize >= 4 else absmax.float()).reshape(-1, 1)
    values = unit.to(scales.dtype).reshape(-1, block_size) * scales
    return values.reshape(-1)[: codes.numel()].reshape(codes.shape).to(dtype)


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedLeaf)


@record_hyperparams
def quantized_state(
    inner: GradientTransformation,
    bits: int = 8,
    block_size: int = 256,
    min_size: int = 4096,
) -> GradientTransformation:
    r"""Store ``inner``'s large floating state leaves blockwise in 8 bits.

    Every floating leaf of ``inner``'s state with at least ``min_size`` elements (moments,
    accumulators) becomes a `QuantizedLeaf`: 1 byte per element, plus one number per block of
    ``block_size`` elements. Smaller leaves, step counts and everything else stay as they are.
    Each update decodes the leaves, runs ``inner.update`` on them at their own precision, and
    encodes the new state. For AdamW that is about 2.03 bytes of state per parameter against 8
    in float32, for any transformation, as a wrapper.

    The code is an 8-bit float: e4m3 for leaves with negative elements (first moments, at
    most 1/16 relative rounding error down to $2^{-15}$ of the block's largest magnitude),
    e5m2 for non-negative ones (second moments, 1/8 down to $2^{-30}$ of it): like 8-bit Adam's
    dynamic code, dense near zero, so small second moments do not round to zero and blow up
    the step. Rounding is to nearest.

    DTensor leaves (FSDP2) are quantized shard by shard where the leaf's rows (the elements
    at each index of its first axis) are whole blocks and it is sharded along that axis or
    replicated: each rank then holds whole blocks, the same numbers as one process, and the
    codes and scales are DTensors that `torch.distributed.checkpoint` reshards. Other DTensor
    leaves (1-d, sharded along another axis, rows not a multiple of ``block_size``) are kept
    as they are. Each quantized DTensor leaf costs one all-reduce of one number per step.

    Args:
        inner: the transformation whose state to store.
        bits: bits per stored element; 8 (the only width offered).
        block_size: elements per block (one scale each), at least 16.
        min_size: the smallest leaf (in elements) that is quantized.

    Returns:
        A `GradientTransformation` whose state is ``inner``'s, with `QuantizedLeaf` in place of
        its large floating leaves.

    Raises:
        ValueError: for ``bits`` other than 8, ``block_size`` below 16 or a negative
            ``min_size``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.quantized_state(tf.adamw(1e-2), min_size=8)
        >>> params = {"w": torch.ones(4, 4)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": torch.full((4, 4), 0.5)}, state, params)
        >>> updates["w"][0, 0]  # Adam's first step: -lr * sign(g), and the weight decay
        tensor(-0.0100)
        >>> state[0].mu["w"].codes.dtype
        torch.uint8

    References:
        Dettmers et al., 8-bit Optimizers via Block-wise Quantization, ICLR 2022.
        https://arxiv.org/abs/2110.02861
    """
    if bits != 8:
        raise ValueError(f"quantized_state: bits must be 8, got {bits}.")
    if not isinstance(block_size, int) or block_size < 16:
        raise ValueError(f"quantized_state: block_size must be an int >= 16, got {block_size}.")
    if not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"quantized_state: min_size must be an int >= 0, got {min_size}.")

    def stored(x: Any) -> Any:
        return quantize(x, block_size) if quantizable(x, block_size, min_size) else x

    def decoded(state: Any) -> Any:
        return tree_map(
            lambda x: dequantize(x, block_size) if _is_quantized(x) else x,
            state,
            is_leaf=_is_quantized,
        )

    def init_fn(params):
        return tree_map(stored, inner.init(params))

    def update_fn(updates, state, params=None, **extra_args):
        updates, new_state = inner.update(updates, decoded(state), params, **extra_args)
        # The leaves that were quantized are quantized again (the layout never changes).
        # (A DTensor leaf goes back to its codes' placement first, should the inner update
        # have left it otherwise.)
        new_state = tree_map(
            lambda old, new: (
                quantize(replace_placement(new, old.codes), block_size)
                if _is_quantized(old)
                else new
            ),
            state,
            new_state,
            is_leaf=_is_quantized,
        )
        return updates, new_state

    return GradientTransformation(init_fn, update_fn)
