"""Real clients of the adapter: PyTorch Lightning's Trainer and HF Accelerate."""

from __future__ import annotations

import pytest
import torch

import torchopt_fn as tf

torch_data = pytest.importorskip("torch.utils.data")


def _dataset() -> torch.utils.data.TensorDataset:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    return torch.utils.data.TensorDataset(x, y)


def _loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(_dataset(), batch_size=16, shuffle=False)


def _full_loss(model: torch.nn.Module) -> float:
    x, y = _dataset().tensors
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x), y).item()


def test_lightning_trainer_trains_and_resumes(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            opt = tf.Optimizer(
                self.parameters(), tf.chain(tf.clip_by_global_norm(1.0), tf.adamw(0.3))
            )
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def trainer(epochs: int) -> pl.Trainer:
        return pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            enable_checkpointing=False,
        )

    module = Module()
    start = _full_loss(module.net)
    t = trainer(3)
    t.fit(module, _loader())
    assert _full_loss(module.net) < 0.5 * start
    ckpt = tmp_path / "mid.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.3 * 0.9**3)

    # Resume for two more epochs and compare with an uninterrupted five-epoch run.
    resumed = Module()
    trainer(5).fit(resumed, _loader(), ckpt_path=ckpt)
    straight = Module()
    trainer(5).fit(straight, _loader())
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_accelerate_prepare_trains_and_resumes(tmp_path):
    accelerate = pytest.importorskip("accelerate")

    def run(epochs: int, load_from=None, save_to=None) -> torch.nn.Module:
        accelerator = accelerate.Accelerator(cpu=True)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = tf.Optimizer(model.parameters(), tf.adamw(0.3, weight_decay=1e-2))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        model, opt, loader, sched = accelerator.prepare(model, opt, _loader(), sched)
        if load_from is not None:
            accelerator.load_state(load_from)
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
                opt.step()
            sched.step()
        if save_to is not None:
            accelerator.save_state(save_to)
        return accelerator.unwrap_model(model)

    start = _full_loss(torch.nn.Linear(4, 1))
    straight = run(4)
    assert _full_loss(straight) < 0.5 * start
    run(2, save_to=tmp_path / "state")
    resumed = run(2, load_from=tmp_path / "state")
    for a, b in zip(resumed.parameters(), straight.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
