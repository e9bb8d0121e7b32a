"""The core contract: `GradientTransformation`, its state, and the types every module uses.

A gradient transformation is a pair of pure functions (DESIGN.md §1)::

    init(params) -> state
    update(updates, state, params=None, **extra_args) -> (new_updates, new_state)

Updates are already negated: a learning-rate stage multiplies by ``-lr`` so that
`apply_updates` is a plain addition. Every ``update`` accepts and ignores keyword
arguments it does not use, so combinators can forward ``value=``, ``grad=`` and friends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol, TypeAlias

import torch

from torchopt_fn._scalar import Scalar, is_schedule, step_scalar
from torchopt_fn.tree._flatten import tree_leaves, tree_map

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "MaskOrFn",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "Schedule",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "init_empty_state",
]

Params: TypeAlias = Any
"""A pytree of tensors: dict (e.g. from `named_parameters`), list, tuple, NamedTuple, nested."""
Updates: TypeAlias = Any
"""A pytree with the structure of `Params`; `None` marks a parameter that has no update."""
OptState: TypeAlias = Any
"""A NamedTuple (or tuple of them) whose leaves are tensors only."""
Schedule: TypeAlias = Callable[[torch.Tensor | int], torch.Tensor]
"""A pure function of the step count (a 0-d integer tensor or an int) returning a 0-d tensor."""
ScalarOrSchedule: TypeAlias = Scalar | Schedule
"""A hyperparameter that may change with the step: a `Scalar` or a `Schedule`."""
MaskOrFn: TypeAlias = Any | Callable[[Params], Any] | None
"""Which parameters a stage applies to: a tree of booleans with the params' structure, a
function of the params returning one (``lambda p: tree_map(lambda x: x.dim() > 1, p)``), or
`None` for all of them (optax's ``mask``)."""


class TransformInitFn(Protocol):
    """``init(params) -> state``: the first half of a `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> init: tf.TransformInitFn = tf.trace(0.9).init
        >>> init({"w": torch.zeros(1)}).trace
        {'w': tensor([0.])}
    """

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """``update(updates, state, params=None, **extra_args) -> (updates, state)``.

    Every ``update`` here accepts extra keyword arguments (optax's ``TransformUpdateExtraArgsFn``).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale(2.0)
        >>> update: tf.TransformUpdateFn = tx.update
        >>> update({"w": torch.ones(1)}, tx.init(None))[0]
        {'w': tensor([2.])}
    """

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


TransformUpdateExtraArgsFn = TransformUpdateFn


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
    """The ``init`` of a stateless transformation.

    Examples:
        >>> import torchopt_fn as tf
        >>> tf.init_empty_state({"w": None})
        EmptyState()
    """
    del params
    return EmptyState()


def params_device(params: Params) -> torch.device:
    """The device of the first tensor leaf of ``params`` (CPU when there is none)."""
    for leaf in tree_leaves(params):
        if isinstance(leaf, torch.Tensor):
            return leaf.device
    return torch.device("cpu")


def init_count(params: Params, *, per_leaf: bool = False) -> Any:
    """A 0-d int64 step counter on the params' device.

    With ``per_leaf``, a tree of them, one per leaf on the leaf's device: torch.optim counts
    each parameter's steps, and a parameter without a gradient skips its step.
    """
    if per_leaf:
        # One zero per device, shared: leaves that step together keep sharing their count,
        # so their bias corrections are computed once (see `next_count`).
        zeros: dict[torch.device, torch.Tensor] = {}

        def zero(p: torch.Tensor) -> torch.Tensor:
            if p.device not in zeros:
                zeros[p.device] = torch.zeros((), dtype=torch.int64, device=p.device)
            return zeros[p.device]

        return tree_map(zero, params)
    return torch.zeros((), dtype=torch.int64, device=params_device(params))


def torch_scalar_dtype() -> torch.dtype:
    """The dtype torch.optim gives its scalar state (``step``, NAdam's ``mu_product``, ...).

    float64 under a float64 default dtype, else float32, whatever the parameters' dtype.
    """
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def value_at(value: ScalarOrSchedule, count: torch.Tensor | list) -> Any:
    """A hyperparameter's value at step ``count``: a schedule is called, a number returned.

    For per-leaf counts (a list), a schedule is called at each leaf's count.
    """
    if not is_schedule(value):
        return value
    if isinstance(count, list):
        return [step_scalar(value(c)) for c in count]
    return step_scalar(value(count))


def torch_names(**names: str) -> Mapping[str, str]:
    """A state class's ``torch_keys``: torch.optim's state key for each field it shares.

    The `Optimizer` adapter stores those fields under torch's names (``exp_avg``, ``step``,
    ...), so checkpoints move between it and torch.optim. Declared in the class body::

        class ScaleByAdamState(NamedTuple):
            count: torch.Tensor
            mu: Any
            nu: Any

            torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq")
    """
    return MappingProxyType(names)


init_empty_state = empty_init
"""optax's public name of the ``init`` of a stateless transformation."""
