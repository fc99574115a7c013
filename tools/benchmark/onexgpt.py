"""Play against 1xgpt's ``STMaskGIT`` at equal dims: frames/s of one new frame's tokens, 25 MaskGIT steps.

1xgpt (github.com/1x-technologies/1xgpt, Apache-2.0) is not a dependency: pass a checkout with
``python tools/benchmark --onexgpt PATH``. Its package is also called ``genie``, so it is imported under its
own name for the duration of the import only (ours is put back), and the GPU/training-only packages it
imports at module level (xformers, mup, transformers, huggingface_hub) are stood in for where missing: on a
CPU it runs its plain attention (``XFORMERS_DISABLED``), no muP, no hub.

Both sides generate the 16th frame of a 16-frame window (15 context frames) from random weights, 25 steps,
temperature 1, batch 1: genie's :class:`~genie.models.sampling.Rollout` with its defaults (the KV cache;
``sampling.compile: auto``, so compiled blocks where a compiler exists) and eagerly (``compile=False``) against
``STMaskGIT.generate``. Rounds alternate between them so that a drift in this machine's speed moves all figures
and not their ratios.
"""

from __future__ import annotations

import importlib
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

# 1xgpt's small dims (the yardstick): 4 layers, d 256, 4 heads, 8x8 tokens, 1024 codes, 16 frames
DIMS = {"layers": 4, "dim": 256, "heads": 4, "side": 8, "codes": 1024, "frames": 16}


def _stand_ins() -> dict[str, types.ModuleType]:
    """Modules 1xgpt imports at load time but does not use on this path, for those not installed."""

    class _Readout(nn.Linear):  # mup.MuReadout (used only with use_mup)
        pass

    class _Output(dict):  # transformers.utils.ModelOutput (training outputs only)
        pass

    class _Hub:  # huggingface_hub.PyTorchModelHubMixin (loading from the hub only)
        pass

    made: dict[str, dict[str, Any]] = {
        "xformers": {},
        "xformers.ops": {
            "LowerTriangularMask": object,
            "memory_efficient_attention": None,
            "unbind": torch.unbind,
        },
        "mup": {"MuReadout": _Readout, "set_base_shapes": None, "normal_": None},
        "transformers": {},
        "transformers.utils": {"ModelOutput": _Output},
        "huggingface_hub": {"PyTorchModelHubMixin": _Hub},
    }
    out = {}
    for name, attrs in made.items():
        root = name.split(".")[0]
        try:
            importlib.import_module(root)
            continue
        except ImportError:
            pass
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        out[name] = mod
    return out


def load_stmaskgit(checkout: str | Path) -> tuple[Any, Any]:
    """``(STMaskGIT, GenieConfig)`` from a 1xgpt checkout, without disturbing our ``genie`` package."""
    root = Path(checkout).resolve()
    if not (root / "genie" / "st_mask_git.py").is_file():
        raise SystemExit(f"error: --onexgpt {checkout}: no genie/st_mask_git.py there; pass a 1xgpt checkout")
    os.environ.setdefault("XFORMERS_DISABLED", "true")  # its plain attention: xformers is GPU-only
    ours = {k: v for k, v in sys.modules.items() if k == "genie" or k.startswith("genie.")}
    stand_ins = _stand_ins()
    for k in ours:
        del sys.modules[k]
    sys.modules.update(stand_ins)
    sys.path.insert(0, str(root))
    try:
        st_mask_git = importlib.import_module("genie.st_mask_git")
        config = importlib.import_module("genie.config")
        st_mask_git.__dict__["tqdm"] = lambda steps, *args, **kwargs: steps  # its per-pass progress bar
        return st_mask_git.STMaskGIT, config.GenieConfig
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k == "genie" or k.startswith("genie.")]:
            del sys.modules[k]
        for k in stand_ins:
            sys.modules.pop(k, None)
        sys.modules.update(ours)


def play_vs_onexgpt(checkout: str | Path, quick: bool = False) -> dict[str, Any]:
    """Frames/s of genie's default cached rollout (and of the same run eagerly) and of 1xgpt's ``generate``
    at 1xgpt's small dims."""
    from genie.models.dynamics import DynamicsConfig, DynamicsModel
    from genie.models.sampling import Rollout, SamplingConfig

    STMaskGIT, GenieConfig = load_stmaskgit(checkout)
    d = DIMS
    s, t = d["side"] ** 2, d["frames"]
    torch.manual_seed(0)
    theirs = STMaskGIT(
        GenieConfig(
            num_layers=d["layers"],
            num_heads=d["heads"],
            d_model=d["dim"],
            T=t,
            S=s,
            image_vocab_size=d["codes"],
        )
    ).eval()
    st = {"dim": d["dim"], "depth": d["layers"], "num_heads": d["heads"]}
    cfg = DynamicsConfig(num_codes=d["codes"], grid=(d["side"], d["side"]), num_actions=8, transformer=st)
    prompt = torch.randint(0, d["codes"], (1, t - 1, d["side"], d["side"]))

    def genie_player(**sampling: Any) -> tuple[Any, bool]:
        """A frame of a rollout, and whether its timed frames run compiled."""
        torch.manual_seed(0)  # the same weights for both rollouts
        rollout = Rollout(
            DynamicsModel(cfg).eval(), SamplingConfig(steps=25, temperature=1.0, context_frames=t, **sampling)
        )
        rollout.start(prompt, torch.zeros(1, t - 2, dtype=torch.long))
        gen = torch.Generator().manual_seed(0)
        # "auto" compiles after context_frames full-window steps: warm up past them (the compile included)
        compiled = rollout.compiles and not quick
        for _ in range(t + 1 if compiled else 0):
            rollout.step(torch.zeros(1, dtype=torch.long), gen)
        return lambda: rollout.step(torch.zeros(1, dtype=torch.long), gen), compiled

    (genie_frame, genie_compiled), (genie_eager_frame, _) = genie_player(), genie_player(compile=False)

    flat = prompt.reshape(1, -1)

    def onexgpt_frame() -> None:
        theirs.generate(flat, None, max_new_tokens=s, maskgit_steps=25, temperature=1.0)

    players = {"genie": genie_frame, "genie_eager": genie_eager_frame, "onexgpt": onexgpt_frame}
    with torch.no_grad():
        for fn in players.values():  # warm-up (genie's compile, where it compiles)
            fn()
        rounds = 1 if quick else 3
        per = {"genie": 2 if quick else 6, "genie_eager": 2 if quick else 6, "onexgpt": 1 if quick else 2}
        seconds: dict[str, list[float]] = {name: [] for name in players}
        for _ in range(rounds):
            for name, fn in players.items():
                start = time.perf_counter()
                for _ in range(per[name]):
                    fn()
                seconds[name].append((time.perf_counter() - start) / per[name])
    fps = {name: 1 / statistics.median(s) for name, s in seconds.items()}
    return {
        "dims": dict(DIMS),
        "genie_fps": fps["genie"],
        "genie_eager_fps": fps["genie_eager"],
        "genie_compiled": genie_compiled,
        "onexgpt_fps": fps["onexgpt"],
        "ratio": fps["genie"] / fps["onexgpt"],
        "eager_ratio": fps["genie_eager"] / fps["onexgpt"],
        "threads": torch.get_num_threads(),
    }
