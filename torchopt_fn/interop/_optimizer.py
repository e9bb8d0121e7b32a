"""`Optimizer`: any gradient transformation as a real `torch.optim.Optimizer`.

Design, in four facts:

1. **Hyperparameters live in the param groups.** A named optimizer (``adamw(...)``,
   ``from_torch(...)``, or a ``chain`` holding one) remembers the arguments it was built with.
   Its float arguments are mirrored into every param group under torch's names (``lr``,
   ``betas``, ``eps``, ``weight_decay``, ``momentum``, ...), and each step uses the
   transformation rebuilt from the group's *current* values, so lr schedulers, ``OneCycleLR``'s
   ``betas`` and per-group overrides all take effect, the choice of fused kernel included.
2. **``self.state`` is the only copy of the state**, in torch's layout: one dict of tensors
   per parameter, keyed as each state class declares (``torch_keys``: ``step``, ``exp_avg``,
   ``exp_avg_sq``, ``momentum_buffer``, ...). Each step reads the group's state tree out of
   those dicts and writes the new one back, so ``state_dict``, checkpoints of torch.optim,
   distributed checkpointing and anything that inspects ``opt.state`` just work.
3. **Group-wide values** (a step count, a clipping norm) are stored in every parameter's
   dict, as torch stores ``step`` per parameter. In memory ``step`` is an exact int64 count
   (a schedule reads it); `state_dict` writes it as torch does, a float tensor.
4. **Nothing half-happens.** Hyperparameters are checked when a group is added or loaded,
   gradients and values before the first parameter of a step changes; a refused checkpoint
   leaves the optimizer as it was.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation, torch_scalar_dtype
from torchopt_fn._fused import (
    DenseLayout,
    FusedPlan,
    clip_grads,
    dense_layout,
    fused_plan,
    resolve_mask,
    run_fused_,
)
from torchopt_fn._record import rebuild, recorded_arguments, recorded_nodes
from torchopt_fn._scalar import is_schedule, step_scalar
from torchopt_fn._update import apply_updates_
from torchopt_fn.interop._hyperparams import hyperparams, is_number, mirrored
from torchopt_fn.interop._layout import STEP, Slot, as_state, meta, state_layout
from torchopt_fn.interop._torch_lbfgs import check_lbfgs_state, lbfgs_step, loaded_lbfgs_state
from torchopt_fn.tree._flatten import ParamList, tree_leaves, tree_unflatten
from torchopt_fn.tree._ops import per_leaf_kernels

__all__ = ["Optimizer"]

_GROUP_KEYS_ALWAYS_ALLOWED = {"params", "name", "initial_lr"}


class ScheduledLR(float):
    """A param group's ``"lr"`` where the transformation's learning rate is a schedule: NaN.

    The schedule drives the learning rate, so no number stands for it; the key is there so
    that an lr scheduler (which reads ``group["lr"]`` when it is built) gets as far as writing
    a number into it, which the next `Optimizer.step` then refuses with an explanation
    rather than a bare ``KeyError: 'lr'``. It is left out of `Optimizer.state_dict`.
    """

    def __new__(cls) -> ScheduledLR:
        return super().__new__(cls, math.nan)

    def __repr__(self) -> str:
        return "ScheduledLR(nan: the transformation's schedule drives the learning rate)"


def _schedule_driven_lr(tx: GradientTransformation) -> str | None:
    """The name of the factory whose learning rate is a schedule, or None."""
    for node in recorded_nodes(tx):
        if is_schedule(recorded_arguments(node).get("learning_rate")):
            return node.factory.__name__
    return None


def _check_scheduled_lr(groups: list[dict[str, Any]], group: dict[str, Any], owner: str) -> None:
    lr = group.get("lr")
    if type(lr) is not ScheduledLR:
        index = next(i for i, g in enumerate(groups) if g is group)
        raise ValueError(
            f"Optimizer: param_groups[{index}]['lr'] was set to {lr!r} (by an lr scheduler?), "
            f"but {owner}'s learning rate is a schedule, which drives it. Either give "
            f"{owner} a number as learning_rate and drive it with the scheduler, or drop "
            "the scheduler (the schedule already warms up and decays)."
        )


@dataclass
class _GroupRuntime:
    """Everything a param group needs at step time, rebuilt when its hyperparameters change."""

    group: dict[str, Any]  # the group it serves (checked by identity)
    key: tuple  # the hyperparameter values it was built from
    tx: GradientTransformation
    update: Callable[..., Any]  # ``tx.update``, compiled in compile mode
    plan: FusedPlan | None
    params: list[torch.Tensor]  # the params list the layout was made for
    spec: Any
    slots: list[Slot]
    structure: tuple = ()  # `key` without the values of floats, which shape no state
    check_keys: bool = True  # whether stored state may lack keys of this structure
    tensors: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    # The ids of the params and state tensors last found laid out for the fused kernel: the
    # kernel updates them in place, so they are the same objects step after step.
    fusable_ids: tuple[int, ...] = ()
    fusable_layout: DenseLayout | None = None

    @property
    def keys(self) -> set[str]:
        """Every state key of the group (some parameters may have only some of them)."""
        return {s.key for s in self.slots if s.key is not None}

    def keys_of(self, i: int) -> set[str]:
        """The state keys of parameter ``i`` (Adafactor's differ with a parameter's shape)."""
        return {s.key for s in self.slots if s.key is not None and s.index in (None, i)}

    @property
    def own_step(self) -> bool:
        """Whether the adapter keeps ``step`` itself: the transformation has no counter, and
        its torch counterpart keeps one (torch.optim.SGD and Muon keep none: ``torch_step``)."""
        return STEP not in self.keys and getattr(self.tx, "torch_step", True)

    @property
    def steps_per_param(self) -> bool:
        """Whether each parameter has its own ``step`` (the adapter's own, as torch keeps it,
        or a transformation's per-leaf count); otherwise the group shares one."""
        return all(s.index is not None for s in self.slots if s.key == STEP)


class Optimizer(torch.optim.Optimizer):
    """Use any `GradientTransformation` as a `torch.optim.Optimizer`.

    Args:
        params: what torch optimizers accept: an iterable of tensors, of ``(name, tensor)``
            pairs, or of param-group dicts (which may override hyperparameters, e.g.
            ``{"params": no_decay, "weight_decay": 0.0}``).
        tx: the transformation. Its float hyperparameters (of every public factory inside it:
            ``adamw(...)``, ``from_torch(...)``, the parts of a ``chain``) appear in
            ``param_groups`` under torch's names and can be changed between steps by lr
            schedulers or by hand. (`inject_hyperparams` keeps its values in the state.)
        compile: run each group's update compiled with ``torch.compile(fullgraph=True)``,
            traced once: changing hyperparameters do not recompile. Otherwise the update runs
            eagerly on multi-tensor kernels, or on torch's fused kernel where the group's
            transformation is exactly Adam, AdamW or SGD and every tensor is laid out for it.
        differentiable: torch's flag (the step is recorded by autograd); by default the
            transformation's own (`from_torch`'s), else False.
        stochastic_rounding: add the update to bfloat16 and float16 parameters in float32
            and round the sum stochastically (`apply_updates`), instead of to nearest; the
            fused kernels, which round to nearest, step aside. ``generator`` seeds the draws
            of the eager update.
        generator: a `torch.Generator` for ``stochastic_rounding``.

    Raises:
        ValueError: for a param group with a hyperparameter the transformation does not have,
            an invalid value, or a parameter in two groups.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = tf.Optimizer(model.parameters(), tf.adamw(1e-3, weight_decay=1e-2))
        >>> sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> model(torch.ones(1, 2)).sum().backward()
        >>> opt.step(); sched.step()
        >>> opt.param_groups[0]["lr"], sorted(opt.state[model.weight])
        (0.0005, ['exp_avg', 'exp_avg_sq', 'step'])

    torch.optim equivalent: ``Optimizer(params, adamw(lr, b1, b2, eps, weight_decay))`` gives
    the numbers of ``torch.optim.AdamW(params, lr, (b1, b2), eps, weight_decay)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        tx: GradientTransformation,
        *,
        compile: bool = False,
        differentiable: bool | None = None,
        stochastic_rounding: bool = False,
        generator: torch.Generator | None = None,
    ):
        if not isinstance(tx, GradientTransformation) and hasattr(tx, "gradient_transformation"):
            tx = tx.gradient_transformation()  # `MultiSteps`
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"Optimizer: tx must be a GradientTransformation, got {type(tx)}.")
        for node in recorded_nodes(tx):
            reason = _NOT_PER_PARAMETER.get(node.factory.__name__)
            if reason:
                raise ValueError(f"Optimizer: {node.factory.__name__} {reason}")
        self.tx = tx
        self.compile = compile
        self.stochastic_rounding, self.generator = stochastic_rounding, generator
        self._runtimes: dict[int, _GroupRuntime] = {}
        self._training = True
        defaults, self._ambiguous = hyperparams(tx)
        if differentiable is not None:  # else the transformation's (torch's flag), if any
            defaults["differentiable"] = differentiable
        if defaults.get("differentiable") and compile:
            raise ValueError("Optimizer: differentiable=True runs eagerly; drop compile=True.")
        # A number mirrored as "lr" (another part's learning rate) keeps the key for itself.
        self._scheduled_by = None if "lr" in defaults else _schedule_driven_lr(tx)
        super().__init__(params, defaults)
        if _closure_driven(tx) and len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")

    # ------------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        # The transformation pickles as the factory calls that built it; the runtimes (maybe
        # compiled functions) are rebuilt on the next step.
        state = super().__getstate__()
        return {
            **state,
            "tx": self.tx,
            "compile": self.compile,
            "stochastic_rounding": self.stochastic_rounding,
            "generator": self.generator,
            "_ambiguous": self._ambiguous,
            "_training": self._training,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._training = state.pop("_training", True)
        self.tx = state.pop("tx")
        self.compile = state.pop("compile")
        self.stochastic_rounding = state.pop("stochastic_rounding", False)
        self.generator = state.pop("generator", None)
        self._ambiguous = state.pop("_ambiguous")
        self._runtimes = {}
        super().__setstate__(state)
        self._scheduled_by = None if "lr" in self.defaults else _schedule_driven_lr(self.tx)

    # ------------------------------------------------------------------ param groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its keys must be hyperparameters of the transformation.

        Raises:
            ValueError: for an unknown or ambiguous key, an invalid value, or a parameter
                that another group has (one listed twice in a group warns, as in torch).
        """
        # A wrapper that builds this optimizer from its own param groups and keyword arguments
        # (ZeroRedundancyOptimizer) passes those arguments back as group keys: they must be
        # the ones this optimizer was built with, and are not kept.
        param_group = dict(param_group)
        for key, own in (("tx", self.tx), ("compile", self.compile)):
            if key in param_group and param_group.pop(key) is not own:
                raise ValueError(f"Optimizer: a param group cannot set its own {key!r}.")
        if self._scheduled_by is not None and "lr" in param_group:
            lr = param_group.pop("lr")
            if type(lr) is not ScheduledLR:
                raise ValueError(
                    f"Optimizer: a param group sets lr={lr!r}, but {self._scheduled_by}'s "
                    "learning rate is a schedule, which drives it; give the group's own "
                    "transformation a schedule, or build it with a number as learning_rate."
                )
        ambiguous = set(param_group) & self._ambiguous
        if ambiguous:
            raise ValueError(
                f"Optimizer: param group sets {sorted(ambiguous)}, which several parts of the "
                f"transformation use with different values; set them in the transformation."
            )
        unknown = set(param_group) - set(self.defaults) - _GROUP_KEYS_ALWAYS_ALLOWED
        if unknown:
            raise ValueError(
                f"Optimizer: param group has unknown hyperparameters {sorted(unknown)}; this "
                f"transformation has {sorted(self.defaults)}."
            )
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        param_group = {**param_group, "params": params}  # a generator is read once, here
        values = {k: param_group.get(k, v) for k, v in self.defaults.items()}
        tx = self._build(values, "Optimizer: param group")
        try:  # what ``init`` refuses (a parameter Muon cannot take), refused now
            tx.init(ParamList(meta(p[1] if isinstance(p, tuple) else p) for p in params))
        except (TypeError, ValueError) as e:
            raise type(e)(f"Optimizer: param group: {e}") from e
        super().add_param_group(param_group)
        if self._scheduled_by is not None:
            self.param_groups[-1]["lr"] = ScheduledLR()
        if len(self.param_groups) == 2:
            _warn_if_clipping_per_group(self.tx)
        if getattr(tx, "state_at_construction", False):
            # torch.optim.Adagrad creates every parameter's state here, not at its first step,
            # and reads it without a check: its checkpoints must have them all.
            group = self.param_groups[-1]
            with torch.no_grad():
                rt = self._runtime(group)
                entries, fresh = self._entries(rt, [True] * len(rt.params))
                self._store(rt, entries, [False] * len(rt.params), fresh, None)

    def _build(self, values: dict[str, Any], where: str) -> GradientTransformation:
        """The transformation with these group values; a bad value raises, naming ``where``."""

        def replacements(factory: Callable[..., Any], arguments: dict[str, Any]) -> dict:
            out = {}
            for key, names in mirrored(factory, arguments).items():
                if key in self._ambiguous or key not in values:
                    continue
                value = values[key]
                if len(names) > 1:
                    if not isinstance(value, (tuple, list)) or len(value) != len(names):
                        raise ValueError(f"{key} must be a pair of numbers, got {value!r}.")
                    out.update(zip(names, value))
                elif names[0] == "betas":
                    out["betas"] = tuple(value)
                else:
                    out[names[0]] = value
            return out

        try:
            return rebuild(self.tx, replacements)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from e

    def _group_values(self, group: dict[str, Any], runtime: _GroupRuntime | None) -> dict:
        """The group's current hyperparameters; in compile mode, floats as persistent tensors.

        Compiled, a scheduler's new lr must be new data, not a new constant, or every change
        would recompile: the tensors are kept per group and refilled here, never traced.
        Eagerly plain numbers are faster (and let a fused kernel take them).
        """
        values = {k: group.get(k, v) for k, v in self.defaults.items()}
        if not self.compile:
            return values
        store = runtime.tensors if runtime is not None else {}
        device = group["params"][0].device
        out: dict[str, Any] = {}
        for key, value in values.items():
            parts = value if isinstance(value, tuple) else (value,)
            tensors = []
            for i, part in enumerate(parts):
                # Ints and zeros stay Python numbers: they may choose a chain's structure
                # (`min_dim_size_to_factor`; `from_torch` adds a stage only for momentum != 0);
                # so do longer tuples (Muon's iteration coefficients), never scheduled.
                if not isinstance(part, float) or part == 0.0 or len(parts) > 2:
                    tensors.append(part)
                    continue
                t = store.get((key, i))
                if t is None:
                    t = store[(key, i)] = torch.zeros((), dtype=torch.float64, device=device)
                t.fill_(part)
                tensors.append(t)
            out[key] = tuple(tensors) if isinstance(value, tuple) else tensors[0]
        return out

    @torch.compiler.disable
    def _runtime(self, group: dict[str, Any]) -> _GroupRuntime:
        """The group's runtime, rebuilt when its hyperparameters (or its params list) changed.

        A scheduler changes ``lr`` every step: that rebuilds the transformation (a few factory
        calls) but keeps the state layout, which depends only on the structure.
        """
        if self._scheduled_by is not None:
            _check_scheduled_lr(self.param_groups, group, self._scheduled_by)
        runtime = self._runtimes.get(id(group))
        if runtime is not None and runtime.group is not group:
            runtime = None  # a group that died, its id reused
        values = self._group_values(group, runtime)
        key = tuple(
            (k, tuple(_static(x) for x in v) if isinstance(v, tuple) else _static(v))
            for k, v in values.items()
        )
        params = group["params"]
        if runtime is not None and runtime.key == key and runtime.params is params:
            return runtime
        tx = self._build(values, "Optimizer: param group")
        update = torch.compile(tx.update, fullgraph=True) if self.compile else tx.update
        shape = _structure(key)
        if runtime is not None and runtime.structure == shape and runtime.params is params:
            layout = runtime.spec, runtime.slots
        else:
            layout = state_layout(tx.init(ParamList(meta(p) for p in params)))
        fuse = not (self.compile or self.stochastic_rounding) and _may_fuse(values)
        plan = fused_plan(tx) if fuse else None
        if plan is not None and plan.mask is not None:  # one bool per parameter, or no kernel
            decays = resolve_mask(plan, ParamList(params))
            plan = None if decays is None else plan._replace(mask=tuple(decays))
        old = runtime
        runtime = _GroupRuntime(group, key, tx, update, plan, params, *layout, structure=shape)
        if old is not None:  # the same tensors: keep what was learned about them
            runtime.tensors, runtime.fusable_ids = old.tensors, old.fusable_ids
            runtime.fusable_layout = old.fusable_layout
            runtime.check_keys = old.check_keys or old.structure != shape
        if self.compile and not runtime.tensors:
            self._group_values(group, runtime)  # create the persistent tensors
        self._runtimes[id(group)] = runtime
        return runtime

    # ------------------------------------------------------------------ state

    def _has_state(self, p: torch.Tensor) -> bool:
        return bool(self.state.get(p))

    def _entries(self, rt: _GroupRuntime, live: list[bool]) -> tuple[list, list[int]]:
        """Each parameter's state dict, completed where needed, without storing anything.

        A parameter's first gradient gets it a new dict (parameters that never get one never
        get state, as in torch); after a change of structure (a group's ``momentum`` set
        nonzero adds a momentum buffer) the dicts that lack a key get a copy with it. New
        values take the group-wide values (the step count) of the dicts that have them.
        Returns the dicts (`None` for no state) and the indices of the new or completed ones.
        """
        params = rt.params
        entries = [self.state.get(p) or None for p in params]
        if not rt.keys and not rt.own_step:
            return entries, []  # nothing to keep (SGD without momentum), as in torch
        need = [is_live and e is None for e, is_live in zip(entries, live)]
        if rt.check_keys:
            need = [
                n or (e is not None and not rt.keys_of(i) <= e.keys())
                for i, (n, e) in enumerate(zip(need, entries))
            ]
        if not any(need):
            return entries, []
        fresh = rt.tx.init(ParamList(p if n else None for p, n in zip(params, need)))
        owner = next((e for e, n in zip(entries, need) if e is not None and not n), None)
        for i, n in enumerate(need):
            if n:
                entries[i] = dict(entries[i] or {})  # a copy: stored only when the step is
        for leaf, slot in zip(tree_leaves(fresh), rt.slots):
            if slot.key is None or leaf is None:
                continue
            targets = [slot.index] if slot.index is not None else range(len(params))
            value = owner[slot.key] if slot.index is None and owner is not None else leaf
            for i in targets:
                if need[i] and slot.key not in entries[i]:
                    # A dict with state but without this key (torch.optim.SGD's, set by hand
                    # or loaded) takes what torch's lack of it means (`torch_fill`).
                    started = entries[i] and slot.fill is not None
                    entries[i][slot.key] = _filled(slot, value) if started else value
        return entries, [i for i, n in enumerate(need) if n]

    def _read_state(self, rt: _GroupRuntime, entries: list[dict[str, Any] | None]) -> Any:
        owner = next((e for e in entries if e is not None), None)
        leaves = []
        for slot in rt.slots:
            entry = owner if slot.index is None else entries[slot.index]
            leaves.append(entry[slot.key] if slot.key is not None and entry else None)
        return tree_unflatten(rt.spec, leaves)

    def _store(
        self, rt: _GroupRuntime, entries: list, live: list[bool], fresh: list[int], state: Any
    ) -> None:
        """Write the group's new state, and its new or completed dicts, into ``self.state``."""
        with_state = [e for e in entries if e is not None]
        if state is not None:
            for leaf, slot in zip(tree_leaves(state), rt.slots):
                if slot.key is None or leaf is None:
                    continue
                if slot.index is None:
                    for entry in with_state:
                        entry[slot.key] = leaf
                elif entries[slot.index] is not None:
                    entries[slot.index][slot.key] = leaf
        if rt.own_step:
            _advance_steps(entries, live, per_param=True)
        for i in fresh:
            self.state[rt.params[i]] = entries[i]
        rt.check_keys = False

    # ------------------------------------------------------------------ step

    def step(self, closure: Callable[[], Any] | None = None, *, value: Any = None) -> Any:
        """Apply one update to every parameter that has a gradient; return the closure's loss.

        ``p.grad`` is left as it is. Parameters without a gradient are not changed, and get no
        state until they have one; each parameter counts its own steps, as in torch (where
        the transformation keeps one count for the group, that count advances for all).
        Every group's update is computed before the first parameter or state entry changes,
        so a step that fails changes nothing. A group with ``differentiable=True`` steps with
        autograd on, as torch.optim's differentiable mode does. A transformation whose update
        takes a ``grad_fn`` (``sam(opaque_mode=True)``) gets one that re-runs the closure at
        the parameters it asks for (`_grad_fn_from`). A transformation whose update reads the
        loss (``reduce_on_plateau``, ``momo``, ``polyak_sgd``: factories marked
        ``takes_loss``) gets it as ``value``: ``value=`` if given, else the closure's return.

        Raises:
            TypeError: for an integer parameter; without a loss for a transformation that
                reads it, or with ``value=`` for one that does not.
            ValueError: for a sparse gradient, or one of another shape than its parameter.
        """
        if _closure_driven(self.tx):
            return self._closure_step(closure)
        if not self._training:
            raise RuntimeError(
                "Optimizer: step() in eval mode; call optimizer.train() first (Schedule-Free "
                "evaluates at other parameters than it trains at)."
            )
        if self._materialising():
            self._materialise_state()
            return None
        extra = _grad_fn_from(closure, self.param_groups) if _takes_grad_fn(self.tx) else {}
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        extra.update(_loss_value(self.tx, loss, value))
        commits = []
        for g, group in enumerate(self.param_groups):
            live = [p.grad is not None for p in group["params"]]
            if any(live):
                with _step_mode(group):
                    rt = self._runtime(group)
                    _check_gradients(group["params"], g, getattr(rt.tx, "sparse_gradients", False))
                    entries, fresh = self._entries(rt, live)
                    commits.append((group, self._compute(rt, live, entries, fresh, extra)))
        for group, commit in commits:
            with _step_mode(group):
                commit()
        return loss

    def _materialising(self) -> bool:
        """Whether this step is `torch.distributed.checkpoint`'s way to make the state exist
        before loading into it: no state yet, every ``lr`` set to 0 and zero gradients.

        Only a schedule-driven learning rate needs telling apart (elsewhere such a step
        changes nothing that the load does not overwrite): there a 0 over the stand-in would be
        refused, and the step would apply the schedule's rate to the weight decay.
        """
        if self.state or self._scheduled_by is None:
            return False
        groups = self.param_groups
        if any(type(g.get("lr")) is ScheduledLR or g.get("lr") != 0 for g in groups):
            return False
        grads = [p.grad for g in groups for p in g["params"] if p.grad is not None]
        return bool(grads) and not any(bool(g.any()) for g in grads)

    def _materialise_state(self) -> None:
        """Give every parameter with a gradient its initial state, with no update."""
        for group in self.param_groups:
            live = [p.grad is not None for p in group["params"]]
            if not any(live):
                continue
            written, group["lr"] = group["lr"], ScheduledLR()
            try:
                with _step_mode(group):
                    rt = self._runtime(group)
                    entries, fresh = self._entries(rt, live)
            finally:
                group["lr"] = written
            for i in fresh:
                self.state[rt.params[i]] = entries[i]

    def _closure_step(self, closure: Callable[[], Any] | None) -> Any:
        """torch.optim.LBFGS's step: closure-driven, several iterations, one flat vector."""
        if closure is None:
            raise TypeError("LBFGS: step() needs a closure that re-evaluates the model.")
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        group = self.param_groups[0]
        params = group["params"]
        state = self.state.setdefault(params[0], {})
        return lbfgs_step(closure, params, state, group)

    def _compute(
        self,
        rt: _GroupRuntime,
        live: list[bool],
        entries: list,
        fresh: list[int],
        extra: dict[str, Any] | None = None,
    ) -> Callable[[], None]:
        """The group's new state and updates, and a function that writes them in."""
        params = rt.params
        fused = None if extra else self._fused_inputs(rt, live, entries)
        if fused is not None:
            plan, tensors, grads, state = fused

            def commit_fused() -> None:
                self._store(rt, entries, live, fresh, None)
                steps = None
                if plan.kernel != "sgd":
                    steps = _advance_steps(entries, live, per_param=rt.steps_per_param)
                clipped = grads
                if plan.clip is not None:  # chained before the optimizer: the group's norm
                    clipped, norm = clip_grads(plan, grads)
                    shared = norm.to(next(e[CLIP_NORM] for e in entries if e is not None))
                    for entry in entries:
                        if entry is not None:
                            entry[CLIP_NORM] = shared
                run_fused_(_scheduled(plan, entries), tensors, clipped, state, steps)

            return commit_fused
        grads = ParamList(p.grad for p in params)
        inputs = params
        if torch.is_grad_enabled():
            # Differentiable mode: the update may save the parameters' values for backward
            # (ASGD's decay times a learned eta); the in-place step below must not clobber them.
            inputs = [p.clone() for p in params]
        # A ``grad_fn`` runs the user's closure: eagerly, never traced.
        update = rt.tx.update if extra and "grad_fn" in extra else rt.update
        state = self._read_state(rt, entries)
        updates, state = update(grads, state, ParamList(inputs), **(extra or {}))

        def commit() -> None:
            self._store(rt, entries, live, fresh, state)
            if torch.is_grad_enabled():  # differentiable: autograd records the update
                for p, u in zip(params, updates):
                    if u is not None:
                        p.add_(u.to(p.dtype))
            else:
                apply_updates_(
                    list(params),
                    list(updates),
                    stochastic_rounding=self.stochastic_rounding,
                    generator=self.generator,
                )

        return commit

    def _fused_inputs(
        self, rt: _GroupRuntime, live: list[bool], entries: list[dict[str, Any] | None]
    ) -> tuple[FusedPlan, list, list, list] | None:
        """What the group's fused kernel needs, if it has one and every tensor allows it."""
        plan = rt.plan
        if plan is None or not set(plan.state_keys) <= rt.keys:
            return None
        if is_schedule(plan.options["lr"]) and SCHEDULE_COUNT not in rt.keys:
            return None
        if plan.clip is not None and CLIP_NORM not in rt.keys:
            return None
        live_params = [p for p, is_live in zip(rt.params, live) if is_live]
        grads = [p.grad for p in live_params]
        live_entries = [e for e, is_live in zip(entries, live) if is_live]
        state = [[e[k] for e in live_entries] for k in plan.state_keys]
        ids = tuple(map(id, live_params)) + tuple(id(t) for ts in state for t in ts)
        if ids != rt.fusable_ids:
            layout = dense_layout(live_params)
            if layout is None or not all(layout.matches(ts) for ts in state):
                return None
            rt.fusable_ids, rt.fusable_layout = ids, layout
        if not rt.fusable_layout.matches(grads):  # the gradients are new tensors every step
            return None
        if plan.mask is not None:
            plan = plan._replace(mask=tuple(m for m, is_live in zip(plan.mask, live) if is_live))
        return plan, live_params, grads, state

    # ------------------------------------------------------------------ accumulation

    @property
    def has_updated(self) -> bool:
        """Whether the last `step` changed the parameters.

        False after a mini-step that a `MultiSteps` only accumulated (or dropped), and before
        the first step; True otherwise. With gradient accumulation, step an lr scheduler
        only when this is True, so that it counts optimizer updates, not mini-batches::

            opt = tf.Optimizer(model.parameters(), tf.MultiSteps(tf.adamw(1e-3), 4))
            for batch in loader:
                loss_fn(model, batch).backward()
                opt.step()
                opt.zero_grad()
                if opt.has_updated:
                    scheduler.step()
        """
        stepped = False
        for group in self.param_groups:
            entries = [self.state.get(p) or None for p in group["params"]]
            if not any(e is not None for e in entries):
                continue
            stepped = True
            state = self._read_state(self._runtime(group), entries)
            for accumulation in _instances(state, "has_updated"):
                if not bool(accumulation.has_updated()):
                    return False
        return stepped

    # ------------------------------------------------------------------ train / eval

    def train(self, mode: bool = True) -> Optimizer:
        """Training mode (``mode=True``) or evaluation mode, as the ``schedulefree`` package has.

        With Schedule-Free (`tf.contrib.schedule_free` and its aliases) training runs at the
        interpolated point $y$ and evaluation at the average $x$: ``eval()`` writes $x$ into
        the parameters, ``train()`` writes $y$ back (a step in eval mode is refused). HF
        Trainer and Accelerate call these when they exist. A transformation's own ``train``
        hook, if any, is called too; for other transformations this does nothing.
        """
        if mode != self._training:
            for group in self.param_groups:
                self._swap_schedule_free(group, to_eval=not mode)
            self._training = mode
        hook = getattr(self.tx, "train", None)
        if callable(hook):
            hook(mode)
        return self

    def eval(self) -> Optimizer:
        """Evaluation mode (see `train`)."""
        return self.train(False)

    @torch.no_grad()
    def _swap_schedule_free(self, group: dict[str, Any], to_eval: bool) -> None:
        params = group["params"]
        entries = [self.state.get(p) or None for p in params]
        if not any(e is not None for e in entries):
            return
        state = self._read_state(self._runtime(group), entries)
        for sf in _instances(state, "_schedule_free"):
            b1 = sf.b1
            for p, z in zip(params, sf.z):
                if z is None:  # a parameter that never had a gradient: no state
                    continue
                if to_eval:  # x = (y - (1 - b1) z) / b1
                    p.copy_(((p - (1.0 - b1) * z) / b1).to(p.dtype))
                else:  # y = b1 x + (1 - b1) z
                    p.copy_((b1 * p + (1.0 - b1) * z).to(p.dtype))

    # ------------------------------------------------------------------ checkpoints

    @torch._disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """torch's format: ``step`` as a float tensor, every parameter with its own copies.

        torch.optim's own steps, in its order: the pre-hooks run, parameters become indices,
        then the post-hooks see (and may replace) the result. (In memory a group may share one
        tensor for group-wide values and ``step`` is an exact integer; torch.optim increments
        ``step`` in place per parameter, so a checkpoint must not share it.) The dicts are new;
        the tensors are the optimizer's own, as in torch, except those converted or copied.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        index: dict[int, int] = {}
        ints: dict[int, set[str]] = {}  # per parameter, the keys torch writes as Python ints
        groups = []
        for group in self.param_groups:
            packed = {
                k: v
                for k, v in group.items()
                if k not in ("params", "tx", "compile") and type(v) is not ScheduledLR
            }
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
            if any(self.state.get(p) for p in group["params"]):
                slots = self._runtime(group).slots
                keys = {s.key for s in slots if s.as_int}
                ints.update((id(p), keys) for p in group["params"])
        seen: set[int] = set()
        state: dict[Any, Any] = {}
        for key, entry in self.state.items():
            if isinstance(entry, dict) and isinstance(key, torch.Tensor):
                entry = _as_checkpoint(entry, seen, ints.get(id(key), set()))
            state[index[id(key)] if isinstance(key, torch.Tensor) else key] = entry
        out: dict[str, Any] = {"state": state, "param_groups": groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, out)
            if result is not None:
                out = result
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint in torch's format, after checking all of it against this optimizer.

        Checkpoints of the equivalent torch.optim optimizer load too. The checkpoint's
        hyperparameters are checked by building the transformation from them. Nothing is
        changed unless the whole checkpoint is valid.

        Raises:
            ValueError: naming what differs (groups, parameter counts, state keys, shapes,
                hyperparameter values).
        """
        if not isinstance(state_dict, dict):
            raise ValueError("load_state_dict: expected a dict with 'state' and 'param_groups'.")
        state_dict = dict(state_dict)
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        runtimes = self._check_state_dict(state_dict)
        # The same steps as torch.optim's, but each state value becomes an own, detached copy
        # in its slot's dtype (torch casts every floating value to its parameter's dtype, which
        # would round a float64 count or hyperparameter kept beside float32 parameters).
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        target: dict[Any, tuple[torch.Tensor, list[Slot]]] = {}
        for saved, group, rt in zip(saved_groups, self.param_groups, runtimes):
            for i, (index, p) in enumerate(zip(saved["params"], group["params"])):
                target[index] = (p, [s for s in rt.slots if s.key and s.index in (None, i)], rt)
        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for index, entry in state_dict["state"].items():
            if index not in target:
                state[index] = entry  # kept as torch keeps it
                continue
            p, slots, rt = target[index]
            if _closure_driven(rt.tx):
                state[p] = loaded_lbfgs_state(entry, p.device)
                continue
            dtypes = {STEP: torch.int64, **{s.key: s.dtype for s in slots}}
            new = {key: as_state(v, dtypes.get(key), p.device) for key, v in entry.items()}
            for slot in slots:  # what torch does not keep (SGD's count), filled in
                if slot.key not in new and entry:
                    new[slot.key] = as_state(slot.fill, slot.dtype, p.device)
            state[p] = new
        for group in self.param_groups:
            if not _closure_driven(self.tx):
                _share_equal_scalars(group["params"], state)
        groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            new = {**saved, "params": group["params"]}
            if "param_names" in group and "param_names" not in saved:
                new["param_names"] = group["param_names"]
            for key, value in self.defaults.items():
                new.setdefault(key, value)
            if self._scheduled_by is not None:
                new["lr"] = ScheduledLR()
            groups.append(new)
        self.state, self.param_groups = state, groups
        self._runtimes = {}
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _check_state_dict(self, state_dict: dict[str, Any]) -> list[_GroupRuntime]:
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("load_state_dict: expected a dict with 'state' and 'param_groups'.")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"load_state_dict: the checkpoint has {len(saved_groups)} param groups, this "
                f"optimizer has {len(self.param_groups)}."
            )
        saved_state = state_dict["state"]
        runtimes = []
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"load_state_dict: param group {g} has {len(saved['params'])} parameters in "
                    f"the checkpoint and {len(group['params'])} here."
                )
            values = {k: saved.get(k, group.get(k, v)) for k, v in self.defaults.items()}
            tx = self._build(values, f"load_state_dict: param group {g} of the checkpoint")
            params = group["params"]
            spec, slots = state_layout(tx.init(ParamList(meta(p) for p in params)))
            rt = _GroupRuntime(group, (), tx, tx.update, None, params, spec, slots)
            runtimes.append(rt)
            for i, index in enumerate(saved["params"]):
                expected = rt.keys_of(i)
                if index not in saved_state:
                    continue
                entry = saved_state[index]
                if not isinstance(entry, dict):
                    raise ValueError(f"load_state_dict: the state of parameter {i} is not a dict.")
                if _closure_driven(tx):
                    check_lbfgs_state(entry, f"parameter {i} of group {g}")
                    continue
                # The adapter's own ``step`` may be there or not (torch's SGD has none).
                keys = set(entry) - ({STEP} if STEP not in rt.keys else set())
                fillable = {s.key for s in slots if s.fill is not None and s.index in (None, i)}
                if keys - expected or expected - keys - fillable:
                    raise ValueError(
                        f"load_state_dict: parameter {i} of group {g} has state keys "
                        f"{sorted(keys)}, this optimizer expects {sorted(expected)} (a checkpoint "
                        f"of a different algorithm or configuration?)."
                    )
                for key, value in entry.items():
                    if not (isinstance(value, torch.Tensor) or is_number(value)):
                        raise ValueError(
                            f"load_state_dict: state {key!r} of parameter {i} in group {g} is "
                            f"a {type(value).__name__}, not a tensor or number."
                        )
                for slot in slots:
                    if slot.key not in entry or slot.index not in (None, i):
                        continue
                    value = entry[slot.key]
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
                    if shape != slot.shape:
                        raise ValueError(
                            f"load_state_dict: state {slot.key!r} of parameter {i} in group {g} "
                            f"has shape {shape}, expected {slot.shape}."
                        )
        return runtimes


def _filled(slot: Slot, like: torch.Tensor) -> torch.Tensor:
    """The value of a key torch's state lacks, as the slot's `fill` says."""
    return torch.full_like(like, slot.fill)


def _as_checkpoint(entry: dict[str, Any], seen: set[int], ints: set[str]) -> dict[str, Any]:
    """A parameter's state as torch writes it: a float ``step`` (SparseAdam's an int, the
    ``ints``), no tensor shared."""
    out = {}
    for key, value in entry.items():
        if key in ints and isinstance(value, torch.Tensor):
            value = int(value)
        elif isinstance(value, torch.Tensor):
            if key == STEP and not value.is_floating_point():
                value = value.to(torch_scalar_dtype())
            elif id(value) in seen:
                value = value.clone()
            seen.add(id(value))
        out[key] = value
    return out


def _may_fuse(values: dict[str, Any]) -> bool:
    """Whether a group may take torch's fused kernel: not with ``fused=False`` (torch's flag,
    kept in the group by `from_torch`), nor in differentiable mode."""
    return values.get("fused") is not False and not values.get("differentiable")


@contextlib.contextmanager
def _step_mode(group: dict[str, Any]) -> Iterator[None]:
    """A group's update runs without autograd, or with it in differentiable mode; and on
    one op per tensor where its ``foreach`` is False (torch's for-loop implementation)."""
    with torch.set_grad_enabled(bool(group.get("differentiable"))):
        if group.get("foreach") is False:
            with per_leaf_kernels():
                yield
        else:
            yield


def _share_equal_scalars(params: list[torch.Tensor], state: dict[Any, Any]) -> None:
    """Let a group's parameters share one tensor for a per-parameter scalar (a step count,
    NAdam's ``mu_product``) whose loaded values are all equal, as they share it when they step
    together: step-dependent factors are then computed once, not once per parameter.

    ``step`` always (nothing updates it in place); other 0-d values only beside parameters
    that are not 0-d (a 0-d parameter's moments are 0-d too, and fused kernels update those
    in place).
    """
    entries = [state[p] for p in params if p in state]
    if len(entries) < 2 or len(entries) != len(params):
        return
    scalars_only = all(p.dim() > 0 for p in params)
    for key, first in entries[0].items():
        if not (isinstance(first, torch.Tensor) and first.dim() == 0):
            continue
        if key != STEP and not scalars_only:
            continue
        values = [e.get(key) for e in entries]
        if all(
            isinstance(v, torch.Tensor)
            and v.dtype == first.dtype
            and v.device == first.device
            and v.dim() == 0
            and torch.equal(v, first)
            for v in values
        ):
            for e in entries:
                e[key] = first


# The state keys of `scale_by_schedule`'s count (a schedule-driven learning rate reads it) and
# of the global-norm clip's last norm, which a fused step keeps up to date.
SCHEDULE_COUNT = "count"
CLIP_NORM = "norm"


def _scheduled(plan: FusedPlan, entries: list) -> FusedPlan:
    """``plan`` with its schedule's learning rate at the group's ``count`` (a 0-d tensor,
    which the kernel takes), and the count advanced in every entry; ``plan`` itself when its
    learning rate is a number."""
    schedule = plan.options["lr"]
    if not is_schedule(schedule):
        return plan
    with_state = [e for e in entries if e is not None and SCHEDULE_COUNT in e]
    count = with_state[0][SCHEDULE_COUNT]
    new = count + 1
    for entry in with_state:
        entry[SCHEDULE_COUNT] = new
    return plan._replace(options={**plan.options, "lr": step_scalar(schedule(count))})


def _advance_steps(entries: list, live: list[bool], per_param: bool) -> list[torch.Tensor]:
    """Add one to ``step``: each live parameter's, or the group's (in every dict that has one).

    A parameter without a ``step`` (a torch.optim.SGD checkpoint has none) starts at 1.
    Returns the new ``step`` of each live parameter.
    """
    if not per_param:
        with_state = [e for e in entries if e is not None]
        old = next((e[STEP] for e in with_state if STEP in e), None)
        new = torch.ones((), dtype=torch.int64) if old is None else old + 1
        for entry in with_state:
            entry[STEP] = new
        return [new] * sum(live)
    targets = [e for e, is_live in zip(entries, live) if is_live]
    olds = [e.get(STEP) for e in targets]
    if olds[0] is not None and all(o is olds[0] for o in olds):
        news = [olds[0] + 1] * len(olds)  # parameters that step together share one count
    # `any(... is None)`, not `None in olds`: that compares each tensor with None (slow).
    elif not any(o is None for o in olds) and len({o.device for o in olds}) == 1:
        news = list((torch.stack(olds) + 1).unbind())  # one addition for all
    else:
        news = [torch.ones((), dtype=torch.int64) if o is None else o + 1 for o in olds]
    for entry, new in zip(targets, news):
        entry[STEP] = new
    return news


def _structure(key: tuple) -> tuple:
    """A runtime key with every nonzero float replaced: what can change the state's layout.

    Zeros stay, since a zero can leave a stage out (`from_torch` adds momentum only if nonzero).
    """

    def shape(x: Any) -> Any:
        return "float" if isinstance(x, float) and x != 0.0 else x

    return tuple((k, tuple(map(shape, v)) if isinstance(v, tuple) else shape(v)) for k, v in key)


def _static(x: Any) -> Any:
    """A group value as part of a cache key: tensors by identity (read at update time)."""
    return ("tensor", id(x)) if isinstance(x, torch.Tensor) else x


def _check_gradients(params: list[torch.Tensor], g: int, sparse_ok: bool = False) -> None:
    """Before any parameter changes: floating parameters, gradients of their shapes, dense
    (or sparse COO, for a transformation that takes them: SparseAdam's)."""
    if not all(p.is_floating_point() or p.is_complex() for p in params):
        i, p = next(
            (i, p) for i, p in enumerate(params) if not (p.is_floating_point() or p.is_complex())
        )
        raise TypeError(
            f"Optimizer: parameter {i} of group {g} has dtype {p.dtype}; only floating-point "
            "and complex parameters can be optimized."
        )
    grads = [p.grad for p in params]
    pairs = [(i, p, grad) for i, (p, grad) in enumerate(zip(params, grads)) if grad is not None]
    allowed = {torch.strided, torch.sparse_coo} if sparse_ok else {torch.strided}
    if {grad.layout for _, _, grad in pairs} - allowed:
        i = next(i for i, _, grad in pairs if grad.layout != torch.strided)
        raise ValueError(
            f"Optimizer: the gradient of parameter {i} of group {g} is sparse; densify it "
            "(`p.grad = p.grad.to_dense()`) or use torch.optim.SparseAdam."
        )
    if [grad.shape for _, _, grad in pairs] != [p.shape for _, p, _ in pairs]:
        i, p, grad = next((i, p, grad) for i, p, grad in pairs if grad.shape != p.shape)
        raise ValueError(
            f"Optimizer: the gradient of parameter {i} of group {g} has shape "
            f"{tuple(grad.shape)}, the parameter {tuple(p.shape)}."
        )


# Transformations whose state or params do not split into torch's per-parameter dicts.
_NOT_PER_PARAMETER = {
    "flatten": (
        "keeps one state buffer for all parameters, which torch's per-parameter state cannot "
        "hold; use the transformation inside it (the adapter already runs multi-tensor or "
        "fused kernels), or compile_step(flatten(tx)) in a functional loop."
    ),
    "lookahead": (
        "optimizes LookaheadParams (fast and slow weights), not a module's parameters; use it "
        "in a functional loop."
    ),
}


def _closure_driven(tx: GradientTransformation) -> bool:
    """``from_torch("LBFGS")``: the adapter runs torch's closure-driven algorithm itself."""
    return getattr(tx, "closure_driven", False)


# Transformations whose maths reads all the updates it is given together.
_GLOBAL_NORM_CLIPS = frozenset({"clip_by_global_norm", "clip_by_torch_global_norm"})


def _warn_if_clipping_per_group(tx: GradientTransformation) -> None:
    """Each group's update runs on its own gradients: a global-norm clip sees one group."""
    clips = sorted({n.factory.__name__ for n in recorded_nodes(tx)} & _GLOBAL_NORM_CLIPS)
    if clips:
        warnings.warn(
            f"Optimizer: {clips[0]} runs once per param group, so each group is clipped by "
            "its own norm, where torch.nn.utils.clip_grad_norm_(model.parameters()) clips "
            "them all by one. For torch's behaviour, call clip_grad_norm_ before step() and "
            "leave the clip out of the transformation (or use one param group, with a mask "
            "for the weight decay).",
            UserWarning,
            stacklevel=4,
        )


def _takes_grad_fn(tx: GradientTransformation) -> bool:
    """``sam(opaque_mode=True)`` (alone or inside a chain): its update needs a ``grad_fn``."""
    return any(getattr(node, "grad_fn_from_closure", False) for node in recorded_nodes(tx))


def _loss_value(tx: GradientTransformation, loss: Any, value: Any) -> dict[str, Any]:
    """``{"value": the loss}`` for a transformation that reads it, else ``{}``.

    A factory whose update reads ``value`` is marked ``factory.takes_loss = True``.
    """
    if not any(getattr(n.factory, "takes_loss", False) for n in recorded_nodes(tx)):
        if value is not None:
            raise TypeError(
                "Optimizer: step(value=...) given, but this transformation reads no loss."
            )
        return {}
    value = loss if value is None else value
    if value is None:
        raise TypeError(
            "Optimizer: this transformation reads the loss (reduce_on_plateau, momo, polyak_sgd): "
            "call step(closure) with a closure that returns it, or step(value=loss)."
        )
    # A 0-d tensor, detached: the update reads its value, and a compiled update takes it as
    # an input without recompiling when it changes.
    return {"value": torch.as_tensor(value).detach()}


def _grad_fn_from(closure: Callable[[], Any] | None, groups: list[dict]) -> dict[str, Any]:
    """``{"grad_fn": ...}`` re-running ``closure`` at the parameters asked for.

    ``grad_fn(at, i)`` writes ``at`` into the parameters, clears their gradients (as SAM's
    reference loop does before its second pass), runs the closure, puts the parameters
    back, and returns the gradients the closure left. The transformation does the maths.
    """
    if closure is None:
        raise TypeError(
            "Optimizer: sam(opaque_mode=True) needs step(closure), a closure that re-evaluates "
            "the loss and its gradients (zero_grad, forward, backward, return the loss)."
        )
    if len(groups) != 1:
        raise ValueError(
            "Optimizer: sam(opaque_mode=True) moves all parameters to the adversarial point "
            "together: use one param group."
        )
    params = groups[0]["params"]

    def grad_fn(at: Any, i: int) -> ParamList:
        del i  # the closure decides what to evaluate; every call is the same closure
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, a in zip(params, at):
                    p.copy_(a)
                    p.grad = None
            with torch.enable_grad():
                closure()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        return ParamList(p.grad for p in params)

    return {"grad_fn": grad_fn}


def _instances(tree: Any, method: str) -> list[Any]:
    """The nodes of a state tree that have ``method`` (`MultiStepsState`), outermost first."""
    found = [tree] if callable(getattr(tree, method, None)) else []
    if isinstance(tree, (tuple, list)):
        for x in tree:
            found += _instances(x, method)
    elif isinstance(tree, dict):
        for x in tree.values():
            found += _instances(x, method)
    return found
