"""L-BFGS: `lbfgs`, the quasi-Newton direction with a zoom line search."""

from __future__ import annotations

from torchopt_fn._base import GradientTransformation, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import identity
from torchopt_fn.transforms._lbfgs import scale_by_lbfgs
from torchopt_fn.transforms._linesearch import scale_by_zoom_linesearch
from torchopt_fn.transforms._scaling import scale, scale_by_learning_rate

__all__ = ["lbfgs"]

# optax's default: a zoom line search starting from a step of 1 (the quasi-Newton step).
_ZOOM = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


@record_hyperparams
def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _ZOOM,
) -> GradientTransformation:
    """L-BFGS (optax's ``lbfgs``): `scale_by_lbfgs`, then ``-learning_rate``, then a line search.

    With the default zoom line search, ``update`` needs ``value=``, ``grad=`` and
    ``value_fn=``; `value_and_grad_from_state` reuses the value and gradient the search
    computed at the new point. With ``linesearch=None`` it is a fixed-step quasi-Newton
    method (give a ``learning_rate``). For torch.optim's L-BFGS (closure-driven, several
    iterations per ``step``), use ``Optimizer(params, from_torch("LBFGS", ...))``.

    Args:
        learning_rate: a fixed step (or schedule) scaling the direction; `None` for 1 (the
            line search then sets the step).
        memory_size: pairs kept for the inverse-Hessian estimate.
        scale_init_precond: see `scale_by_lbfgs`.
        linesearch: a line search transformation, or `None`.

    Returns:
        A `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> f = lambda p: ((p["w"] - 1.0) ** 4).sum() + (p["w"] ** 2).sum()
        >>> params = {"w": torch.zeros(3, dtype=torch.float64)}
        >>> opt = tf.lbfgs()
        >>> state = opt.init(params)
        >>> value_and_grad = tf.value_and_grad_from_state(f)
        >>> for _ in range(10):
        ...     value, grad = value_and_grad(params, state=state)
        ...     updates, state = opt.update(grad, state, params, value=value, grad=grad,
        ...                                 value_fn=f)
        ...     params = tf.apply_updates(params, updates)
        >>> round(float(f(params)), 6)
        0.86782

    References:
        Liu & Nocedal, On the limited memory BFGS method for large scale optimization, 1989.
    """
    base_scaling = scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    return chain(
        scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond),
        base_scaling,
        identity() if linesearch is None else linesearch,
    )
