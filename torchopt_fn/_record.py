"""The call record: what lets the adapter rebuild a transformation and closures pickle.

Every public factory (transforms, optimizers, combinators, schedules) is decorated with
`record_hyperparams`, so what it returns remembers the call that built it. The `Optimizer`
adapter reads those arguments to mirror hyperparameters into param groups and calls the
factories again with a group's current values (`rebuild`); pickling a transformation, whose
``init``/``update`` are closures, pickles the call instead.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torchopt_fn._base import GradientTransformation
from torchopt_fn._members import member_values, per_member

__all__ = [
    "bind_arguments",
    "rebuild",
    "record",
    "record_hyperparams",
    "recorded_arguments",
    "recorded_nodes",
]


def _call_recorded(factory: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    args, kwargs = _split_arguments(factory, arguments)
    return factory(*args, **kwargs)


class _RecordedTransformation(GradientTransformation):
    """A `GradientTransformation` that remembers the factory call that built it.

    Attributes set on the transformation the factory returned (a fused plan, say) are kept.
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


def bind_arguments(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict[str, Any]:
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
    """The inverse of `bind_arguments`: the arguments to call ``factory`` with."""
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
        out.__dict__.update(getattr(built, "__dict__", {}))
        out.factory, out.arguments = factory, arguments
        return out
    return _RecordedCallable(built, factory, arguments)


def record_hyperparams(factory: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a factory so that what it returns remembers the call that built it.

    Every public factory here is decorated. Decorate your own optimizer's factory too: the
    `Optimizer` adapter then mirrors its real-number arguments into param groups (under
    torch's names: ``learning_rate`` as ``lr``, ``b1``/``b2`` as ``betas``) and calls it again
    with a group's values, so lr schedulers and per-group overrides reach every place the
    argument is used; and the transformation pickles as the call.

    A floating tensor argument with a leading axis of M values (shape ``(M,)``) is one value
    per member of params stacked along a leading member axis: the transformation is built
    member by member under `torch.func.vmap`, each member's factory getting its 0-d value.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> @tf.record_hyperparams
        ... def sgd_with_decay(learning_rate: float, weight_decay: float = 0.0):
        ...     return tf.chain(tf.add_decayed_weights(weight_decay), tf.scale(-learning_rate))
        >>> opt = tf.Optimizer([torch.zeros(2, requires_grad=True)], sgd_with_decay(0.1, 1e-3))
        >>> sorted(k for k in opt.param_groups[0] if k != "params")
        ['lr', 'weight_decay']
    """
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        arguments = bind_arguments(signature, args, kwargs)
        values = member_values(arguments)
        if values:  # one value per member of stacked params: built member by member
            built = per_member(functools.partial(_call_recorded, factory), arguments, values)
        else:
            built = factory(*args, **kwargs)
        return record(built, wrapper, arguments)

    return wrapper


def recorded_arguments(tx: GradientTransformation) -> dict[str, Any] | None:
    """The arguments a recorded transformation was built with, or None."""
    return getattr(tx, "arguments", None)


def _rebuilt(value: Any, replacements: Callable[..., dict[str, Any]]) -> Any:
    """``value`` with every transformation in it rebuilt (inside tuples, lists and dicts too)."""
    if isinstance(value, GradientTransformation):
        return rebuild(value, replacements)
    if type(value) in (tuple, list):
        return type(value)(_rebuilt(v, replacements) for v in value)
    if type(value) is dict:
        return {k: _rebuilt(v, replacements) for k, v in value.items()}
    return value


def rebuild(
    tx: GradientTransformation,
    replacements: Callable[[Callable[..., Any], dict[str, Any]], dict[str, Any]],
) -> GradientTransformation:
    """Rebuild a recorded transformation with some arguments replaced.

    ``replacements(factory, arguments)`` returns the new values for a recorded node.
    Recorded transformations among the arguments (``chain``'s members, ``partition``'s dict)
    are rebuilt too; anything not recorded is returned as it is.
    """
    arguments = recorded_arguments(tx)
    if arguments is None:
        return tx
    new_values = {**arguments, **replacements(tx.factory, arguments)}
    return _call_recorded(tx.factory, {k: _rebuilt(v, replacements) for k, v in new_values.items()})


def _transformations_in(value: Any) -> list[GradientTransformation]:
    if isinstance(value, GradientTransformation):
        return [value]
    if type(value) in (tuple, list):
        return [t for v in value for t in _transformations_in(v)]
    if type(value) is dict:
        return [t for v in value.values() for t in _transformations_in(v)]
    return []


def recorded_nodes(tx: GradientTransformation) -> list[GradientTransformation]:
    """All recorded transformations in ``tx`` (itself and nested ones), outermost first."""
    arguments = recorded_arguments(tx)
    if arguments is None:
        return []
    out = [tx]
    for value in arguments.values():
        for inner in _transformations_in(value):
            out += recorded_nodes(inner)
    return out
