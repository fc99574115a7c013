"""The supervised ceiling for latent actions: ``python -m genie.ceiling train_shards=... val_shards=...``.

A latent action model learns actions without labels; how good could a labelling of the same transitions be?
An inverse-dynamics model (IDM) - a small CNN on the pair (x_t, x_{t+1}) trained with the true action as the
label - answers it on the same data: its held-out accuracy and NMI are what the pixels reveal about the
actions, the ceiling every LAM figure is reported against (``lam_nmi / idm_nmi``). Beside them:

- ``shuffled_nmi``: the NMI of the IDM's predictions against shuffled true labels - the small-sample floor
  (NMI is biased upward on few transitions; a figure that does not clear this floor is noise);
- the alignment check: the same IDM trained against the actions shifted by ``shift`` steps (label of
  x_t -> x_{t+1} is a_{t+shift}); the true alignment (0) should win, by more than noise, over ±1;
- ``labels: effects`` scores procgen data on the effect classes (left / none / right x jump) instead of the
  15 buttons (:data:`genie.data.procgen.EFFECTS`), and the NMI of each of its two factors (``nmi_horizontal``:
  left / none / right, ``nmi_jump``): which of them the pixels reveal.

The IDM says what the pixels reveal about an action; a LAM learns from something else - how much a label of
the transition lowers the error of predicting the next frame. ``worth`` measures that for each labelling it
names: one small next-frame model (:class:`NextFrameModel`, on x_{t-1}, x_t and the label) per labelling, all
trained on the same transitions, scored on held-out ones against the same model given no label
(``explained``: the share of its error the label removes). Labellings: ``true`` (the clips' actions, or effect
classes), ``horizontal`` / ``jump`` (one factor of the effect class), ``lam`` (the codes of the LAM at
``lam_checkpoint``), and ``shuffled_<labelling>`` of each: its labels permuted across transitions - worth
nothing, with the same classes and frequencies, so what it reads is the measure's floor for that labelling.
When a LAM's codes explain more of the next frame than the true actions do, its objective prefers what they
carry over the actions, and no optimiser fix will turn them to the actions.

Writes ``ceiling.json`` and ``ceiling.md`` to the output folder.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genie.metrics.actions import nmi_from_counts
from genie.nn.options import size_pair

if TYPE_CHECKING:
    from genie.models.lam import LatentActionModel
    from genie.models.tokenizer import VideoTokenizer


class InverseDynamicsModel(nn.Module):
    """``logits_NA = idm(x_t_NCHW, x_next_NCHW)``: which action took frame x_t to x_{t+1}. A small CNN over the
    two frames and their difference (4 stride-2 convolutions, global pooling, a linear head)."""

    def __init__(self, num_actions: int, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        c = [3 * channels, width, 2 * width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(c):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c[-1], num_actions)

    def forward(self, x_t_NCHW: Tensor, x_next_NCHW: Tensor) -> Tensor:
        x = torch.cat((x_t_NCHW, x_next_NCHW, x_next_NCHW - x_t_NCHW), dim=1)
        return self.head(self.features(x).mean(dim=(2, 3)))


def transition_pairs(
    video_BTCHW: Tensor, actions_BT1: Tensor, shift: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Every transition of the clips as ``(x_t_NCHW, x_next_NCHW, label_N)``, the label of x_t -> x_{t+1}
    being a_{t+shift}; transitions whose label is unknown (-1) or outside the clip are dropped."""
    t = video_BTCHW.shape[1]
    idx = torch.arange(t - 1)
    src = idx + shift
    ok = (src >= 0) & (src < t - 1)
    idx, src = idx[ok], src[ok]
    x_t, x_next = video_BTCHW[:, idx], video_BTCHW[:, idx + 1]
    labels = actions_BT1[:, src]
    keep = (labels >= 0).reshape(-1)
    return x_t.flatten(0, 1)[keep], x_next.flatten(0, 1)[keep], labels.reshape(-1)[keep]


class NextFrameModel(nn.Module):
    """``x_next_NCHW = model(x_prev_NCHW, x_t_NCHW, label_N)``: a small convolutional next-frame predictor given a
    label of the transition. A stride-2 stem, dilated residual blocks at half resolution each told the label (a
    learned bias per label and block, added after the block's norm), and a pixel-shuffle head whose change is
    added to x_t in logit space (zero at the start: "the next frame is the last one")."""

    def __init__(
        self,
        num_labels: int,
        channels: int = 3,
        width: int = 32,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 1),
    ) -> None:
        super().__init__()
        self.width = width
        self.stem = nn.Conv2d(2 * channels, width, 4, stride=2, padding=1)
        self.norms = nn.ModuleList(nn.GroupNorm(8, width) for _ in dilations)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in dilations)
        out = nn.Conv2d(width, 4 * channels, 3, padding=1)
        for param in out.parameters():
            nn.init.zeros_(param)
        self.head = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), out)
        # made last, so that models of any label count start from the same weights under one seed
        self.label = nn.Embedding(num_labels, width * len(dilations))

    def forward(self, x_prev_NCHW: Tensor, x_t_NCHW: Tensor, label_N: Tensor) -> Tensor:
        h = self.stem(torch.cat((x_prev_NCHW, x_t_NCHW), dim=1))
        bias = self.label(label_N).reshape(label_N.shape[0], len(self.convs), self.width, 1, 1)
        for i, (norm, conv) in enumerate(zip(self.norms, self.convs, strict=True)):
            h = h + conv(F.silu(norm(h) + bias[:, i]))  # after the norm, which would remove a constant
        change = F.pixel_shuffle(self.head(h), 2)
        return torch.sigmoid(change + torch.logit(x_t_NCHW.clamp(1e-3, 1 - 1e-3)))


# the labellings ``worth`` can score, beside the unlabelled model; each also permuted (its floor)
LABELLINGS = ("true", "horizontal", "jump", "lam")
WORTH = (*LABELLINGS, *(f"shuffled_{name}" for name in LABELLINGS))


def _unshuffled(name: str) -> str:
    """The labelling a ``worth`` entry is, or permutes (``shuffled_jump`` -> ``jump``)."""
    return name.removeprefix("shuffled_")


def transition_triples(
    video_BTCHW: Tensor, labels: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
    """The transitions x_t -> x_{t+1} with a frame before them (t >= 1) as ``(x_prev, x_t, x_next, labels)``;
    each labelling ``(B, T-1)`` labels transition t at index t. Transitions any labelling does not know (-1)
    are dropped."""
    x_prev, x_t, x_next = video_BTCHW[:, :-2], video_BTCHW[:, 1:-1], video_BTCHW[:, 2:]
    picked = {k: v[:, 1:].reshape(-1) for k, v in labels.items()}
    keep = torch.ones(x_t.shape[0] * x_t.shape[1], dtype=torch.bool)
    for v in picked.values():
        keep &= v >= 0
    return (
        x_prev.flatten(0, 1)[keep],
        x_t.flatten(0, 1)[keep],
        x_next.flatten(0, 1)[keep],
        {k: v[keep] for k, v in picked.items()},
    )


@dataclass
class CeilingConfig:
    labels: str = "actions"  # actions (the clips' true ids) | effects (procgen's effect classes)
    shifts: list[int] = field(default_factory=lambda: [0, -1, 1])  # label alignments to train an IDM for
    steps: int = 600  # optimizer steps per IDM
    batch_size: int = 128  # transitions per step
    lr: float = 1e-3
    width: int = 32
    val_transitions: int = 7500  # held-out transitions scored (the floor: >= 5000)
    seed: int = 0
    worth: list[str] = field(default_factory=list)  # labellings scored by their worth to the next frame
    worth_steps: int = 600  # optimizer steps of the next-frame models
    lam_checkpoint: str | None = None  # the LAM whose codes the ``lam`` labelling is

    def __post_init__(self) -> None:
        if self.labels not in ("actions", "effects"):
            raise ValueError(f"labels must be 'actions' or 'effects', got {self.labels!r}")
        if self.steps < 1 or self.batch_size < 1 or self.val_transitions < 1 or self.worth_steps < 1:
            raise ValueError("steps, batch_size, val_transitions and worth_steps must be >= 1")
        from genie.config import choice

        self.worth = [choice(w, WORTH, "each labelling of ceiling.worth") for w in self.worth]
        bases = self.worth_bases
        if {"horizontal", "jump"} & bases and self.labels != "effects":
            raise ValueError(
                "worth 'horizontal' and 'jump' are factors of the effect class; set labels=effects"
            )
        if "lam" in bases and not self.lam_checkpoint:
            raise ValueError("worth 'lam' scores a LAM's codes; set ceiling.lam_checkpoint=PATH/TO/lam.ckpt")

    @property
    def worth_bases(self) -> set[str]:
        """The labellings the ``worth`` entries are or permute (``shuffled_jump`` needs ``jump``)."""
        return {_unshuffled(w) for w in self.worth}


def _labels(actions: Tensor, kind: str) -> Tensor:
    if kind == "effects":
        from genie.data.procgen import effect_ids

        return torch.as_tensor(effect_ids(actions))
    return actions


def _pooled(groups: Iterator[tuple[Tensor, ...]], batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    """Batches of ``batch_size`` rows drawn at random from a pool fed by ``groups`` (tuples of tensors whose
    rows belong together, e.g. the transitions of a few clips), so that a batch mixes clips."""
    pool: list[tuple[Tensor, ...]] = []
    have = 0
    while True:
        while have < batch_size:
            group = next(groups)
            pool.append(group)
            have += group[0].shape[0]
        parts = [torch.cat(rows) for rows in zip(*pool, strict=True)]
        perm = torch.randperm(have)
        take, rest = perm[:batch_size], perm[batch_size:]
        pool, have = [tuple(p[rest] for p in parts)], int(rest.numel())
        yield tuple(p[take] for p in parts)


def _descent(model: nn.Module, lr: float, steps: int) -> Callable[[Tensor], None]:
    """One optimizer step on a loss, the recipe of every small model here: AdamW under a one-cycle schedule."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)

    def step(loss: Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    return step


def fit_idm(
    batches: Iterator[dict[str, Tensor]], num_classes: int, cfg: CeilingConfig, shift: int = 0
) -> InverseDynamicsModel:
    """Train an IDM on transitions drawn from ``batches`` (an endless stream of ``{"video", "actions"}``)."""
    torch.manual_seed(cfg.seed)
    model = InverseDynamicsModel(num_classes, width=cfg.width)
    descend = _descent(model, cfg.lr, cfg.steps)
    groups = (
        transition_pairs(batch["video"], _labels(batch["actions"], cfg.labels), shift) for batch in batches
    )
    for _, (x_t, x_next, y) in zip(range(cfg.steps), _pooled(groups, cfg.batch_size), strict=False):
        descend(F.cross_entropy(model(x_t, x_next), y))
    return model.eval()


@torch.no_grad()
def predict(
    model: InverseDynamicsModel, batches: Iterable[dict[str, Tensor]], cfg: CeilingConfig, shift: int = 0
) -> tuple[Tensor, Tensor]:
    """(predicted, true) labels of up to ``cfg.val_transitions`` held-out transitions."""
    preds, trues, n = [], [], 0
    for batch in batches:
        x_t, x_next, y = transition_pairs(batch["video"], _labels(batch["actions"], cfg.labels), shift)
        preds.append(model(x_t, x_next).argmax(-1))
        trues.append(y)
        n += y.numel()
        if n >= cfg.val_transitions:
            break
    if not trues:
        raise ValueError(
            "the val shards gave no transition with a known action; the ceiling needs true actions"
        )
    return torch.cat(preds)[: cfg.val_transitions], torch.cat(trues)[: cfg.val_transitions]


def nmi(a: Tensor, b: Tensor) -> float:
    """NMI between two labellings of the same items (ids >= 0)."""
    counts = torch.zeros(int(a.max()) + 1, int(b.max()) + 1, dtype=torch.long)
    counts.index_put_((a.long(), b.long()), torch.ones_like(a, dtype=torch.long), accumulate=True)
    return float(nmi_from_counts(counts))


def shuffled_nmi(a: Tensor, b: Tensor, seed: int = 0, repeats: int = 5) -> float:
    """The small-sample floor: mean NMI of ``a`` against ``b`` shuffled (independent labellings with the same
    class frequencies)."""
    g = torch.Generator().manual_seed(seed)
    return sum(nmi(a, b[torch.randperm(b.numel(), generator=g)]) for _ in range(repeats)) / repeats


def factor_nmi(pred: Tensor, true: Tensor) -> dict[str, float]:
    """NMI of predicted against true effect classes per factor (:func:`genie.data.procgen.effect_factors`):
    ``nmi_horizontal``, ``nmi_jump``."""
    from genie.data.procgen import effect_factors

    truth = effect_factors(true)
    return {f"nmi_{k}": nmi(v, truth[k]) for k, v in effect_factors(pred).items()}


def score(pred: Tensor, true: Tensor, seed: int = 0) -> dict[str, float]:
    """Accuracy, NMI, the shuffled-label floor and the majority-class rate of a labelling."""
    return {
        "accuracy": float((pred == true).float().mean()),
        "nmi": nmi(pred, true),
        "shuffled_nmi": shuffled_nmi(pred, true, seed),
        "majority": float(torch.bincount(true).max() / true.numel()),
        "transitions": int(true.numel()),
    }


def ceiling(
    train_shards: str,
    val_shards: str,
    cfg: CeilingConfig,
    size: tuple[int, int] = (64, 64),
    frames: int = 16,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Train an IDM per alignment in ``cfg.shifts`` on ``train_shards``, score each on ``val_shards``."""
    from torch.utils.data import DataLoader

    from genie.data.pipeline import ClipStream

    if num_classes is None and (cfg.shifts or "true" in cfg.worth_bases):
        if cfg.labels == "effects":
            from genie.data.procgen import EFFECTS

            num_classes = len(EFFECTS)
        else:
            num_classes = _max_action(ClipStream(val_shards, frames=frames, size=size)) + 1
    num_classes = num_classes or 1  # only the true labels need their count
    out: dict[str, Any] = {"labels": cfg.labels, "classes": num_classes, "steps": cfg.steps, "by_shift": {}}
    for shift in cfg.shifts:
        train = ClipStream(
            train_shards, frames=frames, size=size, shuffle_buffer=64, repeat=True, seed=cfg.seed
        )
        batches = iter(DataLoader(train, batch_size=8, num_workers=0))
        model = fit_idm(batches, num_classes, cfg, shift)
        val = DataLoader(ClipStream(val_shards, frames=frames, size=size), batch_size=16, num_workers=0)
        pred, true = predict(model, val, cfg, shift)
        out["by_shift"][str(shift)] = scores = score(pred, true, seed=cfg.seed)
        if cfg.labels == "effects":  # which factor of the effect the IDM reads: the direction, the jump
            scores.update(factor_nmi(pred, true))
    if "0" in out["by_shift"]:
        out.update({f"idm_{k}": v for k, v in out["by_shift"]["0"].items()})
    if cfg.worth:
        out["worth"] = next_frame_worth(train_shards, val_shards, cfg, size, frames, num_classes)
    return out


def _labellings(
    batch: dict[str, Tensor],
    cfg: CeilingConfig,
    lam: LatentActionModel | None,
    shufflers: dict[str, torch.Generator],
    lam_tokenizer: VideoTokenizer | None = None,
) -> dict[str, Tensor]:
    """``none`` (one label for all) and every labelling of ``cfg.worth`` of a batch's transitions, ``(B, T-1)``;
    ``shuffled_<name>`` is labelling ``name`` permuted across the batch's transitions by ``shufflers[name]``."""
    video = batch["video"]
    bases: dict[str, Tensor] = {}
    wanted = cfg.worth_bases
    if {"true", "horizontal", "jump"} & wanted:
        true = _labels(batch["actions"], cfg.labels)
        bases["true"] = true
        if {"horizontal", "jump"} & wanted:
            from genie.data.procgen import effect_factors

            for name, factor in effect_factors(true).items():
                bases[name] = torch.where(true >= 0, factor, -1)
    if lam is not None:
        bases["lam"] = lam.infer_actions(video, tokenizer=lam_tokenizer).long()
    out = {"none": torch.zeros(video.shape[0], video.shape[1] - 1, dtype=torch.long)}
    for name in cfg.worth:
        labels = bases[_unshuffled(name)]
        if name in shufflers:
            flat = labels.reshape(-1).clone()
            known = (flat >= 0).nonzero().squeeze(1)  # unknown labels stay where they are (and are dropped)
            flat[known] = flat[known[torch.randperm(known.numel(), generator=shufflers[name])]]
            labels = flat.reshape(labels.shape)
        out[name] = labels
    return out


def next_frame_worth(
    train_shards: str,
    val_shards: str,
    cfg: CeilingConfig,
    size: tuple[int, int] = (64, 64),
    frames: int = 16,
    num_classes: int = 1,
) -> dict[str, Any]:
    """Train a :class:`NextFrameModel` per labelling (``none`` and ``cfg.worth``) on the same transitions of
    ``train_shards``; score each on ``val_shards``: ``by_labelling[name]`` holds its held-out MSE and
    ``explained``, the share of the unlabelled model's error it removes. ``copy_last_mse``: the error of
    repeating x_t, the bar all beat."""
    from torch.utils.data import DataLoader

    from genie.data.pipeline import ClipStream

    lam: LatentActionModel | None = None
    reader: VideoTokenizer | None = None  # the tokenizer a token-input LAM reads
    if "lam" in cfg.worth_bases:
        from genie.models.io import load_lam, resolve_checkpoint

        lam, reader = load_lam(resolve_checkpoint(cfg.lam_checkpoint, "LAM", "ceiling.lam_checkpoint"))
        lam.eval()
        if reader is not None:
            reader.eval()
    classes = {"none": 1, "true": num_classes, "horizontal": 3, "jump": 2}
    if lam is not None:
        classes["lam"] = lam.cfg.num_actions
    names = ["none", *cfg.worth]
    models: dict[str, NextFrameModel] = {}
    for name in names:
        torch.manual_seed(cfg.seed)  # the same initial weights for every labelling
        models[name] = NextFrameModel(classes[_unshuffled(name)], width=cfg.width)
    descend = {n: _descent(m, cfg.lr, cfg.worth_steps) for n, m in models.items()}

    # their own generators, so the batches and the other labellings stay the same whichever are asked for
    shufflers = {n: torch.Generator().manual_seed(cfg.seed) for n in cfg.worth if n.startswith("shuffled_")}

    def groups(batches: Iterable[dict[str, Tensor]]) -> Iterator[tuple[Tensor, ...]]:
        for batch in batches:
            labellings = _labellings(batch, cfg, lam, shufflers, reader)
            x_prev, x_t, x_next, labels = transition_triples(batch["video"], labellings)
            yield (x_prev, x_t, x_next, *(labels[n] for n in names))

    train = ClipStream(train_shards, frames=frames, size=size, shuffle_buffer=64, repeat=True, seed=cfg.seed)
    stream = groups(DataLoader(train, batch_size=8, num_workers=0))
    for _, (x_prev, x_t, x_next, *labels) in zip(
        range(cfg.worth_steps), _pooled(stream, cfg.batch_size), strict=False
    ):
        for name, label in zip(names, labels, strict=True):
            descend[name](F.mse_loss(models[name](x_prev, x_t, label), x_next))
    for m in models.values():
        m.eval()
    sums = dict.fromkeys(["copy_last", *names], 0.0)
    n = 0
    val = DataLoader(ClipStream(val_shards, frames=frames, size=size), batch_size=16, num_workers=0)
    with torch.no_grad():
        for x_prev, x_t, x_next, *labels in groups(val):
            rows = x_t.shape[0]
            sums["copy_last"] += float(F.mse_loss(x_t, x_next, reduction="sum")) / x_t[0].numel()
            for name, label in zip(names, labels, strict=True):
                err = F.mse_loss(models[name](x_prev, x_t, label), x_next, reduction="sum")
                sums[name] += float(err) / x_t[0].numel()
            n += rows
            if n >= cfg.val_transitions:
                break
    if n == 0:
        raise ValueError("the val shards gave no transition to score the next-frame models on")
    mse = {k: v / n for k, v in sums.items()}
    by_labelling = {
        name: {
            "classes": classes[_unshuffled(name)],
            "mse": mse[name],
            "explained": 1 - mse[name] / mse["none"],
        }
        for name in names
    }
    return {
        "steps": cfg.worth_steps,
        "transitions": n,
        "copy_last_mse": mse["copy_last"],
        "by_labelling": by_labelling,
    }


def _max_action(stream: Iterable[dict[str, Tensor]], clips: int = 64) -> int:
    top = -1
    for i, item in enumerate(stream):
        top = max(top, int(item["actions"].max()))
        if i + 1 >= clips:
            break
    if top < 0:
        raise ValueError("the val shards carry no true actions; the ceiling needs labelled clips")
    return top


def markdown(result: dict[str, Any]) -> str:
    rows: list[str] = []
    if result["by_shift"]:
        rows += [
            f"IDM ceiling ({result['labels']}, {result['classes']} classes, {result['steps']} steps per IDM)",
            "",
            "| label alignment | accuracy | NMI | shuffled-label NMI | majority class | transitions |",
            "|---|---|---|---|---|---|",
        ]
    for shift, r in result["by_shift"].items():
        name = "a_t (true)" if shift == "0" else f"a_(t{int(shift):+d})"
        rows.append(
            f"| {name} | {r['accuracy']:.3f} | {r['nmi']:.3f} | {r['shuffled_nmi']:.4f} | {r['majority']:.3f} | "
            f"{r['transitions']} |"
        )
    factors = [
        f"- {shift}: horizontal {r['nmi_horizontal']:.3f}, jump {r['nmi_jump']:.3f}"
        for shift, r in result["by_shift"].items()
        if "nmi_horizontal" in r
    ]
    if factors:
        rows += ["", "NMI of each factor of the effect class, by label alignment:", "", *factors]
    worth = result.get("worth")
    if worth:
        rows += [
            *([""] if rows else []),
            f"The worth of each labelling to the next frame ({worth['steps']} steps per model, "
            f"{worth['transitions']} held-out transitions; repeating x_t: MSE {worth['copy_last_mse']:.3e})",
            "",
            "| labelling | classes | next-frame MSE | share of the unlabelled model's error it removes |",
            "|---|---|---|---|",
        ]
        for name, r in worth["by_labelling"].items():
            rows.append(f"| {name} | {r['classes']} | {r['mse']:.3e} | {r['explained']:+.4f} |")
    return "\n".join(rows) + "\n"


def command(cfg: Any) -> None:
    from genie.config import options
    from genie.data.shards import atomic_write_text

    size = size_pair(cfg.size, "size")
    result = ceiling(
        cfg.train_shards, cfg.val_shards, options(cfg.ceiling, CeilingConfig), size=size, frames=cfg.frames
    )
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ceiling.json", json.dumps(result, indent=2))
    atomic_write_text(out / "ceiling.md", markdown(result))
    print(markdown(result))
    print(f"[genie] wrote {out / 'ceiling.json'} and ceiling.md")


def main() -> None:
    from genie.config import hydra_entry

    hydra_entry("ceiling", command)()


if __name__ == "__main__":
    main()
