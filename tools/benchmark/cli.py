"""``python tools/benchmark``: run every CPU figure in one process (or the GPU ones), write JSON + markdown."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from genie.data.shards import atomic_write_text

from .attention import st_vs_full, st_vs_full_paper_grid
from .data import data_rate
from .gpu import gpu_main
from .onexgpt import play_vs_onexgpt
from .play import cpu_bf16, play_speed
from .train import dynamics_step, genie_over_plain, stage_step, tokenizer_step


def main() -> None:
    p = argparse.ArgumentParser(
        prog="tools/benchmark",
        description=sys.modules[__package__].__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="bench", help="folder for benchmark.json and benchmark.md")
    p.add_argument("--quick", action="store_true", help="smaller shapes (seconds, for tests)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU figures only")
    p.add_argument("--no-train", action="store_true", help="with --device cuda: the play figures only")
    p.add_argument("--no-play", action="store_true", help="with --device cuda: the training figures only")
    p.add_argument(
        "--paper-play-only", action="store_true",
        help="with --device cuda: only dynamics_2_7b / dynamics_11b play against the compute limit",
    )  # fmt: skip
    p.add_argument(
        "--onexgpt", metavar="PATH",
        help="a 1xgpt checkout: add play against its STMaskGIT at its small dims (genie / 1xgpt)",
    )  # fmt: skip
    p.add_argument("--onexgpt-only", action="store_true", help="with --onexgpt: only that figure")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.onexgpt_only:
        if not a.onexgpt:
            raise SystemExit("error: --onexgpt-only needs --onexgpt PATH (a 1xgpt checkout)")
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        vs = play_vs_onexgpt(a.onexgpt, a.quick)
        atomic_write_text(out / "onexgpt.json", json.dumps(vs, indent=2))
        print(onexgpt_row(vs))
        return
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(
                "error: --device cuda but CUDA is not available; run on a GPU machine or drop --device"
            )
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        if a.paper_play_only:
            gpu_main(out, train=False, play=False, paper=True)
        else:
            gpu_main(out, train=not a.no_train, play=not a.no_play)
        return
    n = 512 if a.quick else 1024
    # This VM's speed drifts by tens of percent within minutes: each train step is timed between matmul
    # probes and its fraction taken against the probes either side of it (against_matmul).
    tok = tokenizer_step(a.quick, n)
    dyn = dynamics_step(a.quick, n)
    # compiled figures (full run only: each compile takes tens of seconds here)
    dyn_c = dynamics_step(a.quick, n, compiled=True) if not a.quick else None
    dyn_plain = dynamics_step(a.quick, n, plain=True) if not a.quick else None
    steps = [r for r in (tok, dyn, dyn_c, dyn_plain) if r]
    # genie's blocks against plain ones, side by side, at the two widths of the 1xgpt comparison (issue #31)
    vs_plain = [genie_over_plain(d, a.quick) for d in ((256,) if a.quick else (256, 512))]
    samples = [r["matmul_flops_per_s"] for r in steps]
    peak = max(r["matmul_flops_per_s_max"] for r in steps)
    attn = st_vs_full(a.quick)
    attn_paper = st_vs_full_paper_grid()
    play = play_speed(a.quick)
    play_c = play_speed(a.quick, compiled=True) if not a.quick else None
    # the same under bf16 autocast (sampling.precision=bf16): cached only; fast where the CPU has bf16 units
    play_bf16 = play_speed(a.quick, compiled=True, precision="bf16", recompute=False) if not a.quick else None
    play_coinrun = play_speed(a.quick, "coinrun") if not a.quick else None
    stages = [
        stage_step(stage, dims, a.quick)
        for dims in (("tiny",) if a.quick else ("tiny", "coinrun"))
        for stage in ("tokenizer", "lam", "dynamics")
    ]
    # the dynamics stage on pretokenized clips (tools/pretokenize.py), beside its rows above
    pretokenized = [
        stage_step("dynamics", dims, a.quick, tokens=True)
        for dims in (("tiny",) if a.quick else ("tiny", "coinrun"))
    ]
    vs_onexgpt = play_vs_onexgpt(a.onexgpt, a.quick) if a.onexgpt else None
    # against the stage that consumes clips fastest (each reads whole 16-frame clips from the stream)
    data = data_rate(a.quick, max(r["clips_per_s"] for r in stages if r["dims"] == "tiny"))
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "matmul_flops_per_s": peak,
        "matmul_flops_per_s_medians": samples,
        "stage_train_steps": stages,
        "dynamics_train_steps_pretokenized": pretokenized,
        "tokenizer_train_step": tok,
        "dynamics_train_step": dyn,
        "dynamics_train_step_compiled_blocks": dyn_c,
        "dynamics_train_step_plain_blocks": dyn_plain,
        "train_genie_over_plain": vs_plain,
        "st_vs_full_attention": attn,
        "st_vs_full_attention_paper_grid": attn_paper,
        "play": play,
        "play_compiled": play_c,
        "play_compiled_bf16": play_bf16,
        "cpu_bf16_units": cpu_bf16(),
        "play_coinrun_dims": play_coinrun,
        "play_vs_onexgpt": vs_onexgpt,
        "data": data,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark.json", json.dumps(result, indent=2))
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| matmul fp32 (1024³) | {peak / 1e9:.1f} GFLOP/s (median per train-step figure: "
        f"{', '.join(f'{x / 1e9:.0f}' for x in samples)}) |",
        *(
            f"| train step: {r['stage']}, {r['dims']} dims (`{r['experiment']}`, {r['params'] / 1e6:.1f}M params, "
            f"{r['clips']} clip{'s' if r['clips'] > 1 else ''} of {r['clip_frames']} frames; trains on {r['frames_trained']} frames) | "
            f"{r['clips_per_s']:.2f} clips/s, {r['frames_per_s']:.1f} frames/s, {r['tokens_per_s']:,.0f} tokens/s |"
            for r in stages
        ),
        *(
            f"| the same dynamics step, {r['dims']} dims, on pretokenized clips (`data.train_tokens`) | "
            f"{r['clips_per_s']:.2f} clips/s = {r['clips_per_s'] / pixels['clips_per_s']:.1f}× the step on pixels |"
            for r in pretokenized
            for pixels in stages
            if pixels["stage"] == "dynamics" and pixels["dims"] == r["dims"]
        ),
        f"| tokenizer train step, tokenizer_tiny dims on 2-frame windows | {tok['frames_per_s']:.1f} frames/s, "
        f"{tok['tokens_per_s']:.0f} tokens/s |",
        f"| the same: achieved / matmul FLOP/s (probes either side of each step) | "
        f"{tok['fraction_of_matmul']:.2f} |",
        f"| dynamics train step (d {int(dyn['dim'])}) achieved / matmul FLOP/s (probes either side of each step) | "
        f"{dyn['fraction_of_matmul']:.2f} (target ≥ 0.8) |",
    ]
    if dyn_c:
        lines += [
            f"| the same with each ST block compiled (first step, compiling: {dyn_c['first_step_s']:.0f} s) | "
            f"{dyn_c['fraction_of_matmul']:.2f} (target ≥ 0.8) |"
        ]
    if dyn_plain:
        lines += [
            "| the same eager, the ST blocks without QK-norm and rotary positions (what those two cost) | "
            f"{dyn_plain['fraction_of_matmul']:.2f} |"
        ]
    lines += [
        f"| dynamics train step (d {r['dim']} × 2 blocks, eager), genie's ST blocks / plain ones (no QK-norm, "
        f"no rotary positions), side by side | {r['genie_s'] * 1e3:.0f} / {r['plain_s'] * 1e3:.0f} ms: "
        f"speed ratio {r['ratio']:.2f} (target ≥ 0.95) |"
        for r in vs_plain
    ]
    lines += [f"| full / ST attention step time, T={int(r['T'])} | {r['full_over_st']:.2f}× |" for r in attn]
    lines += [
        f"| ST / full attention activation memory, T={int(r['T'])}: materialised / fused attention | "
        f"{r['st_over_full_memory_math']:.2f}× / {r['st_over_full_memory']:.2f}× (target ≤ 0.2× at T=16) |"
        for r in attn
    ]
    lines += [
        f"| ST / full attention peak tensor memory of a train step, T={int(r['T'])}: materialised / fused attention | "
        f"{r['st_peak_bytes_math'] / 2**20:.0f} / {r['full_peak_bytes_math'] / 2**20:.0f} MiB = "
        f"{r['st_over_full_peak_math']:.2f}× / {r['st_over_full_peak']:.2f}× (target ≤ 0.2× at T=16) |"
        for r in attn
    ]
    lines += [
        f"| the same at the paper's 23×40 tokens per frame (meta device, materialised), T={int(r['T'])} | "
        f"{r['st_over_full_memory']:.2f}× (target ≤ 0.2× at T=16) |"
        for r in attn_paper
    ]
    lines += [
        f"| play (tiny dims), 25 MaskGIT steps: cached / recomputed window | {play['cached_fps']:.2f} / {play['recompute_fps']:.2f} "
        f"frames/s = {play['cache_speedup']:.1f}× (target ≥ 10×; ≥ 10 FPS) |",
        *(
            [
                f"| the same, compiled (`sampling.compile`) | {play_c['cached_fps']:.2f} / "
                f"{play_c['recompute_fps']:.2f} frames/s = {play_c['cache_speedup']:.1f}× |"
            ]
            if play_c
            else []
        ),
        *(
            [
                f"| the same cached, compiled, under bf16 autocast (`sampling.precision=bf16`; this CPU "
                f"{'has' if result['cpu_bf16_units'] else 'lacks'} AVX-512 BF16) | {play_bf16['cached_fps']:.2f} frames/s "
                "(target ≥ 10 FPS) |"
            ]
            if play_bf16
            else []
        ),
        *(
            [
                f"| play at CoinRun dims (d 512 x 12): cached / recomputed | {play_coinrun['cached_fps']:.2f} / "
                f"{play_coinrun['recompute_fps']:.3f} frames/s = {play_coinrun['cache_speedup']:.1f}× |"
            ]
            if play_coinrun
            else []
        ),
        *([onexgpt_row(vs_onexgpt)] if vs_onexgpt else []),
        f"| data: streamed / consumed by the fastest train step | {data['stream_clips_per_s']:.0f} / {data['train_clips_per_s']:.0f} "
        f"clips/s = {data['ratio']:.1f}× (target ≥ 5×) |",
    ]
    table = "\n".join(lines)
    atomic_write_text(out / "benchmark.md", table + "\n")
    print(table)
    print(f"\nwritten: {out / 'benchmark.json'}, {out / 'benchmark.md'}")


def onexgpt_row(vs: dict[str, Any]) -> str:
    """The markdown row of :func:`~benchmark.onexgpt.play_vs_onexgpt`."""
    how = "compiled" if vs["genie_compiled"] else "eager: no C++ compiler, or --quick"
    return (
        "| play at 1xgpt's small dims (d 256 × 4, 8×8 tokens, 25 steps, 16 frames; "
        f"{vs['threads']} thread{'s' if vs['threads'] != 1 else ''}): genie's defaults "
        f"({how}) / eager / 1xgpt's `STMaskGIT` | {vs['genie_fps']:.2f} / {vs['genie_eager_fps']:.2f} / "
        f"{vs['onexgpt_fps']:.2f} frames/s = {vs['ratio']:.1f}× / {vs['eager_ratio']:.1f}× (target ≥ 10×) |"
    )
