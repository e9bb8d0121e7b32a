"""`gathered`: run a transformation on whole tensors when its leaves are DTensors.

Matrix preconditioners (Shampoo, SOAP, PSGD Kron, GaLore's projections) and L-BFGS's flat
history need a parameter's whole matrix: an eigendecomposition of a sharded Gram matrix, or a
flat view of an unevenly sharded tensor, has no shard-local form. Under FSDP2 or tensor
parallelism their update gathers each update (and parameter) whole, runs the one
implementation as on one process, and cuts the result back to each leaf's placement. Every
rank computes the same numbers, so the state stays whole, ordinary and identical on every rank
(no communication to keep it consistent, and it loads on any number of ranks), at the memory
cost of one process's state per rank. Leaves that are not DTensors take the plain path, so
nothing changes under one process, `torch.compile`, `torch.func.vmap` or `grad`.
"""

from __future__ import annotations

from torchopt_fn._base import GradientTransformation
from torchopt_fn.tree._dtensor import any_dtensor, place_like, plain
from torchopt_fn.tree._flatten import tree_leaves, tree_map

__all__: list[str] = []


def gathered(inner: GradientTransformation) -> GradientTransformation:
    """``inner``, run on whole tensors when its leaves are DTensors (see the module docstring)."""

    def whole(tree):
        return tree_map(plain, tree)

    def init_fn(params):
        return inner.init(whole(params) if any_dtensor(tree_leaves(params)) else params)

    def update_fn(updates, state, params=None, **extra_args):
        if not any_dtensor(tree_leaves(updates)):
            return inner.update(updates, state, params, **extra_args)
        params = None if params is None else whole(params)
        out, state = inner.update(whole(updates), state, params, **extra_args)
        return tree_map(place_like, out, updates), state

    return GradientTransformation(init_fn, update_fn)
