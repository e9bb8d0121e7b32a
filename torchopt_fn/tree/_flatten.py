"""Flattening pytrees: the only module that talks to optree.

**The `None` rule.** `None` is a *leaf* meaning "no value here" (a parameter without a
gradient). Everything that maps over an updates tree returns `None` where the update is
`None` and leaves the matching state untouched, so `None` passes through every transform.

Eagerly optree (C++) flattens; while `torch.compile` traces, a plain loop does (below), since
Dynamo would interpret optree's Python polyfill at great cost.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optree
import torch

__all__ = [
    "NAMESPACE",
    "ParamList",
    "TreeSpec",
    "flatten_like",
    "leaf_paths",
    "leaf_trails",
    "path_str",
    "tree_flatten",
    "tree_leaves",
    "tree_map",
    "tree_structure",
    "tree_unflatten",
]

Tree = Any


class ParamList(list):
    """A list of parameters as one pytree node type of its own.

    The `Optimizer` adapter passes a group's params as a `ParamList`; every per-parameter
    subtree of the resulting state is then a `ParamList` too, which is how the adapter tells
    per-parameter state (``exp_avg``) from group-wide state (``step``).
    """


NAMESPACE = "torchopt_fn"
optree.register_pytree_node(
    ParamList,
    lambda xs: (list(xs), None, None),
    lambda _, children: ParamList(children),
    namespace=NAMESPACE,
)


def tree_flatten(tree: Tree) -> tuple[list[Any], TreeSpec]:
    """Flatten ``tree`` into its leaves (`None` included) and a spec to rebuild it."""
    if torch.compiler.is_compiling():
        flat = _loop_flatten(tree)
        if flat is not None:
            return flat
    return optree.tree_flatten(tree, none_is_leaf=True, namespace=NAMESPACE)


def tree_unflatten(spec: TreeSpec, leaves: Iterable[Any]) -> Tree:
    """Rebuild a tree from `tree_flatten`'s spec and a list of leaves."""
    if isinstance(spec, _LoopSpec):
        return spec.unflatten(leaves)
    return optree.tree_unflatten(spec, leaves)


def tree_leaves(tree: Tree) -> list[Any]:
    """The leaves of ``tree`` in order, `None` leaves included.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_leaves({"b": None, "a": torch.ones(1)})
        [tensor([1.]), None]
    """
    if torch.compiler.is_compiling():
        flat = _loop_flatten(tree)
        if flat is not None:
            return flat[0]
    return optree.tree_leaves(tree, none_is_leaf=True, namespace=NAMESPACE)


def tree_structure(tree: Tree) -> TreeSpec:
    """The structure of ``tree`` (with `None` as a leaf)."""
    if torch.compiler.is_compiling():
        flat = _loop_flatten(tree)
        if flat is not None:
            return flat[1]
    return optree.tree_structure(tree, none_is_leaf=True, namespace=NAMESPACE)


# Why a flattener of our own: Dynamo cannot run optree's C++ code, so while tracing it
# interprets torch's Python polyfill of optree, which costs tens of seconds for a model with a
# few hundred tensors (a registry lookup and a spec object per leaf). The loop below handles
# only the node types our trees use, with optree's exact semantics, and handles a container of
# leaves as a whole (`extend`, slices), which Dynamo traces without a bytecode per leaf. For
# anything else it gives up and optree decides. Eagerly optree (C++) is faster, so the loop
# runs only under `torch.compiler.is_compiling()`.
#
# A container's spec is ``(type, keys, length, child specs)``; the child specs are `None` when
# every child is a leaf, else a list holding `None` for each leaf child. ``keys`` is
# ``(sorted keys, insertion-order keys)`` for a dict (optree orders a dict's children by sorted
# key and rebuilds it in insertion order) and `None` otherwise. A leaf's spec is `None`.

# Exactly the leaf types: optree registers none of them as nodes. Other tensor subclasses and
# objects make the loop give up, since they could be registered nodes.
_LEAF_TYPES = frozenset(
    {
        torch.Tensor,
        torch.nn.Parameter,
        torch.dtype,
        torch.device,
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
    }
)
_GIVE_UP = object()  # returned by `_loop_node` for a node type the loop does not handle
_DICT_TYPES = (dict, collections.OrderedDict, collections.defaultdict)


def _loop_flatten(tree: Tree) -> tuple[list[Any], _LoopSpec] | None:
    """`tree_flatten` by a plain loop, or `None` where only optree can flatten ``tree``."""
    # optree can be told to keep dicts in insertion order instead of sorted.
    if optree._C.is_dict_insertion_ordered(NAMESPACE):
        return None
    if type(tree) in _LEAF_TYPES:
        return [tree], _LoopSpec(None, 1)
    leaves: list[Any] = []
    root = _loop_node(tree, leaves)
    if root is _GIVE_UP:
        return None
    return leaves, _LoopSpec(root, len(leaves))


def _is_namedtuple(cls: type) -> bool:
    # A NamedTuple class is a node unless re-registered as a custom node in our namespace.
    if not issubclass(cls, tuple):
        return False
    entry = optree.register_pytree_node.get(cls, namespace=NAMESPACE)
    return entry is not None and entry.kind == optree.PyTreeKind.NAMEDTUPLE


def _loop_node(node: Any, leaves: list[Any]) -> Any:
    """The spec of the container ``node``, appending its leaves; `_GIVE_UP` if unsupported."""
    cls = type(node)
    keys = None
    children = node
    if cls is dict:
        order = list(node)
        # Plain `sorted` orders all-`str` or all-`int` keys exactly as optree does (optree
        # falls back to ordering by type name only where `sorted` fails); others go to optree.
        key_types = frozenset(map(type, order))
        if not (key_types <= {str} or key_types <= {int}):
            return _GIVE_UP
        keys = (sorted(order), order)
        children = list(map(node.__getitem__, keys[0]))
    elif not (cls is list or cls is tuple or cls is ParamList or _is_namedtuple(cls)):
        return _GIVE_UP
    # `frozenset(map(...))` is the test Dynamo traces fastest (no polyfill bytecode per child).
    if frozenset(map(type, children)) <= _LEAF_TYPES:
        leaves.extend(children)
        return (cls, keys, len(children), None)
    specs = []
    for child in children:
        if type(child) in _LEAF_TYPES:
            leaves.append(child)
            specs.append(None)
        else:
            spec = _loop_node(child, leaves)
            if spec is _GIVE_UP:
                return _GIVE_UP
            specs.append(spec)
    return (cls, keys, len(children), specs)


def _loop_build(spec: Any, leaves: list[Any], start: int) -> tuple[Any, int]:
    """The container of ``spec`` rebuilt from ``leaves[start:]``, and the index after it."""
    cls, keys, length, specs = spec
    if specs is None:
        children = leaves[start : start + length]
        start += length
    else:
        children = []
        for s in specs:
            if s is None:
                children.append(leaves[start])
                start += 1
            else:
                child, start = _loop_build(s, leaves, start)
                children.append(child)
    if cls is dict:
        by_key = dict(zip(keys[0], children))
        return {k: by_key[k] for k in keys[1]}, start
    if cls is list or cls is tuple or cls is ParamList:
        return cls(children), start
    return cls(*children), start


def _loop_up_to(spec: Any, node: Any, out: list[Any]) -> bool:
    """Append the subtrees of ``node`` at the leaves of ``spec``; False on any difference."""
    cls, keys, length, specs = spec
    if cls is dict:
        # As in optree, any standard dict type with the same keys matches a dict.
        if type(node) not in _DICT_TYPES or len(node) != length:
            return False
        if list(node) != keys[1] and not all(k in node for k in keys[0]):
            return False
        node = list(map(node.__getitem__, keys[0]))
    elif type(node) is not cls or len(node) != length:
        return False
    if specs is None:
        out.extend(node)
        return True
    for s, child in zip(specs, node):
        if s is None:
            out.append(child)
        elif not _loop_up_to(s, child, out):
            return False
    return True


def _loop_shape(spec: Any) -> Any:
    """``spec`` without the insertion order of dict keys, which optree's spec equality ignores."""
    if spec is None:
        return None
    cls, keys, length, specs = spec
    children = None if specs is None else [_loop_shape(s) for s in specs]
    return cls, None if keys is None else keys[0], length, children


class _Star:
    """Stands for a leaf in a printed spec."""

    def __repr__(self) -> str:
        return "*"


class _LoopSpec:
    """The spec `tree_flatten` returns while compiling, with the parts of optree's used here.

    Everything here stays inside the loop's own code: under Dynamo, optree's polyfill cannot
    even flatten some trees built during tracing (its dict metadata has no Dynamo wrapper).
    """

    __slots__ = ("num_leaves", "root")

    def __init__(self, root: Any, num_leaves: int):
        self.root = root
        self.num_leaves = num_leaves

    def unflatten(self, leaves: Iterable[Any]) -> Tree:
        leaves = list(leaves)
        if len(leaves) != self.num_leaves:
            raise ValueError(
                f"tree_unflatten: {len(leaves)} leaves for a spec of {self.num_leaves} ({self})."
            )
        return leaves[0] if self.root is None else _loop_build(self.root, leaves, 0)[0]

    def flatten_up_to(self, tree: Tree) -> list[Any]:
        if self.root is None:
            return [tree]
        out: list[Any] = []
        if not _loop_up_to(self.root, tree, out):
            raise ValueError(f"flatten_up_to: the tree does not have the structure {self}.")
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _LoopSpec) and _loop_shape(self.root) == _loop_shape(other.root)

    def __repr__(self) -> str:
        # The tree with `*` at the leaves, much as optree prints a spec.
        return f"LoopSpec({self.unflatten([_Star()] * self.num_leaves)!r})"


TreeSpec = optree.PyTreeSpec | _LoopSpec


# --------------------------------------------------------------------------- paths and errors


def leaf_paths(tree: Tree) -> list[tuple[Any, ...]]:
    """The path (keys from the root) of every leaf of ``tree``, `None` leaves included."""
    paths, _, _ = optree.tree_flatten_with_path(tree, none_is_leaf=True, namespace=NAMESPACE)
    return paths


def path_str(path: Sequence[Any]) -> str:
    """A path as the user would index it: ``['layer']['weight']``, or ``<root>``."""
    return "".join(f"[{k!r}]" for k in path) or "<root>"


def leaf_trails(tree: Tree) -> tuple[list[Any], optree.PyTreeSpec, list[list[tuple[type, Any]]]]:
    """Leaves, spec, and for every leaf its trail of ``(container type, key)`` from the root.

    For NamedTuples the key is the field name; for sequences the index; for dicts the key.
    """
    accessors, leaves, spec = optree.tree_flatten_with_accessor(
        tree, none_is_leaf=True, namespace=NAMESPACE
    )
    trails = []
    for accessor in accessors:
        trail = []
        for entry in accessor:
            key = entry.entry
            if hasattr(entry.type, "_fields") and isinstance(key, int):
                key = entry.type._fields[key]
            trail.append((entry.type, key))
        trails.append(trail)
    return leaves, spec, trails


def _mismatch_error(reference: Tree, other: Tree, what: str) -> ValueError:
    """A `ValueError` naming the first path where ``other`` differs from ``reference``."""
    ref_paths, oth_paths = leaf_paths(reference), leaf_paths(other)
    for a, b in zip(ref_paths, oth_paths):
        if a != b:
            return ValueError(
                f"{what}: trees differ at path {path_str(a)} (the other tree has "
                f"{path_str(b)} there)."
            )
    if len(ref_paths) != len(oth_paths):
        i = min(len(ref_paths), len(oth_paths))
        longer = ref_paths if len(ref_paths) > len(oth_paths) else oth_paths
        return ValueError(
            f"{what}: one tree has {len(ref_paths)} leaves and the other {len(oth_paths)}; "
            f"the first unmatched path is {path_str(longer[i])}."
        )
    return ValueError(
        f"{what}: the trees have the same paths but different container types: "
        f"{tree_structure(reference)} vs {tree_structure(other)}."
    )


def flatten_like(spec: TreeSpec, reference: Tree, other: Tree, what: str) -> list[Any]:
    """The subtrees of ``other`` at the leaves of ``spec`` (the structure of ``reference``).

    A plain list or tuple stands for the `ParamList` the `Optimizer` adapter passes (a mask
    function over a param group may return one).

    Raises:
        ValueError: naming the first path where ``other`` differs from ``reference``.
    """
    if isinstance(reference, ParamList) and type(other) in (list, tuple):
        other = ParamList(other)
    try:
        return spec.flatten_up_to(other)
    except (ValueError, TypeError) as e:
        raise _mismatch_error(reference, other, what) from e


def tree_map(
    f: Callable[..., Any],
    tree: Tree,
    *rest: Tree,
    is_leaf: Callable[[Any], bool] | None = None,
) -> Tree:
    """Map ``f`` over the leaves of ``tree`` and the matching leaves of ``rest``.

    Where the leaf of ``tree`` is `None`, ``f`` is not called and the result is `None`.
    Trees of different structure raise a `ValueError` naming the first differing path.
    ``is_leaf(node)`` (as in optax's ``jax.tree.map``) stops the walk at the nodes it accepts:
    they reach ``f`` whole, and ``rest`` need only match ``tree`` down to them.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_map(lambda u, p: u + p, {"a": torch.ones(1), "b": None},
        ...             {"a": torch.ones(1), "b": torch.ones(1)})
        {'a': tensor([2.]), 'b': None}
    """
    try:
        return optree.tree_map(
            lambda x, *xs: None if x is None else f(x, *xs),
            tree,
            *rest,
            is_leaf=is_leaf,
            none_is_leaf=True,
            namespace=NAMESPACE,
        )
    except (ValueError, TypeError) as e:
        spec = tree_structure(tree)
        for other in rest:
            if tree_structure(other) != spec:
                raise _mismatch_error(tree, other, "tree_map") from e
        raise
