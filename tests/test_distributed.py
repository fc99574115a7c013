"""Scale-out on CPU: 2-process (gloo) DDP and FSDP fits of the tiny dynamics model through the real command,
compared with one process; FSDP checkpoints load in one process; the policies and trainer configs."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie.distributed import (
    apply_policies,
    checkpoint_activations,
    fsdp_strategy,
    is_checkpointed,
    mixed_precision_policy,
)
from genie.memory import saved_bytes
from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.io import load_model
from genie.models.lam import LAMConfig, LatentActionModel
from genie.models.tokenizer import TokenizerConfig, VideoTokenizer

ST = {"dim": 32, "depth": 1, "num_heads": 2}
DATA = [
    "data.synthetic.train_clips=32",
    "data.synthetic.val_clips=8",
    "data.synthetic.clips_per_shard=4",  # 8 train shards: each of 2 ranks reads its own 4
    "data.num_workers=0",
    "data.val_batch_size=2",
]


def stage_checkpoints(root: Path) -> tuple[Path, Path]:
    """Small tokenizer and LAM checkpoints in genie.train's layout (64x64 frames, 4x4 token grid)."""
    root.mkdir(parents=True, exist_ok=True)
    tok = VideoTokenizer(
        TokenizerConfig(image_size=(64, 64), patch=16, num_codes=64, code_dim=8, encoder=ST, decoder=ST)
    )
    lam = LatentActionModel(
        LAMConfig(image_size=(64, 64), patch=16, num_actions=4, latent_dim=8, encoder=ST, decoder=ST)
    )
    paths = []
    for stage, model in (("tokenizer", tok), ("lam", lam)):
        state = {f"model.{k}": v for k, v in model.state_dict().items()}
        hp = {"stage": stage, "model": dataclasses.asdict(model.cfg)}
        path = root / f"{stage}.ckpt"
        torch.save({"state_dict": state, "hyper_parameters": hp, "global_step": 0}, path)
        paths.append(path)
    return paths[0], paths[1]


def fit(
    tmp_path: Path, name: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[list[float], dict]:
    tok, lam = stage_checkpoints(tmp_path / "stages")
    run = tmp_path / name
    cmd = [
        sys.executable, "-m", "genie.train", "+experiment=dynamics_tiny", f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run}", "callbacks.rich_progress_bar=null", f"model.tokenizer_ckpt={tok}",
        f"model.lam_ckpt={lam}", "model.sampling.steps=2", "model.eval_batches=1", "trainer.max_steps=6",
        "trainer.val_check_interval=6", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
        "model.optim.warmup_steps=1", "evaluate=false", *DATA, *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return train_losses(run), json.loads((run / "metrics.json").read_text())


def train_losses(run: Path) -> list[float]:
    """The ``train/loss`` of every logged step of a genie.train run in ``run``."""
    with (run / "logs" / "metrics.csv").open() as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


CPU2 = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "data.batch_size=2"]


@pytest.mark.slow
def test_ddp_and_fsdp_two_processes_match_one(tmp_path: Path) -> None:
    # Without the copy head: its loss at initialisation depends on how many of a batch's tokens repeat the
    # previous frame, which differs between the 1 x 4 and 2 x 2 batches; the plain model's does not.
    plain = "model.model.aids.copy_radius=0"
    one, _ = fit(tmp_path, "single", "data.batch_size=4", plain)
    ddp, _ = fit(tmp_path, "ddp", "trainer=ddp", plain, *CPU2)
    fsdp, metrics = fit(
        tmp_path, "fsdp", "trainer=fsdp", "trainer.strategy.mixed_precision=fp32", plain, *CPU2
    )
    assert len(one) == len(ddp) == len(fsdp) == 6 and metrics["global_step"] == 6
    # same init and global batch size (2 ranks x 2 vs 1 x 4) but other clips and mask draws per step: the
    # first loss is the same network on similar data, and the runs learn alike
    mean = sum(one) / len(one)
    for run in (ddp, fsdp):
        assert abs(run[0] - one[0]) / one[0] < 0.1
        assert abs(sum(run) / len(run) - mean) / mean < 0.15
        assert sum(run[-3:]) < sum(run[:3])
    # the FSDP run's checkpoint ("full" state dict) loads in one process
    model = load_model(tmp_path / "fsdp" / "checkpoints" / "last.ckpt", "dynamics")
    assert isinstance(model, DynamicsModel)


def _vq_replica(rank: int, port: int, out: Path) -> None:
    import torch.distributed as dist

    from genie.nn import VectorQuantizer

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same initial codebook on both ranks (DDP broadcasts it so)
    vq = VectorQuantizer(32, 4, use_ema=True, ema_decay=0.9, dead_code_steps=2, init_from_data=False)
    vq.codebook.data[16:] += 100.0  # half the codes far from the data: dead, restarted after 2 steps
    vq.ema_sum[16:] += 100.0
    vq.train()
    torch.manual_seed(1 + rank)  # each rank its own data and its own random draws
    for _ in range(5):
        vq(torch.randn(128, 4) * (1 + rank) + rank)
    torch.save(vq.state_dict(), out / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_vq_replicas_keep_one_codebook_under_torch_distributed(tmp_path: Path) -> None:
    """Two gloo processes quantise different data: usage and EMA statistics are summed over the ranks and
    the restarted codes are rank 0's draws, so both replicas end
    with the same codebook and statistics."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_vq_replica, args=(port, tmp_path), nprocs=2)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("codebook", "ema_sum", "ema_count", "unused_steps"):
        assert torch.equal(a[key], b[key]), key
    assert a["codebook"][16:].abs().max() < 20  # the dead codes were restarted onto the data


def test_policies_reach_every_trainable_st_block() -> None:
    tok = VideoTokenizer(
        TokenizerConfig(image_size=(16, 16), patch=4, num_codes=8, code_dim=4, encoder=ST, decoder=ST)
    )
    dyn = DynamicsModel(
        DynamicsConfig(num_codes=8, grid=(4, 4), num_actions=4, transformer={**ST, "depth": 3})
    )
    tok.requires_grad_(False)  # frozen, as in the dynamics stage
    both = torch.nn.ModuleDict({"tokenizer": tok, "dynamics": dyn})
    state = {k: v.clone() for k, v in both.state_dict().items()}
    assert apply_policies(both, activation_checkpointing=True) == 3
    assert all(is_checkpointed(b) for b in dyn.transformer.blocks)
    assert not any(is_checkpointed(b) for b in tok.modules())
    assert both.state_dict().keys() == state.keys()  # names unchanged: checkpoints load either way
    # checkpointing is active: backward keeps less
    x0 = torch.randint(0, 8, (2, 3, 4, 4))
    a0 = torch.zeros(2, 2, dtype=torch.long)
    dyn.train()

    def kept(on: bool) -> int:
        checkpoint_activations(dyn, on)
        return saved_bytes(lambda: dyn(x0, a0, torch.rand(2, 3, 16) < 0.5).float().pow(2).mean().backward())

    assert kept(True) < kept(False)
    # checkpointed blocks give the same gradients as plain ones
    x = torch.randint(0, 8, (2, 3, 4, 4))
    a = torch.zeros(2, 2, dtype=torch.long)
    mask = torch.rand(2, 3, 16) < 0.5
    dyn.train()

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        checkpoint_activations(dyn, checkpointing)
        dyn.zero_grad()
        dyn(x, a, mask).float().pow(2).mean().backward()
        return [p.grad.clone() for p in dyn.parameters() if p.grad is not None]

    for g1, g2 in zip(grads(True), grads(False), strict=True):
        assert torch.equal(g1, g2)  # recomputation is exact


def test_fsdp_strategy_options() -> None:
    s = fsdp_strategy(sharding="HYBRID_SHARD", mixed_precision="bf16")
    mp = s.mixed_precision
    assert mp.param_dtype == torch.bfloat16 and mp.reduce_dtype == torch.float32
    assert mixed_precision_policy("fp32") is None
    with pytest.raises(ValueError, match="sharding"):
        fsdp_strategy(sharding="ZERO3")
    with pytest.raises(ValueError, match="mixed_precision"):
        mixed_precision_policy("fp8")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
def test_fsdp_bf16_on_gpu(tmp_path: Path) -> None:
    _, metrics = fit(
        tmp_path,
        "fsdp_gpu",
        "trainer=fsdp",
        "trainer.devices=1",
        "data.batch_size=4",
        "callbacks.scale.activation_checkpointing=true",
    )
    assert metrics["global_step"] == 6


def test_memory_plan_takes_the_experiments_batch_per_device() -> None:
    from dataclasses import replace

    from genie.memory import MemoryPlan, report

    p = MemoryPlan("x", "dynamics", 10, 16, 4, 2, 2, 1, batch_size=24, global_batch_size=48, accumulate=2)
    assert [p.device_batch(n) for n in (1, 2, 8)] == [24, 12, 3]
    assert replace(p, global_batch_size=None).device_batch(8) == 24  # a per-device batch stays as it is
    with pytest.raises(ValueError, match="does not split over 5 devices x 2"):  # as training would say
        p.device_batch(5)
    assert "batch 12 (the experiment's: 48 / (2 devices x 2 micro-batches))" in report(p, devices=2)
    assert "per device at batch 5: " in report(p, devices=2, batch=5)


def test_memory_plan_counts_what_autograd_saves(monkeypatch: pytest.MonkeyPatch) -> None:
    import genie.nn.attention as attention
    from genie.config import compose_config
    from genie.memory import plan, report, saved_bytes
    from genie.params import build

    cfg = compose_config(["+experiment=lam_tiny"])
    stage, meta_model, _ = build(cfg)
    p = plan(["+experiment=lam_tiny"])
    assert p.params == sum(q.numel() for q in meta_model.parameters())
    assert 0 < p.checkpointed_fp32 < p.activations_fp32 and p.activations_bf16 < p.activations_fp32
    # the meta-device count equals the bytes saved by a real forward on CPU
    from genie.models.io import BUILDERS
    from genie.nn import STTransformer

    real = BUILDERS[stage][1](meta_model.cfg).eval()
    for m in real.modules():
        if isinstance(m, STTransformer):
            m.train()
    video = torch.rand(1, p.frames, 3, 64, 64)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # every attention through SDPA (the CPU otherwise takes short sequences as explicit products), as on meta
    monkeypatch.setattr(attention, "CPU_EXPLICIT_MAX_KEYS", 0)
    with sdpa_kernel(SDPBackend.MATH):  # the reference kernel, as on the meta device
        assert saved_bytes(lambda: real(video).loss.backward()) == p.activations_fp32
    fused = saved_bytes(lambda: real(video).loss.backward())  # CPU's fused attention saves less
    assert fused <= p.activations_fp32
    text = report(p, devices=8, batch=4)
    assert "FULL_SHARD over 8 devices" in text and "checkpointed" in text


def test_peak_tensor_bytes_follows_allocations_until_freed() -> None:
    from genie.memory import peak_tensor_bytes

    mib = 2**20

    def alloc_free_alloc() -> None:
        a = torch.empty(mib // 4)  # 1 MiB
        b = torch.empty(mib // 2)  # 2 MiB: 3 held
        del a
        c = torch.empty(mib // 4)  # 1 MiB into the freed room: still 3
        del b, c

    assert peak_tensor_bytes(alloc_free_alloc) == 3 * mib

    def views_and_in_place() -> None:  # one new tensor; its views and in-place results are no new memory
        a = torch.ones(mib // 4)
        a.add_(1).mul_(2)
        a.view(-1, 4).t()
        a[:10].zero_()

    assert peak_tensor_bytes(views_and_in_place) == mib
    w = torch.randn(256, 256, requires_grad=True)  # existing tensors never count
    x = torch.randn(1024, 256)

    def train_step() -> None:
        # forward: x @ w (1 MiB) and relu's output (1 MiB, saved for backward) at once; backward: relu's
        # gradient (1 MiB) beside its saved output, which autograd frees before w's gradient (0.25) is made
        (x @ w).relu().sum().backward()

    assert peak_tensor_bytes(train_step) == 2 * mib + 8  # (+ the loss and its gradient: a float each)

    def keeping_the_output() -> None:  # the same, holding relu's output: now it is there for w's gradient
        y = (x @ w).relu()
        y.sum().backward()

    assert peak_tensor_bytes(keeping_the_output) == 2 * mib + mib // 4 + 8
    with pytest.raises(ValueError, match="not meta ones"):
        peak_tensor_bytes(lambda: torch.ones(4, device="meta") + 1)


@pytest.mark.slow
def test_tiny_scaling_sweep_collects_csv_and_plot(tmp_path: Path) -> None:
    tok, _ = stage_checkpoints(tmp_path / "stages")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable, "-m", "genie.train", "-m", "+experiment=dynamics_tiny", "+hparams_search=scaling_tiny",
        f"paths.data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", f"model.tokenizer_ckpt={tok}",
        "callbacks.rich_progress_bar=null", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1", "model.sampling.steps=2", "model.eval_batches=1", *DATA, "data.batch_size=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tool = Path(__file__).resolve().parents[1] / "tools" / "collect_sweep.py"
    out = subprocess.run(
        [sys.executable, str(tool), str(tmp_path / "sweep")], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    with (tmp_path / "sweep" / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["loss"] and r["loss_key"] == "val/loss" for r in rows)
    params = [int(r["params"]) for r in rows]
    assert params == sorted(params) and len(set(params)) == 3  # dims 32, 64, 128
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 1000
