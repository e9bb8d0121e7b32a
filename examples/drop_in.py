"""An ordinary `torch.nn` training loop with `torch.optim.AdamW` swapped for torchopt_fn.

The optimizer is `torchopt_fn.Optimizer(model.parameters(), chain(clip_by_global_norm(1.0),
adamw(...)))`: a real `torch.optim.Optimizer`, so the `OneCycleLR` scheduler (which also cycles
Adam's ``betas``), `state_dict()` checkpoints loaded with ``weights_only=True`` and resuming all
work unchanged. The script trains on scikit-learn's digits, saves a checkpoint half-way, resumes
from it in a fresh model/optimizer/scheduler, and checks the resumed run ends exactly where an
uninterrupted one does.

Run: ``python examples/drop_in.py`` (add ``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import io

import torch
from sklearn.datasets import load_digits

import torchopt_fn as tf


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=gen)
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def make(total_steps: int):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 10))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") else decay).append(p)
    # Was: torch.optim.AdamW([...], lr=1e-3, weight_decay=1e-2)
    opt = tf.Optimizer(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(1e-3, weight_decay=1e-2)),
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=total_steps)
    return model, opt, sched


def train(model, opt, sched, x, y, steps: range, batch: int = 100) -> float:
    loss = torch.tensor(0.0)
    for step in steps:
        i = (step * batch) % len(x)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i : i + batch]), y[i : i + batch])
        loss.backward()
        opt.step()
        sched.step()
    return loss.item()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run for smoke tests")
    args = parser.parse_args()
    torch.set_num_threads(1)
    total = 60 if args.quick else 600
    half = total // 2
    x, y, x_test, y_test = data()

    model, opt, sched = make(total)
    loss = train(model, opt, sched, x, y, range(half))
    print(
        f"step {half}: loss {loss:.4f}, lr {opt.param_groups[0]['lr']:.2e}, "
        f"betas {opt.param_groups[0]['betas']}"
    )
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict()}, buffer)  # fmt: skip
    loss = train(model, opt, sched, x, y, range(half, total))
    straight = [p.detach().clone() for p in model.parameters()]
    print(f"step {total}: loss {loss:.4f}, test accuracy {accuracy(model, x_test, y_test):.2%}")

    # Resume from the checkpoint in fresh objects, as after a restart.
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    model, opt, sched = make(total)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    sched.load_state_dict(checkpoint["sched"])
    train(model, opt, sched, x, y, range(half, total))
    same = all(torch.equal(a, b) for a, b in zip(model.parameters(), straight))
    print(f"resumed run ends where the uninterrupted one did: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
