"""Per-block clipping, gradient centralization, NaN handling, constraints and gradient noise."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import EmptyState, GradientTransformation, empty_init, record_hyperparams
from torchopt_fn._validate import check_non_negative, check_positive
from torchopt_fn.transforms._common import init_count
from torchopt_fn.transforms._factored import _map_leaves

__all__ = [
    "AddNoiseState",
    "NonNegativeParamsState",
    "ZeroNansState",
    "adaptive_grad_clip",
    "add_noise",
    "centralize",
    "clip_by_block_rms",
    "keep_params_nonnegative",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "zero_nans",
]

_NO_PARAMS = "{name} needs the parameters: call update(updates, state, params)."


@record_hyperparams
def clip_by_block_rms(threshold: float | torch.Tensor) -> GradientTransformation:
    r"""Clip each leaf (block) separately so that its root mean square is at most ``threshold``.

    $u = g / \max(1, \mathrm{rms}(g) / \tau)$ with $\mathrm{rms}(g) = \sqrt{\mathrm{mean}(|g|^2)}$
    over the elements of one leaf.

    Args:
        threshold: the largest RMS $\tau > 0$ of a leaf's update.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``threshold`` is not positive.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.clip_by_block_rms(1.0)
        >>> g = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.5])}
        >>> u, _ = tx.update(g, tx.init(None))
        >>> u["a"], u["b"]
        (tensor([0.8485, 1.1314]), tensor([0.5000]))
    """
    check_positive("threshold", threshold)

    def clip(ops, gs: list) -> list:
        denoms = [
            # max(numel, 1): an empty leaf has nothing to clip.
            torch.clamp(n / (math.sqrt(max(g.numel(), 1)) * threshold), min=1.0).to(g.dtype)
            for g, n in zip(gs, ops.norm(gs))
        ]
        return ops.div(gs, denoms)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.map_live(clip, updates), state

    return GradientTransformation(empty_init, update_fn)


def _scale_by_param_block(
    name: str, min_scale: float | torch.Tensor, size: Callable[[torch.Tensor], torch.Tensor]
) -> GradientTransformation:
    check_non_negative("min_scale", min_scale)

    def scale_leaves(ops, gs: list, ps: list) -> list:
        factors = [torch.clamp(size(p), min=min_scale).to(g.dtype) for g, p in zip(gs, ps)]
        return ops.mul(gs, factors)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS.format(name=name))
        return _tree.map_live(scale_leaves, updates, params), state

    return GradientTransformation(empty_init, update_fn)


@record_hyperparams
def scale_by_param_block_rms(min_scale: float | torch.Tensor = 1e-3) -> GradientTransformation:
    r"""Scale each leaf's update by the root mean square of its parameter (Adafactor).

    $u = g \cdot \max(\mathrm{rms}(\theta), s_{min})$, $\mathrm{rms}(\theta) =
    \sqrt{\mathrm{mean}(\theta^2)}$ over one leaf.

    Args:
        min_scale: the smallest factor $s_{min} \ge 0$ (so that zero-initialised parameters move).

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: if ``min_scale`` is negative, or ``params`` is missing in ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_param_block_rms()
        >>> p = {"w": torch.tensor([3.0, 4.0])}
        >>> tx.update({"w": torch.ones(2)}, tx.init(p), p)[0]["w"]
        tensor([3.5355, 3.5355])

    References:
        Shazeer and Stern, Adafactor, ICML 2018. https://arxiv.org/abs/1804.04235
    """
    return _scale_by_param_block(
        "scale_by_param_block_rms", min_scale, lambda p: torch.sqrt(torch.mean(p * p))
    )


@record_hyperparams
def scale_by_param_block_norm(min_scale: float | torch.Tensor = 1e-3) -> GradientTransformation:
    r"""Scale each leaf's update by the L2 norm of its parameter.

    $u = g \cdot \max(\|\theta\|_2, s_{min})$ over one leaf.

    Args:
        min_scale: the smallest factor $s_{min} \ge 0$.

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: if ``min_scale`` is negative, or ``params`` is missing in ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_param_block_norm()
        >>> p = {"w": torch.tensor([3.0, 4.0])}
        >>> tx.update({"w": torch.ones(2)}, tx.init(p), p)[0]["w"]
        tensor([5., 5.])
    """
    return _scale_by_param_block("scale_by_param_block_norm", min_scale, torch.linalg.vector_norm)


def _unitwise_norm(x: torch.Tensor, axis: int | Sequence[int] | None) -> torch.Tensor:
    """The L2 norm of every unit of ``x``, broadcast to ``x``'s shape (optax's conventions)."""
    sq = (x * x.conj()).real if x.is_complex() else x * x
    if axis is not None:
        dims: Any = axis if isinstance(axis, int) else tuple(axis)
        norm_sq = sq.sum(dim=dims, keepdim=True)
    elif x.squeeze().dim() <= 1:
        norm_sq = sq.sum().reshape([1] * x.dim())
    elif x.dim() in (2, 3):
        norm_sq = sq.sum(dim=0, keepdim=True)
    elif x.dim() == 4:
        norm_sq = sq.sum(dim=(0, 1, 2), keepdim=True)
    elif x.dim() == 5:
        norm_sq = sq.sum(dim=(0, 1, 2, 3), keepdim=True)
    else:
        raise ValueError(
            f"adaptive_grad_clip: expected a leaf with 1 to 5 axes, got shape {tuple(x.shape)}; "
            "pass axis= to choose the reduction axes."
        )
    return torch.sqrt(norm_sq).expand(x.shape)


@record_hyperparams
def adaptive_grad_clip(
    clipping: float | torch.Tensor,
    eps: float | torch.Tensor = 1e-3,
    axis: int | Sequence[int] | None = None,
) -> GradientTransformation:
    r"""Adaptive gradient clipping (AGC): clip each unit's update relative to its weights' norm.

    For every unit $i$ (see below), $u_i = g_i$ if $\|g_i\| < \lambda \max(\|p_i\|, \epsilon)$,
    else $g_i \cdot \lambda \max(\|p_i\|, \epsilon) / \max(\|g_i\|, 10^{-6})$.

    Units follow optax's (JAX/Flax) layout conventions when ``axis`` is None: the whole leaf for
    vectors and scalars, norms over axis 0 for 2-D and 3-D leaves (Flax kernels are
    ``(in, out)``), over axes ``(0, 1, 2)`` for 4-D ``HWIO`` kernels and ``(0, 1, 2, 3)`` for 5-D.
    **For torch layouts pass ``axis``**: ``nn.Linear.weight`` is ``(out, in)``, so per-output-unit
    norms need ``axis=1``; ``nn.Conv2d.weight`` is ``(out, in, h, w)``, so ``axis=(1, 2, 3)``.

    Args:
        clipping: the largest allowed ratio $\lambda \ge 0$ of update norm to parameter norm.
        eps: the floor $\epsilon \ge 0$ of the parameter norm, so zero-initialised parameters can
            still move.
        axis: axis or axes to take each unit's norm over (default: by rank, as above).

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: for a negative ``clipping`` or ``eps``; at ``update``, when ``params`` is
            missing or a leaf has more than 5 axes and no ``axis`` was given.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.adaptive_grad_clip(0.1)
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> u, _ = tx.update({"w": torch.tensor([0.0, 2.0])}, tx.init(params), params)
        >>> u["w"]
        tensor([0.0000, 0.5000])

    References:
        Brock et al., High-Performance Large-Scale Image Recognition Without Normalization,
        ICML 2021. https://arxiv.org/abs/2102.06171
    """
    check_non_negative("clipping", clipping)
    check_non_negative("eps", eps)

    def clip_leaf(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        g_norm = _unitwise_norm(g, axis)
        max_norm = clipping * torch.clamp(_unitwise_norm(p, axis), min=eps).to(g_norm.dtype)
        # The 1e-6 floor only prevents 0/0 where the update is kept anyway.
        clipped = g * (max_norm / torch.clamp(g_norm, min=1e-6))
        return torch.where(g_norm < max_norm, g, clipped)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="adaptive_grad_clip"))
        return _tree.tree_map(clip_leaf, updates, params), state

    return GradientTransformation(empty_init, update_fn)


def _centralize_leaf(g: torch.Tensor) -> torch.Tensor:
    if g.dim() < 2:
        return g
    return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)


@record_hyperparams
def centralize() -> GradientTransformation:
    r"""Gradient centralization: subtract from each leaf its mean over all axes but the first.

    $u = g - \mathrm{mean}_{1..k}(g)$ for leaves with two or more axes; vectors and scalars pass
    unchanged. For ``nn.Linear.weight`` ``(out, in)`` this centres every output unit's weights.

    Returns:
        A stateless `GradientTransformation`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.centralize()
        >>> g = {"w": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}
        >>> tx.update(g, tx.init(None))[0]["w"]
        tensor([[-1.,  0.,  1.],
                [-1.,  0.,  1.]])

    References:
        Yong et al., Gradient Centralization: A New Optimization Technique for Deep Neural
        Networks, ECCV 2020. https://arxiv.org/abs/2004.01461
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        return _tree.tree_map(_centralize_leaf, updates), state

    return GradientTransformation(empty_init, update_fn)


class ZeroNansState(NamedTuple):
    """State of `zero_nans`: per parameter, a 0-d boolean, whether the last update had a NaN.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.zero_nans().init({"w": torch.zeros(2)}).found_nan
        {'w': tensor(False)}
    """

    found_nan: Any


@record_hyperparams
def zero_nans() -> GradientTransformation:
    r"""Replace NaNs in the updates by 0 and record, per parameter, whether any was found.

    The flags are not used by the transformation; read them to notice when NaNs were zeroed
    (``tf.tree_get(state, "found_nan")``). Infinities are left alone.

    Returns:
        A `GradientTransformation` with state `ZeroNansState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.zero_nans()
        >>> g = {"w": torch.tensor([1.0, float("nan")])}
        >>> u, state = tx.update(g, tx.init(g))
        >>> u["w"], state.found_nan["w"]
        (tensor([1., 0.]), tensor(True))
    """

    def init_fn(params):
        return ZeroNansState(
            found_nan=_tree.tree_map(
                lambda p: torch.zeros((), dtype=torch.bool, device=p.device), params
            )
        )

    def update_leaf(g: torch.Tensor, flag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nan = torch.isnan(g)
        return torch.where(nan, torch.zeros_like(g), g), nan.any()

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        out, found = _map_leaves(update_leaf, updates, state.found_nan, n_state=1)
        return out, ZeroNansState(found_nan=found)

    return GradientTransformation(init_fn, update_fn)


NonNegativeParamsState = EmptyState
"""State of `keep_params_nonnegative` (empty), under optax's name."""


@record_hyperparams
def keep_params_nonnegative() -> GradientTransformation:
    r"""Modify updates so that parameters stay non-negative: $u = -p$ wherever $p + u < 0$.

    Put it last in a chain, after the learning rate, so it sees the final update. Parameters
    that are already negative are moved to 0.

    Returns:
        A stateless `GradientTransformation`; ``update`` needs ``params``.

    Raises:
        ValueError: at ``update``, when ``params`` is missing.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.keep_params_nonnegative()
        >>> params = {"w": torch.tensor([0.5, 2.0])}
        >>> u, _ = tx.update({"w": torch.tensor([-1.0, -1.0])}, tx.init(params), params)
        >>> u["w"]
        tensor([-0.5000, -1.0000])
    """

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="keep_params_nonnegative"))
        out = _tree.tree_map(
            lambda u, p: torch.where(p + u < 0, -p.to(u.dtype), u), updates, params
        )
        return out, state

    return GradientTransformation(empty_init, update_fn)


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 on Python ints: a well-mixed 64-bit word from ``x``."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


# The noise is drawn by an opaque operator, so torch.compile(fullgraph=True) neither breaks
# the graph on torch.Generator nor recompiles as the count changes (the op sees the seed and
# count as a tensor). Every leaf gets a generator seeded from (seed, count, leaf position):
# the noise of a step is a pure function of the state, whatever ran before. One call per
# (dtype, device) group keeps it to one host read of the key per group and step.
@torch.library.custom_op("torchopt_fn::add_noise_normal", mutates_args=())
def _normal(
    numels: Sequence[int],
    leaves: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    key: torch.Tensor,
) -> torch.Tensor:
    seed, count = (v & _M64 for v in key.tolist())
    step_seed = _splitmix64(_splitmix64(seed) ^ count)
    parts = []
    for n, leaf in zip(numels, leaves):
        generator = torch.Generator(device=device)
        generator.manual_seed(_splitmix64(step_seed ^ leaf))
        parts.append(torch.randn(n, generator=generator, dtype=dtype, device=device))
    return torch.cat(parts)


@_normal.register_fake
def _(numels, leaves, dtype, device, key):
    return torch.empty(sum(numels), dtype=dtype, device=device)


@_normal.register_vmap
def _(info, in_dims, numels, leaves, dtype, device, key):
    # Only ``key`` is a tensor: a batch of states gives every member its own noise.
    keys = key.movedim(in_dims[4], 0)
    return torch.stack([_normal(numels, leaves, dtype, device, k) for k in keys]), 0


def _to_int64_seed(key: int | torch.Generator | None, seed: int | None) -> int:
    if seed is not None and key is not None:
        raise ValueError("add_noise: give either key or seed, not both.")
    key = seed if seed is not None else key
    if key is None:
        return 0
    if isinstance(key, torch.Generator):
        drawn = torch.randint(-(1 << 63), (1 << 63) - 1, (), generator=key, device=key.device)
        return int(drawn.item())
    if isinstance(key, bool) or not isinstance(key, int):
        raise ValueError(f"add_noise: key must be an int or a torch.Generator, got {key!r}.")
    return ((key + (1 << 63)) % (1 << 64)) - (1 << 63)


class AddNoiseState(NamedTuple):
    """State of `add_noise`: the step count and the 0-d int64 seed the noise is derived from.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.add_noise(0.01, 0.55, key=42).init({"w": torch.zeros(2)})
        AddNoiseState(count=tensor(0), rng_key=tensor(42))
    """

    count: torch.Tensor
    rng_key: torch.Tensor


@record_hyperparams
def add_noise(
    eta: float | torch.Tensor,
    gamma: float | torch.Tensor,
    key: int | torch.Generator | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Add annealed Gaussian noise: $u_t = g_t + \sigma_t \xi_t$, $\xi_t \sim N(0, I)$.

    The variance decays as $\sigma_t^2 = \eta / (1 + t)^\gamma$ for $t = 0, 1, \dots$ (the update
    count before the step), as in optax.

    **Reproducibility.** The seed lives in the state (``rng_key``, a 0-d int64 tensor, next to
    ``count``), and each step draws every leaf's noise from a `torch.Generator` seeded afresh
    from (seed, count, leaf position) — a counter-based scheme. So equal seeds give identical
    trajectories, the noise of a step does not depend on what ran before, and a checkpointed
    state resumes the same noise sequence. The numbers are torch's normal samples: the same on
    every run on the same kind of device, but not across device types (CPU and CUDA generators
    differ) nor equal to optax's (JAX's threefry).

    **Compile and vmap.** The sampling is an opaque operator, so the transformation compiles
    with ``torch.compile(fullgraph=True)`` and does not recompile as the count changes; the
    operator reads the seed and count on the host (one small device-to-host copy per dtype and
    device per step). Under ``torch.func.vmap`` a state with a batched ``rng_key`` (e.g. states
    initialised with different seeds and stacked) gives each member its own noise; an
    unbatched state gives every member the same noise.

    Args:
        eta: the initial variance $\eta \ge 0$.
        gamma: the annealing exponent $\gamma$ (optax suggests 0.55).
        key: an int seed, or a `torch.Generator` from which one 64-bit seed is drawn when the
            transformation is built (default 0, as optax falls back to).
        seed: the seed as a keyword (optax's older spelling); give ``key`` or ``seed``, not both.

    Returns:
        A `GradientTransformation` with state `AddNoiseState`.

    Raises:
        ValueError: for a negative ``eta``, a ``key`` of another type, or both ``key`` and
            ``seed``; at ``update``, for complex updates.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.add_noise(eta=0.01, gamma=0.55, key=0)
        >>> g = {"w": torch.zeros(3)}
        >>> u1, _ = tx.update(g, tx.init(g))
        >>> u2, _ = tx.update(g, tx.init(g))
        >>> torch.equal(u1["w"], u2["w"])
        True

    References:
        Neelakantan et al., Adding Gradient Noise Improves Learning for Very Deep Networks, 2015.
        https://arxiv.org/abs/1511.06807
    """
    check_non_negative("eta", eta)
    seed_value = _to_int64_seed(key, seed)

    def init_fn(params):
        count = init_count(params)
        return AddNoiseState(count=count, rng_key=torch.full_like(count, seed_value))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1
        key = torch.stack([state.rng_key, state.count])
        leaves, spec = _tree.tree_flatten(updates)
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, g in enumerate(leaves):
            if g is not None:
                if g.is_complex():
                    raise ValueError("add_noise does not support complex updates.")
                cd = torch.promote_types(g.dtype, torch.float32)
                groups.setdefault((cd, g.device), []).append(i)
        out = list(leaves)
        for (cd, device), idx in groups.items():
            numels = [leaves[i].numel() for i in idx]
            flat = _normal(numels, idx, cd, device, key.to(device))
            std = torch.sqrt(eta / torch.pow(count.to(device=device, dtype=cd), gamma))
            for i, z in zip(idx, flat.split(numels)):
                g = leaves[i]
                out[i] = g + (std * z.reshape(g.shape)).to(g.dtype)
        return _tree.tree_unflatten(spec, out), AddNoiseState(count=count, rng_key=state.rng_key)

    return GradientTransformation(init_fn, update_fn)
