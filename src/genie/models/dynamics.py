"""Dynamics model: a decoder-only MaskGIT over tokenizer tokens, conditioned on latent actions (Genie §2.1).

Training masks the tokens of frames 2..T at a per-example rate ~ U(0.5, 1) (frame 1 never masked) and
predicts them with cross-entropy. The action that produced frame t (a_{t-1}, the transition t-1 → t)
conditions frame t, either added to each of its token embeddings (``add``, the paper) or as one extra token
in front of its grid (``prepend``, which Jasmine found necessary for CoinRun). Frame 1 gets a learned
"no action yet" embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genie.nn import KVCache, STConfig, STTransformer, as_st_config

ActionMode = Literal["add", "prepend"]


@dataclass
class DynamicsConfig:
    """Paper final model: 48 layers, d 5120, 36 heads of k/q 128 (``dynamics_11b``); FFN 0.4·d (see README)."""

    num_codes: int = 1024  # the tokenizer's vocabulary
    grid: Sequence[int] = (16, 16)  # tokens per frame (h, w)
    num_actions: int = 8
    action_mode: ActionMode = "add"
    transformer: STConfig | dict[str, Any] = field(
        default_factory=lambda: STConfig(dim=512, depth=12, num_heads=8)
    )
    mask_rate: Sequence[float] = (0.5, 1.0)

    def __post_init__(self) -> None:
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        self.mask_rate = (float(self.mask_rate[0]), float(self.mask_rate[1]))
        self.transformer = as_st_config(self.transformer)
        if self.action_mode not in ("add", "prepend"):
            raise ValueError(f"action_mode must be 'add' or 'prepend', got {self.action_mode!r}")

    @property
    def st(self) -> STConfig:
        assert isinstance(self.transformer, STConfig)
        return self.transformer

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.grid[0]), int(self.grid[1])

    def num_params(self) -> int:
        """Closed form: transformer + token embeddings (codes + mask) + actions (+ start) + output head."""
        d = self.st.dim
        return (
            self.st.num_params() + (self.num_codes + 1) * d + (self.num_actions + 1) * d + d * self.num_codes
        )


class DynamicsModel(nn.Module):
    """``logits_BTSV = model(tokens_BTHW, actions_BT1, mask_BTS)``: S = h·w grid tokens, V = num_codes."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.st.dim
        self.mask_id = cfg.num_codes
        self.token_embed = nn.Embedding(cfg.num_codes + 1, d)  # last row: the MASK token
        self.action_embed = nn.Embedding(cfg.num_actions + 1, d)  # last row: "no action yet" (frame 1)
        self.transformer = STTransformer(cfg.st)
        self.head = nn.Linear(d, cfg.num_codes, bias=False)
        for emb in (self.token_embed, self.action_embed):
            nn.init.normal_(emb.weight, std=0.02)

    @property
    def prefix(self) -> int:
        return 1 if self.cfg.action_mode == "prepend" else 0

    def frame_actions(self, actions_BT1: Tensor | None, b: int, t: int, t0: int = 0) -> Tensor:
        """Per-frame action ids ``(B, T)``: frame t gets a_{t-1}; the clip's first frame gets "no action yet".

        ``actions_BT1`` holds the transitions into frames t0+1 .. t0+T-1 when ``t0 == 0`` (T-1 actions), or into
        frames t0 .. t0+T-1 when continuing a rollout (T actions).
        """
        start = torch.full(
            (b, 1), self.cfg.num_actions, dtype=torch.long, device=self.token_embed.weight.device
        )
        if actions_BT1 is None:
            return start.expand(b, t)
        need = t - 1 if t0 == 0 else t
        if actions_BT1.shape != (b, need):
            raise ValueError(
                f"expected {need} actions per clip of {t} frames, got shape {tuple(actions_BT1.shape)}"
            )
        if actions_BT1.numel() and (actions_BT1.min() < 0 or actions_BT1.max() >= self.cfg.num_actions):
            raise ValueError(
                f"action ids must be in [0, {self.cfg.num_actions}), got {actions_BT1.unique().tolist()}"
            )
        return torch.cat((start, actions_BT1), dim=1) if t0 == 0 else actions_BT1

    def forward(
        self,
        tokens_BTHW: Tensor,
        actions_BT1: Tensor | None = None,
        mask_BTS: Tensor | None = None,
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> Tensor:
        b, t, h, w = tokens_BTHW.shape
        if (h, w) != self.cfg.hw:
            raise ValueError(f"expected a {self.cfg.hw} token grid per frame, got {(h, w)}")
        ids_BTS = tokens_BTHW.reshape(b, t, h * w)
        if mask_BTS is not None:
            ids_BTS = ids_BTS.masked_fill(mask_BTS, self.mask_id)
        x_BTSD = self.token_embed(ids_BTS)
        t0 = cache.position if cache is not None else 0
        act_BTD = self.action_embed(self.frame_actions(actions_BT1, b, t, t0))
        if self.cfg.action_mode == "add":
            x_BTSD = x_BTSD + act_BTD[:, :, None]
        else:
            x_BTSD = torch.cat((act_BTD[:, :, None], x_BTSD), dim=2)
        x_BTSD = self.transformer(
            x_BTSD, self.cfg.hw, cache=cache, write_cache=write_cache, prefix=self.prefix
        )
        return self.head(x_BTSD[:, :, self.prefix :])

    def random_mask(self, b: int, t: int, generator: torch.Generator | None = None) -> Tensor:
        """MaskGIT training mask ``mask_BTS``: per example a rate ~ U(lo, hi) over frames 2..T; frame 1 never."""
        s = self.cfg.hw[0] * self.cfg.hw[1]
        device = self.token_embed.weight.device
        lo, hi = self.cfg.mask_rate
        rate_B = lo + (hi - lo) * torch.rand(b, generator=generator, device=device)
        mask = torch.rand(b, t, s, generator=generator, device=device) < rate_B[:, None, None]
        mask[:, 0] = False
        return mask

    def loss(
        self, tokens_BTHW: Tensor, actions_BT1: Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Cross-entropy on masked positions; returns (loss, logits_BTSV, mask_BTS)."""
        b, t = tokens_BTHW.shape[:2]
        mask = self.random_mask(b, t, generator)
        logits = self(tokens_BTHW, actions_BT1, mask)
        targets = tokens_BTHW.reshape(b, t, -1)
        loss = F.cross_entropy(logits[mask].float(), targets[mask]) if mask.any() else logits.sum() * 0
        return loss, logits, mask
