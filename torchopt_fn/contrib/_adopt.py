"""ADOPT: Adam with the second moment of the *previous* step, and the update clipped."""

from __future__ import annotations

from collections.abc import Callable

import torch

from torchopt_fn._base import GradientTransformation, Scalar, ScalarOrSchedule, params_device
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn.transforms._adam import ScaleByAdamState
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import tree_float_dtype
from torchopt_fn.tree._ops import map_leaves

__all__ = ["adopt", "scale_by_adopt"]


def _fourth_root(count: torch.Tensor) -> torch.Tensor:
    return count**0.25


@record_hyperparams
def scale_by_adopt(
    b1: Scalar = 0.9,
    b2: Scalar = 0.9999,
    eps: Scalar = 1e-6,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[torch.Tensor], torch.Tensor] = _fourth_root,
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""ADOPT's direction (Taniguchi et al., 2024).

    The gradient is normalised by the second moment *before* this step's gradient enters it,
    $\tilde g_t = g_t / \max(\sqrt{v_{t-1}}, \epsilon)$, clipped to
    $\pm$ ``clip_value_fn(t)`` (default $t^{1/4}$), then averaged into the momentum,
    $m_t = \beta_1 m_{t-1} + (1 - \beta_1)\tilde g_t$; $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$.
    The first step only initialises $v_1 = g_1^2$ (its update is 0). No bias correction.
    ``clip_value_fn`` receives the step count as a float of the updates' dtype. ``mu_dtype``
    and ``nu_dtype`` set the moments' dtypes (default: the params').

    Returns:
        A `GradientTransformation` with state `ScaleByAdamState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_adopt()
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for g in (2.0, 2.0):
        ...     u, state = tx.update({"w": torch.tensor([g])}, state)
        ...     print(u["w"])
        tensor([0.])
        tensor([0.1000])

    References:
        Taniguchi et al., ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal
        Rate, NeurIPS 2024. https://arxiv.org/abs/2411.02853
    """

    def init_fn(params):
        return ScaleByAdamState(
            count=torch.zeros((), dtype=torch.int64, device=params_device(params)),
            mu=tree_map(lambda p: torch.zeros_like(p, dtype=mu_dtype), params),
            nu=tree_map(lambda p: torch.zeros_like(p, dtype=nu_dtype), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        dtype = tree_float_dtype(updates)
        started = state.count > 0
        one = torch.ones((), dtype=dtype, device=state.count.device)
        d2 = torch.where(started, b2 * one, 0.0 * one)  # in the updates' precision
        d1 = torch.where(started, b1 * one, one)
        clip = clip_value_fn(state.count.to(dtype)) if use_clipping else None

        def step(ops, gs, mus, nus):
            new_nu, new_mu, out = [], [], []
            for g, m, v in zip(gs, mus, nus):
                d2_, d1_ = d2.to(v.dtype), d1.to(m.dtype)
                new_nu.append((1 - d2_) * (g * g.conj()).real + d2_ * v)
                normed = g / torch.clamp(torch.sqrt(v), min=eps)
                if clip is not None:
                    normed = torch.clamp(normed, -clip, clip)
                mu = (1 - d1_) * normed + d1_ * m
                out.append((1 - d1_) * normed + d1_ * mu if nesterov else mu)
                new_mu.append(mu)
            return out, new_mu, new_nu

        out, mu, nu = map_leaves(
            step, updates, state.mu, state.nu, keep=(None, 0, 1), what="scale_by_adopt"
        )
        return out, ScaleByAdamState(state.count + 1, mu, nu)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def adopt(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.9999,
    eps: Scalar = 1e-6,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[torch.Tensor], torch.Tensor] = _fourth_root,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """ADOPT: `scale_by_adopt`, then ``-learning_rate``. ``state_dtype`` is the dtype of both
    moments where ``mu_dtype``/``nu_dtype`` are not given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.adopt(0.1)
        >>> params = {"w": torch.ones(1)}
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.tensor([2.0])}, state, params)
        >>> u["w"]
        tensor([-0.0100])
    """
    return chain(
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype or state_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
            nu_dtype=nu_dtype or state_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )
