"""LightningDataModule over clip shards (streams with webdataset; makes synthetic shards when asked)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from genie.data.pipeline import ClipStream, expand_shards
from genie.data.synthetic import write_synthetic_shards
from genie.data.tokens import TokenStream, read_manifest
from genie.nn.options import size_pair


def per_device_batch(global_batch_size: int, devices: int, accumulate: int = 1) -> int:
    """The clips each of ``devices`` devices takes per micro-batch when ``global_batch_size`` clips make one
    optimizer step over ``accumulate`` micro-batches; a one-line error where it does not split evenly."""
    per_device, rest = divmod(global_batch_size, devices * accumulate)
    if rest or per_device < 1:
        raise ValueError(
            f"global_batch_size {global_batch_size} does not split over {devices} devices x "
            f"{accumulate} accumulation steps; choose a multiple of {devices * accumulate}"
        )
    return per_device


class ClipDataModule(L.LightningDataModule):
    """Train/val clip streams.

    ``synthetic``: keyword arguments of :func:`genie.data.synthetic.write_synthetic_shards`; when given and
    the shards are missing, ``prepare_data`` generates them (once per node) before training starts.
    ``make_hint``: the command that makes the shards, named in the error when they are missing.
    ``global_batch_size``: when set, the per-device ``batch_size`` becomes global / (world size × gradient
    accumulation), checked to divide evenly (the paper's batch sizes are global).
    ``train_tokens``: a folder written by ``tools/pretokenize.py``; the train stream then reads its token shards
    (``genie.data.tokens.TokenStream``: the dynamics stage trains without re-encoding clips) and validation stays
    on the pixel ``val_shards``. Its manifest is ``token_manifest``; the dynamics stage checks that its tokenizer
    and LAM made those tokens.
    """

    def __init__(
        self,
        train_shards: str | Sequence[str],
        val_shards: str | Sequence[str] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        frames: int = 16,
        val_frames: int | None = None,
        size: Sequence[int] = (64, 64),
        value_range: Sequence[float] = (0.0, 1.0),
        shuffle_buffer: int = 256,
        seed: int = 0,
        synthetic: dict[str, Any] | None = None,
        make_hint: str | None = None,
        global_batch_size: int | None = None,
        train_tokens: str | None = None,
    ) -> None:
        super().__init__()
        for name, value, least in (
            ("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1), ("num_workers", num_workers, 0),
            ("frames", frames, 1), ("val_frames", val_frames, 1), ("shuffle_buffer", shuffle_buffer, 0),
            ("global_batch_size", global_batch_size, 1),
        ):  # fmt: skip
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"data.{name} must be a whole number >= {least}, got {value!r}")
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.frames = frames
        self.val_frames = val_frames or frames
        self.size = size_pair(size, "data.size")
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.synthetic = dict(synthetic) if synthetic else None
        self.make_hint = make_hint
        self.global_batch_size = global_batch_size
        self.train_tokens = str(train_tokens) if train_tokens else None
        self.token_manifest: dict[str, Any] | None = None
        if self.train_tokens is not None:
            self.token_manifest = read_manifest(self.train_tokens)
        self.resume_step = 0  # set when training resumes: the train stream then starts a fresh shuffle

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            write_synthetic_shards(**self.synthetic)
        train = [] if self.train_tokens else _patterns(self.train_shards)
        missing = [p for p in train + _patterns(self.val_shards) if not _matches(p)]
        if missing:
            how = (
                f"make them with `{self.make_hint}`"
                if self.make_hint
                else "write shards there (docs/data.md)"
            )
            raise FileNotFoundError(
                f"no shards match {missing[0]!r}; {how} or point data.train_shards / data.val_shards at "
                "existing ones"
            )

    def setup(self, stage: str | None = None) -> None:
        if self.global_batch_size is None:
            return
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        self.batch_size = per_device_batch(self.global_batch_size, world, accumulate)

    def stream(self, split: str, repeat: bool) -> ClipStream:
        if split == "train" and self.train_tokens is not None:
            assert self.token_manifest is not None
            return TokenStream(
                [str(Path(self.train_tokens) / name) for name in self.token_manifest["shards"]],
                frames=self.frames,
                shuffle_buffer=self.shuffle_buffer,
                repeat=repeat,
                seed=self.seed + 7919 * self.resume_step,
            )
        urls = self.train_shards if split == "train" else self.val_shards
        if urls is None:
            raise ValueError(f"no {split} shards configured; set data.{split}_shards")
        return ClipStream(
            urls,
            frames=self.frames if split == "train" else self.val_frames,
            size=self.size,
            value_range=self.value_range,
            shuffle_buffer=self.shuffle_buffer if split == "train" else 0,
            repeat=repeat,
            seed=self.seed + (7919 * self.resume_step if split == "train" else 0),
        )

    def _loader(self, stream: ClipStream, batch_size: int) -> DataLoader:
        return DataLoader(
            stream,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.stream("train", repeat=True), self.batch_size)

    def val_dataloader(self) -> DataLoader:
        # Under DDP every rank must run the same number of val batches: loop the stream and let the
        # trainer's integer limit_val_batches cut it. On one process a single pass is exact.
        trainer = self.trainer
        repeat = trainer is not None and trainer.world_size > 1 and isinstance(trainer.limit_val_batches, int)
        return self._loader(self.stream("val", repeat=repeat), self.val_batch_size)


def _patterns(urls: str | Sequence[str] | None) -> list[str]:
    if urls is None:
        return []
    return [urls] if isinstance(urls, str) else [str(u) for u in urls]


def _matches(pattern: str) -> bool:
    if "://" in pattern or pattern.startswith("pipe:"):
        return True  # remote: checked when streamed
    paths = expand_shards(pattern)
    return bool(paths) and all(Path(p).exists() for p in paths)
