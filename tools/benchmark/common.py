"""What every benchmark family shares: timing, the machine's matmul rate (the yardstick)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from genie.machine import matmul_flops, timeit

__all__ = ["against_matmul", "matmul_flops", "sync", "timeit"]  # the two timers live in genie.machine


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


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
