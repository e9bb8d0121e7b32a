"""`Optimizer`: any gradient transformation as a real `torch.optim.Optimizer`.

Design, in three facts:

1. **Hyperparameters live in the param groups.** A named optimizer (``adamw(...)``,
   ``from_torch(...)``, or a ``chain`` holding one) remembers the arguments it was built with.
   Its float arguments are mirrored into every param group under torch's names (``lr``,
   ``betas``, ``eps``, ``weight_decay``, ``momentum``, ...), and every step rebuilds the
   transformation from the group's *current* values, so lr schedulers, ``OneCycleLR``'s
   ``betas`` and per-group overrides all take effect.
2. **``self.state`` is the only copy of the state**, in torch's layout: one dict of tensors
   per parameter, with torch's key names where the algorithm is the same (``step``,
   ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ...). Each step reads the group's state
   tree out of those dicts and writes the new one back, so ``state_dict``, checkpoints of
   torch.optim, distributed checkpointing and anything that inspects ``opt.state`` just work.
3. **Group-wide values** (a step count, a clipping norm) are stored in every parameter's
   dict, as torch stores ``step`` per parameter; ``step`` is a float32 tensor, as in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from torchopt_fn import _tree
from torchopt_fn._base import (
    GradientTransformation,
    rebuild,
    recorded_arguments,
    recorded_nodes,
)
from torchopt_fn._fused import fused_kernel_for, fused_supported
from torchopt_fn._update import apply_updates_

__all__ = ["Optimizer"]

# Argument names that torch spells differently. ``b1``/``b2`` become ``betas``.
_TORCH_NAME = {"learning_rate": "lr"}
_TORCH_NAME_BY_FACTORY = {"rmsprop": {"decay": "alpha"}}
# Torch's key for a state field, where the quantity is the same as torch's.
_TORCH_STATE_KEY = {
    ("ScaleByAdamState", "count"): "step",
    ("ScaleByAdamState", "mu"): "exp_avg",
    ("ScaleByAdamState", "nu"): "exp_avg_sq",
    ("TraceState", "trace"): "momentum_buffer",
    ("ScaleByRmsState", "nu"): "square_avg",
    ("ScaleByRStdDevState", "mu"): "grad_avg",
    ("ScaleByRStdDevState", "nu"): "square_avg",
    ("ScaleByRssState", "sum_of_squares"): "sum",
    ("ScaleByAdaDeltaState", "e_g"): "square_avg",
    ("ScaleByAdaDeltaState", "e_x"): "acc_delta",
    ("ScaleByTorchAmsgradState", "count"): "step",
    ("ScaleByTorchAmsgradState", "mu"): "exp_avg",
    ("ScaleByTorchAmsgradState", "nu"): "exp_avg_sq",
    ("ScaleByTorchAmsgradState", "nu_max"): "max_exp_avg_sq",
    ("ScaleByTorchNadamState", "count"): "step",
    ("ScaleByTorchNadamState", "mu"): "exp_avg",
    ("ScaleByTorchNadamState", "nu"): "exp_avg_sq",
    ("ScaleByTorchRadamState", "count"): "step",
    ("ScaleByTorchRadamState", "mu"): "exp_avg",
    ("ScaleByTorchRadamState", "nu"): "exp_avg_sq",
    ("ScaleByTorchAdagradState", "count"): "step",
    ("ScaleByTorchAdagradState", "sum_of_squares"): "sum",
    ("ScaleByTorchMomentumState", "trace"): "momentum_buffer",
    ("ScaleByTorchRpropState", "step_sizes"): "step_size",
    ("ScaleByTorchAsgdState", "count"): "step",
}
# torch.optim keeps a `step` for every algorithm but SGD; where the transformation has no
# counter of its own, the adapter keeps one, so checkpoints move between the two.
_STEP = "step"
_GROUP_KEYS_ALWAYS_ALLOWED = {"params", "name", "initial_lr"}


def _is_number(v: Any) -> bool:
    """A hyperparameter to mirror: a real number (torch writes ``weight_decay=0`` as an int)."""
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and v.is_floating_point()
    return isinstance(v, (float, int)) and not isinstance(v, bool)


def _mirrored(factory: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Torch group key -> the names of the recorded call's arguments it stands for."""
    renames = {**_TORCH_NAME, **_TORCH_NAME_BY_FACTORY.get(factory.__name__, {})}
    out: dict[str, tuple[str, ...]] = {}
    if _is_number(arguments.get("b1")) and _is_number(arguments.get("b2")):
        out["betas"] = ("b1", "b2")
    for name, value in arguments.items():
        if name in ("b1", "b2") and "betas" in out:
            continue
        if _is_number(value) or (
            name == "betas" and isinstance(value, tuple) and all(map(_is_number, value))
        ):
            out[renames.get(name, name)] = (name,)
    return out


def _hyperparams(tx: GradientTransformation) -> tuple[dict[str, Any], set[str]]:
    """The defaults to mirror into param groups (torch key -> value), and the ambiguous keys.

    A name that two parts of the transformation use with different values (``trace`` and
    ``ema`` both have a ``decay``) is ambiguous: it is not mirrored, and a param group that
    sets it is an error.
    """
    defaults: dict[str, Any] = {}
    ambiguous: set[str] = set()
    for node in recorded_nodes(tx):
        arguments = recorded_arguments(node)
        for key, names in _mirrored(node.factory, arguments).items():
            value = tuple(arguments[n] for n in names) if len(names) > 1 else arguments[names[0]]
            if key in defaults and defaults[key] != value:
                ambiguous.add(key)
            defaults.setdefault(key, value)
    return {k: v for k, v in defaults.items() if k not in ambiguous}, ambiguous


class _Slot(NamedTuple):
    """Where one leaf of a group's state lives in ``self.state``."""

    key: str | None  # None for a None leaf
    index: int | None  # parameter index in the group, or None for a group-wide value
    dtype: torch.dtype | None
    shape: tuple[int, ...] | None


def _slots(state: Any) -> tuple[Any, list[_Slot]]:
    """Name every leaf of a group's state and say which parameter it belongs to."""
    leaves, spec, trails = _tree.tree_leaf_trails(state)
    described = []
    for leaf, trail in zip(leaves, trails):
        cut = next((i for i, (t, _) in enumerate(trail) if t is _tree.ParamList), None)
        index = None if cut is None else trail[cut][1]
        outer = trail if cut is None else trail[:cut]
        inner = [] if cut is None else trail[cut + 1 :]
        owner, field = (outer[-1][0].__name__, str(outer[-1][1])) if outer else ("", "value")
        suffix = "".join(f".{k}" for _, k in inner)
        full = ".".join(str(k) for _, k in outer) + suffix
        short = _TORCH_STATE_KEY.get((owner, field), field) + suffix
        described.append((leaf, index, full, short))
    # A short name is used only when no other state field takes it.
    owners: dict[str, set[str]] = {}
    for _, _, full, short in described:
        owners.setdefault(short, set()).add(full)
    slots = []
    for leaf, index, full, short in described:
        if leaf is None:
            slots.append(_Slot(None, index, None, None))
            continue
        key = short if len(owners[short]) == 1 else full
        slots.append(_Slot(key, index, leaf.dtype, tuple(leaf.shape)))
    return spec, slots


def _stored(key: str, value: torch.Tensor) -> torch.Tensor:
    # torch.optim keeps `step` as a float32 tensor; so do we, so checkpoints interoperate.
    return value.to(torch.float32) if key == "step" else value


class Optimizer(torch.optim.Optimizer):
    """Use any `GradientTransformation` as a `torch.optim.Optimizer`.

    Args:
        params: what torch optimizers accept: an iterable of tensors, of ``(name, tensor)``
            pairs, or of param-group dicts (which may override hyperparameters, e.g.
            ``{"params": no_decay, "weight_decay": 0.0}``).
        tx: the transformation. Its float hyperparameters (of every public factory inside it:
            ``adamw(...)``, ``from_torch(...)``, the parts of a ``chain``) appear in
            ``param_groups`` under torch's names and can be changed between steps by lr
            schedulers or by hand.
        compile: run each group's update compiled with ``torch.compile(fullgraph=True)``,
            traced once: changing hyperparameters do not recompile. Otherwise the update runs
            eagerly on multi-tensor kernels, or torch's fused kernel where the transformation
            is exactly Adam, AdamW or SGD with momentum.

    Raises:
        ValueError: for a param group with a hyperparameter the transformation does not have.

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

    def __init__(self, params: Iterable[Any], tx: GradientTransformation, *, compile: bool = False):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"Optimizer: tx must be a GradientTransformation, got {type(tx)}.")
        self.tx = tx
        self.compile = compile
        self._fused = None if compile else fused_kernel_for(tx)
        # Per group: (non-tensor hyperparameters, transformation, its update, maybe compiled).
        self._built: dict[int, tuple[Any, GradientTransformation, Callable[..., Any]]] = {}
        self._layouts: dict[int, tuple[Any, list[_Slot]]] = {}
        self._hyper_tensors: dict[int, dict[tuple[str, int], torch.Tensor]] = {}
        defaults, self._ambiguous = _hyperparams(tx)
        super().__init__(params, defaults)

    # ------------------------------------------------------------------ param groups

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its keys must be hyperparameters of the transformation."""
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
        super().add_param_group(param_group)

    @torch.compiler.disable
    def _group_values(self, group: dict[str, Any]) -> dict[str, Any]:
        """The group's current hyperparameters (torch key -> value), numbers as 0-d tensors.

        The tensors are kept per group and refilled here, never traced: under torch.compile (of
        `step`, or of a loop calling it) a scheduler's new lr is then new data, not a new
        constant, and nothing recompiles (torch.optim breaks the graph for the same reason).
        """
        values = {k: group.get(k, v) for k, v in self.defaults.items()}
        store = self._hyper_tensors.setdefault(id(group), {})
        device = group["params"][0].device
        out: dict[str, Any] = {}
        for key, value in values.items():
            parts = value if isinstance(value, tuple) else (value,)
            tensors = []
            for i, part in enumerate(parts):
                # Ints and zeros stay Python numbers: they may choose a chain's structure
                # (`min_dim_size_to_factor`; `from_torch` adds a stage only for momentum != 0).
                if not isinstance(part, float) or part == 0.0:
                    tensors.append(part)
                    continue
                t = store.get((key, i))
                if t is None:
                    t = store[(key, i)] = torch.zeros((), dtype=torch.float64, device=device)
                t.fill_(part)
                tensors.append(t)
            out[key] = tuple(tensors) if isinstance(value, tuple) else tensors[0]
        return out

    def _group_tx(self, group: dict[str, Any]) -> GradientTransformation:
        return self._group_update(group)[0]

    def _group_update(
        self, group: dict[str, Any]
    ) -> tuple[GradientTransformation, Callable[..., Any]]:
        """The group's transformation and its update function (compiled in compile mode).

        Built once and reused while the group's non-tensor hyperparameters stay the same: the
        float ones are the group's persistent tensors, refilled by `_group_values` every step.
        """
        values = self._group_values(group)
        static = tuple(
            (k, tuple(None if isinstance(x, torch.Tensor) else x for x in v))
            if isinstance(v, tuple)
            else (k, None if isinstance(v, torch.Tensor) else v)
            for k, v in values.items()
        )
        built = self._built.get(id(group))
        if built is None or built[0] != static:
            tx = self._build_group_tx(values)
            update = tx.update
            if self.compile:
                update = torch.compile(update, fullgraph=True)
            built = self._built[id(group)] = (static, tx, update)
        return built[1], built[2]

    def _build_group_tx(self, values: dict[str, Any]) -> GradientTransformation:

        def replacements(factory: Callable[..., Any], arguments: dict[str, Any]) -> dict:
            out = {}
            for key, names in _mirrored(factory, arguments).items():
                if key in self._ambiguous:
                    continue
                value = values[key]
                if len(names) > 1:
                    out.update(zip(names, value))
                elif names[0] == "betas":
                    out["betas"] = tuple(value)
                else:
                    out[names[0]] = value
            return out

        return rebuild(self.tx, replacements)

    # ------------------------------------------------------------------ state layout

    def _layout(self, group: dict[str, Any], tx: GradientTransformation):
        params = group["params"]
        cache_key = id(group)
        cached = self._layouts.get(cache_key)
        if cached is None or cached[0] is not params or len(cached[1][1]) == 0:
            meta = _tree.ParamList(torch.empty_like(p, device="meta") for p in params)
            try:
                layout = _slots(tx.init(meta))
            except (RuntimeError, NotImplementedError):  # an init that can't run on meta
                layout = _slots(tx.init(_tree.ParamList(params)))
            cached = (params, layout)
            self._layouts[cache_key] = cached
        return cached[1]

    def _has_state(self, params: list[torch.Tensor], slots: list[_Slot]) -> bool:
        keys = {s.key for s in slots if s.key is not None}
        return all(keys <= self.state[p].keys() for p in params) if keys else True

    def _ensure_state(
        self, group: dict[str, Any], tx: GradientTransformation, slots: list[_Slot]
    ) -> None:
        """Create the state of parameters that have none yet (lazily, as torch.optim does)."""
        params = group["params"]
        if not self._has_state(params, slots):
            fresh = tx.init(_tree.ParamList(params))
            self._write_state(group, fresh, slots, only_missing=True)

    def _read_state(self, group: dict[str, Any], spec: Any, slots: list[_Slot]) -> Any:
        params = group["params"]
        leaves = []
        for slot in slots:
            if slot.key is None:
                leaves.append(None)
                continue
            owner = params[slot.index if slot.index is not None else 0]
            value = self.state[owner][slot.key]
            leaves.append(value.to(slot.dtype) if value.dtype != slot.dtype else value)
        return _tree.tree_unflatten(spec, leaves)

    def _write_state(
        self, group: dict[str, Any], state: Any, slots: list[_Slot], only_missing: bool = False
    ) -> None:
        params = group["params"]
        for leaf, slot in zip(_tree.tree_leaves(state), slots):
            if slot.key is None:
                continue
            if slot.index is None:
                value = _stored(slot.key, leaf)
                for p in params:
                    if not (only_missing and slot.key in self.state[p]):
                        self.state[p][slot.key] = value
            else:
                p = params[slot.index]
                if not (only_missing and slot.key in self.state[p]):
                    self.state[p][slot.key] = leaf

    def _advance_own_step(self, params: list[torch.Tensor]) -> None:
        old = self.state[params[0]].get(_STEP)
        new = torch.ones((), dtype=torch.float32) if old is None else old + 1
        for p in params:
            self.state[p][_STEP] = new

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply one update to every parameter that has a gradient; return the closure's loss.

        ``p.grad`` is left as it is. Parameters without a gradient are not changed and their
        state is kept (the group-wide step count still advances).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = group["params"]
            grads = [p.grad for p in params]
            if all(g is None for g in grads):
                continue
            for g in grads:
                if g is not None and g.is_sparse:
                    raise RuntimeError("Optimizer: sparse gradients are not supported.")
            tx, update = self._group_update(group)
            spec, slots = self._layout(group, tx)
            self._ensure_state(group, tx, slots)
            live = [p for p in params if p.grad is not None]
            if self._fused is not None and fused_supported(live):
                self._fused(group, live, self.state)
                continue
            state = self._read_state(group, spec, slots)
            updates, state = update(_tree.ParamList(grads), state, _tree.ParamList(params))
            self._write_state(group, state, slots)
            if not any(slot.key == _STEP for slot in slots):
                self._advance_own_step(params)
            apply_updates_(list(params), list(updates))
        return loss

    # ------------------------------------------------------------------ train / eval

    def train(self, mode: bool = True) -> Optimizer:
        """Forwarded to a transformation with a ``train`` mode (schedule-free style methods).

        HF Trainer and Accelerate call ``optimizer.train()`` / ``.eval()`` when they exist; for
        transformations without modes this does nothing.
        """
        hook = getattr(self.tx, "train", None)
        if callable(hook):
            hook(mode)
        return self

    def eval(self) -> Optimizer:
        """Forwarded to the transformation (see `train`)."""
        return self.train(False)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """torch's format; every parameter gets its own copy of group-wide tensors like ``step``.

        (In memory the group shares one tensor; torch.optim increments ``step`` in place per
        parameter, so a checkpoint must not share it.)
        """
        out = super().state_dict()
        seen: set[int] = set()
        for entry in out["state"].values():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    if id(value) in seen:
                        entry[key] = value.clone()
                    seen.add(id(value))
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a checkpoint in torch's format, after checking all of it against this optimizer.

        Checkpoints of the equivalent torch.optim optimizer load too. Nothing is changed unless
        the whole checkpoint is valid.

        Raises:
            ValueError: naming what differs (groups, parameter counts, state keys, shapes).
        """
        self._check_state_dict(state_dict)
        # Own copies: the fused path updates state in place, and the caller may still use the
        # tensors it passed (distributed checkpointing passes another optimizer's live state).
        state_dict = {
            **state_dict,
            "state": {
                k: {kk: v.clone() if isinstance(v, torch.Tensor) else v for kk, v in entry.items()}
                for k, entry in state_dict["state"].items()
            },
        }
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _check_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("load_state_dict: expected a dict with 'state' and 'param_groups'.")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"load_state_dict: the checkpoint has {len(saved_groups)} param groups, this "
                f"optimizer has {len(self.param_groups)}."
            )
        saved_state = state_dict["state"]
        for g, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"load_state_dict: param group {g} has {len(saved['params'])} parameters in "
                    f"the checkpoint and {len(group['params'])} here."
                )
            _, slots = self._layout(group, self._group_tx(group))
            expected = {s.key for s in slots if s.key is not None}
            own_step = _STEP not in expected
            for i, index in enumerate(saved["params"]):
                if index not in saved_state:
                    continue
                entry = saved_state[index]
                keys = set(entry) - ({_STEP} if own_step else set())
                if keys != expected:
                    raise ValueError(
                        f"load_state_dict: parameter {i} of group {g} has state keys "
                        f"{sorted(keys)}, this optimizer expects {sorted(expected)} (a checkpoint "
                        f"of a different algorithm or configuration?)."
                    )
                for slot in slots:
                    if slot.key is None or slot.index not in (None, i):
                        continue
                    value = entry[slot.key]
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
                    if shape != slot.shape:
                        raise ValueError(
                            f"load_state_dict: state {slot.key!r} of parameter {i} in group {g} "
                            f"has shape {shape}, expected {slot.shape}."
                        )
