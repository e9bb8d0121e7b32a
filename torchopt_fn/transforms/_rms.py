"""The RMS family: RMSProp (`scale_by_rms`), centred RMSProp (`scale_by_stddev`), Adagrad
(`scale_by_rss`) and Adadelta (`scale_by_adadelta`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, init_count, torch_names
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.tree._math import (
    bias_correction,
    moment,
    tree_full_like,
    tree_zeros_like,
)
from torchopt_fn.tree._ops import Ops, cast_like, map_leaves

__all__ = [
    "ScaleByAdaDeltaState",
    "ScaleByRStdDevState",
    "ScaleByRStdDevWithCountState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRssState",
    "scale_by_adadelta",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
]


def rms_scaled(ops: Ops, gs: list, vs: list, eps: Scalar, eps_in_sqrt: bool) -> list:
    r"""``g / sqrt(v + eps)`` (``eps_in_sqrt``) or ``g / (sqrt(v) + eps)``."""
    denominators = ops.sqrt_(ops.add(vs, eps)) if eps_in_sqrt else ops.add_(ops.sqrt(vs), eps)
    return ops.div(cast_like(gs, vs), denominators)


def _check_decay(decay: Scalar, bias_correction: bool) -> None:
    # decay = 1 is a constant second moment; with bias correction it divides by 1 - 1^t = 0.
    check_in_range("decay", decay, 0.0, 1.0, high_inclusive=not bias_correction)


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms` without bias correction: the second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rms(initial_scale=1.0).init({"w": torch.zeros(2)})
        ScaleByRmsState(nu={'w': tensor([1., 1.])})
    """

    nu: Any

    torch_keys = torch_names(nu="square_avg")


class ScaleByRmsWithCountState(NamedTuple):
    """State of `scale_by_rms` with ``bias_correction``: step count and second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rms(bias_correction=True).init({"w": torch.zeros(2)}).count
        tensor(0)
    """

    count: torch.Tensor
    nu: Any

    torch_keys = torch_names(count="step", nu="square_avg")


@record_hyperparams
def scale_by_rms(
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    nu_dtype: torch.dtype | None = None,
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
        nu_dtype: dtype of the second moment (default: the params'); optax lacks it.

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
    debias = bias_correction  # the argument shadows the list helper of the same name

    def init_fn(params):
        nu = tree_full_like(params, initial_scale, dtype=nu_dtype)
        if debias:
            return ScaleByRmsWithCountState(count=init_count(params), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1 if debias else None

        def step(ops, gs, nus):
            nus = moment(ops, gs, nus, decay, order=2)
            nu_hat = _debiased(ops, nus, decay, count)
            return rms_scaled(ops, gs, nu_hat, eps, eps_in_sqrt), nus

        out, nu = map_leaves(
            step,
            updates,
            state.nu,
            keep=(None, 0),
            complex_as_real=True,
            batchable=True,
            what="scale_by_rms",
        )
        if debias:
            return out, ScaleByRmsWithCountState(count=count, nu=nu)
        return out, ScaleByRmsState(nu=nu)

    return GradientTransformation(init_fn, update_fn)


def _debiased(ops: Ops, xs: list, decay: Scalar, count: torch.Tensor | None) -> list:
    return xs if count is None else bias_correction(ops, xs, decay, count)


class ScaleByRStdDevState(NamedTuple):
    """State of `scale_by_stddev` without bias correction: moments ``mu`` and ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_stddev().init({"w": torch.zeros(2)})._fields
        ('mu', 'nu')
    """

    mu: Any
    nu: Any

    torch_keys = torch_names(mu="grad_avg", nu="square_avg")


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

    torch_keys = torch_names(count="step", mu="grad_avg", nu="square_avg")


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
    debias = bias_correction

    def init_fn(params):
        mu = tree_zeros_like(params)
        nu = tree_full_like(params, initial_scale)
        if debias:
            return ScaleByRStdDevWithCountState(count=init_count(params), mu=mu, nu=nu)
        return ScaleByRStdDevState(mu=mu, nu=nu)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1 if debias else None

        def step(ops, gs, mus, nus):
            mus = moment(ops, gs, mus, decay, order=1)
            nus = moment(ops, gs, nus, decay, order=2)
            mu_hat, nu_hat = _debiased(ops, mus, decay, count), _debiased(ops, nus, decay, count)
            variance = ops.addcmul(nu_hat, mu_hat, mu_hat, -1.0)
            return rms_scaled(ops, gs, variance, eps, eps_in_sqrt), mus, nus

        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_stddev",
        )
        if debias:
            return out, ScaleByRStdDevWithCountState(count=count, mu=mu, nu=nu)
        return out, ScaleByRStdDevState(mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRssState(NamedTuple):
    """State of `scale_by_rss`: the sum of squared updates so far.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rss().init({"w": torch.zeros(2)})
        ScaleByRssState(sum_of_squares={'w': tensor([0.1000, 0.1000])})
    """

    sum_of_squares: Any

    torch_keys = torch_names(sum_of_squares="sum")


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
        return ScaleByRssState(sum_of_squares=tree_full_like(params, initial_accumulator_value))

    def step(ops, gs, sums):
        gs_ = cast_like(gs, sums)
        sums = ops.addcmul(sums, gs_, gs_)
        # The inner `where` keeps rsqrt finite where it is not selected, so gradients taken
        # through the update stay finite too.
        out = [
            g * torch.where(s > 0, torch.rsqrt(torch.where(s > 0, s + eps, 1.0)), 0.0)
            for g, s in zip(gs, sums)
        ]
        return out, sums

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, sums = map_leaves(
            step,
            updates,
            state.sum_of_squares,
            keep=(None, 0),
            complex_as_real=True,
            batchable=True,
            what="scale_by_rss",
        )
        return out, ScaleByRssState(sum_of_squares=sums)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdaDeltaState(NamedTuple):
    """State of `scale_by_adadelta`: moving averages of squared gradients and squared updates.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_adadelta().init({"w": torch.zeros(2)})._fields
        ('e_g', 'e_x')
    """

    e_g: Any
    e_x: Any

    torch_keys = torch_names(e_g="square_avg", e_x="acc_delta")


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
        return ScaleByAdaDeltaState(e_g=tree_zeros_like(params), e_x=tree_zeros_like(params))

    def step(ops, gs, e_gs, e_xs):
        e_gs = moment(ops, gs, e_gs, rho, order=2)
        ratios = ops.div_(ops.sqrt_(ops.add(e_xs, eps)), ops.sqrt_(ops.add(e_gs, eps)))
        out = ops.mul_(ratios, cast_like(gs, ratios))
        return out, e_gs, moment(ops, out, e_xs, rho, order=2)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, e_g, e_x = map_leaves(
            step,
            updates,
            state.e_g,
            state.e_x,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_adadelta",
        )
        return out, ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return GradientTransformation(init_fn, update_fn)
