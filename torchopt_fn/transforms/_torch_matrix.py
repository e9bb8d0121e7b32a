"""torch.optim's matrix-shaped methods: Adafactor's factored second moment, Muon's orthogonalised
momentum (DESIGN.md §6).

Their maths depends on each leaf's shape (rows and columns), so it runs one leaf at a time,
in torch's order of operations, so that `from_torch(torch.optim.Adafactor)` and
`from_torch(torch.optim.Muon)` follow torch's trajectories to rounding error. Neither takes
complex parameters (torch raises `RuntimeError`; `UnsupportedInputError` is one).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    init_count,
    torch_names,
    value_at,
)
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import (
    UnsupportedInputError,
    check_in_range,
    check_non_negative,
    check_number,
    require_params,
)
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import next_count, tree_zeros_like, walked_count
from torchopt_fn.tree._ops import Absent, columns, map_leaves, scalar_shape

__all__ = [
    "ScaleByTorchAdafactorState",
    "ScaleByTorchMuonState",
    "newton_schulz",
    "scale_by_torch_adafactor",
    "scale_by_torch_muon",
]


def _refuse_complex(gs: list, name: str) -> None:
    if any(g.is_complex() for g in gs):
        raise UnsupportedInputError(f"{name} does not support complex parameters")


# --------------------------------------------------------------------------- Adafactor


def _row_shape(shape: torch.Size) -> tuple[int, ...] | None:
    return (*shape[:-1], 1) if len(shape) > 1 else None


def _col_shape(shape: torch.Size) -> tuple[int, ...] | None:
    return (*shape[:-2], 1, shape[-1]) if len(shape) > 1 else None


def _variance_shape(shape: torch.Size) -> tuple[int, ...] | None:
    return tuple(shape) if len(shape) <= 1 else None


class ScaleByTorchAdafactorState(NamedTuple):
    """State of `scale_by_torch_adafactor`: torch's ``step``, ``row_var``, ``col_var``, ``variance``
    (the field ``count`` is ``step``).

    A leaf of two or more dimensions has the factored statistics ``row_var`` (its last axis
    reduced to 1) and ``col_var`` (its second-to-last), and `Absent` for ``variance``; any
    other leaf the full ``variance`` and `Absent` for the factors, as torch keeps them.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> params = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
        >>> state = tf.scale_by_torch_adafactor().init(params)
        >>> state.row_var["w"].shape, state.col_var["w"].shape, state.variance["b"].shape
        (torch.Size([4, 1]), torch.Size([1, 3]), torch.Size([3]))
    """

    count: Any
    row_var: Any
    col_var: Any
    variance: Any

    torch_keys = torch_names(count="step")


@record_hyperparams
def scale_by_torch_adafactor(
    learning_rate: ScalarOrSchedule = 1e-2,
    beta2_decay: Scalar = -0.8,
    eps1: float | None = None,
    eps2: Scalar = 1e-3,
    d: Scalar = 1.0,
    weight_decay: Scalar = 0.0,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""Adafactor as `torch.optim.Adafactor` computes it; the output is the final update.

    At step $t$, with $\hat\beta_{2,t} = 1 - t^{c}$ ($c$ the ``beta2_decay``) and
    $\rho_t = \min(\mathrm{lr}, 1/\sqrt t)$: a leaf of two or more dimensions keeps the row
    and column means of $g_t^2$, $R_t = \mathrm{lerp}(R_{t-1}, \overline{g_t^2}^{\,\text{cols}},
    t^{c})$ and $C_t$ likewise, and estimates $V_t = R_t C_t / \overline{R_t}$ (the mean over
    rows clamped to $\epsilon_1$); another leaf keeps $V_t = \mathrm{lerp}(V_{t-1}, g_t^2,
    t^{c})$. Then $U_t = g_t / \sqrt{\max(V_t, \epsilon_1^2)}$, and with
    $\alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t$ and
    $\delta_t = \max(1, \mathrm{RMS}(U_t)/d)$ the update is
    $u_t = -\mathrm{lr}\,\lambda\,\theta_{t-1} - \alpha_t U_t / \delta_t$ ($\lambda$ the
    ``weight_decay``). optax's `scale_by_factored_rms` differs (its decay rate, no
    weight-decay or RMS-clipping inside): this one is for `from_torch`.

    Args:
        learning_rate: lr, a float, 0-d tensor or schedule (of the count before the step).
        beta2_decay: $c \le 0$; the second moment's weight of the new gradient is $t^{c}$.
        eps1: $\epsilon_1 \ge 0$, the floor of the variance estimate; `None` for the machine
            epsilon of each leaf's dtype, as torch.
        eps2: $\epsilon_2 \ge 0$, the floor of a parameter's RMS in the step size.
        d: the clipping threshold $d \ge 1$ of the update's RMS.
        weight_decay: $\lambda \ge 0$, decoupled, times lr.
        per_leaf_count: count each leaf's steps, as torch.optim does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchAdafactorState`; ``update`` needs
        ``params``.

    Raises:
        ValueError: for a value torch refuses (``beta2_decay > 0``, ``d < 1``, a negative
            ``eps1``, ``eps2`` or ``weight_decay``), or (`UnsupportedInputError`) complex
            updates.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_adafactor(learning_rate=0.1)
        >>> p = {"w": torch.ones(2, 2)}
        >>> u, _ = tx.update({"w": torch.ones(2, 2)}, tx.init(p), p)
        >>> u["w"]
        tensor([[-0.1000, -0.1000],
                [-0.1000, -0.1000]])

    References:
        Shazeer and Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost,
        ICML 2018. https://arxiv.org/abs/1804.04235

    torch.optim equivalent: ``torch.optim.Adafactor(lr, beta2_decay, (eps1, eps2), d,
    weight_decay)`` is ``scale_by_torch_adafactor(lr, beta2_decay, eps1, eps2, d,
    weight_decay)``.
    """
    check_non_negative("learning_rate", learning_rate)
    check_in_range("beta2_decay", beta2_decay, -math.inf, 0.0, high_inclusive=True)
    if eps1 is not None:
        check_non_negative("eps1", eps1)
    check_non_negative("eps2", eps2)
    check_in_range("d", d, 1.0, math.inf)
    check_non_negative("weight_decay", weight_decay)

    def init_fn(params):
        def zeros(shape_of):
            def make(p: torch.Tensor) -> torch.Tensor | Absent:
                shape = shape_of(p.shape)
                return Absent() if shape is None else p.new_zeros(shape)

            return tree_map(make, params)

        return ScaleByTorchAdafactorState(
            count=init_count(params, per_leaf=per_leaf_count),
            row_var=zeros(_row_shape),
            col_var=zeros(_col_shape),
            variance=zeros(_variance_shape),
        )

    def leaf(g, p, row, col, variance, t, rate):
        """One leaf's update and new statistics, in torch's order of operations."""
        if g.numel() == 0:  # nothing to average (torch's would be 0/0)
            return torch.zeros_like(g), row, col, variance
        dtype = p.dtype
        t = t.to(device=p.device, dtype=dtype)
        rate = torch.as_tensor(rate, dtype=dtype, device=p.device)
        weight = torch.pow(t, beta2_decay)  # 1 - beta2_t
        rho = torch.minimum(rate, torch.rsqrt(t))
        rms = torch.linalg.vector_norm(p) / math.sqrt(max(p.numel(), 1))  # 0 if empty
        alpha = torch.clamp(rms, min=eps2) * rho
        floor = torch.finfo(dtype).eps if eps1 is None else eps1
        if g.dim() > 1:
            row_mean = torch.linalg.vector_norm(g, dim=-1, keepdim=True).square() / g.size(-1)
            col_mean = torch.linalg.vector_norm(g, dim=-2, keepdim=True).square() / g.size(-2)
            row = torch.lerp(row, row_mean, weight)
            col = torch.lerp(col, col_mean, weight)
            estimate = (row @ col) / row.mean(dim=-2, keepdim=True).clamp(min=floor)
        else:
            variance = torch.lerp(variance, g * g, weight)
            estimate = variance
        scaled = estimate.clamp(min=floor * floor).rsqrt() * g
        rms_update = torch.linalg.vector_norm(scaled) / (math.sqrt(max(scaled.numel(), 1)) * d)
        out = scaled * (-alpha / torch.clamp(rms_update, min=1.0))
        if isinstance(weight_decay, torch.Tensor) or weight_decay != 0:
            out = out - (rate * weight_decay) * p
        return out, row, col, variance

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_torch_adafactor")

        def step(ops, gs, ps, rows, cols, variances, count):
            _refuse_complex(gs, "Adafactor")
            rates = value_at(learning_rate, count)
            count = next_count(count)
            counts = count if isinstance(count, list) else [count] * len(gs)
            rates = rates if isinstance(rates, list) else [rates] * len(gs)
            results = [leaf(*args) for args in zip(gs, ps, rows, cols, variances, counts, rates)]
            out, rows, cols, variances = columns(results, 4)
            return out, rows, cols, variances, count

        out, row_var, col_var, variance, count = map_leaves(
            step,
            updates,
            params,
            state.row_var,
            state.col_var,
            state.variance,
            walked_count(state.count, per_leaf_count),
            keep=(None, 1, 2, 3, 4),
            shapes={1: _row_shape, 2: _col_shape, 3: _variance_shape, 4: scalar_shape},
            what="scale_by_torch_adafactor",
        )
        return out, ScaleByTorchAdafactorState(count, row_var, col_var, variance)

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- Muon


def newton_schulz(
    x: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    r"""The quintic Newton–Schulz iteration towards the orthogonal factor of a matrix.

    ``x`` is normalised to spectral norm at most 1 (by its Frobenius norm, at least ``eps``)
    and iterated ``steps`` times as $Y \leftarrow aY + (bA + cA^2)Y$ with $A = YY^\top$, on
    the wider orientation, in ``dtype`` (bfloat16, exactly as torch.optim.Muon does): the
    result is close to $UV^\top$ for $x = U\Sigma V^\top$ (singular values land near 1, not
    on it).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> y = tf.newton_schulz(torch.eye(2) * 3.0, (3.4445, -4.7750, 2.0315), 5, 1e-7)
        >>> y.dtype, y.shape
        (torch.bfloat16, torch.Size([2, 2]))
    """
    a, b, c = coefficients
    y = x.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        y = y.T
    y = y / y.norm().clamp(min=eps)
    for _ in range(steps):
        gram = y @ y.T
        y = torch.addmm(y, torch.addmm(gram, gram, gram, beta=b, alpha=c), y, beta=a)
    return y.T if tall else y


def _lr_ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    """torch's learning-rate adjustment for a ``(rows, cols)`` matrix."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))  # "match_rms_adamw"


class ScaleByTorchMuonState(NamedTuple):
    """State of `scale_by_torch_muon`: the momentum buffer, torch's ``momentum_buffer``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_muon(0.02).init({"w": torch.zeros(1, 2)})
        ScaleByTorchMuonState(momentum_buffer={'w': tensor([[0., 0.]])})
    """

    momentum_buffer: Any


@record_hyperparams
def scale_by_torch_muon(
    learning_rate: Scalar = 1e-3,
    weight_decay: Scalar = 0.1,
    momentum: Scalar = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> GradientTransformation:
    r"""Muon as `torch.optim.Muon` computes it: orthogonalised momentum; the final update.

    $b_t = \mathrm{lerp}(b_{t-1}, g_t, 1-\mu)$; the direction is
    $O_t = \mathrm{NS}(\mathrm{lerp}(g_t, b_t, \mu))$ (Nesterov) or $\mathrm{NS}(b_t)$, with
    NS the `newton_schulz` iteration, and the update is
    $u_t = -\mathrm{lr}\,\lambda\,\theta_{t-1} - \mathrm{lr}\, r\, O_t$ with torch's shape ratio
    $r = \sqrt{\max(1, m/n)}$ (``adjust_lr_fn=None`` or ``"original"``) or
    $0.2\sqrt{\max(m, n)}$ (``"match_rms_adamw"``) for an $m \times n$ matrix. Like torch, a
    tensor ``learning_rate`` makes $\mathrm{lr}\,r$ and $1 - \mathrm{lr}\,\lambda$ tensors of its
    dtype. Every leaf must be a matrix.

    Args:
        learning_rate: lr, a float or a 0-d tensor (torch's Muon keeps no step count, so no
            schedule: step an lr scheduler on the `Optimizer` instead).
        weight_decay: $\lambda \ge 0$, decoupled, times lr.
        momentum: $\mu \ge 0$.
        nesterov: use the Nesterov look-ahead.
        ns_coefficients: the iteration's $(a, b, c)$.
        eps: the floor of the norm the input is divided by.
        ns_steps: the number of iterations, below 100.
        adjust_lr_fn: `None`, ``"original"`` or ``"match_rms_adamw"``.
        ns_dtype: the dtype of the iteration: torch's bfloat16 (fast on accelerators), or
            float32/float64 for an orthogonalisation closer to exact.

    Returns:
        A `GradientTransformation` with state `ScaleByTorchMuonState`; ``update`` needs
        ``params``.

    Raises:
        ValueError: for a negative ``learning_rate``, ``weight_decay`` or ``momentum``, an
            unknown ``adjust_lr_fn``, 100 or more ``ns_steps``, or (at ``init``) a leaf that is
            not a matrix; `UnsupportedInputError` for complex updates.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_muon(0.1, weight_decay=0.0)
        >>> p = {"w": torch.zeros(2, 2)}
        >>> u, _ = tx.update({"w": torch.eye(2)}, tx.init(p), p)
        >>> u["w"].diagonal().lt(-0.05).all().item()
        True

    References:
        Jordan et al., Muon: An optimizer for hidden layers in neural networks, 2024.
        https://kellerjordan.github.io/posts/muon/

    torch.optim equivalent: ``torch.optim.Muon(lr, weight_decay, momentum, nesterov,
    ns_coefficients, eps, ns_steps, adjust_lr_fn)`` is ``scale_by_torch_muon`` with the same
    arguments.
    """
    check_non_negative("learning_rate", learning_rate)
    check_non_negative("weight_decay", weight_decay)
    check_non_negative("momentum", momentum)
    check_number("eps", eps)
    if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
        raise ValueError(f"Adjust learning rate function {adjust_lr_fn} is not supported")
    if not 0 < ns_steps < 100:
        raise ValueError(f"ns_steps must be in [1, 100), got {ns_steps}.")
    if len(ns_coefficients) != 3:
        raise ValueError(f"ns_coefficients must be three numbers, got {ns_coefficients!r}.")
    # torch's arithmetic on the learning rate: in its own dtype where it is a tensor.
    keep = 1 - learning_rate * weight_decay

    def init_fn(params):
        def check(p: torch.Tensor) -> torch.Tensor:
            if p.dim() != 2:
                raise ValueError(
                    "Muon only supports 2D parameters whereas we found a parameter with size: "
                    f"{p.size()}"
                )
            return p

        tree_map(check, params)
        return ScaleByTorchMuonState(momentum_buffer=tree_zeros_like(params))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_torch_muon")

        def step(ops, gs, bufs, ps):
            _refuse_complex(gs, "Muon")
            bufs = ops.lerp(bufs, gs, 1 - momentum)
            directions = ops.lerp(gs, bufs, momentum) if nesterov else bufs
            out = []
            for x, g, p in zip(directions, gs, ps):
                orthogonal = newton_schulz(x, ns_coefficients, ns_steps, eps, ns_dtype)
                orthogonal = orthogonal.to(g.dtype)
                step_size = learning_rate * _lr_ratio(g.shape, adjust_lr_fn)
                out.append((p * keep - p) - orthogonal * step_size)
            return out, bufs

        out, bufs = map_leaves(
            step,
            updates,
            state.momentum_buffer,
            params,
            keep=(None, 0),
            what="scale_by_torch_muon",
        )
        return out, ScaleByTorchMuonState(momentum_buffer=bufs)

    return GradientTransformation(init_fn, update_fn)
