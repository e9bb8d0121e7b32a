"""SAM (`torchopt_fn.contrib._sam`): opaque mode against optax, and SAM in the adapter.

The transparent mode runs in the optax goldens (``contrib_sam*`` cases). Here: the opaque
mode (``update(..., grad_fn=...)``) against numbers from optax 0.2.8 (``OPAQUE_GOLDENS``,
made by the script in this file's docstring below), the deliberate fix of ``sync_period=1``,
and the `Optimizer` adapter: ``opt.step(closure)`` with ``opaque_mode=True``, and two plain
``step()`` calls per batch in the transparent mode, both equal in float64 to the usual
hand-written SAM loop (ascend by $\\rho g/\\|g\\|$, take the gradient there, come back,
step the base torch.optim optimizer), and their ``state_dict`` round trips.

``OPAQUE_GOLDENS`` holds the goldens' params (``w`` row-major, ``b``) after steps 0, 5 and 11
of this optax loop (float64, ``jax_enable_x64``), on the problem of
``tests/goldens/make_optax_goldens.py`` (``grad``, ``initial_params``)::

    s = 1 + 0.25 * (step % 3)
    grad_fn = lambda p, i: s * (1 + 0.5 * i) * grad(p)
    updates, state = tx.update(s * grad(params), state, params, grad_fn=grad_fn)
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
import torch

import torchopt_fn as tf
from tests.helpers import GOLDEN, assert_trees_close
from torchopt_fn.contrib import normalize, sam

F64 = torch.float64

OPAQUE_GOLDENS = {
    "opaque_sgd": {
        0: {
            "w": [
                -0.9753035973522431,
                -0.8149033878108946,
                -0.6441584417339301,
                -0.46624706580628816,
                -0.283652822229737,
                -0.09839106100279235,
                0.08779540613912076,
                0.27325848435075495,
                0.45627247097705687,
                0.6348550119556192,
                0.8065687716866234,
                0.9682904213718283,
            ],
            "b": [0.4972084438476557, -0.2101446050336076, 0.14349874632866413],
        },
        5: {
            "w": [
                -0.880131269003314,
                -0.8051080203600028,
                -0.6949319705696932,
                -0.5465008494897915,
                -0.36369916103813327,
                -0.15692527503405274,
                0.05957679524380783,
                0.2703684544919396,
                0.4608502030526874,
                0.6195528853304008,
                0.7407529053976127,
                0.8256419687595614,
            ],
            "b": [0.4877261282792021, 0.1887487843037877, 0.3380169161847273],
        },
        11: {
            "w": [
                -0.8398301115301583,
                -0.8070415086259272,
                -0.7460228276264472,
                -0.6383802427716228,
                -0.4689098245503635,
                -0.2420980079262856,
                0.013211722073245256,
                0.25745585103878477,
                0.45677239950544585,
                0.5960556144815177,
                0.6817704461867868,
                0.7305412172773653,
            ],
            "b": [0.4899595775255712, 0.39131009496293356, 0.44048842354292433],
        },
    },
    "opaque_adam_period3": {
        0: {
            "w": [
                -0.9500000004591713,
                -0.7681818195771253,
                -0.686363634773696,
                -0.5045454531347549,
                -0.32272727096987536,
                -0.14090908775417996,
                0.04090910717709874,
                0.22272763564380138,
                0.5045454431041722,
                0.586363639296648,
                0.7681818190464119,
                0.9500000003985547,
            ],
            "b": [0.4500000012308174, -0.250000000183595, 0.1499999996587572],
        },
        5: {
            "w": [
                -0.7278001835276564,
                -0.81583720756669,
                -0.8400266383755208,
                -0.7530437381860252,
                -0.5721591264770589,
                -0.3883611480304012,
                -0.19234044800070046,
                0.4191606195095375,
                0.49888841165540215,
                0.4842281023663426,
                0.5351549371177872,
                0.7099422112864727,
            ],
            "b": [0.5133672261125277, -0.002412707730832464, 0.3949156624237904],
        },
        11: {
            "w": [
                -0.6854495961568647,
                -0.8081487419596081,
                -0.787893970790631,
                -0.8686102481853724,
                -0.8560022172505425,
                -0.6941258442495999,
                -0.489972985365152,
                0.4017624400836505,
                0.3108189304565526,
                0.36490975068442266,
                0.34231785356762384,
                0.48504887590552004,
            ],
            "b": [0.5476958969255086, 0.2771626931549087, 0.6203814022317564],
        },
    },
    "opaque_no_reset_period3": {
        0: {
            "w": [
                -0.9455540880124618,
                -0.8002646162528761,
                -0.6520874969250481,
                -0.4722671560479709,
                -0.28695285404043686,
                -0.09883324445544486,
                0.08937233286882257,
                0.27265838686353583,
                0.4567305237883436,
                0.6278399746794366,
                0.7892664997587593,
                0.9372733467270884,
            ],
            "b": [0.47968829542326086, -0.16383069897886762, 0.1732616217338841],
        },
        5: {
            "w": [
                -0.5262914333211997,
                -0.7592744567525668,
                -0.9480617002673902,
                -0.8644244326202835,
                -0.6550460796518827,
                -0.3399323975019283,
                0.0016164837598220336,
                0.25674847717252536,
                0.4533890663747898,
                0.4563129505547078,
                0.3826544582660546,
                0.2315050469560487,
            ],
            "b": [0.48347227570949675, 1.128644180800235, 0.8430140304567258],
        },
        11: {
            "w": [
                -0.9106560871354741,
                -0.9479300335324842,
                -0.719260579945093,
                -0.828532173725006,
                -1.0103536504237929,
                -1.1126985227445894,
                -0.5039131888401188,
                0.07070991813256473,
                0.27579417327277783,
                0.12240497674787865,
                -0.1612102099333757,
                -0.6501502445526439,
            ],
            "b": [0.7009112595404752, 0.16784597614317295, 0.32697050653285425],
        },
    },
}

OPAQUE_CASES: dict[str, Callable[[], tf.GradientTransformation]] = {
    "opaque_sgd": lambda: sam(tf.sgd(0.05), tf.chain(normalize(), tf.sgd(0.1)), opaque_mode=True),
    "opaque_adam_period3": lambda: sam(
        tf.adam(0.05), tf.chain(normalize(), tf.adam(0.05)), sync_period=3, opaque_mode=True
    ),
    "opaque_no_reset_period3": lambda: sam(
        tf.sgd(0.05, momentum=0.9),
        tf.chain(normalize(), tf.adam(0.05)),
        sync_period=3,
        reset_state=False,
        opaque_mode=True,
    ),
}


def _scaled_grad(params: Any, s: float) -> Any:
    return tf.tree_map(lambda g: g * s, GOLDEN.grad(params))


@pytest.mark.parametrize("name", OPAQUE_CASES)
def test_sam_opaque_mode_matches_optax(name: str):
    tx = OPAQUE_CASES[name]()
    params = GOLDEN.init_params(F64)
    state = tx.init(params)
    for step in range(12):
        s = 1 + 0.25 * (step % 3)
        grad_fn = lambda p, i, s=s: _scaled_grad(p, s * (1 + 0.5 * i))  # noqa: E731
        updates, state = tx.update(_scaled_grad(params, s), state, params, grad_fn=grad_fn)
        params = tf.apply_updates(params, updates)
        if step in OPAQUE_GOLDENS[name]:
            for k, v in OPAQUE_GOLDENS[name][step].items():
                torch.testing.assert_close(
                    params[k].reshape(-1), torch.tensor(v, dtype=F64), rtol=1e-12, atol=1e-14
                )


def _run(tx: tf.GradientTransformation, steps: int, **extra: Any) -> Any:
    params = GOLDEN.init_params(F64)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update(GOLDEN.grad(params), state, params, **extra)
        params = tf.apply_updates(params, updates)
    return params


def test_sam_transparent_mode_equals_opaque_mode_every_period():
    adv = lambda: tf.chain(normalize(), tf.adam(0.05))  # noqa: E731
    transparent = sam(tf.adamw(0.05, weight_decay=0.1), adv(), sync_period=3)
    opaque = sam(tf.adamw(0.05, weight_decay=0.1), adv(), sync_period=3, opaque_mode=True)
    grad_fn = lambda p, i: GOLDEN.grad(p)  # noqa: E731
    assert_trees_close(_run(transparent, 12), _run(opaque, 4, grad_fn=grad_fn), rtol=1e-12)


@pytest.mark.parametrize("opaque_mode", [False, True])
def test_sam_sync_period_one_is_the_outer_optimizer(opaque_mode: bool):
    """optax 0.2.8 steps from the previous step's params here (it reads its cache before
    refreshing it); with no adversarial step SAM is its outer optimizer."""
    tx = sam(tf.sgd(0.05, momentum=0.9), tf.sgd(0.1), sync_period=1, opaque_mode=opaque_mode)
    extra = {"grad_fn": lambda p, i: GOLDEN.grad(p)} if opaque_mode else {}
    assert_trees_close(_run(tx, 5, **extra), _run(tf.sgd(0.05, momentum=0.9), 5), rtol=1e-14)


def test_sam_refuses_bad_arguments():
    adv = tf.chain(normalize(), tf.sgd(0.1))
    with pytest.raises(ValueError, match="sync_period"):
        sam(tf.sgd(0.1), adv, sync_period=0)
    with pytest.raises(ValueError, match="batch_axis_name"):
        sam(tf.sgd(0.1), adv, opaque_mode=True, batch_axis_name="batch")
    params = {"w": torch.ones(2)}
    opaque = sam(tf.sgd(0.1), adv, opaque_mode=True)
    with pytest.raises(ValueError, match="grad_fn"):
        opaque.update({"w": torch.ones(2)}, opaque.init(params), params)
    transparent = sam(tf.sgd(0.1), adv)
    with pytest.raises(ValueError, match="needs the parameters"):
        transparent.update({"w": torch.ones(2)}, transparent.init(params))


def test_sam_cache_is_a_copy_of_the_params():
    """The adapter updates parameters in place: the cached outer point must not move."""
    tx = sam(tf.sgd(0.1), tf.chain(normalize(), tf.sgd(0.5)))
    params = {"w": torch.tensor([3.0, 4.0])}
    state = tx.init(params)
    assert state.cache["w"] is not params["w"]
    updates, state = tx.update({"w": torch.tensor([6.0, 8.0])}, state, params)
    tf.apply_updates_(params, updates)
    assert torch.equal(state.cache["w"], torch.tensor([3.0, 4.0]))


# --------------------------------------------------------------------------- the adapter

RHO, LR = 0.05, 0.1
BASES: dict[str, tuple[Callable[[], tf.GradientTransformation], Callable[..., Any]]] = {
    "sgd_momentum": (
        lambda: tf.sgd(LR, momentum=0.9),
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
    ),
    "adamw": (
        lambda: tf.adamw(LR, weight_decay=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.1),
    ),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(
        F64
    )


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 3, generator=gen, dtype=F64), torch.randn(8, 1, generator=gen, dtype=F64))
        for _ in range(n)
    ]


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(x), y)


def _reference_sam(base: str, batches: list) -> tuple[list[torch.Tensor], list[float]]:
    """The usual two-pass SAM loop (davda54/sam's recipe, without its 1e-12 in the norm)."""
    model = _model()
    params = list(model.parameters())
    opt = BASES[base][1](params)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            old = [p.clone() for p in params]
            for p in params:
                p.add_(p.grad * (RHO / norm))
        opt.zero_grad()
        _loss(model, x, y).backward()
        with torch.no_grad():
            for p, o in zip(params, old):
                p.copy_(o)
        opt.step()
    return [p.detach().clone() for p in params], losses


def _sam(base: str, opaque_mode: bool) -> tf.GradientTransformation:
    adv = tf.chain(normalize(), tf.sgd(RHO))
    return sam(BASES[base][0](), adv, opaque_mode=opaque_mode)


def _closure(opt: torch.optim.Optimizer, model: torch.nn.Module, x, y) -> Callable[[], Any]:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(model, x, y)
        loss.backward()
        return loss

    return closure


def _closure_steps(opt: tf.Optimizer, model: torch.nn.Module, batches: list) -> list[float]:
    return [opt.step(_closure(opt, model, x, y)).item() for x, y in batches]


def _two_steps(opt: tf.Optimizer, model: torch.nn.Module, batches: list) -> None:
    """The transparent mode: one ``step()`` to the adversarial point, one back and on."""
    for x, y in batches:
        for _ in range(2):
            opt.zero_grad()
            _loss(model, x, y).backward()
            opt.step()


@pytest.mark.parametrize("base", BASES)
def test_sam_optimizer_step_closure_matches_the_reference_loop(base: str):
    batches = _batches(4)
    expected, expected_losses = _reference_sam(base, batches)
    model = _model()
    opt = tf.Optimizer(model.parameters(), _sam(base, opaque_mode=True))
    losses = _closure_steps(opt, model, batches)
    assert_trees_close([p.detach() for p in model.parameters()], expected, rtol=1e-12, atol=1e-14)
    # The loss returned is the closure's first one, at the outer parameters.
    torch.testing.assert_close(losses, expected_losses, rtol=1e-12, atol=0)


@pytest.mark.parametrize("base", BASES)
def test_sam_optimizer_transparent_two_steps_match_the_reference_loop(base: str):
    batches = _batches(4)
    expected, _ = _reference_sam(base, batches)
    model = _model()
    opt = tf.Optimizer(model.parameters(), _sam(base, opaque_mode=False))
    _two_steps(opt, model, batches)
    assert_trees_close([p.detach() for p in model.parameters()], expected, rtol=1e-12, atol=1e-14)


def _round_trip(opt: tf.Optimizer) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.mark.parametrize("opaque_mode", [False, True])
def test_sam_optimizer_state_dict_round_trip(opaque_mode: bool):
    batches = _batches(4)
    run = _closure_steps if opaque_mode else _two_steps
    model = _model()
    opt = tf.Optimizer(model.parameters(), _sam("sgd_momentum", opaque_mode))
    run(opt, model, batches[:1])
    if not opaque_mode:  # mid-period: the cached outer point is in the checkpoint
        opt.zero_grad()
        _loss(model, *batches[1]).backward()
        opt.step()
    saved = _round_trip(opt)
    keys = {"step", "steps_since_sync", "momentum_buffer"} | (set() if opaque_mode else {"cache"})
    assert set(saved["state"][0]) == keys
    clone = _model()
    with torch.no_grad():
        for p, q in zip(clone.parameters(), model.parameters()):
            p.copy_(q)
    opt2 = tf.Optimizer(clone.parameters(), _sam("sgd_momentum", opaque_mode))
    opt2.load_state_dict(saved)
    if opaque_mode:
        run(opt, model, batches[1:])
        run(opt2, clone, batches[1:])
    else:
        for m, o in ((model, opt), (clone, opt2)):  # finish the period, then two more
            o.zero_grad()
            _loss(m, *batches[1]).backward()
            o.step()
            run(o, m, batches[2:])
    assert_trees_close(list(clone.parameters()), list(model.parameters()), rtol=0, atol=0)
    assert_trees_close(opt2.state_dict()["state"], opt.state_dict()["state"], rtol=0, atol=0)


def test_sam_optimizer_opaque_mode_needs_a_closure_and_one_param_group():
    model = _model()
    first, second = list(model.parameters())[:2], list(model.parameters())[2:]
    x, y = _batches(1)[0]
    opt = tf.Optimizer(model.parameters(), _sam("sgd_momentum", opaque_mode=True))
    _loss(model, x, y).backward()
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    groups = [{"params": first}, {"params": second}]
    opt = tf.Optimizer(groups, _sam("sgd_momentum", opaque_mode=True))
    with pytest.raises(ValueError, match="one param group"):
        opt.step(_closure(opt, model, x, y))


def test_sam_optimizer_step_that_fails_changes_nothing():
    model = _model()
    x, y = _batches(1)[0]
    opt = tf.Optimizer(model.parameters(), _sam("sgd_momentum", opaque_mode=True))
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:  # at the adversarial point
            raise RuntimeError("boom")
        return _closure(opt, model, x, y)()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert_trees_close([p.detach() for p in model.parameters()], before, rtol=0, atol=0)
    assert not opt.state
