"""Multi-head self-attention on PyTorch SDPA, with QK-norm and rotary positions (Genie §2.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from genie.nn.embed import apply_rope

Rope = tuple[Tensor, Tensor]
KV = tuple[Tensor, Tensor]


class Attention(nn.Module):
    """Self-attention over the L axis of ``x_BLD``.

    ``num_heads × head_dim`` need not equal ``dim`` (the 11B dynamics model has 36 heads of 128 on d 5120).
    QK-norm (the paper trains its dynamics model in bf16 with it) RMS-normalises each head's queries and keys
    with a learnable per-channel scale before the dot product, which keeps logits bounded in low precision.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        qk_norm: bool = True,
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
        self.q_scale = nn.Parameter(torch.ones(head_dim)) if qk_norm else None
        self.k_scale = nn.Parameter(torch.ones(head_dim)) if qk_norm else None

    def forward(
        self,
        x_BLD: Tensor,
        *,
        causal: bool = False,
        rope: Rope | None = None,
        mask_LL: Tensor | None = None,
        past_kv: KV | None = None,
    ) -> tuple[Tensor, KV]:
        """Attend; returns the output and this call's (k, v) so a caller can cache them.

        ``rope`` holds tables for the query positions; cached keys were rotated when they were computed.
        ``past_kv`` are keys/values of earlier positions (each ``k_BHPK``): every query sees all of them,
        and with ``causal`` the queries also see each other causally. ``mask_LL`` (True = may attend) is for
        patterns beyond plain causal, such as block-causal full spatiotemporal attention.
        """
        q_BHLK, k_BHLK, v_BHLK = rearrange(
            self.qkv(x_BLD), "b l (three h k) -> three b h l k", three=3, h=self.num_heads
        )
        if self.q_scale is not None and self.k_scale is not None:
            # Scales cast to the activation dtype so bf16 runs the fused kernel.
            q_BHLK = F.rms_norm(q_BHLK, (self.head_dim,), self.q_scale.to(q_BHLK.dtype), self.norm_eps)
            k_BHLK = F.rms_norm(k_BHLK, (self.head_dim,), self.k_scale.to(k_BHLK.dtype), self.norm_eps)
        if rope is not None:
            q_BHLK = apply_rope(q_BHLK, *rope)
            k_BHLK = apply_rope(k_BHLK, *rope)
        new_kv = (k_BHLK, v_BHLK)
        if past_kv is not None:
            k_BHLK = torch.cat((past_kv[0], k_BHLK), dim=2)
            v_BHLK = torch.cat((past_kv[1], v_BHLK), dim=2)
        q_len, k_len = q_BHLK.shape[2], k_BHLK.shape[2]
        attn_mask = mask_LL
        is_causal = causal and attn_mask is None
        if is_causal and k_len != q_len:
            # SDPA's is_causal aligns top-left; with a cache the queries are the *last* q_len positions.
            attn_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=x_BLD.device).tril(k_len - q_len)
            is_causal = False
        if is_causal and q_len == 1:
            is_causal = False
        out_BHLK = F.scaled_dot_product_attention(
            q_BHLK,
            k_BHLK,
            v_BHLK,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        return self.proj(rearrange(out_BHLK, "b h l k -> b l (h k)")), new_kv

    @staticmethod
    def param_formula(dim: int, num_heads: int, head_dim: int, qk_norm: bool) -> int:
        """Closed form of the parameter count: q, k, v and output projections plus the two QK-norm scales."""
        return 4 * dim * num_heads * head_dim + (2 * head_dim if qk_norm else 0)
