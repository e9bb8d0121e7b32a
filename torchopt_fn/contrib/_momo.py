"""MoMo: momentum (and Adam) with a Polyak-type step size from a model of the loss."""

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
    check_number,
    require_params,
)
from torchopt_fn.tree._flatten import tree_flatten, tree_map
from torchopt_fn.tree._math import bias_factor, real_vdot, tree_dtype
from torchopt_fn.tree._ops import Shared, check_like, compute_dtype, map_leaves

__all__ = ["MomoAdamState", "MomoState", "momo", "momo_adam"]

# optax compares with ``jnp.finfo(float).eps``, float64's, whatever the params' dtype.
_TINY = torch.finfo(torch.float64).eps


class MomoState(NamedTuple):
    """State of `momo`.

    Attributes:
        exp_avg: the momentum $d$ (an average of the gradients).
        barf: the same average of the losses, $\\bar f$.
        gamma: the same average of $\\langle g_k, x_k\\rangle$, $\\gamma$.
        lb: the lower bound of the loss in use.
        count: the step count.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tf.contrib.momo(lower_bound=0.5).init({"w": torch.ones(1)}).lb
        tensor(0.5000)
    """

    exp_avg: Any
    barf: torch.Tensor
    gamma: torch.Tensor
    lb: torch.Tensor
    count: torch.Tensor


class MomoAdamState(NamedTuple):
    """State of `momo_adam`: `MomoState`'s fields and Adam's second moment ``exp_avg_sq``.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tf.contrib.momo_adam().init({"w": torch.ones(1)})._fields
        ('exp_avg', 'exp_avg_sq', 'barf', 'gamma', 'lb', 'count')
    """

    exp_avg: Any
    exp_avg_sq: Any
    barf: torch.Tensor
    gamma: torch.Tensor
    lb: torch.Tensor
    count: torch.Tensor


def _check(learning_rate: ScalarOrSchedule, lower_bound: Scalar, weight_decay: Scalar) -> None:
    check_non_negative("learning_rate", learning_rate)
    check_number("lower_bound", lower_bound)
    check_non_negative("weight_decay", weight_decay)


def _scalars(params: Any, lower_bound: Scalar) -> tuple[torch.Tensor, ...]:
    """``barf``, ``gamma`` and ``lb`` at init, in at least float32 (optax: the params' dtype)."""
    dtype = compute_dtype(tree_dtype(params, "lowest"))
    device = params_device(params)
    zero = torch.zeros((), dtype=dtype, device=device)
    return zero, zero.clone(), torch.as_tensor(lower_bound, dtype=dtype, device=device).clone()


def _need_value(value: Any, name: str) -> None:
    if value is None:
        raise ValueError(f"{name} needs the loss: call update(updates, state, params, value=loss).")


def _dot(xs: list[torch.Tensor], ys: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """optax's ``tree.vdot`` over lists of leaves, in ``dtype`` (a float16 sum overflows)."""
    return real_vdot([x.to(dtype) for x in xs], [y.to(dtype) for y in ys])


def _step_size(
    gap: torch.Tensor, sq_norm: torch.Tensor, cap: torch.Tensor | Scalar
) -> torch.Tensor:
    """$\\min(cap, \\max(gap, 0) / \\|d\\|^2)$, with 0 for $\\|d\\|^2$ below float64's eps."""
    small = sq_norm <= _TINY
    # The unselected branch divides by a safe 1, so gradients through it stay finite.
    t1 = torch.clamp(gap, min=0.0) / torch.where(small, torch.ones_like(sq_norm), sq_norm)
    return torch.minimum(torch.as_tensor(cap, dtype=t1.dtype), torch.where(small, 0.0, t1))


@record_hyperparams
def momo(
    learning_rate: ScalarOrSchedule = 1.0,
    beta: Scalar = 0.9,
    lower_bound: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformation:
    r"""MoMo (Schaipp et al., 2023): SGD with momentum and a Polyak-type step size.

    The loss is modelled by averages (over the steps, with decay $\beta$, the first step
    taking its values whole) of the losses $\bar f_t$, the gradients $d_t$ and
    $\gamma_t = \text{avg}\langle g_k, x_k\rangle$. With $\alpha_t$ = ``learning_rate`` and
    $\rho = 1 + \alpha_t \lambda$ ($\lambda$ = ``weight_decay``), the step is
    $\tau_t = \min\big(\alpha_t, \max(\rho(\bar f_t - f_* - \gamma_t) + \langle d_t,
    x_t\rangle, 0) / \|d_t\|^2\big)$ and $u_t = -\frac{\alpha_t\lambda}{\rho} x_t - \tau_t d_t$.
    $f_*$ is ``lower_bound`` ($f_0$); with ``adapt_lower_bound`` it is an estimate,
    lowered to $\max(c / (2\rho), f_0)$ when the model's
    $c = \rho(\bar f_t - \gamma_t) + \langle d_t, x_t\rangle$ falls below $\rho f_*$, and
    after the step set to
    $\max(\bar f_t + \langle d_t, x_t\rangle - \gamma_t - \tau_t \|d_t\|^2 / 2, f_0)$.

    ``update`` needs ``params`` and the loss at them, ``value=`` (a float or 0-d tensor).
    Differences from optax: the scalar state is kept in at least float32 (optax: the params'
    dtype); a step in which no parameter has a gradient changes nothing; sums are over the
    parameters that have one. No torch.optim equivalent.

    Args:
        learning_rate: the largest step $\alpha_t$ (a float, a 0-d tensor or a schedule),
            ``>= 0``; large values (1.0) are fine.
        beta: the momentum $\beta$, in ``[0, 1)``.
        lower_bound: a lower bound $f_*$ of the loss (0 for most losses).
        weight_decay: $\lambda$, ``>= 0``.
        adapt_lower_bound: estimate $f_*$ on the fly, starting from ``lower_bound``.

    Returns:
        A `GradientTransformation` with state `MomoState`.

    Raises:
        ValueError: for a hyperparameter outside its range; at ``update``, without
            ``params`` or ``value``.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.momo()
        >>> params = {"w": torch.tensor([1.0, 2.0, 3.0])}
        >>> f = lambda p: (p["w"] ** 2).sum()
        >>> g = {"w": 2 * params["w"]}
        >>> u, state = tx.update(g, tx.init(params), params, value=f(params))
        >>> f({"w": params["w"] + u["w"]})  # the step to the model's minimum: (14 + 28) / 56
        tensor(3.5000)

    References:
        Schaipp et al., MoMo: Momentum Models for Adaptive Learning Rates, ICML 2024.
        https://arxiv.org/abs/2305.07583
    """
    _check(learning_rate, lower_bound, weight_decay)
    check_in_range("beta", beta, 0.0, 1.0)

    def init_fn(params):
        barf, gamma, lb = _scalars(params, lower_bound)
        exp_avg = tree_map(torch.zeros_like, params)
        count = torch.zeros((), dtype=torch.int64, device=barf.device)
        return MomoState(exp_avg, barf, gamma, lb, count)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        require_params(params, "momo")
        _need_value(value, "momo")
        check_like(updates, params, "momo")
        if all(u is None for u in tree_flatten(updates)[0]):
            return updates, state
        dtype, device = state.barf.dtype, state.barf.device
        # The first step takes the averages' first values whole.
        bt = torch.where(state.count == 0, 0.0, torch.as_tensor(beta, dtype=dtype, device=device))
        alpha = torch.as_tensor(value_at(learning_rate, state.count), dtype=dtype, device=device)
        rho = 1 + alpha * weight_decay
        barf = bt * state.barf + (1 - bt) * torch.as_tensor(value, device=device).to(dtype)

        def step(ops, gs, eas, ps, scalars):
            gamma, lb = scalars
            bt_, keep = ops.scalar(eas, lambda dt, dev: (bt.to(dev, dt), (1 - bt).to(dev, dt)))
            eas = ops.add_(ops.mul(eas, bt_), ops.mul(gs, keep))
            gamma = bt * gamma + (1 - bt) * _dot(gs, ps, dtype)
            sq_norm = _dot(eas, eas, dtype)
            iprod = _dot(eas, ps, dtype)
            if adapt_lower_bound:
                cap = rho * (barf - gamma) + iprod
                lb = torch.where(cap < rho * lb, torch.clamp(cap / (2 * rho), min=lower_bound), lb)
            tau = _step_size(rho * (barf - lb - gamma) + iprod, sq_norm, alpha)
            if adapt_lower_bound:
                lb = torch.clamp((barf + iprod - gamma) - 0.5 * tau * sq_norm, min=lower_bound)
            shrink = -(alpha * weight_decay) / rho
            c_p, c_d = ops.scalar(ps, lambda dt, dev: (shrink.to(dev, dt), tau.to(dev, dt)))
            out = ops.sub(ops.mul(ps, c_p), ops.mul(eas, c_d))
            return out, eas, (gamma, lb)

        out, exp_avg, (gamma, lb) = map_leaves(
            step,
            updates,
            state.exp_avg,
            params,
            Shared((state.gamma, state.lb)),
            keep=(None, 0, 2),
            what="momo",
        )
        return out, MomoState(exp_avg, barf, gamma, lb, state.count + 1)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def momo_adam(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    lower_bound: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    adapt_lower_bound: bool = False,
) -> GradientTransformation:
    r"""MoMo-Adam (Schaipp et al., 2023): Adam(W) with a Polyak-type step size.

    `momo`'s model of the loss (averages with decay $\beta_1$ from zero, bias-corrected by
    $c_t = 1-\beta_1^t$) in Adam's metric $D_t = \epsilon + \sqrt{v_t / (1-\beta_2^t)}$:
    with $\rho = 1 + \alpha_t\lambda$,
    $\tau_t = \min\big(\alpha_t / c_t, \max(\rho(\bar f_t - c_t f_* - \gamma_t) + \langle
    d_t, x_t\rangle, 0) / \langle d_t, d_t / D_t\rangle\big)$ and
    $u_t = -\frac{\alpha_t\lambda}{\rho} x_t - \tau_t d_t / D_t$.

    ``update`` needs ``params`` and ``value=`` (the loss at them). Differences from optax as
    for `momo`. No torch.optim equivalent.

    Args:
        learning_rate: the largest step $\alpha_t$ (a float, a 0-d tensor or a schedule),
            ``>= 0``.
        b1: decay of the averages, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to Adam's denominator, ``>= 0``.
        lower_bound: a lower bound $f_*$ of the loss.
        weight_decay: $\lambda$, decoupled as in AdamW, ``>= 0``.
        adapt_lower_bound: estimate $f_*$ on the fly, starting from ``lower_bound``.

    Returns:
        A `GradientTransformation` with state `MomoAdamState`.

    Raises:
        ValueError: for a hyperparameter outside its range; at ``update``, without
            ``params`` or ``value``.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.momo_adam()
        >>> params = {"w": torch.tensor([1.0, 2.0])}
        >>> u, state = tx.update({"w": torch.ones(2)}, tx.init(params), params, value=1.0)
        >>> u["w"]  # tau = min(lr / (1 - b1), ...) = 0.1, times d / D = 0.1
        tensor([-0.0100, -0.0100])

    References:
        Schaipp et al., MoMo: Momentum Models for Adaptive Learning Rates, ICML 2024.
        https://arxiv.org/abs/2305.07583
    """
    _check(learning_rate, lower_bound, weight_decay)
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)

    def init_fn(params):
        barf, gamma, lb = _scalars(params, lower_bound)
        zeros = lambda: tree_map(torch.zeros_like, params)  # noqa: E731
        count = torch.zeros((), dtype=torch.int64, device=barf.device)
        return MomoAdamState(zeros(), zeros(), barf, gamma, lb, count)

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        require_params(params, "momo_adam")
        _need_value(value, "momo_adam")
        check_like(updates, params, "momo_adam")
        if all(u is None for u in tree_flatten(updates)[0]):
            return updates, state
        dtype, device = state.barf.dtype, state.barf.device
        count = state.count + 1
        alpha = torch.as_tensor(value_at(learning_rate, state.count), dtype=dtype, device=device)
        rho = 1 + alpha * weight_decay
        barf = b1 * state.barf + (1 - b1) * torch.as_tensor(value, device=device).to(dtype)
        bc1 = bias_factor(b1, count, dtype, device)
        bc2 = bias_factor(b2, count, dtype, device)

        def step(ops, gs, eas, eass, ps, scalars):
            gamma, lb = scalars
            eas = ops.add_(ops.mul(eas, b1), ops.mul(gs, 1 - b1))
            eass = ops.addcmul_(ops.mul(eass, b2), gs, gs, 1 - b2)
            c2 = ops.scalar(eass, lambda dt, dev: bc2.to(dev, dt))
            precond = ops.add_(ops.sqrt_(ops.div(eass, c2)), eps)
            weighted = ops.div(eas, precond)
            sq_norm = _dot(eas, weighted, dtype)
            gamma = b1 * gamma + (1 - b1) * _dot(gs, ps, dtype)
            iprod = _dot(eas, ps, dtype)
            if adapt_lower_bound:
                cap = rho * (barf - gamma) + iprod
                lb = torch.where(
                    cap < rho * bc1 * lb, torch.clamp(cap / (2 * bc1 * rho), min=lower_bound), lb
                )
            tau = _step_size(rho * (barf - bc1 * lb - gamma) + iprod, sq_norm, alpha / bc1)
            if adapt_lower_bound:
                lb = ((barf + iprod - gamma) - 0.5 * tau * sq_norm) / bc1
                lb = torch.clamp(lb, min=lower_bound)
            shrink = -(alpha * weight_decay) / rho
            c_p, c_d = ops.scalar(ps, lambda dt, dev: (shrink.to(dev, dt), tau.to(dev, dt)))
            out = ops.sub(ops.mul(ps, c_p), ops.mul(weighted, c_d))
            return out, eas, eass, (gamma, lb)

        out, exp_avg, exp_avg_sq, (gamma, lb) = map_leaves(
            step,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
            params,
            Shared((state.gamma, state.lb)),
            keep=(None, 0, 1, 3),
            what="momo_adam",
        )
        return out, MomoAdamState(exp_avg, exp_avg_sq, barf, gamma, lb, count)

    return GradientTransformation(init_fn, update_fn)


# The `Optimizer` adapter passes these the loss as ``value`` (from ``step(closure)``).
momo.takes_loss = True  # type: ignore[attr-defined]
momo_adam.takes_loss = True  # type: ignore[attr-defined]
