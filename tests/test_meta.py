"""MetaOptimizer, extract_state / recover_state / detach_ (meta-learning over an nn.Module), and
tree_stack / tree_unstack, against the functional loop of torch.func in float64."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import torchopt_fn as tf
from tests.helpers import assert_trees_close

DTYPE = torch.float64
INNER_STEPS = 3

# Inner optimizers built from a differentiable learning rate.
INNER = {
    "sgd": lambda lr: tf.sgd(lr, momentum=0.9),
    "adam": lambda lr: tf.adam(lr, eps_root=1e-8),
    "adamw": lambda lr: tf.adamw(lr, eps_root=1e-8, weight_decay=1e-2),
}


class Net(nn.Module):
    """An MLP with biases, a tied weight (``h2.weight`` is ``h1.weight``), a frozen parameter
    and a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4)
        self.h1 = nn.Linear(4, 4)
        self.h2 = nn.Linear(4, 4)
        self.h2.weight = self.h1.weight
        self.out = nn.Linear(4, 2, bias=False)
        self.scale = nn.Parameter(torch.tensor(1.5), requires_grad=False)
        self.register_buffer("shift", torch.full((4,), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.h1(h))
        h = torch.tanh(self.h2(h)) * self.scale + self.shift
        return self.out(h)


def make_net() -> Net:
    torch.manual_seed(1)
    return Net().to(DTYPE)


def make_task(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(8, d, generator=g, dtype=DTYPE) for d in (3, 2, 3, 2))


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def trainable(net: nn.Module) -> dict[str, torch.Tensor]:
    """The meta-parameters as `functional_call` takes them (tied ones once)."""
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


def functional_adapt(
    net: nn.Module,
    make_tx: Callable[[torch.Tensor], tf.GradientTransformation],
    params: dict[str, torch.Tensor],
    lr: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The inner loop written with torch.func: the reference for MetaOptimizer."""
    tx = make_tx(lr)
    state = tx.init(params)
    for _ in range(INNER_STEPS):
        g = grad(lambda p: mse(functional_call(net, p, (x,)), y))(params)
        updates, state = tx.update(g, state, params)
        params = tf.apply_updates(params, updates)
    return params


def functional_meta_grads(net, make_tx, params, lr, task):
    """d(query loss after the inner loop) / d(initial params, lr), by torch.func.grad."""
    x, y, xq, yq = task

    def meta_loss(params, lr):
        adapted = functional_adapt(net, make_tx, params, lr, x, y)
        return mse(functional_call(net, adapted, (xq,)), yq)

    return grad(meta_loss, argnums=(0, 1))(params, lr)


def inner_loop(net: nn.Module, opt: tf.MetaOptimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(INNER_STEPS):
        opt.step(mse(net(x), y))


# --------------------------------------------------------------------------- MetaOptimizer


@pytest.mark.parametrize("name", list(INNER))
def test_meta_optimizer_matches_the_functional_loop_and_its_meta_gradient(name):
    make_tx = INNER[name]
    net = make_net()
    x, y, xq, yq = task = make_task(0)
    initial = trainable(net)
    frozen = net.scale
    lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)

    opt = tf.MetaOptimizer(net, make_tx(lr))
    inner_loop(net, opt, x, y)
    outer = mse(net(xq), yq)
    meta = torch.autograd.grad(outer, [*initial.values(), lr])

    reference = {n: p.detach() for n, p in initial.items()}
    expected = functional_adapt(make_net(), make_tx, reference, lr.detach(), x, y)
    adapted = {n: p.detach() for n, p in trainable(net).items()}  # the tensors now in the module
    assert_trees_close(adapted, expected, rtol=1e-12, atol=1e-12)
    assert net.h2.weight is net.h1.weight and not net.h1.weight.is_leaf  # still tied, on the graph
    assert net.scale is frozen  # frozen parameters are left alone

    d_params, d_lr = functional_meta_grads(make_net(), make_tx, reference, lr.detach(), task)
    assert_trees_close(dict(zip(initial, meta[:-1])), d_params, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(meta[-1], d_lr, rtol=1e-10, atol=1e-10)


def test_meta_optimizer_leaves_a_parameter_without_gradient_and_its_state_alone():
    net = nn.ModuleDict({"used": nn.Linear(2, 1), "unused": nn.Linear(2, 1)}).to(DTYPE)
    opt = tf.MetaOptimizer(net, tf.adamw(0.1, eps_root=1e-8, weight_decay=0.5))
    unused = net["unused"].weight
    x = torch.randn(4, 2, dtype=DTYPE)
    for _ in range(2):
        opt.step(net["used"](x).pow(2).mean())
    assert net["unused"].weight is unused  # no gradient: no update, not even weight decay
    adam_state = opt.state[0]
    assert torch.count_nonzero(adam_state.mu["unused.weight"]) == 0
    assert not net["used"].weight.is_leaf


def test_meta_optimizer_needs_a_trainable_parameter():
    net = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=True"):
        tf.MetaOptimizer(net, tf.sgd(0.1))


def test_maml_reset_pattern_accumulates_the_sum_of_per_task_meta_gradients():
    make_tx = INNER["adam"]
    net = make_net()
    initial = trainable(net)
    lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
    opt = tf.MetaOptimizer(net, make_tx(lr))
    tasks = [make_task(1), make_task(2)]

    net_snapshot = tf.extract_state(net)
    opt_snapshot = tf.extract_state(opt)
    for x, y, xq, yq in tasks:
        inner_loop(net, opt, x, y)
        mse(net(xq), yq).backward()
        tf.recover_state(net, net_snapshot)
        tf.recover_state(opt, opt_snapshot)
    assert trainable(net) == initial  # the very same nn.Parameters are back
    assert net.h2.weight is net.h1.weight

    reference = {n: p.detach() for n, p in initial.items()}
    per_task = [
        functional_meta_grads(make_net(), make_tx, reference, lr.detach(), task) for task in tasks
    ]
    expected = tf.tree_add(per_task[0][0], per_task[1][0])
    assert_trees_close({n: p.grad for n, p in initial.items()}, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(lr.grad, per_task[0][1] + per_task[1][1], rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------- snapshots


def test_extract_by_reference_holds_the_tensors_and_survives_steps():
    net = make_net()
    opt = tf.MetaOptimizer(net, tf.sgd(0.1))
    snap = tf.extract_state(net)
    names = [n for n, _ in net.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in net.named_buffers()]
    assert sorted(snap) == sorted(names)  # tied weights under both names, buffers included
    assert snap["inp.weight"] is net.inp.weight and snap["shift"] is net.shift
    original = net.inp.weight
    x, y, _, _ = make_task(0)
    inner_loop(net, opt, x, y)
    assert net.inp.weight is not original and snap["inp.weight"] is original


def test_extract_by_copy_keeps_the_graph_and_deepcopy_or_detach_do_not():
    net = make_net()
    opt = tf.MetaOptimizer(net, tf.adam(0.1, eps_root=1e-8))
    x, y, _, _ = make_task(0)
    opt.step(mse(net(x), y))  # the module now holds non-leaf tensors
    adapted = net.inp.weight

    copy = tf.extract_state(net, by="copy")
    assert copy["inp.weight"] is not adapted and copy["inp.weight"].grad_fn is not None
    assert copy["h1.weight"] is copy["h2.weight"]  # ties kept
    (d,) = torch.autograd.grad(copy["inp.weight"].sum(), adapted)
    assert torch.equal(d, torch.ones_like(d))

    for snap in (
        tf.extract_state(net, by="deepcopy"),
        tf.extract_state(net, by="copy", detach=True),
    ):
        w = snap["inp.weight"]
        assert w.grad_fn is None and w.requires_grad and w.data_ptr() != adapted.data_ptr()
        torch.testing.assert_close(w, adapted.detach(), rtol=0, atol=0)
        frozen = snap["scale"]  # a Parameter stays one, with its requires_grad
        assert isinstance(frozen, nn.Parameter) and not frozen.requires_grad
        assert snap["h1.weight"] is snap["h2.weight"]

    detached = tf.extract_state(net, detach=True)["inp.weight"]  # by reference, detached
    assert detached.grad_fn is None and detached.data_ptr() == adapted.data_ptr()

    state_copy = tf.extract_state(opt, by="copy")
    assert state_copy[0].mu["inp.weight"].grad_fn is not None
    state_deep = tf.extract_state(opt, by="deepcopy")
    assert all(x.grad_fn is None for x in tf.tree_leaves(state_deep))
    assert_trees_close(state_deep, tf.tree_map(torch.Tensor.detach, opt.state), rtol=0, atol=0)


def test_recover_buffers_from_a_copy_every_time():
    net = make_net()
    snap = tf.extract_state(net, by="deepcopy")
    for _ in range(2):
        with torch.no_grad():
            net.shift.add_(1.0)  # what batch norm's forward does to its running statistics
        tf.recover_state(net, snap)
        torch.testing.assert_close(net.shift, torch.full((4,), 0.1, dtype=DTYPE))
    assert net.shift is not snap["shift"]


def test_recover_checks_names_and_structure():
    net = make_net()
    snap = tf.extract_state(net)
    with pytest.raises(ValueError, match=r"missing names \['shift'\]"):
        tf.recover_state(net, {k: v for k, v in snap.items() if k != "shift"})
    with pytest.raises(ValueError, match="unexpected names"):
        tf.recover_state(nn.Linear(2, 1), snap)
    opt = tf.MetaOptimizer(nn.Linear(2, 1), tf.adam(0.1))
    with pytest.raises(ValueError, match="recover_state"):
        tf.recover_state(opt, tf.adam(0.1).init({"w": torch.zeros(1)}))
    with pytest.raises(ValueError, match="by must be one of"):
        tf.extract_state(net, by="clone")
    with pytest.raises(TypeError, match=r"nn\.Module or a MetaOptimizer"):
        tf.extract_state({"w": torch.zeros(1)})


def test_detach_cuts_the_graph_back_to_the_meta_parameters():
    net = make_net()
    initial = trainable(net)
    lr = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
    opt = tf.MetaOptimizer(net, tf.adam(lr, eps_root=1e-8))
    x, y, xq, yq = make_task(0)
    inner_loop(net, opt, x, y)
    tf.detach_(net)
    tf.detach_(opt)
    assert all(
        p.grad_fn is None and p.requires_grad for p in net.parameters() if p is not net.scale
    )
    assert all(s.grad_fn is None for s in tf.tree_leaves(opt.state))
    assert net.h2.weight is net.h1.weight
    opt.step(mse(net(x), y))  # steps go on after the cut
    d = torch.autograd.grad(mse(net(xq), yq), [*initial.values(), lr], allow_unused=True)
    assert all(g is None for g in d[:-1]) and d[-1] is not None  # only the last step's lr


def test_state_dict_round_trip_through_torch_save():
    net = make_net()
    initial = trainable(net)
    opt = tf.MetaOptimizer(net, tf.adam(0.1, eps_root=1e-8))
    x, y, xq, yq = make_task(0)
    inner_loop(net, opt, x, y)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    other = tf.MetaOptimizer(make_net(), tf.adam(0.1, eps_root=1e-8))
    other.load_state_dict(loaded)
    assert_trees_close(other.state, tf.tree_map(torch.Tensor.detach, opt.state), rtol=0, atol=0)
    assert int(other.state[0].count) == INNER_STEPS
    # Loading into an optimizer whose state is on a graph leaves that graph usable.
    opt.load_state_dict(loaded)
    mse(net(xq), yq).backward()
    assert all(p.grad is not None for p in initial.values())
    with pytest.raises(ValueError, match="missing keys"):
        other.load_state_dict({})


# --------------------------------------------------------------------------- tree_stack


def test_tree_stack_round_trips_dicts_with_none_leaves_on_any_axis():
    members = [{"w": torch.randn(2, 3), "b": None, "c": [torch.randn(2), None]} for _ in range(4)]
    for axis in (0, 1, -1):
        stacked = tf.tree_stack(members, axis=axis)
        assert stacked["b"] is None and stacked["c"][1] is None
        assert stacked["w"].shape[axis] == 4
        back = tf.tree_unstack(stacked, axis=axis)
        assert len(back) == 4
        for got, want in zip(back, members):
            assert_trees_close(got, want, rtol=0, atol=0)


def test_tree_stack_round_trips_an_optimizer_state():
    states = []
    for i in range(3):
        params = {"w": torch.full((2,), float(i)), "b": torch.zeros(())}
        states.append(tf.adam(1e-3).init(params))
    stacked = tf.tree_stack(states)
    assert type(stacked[0]) is type(states[0][0]) and stacked[0].count.shape == (3,)
    for got, want in zip(tf.tree_unstack(stacked), states):
        assert_trees_close(got, want, rtol=0, atol=0)


def test_vmapped_update_over_stacked_states_equals_per_member_updates():
    tx = tf.chain(tf.clip_by_global_norm(1.0), tf.adam(1e-1))
    members = [
        {"w": torch.randn(3, dtype=DTYPE), "b": torch.randn((), dtype=DTYPE)} for _ in range(3)
    ]
    grads = [[tf.tree_map(lambda p: torch.randn_like(p) * 3, m) for m in members] for _ in range(2)]

    states = [tx.init(m) for m in members]
    params = list(members)
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            updates, states[i] = tx.update(g, states[i], params[i])
            params[i] = tf.apply_updates(params[i], updates)

    stacked_params = tf.tree_stack(members)
    stacked_state = tf.tree_stack([tx.init(m) for m in members])
    for step_grads in grads:
        updates, stacked_state = vmap(tx.update)(
            tf.tree_stack(step_grads), stacked_state, stacked_params
        )
        stacked_params = tf.apply_updates(stacked_params, updates)
    for got, want in zip(tf.tree_unstack(stacked_params), params):
        assert_trees_close(got, want)
    for got, want in zip(tf.tree_unstack(stacked_state), states):
        assert_trees_close(got, want)


def test_tree_stack_errors_name_the_path():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match=r"tree 1 vs tree 0.*\['b'\]\['d'\]"):
        tf.tree_stack([{"a": x, "b": {"c": x}}, {"a": x, "b": {"d": x}}])
    with pytest.raises(ValueError, match=r"\['b'\] is None in 1 of 2"):
        tf.tree_stack([{"a": x, "b": None}, {"a": x, "b": x}])
    with pytest.raises(ValueError, match=r"cannot stack the leaves at \['a'\]"):
        tf.tree_stack([{"a": x}, {"a": torch.zeros(3)}])
    with pytest.raises(ValueError, match="no trees"):
        tf.tree_stack([])
    with pytest.raises(
        ValueError, match=r"\['v'\] has size 2 along axis 0, where the leaf at \['u'\]"
    ):
        tf.tree_unstack({"u": torch.zeros(3), "v": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"\['u'\] has no axis 0"):
        tf.tree_unstack({"u": torch.zeros(())})
    with pytest.raises(ValueError, match="no tensor"):
        tf.tree_unstack({"u": None})
