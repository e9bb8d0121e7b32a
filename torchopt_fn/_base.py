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
    "ScalarOrSchedule",
    "Schedule",
    "Updates",
    "identity",
    "set_to_zero",
    "stateless",
    "stateless_with_tree_map",
    "with_extra_args_support",
]

Params: TypeAlias = Any
"""A pytree of tensors: dict (e.g. from `named_parameters`), list, tuple, NamedTuple, nested."""
Updates: TypeAlias = Any
"""A pytree with the structure of `Params`; `None` marks a parameter that has no update."""
OptState: TypeAlias = Any
"""A NamedTuple (or tuple of them) whose leaves are tensors only."""
Schedule: TypeAlias = Callable[[torch.Tensor | int], torch.Tensor]
"""A pure function of the step count (a 0-d integer tensor or an int) returning a 0-d tensor."""
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
    """The state of a stateless transformation.

    Examples:
        >>> import torchopt_fn as tf
        >>> tf.scale(2.0).init(None)
        EmptyState()
    """


def empty_init(params: Params) -> EmptyState:
    """The ``init`` of a stateless transformation."""
    del params
    return EmptyState()


def _call_recorded(factory: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    args, kwargs = _split_arguments(factory, arguments)
    return factory(*args, **kwargs)


class _RecordedTransformation(GradientTransformation):
    """A `GradientTransformation` that remembers the factory call that built it.

    The record lets the `torchopt_fn.Optimizer` adapter rebuild the transformation with a
    param group's current hyperparameters (``lr``, ``betas``, ...) on every step, and lets a
    transformation built from closures be pickled (it pickles as its factory call).
    """

    factory: Callable[..., GradientTransformation]
    arguments: dict[str, Any]

    def __reduce__(self) -> tuple[Any, ...]:
        return _call_recorded, (self.factory, self.arguments)


class _RecordedCallable:
    """A schedule (or other function) that remembers the factory call that built it."""

    def __init__(self, fn: Callable[..., Any], factory: Callable[..., Any], arguments: dict):
        self.fn, self.factory, self.arguments = fn, factory, arguments
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return _call_recorded, (self.factory, self.arguments)


def _bind(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
    """All arguments by name (defaults applied, ``**kwargs`` flattened into the dict)."""
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return arguments


def _split_arguments(
    factory: Callable[..., Any], arguments: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """The inverse of `_bind`: positional and keyword arguments to call ``factory`` with."""
    params = inspect.signature(factory).parameters
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for name, param in params.items():
        if param.kind is param.VAR_POSITIONAL:
            args.extend(arguments[name])
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update({k: v for k, v in arguments.items() if k not in params})
        elif param.kind is param.POSITIONAL_ONLY:
            args.append(arguments[name])
        else:
            kwargs[name] = arguments[name]
    return args, kwargs


def record(built: Any, factory: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """Attach the call ``factory(**arguments)`` to what it built (a transformation or function)."""
    if isinstance(built, GradientTransformation):
        out = _RecordedTransformation(built.init, built.update)
        out.factory, out.arguments = factory, arguments
        return out
    return _RecordedCallable(built, factory, arguments)


def record_hyperparams(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a public factory so what it returns remembers the call that built it.

    Applied to every public transformation, optimizer, combinator and schedule factory.
    """
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return record(factory(*args, **kwargs), wrapper, _bind(signature, args, kwargs))

    return wrapper


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
        return _tree.tree_zeros_like(updates), state

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
            return _tree.tree_map(lambda u: f(u, None), updates)
        return _tree.tree_map(f, updates, params)

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
    new_values = {**arguments, **replacements(tx.factory, arguments)}
    for name, value in new_values.items():
        if isinstance(value, GradientTransformation):
            new_values[name] = rebuild(value, replacements)
        elif isinstance(value, tuple) and all(isinstance(v, GradientTransformation) for v in value):
            new_values[name] = tuple(rebuild(v, replacements) for v in value)
    return _call_recorded(tx.factory, new_values)


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
