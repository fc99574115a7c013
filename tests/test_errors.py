"""Bad input gets one clear line and a non-zero exit code, never a traceback wall; the data pipeline accepts
exactly the clips it can use (property-based over shapes and dtypes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genie.data.pipeline import ClipStream
from genie.data.shards import ShardWriter, encode_frames


def genie_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_unknown_experiment_lists_the_available_ones(tmp_path: Path) -> None:
    proc = genie_cli("genie.train", "+experiment=tokenizer_tinyy", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert (
        "tokenizer_tinyy" in proc.stderr and "tokenizer_tiny" in proc.stderr and "coinrun_tiny" in proc.stderr
    )


def test_missing_checkpoint_is_one_line(tmp_path: Path) -> None:
    proc = genie_cli(
        "genie.train", "+experiment=dynamics_tiny", "model.tokenizer_ckpt=/nope/last.ckpt", cwd=tmp_path
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: tokenizer checkpoint /nope/last.ckpt does not exist")
    gen = genie_cli("genie.generate", "checkpoint=/nope/last.ckpt", cwd=tmp_path)
    assert gen.returncode != 0 and "Traceback" not in gen.stderr and "/nope/last.ckpt" in gen.stderr


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with exit code 1 and one ``error:`` line, no traceback; returns that line."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.parametrize("command", ["genie.params", "genie.memory"])
def test_planners_name_an_unknown_experiment_in_one_line(command: str, tmp_path: Path) -> None:
    proc = genie_cli(command, "+experiment=tokenizer_tinyy", cwd=tmp_path)
    line = one_line_error(proc)
    assert "experiment/tokenizer_tinyy" in line
    assert "tokenizer_tiny" in proc.stderr and "coinrun_tiny" in proc.stderr  # Hydra's list of options


@pytest.mark.parametrize("flag", ["--batch", "--devices"])
@pytest.mark.parametrize("value", ["-3", "0", "x"])
def test_memory_refuses_a_batch_or_device_count_below_one(flag: str, value: str, tmp_path: Path) -> None:
    proc = genie_cli("genie.memory", "+experiment=tokenizer_tiny", flag, value, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "expected a whole number >= 1" in proc.stderr and "MiB" not in proc.stdout


def test_a_typed_override_of_the_wrong_type_names_its_key(tmp_path: Path) -> None:
    proc = genie_cli("genie.train", "+experiment=tokenizer_tiny", "trainer.max_steps=abc", cwd=tmp_path)
    line = one_line_error(proc)
    assert (
        line == "error: trainer.max_steps=abc: trainer.max_steps takes a whole number (the config has 1050)"
    )


@pytest.mark.parametrize(
    ("override", "says"),
    [("steps=abc", "steps=abc: steps takes a whole number"), ("steps=0", "steps=0"), ("fps=0", "fps=0")],
)
def test_generate_refuses_bad_steps_and_fps(override: str, says: str, tmp_path: Path) -> None:
    proc = genie_cli("genie.generate", "checkpoint=/nope/last.ckpt", override, cwd=tmp_path)
    assert says in one_line_error(proc)


def test_training_on_shards_without_a_usable_clip_stops_with_one_line(tmp_path: Path) -> None:
    with ShardWriter(str(tmp_path / "bad-%06d.tar"), max_count=100) as w:
        for k in range(3):
            w.write(f"c{k}", np.zeros((16, 8, 8, 3), np.uint8), {})
    for path in tmp_path.glob("bad-*.tar"):  # rewrite each clip's frames as float32
        import io
        import tarfile

        members = []
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m)
                assert f is not None
                data = f.read()
                if m.name.endswith(".npz"):
                    data = encode_frames(np.zeros((16, 8, 8, 3), np.float32))
                members.append((m.name, data))
        with tarfile.open(path, "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shards = str(tmp_path / "bad-*.tar")
    proc = subprocess.run(
        [sys.executable, "-m", "genie.train", "+experiment=tokenizer_tiny", "data=shards",
         f"data.train_shards={shards}", f"data.val_shards={shards}", "data.size=[8,8]", "data.num_workers=1",
         "trainer.max_steps=2", "callbacks.rich_progress_bar=null"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,  # a hang guard: this used to loop forever
    )  # fmt: skip
    line = one_line_error(proc)
    assert "gave no usable clip" in line and "bad-000000.tar" in line and "float32" in line


FRAMES = 4


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    t=st.integers(1, 10),
    h=st.integers(2, 40),
    w=st.integers(2, 40),
    c=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from(["uint8", "float32", "uint16", "int64"]),
    extra_dim=st.booleans(),
)
def test_decode_accepts_exactly_usable_clips(
    t: int, h: int, w: int, c: int, dtype: str, extra_dim: bool
) -> None:
    rng = np.random.default_rng(t * 1000 + h * 10 + w)
    frames = rng.integers(0, 256, (t, h, w, c)).astype(dtype)
    if extra_dim:
        frames = frames[None]
    sample = {"npz": encode_frames(frames), "json": json.dumps({"actions": list(range(t - 1))}).encode()}
    stream = ClipStream.__new__(ClipStream)  # decode only: no shards needed
    stream.frames, stream.size, stream.value_range, stream.repeat = FRAMES, (8, 8), (0.0, 1.0), True
    usable = dtype == "uint8" and not extra_dim and c == 3 and t >= FRAMES
    if not usable:
        with pytest.raises(ValueError, match=r"RGB|uint8|shorter"):
            stream.decode(sample, rng)
        return
    out = stream.decode(sample, rng)
    video, actions = out["video"], out["actions"]
    assert video.shape == (FRAMES, 3, 8, 8) and str(video.dtype) == "torch.float32"
    assert float(video.min()) >= 0.0 and float(video.max()) <= 1.0
    # the actions follow the window: consecutive true actions
    assert actions.shape == (FRAMES - 1,) and (actions[1:] - actions[:-1] == 1).all()


def test_stream_skips_bad_clips_and_counts_them(tmp_path: Path) -> None:
    good = np.zeros((6, 8, 8, 3), np.uint8)
    with ShardWriter(str(tmp_path / "s-%06d.tar"), max_count=100) as w:
        w.write("a", good, {})
        w.write("b", good.astype(np.float32), {})  # wrong dtype
        w.write("c", good[:2], {})  # too short
        w.write("d", good[..., :1], {})  # grey
        w.write("e", good, {})
    stream = ClipStream(str(tmp_path / "s-*.tar"), frames=4, size=(8, 8))
    assert len(list(stream)) == 2 and stream.errors.samples == 3
