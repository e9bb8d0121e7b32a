"""SAM: sharpness-aware minimization, an outer optimizer stepping from adversarial points."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import EmptyState, GradientTransformation, Params, Updates, init_count
from torchopt_fn._branch import branch
from torchopt_fn._record import record_hyperparams
from torchopt_fn._update import apply_updates
from torchopt_fn._validate import require_params
from torchopt_fn.transforms._scaling import normalize_by_update_norm
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._ops import map_leaves

__all__ = ["NormalizeState", "SAMState", "normalize", "sam"]

NormalizeState = EmptyState
"""optax's name for the state of `normalize` (it has none)."""


@record_hyperparams
def normalize() -> GradientTransformation:
    r"""Divide the updates by their global L2 norm: $u = g / \|g\|_2$.

    The norm is taken over all leaves at once. There is no $\epsilon$, as in optax: a zero
    gradient gives NaN. Chain a step after it, ``chain(normalize(), sgd(rho))``, for SAM's
    adversarial optimizer (`sam`).

    Returns:
        A stateless `GradientTransformation` (state `NormalizeState`).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.normalize()
        >>> tx.update({"w": torch.tensor([3.0]), "b": torch.tensor([4.0])}, tx.init(None))[0]
        {'w': tensor([0.6000]), 'b': tensor([0.8000])}
    """
    return normalize_by_update_norm(scale_factor=1.0, eps=0.0)


class SAMState(NamedTuple):
    """State of `sam`.

    Attributes:
        steps_since_sync: adversarial steps taken since the last outer step (always 0 with
            ``opaque_mode=True``).
        opt_state: the outer optimizer's state.
        adv_state: the adversarial optimizer's state.
        cache: the outer parameters, from which the next outer step is taken (with
            ``opaque_mode=True`` none: ``()``, where optax has `None`, which
            `torch.func.vmap` cannot return).

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.contrib.sam(tf.sgd(0.1), tf.chain(tf.contrib.normalize(), tf.sgd(0.05)))
        >>> state = tx.init({"w": torch.ones(2)})
        >>> state.steps_since_sync, state.cache
        (tensor(0), {'w': tensor([1., 1.])})
    """

    steps_since_sync: torch.Tensor
    opt_state: Any
    adv_state: Any
    cache: Any


GradFn = Callable[[Params, int], Updates]


@record_hyperparams
def sam(
    optimizer: GradientTransformation,
    adv_optimizer: GradientTransformation,
    sync_period: int = 2,
    reset_state: bool = True,
    opaque_mode: bool = False,
    batch_axis_name: str | None = None,
) -> GradientTransformation:
    r"""SAM (Foret et al., 2021): take the outer step with the gradient at an adversarial point.

    A period of ``sync_period`` steps starts at the outer parameters $w$. Its first
    ``sync_period - 1`` steps climb: $w_{k+1} = w_k - a_k$ with
    $a_k$ = ``adv_optimizer``'s update of $g(w_k)$ (so ``chain(normalize(), sgd(rho))``
    moves by $+\rho\, g / \|g\|$). The last step goes back to $w$ and applies
    ``optimizer``'s update of the gradient found there:
    $w \leftarrow w + \mathrm{opt}(g(w_{s-1}))$. With ``sync_period=2`` this is the paper's
    SAM: $w \leftarrow w + \mathrm{opt}(g(w + \rho\, g(w) / \|g(w)\|))$.

    By default (``opaque_mode=False``) each call to ``update`` is one of these steps: the
    parameters really move to the adversarial points, and the caller takes each step's
    gradient where they are. With ``opaque_mode=True`` each call is a whole period: the
    gradient passed in is $g(w)$, and ``update(..., grad_fn=grad_fn)`` calls
    ``grad_fn(adv_params, i)`` for the gradient at the $i$-th adversarial point
    ($i = 0, \dots, $ ``sync_period - 2``; its gradients count only where the one passed
    in is not `None`); only the outer update is returned. Use it where every step has side
    effects (BatchNorm statistics) that adversarial steps must not have.

    In the `Optimizer` adapter, ``opaque_mode=True`` gives the usual SAM loop,
    ``loss = opt.step(closure)``: the closure runs at $w$ (its loss is returned), then, with
    the gradients cleared, at each adversarial point (one param group only). Each plain
    ``step()`` of the default mode is one step of a period. The adapter mirrors both
    optimizers' hyperparameters into its param groups: ``lr`` is left out where the two
    learning rates differ, and is one key for both where they are equal (an lr scheduler
    would then scale $\rho$ too).

    Args:
        optimizer: the outer optimizer.
        adv_optimizer: the adversarial optimizer; its update is subtracted (an ascent step).
        sync_period: steps per period ($\ge 1$): ``sync_period - 1`` adversarial steps, then
            the outer one.
        reset_state: re-initialise ``adv_optimizer``'s state at the end of every period.
        opaque_mode: one whole period per ``update``, with gradients from ``grad_fn``.
        batch_axis_name: JAX only (optax ``pmean``s ``grad_fn``'s gradients over this
            ``pmap`` axis); here it must be `None`. Average across processes in ``grad_fn``
            itself (under DDP, ``backward`` already does).

    Returns:
        A `GradientTransformation` with state `SAMState`. ``update`` needs ``params``;
        with ``opaque_mode=True`` also ``grad_fn``.

    Raises:
        ValueError: if ``sync_period`` is below 1, or ``batch_axis_name`` is not `None`;
            from ``update``, without ``params``, or without ``grad_fn`` in opaque mode.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> grad = lambda p: {"w": 2 * p["w"]}  # the gradient of |w|^2
        >>> tx = tf.contrib.sam(tf.sgd(0.1), tf.chain(tf.contrib.normalize(), tf.sgd(0.5)))
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> state = tx.init(params)
        >>> for _ in range(2):  # climb to w + 0.5 w/|w|, then step from w with g there
        ...     u, state = tx.update(grad(params), state, params)
        ...     params = tf.apply_updates(params, u)
        >>> params["w"]
        tensor([2.3400, 3.1200])
        >>> adversary = tf.chain(tf.contrib.normalize(), tf.sgd(0.5))
        >>> opaque = tf.contrib.sam(tf.sgd(0.1), adversary, opaque_mode=True)
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> u, _ = opaque.update(grad(params), opaque.init(params), params,
        ...                      grad_fn=lambda p, i: grad(p))
        >>> tf.apply_updates(params, u)["w"]
        tensor([2.3400, 3.1200])

    References:
        Foret et al., Sharpness-Aware Minimization for Efficiently Improving Generalization,
        ICLR 2021. https://arxiv.org/abs/2010.01412

    Differences from optax: with ``sync_period=1`` optax steps from the previous step's
    parameters (it reads the cache before refreshing it); here it is ``optimizer`` itself.
    For ``sync_period >= 2`` the numbers are the same. The cache is a copy of the
    parameters (optax shares its immutable arrays; torch updates tensors in place).
    """
    if sync_period < 1:
        raise ValueError(f"sam: sync_period must be >= 1, got {sync_period}.")
    if batch_axis_name is not None:
        raise ValueError(
            f"sam: batch_axis_name is for JAX's pmap and must be None here, got "
            f"{batch_axis_name!r}; average the gradients across processes in grad_fn "
            "(under DistributedDataParallel, backward already does)."
        )

    def init_fn(params):
        return SAMState(
            steps_since_sync=init_count(params),
            opt_state=optimizer.init(params),
            adv_state=adv_optimizer.init(params),
            cache=() if opaque_mode else tree_map(torch.clone, params),
        )

    def transparent_update_fn(updates, state, params=None, **extra_args):
        require_params(params, "sam")
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == sync_period - 1
        # A period's first step records the outer parameters (a copy: the caller may update
        # ``params`` in place). The check of shapes here comes before anything is computed.
        cache = map_leaves(
            lambda ops, gs, cs, ps: branch(first, lambda: [p.clone() for p in ps], lambda: cs),
            updates,
            state.cache,
            params,
            keep=(0,),
            what="sam",
        )

        def outer():
            opt_updates, opt_state = optimizer.update(updates, state.opt_state, cache)
            back = map_leaves(
                lambda ops, us, cs, ps: ops.add(ops.sub(cs, ps), us),
                opt_updates,
                cache,
                params,
                what="sam",
            )
            adv_state = adv_optimizer.init(params) if reset_state else state.adv_state
            return back, opt_state, adv_state

        def adversarial():
            adv_updates, adv_state = adv_optimizer.update(updates, state.adv_state, params)
            return tree_map(torch.neg, adv_updates), state.opt_state, adv_state

        # Eagerly only the step taken is computed; traced, both, and `where` picks.
        new_updates, opt_state, adv_state = branch(last, outer, adversarial)
        steps = (state.steps_since_sync + 1) % sync_period
        return new_updates, SAMState(steps, opt_state, adv_state, cache)

    def opaque_update_fn(updates, state, params=None, *, grad_fn: GradFn | None = None, **extra):
        require_params(params, "sam")
        if grad_fn is None:
            raise ValueError(
                "sam: opaque_mode=True needs update(updates, state, params, grad_fn=...), "
                "grad_fn(params, i) returning the gradient at params."
            )
        adv_params, grads, adv_state = params, updates, state.adv_state
        for i in range(sync_period - 1):
            adv_updates, adv_state = adv_optimizer.update(grads, adv_state, adv_params)
            adv_params = apply_updates(adv_params, tree_map(torch.neg, adv_updates))
            # A parameter without a gradient passed in stays out, whatever grad_fn returns.
            grads = tree_map(lambda u, g: g, updates, grad_fn(adv_params, i))
        if reset_state:
            adv_state = adv_optimizer.init(params)
        new_updates, opt_state = optimizer.update(grads, state.opt_state, params)
        return new_updates, SAMState(state.steps_since_sync, opt_state, adv_state, ())

    if not opaque_mode:
        return GradientTransformation(init_fn, transparent_update_fn)
    tx = _TakesGradFn(init_fn, opaque_update_fn)
    tx.grad_fn_from_closure = True
    return tx


class _TakesGradFn(GradientTransformation):
    """A transformation whose ``update`` needs ``grad_fn``: ``grad_fn_from_closure`` tells
    the `Optimizer` adapter to make one from ``step(closure)``."""
