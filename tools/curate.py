#!/usr/bin/env python
"""Curate clips: score them, learn "good" from human ratings, filter a shard set into a new one.

    # 1. heuristic scores + flags per clip (static, scene cuts, black, overlay, noise, motion) -> CSV
    python tools/curate.py score 'data/mine/*.tar' --out scores.csv
    # 2. rate a few hundred clips 1-5 (CSV columns: key,rating) and train the quality classifier
    python tools/curate.py train --scores scores.csv --ratings ratings.csv --model quality.json
    # 3. keep the clips it calls good (P(good) >= threshold) in a new shard set
    python tools/curate.py filter 'data/mine/*.tar' --model quality.json --threshold 0.5 --out data/mine-curated

The paper filtered 55M clips to 6.8M with such a classifier (trained on 10k human ratings). Without ratings,
`filter --heuristic` drops every clip with a heuristic flag instead.
"""

from __future__ import annotations

import argparse
import csv
import sys

from genie.data.curation import (
    FLAG_RULES,
    QualityClassifier,
    filter_shards,
    read_ratings,
    score_clips,
    train_classifier,
    write_csv,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("score", help="scores and heuristic flags of every clip -> CSV")
    s.add_argument("shards", nargs="+")
    s.add_argument("--out", required=True)
    t = sub.add_parser("train", help="train the quality classifier on human ratings")
    t.add_argument("--scores", required=True, help="CSV from `score`")
    t.add_argument("--ratings", required=True, help="CSV with columns key,rating (1-5)")
    t.add_argument("--model", required=True, help="where to write the classifier (JSON)")
    t.add_argument("--good", type=float, default=3.0, help="ratings >= this count as good")
    t.add_argument("--holdout", type=float, default=0.2, help="fraction of rated clips held out")
    f = sub.add_parser("filter", help="copy the good clips into a new shard set")
    f.add_argument("shards", nargs="+")
    f.add_argument("--out", required=True)
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="classifier JSON from `train`")
    g.add_argument("--heuristic", action="store_true", help="drop clips with any heuristic flag instead")
    f.add_argument("--threshold", type=float, default=0.5, help="keep clips with P(good) >= this")
    a = p.parse_args(argv)
    try:
        if a.cmd == "score":
            rows = score_clips(a.shards)
            write_csv(rows, a.out)
            flagged = sum(1 for r in rows if r["flags"])
            print(f"scored {len(rows)} clips -> {a.out}; {flagged} flagged ({', '.join(FLAG_RULES)})")
        elif a.cmd == "train":
            with open(a.scores, newline="") as fh:
                rows = list(csv.DictReader(fh))
            model, report = train_classifier(rows, read_ratings(a.ratings), a.holdout, a.good)
            model.save(a.model)
            print(
                f"held-out accuracy {report['held_out_accuracy']:.1%} on {report['held_out']} of "
                f"{report['rated_clips']} rated clips (majority baseline {report['majority_baseline']:.1%}); "
                f"model -> {a.model}"
            )
        else:
            model = None if a.heuristic else QualityClassifier.load(a.model)
            manifest = filter_shards(a.shards, a.out, model, a.threshold)
            print(
                f"kept {manifest['kept']} clips, dropped {len(manifest['dropped'])} -> {a.out} "
                f"({len(manifest['shards'])} shards)"
            )
    except (ValueError, OSError, KeyError) as err:  # (OSError: a folder or unreadable file given as a file)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
