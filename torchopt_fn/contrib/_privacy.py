"""Differentially private SGD: per-example gradients clipped, summed, noised and averaged."""

from __future__ import annotations

from typing import NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, ScalarOrSchedule
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._stateless import identity
from torchopt_fn._validate import check_non_negative, check_positive
from torchopt_fn.transforms._accumulation import trace
from torchopt_fn.transforms._adding import AddNoiseState, add_noise
from torchopt_fn.transforms._clipping import per_example_global_norm_clip
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_leaves
from torchopt_fn.tree._ops import check_like, map_leaves

__all__ = [
    "DifferentiallyPrivateAggregateState",
    "differentially_private_aggregate",
    "dpsgd",
]


class DifferentiallyPrivateAggregateState(NamedTuple):
    """State of `differentially_private_aggregate`: where the noise comes from.

    ``rng_key`` is a 1-d int64 tensor ``(seed, steps taken)``, the counter-based analogue of
    optax's JAX key: each step's noise is a pure function of it (see `add_noise`).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tf.contrib.differentially_private_aggregate(1.0, 1.1, key=7).init({"w": torch.zeros(2)})
        DifferentiallyPrivateAggregateState(rng_key=tensor([7, 0]))
    """

    rng_key: torch.Tensor


def _check_key(key: object, seed: object) -> None:
    if key is not None and seed is not None:
        raise ValueError("differentially_private_aggregate: give either key or seed, not both.")
    for name, value in (("key", key), ("seed", seed)):
        if value is None or isinstance(value, torch.Generator):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"differentially_private_aggregate: {name} must be an int or a "
                f"torch.Generator, got {value!r}."
            )


@record_hyperparams
def differentially_private_aggregate(
    l2_norm_clip: Scalar,
    noise_multiplier: Scalar,
    key: int | torch.Generator | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Aggregate per-example gradients as DP-SGD does (Abadi et al., 2016).

    ``updates`` hold one gradient per example along a leading batch axis (of size $B$, the
    same in every leaf), e.g. from ``torch.func.vmap(torch.func.grad(loss))``. Each example's
    gradient is clipped to global norm $C$ = ``l2_norm_clip`` over the whole tree, the
    clipped gradients are summed, Gaussian noise of standard deviation $\sigma C$ ($\sigma$ =
    ``noise_multiplier``) is added, and the sum is averaged:
    $u = \frac{1}{B}\big(\sum_i g_i \min(1, C / \|g_i\|) + \sigma C\, \xi\big)$,
    $\xi \sim N(0, I)$. The output has no batch axis. Put it first in a chain; gradient
    accumulation wrappers (`MultiSteps`, `apply_every`) would average already-noised sums.

    **Randomness.** As in `add_noise` (which draws the noise here): the seed and the step
    count live in the state, every step's noise is a pure function of them and the leaf's
    path, so equal seeds give identical runs, a checkpoint resumes the same noise, and the
    transformation compiles with ``fullgraph=True`` without recompiling. The draws are
    torch's, not JAX's: with ``noise_multiplier > 0`` the numbers differ from optax's, with
    the same distribution. A complex leaf gets independent noise of standard deviation
    $\sigma C$ in its real and imaginary parts (optax's complex normal has $\sigma C/\sqrt2$
    in each): the privacy analysis treats it as a pair of reals, whose norm the clipping uses.

    Args:
        l2_norm_clip: the largest L2 norm $C > 0$ of an example's gradient (whole tree).
        noise_multiplier: $\sigma \ge 0$, the noise's standard deviation over $C$.
        key: an int seed, or a `torch.Generator` from which one seed is drawn when the
            transformation is built (default 0, as optax falls back to).
        seed: the seed as a keyword (optax's deprecated spelling); give ``key`` or ``seed``.

    Returns:
        A `GradientTransformation` with state `DifferentiallyPrivateAggregateState`.

    Raises:
        ValueError: for a non-positive ``l2_norm_clip``, a negative ``noise_multiplier``, a
            ``key``/``seed`` of another type or both given; at ``update``, for leaves without
            a common leading batch axis, or (with ``params``) an aggregate of another shape
            than its parameter.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.differentially_private_aggregate(l2_norm_clip=1.0, noise_multiplier=0.0)
        >>> per_example = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}  # 2 examples
        >>> u, state = tx.update(per_example, tx.init(None))
        >>> u["w"]
        tensor([0.4500, 0.6000])

    References:
        Abadi et al., Deep Learning with Differential Privacy, CCS 2016.
        https://arxiv.org/abs/1607.00133
    """
    check_positive("l2_norm_clip", l2_norm_clip)
    check_non_negative("noise_multiplier", noise_multiplier)
    _check_key(key, seed)
    noise_std = l2_norm_clip * noise_multiplier
    noise = add_noise(noise_std * noise_std, 0.0, key=seed if key is None else key)

    def init_fn(params):
        inner = noise.init(params)
        return DifferentiallyPrivateAggregateState(torch.stack([inner.rng_key, inner.count]))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        live = [g for g in tree_leaves(updates) if g is not None]
        if not live:
            return updates, state
        clipped, _ = per_example_global_norm_clip(updates, l2_norm_clip)
        if params is not None:
            check_like(clipped, params, "differentially_private_aggregate")
        batch_size = live[0].shape[0]
        inner = AddNoiseState(count=state.rng_key[1], rng_key=state.rng_key[0])
        noised, inner = noise.update(clipped, inner)
        out = map_leaves(
            lambda ops, gs: ops.div(gs, batch_size),
            noised,
            what="differentially_private_aggregate",
        )
        return out, DifferentiallyPrivateAggregateState(torch.stack([inner.rng_key, inner.count]))

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: Scalar,
    noise_multiplier: Scalar,
    seed: int | torch.Generator,
    momentum: Scalar | None = None,
    nesterov: bool = False,
) -> GradientTransformation:
    """DP-SGD: `differentially_private_aggregate`, optional (Nesterov) momentum, then
    ``-learning_rate``. ``update`` takes per-example gradients (a leading batch axis).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.dpsgd(0.1, l2_norm_clip=1.0, noise_multiplier=0.0, seed=0, momentum=0.9)
        >>> per_example = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}
        >>> tx.update(per_example, tx.init({"w": torch.zeros(2)}))[0]["w"]
        tensor([-0.0450, -0.0600])

    References:
        Abadi et al., Deep Learning with Differential Privacy, CCS 2016.
        https://arxiv.org/abs/1607.00133
    """
    return chain(
        differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed),
        identity() if momentum is None else trace(decay=momentum, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )
