r"""GaLore: a gradient-only optimizer (Adam by default) run on low-rank projected gradients.

Each matrix-shaped gradient $G$ ($m \times n$) is projected onto $r$ of its top singular
vectors, refreshed from the SVD of the gradient every ``update_proj_gap`` steps; the base
optimizer runs on the small projection, so its moments are $r \times n$ (or $m \times r$)
instead of $m \times n$, and its output is projected back to the full space. Every other
leaf goes through the base optimizer unprojected.

Matrices of the same shape, dtype and device are refreshed by one batched SVD. Two
deliberate differences from optax, both about the SVD (see `scale_by_galore`): it runs in
float64 for float64 gradients, and a refreshed projector keeps the signs of the old one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    MaskOrFn,
    OptState,
    Params,
    Scalar,
    ScalarOrSchedule,
    Updates,
    params_device,
)
from torchopt_fn._branch import branch
from torchopt_fn._combine import chain
from torchopt_fn._gathered import gathered
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_number
from torchopt_fn.transforms._adam import scale_by_adam
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import (
    flatten_like,
    leaf_paths,
    path_str,
    tree_flatten,
    tree_unflatten,
)
from torchopt_fn.tree._ops import compute_dtype

__all__ = ["GaLoreDimensionNumbers", "GaLoreState", "galore", "scale_by_galore"]


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a leaf form GaLore's matrix: rows ``reduction_axis``, columns ``output_axis``.

    Each is an axis or a sequence of axes (negative ones count from the end); together they
    must name every axis of the leaf exactly once. The leaf is seen as the matrix
    ``(prod(rows), prod(columns))`` while it is projected, and keeps its shape everywhere else.
    Attention weights ``(embed, heads, head_dim)`` are
    ``GaLoreDimensionNumbers(reduction_axis=0, output_axis=(1, 2))``.

    Examples:
        >>> import torchopt_fn as tf
        >>> tf.contrib.GaLoreDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
        GaLoreDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


GaLoreDimNumsOrFn = GaLoreDimensionNumbers | Params | Callable[[Params], Any]
"""One `GaLoreDimensionNumbers` for every leaf of rank >= 2, a tree of them (`None` where a
leaf is not projected), or a function of the params (the updates, in ``update``) giving one."""


class GaLoreState(NamedTuple):
    r"""State of `scale_by_galore`: the step count, the base optimizer's state (on the projected
    gradients of projected leaves, the full ones of others) and each leaf's projector.

    A projected leaf's projector is $m \times r$ (left: $m \ge n$) or $n \times r$ (right);
    an unprojected leaf's is an empty ``(0, 0)`` tensor.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.contrib.scale_by_galore(rank=2).init({"w": torch.zeros(8, 6)})
        >>> state.projector["w"].shape, state.base_optimizer_state.mu["w"].shape
        (torch.Size([8, 2]), torch.Size([2, 6]))
    """

    count: torch.Tensor
    base_optimizer_state: OptState
    projector: Updates


class _Matrix(NamedTuple):
    """How a leaf is seen as an ``(rows, cols)`` matrix, and the shapes of its projection."""

    permutation: tuple[int, ...]
    inverse: tuple[int, ...]
    permuted_shape: tuple[int, ...]
    rows: int
    cols: int
    rank: int  # the effective rank, min(rank, rows, cols)

    @property
    def left(self) -> bool:
        """Project the rows (``P^T G``, moments ``r x cols``): the smaller moments when m >= n."""
        return self.rows >= self.cols

    @property
    def projector_shape(self) -> tuple[int, int]:
        return (self.rows if self.left else self.cols, self.rank)

    @property
    def proxy_shape(self) -> tuple[int, int]:
        return (self.rank, self.cols) if self.left else (self.rows, self.rank)


def _axes(axis: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))


def _matrix(shape: torch.Size, dims: GaLoreDimensionNumbers, rank: int) -> _Matrix:
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"GaLore requires tensors with rank >= 2, got shape {tuple(shape)}.")
    reduction, output = _axes(dims.reduction_axis, ndim), _axes(dims.output_axis, ndim)
    if set(reduction) & set(output):
        raise ValueError(
            f"GaLore's reduction axes {reduction} and output axes {output} must be disjoint "
            f"({dims} on shape {tuple(shape)})."
        )
    if len(reduction) + len(output) != ndim or len(set(reduction) | set(output)) != ndim:
        raise ValueError(
            f"GaLore's reduction axes {reduction} and output axes {output} must name every "
            f"axis of a tensor of shape {tuple(shape)} once."
        )
    permutation = reduction + output
    inverse = tuple(permutation.index(a) for a in range(ndim))
    # math.prod of lists: Dynamo cannot trace it over a generator.
    rows = math.prod([shape[a] for a in reduction])
    cols = math.prod([shape[a] for a in output])
    permuted = tuple([shape[a] for a in permutation])
    return _Matrix(permutation, inverse, permuted, rows, cols, min(rank, rows, cols))


def _to_matrix(x: torch.Tensor, mat: _Matrix) -> torch.Tensor:
    return x.permute(mat.permutation).reshape(mat.rows, mat.cols)


def _from_matrix(x: torch.Tensor, mat: _Matrix) -> torch.Tensor:
    return x.reshape(mat.permuted_shape).permute(mat.inverse)


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in the wider of their dtypes (as JAX promotes)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype) @ b.to(dtype)


def _project(g: torch.Tensor, p: torch.Tensor, mat: _Matrix) -> torch.Tensor:
    return _matmul(p.mT, g) if mat.left else _matmul(g, p)


def _project_back(u: torch.Tensor, p: torch.Tensor, mat: _Matrix) -> torch.Tensor:
    return _matmul(p, u) if mat.left else _matmul(u, p.mT)


def _svd_projectors(
    gs: list[torch.Tensor], olds: list[torch.Tensor], mats: list[_Matrix]
) -> list[torch.Tensor]:
    """The top-``rank`` left (or right) singular vectors of each matrix, each signed to agree
    with the previous projector's column; the matrices of one shape, dtype and device from
    one batched SVD, in at least float32."""
    groups: dict[tuple, list[int]] = {}
    for i, (g, mat) in enumerate(zip(gs, mats)):
        groups.setdefault((mat.rows, mat.cols, mat.rank, g.dtype, g.device), []).append(i)
    out: list[Any] = [None] * len(gs)
    for (_, _, rank, dtype, _), members in groups.items():
        x = torch.stack([gs[i] for i in members]).to(compute_dtype(dtype))
        # LAPACK refuses non-finite input (JAX returns NaN): decompose zeros instead, and
        # give those matrices NaN projectors, so their updates are NaN as in optax (and a
        # wrapper such as `apply_if_finite` can skip them).
        finite = torch.isfinite(x).all(dim=(-2, -1), keepdim=True)
        u, _, vh = torch.linalg.svd(torch.where(finite, x, 0.0), full_matrices=False)
        p = u[..., :rank] if mats[members[0]].left else vh[..., :rank, :].mT
        # A singular vector's sign is LAPACK's choice (MKL, OpenBLAS and cuSOLVER differ,
        # batched or not). The base optimizer's moments live in the projector's basis, so a
        # flipped column would negate the momentum it carries over: keep the old sign.
        old = torch.stack([olds[i] for i in members]).to(p.dtype)
        p = torch.where((old * p).sum(dim=-2, keepdim=True) < 0, -p, p)
        p = torch.where(finite, p, torch.nan)
        for i, pi in zip(members, p.unbind(0)):
            out[i] = pi
    return out


def _dimension_numbers(
    spec_arg: GaLoreDimNumsOrFn | None, tree: Any, leaves: list, spec: Any
) -> list[GaLoreDimensionNumbers | None]:
    """Each leaf's dimension numbers, `None` where it is not projected."""

    def rank_of(x: Any) -> int:
        return x.dim() if isinstance(x, torch.Tensor) else -1

    if spec_arg is None:
        return [GaLoreDimensionNumbers() if rank_of(x) == 2 else None for x in leaves]
    if isinstance(spec_arg, GaLoreDimensionNumbers):
        return [spec_arg if rank_of(x) >= 2 else None for x in leaves]
    given = spec_arg(tree) if callable(spec_arg) else spec_arg
    dims = flatten_like(spec, tree, given, "scale_by_galore's weight_dimension_numbers")
    for i, d in enumerate(dims):
        if d is not None and not isinstance(d, GaLoreDimensionNumbers):
            raise TypeError(
                f"scale_by_galore: weight_dimension_numbers at {path_str(leaf_paths(tree)[i])} "
                f"must be a GaLoreDimensionNumbers or None, got {type(d).__name__}."
            )
    return dims


@record_hyperparams
def scale_by_galore(
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: Scalar = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_dimension_numbers: GaLoreDimNumsOrFn | None = None,
) -> GradientTransformation:
    r"""GaLore's direction: ``base_optimizer`` run on gradients projected to rank ``rank``.

    For a matrix gradient $G \in \mathbb{R}^{m \times n}$ (2-D leaves, or the axes
    ``weight_dimension_numbers`` names), every ``update_proj_gap`` steps (the first included)
    $P_t$ becomes the first $r = \min(\text{rank}, m, n)$ columns of $U$ ($m \ge n$) or of
    $V$ ($m < n$), $G_t = U \Sigma V^\top$; otherwise $P_t = P_{t-1}$. The base optimizer
    $\rho$ runs on $R_t = P_t^\top G_t$ (or $G_t P_t$) and the update is
    $u_t = \text{scale} \cdot P_t\, \rho(R_t)$ (or $\rho(R_t) P_t^\top$). Other leaves get
    $\rho(g_t)$, unscaled. The base optimizer's moments are not reset when $P$ changes.

    Deliberate differences from optax (with both patched into optax's code, the two agree
    to 1e-15 in float64):

    * Each refreshed column of $P$ takes the sign that agrees with the old column
      ($\langle p_{\text{old}}, p_{\text{new}} \rangle \ge 0$). A singular vector's sign is
      the LAPACK build's choice (MKL, OpenBLAS and cuSOLVER differ, and so do JAX's float32
      and float64 on the same matrix). Within a projection period it cancels ($P$ appears
      twice and Adam is odd in its input), but the base optimizer's moments are carried
      over in $P$'s basis, so a flipped column reverses the momentum it carries. optax keeps
      LAPACK's sign: on the goldens' problem (CPU, OpenBLAS) it flips at most refreshes,
      and in each of 7 configurations that refresh, its loss after 12 steps is higher than
      with kept signs (and equal without flips). Here the trajectory does not depend on the
      signs LAPACK returns.
    * The SVD runs in the gradient's dtype promoted to at least float32, so in float64 for
      float64 gradients; optax always decomposes in float32, so where its signs stay, the
      two agree to float32 rounding (measured: within 1e-5 relative).

    The SVD runs only on refresh steps, eagerly and compiled (a ``torch.cond`` in the one
    graph of all steps, see `branch`); under `torch.func` transforms, or compiled with
    gradients flowing into the updates, it runs on every step and ``torch.where`` keeps the
    old projector (one graph, no recompiles), as ``lax.cond`` does under ``vmap``. A
    non-finite gradient on a refresh step gives a NaN projector, hence NaN updates (optax's
    result), not LAPACK's error, so `apply_if_finite` can skip the step.

    Args:
        rank: the target rank $r$ (clipped to $\min(m, n)$), a positive int.
        update_proj_gap: the number of steps between refreshes of the projectors, >= 1.
        scale: multiplies the projected leaves' updates.
        base_optimizer: a transformation of the gradients alone (it is given no params, and
            the projected leaves' gradients have the projection's shape), e.g.
            `scale_by_adam` (the default), `scale_by_lion`, `scale_by_rms`. For weight
            decay use `galore`'s ``weight_decay``, applied in the full space.
        weight_dimension_numbers: `None` (project the 2-D leaves, rows = axis 0), one
            `GaLoreDimensionNumbers` for every leaf of rank >= 2, a tree of them with the
            params' structure (`None` where a leaf is not projected), or a function of the
            params returning one (called on the updates in ``update``, as optax does).

    Returns:
        A `GradientTransformation` with state `GaLoreState`.

    Raises:
        TypeError: ``rank`` or ``update_proj_gap`` is not an int.
        ValueError: ``rank`` or ``update_proj_gap`` is not positive; (at ``init``) dimension
            numbers that do not name every axis of their leaf once, or name a leaf of rank
            < 2; (at ``update``) an update whose shape does not match the projector.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_galore(rank=1)
        >>> g = {"w": torch.tensor([[3.0, 0.0], [0.0, 1.0]]), "b": torch.tensor([2.0])}
        >>> u, state = tx.update(g, tx.init(g))
        >>> u["w"].round(decimals=4)  # Adam on the top singular direction only
        tensor([[1., 0.],
                [0., 0.]])
        >>> u["b"]  # not a matrix: plain Adam
        tensor([1.0000])

    References:
        Zhao et al., GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection,
        ICML 2024. https://arxiv.org/abs/2403.03507
    """
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__} {rank!r}.")
    if rank <= 0:
        raise ValueError(f"rank must be > 0, got {rank}.")
    if isinstance(update_proj_gap, bool) or not isinstance(update_proj_gap, int):
        raise TypeError(
            f"update_proj_gap must be an int, got {type(update_proj_gap).__name__} "
            f"{update_proj_gap!r}."
        )
    if update_proj_gap <= 0:
        raise ValueError(f"update_proj_gap must be > 0, got {update_proj_gap}.")
    check_number("scale", scale)
    base = scale_by_adam() if base_optimizer is None else base_optimizer

    def init_fn(params):
        leaves, spec = tree_flatten(params)
        dims = _dimension_numbers(weight_dimension_numbers, params, leaves, spec)
        projectors, proxies = [], []
        for p, d in zip(leaves, dims):
            if p is None:
                projectors.append(None)
                proxies.append(None)
            elif d is None:
                projectors.append(torch.zeros((0, 0), dtype=p.dtype, device=p.device))
                proxies.append(torch.zeros_like(p))
            else:
                mat = _matrix(p.shape, d, rank)
                projectors.append(torch.zeros(mat.projector_shape, dtype=p.dtype, device=p.device))
                proxies.append(torch.zeros(mat.proxy_shape, dtype=p.dtype, device=p.device))
        return GaLoreState(
            count=torch.zeros((), dtype=torch.int64, device=params_device(params)),
            base_optimizer_state=base.init(tree_unflatten(spec, proxies)),
            projector=tree_unflatten(spec, projectors),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params
        leaves, spec = tree_flatten(updates)
        projectors = flatten_like(spec, updates, state.projector, "scale_by_galore")
        dims = _dimension_numbers(weight_dimension_numbers, updates, leaves, spec)
        live = [i for i, (g, d) in enumerate(zip(leaves, dims)) if g is not None and d is not None]
        mats = {i: _matrix(leaves[i].shape, dims[i], rank) for i in live}
        for i in live:
            have = getattr(projectors[i], "shape", None)
            if have is None or tuple(have) != mats[i].projector_shape:
                path = path_str(leaf_paths(updates)[i])
                raise ValueError(
                    f"scale_by_galore: at {path} the update has shape "
                    f"{tuple(leaves[i].shape)}, so its projector must have shape "
                    f"{mats[i].projector_shape}, but it has "
                    f"{None if have is None else tuple(have)} (was the state initialised "
                    "for other parameters?)."
                )
        gs = [_to_matrix(leaves[i], mats[i]) for i in live]
        old = [projectors[i] for i in live]
        ms = [mats[i] for i in live]

        def refreshed(gs: list[torch.Tensor], old: list[torch.Tensor]) -> list[torch.Tensor]:
            # Matrices of rank 0 (a zero-size leaf) have nothing to decompose.
            todo = [k for k, m in enumerate(ms) if m.rank > 0]
            new = _svd_projectors(
                [gs[k] for k in todo], [old[k] for k in todo], [ms[k] for k in todo]
            )
            out = list(old)
            for k, p in zip(todo, new):
                # The strides `init` gave (a compiled step guards on them): `contiguous`
                # keeps a (4, 1) slice's strides, which are not those.
                out[k] = p.to(old[k].dtype).clone(memory_format=torch.contiguous_format)
            return out

        due = state.count % update_proj_gap == 0
        new = branch(due, refreshed, lambda _, old: old, gs, old, lazy=True) if live else []
        low_rank = list(leaves)
        new_projectors = list(projectors)
        for i, g, p, mat in zip(live, gs, new, ms):
            low_rank[i] = _project(g, p, mat)
            new_projectors[i] = p
        inner, base_state = base.update(
            tree_unflatten(spec, low_rank), state.base_optimizer_state, None, **extra_args
        )
        out = flatten_like(spec, updates, inner, "scale_by_galore")
        for i, p, mat in zip(live, new, ms):
            full = _from_matrix(_project_back(out[i], p, mat), mat)
            out[i] = (scale * full).to(leaves[i].dtype)
        return tree_unflatten(spec, out), GaLoreState(
            state.count + 1, base_state, tree_unflatten(spec, new_projectors)
        )

    return gathered(GradientTransformation(init_fn, update_fn))


@record_hyperparams
def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: Scalar = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    weight_dimension_numbers: GaLoreDimNumsOrFn | None = None,
) -> GradientTransformation:
    r"""GaLore: `scale_by_galore`, decoupled weight decay in the full space, then
    ``-learning_rate``.

    $\theta_{t+1} = \theta_t - \eta_t\,(u_t + \lambda \theta_t)$ with $u_t$ `scale_by_galore`'s
    update (Adam on gradients projected to rank ``rank`` by default), so the base
    optimizer's moments take $r/\max(m, n)$ of Adam's memory for an $m \times n$ matrix.

    Args:
        learning_rate: $\eta$, a float, a 0-d tensor or a schedule of the step count. Set it
            to 1 if ``base_optimizer`` already includes a learning rate.
        rank: the target rank of the projection (clipped to each matrix's smaller side).
        update_proj_gap: the number of steps between refreshes of the projectors.
        scale: multiplies the projected leaves' updates.
        base_optimizer: a transformation of the gradients alone (default `scale_by_adam`);
            not `adamw`, `lamb` or another that needs params (see `scale_by_galore`).
        weight_decay: $\lambda$, decoupled (AdamW's), on the full params.
        mask: which params are decayed: a tree of booleans or a function of the params.
        weight_dimension_numbers: which axes form each leaf's matrix (see
            `scale_by_galore`).

    Returns:
        A `GradientTransformation` (a `chain`); ``update`` needs ``params`` for the decay.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.galore(learning_rate=0.01, rank=2)
        >>> params = {"w": torch.diag(torch.arange(1.0, 5.0)), "b": torch.ones(4)}
        >>> grads = {k: 2 * v for k, v in params.items()}  # of sum(params ** 2)
        >>> updates, state = tx.update(grads, tx.init(params), params)
        >>> tf.apply_updates(params, updates)["w"].diagonal()  # the top-2 directions moved
        tensor([1.0000, 2.0000, 2.9900, 3.9900])

    References:
        Zhao et al., GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection,
        ICML 2024. https://arxiv.org/abs/2403.03507
    """
    return chain(
        scale_by_galore(
            rank=rank,
            update_proj_gap=update_proj_gap,
            scale=scale,
            base_optimizer=base_optimizer,
            weight_dimension_numbers=weight_dimension_numbers,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
