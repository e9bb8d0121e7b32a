"""Projections onto convex sets.

Element-wise (box, non-negative), norm balls and spheres, the simplex, and affine sets. Each
takes a tree and returns the closest point of the set (in the Euclidean norm over the whole
tree).
"""

from __future__ import annotations

from typing import Any

import torch

from torchopt_fn._branch import branch
from torchopt_fn.tree._flatten import tree_flatten, tree_map, tree_unflatten
from torchopt_fn.tree._math import tree_add_scale, tree_l1_norm, tree_l2_norm, tree_scale, tree_vdot

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
]

Tree = Any


def projection_non_negative(tree: Tree) -> Tree:
    r"""Onto the non-negative orthant: $\max(x, 0)$ element-wise.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_non_negative({"w": torch.tensor([-1.0, 2.0])})
        {'w': tensor([0., 2.])}
    """
    return tree_map(torch.relu, tree)


def projection_box(tree: Tree, lower: Any, upper: Any) -> Tree:
    """Onto the box ``lower <= x <= upper`` (numbers, or trees like ``tree``).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_box({"w": torch.tensor([-2.0, 0.5, 3.0])}, -1.0, 1.0)
        {'w': tensor([-1.0000,  0.5000,  1.0000])}
    """

    def as_tree(bound: Any) -> Tree:
        if isinstance(bound, (int, float)) or (
            isinstance(bound, torch.Tensor) and bound.dim() == 0
        ):
            return tree_map(lambda x: bound, tree)
        return bound

    def clip(x: torch.Tensor, lo: Any, hi: Any) -> torch.Tensor:
        lo = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
        hi = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
        return torch.clamp(x, lo, hi)

    return tree_map(clip, tree, as_tree(lower), as_tree(upper))


def projection_hypercube(tree: Tree, scale: Any = 1) -> Tree:
    """Onto the hypercube ``0 <= x <= scale``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_hypercube({"w": torch.tensor([-1.0, 0.5, 2.0])})
        {'w': tensor([0.0000, 0.5000, 1.0000])}
    """
    return projection_box(tree, 0, scale)


def _flat(tree: Tree) -> tuple[torch.Tensor, Any]:
    """Every leaf in one vector (the promoted dtype), and how to split it back."""
    leaves, spec = tree_flatten(tree)
    live = [x for x in leaves if x is not None]
    flat = torch.cat([x.reshape(-1) for x in live]) if live else torch.zeros(0)

    def unflat(v: torch.Tensor) -> Tree:
        parts = iter(v.split([x.numel() for x in live]))
        return tree_unflatten(
            spec,
            [None if x is None else next(parts).view(x.shape).to(x.dtype) for x in leaves],
        )

    return flat, unflat


def _unit_simplex(values: torch.Tensor) -> torch.Tensor:
    """Onto {x >= 0, sum x = 1} (Held et al., 1974; sorting, no loop)."""
    u = torch.sort(values, descending=True).values
    cumsum = torch.cumsum(u, 0)
    ind = torch.arange(1, values.numel() + 1, dtype=values.dtype, device=values.device)
    count = torch.count_nonzero(1 / ind + (u - cumsum / ind) > 0)
    threshold = (cumsum.gather(0, (count - 1).reshape(1)) - 1) / count.to(values.dtype)
    return torch.relu(values - threshold)


def projection_simplex(tree: Tree, scale: Any = 1) -> Tree:
    r"""Onto the simplex $\{x \ge 0, \sum x = s\}$ over all the tree's elements.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_simplex({"w": torch.tensor([0.5, 2.0, -1.0])})
        {'w': tensor([0., 1., 0.])}
    """
    flat, unflat = _flat(tree)
    return unflat(scale * _unit_simplex(flat / scale))


def projection_l1_sphere(tree: Tree, scale: Any = 1) -> Tree:
    r"""Onto the L1 sphere $\{\|x\|_1 = s\}$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_l1_sphere({"w": torch.tensor([0.5, -2.0])})
        {'w': tensor([ 0., -1.])}
    """
    flat, unflat = _flat(tree)
    return unflat(torch.sign(flat) * scale * _unit_simplex(flat.abs() / scale))


def projection_l1_ball(tree: Tree, scale: Any = 1) -> Tree:
    r"""Onto the L1 ball $\{\|x\|_1 \le s\}$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_l1_ball({"w": torch.tensor([0.25, -0.5])})
        {'w': tensor([ 0.2500, -0.5000])}
    """
    return branch(
        tree_l1_norm(tree) <= scale, lambda: tree, lambda: projection_l1_sphere(tree, scale)
    )


def projection_l2_sphere(tree: Tree, scale: Any = 1) -> Tree:
    r"""Onto the L2 sphere $\{\|x\|_2 = s\}$: $x \, s / \|x\|_2$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_l2_sphere({"w": torch.tensor([3.0, 4.0])})
        {'w': tensor([0.6000, 0.8000])}
    """
    return tree_scale(scale / tree_l2_norm(tree), tree)


def projection_l2_ball(tree: Tree, scale: Any = 1) -> Tree:
    r"""Onto the L2 ball $\{\|x\|_2 \le s\}$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_l2_ball({"w": torch.tensor([3.0, 4.0])}, scale=10.0)
        {'w': tensor([3., 4.])}
    """
    squared = tree_l2_norm(tree, squared=True)
    return tree_scale(scale / torch.sqrt(torch.clamp(squared, min=scale**2)), tree)


def projection_linf_ball(tree: Tree, scale: Any = 1) -> Tree:
    r"""Onto the L-infinity ball $\{\|x\|_\infty \le s\}$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_linf_ball({"w": torch.tensor([3.0, -0.5])})
        {'w': tensor([ 1.0000, -0.5000])}
    """
    return projection_box(tree, -scale, scale)


def projection_vector(x: Tree, a: Tree) -> Tree:
    r"""Onto the line spanned by ``a``: $\frac{\langle x, a\rangle}{\langle a, a\rangle} a$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.projection_vector({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 0.0])})
        {'w': tensor([1., 0.])}
    """
    return tree_scale(tree_vdot(x, a) / tree_vdot(a, a), a)


def projection_hyperplane(x: Tree, a: Tree, b: Any) -> Tree:
    r"""Onto the hyperplane $\{y : \langle a, y\rangle = b\}$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> a = {"w": torch.tensor([1.0, 1.0])}
        >>> tf.projection_hyperplane({"w": torch.tensor([1.0, 2.0])}, a, 1.0)
        {'w': tensor([0., 1.])}
    """
    return tree_add_scale(x, (b - tree_vdot(x, a)) / tree_vdot(a, a), a)


def projection_halfspace(x: Tree, a: Tree, b: Any) -> Tree:
    r"""Onto the half-space $\{y : \langle a, y\rangle \le b\}$.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> a = {"w": torch.tensor([1.0, 1.0])}
        >>> tf.projection_halfspace({"w": torch.tensor([1.0, 2.0])}, a, 5.0)
        {'w': tensor([1., 2.])}
    """
    scalar = torch.clamp((b - tree_vdot(x, a)) / tree_vdot(a, a), max=0)
    return tree_add_scale(x, scalar, a)
