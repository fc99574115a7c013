"""Aids outside the paper: small modules that help small models trained briefly on CPU learn control.

Each is off in the paper's configs and switched on by its model's ``aids`` config; the paper's path reads
without them.

- :class:`CopyHead` (dynamics, ``aids.copy_radius > 0``): each token's distribution becomes a mixture of the generated
  one and copies of the previous frame's tokens at offsets within the radius, with the gate and the offset
  weights predicted from the token's hidden state (which carries the action). A scrolling world then needs only
  "which way did it move", not a table of shifted codes. The token-space analogue of the LAM's shift head.
- :class:`WarpHead` (LAM decoder, ``aids.warp_radius > 0`` with ``aids.predict_residual``): per patch, a separable shift
  kernel of ``2r + 1`` taps horizontally and vertically (softmax weights, initialised to the identity) warps the
  last frame, and the residual head corrects the warped frame. Scrolling and moving sprites become a choice among
  a few shifts, which the action must select: an early, strong training signal for the latent.
- :class:`MotionInput` (LAM encoder, ``aids.motion_input``): each patch's difference to the same patch one frame
  earlier is embedded beside the patch, so motion is visible to the first layer.
- :class:`FlowInput` (LAM encoder, ``aids.flow_input``, with the motion input): per pixel, the frame difference
  times the spatial gradients (the terms of a Lucas-Kanade flow estimate), embedded per patch: their sign follows
  the direction of motion, so the direction is a linear feature of the input.
- :class:`VQWarmup` (LAM, ``aids.vq_warmup_steps > 0``): for the first training steps the decoder reads the encoder's
  continuous latent instead of its code, so the encoder learns what the decoder needs before the bottleneck closes.
- :func:`latent_norm_loss` (LAM, ``aids.latent_norm_weight > 0``): holds the encoder's raw latent near unit length.
  The cosine look-up reads only its direction, so nothing else bounds its norm, and under Adam the norm grows; the
  look-up's angle then moves by the optimizer's step divided by that norm, and the encoder learns slower and slower.
- :func:`global_shift`, :func:`translate`, :func:`extrapolate_motion` (LAM decoder, with ``aids.predict_residual``:
  ``aids.extrapolate_motion``, ``aids.target_motion``): one Lucas-Kanade translation per frame moves the decoder's
  base frame on by the view's last motion, or by the motion of the transition it predicts, so that no code need
  carry the view's motion.
- Settings the LAM applies itself (:class:`LAMAids`): ``recon_weight``, ``predict_residual``, ``window``, and the
  context patches hidden from the decoder behind a learned stand-in (``decoder_mask_rate``, ``decoder_anchor``).

Their settings are one nested config per model, ``aids`` (:class:`LAMAids`, :class:`DynamicsAids`; all off by
default, which is the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genie.nn.options import options_from
from genie.nn.static_shapes import windows

_Aids = TypeVar("_Aids", "LAMAids", "DynamicsAids")


@dataclass
class LAMAids:
    """The LAM's aids outside the paper (``model.model.aids``); the defaults are the paper's LAM. The tiny
    configs switch them on: together they make a LAM learn actions in a few hundred CPU steps (docs/lab-notes.md)."""

    # Weight of the reconstruction term against the VQ terms. Pixel MSE between consecutive frames is ~1e-3,
    # so at weight 1 the commitment term dominates the encoder's gradient and holds every latent at the code it
    # started on (codes then never come to mean actions); ~1e3 restores the balance of a per-pixel-summed loss.
    recon_weight: float = 1.0
    # Pixels: predict x_t+1 as sigmoid(logit(x_t) + decoder output), i.e. a change relative to the last frame.
    # Copying becomes free, so the decoder's capacity (and the action) go into what changed.
    predict_residual: bool = False
    # Encoder: also embed each patch's difference to the same patch one frame earlier (:class:`MotionInput`),
    # and read the transition latent from the action token plus the mean of frame t+1's patch tokens.
    motion_input: bool = False
    # Encoder, with motion_input: also embed each patch's frame difference times the spatial gradients
    # (:class:`FlowInput`), whose sign gives the direction of motion; otherwise the encoder has to learn to compute
    # the direction, and in a short run it may not (the demo LAM then gives left and right one code).
    flow_input: bool = False
    # Frames each prediction may use: None = the whole clip (the paper); 2 = only x_t and x_t+1. Short windows
    # stop the decoder from extrapolating the motion of earlier frames (random policies repeat actions), so
    # the latent has to carry what the action did. Clips are processed as overlapping windows.
    window: int | None = None
    # Pixels: > 0 adds the decoder's shift head (:class:`WarpHead`) with 2r+1 taps each way; needs
    # predict_residual (the residual head corrects the warped frame).
    warp_radius: int = 0
    # Spacing of the shift taps in pixels: they shift by -r·stride .. r·stride. Gradient descent from the
    # identity finds shifts a tap or two away; worlds that move several pixels a frame need a stride.
    warp_stride: int = 1
    # :class:`VQWarmup`: the decoder reads continuous latents for this many training steps.
    vq_warmup_steps: int = 0
    # Hide this fraction of context patches from the decoder (a learned stand-in), so it must rely on the action.
    decoder_mask_rate: float = 0.0
    # The decoder sees the first frame of its context only (the anchor); every later context frame is hidden by
    # the learned stand-in, in training and evaluation (tinyworlds' decoder masking). The latents then carry
    # every change since the anchor, and a lasting effect (CoinRun's agent facing the way it last went) costs a
    # wrong code on every later frame, not on the one transition that made it. With predict_residual the base
    # is the anchor. Needs a window of 3 or more frames (with 2 there is nothing to hide).
    decoder_anchor: bool = False
    # :func:`latent_norm_loss`'s weight: the encoder's raw latent is held near unit length (with the cosine
    # look-up, vq.l2_normalize); otherwise its norm grows several-fold in a short run and the latent's direction,
    # which is all the look-up reads, learns that many times slower.
    latent_norm_weight: float = 0.0
    # Pixels, with predict_residual: the decoder starts from the last frame moved on by the global motion of the
    # transition before it (:func:`extrapolate_motion`), not from the last frame itself, so the latent need not
    # carry motion that merely continues. Needs a window of 3 or more frames.
    extrapolate_motion: bool = False
    # Pixels, with predict_residual: the decoder starts from the last frame moved by the global motion of the
    # transition it predicts (:func:`global_shift` of x_t -> x_t+1, two numbers read off the target), so the
    # latent is left what a translation of the whole view does not explain (the agent in a world whose camera
    # follows it). Worlds whose actions move the whole view lose that signal: off unless measured to help.
    target_motion: bool = False

    @property
    def hides_context(self) -> bool:
        """Whether the decoder hides context patches (``decoder_mask_rate`` or ``decoder_anchor``): the model then
        has the learned stand-in."""
        return self.decoder_mask_rate > 0 or self.decoder_anchor

    def __post_init__(self) -> None:
        if self.window is not None and self.window < 2:
            raise ValueError(
                f"LAM aids.window must be >= 2 frames (one transition) or null, got {self.window}"
            )
        if self.warp_radius < 0:
            raise ValueError(f"LAM aids.warp_radius must be >= 0 (0 = off), got {self.warp_radius}")
        if self.warp_stride < 1:
            raise ValueError(f"LAM aids.warp_stride must be >= 1, got {self.warp_stride}")
        if self.flow_input and not self.motion_input:
            raise ValueError("LAM aids.flow_input needs aids.motion_input=true")
        if self.extrapolate_motion and self.window is not None and self.window < 3:
            raise ValueError(
                f"LAM aids.extrapolate_motion needs aids.window >= 3 or null (with {self.window} frames the decoder "
                "sees one frame, so no motion)"
            )
        if self.decoder_anchor and self.window is not None and self.window < 3:
            raise ValueError(
                f"LAM aids.decoder_anchor needs aids.window >= 3 or null (with {self.window} frames the decoder's "
                "context is the anchor alone: nothing to hide)"
            )
        for name in ("extrapolate_motion", "target_motion"):
            if self.decoder_anchor and getattr(self, name):
                raise ValueError(
                    f"LAM aids.decoder_anchor hides the frames aids.{name} reads its motion from: choose one"
                )
        for name in ("extrapolate_motion", "target_motion"):
            if getattr(self, name) and not self.predict_residual:
                raise ValueError(f"LAM aids.{name} needs aids.predict_residual=true")
        if self.extrapolate_motion and self.target_motion:
            raise ValueError("LAM aids.extrapolate_motion and aids.target_motion are two bases: choose one")
        if self.warp_radius > 0 and not self.predict_residual:
            raise ValueError("LAM aids.warp_radius > 0 needs aids.predict_residual=true")
        if self.vq_warmup_steps < 0:
            raise ValueError(f"LAM aids.vq_warmup_steps must be >= 0, got {self.vq_warmup_steps}")
        if self.recon_weight <= 0:
            raise ValueError(f"LAM aids.recon_weight must be > 0, got {self.recon_weight}")
        if not 0.0 <= self.decoder_mask_rate < 1.0:
            raise ValueError(f"LAM aids.decoder_mask_rate must be in [0, 1), got {self.decoder_mask_rate}")
        if self.latent_norm_weight < 0:
            raise ValueError(
                f"LAM aids.latent_norm_weight must be >= 0 (0 = off), got {self.latent_norm_weight}"
            )


@dataclass
class DynamicsAids:
    """The dynamics model's aids outside the paper (``model.model.aids``); the defaults are the paper's."""

    # Probability that a training frame (2..T) is masked whole instead of at the example's rate. With a partly
    # visible frame the model can read the motion off the visible tokens and need not use the action; a
    # wholly masked frame (as at the first MaskGIT step of generation) can only be predicted from the past and
    # the action. Small models trained briefly learn control much sooner with it (docs/lab-notes.md).
    full_mask_prob: float = 0.0
    # > 0: :class:`CopyHead` over offsets within this radius of the previous frame's tokens.
    copy_radius: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.full_mask_prob <= 1.0:
            raise ValueError(f"dynamics aids.full_mask_prob must be in [0, 1], got {self.full_mask_prob}")
        if self.copy_radius < 0:
            raise ValueError(f"dynamics aids.copy_radius must be >= 0 (0 = off), got {self.copy_radius}")


def as_aids(cls: type[_Aids], value: Any) -> _Aids:
    """``cls`` from itself or a mapping (YAML); an unknown key is one clear error."""
    return options_from(cls, value, "aids")


class VQWarmup(nn.Module):
    """Counts training steps (a saved buffer: a resumed run knows where its warm-up is) and says whether the
    warm-up is still on. The count is read from the buffer once, after building or loading, and then kept on
    the host: a read per step would stall a GPU/TPU."""

    train_steps: Tensor

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self._host_steps: int | None = None
        self.register_load_state_dict_post_hook(VQWarmup._forget_host_steps)

    @property
    def active(self) -> bool:
        """True while training inside the warm-up."""
        if not self.training:
            return False
        if self._host_steps is None:
            self._host_steps = int(self.train_steps)
        return self._host_steps < self.steps

    def step(self) -> None:
        """Count one training step (call after :attr:`active` has been read for it)."""
        if not self.training:
            return
        self.train_steps.add_(1)
        if self._host_steps is not None:
            self._host_steps += 1

    @staticmethod
    def _forget_host_steps(module: nn.Module, incompatible_keys: Any) -> None:
        module._host_steps = None  # type: ignore[assignment]


def latent_norm_loss(z: Tensor) -> Tensor:
    """Mean of (|z| - 1)² over the latents ``z_...A``: zero when every raw latent has unit length."""
    return (z.float().norm(dim=-1) - 1).pow(2).mean()


class CopyHead(nn.Linear):
    """The copy head: a linear map of each token's hidden state to ``K`` offset logits then one gate logit
    (generate vs copy), ``K = (2·radius + 1)²`` offsets over the previous frame's grid (clamped at its edges).
    Its outputs make log-probabilities (:meth:`mix`), so the loss and the sampler are those of plain logits."""

    index: Tensor

    def __init__(self, dim: int, grid: tuple[int, int], radius: int) -> None:
        k = (2 * radius + 1) ** 2
        super().__init__(dim, k + 1)
        self.offsets = k
        nn.init.zeros_(self.weight)
        with torch.no_grad():  # start: half generate, half copy, the copy mostly from the same position
            self.bias.zero_()
            self.bias[k // 2] = 2.0
        h, w = grid
        # flat index of each token's neighbour at each offset (clamped at the grid's edges)
        dy, dx = torch.meshgrid(
            torch.arange(-radius, radius + 1), torch.arange(-radius, radius + 1), indexing="ij"
        )
        rows = (torch.arange(h)[:, None, None] + dy.reshape(1, 1, -1)).clamp(0, h - 1)
        cols = (torch.arange(w)[None, :, None] + dx.reshape(1, 1, -1)).clamp(0, w - 1)
        self.register_buffer("index", (rows * w + cols).reshape(h * w, k), persistent=False)

    def sources(
        self, prev_ids_BTS: Tensor, positions_BM: Tensor | None = None, select_BTS: Tensor | None = None
    ) -> Tensor:
        """The ids each token's offsets point at in its previous frame: for the last frame's tokens at
        ``positions_BM`` (``src_BMK``), for the tokens where ``select_BTS`` is True (``src_NK``), or all."""
        if positions_BM is not None:
            b, m = positions_BM.shape
            index_BMK = self.index[positions_BM]
            return prev_ids_BTS[:, -1].gather(1, index_BMK.reshape(b, -1)).reshape(b, m, -1)
        if select_BTS is not None:
            return prev_ids_BTS[:, :, self.index][select_BTS]
        return prev_ids_BTS[:, :, self.index]

    def mix(self, logits_NV: Tensor, copy_NK1: Tensor, src_NK: Tensor) -> Tensor:
        """log( g·softmax(logits) + (1 - g)·Σ_k w_k·onehot(src_k) ), in fp32, over any leading axes ``N``:
        ``copy_NK1`` holds the K offset logits then the gate logit, ``src_NK`` the ids the offsets point at.

        Dense work is one log-softmax: the copy mass touches only the K source ids of each token, so it is
        added there (summed over offsets that point at the same id) and written back."""
        k = self.offsets
        copy_NK1 = copy_NK1.float()
        gate_logit_N1 = copy_NK1[..., k:]
        weights_NK = copy_NK1[..., :k].softmax(-1) * torch.sigmoid(-gate_logit_N1)  # (1 - g)·w_k
        logp_NV = logits_NV.float().log_softmax(-1) + F.logsigmoid(gate_logit_N1)  # log g·p_gen
        same_NKK = src_NK[..., :, None] == src_NK[..., None, :]
        mass_NK = (same_NKK * weights_NK[..., None, :]).sum(-1)  # copy mass landing on id src_k
        at_src_NK = _logaddexp(logp_NV.gather(-1, src_NK), mass_NK.clamp_min(1e-30).log())
        if at_src_NK.requires_grad:
            # offsets naming an id already named by an earlier one write the same value, detached: the
            # gradient of each output reaches it once (scatter's backward hands it to every writer)
            earlier_KK = torch.ones(k, k, dtype=torch.bool, device=src_NK.device).tril(-1)
            repeat_NK = (same_NKK & earlier_KK).any(-1)
            at_src_NK = torch.where(repeat_NK, at_src_NK.detach(), at_src_NK)
        return logp_NV.scatter(-1, src_NK, at_src_NK)


def _logaddexp(a: Tensor, b: Tensor) -> Tensor:
    """log(exp(a) + exp(b)), stable: torch's fused op on CPU and CUDA, elsewhere spelled out (torch.logaddexp
    has no XLA lowering: it would run on the host)."""
    if a.device.type in ("cpu", "cuda"):
        return torch.logaddexp(a, b)
    m = torch.maximum(a, b)
    return m + ((a - m).exp() + (b - m).exp()).log()


class WarpHead(nn.Linear):
    """The LAM decoder's shift head: hidden state → ``2 × (2r + 1)`` tap logits per patch (horizontal, then
    vertical), taps ``stride`` pixels apart; :meth:`warp` shifts the context frames by them."""

    def __init__(
        self, dim: int, radius: int, stride: int, patch: int, grid: tuple[int, int], hw: tuple[int, int]
    ) -> None:
        super().__init__(dim, 2 * (2 * radius + 1))
        self.radius, self.stride, self.patch, self.grid, self.hw = radius, stride, patch, grid, hw
        nn.init.zeros_(self.weight)
        with torch.no_grad():  # start as the identity: the centre tap (no shift) carries ~all the weight
            self.bias.zero_()
            self.bias[[radius, 3 * radius + 1]] = 4.0

    def warp(self, context: Tensor, h_BTSD: Tensor) -> Tensor:
        """Shift ``context_BTCHW`` per patch by the separable kernels this head reads off ``h_BTSD``."""
        return self.shift(context, self(h_BTSD))

    def shift(self, context: Tensor, taps_BTSK: Tensor) -> Tensor:
        """Shift ``context_BTCHW`` per patch by the kernels whose tap logits are ``taps_BTSK`` (horizontal then
        vertical)."""
        r, p, s = self.radius, self.patch, self.stride
        k = 2 * r + 1
        (gh, gw), (h, w) = self.grid, self.hw
        b, t = context.shape[:2]
        taps = taps_BTSK.float().reshape(b * t, gh, gw, 2, k).softmax(-1)
        taps = taps.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, :h, :w]  # (BT, H, W, 2, k)
        x = context.flatten(0, 1).float()
        # each pass: the k shifted copies as one strided view (no copies, one product, one sum over k)
        shifted = windows(F.pad(x, (r * s, r * s, 0, 0), mode="replicate"), -1, w, s)  # (BT, C, H, k, W)
        x = (shifted * taps[..., 0, :].permute(0, 1, 3, 2)[:, None]).sum(-2)
        shifted = windows(F.pad(x, (0, 0, r * s, r * s), mode="replicate"), -2, h, s)  # (BT, C, k, W, H)
        x = (shifted * taps[..., 1, :].permute(0, 3, 2, 1)[:, None]).sum(2).transpose(-1, -2)
        return x.reshape(b, t, *x.shape[1:])


def global_shift(prev_BTCHW: Tensor, x_BTCHW: Tensor) -> Tensor:
    """Per frame, the one translation ``(dx, dy)`` in pixels that best takes ``prev`` to ``x`` to first order (a
    Lucas-Kanade estimate over the whole frame, on the channel mean): ``shift_BT2``; +dx is content moving right."""
    x0, x1 = prev_BTCHW.float().mean(2), x_BTCHW.float().mean(2)
    it = x1 - x0
    ix = torch.gradient(x0, dim=-1)[0]
    iy = torch.gradient(x0, dim=-2)[0]
    dx = -(it * ix).sum((-1, -2)) / ((ix * ix).sum((-1, -2)) + 1e-6)
    dy = -(it * iy).sum((-1, -2)) / ((iy * iy).sum((-1, -2)) + 1e-6)
    return torch.stack((dx, dy), -1)


def translate(x_BTCHW: Tensor, shift_BT2: Tensor) -> Tensor:
    """Each frame moved by its ``(dx, dy)`` pixels (bilinear, edges repeated)."""
    b, t, c, h, w = x_BTCHW.shape
    ys = torch.linspace(-1, 1, h, device=x_BTCHW.device)
    xs = torch.linspace(-1, 1, w, device=x_BTCHW.device)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (H, W, 2) as (x, y)
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=x_BTCHW.device)
    grid = grid[None] - (shift_BT2.flatten(0, 1).float() * scale)[:, None, None]
    out = F.grid_sample(
        x_BTCHW.flatten(0, 1).float(), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out.reshape(b, t, c, h, w).to(x_BTCHW.dtype)


def extrapolate_motion(context_BTCHW: Tensor) -> Tensor:
    """Each context frame moved on by the global motion from its predecessor to it (the first frame as is): the
    guess of the next frame if the view keeps moving as it did (:attr:`LAMAids.extrapolate_motion`)."""
    return translate(context_BTCHW, global_shift(previous_frames(context_BTCHW), context_BTCHW))


def previous_frames(x_BT: Tensor) -> Tensor:
    """Each frame's predecessor along dim 1, the first frame standing in for its own (so its change is zero)."""
    return torch.cat((x_BT[:, :1], x_BT[:, :-1]), dim=1)


class MotionInput(nn.Linear):
    """The LAM encoder's motion input: an embedding of each patch's change since the previous frame (the first
    frame's change is zero)."""

    def embed(self, patches_BTSP: Tensor) -> Tensor:
        out: Tensor = self(patches_BTSP - previous_frames(patches_BTSP))
        return out


class FlowInput(nn.Linear):
    """The LAM encoder's flow input: per pixel, the difference to the previous frame times the horizontal and the
    vertical gradient of the two frames' mean - the terms a Lucas-Kanade flow estimate sums - embedded per patch
    (``in_features`` = 2 x channels x patch²: the horizontal products' patch, then the vertical ones'). An edge
    moving right and one moving left give products of opposite sign, so the direction of motion is a linear
    feature instead of a product the encoder must learn to form. The first frame's products are zero."""

    # products of two pixel differences in [0, 1] are ~1e-2: x10 brings them near the other inputs' scale
    SCALE = 10.0

    def maps(self, x_BTCHW: Tensor) -> tuple[Tensor, Tensor]:
        """The horizontal and the vertical products, each ``(B, T, C, H, W)`` (zero at the image border)."""
        prev = previous_frames(x_BTCHW)
        diff = x_BTCHW - prev
        mean = 0.5 * (x_BTCHW + prev)
        grad_x = F.pad(0.5 * (mean[..., 2:] - mean[..., :-2]), (1, 1))  # central differences
        grad_y = F.pad(0.5 * (mean[..., 2:, :] - mean[..., :-2, :]), (0, 0, 1, 1))
        return grad_x * diff * self.SCALE, grad_y * diff * self.SCALE
