"""torch.optim.LBFGS's algorithm, run by the `Optimizer` adapter for ``from_torch("LBFGS")``.

torch's L-BFGS is closure-driven: one ``step(closure)`` runs up to ``max_iter`` iterations,
each evaluating the closure (several times with the strong-Wolfe line search), on all the
parameters flattened into one vector. That is not a transformation of one gradient, so it
is not a chain here: this module is the same arithmetic, in the same order, so that the
adapter's trajectory equals torch's to the last bit in float64 and its state (kept under
torch's keys, on the first parameter) moves between the two. The functional, optax-style
L-BFGS is `lbfgs` (``scale_by_lbfgs`` with a zoom line search).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LBFGS_KEYS", "check_lbfgs_state", "lbfgs_step", "loaded_lbfgs_state"]

# What torch keeps, all on the group's first parameter.
LBFGS_KEYS = frozenset(
    {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
     "prev_flat_grad", "prev_loss", "al"}
)  # fmt: skip
_LISTS = frozenset({"old_dirs", "old_stps", "ro", "al"})


class _Flat:
    """The parameters as one vector: gradients gathered, steps scattered (complex as real)."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params

    def grad(self) -> torch.Tensor:
        views = []
        for p in self.params:
            if p.grad is None:
                view = p.new(p.numel()).zero_()
            elif p.grad.is_sparse:
                view = p.grad.to_dense().view(-1)
            else:
                view = p.grad.view(-1)
            views.append(torch.view_as_real(view).view(-1) if torch.is_complex(view) else view)
        return torch.cat(views, 0)

    def add_(self, step_size: Any, direction: torch.Tensor) -> None:
        offset = 0
        for p in self.params:
            real = torch.view_as_real(p) if torch.is_complex(p) else p
            n = real.numel()
            real.add_(direction[offset : offset + n].view_as(real), alpha=step_size)
            offset += n

    def copy(self) -> list[torch.Tensor]:
        return [p.clone(memory_format=torch.contiguous_format) for p in self.params]

    def restore(self, values: list[torch.Tensor]) -> None:
        for p, v in zip(self.params, values, strict=True):
            p.copy_(v)


def _cubic_minimum(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic interpolating (x1, f1, g1) and (x2, f2, g2), in bounds."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square < 0:
        return (lo + hi) / 2.0
    d2 = d2_square.sqrt()
    if x1 <= x2:
        at = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        at = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(at, lo), hi)


def _strong_wolfe(evaluate, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """torch's strong-Wolfe line search: bracket, then zoom by cubic interpolation.

    Returns the value, gradient and step found, and the number of evaluations.
    """
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = evaluate(x, t, d)
    evals, ls_iter = 1, 0
    gtd_new = g_new.dot(d)
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    # Bracketing: grow the step until an interval holds a point satisfying the conditions.
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        grown = _cubic_minimum(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(t + 0.01 * (t - t_prev), t * 10)
        )
        t_prev, t = t, grown
        f_prev, g_prev = f_new, g_new.clone(memory_format=torch.contiguous_format)
        gtd_prev = gtd_new
        f_new, g_new = evaluate(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]
    # Zoom: shrink the bracket until the conditions hold or it is too small.
    insufficient_progress = False
    low, high = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_minimum(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )
        # Keep away from the bracket's ends (More & Thuente's safeguard).
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insufficient_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        f_new, g_new = evaluate(x, t, d)
        evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low]:
            bracket[high], bracket_f[high] = t, f_new
            bracket_g[high] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[high] = gtd_new
            low, high = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high] - bracket[low]) >= 0:
                bracket[high], bracket_f[high] = bracket[low], bracket_f[low]
                bracket_g[high], bracket_gtd[high] = bracket_g[low], bracket_gtd[low]
            bracket[low], bracket_f[low] = t, f_new
            bracket_g[low] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[low] = gtd_new
    return bracket_f[low], bracket_g[low], bracket[low], evals


def _direction(state: dict[str, Any], g: torch.Tensor, history_size: int) -> torch.Tensor:
    """Update the curvature pairs with the last step, then the two-loop recursion's -H g."""
    y = g.sub(state["prev_flat_grad"])
    s = state["d"].mul(state["t"])
    ys = y.dot(s)
    if ys > 1e-10:  # keep the pair only where the curvature is positive
        if len(state["old_dirs"]) == history_size:
            for key in ("old_dirs", "old_stps", "ro"):
                state[key].pop(0)
        state["old_dirs"].append(y)
        state["old_stps"].append(s)
        state["ro"].append(1.0 / ys)
        state["H_diag"] = ys / y.dot(y)
    dirs, stps, ro = state["old_dirs"], state["old_stps"], state["ro"]
    if "al" not in state:
        state["al"] = [None] * history_size
    al = state["al"]
    q = g.neg()
    for i in range(len(dirs) - 1, -1, -1):
        al[i] = stps[i].dot(q) * ro[i]
        q.add_(dirs[i], alpha=-al[i])
    r = torch.mul(q, state["H_diag"])
    for i in range(len(dirs)):
        be_i = dirs[i].dot(r) * ro[i]
        r.add_(stps[i], alpha=al[i] - be_i)
    return r


@torch.no_grad()
def lbfgs_step(
    closure: Callable[[], Any],
    params: list[torch.Tensor],
    state: dict[str, Any],
    group: dict[str, Any],
) -> Any:
    """One ``torch.optim.LBFGS.step(closure)``: updates ``params`` and ``state`` in place."""
    closure = torch.enable_grad()(closure)
    lr = group["lr"].item() if isinstance(group["lr"], torch.Tensor) else group["lr"]
    max_iter, max_eval = group["max_iter"], group["max_eval"]
    tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
    line_search_fn, history_size = group["line_search_fn"], group["history_size"]
    if line_search_fn not in (None, "strong_wolfe"):
        raise RuntimeError("only 'strong_wolfe' is supported")
    flat = _Flat(params)
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)

    orig_loss = closure()
    loss = float(orig_loss)
    current_evals = 1
    state["func_evals"] += 1
    g = flat.grad()
    if g.abs().max() <= tolerance_grad:
        return orig_loss
    t = state.get("t")
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        state["n_iter"] += 1
        if state["n_iter"] == 1:
            d = g.neg()
            state.update(old_dirs=[], old_stps=[], ro=[], H_diag=1)
        else:
            state["t"] = t
            d = _direction(state, g, history_size)
        state["d"] = d
        if state.get("prev_flat_grad") is None:
            state["prev_flat_grad"] = g.clone(memory_format=torch.contiguous_format)
        else:
            state["prev_flat_grad"].copy_(g)
        prev_loss = loss
        state["prev_loss"] = prev_loss
        # The first step is scaled to the gradient's size; later ones are the lr.
        t = min(1.0, 1.0 / g.abs().sum()) * lr if state["n_iter"] == 1 else lr
        gtd = g.dot(d)
        if gtd > -tolerance_change:  # not a descent direction
            break
        ls_evals = 0
        if line_search_fn is not None:
            x_init = flat.copy()

            def evaluate(x, t, d):
                flat.add_(t, d)
                value = float(closure())
                grad = flat.grad()
                flat.restore(x)
                return value, grad

            loss, g, t, ls_evals = _strong_wolfe(
                evaluate, x_init, t, d, loss, g, gtd, max_ls=max_eval - current_evals
            )
            flat.add_(t, d)
            opt_cond = g.abs().max() <= tolerance_grad
        else:
            flat.add_(t, d)
            opt_cond = False
            if n_iter != max_iter:  # re-evaluate, except after the last iteration
                with torch.enable_grad():
                    value = closure()
                loss = float(value)
                g = flat.grad()
                opt_cond = g.abs().max() <= tolerance_grad
                ls_evals = 1
        current_evals += ls_evals
        state["func_evals"] += ls_evals
        if (
            n_iter == max_iter
            or current_evals >= max_eval
            or opt_cond
            or d.mul(t).abs().max() <= tolerance_change
            or abs(loss - prev_loss) < tolerance_change
        ):
            break
    state["t"] = t
    return orig_loss


def check_lbfgs_state(entry: dict[str, Any], where: str) -> None:
    """Refuse a checkpoint entry that torch's LBFGS could not have written."""
    unknown = sorted(set(entry) - LBFGS_KEYS)
    if unknown:
        raise ValueError(f"load_state_dict: {where} has state keys {unknown} that LBFGS lacks.")
    for key, value in entry.items():
        values = value if key in _LISTS and isinstance(value, list) else [value]
        for v in values:
            if not (v is None or isinstance(v, (torch.Tensor, int, float))):
                raise ValueError(
                    f"load_state_dict: {where}: state {key!r} holds a {type(v).__name__}."
                )


def loaded_lbfgs_state(entry: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A checkpoint entry as own tensors on ``device`` (lists stay lists)."""

    def own(v: Any) -> Any:
        return v.detach().to(device).clone() if isinstance(v, torch.Tensor) else v

    return {k: [own(x) for x in v] if isinstance(v, list) else own(v) for k, v in entry.items()}
