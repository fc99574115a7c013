#!/usr/bin/env python
"""Benchmarks, measured in one run so ratios are stable on a noisy machine; writes JSON + a markdown table.

    python tools/benchmark.py [--out bench/] [--quick]

Figures:
- matmul FLOP/s of this machine (fp32; the yardstick for "how close to the limit");
- tokenizer train step (tokenizer_tiny dims): frames/s and achieved FLOP/s as a fraction of matmul FLOP/s;
- ST attention vs full spatiotemporal attention: train step time at T = 4, 8, 16 (linear vs quadratic in T).
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

from genie.models import TokenizerConfig, VideoTokenizer
from genie.nn import STConfig, STTransformer


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


def matmul_flops(n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timeit(lambda: a @ b, repeat=10)


def tokenizer_step(quick: bool) -> dict[str, float]:
    st = {"dim": 128, "depth": 1, "num_heads": 4}
    cfg = TokenizerConfig(image_size=(64, 64), patch=4, num_codes=1024, code_dim=32, encoder=st, decoder=st)
    model = VideoTokenizer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    video = torch.rand(8 if quick else 16, 2, 3, 64, 64)

    def step() -> None:
        out = model(video)
        loss = F.mse_loss(out.recon, video) + out.vq.loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    sec = timeit(step, repeat=3 if quick else 5)
    frames = video.shape[0] * video.shape[1]
    tokens = frames * cfg.grid[0] * cfg.grid[1]
    dense = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "codebook" not in n)
    # 6·params·tokens for the dense layers, plus attention scores (QKᵀ and AV: 4·S·d per token and layer, ×3)
    s, d = cfg.grid[0] * cfg.grid[1], st["dim"]
    flops = 6 * dense * tokens + 3 * 4 * s * d * tokens * (st["depth"] * 2)
    return {
        "seconds": sec,
        "frames_per_s": frames / sec,
        "tokens_per_s": tokens / sec,
        "flops_per_s": flops / sec,
    }


def st_vs_full(quick: bool) -> list[dict[str, float]]:
    rows = []
    for t in (4, 8) if quick else (4, 8, 16):
        row: dict[str, float] = {"T": t}
        for mode in ("st", "full"):
            model = STTransformer(STConfig(dim=128, depth=2, num_heads=4, attention=mode))  # type: ignore[arg-type]
            x = torch.randn(2, t, 64, 128)

            def step(model: STTransformer = model, x: torch.Tensor = x) -> None:
                model(x, (8, 8)).square().mean().backward()

            row[f"{mode}_seconds"] = timeit(step, warmup=1, repeat=3)
        row["full_over_st"] = row["full_seconds"] / row["st_seconds"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench", help="folder for benchmark.json and benchmark.md")
    p.add_argument("--quick", action="store_true", help="smaller shapes (seconds, for tests)")
    a = p.parse_args()
    torch.manual_seed(0)
    peak = matmul_flops(512 if a.quick else 1024)
    tok = tokenizer_step(a.quick)
    attn = st_vs_full(a.quick)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_flops_per_s": peak,
        "tokenizer_train_step": {**tok, "fraction_of_matmul": tok["flops_per_s"] / peak},
        "st_vs_full_attention": attn,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(result, indent=2))
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| matmul fp32 | {peak / 1e9:.1f} GFLOP/s |",
        f"| tokenizer_tiny train step | {tok['frames_per_s']:.1f} frames/s, {tok['tokens_per_s']:.0f} tokens/s |",
        f"| tokenizer_tiny achieved / matmul FLOP/s | {tok['flops_per_s'] / peak:.2f} |",
    ]
    lines += [f"| full / ST attention step time, T={int(r['T'])} | {r['full_over_st']:.2f}× |" for r in attn]
    table = "\n".join(lines)
    (out / "benchmark.md").write_text(table + "\n")
    print(table)
    print(f"\nwritten: {out / 'benchmark.json'}, {out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
