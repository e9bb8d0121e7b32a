"""Mechanic: learn the scale of any base optimizer's updates online."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, OptState, Scalar, params_device
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_non_negative, check_positive, require_params
from torchopt_fn.contrib._dog import _sqrt
from torchopt_fn.tree._flatten import tree_flatten, tree_map
from torchopt_fn.tree._math import real_vdot, tree_dtype, tree_l2_norm
from torchopt_fn.tree._ops import check_like, compute_dtype, map_leaves

__all__ = ["MechanicState", "mechanize"]


class MechanicState(NamedTuple):
    """State of `mechanize`.

    Attributes:
        base_optimizer_state: the base optimizer's state.
        count: the step count.
        r: the reward of each $\\beta$'s learner (a vector of ``num_betas``).
        m: the largest (decayed) $|h|$ seen by each learner.
        v: the decayed sum of $h^2$ of each learner.
        s: each learner's scale; the update's scale is their sum.
        x0: the params the scaled sums start from.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.mechanize(tf.sgd(0.1), num_betas=3).init({"w": torch.ones(1)}).s
        tensor([1.0000e-06, 1.0000e-06, 1.0000e-06])
    """

    base_optimizer_state: OptState
    count: torch.Tensor
    r: torch.Tensor
    m: torch.Tensor
    v: torch.Tensor
    s: torch.Tensor
    x0: Any


@record_hyperparams
def mechanize(
    base_optimizer: GradientTransformation,
    weight_decay: Scalar = 1e-2,
    eps: Scalar = 1e-8,
    s_init: Scalar = 1e-6,
    num_betas: int = 6,
) -> GradientTransformation:
    r"""Mechanic (Cutkosky et al., 2023): learn the scale of a base optimizer's updates.

    The base optimizer's updates $\Delta_t$ are summed, $\delta_t = \delta_{t-1} - \Delta_t$,
    and the new params are $x_{t+1} = x_0 - S_t \delta_t$, where the scale
    $S_t = \sum_j s_j$ is learnt by ``num_betas`` online learners with decays
    $\beta_j = 1 - 10^{-j}$ ($\delta_{t-1} = (x_0 - x_t) / (S_{t-1} + \epsilon)$ is read back
    from the params). Each step, with
    $\tilde g_t = g_t + \lambda S_{t-1} \|g_t\| / (\|x_t\| + \epsilon)\, x_t$ and
    $h_t = \langle \tilde g_t, \delta_{t-1}\rangle$:

    $m_j = \max(\beta_j m_j, |h_t| + \epsilon)$, $v_j = \beta_j^2 v_j + h_t^2$,
    $r_j = \beta_j r_j + \operatorname{clip}(h_t, -m_j^{old}, m_j^{old})\, s_j$,
    $s_j = (s_{init} m_j / n + \max(r_j, 0)) / (\sqrt{v_j} + \epsilon)$.

    The learning rate (or schedule) of the base optimizer is a multiplier Mechanic rescales;
    1.0 is the usual choice. ``update`` needs ``params`` and passes extra keyword arguments
    on to the base optimizer. On the first step $x_0$ is taken from ``params`` (as optax
    does, in case ``init`` saw other values).

    Differences from optax: the learners' vectors ``r``, ``m``, ``v``, ``s`` are kept in at
    least float32 (optax keeps the params' dtype; in float16 ``eps`` = 1e-8 rounds to 0 and
    the first step divides 0 by 0); a step in which no parameter has a gradient changes
    nothing; $\|g_t\|$ and $h_t$ are sums over the parameters that have a gradient. No
    torch.optim equivalent.

    Args:
        base_optimizer: the optimizer whose updates are scaled.
        weight_decay: $\lambda$, Mechanic's own weight decay (not the base optimizer's),
            ``>= 0``.
        eps: $\epsilon$, ``>= 0``.
        s_init: the initial scale of each learner, ``> 0``.
        num_betas: how many learners $n$ (decays $1 - 10^{-1}, \dots, 1 - 10^{-n}$), ``>= 1``.

    Returns:
        A `GradientTransformation` with state `MechanicState`.

    Raises:
        ValueError: for a hyperparameter outside its range; at ``update``, without ``params``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.mechanize(tf.sgd(1.0), s_init=0.6, num_betas=1)
        >>> params = {"w": torch.ones(2)}
        >>> u, state = tx.update({"w": torch.ones(2)}, tx.init(params), params)
        >>> u["w"]  # the first step moves by s_init times the base update
        tensor([-0.6000, -0.6000])

    References:
        Cutkosky, Defazio & Mehta, Mechanic: A Learning Rate Tuner, NeurIPS 2023.
        https://arxiv.org/abs/2306.00144
    """
    check_non_negative("weight_decay", weight_decay)
    check_non_negative("eps", eps)
    check_positive("s_init", s_init)
    if isinstance(num_betas, bool) or not isinstance(num_betas, int) or num_betas < 1:
        raise ValueError(f"num_betas must be an int >= 1, got {num_betas!r}.")
    decays = [1.0 - 0.1**j for j in range(1, num_betas + 1)]

    def init_fn(params):
        # At least float32: in float16 eps rounds to 0 and the first scale is 0 / 0.
        dtype = compute_dtype(tree_dtype(params, "lowest"))
        device = params_device(params)
        zeros = lambda: torch.zeros(num_betas, dtype=dtype, device=device)  # noqa: E731
        return MechanicState(
            base_optimizer_state=base_optimizer.init(params),
            count=torch.zeros((), dtype=torch.int64, device=device),
            r=zeros(),
            m=zeros(),
            v=zeros(),
            s=torch.full((num_betas,), s_init, dtype=dtype, device=device),
            x0=tree_map(lambda p: p.detach().clone(), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        require_params(params, "mechanize")
        check_like(updates, params, "mechanize")
        if all(u is None for u in tree_flatten(updates)[0]):
            return updates, state
        base_updates, base_state = base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args
        )
        x0 = branch(
            state.count == 0,
            lambda: tree_map(lambda p: p.detach().clone(), params),
            lambda: state.x0,
        )
        dtype = state.s.dtype
        s_sum = state.s.sum()
        # optax's parenthesisation, so float64 trajectories agree to the last bits
        decay = weight_decay * s_sum * tree_l2_norm(updates) / (tree_l2_norm(params) + eps)
        scale = s_sum + eps

        def h_of(ops, gs, ps, x0s):
            c, sc = ops.scalar(ps, lambda dt, dev: (decay.to(dev, dt), scale.to(dev, dt)))
            decayed = ops.add(gs, ops.mul(ps, c))
            delta_prev = ops.div(ops.sub(x0s, ps), sc)
            # In at least float32, as the state: a float16 sum overflows past 65504.
            return real_vdot([x.to(dtype) for x in decayed], [y.to(dtype) for y in delta_prev])

        h = map_leaves(h_of, updates, params, x0, what="mechanize")
        betas = torch.tensor(decays, dtype=dtype, device=h.device)
        clipped = torch.minimum(torch.maximum(h, -state.m), state.m)
        m = torch.maximum(betas * state.m, torch.abs(h) + eps)
        v = betas**2 * state.v + h**2
        r = betas * state.r + clipped * state.s
        wealth = (s_init / num_betas) * m + torch.clamp(r, min=0.0)
        s = wealth / (_sqrt(v) + eps)
        total = s.sum()

        def step(ops, us, ps, x0s):
            sc, tot = ops.scalar(ps, lambda dt, dev: (scale.to(dev, dt), total.to(dev, dt)))
            delta = ops.sub(ops.div(ops.sub(x0s, ps), sc), us)
            return ops.sub(ops.sub(x0s, ops.mul(delta, tot)), ps)

        out = map_leaves(step, base_updates, params, x0, what="mechanize")
        return out, MechanicState(base_state, state.count + 1, r, m, v, s, x0)

    return GradientTransformation(init_fn, update_fn)
