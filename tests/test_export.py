"""Export to safetensors + YAML and Genie.from_pretrained: same world as the checkpoint, no Lightning/Hydra,
mismatches named."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genie.models import Genie
from genie.models.io import load_pretrained, save_pretrained
from tiny import SIZE, tiny_models

ROOT = Path(__file__).resolve().parents[1]


def write_checkpoint(path: Path) -> Path:
    """A dynamics checkpoint laid out as genie.train writes it (the frozen tokenizer and LAM inside)."""
    tok, lam, dyn = tiny_models()
    state = {f"model.{k}": v for k, v in dyn.state_dict().items()}
    state |= {f"tokenizer.{k}": v for k, v in tok.state_dict().items()}
    state |= {f"lam.{k}": v for k, v in lam.state_dict().items()}
    hp = {
        "stage": "dynamics",
        "model": dataclasses.asdict(dyn.cfg),
        "tokenizer_model": dataclasses.asdict(tok.cfg),
        "lam_model": dataclasses.asdict(lam.cfg),
        "sampling": {"steps": 3, "temperature": 1.0, "context_frames": 16, "use_cache": True},
    }
    torch.save({"state_dict": state, "hyper_parameters": hp, "global_step": 7}, path)
    return path


def play(genie: Genie) -> torch.Tensor:
    prompt = (
        torch.randint(0, 256, (SIZE, SIZE, 3), generator=torch.Generator().manual_seed(1))
        .to(torch.uint8)
        .numpy()
    )
    genie.reset(prompt, seed=5)
    return genie.rollout([0, 1, 3])


def test_export_then_from_pretrained_is_the_same_world(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "last.ckpt")
    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), str(ckpt), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "model.safetensors"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert set(config["components"]) == {"dynamics", "tokenizer", "lam"} and config["sampling"]["steps"] == 3
    a, b = Genie.from_checkpoints(ckpt), Genie.from_pretrained(out)
    assert b.sampling.steps == 3 and b.num_actions == 4
    assert torch.equal(play(a), play(b))

    # usable without Lightning or Hydra (and without pickles: safetensors + YAML)
    code = (
        "import sys; from genie.models import Genie; g = Genie.from_pretrained(sys.argv[1]); "
        "assert not any(m.split('.')[0] in ('lightning', 'hydra', 'pytorch_lightning') for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith(('lightning', 'hydra'))); print(g.num_actions)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "4", proc.stderr

    again = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), str(ckpt), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode != 0 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_mismatches_are_named(tmp_path: Path) -> None:
    tok, lam, dyn = tiny_models()
    out = save_pretrained(tmp_path / "w", {"tokenizer": tok, "dynamics": dyn, "lam": lam})
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["components"]["dynamics"]["transformer"]["dim"] = 48
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"dynamics weights .* do not match its config: .*size mismatch"):
        load_pretrained(out)

    out = save_pretrained(tmp_path / "w2", {"tokenizer": tok, "dynamics": dyn})
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["components"]["lam"] = dataclasses.asdict(lam.cfg)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"lam weights .* missing \['"):
        load_pretrained(out)

    parts, _ = load_pretrained(save_pretrained(tmp_path / "t", {"tokenizer": tok}))
    assert set(parts) == {"tokenizer"}
    with pytest.raises(ValueError, match="needs a tokenizer and a dynamics model"):
        Genie.from_pretrained(tmp_path / "t")
    with pytest.raises(FileNotFoundError, match=r"tools/export\.py"):
        Genie.from_pretrained(tmp_path / "nothing")
    (tmp_path / "t" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="unreadable or truncated"):
        load_pretrained(tmp_path / "t")


def test_export_onto_an_existing_file_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    ckpt = write_checkpoint(tmp_path / "last.ckpt")
    target = tmp_path / "taken"
    target.write_text("a file the user keeps")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "export.py"), str(ckpt), "--out", str(target), "--force"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "is a file, not a folder" in proc.stderr
    assert target.read_text() == "a file the user keeps"
    assert not (tmp_path / "taken.tmp").exists()
