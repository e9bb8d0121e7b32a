"""`TrainStep`: a module's whole step, against torch's loop in float64, compiled and eager.

The reference is the recipe written the torch way: ``clip_grad_norm_`` over all parameters,
AdamW with two param groups (decay on matrices only) and a ``LambdaLR`` warmup-cosine. The
model has a tied weight, a frozen parameter and a batch-norm buffer, so that each of those
is covered by the same comparison.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn

import torchopt_fn as tf

F64 = torch.float64
STEPS, PEAK = 8, 3e-2


class Tied(nn.Module):
    """An embedding tied to the output layer, a frozen scale, batch norm (a buffer)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.hidden = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight
        self.frozen = nn.Parameter(torch.full((4,), 0.5), requires_grad=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(self.embed(tokens)) * self.frozen)
        return self.head(self.norm(h))


def make() -> Tied:
    torch.manual_seed(0)
    return Tied().to(F64)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def batches(n: int = STEPS, size: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randint(0, 7, (size,), generator=gen), torch.randint(0, 7, (size,), generator=gen))
        for _ in range(n)
    ]


def schedule() -> tf.Schedule:
    return tf.warmup_cosine_decay_schedule(0.0, PEAK, 3, STEPS, 0.1 * PEAK)


def recipe(**adamw: object) -> tf.GradientTransformation:
    mask = lambda params: tf.tree_map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return tf.chain(
        tf.clip_by_torch_global_norm(0.5),
        tf.adamw(schedule(), b1=0.9, b2=0.95, weight_decay=0.1, mask=mask, **adamw),
    )


def torch_reference(data: list) -> Tied:
    model = make()
    trained = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trained if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in trained if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=PEAK, betas=(0.9, 0.95))
    lr_at = schedule()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: float(lr_at(torch.tensor(t))) / PEAK)
    for x, y in data:
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        torch.nn.utils.clip_grad_norm_(trained, 0.5)
        opt.step()
        sched.step()
    return model


def assert_models_close(a: nn.Module, b: nn.Module, rtol: float = 1e-12) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-14, msg=name)


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
def test_train_step_equals_torchs_clip_adamw_lambdalr_loop_in_float64(flat: bool):
    data = batches()
    model = make()
    step = tf.TrainStep(model, recipe(), loss_fn, flat=flat, compile=False)
    losses = [step(x, y) for x, y in data]
    assert_models_close(model, torch_reference(data))
    assert all(loss.dim() == 0 and not loss.requires_grad for loss in losses)
    assert model.frozen.eq(0.5).all()


@pytest.mark.parametrize("flat", [False, True], ids=["tree", "flat"])
def test_compiled_train_step_equals_eager_without_recompiling(flat: bool):
    data = batches()
    eager_model, compiled_model = make(), make()
    eager = tf.TrainStep(eager_model, recipe(), loss_fn, flat=flat, compile=False)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    compiled = tf.TrainStep(compiled_model, recipe(), loss_fn, flat=flat, backend=counter)
    for i, (x, y) in enumerate(data):
        want = eager(x, y)
        if i == 0:
            got = compiled(x, y)
        else:  # the schedule and the count move; nothing recompiles
            with torch.compiler.set_stance("fail_on_recompile"):
                got = compiled(x, y)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert counter.frame_count == 1
    assert_models_close(compiled_model, eager_model)
    for a, b in zip(tf.tree_leaves(compiled.state), tf.tree_leaves(eager.state)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_inductor_train_step_writes_params_and_state_in_place():
    """Inductor's copies into the module's tensors and the state (0-d ones after the graph)."""
    data = batches(4)
    eager_model, compiled_model = make(), make()
    eager = tf.TrainStep(eager_model, recipe(), loss_fn, flat=True, compile=False)
    torch._dynamo.reset()
    compiled = tf.TrainStep(compiled_model, recipe(), loss_fn, flat=True)
    params = [p.data_ptr() for p in compiled_model.parameters()]
    for x, y in data:
        eager(x, y)
        compiled(x, y)
    assert [p.data_ptr() for p in compiled_model.parameters()] == params
    assert_models_close(compiled_model, eager_model, rtol=1e-10)
    assert int(compiled.state_dict()["1.0.count"]) == 4


def test_accumulation_equals_one_step_on_the_whole_batch():
    data = batches(3, size=12)
    whole, split = make(), make()
    one = tf.TrainStep(whole, recipe(), loss_fn, compile=False)
    four = tf.TrainStep(split, recipe(), loss_fn, accumulation_steps=4, compile=False)
    for x, y in data:
        # Batch norm normalises per micro-batch; in eval mode it is the same either way.
        whole.eval(), split.eval()
        torch.testing.assert_close(four(x, y), one(x, y), rtol=1e-12, atol=0)
    assert_models_close(split, whole)
    with pytest.raises(ValueError, match="accumulation_steps=4 equal micro-batches"):
        four(torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long))


def test_state_dict_resumes_exactly_and_loads_with_weights_only():
    data = batches()
    straight, resumed = make(), make()
    a = tf.TrainStep(straight, recipe(), loss_fn, compile=False)
    for x, y in data:
        a(x, y)
    first = tf.TrainStep(resumed, recipe(), loss_fn, compile=False)
    for x, y in data[:3]:
        first(x, y)
    buffer = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "step": first.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    fresh = make()
    fresh.load_state_dict(ckpt["model"])
    second = tf.TrainStep(fresh, recipe(), loss_fn, compile=False)
    second.load_state_dict(ckpt["step"])
    for x, y in data[3:]:
        second(x, y)
    assert_models_close(fresh, straight, rtol=0)


def test_a_malformed_state_dict_is_refused_before_anything_is_written():
    step = tf.TrainStep(make(), recipe(), loss_fn, compile=False)
    step(*batches(1)[0])
    before = {k: v.clone() for k, v in step.state_dict().items()}
    good = step.state_dict()
    wrong_shape = {**good, next(k for k in good if good[k].dim()): torch.zeros(1, dtype=F64)}
    missing = dict(list(good.items())[1:])
    for bad, match in ((wrong_shape, "has shape"), (missing, "missing keys")):
        with pytest.raises(ValueError, match=match):
            step.load_state_dict({k: torch.full_like(v, 7.0) for k, v in bad.items()})
        for k, v in step.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_a_transformation_that_reads_the_loss_gets_it():
    """`reduce_on_plateau` halves the step once the loss stops falling."""
    model = make()
    tx = tf.chain(tf.sgd(0.0), tf.contrib.reduce_on_plateau(factor=0.5, patience=0))
    step = tf.TrainStep(model, tx, loss_fn, compile=False)
    x, y = batches(1)[0]
    for _ in range(3):
        step(x, y)
    assert float(step.state[1].scale) < 1.0


BAD: dict[str, tuple[Callable[[], object], str]] = {
    "no accumulation": (
        lambda: tf.TrainStep(make(), tf.adam(0.1), loss_fn, accumulation_steps=0),
        "accumulation_steps must be an int >= 1",
    ),
    "per-tensor on flat": (
        lambda: tf.TrainStep(make(), tf.lamb(0.1), loss_fn, flat=True),
        "lamb",
    ),
    "two dtypes on flat": (
        lambda: tf.TrainStep(
            nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double()),
            tf.adam(0.1),
            loss_fn,
            flat=True,
        ),
        "one dtype and device",
    ),
    "nothing to train": (
        lambda: tf.TrainStep(nn.Linear(2, 2).requires_grad_(False), tf.adam(0.1), loss_fn),
        "no parameter with requires_grad=True",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_arguments_get_a_clear_error(case: str):
    build, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        build()
