"""The TPU path, run on this CPU: torch-xla's PJRT CPU device (``make test-xla``: .venv-xla holds torch 2.9.0 +
torch-xla 2.9.0 + this package; ``PJRT_DEVICE=CPU``). A tiny dynamics model trains through the real command,
the same Lightning module and the ``trainer=xla`` config (XLA FSDP, one unit per ST block, bf16 compute); its
loss decreases; the checkpoint holds full-shape weights and optimizer state that load in plain torch, and a
second run resumes from it. The tokenizer and LAM, which XLA FSDP refuses, train under ``trainer=xla_ddp``
(data parallel, bf16 autocast), each training step one graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie.models.io import load_model
from test_distributed import DATA, fit, train_losses

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
    assert "trainer=xla_ddp" in last and "trainer=gpu" in last and "Traceback" not in proc.stderr


def train_vq_stage(
    tmp_path: Path, experiment: str, name: str, *extra: str, trainer: str = "xla_ddp"
) -> tuple[list[float], dict, str]:
    """``experiment`` through the real command under ``trainer=xla_ddp`` (the PJRT CPU device) or ``trainer``,
    6 steps, with torch-xla's compilation report on: (losses, metrics.json, the report)."""
    run = tmp_path / name
    cmd = [
        sys.executable, "-m", "genie.train", f"+experiment={experiment}", f"trainer={trainer}",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", "callbacks.rich_progress_bar=null",
        "trainer.max_steps=6", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "evaluate=false",
        "model.model.vq.dead_code_steps=2", "data.batch_size=3", *DATA, *extra,
    ]  # fmt: skip
    env = {**os.environ, **PJRT_CPU, "PT_XLA_DEBUG_LEVEL": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return train_losses(run), json.loads((run / "metrics.json").read_text()), proc.stdout + proc.stderr


def step_graphs(report: str) -> int:
    """How many training-step graphs torch-xla compiled (a step runs up to the NaN guard's sync before the
    optimizer step); asserts that no model code read a value mid-step (which cuts the step's graph in two).
    The NaN guard's own read of its finite flag, after that sync, is the one read allowed."""
    causes = report.split("Compilation Cause")[1:]
    reads = [c for c in causes if "access tensor value" in c.split("Graph Info")[0]]
    ours = [c for c in reads if "src/genie/" in c and "genie/lightning/callbacks.py" not in c]
    assert not ours, ours[0][:2000]
    return sum("user torch_xla.sync" in c and "on_before_optimizer_step" in c for c in causes)


@pytest.mark.parametrize("experiment", ["tokenizer_tiny", "lam_tiny"])
def test_vq_stages_train_data_parallel_under_xla(tmp_path: Path, experiment: str) -> None:
    """The tokenizer and LAM (VQ codebooks written in place: data init, dead-code restarts every 2 steps here,
    EMA for the tokenizer) train under ``trainer=xla_ddp`` with bf16 autocast: one graph per training step,
    compiled for the first step (the codebook's data init) and once more for the rest - random frame windows
    and restarts included; Adam stepped every parameter 6 times; the checkpoint loads in plain torch, and the
    tokenizer's run resumes from it. The tokenizer's loss falls within the 6 steps. The LAM's cannot be seen to:
    it predicts the change from the last frame, so its loss starts at the batch's motion energy and 6 warm-up
    steps move it less than the next batch does - instead its first step's loss matches the plain CPU
    trainer's on the same seed (same init, batch and codebook init; bf16 autocast against fp32)."""
    losses, metrics, report = train_vq_stage(tmp_path, experiment, "run")
    assert metrics["global_step"] == 6 and len(losses) == 6
    assert all(torch.isfinite(torch.tensor(losses)))
    assert step_graphs(report) == 2, report[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    adam = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer_states"][0]["state"]
    assert {float(s["step"]) for s in adam.values()} == {6.0}
    stage = experiment.split("_")[0]
    if stage == "tokenizer":
        assert sum(losses[-2:]) < sum(losses[:2]), losses
    else:
        cpu, _, _ = train_vq_stage(tmp_path, experiment, "cpu", "trainer.max_steps=1", trainer="cpu")
        assert losses[0] == pytest.approx(cpu[0], rel=0.02), (losses[0], cpu[0])
    assert bool(load_model(ckpt, stage).quantizer.initialized)  # (loads in plain torch)
    if stage == "tokenizer":
        resume = ("trainer.max_steps=8", f"ckpt_path={ckpt}")
        more, metrics2, _ = train_vq_stage(tmp_path, experiment, "resumed", *resume)
        assert metrics2["global_step"] == 8 and len(more) == 2
        assert all(torch.isfinite(torch.tensor(more)))


def test_xla_ddp_strategy_computes_under_bf16_autocast() -> None:
    import torch_xla.core.xla_model as xm

    from genie.distributed import GenieXLAStrategy, XLAAutocast, xla_ddp_strategy

    strategy = xla_ddp_strategy()
    assert isinstance(strategy, GenieXLAStrategy) and isinstance(strategy.precision_plugin, XLAAutocast)
    a = torch.randn(4, 4, device=xm.xla_device())
    with strategy.precision_plugin.forward_context():
        assert (a @ a).dtype == torch.bfloat16
    with xla_ddp_strategy("fp32").precision_plugin.forward_context():
        assert (a @ a).dtype == torch.float32
    with pytest.raises(ValueError, match="compute_dtype must be one of"):
        xla_ddp_strategy("fp16")
