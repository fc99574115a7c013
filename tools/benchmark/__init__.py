"""Benchmarks, measured in one run so ratios are stable on a noisy machine; writes JSON + a markdown table.

    python tools/benchmark [--out bench/] [--quick]

Figures:
- matmul FLOP/s of this machine (fp32; the yardstick for "how close to the limit");
- each stage's train step (tokenizer, LAM, dynamics) at tiny and CoinRun dims, as its experiment configures it
  (LightningModule training_step + its optimizer): clips/s, frames/s and tokens/s;
- the dynamics stage's step on pretokenized clips (``data.train_tokens``) beside its step on pixels;
- a tokenizer train step (tokenizer_tiny dims, 2-frame windows): achieved FLOP/s as a fraction of matmul FLOP/s;
- dynamics train step at d = 512 (fp32): achieved FLOP/s as a fraction of matmul FLOP/s (target >= 0.8),
  eager and with each ST block compiled (each step timed between matmul probes, against their mean), and
  eager with the blocks configured plain (no QK-norm, no rotary positions: what those two cost);
- ST attention vs full spatiotemporal attention: train step time, the activation memory autograd keeps and
  the step's peak tensor memory (``genie.memory.peak_tensor_bytes``: saved activations, backward's buffers,
  gradients) at T = 4, 8, 16 (the paper's claim: linear vs quadratic in T; target at T = 16: ST <= 0.2x
  full), on 16x16 tokens per frame, and the kept memory alone at the paper's 23x40 tokens per frame (counted
  on the meta device);
- play: frames/s of Genie.step with 25 MaskGIT steps, with the KV cache and recomputing the 16-frame window
  (target: cached >= 10x; tiny model >= 10 FPS), eager and (tiny dims) with ``SamplingConfig(compile=True)``,
  and (tiny dims, cached) compiled under bf16 autocast (``SamplingConfig(precision="bf16")``);
- data: clips/s streamed from shards vs clips/s the fastest tiny train step consumes (target >= 5x).

On a CUDA machine, ``--device cuda`` measures the GPU figures instead (writes gpu_benchmark.json/.md):
- the GPU's measured bf16 matmul FLOP/s (8192^3);
- bf16 MFU of a >= 400M-parameter dynamics train step (bf16 autocast, fp32 master weights, fused AdamW),
  eager and with each ST block compiled, against the measured matmul rate and the datasheet peak;
- ``dynamics_2_7b`` / ``dynamics_11b`` playing at the paper's 23x40 grid in bf16 (16-frame memory, 25 MaskGIT
  steps): frames/s against the compute limit, 2 x params x tokens x passes per frame at the measured bf16
  matmul rate (``--paper-play-only``: these rows alone);
- play at CoinRun dims (d 512 x 12, 16x16 tokens, 25 MaskGIT steps, 16 frames of context) on the GPU,
  cached and recomputed, fp32 and bf16 autocast (goal >= 10 FPS; the paper's model ran at ~1 FPS).

One module per family: ``common`` (timing, the matmul yardstick), ``train``, ``play``, ``data``, ``attention``,
``gpu``; ``cli`` runs them all in one process.
"""

from .attention import st_vs_full, st_vs_full_paper_grid
from .common import against_matmul, matmul_flops, sync, timeit
from .data import data_rate
from .paper_play import paper_play, play_flops_per_frame
from .play import cpu_bf16, play_speed
from .train import STAGE_EXPERIMENTS, dynamics_step, stage_step, tokenizer_step

__all__ = [
    "STAGE_EXPERIMENTS",
    "against_matmul",
    "cpu_bf16",
    "data_rate",
    "dynamics_step",
    "matmul_flops",
    "paper_play",
    "play_flops_per_frame",
    "play_speed",
    "st_vs_full",
    "st_vs_full_paper_grid",
    "stage_step",
    "sync",
    "timeit",
    "tokenizer_step",
]
