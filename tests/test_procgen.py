"""Procgen/CoinRun shards (App. F data) and the coinrun_tiny experiments.

procgen2 needs numpy<2, so these run in .venv-procgen (`make test-procgen`, part of `make test`); in the main
environment they skip with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from genie.data.procgen import ACTIONS, ProcgenShardConfig, write_procgen_shards
from genie.data.shards import read_shard

REASON = (
    "the procgen extra is absent here (it needs numpy<2): `make test-procgen` runs these in .venv-procgen"
)
_absent = subprocess.run([sys.executable, "-c", "import procgen"], capture_output=True).returncode != 0


def needs_procgen(test: Callable[..., None]) -> Callable[..., None]:
    """Marked ``procgen`` (selected by make test-procgen) and skipped with the reason where it is absent."""
    return pytest.mark.procgen(pytest.mark.skipif(_absent, reason=REASON)(test))


ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(**kw: object) -> ProcgenShardConfig:
    base: dict[str, object] = dict(
        train_transitions=15 * 10, val_transitions=15 * 3, clips_per_shard=4, num_envs=4, num_levels=50
    )
    return ProcgenShardConfig(**{**base, **kw})  # type: ignore[arg-type]


def read_all(out: Path) -> dict[str, list[tuple[str, np.ndarray, dict]]]:
    return {p.name: list(read_shard(p)) for p in sorted(out.glob("*.tar"))}


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown procgen game 'koinrun'.*coinrun"):
        ProcgenShardConfig(game="koinrun")
    with pytest.raises(ValueError, match="distribution_mode"):
        ProcgenShardConfig(distribution_mode="medium")


@needs_procgen
def test_procgen_shards_resumable_and_deterministic(tmp_path: Path) -> None:
    out = tmp_path / "coinrun"
    manifest = write_procgen_shards(out, tiny_cfg())
    assert manifest["clips"] == {"train": 10, "val": 3}
    first = read_all(out)
    assert sorted(first) == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    clips = [c for shard in first.values() for c in shard]
    assert len(clips) == 13
    for _key, frames, record in clips:
        assert frames.shape == (16, 64, 64, 3) and frames.dtype == np.uint8
        assert record["fps"] == 10 and record["game"] == "coinrun" and record["start_step"] >= 0
        acts = np.asarray(record["actions"])
        assert acts.shape == (15,) and acts.min() >= 0 and acts.max() < len(ACTIONS)
        assert frames.std() > 0  # real frames, not blanks
    # val clips come from other (unseen) levels than train
    assert all(r["source"] == "procgen/coinrun/val" for _, _, r in first["val-000000.tar"])

    # kill mid-run: one shard lost, one half-written temp file left; re-running (2 processes) remakes only that
    (out / "train-000001.tar").unlink()
    (out / "train-000002.tar.tmp999").write_bytes(b"partial")
    (out / "manifest.json").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    write_procgen_shards(out, tiny_cfg(), workers=2)
    assert not list(out.glob("*.tmp*"))
    assert all(out.joinpath(n).stat().st_mtime_ns == t for n, t in before.items())  # kept, not redone
    again = read_all(out)
    assert sorted(again) == sorted(first)
    for name in first:
        for (k1, f1, r1), (k2, f2, r2) in zip(first[name], again[name], strict=True):
            assert k1 == k2 and r1 == r2 and np.array_equal(f1, f2)
    assert json.loads((out / "manifest.json").read_text())["clips"]["train"] == 10

    # a different seed gives other clips; other settings in the same folder are refused with the reason
    write_procgen_shards(tmp_path / "seed1", tiny_cfg(seed=1))
    other = read_all(tmp_path / "seed1")
    assert not np.array_equal(other["train-000000.tar"][0][1], first["train-000000.tar"][0][1])
    with pytest.raises(ValueError, match=r"other settings.*num_envs"):
        write_procgen_shards(out, tiny_cfg(num_envs=8))


@needs_procgen
def test_make_procgen_shards_cli_any_game(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_procgen_shards.py"), "--game", "ninja", "--out",
         str(tmp_path / "ninja"), "--transitions", "60", "--val-transitions", "15", "--envs", "2",
         "--clips-per-shard", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ninja: 4 train + 1 val clips" in proc.stdout
    (_, frames, record), *_ = read_shard(tmp_path / "ninja" / "train-000000.tar")
    assert record["game"] == "ninja" and frames.shape == (16, 64, 64, 3)


def test_cli_rejects_unknown_game(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_procgen_shards.py"), "--game", "pong", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "pong" in proc.stderr and "coinrun" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_procgen
@pytest.mark.slow
def test_coinrun_tiny_experiments_train_on_procgen_shards(tmp_path: Path) -> None:
    from test_train import TWO_STEPS, run_train

    data = tmp_path / "data"
    write_procgen_shards(data / "coinrun", tiny_cfg(train_transitions=15 * 8, val_transitions=15 * 4))
    small = ["data.num_workers=0", "data.batch_size=2", "data.val_batch_size=2"]
    ckpts = {}
    for name in ("coinrun_tiny", "coinrun_lam_tiny"):
        run = tmp_path / name
        proc = run_train(tmp_path, f"+experiment={name}", *TWO_STEPS, *small, run_dir=run)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ckpts[name] = run / "checkpoints" / "last.ckpt"
    lam = json.loads((tmp_path / "coinrun_lam_tiny" / "metrics.json").read_text())
    assert 0 <= lam["val/nmi"] <= 1  # the shards' true actions reach the LAM's NMI
    run = tmp_path / "coinrun_dynamics_tiny"
    proc = run_train(
        tmp_path,
        "+experiment=coinrun_dynamics_tiny",
        f"model.tokenizer_ckpt={ckpts['coinrun_tiny']}",
        f"model.lam_ckpt={ckpts['coinrun_lam_tiny']}",
        "model.sampling.steps=2",
        *TWO_STEPS,
        *small,
        run_dir=run,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2


def test_missing_coinrun_shards_name_the_command(tmp_path: Path) -> None:
    from test_train import run_train

    proc = run_train(tmp_path, "+experiment=coinrun_tiny", "trainer.max_steps=1")
    assert proc.returncode != 0
    assert "make_procgen_shards.py --out" in proc.stderr and "Traceback" not in proc.stderr


@needs_procgen
@pytest.mark.slow
def test_imitation_pipeline_end_to_end(tmp_path: Path) -> None:
    from genie.imitation import ImitationConfig, run
    from test_distributed import stage_checkpoints

    _, lam = stage_checkpoints(tmp_path / "stages")  # an untrained 64x64 LAM: the pipeline, not the numbers
    cfg = ImitationConfig(
        expert_clips=8, labels=[10, 50], bc_steps=4, batch_size=16, episodes=4, max_steps=40
    )
    results = run(str(lam), tmp_path / "out", cfg)
    values = [results["random"], results["expert_script"], results["oracle_bc"]]
    values += [r["return"] for r in results["latent_bc"].values()]
    assert all(np.isfinite(v) and 0 <= v <= 10 for v in values)  # CoinRun pays 10 for the coin
    assert set(results["latent_bc"]) == {"10", "50"}
    assert all(0 <= r["map_accuracy"] <= 1 for r in results["latent_bc"].values())
    table = (tmp_path / "out" / "imitation.md").read_text()
    assert "BC on latent actions + map | 50" in table
    assert json.loads((tmp_path / "out" / "imitation.json").read_text())["config"]["labels"] == [10, 50]
    assert (tmp_path / "out" / "imitation.png").exists()


def test_effect_classes_of_the_15_buttons() -> None:
    import torch

    from genie.data.procgen import ACTION_EFFECTS, EFFECTS, effect_factors, effect_ids

    by_name = {name: EFFECTS[ACTION_EFFECTS[i]] for i, name in enumerate(ACTIONS)}
    assert by_name["left"] == by_name["left+down"] == "left" and by_name["left+up"] == "left+jump"
    assert by_name["right"] == by_name["right+down"] == "right" and by_name["right+up"] == "right+jump"
    assert by_name["up"] == "jump"
    assert [n for n, e in by_name.items() if e == "none"] == ["down", "noop", "d", "a", "w", "s", "q", "e"]
    ids = np.array([[1, 7, -1], [5, 4, 2]])
    assert effect_ids(ids).tolist() == [[0, 4, -1], [3, 2, 1]]
    assert effect_ids(torch.as_tensor(ids)).tolist() == [[0, 4, -1], [3, 2, 1]]
    factors = effect_factors(torch.arange(len(EFFECTS)))
    for name, h, j in zip(EFFECTS, factors["horizontal"].tolist(), factors["jump"].tolist(), strict=True):
        assert (h == 0) == ("left" in name) and (h == 2) == ("right" in name) and j == ("jump" in name)


@pytest.mark.parametrize("repeat", [0.0, 0.8])
def test_sticky_policy_repeats_the_previous_action_at_its_rate(repeat: float) -> None:
    from genie.data.procgen import StickyPolicy, random_policy

    cfg = ProcgenShardConfig(action_repeat_prob=repeat)
    policy = cfg.policy()
    assert isinstance(policy, StickyPolicy) == (repeat > 0)
    rng = np.random.default_rng(0)
    steps = np.stack([policy(rng, 64) for _ in range(400)])  # (steps, envs)
    same = (steps[1:] == steps[:-1]).mean()
    expected = repeat + (1 - repeat) / len(ACTIONS)  # kept, or a fresh draw that happens to match
    assert abs(same - expected) < 0.02
    assert set(np.unique(steps)) == set(range(len(ACTIONS)))  # every button still played
    assert random_policy(rng, 3).shape == (3,)
    with pytest.raises(ValueError, match="action_repeat_prob"):
        ProcgenShardConfig(action_repeat_prob=1.0)


@needs_procgen
def test_sticky_action_shards_repeat_their_actions(tmp_path: Path) -> None:
    manifest = write_procgen_shards(tmp_path / "sticky", tiny_cfg(action_repeat_prob=0.75))
    assert manifest["settings"]["action_repeat_prob"] == 0.75
    clips = [
        np.asarray(r["actions"]) for shard in read_all(tmp_path / "sticky").values() for _, _, r in shard
    ]
    repeated = np.mean([np.mean(a[1:] == a[:-1]) for a in clips])
    assert repeated > 0.6  # uniform play repeats 1 in 15
    plain = write_procgen_shards(tmp_path / "plain", tiny_cfg())
    assert "action_repeat_prob" not in plain["settings"]  # folders from before the option stay resumable
