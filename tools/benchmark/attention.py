"""ST vs full spatiotemporal attention: step time, kept activation memory, peak tensor memory."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from genie.memory import peak_tensor_bytes, saved_bytes
from genie.nn import STConfig, STTransformer

from .common import timeit


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
