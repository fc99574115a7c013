"""The Genie models in pure torch: video tokenizer, latent action model, dynamics, and the composed world."""

from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.genie import Genie
from genie.models.lam import LAMConfig, LAMOutput, LatentActionModel
from genie.models.sampling import Rollout, SamplingConfig
from genie.models.tokenizer import TokenizerConfig, TokenizerOutput, VideoTokenizer

__all__ = [
    "DynamicsConfig",
    "DynamicsModel",
    "Genie",
    "LAMConfig",
    "LAMOutput",
    "LatentActionModel",
    "Rollout",
    "SamplingConfig",
    "TokenizerConfig",
    "TokenizerOutput",
    "VideoTokenizer",
]
