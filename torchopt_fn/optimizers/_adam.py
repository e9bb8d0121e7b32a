"""The Adam family: Adam(W), NAdam(W), AMSGrad, Adamax(W), RAdam, AdaBelief, Yogi, Adan.

Each optimizer is a `chain` of public transforms with optax 0.2.8's signature, and its
updates are already negated. The learning rate may be a float, a 0-d tensor or a schedule.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from torchopt_fn import transforms
from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._fused import adam_plan, with_fused_adam
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_non_negative

__all__ = [
    "adabelief",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "amsgrad",
    "nadam",
    "nadamw",
    "optimistic_adam",
    "optimistic_adam_v2",
    "radam",
    "yogi",
]


def _adam_scaling(
    b1: Scalar,
    b2: Scalar,
    eps: Scalar,
    eps_root: Scalar,
    mu_dtype: torch.dtype | None,
    nu_dtype: torch.dtype | None,
    state_dtype: torch.dtype | None,
    nesterov: bool,
) -> tuple[GradientTransformation, bool]:
    """`adam`'s and `adamw`'s `scale_by_adam` (each moment's dtype defaulting to
    ``state_dtype``, the shorthand), and whether it is plain Adam, which a fused kernel runs."""
    mu_dtype, nu_dtype = mu_dtype or state_dtype, nu_dtype or state_dtype
    scaling = transforms.scale_by_adam(
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
    )
    plain = _is_zero(eps_root) and mu_dtype is None and nu_dtype is None and not nesterov
    return scaling, plain


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 0


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
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
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
        nu_dtype: dtype of the second moment (default: the params'; optax has no such
            argument). bfloat16 halves its memory but rounds $v_t$ to 8 bits of mantissa.
        state_dtype: the dtype of both moments where ``mu_dtype``/``nu_dtype`` are not given.

    Returns:
        ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov,
        nu_dtype=nu_dtype), scale_by_learning_rate(learning_rate))``.

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
    scaling, plain = _adam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, state_dtype, nesterov)
    tx = chain(scaling, transforms.scale_by_learning_rate(learning_rate))
    plan = adam_plan(False, learning_rate, b1, b2, eps, 0.0) if plain else None
    return with_fused_adam(tx, plan)


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
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
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
        nu_dtype: dtype of the second moment (default: the params'; optax has no such
            argument). bfloat16 halves its memory but rounds $v_t$ to 8 bits of mantissa.
        state_dtype: the dtype of both moments where ``mu_dtype``/``nu_dtype`` are not given.

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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
    scaling, plain = _adam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, state_dtype, nesterov)
    tx = chain(
        scaling,
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )
    plan = adam_plan(True, learning_rate, b1, b2, eps, weight_decay, mask) if plain else None
    return with_fused_adam(tx, plan)


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
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
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
        nu_dtype: dtype of the second moment (default: the params').
        state_dtype: the dtype of both moments where ``mu_dtype``/``nu_dtype`` are not given.

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
    return adam(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        state_dtype=state_dtype,
    )


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
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
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
        nu_dtype: dtype of the second moment (default: the params').
        state_dtype: the dtype of both moments where ``mu_dtype``/``nu_dtype`` are not given.

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
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        weight_decay,
        mask,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        state_dtype=state_dtype,
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
    *,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
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
        nu_dtype: dtype of the second moment and its maximum (default: the params').
        state_dtype: the dtype of all three where ``mu_dtype``/``nu_dtype`` are not given.

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
            mu_dtype=mu_dtype or state_dtype,
            bias_correction_mu=bias_correction_mu,
            bias_correction_nu=bias_correction_nu,
            nu_dtype=nu_dtype or state_dtype,
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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
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
        tensor([ 0.7018, -1.7008])

    References:
        Zaheer et al., Adaptive Methods for Nonconvex Optimization, NeurIPS 2018.
        https://papers.nips.cc/paper/8186-adaptive-methods-for-nonconvex-optimization
    """
    return chain(
        transforms.scale_by_yogi(b1=b1, b2=b2, eps=eps),
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
    check_non_negative("weight_decay", weight_decay)  # as torch.optim does
    return chain(
        transforms.scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root),
        transforms.add_decayed_weights(weight_decay, mask),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: Scalar = 1.0,
    beta: Scalar = 1.0,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    nesterov: bool = True,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Optimistic Adam, for min-max games (GANs): Adam's direction made optimistic.

    $d_t$ = Adam's (Nesterov by default) direction, $u_t = -\eta_t((\alpha+\beta) d_t -
    \beta d_{t-1})$: `scale_by_adam`, then `scale_by_optimistic_gradient`, then the lr.
    ``mu_dtype``, ``nu_dtype`` and ``state_dtype`` set the moments' dtypes as in `adam`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.optimistic_adam_v2(0.1)
        >>> params = {"w": torch.tensor([1.0])}
        >>> u, _ = tx.update({"w": torch.tensor([2.0])}, tx.init(params), params)
        >>> u["w"]  # the first step: alpha times Adam's Nesterov direction
        tensor([-0.1474])

    References:
        Daskalakis et al., Training GANs with Optimism, ICLR 2018.
    """
    moments, _ = _adam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, state_dtype, nesterov)
    return chain(
        moments,
        transforms.scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        transforms.scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def optimistic_adam(
    learning_rate: Scalar,
    optimism: Scalar | None = None,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Deprecated in optax 0.2.8 for `optimistic_adam_v2`: $\alpha = $ ``learning_rate``,
    $\beta = $ ``optimism`` (default: the learning rate), and a unit learning rate.

    Raises:
        ValueError: for a schedule as the learning rate (use `optimistic_adam_v2`).

    Examples:
        >>> import warnings, torch, torchopt_fn as tf
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     tx = tf.optimistic_adam(0.1)
        >>> params = {"w": torch.tensor([1.0])}
        >>> tx.update({"w": torch.tensor([2.0])}, tx.init(params), params)[0]["w"]
        tensor([-0.1474])
    """
    warnings.warn(
        "`optimistic_adam` is deprecated, please use `optimistic_adam_v2` instead.",
        DeprecationWarning,
        stacklevel=3,  # the caller of the recorded factory
    )
    if callable(learning_rate):
        raise ValueError(
            "optimistic_adam: learning rate schedules are not supported; use optimistic_adam_v2."
        )
    moments, _ = _adam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, state_dtype, nesterov)
    return chain(
        moments,
        transforms.scale_by_optimistic_gradient(
            alpha=learning_rate, beta=learning_rate if optimism is None else optimism
        ),
        transforms.scale_by_learning_rate(1.0),  # flips the sign
    )
