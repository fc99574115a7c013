"""Vector quantisation (VQ-VAE, van den Oord et al. 2017) with usage statistics and dead-code restarts.

One quantiser serves the tokenizer (1024 codes × 32) and the latent action model (8 codes × 32).
Collapse — a few codes doing all the work — is the commonest failure of public Genie reimplementations,
so every call reports usage and perplexity, and codes unused for ``dead_code_steps`` training steps are
restarted on encoder outputs from the current batch.

``kind: fsq`` swaps in finite scalar quantisation (Mentzer et al. 2023, :class:`FiniteScalarQuantizer`): each
of a few latent dimensions is bounded and rounded to a handful of levels; the codes are the grid of level
combinations, so there is no codebook to collapse and no restart to tune.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from genie.nn.options import options_from


@dataclass
class QuantizerOutput:
    """What a quantiser call returns; ``...`` is the caller's leading shape."""

    z_q: Tensor  # (..., D): quantised vectors, straight-through gradient to the input
    indices: Tensor  # (...,) long
    loss: Tensor  # codebook + beta · commitment (scalar)
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor  # exp(entropy of this batch's code histogram)
    usage: Tensor  # fraction of codes used in this batch
    counts: Tensor  # (num_codes,) how often each code was picked in this batch


@dataclass
class VQConfig:
    """The quantiser's settings, one config for the tokenizer and the LAM (``model.model.vq`` in both); the
    codebook's size and code width belong to the model (``num_codes``/``code_dim``, ``num_actions``/``latent_dim``).
    The fields are :class:`VectorQuantizer`'s keyword arguments."""

    beta: float = 0.25  # commitment weight
    use_ema: bool = False  # codebook as an EMA of the assigned inputs (no codebook loss)
    ema_decay: float = 0.99
    l2_normalize: bool = False  # cosine look-up: inputs and codes on the unit sphere
    dead_code_steps: int = 50  # restart a code unused for this many training steps (0: never)
    restart: str = (
        "uniform"  # dead codes restart on random inputs ("uniform") or weighted by VQ error ("error")
    )
    # codebook dropout (as Jafar's ``codebook_dropout``): in training each code is withheld from each look-up with
    # this probability, so a vector sometimes takes its next-nearest code (0: the plain nearest code)
    dropout: float = 0.0
    # "vq": the nearest of a learned codebook (the paper); "fsq": finite scalar quantisation over ``levels``
    # (the fields above do not apply to it)
    kind: str = "vq"
    # fsq: levels per latent dimension; their product is the number of codes, their count the code width
    levels: list[int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("vq", "fsq"):
            raise ValueError(f"vq.kind must be 'vq' or 'fsq', got {self.kind!r}")
        if self.kind == "fsq" and (not self.levels or any(int(n) < 2 for n in self.levels)):
            raise ValueError(
                f"vq.kind=fsq needs vq.levels, a list of levels >= 2 per dimension, got {self.levels}"
            )
        if self.levels is not None:
            self.levels = [int(n) for n in self.levels]
        if self.restart not in ("uniform", "error"):
            raise ValueError(f"vq.restart must be 'uniform' or 'error', got {self.restart!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"vq.dropout must be in [0, 1), got {self.dropout}")
        if self.dead_code_steps < 0 or not 0.0 < self.ema_decay < 1.0 or self.beta < 0:
            raise ValueError(
                f"vq needs dead_code_steps >= 0, 0 < ema_decay < 1 and beta >= 0, got {self.dead_code_steps}, "
                f"{self.ema_decay} and {self.beta}"
            )


def as_vq_config(value: VQConfig | dict[str, Any] | None, **defaults: Any) -> VQConfig:
    """A :class:`VQConfig` from itself or a mapping (YAML), ``defaults`` under the mapping's values."""
    return options_from(VQConfig, value, "vq", **defaults)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantiser over the last axis.

    - ``use_ema``: codebook follows an exponential moving average of assigned inputs (no codebook loss).
    - ``l2_normalize``: inputs and codes live on the unit sphere (cosine-similarity look-up).
    - ``init_from_data``: the first training call sets the codebook to random input vectors of that batch
      (codes start where the data is, instead of waiting for restarts).
    - ``dead_code_steps``: a code unused for that many consecutive training steps is replaced by a random
      input vector of the batch (0 disables restarts). Under ``torch.distributed`` the replacements are
      broadcast from rank 0 and usage is summed over ranks, so all replicas keep one codebook.
    - ``restart``: how those input vectors are drawn: ``"uniform"`` (any vector alike) or ``"error"``
      (in proportion to each vector's squared distance to its code: new codes go where the codebook
      represents the data worst, e.g. the rare edges of a mostly flat image, not onto another copy of the
      commonest vector).
    - ``dropout``: codebook dropout - in training each code is withheld from each vector's look-up with this
      probability (a vector that loses every code keeps its nearest), so the decoder sees the next-nearest
      code now and then; evaluation always takes the nearest.
    Restarts run in fixed shapes whatever the number of dead codes: a candidate is drawn for every code and
    kept where the code is dead (error-weighted draws without replacement as Gumbel top-k), so a training
    call never reads a value back from the device - on XLA each training step stays one graph, compiled once;
    on a GPU the step does not wait for the device. (``initialized`` is read once, by the first training call.)
    """

    unused_steps: Tensor
    initialized: Tensor
    ema_count: Tensor
    ema_sum: Tensor

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        beta: float = 0.25,
        use_ema: bool = False,
        ema_decay: float = 0.99,
        l2_normalize: bool = False,
        dead_code_steps: int = 50,
        init_from_data: bool = True,
        eps: float = 1e-5,
        restart: str = "uniform",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_codes < 1 or code_dim < 1:
            raise ValueError(f"num_codes and code_dim must be positive, got {num_codes} and {code_dim}")
        if restart not in ("uniform", "error"):
            raise ValueError(f"restart must be 'uniform' or 'error', got {restart!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"codebook dropout must be in [0, 1), got {dropout}")
        self.restart = restart
        self.dropout = dropout
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.beta = beta
        self.use_ema = use_ema
        self.ema_decay = ema_decay
        self.l2_normalize = l2_normalize
        self.dead_code_steps = dead_code_steps
        self.eps = eps
        embed = torch.randn(num_codes, code_dim)
        if l2_normalize:
            embed = F.normalize(embed, dim=-1)
        self.codebook = nn.Parameter(embed, requires_grad=not use_ema)
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(not init_from_data))
        self._known_initialized = not init_from_data  # ``initialized`` once read or set (see _is_initialized)
        if use_ema:
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", embed.clone())

    def relax(self, z: Tensor) -> Tensor:
        """The continuous stand-in for a code (a warm-up before the bottleneck closes): ``z`` as the look-up
        sees it."""
        return F.normalize(z, dim=-1) if self.l2_normalize else z

    def codes(self) -> Tensor:
        """The codebook as used for look-up: ``codes_KD``."""
        return F.normalize(self.codebook, dim=-1) if self.l2_normalize else self.codebook

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for ``indices`` of any shape: returns ``indices.shape + (D,)``."""
        return F.embedding(indices, self.codes())

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.code_dim:
            raise ValueError(
                f"quantiser expects vectors of size {self.code_dim} on the last axis, got {z.shape}"
            )
        lead = z.shape[:-1]
        # Distances in fp32: bf16 rounding would flip nearest-neighbour choices.
        with torch.autocast(device_type="cpu" if z.device.type == "meta" else z.device.type, enabled=False):
            z_ND = z.reshape(-1, self.code_dim).float()
            if self.l2_normalize:
                z_ND = F.normalize(z_ND, dim=-1)
            if self.training and not self._is_initialized():
                self._init_from_data(z_ND.detach())
            codes_KD = self.codes().float()
            dist_NK = (
                z_ND.pow(2).sum(-1, keepdim=True) - 2 * z_ND @ codes_KD.t() + codes_KD.pow(2).sum(-1)[None]
            )
            if self.training and self.dropout > 0:
                dist_NK = _drop_codes(dist_NK, self.dropout)
            idx_N = dist_NK.argmin(-1)
            q_ND = F.embedding(idx_N, codes_KD)
            counts_K = _histogram(idx_N, self.num_codes)

            commitment = F.mse_loss(z_ND, q_ND.detach())
            if self.use_ema:
                codebook_loss = torch.zeros((), device=z.device)
                if self.training:
                    self._ema_update(z_ND.detach(), idx_N, counts_K)
            else:
                codebook_loss = F.mse_loss(q_ND, z_ND.detach())
            loss = codebook_loss + self.beta * commitment

            perplexity, usage = _usage(counts_K)
            if self.training and self.dead_code_steps > 0:
                err_N = (z_ND - q_ND).detach().pow(2).sum(-1) if self.restart == "error" else None
                self._restart_dead_codes(z_ND.detach(), counts_K, err_N)

            # Straight-through estimator: forward uses the code, backward passes the gradient to z.
            z_q = z_ND + (q_ND - z_ND).detach()
        return QuantizerOutput(
            z_q=z_q.reshape(*lead, self.code_dim).to(z.dtype),
            indices=idx_N.reshape(lead),
            loss=loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment,
            perplexity=perplexity,
            usage=usage,
            counts=counts_K,
        )

    def _is_initialized(self) -> bool:
        """``initialized``, read from the device at most once per module (or loaded state): afterwards a Python
        flag answers, so training steps do not wait for the device to read it."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # read the loaded ``initialized`` on the next training call

    @torch.no_grad()
    def _init_from_data(self, z_ND: Tensor) -> None:
        pick = torch.randint(0, z_ND.shape[0], (self.num_codes,), device=z_ND.device)
        new_KD = z_ND[pick] + 1e-3 * torch.randn(self.num_codes, self.code_dim, device=z_ND.device)
        self._set_codes(torch.ones(self.num_codes, dtype=torch.bool, device=z_ND.device), new_KD)
        self.initialized.fill_(True)
        self._known_initialized = True

    @torch.no_grad()
    def _set_codes(self, which_K: Tensor, new_KD: Tensor) -> None:
        """Replace the codes ``which_K`` by their rows of ``new_KD`` (a row for every code, K x D: fixed
        shapes), the same on every rank (broadcast from rank 0)."""
        if self.l2_normalize:
            new_KD = F.normalize(new_KD, dim=-1)
        if _distributed():
            dist.broadcast(new_KD, src=0)
        new_KD = new_KD.to(self.codebook.dtype)
        which_K1 = which_K[:, None]
        self.codebook.data.copy_(torch.where(which_K1, new_KD, self.codebook.data))
        if self.use_ema:
            self.ema_sum.copy_(torch.where(which_K1, new_KD, self.ema_sum))
        if self.use_ema:
            self.ema_count.masked_fill_(which_K, 1.0)
        self.unused_steps.masked_fill_(which_K, 0)

    @torch.no_grad()
    def _ema_update(self, z_ND: Tensor, idx_N: Tensor, counts_K: Tensor) -> None:
        onehot_sum_KD = torch.zeros_like(self.ema_sum).index_add_(0, idx_N, z_ND)
        counts_K = counts_K.clone()
        if _distributed():
            dist.all_reduce(counts_K)
            dist.all_reduce(onehot_sum_KD)
        d = self.ema_decay
        self.ema_count.mul_(d).add_(counts_K, alpha=1 - d)
        self.ema_sum.mul_(d).add_(onehot_sum_KD, alpha=1 - d)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace smoothing
        self.codebook.data.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, z_ND: Tensor, counts_K: Tensor, err_N: Tensor | None = None) -> None:
        counts_K = counts_K.clone()
        if _distributed():
            dist.all_reduce(counts_K)
        self.unused_steps.add_(1).masked_fill_(counts_K > 0, 0)
        # counts are summed over ranks, so unused_steps (and dead_K) are already identical on every rank
        dead_K: Tensor = self.unused_steps >= self.dead_code_steps
        n, k = z_ND.shape[0], self.num_codes
        if err_N is None:
            pick_K = torch.randint(0, n, (k,), device=z_ND.device)
        else:  # in proportion to the quantisation error (uniformly where no vector has any)
            weight_N = torch.where(err_N.sum() > 0, err_N, torch.ones_like(err_N))
            if n >= k:  # without replacement: the top k of log-weight + Gumbel noise (Gumbel top-k)
                u_N = torch.rand_like(weight_N).clamp(1e-12, 1 - 1e-7)
                keys_N = weight_N.clamp_min(1e-30).log() - (-u_N.log()).log()
                pick_K = keys_N.topk(k).indices  # in drawing order (as successive draws would come)
            else:  # fewer vectors than codes: with replacement
                pick_K = torch.multinomial(weight_N, k, replacement=True)
        # the i-th dead code takes the i-th draw, so a few dead codes take the first (likeliest) ones
        slot_K = (dead_K.long().cumsum(0) - 1).clamp_min(0)
        new_KD = z_ND[pick_K[slot_K]] + 1e-3 * torch.randn(k, self.code_dim, device=z_ND.device)
        self._set_codes(dead_K, new_KD)


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantisation (FSQ, Mentzer et al. 2023) over the last axis, one dimension per entry of
    ``levels``: each coordinate is bounded by a tanh to the range of its ``L`` levels and rounded
    (straight-through), so the codes are the ``prod(levels)`` points of a fixed grid in [-1, 1]^D. Nothing is
    learned here: no codebook to collapse, no commitment loss, no dead codes (the losses are zero; usage and
    perplexity are reported as by :class:`VectorQuantizer`)."""

    half_span: Tensor
    offset: Tensor
    basis: Tensor

    def __init__(self, levels: list[int]) -> None:
        super().__init__()
        if not levels or any(n < 2 for n in levels):
            raise ValueError(f"FSQ needs levels >= 2 per dimension, got {levels}")
        self.levels = [int(n) for n in levels]
        self.code_dim = len(levels)
        self.num_codes = math.prod(self.levels)
        lv = torch.tensor(self.levels, dtype=torch.float32)
        # levels sit at integers (odd L) or half-integers (even L) within +-(L-1)/2, the bins equally wide
        self.register_buffer("half_span", (lv - 1) / 2, persistent=False)
        self.register_buffer("offset", (lv % 2 == 0).float() / 2, persistent=False)
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]]), 0)
        self.register_buffer("basis", basis, persistent=False)

    def _bound(self, z: Tensor) -> Tensor:
        """Each coordinate squashed into (-L/2, L/2): L bins of width 1, symmetric about 0."""
        return torch.tanh(z) * (self.half_span + 0.5)

    def relax(self, z: Tensor) -> Tensor:
        """The bounded, unrounded latent on the codes' scale."""
        return self._bound(z.float()) / self.half_span

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"FSQ expects vectors of size {self.code_dim} on the last axis, got {z.shape}")
        lead = z.shape[:-1]
        with torch.autocast(device_type="cpu" if z.device.type == "meta" else z.device.type, enabled=False):
            bounded = self._bound(z.float())
            level = ((bounded - self.offset).round() + self.offset).clamp(-self.half_span, self.half_span)
            z_q = (bounded + (level - bounded).detach()) / self.half_span  # straight-through rounding
            digits = (level + self.half_span).round().long()  # 0 .. L-1 per dimension
            idx = (digits * self.basis).sum(-1)
            idx_N = idx.reshape(-1)
            counts_K = _histogram(idx_N, self.num_codes)
            perplexity, usage = _usage(counts_K)
            zero = torch.zeros((), device=z.device)
        return QuantizerOutput(
            z_q=z_q.to(z.dtype),
            indices=idx.reshape(lead),
            loss=zero,
            codebook_loss=zero,
            commitment_loss=zero,
            perplexity=perplexity,
            usage=usage,
            counts=counts_K,
        )

    def lookup(self, indices: Tensor) -> Tensor:
        """Code vectors for ``indices`` of any shape: returns ``indices.shape + (D,)``."""
        lv = torch.tensor(self.levels, device=indices.device)
        digits = (indices[..., None] // self.basis) % lv
        return (digits - self.half_span) / self.half_span


def _drop_codes(dist_NK: Tensor, p: float) -> Tensor:
    """``dist_NK`` with each entry withheld (set to +inf) with probability ``p``, except each row's nearest where
    the row would lose every code."""
    drop_NK = torch.rand_like(dist_NK) < p
    lost_N1 = drop_NK.all(-1, keepdim=True)
    keep_N1 = dist_NK.argmin(-1, keepdim=True)
    drop_NK = drop_NK.scatter(-1, keep_N1, drop_NK.gather(-1, keep_N1) & ~lost_N1)
    return dist_NK.masked_fill(drop_NK, float("inf"))


def _histogram(idx_N: Tensor, num_codes: int) -> Tensor:
    """How often each of ``num_codes`` codes was picked, ``counts_K`` (float). index_add rather than bincount: the
    same counts, and it also runs on meta tensors for memory plans."""
    return torch.zeros(num_codes, device=idx_N.device).index_add_(
        0, idx_N, torch.ones_like(idx_N, dtype=torch.float32)
    )


def _usage(counts_K: Tensor) -> tuple[Tensor, Tensor]:
    """A batch's code histogram as (perplexity: exp of its entropy, usage: the fraction of codes picked)."""
    probs_K = counts_K / counts_K.sum().clamp_min(1)
    return torch.exp(-(probs_K * torch.log(probs_K + 1e-10)).sum()), (counts_K > 0).float().mean()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def quantizer_from_config(
    num_codes: int, code_dim: int, cfg: VQConfig
) -> VectorQuantizer | FiniteScalarQuantizer:
    """The quantiser a model with ``num_codes`` codes of ``code_dim`` builds from its ``vq`` config."""
    if cfg.kind == "fsq":
        levels = cfg.levels or []
        fsq = FiniteScalarQuantizer(levels)
        if (fsq.num_codes, fsq.code_dim) != (num_codes, code_dim):
            raise ValueError(
                f"vq.levels={levels} make {fsq.num_codes} codes of width {fsq.code_dim}, but the model has "
                f"{num_codes} codes of width {code_dim}: set the code count to the levels' product and the "
                "code width to their count"
            )
        return fsq
    options = asdict(cfg)
    del options["kind"], options["levels"]
    return VectorQuantizer(num_codes, code_dim, **options)
