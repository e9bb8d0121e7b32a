"""Curvature utilities on `torch.func`.

``loss(params, inputs, targets)`` is a scalar function of a params tree, as in optax; flat
vectors follow `ravel_tree`'s order (every leaf of one dtype and device).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._branch import while_loop
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import tree_l2_norm, tree_vdot
from torchopt_fn.tree._ravel import ravel_tree

__all__ = [
    "fisher_diag",
    "hessian_diag",
    "hutchinson_diag_hessian",
    "hvp",
    "matrix_inverse_pth_root",
    "power_iteration",
]

Tree = Any
LossFn = Callable[[Tree, Any, Any], torch.Tensor]


def hvp(loss: LossFn, v: torch.Tensor, params: Tree, inputs: Any, targets: Any) -> Tree:
    """The Hessian of ``loss`` at ``params`` times the flat vector ``v``, as a params tree.

    Forward-over-reverse (`torch.func.jvp` of `torch.func.grad`): the cost of about two
    gradients, no Hessian formed.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> loss = lambda p, x, y: (p["w"] ** 3).sum()
        >>> params = {"w": torch.tensor([1.0, 2.0])}
        >>> tf.hvp(loss, torch.tensor([1.0, 1.0]), params, None, None)["w"]  # 6 w * v
        tensor([ 6., 12.])
    """
    _, unravel = ravel_tree(params)
    grad = torch.func.grad(lambda p: loss(p, inputs, targets))
    return torch.func.jvp(grad, (params,), (unravel(v),))[1]


def hessian_diag(loss: LossFn, params: Tree, inputs: Any, targets: Any) -> torch.Tensor:
    """The exact diagonal of the Hessian, as a flat vector (one `hvp` per parameter: small
    models only; see `hutchinson_diag_hessian` for an estimate at any size).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> loss = lambda p, x, y: (p["w"] ** 3).sum() + p["w"].prod()
        >>> tf.hessian_diag(loss, {"w": torch.tensor([1.0, 2.0])}, None, None)
        tensor([ 6., 12.])
    """
    flat, _ = ravel_tree(params)
    eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)

    def component(v: torch.Tensor) -> torch.Tensor:
        return torch.vdot(v, ravel_tree(hvp(loss, v, params, inputs, targets))[0])

    return torch.func.vmap(component)(eye)


def fisher_diag(
    negative_log_likelihood: LossFn, params: Tree, inputs: Any, targets: Any
) -> torch.Tensor:
    """The empirical Fisher diagonal: the squared gradient of the negative log-likelihood,
    as a flat vector.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> nll = lambda p, x, y: ((p["w"] * x - y) ** 2).sum() / 2
        >>> x, y = torch.tensor([2.0]), torch.tensor([1.0])
        >>> tf.fisher_diag(nll, {"w": torch.tensor([1.0])}, x, y)
        tensor([4.])
    """
    grads = torch.func.grad(negative_log_likelihood)(params, inputs, targets)
    return ravel_tree(grads)[0].square()


def hutchinson_diag_hessian(
    loss: Callable[[Tree], torch.Tensor],
    params: Tree,
    *,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
) -> Tree:
    r"""Hutchinson's unbiased estimate of the Hessian's diagonal, $E[z \odot Hz]$, as a tree.

    $z$ has independent Rademacher (±1) entries drawn from ``generator``; each sample costs
    one Hessian-vector product. Sophia and AdaHessian precondition with it.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> loss = lambda p: (p["w"] ** 2 * torch.tensor([1.0, 3.0])).sum()  # diagonal H
        >>> g = torch.Generator().manual_seed(0)
        >>> tf.hutchinson_diag_hessian(loss, {"w": torch.zeros(2)}, generator=g)["w"]
        tensor([2., 6.])
    """
    grad = torch.func.grad(loss)

    def sample() -> Tree:
        z = tree_map(
            lambda p: (
                torch.randint(0, 2, p.shape, generator=generator, device=p.device)
                .to(p.dtype)
                .mul_(2)
                .sub_(1)
            ),
            params,
        )
        hz = torch.func.jvp(grad, (params,), (z,))[1]
        return tree_map(lambda a, b: a * b, z, hz)

    total = sample()
    for _ in range(num_samples - 1):
        total = tree_map(torch.add, total, sample())
    return tree_map(lambda x: x / num_samples, total)


def _normalized(x: Tree) -> Tree:
    norm = tree_l2_norm(x)
    return tree_map(lambda v: v / norm, x)


def power_iteration(
    matrix: torch.Tensor | Callable[[Tree], Tree],
    *,
    v0: Tree | None = None,
    num_iters: int = 100,
    error_tolerance: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Tree]:
    r"""The dominant eigenvalue and eigenvector of a symmetric matrix (or a matrix-vector product).

    Iterates $v \leftarrow Av / \|Av\|$ until the residual $\|Av - \lambda v\| / |\lambda|$
    is below ``error_tolerance`` or ``num_iters`` iterations ran. ``matrix`` is a square
    tensor, or a function of a tree (an `hvp`, say) with ``v0`` a tree to start from.
    Without ``v0``, the start is uniform in $[-1, 1]$ from ``generator``.

    Raises:
        ValueError: a function without ``v0``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> value, vector = tf.power_iteration(torch.diag(torch.tensor([1.0, 3.0, 2.0])))
        >>> round(float(value), 4), vector.abs().argmax().item()
        (3.0, 1)
    """
    if callable(matrix):
        mvp = matrix
        if v0 is None:
            raise ValueError("power_iteration: v0 must be given when matrix is a function.")
    else:
        mvp = lambda v: matrix @ v  # noqa: E731
        if v0 is None:
            v0 = torch.rand(matrix.shape[-1], generator=generator, dtype=matrix.dtype)
            v0 = (v0 * 2 - 1).to(matrix.device)
    v0 = _normalized(v0)
    z0 = mvp(v0)
    dtype = torch.as_tensor(tree_vdot(v0, z0)).dtype

    def cond(s: tuple) -> torch.Tensor:
        eigvec, z, eig, i = s
        residual = tree_l2_norm(tree_map(lambda a, b: a - eig * b, z, eigvec))
        return ~(torch.abs(residual / eig) < error_tolerance) & (i < num_iters)

    def body(s: tuple) -> tuple:
        _, z, _, i = s
        eigvec = _normalized(z)
        z = mvp(eigvec)
        return eigvec, z, tree_vdot(eigvec, z), i + 1

    start = (v0, z0, torch.zeros((), dtype=dtype), torch.zeros((), dtype=torch.int64))
    _, z, eig, _ = while_loop(cond, body, start, num_iters)
    return eig, _normalized(z)


def matrix_inverse_pth_root(
    matrix: torch.Tensor,
    p: int,
    num_iters: int = 100,
    ridge_epsilon: float = 1e-6,
    error_tolerance: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$(A + \epsilon \lambda_{max} I)^{-1/p}$ of a symmetric PSD matrix, by a coupled Newton
    iteration (Shampoo's); returns it and the final error $\max|M - I|$.

    Matrix products only (no eigendecomposition), so it runs in low precision and batches;
    the iteration stops when the error stops shrinking, keeping the previous iterate.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> a = torch.tensor([[4.0, 0.0], [0.0, 16.0]], dtype=torch.float64)
        >>> root, _ = tf.matrix_inverse_pth_root(a, 2, ridge_epsilon=0.0)
        >>> torch.round(root, decimals=4)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.2500]], dtype=torch.float64)

    References:
        Anil et al., Scalable second order optimization for deep learning, 2020.
    """
    n = matrix.shape[0]
    alpha = -1.0 / p
    identity = torch.eye(n, dtype=matrix.dtype, device=matrix.device)
    max_ev, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6)
    ridge = ridge_epsilon * torch.clamp(max_ev, min=1e-16)
    if n == 1:
        return (matrix + ridge) ** alpha, torch.zeros((), dtype=matrix.dtype)
    damped = matrix + ridge * identity
    z = (1 + p) / (2 * torch.linalg.matrix_norm(damped))
    m0 = damped * z
    h0 = identity * z ** (1.0 / p)
    error0 = torch.max(torch.abs(m0 - identity))

    def cond(s: tuple) -> torch.Tensor:
        i, _, _, _, error, improving = s
        return (i < num_iters) & (error > error_tolerance) & improving

    def body(s: tuple) -> tuple:
        i, m, h, _, error, _ = s
        m_i = (1 - alpha) * identity + alpha * m
        new_m = torch.linalg.matrix_power(m_i, p) @ m
        new_h = h @ m_i
        new_error = torch.max(torch.abs(new_m - identity))
        return i + 1, new_m, new_h, h, new_error, new_error < error * 1.2

    start = (
        torch.zeros((), dtype=torch.int64),
        m0,
        h0,
        h0,
        error0,
        torch.ones((), dtype=torch.bool),
    )
    _, m, h, old_h, _, converged = while_loop(cond, body, start, num_iters)
    root = torch.where(converged, h, old_h)
    return root, torch.max(torch.abs(m - identity))
