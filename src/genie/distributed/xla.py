"""TPU pods and other PJRT devices through torch-xla: FSDP per ST block, data parallel, bf16 autocast."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import XLAAccelerator
from lightning.pytorch.plugins.precision import XLAPrecision
from lightning.pytorch.strategies import XLAStrategy
from torch import Tensor, nn

from genie.distributed.fsdp import block_classes

XLA_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class GenieXLAAccelerator(XLAAccelerator):
    """Lightning's XLA accelerator, also for a non-TPU PJRT device. Lightning's own counts TPU chips only and so
    refuses ``PJRT_DEVICE=CPU``; there (as torch-xla's launcher does for any non-TPU device) one process drives
    one device. On a TPU VM it behaves exactly like Lightning's."""

    @staticmethod
    def _on_tpu() -> bool:
        return os.environ.get("PJRT_DEVICE", "TPU").upper() == "TPU"

    @staticmethod
    def auto_device_count() -> int:  # type: ignore[override]
        return XLAAccelerator.auto_device_count() if GenieXLAAccelerator._on_tpu() else 1

    @staticmethod
    def is_available() -> bool:  # type: ignore[override]
        if GenieXLAAccelerator._on_tpu():
            return XLAAccelerator.is_available()
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> int | list[int]:
        if GenieXLAAccelerator._on_tpu():
            return XLAAccelerator.parse_devices(devices)
        if str(devices).strip() not in ("1", "auto", "-1"):
            raise ValueError(
                f"PJRT_DEVICE={os.environ.get('PJRT_DEVICE')} drives one XLA device per process; "
                f"set trainer.devices=1 (got {devices!r})"
            )
        return 1

    @staticmethod
    def get_parallel_devices(devices: int | list[int]) -> list[torch.device]:
        if GenieXLAAccelerator._on_tpu():
            return XLAAccelerator.get_parallel_devices(devices)
        return [torch.device("xla", 0)]


def xla_accelerator() -> GenieXLAAccelerator:
    """The accelerator for ``trainer=xla`` and ``trainer=xla_ddp`` (needs the ``xla`` extra: torch-xla, beside the torch it pins)."""
    try:
        import torch_xla  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"trainer=xla and trainer=xla_ddp need torch-xla ({err}); install the `xla` extra in its own venv "
            "(make test-xla builds .venv-xla: torch==2.9.0 torch-xla==2.9.0)"
        ) from None
    return GenieXLAAccelerator()  # PJRT_DEVICE unset: torch-xla picks TPU where there is one, else CPU


def xla_fsdp_strategy(compute_dtype: str = "bf16", sync_module_states: bool = False) -> GenieXLAFSDPStrategy:
    """Lightning's XLA strategy with torch-xla's FSDP: one ``XlaFullyShardedDataParallel`` unit per ST block
    inside one for the whole LightningModule. ``compute_dtype``: ``bf16`` (TPU) or ``fp32``; parameters and
    optimizer state stay fp32, sharded over the devices (each parameter sharded on its own: ST blocks hold
    few, large tensors). ``sync_module_states``: broadcast rank 0's initial weights first."""
    if compute_dtype not in XLA_DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(XLA_DTYPES)}, got {compute_dtype!r}")
    return GenieXLAFSDPStrategy(
        compute_dtype=XLA_DTYPES[compute_dtype], sync_module_states=sync_module_states
    )


def xla_ddp_strategy(compute_dtype: str = "bf16", sync_module_states: bool = True) -> GenieXLAStrategy:
    """Lightning's XLA strategy, data parallel: every device holds the whole model and the gradients are
    all-reduced before each step; ``compute_dtype`` ``bf16``: the forward under bf16 autocast (fp32 weights,
    optimizer state and VQ distances), or ``fp32``. ``sync_module_states``: rank 0's initial weights are
    broadcast first (each process initialises its own)."""
    if compute_dtype not in XLA_DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(XLA_DTYPES)}, got {compute_dtype!r}")
    return GenieXLAStrategy(
        precision_plugin=XLAAutocast(XLA_DTYPES[compute_dtype]), sync_module_states=sync_module_states
    )


class XLAAutocast(XLAPrecision):
    """Lightning's XLA precision (fp32 weights; gradients all-reduced by torch-xla before the step) with the
    forward passes under ``torch.autocast("xla", dtype)`` (no autocast for fp32)."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__("32-true")
        self.dtype = dtype

    def forward_context(self) -> Any:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast("xla", dtype=self.dtype)


class GenieXLAStrategy(XLAStrategy):
    """Lightning's XLA (data-parallel) strategy for ``trainer=xla_ddp``, also on one device (``PJRT_DEVICE=CPU``:
    Lightning's own refuses a world of one). With several devices ``torch.distributed`` runs on torch-xla's
    ``xla`` backend, so the VQ quantiser's collectives (usage and EMA statistics summed over the ranks,
    restarted codes broadcast from rank 0) keep one codebook on every replica."""

    strategy_name = "genie_xla_ddp"

    def setup_distributed(self) -> None:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]
        import torch.distributed as dist

        if self.world_size > 1 and not dist.is_initialized():
            import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" backend)

            dist.init_process_group("xla", init_method="xla://")


def _xla_units(module: nn.Module) -> list[tuple[str, Any]]:
    from torch_xla.distributed.fsdp import XlaFullyShardedDataParallel

    return [(n, m) for n, m in module.named_modules() if isinstance(m, XlaFullyShardedDataParallel)]


def _clean_name(name: str) -> str:
    """A name inside XLA FSDP wrappers as it was in the unwrapped module."""
    parts = [p for p in name.split(".") if p not in ("_fsdp_wrapped_module", "_fpw_module")]
    return ".".join(parts)


class GenieXLAFSDPStrategy(XLAStrategy):
    """Lightning's XLAStrategy that wraps the LightningModule in XLA FSDP, each ST block its own unit.

    - The optimizer is built (``configure_optimizers``) on the unwrapped module, so that its parameter groups
      see the real names and shapes, then pointed at the shards.
    - FSDP reduce-scatters the gradients itself: the precision plugin's extra all-reduce is switched off, and
      gradient clipping by norm uses FSDP's norm over all shards.
    - Checkpoints hold the full-shape weights (names as in the unwrapped module) and full-shape optimizer
      state, gathered from the shards; loading slices this process's shard back out. So its checkpoints load
      anywhere, and resuming on a different device count is possible by design (tested on one device only).
    - One device is allowed (``PJRT_DEVICE=CPU``: the same code path with a world of one).
    - After fitting, the module is unwrapped in place (full weights back as ordinary parameters), so that the
      same module can be validated, saved or wrapped again.
    """

    strategy_name = "genie_xla_fsdp"

    def __init__(self, compute_dtype: torch.dtype = torch.bfloat16, sync_module_states: bool = False) -> None:
        super().__init__(sync_module_states=sync_module_states)
        self.compute_dtype = compute_dtype

    def setup_distributed(self) -> None:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        rank_zero_only.rank = self.global_rank  # type: ignore[attr-defined]

    def setup(self, trainer: L.Trainer) -> None:
        from lightning.fabric.utilities.optimizer import _optimizers_to_device
        from lightning.pytorch.trainer.states import TrainerFn

        assert self.accelerator is not None and self.model is not None
        _refuse_inplace_codebooks(self.model)
        self.accelerator.setup(trainer)
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        if self._sync_module_states:
            from torch_xla.core.xla_model import broadcast_master_param

            broadcast_master_param(self.model)
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            self.setup_optimizers(trainer)  # on the full parameters: real names and shapes for the groups
        self.model = self._setup_model(self.model)
        if fitting:
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["params"] = [getattr(p, "_sharded_param", p) for p in group["params"]]
        self.setup_precision_plugin()
        self._patch_precision()
        if fitting:
            _optimizers_to_device(self.optimizers, self.root_device)

    def _setup_model(self, model: nn.Module) -> nn.Module:  # type: ignore[override]
        from torch_xla.distributed.fsdp import XlaFullyShardedDataParallel
        from torch_xla.distributed.fsdp.wrap import transformer_auto_wrap_policy

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=block_classes())
        return XlaFullyShardedDataParallel(
            model,
            auto_wrap_policy=policy,
            compute_dtype=self.compute_dtype,
            buffer_dtype=torch.float32,
            flatten_parameters=False,
        )

    def _patch_precision(self) -> None:
        plugin, strategy = self.precision_plugin, self

        def wrap_closure(optimizer: Any, closure: Callable[[], Any]) -> Any:
            return closure()  # FSDP has already reduce-scattered the gradients

        def clip_grad_by_norm(optimizer: Any, clip_val: float) -> None:
            model: Any = strategy.model
            model.clip_grad_norm_(clip_val)  # the norm over all shards

        plugin._xla_wrap_closure = wrap_closure  # type: ignore[method-assign]
        plugin.clip_grad_by_norm = clip_grad_by_norm  # type: ignore[method-assign]

    # ------------------------------------------------------------------ checkpoints: full shapes on disk
    def _gather(self, shards: list[Tensor]) -> list[Tensor]:
        """The full tensors of FSDP shards, on the CPU, in their original shapes (``_orig_size``, else the
        shard's own). The gathers are one XLA graph; slicing and reshaping happen on the host."""
        import torch_xla.core.xla_model as xm

        flats = [xm.all_gather(s.detach(), dim=0) if self.world_size > 1 else s.detach() for s in shards]
        xm.mark_step()
        out = []
        for s, flat in zip(shards, flats):
            shape = getattr(s, "_orig_size", s.shape)
            out.append(flat.cpu()[: shape.numel()].reshape(shape))
        return out

    def _shard_of(self, full: Tensor, like: Tensor) -> Tensor:
        """This process's shard of a full-shape tensor (flattened, zero-padded to the shard layout)."""
        flat = full.reshape(-1)
        padded = flat.new_zeros(like.numel() * self.world_size)
        padded[: flat.numel()] = flat
        return padded[self.global_rank * like.numel() : (self.global_rank + 1) * like.numel()].to(like.device)

    def _sharded_named(self) -> list[tuple[str, Any]]:
        """(name in the unwrapped LightningModule, shard parameter) for every shard, wrapped or not."""
        out = []
        assert self.model is not None
        for prefix, unit in _xla_units(self.model):
            for p in unit.sharded_params:
                out.append((_clean_name(f"{prefix}.{p._orig_name}" if prefix else p._orig_name), p))
        return out

    def lightning_module_state_dict(self) -> dict[str, Any]:
        assert self.model is not None
        if not _xla_units(self.model):
            return super().lightning_module_state_dict()
        import torch_xla.core.xla_model as xm

        xm.mark_step()
        named = self._sharded_named()
        state: dict[str, Any] = dict(zip([n for n, _ in named], self._gather([p for _, p in named])))
        for name, buf in self.model.named_buffers():
            state[_clean_name(name)] = buf.detach().cpu()
        return state

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        opt = getattr(optimizer, "_optimizer", optimizer)
        params = [p for g in opt.param_groups for p in g["params"]]
        if not any(hasattr(p, "_orig_size") for p in params):
            return super().optimizer_state(optimizer)
        sd = opt.state_dict()  # state keyed by parameter index, in param-group order
        jobs: list[tuple[int, str]] = []
        shards: list[Tensor] = []
        for idx, p in enumerate(params):
            for k, v in sd["state"].get(idx, {}).items():
                if hasattr(p, "_orig_size") and torch.is_tensor(v) and v.shape == p.shape:
                    jobs.append((idx, k))
                    shards.append(_like_shard(v, p))
        for (idx, k), full in zip(jobs, self._gather(shards)):
            sd["state"][idx] = {**sd["state"][idx], k: full}
        return sd

    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        from lightning.fabric.utilities.optimizer import _optimizer_to_device

        for optimizer, opt_state in zip(self.optimizers, checkpoint["optimizer_states"]):
            params = [p for g in optimizer.param_groups for p in g["params"]]
            state = dict(opt_state)
            state["state"] = {
                idx: {
                    k: self._shard_of(v, params[idx])
                    if torch.is_tensor(v)
                    and hasattr(params[idx], "_orig_size")
                    and v.shape == params[idx]._orig_size
                    else v
                    for k, v in st.items()
                }
                for idx, st in opt_state["state"].items()
            }
            optimizer.load_state_dict(state)
            _optimizer_to_device(optimizer, self.root_device)

    def teardown(self) -> None:
        if self.model is not None and _xla_units(self.model):
            self.model = _unwrap_xla_fsdp(self.model, self)
        super().teardown()


def _refuse_inplace_codebooks(module: nn.Module) -> None:
    """A trainable VQ codebook that is written in place during training (data init, dead-code restarts, EMA)
    cannot live in XLA FSDP: the writes land in gathered full weights that are freed after the forward pass."""
    from genie.nn.quantize import VectorQuantizer

    for name, m in module.named_modules():
        if not isinstance(m, VectorQuantizer):
            continue
        frozen = not m.training and not any(p.requires_grad for p in m.parameters())
        if not frozen and (not bool(m.initialized) or m.dead_code_steps > 0 or m.use_ema):
            raise ValueError(
                f"trainer=xla (XLA FSDP) would lose the in-place codebook updates of {name} (data init, "
                "dead-code restarts, EMA): train the tokenizer and LAM stages with trainer=xla_ddp (data parallel on "
                "the same devices) or trainer=gpu / trainer=ddp; trainer=xla trains the dynamics stage"
            )


def _like_shard(state: Tensor, shard: Tensor) -> Tensor:
    """An optimizer-state tensor of a shard, carrying the shard's original shape for :meth:`_gather`."""
    state = state.detach()
    state._orig_size = shard._orig_size  # type: ignore[attr-defined]
    return state


def _unwrap_xla_fsdp(root: nn.Module, strategy: GenieXLAFSDPStrategy) -> nn.Module:
    """Undo XLA FSDP in place: every unit's full parameters become ordinary parameters of their modules
    again (gathered from the shards), and every wrapper is replaced by the module it wraps."""
    for _, unit in reversed(_xla_units(root)):
        fulls = strategy._gather(list(unit.sharded_params))
        for (_, m, n), p, full_cpu in zip(unit.full_param_infos, unit.sharded_params, fulls):
            full = full_cpu.to(p.device)
            m.__dict__.pop(n, None)
            m.register_parameter(n, nn.Parameter(full, requires_grad=p.requires_grad))
        for _, _, m, n, shared_m, shared_n in unit.shared_full_param_infos:
            m.__dict__.pop(n, None)
            m.register_parameter(n, getattr(shared_m, shared_n))
    while True:
        units = _xla_units(root)
        if not units:
            return root
        name, unit = units[0]
        if name == "":
            root = unit.module.module  # FSDP -> its flatten-params wrapper -> the module itself
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(root.get_submodule(parent_name) if parent_name else root, child, unit.module.module)
