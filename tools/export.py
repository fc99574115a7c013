#!/usr/bin/env python
"""Export a trained checkpoint as safetensors + YAML config, loadable without Lightning, Hydra or pickles.

    python tools/export.py 'outputs/dynamics_tiny/*/checkpoints/last.ckpt' --out exported/platformer
    python tools/export.py demo/dynamics/checkpoints/last.ckpt --lam other_lam.ckpt --out exported/w2

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

from genie.models.io import checkpoint_components, resolve_checkpoint, save_pretrained


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .ckpt (or a glob: the newest match)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.yaml)")
    p.add_argument(
        "--tokenizer", default=None, help="use this tokenizer checkpoint instead of the embedded one"
    )
    p.add_argument("--lam", default=None, help="use this LAM checkpoint instead of the embedded one")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    a = p.parse_args(argv)
    try:
        ckpt = resolve_checkpoint(a.checkpoint, "model", "the checkpoint argument")
        parts, sampling = checkpoint_components(ckpt, a.tokenizer, a.lam)
        out = save_pretrained(a.out, parts, sampling, source=str(ckpt), overwrite=a.force)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k} {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M" for k, m in parts.items())
    print(f"exported {sizes} -> {out}/model.safetensors + config.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
