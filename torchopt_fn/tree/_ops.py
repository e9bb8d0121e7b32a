"""The one leaf walker, `map_leaves`, and the element-wise primitives it hands to transforms.

Every transform writes its maths once, over *lists* of leaves, with the primitives of `Ops`.
Eagerly they run multi-tensor `torch._foreach_*` kernels over all leaves at once; under
`torch.func` transforms (vmap/grad), where foreach kernels have no batching rule, the same
primitives fall back to one op per leaf; under `torch.compile` Inductor fuses either.

`map_leaves` is the only way leaves are walked: it flattens the updates once, takes the
matching leaves of any number of other trees, checks them (tensors, shapes) before anything is
computed, calls the transform's list function, and rebuilds as many trees as it returns, each
leaf in the dtype of the leaf it replaces.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

import torch
from torch._C import _functorch

from torchopt_fn._scalar import Scalar, step_scalar
from torchopt_fn.tree._batched import (
    VmapLevel,
    batched_again,
    batched_operand,
    member_norm,
    sole_vmap,
    under_batch,
)
from torchopt_fn.tree._flatten import (
    flatten_like,
    leaf_paths,
    path_str,
    tree_flatten,
    tree_unflatten,
)

__all__ = [
    "Absent",
    "Ops",
    "Shared",
    "cast_like",
    "collapse",
    "columns",
    "compute_dtype",
    "map_leaves",
    "per_leaf",
    "per_leaf_kernels",
    "scalar_shape",
    "use_foreach",
    "widest_dtype",
]

Tree = Any
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})
_LAYOUT = operator.attrgetter("layout")


_PER_LEAF: ContextVar[bool] = ContextVar("torchopt_fn_per_leaf_kernels", default=False)


@contextlib.contextmanager
def per_leaf_kernels() -> Iterator[None]:
    """Run eager updates with one op per leaf instead of multi-tensor kernels.

    torch.optim's ``foreach=False``: slower, the same numbers. (Compiled code is not affected.)
    """
    token = _PER_LEAF.set(True)
    try:
        yield
    finally:
        _PER_LEAF.reset(token)


def use_foreach(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether multi-tensor kernels may run over ``tensors`` (eagerly or while compiling)."""
    # Foreach kernels have no batching rule under vmap/grad (DESIGN.md §5); complex tensors
    # take the per-leaf path too.
    if not tensors or torch._C._are_functorch_transforms_active():
        return False
    return _foreach_fits(tensors)


def _foreach_fits(tensors: Sequence[torch.Tensor]) -> bool:
    """`use_foreach` for tensors that may take them: no complex ones, not in `per_leaf_kernels`."""
    if not torch.compiler.is_compiling() and _PER_LEAF.get():
        return False
    return True not in frozenset(map(torch.Tensor.is_complex, tensors))


def _scalars(xs: Sequence[torch.Tensor]) -> bool:
    # Lists holding 0-d tensors (per-leaf norms, NovoGrad's second moments, 0-d parameters)
    # take the per-leaf path: they gain nothing from multi-tensor kernels, and Dynamo (torch
    # 2.13) miscompiles foreach ops over them when the step then writes into its inputs.
    return 0 in frozenset(map(torch.Tensor.dim, xs))


def _requires_grad(s: Any) -> bool:
    # Foreach kernels cannot backpropagate into a 0-d tensor scalar (eager autograd through a
    # learned hyperparameter), so those calls take the per-leaf path.
    return isinstance(s, torch.Tensor) and s.requires_grad


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype step-dependent scalars are computed in for leaves of ``dtype``: >= float32."""
    return torch.promote_types(dtype, torch.float32)


def widest_dtype(xs: Sequence[torch.Tensor]) -> torch.dtype:
    """The widest `compute_dtype` among ``xs`` (float32 for none)."""
    out = torch.float32
    for dtype in {x.dtype for x in xs}:
        out = torch.promote_types(out, compute_dtype(dtype))
    return out


def cast_like(xs: list, likes: list) -> list:
    """Each ``x`` cast to the dtype of the matching ``like``."""
    # Comparing dtypes first skips ~2 us of dispatch per leaf for the usual no-op `.to`.
    return [x if x.dtype == y.dtype else x.to(y.dtype) for x, y in zip(xs, likes)]


def columns(rows: Sequence[Sequence[Any]], n: int) -> list[list[Any]]:
    """Per-leaf rows of ``n`` values as ``n`` per-leaf lists (``n`` empty lists for no rows)."""
    return [[row[k] for row in rows] for k in range(n)]


class Ops:
    """Element-wise primitives over lists of tensors: foreach kernels, or one op per leaf.

    Scalars are Python floats, 0-d tensors, or lists of one per leaf (from `scalar`).

    The methods with a trailing underscore may write into their first list, which must hold
    temporaries the calling function made itself (never an input or a state leaf): eagerly,
    with no autograd graph to keep, they do, which saves allocating and touching a fresh
    buffer (on CPU that is most of a step's cost); otherwise they return new tensors. Always
    use what they return.

    Given a ``vmap`` (`map_leaves` running element-wise maths under a vmap's batch, see
    `torchopt_fn.tree._batched`), the lists hold the tensors under the batch, and every
    scalar or tensor operand batched at that level is first lifted to match them.
    """

    __slots__ = ("_inplace", "_inputs", "_lifted", "_vmap", "foreach")

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        inputs: Sequence[list] = (),
        multi: bool = True,
        vmap: VmapLevel | None = None,
    ):
        self._vmap = vmap
        # Under a vmap's batch the tensors are plain ones, which multi-tensor kernels take.
        under = vmap is not None and bool(tensors) and _foreach_fits(tensors)
        self.foreach = multi and (under or use_foreach(tensors))
        self._inputs = (tensors, *inputs)
        self._inplace: bool | None = None
        self._lifted: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def vmap(self) -> VmapLevel | None:
        """The vmap whose batch the lists are under (`map_leaves`' ``batchable``), or `None`."""
        return self._vmap

    @property
    def inplace(self) -> bool:
        """Whether temporaries may be overwritten: eager multi-tensor work autograd won't see."""
        if self._inplace is None:
            self._inplace = (
                self.foreach
                and not torch.compiler.is_compiling()
                and not (torch.is_grad_enabled() and _any_requires_grad(self._inputs))
            )
        return self._inplace

    def _lift(self, s: Any, xs: list) -> Any:
        """Operand ``s`` for the leaves ``xs``: as it is, or (under a vmap's batch) with every
        tensor batched at that level turned into a plain one per leaf (`batched_operand`)."""
        if self._vmap is None:
            return s
        if isinstance(s, list):
            if True not in frozenset(map(_functorch.is_batchedtensor, s)):
                return s
            return [self._lift_one(y, x) for y, x in zip(s, xs)]
        if isinstance(s, torch.Tensor) and _functorch.is_batchedtensor(s):
            return [self._lift_one(s, x) for x in xs]
        return s

    def _lift_one(self, y: Any, x: torch.Tensor) -> Any:
        # A batched ``x`` (a statistic handed over whole, a 0-d second moment) meets ``y``
        # through vmap's own rules: both stay as they are.
        if not _functorch.is_batchedtensor(y) or _functorch.is_batchedtensor(x):
            return y
        # One scalar serves every leaf of a rank: lift it once per rank (the cache holds
        # ``y`` too, so its id stays its own while cached).
        key = (id(y), x.dim())
        hit = self._lifted.get(key)
        if hit is None:
            hit = self._lifted[key] = (y, batched_operand(y, self._vmap, x))
        return hit[1]

    def _multi(self, xs: list, s: Any = None) -> bool:
        return self.foreach and not _requires_grad(s) and not _scalars(xs)

    def _in_place(self, s: Any = None) -> bool:
        return self.inplace and not _requires_grad(s)

    def mul(self, xs: list, s: Scalar | list) -> list:
        s = self._lift(s, xs)
        if self._multi(xs, s):
            return list(torch._foreach_mul(xs, s))
        if isinstance(s, list):
            return [x * y for x, y in zip(xs, s)]
        return [x * s for x in xs]

    def mul_(self, xs: list, s: Scalar | list) -> list:
        s = self._lift(s, xs)
        if self._in_place(s):
            torch._foreach_mul_(xs, s)
            return xs
        return self.mul(xs, s)

    def div(self, xs: list, s: Scalar | list) -> list:
        s = self._lift(s, xs)
        if self._multi(xs, s):
            return list(torch._foreach_div(xs, s))
        if isinstance(s, list):
            return [x / y for x, y in zip(xs, s)]
        return [x / s for x in xs]

    def div_(self, xs: list, s: Scalar | list) -> list:
        s = self._lift(s, xs)
        if self._in_place(s):
            torch._foreach_div_(xs, s)
            return xs
        return self.div(xs, s)

    def add(self, xs: list, ys: list | Scalar, alpha: Scalar = 1.0) -> list:
        """``x + alpha * y`` (``y`` a list) or ``x + y`` (``y`` a scalar)."""
        lifted = self._lift(ys, xs)
        if not isinstance(ys, list):
            if isinstance(lifted, list):  # a batched scalar, now one tensor per leaf
                return self.add(xs, lifted)
            if self._multi(xs, ys):
                return list(torch._foreach_add(xs, ys))
            return [x + ys for x in xs]
        ys = lifted
        if isinstance(alpha, torch.Tensor):
            ys = self.mul(ys, alpha)
            alpha = 1.0
        if self._multi(xs):
            return list(torch._foreach_add(xs, ys, alpha=alpha))
        return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys)]

    def add_(self, xs: list, ys: list | Scalar, alpha: Scalar = 1.0) -> list:
        ys = self._lift(ys, xs)
        if self._in_place(ys) and not isinstance(alpha, torch.Tensor):
            if isinstance(ys, list):
                torch._foreach_add_(xs, ys, alpha=alpha)
            else:
                torch._foreach_add_(xs, ys)
            return xs
        return self.add(xs, ys, alpha)

    def addcmul(self, xs: list, ys: list, zs: list, value: Scalar = 1.0) -> list:
        """``x + value * y * z``."""
        ys, zs = self._lift(ys, xs), self._lift(zs, xs)
        if isinstance(value, torch.Tensor):
            return self.add(xs, self.mul(self.mul(ys, zs), value))
        if self._multi(xs):
            return list(torch._foreach_addcmul(xs, ys, zs, value=value))
        return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, ys, zs)]

    def addcmul_(self, xs: list, ys: list, zs: list, value: Scalar = 1.0) -> list:
        if self._in_place(value) and not isinstance(self._lift(value, xs), list):
            torch._foreach_addcmul_(xs, self._lift(ys, xs), self._lift(zs, xs), value=value)
            return xs
        return self.addcmul(xs, ys, zs, value)

    def sub(self, xs: list, ys: list) -> list:
        ys = self._lift(ys, xs)
        if self._multi(xs):
            return list(torch._foreach_sub(xs, ys))
        return [x - y for x, y in zip(xs, ys)]

    def lerp(self, xs: list, ys: list, w: Scalar) -> list:
        """``x + w * (y - x)``."""
        if isinstance(w, torch.Tensor):
            # Written out for a tensor weight: Inductor (torch 2.13, CPU) evaluates a weight
            # computed in the graph (``1 - b1``) in float32 inside `_foreach_lerp`, losing
            # float64 precision; for w < 1/2 this is exactly lerp's own formula.
            return self.add(xs, self.mul(self.sub(ys, xs), w))
        ys = self._lift(ys, xs)
        if self._multi(xs):
            return list(torch._foreach_lerp(xs, ys, w))
        return [torch.lerp(x, y, w) for x, y in zip(xs, ys)]

    def square(self, xs: list) -> list:
        return self.mul(xs, xs)

    def sqrt(self, xs: list) -> list:
        return list(torch._foreach_sqrt(xs)) if self.foreach else [torch.sqrt(x) for x in xs]

    def sqrt_(self, xs: list) -> list:
        if self.inplace:
            torch._foreach_sqrt_(xs)
            return xs
        return self.sqrt(xs)

    def abs(self, xs: list) -> list:
        return list(torch._foreach_abs(xs)) if self.foreach else [torch.abs(x) for x in xs]

    def sign(self, xs: list) -> list:
        return list(torch._foreach_sign(xs)) if self.foreach else [torch.sign(x) for x in xs]

    def maximum(self, xs: list, ys: list) -> list:
        ys = self._lift(ys, xs)
        if self.foreach:
            return list(torch._foreach_maximum(xs, ys))
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    def maximum_(self, xs: list, ys: list) -> list:
        if self.inplace:
            torch._foreach_maximum_(xs, self._lift(ys, xs))
            return xs
        return self.maximum(xs, ys)

    def where(self, condition: Any, xs: list, ys: list) -> list:
        """``torch.where(condition, x, y)`` per leaf for a 0-d condition (or one per leaf).

        Eagerly, for one 0-d condition, this picks one of the lists (reading the condition on
        the host) instead of running a ``where`` per leaf; compiled or batched it is the
        element-wise ``where``, the same values.
        """
        condition, ys = self._lift(condition, xs), self._lift(ys, xs)
        if (
            isinstance(condition, torch.Tensor)
            and self.foreach
            and not torch.compiler.is_compiling()
        ):
            return xs if bool(condition) else ys
        conditions = condition if isinstance(condition, list) else [condition] * len(xs)
        return [torch.where(c, x, y) for c, x, y in zip(conditions, xs, ys)]

    def where_or_zero(self, condition: Any, xs: list) -> list:
        """``torch.where(condition, x, 0)`` per leaf, for a 0-d condition (or one per leaf):
        0 where the condition is False, whatever ``x`` holds there (NaN included)."""
        conditions = self._lift(condition, xs)
        if not isinstance(conditions, list):
            conditions = [conditions] * len(xs)
        return [torch.where(c, x, 0.0) for c, x in zip(conditions, xs)]

    def norm(self, xs: list) -> list:
        """The L2 norm of every tensor, as 0-d tensors (under a vmap's batch, batched ones:
        each member's norm)."""
        if self._vmap is not None:
            return [member_norm(x, self._vmap) for x in xs]
        if self.foreach:
            return list(torch._foreach_norm(xs))
        return [torch.linalg.vector_norm(x) for x in xs]

    def scalar(self, xs: list, make: Callable[..., Any], *args: Any) -> Any:
        """A step-dependent scalar for ``xs``: ``make(*args, dtype, device)`` once per kind of leaf.

        ``make`` computes in float64 (where the device has it) and its results are rounded
        once to the leaf's dtype promoted to at least float32 (`compute_dtype`), as torch.optim
        computes ``1 - beta ** t`` and ``lr / (1 - beta ** t)`` in Python floats: a float32
        ``0.999 ** t`` alone would be off by 1e-8 relative, tens of ulps in the update. Every
        tensor ``make`` returns goes through `step_scalar`, so a compiled step computes it
        once. The result is one value where all leaves share a kind, else a list.

        Each of ``args`` (a step count, say) is one value for all leaves, or a list with one
        per leaf (torch's per-parameter counts). ``make`` then gets each kind's values stacked
        into a 1-d tensor, is written element-wise, and the result has one value per leaf.

        A single value lets the multi-tensor kernels take one scalar for all leaves. Where
        ``make`` returns a tuple, so does this: of single values, or of per-leaf lists. A
        per-leaf list holding one tensor for every leaf (counts that moved together) counts as
        one value: the result is then what a shared value gives; `per_leaf` expands it.
        """
        args = tuple(collapse(a) for a in args)
        kinds: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, x in enumerate(xs):
            kinds.setdefault((compute_dtype(x.dtype), x.device), []).append(i)
        per_leaf = [isinstance(a, list) for a in args]
        if not xs:  # no leaves: any values will do, none is used
            args = tuple(torch.zeros(()) if leafwise else a for a, leafwise in zip(args, per_leaf))
            made = make(*args, torch.float32, torch.device("cpu"))
            if True not in per_leaf:
                return made
            return tuple([] for _ in made) if isinstance(made, tuple) else []
        if len(kinds) == 1 and True not in per_leaf:
            return _step_scalars(_made_once(make, args, *next(iter(kinds))))
        out: list[Any] = [None] * len(xs)
        for (dtype, device), idx in kinds.items():
            values = [
                torch.stack([a[i] for i in idx]).to(device) if leafwise else a
                for a, leafwise in zip(args, per_leaf)
            ]
            made = _step_scalars(_made_once(make, values, dtype, device))
            if True not in per_leaf:
                for i in idx:
                    out[i] = made
                continue
            rows = _unstack(made, len(idx))
            for i, row in zip(idx, rows):
                out[i] = row
        return tuple(columns(out, len(out[0]))) if isinstance(out[0], tuple) else out


def _made_once(
    make: Callable[..., Any], args: Any, dtype: torch.dtype, device: torch.device
) -> Any:
    """``make(*args, float64, device)`` rounded once to ``dtype`` (see `Ops.scalar`)."""
    if dtype == torch.float64 or device.type == "mps":  # MPS has no float64
        return make(*args, dtype, device)
    return _cast_floats(make(*args, torch.float64, device), dtype)


def _cast_floats(made: Any, dtype: torch.dtype) -> Any:
    if isinstance(made, tuple):
        return tuple(_cast_floats(m, dtype) for m in made)
    if isinstance(made, torch.Tensor) and made.is_floating_point():
        return made.to(dtype)
    return made


def collapse(a: Any) -> Any:
    """A per-leaf list of one and the same tensor, as that tensor; anything else as it is."""
    if isinstance(a, list) and a and all(x is a[0] for x in a):
        return a[0]
    return a


def per_leaf(value: Any, n: int) -> list:
    """`Ops.scalar`'s result as a per-leaf list of ``n`` (a single value repeated)."""
    return value if isinstance(value, list) else [value] * n


def _unstack(made: Any, n: int) -> list[Any]:
    """Per-leaf values from `scalar`'s stacked ``make`` result (a tensor or a tuple of them)."""
    if isinstance(made, tuple):
        parts = [torch.broadcast_to(v, (n,)).unbind(0) for v in made]
        return [tuple(p[k] for p in parts) for k in range(n)]
    return list(torch.broadcast_to(made, (n,)).unbind(0))


def _step_scalars(value: Any) -> Any:
    return tuple(map(step_scalar, value)) if isinstance(value, tuple) else step_scalar(value)


def _any_requires_grad(lists: Sequence[Sequence[Any]]) -> bool:
    for xs in lists:
        if True in frozenset(x.requires_grad for x in xs if isinstance(x, torch.Tensor)):
            return True
    return False


# --------------------------------------------------------------------------- the walker


def map_leaves(
    fn: Callable[..., Any],
    updates: Tree,
    *trees: Tree,
    keep: Sequence[int | None] = (),
    shapes: Mapping[int, Callable[[torch.Size], Any]] | None = None,
    complex_as_real: bool = False,
    sparse_updates: bool = False,
    batchable: bool = False,
    what: str = "update",
) -> Any:
    """Apply a list function to the leaves of ``updates`` that are not `None`, and of ``trees``.

    ``fn(ops, gs, *xs)`` gets an `Ops` and, as lists, the live leaves of ``updates`` and the
    matching leaves (or subtrees) of each of ``trees``. It returns a list (one output tree), a
    tuple of lists (several), a tensor (a reduction, returned as it is) or `None` (it acted in
    place). Each output tree has the structure of ``updates``.

    Args:
        fn: the maths, written once over lists of leaves.
        updates: the tree whose `None` leaves mean "nothing to do here".
        *trees: trees with the structure of ``updates`` (params, state fields, ...), or
            `Shared` values, handed to ``fn`` whole.
        keep: for each output, the index in ``trees`` of the state it updates, or `None`.
            Where the update is `None`, an output with an index keeps that tree's old leaf
            and the others hold `None`. Every leaf of an output is cast to the dtype of the
            leaf it stands for: the state's, or the update's.
        shapes: for the trees whose leaves are not shaped like their update (per-tensor
            statistics, factored moments), ``{index in trees: expected}``, where
            ``expected(update_shape)`` gives the leaf's shape (a tuple, a list of tuples for a
            list of tensors, or `None` where the leaf has no such state and the tree holds
            `Absent`). The leaves of every other tree must have their update's shape.
        complex_as_real: give ``fn`` each complex leaf (of the updates, and of the trees
            shaped like them) as `torch.view_as_real` does, a real tensor with a last axis
            of 2, and return the outputs standing for complex leaves as complex again:
            torch.optim's rule, element-wise maths on the real and imaginary parts. For
            transforms whose maths is element-wise (or reads whole-tensor norms).
        sparse_updates: accept sparse COO updates (for transforms written for them); ``fn``
            then runs one op per leaf. Otherwise a sparse update is a `ValueError`.
        batchable: ``fn`` computes each member of a vmap's batch from that member's leaves
            alone with `Ops` primitives: element-wise maths, and per-tensor norms from
            `Ops.norm` (each member's under the batch), reading no shapes. Under
            `torch.func.vmap` ``fn`` then runs on the tensors under the batch, with
            multi-tensor kernels (`torchopt_fn.tree._batched`); the numbers are the same.
            ``fn`` must return its results, or `None` to decline (it acts on nothing in
            place).
        what: the name used in error messages.

    Returns:
        One tree, a tuple of trees, a tensor or `None`, as ``fn`` returns.

    Raises:
        TypeError: a live update leaf is not a tensor (a numpy array, a number).
        ValueError: the trees differ in structure, a leaf's shape differs from its update's,
            or an update is sparse. Nothing has been computed when these are raised.

    Examples:
        >>> import torch
        >>> from torchopt_fn.tree._ops import map_leaves
        >>> g, m = {"w": torch.ones(2), "b": None}, {"w": torch.zeros(2), "b": torch.ones(1)}
        >>> out, new_m = map_leaves(
        ...     lambda ops, gs, ms: (ops.mul(gs, 2.0), ops.add(ms, gs)), g, m, keep=(None, 0)
        ... )
        >>> out["b"], new_m["b"], new_m["w"]
        (None, tensor([1.]), tensor([1., 1.]))
    """
    leaves, spec = tree_flatten(updates)
    shared = frozenset(k for k, t in enumerate(trees) if isinstance(t, Shared))
    others = [
        t.value if k in shared else flatten_like(spec, updates, t, what)
        for k, t in enumerate(trees)
    ]
    types = frozenset(map(type, leaves))
    if type(None) not in types:  # no gather: cheap, and cheap for Dynamo to trace
        idx = None
        gs, lists = leaves, others
    else:
        idx = [i for i, x in enumerate(leaves) if x is not None]
        gs = [leaves[i] for i in idx]
        lists = [o if k in shared else [o[i] for i in idx] for k, o in enumerate(others)]
        types = types - {type(None)}
    sparse = False
    if not torch.compiler.is_compiling():
        sparse = _check_updates(gs, types, updates, idx, what, sparse_updates)
    shapes = shapes or {}
    walked = [xs for k, xs in enumerate(lists) if k not in shared]
    _check_shapes(gs, walked, _renumber(shapes, shared), updates, idx, what)

    complex_at = None
    if complex_as_real and True in frozenset(map(torch.Tensor.is_complex, gs)):
        complex_at = [g.is_complex() for g in gs]
        gs = _real_views(gs, complex_at)
        lists = [
            xs if k in shared or k in shapes else _real_views(xs, complex_at)
            for k, xs in enumerate(lists)
        ]
        walked = [xs for k, xs in enumerate(lists) if k not in shared]
    result = _PER_OP
    if (
        batchable
        and torch._C._are_functorch_transforms_active()
        and not sparse
        and complex_at is None
    ):
        result = _under_batch(fn, gs, lists, shared | frozenset(shapes), keep)
    if result is _PER_OP:
        result = fn(Ops(gs, walked, multi=not sparse), gs, *lists)
    if result is None or isinstance(result, torch.Tensor):
        return result
    single = isinstance(result, list)
    outs = [result] if single else list(result)
    trees_out = []
    for k, new in enumerate(outs):
        j = keep[k] if k < len(keep) else None
        if j in shared:
            trees_out.append(new)  # a shared value: returned as ``fn`` made it
            continue
        likes = gs if j is None else lists[j]
        # Statistics of their own shapes (lists of accumulators, say) keep their own dtypes.
        if j not in shapes and [x.dtype for x in new] != [y.dtype for y in likes]:
            new = cast_like(new, likes)
        if complex_at is not None and j not in shapes:
            new = _complex_again(new, complex_at)
        trees_out.append(_rebuild(spec, new, idx, None if j is None else others[j]))
    return trees_out[0] if single else tuple(trees_out)


_PER_OP = object()  # `_under_batch`'s "take the per-op path"


def _under_batch(
    fn: Callable[..., Any], gs: list, lists: list, whole: frozenset[int], keep: Sequence
) -> Any:
    """``fn``'s result computed on the tensors under a vmap's batch, or `_PER_OP` (not here).

    ``lists[k]`` for ``k`` in ``whole`` (shared values, statistics of their own shapes) are
    handed over as they are, and so are the outputs kept at them; `Ops` lifts whatever
    batched values ``fn`` uses as operands. An output list holding a batched tensor means
    ``fn`` mixed in a batched value `Ops` never saw (one it closes over, used outside `Ops`):
    that result is dropped for the per-op path, which is correct for any function.
    """
    walked = [xs for k, xs in enumerate(lists) if k not in whole]
    vmap = sole_vmap(itertools.chain(gs, *walked))
    if vmap is None:
        return _PER_OP
    inner_gs = [under_batch(g, vmap) for g in gs]
    inner = [xs if k in whole else [under_batch(x, vmap) for x in xs] for k, xs in enumerate(lists)]
    inner_walked = [xs for k, xs in enumerate(inner) if k not in whole]
    result = fn(Ops(inner_gs, inner_walked, vmap=vmap), inner_gs, *inner)
    if result is None:  # ``fn`` declined (a kernel's preconditions do not hold): per op
        return _PER_OP
    if not isinstance(result, (list, tuple)):
        raise TypeError(f"map_leaves(batchable=True): {fn} returned {type(result)}, not lists")
    outs = [result] if isinstance(result, list) else list(result)
    for k, out in enumerate(outs):
        if k < len(keep) and keep[k] in whole:
            continue
        if True in frozenset(map(_functorch.is_batchedtensor, out)):
            return _PER_OP
        outs[k] = [batched_again(x, vmap) for x in out]
    return outs[0] if isinstance(result, list) else tuple(outs)


def _real_views(xs: list, complex_at: list[bool]) -> list:
    return [torch.view_as_real(x) if c and x.is_complex() else x for x, c in zip(xs, complex_at)]


def _complex_again(xs: list, complex_at: list[bool]) -> list:
    """The outputs standing for complex leaves, as complex tensors again."""
    out = []
    for x, c in zip(xs, complex_at):
        if c and not x.is_complex():
            if x.stride(-1) != 1 or any(s % 2 for s in x.stride()[:-1]):
                x = x.contiguous()  # the layout view_as_complex needs
            x = torch.view_as_complex(x)
        out.append(x)
    return out


def scalar_shape(_: Any) -> tuple[()]:
    """A ``shapes`` entry of `map_leaves` for one 0-d tensor per leaf (a per-leaf step count)."""
    return ()


class Absent(NamedTuple):
    """State a leaf does not have (Adafactor's factors of a vector, its variance of a matrix).

    A node with no leaves, so that the state stays all tensors (`torch.func.vmap` needs that)
    and the `Optimizer` adapter stores no key for it, as torch.optim stores none; a ``shapes``
    entry of `map_leaves` gives `None` where a tree holds one.
    """


class Shared(NamedTuple):
    """A value `map_leaves` hands to ``fn`` whole instead of leaf by leaf.

    A step count shared by all leaves, say, where another configuration keeps one per leaf: the
    transform passes ``Shared(count)`` or the tree of counts, and ``fn`` gets the tensor or the
    per-leaf list. An output kept at a shared value is returned as ``fn`` made it.
    """

    value: Any


def _renumber(shapes: Mapping[int, Any], shared: frozenset[int]) -> Mapping[int, Any]:
    """``shapes`` indexed among the walked trees only (the shared ones left out)."""
    if not shared:
        return shapes
    return {k - sum(1 for s in shared if s < k): v for k, v in shapes.items() if k not in shared}


def _rebuild(spec: Any, new: list, idx: list[int] | None, fallback: list | None) -> Tree:
    if idx is None:
        return tree_unflatten(spec, new)
    out = list(fallback) if fallback is not None else [None] * spec.num_leaves
    for i, v in zip(idx, new):
        out[i] = v
    return tree_unflatten(spec, out)


def _live_paths(updates: Tree, idx: list[int] | None) -> list[str]:
    paths = [path_str(p) for p in leaf_paths(updates)]
    return paths if idx is None else [paths[i] for i in idx]


def _check_updates(
    gs: list,
    types: frozenset,
    updates: Tree,
    idx: list[int] | None,
    what: str,
    sparse_ok: bool = False,
) -> bool:
    """Every live update is a dense tensor, or (``sparse_ok``) a sparse COO one (eagerly;
    nothing else reaches a compiled graph). Returns whether any is sparse."""
    if not types <= _PLAIN_TENSORS:
        for path, g in zip(_live_paths(updates, idx), gs):
            if not isinstance(g, torch.Tensor):
                raise TypeError(
                    f"{what}: the update at {path} is a {type(g).__name__}, not a tensor "
                    "(use None for a parameter without an update)."
                )
    layouts = frozenset(map(_LAYOUT, gs)) - {torch.strided}
    if layouts and not (sparse_ok and layouts == {torch.sparse_coo}):
        for path, g in zip(_live_paths(updates, idx), gs):
            if g.layout != torch.strided:
                raise ValueError(
                    f"{what}: the update at {path} is sparse ({g.layout}); densify it "
                    "(`g.to_dense()`) or use torch.optim.SparseAdam."
                )
    return bool(layouts)


def _shape_of(x: Any) -> Any:
    if x is None or isinstance(x, Absent):  # state this leaf does not have
        return None
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, (list, tuple)):
        return [_shape_of(v) for v in x]
    return type(x).__name__


def _check_shapes(
    gs: list,
    lists: list[list],
    shapes: Mapping[int, Callable[[torch.Size], Any]],
    updates: Tree,
    idx: list[int] | None,
    what: str,
) -> None:
    """Each leaf has its update's shape, or the shape ``shapes`` gives: nothing is broadcast."""
    g_shapes = [g.shape for g in gs]
    for k, xs in enumerate(lists):
        expected = shapes.get(k)
        if expected is None:
            try:
                if [x.shape for x in xs] == g_shapes:
                    continue
            except AttributeError:
                pass  # a None or non-tensor leaf where the update has a value; reported below
            wanted = [tuple(s) for s in g_shapes]
        else:
            wanted = [expected(s) for s in g_shapes]
        got = [_shape_of(x) for x in xs]
        if got == wanted:
            continue
        for path, g, want, have in zip(_live_paths(updates, idx), gs, wanted, got):
            if want != have:
                raise ValueError(
                    f"{what}: at {path} the update has shape {tuple(g.shape)}, so the params "
                    f"and state there must have shape {want}, but one has {have}; nothing is "
                    "broadcast (was the state initialised for other parameters?)."
                )


def check_like(updates: Tree, params: Tree | None, what: str) -> None:
    """Check ``updates`` against ``params`` as `map_leaves` does (structure, types, shapes).

    For wrappers whose skipped steps compute nothing from the updates (they return zeros),
    so a malformed update is refused on every step, not only on those that run the maths.
    """
    if params is not None:
        map_leaves(lambda ops, gs, ps: None, updates, params, what=what)
