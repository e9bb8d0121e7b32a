"""The RMS family: RMSProp, Adagrad and Adadelta.

Each optimizer is a `chain` of public transforms with optax 0.2.8's signature, and its
updates are already negated. The learning rate may be a float, a 0-d tensor or a schedule.
"""

from __future__ import annotations

from torchopt_fn import transforms
from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import identity
from torchopt_fn._validate import check_non_negative

__all__ = [
    "adadelta",
    "adagrad",
    "rmsprop",
]

"""A tree of booleans shaped like the params (or a function of the params returning one)."""


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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
    return chain(
        transforms.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        transforms.scale_by_adadelta(rho=rho, eps=eps),
        transforms.scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )
