"""The ``conf/`` tree, composing it, and the one Hydra entry wrapper every command uses.

A user's mistake - a missing file, a wrong option, an override of the wrong type, an unknown experiment -
ends a command with one line (``error: ...``) and exit code 1, never a traceback;
``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def compose_config(overrides: Sequence[str], config_name: str = "train") -> DictConfig:
    """``config_name`` with these overrides, composed without starting a Hydra run (no output folder); an
    unknown experiment or a bad override is a ``ValueError`` carrying Hydra's message (with the options)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            return compose(config_name, overrides=[*overrides, "paths.output_dir=."])
        except HydraException as err:  # keep Hydra's list of options, not its search path
            raise ValueError(str(err).split("Config search path")[0].strip()) from None


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
            OmegaConf.resolve(cfg)
            body(cfg)
        except Exception as err:
            line = user_error(err, overrides, also)
            if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise SystemExit(f"error: {line}") from None

    return _main
