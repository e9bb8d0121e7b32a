"""Clipping: by value, by global norm, per block (leaf) RMS, and adaptively (AGC)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import EmptyState, GradientTransformation, Scalar, empty_init
from torchopt_fn._branch import concrete
from torchopt_fn._fused import torch_clip_coef
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_non_negative, check_positive, require_params
from torchopt_fn.tree._dtensor import is_dtensor, plain, replicated_like
from torchopt_fn.tree._flatten import tree_flatten, tree_leaves, tree_map, tree_unflatten
from torchopt_fn.tree._math import norms_squared_sum
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "AdaptiveGradClipState",
    "ClipByGlobalNormState",
    "ClipState",
    "adaptive_grad_clip",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "clip_by_torch_global_norm",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "unitwise_clip",
    "unitwise_norm",
]

# optax's names for the states of its stateless clippings.
ClipState = EmptyState
AdaptiveGradClipState = EmptyState


@record_hyperparams
def clip(max_delta: Scalar) -> GradientTransformation:
    r"""Clip every element to $[-\delta, \delta]$.

    Args:
        max_delta: the bound $\delta \ge 0$.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``max_delta`` is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip(1.0)
        >>> tx.update({"w": torch.tensor([3.0, -0.5])}, tx.init(None))[0]["w"]
        tensor([ 1.0000, -0.5000])
    """
    check_non_negative("max_delta", max_delta)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out = map_leaves(
            lambda ops, gs: [torch.clamp(g, -max_delta, max_delta) for g in gs],
            updates,
            batchable=True,
            what="clip",
        )
        return out, state

    return GradientTransformation(empty_init, update_fn)


class ClipByGlobalNormState(NamedTuple):
    """State of `clip_by_global_norm`: the global norm of the last updates, before clipping.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.clip_by_global_norm(1.0).init({"w": torch.zeros(2)}).norm
        tensor(0.)
    """

    norm: torch.Tensor


@record_hyperparams
def clip_by_global_norm(max_norm: Scalar) -> GradientTransformation:
    r"""Rescale all updates together so their global L2 norm is at most ``max_norm``.

    $u_t = g_t \cdot \min(1, c / \|g_t\|_2)$ where $\|g\|_2$ is taken over all leaves at once.
    The pre-clip norm is kept in the state for logging (``tf.tree_get(state, "norm")``).

    Args:
        max_norm: the bound $c > 0$.

    Returns:
        A `GradientTransformation` with state `ClipByGlobalNormState`.

    Raises:
        ValueError: if ``max_norm`` is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip_by_global_norm(1.0)
        >>> u, s = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"], s.norm
        (tensor([0.6000, 0.8000]), tensor(5.))

    References:
        Pascanu et al., On the difficulty of training recurrent neural networks, ICML 2013.

    torch equivalent: `torch.nn.utils.clip_grad_norm_` adds 1e-6 to the norm and scales
    every gradient, clipped or not: `clip_by_torch_global_norm` follows it exactly.
    """
    check_positive("max_norm", max_norm)

    def init_fn(params):
        leaves = [x for x in tree_leaves(params) if isinstance(x, torch.Tensor)]
        dtype = leaves[0].dtype if leaves else torch.float32
        device = leaves[0].device if leaves else None
        return ClipByGlobalNormState(
            norm=torch.zeros((), dtype=torch.promote_types(dtype, torch.float32), device=device)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norms = []

        def step(ops, gs):
            g_norm = torch.sqrt(norms_squared_sum(ops, gs))
            norms.append(g_norm)
            # The safe denominator keeps the unselected branch (and gradients through it) finite.
            over = g_norm > max_norm
            factor = torch.where(over, max_norm / torch.where(over, g_norm, 1.0), 1.0)
            return ops.mul(gs, ops.scalar(gs, lambda dt, dev: factor.to(dev, dt)))

        out = map_leaves(step, updates, batchable=True, what="clip_by_global_norm")
        return out, ClipByGlobalNormState(norm=norms[-1].to(state.norm))

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def clip_by_torch_global_norm(
    max_norm: Scalar, norm_type: float = 2.0, error_if_nonfinite: bool = False
) -> GradientTransformation:
    r"""Clip all updates together as `torch.nn.utils.clip_grad_norm_` does.

    With $N = \|(\|g^{(1)}\|_p, \dots, \|g^{(n)}\|_p)\|_p$ (each leaf's $p$-norm, then the
    norm of those), $u_t = g_t \cdot \min(1, c / (N + 10^{-6}))$: torch's order of
    operations, its $10^{-6}$, and its multiplication of every gradient (by exactly 1 when
    the norm is below $c - 10^{-6}$), so a model trained with ``clip_grad_norm_`` and a
    torch optimizer follows the same trajectory with this and the `from_torch` twin.
    `clip_by_global_norm` is optax's (no $10^{-6}$; it differs by about $10^{-6}/N$
    relative where it clips). The pre-clip norm $N$ is kept in the state.

    Args:
        max_norm: the bound $c > 0$.
        norm_type: $p$: a positive number or ``float("inf")``.
        error_if_nonfinite: raise where $N$ is NaN or infinite, as torch does. Checked
            eagerly only (a compiled or vmapped update cannot raise on a value).

    Returns:
        A `GradientTransformation` with state `ClipByGlobalNormState`.

    Raises:
        ValueError: if ``max_norm`` or ``norm_type`` is not positive. `RuntimeError` (at
            ``update``, eagerly) for a non-finite norm with ``error_if_nonfinite``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip_by_torch_global_norm(1.0)
        >>> u, s = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"], s.norm
        (tensor([0.6000, 0.8000]), tensor(5.))

    torch equivalent: ``torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type,
    error_if_nonfinite)`` before the optimizer's step.
    """
    check_positive("max_norm", max_norm)
    check_positive("norm_type", norm_type)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norms = []

        def step(ops, gs):
            if not gs:
                return []
            if ops.foreach:
                each = list(torch._foreach_norm(gs, norm_type))
            else:
                each = [torch.linalg.vector_norm(g, norm_type) for g in gs]
            total, coef = torch_clip_coef(each, max_norm, norm_type)
            norms.append(total)
            known = concrete(total.isfinite()) if error_if_nonfinite else True
            if known is False:
                raise RuntimeError(
                    f"clip_by_torch_global_norm: the total norm of order {norm_type} of the "
                    "gradients is non-finite, so it cannot be clipped (error_if_nonfinite=True)."
                )
            return ops.mul(gs, ops.scalar(gs, lambda dt, dev: coef.to(dev, dt)))

        out = map_leaves(step, updates, what="clip_by_torch_global_norm")
        norm = norms[0].to(state.norm) if norms else state.norm
        return out, ClipByGlobalNormState(norm=norm)

    return GradientTransformation(clip_by_global_norm(1.0).init, update_fn)


@record_hyperparams
def clip_by_block_rms(threshold: Scalar) -> GradientTransformation:
    r"""Clip each leaf (block) separately so that its root mean square is at most ``threshold``.

    $u = g / \max(1, \mathrm{rms}(g) / \tau)$ with $\mathrm{rms}(g) = \sqrt{\mathrm{mean}(|g|^2)}$
    over the elements of one leaf.

    Args:
        threshold: the largest RMS $\tau > 0$ of a leaf's update.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``threshold`` is not positive.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip_by_block_rms(1.0)
        >>> g = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.5])}
        >>> u, _ = tx.update(g, tx.init(None))
        >>> u["a"], u["b"]
        (tensor([0.8485, 1.1314]), tensor([0.5000]))
    """
    check_positive("threshold", threshold)

    def step(ops, gs: list) -> list:
        denominators = [
            # max(numel, 1): an empty leaf has nothing to clip.
            torch.clamp(n / (math.sqrt(max(g.numel(), 1)) * threshold), min=1.0).to(g.dtype)
            for g, n in zip(gs, ops.norm(gs))
        ]
        return ops.div(gs, denominators)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return map_leaves(step, updates, what="clip_by_block_rms"), state

    return GradientTransformation(empty_init, update_fn)


def unitwise_norm(x: torch.Tensor, axis: int | Sequence[int] | None = None) -> torch.Tensor:
    """The L2 norm of every unit of ``x``, broadcast to ``x``'s shape (optax's conventions).

    Units: ``axis`` if given; else the whole tensor for scalars and vectors, axis 0 for 2-D
    and 3-D tensors, axes ``(0, 1, 2)`` for 4-D and ``(0, 1, 2, 3)`` for 5-D (JAX layouts;
    see `adaptive_grad_clip` for torch's).

    Raises:
        ValueError: for more than 5 axes without ``axis``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.unitwise_norm(torch.tensor([[3.0, 0.0], [4.0, 1.0]]))
        tensor([[5., 1.],
                [5., 1.]])
    """
    sq = (x * x.conj()).real if x.is_complex() else x * x
    if axis is not None:
        dims: Any = axis if isinstance(axis, int) else tuple(axis)
        norm_sq = sq.sum(dim=dims, keepdim=True)
    elif sum(n != 1 for n in x.shape) <= 1:  # a vector or scalar, whatever its unit axes
        norm_sq = sq.sum().reshape([1] * x.dim())
    elif x.dim() in (2, 3):
        norm_sq = sq.sum(dim=0, keepdim=True)
    elif x.dim() == 4:
        norm_sq = sq.sum(dim=(0, 1, 2), keepdim=True)
    elif x.dim() == 5:
        norm_sq = sq.sum(dim=(0, 1, 2, 3), keepdim=True)
    else:
        raise ValueError(
            f"unitwise_norm: expected a leaf with 1 to 5 axes, got shape {tuple(x.shape)}; "
            "pass axis= to choose the reduction axes."
        )
    return torch.sqrt(norm_sq).expand(x.shape)


@record_hyperparams
def adaptive_grad_clip(
    clipping: Scalar,
    eps: Scalar = 1e-3,
    axis: int | Sequence[int] | None = None,
) -> GradientTransformation:
    r"""Adaptive gradient clipping (AGC): clip each unit's update relative to its weights' norm.

    For every unit $i$ (see below), $u_i = g_i$ if $\|g_i\| < \lambda \max(\|p_i\|, \epsilon)$,
    else $g_i \cdot \lambda \max(\|p_i\|, \epsilon) / \max(\|g_i\|, 10^{-6})$.

    Units follow optax's (JAX/Flax) layout conventions when ``axis`` is None: the whole leaf for
    vectors and scalars, norms over axis 0 for 2-D and 3-D leaves (Flax kernels are
    ``(in, out)``), over axes ``(0, 1, 2)`` for 4-D ``HWIO`` kernels and ``(0, 1, 2, 3)`` for 5-D.
    **For torch layouts pass ``axis``**: ``nn.Linear.weight`` is ``(out, in)``, so per-output-unit
    norms need ``axis=1``; ``nn.Conv2d.weight`` is ``(out, in, h, w)``, so ``axis=(1, 2, 3)``.

    Args:
        clipping: the largest allowed ratio $\lambda \ge 0$ of update norm to parameter norm.
        eps: the floor $\epsilon \ge 0$ of the parameter norm, so zero-initialised parameters can
            still move.
        axis: axis or axes to take each unit's norm over (default: by rank, as above).

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: for a negative ``clipping`` or ``eps``; at ``update``, when ``params`` is
            missing or a leaf has more than 5 axes and no ``axis`` was given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.adaptive_grad_clip(0.1)
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> u, _ = tx.update({"w": torch.tensor([0.0, 2.0])}, tx.init(params), params)
        >>> u["w"]
        tensor([0.0000, 0.5000])

    References:
        Brock et al., High-Performance Large-Scale Image Recognition Without Normalization,
        ICML 2021. https://arxiv.org/abs/2102.06171
    """
    check_non_negative("clipping", clipping)
    check_non_negative("eps", eps)

    def clip_leaf(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        g_norm = unitwise_norm(g, axis)
        max_norm = clipping * torch.clamp(unitwise_norm(p, axis), min=eps).to(g_norm.dtype)
        return unitwise_clip(g_norm, max_norm, g)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "adaptive_grad_clip")
        out = map_leaves(
            lambda ops, gs, ps: [clip_leaf(g, p) for g, p in zip(gs, ps)],
            updates,
            params,
            what="adaptive_grad_clip",
        )
        return out, state

    return GradientTransformation(empty_init, update_fn)


def unitwise_clip(
    g_norm: torch.Tensor, max_norm: torch.Tensor, grad: torch.Tensor, div_eps: float = 1e-6
) -> torch.Tensor:
    """``grad`` where its unit norm ``g_norm`` is below ``max_norm``, else scaled down to it.

    The ``div_eps`` floor only prevents 0/0 where the gradient is kept anyway.

    Raises:
        ValueError: if the three shapes differ.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> g = torch.tensor([3.0, 4.0])
        >>> tf.unitwise_clip(tf.unitwise_norm(g), torch.full((2,), 1.0), g)
        tensor([0.6000, 0.8000])
    """
    if not g_norm.shape == max_norm.shape == grad.shape:
        raise ValueError(
            f"unitwise_clip: shapes differ: g_norm {tuple(g_norm.shape)}, max_norm "
            f"{tuple(max_norm.shape)}, grad {tuple(grad.shape)}."
        )
    clipped = grad * (max_norm / torch.clamp(g_norm, min=div_eps))
    return torch.where(g_norm < max_norm, grad, clipped)


def _per_example(grads: Any, what: str) -> list[torch.Tensor]:
    leaves = [g for g in tree_leaves(grads) if g is not None]
    if not leaves or any(g.dim() == 0 for g in leaves) or len({g.shape[0] for g in leaves}) != 1:
        raise ValueError(
            f"{what}: expects gradients with one batch axis first (per-example gradients, "
            "e.g. from torch.func.vmap(torch.func.grad(loss))), the same size in every leaf."
        )
    return leaves


def _square_sums(g: torch.Tensor) -> torch.Tensor:
    """Each example's sum of squares, over every axis but the first."""
    squares = g.abs().square()
    return squares.sum(tuple(range(1, g.dim()))) if g.dim() > 1 else squares


def _weighted_sum(m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    r"""$\sum_b m_b g_b$ over ``g``'s first axis: a matrix product, or for a DTensor (which
    has no flat view to multiply) a broadcast product summed, ``m`` replicated beside it."""
    m = m.to(g.dtype)
    if is_dtensor(g):
        return (replicated_like(m.reshape(-1, *[1] * (g.dim() - 1)), g) * g).sum(0)
    return torch.tensordot(m, g, dims=1)


def per_example_global_norm_clip(grads: Any, l2_norm_clip: Scalar) -> tuple[Any, torch.Tensor]:
    """Clip each example's gradient to global norm ``l2_norm_clip``, then sum over examples.

    For differentially private SGD. ``grads`` has a leading batch axis in every leaf.

    Returns:
        The summed clipped gradients (no batch axis) and how many examples were clipped.

    Raises:
        ValueError: if the leaves lack a common leading batch axis.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> grads = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
        >>> tf.per_example_global_norm_clip(grads, 1.0)
        ({'w': tensor([0.9000, 1.2000])}, tensor(1))
    """
    leaves = _per_example(grads, "per_example_global_norm_clip")
    # Summed over every axis but the first (not reshaped: a sharded leaf has no flat view).
    squares = [plain(_square_sums(g)) for g in leaves]
    norms = torch.sqrt(torch.stack(squares).sum(0))
    multipliers = torch.nan_to_num(torch.clamp(l2_norm_clip / norms, max=1.0), nan=1.0)
    clipped = tree_map(lambda g: _weighted_sum(multipliers, g), grads)
    return clipped, (multipliers < 1.0).sum()


def per_example_layer_norm_clip(
    grads: Any, global_l2_norm_clip: Scalar, uniform: bool = True
) -> tuple[Any, Any]:
    """Clip each example's gradient leaf by leaf, with per-leaf budgets summing to the global one.

    With ``uniform``, every leaf gets ``global / sqrt(number of leaves)``; otherwise budgets
    are proportional to the square root of each leaf's size. Then as
    `per_example_global_norm_clip`, leaf by leaf.

    Returns:
        A tree of summed clipped gradients, and a tree of how many examples each leaf clipped.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> grads = {"a": torch.tensor([[3.0, 4.0]]), "b": torch.tensor([[0.1]])}
        >>> summed, counts = tf.per_example_layer_norm_clip(grads, 2.0 ** 0.5)
        >>> summed["a"], counts["a"], counts["b"]
        (tensor([0.6000, 0.8000]), tensor(1), tensor(0))
    """
    leaves = _per_example(grads, "per_example_layer_norm_clip")
    if uniform:
        budget = lambda g: global_l2_norm_clip * (1.0 / len(leaves)) ** 0.5  # noqa: E731
    else:
        total = sum(g[0].numel() for g in leaves)
        budget = lambda g: global_l2_norm_clip * (g[0].numel() / total) ** 0.5  # noqa: E731
    flat, spec = tree_flatten(grads)
    pairs = [
        (None, None) if g is None else per_example_global_norm_clip(g, budget(g)) for g in flat
    ]
    return tree_unflatten(spec, [c for c, _ in pairs]), tree_unflatten(spec, [n for _, n in pairs])
