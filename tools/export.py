#!/usr/bin/env python
"""Export a trained checkpoint as safetensors + YAML config, loadable without Lightning, Hydra or pickles.

    python tools/export.py 'outputs/dynamics_tiny/*/checkpoints/last.ckpt' --out exported/platformer
    python tools/export.py demo/dynamics/checkpoints/last.ckpt --lam other_lam.ckpt --out exported/w2
    python tools/export.py demo/dynamics/checkpoints/last.ckpt --out pretrained/platformer --force \
        --prompt 'demo/data/synthetic-64/val-*.tar'          # what `make pretrained` ships (+ prompt.png)

then, in any PyTorch code:

    from genie.models import Genie
    genie = Genie.from_pretrained("exported/platformer")
    frame = genie.reset(image); frame = genie.step(3)

A dynamics checkpoint exports the whole world model (tokenizer, LAM, dynamics, sampling settings); a
tokenizer or LAM checkpoint exports that model (genie.models.io.load_pretrained).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genie.models.io import checkpoint_components, resolve_checkpoint, save_pretrained


def save_prompt(shards: str, path: Path, size: tuple[int, int]) -> None:
    """The first frame of the first clip of ``shards`` as a PNG (a prompt to play the exported world from)."""
    import numpy as np
    from PIL import Image

    from genie.data.pipeline import ClipStream

    clip = next(iter(ClipStream(shards, frames=1, size=size)), None)
    if clip is None:
        raise ValueError(f"no readable clip in {shards} for the prompt")
    frame = (clip["video"][0] * 255).round().byte().permute(1, 2, 0).numpy()
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.ascontiguousarray(frame)).save(tmp, format="PNG")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .ckpt (or a glob: the newest match)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.yaml)")
    p.add_argument(
        "--tokenizer", default=None, help="use this tokenizer checkpoint instead of the embedded one"
    )
    p.add_argument("--lam", default=None, help="use this LAM checkpoint instead of the embedded one")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument(
        "--prompt", default=None, help="shard pattern: also save its first clip's first frame as prompt.png"
    )
    a = p.parse_args(argv)
    try:
        ckpt = resolve_checkpoint(a.checkpoint, "model", "the checkpoint argument")
        parts, sampling = checkpoint_components(ckpt, a.tokenizer, a.lam)
        out = save_pretrained(a.out, parts, sampling, source=str(ckpt), overwrite=a.force)
        if a.prompt:
            save_prompt(a.prompt, out / "prompt.png", tuple(parts["tokenizer"].cfg.hw))
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for k, m in parts.items())
    print(f"exported {sizes} -> {out}/model.safetensors + config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
