#!/usr/bin/env python
"""Summarise a shard set and write a contact sheet of random clips.

    python tools/inspect_shards.py 'data/coinrun/*.tar' --sheet coinrun.png
    python tools/inspect_shards.py data/mine/train-000000.tar data/mine/val-000000.tar --json summary.json

Prints the number of shards and clips (per split), sources, frame sizes, fps, frames per clip, the histogram
of true actions (when the clips carry them) and every shard that cannot be read (and why). Exit code 1 when
a shard is corrupt.
"""

from __future__ import annotations

import argparse
import json
import sys

from genie.data.inspect import format_summary, inspect_shards
from genie.data.shards import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", help="shard files, globs or brace patterns")
    p.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    p.add_argument("--clips", type=int, default=8, help="clips (rows) on the sheet")
    p.add_argument("--frames", type=int, default=8, help="frames (columns) per clip on the sheet")
    p.add_argument("--json", default=None, help="also write the summary as JSON")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        summary = inspect_shards(a.shards, a.sheet, a.clips, a.frames, a.seed)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if a.json:
        atomic_write_text(a.json, json.dumps(summary, indent=1))
    return 1 if summary["corrupt"] else 0


if __name__ == "__main__":
    sys.exit(main())
