"""Pytree utilities: flattening, the one leaf walker, tree maths, state access, raveling,
stacking.

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
    tree_allclose,
    tree_batch_shape,
    tree_bias_correction,
    tree_cast,
    tree_cast_like,
    tree_clip,
    tree_conj,
    tree_div,
    tree_dtype,
    tree_full_like,
    tree_l1_norm,
    tree_l2_norm,
    tree_linf_norm,
    tree_max,
    tree_min,
    tree_mul,
    tree_norm,
    tree_ones_like,
    tree_random_like,
    tree_real,
    tree_scale,
    tree_size,
    tree_sub,
    tree_sum,
    tree_update_infinity_moment,
    tree_update_moment,
    tree_update_moment_per_elem_norm,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)
from torchopt_fn.tree._ravel import ravel_parameters_, ravel_tree
from torchopt_fn.tree._stack import tree_stack, tree_unstack
from torchopt_fn.tree._state import (
    tree_get,
    tree_get_all_with_path,
    tree_load_state_dict_,
    tree_set,
    tree_state_dict,
)

# optax's root names for some of the tree maths.
bias_correction = tree_bias_correction
update_moment = tree_update_moment
update_infinity_moment = tree_update_infinity_moment
update_moment_per_elem_norm = tree_update_moment_per_elem_norm
global_norm = tree_l2_norm

__all__ = [
    "bias_correction",
    "global_norm",
    "ravel_parameters_",
    "ravel_tree",
    "tree_add",
    "tree_add_scale",
    "tree_all_finite",
    "tree_allclose",
    "tree_batch_shape",
    "tree_bias_correction",
    "tree_cast",
    "tree_cast_like",
    "tree_clip",
    "tree_conj",
    "tree_div",
    "tree_dtype",
    "tree_full_like",
    "tree_get",
    "tree_get_all_with_path",
    "tree_l1_norm",
    "tree_l2_norm",
    "tree_leaves",
    "tree_linf_norm",
    "tree_load_state_dict_",
    "tree_map",
    "tree_max",
    "tree_min",
    "tree_mul",
    "tree_norm",
    "tree_ones_like",
    "tree_random_like",
    "tree_real",
    "tree_scale",
    "tree_set",
    "tree_size",
    "tree_stack",
    "tree_state_dict",
    "tree_sub",
    "tree_sum",
    "tree_unstack",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
]
