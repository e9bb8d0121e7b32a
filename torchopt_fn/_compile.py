"""`compile_step`: update + apply as one compiled graph, optionally donating its inputs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation, OptState, Params, Updates
from torchopt_fn._update import apply_updates, copy_pairs
from torchopt_fn.tree._flatten import (
    leaf_paths,
    path_str,
    tree_flatten,
    tree_leaves,
    tree_unflatten,
)

__all__ = ["compile_step"]


def compile_step(
    tx: GradientTransformation,
    *,
    donate: bool = True,
    stochastic_rounding: bool = False,
    **compile_kwargs: Any,
) -> Callable[[Params, Updates, OptState], tuple[Params, OptState]]:
    """Compile ``update`` + ``apply_updates`` into one graph with ``torch.compile(fullgraph=True)``.

    The step is traced once; later calls do not recompile as the step count, schedules or
    injected hyperparameters (0-d tensors in the state) change.

    With ``donate=True`` (like JAX's donated buffers) the new params and state are written
    into the input tensors, which are returned: no parameter- or state-sized temporary
    survives the call, and Inductor can update in place. Treat the inputs as consumed. (0-d
    state such as the step count is copied back just after the graph, not inside it, to step
    around an Inductor bug.) With ``donate=False`` the step is pure and returns new tensors.
    Donated params and state must not share memory (a tied parameter listed at two paths):
    that is refused, since one write would clobber the other.

    Inputs are checked as ``tx.update`` and `apply_updates` check them eagerly: a gradient
    whose shape differs from its parameter's, or a state of other params, raises the same
    `ValueError` (naming the path) before anything is written.

    The first call compiles; its time grows with the number of tensors (about 0.4 s each on
    a small CPU). For element-wise optimizers, `ravel_tree` gives one flat tensor to compile.

    Args:
        tx: the transformation.
        donate: write results into the input params and state.
        stochastic_rounding: round bfloat16 and float16 params stochastically
            (`apply_updates`'s option; torch's global generator draws, compiled).
        **compile_kwargs: passed to `torch.compile` (e.g. ``mode="max-autotune-no-cudagraphs"``);
            ``fullgraph`` is always True. Inductor's ``options`` default to
            ``{"size_asserts": False}`` (Dynamo's guards check the inputs already).

    Returns:
        ``step(params, grads, state) -> (params, state)``. Extra keyword arguments of
        ``step`` (e.g. ``value=loss``) are forwarded to ``tx.update``.

    Raises:
        ValueError: from ``step``, for inputs the eager update would refuse, or aliased
            donated tensors.

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
    from torchopt_fn.wrappers._layout import flattened_inner  # (wrappers import this module)

    inner = flattened_inner(tx)
    if inner is not None:
        return _flat_step(inner, donate, stochastic_rounding, compile_kwargs)
    compile_kwargs = {**compile_kwargs, "fullgraph": True}
    if compile_kwargs.get("backend", "inductor") == "inductor" and "mode" not in compile_kwargs:
        # Inductor re-checks every input's size and stride on each call, which Dynamo's guards
        # already did: ~3 us per tensor, 10% of an AdamW step on 200 small tensors.
        compile_kwargs["options"] = {"size_asserts": False, **compile_kwargs.get("options", {})}

    def pure_step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        updates, new_state = tx.update(grads, state, params, **extra_args)
        return apply_updates(params, updates, stochastic_rounding=stochastic_rounding), new_state

    def explain(error: Exception, params: Params, grads: Updates, state: OptState, **extra: Any):
        # Dynamo reports an exception raised while tracing as `Unsupported`; the eager step
        # (pure: nothing is written) raises the user's error itself, or we re-raise Dynamo's.
        pure_step(params, grads, state, **extra)
        raise error

    if not donate:
        compiled_pure = torch.compile(pure_step, **compile_kwargs)

        def step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
            try:
                return compiled_pure(params, grads, state, **extra_args)
            except torch._dynamo.exc.TorchDynamoException as e:
                explain(e, params, grads, state, **extra_args)

        return step

    def donating_step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        new_params, new_state = pure_step(params, grads, state, **extra_args)
        pairs = copy_pairs(params, new_params, "compile_step") + copy_pairs(
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
    checked: list[tuple[int, ...]] = [()]  # the ids of the last inputs found free of aliasing

    def step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        leaves = tree_leaves((params, state))
        ids = tuple(map(id, leaves))  # the same objects every step: donation returns them
        if ids != checked[0]:
            _refuse_aliasing((params, state), [x for x in leaves if isinstance(x, torch.Tensor)])
            checked[0] = ids
        try:
            params, state, scalar_dsts, scalar_srcs = compiled(params, grads, state, **extra_args)
        except torch._dynamo.exc.TorchDynamoException as e:
            explain(e, params, grads, state, **extra_args)
        if scalar_dsts:
            with torch.no_grad():
                torch._foreach_copy_(scalar_dsts, scalar_srcs)
        return params, state

    return step


def _flat_step(
    inner: GradientTransformation,
    donate: bool,
    stochastic_rounding: bool,
    compile_kwargs: dict[str, Any],
) -> Callable[[Params, Updates, OptState], tuple[Params, OptState]]:
    """`compile_step` of ``flatten(inner)``: the graph holds the flat update only.

    Packing the leaves into one buffer per dtype and device (``torch.cat``) and copying the
    results back (``_foreach_copy_``) run eagerly around it, one kernel each: traced, they
    would be hundreds of small ops to compile. With ``donate``, the flat buffers are kept
    and reused (two parameter-sized buffers). The numbers are `flatten`'s.
    """
    from torchopt_fn.wrappers._layout import Layout, with_flat_masks

    layouts: dict[tuple, Layout] = {}  # per params structure, shapes, dtypes and devices
    flat_steps: dict[tuple, Callable[..., Any]] = {}  # per layout: its masks resolved
    buffers: dict[tuple, Any] = {}  # per layout: the flat params and grads, reused
    grad_buffers: dict[tuple, Any] = {}  # for params that are flat already

    def step(params: Params, grads: Updates, state: OptState, **extra_args: Any):
        leaves, spec = tree_flatten(params)
        grad_leaves = spec.flatten_up_to(grads)
        key = (spec, tuple((x.dtype, x.device, x.shape) for x in leaves))
        layout = layouts.get(key)
        if layout is None:
            layout = layouts[key] = Layout(leaves)
            flat_steps[key] = compile_step(
                with_flat_masks(inner, params, layout),
                donate=donate,
                stochastic_rounding=stochastic_rounding,
                **compile_kwargs,
            )
        flat_step = flat_steps[key]
        if donate and all(g is not None for g in grad_leaves):
            # Params that already are one flat buffer (`ravel_parameters_`) are updated where
            # they lie: no copy in or out.
            span = layout.span(leaves)
            if span is not None:
                flat_g = layout.span(grad_leaves)
                if flat_g is None and key not in grad_buffers:
                    flat_g = grad_buffers[key] = layout.pack(grad_leaves)
                elif flat_g is None:
                    flat_g = layout.pack(grad_leaves, out=grad_buffers[key])
                _, state = flat_step(span, flat_g, state, **extra_args)
                return params, state
        if key not in buffers or not donate:
            flat_p, flat_g = layout.pack(leaves), layout.pack(grad_leaves)
            buffers[key] = (flat_p, flat_g, layout.unpack(flat_p, leaves))
        else:  # donated: the flat params are ours to overwrite
            flat_p, flat_g, _ = buffers[key]
            layout.pack(leaves, out=flat_p)
            layout.pack(grad_leaves, out=flat_g)
        flat_params, state = flat_step(flat_p, flat_g, state, **extra_args)
        # A parameter without a gradient keeps its value (its slice of the buffer moved).
        if not donate:
            new = layout.unpack(flat_params, grad_leaves)
            return tree_unflatten(spec, [p if n is None else n for n, p in zip(new, leaves)]), state
        views = buffers[key][2]  # of the flat params, which the donated step wrote
        live = [(p, v) for p, v, g in zip(leaves, views, grad_leaves) if g is not None]
        if live:
            with torch.no_grad():
                torch._foreach_copy_([p for p, _ in live], [n for _, n in live])
        return params, state

    return step


def _memory_span(t: torch.Tensor) -> tuple[int, int]:
    """The byte range of ``t``'s elements in its storage."""
    if t.numel() == 0:
        return 0, 0
    start = t.storage_offset()
    last = start + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return start * t.element_size(), (last + 1) * t.element_size()


def _refuse_aliasing(tree: Any, tensors: list[torch.Tensor]) -> None:
    """Raise if two donated tensors share memory: writing one would clobber the other."""
    by_storage: dict[int, list[tuple[int, int, int]]] = {}
    for i, t in enumerate(tensors):
        if t.numel() == 0 or t.device.type == "meta":
            continue
        start, end = _memory_span(t)
        by_storage.setdefault(t.untyped_storage().data_ptr(), []).append((start, end, i))
    for spans in by_storage.values():
        spans.sort()
        for (_, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
            if start_b < end_a:
                paths = [
                    path_str(p)
                    for p, x in zip(leaf_paths(tree), tree_leaves(tree))
                    if isinstance(x, torch.Tensor)
                ]
                raise ValueError(
                    f"compile_step(donate=True): (params, state){paths[a]} and "
                    f"(params, state){paths[b]} share memory (a tied parameter?); donation "
                    "would write one over the other. Untie them, or use donate=False."
                )
