"""`compile_step`: update + apply as one compiled graph, optionally donating its inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn import _tree
from torchopt_fn._base import GradientTransformation, OptState, Params, Updates
from torchopt_fn._update import apply_updates

__all__ = ["compile_step", "copy_into_"]


def copy_into_(dst: Any, src: Any) -> Any:
    """Copy every tensor leaf of ``src`` into the matching leaf of ``dst`` in place; return ``dst``.

    Leaves that are the same object, or `None`, are skipped.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> dst = {"w": torch.zeros(2)}
        >>> tf.copy_into_(dst, {"w": torch.ones(2)})["w"]
        tensor([1., 1.])
    """
    pairs = _copy_pairs(dst, src, "copy_into_")
    with torch.no_grad():
        for d, s in pairs:
            d.copy_(s)
    return dst


def _copy_pairs(dst: Any, src: Any, what: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (destination, source) tensor leaves of ``dst`` and ``src`` that need a copy."""
    dst_leaves, spec = _tree.tree_flatten(dst)
    src_leaves = _tree._flatten_like(spec, dst, src, what)
    return [
        (d, s)
        for d, s in zip(dst_leaves, src_leaves)
        if isinstance(d, torch.Tensor) and isinstance(s, torch.Tensor) and d is not s
    ]


def compile_step(
    tx: GradientTransformation, *, donate: bool = True, **compile_kwargs: Any
) -> Callable[[Params, Updates, OptState], tuple[Params, OptState]]:
    """Compile ``update`` + ``apply_updates`` into one graph with ``torch.compile(fullgraph=True)``.

    The step is traced once; later calls do not recompile as the step count, schedules or
    injected hyperparameters (0-d tensors in the state) change.

    With ``donate=True`` (like JAX's donated buffers) the new params and state are written
    into the input tensors, which are returned: no parameter- or state-sized temporary
    survives the call, and Inductor can update in place. Treat the inputs as consumed. (0-d
    state such as the step count is copied back just after the graph, not inside it, to step
    around an Inductor bug.) With ``donate=False`` the step is pure and returns new tensors.

    The first call compiles; its time grows with the number of tensors (about 0.4 s each on
    a small CPU). For element-wise optimizers, `ravel_tree` gives one flat tensor to compile.

    Args:
        tx: the transformation.
        donate: write results into the input params and state.
        **compile_kwargs: passed to `torch.compile` (e.g. ``mode="max-autotune-no-cudagraphs"``);
            ``fullgraph`` is always True. Inductor's ``options`` default to
            ``{"size_asserts": False}`` (Dynamo's guards check the inputs already).

    Returns:
        ``step(params, grads, state) -> (params, state)``. Extra keyword arguments of
        ``step`` (e.g. ``value=loss``) are forwarded to ``tx.update``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.adamw(1e-2)
        >>> step = tf.compile_step(tx)
        >>> params = {"w": torch.ones(3)}
        >>> state = tx.init(params)
        >>> params, state = step(params, {"w": torch.ones(3)}, state)
        >>> params["w"]
        tensor([0.9900, 0.9900, 0.9900])
    """
    compile_kwargs = {**compile_kwargs, "fullgraph": True}
    if compile_kwargs.get("backend", "inductor") == "inductor" and "mode" not in compile_kwargs:
        # Inductor re-checks every input's size and stride on each call, which Dynamo's guards
        # already did: ~3 us per tensor, 10% of an AdamW step on 200 small tensors.
        compile_kwargs["options"] = {"size_asserts": False, **compile_kwargs.get("options", {})}

    def pure_step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        updates, new_state = tx.update(grads, state, params, **extra_args)
        return apply_updates(params, updates), new_state

    if not donate:
        return torch.compile(pure_step, **compile_kwargs)

    def donating_step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        new_params, new_state = pure_step(params, grads, state, **extra_args)
        pairs = _copy_pairs(params, new_params, "compile_step") + _copy_pairs(
            state, new_state, "compile_step"
        )
        # Inside the graph one `copy_` per tensor: Inductor (torch 2.13) miscompiles a single
        # `_foreach_copy_` into donated inputs, and can drop the write into a 0-d input computed
        # next to other writes (NovoGrad's per-tensor norms). 0-d results are therefore returned
        # and copied after the graph; tests/test_compile.py runs both cases through Inductor.
        with torch.no_grad():
            for d, s in pairs:
                if d.dim() > 0:
                    d.copy_(s)
        scalars = [(d, s) for d, s in pairs if d.dim() == 0]
        return params, state, [d for d, _ in scalars], [s for _, s in scalars]

    compiled = torch.compile(donating_step, **compile_kwargs)

    def step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        params, state, scalar_dsts, scalar_srcs = compiled(params, grads, state, **extra_args)
        if scalar_dsts:
            with torch.no_grad():
                torch._foreach_copy_(scalar_dsts, scalar_srcs)
        return params, state

    return step
