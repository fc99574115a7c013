"""Video tokenizer: ST-ViViT VQ-VAE (Genie §2.1, Tab. 3).

patchify → ST encoder (causal in time) → project to code dim → vector quantiser → ST decoder (causal) →
unpatchify. Every frame becomes an h×w grid of codebook ids. The ablation variants of Tab. 3 are the same
model with ``attention="spatial"`` (ViT) or ``attention="full"`` (C-ViViT) in encoder and decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from genie.models.common import PatchGeometry
from genie.nn import (
    KVCache,
    QuantizerOutput,
    STConfig,
    STTransformer,
    VQConfig,
    as_st_config,
    as_vq_config,
    patchify,
    quantizer_from_config,
    unpatchify,
)
from genie.nn.options import size_pair


@dataclass
class TokenizerConfig(PatchGeometry):
    """Paper defaults (200M): patch 4, 1024×32 codes, encoder 12L/512/8h, decoder 20L/1024/16h.

    The paper does not give the FFN width; with two attentions per block a 4× MLP would make this model
    386M. The width rule used for every paper-scale config here, ``mlp_ratio = 0.4`` (see the dynamics
    scaling table), gives ~213M, in line with the 200M (205M in Tab. 3) reported.
    """

    image_size: Sequence[int] = (90, 160)  # (H, W); the paper's 160×90 frames (40×23 = 920 tokens)
    channels: int = 3
    patch: int = 4
    num_codes: int = 1024
    code_dim: int = 32
    encoder: STConfig | dict[str, Any] = field(
        default_factory=lambda: STConfig(dim=512, depth=12, num_heads=8, mlp_ratio=0.4)
    )
    decoder: STConfig | dict[str, Any] = field(
        default_factory=lambda: STConfig(dim=1024, depth=20, num_heads=16, mlp_ratio=0.4)
    )
    vq: VQConfig = field(default_factory=VQConfig)  # a mapping (YAML) is taken too

    def __post_init__(self) -> None:
        self.image_size = size_pair(self.image_size, "tokenizer image_size")
        self.encoder = as_st_config(self.encoder)
        self.decoder = as_st_config(self.decoder)
        self.vq = as_vq_config(self.vq)

    @property
    def grid(self) -> tuple[int, int]:
        return self.patch_grid


@dataclass
class TokenizerOutput:
    recon: Tensor  # video_BTCHW in [0, 1] (unclamped)
    tokens: Tensor  # tokens_BTHW long
    vq: QuantizerOutput


class VideoTokenizer(nn.Module):
    """ST-ViViT VQ-VAE over ``video_BTCHW`` in [0, 1]."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        patch_dim = cfg.channels * cfg.patch**2
        self.embed = nn.Linear(patch_dim, cfg.enc.dim)
        self.encoder = STTransformer(cfg.enc)
        self.to_code = nn.Linear(cfg.enc.dim, cfg.code_dim)
        self.quantizer = quantizer_from_config(cfg.num_codes, cfg.code_dim, cfg.vq)
        self.from_code = nn.Linear(cfg.code_dim, cfg.dec.dim)
        self.decoder = STTransformer(cfg.dec)
        self.to_pixels = nn.Linear(cfg.dec.dim, patch_dim)

    def _check(self, video_BTCHW: Tensor) -> None:
        h, w = self.cfg.hw
        if (
            video_BTCHW.ndim != 5
            or video_BTCHW.shape[2] != self.cfg.channels
            or video_BTCHW.shape[-2:] != (h, w)
        ):
            raise ValueError(
                f"tokenizer expects video (B, T, {self.cfg.channels}, {h}, {w}), got {tuple(video_BTCHW.shape)}; "
                "resize frames to the model's image_size"
            )

    def encode_latents(self, video_BTCHW: Tensor) -> Tensor:
        """Continuous pre-quantisation latents ``z_BTSC``."""
        self._check(video_BTCHW)
        x = patchify(self.cfg.pad(video_BTCHW) * 2 - 1, self.cfg.patch)
        x = self.encoder(self.embed(x), self.cfg.grid)
        return self.to_code(x)

    def forward(self, video_BTCHW: Tensor) -> TokenizerOutput:
        vq = self.quantizer(self.encode_latents(video_BTCHW))
        recon = self._decode_vectors(vq.z_q)
        b, t = video_BTCHW.shape[:2]
        return TokenizerOutput(recon=recon, tokens=vq.indices.reshape(b, t, *self.cfg.grid), vq=vq)

    @torch.no_grad()
    def encode(self, video_BTCHW: Tensor) -> Tensor:
        """Frames → ``tokens_BTHW`` (codebook ids)."""
        vq = self.quantizer(self.encode_latents(video_BTCHW))
        b, t = video_BTCHW.shape[:2]
        return vq.indices.reshape(b, t, *self.cfg.grid)

    def decode(self, tokens_BTHW: Tensor, cache: KVCache | None = None) -> Tensor:
        """Codebook ids → ``video_BTCHW`` in [0, 1] (clamped).

        With ``cache`` (a :class:`KVCache` of the causal decoder) the frames follow the ones decoded
        before and are appended to it: frame-by-frame decoding at the cost of one frame.
        """
        if tokens_BTHW.ndim != 4 or tuple(tokens_BTHW.shape[-2:]) != self.cfg.grid:
            raise ValueError(
                f"expected tokens (B, T, {self.cfg.grid[0]}, {self.cfg.grid[1]}), got {tuple(tokens_BTHW.shape)}"
            )
        z = self.quantizer.lookup(tokens_BTHW.flatten(2))
        return self._decode_vectors(z, cache).clamp(0, 1)

    def _decode_vectors(self, z_BTSC: Tensor, cache: KVCache | None = None) -> Tensor:
        x = self.decoder(self.from_code(z_BTSC), self.cfg.grid, cache=cache, write_cache=cache is not None)
        pixels = unpatchify(self.to_pixels(x), self.cfg.patch, self.cfg.grid, self.cfg.channels)
        h, w = self.cfg.hw
        return (pixels[..., :h, :w] + 1) / 2
