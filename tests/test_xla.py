"""The TPU path, run on this CPU: torch-xla's PJRT CPU device (``make test-xla``: .venv-xla holds torch 2.9.0 +
torch-xla 2.9.0 + this package; ``PJRT_DEVICE=CPU``). A tiny dynamics model trains through the real command,
the same Lightning module and the ``trainer=xla`` config (XLA FSDP, one unit per ST block, bf16 compute); its
loss decreases; the checkpoint holds full-shape weights and optimizer state that load in plain torch, and a
second run resumes from it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie.models.io import load_model
from test_distributed import DATA, stage_checkpoints

try:
    import torch_xla  # noqa: F401

    HAVE_XLA = True
except ImportError:
    HAVE_XLA = False

pytestmark = [
    pytest.mark.xla,
    pytest.mark.slow,
    pytest.mark.skipif(
        not HAVE_XLA, reason="torch-xla is not installed here (it pins torch): `make test-xla` runs these"
    ),
]


def xla_fit(tmp_path: Path, name: str, steps: int, *extra: str) -> tuple[list[float], dict, Path]:
    tok, lam = stage_checkpoints(tmp_path / "stages")
    run = tmp_path / name
    cmd = [
        sys.executable, "-m", "genie.train", "+experiment=dynamics_tiny", "trainer=xla",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", "callbacks.rich_progress_bar=null",
        f"model.tokenizer_ckpt={tok}", f"model.lam_ckpt={lam}", f"trainer.max_steps={steps}",
        "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "model.optim.warmup_steps=1",
        "evaluate=false", "data.batch_size=4", *DATA, *extra,
    ]  # fmt: skip
    env = {**os.environ, "PJRT_DEVICE": "CPU", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (run / "logs" / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return losses, json.loads((run / "metrics.json").read_text()), run / "checkpoints" / "last.ckpt"


def test_tiny_dynamics_trains_resumes_and_saves_full_checkpoints_under_xla_fsdp(tmp_path: Path) -> None:
    losses, metrics, ckpt = xla_fit(tmp_path, "xla", 6)
    assert metrics["global_step"] == 6 and len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) < sum(losses[:2]), losses

    # Full-shape weights under the unwrapped names: the checkpoint loads in plain torch, strictly.
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert not any("_fsdp" in k for k in state["state_dict"])
    model = load_model(ckpt, "dynamics")
    dyn = {f"model.{k}": v for k, v in model.state_dict().items()}
    for k, v in dyn.items():
        assert state["state_dict"][k].shape == v.shape, k
    # ... and full-shape optimizer state: Adam moments shaped like the parameters, matrices included.
    moments = [s["exp_avg"] for s in state["optimizer_states"][0]["state"].values()]
    assert any(m.ndim == 2 for m in moments)
    shapes = {tuple(v.shape) for k, v in dyn.items() if v.is_floating_point()}
    assert all(tuple(m.shape) in shapes for m in moments)

    # A second run resumes from it (weights before wrapping, optimizer state sliced back into shards).
    more, metrics2, _ = xla_fit(tmp_path, "resumed", 8, f"ckpt_path={ckpt}")
    assert metrics2["global_step"] == 8 and len(more) == 2
    assert all(torch.isfinite(torch.tensor(more)))
    assert max(more) < losses[0]


def test_xla_fsdp_refuses_a_stage_that_writes_its_codebook_in_place(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "genie.train", "+experiment=tokenizer_tiny", "trainer=xla",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
        "callbacks.rich_progress_bar=null", *DATA,
    ]  # fmt: skip
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert "would lose the in-place codebook updates of model.quantizer" in last
    assert "trainer=gpu" in last and "Traceback" not in proc.stderr
