"""Policies applied to a model from outside before a strategy wraps it: activation checkpointing, compile."""

from __future__ import annotations

import types
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from genie.nn import STBlock, STTransformer
from genie.nn import compile_blocks as compile_st_blocks


def st_stacks(module: nn.Module) -> list[STTransformer]:
    return [m for m in module.modules() if isinstance(m, STTransformer)]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """An ST block's forward under activation checkpointing while it trains (its activations are recomputed in
    backward); plain in evaluation and without gradients (generation, validation)."""
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def checkpoint_activations(module: nn.Module, enabled: bool = True) -> int:
    """Recompute each ST block's activations in backward (memory for compute), or stop (``enabled=False``), for
    every ST block of ``module``; returns the number of blocks. The block's forward is replaced on the instance:
    names, parameters and state dicts stay as they are, so checkpoints and FSDP/XLA units do not change."""
    n = 0
    for block in module.modules():
        if isinstance(block, STBlock):
            n += 1
            if enabled:
                block.forward = types.MethodType(_checkpointed_forward, block)  # type: ignore[method-assign]
            else:
                block.__dict__.pop("forward", None)
    return n


def is_checkpointed(block: nn.Module) -> bool:
    return getattr(block.__dict__.get("forward"), "__func__", None) is _checkpointed_forward


def apply_policies(
    module: nn.Module, activation_checkpointing: bool = False, compile_blocks: bool = False
) -> int:
    """Turn on activation checkpointing in every ST stack of ``module`` and/or compile each ST block in place.
    Returns the number of ST blocks affected. Frozen parts (a dynamics stage's tokenizer) are left alone."""
    n = 0
    for stack in st_stacks(module):
        if not any(p.requires_grad for p in stack.parameters()):
            continue
        if activation_checkpointing:
            checkpoint_activations(stack)
        if compile_blocks:
            n += compile_st_blocks(stack)
        else:
            n += sum(isinstance(block, STBlock) for block in stack.modules())
    return n


class ScalePolicies(L.Callback):
    """Applies :func:`apply_policies` to the LightningModule before the strategy (DDP/FSDP) wraps it."""

    def __init__(self, activation_checkpointing: bool = False, compile_blocks: bool = False) -> None:
        self.activation_checkpointing = activation_checkpointing
        self.compile_blocks = compile_blocks
        self.blocks = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.activation_checkpointing or self.compile_blocks:
            self.blocks = apply_policies(pl_module, self.activation_checkpointing, self.compile_blocks)
