"""Evaluation metrics (torchmetrics API): latent-action usage, NMI and probe; FVD; ΔtPSNR.

``genie.metrics.i3d`` (the FVD feature network) loads lazily: it needs the ``metrics`` extra's weights.
"""

from genie.metrics.actions import (
    ActionNMI,
    ActionProbe,
    CodeUsage,
    fit_action_map,
    nmi_from_counts,
    probe_accuracy,
)
from genie.metrics.video import DeltaPSNR, FrechetVideoDistance, frame_psnr, frechet_distance, random_actions

__all__ = [
    "ActionNMI",
    "ActionProbe",
    "CodeUsage",
    "DeltaPSNR",
    "FrechetVideoDistance",
    "fit_action_map",
    "frame_psnr",
    "frechet_distance",
    "nmi_from_counts",
    "probe_accuracy",
    "random_actions",
]
