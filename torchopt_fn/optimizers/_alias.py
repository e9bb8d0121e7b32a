r"""Named optimizers, each a `chain` of public transforms with optax 0.2.8's signature.

Every optimizer returns a `GradientTransformation` whose updates are already negated, so
``params = apply_updates(params, updates)`` descends. The learning rate may be a float, a 0-d
tensor or a schedule (a function of the 0-d step count); use a 0-d tensor to change it
during training without recompiling a compiled step.

Two optax 0.2.8 bugs are not copied, see `rprop` and `adadelta`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import torch

from torchopt_fn import transforms
from torchopt_fn._base import (
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    identity,
    record_hyperparams,
)
from torchopt_fn._combine import chain, masked
from torchopt_fn._fused import with_eager_fused_adam

__all__ = [
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "fromage",
    "lamb",
    "lars",
    "lion",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "novograd",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "radam",
    "rmsprop",
    "rprop",
    "sgd",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
]

Scalar: TypeAlias = float | torch.Tensor
MaskOrFn: TypeAlias = Any | Callable[[Params], Any] | None
"""A tree of booleans shaped like the params (or a function of the params returning one)."""


# --------------------------------------------------------------------------- SGD family


@record_hyperparams
def sgd(
    learning_rate: ScalarOrSchedule,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Stochastic gradient descent, with optional (Nesterov) heavy-ball momentum.

    Without momentum $u_t = -\eta_t g_t$. With momentum $\beta$:
    $m_t = g_t + \beta m_{t-1}$ and $u_t = -\eta_t m_t$, or $u_t = -\eta_t (g_t + \beta m_t)$
    with ``nesterov``.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        momentum: $\beta \in [0, 1]$, or `None` for plain SGD.
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum buffer (default: the params').

    Returns:
        ``chain(trace(momentum, nesterov), scale_by_learning_rate(learning_rate))``
        (the `trace` stage is `identity` when ``momentum`` is `None`).

    Raises:
        ValueError: for a negative learning rate or a momentum outside ``[0, 1]``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.sgd(learning_rate=0.1, momentum=0.9)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.0620, -0.1240])

    References:
        Sutskever et al., On the importance of initialization and momentum in deep learning,
        ICML 2013. http://proceedings.mlr.press/v28/sutskever13.pdf

    torch.optim equivalent: `torch.optim.SGD(lr, momentum, nesterov=nesterov)` (with
    ``dampening=0``, its default) gives the same numbers. torch's coupled ``weight_decay``
    is ``chain(add_decayed_weights(wd), sgd(...))``.
    """
    stage = (
        identity()
        if momentum is None
        else transforms.trace(
            decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype
        )
    )
    return chain(stage, transforms.scale_by_learning_rate(learning_rate))


@record_hyperparams
def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    eta: Scalar = 0.01,
    gamma: Scalar = 0.55,
    key: int | torch.Generator | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""SGD with annealed Gaussian gradient noise.

    $\tilde g_t = g_t + \epsilon_t$ with $\epsilon_t \sim \mathcal N(0, \sigma_t^2)$,
    $\sigma_t^2 = \eta / (1 + t)^\gamma$, and $u_t = -\eta_t \tilde g_t$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        eta: the base variance $\eta$ of the noise.
        gamma: the annealing exponent $\gamma$.
        key: the seed of the noise (an int) or a `torch.Generator`; see `add_noise`.
        seed: deprecated spelling of ``key`` (kept for optax compatibility).

    Returns:
        ``chain(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate or noise variance.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.noisy_sgd(learning_rate=0.1, key=0)
        >>> state = tx.init(params)
        >>> for _ in range(20):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> bool(params["w"].abs().max() < 0.1)
        True

    References:
        Neelakantan et al., Adding Gradient Noise Improves Learning for Very Deep Networks,
        2015. https://arxiv.org/abs/1511.06807
    """
    return chain(
        transforms.add_noise(eta, gamma, key, seed=seed),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    r"""signSGD: step along the element-wise sign of the gradient.

    $u_t = -\eta_t \operatorname{sign}(g_t)$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.

    Returns:
        ``chain(scale_by_sign(), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.sign_sgd(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7000, -1.7000])

    References:
        Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, ICML 2018.
        https://arxiv.org/abs/1802.04434
    """
    return chain(transforms.scale_by_sign(), transforms.scale_by_learning_rate(learning_rate))


@record_hyperparams
def signum(
    learning_rate: ScalarOrSchedule,
    beta: Scalar = 0.9,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Signum: signSGD on an exponential moving average of the gradients.

    $m_t = \beta m_{t-1} + (1-\beta) g_t$ (not debiased: the sign does not care),
    $u_t = -\eta_t \operatorname{sign}(m_t)$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        beta: the decay $\beta \in [0, 1]$ of the moving average.
        accumulator_dtype: dtype of the moving average (default: the params').

    Returns:
        ``chain(ema(beta, debias=False), scale_by_sign(), scale_by_learning_rate(lr))``.

    Raises:
        ValueError: for a negative learning rate or ``beta`` outside ``[0, 1]``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.signum(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7000, -1.7000])

    References:
        Bernstein et al., signSGD: Compressed Optimisation for Non-Convex Problems, ICML 2018.
        https://arxiv.org/abs/1802.04434
    """
    return chain(
        transforms.ema(beta, debias=False, accumulator_dtype=accumulator_dtype),
        transforms.scale_by_sign(),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule,
    alpha: Scalar = 1.0,
    beta: Scalar = 1.0,
) -> GradientTransformation:
    r"""Optimistic gradient descent, for min-max games and saddle-point problems.

    $u_t = -\eta_t \big((\alpha + \beta) g_t - \beta g_{t-1}\big)$, with $g_0 := g_1$ at the
    first step (so the first step is plain gradient descent with step $\eta\alpha$).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        alpha: the coefficient $\alpha$ of the current gradient.
        beta: the coefficient $\beta$ of the "optimism" (negative momentum) correction.

    Returns:
        ``chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(lr))``.

    Raises:
        ValueError: for a negative learning rate.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.optimistic_gradient_descent(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.5680, -1.1360])

    References:
        Mokhtari et al., A Unified Analysis of Extra-gradient and Optimistic Gradient Methods
        for Saddle Point Problems: Proximal Point Approach, AISTATS 2020.
        https://arxiv.org/abs/1901.08511
    """
    return chain(
        transforms.scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def polyak_sgd(
    max_learning_rate: Scalar = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: Scalar = 0.0,
    eps: Scalar = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    r"""SGD with the (stochastic) Polyak step size; needs the loss as ``update(..., value=f)``.

    With $s_t$ the ``scaling``, $f^\star$ the ``f_min`` and $\gamma_{\max}$ the
    ``max_learning_rate``, the chain computes

    $$u_t = -s_t\,\gamma_t\,g_t,\qquad
    \gamma_t = \min\Big\{\frac{f(\theta_t) - f^\star}{\|s_t g_t\|^2 + \epsilon},
    \gamma_{\max}\Big\},$$

    and $\gamma_t = 0$ when the denominator is below machine epsilon. With ``variant="sps+"``
    the gap $f - f^\star$ is replaced by its positive part. For ``scaling=1`` (the default)
    this is the textbook step $\min\{(f - f^\star)/(\|g\|^2+\epsilon), \gamma_{\max}\}$; for
    other scalings note that optax 0.2.8 (and so this chain) measures the norm of the
    already-scaled gradient, as written above.

    Args:
        max_learning_rate: the cap $\gamma_{\max}$ on the step size.
        scaling: $s_t$: a float, a 0-d tensor or a schedule of the step count.
        f_min: a lower bound $f^\star$ on the objective (0 for interpolating models).
        eps: $\epsilon$, added to the denominator.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        ``chain(sgd(learning_rate=scaling), scale_by_polyak(max_learning_rate, f_min, eps,
        variant))``; its ``update`` needs the keyword argument ``value``.

    Raises:
        ValueError: for a negative scaling, an unknown ``variant`` or invalid bounds.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.polyak_sgd()
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     loss, grads = (params["w"] ** 2).sum(), {"w": 2 * params["w"]}
        ...     updates, state = tx.update(grads, state, params, value=loss)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.1250, -0.2500])

    References:
        Loizou et al., Stochastic Polyak Step-size for SGD, AISTATS 2021.
        https://arxiv.org/abs/2002.10542 — Garrigos et al., Function Value Learning: Adaptive
        Learning Rates Based on the Polyak Stepsize and Function Splitting in ERM, 2023.
        https://arxiv.org/abs/2307.14528
    """
    return chain(
        sgd(learning_rate=scaling),
        transforms.scale_by_polyak(
            max_learning_rate=max_learning_rate, f_min=f_min, eps=eps, variant=variant
        ),
    )


# --------------------------------------------------------------------------- Adam family


@record_hyperparams
def adam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""Adam: steps scaled by bias-corrected estimates of the gradient's first two moments.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $\hat m_t = m_t / (1-\beta_1^t)$, $\hat v_t = v_t / (1-\beta_2^t)$,
    $u_t = -\eta_t\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$.
    With ``nesterov`` (NAdam),
    $\hat m_t = \beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root (make it positive when
            differentiating through the update).
        mu_dtype: dtype of the first moment (default: the params').
        nesterov: use Nesterov momentum (NAdam).

    Returns:
        ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adam(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7016, -1.7006])

    References:
        Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
        https://arxiv.org/abs/1412.6980 — Dozat, Incorporating Nesterov Momentum into Adam,
        ICLR workshop 2016. https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ

    torch.optim equivalent: `torch.optim.Adam(lr, betas=(b1, b2), eps=eps)` gives the same
    numbers; torch's coupled ``weight_decay`` is ``chain(add_decayed_weights(wd), adam(...))``.
    """
    tx = chain(
        transforms.scale_by_adam(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
        ),
        transforms.scale_by_learning_rate(learning_rate),
    )
    return with_eager_fused_adam(
        tx, learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, weight_decay=None, mask=None
    )


@record_hyperparams
def adamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""AdamW: Adam with decoupled weight decay.

    With Adam's direction $d_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$
    (see `adam`), $u_t = -\eta_t (d_t + \lambda \theta_t)$: the decay is multiplied by the
    learning rate, as in torch.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        mu_dtype: dtype of the first moment (default: the params').
        weight_decay: $\lambda$. optax's default ``1e-4`` is kept; torch's is ``1e-2``.
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay, e.g. to skip biases and norms. Adam applies to all.
        nesterov: use Nesterov momentum (NAdamW).

    Returns:
        ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adamw(learning_rate=0.1, weight_decay=0.01)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.6989, -1.6949])

    References:
        Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
        https://arxiv.org/abs/1711.05101

    torch.optim equivalent: `torch.optim.AdamW(lr, betas=(b1, b2), eps=eps,
    weight_decay=wd)` gives the same numbers when given the same ``weight_decay`` (mind the
    different defaults: 1e-4 here and in optax, 1e-2 in torch).
    """
    tx = chain(
        transforms.scale_by_adam(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
        ),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )
    return with_eager_fused_adam(
        tx, learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov, weight_decay, mask
    )


@record_hyperparams
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
) -> GradientTransformation:
    r"""NAdam: Adam with Nesterov momentum (`adam` with ``nesterov=True`` by default).

    $\hat m_t = \beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$,
    $u_t = -\eta_t\, \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$, with $m_t$,
    $v_t$, $\hat v_t$ as in `adam`.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        mu_dtype: dtype of the first moment (default: the params').
        nesterov: use Nesterov momentum; ``False`` gives plain Adam.

    Returns:
        ``adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.nadam(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.6406, -1.6343])

    References:
        Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016.
        https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ

    torch.optim equivalent: `torch.optim.NAdam` differs: it multiplies $\beta_1$ by a
    momentum-decay schedule $1 - \tfrac12 0.96^{t\psi}$. Only with a huge ``momentum_decay``
    $\psi$ (e.g. ``1e9``) do the two agree, to ~1e-6 (torch's float32 bias-correction factors).
    """
    return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov)


@record_hyperparams
def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = True,
) -> GradientTransformation:
    r"""NAdamW: NAdam with decoupled weight decay (`adamw` with ``nesterov=True``).

    $u_t = -\eta_t (d_t + \lambda \theta_t)$ with NAdam's direction $d_t$ (see `nadam`).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        mu_dtype: dtype of the first moment (default: the params').
        weight_decay: $\lambda$ (default ``1e-4``, as in optax).
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.
        nesterov: use Nesterov momentum; ``False`` gives `adamw`.

    Returns:
        ``adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask,
        nesterov=nesterov)``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.nadamw(learning_rate=0.1, weight_decay=0.01)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.6381, -1.6288])

    References:
        Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016.
        https://openreview.net/pdf?id=OM0jvwB8jIp57ZJjtNEZ — Loshchilov and Hutter,
        Decoupled Weight Decay Regularization, ICLR 2019. https://arxiv.org/abs/1711.05101

    torch.optim equivalent: `torch.optim.NAdam(decoupled_weight_decay=True)` differs by its
    momentum-decay schedule (see `nadam`).
    """
    return adamw(
        learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask, nesterov=nesterov
    )


@record_hyperparams
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
) -> GradientTransformation:
    r"""AMSGrad: Adam with a non-decreasing second-moment estimate.

    With $m_t$, $v_t$ and their bias corrections $\hat m_t$, $\hat v_t$ as in `adam`,
    $\tilde v_t = \max(\tilde v_{t-1}, \hat v_t)$ and
    $u_t = -\eta_t\, \hat m_t / (\sqrt{\tilde v_t + \epsilon_{root}} + \epsilon)$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        mu_dtype: dtype of the first moment (default: the params').
        bias_correction_mu: bias-correct the first moment.
        bias_correction_nu: bias-correct the second moment (before taking the maximum).

    Returns:
        ``chain(scale_by_amsgrad(...), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.amsgrad(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7158, -1.7079])

    References:
        Reddi et al., On the Convergence of Adam and Beyond, ICLR 2018.
        https://openreview.net/forum?id=ryQu7f-RZ

    torch.optim equivalent: `torch.optim.Adam(amsgrad=True)` differs: torch takes the
    maximum of the raw second moment $v_t$ and bias-corrects afterwards.
    """
    return chain(
        transforms.scale_by_amsgrad(
            b1=b1,
            b2=b2,
            eps=eps,
            eps_root=eps_root,
            mu_dtype=mu_dtype,
            bias_correction_mu=bias_correction_mu,
            bias_correction_nu=bias_correction_nu,
        ),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def adamax(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
) -> GradientTransformation:
    r"""Adamax: Adam with the infinity norm in place of the second moment.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \max(\beta_2 v_{t-1}, |g_t|)$,
    $u_t = -\eta_t\, \frac{m_t / (1-\beta_1^t)}{v_t + \epsilon}$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the infinity norm.
        eps: $\epsilon$, added to the denominator.

    Returns:
        ``chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adamax(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7155, -1.7076])

    References:
        Kingma and Ba, Adam: A Method for Stochastic Optimization (section 7.1), ICLR 2015.
        https://arxiv.org/abs/1412.6980

    torch.optim equivalent: `torch.optim.Adamax(lr, betas=(b1, b2), eps=eps)`. torch puts
    $\epsilon$ inside the maximum ($\max(\beta_2 v_{t-1}, |g_t| + \epsilon)$); the two agree
    to rounding while $|g_t|$ sets the maximum, and differ by $O(\epsilon)$ otherwise.
    """
    return chain(
        transforms.scale_by_adamax(b1=b1, b2=b2, eps=eps),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""AdamaxW: Adamax with decoupled weight decay.

    $u_t = -\eta_t (d_t + \lambda \theta_t)$ with Adamax's direction $d_t$ (see `adamax`).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the infinity norm.
        eps: $\epsilon$, added to the denominator.
        weight_decay: $\lambda$ (default ``1e-4``, as in optax).
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.

    Returns:
        ``chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adamaxw(learning_rate=0.1, weight_decay=0.01)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7130, -1.7021])

    References:
        Kingma and Ba, Adam (section 7.1), ICLR 2015. https://arxiv.org/abs/1412.6980 —
        Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
        https://arxiv.org/abs/1711.05101
    """
    return chain(
        transforms.scale_by_adamax(b1=b1, b2=b2, eps=eps),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def radam(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    threshold: Scalar = 5.0,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""RAdam: Adam with a rectified (variance-aware) adaptive step.

    With $\rho_\infty = 2/(1-\beta_2) - 1$ and
    $\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)$: when $\rho_t \ge$ ``threshold``,
    $u_t = -\eta_t\, r_t \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$ with
    $r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}$;
    otherwise $u_t = -\eta_t \hat m_t$ (momentum SGD while the variance is intractable).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        threshold: the value of $\rho_t$ from which the adaptive step is used.
        nesterov: use Nesterov momentum for $\hat m_t$ (see `nadam`).

    Returns:
        ``chain(scale_by_radam(...), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.radam(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.4623, -0.9246])

    References:
        Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
        https://arxiv.org/abs/1908.03265

    torch.optim equivalent: `torch.optim.RAdam` differs: it adds $\epsilon$ after bias
    correcting $\sqrt{v_t}$ and switches on $\rho_t > 5$.
    """
    return chain(
        transforms.scale_by_radam(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold, nesterov=nesterov
        ),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""AdaBelief: Adam whose second moment tracks the gradient's deviation from its mean.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$,
    $s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}$,
    $u_t = -\eta_t\, \hat m_t / (\sqrt{\hat s_t} + \epsilon)$ with the bias corrections
    $\hat m_t = m_t / (1-\beta_1^t)$ and $\hat s_t = s_t / (1-\beta_2^t)$ (and Nesterov's
    $\hat m_t$ with ``nesterov``, see `nadam`).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment of the prediction error.
        eps: $\epsilon$, added to the denominator (the paper uses ``1e-8``).
        eps_root: $\epsilon_{root}$, added to the second moment (the paper uses ``0``).
        nesterov: use Nesterov momentum.

    Returns:
        ``chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adabelief(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.6523, -1.6506])

    References:
        Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
        Gradients, NeurIPS 2020. https://arxiv.org/abs/2010.07468
    """
    return chain(
        transforms.scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def yogi(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-3,
) -> GradientTransformation:
    r"""Yogi: Adam with an additive, sign-controlled second-moment update.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$,
    $v_t = v_{t-1} - (1-\beta_2)\operatorname{sign}(v_{t-1} - g_t^2)\, g_t^2$ (both start at
    ``1e-6``), $u_t = -\eta_t\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)$ with the bias
    corrections $\hat m_t = m_t / (1-\beta_1^t)$, $\hat v_t = v_t / (1-\beta_2^t)$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, rate of the second-moment update.
        eps: $\epsilon$, added to the denominator.

    Returns:
        ``chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.yogi(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7019, -1.7008])

    References:
        Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018.
        https://papers.nips.cc/paper/8186-adaptive-methods-for-nonconvex-optimization
    """
    return chain(
        transforms.scale_by_yogi(b1=b1, b2=b2, eps=eps),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def lion(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: torch.dtype | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

    $c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$,
    $u_t = -\eta_t (\operatorname{sign}(c_t) + \lambda \theta_t)$,
    $m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t$. Use a learning rate 3-10x smaller, and a
    weight decay 3-10x larger, than for AdamW.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1]$, the interpolation between momentum and gradient.
        b2: $\beta_2 \in [0, 1]$, decay of the momentum.
        mu_dtype: dtype of the momentum (default: the params').
        weight_decay: $\lambda$, multiplied by the learning rate (default ``1e-3``).
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.

    Returns:
        ``chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate or ``b1``/``b2`` out of range.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.lion(learning_rate=0.1, weight_decay=0.0)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7000, -1.7000])

    References:
        Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
        https://arxiv.org/abs/2302.06675
    """
    return chain(
        transforms.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def adan(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.98,
    b2: Scalar = 0.92,
    b3: Scalar = 0.99,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""Adan: adaptive Nesterov momentum from gradient differences.

    With $\Delta_t = g_t - g_{t-1}$ ($\Delta_1 = 0$):
    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2)\Delta_t$,
    $n_t = \beta_3 n_{t-1} + (1-\beta_3)\big(g_t + (1-\beta_2)\Delta_t\big)^2$, each
    bias-corrected ($\hat x_t = x_t / (1-\beta^t)$), and
    $u_t = -\eta_t\Big(\frac{\hat m_t + (1-\beta_2)\hat v_t}{\sqrt{\hat n_t + \epsilon_{root}}
    + \epsilon} + \lambda\theta_t\Big)$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the gradient average.
        b2: $\beta_2 \in [0, 1)$, decay of the gradient-difference average.
        b3: $\beta_3 \in [0, 1)$, decay of the squared term.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        weight_decay: $\lambda$, decoupled and multiplied by the learning rate.
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.

    Returns:
        ``chain(scale_by_adan(b1, b2, b3, eps, eps_root), add_decayed_weights(weight_decay,
        mask), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, betas outside ``[0, 1)`` or a negative
            ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adan(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7007, -1.7002])

    References:
        Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
        Models, 2022. https://arxiv.org/abs/2208.06677
    """
    return chain(
        transforms.scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )


# --------------------------------------------------------------------------- layer-wise


@record_hyperparams
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""LAMB: AdamW's step rescaled per parameter tensor by a trust ratio.

    With Adam's direction $d_t$ (see `adam`) and $r_t = d_t + \lambda\theta_t$,
    $u_t = -\eta_t\, \frac{\|\theta_t\|}{\|r_t\|} r_t$ per tensor (the ratio is 1 when either
    norm is zero).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to Adam's denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        weight_decay: $\lambda$.
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.

    Returns:
        ``chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.lamb(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.5702, -1.5675])

    References:
        You et al., Large Batch Optimization for Deep Learning: Training BERT in 76 minutes,
        ICLR 2020. https://arxiv.org/abs/1904.00962
    """
    return chain(
        transforms.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        transforms.add_decayed_weights(weight_decay=weight_decay, mask=mask),
        transforms.scale_by_trust_ratio(),
        transforms.scale_by_learning_rate(learning_rate),
    )


def _everywhere(mask: MaskOrFn) -> MaskOrFn:
    # optax's LARS masks default to `True` (a one-leaf prefix meaning "every parameter");
    # that is the same as no mask, which also spares a `masked` wrapper.
    return None if mask is True else mask


@record_hyperparams
def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = True,
    trust_coefficient: Scalar = 0.001,
    eps: Scalar = 0.0,
    trust_ratio_mask: MaskOrFn = True,
    momentum: Scalar = 0.9,
    nesterov: bool = False,
) -> GradientTransformation:
    r"""LARS: momentum SGD with a per-tensor trust ratio.

    $r_t = g_t + \lambda\theta_t$, $\tilde r_t = c\,\frac{\|\theta_t\|}{\|r_t\| + \epsilon}
    r_t$ per tensor (the ratio is 1 when either norm is zero), then momentum on the scaled
    step: $m_t = -\eta_t \tilde r_t + \beta m_{t-1}$, $u_t = m_t$ (or
    $-\eta_t\tilde r_t + \beta m_t$ with ``nesterov``).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        weight_decay: $\lambda$.
        weight_decay_mask: a tree of booleans (or a function of the params returning one)
            selecting the parameters to decay; `True` decays all.
        trust_coefficient: $c$, the multiplier of the trust ratio.
        eps: $\epsilon$, added to the denominator of the trust ratio.
        trust_ratio_mask: like ``weight_decay_mask``, selecting the parameters whose step
            is rescaled by the trust ratio (commonly not biases and norms).
        momentum: $\beta \in [0, 1]$.
        nesterov: use Nesterov momentum.

    Returns:
        ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
        masked(scale_by_trust_ratio(trust_coefficient=..., eps=...), trust_ratio_mask),
        scale_by_learning_rate(learning_rate), trace(momentum, nesterov))``.

    Raises:
        ValueError: for a negative learning rate or a momentum outside ``[0, 1]``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.lars(learning_rate=10.0)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.9444, -1.8888])

    References:
        You et al., Large Batch Training of Convolutional Networks, 2017.
        https://arxiv.org/abs/1708.03888
    """
    ratio = transforms.scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)
    ratio_mask = _everywhere(trust_ratio_mask)
    return chain(
        transforms.add_decayed_weights(weight_decay, mask=_everywhere(weight_decay_mask)),
        ratio if ratio_mask is None else masked(ratio, ratio_mask),
        transforms.scale_by_learning_rate(learning_rate),
        transforms.trace(decay=momentum, nesterov=nesterov),
    )


@record_hyperparams
def novograd(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.25,
    eps: Scalar = 1e-6,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
) -> GradientTransformation:
    r"""NovoGrad: Adam-like steps with a per-tensor (layer-wise) second moment.

    Per parameter tensor, $v_t = \beta_2 v_{t-1} + (1-\beta_2)\|g_t\|^2$ (a scalar;
    $v_1 = \|g_1\|^2$), $m_t = \beta_1 m_{t-1} + \frac{g_t}{\sqrt{v_t + \epsilon_{root}} +
    \epsilon} + \lambda\theta_t$ (without the $\beta_1 m_{t-1}$ term at $t = 1$), and
    $u_t = -\eta_t m_t$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the per-tensor second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        weight_decay: $\lambda$, added inside the momentum (not scheduled).

    Returns:
        ``chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, ``b1``/``b2`` outside ``[0, 1)`` or a
            negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.novograd(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7514, -1.5027])

    References:
        Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks, 2019. https://arxiv.org/abs/1905.11286
    """
    return chain(
        transforms.scale_by_novograd(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay
        ),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def fromage(learning_rate: ScalarOrSchedule, min_norm: Scalar = 1e-6) -> GradientTransformation:
    r"""Fromage: Frobenius-matched steps, shrunk to stay at a bounded relative distance.

    Per parameter tensor,
    $\theta_{t+1} = \frac{1}{\sqrt{1+\eta_t^2}}\Big(\theta_t - \eta_t\,
    \frac{\|\theta_t\|}{\|g_t\|} g_t\Big)$ (norms clipped below at ``min_norm``), i.e.
    $u_t = -\frac{\eta_t}{\sqrt{1+\eta_t^2}}\frac{\|\theta_t\|}{\|g_t\|} g_t +
    \Big(\frac{1}{\sqrt{1+\eta_t^2}} - 1\Big)\theta_t$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        min_norm: the floor of the parameter and gradient norms in the trust ratio.

    Returns:
        ``chain(scale_by_trust_ratio(min_norm), scale_by_learning_rate(lr * c),
        add_decayed_weights(c - 1))`` with $c = 1/\sqrt{1+\eta_t^2}$ (schedules of the count
        when ``learning_rate`` is a schedule).

    Raises:
        ValueError: for a negative learning rate.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.fromage(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7182, -1.4364])

    References:
        Bernstein et al., On the distance between two neural networks and the stability of
        learning, NeurIPS 2020. https://arxiv.org/abs/2002.03432
    """
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):
        lr_fn = learning_rate

        def shrink_fn(count: torch.Tensor) -> torch.Tensor:
            return torch.rsqrt(1 + torch.as_tensor(lr_fn(count)) ** 2)

        return chain(
            transforms.scale_by_trust_ratio(min_norm),
            transforms.scale_by_learning_rate(lambda count: shrink_fn(count) * lr_fn(count)),
            transforms.add_decayed_weights(lambda count: shrink_fn(count) - 1),
        )
    shrink = 1 / (1 + learning_rate**2) ** 0.5
    return chain(
        transforms.scale_by_trust_ratio(min_norm),
        transforms.scale_by_learning_rate(learning_rate * shrink),
        transforms.add_decayed_weights(shrink - 1),
    )


# --------------------------------------------------------------------------- RMS family


@record_hyperparams
def rmsprop(
    learning_rate: ScalarOrSchedule,
    decay: Scalar = 0.9,
    eps: Scalar = 1e-8,
    initial_scale: Scalar = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: Scalar | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
) -> GradientTransformation:
    r"""RMSProp: steps scaled by a moving root mean square of the gradients.

    $v_t = \rho v_{t-1} + (1-\rho) g_t^2$ ($v_0$ = ``initial_scale``),
    $d_t = g_t / \sqrt{v_t + \epsilon}$ (or $g_t / (\sqrt{v_t} + \epsilon)$ when not
    ``eps_in_sqrt``), $u_t = -\eta_t d_t$. ``centered`` replaces $v_t$ by
    $v_t - m_t^2$ with $m_t = \rho m_{t-1} + (1-\rho) g_t$; ``bias_correction`` divides the
    averages by $1-\rho^t$. With ``momentum`` $\beta$ the step is accumulated after the
    learning rate: $b_t = \beta b_{t-1} - \eta_t d_t$, $u_t = b_t$ (Nesterov:
    $u_t = -\eta_t d_t + \beta b_t$).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        decay: $\rho \in [0, 1)$ (optax's default 0.9; torch's ``alpha`` defaults to 0.99).
        eps: $\epsilon$.
        initial_scale: the initial value of the moving average $v_0$.
        eps_in_sqrt: put $\epsilon$ inside the square root (optax's default) or outside
            (torch's placement).
        centered: normalise by the variance estimate instead of the second moment.
        momentum: $\beta \in [0, 1]$, or `None` for no momentum.
        nesterov: use Nesterov momentum.
        bias_correction: bias-correct the moving averages.

    Returns:
        ``chain(scale_by_rms(...)`` (``scale_by_stddev`` when ``centered``)``,
        scale_by_learning_rate(learning_rate), trace(momentum, nesterov))`` (`identity` in
        place of `trace` without momentum).

    Raises:
        ValueError: for a negative learning rate, ``decay`` out of range, a negative ``eps``
            or a momentum outside ``[0, 1]``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.rmsprop(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.3692, -1.3087])

    References:
        Hinton, Overview of mini-batch gradient descent (lecture 6e), 2012.
        https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf —
        Graves, Generating Sequences With Recurrent Neural Networks, 2013.
        https://arxiv.org/abs/1308.0850

    torch.optim equivalent: `torch.optim.RMSprop(lr, alpha=decay, eps=eps,
    centered=centered, momentum=m)` gives the same numbers as
    ``rmsprop(lr, decay, eps, eps_in_sqrt=False, centered=centered, momentum=m or None)`` for
    a constant learning rate (torch applies the learning rate after its momentum buffer, so
    the two differ under a schedule when momentum is on).
    """
    if centered:
        scaling = transforms.scale_by_stddev(
            decay=decay,
            eps=eps,
            initial_scale=initial_scale,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
        )
    else:
        scaling = transforms.scale_by_rms(
            decay=decay,
            eps=eps,
            initial_scale=initial_scale,
            eps_in_sqrt=eps_in_sqrt,
            bias_correction=bias_correction,
        )
    return chain(
        scaling,
        transforms.scale_by_learning_rate(learning_rate),
        identity() if momentum is None else transforms.trace(decay=momentum, nesterov=nesterov),
    )


@record_hyperparams
def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: Scalar = 0.1,
    eps: Scalar = 1e-7,
) -> GradientTransformation:
    r"""Adagrad: steps scaled by the root of the sum of all past squared gradients.

    $G_t = G_{t-1} + g_t^2$ ($G_0$ = ``initial_accumulator_value``),
    $u_t = -\eta_t\, g_t / \sqrt{G_t + \epsilon}$ (and 0 where $G_t = 0$).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        initial_accumulator_value: $G_0$.
        eps: $\epsilon$, added inside the square root.

    Returns:
        ``chain(scale_by_rss(initial_accumulator_value, eps),
        scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate, accumulator value or ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adagrad(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7823, -1.7763])

    References:
        Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic
        Optimization, JMLR 2011. https://jmlr.org/papers/v12/duchi11a.html

    torch.optim equivalent: `torch.optim.Adagrad` differs: it adds $\epsilon$ outside the
    square root and starts the accumulator at 0 (optax: 0.1).
    """
    return chain(
        transforms.scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: Scalar = 0.9,
    eps: Scalar = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""Adadelta: steps whose units come from a moving average of past steps.

    With $\tilde g_t = g_t + \lambda\theta_t$:
    $E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho)\tilde g_t^2$,
    $\Delta_t = \frac{\sqrt{E[\Delta^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}
    \tilde g_t$, $E[\Delta^2]_t = \rho E[\Delta^2]_{t-1} + (1-\rho)\Delta_t^2$ and
    $u_t = -\eta_t \Delta_t$.

    ``learning_rate=None`` means $\eta = 1$, i.e. the original Adadelta, which descends.
    optax 0.2.8 differs here: it skips the learning-rate stage altogether for `None`, so
    its update is $+\Delta_t$ and it ascends the objective. We do not copy that bug.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor, a schedule of the step count, or
            `None` for 1.
        rho: $\rho \in [0, 1)$, the decay of both moving averages.
        eps: $\epsilon$.
        weight_decay: $\lambda$, coupled (added to the gradient before Adadelta).
        weight_decay_mask: a tree of booleans (or a function of the params returning one)
            selecting the parameters to decay.

    Returns:
        ``chain(add_decayed_weights(weight_decay, weight_decay_mask),
        scale_by_adadelta(rho, eps), scale_by_learning_rate(learning_rate or 1.0))``.

    Raises:
        ValueError: for a negative learning rate, ``rho`` out of range or a negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adadelta(learning_rate=10.0)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.9046, -1.9038])

    References:
        Zeiler, ADADELTA: An Adaptive Learning Rate Method, 2012.
        https://arxiv.org/abs/1212.5701

    torch.optim equivalent: `torch.optim.Adadelta(lr, rho, eps, weight_decay)` (same
    defaults, with torch's ``lr=1.0`` for `None`) gives the same numbers.
    """
    return chain(
        transforms.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        transforms.scale_by_adadelta(rho=rho, eps=eps),
        transforms.scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )


@record_hyperparams
def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: Scalar = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: Scalar | None = 1.0,
    momentum: Scalar | None = None,
    dtype_momentum: torch.dtype = torch.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: Scalar = 1e-30,
    factored: bool = True,
    weight_decay_mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""Adafactor: RMS scaling with a factored (row x column) second-moment estimate.

    For a matrix gradient with both dimensions at least ``min_dim_size_to_factor``,
    $R_t = \hat\beta_t R_{t-1} + (1-\hat\beta_t)\,\mathrm{mean}_{cols}(g_t^2 + \epsilon)$ and
    $C_t = \hat\beta_t C_{t-1} + (1-\hat\beta_t)\,\mathrm{mean}_{rows}(g_t^2 + \epsilon)$
    estimate $\hat v_t = R_t C_t^\top / \mathrm{mean}(R_t)$ (unfactored tensors keep a full
    $v_t$), with the decay $\hat\beta_t = 1 - (t - \text{offset})^{-0.8}$ (``decay_rate``).
    Then $d_t = g_t / \sqrt{\hat v_t}$ is clipped to block RMS ``clipping_threshold``,
    multiplied by $\eta_t$ and (``multiply_by_parameter_scale``) by
    $\max(\mathrm{RMS}(\theta_t), 10^{-3})$, averaged with ``momentum`` (no debiasing),
    decayed by $\lambda$ = ``weight_decay_rate`` ($+\lambda\theta_t$), and negated.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor, a schedule of the step count, or
            `None` to use the relative step alone (no learning-rate stage).
        min_dim_size_to_factor: factor only tensors with two dimensions at least this big.
        decay_rate: the exponent of the second-moment decay schedule.
        decay_offset: the step at which the decay schedule restarts (for fine-tuning).
        multiply_by_parameter_scale: scale steps by the parameters' RMS.
        clipping_threshold: block-RMS clipping of the scaled updates, or `None`.
        momentum: the decay of a moving average of the steps, or `None`.
        dtype_momentum: dtype of that average (float32, as in optax, whatever the params).
        weight_decay_rate: $\lambda$ (not multiplied by the learning rate), or `None`.
        eps: $\epsilon$, added to the squared gradients.
        factored: factor the second moment where possible.
        weight_decay_mask: a tree of booleans (or a function of the params returning one)
            selecting the parameters to decay.

    Returns:
        ``chain(scale_by_factored_rms(...), clip_by_block_rms(clipping_threshold),
        scale_by_learning_rate(learning_rate, flip_sign=False), scale_by_param_block_rms(),
        ema(momentum, debias=False), add_decayed_weights(weight_decay_rate), scale(-1))``,
        leaving out the stages that are disabled.

    Raises:
        ValueError: for a negative learning rate or invalid decay and clipping settings.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.adafactor(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.5987, -1.5822])

    References:
        Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost,
        ICML 2018. https://arxiv.org/abs/1804.04235

    torch.optim equivalent: `torch.optim.Adafactor` differs (factored dimensions, its
    relative step and learning-rate-scaled weight decay).
    """
    stages = [
        transforms.scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps
        )
    ]
    if clipping_threshold is not None:
        stages.append(transforms.clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        stages.append(transforms.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        stages.append(transforms.scale_by_param_block_rms())
    if momentum is not None:
        stages.append(transforms.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        stages.append(transforms.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    # The stages above build a positive step; descent follows its negative.
    stages.append(transforms.scale(-1.0))
    return chain(*stages)


@record_hyperparams
def sm3(learning_rate: ScalarOrSchedule, momentum: Scalar = 0.9) -> GradientTransformation:
    r"""SM3: Adagrad-like steps with memory-efficient, cover-based accumulators.

    For a tensor with $k$ dimensions, one accumulator per slice along each dimension:
    $\nu_t(i) = \min_{r \ni i} \mu_{t-1}(r) + g_t(i)^2$,
    $\mu_t(r) = \max_{i \in r} \nu_t(i)$, $d_t = g_t / \sqrt{\nu_t + \epsilon}$ (0 where
    $\nu_t = 0$); then $m_t = \beta m_{t-1} + (1-\beta) d_t$ and $u_t = -\eta_t m_t$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count
            (optax accepts only a constant here).
        momentum: $\beta$, the decay of the moving average of the steps.

    Returns:
        ``chain(scale_by_sm3(momentum), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a negative learning rate or ``momentum`` out of range.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.sm3(learning_rate=1.0)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.5535, -1.5448])

    References:
        Anil et al., Memory-Efficient Adaptive Optimization, NeurIPS 2019.
        https://arxiv.org/abs/1901.11150
    """
    return chain(
        transforms.scale_by_sm3(momentum), transforms.scale_by_learning_rate(learning_rate)
    )


@record_hyperparams
def rprop(
    learning_rate: Scalar,
    eta_minus: Scalar = 0.5,
    eta_plus: Scalar = 1.2,
    min_step_size: Scalar = 1e-6,
    max_step_size: Scalar = 50.0,
) -> GradientTransformation:
    r"""Rprop (iRprop-): per-element step sizes adapted to sign changes of the gradient.

    With $s_t = g_t\, g_{t-1}$ (using the stored, possibly zeroed, previous gradient):
    $\delta_t = \mathrm{clip}(\eta^+\delta_{t-1})$ where $s_t > 0$,
    $\mathrm{clip}(\eta^-\delta_{t-1})$ where $s_t < 0$, $\delta_{t-1}$ where $s_t = 0$
    ($\delta_0$ = ``learning_rate``, clip to ``[min_step_size, max_step_size]``); the
    gradient is zeroed where $s_t < 0$, and $u_t = -\delta_t \operatorname{sign}(g_t)$.

    optax 0.2.8 returns the update computed at the *previous* step (its first update is
    zero and every later one lags by a step); `scale_by_rprop` here returns the current one,
    as in the paper and in torch.

    Args:
        learning_rate: $\delta_0$, the initial step size (a float or 0-d tensor; being a
            per-element state, it cannot be a schedule).
        eta_minus: $\eta^- \in (0, 1)$, the factor applied after a sign change.
        eta_plus: $\eta^+ > 1$, the factor applied while the sign is kept.
        min_step_size: the smallest step size.
        max_step_size: the largest step size.

    Returns:
        ``chain(scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size,
        max_step_size), scale(-1.0))``.

    Raises:
        ValueError: for a negative initial step size or invalid factors and bounds.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.rprop(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.6360, -1.6360])

    References:
        Riedmiller and Braun, A direct adaptive method for faster backpropagation learning:
        the RPROP algorithm, ICNN 1993. https://ieeexplore.ieee.org/document/298623 —
        Igel and Hüsken, Empirical evaluation of the improved Rprop learning algorithms,
        Neurocomputing 2003. https://doi.org/10.1016/S0925-2312(01)00700-7

    torch.optim equivalent: `torch.optim.Rprop(lr, etas=(eta_minus, eta_plus),
    step_sizes=(min_step_size, max_step_size))` gives the same numbers when ``learning_rate``
    lies within the step-size bounds (torch also clips the initial step size).
    """
    return chain(
        transforms.scale_by_rprop(
            learning_rate=learning_rate,
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            min_step_size=min_step_size,
            max_step_size=max_step_size,
        ),
        transforms.scale(-1.0),
    )
