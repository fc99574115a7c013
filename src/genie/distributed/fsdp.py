"""Data parallel and FSDP on GPUs (and CPU processes over gloo): one FSDP unit per ST block."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from genie.nn import STBlock

SHARDING = ("FULL_SHARD", "HYBRID_SHARD", "SHARD_GRAD_OP", "NO_SHARD")


def block_classes() -> set[type[nn.Module]]:
    """The module types that become FSDP units (one per ST block)."""
    return {STBlock}


def mixed_precision_policy(kind: str | None) -> Any:
    """``"bf16"``: bf16 params/compute, fp32 gradient reduction and buffers; ``"fp32"`` / None: no policy."""
    if kind in (None, "fp32", "32"):
        return None
    if kind != "bf16":
        raise ValueError(f"mixed_precision must be 'bf16' or 'fp32', got {kind!r}")
    from torch.distributed.fsdp import MixedPrecision

    return MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, buffer_dtype=torch.float32)


def fsdp_strategy(
    sharding: str = "FULL_SHARD",
    mixed_precision: str | None = "bf16",
    cpu_offload: bool = False,
    state_dict_type: str = "full",
    process_group_backend: str | None = None,
    timeout_minutes: float = 30.0,
) -> Any:
    """Lightning ``FSDPStrategy`` wrapping each ST block. ``state_dict_type="full"`` saves ordinary
    checkpoints (gathered on rank 0) that load in a single process; ``"sharded"`` saves one file per rank
    (faster at 10B scale). HYBRID_SHARD shards within a node and replicates across nodes."""
    if sharding not in SHARDING:
        raise ValueError(f"sharding must be one of {SHARDING}, got {sharding!r}")
    if state_dict_type not in ("full", "sharded"):
        raise ValueError(f"state_dict_type must be 'full' or 'sharded', got {state_dict_type!r}")
    return GenieFSDPStrategy(
        auto_wrap_policy=block_classes(),
        sharding_strategy=sharding,  # type: ignore[arg-type]
        mixed_precision=mixed_precision_policy(mixed_precision),
        cpu_offload=cpu_offload,
        state_dict_type=state_dict_type,  # type: ignore[arg-type]
        process_group_backend=process_group_backend,
        timeout=timedelta(minutes=timeout_minutes),
        use_orig_params=True,  # per-parameter optimizer groups and torch.compile work as unsharded
        limit_all_gathers=True,
    )


class GenieFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, also allowed on CPU processes (gloo): the 2-process CPU tests shard the same
    way a GPU cluster does. (Lightning refuses a plain ``FSDPStrategy`` without a GPU accelerator, and torch's
    FSDP needs ``device_id=cpu`` to be told that CPU is meant.) Gradient clipping by norm (``trainer.
    gradient_clip_val``) uses FSDP's sharded ``clip_grad_norm_``, which Lightning's FSDP precision refuses."""

    def setup(self, trainer: L.Trainer) -> None:
        super().setup(trainer)
        plugin, strategy = self.precision_plugin, self

        def clip_grad_by_norm(optimizer: Any, clip_val: float) -> None:
            model: Any = strategy.model
            model.clip_grad_norm_(clip_val)  # norm over all shards, computed collectively

        plugin.clip_grad_by_norm = clip_grad_by_norm  # type: ignore[method-assign]

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )


def ddp_strategy(process_group_backend: str | None = None, static_graph: bool = False) -> Any:
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(
        process_group_backend=process_group_backend, find_unused_parameters=False, static_graph=static_graph
    )
