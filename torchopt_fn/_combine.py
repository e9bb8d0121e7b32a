"""Combinators: `chain`, `named_chain`, `masked`, `partition`; `freeze` and
`selective_transform` built on them."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, OptState, Params
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import set_to_zero
from torchopt_fn.tree._flatten import (
    flatten_like,
    leaf_paths,
    path_str,
    tree_flatten,
    tree_map,
    tree_structure,
    tree_unflatten,
)

__all__ = [
    "MaskedNode",
    "MaskedState",
    "MultiTransformState",
    "PartitionState",
    "chain",
    "freeze",
    "masked",
    "multi_transform",
    "named_chain",
    "partition",
    "selective_transform",
]


@record_hyperparams
def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after the other; the state is the tuple of their states.

    Extra keyword arguments given to ``update`` are forwarded to every stage.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.chain(tf.clip_by_global_norm(1.0), tf.scale(-0.5))
        >>> u, _ = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([-0.3000, -0.4000])
    """

    def init_fn(params: Params) -> tuple[OptState, ...]:
        return tuple(t.init(params) for t in transforms)

    def update_fn(updates, state, params=None, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(
                f"chain: the state has {len(state)} entries but the chain has "
                f"{len(transforms)} transformations."
            )
        new_state = []
        for t, s in zip(transforms, state):
            updates, s = t.update(updates, s, params, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def named_chain(*transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like `chain`, but the state is a dict keyed by the given names.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.named_chain(("clip", tf.clip(1.0)), ("adam", tf.scale_by_adam()))
        >>> sorted(tx.init({"w": torch.zeros(1)}).keys())
        ['adam', 'clip']
    """
    names = [n for n, _ in transforms]
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain: names must be unique, got {names}.")

    def init_fn(params):
        return {name: t.init(params) for name, t in transforms}

    def update_fn(updates, state, params=None, **extra_args):
        new_state = {}
        for name, t in transforms:
            updates, new_state[name] = t.update(updates, state[name], params, **extra_args)
        return updates, new_state

    return GradientTransformation(init_fn, update_fn)


class MaskedNode(NamedTuple):
    """What an inner transformation of `masked` or `partition` sees for a leaf that is not its.

    A node with no leaves (as in optax), so the inner transformation has nothing to do there
    and its state holds no tensor there; unlike a `None` leaf, it leaves the state all
    tensors, which `torch.func.vmap` needs.

    Examples:
        >>> import torchopt_fn as tf
        >>> tf.MaskedNode()
        MaskedNode()
    """


class MaskedState(NamedTuple):
    """State of `masked`: the inner transformation's state over the selected leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.masked(tf.trace(0.9), {"w": True, "b": False})
        >>> tx.init({"w": torch.zeros(1), "b": torch.zeros(1)}).inner_state.trace
        {'w': tensor([0.]), 'b': MaskedNode()}
    """

    inner_state: Any


def _resolve_mask(mask: Any, params: Params) -> Any:
    return mask(params) if callable(mask) else mask


def _select(tree: Any, mask_leaves: list[Any], spec) -> Any:
    """``tree`` with `MaskedNode` where the mask is False (`None` stays `None`); a leaf with
    an element mask is kept whole."""
    if tree is None:
        return None
    leaves = spec.flatten_up_to(tree)
    return tree_unflatten(
        spec,
        [
            x if isinstance(m, torch.Tensor) or m else MaskedNode()
            for x, m in zip(leaves, mask_leaves)
        ],
    )


def _mask_leaves(mask_tree: Any, reference: Any, what: str) -> tuple[list[Any], Any]:
    """One entry per leaf of ``reference``: True, False, or a boolean tensor of the leaf's
    shape (an element mask)."""
    leaves, spec = tree_flatten(reference)
    if isinstance(mask_tree, bool):  # one value for every leaf, as optax allows
        return [mask_tree] * len(leaves), spec
    flat = flatten_like(spec, reference, mask_tree, what)
    out = []
    for path, m, x in zip(leaf_paths(reference), flat, leaves):
        if isinstance(m, torch.Tensor) and m.dim() > 0:
            if m.dtype != torch.bool or x is None or m.shape != x.shape:
                raise ValueError(
                    f"{what}: at {path_str(path)} the mask is a {m.dtype} tensor of shape "
                    f"{tuple(m.shape)}; an element mask is a bool tensor of the leaf's shape "
                    f"{None if x is None else tuple(x.shape)}."
                )
            out.append(m)
        else:
            out.append(bool(m))
    return out, spec


def _merge(new: Any, old: Any, keep: Any) -> Any:
    if keep is True:
        return new
    if keep is False:
        return old
    return torch.where(keep, new, old)


def _select_extra_args(
    extra_args: dict[str, Any], mask_leaves: list[bool], spec, enabled: bool
) -> dict[str, Any]:
    """With ``mask_compatible_extra_args``, mask the extra arguments shaped like the updates."""
    if not enabled:
        return extra_args
    return {
        k: _select(v, mask_leaves, spec) if tree_structure(v) == spec else v
        for k, v in extra_args.items()
    }


@record_hyperparams
def masked(
    inner: GradientTransformation,
    mask: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply ``inner`` only to the leaves where ``mask`` is True; the others pass through.

    ``mask`` is a tree of booleans with the structure of the params, a function of the
    params returning one, or one bool for every leaf. Masked-out leaves are hidden from
    ``inner`` as `MaskedNode` (a node without leaves), so its state holds nothing for them.
    A mask leaf may also be a boolean tensor of the leaf's shape, an element mask: ``inner``
    then sees the whole leaf, and its result is kept where the mask is True (meant for
    element-wise ``inner``; `flatten` carries masks onto its flat buffer this way).
    With ``mask_compatible_extra_args``, extra keyword arguments of ``update`` that have the
    structure of the updates are masked the same way before ``inner`` sees them.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.masked(tf.scale(0.0), {"w": True, "b": False})
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> u, _ = tx.update(params, tx.init(params), params)
        >>> u["w"], u["b"]
        (tensor([0.]), tensor([1.]))
    """

    def init_fn(params):
        m, spec = _mask_leaves(_resolve_mask(mask, params), params, "masked: mask vs params")
        return MaskedState(inner.init(_select(params, m, spec)))

    def update_fn(updates, state, params=None, **extra_args):
        mask_tree = _resolve_mask(mask, params if params is not None else updates)
        m, spec = _mask_leaves(mask_tree, updates, "masked: mask vs updates")
        extra_args = _select_extra_args(extra_args, m, spec, mask_compatible_extra_args)
        inner_updates, inner_state = inner.update(
            _select(updates, m, spec), state.inner_state, _select(params, m, spec), **extra_args
        )
        merged = [
            _merge(new, old, keep)
            for new, old, keep in zip(
                spec.flatten_up_to(inner_updates), spec.flatten_up_to(updates), m
            )
        ]
        return tree_unflatten(spec, merged), MaskedState(inner_state)

    return GradientTransformation(init_fn, update_fn)


class PartitionState(NamedTuple):
    """State of `partition`: one inner state per label.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.partition({"a": tf.identity(), "b": tf.trace(0.9)}, {"w": "a", "v": "b"})
        >>> sorted(tx.init({"w": torch.zeros(1), "v": torch.zeros(1)}).inner_states)
        ['a', 'b']
    """

    inner_states: dict[Hashable, Any]


@record_hyperparams
def partition(
    transforms: Mapping[Hashable, GradientTransformation],
    param_labels: Any | Callable[[Params], Any],
    *,
    mask_compatible_extra_args: bool = False,
) -> GradientTransformation:
    """Apply a different transformation to each group of parameters (optax's ``partition``).

    ``param_labels`` is a tree of labels with the structure of the params (or a function of
    the params returning one); ``transforms`` maps every label to a transformation. With
    ``mask_compatible_extra_args``, extra keyword arguments of ``update`` that have the
    structure of the updates are split by label too.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.partition({"fast": tf.sgd(1.0), "frozen": tf.set_to_zero()},
        ...                   {"w": "fast", "b": "frozen"})
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> u, _ = tx.update(params, tx.init(params), params)
        >>> u["w"], u["b"]
        (tensor([-1.]), tensor([0.]))
    """

    def labels_of(params):
        labels = param_labels(params) if callable(param_labels) else param_labels
        _, spec = tree_flatten(params)
        flat = flatten_like(spec, params, labels, "partition: labels vs params")
        unknown = sorted({str(lab) for lab in flat} - {str(k) for k in transforms})
        if unknown:
            raise ValueError(f"partition: labels {unknown} have no transformation.")
        return flat, spec

    def init_fn(params):
        flat, spec = labels_of(params)
        return PartitionState(
            {
                k: t.init(_select(params, [lab == k for lab in flat], spec))
                for k, t in transforms.items()
            }
        )

    def update_fn(updates, state, params=None, **extra_args):
        flat, spec = labels_of(params if params is not None else updates)
        out = list(spec.flatten_up_to(updates))
        new_states = {}
        for k, t in transforms.items():
            m = [lab == k for lab in flat]
            u, new_states[k] = t.update(
                _select(updates, m, spec),
                state.inner_states[k],
                _select(params, m, spec),
                **_select_extra_args(extra_args, m, spec, mask_compatible_extra_args),
            )
            for i, (keep, v) in enumerate(zip(m, spec.flatten_up_to(u))):
                if keep:
                    out[i] = v
        return tree_unflatten(spec, out), PartitionState(new_states)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def freeze(mask: bool | Any) -> GradientTransformation:
    """Zero the updates of the leaves where ``mask`` is True (optax's ``freeze``).

    ``mask`` is a tree of booleans with the structure of the params, or one bool for all.
    Use it in a `chain` after the optimizer; the optimizer still keeps state for frozen
    leaves (`selective_transform` keeps none).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.chain(tf.sgd(1.0), tf.freeze({"w": False, "b": True}))
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> u, _ = tx.update(params, tx.init(params), params)
        >>> u["w"], u["b"]
        (tensor([-1.]), tensor([0.]))
    """
    return masked(set_to_zero(), mask)


@record_hyperparams
def selective_transform(
    optimizer: GradientTransformation, *, freeze_mask: bool | Any
) -> GradientTransformation:
    """Run ``optimizer`` only on the leaves where ``freeze_mask`` is False; zero the rest.

    Unlike ``chain(optimizer, freeze(mask))``, the optimizer keeps no state for frozen leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.selective_transform(tf.adam(0.1), freeze_mask={"w": False, "b": True})
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> u, _ = tx.update(params, tx.init(params), params)
        >>> u["w"], u["b"]
        (tensor([-0.1000]), tensor([0.]))
    """

    def labels(params: Params) -> Any:
        if isinstance(freeze_mask, bool):
            return tree_map(lambda _: "freeze" if freeze_mask else "train", params)
        return tree_map(lambda m: "freeze" if m else "train", freeze_mask)

    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)


multi_transform = partition
"""optax's former name of `partition`."""
MultiTransformState = PartitionState
"""optax's former name of `PartitionState`."""
