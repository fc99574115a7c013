"""genie.generate and genie.media: prompt images, action specs, and valid GIF/MP4/PNG output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genie.generate import generate, parse_actions, write_rollout
from genie.media import load_image, save_mp4
from genie.models import Genie
from genie.models.sampling import SamplingConfig
from tiny import tiny_models


def tiny_genie() -> Genie:
    tok, lam, dyn = tiny_models()
    return Genie(tok, dyn, lam, SamplingConfig(steps=2, temperature=1.0, context_frames=4))


def test_parse_actions() -> None:
    assert parse_actions([0, 3, 1], 4, 9).tolist() == [[0, 3, 1]]
    assert parse_actions("2, 1 0", 4, 9).tolist() == [[2, 1, 0]]
    each = parse_actions("each", 4, 5)
    assert each.shape == (4, 5) and (each[:, 0] == torch.arange(4)).all() and (each == each[:, :1]).all()
    rnd = parse_actions("random", 4, 7, seed=1)
    assert rnd.shape == (1, 7) and torch.equal(rnd, parse_actions("random", 4, 7, seed=1))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        parse_actions([0, 4], 4, 3)
    with pytest.raises(ValueError, match="'random' or 'each'"):
        parse_actions("jump", 4, 3)


def test_prompt_images_of_any_size_are_fitted(tmp_path: Path) -> None:
    path = tmp_path / "wide.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(path)
    frame, note = load_image(path, (16, 16))
    assert frame.shape == (16, 16, 3) and frame.dtype == np.uint8
    assert note is not None and "centre-cropped" in note
    Image.fromarray(frame).save(tmp_path / "exact.png")
    assert load_image(tmp_path / "exact.png", (16, 16))[1] is None
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read prompt image"):
        load_image(tmp_path / "bad.png", (16, 16))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "missing.png", (16, 16))


def test_generate_writes_valid_gif_mp4_and_strip(tmp_path: Path) -> None:
    import av

    genie = tiny_genie()
    frame = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    actions = parse_actions("each", genie.num_actions, 5)
    video = generate(genie, frame, actions, seed=0)
    assert video.shape == (4, 6, 3, 16, 16)
    assert torch.equal(video, generate(genie, frame, actions, seed=0))  # deterministic under a seed
    paths = write_rollout(video, tmp_path, scale=2)
    with Image.open(paths["gif"]) as gif:
        assert gif.n_frames == 6 and gif.size == (32, 4 * 32)
    with Image.open(paths["strip"]) as strip:
        assert strip.size[1] == 4 * 32 and strip.size[0] == 6 * 32 + 5 * 2
    with av.open(str(paths["mp4"])) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 6 and (frames[0].width, frames[0].height) == (32, 128)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_mp4_pads_odd_sizes(tmp_path: Path) -> None:
    import av

    path = save_mp4(np.zeros((3, 15, 17, 3), np.uint8), tmp_path / "odd.mp4", fps=10)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert (frame.width, frame.height) == (18, 16)
