"""Implicit differentiation: the linear solvers against `torch.linalg.solve`, and
`custom_root`'s gradients against closed forms and finite differences, through
``loss.backward()``, `torch.func.grad` and `torch.func.vmap` (float64 throughout)."""

from __future__ import annotations

import functools

import pytest
import torch

from torchopt_fn.implicit import custom_root, solve_cg, solve_neumann, solve_normal_cg

DT = torch.float64
SHAPES = {"a": (3,), "b": (2, 2)}  # a pytree right-hand side of 7 unknowns


def ravel(tree: dict) -> torch.Tensor:
    return torch.cat([tree[k].reshape(-1) for k in SHAPES])


def unravel(flat: torch.Tensor) -> dict:
    sizes = [torch.Size(s).numel() for s in SHAPES.values()]
    parts = flat.split(sizes)
    return {k: p.reshape(s) for (k, s), p in zip(SHAPES.items(), parts)}


def tree_matvec(A: torch.Tensor):
    return lambda x: unravel(A @ ravel(x))


def random_tree() -> dict:
    return {k: torch.randn(s, dtype=DT) for k, s in SHAPES.items()}


def spd(n: int, low: float = 0.5, high: float = 3.0) -> torch.Tensor:
    """A random symmetric matrix with eigenvalues spread over [low, high]."""
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=DT))
    return q @ torch.diag(torch.linspace(low, high, n, dtype=DT)) @ q.T


def assert_trees_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


# --------------------------------------------------------------------------- solvers


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_solve_cg_matches_linalg_solve_on_a_pytree(ridge):
    A, b = spd(7), random_tree()
    expected = unravel(torch.linalg.solve(A + ridge * torch.eye(7, dtype=DT), ravel(b)))
    assert_trees_close(solve_cg(tree_matvec(A), b, ridge=ridge), expected, 1e-10)
    start = solve_cg(tree_matvec(A), b, ridge=ridge, init=random_tree())
    assert_trees_close(start, expected, 1e-10)


def test_solve_normal_cg_matches_linalg_solve_on_a_nonsymmetric_matrix():
    A = torch.randn(7, 7, dtype=DT) + 4 * torch.eye(7, dtype=DT)
    b = random_tree()
    expected = unravel(torch.linalg.solve(A, ravel(b)))
    assert_trees_close(solve_normal_cg(tree_matvec(A), b), expected, 1e-10)


def test_solve_neumann_matches_linalg_solve_below_spectral_radius_one():
    A, b = spd(7, 0.6, 1.4), random_tree()  # the spectral radius of I - A is 0.4
    expected = unravel(torch.linalg.solve(A, ravel(b)))
    assert_trees_close(solve_neumann(tree_matvec(A), b), expected, 1e-10)
    # A step that also brings a larger spectrum below radius 1.
    B = spd(7, 1.0, 3.0)
    x = solve_neumann(tree_matvec(B), b, alpha=0.5, maxiter=200)
    assert_trees_close(x, unravel(torch.linalg.solve(B, ravel(b))), 1e-10)


def test_solve_neumann_truncation_is_the_partial_sum():
    A, b = spd(4, 0.6, 1.4), torch.randn(4, dtype=DT)
    M, term, total = torch.eye(4, dtype=DT) - A, b, b
    for _ in range(3):
        term = M @ term
        total = total + term
    torch.testing.assert_close(solve_neumann(lambda v: A @ v, b, maxiter=3), total)


# Neumann's ``tol`` bounds the last term, not the error (the tail is rho / (1 - rho) times it).
@pytest.mark.parametrize(
    "solve",
    [solve_cg, solve_normal_cg, functools.partial(solve_neumann, tol=1e-13)],
    ids=["cg", "normal_cg", "neumann"],
)
def test_solvers_vmap_over_right_hand_sides(solve):
    A, bs = spd(5, 0.6, 1.4), torch.randn(3, 5, dtype=DT)
    batched = torch.func.vmap(lambda b: solve(lambda v: A @ v, b))(bs)
    torch.testing.assert_close(batched, torch.linalg.solve(A, bs.T).T, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- ridge regression


def ridge_problem():
    X, y = torch.randn(20, 5, dtype=DT), torch.randn(20, dtype=DT)
    X_val, y_val = torch.randn(10, 5, dtype=DT), torch.randn(10, dtype=DT)

    def optimality(w, lam):  # the gradient of ||X w - y||^2 + lam ||w||^2
        return 2 * X.T @ (X @ w - y) + 2 * lam * w

    @custom_root(optimality)
    def ridge(init, lam):
        return torch.linalg.solve(X.T @ X + lam * torch.eye(5, dtype=DT), X.T @ y)

    def val_loss(lam):
        return ((X_val @ ridge(torch.zeros(5, dtype=DT), lam) - y_val) ** 2).sum()

    def val_loss_unrolled(lam):  # autograd through torch.linalg.solve itself
        w = torch.linalg.solve(X.T @ X + lam * torch.eye(5, dtype=DT), X.T @ y)
        return ((X_val @ w - y_val) ** 2).sum()

    return val_loss, val_loss_unrolled


def test_ridge_hypergradient_matches_autograd_and_finite_differences():
    val_loss, val_loss_unrolled = ridge_problem()
    lam = torch.tensor(0.7, dtype=DT, requires_grad=True)
    val_loss(lam).backward()
    implicit = lam.grad.clone()

    lam.grad = None
    val_loss_unrolled(lam).backward()
    torch.testing.assert_close(implicit, lam.grad, rtol=0, atol=1e-8)

    h = 1e-5
    with torch.no_grad():
        fd = (val_loss(lam + h) - val_loss(lam - h)) / (2 * h)
    torch.testing.assert_close(implicit, fd, rtol=0, atol=1e-8)

    functional = torch.func.grad(val_loss)(lam.detach())
    torch.testing.assert_close(functional, implicit, rtol=0, atol=1e-12)


def test_ridge_hypergradient_vmaps_over_regularisation_strengths():
    val_loss, _ = ridge_problem()
    lams = torch.tensor([0.1, 0.7, 2.0, 5.0], dtype=DT)
    batched = torch.func.vmap(torch.func.grad(val_loss))(lams)
    looped = torch.stack([torch.func.grad(val_loss)(lam) for lam in lams])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- iMAML


def imaml_solver(task_grad, reg: float, lr: float, steps: int):
    """argmin_phi L(phi) + reg/2 ||phi - theta||^2 (iMAML's inner problem) by gradient descent."""

    def optimality(phi, theta):
        return torch.func.grad(task_grad)(phi) + reg * (phi - theta)

    @custom_root(optimality)
    def adapt(init, theta):
        phi = init
        for _ in range(steps):
            phi = phi - lr * optimality(phi, theta)
        return phi

    return adapt


def test_imaml_quadratic_task_matches_closed_form():
    n, reg = 6, 2.0
    H, g = spd(n, 0.5, 2.0), torch.randn(n, dtype=DT)  # L_task = phi H phi / 2 - g phi
    C, d = torch.randn(8, n, dtype=DT), torch.randn(8, dtype=DT)  # L_val = ||C phi - d||^2 / 2
    adapt = imaml_solver(
        lambda phi: phi @ H @ phi / 2 - g @ phi, reg, lr=1 / (reg + 2.0), steps=200
    )

    def outer(theta):
        phi = adapt(theta.detach(), theta)
        return ((C @ phi - d) ** 2).sum() / 2

    theta = torch.randn(n, dtype=DT)
    phi_star = torch.linalg.solve(H + reg * torch.eye(n, dtype=DT), g + reg * theta)
    grad_val = C.T @ (C @ phi_star - d)
    expected = torch.linalg.solve(torch.eye(n, dtype=DT) + H / reg, grad_val)
    torch.testing.assert_close(torch.func.grad(outer)(theta), expected, rtol=0, atol=1e-8)


def test_imaml_logistic_task_on_a_pytree_matches_closed_form():
    reg = 1.0
    X, y = torch.randn(30, 3, dtype=DT), (torch.rand(30, dtype=DT) > 0.5).to(DT)
    X_val, y_val = torch.randn(15, 3, dtype=DT), (torch.rand(15, dtype=DT) > 0.5).to(DT)

    def logistic(params, X, y):
        logits = X @ params["w"] + params["b"]
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y)

    def optimality(phi, theta):
        grads = torch.func.grad(logistic)(phi, X, y)
        return {k: grads[k] + reg * (phi[k] - theta[k]) for k in phi}

    @custom_root(optimality, has_aux=True)
    def adapt(init, theta):
        phi = init
        for _ in range(300):
            phi = {
                k: v - 0.5 * u for (k, v), u in zip(phi.items(), optimality(phi, theta).values())
            }
        return phi, {"steps": 300}

    theta = {"w": torch.randn(3, dtype=DT), "b": torch.randn((), dtype=DT)}
    phi, aux = adapt(theta, theta)
    assert aux == {"steps": 300}

    def outer(theta):
        return logistic(adapt(theta, theta)[0], X_val, y_val)

    got = torch.func.grad(outer)(theta)

    # Closed form at the same phi*: (I + H / reg)^{-1} grad L_val, on the flat [w, b].
    def flat_loss(v, X, y):
        return logistic({"w": v[:3], "b": v[3]}, X, y)

    v = torch.cat([phi["w"], phi["b"].reshape(1)])
    H = torch.func.jacrev(torch.func.grad(flat_loss))(v, X, y)
    expected = torch.linalg.solve(
        torch.eye(4, dtype=DT) + H / reg, torch.func.grad(flat_loss)(v, X_val, y_val)
    )
    torch.testing.assert_close(
        torch.cat([got["w"], got["b"].reshape(1)]), expected, rtol=0, atol=1e-8
    )

    # The same through plain autograd.
    leaves = {k: t.clone().requires_grad_() for k, t in theta.items()}
    outer(leaves).backward()
    for k in theta:
        torch.testing.assert_close(leaves[k].grad, got[k], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- non-symmetric roots


@pytest.mark.parametrize(
    "solve",
    [solve_normal_cg, functools.partial(solve_neumann, maxiter=200)],
    ids=["normal_cg", "neumann"],
)
def test_fixed_point_gradient_with_a_nonsymmetric_jacobian(solve):
    n = 5
    W = 0.3 * torch.randn(n, n, dtype=DT) / n**0.5  # a contraction: the iteration converges

    @custom_root(lambda x, theta: x - torch.tanh(W @ x + theta), solve=solve)
    def fixed_point(init, theta):
        x = init
        for _ in range(100):
            x = torch.tanh(W @ x + theta)
        return x

    theta, v = torch.randn(n, dtype=DT), torch.randn(n, dtype=DT)
    got = torch.func.grad(lambda t: v @ fixed_point(torch.zeros(n, dtype=DT), t))(theta)
    x = fixed_point(torch.zeros(n, dtype=DT), theta)
    D = torch.diag(1 - torch.tanh(W @ x + theta) ** 2)
    expected = D @ torch.linalg.solve((torch.eye(n, dtype=DT) - D @ W).T, v)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- arguments and errors


def test_only_floating_tensor_arguments_are_differentiated():
    @custom_root(lambda x, data, scale, *, shift: x - scale * data["a"] - shift)
    def solver(init, data, scale, *, shift):
        return scale * data["a"] + shift

    data = {"a": torch.ones(3, dtype=DT, requires_grad=True), "index": torch.arange(3)}
    scale = torch.tensor(2.0, dtype=DT, requires_grad=True)
    x = solver(torch.zeros(3, dtype=DT), data, scale, shift=1.5)
    x.sum().backward()
    torch.testing.assert_close(data["a"].grad, torch.full((3,), 2.0, dtype=DT))
    torch.testing.assert_close(scale.grad, torch.tensor(3.0, dtype=DT))


def test_mismatched_optimality_structure_names_the_problem():
    @custom_root(lambda x, theta: x["a"] - theta)  # a tensor where x is a dict
    def solver(init, theta):
        return {"a": theta.clone()}

    theta = torch.ones(2, dtype=DT, requires_grad=True)
    with pytest.raises(ValueError, match="optimality_fn"):
        solver(None, theta)["a"].sum().backward()


def test_mismatched_optimality_shape_names_the_path():
    @custom_root(lambda x, theta: {"a": x["a"].sum() - theta.sum()})
    def solver(init, theta):
        return {"a": theta.clone()}

    theta = torch.ones(2, dtype=DT)
    with pytest.raises(ValueError, match=r"\['a'\].*shape \(\)"):
        torch.func.grad(lambda t: solver(None, t)["a"].sum())(theta)


def test_bad_solver_outputs_raise_type_errors():
    @custom_root(lambda x, theta: x - theta)
    def integer_solver(init, theta):
        return {"n": torch.tensor(3)}

    with pytest.raises(TypeError, match=r"\['n'\].*torch.int64"):
        integer_solver(None, torch.ones(1, dtype=DT))

    @custom_root(lambda x, theta: x - theta, has_aux=True)
    def no_aux(init, theta):
        return theta

    with pytest.raises(TypeError, match="pair"):
        no_aux(None, torch.ones(1, dtype=DT))
