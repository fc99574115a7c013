"""Look inside a shard set: counts, frame sizes, fps, clip lengths, action histogram, corrupt shards, and a
contact sheet of random clips (``tools/inspect_shards.py``)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie.data.pipeline import expand_shards, resize_crop
from genie.data.shards import read_shard
from genie.media import save_strip


def inspect_shards(
    shards: str | Sequence[str],
    sheet: str | os.PathLike[str] | None = None,
    sheet_clips: int = 8,
    sheet_frames: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Read every clip of ``shards`` once; returns the summary (and writes the contact sheet PNG if asked)."""
    paths = expand_shards(shards)
    if not paths:
        raise FileNotFoundError(f"no shards match {shards!r}; check the path or pattern")
    rng = np.random.default_rng(seed)
    splits: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    fps: Counter[str] = Counter()
    lengths: Counter[int] = Counter()
    actions: Counter[int] = Counter()
    sources: set[str] = set()
    corrupt: list[dict[str, str]] = []
    picked: list[np.ndarray] = []
    seen = 0
    for path in paths:
        name = Path(path).name
        try:
            clips = list(read_shard(path))
        except Exception as err:  # truncated tar, bad npz, bad json: report and go on
            corrupt.append({"shard": name, "error": f"{type(err).__name__}: {err}"})
            continue
        for _, frames, record in clips:
            splits[name.split("-")[0] if "-" in name else "?"] += 1
            t, h, w = frames.shape[:3]
            sizes[f"{w}x{h}"] += 1
            fps[f"{record.get('fps', '?')}"] += 1
            lengths[t] += 1
            actions.update(int(a) for a in record.get("actions", []))
            sources.add(str(record.get("source", "?")))
            seen += 1  # reservoir sampling: every clip equally likely on the sheet
            if len(picked) < sheet_clips:
                picked.append(frames)
            elif (j := int(rng.integers(seen))) < sheet_clips:
                picked[j] = frames
    summary: dict[str, Any] = {
        "shards": len(paths),
        "clips": sum(splits.values()),
        "clips_by_split": dict(splits),
        "sources": len(sources),
        "frame_sizes": dict(sizes),
        "fps": dict(fps),
        "frames_per_clip": dict(lengths),
        "actions": dict(sorted(actions.items())),
        "corrupt": corrupt,
    }
    if sheet is not None and picked:
        summary["sheet"] = str(write_sheet(picked, sheet, sheet_frames))
    return summary


def write_sheet(clips: Sequence[np.ndarray], path: str | os.PathLike[str], frames: int = 8) -> Path:
    """One row per clip, ``frames`` evenly spaced frames each, all at the first clip's frame size."""
    h, w = clips[0].shape[1:3]
    rows = []
    for clip in clips:
        idx = np.linspace(0, clip.shape[0] - 1, min(frames, clip.shape[0])).round().astype(int)
        sel = torch.from_numpy(np.ascontiguousarray(clip[idx])).permute(0, 3, 1, 2)
        rows.append(resize_crop(sel, (h, w)).permute(0, 2, 3, 1).numpy())
    t = min(r.shape[0] for r in rows)
    return save_strip(np.stack([r[:t] for r in rows]), Path(path))


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"shards: {s['shards']}  clips: {s['clips']}  "
        + "  ".join(f"{k}: {v}" for k, v in sorted(s["clips_by_split"].items()))
        + f"  sources: {s['sources']}",
        f"frame size (WxH): {s['frame_sizes']}  fps: {s['fps']}  frames per clip: {s['frames_per_clip']}",
    ]
    if s["actions"]:
        total = sum(s["actions"].values())
        hist = "  ".join(f"{a}:{n / total:.1%}" for a, n in s["actions"].items())
        lines.append(f"actions ({total} transitions): {hist}")
    else:
        lines.append("actions: none recorded")
    if s["corrupt"]:
        lines.append(f"CORRUPT shards ({len(s['corrupt'])}):")
        lines += [f"  {c['shard']}: {c['error']}" for c in s["corrupt"]]
    else:
        lines.append("corrupt shards: none")
    if "sheet" in s:
        lines.append(f"contact sheet: {s['sheet']}")
    return "\n".join(lines)
