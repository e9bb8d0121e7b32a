"""Pytree helpers: the only module that talks to optree.

**The `None` rule.** `None` is a *leaf* meaning "no value here" (a parameter without a
gradient). Every helper that maps over an updates tree returns `None` where the update is
`None` and leaves the matching state untouched, so `None` passes through every transform.

**One implementation, two strategies.** The arithmetic helpers below are written once over
lists of leaves with the `_ops` primitives. Eagerly they run multi-tensor `torch._foreach_*`
kernels over all leaves at once; under `torch.func` transforms (vmap/grad), where foreach
kernels have no batching rule, the same primitives fall back to one op per leaf.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import optree
import torch

from torchopt_fn._scalar import step_scalar

__all__ = [
    "ParamList",
    "map_live",
    "ravel_tree",
    "tree_add",
    "tree_add_scale",
    "tree_all_finite",
    "tree_bias_correction",
    "tree_cast",
    "tree_div",
    "tree_flatten",
    "tree_full_like",
    "tree_get",
    "tree_l1_norm",
    "tree_l2_norm",
    "tree_leaves",
    "tree_linf_norm",
    "tree_map",
    "tree_mul",
    "tree_ones_like",
    "tree_scale",
    "tree_set",
    "tree_structure",
    "tree_sub",
    "tree_sum",
    "tree_unflatten",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
]

Tree = Any
Scalar = float | torch.Tensor


# --------------------------------------------------------------------------- structure


class ParamList(list):
    """A list of parameters as one pytree node type of its own.

    The `Optimizer` adapter passes a group's params as a `ParamList`; every per-parameter
    subtree of the resulting state is then a `ParamList` too, which is how the adapter tells
    per-parameter state (``exp_avg``) from group-wide state (``step``).
    """


_NAMESPACE = "torchopt_fn"
optree.register_pytree_node(
    ParamList,
    lambda xs: (list(xs), None, None),
    lambda _, children: ParamList(children),
    namespace=_NAMESPACE,
)


def tree_flatten(tree: Tree) -> tuple[list[Any], TreeSpec]:
    """Flatten ``tree`` into its leaves (`None` included) and a spec to rebuild it."""
    if torch.compiler.is_compiling():
        flat = _loop_flatten(tree)
        if flat is not None:
            return flat
    return optree.tree_flatten(tree, none_is_leaf=True, namespace=_NAMESPACE)


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
    return optree.tree_leaves(tree, none_is_leaf=True, namespace=_NAMESPACE)


def tree_structure(tree: Tree) -> TreeSpec:
    """The structure of ``tree`` (with `None` as a leaf)."""
    if torch.compiler.is_compiling():
        flat = _loop_flatten(tree)
        if flat is not None:
            return flat[1]
    return optree.tree_structure(tree, none_is_leaf=True, namespace=_NAMESPACE)


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
    if optree._C.is_dict_insertion_ordered(_NAMESPACE):
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
    entry = optree.register_pytree_node.get(cls, namespace=_NAMESPACE)
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


def tree_leaf_trails(
    tree: Tree,
) -> tuple[list[Any], optree.PyTreeSpec, list[list[tuple[type, Any]]]]:
    """Leaves, spec, and for every leaf its trail of ``(container type, key)`` from the root.

    For NamedTuples the key is the field name; for sequences the index; for dicts the key.
    """
    accessors, leaves, spec = optree.tree_flatten_with_accessor(
        tree, none_is_leaf=True, namespace=_NAMESPACE
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


def _path_str(path: Sequence[Any]) -> str:
    return "".join(f"[{k!r}]" for k in path) or "<root>"


def _mismatch_error(reference: Tree, other: Tree, what: str) -> ValueError:
    """A `ValueError` naming the first path where ``other`` differs from ``reference``."""
    ref_paths, _, _ = optree.tree_flatten_with_path(
        reference, none_is_leaf=True, namespace=_NAMESPACE
    )
    oth_paths, _, _ = optree.tree_flatten_with_path(other, none_is_leaf=True, namespace=_NAMESPACE)
    for a, b in zip(ref_paths, oth_paths):
        if a != b:
            return ValueError(
                f"{what}: trees differ at path {_path_str(a)} (the other tree has "
                f"{_path_str(b)} there)."
            )
    if len(ref_paths) != len(oth_paths):
        i = min(len(ref_paths), len(oth_paths))
        longer = ref_paths if len(ref_paths) > len(oth_paths) else oth_paths
        return ValueError(
            f"{what}: one tree has {len(ref_paths)} leaves and the other {len(oth_paths)}; "
            f"the first unmatched path is {_path_str(longer[i])}."
        )
    return ValueError(
        f"{what}: the trees have the same paths but different container types: "
        f"{tree_structure(reference)} vs {tree_structure(other)}."
    )


def _flatten_like(spec: TreeSpec, reference: Tree, other: Tree, what: str) -> list:
    try:
        return spec.flatten_up_to(other)
    except (ValueError, TypeError) as e:
        raise _mismatch_error(reference, other, what) from e


def tree_map(f: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Map ``f`` over the leaves of ``tree`` and the matching leaves of ``rest``.

    Where the leaf of ``tree`` is `None`, ``f`` is not called and the result is `None`.
    Trees of different structure raise a `ValueError` naming the first differing path.

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
            none_is_leaf=True,
            namespace=_NAMESPACE,
        )
    except (ValueError, TypeError) as e:
        spec = tree_structure(tree)
        for other in rest:
            if tree_structure(other) != spec:
                raise _mismatch_error(tree, other, "tree_map") from e
        raise


# --------------------------------------------------------------------------- multi-tensor


def _use_foreach(tensors: Sequence[torch.Tensor]) -> bool:
    # Foreach kernels have no batching rule under vmap/grad (DESIGN.md §5); complex and
    # sparse tensors take the per-leaf path too.
    if not tensors or torch._C._are_functorch_transforms_active():
        return False
    if True in frozenset(map(torch.Tensor.is_complex, tensors)):
        return False
    # Sparse tensors never get here while compiling (`_live` rejects them eagerly), and this
    # per-leaf check would cost Dynamo a Python frame per leaf.
    return torch.compiler.is_compiling() or all(t.layout == torch.strided for t in tensors)


def _as_scalar(s: Scalar, like: torch.Tensor) -> Scalar:
    """A Python float stays a float; a tensor scalar is moved to ``like``'s device."""
    if isinstance(s, torch.Tensor) and s.device != like.device and s.dim() == 0:
        return s.to(like.device)
    return s


def _scalars(xs: Sequence[torch.Tensor]) -> bool:
    # Lists of 0-d tensors (per-leaf norms, NovoGrad's second moments) take the per-leaf path:
    # they gain nothing from multi-tensor kernels, and Dynamo (torch 2.13) miscompiles foreach
    # ops over them when the step then writes into its inputs (donation).
    return 0 in frozenset(map(torch.Tensor.dim, xs))


def _requires_grad(s: Any) -> bool:
    # Foreach kernels cannot backpropagate into a 0-d tensor scalar (eager autograd through a
    # learned hyperparameter), so those calls take the per-leaf path.
    return isinstance(s, torch.Tensor) and s.requires_grad


class _Ops:
    """Element-wise primitives over lists of tensors: foreach kernels, or one op per leaf."""

    def __init__(self, tensors: Sequence[torch.Tensor]):
        self.foreach = _use_foreach(tensors)

    def mul(self, xs: list, s: Scalar | list) -> list:
        if self.foreach and not _requires_grad(s) and not _scalars(xs):
            return list(torch._foreach_mul(xs, s))
        if isinstance(s, list):
            return [x * y for x, y in zip(xs, s)]
        return [x * s for x in xs]

    def div(self, xs: list, s: Scalar | list) -> list:
        if self.foreach and not _requires_grad(s) and not _scalars(xs):
            return list(torch._foreach_div(xs, s))
        if isinstance(s, list):
            return [x / y for x, y in zip(xs, s)]
        return [x / s for x in xs]

    def add(self, xs: list, ys: list | Scalar, alpha: Scalar = 1.0) -> list:
        """``x + alpha * y`` (``y`` a list) or ``x + y`` (``y`` a scalar)."""
        if not isinstance(ys, list):
            if self.foreach and not _requires_grad(ys) and not _scalars(xs):
                return list(torch._foreach_add(xs, ys))
            return [x + ys for x in xs]
        if isinstance(alpha, torch.Tensor):
            ys = self.mul(ys, alpha)
            alpha = 1.0
        if self.foreach and not _scalars(xs):
            return list(torch._foreach_add(xs, ys, alpha=alpha))
        return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys)]

    def sub(self, xs: list, ys: list) -> list:
        if self.foreach and not _scalars(xs):
            return list(torch._foreach_sub(xs, ys))
        return [x - y for x, y in zip(xs, ys)]

    def lerp(self, xs: list, ys: list, w: Scalar) -> list:
        """``x + w * (y - x)``."""
        if isinstance(w, torch.Tensor):
            # Written out for a tensor weight: Inductor (torch 2.13, CPU) evaluates a weight
            # computed in the graph (``1 - b1``) in float32 inside `_foreach_lerp`, losing
            # float64 precision; for w < 1/2 this is exactly lerp's own formula.
            return self.add(xs, self.mul(self.sub(ys, xs), w))
        if self.foreach and not _scalars(xs):
            return list(torch._foreach_lerp(xs, ys, w))
        return [torch.lerp(x, y, w) for x, y in zip(xs, ys)]

    def square(self, xs: list) -> list:
        return self.mul(xs, xs)

    def sqrt(self, xs: list) -> list:
        return list(torch._foreach_sqrt(xs)) if self.foreach else [torch.sqrt(x) for x in xs]

    def abs(self, xs: list) -> list:
        return list(torch._foreach_abs(xs)) if self.foreach else [torch.abs(x) for x in xs]

    def maximum(self, xs: list, ys: list) -> list:
        if self.foreach:
            return list(torch._foreach_maximum(xs, ys))
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    def norm(self, xs: list) -> list:
        """The L2 norm of every tensor, as 0-d tensors."""
        if self.foreach:
            return list(torch._foreach_norm(xs))
        return [torch.linalg.vector_norm(x) for x in xs]


def _live(updates: Tree, *others: Tree, what: str = "update"):
    """Leaves of ``updates`` that are not `None`, the matching leaves of ``others``, a rebuild fn.

    ``rebuild(new, fallback)`` puts ``new`` back at the live positions and takes the rest
    from ``fallback`` (a list of leaves with the structure of ``updates``).
    """
    leaves, spec = tree_flatten(updates)
    other_leaves = [_flatten_like(spec, updates, o, what) for o in others]
    if type(None) not in frozenset(map(type, leaves)):
        # No `None` leaf (the common case): no gather, which is also cheap for Dynamo to trace.
        picked = [leaves, *other_leaves]

        def rebuild(new: list, fallback: list) -> Tree:
            return tree_unflatten(spec, new)

    else:
        idx = [i for i, x in enumerate(leaves) if x is not None]
        picked = [[ls[i] for i in idx] for ls in [leaves, *other_leaves]]

        def rebuild(new: list, fallback: list) -> Tree:
            out = list(fallback)
            for i, v in zip(idx, new):
                out[i] = v
            return tree_unflatten(spec, out)

    if not torch.compiler.is_compiling():  # a sparse tensor cannot reach Inductor anyway
        _reject_sparse(picked[0], what)
    return picked, leaves, other_leaves, rebuild


def _reject_sparse(xs: list, what: str) -> None:
    for x in xs:
        if isinstance(x, torch.Tensor) and x.layout != torch.strided:
            raise ValueError(
                f"{what}: sparse gradients ({x.layout}) are not supported; densify them "
                "(`g.to_dense()`) or use torch.optim.SparseAdam."
            )


def cast_like(xs: list, likes: list) -> list:
    """Each ``x`` cast to the dtype of the matching ``like`` (outputs keep the updates' dtypes)."""
    # Comparing dtypes first skips ~2 us of dispatch per leaf for the usual no-op `.to`.
    return [x if x.dtype == y.dtype else x.to(y.dtype) for x, y in zip(xs, likes)]


def compute_dtype(tree: Tree) -> torch.dtype:
    """The dtype for step-dependent scalars: the tree's floating dtypes promoted, >= float32."""
    dtype = torch.float32
    for leaf in tree_leaves(tree):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            dtype = torch.promote_types(dtype, leaf.dtype)
    return dtype


def per_dtype(xs: list, make: Callable[[torch.dtype, torch.device], Any]) -> list:
    """``make(dtype, device)`` once per (dtype, device) of ``xs``, one entry per leaf.

    The dtype is the leaf's promoted to at least float32, so float16/bfloat16 leaves get
    float32 step-dependent scalars (bias corrections, ...) and float64 leaves float64 ones.
    """
    cache: dict[tuple[torch.dtype, torch.device], Any] = {}
    out = []
    for x in xs:
        key = (torch.promote_types(x.dtype, torch.float32), x.device)
        if key not in cache:
            cache[key] = make(*key)
        out.append(cache[key])
    return out


def map_live(fn: Callable[..., list], updates: Tree, *others: Tree, fill: Tree = None) -> Tree:
    """Apply a multi-tensor function to the non-`None` leaves of ``updates`` (and ``others``).

    ``fn(ops, xs, *other_lists)`` receives an `_Ops` (foreach or per-leaf) and lists of the
    live leaves, and returns the list of new leaves. The result has the structure of
    ``updates``; where the update is `None` it holds the leaf of ``fill`` (pass the old state
    to keep it unchanged) or `None`. This is how transforms write their maths once for eager,
    compiled, vmapped and differentiated use.
    """
    extra = () if fill is None else (fill,)
    (xs, *ys), leaves, other_leaves, rebuild = _live(updates, *others, *extra)
    if fill is not None:
        ys = ys[: len(others)]
        leaves = other_leaves[-1]
    return rebuild(fn(_Ops(xs), xs, *ys), leaves)


def _binary(a: Tree, b: Tree, op: Callable[[_Ops, list, list], list]) -> Tree:
    return map_live(op, a, b)


def tree_add(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a + b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_add({"a": torch.ones(2)}, {"a": torch.ones(2)})
        {'a': tensor([2., 2.])}
    """
    return _binary(a, b, lambda o, x, y: o.add(x, y))


def tree_sub(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a - b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_sub({"a": torch.ones(2)}, {"a": torch.ones(2)})
        {'a': tensor([0., 0.])}
    """
    return _binary(a, b, lambda o, x, y: o.sub(x, y))


def tree_mul(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a * b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_mul({"a": torch.full((2,), 3.0)}, {"a": torch.full((2,), 2.0)})
        {'a': tensor([6., 6.])}
    """
    return _binary(a, b, lambda o, x, y: o.mul(x, y))


def tree_div(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a / b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_div({"a": torch.full((2,), 3.0)}, {"a": torch.full((2,), 2.0)})
        {'a': tensor([1.5000, 1.5000])}
    """
    return _binary(a, b, lambda o, x, y: o.div(x, y))


def tree_add_scale(a: Tree, s: Scalar, b: Tree) -> Tree:
    """Leaf-wise ``a + s * b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_add_scale({"a": torch.ones(2)}, 0.5, {"a": torch.ones(2)})
        {'a': tensor([1.5000, 1.5000])}
    """
    return _binary(a, b, lambda o, x, y: o.add(x, y, alpha=s))


def tree_scale(s: Scalar, tree: Tree) -> Tree:
    """Multiply every leaf by the scalar ``s`` (a float or a 0-d tensor).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_scale(2.0, [torch.ones(2), None])
        [tensor([2., 2.]), None]
    """
    (xs,), leaves, _, rebuild = _live(tree)
    return rebuild(_Ops(xs).mul(xs, s), leaves)


def tree_cast(tree: Tree, dtype: torch.dtype | None) -> Tree:
    """Cast floating leaves to ``dtype`` (no-op for `None` dtype or non-floating leaves).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_cast({"a": torch.ones(1)}, torch.float64)
        {'a': tensor([1.], dtype=torch.float64)}
    """
    if dtype is None:
        return tree
    return tree_map(lambda x: x.to(dtype) if x.is_floating_point() else x, tree)


def tree_zeros_like(tree: Tree, dtype: torch.dtype | None = None) -> Tree:
    """Zeros shaped like every leaf (optionally of another dtype).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_zeros_like([torch.ones(2), None])
        [tensor([0., 0.]), None]
    """
    return tree_map(lambda x: torch.zeros_like(x, dtype=dtype), tree)


def tree_ones_like(tree: Tree, dtype: torch.dtype | None = None) -> Tree:
    """Ones shaped like every leaf (optionally of another dtype).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_ones_like([torch.zeros(2)])
        [tensor([1., 1.])]
    """
    return tree_map(lambda x: torch.ones_like(x, dtype=dtype), tree)


def tree_full_like(tree: Tree, value: Scalar, dtype: torch.dtype | None = None) -> Tree:
    """``value`` broadcast to every leaf's shape (optionally of another dtype).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_full_like([torch.zeros(2)], 0.5)
        [tensor([0.5000, 0.5000])]
    """
    return tree_map(lambda x: torch.full_like(x, 0.0, dtype=dtype).add_(value), tree)


def tree_where(condition: torch.Tensor, a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``torch.where(condition, a, b)`` for a scalar boolean ``condition``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_where(torch.tensor(False), [torch.ones(1)], [torch.zeros(1)])
        [tensor([0.])]
    """
    return tree_map(lambda x, y: torch.where(condition, x, y), a, b)


# --------------------------------------------------------------------------- moments


def tree_update_moment(updates: Tree, moments: Tree, decay: Scalar, order: int) -> Tree:
    r"""Exponential moving average of ``updates ** order``.

    $m_t = \beta m_{t-1} + (1 - \beta) g_t^k$, written as a lerp: $m + (1-\beta)(g^k - m)$.
    Where an update is `None` the moment is returned unchanged.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_update_moment({"a": torch.ones(1)}, {"a": torch.zeros(1)}, 0.9, 1)
        {'a': tensor([0.1000])}
    """
    (gs, ms), _, (m_leaves,), rebuild = _live(updates, moments, what="update_moment")
    ops = _Ops(gs)
    gs = cast_like(gs, ms)
    if order == 2:
        gs = ops.square(gs)
    elif order != 1:
        gs = [g**order for g in gs]
    return rebuild(ops.lerp(ms, gs, 1 - decay), m_leaves)


def tree_update_moment_per_elem_norm(
    updates: Tree, moments: Tree, decay: Scalar, order: int
) -> Tree:
    r"""Exponential moving average of $|g|^k$ (for real tensors $g^2$ when $k = 2$).

    Raises:
        ValueError: for complex updates (use `from_torch`, which optimises complex parameters
            as pairs of reals, as torch.optim does).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> g, m = {"a": torch.tensor([-2.0])}, {"a": torch.zeros(1)}
        >>> tf.tree_update_moment_per_elem_norm(g, m, 0.5, 2)
        {'a': tensor([2.])}
    """
    _reject_complex(updates, "tree_update_moment_per_elem_norm")
    if order == 2:
        return tree_update_moment(updates, moments, decay, 2)
    return tree_update_moment(tree_map(torch.abs, updates), moments, decay, order)


def _reject_complex(tree: Tree, what: str) -> None:
    for x in tree_leaves(tree):
        if isinstance(x, torch.Tensor) and x.is_complex():
            raise ValueError(
                f"{what}: complex updates are not supported here; `from_torch` optimises complex "
                "parameters as pairs of reals (`torch.view_as_real`), as torch.optim does."
            )


def tree_update_infinity_moment(updates: Tree, moments: Tree, decay: Scalar, eps: Scalar) -> Tree:
    r"""Exponentially weighted infinity norm: $u_t = \max(\beta u_{t-1}, |g_t| + \epsilon)$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> g, m = {"a": torch.tensor([-2.0])}, {"a": torch.ones(1)}
        >>> tf.tree_update_infinity_moment(g, m, 0.9, 0.0)
        {'a': tensor([2.])}
    """
    _reject_complex(updates, "tree_update_infinity_moment")
    (gs, ms), _, (m_leaves,), rebuild = _live(updates, moments, what="update_infinity_moment")
    ops = _Ops(gs)
    new = ops.maximum(ops.mul(ms, decay), ops.add(ops.abs(gs), eps))
    return rebuild(new, m_leaves)


def _bias_correction_factor(
    decay: Scalar, count: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    # Computed with tensor ops in the leaves' floating dtype: Dynamo cannot trace the builtin
    # pow(float, Tensor), and an integer exponent would give float32 (DESIGN.md §3).
    decay_t = torch.as_tensor(decay, dtype=dtype, device=device)
    return step_scalar(1 - torch.pow(decay_t, count.to(device=device, dtype=dtype)))


def tree_bias_correction(moments: Tree, decay: Scalar, count: torch.Tensor) -> Tree:
    r"""Divide moments by $1 - \beta^t$ (Adam's bias correction), $t$ the 0-d ``count``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_bias_correction({"a": torch.ones(1)}, 0.5, torch.tensor(1))
        {'a': tensor([2.])}
    """
    (ms,), leaves, _, rebuild = _live(moments)
    factors = per_dtype(
        ms, lambda dtype, device: _bias_correction_factor(decay, count, dtype, device)
    )
    return rebuild(_Ops(ms).div(ms, factors), leaves)


# --------------------------------------------------------------------------- reductions


def _accumulate(parts: list[torch.Tensor]) -> torch.Tensor:
    if not parts:
        return torch.zeros(())
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return torch.stack([p.to(dtype) for p in parts]).sum()


def tree_sum(tree: Tree) -> torch.Tensor:
    """Sum of all elements of all leaves (a 0-d tensor).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_sum({"a": torch.ones(2), "b": torch.ones(3)})
        tensor(5.)
    """
    (xs,), _, _, _ = _live(tree)
    return _accumulate([x.sum() for x in xs])


def tree_vdot(a: Tree, b: Tree) -> torch.Tensor:
    """Inner product of two trees: $\\sum_i \\langle a_i, b_i \\rangle$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_vdot({"a": torch.ones(2)}, {"a": torch.full((2,), 2.0)})
        tensor(4.)
    """
    (xs, ys), _, _, _ = _live(a, b)
    return _accumulate([torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(xs, ys)])


def tree_l2_norm(tree: Tree, squared: bool = False) -> torch.Tensor:
    """Global L2 norm over all leaves, $\\sqrt{\\sum_i \\|x_i\\|^2}$ (its square if ``squared``).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_l2_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        tensor(5.)
    """
    (xs,), _, _, _ = _live(tree)
    norms = _Ops(xs).norm(xs)
    total = _accumulate([n.to(torch.promote_types(n.dtype, torch.float32)) ** 2 for n in norms])
    return total if squared else torch.sqrt(total)


def tree_l1_norm(tree: Tree) -> torch.Tensor:
    """Sum of absolute values over all leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_l1_norm({"a": torch.tensor([-1.0, 2.0])})
        tensor(3.)
    """
    (xs,), _, _, _ = _live(tree)
    return _accumulate([x.abs().sum() for x in xs])


def tree_linf_norm(tree: Tree) -> torch.Tensor:
    """Largest absolute value over all leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_linf_norm({"a": torch.tensor([-3.0, 2.0])})
        tensor(3.)
    """
    (xs,), _, _, _ = _live(tree)
    if not xs:
        return torch.zeros(())
    return torch.stack(
        [x.abs().max().to(torch.promote_types(x.dtype, torch.float32)) for x in xs]
    ).max()


def tree_all_finite(tree: Tree) -> torch.Tensor:
    """A 0-d boolean tensor: whether every element of every leaf is finite.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_all_finite({"a": torch.tensor([1.0, float("inf")])})
        tensor(False)
    """
    (xs,), _, _, _ = _live(tree)
    if not xs:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(x).all() for x in xs]).all()


# --------------------------------------------------------------------------- flat layout


def ravel_tree(tree: Tree) -> tuple[torch.Tensor, Callable[[torch.Tensor], Tree]]:
    """Concatenate every tensor leaf of ``tree`` into one flat tensor; return it and the inverse.

    ``unravel(flat)`` rebuilds the tree from *views* into ``flat`` (no copy), so a loss written
    on the tree can be differentiated with respect to ``flat`` and yields one flat gradient.
    Optimizing the flat tensor instead of the tree is the same algorithm for element-wise
    optimizers (`sgd`, `adam`, `adamw`, `lion`, `rmsprop`, ...) and global-norm clipping, and
    makes `compile_step` trace and compile one tensor instead of hundreds (docs: "Speed").
    It is not the same for per-tensor transforms (`lamb`, `lars`, `adafactor`,
    `scale_by_trust_ratio`, masks).

    Raises:
        ValueError: if the leaves do not share one dtype and device, or a leaf is not a tensor.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> flat, unravel = tf.ravel_tree({"b": torch.zeros(2), "w": torch.ones(2, 2)})
        >>> flat
        tensor([0., 0., 1., 1., 1., 1.])
        >>> unravel(flat)["w"].shape
        torch.Size([2, 2])
    """
    leaves, spec = tree_flatten(tree)
    tensors = [x for x in leaves if x is not None]
    for x in tensors:
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"ravel_tree: every leaf must be a tensor or None, got {type(x)}.")
    kinds = {(x.dtype, x.device) for x in tensors}
    if len(kinds) > 1:
        raise ValueError(
            "ravel_tree: the leaves must share one dtype and device to share one buffer; got "
            f"{sorted(str(k) for k in kinds)}. Ravel each group separately (e.g. with `partition`)."
        )
    shapes = [x.shape for x in tensors]
    sizes = [x.numel() for x in tensors]
    total = sum(sizes)
    flat = torch.cat([x.reshape(-1) for x in tensors]) if tensors else torch.zeros(0)

    def unravel(flat: torch.Tensor) -> Tree:
        if flat.shape != (total,):
            raise ValueError(f"unravel: expected shape ({total},), got {tuple(flat.shape)}.")
        views = iter(chunk.view(shape) for chunk, shape in zip(flat.split(sizes), shapes))
        return tree_unflatten(spec, [None if x is None else next(views) for x in leaves])

    return flat, unravel


# --------------------------------------------------------------------------- by name


def _children_with_names(node: Any) -> list[tuple[Any, Any]] | None:
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return list(zip(node._fields, node))
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, (list, tuple)):
        return [(None, c) for c in node]
    return None


def _find(node: Any, key: str, found: list) -> None:
    children = _children_with_names(node)
    if children is None:
        return
    for name, child in children:
        if name == key:
            found.append(child)
        else:
            _find(child, key, found)


def tree_get(tree: Tree, key: str, default: Any = None) -> Any:
    """Find the value stored under ``key`` (a NamedTuple field or dict key) anywhere in ``tree``.

    Raises:
        KeyError: if ``key`` occurs more than once (ambiguous).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.inject_hyperparams(tf.adam)(learning_rate=0.1)
        >>> tf.tree_get(tx.init({"w": torch.zeros(1)}), "learning_rate")
        tensor(0.1000, dtype=torch.float64)
    """
    found: list[Any] = []
    _find(tree, key, found)
    if len(found) > 1:
        raise KeyError(f"tree_get: key {key!r} occurs {len(found)} times in the tree.")
    return found[0] if found else default


def tree_set(tree: Tree, **values: Any) -> Tree:
    """Return ``tree`` with every NamedTuple field or dict key named in ``values`` replaced.

    Raises:
        KeyError: if a name does not occur in the tree.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adam()
        >>> state = tf.tree_set(tx.init({"w": torch.zeros(1)}), count=torch.tensor(10))
        >>> tf.tree_get(state, "count")
        tensor(10)
    """
    seen: set[str] = set()

    def rebuild(node: Any) -> Any:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            fields = {}
            for name, child in zip(node._fields, node):
                if name in values:
                    seen.add(name)
                    fields[name] = values[name]
                else:
                    fields[name] = rebuild(child)
            return type(node)(**fields)
        if isinstance(node, dict):
            out = {}
            for name, child in node.items():
                if name in values:
                    seen.add(name)
                    out[name] = values[name]
                else:
                    out[name] = rebuild(child)
            return type(node)(out) if type(node) is not dict else out
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(c) for c in node)
        return node

    out = rebuild(tree)
    missing = set(values) - seen
    if missing:
        raise KeyError(f"tree_set: keys {sorted(missing)} do not occur in the tree.")
    return out
