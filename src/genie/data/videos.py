"""Your own videos → 10 FPS clip shards (the paper's Platformers pipeline, §3 "Data").

Every video is decoded with PyAV (the ``video`` extra), resampled to ``fps`` by timestamp (each output frame
is the source frame nearest to ``k / fps`` seconds after the first), fitted to ``size`` keeping its aspect
(centre-crop or pad), and cut into clips: ``mode="consecutive"`` takes back-to-back ``clip_frames`` windows;
``mode="segments"`` follows the paper (cut ``segment_frames``-long segments — 16 s at 10 FPS — and sample
``windows_per_segment`` random 16-frame windows from each). Videos that cannot be decoded, are too short or
are static are dropped with the reason in the manifest; static clips are dropped too. Whole videos go to
train or val (by a hash of their path), never split between them, so validation is unseen video.

Each clip gets cheap quality scores (:func:`clip_scores`: static-frame ratio, scene cuts, black frames,
overlay, spatial noise, motion energy) stored in its record and the manifest; ``tools/curate.py`` trains a
small classifier on them from human ratings and filters shards.

Resumable: videos are processed in groups (one shard per group, ``videos_per_shard`` videos each); a group
whose part file exists is not redone, so a killed run continues where it stopped. Groups run in parallel.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie.data.pipeline import resize_crop
from genie.data.shards import FPS, ShardWriter, atomic_write_text, claim_output_dir, clip_record, run_jobs
from genie.nn.options import size_pair

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


@dataclass
class VideoShardConfig:
    """How videos become clips (defaults: the paper's 160×90, 10 FPS, 16-frame clips)."""

    size: Sequence[int] = (90, 160)  # (H, W)
    fit: str = "crop"  # crop | pad
    fps: float = FPS
    clip_frames: int = 16
    mode: str = "consecutive"  # consecutive | segments
    segment_frames: int = 160  # segments: 16 s at 10 FPS ...
    windows_per_segment: int = 1  # ... then this many random clip windows from each
    val_fraction: float = 0.05
    videos_per_shard: int = 32
    static_threshold: float = 0.5  # mean |frame difference| (0-255) below which a frame pair counts as static
    max_static_ratio: float = 0.8  # clips with more static pairs than this are dropped
    seed: int = 0
    scores: dict[str, Any] = field(default_factory=dict)  # clip_scores keyword overrides
    # A source slower than ``fps`` can only fill the target rate by repeating frames: such videos are dropped
    # (with the reason) unless this is set.
    allow_low_fps: bool = False

    def __post_init__(self) -> None:
        self.size = size_pair(self.size, "size")
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if self.mode not in ("consecutive", "segments"):
            raise ValueError(f"mode must be 'consecutive' or 'segments', got {self.mode!r}")
        if self.fps <= 0 or self.clip_frames < 2:
            raise ValueError(
                f"need fps > 0 and clip_frames >= 2, got fps={self.fps} clip_frames={self.clip_frames}"
            )
        if self.mode == "segments" and self.segment_frames < self.clip_frames:
            raise ValueError(
                f"segment_frames ({self.segment_frames}) must be at least clip_frames ({self.clip_frames})"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("videos_per_shard", "windows_per_segment"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_static_ratio <= 1.0 or self.static_threshold < 0:
            raise ValueError(
                f"need max_static_ratio in [0, 1] and static_threshold >= 0, got {self.max_static_ratio} "
                f"and {self.static_threshold}"
            )


# -- finding videos -------------------------------------------------------------------------------------
def list_videos(inputs: str | Sequence[str]) -> list[Path]:
    """Video files from folders (searched recursively), globs, files, and ``.txt`` lists (one path per line)."""
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    found: list[Path] = []
    for item in map(str, items):
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_EXTENSIONS and q.is_file())
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            found += list_videos([ln for ln in lines if ln and not ln.startswith("#")])
        elif any(c in item for c in "*?["):
            found += sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no video, folder, glob match or list file at {item!r}")
    unique = list(dict.fromkeys(q.resolve() for q in found))
    if not unique:
        raise FileNotFoundError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found in {items}")
    return unique


# -- decoding -------------------------------------------------------------------------------------------
@dataclass
class DecodedFrame:
    index: int  # output frame number at the target fps
    time: float  # seconds after the video's first frame
    source_index: int  # frame number in the source video
    frame: np.ndarray  # HW3 uint8 at the target size


def source_fps(path: str | os.PathLike[str]) -> float:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        return float(rate) if rate else 0.0


def resampled_frames(
    path: str | os.PathLike[str], fps: float, size: Sequence[int], fit: str = "crop"
) -> Iterator[DecodedFrame]:
    """Decode ``path`` and yield frames at ``fps`` by timestamp (nearest source frame to ``k / fps``), fitted
    to ``size``. Streams: memory holds one source frame at a time."""
    import av

    th, tw = int(size[0]), int(size[1])

    def fitted(frame: Any) -> np.ndarray:
        rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)[None]
        return resize_crop(rgb, (th, tw), fit)[0].permute(1, 2, 0).numpy()

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start: float | None = None
        prev: tuple[float, int, Any] | None = None  # (time, source index, frame)
        k = 0
        for i, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else i / float(stream.average_rate or 30)
            if start is None:
                start = t
            t -= start
            # emit every target time that lies before this frame's time: nearest of prev and this one
            while k / fps < t:
                target = k / fps
                assert prev is not None
                pt, pi, pf = prev
                if target - pt <= t - target + 1e-6:  # ties (to rounding) go to the earlier frame
                    yield DecodedFrame(k, target, pi, fitted(pf))
                else:
                    yield DecodedFrame(k, target, i, fitted(frame))
                k += 1
            prev = (t, i, frame)
        if prev is not None:
            pt, pi, pf = prev
            while k / fps <= pt + 1e-9:  # targets at or before the last frame (exact hits)
                yield DecodedFrame(k, k / fps, pi, fitted(pf))
                k += 1


# -- quality scores ---------------------------------------------------------------------------------------
SCORE_NAMES = ("static_ratio", "scene_cuts", "black_ratio", "overlay_ratio", "spatial_noise", "motion")


def clip_scores(
    frames_THW3: np.ndarray,
    static_threshold: float = 0.5,
    cut_threshold: float = 0.5,
    black_level: float = 16.0,
    cut_ratio: float = 2.5,
    cut_min: float = 6.0,
) -> dict[str, float]:
    """Cheap per-clip quality heuristics (all in [0, 1] except ``scene_cuts``, a count):

    - ``static_ratio``: frame pairs whose mean |difference| (0-255) is below ``static_threshold``;
    - ``scene_cuts``: pairs whose colour histograms differ by more than ``cut_threshold`` (L1 / 2), or whose
      mean |difference| exceeds both ``cut_min`` and ``cut_ratio`` × (the clip's median difference + 1);
    - ``black_ratio``: frames whose mean brightness is below ``black_level``;
    - ``overlay_ratio``: textured pixels that never change while the clip moves (logos, HUDs, borders);
    - ``spatial_noise``: mean |difference| between horizontal neighbours / 255 (snow, noise, corrupt frames);
    - ``motion``: mean |frame difference| / 255.
    """
    x = frames_THW3.astype(np.float32)
    t = x.shape[0]
    diffs = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) if t > 1 else np.zeros(0, np.float32)
    hists = np.stack(
        [
            np.concatenate([np.histogram(f[..., c], bins=16, range=(0, 256))[0] for c in range(3)])
            for f in frames_THW3
        ]
    ).astype(np.float32)
    hists /= hists.sum(axis=1, keepdims=True) / 3
    hist_jump = np.abs(np.diff(hists, axis=0)).sum(axis=1) / 6 if t > 1 else np.zeros(0, np.float32)
    moving = diffs.mean() >= static_threshold if t > 1 else False
    median = float(np.median(diffs)) if t > 1 else 0.0
    still = (np.abs(np.diff(x, axis=0)).max(axis=(0, 3)) < 2.0) if t > 1 else np.ones(x.shape[1:3], bool)
    gray = x[0].mean(-1)
    edges = np.zeros(gray.shape, bool)  # textured pixels of the first frame (flat sky is not an overlay)
    edges[:, 1:] |= np.abs(np.diff(gray, axis=1)) > 24
    edges[1:, :] |= np.abs(np.diff(gray, axis=0)) > 24
    return {
        "static_ratio": float((diffs < static_threshold).mean()) if t > 1 else 1.0,
        "scene_cuts": float(
            ((hist_jump > cut_threshold) | (diffs > max(cut_min, cut_ratio * (median + 1)))).sum()
        ),
        "black_ratio": float((x.mean(axis=(1, 2, 3)) < black_level).mean()),
        "overlay_ratio": float((still & edges).sum() / max(edges.sum(), 1)) if moving else 0.0,
        "spatial_noise": float(np.abs(np.diff(x, axis=2)).mean() / 255),
        "motion": float(diffs.mean() / 255) if t > 1 else 0.0,
    }


# -- clips --------------------------------------------------------------------------------------------
def _video_seed(cfg: VideoShardConfig, key: str) -> int:
    return int(
        np.random.SeedSequence(
            [cfg.seed, int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)]
        ).generate_state(1)[0]
    )


def video_clips(
    path: str | os.PathLike[str], cfg: VideoShardConfig, key: str | None = None
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """``(frames_THW3, info)`` clips of one video (``info``: start time and frame, source frames, scores)."""
    n = cfg.clip_frames
    rng = np.random.default_rng(_video_seed(cfg, key or str(path)))
    group = n if cfg.mode == "consecutive" else cfg.segment_frames
    buffer: list[DecodedFrame] = []

    def windows(frames: list[DecodedFrame]) -> Iterator[list[DecodedFrame]]:
        if cfg.mode == "consecutive":
            if len(frames) == n:
                yield frames
            return
        if len(frames) < n:
            return
        starts = rng.choice(
            len(frames) - n + 1, size=min(cfg.windows_per_segment, len(frames) - n + 1), replace=False
        )
        for s in sorted(int(v) for v in starts):
            yield frames[s : s + n]

    def emit(frames: list[DecodedFrame]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for w in windows(frames):
            clip = np.stack([f.frame for f in w])
            info = {
                "start_time": round(w[0].time, 4),
                "start_frame": w[0].index,
                "source_frames": [f.source_index for f in w],
                "scores": clip_scores(clip, cfg.static_threshold, **cfg.scores),
            }
            yield clip, info

    for f in resampled_frames(path, cfg.fps, cfg.size, cfg.fit):
        buffer.append(f)
        if len(buffer) == group:
            yield from emit(buffer)
            buffer = []
    if cfg.mode == "segments":
        yield from emit(buffer)  # a last partial segment still gives windows when long enough


def split_of(key: str, val_fraction: float) -> str:
    """``val`` for a stable ``val_fraction`` of video keys (by hash), else ``train``."""
    h = int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12
    return "val" if h < val_fraction else "train"


def assign_splits(keys: Sequence[str], val_fraction: float) -> dict[str, str]:
    """Split by whole video; with two or more videos and ``val_fraction > 0`` at least one goes to val."""
    splits = {k: split_of(k, val_fraction) for k in keys}
    if val_fraction > 0 and len(keys) >= 2 and "val" not in splits.values():
        first = min(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
        splits[first] = "val"
    if len(keys) >= 2 and "train" not in splits.values():
        last = max(keys, key=lambda k: hashlib.sha1(k.encode()).hexdigest())
        splits[last] = "train"
    return splits


# -- shards ---------------------------------------------------------------------------------------------
def _process_group(
    cfg: VideoShardConfig, out: str, split: str, group: int, videos: list[tuple[str, str]]
) -> dict[str, Any]:
    """Make one shard from ``videos`` = [(key, path)]; returns (and writes) the group's part of the manifest."""
    name = f"{split}-{group:06d}"
    clips: list[dict[str, Any]] = []
    dropped: list[dict[str, str]] = []
    writer = ShardWriter(str(Path(out) / f"{split}-%06d.tar"), max_count=1 << 30, start_index=group)
    try:
        for key, path in videos:
            made, static, total = 0, 0, 0
            try:
                src_fps = source_fps(path)
                if 0 < src_fps < cfg.fps - 1e-3 and not cfg.allow_low_fps:
                    dropped.append(
                        {
                            "source": key,
                            "reason": f"low frame rate: {src_fps:g} FPS is below the target {cfg.fps:g} "
                            "(frames would repeat); pass --allow-low-fps to keep such videos",
                        }
                    )
                    continue
                for k, (frames, info) in enumerate(video_clips(path, cfg, key)):
                    total += 1
                    if info["scores"]["static_ratio"] > cfg.max_static_ratio:
                        static += 1
                        continue
                    clip_key = f"{hashlib.sha1(key.encode()).hexdigest()[:12]}_{k:05d}"
                    record = clip_record(
                        frames,
                        source=key,
                        fps=cfg.fps,
                        source_fps=round(src_fps, 4),
                        start_time=info["start_time"],
                        start_frame=info["start_frame"],
                        source_frames=info["source_frames"],
                        scores=info["scores"],
                    )
                    writer.write(clip_key, frames, record)
                    made += 1
                    clips.append(
                        {
                            "key": clip_key,
                            "shard": f"{name}.tar",
                            "source": key,
                            "start_time": info["start_time"],
                            "fps": cfg.fps,
                            "source_fps": round(src_fps, 4),
                            "height": frames.shape[1],
                            "width": frames.shape[2],
                            **info["scores"],
                        }
                    )
            except Exception as err:  # corrupt or unreadable: drop the (rest of the) video, keep going
                if not (
                    type(err).__module__.startswith("av")
                    or isinstance(err, OSError | ValueError | IndexError)
                ):
                    raise
                why = f"cannot decode: {type(err).__name__}: {err}"
                dropped.append(
                    {"source": key, "reason": why if not made else f"{why} (kept the {made} clips before)"}
                )
                continue
            if made == 0:
                if total == 0:
                    reason = f"too short: fewer than {cfg.clip_frames} frames at {cfg.fps:g} FPS"
                else:
                    reason = f"static: all {static} clips below the motion threshold"
                dropped.append({"source": key, "reason": reason})
        writer.close()
    except BaseException:
        writer.abort()
        raise
    part = {
        "split": split,
        "group": group,
        "shards": [Path(p).name for p in writer.paths],
        "clips": clips,
        "dropped": dropped,
    }
    parts = Path(out) / "parts"
    parts.mkdir(exist_ok=True)
    atomic_write_text(parts / f"{name}.json", json.dumps(part))  # the group is done once this exists
    return part


def write_video_shards(
    inputs: str | Sequence[str],
    out_dir: str | os.PathLike[str],
    cfg: VideoShardConfig | None = None,
    workers: int = 1,
    root: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Videos (folders, globs, files, .txt lists) → ``train-*.tar`` / ``val-*.tar`` + ``manifest.json|csv``.

    Video keys (the ``source`` of every clip, and what the split hashes) are paths relative to ``root``
    (default: the common folder of all videos). Re-running keeps finished groups.
    """
    cfg = cfg or VideoShardConfig()
    videos = list_videos(inputs)
    base = Path(root).resolve() if root else Path(os.path.commonpath([str(v.parent) for v in videos]))
    keys = [os.path.relpath(v, base) for v in videos]
    splits = assign_splits(keys, cfg.val_fraction)
    out = Path(out_dir)
    settings = {"generator": "genie.data.videos", "version": 1, **asdict(cfg), "size": list(cfg.size)}
    settings["videos"] = hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest()
    claim_output_dir(out, settings, "shards made from other videos or")
    jobs: list[tuple[str, int, list[tuple[str, str]]]] = []
    for split in ("train", "val"):
        members = sorted((k, str(v)) for k, v in zip(keys, videos, strict=True) if splits[k] == split)
        for g in range(0, len(members), cfg.videos_per_shard):
            jobs.append((split, g // cfg.videos_per_shard, members[g : g + cfg.videos_per_shard]))
    parts_dir = out / "parts"
    todo = [(cfg, str(out), *j) for j in jobs if not (parts_dir / f"{j[0]}-{j[1]:06d}.json").exists()]
    run_jobs(_process_group, todo, len(jobs), workers, progress)
    parts = [json.loads((parts_dir / f"{s}-{g:06d}.json").read_text()) for s, g, _ in jobs]
    clips = [c for p in parts for c in p["clips"]]
    manifest = {
        "settings": settings,
        "shards": [s for p in parts for s in p["shards"]],
        "videos": {
            "train": sum(v == "train" for v in splits.values()),
            "val": sum(v == "val" for v in splits.values()),
        },
        "clips": {
            split: sum(1 for p in parts if p["split"] == split for _ in p["clips"])
            for split in ("train", "val")
        },
        "dropped": [d for p in parts for d in p["dropped"]],
        "clip_index": clips,
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    columns = ["key", "shard", "source", "start_time", "fps", "source_fps", "height", "width", *SCORE_NAMES]
    tmp = out / "manifest.csv.tmp"
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for c in clips:
            w.writerow({k: c[k] for k in columns})
    os.replace(tmp, out / "manifest.csv")
    return manifest
