"""`branch`: take one of two computations on a 0-d boolean tensor, eagerly or traced.

optax writes data-dependent steps (accumulate or apply, skip a non-finite step) with
``lax.cond``. Here the condition is read once where that is free of tracing (eager code, also
under `torch.func.grad`), and only the chosen branch runs. Under `torch.compile` and
`torch.func.vmap` the condition cannot be read: both branches run and ``torch.where`` picks
leaf by leaf, one graph with no break, the same numbers (``lax.cond`` under ``vmap`` does the
same). The branches must return trees of the same structure, shapes and dtypes.

`while_loop` does the same for loops (optax's ``lax.while_loop``): eagerly it stops when its
condition fails; traced, it runs its maximal number of trips and ``torch.where`` freezes the
state once the condition has failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from torchopt_fn.tree._flatten import tree_map

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


def branch(pred: torch.Tensor | bool, if_true: Callable[[], T], if_false: Callable[[], T]) -> T:
    """``if_true()`` where ``pred`` holds, else ``if_false()``: see the module docstring."""
    known = concrete(pred)
    if known is not None:
        return if_true() if known else if_false()
    a, b = if_true(), if_false()
    return tree_map(lambda x, y: torch.where(pred, x, y), a, b)


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
