"""Clip curation: heuristic flags, a small quality classifier trained on human ratings, and shard filtering.

The paper kept 6.8M of 55M clips with a classifier trained on 10k human 1–5 ratings. Here every clip gets the
cheap scores of :func:`genie.data.videos.clip_scores`; :func:`heuristic_flags` names obvious defects, and
:class:`QualityClassifier` (logistic regression on the standardised scores) learns "good" (rating ≥ 3 by
default) from a CSV of ratings, reports its held-out accuracy, and filters a shard set into a new one.
Pure numpy + torch; the model is saved as JSON (no pickles).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie.data.pipeline import expand_shards
from genie.data.shards import ShardWriter, atomic_write_text, read_shard
from genie.data.videos import SCORE_NAMES, clip_scores

# Heuristic defect thresholds (the flags; the classifier learns its own boundary).
FLAG_RULES: dict[str, tuple[str, float]] = {
    "static": ("static_ratio", 0.5),
    "scene_cut": ("scene_cuts", 0.5),
    "black": ("black_ratio", 0.25),
    "overlay": ("overlay_ratio", 0.9),
    "noise": ("spatial_noise", 0.2),
}


def heuristic_flags(scores: dict[str, float]) -> list[str]:
    """Names of the defects a clip's scores point at (empty: looks fine)."""
    return [name for name, (key, limit) in FLAG_RULES.items() if scores.get(key, 0.0) > limit]


def iter_clips(shards: str | Sequence[str]) -> Iterator[tuple[str, str, np.ndarray, dict[str, Any]]]:
    """``(shard_path, key, frames_THW3, record)`` of every clip in the shard set."""
    paths = expand_shards(shards)
    if not paths:
        raise FileNotFoundError(f"no shards match {shards!r}")
    for path in paths:
        try:
            clips = list(read_shard(path))
        except Exception as err:  # truncated, not a tar, a folder: curation must not drop a shard unseen
            raise ValueError(
                f"shard {path} cannot be read ({type(err).__name__}: {err}); check the set with "
                "tools/inspect_shards.py and leave out or rewrite that shard"
            ) from None
        for key, frames, record in clips:
            yield path, key, frames, record


def score_clips(shards: str | Sequence[str]) -> list[dict[str, Any]]:
    """One row per clip: ``key``, ``shard``, the scores (recomputed from the frames) and the heuristic flags."""
    rows = []
    for path, key, frames, _ in iter_clips(shards):
        scores = clip_scores(frames)
        rows.append(
            {"key": key, "shard": Path(path).name, **scores, "flags": " ".join(heuristic_flags(scores))}
        )
    return rows


def write_csv(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    rows = list(rows)
    if not rows:
        raise ValueError(f"nothing to write to {path}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def read_ratings(path: str | os.PathLike[str]) -> dict[str, float]:
    """A CSV with columns ``key`` and ``rating`` (1–5, human labels) → {clip key: rating}."""
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"key", "rating"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs the CSV columns 'key' and 'rating' (got {reader.fieldnames})")
        out = {}
        for i, row in enumerate(reader, start=2):
            try:
                out[row["key"]] = float(row["rating"])
            except ValueError:
                raise ValueError(f"{path} line {i}: rating {row['rating']!r} is not a number") from None
    return out


def features(rows: Sequence[dict[str, Any]]) -> np.ndarray:
    x = np.array([[float(r[n]) for n in SCORE_NAMES] for r in rows], np.float64)
    x[:, SCORE_NAMES.index("scene_cuts")] = np.log1p(x[:, SCORE_NAMES.index("scene_cuts")])
    return x


@dataclass
class QualityClassifier:
    """Logistic regression P(good | scores) on standardised :data:`SCORE_NAMES` features."""

    weights: list[float]
    bias: float
    mean: list[float]
    std: list[float]
    good_rating: float = 3.0

    def prob_good(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        z = (features(rows) - np.array(self.mean)) / np.array(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.array(self.weights) + self.bias)))

    @classmethod
    def fit(
        cls,
        rows: Sequence[dict[str, Any]],
        ratings: Sequence[float] | np.ndarray,
        good_rating: float = 3.0,
        l2: float = 1e-2,
    ) -> QualityClassifier:
        x = features(rows)
        y = (np.asarray(ratings, np.float64) >= good_rating).astype(np.float64)
        if len(set(y.tolist())) < 2:
            raise ValueError(f"the ratings need both good (>= {good_rating}) and bad clips to learn from")
        mean, std = x.mean(0), x.std(0) + 1e-6
        xt = torch.tensor((x - mean) / std)
        yt = torch.tensor(y)
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + l2 * (w**2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        return cls(w.detach().tolist(), float(b.detach()), mean.tolist(), std.tolist(), good_rating)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        atomic_write_text(path, json.dumps({"features": list(SCORE_NAMES), **self.__dict__}, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QualityClassifier:
        data = json.loads(Path(path).read_text())
        if data.pop("features", list(SCORE_NAMES)) != list(SCORE_NAMES):
            raise ValueError(f"{path} was trained on other features; retrain it with tools/curate.py train")
        return cls(**data)


def train_classifier(
    rows: Sequence[dict[str, Any]],
    ratings: dict[str, float],
    holdout: float = 0.2,
    good_rating: float = 3.0,
    seed: int = 0,
) -> tuple[QualityClassifier, dict[str, Any]]:
    """Fit on the rated clips minus a held-out ``holdout`` fraction; report accuracy there (and the majority
    baseline), then refit on all rated clips for the returned model."""
    rated = [r for r in rows if r["key"] in ratings]
    if len(rated) < 10:
        raise ValueError(f"only {len(rated)} scored clips have a rating; rate at least 10 (keys must match)")
    y = np.array([ratings[r["key"]] for r in rated])
    order = np.random.default_rng(seed).permutation(len(rated))
    n_test = max(1, round(holdout * len(rated)))
    test, train = order[:n_test], order[n_test:]
    model = QualityClassifier.fit([rated[i] for i in train], y[train], good_rating)
    pred = model.prob_good([rated[i] for i in test]) >= 0.5
    truth = y[test] >= good_rating
    majority = max(truth.mean(), 1 - truth.mean())
    report = {
        "rated_clips": len(rated),
        "held_out": int(n_test),
        "held_out_accuracy": float((pred == truth).mean()),
        "majority_baseline": float(majority),
        "good_rating": good_rating,
    }
    return QualityClassifier.fit(rated, y, good_rating), report


def filter_shards(
    shards: str | Sequence[str],
    out_dir: str | os.PathLike[str],
    model: QualityClassifier | None,
    threshold: float = 0.5,
    clips_per_shard: int = 500,
) -> dict[str, Any]:
    """Copy the clips with P(good) ≥ ``threshold`` into new shards under ``out_dir`` (splits kept by shard name
    prefix: ``train-*`` → ``train-*``), with a manifest of what was kept and dropped. ``model=None``: keep the
    clips without any :func:`heuristic_flags` instead."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writers: dict[str, ShardWriter] = {}
    kept: dict[str, int] = {}
    dropped: list[dict[str, Any]] = []
    try:
        for path, key, frames, record in iter_clips(shards):
            split = Path(path).name.split("-")[0] if "-" in Path(path).name else "train"
            scores = clip_scores(frames)
            flags = heuristic_flags(scores)
            p = float(model.prob_good([scores]).item()) if model is not None else float(not flags)
            if p < threshold:
                dropped.append(
                    {
                        "key": key,
                        "shard": Path(path).name,
                        "p_good": round(p, 4),
                        "flags": heuristic_flags(scores),
                    }
                )
                continue
            if split not in writers:
                writers[split] = ShardWriter(str(out / f"{split}-%06d.tar"), max_count=clips_per_shard)
            writers[split].write(key, frames, {**record, "quality": round(p, 4)})
            kept[split] = kept.get(split, 0) + 1
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    manifest = {
        "threshold": threshold,
        "kept": kept,
        "dropped": dropped,
        "shards": [Path(p).name for w in writers.values() for p in w.paths],
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
