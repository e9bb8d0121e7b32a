"""L-BFGS's preconditioner: `scale_by_lbfgs` (optax's names, arguments and state)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._gathered import gathered
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import require_params
from torchopt_fn.tree._flatten import tree_flatten, tree_map, tree_unflatten
from torchopt_fn.tree._math import real_vdot, tree_float_dtype
from torchopt_fn.tree._ops import check_like

__all__ = ["ScaleByLBFGSState", "scale_by_lbfgs"]

Tree = Any


class ScaleByLBFGSState(NamedTuple):
    """State of `scale_by_lbfgs`.

    Attributes:
        count: updates so far.
        params: the params at the last update.
        updates: the gradient at the last update.
        diff_params_memory: the last ``memory_size`` differences of params $s_k$, stacked
            on a leading axis (a ring buffer).
        diff_updates_memory: the matching differences of gradients $y_k$.
        weights_memory: $\\rho_k = 1 / \\langle y_k, s_k\\rangle$ (0 where undefined).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> state = tf.scale_by_lbfgs(memory_size=3).init({"w": torch.zeros(2)})
        >>> state.diff_params_memory["w"].shape
        torch.Size([3, 2])
    """

    count: torch.Tensor
    params: Any
    updates: Any
    diff_params_memory: Any
    diff_updates_memory: Any
    weights_memory: torch.Tensor


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x == 0.0, torch.ones_like(x), x)


def _add_scale(a: list, s: torch.Tensor, b: list) -> list:
    return [(x + s * y).to(x.dtype) for x, y in zip(a, b)]


def _precondition(
    g: list[torch.Tensor],
    dps: list[torch.Tensor],
    dus: list[torch.Tensor],
    rhos: torch.Tensor,
    identity_scale: torch.Tensor,
    memory_idx: torch.Tensor,
) -> list[torch.Tensor]:
    """The two-loop recursion (Nocedal & Wright, Algorithm 7.4) over the ring buffer.

    Oldest to newest is ``memory_idx, memory_idx + 1, ...`` (mod m); entries never written
    have $\\rho = 0$ and change nothing. A loop of fixed length m: no data-dependent control
    flow, so it compiles and vmaps as it is.
    """
    m = rhos.shape[0]
    # Oldest first: gathered once, so the loops below index with Python ints.
    order = (memory_idx + torch.arange(m, device=rhos.device)) % m
    dps = [x.index_select(0, order) for x in dps]
    dus = [x.index_select(0, order) for x in dus]
    rhos = rhos.index_select(0, order)
    vec, alphas = g, []
    for j in reversed(range(m)):
        alpha = rhos[j] * real_vdot([x[j] for x in dps], vec)
        vec = _add_scale(vec, -alpha, [x[j] for x in dus])
        alphas.append(alpha)
    vec = [(identity_scale * x).to(x.dtype) for x in vec]
    for j, alpha in zip(range(m), reversed(alphas)):
        beta = rhos[j] * real_vdot([x[j] for x in dus], vec)
        vec = _add_scale(vec, alpha - beta, [x[j] for x in dps])
    return vec


@record_hyperparams
def scale_by_lbfgs(
    memory_size: int = 10, scale_init_precond: bool = True
) -> GradientTransformation:
    r"""Precondition the gradient by L-BFGS's inverse-Hessian estimate $H_k g_k$.

    The estimate comes from the last ``memory_size`` pairs $s_k = x_{k+1} - x_k$,
    $y_k = g_{k+1} - g_k$ (the two-loop recursion), started from $\gamma I$ with
    $\gamma = \langle y, s\rangle / \|y\|^2$ (or 1). On the first step, where there is no
    pair yet, $\gamma = \min(1, 1/\|g\|)$ (optax's heuristic: a first step inside the unit
    ball). The output is a descent direction *to be negated and scaled*: chain it with a
    line search, as `lbfgs` does. Needs ``params``. Leaves with a `None` gradient take no
    part (as if absent) and keep their state.

    Args:
        memory_size: how many pairs to keep ($m \ge 1$).
        scale_init_precond: start from $\gamma I$ rather than $I$.

    Returns:
        A `GradientTransformation` with state `ScaleByLBFGSState`.

    Raises:
        ValueError: if ``memory_size`` is below 1.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_lbfgs()
        >>> params = {"w": torch.tensor([1.0, 2.0])}
        >>> u, state = tx.update({"w": torch.tensor([3.0, 4.0])}, tx.init(params), params)
        >>> u["w"]  # the first step: the gradient over its norm
        tensor([0.6000, 0.8000])

    References:
        Nocedal, Updating quasi-Newton matrices with limited storage, 1980.
        Liu & Nocedal, On the limited memory BFGS method for large scale optimization, 1989.
    """
    if memory_size < 1:
        raise ValueError(f"scale_by_lbfgs: memory_size must be >= 1, got {memory_size}.")

    def init_fn(params):
        weights_dtype = tree_float_dtype(params)
        if weights_dtype.is_complex:
            weights_dtype = torch.empty((), dtype=weights_dtype).real.dtype
        leaves = [x for x in tree_flatten(params)[0] if x is not None]
        device = leaves[0].device if leaves else torch.device("cpu")
        stacked = lambda: tree_map(  # noqa: E731
            lambda x: torch.zeros((memory_size, *x.shape), dtype=x.dtype, device=x.device), params
        )
        return ScaleByLBFGSState(
            count=torch.zeros((), dtype=torch.int64, device=device),
            params=tree_map(torch.zeros_like, params),
            updates=tree_map(torch.zeros_like, params),
            diff_params_memory=stacked(),
            diff_updates_memory=stacked(),
            weights_memory=torch.zeros(memory_size, dtype=weights_dtype, device=device),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_lbfgs")
        check_like(updates, params, "scale_by_lbfgs")
        leaves, spec = tree_flatten(updates)
        live = [i for i, u in enumerate(leaves) if u is not None]

        def pick(tree: Tree) -> list:
            flat = spec.flatten_up_to(tree)
            return [flat[i] for i in live]

        def rebuild(tree: Tree, new: list) -> Tree:
            flat = list(spec.flatten_up_to(tree))  # leaves without a gradient keep theirs
            for i, x in zip(live, new):
                flat[i] = x
            return tree_unflatten(spec, flat)

        if not live:
            return updates, state
        g, p = [leaves[i] for i in live], pick(params)
        old_p, old_g = pick(state.params), pick(state.updates)
        dps_mem, dus_mem = pick(state.diff_params_memory), pick(state.diff_updates_memory)
        count = state.count
        memory_idx = count % memory_size
        prev_idx = (count - 1) % memory_size
        started = count > 0

        diff_params = [x - y for x, y in zip(p, old_p)]
        diff_updates = [x - y for x, y in zip(g, old_g)]
        curvature = real_vdot(diff_updates, diff_params)
        # Safe divisions: where's unused branch must not be inf (its gradient would be NaN).
        weight = torch.where(curvature == 0.0, 0.0, 1.0 / _nonzero(curvature))
        diff_params = [torch.where(started, x, torch.zeros_like(x)) for x in diff_params]
        diff_updates = [torch.where(started, x, torch.zeros_like(x)) for x in diff_updates]
        weight = torch.where(started, weight, torch.zeros_like(weight))

        at = prev_idx.reshape(1)
        dps_mem = [m.index_copy(0, at, d.unsqueeze(0)) for m, d in zip(dps_mem, diff_params)]
        dus_mem = [m.index_copy(0, at, d.unsqueeze(0)) for m, d in zip(dus_mem, diff_updates)]
        weights = state.weights_memory.index_copy(
            0, at, weight.to(state.weights_memory.dtype).reshape(1)
        )

        if scale_init_precond:
            numerator = real_vdot(diff_updates, diff_params)
            denominator = real_vdot(diff_updates, diff_updates)
            identity_scale = torch.where(denominator > 0.0, numerator / _nonzero(denominator), 1.0)
            update_norm = torch.sqrt(real_vdot([x.detach() for x in g], [x.detach() for x in g]))
            capped_inv_norm = torch.clamp(1.0 / update_norm, max=1.0)
            identity_scale = torch.where(started, identity_scale, capped_inv_norm)
        else:
            identity_scale = torch.ones((), dtype=weights.dtype, device=weights.device)
        direction = _precondition(g, dps_mem, dus_mem, weights, identity_scale, memory_idx)
        new_state = ScaleByLBFGSState(
            count=count + 1,
            # Copies: the caller may update its params (and gradients) in place.
            params=rebuild(state.params, [x.clone() for x in p]),
            updates=rebuild(state.updates, [x.clone() for x in g]),
            diff_params_memory=rebuild(state.diff_params_memory, dps_mem),
            diff_updates_memory=rebuild(state.diff_updates_memory, dus_mem),
            weights_memory=weights,
        )
        out = rebuild(updates, direction)
        return out, new_state

    return gathered(GradientTransformation(init_fn, update_fn))
