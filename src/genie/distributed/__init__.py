"""Scaling policies applied to a model from outside (the model files stay parallelism-free): ``fsdp`` (GPUs,
CPU processes), ``xla`` (TPU pods, PJRT devices), ``policies`` (activation checkpointing, compile).

- :func:`fsdp_strategy` — Lightning's ``FSDPStrategy`` that shards parameters per ST block (every
  :class:`genie.nn.STBlock` is one FSDP unit), ``FULL_SHARD`` / ``HYBRID_SHARD`` / ``SHARD_GRAD_OP``,
  bf16 parameters and compute with fp32 gradient reductions and buffers (``mixed_precision="bf16"``).
- :func:`ddp_strategy` — plain data parallel (``find_unused_parameters`` off: every parameter is used).
- :func:`xla_fsdp_strategy` + :func:`xla_accelerator` — the same per-block sharding on TPU pods (or any PJRT
  device; ``PJRT_DEVICE=CPU`` in ``make test-xla``) through torch-xla's ``XlaFullyShardedDataParallel`` on
  Lightning's XLA strategy: fp32 master weights and optimizer state, sharded; bf16 compute
  (``compute_dtype="bf16"``); checkpoints hold ordinary full-shape weights and optimizer state, so they load
  in one process or on GPUs, and their layout does not depend on the device count.
- :func:`xla_ddp_strategy` — data parallel on the same XLA devices (every chip a full replica, gradients
  all-reduced, bf16 autocast compute): for the tokenizer and LAM, whose VQ codebooks are written in place
  during training (data init, dead-code restarts, EMA), which XLA FSDP's gathered weights would lose.
- :class:`ScalePolicies` — a callback that, before the strategy wraps the model, turns on activation
  checkpointing (:func:`checkpoint_activations`: each trainable ST block's activations are recomputed in
  backward; the one checkpointing mechanism, applied to the block instances, so names and checkpoints do not
  change) and optionally compiles each block with ``torch.compile``.

Select them with ``trainer=ddp|fsdp|xla|xla_ddp`` (``conf/trainer/``); ``callbacks.scale`` holds the policies.
"""

from genie.distributed.fsdp import (
    SHARDING,
    GenieFSDPStrategy,
    block_classes,
    ddp_strategy,
    fsdp_strategy,
    mixed_precision_policy,
)
from genie.distributed.policies import (
    ScalePolicies,
    apply_policies,
    checkpoint_activations,
    is_checkpointed,
    st_stacks,
)
from genie.distributed.xla import (
    XLA_DTYPES,
    GenieXLAAccelerator,
    GenieXLAFSDPStrategy,
    GenieXLAStrategy,
    XLAAutocast,
    xla_accelerator,
    xla_ddp_strategy,
    xla_fsdp_strategy,
)

__all__ = [
    "SHARDING",
    "XLA_DTYPES",
    "GenieFSDPStrategy",
    "GenieXLAAccelerator",
    "GenieXLAFSDPStrategy",
    "GenieXLAStrategy",
    "ScalePolicies",
    "XLAAutocast",
    "apply_policies",
    "block_classes",
    "checkpoint_activations",
    "ddp_strategy",
    "fsdp_strategy",
    "is_checkpointed",
    "mixed_precision_policy",
    "st_stacks",
    "xla_accelerator",
    "xla_ddp_strategy",
    "xla_fsdp_strategy",
]
