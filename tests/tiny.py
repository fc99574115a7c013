"""Tiny untrained models shared by tests (16x16 frames, 4x4 token grid, 4 latent actions)."""

from __future__ import annotations

from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.lam import LAMConfig, LatentActionModel
from genie.models.tokenizer import TokenizerConfig, VideoTokenizer

SIZE = 16
TINY_ST = {"dim": 32, "depth": 1, "num_heads": 2}
# the same tiny tokenizer and LAM as plain configs (what a stage module or a YAML file takes)
TOKENIZER = {
    "image_size": [SIZE, SIZE],
    "patch": 4,
    "num_codes": 32,
    "code_dim": 8,
    "encoder": TINY_ST,
    "decoder": TINY_ST,
}
LAM = {
    "image_size": [SIZE, SIZE],
    "patch": 8,
    "num_actions": 4,
    "latent_dim": 8,
    "encoder": TINY_ST,
    "decoder": TINY_ST,
}


def tiny_models(num_actions: int = 4) -> tuple[VideoTokenizer, LatentActionModel, DynamicsModel]:
    tok = VideoTokenizer(TokenizerConfig(**TOKENIZER)).eval()  # type: ignore[arg-type]
    lam = LatentActionModel(LAMConfig(**{**LAM, "num_actions": num_actions})).eval()  # type: ignore[arg-type]
    dyn = DynamicsModel(
        DynamicsConfig(num_codes=32, grid=(4, 4), num_actions=num_actions, transformer=TINY_ST)
    ).eval()
    return tok, lam, dyn
