"""The Hydra training entry, end to end in a subprocess; the Lightning module on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from genie.lightning import TokenizerModule
from genie.lightning.callbacks import ProgressBar
from genie.lightning.common import OptimConfig, as_dataclass, build_optimizer, lr_factor

TINY_DATA = [
    "data.synthetic.train_clips=24",
    "data.synthetic.val_clips=8",
    "data.synthetic.clips_per_shard=8",
    "data.num_workers=0",
    "data.batch_size=2",
    "data.val_batch_size=2",
]


def run_train(
    tmp_path: Path, *overrides: str, run_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "genie.train",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.run.dir={run_dir or tmp_path / 'run'}",
        "callbacks.rich_progress_bar=null",
        *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)


@pytest.mark.slow
def test_train_tokenizer_tiny_two_steps_writes_checkpoint(tmp_path: Path) -> None:
    proc = run_train(
        tmp_path,
        "+experiment=tokenizer_tiny",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "final_val_batches=1",
        *TINY_DATA,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert 0 < metrics["val/psnr"] < 60 and 0 <= metrics["val/ssim"] <= 1
    assert "[genie]" in proc.stdout and "val/psnr" in proc.stdout
    assert list((run / "logs" / "media").glob("recon_step*.gif"))
    # the checkpoint holds plain data only: safe loading works
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2


TWO_STEPS = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]


@pytest.mark.slow
def test_tiny_lam_then_dynamics_two_steps_each(tmp_path: Path) -> None:
    """Each tiny experiment fits for 2 steps in a subprocess; the dynamics run reads the other two's checkpoints."""
    runs = {}
    for name in ("tokenizer_tiny", "lam_tiny"):
        run = tmp_path / name
        proc = run_train(tmp_path, f"+experiment={name}", *TWO_STEPS, *TINY_DATA, run_dir=run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # nothing a user cannot act on: Lightning's product tip, its own pytree FutureWarning
        assert "Tip:" not in proc.stdout + proc.stderr and "LeafSpec" not in proc.stderr
        runs[name] = run / "checkpoints" / "last.ckpt"
    lam_metrics = json.loads((tmp_path / "lam_tiny" / "metrics.json").read_text())
    assert 0 <= lam_metrics["val/nmi"] <= 1 and "val/action_codes_used" in lam_metrics
    run = tmp_path / "dynamics_tiny"
    proc = run_train(
        tmp_path,
        "+experiment=dynamics_tiny",
        f"model.tokenizer_ckpt={runs['tokenizer_tiny']}",
        f"model.lam_ckpt={runs['lam_tiny']}",
        "model.sampling.steps=2",
        *TWO_STEPS,
        *TINY_DATA,
        run_dir=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the frozen tokenizer and LAM are no cause for Lightning's warning of modules in eval mode
    assert "in eval mode" not in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and "val/delta_psnr_t4" in metrics and "val/token_acc" in metrics
    assert list((run / "logs" / "media").glob("rollout_step*.gif"))
    # the same stage on pretokenized clips (tools/pretokenize.py), validated on the pixel clips
    tokens = tmp_path / "tokens"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "tools" / "pretokenize.py"), "--shards", str(tmp_path / "data" / "synthetic-64" / "train-*.tar"),
         "--out", str(tokens), "--tokenizer", str(runs["tokenizer_tiny"]), "--lam", str(runs["lam_tiny"])],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tokens / "manifest.json").read_text())["clips"] == 24
    run = tmp_path / "dynamics_tokens"
    common = [
        f"model.tokenizer_ckpt={runs['tokenizer_tiny']}",
        "model.sampling.steps=2",
        *TWO_STEPS,
        *TINY_DATA,
    ]
    proc = run_train(
        tmp_path, "+experiment=dynamics_tiny", f"model.lam_ckpt={runs['lam_tiny']}", f"data.train_tokens={tokens}",
        *common, run_dir=run,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and "val/delta_psnr_t4" in metrics
    # tokens without latent actions (pretokenized without --lam) for actions=lam: one line, no traceback
    bare = tmp_path / "tokens-bare"
    cmd = [sys.executable, str(root / "tools" / "pretokenize.py"), "--shards", str(tmp_path / "data" / "synthetic-64" / "train-*.tar"),
           "--out", str(bare), "--tokenizer", str(runs["tokenizer_tiny"])]  # fmt: skip
    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    proc = run_train(
        tmp_path, "+experiment=dynamics_tiny", f"model.lam_ckpt={runs['lam_tiny']}", f"data.train_tokens={bare}",
        *common, run_dir=tmp_path / "refused",
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "carry no latent actions" in proc.stderr.strip().splitlines()[-1]


def test_dynamics_11b_cfg_job_resolves() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "genie.train", "+experiment=dynamics_11b", "--cfg", "job", "--resolve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dim: 5120" in proc.stdout and "depth: 48" in proc.stdout


@pytest.mark.slow
def test_app_f_experiments_train_with_their_gpu_settings(tmp_path: Path) -> None:
    # The CoinRun (App. F) configs as a GPU runs them - bf16-mixed, the fused AdamW with gradient clipping,
    # App. F's batches as accumulated micro-batches, prepended actions - through the real command, on the CPU
    # with narrow blocks (until the clipping fix every single-GPU run stopped at its first step)
    from genie.data.synthetic import write_synthetic_shards

    write_synthetic_shards(tmp_path / "data" / "coinrun", train_clips=16, val_clips=4, clips_per_shard=8)
    narrow = "{dim: 32, depth: 1, num_heads: 2}"
    common = [
        "trainer.accelerator=cpu",  # the experiments' trainer=gpu otherwise, bf16-mixed included
        "data.num_workers=0",
        "data.val_batch_size=2",
        "trainer.max_steps=2",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=1",
        "final_val_batches=1",
    ]
    runs = {
        "coinrun_tokenizer": [
            f"model.model.encoder={narrow}",
            f"model.model.decoder={narrow}",
            "data.global_batch_size=4",
        ],
        "coinrun_lam": [
            f"model.model.encoder={narrow}",
            f"model.model.decoder={narrow}",
            "data.batch_size=2",
        ],
        "coinrun_dynamics": [
            f"model.model.transformer={narrow}",
            "data.global_batch_size=4",
            f"model.tokenizer_ckpt={tmp_path / 'coinrun_tokenizer' / 'checkpoints' / 'last.ckpt'}",
            f"model.lam_ckpt={tmp_path / 'coinrun_lam' / 'checkpoints' / 'last.ckpt'}",
            "model.sampling.steps=2",
            "model.eval_batches=1",
        ],
    }
    for name, overrides in runs.items():
        proc = run_train(tmp_path, f"+experiment={name}", *common, *overrides, run_dir=tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["global_step"] == 2, name


TINY_TOKENIZER = {  # a tokenizer small enough for in-process Lightning fits
    "image_size": [16, 16],
    "patch": 4,
    "num_codes": 32,
    "code_dim": 8,
    "encoder": {"dim": 32, "depth": 1, "num_heads": 2},
    "decoder": {"dim": 32, "depth": 1, "num_heads": 2},
}


def test_lightning_module_fit_two_steps(tmp_path: Path) -> None:
    module = TokenizerModule(model=TINY_TOKENIZER, optim={"lr": 1e-3, "warmup_steps": 1})
    data = [
        {"video": torch.rand(3, 16, 16).expand(2, 3, 16, 16).clone(), "actions": torch.zeros(1).long()}
    ] * 4
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 2
    results = trainer.validate(module, dataloaders=loader, verbose=False)
    assert {"val/psnr", "val/ssim", "val/recon_mse"} <= set(results[0])


def _fit_fused_grad_norms(tmp_path: Path, precision: str, clip: float) -> list[float]:
    """Two steps of a tiny tokenizer with the fused AdamW; the gradient norm each step stepped with."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    module = TokenizerModule(model=TINY_TOKENIZER, optim={"lr": 1e-3, "warmup_steps": 1, "fused": True})
    norms: list[float] = []

    class GradNorm(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
            grads = [p.grad.float().norm() for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.stack(grads).norm()))  # what the optimizer stepped with

    # fp16 autocast on the CPU: Lightning would turn "16-mixed" into bf16 there, so the plugin is explicit
    fp16 = precision == "16-mixed"
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0) if fp16 else None
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        precision=None if fp16 else precision,  # type: ignore[arg-type]
        plugins=[MixedPrecision("16-mixed", "cpu", scaler)] if fp16 else None,
        gradient_clip_val=clip,
        callbacks=[GradNorm()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    torch.manual_seed(1)
    data = [{"video": torch.rand(2, 3, 16, 16), "actions": torch.zeros(1).long()}] * 4
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=2))
    assert trainer.global_step == 2
    if scaler is not None:
        assert scaler.get_scale() == 16.0  # no step skipped for overflow
    return norms


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
def test_fused_adamw_clips_gradients_under_mixed_precision(tmp_path: Path, precision: str) -> None:
    # Lightning's mixed-precision plugin refuses to clip for the fused AdamW (it unscales inside its step);
    # StageModule clips it itself: every GPU config (bf16-mixed, fused, gradient_clip_val 1.0) trains. The
    # gradients (norm ~0.1-1) are clipped to the bound exactly - under a gradient scaler after unscaling
    # them (clipping the scaled ones would leave 1/16 of the bound once the step unscales)
    norms = _fit_fused_grad_norms(tmp_path, precision, clip=1e-3)
    assert len(norms) == 2 and all(n == pytest.approx(1e-3, rel=0.02) for n in norms), norms


def test_lr_schedule() -> None:
    const = OptimConfig(lr=1.0, warmup_steps=10, schedule="constant")
    assert (
        lr_factor(0, const) == pytest.approx(0.1)
        and lr_factor(9, const) == 1.0
        and lr_factor(10**6, const) == 1.0
    )
    cos = OptimConfig(lr=3e-5, min_lr=3e-6, warmup_steps=5, schedule="cosine", total_steps=105)
    assert lr_factor(5, cos) == pytest.approx(1.0)
    assert lr_factor(55, cos) == pytest.approx((1 + 0.1) / 2)
    assert lr_factor(105, cos) == pytest.approx(0.1) and lr_factor(500, cos) == pytest.approx(0.1)


def test_optimizer_is_fused_where_torch_has_the_kernel() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, OptimConfig())["optimizer"]
    assert opt.defaults["fused"] is True  # CPU (and CUDA): one fused AdamW kernel
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # decay on the matrix only
    x = torch.randn(2, 4)
    model(x).square().mean().backward()
    opt.step()  # runs
    assert build_optimizer(model, OptimConfig(fused=False))["optimizer"].defaults["fused"] is False
    with torch.device("meta"):  # a device without the kernel (as XLA): the multi-tensor AdamW
        meta = torch.nn.Linear(4, 4)
    assert not build_optimizer(meta, OptimConfig())["optimizer"].defaults["fused"]


def test_unknown_option_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown OptimConfig option\(s\) \['learning_rate'\]"):
        as_dataclass(OptimConfig, {"learning_rate": 1.0})


def test_short_window_views() -> None:
    model = {
        "image_size": [8, 8],
        "num_codes": 8,
        "code_dim": 4,
        "encoder": {"dim": 16, "depth": 1, "num_heads": 2},
        "decoder": {"dim": 16, "depth": 1, "num_heads": 2},
    }
    module = TokenizerModule(model=model, short_window=2, long_clips=1)
    video = torch.rand(5, 16, 3, 8, 8)
    short, long = module.training_views(video)
    assert short.shape == (4, 2, 3, 8, 8) and long.shape == (1, 16, 3, 8, 8)
    assert torch.equal(long, video[:1])
    assert any(torch.equal(short[0], video[1, s : s + 2]) for s in range(15))
    assert TokenizerModule(model=model).training_views(video)[0] is video


@pytest.mark.slow
def test_benchmark_quick_writes_json(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, str(root / "tools" / "benchmark"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["matmul_flops_per_s"] > 0
    assert 0 < result["tokenizer_train_step"]["fraction_of_matmul"] < 1.5
    stages = result["stage_train_steps"]  # each stage's experiment (quick: tiny dims only)
    assert [(r["stage"], r["experiment"]) for r in stages] == [
        ("tokenizer", "tokenizer_tiny"),
        ("lam", "lam_tiny"),
        ("dynamics", "dynamics_tiny"),
    ]
    assert all(r["clips_per_s"] > 0 and r["tokens_per_s"] > r["frames_per_s"] > 0 for r in stages)
    assert result["data"]["train_clips_per_s"] == max(r["clips_per_s"] for r in stages)
    tokens = result["dynamics_train_steps_pretokenized"]  # the dynamics stage on stored tokens
    assert [(r["stage"], r["dims"], r["pretokenized"]) for r in tokens] == [("dynamics", "tiny", True)]
    assert tokens[0]["clips_per_s"] > 0 and "on pretokenized clips" in (tmp_path / "benchmark.md").read_text()
    assert all(r["full_over_st"] > 0 for r in result["st_vs_full_attention"])
    assert all(r["st_over_full_memory_math"] > 0 for r in result["st_vs_full_attention"])
    # peak tensor memory: materialised full attention's grows faster in T than the ST block's
    peaks = [r["st_over_full_peak_math"] for r in result["st_vs_full_attention"]]
    assert 0 < peaks[-1] < peaks[0]
    paper = result["st_vs_full_attention_paper_grid"]  # counted on the meta device: exact, not noisy
    assert [r["T"] for r in paper] == [4, 8, 16] and paper[-1]["st_over_full_memory"] < 0.2
    assert paper[0]["st_over_full_memory"] > paper[1]["st_over_full_memory"] > paper[2]["st_over_full_memory"]
    assert 0 < result["dynamics_train_step"]["fraction_of_matmul"] < 1.5
    (vs_plain,) = result["train_genie_over_plain"]  # quick: d 256 only, both steps timed side by side
    assert vs_plain["dim"] == 256 and vs_plain["genie_s"] > 0 and vs_plain["plain_s"] > 0
    assert vs_plain["ratio"] == pytest.approx(vs_plain["plain_s"] / vs_plain["genie_s"])
    assert result["play"]["cached_fps"] > 0 and result["play"]["cache_speedup"] > 0
    assert result["play_compiled_bf16"] is None  # (a full run's figure)
    assert isinstance(result["cpu_bf16_units"], bool)
    assert result["data"]["stream_clips_per_s"] > 0
    assert "| matmul fp32 (" in (tmp_path / "benchmark.md").read_text()


def test_paper_play_limit_counts_the_paper_model_and_measures_at_tiny_dims() -> None:
    """The compute limit of play at the paper's scale (counted on the meta device), and the play measurement
    itself on the CPU at tiny dims in bf16 (the GPU runs dynamics_11b / dynamics_2_7b through the same code)."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    try:
        from benchmark.paper_play import PAPER_GRID, paper_play, play_flops_per_frame
    finally:
        sys.path.remove(str(root / "tools"))
    from genie.config import compose_config
    from genie.params import build

    _, model, _ = build(compose_config(["+experiment=dynamics_11b"]))  # on the meta device
    params = sum(p.numel() for p in model.parameters())
    flops = play_flops_per_frame(params, PAPER_GRID[0] * PAPER_GRID[1], 25)
    assert 10.0e9 < params < 10.2e9 and flops == 2 * params * 920 * 25  # ~4.6e14 FLOP per frame
    r = paper_play(
        "dynamics_tiny", device="cpu", dtype=torch.bfloat16, matmul_flops_per_s=1e11, steps=2, context_frames=3,
        timed=1, overrides=("model.model.aids.copy_radius=0",),
    )  # fmt: skip
    assert r["tokens_per_frame"] == 920 and r["frames_per_s"] > 0 and r["dtype"] == "bfloat16"
    assert r["fraction_of_limit"] == pytest.approx(r["frames_per_s"] / (1e11 / r["flops_per_frame"]))


def test_onexgpt_comparison_loads_a_checkout_beside_our_genie_and_times_both(tmp_path: Path) -> None:
    """The 1xgpt row of the benchmark: a checkout's ``genie`` package (here a small stand-in with 1xgpt's
    module layout, imports and ``generate`` signature) loads without replacing ours, and both sides are timed."""
    import genie as ours

    pkg = tmp_path / "checkout" / "genie"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text(
        "from dataclasses import dataclass\n"
        "@dataclass\nclass GenieConfig:\n    num_layers: int\n    num_heads: int\n    d_model: int\n"
        "    T: int = 16\n    S: int = 256\n    image_vocab_size: int = 1024\n"
    )
    (pkg / "st_mask_git.py").write_text(
        "import torch, mup\nfrom tqdm import tqdm\nfrom xformers.ops import LowerTriangularMask\n"
        "from transformers.utils import ModelOutput\nfrom huggingface_hub import PyTorchModelHubMixin\n"
        "from genie.config import GenieConfig\n"
        "class STMaskGIT(torch.nn.Module, PyTorchModelHubMixin):\n"
        "    def __init__(self, config):\n        super().__init__()\n        self.config = config\n"
        "    def generate(self, input_ids, attention_mask, max_new_tokens, maskgit_steps=1, temperature=0.0):\n"
        "        for _ in tqdm(range(maskgit_steps)):\n            pass\n"
        "        return torch.cat((input_ids, input_ids[:, :max_new_tokens]), 1)\n"
    )
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "tools"))
    try:
        from benchmark.cli import onexgpt_row
        from benchmark.onexgpt import load_stmaskgit, play_vs_onexgpt
    finally:
        sys.path.remove(str(root / "tools"))
    stmaskgit, config = load_stmaskgit(pkg.parent)
    assert stmaskgit.__module__ == "genie.st_mask_git" and config.__name__ == "GenieConfig"
    import genie

    assert genie is ours and genie.__file__ == ours.__file__
    assert "genie.st_mask_git" not in sys.modules  # theirs is gone from the module table again
    result = play_vs_onexgpt(pkg.parent, quick=True)
    assert result["genie_fps"] > 0 and result["onexgpt_fps"] > 0
    assert result["ratio"] == pytest.approx(result["genie_fps"] / result["onexgpt_fps"])
    assert result["eager_ratio"] == pytest.approx(result["genie_eager_fps"] / result["onexgpt_fps"])
    assert not result["genie_compiled"]  # (the suite runs with torch.compile off)
    threads = torch.get_num_threads()
    assert result["threads"] == threads  # the ratio depends on it: the row says at how many threads it ran
    assert f"16 frames; {threads} thread{'s' if threads != 1 else ''})" in onexgpt_row(result)
    with pytest.raises(SystemExit, match=r"no genie/st_mask_git\.py there"):
        load_stmaskgit(tmp_path)


def test_progress_bar_of_a_run_counted_in_steps_shows_no_negative_epoch_bound() -> None:
    bar = ProgressBar()  # conf/callbacks/default.yaml's rich_progress_bar
    trainer = L.Trainer(max_steps=2, callbacks=[bar], logger=False, enable_checkpointing=False)
    bar.setup(trainer, None, "fit")
    trainer.fit_loop.max_epochs = -1  # what fitting sets for a run bounded by max_steps alone
    assert bar._get_train_description(0).strip() == "Epoch 0"  # Lightning's own bar: "Epoch 0/-2"
    trainer.fit_loop.max_epochs = 3
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
