"""Per-member hyperparameters: a vector of values for parameters stacked along a member axis.

An ensemble or a sweep keeps M models' parameters stacked, every leaf with a leading axis of
M members. A hyperparameter given as a tensor of shape ``(M,)`` (or ``(M, 1, ..., 1)``) then
means "member m uses value m": ``tf.adamw(learning_rate=torch.tensor([1e-3, 3e-3, 1e-2]))``
trains three stacked models with three learning rates. Any factory of any transformation takes
such values, because the factory is not asked to broadcast them: `record_hyperparams` (which
decorates every factory) sees them and builds the transformation member by member under
`torch.func.vmap`, each member's factory getting its own 0-d value. So the maths is exactly the
scalar code's, with every check, and the state has the member axis too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._validate import checks_enabled
from torchopt_fn.tree._flatten import leaf_paths, path_str, tree_leaves, tree_map

__all__: list[str] = []


def member_values(arguments: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The arguments given one value per member: real floating tensors with an axis.

    Boolean tensors (element masks) and integer ones are left out: they are not numbers to
    broadcast over members.
    """
    return {
        name: value
        for name, value in arguments.items()
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.is_floating_point()
    }


def _as_vectors(values: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Each value as a vector of the members' values, and the number of members."""
    vectors, sizes = {}, {}
    for name, value in values.items():
        if any(n != 1 for n in value.shape[1:]):
            raise ValueError(
                f"{name}: a tensor hyperparameter is one value (0-d) or one value per member "
                f"of stacked params, shape (M,) or (M, 1, ..., 1); got shape "
                f"{tuple(value.shape)}."
            )
        vectors[name] = value.reshape(value.shape[0])
        sizes[name] = value.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"per-member hyperparameters must have as many members each; got {sizes}.")
    return vectors, next(iter(sizes.values()))


def _check_members(tree: Any, what: str, members: int, names: list[str]) -> None:
    for path, leaf in zip(leaf_paths(tree), tree_leaves(tree)):
        if isinstance(leaf, torch.Tensor) and (leaf.dim() == 0 or leaf.shape[0] != members):
            raise ValueError(
                f"{', '.join(names)}: {members} per-member values need {what} stacked along a "
                f"leading axis of {members} members; {what} at {path_str(path)} has shape "
                f"{tuple(leaf.shape)}."
            )


def _contiguous(tree: Any) -> Any:
    # vmap expands what init makes without reading its input (a count) along the member axis
    # with stride 0: a real copy per member, so that in-place steps and checkpoints see one.
    return tree_map(lambda x: x.contiguous() if isinstance(x, torch.Tensor) else x, tree)


def per_member(
    call: Callable[[dict[str, Any]], Any], arguments: dict[str, Any], values: dict[str, Any]
) -> Any:
    """``call(arguments)`` (a factory's call) with one value per member for ``values``, as a
    transformation vmapped over the members (see the module docstring); what is not a
    transformation (a schedule) is built as it is."""
    vectors, members = _as_vectors(values)
    names = sorted(vectors)

    def build(*member: torch.Tensor) -> Any:
        return call({**arguments, **dict(zip(names, member))})

    first = build(*(vectors[n][0] for n in names))  # checks the first member's values
    if not isinstance(first, GradientTransformation):
        return call(arguments)
    # Every member's values checked, naming the argument; not where the factory is rebuilt
    # from checked values (`inject_hyperparams`, every step), nor while tracing.
    if checks_enabled() and not torch.compiler.is_compiling():
        for m in range(1, members):
            build(*(vectors[n][m] for n in names))
    hyper = tuple(vectors[n] for n in names)

    def init_fn(params):
        _check_members(params, "params", members, names)
        return _contiguous(torch.func.vmap(lambda h, p: build(*h).init(p))(hyper, params))

    def update_fn(updates, state, params=None, **extra_args):
        _check_members(updates, "updates", members, names)

        def one(h, u, s, p):
            return build(*h).update(u, s, p, **extra_args)

        if params is None:
            return torch.func.vmap(lambda h, u, s: one(h, u, s, None))(hyper, updates, state)
        return torch.func.vmap(one)(hyper, updates, state, params)

    return GradientTransformation(init_fn, update_fn)
