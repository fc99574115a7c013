"""Training the video tokenizer: optimisation, logging and metrics only (the model is genie.models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from genie.lightning.common import (
    OptimConfig,
    StageModule,
    as_dataclass,
    build_optimizer,
    media_root,
    plain_data,
    random_window,
)
from genie.media import save_gif, video_grid
from genie.models.tokenizer import TokenizerConfig, VideoTokenizer
from genie.nn.static_shapes import frame_window


class TokenizerModule(StageModule):
    """VQ-VAE objective: MSE reconstruction + codebook + β·commitment.

    ``short_window``: when set, each training batch of B clips is used as B − ``long_clips`` random
    ``short_window``-frame windows plus ``long_clips`` whole clips. Frames of one clip are alike, so many short
    windows teach the spatial path faster per CPU second, while the whole clips keep the causal temporal
    attention trained on the full context it sees at inference.
    """

    def __init__(
        self,
        model: dict[str, Any] | TokenizerConfig,
        optim: dict[str, Any] | OptimConfig | None = None,
        short_window: int | None = None,
        long_clips: int = 1,
        media_every_n_val: int = 1,
        media_clips: int = 4,
    ) -> None:
        super().__init__()
        self.cfg: TokenizerConfig = as_dataclass(TokenizerConfig, model)
        self.optim_cfg: OptimConfig = as_dataclass(OptimConfig, optim)
        self.save_hyperparameters(
            {
                "stage": "tokenizer",
                "model": plain_data(self.cfg),
                "optim": plain_data(optim),
                "short_window": short_window,
                "long_clips": long_clips,
                "media_every_n_val": media_every_n_val,
            }
        )
        self.short_window = short_window
        self.long_clips = long_clips
        self.model = VideoTokenizer(self.cfg)
        self.media_every_n_val = media_every_n_val
        self.media_clips = media_clips
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self._val_round = 0

    def training_views(self, video_BTCHW: Tensor) -> list[Tensor]:
        """The clips a training step reconstructs (see ``short_window``)."""
        b, t = video_BTCHW.shape[:2]
        w = self.short_window
        if w is None or w >= t or b <= self.long_clips:
            return [video_BTCHW]
        start, stop = random_window(t, w)
        return [frame_window(video_BTCHW[self.long_clips :], start, stop), video_BTCHW[: self.long_clips]]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        views = self.training_views(batch["video"])
        frames = sum(v.shape[0] * v.shape[1] for v in views)
        recon_loss = torch.zeros((), device=self.device)
        vq_loss = torch.zeros((), device=self.device)
        stats: dict[str, Tensor] = {}
        for video in views:  # frame-weighted mean over the views
            out = self.model(video)
            weight = video.shape[0] * video.shape[1] / frames
            recon_loss = recon_loss + weight * F.mse_loss(out.recon, video)
            vq_loss = vq_loss + weight * out.vq.loss
            stats = stats or {  # usage statistics of the first (largest) view
                "train/vq_commit": out.vq.commitment_loss,
                "train/code_usage": out.vq.usage,
                "train/perplexity": out.vq.perplexity,
            }
        loss = recon_loss + vq_loss
        n = batch["video"].shape[0]
        self.log_dict(
            {"train/loss": loss, "train/recon_mse": recon_loss, "train/vq_loss": vq_loss, **stats},
            batch_size=n,
        )
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        video = batch["video"]
        out = self.model(video)
        recon = out.recon.clamp(0, 1)
        frames, target = recon.flatten(0, 1).float(), video.flatten(0, 1).float()
        self.val_psnr.update(frames, target)
        self.val_ssim.update(frames, target)
        n = video.shape[0]
        self.log("val/recon_mse", F.mse_loss(out.recon, video), batch_size=n, sync_dist=True)
        self.log("val/code_usage", out.vq.usage, batch_size=n, sync_dist=True)
        self.log("val/psnr", self.val_psnr, prog_bar=True, batch_size=n)
        self.log("val/ssim", self.val_ssim, batch_size=n)
        if batch_idx == 0 and self._val_round % self.media_every_n_val == 0 and self.trainer.is_global_zero:
            k = min(self.media_clips, n)
            self._write_media(video[:k], recon[:k])

    def on_validation_epoch_end(self) -> None:
        self._val_round += 1

    def _write_media(self, video: Tensor, recon: Tensor) -> None:
        root = media_root(self.trainer)
        path = Path(root) / "media" / f"recon_step{self.global_step:07d}.gif"
        # rows: real clips, then their reconstructions
        save_gif(video_grid([video, recon]), path)

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.model, self.optim_cfg)
