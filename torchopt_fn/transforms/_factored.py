"""Memory-saving second-moment scalings: Adafactor's factored RMS and SM3's cover sets.

Both keep per-axis statistics whose shapes depend on each leaf's shape, so their maths runs
one leaf at a time inside `map_leaves`, which checks every statistic's shape against the shape
its leaf implies before anything is computed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Scalar, init_count
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import step_scalar
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.tree._dtensor import is_dtensor, vector_max_along
from torchopt_fn.tree._flatten import tree_flatten, tree_map, tree_unflatten
from torchopt_fn.tree._math import tree_zeros_like
from torchopt_fn.tree._ops import columns, map_leaves

__all__ = ["FactoredState", "ScaleBySM3State", "scale_by_factored_rms", "scale_by_sm3"]


def _abs_sq(x: torch.Tensor) -> torch.Tensor:
    """$|x|^2$ element-wise, real for complex ``x``."""
    return (x * x.conj()).real if x.is_complex() else x * x


def _lerp(x: torch.Tensor, y: torch.Tensor, w: Scalar) -> torch.Tensor:
    """``x + w * (y - x)``; `torch.lerp` wants a weight of ``x``'s dtype when it is a tensor."""
    return torch.lerp(x, y, w.to(x.dtype) if isinstance(w, torch.Tensor) else w)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics of half-precision leaves are computed in float32, others in their own dtype."""
    return torch.promote_types(dtype, torch.float32)


class FactoredState(NamedTuple):
    """State of `scale_by_factored_rms`.

    ``v_row`` and ``v_col`` hold the factored statistics of factored leaves, ``v`` the full
    second moment of the others; the unused fields of a leaf hold a ``(1,)`` placeholder, as
    in optax.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> state = tx.init({"w": torch.zeros(4, 3)})
        >>> state.v_row["w"].shape, state.v_col["w"].shape, state.v["w"].shape
        (torch.Size([3]), torch.Size([4]), torch.Size([1]))
    """

    count: torch.Tensor
    v_row: Any
    v_col: Any
    v: Any


def _decay_rate_pow(i: torch.Tensor, exponent: Scalar = 0.8) -> torch.Tensor:
    r"""Adafactor's second-moment decay $\hat\beta_2(i) = 1 - (i + 1)^{-c}$, in ``i``'s dtype."""
    return 1.0 - torch.pow(i + 1.0, -exponent)


def _factored_dims(
    shape: Sequence[int], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The (second largest, largest) axes to factor over, or `None` to keep a full moment.

    Ties keep axis order (a stable sort), which is what optax's ``np.argsort`` gives.
    """
    if not factored or len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda d: shape[d])
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


@record_hyperparams
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: Scalar = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: Scalar = 1e-30,
    decay_rate_fn: Callable[[torch.Tensor, Any], Any] = _decay_rate_pow,
) -> GradientTransformation:
    r"""Scale updates by a factored estimate of their root mean square, as in Adafactor.

    With $\hat\beta_t$ = ``decay_rate_fn(t - step_offset, decay_rate)`` (by default
    $1 - (t + 1)^{-0.8}$, $t = 0, 1, \dots$) and $G_t = g_t^2 + \epsilon$, a leaf whose two
    largest axes have at least ``min_dim_size_to_factor`` entries keeps only the means of
    $G_t$ over each of those axes:
    $R_t = \hat\beta_t R_{t-1} + (1 - \hat\beta_t)\,\mathrm{mean}_{d_0} G_t$,
    $C_t = \hat\beta_t C_{t-1} + (1 - \hat\beta_t)\,\mathrm{mean}_{d_1} G_t$
    ($d_0$ the largest axis, $d_1$ the second largest), and scales by
    $u_t = g_t \,/\, \sqrt{(R_t / \mathrm{mean}_{d_1} R_t) \otimes C_t}$ — memory $O(n + m)$
    instead of $O(nm)$. Other leaves keep a full moment
    $V_t = \hat\beta_t V_{t-1} + (1 - \hat\beta_t) G_t$ and get $u_t = g_t / \sqrt{V_t}$.

    Chain a learning rate after it (`torchopt_fn.adafactor` adds clipping, parameter scaling and
    momentum). Unlike optax, ``params`` are not needed (the update's shapes are used), and the
    decay schedule is evaluated in the leaves' precision (at least float32): the step is passed
    to ``decay_rate_fn`` as a floating 0-d tensor of that dtype. optax computes the default
    schedule in float32 even for float64 params, so float64 trajectories differ from optax's by
    ~1e-7 relative; a ``decay_rate_fn`` that returns a float32 tensor reproduces optax exactly.

    Args:
        factored: whether to factor the second moment of leaves with two or more axes.
        decay_rate: the exponent $c \ge 0$ of the default decay schedule.
        step_offset: subtracted from the step count before calling ``decay_rate_fn`` (set it to
            the first step of a fine-tuning phase to restart the schedule there).
        min_dim_size_to_factor: factor only leaves whose two largest axes have at least this
            many entries.
        epsilon: added to the squared gradient, $\epsilon \ge 0$.
        decay_rate_fn: ``(step, decay_rate) -> decay``; ``step`` is a floating 0-d tensor.
            Use it to cap the decay (Zhai et al., 2021).

    Returns:
        A `GradientTransformation` with state `FactoredState`.

    Raises:
        ValueError: for a negative ``decay_rate``, ``epsilon`` or ``min_dim_size_to_factor``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_factored_rms(min_dim_size_to_factor=2)
        >>> params = {"w": torch.zeros(2, 3)}
        >>> state = tx.init(params)
        >>> state.v_row["w"].shape, state.v_col["w"].shape
        (torch.Size([2]), torch.Size([3]))
        >>> u, state = tx.update({"w": torch.full((2, 3), 2.0)}, state, params)
        >>> u["w"]
        tensor([[1., 1., 1.],
                [1., 1., 1.]])

    References:
        Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost, ICML
        2018. https://arxiv.org/abs/1804.04235 — Zhai et al., Scaling Vision Transformers, 2021.
        https://arxiv.org/abs/2106.04560

    torch.optim equivalent: `torch.optim.Adafactor` differs (it factors the last two axes, uses
    ``beta2_decay=-0.8`` on the step starting at 1, and puts ``eps`` elsewhere).
    """
    check_non_negative("decay_rate", decay_rate)
    check_non_negative("min_dim_size_to_factor", min_dim_size_to_factor)
    check_non_negative("epsilon", epsilon)

    def statistics_shape(k: int, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of ``v_row`` (k = 0), ``v_col`` (1) or ``v`` (2) for a leaf of ``shape``."""
        dims = _factored_dims(shape, factored, min_dim_size_to_factor)
        if dims is None:
            return tuple(shape) if k == 2 else (1,)
        if k == 2:
            return (1,)
        dropped = dims[1] if k == 0 else dims[0]
        return tuple(s for d, s in enumerate(shape) if d != dropped)

    def init_leaf(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        row, col, full = (statistics_shape(k, p.shape) for k in range(3))
        return p.new_zeros(row), p.new_zeros(col), p.new_zeros(full)

    def init_fn(params):
        leaves, spec = tree_flatten(params)
        inits = [None if p is None else init_leaf(p) for p in leaves]
        v_row, v_col, v = (
            tree_unflatten(spec, [None if x is None else x[k] for x in inits]) for k in range(3)
        )
        return FactoredState(count=init_count(params), v_row=v_row, v_col=v_col, v=v)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        decays: dict[tuple[torch.dtype, torch.device], tuple[Any, Any]] = {}

        def ema(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            # The schedule is evaluated once per (dtype, device), in that dtype.
            key = (old.dtype, old.device)
            if key not in decays:
                step = state.count.to(device=old.device, dtype=old.dtype) - step_offset
                beta = step_scalar(decay_rate_fn(step, decay_rate))
                if isinstance(beta, torch.Tensor):
                    beta = beta.to(old.device)
                # 1 - beta is formed in the schedule's own dtype, as optax does.
                decays[key] = (beta, 1.0 - beta)
            beta, one_minus_beta = decays[key]
            return beta * old + one_minus_beta * new

        def update_leaf(g, v_row, v_col, v):
            dims = _factored_dims(g.shape, factored, min_dim_size_to_factor)
            cd = _compute_dtype(v.dtype)
            g_sq = _abs_sq(g.to(cd)) + epsilon
            if dims is None:
                new_v = ema(v.to(cd), g_sq).to(v.dtype)
                return (g * torch.rsqrt(new_v.to(cd))).to(g.dtype), v_row, v_col, new_v
            d1, d0 = dims
            new_row = ema(v_row.to(cd), g_sq.mean(dim=d0)).to(v_row.dtype)
            new_col = ema(v_col.to(cd), g_sq.mean(dim=d1)).to(v_col.dtype)
            row = new_row.to(cd)
            # v_row lost axis d0, so axis d1 moved down by one if it came after d0.
            row_mean = row.mean(dim=d1 - 1 if d1 > d0 else d1, keepdim=True)
            row_factor = torch.rsqrt(row / row_mean).unsqueeze(d0)
            col_factor = torch.rsqrt(new_col.to(cd)).unsqueeze(d1)
            return (g * row_factor * col_factor).to(g.dtype), new_row, new_col, v

        def step(ops, gs, rows, cols, vs):
            return tuple(columns([update_leaf(*leaf) for leaf in zip(gs, rows, cols, vs)], 4))

        out, v_row, v_col, v = map_leaves(
            step,
            updates,
            state.v_row,
            state.v_col,
            state.v,
            keep=(None, 0, 1, 2),
            shapes={k: functools.partial(statistics_shape, k) for k in range(3)},
            what="scale_by_factored_rms",
        )
        return out, FactoredState(count=state.count + 1, v_row=v_row, v_col=v_col, v=v)

    return GradientTransformation(init_fn, update_fn)


class ScaleBySM3State(NamedTuple):
    """State of `scale_by_sm3`.

    ``mu`` holds, per parameter, a list of accumulators: one vector per axis for leaves with two
    or more axes, else one accumulator of the leaf's shape. ``nu`` is the momentum of the
    scaled updates.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.scale_by_sm3().init({"w": torch.zeros(4, 3)})
        >>> [m.shape for m in state.mu["w"]], state.nu["w"].shape
        ([torch.Size([4]), torch.Size([3])], torch.Size([4, 3]))
    """

    mu: Any
    nu: Any


def _max_over_others(x: torch.Tensor, axis: int) -> torch.Tensor:
    """The maximum of ``x >= 0`` over every axis but ``axis`` (0 where there is nothing to take)."""
    if is_dtensor(x):  # each rank its shard (an empty one gives 0s, where DTensor's fails)
        return vector_max_along(_max_over_others(x.to_local(), axis), x, axis)
    others = [d for d in range(x.dim()) if d != axis]
    return x.amax(dim=others) if x.numel() else x.new_zeros((x.shape[axis],))


def _sm3_shapes(shape: Sequence[int]) -> list[tuple[int, ...]]:
    """SM3's accumulators for a leaf of ``shape``: one vector per axis, or one full-size one."""
    return [(n,) for n in shape] if len(shape) >= 2 else [tuple(shape)]


@record_hyperparams
def scale_by_sm3(
    b1: Scalar = 0.9,
    b2: Scalar = 1.0,
    eps: Scalar = 1e-8,
) -> GradientTransformation:
    r"""Scale updates by SM3's memory-efficient second-moment estimate.

    For a leaf with axes $1..k$, SM3 keeps one accumulator vector $\mu^{(i)}$ per axis (its
    cover sets are the slices along each axis). Each step, with $\mu^{(i)}$ broadcast along the
    other axes,
    $\nu_t = c\, g_t^2 + \beta_2 \min_i \mu^{(i)}_{t-1}$, where $c = 1 - \beta_2$ unless
    $\beta_2 = 1$ (then $c = 1$: the original, non-decaying SM3);
    $\mu^{(i)}_t = \max_{\text{axes} \ne i} \nu_t$;
    $\tilde g_t = g_t / \sqrt{\nu_t + \epsilon}$ (0 where $\nu_t = 0$); and the update is the
    momentum $m_t = \beta_1 m_{t-1} + (1 - \beta_1)\tilde g_t$. Leaves with fewer than two axes
    keep a full accumulator ($\nu_t$ itself). Memory is $O(\sum_i n_i)$ instead of $O(\prod_i n_i)$.

    Args:
        b1: momentum decay, in ``[0, 1)``.
        b2: accumulator decay, in ``[0, 1]``; 1 sums squared gradients as in the paper.
        eps: added inside the square root, $\epsilon \ge 0$.

    Returns:
        A `GradientTransformation` with state `ScaleBySM3State`.

    Raises:
        ValueError: for ``b1`` outside ``[0, 1)``, ``b2`` outside ``[0, 1]``, a negative ``eps``,
            or (at ``init``) complex parameters.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_sm3(b1=0.0)
        >>> state = tx.init({"w": torch.zeros(2, 3)})
        >>> [m.shape for m in state.mu["w"]]
        [torch.Size([2]), torch.Size([3])]
        >>> u, state = tx.update({"w": torch.full((2, 3), 2.0)}, state)
        >>> u["w"]
        tensor([[1., 1., 1.],
                [1., 1., 1.]])

    References:
        Anil et al., Memory-Efficient Adaptive Optimization, NeurIPS 2019.
        https://arxiv.org/abs/1901.11150

    Unlike optax (which fails on them), 0-d leaves are accepted and treated like vectors.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0, high_inclusive=True)
    check_non_negative("eps", eps)

    def init_leaf(p: torch.Tensor) -> list[torch.Tensor]:
        if p.is_complex():
            raise ValueError("scale_by_sm3 does not support complex parameters.")
        return [p.new_zeros(shape) for shape in _sm3_shapes(p.shape)]

    def init_fn(params):
        return ScaleBySM3State(mu=tree_map(init_leaf, params), nu=tree_zeros_like(params))

    def g_sq_coefficient() -> Scalar:
        if isinstance(b2, torch.Tensor):
            return torch.where(b2 == 1.0, torch.ones_like(b2), 1.0 - b2)
        return 1.0 if b2 == 1.0 else 1.0 - b2

    def update_leaf(g, mu, nu):
        gc = g.to(nu.dtype)
        if g.dim() < 2:
            prev = mu[0]
        else:
            # Axis i's accumulator broadcast along the other axes.
            spread = [
                m.reshape([-1 if d == i else 1 for d in range(g.dim())]) for i, m in enumerate(mu)
            ]
            prev = functools.reduce(torch.minimum, spread)
        acc = g_sq_coefficient() * gc * gc + b2 * prev
        # 0 where nothing has been accumulated yet, instead of g / sqrt(eps).
        inv = torch.where(acc > 0, torch.rsqrt(acc + eps), torch.zeros_like(acc))
        new_nu = _lerp(nu, gc * inv, 1 - b1)
        new_mu = [acc] if g.dim() < 2 else [_max_over_others(acc, i) for i in range(g.dim())]
        return new_nu.to(g.dtype), new_mu, new_nu

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus):
            return tuple(columns([update_leaf(*leaf) for leaf in zip(gs, mus, nus)], 3))

        out, mu, nu = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            keep=(None, 0, 1),
            shapes={0: _sm3_shapes},
            what="scale_by_sm3",
        )
        return out, ScaleBySM3State(mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)
