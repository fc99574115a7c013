"""Training the dynamics model: optimisation, logging and metrics only (the model is genie.models.dynamics).

The tokenizer is frozen (loaded from its checkpoint). Actions come from a frozen latent action model
(``actions: lam``, the paper's pipeline), from the clips' true actions (``actions: true``, a baseline), or
from a LAM trained together with the dynamics (``actions: cotrain``; its discrete codes reach the dynamics
model without a gradient — the paper's stop-gradient). The tokenizer and the LAM are saved in this stage's
checkpoint, so it alone loads as a complete :class:`genie.models.Genie`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import MeanMetric

from genie.config import choice
from genie.lightning.common import (
    OptimConfig,
    StageModule,
    as_dataclass,
    build_optimizer,
    derived_settings,
    frozen_tokenizer,
    lam_config,
    media_root,
    plain_data,
    random_window,
)
from genie.media import save_gif, video_grid
from genie.metrics import ActionNMI, DeltaPSNR, frame_psnr, random_actions
from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.io import check_lam_tokenizer, config_from_dict, fingerprint, load_lam, resolve_checkpoint
from genie.models.lam import LatentActionModel
from genie.models.sampling import SamplingConfig, seeded_generator
from genie.nn.static_shapes import frame_window

ActionSource = Literal["lam", "true", "cotrain"]


class DynamicsModule(StageModule):
    """MaskGIT objective on tokenizer tokens; logs token accuracy, and at validation generated rollouts:
    PSNR vs the real clip at frame t = ``eval_t`` (1-based; frame 1 is the prompt) with inferred (or true) actions and with random ones,
    their difference ΔtPSNR (controllability), and a GIF (real | inferred actions | random actions)."""

    def __init__(
        self,
        model: dict[str, Any] | DynamicsConfig,
        optim: dict[str, Any] | OptimConfig | None = None,
        tokenizer_ckpt: str | None = None,
        actions: ActionSource = "lam",
        lam_ckpt: str | None = None,
        lam: dict[str, Any] | None = None,
        lam_loss_weight: float = 1.0,
        train_frames: int | None = None,
        sampling: dict[str, Any] | SamplingConfig | None = None,
        eval_t: int = 4,
        eval_batches: int | None = 2,
        media_every_n_val: int = 1,
        media_clips: int = 4,
        tokenizer_model: dict[str, Any] | None = None,
        lam_model: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        actions = choice(actions, ("lam", "true", "cotrain"), "model.actions")  # type: ignore[assignment]
        self.tokenizer = frozen_tokenizer(tokenizer_ckpt, tokenizer_model, "model.tokenizer_ckpt")
        self.lam: LatentActionModel | None = None
        if actions == "lam":
            if lam_model is not None:
                self.lam = LatentActionModel(config_from_dict("lam", dict(lam_model)))
            else:
                path = resolve_checkpoint(lam_ckpt, "latent action model", "model.lam_ckpt")
                self.lam, lam_tokenizer = load_lam(path)
                if lam_tokenizer is not None:
                    check_lam_tokenizer(lam_tokenizer, self.tokenizer, f"model.lam_ckpt={path}")
            self.lam.eval().requires_grad_(False)
        elif actions == "cotrain":
            saved = (
                config_from_dict("lam", dict(lam_model)) if lam_model is not None else None
            )  # a checkpoint's
            # a token-input LAM reads this stage's tokenizer's ids
            reader = self.tokenizer if (lam or {}).get("input") == "tokens" else None
            self.lam = LatentActionModel(saved or lam_config(lam or {}, reader))
        self.cfg = self._dynamics_config(model)
        self.optim_cfg: OptimConfig = as_dataclass(OptimConfig, optim)
        self.sampling: SamplingConfig = as_dataclass(SamplingConfig, sampling)
        self.actions = actions
        self.save_hyperparameters(
            {
                "stage": "dynamics",
                "model": plain_data(self.cfg),
                "optim": plain_data(self.optim_cfg),
                "tokenizer_ckpt": str(tokenizer_ckpt) if tokenizer_ckpt else None,
                "actions": actions,
                "lam_ckpt": str(lam_ckpt) if lam_ckpt else None,
                "lam_loss_weight": lam_loss_weight,
                "train_frames": train_frames,
                "sampling": plain_data(self.sampling),
                "eval_t": eval_t,
                "eval_batches": eval_batches,
                "media_every_n_val": media_every_n_val,
                "tokenizer_model": plain_data(self.tokenizer.cfg),
                "lam_model": plain_data(self.lam.cfg) if self.lam is not None else None,
            }
        )
        self.model = DynamicsModel(self.cfg)
        self.lam_loss_weight = lam_loss_weight
        self.train_frames = train_frames
        self.eval_t = eval_t
        self.eval_batches = eval_batches
        self.media_every_n_val = media_every_n_val
        self.media_clips = media_clips
        self.val_loss = MeanMetric()
        self.val_acc = MeanMetric()
        self.val_delta_psnr = DeltaPSNR()
        self.val_psnr_rollout = MeanMetric()
        self.val_psnr_tokenizer = MeanMetric()
        self.val_nmi = ActionNMI(self.cfg.num_actions)
        self._val_round = 0

    def _dynamics_config(self, model: dict[str, Any] | DynamicsConfig) -> DynamicsConfig:
        """Fill ``num_codes``/``grid`` from the tokenizer and ``num_actions`` from the LAM when left null."""
        values = plain_data(model) if isinstance(model, DynamicsConfig) else dict(model)
        tok = self.tokenizer.cfg
        values = derived_settings(values, {"num_codes": tok.num_codes, "grid": tuple(tok.grid)}, "tokenizer")
        if self.lam is not None:
            values = derived_settings(values, {"num_actions": self.lam.cfg.num_actions}, "LAM")
        if values.get("num_actions") is None:
            raise ValueError(
                "model.model.num_actions is null; with actions=true set it to the data's action count"
            )
        cfg: DynamicsConfig = as_dataclass(DynamicsConfig, values)
        return cfg

    def frozen_modules(self) -> list[torch.nn.Module]:
        return [self.tokenizer, *([self.lam] if self.lam is not None and self.actions == "lam" else [])]

    # -- actions --------------------------------------------------------------------------------------
    def _true_actions(self, batch: dict[str, Tensor], start: int, stop: int) -> Tensor:
        acts = batch.get("actions")
        if acts is None or (acts[:, start : stop - 1] < 0).any():
            raise ValueError("these clips carry no true actions; train with model.actions=lam (or cotrain)")
        if acts.max() >= self.cfg.num_actions:
            raise ValueError(
                f"true action ids reach {int(acts.max())} but model.model.num_actions={self.cfg.num_actions}"
            )
        return frame_window(acts, start, stop - 1)

    def _lam_input(self, video: Tensor, tokens: Tensor) -> Tensor:
        """What the LAM reads: the clip's pixels, or its tokens for a token-input LAM (the same tokenizer's: the
        constructor checks)."""
        assert self.lam is not None
        return tokens if self.lam.reads_tokens else video

    def _actions(
        self, video: Tensor, tokens: Tensor, batch: dict[str, Tensor], start: int, stop: int
    ) -> Tensor:
        if self.actions == "true":
            return self._true_actions(batch, start, stop)
        assert self.lam is not None
        return self.lam.infer_actions(self._lam_input(video, tokens))

    # -- pretokenized clips (data.train_tokens) ------------------------------------------------------
    trains_on_tokens = True

    def on_fit_start(self) -> None:
        super().on_fit_start()
        manifest = getattr(getattr(self._trainer, "datamodule", None), "token_manifest", None)
        if manifest is not None:
            check_token_manifest(
                manifest, self.tokenizer, self.lam if self.actions == "lam" else None, self.actions
            )

    def _token_step(self, batch: dict[str, Tensor]) -> Tensor:
        """The training step on pretokenized clips: the stored tokens and latent actions replace the frozen
        tokenizer's and LAM's work (the same random window as on pixels)."""
        start, stop = random_window(batch["tokens"].shape[1], self.train_frames)
        tokens = frame_window(batch["tokens"], start, stop)
        if self.actions == "true":
            actions = self._true_actions(batch, start, stop)
        else:
            actions = frame_window(batch["latent_actions"], start, stop - 1)
        loss, acc, _ = self.model.loss(tokens, actions)
        n = tokens.shape[0]
        self.log_dict({"train/loss": loss, "train/token_acc": acc}, batch_size=n)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=n)
        return loss

    # -- steps ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if "tokens" in batch:
            return self._token_step(batch)
        start, stop = random_window(batch["video"].shape[1], self.train_frames)
        video = frame_window(batch["video"], start, stop)
        tokens = self.tokenizer.encode(video)
        logs: dict[str, Tensor] = {}
        lam_loss = torch.zeros((), device=video.device)
        if self.actions == "cotrain":
            assert self.lam is not None
            lam_out = self.lam(self._lam_input(video, tokens))
            actions = lam_out.actions  # discrete ids: no gradient reaches the LAM through the dynamics
            lam_loss = lam_out.loss
            logs.update({"train/lam_loss": lam_loss, "train/action_usage": lam_out.vq.usage})
        else:
            actions = self._actions(video, tokens, batch, start, stop)
        loss, acc, _ = self.model.loss(tokens, actions)
        total = loss + self.lam_loss_weight * lam_loss
        n = video.shape[0]
        self.log_dict({"train/loss": loss, "train/token_acc": acc, **logs}, batch_size=n)
        self.log("loss", loss, prog_bar=True, logger=False, batch_size=n)
        return total

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        video = batch["video"]
        b, t = video.shape[:2]
        tokens = self.tokenizer.encode(video)
        actions = self._actions(video, tokens, batch, 0, t)
        if self.actions != "true" and "actions" in batch and (batch["actions"] >= 0).any():
            self.val_nmi.update(actions, batch["actions"])
        gen = seeded_generator(video.device, 1000 + batch_idx)
        loss, acc, mask = self.model.loss(tokens, actions, gen)
        self.val_loss.update(loss)
        if mask.any():
            self.val_acc.update(acc)
        self.log("val/loss", self.val_loss, prog_bar=True, batch_size=b)
        self.log("val/token_acc", self.val_acc, batch_size=b)
        if self.eval_batches is None or batch_idx < self.eval_batches:
            self._rollouts(video, tokens, actions, batch_idx)

    @torch.no_grad()
    def _rollouts(self, video: Tensor, tokens: Tensor, actions: Tensor, batch_idx: int) -> None:
        """From the clip's first frame, generate frames 2..t (t = ``eval_t``, 1-based) with the clip's
        inferred actions and with random ones; compare frame t to the real one."""
        b, t = video.shape[:2]
        n = min(self.eval_t, t) - 1  # new frames
        seed = 2000 + batch_idx
        prompt = tokens[:, :1]
        randoms = random_actions(b, n, self.cfg.num_actions, seed + 7, video.device)
        rolled = {}
        for name, acts in (("inferred", actions[:, :n]), ("random", randoms)):
            g = seeded_generator(video.device, seed)  # same sampling noise for both
            rolled[name] = self.tokenizer.decode(
                self.model.generate(prompt, acts, sampling=self.sampling, generator=g)
            )
        target = video[:, n]
        self.val_delta_psnr.update(target, rolled["inferred"][:, n], rolled["random"][:, n])
        self.val_psnr_rollout.update(
            frame_psnr(rolled["inferred"][:, 1:].flatten(0, 1), video[:, 1 : n + 1].flatten(0, 1))
        )
        self.val_psnr_tokenizer.update(frame_psnr(self.tokenizer.decode(tokens[:, : n + 1])[:, n], target))
        if batch_idx == 0 and self._val_round % self.media_every_n_val == 0 and self.trainer.is_global_zero:
            k = min(self.media_clips, b)
            root = media_root(self.trainer)
            path = Path(root) / "media" / f"rollout_step{self.global_step:07d}.gif"
            save_gif(
                video_grid([video[:k, : n + 1], rolled["inferred"][:k], rolled["random"][:k]]), path, fps=4
            )

    def on_validation_epoch_end(self) -> None:
        t = self.eval_t
        if self.val_delta_psnr.update_count > 0 or self.trainer.world_size > 1:
            psnr, psnr_random, delta = self.val_delta_psnr.compute()
            self.log_dict(
                {
                    f"val/psnr_t{t}": psnr,
                    f"val/psnr_t{t}_random": psnr_random,
                    f"val/delta_psnr_t{t}": delta,
                    "val/rollout_psnr": self.val_psnr_rollout.compute(),
                    f"val/tokenizer_psnr_t{t}": self.val_psnr_tokenizer.compute(),
                }
            )
        if self.val_nmi.counts.sum() > 0 or (self.trainer.world_size > 1 and self.actions != "true"):
            self.log("val/nmi", self.val_nmi.compute())
        for metric in (
            self.val_delta_psnr,
            self.val_psnr_rollout,
            self.val_psnr_tokenizer,
            self.val_nmi,
        ):
            metric.reset()
        self._val_round += 1

    def configure_optimizers(self) -> Any:
        return build_optimizer(
            self, self.optim_cfg
        )  # trainable only: the tokenizer (and a frozen LAM) are not


def check_token_manifest(
    manifest: dict[str, Any], tokenizer: torch.nn.Module, lam: torch.nn.Module | None, actions: str
) -> None:
    """Refuse pretokenized clips that this dynamics stage's own tokenizer (and LAM, for ``actions=lam``) did not
    make: one line naming the mismatch and the fix."""
    redo = "pretokenize again with this stage's checkpoints (tools/pretokenize.py) or point data.train_tokens elsewhere"
    if actions == "cotrain":
        raise ValueError(
            "model.actions=cotrain trains the LAM on pixels; it cannot train on data.train_tokens"
        )
    made = manifest.get("tokenizer") or {}
    if made.get("fingerprint") != fingerprint(tokenizer):
        raise ValueError(
            f"the token shards were made by another tokenizer ({made.get('checkpoint')}) than "
            f"model.tokenizer_ckpt's; {redo}"
        )
    if lam is not None:
        made_lam = manifest.get("lam")
        if made_lam is None:
            raise ValueError(
                f"the token shards carry no latent actions (pretokenized without --lam) but model.actions=lam; {redo}"
            )
        if made_lam.get("fingerprint") != fingerprint(lam):
            raise ValueError(
                f"the token shards' latent actions come from another LAM ({made_lam.get('checkpoint')}) than "
                f"model.lam_ckpt's; {redo}"
            )
