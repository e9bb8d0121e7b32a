"""`from_torch`: a torch.optim optimizer, named with torch's own arguments, as a transformation."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation, empty_init
from torchopt_fn._combine import chain
from torchopt_fn._fused import FusedPlan, adam_plan, attach_plan, sgd_plan, with_fused_adam
from torchopt_fn._record import record
from torchopt_fn._scalar import is_schedule
from torchopt_fn.transforms import (
    add_decayed_weights,
    scale,
    scale_by_adadelta,
    scale_by_adam,
    scale_by_adamax,
    scale_by_learning_rate,
    scale_by_rms,
    scale_by_stddev,
    scale_by_torch_adafactor,
    scale_by_torch_adagrad,
    scale_by_torch_amsgrad,
    scale_by_torch_asgd,
    scale_by_torch_momentum,
    scale_by_torch_muon,
    scale_by_torch_nadam,
    scale_by_torch_radam,
    scale_by_torch_rprop,
    scale_by_torch_sparse_adam,
    trace,
)

__all__ = ["from_torch"]

Options = dict[str, Any]

# Flags that choose torch's kernels, not its maths: accepted and ignored.
_IMPLEMENTATION_FLAGS = frozenset({"foreach", "fused", "capturable", "differentiable"})


# torch.optim counts each parameter's steps: one without a gradient skips its step.
PER_PARAMETER = {"per_leaf_count": True}


def _nonzero(value: Any) -> bool:
    """Whether an optional stage is needed; a tensor always is (its value may change later)."""
    return isinstance(value, torch.Tensor) or value != 0


def _maximize(o: Options) -> list[GradientTransformation]:
    return [scale(-1.0)] if o["maximize"] else []


def _l2(o: Options) -> list[GradientTransformation]:
    """torch's coupled ``weight_decay``: added to the (sign-flipped) gradient first."""
    return [add_decayed_weights(o["weight_decay"])] if _nonzero(o["weight_decay"]) else []


def _with_l2(o: Options, *core: GradientTransformation) -> list[GradientTransformation]:
    return [*_maximize(o), *_l2(o), *core, scale_by_learning_rate(o["lr"])]


def _decay(o: Options) -> list[GradientTransformation]:
    """Decoupled weight decay: added after the scaling, so that the lr multiplies it."""
    return [add_decayed_weights(o["weight_decay"])] if _nonzero(o["weight_decay"]) else []


def _with_weight_decay(
    o: Options, core: GradientTransformation, decoupled: bool
) -> list[GradientTransformation]:
    """Adam-style: L2 before ``core`` or, ``decoupled``, decay scaled by the lr after it."""
    if not decoupled:
        return _with_l2(o, core)
    return [*_maximize(o), core, *_decay(o), scale_by_learning_rate(o["lr"])]


def _sgd(o: Options) -> list[GradientTransformation]:
    if not _nonzero(o["momentum"]):
        return _with_l2(o)
    if _nonzero(o["dampening"]):
        return _with_l2(o, scale_by_torch_momentum(o["momentum"], o["dampening"], **PER_PARAMETER))
    return _with_l2(o, trace(o["momentum"], nesterov=o["nesterov"]))


def _adam(o: Options, decoupled: bool) -> list[GradientTransformation]:
    b1, b2 = o["betas"]
    core = scale_by_torch_amsgrad if o["amsgrad"] else scale_by_adam
    return _with_weight_decay(o, core(b1, b2, o["eps"], **PER_PARAMETER), decoupled)


def _rmsprop(o: Options) -> list[GradientTransformation]:
    scaling = scale_by_stddev if o["centered"] else scale_by_rms
    core = [scaling(o["alpha"], o["eps"], eps_in_sqrt=False)]
    if _nonzero(o["momentum"]):
        # torch accumulates g / avg in the buffer and multiplies by lr afterwards.
        core.append(trace(o["momentum"]))
    return _with_l2(o, *core)


def _closure_driven() -> GradientTransformation:
    """LBFGS's place in a chain: its algorithm is the `Optimizer` adapter's (`_torch_lbfgs`)."""

    def update_fn(updates, state, params=None, **extra_args):
        raise TypeError(
            "from_torch('LBFGS') is torch's closure-driven L-BFGS: run it through "
            "Optimizer(params, tx).step(closure). For a functional L-BFGS use tf.lbfgs()."
        )

    return GradientTransformation(empty_init, update_fn)


Builder = Callable[[Options], list[GradientTransformation]]

# Per optimizer: its chain, and the torch options it reads (all of them in torch 2.13, besides
# the implementation flags; an option a later torch adds is refused rather than ignored).
_BUILDERS: dict[str, tuple[Builder, str]] = {
    "SGD": (_sgd, "lr momentum dampening weight_decay nesterov maximize"),
    "Adam": (
        lambda o: _adam(o, o["decoupled_weight_decay"]),
        "lr betas eps weight_decay amsgrad maximize decoupled_weight_decay",
    ),
    # torch's AdamW is Adam with ``decoupled_weight_decay=True``, kept in its param groups.
    "AdamW": (
        lambda o: _adam(o, o["decoupled_weight_decay"]),
        "lr betas eps weight_decay amsgrad maximize decoupled_weight_decay",
    ),
    "NAdam": (
        lambda o: _with_weight_decay(
            o,
            scale_by_torch_nadam(*o["betas"], o["eps"], o["momentum_decay"], **PER_PARAMETER),
            o["decoupled_weight_decay"],
        ),
        "lr betas eps weight_decay momentum_decay decoupled_weight_decay maximize",
    ),
    "RAdam": (
        lambda o: _with_weight_decay(
            o,
            scale_by_torch_radam(*o["betas"], o["eps"], **PER_PARAMETER),
            o["decoupled_weight_decay"],
        ),
        "lr betas eps weight_decay decoupled_weight_decay maximize",
    ),
    "Adamax": (
        lambda o: _with_l2(o, scale_by_adamax(*o["betas"], o["eps"], **PER_PARAMETER)),
        "lr betas eps weight_decay maximize",
    ),
    "Adagrad": (
        lambda o: _with_l2(
            o,
            scale_by_torch_adagrad(
                o["initial_accumulator_value"], o["eps"], o["lr_decay"], **PER_PARAMETER
            ),
        ),
        "lr lr_decay weight_decay initial_accumulator_value eps maximize",
    ),
    "Adadelta": (
        lambda o: _with_l2(o, scale_by_adadelta(o["rho"], o["eps"])),
        "lr rho eps weight_decay maximize",
    ),
    "RMSprop": (_rmsprop, "lr alpha eps weight_decay momentum centered maximize"),
    "Rprop": (
        lambda o: [*_maximize(o), scale_by_torch_rprop(o["lr"], *o["etas"], *o["step_sizes"])],
        "lr etas step_sizes maximize",
    ),
    "Adafactor": (
        lambda o: [
            *_maximize(o),
            scale_by_torch_adafactor(
                o["lr"], o["beta2_decay"], *o["eps"], o["d"], o["weight_decay"], **PER_PARAMETER
            ),
        ],
        "lr beta2_decay eps d weight_decay maximize",
    ),
    "Muon": (
        lambda o: [
            scale_by_torch_muon(
                o["lr"],
                o["weight_decay"],
                o["momentum"],
                o["nesterov"],
                tuple(o["ns_coefficients"]),
                o["eps"],
                o["ns_steps"],
                o["adjust_lr_fn"],
            )
        ],
        "lr weight_decay momentum nesterov ns_coefficients eps ns_steps adjust_lr_fn",
    ),
    "SparseAdam": (
        lambda o: [
            *_maximize(o),
            scale_by_torch_sparse_adam(o["lr"], *o["betas"], o["eps"], **PER_PARAMETER),
        ],
        "lr betas eps maximize",
    ),
    "LBFGS": (
        lambda o: [_closure_driven()],
        "lr max_iter max_eval tolerance_grad tolerance_change history_size line_search_fn",
    ),
    "ASGD": (
        lambda o: [
            *_maximize(o),
            *_l2(o),
            scale_by_torch_asgd(o["lr"], o["lambd"], o["alpha"], o["t0"], **PER_PARAMETER),
        ],
        "lr lambd alpha t0 weight_decay maximize",
    ),
}


def _resolve_optimizer(optimizer: type | str) -> tuple[str, type]:
    supported = ", ".join(_BUILDERS)
    if isinstance(optimizer, str):
        by_lower = {name.lower(): name for name in _BUILDERS}
        name = by_lower.get(optimizer.removeprefix("torch.optim.").lower())
        if name is None:
            raise ValueError(
                f"from_torch: unsupported optimizer {optimizer!r}; supported: {supported}."
            )
        return name, getattr(torch.optim, name)
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise TypeError(
            "from_torch: `optimizer` must be a torch.optim.Optimizer class (e.g. "
            f"torch.optim.AdamW) or its name, got {optimizer!r}."
        )
    for name in _BUILDERS:
        if optimizer is getattr(torch.optim, name):
            return name, optimizer
    raise ValueError(
        f"from_torch: unsupported optimizer {optimizer.__qualname__}; supported: {supported}."
    )


def _options(name: str, cls: type, kwargs: Options) -> Options:
    """torch's defaults updated with ``kwargs``, checked by torch's own constructor."""
    signature = inspect.signature(cls.__init__)
    defaults = {
        p.name: p.default
        for p in list(signature.parameters.values())[2:]  # after `self, params`
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    if name == "AdamW":  # an option of its param groups, not of its constructor
        defaults["decoupled_weight_decay"] = True
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise TypeError(
            f"from_torch: torch.optim.{name} has no option {', '.join(map(repr, unknown))}; "
            f"its options are {', '.join(defaults)}."
        )
    read = set(_BUILDERS[name][1].split())
    # An option torch has but this module does not read (one newer than torch 2.13).
    unsupported = sorted(set(kwargs) - read - _IMPLEMENTATION_FLAGS)
    if unsupported:
        raise ValueError(
            f"from_torch: option {', '.join(unsupported)} of torch.optim.{name} is not supported."
        )
    options = {**defaults, **kwargs}
    lr = options["lr"]
    if is_schedule(lr):
        lr = 1.0  # a schedule: torch cannot check it; scale_by_learning_rate calls it per step
    # torch checks its implementation flags too (``fused`` with ``foreach``, a tensor lr with
    # ``foreach``, ...): a combination it refuses is refused here the same way.
    checked = {k: v for k, v in options.items() if k in read | _IMPLEMENTATION_FLAGS}
    checked["lr"] = lr
    if name == "AdamW":
        del checked["decoupled_weight_decay"]
    try:
        cls([torch.zeros(1, 1)], **checked)  # a matrix: Muon takes nothing else
    except (ValueError, TypeError) as e:
        raise type(e)(f"from_torch: invalid options for torch.optim.{name}: {e}") from e
    if isinstance(options["lr"], torch.Tensor):
        options["lr"] = options["lr"].reshape(())
    if name == "LBFGS" and options["max_eval"] is None:
        options["max_eval"] = options["max_iter"] * 5 // 4  # torch's rule, in its groups too
    return options


def from_torch(optimizer: type | str, **kwargs: Any) -> GradientTransformation:
    r"""The `GradientTransformation` that follows a torch.optim optimizer's trajectory.

    ``from_torch(torch.optim.AdamW, lr=1e-3, weight_decay=1e-2)`` takes the optimizer class (or
    its name, ``"AdamW"``) and torch's own keyword arguments, with torch's defaults for those
    left out, and returns a chain of public transforms that reproduces torch.optim's update in
    float64 to rounding error. Supported, with every numerical option torch has:

    | torch.optim | chain (a ``[stage]`` only when its option is set) |
    | --- | --- |
    | SGD | [L2] → [`trace(momentum, nesterov)`; `scale_by_torch_momentum` with dampening] → lr |
    | Adam, AdamW | [L2] → `scale_by_adam`; `scale_by_torch_amsgrad` with amsgrad → [decay] → lr |
    | NAdam | [L2] → `scale_by_torch_nadam(*betas, eps, momentum_decay)` → [decay] → lr |
    | RAdam | [L2] → `scale_by_torch_radam(*betas, eps)` → [decay] → lr |
    | Adamax | [L2] → `scale_by_adamax(*betas, eps)` → lr |
    | Adagrad | [L2] → `scale_by_torch_adagrad(initial_accumulator_value, eps, lr_decay)` → lr |
    | Adadelta | [L2] → `scale_by_adadelta(rho, eps)` → lr |
    | RMSprop | [L2] → `scale_by_rms`; `scale_by_stddev` if centered → [`trace(momentum)`] → lr |
    | Rprop | `scale_by_torch_rprop(lr, *etas, *step_sizes)` |
    | ASGD | [L2] → `scale_by_torch_asgd(lr, lambd, alpha, t0)` |
    | Adafactor | `scale_by_torch_adafactor(lr, beta2_decay, *eps, d, weight_decay)` |
    | Muon | `scale_by_torch_muon(lr, weight_decay, momentum, nesterov, ...)` (matrices only) |
    | SparseAdam | `scale_by_torch_sparse_adam(lr, *betas, eps)` (sparse gradients only) |
    | LBFGS | torch's closure-driven algorithm, run by `Optimizer.step(closure)` (no chain) |

    "L2" is `add_decayed_weights(weight_decay)` on the gradient (torch's coupled weight
    decay); "decay" is the same transform after the scaling, so that the learning rate
    multiplies it (AdamW, and ``decoupled_weight_decay=True`` in Adam, NAdam, RAdam); "lr" is
    `scale_by_learning_rate(lr)`; ``maximize=True`` puts `scale(-1.0)` first. RMSprop's
    scalings take ``(alpha, eps, eps_in_sqrt=False)``: torch adds ``eps`` outside the root.

    Learning rate: ``lr`` is a float, a 0-d (or one-element) tensor, or a schedule: a function
    of the 0-d step count (0 on the first step) returning the learning rate. A schedule takes
    the place of a torch lr scheduler: ``LambdaLR(opt, f)`` stepped after every ``opt.step()``
    is ``lr=lambda count: lr0 * f(count)``. Decoupled weight decay, Adagrad's ``lr_decay`` and
    RMSprop's momentum buffer combine with it as they do with a torch scheduler; Rprop reads
    the learning rate once, at ``init`` (as torch does); ASGD uses the current step's value
    in $\eta_t$ (torch's lags one step behind its scheduler).

    Steps are counted per parameter, as torch counts them (``per_leaf_count=True`` in the
    transforms that count): a `None` gradient skips its parameter entirely, leaving the
    parameter, its state and its step count as they were, so trajectories agree with torch's
    when some parameters have no gradient on some steps (a frozen layer, an unused expert).
    The optax-named optimizers (`adam`, ...) keep optax's one count for the whole tree.
    Scalar state that torch keeps in its scalar dtype (NAdam's ``mu_product``, ASGD's ``eta``
    and ``mu``) is kept in that dtype here too: float32 under the default dtype.

    Complex parameters are optimised as pairs of real numbers, as torch.optim does: each
    transform views a complex leaf as real (`torch.view_as_real`) for its maths, and keeps its
    state complex, as torch does, so checkpoints of complex parameters move both ways too.
    ``foreach``, ``fused``, ``capturable`` and ``differentiable`` choose torch's kernels, not
    its maths: they are recorded and torch validates them as it would. The `Optimizer` adapter
    keeps them in each param group, where ``foreach=False`` runs one op per tensor,
    ``fused=False`` never takes torch's fused kernel and ``differentiable=True`` steps with
    autograd recording; ``capturable`` changes nothing (the state lives on the parameters'
    device already).

    Args:
        optimizer: a torch.optim class (`torch.optim.SGD`, `Adam`, `AdamW`, `NAdam`, `RAdam`,
            `Adamax`, `Adagrad`, `Adadelta`, `RMSprop`, `Rprop`, `ASGD`, `Adafactor`, `Muon`,
            `SparseAdam`, `LBFGS`) or its name (case-insensitive, ``"torch.optim."`` prefix
            allowed).
        **kwargs: the optimizer's keyword arguments, as torch names them.

    Returns:
        A `GradientTransformation`; ``update`` needs ``params`` when the chain decays weights
        (and always for ASGD).

    Raises:
        TypeError: ``optimizer`` is not a torch.optim class or name, or an option is unknown to
            it (or has a type torch rejects).
        ValueError: an unsupported optimizer, a value torch's constructor rejects
            (negative lr, ``betas`` outside ``[0, 1)``, Nesterov without momentum, ...), or a
            sparse gradient in ``update``.
        RuntimeError: a combination of flags torch refuses (``fused`` with ``foreach``).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> w = torch.tensor([1.0, -2.0], dtype=torch.float64)
        >>> tx = tf.from_torch(torch.optim.AdamW, lr=0.1, weight_decay=0.01)
        >>> u, _ = tx.update({"w": 2 * w}, tx.init({"w": w}), {"w": w})
        >>> p = torch.nn.Parameter(w.clone()); p.grad = 2 * w
        >>> torch.optim.AdamW([p], lr=0.1, weight_decay=0.01).step()
        >>> torch.allclose(w + u["w"], p.detach(), rtol=1e-14, atol=0)
        True
    """
    name, cls = _resolve_optimizer(optimizer)
    options = _options(name, cls, kwargs)
    build, _ = _BUILDERS[name]
    plan = _fused_plan(name, options)
    core = chain(*build(options))
    if _is_plain_adam(plan):
        # Exactly `adam`'s or `adamw`'s chain: the same eager fast path through the kernel.
        core = with_fused_adam(core, plan)
    tx = attach_plan(core, plan)
    # Record every resolved option (torch's defaults included) so that the `Optimizer` adapter
    # mirrors them into param groups under torch's names.
    recorded = record(tx, from_torch, {"optimizer": cls, **options})
    if name == "Adagrad":  # torch creates its state in the constructor (see `Optimizer`)
        recorded.state_at_construction = True
    if name == "SparseAdam":  # the `Optimizer` adapter lets its sparse gradients through
        recorded.sparse_gradients = True
    if name in ("SGD", "Muon", "LBFGS"):  # torch keeps no step for them: nor does the adapter
        recorded.torch_step = False
    if name == "LBFGS":  # the adapter runs torch's algorithm (see `_torch_lbfgs`)
        recorded.closure_driven = True
    return recorded


# The `Optimizer` adapter mirrors every recorded option (flags too) into param groups.
from_torch.torch_options = True  # type: ignore[attr-defined]


def _is_plain_adam(plan: FusedPlan | None) -> bool:
    """Whether the chain is `adam`'s or `adamw`'s: no maximize, AMSGrad or L2 stage."""
    if plan is None or plan.kernel == "sgd":
        return False
    o = plan.options
    coupled = plan.kernel == "adam" and o["weight_decay"] != 0
    return not (o["amsgrad"] or o["maximize"] or coupled)


def _fused_plan(name: str, o: Options) -> FusedPlan | None:
    """torch's fused kernel for these options, where it computes exactly this chain."""
    if name in ("Adam", "AdamW"):
        decoupled = o["decoupled_weight_decay"]
        flags = {"amsgrad": o["amsgrad"], "maximize": o["maximize"]}
        return adam_plan(decoupled, o["lr"], *o["betas"], o["eps"], o["weight_decay"], **flags)
    if name == "SGD" and not _nonzero(o["dampening"]):
        return sgd_plan(o["lr"], o["momentum"], o["nesterov"], o["weight_decay"], o["maximize"])
    return None
