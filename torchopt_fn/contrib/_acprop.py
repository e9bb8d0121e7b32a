"""ACProp: AdaBelief's centred second moment, used one step late (asynchronously)."""

from __future__ import annotations

import torch

from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule, init_count
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn.transforms._adam import ScaleByBeliefState, _check_betas
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._math import bias_factor, moment, tree_zeros_like
from torchopt_fn.tree._ops import map_leaves

__all__ = ["acprop", "scale_by_acprop"]


@record_hyperparams
def scale_by_acprop(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
) -> GradientTransformation:
    r"""Rescale updates by ACProp (Zhuang et al., 2021), as optax 0.2.8 computes it.

    The denominator uses only what was known before this step; the numerator is this step's
    gradient:

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$,
    $s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_{t-1})^2 + \epsilon_{root}$,
    $u_t = g_t / (\sqrt{s_{t-1} / (1-\beta_2^{t-1})} + \epsilon)$, and on the first step
    (no $s_0$ to use) $u_1 = g_1 / (1 + \epsilon)$.

    This is optax's rule (its names and state are kept), which differs from the paper's
    Algorithm in two ways: the paper's numerator is the momentum $m_t$, optax's (and this)
    the raw gradient $g_t$; the paper centres the belief on the new momentum,
    $(g_t - m_t)^2$, optax (and this) on the previous one, $(g_t - m_{t-1})^2$. The paper
    also leaves $s_{t-1}$ uncorrected. Complex parameters are treated as pairs of reals
    (torch.optim's rule, as `scale_by_belief` here). No torch.optim equivalent.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the belief $s$, in ``[0, 1)``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added to the belief at every step (stored in the state), ``>= 0``; keep it
            positive when differentiating through the update.

    Returns:
        A `GradientTransformation` with state `ScaleByBeliefState` (optax's).

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_acprop(b1=0.5, b2=0.5, eps=0.0, eps_root=0.0)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for g in (2.0, 4.0):
        ...     u, state = tx.update({"w": torch.tensor([g])}, state)
        ...     print(u["w"])
        tensor([2.])
        tensor([2.])

    References:
        Zhuang et al., Momentum Centering and Asynchronous Update for Adaptive Gradient
        Methods, NeurIPS 2021. https://arxiv.org/abs/2110.05454
    """
    _check_betas(b1, b2, eps, eps_root)

    def init_fn(params):
        return ScaleByBeliefState(
            count=init_count(params), mu=tree_zeros_like(params), nu=tree_zeros_like(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def correction(t: torch.Tensor, dtype: torch.dtype, device: torch.device):
            # nu_hat = nu / d + o: s_{t-1} / (1 - b2^(t-1)) after the first step, and exactly
            # 1 on it (nu / inf + 1), without a `where` per leaf.
            start = t == 0
            bc2 = bias_factor(b2, torch.clamp(t, min=1), dtype, device)
            d = torch.where(start, torch.full_like(bc2, float("inf")), bc2)
            return d, start.to(dtype)

        def step(ops, gs, mus, nus):
            new_mus = moment(ops, gs, mus, b1, order=1)
            centred = ops.sub(gs, mus)
            new_nus = ops.add_(moment(ops, centred, nus, b2, order=2), eps_root)
            d, o = ops.scalar(nus, correction, state.count)
            denom = ops.add_(ops.sqrt_(ops.add_(ops.div(nus, d), o)), eps)
            return ops.div(gs, denom), new_mus, new_nus

        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_acprop",
        )
        return out, ScaleByBeliefState(count=state.count + 1, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def acprop(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-16,
    eps_root: Scalar = 1e-16,
    weight_decay: Scalar = 0.0,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    r"""ACProp: `scale_by_acprop`, decayed weights, then ``-learning_rate``.

    $u_t = -\eta_t \big(g_t / (\sqrt{\hat s_{t-1}} + \epsilon) + \lambda x_t\big)$: the
    weight decay $\lambda$ (``weight_decay``, applied where ``mask`` says) is multiplied by
    the learning rate, as in torch's AdamW. See `scale_by_acprop` for the rule, and how
    optax's (kept here) differs from the paper's.

    Args:
        learning_rate: a float, a 0-d tensor, or a schedule of the step count.
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the belief, in ``[0, 1)``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added to the belief at every step, ``>= 0``.
        weight_decay: the decoupled weight decay $\lambda$, ``>= 0``.
        mask: which parameters are decayed (see `MaskOrFn`); all by default.

    Returns:
        A `GradientTransformation` (a `chain`).

    Raises:
        ValueError: for a hyperparameter outside its range.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.acprop(0.1)
        >>> params = {"w": torch.ones(2)}
        >>> u, state = tx.update({"w": torch.tensor([1.0, -2.0])}, tx.init(params), params)
        >>> u["w"]  # the first step divides by 1
        tensor([-0.1000,  0.2000])

    References:
        Zhuang et al., Momentum Centering and Asynchronous Update for Adaptive Gradient
        Methods, NeurIPS 2021. https://arxiv.org/abs/2110.05454
    """
    return chain(
        scale_by_acprop(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
