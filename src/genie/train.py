"""Train any stage: ``python -m genie.train +experiment=NAME [overrides]``.

Experiments live in ``conf/experiment/``; ``--cfg job`` prints the composed config without running.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def conf_dir() -> Path:
    """The ``conf/`` tree: $GENIE_CONF_DIR, else the repository's (editable install), else next to the package."""
    env = os.environ.get("GENIE_CONF_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [here.parents[2] / "conf", here.parent / "conf"]
    for c in candidates:
        if (c / "train.yaml").exists():
            return c
    raise FileNotFoundError(
        "cannot find the genie conf/ directory; install from a checkout (pip install -e .) or set GENIE_CONF_DIR"
    )


def _scalar(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, evaluate on the held-out shards; returns the final metrics."""
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    # The final weights, whatever the checkpoint interval (written to a temporary name, then renamed).
    ckpt_dir = out_dir / "checkpoints"
    tmp = ckpt_dir / "last.ckpt.tmp"
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, ckpt_dir / "last.ckpt")

    metrics: dict[str, Any] = {"experiment": cfg.task_name, "global_step": trainer.global_step}
    if cfg.get("evaluate", True) and datamodule.val_shards is not None:
        if trainer.world_size == 1:
            trainer.limit_val_batches = 1.0  # the whole held-out set, once
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update({k: _scalar(v) for k, v in (results[0] if results else {}).items()})
    metrics["train_seconds"] = round(time.time() - start, 1)
    if trainer.is_global_zero:
        path = out_dir / "metrics.json"
        path.write_text(json.dumps(metrics, indent=2))
        summary = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        print(f"\n[genie] {summary}")
        print(f"[genie] outputs: {out_dir}  (metrics.json, checkpoints/last.ckpt, logs/, media/)")
    return metrics


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def main(cfg: DictConfig) -> None:
    OmegaConf.resolve(cfg)
    try:
        train(cfg)
    except (ValueError, FileNotFoundError, ImportError) as err:  # bad input: one line, exit code 1
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
