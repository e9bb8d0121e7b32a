"""The Adam family: Adam, AMSGrad, Adamax, RAdam, AdaBelief, Yogi and Adan.

Every transform follows optax 0.2.8 (names, argument order, defaults, state fields and maths).
Where optax reuses `ScaleByAdamState` (RAdam, Yogi) so do we, so code that inspects optax
states ports unchanged. The shared pieces (the bias-corrected or Nesterov first moment, the
adaptive direction, RAdam's rectifier) are written once, below, as list helpers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, init_count, torch_names
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative, check_positive
from torchopt_fn.tree._math import (
    Count,
    bias_correction,
    bias_factor,
    infinity_moment,
    moment,
    next_count,
    tree_full_like,
    tree_zeros_like,
    walked_count,
)
from torchopt_fn.tree._ops import Ops, cast_like, map_leaves, scalar_shape

__all__ = [
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_radam",
    "scale_by_yogi",
]


# --------------------------------------------------------------------------- shared pieces


def corrections(ops: Ops, xs: list, b1: Scalar, b2: Scalar, count: Count) -> tuple:
    r"""Adam's bias corrections $(1-\beta_1^t, 1-\beta_2^t, \sqrt{1-\beta_2^t})$ for ``xs``.

    Each is one scalar, or (for leaves of several dtypes, or per-leaf counts) a list with one
    per leaf.
    """

    def make(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> tuple:
        bc2 = bias_factor(b2, t, dtype, device)
        return bias_factor(b1, t, dtype, device), bc2, torch.sqrt(bc2)

    return ops.scalar(xs, make, count)


def nesterov_mu_hat(ops: Ops, gs: list, mus: list, b1: Scalar, count: Count) -> list:
    r"""NAdam's look-ahead $\beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$,
    as new tensors in the updates' dtypes."""

    def make(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> tuple:
        ahead = bias_factor(b1, t + 1, dtype, device)
        return b1 / ahead, (1 - b1) / bias_factor(b1, t, dtype, device)

    c_mu, c_g = ops.scalar(gs, make, count)
    return ops.add_(cast_like(ops.mul(mus, c_mu), gs), ops.mul(gs, c_g))


def first_moment_hat(
    ops: Ops, gs: list, mus: list, b1: Scalar, count: Count, nesterov: bool
) -> list:
    r"""$\hat m_t = m_t / (1-\beta_1^t)$, or with ``nesterov`` NAdam's look-ahead; new tensors."""
    if nesterov:
        return nesterov_mu_hat(ops, gs, mus, b1, count)
    return bias_correction(ops, mus, b1, count)


def _differentiated(x: torch.Tensor) -> bool:
    """Whether autograd or `torch.func.grad` tracks ``x`` (a meta-gradient flows through it)."""
    return x.requires_grad or torch._C._functorch.is_gradtrackingtensor(x)


def _warn_if_differentiated(nus: list) -> None:
    r"""Meta-learning through $\sqrt{v}$ with $v = 0$ (a gradient that is exactly 0, a dead
    ReLU's) differentiates $\sqrt{\cdot}$ at 0: an infinite derivative, a NaN meta-gradient."""
    if torch.compiler.is_compiling() or not any(_differentiated(v) for v in nus):
        return
    warnings.warn(
        "Differentiating through an Adam-style update with eps_root=0: where a gradient is "
        "exactly 0 (dead ReLUs, unused embeddings), d sqrt(nu) is infinite and the "
        "meta-gradient NaN. Pass eps_root=1e-8 (optax's advice for meta-learning).",
        UserWarning,
        stacklevel=2,
    )


def adam_direction(
    ops: Ops,
    mus: list,
    nus: list,
    eps: Scalar,
    eps_root: Scalar,
    bias: tuple | None = None,
    *,
    fresh: bool = False,
) -> list:
    r"""$\hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)$, new tensors.

    ``bias`` is `corrections`' ``(bc1, bc2, sqrt_bc2)``, giving $\hat m = m / bc_1$ and
    $\hat v = v / bc_2$, or `None` for moments corrected already. With ``eps_root`` 0 the
    denominator is torch's, $\sqrt{v} / \sqrt{bc_2} + \epsilon$, with $bc_1$ folded into it.
    ``fresh`` says ``mus`` are temporaries that may be overwritten.
    """
    bc1, bc2, sqrt_bc2 = bias if bias is not None else (None, None, None)
    if isinstance(eps_root, float) and eps_root == 0.0:
        _warn_if_differentiated(nus)
        denom = ops.sqrt(nus)
        if sqrt_bc2 is not None:
            denom = ops.div_(denom, sqrt_bc2)
    else:
        scaled = (
            ops.add_(ops.div(nus, bc2), eps_root) if bc2 is not None else ops.add(nus, eps_root)
        )
        denom = ops.sqrt_(scaled)
    denom = ops.add_(denom, eps)
    if bc1 is not None:
        denom = ops.mul_(denom, bc1)
    return ops.div_(mus, denom) if fresh else ops.div(mus, denom)


def radam_rectifier(
    b2: Scalar, count: torch.Tensor, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""RAdam's $(\rho_t, r_t)$ at step $t$ = ``count``, as tensors of ``dtype`` (count-shaped).

    $\rho_\infty = 2/(1-\beta_2) - 1$, $\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)$ and
    $r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}$.
    For $\rho_t < 4$ the radicand is negative; those steps never use $r_t$, and clamping it
    keeps $r_t$ finite so that gradients taken through a `torch.where` are not NaN.
    """
    t = count.to(device=device, dtype=dtype)
    beta2 = torch.as_tensor(b2, dtype=dtype, device=device)
    beta2_t = torch.pow(beta2, t)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
    radicand = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    return rho_t, torch.sqrt(torch.clamp(radicand, min=0.0))


def _check_betas(b1: Scalar, b2: Scalar, eps: Scalar, eps_root: Scalar = 0.0) -> None:
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)


# --------------------------------------------------------------------------- Adam


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`: step count, first moment ``mu``, second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_adam().init({"w": torch.zeros(2)}).count
        tensor(0)
    """

    count: torch.Tensor
    mu: Any
    nu: Any

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq")


def _adam_init(
    mu_dtype: torch.dtype | None = None,
    nu_dtype: torch.dtype | None = None,
    per_leaf_count: bool = False,
):
    def init_fn(params):
        return ScaleByAdamState(
            count=init_count(params, per_leaf=per_leaf_count),
            mu=tree_zeros_like(params, dtype=mu_dtype),
            nu=tree_zeros_like(params, dtype=nu_dtype),
        )

    return init_fn


@record_hyperparams
def scale_by_adam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: torch.dtype | None = None,
    per_leaf_count: bool = False,
    bias_correction: str = "moments",
) -> GradientTransformation:
    r"""Rescale updates by Adam's bias-corrected moment estimates.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $\hat m_t = m_t / (1-\beta_1^t)$, $\hat v_t = v_t / (1-\beta_2^t)$,
    $u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$.
    With ``nesterov`` (NAdam),
    $\hat m_t = \beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$.

    ``bias_correction="step"`` is the Adam paper's "efficient" form (Algorithm 1's note; TF1's
    and BERT's AdamW): $u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\, m_t /
    (\sqrt{v_t + \epsilon_{root}} + \epsilon)$, which adds $\epsilon$ before the correction,
    so it weighs $\sqrt{1-\beta_2^t}$ times less early on; ``"none"`` drops the correction,
    $u_t = m_t / (\sqrt{v_t + \epsilon_{root}} + \epsilon)$.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root; use a small positive value when
            differentiating through the update (the gradient of $\sqrt{x}$ at 0 is infinite).
        mu_dtype: dtype of the first moment (default: the params').
        nesterov: use Nesterov momentum (NAdam).
        nu_dtype: dtype of the second moment (default: the params'); optax lacks it.
        per_leaf_count: count each leaf's steps, as torch.optim counts each parameter's: a
            leaf whose update is `None` skips the step (its count stays, and its bias
            corrections follow its own count). Default: one count, as in optax.
        bias_correction: ``"moments"`` (optax's and torch's), ``"step"`` or ``"none"``.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)``, a negative ``eps``/``eps_root``, or
            another ``bias_correction`` (or ``nesterov`` with one other than ``"moments"``).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adam()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1.0000, -1.0000])

    References:
        Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
        https://arxiv.org/abs/1412.6980 — Dozat, Incorporating Nesterov Momentum into Adam, 2016.

    torch.optim equivalent: `torch.optim.Adam` is
    ``chain(scale_by_adam(), scale_by_learning_rate(lr))``.
    """
    _check_betas(b1, b2, eps, eps_root)
    if bias_correction not in ("moments", "step", "none"):
        raise ValueError(
            f'bias_correction must be "moments", "step" or "none", got {bias_correction!r}.'
        )
    if nesterov and bias_correction != "moments":
        raise ValueError('nesterov needs bias_correction="moments" (NAdam corrects moments).')

    def step_size(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.sqrt(bias_factor(b2, t, dtype, device)) / bias_factor(b1, t, dtype, device)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus, count):
            count = next_count(count)
            mus = moment(ops, gs, mus, b1, order=1)
            nus = moment(ops, gs, nus, b2, order=2)
            if bias_correction != "moments":
                out = adam_direction(ops, mus, nus, eps, eps_root)
                if bias_correction == "step":
                    out = ops.mul_(out, ops.scalar(out, step_size, count))
                return out, mus, nus, count
            bc1, bc2, sqrt_bc2 = corrections(ops, mus, b1, b2, count)
            if nesterov:
                mu_hat = nesterov_mu_hat(ops, gs, mus, b1, count)
                out = adam_direction(
                    ops, mu_hat, nus, eps, eps_root, (None, bc2, sqrt_bc2), fresh=True
                )
            else:
                out = adam_direction(ops, mus, nus, eps, eps_root, (bc1, bc2, sqrt_bc2))
            return out, mus, nus, count

        out, mu, nu, count = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1, 2),
            shapes={2: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_adam",
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(_adam_init(mu_dtype, nu_dtype, per_leaf_count), update_fn)


# --------------------------------------------------------------------------- AMSGrad


class ScaleByAmsgradState(NamedTuple):
    """State of `scale_by_amsgrad`: step count, moments ``mu``, ``nu`` and max ``nu_max``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_amsgrad().init({"w": torch.zeros(2)}).nu_max
        {'w': tensor([0., 0.])}
    """

    count: torch.Tensor
    mu: Any
    nu: Any
    nu_max: Any


@record_hyperparams
def scale_by_amsgrad(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Rescale updates by AMSGrad: Adam with a non-decreasing second moment.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $\hat m_t = m_t / (1-\beta_1^t)$, $\hat v_t = v_t / (1-\beta_2^t)$,
    $\hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, \hat v_t)$,
    $u_t = \hat m_t / (\sqrt{\hat v^{\max}_t + \epsilon_{root}} + \epsilon)$.
    As in optax, the maximum is taken over the *bias-corrected* second moment
    (turn ``bias_correction_nu`` off for the paper's raw maximum).

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root (keep it positive when differentiating
            through the update).
        mu_dtype: dtype of the first moment (default: the params').
        bias_correction_mu: divide the first moment by $1-\beta_1^t$.
        bias_correction_nu: divide the second moment by $1-\beta_2^t$ before the maximum.
        nu_dtype: dtype of the second moment and its maximum (default: the params'); optax
            lacks it.

    Returns:
        A `GradientTransformation` with state `ScaleByAmsgradState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_amsgrad()
        >>> state = tx.init({"w": torch.zeros(2)})
        >>> u, state = tx.update({"w": torch.tensor([2.0, -3.0])}, state)
        >>> u, state = tx.update({"w": torch.tensor([0.0, 0.0])}, state)
        >>> u["w"]  # scale_by_adam gives 0.6701: the maximum keeps the larger first-step nu
        tensor([ 0.4737, -0.4737])

    References:
        Reddi, Kale and Kumar, On the Convergence of Adam and Beyond, ICLR 2018.
        https://openreview.net/forum?id=ryQu7f-RZ

    torch.optim: ``Adam(amsgrad=True)`` is close but not equal: it takes the maximum of the
    raw second moment and bias-corrects afterwards.
    """
    _check_betas(b1, b2, eps, eps_root)

    def init_fn(params):
        return ScaleByAmsgradState(
            count=init_count(params),
            mu=tree_zeros_like(params, dtype=mu_dtype),
            nu=tree_zeros_like(params, dtype=nu_dtype),
            nu_max=tree_zeros_like(params, dtype=nu_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1

        def step(ops, gs, mus, nus, maxima):
            mus = moment(ops, gs, mus, b1, order=1)
            nus = moment(ops, gs, nus, b2, order=2)
            mu_hat = bias_correction(ops, mus, b1, count) if bias_correction_mu else mus
            nu_hat = bias_correction(ops, nus, b2, count) if bias_correction_nu else nus
            maxima = ops.maximum(maxima, nu_hat)
            return adam_direction(ops, mu_hat, maxima, eps, eps_root), mus, nus, maxima

        out, mu, nu, nu_max = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            state.nu_max,
            keep=(None, 0, 1, 2),
            complex_as_real=True,
            batchable=True,
            what="scale_by_amsgrad",
        )
        return out, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adamax


class ScaleByAdamaxState(ScaleByAdamState):
    """State of `scale_by_adamax`: a `ScaleByAdamState` whose ``nu`` is the infinity norm.

    It is `ScaleByAdamState` (as in optax) under its own name, so that the `Optimizer` adapter
    stores ``nu`` under torch's key for it, ``exp_inf``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.scale_by_adamax().init({"w": torch.zeros(2)})
        >>> isinstance(state, tf.ScaleByAdamState), state.nu
        (True, {'w': tensor([0., 0.])})
    """

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_inf")


@record_hyperparams
def scale_by_adamax(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""Rescale updates by Adamax, Adam with an infinity-norm second moment.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \max(\beta_2 v_{t-1}, |g_t| + \epsilon)$,
    $u_t = m_t / ((1-\beta_1^t)\, v_t)$. The infinity moment needs no bias correction.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the infinity moment, in ``[0, 1]``.
        eps: added to $|g_t|$ so the denominator is positive; must be ``>= 0``.
        per_leaf_count: count each leaf's steps, as torch.optim does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdamState` (``nu`` holds the
        infinity moment), as in optax.

    Raises:
        ValueError: for ``b1`` outside ``[0, 1)``, ``b2`` outside ``[0, 1]`` or a negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adamax()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"].round(decimals=4)
        tensor([ 1., -1.])

    References:
        Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015, §7.1.
        https://arxiv.org/abs/1412.6980

    torch.optim equivalent: ``Adamax(lr, betas=(b1, b2), eps=eps)`` is
    ``chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(lr))``.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    check_non_negative("eps", eps)

    def init_fn(params):
        return ScaleByAdamaxState(*_adam_init(per_leaf_count=per_leaf_count)(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus, count):
            count = next_count(count)
            mus = moment(ops, gs, mus, b1, order=1)
            nus = infinity_moment(ops, gs, nus, b2, eps)
            return ops.div_(bias_correction(ops, mus, b1, count), nus), mus, nus, count

        out, mu, nu, count = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1, 2),
            shapes={2: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_adamax",
        )
        return out, ScaleByAdamaxState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- RAdam


@record_hyperparams
def scale_by_radam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    threshold: Scalar = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Rescale updates by Rectified Adam (RAdam).

    With Adam's $\hat m_t$, $\hat v_t$, let $\rho_\infty = 2/(1-\beta_2) - 1$,
    $\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)$ and
    $r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}$.
    Then $u_t = r_t \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$ when
    $\rho_t \ge$ ``threshold`` (the variance of the adaptive step is tractable) and
    $u_t = \hat m_t$ (momentum SGD) before that. With ``nesterov``, $\hat m_t$ is NAdam's
    look-ahead moment (see `scale_by_adam`).

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``(0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        threshold: the $\rho_t$ from which the rectified adaptive step is used, ``>= 4``
            (below 4, $r_t$ is the square root of a negative number).
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdamState`, as in optax.

    Raises:
        ValueError: for ``b1`` outside ``[0, 1)``, ``b2`` outside ``(0, 1)``, a negative
            ``eps``/``eps_root`` or a ``threshold`` below 4.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_radam()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"].round(decimals=4)  # the first steps are momentum SGD
        tensor([ 2., -3.])

    References:
        Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
        https://arxiv.org/abs/1908.03265

    torch.optim: ``RAdam`` is close but not equal: it adds ``eps`` to the square root of the
    uncorrected second moment and switches at $\rho_t > 5$.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0, low_inclusive=False)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    check_in_range("threshold", threshold, 4.0, math.inf)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1

        def step(ops, gs, mus, nus):
            mus = moment(ops, gs, mus, b1, order=1)
            nus = moment(ops, gs, nus, b2, order=2)
            mu_hat = first_moment_hat(ops, gs, mus, b1, count, nesterov)
            _, bc2, sqrt_bc2 = corrections(ops, mus, b1, b2, count)
            rho, r = ops.scalar(mu_hat, lambda t, dt, dev: radam_rectifier(b2, t, dt, dev), count)
            adaptive = adam_direction(ops, mu_hat, nus, eps, eps_root, (None, bc2, sqrt_bc2))
            rectify = (
                rho >= threshold if not isinstance(rho, list) else [x >= threshold for x in rho]
            )
            return ops.where(rectify, ops.mul_(adaptive, r), mu_hat), mus, nus

        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_radam",
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(_adam_init(), update_fn)


# --------------------------------------------------------------------------- AdaBelief


class ScaleByBeliefState(NamedTuple):
    """State of `scale_by_belief`: step count, first moment ``mu``, belief ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_belief().init({"w": torch.zeros(2)})._fields
        ('count', 'mu', 'nu')
    """

    count: torch.Tensor
    mu: Any
    nu: Any


@record_hyperparams
def scale_by_belief(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Rescale updates by AdaBelief: Adam with the variance of the gradient around its mean.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$,
    $s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}$,
    $\hat m_t = m_t / (1-\beta_1^t)$, $\hat s_t = s_t / (1-\beta_2^t)$,
    $u_t = \hat m_t / (\sqrt{\hat s_t} + \epsilon)$. With ``nesterov``, $\hat m_t$ is NAdam's
    look-ahead moment (see `scale_by_adam`).

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the belief, in ``[0, 1)``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added to the belief at every step (stored in the state), ``>= 0``; keep it
            positive when differentiating through the update.
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` with state `ScaleByBeliefState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_belief(b1=0.5, b2=0.5, eps=0.0, eps_root=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 2., -2.])

    References:
        Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
        Gradients, NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """
    _check_betas(b1, b2, eps, eps_root)

    def init_fn(params):
        return ScaleByBeliefState(
            count=init_count(params), mu=tree_zeros_like(params), nu=tree_zeros_like(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1

        def step(ops, gs, mus, nus):
            mus = moment(ops, gs, mus, b1, order=1)
            nus = ops.add_(moment(ops, ops.sub(gs, mus), nus, b2, order=2), eps_root)
            mu_hat = first_moment_hat(ops, gs, mus, b1, count, nesterov)
            _, bc2, sqrt_bc2 = corrections(ops, mus, b1, b2, count)
            bias = (None, bc2, sqrt_bc2)
            return adam_direction(ops, mu_hat, nus, eps, 0.0, bias, fresh=True), mus, nus

        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_belief",
        )
        return out, ScaleByBeliefState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Yogi


@record_hyperparams
def scale_by_yogi(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-3,
    eps_root: Scalar = 0.0,
    initial_accumulator_value: Scalar = 1e-6,
) -> GradientTransformation:
    r"""Rescale updates by Yogi: Adam whose second moment moves additively towards $g^2$.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$,
    $v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2$, both starting
    at ``initial_accumulator_value``; $\hat m_t = m_t / (1-\beta_1^t)$,
    $\hat v_t = v_t / (1-\beta_2^t)$ and
    $u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: rate of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added inside the square root, ``>= 0``.
        initial_accumulator_value: the starting value of both moments, ``> 0``.

    Returns:
        A `GradientTransformation` whose state is a `ScaleByAdamState`, as in optax.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)``, a negative ``eps``/``eps_root`` or a
            non-positive ``initial_accumulator_value``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_yogi(eps=0.0, initial_accumulator_value=1e-30)
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"].round(decimals=4)
        tensor([ 1., -1.])

    References:
        Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018.
        https://papers.nips.cc/paper/8186-adaptive-methods-for-nonconvex-optimization
    """
    _check_betas(b1, b2, eps, eps_root)
    check_positive("initial_accumulator_value", initial_accumulator_value)

    def init_fn(params):
        return ScaleByAdamState(
            count=init_count(params),
            mu=tree_full_like(params, initial_accumulator_value),
            nu=tree_full_like(params, initial_accumulator_value),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1

        def step(ops, gs, mus, nus):
            mus = moment(ops, gs, mus, b1, order=1)
            squares = ops.square(cast_like(gs, nus))
            signed = ops.mul(ops.sign(ops.sub(nus, squares)), squares)
            nus = ops.add(nus, signed, alpha=-(1 - b2))
            bias = corrections(ops, mus, b1, b2, count)
            return adam_direction(ops, mus, nus, eps, eps_root, bias), mus, nus

        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_yogi",
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adan


class ScaleByAdanState(NamedTuple):
    """State of `scale_by_adan`: moments ``m``, ``v``, ``n``, previous update ``g``, count ``t``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_adan().init({"w": torch.zeros(2)})._fields
        ('m', 'v', 'n', 'g', 't')
    """

    m: Any
    v: Any
    n: Any
    g: Any
    t: torch.Tensor


@record_hyperparams
def scale_by_adan(
    b1: Scalar = 0.98,
    b2: Scalar = 0.92,
    b3: Scalar = 0.99,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    r"""Rescale updates by Adan, adaptive Nesterov momentum (Algorithm 1 of the paper).

    With $\Delta_t = g_t - g_{t-1}$ ($\Delta_1 = 0$):
    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t$,
    $n_t = \beta_3 n_{t-1} + (1-\beta_3)(g_t + (1-\beta_2)\Delta_t)^2$, each divided by
    $1-\beta^t$ ($\hat m_t, \hat v_t, \hat n_t$), and
    $u_t = (\hat m_t + (1-\beta_2)\hat v_t) / (\sqrt{\hat n_t + \epsilon_{root}} + \epsilon)$.

    optax (and we) write the decays as in the paper's code, i.e. $\beta$ here is $1-\beta$
    in the paper's notation.

    Args:
        b1: decay of the gradient average, in ``[0, 1)``.
        b2: decay of the gradient-difference average, in ``[0, 1)``.
        b3: decay of the squared term, in ``[0, 1)``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added inside the square root, ``>= 0``.

    Returns:
        A `GradientTransformation` with state `ScaleByAdanState`.

    Raises:
        ValueError: for a decay outside ``[0, 1)`` or a negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adan(eps=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"].round(decimals=4)
        tensor([ 1., -1.])

    References:
        Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
        Models, 2022. https://arxiv.org/abs/2208.06677
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_in_range("b3", b3, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)

    def init_fn(params):
        zeros = [tree_zeros_like(params) for _ in range(4)]
        return ScaleByAdanState(*zeros, t=init_count(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        started = state.t > 0
        t = state.t + 1

        def step(ops, gs, ms, vs, ns, prevs):
            news = cast_like(gs, prevs)
            diffs = ops.where_or_zero(started, ops.sub(news, prevs))
            ms = moment(ops, gs, ms, b1, order=1)
            vs = moment(ops, diffs, vs, b2, order=1)
            ns = moment(ops, ops.add(gs, diffs, alpha=1 - b2), ns, b3, order=2)
            m_hat = bias_correction(ops, ms, b1, t)
            v_hat = bias_correction(ops, vs, b2, t)
            n_hat = bias_correction(ops, ns, b3, t)
            numerators = ops.add(m_hat, v_hat, alpha=1 - b2)
            return adam_direction(ops, numerators, n_hat, eps, eps_root), ms, vs, ns, news

        out, m, v, n, g = map_leaves(
            step,
            updates,
            state.m,
            state.v,
            state.n,
            state.g,
            keep=(None, 0, 1, 2, 3),
            complex_as_real=True,
            batchable=True,
            what="scale_by_adan",
        )
        return out, ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)

    return GradientTransformation(init_fn, update_fn)
