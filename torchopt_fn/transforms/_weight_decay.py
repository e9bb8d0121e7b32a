"""Decoupled weight decay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn import _tree
from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    Params,
    Schedule,
    record_hyperparams,
)
from torchopt_fn._combine import masked
from torchopt_fn.transforms._common import init_count
from torchopt_fn.transforms._scale import ScaleByScheduleState

__all__ = ["add_decayed_weights", "add_decoupled_weight_decay"]


@record_hyperparams
def add_decayed_weights(
    weight_decay: float | torch.Tensor | Schedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
) -> GradientTransformation:
    r"""Add the parameters times ``weight_decay`` to the updates: $u_t = g_t + \lambda \theta_t$.

    Placed before the learning-rate stage, the decay is multiplied by the learning rate, as in
    `torch.optim.AdamW` (decoupled weight decay). Placed before Adam, it is L2 regularisation
    (torch's ``weight_decay`` in `torch.optim.Adam`/`SGD`).

    Args:
        weight_decay: the coefficient $\lambda$: a float, a 0-d tensor, or a schedule of the
            step count (then the state counts steps, as in optax).
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay; the others pass through.

    Returns:
        A stateless `GradientTransformation` (wrapped in `masked` when ``mask`` is given).

    Raises:
        ValueError: if ``params`` is not passed to ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.add_decayed_weights(0.1)
        >>> p = {"w": torch.tensor([2.0])}
        >>> tx.update({"w": torch.tensor([1.0])}, tx.init(p), p)[0]["w"]
        tensor([1.2000])

    References:
        Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
        https://arxiv.org/abs/1711.05101
    """

    scheduled = callable(weight_decay) and not isinstance(weight_decay, torch.Tensor)

    def init_fn(params):
        return ScaleByScheduleState(count=init_count(params)) if scheduled else EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("add_decayed_weights needs `params` in update().")
        decay = weight_decay(state.count) if scheduled else weight_decay
        if scheduled:
            state = ScaleByScheduleState(count=state.count + 1)
        out = _tree.map_live(
            lambda ops, gs, ps: ops.add(gs, _tree.cast_like(ps, gs), alpha=decay),
            updates,
            params,
        )
        return out, state

    tx = GradientTransformation(init_fn, update_fn)
    return masked(tx, mask) if mask is not None else tx


add_decoupled_weight_decay = add_decayed_weights
"""Alias of `add_decayed_weights`, the name in our design card."""
