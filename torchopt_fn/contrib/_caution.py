"""Cautious optimizers: drop the update components that disagree with the gradient."""

from __future__ import annotations

import torch

from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_non_negative, check_positive
from torchopt_fn.transforms._adam import scale_by_adam
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.transforms._sign import scale_by_lion
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = ["caution", "cautious_adamw", "cautious_lion"]


@record_hyperparams
def caution(
    inner: GradientTransformation, eps: Scalar = 1e-3, *, negated: bool = True
) -> GradientTransformation:
    r"""Make any momentum optimizer cautious (Liang et al., 2024).

    With $u_t$ the update ``inner`` proposes and $g_t$ the gradient this transformation
    receives, keep only the components where the step goes downhill,
    $\phi_t = \mathbb{1}(\pm u_t \odot g_t > 0)$, and rescale by the fraction kept, per
    tensor: $\tilde u_t = u_t \odot \phi_t / \max(\operatorname{mean}(\phi_t), \epsilon)$.
    The sign is the one of the updates ``inner`` returns: with ``negated`` (the default, a
    whole optimizer such as `adamw`, whose updates are added to the params) a component
    is kept where $u_t g_t < 0$; with ``negated=False`` (a direction such as
    `scale_by_adam`, that a later learning-rate stage negates) where $u_t g_t > 0$. A zero
    component of either is dropped, as in the paper.

    The normalisation is the authors' current code's, ``mask / mask.mean().clamp(min=eps)``.
    The paper's one-liner divides by ``mask.mean() + eps`` (a denominator at most ``eps``
    larger); the authors' first code multiplied by ``numel / (sum + 1)``, which rescales
    less by ``sum / (sum + 1)``, noticeably so only in small tensors. Put ``caution`` where
    the gradients come in (first in a chain): what it receives is the $g_t$ it compares
    with. The state is ``inner``'s.

    Wrapping a whole optimizer masks its weight decay too; `cautious_adamw` and
    `cautious_lion` mask the direction only, as the authors' C-AdamW and C-Lion do.

    Args:
        inner: the optimizer (or direction, with ``negated=False``) to make cautious.
        eps: $\epsilon > 0$, the smallest fraction the rescaling divides by.
        negated: whether ``inner``'s updates are already negated by a learning rate.

    Returns:
        A `GradientTransformation` with ``inner``'s state.

    Raises:
        ValueError: for a non-positive ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.caution(tf.sgd(1.0, momentum=0.9))
        >>> params = {"w": torch.zeros(4)}
        >>> state = tx.init(params)
        >>> _, state = tx.update({"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}, state, params)
        >>> u, _ = tx.update({"w": torch.tensor([-0.5, -2.0, -0.5, 1.0])}, state, params)
        >>> u["w"]  # u = -(g + 0.9 m): uphill where g = -0.5, dropped; the rest doubled
        tensor([-0.0000,  2.2000, -0.0000, -3.8000])

    References:
        Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with One Line of
        Code, 2024. https://arxiv.org/abs/2411.16085
    """
    check_positive("eps", eps)
    downhill = -1.0 if negated else 1.0

    def init_fn(params):
        return inner.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        proposed, new_state = inner.update(updates, state, params, **extra_args)

        def step(ops, us, gs):
            agree = ops.mul(ops.sign(us), ops.sign(cast_like(gs, us)))
            out = []
            for u, a in zip(us, agree):
                kept = (a * downhill > 0).to(u.dtype)
                out.append(u * (kept / torch.clamp(kept.mean(), min=eps)))
            return out

        out = map_leaves(step, proposed, updates, complex_as_real=True, what="caution")
        return out, new_state

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def cautious_adamw(
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
    caution_eps: Scalar = 1e-3,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""C-AdamW: `adamw` with Adam's direction made cautious, the weight decay not.

    $u_t = -\eta_t (\operatorname{caution}(d_t) + \lambda \theta_t)$, $d_t$ Adam's
    direction (see `caution`). Our `adamw`'s arguments and defaults; the authors' code
    defaults to ``eps=1e-6`` and ``weight_decay=0``.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1)$, decay of the first moment.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment.
        eps: $\epsilon$, added to the denominator outside the square root.
        eps_root: $\epsilon_{root}$, added inside the square root.
        mu_dtype: dtype of the first moment (default: the params').
        nu_dtype: dtype of the second moment (default: the params').
        state_dtype: the dtype of both where ``mu_dtype``/``nu_dtype`` are not given.
        weight_decay: $\lambda \ge 0$, multiplied by the learning rate.
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.
        nesterov: use Nesterov momentum.
        caution_eps: `caution`'s ``eps``.

    Returns:
        ``chain(caution(scale_by_adam(...), caution_eps, negated=False),
        add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a hyperparameter outside its range.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.cautious_adamw(0.1, weight_decay=0.0)
        >>> params = {"w": torch.zeros(2)}
        >>> u, _ = tx.update({"w": torch.tensor([1.0, -1.0])}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.1000,  0.1000])

    References:
        Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with One Line of
        Code, 2024. https://arxiv.org/abs/2411.16085
    """
    check_non_negative("weight_decay", weight_decay)
    return chain(
        caution(
            scale_by_adam(
                b1,
                b2,
                eps,
                eps_root,
                mu_dtype or state_dtype,
                nesterov=nesterov,
                nu_dtype=nu_dtype or state_dtype,
            ),
            caution_eps,
            negated=False,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@record_hyperparams
def cautious_lion(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: torch.dtype | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
    *,
    caution_eps: Scalar = 1e-3,
) -> GradientTransformation:
    r"""C-Lion: `lion` with its sign direction made cautious, the weight decay not.

    $u_t = -\eta_t (\operatorname{caution}(\operatorname{sign}(c_t)) + \lambda \theta_t)$
    with Lion's $c_t$ (see `caution`). Our `lion`'s arguments and defaults.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        b1: $\beta_1 \in [0, 1]$, the interpolation between momentum and gradient.
        b2: $\beta_2 \in [0, 1]$, decay of the momentum.
        mu_dtype: dtype of the momentum (default: the params').
        weight_decay: $\lambda \ge 0$, multiplied by the learning rate.
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay.
        caution_eps: `caution`'s ``eps``.

    Returns:
        ``chain(caution(scale_by_lion(b1, b2, mu_dtype), caution_eps, negated=False),
        add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``.

    Raises:
        ValueError: for a hyperparameter outside its range.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.cautious_lion(0.1, weight_decay=0.0)
        >>> params = {"w": torch.zeros(2)}
        >>> u, _ = tx.update({"w": torch.tensor([1.0, 0.0])}, tx.init(params), params)
        >>> u["w"]  # the zero component is dropped, the other doubled
        tensor([-0.2000, -0.0000])

    References:
        Liang, Chen, Liu and Liu, Cautious Optimizers: Improving Training with One Line of
        Code, 2024. https://arxiv.org/abs/2411.16085
    """
    check_non_negative("weight_decay", weight_decay)
    return chain(
        caution(scale_by_lion(b1, b2, mu_dtype), caution_eps, negated=False),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
