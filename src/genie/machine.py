"""The machine's speed as one number: the fp32 rate of a square matrix product on the CPU at torch's thread
count. The benchmarks divide every figure by it, and the demo records it beside its wall time, so that a time
measured on a slower machine reads as one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def timeit(fn: Callable[[], Any], warmup: int = 2, repeat: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` timed calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def matmul_flops(n: int = 1024, repeat: int = 10) -> float:
    """FLOP/s of an ``n``×``n`` by ``n``×``n`` fp32 product on the CPU: the median of ``repeat`` timed calls
    after one untimed call."""
    if n < 1 or repeat < 1:
        raise ValueError(f"matmul_flops needs n >= 1 and repeat >= 1, got n={n}, repeat={repeat}")
    g = torch.Generator().manual_seed(0)  # its own generator: a probe leaves the global random state alone
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    return 2 * n**3 / timeit(lambda: a @ b, warmup=1, repeat=repeat)
