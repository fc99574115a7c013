#!/usr/bin/env python
"""Run `make demo` once per seed and tabulate its held-out metrics: mean, sd and min per metric, and how many
seeds meet each of the demo's targets.

    python tools/seed_sweep.py --seeds 0 1 2 3 4 --out demo-seeds       # five demos, ~12-15 min each on 2 cores
    python tools/seed_sweep.py --seeds 0 1 2 3 4 --out demo-seeds --collect   # only the table, from what exists

Each seed runs `python -m genie.demo seed=N` into OUT/seed-N (a finished seed is skipped, as the demo skips
finished stages) and the table goes to OUT/sweep.json and OUT/sweep.md (rewritten after every seed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from genie.data.shards import atomic_write_text

# The demo's targets: metric -> (threshold, what it means).
TARGETS: dict[str, tuple[float, str]] = {
    "tokenizer/psnr": (28.0, "tokenizer PSNR >= 28 dB"),
    "lam/codes_used": (4.0, ">= 4 LAM codes used"),
    "lam/nmi": (0.5, "LAM NMI >= 0.5"),
    "dynamics/delta_psnr_t4": (1.0, "ΔtPSNR (t=4) >= 1 dB"),
}
# "matmul_gflops": the machine's fp32 matmul rate during the run (the mean of the demo's probes at its start and
# end), without which a wall time cannot be compared across machines
REPORTED = [
    *TARGETS,
    "lam/probe_accuracy",
    "dynamics/psnr",
    "dynamics/ssim",
    "fvd",
    "seconds",
    "matmul_gflops",
]


def summarise(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean, sd (sample), min and max per metric over the seeds, and the seeds meeting each target."""
    table: dict[str, Any] = {"seeds": sorted(runs), "metrics": {}}
    for key in REPORTED:
        values = [float(r[key]) for r in runs.values() if key in r and r[key] is not None]
        if not values:
            continue
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        row: dict[str, Any] = {
            "mean": mean,
            "sd": sd,
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
        if key in TARGETS:
            row["met"] = sum(v >= TARGETS[key][0] for v in values)
        table["metrics"][key] = row
    return table


def markdown(table: dict[str, Any], runs: dict[int, dict[str, Any]]) -> str:
    seeds = table["seeds"]
    lines = [
        f"Seeds {', '.join(map(str, seeds))} ({len(seeds)} runs of `make demo`)",
        "",
        "| metric | mean | sd | min | max | target | seeds meeting it |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in table["metrics"].items():
        target = TARGETS.get(key)
        met = f"{row['met']} of {row['n']}" if target else ""
        lines.append(
            f"| {key} | {row['mean']:.3f} | {row['sd']:.3f} | {row['min']:.3f} | {row['max']:.3f} | "
            f"{target[1] if target else ''} | {met} |"
        )
    lines += ["", "| seed | " + " | ".join(REPORTED) + " |", "|---" * (len(REPORTED) + 1) + "|"]
    for seed in seeds:
        r = runs[seed]
        cells = [f"{float(r[k]):.3f}" if r.get(k) is not None else "" for k in REPORTED]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_run(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    out = dict(summary["evaluation"])
    timing = folder / "seconds.txt"
    if timing.exists():
        out["seconds"] = float(timing.read_text())
    rates = summary.get("machine", {}).get("matmul_gflops")
    if rates:
        out["matmul_gflops"] = sum(rates) / len(rates)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", default="demo-seeds", help="one folder per seed, and the table")
    p.add_argument("--collect", action="store_true", help="only tabulate the seeds already run")
    p.add_argument("overrides", nargs="*", help="extra overrides passed to every demo stage")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, Any]] = {}
    for seed in a.seeds:
        folder = out / f"seed-{seed}"
        run = read_run(folder)
        if run is None and not a.collect:
            print(f"[sweep] seed {seed}: python -m genie.demo seed={seed} -> {folder}", flush=True)
            start = time.time()
            env = {**os.environ, "DEMO_DIR": str(folder)}
            proc = subprocess.run([sys.executable, "-m", "genie.demo", f"seed={seed}", *a.overrides], env=env)
            if proc.returncode != 0:
                print(f"error: the demo with seed {seed} failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            atomic_write_text(folder / "seconds.txt", f"{time.time() - start:.0f}")
            run = read_run(folder)
        if run is not None:
            runs[seed] = run
            table = summarise(runs)
            atomic_write_text(out / "sweep.json", json.dumps({"table": table, "runs": runs}, indent=2))
            atomic_write_text(out / "sweep.md", markdown(table, runs))
    if not runs:
        print(f"error: no finished seed under {out}", file=sys.stderr)
        return 1
    print(markdown(summarise(runs), runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
