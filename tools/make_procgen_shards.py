#!/usr/bin/env python
"""Write procgen (CoinRun by default) clip shards with true actions — the paper's App. F dataset.

    # CPU-sized CoinRun set (150k train transitions, ~1 min), then train on it:
    python tools/make_procgen_shards.py --out data/coinrun
    python -m genie.train +experiment=coinrun_tiny
    # the paper's 10M transitions from levels 0..9999, 8 processes:
    python tools/make_procgen_shards.py --out data/coinrun --transitions 10000000 --workers 8
    # any other game:
    python tools/make_procgen_shards.py --game ninja --out data/ninja

A random policy plays 64x64 frames at the paper's "hard" setting; each 16-frame clip stays inside one
episode and keeps its 15 true actions. Validation shards come from unseen levels. Re-running the same command
keeps finished shards and makes the missing ones (stop it any time); the output is the same however many
workers made it. Needs the procgen extra (numpy<2): `make procgen-venv` then `.venv-procgen/bin/python ...`.
"""

from __future__ import annotations

import argparse
import sys
import time

from genie.data.procgen import GAMES, ProcgenShardConfig, write_procgen_shards
from genie.data.shards import print_progress


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (train-*.tar, val-*.tar, manifest.json)")
    p.add_argument("--game", default="coinrun", choices=GAMES, metavar="GAME", help="procgen game (coinrun)")
    p.add_argument("--mode", default="hard", help="distribution mode: easy|hard|... (hard, as App. F)")
    p.add_argument("--transitions", type=int, default=150_000, help="train transitions (paper: 10000000)")
    p.add_argument("--val-transitions", type=int, default=None, help="validation transitions (5%% of train)")
    p.add_argument("--levels", type=int, default=10_000, help="train levels 0..N-1 (val levels follow)")
    p.add_argument("--val-levels", type=int, default=1_000)
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--clips-per-shard", type=int, default=500)
    p.add_argument("--envs", type=int, default=64, help="environments stepped together per shard")
    p.add_argument("--workers", type=int, default=1, help="processes making shards in parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--action-repeat", type=float, default=0.0,
        help="sticky actions: repeat the previous action with this probability (0: App. F's uniform policy)",
    )  # fmt: skip
    a = p.parse_args(argv)
    try:
        cfg = ProcgenShardConfig(
            game=a.game,
            distribution_mode=a.mode,
            train_transitions=a.transitions,
            val_transitions=a.val_transitions
            if a.val_transitions is not None
            else max(a.transitions // 20, 1),
            num_levels=a.levels,
            val_levels=a.val_levels,
            clip_frames=a.frames,
            clips_per_shard=a.clips_per_shard,
            num_envs=a.envs,
            seed=a.seed,
            action_repeat_prob=a.action_repeat,
        )
    except ValueError as e:
        p.error(str(e))
    start = time.time()
    try:
        manifest = write_procgen_shards(a.out, cfg, workers=a.workers, progress=print_progress)
    except (ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clips = manifest["clips"]
    took = time.time() - start
    print(
        f"\n{a.game}: {clips['train']} train + {clips['val']} val clips "
        f"({(clips['train'] + clips['val']) * (a.frames - 1)} transitions) in {len(manifest['shards'])} shards "
        f"under {a.out} ({took:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
