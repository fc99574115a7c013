"""Every entry point, fed what a hostile or clumsy user would give it: hypothesis over command-line values,
override values, file contents (empty, truncated, wrong type, random, huge) and HTTP bodies.

The contract under test: a user's mistake ends a command with a clear message and a non-zero exit code (for
the tools: ``main`` returns non-zero or argparse exits 2; for the Hydra commands: :func:`genie.config.user_error`
gives the one line), never an uncaught exception - and nothing is half-written.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genie.config import compose_config, user_error
from genie.data.pipeline import ClipStream
from genie.data.shards import ShardWriter
from test_play import server  # noqa: F401 (the play server fixture)
from tiny import SIZE

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

BAD_NUMBERS = ["-1", "0", "1", "abc", "1e400", "nan", "-inf", "99999999999999999999", "", "1.5", "[1,2]"]


def tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(module: ModuleType, argv: list[str]) -> int:
    """``main(argv)``'s exit code; argparse's own refusals (SystemExit 2) count as one. Any other exception
    propagates and fails the test."""
    try:
        return int(module.main(argv))
    except SystemExit as exit_:
        assert exit_.code == 2, exit_.code
        return 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good shard and the kinds of bad file a user hands over."""
    root = tmp_path_factory.mktemp("files")
    with ShardWriter(str(root / "good-%06d.tar"), max_count=100) as w:
        rng = np.random.default_rng(0)
        for k in range(4):
            frames = rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
            w.write(f"c{k}", frames, {"fps": 10, "actions": [int(a) for a in rng.integers(0, 4, 15)]})
    good = root / "good-000000.tar"
    out = {"good": good}
    out["empty"] = root / "empty.tar"
    out["empty"].write_bytes(b"")
    out["truncated"] = root / "truncated.tar"
    out["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    out["text"] = root / "notes.tar"
    out["text"].write_text("this is not a tar file\n" * 50)
    out["json"] = root / "ckpt.ckpt"
    out["json"].write_text(json.dumps({"state_dict": 1}))
    out["dir"] = root / "folder"
    out["dir"].mkdir()
    out["missing"] = root / "nothing-here.tar"
    return out


FILE_KINDS = ["good", "empty", "truncated", "text", "json", "dir", "missing"]


# -- tools/ ---------------------------------------------------------------------------------------------------
@FAST
@given(
    kind=st.sampled_from(FILE_KINDS),
    n=st.sampled_from(BAD_NUMBERS),
    flag=st.sampled_from(["--clips", "--frames"]),
)
def test_inspect_shards_never_raises(files: dict[str, Path], kind: str, n: str, flag: str) -> None:
    code = run_tool(tool("inspect_shards"), [str(files[kind]), flag, n])
    assert code in (0, 1, 2)
    if kind in ("empty", "truncated", "text", "json") and n.isdigit() and int(n) > 0:
        assert code == 1  # a corrupt shard is reported


@FAST
@given(
    kind=st.sampled_from(FILE_KINDS), force=st.booleans(), out_kind=st.sampled_from(["new", "file", "dir"])
)
def test_export_never_raises_and_leaves_nothing_half_written(
    files: dict[str, Path], kind: str, force: bool, out_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("export")
    out = root / "out"
    if out_kind == "file":
        out.write_text("keep me")
    elif out_kind == "dir":
        out.mkdir()
    code = run_tool(tool("export"), [str(files[kind]), "--out", str(out), *(["--force"] if force else [])])
    assert code == 2  # none of these files is a checkpoint
    assert not list(root.glob("*.tmp*"))
    if out_kind == "file":
        assert out.read_text() == "keep me"


@FAST
@given(
    kind=st.sampled_from(FILE_KINDS),
    args=st.lists(
        st.tuples(
            st.sampled_from(["--size", "--fps", "--frames", "--val-fraction", "--videos-per-shard", "--max-static",
                             "--windows-per-segment", "--segment-frames", "--workers"]),
            st.sampled_from(BAD_NUMBERS),
        ),
        max_size=3,
    ),
)  # fmt: skip
def test_videos_to_shards_never_raises(
    files: dict[str, Path], kind: str, args: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    pytest.importorskip("av", reason="PyAV (the video extra) is absent")
    out = tmp_path_factory.mktemp("v2s") / "out"
    argv = [str(files[kind]), "--out", str(out)]
    for flag, value in args:
        argv += [flag, value, value] if flag == "--size" else [flag, value]
    code = run_tool(tool("videos_to_shards"), argv)
    assert code in (1, 2)  # none of these is a video: nothing usable is ever written
    assert not list(out.glob("*.tmp*")) if out.exists() else True


@FAST
@given(
    cmd=st.sampled_from(["score", "train", "filter"]),
    kind=st.sampled_from(FILE_KINDS),
    threshold=st.sampled_from(BAD_NUMBERS),
)
def test_curate_never_raises(
    files: dict[str, Path], cmd: str, kind: str, threshold: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("curate")
    path = str(files[kind])
    argv = {
        "score": ["score", path, "--out", str(root / "scores.csv")],
        "train": ["train", "--scores", path, "--ratings", path, "--model", str(root / "m.json")],
        "filter": ["filter", path, "--heuristic", "--threshold", threshold, "--out", str(root / "out")],
    }[cmd]
    code = run_tool(tool("curate"), argv)
    assert code in (0, 1, 2)
    if cmd == "train":
        assert code == 2  # neither file holds scores or ratings


@FAST
@given(
    args=st.lists(
        st.tuples(
            st.sampled_from(["--transitions", "--val-transitions", "--levels", "--val-levels", "--frames",
                             "--clips-per-shard", "--envs", "--workers", "--game", "--mode"]),
            st.sampled_from(BAD_NUMBERS),
        ),
        min_size=1,
        max_size=3,
    )
)  # fmt: skip
def test_make_procgen_shards_refuses_bad_arguments(
    args: list[tuple[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("procgen") / "out"
    argv = ["--out", str(out)] + [x for pair in args for x in pair]
    module = tool("make_procgen_shards")
    values = dict(args)
    bad = any(
        not v.isdigit() or int(v) < 1
        for k, v in values.items()
        if k not in ("--game", "--mode", "--val-transitions")
    )
    if not bad and "--game" not in values and "--mode" not in values:
        return  # a valid request would start making shards: not this test's business
    assert run_tool(module, argv) == 2
    assert not out.exists() or not list(out.glob("*.tar"))


@FAST
@given(
    kind=st.sampled_from(FILE_KINDS), labels=st.sampled_from(BAD_NUMBERS), clips=st.sampled_from(BAD_NUMBERS)
)
def test_fit_action_map_never_raises(files: dict[str, Path], kind: str, labels: str, clips: str) -> None:
    argv = [str(files[kind]), str(files["good"]), "--labels", labels, "--clips", clips]
    assert run_tool(tool("fit_action_map"), argv) == 2  # none of these is a model


# -- the Hydra commands -----------------------------------------------------------------------------------------
TRAIN_KEYS = [
    "trainer.max_steps", "data.batch_size", "data.frames", "data.num_workers", "data.size", "seed",
    "model.optim.lr", "model.optim.warmup_steps", "data.shuffle_buffer", "trainer.precision",
    "data.global_batch_size", "trainer.accumulate_grad_batches", "data.value_range",
]  # fmt: skip


def check_user_error(fn: Callable[[], Any], overrides: list[str]) -> None:
    """``fn()`` either works or fails with an error that :func:`user_error` turns into one line."""
    try:
        fn()
    except Exception as err:
        line = user_error(err, overrides)
        assert line is not None, f"{overrides}: {type(err).__name__}: {err}"
        assert "\n" not in line


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    experiment=st.sampled_from(["tokenizer_tiny", "lam_tiny"]),
    pairs=st.lists(
        st.tuples(st.sampled_from(TRAIN_KEYS), st.sampled_from(BAD_NUMBERS)), min_size=1, max_size=3
    ),
)
def test_train_overrides_build_or_fail_in_one_line(
    files: dict[str, Path], experiment: str, pairs: list[tuple[str, str]]
) -> None:
    """What ``genie.train`` builds before fitting - config, datamodule and its loader, module, trainer."""
    from hydra.utils import instantiate

    shards = str(files["good"])
    overrides = [f"+experiment={experiment}", "data=shards", f"data.train_shards={shards}",
                 f"data.val_shards={shards}", f"data.size=[{SIZE},{SIZE}]", "data.num_workers=0",
                 *[f"{k}={v}" for k, v in dict(pairs).items()]]  # fmt: skip

    def build() -> None:
        cfg = compose_config(overrides)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        instantiate(cfg.model)
        instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        datamodule.train_dataloader()  # (not iterated: a batch of 10^20 clips would fill the memory)

    check_user_error(build, overrides)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_export import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt")


@FAST
@given(
    steps=st.sampled_from([*BAD_NUMBERS, "3"]),
    fps=st.sampled_from([*BAD_NUMBERS, "5"]),
    actions=st.sampled_from(["random", "each", "[0,1]", "[9]", "[-1]", "[1.5]", "abc", "[]", "'0 1 x'"]),
    prompt=st.sampled_from(["none", "good", "text", "empty", "huge"]),
    temperature=st.sampled_from(["1.0", "-1", "abc", "null"]),
)
def test_generate_runs_or_fails_in_one_line(
    checkpoint: Path, steps: str, fps: str, actions: str, prompt: str, temperature: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    from genie.generate import command

    root = tmp_path_factory.mktemp("generate")
    image = root / "prompt.png"
    if prompt == "good":
        from PIL import Image

        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    elif prompt == "text":
        image.write_text("not an image")
    elif prompt == "empty":
        image.write_bytes(b"")
    elif prompt == "huge":
        from test_play import _bomb_png

        image.write_bytes(_bomb_png())
    overrides = [f"checkpoint={checkpoint}", f"steps={steps}", f"fps={fps}", f"actions={actions}",
                 f"sampling.temperature={temperature}", f"paths.output_dir={root / 'out'}", "scale=1"]  # fmt: skip
    if prompt != "none":
        overrides.append(f"prompt={image}")

    def run() -> None:
        cfg = compose_config(overrides, "generate")
        command(cfg)

    check_user_error(run, overrides)
    assert not list((root / "out").glob("*.tmp")) if (root / "out").exists() else True


@FAST
@given(
    eval_t=st.sampled_from([*BAD_NUMBERS, "4", "16"]),
    max_clips=st.sampled_from([*BAD_NUMBERS, "null"]),
    batch_size=st.sampled_from(BAD_NUMBERS),
    shards=st.sampled_from(FILE_KINDS),
)
def test_evaluate_runs_or_fails_in_one_line(
    checkpoint: Path, files: dict[str, Path], eval_t: str, max_clips: str, batch_size: str, shards: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    from genie.evaluate import command

    out = tmp_path_factory.mktemp("evaluate")
    overrides = [f"checkpoint={checkpoint}", f"shards={files[shards]}", f"eval.eval_t={eval_t}",
                 f"eval.max_clips={max_clips}", f"eval.batch_size={batch_size}", "eval.fvd=false",
                 "eval.rollout_clips=2", "eval.sampling.steps=1", f"paths.output_dir={out}"]  # fmt: skip
    check_user_error(lambda: command(compose_config(overrides, "evaluate")), overrides)


@FAST
@given(pairs=st.lists(st.tuples(st.sampled_from(["model.model.depth", "data.size", "data.frames"]),
                                st.sampled_from(BAD_NUMBERS)), max_size=2))  # fmt: skip
def test_params_and_memory_plan_or_fail_in_one_line(pairs: list[tuple[str, str]]) -> None:
    from genie.memory import plan
    from genie.params import count

    overrides = ["+experiment=tokenizer_tiny", *[f"{k}={v}" for k, v in dict(pairs).items()]]
    check_user_error(lambda: count(compose_config(overrides)), overrides)
    check_user_error(lambda: plan(overrides), overrides)


# -- files and bodies ---------------------------------------------------------------------------------------------
@FAST
@given(
    data=st.one_of(
        st.binary(max_size=4096), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"GIF89a" + bytes(50)])
    )
)
def test_any_bytes_as_a_prompt_image_give_a_frame_or_a_clear_error(data: bytes) -> None:
    from genie.media import read_image

    try:
        frame, _ = read_image(data, (SIZE, SIZE), "the image")
    except ValueError as err:
        assert str(err).startswith("cannot read the image")
        return
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8


@FAST
@given(data=st.binary(max_size=8192), keep=st.integers(0, 100))
def test_any_bytes_as_a_shard_are_counted_not_raised(
    files: dict[str, Path], data: bytes, keep: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Random bytes, or a good shard cut anywhere with random bytes after it: the stream skips and counts,
    never raises, and keeps every clip before the damage."""
    good = files["good"].read_bytes()
    cut = good[: len(good) * keep // 100] + data
    path = tmp_path_factory.mktemp("shard") / "s.tar"
    path.write_bytes(cut)
    stream = ClipStream(str(path), frames=16, size=(SIZE, SIZE))
    items = list(stream)
    assert len(items) <= 4
    if len(items) < 4:
        assert stream.errors.shards + stream.errors.samples >= 1


@FAST
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["action", "x"]), inner, max_size=2),
            max_leaves=8,
        ).map(lambda v: json.dumps({"action": v}).encode()),
    )
)  # fmt: skip
def test_any_step_body_is_an_integer_action_or_a_one_line_error(body: bytes) -> None:
    from genie.play import parse_action_body

    try:
        action = parse_action_body(body)
    except ValueError as err:
        assert "\n" not in str(err) and "action" in str(err)
        return
    assert type(action) is int
    assert json.loads(body)["action"] == action


def test_step_bodies_through_the_server(server: str) -> None:  # noqa: F811 (the fixture)
    """A handful of hostile bodies through the real server: 400/413, never 500; the session goes on."""
    from test_play import _post

    for body in (b'{"action": 1e999}', b'{"action": -0.0}', b'{"action": [1]}', b"\xff\xfe", b"{" * 900):
        status, answer = _post(server + "step", body)
        assert status in (400, 413) and "error" in answer, (body[:20], status)
    status, state = _post(server + "step", b'{"action": 2}')
    assert status == 200 and state["actions"] == [2]


def test_tar_members_of_a_good_shard(files: dict[str, Path]) -> None:
    from genie.data.shards import tar_members

    with open(files["good"], "rb") as f:
        names = [n for n, _ in tar_members(f)]
    assert names == [f"c{k}.{ext}" for k in range(4) for ext in ("npz", "json")]
    with tarfile.open(files["good"]) as tar:
        assert [m.name for m in tar.getmembers()] == names
