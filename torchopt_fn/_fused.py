"""Fast paths through torch's fused kernels where a transformation is exactly their algorithm.

`torch._fused_adamw_`, `_fused_adam_` and `_fused_sgd_` update params and state in place in one
pass with no temporaries. Two users, each falling back to the generic path for every other case:

- `Optimizer` runs them in place on ``opt.state`` for a param group whose transformation is
  exactly `adam`, `adamw` or `sgd` (or their `from_torch` equivalents) with options the kernels
  support (`fused_kernel_for`). Tested against the generic path in tests/test_optim.py.
- The functional `adam` and `adamw` run `_fused_adam_` eagerly on fresh copies of their moments
  (`with_eager_fused_adam`): one pass instead of a dozen multi-tensor ops, still pure. Tested
  against the generic chain in tests/test_fused.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn import _tree
from torchopt_fn._base import GradientTransformation, recorded_arguments

__all__ = ["fused_kernel_for", "fused_supported", "with_eager_fused_adam"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

FusedStep = Callable[[dict[str, Any], list[torch.Tensor], dict[torch.Tensor, dict]], None]


def _alias(name: str) -> Callable[..., Any]:
    from torchopt_fn.optimizers import _alias

    return getattr(_alias, name)


def _adam_like(weight_decay_key: str | None, kernel: Callable[..., None]) -> FusedStep:
    @torch.compiler.disable  # a fused kernel gains nothing from tracing
    def step(group: dict[str, Any], params: list[torch.Tensor], state: dict) -> None:
        grads = [p.grad for p in params]
        exp_avgs = [state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [state[p]["exp_avg_sq"] for p in params]
        new_step = state[params[0]]["step"] + 1
        beta1, beta2 = group["betas"]
        kernel(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            [new_step] * len(params),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group[weight_decay_key] if weight_decay_key else 0.0,
            amsgrad=False,
            maximize=False,
        )
        for p in group["params"]:
            state[p]["step"] = new_step

    return step


def _sgd_momentum(nesterov: bool) -> FusedStep:
    @torch.compiler.disable  # a fused kernel gains nothing from tracing
    def step(group: dict[str, Any], params: list[torch.Tensor], state: dict) -> None:
        # Our momentum buffer starts at zero, so the first step needs no special case.
        torch._fused_sgd_(
            params,
            [p.grad for p in params],
            [state[p]["momentum_buffer"] for p in params],
            weight_decay=0.0,
            momentum=group["momentum"],
            lr=group["lr"],
            dampening=0.0,
            nesterov=nesterov,
            maximize=False,
            is_first_step=False,
        )

    return step


def fused_kernel_for(tx: GradientTransformation) -> FusedStep | None:
    """The fused step for ``tx`` if it is exactly an algorithm torch has a fused kernel for."""
    arguments = recorded_arguments(tx)
    if arguments is None:
        return None
    factory = tx.factory
    if factory in (_alias("adam"), _alias("adamw")):
        plain = (
            not callable(arguments["learning_rate"])
            and arguments["eps_root"] == 0.0
            and arguments["mu_dtype"] is None
            and not arguments["nesterov"]
            and arguments.get("mask") is None
        )
        if not plain:
            return None
        if factory is _alias("adam"):
            return _adam_like(None, torch._fused_adam_)
        return _adam_like("weight_decay", torch._fused_adamw_)
    if factory is _alias("sgd"):
        momentum = arguments["momentum"]
        plain = (
            not callable(arguments["learning_rate"])
            and isinstance(momentum, float)
            and momentum > 0.0
            and arguments["accumulator_dtype"] is None
        )
        return _sgd_momentum(arguments["nesterov"]) if plain else None
    return None


def fused_supported(params: list[torch.Tensor]) -> bool:
    """Whether the fused kernels can run on these parameters and their gradients."""
    if not params:
        return False
    device = params[0].device
    if device.type not in ("cpu", "cuda"):
        return False
    for p in params:
        g = p.grad
        if (
            p.device != device
            or p.dtype not in _FLOAT_DTYPES
            or g is None
            or g.is_sparse
            or g.dtype != p.dtype
            or (type(p) is not torch.nn.Parameter and type(p) is not torch.Tensor)
        ):
            return False
    return True


# --------------------------------------------------------------------------- functional


def _eager_fusable(tensors: list[torch.Tensor]) -> bool:
    """Whether the generic maths over ``tensors`` may be replaced by a fused kernel call.

    Only plain eager float32/float64 work on one device qualifies: under `torch.compile` the
    generic maths is what gets traced, under vmap/grad the kernels have no batching rule, and
    when autograd would record the generic ops the kernel cannot stand in for them. Lower
    precisions stay generic because the kernel computes them in float32 and rounds once,
    which is more accurate than, and so different from, the generic ops.
    """
    if not tensors or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    first = tensors[0]
    if first.device.type not in ("cpu", "cuda") or first.dtype not in (
        torch.float32,
        torch.float64,
    ):
        return False
    grad_mode = torch.is_grad_enabled()
    return all(
        type(t) in (torch.Tensor, torch.nn.Parameter)  # not DTensor or other subclasses
        and t.layout == torch.strided
        and t.device == first.device
        and t.dtype == first.dtype
        and not (grad_mode and t.requires_grad)
        for t in tensors
    )


def with_eager_fused_adam(
    tx: GradientTransformation,
    learning_rate: Any,
    b1: Any,
    b2: Any,
    eps: Any,
    eps_root: Any,
    mu_dtype: torch.dtype | None,
    nesterov: bool,
    weight_decay: Any,
    mask: Any,
) -> GradientTransformation:
    """``tx`` (the chain of `adam` or `adamw`) with an eager fast path through `_fused_adam_`.

    The kernel runs on fresh copies of the moments and on a zero buffer standing in for the
    parameters, so it leaves ``-lr * m_hat / (sqrt(v_hat) + eps)`` there: the update, without
    touching anything the caller holds. For decoupled weight decay that buffer starts at
    ``-lr * wd * params`` instead of zero (``weight_decay`` is `None` for `adam`'s two-stage
    chain). With `apply_updates`, about 64 bytes move per fp32 parameter against some 108 for
    the generic chain's eleven multi-tensor ops. The arguments are the alias's; the
    hyperparameters must be Python floats (`inject_hyperparams` passes tensors: those take the
    generic path) and the other options the kernel's.
    """
    hyperparams = (learning_rate, b1, b2, eps, eps_root)
    hyperparams += () if weight_decay is None else (weight_decay,)
    if not all(type(h) is float for h in hyperparams):
        return tx
    if eps_root != 0.0 or mu_dtype is not None or nesterov or mask is not None:
        return tx

    def update_fn(updates, state, params=None, **extra_args):
        decays = bool(weight_decay)  # adamw with weight_decay=0.0 needs no params
        stages = 2 if weight_decay is None else 3
        if len(state) != stages or (decays and params is None):
            return tx.update(updates, state, params, **extra_args)  # it raises the error
        adam_state = state[0]
        others = (adam_state.mu, adam_state.nu) + ((params,) if decays else ())
        (gs, mus, nus, *ps), leaves, (mu_leaves, nu_leaves, *_), rebuild = _tree._live(
            updates, *others, what="update"
        )
        if not _eager_fusable(gs + mus + nus + (ps[0] if ps else [])):
            return tx.update(updates, state, params, **extra_args)
        count = adam_state.count + 1
        new_mus = [m.clone() for m in mus]
        new_nus = [v.clone() for v in nus]
        # The kernel subtracts lr * m_hat / denom from `out`: start it at the decay term, or at 0.
        if decays:
            out = torch._foreach_mul(ps[0], -learning_rate * weight_decay)
        else:
            out = [torch.zeros_like(g) for g in gs]
        step = count.to(device=gs[0].device, dtype=torch.float32)
        torch._fused_adam_(
            out,
            gs,
            new_mus,
            new_nus,
            [],
            [step] * len(gs),
            lr=learning_rate,
            beta1=b1,
            beta2=b2,
            weight_decay=0.0,
            eps=eps,
            amsgrad=False,
            maximize=False,
        )
        new_adam_state = adam_state._replace(
            count=count, mu=rebuild(new_mus, mu_leaves), nu=rebuild(new_nus, nu_leaves)
        )
        return rebuild(out, leaves), (new_adam_state, *state[1:])

    return GradientTransformation(tx.init, update_fn)
