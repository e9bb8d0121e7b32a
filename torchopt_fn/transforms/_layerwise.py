"""Layer-wise rules, one scale per tensor: trust ratios (LARS, LAMB), NovoGrad, parameter-block
scaling (Adafactor) and gradient centralization."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import EmptyState, GradientTransformation, Scalar, empty_init, init_count
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import (
    check_in_range,
    check_non_negative,
    require_params,
)
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import tree_zeros_like
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = [
    "ScaleByNovogradState",
    "ScaleByTrustRatioState",
    "centralize",
    "scale_by_novograd",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_trust_ratio",
]


@record_hyperparams
def scale_by_trust_ratio(
    min_norm: Scalar = 0.0,
    trust_coefficient: Scalar = 1.0,
    eps: Scalar = 0.0,
) -> GradientTransformation:
    r"""Scale each leaf's update by its trust ratio, as in LARS and LAMB.

    Per leaf, $u_t = g_t \cdot \eta\,\|p\| / (\|g_t\| + \epsilon)$, where both norms are floored at
    ``min_norm`` and the ratio is 1 when either norm is 0 (so fresh zero-initialised parameters
    and zero updates are left alone).

    Args:
        min_norm: lower bound applied to both norms, $\ge 0$.
        trust_coefficient: the multiplier $\eta \ge 0$.
        eps: added to the update norm in the denominator, $\ge 0$.

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: for a negative ``min_norm``, ``trust_coefficient`` or ``eps``; at ``update``,
            when ``params`` is missing.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_trust_ratio()
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> u, _ = tx.update({"w": torch.tensor([0.0, 0.5])}, tx.init(params), params)
        >>> u["w"]
        tensor([0., 5.])

    References:
        You et al., Large Batch Training of Convolutional Networks (LARS), 2017.
        https://arxiv.org/abs/1708.03888 — You et al., Large Batch Optimization for Deep
        Learning: Training BERT in 76 minutes (LAMB), ICLR 2020. https://arxiv.org/abs/1904.00962
    """
    check_non_negative("min_norm", min_norm)
    check_non_negative("trust_coefficient", trust_coefficient)
    check_non_negative("eps", eps)

    def step(ops, gs: list, ps: list) -> list:
        ratios = []
        for g, g_norm, p_norm in zip(gs, ops.norm(gs), ops.norm(ps)):
            p_norm = torch.clamp(p_norm, min=min_norm)
            g_norm = torch.clamp(g_norm, min=min_norm)
            # Where either norm is 0 the ratio is 1; the safe denominator keeps gradients
            # through the unselected branch finite.
            zero = (p_norm == 0) | (g_norm == 0)
            ratio = trust_coefficient * p_norm / torch.where(zero, 1.0, g_norm + eps)
            ratios.append(torch.where(zero, torch.ones_like(ratio), ratio).to(g.dtype))
        return ops.mul(gs, ratios)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_trust_ratio")
        return map_leaves(step, updates, params, batchable=True, what="scale_by_trust_ratio"), state

    return GradientTransformation(empty_init, update_fn)


class ScaleByNovogradState(NamedTuple):
    """State of `scale_by_novograd`: step count, momentum ``mu``, per-leaf second moment ``nu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_novograd().init({"w": torch.zeros(2)}).nu
        {'w': tensor(0.)}
    """

    count: torch.Tensor
    mu: Any
    nu: Any


@record_hyperparams
def scale_by_novograd(
    b1: Scalar = 0.9,
    b2: Scalar = 0.25,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Rescale updates by NovoGrad: momentum of layer-wise normalised gradients.

    For every leaf (layer) $l$, $v^l_t = \beta_2 v^l_{t-1} + (1-\beta_2)\|g^l_t\|^2$ (a
    scalar; $v^l_1 = \|g^l_1\|^2$) and
    $m^l_t = \beta_1 m^l_{t-1} + g^l_t / (\sqrt{v^l_t + \epsilon_{root}} + \epsilon)
    + \lambda w^l_t$ with $m^l_0 = 0$; $u_t = m_t$.

    Args:
        b1: the momentum $\beta_1$, in ``[0, 1]``.
        b2: decay of the second moment, in ``[0, 1]``.
        eps: added to the denominator outside the square root, ``>= 0``.
        eps_root: added inside the square root, ``>= 0``.
        weight_decay: the coupled weight decay $\lambda$, ``>= 0``; when it is not ``0.0``
            ``update`` needs ``params``.
        mu_dtype: dtype of the momentum (default: the params').

    Returns:
        A `GradientTransformation` with state `ScaleByNovogradState` (``nu`` holds one 0-d
        tensor per leaf).

    Raises:
        ValueError: at construction for hyperparameters out of range; from ``update`` when
            ``weight_decay`` is used and ``params`` is not given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_novograd(eps=0.0)
        >>> u, _ = tx.update({"w": torch.tensor([3.0, -4.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 0.6000, -0.8000])

    References:
        Ginsburg et al., Stochastic Gradient Methods with Layer-wise Adaptive Moments for
        Training of Deep Networks, 2019. https://arxiv.org/abs/1905.11286
    """
    check_in_range("b1", b1, 0.0, 1.0, high_inclusive=True)
    check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    check_non_negative("eps", eps)
    check_non_negative("eps_root", eps_root)
    check_non_negative("weight_decay", weight_decay)
    # A Python zero needs no params (optax always requires them).
    uses_params = not (isinstance(weight_decay, (int, float)) and weight_decay == 0)

    def init_fn(params):
        return ScaleByNovogradState(
            count=init_count(params),
            mu=tree_zeros_like(params, dtype=mu_dtype),
            nu=tree_map(lambda p: torch.zeros((), dtype=p.dtype, device=p.device), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if uses_params:
            require_params(params, "scale_by_novograd (weight_decay)")
        count = state.count + 1
        first = count == 1

        def step(ops, gs, mus, nus, *ps):
            squares = [n * n for n in ops.norm(cast_like(gs, nus))]
            averages = ops.lerp(nus, squares, 1 - b2)
            nus = [torch.where(first, s, a) for s, a in zip(squares, averages)]
            denominators = [(torch.sqrt(n + eps_root) + eps).to(m.dtype) for n, m in zip(nus, mus)]
            steps = ops.div(cast_like(gs, mus), denominators)
            if uses_params:
                steps = ops.add(steps, cast_like(ps[0], mus), weight_decay)
            # mu starts at zero, so on the first step b1 * mu + step is the step itself
            # (the branch optax selects with lax.cond).
            mus = ops.add(steps, mus, alpha=b1)
            return mus, mus, nus

        extra = (params,) if uses_params else ()
        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            *extra,
            keep=(None, 0, 1),
            shapes={1: lambda shape: ()},
            batchable=True,
            what="scale_by_novograd",
        )
        return out, ScaleByNovogradState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


def _scale_by_param_block(
    name: str, min_scale: Scalar, size: Callable[[torch.Tensor], torch.Tensor]
) -> GradientTransformation:
    check_non_negative("min_scale", min_scale)

    def step(ops, gs: list, ps: list) -> list:
        factors = [torch.clamp(size(p), min=min_scale).to(g.dtype) for g, p in zip(gs, ps)]
        return ops.mul(gs, factors)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, name)
        return map_leaves(step, updates, params, what=name), state

    return GradientTransformation(empty_init, update_fn)


@record_hyperparams
def scale_by_param_block_rms(min_scale: Scalar = 1e-3) -> GradientTransformation:
    r"""Scale each leaf's update by the root mean square of its parameter (Adafactor).

    $u = g \cdot \max(\mathrm{rms}(\theta), s_{min})$, $\mathrm{rms}(\theta) =
    \sqrt{\mathrm{mean}(\theta^2)}$ over one leaf.

    Args:
        min_scale: the smallest factor $s_{min} \ge 0$ (so that zero-initialised parameters move).

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: if ``min_scale`` is negative, or ``params`` is missing in ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_param_block_rms()
        >>> p = {"w": torch.tensor([3.0, 4.0])}
        >>> tx.update({"w": torch.ones(2)}, tx.init(p), p)[0]["w"]
        tensor([3.5355, 3.5355])

    References:
        Shazeer and Stern, Adafactor, ICML 2018. https://arxiv.org/abs/1804.04235
    """
    return _scale_by_param_block(
        "scale_by_param_block_rms", min_scale, lambda p: torch.sqrt(torch.mean(p * p))
    )


@record_hyperparams
def scale_by_param_block_norm(min_scale: Scalar = 1e-3) -> GradientTransformation:
    r"""Scale each leaf's update by the L2 norm of its parameter.

    $u = g \cdot \max(\|\theta\|_2, s_{min})$ over one leaf.

    Args:
        min_scale: the smallest factor $s_{min} \ge 0$.

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: if ``min_scale`` is negative, or ``params`` is missing in ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_param_block_norm()
        >>> p = {"w": torch.tensor([3.0, 4.0])}
        >>> tx.update({"w": torch.ones(2)}, tx.init(p), p)[0]["w"]
        tensor([5., 5.])
    """
    return _scale_by_param_block("scale_by_param_block_norm", min_scale, torch.linalg.vector_norm)


def _centralized(g: torch.Tensor) -> torch.Tensor:
    if g.dim() < 2:
        return g
    return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)


@record_hyperparams
def centralize() -> GradientTransformation:
    r"""Gradient centralization: subtract from each leaf its mean over all axes but the first.

    $u = g - \mathrm{mean}_{1..k}(g)$ for leaves with two or more axes; vectors and scalars pass
    unchanged. For ``nn.Linear.weight`` ``(out, in)`` this centres every output unit's weights.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.centralize()
        >>> g = {"w": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}
        >>> tx.update(g, tx.init(None))[0]["w"]
        tensor([[-1.,  0.,  1.],
                [-1.,  0.,  1.]])

    References:
        Yong et al., Gradient Centralization: A New Optimization Technique for Deep Neural
        Networks, ECCV 2020. https://arxiv.org/abs/2004.01461
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out = map_leaves(lambda ops, gs: [_centralized(g) for g in gs], updates, what="centralize")
        return out, state

    return GradientTransformation(empty_init, update_fn)


ScaleByTrustRatioState = EmptyState
"""optax's name for the state of `scale_by_trust_ratio` (stateless)."""
