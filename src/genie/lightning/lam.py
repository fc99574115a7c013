"""Training the latent action model: optimisation, logging and metrics only (the model is genie.models.lam)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from genie.lightning.common import (
    OptimConfig,
    StageModule,
    as_dataclass,
    build_optimizer,
    frozen_tokenizer,
    lam_config,
    media_root,
    plain_data,
    random_window,
)
from genie.media import save_gif, video_grid
from genie.metrics import ActionNMI, ActionProbe, CodeUsage
from genie.models.lam import LAMConfig, LatentActionModel
from genie.models.tokenizer import VideoTokenizer
from genie.nn.static_shapes import frame_window


class LAMModule(StageModule):
    """VQ-VAE over transitions: predict x_t+1 from x_1:t and a latent action a_t.

    Logs per-code action usage every step (collapse shows up at once), reconstruction PSNR against a
    copy-the-last-frame baseline, and — when the clips carry true actions — NMI(latent, true action).
    ``train_frames``: train on random windows of this many frames (the LAM is causal, so a window is a
    valid shorter clip; more clips per CPU second). ``input="tokens"`` (ablation) needs ``tokenizer_ckpt``.
    """

    def __init__(
        self,
        model: dict[str, Any] | LAMConfig,
        optim: dict[str, Any] | OptimConfig | None = None,
        train_frames: int | None = None,
        tokenizer_ckpt: str | None = None,
        tokenizer_model: dict[str, Any] | None = None,
        media_every_n_val: int = 1,
        media_clips: int = 4,
    ) -> None:
        super().__init__()
        self.tokenizer: VideoTokenizer | None = None
        reads_tokens = (model.input if isinstance(model, LAMConfig) else dict(model).get("input")) == "tokens"
        if reads_tokens:
            self.tokenizer = frozen_tokenizer(tokenizer_ckpt, tokenizer_model, "model.tokenizer_ckpt")
            tokenizer_model = plain_data(self.tokenizer.cfg)
        self.cfg: LAMConfig = lam_config(model, self.tokenizer)
        self.optim_cfg: OptimConfig = as_dataclass(OptimConfig, optim)
        self.save_hyperparameters(
            {
                "stage": "lam",
                "model": plain_data(self.cfg),
                "optim": plain_data(self.optim_cfg),
                "train_frames": train_frames,
                "tokenizer_ckpt": tokenizer_ckpt,
                "tokenizer_model": tokenizer_model,
                "media_every_n_val": media_every_n_val,
            }
        )
        self.model = LatentActionModel(self.cfg)
        self.train_frames = train_frames
        self.media_every_n_val = media_every_n_val
        self.media_clips = media_clips
        a = self.cfg.num_actions
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_recon_copy = (
            MeanMetric()
        )  # MSE of repeating the last frame: the bar the prediction must beat
        self.val_nmi = ActionNMI(a)
        self.val_usage = CodeUsage(a)
        self.val_probe = ActionProbe(a)  # the latent→real probe, as genie.evaluate computes it
        self.val_recon = MeanMetric()  # the training objective (MSE, or cross-entropy for token input)
        self.val_recon_mse = MeanMetric()
        self._val_round = 0

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.tokenizer] if self.tokenizer is not None else []

    def _inputs(self, video: Tensor) -> Tensor:
        if self.tokenizer is None:
            return video
        with torch.no_grad():
            return self.tokenizer.encode(video)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        video = batch["video"]
        start, stop = random_window(video.shape[1], self.train_frames)
        out = self.model(self._inputs(frame_window(video, start, stop)))
        n = video.shape[0]
        counts = out.vq.counts.float()
        share = counts / counts.sum().clamp_min(1)
        self.log_dict(
            {
                "train/loss": out.loss,
                "train/recon": out.recon_loss,
                "train/vq_loss": out.vq.loss,
                "train/latent_norm": out.latent_norm,
                "train/action_usage": out.vq.usage,
                "train/action_perplexity": out.vq.perplexity,
                **{f"train/action_share_{i}": share[i] for i in range(share.numel())},
            },
            batch_size=n,
        )
        self.log("loss", out.loss, prog_bar=True, logger=False, batch_size=n)
        return out.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        video = batch["video"]
        out = self.model(self._inputs(video))
        if self.tokenizer is not None:  # token ablation: decode the predicted ids for a pixel PSNR
            b, t1 = out.pred.shape[:2]
            ids = out.pred.argmax(-1).reshape(b, t1, *self.tokenizer.cfg.grid)
            pred = self.tokenizer.decode(ids)
        else:
            pred = out.pred.clamp(0, 1)
        target = video[:, 1:].flatten(0, 1).float()
        self.val_psnr.update(pred.flatten(0, 1).float(), target)
        self.val_recon_copy.update(F.mse_loss(video[:, :-1].float(), video[:, 1:].float()))
        if self.tokenizer is None:
            self.val_recon_mse.update(F.mse_loss(pred.float(), video[:, 1:].float()))
        self.val_usage.update(out.actions)
        self.val_recon.update(out.recon_loss)
        true = batch.get("actions")
        if true is not None and (true >= 0).any():
            self.val_nmi.update(out.actions, true)
            self.val_probe.update(out.actions, true)
        n = video.shape[0]
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=n)
        self.log("val/recon_copy_last", self.val_recon_copy, batch_size=n)
        if self.tokenizer is None:
            self.log("val/recon_mse", self.val_recon_mse, batch_size=n)
        self.log("val/recon", self.val_recon, batch_size=n)
        self.log("val/action_usage", self.val_usage, batch_size=n)
        if batch_idx == 0 and self._val_round % self.media_every_n_val == 0 and self.trainer.is_global_zero:
            k = min(self.media_clips, n)
            self._write_media(video[:k], pred[:k])

    def on_validation_epoch_end(self) -> None:
        if self.val_nmi.counts.sum() > 0 or self.trainer.world_size > 1:
            self.log("val/nmi", self.val_nmi.compute())
        self.log("val/action_codes_used", self.val_usage.compute() * self.cfg.num_actions)
        if self.val_probe.labelled() >= 2 or self.trainer.world_size > 1:
            self.log("val/probe_accuracy", self.val_probe.compute())
        self.val_nmi.reset()
        self.val_probe.reset()
        self._val_round += 1

    def _write_media(self, video: Tensor, pred: Tensor) -> None:
        root = media_root(self.trainer)
        path = Path(root) / "media" / f"lam_step{self.global_step:07d}.gif"
        save_gif(video_grid([video[:, 1:], pred]), path)  # rows: real next frames, then predictions

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.model, self.optim_cfg)
