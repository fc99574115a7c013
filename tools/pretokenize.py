#!/usr/bin/env python
"""Tokenize clip shards once with a trained tokenizer (and LAM), so the dynamics stage trains on tokens.

    python tools/pretokenize.py --shards 'data/synthetic-64/train-*.tar' --out data/tokens-64 \\
        --tokenizer 'outputs/tokenizer_tiny/*/checkpoints/last.ckpt' --lam 'outputs/lam_tiny/*/checkpoints/last.ckpt'
    python -m genie.train +experiment=dynamics_tiny data.train_tokens=data/tokens-64

One token shard per clip shard, of the same name, and ``manifest.json`` with the fingerprints of the tokenizer
and LAM that made them: the dynamics stage refuses tokens of another tokenizer or LAM. Without ``--lam`` the
shards hold tokens and true actions only (for ``model.actions=true``). Re-running the same command keeps
finished shards (stop it any time); ``--workers`` processes share the shards. Validation stays on pixel clips.
"""

from __future__ import annotations

import argparse
import sys
import time

from genie.data.shards import print_progress
from genie.data.tokens import write_token_shards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, nargs="+", help="clip shards: paths, globs or brace patterns")
    p.add_argument("--out", required=True, help="output folder (token shards, manifest.json)")
    p.add_argument("--tokenizer", required=True, help="tokenizer checkpoint (a path or a glob: newest wins)")
    p.add_argument("--lam", default=None, help="LAM checkpoint: also store its latent actions")
    p.add_argument("--batch-size", type=int, default=16, help="clips encoded together")
    p.add_argument("--workers", type=int, default=1, help="processes tokenizing shards in parallel")
    p.add_argument("--device", default="cpu", help="torch device of the models (cpu, cuda)")
    a = p.parse_args(argv)
    start = time.time()
    try:
        manifest = write_token_shards(
            a.shards, a.out, a.tokenizer, a.lam, a.batch_size, a.workers, a.device, progress=print_progress
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 2
    print(
        f"\n{manifest['clips']} clips in {len(manifest['shards'])} token shards -> {a.out} "
        f"({time.time() - start:.0f}s; unreadable clips skipped: {manifest['bad_clips']}, "
        f"shards cut short: {manifest['truncated']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
