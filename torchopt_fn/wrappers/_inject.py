"""`inject_hyperparams`: hyperparameters as 0-d tensors in the state."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, init_count, params_device
from torchopt_fn._record import bind_arguments, record
from torchopt_fn._scalar import is_schedule
from torchopt_fn._validate import checks_disabled

__all__ = [
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
]


class InjectHyperparamsState(NamedTuple):
    """State of `inject_hyperparams`: step count, current hyperparameters, the inner state.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.inject_hyperparams(tf.sgd)(learning_rate=0.1).init({"w": torch.zeros(1)})
        >>> state.hyperparams
        {'learning_rate': tensor(0.1000, dtype=torch.float64)}
    """

    count: torch.Tensor
    hyperparams: dict[str, torch.Tensor]
    inner_state: Any


def _is_injectable(v: Any) -> bool:
    # Floats and floating tensors (0-d, or one value per member of stacked params) become
    # state; ints and bools stay static (they usually pick a code path, e.g.
    # `min_dim_size_to_factor`), as do dtypes, masks and other objects.
    if isinstance(v, bool):
        return False
    if isinstance(v, float):
        return True
    if isinstance(v, torch.Tensor):
        return v.is_floating_point()
    return is_schedule(v)


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    """Wrap an optimizer factory so its numeric hyperparameters live in the state as 0-d tensors.

    Float arguments (and schedules, evaluated at the step count every step) are stored in
    ``state.hyperparams`` and fed to a fresh ``inner_factory(**hyperparams)`` on every update,
    so they can be read (``tf.tree_get(state, "learning_rate")``) and changed between steps
    (``tf.tree_set(state, learning_rate=torch.tensor(1e-4))`` or in place) without recompiling
    a compiled step. A tensor of one value per member of stacked params (shape ``(M,)``, see
    `record_hyperparams`) is stored as it is. Integer and boolean arguments, and those named
    in ``static_args``, stay Python values.

    Args:
        inner_factory: a function returning a `GradientTransformation`, e.g. `adam`.
        static_args: names of float arguments to keep static.
        hyperparam_dtype: dtype of the stored hyperparameters (default float64, float32 on MPS).

    Returns:
        A factory with the signature of ``inner_factory`` returning the wrapped transformation,
        whose state is `InjectHyperparamsState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.inject_hyperparams(tf.sgd)(learning_rate=0.1)
        >>> params = {"w": torch.ones(1)}
        >>> state = tx.init(params)
        >>> state.hyperparams["learning_rate"].fill_(0.5)
        tensor(0.5000, dtype=torch.float64)
        >>> tx.update({"w": torch.ones(1)}, state, params)[0]["w"]
        tensor([-0.5000])
    """
    return _InjectedFactory(inner_factory, static_args, hyperparam_dtype)


class _InjectedFactory:
    """What `inject_hyperparams` returns: a factory that pickles (as the call that made it).

    The transformations it builds are recorded with it as their factory, so they pickle too.
    Their hyperparameters live in the state, not in the call: the `Optimizer` adapter does not
    mirror them into param groups (``hyperparams_in_state``).
    """

    hyperparams_in_state = True

    def __init__(
        self,
        inner_factory: Callable[..., GradientTransformation],
        static_args: str | Iterable[str],
        hyperparam_dtype: torch.dtype | None,
    ):
        self.inner_factory = inner_factory
        self.static_args = static_args
        self.hyperparam_dtype = hyperparam_dtype
        self.signature = inspect.signature(inner_factory)
        functools.update_wrapper(self, inner_factory)

    def __reduce__(self) -> tuple[Any, ...]:
        return _InjectedFactory, (self.inner_factory, self.static_args, self.hyperparam_dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> GradientTransformation:
        arguments = bind_arguments(self.signature, args, kwargs)
        return record(self._build(arguments), self, arguments)

    def _build(self, all_args: dict[str, Any]) -> GradientTransformation:
        static = {self.static_args} if isinstance(self.static_args, str) else set(self.static_args)
        inner_factory, hyperparam_dtype = self.inner_factory, self.hyperparam_dtype
        injected = {k: v for k, v in all_args.items() if k not in static and _is_injectable(v)}
        fixed = {k: v for k, v in all_args.items() if k not in injected}
        # Build once with the given values so invalid hyperparameters fail here.
        inner_factory(**all_args)

        def values_at(
            count: torch.Tensor, device: torch.device, keys: Iterable[str]
        ) -> dict[str, torch.Tensor]:
            dtype = hyperparam_dtype or _default_dtype(device)
            out = {}
            for k in keys:
                v = injected[k](count) if is_schedule(injected[k]) else injected[k]
                if isinstance(v, torch.Tensor):  # a copy: the state's, not the caller's
                    out[k] = v.to(dtype=dtype, device=device, copy=True)
                else:  # straight to `dtype`: through float32, 0.999 would become 0.99900001
                    out[k] = torch.as_tensor(v, dtype=dtype, device=device)
            return out

        def init_fn(params):
            count = init_count(params)
            hyperparams = values_at(count, params_device(params), injected)
            with checks_disabled():
                inner = inner_factory(**fixed, **hyperparams)
            return InjectHyperparamsState(count, hyperparams, inner.init(params))

        def update_fn(updates, state, params=None, **extra_args):
            hyperparams = dict(state.hyperparams)
            # Schedules are re-evaluated at the current count; the others keep their (possibly
            # user-modified) stored values.
            scheduled = {k for k, v in injected.items() if is_schedule(v)}
            if scheduled:
                hyperparams.update(values_at(state.count, state.count.device, scheduled))
            with checks_disabled():
                inner = inner_factory(**fixed, **hyperparams)
            new_updates, inner_state = inner.update(
                updates, state.inner_state, params, **extra_args
            )
            return new_updates, InjectHyperparamsState(state.count + 1, hyperparams, inner_state)

        return GradientTransformation(init_fn, update_fn)


def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: torch.dtype | None = None,
) -> Callable[..., GradientTransformation]:
    """Deprecated in optax 0.2.8 for `inject_hyperparams`, which it now is.

    Examples:
        >>> import warnings, torchopt_fn as tf
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     factory = tf.inject_stateful_hyperparams(tf.sgd)
        >>> factory(learning_rate=0.1).init({}).hyperparams
        {'learning_rate': tensor(0.1000, dtype=torch.float64)}
    """
    warnings.warn(
        "inject_stateful_hyperparams is deprecated, use inject_hyperparams instead",
        DeprecationWarning,
        stacklevel=2,
    )
    return inject_hyperparams(inner_factory, static_args, hyperparam_dtype)


InjectStatefulHyperparamsState = InjectHyperparamsState
"""optax's name for the state of `inject_stateful_hyperparams` (here the same)."""
