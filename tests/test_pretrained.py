"""The shipped world (pretrained/platformer, made by `make pretrained`): it loads without Lightning or Hydra,
plays from its prompt, its actions change what happens, and the play command opens the folder."""

from __future__ import annotations

from pathlib import Path

import torch

from genie.media import load_image
from genie.models import Genie

WORLD = Path(__file__).resolve().parents[1] / "pretrained" / "platformer"


def test_the_shipped_world_loads_and_plays() -> None:
    genie = Genie.from_pretrained(WORLD)
    frame, note = load_image(WORLD / "prompt.png", genie.image_size)
    assert note is None  # the prompt is at the model's size
    genie.reset(frame, seed=0)
    video = genie.rollout([0, 1, 2])
    assert video.shape == (1, 4, 3, *genie.image_size)
    assert torch.isfinite(video).all() and video.min() >= 0 and video.max() <= 1
    from genie.generate import generate, parse_actions

    worlds = generate(genie, frame, parse_actions("each", genie.num_actions, 4), seed=0)  # one per action
    last = worlds[:, -1]
    assert (last[:, None] - last[None]).abs().amax(dim=(2, 3, 4)).max() > 0.1  # the actions matter


def test_the_play_command_opens_an_exported_folder() -> None:
    from genie.config import compose_config
    from genie.generate import genie_and_prompt

    cfg = compose_config([f"checkpoint={WORLD}", f"prompt={WORLD / 'prompt.png'}"], "play")
    genie, frame = genie_and_prompt(cfg)
    assert frame.shape == (*genie.image_size, 3) and genie.lam is not None
