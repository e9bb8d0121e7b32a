"""Sophia: Adam's momentum preconditioned by a running estimate of the Hessian's diagonal.

The default estimate is Hutchinson's, $z \\odot Hz$ with Rademacher $z$; its random signs come
from a counter-based scheme (a seed and a draw count kept in the state), so the update stays a
pure function of its inputs and compiles and vmaps like any other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    MaskOrFn,
    Scalar,
    ScalarOrSchedule,
    init_count,
    params_device,
)
from torchopt_fn._branch import branch, concrete
from torchopt_fn._combine import chain
from torchopt_fn._gathered import gathered
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import (
    check_in_range,
    check_non_negative,
    check_positive,
    require_params,
)
from torchopt_fn.transforms._adding import _normal, _path_seed, add_decayed_weights
from torchopt_fn.transforms._scaling import scale_by_learning_rate
from torchopt_fn.tree._flatten import (
    leaf_paths,
    tree_flatten,
    tree_leaves,
    tree_structure,
    tree_unflatten,
)
from torchopt_fn.tree._math import bias_correction, moment, tree_update_moment, tree_zeros_like
from torchopt_fn.tree._ops import cast_like, check_like, map_leaves

__all__ = [
    "HutchinsonState",
    "SophiaState",
    "hutchinson_estimator_diag_hessian",
    "scale_by_sophia",
    "sophia",
]

# Mixed into every leaf's seed, so that Hutchinson's signs are not the signs of `add_noise`'s
# noise when both are given the same seed (they share the counter-based sampler).
_SALT = 0x2C1B3C6D5E4F7A89


def _int64_seed(random_seed: int | torch.Generator | None) -> int:
    if random_seed is None:
        return 0  # optax falls back to PRNGKey(0)
    if isinstance(random_seed, torch.Generator):
        drawn = torch.randint(
            -(1 << 63), (1 << 63) - 1, (), generator=random_seed, device=random_seed.device
        )
        return int(drawn.item())
    if isinstance(random_seed, bool) or not isinstance(random_seed, int):
        raise ValueError(
            "hutchinson_estimator_diag_hessian: random_seed must be an int or a "
            f"torch.Generator, got {random_seed!r}."
        )
    return ((random_seed + (1 << 63)) % (1 << 64)) - (1 << 63)


def _rademacher_like(params: Any, key: torch.Tensor) -> Any:
    """Independent ±1 entries shaped like ``params``, a pure function of ``key`` = (seed, draw).

    Each leaf's signs depend on the seed, the draw count and the leaf's path only (not on the
    other leaves), drawn as the signs of `add_noise`'s counter-based normal samples.
    """
    leaves = tree_leaves(params)
    seeds = [_path_seed(path) ^ _SALT for path in leaf_paths(params)]
    by_device: dict[torch.device, list[int]] = {}
    for k, p in enumerate(leaves):
        by_device.setdefault(p.device, []).append(k)
    signs: list[Any] = [None] * len(leaves)
    for device, ks in by_device.items():
        numels = [leaves[k].numel() for k in ks]
        flat = _normal(numels, [seeds[k] for k in ks], torch.float32, device, key.to(device))
        for k, z in zip(ks, flat.split(numels)):
            one = torch.ones((), dtype=leaves[k].dtype, device=device)
            signs[k] = torch.where(z < 0, -one, one).reshape(leaves[k].shape)
    return tree_unflatten(tree_structure(params), signs)


class HutchinsonState(NamedTuple):
    """State of `hutchinson_estimator_diag_hessian`: ``key``, the int64 pair (seed, draws so far).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tf.contrib.hutchinson_estimator_diag_hessian(7).init({"w": torch.zeros(2)})
        HutchinsonState(key=tensor([7, 0]))
    """

    key: torch.Tensor


@record_hyperparams
def hutchinson_estimator_diag_hessian(
    random_seed: int | torch.Generator | None = None,
) -> GradientTransformation:
    r"""Hutchinson's estimate of the Hessian's diagonal, $z \odot \nabla^2 f(\theta)\, z$.

    $z$ has independent Rademacher (±1) entries, so $E[z \odot Hz] = \operatorname{diag}(H)$:
    unbiased, with high variance. ``update(updates, state, params, obj_fn=f)`` ignores the
    updates' values and returns the estimate at ``params`` for the objective
    $f(\theta)$ (a function of the params tree alone returning a 0-d tensor;
    ``lambda p: loss(p, batch)``), as a tree shaped like the updates (`None` where they are).
    The Hessian-vector product is forward-over-reverse, `torch.func.jvp` of `torch.func.grad`,
    at the cost of about two gradients; ``obj_fn`` must be `torch.func`-transformable.

    **Randomness.** The state is ``key`` = (seed, number of draws so far); each update draws
    every leaf's signs from a `torch.Generator` seeded afresh from the key and the leaf's path
    (the counter-based sampler of `add_noise`), then advances the count. So equal seeds give
    equal estimates, a checkpointed state resumes the same sequence, the update compiles with
    ``torch.compile(fullgraph=True)`` without recompiling, and under `torch.func.vmap` a
    batched key gives each member its own signs. The sampler reads the key on the host (one
    small device-to-host copy per step). The signs are not optax's (JAX's threefry).

    Args:
        random_seed: an int seed, or a `torch.Generator` from which one 64-bit seed is drawn
            when the transformation is built (default 0, as optax's ``PRNGKey(0)``).

    Returns:
        A `GradientTransformation` with state `HutchinsonState`.

    Raises:
        ValueError: for a ``random_seed`` of another type; at ``update``, without ``params``
            or ``obj_fn``, or for updates not shaped like the params.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.hutchinson_estimator_diag_hessian(random_seed=0)
        >>> params = {"w": torch.tensor([1.0, 2.0])}
        >>> obj_fn = lambda p: (p["w"] ** 3).sum()  # a diagonal Hessian, 6 w
        >>> diag, state = tx.update(params, tx.init(params), params, obj_fn=obj_fn)
        >>> diag["w"], state.key
        (tensor([ 6., 12.]), tensor([0, 1]))

    References:
        Hutchinson, A stochastic estimator of the trace of the influence matrix for Laplacian
        smoothing splines, 1989. https://doi.org/10.1080/03610918908812806
    """
    seed = _int64_seed(random_seed)
    what = "hutchinson_estimator_diag_hessian"

    def init_fn(params):
        return HutchinsonState(
            key=torch.tensor([seed, 0], dtype=torch.int64, device=params_device(params))
        )

    def update_fn(updates, state, params=None, obj_fn=None, **extra_args):
        del extra_args
        require_params(params, what)
        if obj_fn is None:
            raise ValueError(
                f"{what} needs the objective: call update(updates, state, params, "
                "obj_fn=lambda p: loss(p, batch))."
            )
        check_like(updates, params, what)
        key = state.key + torch.tensor([0, 1], dtype=state.key.dtype, device=state.key.device)
        if all(u is None for u in tree_leaves(updates)):
            return updates, HutchinsonState(key=key)
        signs = _rademacher_like(params, state.key)
        # On the leaves: torch.func takes lists and dicts, not every container a tree may use.
        leaves, spec = tree_flatten(params)

        gradient = torch.func.grad(lambda xs: obj_fn(tree_unflatten(spec, xs)))
        hz = tree_unflatten(spec, torch.func.jvp(gradient, (leaves,), (tree_leaves(signs),))[1])
        diag = map_leaves(
            lambda ops, gs, zs, hs: ops.mul(zs, cast_like(hs, zs)), updates, signs, hz, what=what
        )
        return diag, HutchinsonState(key=key)

    return gathered(GradientTransformation(init_fn, update_fn))


_HUTCHINSON = hutchinson_estimator_diag_hessian()


class SophiaState(NamedTuple):
    """State of `scale_by_sophia`: the count, the momentum ``mu``, the running Hessian
    diagonal ``nu``, and the state of the Hessian-diagonal transformation.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> state = tf.contrib.scale_by_sophia().init({"w": torch.zeros(2)})
        >>> state.count, state.nu, state.hessian_fn_state
        (tensor(0), {'w': tensor([0., 0.])}, HutchinsonState(key=tensor([0, 0])))
    """

    count: torch.Tensor
    mu: Any
    nu: Any
    hessian_fn_state: Any


@record_hyperparams
def scale_by_sophia(
    b1: Scalar = 0.965,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    gamma: Scalar = 0.01,
    clip_threshold: Scalar | None = 1.0,
    update_interval: int | torch.Tensor = 10,
    hessian_diagonal_fn: GradientTransformation = _HUTCHINSON,
    mu_dtype: torch.dtype | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    nu_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Sophia's direction: momentum over a clipped running Hessian diagonal.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $\hat m_t = m_t / (1-\beta_1^t)$,
    $u_t = \operatorname{clip}(\hat m_t / \max(\gamma h_{t-1}, \epsilon), \pm\rho)$ with
    $\rho$ = ``clip_threshold`` (no clipping for `None`). Every ``update_interval`` steps
    (steps $t$ with $t - 1 \equiv 0$, the first included) ``hessian_diagonal_fn`` gives an
    estimate $\hat h$ and $h_t = \beta_2 h_{t-1} + (1-\beta_2)\hat h$, else $h_t = h_{t-1}$; the
    update uses the diagonal *before* this step's estimate, as optax does. Extra keyword
    arguments of ``update`` (``obj_fn=`` for the default Hutchinson estimator) go to
    ``hessian_diagonal_fn``. Needs ``params``.

    Eagerly only the taken branch runs; under `torch.compile` and `torch.func.vmap` the
    estimate is computed every step and kept on the steps that refresh ``nu`` (see `branch`),
    the same numbers. ``verbose`` prints the win rate (the fraction of unclipped entries) every
    ``print_win_rate_every_n_steps`` steps in eager runs; traced runs print nothing.

    Args:
        b1: decay of the momentum.
        b2: decay of the Hessian-diagonal average (per refresh: effectively
            $1 - (1-\beta_2)/k$ per step for ``update_interval`` $k$).
        eps: the floor of the denominator.
        gamma: the scale of the Hessian diagonal in the denominator.
        clip_threshold: the bound $\rho$ of each entry of the update, or `None`.
        update_interval: refresh the Hessian diagonal every this many steps.
        hessian_diagonal_fn: a `GradientTransformation` mapping (gradients, its state,
            ``params``, extra arguments) to the diagonal estimate; Hutchinson's by default.
        mu_dtype: the momentum's dtype (default: the params').
        nu_dtype: the running Hessian diagonal's dtype (default: the params').
        verbose: print the win rate.
        print_win_rate_every_n_steps: how often to print it (0: never).

    Returns:
        A `GradientTransformation` with state `SophiaState`.

    Raises:
        ValueError: for betas outside $[0, 1)$, negative ``eps`` or ``gamma``, a non-positive
            ``clip_threshold`` or ``update_interval``; at ``update``, without ``params``.

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.scale_by_sophia(b1=0.5, b2=0.5, update_interval=1)
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> obj_fn = lambda p: (p["w"] ** 2 * torch.tensor([100.0, 400.0])).sum()
        >>> state = tx.init(params)
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.tensor([0.5, 0.5])}, state, params, obj_fn=obj_fn)
        ...     print(u["w"])
        tensor([1., 1.])
        tensor([0.5000, 0.1250])

    References:
        Liu et al., Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
        Pre-training, ICLR 2024. https://arxiv.org/abs/2305.14342
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("gamma", gamma)
    if clip_threshold is not None:
        check_positive("clip_threshold", clip_threshold)
    check_positive("update_interval", update_interval)
    print_every = int(print_win_rate_every_n_steps)
    what = "scale_by_sophia"

    def init_fn(params):
        return SophiaState(
            count=init_count(params),
            mu=tree_zeros_like(params, dtype=mu_dtype),
            nu=tree_zeros_like(params, dtype=nu_dtype),
            hessian_fn_state=hessian_diagonal_fn.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        require_params(params, what)
        check_like(updates, params, what)
        count = state.count + 1

        def step(ops, gs, mus, nus):
            mu = moment(ops, gs, mus, b1, 1)
            denom = [torch.clamp(h, min=eps) for h in ops.mul(nus, gamma)]
            out = ops.div(cast_like(bias_correction(ops, mu, b1, count), nus), denom)
            if clip_threshold is not None:
                out = [torch.clamp(u, -clip_threshold, clip_threshold) for u in out]
            return out, mu

        out, mu = map_leaves(step, updates, state.mu, state.nu, keep=(None, 0), what=what)
        if verbose and print_every > 0 and clip_threshold is not None:
            _print_win_rate(out, clip_threshold, count, print_every)

        def refresh() -> tuple[Any, Any]:
            diag, hessian_state = hessian_diagonal_fn.update(
                updates, state.hessian_fn_state, params, **extra_args
            )
            return hessian_state, tree_update_moment(diag, state.nu, b2, 1)

        hessian_state, nu = branch(
            state.count % update_interval == 0, refresh, lambda: (state.hessian_fn_state, state.nu)
        )
        return out, SophiaState(count=count, mu=mu, nu=nu, hessian_fn_state=hessian_state)

    return GradientTransformation(init_fn, update_fn)


def _print_win_rate(updates: Any, clip_threshold: Scalar, count: torch.Tensor, every: int) -> None:
    """Print the fraction of entries inside the clipping bound, eagerly, every ``every`` steps."""
    if not concrete(count % every == 0):  # also when traced: nothing to print then
        return
    live = [u for u in tree_leaves(updates) if u is not None]
    inside = sum(int((u.abs() < clip_threshold).sum()) for u in live)
    size = sum(u.numel() for u in live)
    print(f"Sophia optimizer win rate: {inside / max(size, 1)}")


@record_hyperparams
def sophia(
    learning_rate: ScalarOrSchedule,
    b1: Scalar = 0.965,
    b2: Scalar = 0.99,
    eps: Scalar = 1e-8,
    weight_decay: Scalar = 1e-4,
    weight_decay_mask: MaskOrFn = None,
    gamma: Scalar = 0.01,
    clip_threshold: Scalar | None = 1.0,
    update_interval: int | torch.Tensor = 10,
    hessian_diagonal_fn: GradientTransformation = _HUTCHINSON,
    mu_dtype: torch.dtype | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    nu_dtype: torch.dtype | None = None,
    state_dtype: torch.dtype | None = None,
) -> GradientTransformation:
    r"""Sophia: `scale_by_sophia`, decayed weights, then ``-learning_rate``.

    $\theta_{t+1} = \theta_t - \eta_t\big(\operatorname{clip}(\hat m_t / \max(\gamma h_{t-1},
    \epsilon), \pm\rho) + \lambda \theta_t\big)$; see `scale_by_sophia`. With the default
    Hutchinson estimator (Sophia-H), pass the objective of this step's batch to ``update``:
    ``tx.update(grads, state, params, obj_fn=lambda p: loss(p, batch))``. As in optax, the
    estimator draws Rademacher vectors where the paper draws Gaussian ones.

    Args:
        learning_rate: the step size $\eta$, a number, 0-d tensor or schedule.
        b1: decay of the momentum.
        b2: decay of the Hessian-diagonal average.
        eps: the floor of the denominator.
        weight_decay: the decoupled weight decay $\lambda$.
        weight_decay_mask: a tree of booleans (or a function of the params giving one)
            selecting the parameters to decay.
        gamma: the scale of the Hessian diagonal in the denominator.
        clip_threshold: the bound $\rho$ of each entry of the direction, or `None`.
        update_interval: refresh the Hessian diagonal every this many steps.
        hessian_diagonal_fn: the Hessian-diagonal estimator (a `GradientTransformation`).
        mu_dtype: the momentum's dtype.
        nu_dtype: the running Hessian diagonal's dtype.
        state_dtype: the dtype of both where ``mu_dtype``/``nu_dtype`` are not given.
        verbose: print the win rate (eagerly).
        print_win_rate_every_n_steps: how often to print it (0: never).

    Returns:
        A `GradientTransformation` (a `chain`).

    Raises:
        ValueError: for invalid hyperparameters (see `scale_by_sophia`).

    Examples:
        >>> import torch
        >>> import torchopt_fn as tf
        >>> tx = tf.contrib.sophia(0.1, weight_decay=0.0)
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> obj_fn = lambda p: (p["w"] ** 2).sum()
        >>> u, state = tx.update({"w": torch.tensor([2.0, -4.0])}, tx.init(params), params,
        ...                      obj_fn=obj_fn)
        >>> u["w"]
        tensor([-0.1000,  0.1000])

    References:
        Liu et al., Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
        Pre-training, ICLR 2024. https://arxiv.org/abs/2305.14342
    """
    return chain(
        scale_by_sophia(
            b1=b1,
            b2=b2,
            eps=eps,
            gamma=gamma,
            clip_threshold=clip_threshold,
            update_interval=update_interval,
            hessian_diagonal_fn=hessian_diagonal_fn,
            mu_dtype=mu_dtype or state_dtype,
            nu_dtype=nu_dtype or state_dtype,
            verbose=verbose,
            print_win_rate_every_n_steps=print_win_rate_every_n_steps,
        ),
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
