"""Every experiment composes with Hydra's compose API; paper configs build on the meta device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genie.train import conf_dir

EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))


def compose_experiment(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(
            "train", overrides=[f"+experiment={name}", "paths.output_dir=/tmp/genie-test", *overrides]
        )


def test_experiment_not_in_defaults() -> None:
    text = (conf_dir() / "train.yaml").read_text()
    assert "experiment" not in OmegaConf.load(conf_dir() / "train.yaml").get("defaults", []).__str__()
    assert "+experiment=" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_resolves(name: str) -> None:
    cfg = compose_experiment(name)
    OmegaConf.resolve(cfg)
    assert cfg.task_name == name
    assert cfg.model._target_.startswith("genie.lightning.")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_model_builds_on_meta(name: str) -> None:
    cfg = compose_experiment(name)
    OmegaConf.resolve(cfg)
    with torch.device("meta"):
        module = instantiate(cfg.model)
    assert sum(p.numel() for p in module.parameters()) > 0


def test_tokenizer_200m_param_count() -> None:
    cfg = compose_experiment("tokenizer_200m")
    OmegaConf.resolve(cfg)
    with torch.device("meta"):
        module = instantiate(cfg.model)
    n = sum(p.numel() for p in module.model.parameters())
    assert 180e6 <= n <= 230e6, n
    assert tuple(cfg.model.model.image_size) == (90, 160)
    assert module.cfg.grid == (23, 40)  # 920 tokens per frame, as in the paper


def test_conf_tree_mirrors_code() -> None:
    for group in ("model", "data", "trainer", "callbacks", "logger", "experiment", "paths"):
        assert (conf_dir() / group).is_dir(), group
    assert (
        Path(conf_dir(), "trainer", "cpu.yaml").exists() and Path(conf_dir(), "trainer", "gpu.yaml").exists()
    )
