"""`branch(..., lazy=True)`: compiled, only the taken branch runs.

The proof is structural, not timed: the profiler lists the linear-algebra kernels each
compiled step ran, and they must be those the eager step ran (which reads the condition),
step by step. Where a gradient flows into the branch, and under vmap, ``torch.where`` still
picks; the numbers are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.profiler import ProfilerActivity, profile

from tests.helpers import assert_trees_close
from torchopt_fn._branch import branch
from torchopt_fn.contrib._galore import galore
from torchopt_fn.contrib._psgd import psgd_kron
from torchopt_fn.contrib._shampoo import shampoo
from torchopt_fn.contrib._soap import soap
from torchopt_fn.tree._flatten import ParamList

F64 = torch.float64
KERNELS = ("linalg_eigh", "linalg_qr", "linalg_svd", "linalg_solve_triangular")


def _kernels(fn: Callable[[], Any]) -> tuple[Any, set[str]]:
    """``fn()`` and the names of the `KERNELS` it ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return out, {k for e in prof.events() for k in KERNELS if k in e.name}


def _conds(counter: CompileCounterWithBackend) -> int:
    return sum(
        node.target is torch.ops.higher_order.cond
        for graph in counter.graphs
        for node in graph.graph.nodes
    )


class Refreshed(NamedTuple):
    """A NamedTuple with a `None` field, as the branches' results."""

    basis: torch.Tensor
    nothing: Any


def _refresh(pred: torch.Tensor, s: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> Any:
    """A lazy branch returning a NamedTuple, a `None` leaf, a `ParamList`, an operand as it
    came (an alias) against LAPACK's column-major eigenvectors (other strides)."""

    def fresh(s: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> Any:
        vectors = torch.linalg.eigh(s).eigenvectors
        return Refreshed(vectors, None), ParamList([vectors.mT @ q * scale, None])

    return branch(
        pred,
        fresh,
        lambda s, q, scale: (Refreshed(q, None), ParamList([q * scale, None])),
        s,
        q,
        scale,
        lazy=True,
    )


def _symmetric(seed: int) -> torch.Tensor:
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x @ x.T


def test_lazy_branch_compiled_runs_only_the_taken_branch_and_equals_eager():
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    step = torch.compile(_refresh, backend=counter, fullgraph=True)
    q, scale = torch.eye(4, dtype=F64), torch.tensor(2.0, dtype=F64)
    for i, take in enumerate([True, False, True, False]):  # autograd on, nothing to carry
        pred, s = torch.tensor(take), _symmetric(i)
        with torch.compiler.set_stance("default" if i == 0 else "fail_on_recompile"):
            out, ran = _kernels(lambda: step(pred, s, q, scale))  # noqa: B023
        assert_trees_close(out, _refresh(pred, s, q, scale), rtol=0, atol=0)
        assert type(out[0]) is Refreshed and type(out[1]) is ParamList
        assert out[0].nothing is None and out[1][1] is None
        assert out[0].basis is not q  # a fresh tensor
        if i > 0:  # the first call also traces (fake kernels)
            assert ran == ({"linalg_eigh"} if take else set())
    assert _conds(counter) == 1


def test_lazy_branch_selects_with_where_when_a_gradient_flows_into_it():
    """An operand requiring grad: one graph with no ``torch.cond``; gradients as eagerly."""
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    step = torch.compile(_refresh, backend=counter, fullgraph=True)
    q = torch.eye(4, dtype=F64)
    for take in (True, False):
        grads = []
        for fn in (_refresh, step):
            scale = torch.tensor(2.0, dtype=F64, requires_grad=True)
            out = fn(torch.tensor(take), _symmetric(0), q, scale)
            grads.append(torch.autograd.grad(out[1][0].sum(), scale, allow_unused=True)[0])
        assert_trees_close(grads[1], grads[0], rtol=1e-12)
    assert _conds(counter) == 0


def test_lazy_branch_under_vmap_picks_each_members_branch():
    """A batched predicate: both branches and ``torch.where``, eagerly and compiled."""
    preds = torch.tensor([True, False, True])
    ss = torch.stack([_symmetric(i) for i in range(3)])
    q, scale = torch.eye(4, dtype=F64), torch.tensor(2.0, dtype=F64)

    def tensors(pred: torch.Tensor, s: torch.Tensor) -> list[torch.Tensor]:
        (refreshed, params) = _refresh(pred, s, q, scale)
        return [refreshed.basis, params[0]]

    loop = [tensors(p, s) for p, s in zip(preds, ss)]
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    vmapped = torch.func.vmap(tensors)
    with torch.no_grad():
        for fn in (vmapped, torch.compile(vmapped, backend=counter, fullgraph=True)):
            out = fn(preds, ss)
            assert_trees_close([torch.stack(xs) for xs in zip(*loop)], out, rtol=1e-12)
    assert _conds(counter) == 0


def _params() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=gen, dtype=F64),
        "v": torch.randn(4, 3, generator=gen, dtype=F64),  # stacked with "w"
    }


# Each refreshes on some of the 6 steps: SOAP builds its bases with `eigh` on the first and
# runs a QR power step on every third; Shampoo its inverse roots (`eigh`) on every third;
# GaLore its projectors (SVD) on every third; PSGD fits (triangular solves) on a coin flip.
OPTIMIZERS = {
    "soap": lambda: soap(0.05, precondition_frequency=3),
    "shampoo": lambda: shampoo(0.05, precondition_frequency=3),
    "galore": lambda: galore(0.05, rank=2, update_proj_gap=3),
    "psgd_kron": lambda: psgd_kron(0.05, preconditioner_update_probability=0.5),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_compiled_refresh_runs_only_on_the_steps_eager_runs_it(name: str):
    """One graph for all steps, the eager numbers, and each step's kernels those of eager.

    The gradients are views of one buffer, as with bucketed gradients: ``torch.cond`` refuses
    aliasing inputs, which the lazy branches never see (their operands are copies).
    """
    tx, params = OPTIMIZERS[name](), _params()
    gen = torch.Generator().manual_seed(1)
    grads = []
    for _ in range(6):
        flat = torch.randn(24, generator=gen, dtype=F64)
        grads.append({"w": flat[:12].view(4, 3), "v": flat[12:].view(4, 3)})
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(tx.update, backend=counter, fullgraph=True)
    with torch.no_grad():
        compiled(grads[0], tx.init(params), params)  # traces (its kernels run on fake tensors)
        runs = []
        for update in (tx.update, compiled):
            state, steps = tx.init(params), []
            for g in grads:
                with torch.compiler.set_stance("fail_on_recompile"):
                    (u, state), ran = _kernels(lambda: update(g, state, params))  # noqa: B023
                steps.append((u, ran))
            runs.append((steps, state))
    (eager, eager_state), (steps, state) = runs
    assert_trees_close(
        ([u for u, _ in steps], state), ([u for u, _ in eager], eager_state), rtol=1e-12
    )
    assert [ran for _, ran in steps] == [ran for _, ran in eager]
    assert any(ran for _, ran in eager) and not all(ran for _, ran in eager)
    assert _conds(counter) >= 1


# The float hyperparameter that reaches a lazy branch (Shampoo's b2 and eps, PSGD's
# precond_lr): the second compile of the same code with another value makes it symbolic.
AGAIN = {
    "shampoo": lambda x: shampoo(0.05, b2=x, precondition_frequency=3),
    "psgd_kron": lambda x: psgd_kron(0.05, preconditioner_update_probability=0.5, precond_lr=x),
}


@pytest.mark.parametrize("name", AGAIN)
def test_lazy_branch_compiles_again_when_a_float_hyperparameter_changes(name: str):
    """``torch.cond`` refuses symbolic floats; the branch gets them as 0-d tensors."""
    params = _params()
    grads = [{k: torch.randn_like(v) for k, v in params.items()} for _ in range(4)]
    torch._dynamo.reset()
    for x in (0.5, 0.25):
        tx = AGAIN[name](x)
        compiled = torch.compile(tx.update, backend="aot_eager", fullgraph=True)
        runs = []
        for update in (tx.update, compiled):
            state, us = tx.init(params), []
            for g in grads:
                u, state = update(g, state, params)
                us.append(u)
            runs.append((us, state))
        assert_trees_close(runs[1], runs[0], rtol=1e-12)


@pytest.mark.slow
def test_psgd_kron_fits_under_inductor_with_many_same_shape_leaves():
    """The leaves' words reach the lazy fit as an operand: a tensor constant made inside a
    ``torch.cond`` branch is left unbound by Inductor ("non-tensor input")."""
    gen = torch.Generator().manual_seed(2)
    params = {f"w{i}": torch.randn(3, 2, generator=gen) for i in range(12)}
    tx = psgd_kron(0.05, preconditioner_update_probability=1.0)
    torch._dynamo.reset()
    compiled = torch.compile(tx.update, fullgraph=True)
    runs = []
    for update in (tx.update, compiled):
        state, us = tx.init(params), []
        for seed in range(3):
            gen = torch.Generator().manual_seed(10 + seed)
            g = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
            u, state = update(g, state, params)
            us.append(u)
        runs.append((us, state))
    assert_trees_close(runs[1], runs[0], rtol=1e-5, atol=1e-6)
