#!/usr/bin/env python
"""Fit the latent <-> real action mapping of a trained world model from N labelled transitions (App. F).

    python tools/fit_action_map.py 'outputs/coinrun_dynamics_tiny/*/checkpoints/last.ckpt' \
        'data/coinrun/val-*.tar' --labels 200
    python tools/fit_action_map.py exported/platformer 'data/synthetic-64/val-*.tar'

The LAM infers the latent action of every transition of the clips; N random transitions with their true
actions fit latent->real (majority real action per latent code) and real->latent (majority latent code per
real action); the other transitions measure both accuracies. The map is saved as action_map.json beside the
checkpoint (or in the exported folder), where GenieEnv(..., real_actions=True) finds it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from genie.data.pipeline import ClipStream, expand_shards
from genie.envs import ActionMap, load_genie


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a dynamics checkpoint (with its LAM) or an exported folder")
    p.add_argument("shards", help="clips with true actions (shard pattern)")
    p.add_argument("--labels", type=int, default=200, help="labelled transitions used to fit (App. F: 200)")
    p.add_argument("--clips", type=int, default=256, help="clips read from the shards")
    p.add_argument("--out", default=None, help="where to write the map (default: beside the model)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        from genie.models.io import resolve_checkpoint

        model_path = (
            Path(a.model) if Path(a.model).is_dir() else resolve_checkpoint(a.model, "model", "model")
        )
        genie = load_genie(model_path, "cpu")
        if genie.lam is None:
            raise ValueError(f"{a.model} has no latent action model to infer actions with")
        shards = expand_shards(a.shards)
        if not shards:
            raise FileNotFoundError(f"no shards match {a.shards!r}")
        stream = ClipStream(shards, frames=16, size=genie.image_size)
        latent, real = [], []
        for i, item in enumerate(stream):
            if i >= a.clips:
                break
            if (item["actions"] < 0).any():
                raise ValueError(f"the clips in {a.shards} carry no true actions; pass shards that do")
            latent.append(genie.infer_actions(item["video"][None])[0])
            real.append(item["actions"])
        if not latent:
            raise ValueError(f"no clips read from {a.shards}")
        lat, rea = torch.cat(latent), torch.cat(real)
        manifest = Path(shards[0]).parent / "manifest.json"
        names = (
            json.loads(manifest.read_text()).get("settings", {}).get("actions") if manifest.exists() else None
        )
        num_real = len(names) if names else int(rea.max()) + 1
        amap = ActionMap.fit(lat, rea, genie.num_actions, num_real, a.labels, a.seed, names)
        out = (
            Path(a.out)
            if a.out
            else (model_path if model_path.is_dir() else model_path.parent) / "action_map.json"
        )
        amap.save(out)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    acc = amap.accuracy
    print(
        f"fitted on {amap.labels} labelled transitions; held-out ({acc['held_out']}) accuracy: latent->real "
        f"{acc['latent_to_real']:.1%}, real->latent {acc['real_to_latent']:.1%} -> {out}"
    )
    for latent_id, real_id in enumerate(amap.latent_to_real):
        name = amap.real_names[real_id] if amap.real_names else str(real_id)
        print(f"  latent {latent_id} -> {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
