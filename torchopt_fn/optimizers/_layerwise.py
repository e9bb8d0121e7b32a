"""Layer-wise optimizers: LAMB, LARS, NovoGrad and Fromage.

Each optimizer is a `chain` of public transforms with optax 0.2.8's signature, and its
updates are already negated. The learning rate may be a float, a 0-d tensor or a schedule.
"""

from __future__ import annotations

import torch

from torchopt_fn import transforms
from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain, masked
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import is_schedule
from torchopt_fn._validate import check_non_negative

__all__ = [
    "fromage",
    "lamb",
    "lars",
    "novograd",
]

"""A tree of booleans shaped like the params (or a function of the params returning one)."""


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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
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
    if is_schedule(learning_rate):
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
