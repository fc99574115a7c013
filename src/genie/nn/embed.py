"""Patchify / unpatchify and position handling (learned factored tables or rotary)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn


def patchify(video_BTCHW: Tensor, patch: int) -> Tensor:
    """Cut every frame into non-overlapping ``patch``×``patch`` squares: returns ``x_BTSD``, D = C·p·p."""
    *_, h, w = video_BTCHW.shape
    if h % patch or w % patch:
        raise ValueError(
            f"frame size {h}x{w} is not divisible by patch size {patch}; resize or crop frames to a multiple of {patch}"
        )
    return rearrange(video_BTCHW, "b t c (h p1) (w p2) -> b t (h w) (c p1 p2)", p1=patch, p2=patch)


def unpatchify(x_BTSD: Tensor, patch: int, grid: tuple[int, int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`: ``x_BTSD`` with S = grid[0]·grid[1] → ``video_BTCHW``."""
    gh, gw = grid
    return rearrange(
        x_BTSD, "b t (h w) (c p1 p2) -> b t c (h p1) (w p2)", h=gh, w=gw, c=channels, p1=patch, p2=patch
    )


class LearnedPositions(nn.Module):
    """Factored learned positions: a row table, a column table and a frame table, summed and added.

    Factoring keeps the table small (H + W + T rows, not H·W·T) and lets one model run on any grid up to
    its maximum.
    """

    def __init__(self, dim: int, max_frames: int, max_grid: tuple[int, int]) -> None:
        super().__init__()
        self.max_frames = max_frames
        self.max_grid = max_grid
        self.rows = nn.Parameter(torch.zeros(max_grid[0], dim))
        self.cols = nn.Parameter(torch.zeros(max_grid[1], dim))
        self.frames = nn.Parameter(torch.zeros(max_frames, dim))
        for p in (self.rows, self.cols, self.frames):
            nn.init.normal_(p, std=0.02)

    def forward(self, x_BTSD: Tensor, grid: tuple[int, int], t0: int = 0, prefix: int = 0) -> Tensor:
        """Add positions; the first ``prefix`` tokens of each frame get the frame position only."""
        t = x_BTSD.shape[1]
        gh, gw = grid
        if t0 + t > self.max_frames:
            raise ValueError(
                f"frame positions {t0}..{t0 + t - 1} exceed the {self.max_frames} learned frame positions; "
                "pass at most max_frames frames (or use pos_emb='rope', which has no limit)"
            )
        if gh > self.max_grid[0] or gw > self.max_grid[1]:
            raise ValueError(
                f"token grid {gh}x{gw} exceeds the learned maximum {self.max_grid}; raise max_grid"
            )
        spatial_SD = (self.rows[:gh, None, :] + self.cols[None, :gw, :]).reshape(gh * gw, -1)
        if prefix:
            spatial_SD = torch.cat((spatial_SD.new_zeros(prefix, spatial_SD.shape[1]), spatial_SD))
        frames_TD = self.frames[t0 : t0 + t]
        return x_BTSD + spatial_SD[None, None] + frames_TD[None, :, None]


def rope_inv_freq(
    head_dim: int, n_axes: int, base: float = 10000.0, device: torch.device | None = None
) -> Tensor:
    """The rotation rate of each channel pair of one axis (``head_dim/(2·n_axes)`` of them), as
    :func:`rope_frequencies` uses them."""
    per_axis = head_dim // 2 // n_axes
    if per_axis == 0:
        raise ValueError(f"head_dim {head_dim} is too small for rotary positions over {n_axes} axes")
    return 1.0 / (base ** (torch.arange(per_axis, dtype=torch.float32, device=device) / per_axis))


def rope_frequencies(
    positions_LA: Tensor, head_dim: int, base: float = 10000.0, inv_freq: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Rotary tables for L positions with A axes (1 = time, 2 = rows×cols): returns ``cos_LK, sin_LK``.

    The head dimension is split evenly between the axes; each axis rotates head_dim/(2A) channel pairs
    (channel i with channel i + head_dim/2). The tables span the whole head: ``sin_LK`` carries the sign of
    each half, so a rotation is ``x·cos + swap_halves(x)·sin`` (:func:`apply_rope`). ``inv_freq``:
    :func:`rope_inv_freq` of these arguments, computed beforehand (else here).
    """
    n_axes = positions_LA.shape[-1]
    pairs = head_dim // 2
    if inv_freq is None:
        inv_freq = rope_inv_freq(head_dim, n_axes, base, positions_LA.device)
    angles = [positions_LA[:, a, None].float() * inv_freq[None] for a in range(n_axes)]
    angles_LP = torch.cat(angles, dim=-1)
    # Leftover pairs (when pairs is not a multiple of the axis count) are not rotated: angle 0.
    if angles_LP.shape[-1] < pairs:
        angles_LP = torch.nn.functional.pad(angles_LP, (0, pairs - angles_LP.shape[-1]))
    cos_LP, sin_LP = angles_LP.cos(), angles_LP.sin()
    return torch.cat((cos_LP, cos_LP), -1), torch.cat((-sin_LP, sin_LP), -1)


def swap_halves(x: Tensor) -> Tensor:
    """``[x2, x1]`` for ``x = [x1, x2]`` along the last axis (the partner of every rotated channel)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, x1), dim=-1)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``x·cos + swap_halves(x)·sin`` written half by half into one output: three passes over ``x`` instead of
    four and no concatenated copy, every product and sum as the plain formula rounds it."""
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out1, out2 = out[..., :h], out[..., h:]
    torch.mul(x1, cos[..., :h], out=out1)
    torch.mul(x2, sin[..., :h], out=out2)  # out2 holds a partial product until it is added
    out1.add_(out2)
    torch.mul(x2, cos[..., h:], out=out2)
    out2.add_(x1 * sin[..., h:])
    return out


class _Rotation(torch.autograd.Function):
    """The rotation with its adjoint as backward (the rotation by the swapped sine table), where autograd
    would replay the formula's four passes and its concatenation."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors  # type: ignore[attr-defined]
        return _Rotation.apply(grad, cos, swap_halves(sin)), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (first half, second half) of every head by the tables' angles (in fp32); the
    tables (from :func:`rope_frequencies`; constants, no gradient reaches them) broadcast against ``x``'s
    trailing axes, e.g. ``cos_LK`` against ``x_BHLK``. The result is ``x·cos + swap_halves(x)·sin`` to the
    bit, forward and backward."""
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("apply_rope's cos/sin tables are constants; detach them (no gradient flows to them)")
    xf = x.float()
    cos, sin = cos.to(x.device), sin.to(x.device)
    # Training eagerly, the written-out rotation saves a pass each way; without autograd (play: fewer kernel
    # launches win) and under a compiler (which fuses this form, and traces no strided out=) the formula runs.
    if xf.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _Rotation.apply(xf, cos, sin).to(x.dtype)
    return (xf * cos + swap_halves(xf) * sin).to(x.dtype)


def grid_positions(grid: tuple[int, int], device: torch.device | None = None, prefix: int = 0) -> Tensor:
    """Row/column index of every token of an H×W grid, row-major: ``positions_S2``; ``prefix`` extra tokens
    in front sit at (-1, -1), just outside the grid."""
    gh, gw = grid
    rows = torch.arange(gh, device=device).repeat_interleave(gw)
    cols = torch.arange(gw, device=device).repeat(gh)
    pos = torch.stack((rows, cols), dim=-1)
    if prefix:
        pos = torch.cat((torch.full((prefix, 2), -1, device=device, dtype=pos.dtype), pos))
    return pos
