"""Adam's scaling (`scale_by_adam`); the other adaptive scalings build on the same helpers."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import GradientTransformation, record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.transforms._common import init_count

__all__ = ["ScaleByAdamState", "scale_by_adam"]


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`: step count, first moment ``mu``, second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_adam().init({"w": torch.zeros(2)}).count
        tensor(0)
    """

    count: torch.Tensor
    mu: Any
    nu: Any


def nesterov_mu_hat(updates: Any, mu: Any, b1: Any, count: torch.Tensor) -> Any:
    r"""Nesterov's look-ahead first moment (NAdam), mapped over the non-`None` updates.

    $\hat m_t = \beta_1 m_t / (1 - \beta_1^{t+1}) + (1 - \beta_1) g_t / (1 - \beta_1^t)$.
    """
    mu_hat = _tree.tree_bias_correction(mu, b1, count + 1)
    g_hat = _tree.tree_bias_correction(updates, b1, count)
    return _tree.map_live(
        lambda ops, gs, ms: ops.add(ops.mul(_tree.cast_like(ms, gs), b1), gs, alpha=1 - b1),
        g_hat,
        mu_hat,
    )


def bias_corrected_mu(updates: Any, mu: Any, b1: Any, count: torch.Tensor, nesterov: bool) -> Any:
    r"""$\hat m_t$: the bias-corrected first moment, or Nesterov's look-ahead one."""
    if nesterov:
        return nesterov_mu_hat(updates, mu, b1, count)
    return _tree.tree_bias_correction(mu, b1, count)


def adam_moments(
    updates: Any, state: ScaleByAdamState, b1: Any, b2: Any, nesterov: bool
) -> tuple[torch.Tensor, Any, Any, Any, Any]:
    """Adam's moment step: ``(count, mu, nu, mu_hat, nu_hat)``, shared by Adam and RAdam."""
    mu = _tree.tree_update_moment(updates, state.mu, b1, order=1)
    nu = _tree.tree_update_moment_per_elem_norm(updates, state.nu, b2, order=2)
    count = state.count + 1
    mu_hat = bias_corrected_mu(updates, mu, b1, count, nesterov)
    return count, mu, nu, mu_hat, _tree.tree_bias_correction(nu, b2, count)


def adam_direction(ops, mus: list, nus: list, eps: Any, eps_root: Any) -> list:
    r"""$\hat m / (\sqrt{\hat v + \epsilon_{root}} + \epsilon)$ over lists of leaves."""
    if not (isinstance(eps_root, float) and eps_root == 0.0):
        nus = ops.add(nus, eps_root)
    return ops.div(mus, ops.add(ops.sqrt(nus), eps))


@record_hyperparams
def scale_by_adam(
    b1: float | torch.Tensor = 0.9,
    b2: float | torch.Tensor = 0.999,
    eps: float | torch.Tensor = 1e-8,
    eps_root: float | torch.Tensor = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Rescale updates by Adam's bias-corrected moment estimates.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $\hat m_t = m_t / (1-\beta_1^t)$, $\hat v_t = v_t / (1-\beta_2^t)$,
    $u_t = \hat m_t / (\sqrt{\hat v_t + \epsilon_{root}} + \epsilon)$.
    With ``nesterov`` (NAdam),
    $\hat m_t = \beta_1 m_t / (1-\beta_1^{t+1}) + (1-\beta_1) g_t / (1-\beta_1^t)$.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root; use a small positive value when
            differentiating through the update (the gradient of $\sqrt{x}$ at 0 is infinite).
        mu_dtype: dtype of the first moment (default: the params').
        nesterov: use Nesterov momentum (NAdam).
        nu_dtype: dtype of the second moment (default: the params'); optax lacks it.

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``/``eps_root``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_adam()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1.0000, -1.0000])

    References:
        Kingma and Ba, Adam: A Method for Stochastic Optimization, ICLR 2015.
        https://arxiv.org/abs/1412.6980 — Dozat, Incorporating Nesterov Momentum into Adam, 2016.

    torch.optim equivalent: `torch.optim.Adam` is
    ``chain(scale_by_adam(), scale_by_learning_rate(lr))``.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)

    def init_fn(params):
        return ScaleByAdamState(
            count=init_count(params),
            mu=_tree.tree_zeros_like(params, dtype=mu_dtype),
            nu=_tree.tree_zeros_like(params, dtype=nu_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count, mu, nu, mu_hat, nu_hat = adam_moments(updates, state, b1, b2, nesterov)
        out = _tree.map_live(
            lambda ops, gs, ms, vs: [
                d.to(g.dtype) for d, g in zip(adam_direction(ops, ms, vs, eps, eps_root), gs)
            ],
            updates,
            mu_hat,
            nu_hat,
        )
        return out, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)
