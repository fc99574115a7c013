"""Load trained models from checkpoints without Lightning or Hydra (pure torch, ``weights_only=True``).

A stage checkpoint holds its model under ``model.`` with its config in ``hyper_parameters["model"]``. A
dynamics checkpoint also carries the frozen tokenizer (``tokenizer.``) and the latent action model
(``lam.``) it was trained with, so it alone is a complete Genie.
"""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.lam import LAMConfig, LatentActionModel
from genie.models.tokenizer import TokenizerConfig, VideoTokenizer

Stage = Literal["tokenizer", "lam", "dynamics"]
_BUILD: dict[str, tuple[Any, Any]] = {
    "tokenizer": (TokenizerConfig, VideoTokenizer),
    "lam": (LAMConfig, LatentActionModel),
    "dynamics": (DynamicsConfig, DynamicsModel),
}
# Where each component lives inside a checkpoint of each stage: (hyper-parameter key, state-dict prefix).
_LOCATIONS: dict[str, list[tuple[str, str]]] = {
    "tokenizer": [("model", "model."), ("tokenizer_model", "tokenizer.")],
    "lam": [("model", "model."), ("lam_model", "lam.")],
    "dynamics": [("model", "model.")],
}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` with one-line errors for missing or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .ckpt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"checkpoint {path} is unreadable or truncated ({first}); use an earlier one"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a genie checkpoint (no state_dict); pass a .ckpt written by genie.train"
        )
    return ckpt


def checkpoint_stage(ckpt: dict[str, Any]) -> str:
    hp = ckpt.get("hyper_parameters") or {}
    return str(hp.get("stage", "tokenizer"))  # tokenizer checkpoints from before stages were recorded


def config_from_dict(stage: str, values: dict[str, Any]) -> Any:
    cls = _BUILD[stage][0]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {stage} config keys {unknown}; valid keys: {sorted(names)}")
    return cls(**values)


def build_from_state(stage: str, config: Any, state: dict[str, torch.Tensor], source: str = "") -> nn.Module:
    """Build a ``stage`` model from its config and load ``state`` strictly, naming mismatching keys."""
    cfg = config if not isinstance(config, dict) else config_from_dict(stage, config)
    model: nn.Module = _BUILD[stage][1](cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{stage} weights{' in ' + source if source else ''} do not match its config: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return model.eval()


def load_model(path: str | Path, stage: Stage, ckpt: dict[str, Any] | None = None) -> nn.Module:
    """The ``stage`` model stored in a checkpoint (its own stage's, or a component of a dynamics one)."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    hp = ckpt.get("hyper_parameters") or {}
    own = checkpoint_stage(ckpt)
    for key, prefix in _LOCATIONS[stage]:
        if key == "model" and own != stage:
            continue
        if hp.get(key) is None:
            continue
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if state:
            return build_from_state(stage, hp[key], state, str(path))
    raise ValueError(f"{path} is a {own} checkpoint and holds no {stage} model; pass a {stage} checkpoint")
