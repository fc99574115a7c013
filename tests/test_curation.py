"""Curation (heuristic flags, quality classifier from ratings, filtering) and shard inspection, on synthetic
platformer clips with planted defects: static, scene cuts, noise, fades to black."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from genie.data.curation import (
    QualityClassifier,
    filter_shards,
    heuristic_flags,
    score_clips,
    train_classifier,
)
from genie.data.inspect import inspect_shards
from genie.data.shards import ShardWriter, clip_record, read_shard
from genie.data.synthetic import PlatformerConfig, generate_clips
from genie.data.videos import clip_scores

ROOT = Path(__file__).resolve().parents[1]


def planted(n_good: int = 40, n_bad: int = 10) -> list[tuple[str, np.ndarray, str]]:
    """``(key, frames, kind)``: good platformer clips and clips with one planted defect each."""
    # sticky actions (the generator's v2 policy): smooth clips, like most real footage
    good = [
        f for f, _, _ in generate_clips(7, n_good + 2 * n_bad, cfg=PlatformerConfig(action_repeat_prob=0.75))
    ]
    out = [(f"good{i:03d}", good[i], "good") for i in range(n_good)]
    rng = np.random.default_rng(0)
    spare = good[n_good:]
    for i in range(n_bad):
        src = spare[i]
        out.append((f"static{i:03d}", np.repeat(src[:1], 16, axis=0), "static"))
        # a hard cut to the most different-looking other clip
        other = max(
            spare, key=lambda c: np.abs(c[0].astype(int).mean((0, 1)) - src[7].astype(int).mean((0, 1))).sum()
        )
        out.append((f"cut{i:03d}", np.concatenate([src[:8], other[8:]]), "cut"))
        noisy = src.astype(np.float32) + rng.normal(0, 70, src.shape)
        out.append((f"noise{i:03d}", noisy.clip(0, 255).astype(np.uint8), "noise"))
        fade = src.astype(np.float32)
        fade[4:] *= 0.03
        out.append((f"black{i:03d}", fade.astype(np.uint8), "black"))
    return out


def write(clips: list[tuple[str, np.ndarray, str]], out: Path, split: str = "train") -> None:
    with ShardWriter(str(out / f"{split}-%06d.tar"), max_count=25) as w:
        for key, frames, kind in clips:
            w.write(key, frames, clip_record(frames, source=f"planted/{kind}", actions=[0] * 15))


def test_heuristic_flags_catch_planted_defects() -> None:
    clips = planted(n_good=30, n_bad=6)
    flags = {key: heuristic_flags(clip_scores(frames)) for key, frames, _ in clips}
    expect = {"static": "static", "cut": "scene_cut", "noise": "noise", "black": "black"}
    for key, _, kind in clips:
        if kind != "good":
            assert expect[kind] in flags[key], (key, flags[key])
    clean = sum(not flags[k] for k, _, kind in clips if kind == "good")
    assert clean >= 0.7 * 30  # a platformer clip where the player stands still for most of it is static


def test_classifier_learns_ratings_and_filters(tmp_path: Path) -> None:
    clips = planted()
    write(clips, tmp_path / "in")
    rows = score_clips(str(tmp_path / "in" / "train-*.tar"))
    assert len(rows) == len(clips) and {"key", "shard", "static_ratio", "flags"} <= set(rows[0])
    rng = np.random.default_rng(1)
    ratings = {k: float(rng.integers(4, 6) if kind == "good" else rng.integers(1, 3)) for k, _, kind in clips}
    model, report = train_classifier(rows, ratings)
    assert report["held_out"] == 16 and report["held_out_accuracy"] >= 0.9
    assert report["held_out_accuracy"] > report["majority_baseline"]
    model.save(tmp_path / "q.json")
    again = QualityClassifier.load(tmp_path / "q.json")
    assert np.allclose(again.prob_good(rows), model.prob_good(rows))

    manifest = filter_shards(str(tmp_path / "in" / "*.tar"), tmp_path / "out", again)
    kept = [key for shard in sorted((tmp_path / "out").glob("*.tar")) for key, _, _ in read_shard(shard)]
    kinds = {k: kind for k, _, kind in clips}
    assert sum(kinds[k] == "good" for k in kept) >= 36 and sum(kinds[k] != "good" for k in kept) <= 2
    assert manifest["kept"]["train"] == len(kept)
    with pytest.raises(ValueError, match="both good"):
        QualityClassifier.fit(rows[:5], [5.0] * 5)


def test_curate_and_inspect_cli(tmp_path: Path) -> None:
    clips = planted(n_good=20, n_bad=5)
    write(clips[:30], tmp_path / "in", "train")
    write(clips[30:], tmp_path / "in", "val")
    (tmp_path / "in" / "train-000009.tar").write_bytes(b"not a tar file at all")
    tool = [sys.executable, str(ROOT / "tools" / "curate.py")]
    ok = [str(tmp_path / "in" / "train-00000[0-1].tar"), str(tmp_path / "in" / "val-*.tar")]

    proc = subprocess.run(
        [*tool, "score", *ok, "--out", str(tmp_path / "s.csv")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "ratings.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "rating"])
        w.writerows([k, 5 if kind == "good" else 1] for k, _, kind in clips)
    proc = subprocess.run(
        [*tool, "train", "--scores", str(tmp_path / "s.csv"), "--ratings", str(tmp_path / "ratings.csv"),
         "--model", str(tmp_path / "q.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0 and "held-out accuracy" in proc.stdout, proc.stderr
    proc = subprocess.run(
        [*tool, "filter", *ok, "--model", str(tmp_path / "q.json"), "--out", str(tmp_path / "cur")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0 and "kept" in proc.stdout, proc.stderr
    assert {p.name.split("-")[0] for p in (tmp_path / "cur").glob("*.tar")} == {"train", "val"}
    proc = subprocess.run(
        [*tool, "filter", *ok, "--heuristic", "--out", str(tmp_path / "h")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run([*tool, "train", "--scores", str(tmp_path / "s.csv"), "--ratings", str(tmp_path / "s.csv"),
                          "--model", str(tmp_path / "x.json")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode != 0 and "'rating'" in bad.stderr and "Traceback" not in bad.stderr

    # inspect: counts, sizes, fps, actions, the corrupt shard named, a contact sheet
    sheet = tmp_path / "sheet.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "inspect_shards.py"), str(tmp_path / "in" / "*.tar"), "--sheet",
         str(sheet), "--clips", "4", "--frames", "5", "--json", str(tmp_path / "sum.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # a corrupt shard makes the exit code 1
    assert "train-000009.tar" in proc.stdout and "64x64" in proc.stdout
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["clips"] == 40 and summary["clips_by_split"] == {"train": 30, "val": 10}
    assert summary["actions"] == {"0": 40 * 15} and summary["frames_per_clip"] == {"16": 40}
    assert Image.open(sheet).size == (5 * 64 + 4 * 2, 4 * 64 + 3 * 2)


def test_inspect_missing_pattern_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no shards match"):
        inspect_shards(str(tmp_path / "none-*.tar"))
