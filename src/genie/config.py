"""The ``conf/`` tree, composing it, and the one Hydra entry wrapper every command uses.

A user's mistake - a missing file, a wrong option, an override of the wrong type, an unknown experiment -
ends a command with one line (``error: ...``) and exit code 1, never a traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

# Exceptions that mean "the input was wrong" (a file, an option, a value), not "the program is wrong"; a
# TypeError counts only where a config node failed to build (a value of the wrong type in it).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, ImportError)


def conf_dir() -> Path:
    """The ``conf/`` tree: $GENIE_CONF_DIR, else the repository's (editable install), else next to the package."""
    env = os.environ.get("GENIE_CONF_DIR")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve()
    candidates += [here.parents[2] / "conf", here.parent / "conf"]
    for c in candidates:
        if (c / "train.yaml").exists():
            return c
    raise FileNotFoundError(
        "cannot find the genie conf/ directory; install from a checkout (pip install -e .) or set GENIE_CONF_DIR"
    )


T = TypeVar("T")


def options(node: Any, cls: type[T]) -> T:
    """A dataclass of options (``EvalConfig``, ``CeilingConfig``, ...) from a config node, resolved."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(node, resolve=True)
    assert isinstance(values, dict)
    return cls(**{str(k): v for k, v in values.items()})


def choice(value: Any, names: Sequence[str], what: str) -> str:
    """``value``, one of the option ``what``'s ``names``; a YAML boolean reads as its name (``key=true`` on the
    command line reaches the code as the bool True, not the string "true"). Anything else is one clear error."""
    if isinstance(value, bool):
        value = str(value).lower()
    if value not in names:
        raise ValueError(f"{what} must be {', '.join(names[:-1])} or {names[-1]}, got {value!r}")
    return str(value)


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    from hydra import compose
    from hydra.errors import HydraException

    try:
        return compose(config_name, overrides=list(overrides))
    except HydraException as err:  # keep Hydra's list of options, not its search path
        raise ValueError(str(err).split("Config search path")[0].strip()) from None


def compose_config(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """``config_name`` with these overrides, composed without starting a Hydra run (no output folder); an
    unknown experiment, a bad override or a value of the wrong type (:func:`check_value_types`) is a
    ``ValueError`` carrying the reason (Hydra's, with the options)."""
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = _compose(config_name, [*overrides, "paths.output_dir=."])
        check_value_types(cfg, overrides, config_name)
        return cfg


def _kind(value: Any) -> str | None:
    """The type a config value's override must keep, or None where any value goes (strings, nulls)."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, ListConfig | list):
        return "a list like [a,b]"
    if isinstance(value, DictConfig | dict):
        return "a group of settings"
    return None


def _fits(kind: str, value: Any) -> bool:
    from omegaconf import DictConfig, ListConfig

    return {
        "true or false": isinstance(value, bool),
        "a whole number": isinstance(value, int) and not isinstance(value, bool),
        "a number": isinstance(value, int | float) and not isinstance(value, bool),
        "a list like [a,b]": isinstance(value, ListConfig | list),
        "a group of settings": isinstance(value, DictConfig | dict),
    }[kind]


def check_value_types(cfg: DictConfig, overrides: Sequence[str], config_name: str) -> None:
    """A ``key=value`` override of a config value keeps that value's type (``trainer.max_steps=abc`` is refused
    here with the key named, instead of failing somewhere inside Lightning). The types are the config's
    as composed without the value overrides (config groups and ``+experiment`` kept). Needs Hydra initialised
    (inside a Hydra run, or :func:`compose_config`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    checked, kept = [], []
    for raw, o in zip(overrides, parsed, strict=True):
        key = o.key_or_group
        is_group = (conf_dir() / key.replace(".", "/")).is_dir()
        if o.is_add() or o.is_delete() or o.is_sweep_override() or is_group or o.package:
            kept.append(raw)
        else:
            checked.append((raw, key))
    if not checked:
        return
    try:
        reference = _compose(config_name, [*kept, "paths.output_dir=."])
    except ValueError:
        return  # the command's own compose has the say
    for raw, key in checked:
        try:
            before = OmegaConf.select(reference, key, throw_on_missing=False)
            after = OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an interpolation that no longer resolves: the command reports it
            continue
        kind = _kind(before)
        # null means "unset" (e.g. the LAM's aids.window=null: the whole clip); the config's own checks decide
        if kind is not None and after is not None and not _fits(kind, after):
            shown = OmegaConf.to_container(before) if OmegaConf.is_config(before) else before
            raise ValueError(f"{raw}: {key} takes {kind} (the config has {str(shown)[:40]})")


def user_error(
    err: BaseException, overrides: Sequence[str] = (), also: tuple[type[BaseException], ...] = ()
) -> str | None:
    """The one line to show for ``err`` if it is a user's mistake (else None: a bug, keep the traceback).

    Unwraps what Hydra's ``instantiate`` and a DataLoader worker put around the real error; for a value of
    the wrong type, names the command-line overrides of the node that failed to build (``trainer.max_steps=abc``)."""
    from hydra.errors import HydraException, InstantiationException

    node = ""
    kinds = USER_ERRORS + also
    if isinstance(err, InstantiationException):
        text = str(err)
        if "full_key:" in text:
            node = text.rsplit("full_key:", 1)[1].strip().split()[0]
        cause = err.__cause__
        if cause is None:  # Hydra's own message (e.g. a bad _target_)
            return text.strip().splitlines()[0]
        err = cause
        kinds += (TypeError,)
    elif isinstance(err, HydraException) and not isinstance(err, kinds):
        return str(err).strip()
    if not isinstance(err, kinds):
        return None
    text = str(err)
    if "Original Traceback" in text:  # raised in a DataLoader worker: its last line is the error itself
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    line = " ".join(text.split())
    if node and isinstance(err, TypeError):  # torch's or Lightning's words on a value: name the key too
        mine = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].startswith(node)]
        hint = f"; check the override{'s' if len(mine) > 1 else ''} {', '.join(mine)}" if mine else ""
        line = f"cannot build {node} ({type(err).__name__}: {line}){hint}"
    return line


def hydra_entry(
    config_name: str, body: Callable[[DictConfig], Any], also: tuple[type[BaseException], ...] = ()
) -> Callable[[], None]:
    """A command's ``main``: ``@hydra.main`` over ``conf/<config_name>.yaml`` running ``body(cfg)`` (the config
    resolved), with a user's mistake (:data:`USER_ERRORS`, and ``also``) ending in one line and exit code 1."""
    import hydra
    from omegaconf import OmegaConf

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config_name)
    def _main(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
        try:
            check_value_types(cfg, overrides, config_name)
            OmegaConf.resolve(cfg)
            body(cfg)
        except Exception as err:
            line = user_error(err, overrides, also)
            if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(f"error: {line}") from None

    return _main
