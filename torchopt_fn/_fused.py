"""torch's fused optimizer kernels, where a transformation is exactly their algorithm.

`torch._fused_adam_`, `_fused_adamw_` and `_fused_sgd_` update params and state in place in
one pass with no temporaries. They are guests: each assumes that every tensor it gets has the
parameter's shape and strides and is dense, and reads out of bounds otherwise (DESIGN.md §5).
So a kernel runs only where `fusable` proves that, and every other case takes the generic
path.

- A named optimizer (`adam`, `adamw`, `sgd`; `from_torch`'s Adam, AdamW and SGD) that is
  exactly a kernel's algorithm carries a `FusedPlan`: the one predicate "is this plain Adam /
  AdamW / SGD", decided from the arguments it was built with. The `Optimizer` adapter reads
  the plan of each group's *current* transformation (`fused_plan`), so every group override
  (``eps_root``, a schedule, ...) decides for itself.
- The functional `adam` and `adamw` run `_fused_adam_` eagerly on fresh copies of their
  moments (`with_fused_adam`): one pass instead of a dozen multi-tensor ops, still pure.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._record import recorded_arguments
from torchopt_fn._scalar import is_schedule, step_scalar
from torchopt_fn.tree._batched import one_value
from torchopt_fn.tree._flatten import tree_leaves
from torchopt_fn.tree._math import next_count, walked_count
from torchopt_fn.tree._ops import map_leaves, scalar_shape

__all__ = [
    "DenseLayout",
    "FusedPlan",
    "adam_plan",
    "attach_plan",
    "clip_grads",
    "dense_layout",
    "fusable",
    "fused_plan",
    "resolve_mask",
    "run_fused_",
    "sgd_plan",
    "torch_clip_coef",
    "with_fused_adam",
]

# torch.nn.utils.clip_grad_norm_'s addition to the total norm (`clip_by_torch_global_norm`).
_TORCH_CLIP_EPS = 1e-6

_FUSED_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})
_PLAIN_TENSORS = frozenset({torch.Tensor, torch.nn.Parameter})


class FusedPlan(NamedTuple):
    """Which fused kernel reproduces a transformation, and its options.

    ``kernel`` is ``"adam"`` (coupled weight decay), ``"adamw"`` (decoupled) or ``"sgd"``;
    ``options`` are the kernel's keyword arguments (``lr``, ``beta1``, ...), Python numbers.
    """

    kernel: str
    options: dict[str, Any]
    # AdamW's weight-decay mask as the optimizer was given it (a tree of bools or a function
    # of the params), or None: every parameter decays. `resolve_mask` turns it into one bool
    # per parameter, and `run_fused_` then runs the kernel on each side of it.
    mask: Any = None
    # ``(max_norm, norm_type)`` of a `clip_by_torch_global_norm` chained before the optimizer
    # (`fused_plan` finds it), or None; `clip_grads` applies it.
    clip: tuple[float, float] | None = None

    @property
    def state_keys(self) -> tuple[str, ...]:
        """torch's state keys the kernel reads and writes, per parameter."""
        if self.kernel == "sgd":
            return ("momentum_buffer",) if self.options["momentum"] else ()
        amsgrad = ("max_exp_avg_sq",) if self.options["amsgrad"] else ()
        return ("exp_avg", "exp_avg_sq", *amsgrad)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def adam_plan(
    decoupled: bool,
    lr: Any,
    b1: Any,
    b2: Any,
    eps: Any,
    weight_decay: Any,
    mask: Any = None,
    **flags: bool,
) -> FusedPlan | None:
    """The plan for Adam(W) with these values, or `None` where one is not a plain number.

    ``mask`` is AdamW's weight-decay mask; ``flags`` are the kernel's booleans (``amsgrad``,
    ``maximize``); both default to False.
    """
    values = (b1, b2, eps, weight_decay)
    if not all(map(_number, values)) or not (_number(lr) or is_schedule(lr)):
        return None
    options = dict(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay)
    options.update(amsgrad=flags.get("amsgrad", False), maximize=flags.get("maximize", False))
    if mask is not None and not (decoupled and weight_decay):
        mask = None  # nothing decays, or L2 (not masked by torch's kernel): no split needed
    return FusedPlan("adamw" if decoupled else "adam", options, mask)


def resolve_mask(plan: FusedPlan, params: Any) -> list[bool] | None:
    """``plan``'s mask as one bool per leaf of ``params`` (all True without a mask), or None
    where it selects parts of a leaf (an element mask): the generic path takes those."""
    leaves = tree_leaves(params)
    if plan.mask is None:
        return [True] * len(leaves)
    from torchopt_fn._combine import _mask_leaves  # (the combinators import this module)

    mask = plan.mask(params) if callable(plan.mask) else plan.mask
    flags, _ = _mask_leaves(mask, params, "adamw: mask vs params")
    return None if any(isinstance(m, torch.Tensor) for m in flags) else flags


def sgd_plan(
    lr: Any, momentum: Any, nesterov: bool, weight_decay: Any = 0.0, maximize: bool = False
) -> FusedPlan | None:
    """The plan for SGD (heavy-ball momentum without dampening), or `None`."""
    if not all(map(_number, (lr, momentum, weight_decay))):
        return None
    options = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    return FusedPlan("sgd", {**options, "maximize": maximize, "dampening": 0.0})


def fused_plan(tx: GradientTransformation) -> FusedPlan | None:
    """The fused plan ``tx`` carries, if it is exactly a kernel's algorithm.

    ``chain(clip_by_torch_global_norm(c, p), optimizer)`` (the everyday recipe) has the
    optimizer's plan with the clip in it, where the clip raises on nothing (no
    ``error_if_nonfinite``).
    """
    plan = getattr(tx, "fused_plan", None)
    if plan is not None or getattr(tx, "factory", None) is None or tx.factory.__name__ != "chain":
        return plan
    stages = recorded_arguments(tx)["transforms"]
    if len(stages) != 2 or getattr(stages[0], "factory", None) is None:
        return None
    clip, inner = stages[0], fused_plan(stages[1])
    if clip.factory.__name__ != "clip_by_torch_global_norm" or inner is None or inner.clip:
        return None
    arguments = recorded_arguments(clip)
    values = (arguments["max_norm"], arguments["norm_type"])
    if arguments["error_if_nonfinite"] or not all(map(_number, values)):
        return None
    return inner._replace(clip=(float(values[0]), float(values[1])))


def clip_grads(
    plan: FusedPlan, grads: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``grads`` clipped as ``plan.clip`` says (new tensors), and their total norm.

    The same operations as `clip_by_torch_global_norm` on these leaves, so the same bits.
    """
    max_norm, norm_type = plan.clip
    total, coef = torch_clip_coef(list(torch._foreach_norm(grads, norm_type)), max_norm, norm_type)
    return list(torch._foreach_mul(grads, coef.to(grads[0].dtype))), total


def torch_clip_coef(
    norms: list[torch.Tensor], max_norm: Any, norm_type: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``clip_grad_norm_``'s total norm of the leaves' ``norms`` and its factor,
    ``min(1, max_norm / (total + 1e-6))``, computed as torch computes them."""
    device = norms[0].device
    total = torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), norm_type)
    return total, torch.clamp(max_norm / (total + _TORCH_CLIP_EPS), max=1.0)


class _Fusable(GradientTransformation):
    """A transformation with a `FusedPlan` attached (and kept by the call record)."""

    fused_plan: FusedPlan | None


# --------------------------------------------------------------------------- the predicate


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill a block of memory exactly once (any order of axes)."""
    if t.is_contiguous():
        return True
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


class DenseLayout(NamedTuple):
    """The layout the fused kernels assume: every tensor shaped and strided as its parameter."""

    kind: tuple[type, torch.dtype, torch.device]  # one for all the parameters
    shapes: list[torch.Size]
    strides: list[tuple[int, ...]]

    def matches(self, tensors: list[torch.Tensor]) -> bool:
        """Whether ``tensors`` (one per parameter) are laid out exactly like the parameters."""
        kinds = {(type(t) in _PLAIN_TENSORS, t.dtype, t.device) for t in tensors}
        return (
            kinds == {(True, *self.kind[1:])}
            and [t.shape for t in tensors] == self.shapes
            and [t.stride() for t in tensors] == self.strides
        )


def dense_layout(params: list[torch.Tensor]) -> DenseLayout | None:
    """The parameters' layout, if a fused kernel can run on them: else `None`.

    Plain dense tensors, of one floating dtype the kernels support, on one CPU or CUDA device.
    """
    if not params:
        return None
    kinds = {(type(p), p.dtype, p.device) for p in params}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind[0] not in _PLAIN_TENSORS or kind[1] not in _FUSED_DTYPES:
        return None
    if kind[2].type not in ("cpu", "cuda") or not all(
        p.is_contiguous() or _dense(p) for p in params
    ):
        return None
    return DenseLayout(kind, [p.shape for p in params], [p.stride() for p in params])


def fusable(params: list[torch.Tensor], *others: list[torch.Tensor]) -> bool:
    """Whether a fused kernel may run on ``params`` and the matching tensors of ``others``.

    Every tensor must be a plain dense tensor with its parameter's shape, strides, dtype and
    device, on CPU or CUDA, in a floating dtype the kernels support. A stride-0 gradient
    (`torch.func.grad` of a ``.sum()``), a sliced view, or a channels_last parameter with a
    contiguous gradient all fail this, and take the generic path. (Whole-list comparisons:
    this runs on every step.) Sparse tensors are refused before this is asked.
    """
    layout = dense_layout(params)
    return layout is not None and all(layout.matches(ts) for ts in others)


# --------------------------------------------------------------------------- in place


@torch.compiler.disable  # a fused kernel gains nothing from tracing
def run_fused_(
    plan: FusedPlan,
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    state: list[list[torch.Tensor]],
    steps: list[torch.Tensor] | None,
) -> None:
    """Run ``plan``'s kernel in place; ``state`` lists the tensors of `FusedPlan.state_keys`.

    ``steps`` are each parameter's new step count (after this step), read by the Adam
    kernels. The caller has checked `fusable` on ``params``, ``grads`` and ``state``.
    """
    o = plan.options
    if plan.kernel == "sgd":
        torch._fused_sgd_(
            params,
            grads,
            state[0] if state else [],
            weight_decay=o["weight_decay"],
            momentum=o["momentum"],
            lr=o["lr"],
            dampening=o["dampening"],
            nesterov=o["nesterov"],
            maximize=o["maximize"],
            # Our momentum buffers start at zero, so no step needs torch's first-step copy.
            is_first_step=False,
        )
        return
    if isinstance(plan.mask, tuple):  # resolved: the decayed parameters, then the others
        for side, decay in ((True, plan.options["weight_decay"]), (False, 0.0)):
            idx = [i for i, m in enumerate(plan.mask) if m is side]
            if idx:
                part = FusedPlan(plan.kernel, {**plan.options, "weight_decay": decay})
                run_fused_(
                    part,
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [[ts[i] for i in idx] for ts in state],
                    None if steps is None else [steps[i] for i in idx],
                )
        return
    kernel = torch._fused_adamw_ if plan.kernel == "adamw" else torch._fused_adam_
    assert steps is not None and len(steps) == len(params)
    # The kernel reads float32 counts on the parameters' device: one conversion for all.
    if all(s is steps[0] for s in steps):  # one shared count
        floats = [steps[0].to(device=params[0].device, dtype=torch.float32)] * len(steps)
    else:
        floats = torch.stack(steps).to(device=params[0].device, dtype=torch.float32).unbind()
    kernel(
        params,
        grads,
        state[0],
        state[1],
        state[2] if o["amsgrad"] else [],
        list(floats),
        lr=o["lr"],
        beta1=o["beta1"],
        beta2=o["beta2"],
        weight_decay=o["weight_decay"],
        eps=o["eps"],
        amsgrad=o["amsgrad"],
        maximize=o["maximize"],
    )


# --------------------------------------------------------------------------- functional


def _eager_plain(tensors: list[torch.Tensor], under_batch: bool = False) -> bool:
    """Whether pure eager float32/float64 work may call a kernel instead of the generic ops.

    Not while compiling (the generic maths is what gets traced), not under vmap/grad (no
    batching rule) unless ``tensors`` are under a vmap's batch (`map_leaves`' ``batchable``),
    not where autograd would record the generic ops; and not in lower precisions, which the
    kernel computes in float32 and rounds once, so more accurately than, and differently from,
    the generic ops.
    """
    if torch.compiler.is_compiling():
        return False
    if not under_batch and torch._C._are_functorch_transforms_active():
        return False
    if tensors[0].dtype not in (torch.float32, torch.float64):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def attach_plan(tx: GradientTransformation, plan: FusedPlan | None) -> GradientTransformation:
    """``tx`` carrying ``plan`` (read by the `Optimizer` adapter); ``tx`` itself for `None`."""
    if plan is None:
        return tx
    out = _Fusable(tx.init, tx.update)
    out.fused_plan = plan
    return out


def with_fused_adam(tx: GradientTransformation, plan: FusedPlan | None) -> GradientTransformation:
    """`adam`'s or `adamw`'s chain with its plan and an eager fast path through the kernel.

    ``tx`` is ``chain(scale_by_adam, [add_decayed_weights], scale_by_learning_rate)``, exactly
    as ``plan`` describes it (no L2 term, no AMSGrad, no maximize). The kernel runs on fresh
    copies of the moments and on a buffer standing in for the parameters, starting at
    ``-lr * wd * params`` (AdamW) or zero, so it leaves there exactly the update, touching
    nothing the caller holds. With `apply_updates`, about 64 bytes move per fp32 parameter
    against some 108 for the generic chain. Anything `fusable` and `_eager_plain` do not
    accept takes ``tx.update``.
    """
    if plan is None:
        return tx
    o = plan.options
    decay = o["weight_decay"] if plan.kernel == "adamw" else 0.0
    schedule = o["lr"] if is_schedule(o["lr"]) else None

    def update_fn(updates, state, params=None, **extra_args):
        if len(state) == 0 or (decay and params is None):
            return tx.update(updates, state, params, **extra_args)  # it raises the error
        if torch.compiler.is_compiling():
            return tx.update(updates, state, params, **extra_args)  # traced: the chain's maths
        decays = resolve_mask(plan, params) if decay else None
        if decay and decays is None:
            return tx.update(updates, state, params, **extra_args)  # element masks
        # Which live leaves decay (`map_leaves` hands `fused` the leaves whose update is not
        # None); `None` leaves of the params are not the updates' business.
        live = (
            [d for d, g in zip(decays or [], tree_leaves(updates)) if g is not None]
            if decay
            else None
        )
        adam_state, tail = state[0], state[1:]
        lr = o["lr"]
        if schedule is not None:  # the last stage is `scale_by_schedule`: its count moves too
            lr = step_scalar(schedule(tail[-1].count))  # a 0-d tensor, which the kernel takes
            tail = (*tail[:-1], tail[-1]._replace(count=tail[-1].count + 1))
        # The decay is in `out` already.
        adam_only = FusedPlan("adam", {**o, "lr": lr, "weight_decay": 0.0})
        # `from_torch` counts per parameter: a tree of counts (one tensor is a shared count,
        # or the count of a one-leaf tree, where the two agree).
        per_leaf = not isinstance(adam_state.count, torch.Tensor)

        def fused(ops, gs, mus, nus, count, *ps):
            tensors = [*gs, *mus, *nus, *(ps[0] if ps else ())]
            batch = ops.vmap
            if not gs or not _eager_plain(tensors, batch is not None):
                return None
            if not fusable(gs, mus, nus, *ps):
                return None
            count = next_count(count)
            steps = count if per_leaf else [count] * len(gs)
            rate = lr
            if batch is not None:  # one count and rate for every member, or the generic ops
                plain = {id(s): one_value(s, batch) for s in steps}  # each count read once
                steps, rate = [plain[id(s)] for s in steps], one_value(lr, batch)
                if rate is None or any(s is None for s in steps):
                    return None
            new_mus = [m.clone() for m in mus]
            new_nus = [v.clone() for v in nus]
            # The kernel subtracts lr * m_hat / denom from `out`: start it at the decay term,
            # or at 0 * g (NaN where g is not finite, as the generic update is there).
            if live is None or all(live):
                out = list(torch._foreach_mul(ps[0] if ps else gs, -rate * decay))
            else:  # masked: the decay term where the mask holds, 0 * g elsewhere
                out = [p * (-rate * decay) if d else g * 0.0 for p, g, d in zip(ps[0], gs, live)]
            kernel = (
                adam_only
                if rate is lr
                else adam_only._replace(options={**adam_only.options, "lr": rate})
            )
            run_fused_(kernel, out, gs, [new_mus, new_nus], steps)
            return out, new_mus, new_nus, count

        others = (adam_state.mu, adam_state.nu, walked_count(adam_state.count, per_leaf))
        if decay:
            others += (params,)
        result = map_leaves(
            fused,
            updates,
            *others,
            keep=(None, 0, 1, 2),
            shapes={2: scalar_shape},
            batchable=True,
            what="update",
        )
        if result is None:
            return tx.update(updates, state, params, **extra_args)
        new_updates, mu, nu, count = result
        return new_updates, (adam_state._replace(count=count, mu=mu, nu=nu), *tail)

    return attach_plan(GradientTransformation(tx.init, update_fn), plan)
