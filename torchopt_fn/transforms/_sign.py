"""Sign-based updates: signSGD (`scale_by_sign`), Lion and Rprop."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    empty_init,
    init_count,
    torch_names,
    value_at,
)
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative, check_positive
from torchopt_fn.tree._math import moment, tree_full_like, tree_zeros_like
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = [
    "ScaleByLionState",
    "ScaleByRpropState",
    "scale_by_lion",
    "scale_by_rprop",
    "scale_by_sign",
]


@record_hyperparams
def scale_by_sign() -> GradientTransformation:
    r"""Replace every update by its element-wise sign: $u_t = \operatorname{sign}(g_t)$.

    Chain a learning-rate stage after it for signSGD.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_sign()
        >>> u, _ = tx.update({"w": torch.tensor([0.3, -2.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1., -1.])

    References:
        Bernstein et al., signSGD, ICML 2018. https://arxiv.org/abs/1802.04434
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return map_leaves(
            lambda ops, gs: ops.sign(gs), updates, batchable=True, what="scale_by_sign"
        ), state

    return GradientTransformation(empty_init, update_fn)


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`: step count and momentum ``mu``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_lion().init({"w": torch.zeros(2)})._fields
        ('count', 'mu')
    """

    count: torch.Tensor
    mu: Any


_LION_MODES = ("hard", "smooth", "refined")


@record_hyperparams
def scale_by_lion(
    b1: Scalar = 0.9,
    b2: Scalar = 0.99,
    mu_dtype: torch.dtype | None = None,
    *,
    mode: Literal["hard", "smooth", "refined"] = "hard",
    smooth_beta: Scalar = 1.0,
) -> GradientTransformation:
    r"""Rescale updates by Lion: the sign of an interpolation of momentum and gradient.

    $c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $u_t = \operatorname{sign}(c_t)$, then
    $m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t$. ``mode="smooth"`` uses
    $\tanh(\beta_s c_t)$ and ``mode="refined"`` keeps $|c_t| < 1$ linear:
    $\operatorname{clip}(c_t, -1, 1)$.

    Args:
        b1: interpolation weight of the momentum in the update, in ``[0, 1]``.
        b2: decay of the momentum, in ``[0, 1]``.
        mu_dtype: dtype of the momentum (default: the params').
        mode: ``"hard"`` (sign), ``"smooth"`` (tanh) or ``"refined"`` (clip to [-1, 1]).
        smooth_beta: the sharpness $\beta_s > 0$ of the tanh in ``"smooth"`` mode.

    Returns:
        A `GradientTransformation` with state `ScaleByLionState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1]``, an unknown ``mode`` or a
            non-positive ``smooth_beta`` (optax reports an unknown mode only at update).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_lion()
        >>> u, _ = tx.update({"w": torch.tensor([0.5, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1., -1.])

    References:
        Chen et al., Symbolic Discovery of Optimization Algorithms, NeurIPS 2023.
        https://arxiv.org/abs/2302.06675
    """
    check_in_range("b1", b1, 0.0, 1.0, high_inclusive=True)
    check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    if mode not in _LION_MODES:
        raise ValueError(f"mode must be one of {_LION_MODES}, got {mode!r}.")
    check_positive("smooth_beta", smooth_beta)

    def squash(x: torch.Tensor) -> torch.Tensor:
        if mode == "hard":
            return torch.sign(x)
        if mode == "smooth":
            return torch.tanh(smooth_beta * x)
        # Linear where |x| < 1 and sign(x) elsewhere is exactly a clip to [-1, 1].
        return torch.clamp(x, -1.0, 1.0)

    def init_fn(params):
        return ScaleByLionState(
            count=init_count(params), mu=tree_zeros_like(params, dtype=mu_dtype)
        )

    def step(ops, gs, mus):
        mixed = ops.lerp(mus, cast_like(gs, mus), 1 - b1)
        out = ops.sign(mixed) if mode == "hard" else [squash(x) for x in mixed]
        return out, moment(ops, gs, mus, b2, order=1)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, mu = map_leaves(
            step, updates, state.mu, keep=(None, 0), batchable=True, what="scale_by_lion"
        )
        return out, ScaleByLionState(count=state.count + 1, mu=mu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`: per-element step sizes and the last gradient.

    ``prev_updates`` is the last gradient with the elements whose sign flipped set to 0, as
    torch keeps it (``prev``); only its sign is read. (optax keeps its last update there.)

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_rprop(0.1).init({"w": torch.zeros(2)}).step_sizes["w"]
        tensor([0.1000, 0.1000])
    """

    step_sizes: Any
    prev_updates: Any

    torch_keys = torch_names(step_sizes="step_size", prev_updates="prev")


@record_hyperparams
def scale_by_rprop(
    learning_rate: ScalarOrSchedule,
    eta_minus: Scalar = 0.5,
    eta_plus: Scalar = 1.2,
    min_step_size: Scalar = 1e-6,
    max_step_size: Scalar = 50.0,
    *,
    clip_unchanged: bool = False,
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
    step_sizes=(min_step_size, max_step_size))`, exactly with ``clip_unchanged=True`` (torch
    clips every step size, so an initial ``learning_rate`` outside the bounds is clipped at the
    first step; without the flag it only matters for such a learning rate). Argument names,
    defaults and the state fields are optax's.

    This is the variant without weight backtracking (Igel and Hüsken's iRprop⁻, the one torch
    implements): on a sign change the step is skipped rather than the previous step undone.

    Args:
        learning_rate: the initial step size $\Delta_0 \ge 0$. A schedule is evaluated at step
            0 only (the step sizes are state), as torch reads its learning rate once.
        eta_minus: step-size decrease factor on a sign change, in ``(0, 1)``.
        eta_plus: step-size increase factor when the sign is kept, ``> 1``.
        min_step_size: lower bound of the step sizes, $\ge 0$.
        max_step_size: upper bound of the step sizes, $\ge$ ``min_step_size``.
        clip_unchanged: also clip the step sizes whose sign product is 0, as torch does.

    Returns:
        A `GradientTransformation` with state `ScaleByRpropState`.

    Raises:
        ValueError: for a negative ``learning_rate``, ``eta_minus`` outside ``(0, 1)``,
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

    torch.optim equivalent: `torch.optim.Rprop` is
    ``chain(scale_by_rprop(lr, ..., clip_unchanged=True), scale(-1.0))``.
    """
    check_non_negative("learning_rate", learning_rate)
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
        initial = value_at(learning_rate, init_count(params))
        return ScaleByRpropState(
            step_sizes=tree_full_like(params, initial), prev_updates=tree_zeros_like(params)
        )

    def step(ops, gs, sizes, prevs):
        products = ops.mul(cast_like(gs, prevs), prevs)
        new_sizes = []
        for s, size in zip(products, sizes):
            factor = torch.where(s > 0, eta_plus, torch.where(s < 0, eta_minus, torch.ones_like(s)))
            clipped = torch.clamp(size * factor, min_step_size, max_step_size)
            # optax leaves a step size whose sign product is 0 as it is; torch clips it too.
            new_sizes.append(clipped if clip_unchanged else torch.where(s == 0, size, clipped))
        # A sign flip skips the step, and is forgotten (0), so the next step keeps its size.
        kept = [torch.where(s < 0, 0.0, g) for g, s in zip(cast_like(gs, prevs), products)]
        steps = [size * torch.sign(g.to(size.dtype)) for g, size in zip(kept, new_sizes)]
        return steps, new_sizes, kept

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, sizes, prevs = map_leaves(
            step,
            updates,
            state.step_sizes,
            state.prev_updates,
            keep=(None, 0, 1),
            complex_as_real=True,
            batchable=True,
            what="scale_by_rprop",
        )
        return out, ScaleByRpropState(step_sizes=sizes, prev_updates=prevs)

    return GradientTransformation(init_fn, update_fn)
