"""Evaluation metrics (torchmetrics API): latent-action usage and NMI."""

from genie.metrics.actions import ActionNMI, CodeUsage, nmi_from_counts

__all__ = ["ActionNMI", "CodeUsage", "nmi_from_counts"]
