"""Pretokenized clips: the frozen tokenizer's tokens (and the LAM's latent actions) per clip, written once, so
that the dynamics stage trains without re-encoding its clips every step.

A token shard mirrors its clip shard, one sample per clip: ``KEY.tokens.npz`` (``tokens``: ``T×h×w`` codebook
ids, uint16; ``latent_actions``: the ``T-1`` LAM ids when a LAM was given) and ``KEY.json`` (the clip's record:
its true actions when known, plus the source shard and key). The folder's ``manifest.json`` names the source
shards and the **fingerprints** (:func:`genie.models.io.fingerprint`) of the tokenizer and LAM that made the
tokens; training refuses tokens made by another tokenizer or LAM than the dynamics stage's own.

Whole stored clips are encoded: the causal tokenizer and LAM see each clip from its first frame. The pixel path
encodes each training window alone, so a random window that does not start at frame 1 sees its tokens with the
context of the frames before it here (identical for whole-clip windows, ``model.train_frames=null``). Pixel
augmentations cannot apply to tokens.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie.data.pipeline import ClipStream, expand_shards, resize_crop
from genie.data.shards import (
    add_member,
    atomic_write_text,
    claim_output_dir,
    decode_frames,
    run_jobs,
    shard_samples,
)

log = logging.getLogger(__name__)

TOKENS_EXT = "tokens.npz"
MANIFEST = "manifest.json"
FORMAT = "genie-tokens"


def encode_tokens(tokens_THW: np.ndarray, latent_actions: np.ndarray | None) -> bytes:
    arrays: dict[str, Any] = {"tokens": tokens_THW.astype(np.uint16)}
    if latent_actions is not None:
        arrays["latent_actions"] = latent_actions.astype(np.uint16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode_tokens(data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        latent = z["latent_actions"] if "latent_actions" in z.files else None
        return z["tokens"], latent


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a finished pretokenized folder; one-line errors for a folder that is not one."""
    root = Path(folder)
    path = root / MANIFEST
    if not root.is_dir():
        raise FileNotFoundError(f"no pretokenized folder at {root}; write one with tools/pretokenize.py")
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} has no {MANIFEST}: pretokenizing did not finish there; run the same tools/pretokenize.py "
            "command again to complete it"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pretokenized manifest (format {manifest.get('format')!r})")
    return dict(manifest)


# -- writing ----------------------------------------------------------------------------------------------
def _load_models(tokenizer: str, lam: str | None, device: str) -> tuple[Any, Any]:
    from genie.models.io import check_lam_tokenizer, load_lam, load_model

    tok = load_model(tokenizer, "tokenizer").to(device).eval()
    if not lam:
        return tok, None
    lam_model, lam_tokenizer = load_lam(lam)
    if lam_tokenizer is not None:  # a token-input LAM must read the ids of the tokenizer it learnt on
        check_lam_tokenizer(lam_tokenizer, tok, f"--lam {lam}")
    return tok, lam_model.to(device).eval()


def _tokenize_shard(
    src: str, dst: str, tokenizer: str, lam: str | None, batch_size: int, device: str, threads: int
) -> dict[str, int]:
    """Tokenize every clip of the shard ``src`` into the token shard ``dst`` (written under a temporary name,
    then renamed); unreadable clips are counted and skipped, a shard cut short keeps the clips before the cut."""
    import tarfile

    if threads > 0:
        torch.set_num_threads(threads)
    tok, lam_model = _load_models(tokenizer, lam, device)
    counts = {"clips": 0, "bad_clips": 0, "truncated": 0}
    tmp = f"{dst}.tmp{os.getpid()}"
    pending: list[tuple[str, np.ndarray, dict[str, Any]]] = []

    def flush(tar: tarfile.TarFile) -> None:
        if not pending:
            return
        frames = torch.from_numpy(np.stack([p[1] for p in pending])).to(device)
        video = frames.float().div_(255.0)
        with torch.no_grad():
            ids = tok.encode(video)
            tokens = ids.cpu().numpy()
            latent = None
            if lam_model is not None:
                latent = lam_model.infer_actions(ids if lam_model.reads_tokens else video).cpu().numpy()
        for i, (key, _, record) in enumerate(pending):
            add_member(
                tar, f"{key}.{TOKENS_EXT}", encode_tokens(tokens[i], None if latent is None else latent[i])
            )
            add_member(tar, f"{key}.json", json.dumps(record).encode())
        counts["clips"] += len(pending)
        pending.clear()

    size = tuple(tok.cfg.hw)
    try:
        with tarfile.open(tmp, "w") as tar:
            try:
                for key, parts in shard_samples(src):
                    npz, meta = parts.get("npz"), parts.get("json")
                    try:
                        if npz is None:
                            raise KeyError("no frames (.npz)")
                        frames = decode_frames(npz)
                        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                            raise ValueError(
                                f"frames {frames.dtype} {frames.shape} are not uint8 (T, H, W, 3)"
                            )
                        record = json.loads(meta) if meta else {}
                    except Exception as exn:  # a bad clip never stops the writer
                        counts["bad_clips"] += 1
                        log.warning("skipping an unreadable clip %s in %s (%s)", key, src, exn)
                        continue
                    fitted = resize_crop(torch.from_numpy(frames).permute(0, 3, 1, 2), size)
                    record.update({"source_shard": Path(src).name, "source_key": key})
                    if pending and pending[0][1].shape != tuple(fitted.shape):
                        flush(tar)  # clips of another length: a batch holds one shape
                    pending.append((key, fitted.numpy(), record))
                    if len(pending) >= batch_size:
                        flush(tar)
            except tarfile.ReadError as exn:
                counts["truncated"] += 1
                log.warning("shard %s is cut short; keeping the clips before the cut (%s)", src, exn)
            flush(tar)
        os.replace(tmp, dst)  # readers see whole shards only
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    atomic_write_text(f"{dst}.json", json.dumps(counts))
    return counts


def write_token_shards(
    shards: str | Sequence[str],
    out_dir: str | os.PathLike[str],
    tokenizer_ckpt: str | os.PathLike[str],
    lam_ckpt: str | os.PathLike[str] | None = None,
    batch_size: int = 16,
    workers: int = 1,
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Tokenize the clip shards ``shards`` (local paths, globs or brace patterns) into ``out_dir``: one token
    shard per clip shard, of the same name, plus ``manifest.json``.

    Resumable: a token shard already written (with the same settings: the same source shards, tokenizer and
    LAM, see ``settings.json``) is kept, so a killed run continues where it stopped; ``workers`` processes
    share the shards. Returns the manifest.
    """
    from genie.models.io import fingerprint, resolve_checkpoint

    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    sources = expand_shards(shards)
    if not sources:
        raise FileNotFoundError(f"no clip shards match {shards!r}; check the path or pattern")
    remote = [s for s in sources if "://" in s or s.startswith("pipe:")]
    if remote:
        raise ValueError(
            f"pretokenizing reads local shards only, got {remote[0]}; copy the shards here first"
        )
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"clip shard {missing[0]} does not exist")
    names = [Path(s).name for s in sources]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(
            f"two source shards are both named {clash[0]}; pretokenize each folder into its own output folder"
        )
    tok_path = str(resolve_checkpoint(str(tokenizer_ckpt), "tokenizer", "--tokenizer"))
    lam_path = str(resolve_checkpoint(str(lam_ckpt), "latent action model", "--lam")) if lam_ckpt else None
    tok, lam_model = _load_models(tok_path, lam_path, "cpu")
    lam_print = fingerprint(lam_model) if lam_model is not None else None
    identity: dict[str, Any] = {
        "tokenizer": {"checkpoint": tok_path, "fingerprint": fingerprint(tok)},
        "lam": {"checkpoint": lam_path, "fingerprint": lam_print} if lam_print else None,
    }
    out = Path(out_dir)
    settings = {
        "generator": "genie.data.tokens",
        "version": 1,
        "sources": [str(Path(s).resolve()) for s in sources],
        "tokenizer": identity["tokenizer"]["fingerprint"],
        "lam": lam_print,
    }
    claim_output_dir(out, settings, "token shards")
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else 0
    todo = [
        (src, str(out / Path(src).name), tok_path, lam_path, batch_size, device, threads)
        for src in sources
        if not (out / Path(src).name).exists() or not (out / f"{Path(src).name}.json").exists()
    ]
    run_jobs(_tokenize_shard, todo, len(sources), workers, progress)
    counts = {"clips": 0, "bad_clips": 0, "truncated": 0}
    for name in names:
        for k, v in json.loads((out / f"{name}.json").read_text()).items():
            counts[k] = counts.get(k, 0) + int(v)
    manifest = {
        "format": FORMAT,
        "version": 1,
        "shards": names,
        "sources": settings["sources"],
        **identity,
        "grid": list(tok.cfg.grid),
        "num_codes": tok.cfg.num_codes,
        "image_size": list(tok.cfg.hw),
        "num_actions": lam_model.cfg.num_actions if lam_model is not None else None,
        **counts,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


# -- reading ----------------------------------------------------------------------------------------------
class TokenStream(ClipStream):
    """Pretokenized clips as ``{"tokens": tokens_THW long, "latent_actions": (T-1) long (-1: none),
    "actions": (T-1) long (-1: unknown)}``; sharding, shuffling, bad-sample counting and ``repeat`` as
    :class:`ClipStream` (``frames``: the window; longer stored clips give a random window when repeating)."""

    def decode(self, sample: dict[str, Any], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        if TOKENS_EXT not in sample:
            hint = " (a clip shard: pretokenize it with tools/pretokenize.py)" if "npz" in sample else ""
            raise KeyError(
                f"sample {sample.get('__key__')} has no .{TOKENS_EXT} in {sample.get('__url__')}{hint}"
            )
        tokens, latent = decode_tokens(sample[TOKENS_EXT])
        record = json.loads(sample["json"]) if "json" in sample else {}
        t = tokens.shape[0]
        if tokens.ndim != 3:
            raise ValueError(f"tokens of shape {tokens.shape} are not (T, h, w)")
        if t < self.frames:
            raise ValueError(f"clip of {t} frames is shorter than the {self.frames} frames asked for")
        start = int(rng.integers(0, t - self.frames + 1)) if self.repeat else 0
        stop = start + self.frames
        out = {"tokens": torch.from_numpy(tokens[start:stop].astype(np.int64))}
        if latent is not None and len(latent) == t - 1:
            out["latent_actions"] = torch.from_numpy(latent[start : stop - 1].astype(np.int64))
        else:
            out["latent_actions"] = torch.full((self.frames - 1,), -1, dtype=torch.long)
        actions = record.get("actions")
        if actions is not None and len(actions) == t - 1:
            out["actions"] = torch.tensor(actions[start : stop - 1], dtype=torch.long)
        else:
            out["actions"] = torch.full((self.frames - 1,), -1, dtype=torch.long)
        return out
