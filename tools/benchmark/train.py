"""Train-step figures: each stage's step as its experiment configures it, and the FLOP fraction harnesses."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from genie.models import TokenizerConfig, VideoTokenizer
from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.nn import compile_blocks

from .common import against_matmul, sync


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


def _dynamics_train(
    d: int, quick: bool, compiled: bool = False, plain: bool = False
) -> tuple[DynamicsModel, Any, int, int]:
    """A d-wide, 2-block dynamics model (8×8 tokens, 1024 codes), its fused AdamW and one MaskGIT train step:
    ``(model, step, batch, frames)``. ``plain``: the ST blocks without QK-norm and rotary positions."""
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

    return model, step, b, t


def dynamics_step(quick: bool, n: int, compiled: bool = False, plain: bool = False) -> dict[str, float]:
    """MaskGIT train step of a d=512 dynamics model (d 256 with ``quick``; fp32): the CPU step should be
    matmul-bound.
    ``compiled``: each ST block through ``torch.compile`` (``callbacks.scale.compile_blocks=true``).
    ``plain``: the ST blocks without QK-norm and rotary positions (what those two cost)."""
    d = 256 if quick else 512
    model, step, b, t = _dynamics_train(d, quick, compiled, plain)
    start = time.perf_counter()
    step()  # (the compile, when compiled)
    first = time.perf_counter() - start
    flops = dynamics_step_flops(model, b, t)
    r = against_matmul(step, flops, n, rounds=3 if quick else 7)
    sec = r["seconds"]
    return {
        **r,
        "tokens_per_s": b * t * 64 / sec,
        "flops_per_s": flops / sec,
        "dim": d,
        "first_step_s": first,
    }


def genie_over_plain(d: int, quick: bool, rounds: int = 9) -> dict[str, float]:
    """The eager train step of genie's ST blocks against the same blocks plain (no QK-norm, no rotary
    positions: a reference ST-transformer), at width ``d``: their steps alternate, two at a time, so that both
    see the same machine; ``ratio`` is genie's speed over the plain one's (medians)."""
    steps = {name: _dynamics_train(d, quick, plain=name == "plain")[1] for name in ("genie", "plain")}
    secs: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up: first-call allocations
        step()
    for _ in range(3 if quick else rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            step()
            secs[name].append((time.perf_counter() - start) / 2)
    med = {name: sorted(s)[len(s) // 2] for name, s in secs.items()}
    return {"dim": d, "genie_s": med["genie"], "plain_s": med["plain"], "ratio": med["plain"] / med["genie"]}


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


def dynamics_step_flops(model: DynamicsModel, b: int, t: int) -> float:
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
