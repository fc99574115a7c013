"""Videos → 10 FPS clip shards: exact resampling, aspect fitting, splits by video, drops, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from genie.data.shards import read_shard
from genie.data.videos import (
    VideoShardConfig,
    assign_splits,
    clip_scores,
    list_videos,
    resampled_frames,
    write_video_shards,
)

av = pytest.importorskip("av", reason="PyAV (the video extra) is absent")
ROOT = Path(__file__).resolve().parents[1]
BITS = 10  # frame index as 10 black/white 8x8 blocks in the top row


def index_frame(i: int, h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """A frame that shows its index in robust binary blocks, over a moving texture (so it is not static)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 190, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    frame = np.roll(base, i * 2, axis=1)
    for b in range(BITS):
        frame[:8, b * 8 : b * 8 + 8] = 255 if (i >> b) & 1 else 0
    return frame


def read_index(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if frame[:8, b * 8 : b * 8 + 8].mean() > 127)


def encode(path: Path, frames: list[np.ndarray], fps: int) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "10"}
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("fps", [24, 30])
def test_resampling_to_10fps_is_exact(tmp_path: Path, fps: int) -> None:
    n = 3 * fps + 5  # 3.2 s (24) / 3.17 s (30)
    path = encode(tmp_path / f"v{fps}.mp4", [index_frame(i) for i in range(n)], fps)
    out = list(resampled_frames(path, 10, (64, 96)))
    last_time = (n - 1) / fps
    assert len(out) == int(last_time * 10 + 1e-9) + 1  # one frame per 0.1 s up to the last source frame
    for k, f in enumerate(out):
        expected = round(k * fps / 10)  # the source frame nearest to t = k / 10 s
        assert f.index == k and abs(f.time - k / 10) < 1e-9
        assert f.source_index == expected
        assert read_index(f.frame) == expected  # the pixels really are that source frame


def test_fit_crop_and_pad(tmp_path: Path) -> None:
    frames = [np.full((64, 128, 3), 200, np.uint8) for _ in range(12)]
    path = encode(tmp_path / "wide.mp4", frames, 10)
    crop = next(iter(resampled_frames(path, 10, (32, 32), fit="crop"))).frame
    pad = next(iter(resampled_frames(path, 10, (32, 32), fit="pad"))).frame
    assert crop.shape == pad.shape == (32, 32, 3)
    assert abs(int(crop.mean()) - 200) <= 3  # all picture
    assert pad[:8].max() == 0 and pad[24:].max() == 0 and abs(int(pad[8:24].mean()) - 200) <= 3


def make_videos(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    videos = {
        f"good{i}": encode(root / f"good{i}.mp4", [index_frame(j, seed=i) for j in range(90)], 30)
        for i in range(4)
    }
    videos["static"] = encode(root / "static.mp4", [index_frame(0)] * 60, 30)
    videos["short"] = encode(root / "short.mp4", [index_frame(j) for j in range(20)], 30)  # 0.67 s: 7 frames
    (root / "sub").mkdir()
    videos["webm"] = root / "sub" / "clip.webm"
    with av.open(str(videos["webm"]), "w") as out:
        stream = out.add_stream("libvpx-vp9", rate=25)
        stream.height, stream.width, stream.pix_fmt = 64, 96, "yuv420p"
        for j in range(60):
            vf = av.VideoFrame.from_ndarray(index_frame(j, seed=9), format="rgb24")
            vf.pts = j
            for p in stream.encode(vf):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
    videos["corrupt"] = root / "corrupt.mp4"
    (root / "notes.txt.bak").write_text("not a video")
    return videos


def test_videos_to_shards_end_to_end(tmp_path: Path) -> None:
    make_videos(tmp_path / "videos")
    cfg = VideoShardConfig(size=(32, 48), val_fraction=0.3, videos_per_shard=2)
    out = tmp_path / "shards"
    manifest = write_video_shards(tmp_path / "videos", out, cfg)
    reasons = {d["source"]: d["reason"] for d in manifest["dropped"]}
    assert reasons["short.mp4"].startswith("too short")
    assert reasons["static.mp4"].startswith("static")
    assert reasons["corrupt.mp4"].startswith("cannot decode")
    kept = {c["source"] for c in manifest["clip_index"]}
    assert kept == {"good0.mp4", "good1.mp4", "good2.mp4", "good3.mp4", "sub/clip.webm"}
    # whole videos per split: no source in both
    by_split: dict[str, set[str]] = {"train": set(), "val": set()}
    total = 0
    for shard in sorted(out.glob("*.tar")):
        split = shard.name.split("-")[0]
        for _, frames, record in read_shard(shard):
            total += 1
            by_split[split].add(record["source"])
            assert frames.shape == (16, 32, 48, 3) and record["fps"] == 10
            assert set(record["scores"]) >= {"static_ratio", "scene_cuts", "motion"}
            if record["source"].startswith("good"):  # 3 s at 30 FPS -> 30 frames at 10 FPS -> 1 clip of 16
                assert record["source_frames"] == [3 * k for k in range(16)] and record["source_fps"] == 30
    assert by_split["train"] and by_split["val"] and not by_split["train"] & by_split["val"]
    assert total == manifest["clips"]["train"] + manifest["clips"]["val"] == len(manifest["clip_index"])
    csv_rows = (out / "manifest.csv").read_text().splitlines()
    assert csv_rows[0].startswith("key,shard,source,start_time,fps") and len(csv_rows) == total + 1

    # resume: a lost group is redone, the others are kept untouched
    parts = sorted((out / "parts").glob("*.json"))
    victim = json.loads(parts[0].read_text())
    parts[0].unlink()
    for s in victim["shards"]:
        (out / s).unlink()
    kept_mtime = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = write_video_shards(tmp_path / "videos", out, cfg, workers=2)
    assert again["clip_index"] == manifest["clip_index"]
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept_mtime.items())
    with pytest.raises(ValueError, match="other settings"):
        write_video_shards(tmp_path / "videos", out, VideoShardConfig(size=(32, 32)))


def test_segments_mode_samples_windows_per_segment(tmp_path: Path) -> None:
    path = encode(tmp_path / "long.mp4", [index_frame(j) for j in range(300)], 30)  # 10 s -> 100 frames
    cfg = VideoShardConfig(size=(64, 96), mode="segments", segment_frames=40, windows_per_segment=2)
    manifest = write_video_shards([str(path)], tmp_path / "out", cfg)
    # segments of 40 frames: 0-39, 40-79, and 80-99 (20 >= 16): 2 windows each
    starts = sorted(c["start_time"] for c in manifest["clip_index"])
    assert len(starts) == 6
    for seg in range(3):
        inside = [s for s in starts if seg * 4.0 <= s < (seg + 1) * 4.0]
        assert len(inside) == 2


def test_split_is_by_video_and_stable() -> None:
    keys = [f"v{i}.mp4" for i in range(200)]
    a, b = assign_splits(keys, 0.1), assign_splits(list(reversed(keys)), 0.1)
    assert a == b and 5 <= sum(v == "val" for v in a.values()) <= 40
    assert set(assign_splits(["x.mp4", "y.mp4"], 0.01).values()) == {"train", "val"}


def test_list_videos_inputs(tmp_path: Path) -> None:
    videos = make_videos(tmp_path / "v")
    assert len(list_videos(tmp_path / "v")) == 8  # recursive, video extensions only
    assert list_videos(str(tmp_path / "v" / "good*.mp4")) == [videos[f"good{i}"].resolve() for i in range(4)]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my videos\n{videos['good1']}\n{videos['webm']}\n")
    assert list_videos(str(lst)) == [videos["good1"].resolve(), videos["webm"].resolve()]
    with pytest.raises(FileNotFoundError, match="no video"):
        list_videos(str(tmp_path / "missing.mp4"))


def test_clip_scores_catch_planted_defects() -> None:
    good = np.stack([index_frame(j) for j in range(16)])
    static = np.stack([index_frame(0)] * 16)
    cut = np.concatenate([good[:8], np.full_like(good[8:], 30)])
    noise = np.random.default_rng(0).integers(0, 256, good.shape, dtype=np.uint8)
    black = np.zeros_like(good)
    s = {
        name: clip_scores(x)
        for name, x in dict(good=good, static=static, cut=cut, noise=noise, black=black).items()
    }
    assert s["good"]["static_ratio"] == 0 and s["good"]["scene_cuts"] == 0 and s["good"]["motion"] > 0
    assert s["static"]["static_ratio"] == 1 and s["static"]["motion"] == 0
    assert s["cut"]["scene_cuts"] >= 1
    assert s["noise"]["spatial_noise"] > 3 * s["good"]["spatial_noise"]
    assert s["black"]["black_ratio"] == 1


def test_videos_to_shards_cli(tmp_path: Path) -> None:
    make_videos(tmp_path / "videos")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "videos_to_shards.py"), str(tmp_path / "videos"), "--out",
         str(tmp_path / "out"), "--size", "32", "48", "--workers", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped 3 videos" in proc.stdout and "static.mp4: static" in proc.stdout
    bad = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "videos_to_shards.py"), str(tmp_path / "nothing"), "--out",
         str(tmp_path / "o2")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "no video" in bad.stderr and "Traceback" not in bad.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "videos_to_shards.py"), *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [["--size", "0", "32"], ["--size", "-4", "32"], ["--videos-per-shard", "0"], ["--workers", "0"],
     ["--windows-per-segment", "0"], ["--max-static", "1.5"], ["--frames", "1"]],
)  # fmt: skip
def test_cli_refuses_bad_arguments_before_writing_anything(tmp_path: Path, args: list[str]) -> None:
    make_videos(tmp_path / "videos")
    out = tmp_path / "out"
    proc = _cli(str(tmp_path / "videos"), "--out", str(out), *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()  # no settings.json left behind


def test_cli_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    make_videos(tmp_path / "videos")
    taken = tmp_path / "taken"
    taken.write_text("mine")
    proc = _cli(str(tmp_path / "videos"), "--out", str(taken))
    assert (
        proc.returncode == 2 and "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert taken.read_text() == "mine"


def test_cli_exits_nonzero_when_nothing_usable_was_written(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (videos / name).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))  # undecodable
    proc = _cli(str(videos), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "error: no train clips were written" in proc.stderr


def test_cli_exits_nonzero_when_the_val_split_ends_empty(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    good = make_videos(tmp_path / "all")
    videos.mkdir()
    keys = [f"v{i}.mp4" for i in range(6)]
    splits = assign_splits(keys, 0.3)
    for k in keys:  # the val videos undecodable, the train ones good
        if splits[k] == "val":
            (videos / k).write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))
        else:
            (videos / k).write_bytes(good["good0"].read_bytes())
    assert "val" in splits.values() and "train" in splits.values()
    proc = _cli(str(videos), "--out", str(tmp_path / "out"), "--val-fraction", "0.3", "--size", "32", "48")
    assert proc.returncode == 1 and "error: no val clips were written" in proc.stderr, proc.stderr


def test_slow_sources_are_dropped_unless_allowed_and_ties_go_to_the_earlier_frame(tmp_path: Path) -> None:
    path = encode(tmp_path / "slow.mp4", [index_frame(i) for i in range(12)], 5)
    out = [f.source_index for f in resampled_frames(path, 10, (64, 96))]
    assert out == [k // 2 for k in range(len(out))]  # every tie (k / 10 s between two 5 FPS frames): earlier
    assert len(out) == 23
    cfg = VideoShardConfig(size=(32, 48), val_fraction=0.0, clip_frames=4)
    manifest = write_video_shards(path, tmp_path / "drop", cfg)
    assert manifest["clips"]["train"] == 0 and "low frame rate: 5 FPS" in manifest["dropped"][0]["reason"]
    allowed = VideoShardConfig(size=(32, 48), val_fraction=0.0, clip_frames=4, allow_low_fps=True)
    assert write_video_shards(path, tmp_path / "keep", allowed)["clips"]["train"] == 5
