"""Genie: the playable world model — tokenizer + dynamics (+ the latent action model) in pure torch.

    genie = Genie.from_checkpoints("outputs/dynamics_tiny/<run>/checkpoints/last.ckpt")
    frame = genie.reset(image)          # a single prompt image (H×W×3 uint8, or a [0, 1] tensor)
    frame = genie.step(3)               # latent action id in [0, num_actions)
    video = genie.rollout([0, 3, 3, 5]) # more steps; returns the session's frames so far

The prompt is tokenized, the dynamics model samples each next frame's tokens with MaskGIT (reusing the past
frames' keys/values), and the tokenizer's causal decoder turns them into pixels, also frame by frame. The model
remembers the last ``sampling.context_frames`` frames (16, as in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genie.models.dynamics import DynamicsModel
from genie.models.lam import LatentActionModel
from genie.models.sampling import Rollout, SamplingConfig, action_ids, seeded_generator
from genie.models.tokenizer import VideoTokenizer
from genie.nn import KVCache
from genie.nn.graph import CapturedStep


class Genie(nn.Module):
    def __init__(
        self,
        tokenizer: VideoTokenizer,
        dynamics: DynamicsModel,
        lam: LatentActionModel | None = None,
        sampling: SamplingConfig | None = None,
    ) -> None:
        super().__init__()
        tc, dc = tokenizer.cfg, dynamics.cfg
        if dc.num_codes != tc.num_codes or tuple(dc.grid) != tuple(tc.grid):
            raise ValueError(
                f"dynamics expects {dc.num_codes} codes on a {tuple(dc.grid)} grid but the tokenizer has "
                f"{tc.num_codes} codes on {tuple(tc.grid)}; pair the dynamics with the tokenizer it was trained on"
            )
        if lam is not None and lam.cfg.num_actions != dc.num_actions:
            raise ValueError(
                f"the LAM has {lam.cfg.num_actions} actions but the dynamics model {dc.num_actions}; "
                "pair the dynamics with the LAM it was trained on"
            )
        self.tokenizer = tokenizer.eval()
        self.dynamics = dynamics.eval()
        self.lam = lam.eval() if lam is not None else None
        self.sampling = sampling or SamplingConfig()
        self._rollout: Rollout | None = None
        self._decoder_cache: KVCache | None = None
        self._decode_step: CapturedStep | None = None  # the full-window decode (sampling.cuda_graph)
        self._decode_tokens: Tensor | None = None
        self._frames: list[Tensor] = []
        self._generator: torch.Generator | None = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_checkpoints(
        cls,
        dynamics: str | Path,
        tokenizer: str | Path | None = None,
        lam: str | Path | None = None,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> Genie:
        """Load from stage checkpoints; a dynamics checkpoint already carries its tokenizer and LAM."""
        from genie.models.io import checkpoint_components

        parts, saved = checkpoint_components(dynamics, tokenizer, lam)
        return cls._from_parts(parts, sampling if sampling is not None else saved, str(dynamics), device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> Genie:
        """Load a folder written by ``tools/export.py`` (``model.safetensors`` + ``config.yaml``): no pickles,
        no Lightning, no Hydra."""
        from genie.models.io import load_pretrained

        parts, saved = load_pretrained(path)
        return cls._from_parts(parts, sampling if sampling is not None else saved, str(path), device)

    @classmethod
    def _from_parts(
        cls, parts: dict[str, nn.Module], sampling: Any, source: str, device: str | torch.device
    ) -> Genie:
        tok, dyn, lam_model = parts.get("tokenizer"), parts.get("dynamics"), parts.get("lam")
        if not isinstance(tok, VideoTokenizer) or not isinstance(dyn, DynamicsModel):
            raise ValueError(
                f"{source} holds {sorted(parts)}; a playable Genie needs a tokenizer and a dynamics model"
            )
        assert lam_model is None or isinstance(lam_model, LatentActionModel)
        if isinstance(sampling, dict):
            sampling = SamplingConfig(**sampling)
        return cls(tok, dyn, lam_model, sampling).to(device)

    # -- properties -----------------------------------------------------------------------------------
    @property
    def num_actions(self) -> int:
        return int(self.dynamics.cfg.num_actions)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.tokenizer.cfg.hw

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def frames(self) -> Tensor:
        """The session so far as ``video_BTCHW`` in [0, 1] (prompt reconstruction + generated frames)."""
        if not self._frames:
            raise RuntimeError("no session yet: call reset(prompt) first")
        return torch.stack(self._frames, 1)

    # -- inputs ---------------------------------------------------------------------------------------
    def to_video(self, prompt: Any) -> Tensor:
        """Prompt image(s) → ``video_BTCHW`` float in [0, 1] on the model's device, with clear errors.

        Accepts an H×W×C array / PIL image (uint8 or float), or tensors (C,H,W), (T,C,H,W), (B,T,C,H,W).
        """
        if isinstance(prompt, Tensor):
            x = prompt
            channels_last = False
        else:
            arr = np.asarray(prompt)
            if arr.dtype == object:
                raise ValueError(f"cannot read a prompt of type {type(prompt).__name__}; pass an image array")
            x = torch.from_numpy(np.array(arr))  # a copy: inputs may be read-only
            channels_last = x.ndim >= 3
        if not x.is_floating_point():
            x = x.float() / 255.0
        if channels_last:  # numpy/PIL images are H×W×C (or T×H×W×C)
            x = x.movedim(-1, -3)
        if x.ndim == 2:
            x = x[None]
        while x.ndim < 5:
            x = x[None]
        if x.ndim != 5:
            raise ValueError(
                f"prompt must be an image or a (B, T, C, H, W) video, got shape {tuple(x.shape)}"
            )
        c, (h, w) = self.tokenizer.cfg.channels, self.image_size
        if x.shape[2] != c:
            raise ValueError(
                f"prompt has {x.shape[2]} channels but the model takes {c}; convert it (e.g. to RGB)"
            )
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(
                f"prompt frames are {x.shape[-2]}x{x.shape[-1]} (HxW) but the model takes {h}x{w}; "
                "resize/crop them first (genie.data.pipeline.resize_crop, or genie.generate which does it)"
            )
        if x.min() < 0 or x.max() > 1:
            raise ValueError("prompt values must be in [0, 1] (floats) or 0..255 (uint8)")
        return x.to(self.device)

    def _actions(self, action: Any, batch: int) -> Tensor:
        a = action_ids(action, self.device).reshape(-1)
        if a.numel() == 1 and batch > 1:
            a = a.expand(batch)
        if a.numel() != batch:
            raise ValueError(f"expected {batch} action ids (one per world), got {a.numel()}")
        if a.min() < 0 or a.max() >= self.num_actions:
            raise ValueError(f"action ids must be in [0, {self.num_actions}), got {a.tolist()}")
        return a

    # -- play -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def infer_actions(self, video: Any) -> Tensor:
        """Latent actions between consecutive frames of a real clip (needs the LAM): ``actions_B(T-1)``."""
        if self.lam is None:
            raise RuntimeError("this Genie has no latent action model; load it with lam=... to infer actions")
        return self.lam.infer_actions(self.to_video(video), tokenizer=self.tokenizer)

    def _decode(self, tokens_BTHW: Tensor, steady: bool = True) -> Tensor:
        """Pixels of new frames; ``steady=False`` for a one-off shape (the prompt), never compiled."""
        window = self.sampling.context_frames
        rollout, cache = self._rollout, self._decoder_cache
        assert rollout is not None
        if cache is None:  # learned frame positions: decode the window each time
            with rollout.compiled(steady and len(rollout.frames) >= window):
                return self.tokenizer.decode(rollout.tokens[:, -window:])[:, -tokens_BTHW.shape[1] :]
        full = cache.frames == cache.max_frames
        with rollout.compiled(steady and full):
            if not (steady and full and self.sampling.cuda_graph and tokens_BTHW.shape[1] == 1):
                return self.tokenizer.decode(tokens_BTHW, cache)
            # a full window: one frame at a time through a CapturedStep (a CUDA graph on a GPU)
            if self._decode_step is None:
                static = self._decode_tokens = tokens_BTHW.clone()
                self._decode_step = CapturedStep(
                    lambda: self.tokenizer.decode(static, cache), [cache], tokens_BTHW.device
                )
            assert self._decode_tokens is not None
            self._decode_tokens.copy_(tokens_BTHW)
            return self._decode_step().clone()

    @torch.no_grad()
    def reset(self, prompt: Any, actions: Any = None, seed: int | None = None) -> Tensor:
        """Start a session from a prompt image (or frames); returns the current frame ``frame_BCHW``.

        For a multi-frame prompt the actions between its frames are ``actions`` (B, T-1) or inferred by the LAM.
        ``seed`` makes the following steps reproducible. (The prompt is tokenized in fp32 whatever
        ``sampling.precision``: that precision is for the dynamics and the decoder.)
        """
        video = self.to_video(prompt)
        b, t = video.shape[:2]
        prompt_actions = None
        if t > 1:
            prompt_actions = (
                action_ids(actions, self.device).reshape(b, t - 1)
                if actions is not None
                else self.infer_actions(video)
            )
        tokens = self.tokenizer.encode(video)
        self._rollout = Rollout(self.dynamics, self.sampling)
        self._rollout.compile_targets.append(self.tokenizer.decoder)  # compiled with the dynamics, if ever
        self._rollout.start(tokens, prompt_actions)
        dec = self.tokenizer.cfg.dec
        # the decoder's window is the dynamics model's: context_frames - 1 past frames and the new one
        window = self.sampling.context_frames - 1
        self._decoder_cache = None if dec.pos_emb == "learned" else KVCache(window)
        self._decode_step = None
        self._generator = None
        if seed is not None:
            self._generator = seeded_generator(self.device, seed)
        with self.sampling.autocast(self.device):
            self._frames = list(self._decode(tokens, steady=False).float().unbind(1))
        return self._frames[-1]

    @torch.no_grad()
    def step(self, action: int | Sequence[int] | Tensor) -> Tensor:
        """Advance every world by one latent action; returns the new frame ``frame_BCHW`` in [0, 1]."""
        if self._rollout is None:
            raise RuntimeError("call reset(prompt) before step(action)")
        b = self._frames[0].shape[0]
        tokens = self._rollout.step(self._actions(action, b), self._generator)
        with self.sampling.autocast(self.device):
            frame = self._decode(tokens[:, None])[:, 0].float()
        self._frames.append(frame)
        return frame

    @torch.no_grad()
    def rollout(self, actions: Any, prompt: Any = None, seed: int | None = None) -> Tensor:
        """Take a sequence of actions (``(N,)`` shared by all worlds or ``(B, N)``); returns the whole session
        ``video_BTCHW``. With ``prompt`` a new session starts first."""
        if prompt is not None:
            self.reset(prompt, seed=seed)
        if self._rollout is None:
            raise RuntimeError("call reset(prompt) first or pass prompt=")
        acts = action_ids(actions)
        acts = acts[None] if acts.ndim == 1 else acts
        b = self._frames[0].shape[0]
        if acts.shape[0] == 1 and b > 1:
            acts = acts.expand(b, -1)
        for i in range(acts.shape[1]):
            self.step(acts[:, i])
        return self.frames
