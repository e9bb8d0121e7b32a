"""Line searches: `scale_by_backtracking_linesearch`, `scale_by_zoom_linesearch`, and
`value_and_grad_from_state` (optax's names, arguments, defaults and states).

A line search scales the update direction ``u`` by a step ``t`` found by evaluating the
objective along ``params + t * u``. It reads three extra arguments of ``update``: ``value``
(the objective at ``params``), ``grad`` (its gradient there) and ``value_fn`` (the objective,
a function of the params; extra keyword arguments of ``update`` that ``value_fn`` accepts are
passed to it). Gradients along the line come from `torch.func.grad_and_value`.

The search is a loop whose length depends on the values it meets. Eagerly (also under
`torch.func.grad`) it stops as soon as its condition fails, as optax's ``while_loop`` does.
Under `torch.compile` and `torch.func.vmap` it is a fixed-trip loop: every one of the
``max_*_steps`` iterations runs, and ``torch.where`` freezes the state once the search is
over, so the graph has no break and each vmapped member stops where it would alone. The
numbers are the same; the compiled search evaluates the objective the maximal number of
times.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from torchopt_fn._base import GradientTransformation, Params
from torchopt_fn._branch import branch, while_loop
from torchopt_fn._record import record_hyperparams
from torchopt_fn._validate import require_params
from torchopt_fn.tree._flatten import tree_leaves, tree_map
from torchopt_fn.tree._math import real_vdot
from torchopt_fn.tree._state import tree_get

__all__ = [
    "BacktrackingLinesearchInfo",
    "ScaleByBacktrackingLinesearchState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_backtracking_linesearch",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
]

Tree = Any
ValueFn = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------- shared pieces


def _real_dtype(params: Params) -> tuple[torch.dtype, torch.device]:
    """The dtype of objective values (the first leaf's real dtype) and the params' device."""
    first = next(x for x in tree_leaves(params) if x is not None)
    dtype = first.dtype
    if dtype.is_complex:
        dtype = torch.empty((), dtype=dtype).real.dtype
    return dtype, first.device


def _vdot(a: Tree, b: Tree) -> torch.Tensor:
    """`real_vdot` over the live leaves of two trees."""
    pairs = [(x, y) for x, y in zip(tree_leaves(a), tree_leaves(b)) if x is not None]
    return real_vdot([x for x, _ in pairs], [y for _, y in pairs])


def _step(params: Tree, t: torch.Tensor, updates: Tree) -> Tree:
    """``params + t * updates``, in each parameter's dtype."""
    return tree_map(lambda p, u: (p + t * u).to(p.dtype), params, updates)


def _split_kwargs(value_fn: ValueFn, extra_args: dict[str, Any], what: str) -> dict[str, Any]:
    """The extra arguments ``value_fn`` takes; any other is an error (as in optax)."""
    accepted = set(inspect.signature(value_fn).parameters)
    unused = sorted(set(extra_args) - accepted)
    if unused:
        raise TypeError(
            f"{what}: keyword arguments {unused} were passed to update but value_fn does not "
            "accept them."
        )
    return {k: v for k, v in extra_args.items() if k in accepted}


def _require(value: Any, grad: Any, value_fn: Any, what: str) -> None:
    missing = [
        n for n, v in (("value", value), ("grad", grad), ("value_fn", value_fn)) if v is None
    ]
    if missing:
        raise ValueError(
            f"{what}: update needs the extra arguments value=, grad= and value_fn= "
            f"(missing: {', '.join(missing)}); see value_and_grad_from_state."
        )


def value_and_grad_from_state(value_fn: ValueFn) -> Callable[..., tuple[torch.Tensor, Tree]]:
    """``value_and_grad(params, *args, state=state, **kwargs)``, reusing what a line search stored.

    A line search ends by evaluating the objective and its gradient at the new params; this
    returns those from the state (its ``value`` and ``grad`` fields) instead of computing
    them again, and computes them (with `torch.func.grad_and_value`) when the state has none
    yet (``value`` is inf, as after ``init``) or they are not finite.

    Raises:
        ValueError: if the state has no ``value`` and ``grad`` fields.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> f = lambda p: (p["w"] ** 2).sum()
        >>> params = {"w": torch.tensor([1.0, -2.0])}
        >>> opt = tf.lbfgs()
        >>> state = opt.init(params)
        >>> value_and_grad = tf.value_and_grad_from_state(f)
        >>> for _ in range(3):
        ...     value, grad = value_and_grad(params, state=state)
        ...     updates, state = opt.update(grad, state, params, value=value, grad=grad,
        ...                                 value_fn=f)
        ...     params = tf.apply_updates(params, updates)
        >>> f(params) < 1e-10
        tensor(True)
    """

    def value_and_grad(params: Params, *args: Any, state: Any, **kwargs: Any):
        value, grad = tree_get(state, "value"), tree_get(state, "grad")
        if value is None or grad is None:
            raise ValueError(
                "value_and_grad_from_state: the state holds no value and grad; use an "
                "optimizer that stores them (a line search)."
            )

        def fresh():
            g, v = torch.func.grad_and_value(lambda p: value_fn(p, *args, **kwargs))(params)
            return v.to(value.dtype), tree_map(lambda x, y: x.to(y.dtype), g, grad)

        return branch(torch.isfinite(value), lambda: (value, grad), fresh)

    return value_and_grad


# --------------------------------------------------------------------------- backtracking


class BacktrackingLinesearchInfo(NamedTuple):
    """What the last backtracking search did: its iterations and its decrease error.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_backtracking_linesearch(10).init({"w": torch.zeros(1)}).info
        BacktrackingLinesearchInfo(num_linesearch_steps=tensor(0), decrease_error=tensor(inf))
    """

    num_linesearch_steps: torch.Tensor
    decrease_error: torch.Tensor


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """State of `scale_by_backtracking_linesearch`.

    Attributes:
        learning_rate: the step accepted last (the next search starts from it, increased).
        value: the objective at the accepted point.
        grad: the gradient there (``store_grad=True``), else `None`.
        info: a `BacktrackingLinesearchInfo`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_backtracking_linesearch(10).init({"w": torch.zeros(1)}).learning_rate
        tensor(1.)
    """

    learning_rate: torch.Tensor
    value: torch.Tensor
    grad: Any
    info: BacktrackingLinesearchInfo


class _Backtrack(NamedTuple):
    learning_rate: torch.Tensor
    new_value: torch.Tensor
    decrease_error: torch.Tensor
    iter_num: torch.Tensor


@record_hyperparams
def scale_by_backtracking_linesearch(
    max_backtracking_steps: int,
    slope_rtol: float = 1e-4,
    decrease_factor: float = 0.8,
    increase_factor: float = 1.5,
    max_learning_rate: float = 1.0,
    atol: float = 0.0,
    rtol: float = 0.0,
    store_grad: bool = False,
    verbose: bool = False,
) -> GradientTransformation:
    r"""Backtracking (Armijo) line search: shrink the step until the objective decreases enough.

    From $t = \min(\text{increase\_factor} \cdot t_{prev}, \text{max\_learning\_rate})$, try
    $f(x + t u)$ and multiply $t$ by ``decrease_factor`` until
    $f(x + t u) \le (1 + \text{rtol}) f(x) + t \cdot \text{slope\_rtol} \langle u, g\rangle
    + \text{atol}$, for at most ``max_backtracking_steps`` reductions; the update is $t u$
    (a step of 0 if every trial was inf or NaN). Put it last in a chain, after the
    direction (``chain(sgd(1.0), scale_by_backtracking_linesearch(15))``); ``update`` needs
    ``value=``, ``grad=`` and ``value_fn=`` (module docstring).

    Args:
        max_backtracking_steps: most reductions of the step per update.
        slope_rtol: the sufficient-decrease constant $c_1$.
        decrease_factor: the step's shrink factor.
        increase_factor: the next search's first step is this times the last one.
        max_learning_rate: the largest first step.
        atol: absolute tolerance on the decrease.
        rtol: relative tolerance on the decrease.
        store_grad: also compute the gradient at the accepted point and keep it in the state
            (for `value_and_grad_from_state`).
        verbose: accepted for optax compatibility; nothing is printed.

    Returns:
        A `GradientTransformation` with state `ScaleByBacktrackingLinesearchState`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> f = lambda p: ((p["w"] - 3.0) ** 2).sum()
        >>> tx = tf.chain(tf.sgd(1.0), tf.scale_by_backtracking_linesearch(20))
        >>> params = {"w": torch.zeros(1)}
        >>> state = tx.init(params)
        >>> grad = {"w": torch.tensor([-6.0])}
        >>> u, state = tx.update(grad, state, params, value=f(params), grad=grad, value_fn=f)
        >>> u["w"]  # 1 * 6 does not decrease f enough; 0.8 * 6 does
        tensor([4.8000])

    References:
        Armijo, Minimization of functions having Lipschitz continuous first partial
        derivatives, 1966. Nocedal & Wright, Numerical Optimization, Algorithm 3.1.
    """
    del verbose

    def init_fn(params):
        dtype, device = _real_dtype(params)
        scalar = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        return ScaleByBacktrackingLinesearchState(
            learning_rate=scalar(1.0),
            value=scalar(float("inf")),
            grad=tree_map(torch.zeros_like, params) if store_grad else None,
            info=BacktrackingLinesearchInfo(
                torch.zeros((), dtype=torch.int64, device=device), scalar(float("inf"))
            ),
        )

    def update_fn(
        updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args
    ):
        what = "scale_by_backtracking_linesearch"
        require_params(params, what)
        _require(value, grad, value_fn, what)
        kwargs = _split_kwargs(value_fn, extra_args, what)
        dtype = state.learning_rate.dtype
        value = torch.as_tensor(value, dtype=dtype, device=state.learning_rate.device)
        slope = _vdot(updates, tree_map(torch.conj, grad)).to(dtype)

        def decrease_error(t, new_value):
            error = new_value - (1.0 + rtol) * value - t * slope_rtol * slope
            error = torch.where(torch.isnan(error), torch.inf, error)
            return torch.clamp(error, min=0.0)

        def cond(s: _Backtrack) -> torch.Tensor:
            return ~(s.decrease_error <= atol) & (s.iter_num <= max_backtracking_steps)

        def body(s: _Backtrack) -> _Backtrack:
            t = torch.where(s.iter_num > 0, decrease_factor * s.learning_rate, s.learning_rate)
            new_value = value_fn(_step(params, t, updates), **kwargs).to(dtype)
            return _Backtrack(t, new_value, decrease_error(t, new_value), s.iter_num + 1)

        start = torch.clamp(increase_factor * state.learning_rate, max=max_learning_rate)
        search = while_loop(
            cond,
            body,
            _Backtrack(
                start.to(dtype),
                value,
                torch.full_like(value, torch.inf),
                torch.zeros_like(state.info.num_linesearch_steps),
            ),
            max_backtracking_steps + 1,
        )
        new_grad = None
        if store_grad:
            at = _step(params, search.learning_rate, updates)
            new_grad = torch.func.grad(lambda p: value_fn(p, **kwargs))(at)
            new_grad = tree_map(lambda x, y: x.to(y.dtype), new_grad, state.grad)
        learning_rate = torch.where(
            torch.isinf(search.decrease_error), 0.0, search.learning_rate
        ).to(dtype)
        new_updates = tree_map(lambda u: (learning_rate * u).to(u.dtype), updates)
        info = BacktrackingLinesearchInfo(search.iter_num, search.decrease_error.to(dtype))
        return new_updates, ScaleByBacktrackingLinesearchState(
            learning_rate, search.new_value, new_grad, info
        )

    return GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- zoom


class ZoomLinesearchInfo(NamedTuple):
    """What the last zoom search did: its iterations and its final errors.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_zoom_linesearch(10).init({"w": torch.zeros(1)}).info.num_linesearch_steps
        tensor(0)
    """

    num_linesearch_steps: torch.Tensor
    decrease_error: torch.Tensor
    curvature_error: torch.Tensor


class ScaleByZoomLinesearchState(NamedTuple):
    """State of `scale_by_zoom_linesearch`.

    Attributes:
        learning_rate: the step accepted last.
        value: the objective at the accepted point (inf before the first update).
        grad: its gradient there (for `value_and_grad_from_state`).
        info: a `ZoomLinesearchInfo`.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> tf.scale_by_zoom_linesearch(10).init({"w": torch.zeros(1)}).value
        tensor(inf)
    """

    learning_rate: torch.Tensor
    value: torch.Tensor
    grad: Any
    info: ZoomLinesearchInfo


class _Zoom(NamedTuple):
    """The search's loop state (optax's ``ZoomLinesearchState`` without the fixed inputs)."""

    count: torch.Tensor
    stepsize: torch.Tensor
    value: torch.Tensor
    grad: Any
    slope: torch.Tensor
    decrease_error: torch.Tensor
    curvature_error: torch.Tensor
    error: torch.Tensor
    interval_found: torch.Tensor
    done: torch.Tensor
    failed: torch.Tensor
    low: torch.Tensor
    value_low: torch.Tensor
    slope_low: torch.Tensor
    high: torch.Tensor
    value_high: torch.Tensor
    slope_high: torch.Tensor
    cubic_ref: torch.Tensor
    value_cubic_ref: torch.Tensor
    safe_stepsize: torch.Tensor
    safe_value: torch.Tensor
    safe_grad: Any


def _cubicmin(a, fa, fpa, b, fb, c, fc):
    """The minimiser of the cubic through (a, fa) with slope fpa, (b, fb) and (c, fc)."""
    C = fpa
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    r1, r2 = fb - fa - C * db, fc - fa - C * dc
    A = (dc**2 * r1 + -(db**2) * r2) / denom
    B = (-(dc**3) * r1 + db**3 * r2) / denom
    radical = B * B - 3.0 * A * C
    return a + (-B + torch.sqrt(radical)) / (3.0 * A)


def _quadmin(a, fa, fpa, b, fb):
    """The minimiser of the quadratic through (a, fa) with slope fpa, and (b, fb)."""
    db = b - a
    B = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * B)


def _pick(cond: torch.Tensor, a: list, b: list) -> list:
    return [tree_map(lambda x, y: torch.where(cond, x, y), x, y) for x, y in zip(a, b)]


@record_hyperparams
def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    max_learning_rate: float | None = None,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: float | None = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: str = "keep",
    verbose: bool = False,
) -> GradientTransformation:
    r"""Zoom line search: a step satisfying the strong Wolfe conditions (More & Thuente style).

    First grows the step by ``increase_factor`` until an interval containing an acceptable
    step is bracketed, then zooms into it by cubic, quadratic or bisection interpolation,
    until both the sufficient decrease
    $f(x + t u) \le f(x) + c_1 t \langle u, g\rangle$ and the curvature condition
    $|\langle u, g(x + t u)\rangle| \le c_2 |\langle u, g\rangle|$ hold (to ``tol``),
    for at most ``max_linesearch_steps`` evaluations; if none is found, the best step with
    sufficient decrease is taken. Put it last in a chain; ``update`` needs ``value=``,
    ``grad=`` and ``value_fn=`` (module docstring). The state keeps the value and gradient
    at the accepted point for `value_and_grad_from_state`.

    Args:
        max_linesearch_steps: most evaluations of the objective per update.
        max_learning_rate: the largest step, if any.
        tol: tolerance on both conditions.
        increase_factor: growth of the step while bracketing.
        slope_rtol: the sufficient-decrease constant $c_1$.
        curv_rtol: the curvature constant $c_2$.
        approx_dec_rtol: relative tolerance of the approximate decrease condition (Hager &
            Zhang), which guards against round-off near a minimum; `None` turns it off.
        stepsize_precision: an interval shorter than this ends the zoom.
        initial_guess_strategy: ``"keep"`` starts from the last accepted step, ``"one"``
            from 1 (for quasi-Newton directions).
        verbose: accepted for optax compatibility; nothing is printed.

    Returns:
        A `GradientTransformation` with state `ScaleByZoomLinesearchState`.

    Raises:
        ValueError: for an unknown ``initial_guess_strategy``.

    Examples:
        >>> import torch, torchopt_fn as tf
        >>> f = lambda p: ((p["w"] - 3.0) ** 2).sum()
        >>> tx = tf.chain(tf.sgd(1.0), tf.scale_by_zoom_linesearch(15))
        >>> params = {"w": torch.zeros(1)}
        >>> grad = {"w": torch.tensor([-6.0])}
        >>> u, _ = tx.update(grad, tx.init(params), params, value=f(params), grad=grad, value_fn=f)
        >>> u["w"]  # the exact minimiser along the line
        tensor([3.])

    References:
        Nocedal & Wright, Numerical Optimization, Algorithms 3.5 and 3.6.
        Hager & Zhang, A new conjugate gradient method with guaranteed descent and an
        efficient line search, 2005.
    """
    del verbose
    if initial_guess_strategy not in ("keep", "one"):
        raise ValueError(
            "scale_by_zoom_linesearch: initial_guess_strategy must be 'keep' or 'one', got "
            f"{initial_guess_strategy!r}."
        )

    def decrease_error_of(t, value_step, slope_step, value_init, slope_init):
        error = value_step - value_init - slope_rtol * t * slope_init
        if approx_dec_rtol is not None:
            approx = slope_step - (2 * slope_rtol - 1.0) * slope_init
            delta = value_step - value_init - approx_dec_rtol * torch.abs(value_init)
            error = torch.minimum(torch.maximum(approx, delta), error)
        error = torch.clamp(error, min=0.0)
        return torch.where(torch.isnan(error), torch.inf, error)

    def curvature_error_of(slope_step, slope_init):
        error = torch.clamp(torch.abs(slope_step) - curv_rtol * torch.abs(slope_init), min=0.0)
        return torch.where(torch.isnan(error), torch.inf, error)

    def init_fn(params):
        dtype, device = _real_dtype(params)
        # A new tensor per field: a compiled step guards on which inputs alias.
        scalar = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        inf = float("inf")
        return ScaleByZoomLinesearchState(
            learning_rate=scalar(1.0),
            value=scalar(inf),
            grad=tree_map(torch.zeros_like, params),
            info=ZoomLinesearchInfo(
                torch.zeros((), dtype=torch.int64, device=device), scalar(inf), scalar(inf)
            ),
        )

    def update_fn(
        updates, state, params=None, *, value=None, grad=None, value_fn=None, **extra_args
    ):
        what = "scale_by_zoom_linesearch"
        require_params(params, what)
        _require(value, grad, value_fn, what)
        kwargs = _split_kwargs(value_fn, extra_args, what)
        dtype = state.learning_rate.dtype
        device = state.learning_rate.device
        value_and_grad = torch.func.grad_and_value(lambda p: value_fn(p, **kwargs))

        def on_line(t):
            g, v = value_and_grad(_step(params, t, updates))
            g = tree_map(lambda x, y: x.to(y.dtype), g, state.grad)
            return v.to(dtype), g, _vdot(tree_map(torch.conj, g), updates).to(dtype)

        value_init = torch.as_tensor(value, dtype=dtype, device=device)
        slope_init = _vdot(updates, grad).to(dtype)
        guess = state.learning_rate if initial_guess_strategy == "keep" else 1.0
        stepsize_guess = torch.as_tensor(guess, dtype=dtype, device=device)

        def search_interval(s: _Zoom) -> _Zoom:
            new = torch.where(s.count == 0, stepsize_guess, increase_factor * s.stepsize)
            if max_learning_rate is not None:
                max_reached = new >= max_learning_rate
                new = torch.clamp(new, max=max_learning_rate)
            else:
                max_reached = torch.zeros((), dtype=torch.bool, device=device)
            v, g, slope = on_line(new)
            dec = decrease_error_of(new, v, slope, value_init, slope_init)
            curv = curvature_error_of(slope, slope_init)
            error = torch.maximum(dec, curv)
            safe_t, safe_v, safe_g = _pick(
                dec <= tol, [new, v, g], [s.safe_stepsize, s.safe_value, s.safe_grad]
            )
            high_to_new = (dec > 0.0) | ((v >= s.value) & (s.count > 0))
            low_to_new = (slope >= 0.0) & ~high_to_new
            low, v_low, sl_low, high, v_high, sl_high = _pick(
                low_to_new,
                [new, v, slope, s.stepsize, s.value, s.slope],
                [s.stepsize, s.value, s.slope, new, v, slope],
            )
            found = high_to_new | low_to_new | (error <= tol)
            done = (error <= tol) | (max_reached & ~found)
            failed = (s.count + 1 >= max_linesearch_steps) & ~done
            return _Zoom(
                s.count + 1, new, v, g, slope, dec, curv, error, found, done, failed,
                low, v_low, sl_low, high, v_high, sl_high, low, v_low,
                safe_t, safe_v, safe_g,
            )  # fmt: skip

        def zoom_into_interval(s: _Zoom) -> _Zoom:
            delta = torch.abs(s.high - s.low)
            left, right = torch.minimum(s.high, s.low), torch.maximum(s.high, s.low)
            cubic = _cubicmin(
                s.low, s.value_low, s.slope_low, s.high, s.value_high, s.cubic_ref,
                s.value_cubic_ref,
            )  # fmt: skip
            use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
            quad = _quadmin(s.low, s.value_low, s.slope_low, s.high, s.value_high)
            use_quad = ~use_cubic & (quad > left + 0.1 * delta) & (quad < right - 0.1 * delta)
            use_bisection = ~use_cubic & ~use_quad
            middle = torch.where(use_cubic, cubic, s.cubic_ref)
            middle = torch.where(use_quad, quad, middle)
            middle = torch.where(use_bisection, (s.low + s.high) / 2.0, middle)
            v, g, slope = on_line(middle)
            dec = decrease_error_of(middle, v, slope, value_init, slope_init)
            curv = curvature_error_of(slope, slope_init)
            error = torch.maximum(dec, curv)
            safe_t, safe_v, safe_g = _pick(
                (dec <= tol) & (v < s.safe_value),
                [middle, v, g],
                [s.safe_stepsize, s.safe_value, s.safe_grad],
            )
            done = error <= tol
            high_to_middle = (dec > 0.0) | (v >= s.value_low)
            high_to_low = (slope * (s.high - s.low) >= 0.0) & ~high_to_middle
            low_to_middle = ~high_to_middle
            high, v_high, sl_high = _pick(
                high_to_middle, [middle, v, slope], [s.high, s.value_high, s.slope_high]
            )
            high, v_high, sl_high = _pick(
                high_to_low, [s.low, s.value_low, s.slope_low], [high, v_high, sl_high]
            )
            low, v_low, sl_low = _pick(
                low_to_middle, [middle, v, slope], [s.low, s.value_low, s.slope_low]
            )
            cubic_ref, v_cubic_ref = _pick(
                high_to_middle | high_to_low, [s.high, s.value_high], [s.low, s.value_low]
            )
            too_small = delta <= stepsize_precision
            failed = ((s.count + 1 >= max_linesearch_steps) | (too_small & (safe_t > 0.0))) & ~done
            return _Zoom(
                s.count + 1, middle, v, g, slope, dec, curv, error, s.interval_found, done,
                failed, low, v_low, sl_low, high, v_high, sl_high, cubic_ref, v_cubic_ref,
                safe_t, safe_v, safe_g,
            )  # fmt: skip

        def try_safe_step(s: _Zoom) -> _Zoom:
            use_safe = (s.safe_stepsize > 0.0) | torch.isinf(s.decrease_error)
            t, v, g = _pick(use_safe, [s.safe_stepsize, s.safe_value, s.safe_grad],
                            [s.stepsize, s.value, s.grad])  # fmt: skip
            return s._replace(stepsize=t, value=v, grad=g)

        def step(s: _Zoom) -> _Zoom:
            new = branch(
                s.interval_found, lambda: zoom_into_interval(s), lambda: search_interval(s)
            )
            return branch(new.failed, lambda: try_safe_step(new), lambda: new)

        def scalar(x: Any) -> torch.Tensor:
            return torch.as_tensor(x, dtype=dtype, device=device)

        false = torch.zeros((), dtype=torch.bool, device=device)
        zero, inf = scalar(0.0), scalar(float("inf"))
        grad_in = tree_map(lambda x, y: x.to(y.dtype, copy=True), grad, state.grad)
        start = _Zoom(
            torch.zeros((), dtype=torch.int64, device=device), zero, value_init, grad_in,
            slope_init, inf, inf, inf, false, false, false, zero, value_init, slope_init,
            zero, value_init, slope_init, zero, value_init, zero, value_init, grad_in,
        )  # fmt: skip
        final = while_loop(lambda s: ~(s.done | s.failed), step, start, max_linesearch_steps)
        new_updates = tree_map(lambda u: (final.stepsize * u).to(u.dtype), updates)
        info = ZoomLinesearchInfo(final.count, final.decrease_error, final.curvature_error)
        return new_updates, ScaleByZoomLinesearchState(
            final.stepsize, final.value, final.grad, info
        )

    return GradientTransformation(init_fn, update_fn)
