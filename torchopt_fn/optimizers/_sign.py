"""Sign-based optimizers: signSGD, Signum, Lion and Rprop.

Each optimizer is a `chain` of public transforms with optax 0.2.8's signature, and its
updates are already negated. The learning rate may be a float, a 0-d tensor or a schedule.
"""

from __future__ import annotations

import torch

from torchopt_fn import transforms
from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_non_negative

__all__ = [
    "lion",
    "rprop",
    "sign_sgd",
    "signum",
]

"""A tree of booleans shaped like the params (or a function of the params returning one)."""


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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
    return chain(
        transforms.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
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
