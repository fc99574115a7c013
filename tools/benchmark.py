#!/usr/bin/env python
"""Benchmarks, measured in one run so ratios are stable on a noisy machine; writes JSON + a markdown table.

    python tools/benchmark.py [--out bench/] [--quick]

Figures:
- matmul FLOP/s of this machine (fp32; the yardstick for "how close to the limit");
- each stage's train step (tokenizer, LAM, dynamics) at tiny and CoinRun dims, as its experiment configures it
  (LightningModule training_step + its optimizer): clips/s, frames/s and tokens/s;
- a tokenizer train step (tokenizer_tiny dims, 2-frame windows): achieved FLOP/s as a fraction of matmul FLOP/s;
- dynamics train step at d = 512 (fp32): achieved FLOP/s as a fraction of matmul FLOP/s (target >= 0.8),
  eager and with each ST block compiled (each step timed between matmul probes, against their mean), and
  eager with the blocks configured plain (no QK-norm, no rotary positions: what those two cost);
- ST attention vs full spatiotemporal attention: train step time, the activation memory autograd keeps and
  the step's peak tensor memory (``genie.memory.peak_tensor_bytes``: saved activations, backward's buffers,
  gradients) at T = 4, 8, 16 (the paper's claim: linear vs quadratic in T; target at T = 16: ST <= 0.2x
  full), on 16x16 tokens per frame, and the kept memory alone at the paper's 23x40 tokens per frame (counted
  on the meta device);
- play: frames/s of Genie.step with 25 MaskGIT steps, with the KV cache and recomputing the 16-frame window
  (target: cached >= 10x; tiny model >= 10 FPS), eager and (tiny dims) with ``SamplingConfig(compile=True)``,
  and (tiny dims, cached) compiled under bf16 autocast (``SamplingConfig(precision="bf16")``);
- data: clips/s streamed from shards vs clips/s the fastest tiny train step consumes (target >= 5x).

On a CUDA machine, ``--device cuda`` measures the GPU figures instead (writes gpu_benchmark.json/.md):
- the GPU's measured bf16 matmul FLOP/s (8192^3);
- bf16 MFU of a >= 400M-parameter dynamics train step (bf16 autocast, fp32 master weights, fused AdamW),
  eager and with each ST block compiled, against the measured matmul rate and the datasheet peak;
- play at CoinRun dims (d 512 x 12, 16x16 tokens, 25 MaskGIT steps, 16 frames of context) on the GPU,
  cached and recomputed, fp32 and bf16 autocast (goal >= 10 FPS; the paper's model ran at ~1 FPS).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from genie.memory import peak_tensor_bytes, saved_bytes
from genie.models import TokenizerConfig, VideoTokenizer
from genie.models.dynamics import DynamicsModel
from genie.nn import STConfig, STTransformer, compile_blocks


def timeit(fn: Callable[[], Any], warmup: int = 2, repeat: int = 5) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_flops(n: int = 1024, repeat: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timeit(lambda: a @ b, warmup=1, repeat=repeat)


def against_matmul(step: Callable[[], Any], flops: float, n: int, rounds: int) -> dict[str, float]:
    """Time ``step`` alternately with matmul probes: each step's achieved FLOP/s over the mean matmul rate of
    the probes either side of it (this VM's speed drifts by tens of percent within minutes); medians."""
    step()
    rates = [matmul_flops(n, repeat=5)]
    secs = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        secs.append(time.perf_counter() - start)
        rates.append(matmul_flops(n, repeat=5))
    fractions = sorted(flops / s / ((r0 + r1) / 2) for s, r0, r1 in zip(secs, rates, rates[1:], strict=False))
    return {
        "seconds": sorted(secs)[len(secs) // 2],
        "fraction_of_matmul": fractions[len(fractions) // 2],
        "matmul_flops_per_s": sorted(rates)[len(rates) // 2],
        "matmul_flops_per_s_min": min(rates),
        "matmul_flops_per_s_max": max(rates),
    }


def tokenizer_step(quick: bool, n: int) -> dict[str, float]:
    st = {"dim": 128, "depth": 1, "num_heads": 4}
    cfg = TokenizerConfig(image_size=(64, 64), patch=4, num_codes=1024, code_dim=32, encoder=st, decoder=st)
    model = VideoTokenizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as genie.lightning builds it
    video = torch.rand(8 if quick else 16, 2, 3, 64, 64)

    def step() -> None:
        out = model(video)
        loss = F.mse_loss(out.recon, video) + out.vq.loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    frames = video.shape[0] * video.shape[1]
    tokens = frames * cfg.grid[0] * cfg.grid[1]
    dense = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "codebook" not in name)
    # 6·params·tokens for the dense layers, plus attention scores (QKᵀ and AV: 4·S·d per token and layer, ×3)
    s, d = cfg.grid[0] * cfg.grid[1], st["dim"]
    flops = 6 * dense * tokens + 3 * 4 * s * d * tokens * (st["depth"] * 2)
    r = against_matmul(step, flops, n, rounds=3 if quick else 7)
    sec = r["seconds"]
    return {
        **r,
        "frames_per_s": frames / sec,
        "tokens_per_s": tokens / sec,
        "flops_per_s": flops / sec,
    }


def dynamics_step(quick: bool, n: int, compiled: bool = False, plain: bool = False) -> dict[str, float]:
    """MaskGIT train step of a d=512 dynamics model (fp32): the CPU step should be matmul-bound.
    ``compiled``: each ST block through ``torch.compile`` (``callbacks.scale.compile_blocks=true``).
    ``plain``: the ST blocks without QK-norm and rotary positions (what those two cost)."""
    from genie.models.dynamics import DynamicsConfig, DynamicsModel

    d = 256 if quick else 512
    st: dict[str, Any] = {"dim": d, "depth": 2, "num_heads": 8}
    if plain:
        st.update(qk_norm="none", pos_emb="none")
    cfg = DynamicsConfig(num_codes=1024, grid=(8, 8), num_actions=8, transformer=st)
    torch.manual_seed(0)
    model = DynamicsModel(cfg)
    if compiled:
        compile_blocks(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as genie.lightning builds it
    b, t = (2, 4) if quick else (4, 8)
    tokens = torch.randint(0, 1024, (b, t, 8, 8))
    actions = torch.randint(0, 8, (b, t - 1))

    def step() -> None:  # the same mask every step, so that its token count is exact
        loss, _, _ = model.loss(tokens, actions, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()

    start = time.perf_counter()
    step()  # (the compile, when compiled)
    first = time.perf_counter() - start
    flops = _dynamics_step_flops(model, b, t)
    r = against_matmul(step, flops, n, rounds=3 if quick else 7)
    sec = r["seconds"]
    return {
        **r,
        "tokens_per_s": b * t * 64 / sec,
        "flops_per_s": flops / sec,
        "dim": d,
        "first_step_s": first,
    }


# each stage's experiment at tiny and CoinRun dims (the dynamics stage's frozen tokenizer and LAM: its dims' ones)
STAGE_EXPERIMENTS: dict[str, dict[str, str]] = {
    "tiny": {"tokenizer": "tokenizer_tiny", "lam": "lam_tiny", "dynamics": "dynamics_tiny"},
    "coinrun": {"tokenizer": "coinrun_tokenizer", "lam": "coinrun_lam", "dynamics": "coinrun_dynamics"},
}


def stage_step(
    stage: str,
    dims: str,
    quick: bool,
    device: str = "cpu",
    batch: int | None = None,
    checkpointing: bool = False,
    repeat: int | None = None,
    compiled: bool = False,
    tokens: bool = False,
) -> dict[str, Any]:
    """Throughput of one stage's training step as ``python -m genie.train +experiment=NAME`` runs it: the
    experiment's LightningModule (its ``training_step``: the stage's windows, losses, frozen models) and the
    optimizer it configures, on random clips of the experiment's frames and size. A dynamics module gets a
    freshly initialised tokenizer and LAM of its dims' experiments instead of checkpoints (the same work per
    step). On the CPU: eager fp32; batch: the experiment's at tiny dims, one clip at CoinRun dims (each of its
    steps takes seconds here; the configs' 36-48 clips are per GPU step). On a GPU (``device="cuda"``): the
    experiment's trainer precision (``bf16-mixed``: autocast to bf16 over fp32 weights, as Lightning runs it),
    the experiment's batch, and ``peak_memory_gib`` (``torch.cuda.max_memory_allocated``). ``batch``
    overrides the batch; ``checkpointing``: activation checkpointing per ST block
    (``callbacks.scale.activation_checkpointing=true``); ``compiled``: each ST block compiled
    (``callbacks.scale.compile_blocks=true``; the warm-up step compiles); ``tokens``: the dynamics stage on
    pretokenized clips (``data.train_tokens``: stored tokens and latent actions, no tokenizer or LAM pass). ``clips_per_s``: the data's clips consumed;
    ``frames_per_s`` / ``tokens_per_s``: the frames the step trains on (its windows) and their tokens."""
    import contextlib
    import statistics
    import warnings

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from genie.config import compose_config
    from genie.distributed import apply_policies

    names = STAGE_EXPERIMENTS[dims]
    cfg = compose_config([f"+experiment={names[stage]}"])
    kwargs: dict[str, Any] = {}
    if stage == "dynamics":
        for part in ("tokenizer", "lam"):
            part_cfg = compose_config([f"+experiment={names[part]}"]).model.model
            kwargs[f"{part}_model"] = OmegaConf.to_container(part_cfg, resolve=True)
            kwargs[f"{part}_ckpt"] = None
    gpu = device != "cpu"
    torch.manual_seed(0)
    module = instantiate(cfg.model, **kwargs).to(device)
    module.train()
    if checkpointing or compiled:
        apply_policies(module, activation_checkpointing=checkpointing, compile_blocks=compiled)
    opt = module.configure_optimizers()["optimizer"]
    frames, (h, w) = int(cfg.data.frames), tuple(cfg.data.size)
    if batch is not None:
        b = batch
    elif gpu or dims == "tiny":
        b = 2 if quick else int(cfg.data.batch_size)
    else:
        b = 1
    precision = str(cfg.trainer.precision) if gpu else "32-true"
    autocast = (
        torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
        if precision.startswith("bf16")
        else contextlib.nullcontext()
    )
    clips = {
        "video": torch.rand(b, frames, 3, h, w, device=device),
        "actions": torch.zeros(b, frames - 1, dtype=torch.long, device=device),
    }
    if tokens:
        assert stage == "dynamics", "pretokenized clips are for the dynamics stage"
        hw = tuple(module.cfg.hw)
        clips = {
            "tokens": torch.randint(0, module.cfg.num_codes, (b, frames, *hw), device=device),
            "latent_actions": torch.randint(0, module.cfg.num_actions, (b, frames - 1), device=device),
            "actions": clips["actions"],
        }
    if stage == "tokenizer":
        trained = sum(v.shape[0] * v.shape[1] for v in module.training_views(clips["video"]))
        per_frame = module.cfg.grid[0] * module.cfg.grid[1]
    else:
        trained = b * min(frames, module.train_frames or frames)
        grid = module.cfg.grid if stage == "lam" else module.cfg.hw
        per_frame = grid[0] * grid[1]

    def step() -> None:
        with autocast:
            loss = module.training_step(clips, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    if repeat is None:
        repeat = 1 if quick else 2 if dims == "coinrun" and not gpu else 5
    with warnings.catch_warnings():  # self.log without a Trainer: "not registered on the model yet"
        warnings.simplefilter("ignore")
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        step()  # warm-up
        times = []
        for _ in range(repeat):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
    sec = statistics.median(times)
    extra = {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30} if gpu else {}
    return {
        "stage": stage,
        "dims": dims,
        "experiment": names[stage],
        "device": device,
        "precision": precision,
        "checkpointing": checkpointing,
        "compiled": compiled,
        "pretokenized": tokens,
        **extra,
        "params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "max_steps": int(cfg.trainer.max_steps),
        "clips": b,
        "clip_frames": frames,
        "frames_trained": trained,
        "seconds": sec,
        "clips_per_s": b / sec,
        "frames_per_s": trained / sec,
        "tokens_per_s": trained * per_frame / sec,
    }


def _dynamics_step_flops(model: DynamicsModel, b: int, t: int) -> float:
    """FLOPs of one train step on ``b`` clips of ``t`` frames with the mask of ``Generator().manual_seed(0)``
    (the steps above use it): 6·params·tokens for the blocks on every token and the output head on the masked
    ones (training scores only those), plus the attention scores (spatial over S, temporal over T)."""
    st = model.cfg.st
    s = model.cfg.hw[0] * model.cfg.hw[1]
    n = b * t * s
    masked = int(model.random_mask(b, t, torch.Generator().manual_seed(0)).sum())
    head = model.head.weight.numel()
    dense = (
        sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embed" not in name) - head
    )
    attn = 3 * 4 * st.dim * n * (s + t) * st.depth
    return float(6 * dense * n + 6 * head * masked + attn)


def play_speed(
    quick: bool,
    dims: str = "tiny",
    device: str = "cpu",
    precision: str = "fp32",
    compiled: bool = False,
    cuda_graph: bool = True,
    recompute: bool = True,
) -> dict[str, float]:
    """Frames/s of Genie.step (25 MaskGIT steps) with and without the KV cache, 16 frames of context.
    ``dims``: ``tiny`` (d 128 x 2: the demo's dynamics width and depth, without its copy head; temperature 2)
    or ``coinrun`` (d 512 x 12, App. F's dynamics).
    ``precision``: ``SamplingConfig(precision=...)`` (``bf16``: autocast). ``compiled``: ``SamplingConfig(compile=True)`` (the warm-up
    steps compile; the timed ones run compiled). ``cuda_graph``: ``SamplingConfig(cuda_graph=...)`` (on a GPU
    the warm-up steps capture the graphs; the timed ones replay them). ``recompute=False``: cached only.

    The cached and the recomputing session take turns (at tiny dims, 3 rounds of 2 cached frames and 1
    recomputed one; each figure from the median round), so a drift in this machine's speed moves both figures
    and not their ratio."""
    import statistics

    from genie.models import Genie
    from genie.models.dynamics import DynamicsConfig, DynamicsModel
    from genie.models.sampling import SamplingConfig

    if compiled:  # a fresh start: dynamo keeps at most 8 compiled variants of the ST block's code
        torch._dynamo.reset()
    st = {"dim": 128, "depth": 2, "num_heads": 4}
    dyn_st = st if dims == "tiny" else {"dim": 512, "depth": 12, "num_heads": 8}
    tok = VideoTokenizer(
        TokenizerConfig(image_size=(64, 64), patch=4, num_codes=1024, code_dim=32, encoder=st, decoder=st)
    )
    dyn = DynamicsModel(DynamicsConfig(num_codes=1024, grid=(16, 16), num_actions=8, transformer=dyn_st))
    gpu = device != "cpu"
    # a CoinRun-dims window recompute takes ~1 min per frame on the CPU: one round there
    rounds = 1 if quick or (dims != "tiny" and not gpu) else 3
    frames = {True: 2 if rounds > 1 or quick else 6, False: 1}  # per round
    prompt = torch.rand(1, 16, 3, 64, 64)  # a full 16-frame window: the steady state of a long session
    sessions: dict[bool, Genie] = {}
    for cache in (True, False) if recompute else (True,):
        sampling = SamplingConfig(
            steps=25,
            context_frames=16,
            use_cache=cache,
            compile=compiled,
            cuda_graph=cuda_graph,
            precision=precision,
        )
        genie = Genie(tok, dyn, None, sampling).eval().to(device)
        genie.reset(prompt, actions=torch.zeros(1, 15, dtype=torch.long), seed=0)
        genie.step(0)  # warm-up (a compile or a CUDA graph capture, when asked)
        genie.step(1)
        sessions[cache] = genie
    seconds: dict[bool, list[float]] = {cache: [] for cache in sessions}
    for _ in range(rounds):
        for cache, genie in sessions.items():
            n = frames[cache] * (5 if gpu else 1)
            sync(device)
            start = time.perf_counter()
            for i in range(n):
                genie.step(i % 8)
            sync(device)
            seconds[cache].append((time.perf_counter() - start) / n)
    out = {
        "cached_fps" if cache else "recompute_fps": 1 / statistics.median(s) for cache, s in seconds.items()
    }
    if recompute:
        out["cache_speedup"] = out["cached_fps"] / out["recompute_fps"]
    return out


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX-512 BF16): without it bf16 is emulated, and slow."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def data_rate(quick: bool, consume_clips_per_s: float) -> dict[str, float]:
    """Clips/s streamed (decoded, resized, batched) from synthetic shards, against training consumption."""
    import tempfile

    from genie.data.pipeline import ClipStream
    from genie.data.synthetic import write_synthetic_shards

    with tempfile.TemporaryDirectory() as tmp:
        n = 64 if quick else 256
        write_synthetic_shards(tmp, train_clips=n, val_clips=2, clips_per_shard=64)
        stream = ClipStream(f"{tmp}/train-*.tar", frames=16, size=(64, 64), shuffle_buffer=32)
        start = time.perf_counter()
        count = sum(1 for _ in stream)
        rate = count / (time.perf_counter() - start)
    return {
        "stream_clips_per_s": rate,
        "train_clips_per_s": consume_clips_per_s,
        "ratio": rate / consume_clips_per_s,
    }


def _attention_train_step(
    mode: str, frames: int, grid: tuple[int, int], device: str = "cpu"
) -> Callable[[], None]:
    """Forward + backward of the attention benchmark's model (d 128, 2 blocks, 4 heads) on one clip."""
    with torch.device(device):
        model = STTransformer(STConfig(dim=128, depth=2, num_heads=4, attention=mode))  # type: ignore[arg-type]
        x = torch.randn(1, frames, grid[0] * grid[1], 128)

    def step() -> None:
        model(x, grid).square().mean().backward()

    return step


def st_vs_full(quick: bool) -> list[dict[str, float]]:
    rows = []
    for t in (4, 8) if quick else (4, 8, 16):
        row: dict[str, float] = {"T": t}
        for mode in ("st", "full"):
            side = 8 if quick else 16  # 16x16 tokens per frame: the tiny and CoinRun tokenizers' grid
            step = _attention_train_step(mode, t, (side, side))
            row[f"{mode}_seconds"] = timeit(step, warmup=1, repeat=3)
            row[f"{mode}_activation_bytes"] = saved_bytes(step)
            row[f"{mode}_peak_bytes"] = peak_tensor_bytes(step)
            with sdpa_kernel(SDPBackend.MATH):  # attention matrices materialised (no fused kernel)
                row[f"{mode}_activation_bytes_math"] = saved_bytes(step)
                row[f"{mode}_peak_bytes_math"] = peak_tensor_bytes(step)
        row["full_over_st"] = row["full_seconds"] / row["st_seconds"]
        row["st_over_full_memory"] = row["st_activation_bytes"] / row["full_activation_bytes"]
        row["st_over_full_memory_math"] = row["st_activation_bytes_math"] / row["full_activation_bytes_math"]
        row["st_over_full_peak"] = row["st_peak_bytes"] / row["full_peak_bytes"]
        row["st_over_full_peak_math"] = row["st_peak_bytes_math"] / row["full_peak_bytes_math"]
        rows.append(row)
    return rows


def st_vs_full_paper_grid() -> list[dict[str, float]]:
    """The same comparison's activation memory at the paper's 23x40 tokens per frame (its 160x90 frames, patch 4),
    counted on the meta device: the bytes autograd keeps, by shape, with attention matrices materialised (the
    meta kernels of fused attention decompose it), allocating nothing."""
    rows = []
    grid = (23, 40)
    for t in (4, 8, 16):
        row: dict[str, float] = {"T": t, "tokens_per_frame": grid[0] * grid[1]}
        for mode in ("st", "full"):
            row[f"{mode}_activation_bytes"] = saved_bytes(_attention_train_step(mode, t, grid, "meta"))
        row["st_over_full_memory"] = row["st_activation_bytes"] / row["full_activation_bytes"]
        rows.append(row)
    return rows


def gpu_matmul_flops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)

    def mm() -> None:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()

    return 10 * 2 * n**3 / timeit(mm, warmup=2, repeat=5)


def gpu_dynamics_step(
    dim: int = 1024, depth: int = 24, batch: int = 4, frames: int = 16, compile_blocks: bool = False
) -> dict[str, float]:
    """bf16-autocast MaskGIT train step of a dynamics model with >= 400M parameters (16x16 tokens, 16 frames)."""
    from genie.distributed import apply_policies
    from genie.models.dynamics import DynamicsConfig, DynamicsModel

    cfg = DynamicsConfig(
        num_codes=1024,
        grid=(16, 16),
        num_actions=8,
        transformer={"dim": dim, "depth": depth, "num_heads": dim // 64},
    )
    model = DynamicsModel(cfg).cuda()
    if compile_blocks:
        apply_policies(model, compile_blocks=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    tokens = torch.randint(0, 1024, (batch, frames, 16, 16), device="cuda")
    actions = torch.randint(0, 8, (batch, frames - 1), device="cuda")

    def step() -> None:  # the same mask every step (drawn on the CPU), so that its token count is exact
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _, _ = model.loss(tokens, actions, torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()

    torch.cuda.reset_peak_memory_stats()
    sec = timeit(step, warmup=3, repeat=10)
    n = batch * frames * 256
    flops = _dynamics_step_flops(model, batch, frames)
    params = sum(p.numel() for p in model.parameters())
    return {
        "params": params,
        "dim": dim,
        "depth": depth,
        "batch": batch,
        "seconds": sec,
        "tokens_per_s": n / sec,
        "flops_per_s": flops / sec,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        "compiled_blocks": float(compile_blocks),
    }


# dense bf16 tensor-core peaks from the datasheets (FLOP/s), for the MFU against the vendor's figure
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def stage_rows(result: dict[str, Any], lines: list[str], write: Callable[[], None]) -> None:
    """The App. F (CoinRun) stages' train steps on one GPU as their experiments configure them (batch,
    ``bf16-mixed``): the whole batch with and without activation checkpointing, a half and a quarter batch
    (the micro-batches of ``trainer.accumulate_grad_batches=2`` / ``4``), and the experiment's own split with
    compiled blocks; a batch that does not fit is reported as such. ``hours``: the experiment's ``max_steps``
    at that speed (micro-batches: times their number)."""
    rows = result.setdefault("coinrun_stage_train_steps_gpu", [])
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    for stage in ("tokenizer", "lam", "dynamics"):
        full, own = compose_stage_batch(stage)
        variants = (
            (1, False, False),
            (1, True, False),
            (2, False, False),
            (4, False, False),
            (own, False, True),
        )
        for split, checkpointing, compiled in variants:
            b = full // split
            label = f"{stage}, batch {b}" + (f" x {split} accumulated" if split > 1 else "")
            label += ", activation checkpointing" if checkpointing else ""
            label += ", compiled blocks" if compiled else ""
            try:
                r = stage_step(stage, "coinrun", False, "cuda", b, checkpointing, repeat=3, compiled=compiled)
            except torch.cuda.OutOfMemoryError:
                rows.append({"stage": stage, "batch": b, "checkpointing": checkpointing, "oom": True})
                lines.append(f"| CoinRun train step: {label} | out of memory ({total:.0f} GiB GPU) |")
                torch.cuda.empty_cache()
                write()
                continue
            r["accumulate"] = split
            r["hours"] = r["seconds"] * split * r["max_steps"] / 3600
            rows.append(r)
            lines.append(
                f"| CoinRun train step: {label} ({r['params'] / 1e6:.0f}M, {r['precision']}) | "
                f"{r['clips_per_s']:.1f} clips/s, {r['tokens_per_s']:.0f} tokens/s, peak memory "
                f"{r['peak_memory_gib']:.1f} GiB; {r['max_steps'] // 1000}k steps: {r['hours']:.0f} h |"
            )
            write()
            torch.cuda.empty_cache()


def compose_stage_batch(stage: str) -> tuple[int, int]:
    """The CoinRun experiment's batch per optimizer step for ``stage`` (its global batch, where it sets one)
    and the number of micro-batches it is split into on one device."""
    from genie.config import compose_config

    cfg = compose_config([f"+experiment={STAGE_EXPERIMENTS['coinrun'][stage]}"])
    batch = int(cfg.data.get("global_batch_size") or cfg.data.batch_size)
    return batch, int(cfg.trainer.get("accumulate_grad_batches", 1))


def gpu_main(out: Path, train: bool = True, play: bool = True) -> None:
    name = torch.cuda.get_device_name()
    datasheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    peak = gpu_matmul_flops()
    result: dict[str, Any] = {"torch": torch.__version__, "device": name, "bf16_matmul_flops_per_s": peak}
    lines = ["| figure (GPU) | value |", "|---|---|", f"| device | {name} |"]
    lines.append(f"| bf16 matmul (8192³), measured | {peak / 1e12:.0f} TFLOP/s |")

    def write() -> None:
        (out / "gpu_benchmark.json").write_text(json.dumps(result, indent=2))
        (out / "gpu_benchmark.md").write_text("\n".join(lines) + "\n")

    for label, kwargs in (("eager", {}), ("compiled blocks", {"compile_blocks": True})) if train else ():
        try:
            r = gpu_dynamics_step(**kwargs)
        except Exception as e:  # report it and go on to the next figure
            lines.append(f"| dynamics train step ({label}) | failed: {type(e).__name__}: {str(e)[:120]} |")
            continue
        r["mfu_of_measured_matmul"] = r["flops_per_s"] / peak
        if datasheet:
            r["mfu_of_datasheet"] = r["flops_per_s"] / datasheet
        result[f"dynamics_train_step_{label.replace(' ', '_')}"] = r
        lines.append(
            f"| dynamics train step, {r['params'] / 1e6:.0f}M params (d {r['dim']} x {r['depth']}, batch "
            f"{r['batch']}x16 frames x 256 tokens), bf16, {label} | {r['tokens_per_s']:.0f} tokens/s, "
            f"{r['flops_per_s'] / 1e12:.0f} TFLOP/s = {r['mfu_of_measured_matmul']:.2f} of measured matmul"
            + (f", MFU {r['mfu_of_datasheet']:.2f} of datasheet" if datasheet else "")
            + f", peak memory {r['peak_memory_gib']:.1f} GiB |"
        )
        write()
        torch.cuda.empty_cache()
    if train:
        stage_rows(result, lines, write)
    if not play:
        print("\n".join(lines))
        print(f"\nwritten: {out / 'gpu_benchmark.json'}, {out / 'gpu_benchmark.md'}")
        return
    pl = play_speed(False, "coinrun", device="cuda", cuda_graph=False)
    result["play_coinrun_fp32_eager"] = pl
    lines.append(
        "| play at CoinRun dims (d 512 x 12), 25 MaskGIT steps, fp32, eager (`cuda_graph: false`): cached / "
        f"recomputed | {pl['cached_fps']:.1f} / {pl['recompute_fps']:.1f} frames/s = {pl['cache_speedup']:.1f}× |"
    )
    write()
    plays = (
        ("fp32, CUDA graph (the default)", "fp32_graph", "fp32", False),
        ("fp32, compiled blocks + CUDA graph", "fp32_compiled_graph", "fp32", True),
        ("bf16 (`sampling.precision`), CUDA graph", "bf16_graph", "bf16", False),
        ("bf16 (`sampling.precision`), compiled blocks + CUDA graph", "bf16_compiled_graph", "bf16", True),
    )
    for label, key, precision, compiled in plays:
        try:
            pl = play_speed(False, "coinrun", "cuda", precision, compiled=compiled, recompute=False)
        except Exception as e:  # report it and go on to the next figure
            lines.append(f"| play ({label}) | failed: {type(e).__name__}: {str(e)[:160]} |")
            write()
            continue
        result[f"play_coinrun_{key}"] = pl
        lines.append(
            f"| play at CoinRun dims, {label}: cached | {pl['cached_fps']:.1f} frames/s (goal ≥ 10 FPS) |"
        )
        write()
    print("\n".join(lines))
    print(f"\nwritten: {out / 'gpu_benchmark.json'}, {out / 'gpu_benchmark.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench", help="folder for benchmark.json and benchmark.md")
    p.add_argument("--quick", action="store_true", help="smaller shapes (seconds, for tests)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU figures only")
    p.add_argument("--no-train", action="store_true", help="with --device cuda: the play figures only")
    p.add_argument("--no-play", action="store_true", help="with --device cuda: the training figures only")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                "error: --device cuda but CUDA is not available; run on a GPU machine or drop --device"
            )
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        gpu_main(out, train=not a.no_train, play=not a.no_play)
        return
    n = 512 if a.quick else 1024
    # This VM's speed drifts by tens of percent within minutes: each train step is timed between matmul
    # probes and its fraction taken against the probes either side of it (against_matmul).
    tok = tokenizer_step(a.quick, n)
    dyn = dynamics_step(a.quick, n)
    # compiled figures (full run only: each compile takes tens of seconds here)
    dyn_c = dynamics_step(a.quick, n, compiled=True) if not a.quick else None
    dyn_plain = dynamics_step(a.quick, n, plain=True) if not a.quick else None
    steps = [r for r in (tok, dyn, dyn_c, dyn_plain) if r]
    samples = [r["matmul_flops_per_s"] for r in steps]
    peak = max(r["matmul_flops_per_s_max"] for r in steps)
    attn = st_vs_full(a.quick)
    attn_paper = st_vs_full_paper_grid()
    play = play_speed(a.quick)
    play_c = play_speed(a.quick, compiled=True) if not a.quick else None
    # the same under bf16 autocast (sampling.precision=bf16): cached only; fast where the CPU has bf16 units
    play_bf16 = play_speed(a.quick, compiled=True, precision="bf16", recompute=False) if not a.quick else None
    play_coinrun = play_speed(a.quick, "coinrun") if not a.quick else None
    stages = [
        stage_step(stage, dims, a.quick)
        for dims in (("tiny",) if a.quick else ("tiny", "coinrun"))
        for stage in ("tokenizer", "lam", "dynamics")
    ]
    # the dynamics stage on pretokenized clips (tools/pretokenize.py), beside its rows above
    pretokenized = [
        stage_step("dynamics", dims, a.quick, tokens=True)
        for dims in (("tiny",) if a.quick else ("tiny", "coinrun"))
    ]
    # against the stage that consumes clips fastest (each reads whole 16-frame clips from the stream)
    data = data_rate(a.quick, max(r["clips_per_s"] for r in stages if r["dims"] == "tiny"))
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_flops_per_s": peak,
        "matmul_flops_per_s_medians": samples,
        "stage_train_steps": stages,
        "dynamics_train_steps_pretokenized": pretokenized,
        "tokenizer_train_step": tok,
        "dynamics_train_step": dyn,
        "dynamics_train_step_compiled_blocks": dyn_c,
        "dynamics_train_step_plain_blocks": dyn_plain,
        "st_vs_full_attention": attn,
        "st_vs_full_attention_paper_grid": attn_paper,
        "play": play,
        "play_compiled": play_c,
        "play_compiled_bf16": play_bf16,
        "cpu_bf16_units": cpu_bf16(),
        "play_coinrun_dims": play_coinrun,
        "data": data,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| matmul fp32 (1024³) | {peak / 1e9:.1f} GFLOP/s (median per train-step figure: "
        f"{', '.join(f'{x / 1e9:.0f}' for x in samples)}) |",
        *(
            f"| train step: {r['stage']}, {r['dims']} dims (`{r['experiment']}`, {r['params'] / 1e6:.1f}M params, "
            f"{r['clips']} clip{'s' if r['clips'] > 1 else ''} of {r['clip_frames']} frames; trains on {r['frames_trained']} frames) | "
            f"{r['clips_per_s']:.2f} clips/s, {r['frames_per_s']:.1f} frames/s, {r['tokens_per_s']:,.0f} tokens/s |"
            for r in stages
        ),
        *(
            f"| the same dynamics step, {r['dims']} dims, on pretokenized clips (`data.train_tokens`) | "
            f"{r['clips_per_s']:.2f} clips/s = {r['clips_per_s'] / pixels['clips_per_s']:.1f}× the step on pixels |"
            for r in pretokenized
            for pixels in stages
            if pixels["stage"] == "dynamics" and pixels["dims"] == r["dims"]
        ),
        f"| tokenizer train step, tokenizer_tiny dims on 2-frame windows | {tok['frames_per_s']:.1f} frames/s, "
        f"{tok['tokens_per_s']:.0f} tokens/s |",
        f"| the same: achieved / matmul FLOP/s (probes either side of each step) | "
        f"{tok['fraction_of_matmul']:.2f} |",
        f"| dynamics train step (d {int(dyn['dim'])}) achieved / matmul FLOP/s (probes either side of each step) | "
        f"{dyn['fraction_of_matmul']:.2f} (target ≥ 0.8) |",
    ]
    if dyn_c:
        lines += [
            f"| the same with each ST block compiled (first step, compiling: {dyn_c['first_step_s']:.0f} s) | "
            f"{dyn_c['fraction_of_matmul']:.2f} (target ≥ 0.8) |"
        ]
    if dyn_plain:
        lines += [
            "| the same eager, the ST blocks without QK-norm and rotary positions (what those two cost) | "
            f"{dyn_plain['fraction_of_matmul']:.2f} |"
        ]
    lines += [f"| full / ST attention step time, T={int(r['T'])} | {r['full_over_st']:.2f}× |" for r in attn]
    lines += [
        f"| ST / full attention activation memory, T={int(r['T'])}: materialised / fused attention | "
        f"{r['st_over_full_memory_math']:.2f}× / {r['st_over_full_memory']:.2f}× (target ≤ 0.2× at T=16) |"
        for r in attn
    ]
    lines += [
        f"| ST / full attention peak tensor memory of a train step, T={int(r['T'])}: materialised / fused attention | "
        f"{r['st_peak_bytes_math'] / 2**20:.0f} / {r['full_peak_bytes_math'] / 2**20:.0f} MiB = "
        f"{r['st_over_full_peak_math']:.2f}× / {r['st_over_full_peak']:.2f}× (target ≤ 0.2× at T=16) |"
        for r in attn
    ]
    lines += [
        f"| the same at the paper's 23×40 tokens per frame (meta device, materialised), T={int(r['T'])} | "
        f"{r['st_over_full_memory']:.2f}× (target ≤ 0.2× at T=16) |"
        for r in attn_paper
    ]
    lines += [
        f"| play (tiny dims), 25 MaskGIT steps: cached / recomputed window | {play['cached_fps']:.2f} / {play['recompute_fps']:.2f} "
        f"frames/s = {play['cache_speedup']:.1f}× (target ≥ 10×; ≥ 10 FPS) |",
        *(
            [
                f"| the same, compiled (`sampling.compile`) | {play_c['cached_fps']:.2f} / "
                f"{play_c['recompute_fps']:.2f} frames/s = {play_c['cache_speedup']:.1f}× |"
            ]
            if play_c
            else []
        ),
        *(
            [
                f"| the same cached, compiled, under bf16 autocast (`sampling.precision=bf16`; this CPU "
                f"{'has' if result['cpu_bf16_units'] else 'lacks'} AVX-512 BF16) | {play_bf16['cached_fps']:.2f} frames/s "
                "(target ≥ 10 FPS) |"
            ]
            if play_bf16
            else []
        ),
        *(
            [
                f"| play at CoinRun dims (d 512 x 12): cached / recomputed | {play_coinrun['cached_fps']:.2f} / "
                f"{play_coinrun['recompute_fps']:.3f} frames/s = {play_coinrun['cache_speedup']:.1f}× |"
            ]
            if play_coinrun
            else []
        ),
        f"| data: streamed / consumed by the fastest train step | {data['stream_clips_per_s']:.0f} / {data['train_clips_per_s']:.0f} "
        f"clips/s = {data['ratio']:.1f}× (target ≥ 5×) |",
    ]
    table = "\n".join(lines)
    (out / "benchmark.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {out / 'benchmark.json'}, {out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
