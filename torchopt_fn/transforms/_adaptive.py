"""Adaptive scalings beyond Adam: AMSGrad, Adamax, RAdam, RMS, Adagrad, Adadelta, and friends.

Every transform follows optax 0.2.8 (names, argument order, defaults, state fields and
maths). Where optax reuses `ScaleByAdamState` (Adamax, RAdam, Yogi) so do we, so code that
inspects optax states ports unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import GradientTransformation, record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative, check_positive
from torchopt_fn.transforms._adam import (
    ScaleByAdamState,
    adam_direction,
    adam_moments,
    bias_corrected_mu,
)
from torchopt_fn.transforms._common import init_count

__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByNovogradState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "scale_by_adadelta",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
    "scale_by_yogi",
]

Scalar = float | torch.Tensor


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
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)

    def init_fn(params):
        return ScaleByAmsgradState(
            count=init_count(params),
            mu=_tree.tree_zeros_like(params, dtype=mu_dtype),
            nu=_tree.tree_zeros_like(params),
            nu_max=_tree.tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = _tree.tree_update_moment(updates, state.mu, b1, order=1)
        nu = _tree.tree_update_moment_per_elem_norm(updates, state.nu, b2, order=2)
        count = state.count + 1
        mu_hat = _tree.tree_bias_correction(mu, b1, count) if bias_correction_mu else mu
        nu_eff = _tree.tree_bias_correction(nu, b2, count) if bias_correction_nu else nu
        nu_max = _tree.map_live(
            lambda ops, gs, olds, news: ops.maximum(olds, news),
            updates,
            state.nu_max,
            nu_eff,
            fill=state.nu_max,
        )
        out = _tree.map_live(
            lambda ops, gs, ms, vs: _tree.cast_like(adam_direction(ops, ms, vs, eps, eps_root), gs),
            updates,
            mu_hat,
            nu_max,
        )
        return out, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adamax


@record_hyperparams
def scale_by_adamax(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
) -> GradientTransformation:
    r"""Rescale updates by Adamax, Adam with an infinity-norm second moment.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \max(\beta_2 v_{t-1}, |g_t| + \epsilon)$,
    $u_t = m_t / ((1-\beta_1^t)\, v_t)$. The infinity moment needs no bias correction.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the infinity moment, in ``[0, 1]``.
        eps: added to $|g_t|$ so the denominator is positive; must be ``>= 0``.

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
        return ScaleByAdamState(
            count=init_count(params),
            mu=_tree.tree_zeros_like(params),
            nu=_tree.tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1
        mu = _tree.tree_update_moment(updates, state.mu, b1, order=1)
        nu = _tree.tree_update_infinity_moment(updates, state.nu, b2, eps)
        mu_hat = _tree.tree_bias_correction(mu, b1, count)
        out = _tree.map_live(
            lambda ops, gs, ms, vs: _tree.cast_like(ops.div(ms, vs), gs), updates, mu_hat, nu
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

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
    ro_inf = 2.0 / (1.0 - b2) - 1.0

    def init_fn(params):
        return ScaleByAdamState(
            count=init_count(params),
            mu=_tree.tree_zeros_like(params),
            nu=_tree.tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count, mu, nu, mu_hat, nu_hat = adam_moments(updates, state, b1, b2, nesterov)
        # rho_t and r_t are computed with tensor ops in the leaves' precision, so the
        # count may change under torch.compile without a recompile.
        t = count.to(_tree.compute_dtype(mu_hat))
        b2t = torch.pow(torch.as_tensor(b2, dtype=t.dtype, device=t.device), t)
        ro = ro_inf - 2 * t * b2t / (1 - b2t)
        # For 2 < rho_t < 4 the radicand is negative; that branch is never selected
        # (threshold >= 4), and clamping keeps r finite so that gradients taken through
        # torch.where below are not NaN.
        radicand = (ro - 4) * (ro - 2) * ro_inf / ((ro_inf - 4) * (ro_inf - 2) * ro)
        r = torch.sqrt(torch.clamp(radicand, min=0.0))
        rectify = ro >= threshold

        def direction(ops, gs, ms, vs):
            steps = adam_direction(ops, ms, vs, eps, eps_root)
            out = [torch.where(rectify, r.to(s.device, s.dtype) * s, m) for s, m in zip(steps, ms)]
            return _tree.cast_like(out, gs)

        out = _tree.map_live(direction, updates, mu_hat, nu_hat)
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- RMS / stddev


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms` without bias correction: the second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rms(initial_scale=1.0).init({"w": torch.zeros(2)})
        ScaleByRmsState(nu={'w': tensor([1., 1.])})
    """

    nu: Any


class ScaleByRmsWithCountState(NamedTuple):
    """State of `scale_by_rms` with ``bias_correction``: step count and second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rms(bias_correction=True).init({"w": torch.zeros(2)}).count
        tensor(0)
    """

    count: torch.Tensor
    nu: Any


def _rms_scaling(eps: Scalar, eps_in_sqrt: bool) -> Callable[..., list]:
    r"""``g / sqrt(v + eps)`` or ``g / (sqrt(v) + eps)`` over lists, cast to the updates' dtypes."""

    def fn(ops, gs, vs):
        denominators = ops.sqrt(ops.add(vs, eps)) if eps_in_sqrt else ops.add(ops.sqrt(vs), eps)
        return _tree.cast_like(ops.div(gs, denominators), gs)

    return fn


def _check_decay(decay: Scalar, bias_correction: bool) -> None:
    # decay = 1 is a constant second moment; with bias correction it divides by 1 - 1^t = 0.
    check_in_range("decay", decay, 0.0, 1.0, high_inclusive=not bias_correction)


@record_hyperparams
def scale_by_rms(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Rescale updates by the root of an exponential moving average of their squares (RMSProp).

    $v_t = \rho v_{t-1} + (1-\rho) g_t^2$ with $v_0$ = ``initial_scale``, optionally
    $\hat v_t = v_t / (1-\rho^t)$ (``bias_correction``), and
    $u_t = g_t / \sqrt{\hat v_t + \epsilon}$ (``eps_in_sqrt``) or
    $u_t = g_t / (\sqrt{\hat v_t} + \epsilon)$.

    Args:
        decay: the decay $\rho$, in ``[0, 1]`` (``[0, 1)`` with ``bias_correction``).
        eps: the stabilising $\epsilon$, ``>= 0``.
        initial_scale: the initial value of the second moment, ``>= 0``.
        eps_in_sqrt: add ``eps`` inside the square root (optax's default) or outside it
            (torch's).
        bias_correction: divide the second moment by $1-\rho^t$; the state then also counts
            steps (`ScaleByRmsWithCountState`).

    Returns:
        A `GradientTransformation` with state `ScaleByRmsState`, or
        `ScaleByRmsWithCountState` with ``bias_correction``.

    Raises:
        ValueError: for ``decay`` out of range or a negative ``eps``/``initial_scale``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_rms(decay=0.75, eps=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 2., -2.])

    References:
        Tieleman and Hinton, Lecture 6.5 - RMSProp, COURSERA: Neural Networks for Machine
        Learning, 2012. https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf

    torch.optim equivalent: ``RMSprop(lr, alpha=decay, eps=eps)`` is
    ``chain(scale_by_rms(decay, eps, eps_in_sqrt=False), scale_by_learning_rate(lr))``.
    """
    _check_decay(decay, bias_correction)
    check_non_negative("eps", eps)
    check_non_negative("initial_scale", initial_scale)
    scaling = _rms_scaling(eps, eps_in_sqrt)

    def init_fn(params):
        nu = _tree.tree_full_like(params, initial_scale)
        if bias_correction:
            return ScaleByRmsWithCountState(count=init_count(params), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        nu = _tree.tree_update_moment_per_elem_norm(updates, state.nu, decay, order=2)
        if bias_correction:
            count = state.count + 1
            out = _tree.map_live(scaling, updates, _tree.tree_bias_correction(nu, decay, count))
            return out, ScaleByRmsWithCountState(count=count, nu=nu)
        return _tree.map_live(scaling, updates, nu), ScaleByRmsState(nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRStdDevState(NamedTuple):
    """State of `scale_by_stddev` without bias correction: moments ``mu`` and ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_stddev().init({"w": torch.zeros(2)})._fields
        ('mu', 'nu')
    """

    mu: Any
    nu: Any


class ScaleByRStdDevWithCountState(NamedTuple):
    """State of `scale_by_stddev` with ``bias_correction``: step count, ``mu`` and ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_stddev(bias_correction=True).init({"w": torch.zeros(2)})._fields
        ('count', 'mu', 'nu')
    """

    count: torch.Tensor
    mu: Any
    nu: Any


@record_hyperparams
def scale_by_stddev(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""Rescale updates by the root of the centred moving variance of the updates (centred RMSProp).

    $m_t = \rho m_{t-1} + (1-\rho) g_t$, $v_t = \rho v_{t-1} + (1-\rho) g_t^2$ with
    $m_0 = 0$, $v_0$ = ``initial_scale``; optionally both divided by $1-\rho^t$
    (``bias_correction``); $u_t = g_t / \sqrt{v_t - m_t^2 + \epsilon}$ (``eps_in_sqrt``) or
    $u_t = g_t / (\sqrt{v_t - m_t^2} + \epsilon)$.

    Args:
        decay: the decay $\rho$, in ``[0, 1]`` (``[0, 1)`` with ``bias_correction``).
        eps: the stabilising $\epsilon$, ``>= 0``.
        initial_scale: the initial value of the second moment, ``>= 0``.
        eps_in_sqrt: add ``eps`` inside the square root (optax's default) or outside it
            (torch's).
        bias_correction: divide both moments by $1-\rho^t$; the state then also counts
            steps (`ScaleByRStdDevWithCountState`).

    Returns:
        A `GradientTransformation` with state `ScaleByRStdDevState`, or
        `ScaleByRStdDevWithCountState` with ``bias_correction``.

    Raises:
        ValueError: for ``decay`` out of range or a negative ``eps``/``initial_scale``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_stddev(decay=0.5, eps=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 2., -2.])

    References:
        Graves, Generating Sequences With Recurrent Neural Networks, 2013, eq. (38-45).
        https://arxiv.org/abs/1308.0850

    torch.optim equivalent: ``RMSprop(lr, alpha=decay, eps=eps, centered=True)`` is
    ``chain(scale_by_stddev(decay, eps, eps_in_sqrt=False), scale_by_learning_rate(lr))``.
    """
    _check_decay(decay, bias_correction)
    check_non_negative("eps", eps)
    check_non_negative("initial_scale", initial_scale)
    scaling = _rms_scaling(eps, eps_in_sqrt)

    def centred(ops, gs, ms, vs):
        return scaling(ops, gs, ops.sub(vs, ops.square(ms)))

    def init_fn(params):
        mu = _tree.tree_zeros_like(params)
        nu = _tree.tree_full_like(params, initial_scale)
        if bias_correction:
            return ScaleByRStdDevWithCountState(count=init_count(params), mu=mu, nu=nu)
        return ScaleByRStdDevState(mu=mu, nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = _tree.tree_update_moment(updates, state.mu, decay, order=1)
        nu = _tree.tree_update_moment_per_elem_norm(updates, state.nu, decay, order=2)
        if bias_correction:
            count = state.count + 1
            mu_hat = _tree.tree_bias_correction(mu, decay, count)
            nu_hat = _tree.tree_bias_correction(nu, decay, count)
            out = _tree.map_live(centred, updates, mu_hat, nu_hat)
            return out, ScaleByRStdDevWithCountState(count=count, mu=mu, nu=nu)
        return _tree.map_live(centred, updates, mu, nu), ScaleByRStdDevState(mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adagrad


class ScaleByRssState(NamedTuple):
    """State of `scale_by_rss`: the sum of squared updates so far.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rss().init({"w": torch.zeros(2)})
        ScaleByRssState(sum_of_squares={'w': tensor([0.1000, 0.1000])})
    """

    sum_of_squares: Any


@record_hyperparams
def scale_by_rss(
    initial_accumulator_value: Scalar = 0.1,
    eps: Scalar = 1e-7,
) -> GradientTransformation:
    r"""Rescale updates by the root of the sum of all squared updates so far (Adagrad).

    $s_t = s_{t-1} + g_t^2$ with $s_0$ = ``initial_accumulator_value``, and
    $u_t = g_t / \sqrt{s_t + \epsilon}$ where $s_t > 0$, $u_t = 0$ where $s_t = 0$.

    Args:
        initial_accumulator_value: the starting value $s_0$, ``>= 0``.
        eps: added inside the square root, ``>= 0``.

    Returns:
        A `GradientTransformation` with state `ScaleByRssState`.

    Raises:
        ValueError: for a negative ``initial_accumulator_value`` or ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([2.0, 0.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([1., 0.])

    References:
        Duchi, Hazan and Singer, Adaptive Subgradient Methods for Online Learning and
        Stochastic Optimization, JMLR 2011. https://jmlr.org/papers/v12/duchi11a.html

    torch.optim: ``Adagrad`` is close but not equal: it adds ``eps`` outside the square root
    and starts the accumulator at 0 by default.
    """
    check_non_negative("initial_accumulator_value", initial_accumulator_value)
    check_non_negative("eps", eps)

    def init_fn(params):
        return ScaleByRssState(
            sum_of_squares=_tree.tree_full_like(params, initial_accumulator_value)
        )

    def accumulate(ops, gs, ss):
        return ops.add(ss, ops.square(_tree.cast_like(gs, ss)))

    def scaled(ops, gs, ss):
        # The inner `where` keeps rsqrt finite where it is not selected, so gradients taken
        # through the update stay finite too.
        out = [
            g * torch.where(s > 0, torch.rsqrt(torch.where(s > 0, s + eps, 1.0)), 0.0)
            for g, s in zip(gs, ss)
        ]
        return _tree.cast_like(out, gs)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        sum_of_squares = _tree.map_live(
            accumulate, updates, state.sum_of_squares, fill=state.sum_of_squares
        )
        out = _tree.map_live(scaled, updates, sum_of_squares)
        return out, ScaleByRssState(sum_of_squares=sum_of_squares)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Adadelta


class ScaleByAdaDeltaState(NamedTuple):
    """State of `scale_by_adadelta`: moving averages of squared gradients and squared updates.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_adadelta().init({"w": torch.zeros(2)})._fields
        ('e_g', 'e_x')
    """

    e_g: Any
    e_x: Any


@record_hyperparams
def scale_by_adadelta(rho: Scalar = 0.9, eps: Scalar = 1e-6) -> GradientTransformation:
    r"""Rescale updates by Adadelta.

    $E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g_t^2$,
    $u_t = \sqrt{E[\Delta x^2]_{t-1} + \epsilon} / \sqrt{E[g^2]_t + \epsilon}\; g_t$,
    $E[\Delta x^2]_t = \rho E[\Delta x^2]_{t-1} + (1-\rho) u_t^2$.

    Chain a learning rate after it (Adadelta's paper uses 1). optax's ``adadelta`` with
    ``learning_rate=None`` ascends; always give a learning rate.

    Args:
        rho: the decay $\rho$ of both averages, in ``[0, 1]``.
        eps: the stabilising $\epsilon$, ``>= 0``.

    Returns:
        A `GradientTransformation` with state `ScaleByAdaDeltaState`.

    Raises:
        ValueError: for ``rho`` outside ``[0, 1]`` or a negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adadelta(rho=0.0, eps=1.0)
        >>> u, _ = tx.update({"w": torch.tensor([0.0, 3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([0.0000, 0.9487])

    References:
        Zeiler, ADADELTA: An Adaptive Learning Rate Method, 2012.
        https://arxiv.org/abs/1212.5701

    torch.optim equivalent: ``Adadelta(lr, rho, eps)`` is
    ``chain(scale_by_adadelta(rho, eps), scale_by_learning_rate(lr))``.
    """
    check_in_range("rho", rho, 0.0, 1.0, high_inclusive=True)
    check_non_negative("eps", eps)

    def init_fn(params):
        return ScaleByAdaDeltaState(
            e_g=_tree.tree_zeros_like(params), e_x=_tree.tree_zeros_like(params)
        )

    def step(ops, gs, e_gs, e_xs):
        ratios = ops.div(ops.sqrt(ops.add(e_xs, eps)), ops.sqrt(ops.add(e_gs, eps)))
        return _tree.cast_like(ops.mul(ratios, gs), gs)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        e_g = _tree.tree_update_moment(updates, state.e_g, rho, order=2)
        out = _tree.map_live(step, updates, e_g, state.e_x)
        e_x = _tree.tree_update_moment(out, state.e_x, rho, order=2)
        return out, ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return GradientTransformation(init_fn, update_fn)


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
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)

    def init_fn(params):
        return ScaleByBeliefState(
            count=init_count(params),
            mu=_tree.tree_zeros_like(params),
            nu=_tree.tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = _tree.tree_update_moment(updates, state.mu, b1, order=1)
        prediction_error = _tree.tree_sub(updates, mu)
        nu = _tree.tree_update_moment(prediction_error, state.nu, b2, order=2)
        nu = _tree.map_live(lambda ops, gs, vs: ops.add(vs, eps_root), updates, nu, fill=nu)
        count = state.count + 1
        mu_hat = bias_corrected_mu(updates, mu, b1, count, nesterov)
        nu_hat = _tree.tree_bias_correction(nu, b2, count)
        out = _tree.map_live(
            lambda ops, gs, ms, vs: _tree.cast_like(adam_direction(ops, ms, vs, eps, 0.0), gs),
            updates,
            mu_hat,
            nu_hat,
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
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    check_positive("initial_accumulator_value", initial_accumulator_value)

    def init_fn(params):
        return ScaleByAdamState(
            count=init_count(params),
            mu=_tree.tree_full_like(params, initial_accumulator_value),
            nu=_tree.tree_full_like(params, initial_accumulator_value),
        )

    def second_moment(ops, gs, vs):
        squares = ops.square(_tree.cast_like(gs, vs))
        signed = ops.mul([torch.sign(v - q) for v, q in zip(vs, squares)], squares)
        return ops.add(vs, signed, alpha=-(1 - b2))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        mu = _tree.tree_update_moment(updates, state.mu, b1, order=1)
        nu = _tree.map_live(second_moment, updates, state.nu, fill=state.nu)
        count = state.count + 1
        mu_hat = _tree.tree_bias_correction(mu, b1, count)
        nu_hat = _tree.tree_bias_correction(nu, b2, count)
        out = _tree.map_live(
            lambda ops, gs, ms, vs: _tree.cast_like(adam_direction(ops, ms, vs, eps, eps_root), gs),
            updates,
            mu_hat,
            nu_hat,
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- NovoGrad


class ScaleByNovogradState(NamedTuple):
    """State of `scale_by_novograd`: step count, momentum ``mu``, per-leaf second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_novograd().init({"w": torch.zeros(2)}).nu
        {'w': tensor(0.)}
    """

    count: torch.Tensor
    mu: Any
    nu: Any


@record_hyperparams
def scale_by_novograd(
    b1: Scalar = 0.9,
    b2: Scalar = 0.25,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Rescale updates by NovoGrad: momentum of layer-wise normalised gradients.

    For every leaf (layer) $l$, $v^l_t = \beta_2 v^l_{t-1} + (1-\beta_2)\|g^l_t\|^2$ (a
    scalar; $v^l_1 = \|g^l_1\|^2$) and
    $m^l_t = \beta_1 m^l_{t-1} + g^l_t / (\sqrt{v^l_t + \epsilon_{root}} + \epsilon)
    + \lambda w^l_t$ with $m^l_0 = 0$; $u_t = m_t$.

    Args:
        b1: the momentum $\beta_1$, in ``[0, 1]``.
        b2: decay of the second moment, in ``[0, 1]``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added inside the square root, ``>= 0``.
        weight_decay: the coupled weight decay $\lambda$, ``>= 0``; when it is not ``0.0``
            ``update`` needs ``params``.
        mu_dtype: dtype of the momentum (default: the params').

    Returns:
        A `GradientTransformation` with state `ScaleByNovogradState` (``nu`` holds one 0-d
        tensor per leaf).

    Raises:
        ValueError: at construction for hyperparameters out of range; from ``update`` when
            ``weight_decay`` is used and ``params`` is not given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_novograd(eps=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([3.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 0.6000, -0.8000])

    References:
        Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks, 2019. https://arxiv.org/abs/1905.11286
    """
    check_in_range("b1", b1, 0.0, 1.0, high_inclusive=True)
    check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    check_non_negative("weight_decay", weight_decay)
    # A Python zero needs no params (optax always requires them).
    uses_params = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)

    def init_fn(params):
        return ScaleByNovogradState(
            count=init_count(params),
            mu=_tree.tree_zeros_like(params, dtype=mu_dtype),
            nu=_tree.tree_map(lambda p: torch.zeros((), dtype=p.dtype, device=p.device), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if uses_params and params is None:
            raise ValueError("scale_by_novograd: weight_decay needs `params` in update().")
        count = state.count + 1
        first = count == 1

        def second_moment(ops, gs, ns):
            squares = ops.square(ops.norm(_tree.cast_like(gs, ns)))
            averages = ops.lerp(ns, squares, 1 - b2)
            return [torch.where(first, s, a) for s, a in zip(squares, averages)]

        nu = _tree.map_live(second_moment, updates, state.nu, fill=state.nu)

        def momentum(ops, gs, ms, ns, *ps):
            steps = ops.div(
                _tree.cast_like(gs, ms),
                [(torch.sqrt(n + eps_root) + eps).to(m.dtype) for n, m in zip(ns, ms)],
            )
            if uses_params:
                steps = ops.add(steps, _tree.cast_like(ps[0], ms), weight_decay)
            # mu starts at zero, so on the first step b1 * mu + step is the step itself
            # (the branch optax selects with lax.cond).
            return ops.add(steps, ms, alpha=b1)

        extra = (params,) if uses_params else ()
        mu = _tree.map_live(momentum, updates, state.mu, nu, *extra, fill=state.mu)
        out = _tree.map_live(lambda ops, gs, ms: _tree.cast_like(ms, gs), updates, mu)
        return out, ScaleByNovogradState(count=count, mu=mu, nu=nu)

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
        return ScaleByAdanState(
            m=_tree.tree_zeros_like(params),
            v=_tree.tree_zeros_like(params),
            n=_tree.tree_zeros_like(params),
            g=_tree.tree_zeros_like(params),
            t=init_count(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        started = state.t > 0

        def difference(ops, gs, prevs):
            diffs = ops.sub(_tree.cast_like(gs, prevs), prevs)
            return [torch.where(started, d, 0.0) for d in diffs]

        diff = _tree.map_live(difference, updates, state.g)
        m = _tree.tree_update_moment(updates, state.m, b1, order=1)
        v = _tree.tree_update_moment(diff, state.v, b2, order=1)
        n = _tree.tree_update_moment(_tree.tree_add_scale(updates, 1 - b2, diff), state.n, b3, 2)
        t = state.t + 1
        m_hat = _tree.tree_bias_correction(m, b1, t)
        v_hat = _tree.tree_bias_correction(v, b2, t)
        n_hat = _tree.tree_bias_correction(n, b3, t)

        def direction(ops, gs, ms, vs, ns):
            numerators = ops.add(ms, vs, alpha=1 - b2)
            return _tree.cast_like(adam_direction(ops, numerators, ns, eps, eps_root), gs)

        out = _tree.map_live(direction, updates, m_hat, v_hat, n_hat)
        g = _tree.map_live(
            lambda ops, gs, ps: _tree.cast_like(gs, ps),
            updates,
            state.g,
            fill=state.g,
        )
        return out, ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Lion


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`: step count and momentum ``mu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_lion().init({"w": torch.zeros(2)})._fields
        ('count', 'mu')
    """

    count: torch.Tensor
    mu: Any


_LION_MODES = ("hard", "smooth", "refined")


@record_hyperparams
def scale_by_lion(
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: torch.dtype | None = None,
    *,
    mode: Literal["hard", "smooth", "refined"] = "hard",
    smooth_beta: Scalar = 1.0,
) -> GradientTransformation:
    r"""Rescale updates by Lion: the sign of an interpolation of momentum and gradient.

    $c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $u_t = \operatorname{sign}(c_t)$, then
    $m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t$. ``mode="smooth"`` uses
    $\tanh(\beta_s c_t)$ and ``mode="refined"`` keeps $|c_t| < 1$ linear:
    $\operatorname{clip}(c_t, -1, 1)$.

    Args:
        b1: interpolation weight of the momentum in the update, in ``[0, 1]``.
        b2: decay of the momentum, in ``[0, 1]``.
        mu_dtype: dtype of the momentum (default: the params').
        mode: ``"hard"`` (sign), ``"smooth"`` (tanh) or ``"refined"`` (clip to [-1, 1]).
        smooth_beta: the sharpness $\beta_s > 0$ of the tanh in ``"smooth"`` mode.

    Returns:
        A `GradientTransformation` with state `ScaleByLionState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1]``, an unknown ``mode`` or a
            non-positive ``smooth_beta`` (optax reports an unknown mode only at update).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_lion()
        >>> u, _ = tx.update({"w": torch.tensor([0.5, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1., -1.])

    References:
        Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
        https://arxiv.org/abs/2302.06675
    """
    check_in_range("b1", b1, 0.0, 1.0, high_inclusive=True)
    check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    if mode not in _LION_MODES:
        raise ValueError(f"mode must be one of {_LION_MODES}, got {mode!r}.")
    check_positive("smooth_beta", smooth_beta)

    def squash(x: torch.Tensor) -> torch.Tensor:
        if mode == "hard":
            return torch.sign(x)
        if mode == "smooth":
            return torch.tanh(smooth_beta * x)
        # Linear where |x| < 1 and sign(x) elsewhere is exactly a clip to [-1, 1].
        return torch.clamp(x, -1.0, 1.0)

    def direction(ops, gs, ms):
        mixed = ops.lerp(ms, _tree.cast_like(gs, ms), 1 - b1)
        return _tree.cast_like([squash(x) for x in mixed], gs)

    def init_fn(params):
        return ScaleByLionState(
            count=init_count(params), mu=_tree.tree_zeros_like(params, dtype=mu_dtype)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out = _tree.map_live(direction, updates, state.mu)
        mu = _tree.tree_update_moment(updates, state.mu, b2, order=1)
        return out, ScaleByLionState(count=state.count + 1, mu=mu)

    return GradientTransformation(init_fn, update_fn)
