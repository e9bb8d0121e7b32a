"""Smoke tests of the runnable examples: each one runs end to end in a subprocess."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn", reason="the examples need scikit-learn (pip install -e '.[test]')")
pytest.importorskip("matplotlib", reason="the examples need matplotlib (pip install -e '.[test]')")


def run_example(script: str, *args: str) -> str:
    # The package is imported from this checkout even when it is not installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_quickstart_quick_mode_trains_and_saves_the_plot(tmp_path):
    out = run_example("quickstart.py", "--quick", "--out", str(tmp_path))
    assert "epoch   2/2" in out
    assert "test accuracy (adamw + warmup-cosine):" in out
    png = tmp_path / "quickstart_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Two epochs are enough to be far above chance (10%) on the digits.
    accuracy = float(out.rsplit("test accuracy (adamw + warmup-cosine):", 1)[1].split("%")[0])
    assert accuracy > 80.0


def test_drop_in_resumes_bit_identically():
    out = run_example("drop_in.py", "--quick")
    assert "resumed run ends where the uninterrupted one did: True" in out


def _percent(out: str, label: str) -> float:
    return float(re.search(rf"{re.escape(label)}: ([\d.]+)%", out).group(1))


def test_ensemble_vmap_quick_trains_every_member_and_the_sweep():
    out = run_example("ensemble_vmap.py", "--quick")
    members = re.findall(r"member (\d+): test accuracy ([\d.]+)%", out)
    assert [int(i) for i, _ in members] == list(range(8))
    # Two epochs are far above chance (10%) on the digits, for every member and the ensemble.
    assert all(float(acc) > 60.0 for _, acc in members)
    assert _percent(out, "ensemble test accuracy") > 70.0
    # The clipping state holds one norm per member.
    assert len(out.split("last gradient norm per member:")[1].splitlines()[0].split()) == 8
    sweep = re.findall(r"lr (\S+)\s+final train loss ([\d.]+)", out)
    assert [float(lr) for lr, _ in sweep] == [3e-4, 1e-3, 3e-3, 1e-2]
    assert all(math.isfinite(float(loss)) for _, loss in sweep)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_maml_sine_quick_beats_the_no_meta_baseline(inner: str):
    out = run_example("maml_sine.py", "--quick", "--inner", inner)
    meta_losses = [float(x) for x in re.findall(r"\[maml\] meta-step .* meta-loss ([\d.]+)", out)]
    assert len(meta_losses) == 10 and all(math.isfinite(x) for x in meta_losses)
    assert meta_losses[-1] < meta_losses[0]
    maml, baseline = re.search(r"MAML ([\d.]+) vs no-meta baseline ([\d.]+)", out).groups()
    assert float(maml) < float(baseline)


def test_research_optimizers_quick_trains_all_five_and_saves_the_plot(tmp_path):
    out = run_example("research_optimizers.py", "--quick", "--out", str(tmp_path))
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|", out, re.MULTILINE)
    names = ["adamw", "muon", "soap", "schedule_free_adamw", "psgd_kron"]
    assert [name for name, _, _ in rows] == names
    # A dozen steps on a tiny model: every optimizer lowers the validation loss, and AdamW
    # gets below ln(256), the loss of uniform bytes.
    start = float(re.search(r"step +0  val: adamw ([\d.]+)", out).group(1))
    assert all(float(val) < start for _, _, val in rows)
    assert float(rows[0][2]) < math.log(256)
    png = tmp_path / "research_optimizers.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_gpt_train_quick_trains_and_resumes_exactly(tmp_path):
    """The whole step (`tf.TrainStep`, compiled) trains; stopped and resumed from its
    checkpoint, it ends where the uninterrupted run does, to the last digit."""
    straight = run_example("gpt_train.py", "--quick", "--out", str(tmp_path / "a"))
    run_example("gpt_train.py", "--quick", "--stop-after", "5", "--out", str(tmp_path / "b"))
    resumed = run_example("gpt_train.py", "--quick", "--resume", "--out", str(tmp_path / "b"))
    assert "resumed from" in resumed
    val = [re.search(r"validation loss: ([\d.]+)", out).group(1) for out in (straight, resumed)]
    assert val[0] == val[1]
    assert float(val[0]) < math.log(256) - 0.1  # it learned: below a uniform guess
    assert (tmp_path / "a" / "gpt_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_fsdp_train_quick_learns_and_resumes_from_its_checkpoint_exactly(tmp_path):
    # With 8-bit moments: the same recipe, wrapped, so the run covers both (the plain
    # adapter's DCP resume on another number of ranks is tests/test_dtensor.py's).
    out = run_example(
        "fsdp_train.py",
        "--quick",
        "--state-8bit",
        "--checkpoint-at",
        "12",
        "--checkpoint",
        str(tmp_path / "ck"),
    )
    assert "FSDP2 on 2 processes" in out
    assert "resumed run ends where the uninterrupted one did: True" in out
    assert _percent(out, "test accuracy") > 60.0
    bytes_per_parameter = float(out.split("optimizer state: ")[1].split(" bytes")[0])
    assert bytes_per_parameter < 2.5  # 8 in float32; the last layer's 1290 stay there
