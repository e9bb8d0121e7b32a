r"""PSGD Kron: momentum preconditioned by Kronecker factors fit to whiten it.

Every parameter of shape $(n_1, \dots, n_d)$ keeps one factor $Q_k$ per dimension, upper
triangular ($n_k \times n_k$) or diagonal; the preconditioner is
$P = Q^\top Q$ with $Q = Q_1 \otimes \dots \otimes Q_d$, applied dimension by dimension. Now
and then (with a probability that anneals) the factors take one step of Li's whitening fit
with a fresh Gaussian probe $V$.

The probes and the coin that decides whether a step fits $Q$ come from a counter-based hash of
(seed, step, leaf path, element) written with integer tensor ops: a pure function of the state,
traceable by `torch.compile(fullgraph=True)` and `torch.func.vmap`, with no host reads and no
`torch.Generator`. Leaves of one shape and dtype are fit and preconditioned together, as one
batch of matrices (`torch.linalg.solve_triangular` takes batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    Schedule,
    params_device,
    value_at,
)
from torchopt_fn._branch import branch
from torchopt_fn._combine import chain
from torchopt_fn._gathered import gathered
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import is_schedule
from torchopt_fn._validate import (
    UnsupportedInputError,
    check_in_range,
    check_non_negative,
    check_number,
    check_positive,
)
from torchopt_fn.schedules._common import as_count, as_float
from torchopt_fn.transforms._adding import _path_seed, add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import leaf_paths, tree_leaves, tree_map
from torchopt_fn.tree._math import bias_factor, moment
from torchopt_fn.tree._ops import compute_dtype, map_leaves

__all__ = [
    "PSGDKronState",
    "precond_update_prob_schedule",
    "psgd_kron",
    "scale_by_psgd_kron",
]

_MEMORY_SAVE_MODES = (None, "one_diag", "smart_one_diag", "all_diag")
# kron's damping of the fit's input, sqrt(float32 eps) times its mean magnitude, in every dtype.
_DAMPING = math.sqrt(torch.finfo(torch.float32).eps)
_BALANCE_PROBABILITY = 0.01
_MAX_RMS = 1.1  # kron's cap on the RMS of each preconditioned update


# --------------------------------------------------------------------------- randomness

_M32 = 0xFFFFFFFF


def _mul32(x: Any, c: int) -> Any:
    """``x * c mod 2**32`` for ``x`` in [0, 2**32) held in int64.

    ``c`` is split in 16-bit halves, so no partial product reaches 2**63 (signed overflow).
    """
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(x: Any) -> Any:
    """MurmurHash3's finalizer: a bijection of 32-bit words in which every bit avalanches."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def _hash(*words: Any) -> Any:
    """One 32-bit word from int64 tensors or ints (each taken mod 2**32), broadcast together."""
    h = 0x9E3779B9
    for w in words:
        h = _fmix32(h ^ _fmix32(w & _M32))
    return h


def _step_word(key: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The word all of a step's draws derive from: the 64-bit seed and step count, hashed.

    ``_hash(key, key >> 32, count, count >> 32)``, with the four words' own mixing done as one
    vector op: eagerly, each op on a 0-d tensor costs as much as the step's real work.
    """
    words = _fmix32(torch.stack([key, key >> 32, count, count >> 32]) & _M32)
    h = 0x9E3779B9
    for w in words.unbind():
        h = _fmix32(h ^ w)
    return h


def _coins(step: torch.Tensor) -> torch.Tensor:
    """The step's two uniform draws in (0, 1), float64: whether to fit $Q$, and to rescale it."""
    words = _hash(step, torch.arange(2, device=step.device))
    return (words.to(torch.float64) + 0.5) * 2.0**-32


def _probe(
    step: torch.Tensor, leaves: torch.Tensor, shape: Sequence[int], dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal draws of ``shape`` for each leaf word in ``leaves`` (int64, 1-d):
    ``(len, *shape)``.

    Box-Muller on pairs of hashed words: element ``j`` of a leaf is the cosine (first half) or
    sine (second half) of one pair, so every draw is a function of (seed, step, leaf, j).
    """
    n = math.prod(shape)
    half = (n + 1) // 2
    leaf = leaves[:, None]
    j = torch.arange(2 * half, dtype=torch.int64, device=step.device)
    words = _hash(step, leaf, leaf >> 32, j)
    u = (words.to(dtype) + 0.5) * 2.0**-32  # in (0, 1]: the log below stays finite
    radius = torch.sqrt(-2.0 * torch.log(u[:, :half]))
    angle = (2.0 * math.pi) * u[:, half:]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return z[:, :n].reshape(len(leaves), *shape)


# --------------------------------------------------------------------------- the factors


def _dims(shape: Sequence[int]) -> tuple[int, ...]:
    """The dimensions that get factors: a 0-d leaf is treated as a vector of one."""
    return tuple(shape) or (1,)


def _triangular(
    shape: Sequence[int],
    max_size_triangular: int,
    min_ndim_triangular: int,
    memory_save_mode: str | None,
) -> tuple[bool, ...]:
    """For each dimension, whether its factor is triangular (else diagonal), as kron decides."""
    dims = _dims(shape)
    diagonal = [memory_save_mode == "all_diag"] * len(dims)
    if memory_save_mode in ("one_diag", "smart_one_diag"):
        largest = max(range(len(dims)), key=lambda i: (dims[i], i))  # the last one on ties
        ranked = sorted(dims)
        if memory_save_mode == "one_diag" or (len(dims) > 1 and ranked[-1] > ranked[-2]):
            diagonal[largest] = True
    return tuple(
        not (diag or n == 1 or n > max_size_triangular or len(shape) < min_ndim_triangular)
        for n, diag in zip(dims, diagonal)
    )


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """A batch ``x`` (batch first) matricised along dimension ``k``: ``(batch, n_k, rest)``."""
    moved = x.movedim(k + 1, 1)
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _along(x: torch.Tensor, k: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` applied to `_rows` ``(x, k)``, folded back to ``x``'s shape."""
    moved_shape = x.movedim(k + 1, 1).shape
    return fn(_rows(x, k)).reshape(moved_shape).movedim(1, k + 1)


def _apply(qs: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """$Q x$: every factor applied along its dimension (diagonal ones as a scaling)."""
    for k, q in enumerate(qs):
        if q.dim() == 3:
            x = _along(x, k, lambda rows, q=q: q @ rows)
        else:
            x = _along(x, k, lambda rows, q=q: q[:, :, None] * rows)
    return x


def _solve_transposed(qs: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    r"""$Q^{-\top} x$: triangular solves along every dimension."""
    for k, q in enumerate(qs):
        if q.dim() == 3:
            x = _along(
                x, k, lambda rows, q=q: torch.linalg.solve_triangular(q.mT, rows, upper=False)
            )
        else:
            x = _along(x, k, lambda rows, q=q: rows / q[:, :, None])
    return x


def _precondition(qs: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    r"""$Q^\top Q x$, dimension by dimension."""
    for k, q in enumerate(qs):
        if q.dim() == 3:
            x = _along(x, k, lambda rows, q=q: q.mT @ (q @ rows))
        else:
            x = _along(x, k, lambda rows, q=q: (q * q)[:, :, None] * rows)
    return x


def _gram(x: torch.Tensor, k: int, triangular: bool) -> torch.Tensor:
    r"""$X_k X_k^\top$ of the matricisation along dimension ``k`` (its diagonal if not)."""
    rows = _rows(x, k)
    return rows @ rows.mT if triangular else (rows * rows).sum(dim=-1)


def _upper(x: torch.Tensor) -> torch.Tensor:
    """The upper triangles of a batch of square matrices.

    A mask, not `torch.triu`: on a loaded CPU, triu's multi-threaded loop cost milliseconds
    per call even on 3 x 3 matrices (measured, torch 2.13), more than the rest of a step.
    """
    i = torch.arange(x.shape[-1], device=x.device)
    return x * (i[:, None] <= i[None, :])


def _safe(x: torch.Tensor) -> torch.Tensor:
    """``x`` with zeros replaced by ones, to divide by (the zero case is selected away)."""
    return torch.where(x > 0, x, torch.ones_like(x))


def _norm_lower_bound(s: torch.Tensor) -> torch.Tensor:
    r"""A cheap lower bound of the spectral norm of each symmetric matrix in the batch ``s``.

    One power-iteration step from the column of largest norm (Li's bound; within a factor of
    about $\sqrt 2$ on random matrices).
    """
    scale = s.abs().amax(dim=(-2, -1))
    a = s / _safe(scale)[:, None, None]
    i = (a * a).sum(dim=-2).argmax(dim=-1)
    x = a.mT @ torch.take_along_dim(a, i[:, None, None], dim=-1)
    x = x / _safe(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True))
    return torch.linalg.vector_norm(a @ x, dim=(-2, -1)) * scale


def _fit_step(
    qs: Sequence[torch.Tensor],
    h: torch.Tensor,
    v: torch.Tensor,
    precond_lr: Scalar,
) -> list[torch.Tensor]:
    """One step of the whitening fit of the factors with the pair (``v``, ``h``)."""
    tiny = torch.finfo(h.dtype).tiny
    magnitude = h.abs().flatten(1).mean(dim=1).reshape(-1, *[1] * (h.dim() - 1))
    h = h + _DAMPING * magnitude * v
    a, b = _apply(qs, h), _solve_transposed(qs, v)
    new = []
    for k, q in enumerate(qs):
        triangular = q.dim() == 3
        t1, t2 = _gram(a, k, triangular), _gram(b, k, triangular)
        if triangular:
            step = _upper(t1 - t2) / (_norm_lower_bound(t1 + t2) + tiny)[:, None, None]
            new.append(q - precond_lr * (step @ q))
        else:
            bound = (t1 + t2).abs().amax(dim=-1, keepdim=True) + tiny
            new.append(q - precond_lr * (t1 - t2) / bound * q)
    return new


def _balanced(qs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The factors rescaled to equal max-norms, their product unchanged."""
    norms = torch.stack([q.abs().flatten(1).amax(dim=1) for q in qs])
    mean = norms.prod(dim=0) ** (1.0 / len(qs))
    return [q * (mean / n).reshape(-1, *[1] * (q.dim() - 1)) for q, n in zip(qs, norms)]


def _clipped(u: torch.Tensor) -> torch.Tensor:
    """Each member of the batch ``u`` scaled down to an RMS of at most 1.1 (kron's cap)."""
    rms = torch.linalg.vector_norm(u.flatten(1), dim=1) / math.sqrt(u[0].numel())
    return u / torch.clamp(rms / _MAX_RMS, min=1.0).reshape(-1, *[1] * (u.dim() - 1))


# --------------------------------------------------------------------------- the transforms


@record_hyperparams
def precond_update_prob_schedule(
    max_prob: Scalar = 1.0,
    min_prob: Scalar = 0.03,
    decay: Scalar = 0.001,
    flat_start: Scalar = 500,
) -> Schedule:
    r"""kron's probability of fitting the preconditioner: flat, then annealed exponentially.

    $p_t = \min(\max(p_{\max}\, e^{-\text{decay}\,(t - \text{flat\_start})}, p_{\min}),
    p_{\max})$: 1 for the first 500 steps, then down to 0.03 by about step 4000.

    Args:
        max_prob: the probability during the flat start, the largest.
        min_prob: the smallest probability, reached after the decay.
        decay: the rate of the exponential decay per step.
        flat_start: the number of steps before the decay starts.

    Returns:
        A schedule of the step count, a 0-d float64 tensor.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> sched = tf.contrib.precond_update_prob_schedule()
        >>> [round(float(sched(torch.tensor(t))), 4) for t in (0, 500, 1500, 9000)]
        [1.0, 1.0, 0.3679, 0.03]

    References:
        Walters, kron_torch. https://github.com/evanatyourservice/kron_torch
    """
    check_in_range("max_prob", max_prob, 0.0, 1.0, high_inclusive=True)
    check_in_range("min_prob", min_prob, 0.0, 1.0, high_inclusive=True)
    check_non_negative("decay", decay)
    check_number("flat_start", flat_start)

    def schedule(count: torch.Tensor | int) -> torch.Tensor:
        t = as_count(count)
        top = as_float(max_prob, t)
        value = top * torch.exp(-as_float(decay, t) * (t - as_float(flat_start, t)))
        return torch.minimum(torch.maximum(value, as_float(min_prob, t)), top)

    return schedule


class PSGDKronState(NamedTuple):
    """State of `scale_by_psgd_kron`.

    Attributes:
        count: the number of steps taken, a 0-d int64 tensor.
        rng_key: the 0-d int64 seed every random draw is derived from.
        mu: the momentum, like the params.
        qs_preconditioners: per parameter, a list of its factors, one per dimension (a
            vector for a diagonal factor, an upper-triangular matrix otherwise; a 0-d
            parameter has one factor of shape ``(1,)``).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> params = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
        >>> state = tf.contrib.scale_by_psgd_kron().init(params)
        >>> [q.shape for q in state.qs_preconditioners["w"]], state.qs_preconditioners["b"]
        ([torch.Size([2, 2]), torch.Size([3, 3])], [tensor([1., 1., 1.])])
    """

    count: torch.Tensor
    rng_key: torch.Tensor
    mu: Any
    qs_preconditioners: Any


def _check_config(
    max_size_triangular: int, min_ndim_triangular: int, memory_save_mode: str | None, seed: int
) -> None:
    for name, value in (
        ("max_size_triangular", max_size_triangular),
        ("min_ndim_triangular", min_ndim_triangular),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
    if memory_save_mode not in _MEMORY_SAVE_MODES:
        raise ValueError(
            f"memory_save_mode must be one of {_MEMORY_SAVE_MODES}, got {memory_save_mode!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**63:
        raise ValueError(f"seed must be an int64, got {seed!r}.")


@record_hyperparams
def scale_by_psgd_kron(
    b1: Scalar = 0.9,
    preconditioner_update_probability: ScalarOrSchedule | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: Scalar = 0.1,
    precond_init_scale: Scalar = 1.0,
    mu_dtype: torch.dtype | None = None,
    precond_dtype: torch.dtype | None = None,
    *,
    seed: int = 0,
) -> GradientTransformation:
    r"""PSGD Kron's direction (Li, 2015; Walters' kron): preconditioned, clipped momentum.

    With $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$ and $\hat m_t = m_t / (1 - \beta_1^t)$,
    each parameter's update is $u_t = \operatorname{clip}(Q^\top Q\, \hat m_t)$, where
    $Q = Q_1 \otimes \dots \otimes Q_d$ has one factor per dimension, and the clip scales
    $u_t$ down to an RMS of at most 1.1.

    With probability $p_t$ (``preconditioner_update_probability``, one coin for all
    parameters) the factors first take a step of the whitening fit, which drives
    $Q^\top Q$ towards $\mathbb E[h h^\top]^{-1/2}$: with a probe $V \sim N(0, I)$,
    $h = \hat m_t$ (or $g_t$) $+ \sqrt{\epsilon_{32}}\,\overline{|h|}\, V$, $A = Q h$ and
    $B = Q^{-\top} V$ (triangular solves), every factor moves as
    $Q_k \leftarrow Q_k - \eta\, \frac{\operatorname{triu}(A_k A_k^\top - B_k B_k^\top)}
    {\lVert A_k A_k^\top + B_k B_k^\top \rVert} Q_k$ ($A_k$: $A$'s rows along dimension
    $k$; the norm is a cheap lower bound of the spectral norm), or for a diagonal factor
    $q_k \leftarrow q_k - \eta\, \frac{d_A - d_B}{\max |d_A + d_B|} \odot q_k$ with the
    diagonals $d$. On one fit in a hundred the factors are first rescaled to equal
    max-norms. A dimension gets a diagonal factor when it has size 1 or more than
    ``max_size_triangular``, when the parameter has fewer than ``min_ndim_triangular``
    dimensions, or as ``memory_save_mode`` says.

    **Randomness.** Which steps fit $Q$, the rescaling coin and the probes $V$ are a
    counter-based hash of (``seed``, the step count, the parameter's path, the element),
    computed with integer tensor ops: a pure function of the state (``rng_key``, ``count``),
    reproducible from ``seed``, the same compiled or eager, and under `torch.func.vmap`
    different per member when the states' ``rng_key`` differ. The draws are this library's,
    not torch's or JAX's random streams. Leaves of one shape and dtype are fit and
    preconditioned as one batch. The fit runs only on the steps that fit, eagerly and compiled
    (a ``torch.cond`` in the one graph of all steps, see `branch`); under `torch.func`
    transforms, or compiled with gradients flowing into the momentum, it is computed every
    step and selected.

    Differences from kron (kron_torch 0.3 / psgd_jax 0.2), on purpose: which steps fit $Q$ is
    a coin with probability $p_t$ (Li's PSGD and the earlier kron) where kron now fits every
    $\lceil 1/p_t \rceil$ steps; the schedule is read at the 0-based count (kron_torch; psgd_jax
    reads count + 1); the preconditioner is kept in at least float32 (kron_torch's default;
    float64 parameters keep float64); no dimension merging (kron_torch's ``merge_dims``),
    scanned layers or matmul precisions (psgd_jax); complex parameters are refused.

    Args:
        b1: the momentum decay $\beta_1$ in $[0, 1)$.
        preconditioner_update_probability: $p_t$, a number in $[0, 1]$ or a schedule of the
            step count; `None` for kron's `precond_update_prob_schedule`.
        max_size_triangular: the largest dimension that gets a triangular factor.
        min_ndim_triangular: parameters with fewer dimensions get diagonal factors only.
        memory_save_mode: `None` (triangular where allowed), ``"one_diag"`` (the largest
            dimension, the last on ties, diagonal), ``"smart_one_diag"`` (the same, only
            when it is strictly the largest) or ``"all_diag"``.
        momentum_into_precond_update: fit $Q$ to the debiased momentum (else the gradient).
        precond_lr: the fit's step size $\eta$.
        precond_init_scale: the initial $Q$ is this times the identity (each of the $d$
            factors gets its $d$-th root).
        mu_dtype: the momentum's dtype (default: the params').
        precond_dtype: the factors' dtype (default: the params', at least float32).
        seed: the seed of every random draw (kept in the state as ``rng_key``).

    Returns:
        A `GradientTransformation` with state `PSGDKronState`.

    Raises:
        ValueError: for a hyperparameter out of range or of the wrong type.
        UnsupportedInputError: at ``init``, for complex parameters.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_psgd_kron()
        >>> params = {"w": torch.zeros(2, 3)}
        >>> u, state = tx.update({"w": torch.ones(2, 3)}, tx.init(params))
        >>> u["w"].shape, int(state.count)
        (torch.Size([2, 3]), 1)
        >>> bool(u["w"].square().mean().sqrt() <= 1.1 + 1e-6)
        True

    References:
        Li, Preconditioned Stochastic Gradient Descent, IEEE TNNLS 2018.
        https://arxiv.org/abs/1512.04202;
        Li, psgd_torch. https://github.com/lixilinx/psgd_torch;
        Walters, kron_torch. https://github.com/evanatyourservice/kron_torch
    """
    check_in_range("b1", b1, 0.0, 1.0)
    if preconditioner_update_probability is None:
        preconditioner_update_probability = precond_update_prob_schedule()
    check_in_range(
        "preconditioner_update_probability",
        preconditioner_update_probability,
        0.0,
        1.0,
        high_inclusive=True,
    )
    check_non_negative("precond_lr", precond_lr)
    check_positive("precond_init_scale", precond_init_scale)
    _check_config(max_size_triangular, min_ndim_triangular, memory_save_mode, seed)
    probability = preconditioner_update_probability

    def kinds(shape: Sequence[int]) -> tuple[bool, ...]:
        return _triangular(shape, max_size_triangular, min_ndim_triangular, memory_save_mode)

    def factor_shapes(shape: Sequence[int]) -> list[tuple[int, ...]]:
        return [(n, n) if tri else (n,) for n, tri in zip(_dims(shape), kinds(shape))]

    def init_leaf(p: torch.Tensor) -> list[torch.Tensor]:
        if p.is_complex():
            raise UnsupportedInputError("scale_by_psgd_kron does not support complex parameters.")
        dtype = precond_dtype or compute_dtype(p.dtype)
        dims = _dims(p.shape)
        scale = precond_init_scale ** (1.0 / len(dims))
        return [
            scale * torch.eye(n, dtype=dtype, device=p.device)
            if tri
            else torch.full((n,), 1.0, dtype=dtype, device=p.device) * scale
            for n, tri in zip(dims, kinds(p.shape))
        ]

    def init_fn(params):
        device = params_device(params)
        return PSGDKronState(
            count=torch.zeros((), dtype=torch.int64, device=device),
            rng_key=torch.tensor(seed, dtype=torch.int64, device=device),
            mu=tree_map(lambda p: torch.zeros_like(p, dtype=mu_dtype), params),
            qs_preconditioners=tree_map(init_leaf, params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count + 1
        step_word = _step_word(state.rng_key, state.count)
        fit_coin, balance_coin = _coins(step_word).unbind()
        do_fit = fit_coin < value_at(probability, state.count)
        do_balance = balance_coin < _BALANCE_PROBABILITY
        words = [
            _path_seed(path)
            for path, g in zip(leaf_paths(updates), tree_leaves(updates))
            if g is not None
        ]

        def step(ops, gs, mus, qss):
            mus = moment(ops, gs, mus, b1, 1)
            out = [torch.zeros_like(g) for g in gs]  # zero-size leaves: nothing to do
            qss = list(qss)
            groups: dict[tuple[Any, ...], list[int]] = {}
            for k, g in enumerate(gs):
                if g.numel():
                    groups.setdefault((g.shape, qss[k][0].dtype, g.device), []).append(k)
            members = list(groups.values())
            momenta, inputs, factors = [], [], []
            for ks in members:
                dtype, device = qss[ks[0]][0].dtype, gs[ks[0]].device
                shape = (len(ks), *_dims(gs[ks[0]].shape))
                m = torch.stack([mus[k] for k in ks]).to(dtype).reshape(shape)
                m = m / bias_factor(b1, count, dtype, device)
                momenta.append(m)
                if momentum_into_precond_update:
                    inputs.append(m)
                else:
                    inputs.append(torch.stack([gs[k] for k in ks]).to(dtype).reshape(shape))
                factors.append([torch.stack(q) for q in zip(*(qss[k] for k in ks))])

            # The leaves' words, made here: a tensor constant made inside a `torch.cond`
            # branch is left unbound by Inductor (torch 2.13).
            leaf_words = [
                torch.tensor([words[k] for k in ks], dtype=torch.int64, device=gs[ks[0]].device)
                for ks in members
            ]

            # A lazy branch (it runs only when the coin says so, compiled too) whose tensors
            # all come in as operands.
            def fit(
                factors: list,
                inputs: list,
                leaf_words: list,
                step: torch.Tensor,
                balance: torch.Tensor,
                lr: Scalar,
            ) -> list:
                balanced = branch(
                    balance,
                    lambda: [_balanced(qs) if len(qs) > 1 else qs for qs in factors],
                    lambda: factors,
                )
                return [
                    _fit_step(qs, h, _probe(step, ws, h.shape[1:], h.dtype), lr)
                    for qs, h, ws in zip(balanced, inputs, leaf_words)
                ]

            fitted = branch(
                do_fit,
                fit,
                lambda factors, *_: factors,
                factors,
                inputs,
                leaf_words,
                step_word,
                do_balance,
                precond_lr,
                lazy=True,
            )
            for ks, qs, m in zip(members, fitted, momenta):
                u = _clipped(_precondition(qs, m))
                for i, k in enumerate(ks):
                    out[k] = u[i].reshape(gs[k].shape)
                    qss[k] = [q[i] for q in qs]
            return out, mus, qss

        out, mu, qs = map_leaves(
            step,
            updates,
            state.mu,
            state.qs_preconditioners,
            keep=(None, 0, 1),
            shapes={1: factor_shapes},
            what="scale_by_psgd_kron",
        )
        return out, PSGDKronState(count, state.rng_key, mu, qs)

    return gathered(GradientTransformation(init_fn, update_fn))


@record_hyperparams
def psgd_kron(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: Scalar = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | Callable[[Any], Any] | None = None,
    preconditioner_update_probability: ScalarOrSchedule | None = None,
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    precond_lr: Scalar = 0.1,
    precond_init_scale: Scalar = 1.0,
    mu_dtype: torch.dtype | None = None,
    precond_dtype: torch.dtype | None = None,
    *,
    seed: int = 0,
) -> GradientTransformation:
    r"""PSGD Kron: `scale_by_psgd_kron`, decoupled weight decay, then ``-learning_rate``.

    $\theta_{t+1} = \theta_t - \alpha_t (u_t + \lambda \theta_t)$ with $u_t$ the clipped,
    preconditioned momentum of `scale_by_psgd_kron`. The weight-decay stage (which needs
    ``params``) is left out when ``weight_decay`` is the number 0, as in the optax-style
    ``kron``; kron_torch decays only parameters with two or more dimensions (pass
    ``weight_decay_mask`` for that).

    Args:
        learning_rate: $\alpha$, a number or a schedule (kron's default 0.001).
        b1: the momentum decay.
        weight_decay: $\lambda$, a number or a schedule.
        weight_decay_mask: the parameters to decay (a tree of booleans or a function of
            the params returning one); `None` for all.
        preconditioner_update_probability, max_size_triangular, min_ndim_triangular,
            memory_save_mode, momentum_into_precond_update, precond_lr, precond_init_scale,
            mu_dtype, precond_dtype, seed: as in `scale_by_psgd_kron`.

    Returns:
        A `GradientTransformation` (a `chain`).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.psgd_kron(0.1)
        >>> params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
        >>> state = tx.init(params)
        >>> for _ in range(3):
        ...     grads = tf.tree_map(lambda p: 2 * p, params)  # the gradient of |p|^2
        ...     u, state = tx.update(grads, state, params)
        ...     params = tf.apply_updates(params, u)
        >>> bool(params["w"].abs().max() < 1)
        True

    References:
        Li, Preconditioned Stochastic Gradient Descent, IEEE TNNLS 2018.
        https://arxiv.org/abs/1512.04202;
        Walters, kron_torch. https://github.com/evanatyourservice/kron_torch
    """
    stages = [
        scale_by_psgd_kron(
            b1,
            preconditioner_update_probability,
            max_size_triangular,
            min_ndim_triangular,
            memory_save_mode,
            momentum_into_precond_update,
            precond_lr,
            precond_init_scale,
            mu_dtype,
            precond_dtype,
            seed=seed,
        )
    ]
    if is_schedule(weight_decay) or isinstance(weight_decay, torch.Tensor) or weight_decay != 0:
        stages.append(add_decayed_weights(weight_decay, weight_decay_mask))
    stages.append(scale_by_learning_rate(learning_rate))
    return chain(*stages)
