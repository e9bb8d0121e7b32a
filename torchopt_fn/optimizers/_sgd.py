"""Stochastic gradient descent and its relatives: momentum, gradient noise, optimism, Polyak steps.

Each optimizer is a `chain` of public transforms with optax 0.2.8's signature, and its
updates are already negated. The learning rate may be a float, a 0-d tensor or a schedule.
"""

from __future__ import annotations

import torch

from torchopt_fn import transforms
from torchopt_fn._base import GradientTransformation, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._fused import attach_plan, sgd_plan
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import identity

__all__ = [
    "noisy_sgd",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "sgd",
]

"""A tree of booleans shaped like the params (or a function of the params returning one)."""


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
    tx = chain(stage, transforms.scale_by_learning_rate(learning_rate))
    # momentum=0.0 keeps a (trivial) buffer that the kernel would not update.
    plain = isinstance(momentum, float) and momentum > 0 and accumulator_dtype is None
    tx = attach_plan(tx, sgd_plan(learning_rate, momentum, nesterov) if plain else None)
    tx.torch_step = False  # torch.optim.SGD keeps no step count: the `Optimizer` adapter neither
    return tx


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


# The `Optimizer` adapter passes these the loss as ``value`` (from ``step(closure)``).
polyak_sgd.takes_loss = True  # type: ignore[attr-defined]
