"""genie.data: synthetic platformer, shard writing/reading, streaming, splitting, corruption handling."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from genie.data.datamodule import ClipDataModule
from genie.data.pipeline import ClipStream, expand_shards, resize_crop
from genie.data.shards import ShardWriter, add_member, clip_record, read_shard, shard_samples
from genie.data.synthetic import (
    NUM_ACTIONS,
    PlatformerConfig,
    generate_clips,
    generate_episode,
    write_synthetic_shards,
)


def test_synthetic_is_deterministic_and_moves() -> None:
    a_frames, a_actions = generate_episode(7, 32)
    b_frames, b_actions = generate_episode(7, 32)
    c_frames, _ = generate_episode(8, 32)
    assert a_frames.shape == (32, 64, 64, 3) and a_frames.dtype == np.uint8
    assert a_actions.shape == (31,) and set(a_actions.tolist()) <= set(range(NUM_ACTIONS))
    assert np.array_equal(a_frames, b_frames) and np.array_equal(a_actions, b_actions)
    assert not np.array_equal(a_frames, c_frames)
    assert (np.abs(np.diff(a_frames.astype(int), axis=0)).sum(axis=(1, 2, 3)) > 0).mean() > 0.5


def test_synthetic_actions_change_what_happens() -> None:
    """Same world, different action: the next frames differ (the policy's actions are visible)."""
    from genie.data.synthetic import PlatformerWorld

    outs = []
    for action in (1, 2):  # left vs right
        world = PlatformerWorld(3)
        for _ in range(4):
            world.step(action)
        outs.append(world.render())
    assert not np.array_equal(outs[0], outs[1])


def test_synthetic_sprite_scale_and_run_speed() -> None:
    """A 2x player is 12x16 logical pixels and jumps higher; run speed sets the horizontal step."""
    from genie.data.synthetic import PlatformerWorld

    small, big = PlatformerWorld(3), PlatformerWorld(3, PlatformerConfig(sprite_scale=2))
    assert (small.pw, small.ph) == (6, 8) and (big.pw, big.ph) == (12, 16)
    assert big.jump_speed > small.jump_speed == 5.2
    red = np.array([220, 30, 40])
    assert (big.render() == red).all(-1).sum() > 2 * (small.render() == red).all(-1).sum()
    fast = PlatformerWorld(3)  # the default: 4 px per frame
    slow = PlatformerWorld(3, PlatformerConfig(run_speed=2.0))
    x0 = fast.x
    fast.step(2), slow.step(2)  # right
    assert fast.x - x0 in (0.0, 4.0) and slow.x - x0 in (0.0, 2.0)


def test_synthetic_any_size() -> None:
    frames, _ = generate_episode(0, 3, PlatformerConfig(height=90, width=160))
    assert frames.shape == (3, 90, 160, 3)


def test_shard_round_trip(tmp_path: Path) -> None:
    clips = list(generate_clips(0, 5, clip_frames=16, clips_per_episode=2))
    with ShardWriter(str(tmp_path / "s-%03d.tar"), max_count=2) as w:
        for i, (frames, actions, info) in enumerate(clips):
            w.write(f"clip{i}", frames, clip_record(frames, source="test", actions=actions, **info))
    assert [Path(p).name for p in w.paths] == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert not list(tmp_path.glob("*.tmp*"))
    read = [r for p in w.paths for r in read_shard(p)]
    assert len(read) == 5
    for (frames, actions, info), (_key, frames2, record) in zip(clips, read):
        assert np.array_equal(frames, frames2)  # bytes equal
        assert record["actions"] == actions.tolist()
        assert record["fps"] == 10 and record["num_frames"] == 16 and record["height"] == 64
        assert record["start_frame"] == info["start_frame"]


def test_writer_aborts_half_written_shard(tmp_path: Path) -> None:
    frames = np.zeros((16, 8, 8, 3), np.uint8)
    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path / "s-%03d.tar"), max_count=10) as w:
        w.write("a", frames, clip_record(frames, source="t"))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_clip_record_validates() -> None:
    with pytest.raises(ValueError, match="transition actions"):
        clip_record(np.zeros((4, 8, 8, 3), np.uint8), source="x", actions=[1, 2])
    with pytest.raises(ValueError, match="uint8"):
        clip_record(np.zeros((4, 8, 8, 3), np.float32), source="x")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_shards(out, train_clips=60, val_clips=10, clips_per_shard=10)
    return out


def test_write_synthetic_is_idempotent(shards: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")}
    write_synthetic_shards(shards, train_clips=60, val_clips=10, clips_per_shard=10)
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar")} == before
    assert len(before) == 7


def test_stream_yields_videos_in_range(shards: Path) -> None:
    stream = ClipStream(
        str(shards / "train-{000000..000005}.tar"), frames=8, size=(32, 48), value_range=(-1, 1)
    )
    items = list(stream)
    assert len(items) == 60
    v = items[0]["video"]
    assert v.shape == (8, 3, 32, 48) and v.dtype == torch.float32
    assert v.min() >= -1 and v.max() <= 1 and v.min() < -0.5
    assert items[0]["actions"].shape == (7,)


def test_brace_glob_and_list_patterns(shards: Path) -> None:
    brace = expand_shards(str(shards / "train-{000000..000002}.tar"))
    assert len(brace) == 3
    assert expand_shards(str(shards / "train-*.tar")) == sorted(expand_shards(str(shards / "train-*.tar")))
    assert len(expand_shards([str(shards / "train-*.tar"), str(shards / "val-*.tar")])) == 7
    with pytest.raises(ValueError, match="matched no shards"):
        ClipStream(str(shards / "nothing-*.tar"))


def test_corrupt_and_truncated_shards_are_skipped_and_counted(shards: Path, tmp_path: Path, caplog) -> None:
    good = sorted(shards.glob("train-*.tar"))[:2]
    truncated = tmp_path / "trunc.tar"
    data = good[0].read_bytes()
    with tarfile.open(
        good[0]
    ) as tar:  # cut inside a member's data (a cut at a header boundary reads cleanly)
        member = tar.getmembers()[len(tar.getmembers()) // 2]
    truncated.write_bytes(data[: member.offset_data + member.size // 2])
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar file" * 100)
    stream = ClipStream([str(good[0]), str(truncated), str(garbage), str(good[1])])
    items = list(stream)
    assert len(items) >= 20  # both good shards fully read
    assert stream.errors.shards == 2
    assert "unreadable shard" in caplog.text


def _cut(src: Path, dst: Path, where: str) -> Path:
    """``src`` cut short halfway through the header of its middle member, or right before that header."""
    with tarfile.open(src) as tar:
        member = tar.getmembers()[len(tar.getmembers()) // 2]
    end = member.offset + (256 if where == "header" else 0)
    dst.write_bytes(src.read_bytes()[:end])
    return dst


@pytest.mark.parametrize("where", ["header", "boundary"])
def test_shard_cut_at_a_header_is_counted_and_warned(
    shards: Path, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = sorted(shards.glob("train-*.tar"))[0]
    cut = _cut(good, tmp_path / "cut.tar", where)
    stream = ClipStream(str(cut), frames=8)
    items = list(stream)
    assert 0 < len(items) < 10  # the clips before the cut are kept
    assert stream.errors.shards == 1
    assert "truncated" in caplog.text and "cut.tar" in caplog.text
    with pytest.raises(tarfile.ReadError, match="truncated"):
        list(read_shard(cut))


@pytest.mark.parametrize("where", ["header", "boundary"])
def test_inspect_reports_a_shard_cut_at_a_header(shards: Path, tmp_path: Path, where: str) -> None:
    import subprocess
    import sys

    cut = _cut(sorted(shards.glob("train-*.tar"))[0], tmp_path / "cut.tar", where)
    tool = Path(__file__).parents[1] / "tools" / "inspect_shards.py"
    proc = subprocess.run([sys.executable, str(tool), str(cut)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "CORRUPT shards (1)" in proc.stdout and "truncated" in proc.stdout


def _float_shard(path: Path, clips: int = 3) -> Path:
    """A shard whose every clip has float32 frames (decoding refuses them)."""
    import io

    from genie.data.shards import encode_frames

    with tarfile.open(path, "w") as tar:
        for k in range(clips):
            blob = encode_frames(np.zeros((16, 8, 8, 3), np.float32))
            for name, data in ((f"c{k}.npz", blob), (f"c{k}.json", json.dumps({"fps": 10}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.timeout(120)  # a hang guard: the stream used to loop over empty epochs forever
def test_repeating_stream_with_no_usable_clip_stops_with_the_reason(tmp_path: Path) -> None:
    shard = _float_shard(tmp_path / "bad-000000.tar")
    stream = ClipStream(str(shard), frames=16, size=(8, 8), repeat=True)
    with pytest.raises(
        ValueError, match=r"bad-000000.tar .*gave no usable clip: .*3 unreadable clips.*float32"
    ):
        next(iter(stream))


@pytest.mark.timeout(120)
def test_repeating_stream_over_unreadable_shards_stops(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not a tar file" * 100)
    stream = ClipStream(str(garbage), repeat=True)
    with pytest.raises(ValueError, match="1 unreadable shards"):
        next(iter(stream))


def test_corrupt_sample_is_skipped(tmp_path: Path) -> None:
    frames = np.zeros((16, 8, 8, 3), np.uint8)
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for key, payload in (("a", b"bad npz"), ("b", None)):
            import io

            from genie.data.shards import encode_frames

            blob = payload if payload is not None else encode_frames(frames)
            for name, data in ((f"{key}.npz", blob), (f"{key}.json", json.dumps({"fps": 10}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    stream = ClipStream(str(path), frames=16, size=(8, 8))
    assert len(list(stream)) == 1
    assert stream.errors.samples == 1


def test_too_short_clip_is_skipped(shards: Path) -> None:
    stream = ClipStream(str(shards / "val-*.tar"), frames=17)
    assert list(stream) == []
    assert stream.errors.samples == 10


def _keys(stream: ClipStream) -> list[int]:
    # identify clips by their exact pixels
    return [hash(item["video"].numpy().tobytes()) for item in stream]


@pytest.mark.parametrize("world_size", [2, 3, 8])  # 8 > 6 shards: falls back to splitting samples
def test_ranks_split_each_clip_exactly_once(shards: Path, world_size: int) -> None:
    pattern = str(shards / "train-*.tar")
    everything = Counter(_keys(ClipStream(pattern, frames=2)))
    seen: Counter[int] = Counter()
    for rank in range(world_size):
        keys = _keys(ClipStream(pattern, frames=2, rank=rank, world_size=world_size))
        seen.update(keys)
    assert seen == everything
    assert sum(seen.values()) == 60


def test_ranks_and_workers_split_each_clip_exactly_once(shards: Path) -> None:
    pattern = str(shards / "train-*.tar")
    seen: Counter[int] = Counter()
    for rank in range(2):
        stream = ClipStream(pattern, frames=2, rank=rank, world_size=2, shuffle_buffer=8)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        seen.update(hash(item["video"].numpy().tobytes()) for item in loader)
    assert sum(seen.values()) == 60 and max(seen.values()) == 1


def test_shuffle_changes_order_each_epoch_and_repeats(shards: Path) -> None:
    pattern = str(shards / "train-*.tar")
    plain = _keys(ClipStream(pattern, frames=16))  # whole clips: no random window
    stream = ClipStream(pattern, frames=16, shuffle_buffer=16, repeat=True)
    it = iter(stream)
    first = [hash(next(it)["video"].numpy().tobytes()) for _ in range(60)]
    second = [hash(next(it)["video"].numpy().tobytes()) for _ in range(60)]
    assert sorted(first) == sorted(plain) == sorted(second)
    assert first != plain and first != second


def test_resize_crop_keeps_aspect() -> None:
    video = torch.zeros(2, 3, 90, 160, dtype=torch.uint8)
    video[..., :, 70:90] = 255  # a vertical bar in the middle
    out = resize_crop(video, (64, 64))
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.uint8
    assert out[0, 0, 32, 32] == 255 and out[0, 0, 32, 0] == 0
    padded = resize_crop(torch.full((1, 3, 90, 160), 200, dtype=torch.uint8), (64, 64), fit="pad")
    assert padded.shape == (1, 3, 64, 64)  # 160x90 -> 64x36 centred, black bars above and below
    assert (
        (padded[..., :14, :] == 0).all()
        and (padded[..., 50:, :] == 0).all()
        and (padded[..., 14:50, :] == 200).all()
    )
    with pytest.raises(ValueError, match="fit must be"):
        resize_crop(video, (64, 64), fit="stretch")


def test_datamodule_generates_missing_synthetic_shards(tmp_path: Path) -> None:
    root = tmp_path / "syn"
    dm = ClipDataModule(
        train_shards=str(root / "train-*.tar"),
        val_shards=str(root / "val-*.tar"),
        batch_size=4,
        num_workers=0,
        frames=4,
        synthetic={"out_dir": str(root), "train_clips": 20, "val_clips": 8, "clips_per_shard": 10},
    )
    dm.prepare_data()
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (4, 4, 3, 64, 64)
    assert batch["actions"].shape == (4, 3)
    assert sum(b["video"].shape[0] for b in dm.val_dataloader()) == 8


def test_datamodule_missing_shards_error(tmp_path: Path) -> None:
    dm = ClipDataModule(train_shards=str(tmp_path / "nope-*.tar"))
    with pytest.raises(FileNotFoundError, match="no shards match"):
        dm.prepare_data()


def test_regenerating_with_other_settings_removes_stale_shards(tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path, train_clips=30, val_clips=4, clips_per_shard=5)
    assert len(list(tmp_path.glob("train-*.tar"))) == 6
    write_synthetic_shards(tmp_path, train_clips=20, val_clips=4, clips_per_shard=10)
    assert len(list(tmp_path.glob("train-*.tar"))) == 2
    assert sum(1 for p in tmp_path.glob("train-*.tar") for _ in read_shard(p)) == 20
    # the world's settings are part of the manifest too: another scroll speed regenerates
    before = (tmp_path / "train-000000.tar").read_bytes()
    manifest = write_synthetic_shards(
        tmp_path, train_clips=20, val_clips=4, clips_per_shard=10, run_speed=2.0
    )
    assert manifest["settings"]["run_speed"] == 2.0
    assert (tmp_path / "train-000000.tar").read_bytes() != before


def test_shard_samples_group_files_as_webdataset_does(tmp_path: Path) -> None:
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("a.npz", b"1"), ("a.json", b"2"), ("d/b.tokens.npz", b"3"), ("d/b.json", b"4"),
                           ("a.txt", b"5")]:  # fmt: skip
            add_member(tar, name, data)
    # consecutive files of one key make a sample; the key keeps its folder, the extension its inner dots
    assert list(shard_samples(path)) == [
        ("a", {"npz": b"1", "json": b"2"}),
        ("d/b", {"tokens.npz": b"3", "json": b"4"}),
        ("a", {"txt": b"5"}),
    ]
    with tarfile.open(path) as tar:
        assert tar.getmember("a.npz").mode == 0o444
