"""`make demo` in its DEMO_FAST form: runs end to end, writes its outputs, and resumes."""

from __future__ import annotations

import json
import math
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
    summary = json.loads((demo / "metrics.json").read_text())
    stages, evaluation = summary["stages"], summary["evaluation"]
    assert 0 < stages["tokenizer"]["val/psnr"] < 60
    assert 0 <= stages["lam"]["val/nmi"] <= 1 and "val/token_acc" in stages["dynamics"]
    assert evaluation["dynamics/clips"] == 8  # the held-out evaluation rolls the world out
    for key in (
        "tokenizer/psnr",
        "tokenizer/ssim",
        "lam/nmi",
        "lam/probe_accuracy",
        "dynamics/delta_psnr_t4",
    ):
        assert math.isfinite(evaluation[key]), key
    report = (demo / "metrics.md").read_text()
    assert "| tokenizer | val/psnr |" in report and "ΔtPSNR (t=4)" in report
    assert list((demo / "tokenizer" / "logs" / "media").glob("*.gif"))
    assert (demo / "tokenizer" / "checkpoints" / "last.ckpt").exists()
    for name in ("play.gif", "actions.gif", "actions.mp4", "actions_strip.png"):
        assert (demo / name).stat().st_size > 0, name
    assert "python -m genie.play checkpoint=" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and "done already" in again.stdout
