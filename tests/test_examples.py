"""Smoke tests of the runnable examples: each one runs end to end in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("sklearn", reason="the examples need scikit-learn (pip install -e '.[test]')")
pytest.importorskip("matplotlib", reason="the examples need matplotlib (pip install -e '.[test]')")


def run_example(script: str, *args: str) -> str:
    env = {**os.environ, "MPLBACKEND": "Agg"}
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
