"""Scalings with a rule of their own: trust ratio, optimistic gradients, Polyak steps, Rprop."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import GradientTransformation, empty_init, record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative, check_positive
from torchopt_fn.transforms._common import params_device
from torchopt_fn.transforms._factored import _map_leaves

__all__ = [
    "ScaleByOptimisticGradientState",
    "ScaleByRpropState",
    "scale_by_optimistic_gradient",
    "scale_by_polyak",
    "scale_by_rprop",
    "scale_by_trust_ratio",
]

_NO_PARAMS = "{name} needs the parameters: call update(updates, state, params)."


@record_hyperparams
def scale_by_trust_ratio(
    min_norm: float | torch.Tensor = 0.0,
    trust_coefficient: float | torch.Tensor = 1.0,
    eps: float | torch.Tensor = 0.0,
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

    def ratios(ops, gs: list, ps: list) -> list:
        out = []
        for g, g_norm, p_norm in zip(gs, ops.norm(gs), ops.norm(ps)):
            p_norm = torch.clamp(p_norm, min=min_norm)
            g_norm = torch.clamp(g_norm, min=min_norm)
            ratio = trust_coefficient * p_norm / (g_norm + eps)
            zero = (p_norm == 0) | (g_norm == 0)
            out.append(torch.where(zero, torch.ones_like(ratio), ratio).to(g.dtype))
        return ops.mul(gs, out)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="scale_by_trust_ratio"))
        return _tree.map_live(ratios, updates, params), state

    return GradientTransformation(empty_init, update_fn)


class ScaleByOptimisticGradientState(NamedTuple):
    """State of `scale_by_optimistic_gradient`: whether no step was taken yet, the last gradient.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_optimistic_gradient()
        >>> _, state = tx.update({"w": torch.ones(2)}, tx.init({"w": torch.zeros(2)}))
        >>> state.is_initial_step, state.previous_gradient["w"]
        (tensor(False), tensor([1., 1.]))
    """

    is_initial_step: torch.Tensor
    previous_gradient: Any


@record_hyperparams
def scale_by_optimistic_gradient(
    alpha: float | torch.Tensor = 1.0, beta: float | torch.Tensor = 1.0
) -> GradientTransformation:
    r"""Generalised optimistic gradients: $u_t = (\alpha + \beta) g_t - \beta g_{t-1}$.

    At the first step $g_{t-1} = g_t$ (there is no previous gradient), so $u_1 = \alpha g_1$.
    With $\alpha = \beta = 1$ and a learning rate this is optimistic gradient descent
    ($2 g_t - g_{t-1}$), used for min-max games.

    Args:
        alpha: coefficient of the current gradient, $\ge 0$.
        beta: coefficient of the negative momentum, $\ge 0$.

    Returns:
        A `GradientTransformation` with state `ScaleByOptimisticGradientState`.

    Raises:
        ValueError: for a negative ``alpha`` or ``beta``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_optimistic_gradient()
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> u, state = tx.update({"w": torch.tensor([1.0])}, state)
        >>> u, state = tx.update({"w": torch.tensor([3.0])}, state)
        >>> u["w"]
        tensor([5.])

    References:
        Mokhtari et al., A Unified Analysis of Extra-gradient and Optimistic Gradient Methods
        for Saddle Point Problems, AISTATS 2020. https://arxiv.org/abs/1901.08511
    """
    check_non_negative("alpha", alpha)
    check_non_negative("beta", beta)

    def init_fn(params):
        return ScaleByOptimisticGradientState(
            is_initial_step=torch.ones((), dtype=torch.bool, device=params_device(params)),
            previous_gradient=_tree.tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        first = state.is_initial_step

        def step(ops, gs: list, prevs: list) -> list:
            prevs = [torch.where(first, g.to(p.dtype), p).to(g.dtype) for g, p in zip(gs, prevs)]
            return ops.add(ops.mul(gs, alpha + beta), prevs, alpha=-beta)

        out = _tree.map_live(step, updates, state.previous_gradient)
        previous = _tree.map_live(
            lambda ops, gs, ps: _tree.cast_like(gs, ps),
            updates,
            state.previous_gradient,
            fill=state.previous_gradient,
        )
        return out, ScaleByOptimisticGradientState(
            is_initial_step=torch.zeros_like(first), previous_gradient=previous
        )

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def scale_by_polyak(
    f_min: float | torch.Tensor = 0.0,
    max_learning_rate: float | torch.Tensor = 1.0,
    eps: float | torch.Tensor = 0.0,
    variant: str = "sps",
) -> GradientTransformation:
    r"""Scale updates by the Polyak step size, from the loss ``value`` given to ``update``.

    $u_t = \gamma_t g_t$ with $\gamma_t = \min\big((f(x_t) - f^\star) / (\|g_t\|^2 + \epsilon),
    \gamma_{max}\big)$ (``"sps"``), or with the gap $f(x_t) - f^\star$ clipped at 0 (``"sps+"``).
    $\gamma_t = 0$ when $\|g_t\|^2 + \epsilon$ is below float64's machine epsilon. Chain
    ``scale(-1.0)`` after it (`torchopt_fn.polyak_sgd` does).

    Args:
        f_min: a lower bound $f^\star$ on the objective.
        max_learning_rate: the largest step $\gamma_{max} \ge 0$.
        eps: added to the squared gradient norm, $\ge 0$.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        A stateless `GradientTransformation` whose ``update`` requires the keyword argument
        ``value`` (the loss at the current parameters, a float or 0-d tensor).

    Raises:
        ValueError: for a negative ``max_learning_rate`` or ``eps`` or an unknown ``variant`` (at
            construction, where optax checks at ``update``); at ``update``, when ``value`` is
            missing.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_polyak()
        >>> g = {"w": torch.tensor([1.0, 1.0])}
        >>> u, _ = tx.update(g, tx.init(g), value=torch.tensor(0.5))
        >>> u["w"]
        tensor([0.2500, 0.2500])

    References:
        Loizou et al., Stochastic Polyak Step-size for SGD: An Adaptive Learning Rate for Fast
        Convergence, AISTATS 2021. https://arxiv.org/abs/2002.10542 — Garrigos et al., Function
        value learning: Adaptive learning rates based on the Polyak stepsize and function
        splitting in ERM, 2023. https://arxiv.org/abs/2307.14528
    """
    check_non_negative("max_learning_rate", max_learning_rate)
    check_non_negative("eps", eps)
    if variant not in ("sps", "sps+"):
        raise ValueError(f"variant must be 'sps' or 'sps+', got {variant!r}.")
    tiny = torch.finfo(torch.float64).eps

    def update_fn(updates, state, params=None, *, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError(
                "scale_by_polyak needs the loss: call update(updates, state, params, value=loss)."
            )
        sq_norm = _tree.tree_l2_norm(updates, squared=True)
        gap = torch.as_tensor(value, device=sq_norm.device).to(sq_norm.dtype) - f_min
        if variant == "sps+":
            gap = torch.clamp(gap, min=0.0)
        denom = sq_norm + eps
        step = torch.where(
            denom <= tiny,
            torch.zeros_like(denom),
            torch.clamp(gap / denom, max=max_learning_rate),
        )
        out = _tree.map_live(lambda ops, gs: ops.mul(gs, [step.to(g.dtype) for g in gs]), updates)
        return out, state

    return GradientTransformation(empty_init, update_fn)


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`: per-element step sizes and the last (masked) signed steps.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rprop(0.1).init({"w": torch.zeros(2)}).step_sizes["w"]
        tensor([0.1000, 0.1000])
    """

    step_sizes: Any
    prev_updates: Any


@record_hyperparams
def scale_by_rprop(
    learning_rate: float | torch.Tensor,
    eta_minus: float | torch.Tensor = 0.5,
    eta_plus: float | torch.Tensor = 1.2,
    min_step_size: float | torch.Tensor = 1e-6,
    max_step_size: float | torch.Tensor = 50.0,
) -> GradientTransformation:
    r"""Resilient backpropagation (Rprop): per-element step sizes adapted from gradient signs.

    With $s = g_t \cdot g_{t-1}$ element-wise, the step size becomes
    $\Delta_t = \mathrm{clip}(\eta^+ \Delta_{t-1})$ where $s > 0$,
    $\mathrm{clip}(\eta^- \Delta_{t-1})$ where $s < 0$ and $\Delta_{t-1}$ where $s = 0$
    (clipped to ``[min_step_size, max_step_size]``), and the update is
    $u_t = \Delta_t \operatorname{sign}(g_t)$, except $u_t = 0$ where the sign flipped; there the
    gradient is also forgotten ($g_t := 0$), so the next step neither grows nor shrinks.
    Chain ``scale(-1.0)`` after it (`torchopt_fn.rprop` does).

    **Differs from optax 0.2.8 on purpose.** optax's ``scale_by_rprop`` returns the update it
    computed at the *previous* step (``state.prev_updates``): its first update is exactly zero and
    every later one lags by a step, so the step sizes adapt to signs the parameters never moved
    along. Here the update of step $t$ is applied at step $t$, which is Rprop as published and
    as `torch.optim.Rprop` implements it: chained with ``scale(-1.0)`` this reproduces
    `torch.optim.Rprop(lr=learning_rate, etas=(eta_minus, eta_plus),
    step_sizes=(min_step_size, max_step_size))` whenever ``learning_rate`` lies within the step
    size bounds (torch also clips the initial step size). Argument names, defaults and the state
    fields are optax's.

    This is the variant without weight backtracking (Igel and Hüsken's iRprop⁻, the one torch
    implements): on a sign change the step is skipped rather than the previous step undone.

    Args:
        learning_rate: the initial step size $\Delta_0 > 0$.
        eta_minus: step-size decrease factor on a sign change, in ``(0, 1)``.
        eta_plus: step-size increase factor when the sign is kept, ``> 1``.
        min_step_size: lower bound of the step sizes, $\ge 0$.
        max_step_size: upper bound of the step sizes, $\ge$ ``min_step_size``.

    Returns:
        A `GradientTransformation` with state `ScaleByRpropState`.

    Raises:
        ValueError: for a non-positive ``learning_rate``, ``eta_minus`` outside ``(0, 1)``,
            ``eta_plus <= 1``, or invalid step size bounds.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_rprop(learning_rate=0.1)
        >>> state = tx.init({"w": torch.zeros(2)})
        >>> u, state = tx.update({"w": torch.tensor([2.0, -1.0])}, state)
        >>> u["w"]
        tensor([ 0.1000, -0.1000])
        >>> u, state = tx.update({"w": torch.tensor([1.0, 3.0])}, state)
        >>> u["w"]
        tensor([0.1200, 0.0000])

    References:
        Riedmiller and Braun, A Direct Adaptive Method for Faster Backpropagation Learning: The
        RPROP Algorithm, ICNN 1993. https://doi.org/10.1109/ICNN.1993.298623 — Igel and Hüsken,
        Improving the Rprop Learning Algorithm, NC 2000.

    torch.optim equivalent: `torch.optim.Rprop` is ``chain(scale_by_rprop(lr), scale(-1.0))``.
    """
    check_positive("learning_rate", learning_rate)
    check_in_range("eta_minus", eta_minus, 0.0, 1.0, low_inclusive=False)
    check_in_range("eta_plus", eta_plus, 1.0, float("inf"), low_inclusive=False)
    check_non_negative("min_step_size", min_step_size)
    check_positive("max_step_size", max_step_size)
    bounds_known = not isinstance(min_step_size, torch.Tensor) and not isinstance(
        max_step_size, torch.Tensor
    )
    if bounds_known and min_step_size > max_step_size:
        raise ValueError(
            f"min_step_size ({min_step_size}) must be <= max_step_size ({max_step_size})."
        )

    def init_fn(params):
        return ScaleByRpropState(
            step_sizes=_tree.tree_full_like(params, learning_rate),
            prev_updates=_tree.tree_zeros_like(params),
        )

    def update_leaf(g, step_size, prev):
        s = g.to(prev.dtype) * prev
        scaled = torch.where(s > 0, step_size * eta_plus, step_size * eta_minus)
        step_size = torch.where(
            s == 0, step_size, torch.clamp(scaled, min=min_step_size, max=max_step_size)
        )
        new = torch.where(s < 0, torch.zeros_like(prev), step_size * torch.sign(g.to(prev.dtype)))
        return new.to(g.dtype), step_size, new

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, step_sizes, prev = _map_leaves(
            update_leaf, updates, state.step_sizes, state.prev_updates, n_state=2
        )
        return out, ScaleByRpropState(step_sizes=step_sizes, prev_updates=prev)

    return GradientTransformation(init_fn, update_fn)
