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

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn.tree._dtensor import is_dtensor
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
            (the leaf flattened), in the leaf's dtype, which decoding restores.
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


def quantize(x: torch.Tensor, block_size: int) -> QuantizedLeaf:
    """``x`` as a `QuantizedLeaf` (blocks of ``block_size``, rounding to nearest)."""
    blocks = _blocks(x, block_size)
    if blocks.dtype.itemsize < 4:  # scale in float32 at least: a bf16 scale errs by 1/256
        blocks = blocks.float()
    absmax = blocks.abs().amax(dim=1)
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
    """The tensor a `QuantizedLeaf` stands for, in its original dtype."""
    signed, non_negative = _CODE_VALUES.to(leaf.codes.device)
    table = torch.where(leaf.non_negative, non_negative, signed)
    unit = table.index_select(0, _blocks(leaf.codes, block_size).reshape(-1).int())
    dtype = leaf.absmax.dtype
    absmax = leaf.absmax if dtype.itemsize >= 4 else leaf.absmax.float()
    values = unit.to(absmax.dtype).reshape(-1, block_size) * absmax.unsqueeze(1)
    return values.reshape(-1)[: leaf.codes.numel()].reshape(leaf.codes.shape).to(dtype)


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

    DTensor leaves (FSDP2) are kept as they are: a flat block of an unevenly sharded tensor
    does not exist.

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
        large = isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel() >= min_size
        return quantize(x, block_size) if large and not is_dtensor(x) else x

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
        new_state = tree_map(
            lambda old, new: quantize(new, block_size) if _is_quantized(old) else new,
            state,
            new_state,
            is_leaf=_is_quantized,
        )
        return updates, new_state

    return GradientTransformation(init_fn, update_fn)
