"""genie.ceiling: the inverse-dynamics ceiling learns a visible action, respects the time alignment, and its
small-sample floor is what independent labellings score."""

from __future__ import annotations

import dataclasses
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


def test_factor_nmi_says_which_factor_of_the_effect_a_labelling_carries() -> None:
    """A labelling that gets the jump right and the direction wrong scores 1 on the jump and ~0 on the
    direction; a perfect one 1 on both; and the ceiling's report lists both factors."""
    from genie.ceiling import factor_nmi, markdown

    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 6, (3000,), generator=g)  # effect ids: 2 x horizontal + jump
    jump_only = 2 * torch.randint(0, 3, (3000,), generator=g) + true % 2
    assert factor_nmi(true, true) == pytest.approx({"nmi_horizontal": 1.0, "nmi_jump": 1.0})
    got = factor_nmi(jump_only, true)
    assert got["nmi_jump"] == pytest.approx(1.0) and got["nmi_horizontal"] < 0.01
    result = {
        "labels": "effects",
        "classes": 6,
        "steps": 1,
        "by_shift": {"0": {**score(jump_only, true), **got}},
    }
    assert "- 0: horizontal 0.00" in markdown(result) and "jump 1.000" in markdown(result)


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
         "ceiling.worth=[true]", "ceiling.worth_steps=2", "ceiling.val_transitions=64",
         f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "ceiling.json").read_text())
    assert set(result["by_shift"]) == {"0"} and 0 <= result["idm_accuracy"] <= 1
    assert "| a_t (true) |" in (tmp_path / "out" / "ceiling.md").read_text()
    assert (
        set(result["worth"]["by_labelling"]) == {"none", "true"}
        and "| true | 3 |" in (tmp_path / "out" / "ceiling.md").read_text()
    )
    bad = subprocess.run(
        [sys.executable, "-m", "genie.ceiling", f"train_shards={shards}", f"val_shards={shards}",
         "ceiling.labels=buttons", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 1 and "labels must be 'actions' or 'effects'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_lam_codes_tool_finds_where_the_action_shows_and_tabulates_the_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tools/lam_codes.py: the moving square's action shows in the blocks the square crosses and nowhere else;
    the command prints the map and a LAM's per-code motion table (the global shift it uses: test_lam)."""
    from test_adversarial import tool

    lam_codes = tool("lam_codes")
    (tmp_path / "d").mkdir()
    shards = _moving_square_shards(tmp_path / "d", 24, 0)
    from genie.data.pipeline import ClipStream

    batch = next(
        iter(torch.utils.data.DataLoader(ClipStream(shards, frames=16, size=(32, 32)), batch_size=24))
    )
    eta = lam_codes.action_visibility(batch["video"].numpy(), batch["actions"].numpy())
    assert eta.shape == (4, 4)
    assert eta[1:3].mean() > 0.01 and eta[[0, 3]].max() < 1e-3  # the square's rows (12-20 px), not the others
    from genie.models.lam import LAMConfig, LatentActionModel

    ckpt = tmp_path / "lam.pt"
    cfg = LAMConfig(image_size=(32, 32), patch=8, num_actions=3, latent_dim=4,
                    encoder={"dim": 16, "depth": 1, "num_heads": 2}, decoder={"dim": 16, "depth": 1, "num_heads": 2})  # fmt: skip
    state = {f"model.{k}": v for k, v in LatentActionModel(cfg).state_dict().items()}
    hp = {"stage": "lam", "model": dataclasses.asdict(cfg)}
    torch.save({"state_dict": state, "hyper_parameters": hp}, ckpt)  # laid out as genie.train writes it
    lam_codes.main(["--shards", shards, "--lam", str(ckpt), "--clips", "24", "--size", "32", "32"])
    out = capsys.readouterr().out
    assert (
        "24 clips, 360 transitions" in out and "| code | transitions |" in out and "NMI of the codes" in out
    )


def _token_lam_checkpoint(path: Path) -> Path:
    """An untrained token-input LAM (the Tab. 2 ablation) on 32x32 frames, saved with the tokenizer whose ids
    it reads, laid out as genie.train writes it."""
    from genie.models.lam import LAMConfig, LatentActionModel
    from genie.models.tokenizer import TokenizerConfig, VideoTokenizer

    st = {"dim": 16, "depth": 1, "num_heads": 2}
    tok_cfg = TokenizerConfig(image_size=(32, 32), patch=8, num_codes=16, code_dim=4, encoder=st, decoder=st)
    lam_cfg = LAMConfig(image_size=(32, 32), num_actions=3, latent_dim=4, input="tokens", token_vocab=16,
                        token_grid=(4, 4), encoder=st, decoder=st)  # fmt: skip
    state = {f"model.{k}": v for k, v in LatentActionModel(lam_cfg).state_dict().items()}
    state.update({f"tokenizer.{k}": v for k, v in VideoTokenizer(tok_cfg).state_dict().items()})
    hp = {
        "stage": "lam",
        "model": dataclasses.asdict(lam_cfg),
        "tokenizer_model": dataclasses.asdict(tok_cfg),
    }
    torch.save({"state_dict": state, "hyper_parameters": hp}, path)
    return path


def test_a_token_input_lams_codes_are_scored_off_its_own_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """ceiling.worth's ``lam`` labelling and tools/lam_codes.py take a token-input LAM's checkpoint: its codes
    are read off the ids of the tokenizer stored with it (pixels alone would be refused)."""
    from test_adversarial import tool

    (tmp_path / "d").mkdir()
    shards = _moving_square_shards(tmp_path / "d", 8, 0)
    ckpt = _token_lam_checkpoint(tmp_path / "lam.ckpt")
    cfg = CeilingConfig(shifts=[], worth=["lam"], worth_steps=2, batch_size=8, width=8, val_transitions=32,
                        lam_checkpoint=str(ckpt))  # fmt: skip
    worth = ceiling(shards, shards, cfg, size=(32, 32))["worth"]["by_labelling"]
    assert worth["lam"]["classes"] == 3 and set(worth) == {"none", "lam"}
    tool("lam_codes").main(["--shards", shards, "--lam", str(ckpt), "--clips", "8", "--size", "32", "32"])
    assert "8 clips, 120 transitions" in capsys.readouterr().out


def test_transition_triples_keep_a_frame_before_and_label_transition_t_at_index_t() -> None:
    from genie.ceiling import transition_triples

    video = torch.arange(2 * 4).float().reshape(2, 4, 1, 1, 1).expand(2, 4, 3, 2, 2)
    labels = {"a": torch.tensor([[10, 11, 12], [20, -1, 22]]), "b": torch.tensor([[0, 1, 2], [3, 4, 5]])}
    x_prev, x_t, x_next, picked = transition_triples(video, labels)
    assert picked["a"].tolist() == [11, 12, 22] and picked["b"].tolist() == [1, 2, 5]  # t >= 1; -1 dropped
    assert x_t[:, 0, 0, 0].tolist() == [1, 2, 6]
    assert (x_t - x_prev == 1).all() and (x_next - x_t == 1).all()


def test_next_frame_model_starts_as_a_copy_and_shares_its_start_across_label_counts() -> None:
    from genie.ceiling import NextFrameModel

    x = torch.rand(4, 3, 16, 16)
    torch.manual_seed(0)
    one = NextFrameModel(1, width=8)
    torch.manual_seed(0)
    six = NextFrameModel(6, width=8)
    out = six(torch.rand(4, 3, 16, 16), x, torch.arange(4))
    assert torch.allclose(out, x.clamp(1e-3, 1 - 1e-3), atol=1e-6)  # zero head: "the next frame is x_t"
    shared = {k: v for k, v in one.state_dict().items() if not k.startswith("label")}
    assert all(torch.equal(v, six.state_dict()[k]) for k, v in shared.items())


def test_worth_config_names_the_labelling_or_setting_at_fault() -> None:
    with pytest.raises(
        ValueError, match=r"must be true, horizontal, jump, lam, shuffled_true, .* got 'buttons'"
    ):
        CeilingConfig(worth=["buttons"])
    assert CeilingConfig(worth=[True]).worth == ["true"]  # `worth=[true]` on the command line is a YAML bool
    for name in ("jump", "shuffled_horizontal"):
        with pytest.raises(ValueError, match="set labels=effects"):
            CeilingConfig(worth=[name])
    for name in ("lam", "shuffled_lam"):
        with pytest.raises(ValueError, match=r"ceiling\.lam_checkpoint"):
            CeilingConfig(worth=[name])


def test_a_shuffled_labelling_leaves_the_other_labellings_results_as_they_were(tmp_path: Path) -> None:
    """Each labelling's model sees the same transitions whichever others are asked for: adding a floor
    (``shuffled_true``) changes no other figure, and the floor has its labelling's classes."""
    shards = _moving_square_shards(tmp_path, 8, 0)
    common = {"shifts": [], "worth_steps": 3, "batch_size": 16, "width": 8, "val_transitions": 32}
    one = CeilingConfig(worth=["true"], **common)
    two = CeilingConfig(worth=["true", "shuffled_true"], **common)
    alone = ceiling(shards, shards, one, size=(32, 32))["worth"]["by_labelling"]
    both = ceiling(shards, shards, two, size=(32, 32))["worth"]["by_labelling"]
    assert both["true"] == alone["true"] and both["none"] == alone["none"]
    assert both["shuffled_true"]["classes"] == alone["true"]["classes"] == 3
    assert both["shuffled_true"]["mse"] != alone["true"]["mse"]  # other labels: another model


@pytest.mark.slow
def test_the_true_action_is_worth_much_to_the_next_frame_of_a_moving_square_and_a_lam_is_scored(
    tmp_path: Path,
) -> None:
    """The square's i.i.d. move is unpredictable from the frames before it, so a next-frame model told the true
    action removes a large share of the unlabelled model's error; a (random, untrained) LAM's codes are scored
    on the same transitions; the report lists each labelling."""
    from genie.ceiling import markdown
    from genie.models.lam import LAMConfig, LatentActionModel

    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    train = _moving_square_shards(tmp_path / "train", 64, 0)
    val = _moving_square_shards(tmp_path / "val", 16, 1)
    lam_cfg = LAMConfig(image_size=(32, 32), patch=8, num_actions=3, latent_dim=4,
                        encoder={"dim": 16, "depth": 1, "num_heads": 2}, decoder={"dim": 16, "depth": 1, "num_heads": 2})  # fmt: skip
    ckpt = tmp_path / "lam.ckpt"
    state = {f"model.{k}": v for k, v in LatentActionModel(lam_cfg).state_dict().items()}
    torch.save(
        {"state_dict": state, "hyper_parameters": {"stage": "lam", "model": dataclasses.asdict(lam_cfg)}},
        ckpt,
    )
    cfg = CeilingConfig(shifts=[], worth=["true", "shuffled_true", "lam", "shuffled_lam"], worth_steps=300,
                        batch_size=64, width=8, val_transitions=200, lam_checkpoint=str(ckpt))  # fmt: skip
    out = ceiling(train, val, cfg, size=(32, 32))
    assert out["worth"]["transitions"] >= 200
    worth = out["worth"]["by_labelling"]
    assert worth["none"]["explained"] == 0.0
    assert worth["none"]["mse"] < out["worth"]["copy_last_mse"]  # it learnt the scene's still parts at least
    assert worth["true"]["explained"] > 0.5  # the move is what the frames before cannot tell
    assert abs(worth["shuffled_true"]["explained"]) < 0.1  # the same labels, unhooked from their transitions
    assert worth["lam"]["classes"] == 3 and abs(worth["lam"]["explained"]) < worth["true"]["explained"]
    assert worth["shuffled_true"]["classes"] == 3 and worth["shuffled_lam"]["classes"] == 3
    assert "| true | 3 |" in markdown(out) and "| lam | 3 |" in markdown(out)
    assert "IDM ceiling" not in markdown(out)  # no label alignment asked for: no empty IDM table
