"""Building blocks in pure torch + einops: attention, the ST-Transformer, vector quantisation, embeddings.

Importing this package never imports lightning or hydra.
"""

from genie.nn.attention import Attention, KVCache, KVCacheLayer
from genie.nn.embed import (
    LearnedPositions,
    apply_rope,
    grid_positions,
    patchify,
    rope_frequencies,
    unpatchify,
)
from genie.nn.graph import CapturedStep
from genie.nn.quantize import (
    FiniteScalarQuantizer,
    QuantizerOutput,
    VectorQuantizer,
    VQConfig,
    as_vq_config,
    quantizer_from_config,
)
from genie.nn.st_block import (
    MLP,
    STBlock,
    STConfig,
    STTransformer,
    as_st_config,
    block_causal_mask,
    compile_blocks,
    compiled_when,
)

__all__ = [
    "MLP",
    "Attention",
    "CapturedStep",
    "FiniteScalarQuantizer",
    "KVCache",
    "KVCacheLayer",
    "LearnedPositions",
    "QuantizerOutput",
    "STBlock",
    "STConfig",
    "STTransformer",
    "VQConfig",
    "VectorQuantizer",
    "apply_rope",
    "as_st_config",
    "as_vq_config",
    "block_causal_mask",
    "compile_blocks",
    "compiled_when",
    "grid_positions",
    "patchify",
    "quantizer_from_config",
    "rope_frequencies",
    "unpatchify",
]
