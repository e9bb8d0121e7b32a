"""Muon as optax has it: momentum orthogonalised by Newton–Schulz, for any axes of any leaf.

`torch.optim.Muon` (its exact twin is `tf.scale_by_torch_muon`) takes 2-D leaves only and
iterates in bfloat16. This is optax's version: any leaf of rank two or more, with
`MuonDimensionNumbers` naming which axes are the matrix's rows (reduced over) and columns
(output), the rest batch axes; four ways to normalise before the iteration; an iteration in
the leaf's own dtype; and `muon`, which sends every other leaf to AdamW.

Every matrix of the same shape, dtype and device, across leaves and batch axes, goes through
the iteration together as one batched matmul (one kernel per iteration and shape, not one
per leaf).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import optree
import torch

from torchopt_fn._base import GradientTransformation, Params, Scalar, ScalarOrSchedule
from torchopt_fn._combine import MaskedNode, chain, partition
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.optimizers._adam import adamw
from torchopt_fn.transforms._adam import first_moment_hat
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import NAMESPACE, tree_flatten, tree_leaves, tree_unflatten
from torchopt_fn.tree._math import moment, tree_float_dtype, tree_zeros_like
from torchopt_fn.tree._ops import Shared, map_leaves

__all__ = [
    "MuonDimensionNumbers",
    "MuonState",
    "muon",
    "orthogonalize_via_newton_schulz",
    "scale_by_muon",
]

Preconditioning = Literal["frobenius", "spectral", "aol", "schatten"]
_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")
_STANDARD_NS_COEFFS = (3.4445, -4.7750, 2.0315)
# Dion's per-iteration coefficients (Ahn et al., 2025), as optax ships them.
_DION_NS_COEFFS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)
_NS_PRESETS = {"standard": _STANDARD_NS_COEFFS, "dion": _DION_NS_COEFFS}
_FIRST_ITERATION_EPS = 1e-8  # optax's floor of the AOL and Schatten rescalings


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a leaf form Muon's matrix: rows ``reduction_axis``, columns ``output_axis``.

    Each is an axis or a sequence of axes (negative ones count from the end); the two must be
    disjoint. Every other axis is a batch axis: each slice is orthogonalised on its own. A
    convolution kernel ``(out, in, kh, kw)`` is ``MuonDimensionNumbers((1, 2, 3), 0)``.

    Examples:
        >>> import torchopt_fn as tf
        >>> tf.contrib.MuonDimensionNumbers(reduction_axis=(1, 2, 3), output_axis=0)
        MuonDimensionNumbers(reduction_axis=(1, 2, 3), output_axis=0)
    """

    reduction_axis: Sequence[int] | int = 0
    output_axis: Sequence[int] | int = 1


WeightDimNumOrFn = MuonDimensionNumbers | Params | Callable[[Params], Any]


def _is_dims_leaf(x: Any) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


def _axes(axis: Sequence[int] | int, ndim: int) -> tuple[int, ...]:
    return tuple([a % ndim for a in ((axis,) if isinstance(axis, int) else axis)])


class _MatrixLayout(NamedTuple):
    """How a leaf becomes a batch of matrices ``(batch, rows, cols)`` with rows <= cols."""

    permutation: tuple[int, ...]
    batched_shape: tuple[int, int, int]  # (batch, fan_in, fan_out) before the transpose
    permuted_shape: tuple[int, ...]
    fan_in: int
    fan_out: int

    @property
    def transposed(self) -> bool:
        return self.fan_in > self.fan_out


def _layout(shape: torch.Size, dims: MuonDimensionNumbers | None, what: str) -> _MatrixLayout:
    ndim = len(shape)
    if dims is None:
        if ndim != 2:
            raise ValueError(
                f"{what}: a leaf of shape {tuple(shape)} needs MuonDimensionNumbers (only "
                "2-D leaves default to rows = axis 0, columns = axis 1)."
            )
        dims = MuonDimensionNumbers()
    if ndim < 2:
        raise ValueError(f"{what}: Muon's leaves must have rank >= 2, got shape {tuple(shape)}.")
    reduction, output = _axes(dims.reduction_axis, ndim), _axes(dims.output_axis, ndim)
    if set(reduction) & set(output):
        raise ValueError(
            f"{what}: the reduction axes {reduction} and output axes {output} must be "
            f"disjoint ({dims} on shape {tuple(shape)})."
        )
    batch = tuple(a for a in range(ndim) if a not in reduction and a not in output)
    permutation = batch + reduction + output
    # Lists, not generators: Dynamo traces comprehensions, not generators fed to math.prod.
    fan_in = math.prod([shape[a] for a in reduction])
    fan_out = math.prod([shape[a] for a in output])
    return _MatrixLayout(
        permutation,
        (math.prod([shape[a] for a in batch]), fan_in, fan_out),
        tuple([shape[a] for a in permutation]),
        fan_in,
        fan_out,
    )


def _to_matrices(x: torch.Tensor, layout: _MatrixLayout) -> torch.Tensor:
    m = x.permute(layout.permutation).reshape(layout.batched_shape)
    return m.mT if layout.transposed else m


def _from_matrices(m: torch.Tensor, layout: _MatrixLayout) -> torch.Tensor:
    if layout.transposed:
        m = m.mT
    inverse = [layout.permutation.index(a) for a in range(len(layout.permutation))]
    return m.reshape(layout.permuted_shape).permute(inverse)


def _coefficient_rows(ns_coeffs: torch.Tensor, ns_steps: int, dtype: torch.dtype) -> list:
    """One ``(a, b, c)`` of 0-d tensors per iteration, in the matrices' dtype."""
    coeffs = ns_coeffs.to(dtype)
    rows = [coeffs] * ns_steps if coeffs.dim() == 1 else list(coeffs.unbind(0))
    return [tuple(row.unbind(0)) for row in rows]


def _newton_schulz(
    x: torch.Tensor, rows: list, preconditioning: Preconditioning, eps: Scalar
) -> torch.Tensor:
    r"""The iteration on a batch of wide matrices ``(batch, m, n)``, ``m <= n``."""
    if preconditioning == "frobenius":
        x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    elif preconditioning == "spectral":
        x = x / (torch.linalg.matrix_norm(x, ord=2, keepdim=True) + eps)
    for i, (a, b, c) in enumerate(rows):
        gram = x @ x.mH
        if i == 0 and preconditioning == "aol":
            # Almost-orthogonal-layer rescaling: rows by their Gram row sums, which bounds
            # the spectral norm by 1 more tightly than the Frobenius norm does.
            s = torch.rsqrt(gram.abs().sum(-1).clamp(min=_FIRST_ITERATION_EPS)).unsqueeze(-1)
            x, gram = x * s, gram * s * s.mT
        elif i == 0 and preconditioning == "schatten":
            s = torch.rsqrt(
                torch.linalg.matrix_norm(gram, keepdim=True).clamp(min=_FIRST_ITERATION_EPS)
            )
            x, gram = x * s, gram * s * s
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x


def _orthogonalize(
    xs: list[torch.Tensor],
    layouts: list[_MatrixLayout],
    rows_of: Callable[[torch.dtype], list],
    preconditioning: Preconditioning,
    eps: Scalar,
) -> list[torch.Tensor]:
    """Every leaf's matrices orthogonalised, same-shape matrices in one batched iteration."""
    mats = [_to_matrices(x, lay) for x, lay in zip(xs, layouts)]
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault((m.shape[1:], m.dtype, m.device), []).append(i)
    out: list[Any] = [None] * len(mats)
    for (_, dtype, _), members in groups.items():
        batch = [mats[i] for i in members]
        stacked = batch[0] if len(batch) == 1 else torch.cat(batch)
        result = _newton_schulz(stacked, rows_of(dtype), preconditioning, eps)
        sizes = [m.shape[0] for m in batch]
        for i, part in zip(members, result.split(sizes) if len(batch) > 1 else [result]):
            out[i] = _from_matrices(part, layouts[i])
    return out


def _check_ns_coeffs(ns_coeffs: Any, ns_steps: int) -> torch.Tensor:
    coeffs = torch.as_tensor(ns_coeffs, dtype=torch.float64)
    if coeffs.dim() > 2 or coeffs.dim() == 0 or coeffs.shape[-1] != 3:
        raise ValueError(f"ns_coeffs must have shape (3,) or (n, 3), got {tuple(coeffs.shape)}.")
    if coeffs.dim() == 2 and coeffs.shape[0] > ns_steps:
        raise ValueError(
            f"ns_coeffs has {coeffs.shape[0]} rows, more than ns_steps={ns_steps} iterations."
        )
    return coeffs[-ns_steps:] if coeffs.dim() == 2 else coeffs


def _check_preconditioning(preconditioning: str) -> None:
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(
            f"preconditioning must be one of {_PRECONDITIONINGS}, got {preconditioning!r}."
        )


def orthogonalize_via_newton_schulz(
    x: torch.Tensor,
    ns_coeffs: Any = _STANDARD_NS_COEFFS,
    ns_steps: int = 5,
    preconditioning: Preconditioning = "frobenius",
    eps: Scalar = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
) -> torch.Tensor:
    r"""Approximately orthogonalise the matrices of ``x`` by Newton–Schulz iterations.

    Each matrix $X$ (rows and columns as ``dimension_numbers`` says; a 2-D ``x`` needs none)
    is normalised (``"frobenius"``: $X/(\|X\|_F+\epsilon)$; ``"spectral"``:
    $X/(\|X\|_2+\epsilon)$; ``"aol"`` and ``"schatten"`` rescale inside the first
    iteration instead), then iterated as $X \leftarrow aX + (bA + cA^2)X$ with
    $A = XX^{\mathsf H}$, on its wider orientation, in ``x``'s dtype. The singular values go
    to about 1: the result approximates $UV^{\mathsf H}$ for $X = U\Sigma V^{\mathsf H}$.

    Args:
        x: a tensor of rank 2, or higher with ``dimension_numbers``.
        ns_coeffs: one ``(a, b, c)`` for every iteration, or one row per iteration
            (``(n, 3)``, ``n <= ns_steps``: the iteration then runs ``n`` times).
        ns_steps: the number of iterations.
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"``.
        eps: added to the norm the input is divided by.
        dimension_numbers: the matrix's axes; the others are batch axes.

    Returns:
        A tensor of ``x``'s shape and dtype.

    Raises:
        ValueError: for a leaf of rank other than 2 without ``dimension_numbers``, axes that
            overlap, malformed ``ns_coeffs`` or an unknown ``preconditioning``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> x = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
        >>> y = tf.contrib.orthogonalize_via_newton_schulz(x)
        >>> torch.linalg.svdvals(y)  # 3 and 0.5 both land near 1
        tensor([1.0420, 0.7136], dtype=torch.float64)

    References:
        Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
        https://kellerjordan.github.io/posts/muon/
    """
    _check_preconditioning(preconditioning)
    coeffs = _check_ns_coeffs(ns_coeffs, ns_steps).to(x.device)
    layout = _layout(x.shape, dimension_numbers, "orthogonalize_via_newton_schulz")
    rows = _coefficient_rows(coeffs, ns_steps, x.dtype)
    return _orthogonalize([x], [layout], lambda _: rows, preconditioning, eps)[0]


def _leaf_dims(weight_dimension_numbers: WeightDimNumOrFn | None, tree: Any) -> list:
    """One `MuonDimensionNumbers` (or `None`) per leaf of ``tree`` (`tree_leaves` order).

    A tree of dimension numbers may be a prefix of ``tree``: a subtree gets its node's value.
    Where ``tree`` holds a `MaskedNode` (another transformation's leaf), it holds no leaf; a
    function of the params is called with an empty tensor standing in for it, so that it
    can read ``p.ndim`` and ``p.shape`` everywhere.
    """
    dims = weight_dimension_numbers
    if callable(dims) and not isinstance(dims, MuonDimensionNumbers):
        dims = dims(
            optree.tree_map(
                lambda x: _PLACEHOLDER if isinstance(x, MaskedNode) else x,
                tree,
                is_leaf=lambda x: isinstance(x, MaskedNode),
                none_is_leaf=True,
                namespace=NAMESPACE,
            )
        )
    if _is_dims_leaf(dims):
        return [dims] * len(tree_leaves(tree))
    out: list = []
    optree.tree_map_(
        lambda d, sub: out.extend([d] * len(tree_leaves(sub))),
        dims,
        tree,
        is_leaf=lambda x: _is_dims_leaf(x) or isinstance(x, MaskedNode),
        none_is_leaf=True,
        namespace=NAMESPACE,
    )
    return out


_PLACEHOLDER = torch.empty(0, device="meta")  # a masked-out leaf, seen by a dims function


def _live_layouts(updates: Any, dims: WeightDimNumOrFn | None, what: str) -> list:
    leaves = tree_leaves(updates)
    per_leaf = _leaf_dims(dims, updates)
    return [_layout(u.shape, d, what) for u, d in zip(leaves, per_leaf) if u is not None]


class MuonState(NamedTuple):
    """State of `scale_by_muon`: the step ``count``, the momentum ``mu``, the ``ns_coeffs``.

    ``ns_coeffs`` is ``(3,)`` (the same every iteration) or ``(n, 3)`` (one row each).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.contrib.scale_by_muon().init({"w": torch.zeros(2, 3)})
        >>> state.count, state.mu["w"].shape, state.ns_coeffs.shape
        (tensor(0), torch.Size([2, 3]), torch.Size([3]))
    """

    count: torch.Tensor
    mu: Any
    ns_coeffs: torch.Tensor


@record_hyperparams
def scale_by_muon(
    ns_coeffs: Any = _STANDARD_NS_COEFFS,
    ns_steps: int = 5,
    beta: Scalar = 0.95,
    eps: Scalar = 1e-8,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    weight_dimension_numbers: WeightDimNumOrFn | None = None,
) -> GradientTransformation:
    r"""Muon's direction: bias-corrected momentum, orthogonalised by Newton–Schulz.

    $m_t = \beta m_{t-1} + (1-\beta) g_t$; $\hat m_t = m_t/(1-\beta^t)$, or with ``nesterov``
    $\beta m_t/(1-\beta^{t+1}) + (1-\beta) g_t/(1-\beta^t)$; the update is
    $O_t = $ `orthogonalize_via_newton_schulz` $(\hat m_t)$, or with ``adaptive``
    $\langle \hat m_t, O_t\rangle\, O_t$ (the inner product over the whole leaf). Unlike
    `tf.scale_by_torch_muon`, there is no shape ratio here (`muon` applies it) and the
    iteration runs in the leaf's dtype.

    Args:
        ns_coeffs: one ``(a, b, c)`` for every iteration, or one row per iteration.
        ns_steps: the number of Newton–Schulz iterations.
        beta: the momentum's decay.
        eps: added to the norm the momentum is divided by.
        mu_dtype: the momentum's dtype (default: the params').
        nesterov: use the Nesterov look-ahead.
        adaptive: scale each leaf's update by $\langle \hat m_t, O_t\rangle$.
        preconditioning: ``"frobenius"``, ``"spectral"``, ``"aol"`` or ``"schatten"`` (see
            `orthogonalize_via_newton_schulz`).
        weight_dimension_numbers: `MuonDimensionNumbers` for every leaf, a tree of them (or
            a function of the updates giving one); `None` means 2-D leaves, rows first.

    Returns:
        A `GradientTransformation` with state `MuonState`.

    Raises:
        ValueError: for ``beta`` outside [0, 1), malformed ``ns_coeffs``, an unknown
            ``preconditioning``, or a leaf that is not a matrix under its dimension numbers.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_muon(ns_steps=10)
        >>> g = {"w": torch.tensor([[2.0, 0.0], [0.0, 0.1]])}
        >>> u, _ = tx.update(g, tx.init(g))
        >>> u["w"].diagonal().gt(0.6).all().item()  # both directions, whatever their size
        True

    References:
        Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
        https://kellerjordan.github.io/posts/muon/
    """
    check_in_range("beta", beta, 0.0, 1.0)
    check_non_negative("eps", eps)
    _check_preconditioning(preconditioning)
    coeffs = _check_ns_coeffs(ns_coeffs, ns_steps)

    def init_fn(params):
        _live_layouts(params, weight_dimension_numbers, "scale_by_muon")
        leaves = [p for p in tree_leaves(params) if p is not None]
        device = leaves[0].device if leaves else None
        return MuonState(
            count=torch.zeros((), dtype=torch.int64, device=device),
            mu=tree_zeros_like(params, dtype=mu_dtype),
            ns_coeffs=coeffs.to(dtype=tree_float_dtype(params), device=device),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        layouts = _live_layouts(updates, weight_dimension_numbers, "scale_by_muon")
        count = state.count + 1

        def step(ops, gs, mus, ns):
            new_mu = moment(ops, gs, mus, beta, 1)
            # optax reads the momentum before its cast to mu_dtype.
            mu_hat = first_moment_hat(ops, gs, new_mu, beta, count, nesterov)
            rows = {}

            def rows_of(dtype: torch.dtype) -> list:
                if dtype not in rows:
                    rows[dtype] = _coefficient_rows(ns, ns_steps, dtype)
                return rows[dtype]

            out = _orthogonalize(mu_hat, layouts, rows_of, preconditioning, eps)
            if adaptive:
                out = [(m.conj() * o).sum() * o for m, o in zip(mu_hat, out)]
            return out, new_mu

        out, mu = map_leaves(
            step, updates, state.mu, Shared(state.ns_coeffs), keep=(None, 0), what="scale_by_muon"
        )
        return out, MuonState(count, mu, state.ns_coeffs)

    return GradientTransformation(init_fn, update_fn)


def _scale_by_shape(
    weight_dimension_numbers: WeightDimNumOrFn | None, consistent_rms: Scalar | None
) -> GradientTransformation:
    r"""Muon's per-leaf learning-rate ratio: $\sqrt{\max(1, n/m)}$ for fan-in $m$, fan-out $n$,
    or with ``consistent_rms`` $r$: $r\sqrt{\max(m, n)}$ (update RMS about $r$, AdamW-like)."""

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        layouts = _live_layouts(updates, weight_dimension_numbers, "muon")

        def step(ops, gs):
            out = []
            for g, lay in zip(gs, layouts):
                if g.numel() == 0:  # no ratio to take (a fan of 0), nothing to scale
                    out.append(g)
                elif consistent_rms is None:
                    out.append(g * math.sqrt(max(1.0, lay.fan_out / lay.fan_in)))
                else:
                    out.append(g * (math.sqrt(max(lay.fan_in, lay.fan_out)) * consistent_rms))
            return out

        return map_leaves(step, updates, what="muon"), state

    return GradientTransformation(lambda params: (), update_fn)


@record_hyperparams
def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: Any = _STANDARD_NS_COEFFS,
    ns_steps: int = 5,
    beta: Scalar = 0.95,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | Callable[[Params], Any] | None = None,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Preconditioning = "frobenius",
    adam_b1: Scalar = 0.9,
    adam_b2: Scalar = 0.999,
    adam_eps_root: Scalar = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: WeightDimNumOrFn | None = None,
    consistent_rms: Scalar | None = None,
) -> GradientTransformation:
    r"""Muon for the matrices of a model, AdamW for the rest: one call for a whole model.

    A leaf goes to Muon when it is 2-D (``muon_weight_dimension_numbers`` `None` or one
    `MuonDimensionNumbers`) or when its dimension numbers in a tree are not `None`; every
    other leaf (biases, norms' scales, and whatever
    the dimension numbers mark `None`: embeddings, heads) goes to `tf.adamw` with the
    ``adam_*`` arguments, ``eps``, ``mu_dtype`` and ``nesterov``. Muon's leaves get
    `scale_by_muon`, its shape ratio ($\sqrt{\max(1, n/m)}$ for fan-in $m$ and fan-out $n$,
    or $r\sqrt{\max(m, n)}$ with ``consistent_rms`` $r$, which matches AdamW's update RMS so
    that AdamW's learning rate and weight decay carry over), weight decay
    $\lambda\theta$ (masked by ``weight_decay_mask``) and $-\eta_t$.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule.
        ns_coeffs: Newton–Schulz coefficients, one ``(a, b, c)``, one row per iteration, or
            a preset name: ``"standard"`` or ``"dion"``.
        ns_steps: the number of Newton–Schulz iterations.
        beta: Muon's momentum decay.
        eps: Muon's norm floor, and AdamW's $\epsilon$.
        weight_decay: Muon's decoupled weight decay (times the learning rate).
        weight_decay_mask: a mask (or function of the params) for Muon's weight decay.
        mu_dtype: the momenta's dtype.
        nesterov: Nesterov momentum, for Muon and AdamW.
        adaptive: see `scale_by_muon`.
        preconditioning: see `orthogonalize_via_newton_schulz`.
        adam_b1: AdamW's $\beta_1$.
        adam_b2: AdamW's $\beta_2$.
        adam_eps_root: AdamW's $\epsilon_{root}$.
        adam_weight_decay: AdamW's weight decay.
        adam_learning_rate: AdamW's learning rate (default: ``learning_rate``).
        muon_weight_dimension_numbers: one `MuonDimensionNumbers` for every 2-D leaf, or a
            tree (or a function of the params giving one) of them for Muon's leaves and
            `None` for AdamW's; a node may stand for a whole subtree. optax's default,
            rows = axis 0 (fan-in), suits ``x @ W``; torch's `torch.nn.Linear` keeps
            ``(out, in)``: pass ``MuonDimensionNumbers(1, 0)`` so that the shape ratio
            reads fan-in and fan-out the right way round (the orthogonalisation itself is
            the same either way).
        consistent_rms: $r$ above, or `None` for the width-transfer ratio.

    Returns:
        A `GradientTransformation`; ``update`` needs ``params`` when a weight decay is used.

    Raises:
        ValueError: for an unknown preset, and as `scale_by_muon` and `tf.adamw` raise.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.muon(0.02, weight_decay=0.01)
        >>> params = {"w": torch.ones(4, 3), "b": torch.ones(3)}
        >>> state = tx.init(params)
        >>> u, state = tx.update({"w": torch.eye(4, 3), "b": torch.ones(3)}, state, params)
        >>> sorted(state.inner_states), u["b"]  # the bias took a (Nesterov) AdamW step
        (['adam', 'muon'], tensor([-0.0295, -0.0295, -0.0295]))

    References:
        Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
        https://kellerjordan.github.io/posts/muon/; Liu et al., Muon is Scalable for LLM
        Training, 2025 (``consistent_rms``). https://arxiv.org/abs/2502.16982

    torch.optim equivalent: ``torch.optim.Muon`` for the 2-D leaves (with ``AdamW`` for the
    rest) is `tf.scale_by_torch_muon`, which follows torch's arithmetic exactly.
    """
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _NS_PRESETS:
            raise ValueError(
                f"ns_coeffs: unknown preset {ns_coeffs!r}; use one of {sorted(_NS_PRESETS)}."
            )
        ns_coeffs = _NS_PRESETS[ns_coeffs]
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    dims = muon_weight_dimension_numbers

    def param_labels(params: Params) -> Any:
        leaves, spec = tree_flatten(params)
        if dims is None or isinstance(dims, MuonDimensionNumbers):
            labels = ["muon" if p is not None and p.dim() == 2 else "adam" for p in leaves]
        else:
            labels = ["adam" if d is None else "muon" for d in _leaf_dims(dims, params)]
        return tree_unflatten(spec, labels)

    muon_dims = MuonDimensionNumbers() if dims is None else dims  # one value: every matrix
    return partition(
        {
            "muon": chain(
                scale_by_muon(
                    ns_coeffs,
                    ns_steps,
                    beta,
                    eps,
                    mu_dtype,
                    nesterov=nesterov,
                    adaptive=adaptive,
                    preconditioning=preconditioning,
                    weight_dimension_numbers=muon_dims,
                ),
                _scale_by_shape(muon_dims, consistent_rms),
                add_decayed_weights(weight_decay, weight_decay_mask),
                scale_by_learning_rate(learning_rate),
            ),
            "adam": adamw(
                adam_learning_rate,
                b1=adam_b1,
                b2=adam_b2,
                eps=eps,
                eps_root=adam_eps_root,
                mu_dtype=mu_dtype,
                weight_decay=adam_weight_decay,
                nesterov=nesterov,
            ),
        },
        param_labels,
    )
