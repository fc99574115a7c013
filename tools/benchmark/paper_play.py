"""The paper's dynamics model at play: frames/s at the paper's grid against the compute limit.

The limit (issue #31): generating one frame takes ``passes`` MaskGIT passes over the frame's tokens, each
~``2 × params × tokens`` FLOPs, so at the GPU's measured matmul rate a frame cannot take less than
``2 × params × tokens × passes / rate`` seconds. (Each frame also has one commit pass writing its keys and
values to the cache, and attention to the 15 past frames: both are left out, so the limit is generous.)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .common import sync

PAPER_GRID = (23, 40)  # 160x90 frames in 4-px patches: 920 tokens
PAPER_CODES = 1024
PAPER_ACTIONS = 8


def play_flops_per_frame(params: int, tokens_per_frame: int, passes: int) -> float:
    """``2 × params × tokens × passes``: the arithmetic of one generated frame (the limit's numerator)."""
    return 2.0 * params * tokens_per_frame * passes


def paper_play(
    experiment: str = "dynamics_11b",
    device: str = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    matmul_flops_per_s: float | None = None,
    steps: int = 25,
    context_frames: int = 16,
    timed: int = 3,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Frames/s of ``experiment``'s dynamics model (random weights in ``dtype``) generating at the paper's grid
    with ``context_frames`` of memory (the window full: the steady state) and ``steps`` MaskGIT steps, the
    cached rollout as ``genie.play`` runs it (a CUDA graph on a GPU); with ``matmul_flops_per_s`` also the compute
    limit in frames/s and the fraction of it reached."""
    from omegaconf import OmegaConf

    from genie.config import compose_config
    from genie.models.dynamics import DynamicsConfig, DynamicsModel
    from genie.models.sampling import Rollout, SamplingConfig

    values = OmegaConf.to_container(
        compose_config([f"+experiment={experiment}", *overrides]).model.model, resolve=True
    )
    assert isinstance(values, dict)
    defaults = {"num_codes": PAPER_CODES, "grid": PAPER_GRID, "num_actions": PAPER_ACTIONS}
    values.update({k: v for k, v in defaults.items() if values.get(k) is None})
    cfg = DynamicsConfig(**{str(k): v for k, v in values.items()})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = DynamicsModel(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    params = sum(p.numel() for p in model.parameters())
    h, w = cfg.hw
    gpu = device.startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    rollout = Rollout(
        model, SamplingConfig(steps=steps, context_frames=context_frames, compile=False, cuda_graph=gpu)
    )
    past = context_frames - 1
    with torch.device(device):
        rollout.start(
            torch.randint(0, cfg.num_codes, (1, past, h, w)), torch.zeros(1, past - 1, dtype=torch.long)
        )
        actions = [torch.tensor([i % cfg.num_actions]) for i in range(timed + 2)]
    generator = torch.Generator(device).manual_seed(0)
    for a in actions[:2]:  # warm-up: the window is full from here on (on a GPU: the graph is captured)
        rollout.step(a, generator=generator)
    seconds = []
    for a in actions[2:]:
        sync(device)
        start = time.perf_counter()
        rollout.step(a, generator=generator)
        sync(device)
        seconds.append(time.perf_counter() - start)
    fps = 1 / statistics.median(seconds)
    flops = play_flops_per_frame(params, h * w, steps)
    out: dict[str, Any] = {
        "experiment": experiment,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "params": params,
        "tokens_per_frame": h * w,
        "maskgit_steps": steps,
        "context_frames": context_frames,
        "frames_per_s": fps,
        "flops_per_frame": flops,
    }
    if gpu:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if matmul_flops_per_s:
        out["limit_frames_per_s"] = matmul_flops_per_s / flops
        out["fraction_of_limit"] = fps / out["limit_frames_per_s"]
    return out
