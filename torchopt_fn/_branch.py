"""`branch`: take one of two computations on a 0-d boolean tensor, eagerly or traced.

optax writes data-dependent steps (accumulate or apply, skip a non-finite step) with
``lax.cond``. Here the condition is read once where that is free of tracing (eager code, also
under `torch.func.grad`), and only the chosen branch runs. Under `torch.compile` and
`torch.func.vmap` the condition cannot be read: both branches run and ``torch.where`` picks
leaf by leaf, one graph with no break, the same numbers (``lax.cond`` under ``vmap`` does the
same). The branches must return trees of the same structure, shapes and dtypes.

A periodic refresh (an eigendecomposition every ten steps) would then cost its full price on
every step. ``branch(..., lazy=True)`` makes it a ``torch.cond``, which Dynamo traces into one
graph holding both branches and which runs only the chosen one. It applies while Dynamo
traces, under no `torch.func` transform, where no gradient flows into the operands; otherwise
``torch.where`` picks as above (and differentiates as eagerly). It is for expensive branches:
for a cheap one ``torch.where`` fuses into the surrounding kernels and ``torch.cond`` costs
more (measured on 20 tensors of 256 x 256, CPU: a step 2x slower, compiling 1.5x longer).

``torch.cond`` (torch 2.13) refuses branch inputs that alias one another and outputs that
alias inputs, and Dynamo lifts a property such as ``x.mT`` of a tensor from outside a branch
as a second input aliasing ``x``. So the lazy branches take their tensors as ``operands``,
which are copied once per step (pass what the expensive branch reads, not whole states),
capture no tensor of their own (nor make a tensor constant: Inductor leaves it unbound),
change no outside Python object, and return trees of tensors (copied, contiguous: the
branches' strides must agree) and `None`. A float operand enters the branches as a 0-d
float64 tensor, since Dynamo makes a float symbolic once the same code is compiled with
another value, and ``torch.cond`` takes no symbolic float.

`while_loop` does the same for loops (optax's ``lax.while_loop``): eagerly it stops when its
condition fails; traced, it runs its maximal number of trips and ``torch.where`` freezes the
state once the condition has failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import torch

from torchopt_fn.tree._flatten import (
    ParamList,
    _is_namedtuple,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_unflatten,
)

T = TypeVar("T")

__all__ = ["branch", "concrete", "while_loop"]


def concrete(pred: torch.Tensor | bool) -> bool | None:
    """``pred`` as a Python bool, or None while it is being traced (compile, vmap)."""
    if isinstance(pred, bool):
        return pred
    if torch.compiler.is_compiling():
        return None
    try:
        return bool(pred)
    except RuntimeError:  # a batched tensor under vmap: data-dependent control flow
        return None


def branch(
    pred: torch.Tensor | bool,
    if_true: Callable[..., T],
    if_false: Callable[..., T],
    *operands: Any,
    lazy: bool = False,
) -> T:
    """``if_true(*operands)`` where ``pred`` holds, else ``if_false(*operands)``.

    See the module docstring; ``lazy`` runs only the chosen branch when compiled too.
    """
    known = concrete(pred)
    if known is not None:
        return if_true(*operands) if known else if_false(*operands)
    if lazy and _lazy_applies(pred, operands):
        return _cond(pred, if_true, if_false, operands)
    a, b = if_true(*operands), if_false(*operands)
    return tree_map(lambda x, y: torch.where(pred, x, y), a, b)


def _lazy_applies(pred: torch.Tensor | bool, operands: tuple) -> bool:
    """Whether ``torch.cond`` may pick: Dynamo tracing, under no `torch.func` transform (under
    vmap the predicate is batched, and ``torch.where`` is also what ``lax.cond`` does), and
    no gradient to carry through the branch (``torch.where`` differentiates as eagerly)."""
    if not (
        torch.compiler.is_dynamo_compiling()
        and not torch._C._are_functorch_transforms_active()
        and isinstance(pred, torch.Tensor)
        and pred.numel() == 1
    ):
        return False
    if not torch.is_grad_enabled():
        return True
    return not any(x.requires_grad for x in tree_leaves(operands) if isinstance(x, torch.Tensor))


def _cond(
    pred: torch.Tensor, if_true: Callable[..., T], if_false: Callable[..., T], operands: tuple
) -> T:
    leaves, spec = tree_flatten(operands)
    # ``torch.cond`` takes symbolic ints but not symbolic floats, which Dynamo makes of a
    # float hyperparameter once a second compile of the same code sees another value (and
    # which cannot be told from a constant while tracing): float operands enter the
    # branches as 0-d float64 tensors.
    leaves = [
        torch.scalar_tensor(x, dtype=torch.float64) if type(x) is float else x for x in leaves
    ]
    is_tensor = [isinstance(x, torch.Tensor) for x in leaves]
    # Copies: operands may be views of one buffer (unstacked state, bucketed gradients).
    tensors = [x.clone() for x, t in zip(leaves, is_tensor) if t]
    others = [None if t else x for x, t in zip(leaves, is_tensor)]  # captured: no tensors

    def body(fn: Callable[..., T]) -> Callable[..., Any]:
        def run(*xs: torch.Tensor) -> Any:
            # Dynamo records a property (``x.mT``) of a tensor from outside the branch in the
            # outer graph, as one more input aliasing ``x``; of a view made here, it does not.
            it = iter([x.view(x.shape) for x in xs])
            full = [next(it) if t else x for x, t in zip(others, is_tensor)]
            return _encode(fn(*tree_unflatten(spec, full)))

        return run

    return _decode(torch.cond(pred.reshape(()), body(if_true), body(if_false), tensors))


class _Nothing(NamedTuple):
    """A `None` leaf while inside ``torch.cond``, whose outputs cannot be `None`."""


# An adapter's `ParamList` crosses ``torch.cond`` (whose pytrees do not know it) as a
# one-entry dict under this key.
_PARAM_LIST = "torchopt_fn.ParamList"


def _encode(node: Any) -> Any:
    """A branch's result as ``torch.cond`` may return it: fresh contiguous tensors.

    Both branches must give the same strides, and LAPACK returns column-major matrices; a
    copy also keeps the outputs from aliasing the inputs or each other.
    """
    if isinstance(node, torch.Tensor):
        return node.clone(memory_format=torch.contiguous_format)
    if node is None:
        return _Nothing()
    cls = type(node)
    if cls is list or cls is tuple:
        return cls([_encode(c) for c in node])
    if cls is ParamList:
        return {_PARAM_LIST: [_encode(c) for c in node]}
    if cls is dict:
        return {k: _encode(v) for k, v in node.items()}
    if _is_namedtuple(cls):
        return cls(*[_encode(c) for c in node])
    raise TypeError(
        f"branch(lazy=True): a branch returned a {cls.__name__}; lazy branches return "
        "tensors and None in lists, tuples, dicts and NamedTuples."
    )


def _decode(node: Any) -> Any:
    """`_encode`'s tree with the `None` leaves and `ParamList` nodes back."""
    cls = type(node)
    if cls is _Nothing:
        return None
    if cls is list or cls is tuple:
        return cls([_decode(c) for c in node])
    if cls is dict:
        if len(node) == 1 and _PARAM_LIST in node:
            return ParamList([_decode(c) for c in node[_PARAM_LIST]])
        return {k: _decode(v) for k, v in node.items()}
    if isinstance(node, tuple):
        return cls(*[_decode(c) for c in node])
    return node


def while_loop(
    cond: Callable[[Any], torch.Tensor], body: Callable[[Any], Any], state: Any, trips: int
) -> Any:
    """``while cond(state): state = body(state)``, at most ``trips`` times, eager or traced.

    The condition is read while it can be (it may stop being readable midway: under vmap,
    once the state depends on the batched inputs); from then on the remaining trips run
    with ``torch.where`` freezing the members whose search is over.
    """
    done = 0
    while done < trips:
        known = concrete(cond(state))
        if known is None:
            break
        if not known:
            return state
        state = body(state)
        done += 1
    for _ in range(trips - done):
        active = cond(state)
        new = body(state)
        state = tree_map(lambda n, o, a=active: torch.where(a, n, o), new, state)
    return state
