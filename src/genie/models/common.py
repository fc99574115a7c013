"""What the pixel models' configs share: frame geometry (patch grid, padding) and encoder/decoder access."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from genie.nn import STConfig


class PatchGeometry:
    """Mixin for dataclass configs with ``image_size`` (H, W), ``patch``, ``encoder`` and ``decoder``."""

    image_size: Sequence[int]
    patch: int
    encoder: STConfig | dict[str, Any]
    decoder: STConfig | dict[str, Any]

    @property
    def enc(self) -> STConfig:
        assert isinstance(self.encoder, STConfig)
        return self.encoder

    @property
    def dec(self) -> STConfig:
        assert isinstance(self.decoder, STConfig)
        return self.decoder

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image_size[0]), int(self.image_size[1])

    @property
    def padded_size(self) -> tuple[int, int]:
        """Frame size rounded up to whole patches (the paper's 90 rows become 92 with patch 4)."""
        h, w = self.hw
        p = self.patch
        return (-(-h // p) * p, -(-w // p) * p)

    @property
    def patch_grid(self) -> tuple[int, int]:
        ph, pw = self.padded_size
        return ph // self.patch, pw // self.patch

    def pad(self, video_BTCHW: Tensor) -> Tensor:
        """Zero-pad frames on the bottom/right to whole patches."""
        (h, w), (ph, pw) = self.hw, self.padded_size
        return F.pad(video_BTCHW, (0, pw - w, 0, ph - h)) if (ph, pw) != (h, w) else video_BTCHW
