"""torchopt_fn: optax-style functional optimizers for PyTorch.

Optimizers are pure gradient transformations over pytrees of tensors::

    import torchopt_fn as tf
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-3, weight_decay=1e-2))
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = tf.apply_updates(params, updates)
"""

import torch

from torchopt_fn import (
    contrib,
    implicit,
    interop,
    optimizers,
    projections,
    schedules,
    second_order,
    transforms,
    tree,
    wrappers,
)
from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    MaskOrFn,
    OptState,
    Params,
    ScalarOrSchedule,
    Schedule,
    TransformInitFn,
    TransformUpdateExtraArgsFn,
    TransformUpdateFn,
    Updates,
    init_empty_state,
)
from torchopt_fn._combine import (
    MaskedNode,
    MaskedState,
    MultiTransformState,
    PartitionState,
    chain,
    freeze,
    masked,
    multi_transform,
    named_chain,
    partition,
    selective_transform,
)
from torchopt_fn._compile import compile_step
from torchopt_fn._numerics import safe_norm, safe_root_mean_squares, scale_gradient
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import Scalar
from torchopt_fn._stateless import (
    identity,
    set_to_zero,
    stateless,
    stateless_with_tree_map,
    with_extra_args_support,
)
from torchopt_fn._update import (
    apply_updates,
    apply_updates_,
    copy_into_,
    incremental_update,
    periodic_update,
    stochastic_round,
)
from torchopt_fn.implicit import *
from torchopt_fn.interop import *
from torchopt_fn.optimizers import *
from torchopt_fn.projections import *
from torchopt_fn.schedules import *
from torchopt_fn.second_order import *
from torchopt_fn.transforms import *
from torchopt_fn.tree import *
from torchopt_fn.wrappers import *

__version__ = "0.1.0"


__all__ = [
    "scale_gradient",
    "safe_root_mean_squares",
    "safe_norm",
    "multi_transform",
    "MultiTransformState",
    "init_empty_state",
    "TransformUpdateFn",
    "TransformUpdateExtraArgsFn",
    "TransformInitFn",
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "MaskOrFn",
    "MaskedNode",
    "MaskedState",
    "OptState",
    "Params",
    "PartitionState",
    "Scalar",
    "ScalarOrSchedule",
    "Schedule",
    "Updates",
    "apply_updates",
    "apply_updates_",
    "chain",
    "compile_step",
    "contrib",
    "copy_into_",
    "freeze",
    "identity",
    "incremental_update",
    "interop",
    "masked",
    "named_chain",
    "implicit",
    "optimizers",
    "partition",
    "periodic_update",
    "projections",
    "record_hyperparams",
    "schedules",
    "second_order",
    "selective_transform",
    "set_to_zero",
    "stochastic_round",
    "stateless",
    "stateless_with_tree_map",
    "transforms",
    "tree",
    "with_extra_args_support",
    "wrappers",
    *implicit.__all__,
    *interop.__all__,
    *optimizers.__all__,
    *projections.__all__,
    *schedules.__all__,
    *second_order.__all__,
    *transforms.__all__,
    *tree.__all__,
    *wrappers.__all__,
]


def _register_state_classes() -> None:
    """Let ``torch.load(weights_only=True)`` load functional state: its NamedTuples are safe."""
    from torchopt_fn.tree._flatten import ParamList
    from torchopt_fn.tree._ops import Absent

    objects = [globals()[name] for name in __all__]
    states = [o for o in objects if isinstance(o, type) and issubclass(o, tuple)]
    states.remove(GradientTransformation)
    torch.serialization.add_safe_globals([ParamList, Absent, *states])


_register_state_classes()
