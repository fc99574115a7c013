"""The Genie models in pure torch: video tokenizer, latent action model, dynamics, and the composed world."""

from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.tokenizer import TokenizerConfig, TokenizerOutput, VideoTokenizer

__all__ = ["DynamicsConfig", "DynamicsModel", "TokenizerConfig", "TokenizerOutput", "VideoTokenizer"]
