"""The ST-Transformer (Genie §2.1): the one block every Genie component is built from.

Spatial attention mixes the H·W tokens of each frame; causal temporal attention mixes the T tokens at each
spatial position (token t sees ≤ t); then a single feed-forward layer. Compute and memory grow linearly in T.
Two ablation modes share the same block: ``spatial`` (ViT: no temporal mixing) and ``full`` (C-ViViT:
one attention over all T·S tokens, block-causal in time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from genie.nn.attention import Attention, KVCache, KVCacheLayer, QKNorm, Rope, causal_mask, check_qk_norm
from genie.nn.embed import LearnedPositions, grid_positions, rope_frequencies, rope_inv_freq

AttentionMode = Literal["st", "spatial", "full"]
MLPKind = Literal["gelu", "swiglu"]
PosEmb = Literal["rope", "learned", "none"]


@dataclass
class STConfig:
    """Configuration of an :class:`STTransformer` (and of each of its blocks)."""

    dim: int = 256
    depth: int = 4
    num_heads: int = 4
    head_dim: int | None = None  # None: dim // num_heads
    mlp_dim: int | None = None  # None: mlp_ratio · dim, rounded to a multiple of 8
    mlp_ratio: float = 4.0
    mlp: MLPKind = "gelu"
    attention: AttentionMode = "st"
    causal: bool = True  # causal over time (the paper's tokenizer, LAM and dynamics all are)
    qk_norm: QKNorm = "layer"  # "layer" / "rms" / "none"
    pos_emb: PosEmb = "rope"
    max_frames: int = 16  # learned positions only
    max_grid: Sequence[int] = field(default_factory=lambda: (64, 64))  # learned positions only
    rope_base: float = 10000.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.max_grid = tuple(int(g) for g in self.max_grid)
        if self.attention not in ("st", "spatial", "full"):
            raise ValueError(f"attention must be 'st', 'spatial' or 'full', got {self.attention!r}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        self.qk_norm = check_qk_norm(self.qk_norm)
        if self.pos_emb not in ("rope", "learned", "none"):
            raise ValueError(f"pos_emb must be 'rope', 'learned' or 'none', got {self.pos_emb!r}")
        if self.head_dim is None and self.dim % self.num_heads:
            raise ValueError(
                f"dim {self.dim} is not divisible by num_heads {self.num_heads}; set head_dim explicitly"
            )
        if self.pos_emb == "rope" and self.resolved_head_dim % 2:
            raise ValueError(f"rotary positions need an even head_dim, got {self.resolved_head_dim}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.dim // self.num_heads

    @property
    def resolved_mlp_dim(self) -> int:
        if self.mlp_dim is not None:
            return self.mlp_dim
        return max(8, round(self.mlp_ratio * self.dim / 8) * 8)

    def num_params(self) -> int:
        """Closed-form parameter count (equals ``sum(p.numel())`` of the built module)."""
        return STTransformer.param_formula(self)


def as_st_config(value: STConfig | Mapping[str, Any]) -> STConfig:
    """Accept an STConfig or the plain mapping Hydra/YAML gives."""
    return value if isinstance(value, STConfig) else STConfig(**dict(value))


class MLP(nn.Module):
    """The block's single feed-forward layer: GELU-MLP or SwiGLU (bias-free)."""

    def __init__(self, dim: int, hidden: int, kind: MLPKind = "gelu") -> None:
        super().__init__()
        self.kind = kind
        self.fc_in = nn.Linear(dim, 2 * hidden if kind == "swiglu" else hidden, bias=False)
        self.fc_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc_in(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = nn.functional.silu(gate) * up
        else:
            h = nn.functional.gelu(h)
        return self.fc_out(h)


def block_causal_mask(q_frames: int, k_frames: int, tokens_per_frame: int, device: torch.device) -> Tensor:
    """Mask for full attention over frames: a token of query frame t sees every token of key frames ≤ t.

    The queries are the last ``q_frames`` of the ``k_frames`` (earlier ones come from a cache).
    """
    frame_mask = causal_mask(q_frames, k_frames, device)
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class STBlock(nn.Module):
    """One ST block on ``x_BTSD``: pre-norm residual attentions, then one pre-norm residual FFN."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.dim, cfg.resolved_head_dim

        def attn() -> Attention:
            return Attention(d, cfg.num_heads, hd, qk_norm=cfg.qk_norm, dropout=cfg.dropout)

        self.norm_spatial = nn.LayerNorm(d)
        self.spatial = attn()  # in "full" mode this one attends over all T·S tokens
        if cfg.attention == "st":
            self.norm_temporal = nn.LayerNorm(d)
            self.temporal = attn()
        self.norm_mlp = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.resolved_mlp_dim, cfg.mlp)

    def forward(
        self,
        x_BTSD: Tensor,
        *,
        spatial_rope: Rope | None = None,
        temporal_rope: Rope | None = None,
        full_mask: Tensor | None = None,
        cache: KVCacheLayer | None = None,
    ) -> Tensor:
        """With ``cache`` the frames follow the cached ones in the time-mixing attention (see :class:`KVCache`)."""
        b, t, _, _ = x_BTSD.shape
        mode = self.cfg.attention
        if mode == "full":
            h_BLD = rearrange(self.norm_spatial(x_BTSD), "b t s d -> b (t s) d")
            out = self.spatial(
                h_BLD, causal=False, rope=spatial_rope, mask_LL=full_mask, cache=cache, frames=t
            )
            x_BTSD = x_BTSD + rearrange(out, "b (t s) d -> b t s d", t=t)
        else:
            h = rearrange(self.norm_spatial(x_BTSD), "b t s d -> (b t) s d")
            out = self.spatial(h, rope=spatial_rope)
            x_BTSD = x_BTSD + rearrange(out, "(b t) s d -> b t s d", b=b)
            if mode == "st":
                h = rearrange(self.norm_temporal(x_BTSD), "b t s d -> (b s) t d")
                out = self.temporal(h, causal=self.cfg.causal, rope=temporal_rope, cache=cache, frames=t)
                x_BTSD = x_BTSD + rearrange(out, "(b s) t d -> b t s d", b=b)
        return x_BTSD + self.mlp(self.norm_mlp(x_BTSD))

    @staticmethod
    def param_formula(cfg: STConfig) -> int:
        d, hd, m = cfg.dim, cfg.resolved_head_dim, cfg.resolved_mlp_dim
        n_attn = 2 if cfg.attention == "st" else 1
        attn = Attention.param_formula(d, cfg.num_heads, hd, cfg.qk_norm)
        mlp = (3 if cfg.mlp == "swiglu" else 2) * d * m
        norms = 2 * d * (n_attn + 1)
        return n_attn * attn + mlp + norms


class STTransformer(nn.Module):
    """A stack of :class:`STBlock` + final norm; owns position handling (learned tables or rotary)."""

    def __init__(self, cfg: STConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.positions = (
            LearnedPositions(cfg.dim, cfg.max_frames, tuple(cfg.max_grid))  # type: ignore[arg-type]
            if cfg.pos_emb == "learned"
            else None
        )
        self.blocks = nn.ModuleList(STBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self._tables: dict[tuple[Any, ...], Any] = {}  # position tables that depend on shapes only

    def forward(
        self,
        x_BTSD: Tensor,
        grid: tuple[int, int],
        cache: KVCache | None = None,
        write_cache: bool = False,
        prefix: int = 0,
    ) -> Tensor:
        """Run the stack on ``x_BTSD`` (S = prefix + grid[0]·grid[1]).

        ``prefix`` tokens come first in every frame and sit outside the grid (e.g. a prepended action
        token): they take part in all attention, with no spatial position of their own.
        With ``cache`` the frames in ``x`` follow the cached ones: they attend to them, and with
        ``write_cache`` their keys/values are appended (call once per frame that becomes context).
        """
        _, t, s, _ = x_BTSD.shape
        if s != prefix + grid[0] * grid[1]:
            raise ValueError(
                f"x has {s} tokens per frame but grid {grid} with {prefix} prefix tokens has "
                f"{prefix + grid[0] * grid[1]}"
            )
        if self.positions is not None:
            x_BTSD = self.positions(x_BTSD, grid, cache.position if cache is not None else 0, prefix)
        spatial_rope, temporal_rope, full_mask = self._position_tables(t, grid, x_BTSD.device, prefix, cache)
        for i, block in enumerate(self.blocks):
            layer = cache.layer(i) if cache is not None else None
            x_BTSD = block(
                x_BTSD,
                spatial_rope=spatial_rope,
                temporal_rope=temporal_rope,
                full_mask=full_mask,
                cache=layer,
            )
        if cache is not None and write_cache:  # (spatial mode has nothing to cache: only positions count)
            cache.advance(t)
        return self.norm(x_BTSD)

    def _position_tables(
        self,
        t: int,
        grid: tuple[int, int],
        device: torch.device,
        prefix: int = 0,
        cache: KVCache | None = None,
    ) -> tuple[Rope | None, Rope | None, Tensor | None]:
        """Rotary tables (spatial, temporal) and full attention's block-causal mask for ``t`` frames after the
        ``cache``'s (if any)."""
        cfg = self.cfg
        s = prefix + grid[0] * grid[1]
        full_mask = None
        if cfg.attention == "full" and cfg.causal and (t > 1):
            past_frames = cache.frames if cache is not None else 0
            full_mask = block_causal_mask(t, past_frames + t, s, device)
        if cfg.pos_emb != "rope":
            return None, None, full_mask
        hd, base = cfg.resolved_head_dim, cfg.rope_base
        frames_T = self._table(("frames", t, device), lambda: torch.arange(t, device=device))
        if cache is not None:  # read from the device (a replayed CUDA graph must not bake the position in)
            frames_T = cache.position_tensor(device) + frames_T
        if cfg.attention == "full":
            grid_S2 = self._table(
                ("grid", grid, prefix, device), lambda: grid_positions(grid, device, prefix)
            )
            pos_L3 = torch.cat((frames_T.repeat_interleave(s)[:, None], grid_S2.repeat(t, 1)), dim=-1)
            return rope_frequencies(pos_L3, hd, base), None, full_mask
        spatial = self._table(
            ("spatial", grid, prefix, device),
            lambda: rope_frequencies(grid_positions(grid, device, prefix), hd, base),
        )
        inv_freq = self._table(("inv_freq", device), lambda: rope_inv_freq(hd, 1, base, device))
        temporal = rope_frequencies(frames_T[:, None], hd, base, inv_freq)
        return spatial, temporal, full_mask

    def _table(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """``make()``, kept under ``key`` after the first call (a step of generation or training runs the same
        shapes again and again): not while ``torch.compile`` traces this or a CUDA graph records it - a
        recording runs nothing, so the tensors it returned would hold no values outside a replay."""
        if torch.compiler.is_compiling() or (
            key[-1].type == "cuda" and torch.cuda.is_current_stream_capturing()
        ):
            return make()
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = make()
        return table

    @staticmethod
    def param_formula(cfg: STConfig) -> int:
        """Closed-form parameter count of ``STTransformer(cfg)``."""
        total = cfg.depth * STBlock.param_formula(cfg) + 2 * cfg.dim
        if cfg.pos_emb == "learned":
            total += cfg.dim * (cfg.max_frames + sum(cfg.max_grid))
        return total


def compile_blocks(module: nn.Module, **compile_kwargs: Any) -> int:
    """``torch.compile`` every :class:`STBlock` of ``module`` in place (``nn.Module.compile``; blocks already
    compiled are left as they are); returns the number of blocks. Compiling per block keeps each graph small
    and the position tables and caches outside it. ``compile_kwargs`` go to ``torch.compile``."""
    n = 0
    for block in module.modules():
        if isinstance(block, STBlock):
            n += 1
            if getattr(block, "_compiled_call_impl", None) is None:
                block.compile(**compile_kwargs)
    return n


@contextlib.contextmanager
def compiled_when(steady: bool) -> Iterator[None]:
    """Run compiled code only when ``steady``, eagerly otherwise (``torch.compiler.set_stance``): generation
    compiles its blocks once for the shapes of a full context window instead of once per length while the
    window fills (each compile takes seconds on a CPU; dynamic-shape kernels run slower)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        raise RuntimeError(
            f"compiled sampling needs torch >= 2.6 (torch.compiler.set_stance); this is torch {torch.__version__}"
        )
    with set_stance("default" if steady else "force_eager"):
        yield
