"""Differentiable inner loops over an `nn.Module`: `MetaOptimizer`, and the snapshots of MAML.

`MetaOptimizer` runs a transformation on a module's parameters and replaces them by the
updated tensors, which stay connected to the graph, so a later outer loss differentiates
through the inner steps. `extract_state` / `recover_state` take and put back a module's
tensors (or an optimizer's state) between tasks; `detach_` cuts the graph in place. These
are TorchOpt's ``MetaOptimizer``, ``extract_state_dict``, ``recover_state_dict`` and
``stop_gradient``, written for torchopt_fn's transformations.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from torchopt_fn._base import GradientTransformation, OptState
from torchopt_fn._update import apply_updates
from torchopt_fn.tree._flatten import _mismatch_error, tree_leaves, tree_map, tree_structure
from torchopt_fn.tree._state import tree_load_state_dict_, tree_state_dict

__all__ = ["MetaOptimizer", "detach_", "extract_state", "recover_state"]

Slot = tuple[nn.Module, str]  # a submodule and the name of a tensor in its _parameters/_buffers
CopyMode = Literal["reference", "copy", "deepcopy"]
_MODES = ("reference", "copy", "deepcopy")


def _slots(module: nn.Module, kind: str) -> dict[str, Slot]:
    """Every ``kind`` (``"_parameters"`` or ``"_buffers"``) slot of ``module``, by qualified name.

    Tied tensors and shared submodules appear under each of their names, as in
    ``named_parameters(remove_duplicate=False)``.
    """
    out = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        for name, t in getattr(sub, kind).items():
            if t is not None:
                out[f"{prefix}.{name}" if prefix else name] = (sub, name)
    return out


class MetaOptimizer:
    """A differentiable optimizer for an ``nn.Module``: TorchOpt's ``MetaOptimizer``.

    ``step(loss)`` takes the gradient of ``loss`` with respect to the module's parameters
    that require grad (``torch.autograd.grad(..., create_graph=True)``; a parameter the loss
    does not use gets a `None` gradient, so ``tx`` leaves it and its state alone), runs
    ``tx.update`` and puts the new parameters into the module in place of the old ones. The
    new parameters are ordinary (non-leaf) tensors of the graph, so an outer loss computed
    after any number of steps backpropagates to the initial parameters (the module's
    original ``nn.Parameter``s) and to every tensor ``tx`` was built from (a learning rate
    ``tf.adam(lr_tensor)``, ...). Tied parameters are updated once and stay tied; frozen ones
    (``requires_grad=False``) are left alone.

    The optimizer state is the tree `state` (keyed by the parameters' names);
    `state_dict` / `load_state_dict` save and restore it. `extract_state` and
    `recover_state` take and put back both the module's tensors and this state between
    tasks (MAML), `detach_` cuts them from the graph (truncated backpropagation).

    Args:
        module: the module; its parameters with ``requires_grad`` are optimized.
        tx: the transformation, pure and differentiable as they all are here. With Adam-style
            optimizers pass ``eps_root > 0`` (see the docs' warning on ``eps_root``).

    Raises:
        ValueError: if the module has no parameter with ``requires_grad=True``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> net = torch.nn.Linear(2, 1)
        >>> lr = torch.tensor(0.1, requires_grad=True)
        >>> opt = tf.MetaOptimizer(net, tf.sgd(lr))
        >>> w0 = net.weight  # the meta-parameter
        >>> x, y = torch.randn(8, 2), torch.randn(8, 1)
        >>> for _ in range(3):
        ...     opt.step(((net(x) - y) ** 2).mean())
        >>> net.weight.is_leaf  # the adapted weight is a tensor of the graph
        False
        >>> outer = ((net(x) - y) ** 2).mean()
        >>> outer.backward()  # reaches the initial parameters and the learning rate
        >>> w0.grad.shape, lr.grad.shape
        (torch.Size([1, 2]), torch.Size([]))
    """

    def __init__(self, module: nn.Module, tx: GradientTransformation):
        # Group the slots by tensor, so that a tied parameter is one entry under its first
        # name, updated once and written into every slot holding it.
        names: dict[int, str] = {}
        slots: dict[int, list[Slot]] = {}
        for name, (sub, attr) in _slots(module, "_parameters").items():
            t = sub._parameters[attr]
            if t.requires_grad:
                names.setdefault(id(t), name)
                slots.setdefault(id(t), []).append((sub, attr))
        if not slots:
            raise ValueError("MetaOptimizer: the module has no parameter with requires_grad=True.")
        self.module = module
        self.tx = tx
        self._slots = {names[key]: group for key, group in slots.items()}
        self.state: OptState = tx.init(self._params())

    def _params(self) -> dict[str, torch.Tensor]:
        """The module's current optimized tensors, by name."""
        return {name: sub._parameters[attr] for name, [(sub, attr), *_] in self._slots.items()}

    def step(self, loss: torch.Tensor) -> None:
        """Update the module's parameters by ``tx`` with the gradient of ``loss``, differentiably.

        Examples:
            >>> import torch, torchopt_fn as tf
            >>> net = torch.nn.Linear(1, 1, bias=False)
            >>> with torch.no_grad():
            ...     _ = net.weight.fill_(1.0)
            >>> opt = tf.MetaOptimizer(net, tf.sgd(0.5))
            >>> opt.step((net.weight**2).sum())  # w - 0.5 * 2w
            >>> net.weight.detach(), net.weight.grad_fn is not None
            (tensor([[0.]]), True)
        """
        params = self._params()
        grads = torch.autograd.grad(
            loss, list(params.values()), create_graph=True, allow_unused=True
        )
        updates, self.state = self.tx.update(dict(zip(params, grads)), self.state, params)
        for name, new in apply_updates(params, updates).items():
            for sub, attr in self._slots[name]:
                # `setattr(sub, attr, new)` would refuse: nn.Module accepts only an
                # nn.Parameter (a leaf) where a parameter was registered. Writing into the
                # module's own `_parameters` dict, as TorchOpt does, puts the non-leaf tensor
                # where the forward reads it, keeps the graph back to the old parameter, and
                # keeps the slot registered; `recover_state` puts the originals back the same
                # way.
                sub._parameters[attr] = new

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state as a flat dict of tensors (`tree_state_dict`), cut from the graph.

        The tensors share their storage with the state; ``torch.load(weights_only=True)``
        loads a saved one. `extract_state` takes the state with its graph.

        Examples:
            >>> import torch, torchopt_fn as tf
            >>> opt = tf.MetaOptimizer(torch.nn.Linear(2, 1), tf.adam(0.1))
            >>> sorted(opt.state_dict())
            ['0.count', '0.mu.bias', '0.mu.weight', '0.nu.bias', '0.nu.weight']
        """
        return {key: x.detach() for key, x in tree_state_dict(self.state).items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Set the state from a `state_dict` (checked first: `tree_load_state_dict_`).

        The loaded state is new tensors, not connected to any graph.

        Raises:
            ValueError: naming the missing or unexpected keys, or a mismatched shape.

        Examples:
            >>> import torch, torchopt_fn as tf
            >>> opt = tf.MetaOptimizer(torch.nn.Linear(2, 1), tf.adam(0.1))
            >>> opt.load_state_dict({**opt.state_dict(), "0.count": torch.tensor(5)})
            >>> opt.state[0].count
            tensor(5)
        """
        # Fresh tensors to load into: the current ones may be saved for a backward pass still
        # to come, which an in-place copy would invalidate.
        fresh = tree_map(_fresh_copy, self.state)
        self.state = tree_load_state_dict_(fresh, state_dict)


def _fresh_copy(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def _replicate(t: torch.Tensor, by: CopyMode, detach: bool) -> torch.Tensor:
    """``t`` as `extract_state` takes it."""
    if by == "deepcopy":
        detach = True
    if not detach:
        return t if by == "reference" else t.clone()
    x = t.detach() if by == "reference" else t.detach().clone()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(x, requires_grad=t.requires_grad)
    return x.requires_grad_(t.requires_grad)


def extract_state(
    target: nn.Module | MetaOptimizer, *, by: CopyMode = "reference", detach: bool = False
) -> Any:
    """A snapshot of a module's tensors or of a `MetaOptimizer`'s state, for `recover_state`.

    For an ``nn.Module``: ``{qualified name: tensor}`` for its parameters and buffers, tied
    ones under each of their names, whatever the module holds now (the non-leaf tensors a
    `MetaOptimizer` put there included). For a `MetaOptimizer`: its `state` tree.

    ``by`` says how each tensor is taken (TorchOpt's ``extract_state_dict``):

    - ``"reference"``: the tensor itself. `MetaOptimizer` replaces tensors and never changes
      them, so this is the snapshot to take of the meta-parameters before an inner loop: it
      holds the module's original ``nn.Parameter``s, which `recover_state` puts back.
    - ``"copy"``: ``t.clone()``, new memory still connected to the graph: a loss on the
      copies backpropagates to the originals.
    - ``"deepcopy"``: a detached copy with the original's ``requires_grad`` (an
      ``nn.Parameter`` stays one): a checkpoint, with no graph.

    ``detach=True`` cuts every tensor from the graph: with ``"reference"``, tensors sharing
    the originals' memory; ``"copy"`` with ``detach=True`` is ``"deepcopy"``. A tensor held
    under several names is taken once, so the snapshot keeps the ties.

    Args:
        target: an ``nn.Module`` or a `MetaOptimizer`.
        by: ``"reference"``, ``"copy"`` or ``"deepcopy"``.
        detach: cut the snapshot from the graph.

    Returns:
        A ``{name: tensor}`` dict (module) or a state tree (`MetaOptimizer`).

    Raises:
        ValueError: for another ``by``.
        TypeError: for another kind of ``target``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> net = torch.nn.Linear(2, 1)
        >>> snap = tf.extract_state(net)
        >>> sorted(snap), snap["weight"] is net.weight
        (['bias', 'weight'], True)
        >>> copied = tf.extract_state(net, by="copy")
        >>> copied["weight"].grad_fn is not None  # a clone, still on the graph
        True
        >>> tf.extract_state(net, by="deepcopy")["weight"].grad_fn is None
        True
    """
    if by not in _MODES:
        raise ValueError(f"extract_state: by must be one of {_MODES}, got {by!r}.")
    taken: dict[int, torch.Tensor] = {}

    def take(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) not in taken:
            taken[id(t)] = _replicate(t, by, detach)
        return taken[id(t)]

    if isinstance(target, MetaOptimizer):
        return tree_map(take, target.state)
    if isinstance(target, nn.Module):
        slots = {**_slots(target, "_parameters"), **_slots(target, "_buffers")}
        return {name: take(_held(sub, attr)) for name, (sub, attr) in slots.items()}
    raise TypeError(
        f"extract_state: expected an nn.Module or a MetaOptimizer, got {type(target).__name__}."
    )


def _held(sub: nn.Module, attr: str) -> torch.Tensor:
    return sub._parameters[attr] if attr in sub._parameters else sub._buffers[attr]


def recover_state(target: nn.Module | MetaOptimizer, snapshot: Any) -> None:
    """Put an `extract_state` snapshot back into a module or a `MetaOptimizer`.

    A module gets the snapshot's parameters themselves (written into its ``_parameters``
    dicts, as `MetaOptimizer` does): from a snapshot by reference, its original
    ``nn.Parameter``s, those an outer optimizer holds. Buffers come back as copies of the
    snapshot's, unless the module holds the snapshot's own: a forward in training mode
    updates buffers in place (batch norm's running statistics), and the copies keep the
    snapshot as it was, so one snapshot serves every task. (A snapshot by reference holds
    the module's own buffers and sees those updates: take it by ``"copy"`` for such a
    module.) A `MetaOptimizer` gets the snapshot as its `state`.

    Raises:
        ValueError: if the snapshot's names differ from the module's (naming them), or its
            tree from the optimizer's state (naming the first differing path).
        TypeError: for another kind of ``target``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = tf.MetaOptimizer(net, tf.sgd(0.1))
        >>> original, snap = net.weight, tf.extract_state(net)
        >>> opt.step(net(torch.ones(1, 2)).sum())
        >>> net.weight is original
        False
        >>> tf.recover_state(net, snap)
        >>> net.weight is original
        True
    """
    if isinstance(target, MetaOptimizer):
        if tree_structure(snapshot) != tree_structure(target.state):
            raise _mismatch_error(target.state, snapshot, "recover_state")
        target.state = snapshot
        return
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"recover_state: expected an nn.Module or a MetaOptimizer, got {type(target).__name__}."
        )
    params, buffers = _slots(target, "_parameters"), _slots(target, "_buffers")
    missing = sorted((set(params) | set(buffers)) - set(snapshot))
    unexpected = sorted(set(snapshot) - set(params) - set(buffers))
    if missing or unexpected:
        raise ValueError(
            f"recover_state: missing names {missing}, unexpected names {unexpected} (was the "
            "snapshot taken of another module?)."
        )
    copies: dict[int, torch.Tensor] = {}
    for name, t in snapshot.items():
        if name in params:
            sub, attr = params[name]
            sub._parameters[attr] = t  # see MetaOptimizer.step on writing into _parameters
            continue
        sub, attr = buffers[name]
        if sub._buffers[attr] is not t:
            if id(t) not in copies:
                copies[id(t)] = t.clone()
            sub._buffers[attr] = copies[id(t)]


def detach_(target: nn.Module | MetaOptimizer) -> None:
    """Cut a module's tensors, or a `MetaOptimizer`'s state, from the graph, in place.

    TorchOpt's ``stop_gradient``. Every non-leaf tensor (the parameters a `MetaOptimizer`
    put into the module, its state) becomes a leaf with the same values, so nothing computed
    from now on backpropagates past this point: truncated backpropagation through a long
    inner loop. A module's tensors keep ``requires_grad``, so the `MetaOptimizer` can go on
    differentiating them. Leaves (the original ``nn.Parameter``s) are unchanged.

    Raises:
        TypeError: for another kind of ``target``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = tf.MetaOptimizer(net, tf.adam(0.1, eps_root=1e-8))
        >>> opt.step(net(torch.ones(1, 2)).sum())
        >>> tf.detach_(net)
        >>> tf.detach_(opt)
        >>> net.weight.grad_fn is None, net.weight.requires_grad
        (True, True)
        >>> all(x.grad_fn is None for x in tf.tree_leaves(opt.state))
        True
    """
    if isinstance(target, MetaOptimizer):
        tensors, keep_requires_grad = tree_leaves(target.state), False
    elif isinstance(target, nn.Module):
        tensors, keep_requires_grad = [*target.parameters(), *target.buffers()], True
    else:
        raise TypeError(
            f"detach_: expected an nn.Module or a MetaOptimizer, got {type(target).__name__}."
        )
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.grad_fn is not None:
            t.detach_().requires_grad_(keep_requires_grad)
