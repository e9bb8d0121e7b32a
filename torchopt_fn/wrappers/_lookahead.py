"""`lookahead`: a slow copy of the parameters pulled towards the fast ones every k steps."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Params, init_count
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn.tree._flatten import tree_map

__all__ = ["LookaheadParams", "LookaheadState", "lookahead"]


class LookaheadState(NamedTuple):
    """State of `lookahead`: the fast optimizer's state and the steps since the last sync.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = tf.LookaheadParams.init_synced({"w": torch.zeros(1)})
        >>> tf.lookahead(tf.sgd(0.1), 5, 0.5).init(params).steps_since_sync
        tensor(0)
    """

    fast_state: Any
    steps_since_sync: torch.Tensor


class LookaheadParams(NamedTuple):
    """The parameters `lookahead` optimizes: the fast weights and the slow ones.

    Train and evaluate with ``fast``; ``slow`` are the weights Lookahead converges.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> p = tf.LookaheadParams.init_synced({"w": torch.ones(1)})
        >>> p.slow["w"], p.slow["w"] is p.fast["w"]
        (tensor([1.]), False)
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Fast weights ``params`` and slow weights a copy of them.

        A copy, where optax shares the arrays: torch updates tensors in place
        (`apply_updates_`), and a compiled step guards on which inputs alias.
        """
        return cls(fast=params, slow=tree_map(torch.clone, params))


@record_hyperparams
def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    r"""Lookahead (Zhang et al., 2019) around any optimizer, on `LookaheadParams`.

    The fast optimizer steps the fast weights; every ``sync_period`` steps the slow weights
    move towards them, $s \leftarrow s + \alpha (f - s)$, and the fast weights restart from
    the slow ones. Gradients are those of the fast weights: the updates passed in are for
    ``params.fast``, and the update returned is a `LookaheadParams` for `apply_updates`.

    Args:
        fast_optimizer: the inner optimizer.
        sync_period: fast steps between synchronisations ($k \ge 1$).
        slow_step_size: the slow weights' step $\alpha$.
        reset_state: re-initialise the fast optimizer's state at every synchronisation.

    Returns:
        A `GradientTransformation` with state `LookaheadState`.

    Raises:
        ValueError: if ``sync_period`` is below 1.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.lookahead(tf.sgd(1.0), sync_period=2, slow_step_size=0.5)
        >>> params = tf.LookaheadParams.init_synced({"w": torch.zeros(1)})
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.ones(1)}, state, params)
        ...     params = tf.apply_updates(params, u)
        >>> params.fast["w"], params.slow["w"]
        (tensor([-1.]), tensor([-1.]))

    References:
        Zhang et al., Lookahead Optimizer: k steps forward, 1 step back, NeurIPS 2019.
    """
    if sync_period < 1:
        raise ValueError(f"lookahead: sync_period must be >= 1, got {sync_period}.")

    def init_fn(params):
        fast = getattr(params, "fast", None)
        if fast is None:
            warnings.warn(
                "lookahead: params has no `fast` field; assuming only the fast parameters "
                "were passed to init (use LookaheadParams.init_synced(params)).",
                stacklevel=2,
            )
            fast = params
        return LookaheadState(fast_optimizer.init(fast), init_count(fast))

    def update_fn(updates, state, params=None, **extra_args):
        if not isinstance(params, LookaheadParams):
            raise ValueError(
                "lookahead: update needs params=LookaheadParams(fast, slow) "
                f"(got {type(params).__name__})."
            )
        updates, fast_state = fast_optimizer.update(
            updates, state.fast_state, params.fast, **extra_args
        )
        sync_next = state.steps_since_sync == sync_period - 1
        difference = tree_map(lambda f, u, s: f + u - s, params.fast, updates, params.slow)

        def synced():
            # Both weights land on the slow point s + alpha * (f + u - s).
            slow = tree_map(lambda d: slow_step_size * d, difference)
            fast = tree_map(lambda u, d: u - (1 - slow_step_size) * d, updates, difference)
            return LookaheadParams(fast, slow)

        def running():
            return LookaheadParams(updates, tree_map(lambda d: 0 * d, difference))

        new_updates = branch(sync_next, synced, running)
        if reset_state:
            fresh = fast_optimizer.init(params.fast)
            fast_state = branch(sync_next, lambda: fresh, lambda: fast_state)
        steps = (state.steps_since_sync + 1) % sync_period
        return new_updates, LookaheadState(fast_state, steps)

    return GradientTransformation(init_fn, update_fn)
