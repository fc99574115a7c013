"""genie.ceiling: the inverse-dynamics ceiling learns a visible action, respects the time alignment, and its
small-sample floor is what independent labellings score."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genie.ceiling import CeilingConfig, ceiling, nmi, score, shuffled_nmi, transition_pairs
from genie.data.shards import ShardWriter


def test_transition_pairs_label_each_pair_with_the_shifted_action() -> None:
    video = torch.arange(2 * 4).float().reshape(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)
    actions = torch.tensor([[10, 11, 12], [20, -1, 22]])
    x_t, x_next, y = transition_pairs(video, actions)
    assert y.tolist() == [10, 11, 12, 20, 22]  # the unknown one dropped
    assert (x_next - x_t == 1).all()  # consecutive frames
    assert x_t[:, 0, 0, 0].tolist() == [0, 1, 2, 4, 6]
    _, _, later = transition_pairs(video, actions, shift=1)  # x_t -> x_{t+1} labelled a_{t+1}
    assert later.tolist() == [11, 12, 22]
    _, _, earlier = transition_pairs(video, actions, shift=-1)
    assert earlier.tolist() == [10, 11, 20]


def test_shuffled_floor_is_small_and_a_relabelling_scores_one() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (480,), generator=g)
    b = torch.randint(0, 15, (480,), generator=g)
    assert 0.01 < nmi(a, b) < 0.08  # independent, yet well above 0 on 480 items: the bias the floor shows
    assert abs(shuffled_nmi(a, b) - nmi(a, b)) < 0.03
    assert nmi(a, (a + 3) % 6) == pytest.approx(1.0)
    s = score(a, a)
    assert s["accuracy"] == 1.0 and s["nmi"] == pytest.approx(1.0) and s["shuffled_nmi"] < 0.1


def _moving_square_shards(root: Path, clips: int, seed: int) -> str:
    """Clips of a square that moves left / stays / right by 2 px with the recorded action: visible actions."""
    g = torch.Generator().manual_seed(seed)
    with ShardWriter(str(root / "s-%06d.tar"), max_count=1000) as w:
        for k in range(clips):
            actions = torch.randint(0, 3, (15,), generator=g)
            x = int(torch.randint(8, 24, (), generator=g))
            frames = torch.zeros(16, 32, 32, 3, dtype=torch.uint8)
            for t in range(16):
                frames[t, 12:20, x : x + 6] = 255
                if t < 15:
                    x = max(0, min(26, x + 2 * (int(actions[t]) - 1)))
            w.write(f"c{k}", frames.numpy(), {"actions": actions.tolist()})
    return str(root / "s-*.tar")


@pytest.mark.slow
def test_idm_learns_a_visible_action_and_the_true_alignment_wins(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    train = _moving_square_shards(tmp_path / "train", 64, 0)
    val = _moving_square_shards(tmp_path / "val", 16, 1)
    cfg = CeilingConfig(steps=150, batch_size=64, width=16, val_transitions=240, shifts=[0, 1])
    out = ceiling(train, val, cfg, size=(32, 32))
    true, shifted = out["by_shift"]["0"], out["by_shift"]["1"]
    assert out["classes"] == 3 and true["transitions"] == 240
    assert true["accuracy"] > 0.9 and true["nmi"] > 0.6  # the square's move tells the action
    assert shifted["nmi"] < true["nmi"] - 0.3 and shifted["nmi"] < 0.15  # i.i.d. actions: a_{t+1} is unseen
    assert true["shuffled_nmi"] < 0.05 and out["idm_nmi"] == true["nmi"]


def test_ceiling_command_writes_its_report(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    shards = _moving_square_shards(tmp_path / "d", 8, 0)
    proc = subprocess.run(
        [sys.executable, "-m", "genie.ceiling", f"train_shards={shards}", f"val_shards={shards}", "size=[32,32]",
         "ceiling.steps=3", "ceiling.batch_size=16", "ceiling.width=8", "ceiling.shifts=[0]",
         f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    assert set(result["by_shift"]) == {"0"} and 0 <= result["idm_accuracy"] <= 1
    assert "| a_t (true) |" in (tmp_path / "out" / "ceiling.md").read_text()
    bad = subprocess.run(
        [sys.executable, "-m", "genie.ceiling", f"train_shards={shards}", f"val_shards={shards}",
         "ceiling.labels=buttons", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 1 and "labels must be 'actions' or 'effects'" in bad.stderr
    assert "Traceback" not in bad.stderr
