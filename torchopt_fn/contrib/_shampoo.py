"""Shampoo: Kronecker-factored preconditioning, with the grafting of Distributed Shampoo.

The Kronecker-factor machinery here (which axes get a factor, the factors' statistics, products
along an axis) is shared with SOAP (`torchopt_fn.contrib._soap`). It runs *batched*: the leaves
of one shape, dtype and device are stacked, and their statistics, eigendecompositions, QR
factorisations and matrix products run as one batched ``torch.linalg``/``matmul`` call each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, ScalarOrSchedule, params_device
from torchopt_fn._branch import branch
from torchopt_fn._combine import chain
from torchopt_fn._gathered import gathered
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import step_scalar
from torchopt_fn._validate import check_in_range, check_non_negative, check_positive
from torchopt_fn.transforms._accumulation import trace
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import bias_factor
from torchopt_fn.tree._ops import Absent, compute_dtype, map_leaves

__all__ = ["ShampooState", "scale_by_shampoo", "shampoo"]

_GRAFTINGS = ("none", "sgd", "adagrad", "rmsprop", "adam")


# --------------------------------------------------------------------------- Kronecker factors


def factored_axes(shape: Sequence[int], max_dim: int, vectors: bool = True) -> tuple[int, ...]:
    """The axes of a leaf of ``shape`` that get a Kronecker factor.

    Those of at most ``max_dim`` entries; a vector's only axis only when ``vectors``. The other
    axes are left as they are (an identity factor).
    """
    if len(shape) == 1 and not vectors:
        return ()
    return tuple(a for a, d in enumerate(shape) if d <= max_dim)


def factor_shapes(shape: Sequence[int], axes: Sequence[int]) -> list[tuple[int, int]]:
    """The ``(d, d)`` shapes of the factors of a leaf of ``shape`` on ``axes``."""
    return [(shape[a], shape[a]) for a in axes]


def init_factors(p: torch.Tensor, axes: Sequence[int], identity: bool) -> list[torch.Tensor]:
    """Zero (or identity) factors for ``p`` on ``axes``, in at least float32."""
    dtype = compute_dtype(p.dtype)
    make = torch.eye if identity else lambda d, **kw: torch.zeros(d, d, **kw)
    return [make(p.shape[a], dtype=dtype, device=p.device) for a in axes]


def leaf_groups(gs: Sequence[torch.Tensor]) -> list[list[int]]:
    """The indices of the leaves of one shape, dtype and device, in order of appearance."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, g in enumerate(gs):
        groups.setdefault((tuple(g.shape), g.dtype, g.device), []).append(i)
    return list(groups.values())


def stack(xs: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """``xs`` stacked on a new first axis (a view for one tensor), cast to ``dtype``."""
    out = xs[0].unsqueeze(0) if len(xs) == 1 else torch.stack(list(xs))
    return out if dtype is None or out.dtype == dtype else out.to(dtype)


def gram(x: torch.Tensor, axis: int) -> torch.Tensor:
    r"""$X_{(a)} X_{(a)}^\top$ for each of the stacked ``x``: the contraction of ``x`` with
    itself over every axis but ``axis`` (of the unstacked leaf), shape ``(n, d, d)``."""
    n, shape = x.shape[0], x.shape[1:]
    d = shape[axis]
    rest = math.prod(shape) // d if d else 0
    y = x if axis == 0 else x.movedim(axis + 1, 1)
    y = y.reshape(n, d, rest)
    return y @ y.mT


def along(x: torch.Tensor, m: torch.Tensor, axis: int) -> torch.Tensor:
    r"""Each stacked ``x`` times ``m`` along ``axis``: $x'_{\dots j \dots} = \sum_i x_{\dots i
    \dots} m_{ij}$, one batched matmul (``m`` is ``(n, d, d)``)."""
    n, shape = x.shape[0], x.shape[1:]
    d = shape[axis]
    rest = math.prod(shape) // d if d else 0
    if axis == 0:
        return (m.mT @ x.reshape(n, d, rest)).reshape(x.shape)
    y = x.movedim(axis + 1, -1)
    moved = y.shape
    return (y.reshape(n, rest, d) @ m).reshape(moved).movedim(-1, axis + 1)


def along_axes(
    x: torch.Tensor, ms: Sequence[torch.Tensor], axes: Sequence[int], transpose: bool = False
) -> torch.Tensor:
    """`along` each of ``axes`` with its matrix (transposed with ``transpose``)."""
    for m, a in zip(ms, axes):
        x = along(x, m.mT if transpose else m, a)
    return x


def unstack(x: torch.Tensor, idx: Sequence[int], into: list) -> None:
    """Write the stacked ``x``'s members into ``into`` at ``idx``."""
    for i, v in zip(idx, x.unbind(0)):
        into[i] = v


def unstack_lists(xs: Sequence[torch.Tensor], idx: Sequence[int], into: list) -> None:
    """Write each member's list (one stacked tensor per factor in ``xs``) into ``into``."""
    parts = [x.unbind(0) for x in xs]
    for k, i in enumerate(idx):
        into[i] = [p[k] for p in parts]


def member_norms(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each stacked member, shaped to broadcast against ``x``."""
    norms = torch.linalg.vector_norm(x.reshape(x.shape[0], math.prod(x.shape[1:])), dim=1)
    return norms.reshape(x.shape[0], *([1] * (x.dim() - 1)))


def ema_weight(decay: Scalar) -> Scalar:
    r"""The weight of a moving average's new term: $1 - \beta$, or 1 for $\beta = 1$ (a sum)."""
    if isinstance(decay, torch.Tensor):
        return torch.where(decay == 1, torch.ones_like(decay), 1 - decay)
    return 1.0 if decay == 1 else 1.0 - decay


def bias(decay: Scalar, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    r"""$1 - \beta^t$, or 1 for $\beta = 1$ (a sum needs no correction), as a 0-d step scalar."""
    made = bias_factor(decay, t, dtype, t.device)
    return step_scalar(torch.where(made == 0, torch.ones_like(made), made))


# --------------------------------------------------------------------------- Shampoo


def inverse_root(s: torch.Tensor, root: int, eps: Scalar) -> torch.Tensor:
    r"""$(S + \epsilon I)^{-1/r}$ of each of the stacked symmetric ``s``, by ``eigh``.

    Eigenvalues are first shifted up by $\max(0, -\lambda_{min})$ (rounding can leave a PSD
    statistic slightly indefinite), as Distributed Shampoo does.
    """
    if s.shape[-1] == 0:
        return s
    lam, q = torch.linalg.eigh(s)
    lam = lam - torch.clamp(lam.amin(dim=-1, keepdim=True), max=0) + eps
    return (q * lam.pow(-1.0 / root).unsqueeze(-2)) @ q.mT


class ShampooState(NamedTuple):
    """State of `scale_by_shampoo`.

    ``mu`` is the moving average of the gradients ($\\beta_1$; `Absent` when ``b1`` is 0),
    ``graft`` the grafted method's accumulator of squared gradients (`Absent` for ``"sgd"`` and
    ``"none"``), ``factors`` per leaf the list of Kronecker factors ($L$, $R$, ... one per
    factored axis) and ``roots`` their inverse roots.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> state = tf.contrib.scale_by_shampoo().init({"w": torch.zeros(4, 3)})
        >>> [f.shape for f in state.factors["w"]], state.roots["w"][1]
        ([torch.Size([4, 4]), torch.Size([3, 3])], tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]]))
    """

    count: torch.Tensor
    mu: Any
    graft: Any
    factors: Any
    roots: Any


@record_hyperparams
def scale_by_shampoo(
    b1: Scalar = 0.9,
    b2: Scalar = 1.0,
    eps: Scalar = 1e-12,
    precondition_frequency: int = 1,
    start_preconditioning_step: int | None = None,
    max_preconditioner_dim: int = 1024,
    exponent_override: int = 0,
    grafting: str = "adagrad",
    grafting_b2: Scalar = 1.0,
    grafting_eps: Scalar = 1e-3,
    use_bias_correction: bool = True,
) -> GradientTransformation:
    r"""Shampoo's direction (Gupta et al., 2018), as Distributed Shampoo computes it (Shi et al.).

    For a leaf $G_t$ of order $k$, each axis $a$ of at most ``max_preconditioner_dim`` entries
    keeps a Kronecker factor $F^{(a)}_t = \beta_2 F^{(a)}_{t-1} + (1 - \beta_2)
    G_{(a)} G_{(a)}^\top$ (a plain sum for $\beta_2 = 1$; for a matrix, $L$ and $R$). Every
    ``precondition_frequency`` steps from ``start_preconditioning_step`` on, their inverse roots
    $(F^{(a)} / (1-\beta_2^t) + \epsilon I)^{-1/r}$ are recomputed ($r$ = ``exponent_override``,
    or $2k$; by ``eigh``). The filtered gradient $\hat m_t = m_t / (1 - \beta_1^t)$,
    $m_t = \beta_1 m_{t-1} + (1-\beta_1) G_t$, is multiplied by each root along its axis
    ($L^{-1/4} \hat m R^{-1/4}$ for a matrix) and, with grafting, rescaled per leaf to the norm
    of the grafted method's step $\hat m_t / (\sqrt{A_t / c_t} + \epsilon_g)$:
    ``"adagrad"`` $A_t = A_{t-1} + G_t^2$; ``"rmsprop"`` $A_t = \beta_g A_{t-1} + (1 - \beta_g)
    G_t^2$; ``"adam"`` the same with $c_t = 1 - \beta_g^t$; ``"sgd"`` $\hat m_t$ itself. Before
    ``start_preconditioning_step`` the grafted step is used as it is (``"none"``: $\hat m_t$).

    Leaves of one shape and dtype are stacked: statistics, ``eigh`` and products run batched.
    The roots are recomputed only on refresh steps, eagerly and compiled (a ``torch.cond`` in
    the one graph of all steps, see `branch`); under `torch.func` transforms, or compiled with
    gradients flowing into the factors, they are computed every step and selected.

    Differences from Distributed Shampoo: an axis longer than ``max_preconditioner_dim`` gets
    no factor (it blocks the tensor instead), small axes are not merged, and the roots start as
    identities (it starts them at zero), so a ``start_preconditioning_step`` before the first
    refresh preconditions with the identity. Factors and roots are kept in at least float32
    (float64 stays float64).

    Args:
        b1: $\beta_1 \in [0, 1)$, the moving average of the gradients ("filtered gradient").
        b2: $\beta_2 \in (0, 1]$ of the factors; 1 sums them (AdaGrad-like).
        eps: $\epsilon > 0$, added to each factor before its root.
        precondition_frequency: recompute the roots every this many steps.
        start_preconditioning_step: the first step using Shampoo's direction (default:
            ``precondition_frequency``); before it the grafted direction is used.
        max_preconditioner_dim: axes longer than this get no factor.
        exponent_override: the root $r$; 0 means $2k$ for a leaf of order $k$.
        grafting: ``"none"``, ``"sgd"``, ``"adagrad"``, ``"rmsprop"`` or ``"adam"``.
        grafting_b2: $\beta_g \in (0, 1]$ of ``"rmsprop"``/``"adam"`` grafting.
        grafting_eps: $\epsilon_g > 0$ of the grafted method.
        use_bias_correction: divide $m_t$ and the factors by their bias corrections.

    Returns:
        A `GradientTransformation` with state `ShampooState`.

    Raises:
        ValueError: for a ``b1``, ``b2``, ``grafting_b2`` out of range, a non-positive ``eps``
            or ``grafting_eps``, ``precondition_frequency`` or ``max_preconditioner_dim`` below
            1, a negative ``start_preconditioning_step`` or ``exponent_override``, or an
            unknown ``grafting``.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_shampoo(b1=0.0, grafting="sgd")
        >>> g = {"w": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
        >>> u, state = tx.update(g, tx.init(g))
        >>> u["w"]  # L^{-1/4} G R^{-1/4}, rescaled to the norm of G
        tensor([[3.5355, 0.0000],
                [0.0000, 3.5355]])

    References:
        Gupta, Koren & Singer, Shampoo: Preconditioned Stochastic Tensor Optimization, ICML
        2018. https://arxiv.org/abs/1802.09568 — Anil et al., Scalable Second Order
        Optimization for Deep Learning, 2020. https://arxiv.org/abs/2002.09018 — Shi et al., A
        Distributed Data-Parallel PyTorch Implementation of the Distributed Shampoo Optimizer
        for Training Neural Networks At-Scale, 2023. https://arxiv.org/abs/2309.06497
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    check_positive("eps", eps)
    check_in_range("grafting_b2", grafting_b2, 0.0, 1.0, low_inclusive=False, high_inclusive=True)
    check_positive("grafting_eps", grafting_eps)
    check_int("precondition_frequency", precondition_frequency, 1)
    check_int("max_preconditioner_dim", max_preconditioner_dim, 1)
    check_int("exponent_override", exponent_override, 0)
    if start_preconditioning_step is None:
        start_preconditioning_step = precondition_frequency
    check_int("start_preconditioning_step", start_preconditioning_step, 0)
    if grafting not in _GRAFTINGS:
        raise ValueError(f"grafting must be one of {_GRAFTINGS}, got {grafting!r}.")
    has_mu = not (isinstance(b1, (int, float)) and b1 == 0)
    has_graft = grafting in ("adagrad", "rmsprop", "adam")
    graft_decay = 1.0 if grafting == "adagrad" else grafting_b2
    frequency, start = precondition_frequency, start_preconditioning_step

    def axes_of(shape: Sequence[int]) -> tuple[int, ...]:
        return factored_axes(shape, max_preconditioner_dim)

    def root_of(shape: Sequence[int]) -> int:
        return exponent_override or 2 * len(shape)

    def leaf_shape(present: bool) -> Callable[[Sequence[int]], Any]:
        return lambda shape: tuple(shape) if present else None

    def init_fn(params):
        def moment(present: bool) -> Any:
            return tree_map(lambda p: torch.zeros_like(p) if present else Absent(), params)

        return ShampooState(
            count=torch.zeros((), dtype=torch.int64, device=params_device(params)),
            mu=moment(has_mu),
            graft=moment(has_graft),
            factors=tree_map(lambda p: init_factors(p, axes_of(p.shape), False), params),
            roots=tree_map(lambda p: init_factors(p, axes_of(p.shape), True), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        t = state.count + 1
        refresh = (t % frequency == 0) & (t >= start)
        precondition = t >= start

        def step(ops, gs, mus, grafts, factors, roots):
            n = len(gs)
            out, new_mu, new_graft = [None] * n, list(mus), list(grafts)
            new_factors, new_roots = [None] * n, [None] * n
            packs = []
            for idx in leaf_groups(gs):
                shape, axes = gs[idx[0]].shape, axes_of(gs[idx[0]].shape)
                dtype = compute_dtype(gs[idx[0]].dtype)
                g = stack([gs[i] for i in idx], dtype)
                fs = [
                    b2 * stack([factors[i][k] for i in idx]) + ema_weight(b2) * gram(g, a)
                    for k, a in enumerate(axes)
                ]
                rs = [stack([roots[i][k] for i in idx]) for k in range(len(axes))]
                filtered = g
                if has_mu:
                    mu = stack([mus[i] for i in idx], dtype)
                    mu = b1 * mu + (1 - b1) * g
                    unstack(mu.to(mus[idx[0]].dtype), idx, new_mu)
                    filtered = mu / bias(b1, t, dtype) if use_bias_correction else mu
                grafted = filtered
                if has_graft:
                    acc = stack([grafts[i] for i in idx], dtype)
                    acc = graft_decay * acc + ema_weight(graft_decay) * g * g
                    unstack(acc.to(grafts[idx[0]].dtype), idx, new_graft)
                    if grafting == "adam":
                        acc = acc / bias(graft_decay, t, dtype)
                    grafted = filtered / (torch.sqrt(acc) + grafting_eps)
                unstack_lists(fs, idx, new_factors)
                packs.append((idx, shape, axes, dtype, fs, rs, filtered, grafted))

            # A lazy branch (it runs only on refresh steps, compiled too) over the factors.
            fss, rss = [pack[4] for pack in packs], [pack[5] for pack in packs]
            kinds = [(root_of(shape), dtype) for _, shape, _, dtype, *_ in packs]

            def recompute(fss: list, _: list, t: torch.Tensor, b2: Scalar, eps: Scalar) -> list:
                return [
                    [
                        inverse_root(f / bias(b2, t, dtype) if use_bias_correction else f, r, eps)
                        for f in fs
                    ]
                    for fs, (r, dtype) in zip(fss, kinds)
                ]

            rs_all = branch(
                refresh, recompute, lambda _, rss, *__: rss, fss, rss, t, b2, eps, lazy=True
            )

            def shampoo_dirs() -> list:
                dirs = []
                for (_, _, axes, _, _, _, filtered, grafted), rs in zip(packs, rs_all):
                    d = along_axes(filtered, rs, axes)
                    if grafting != "none":
                        d = d * (member_norms(grafted) / (member_norms(d) + 1e-16))
                    dirs.append(d)
                return dirs

            dirs = branch(precondition, shampoo_dirs, lambda: [pack[7] for pack in packs])
            for (idx, *_), d, rs in zip(packs, dirs, rs_all):
                unstack(d, idx, out)
                unstack_lists(rs, idx, new_roots)
            return out, new_mu, new_graft, new_factors, new_roots

        out, mu, graft, factors, roots = map_leaves(
            step,
            updates,
            state.mu,
            state.graft,
            state.factors,
            state.roots,
            keep=(None, 0, 1, 2, 3),
            shapes={
                0: leaf_shape(has_mu),
                1: leaf_shape(has_graft),
                2: lambda s: factor_shapes(s, axes_of(s)),
                3: lambda s: factor_shapes(s, axes_of(s)),
            },
            what="scale_by_shampoo",
        )
        return out, ShampooState(t, mu, graft, factors, roots)

    return gathered(GradientTransformation(init_fn, update_fn))


def check_int(name: str, value: Any, low: int) -> None:
    """Refuse anything but a Python integer of at least ``low`` (these fix the graph)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


@record_hyperparams
def shampoo(
    learning_rate: ScalarOrSchedule = 1e-2,
    b1: Scalar = 0.9,
    b2: Scalar = 1.0,
    eps: Scalar = 1e-12,
    weight_decay: ScalarOrSchedule = 0.0,
    momentum: Scalar = 0.0,
    nesterov: bool = False,
    precondition_frequency: int = 1,
    start_preconditioning_step: int | None = None,
    max_preconditioner_dim: int = 1024,
    exponent_override: int = 0,
    grafting: str = "adagrad",
    grafting_b2: Scalar = 1.0,
    grafting_eps: Scalar = 1e-3,
    use_bias_correction: bool = True,
) -> GradientTransformation:
    r"""Shampoo with grafting, as Distributed Shampoo runs it: `scale_by_shampoo`, decoupled
    weight decay, momentum, then ``-learning_rate``.

    $u_t = -\eta_t\, v_t$ with $v_t = \beta v_{t-1} + (d_t + \lambda\theta_t)$ (``momentum``
    $\beta$; Nesterov adds $\beta v_t$ once more) and $d_t$ `scale_by_shampoo`'s direction. The
    defaults are Distributed Shampoo's (AdaGrad grafting, $\beta_2 = 1$, roots every step);
    its README's AdamW recipe is ``b2=0.999, grafting="adam", grafting_b2=0.999,
    grafting_eps=1e-8, precondition_frequency=100``. For L2 (coupled) decay chain
    `torchopt_fn.add_decayed_weights` before `scale_by_shampoo` instead.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        weight_decay: $\lambda$, decoupled (AdamW-style).
        momentum: $\beta \in [0, 1)$ of the heavy-ball momentum on the search direction.
        nesterov: Nesterov momentum.
        **others: as `scale_by_shampoo`.

    Returns:
        ``chain(scale_by_shampoo(...), add_decayed_weights(weight_decay), trace(momentum,
        nesterov), scale_by_learning_rate(learning_rate))`` (without the momentum stage when
        ``momentum`` is 0).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.shampoo(0.1)
        >>> params = {"w": torch.ones(2, 2)}
        >>> g = {"w": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
        >>> u, _ = tx.update(g, tx.init(params), params)
        >>> u["w"].diagonal()  # AdaGrad's step 1 / (1 + 1e-3), times -0.1
        tensor([-0.0999, -0.0999])

    References:
        Shi et al., A Distributed Data-Parallel PyTorch Implementation of the Distributed
        Shampoo Optimizer for Training Neural Networks At-Scale, 2023.
        https://arxiv.org/abs/2309.06497
    """
    check_non_negative("weight_decay", weight_decay)
    check_in_range("momentum", momentum, 0.0, 1.0)
    stages = [
        scale_by_shampoo(
            b1,
            b2,
            eps,
            precondition_frequency,
            start_preconditioning_step,
            max_preconditioner_dim,
            exponent_override,
            grafting,
            grafting_b2,
            grafting_eps,
            use_bias_correction,
        ),
        add_decayed_weights(weight_decay),
    ]
    if isinstance(momentum, torch.Tensor) or momentum != 0:
        stages.append(trace(momentum, nesterov))
    stages.append(scale_by_learning_rate(learning_rate))
    return chain(*stages)
