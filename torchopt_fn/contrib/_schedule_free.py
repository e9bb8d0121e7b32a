"""Schedule-Free optimization: averaging in place of a learning-rate schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

from torchopt_fn._base import (
    GradientTransformation,
    Params,
    Scalar,
    ScalarOrSchedule,
    params_device,
)
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import is_schedule
from torchopt_fn.optimizers._sgd import sgd
from torchopt_fn.schedules import warmup_constant_schedule
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._rms import scale_by_rms
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import NAMESPACE, tree_map
from torchopt_fn.tree._math import tree_dtype
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "ScheduleFreeState",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]


class ScheduleFreeState(NamedTuple):
    """State of `schedule_free`.

    Attributes:
        b1: the interpolation $\\beta$ between the average and the base iterate.
        weight_sum: the sum of the averaging weights so far.
        step_count: the step, from 1.
        max_lr: the largest learning rate seen (weights are ``max_lr ** weight_lr_power``).
        base_optimizer_state: the base optimizer's state.
        z: the base optimizer's own iterate.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.schedule_free_sgd(0.1).init({"w": torch.zeros(1)}).step_count
        tensor(1)
    """

    b1: torch.Tensor
    weight_sum: torch.Tensor
    step_count: torch.Tensor
    max_lr: torch.Tensor
    base_optimizer_state: Any
    z: Any

    def _schedule_free(self) -> bool:
        """Marks the state whose params `Optimizer.train` / `eval` swap."""
        return True


def schedule_free_eval_params(state: Any, params: Params) -> Params:
    r"""The params to evaluate (and to keep at the end): $x = (y - (1 - \beta) z) / \beta$.

    Training runs at the interpolated point $y$; the averaged iterate $x$ is what
    Schedule-Free converges. `Optimizer.eval` swaps a model to it (and `train` back).
    ``state`` is a `ScheduleFreeState`, or any state holding exactly one (the state of
    ``chain(clip_by_global_norm(1.0), schedule_free_adamw(...))``, say).

    Raises:
        ValueError: if ``state`` holds no `ScheduleFreeState`, or several.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.schedule_free_sgd(0.1)
        >>> params = {"w": torch.ones(1)}
        >>> state = tx.init(params)
        >>> tf.contrib.schedule_free_eval_params(state, params)["w"]
        tensor([1.])
    """
    found = [
        node
        for node in optree.tree_leaves(
            state,
            is_leaf=lambda x: isinstance(x, ScheduleFreeState),
            none_is_leaf=True,
            namespace=NAMESPACE,
        )
        if isinstance(node, ScheduleFreeState)
    ]
    if len(found) != 1:
        raise ValueError(
            "schedule_free_eval_params requires a state holding one ScheduleFreeState, "
            f"found {len(found)}."
        )
    b1, z = found[0].b1, found[0].z
    return tree_map(lambda y, zi: ((y - (1.0 - b1) * zi) / b1).to(y.dtype), params, z)


@record_hyperparams
def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    weight_lr_power: Scalar = 2.0,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Schedule-Free (Defazio et al., 2024) around any base optimizer.

    The base optimizer steps its own iterate $z$; the average $x$ of the $z$'s (weighted by
    the largest learning rate so far to the power ``weight_lr_power``) is what converges; the
    gradient is taken at $y = \beta x + (1-\beta) z$, which is what ``params`` hold during
    training. No schedule is needed beyond a warmup. Evaluate at
    `schedule_free_eval_params`. ``update`` needs ``params``.

    Args:
        base_optimizer: the base optimizer (with its learning rate).
        learning_rate: the same learning rate (or schedule), for the averaging weights; a
            schedule is called at the step count from 1.
        b1: the interpolation $\beta$.
        weight_lr_power: the power of the averaging weights.
        state_dtype: dtype of $z$ (default: the params').

    Returns:
        A `GradientTransformation` with state `ScheduleFreeState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.schedule_free(tf.sgd(0.1), learning_rate=0.1)
        >>> params = {"w": torch.ones(1)}
        >>> u, state = tx.update({"w": torch.ones(1)}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.1000])

    References:
        Defazio et al., The Road Less Scheduled, NeurIPS 2024. https://arxiv.org/abs/2405.15682
    """

    def init_fn(params):
        dtype = tree_dtype(params, "lowest")
        device = params_device(params)
        z = tree_map(lambda p: p.detach().to(state_dtype or p.dtype, copy=True), params)
        scalar = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        return ScheduleFreeState(
            b1=scalar(b1),
            weight_sum=scalar(0.0),
            step_count=torch.ones((), dtype=torch.int64, device=device),
            max_lr=scalar(0.0),
            base_optimizer_state=base_optimizer.init(params),
            z=z,
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("schedule_free: update needs params.")
        dtype = state.max_lr.dtype
        lr = learning_rate(state.step_count) if is_schedule(learning_rate) else learning_rate
        lr = torch.as_tensor(lr, dtype=dtype, device=state.max_lr.device)
        max_lr = torch.maximum(state.max_lr, lr)
        weight = max_lr**weight_lr_power
        total = state.weight_sum + weight
        ck = torch.where(
            torch.isnan(weight) | torch.isnan(total),
            torch.full_like(weight, float("nan")),
            torch.nan_to_num(weight / total, nan=0.0, posinf=float("inf")),
        )
        base_updates, base_state = base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args
        )

        def step(ops, us, ys, zs):
            outs, new_zs = [], []
            for u, y, z_old in zip(us, ys, zs):
                z_new = (z_old + u).to(z_old.dtype)
                prev_x = (y - (1.0 - b1) * z_old) / b1
                x = (1.0 - ck) * prev_x + ck * z_new
                outs.append((b1 * x + (1.0 - b1) * z_new) - y)
                new_zs.append(z_new)
            return outs, new_zs

        # A parameter without a gradient (a `None` base update) keeps its z and its value.
        out, z = map_leaves(
            step, base_updates, params, state.z, keep=(None, 1), what="schedule_free"
        )
        return out, ScheduleFreeState(state.b1, total, state.step_count + 1, max_lr, base_state, z)

    return GradientTransformation(init_fn, update_fn)


def _warmed_up(learning_rate: Scalar, warmup_steps: int | None) -> ScalarOrSchedule:
    if warmup_steps is None:
        return learning_rate
    return warmup_constant_schedule(0.0, learning_rate, warmup_steps)


@record_hyperparams
def schedule_free_sgd(
    learning_rate: Scalar = 1.0,
    warmup_steps: int | None = None,
    b1: Scalar = 0.9,
    weight_decay: Scalar | None = None,
    weight_lr_power: Scalar = 2.0,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """Schedule-Free SGD: `schedule_free` around `sgd` (with an optional warmup and L2 decay).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.schedule_free_sgd(0.1)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([-0.1000])
    """
    lr = _warmed_up(learning_rate, warmup_steps)
    optimizer = sgd(lr)
    if weight_decay is not None:
        optimizer = chain(add_decayed_weights(weight_decay), optimizer)
    return schedule_free(optimizer, lr, b1, weight_lr_power, state_dtype)


@record_hyperparams
def schedule_free_adamw(
    learning_rate: Scalar = 0.0025,
    warmup_steps: int | None = None,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    weight_lr_power: Scalar = 2.0,
    state_dtype: torch.dtype | None = None,
    *,
    mask: Any | Callable[[Params], Any] | None = None,
) -> GradientTransformation:
    """Schedule-Free AdamW: `schedule_free` around RMS scaling (bias-corrected), decoupled
    weight decay and the learning rate (the momentum is Schedule-Free's interpolation).

    Args:
        learning_rate: the peak learning rate (a number: Schedule-Free needs no schedule).
        warmup_steps: a linear warmup of the learning rate over this many steps, or `None`.
        b1: the interpolation $\beta$ between the average and the base iterate.
        b2: the decay of the second moment.
        eps: added to the root of the second moment.
        weight_decay: decoupled weight decay (times the learning rate).
        weight_lr_power: the averaging weights are the learning rate to this power.
        state_dtype: the dtype of ``z`` (default: the params').
        mask: which leaves the weight decay applies to (a tree of bools, or a function of
            the params giving one), as in `tf.adamw`; beyond optax's arguments.

    Returns:
        A `GradientTransformation` with state `ScheduleFreeState`; ``update`` needs
        ``params``. Evaluate at `schedule_free_eval_params`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.schedule_free_adamw(0.1)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([-0.1000])
    """
    lr = _warmed_up(learning_rate, warmup_steps)
    optimizer = chain(
        scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
    )
    return schedule_free(optimizer, lr, b1, weight_lr_power, state_dtype)
