"""Prodigy: Adam whose learning rate is estimated from the distance to the solution."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    params_device,
    value_at,
)
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import require_params
from torchopt_fn.tree._flatten import tree_flatten, tree_map
from torchopt_fn.tree._math import real_vdot, tree_dtype
from torchopt_fn.tree._ops import check_like, map_leaves

__all__ = ["ProdigyState", "prodigy"]


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class ProdigyState(NamedTuple):
    """State of `prodigy`: Adam's moments (of the scaled gradients), the weighted gradient
    sum, the initial params, the learning-rate estimate, its numerator, and the count.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.prodigy().init({"w": torch.ones(1)}).estim_lr
        tensor(1.0000e-06)
    """

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any
    estim_lr: torch.Tensor
    numerator_weighted: torch.Tensor
    count: torch.Tensor


@record_hyperparams
def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    beta3: Scalar | None = None,
    eps: Scalar = 1e-8,
    estim_lr0: Scalar = 1e-6,
    estim_lr_coef: Scalar = 1.0,
    weight_decay: Scalar = 0.0,
    safeguard_warmup: bool = False,
) -> GradientTransformation:
    r"""Prodigy (Mishchenko & Defazio, 2023): Adam with an estimated step size $d$.

    $d$ grows from ``estim_lr0`` as
    $\max(d, \text{coef} \cdot \sum_k \beta_3^{..} d_k \langle g_k, x_0 - x_k\rangle /
    \|\sum_k \beta_3^{..} d_k g_k\|_1)$, a lower bound on the distance to the solution;
    Adam runs on $d\,g$ with learning rate ``learning_rate`` times $d$ (its multiplier,
    usually 1). ``weight_decay`` is decoupled. Needs ``params``. Moments and estimates are
    kept in at least float32 (optax keeps the params' dtype; in float16 the initial
    $d = 10^{-6}$ squared underflows, and its step is 0/0).

    Returns:
        A `GradientTransformation` with state `ProdigyState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.prodigy()
        >>> params = {"w": torch.ones(1)}
        >>> u, state = tx.update({"w": torch.ones(1)}, tx.init(params), params)
        >>> u["w"]  # d starts tiny
        tensor([-1.0000e-06])

    References:
        Mishchenko & Defazio, Prodigy: An Expeditiously Adaptive Parameter-Free Learner,
        ICML 2024. https://arxiv.org/abs/2306.06101
    """
    beta1, beta2 = betas
    b3 = beta2**0.5 if beta3 is None else beta3

    def init_fn(params):
        # At least float32: the initial step size (1e-6) and its square underflow in float16
        # (optax keeps the params' dtype, and its float16 Prodigy divides 0 by 0).
        dtype = torch.promote_types(tree_dtype(params, "lowest"), torch.float32)
        device = params_device(params)
        zeros = lambda: tree_map(lambda p: torch.zeros_like(p, dtype=_wide(p.dtype)), params)  # noqa: E731
        return ProdigyState(
            exp_avg=zeros(),
            exp_avg_sq=zeros(),
            grad_sum=zeros(),
            params0=tree_map(lambda p: p.detach().clone(), params),
            estim_lr=torch.tensor(estim_lr0, dtype=dtype, device=device),
            numerator_weighted=torch.zeros((), dtype=dtype, device=device),
            count=torch.zeros((), dtype=torch.int64, device=device),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "prodigy")
        check_like(updates, params, "prodigy")
        if all(u is None for u in tree_flatten(updates)[0]):
            return updates, state
        count = state.count + 1
        sched = value_at(learning_rate, state.count)
        d = state.estim_lr
        t = count.to(torch.float64)
        bc = ((1 - beta2**t) ** 0.5) / (1 - beta1**t)
        dlr = (d * sched * bc).to(d.dtype)
        live = [u is not None for u in tree_flatten(updates)[0]]
        leaves = lambda tree: [x for x, keep in zip(tree_flatten(tree)[0], live) if keep]  # noqa: E731
        numerator = real_vdot(
            leaves(updates), [p0 - p for p0, p in zip(leaves(state.params0), leaves(params))]
        )
        g_scale = d if safeguard_warmup else dlr

        def moments(ops, gs, eas, eass, sums):
            new_ea, new_eas, new_sum = [], [], []
            for g, ea, eas_, s in zip(gs, eas, eass, sums):
                dg = d * g.to(ea.dtype)
                new_ea.append(beta1 * ea + (1 - beta1) * dg)
                new_eas.append(beta2 * eas_ + (1 - beta2) * dg * dg)
                new_sum.append(b3 * s + g_scale * dg / estim_lr0)
            return new_ea, new_eas, new_sum

        exp_avg, exp_avg_sq, grad_sum = map_leaves(
            moments,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
            state.grad_sum,
            keep=(0, 1, 2),
            what="prodigy",
        )
        numerator_weighted = b3 * state.numerator_weighted + (d / estim_lr0) * dlr * numerator
        denominator = torch.stack([s.abs().sum() for s in leaves(grad_sum)]).sum()
        estimate = estim_lr_coef * numerator_weighted / denominator
        estim_lr = torch.maximum(d, estimate.to(d.dtype))
        out = map_leaves(
            lambda ops, gs, eas, eass, ps: [
                -weight_decay * dlr * p - dlr * ea / (torch.sqrt(eas_) + d * eps)
                for ea, eas_, p in zip(eas, eass, ps)
            ],
            updates,
            exp_avg,
            exp_avg_sq,
            params,
            what="prodigy",
        )
        new_state = ProdigyState(
            exp_avg,
            exp_avg_sq,
            grad_sum,
            state.params0,
            estim_lr,
            numerator_weighted.to(d.dtype),
            count,
        )
        return out, new_state

    return GradientTransformation(init_fn, update_fn)
