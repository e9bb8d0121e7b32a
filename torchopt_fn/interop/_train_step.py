"""`TrainStep`: forward, gradient and update of an `nn.Module` as one compiled graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torchopt_fn._base import GradientTransformation
from torchopt_fn._record import recorded_nodes
from torchopt_fn._update import apply_updates, copy_pairs
from torchopt_fn.tree._flatten import tree_leaves
from torchopt_fn.tree._math import tree_add, tree_scale
from torchopt_fn.tree._ravel import ravel_parameters_
from torchopt_fn.tree._state import tree_load_state_dict_, tree_state_dict
from torchopt_fn.wrappers._layout import Layout, flatten, with_flat_masks

__all__ = ["TrainStep"]


class _Objective(torch.nn.Module):
    """``loss_fn(model, *batch)`` as a module, so `torch.func.functional_call` can swap the
    model's parameters for the traced ones around any code the loss runs."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch: Any, **kwargs: Any) -> torch.Tensor:
        return self.loss_fn(self.model, *batch, **kwargs)


class TrainStep:
    """One training step of an ``nn.Module``: forward, gradient and update in one graph.

    ``step(*batch)`` computes ``loss_fn(model, *batch)``, its gradient with respect to the
    model's trainable parameters (`torch.func.grad` through `torch.func.functional_call`),
    the update of ``tx``, and writes the new parameters into the module's own tensors (in
    place: the module, its ``state_dict`` and anything holding its parameters see them).
    With ``compile=True`` (the default) all of it is one ``torch.compile(fullgraph=True)``
    graph, traced once: the step count, schedules and injected hyperparameters live in the
    state as 0-d tensors, so nothing recompiles as they move. Buffers (batch-norm
    statistics) are updated by the forward as usual; frozen parameters
    (``requires_grad=False``) are left alone.

    ``flat=True`` first moves the trainable parameters into one buffer
    (`ravel_parameters_`: they become views of it) and runs ``tx`` on that buffer, as
    `flatten` does: the update compiles as a few kernels instead of several per tensor, which
    cuts the first compile. It takes element-wise transformations, global norms and masks
    (a weight-decay mask becomes an element mask over the buffer; `flatten` refuses the rest:
    per-tensor norms, factored moments, matrices) and parameters of one dtype and device.

    ``accumulation_steps=k`` splits each tensor of the batch into ``k`` micro-batches along
    its first dimension, adds up their gradients (each the gradient of a micro-batch's mean
    loss, divided by ``k``: the gradient of the whole batch's mean loss when the micro-batches
    are of equal size) and updates once. Compiled, the micro-batch gradient is one graph run
    ``k`` times and the update another.

    The optimizer state is `state`; `state_dict` / `load_state_dict` save and restore it
    with the step count (``torch.save(..., weights_only=True)`` loads it). A checkpoint is
    ``{"model": model.state_dict(), "step": step.state_dict()}``.

    Args:
        model: the module; its trainable parameters are those with ``requires_grad``.
        tx: the transformation.
        loss_fn: ``loss_fn(model, *batch, **kwargs) -> loss``, a 0-d tensor. It calls the
            model as usual (``model(x)``).
        flat: run ``tx`` on one flat buffer of the parameters.
        accumulation_steps: micro-batches per step.
        stochastic_rounding: round bfloat16 and float16 parameters stochastically
            (`apply_updates`'s option).
        compile: compile the step (else it runs eagerly, the same numbers).
        **compile_kwargs: passed to `torch.compile` (``fullgraph`` is always True).

    Raises:
        ValueError: for ``accumulation_steps < 1``, ``flat=True`` with parameters of several
            dtypes or devices or a per-tensor ``tx``, or a model without trainable
            parameters.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> model = torch.nn.Linear(3, 1)
        >>> def loss_fn(model, x, y):
        ...     return torch.nn.functional.mse_loss(model(x), y)
        >>> step = tf.TrainStep(model, tf.adamw(1e-2), loss_fn, compile=False)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> first = step(x, y)
        >>> for _ in range(20):
        ...     loss = step(x, y)
        >>> bool(loss < first), int(step.state_dict()["0.count"])
        (True, 21)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tx: GradientTransformation,
        loss_fn: Callable[..., torch.Tensor],
        *,
        flat: bool = False,
        accumulation_steps: int = 1,
        stochastic_rounding: bool = False,
        compile: bool = True,
        **compile_kwargs: Any,
    ):
        if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
            raise ValueError(
                f"TrainStep: accumulation_steps must be an int >= 1, got {accumulation_steps!r}."
            )
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("TrainStep: the model has no parameter with requires_grad=True.")
        self.model, self.tx, self.loss_fn = model, tx, loss_fn
        self.flat, self.accumulation_steps = flat, accumulation_steps
        self.stochastic_rounding = stochastic_rounding
        self._objective = _Objective(model, loss_fn)
        self._params = dict(named)
        self._buffers = {"model." + n: b for n, b in model.named_buffers()}
        # The order of the tree's leaves (a dict's sorted keys), which the flat buffer and the
        # masks resolved onto it follow.
        order = tree_leaves({n: n for n in self._params})
        self._names = ["model." + n for n in order]  # as `_objective` names them
        self._shapes = [self._params[n].shape for n in order]
        self._sizes = [self._params[n].numel() for n in order]
        if flat:
            flatten(tx)  # refuses per-tensor transformations, naming them
            kinds = {(p.dtype, p.device) for _, p in named}
            if len(kinds) > 1:
                raise ValueError(
                    "TrainStep(flat=True): the trainable parameters must share one dtype and "
                    f"device to share one buffer; got {sorted(str(k) for k in kinds)}."
                )
            leaves = tree_leaves(self._params)
            self._flat, _ = ravel_parameters_(leaves)
            # Masks (weight decay on the matrices only) as element masks over the buffer.
            self.tx = tx = with_flat_masks(tx, self._params, Layout(leaves))
        with torch.no_grad():
            self.state = tx.init(self._trained())
        self._step, self._grad, self._update = self._eager_functions()
        if compile:
            kwargs = {**compile_kwargs, "fullgraph": True}
            self._step, self._grad, self._update = (
                torch.compile(fn, **kwargs) for fn in (self._step, self._grad, self._update)
            )

    # ------------------------------------------------------------------ the step

    def __call__(self, *batch: Any, **kwargs: Any) -> torch.Tensor:
        """Train on one batch; return its loss (detached, a 0-d tensor)."""
        with torch.no_grad():
            if self.accumulation_steps == 1:
                outs = self._step(self._trained(), self._buffers, self.state, batch, kwargs)
                return self._write(outs)
            k = self.accumulation_steps
            micro = [_split(x, k) for x in batch]
            grads = loss = None
            for i in range(k):
                g, value = self._grad(
                    self._trained(), self._buffers, tuple(m[i] for m in micro), kwargs
                )
                grads = g if grads is None else tree_add(grads, g)
                loss = value if loss is None else loss + value
            grads = tree_scale(1.0 / k, grads)
            outs = self._update(self._trained(), self.state, grads, loss / k)
            return self._write(outs)

    def _trained(self) -> Any:
        """What ``tx`` sees: the flat buffer, or the dict of parameters."""
        return self._flat if self.flat else self._params

    @staticmethod
    def _write(outs: tuple[torch.Tensor, list, list]) -> torch.Tensor:
        loss, dsts, srcs = outs
        # 0-d results are copied here, after the graph: Inductor (torch 2.13) can drop a write
        # into a 0-d input made next to other writes (see `compile_step`).
        if dsts:
            torch._foreach_copy_(dsts, srcs)
        return loss

    def _eager_functions(self) -> tuple[Callable[..., Any], ...]:
        """The step (gradient and update), the gradient alone, and the update alone."""
        tx, objective, flat, rounding = (
            self.tx,
            self._objective,
            self.flat,
            self.stochastic_rounding,
        )
        names, shapes, sizes = self._names, self._shapes, self._sizes
        takes_loss = any(getattr(n.factory, "takes_loss", False) for n in recorded_nodes(tx))

        def loss_of(trained: Any, buffers: dict, batch: tuple, kwargs: dict) -> tuple:
            if flat:
                # A traceable unravel: views of the buffer.
                views = [c.view(s) for c, s in zip(trained.split(sizes), shapes)]
                named = dict(zip(names, views))
            else:
                named = {"model." + n: p for n, p in trained.items()}
            # The forward may update buffers (batch-norm statistics) in place, which a grad
            # transform forbids on tensors from outside: it updates copies, written back after.
            fresh = {n: b.clone() for n, b in buffers.items()}
            loss = torch.func.functional_call(objective, {**named, **fresh}, batch, kwargs)
            return loss, (loss, fresh)

        def grad(trained: Any, buffers: dict, batch: tuple, kwargs: dict) -> tuple:
            grads, (loss, fresh) = torch.func.grad(loss_of, has_aux=True)(
                trained, buffers, batch, kwargs
            )
            for name, b in buffers.items():
                b.copy_(fresh[name])
            return grads, loss

        def update(trained: Any, state: Any, grads: Any, loss: torch.Tensor) -> tuple:
            extra = {"value": loss.detach()} if takes_loss else {}
            updates, new_state = tx.update(grads, state, trained, **extra)
            new = apply_updates(trained, updates, stochastic_rounding=rounding)
            # Written into the module's tensors and the state's (one `copy_` each: see
            # `compile_step`), except 0-d ones, returned and copied after the graph.
            pairs = copy_pairs(trained, new, "TrainStep") + copy_pairs(
                state, new_state, "TrainStep"
            )
            for dst, src in pairs:
                if dst.dim() > 0:
                    dst.copy_(src)
            scalars = [(d, s) for d, s in pairs if d.dim() == 0]
            return loss.detach(), [d for d, _ in scalars], [s for _, s in scalars]

        def step(trained: Any, buffers: dict, state: Any, batch: tuple, kwargs: dict) -> tuple:
            grads, loss = grad(trained, buffers, batch, kwargs)
            return update(trained, state, grads, loss)

        return step, grad, update

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The optimizer state as a flat ``{key: tensor}`` dict (`tree_state_dict`: keys such
        as ``"1.0.mu"``; ``weights_only``-loadable)."""
        return tree_state_dict(self.state)

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Copy a `state_dict` into the state; checked whole before anything is written."""
        try:
            tree_load_state_dict_(self.state, state_dict)
        except ValueError as e:
            raise ValueError(f"TrainStep.load_state_dict: {e}") from e


def _split(x: Any, k: int) -> list[Any]:
    """``x`` cut into ``k`` equal micro-batches along its first dimension (non-tensors
    repeat)."""
    if not isinstance(x, torch.Tensor):
        return [x] * k
    if x.dim() == 0 or x.shape[0] % k:
        raise ValueError(
            f"TrainStep: a batch tensor of shape {tuple(x.shape)} cannot be cut into "
            f"accumulation_steps={k} equal micro-batches along its first dimension."
        )
    return list(x.chunk(k))
