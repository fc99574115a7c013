"""Pretokenized clips: the writer stores exactly what the frozen models compute, the dynamics stage's step on
tokens equals its step on pixels, and tokens of another tokenizer or LAM are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from genie.data.datamodule import ClipDataModule
from genie.data.pipeline import ClipStream
from genie.data.shards import ShardWriter, clip_record
from genie.data.tokens import TokenStream, read_manifest, write_token_shards
from genie.lightning import DynamicsModule, LAMModule, TokenizerModule
from genie.lightning.dynamics import check_token_manifest
from genie.models.io import fingerprint, load_model
from tiny import LAM, SIZE, TINY_ST, TOKENIZER

FRAMES = 5


def _fit(module: L.LightningModule, root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    data = [
        {
            "video": torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=g),
            "actions": torch.zeros(2, FRAMES - 1, dtype=torch.long),
        }
    ]
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    path = root / f"{type(module).__name__}.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Tiny tokenizer and LAM checkpoints (one step each, and a second tokenizer), and two clip shards with true
    actions, one unreadable clip among them."""
    root = tmp_path_factory.mktemp("tokens")
    torch.manual_seed(0)
    tok = _fit(TokenizerModule(model=TOKENIZER, optim={"lr": 1e-3, "warmup_steps": 1}), root / "tok")
    lam = _fit(LAMModule(model=LAM, optim={"lr": 1e-3, "warmup_steps": 1}), root / "lam")
    other = _fit(TokenizerModule(model=TOKENIZER, optim={"lr": 1e-2, "warmup_steps": 1}), root / "other")
    rng = np.random.default_rng(0)
    clips = {}
    for shard in range(2):
        with ShardWriter(str(root / "clips" / "train-%06d.tar"), max_count=100, start_index=shard) as w:
            for k in range(3):
                frames = rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8)
                actions = rng.integers(0, 4, FRAMES - 1).tolist()
                key = f"c{shard}_{k}"
                w.write(key, frames, clip_record(frames, source="test", actions=actions))
                clips[key] = (frames, actions)
            if shard == 1:  # a clip whose frames cannot be decoded
                w._add("broken.npz", b"not an npz")
                w._add("broken.json", b"{}")
    return {"tokenizer": tok, "lam": lam, "other": other, "clips": clips, "root": root}


def _written(folder: Path) -> dict[str, dict[str, Any]]:
    stream = TokenStream(str(folder / "train-*.tar"), frames=FRAMES)
    out = {}
    for sample in stream._samples(0):  # keys with their decoded tensors
        out[sample["__key__"]] = stream.decode(sample, np.random.default_rng(0))
    return out


def test_pretokenize_stores_the_models_tokens_and_actions_and_resumes(
    world: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "tok"
    manifest = write_token_shards(
        str(world["root"] / "clips" / "train-*.tar"), out, world["tokenizer"], world["lam"], batch_size=2
    )
    assert (
        manifest["clips"] == 6
        and manifest["bad_clips"] == 1
        and manifest["shards"] == ["train-000000.tar", "train-000001.tar"]
    )
    tok, lam = load_model(world["tokenizer"], "tokenizer"), load_model(world["lam"], "lam")
    assert manifest["tokenizer"]["fingerprint"] == fingerprint(tok) and manifest["lam"][
        "fingerprint"
    ] == fingerprint(lam)
    assert read_manifest(out) == manifest
    written = _written(out)
    assert set(written) == set(world["clips"])
    for key, (frames, actions) in world["clips"].items():
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().div(255.0)
        assert torch.equal(written[key]["tokens"], tok.encode(video)[0]), key
        assert torch.equal(written[key]["latent_actions"], lam.infer_actions(video)[0]), key
        assert written[key]["actions"].tolist() == actions
    # resumable: finished shards are kept, not rewritten
    stamp = (out / "train-000000.tar").stat().st_mtime_ns
    (out / "train-000001.tar").unlink()
    write_token_shards(
        str(world["root"] / "clips" / "train-*.tar"), out, world["tokenizer"], world["lam"], batch_size=2
    )
    assert (out / "train-000000.tar").stat().st_mtime_ns == stamp and (out / "train-000001.tar").exists()
    assert set(_written(out)) == set(world["clips"])
    # another tokenizer's tokens never join this folder
    with pytest.raises(ValueError, match="other settings"):
        write_token_shards(str(world["root"] / "clips" / "train-*.tar"), out, world["other"], world["lam"])


def test_dynamics_step_on_tokens_equals_its_step_on_pixels(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "tok"
    write_token_shards(str(world["root"] / "clips" / "train-*.tar"), out, world["tokenizer"], world["lam"])
    pixels = ClipStream(str(world["root"] / "clips" / "train-*.tar"), frames=FRAMES, size=(SIZE, SIZE))
    tokens = TokenStream(str(out / "train-*.tar"), frames=FRAMES)
    collate = torch.utils.data.default_collate
    pixel_batch, token_batch = (collate(list(s)[:4]) for s in (pixels, tokens))
    for actions in ("lam", "true"):
        module = DynamicsModule(
            model={"transformer": TINY_ST, "num_actions": 4 if actions == "true" else None},
            tokenizer_ckpt=str(world["tokenizer"]), lam_ckpt=str(world["lam"]), actions=actions,
        )  # fmt: skip
        losses = []
        for batch in (pixel_batch, token_batch):
            torch.manual_seed(3)  # the same mask draw for both
            losses.append(module.training_step(batch, 0))
        assert torch.equal(losses[0], losses[1]), actions


def test_tokens_of_another_model_are_refused(world: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "tok"
    manifest = write_token_shards(
        str(world["root"] / "clips" / "train-*.tar"), out, world["tokenizer"], world["lam"]
    )
    tok, lam = load_model(world["tokenizer"], "tokenizer"), load_model(world["lam"], "lam")
    check_token_manifest(manifest, tok, lam, "lam")  # its own models: accepted
    with pytest.raises(ValueError, match="another tokenizer"):
        check_token_manifest(manifest, load_model(world["other"], "tokenizer"), lam, "lam")
    other_lam = load_model(world["lam"], "lam")
    with torch.no_grad():
        next(other_lam.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="another LAM"):
        check_token_manifest(manifest, tok, other_lam, "lam")
    with pytest.raises(ValueError, match="cotrain"):
        check_token_manifest(manifest, tok, None, "cotrain")
    # in two processes, without a LAM: the same tokens, no latent actions
    no_lam = write_token_shards(
        str(world["root"] / "clips" / "train-*.tar"), tmp_path / "nolam", world["tokenizer"], workers=2
    )
    with_lam, without = _written(out), _written(tmp_path / "nolam")
    assert all(torch.equal(with_lam[k]["tokens"], without[k]["tokens"]) for k in with_lam)
    assert all((v["latent_actions"] == -1).all() for v in without.values())
    check_token_manifest(no_lam, tok, None, "true")
    with pytest.raises(ValueError, match="no latent actions"):
        check_token_manifest(no_lam, tok, lam, "lam")


def test_token_folder_errors_are_one_line(world: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tools/pretokenize\.py"):
        ClipDataModule(train_shards="x", train_tokens=str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        ClipDataModule(train_shards="x", train_tokens=str(tmp_path / "half"))
    with pytest.raises(FileNotFoundError, match="no clip shards match"):
        write_token_shards(str(tmp_path / "none-*.tar"), tmp_path / "o", world["tokenizer"])
    # a clip stream pointed at token shards says what they are
    write_token_shards(str(world["root"] / "clips" / "train-*.tar"), tmp_path / "tok", world["tokenizer"])
    stream = ClipStream(str(tmp_path / "tok" / "train-*.tar"), frames=FRAMES, size=(SIZE, SIZE))
    sample = next(iter(stream._samples(0)))
    with pytest.raises(KeyError, match=r"data\.train_tokens"):
        stream.decode(sample, np.random.default_rng(0))
    json.loads((tmp_path / "tok" / "manifest.json").read_text())


def test_pixel_stages_refuse_token_data(world: dict[str, Any], tmp_path: Path) -> None:
    write_token_shards(str(world["root"] / "clips" / "train-*.tar"), tmp_path / "tok", world["tokenizer"])
    data = ClipDataModule(
        train_shards="unused", val_shards=str(world["root"] / "clips" / "train-*.tar"), train_tokens=str(tmp_path / "tok"),
        frames=FRAMES, size=(SIZE, SIZE), num_workers=0, batch_size=2,
    )  # fmt: skip
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=0)  # fmt: skip
    with pytest.raises(ValueError, match="for the dynamics stage"):
        trainer.fit(TokenizerModule(model=TOKENIZER), datamodule=data)


def test_a_token_input_lam_reads_its_own_tokenizer_wherever_a_lam_is_used(
    world: dict[str, Any], tmp_path: Path
) -> None:
    """The paper's Tab. 2 ablation (a LAM on tokenizer ids): its checkpoint gives back the tokenizer it learnt
    on; pixels alone are refused in one line; pretokenizing, the dynamics stage, a Genie and the evaluator read
    its codes off that tokenizer's ids; another tokenizer is refused."""
    from genie.evaluate import Evaluator, load_components
    from genie.models import Genie
    from genie.models.io import load_lam

    # as conf/model/lam_model/paper.yaml
    token_lam = {**LAM, "input": "tokens", "token_vocab": None, "token_grid": None}
    with pytest.raises(ValueError, match=r"model\.model\.token_vocab=64 but the tokenizer has 32"):
        LAMModule(model={**token_lam, "token_vocab": 64}, tokenizer_ckpt=str(world["tokenizer"]))
    torch.manual_seed(0)
    path = _fit(
        LAMModule(
            model=token_lam, optim={"lr": 1e-3, "warmup_steps": 1}, tokenizer_ckpt=str(world["tokenizer"])
        ),
        tmp_path / "lam",
    )
    lam, reader = load_lam(path)
    assert (lam.cfg.token_vocab, lam.cfg.token_grid) == (32, (4, 4))  # the tokenizer's, as left null
    assert reader is not None and fingerprint(reader) == fingerprint(
        load_model(world["tokenizer"], "tokenizer")
    )
    assert load_lam(world["lam"])[1] is None  # a pixel LAM reads no tokenizer
    video = torch.rand(2, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="reads tokenizer ids"):
        lam.infer_actions(video)
    codes = lam.infer_actions(reader.encode(video))
    assert torch.equal(lam.infer_actions(video, tokenizer=reader), codes)

    clips = str(world["root"] / "clips" / "train-*.tar")
    write_token_shards(clips, tmp_path / "tok", world["tokenizer"], path)
    for key, (frames, _) in world["clips"].items():
        clip = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float().div(255.0)
        stored = _written(tmp_path / "tok")[key]
        assert torch.equal(stored["latent_actions"], lam.infer_actions(stored["tokens"][None])[0]), key
        assert torch.equal(stored["latent_actions"], lam.infer_actions(clip, tokenizer=reader)[0]), key
    with pytest.raises(ValueError, match="another tokenizer"):
        write_token_shards(clips, tmp_path / "other", world["other"], path)
    with pytest.raises(ValueError, match="another tokenizer"):
        DynamicsModule(model={"transformer": TINY_ST}, tokenizer_ckpt=str(world["other"]), lam_ckpt=str(path))

    # the dynamics stage reads the codes off its tokens: the same loss as on the pretokenized clips
    module = DynamicsModule(
        model={"transformer": TINY_ST}, tokenizer_ckpt=str(world["tokenizer"]), lam_ckpt=str(path)
    )
    collate = torch.utils.data.default_collate
    pixel_batch = collate(list(ClipStream(clips, frames=FRAMES, size=(SIZE, SIZE)))[:4])
    token_batch = collate(list(TokenStream(str(tmp_path / "tok" / "train-*.tar"), frames=FRAMES))[:4])
    losses = []
    for batch in (pixel_batch, token_batch):
        torch.manual_seed(3)
        losses.append(module.training_step(batch, 0))
    assert torch.equal(losses[0], losses[1])
    genie = Genie.from_checkpoints(_fit(module, tmp_path / "dyn"))
    assert torch.equal(genie.infer_actions(video), codes)
    cotrained = DynamicsModule(
        model={"transformer": TINY_ST},
        tokenizer_ckpt=str(world["tokenizer"]),
        actions="cotrain",
        lam=token_lam,
    )
    assert torch.isfinite(cotrained.training_step(pixel_batch, 0))  # the co-trained LAM learns on the tokens

    found = load_components(path)
    assert found.lam is not None and found.lam_tokenizer is not None
    evaluator = Evaluator(None, found.lam, lam_tokenizer=found.lam_tokenizer)
    evaluator.update({"video": video, "actions": torch.zeros(2, FRAMES - 1, dtype=torch.long)})
    shares = evaluator.compute()["lam/code_share"]
    assert [round(float((codes == a).float().mean()), 4) for a in range(4)] == shares
