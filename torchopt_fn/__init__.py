"""torchopt_fn: optax-style functional optimizers for PyTorch.

Optimizers are pure gradient transformations over pytrees of tensors::

    import torchopt_fn as tf
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-3, weight_decay=1e-2))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = tf.apply_updates(params, updates)
"""

from torchopt_fn import optimizers, schedules, transforms, wrappers
from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    identity,
    set_to_zero,
    stateless,
    stateless_with_tree_map,
    with_extra_args_support,
)
from torchopt_fn._combine import (
    MaskedNode,
    MaskedState,
    PartitionState,
    chain,
    masked,
    named_chain,
    partition,
)
from torchopt_fn._compile import compile_step, copy_into_
from torchopt_fn._from_torch import from_torch
from torchopt_fn._tree import (
    ravel_tree,
    tree_add,
    tree_add_scale,
    tree_all_finite,
    tree_bias_correction,
    tree_cast,
    tree_div,
    tree_full_like,
    tree_get,
    tree_l1_norm,
    tree_l2_norm,
    tree_leaves,
    tree_linf_norm,
    tree_map,
    tree_mul,
    tree_ones_like,
    tree_scale,
    tree_set,
    tree_sub,
    tree_sum,
    tree_update_infinity_moment,
    tree_update_moment,
    tree_update_moment_per_elem_norm,
    tree_vdot,
    tree_where,
    tree_zeros_like,
)
from torchopt_fn._update import apply_updates, apply_updates_
from torchopt_fn.optim import Optimizer
from torchopt_fn.optimizers import *
from torchopt_fn.schedules import *
from torchopt_fn.transforms import *
from torchopt_fn.wrappers import *

__version__ = "0.1.0"

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "MaskedNode",
    "MaskedState",
    "OptState",
    "Optimizer",
    "Params",
    "PartitionState",
    "ScalarOrSchedule",
    "Schedule",
    "Updates",
    "apply_updates",
    "apply_updates_",
    "chain",
    "compile_step",
    "copy_into_",
    "from_torch",
    "identity",
    "masked",
    "named_chain",
    "optimizers",
    "partition",
    "schedules",
    "set_to_zero",
    "stateless",
    "stateless_with_tree_map",
    "transforms",
    "wrappers",
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
    "with_extra_args_support",
    *optimizers.__all__,
    *schedules.__all__,
    *transforms.__all__,
    *wrappers.__all__,
]
