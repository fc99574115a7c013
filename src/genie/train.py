"""Train any stage: ``python -m genie.train +experiment=NAME [overrides]``.

Experiments live in ``conf/experiment/``; ``--cfg job`` prints the composed config without running.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from genie.config import hydra_entry
from genie.data.shards import atomic_write_text


class _DropAdvert(logging.Filter):
    """Lightning's rank-zero log without its product tip (every run printed it); its other lines are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


_DROP_ADVERT = _DropAdvert()


def _quiet_lightning() -> None:
    """Drop what a user of this command cannot act on: Lightning's product tip, and the FutureWarning its
    pytree helper raises against this torch (it is Lightning's own call)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DROP_ADVERT)
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def _scalar(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def checkpoint_step(path: str | Path) -> int:
    """The global step stored in a Lightning checkpoint; ``ValueError`` if the file is truncated or corrupt."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except Exception as err:  # truncated zip, bad pickle, missing key
        raise ValueError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from err


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _step_of_name(path: Path) -> int:
    digits = "".join(c for c in path.stem if c.isdigit())
    return int(digits) if digits else -1


def find_resume_checkpoint(
    out_dir: Path, overrides: list[str], siblings: bool = True
) -> tuple[Path | None, int, list[str]]:
    """The newest readable checkpoint of an unfinished run of the same command, its step, and notes.

    Runs are the sibling folders of ``out_dir`` (``outputs/<task>/<time>``, this one included) whose
    ``.hydra/overrides.yaml`` equals ``overrides`` and that have no ``metrics.json`` (which is written when a
    run completes) and no ``.resumed_by`` (a later run took over). Within a run ``last.ckpt`` is tried first, then the step checkpoints, newest first; an
    unreadable (truncated) file is reported and the previous one used. ``siblings=False`` (multirun jobs, whose
    neighbours are other sweep points) looks in ``out_dir`` only: a requeued SLURM job reruns in its own folder.
    """
    import yaml

    wanted = sorted(o for o in overrides if not o.startswith(("ckpt_path=", "resume=")))
    runs: list[tuple[float, list[Path]]] = []
    candidates = (
        (list(out_dir.parent.iterdir()) if out_dir.parent.is_dir() else []) if siblings else [out_dir]
    )
    for run in candidates:
        ov = run / ".hydra" / "overrides.yaml"
        if (
            not run.is_dir()
            or not ov.exists()
            or (run / "metrics.json").exists()
            or (run / ".resumed_by").exists()
        ):
            continue
        try:
            theirs = sorted(
                o
                for o in (yaml.safe_load(ov.read_text()) or [])
                if not o.startswith(("ckpt_path=", "resume="))
            )
        except yaml.YAMLError:
            continue
        ckpts = [p for p in (run / "checkpoints").glob("*.ckpt")] if (run / "checkpoints").is_dir() else []
        if theirs == wanted and ckpts:
            runs.append((max(p.stat().st_mtime for p in ckpts), ckpts))
    notes: list[str] = []
    for _, ckpts in sorted(runs, key=lambda r: r[0], reverse=True):
        ordered = sorted(
            ckpts, key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime, _step_of_name(p)), reverse=True
        )
        for path in ordered:
            try:
                return path, checkpoint_step(path), notes
            except ValueError as err:
                notes.append(f"{err}; trying the previous checkpoint")
    return None, 0, notes


def train(cfg: DictConfig, overrides: list[str] | None = None, siblings: bool = True) -> dict[str, Any]:
    """Build everything from ``cfg``, fit, evaluate on the held-out shards; returns the final metrics.

    ``overrides`` (the command line's, from Hydra) enables automatic resumption: with ``resume=true`` an
    unfinished earlier run of the same command continues from its newest readable checkpoint.
    """
    start = time.time()
    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = cfg.get("ckpt_path")
    resume_step = 0
    if ckpt_path:
        resume_step = checkpoint_step(ckpt_path)  # an explicit checkpoint must be readable
    elif cfg.get("resume", False) and overrides is not None:
        found, resume_step, notes = find_resume_checkpoint(out_dir, overrides, siblings)
        for note in notes:
            print(f"[genie] {note}")
        if found is not None:
            ckpt_path = str(found)
            if found.parents[1].resolve() != out_dir.resolve() and _rank() == 0:
                # Take the checkpoint over (hard link, else copy) so that this run alone carries the job on.
                mine = out_dir / "checkpoints" / f"resumed-step{resume_step:07d}.ckpt"
                mine.parent.mkdir(parents=True, exist_ok=True)
                if not mine.exists():
                    try:
                        os.link(found, mine)
                    except OSError:
                        shutil.copy2(found, mine.with_suffix(".tmp"))
                        os.replace(mine.with_suffix(".tmp"), mine)
                (found.parents[1] / ".resumed_by").write_text(str(out_dir))
                ckpt_path = str(mine)
            print(
                f"[genie] resuming an unfinished run of this command from {found} (step {resume_step}); "
                "resume=false starts afresh"
            )
    datamodule = instantiate(cfg.data)
    if resume_step and hasattr(datamodule, "resume_step"):
        datamodule.resume_step = resume_step  # streams cannot seek: continue with a fresh shuffle
    module = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # The final weights, whatever the checkpoint interval (written to a temporary name, then renamed).
    ckpt_dir = out_dir / "checkpoints"
    tmp = ckpt_dir / "last.ckpt.tmp"
    trainer.save_checkpoint(tmp, weights_only=False)  # a full checkpoint: resumable
    if trainer.is_global_zero:
        os.replace(tmp, ckpt_dir / "last.ckpt")

    metrics: dict[str, Any] = {"experiment": cfg.task_name, "global_step": trainer.global_step}
    if cfg.get("evaluate", True) and datamodule.val_shards is not None:
        if trainer.world_size == 1:  # the whole held-out set, once (or the first final_val_batches)
            final = cfg.get("final_val_batches")
            trainer.limit_val_batches = 1.0 if final is None else int(final)
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update({k: _scalar(v) for k, v in (results[0] if results else {}).items()})
    metrics["train_seconds"] = round(time.time() - start, 1)
    if trainer.is_global_zero:
        # written whole or not at all: the demo and the sweeps take its presence for a finished stage
        atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
        summary = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
        )
        print(f"\n[genie] {summary}")
        print(f"[genie] outputs: {out_dir}  (metrics.json, checkpoints/last.ckpt, logs/, media/)")
    return metrics


def command(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    # Automatic resumption only for single runs: multirun jobs share a parent folder with other settings.
    overrides = list(hc.overrides.task) if hc.mode is None or hc.mode.name == "RUN" else None
    train(cfg, overrides)


main = hydra_entry("train", command)


if __name__ == "__main__":
    main()
