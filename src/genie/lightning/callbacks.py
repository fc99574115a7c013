"""Training callbacks: stop (or skip the step) on a non-finite loss; the progress bar of step-counted runs."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar


class NonFiniteGuard(L.Callback):
    """Checks the gradients before every optimizer step. A NaN/inf loss makes them non-finite: ``policy="stop"``
    ends the run with a one-line error naming the step; ``policy="skip"`` drops that update (gradients cleared,
    so the optimizer leaves weights and moments untouched), counts it (``train/skipped_steps``) and stops only
    after ``max_skips`` skipped steps in a row."""

    def __init__(self, policy: str = "stop", max_skips: int = 20) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard policy must be 'stop' or 'skip', got {policy!r}")
        self.policy = policy
        self.max_skips = max_skips
        self.skipped = 0
        self.in_a_row = 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        if grads[0].device.type == "xla":  # materialise the step first: reading the flag would otherwise
            import torch_xla.core.xla_model as xm  # compute the whole forward/backward twice

            xm.mark_step()
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if bool(finite):
            self.in_a_row = 0
            return
        step = trainer.global_step
        hint = "lower model.optim.lr (or use bf16-mixed instead of fp16)"
        if self.policy == "stop":
            raise ValueError(
                f"non-finite loss at step {step} (NaN/inf gradients); {hint}, or set "
                "callbacks.nonfinite.policy=skip to skip such steps"
            )
        self.skipped += 1
        self.in_a_row += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True)
        if self.in_a_row >= self.max_skips:
            raise ValueError(f"{self.in_a_row} non-finite steps in a row up to step {step}; {hint}")


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar for runs counted in steps (``trainer.max_steps``; the clip streams have
    no epochs): its bar read "Epoch 0/-2" when ``max_epochs`` is -1 (unbounded); it now reads "Epoch 0"."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 0:
            description = description.replace(
                f"Epoch {current_epoch}/{max_epochs - 1}", f"Epoch {current_epoch}"
            )
        return description
