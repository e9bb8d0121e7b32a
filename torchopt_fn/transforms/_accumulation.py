"""Accumulating past updates: momentum (`trace`), moving averages (`ema`), optimistic gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, init_count, params_device, torch_names
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative, check_positive
from torchopt_fn.tree._math import bias_correction, moment, tree_zeros_like
from torchopt_fn.tree._ops import cast_like, map_leaves

__all__ = [
    "ApplyEvery",
    "EmaState",
    "ScaleByOptimisticGradientState",
    "TraceState",
    "apply_every",
    "ema",
    "momentum",
    "scale_by_optimistic_gradient",
    "trace",
]


class TraceState(NamedTuple):
    """State of `trace`: the momentum buffer.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.trace(0.9).init({"w": torch.zeros(2)}).trace
        {'w': tensor([0., 0.])}
    """

    trace: Any

    torch_keys = torch_names(trace="momentum_buffer")


@record_hyperparams
def trace(
    decay: Scalar,
    nesterov: bool = False,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Heavy-ball momentum: $m_t = g_t + \beta m_{t-1}$, $u_t = m_t$.

    With ``nesterov``, $u_t = g_t + \beta m_t$.

    Equal to `torch.optim.SGD`'s momentum buffer with ``dampening=0``.

    Args:
        decay: the momentum $\beta \in [0, 1]$.
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the buffer (default: the params').

    Returns:
        A `GradientTransformation` with state `TraceState`.

    Raises:
        ValueError: if ``decay`` is outside ``[0, 1]``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.trace(0.9)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.ones(1)}, state)
        >>> u["w"]
        tensor([1.9000])

    References:
        Polyak, Some methods of speeding up the convergence of iteration methods, 1964.
        Sutskever et al., On the importance of initialization and momentum, ICML 2013.
    """
    check_in_range("decay", decay, 0.0, 1.0, high_inclusive=True)

    def init_fn(params):
        return TraceState(trace=tree_zeros_like(params, dtype=accumulator_dtype))

    def step(ops, gs, ts):
        new_ts = ops.add(cast_like(gs, ts), ts, alpha=decay)
        out = ops.add(gs, cast_like(new_ts, gs), alpha=decay) if nesterov else new_ts
        return out, new_ts

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, new_trace = map_leaves(
            step,
            updates,
            state.trace,
            keep=(None, 0),
            complex_as_real=True,
            batchable=True,
            what="trace",
        )
        return out, TraceState(trace=new_trace)

    return GradientTransformation(init_fn, update_fn)


momentum = trace
"""Alias of `trace`, the name in our design card."""


class EmaState(NamedTuple):
    """State of `ema`: the step count and the moving average.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.ema(0.9).init({"w": torch.zeros(1)})
        EmaState(count=tensor(0), ema={'w': tensor([0.])})
    """

    count: torch.Tensor
    ema: Any


@record_hyperparams
def ema(
    decay: Scalar,
    debias: bool = True,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Exponential moving average of the updates: $m_t = \beta m_{t-1} + (1-\beta) g_t$.

    With ``debias`` the output is $m_t / (1 - \beta^t)$.

    Args:
        decay: the decay $\beta \in [0, 1]$.
        debias: divide by $1 - \beta^t$.
        accumulator_dtype: dtype of the average (default: the params').

    Returns:
        A `GradientTransformation` with state `EmaState`.

    Raises:
        ValueError: if ``decay`` is outside ``[0, 1]``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.ema(0.5)
        >>> u, _ = tx.update({"w": torch.ones(1)}, tx.init({"w": torch.zeros(1)}))
        >>> u["w"]
        tensor([1.])
    """
    check_in_range("decay", decay, 0.0, 1.0, high_inclusive=True)

    def init_fn(params):
        return EmaState(
            count=init_count(params), ema=tree_zeros_like(params, dtype=accumulator_dtype)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1

        def step(ops, gs, es):
            new = moment(ops, gs, es, decay, order=1)
            return (bias_correction(ops, new, decay, count) if debias else new), new

        out, new_ema = map_leaves(
            step, updates, state.ema, keep=(None, 0), batchable=True, what="ema"
        )
        return out, EmaState(count=count, ema=new_ema)

    return GradientTransformation(init_fn, update_fn)


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
def scale_by_optimistic_gradient(alpha: Scalar = 1.0, beta: Scalar = 1.0) -> GradientTransformation:
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
            previous_gradient=tree_zeros_like(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        first = state.is_initial_step

        def step(ops, gs, prevs):
            # At the first step the previous gradient is the current one.
            olds = cast_like(ops.where(first, cast_like(gs, prevs), prevs), gs)
            return ops.add(ops.mul(gs, alpha + beta), olds, alpha=-beta), gs

        out, previous = map_leaves(
            step,
            updates,
            state.previous_gradient,
            keep=(None, 0),
            batchable=True,
            what="scale_by_optimistic_gradient",
        )
        return out, ScaleByOptimisticGradientState(
            is_initial_step=torch.zeros_like(first), previous_gradient=previous
        )

    return GradientTransformation(init_fn, update_fn)


class ApplyEvery(NamedTuple):
    """State of `apply_every`: mini-steps modulo k, and the gradients summed so far.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.apply_every(2).init({"w": torch.zeros(1)})
        ApplyEvery(count=tensor(0), grad_acc={'w': tensor([0.])})
    """

    count: torch.Tensor
    grad_acc: Any


@record_hyperparams
def apply_every(k: int = 1) -> GradientTransformation:
    """Sum the updates of k steps and emit the sum on every k-th step, zeros otherwise.

    Place it last in a chain (optax's ``apply_every``); to average gradients before a
    stateful optimizer, use `MultiSteps` instead.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.apply_every(2)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for g in (1.0, 2.0):
        ...     u, state = tx.update({"w": torch.tensor([g])}, state)
        ...     print(u["w"])
        tensor([0.])
        tensor([3.])
    """
    check_positive("k", k)

    def init_fn(params):
        return ApplyEvery(init_count(params), tree_zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        c = state.count % k
        keep_acc = c != 0
        emit = c == k - 1

        def step(ops, gs, accs):
            new = [torch.where(keep_acc, a, 0) + g for g, a in zip(gs, cast_like(accs, gs))]
            return [torch.where(emit, a, 0) for a in new], new

        out, grad_acc = map_leaves(
            step, updates, state.grad_acc, keep=(None, 0), what="apply_every"
        )
        return out, ApplyEvery((state.count + 1) % k, grad_acc)

    return GradientTransformation(init_fn, update_fn)
