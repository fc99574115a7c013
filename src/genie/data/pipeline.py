"""Streaming clips from webdataset shards into ``video_BTCHW`` batches.

Shards are split across DDP ranks and dataloader workers so that every clip is read exactly once per epoch
(when there are fewer shards than readers, the split falls back to samples). A shard that is corrupt or
truncated is warned about, counted, and skipped; the stream goes on.
"""

from __future__ import annotations

import glob
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from genie.data.shards import decode_frames, tar_members
from genie.nn.options import size_pair

log = logging.getLogger(__name__)


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Shard paths/URLs from brace patterns (``a-{000..009}.tar``), shell globs of local files (``a-*.tar``),
    several patterns joined by ``::``, or a list of any of these."""
    if not isinstance(urls, str):
        return [u for pattern in urls for u in expand_shards(str(pattern))]
    out: list[str] = []
    for url in wds.shardlists.expand_urls(urls):
        if any(c in url for c in "*?[") and "://" not in url:
            out += sorted(glob.glob(url))
        else:
            out.append(url)
    return out


def reader_slot(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This reader's index among all (rank × dataloader worker) readers, and their number."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


@dataclass
class ErrorCount:
    """Problems met while streaming, by kind (per reader process)."""

    shards: int = 0
    samples: int = 0


class ClipStream(IterableDataset):
    """Clips from shards as ``{"video": video_TCHW float, "actions": actions_(T-1) long (-1 unknown)}``.

    - ``frames``: clip length; longer stored clips give a random window (train) or their start (eval).
    - ``size``: (H, W) frames are resized (short side) and centre-cropped to.
    - ``value_range``: pixels are mapped from [0, 255] to this range.
    - ``repeat``: loop over epochs forever (training); shard order and sample buffer reshuffle each epoch.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        frames: int = 16,
        size: Sequence[int] = (64, 64),
        value_range: Sequence[float] = (0.0, 1.0),
        shuffle_buffer: int = 0,
        repeat: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.shards = expand_shards(urls)
        if not self.shards:
            raise ValueError(f"shard pattern {urls!r} matched no shards; check the path or brace pattern")
        self.frames = frames
        self.size = size_pair(size, "data.size")
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.errors = ErrorCount()
        self._bad_shards: set[str] = set()
        self._last_error = ""
        self.epoch = 0

    def _shard_error(self, exn: Exception) -> bool:
        """webdataset handler for unreadable or truncated shards: warn, count, go on with the next shard."""
        where = str(exn.args)
        url = max((u for u in self.shards if u in where), key=len, default=where)
        if url not in self._bad_shards:  # one shard can raise twice (its file, then its tar stream)
            self._bad_shards.add(url)
            self.errors.shards += 1
        self._last_error = f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        log.warning("skipping the rest of an unreadable shard %s (%s)", url, self._last_error)
        return True

    def _sample_error(self, exn: Exception) -> None:
        self.errors.samples += 1
        self._last_error = f"{type(exn).__name__}: {exn}"
        log.warning("skipping an unreadable clip (%s)", self._last_error)

    def _empty_epoch(self, read: int) -> ValueError:
        """The error for an epoch in which this reader got no usable clip (looping on would hang)."""
        names = ", ".join(Path(u).name for u in self.shards[:3]) + (", ..." if len(self.shards) > 3 else "")
        if read == 0 and not self.errors.shards:
            why = "they hold no clips for this reader (fewer clips than dataloader workers x devices?)"
        else:
            why = f"{self.errors.shards} unreadable shards, {self.errors.samples} unreadable clips" + (
                f"; the last: {self._last_error}" if self._last_error else ""
            )
        return ValueError(
            f"a whole pass over the shards {names} ({len(self.shards)} in all) gave no usable clip: {why}; "
            "check them with tools/inspect_shards.py"
        )

    def _shard_urls(self, epoch: int) -> Iterator[dict[str, str]]:
        slot, slots = reader_slot(self.rank, self.world_size)
        shards = list(self.shards)
        if self.shuffle_buffer > 0:
            random.Random(self.seed + epoch).shuffle(shards)  # same order on every reader: disjoint split
        mine = shards[slot::slots] if len(shards) >= slots else shards
        for url in mine:
            yield {"url": url}

    def _files(self, epoch: int) -> Iterator[dict[str, Any]]:
        """The files of this reader's shards as webdataset's grouping takes them (``{}`` ends a shard); a
        shard cut short anywhere, a tar header included, is reported through :meth:`_shard_error`."""
        for source in wds.tariterators.url_opener(self._shard_urls(epoch), handler=self._shard_error):
            url, stream = source["url"], source["stream"]
            try:
                for name, data in tar_members(stream):
                    yield {"fname": name, "data": data, "__url__": url}
            except Exception as exn:
                exn.args = (*exn.args, url)
                self._shard_error(exn)
            finally:
                stream.close()
            yield {}

    def _samples(self, epoch: int) -> Iterator[dict[str, Any]]:
        slot, slots = reader_slot(self.rank, self.world_size)
        by_sample = len(self.shards) < slots  # too few shards for every reader: split samples instead
        raw = wds.tariterators.group_by_keys(self._files(epoch), handler=self._shard_error)
        for i, sample in enumerate(raw):
            if by_sample and i % slots != slot:
                continue
            yield sample

    def decode(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if "npz" not in sample:
            hint = (
                " (a token shard: train the dynamics on it with data.train_tokens=FOLDER)"
                if "tokens.npz" in sample
                else ""
            )
            raise KeyError(
                f"sample {sample.get('__key__')} has no frames (.npz) in {sample.get('__url__')}{hint}"
            )
        frames = decode_frames(sample["npz"])
        record = json.loads(sample["json"]) if "json" in sample else {}
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames of shape {frames.shape} are not (T, H, W, 3) RGB")
        if frames.dtype != np.uint8:
            raise ValueError(
                f"frames are {frames.dtype}, expected uint8 in 0-255 (write clips with ShardWriter)"
            )
        t = frames.shape[0]
        if t < self.frames:
            raise ValueError(f"clip of {t} frames is shorter than the {self.frames} frames asked for")
        start = int(rng.integers(0, t - self.frames + 1)) if self.repeat else 0
        video = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.frames]))
        video_TCHW = resize_crop(video.permute(0, 3, 1, 2), self.size)
        lo, hi = self.value_range
        video_TCHW = video_TCHW.float().div_(255.0).mul_(hi - lo).add_(lo)
        actions = record.get("actions")
        if actions is not None and len(actions) == t - 1:
            acts = torch.tensor(actions[start : start + self.frames - 1], dtype=torch.long)
        else:
            acts = torch.full((self.frames - 1,), -1, dtype=torch.long)
        return {"video": video_TCHW, "actions": acts}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        slot, _ = reader_slot(self.rank, self.world_size)
        epoch = self.epoch
        while True:
            rng = np.random.default_rng([self.seed, epoch, slot])
            buffer: list[dict[str, torch.Tensor]] = []
            read = good = 0
            for sample in self._samples(epoch):
                read += 1
                try:
                    item = self.decode(sample, rng)
                except Exception as exn:  # a bad sample never stops training
                    self._sample_error(exn)
                    continue
                good += 1
                if self.shuffle_buffer <= 1:
                    yield item
                    continue
                buffer.append(item)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
            rng.shuffle(buffer)  # type: ignore[arg-type,unused-ignore]
            yield from buffer
            if good == 0 and self.repeat:
                raise self._empty_epoch(read)
            epoch += 1
            if not self.repeat:
                return


def resize_crop(video_TCHW: torch.Tensor, size: tuple[int, int], fit: str = "crop") -> torch.Tensor:
    """Fit uint8 frames to ``size`` = (H, W) keeping their aspect: ``fit="crop"`` resizes the short side to the
    target and centre-crops the rest; ``fit="pad"`` resizes the long side and pads (black, centred)."""
    h, w = video_TCHW.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return video_TCHW
    if fit not in ("crop", "pad"):
        raise ValueError(f"fit must be 'crop' or 'pad', got {fit!r}")
    if fit == "crop":
        scale = max(th / h, tw / w)
        nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    else:
        scale = min(th / h, tw / w)
        nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
    x = F.interpolate(video_TCHW.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)
    if fit == "crop":
        top, left = (nh - th) // 2, (nw - tw) // 2
        return x[..., top : top + th, left : left + tw]
    out = torch.zeros((*x.shape[:-2], th, tw), dtype=torch.uint8)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[..., top : top + nh, left : left + nw] = x
    return out
