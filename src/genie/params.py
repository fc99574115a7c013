"""Parameter count of an experiment's model, built on the meta device (nothing allocated, no checkpoints).

    python -m genie.params +experiment=dynamics_11b      # -> dynamics: 10,078,404,608 params (10.08B)
    python -m genie.params +experiment=lam_300m model.model.encoder.depth=12

For the dynamics stage, sizes that are otherwise taken from the tokenizer/LAM checkpoints (``num_codes``,
``grid``, ``num_actions`` left null) are assumed from the data size (1024 codes, patch 4, 8 actions).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genie.config import compose_config
from genie.models.io import BUILDERS, config_from_dict
from genie.nn.options import size_pair

_STAGES = {"TokenizerModule": "tokenizer", "LAMModule": "lam", "DynamicsModule": "dynamics"}


def build(cfg: DictConfig) -> tuple[str, torch.nn.Module, list[str]]:
    """(stage, the model built on the meta device, notes) of ``cfg.model``."""
    target = str(cfg.model._target_).rsplit(".", 1)[-1]
    if target not in _STAGES:
        raise ValueError(f"model._target_ {cfg.model._target_} is not a genie stage ({sorted(_STAGES)})")
    stage = _STAGES[target]
    values: dict[str, Any] = OmegaConf.to_container(cfg.model.model, resolve=True)  # type: ignore[assignment]
    notes = []
    size = cfg.get("data", {}).get("size") or [64, 64]
    h, w = size_pair(size, "data.size")
    grid = [-(-h // 4), -(-w // 4)]
    assumed: dict[str, Any] = {}
    if stage == "dynamics":
        assumed = {"num_codes": 1024, "grid": grid, "num_actions": 8}
    elif stage == "lam" and values.get("input") == "tokens":
        assumed = {"token_vocab": 1024, "token_grid": grid}
    for key, value in assumed.items():
        if values.get(key) is None:
            values[key] = value
            notes.append(f"{key}={value} assumed (taken from the checkpoints when training)")
    config = config_from_dict(stage, values)
    with torch.device("meta"):
        model = BUILDERS[stage][1](config)
    return stage, model, notes


def count(cfg: DictConfig) -> tuple[str, int, list[str]]:
    """(stage, parameter count, notes) of ``cfg.model``."""
    stage, model, notes = build(cfg)
    return stage, sum(p.numel() for p in model.parameters()), notes


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    try:
        cfg = compose_config(args)
        stage, n, notes = count(cfg)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    unit = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
    print(f"{cfg.task_name}: {stage}: {n:,} params ({unit}) on the meta device")
    for note in notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
