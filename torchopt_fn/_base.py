"""The core contract: `GradientTransformation`, its state, and the smallest transforms.

A gradient transformation is a pair of pure functions (DESIGN.md §1)::

    init(params) -> state
    update(updates, state, params=None, **extra_args) -> (new_updates, new_state)

Updates are already negated: a learning-rate stage multiplies by ``-lr`` so that
`apply_updates` is a plain addition. Every ``update`` accepts and ignores keyword
arguments it does not use, so combinators can forward ``value=``, ``grad=`` and friends.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeAlias

import torch

from torchopt_fn import _tree

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "OptState",
    "Params",
    "Schedule",
    "ScalarOrSchedule",
    "Updates",
    "identity",
    "set_to_zero",
    "stateless",
    "stateless_with_tree_map",
    "with_extra_args_support",
]

Params: TypeAlias = Any
"""A pytree of tensors (dict, list, tuple, NamedTuple, nested), as returned by `named_parameters`."""
Updates: TypeAlias = Any
"""A pytree with the structure of `Params`; `None` marks a parameter that has no update."""
OptState: TypeAlias = Any
"""A NamedTuple (or tuple of them) whose leaves are tensors only."""
Schedule: TypeAlias = Callable[[torch.Tensor], torch.Tensor]
"""A pure function of the 0-d integer step count returning a 0-d tensor."""
ScalarOrSchedule: TypeAlias = float | torch.Tensor | Schedule


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)``; see the module docstring for the contract.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.chain(tf.scale_by_adam(), tf.scale(-0.1))
        >>> params = {"w": torch.ones(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": torch.tensor([1.0, -1.0])}, state, params)
        >>> tf.apply_updates(params, updates)["w"]
        tensor([0.9000, 1.1000])
    """

    init: TransformInitFn
    update: TransformUpdateFn


GradientTransformationExtraArgs = GradientTransformation
"""Alias kept for optax compatibility: every transformation here accepts extra keyword arguments."""


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


def _empty_init(params: Params) -> EmptyState:
    del params
    return EmptyState()


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

    return GradientTransformation(_empty_init, update_fn)


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
        return _tree.tree_zeros_like(updates), state

    return GradientTransformation(_empty_init, update_fn)


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

    return GradientTransformation(_empty_init, update_fn)


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
            return _tree.tree_map(lambda u: f(u, None), updates)
        return _tree.tree_map(f, updates, params)

    return stateless(g)


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformation:
    """Wrap a transformation whose ``update`` rejects extra keyword arguments so that it ignores them.

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


class _RecordedTransformation(GradientTransformation):
    """A `GradientTransformation` that remembers the factory call that built it.

    The `torchopt_fn.Optimizer` adapter uses the record to rebuild the transformation with a
    param group's current hyperparameters (``lr``, ``betas``, ...) on every step.
    """

    factory: Callable[..., GradientTransformation]
    arguments: dict[str, Any]


def record_hyperparams(
    factory: Callable[..., GradientTransformation],
) -> Callable[..., GradientTransformation]:
    """Decorate a factory so the transformations it returns remember their arguments."""
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> GradientTransformation:
        tx = factory(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = _RecordedTransformation(tx.init, tx.update)
        out.factory = factory
        out.arguments = dict(bound.arguments)
        return out

    return wrapper


def recorded_arguments(tx: GradientTransformation) -> dict[str, Any] | None:
    """The arguments a recorded transformation was built with, or None."""
    return getattr(tx, "arguments", None)


def rebuild(
    tx: GradientTransformation,
    replacements: Callable[[Callable[..., Any], dict[str, Any]], dict[str, Any]],
) -> GradientTransformation:
    """Rebuild a recorded transformation with some arguments replaced.

    ``replacements(factory, arguments)`` returns the new values for a recorded node.
    Recorded transformations among the arguments (``chain``'s members) are rebuilt too;
    anything not recorded is returned as it is.
    """
    arguments = recorded_arguments(tx)
    if arguments is None:
        return tx
    new_values = replacements(tx.factory, arguments)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, param in inspect.signature(tx.factory).parameters.items():
        value = new_values.get(name, arguments[name])
        if isinstance(value, GradientTransformation):
            value = rebuild(value, replacements)
        elif isinstance(value, tuple) and all(isinstance(v, GradientTransformation) for v in value):
            value = tuple(rebuild(v, replacements) for v in value)
        if param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value)
        elif param.kind is param.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[name] = value
    return tx.factory(*args, **kwargs)


def recorded_nodes(tx: GradientTransformation) -> list[GradientTransformation]:
    """All recorded transformations in ``tx`` (itself and nested ones), outermost first."""
    arguments = recorded_arguments(tx)
    if arguments is None:
        return []
    out = [tx]
    for value in arguments.values():
        if isinstance(value, GradientTransformation):
            out += recorded_nodes(value)
        elif isinstance(value, tuple):
            for v in value:
                if isinstance(v, GradientTransformation):
                    out += recorded_nodes(v)
    return out
