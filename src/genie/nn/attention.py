"""Multi-head self-attention on PyTorch SDPA, with QK-norm and rotary positions (Genie §2.1)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genie.nn.embed import apply_rope

Rope = tuple[Tensor, Tensor]
KV = tuple[Tensor, Tensor]


class KVCache:
    """Keys/values of past frames for every layer's time-mixing attention, so a new frame costs one frame.

    Each layer's keys and values live in one preallocated buffer (``k_BHPK``, P = frames · keys per frame:
    1 for temporal attention, H·W for full attention). A call writes its frames' keys/values into the slots
    after the cached ones and attends over the filled part - no copy of the past per call; only
    :meth:`advance` makes them part of the cache (so MaskGIT can run many passes over the same new frame).
    ``position`` is the absolute index of the next frame (rotary positions keep counting when the window
    slides); ``max_frames`` keeps only the most recent frames (the model's memory). A bounded cache's buffer
    holds ``max_frames + 1`` frames however it was first filled, so every full-window step has the same
    shapes (what a compiled step needs) and, once the window is full, the same memory: such steps can be
    captured as a CUDA graph, reading the position from :meth:`position_tensor` (a device tensor that
    :meth:`advance` updates in place) instead of baking it in.
    """

    def __init__(self, max_frames: int | None = None) -> None:
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 (or None: unbounded), got {max_frames}")
        self.max_frames = max_frames
        self.position = 0
        self.frames = 0
        self._keys: list[Tensor] = []
        self._values: list[Tensor] = []
        self._per_frame: list[int] = []  # keys per frame of each layer
        self._position_t: Tensor | None = None  # ``position`` on the device (see position_tensor)

    def position_tensor(self, device: torch.device) -> Tensor:
        """``position`` as a 0-d long tensor on ``device``, the same tensor from call to call (updated in place
        by :meth:`advance`): position tables computed from it stay right when a step is replayed."""
        t = self._position_t
        if t is None or t.device != device:
            t = self._position_t = torch.tensor(self.position, dtype=torch.long, device=device)
        return t

    @property
    def layers(self) -> list[KV]:
        """The cached (k, v) of each layer (views of the buffers)."""
        return [
            (k[:, :, : self.frames * u], v[:, :, : self.frames * u])
            for k, v, u in zip(self._keys, self._values, self._per_frame, strict=True)
        ]

    def layer(self, index: int) -> KVCacheLayer:
        """Layer ``index``'s view, holding that layer's buffers where they exist already."""
        if index < len(self._keys):
            return KVCacheLayer(self, index, self._keys[index], self._values[index])
        return KVCacheLayer(self, index)

    def extend(self, layer: int, k_new: Tensor, v_new: Tensor, frames: int) -> KV:
        """Write ``frames`` new frames' keys/values of ``layer`` after the cached ones (not yet committed);
        returns the keys/values to attend over: the cached frames' followed by the new ones."""
        return self.layer(layer).extend(k_new, v_new, frames)

    def _buffers(self, layer: int, k_new: Tensor, v_new: Tensor, frames: int) -> tuple[Tensor, Tensor]:
        """``layer``'s buffers, allocated (or grown, keeping what is cached) to hold ``frames`` more frames."""
        per_frame = k_new.shape[2] // frames
        start = self.frames * per_frame
        if layer > len(self._keys):
            raise ValueError(f"cache layers are filled in order: got layer {layer} of {len(self._keys)}")
        if self.max_frames is not None:  # the window + one new frame: the same size however it was filled
            keep = max(self.max_frames + 1, self.frames + frames)
        else:  # unbounded: grow by doubling
            keep = 2 * self.frames + frames
        shape = (*k_new.shape[:2], keep * per_frame, k_new.shape[3])
        k_buf, v_buf = k_new.new_empty(shape), v_new.new_empty(shape)
        if layer < len(self._keys):  # grow, keeping what is cached
            k_buf[:, :, :start] = self._keys[layer][:, :, :start]
            v_buf[:, :, :start] = self._values[layer][:, :, :start]
            self._keys[layer], self._values[layer] = k_buf, v_buf
        else:
            self._keys.append(k_buf)
            self._values.append(v_buf)
            self._per_frame.append(per_frame)
        return k_buf, v_buf

    def advance(self, frames: int) -> None:
        """Commit the ``frames`` new frames every layer has just written; past ``max_frames`` the oldest
        are dropped (one move of the window per commit)."""
        self.position += frames
        if self._position_t is not None:
            self._position_t.add_(frames)
        self.frames += frames
        if self.max_frames is not None and self.frames > self.max_frames:
            drop, keep = self.frames - self.max_frames, self.max_frames
            for k_buf, v_buf, u in zip(self._keys, self._values, self._per_frame, strict=True):
                k_buf[:, :, : keep * u] = k_buf[:, :, drop * u : (drop + keep) * u].clone()
                v_buf[:, :, : keep * u] = v_buf[:, :, drop * u : (drop + keep) * u].clone()
            self.frames = keep

    def reset(self) -> None:
        self._keys.clear()
        self._values.clear()
        self._per_frame.clear()
        self._position_t = None
        self.position = 0
        self.frames = 0


class KVCacheLayer:
    """One layer's view of a :class:`KVCache`, handed to that layer's :class:`Attention`.

    Once the layer's buffers exist the view writes into them itself, without the layer's index: code that
    ``torch.compile`` traces through it then does not depend on which layer it is, so every ST block of a
    model shares one compiled graph (guarding on the index compiled one per block, and past dynamo's
    recompile limit - 8 - the remaining blocks ran eagerly)."""

    def __init__(
        self, cache: KVCache, index: int, k_buf: Tensor | None = None, v_buf: Tensor | None = None
    ) -> None:
        self.cache, self.index = cache, index
        self.k_buf, self.v_buf = k_buf, v_buf

    def extend(self, k_new: Tensor, v_new: Tensor, frames: int) -> KV:
        """As :meth:`KVCache.extend` for this layer."""
        per_frame = k_new.shape[2] // frames
        start, stop = self.cache.frames * per_frame, (self.cache.frames + frames) * per_frame
        if self.k_buf is None or self.v_buf is None or self.k_buf.shape[2] < stop:
            self.k_buf, self.v_buf = self.cache._buffers(self.index, k_new, v_new, frames)
        self.k_buf[:, :, start:stop] = k_new
        self.v_buf[:, :, start:stop] = v_new
        return self.k_buf[:, :, :stop], self.v_buf[:, :, :stop]


QKNorm = Literal["layer", "rms", "none"]


def check_qk_norm(qk_norm: QKNorm) -> QKNorm:
    """``qk_norm`` if it is ``"layer"``, ``"rms"`` or ``"none"``; a one-line error otherwise."""
    if qk_norm not in ("layer", "rms", "none") or isinstance(qk_norm, bool):
        raise ValueError(f"qk_norm must be 'layer', 'rms' or 'none', got {qk_norm!r}")
    return qk_norm


# Key lengths up to which the CPU takes attention as two matrix products and a softmax (``explicit_attention``)
# rather than SDPA's fused kernel, which pays a per-sequence set-up that dominates short sequences (measured
# in the lab notes: temporal attention over 2-16 frames, a tiny LAM's 8x8 patches).
CPU_EXPLICIT_MAX_KEYS = 64


def causal_mask(q_len: int, k_len: int, device: torch.device | str | None = None) -> Tensor:
    """``mask_QK``, True where a query may attend to a key: the queries are the last ``q_len`` of ``k_len``
    positions (earlier keys come from a cache), and each sees every key up to its own position."""
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)


def explicit_attention(
    q_BHQK: Tensor, k_BHLK: Tensor, v_BHLK: Tensor, mask_QL: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Softmax attention as written: scores, softmax (fp32 under bf16), weighted sum - SDPA's result.

    For short sequences (a cached generation step's one query per token, temporal attention over a few
    frames, small patch grids) on the CPU: there is no score matrix large enough for a fused kernel to tile,
    and SDPA's CPU kernel pays its set-up for every sequence and head; the two batched products also fuse
    under ``torch.compile``. ``mask_QL``: True where a query may attend to a key.
    """
    scores_BHQL = torch.einsum("bhqk,bhlk->bhql", q_BHQK, k_BHLK) * q_BHQK.shape[-1] ** -0.5
    if mask_QL is not None:
        scores_BHQL = scores_BHQL.masked_fill(~mask_QL, float("-inf"))
    weights_BHQL = scores_BHQL.softmax(-1, dtype=torch.float32).to(v_BHLK.dtype)
    if dropout_p > 0.0:
        weights_BHQL = F.dropout(weights_BHQL, dropout_p)
    return torch.einsum("bhql,bhlk->bhqk", weights_BHQL, v_BHLK)


class Attention(nn.Module):
    """Self-attention over the L axis of ``x_BLD``.

    ``num_heads × head_dim`` need not equal ``dim`` (the 11B dynamics model has 36 heads of 128 on d 5120).
    QK-norm (the paper trains its dynamics model in bf16 with it) normalises each head's queries and keys
    before the dot product, with a learnable per-channel scale, which keeps logits bounded in low precision:
    ``qk_norm="layer"`` (LayerNorm without bias, as ViT-22B introduced it; PyTorch has fused CPU and GPU
    kernels for its forward and backward), ``"rms"`` (RMSNorm; on the CPU its backward runs as separate
    elementwise ops, ~10% of a d 512 train step) or ``"none"``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qk_norm: QKNorm = "layer",
        dropout: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(
                    f"dim {dim} is not divisible by num_heads {num_heads}; set head_dim explicitly"
                )
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.norm_eps = norm_eps
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim, bias=False)
        self.qk_norm = check_qk_norm(qk_norm)
        self.q_scale = nn.Parameter(torch.ones(head_dim)) if self.qk_norm != "none" else None
        self.k_scale = nn.Parameter(torch.ones(head_dim)) if self.qk_norm != "none" else None

    def forward(
        self,
        x_BLD: Tensor,
        *,
        causal: bool = False,
        rope: Rope | None = None,
        mask_LL: Tensor | None = None,
        cache: KVCacheLayer | None = None,
        frames: int = 1,
    ) -> Tensor:
        """Attend over the L axis of ``x_BLD``.

        ``rope`` holds tables for the query positions; cached keys were rotated when they were computed.
        With ``cache`` the queries (``frames`` frames' worth) follow the cached positions: every query sees
        all of those, and with ``causal`` the queries also see each other causally; this call's keys/values
        are written to the cache (kept once the caller commits them). ``mask_LL`` (True = may attend) is for
        patterns beyond plain causal, such as block-causal full spatiotemporal attention.
        """
        q_BHLK, k_BHLK, v_BHLK = rearrange(
            self.qkv(x_BLD), "b l (three h k) -> three b h l k", three=3, h=self.num_heads
        )
        if self.q_scale is not None and self.k_scale is not None:
            # Scales cast to the activation dtype so bf16 runs the fused kernel.
            norm = F.layer_norm if self.qk_norm == "layer" else F.rms_norm
            q_BHLK = norm(q_BHLK, (self.head_dim,), self.q_scale.to(q_BHLK.dtype), eps=self.norm_eps)
            k_BHLK = norm(k_BHLK, (self.head_dim,), self.k_scale.to(k_BHLK.dtype), eps=self.norm_eps)
        if rope is not None:
            q_BHLK = apply_rope(q_BHLK, *rope)
            k_BHLK = apply_rope(k_BHLK, *rope)
        if cache is not None:
            k_BHLK, v_BHLK = cache.extend(k_BHLK, v_BHLK, frames)
        q_len, k_len = q_BHLK.shape[2], k_BHLK.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        explicit = (q_len == 1 and mask_LL is None and dropout_p == 0.0) or (
            x_BLD.device.type == "cpu" and k_len <= CPU_EXPLICIT_MAX_KEYS
        )
        attn_mask = mask_LL
        is_causal = causal and attn_mask is None and q_len > 1  # one query sees every key anyway
        if is_causal and (explicit or k_len != q_len):
            # the explicit path takes a mask; SDPA's is_causal aligns top-left, and with a cache the queries
            # are the *last* q_len positions
            attn_mask = causal_mask(q_len, k_len, x_BLD.device)
            is_causal = False
        if explicit:
            out_BHLK = explicit_attention(q_BHLK, k_BHLK, v_BHLK, attn_mask, dropout_p)
        else:
            out_BHLK = F.scaled_dot_product_attention(
                q_BHLK, k_BHLK, v_BHLK, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
            )
        return self.proj(rearrange(out_BHLK, "b h l k -> b l (h k)"))

    @staticmethod
    def param_formula(dim: int, num_heads: int, head_dim: int, qk_norm: QKNorm) -> int:
        """Closed form of the parameter count: q, k, v and output projections plus the two QK-norm scales."""
        return 4 * dim * num_heads * head_dim + (2 * head_dim if check_qk_norm(qk_norm) != "none" else 0)
