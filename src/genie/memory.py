"""Plan memory before launching: parameters, gradients, optimizer state, and activations per sample with and
without activation checkpointing — measured on the meta device (nothing allocated).

    python -m genie.memory +experiment=dynamics_11b                  # per device, FSDP over 1 device
    python -m genie.memory +experiment=dynamics_11b --devices 64     # sharded over 64 devices (FULL_SHARD)
    python -m genie.memory +experiment=tokenizer_tiny --batch 13

Activations are what autograd saves for backward during one training forward of one clip (the experiment's
``data.frames`` frames), counted exactly with saved-tensor hooks while the model runs on meta tensors, in fp32
and in bf16. With checkpointing each ST block keeps only its input, and one block's activations are rebuilt
at a time in backward. Parameters/gradients/AdamW moments are fp32 (bf16-mixed keeps fp32 master weights);
FULL_SHARD divides them by the number of devices, DDP does not. Attention is counted as PyTorch's reference
SDPA kernel saves it (with its attention matrices); the flash / memory-efficient kernels used on GPUs save
less, so the "plain" figures are an upper bound there.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from genie.nn import STTransformer


@dataclass
class MemoryPlan:
    experiment: str
    stage: str
    params: int
    frames: int
    activations_fp32: int  # bytes per sample, no checkpointing
    activations_bf16: int
    checkpointed_fp32: int  # bytes per sample with per-block checkpointing
    checkpointed_bf16: int
    batch_size: int = 1  # the experiment's data.batch_size
    global_batch_size: int | None = None  # its data.global_batch_size (the batch per optimizer step)
    accumulate: int = 1  # its trainer.accumulate_grad_batches

    def device_batch(self, devices: int = 1) -> int:
        """The clips one device takes per micro-batch as the experiment trains on ``devices`` devices:
        the global batch / (devices × accumulation steps) where the experiment sets one (as training splits
        it: an error where it does not split evenly), else its batch."""
        from genie.data.datamodule import per_device_batch

        if self.global_batch_size is None:
            return self.batch_size
        return per_device_batch(self.global_batch_size, devices, self.accumulate)

    def states(self, devices: int = 1, sharded: bool = True) -> dict[str, float]:
        """Bytes per device of fp32 weights, gradients and AdamW's two moments."""
        share = devices if sharded else 1
        return {
            "weights": 4 * self.params / share,
            "grads": 4 * self.params / share,
            "adam": 8 * self.params / share,
        }


def saved_bytes(fn: Any) -> int:
    """Bytes of the distinct tensors autograd saves while running ``fn()`` (meta tensors count by shape)."""
    seen: dict[int, int] = {}
    alive: list[torch.Tensor] = []  # hold every counted tensor, so that no id is reused during the count

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t  # views share their base's memory: count it once
        if id(base) not in seen:
            seen[id(base)] = base.numel() * base.element_size()
            alive.append(base)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_tensor_bytes(fn: Any) -> int:
    """Peak bytes of tensor memory that ``fn()`` allocates and holds at once (forward, autograd's saved
    tensors, backward's transient buffers, gradients): what ``torch.cuda.max_memory_allocated`` counts above
    its starting point on a GPU, measured on any device with real storage (not meta). Every operator's
    outputs are followed until their storage is freed; an output that aliases one of the operator's inputs
    (a view, an in-place result) is no new memory, so tensors that existed before (parameters, inputs) never
    count. Kernel-internal scratch is not seen. The process's resident size overstates this: the C
    allocator keeps freed pages."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    live: dict[int, int] = {}  # storage address -> bytes
    state = {"now": 0, "peak": 0}

    def free(key: int) -> None:
        state["now"] -= live.pop(key)

    class Follow(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            inputs = {
                t.untyped_storage().data_ptr()
                for t in tree_flatten((args, kwargs))[0]
                if isinstance(t, torch.Tensor)
            }
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                if t.device.type == "meta":
                    raise ValueError(
                        "peak_tensor_bytes needs tensors with storage, not meta ones; on the meta device "
                        "count what autograd keeps with saved_bytes"
                    )
                storage = t.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
                if size and key not in live and key not in inputs:
                    live[key] = size
                    state["now"] += size
                    state["peak"] = max(state["peak"], state["now"])
                    weakref.finalize(storage, free, key)  # (a storage's Python object lives as long as it)
            return out

    with Follow():
        fn()
    return state["peak"]


def _inputs(stage: str, model: nn.Module, frames: int, dtype: torch.dtype) -> Any:
    cfg: Any = model.cfg
    if stage == "dynamics":
        gh, gw = cfg.hw
        ids = torch.zeros(1, frames, gh * gw, dtype=torch.long, device="meta")
        actions = torch.zeros(1, frames, dtype=torch.long, device="meta")  # (no range check on meta)

        def run() -> None:  # (with a copy head, its mixture with the previous frame's tokens counts too)
            logits = model.forward_ids(ids, actions, prev_ids_BTS=ids)  # type: ignore[operator]
            F.cross_entropy(logits.flatten(0, 2).float(), ids.flatten()).backward()

        return run
    if stage == "lam" and cfg.input == "tokens":
        gh, gw = cfg.grid
        video = torch.zeros(1, frames, gh, gw, dtype=torch.long, device="meta")
    else:
        h, w = cfg.hw
        video = torch.zeros(1, frames, cfg.channels, h, w, dtype=dtype, device="meta")

    def run_vae() -> None:
        out = model(video)
        loss = out.loss if stage == "lam" else F.mse_loss(out.recon, video) + out.vq.loss
        loss.backward()

    return run_vae


def _activations(stage: str, model: nn.Module, frames: int, dtype: torch.dtype, checkpointing: bool) -> int:
    from genie.distributed.policies import checkpoint_activations

    model = model.to(dtype)
    model.eval()  # no data-dependent training branches (codebook restarts) on meta tensors ...
    stacks = [m for m in model.modules() if isinstance(m, STTransformer)]
    for stack in stacks:  # ... but the ST stacks train, so that checkpointing is active
        stack.train()
        checkpoint_activations(stack, checkpointing)
    saved = saved_bytes(_inputs(stage, model, frames, dtype))
    if not checkpointing:
        return saved
    # checkpointed blocks keep their input; backward rebuilds one block at a time (the largest)
    per_block = 0
    for stack in stacks:
        checkpoint_activations(stack, False)
    total_plain = saved_bytes(_inputs(stage, model, frames, dtype))
    depth = sum(stack.cfg.depth for stack in stacks) or 1
    outside = saved  # tensors saved outside the checkpointed blocks (embeddings, heads, losses)
    per_block = max(0, total_plain - outside) // depth
    inputs = sum(_block_input_bytes(stack, stage, model, frames, dtype) for stack in stacks)
    return outside + inputs + per_block


def _block_input_bytes(
    stack: STTransformer, stage: str, model: nn.Module, frames: int, dtype: torch.dtype
) -> int:
    cfg: Any = model.cfg
    if stage == "dynamics":
        tokens = cfg.hw[0] * cfg.hw[1] + (1 if cfg.action_mode == "prepend" else 0)
    elif stage == "lam":
        tokens = cfg.grid[0] * cfg.grid[1] + 1
    else:
        tokens = cfg.grid[0] * cfg.grid[1]
    return stack.cfg.depth * frames * tokens * stack.cfg.dim * torch.finfo(dtype).bits // 8


def plan(overrides: list[str]) -> MemoryPlan:
    from genie.config import compose_config
    from genie.params import build

    cfg = compose_config(overrides)
    stage, model, _ = build(cfg)
    frames = int(cfg.get("data", {}).get("frames") or 16)
    numbers = []
    for checkpointing in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            stage_, fresh, _ = build(cfg)
            numbers.append(_activations(stage_, fresh, frames, dtype, checkpointing))
    data, trainer = cfg.get("data", {}), cfg.get("trainer", {})
    return MemoryPlan(
        cfg.task_name,
        stage,
        sum(p.numel() for p in model.parameters()),
        frames,
        activations_fp32=numbers[0],
        activations_bf16=numbers[1],
        checkpointed_fp32=numbers[2],
        checkpointed_bf16=numbers[3],
        batch_size=int(data.get("batch_size") or 1),
        global_batch_size=data.get("global_batch_size"),
        accumulate=int(trainer.get("accumulate_grad_batches") or 1),
    )


def gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"


def report(p: MemoryPlan, devices: int = 1, batch: int | None = None, sharded: bool = True) -> str:
    """The plan as text; ``batch``: clips per device (None: the experiment's, :meth:`MemoryPlan.device_batch`)."""
    st = p.states(devices, sharded)
    whose = ""
    if batch is None:
        batch = p.device_batch(devices)
        whose = (
            f" (the experiment's: {p.global_batch_size} / ({devices} device{'s' if devices > 1 else ''}"
            f" x {p.accumulate} micro-batch{'es' if p.accumulate > 1 else ''}))"
            if p.global_batch_size is not None
            else " (the experiment's data.batch_size)"
        )
    state = sum(st.values())
    how = f"FULL_SHARD over {devices} devices" if sharded else f"replicated (DDP) on {devices} devices"
    lines = [
        f"{p.experiment} ({p.stage}): {p.params:,} params, clips of {p.frames} frames, {how}",
        f"  weights fp32 {gib(st['weights'])}  grads {gib(st['grads'])}  AdamW moments {gib(st['adam'])}"
        f"  -> {gib(state)} per device",
        "  activations per sample:      fp32          bf16",
        f"    plain                 {gib(p.activations_fp32):>12}  {gib(p.activations_bf16):>12}",
        f"    checkpointed blocks   {gib(p.checkpointed_fp32):>12}  {gib(p.checkpointed_bf16):>12}",
        f"  per device at batch {batch}{whose}: bf16 {gib(state + batch * p.activations_bf16)} plain, "
        f"{gib(state + batch * p.checkpointed_bf16)} checkpointed (+ temporaries, allocator slack ~10-20%)",
    ]
    return "\n".join(lines)


def _positive(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=_positive, default=1, help="devices the states are sharded over")
    parser.add_argument(
        "--batch",
        type=_positive,
        default=None,
        help="per-device batch for the total (default: the experiment's)",
    )
    parser.add_argument("--ddp", action="store_true", help="replicated states (DDP) instead of FULL_SHARD")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        p = plan(overrides)
        text = report(p, args.devices, args.batch, not args.ddp)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(text)


if __name__ == "__main__":
    main()
