"""LaProp: the gradient normalised by its second moment first, then averaged into momentum."""

from __future__ import annotations

import torch

from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.transforms._accumulation import ema
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._rms import scale_by_rms
from torchopt_fn.transforms._scaling import scale_by_learning_rate

__all__ = ["laprop", "scale_by_laprop"]


@record_hyperparams
def scale_by_laprop(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    mu_dtype: torch.dtype | None = None,
    *,
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""LaProp's direction (Ziyin et al., 2020): normalise first, then take momentum.

    $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t / (\sqrt{v_t / (1-\beta_2^t)} + \epsilon)$,
    $u_t = m_t / (1-\beta_1^t)$ (the paper's Algorithm 1, bias corrections $c_n$ and $c_m$).
    Adam averages the raw gradient and divides the average; LaProp averages the already
    divided gradient, so $\beta_1$ and $\beta_2$ can be chosen independently (any pair is
    stable: $|u_t| \le 1 / \sqrt{1-\beta_2}$ whatever the gradients).

    It is ``chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
    ema(b1, debias=True, accumulator_dtype=mu_dtype))``, and its state is theirs.

    The authors' code defaults to ``eps=1e-15``; ``1e-8`` (our `scale_by_adam`'s) is kept
    here, since ``1e-15`` rounds to 0 in float16 and a zero gradient would then give 0/0.

    Args:
        b1: $\beta_1 \in [0, 1)$, decay of the momentum of the normalised gradient.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon \ge 0$, added to the denominator outside the square root.
        mu_dtype: dtype of the momentum (default: the params').
        nu_dtype: dtype of the second moment (default: the params').

    Returns:
        A `GradientTransformation` whose state is ``(ScaleByRmsWithCountState, EmaState)``.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_laprop(eps=0.0)
        >>> state = tx.init({"w": torch.zeros(2)})
        >>> for g in ([2.0, -1.0], [0.5, -1.0]):
        ...     u, state = tx.update({"w": torch.tensor(g)}, state)
        ...     print(u["w"])
        tensor([ 1., -1.])
        tensor([ 0.6542, -1.0000])

    References:
        Ziyin, Wang and Ueda, LaProp: Separating Momentum and Adaptivity in Adam, 2020.
        https://arxiv.org/abs/2002.04839
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    return chain(
        scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True, nu_dtype=nu_dtype),
        ema(b1, debias=True, accumulator_dtype=mu_dtype),
    )


@record_hyperparams
def laprop(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    mu_dtype: torch.dtype | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""LaProp: `scale_by_laprop`, decoupled weight decay, then ``-learning_rate``.

    $u_t = -\eta_t (d_t + \lambda \theta_t)$ with $d_t$ LaProp's direction: the decay is
    multiplied by the learning rate, as in `adamw`.

    Two deliberate differences from the authors' PyTorch code, both invisible with a
    constant learning rate and no decay: it keeps the learning rate inside the momentum
    ($m_t = \beta_1 m_{t-1} + (1-\beta_1)\eta_t \tilde g_t$, corrected by an average of past
    rates), where we follow the paper's Algorithm 1 ($\eta_t$ applied to the corrected
    momentum), so a schedule acts at once; and it decays the params by $\lambda$ not
    multiplied by the learning rate, after the step (its ``weight_decay`` is our
    ``weight_decay * learning_rate``).

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the momentum.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon \ge 0$, added to the denominator outside the square root.
        mu_dtype: dtype of the momentum (default: the params').
        nu_dtype: dtype of the second moment (default: the params').
        state_dtype: the dtype of both where ``mu_dtype``/``nu_dtype`` are not given.
        weight_decay: $\lambda \ge 0$ (a float, a 0-d tensor or a schedule).
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.

    Returns:
        ``chain(scale_by_laprop(b1, b2, eps, mu_dtype), add_decayed_weights(weight_decay,
        mask), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps`` or
            ``weight_decay``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> tx = tf.contrib.laprop(learning_rate=0.1)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = {"w": 2 * params["w"]}  # the gradient of sum(w**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"]
        tensor([ 0.7088, -1.7042])

    References:
        Ziyin, Wang and Ueda, LaProp: Separating Momentum and Adaptivity in Adam, 2020.
        https://arxiv.org/abs/2002.04839
    """
    check_non_negative("weight_decay", weight_decay)
    return chain(
        scale_by_laprop(b1, b2, eps, mu_dtype or state_dtype, nu_dtype=nu_dtype or state_dtype),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
