"""Load trained models from checkpoints without Lightning or Hydra (pure torch, ``weights_only=True``).

A stage checkpoint holds its model under ``model.`` with its config in ``hyper_parameters["model"]``. A
dynamics checkpoint also carries the frozen tokenizer (``tokenizer.``) and the latent action model
(``lam.``) it was trained with, so it alone is a complete Genie.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.models.lam import LAMConfig, LatentActionModel
from genie.models.tokenizer import TokenizerConfig, VideoTokenizer

Stage = Literal["tokenizer", "lam", "dynamics"]
BUILDERS: dict[str, tuple[Any, Any]] = {
    "tokenizer": (TokenizerConfig, VideoTokenizer),
    "lam": (LAMConfig, LatentActionModel),
    "dynamics": (DynamicsConfig, DynamicsModel),
}
# Where each component lives inside a checkpoint of each stage: (hyper-parameter key, state-dict prefix).
_LOCATIONS: dict[str, list[tuple[str, str]]] = {
    "tokenizer": [("model", "model."), ("tokenizer_model", "tokenizer.")],
    "lam": [("model", "model."), ("lam_model", "lam.")],
    "dynamics": [("model", "model.")],
}


def resolve_checkpoint(pattern: str | Path | None, what: str, option: str) -> Path:
    """A checkpoint path, or the newest file matching a glob (e.g. ``outputs/tokenizer_tiny/*/checkpoints/last.ckpt``).

    ``what`` names the checkpoint and ``option`` the config key that sets it, for the error message.
    """
    if not pattern:
        raise ValueError(f"no {what} checkpoint given; set {option}=PATH/TO/last.ckpt")
    text = str(pattern)
    if any(ch in text for ch in "*?["):
        root = Path(text).anchor or "."
        rel = text[len(Path(text).anchor) :] if Path(text).anchor else text
        matches = sorted(Path(root).glob(rel), key=lambda p: p.stat().st_mtime)
        if not matches:
            raise FileNotFoundError(
                f"no {what} checkpoint matches {text}; train that stage first or set {option}=PATH"
            )
        return matches[-1]
    path = Path(text)
    if path.is_dir():
        raise FileNotFoundError(f"{what} checkpoint {path} is a folder; set {option}=PATH/TO/last.ckpt")
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint {path} does not exist; set {option}=PATH/TO/last.ckpt")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` with one-line errors for missing or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .ckpt file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any file torch cannot load (truncated, not a checkpoint, text: IndexError)
        first = str(err).splitlines()[0].split(". ")[0] if str(err) else type(err).__name__
        raise ValueError(
            f"checkpoint {path} is unreadable or truncated ({first}); use an earlier one"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not a genie checkpoint (no state_dict); pass a .ckpt written by genie.train"
        )
    return ckpt


def checkpoint_stage(ckpt: dict[str, Any]) -> str:
    hp = ckpt.get("hyper_parameters") or {}
    return str(hp.get("stage", "tokenizer"))  # tokenizer checkpoints from before stages were recorded


# Quantiser keys a tokenizer/LAM config held flat before ``vq`` (genie.nn.VQConfig) took them
_FLAT_VQ = {
    "vq_beta": "beta",
    "vq_ema": "use_ema",
    "vq_ema_decay": "ema_decay",
    "vq_l2": "l2_normalize",
    "dead_code_steps": "dead_code_steps",
    "vq_restart": "restart",
}


# Settings of the aids outside the paper that a LAM / dynamics config held flat before ``aids``
# (genie.models.aids.LAMAids / DynamicsAids) took them
_FLAT_AIDS = {
    "lam": (
        "recon_weight",
        "predict_residual",
        "motion_input",
        "window",
        "warp_radius",
        "warp_stride",
        "vq_warmup_steps",
        "decoder_mask_rate",
    ),
    "dynamics": ("full_mask_prob", "copy_radius"),
}


def _nest(values: dict[str, Any], group: str, names: dict[str, str]) -> dict[str, Any]:
    """``values`` with its flat keys ``names`` (old -> new name) moved into the nested mapping ``group``."""
    if not any(k in values for k in names):
        return values
    values = dict(values)
    nested = dict(values.get(group) or {})
    for old, new in names.items():
        if old in values:
            nested[new] = values.pop(old)
    values[group] = nested
    return values


def migrate_state(state: dict[str, Any]) -> dict[str, Any]:
    """Weights saved before the VQ warm-up became a module (``genie.models.aids.VQWarmup``) kept its step count
    as the LAM's ``train_steps``; it is now ``vq_warmup.train_steps`` (any prefix, e.g. ``model.`` or ``lam.``)."""
    renamed = {}
    for key, value in state.items():
        if (key == "train_steps" or key.endswith(".train_steps")) and not key.endswith(
            "vq_warmup.train_steps"
        ):
            key = key[: -len("train_steps")] + "vq_warmup.train_steps"
        renamed[key] = value
    return renamed


def _migrate(values: Any) -> Any:
    """Configs saved before ``qk_norm`` took names wrote it as a boolean: true meant ``"rms"``, false ``"none"``;
    before activation checkpointing became a policy (``genie.distributed``) an ST config carried
    ``checkpoint_activations`` (a training setting, dropped); before ``vq`` the quantiser's keys were flat."""
    if isinstance(values, dict):
        values = _nest(values, "vq", _FLAT_VQ)
        return {
            k: (
                {True: "rms", False: "none"}[v]
                if k == "qk_norm" and isinstance(v, bool)
                else v
                if k == "vq"  # already nested: its keys are the quantiser's own
                else _migrate(v)
            )
            for k, v in values.items()
            if k != "checkpoint_activations"
        }
    return values


# Aids removed after measuring no gain (docs/lab-notes.md), with the last commit that has them: a config that
# had one off loads without it; one trained with it on is refused
_REMOVED_AIDS = {"lam": {"decoder_motion": "9ce6fe1"}}


def _drop_removed_aids(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    aids = values.get("aids")
    if not isinstance(aids, dict):
        return values
    removed = _REMOVED_AIDS.get(stage, {})
    present = sorted(set(aids) & set(removed))
    if not present:
        return values
    for name in present:
        if aids[name]:
            raise ValueError(
                f"this {stage} was trained with aids.{name}, which was removed (it measured no gain, "
                f"docs/lab-notes.md); load it with genie at commit {removed[name]}"
            )
    return {**values, "aids": {k: v for k, v in aids.items() if k not in removed}}


def config_from_dict(stage: str, values: dict[str, Any]) -> Any:
    """A ``stage`` config from a plain mapping (a checkpoint's or a YAML file's), older spellings migrated."""
    values = _nest(_migrate(values), "aids", {k: k for k in _FLAT_AIDS.get(stage, ())})
    values = _drop_removed_aids(stage, values)
    cls = BUILDERS[stage][0]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {stage} config keys {unknown}; valid keys: {sorted(names)}")
    return cls(**values)


def build_from_state(stage: str, config: Any, state: dict[str, torch.Tensor], source: str = "") -> nn.Module:
    """Build a ``stage`` model from its config and load ``state`` strictly, naming mismatching keys."""
    cfg = config if not isinstance(config, dict) else config_from_dict(stage, config)
    model: nn.Module = BUILDERS[stage][1](cfg)
    try:
        missing, unexpected = model.load_state_dict(migrate_state(state), strict=False)
    except RuntimeError as err:  # shape mismatches: name the keys
        sizes = [ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln]
        raise ValueError(
            f"{stage} weights{' in ' + source if source else ''} do not match its config: {'; '.join(sizes[:4]) or err}"
        ) from err
    if missing or unexpected:
        raise ValueError(
            f"{stage} weights{' in ' + source if source else ''} do not match its config: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}"
        )
    return model.eval()


def load_model(path: str | Path, stage: Stage, ckpt: dict[str, Any] | None = None) -> nn.Module:
    """The ``stage`` model stored in a checkpoint (its own stage's, or a component of a dynamics one)."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    hp = ckpt.get("hyper_parameters") or {}
    own = checkpoint_stage(ckpt)
    for key, prefix in _LOCATIONS[stage]:
        if key == "model" and own != stage:
            continue
        if hp.get(key) is None:
            continue
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        if state:
            return build_from_state(stage, hp[key], state, str(path))
    raise ValueError(f"{path} is a {own} checkpoint and holds no {stage} model; pass a {stage} checkpoint")


def load_lam(
    path: str | Path, ckpt: dict[str, Any] | None = None
) -> tuple[LatentActionModel, VideoTokenizer | None]:
    """A checkpoint's LAM and, where it reads tokens (``input="tokens"``), the tokenizer whose ids it was trained
    on: a LAM checkpoint stores that tokenizer, and in a dynamics checkpoint it is the dynamics model's own."""
    ckpt = ckpt if ckpt is not None else read_checkpoint(path)
    lam = load_model(path, "lam", ckpt)
    assert isinstance(lam, LatentActionModel)
    if not lam.reads_tokens:
        return lam, None
    tokenizer = load_model(path, "tokenizer", ckpt)
    assert isinstance(tokenizer, VideoTokenizer)
    return lam, tokenizer


def check_lam_tokenizer(lam_tokenizer: nn.Module, tokenizer: nn.Module, source: str) -> None:
    """Refuse a token-input LAM beside a tokenizer other than the one whose ids it was trained on: its codes
    would be read off another vocabulary. ``source`` names the LAM's checkpoint for the message."""
    if fingerprint(lam_tokenizer) != fingerprint(tokenizer):
        raise ValueError(
            f"the LAM {source} reads tokenizer ids (input=tokens) of another tokenizer than this one; use the "
            "tokenizer it was trained on, or train the LAM on this one (model.tokenizer_ckpt)"
        )


def fingerprint(model: nn.Module) -> str:
    """A digest of a model's config and weights (sha256, hex): the same model gives the same digest wherever it
    was saved (its own checkpoint, inside a dynamics checkpoint, a pretrained folder). Pretokenized shards
    record their tokenizer's and LAM's, so that a dynamics model is never trained on another model's tokens."""
    import hashlib
    import json

    digest = hashlib.sha256()
    cfg = getattr(model, "cfg", None)
    digest.update(json.dumps(_plain(cfg), sort_keys=True, default=str).encode())
    for name, value in sorted(model.state_dict().items()):
        tensor = value.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- pretrained directories: safetensors + YAML config, no pickles, no Lightning ----------------------------
PRETRAINED_FORMAT = "genie-pretrained"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def _plain(value: Any) -> Any:
    """Dataclasses/tuples → dicts/lists recursively (YAML-safe)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def checkpoint_components(
    path: str | Path, tokenizer: str | Path | None = None, lam: str | Path | None = None
) -> tuple[dict[str, nn.Module], dict[str, Any] | None]:
    """Every model a checkpoint holds (a dynamics one: dynamics, tokenizer, LAM), optionally replacing the
    tokenizer/LAM with other checkpoints', and the saved sampling settings."""
    ckpt = read_checkpoint(path)
    stage = checkpoint_stage(ckpt)
    hp = ckpt.get("hyper_parameters") or {}
    parts: dict[str, nn.Module] = {stage: load_model(path, stage, ckpt)}  # type: ignore[arg-type]
    if stage == "dynamics":
        parts["tokenizer"] = (
            load_model(tokenizer, "tokenizer") if tokenizer else load_model(path, "tokenizer", ckpt)
        )
        if lam:
            parts["lam"], lam_tokenizer = load_lam(lam)
            if lam_tokenizer is not None:
                check_lam_tokenizer(lam_tokenizer, parts["tokenizer"], str(lam))
        elif hp.get("lam_model") is not None:
            parts["lam"], lam_tokenizer = load_lam(path, ckpt)
            if tokenizer and lam_tokenizer is not None:
                check_lam_tokenizer(lam_tokenizer, parts["tokenizer"], str(path))
    sampling = hp.get("sampling") if isinstance(hp.get("sampling"), dict) else None
    return parts, sampling


def save_pretrained(
    out_dir: str | Path,
    parts: dict[str, nn.Module],
    sampling: Any = None,
    source: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir/model.safetensors`` (every component's weights under ``<component>.``) and
    ``out_dir/config.yaml`` (their configs, the sampling settings). Written to a temporary folder, then renamed."""
    import shutil

    import yaml
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose another output folder")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another folder or pass overwrite (--force)")
    unknown = sorted(set(parts) - set(BUILDERS))
    if unknown:
        raise ValueError(f"unknown components {unknown}; expected some of {sorted(BUILDERS)}")
    tensors = {
        f"{name}.{key}": value.detach().to("cpu").clone().contiguous()
        for name, model in parts.items()
        for key, value in model.state_dict().items()
    }
    config = {
        "format": PRETRAINED_FORMAT,
        "version": 1,
        "components": {name: _plain(model.cfg) for name, model in parts.items()},
        "sampling": _plain(sampling) if sampling is not None else None,
        "source": source,
    }
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": PRETRAINED_FORMAT})
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    return out


def load_pretrained(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, nn.Module], dict[str, Any] | None]:
    """The components of a pretrained folder (``{"tokenizer": ..., "lam": ..., "dynamics": ...}``, those it
    has) and its sampling settings. A config/weights mismatch names the mismatching keys."""
    import yaml
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a pretrained genie folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "write one with tools/export.py"
        )
    config = yaml.safe_load(cfg_path.read_text()) or {}
    if config.get("format") != PRETRAINED_FORMAT:
        raise ValueError(f"{cfg_path} is not a {PRETRAINED_FORMAT} config (format: {config.get('format')!r})")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except Exception as err:
        raise ValueError(f"{weights_path} is unreadable or truncated ({err}); export it again") from err
    parts: dict[str, nn.Module] = {}
    components = config.get("components") or {}
    for name, values in components.items():
        if name not in BUILDERS:
            raise ValueError(f"{cfg_path}: unknown component {name!r}; expected some of {sorted(BUILDERS)}")
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        parts[name] = build_from_state(name, dict(values), state, str(weights_path)).to(device)
    stray = sorted({k.split(".")[0] for k in tensors} - set(components))
    if stray:
        raise ValueError(f"{weights_path} has weights for {stray} that {cfg_path} does not describe")
    return parts, config.get("sampling")
