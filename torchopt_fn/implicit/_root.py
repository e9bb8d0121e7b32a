r"""`custom_root`: gradients of a solution through the implicit function theorem.

The decorated solver runs on detached inputs; a `torch.autograd.Function` (in the
``setup_context`` style, with a generated vmap rule, so that it composes with `torch.func`)
then returns its solution with an implicit backward. Pytrees cross the Function as flat lists
of tensors; everything else (the specs, the non-tensor leaves, the functions) travels in one
`_Root` object, a non-tensor input of the Function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchopt_fn.implicit._solvers import solve_cg
from torchopt_fn.tree._flatten import (
    TreeSpec,
    flatten_like,
    leaf_paths,
    path_str,
    tree_flatten,
    tree_map,
    tree_unflatten,
)

__all__ = ["custom_root"]

Tree = Any
LinearSolve = Callable[[Callable[[Tree], Tree], Tree], Tree]


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point()


class _Root:
    """One call's problem: $F$, the linear solver, and how to rebuild $x$ and the arguments.

    ``arg_leaves`` holds the flat leaves of ``(args, kwargs)`` with `None` where a tensor
    was (the tensors themselves enter the Function as inputs, at ``tensor_positions``).
    """

    def __init__(
        self,
        optimality_fn: Callable[..., Tree],
        solve: LinearSolve,
        x_spec: TreeSpec,
        arg_spec: TreeSpec,
        arg_leaves: list[Any],
        tensor_positions: list[int],
    ):
        self.optimality_fn = optimality_fn
        self.solve = solve
        self.x_spec = x_spec
        self.n_x = x_spec.num_leaves
        self.arg_spec = arg_spec
        at_tensor = set(tensor_positions)
        self.arg_leaves = [None if i in at_tensor else a for i, a in enumerate(arg_leaves)]
        self.tensor_positions = tensor_positions

    def residual(self, xs: Sequence[torch.Tensor], arg_tensors: Sequence[torch.Tensor]) -> list:
        r"""The leaves of $F(x, \text{args})$, checked against $x$'s structure and shapes."""
        leaves = list(self.arg_leaves)
        for i, t in zip(self.tensor_positions, arg_tensors):
            leaves[i] = t
        args, kwargs = tree_unflatten(self.arg_spec, leaves)
        out = self.optimality_fn(tree_unflatten(self.x_spec, xs), *args, **kwargs)
        return self._check(out, xs)

    def _check(self, out: Tree, xs: Sequence[torch.Tensor]) -> list:
        reference = tree_unflatten(self.x_spec, list(range(self.n_x)))
        what = "custom_root: optimality_fn(x, *args) must have the structure of x"
        leaves = flatten_like(self.x_spec, reference, out, what)
        for path, f, x in zip(leaf_paths(reference), leaves, xs):
            if not isinstance(f, torch.Tensor) or f.shape != x.shape:
                got = f"shape {tuple(f.shape)}" if isinstance(f, torch.Tensor) else type(f).__name__
                raise ValueError(
                    f"{what} and shapes: at {path_str(path)} it returned {got} where x has "
                    f"shape {tuple(x.shape)}."
                )
        return leaves

    def adjoint(
        self,
        xs: Sequence[torch.Tensor],
        arg_tensors: Sequence[torch.Tensor],
        cotangents: Sequence[torch.Tensor],
    ) -> list:
        r"""$u$ solving $(\partial_x F)^\top u = v$ for the cotangent $v$, as flat leaves."""
        _, vjp_x = torch.func.vjp(lambda *x: self.residual(x, arg_tensors), *xs)

        def matvec(u: Tree) -> Tree:
            return tree_unflatten(self.x_spec, vjp_x(tree_flatten(u)[0]))

        u = self.solve(matvec, tree_unflatten(self.x_spec, cotangents))
        return tree_flatten(u)[0]

    def arg_grads(
        self, xs: Sequence[torch.Tensor], arg_tensors: Sequence[torch.Tensor], u: list
    ) -> list:
        r"""$-(\partial_{\text{args}} F)^\top u$ for every differentiable argument tensor."""
        wrt = [i for i, t in enumerate(arg_tensors) if _differentiable(t)]

        def f(*diff: torch.Tensor) -> list:
            tensors = list(arg_tensors)
            for i, d in zip(wrt, diff):
                tensors[i] = d
            return self.residual(xs, tensors)

        _, vjp_args = torch.func.vjp(f, *[arg_tensors[i] for i in wrt])
        grads: list = [None] * len(arg_tensors)
        for i, g in zip(wrt, vjp_args(u)):
            grads[i] = -g
        return grads


class _ImplicitRoot(torch.autograd.Function):
    """Identity on the solution's leaves in the forward; the implicit gradient in the backward.

    Inputs: the `_Root`, the solution's leaves, then the argument tensors.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(root: _Root, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x.clone() for x in tensors[: root.n_x])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.root = inputs[0]
        ctx.save_for_backward(*inputs[1:])

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple:
        root: _Root = ctx.root
        tensors = ctx.saved_tensors
        xs, arg_tensors = tensors[: root.n_x], tensors[root.n_x :]
        nothing = (None,) * (1 + root.n_x)
        if not any(ctx.needs_input_grad[1 + root.n_x :]):
            return (*nothing, *(None,) * len(arg_tensors))
        u = root.adjoint(xs, arg_tensors, cotangents)
        return (*nothing, *root.arg_grads(xs, arg_tensors, u))


def _detach(tree: Tree) -> Tree:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def custom_root(
    optimality_fn: Callable[..., Tree],
    solve: LinearSolve = solve_cg,
    has_aux: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorate a solver so that its solution is differentiated implicitly.

    ``optimality_fn(x, *args, **kwargs)`` $= F(x, \theta)$ vanishes at the solution
    $x^\star(\theta)$ of the inner problem ($\theta$ stands for the arguments), e.g. the
    gradient of an inner objective. The decorated ``solver(init, *args, **kwargs)`` returns
    $x^\star$ computed any way at all: it runs on detached inputs and is never differentiated
    through. Its gradient comes from the implicit function theorem instead: differentiating
    $F(x^\star(\theta), \theta) = 0$ gives
    $\partial x^\star / \partial\theta = -(\partial_x F)^{-1}\, \partial_\theta F$, so the
    vector-Jacobian product with a cotangent $v$ is

    $$v^\top \frac{\partial x^\star}{\partial \theta} = -u^\top \partial_\theta F
    \quad\text{where}\quad (\partial_x F)^\top u = v .$$

    The linear system is solved by ``solve(matvec, v)``, with ``matvec`` $u \mapsto
    (\partial_x F)^\top u$ a `torch.func.vjp` of $F$ (no Jacobian is formed); both
    products are taken at $x^\star$. When $F$ is the gradient of an objective in $x$,
    $\partial_x F$ is its Hessian, symmetric: `solve_cg` (the default) fits. For any other
    $F$ (a fixed point $x - T(x, \theta)$, a non-symmetric root) pass `solve_normal_cg`, or
    `solve_neumann`. To set a solver's options, pass e.g.
    ``functools.partial(solve_cg, ridge=1e-5, maxiter=20)``.

    **What is differentiated**: every floating-point tensor leaf of ``args`` and ``kwargs``
    (pytrees of any optree type). Other leaves (integer, boolean and complex tensors,
    numbers, strings) are passed as they are. Not ``init``, and no tensor that
    ``optimality_fn`` or the solver capture in a closure: pass anything to be differentiated,
    or vmapped over, through ``args``. It works with ``loss.backward()``,
    `torch.autograd.grad` and the `torch.func` transforms (`torch.func.grad`,
    `torch.func.vmap`, `torch.func.jacrev` and their compositions).

    Args:
        optimality_fn: $F(x, *\text{args}, **\text{kwargs})$, a tree of the structure and
            shapes of $x$ (the system must be square). Pure torch code, differentiable in
            $x$ and the arguments.
        solve: The linear solver, ``solve(matvec, b) -> x`` over trees like $x$.
        has_aux: Whether the solver returns ``(x, aux)``; ``aux`` is returned as the solver
            gave it (not differentiated), and $F$ gets $x$ only.

    Returns:
        A decorator: ``solver -> wrapped`` where ``wrapped(init, *args, **kwargs)`` returns
        what ``solver`` returns, its solution now differentiable in the arguments.

    Raises:
        TypeError: at the call, where a leaf of the solution is not a floating tensor, or
            ``has_aux`` is set and the solver does not return a pair.
        ValueError: when the gradient is taken, where ``optimality_fn``'s output does not
            have the structure and shapes of $x$ (the message names the first path).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> from torchopt_fn.implicit import custom_root
        >>> @custom_root(lambda x, theta: x**2 - theta)  # the root x* = sqrt(theta)
        ... def newton_sqrt(init, theta):
        ...     x = init
        ...     for _ in range(20):
        ...         x = (x + theta / x) / 2
        ...     return x
        >>> theta = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
        >>> x = newton_sqrt(torch.tensor(1.0, dtype=torch.float64), theta)
        >>> x.backward()
        >>> x.detach(), theta.grad  # d sqrt(theta) / d theta = 1 / (2 sqrt(theta))
        (tensor(2., dtype=torch.float64), tensor(0.2500, dtype=torch.float64))
        >>> one = torch.tensor(1.0, dtype=torch.float64)
        >>> torch.func.grad(lambda t: newton_sqrt(one, t))(torch.tensor(9.0, dtype=torch.float64))
        tensor(0.1667, dtype=torch.float64)

    References:
        Blondel et al., Efficient and Modular Implicit Differentiation, NeurIPS 2022.
        https://arxiv.org/abs/2105.15183
        Rajeswaran et al., Meta-Learning with Implicit Gradients (iMAML), NeurIPS 2019.
        https://arxiv.org/abs/1909.04630
    """

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(solver)
        def wrapped(init: Tree, *args: Any, **kwargs: Any) -> Any:
            arg_leaves, arg_spec = tree_flatten((args, kwargs))
            positions = [i for i, a in enumerate(arg_leaves) if isinstance(a, torch.Tensor)]
            d_args, d_kwargs = _detach((args, kwargs))
            out = solver(_detach(init), *d_args, **d_kwargs)
            if has_aux and not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "custom_root(has_aux=True): the solver must return a pair (x, aux); "
                    f"it returned {type(out).__name__}."
                )
            x, aux = out if has_aux else (out, None)
            x_leaves, x_spec = tree_flatten(x)
            _check_solution(x, x_leaves)
            root = _Root(optimality_fn, solve, x_spec, arg_spec, arg_leaves, positions)
            outs = _ImplicitRoot.apply(
                root, *[t.detach() for t in x_leaves], *[arg_leaves[i] for i in positions]
            )
            x = tree_unflatten(x_spec, outs)
            return (x, aux) if has_aux else x

        return wrapped

    return decorator


def _check_solution(x: Tree, leaves: list) -> None:
    """Raise a `TypeError` naming the first leaf of the solution that is no floating tensor."""
    for path, leaf in zip(leaf_paths(x), leaves):
        if not (isinstance(leaf, torch.Tensor) and _differentiable(leaf)):
            raise TypeError(
                "custom_root: the solver must return a pytree of floating tensors (with "
                f"has_aux, as the first of a pair); at {path_str(path)} it has "
                f"{type(leaf).__name__}"
                + (f" of dtype {leaf.dtype}" if isinstance(leaf, torch.Tensor) else "")
                + "."
            )
