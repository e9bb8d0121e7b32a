"""SOAP: Adam in the eigenbasis of Shampoo's Kronecker factors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    Params,
    Scalar,
    ScalarOrSchedule,
    params_device,
    value_at,
)
from torchopt_fn._branch import branch, concrete
from torchopt_fn._combine import chain
from torchopt_fn._gathered import gathered
from torchopt_fn._record import record_hyperparams
from torchopt_fn._scalar import step_scalar
from torchopt_fn._validate import check_in_range, check_non_negative
from torchopt_fn.contrib._shampoo import (
    along_axes,
    bias,
    check_int,
    factor_shapes,
    factored_axes,
    gram,
    init_factors,
    leaf_groups,
    member_norms,
    stack,
    unstack,
    unstack_lists,
)
from torchopt_fn.transforms._adding import add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._ops import compute_dtype, map_leaves

__all__ = ["SOAPState", "scale_by_soap", "soap"]


def _eigenbasis(s: torch.Tensor) -> torch.Tensor:
    """The eigenvectors of each stacked symmetric ``s``, by decreasing eigenvalue."""
    # Contiguous, as the state started: LAPACK's column-major layout would change the
    # strides a compiled step was specialised on.
    return torch.linalg.eigh(s).eigenvectors.flip(-1).contiguous()


def _power_step(s: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""One QR power iteration $Q' = \mathrm{qr}(S Q)$ from the basis sorted by its estimated
    eigenvalues $\mathrm{diag}(Q^\top S Q)$ (decreasing), and that order of the columns."""
    estimates = (q * (s @ q)).sum(dim=-2)
    order = torch.argsort(estimates, dim=-1, descending=True, stable=True)
    q = q.gather(-1, order.unsqueeze(-2).expand(q.shape))
    return torch.linalg.qr(s @ q).Q.contiguous(), order


def _kept(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The basis ``q`` unchanged, and the identity order of its columns."""
    n, d = q.shape[0], q.shape[-1]
    return q, torch.arange(d, device=q.device).expand(n, d)


def _permuted(nu: torch.Tensor, order: torch.Tensor, axis: int) -> torch.Tensor:
    """The stacked ``nu`` permuted along ``axis`` of the leaf (its axis ``axis + 1``)."""
    view = [1] * nu.dim()
    view[0], view[axis + 1] = order.shape[0], order.shape[1]
    return nu.gather(axis + 1, order.reshape(view).expand(nu.shape))


def _eigenbases(fss: list[list[torch.Tensor]], _: Any) -> list[list[torch.Tensor]]:
    return [[_eigenbasis(f) for f in fs] for fs in fss]


def _power_steps(fss: list[list[torch.Tensor]], qss: list[list[torch.Tensor]]) -> list:
    return [[_power_step(f, q) for f, q in zip(fs, qs)] for fs, qs in zip(fss, qss)]


def _kept_bases(_: Any, qss: list[list[torch.Tensor]]) -> list:
    return [[_kept(q) for q in qs] for qs in qss]


class SOAPState(NamedTuple):
    """State of `scale_by_soap`.

    ``mu`` is the moving average of the gradients (in the parameters' basis), ``nu`` that of
    the squared gradients *in the eigenbasis*, ``factors`` per leaf the list of Shampoo's
    Kronecker factors ($L$, $R$, ... one per factored axis) and ``bases`` their eigenbases.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> state = tf.contrib.scale_by_soap().init({"w": torch.zeros(4, 3), "b": torch.zeros(3)})
        >>> [q.shape for q in state.bases["w"]], state.bases["b"]
        ([torch.Size([4, 4]), torch.Size([3, 3])], [])
    """

    count: torch.Tensor
    mu: Any
    nu: Any
    factors: Any
    bases: Any


@record_hyperparams
def scale_by_soap(
    b1: Scalar = 0.95,
    b2: Scalar = 0.95,
    shampoo_beta: Scalar | None = None,
    eps: Scalar = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
) -> GradientTransformation:
    r"""SOAP's direction (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's factors.

    Each axis $a$ of a leaf with at most ``max_precond_dim`` entries keeps a Kronecker factor
    $F^{(a)}_t = \beta_s F^{(a)}_{t-1} + (1 - \beta_s) G_{(a)} G_{(a)}^\top$ ($L$ and $R$ for a
    matrix; $\beta_s$ = ``shampoo_beta``, default $\beta_2$) and an orthonormal basis $Q_a$.
    With $\tilde X = X \times_a Q_a^\top$ (each axis rotated into its basis; $Q_L^\top X Q_R$
    for a matrix): $m_t = \beta_1 m_{t-1} + (1-\beta_1) G_t$,
    $v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde G_t^2$ and
    $u_t = \frac{\sqrt{1-\beta_2^k}}{1-\beta_1^k} \big(\tilde m_t / (\sqrt{v_t} + \epsilon)\big)
    \times_a Q_a$ (rotated back; $k = t - 1$). After the update the factors take $G_t$, and
    every ``precondition_frequency`` steps each basis takes one power iteration,
    $Q_a \leftarrow \mathrm{qr}(F^{(a)} Q_a)$, from its columns sorted by
    $\mathrm{diag}(Q_a^\top F^{(a)} Q_a)$ ($v$ permuted with them). The first step only
    builds the factors and their exact eigenbases (``eigh``); its update is 0.

    Axes longer than ``max_precond_dim`` keep the identity; so do vectors unless
    ``precondition_1d`` (and 0-d leaves): there SOAP is Adam. ``normalize_grads`` divides
    each leaf's direction by its RMS. Leaves of one shape and dtype are stacked: their
    statistics, ``eigh``, QR and products run batched. The first step's ``eigh`` and the
    refresh run only when due, eagerly and compiled (a ``torch.cond`` in the one graph of all
    steps, see `branch`); under `torch.func` transforms, or compiled with gradients flowing
    into the factors, they are computed every step and selected.

    As in the authors' code; here $m$ is kept in the parameters' basis (theirs is rotated
    with each new basis: the same values) and factors and bases are kept in at least float32
    (theirs always in float32; float64 stays float64 here). ``merge_dims`` and
    ``data_format`` are not offered.

    Args:
        b1: $\beta_1 \in [0, 1)$.
        b2: $\beta_2 \in [0, 1)$.
        shampoo_beta: $\beta_s \in [0, 1)$ of the factors (default: ``b2``).
        eps: $\epsilon \ge 0$, added to $\sqrt{v_t}$.
        precondition_frequency: refresh the bases every this many steps.
        max_precond_dim: axes longer than this keep the identity basis.
        precondition_1d: give vectors a factor too.
        normalize_grads: divide each leaf's direction by its root mean square.
        correct_bias: scale by Adam's bias correction $\sqrt{1-\beta_2^k}/(1-\beta_1^k)$.

    Returns:
        A `GradientTransformation` with state `SOAPState`.

    Raises:
        ValueError: for ``b1``, ``b2`` or ``shampoo_beta`` outside $[0, 1)$, a negative
            ``eps``, or ``precondition_frequency``/``max_precond_dim`` below 1.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_soap()
        >>> g = {"w": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
        >>> state = tx.init(g)
        >>> u, state = tx.update(g, state)  # builds the eigenbases
        >>> u["w"]
        tensor([[0., 0.],
                [0., 0.]])
        >>> u, state = tx.update(g, state)  # Adam's first step, in that basis
        >>> u["w"].diagonal(), u["w"].fliplr().diagonal().abs()
        (tensor([1.0000, 1.0000]), tensor([0., 0.]))

    References:
        Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, ICLR 2025.
        https://arxiv.org/abs/2409.11321
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    if shampoo_beta is not None:
        check_in_range("shampoo_beta", shampoo_beta, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_int("precondition_frequency", precondition_frequency, 1)
    check_int("max_precond_dim", max_precond_dim, 1)
    beta_s = b2 if shampoo_beta is None else shampoo_beta
    frequency = precondition_frequency

    def axes_of(shape: Sequence[int]) -> tuple[int, ...]:
        return factored_axes(shape, max_precond_dim, vectors=precondition_1d)

    def init_fn(params):
        return SOAPState(
            count=torch.zeros((), dtype=torch.int64, device=params_device(params)),
            mu=tree_map(torch.zeros_like, params),
            nu=tree_map(torch.zeros_like, params),
            factors=tree_map(lambda p: init_factors(p, axes_of(p.shape), False), params),
            bases=tree_map(lambda p: init_factors(p, axes_of(p.shape), True), params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        count = state.count
        first = count == 0
        refresh = (count % frequency == 0) & (count > 0)
        k = torch.clamp(count, min=1)  # Adam's step; the first update is not one
        scales: dict[torch.dtype, Any] = {}

        def scale(dtype: torch.dtype) -> Any:
            if not correct_bias:
                return 1.0
            if dtype not in scales:
                scales[dtype] = step_scalar(torch.sqrt(bias(b2, k, dtype)) / bias(b1, k, dtype))
            return scales[dtype]

        def step(ops, gs, mus, nus, factors, bases):
            n = len(gs)
            out, new_mu, new_nu = [None] * n, [None] * n, [None] * n
            new_factors, new_bases = [None] * n, [None] * n
            packs = []
            for idx in leaf_groups(gs):
                axes = axes_of(gs[idx[0]].shape)
                dtype = compute_dtype(gs[idx[0]].dtype)
                g = stack([gs[i] for i in idx], dtype)
                fs = [
                    beta_s * stack([factors[i][j] for i in idx]) + (1 - beta_s) * gram(g, a)
                    for j, a in enumerate(axes)
                ]
                qs = [stack([bases[i][j] for i in idx]) for j in range(len(axes))]
                mu = stack([mus[i] for i in idx], dtype)
                nu = stack([nus[i] for i in idx], dtype)
                unstack_lists(fs, idx, new_factors)
                packs.append((idx, axes, dtype, g, fs, qs, mu, nu))

            # The decompositions are lazy branches (run only when due, compiled too) over the
            # factors and bases alone; the moments are selected outside them.
            fss, qss = [pack[4] for pack in packs], [pack[5] for pack in packs]
            qss = branch(first, _eigenbases, lambda _, qss: qss, fss, qss, lazy=True)

            def start() -> list:
                return [(torch.zeros_like(g), mu, nu) for _, _, _, g, _, _, mu, nu in packs]

            def adam() -> list:
                moved = []
                for (_, axes, dtype, g, _, _, mu, nu), qs in zip(packs, qss):
                    mu = b1 * mu + (1 - b1) * g
                    rotated = along_axes(g, qs, axes)
                    nu = b2 * nu + (1 - b2) * rotated * rotated
                    d = along_axes(mu, qs, axes) / (torch.sqrt(nu) + eps)
                    d = along_axes(d, qs, axes, transpose=True)
                    if normalize_grads:
                        rms = member_norms(d) / math.sqrt(max(d[0].numel(), 1))
                        d = d / (1e-30 + rms)
                    moved.append((d * scale(dtype), mu, nu))
                return moved

            renewed = branch(refresh, _power_steps, _kept_bases, fss, qss, lazy=True)
            due = concrete(refresh) is not False  # traced: the identity order when not due
            for (idx, axes, *_), (d, mu, nu), steps in zip(
                packs, branch(first, start, adam), renewed
            ):
                if due:
                    for (_, order), a in zip(steps, axes):
                        nu = _permuted(nu, order, a)
                unstack(d, idx, out)
                unstack(mu, idx, new_mu)
                unstack(nu, idx, new_nu)
                unstack_lists([q for q, _ in steps], idx, new_bases)
            return out, new_mu, new_nu, new_factors, new_bases

        def statistics(shape: Sequence[int]) -> list[tuple[int, int]]:
            return factor_shapes(shape, axes_of(shape))

        out, mu, nu, factors, bases = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            state.factors,
            state.bases,
            keep=(None, 0, 1, 2, 3),
            shapes={2: statistics, 3: statistics},
            what="scale_by_soap",
        )
        return out, SOAPState(count + 1, mu, nu, factors, bases)

    return gathered(GradientTransformation(init_fn, update_fn))


@record_hyperparams
def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: Scalar = 0.95,
    b2: Scalar = 0.95,
    shampoo_beta: Scalar | None = None,
    eps: Scalar = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    precondition_1d: bool = False,
    normalize_grads: bool = False,
    correct_bias: bool = True,
    *,
    mask: Any | Callable[[Params], Any] | None = None,
) -> GradientTransformation:
    r"""SOAP: `scale_by_soap`, decoupled weight decay, then ``-learning_rate``.

    $u_t = -\eta_t (d_t + \lambda \theta_t)$, with $d_t$ `scale_by_soap`'s direction, and
    $u_1 = 0$: as in the authors' code the first step only builds the preconditioner (a decay
    there would move the parameters, and Adam's first, sign-like step would then amplify the
    gradient's change in directions the factors have not seen). The defaults are the
    authors'. Their code decays the already-stepped parameters,
    $\theta_{t+1} = (\theta_t - \eta_t d_t)(1 - \eta_t\lambda)$; here the decay is AdamW's,
    of $\theta_t$: they differ by $\eta_t^2 \lambda d_t$ per step.

    Args:
        learning_rate: $\eta_t$: a float, a 0-d tensor or a schedule of the step count.
        weight_decay: $\lambda \ge 0$, decoupled (multiplied by the learning rate): a float, a
            0-d tensor or a schedule of the step count.
        mask: which leaves the weight decay applies to (a tree of bools, or a function of
            the params giving one), as in `tf.adamw`.
        **others: as `scale_by_soap`.

    Returns:
        ``chain(scale_by_soap(...), add_decayed_weights(...),
        scale_by_learning_rate(learning_rate))``, the decay 0 on the first step.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.soap(0.1, weight_decay=0.0)
        >>> params = {"w": torch.ones(2, 2)}
        >>> state = tx.init(params)
        >>> g = {"w": torch.tensor([[3.0, 0.0], [0.0, 4.0]])}
        >>> for _ in range(2):
        ...     u, state = tx.update(g, state, params)
        >>> u["w"].diagonal()
        tensor([-0.1000, -0.1000])

    References:
        Vyas et al., SOAP: Improving and Stabilizing Shampoo using Adam, ICLR 2025.
        https://arxiv.org/abs/2409.11321
    """
    check_non_negative("weight_decay", weight_decay)

    def decay_after_the_first_step(count: torch.Tensor) -> torch.Tensor:
        value = value_at(weight_decay, count)
        if not isinstance(value, torch.Tensor):  # float64: exact for float64 params
            value = torch.tensor(value, dtype=torch.float64, device=count.device)
        return torch.where(count == 0, torch.zeros_like(value), value)

    return chain(
        scale_by_soap(
            b1,
            b2,
            shampoo_beta,
            eps,
            precondition_frequency,
            max_precond_dim,
            precondition_1d,
            normalize_grads,
            correct_bias,
        ),
        add_decayed_weights(decay_after_the_first_step, mask),
        scale_by_learning_rate(learning_rate),
    )
