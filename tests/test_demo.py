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
    # a hang guard, not a speed test: ~4 min alone on a 2-core machine, ~6 on one thread beside make test's other worker
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
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
    machine = summary["machine"]  # the machine's speed beside the wall time
    assert len(machine["matmul_gflops"]) == 2 and all(r > 0 for r in machine["matmul_gflops"])
    assert machine["seconds"] > 0 and machine["threads"] >= 1 and "GFLOP/s at the start" in first.stdout
    report = (demo / "metrics.md").read_text()
    assert "| tokenizer | val/psnr |" in report and "ΔtPSNR (t=4)" in report
    assert list((demo / "tokenizer" / "logs" / "media").glob("*.gif"))
    assert (demo / "tokenizer" / "checkpoints" / "last.ckpt").exists()
    for name in ("play.gif", "actions.gif", "actions.mp4", "actions_strip.png"):
        assert (demo / name).stat().st_size > 0, name
    assert "python -m genie.play checkpoint=" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "done already" in again.stdout


def test_seed_sweep_table_mean_sd_min_and_targets_met(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "seed_sweep", Path(__file__).parents[1] / "tools" / "seed_sweep.py"
    )
    assert spec is not None and spec.loader is not None
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    for seed, (nmi, dt) in enumerate([(0.7, 1.5), (0.4, 0.5), (0.6, 1.1)]):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        evaluation = {
            "tokenizer/psnr": 28.5,
            "lam/codes_used": 6,
            "lam/nmi": nmi,
            "dynamics/delta_psnr_t4": dt,
        }
        machine = {"matmul_gflops": [100.0 + seed, 110.0 + seed]} if seed else {}  # seed 0: a run from before
        (folder / "metrics.json").write_text(
            json.dumps({"evaluation": evaluation, "stages": {}, "machine": machine})
        )
    assert sweep.main(["--seeds", "0", "1", "2", "--out", str(tmp_path), "--collect"]) == 0
    table = json.loads((tmp_path / "sweep.json").read_text())["table"]["metrics"]
    assert table["lam/nmi"]["mean"] == pytest.approx(17 / 30) and table["lam/nmi"]["min"] == 0.4
    assert table["lam/nmi"]["sd"] == pytest.approx(0.1527525, abs=1e-6) and table["lam/nmi"]["met"] == 2
    assert table["dynamics/delta_psnr_t4"]["met"] == 2 and table["tokenizer/psnr"]["met"] == 3
    # the machine's rate per run is the mean of its two probes; a run without them is left out of that row
    assert table["matmul_gflops"]["n"] == 2 and table["matmul_gflops"]["mean"] == pytest.approx(106.5)
    assert (
        "| lam/nmi | 0.567 | 0.153 | 0.400 | 0.700 | LAM NMI >= 0.5 | 2 of 3 |"
        in (tmp_path / "sweep.md").read_text()
    )
    assert sweep.main(["--seeds", "7", "--out", str(tmp_path / "none"), "--collect"]) == 1


def test_matmul_flops_is_the_product_rate_and_rejects_bad_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    import genie.machine as machine

    ticks = iter(range(100))  # each timed call takes one "second" of a fake clock
    monkeypatch.setattr(machine.time, "perf_counter", lambda: float(next(ticks)))
    assert machine.matmul_flops(n=8, repeat=3) == 2 * 8**3
    with pytest.raises(ValueError, match="repeat >= 1"):
        machine.matmul_flops(n=8, repeat=0)
