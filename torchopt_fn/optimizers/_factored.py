"""Memory-saving optimizers: Adafactor and SM3.

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
    "adafactor",
    "sm3",
]

"""A tree of booleans shaped like the params (or a function of the params returning one)."""


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
    if weight_decay_rate is not None:
        check_non_negative("weight_decay_rate", weight_decay_rate)
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
