"""The GPU figures (``--device cuda``): bf16 matmul rate, train MFU, CoinRun stage steps, play."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genie.data.shards import atomic_write_text
from genie.models.dynamics import DynamicsModel

from .common import timeit
from .paper_play import paper_play
from .play import play_speed
from .train import STAGE_EXPERIMENTS, dynamics_step_flops, stage_step


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
    from genie.models.dynamics import DynamicsConfig

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
    flops = dynamics_step_flops(model, batch, frames)
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


def gpu_main(out: Path, train: bool = True, play: bool = True, paper: bool | None = None) -> None:
    """Every GPU figure asked for; ``paper`` (default: with ``play``): the paper-scale play rows."""
    name = torch.cuda.get_device_name()
    datasheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    peak = gpu_matmul_flops()
    result: dict[str, Any] = {"torch": torch.__version__, "device": name, "bf16_matmul_flops_per_s": peak}
    lines = ["| figure (GPU) | value |", "|---|---|", f"| device | {name} |"]
    lines.append(f"| bf16 matmul (8192³), measured | {peak / 1e12:.0f} TFLOP/s |")

    def write() -> None:
        atomic_write_text(out / "gpu_benchmark.json", json.dumps(result, indent=2))
        atomic_write_text(out / "gpu_benchmark.md", "\n".join(lines) + "\n")

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
    if paper if paper is not None else play:
        paper_rows(result, lines, write, peak)
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


def paper_rows(result: dict[str, Any], lines: list[str], write: Callable[[], None], peak: float) -> None:
    """``dynamics_2_7b`` and ``dynamics_11b`` playing at the paper's grid in bf16 against the compute limit."""
    for experiment in ("dynamics_2_7b", "dynamics_11b"):
        try:
            r = paper_play(experiment, "cuda", torch.bfloat16, peak)
        except Exception as e:  # report it and go on to the next figure
            lines.append(f"| play, `{experiment}` | failed: {type(e).__name__}: {str(e)[:160]} |")
            write()
            torch.cuda.empty_cache()
            continue
        result[f"paper_play_{experiment}"] = r
        lines.append(
            f"| play, `{experiment}` ({r['params'] / 1e9:.1f}B params, bf16 weights), 23×40 tokens, 16-frame memory, "
            f"25 MaskGIT steps, CUDA graph | {r['frames_per_s']:.2f} frames/s; limit {r['limit_frames_per_s']:.2f} "
            f"(2 × params × tokens × 25 passes at the measured bf16 matmul rate) = **{r['fraction_of_limit']:.2f} "
            f"of the limit** (goal ≥ 0.8); peak memory {r['peak_memory_gib']:.0f} GiB |"
        )
        write()
        torch.cuda.empty_cache()
