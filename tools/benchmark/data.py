"""Data figures: clips/s streamed from shards against what a train step consumes."""

from __future__ import annotations

import time


def data_rate(quick: bool, consume_clips_per_s: float) -> dict[str, float]:
    """Clips/s streamed (decoded, resized, batched) from synthetic shards, against training consumption."""
    import tempfile

    from genie.data.pipeline import ClipStream
    from genie.data.synthetic import write_synthetic_shards

    with tempfile.TemporaryDirectory() as tmp:
        n = 64 if quick else 256
        write_synthetic_shards(tmp, train_clips=n, val_clips=2, clips_per_shard=64)
        stream = ClipStream(f"{tmp}/train-*.tar", frames=16, size=(64, 64), shuffle_buffer=32)
        start = time.perf_counter()
        count = sum(1 for _ in stream)
        rate = count / (time.perf_counter() - start)
    return {
        "stream_clips_per_s": rate,
        "train_clips_per_s": consume_clips_per_s,
        "ratio": rate / consume_clips_per_s,
    }
