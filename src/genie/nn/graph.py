"""One fixed-shape generation step replayed as a CUDA graph.

Generating a frame at CoinRun scale is 25 MaskGIT passes through 12 ST blocks over 256 tokens: tens of
thousands of small kernels, each of which eager PyTorch launches from Python. On a GPU that launch overhead,
not arithmetic, sets the frame rate. Once the context window is full every step has the same shapes and,
with a bounded :class:`~genie.nn.KVCache`, the same memory, so the whole step can be recorded once as a CUDA
graph and replayed with one launch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from genie.nn.attention import KVCache


class CapturedStep:
    """Calls ``fn()`` - a step that reads its inputs from tensors the caller refills in place before each call
    and returns one tensor - and, on CUDA, replays it as a CUDA graph.

    On CUDA the first call runs ``fn`` eagerly on a side stream (the warm-up a capture needs: lazy
    initialisation, ``torch.compile``'s compilation), the second records it into a graph and replays it, and
    every later call replays it. Elsewhere every call runs ``fn``. The tensor returned on CUDA is the graph's
    own output buffer, overwritten by the next call: clone what you keep.

    ``fn``'s Python-side effects happen once, at capture, not on replays. The one such effect generation has
    is a :class:`KVCache` moving its window: name the caches ``fn`` advances by one frame per call in
    ``caches`` - their Python ``position`` is put back after the capture and moved on after each replay (their
    keys, values and device-side position are updated by the graph itself). Under ``torch.autocast`` the
    capture runs with autocast's weight-cast cache off, so that the casts are part of the graph.
    """

    def __init__(
        self, fn: Callable[[], Tensor], caches: Sequence[KVCache] = (), device: torch.device | None = None
    ):
        self.fn = fn
        self.caches = list(caches)
        self.cuda = device is not None and torch.device(device).type == "cuda"
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self._out: Tensor | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self) -> Tensor:
        self.calls += 1
        if not self.cuda:
            return self.fn()
        if self.graph is None and self.calls == 1:  # warm-up on a side stream, as graph capture needs
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.fn()
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._capture()
        assert self.graph is not None and self._out is not None
        self.graph.replay()
        for cache in self.caches:
            cache.position += 1
        return self._out

    def _capture(self) -> None:
        positions = [cache.position for cache in self.caches]
        graph = torch.cuda.CUDAGraph()
        amp = (
            torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
            if torch.is_autocast_enabled("cuda")
            else contextlib.nullcontext()
        )
        try:
            # thread_local: other threads (a web server's, say) may use CUDA while this one captures
            with amp, torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.fn()
        except Exception as e:
            raise RuntimeError(
                f"capturing the generation step as a CUDA graph failed ({type(e).__name__}: {e}); "
                "run without it: sampling.cuda_graph=false"
            ) from e
        finally:
            for cache, position in zip(self.caches, positions, strict=True):
                cache.position = position
        self.graph, self._out = graph, out
