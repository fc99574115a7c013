"""Play figures: frames/s of Genie.step, cached and recomputed, eager, compiled and under bf16."""

from __future__ import annotations

import time

import torch

from genie.models import TokenizerConfig, VideoTokenizer
from genie.models.dynamics import DynamicsModel

from .common import sync


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
    from genie.models.dynamics import DynamicsConfig
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
