"""Latent action model (Genie §2.1): a VQ-VAE whose codes are the actions between frames.

The encoder sees the frames x_1..x_T (causal ST-Transformer with one extra "action" token per frame); the
action token of frame t+1 — which has seen x_1..x_{t+1} — becomes the continuous latent of the transition
t → t+1, quantised to one of |A| codes (8 in the paper). The decoder sees only x_1..x_t plus the quantised
a_t (added to every token of frame t) and predicts x_{t+1}; since it cannot see x_{t+1}, everything that
changed has to pass through the small action codebook. Pixel input in [0, 1] and a sigmoid output are the
paper's default; ``input="tokens"`` is the Tab. 2 ablation (tokenizer ids in, next-frame ids out).

Collapse (all transitions mapped to one or two codes) is the commonest failure of public reimplementations.
Guards here: l2-normalised codes (cosine look-up), a small latent dim, codes initialised from data and
restarted after ``dead_code_steps`` unused steps, per-code usage reported on every call, and optionally
``aids.decoder_mask_rate`` (randomly hide context patches from the decoder so it must rely on the action) or
``aids.decoder_anchor`` (the decoder sees the first frame of its context only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genie.models.aids import (
    FlowInput,
    LAMAids,
    MotionInput,
    VQWarmup,
    WarpHead,
    as_aids,
    extrapolate_motion,
    global_shift,
    latent_norm_loss,
    translate,
)
from genie.models.common import PatchGeometry
from genie.nn import (
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

if TYPE_CHECKING:
    from genie.models.tokenizer import VideoTokenizer

LAMInput = Literal["pixels", "tokens"]


@dataclass
class LAMConfig(PatchGeometry):
    """Paper defaults: patch 16, |A| = 8, latent 32, encoder and decoder 20 layers × d 1024 × 16 heads.

    With two attentions per ST block these dims alone exceed the nominal 300M (docs/training.md: ``lam_300m``).
    """

    image_size: Sequence[int] = (90, 160)  # (H, W)
    channels: int = 3
    patch: int = 16
    num_actions: int = 8
    latent_dim: int = 32
    input: LAMInput = "pixels"
    # input="tokens": the tokenizer's vocabulary and token grid per frame; None (the null of
    # conf/model/lam_model/paper.yaml) is "not given": genie.train takes them from the tokenizer, and pixel input
    # keeps these defaults, unused
    token_vocab: int = 1024
    token_grid: Sequence[int] = (23, 40)
    encoder: STConfig | dict[str, Any] = field(
        default_factory=lambda: STConfig(dim=1024, depth=20, num_heads=16, mlp_ratio=0.4)
    )
    decoder: STConfig | dict[str, Any] = field(
        default_factory=lambda: STConfig(dim=1024, depth=20, num_heads=16, mlp_ratio=0.4)
    )
    vq: VQConfig = field(default_factory=lambda: VQConfig(l2_normalize=True))  # a mapping is taken too
    # Aids outside the paper (genie.models.aids; all off by default): residual prediction, the motion input,
    # short windows, the decoder's shift head, the VQ warm-up, the reconstruction weight, decoder masking, the
    # latent-norm term.
    aids: LAMAids = field(default_factory=LAMAids)  # a mapping is taken too

    def __post_init__(self) -> None:
        self.image_size = size_pair(self.image_size, "LAM image_size")
        if self.token_vocab is None or self.token_grid is None:
            if self.input == "tokens":
                raise ValueError(
                    "a token-input LAM needs token_vocab and token_grid, its tokenizer's (genie.train takes them "
                    "from model.tokenizer_ckpt when null)"
                )
            self.token_vocab, self.token_grid = LAMConfig.token_vocab, LAMConfig.token_grid  # the defaults
        self.token_grid = size_pair(self.token_grid, "LAM token_grid")
        self.encoder = as_st_config(self.encoder)
        self.decoder = as_st_config(self.decoder)
        self.vq = as_vq_config(self.vq, l2_normalize=True)
        self.aids = as_aids(LAMAids, self.aids)
        if self.input not in ("pixels", "tokens"):
            raise ValueError(f"LAM input must be 'pixels' or 'tokens', got {self.input!r}")
        for name, st in (("encoder", self.enc), ("decoder", self.dec)):
            if not st.causal or st.attention == "spatial":
                raise ValueError(
                    f"the LAM {name} must mix time causally (attention st or full, causal=true): "
                    "otherwise frame t would see x_t+1"
                )
        if self.input != "pixels" and (
            self.aids.warp_radius > 0
            or self.aids.motion_input
            or self.aids.extrapolate_motion
            or self.aids.target_motion
        ):
            raise ValueError(
                "LAM aids.warp_radius > 0, aids.motion_input, aids.extrapolate_motion and aids.target_motion "
                "need pixel input"
            )
        if self.aids.latent_norm_weight > 0 and (self.vq.kind != "vq" or not self.vq.l2_normalize):
            raise ValueError(
                "LAM aids.latent_norm_weight > 0 needs the cosine look-up (vq.kind=vq, vq.l2_normalize=true): "
                "without it the latent's norm is not free"
            )

    @property
    def grid(self) -> tuple[int, int]:
        if self.input == "tokens":
            return int(self.token_grid[0]), int(self.token_grid[1])
        return self.patch_grid

    def num_params(self) -> int:
        """Closed form (equals ``sum(p.numel())`` of :class:`LatentActionModel`)."""
        de, dd, a = self.enc.dim, self.dec.dim, self.latent_dim
        if self.input == "pixels":
            pd = self.channels * self.patch**2
            embeds = (pd + 1) * de + (pd + 1) * dd  # encoder and decoder patch embeddings
            head = (dd + 1) * pd
        else:
            embeds = self.token_vocab * de + self.token_vocab * dd
            head = dd * self.token_vocab
        return (
            self.enc.num_params()
            + self.dec.num_params()
            + embeds
            + de  # the action query token
            + (de + 1) * a  # to latent
            + (self.num_actions * a if self.vq.kind == "vq" else 0)  # codebook (fsq has none)
            + (a + 1) * dd  # latent to decoder
            + (dd if self.aids.hides_context else 0)  # decoder mask token
            + ((self.channels * self.patch**2 + 1) * de if self.aids.motion_input else 0)
            + ((2 * self.channels * self.patch**2 + 1) * de if self.aids.flow_input else 0)
            + head
            + ((dd + 1) * 2 * (2 * self.aids.warp_radius + 1) if self.aids.warp_radius > 0 else 0)
        )


@dataclass
class LAMOutput:
    pred: Tensor  # pixels: next frames video_B(T-1)CHW in [0, 1]; tokens: logits_B(T-1)SV
    actions: Tensor  # actions_B(T-1) long: the code of each transition
    vq: QuantizerOutput
    loss: Tensor  # reconstruction + VQ (+ the latent-norm aid's term)
    recon_loss: Tensor
    latent_norm: Tensor  # mean length of the encoder's raw latents (no gradient; aids.latent_norm_weight)


class LatentActionModel(nn.Module):
    """``out = lam(x)`` with ``x = video_BTCHW`` in [0, 1] (or ``tokens_BTHW`` for ``input="tokens"``)."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        de, dd = cfg.enc.dim, cfg.dec.dim
        aids = cfg.aids
        if cfg.input == "pixels":
            pd = cfg.channels * cfg.patch**2
            self.enc_embed: nn.Module = nn.Linear(pd, de)
            self.dec_embed: nn.Module = nn.Linear(pd, dd)
            self.head = nn.Linear(dd, pd)
        else:
            self.enc_embed = nn.Embedding(cfg.token_vocab, de)
            self.dec_embed = nn.Embedding(cfg.token_vocab, dd)
            self.head = nn.Linear(dd, cfg.token_vocab, bias=False)
        self.action_query = nn.Parameter(torch.randn(de) * 0.02)
        self.motion_embed: MotionInput | None = None
        if aids.motion_input:
            self.motion_embed = MotionInput(cfg.channels * cfg.patch**2, de)
        self.flow_embed = FlowInput(2 * cfg.channels * cfg.patch**2, de) if aids.flow_input else None
        self.encoder = STTransformer(cfg.enc)
        self.to_latent = nn.Linear(de, cfg.latent_dim)
        self.vq_warmup = VQWarmup(aids.vq_warmup_steps) if aids.vq_warmup_steps > 0 else None
        self.quantizer = quantizer_from_config(cfg.num_actions, cfg.latent_dim, cfg.vq)
        self.from_latent = nn.Linear(cfg.latent_dim, dd)
        # A learned stand-in for hidden context patches (only where aids.hides_context, so that DDP never sees an
        # unused parameter).
        self.dec_mask = nn.Parameter(torch.zeros(dd)) if aids.hides_context else None
        self.decoder = STTransformer(cfg.dec)
        self.warp_head = (
            WarpHead(dd, aids.warp_radius, aids.warp_stride, cfg.patch, cfg.grid, cfg.hw)
            if aids.warp_radius > 0
            else None
        )
        if aids.predict_residual and cfg.input == "pixels":
            # Start as "the next frame equals the last one": random initial changes would first have to be
            # unlearned, and in short runs the decoder never gets past that to learning what the action does.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # -- inputs ---------------------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        cfg = self.cfg
        if cfg.input == "pixels":
            h, w = cfg.hw
            if x.ndim != 5 or x.shape[2] != cfg.channels or tuple(x.shape[-2:]) != (h, w):
                raise ValueError(
                    f"LAM expects video (B, T, {cfg.channels}, {h}, {w}) in [0, 1], got {tuple(x.shape)}; "
                    "resize frames to the model's image_size"
                )
        elif x.ndim != 4 or tuple(x.shape[-2:]) != cfg.grid:
            raise ValueError(
                f"token-input LAM expects tokens (B, T, {cfg.grid[0]}, {cfg.grid[1]}), got {tuple(x.shape)}"
            )
        if x.shape[1] < 2:
            raise ValueError(f"the LAM needs at least 2 frames (one transition), got {x.shape[1]}")

    def _patches(self, x: Tensor) -> Tensor:
        """Per-frame inputs: ``patches_BTSP`` (pixels, P = C·patch²) or ``ids_BTS`` (tokens)."""
        cfg = self.cfg
        if cfg.input == "tokens":
            return x.flatten(2).long()
        return patchify(cfg.pad(x), cfg.patch)

    # -- windows --------------------------------------------------------------------------------------
    def _windows(self, x: Tensor, size: int) -> tuple[Tensor, int]:
        """Overlapping windows of ``size`` frames along axis 1: ``(B·n, size, ...)`` and n."""
        t = x.shape[1]
        if t <= size:
            return x, 1
        idx = torch.arange(t - size + 1, device=x.device)[:, None] + torch.arange(size, device=x.device)[None]
        return x[:, idx].flatten(0, 1), t - size + 1

    @staticmethod
    def _gather(y: Tensor, b: int, n: int) -> Tensor:
        """Per-window results ``(B·n, w-1, ...)`` → per transition ``(B, T-1, ...)``: all of the first window,
        then the last transition of each later window."""
        if n == 1:
            return y
        y = y.unflatten(0, (b, n))
        return torch.cat((y[:, 0], y[:, 1:, -1]), dim=1)

    # -- encoder --------------------------------------------------------------------------------------
    def encode_latents(self, x: Tensor) -> Tensor:
        """Continuous per-transition latents ``z_B(T-1)A`` (before quantisation)."""
        self._check(x)
        b = x.shape[0]
        n = 1
        window = self.cfg.aids.window
        if window is not None:
            x, n = self._windows(x, window)
        return self._gather(self._encode(x), b, n)

    def _encode(self, x: Tensor) -> Tensor:
        patches = self._patches(x)
        h_BTSD = self.enc_embed(patches)
        if self.motion_embed is not None:
            h_BTSD = h_BTSD + self.motion_embed.embed(patches)
        if self.flow_embed is not None:
            along_x, along_y = self.flow_embed.maps(x)
            h_BTSD = h_BTSD + self.flow_embed(torch.cat((self._patches(along_x), self._patches(along_y)), -1))
        b, t = h_BTSD.shape[:2]
        query = self.action_query.to(h_BTSD.dtype).expand(b, t, 1, -1)
        h_BTSD = self.encoder(torch.cat((query, h_BTSD), dim=2), self.cfg.grid, prefix=1)
        out_BTD = h_BTSD[:, 1:, 0]  # the action token of frame t+1 has seen x_1..x_t+1
        if self.motion_embed is not None:
            out_BTD = out_BTD + h_BTSD[:, 1:, 1:].mean(2)
        return self.to_latent(out_BTD)

    def quantize(self, x: Tensor) -> QuantizerOutput:
        return self.quantizer(self.encode_latents(x))

    @property
    def reads_tokens(self) -> bool:
        """Whether the LAM reads tokenizer ids (``input="tokens"``, the Tab. 2 ablation) instead of pixels."""
        return self.cfg.input == "tokens"

    @torch.no_grad()
    def infer_actions(self, x: Tensor, tokenizer: VideoTokenizer | None = None) -> Tensor:
        """The latent action id of every transition: ``actions_B(T-1)``.

        ``x``: what the LAM reads, the clip's pixels or (``input="tokens"``) its tokenizer ids. A token-input LAM
        also takes the pixels together with ``tokenizer``, the one whose ids it was trained on
        (:func:`genie.models.io.load_lam` returns it with the LAM).
        """
        if self.reads_tokens and x.is_floating_point():
            if tokenizer is None:
                raise ValueError(
                    "this LAM reads tokenizer ids (input=tokens): pass the clip's tokens, or its pixels with "
                    "tokenizer= the tokenizer it was trained on (genie.models.io.load_lam returns both)"
                )
            x = tokenizer.encode(x)
        was_training = self.training
        self.eval()
        try:
            return self.quantize(x).indices
        finally:
            self.train(was_training)

    # -- decoder --------------------------------------------------------------------------------------
    def decode(
        self, context: Tensor, actions_z: Tensor, mask_rate: float = 0.0, motion: Tensor | None = None
    ) -> Tensor:
        """Predict frames 2..T from frames 1..T-1 (``context``) and the action vectors ``actions_z_B(T-1)A``.

        ``pred[:, t]`` is the guess of the frame after ``context[:, t]`` and depends only on
        ``context[:, :t+1]`` and ``actions_z[:, :t+1]`` (the decoder is causal in time). ``motion_B(T-1)2``
        (``aids.target_motion``): each transition's global shift, by which the base frame is moved.
        Pixels: ``video_B(T-1)CHW`` in [0, 1]; tokens: ``logits_B(T-1)SV``.
        """
        cfg = self.cfg
        window = cfg.aids.window
        if window is not None and context.shape[1] > window - 1:
            b = context.shape[0]
            ctx, n = self._windows(context, window - 1)
            z, _ = self._windows(actions_z, window - 1)
            m = None if motion is None else self._windows(motion, window - 1)[0]
            return self._gather(self._decode(ctx, z, mask_rate, m), b, n)
        return self._decode(context, actions_z, mask_rate, motion)

    def _decode(self, context: Tensor, actions_z: Tensor, mask_rate: float, motion: Tensor | None) -> Tensor:
        cfg = self.cfg
        h_BTSD = self.dec_embed(self._patches(context))
        if mask_rate > 0 and self.dec_mask is not None:
            hide = torch.rand(h_BTSD.shape[:3], device=h_BTSD.device) < mask_rate
            h_BTSD = torch.where(hide[..., None], self.dec_mask.to(h_BTSD.dtype), h_BTSD)
        if cfg.aids.decoder_anchor and self.dec_mask is not None:
            # every context frame after the first (the anchor) hidden
            later = self.dec_mask.to(h_BTSD.dtype).expand_as(h_BTSD[:, 1:])
            h_BTSD = torch.cat((h_BTSD[:, :1], later), dim=1)
        h_BTSD = h_BTSD + self.from_latent(actions_z)[:, :, None]
        h_BTSD = self.decoder(h_BTSD, cfg.grid)
        out = self.head(h_BTSD)
        if cfg.input == "tokens":
            return out
        logits = unpatchify(out, cfg.patch, cfg.grid, cfg.channels)
        h, w = cfg.hw
        logits = logits[..., :h, :w]
        if cfg.aids.predict_residual:
            if cfg.aids.decoder_anchor:
                base = context[:, :1].expand_as(context)
            elif motion is not None:
                base = translate(context, motion)
            elif cfg.aids.extrapolate_motion:
                base = extrapolate_motion(context)
            else:
                base = context
            base = base if self.warp_head is None else self.warp_head.warp(base, h_BTSD)
            logits = logits + torch.logit(base.to(logits.dtype).clamp(1e-3, 1 - 1e-3))
        return torch.sigmoid(logits)

    def forward(self, x: Tensor) -> LAMOutput:
        z = self.encode_latents(x)
        vq = self.quantizer(z)
        rate = self.cfg.aids.decoder_mask_rate if self.training else 0.0
        if self.vq_warmup is not None and self.vq_warmup.active:
            latent = self.quantizer.relax(z)
            vq_loss = vq.codebook_loss  # codes follow the latents; nothing pulls the latents to the codes yet
        else:
            latent, vq_loss = vq.z_q, vq.loss
        if self.vq_warmup is not None:
            self.vq_warmup.step()
        motion = global_shift(x[:, :-1], x[:, 1:]) if self.cfg.aids.target_motion else None
        pred = self.decode(x[:, :-1], latent, rate, motion)
        target = x[:, 1:]
        if self.cfg.input == "tokens":
            recon = F.cross_entropy(pred.flatten(0, 2).float(), target.flatten().long())
        else:
            recon = F.mse_loss(pred.float(), target.float())
        loss = self.cfg.aids.recon_weight * recon + vq_loss
        if self.cfg.aids.latent_norm_weight > 0 and self.training:
            loss = loss + self.cfg.aids.latent_norm_weight * latent_norm_loss(z)
        latent_norm = z.detach().float().norm(dim=-1).mean()
        return LAMOutput(
            pred=pred, actions=vq.indices, vq=vq, loss=loss, recon_loss=recon, latent_norm=latent_norm
        )
