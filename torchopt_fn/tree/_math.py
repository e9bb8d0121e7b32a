"""Tree maths: leaf-wise arithmetic, moments, bias corrections and reductions.

The list helpers (`moment`, `infinity_moment`, `bias_correction`) are what transforms call
inside their `map_leaves` function; the ``tree_*`` functions are the same maths on whole trees,
for users and for transforms that need one step only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._scalar import Scalar
from torchopt_fn.tree._dtensor import abs_max, any_dtensor, vdot
from torchopt_fn.tree._flatten import tree_leaves, tree_map
from torchopt_fn.tree._ops import Ops, Shared, cast_like, map_leaves, widest_dtype

__all__ = [
    "bias_correction",
    "bias_factor",
    "infinity_moment",
    "moment",
    "next_count",
    "norms_squared_sum",
    "tree_add",
    "tree_add_scale",
    "tree_all_finite",
    "tree_bias_correction",
    "tree_cast",
    "tree_div",
    "tree_full_like",
    "tree_l1_norm",
    "tree_l2_norm",
    "tree_linf_norm",
    "tree_mul",
    "tree_ones_like",
    "tree_scale",
    "tree_sub",
    "tree_sum",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
    "walked_count",
]

Tree = Any
Count = torch.Tensor | list  # one step count for all leaves, or one per leaf


# --------------------------------------------------------------------------- list helpers


def moment(ops: Ops, gs: list, ms: list, decay: Scalar, order: int) -> list:
    r"""The moving average of ``g ** order``, new tensors in the moments' dtypes.

    Order 1 is torch's ``lerp`` $m + (1-\beta)(g - m)$; order 2 is torch's (and optax's)
    $\beta m + (1-\beta) g^2$, one allocation and two passes.
    """
    gs = cast_like(gs, ms)
    if order == 1:
        return ops.lerp(ms, gs, 1 - decay)
    if order == 2:
        return ops.addcmul_(ops.mul(ms, decay), gs, gs, 1 - decay)
    return ops.lerp(ms, [g**order for g in gs], 1 - decay)


def infinity_moment(ops: Ops, gs: list, ms: list, decay: Scalar, eps: Scalar) -> list:
    r"""$\max(\beta m, |g| + \epsilon)$, the exponentially weighted infinity norm."""
    return ops.maximum_(ops.mul(ms, decay), ops.add_(ops.abs(cast_like(gs, ms)), eps))


def bias_factor(decay: Scalar, count: torch.Tensor, dtype: torch.dtype, device: torch.device):
    r"""$1 - \beta^t$ as a tensor of ``dtype`` on ``device``, of the count's shape."""
    # Tensor ops in the leaves' floating dtype: Dynamo cannot trace the builtin
    # pow(float, Tensor), and an integer exponent would give float32 (DESIGN.md §3).
    decay_t = torch.as_tensor(decay, dtype=dtype, device=device)
    return 1 - torch.pow(decay_t, count.to(device=device, dtype=dtype))


def bias_correction(ops: Ops, xs: list, decay: Scalar, count: Count) -> list:
    r"""Each ``x`` divided by $1 - \beta^t$ (Adam's bias correction), as new tensors."""
    return ops.div(xs, ops.scalar(xs, lambda t, dt, dev: bias_factor(decay, t, dt, dev), count))


def next_count(count: Count) -> Count:
    """A step count advanced by one step: one 0-d tensor, or (per leaf) a list of them.

    Leaves that share one count tensor (they moved together) share the new one: one addition,
    and `Ops.scalar` then computes their step-dependent scalars once.
    """
    if not isinstance(count, list):
        return count + 1
    if count and all(c is count[0] for c in count):
        return [count[0] + 1] * len(count)
    return [c + 1 for c in count]


def walked_count(count: Any, per_leaf: bool) -> Any:
    """A transform's count as `map_leaves` takes it: the tree of per-leaf counts, or `Shared`.

    Pass ``shapes={i: scalar_shape}`` for it; ``fn`` then gets a list of 0-d counts, one per
    live leaf, or the one shared count, and `next_count` and `Ops.scalar` take either.
    """
    return count if per_leaf else Shared(count)


# --------------------------------------------------------------------------- leaf-wise


def tree_add(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a + b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_add({"a": torch.ones(2)}, {"a": torch.ones(2)})
        {'a': tensor([2., 2.])}
    """
    return map_leaves(lambda ops, xs, ys: ops.add(xs, ys), a, b, batchable=True, what="tree_add")


def tree_sub(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a - b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_sub({"a": torch.ones(2)}, {"a": torch.ones(2)})
        {'a': tensor([0., 0.])}
    """
    return map_leaves(lambda ops, xs, ys: ops.sub(xs, ys), a, b, batchable=True, what="tree_sub")


def tree_mul(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a * b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_mul({"a": torch.full((2,), 3.0)}, {"a": torch.full((2,), 2.0)})
        {'a': tensor([6., 6.])}
    """
    return map_leaves(lambda ops, xs, ys: ops.mul(xs, ys), a, b, batchable=True, what="tree_mul")


def tree_div(a: Tree, b: Tree) -> Tree:
    """Leaf-wise ``a / b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_div({"a": torch.full((2,), 3.0)}, {"a": torch.full((2,), 2.0)})
        {'a': tensor([1.5000, 1.5000])}
    """
    return map_leaves(lambda ops, xs, ys: ops.div(xs, ys), a, b, batchable=True, what="tree_div")


def tree_add_scale(a: Tree, s: Scalar, b: Tree) -> Tree:
    """Leaf-wise ``a + s * b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_add_scale({"a": torch.ones(2)}, 0.5, {"a": torch.ones(2)})
        {'a': tensor([1.5000, 1.5000])}
    """
    return map_leaves(
        lambda ops, xs, ys: ops.add(xs, ys, alpha=s), a, b, batchable=True, what="tree_add_scale"
    )


def tree_scale(s: Scalar, tree: Tree) -> Tree:
    """Multiply every leaf by the scalar ``s`` (a float or a 0-d tensor).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_scale(2.0, [torch.ones(2), None])
        [tensor([2., 2.]), None]
    """
    return map_leaves(lambda ops, xs: ops.mul(xs, s), tree, batchable=True, what="tree_scale")


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

    A complex leaf gets ``value`` in its real and imaginary parts: complex numbers are pairs
    of reals here (`torch.view_as_real`), as in torch.optim (Adagrad's and Rprop's state).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_full_like([torch.zeros(2), torch.zeros(1, dtype=torch.complex64)], 0.5)
        [tensor([0.5000, 0.5000]), tensor([0.5000+0.5000j])]
    """

    def full(x: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(x, 0.0, dtype=dtype)
        if out.is_complex():
            torch.view_as_real(out).add_(value)
            return out
        return out.add_(value)

    return tree_map(full, tree)


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
    return map_leaves(
        lambda ops, gs, ms: moment(ops, gs, ms, decay, order),
        updates,
        moments,
        keep=(0,),
        batchable=True,
        what="tree_update_moment",
    )


def tree_update_moment_per_elem_norm(
    updates: Tree, moments: Tree, decay: Scalar, order: int
) -> Tree:
    r"""Exponential moving average of $|g|^k$ (for real tensors $g^2$ when $k = 2$).

    For complex $g$, $|g|$ is its modulus, as in optax; ``moments`` are real.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> g, m = {"a": torch.tensor([-2.0])}, {"a": torch.zeros(1)}
        >>> tf.tree_update_moment_per_elem_norm(g, m, 0.5, 2)
        {'a': tensor([2.])}
    """

    def fn(ops, gs, ms):
        real = not any(g.is_complex() for g in gs)
        return moment(ops, gs if order == 2 and real else ops.abs(gs), ms, decay, order)

    return map_leaves(fn, updates, moments, keep=(0,), batchable=True, what="tree_update_moment")


def tree_update_infinity_moment(updates: Tree, moments: Tree, decay: Scalar, eps: Scalar) -> Tree:
    r"""Exponentially weighted infinity norm: $u_t = \max(\beta u_{t-1}, |g_t| + \epsilon)$.

    For complex $g$, $|g|$ is its modulus, as in optax; ``moments`` are real.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> g, m = {"a": torch.tensor([-2.0])}, {"a": torch.ones(1)}
        >>> tf.tree_update_infinity_moment(g, m, 0.9, 0.0)
        {'a': tensor([2.])}
    """

    def fn(ops, gs, ms):
        return infinity_moment(ops, gs, ms, decay, eps)

    return map_leaves(
        fn, updates, moments, keep=(0,), batchable=True, what="tree_update_infinity_moment"
    )


def tree_bias_correction(moments: Tree, decay: Scalar, count: torch.Tensor) -> Tree:
    r"""Divide moments by $1 - \beta^t$ (Adam's bias correction), $t$ the 0-d ``count``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_bias_correction({"a": torch.ones(1)}, 0.5, torch.tensor(1))
        {'a': tensor([2.])}
    """
    return map_leaves(
        lambda ops, ms: bias_correction(ops, ms, decay, count),
        moments,
        batchable=True,
        what="tree_bias_correction",
    )


# --------------------------------------------------------------------------- reductions


def _sum_all(parts: list[torch.Tensor]) -> torch.Tensor:
    """The sum of 0-d tensors, in their promoted dtype (0.0 for none)."""
    if not parts:
        return torch.zeros(())
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return torch.stack([p.to(dtype) for p in parts]).sum()


def _reduce(tree: Tree, what: str, fn: Callable[[Ops, list], torch.Tensor]) -> torch.Tensor:
    return map_leaves(fn, tree, what=what)


def tree_sum(tree: Tree) -> torch.Tensor:
    """Sum of all elements of all leaves (a 0-d tensor).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_sum({"a": torch.ones(2), "b": torch.ones(3)})
        tensor(5.)
    """
    return _reduce(tree, "tree_sum", lambda ops, xs: _sum_all([x.sum() for x in xs]))


def tree_vdot(a: Tree, b: Tree) -> torch.Tensor:
    """Inner product of two trees: $\\sum_i \\langle a_i, b_i \\rangle$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_vdot({"a": torch.ones(2)}, {"a": torch.full((2,), 2.0)})
        tensor(4.)
    """
    return map_leaves(
        lambda ops, xs, ys: _sum_all([vdot(x, y) for x, y in zip(xs, ys)]), a, b, what="tree_vdot"
    )


def real_vdot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Re(sum_i <a_i, b_i>) over lists of leaves, ``a`` conjugated (optax's
    ``real(tree.vdot)``): L-BFGS, the line searches and the step-size tuners use it."""
    total = torch.stack([vdot(x, y) for x, y in zip(a, b)]).sum()
    return total.real if total.is_complex() else total


def norms_squared_sum(ops: Ops, xs: list) -> torch.Tensor:
    """$\\sum_i \\|x_i\\|^2$ over a list, in the promoted dtype of the leaves (>= float32)."""
    if not xs:
        return torch.zeros(())
    norms = ops.norm(xs)
    dtype = torch.float32
    for n in norms:
        dtype = torch.promote_types(dtype, n.dtype)
    stacked = torch.stack([n if n.dtype == dtype else n.to(dtype) for n in norms])
    return stacked.square().sum()


def tree_l2_norm(tree: Tree, squared: bool = False) -> torch.Tensor:
    """Global L2 norm over all leaves, $\\sqrt{\\sum_i \\|x_i\\|^2}$ (its square if ``squared``).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_l2_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        tensor(5.)
    """
    total = _reduce(tree, "tree_l2_norm", norms_squared_sum)
    return total if squared else torch.sqrt(total)


def tree_l1_norm(tree: Tree) -> torch.Tensor:
    """Sum of absolute values over all leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_l1_norm({"a": torch.tensor([-1.0, 2.0])})
        tensor(3.)
    """
    return _reduce(tree, "tree_l1_norm", lambda ops, xs: _sum_all([x.abs().sum() for x in xs]))


def _max_abs(ops: Ops, xs: list) -> torch.Tensor:
    if not xs:
        return torch.zeros(())
    if any_dtensor(xs):
        maxima = [abs_max(x) for x in xs]
    elif ops.foreach and all(x.numel() for x in xs):  # the inf-norm of nothing is an error
        maxima = list(torch._foreach_norm(xs, float("inf")))
    else:
        maxima = [x.abs().amax() if x.numel() else x.new_zeros(()) for x in xs]
    return torch.stack([m.to(torch.promote_types(m.dtype, torch.float32)) for m in maxima]).max()


def tree_linf_norm(tree: Tree) -> torch.Tensor:
    """Largest absolute value over all leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_linf_norm({"a": torch.tensor([-3.0, 2.0])})
        tensor(3.)
    """
    return _reduce(tree, "tree_linf_norm", _max_abs)


def tree_all_finite(tree: Tree) -> torch.Tensor:
    """A 0-d boolean tensor: whether every element of every leaf is finite.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_all_finite({"a": torch.tensor([1.0, float("inf")])})
        tensor(False)
    """
    # The largest absolute value is finite exactly when every element is (NaN propagates).
    return torch.isfinite(_reduce(tree, "tree_all_finite", _max_abs))


def is_float_leaf(x: Any) -> bool:
    """Whether ``x`` is a floating-point tensor."""
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def tree_float_dtype(tree: Tree) -> torch.dtype:
    """The promoted floating dtype of the tree's leaves, at least float32."""
    dtype = torch.float32
    for leaf in tree_leaves(tree):
        if is_float_leaf(leaf):
            dtype = torch.promote_types(dtype, leaf.dtype)
    return dtype


# --------------------------------------------------------------------------- optax's tree_utils


def tree_norm(
    tree: Tree, ord: int | float | str | None = None, squared: bool = False
) -> torch.Tensor:
    """The norm of all leaves as one vector: ``ord`` None or 2, 1, or ``inf`` (optax's).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tree = {"a": torch.tensor([3.0]), "b": torch.tensor([-4.0])}
        >>> tf.tree_norm(tree), tf.tree_norm(tree, 1), tf.tree_norm(tree, "inf")
        (tensor(5.), tensor(7.), tensor(4.))
    """
    if ord in (None, 2, "fro"):
        return tree_l2_norm(tree, squared=squared)
    if ord == 1:
        norm = tree_l1_norm(tree)
    elif ord in (float("inf"), "inf"):
        norm = tree_linf_norm(tree)
    else:
        raise ValueError(f"tree_norm: ord must be None, 1, 2 or inf, got {ord!r}.")
    return norm.square() if squared else norm


def _extreme(tree: Tree, what: str, pick: Callable[..., torch.Tensor]) -> torch.Tensor:
    def fn(ops: Ops, xs: list) -> torch.Tensor:
        xs = [x for x in xs if x.numel()]
        if not xs:
            raise ValueError(f"{what}: the tree has no elements.")
        dtype = widest_dtype(xs)
        return pick(torch.stack([pick(x).to(dtype) for x in xs]))

    return map_leaves(fn, tree, what=what)


def tree_max(tree: Tree) -> torch.Tensor:
    """The largest element over all leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_max({"a": torch.tensor([1.0, 5.0]), "b": torch.tensor(-2.0)})
        tensor(5.)
    """
    return _extreme(tree, "tree_max", torch.amax)


def tree_min(tree: Tree) -> torch.Tensor:
    """The smallest element over all leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_min({"a": torch.tensor([1.0, 5.0]), "b": torch.tensor(-2.0)})
        tensor(-2.)
    """
    return _extreme(tree, "tree_min", torch.amin)


def tree_size(tree: Tree) -> int:
    """The number of elements over all leaves (`None` leaves count none).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_size({"a": torch.zeros(2, 3), "b": torch.zeros(()), "c": None})
        7
    """
    return sum(x.numel() for x in tree_leaves(tree) if x is not None)


def tree_conj(tree: Tree) -> Tree:
    """The complex conjugate of every leaf (real leaves unchanged).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_conj({"z": torch.tensor([1 + 2j])})
        {'z': tensor([1.-2.j])}
    """
    return tree_map(lambda x: x.conj().resolve_conj() if x.is_complex() else x, tree)


def tree_real(tree: Tree) -> Tree:
    """The real part of every leaf.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_real({"z": torch.tensor([1 + 2j])})
        {'z': tensor([1.])}
    """
    return tree_map(lambda x: x.real if x.is_complex() else x, tree)


def tree_batch_shape(tree: Tree, shape: tuple[int, ...] = ()) -> Tree:
    """Meta tensors with ``shape`` prepended to every leaf's shape (what `vmap` would batch).

    optax returns ``jax.ShapeDtypeStruct``; torch's shape-and-dtype-only tensor is a tensor
    on the ``meta`` device.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_batch_shape({"w": torch.zeros(3)}, (8,))["w"].shape
        torch.Size([8, 3])
    """
    return tree_map(lambda x: torch.empty((*shape, *x.shape), dtype=x.dtype, device="meta"), tree)


def tree_random_like(
    generator: torch.Generator | None,
    target_tree: Tree,
    sampler: Callable[..., torch.Tensor] = torch.randn,
    dtype: torch.dtype | None = None,
) -> Tree:
    """Random tensors shaped like ``target_tree``'s leaves, drawn from ``generator``.

    ``sampler(shape, generator=, dtype=, device=)`` is `torch.randn` by default (`torch.rand`
    works too). Leaves are drawn in tree order, so a seeded generator gives the same tree.
    (optax splits a JAX key per leaf; a `torch.Generator` is a stream.)

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> g = torch.Generator().manual_seed(0)
        >>> tf.tree_random_like(g, {"w": torch.zeros(2)}, torch.rand)["w"].shape
        torch.Size([2])
    """
    return tree_map(
        lambda x: sampler(x.shape, generator=generator, dtype=dtype or x.dtype, device=x.device),
        target_tree,
    )


def tree_clip(tree: Tree, min_value: Scalar | None = None, max_value: Scalar | None = None) -> Tree:
    """Clamp every element to ``[min_value, max_value]`` (either may be `None`).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_clip({"a": torch.tensor([-2.0, 0.5, 3.0])}, -1.0, 1.0)
        {'a': tensor([-1.0000,  0.5000,  1.0000])}
    """
    return tree_map(lambda x: torch.clamp(x, min_value, max_value), tree)


def tree_cast_like(tree: Tree, other_tree: Tree) -> Tree:
    """Cast every leaf to the dtype of the matching leaf of ``other_tree``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_cast_like({"a": torch.ones(1)}, {"a": torch.zeros(1, dtype=torch.float64)})
        {'a': tensor([1.], dtype=torch.float64)}
    """
    return tree_map(
        lambda x, o: x.to(o.dtype) if isinstance(o, torch.Tensor) else x, tree, other_tree
    )


def tree_dtype(tree: Tree, mixed_dtype_handler: str | None = None) -> torch.dtype:
    """The dtype of the tree's leaves (optax's ``tree_dtype``).

    With leaves of several dtypes: an error by default; ``"promote"`` gives the promoted
    dtype, ``"highest"`` / ``"lowest"`` the widest / narrowest floating one.

    Raises:
        ValueError: for mixed dtypes without a handler, an unknown handler, or no leaves.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tree = {"a": torch.ones(1), "b": torch.ones(1, dtype=torch.float64)}
        >>> tf.tree_dtype(tree, "promote")
        torch.float64
    """
    dtypes = list(dict.fromkeys(x.dtype for x in tree_leaves(tree) if x is not None))
    if not dtypes:
        raise ValueError("tree_dtype: the tree has no leaves.")
    if len(dtypes) == 1:
        return dtypes[0]
    if mixed_dtype_handler is None:
        raise ValueError(
            f"tree_dtype: the leaves have dtypes {dtypes}; pass mixed_dtype_handler= "
            "'promote', 'highest' or 'lowest'."
        )
    if mixed_dtype_handler == "promote":
        out = dtypes[0]
        for d in dtypes[1:]:
            out = torch.promote_types(out, d)
        return out
    if mixed_dtype_handler in ("highest", "lowest"):
        size = lambda d: torch.finfo(d).bits if d.is_floating_point else 0  # noqa: E731
        pick = max if mixed_dtype_handler == "highest" else min
        return pick(dtypes, key=size)
    raise ValueError(f"tree_dtype: unknown mixed_dtype_handler {mixed_dtype_handler!r}.")


def tree_allclose(
    a: Tree, b: Tree, rtol: float = 1e-5, atol: float = 1e-8, equal_nan: bool = False
) -> bool:
    """Whether every pair of leaves is close (`torch.allclose`); `None` leaves must match.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.tree_allclose({"a": torch.ones(2)}, {"a": torch.ones(2) + 1e-9})
        True
    """
    flags = tree_leaves(tree_map(lambda x, y: torch.allclose(x, y, rtol, atol, equal_nan), a, b))
    return all(bool(f) for f in flags if f is not None)
