"""`make demo` in its DEMO_FAST form: runs end to end, writes its outputs, and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_fast_runs_and_resumes(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_FAST": "1", "DEMO_DIR": str(tmp_path / "demo"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "genie.demo"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    demo = tmp_path / "demo"
    metrics = json.loads((demo / "metrics.json").read_text())
    assert 0 < metrics["tokenizer"]["val/psnr"] < 60
    assert "| tokenizer | val/psnr |" in (demo / "metrics.md").read_text()
    assert list((demo / "tokenizer" / "logs" / "media").glob("*.gif"))
    assert (demo / "tokenizer" / "checkpoints" / "last.ckpt").exists()
    assert 0 <= metrics["lam"]["val/nmi"] <= 1 and "val/delta_psnr_t4" in metrics["dynamics"]
    assert (demo / "play.gif").stat().st_size > 0
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "done already" in again.stdout
