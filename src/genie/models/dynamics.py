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

from genie.models.aids import CopyHead, DynamicsAids, as_aids
from genie.models.sampling import Rollout, SamplingConfig, uniform
from genie.nn import KVCache, STConfig, STTransformer, as_st_config
from genie.nn.options import size_pair
from genie.nn.static_shapes import static_shapes

ActionMode = Literal["add", "prepend"]


@dataclass
class DynamicsConfig:
    """Paper final model: 48 layers, d 5120, 36 heads of k/q 128 (``dynamics_11b``); FFN 0.4·d (docs/architecture.md)."""

    num_codes: int = 1024  # the tokenizer's vocabulary
    grid: Sequence[int] = (16, 16)  # tokens per frame (h, w)
    num_actions: int = 8
    action_mode: ActionMode = "add"
    transformer: STConfig | dict[str, Any] = field(
        default_factory=lambda: STConfig(dim=512, depth=12, num_heads=8)
    )
    mask_rate: Sequence[float] = (0.5, 1.0)
    # Aids outside the paper (genie.models.aids; all off by default): whole-frame masking, the copy head.
    aids: DynamicsAids = field(default_factory=DynamicsAids)  # a mapping is taken too

    def __post_init__(self) -> None:
        self.grid = size_pair(self.grid, "dynamics grid")
        self.mask_rate = (float(self.mask_rate[0]), float(self.mask_rate[1]))
        if not 0.0 <= self.mask_rate[0] <= self.mask_rate[1] <= 1.0:
            raise ValueError(
                f"mask_rate must be [lo, hi] with 0 <= lo <= hi <= 1, got {list(self.mask_rate)}"
            )
        self.aids = as_aids(DynamicsAids, self.aids)
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

    @property
    def copy_offsets(self) -> int:
        r = self.aids.copy_radius
        return (2 * r + 1) ** 2 if r > 0 else 0

    def num_params(self) -> int:
        """Closed form: transformer + token embeddings (codes + mask) + actions (+ start) + output head
        (+ the copy head: offset weights and the gate, with biases)."""
        d = self.st.dim
        k = self.copy_offsets
        return (
            self.st.num_params()
            + (self.num_codes + 1) * d
            + (self.num_actions + 1) * d
            + d * self.num_codes
            + ((d + 1) * (k + 1) if k else 0)
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
        self.copy_head = CopyHead(d, cfg.hw, cfg.aids.copy_radius) if cfg.aids.copy_radius > 0 else None

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
        on_xla = static_shapes(actions_BT1)  # (reading values would cut the step's graph in two)
        if (
            actions_BT1.numel()
            and not on_xla
            and (actions_BT1.min() < 0 or actions_BT1.max() >= self.cfg.num_actions)
        ):
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
        prev_tokens_BHW: Tensor | None = None,
        select_BTS: Tensor | None = None,
    ) -> Tensor:
        """Logits of every token given the (masked) clip (with ``select_BTS`` of those tokens only, ``logits_NV``:
        see :meth:`forward_ids`). With a copy head they are log-probabilities; the
        copy source of frame t is frame t-1 as given (unmasked), i.e. the past as it is at generation time.
        Continuing from a ``cache``, a copy-head model needs ``prev_tokens_BHW``, the frame before these."""
        b, t, h, w = tokens_BTHW.shape
        if (h, w) != self.cfg.hw:
            raise ValueError(f"expected a {self.cfg.hw} token grid per frame, got {(h, w)}")
        clean_BTS = tokens_BTHW.reshape(b, t, h * w)
        ids_BTS = clean_BTS.masked_fill(mask_BTS, self.mask_id) if mask_BTS is not None else clean_BTS
        t0 = cache.position if cache is not None else 0
        prev_BTS = None
        if self.copy_head is not None:
            if t0 > 0 and prev_tokens_BHW is None:
                raise ValueError(
                    "a copy-head model continuing from a cache needs prev_tokens_BHW (the last frame)"
                )
            # the clip's first frame (never scored) copies itself
            first = prev_tokens_BHW.reshape(b, 1, h * w) if t0 > 0 else clean_BTS[:, :1]  # type: ignore[union-attr]
            prev_BTS = torch.cat((first, clean_BTS[:, :-1]), 1)
        return self.forward_ids(
            ids_BTS,
            self.frame_actions(actions_BT1, b, t, t0),
            cache,
            write_cache,
            prev_BTS,
            select_BTS=select_BTS,
        )

    def forward_ids(
        self,
        ids_BTS: Tensor,
        frame_actions_BT: Tensor,
        cache: KVCache | None = None,
        write_cache: bool = False,
        prev_ids_BTS: Tensor | None = None,
        positions_BM: Tensor | None = None,
        select_BTS: Tensor | None = None,
    ) -> Tensor:
        """Low-level forward: token ids (``mask_id`` where masked) and each frame's conditioning action id
        (``num_actions`` = "no action yet"), as :meth:`frame_actions` builds them. ``prev_ids_BTS``: each
        frame's previous frame (the copy head's source; without it the copy head is left out).

        Returns ``logits_BTSV``. The output head and copy mixture can run on some tokens alone: with
        ``positions_BM`` the last frame's tokens at those positions (``logits_BMV``: MaskGIT sampling needs
        the still-masked ones only), with ``select_BTS`` the tokens where it is True (``logits_NV`` in
        row-major order: training scores the masked ones only)."""
        x_BTSD = self._hidden(ids_BTS, frame_actions_BT, cache, write_cache)
        if positions_BM is not None:
            b = positions_BM.shape[0]
            rows_B1 = torch.arange(b, device=positions_BM.device)[:, None]
            x = x_BTSD[:, -1][rows_B1, positions_BM]  # BMD (indexing copies whole rows: 3x a gather's speed)
        elif select_BTS is not None:
            x = x_BTSD[select_BTS]  # ND
        else:
            x = x_BTSD
        logits = self.head(x)
        if self.copy_head is None or prev_ids_BTS is None:
            return logits
        src = self.copy_head.sources(prev_ids_BTS, positions_BM, select_BTS)
        return self.copy_head.mix(logits, self.copy_head(x), src)

    def _hidden(
        self, ids_BTS: Tensor, frame_actions_BT: Tensor, cache: KVCache | None, write_cache: bool
    ) -> Tensor:
        """The transformer's output at the grid tokens (the action prefix dropped), ``x_BTSD``."""
        x_BTSD = self.token_embed(ids_BTS)
        act_BTD = self.action_embed(frame_actions_BT)
        if self.cfg.action_mode == "add":
            x_BTSD = x_BTSD + act_BTD[:, :, None]
        else:
            x_BTSD = torch.cat((act_BTD[:, :, None], x_BTSD), dim=2)
        out: Tensor = self.transformer(
            x_BTSD, self.cfg.hw, cache=cache, write_cache=write_cache, prefix=self.prefix
        )
        return out[:, :, self.prefix :]

    def extend_cache(self, ids_BTS: Tensor, frame_actions_BT: Tensor, cache: KVCache) -> None:
        """Append these frames (token ids, each frame's conditioning action id as :meth:`forward_ids` takes
        them) to ``cache`` as context: their keys/values, without the output head (generation commits each
        finished frame this way; its logits would go unused)."""
        self._hidden(ids_BTS, frame_actions_BT, cache, write_cache=True)

    def random_mask(self, b: int, t: int, generator: torch.Generator | None = None) -> Tensor:
        """MaskGIT training mask ``mask_BTS``: per example a rate ~ U(lo, hi) over frames 2..T; frame 1 never.
        With ``full_mask_prob`` > 0, each frame 2..T is instead masked whole with that probability."""
        s = self.cfg.hw[0] * self.cfg.hw[1]
        device = self.token_embed.weight.device
        lo, hi = self.cfg.mask_rate
        rate_B = lo + (hi - lo) * uniform((b,), generator, device)
        mask = uniform((b, t, s), generator, device) < rate_B[:, None, None]
        if self.cfg.aids.full_mask_prob > 0:
            whole_BT = uniform((b, t), generator, device) < self.cfg.aids.full_mask_prob
            mask |= whole_BT[:, :, None]
        mask[:, 0] = False
        return mask

    def loss(
        self, tokens_BTHW: Tensor, actions_BT1: Tensor | None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Cross-entropy on the masked positions; returns (loss, token accuracy there, mask_BTS).

        The output head (and copy mixture) runs on the masked tokens alone - on XLA on every token, weighted
        by the mask, so that one compiled graph serves every step."""
        b, t = tokens_BTHW.shape[:2]
        mask = self.random_mask(b, t, generator)
        targets = tokens_BTHW.reshape(b, t, -1)
        if static_shapes(tokens_BTHW):
            logits = self(tokens_BTHW, actions_BT1, mask)
            hits = ((logits.argmax(-1) == targets) & mask).sum()
            acc = hits.float() / mask.sum().clamp_min(1).float()
            return masked_cross_entropy(logits, targets, mask), acc.detach(), mask
        logits_NV = self(tokens_BTHW, actions_BT1, mask, select_BTS=mask)
        targets_N = targets[mask]
        if targets_N.numel() == 0:  # nothing masked: 0, with a gradient path
            return logits_NV.sum() * 0, logits_NV.new_zeros(()), mask
        loss = F.cross_entropy(logits_NV.float(), targets_N)
        acc = (logits_NV.detach().argmax(-1) == targets_N).float().mean()
        return loss, acc, mask

    @torch.no_grad()
    def generate(
        self,
        prompt_tokens_BTHW: Tensor,
        actions_BN: Tensor,
        prompt_actions_BT1: Tensor | None = None,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Roll out ``N`` new frames after a prompt: returns ``tokens_B(T+N)HW`` (prompt included).

        ``actions_BN[:, i]`` produces new frame i; ``prompt_actions_BT1`` are the T-1 actions between the
        prompt's frames (required when the prompt has more than one frame).
        """
        rollout = Rollout(self, sampling)
        rollout.start(prompt_tokens_BTHW, prompt_actions_BT1)
        for i in range(actions_BN.shape[1]):
            rollout.step(actions_BN[:, i], generator=generator)
        return rollout.tokens


def masked_cross_entropy(logits_BTSV: Tensor, targets_BTS: Tensor, mask_BTS: Tensor) -> Tensor:
    """Mean cross-entropy over the masked positions in static shapes - every position, weighted by the mask
    (0 when none is masked) - so that one compiled graph serves every step on XLA."""
    ce = F.cross_entropy(logits_BTSV.flatten(0, 2).float(), targets_BTS.flatten(), reduction="none")
    weight = mask_BTS.flatten().to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1.0)
