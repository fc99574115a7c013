"""Never lose a run: SIGKILL mid-training then the same command resumes; truncated checkpoints fall back to the
previous one; non-finite losses stop with the step number or are skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from genie.lightning.callbacks import NonFiniteGuard
from genie.train import checkpoint_step, find_resume_checkpoint
from test_train import TINY_DATA

COMMAND = [
    "+experiment=tokenizer_tiny",
    *TINY_DATA,
    "trainer.max_steps=12",
    "trainer.val_check_interval=12",
    "evaluate=false",
    "trainer.limit_val_batches=1",
    "callbacks.model_checkpoint.every_n_train_steps=5",
    "callbacks.rich_progress_bar=null",
]


def launch(cwd: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "genie.train", "paths.data_dir=data", *COMMAND, *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_checkpoint(cwd: Path, proc: subprocess.Popen[str], min_step: int) -> Path:
    """SIGKILL the run once it has written a step checkpoint at or past ``min_step``; returns the run dir."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        steps = [p for p in cwd.glob("outputs/tokenizer_tiny/*/checkpoints/step*.ckpt")]
        last = [p.with_name("last.ckpt") for p in steps if p.with_name("last.ckpt").exists()]
        if last and any(int(p.stem[4:]) >= min_step for p in steps):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return steps[0].parents[1]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no checkpoint written in time")


@pytest.mark.slow
def test_sigkill_then_same_command_resumes(tmp_path: Path) -> None:
    proc = launch(tmp_path)
    killed_run = kill_after_checkpoint(tmp_path, proc, min_step=5)
    assert proc.returncode == -signal.SIGKILL and not (killed_run / "metrics.json").exists()
    found, step, notes = find_resume_checkpoint(killed_run, [*COMMAND, "paths.data_dir=data"])
    assert found is not None and step >= 5 and not notes

    again = launch(tmp_path)  # the same command
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "resuming an unfinished run of this command" in out and f"(step {step})" in out
    runs = [p for p in (tmp_path / "outputs" / "tokenizer_tiny").iterdir() if (p / "metrics.json").exists()]
    assert len(runs) == 1
    assert json.loads((runs[0] / "metrics.json").read_text())["global_step"] == 12
    # the killed run was taken over and the new one finished: the next identical command starts afresh
    assert runs[0] == killed_run or (killed_run / ".resumed_by").read_text() == str(runs[0])
    assert find_resume_checkpoint(runs[0], [*COMMAND, "paths.data_dir=data"])[0] is None


@pytest.mark.slow
def test_truncated_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    proc = launch(tmp_path, "seed=3")
    run = kill_after_checkpoint(tmp_path, proc, min_step=5)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3])  # a crash mid-write on a filesystem without atomic rename
    os.utime(last, None)
    with pytest.raises(ValueError, match="unreadable"):
        checkpoint_step(last)
    found, step, notes = find_resume_checkpoint(run, [*COMMAND, "paths.data_dir=data", "seed=3"])
    assert found is not None and found.name.startswith("step") and step >= 5
    assert len(notes) == 1 and "last.ckpt is unreadable" in notes[0]
    bad = subprocess.run(
        [sys.executable, "-m", "genie.train", "paths.data_dir=data", *COMMAND, f"ckpt_path={last}", "resume=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode != 0 and "is unreadable" in bad.stderr and "Traceback" not in bad.stderr


class Tiny(L.LightningModule):
    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.nan_at = nan_at
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.seen.append(self.layer.weight.detach().clone())
        loss = self.layer(batch).pow(2).mean()
        return loss * float("nan") if self.global_step == self.nan_at else loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)


def fit(module: Tiny, guard: NonFiniteGuard, steps: int = 6) -> None:
    L.Trainer(
        max_steps=steps, callbacks=[guard], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    ).fit(module)  # fmt: skip


def test_nonfinite_loss_stops_with_step_or_is_skipped() -> None:
    with pytest.raises(ValueError, match="non-finite loss at step 3"):
        fit(Tiny(nan_at=3), NonFiniteGuard("stop"))
    module, guard = Tiny(nan_at=3), NonFiniteGuard("skip")
    fit(module, guard)
    assert guard.skipped == 1 and torch.isfinite(module.layer.weight).all()
    assert torch.equal(module.seen[3], module.seen[4])  # the NaN step changed nothing
    assert not torch.equal(module.seen[4], module.seen[5])  # training went on
    with pytest.raises(ValueError, match="policy"):
        NonFiniteGuard("ignore")
