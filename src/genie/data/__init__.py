"""Clips as webdataset shards: the synthetic platformer, shard writing/reading, and streaming.

The Lightning DataModule lives in ``genie.data.datamodule`` (it imports lightning; this package does not).
"""

from genie.data.pipeline import ClipStream, expand_shards
from genie.data.shards import CLIP_FRAMES, FPS, ShardWriter, clip_record, read_shard
from genie.data.synthetic import ACTIONS, PlatformerConfig, generate_clips, write_synthetic_shards

__all__ = [
    "ACTIONS",
    "CLIP_FRAMES",
    "FPS",
    "ClipStream",
    "PlatformerConfig",
    "ShardWriter",
    "clip_record",
    "expand_shards",
    "generate_clips",
    "read_shard",
    "write_synthetic_shards",
]
