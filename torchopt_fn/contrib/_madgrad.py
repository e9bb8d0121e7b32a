"""MADGRAD: dual averaging with momentum and a cube-root denominator."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, ScalarOrSchedule, init_count, value_at
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import require_params
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._ops import map_leaves

__all__ = ["MadgradState", "madgrad", "scale_by_madgrad"]


class MadgradState(NamedTuple):
    """State of `scale_by_madgrad`: the count, the weighted sums of squared gradients and of
    gradients, and the initial params.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_madgrad(0.1).init({"w": torch.ones(1)}).x0
        {'w': tensor([1.])}
    """

    count: torch.Tensor
    grad_sum_sq: Any
    s: Any
    x0: Any


@record_hyperparams
def scale_by_madgrad(
    learning_rate: ScalarOrSchedule, momentum: Scalar = 0.9, eps: Scalar = 1e-6
) -> GradientTransformation:
    r"""MADGRAD's update (Defazio & Jelassi, 2021): the learning rate is inside.

    With $\lambda_k = (\eta_k + \epsilon)\sqrt{k+1}$: $G_k = G_{k-1} + \lambda_k g_k^2$,
    $s_k = s_{k-1} + \lambda_k g_k$, $z = x_0 - s_k / (G_k^{1/3} + \epsilon)$, and the new
    params are $(1 - c) z + c x$ (momentum $c$). Needs ``params``.

    Returns:
        A `GradientTransformation` with state `MadgradState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_madgrad(0.1, momentum=0.0)
        >>> params = {"w": torch.ones(1)}
        >>> u, _ = tx.update({"w": torch.ones(1)}, tx.init(params), params)
        >>> u["w"]  # -lambda / lambda ** (1/3)
        tensor([-0.2154])

    References:
        Defazio & Jelassi, Adaptivity without Compromise: A Momentumized, Adaptive, Dual
        Averaged Gradient Method for Stochastic Optimization, 2021.
        https://arxiv.org/abs/2101.11075
    """

    def init_fn(params):
        zeros = lambda: tree_map(torch.zeros_like, params)  # noqa: E731
        x0 = tree_map(lambda p: p.detach().clone(), params)
        return MadgradState(init_count(params), zeros(), zeros(), x0)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_madgrad")
        lr = value_at(learning_rate, state.count)
        lamb = (lr + eps) * torch.sqrt((state.count + 1).to(torch.float64))

        def step(ops, gs, ps, sqs, ss, x0s):
            outs, new_sqs, new_ss = [], [], []
            for g, p, sq, s, x0 in zip(gs, ps, sqs, ss, x0s):
                sq = sq + (lamb * g**2).to(g.dtype)
                s = s + (lamb * g).to(g.dtype)
                z = x0 - s / (torch.pow(sq, 1.0 / 3.0) + eps)
                outs.append((1 - momentum) * z + momentum * p - p)
                new_sqs.append(sq)
                new_ss.append(s)
            return outs, new_sqs, new_ss

        out, sq, s = map_leaves(
            step,
            updates,
            params,
            state.grad_sum_sq,
            state.s,
            state.x0,
            keep=(None, 1, 2),
            what="scale_by_madgrad",
        )
        return out, MadgradState(state.count + 1, sq, s, state.x0)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: Scalar = 0.9,
    weight_decay: Scalar = 0.0,
    eps: Scalar = 1e-6,
) -> GradientTransformation:
    """MADGRAD: coupled weight decay, then `scale_by_madgrad`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.madgrad(0.1, momentum=0.0)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([-0.2154])
    """
    return chain(
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate, momentum, eps),
    )
