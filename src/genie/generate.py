"""Generate a rollout from one prompt image: ``python -m genie.generate checkpoint=PATH prompt=IMAGE [overrides]``.

The prompt (PNG/JPG of any size; resized and centre-cropped to the model's frame size, with a message) starts
the world; ``actions`` drives it: a list of latent action ids, ``random``, or ``each`` (one world per latent
action, that action held throughout — what each action does, side by side). Writes ``rollout.gif``,
``rollout.mp4`` and ``rollout_strip.png`` (frames left to right; one row per world).
Without ``prompt`` the first frame of a held-out clip from ``shards`` is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie.media import load_image, save_gif, save_mp4, save_strip, video_grid
from genie.models.genie import Genie

MAX_STEPS = 100_000  # frames one command generates: more is a typo, not a rollout


def parse_actions(spec: Any, num_actions: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Action ids ``(B, N)`` from a spec: a list of ids (one world), ``"random"``, or ``"each"``."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "random":
            g = torch.Generator().manual_seed(seed)
            return torch.randint(0, num_actions, (1, steps), generator=g)
        if text == "each":
            return torch.arange(num_actions)[:, None].expand(num_actions, steps).clone()
        try:
            spec = [int(a) for a in text.replace(",", " ").split()]
        except ValueError:
            raise ValueError(
                f"actions={spec!r}: give latent action ids (e.g. [0,3,3,1]), 'random' or 'each'"
            ) from None
    ids = torch.as_tensor(list(spec) if isinstance(spec, Sequence) else spec).long().reshape(1, -1)
    if ids.numel() == 0:
        raise ValueError("actions is empty; give at least one latent action id")
    if ids.min() < 0 or ids.max() >= num_actions:
        raise ValueError(
            f"action ids must be in [0, {num_actions}) for this model, got {ids.flatten().tolist()}"
        )
    return ids


def prompt_frame(genie: Genie, prompt: str | Path | None, shards: str | None) -> np.ndarray:
    """The prompt as ``frame_HW3`` uint8 at the model's size: an image file, or a held-out clip's first frame."""
    if prompt is not None:
        frame, note = load_image(prompt, genie.image_size)
        if note:
            print(f"[genie] {note}")
        return frame
    if not shards:
        raise ValueError(
            "no prompt: set prompt=IMAGE (PNG/JPG) or shards=PATTERN to take a held-out first frame"
        )
    from genie.data.pipeline import ClipStream

    stream = ClipStream(shards, frames=1, size=genie.image_size)
    clip = next(iter(stream), None)
    if clip is None:
        raise ValueError(f"no readable clip in {shards}; set prompt=IMAGE instead")
    return np.asarray((clip["video"][0] * 255).round().byte().permute(1, 2, 0).numpy())


@torch.no_grad()
def generate(genie: Genie, frame: np.ndarray, actions: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Roll out every row of ``actions`` from the same prompt frame: ``video_B(N+1)CHW`` in [0, 1]."""
    video = genie.to_video(frame).expand(actions.shape[0], -1, -1, -1, -1)
    return genie.rollout(actions.to(genie.device), prompt=video, seed=seed)


def write_rollout(
    video: torch.Tensor, out_dir: str | Path, name: str = "rollout", fps: float = 10, scale: int = 4
) -> dict[str, Path]:
    """GIF, MP4 and strip PNG of ``video_BTCHW`` (one row per world), upscaled ``scale``× (nearest)."""
    out = Path(out_dir)
    grid = video_grid([video], scale=scale)  # T, B·H, W, 3
    return {
        "gif": save_gif(grid, out / f"{name}.gif", fps=fps),
        "mp4": save_mp4(grid, out / f"{name}.mp4", fps=fps),
        "strip": save_strip(grid, out / f"{name}_strip.png"),
    }


def genie_and_prompt(cfg: Any) -> tuple[Genie, np.ndarray]:
    """The world and its prompt frame from a generate/play config (``checkpoint``: a dynamics checkpoint or
    glob, or a folder written by ``tools/export.py``; ``sampling``, ``device``, ``prompt``, ``shards``)."""
    from omegaconf import OmegaConf

    from genie.models.io import CONFIG_FILE, resolve_checkpoint

    if cfg.checkpoint and (Path(str(cfg.checkpoint)) / CONFIG_FILE).is_file():  # an exported world
        genie = Genie.from_pretrained(str(cfg.checkpoint), device=cfg.device)
    else:
        ckpt = resolve_checkpoint(cfg.checkpoint, "dynamics", "checkpoint")
        genie = Genie.from_checkpoints(ckpt, device=cfg.device)
    given = OmegaConf.to_container(cfg.sampling) or {}
    assert isinstance(given, dict)
    overrides = {str(k): v for k, v in given.items() if v is not None}
    genie.sampling = dataclasses.replace(genie.sampling, **overrides)
    return genie, prompt_frame(genie, cfg.prompt, cfg.shards)


def command(cfg: Any) -> None:
    from omegaconf import OmegaConf

    steps, fps = cfg.steps, cfg.fps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(
            f"steps={steps!r}: give the number of frames to generate, a whole number in [1, {MAX_STEPS}]"
        )
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 100:
        raise ValueError(f"fps={fps!r}: give the frame rate of the written videos, a number in (0, 100]")
    genie, frame = genie_and_prompt(cfg)
    spec = OmegaConf.to_container(cfg.actions) if OmegaConf.is_list(cfg.actions) else cfg.actions
    actions = parse_actions(spec, genie.num_actions, steps, cfg.seed)
    video = generate(genie, frame, actions, cfg.seed)
    paths = write_rollout(video, cfg.paths.output_dir, fps=fps, scale=cfg.scale)
    print(f"[genie] {actions.shape[0]} world(s) x {actions.shape[1]} steps from one prompt:")
    for kind, path in paths.items():
        print(f"[genie]   {kind}: {path}")


def main() -> None:
    from genie.config import hydra_entry

    hydra_entry("generate", command, also=(RuntimeError,))()


if __name__ == "__main__":
    main()
