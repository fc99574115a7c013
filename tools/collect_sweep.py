#!/usr/bin/env python
"""Collect a Hydra multirun's final losses and parameter counts into a CSV and a loss-vs-params plot.

    python -m genie.train -m +hparams_search=scaling
    python tools/collect_sweep.py multirun/scaling/<time> --out scaling.csv --plot scaling.png

Each job folder's .hydra/config.yaml gives the model (its parameters are counted on the meta device) and
its metrics.json the final held-out loss (dynamics: val/loss; tokenizer: val/recon_mse; LAM: val/recon).
Jobs that did not finish are listed with an empty loss. The plot needs matplotlib (the `plot` extra).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from genie.params import count

LOSS_KEYS = ("val/loss", "val/recon_mse", "val/recon")


def collect(sweep: Path) -> list[dict[str, Any]]:
    rows = []
    jobs = sorted((p.parent.parent for p in sweep.glob("**/.hydra/config.yaml")), key=lambda p: str(p))
    if not jobs:
        raise FileNotFoundError(f"no Hydra job folders (with .hydra/config.yaml) under {sweep}")
    for job in jobs:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        stage, params, _ = count(cfg)  # type: ignore[arg-type]
        metrics = json.loads((job / "metrics.json").read_text()) if (job / "metrics.json").exists() else {}
        key = next((k for k in LOSS_KEYS if k in metrics), None)
        rows.append(
            {
                "job": str(job.relative_to(sweep)) if job != sweep else ".",
                "experiment": cfg.get("task_name"),
                "stage": stage,
                "params": params,
                "loss": metrics.get(key, "") if key else "",
                "loss_key": key or "",
                "global_step": metrics.get("global_step", ""),
                "train_seconds": metrics.get("train_seconds", ""),
                "overrides": " ".join(overrides),
            }
        )
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((r for r in rows if r["loss"] != ""), key=lambda r: r["params"])
    if not done:
        raise ValueError("no finished jobs to plot (no metrics.json yet)")
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    xs, ys = [r["params"] for r in done], [float(r["loss"]) for r in done]
    ax.plot(xs, ys, "o-")
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{x / 1e6:.3g}M" if x < 1e9 else f"{x / 1e9:.3g}B", (x, y), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    if min(ys) > 0 and max(ys) / min(ys) > 3:
        ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(done[0]["loss_key"] or "final loss")
    ax.set_title(f"final loss vs parameters ({len(done)} runs)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="the multirun folder (multirun/<task>/<time>)")
    p.add_argument("--out", default=None, help="CSV path (default: <sweep>/sweep.csv)")
    p.add_argument("--plot", default=None, help="PNG path (default: <sweep>/sweep.png)")
    a = p.parse_args(argv)
    sweep = Path(a.sweep)
    try:
        rows = collect(sweep)
        out = Path(a.out) if a.out else sweep / "sweep.csv"
        write_csv(rows, out)
        png = Path(a.plot) if a.plot else sweep / "sweep.png"
        plot(rows, png)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for r in rows:
        loss = f"{float(r['loss']):.4f}" if r["loss"] != "" else "unfinished"
        print(f"{r['job']:>6}  {r['params']:>14,} params  {loss}  {r['overrides']}")
    print(f"-> {out}, {png}")
    return 0 if all(math.isfinite(float(r["loss"])) for r in rows if r["loss"] != "") else 1


if __name__ == "__main__":
    sys.exit(main())
