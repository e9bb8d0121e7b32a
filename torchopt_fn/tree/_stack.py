"""Stacking trees along a member axis and back (`tree_stack`, `tree_unstack`), for ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from torchopt_fn.tree._flatten import (
    _mismatch_error,
    leaf_paths,
    path_str,
    tree_flatten,
    tree_structure,
    tree_unflatten,
)

__all__ = ["tree_stack", "tree_unstack"]

Tree = Any


def tree_stack(trees: Sequence[Tree], axis: int = 0) -> Tree:
    """One tree whose every tensor stacks the matching tensors of ``trees`` along ``axis``.

    The trees must have one structure; `None` leaves must be `None` in every tree and stay
    `None`. With ``axis=0`` the result holds M members' parameters (or optimizer states)
    with a leading member axis, ready for `torch.func.vmap` over ``tx.init``,
    ``tx.update`` and the loss: one state per member. `tree_unstack` splits it back.
    `torch.func.stack_module_state` does the same for ``nn.Module``s.

    Args:
        trees: the trees to stack, at least one.
        axis: the new axis, as in `torch.stack`.

    Returns:
        The stacked tree.

    Raises:
        ValueError: if ``trees`` is empty, or naming the path where a tree's structure
            differs from the first tree's, where a leaf is `None` in some trees only, or
            where the tensors cannot be stacked (different shapes).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> members = [{"w": torch.full((2,), float(i)), "b": None} for i in range(3)]
        >>> stacked = tf.tree_stack(members)
        >>> stacked["w"].shape, stacked["b"]
        (torch.Size([3, 2]), None)
        >>> tf.tree_unstack(stacked)[2]["w"]
        tensor([2., 2.])
    """
    if not trees:
        raise ValueError("tree_stack: no trees to stack.")
    first = trees[0]
    spec = tree_structure(first)
    columns = []
    for i, tree in enumerate(trees):
        if tree_structure(tree) != spec:
            raise _mismatch_error(first, tree, f"tree_stack (tree {i} vs tree 0)")
        columns.append(tree_flatten(tree)[0])
    paths = leaf_paths(first)
    stacked = []
    for path, leaves in zip(paths, zip(*columns)):
        nones = sum(x is None for x in leaves)
        if nones == len(leaves):
            stacked.append(None)
            continue
        if nones:
            raise ValueError(
                f"tree_stack: the leaf at {path_str(path)} is None in {nones} of "
                f"{len(leaves)} trees; it must be None in all or none."
            )
        try:
            stacked.append(torch.stack(leaves, dim=axis))
        except (IndexError, RuntimeError, TypeError) as e:
            raise ValueError(f"tree_stack: cannot stack the leaves at {path_str(path)}: {e}") from e
    return tree_unflatten(spec, stacked)


def tree_unstack(tree: Tree, axis: int = 0) -> list[Tree]:
    """Split every tensor of ``tree`` along ``axis``: the inverse of `tree_stack`.

    Every tensor must have the same size M along ``axis``; the result is M trees of the
    structure of ``tree``, whose tensors are views of ``tree``'s. `None` leaves stay `None`.

    Args:
        tree: the stacked tree.
        axis: the axis to split, as in `torch.unbind`.

    Returns:
        The list of M trees.

    Raises:
        ValueError: if the tree has no tensor, or naming the path of a tensor whose size
            along ``axis`` differs from the first's (or which has no such axis).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> stacked = {"w": torch.arange(6.0).reshape(3, 2), "count": torch.tensor([1, 2, 3])}
        >>> [member["count"] for member in tf.tree_unstack(stacked)]
        [tensor(1), tensor(2), tensor(3)]
        >>> tf.tree_unstack({"w": torch.zeros(3, 2), "v": torch.zeros(2, 3)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: tree_unstack: the leaf at ['w'] has size 3 along axis 0, where the leaf at ...
    """
    leaves, spec = tree_flatten(tree)
    size, first = None, None
    for path, x in zip(leaf_paths(tree), leaves):
        if x is None:
            continue
        if not -x.dim() <= axis < x.dim():
            raise ValueError(f"tree_unstack: the leaf at {path_str(path)} has no axis {axis}.")
        if size is None:
            size, first = x.shape[axis], path
        elif x.shape[axis] != size:
            raise ValueError(
                f"tree_unstack: the leaf at {path_str(path)} has size {x.shape[axis]} along "
                f"axis {axis}, where the leaf at {path_str(first)} has {size}."
            )
    if size is None:
        raise ValueError("tree_unstack: the tree has no tensor to unstack.")
    columns = [[None] * size if x is None else x.unbind(axis) for x in leaves]
    return [tree_unflatten(spec, [col[i] for col in columns]) for i in range(size)]
