"""Transformations without state, and the builders of new ones.

`identity`, `set_to_zero`, `stateless`, `stateless_with_tree_map` and
`with_extra_args_support`, as optax names them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchopt_fn._base import GradientTransformation, Params, Updates, empty_init
from torchopt_fn._record import record_hyperparams
from torchopt_fn.tree._math import tree_zeros_like
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "identity",
    "set_to_zero",
    "stateless",
    "stateless_with_tree_map",
    "with_extra_args_support",
]


@record_hyperparams
def identity() -> GradientTransformation:
    """Pass updates through unchanged.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.identity()
        >>> tx.update({"w": torch.tensor([2.0])}, tx.init(None))[0]
        {'w': tensor([2.])}
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return updates, state

    return GradientTransformation(empty_init, update_fn)


@record_hyperparams
def set_to_zero() -> GradientTransformation:
    """Replace every update by zeros (freezes parameters, e.g. inside `partition`).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.set_to_zero()
        >>> tx.update({"w": torch.tensor([2.0])}, tx.init(None))[0]
        {'w': tensor([0.])}
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return tree_zeros_like(updates), state

    return GradientTransformation(empty_init, update_fn)


@record_hyperparams
def stateless(
    f: Callable[[Updates, Params | None], Updates],
) -> GradientTransformation:
    """Build a stateless transformation from ``f(updates, params) -> updates``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> halve = tf.stateless(lambda u, p: tf.tree_map(lambda x: x / 2, u))
        >>> halve.update({"w": torch.tensor([2.0])}, halve.init(None))[0]
        {'w': tensor([1.])}
    """

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        return f(updates, params), state

    return GradientTransformation(empty_init, update_fn)


@record_hyperparams
def stateless_with_tree_map(
    f: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> GradientTransformation:
    """Build a stateless transformation applying ``f(update, param)`` to every leaf.

    `None` updates stay `None`; ``param`` is `None` when no params are given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> neg = tf.stateless_with_tree_map(lambda u, p: -u)
        >>> neg.update({"w": torch.tensor([2.0])}, neg.init(None))[0]
        {'w': tensor([-2.])}
    """

    def g(updates: Updates, params: Params | None) -> Updates:
        if params is None:
            return map_leaves(lambda ops, us: [f(u, None) for u in us], updates, what="stateless")
        return map_leaves(
            lambda ops, us, ps: [f(u, p) for u, p in zip(us, ps)], updates, params, what="stateless"
        )

    return stateless(g)


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformation:
    """Wrap a transformation whose ``update`` rejects extra keyword arguments, to ignore them.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> strict = tf.GradientTransformation(lambda p: (), lambda u, s, p=None: (u, s))
        >>> tx = tf.with_extra_args_support(strict)
        >>> tx.update({"w": torch.ones(1)}, (), None, value=3.0)[0]
        {'w': tensor([1.])}
    """

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformation(tx.init, update_fn)
