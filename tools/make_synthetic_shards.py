#!/usr/bin/env python
"""Write synthetic platformer shards (16-frame clips at 10 FPS with true actions).

    python tools/make_synthetic_shards.py --out data/synthetic-64 --train-clips 4000 --val-clips 200
    python tools/make_synthetic_shards.py --out data/synthetic-160x90 --height 90 --width 160

Training configs with data=synthetic make these automatically when missing; this script is for making
other sizes or counts up front. Re-running with the same settings does nothing.
"""

from __future__ import annotations

import argparse
import time

from genie.data.synthetic import write_synthetic_shards


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (train-*.tar, val-*.tar, manifest.json)")
    p.add_argument("--train-clips", type=int, default=4000)
    p.add_argument("--val-clips", type=int, default=200)
    p.add_argument("--clips-per-shard", type=int, default=200)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    start = time.time()
    manifest = write_synthetic_shards(
        a.out,
        train_clips=a.train_clips,
        val_clips=a.val_clips,
        clips_per_shard=a.clips_per_shard,
        height=a.height,
        width=a.width,
        seed=a.seed,
        clip_frames=a.frames,
    )
    print(f"{len(manifest['shards'])} shards in {a.out} ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
