"""Where XLA needs other shapes than eager devices: one place for the forms a compiled XLA graph takes.

XLA compiles one graph per set of shapes, and reading a value back to the host cuts the step's graph in two.
So on an XLA device data-dependent shapes and host reads are avoided: windows are gathered with index tensors,
strided views become stacks of slices, masked selections become masks. Every such branch in the models asks
:func:`static_shapes`, so a reader finds them all from here.
"""

from __future__ import annotations

import torch
from torch import Tensor


def static_shapes(x: Tensor) -> bool:
    """True where ``x`` lives on an XLA device: keep shapes independent of values and never read values back."""
    return x.device.type == "xla"


def frame_window(x: Tensor, start: int, stop: int) -> Tensor:
    """``x[:, start:stop]``; on XLA a gather whose indices are data, so that one compiled graph serves every
    window position (a slice would bake the position into the graph: one compilation per position)."""
    if not static_shapes(x):
        return x[:, start:stop]
    return x.index_select(1, torch.arange(start, stop).to(x.device))


def windows(x: Tensor, dim: int, size: int, step: int, slices: bool | None = None) -> Tensor:
    """``x.unfold(dim, size, step)``: the windows along ``dim`` (their count in place of ``dim``, each window's
    elements on a new last axis) - a strided view; ``slices`` (the default on XLA, whose ``unfold`` reads the
    tensor back to the host, cutting the step's graph) stacks the windows as slices instead."""
    if not (static_shapes(x) if slices is None else slices):
        return x.unfold(dim, size, step)
    d = dim % x.dim()
    count = (x.shape[d] - size) // step + 1
    return torch.stack([x.narrow(d, i * step, size) for i in range(count)], d).movedim(d + 1, -1)
