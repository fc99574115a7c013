"""Latent-action metrics: code usage and normalised mutual information with the true actions.

Both keep summed count tables as state, so they reduce across DDP ranks by summation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def nmi_from_counts(counts_LA: Tensor) -> Tensor:
    """NMI of a contingency table (rows: latent codes, columns: true actions), arithmetic normalisation.

    ``I(L; A) / ((H(L) + H(A)) / 2)`` — scikit-learn's default; 1 for a relabelling, 0 for independence.
    """
    p = counts_LA.double() / counts_LA.sum().clamp_min(1)
    pl, pa = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * (p[nz] / (pl[:, None] * pa[None, :])[nz]).log()).sum()
    hl = -(pl[pl > 0] * pl[pl > 0].log()).sum()
    ha = -(pa[pa > 0] * pa[pa > 0].log()).sum()
    denom = (hl + ha) / 2
    if denom <= 0:  # both labelings constant: identical partitions
        return torch.tensor(1.0, dtype=torch.float64)
    return (mi / denom).clamp(0, 1)


class ActionNMI(Metric):
    """NMI between latent action ids and true action ids; transitions with a true id < 0 (unknown) are
    ignored, a true id >= ``max_true`` is an error."""

    full_state_update = False
    counts: Tensor

    def __init__(self, num_latent: int, max_true: int = 64) -> None:
        super().__init__()
        self.num_latent, self.max_true = num_latent, max_true
        self.add_state("counts", torch.zeros(num_latent, max_true, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, latent: Tensor, true: Tensor) -> None:
        latent, true = latent.reshape(-1).long(), true.reshape(-1).long()
        if true.numel() and int(true.max()) >= self.max_true:  # counting them nowhere would bias the NMI
            raise ValueError(
                f"true action id {int(true.max())} is past ActionNMI's table of {self.max_true} ids; "
                "construct it with a larger max_true"
            )
        keep = true >= 0
        flat = latent[keep] * self.max_true + true[keep]
        self.counts += torch.bincount(flat, minlength=self.num_latent * self.max_true).view_as(self.counts)

    def compute(self) -> Tensor:
        return nmi_from_counts(self.counts).float()


class CodeUsage(Metric):
    """Fraction of codes used at least once over everything seen (and the counts, for a histogram)."""

    full_state_update = False
    counts: Tensor

    def __init__(self, num_codes: int) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.add_state("counts", torch.zeros(num_codes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, ids: Tensor) -> None:
        self.counts += torch.bincount(ids.reshape(-1).long(), minlength=self.num_codes)

    def compute(self) -> Tensor:
        return (self.counts > 0).float().mean()


def fit_action_map(source: Tensor, target: Tensor, num_source: int) -> Tensor:
    """The most frequent ``target`` id of each ``source`` id (``map_[s]``), from labelled pairs.

    Genie App. F maps latent to real actions this way from ~200 labelled transitions. Source ids never seen
    in the labelled pairs map to the overall most frequent target; ties go to the smallest id.
    """
    source, target = source.reshape(-1).long(), target.reshape(-1).long()
    if source.numel() == 0:
        raise ValueError("fit_action_map needs at least one labelled pair")
    num_target = int(target.max()) + 1
    counts = torch.zeros(num_source, num_target, dtype=torch.long, device=source.device)
    counts.index_put_((source, target), torch.ones_like(source), accumulate=True)
    fallback = counts.sum(0).argmax()
    return torch.where(counts.sum(1) > 0, counts.argmax(1), fallback)


def probe_accuracy(
    latent: Tensor, true: Tensor, num_latent: int, num_labels: int = 200, seed: int = 0
) -> tuple[float, Tensor]:
    """Latent→real action probe: fit :func:`fit_action_map` on ``num_labels`` random labelled transitions
    and return its accuracy on all the others, with the map. Transitions with ``true < 0`` are ignored."""
    latent, true = latent.reshape(-1).long(), true.reshape(-1).long()
    keep = true >= 0
    latent, true = latent[keep], true[keep]
    if latent.numel() <= num_labels:
        raise ValueError(
            f"the probe needs more than {num_labels} labelled transitions to hold some out, got {latent.numel()}; "
            "evaluate more clips or lower probe_labels"
        )
    order = torch.randperm(latent.numel(), generator=torch.Generator().manual_seed(seed)).to(latent.device)
    fit, held = order[:num_labels], order[num_labels:]
    mapping = fit_action_map(latent[fit], true[fit], num_latent)
    return float((mapping[latent[held]] == true[held]).float().mean()), mapping


class ActionProbe(Metric):
    """The latent→real action probe as a metric (App. F): keeps every labelled ``(latent, true)`` transition
    seen (unknown true ids, < 0, are dropped); ``compute`` fits :func:`fit_action_map` on ``num_labels`` random
    ones (at most half of them, so that some are held out) and returns the accuracy on the rest (NaN with
    fewer than 2 labelled transitions). After
    ``compute``, ``mapping`` is the fitted map and ``labels_used`` the labels it took. Gathers across ranks."""

    full_state_update = False
    latent: list[Tensor]
    true: list[Tensor]

    def __init__(self, num_latent: int, num_labels: int = 200, seed: int = 0) -> None:
        super().__init__()
        self.num_latent, self.num_labels, self.seed = num_latent, num_labels, seed
        self.add_state("latent", default=[], dist_reduce_fx="cat")
        self.add_state("true", default=[], dist_reduce_fx="cat")
        self.mapping: Tensor | None = None
        self.labels_used = 0

    def update(self, latent: Tensor, true: Tensor) -> None:
        latent, true = latent.reshape(-1).long(), true.reshape(-1).long()
        keep = true >= 0
        self.latent.append(latent[keep])
        self.true.append(true[keep])

    def pairs(self) -> tuple[Tensor, Tensor]:
        """Every labelled transition kept so far: ``(latent, true)``."""
        if not self.latent:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty
        return dim_zero_cat(self.latent), dim_zero_cat(self.true)

    def labelled(self) -> int:
        return (
            int(sum(t.numel() for t in self.true)) if isinstance(self.true, list) else int(self.true.numel())
        )

    def accuracy_on(self, true: Tensor) -> tuple[float, Tensor | None, int]:
        """The probe of the kept latents against ``true``, one label per kept transition (their true actions,
        or another labelling of them such as procgen's effect classes): ``(accuracy, map, labels used)``;
        ``(nan, None, 0)`` with nothing to fit and hold out (clips without true actions)."""
        latent, _ = self.pairs()
        n = min(self.num_labels, true.numel() // 2)
        if n < 1:
            return float("nan"), None, 0
        acc, mapping = probe_accuracy(latent, true, self.num_latent, n, self.seed)
        return acc, mapping, n

    def compute(self) -> Tensor:
        acc, self.mapping, self.labels_used = self.accuracy_on(self.pairs()[1])
        return torch.tensor(acc)
