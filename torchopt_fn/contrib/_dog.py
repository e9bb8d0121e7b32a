"""DoG and DoWG: step sizes from the distance travelled over the gradients seen."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    MaskOrFn,
    Scalar,
    ScalarOrSchedule,
    params_device,
)
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import identity
from torchopt_fn._validate import require_params
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import tree_dtype, tree_l2_norm, tree_scale, tree_sub
from torchopt_fn.tree._ops import check_like

__all__ = ["DoGState", "DoWGState", "dog", "dowg", "scale_by_dog", "scale_by_dowg"]

InitStep = tuple[Literal["distance", "learning_rate", "heuristic"], Any]


class DoGState(NamedTuple):
    """State of `scale_by_dog`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_dog(("distance", 1e-3)).init({"w": torch.ones(1)}).max_dist
        tensor(0.0010)
    """

    is_init_step: torch.Tensor
    init_params: Any
    max_dist: torch.Tensor
    sum_sq_norm_grads: torch.Tensor


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite gradient at 0 (the distance from x0 is 0 on the first step)."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), 0.0)


def _scalar(value: Any, params: Any) -> torch.Tensor:
    return torch.as_tensor(value, dtype=tree_dtype(params, "lowest"), device=params_device(params))


@record_hyperparams
def scale_by_dog(init_step: InitStep, eps: Scalar = 1e-8) -> GradientTransformation:
    r"""DoG (Ivgi et al., 2023): $\eta_t = \max_{s \le t} \|x_s - x_0\| / \sqrt{\sum_{s \le t}
    \|g_s\|^2 + \epsilon}$, one step size for the whole tree.

    ``init_step`` sets the first: ``("distance", r)`` starts the distance at $r$,
    ``("heuristic", c)`` at $c (1 + \|x_0\|)$, ``("learning_rate", \eta_0)`` takes
    $\eta_0$ for the first step. Needs ``params``.

    Raises:
        ValueError: for an unknown ``init_step`` kind.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_dog(("learning_rate", 0.5))
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([0.5000])

    References:
        Ivgi, Hinder & Carmon, DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
        Schedule, ICML 2023. https://arxiv.org/abs/2302.12022
    """
    kind, value = init_step
    if kind not in ("distance", "learning_rate", "heuristic"):
        raise ValueError(f"Invalid init_step specification for scale_by_dog: {kind=}")

    def init_fn(params):
        if kind == "distance":
            r = value
        elif kind == "heuristic":
            r = value * (1 + tree_l2_norm(params))
        else:
            r = 0.0
        return DoGState(
            is_init_step=torch.ones((), dtype=torch.bool, device=params_device(params)),
            init_params=tree_map(lambda p: p.detach().clone(), params),
            max_dist=_scalar(r, params),
            sum_sq_norm_grads=_scalar(0.0, params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_dog")
        check_like(updates, params, "scale_by_dog")
        dtype = state.max_dist.dtype  # the params' lowest, as optax keeps it
        dist = _sqrt(tree_l2_norm(tree_sub(state.init_params, params), squared=True))
        max_dist = torch.maximum(state.max_dist, dist.to(dtype))
        sum_sq = (state.sum_sq_norm_grads + tree_l2_norm(updates, squared=True)).to(dtype)
        lr = max_dist / torch.sqrt(sum_sq + eps)
        if kind == "learning_rate":
            lr = torch.where(state.is_init_step, torch.as_tensor(value, dtype=lr.dtype), lr)
        return tree_scale(lr, updates), DoGState(
            torch.zeros_like(state.is_init_step), state.init_params, max_dist, sum_sq
        )

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: InitStep = ("heuristic", 1e-6),
    eps: Scalar = 1e-8,
    weight_decay: Scalar | None = None,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    """DoG: optional decayed weights, `scale_by_dog`, then ``-learning_rate`` (a multiplier).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.dog(init_step=("learning_rate", 0.5))
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([-0.5000])
    """
    return chain(
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_dog(init_step, eps),
        scale_by_learning_rate(learning_rate),
    )


class DoWGState(NamedTuple):
    """State of `scale_by_dowg`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_dowg().init({"w": torch.ones(1)}).estim_sq_dist
        tensor(1.0000e-04)
    """

    init_params: Any
    weighted_sq_norm_grads: torch.Tensor
    estim_sq_dist: torch.Tensor


@record_hyperparams
def scale_by_dowg(
    init_estim_sq_dist: Scalar | None = None, eps: Scalar = 1e-4
) -> GradientTransformation:
    r"""DoWG (Khaled et al., 2023): $\eta_t = \bar r_t^2 / (\sqrt{\sum_s \bar r_s^2 \|g_s\|^2}
    + \epsilon)$ with $\bar r_t^2$ the largest squared distance from $x_0$ so far.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_dowg(init_estim_sq_dist=1.0, eps=0.0)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([1.])

    References:
        Khaled, Mishchenko & Jin, DoWG Unleashed: An Efficient Universal Parameter-Free
        Gradient Descent Method, NeurIPS 2023. https://arxiv.org/abs/2305.16284
    """

    def init_fn(params):
        start = eps if init_estim_sq_dist is None else init_estim_sq_dist
        return DoWGState(
            init_params=tree_map(lambda p: p.detach().clone(), params),
            weighted_sq_norm_grads=_scalar(0.0, params),
            estim_sq_dist=_scalar(start, params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_dowg")
        check_like(updates, params, "scale_by_dowg")
        dtype = state.estim_sq_dist.dtype  # the params' lowest, as optax keeps it
        dist_sq = tree_l2_norm(tree_sub(state.init_params, params), squared=True)
        estim = torch.maximum(state.estim_sq_dist, dist_sq.to(dtype))
        weighted = estim * tree_l2_norm(updates, squared=True) + state.weighted_sq_norm_grads
        weighted = weighted.to(dtype)
        lr = estim / (_sqrt(weighted) + eps)
        return tree_scale(lr, updates), DoWGState(state.init_params, weighted, estim)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: Scalar | None = None,
    eps: Scalar = 1e-4,
    weight_decay: Scalar | None = None,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    """DoWG: optional decayed weights, `scale_by_dowg`, then ``-learning_rate`` (a multiplier).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.dowg(init_estim_sq_dist=1.0, eps=0.0)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.ones(1)}, tx.init(params), params)[0]["w"]
        tensor([-1.])
    """
    return chain(
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        scale_by_dowg(init_estim_sq_dist, eps),
        scale_by_learning_rate(learning_rate),
    )
