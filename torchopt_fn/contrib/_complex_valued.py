"""Complex parameters as pairs of real ones: `split_real_and_imaginary` wraps an inner
transformation so that it sees each complex leaf as its real and imaginary parts."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._record import record_hyperparams
from torchopt_fn.tree._flatten import flatten_like, tree_flatten, tree_map, tree_unflatten

__all__ = ["SplitRealAndImaginaryState", "split_real_and_imaginary"]


class SplitRealAndImaginaryArrays(NamedTuple):
    """The real and imaginary parts of a complex leaf, the node the inner transformation sees.

    Examples:
        >>> import torch
        >>> from torchopt_fn.contrib._complex_valued import SplitRealAndImaginaryArrays
        >>> z = torch.tensor([1.0 + 2.0j])
        >>> SplitRealAndImaginaryArrays(z.real, z.imag).imaginary
        tensor([2.])
    """

    real: torch.Tensor
    imaginary: torch.Tensor


class SplitRealAndImaginaryState(NamedTuple):
    """State of `split_real_and_imaginary`: the inner transformation's state, built for the
    split parameters.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.split_real_and_imaginary(tf.trace(0.9))
        >>> tx.init({"z": torch.zeros(1, dtype=torch.complex64)}).inner_state.trace["z"]
        SplitRealAndImaginaryArrays(real=tensor([0.]), imaginary=tensor([0.]))
    """

    inner_state: Any


def _split(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_complex():
        return SplitRealAndImaginaryArrays(x.real, x.imag)
    return x


def _merge(x: Any) -> Any:
    if not isinstance(x, SplitRealAndImaginaryArrays):
        return x
    if x.real is None and x.imaginary is None:
        return None
    return torch.complex(x.real, x.imaginary.to(x.real.dtype))


@record_hyperparams
def split_real_and_imaginary(inner: GradientTransformation) -> GradientTransformation:
    r"""Run ``inner`` on complex leaves split into their real and imaginary parts.

    Each complex leaf $z = x + iy$ of the updates and the params enters ``inner`` as the pair
    of real tensors $(x, y)$ (a `SplitRealAndImaginaryArrays` node), and the pair ``inner``
    returns, $(u_x, u_y)$, leaves as the complex update $u_x + i u_y$. Real leaves pass
    through unchanged, so ``inner`` optimizes a complex parameter as two real ones: its
    moments, norms and trust ratios are those of the parts (a per-tensor norm is taken over
    each part on its own). Extra keyword arguments reach ``inner``.

    torch.optim treats a complex parameter as its `torch.view_as_real` pairs element by
    element, so for element-wise optimizers (``split_real_and_imaginary(adam(lr))`` and
    `torch.optim.Adam`) the two agree. Gradients need no conjugation in torch: autograd's
    gradient of a real loss with respect to $z$ already points uphill (JAX's is the
    conjugate, which optax's users conjugate by hand before this wrapper).

    Args:
        inner: the transformation to run on real tensors.

    Returns:
        A `GradientTransformation` with state `SplitRealAndImaginaryState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.split_real_and_imaginary(tf.sgd(0.1))
        >>> params = {"z": torch.tensor([1.0 + 1.0j])}
        >>> tx.update({"z": torch.tensor([2.0 - 4.0j])}, tx.init(params), params)[0]["z"]
        tensor([-0.2000+0.4000j])

    References:
        optax issue 196, complex-valued optimization.
        https://github.com/google-deepmind/optax/issues/196
    """

    def init_fn(params):
        return SplitRealAndImaginaryState(inner.init(tree_map(_split, params)))

    def update_fn(updates, state, params=None, **extra_args):
        _, spec = tree_flatten(updates)
        split_params = None if params is None else tree_map(_split, params)
        new, inner_state = inner.update(
            tree_map(_split, updates), state.inner_state, split_params, **extra_args
        )
        merged = [_merge(x) for x in flatten_like(spec, updates, new, "split_real_and_imaginary")]
        return tree_unflatten(spec, merged), SplitRealAndImaginaryState(inner_state)

    return GradientTransformation(init_fn, update_fn)
