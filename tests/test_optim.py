"""The torch.optim adapter: parity under every lr scheduler, checkpoints, AMP, hooks, bad input."""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler as lrs

import torchopt_fn as tf
from torchopt_fn.interop import _optimizer

STEPS = 25

# (id, torch class, torch kwargs, our transformation). Ours is the named optimizer where optax's
# maths equals torch's, else `from_torch`.
OPTIMIZERS = [
    ("sgd_momentum", torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3), None),
    ("sgd_nesterov", torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True), None),
    ("adam", torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-3), None),
    ("adamw", torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2), None),
    (
        "adamw_alias",
        torch.optim.AdamW,
        dict(lr=1e-2, weight_decay=1e-2),
        lambda: tf.adamw(1e-2, weight_decay=1e-2),
    ),
    ("rmsprop", torch.optim.RMSprop, dict(lr=1e-2, momentum=0.5, centered=True), None),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.1, weight_decay=1e-3), None),
]


def _schedulers(has_momentum: bool, has_betas: bool) -> list[tuple[str, Callable]]:
    cycle = has_momentum or has_betas
    return [
        ("StepLR", lambda o: lrs.StepLR(o, step_size=5, gamma=0.5)),
        ("MultiStepLR", lambda o: lrs.MultiStepLR(o, milestones=[3, 9], gamma=0.3)),
        ("ExponentialLR", lambda o: lrs.ExponentialLR(o, gamma=0.9)),
        ("LinearLR", lambda o: lrs.LinearLR(o, start_factor=0.2, total_iters=10)),
        ("ConstantLR", lambda o: lrs.ConstantLR(o, factor=0.5, total_iters=6)),
        ("LambdaLR", lambda o: lrs.LambdaLR(o, lambda e: 1.0 / (1 + e))),
        ("MultiplicativeLR", lambda o: lrs.MultiplicativeLR(o, lambda e: 0.95)),
        ("PolynomialLR", lambda o: lrs.PolynomialLR(o, total_iters=20, power=2.0)),
        ("CosineAnnealingLR", lambda o: lrs.CosineAnnealingLR(o, T_max=10, eta_min=1e-4)),
        (
            "CosineAnnealingWarmRestarts",
            lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=4, T_mult=2),
        ),
        (
            "CyclicLR",
            lambda o: lrs.CyclicLR(
                o,
                base_lr=1e-3,
                max_lr=5e-2,
                step_size_up=4,
                cycle_momentum=has_momentum,
                base_momentum=0.8,
                max_momentum=0.9,
            ),
        ),
        (
            "OneCycleLR",
            lambda o: lrs.OneCycleLR(o, max_lr=5e-2, total_steps=STEPS + 1, cycle_momentum=cycle),
        ),
        (
            "SequentialLR",
            lambda o: lrs.SequentialLR(
                o, [lrs.LinearLR(o, 0.1, total_iters=4), lrs.ExponentialLR(o, 0.9)], milestones=[4]
            ),
        ),
        (
            "ChainedScheduler",
            lambda o: lrs.ChainedScheduler([lrs.ConstantLR(o, 0.5, 5), lrs.ExponentialLR(o, 0.95)]),
        ),
        ("ReduceLROnPlateau", lambda o: lrs.ReduceLROnPlateau(o, factor=0.5, patience=1)),
    ]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(
        torch.float64
    )


def _groups(model: torch.nn.Module, base_lr: float) -> list[dict]:
    # Two groups with different lr and weight decay.
    return [
        {"params": list(model[0].parameters())},
        {"params": list(model[2].parameters()), "lr": base_lr * 0.5, "weight_decay": 0.0},
    ]


_X = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(8, 3)


def _loss(model: torch.nn.Module) -> torch.Tensor:
    return ((model(_X) - 0.3) ** 4).mean() + (model(_X) ** 2).mean()


def _ours(torch_cls, kwargs, make_tx):
    return make_tx() if make_tx is not None else tf.from_torch(torch_cls, **kwargs)


def _train(model, opt, sched, steps: int) -> list[torch.Tensor]:
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(model)
        loss.backward()
        opt.step()
        if isinstance(sched, lrs.ReduceLROnPlateau):
            sched.step(loss.item())
        elif sched is not None:
            sched.step()
        history.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return history


def _assert_same_trajectory(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for step, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(
            x, y, rtol=1e-12, atol=1e-14, msg=lambda m, step=step: f"step {step}: {m}"
        )


_CASES = [
    pytest.param(o, s, id=f"{o[0]}-{s[0]}")
    for o in OPTIMIZERS
    for s in _schedulers(
        has_momentum="momentum" in o[2], has_betas=o[1] in (torch.optim.Adam, torch.optim.AdamW)
    )
]


@pytest.mark.parametrize(("opt_case", "sched_case"), _CASES)
def test_adapter_matches_torch_under_lr_scheduler(opt_case, sched_case):
    _, torch_cls, kwargs, make_tx = opt_case
    _, make_sched = sched_case
    ref_model, our_model = _model(), _model()
    ref = torch_cls(_groups(ref_model, kwargs["lr"]), **kwargs)
    ours = tf.Optimizer(_groups(our_model, kwargs["lr"]), _ours(torch_cls, kwargs, make_tx))
    ref_hist = _train(ref_model, ref, make_sched(ref), STEPS)
    our_hist = _train(our_model, ours, make_sched(ours), STEPS)
    _assert_same_trajectory(our_hist, ref_hist)
    for g_ref, g_ours in zip(ref.param_groups, ours.param_groups):
        assert g_ours["lr"] == pytest.approx(g_ref["lr"], rel=1e-15)


def test_adapter_is_a_torch_optimizer_with_torch_state_keys():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-3, weight_decay=1e-2))
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["betas"] == (0.9, 0.999)
    _train(model, opt, None, 1)
    assert set(opt.state[model[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}
    # An exact count in memory (schedules read it), torch's float step in checkpoints.
    assert opt.state[model[0].weight]["step"].dtype == torch.int64
    assert all(e["step"].dtype == torch.float32 for e in opt.state_dict()["state"].values())


def test_adapter_state_is_created_lazily():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-3))
    assert len(opt.state) == 0
    assert opt.state_dict()["state"] == {}


def test_step_returns_closure_loss_and_keeps_grads():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.sgd(0.1))

    def closure():
        opt.zero_grad()
        loss = _loss(model)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)


def test_params_without_grad_are_left_alone():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adam(1e-2))
    model[2].bias.requires_grad_(False)
    before = model[2].bias.detach().clone()
    _train(model, opt, None, 3)
    assert torch.equal(model[2].bias, before)


def test_named_parameters_are_accepted():
    model = _model()
    opt = tf.Optimizer(model.named_parameters(), tf.adam(1e-2))
    _train(model, opt, None, 2)
    assert len(opt.state) == 4


@pytest.mark.parametrize(
    ("torch_cls", "kwargs"),
    [
        (torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2)),
        (torch.optim.Adam, dict(lr=1e-2)),
        (torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
        (torch.optim.RMSprop, dict(lr=1e-2)),
        (torch.optim.Adagrad, dict(lr=0.1)),
    ],
    ids=["AdamW", "Adam", "SGD", "RMSprop", "Adagrad"],
)
def test_checkpoints_move_between_torch_and_adapter(torch_cls, kwargs):
    # torch -> adapter: train torch 5 steps, load its checkpoint into the adapter, both go on.
    torch_model, our_model = _model(), _model()
    ref = torch_cls(torch_model.parameters(), **kwargs)
    _train(torch_model, ref, None, 5)
    our_model.load_state_dict(torch_model.state_dict())
    ours = tf.Optimizer(our_model.parameters(), tf.from_torch(torch_cls, **kwargs))
    ours.load_state_dict(_through_file(ref.state_dict()))
    _assert_same_trajectory(_train(our_model, ours, None, 5), _train(torch_model, ref, None, 5))
    # adapter -> torch.
    fresh = torch_cls(torch_model.parameters(), **kwargs)
    torch_model.load_state_dict(our_model.state_dict())
    fresh.load_state_dict(_through_file(ours.state_dict()))
    _assert_same_trajectory(_train(torch_model, fresh, None, 5), _train(our_model, ours, None, 5))


def _through_file(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_checkpoint_resume_is_bit_identical():
    model_a = _model()
    opt_a = tf.Optimizer(
        _groups(model_a, 1e-2), tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-2))
    )
    sched_a = lrs.StepLR(opt_a, 3, 0.5)
    _train(model_a, opt_a, sched_a, 6)
    saved = _through_file(
        {"model": model_a.state_dict(), "opt": opt_a.state_dict(), "sched": sched_a.state_dict()}
    )
    expected = _train(model_a, opt_a, sched_a, 6)

    model_b = _model()
    opt_b = tf.Optimizer(
        _groups(model_b, 1e-2), tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-2))
    )
    sched_b = lrs.StepLR(opt_b, 3, 0.5)
    model_b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    sched_b.load_state_dict(saved["sched"])
    for x, y in zip(_train(model_b, opt_b, sched_b, 6), expected):
        assert torch.equal(x, y)


def _bad_state_dicts(good: dict) -> list[tuple[str, dict]]:
    out = []
    d = copy.deepcopy(good)
    d["param_groups"] = d["param_groups"][:1]
    out.append(("param groups", d))
    d = copy.deepcopy(good)
    d["param_groups"][0]["params"] = d["param_groups"][0]["params"][:1]
    out.append(("parameters", d))
    d = copy.deepcopy(good)
    d["state"][0]["exp_avg"] = torch.zeros(7)
    out.append(("shape", d))
    d = copy.deepcopy(good)
    del d["state"][0]["exp_avg_sq"]
    out.append(("state keys", d))
    d = copy.deepcopy(good)
    d["state"][0]["momentum_buffer"] = d["state"][0].pop("exp_avg")
    out.append(("different algorithm", d))
    out.append(("'state'", {"param_groups": good["param_groups"]}))
    return out


def test_malformed_state_dict_is_rejected_before_anything_changes():
    model = _model()
    opt = tf.Optimizer(_groups(model, 1e-2), tf.adamw(1e-2))
    _train(model, opt, None, 2)
    good = copy.deepcopy(opt.state_dict())
    before = copy.deepcopy(opt.state_dict())
    for what, bad in _bad_state_dicts(good):
        with pytest.raises(ValueError):
            opt.load_state_dict(bad)
        after = opt.state_dict()
        assert after["param_groups"] == before["param_groups"], what
        for k, v in before["state"].items():
            for key, t in v.items():
                assert torch.equal(after["state"][k][key], t), what


def test_unknown_group_hyperparameter_fails_at_construction():
    model = _model()
    with pytest.raises(ValueError, match="momentum"):
        tf.Optimizer([{"params": model.parameters(), "momentum": 0.9}], tf.adamw(1e-3))


def test_group_override_takes_effect():
    model = _model()
    frozen = list(model[2].parameters())
    opt = tf.Optimizer(
        [
            {"params": list(model[0].parameters())},
            {"params": frozen, "lr": 0.0, "weight_decay": 0.0},
        ],
        tf.adamw(1e-2, weight_decay=0.1),
    )
    before = [p.detach().clone() for p in frozen]
    _train(model, opt, None, 3)
    for p, b in zip(frozen, before):
        assert torch.equal(p, b)


def test_add_param_group_gets_defaults_and_its_own_state():
    model = _model()
    opt = tf.Optimizer(model[0].parameters(), tf.adam(1e-2))
    opt.add_param_group({"params": model[2].parameters(), "lr": 1e-3})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    _train(model, opt, None, 2)
    assert len(opt.state) == 4


def test_grad_scaler_skips_overflowing_steps_like_torch():
    results = []
    for make in (
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
        lambda ps: tf.Optimizer(ps, tf.adamw(1e-2, weight_decay=1e-2)),
    ):
        model = _model()
        opt = make(model.parameters())
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for step in range(6):
            opt.zero_grad()
            scaler.scale(_loss(model)).backward()
            if step in (2, 4):
                model[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt)
            scaler.update()
        results.append(
            (torch.cat([p.detach().reshape(-1) for p in model.parameters()]), scaler.get_scale())
        )
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    assert results[0][1] == results[1][1]


def test_step_hooks_fire():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.sgd(0.1))
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("state_dict") or sd)
    _train(model, opt, None, 1)
    opt.state_dict()
    assert calls == ["pre", "post", "state_dict"]


def test_deepcopy_and_pickle_round_trip():
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-2)))
    _train(model, opt, None, 2)
    clone = copy.deepcopy(opt)
    assert clone.state_dict()["state"][0]["step"] == 2
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.param_groups[0]["lr"] == 1e-2
    assert torch.equal(
        restored.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_distributed_checkpoint_state_dict_round_trip():
    dcp_sd = pytest.importorskip("torch.distributed.checkpoint.state_dict")
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-2))
    # get_optimizer_state_dict materialises state by stepping with lr 0 and zero grads.
    sd = dcp_sd.get_optimizer_state_dict(model, opt)
    assert set(sd["state"]) == {name for name, _ in model.named_parameters()}
    _train(model, opt, None, 3)
    sd = dcp_sd.get_optimizer_state_dict(model, opt)
    model2 = _model()
    model2.load_state_dict(model.state_dict())
    opt2 = tf.Optimizer(model2.parameters(), tf.adamw(1e-2))
    dcp_sd.set_optimizer_state_dict(model2, opt2, sd)
    _assert_same_trajectory(_train(model2, opt2, None, 3), _train(model, opt, None, 3))


def test_distributed_checkpoint_materialises_a_schedule_driven_state_without_an_update():
    """DCP makes the state exist by writing lr 0 over every group and stepping on zero
    gradients; with a schedule driving the lr (and weight decay it would apply) that step
    must create the state and change nothing else."""
    dcp_sd = pytest.importorskip("torch.distributed.checkpoint.state_dict")
    schedule = tf.warmup_cosine_decay_schedule(1e-2, 2e-2, 2, 10)
    make = lambda: tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(schedule, weight_decay=0.5))  # noqa: E731
    model = _model()
    before = copy.deepcopy(model.state_dict())
    opt = tf.Optimizer(model.parameters(), make())
    sd = dcp_sd.get_optimizer_state_dict(model, opt)
    assert set(sd["state"]) == {name for name, _ in model.named_parameters()}
    assert all(int(entry["step"]) == 0 for entry in sd["state"].values())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())
    # The state it made loads a trained one, and the run goes on as the trained one does.
    trained = _model()
    trained_opt = tf.Optimizer(trained.parameters(), make())
    _train(trained, trained_opt, None, 3)
    model.load_state_dict(trained.state_dict())
    dcp_sd.set_optimizer_state_dict(
        model, opt, dcp_sd.get_optimizer_state_dict(trained, trained_opt)
    )
    _assert_same_trajectory(_train(model, opt, None, 3), _train(trained, trained_opt, None, 3))


def test_compiled_step_does_not_recompile_when_scheduler_changes_lr():
    """Each new lr is new data to the compiled step, not a new constant: no recompile, and the
    trajectory is torch's under the same scheduler (so every new lr took effect)."""
    model, ref_model = _model(), _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-2), compile=True)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched, ref_sched = lrs.ExponentialLR(opt, 0.5), lrs.ExponentialLR(ref, 0.5)
    step = torch.compile(opt.step)
    # The first call creates the state (a second graph, as for torch.optim); after that the
    # changing lr must not recompile.
    for i in range(5):
        for o in (opt, ref):
            o.zero_grad()
        _loss(model).backward()
        _loss(ref_model).backward()
        if i >= 2:
            with torch.compiler.set_stance("fail_on_recompile"):
                step()
        else:
            step()
        ref.step()
        sched.step()
        ref_sched.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def _scheduled_adamw() -> tf.GradientTransformation:
    return tf.adamw(tf.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20), weight_decay=1e-2)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda o: lrs.LambdaLR(o, lambda t: 0.5**t),
        lambda o: lrs.CosineAnnealingLR(o, 10),
        lambda o: lrs.OneCycleLR(o, max_lr=1e-2, total_steps=10),
    ],
    ids=["LambdaLR", "CosineAnnealingLR", "OneCycleLR"],
)
def test_a_scheduler_on_a_schedule_driven_lr_is_refused_with_what_to_do(make_scheduler):
    """The group's lr is a NaN stand-in: a scheduler can be built, and the step after it has
    written a number refuses it (not a bare KeyError), before anything is changed."""
    model = _model()
    opt = tf.Optimizer(model.parameters(), _scheduled_adamw())
    sched = make_scheduler(opt)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"adamw's learning rate is a schedule.*drop the sched"):
        for _ in range(2):  # CosineAnnealingLR writes the stand-in back at its first step
            _loss(model).backward()
            opt.step()
            sched.step()
    if isinstance(sched, lrs.LambdaLR):  # it wrote at construction: the first step refused
        for p, q in zip(model.parameters(), before):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_schedule_driven_lr_checkpoints_without_its_stand_in():
    schedule = tf.constant_schedule(1.0)
    model = _model()
    opt = tf.Optimizer(model.parameters(), _scheduled_adamw())
    for _ in range(3):
        opt.zero_grad()
        _loss(model).backward()
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert "lr" not in saved["param_groups"][0]
    twin = _model()
    twin.load_state_dict(model.state_dict())
    again = tf.Optimizer(twin.parameters(), _scheduled_adamw())
    again.load_state_dict(saved)
    assert repr(again.param_groups[0]["lr"]).startswith("ScheduledLR")
    for m, o in ((model, opt), (twin, again)):
        o.zero_grad()
        _loss(m).backward()
        o.step()
    for p, q in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"sets lr=0\.1, but adamw's learning rate is a schedule"):
        tf.Optimizer([{"params": list(_model().parameters()), "lr": 0.1}], _scheduled_adamw())
    # Where another part's learning rate is a number, "lr" is that number's, as before.
    mixed = tf.chain(tf.scale_by_learning_rate(0.1), tf.scale_by_learning_rate(schedule))
    assert tf.Optimizer(_model().parameters(), mixed).param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize(
    "make_tx",
    [
        lambda: tf.adamw(1e-2, weight_decay=1e-2),
        lambda: tf.adam(1e-2),
        lambda: tf.sgd(0.05, momentum=0.9),
        lambda: tf.sgd(0.05, momentum=0.9, nesterov=True),
    ],
    ids=["adamw", "adam", "sgd_momentum", "sgd_nesterov"],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_fast_path_equals_generic_path(make_tx, dtype, monkeypatch):
    runs = []
    for fused in (True, False):
        model = _model().to(dtype)
        groups = [
            {"params": list(model[0].parameters())},
            {"params": list(model[2].parameters()), "lr": 5e-3},
        ]
        opt = tf.Optimizer(groups, make_tx())
        assert opt._runtime(opt.param_groups[1]).plan is not None
        if not fused:
            monkeypatch.setattr(_optimizer, "dense_layout", lambda params: None)
        sched = lrs.StepLR(opt, 3, 0.5)
        for _ in range(8):
            opt.zero_grad()
            ((model(_X.to(dtype)) - 0.3) ** 4).mean().backward()
            opt.step()
            sched.step()
        runs.append((model, opt))
    (fast_model, fast), (slow_model, slow) = runs
    rtol = 1e-13 if dtype == torch.float64 else 1e-5
    for p, q in zip(fast_model.parameters(), slow_model.parameters()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=rtol)
        for key, value in fast.state[p].items():
            torch.testing.assert_close(value, slow.state[q][key], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("clipped", [False, True], ids=["", "clip"])
@pytest.mark.parametrize("scheduled", [False, True], ids=["lr", "schedule"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_adamw_takes_the_fused_kernel_and_equals_torchs_two_groups(
    dtype, scheduled, clipped, monkeypatch
):
    """Weight decay on the matrices only, in one group: the kernel runs on each side of the
    mask, as torch's two-group AdamW does (and the generic path agrees). With a schedule, the
    kernel takes its value at the group's count, as torch's under ``LambdaLR``; with
    ``clip_by_torch_global_norm`` chained before it, the gradients are clipped as
    ``clip_grad_norm_`` clips them, then the kernel runs: the everyday recipe, fused."""
    matrices = lambda params: tf.tree_map(lambda p: p.ndim >= 2, params)  # noqa: E731
    schedule = tf.warmup_cosine_decay_schedule(0.0, 1e-2, 2, 6, 1e-3)
    lr = schedule if scheduled else 1e-2
    ref_model = _model().to(dtype)
    ref = torch.optim.AdamW(
        [
            {"params": [p for p in ref_model.parameters() if p.ndim >= 2]},
            {"params": [p for p in ref_model.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=1e-2,
        weight_decay=0.2,
        fused=True,
    )
    factor = (lambda t: float(schedule(torch.tensor(t))) / 1e-2) if scheduled else (lambda t: 1.0)
    sched = lrs.LambdaLR(ref, factor)
    runs = []
    for fused in (True, False):
        model = _model().to(dtype)
        tx = tf.adamw(lr, weight_decay=0.2, mask=matrices)
        if clipped:
            tx = tf.chain(tf.clip_by_torch_global_norm(0.5), tx)
        opt = tf.Optimizer(model.parameters(), tx)
        plan = opt._runtime(opt.param_groups[0]).plan
        assert plan is not None and plan.mask == (True, False, True, False)
        assert plan.clip == ((0.5, 2.0) if clipped else None)
        if not fused:
            monkeypatch.setattr(_optimizer, "dense_layout", lambda params: None)
        runs.append((model, opt))
    for _ in range(6):
        for model, opt in [*runs, (ref_model, ref)]:
            opt.zero_grad()
            ((model(_X.to(dtype)) - 0.3) ** 4).mean().backward()
            if clipped and opt is ref:
                norm = torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 0.5)
            opt.step()
        sched.step()
    rtol = 1e-13 if dtype == torch.float64 else 1e-6
    for model, opt in runs:
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=rtol, atol=rtol)
        if clipped:  # the clip's state holds the last norm, fused or not
            torch.testing.assert_close(opt.state[model[0].weight]["norm"], norm.to(dtype))


def test_compiled_mode_matches_torch_without_recompiling():
    ref_model, our_model = _model(), _model()
    kwargs = dict(lr=1e-2, weight_decay=1e-2)
    ref = torch.optim.AdamW(_groups(ref_model, 1e-2), **kwargs)
    tx = tf.chain(tf.clip_by_global_norm(10.0), tf.adamw(1e-2, weight_decay=1e-2))
    ours = tf.Optimizer(_groups(our_model, 1e-2), tx, compile=True)
    ref_sched, our_sched = (
        lrs.OneCycleLR(ref, 5e-2, total_steps=12),
        lrs.OneCycleLR(ours, 5e-2, total_steps=12),
    )
    for i in range(10):
        for model, opt, sched in ((ref_model, ref, ref_sched), (our_model, ours, our_sched)):
            opt.zero_grad()
            _loss(model).backward()
            if opt is ours and i >= 2:
                with torch.compiler.set_stance("fail_on_recompile"):
                    opt.step()
            else:
                opt.step()
            sched.step()
    for p, q in zip(our_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_train_and_eval_are_forwarded_to_the_transformation():
    modes = []
    tx = tf.sgd(0.1)
    tx.train = modes.append  # a transformation with modes (schedule-free style)
    opt = tf.Optimizer(_model().parameters(), tx)
    assert opt.eval() is opt and opt.train() is opt
    assert modes == [False, True]
    tf.Optimizer(_model().parameters(), tf.adam(1e-3)).eval()  # no modes: nothing happens


def test_a_scheduler_changing_lr_every_step_keeps_the_state_layout(monkeypatch):
    """A new lr rebuilds the transformation (a few factory calls), not the state's layout."""
    calls = []
    layout = _optimizer.state_layout
    monkeypatch.setattr(_optimizer, "state_layout", lambda s: calls.append(1) or layout(s))
    model = _model()
    opt = tf.Optimizer(model.parameters(), tf.adamw(1e-2))
    sched = lrs.ExponentialLR(opt, 0.9)
    for _ in range(5):
        opt.zero_grad()
        _loss(model).backward()
        opt.step()
        sched.step()
    assert len(calls) == 1
    # A value that changes the structure (momentum 0 -> 0.9 adds a stage) does rebuild it.
    opt = tf.Optimizer(model.parameters(), tf.from_torch(torch.optim.SGD, lr=0.1))
    for momentum in (0.0, 0.9):
        opt.param_groups[0]["momentum"] = momentum
        opt.zero_grad()
        _loss(model).backward()
        opt.step()
    assert "momentum_buffer" in opt.state[model[0].weight]


def test_a_mask_function_may_return_a_plain_list_for_a_param_group():
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)).double()
    theirs = copy.deepcopy(ours)
    decayed = [p for p in theirs.parameters() if p.ndim > 1]
    rest = [p for p in theirs.parameters() if p.ndim <= 1]
    ref = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.5}, {"params": rest, "weight_decay": 0.0}], lr=0.1
    )
    mask = lambda ps: [p.ndim > 1 for p in ps]  # noqa: E731 - a plain list, not a ParamList
    opt = tf.Optimizer(ours.parameters(), tf.adamw(0.1, weight_decay=0.5, mask=mask))
    x = torch.randn(8, 3, dtype=torch.float64)
    for _ in range(5):
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_a_global_norm_clip_over_several_param_groups_warns_that_it_clips_each_group():
    model = torch.nn.Linear(2, 1)
    groups = [{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}]
    for clip in (tf.clip_by_global_norm(1.0), tf.clip_by_torch_global_norm(1.0)):
        with pytest.warns(UserWarning, match="each group is clipped by its own norm"):
            tf.Optimizer(groups, tf.chain(clip, tf.adamw(1e-3)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tf.Optimizer(groups, tf.adamw(1e-3))
        tf.Optimizer(model.parameters(), tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-3)))
