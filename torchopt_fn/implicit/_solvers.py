r"""Linear solvers for implicit differentiation.

Each solves $A x = b$ where $A$ is given only through its product ``matvec(x)`` $= A x$, and
$x$ and $b$ are pytrees of tensors of the same structure (``matvec`` maps such a tree to such
a tree). They are plain torch code: they run eagerly, under `torch.func.grad` and
`torch.func.vmap`, and under `torch.compile`. Eagerly (and under `torch.func.grad`) a solver
stops as soon as its residual is below ``tol``; traced (compiled, vmapped) it runs all
``maxiter`` iterations and ``torch.where`` freezes the iterate once it has converged (see
`torchopt_fn._branch.while_loop`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchopt_fn._branch import while_loop
from torchopt_fn.tree._flatten import tree_flatten, tree_unflatten
from torchopt_fn.tree._math import (
    tree_add_scale,
    tree_scale,
    tree_size,
    tree_sub,
    tree_vdot,
    tree_zeros_like,
)

__all__ = ["solve_cg", "solve_neumann", "solve_normal_cg"]

Tree = Any
Matvec = Callable[[Tree], Tree]


def _with_ridge(matvec: Matvec, ridge: float | torch.Tensor) -> Matvec:
    r"""$x \mapsto A x + \text{ridge} \cdot x$ (``matvec`` itself for a ridge of Python 0)."""
    if isinstance(ridge, (int, float)) and ridge == 0:
        return matvec
    return lambda x: tree_add_scale(matvec(x), ridge, x)


def _safe(denominator: torch.Tensor) -> torch.Tensor:
    """``denominator`` with 0 replaced by 1: a converged iteration divides 0 by it, harmlessly."""
    return torch.where(denominator == 0, torch.ones_like(denominator), denominator)


class _CGState(NamedTuple):
    x: Tree  # the iterate
    r: Tree  # the residual b - A x
    p: Tree  # the search direction
    rs: torch.Tensor  # <r, r>


def solve_cg(
    matvec: Matvec,
    b: Tree,
    *,
    init: Tree | None = None,
    ridge: float | torch.Tensor = 0.0,
    tol: float = 1e-10,
    maxiter: int | None = None,
) -> Tree:
    r"""Solve $(A + \rho I) x = b$ by conjugate gradient, for a symmetric positive definite $A$.

    From $x_0$ (``init``, else 0), $r_0 = p_0 = b - A x_0$, each iteration takes

    $$\alpha_k = \frac{\langle r_k, r_k\rangle}{\langle p_k, A p_k\rangle},\quad
    x_{k+1} = x_k + \alpha_k p_k,\quad r_{k+1} = r_k - \alpha_k A p_k,\quad
    p_{k+1} = r_{k+1} + \frac{\langle r_{k+1}, r_{k+1}\rangle}{\langle r_k, r_k\rangle} p_k,$$

    until $\|r_k\|_2 \le \text{tol} \cdot \|b\|_2$ or ``maxiter`` iterations. In exact
    arithmetic CG is exact after $n$ iterations ($n$ the number of unknowns); each costs one
    ``matvec``. The implicit gradient of a minimiser needs exactly this solver: $A$ is then a
    Hessian.

    Args:
        matvec: $x \mapsto A x$, a linear map from trees shaped like ``b`` to such trees.
        b: The right-hand side, a pytree of real floating tensors.
        init: The starting point, a tree like ``b`` (default zeros).
        ridge: $\rho \ge 0$, added to $A$ (a float or a 0-d tensor); it makes a merely
            positive semi-definite (or badly conditioned) system solvable.
        tol: Relative tolerance on the residual norm.
        maxiter: The most iterations; default $10 n$, as in ``jax.scipy.sparse.linalg.cg``
            and TorchOpt. Traced (compiled, vmapped) all of them run, so pass a small number
            there for large problems.

    Returns:
        The approximate solution $x$, a tree like ``b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> from torchopt_fn.implicit import solve_cg
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = {"w": torch.tensor([1.0, 2.0], dtype=A.dtype)}
        >>> x = solve_cg(lambda v: {"w": A @ v["w"]}, b)
        >>> x["w"]
        tensor([0.0909, 0.6364], dtype=torch.float64)
        >>> torch.linalg.solve(A, b["w"])
        tensor([0.0909, 0.6364], dtype=torch.float64)

    References:
        Hestenes & Stiefel, Methods of conjugate gradients for solving linear systems, 1952.
        Blondel et al., Efficient and Modular Implicit Differentiation, NeurIPS 2022.
        https://arxiv.org/abs/2105.15183
    """
    matvec = _with_ridge(matvec, ridge)
    maxiter = 10 * tree_size(b) if maxiter is None else maxiter
    if init is None:
        x, r = tree_zeros_like(b), b
    else:
        x, r = init, tree_sub(b, matvec(init))
    rs = tree_vdot(r, r)
    threshold = tol**2 * tree_vdot(b, b)

    def cond(s: _CGState) -> torch.Tensor:
        return s.rs > threshold

    def body(s: _CGState) -> _CGState:
        ap = matvec(s.p)
        alpha = s.rs / _safe(tree_vdot(s.p, ap))
        x = tree_add_scale(s.x, alpha, s.p)
        r = tree_add_scale(s.r, -alpha, ap)
        rs = tree_vdot(r, r)
        p = tree_add_scale(r, rs / _safe(s.rs), s.p)
        return _CGState(x, r, p, rs)

    return while_loop(cond, body, _CGState(x, r, r, rs), maxiter).x


def _transpose(matvec: Matvec, example: Tree) -> Matvec:
    r"""$y \mapsto A^\top y$ for the linear ``matvec`` $x \mapsto A x$, by `torch.func.vjp`.

    The vjp is taken at ``example`` (any point will do: the map is linear), over the flat
    leaves, so that any pytree type works.
    """
    leaves, spec = tree_flatten(example)

    def flat_matvec(*xs: torch.Tensor) -> list[torch.Tensor]:
        return tree_flatten(matvec(tree_unflatten(spec, xs)))[0]

    _, vjp_fn = torch.func.vjp(flat_matvec, *leaves)
    return lambda y: tree_unflatten(spec, vjp_fn(tree_flatten(y)[0]))


def solve_normal_cg(
    matvec: Matvec,
    b: Tree,
    *,
    init: Tree | None = None,
    ridge: float | torch.Tensor = 0.0,
    tol: float = 1e-10,
    maxiter: int | None = None,
) -> Tree:
    r"""Solve $A x = b$ for any invertible (non-symmetric) $A$, by CG on the normal equations.

    Runs `solve_cg` on $(A^\top A + \rho I)\, x = A^\top b$, with $A^\top y$ obtained by
    `torch.func.vjp` of ``matvec`` (the transpose is never formed). Each iteration costs one
    ``matvec`` and one vjp of it. The condition number is squared, so convergence is slower
    than `solve_cg` on a symmetric system; use it where $A$ is not symmetric, e.g. for the
    implicit gradient of a fixed point $x = T(x, \theta)$ or of a root of a non-gradient map.

    Args:
        matvec: $x \mapsto A x$, a linear map from trees shaped like ``b`` to such trees.
        b: The right-hand side, a pytree of real floating tensors.
        init: The starting point, a tree like ``b`` (default zeros).
        ridge: $\rho \ge 0$, added to $A^\top A$ (a float or a 0-d tensor).
        tol: Relative tolerance on the residual of the normal equations,
            $\|A^\top (b - A x)\|_2 \le \text{tol} \cdot \|A^\top b\|_2$.
        maxiter: The most CG iterations; default $10 n$, $n$ the number of unknowns.

    Returns:
        The approximate solution $x$, a tree like ``b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> from torchopt_fn.implicit import solve_normal_cg
        >>> A = torch.tensor([[1.0, 2.0], [0.0, 3.0]], dtype=torch.float64)  # not symmetric
        >>> x = solve_normal_cg(lambda v: A @ v, torch.tensor([5.0, 3.0], dtype=A.dtype))
        >>> x
        tensor([3.0000, 1.0000], dtype=torch.float64)
        >>> torch.allclose(A @ x, torch.tensor([5.0, 3.0], dtype=A.dtype))
        True

    References:
        Blondel et al., Efficient and Modular Implicit Differentiation, NeurIPS 2022.
        https://arxiv.org/abs/2105.15183
    """
    rmatvec = _transpose(matvec, b)
    return solve_cg(
        lambda x: rmatvec(matvec(x)), rmatvec(b), init=init, ridge=ridge, tol=tol, maxiter=maxiter
    )


class _NeumannState(NamedTuple):
    term: Tree  # (I - αA)^k b
    total: Tree  # the partial sum up to k


def solve_neumann(
    matvec: Matvec,
    b: Tree,
    *,
    alpha: float | torch.Tensor = 1.0,
    ridge: float | torch.Tensor = 0.0,
    tol: float = 1e-10,
    maxiter: int = 100,
) -> Tree:
    r"""Solve $(A + \rho I) x = b$ approximately by a truncated Neumann series.

    $$x_K = \alpha \sum_{k=0}^{K} (I - \alpha A)^k\, b,$$

    which tends to $A^{-1} b$ when the spectral radius of $I - \alpha A$ is below 1 (for a
    symmetric positive definite $A$: $0 < \alpha < 2 / \lambda_{\max}(A)$), with an error
    shrinking like $\rho(I - \alpha A)^{K}$. The sum stops early once a term has norm
    $\le \text{tol} \cdot \|b\|_2$. One ``matvec`` per term, no inner products beyond the
    stopping test: the cheap, robust choice when a few terms are enough (the truncation then
    acts as a regulariser, as in the hypergradients of Lorraine et al., 2020), and it needs no
    symmetry. It diverges when the spectral radius exceeds 1: scale ``alpha`` down.

    Args:
        matvec: $x \mapsto A x$, a linear map from trees shaped like ``b`` to such trees.
        b: The right-hand side, a pytree of real floating tensors.
        alpha: The step $\alpha > 0$ (a float or a 0-d tensor).
        ridge: $\rho \ge 0$, added to $A$.
        tol: Relative tolerance on the norm of the last term.
        maxiter: $K$, the most terms after the first.

    Returns:
        The approximate solution $x_K$, a tree like ``b``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> from torchopt_fn.implicit import solve_neumann
        >>> A = torch.tensor([[1.0, 0.2], [0.2, 0.8]], dtype=torch.float64)
        >>> solve_neumann(lambda v: A @ v, torch.tensor([1.0, 1.0], dtype=A.dtype), alpha=1.0)
        tensor([0.7895, 1.0526], dtype=torch.float64)
        >>> torch.linalg.solve(A, torch.tensor([1.0, 1.0], dtype=A.dtype))
        tensor([0.7895, 1.0526], dtype=torch.float64)

    References:
        Lorraine et al., Optimizing Millions of Hyperparameters by Implicit
        Differentiation, AISTATS 2020. https://arxiv.org/abs/1911.02590
        Blondel et al., Efficient and Modular Implicit Differentiation, NeurIPS 2022.
        https://arxiv.org/abs/2105.15183
    """
    matvec = _with_ridge(matvec, ridge)
    threshold = tol**2 * tree_vdot(b, b)

    def cond(s: _NeumannState) -> torch.Tensor:
        return tree_vdot(s.term, s.term) > threshold

    def body(s: _NeumannState) -> _NeumannState:
        term = tree_add_scale(s.term, -alpha, matvec(s.term))
        return _NeumannState(term, tree_add_scale(s.total, 1.0, term))

    total = while_loop(cond, body, _NeumannState(b, b), maxiter).total
    return tree_scale(alpha, total)
