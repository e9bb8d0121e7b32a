"""Transforms that reproduce torch.optim's maths where optax's differs (DESIGN.md §6).

Each is an ordinary transform that `from_torch` composes, usable on its own too. They follow
torch's single-tensor code order of operations (where the bias correction goes, where ``eps``
sits, which moment AMSGrad maximises), so chains built from them follow torch.optim's
trajectories to rounding error in float64. Scalars derived from the step count are computed
in the leaves' floating dtype (at least float32) with tensor ops, through `Ops.scalar`, so
they compile once and do not recompile as the count changes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from torchopt_fn._base import (
    GradientTransformation,
    Scalar,
    ScalarOrSchedule,
    init_count,
    params_device,
    torch_names,
    torch_scalar_dtype,
    value_at,
)
from torchopt_fn._combine import chain
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import (
    UnsupportedInputError,
    check_in_range,
    check_non_negative,
    check_number,
    check_positive,
    require_params,
)
from torchopt_fn.transforms._adam import radam_rectifier
from torchopt_fn.transforms._scaling import scale
from torchopt_fn.transforms._sign import scale_by_rprop
from torchopt_fn.tree._flatten import tree_map
from torchopt_fn.tree._math import (
    bias_factor,
    moment,
    next_count,
    tree_full_like,
    tree_zeros_like,
    walked_count,
)
from torchopt_fn.tree._ops import (
    cast_like,
    collapse,
    columns,
    map_leaves,
    per_leaf,
    scalar_shape,
    widest_dtype,
)

__all__ = [
    "ScaleByTorchAdagradState",
    "ScaleByTorchAmsgradState",
    "ScaleByTorchAsgdState",
    "ScaleByTorchMomentumState",
    "ScaleByTorchNadamState",
    "ScaleByTorchRadamState",
    "ScaleByTorchSparseAdamState",
    "scale_by_torch_adagrad",
    "scale_by_torch_amsgrad",
    "scale_by_torch_asgd",
    "scale_by_torch_momentum",
    "scale_by_torch_nadam",
    "scale_by_torch_radam",
    "scale_by_torch_rprop",
    "scale_by_torch_sparse_adam",
]


def _t(value: Scalar, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A hyperparameter or count as a 0-d tensor of ``dtype`` on ``device``."""
    return torch.as_tensor(value, dtype=dtype, device=device)


def _torch_scalar(params: Any, value: Any, per_leaf: bool) -> Any:
    """Scalar state as torch.optim keeps it: a 0-d tensor in its scalar dtype (float32 under
    the default dtype, whatever the parameters'), one per leaf or one for all."""

    made: dict[torch.device, torch.Tensor] = {}  # one per device, shared (see `next_count`)

    def make(p: torch.Tensor | None) -> torch.Tensor:
        device = p.device if p is not None else params_device(params)
        if device not in made:
            made[device] = torch.as_tensor(value, device=device).to(torch_scalar_dtype()).clone()
        return made[device]

    return tree_map(make, params) if per_leaf else make(None)


class ScaleByTorchMomentumState(NamedTuple):
    """State of `scale_by_torch_momentum`: the step count and the momentum buffer.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_momentum(0.9).init({"w": torch.zeros(2)})
        ScaleByTorchMomentumState(count=tensor(0), trace={'w': tensor([0., 0.])})
    """

    count: Any
    trace: Any

    # torch.optim.SGD keeps no count, only the buffer; a parameter with a buffer in its
    # checkpoint has taken a step, which is all this count says (`Optimizer` fills it in).
    torch_keys = torch_names(count="step", trace="momentum_buffer")
    torch_fill = torch_names(count=1)


@record_hyperparams
def scale_by_torch_momentum(
    decay: Scalar,
    dampening: Scalar = 0.0,
    accumulator_dtype: torch.dtype | None = None,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""`torch.optim.SGD`'s momentum buffer, dampening included.

    $b_1 = g_1$ and $b_t = \mu b_{t-1} + (1 - d) g_t$ for $t > 1$; $u_t = b_t$. The first step
    copies the gradient undamped, as torch does. With ``dampening=0`` this is `trace`.

    Args:
        decay: the momentum $\mu \ge 0$.
        dampening: the dampening $d$ (torch does not restrict it).
        accumulator_dtype: dtype of the buffer (default: the params').
        per_leaf_count: count each leaf's steps, as torch.optim does: a leaf's first update
            that is not `None` is its first step.

    Returns:
        A `GradientTransformation` with state `ScaleByTorchMomentumState`.

    Raises:
        ValueError: if ``decay`` is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_momentum(0.9, dampening=0.5)
        >>> state = tx.init({"w": torch.zeros(1)})
        >>> for _ in range(2):
        ...     u, state = tx.update({"w": torch.ones(1)}, state)
        >>> u["w"]
        tensor([1.4000])

    torch.optim equivalent: `torch.optim.SGD(momentum=decay, dampening=dampening)` is
    ``chain(scale_by_torch_momentum(decay, dampening), scale_by_learning_rate(lr))``.
    """
    check_non_negative("decay", decay)
    check_number("dampening", dampening)

    def init_fn(params):
        return ScaleByTorchMomentumState(
            count=init_count(params, per_leaf=per_leaf_count),
            trace=tree_zeros_like(params, dtype=accumulator_dtype),
        )

    def weight(count: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The gradient's weight: 1 on the first step, 1 - d afterwards (exact)."""
        started = (count != 0).to(device=device, dtype=dtype)
        return 1 - _t(dampening, dtype, device) * started

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, ts, count):
            weights = ops.scalar(ts, weight, count)
            ts = ops.add(ops.mul(ts, decay), ops.mul(cast_like(gs, ts), weights))
            return ts, ts, next_count(count)

        out, trace, count = map_leaves(
            step,
            updates,
            state.trace,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1),
            shapes={1: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_torch_momentum",
        )
        return out, ScaleByTorchMomentumState(count=count, trace=trace)

    return GradientTransformation(init_fn, update_fn)


class ScaleByTorchAmsgradState(NamedTuple):
    """State of `scale_by_torch_amsgrad`: count, moments ``mu``/``nu``, and ``nu_max``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_amsgrad().init({"w": torch.zeros(1)})
        ScaleByTorchAmsgradState(count=tensor(0), mu={'w': tensor([0.])}, nu={'w': tensor([0.])},
        nu_max={'w': tensor([0.])})
    """

    count: Any
    mu: Any
    nu: Any
    nu_max: Any

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq", nu_max="max_exp_avg_sq")


@record_hyperparams
def scale_by_torch_amsgrad(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""AMSGrad as in `torch.optim.Adam(amsgrad=True)`: the maximum of the *raw* second moment.

    $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$, $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
    $\bar v_t = \max(\bar v_{t-1}, v_t)$,
    $u_t = \dfrac{m_t / (1-\beta_1^t)}{\sqrt{\bar v_t} / \sqrt{1-\beta_2^t} + \epsilon}$.
    optax's `scale_by_amsgrad` takes the maximum of the bias-corrected $\hat v_t$ instead,
    which differs while $1-\beta_2^t$ changes.

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        per_leaf_count: count each leaf's steps, as torch.optim does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchAmsgradState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_amsgrad()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"].round(decimals=4)
        tensor([ 1., -1.])

    References:
        Reddi et al., On the Convergence of Adam and Beyond, ICLR 2018.
        https://openreview.net/forum?id=ryQu7f-RZ

    torch.optim equivalent: `torch.optim.Adam(amsgrad=True)` is
    ``chain(scale_by_torch_amsgrad(), scale_by_learning_rate(lr))``.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)

    def init_fn(params):
        return ScaleByTorchAmsgradState(
            count=init_count(params, per_leaf=per_leaf_count),
            mu=tree_zeros_like(params),
            nu=tree_zeros_like(params),
            nu_max=tree_zeros_like(params),
        )

    def corrections(t: torch.Tensor, dt: torch.dtype, dev: torch.device) -> tuple:
        return bias_factor(b1, t, dt, dev), torch.sqrt(bias_factor(b2, t, dt, dev))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus, maxima, count):
            count = next_count(count)
            mus = moment(ops, gs, mus, b1, order=1)
            nus = moment(ops, gs, nus, b2, order=2)
            maxima = ops.maximum(maxima, nus)
            bc1, sqrt_bc2 = ops.scalar(mus, corrections, count)
            denominators = ops.add_(ops.div_(ops.sqrt(maxima), sqrt_bc2), eps)
            return ops.div_(ops.div(mus, bc1), denominators), mus, nus, maxima, count

        out, mu, nu, nu_max, count = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            state.nu_max,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1, 2, 3),
            shapes={3: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_torch_amsgrad",
        )
        return out, ScaleByTorchAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return GradientTransformation(init_fn, update_fn)


class ScaleByTorchNadamState(NamedTuple):
    """State of `scale_by_torch_nadam`: count, the product of momentum coefficients, moments.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_nadam().init({"w": torch.zeros(1)})
        ScaleByTorchNadamState(count=tensor(0), mu_product=tensor(1.), mu={'w': tensor([0.])},
        nu={'w': tensor([0.])})
    """

    count: Any
    mu_product: Any
    mu: Any
    nu: Any

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq")


@record_hyperparams
def scale_by_torch_nadam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    momentum_decay: Scalar = 4e-3,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""NAdam with `torch.optim.NAdam`'s momentum schedule (Dozat's $\mu_t$).

    $\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})$ with $\psi$ the ``momentum_decay``,
    $\Pi_t = \prod_{i \le t} \mu_i$, $m_t$ and $v_t$ Adam's moments, and
    $u_t = \Big(\dfrac{1-\mu_t}{1-\Pi_t} g_t + \dfrac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}} m_t\Big)
    \Big/ \Big(\sqrt{v_t / (1-\beta_2^t)} + \epsilon\Big)$.
    optax's `scale_by_adam(nesterov=True)` is the limit $\psi \to \infty$ ($\mu_t = \beta_1$).

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to the denominator outside the square root.
        momentum_decay: $\psi \ge 0$, how fast $\mu_t$ approaches $\beta_1$.
        per_leaf_count: count each leaf's steps and keep each leaf's $\Pi_t$, as torch.optim
            does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchNadamState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``/``momentum_decay``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_nadam()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1.0565, -1.0565])

    References:
        Dozat, Incorporating Nesterov Momentum into Adam, ICLR workshop 2016.
        https://openreview.net/forum?id=OM0jvwB8jIp57ZJjtNEZ

    torch.optim equivalent: `torch.optim.NAdam` is
    ``chain(scale_by_torch_nadam(), scale_by_learning_rate(lr))``.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_non_negative("momentum_decay", momentum_decay)

    def init_fn(params):
        return ScaleByTorchNadamState(
            count=init_count(params, per_leaf=per_leaf_count),
            mu_product=_torch_scalar(params, 1.0, per_leaf_count),
            mu=tree_zeros_like(params),
            nu=tree_zeros_like(params),
        )

    def mu_at(t: torch.Tensor, dt: torch.dtype, dev: torch.device) -> torch.Tensor:
        r"""$\mu_t = \beta_1 (1 - \tfrac12 \cdot 0.96^{t\psi})$ in ``dt``."""
        base, psi = _t(0.96, dt, dev), _t(momentum_decay, dt, dev)
        return b1 * (1.0 - 0.5 * torch.pow(base, t.to(device=dev, dtype=dt) * psi))

    def advance(t: torch.Tensor, product: torch.Tensor, dt: torch.dtype, dev: torch.device):
        r"""$\Pi_t = \Pi_{t-1}\mu_t$, rounded to the product's own dtype, as torch does."""
        return product.to(dev) * mu_at(t, dt, dev).to(product.dtype)

    def scalars(t: torch.Tensor, product: torch.Tensor, dt: torch.dtype, dev: torch.device):
        r"""$(1-\beta_2^t, (1-\mu_t)/(1-\Pi_t), \mu_{t+1}/(1-\Pi_t\mu_{t+1}))$."""
        mu_t, mu_next, rounded = mu_at(t, dt, dev), mu_at(t + 1, dt, dev), product.to(dev, dt)
        coef_g = (1.0 - mu_t) / (1.0 - rounded)
        coef_m = mu_next / (1.0 - rounded * mu_next)
        return bias_factor(b2, t, dt, dev), coef_g, coef_m

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus, count, products):
            count = next_count(count)
            if isinstance(products, list):
                products = per_leaf(ops.scalar(mus, advance, count, products), len(mus))
            else:  # one product for all leaves, in the precision of the widest
                products = advance(count, products, widest_dtype(mus), products.device)
            mus = moment(ops, gs, mus, b1, order=1)
            nus = moment(ops, gs, nus, b2, order=2)
            bc2, cg, cm = ops.scalar(mus, scalars, count, products)
            denominators = ops.add_(ops.sqrt_(ops.div(nus, bc2)), eps)
            from_g = ops.mul_(ops.div(cast_like(gs, mus), denominators), cg)
            out = ops.add_(from_g, ops.mul_(ops.div(mus, denominators), cm))
            return out, mus, nus, count, products

        out, mu, nu, count, mu_product = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            walked_count(state.count, per_leaf_count),
            walked_count(state.mu_product, per_leaf_count),
            keep=(None, 0, 1, 2, 3),
            shapes={2: scalar_shape, 3: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_torch_nadam",
        )
        return out, ScaleByTorchNadamState(count=count, mu_product=mu_product, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByTorchRadamState(NamedTuple):
    """State of `scale_by_torch_radam`: step count and Adam's moments.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_radam().init({"w": torch.zeros(1)})
        ScaleByTorchRadamState(count=tensor(0), mu={'w': tensor([0.])}, nu={'w': tensor([0.])})
    """

    count: Any
    mu: Any
    nu: Any

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq")


@record_hyperparams
def scale_by_torch_radam(
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    threshold: float = 5.0,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""Rectified Adam with `torch.optim.RAdam`'s placement of ``eps``.

    With $\rho_\infty = 2/(1-\beta_2) - 1$ and
    $\rho_t = \rho_\infty - 2t\beta_2^t/(1-\beta_2^t)$: when $\rho_t > 5$ (the ``threshold``),
    $u_t = \hat m_t \, r_t \, \dfrac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}$ with
    $r_t = \sqrt{\dfrac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}$,
    otherwise $u_t = \hat m_t = m_t / (1-\beta_1^t)$. optax's `scale_by_radam` adds ``eps`` to
    $\sqrt{\hat v_t}$ instead (an ``eps`` larger by $1/\sqrt{1-\beta_2^t}$).

    Args:
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to $\sqrt{v_t}$.
        threshold: rectify only when $\rho_t$ exceeds it (torch fixes it at 5).
        per_leaf_count: count each leaf's steps, as torch.optim does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchRadamState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or a negative ``eps``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_radam()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"].round(decimals=4)
        tensor([ 2., -3.])

    References:
        Liu et al., On the Variance of the Adaptive Learning Rate and Beyond, ICLR 2020.
        https://arxiv.org/abs/1908.03265

    torch.optim equivalent: `torch.optim.RAdam` is
    ``chain(scale_by_torch_radam(), scale_by_learning_rate(lr))``.
    """
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_non_negative("eps", eps)
    check_number("threshold", threshold)

    def init_fn(params):
        return ScaleByTorchRadamState(
            count=init_count(params, per_leaf=per_leaf_count),
            mu=tree_zeros_like(params),
            nu=tree_zeros_like(params),
        )

    def scalars(t: torch.Tensor, dt: torch.dtype, dev: torch.device) -> tuple:
        rho_t, r_t = radam_rectifier(b2, t, dt, dev)
        bc2 = bias_factor(b2, t, dt, dev)
        return bias_factor(b1, t, dt, dev), torch.sqrt(bc2) * r_t, rho_t > threshold

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus, count):
            count = next_count(count)
            mus = moment(ops, gs, mus, b1, order=1)
            nus = moment(ops, gs, nus, b2, order=2)
            bc1, factor, rectify = ops.scalar(mus, scalars, count)
            mu_hat = ops.div(mus, bc1)
            adapted = ops.mul_(ops.div(mu_hat, ops.add_(ops.sqrt(nus), eps)), factor)
            return ops.where(rectify, adapted, mu_hat), mus, nus, count

        out, mu, nu, count = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1, 2),
            shapes={2: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_torch_radam",
        )
        return out, ScaleByTorchRadamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByTorchAdagradState(NamedTuple):
    """State of `scale_by_torch_adagrad`: step count and the sum of squared gradients.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_adagrad(0.1).init({"w": torch.zeros(2)})
        ScaleByTorchAdagradState(count=tensor(0), sum_of_squares={'w': tensor([0.1000, 0.1000])})
    """

    count: Any
    sum_of_squares: Any

    torch_keys = torch_names(count="step", sum_of_squares="sum")


@record_hyperparams
def scale_by_torch_adagrad(
    initial_accumulator_value: Scalar = 0.0,
    eps: Scalar = 1e-10,
    lr_decay: Scalar = 0.0,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""Adagrad as in `torch.optim.Adagrad`: ``eps`` outside the square root, torch's ``lr_decay``.

    $s_t = s_{t-1} + g_t^2$ (with $s_0$ the ``initial_accumulator_value``),
    $u_t = \dfrac{g_t}{(\sqrt{s_t} + \epsilon)\,(1 + (t-1)\,\delta)}$ with $\delta$ the
    ``lr_decay``. optax's `scale_by_rss` puts ``eps`` inside the square root and starts the
    accumulator at 0.1.

    Args:
        initial_accumulator_value: $s_0 \ge 0$.
        eps: added to $\sqrt{s_t}$.
        lr_decay: $\delta \ge 0$; divides step $t$ by $1 + (t-1)\delta$.
        per_leaf_count: count each leaf's steps, as torch.optim does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchAdagradState`.

    Raises:
        ValueError: if an argument is negative.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_adagrad()
        >>> u, _ = tx.update({"w": torch.tensor([2.0, -3.0])}, tx.init({"w": torch.zeros(2)}))
        >>> u["w"]
        tensor([ 1., -1.])

    References:
        Duchi et al., Adaptive Subgradient Methods for Online Learning and Stochastic
        Optimization, JMLR 2011. https://jmlr.org/papers/v12/duchi11a.html

    torch.optim equivalent: `torch.optim.Adagrad` is
    ``chain(scale_by_torch_adagrad(), scale_by_learning_rate(lr))``.
    """
    check_non_negative("initial_accumulator_value", initial_accumulator_value)
    check_non_negative("eps", eps)
    check_non_negative("lr_decay", lr_decay)
    decays = isinstance(lr_decay, torch.Tensor) or lr_decay != 0.0

    def init_fn(params):
        return ScaleByTorchAdagradState(
            count=init_count(params, per_leaf=per_leaf_count),
            sum_of_squares=tree_full_like(params, initial_accumulator_value),
        )

    def decay(t: torch.Tensor, dt: torch.dtype, dev: torch.device) -> torch.Tensor:
        """Step ``t`` is divided by 1 + (t - 1) * lr_decay."""
        return 1 + (t.to(dev, dt) - 1) * _t(lr_decay, dt, dev)

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, sums, count):
            count = next_count(count)
            gs_ = cast_like(gs, sums)
            sums = ops.addcmul(sums, gs_, gs_)
            out = ops.div(gs_, ops.add_(ops.sqrt(sums), eps))
            if decays:
                out = ops.div_(out, ops.scalar(sums, decay, count))
            return out, sums, count

        out, sums, count = map_leaves(
            step,
            updates,
            state.sum_of_squares,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1),
            shapes={1: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_torch_adagrad",
        )
        return out, ScaleByTorchAdagradState(count=count, sum_of_squares=sums)

    return GradientTransformation(init_fn, update_fn)


@record_hyperparams
def scale_by_torch_rprop(
    learning_rate: ScalarOrSchedule,
    eta_minus: Scalar = 0.5,
    eta_plus: Scalar = 1.2,
    min_step_size: Scalar = 1e-6,
    max_step_size: Scalar = 50.0,
) -> GradientTransformation:
    r"""Rprop as in `torch.optim.Rprop`: `scale_by_rprop` with torch's clipping, negated.

    ``chain(scale_by_rprop(..., clip_unchanged=True), scale(-1.0))``: per-element step sizes
    adapted from the signs of successive gradients (see `scale_by_rprop`), every one clipped
    to ``[min_step_size, max_step_size]`` at every step, as torch does. The output is the final
    (negated) update: do not chain a learning-rate stage after it.

    Args:
        learning_rate: the initial step size. A schedule is evaluated at step 0 only: like
            torch, Rprop reads the learning rate once, to initialise the step sizes.
        eta_minus: the decrease factor, in ``(0, 1)``.
        eta_plus: the increase factor, ``> 1``.
        min_step_size: the smallest step size.
        max_step_size: the largest step size.

    Returns:
        A `GradientTransformation` whose state is ``(ScaleByRpropState, EmptyState)``.

    Raises:
        ValueError: for a negative ``learning_rate`` or ``not 0 < eta_minus < 1 < eta_plus``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_rprop(0.1)
        >>> state = tx.init({"w": torch.zeros(2)})
        >>> u, state = tx.update({"w": torch.tensor([2.0, -3.0])}, state)
        >>> u, state = tx.update({"w": torch.tensor([1.0, -1.0])}, state)
        >>> u["w"]
        tensor([-0.1200,  0.1200])

    References:
        Riedmiller and Braun, A Direct Adaptive Method for Faster Backpropagation Learning:
        The RPROP Algorithm, ICNN 1993. https://doi.org/10.1109/ICNN.1993.298623

    torch.optim equivalent: `torch.optim.Rprop(lr, etas=(eta_minus, eta_plus),
    step_sizes=(min_step_size, max_step_size))` is ``scale_by_torch_rprop(lr, ...)``.
    """
    rprop = scale_by_rprop(
        learning_rate, eta_minus, eta_plus, min_step_size, max_step_size, clip_unchanged=True
    )
    return chain(rprop, scale(-1.0))


class ScaleByTorchAsgdState(NamedTuple):
    """State of `scale_by_torch_asgd`: torch's ``step``, ``eta``, ``mu`` and ``ax``.

    ``eta`` and ``mu`` are the step size and the averaging weight of the *next* step, computed
    at the end of each step, as torch does, in torch's scalar dtype (float32 under the default
    dtype); ``ax`` is the running average of the parameters.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_asgd(0.01).init({"w": torch.zeros(2)})
        ScaleByTorchAsgdState(count=tensor(0), eta=tensor(0.0100), mu=tensor(1.),
        ax={'w': tensor([0., 0.])})
    """

    count: Any
    eta: Any
    mu: Any
    ax: Any

    torch_keys = torch_names(count="step")


@record_hyperparams
def scale_by_torch_asgd(
    learning_rate: ScalarOrSchedule,
    lambd: Scalar = 1e-4,
    alpha: Scalar = 0.75,
    t0: Scalar = 1e6,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""Averaged SGD as in `torch.optim.ASGD`, including its running average of the parameters.

    Step $t$ uses $\eta_t$ and $\mu_t$ from the state: $u_t = -\eta_t (g_t + \lambda
    \theta_{t-1})$, so $\theta_t = \theta_{t-1}(1 - \lambda\eta_t) - \eta_t g_t$, and the
    average $\bar\theta_t = \bar\theta_{t-1} + \mu_t(\theta_t - \bar\theta_{t-1})$ ($\theta_t$
    itself where $\mu_t = 1$) is kept as ``ax`` (torch's ``state["ax"]``; read it to evaluate
    with the averaged parameters). Then, with the current learning rate
    $\mathrm{lr}$, $\eta_{t+1} = \mathrm{lr} / (1 + \lambda\,\mathrm{lr}\,t)^{\alpha}$ and
    $\mu_{t+1} = 1 / \max(1, t - t_0)$; $\eta_1 = \mathrm{lr}$ and $\mu_1 = 1$. The output is
    the final (negated) update: do not chain a learning-rate stage after it.

    Args:
        learning_rate: $\mathrm{lr}$, a float, 0-d tensor or schedule (evaluated at the count
            before each step, so that, as under a torch lr scheduler, a new learning rate
            reaches $\eta$ one step later).
        lambd: the decay term $\lambda$.
        alpha: the power $\alpha$ of the step-size decay.
        t0: the step after which averaging starts.
        per_leaf_count: keep ``step``, ``eta`` and ``mu`` per leaf, as torch.optim does (see
            `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchAsgdState`.

    Raises:
        ValueError: for a negative constant ``learning_rate``, or if ``update`` gets no params.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_asgd(0.1, lambd=0.0)
        >>> p = {"w": torch.tensor([1.0])}
        >>> u, state = tx.update({"w": torch.tensor([2.0])}, tx.init(p), p)
        >>> u["w"], state.ax["w"]
        (tensor([-0.2000]), tensor([0.8000]))

    References:
        Polyak and Juditsky, Acceleration of Stochastic Approximation by Averaging, SIAM
        J. Control Optim. 1992. https://doi.org/10.1137/0330046

    torch.optim equivalent: `torch.optim.ASGD(lr, lambd, alpha, t0)` is
    ``scale_by_torch_asgd(lr, lambd, alpha, t0)``.
    """
    check_non_negative("learning_rate", learning_rate)
    check_number("lambd", lambd)
    check_number("alpha", alpha)
    check_number("t0", t0)

    def init_fn(params):
        start = torch.zeros((), dtype=torch.int64, device=params_device(params))
        return ScaleByTorchAsgdState(
            count=init_count(params, per_leaf=per_leaf_count),
            eta=_torch_scalar(params, value_at(learning_rate, start), per_leaf_count),
            mu=_torch_scalar(params, 1.0, per_leaf_count),
            ax=tree_zeros_like(params),
        )

    def scales(eta: torch.Tensor, mu: torch.Tensor, dt: torch.dtype, dev: torch.device):
        """(-eta, -eta * lambd, mu): this step's scales and averaging weight."""
        eta = eta.to(dev, dt)
        return -eta, -eta * _t(lambd, dt, dev), mu.to(dev, dt)

    def next_scalars(t, rate, eta, mu, dt: torch.dtype, dev: torch.device):
        """The next step's ``eta`` and ``mu`` after step ``t``, in the state's dtypes."""
        t, rate = t.to(dev, dt), _t(rate, dt, dev)
        new_eta = rate / torch.pow(1 + _t(lambd, dt, dev) * rate * t, _t(alpha, dt, dev))
        new_mu = 1 / torch.clamp(t - _t(t0, dt, dev), min=1)
        return new_eta.to(eta.dtype), new_mu.to(mu.dtype)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, "scale_by_torch_asgd")

        def step(ops, gs, axs, ps, count, etas, mus):
            rate = value_at(learning_rate, count)
            count = next_count(count)
            neg_eta, neg_eta_decay, mu = ops.scalar(ps, scales, etas, mus)
            out = ops.add_(ops.mul(cast_like(gs, ps), neg_eta), ops.mul(ps, neg_eta_decay))
            new_ps = cast_like(ops.add(ps, out), axs)
            averaged = ops.add(axs, ops.mul_(ops.sub(new_ps, axs), mu))
            shared_mu = collapse(mus)
            first = [m == 1 for m in mus] if isinstance(shared_mu, list) else shared_mu == 1
            axs = ops.where(first, new_ps, averaged)  # torch copies where mu is 1
            if isinstance(count, list):
                etas, mus = ops.scalar(ps, next_scalars, count, rate, etas, mus)
                etas, mus = per_leaf(etas, len(ps)), per_leaf(mus, len(ps))
            else:  # one eta and mu for all leaves, in the precision of the widest
                etas, mus = next_scalars(count, rate, etas, mus, widest_dtype(ps), etas.device)
            return out, axs, count, etas, mus

        out, ax, count, eta, mu = map_leaves(
            step,
            updates,
            state.ax,
            params,
            walked_count(state.count, per_leaf_count),
            walked_count(state.eta, per_leaf_count),
            walked_count(state.mu, per_leaf_count),
            keep=(None, 0, 2, 3, 4),
            shapes={2: scalar_shape, 3: scalar_shape, 4: scalar_shape},
            complex_as_real=True,
            batchable=True,
            what="scale_by_torch_asgd",
        )
        return out, ScaleByTorchAsgdState(count=count, eta=eta, mu=mu, ax=ax)

    return GradientTransformation(init_fn, update_fn)


def _sparse_like(g: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` at the indices of the coalesced sparse ``g``."""
    return torch.sparse_coo_tensor(
        g.indices(), values, g.shape, is_coalesced=True, check_invariants=False
    )


class ScaleByTorchSparseAdamState(NamedTuple):
    """State of `scale_by_torch_sparse_adam`: step count and Adam's (dense) moments.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_torch_sparse_adam().init({"w": torch.zeros(2)}).mu
        {'w': tensor([0., 0.])}
    """

    count: Any
    mu: Any
    nu: Any

    torch_keys = torch_names(count="step", mu="exp_avg", nu="exp_avg_sq")
    torch_ints = frozenset({"count"})  # torch keeps SparseAdam's step a Python int


@record_hyperparams
def scale_by_torch_sparse_adam(
    learning_rate: Scalar = 1e-3,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    *,
    per_leaf_count: bool = False,
) -> GradientTransformation:
    r"""Adam on the rows a sparse gradient touches, as `torch.optim.SparseAdam` ("lazy Adam").

    For a sparse COO gradient with values $g$ at its (coalesced) indices, only those entries
    of the moments move, $m \leftarrow m + (1-\beta_1)(g - m)$ and
    $v \leftarrow v + (1-\beta_2)(g^2 - v)$, and the update, sparse at the same indices, is
    $-\mathrm{lr}\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\, m / (\sqrt{v} + \epsilon)$ there (the
    final update: the step size is computed as torch computes it, in a tensor ``learning_rate``'s
    own dtype). Every update must be sparse (torch refuses dense gradients: use Adam). The
    moments are dense, the parameters' shape; being a pure transformation, each step returns
    new ones (torch adds into its own in place).

    Args:
        learning_rate: lr, a float or a 0-d tensor.
        b1: decay of the first moment, in ``[0, 1)``.
        b2: decay of the second moment, in ``[0, 1)``.
        eps: added to $\sqrt{v}$, ``> 0``.
        per_leaf_count: count each leaf's steps, as torch.optim does (see `scale_by_adam`).

    Returns:
        A `GradientTransformation` with state `ScaleByTorchSparseAdamState`.

    Raises:
        ValueError: for ``b1``/``b2`` outside ``[0, 1)`` or ``eps <= 0``;
            `UnsupportedInputError` for a dense update.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tx = tf.scale_by_torch_sparse_adam(0.1)
        >>> g = torch.sparse_coo_tensor([[1]], [2.0], (3,))
        >>> u, state = tx.update({"w": g}, tx.init({"w": torch.zeros(3)}))
        >>> u["w"].to_dense(), state.mu["w"]
        (tensor([ 0.0000, -0.1000,  0.0000]), tensor([0.0000, 0.2000, 0.0000]))

    torch.optim equivalent: `torch.optim.SparseAdam(lr, betas=(b1, b2), eps)` is
    ``scale_by_torch_sparse_adam(lr, b1, b2, eps)``.
    """
    check_positive("learning_rate", learning_rate)
    check_in_range("b1", b1, 0.0, 1.0)
    check_in_range("b2", b2, 0.0, 1.0)
    check_positive("eps", eps)

    def init_fn(params):
        def check(p: torch.Tensor) -> None:
            if p.layout != torch.strided:
                raise ValueError("SparseAdam requires dense parameter tensors")
            if p.is_complex():
                raise ValueError("SparseAdam does not support complex parameters")

        tree_map(check, params)
        return ScaleByTorchSparseAdamState(
            count=init_count(params, per_leaf=per_leaf_count),
            mu=tree_zeros_like(params),
            nu=tree_zeros_like(params),
        )

    def leaf(g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> tuple:
        """One leaf, in torch's order of operations; the moments change only where g is."""
        g = g.coalesce()  # the update is not linear: indices must be unique
        values = g.values()
        if values.numel() == 0:
            return g, m, v
        old_m, old_v = m.sparse_mask(g).values(), v.sparse_mask(g).values()
        m_step = (values - old_m) * (1 - b1)
        v_step = (values.pow(2) - old_v) * (1 - b2)
        m = m + _sparse_like(g, m_step)
        v = v + _sparse_like(g, v_step)
        t = t.to(torch.float64)
        bc1, sqrt_bc2 = 1 - b1**t, torch.sqrt(1 - b2**t)
        if isinstance(learning_rate, torch.Tensor):  # torch's arithmetic in the lr's dtype
            bc1, sqrt_bc2 = bc1.to(learning_rate.dtype), sqrt_bc2.to(learning_rate.dtype)
        step_size = learning_rate * sqrt_bc2 / bc1
        direction = (m_step + old_m) / ((v_step + old_v).sqrt() + eps)
        return _sparse_like(g, -step_size.to(values.device) * direction), m, v

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args

        def step(ops, gs, mus, nus, count):
            if any(g.layout != torch.sparse_coo for g in gs):
                raise UnsupportedInputError(
                    "SparseAdam does not support dense gradients, please consider Adam instead"
                )
            count = next_count(count)
            counts = count if isinstance(count, list) else [count] * len(gs)
            results = [leaf(*args) for args in zip(gs, mus, nus, counts)]
            out, mus, nus = columns(results, 3)
            return out, mus, nus, count

        out, mu, nu, count = map_leaves(
            step,
            updates,
            state.mu,
            state.nu,
            walked_count(state.count, per_leaf_count),
            keep=(None, 0, 1, 2),
            shapes={2: scalar_shape},
            sparse_updates=True,
            what="scale_by_torch_sparse_adam",
        )
        return out, ScaleByTorchSparseAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)
