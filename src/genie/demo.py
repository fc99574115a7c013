"""``make demo``: the whole system on the embedded synthetic platformer, on CPU, in minutes.

Runs each stage through the same Hydra configs as ``python -m genie.train``; a stage whose
``metrics.json`` already exists in the demo folder is skipped, so re-running resumes.
Set ``DEMO_FAST=1`` for a minutes-long smoke version (CI).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from genie.train import conf_dir, train

FAST_DATA = [  # DEMO_FAST: a small dataset shared by every stage
    "data.synthetic.train_clips=200",
    "data.synthetic.val_clips=16",
    "data.synthetic.clips_per_shard=16",
]

# stage name → (experiment, overrides for the full demo, extra overrides for DEMO_FAST); "{root}" is the demo folder
STAGES: dict[str, tuple[str, list[str], list[str]]] = {
    "tokenizer": (
        "tokenizer_tiny",
        [],
        ["trainer.max_steps=30", "trainer.val_check_interval=30"],
    ),
    "lam": (
        "lam_tiny",
        [],
        ["trainer.max_steps=20", "trainer.val_check_interval=20"],
    ),
    "dynamics": (
        "dynamics_tiny",
        [
            "model.tokenizer_ckpt={root}/tokenizer/checkpoints/last.ckpt",
            "model.lam_ckpt={root}/lam/checkpoints/last.ckpt",
        ],
        ["trainer.max_steps=20", "trainer.val_check_interval=20", "model.sampling.steps=4"],
    ),
}


def run_stage(name: str, out_root: Path, fast: bool, extra: list[str]) -> dict[str, Any]:
    experiment, overrides, fast_overrides = STAGES[name]
    out_dir = out_root / name
    done = out_dir / "metrics.json"
    if done.exists():
        print(f"[demo] {name}: done already ({done}); delete it to redo")
        return dict(json.loads(done.read_text()))
    data_dir = out_root / "data"
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"+experiment={experiment}",
                f"paths.output_dir={out_dir}",
                f"paths.data_dir={data_dir}",
                "callbacks.rich_progress_bar=null",
                *(o.format(root=out_root) for o in overrides),
                *((FAST_DATA + fast_overrides) if fast else []),
                *extra,
            ],
        )
    OmegaConf.resolve(cfg)
    print(f"[demo] {name}: training {experiment} → {out_dir}")
    return train(cfg)


def play_gif(out_root: Path, clips: int = 2, seed: int = 0) -> Path:
    """Play the trained world from held-out first frames; rows per clip: the real clip, the world driven by
    the latent actions the LAM infers from that clip, and the world driven by random latent actions."""
    import torch

    from genie.data.pipeline import ClipStream
    from genie.media import save_gif, video_grid
    from genie.models import Genie

    genie = Genie.from_checkpoints(out_root / "dynamics" / "checkpoints" / "last.ckpt")
    stream = ClipStream(
        str(out_root / "data" / "synthetic-64" / "val-*.tar"), frames=16, size=genie.image_size
    )
    real = torch.stack([clip["video"] for _, clip in zip(range(clips), stream, strict=False)])
    inferred = genie.infer_actions(real)
    g = torch.Generator().manual_seed(seed)
    random_actions = torch.randint(0, genie.num_actions, inferred.shape, generator=g)
    played = genie.rollout(inferred, prompt=real[:, :1], seed=seed)
    wandering = genie.rollout(random_actions, prompt=real[:, :1], seed=seed)
    rows = [torch.stack((r, p, w)) for r, p, w in zip(real, played, wandering, strict=True)]
    return save_gif(video_grid(rows), out_root / "play.gif", fps=5)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fast = os.environ.get("DEMO_FAST", "0") not in ("", "0")
    out_root = Path(os.environ.get("DEMO_DIR", "demo-fast" if fast else "demo")).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = {name: run_stage(name, out_root, fast, args) for name in STAGES}
    summary = out_root / "metrics.json"
    summary.write_text(json.dumps(results, indent=2))
    lines = ["| stage | metric | value |", "|---|---|---|"]
    for stage, metrics in results.items():
        for key, value in metrics.items():
            if key.startswith("val/"):
                lines.append(f"| {stage} | {key} | {value:.4g} |")
    (out_root / "metrics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\n[demo] finished in {time.time() - start:.0f}s; everything is under {out_root}")
    print(f"[demo] metrics: {summary} and {out_root / 'metrics.md'}")
    gif = play_gif(out_root)
    print(f"[demo] reconstructions and rollouts: {out_root}/*/logs/media/")
    print(f"[demo] the world being played (rows: real clip | inferred latent actions | random ones): {gif}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
