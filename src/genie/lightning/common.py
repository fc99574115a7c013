"""What every stage's LightningModule shares: the optimiser, the LR schedule, media writing."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from genie.models.io import config_from_dict, load_model, migrate_state, resolve_checkpoint
from genie.models.lam import LAMConfig
from genie.models.tokenizer import VideoTokenizer


class StageModule(L.LightningModule):
    """The base of every stage's LightningModule: gradient clipping (``trainer.gradient_clip_val``) that also
    works with the fused AdamW under mixed precision.

    Lightning's mixed-precision plugin (``bf16-mixed`` / ``16-mixed`` on one device or with DDP) refuses to
    clip for an optimizer that unscales gradients inside its own step, as torch's fused AdamW does, even under
    bf16 where nothing is scaled. Here such an optimizer's gradients are clipped directly, after unscaling
    them where a gradient scaler is in use (``16-mixed``; the fused step then skips its own unscaling); every
    other case goes through Lightning as usual.

    Only a stage that sets ``trains_on_tokens`` takes pretokenized clips (``data.train_tokens``); the others
    stop at the start of training with one line.

    A stage's frozen models (:meth:`frozen_modules`) stay in eval mode whatever mode the stage is put in (their
    quantisers must never update); Lightning's warning that training starts with modules in eval mode is kept
    for any module beyond them."""

    trains_on_tokens = False

    def frozen_modules(self) -> list[nn.Module]:
        """The submodules this stage keeps frozen, in eval mode, while it trains (none by default)."""
        return []

    def train(self, mode: bool = True) -> StageModule:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def on_fit_start(self) -> None:
        manifest = getattr(getattr(self._trainer, "datamodule", None), "token_manifest", None)
        if manifest is not None and not self.trains_on_tokens:
            raise ValueError(
                f"data.train_tokens is set, but this {type(self).__name__} trains on pixels; pretokenized clips "
                "are for the dynamics stage (set data.train_tokens=null)"
            )
        frozen = {id(m) for f in self.frozen_modules() for m in f.modules()}
        if frozen:  # Lightning counts the modules in eval mode; exactly the frozen ones are no news
            warnings.filterwarnings(
                "ignore", message=rf"Found {len(frozen)} module\(s\) in eval mode at the start of training"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # resuming from, or loading, weights saved under older names
        if "state_dict" in checkpoint:
            checkpoint["state_dict"] = migrate_state(checkpoint["state_dict"])

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        plugin = self.trainer.precision_plugin if self._trainer is not None else None
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if not gradient_clip_val or not fused or not isinstance(plugin, MixedPrecision):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        if plugin.scaler is not None:
            plugin.scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)


@dataclass
class OptimConfig:
    """AdamW with linear warmup, then constant or cosine (paper: tokenizer constant 3e-4 after 10k warmup,
    betas (0.9, 0.9), wd 1e-4; dynamics cosine 3e-5 → 3e-6 after 5k warmup)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.9)
    weight_decay: float = 1e-4
    warmup_steps: int = 10_000
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0  # cosine end point
    total_steps: int = 300_000  # cosine length
    # one fused AdamW kernel (faster than the multi-tensor one; docs/benchmarks.md); None: where all parameters are
    # on CPU or CUDA (torch's fused AdamW runs nowhere else, e.g. not on XLA)
    fused: bool | None = None

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


def as_dataclass(cls: Any, value: Any) -> Any:
    """Build ``cls`` from an instance or a mapping (Hydra/YAML gives mappings); unknown keys are an error."""
    if isinstance(value, cls):
        return value
    value = dict(value or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; valid options are {sorted(known)}")
    return cls(**value)


def plain_data(value: Any) -> Any:
    """Dataclasses → dicts, recursively, so checkpoints hold plain data (loadable with weights_only=True)."""
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    return value


def media_root(trainer: Any) -> Path:
    """Where a run's media go: the first logger's folder, else the trainer's root. Unlike ``trainer.log_dir``
    this is no collective (``log_dir`` broadcasts under DDP, and media are written on rank 0 only)."""
    for logger in getattr(trainer, "loggers", []) or []:
        log_dir = getattr(logger, "log_dir", None)
        if log_dir:
            return Path(log_dir)
    return Path(trainer.default_root_dir)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of ``cfg.lr`` at ``step``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> dict[str, Any]:
    """AdamW (weight decay on matrices only, not on norms, biases, codebooks or position tables) + schedule."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim >= 2 and "codebook" not in name and "positions" not in name
        (decay if is_matrix else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = cfg.fused
    if fused is None:
        fused = bool(decay or no_decay) and all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def random_window(t: int, window: int | None) -> tuple[int, int]:
    """A random ``[start, stop)`` frame window of length ``window`` in a clip of ``t`` frames (all if None)."""
    if window is None or window >= t:
        return 0, t
    start = int(torch.randint(0, t - window + 1, ()))
    return start, start + window


def derived_settings(values: dict[str, Any], derived: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` with each key of ``derived`` left null set to what ``source`` (the model it comes from, for the
    message) has; a set one must equal it."""
    values = dict(values)
    for key, value in derived.items():
        given = values.get(key)
        if given is None:
            values[key] = value
        elif (tuple(given) if isinstance(value, tuple) else given) != value:
            raise ValueError(
                f"model.model.{key}={given} but the {source} has {value}; set it to null or {value}"
            )
    return values


def lam_config(model: dict[str, Any] | LAMConfig, tokenizer: VideoTokenizer | None) -> LAMConfig:
    """A LAM's config; a token-input LAM's ``token_vocab``/``token_grid`` left null come from ``tokenizer``, the
    one whose ids it reads."""
    values = plain_data(model) if isinstance(model, LAMConfig) else dict(model)
    if tokenizer is not None:
        tok = tokenizer.cfg
        values = derived_settings(
            values, {"token_vocab": tok.num_codes, "token_grid": tuple(tok.grid)}, "tokenizer"
        )
    return as_dataclass(LAMConfig, values)


def frozen_tokenizer(ckpt: str | None, config: dict[str, Any] | None, option: str) -> VideoTokenizer:
    """The tokenizer a later stage works on: from its checkpoint, or (when this module's own checkpoint is
    being restored) empty from the saved config — the weights then come with this module's state dict."""
    if config is not None:
        tokenizer = VideoTokenizer(config_from_dict("tokenizer", dict(config)))
    else:
        path = resolve_checkpoint(ckpt, "tokenizer", option)
        loaded = load_model(path, "tokenizer")
        assert isinstance(loaded, VideoTokenizer)
        tokenizer = loaded
    tokenizer.eval().requires_grad_(False)
    return tokenizer
