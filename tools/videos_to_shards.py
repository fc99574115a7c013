#!/usr/bin/env python
"""Turn a folder of videos into 10 FPS, 16-frame clip shards (train/val split by video) that training streams.

    python tools/videos_to_shards.py ~/videos --out data/mine                  # 160x90, centre-crop
    python tools/videos_to_shards.py "clips/**/*.mp4" list.txt --out data/mine --size 64 64 --fit pad
    python tools/videos_to_shards.py ~/videos --out data/mine --mode segments  # paper: 16 s segments,
                                                                               # one 16-frame window each
    python -m genie.train +experiment=tokenizer_tiny data=shards \
        data.train_shards='data/mine/train-*.tar' data.val_shards='data/mine/val-*.tar' data.size=[90,160]

Inputs: folders (searched recursively for mp4/webm/mkv/avi/mov/m4v), globs, files, or .txt lists of paths.
Too-short, static and undecodable videos, and videos slower than --fps (their frames would repeat; keep them
with --allow-low-fps), are dropped with the reason (printed and in manifest.json); every clip's source, start
time, fps, size and quality scores go to manifest.json and manifest.csv. Re-running the same command keeps
finished shards. Exits 1 when no train clip, or (with --val-fraction > 0) no val clip, was written. Needs the
video extra (PyAV).
"""

from __future__ import annotations

import argparse
import sys
import time

from genie.data.shards import print_progress
from genie.data.videos import VideoShardConfig, write_video_shards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="video files, folders, globs or .txt lists")
    p.add_argument("--out", required=True, help="output folder (train-*.tar, val-*.tar, manifest.json|csv)")
    p.add_argument(
        "--size", type=int, nargs=2, default=(90, 160), metavar=("H", "W"), help="frame size (90 160)"
    )
    p.add_argument("--fit", choices=("crop", "pad"), default="crop", help="keep aspect by centre-crop or pad")
    p.add_argument("--fps", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--mode", choices=("consecutive", "segments"), default="consecutive")
    p.add_argument("--segment-frames", type=int, default=160, help="segments mode: segment length (16 s)")
    p.add_argument("--windows-per-segment", type=int, default=1)
    p.add_argument("--val-fraction", type=float, default=0.05, help="fraction of videos held out")
    p.add_argument("--videos-per-shard", type=int, default=32)
    p.add_argument("--max-static", type=float, default=0.8, help="drop clips with more static frame pairs")
    p.add_argument("--root", default=None, help="video keys are paths relative to this (common folder)")
    p.add_argument("--workers", type=int, default=1, help="processes decoding videos in parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--allow-low-fps", action="store_true", help="keep videos slower than --fps (their frames repeat)"
    )
    a = p.parse_args(argv)
    if a.workers < 1:
        p.error(f"--workers must be >= 1, got {a.workers}")
    try:
        cfg = VideoShardConfig(
            size=a.size,
            fit=a.fit,
            fps=a.fps,
            clip_frames=a.frames,
            mode=a.mode,
            segment_frames=a.segment_frames,
            windows_per_segment=a.windows_per_segment,
            val_fraction=a.val_fraction,
            videos_per_shard=a.videos_per_shard,
            max_static_ratio=a.max_static,
            seed=a.seed,
            allow_low_fps=a.allow_low_fps,
        )
        start = time.time()
        manifest = write_video_shards(
            a.inputs, a.out, cfg, workers=a.workers, root=a.root, progress=print_progress
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    if manifest["dropped"]:
        print(f"dropped {len(manifest['dropped'])} videos:")
        for d in manifest["dropped"]:
            print(f"  {d['source']}: {d['reason']}")
    v, c = manifest["videos"], manifest["clips"]
    print(
        f"{c['train']} train clips from {v['train']} videos, {c['val']} val clips from {v['val']} videos, "
        f"{cfg.size[1]}x{cfg.size[0]} at {cfg.fps:g} FPS, in {len(manifest['shards'])} shards under {a.out} "
        f"({time.time() - start:.0f} s)"
    )
    if c["train"] == 0:
        print(
            "error: no train clips were written: every video was dropped (see above) or went to val",
            file=sys.stderr,
        )
        return 1
    if c["val"] == 0 and cfg.val_fraction > 0:
        print(
            f"error: no val clips were written ({v['val']} val videos, all dropped): training needs held-out "
            "clips; add videos, or pass --val-fraction 0 to write none on purpose",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
