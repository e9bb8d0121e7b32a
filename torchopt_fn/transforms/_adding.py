"""Adding to the updates: decayed weights (weight decay) and annealed gradient noise."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    EmptyState,
    GradientTransformation,
    Params,
    Scalar,
    ScalarOrSchedule,
    init_count,
)
from torchopt_fn._combine import masked
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import is_schedule, step_scalar
from torchopt_fn._validate import check_non_negative, check_number, require_params
from torchopt_fn.transforms._scaling import ScaleByScheduleState
from torchopt_fn.tree._dtensor import place_like
from torchopt_fn.tree._flatten import leaf_paths, tree_leaves
from torchopt_fn.tree._ops import cast_like, compute_dtype, map_leaves

__all__ = [
    "AddDecayedWeightsState",
    "AddNoiseState",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "add_noise",
]


@record_hyperparams
def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Any | Callable[[Params], Any] | None = None,
) -> GradientTransformation:
    r"""Add the parameters times ``weight_decay`` to the updates: $u_t = g_t + \lambda \theta_t$.

    Placed before the learning-rate stage, the decay is multiplied by the learning rate, as in
    `torch.optim.AdamW` (decoupled weight decay). Placed before Adam, it is L2 regularisation
    (torch's ``weight_decay`` in `torch.optim.Adam`/`SGD`).

    Args:
        weight_decay: the coefficient $\lambda$: a float, a 0-d tensor, or a schedule of the
            step count (then the state counts steps, as in optax).
        mask: a tree of booleans (or a function of the params returning one) selecting the
            parameters to decay; the others pass through.

    Returns:
        A stateless `GradientTransformation` (wrapped in `masked` when ``mask`` is given).

    Raises:
        ValueError: if ``params`` is not passed to ``update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.add_decayed_weights(0.1)
        >>> p = {"w": torch.tensor([2.0])}
        >>> tx.update({"w": torch.tensor([1.0])}, tx.init(p), p)[0]["w"]
        tensor([1.2000])

    References:
        Loshchilov and Hutter, Decoupled Weight Decay Regularization, ICLR 2019.
        https://arxiv.org/abs/1711.05101
    """
    check_number("weight_decay", weight_decay)
    scheduled = is_schedule(weight_decay)

    def init_fn(params):
        return ScaleByScheduleState(count=init_count(params)) if scheduled else EmptyState()

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "add_decayed_weights")
        decay = step_scalar(weight_decay(state.count)) if scheduled else weight_decay
        if scheduled:
            state = ScaleByScheduleState(count=state.count + 1)
        out = map_leaves(
            lambda ops, gs, ps: ops.add(gs, cast_like(ps, gs), alpha=decay),
            updates,
            params,
            complex_as_real=True,
            batchable=True,
            what="add_decayed_weights",
        )
        return out, state

    tx = GradientTransformation(init_fn, update_fn)
    return masked(tx, mask) if mask is not None else tx


add_decoupled_weight_decay = add_decayed_weights
"""Alias of `add_decayed_weights`, the name in our design card."""


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One step of SplitMix64 on Python ints: a well-mixed 64-bit word from ``x``."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


# The noise is drawn by an opaque operator, so torch.compile(fullgraph=True) neither breaks
# the graph on torch.Generator nor recompiles as the count changes (the op sees the seed and
# count as a tensor). Every leaf gets a generator seeded from (seed, count, the leaf's path):
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


def _path_seed(path: tuple[Any, ...]) -> int:
    """A 63-bit word for a leaf's path, the same in every process (FNV-1a; `hash` is salted).

    63 bits, since the operator takes it as an int64.
    """
    h = 0xCBF29CE484222325
    for ch in "/".join(f"{type(k).__name__}:{k}" for k in path):
        h = ((h ^ ord(ch)) * 0x100000001B3) & _M64
    return h >> 1


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
    eta: Scalar,
    gamma: Scalar,
    key: int | torch.Generator | None = None,
    *,
    seed: int | None = None,
) -> GradientTransformation:
    r"""Add annealed Gaussian noise: $u_t = g_t + \sigma_t \xi_t$, $\xi_t \sim N(0, I)$.

    The variance decays as $\sigma_t^2 = \eta / (1 + t)^\gamma$ for $t = 0, 1, \dots$ (the update
    count before the step), as in optax.

    **Reproducibility.** The seed lives in the state (``rng_key``, a 0-d int64 tensor, next to
    ``count``), and each step draws every leaf's noise from a `torch.Generator` seeded afresh
    from (seed, count, the leaf's path) — a counter-based scheme. So equal seeds give identical
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
    check_number("gamma", gamma)
    seed_value = _to_int64_seed(key, seed)

    def init_fn(params):
        count = init_count(params)
        return AddNoiseState(count=count, rng_key=torch.full_like(count, seed_value))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1
        key = torch.stack([state.rng_key, state.count])
        seeds = [
            _path_seed(p)
            for p, g in zip(leaf_paths(updates), tree_leaves(updates))
            if g is not None
        ]

        def step(ops, gs):
            # One draw per (dtype, device) group of leaves; the seed of each leaf's noise
            # includes its path, so it depends neither on which others are `None` nor on
            # what other parameters the tree holds.
            groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
            for k, g in enumerate(gs):
                groups.setdefault((compute_dtype(g.dtype), g.device), []).append(k)
            out = list(gs)
            for (cd, device), ks in groups.items():
                numels = [gs[k].numel() for k in ks]
                flat = _normal(numels, [seeds[k] for k in ks], cd, device, key.to(device))
                std = step_scalar(
                    torch.sqrt(eta / torch.pow(count.to(device=device, dtype=cd), gamma))
                )
                for k, z in zip(ks, flat.split(numels)):
                    # A DTensor leaf's noise is drawn whole, as for one process, and cut
                    # to its shard: the same numbers however the leaf is placed.
                    noise = (std * z.reshape(gs[k].shape)).to(gs[k].dtype)
                    out[k] = gs[k] + place_like(noise, gs[k])
            return out

        out = map_leaves(step, updates, complex_as_real=True, what="add_noise")
        return out, AddNoiseState(count=count, rng_key=state.rng_key)

    return GradientTransformation(init_fn, update_fn)


AddDecayedWeightsState = EmptyState
"""optax's name for the state of `add_decayed_weights` (stateless)."""
