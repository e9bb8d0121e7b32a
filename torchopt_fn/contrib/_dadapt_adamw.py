"""D-Adaptation for AdamW: a learning rate estimated from the distance to the solution."""

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
from torchopt_fn._validate import (
    check_in_range,
    check_non_negative,
    check_positive,
    require_params,
)
from torchopt_fn.tree._flatten import tree_flatten, tree_map
from torchopt_fn.tree._math import bias_factor, real_vdot, tree_dtype
from torchopt_fn.tree._ops import Shared, cast_like, check_like, compute_dtype, map_leaves

__all__ = ["DAdaptAdamWState", "dadapt_adamw"]


class DAdaptAdamWState(NamedTuple):
    """State of `dadapt_adamw`.

    Attributes:
        exp_avg: Adam's first moment, of the gradients scaled by $d\\,\\eta$.
        exp_avg_sq: Adam's second moment, of the raw gradients.
        grad_sum: the weighted sum $s$ of the scaled gradients.
        estim_lr: the distance estimate $d$.
        numerator_weighted: the weighted sum of $d\\,\\eta \\langle g, s / \\sqrt{v}\\rangle$.
        count: the step count.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tf.contrib.dadapt_adamw().init({"w": torch.ones(1)}).estim_lr
        tensor(1.0000e-06)
    """

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    estim_lr: torch.Tensor
    numerator_weighted: torch.Tensor
    count: torch.Tensor


@record_hyperparams
def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[Scalar, Scalar] = (0.9, 0.999),
    eps: Scalar = 1e-8,
    estim_lr0: Scalar = 1e-6,
    weight_decay: Scalar = 0.0,
) -> GradientTransformation:
    r"""D-Adaptation AdamW (Defazio & Mishchenko, 2023): AdamW with an estimated step size.

    With $\eta_t$ = ``learning_rate`` (a multiplier, usually a schedule from 1),
    $\lambda_t = d_t \eta_t \sqrt{1-\beta_2^t} / (1-\beta_1^t)$ and
    $\beta_3 = \sqrt{\beta_2}$:

    $m_t = \beta_1 m_{t-1} + (1-\beta_1)\lambda_t g_t$,
    $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $s_t = \beta_3 s_{t-1} + (1-\beta_3)\lambda_t g_t$,
    $r_t = \beta_3 r_{t-1} + (1-\beta_3)\lambda_t \langle g_t, s_{t-1} / (\sqrt{v_{t-1}} +
    \epsilon)\rangle$,
    $d_{t+1} = \max\big(d_t, r_t / ((1-\beta_3)\|s_t\|_1)\big)$, and
    $u_t = -m_t / (\sqrt{v_t} + \epsilon) - \lambda_t w\, x_t$ ($w$ = ``weight_decay``,
    decoupled). Needs ``params``.

    Differences from optax: moments, sums and estimates are kept in at least float32 (optax
    keeps the params' dtype; in float16 the scaled sum $s$ underflows to 0 and the estimate
    is 0 / 0); a step in which no parameter has a gradient changes nothing; the sums
    and $\|s\|_1$ are over the parameters that have one. No torch.optim equivalent.

    Args:
        learning_rate: the multiplier $\eta_t$ of the estimated step (a float, a 0-d tensor
            or a schedule), ``>= 0``.
        betas: $(\beta_1, \beta_2)$ of Adam, each in ``[0, 1)``.
        eps: added to $\sqrt{v}$, ``>= 0``.
        estim_lr0: the initial (under-)estimate $d_0$, ``> 0``.
        weight_decay: AdamW's decoupled weight decay, ``>= 0``.

    Returns:
        A `GradientTransformation` with state `DAdaptAdamWState`.

    Raises:
        ValueError: for a hyperparameter outside its range; at ``update``, without ``params``.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.dadapt_adamw(estim_lr0=0.1)
        >>> params = {"w": torch.ones(1)}
        >>> u, state = tx.update({"w": torch.ones(1)}, tx.init(params), params)
        >>> u["w"]  # the first step is d0 times Adam's
        tensor([-0.1000])

    References:
        Defazio & Mishchenko, Learning-Rate-Free Learning by D-Adaptation, ICML 2023.
        https://arxiv.org/abs/2301.07733
    """
    beta1, beta2 = betas
    check_non_negative("learning_rate", learning_rate)
    check_in_range("betas[0]", beta1, 0.0, 1.0)
    check_in_range("betas[1]", beta2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_positive("estim_lr0", estim_lr0)
    check_non_negative("weight_decay", weight_decay)
    sb2 = beta2**0.5

    def init_fn(params):
        # At least float32: in float16 the sum s (~1e-10 at first) underflows to 0.
        dtype = compute_dtype(tree_dtype(params, "lowest"))
        device = params_device(params)
        zeros = lambda: tree_map(  # noqa: E731
            lambda p: torch.zeros_like(p, dtype=compute_dtype(p.dtype)), params
        )
        return DAdaptAdamWState(
            exp_avg=zeros(),
            exp_avg_sq=zeros(),
            grad_sum=zeros(),
            estim_lr=torch.tensor(estim_lr0, dtype=dtype, device=device),
            numerator_weighted=torch.zeros((), dtype=dtype, device=device),
            count=torch.zeros((), dtype=torch.int64, device=device),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "dadapt_adamw")
        check_like(updates, params, "dadapt_adamw")
        if all(u is None for u in tree_flatten(updates)[0]):
            return updates, state
        d = state.estim_lr
        dtype, device = d.dtype, d.device
        count = state.count + 1
        sched = value_at(learning_rate, state.count)
        bc = torch.sqrt(bias_factor(beta2, count, dtype, device)) / bias_factor(
            beta1, count, dtype, device
        )
        dlr = (d * sched * bc).to(dtype)

        def step(ops, gs, eas, eass, sums, ps, nw):
            gs, ps = cast_like(gs, eas), cast_like(ps, eas)
            c1, c3, c_wd = ops.scalar(
                eas,
                lambda dt, dev: tuple(
                    c.to(dev, dt) for c in ((1 - beta1) * dlr, (1 - sb2) * dlr, -weight_decay * dlr)
                ),
            )
            weighted = ops.div(sums, ops.add_(ops.sqrt(eass), eps))
            numerator = real_vdot(gs, weighted).to(dtype)
            new_ea = ops.add_(ops.mul(eas, beta1), ops.mul(gs, c1))
            new_eas = ops.addcmul_(ops.mul(eass, beta2), gs, gs, 1 - beta2)
            new_sum = ops.add_(ops.mul(sums, sb2), ops.mul(gs, c3))
            l1 = torch.stack([s.abs().sum().to(dtype) for s in new_sum]).sum()
            nw = sb2 * nw + (1 - sb2) * dlr * numerator
            estim_lr = torch.maximum(d, nw / ((1 - sb2) * l1))
            adam = ops.div(new_ea, ops.add_(ops.sqrt(new_eas), eps))
            return ops.sub(ops.mul(ps, c_wd), adam), new_ea, new_eas, new_sum, (estim_lr, nw)

        out, exp_avg, exp_avg_sq, grad_sum, (estim_lr, nw) = map_leaves(
            step,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
            state.grad_sum,
            params,
            Shared(state.numerator_weighted),
            keep=(None, 0, 1, 2, 4),
            what="dadapt_adamw",
        )
        return out, DAdaptAdamWState(exp_avg, exp_avg_sq, grad_sum, estim_lr, nw, count)

    return GradientTransformation(init_fn, update_fn)
