"""Reading prompt images and writing videos (GIF, MP4, strip PNG): numpy/PIL/PyAV, no Lightning.

Every writer goes to a temporary name first and renames, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import os
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor


def to_uint8_frames(video_TCHW: Tensor) -> np.ndarray:
    """[0, 1] float frames → ``frames_THW3`` uint8."""
    return (video_TCHW.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def video_grid(videos: list[Tensor], scale: int = 2) -> np.ndarray:
    """Stack videos (each ``video_BTCHW``, same T) as rows: returns ``frames_THW3`` where each frame is a
    grid with one row per (video, batch item) pair."""
    rows = []
    for v in videos:
        for b in range(v.shape[0]):
            rows.append(to_uint8_frames(v[b]))
    grid = np.concatenate(rows, axis=1)  # stack along height
    if scale > 1:
        grid = grid.repeat(scale, axis=1).repeat(scale, axis=2)
    return grid


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def gif_bytes(frames_THW3: np.ndarray, fps: float = 10) -> bytes:
    """An animated, looping GIF of ``frames_THW3`` uint8, in memory."""
    images = [Image.fromarray(f) for f in frames_THW3]
    buf = io.BytesIO()
    images[0].save(
        buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
    )
    return buf.getvalue()


def save_gif(frames_THW3: np.ndarray, path: str | Path, fps: float = 10) -> Path:
    """Write an animated GIF (looping) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_bytes(gif_bytes(frames_THW3, fps))
    os.replace(tmp, path)
    return path


def save_mp4(frames_THW3: np.ndarray, path: str | Path, fps: float = 10) -> Path:
    """Write an H.264 MP4 (yuv420p, so any player opens it) with PyAV (the ``video`` extra)."""
    try:
        import av
    except ImportError as err:
        raise ImportError("writing MP4 needs PyAV: pip install 'genie-world-model[video]'") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames_THW3)
    h, w = frames.shape[1:3]
    # yuv420p needs even sides: pad by repeating the last row/column
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    tmp = _tmp(path)
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path


def save_strip(frames_THW3: np.ndarray, path: str | Path, gap: int = 2) -> Path:
    """All frames side by side in one PNG (a white ``gap`` between them); ``frames_RTHW3`` gives one row per
    clip (a contact sheet)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.asarray(frames_THW3)
    rows = frames if frames.ndim == 5 else frames[None]
    r, t, h, w = rows.shape[:4]
    sheet = np.full((r * h + (r - 1) * gap, t * w + (t - 1) * gap, 3), 255, np.uint8)
    for j, row in enumerate(rows):
        for i, f in enumerate(row):
            sheet[j * (h + gap) : j * (h + gap) + h, i * (w + gap) : i * (w + gap) + w] = f
    tmp = _tmp(path)
    Image.fromarray(sheet).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def fit_image(image: Image.Image, size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """Resize (short side) and centre-crop to ``size`` = (H, W) exactly as training frames are
    (:func:`genie.data.pipeline.resize_crop`): ``frame_HW3`` uint8 and what was done."""
    from genie.data.pipeline import resize_crop

    frame = np.array(image.convert("RGB"), dtype=np.uint8)  # (a writable copy: torch wraps it)
    h, w = frame.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return frame, None
    fitted = resize_crop(torch.from_numpy(frame).permute(2, 0, 1)[None], (th, tw))[0]
    return fitted.permute(
        1, 2, 0
    ).numpy(), f"prompt image {w}x{h} resized and centre-cropped to {tw}x{th} (WxH)"


def read_image(source: str | Path | bytes, size: tuple[int, int], what: str) -> tuple[np.ndarray, str | None]:
    """An image file (PNG/JPG/…), given as a path or its bytes, as ``frame_HW3`` uint8 at ``size`` with a
    message when it was fitted; anything unreadable - not an image, truncated, or a decompression bomb (a
    small file declaring more pixels than Pillow's limit) - is a one-line ``ValueError`` naming ``what``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                return fit_image(image, size)
    except (
        UnidentifiedImageError,
        OSError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise ValueError(f"cannot read {what} ({err}); pass a PNG or JPG image") from None


def load_image(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """A prompt image file (PNG/JPG/…) as ``frame_HW3`` uint8 at ``size``, with a message when it was fitted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt image {path} does not exist; pass a PNG or JPG file")
    return read_image(path, size, f"prompt image {path}")
