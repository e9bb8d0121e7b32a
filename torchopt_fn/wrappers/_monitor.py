"""Measure the updates as they pass: `snapshot`, `monitor`, `measure_with_ema`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Updates
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import stateless
from torchopt_fn.transforms._accumulation import ema
from torchopt_fn.tree._math import tree_zeros_like

__all__ = ["MonitorState", "SnapshotState", "measure_with_ema", "monitor", "snapshot"]

Measure = Callable[[Updates], Any]


class SnapshotState(NamedTuple):
    """State of `snapshot`: ``{measure_name: measurement}`` of the last updates seen.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.snapshot("norm", tf.tree_l2_norm).init({"w": torch.ones(4)})
        SnapshotState(measurement={'norm': tensor(2.)})
    """

    measurement: dict[str, Any]


@record_hyperparams
def snapshot(measure_name: str, measure: Measure) -> GradientTransformation:
    """Store ``measure(updates)`` in the state under ``measure_name``; updates pass unchanged.

    Put it in a `chain` where the quantity of interest flows (``init`` measures the params).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.chain(tf.snapshot("grad_norm", tf.tree_l2_norm), tf.sgd(0.1))
        >>> params = {"w": torch.zeros(2)}
        >>> _, state = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(params), params)
        >>> tf.tree_get(state, "measurement")
        {'grad_norm': tensor(5.)}
    """

    def init_fn(params):
        return SnapshotState({measure_name: measure(params)})

    def update_fn(updates, state, params=None, **extra_args):
        del state, params, extra_args
        return updates, SnapshotState({measure_name: measure(updates)})

    return GradientTransformation(init_fn, update_fn)


class MonitorState(NamedTuple):
    """State of `monitor`: the last measurements, and each measure's own state.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.monitor({"norm": tf.tree_l2_norm}).init({"w": torch.ones(1)}).measurements
        {'norm': tensor(0.)}
    """

    measurements: dict[str, Any]
    measure_states: tuple[Any, ...]


@record_hyperparams
def monitor(measures: dict[str, GradientTransformation | Measure]) -> GradientTransformation:
    """Record several measures of the updates in the state; updates pass unchanged.

    A measure is a function of the updates, or a transformation whose *output* is the
    measurement (so it may keep state, e.g. `measure_with_ema`). Measurements appear after
    the first ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.monitor({"norm": tf.tree_l2_norm,
        ...                  "norm_ema": tf.measure_with_ema(tf.tree_l2_norm, 0.5)})
        >>> params = {"w": torch.zeros(2)}
        >>> _, state = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(params), params)
        >>> state.measurements
        {'norm': tensor(5.), 'norm_ema': tensor(5.)}
    """
    transforms = {
        name: m if isinstance(m, GradientTransformation) else stateless(_measured(m))
        for name, m in measures.items()
    }

    def init_fn(params):
        # Zeros shaped like each measurement (optax starts from an empty dict): the state
        # keeps one structure, so a compiled step does not recompile after the first call.
        states = tuple(t.init(params) for t in transforms.values())
        measurements = {
            name: tree_zeros_like(t.update(params, s, params)[0])
            for (name, t), s in zip(transforms.items(), states)
        }
        return MonitorState(measurements, states)

    def update_fn(updates, state, params=None, **extra_args):
        measurements, new_states = {}, []
        for (name, t), s in zip(transforms.items(), state.measure_states):
            measurements[name], s = t.update(updates, s, params, **extra_args)
            new_states.append(s)
        return updates, MonitorState(measurements, tuple(new_states))

    return GradientTransformation(init_fn, update_fn)


def _measured(measure: Measure) -> Callable[[Updates, Any], Any]:
    return lambda updates, params: measure(updates)


@record_hyperparams
def measure_with_ema(
    measure: Measure,
    decay: float,
    debias: bool = True,
    accumulator_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """A transformation whose output is an exponential moving average of ``measure(updates)``.

    For `monitor`; ``decay``, ``debias`` and ``accumulator_dtype`` are `ema`'s.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.measure_with_ema(tf.tree_l2_norm, 0.5, debias=False)
        >>> out, _ = tx.update({"w": torch.ones(4)}, tx.init({"w": torch.ones(4)}))
        >>> out
        tensor(1.)
    """
    average = ema(decay, debias, accumulator_dtype)
    averaged = GradientTransformation(lambda params: average.init(measure(params)), average.update)
    return chain(stateless(_measured(measure)), averaged)
