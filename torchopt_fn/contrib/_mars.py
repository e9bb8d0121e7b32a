"""MARS: Adam (or Lion) on a variance-reduced gradient, corrected by the last one."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    init_count,
    torch_names,
    value_at,
)
from torchopt_fn._combine import chain, partition
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.optimizers._adam import adamw
from torchopt_fn.transforms._adam import adam_direction, corrections
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import moment, tree_zeros_like
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = ["ScaleByMarsState", "mars", "scale_by_mars"]

_MARS_TYPES = ("mars-adamw", "mars-lion")


class ScaleByMarsState(NamedTuple):
    """State of `scale_by_mars`: the count, the moments of the corrected gradient, and the
    last gradient (``nu`` is an `EmptyState` for ``"mars-lion"``, which has no second
    moment).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_mars().init({"w": torch.zeros(2)}).last_grad
        {'w': tensor([0., 0.])}
    """

    count: torch.Tensor
    mu: Any
    nu: Any
    last_grad: Any

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq", last_grad="last_grad")


def _check(b1: Scalar, b2: Scalar, eps: Scalar, gamma: Any, mars_type: str) -> None:
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("gamma", gamma)
    if mars_type not in _MARS_TYPES:
        raise ValueError(
            f"mars_type must be one of {_MARS_TYPES} (MARS-Shampoo is not implemented), "
            f"got {mars_type!r}."
        )


@record_hyperparams
def scale_by_mars(
    b1: Scalar = 0.95,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    gamma: ScalarOrSchedule = 0.025,
    mu_dtype: torch.dtype | None = None,
    *,
    mars_type: str = "mars-adamw",
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""MARS's direction (Yuan et al., 2024), the authors' approximate form ("MARS-approx").

    The gradient is corrected by the change since the last step and clipped to norm 1,
    per tensor: $c_t = g_t + \gamma_t \frac{\beta_1}{1-\beta_1} (g_t - g_{t-1})$,
    $\tilde c_t = c_t / \max(1, \|c_t\|_2)$, then $m_t = \beta_1 m_{t-1} + (1-\beta_1)
    \tilde c_t$. ``"mars-adamw"``: $v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde c_t^2$ and
    $u_t = \hat m_t / (\sqrt{\hat v_t} + \epsilon)$ with Adam's bias corrections;
    ``"mars-lion"``: $u_t = \operatorname{sign}(m_t)$.

    $g_0 = 0$, as in the authors' code, so the first step sees
    $c_1 = (1 + \gamma_1 \beta_1 / (1-\beta_1))\, g_1$. MARS-Lion is the authors' (the sign
    of the momentum itself, not Lion's interpolation of momentum and gradient). $g_{t-1}$ is
    the gradient of the previous step (its batch), not a second gradient at the previous
    params: the exact MARS is not implemented, nor MARS-Shampoo, nor ``amsgrad``.

    Args:
        b1: $\beta_1 \in [0, 1)$, decay of the momentum, which also scales the correction.
        b2: $\beta_2 \in [0, 1)$, decay of the second moment (unused by ``"mars-lion"``).
        eps: $\epsilon \ge 0$, added to the denominator outside the square root.
        gamma: $\gamma_t \ge 0$, the strength of the correction (a float, a 0-d tensor or
            a schedule of the step count); 0 gives Adam's direction (with ``"mars-lion"``,
            the sign of the momentum) on the clipped gradient.
        mu_dtype: dtype of the momentum (default: the params').
        nu_dtype: dtype of the second moment (default: the params').
        mars_type: ``"mars-adamw"`` or ``"mars-lion"``.

    Returns:
        A `GradientTransformation` with state `ScaleByMarsState`.

    Raises:
        ValueError: for a hyperparameter outside its range or another ``mars_type``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_mars(gamma=0.0)  # Adam on the clipped gradient
        >>> u, _ = tx.update({"w": torch.tensor([3.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1.0000, -1.0000])

    References:
        Yuan, Liu, Wu, Zhang and Gu, MARS: Unleashing the Power of Variance Reduction for
        Training Large Models, 2024. https://arxiv.org/abs/2411.10438
    """
    _check(b1, b2, eps, gamma, mars_type)
    adam = mars_type == "mars-adamw"

    def init_fn(params):
        return ScaleByMarsState(
            count=init_count(params),
            mu=tree_zeros_like(params, dtype=mu_dtype),
            nu=tree_zeros_like(params, dtype=nu_dtype) if adam else EmptyState(),
            last_grad=tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1
        scale = value_at(gamma, state.count) * (b1 / (1 - b1))

        def step(ops, gs, mus, lasts, *nus):
            cs = ops.add(gs, ops.sub(gs, cast_like(lasts, gs)), alpha=scale)
            cs = [c / torch.clamp(n, min=1.0) for c, n in zip(cs, ops.norm(cs))]
            mus = moment(ops, cs, mus, b1, order=1)
            # A copy: the state must not alias a gradient the caller may overwrite in place.
            lasts = [g.clone() for g in gs]
            if not adam:
                return ops.sign(mus), mus, lasts
            nus = moment(ops, cs, nus[0], b2, order=2)
            out = adam_direction(ops, mus, nus, eps, 0.0, corrections(ops, mus, b1, b2, count))
            return out, mus, lasts, nus

        trees = (state.mu, state.last_grad) + ((state.nu,) if adam else ())
        out, mu, last, *nu = map_leaves(
            step,
            updates,
            *trees,
            keep=(None, 0, 1, 2),
            complex_as_real=True,
            what="scale_by_mars",
        )
        return out, ScaleByMarsState(count, mu, nu[0] if adam else state.nu, last)

    return GradientTransformation(init_fn, update_fn)


def _matrices(params: Any) -> Any:
    return tree_map(lambda p: "mars" if p.dim() == 2 else "adamw", params)


@record_hyperparams
def mars(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: Scalar = 0.95,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    gamma: ScalarOrSchedule = 0.025,
    mu_dtype: torch.dtype | None = None,
    *,
    mars_type: str = "mars-adamw",
    optimize_1d: bool = False,
    learning_rate_1d: ScalarOrSchedule = 3e-3,
    b1_1d: Scalar = 0.9,
    b2_1d: Scalar = 0.95,
    weight_decay_1d: ScalarOrSchedule = 0.1,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""MARS: `scale_by_mars`, decoupled weight decay, then ``-learning_rate``.

    $u_t = -\eta_t (d_t + \lambda \theta_t)$, $d_t$ MARS's direction. As in the authors'
    code, by default (``optimize_1d=False``) only the matrices (2-D params) get MARS; every
    other param (vectors, scalars, convolution kernels) gets `adamw` with its own
    ``learning_rate_1d``, ``b1_1d``, ``b2_1d`` and ``weight_decay_1d``. ``optimize_1d=True``
    gives MARS (and ``weight_decay``) to all. The defaults are the authors'.

    The authors' code scales the learning rate of the other params by the ratio
    ``lr_1d / lr`` fixed at construction, so a scheduler of ``lr`` moves both; here they are
    two hyperparameters, each a float or a schedule.

    Args:
        learning_rate: $\eta_t$ of the matrices: a float, a 0-d tensor or a schedule.
        b1: $\beta_1 \in [0, 1)$ (see `scale_by_mars`).
        b2: $\beta_2 \in [0, 1)$.
        eps: $\epsilon \ge 0$.
        weight_decay: $\lambda \ge 0$ of the matrices, multiplied by the learning rate.
        gamma: $\gamma_t \ge 0$, the strength of the correction.
        mu_dtype: dtype of the momentum (default: the params').
        nu_dtype: dtype of the second moment (default: the params').
        state_dtype: the dtype of both where ``mu_dtype``/``nu_dtype`` are not given.
        mars_type: ``"mars-adamw"`` or ``"mars-lion"``.
        optimize_1d: give MARS to the params that are not matrices too.
        learning_rate_1d: the other params' `adamw` learning rate.
        b1_1d: their $\beta_1$.
        b2_1d: their $\beta_2$.
        weight_decay_1d: their weight decay.

    Returns:
        ``chain(scale_by_mars(...), add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate))``, inside a `partition` with `adamw` for the
        other params unless ``optimize_1d``. Needs ``params`` at ``update``.

    Raises:
        ValueError: for a hyperparameter outside its range or another ``mars_type``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.tensor([[1.0, -2.0]]), "b": torch.tensor([0.5])}
        >>> tx = tf.contrib.mars(learning_rate=0.1, learning_rate_1d=0.1, weight_decay_1d=0.0)
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = tf.tree_map(lambda p: 2 * p, params)  # the gradient of sum(p**2)
        ...     updates, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, updates)
        >>> params["w"], params["b"]
        (tensor([[ 0.7004, -1.7000]]), tensor([0.2038]))

    References:
        Yuan, Liu, Wu, Zhang and Gu, MARS: Unleashing the Power of Variance Reduction for
        Training Large Models, 2024. https://arxiv.org/abs/2411.10438
    """
    check_non_negative("weight_decay", weight_decay)
    main = chain(
        scale_by_mars(
            b1,
            b2,
            eps,
            gamma,
            mu_dtype or state_dtype,
            mars_type=mars_type,
            nu_dtype=nu_dtype or state_dtype,
        ),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(learning_rate),
    )
    if optimize_1d:
        return main
    others = adamw(  # the 1-d parameters' moments take the same dtypes
        learning_rate_1d,
        b1_1d,
        b2_1d,
        eps,
        mu_dtype=mu_dtype,
        weight_decay=weight_decay_1d,
        nu_dtype=nu_dtype,
        state_dtype=state_dtype,
    )
    return partition({"mars": main, "adamw": others}, _matrices)
