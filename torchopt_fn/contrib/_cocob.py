"""COCOB-Backprop: learning-rate-free optimization by coin betting."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, MaskOrFn, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import require_params
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._ops import map_leaves

__all__ = ["COCOBState", "cocob", "scale_by_cocob"]


class COCOBState(NamedTuple):
    """State of `scale_by_cocob`: the initial params, the negated gradient sum, the largest
    gradient seen, the sum of absolute gradients and the reward, per element.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_cocob().init({"w": torch.ones(1)}).scale
        {'w': tensor([1.0000e-08])}
    """

    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any


@record_hyperparams
def scale_by_cocob(alpha: Scalar = 100.0, eps: Scalar = 1e-8) -> GradientTransformation:
    r"""COCOB-Backprop (Orabona & Tommasi, 2017): each coordinate bets on its gradient's sign.

    With $L$ the largest $|g|$ so far, $G$ the sum of $|g|$, $R$ the reward and $C$ the sum
    of $-g$: the new params are $x_0 + C / (L \max(G + L, \alpha L)) (L + R)$. Needs
    ``params``; the output is the update to them (already a descent step).

    Returns:
        A `GradientTransformation` with state `COCOBState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_cocob()
        >>> params = {"w": torch.zeros(1)}
        >>> u, _ = tx.update({"w": torch.ones(1)}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.0100])

    References:
        Orabona & Tommasi, Training Deep Networks without Learning Rates Through Coin
        Betting, NeurIPS 2017. https://arxiv.org/abs/1705.07795
    """

    def init_fn(params):
        zeros = lambda: tree_map(torch.zeros_like, params)  # noqa: E731
        return COCOBState(
            init_particles=tree_map(lambda p: p.detach().clone(), params),
            cumulative_gradients=zeros(),
            scale=tree_map(lambda p: torch.full_like(p, eps), params),
            subgradients=zeros(),
            reward=zeros(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_cocob")

        def step(ops, cs, ps, p0s, cums, ls, gsums, rs):
            outs, new_c, new_l, new_g, new_r = [], [], [], [], []
            for c, p, p0, cum, l, gsum, r in zip(cs, ps, p0s, cums, ls, gsums, rs):
                l = torch.maximum(l, torch.abs(c))
                gsum = gsum + torch.abs(c)
                r = torch.clamp(r - c * (p - p0), min=0)
                cum = cum - c
                outs.append(-p + (p0 + cum / (l * torch.maximum(gsum + l, alpha * l)) * (l + r)))
                new_c.append(cum)
                new_l.append(l)
                new_g.append(gsum)
                new_r.append(r)
            return outs, new_c, new_l, new_g, new_r

        out, cum, scale, gsum, reward = map_leaves(
            step,
            updates,
            params,
            state.init_particles,
            state.cumulative_gradients,
            state.scale,
            state.subgradients,
            state.reward,
            keep=(None, 2, 3, 4, 5),
            what="scale_by_cocob",
        )
        return out, COCOBState(state.init_particles, cum, scale, gsum, reward)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: Scalar = 100.0,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 0.0,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    """COCOB: decayed weights, the gradient scaled by ``learning_rate`` (not negated), then
    `scale_by_cocob`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.cocob()
        >>> params = {"w": torch.zeros(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([-0.0100])
    """
    return chain(
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )
