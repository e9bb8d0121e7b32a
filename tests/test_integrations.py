"""Real clients of the adapter: PyTorch Lightning's Trainer, HF Accelerate and HF Trainer."""

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


def test_hf_trainer_trains_and_resumes_from_its_checkpoint(tmp_path):
    """``Trainer(optimizers=(Optimizer(...), scheduler))`` on a tiny GPT-2 built from a config
    (no download): its checkpoint holds our state in torch's format, and resuming from it
    gives exactly the uninterrupted run."""
    transformers = pytest.importorskip("transformers")

    class Tokens(torch.utils.data.Dataset):
        def __init__(self):
            self.ids = torch.randint(0, 32, (32, 8), generator=torch.Generator().manual_seed(0))

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    def run(output_dir, resume_from=None):
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=32,
            n_positions=8,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(config)
        opt = tf.Optimizer(model.parameters(), tf.from_torch("AdamW", lr=1e-2, weight_decay=0.01))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
        args = transformers.TrainingArguments(
            output_dir=str(output_dir),
            max_steps=6,
            per_device_train_batch_size=4,
            save_strategy="steps",
            save_steps=3,
            report_to=[],
            use_cpu=True,
            logging_strategy="no",
            seed=0,
            disable_tqdm=True,
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=Tokens(), optimizers=(opt, sched)
        )
        result = trainer.train(resume_from_checkpoint=resume_from)
        return model, result.training_loss

    straight, loss = run(tmp_path / "straight")
    assert loss < 3.4  # below log(32), the loss of a uniform guess
    saved = torch.load(tmp_path / "straight" / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert sorted(saved["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    assert saved["param_groups"][0]["lr"] == pytest.approx(1e-2 / 4)  # LambdaLR at step 3
    resumed, _ = run(tmp_path / "resumed", tmp_path / "straight" / "checkpoint-3")
    for a, b in zip(resumed.parameters(), straight.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
