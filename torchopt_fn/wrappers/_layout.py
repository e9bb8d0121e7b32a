"""`flatten`: run a transformation on one flat buffer per dtype and device."""

from __future__ import annotations

from typing import Any

import torch

from torchopt_fn._base import GradientTransformation, Params
from torchopt_fn._combine import _mask_leaves
from torchopt_fn._record import rebuild, record_hyperparams, recorded_arguments, recorded_nodes
from torchopt_fn.tree._dtensor import any_dtensor
from torchopt_fn.tree._flatten import tree_flatten, tree_structure, tree_unflatten
from torchopt_fn.tree._ops import check_like

__all__ = ["flatten"]

# The arguments that select leaves for a part of a transformation (weight decay, `masked`).
_MASK_ARGUMENTS = ("mask", "weight_decay_mask")


def flattened_inner(tx: GradientTransformation) -> GradientTransformation | None:
    """The inner transformation of a `flatten` (for `compile_step`'s fast path), or None."""
    if getattr(tx, "factory", None) is flatten:
        return recorded_arguments(tx)["inner"]
    return None


# Transformations whose maths reads each tensor whole (its norm, its shape, its rows and
# columns, a per-example axis), that select leaves, or that hand the params to a user's
# function (an objective, a gradient function): on one flat buffer they would compute
# something else, or fail far from the cause.
PER_TENSOR = frozenset(
    {
        "adafactor",
        "adaptive_grad_clip",
        "caution",
        "cautious_adamw",
        "cautious_lion",
        "clip_by_block_rms",
        "differentially_private_aggregate",
        "dpsgd",
        "freeze",
        "fromage",
        "galore",
        "hutchinson_estimator_diag_hessian",
        "lamb",
        "lars",
        "mars",
        "muon",
        "novograd",
        "partition",
        "psgd_kron",
        "sam",
        "scale_by_factored_rms",
        "scale_by_galore",
        "scale_by_mars",
        "scale_by_muon",
        "scale_by_novograd",
        "scale_by_param_block_norm",
        "scale_by_param_block_rms",
        "scale_by_psgd_kron",
        "scale_by_shampoo",
        "scale_by_sm3",
        "scale_by_soap",
        "scale_by_sophia",
        "scale_by_torch_adafactor",
        "scale_by_torch_muon",
        "scale_by_trust_ratio",
        "selective_transform",
        "shampoo",
        "sm3",
        "soap",
        "sophia",
    }
)


class Layout:
    """Where each live leaf goes: one group per (dtype, device), leaves in tree order."""

    def __init__(self, leaves: list[Any]):
        self.groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for i, x in enumerate(leaves):
            self.groups.setdefault((x.dtype, x.device), []).append(i)
        self.shapes = [x.shape for x in leaves]

    def pack(self, leaves: list[Any], out: Any = None) -> Any:
        """One flat tensor per group (a bare tensor for one group); `None` counts as zeros.

        With ``out`` (an earlier result), the leaves are written into it: on CPU a fresh
        buffer of many megabytes costs more in page faults than the copy itself.
        """
        outs = (out,) if isinstance(out, torch.Tensor) else out
        flats = []
        for g, ((dtype, device), idx) in enumerate(self.groups.items()):
            parts = [
                torch.zeros(self.shapes[i].numel(), dtype=dtype, device=device)
                if leaves[i] is None
                else leaves[i].reshape(-1)
                for i in idx
            ]
            flats.append(torch.cat(parts) if outs is None else torch.cat(parts, out=outs[g]))
        return flats[0] if len(flats) == 1 else tuple(flats)

    def span(self, leaves: list[Any]) -> torch.Tensor | None:
        """The flat tensor the leaves already are, if they are: one dtype and device, each
        contiguous, laid end to end in one storage in tree order (as `ravel_tree`'s views, or
        `ravel_parameters_`'s). Otherwise None: they must be packed."""
        if len(self.groups) != 1 or any(x is None or not x.is_contiguous() for x in leaves):
            return None
        first = leaves[0]
        storage, start = first.untyped_storage(), first.storage_offset()
        offset = start
        for x in leaves:
            if x.untyped_storage().data_ptr() != storage.data_ptr() or x.storage_offset() != offset:
                return None
            offset += x.numel()
        return first.new_empty(0).set_(storage, start, (offset - start,))

    def unpack(self, flats: Any, like: list[Any]) -> list[Any]:
        flats = (flats,) if isinstance(flats, torch.Tensor) else flats
        out: list[Any] = [None] * len(self.shapes)
        for flat, idx in zip(flats, self.groups.values()):
            sizes = [self.shapes[i].numel() for i in idx]
            for i, chunk in zip(idx, flat.split(sizes)):
                out[i] = None if like[i] is None else chunk.view(self.shapes[i])
        return out


def _has_masks(tx: GradientTransformation) -> bool:
    return any(
        recorded_arguments(node).get(name) is not None
        for node in recorded_nodes(tx)
        for name in _MASK_ARGUMENTS
    )


def with_flat_masks(
    inner: GradientTransformation, tree: Any, layout: Layout
) -> GradientTransformation:
    """``inner`` with each mask resolved against ``tree`` and laid out as ``layout`` lays out
    the leaves: element masks over the flat buffers (`masked` takes those), the same
    selection as on the tree. ``inner`` itself when it has no mask.

    ``layout`` holds the tensor leaves of ``tree`` (its `None` leaves left out).
    """
    if not _has_masks(inner):
        return inner
    leaves, _ = tree_flatten(tree)

    def replacements(factory: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for name in _MASK_ARGUMENTS:
            mask = arguments.get(name)
            if mask is None:
                continue
            what = f"flatten: {factory.__name__}'s {name} vs params"
            per_leaf, _ = _mask_leaves(mask(tree) if callable(mask) else mask, tree, what)
            out[name] = layout.pack(
                [
                    m
                    if isinstance(m, torch.Tensor)
                    else torch.full(x.shape, m, dtype=torch.bool, device=x.device)
                    for m, x in zip(per_leaf, leaves)
                    if x is not None
                ]
            )
        return out

    return rebuild(inner, replacements)


def _tensor_leaves(tree: Any, what: str) -> tuple[list[Any], Any]:
    leaves, spec = tree_flatten(tree)
    for x in leaves:
        if x is not None and not isinstance(x, torch.Tensor):
            raise TypeError(f"flatten: every {what} leaf must be a tensor or None, got {type(x)}.")
    return leaves, spec


@record_hyperparams
def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Run ``inner`` on the leaves concatenated into one flat buffer per dtype and device.

    For element-wise optimizers (`sgd`, `adam`, `adamw`, `lion`, `rmsprop`, ...) and global
    norms the maths is the same, and the state is one buffer per dtype and device instead of
    one tensor per leaf: far fewer tensors to trace when compiling. A single dtype and
    device (the usual case) gives ``inner`` one tensor, as optax does; several give it a
    tuple. Transformations that read tensors whole (per-tensor norms and trust ratios,
    factored moments, matrices, partitions) are refused. A `None` update enters the buffer as
    zeros (a buffer cannot skip part of itself) and comes out as `None`.

    Masks (a weight-decay ``mask``, `masked`) are resolved against the params' tree, once per
    structure, shapes, dtypes and devices (a mask function may read names and shapes, not
    values), and become element masks over the buffer: the same selection, with the masked
    part's state kept for the whole buffer.

    DTensor leaves (FSDP2, tensor parallel) cannot share a buffer: there ``inner`` runs on the
    tree as it is.

    Raises:
        ValueError: if ``inner`` contains a per-tensor transformation.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.flatten(tf.adam(0.1))
        >>> params = {"w": torch.zeros(2, 2), "b": torch.zeros(2)}
        >>> state = tx.init(params)
        >>> state[0].mu.shape
        torch.Size([6])
        >>> u, state = tx.update({"w": torch.ones(2, 2), "b": -torch.ones(2)}, state, params)
        >>> u["b"]
        tensor([0.1000, 0.1000])
    """
    refused = sorted({n.factory.__name__ for n in recorded_nodes(inner)} & PER_TENSOR)
    if refused:
        raise ValueError(
            f"flatten: {refused} read each tensor whole (norms, shapes, masks), so on one flat "
            "buffer they would compute something else; flatten only element-wise parts, e.g. "
            "chain(clip_by_block_rms(...), flatten(adam(...)))."
        )

    has_masks = _has_masks(inner)
    resolved: dict[Any, GradientTransformation] = {}  # per structure, shapes, dtypes, devices

    def masked_inner(tree: Any, leaves: list[Any], layout: Layout) -> GradientTransformation:
        if not has_masks:
            return inner
        if torch.compiler.is_compiling():  # traced once: no cache (nor its spec hashing)
            return with_flat_masks(inner, tree, layout)
        kinds = tuple(None if x is None else (x.shape, x.dtype, x.device) for x in leaves)
        key = (tree_structure(tree), kinds)
        if key not in resolved:
            resolved[key] = with_flat_masks(inner, tree, layout)
        return resolved[key]

    def init_fn(params: Params):
        leaves, _ = _tensor_leaves(params, "params")
        if any_dtensor(leaves):  # sharded leaves have no common buffer: run on the tree
            return inner.init(params)
        live = [x for x in leaves if x is not None]
        layout = Layout(live)
        return masked_inner(params, leaves, layout).init(layout.pack(live))

    def update_fn(updates, state, params=None, **extra_args):
        leaves, spec = _tensor_leaves(updates, "update")
        check_like(updates, params, "flatten")
        if any_dtensor(leaves):
            return inner.update(updates, state, params, **extra_args)
        if params is not None:
            param_leaves = spec.flatten_up_to(params)
            layout = Layout(param_leaves)
            flat_params = layout.pack(param_leaves)
            tx = masked_inner(params, param_leaves, layout)
        else:
            if any(x is None for x in leaves):
                raise ValueError("flatten: None updates need params (to know their shapes).")
            layout = Layout(leaves)
            flat_params = None
            tx = masked_inner(updates, leaves, layout)
        flat_updates, state = tx.update(layout.pack(leaves), state, flat_params, **extra_args)
        return tree_unflatten(spec, layout.unpack(flat_updates, leaves)), state

    return GradientTransformation(init_fn, update_fn)
