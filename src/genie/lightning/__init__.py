"""Thin LightningModules: optimisation, schedules, logging and metrics; the models live in genie.models."""

from genie.lightning.common import OptimConfig
from genie.lightning.dynamics import DynamicsModule
from genie.lightning.lam import LAMModule
from genie.lightning.tokenizer import TokenizerModule

__all__ = ["DynamicsModule", "LAMModule", "OptimConfig", "TokenizerModule"]
