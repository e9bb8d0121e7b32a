"""Momentum (`trace`) and exponential moving averages (`ema`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import GradientTransformation, record_hyperparams
from torchopt_fn._validate import check_in_range
from torchopt_fn.transforms._common import init_count

__all__ = ["EmaState", "TraceState", "ema", "momentum", "trace"]


class TraceState(NamedTuple):
    """State of `trace`: the momentum buffer.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.trace(0.9).init({"w": torch.zeros(2)}).trace
        {'w': tensor([0., 0.])}
    """

    trace: Any


@record_hyperparams
def trace(
    decay: float | torch.Tensor,
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
        return TraceState(trace=_tree.tree_zeros_like(params, dtype=accumulator_dtype))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def accumulate(ops, gs, ts):
            return ops.add(_tree.cast_like(gs, ts), ts, alpha=decay)

        new_trace = _tree.map_live(accumulate, updates, state.trace, fill=state.trace)
        if nesterov:
            out = _tree.map_live(
                lambda ops, gs, ts: ops.add(gs, _tree.cast_like(ts, gs), alpha=decay),
                updates,
                new_trace,
            )
        else:
            out = _tree.map_live(lambda ops, gs, ts: _tree.cast_like(ts, gs), updates, new_trace)
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
    decay: float | torch.Tensor,
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
            count=init_count(params), ema=_tree.tree_zeros_like(params, dtype=accumulator_dtype)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        new_ema = _tree.tree_update_moment(updates, state.ema, decay, order=1)
        count = state.count + 1
        out = _tree.tree_bias_correction(new_ema, decay, count) if debias else new_ema
        out = _tree.map_live(lambda ops, gs, es: _tree.cast_like(es, gs), updates, out)
        return out, EmaState(count=count, ema=new_ema)

    return GradientTransformation(init_fn, update_fn)
