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

Writes ``ceiling.json`` and ``ceiling.md`` to the output folder.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genie.metrics.actions import nmi_from_counts


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

    def __post_init__(self) -> None:
        if self.labels not in ("actions", "effects"):
            raise ValueError(f"labels must be 'actions' or 'effects', got {self.labels!r}")
        if self.steps < 1 or self.batch_size < 1 or self.val_transitions < 1:
            raise ValueError("steps, batch_size and val_transitions must be >= 1")


def _labels(actions: Tensor, kind: str) -> Tensor:
    if kind == "effects":
        from genie.data.procgen import effect_ids

        return torch.as_tensor(effect_ids(actions))
    return actions


def fit_idm(
    batches: Iterator[dict[str, Tensor]], num_classes: int, cfg: CeilingConfig, shift: int = 0
) -> InverseDynamicsModel:
    """Train an IDM on transitions drawn from ``batches`` (an endless stream of ``{"video", "actions"}``)."""
    torch.manual_seed(cfg.seed)
    model = InverseDynamicsModel(num_classes, width=cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    pool: list[tuple[Tensor, Tensor, Tensor]] = []
    have = 0
    for _ in range(cfg.steps):
        while have < cfg.batch_size:
            batch = next(batches)
            pairs = transition_pairs(batch["video"], _labels(batch["actions"], cfg.labels), shift)
            pool.append(pairs)
            have += pairs[2].numel()
        x_t, x_next, y = (torch.cat(parts) for parts in zip(*pool, strict=True))
        perm = torch.randperm(y.numel())
        take, rest = perm[: cfg.batch_size], perm[cfg.batch_size :]
        pool, have = [(x_t[rest], x_next[rest], y[rest])], int(rest.numel())
        loss = F.cross_entropy(model(x_t[take], x_next[take]), y[take])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
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

    if num_classes is None:
        if cfg.labels == "effects":
            from genie.data.procgen import EFFECTS

            num_classes = len(EFFECTS)
        else:
            num_classes = _max_action(ClipStream(val_shards, frames=frames, size=size)) + 1
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
    return out


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
    rows = [
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
    return "\n".join(rows) + "\n"


def command(cfg: Any) -> None:
    from genie.config import options
    from genie.data.shards import atomic_write_text

    size = (int(cfg.size[0]), int(cfg.size[1]))
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
