"""Pytree utilities: flattening, the one leaf walker, tree maths, state access, raveling.

The public functions are re-exported by `torchopt_fn`. Transforms are written with the rest,
imported from the private modules: `_ops.map_leaves` (the one leaf walker) and `_ops.Ops`, the
list helpers of `_math`, and the flattening of `_flatten`.
"""

from torchopt_fn.tree._flatten import (
    tree_leaves,
    tree_map,
)
from torchopt_fn.tree._math import (
    tree_add,
    tree_add_scale,
    tree_all_finite,
    tree_bias_correction,
    tree_cast,
    tree_div,
    tree_full_like,
    tree_l1_norm,
    tree_l2_norm,
    tree_linf_norm,
    tree_mul,
    tree_ones_like,
    tree_scale,
    tree_sub,
    tree_sum,
    tree_update_infinity_moment,
    tree_update_moment,
    tree_update_moment_per_elem_norm,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)
from torchopt_fn.tree._ravel import ravel_tree
from torchopt_fn.tree._state import tree_get, tree_set

__all__ = [
    "ravel_tree",
    "tree_add",
    "tree_add_scale",
    "tree_all_finite",
    "tree_bias_correction",
    "tree_cast",
    "tree_div",
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
    "tree_sub",
    "tree_sum",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
]
