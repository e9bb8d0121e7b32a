"""AdEMAMix: Adam with a second, slow momentum mixed into the numerator."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    MaskOrFn,
    Scalar,
    ScalarOrSchedule,
    init_count,
    value_at,
)
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import tree_bias_correction
from torchopt_fn.tree._ops import map_leaves

__all__ = [
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "ademamix",
    "scale_by_ademamix",
    "scale_by_simplified_ademamix",
    "simplified_ademamix",
]


class ScaleByAdemamixState(NamedTuple):
    """State of `scale_by_ademamix`: step counts, the fast and slow momenta, the second moment.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_ademamix().init({"w": torch.zeros(1)}).count_m2
        tensor(0)
    """

    count: torch.Tensor
    count_m2: torch.Tensor
    m1: Any
    m2: Any
    nu: Any


def _ema(updates: Any, moments: Any, decay: Any, square: bool, what: str) -> Any:
    """optax's ``(1 - decay) * g + decay * m`` (of ``|g|^2`` with ``square``), in its order."""

    def step(ops, gs, ms):
        return [
            (1 - decay) * ((g * g.conj()).real if square else g) + decay * m for g, m in zip(gs, ms)
        ]

    return map_leaves(step, updates, moments, keep=(0,), what=what)


@record_hyperparams
def scale_by_ademamix(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 6.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""AdEMAMix's direction: $(\hat m_1 + \alpha m_2) / (\sqrt{\hat\nu + \epsilon_{root}} +
    \epsilon)$.

    $m_1$ is Adam's momentum ($\beta_1$, bias-corrected), $m_2$ a slow one ($\beta_3$, not
    corrected), $\nu$ Adam's second moment. ``b3`` and ``alpha`` may be schedules of the
    step count (the paper warms both up). optax's default ``alpha`` is 6 here and 5 in
    `ademamix`; both kept. ``mu_dtype`` is the dtype of $m_1$ and $m_2$ (and of $\nu$
    unless ``nu_dtype`` is given).

    Returns:
        A `GradientTransformation` with state `ScaleByAdemamixState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_ademamix(alpha=0.0)  # plain Adam's direction
        >>> u, _ = tx.update({"w": torch.tensor([2.0])}, tx.init({"w": torch.zeros(1)}))
        >>> u["w"]
        tensor([1.])

    References:
        Pagliardini et al., The AdEMAMix Optimizer: Better, Faster, Older, 2024.
        https://arxiv.org/abs/2409.03137
    """

    def init_fn(params):
        def zeros(dtype: torch.dtype | None) -> Any:
            return tree_map(lambda p: torch.zeros_like(p, dtype=dtype), params)

        return ScaleByAdemamixState(
            init_count(params),
            init_count(params),
            zeros(mu_dtype),
            zeros(mu_dtype),
            zeros(nu_dtype or mu_dtype),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        c_b3 = value_at(b3, state.count_m2)
        c_alpha = value_at(alpha, state.count_m2)
        m1 = _ema(updates, state.m1, b1, False, "scale_by_ademamix")
        m2 = _ema(updates, state.m2, c_b3, False, "scale_by_ademamix")
        nu = _ema(updates, state.nu, b2, True, "scale_by_ademamix")
        count = state.count + 1
        m1_hat = tree_bias_correction(m1, b1, count)
        nu_hat = tree_bias_correction(nu, b2, count)
        out = map_leaves(
            lambda ops, gs, a, b, v: [
                (x + c_alpha * y) / (torch.sqrt(z + eps_root) + eps) for x, y, z in zip(a, b, v)
            ],
            updates,
            m1_hat,
            m2,
            nu_hat,
            what="scale_by_ademamix",
        )
        return out, ScaleByAdemamixState(count, state.count_m2 + 1, m1, m2, nu)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    mu_dtype: torch.dtype | None = None,
    weight_decay: Scalar = 0.0,
    mask: MaskOrFn = None,
    *,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    """AdEMAMix: `scale_by_ademamix`, decoupled weight decay, then ``-learning_rate``.

    ``state_dtype`` is the dtype of all three moments where ``mu_dtype``/``nu_dtype`` are not
    given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.ademamix(0.1, alpha=0.0)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.tensor([2.0])}, tx.init(params), params)[0]["w"]
        tensor([-0.1000])
    """
    return chain(
        scale_by_ademamix(
            b1,
            b2,
            b3,
            alpha,
            eps,
            eps_root,
            mu_dtype or state_dtype,
            nu_dtype=nu_dtype or state_dtype,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


class ScaleBySimplifiedAdEMAMixState(NamedTuple):
    """State of `scale_by_simplified_ademamix`: the step count, momentum, second moment.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.contrib.scale_by_simplified_ademamix().init({"w": torch.zeros(1)}).t
        tensor(0)
    """

    t: torch.Tensor
    m: Any
    n: Any


@record_hyperparams
def scale_by_simplified_ademamix(
    b1: Scalar = 0.99,
    b2: Scalar = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    r"""Simplified AdEMAMix's direction: $(m + \alpha g) / (\sqrt{\hat n + \epsilon_{root}} +
    \epsilon)$, with the momentum a plain sum $m_t = g_t + \beta_1 m_{t-1}$.

    Returns:
        A `GradientTransformation` with state `ScaleBySimplifiedAdEMAMixState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_simplified_ademamix()
        >>> u, _ = tx.update({"w": torch.tensor([2.0])}, tx.init({"w": torch.zeros(1)}))
        >>> u["w"]
        tensor([1.0000])

    References:
        Morwani et al., Connections between Schedule-Free Optimizers, AdEMAMix, and
        Accelerated SGD Variants, 2025. https://arxiv.org/abs/2502.02431
    """

    def init_fn(params):
        zeros = lambda: tree_map(torch.zeros_like, params)  # noqa: E731
        return ScaleBySimplifiedAdEMAMixState(init_count(params), zeros(), zeros())

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        c_alpha = value_at(alpha, state.t)

        def step(ops, gs, ms, ns):
            new_m = [g + b1 * m for g, m in zip(gs, ms)]
            new_n = [g * g + b2 * (n - g * g) for g, n in zip(gs, ns)]  # optax's lerp
            return new_m, new_n

        m, n = map_leaves(step, updates, state.m, state.n, keep=(0, 1), what="simplified_ademamix")
        t = state.t + 1
        n_hat = tree_bias_correction(n, b2, t)
        out = map_leaves(
            lambda ops, gs, ms, ns: [
                (m_ + c_alpha * g) / (torch.sqrt(n_ + eps_root) + eps)
                for g, m_, n_ in zip(gs, ms, ns)
            ],
            updates,
            m,
            n_hat,
            what="simplified_ademamix",
        )
        return out, ScaleBySimplifiedAdEMAMixState(t, m, n)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.99,
    b2: Scalar = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
    weight_decay: Scalar = 0.0,
    mask: MaskOrFn = None,
) -> GradientTransformation:
    """Simplified AdEMAMix: its direction, decoupled weight decay, then ``-learning_rate``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.simplified_ademamix(0.1)
        >>> params = {"w": torch.ones(1)}
        >>> tx.update({"w": torch.tensor([2.0])}, tx.init(params), params)[0]["w"]
        tensor([-0.1000])
    """
    return chain(
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
