"""LAM and dynamics Lightning stages on in-memory data; checkpoints chain into a playable Genie."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from genie.lightning import DynamicsModule, LAMModule, TokenizerModule
from genie.metrics import ActionNMI, ActionProbe, CodeUsage, nmi_from_counts
from genie.models import Genie
from genie.models.io import load_model, read_checkpoint
from tiny import LAM, SIZE, TOKENIZER

DYNAMICS = {"transformer": {"dim": 32, "depth": 1, "num_heads": 2}}
SAMPLING = {"steps": 3, "temperature": 1.0, "context_frames": 4}


def batches(n: int = 4, b: int = 2, t: int = 5, true_actions: bool = True) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        acts = torch.randint(0, 4, (b, t - 1), generator=g)
        out.append(
            {
                "video": torch.rand(b, t, 3, SIZE, SIZE, generator=g),
                "actions": acts if true_actions else torch.full_like(acts, -1),
            }
        )
    return out


def loader(data: list[dict[str, torch.Tensor]]) -> torch.utils.data.DataLoader[Any]:
    return torch.utils.data.DataLoader(data, batch_size=None)


def fit(module: L.LightningModule, tmp_path: Path, steps: int = 2, data: Any = None) -> L.Trainer:
    data = data or batches()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader(data), val_dataloaders=loader(data[:2]))
    return trainer


@pytest.fixture(scope="module")
def stage_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    tok = TokenizerModule(model=TOKENIZER, optim={"lr": 1e-3, "warmup_steps": 1})
    trainer = fit(tok, root / "tok")
    trainer.save_checkpoint(root / "tok.ckpt")
    lam = LAMModule(model=LAM, optim={"lr": 1e-3, "warmup_steps": 1})
    trainer = fit(lam, root / "lam")
    trainer.save_checkpoint(root / "lam.ckpt")
    return {"tokenizer": root / "tok.ckpt", "lam": root / "lam.ckpt", "root": root}


def test_lam_module_logs_usage_and_nmi(stage_ckpts: dict[str, Path], tmp_path: Path) -> None:
    module = LAMModule(model=LAM, optim={"lr": 1e-3, "warmup_steps": 1}, train_frames=3)
    trainer = fit(module, tmp_path)
    shares = [float(trainer.callback_metrics[f"train/action_share_{i}"]) for i in range(4)]  # one per code
    assert "train/action_share_4" not in trainer.callback_metrics
    assert all(0 <= v <= 1 for v in shares) and abs(sum(shares) - 1) < 1e-5
    results = trainer.validate(module, dataloaders=loader(batches(2)), verbose=False)[0]
    assert {"val/psnr", "val/recon_copy_last", "val/action_usage", "val/nmi", "val/action_codes_used"} <= set(
        results
    )
    assert 0 <= results["val/nmi"] <= 1 and 0 <= results["val/probe_accuracy"] <= 1
    lam = load_model(stage_ckpts["lam"], "lam")
    assert lam.cfg.num_actions == 4  # type: ignore[union-attr]


def test_lam_module_no_nmi_without_true_actions(tmp_path: Path) -> None:
    module = LAMModule(model=LAM, optim={"lr": 1e-3, "warmup_steps": 1})
    trainer = fit(module, tmp_path, data=batches(true_actions=False))
    results = trainer.validate(module, dataloaders=loader(batches(2, true_actions=False)), verbose=False)[0]
    assert "val/nmi" not in results and "val/probe_accuracy" not in results and "val/psnr" in results


@pytest.mark.parametrize("actions", ["lam", "true", "cotrain"])
def test_dynamics_module_fits_each_action_source(
    actions: str, stage_ckpts: dict[str, Path], tmp_path: Path
) -> None:
    kwargs: dict[str, Any] = {
        "model": {**DYNAMICS, "num_actions": 4 if actions == "true" else None},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "tokenizer_ckpt": str(stage_ckpts["tokenizer"]),
        "actions": actions,
        "sampling": SAMPLING,
        "eval_t": 3,
    }
    if actions == "lam":
        kwargs["lam_ckpt"] = str(stage_ckpts["lam"])
    if actions == "cotrain":
        kwargs["lam"] = LAM
    module = DynamicsModule(**kwargs)
    assert module.cfg.num_codes == 32 and module.cfg.grid == (4, 4) and module.cfg.num_actions == 4
    before = {k: v.clone() for k, v in module.tokenizer.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = fit(module, tmp_path)
    # the frozen tokenizer (and LAM) are in eval mode by design: Lightning's warning of that is not shown
    assert not [w for w in caught if "in eval mode" in str(w.message)]
    results = trainer.validate(module, dataloaders=loader(batches(2)), verbose=False)[0]
    assert {"val/loss", "val/token_acc", "val/psnr_t3", "val/psnr_t3_random", "val/delta_psnr_t3"} <= set(
        results
    )
    assert ("val/nmi" in results) == (actions != "true")
    for k, v in module.tokenizer.state_dict().items():  # frozen, quantiser buffers included
        assert torch.equal(v, before[k]), k
    gifs = list(Path(tmp_path).rglob("rollout_step*.gif"))
    assert gifs
    # the checkpoint is a complete Genie
    trainer.save_checkpoint(tmp_path / "dyn.ckpt")
    genie = Genie.from_checkpoints(tmp_path / "dyn.ckpt")
    assert (genie.lam is None) == (actions == "true")
    frame = genie.reset(np.zeros((SIZE, SIZE, 3), np.uint8))
    assert frame.shape == (1, 3, SIZE, SIZE)
    assert genie.step(1).shape == (1, 3, SIZE, SIZE)


def test_a_module_left_in_eval_mode_beyond_the_frozen_ones_is_still_warned_of(
    stage_ckpts: dict[str, Path], tmp_path: Path
) -> None:
    module = DynamicsModule(
        model={**DYNAMICS, "num_actions": 4},
        optim={"lr": 1e-3, "warmup_steps": 1},
        tokenizer_ckpt=str(stage_ckpts["tokenizer"]),
        actions="true",
        sampling=SAMPLING,
        eval_t=3,
    )
    module.model.action_embed.eval()  # a user's mistake: a trained module left in eval mode
    frozen = len(list(module.tokenizer.modules()))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(module, tmp_path, steps=1)
    messages = [str(w.message) for w in caught if "in eval mode" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith(f"Found {frozen + 1} module(s) in eval mode")


def test_dynamics_module_errors_are_named(stage_ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model\.tokenizer_ckpt"):
        DynamicsModule(model=DYNAMICS, tokenizer_ckpt=str(tmp_path / "nope-*.ckpt"), actions="true")
    with pytest.raises(ValueError, match="num_codes=99 but the tokenizer has 32"):
        DynamicsModule(
            model={**DYNAMICS, "num_codes": 99}, tokenizer_ckpt=str(stage_ckpts["tokenizer"]), actions="true"
        )
    with pytest.raises(ValueError, match="num_actions is null"):
        DynamicsModule(model=DYNAMICS, tokenizer_ckpt=str(stage_ckpts["tokenizer"]), actions="true")
    module = DynamicsModule(
        model={**DYNAMICS, "num_actions": 4}, tokenizer_ckpt=str(stage_ckpts["tokenizer"]), actions="true"
    )
    with pytest.raises(ValueError, match="no true actions"):
        module.training_step(batches(1, true_actions=False)[0], 0)


def test_glob_checkpoint_takes_newest(stage_ckpts: dict[str, Path]) -> None:
    module = DynamicsModule(
        model=DYNAMICS,
        tokenizer_ckpt=str(stage_ckpts["root"] / "to*.ckpt"),
        lam_ckpt=str(stage_ckpts["root"] / "la*.ckpt"),
    )
    assert module.cfg.num_actions == 4


def test_truncated_checkpoint_is_named(stage_ckpts: dict[str, Path], tmp_path: Path) -> None:
    data = stage_ckpts["lam"].read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="unreadable or truncated"):
        read_checkpoint(bad)
    with pytest.raises(ValueError, match="holds no dynamics model"):
        load_model(stage_ckpts["lam"], "dynamics")


def test_dynamics_overfits_one_batch() -> None:
    from genie.models import DynamicsConfig, DynamicsModel

    torch.manual_seed(0)
    model = DynamicsModel(
        DynamicsConfig(
            num_codes=16, grid=(2, 3), num_actions=3, transformer={"dim": 48, "depth": 2, "num_heads": 4}
        )
    )
    tokens = torch.randint(0, 16, (4, 4, 2, 3))
    actions = torch.randint(0, 3, (4, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss, _, _ = model.loss(tokens, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.25 * np.mean(losses[:10])


def test_nmi_known_answers() -> None:
    perm = torch.tensor([[0, 5, 0], [7, 0, 0], [0, 0, 3]])
    assert nmi_from_counts(perm).item() == pytest.approx(1.0)
    indep = torch.tensor([[10, 10], [10, 10]])
    assert nmi_from_counts(indep).item() == pytest.approx(0.0, abs=1e-9)
    # hand-computed: latent {0,0,1,1}, true {0,1,1,1}: I = 0.2158, H(L) = 0.6931, H(A) = 0.5623 -> 0.3440
    metric = ActionNMI(num_latent=2)
    metric.update(torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, -1]))  # -1: unknown, ignored
    assert metric.compute().item() == pytest.approx(0.3440, abs=1e-3)
    small = ActionNMI(num_latent=2, max_true=4)
    with pytest.raises(ValueError, match="true action id 4 is past ActionNMI's table of 4"):
        small.update(torch.tensor([0, 1]), torch.tensor([3, 4]))  # was dropped without a word
    usage = CodeUsage(8)
    usage.update(torch.tensor([0, 0, 3]))
    assert usage.compute().item() == pytest.approx(2 / 8)


def test_action_probe_metric_equals_the_probe_over_all_batches() -> None:
    """One probe for the LAM stage's validation and genie.evaluate: batch by batch, unknown ids dropped."""
    from genie.metrics import probe_accuracy

    g = torch.Generator().manual_seed(0)
    latent = torch.randint(0, 4, (6, 15), generator=g)
    true = (latent * 2 + torch.randint(0, 2, (6, 15), generator=g)) % 6  # related, not a relabelling
    true[0, :5] = -1  # unknown
    probe = ActionProbe(4, num_labels=30, seed=3)
    for i in range(0, 6, 2):
        probe.update(latent[i : i + 2], true[i : i + 2])
    acc, mapping = probe_accuracy(latent, true, 4, 30, seed=3)
    assert float(probe.compute()) == pytest.approx(acc) and torch.equal(probe.mapping, mapping)
    assert probe.labelled() == 85 and probe.labels_used == 30
    assert 0.3 < acc < 1.0
    empty = ActionProbe(4)
    empty.update(latent[:1], torch.full((1, 15), -1))
    assert empty.labelled() == 0 and torch.isnan(empty.compute())


def test_a_lightning_checkpoint_from_before_the_warmup_module_resumes() -> None:
    # the VQ warm-up's step count was the LAM's own buffer (model.train_steps); resuming renames it at load
    module = LAMModule(model={**LAM, "aids": {"vq_warmup_steps": 5}}, optim={"lr": 1e-3, "warmup_steps": 1})
    state = dict(module.state_dict())
    state["model.train_steps"] = state.pop("model.vq_warmup.train_steps") + 3
    checkpoint = {"state_dict": state}
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])  # strict
    assert module.model.vq_warmup is not None and int(module.model.vq_warmup.train_steps) == 3
