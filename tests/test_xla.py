"""The TPU path, run on this CPU: torch-xla's PJRT CPU device (``make test-xla``: .venv-xla holds torch 2.9.0 +
torch-xla 2.9.0 + this package; ``PJRT_DEVICE=CPU``). A tiny dynamics model trains through the real command,
the same Lightning module and the ``trainer=xla`` config (XLA FSDP, one unit per ST block, bf16 compute); its
loss decreases; the checkpoint holds full-shape weights and optimizer state that load in plain torch, and a
second run resumes from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie.models.io import load_model
from test_distributed import DATA, fit

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


XLA = ["trainer=xla", "data.batch_size=4", "trainer.limit_val_batches=0"]  # (no mid-run generation: compiles)
PJRT_CPU = {"PJRT_DEVICE": "CPU"}


def test_tiny_dynamics_trains_resumes_and_saves_full_checkpoints_under_xla_fsdp(tmp_path: Path) -> None:
    losses, metrics = fit(tmp_path, "xla", *XLA, env=PJRT_CPU)
    ckpt = tmp_path / "xla" / "checkpoints" / "last.ckpt"
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
    more, metrics2 = fit(tmp_path, "resumed", *XLA, "trainer.max_steps=8", f"ckpt_path={ckpt}", env=PJRT_CPU)
    assert metrics2["global_step"] == 8 and len(more) == 2
    assert all(torch.isfinite(torch.tensor(more)))
    assert max(more) < losses[0]


def test_xla_fsdp_refuses_a_stage_that_writes_its_codebook_in_place(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "genie.train", "+experiment=tokenizer_tiny", "trainer=xla",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
        "callbacks.rich_progress_bar=null", *DATA,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **PJRT_CPU})
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = (proc.stdout + proc.stderr).strip().splitlines()[-1]
    assert "would lose the in-place codebook updates of model.quantizer" in last
    assert "trainer=gpu" in last and "Traceback" not in proc.stderr
