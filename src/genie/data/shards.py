"""Webdataset shards of video clips: one sample per clip.

A sample is ``KEY.npz`` (``frames``: uint8 ``T×H×W×3``, zlib-compressed) and ``KEY.json`` (source, fps,
frame size, number of frames, true actions when known, anything else the writer adds). Each shard is
written under a temporary name and renamed when complete, so a reader never sees half a shard.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FPS = 10
CLIP_FRAMES = 16


def encode_frames(frames_THW3: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, frames=frames_THW3)
    return buf.getvalue()


def decode_frames(data: bytes) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return z["frames"]


def clip_record(
    frames_THW3: np.ndarray,
    *,
    source: str,
    fps: float = FPS,
    actions: Iterable[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON record stored beside a clip."""
    if frames_THW3.ndim != 4 or frames_THW3.shape[-1] != 3 or frames_THW3.dtype != np.uint8:
        raise ValueError(
            f"clip frames must be uint8 of shape (T, H, W, 3), got {frames_THW3.dtype} {frames_THW3.shape}"
        )
    t, h, w, _ = frames_THW3.shape
    record: dict[str, Any] = {"source": source, "fps": fps, "num_frames": t, "height": h, "width": w}
    if actions is not None:
        acts = [int(a) for a in actions]
        if len(acts) != t - 1:
            raise ValueError(f"a clip of {t} frames needs {t - 1} transition actions, got {len(acts)}")
        record["actions"] = acts
    record.update(extra)
    return record


class ShardWriter:
    """Write samples into ``pattern % index`` tar shards of at most ``max_count`` samples each.

    >>> with ShardWriter("out/train-%06d.tar", max_count=100) as w:
    ...     w.write("clip0", frames, record)
    """

    def __init__(self, pattern: str, max_count: int = 256, start_index: int = 0) -> None:
        if "%" not in pattern:
            raise ValueError(
                f"shard pattern {pattern!r} needs a %-format index, e.g. 'shards/train-%06d.tar'"
            )
        self.pattern = pattern
        self.max_count = max_count
        self.index = start_index
        self.count = 0
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: str | None = None

    def _open(self) -> None:
        path = self.pattern % self.index
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._tmp = f"{path}.tmp{os.getpid()}"
        self._tar = tarfile.open(self._tmp, "w")  # noqa: SIM115 (closed in _close or abort)
        self.count = 0

    def _close(self) -> None:
        if self._tar is None or self._tmp is None:
            return
        self._tar.close()
        final = self.pattern % self.index
        os.replace(self._tmp, final)  # atomic: readers see whole shards only
        self.paths.append(final)
        self._tar, self._tmp = None, None
        self.index += 1

    def _add(self, name: str, data: bytes) -> None:
        assert self._tar is not None
        add_member(self._tar, name, data)

    def write(self, key: str, frames_THW3: np.ndarray, record: dict[str, Any]) -> None:
        if "." in key or "/" in key:
            raise ValueError(
                f"sample key {key!r} must not contain '.' or '/' (webdataset splits names on them)"
            )
        if self._tar is None:
            self._open()
        self._add(f"{key}.npz", encode_frames(frames_THW3))
        self._add(f"{key}.json", json.dumps(record).encode())
        self.count += 1
        if self.count >= self.max_count:
            self._close()

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        """Drop the shard being written (used when the writer fails part-way)."""
        if self._tar is not None and self._tmp is not None:
            self._tar.close()
            Path(self._tmp).unlink(missing_ok=True)
            self._tar, self._tmp = None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _StrictTarInfo(tarfile.TarInfo):
    """Tar headers read as :mod:`tarfile` does, except that a file which ends where a header should start
    (or inside one) is corrupt: tarfile takes that for the end of the archive and silently drops the rest."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> _StrictTarInfo:
        try:
            return super().fromtarfile(tar)
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):  # type: ignore[attr-defined]
            if tar.offset == 0:
                raise  # tarfile's own "empty file" error
            raise tarfile.ReadError(
                f"truncated: the file ends at byte {tar.offset} with no tar header or end-of-archive "
                "marker there (a copy or download cut short); rewrite or re-download the shard"
            ) from None


def tar_members(fileobj: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every regular file of a tar stream, in order; ``tarfile.ReadError`` where the
    stream is cut short (in a member's data or its header)."""
    with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_StrictTarInfo) as tar:
        for member in tar:
            if not member.isreg():
                continue
            f = tar.extractfile(member)
            assert f is not None
            yield member.name, f.read()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add ``data`` to ``tar`` as the read-only file ``name``."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o444
    tar.addfile(info, io.BytesIO(data))


def shard_samples(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each sample of one local shard, streamed in order, grouped as webdataset
    groups them (consecutive files of one key: ``dir/key.tokens.npz`` is key ``dir/key``, extension
    ``tokens.npz``). A shard cut short raises ``tarfile.ReadError`` after the samples before the cut."""
    key: str | None = None
    parts: dict[str, bytes] = {}
    with open(path, "rb") as f:
        for name, data in tar_members(f):
            folder, slash, base = name.rpartition("/")
            stem, _, ext = base.partition(".")
            k = folder + slash + stem
            if k != key and key is not None:
                yield key, parts
                parts = {}
            key = k
            parts[ext] = data
    if key is not None:
        yield key, parts


def read_shard(path: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Every ``(key, frames_THW3, record)`` of one local shard, in order (no streaming machinery)."""
    for key, parts in shard_samples(path):
        yield key, decode_frames(parts["npz"]), json.loads(parts["json"])


# -- resumable shard-set writers (procgen, videos): shared bookkeeping ---------------------------------------
def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename (readers never see half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def claim_output_dir(out: Path, settings: dict[str, Any], what: str) -> None:
    """Prepare ``out`` for a resumable shard-set writer: refuse a folder made with other ``settings`` (naming
    the keys that differ), record ``settings.json``, drop the old manifest (rewritten when the set is complete)
    and the temporary files of shards a killed run left half-written."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "settings.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            raise ValueError(
                f"{out} holds {what} made with other settings ({', '.join(changed)} differ); "
                "use another output folder or delete that one"
            )
    atomic_write_text(path, json.dumps(settings, indent=1))
    (out / "manifest.json").unlink(missing_ok=True)
    for stale in out.glob("*.tar.tmp*"):
        stale.unlink()


def print_progress(done: int, total: int) -> None:
    """A one-line text progress bar for the shard-writing tools (``progress=`` of the writers)."""
    filled = 30 * done // max(total, 1)
    print(f"\rshards [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", flush=True)


def run_jobs(
    fn: Callable[..., Any],
    todo: Sequence[tuple[Any, ...]],
    total: int,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run ``fn(*job)`` for every job, in this process or ``workers`` processes, reporting ``progress(done,
    total)`` (``total`` counts the jobs already done in an earlier run)."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    done = total - len(todo)
    if progress:
        progress(done, total)
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            fn(*job)
            done += 1
            if progress:
                progress(done, total)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for fut in as_completed([pool.submit(fn, *job) for job in todo]):
            fut.result()
            done += 1
            if progress:
                progress(done, total)
