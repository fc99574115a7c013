"""What does a LAM's code carry, and where in the frame are the true actions visible?

    python tools/lam_codes.py --shards "data/coinrun/val-*.tar" [--lam CKPT] [--clips 500] [--effects]

Without ``--lam``: where the clips' true actions show, as the share of the variance of each pixel's change
(x_t+1 - x_t) explained by the action of t (eta², per 8×8 block). With ``--lam``: also, per latent code, how
many transitions it takes and the mean global motion of the view in them (a Lucas-Kanade estimate of one
translation per transition, in pixels), and the NMI of the codes with the true actions (at t and t-1) and with
the binned vertical and horizontal motion. A LAM whose codes follow the view's motion instead of the actions
reads high against motion and low against actions (docs/lab-notes.md, CoinRun).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from genie.ceiling import nmi as ceiling_nmi
from genie.models.aids import global_shift


def nmi(labels: np.ndarray, codes: np.ndarray) -> float:
    """:func:`genie.ceiling.nmi` (the project's one NMI) of two integer labellings given as arrays."""
    return ceiling_nmi(
        torch.from_numpy(np.asarray(codes).ravel()), torch.from_numpy(np.asarray(labels).ravel())
    )


def action_visibility(video_BTCHW: np.ndarray, labels_BT: np.ndarray, block: int = 8) -> np.ndarray:
    """Per ``block``×``block`` pixel block, the mean share of the variance of the pixels' change x_t+1 - x_t
    explained by the label of transition t (eta²; 0 = the labels do not show there)."""
    d = video_BTCHW[:, 1:] - video_BTCHW[:, :-1]
    d = d.reshape(-1, *d.shape[2:])  # (N, C, H, W)
    lab = labels_BT[:, : video_BTCHW.shape[1] - 1].ravel()
    keep = lab >= 0
    d, lab = d[keep], lab[keep]
    mean = d.mean(0)
    between = sum((lab == k).mean() * (d[lab == k].mean(0) - mean) ** 2 for k in np.unique(lab))
    eta = (between / (d.var(0) + 1e-8)).mean(0)  # (H, W)
    h, w = (eta.shape[0] // block) * block, (eta.shape[1] // block) * block
    return eta[:h, :w].reshape(h // block, block, w // block, block).mean((1, 3))


def bins(values: np.ndarray, edges: tuple[float, ...] = (-0.4, -0.1, 0.1, 0.4)) -> np.ndarray:
    return np.digitize(values, edges)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="held-out clip shards with true actions (a glob)")
    p.add_argument("--lam", help="a LAM (or dynamics) checkpoint: also report what its codes carry")
    p.add_argument("--clips", type=int, default=500, help="clips to read (default 500)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(64, 64), metavar=("H", "W"))
    p.add_argument("--effects", action="store_true", help="procgen: label by effect class, not button")
    args = p.parse_args(argv)

    from torch.utils.data import DataLoader

    from genie.data.pipeline import ClipStream
    from genie.evaluate import load_components

    lam = reader = None
    if args.lam:
        found = load_components(args.lam)
        lam, reader = found.lam, found.lam_tokenizer
        if lam is None:
            sys.exit(f"error: {args.lam} holds no LAM; give a LAM or dynamics checkpoint")
        lam.eval()
        if reader is not None:
            reader.eval()
    videos, actions, codes = [], [], []
    stream = ClipStream(args.shards, frames=args.frames, size=tuple(args.size))
    with torch.no_grad():
        for batch in DataLoader(stream, batch_size=16):
            if "actions" not in batch or not bool((batch["actions"] >= 0).any()):
                sys.exit(
                    f"error: the clips of {args.shards} carry no true actions; give shards written with them"
                )
            videos.append(batch["video"].float().numpy())
            actions.append(batch["actions"].numpy())
            if lam is not None:
                codes.append(lam.infer_actions(batch["video"], tokenizer=reader).numpy())
            if sum(len(v) for v in videos) >= args.clips:
                break
    if not videos:
        sys.exit(f"error: no clips read from {args.shards}")
    video = np.concatenate(videos)[: args.clips]
    act = np.concatenate(actions)[: args.clips, : video.shape[1] - 1]
    if args.effects:
        from genie.data.procgen import effect_ids

        act = effect_ids(act)
    label = "effect class" if args.effects else "action"
    eta = action_visibility(video, act)
    print(f"{len(video)} clips, {act.size} transitions")
    print(f"\nwhere the {label} of t shows in x_t+1 - x_t (eta² per 8x8 block, x1000):")
    for row in eta * 1000:
        print(" ".join(f"{v:5.1f}" for v in row))
    if lam is None:
        return
    c = np.concatenate(codes)[: args.clips]
    clips = torch.from_numpy(video)
    shift = global_shift(clips[:, :-1], clips[:, 1:]).numpy()  # the LAM aid's estimate, per transition
    dx, dy = shift[..., 0], shift[..., 1]
    print(
        f"\nNMI of the codes with the {label} at t: {nmi(act, c):.4f}, at t-1: {nmi(act[:, :-1], c[:, 1:]):.4f}"
    )
    print(
        f"NMI of the codes with the view's vertical motion (5 bins): {nmi(bins(dy), c):.4f}, "
        f"horizontal: {nmi(bins(dx), c):.4f}"
    )
    print("\n| code | transitions | mean dx (px) | mean dy (px) |\n|---|---|---|---|")
    for k in range(int(c.max()) + 1):
        m = c == k
        if m.any():
            print(f"| {k} | {int(m.sum())} | {dx[m].mean():+.3f} | {dy[m].mean():+.3f} |")


if __name__ == "__main__":
    main()
