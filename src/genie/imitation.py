"""The latent-action imitation experiment (Genie App. F): learn to act from unlabelled expert videos.

    .venv-procgen/bin/python -m genie.imitation lam_ckpt='outputs/coinrun_lam/*/checkpoints/last.ckpt'   # CPU
    .venv-procgen/bin/python -m genie.imitation lam_ckpt=... imitation=paper device=cuda                 # big

1. An expert plays CoinRun (:func:`genie.data.procgen.coinrun_expert`, a scripted policy: run right, jump
   often) and we keep only its *videos*.
2. The frozen LAM infers the latent action of every transition.
3. A small CNN policy is behaviour-cloned on (frame, latent action).
4. Latent actions are mapped to real ones with N labelled transitions (:class:`genie.envs.ActionMap`).
5. It plays real CoinRun levels it never saw: mean return over M episodes, for N = 10, 50, 200, 1000,
   against an oracle BC policy trained on the true actions and a uniformly random policy.

Writes ``imitation.json``, ``imitation.md`` and ``imitation.png`` (return vs N) to the run directory
(``conf/imitation.yaml``; ``imitation.*`` overrides any size). Needs the procgen extra (``.venv-procgen``) and
matplotlib for the plot.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genie.data.procgen import ACTIONS, ProcgenShardConfig, coinrun_expert, procgen_clips, random_policy
from genie.data.shards import atomic_write_text
from genie.envs import ActionMap

if TYPE_CHECKING:
    from genie.models.lam import LatentActionModel
    from genie.models.tokenizer import VideoTokenizer


@dataclass
class ImitationConfig:
    """Sizes of one run (``tiny``: CPU minutes; ``paper``: App. F-like)."""

    game: str = "coinrun"
    expert_clips: int = 200  # 16-frame clips of expert video (15 transitions each)
    labels: list[int] = field(default_factory=lambda: [10, 50, 200, 1000])
    bc_steps: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    episodes: int = 32  # evaluation episodes per policy (parallel environments)
    max_steps: int = 500  # per evaluation episode
    eval_start_level: int = 100_000  # evaluation levels: unseen by the expert data
    seed: int = 0


class Policy(nn.Module):
    """A small CNN: 64×64 RGB frame → action logits."""

    def __init__(self, num_actions: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(32, 64, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 256), nn.ReLU(), nn.Linear(256, num_actions),
        )  # fmt: skip

    def forward(self, frames_BHW3: torch.Tensor) -> torch.Tensor:
        return self.net(frames_BHW3.permute(0, 3, 1, 2).float() / 255)


def expert_data(cfg: ImitationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Expert clips ``frames_N16HW3`` uint8 and their true actions ``actions_N15``."""
    shard_cfg = ProcgenShardConfig(game=cfg.game, num_envs=32, num_levels=10_000)
    clips = list(procgen_clips(shard_cfg, "train", cfg.expert_clips, cfg.seed, policy=coinrun_expert))
    return np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips])


@torch.no_grad()
def infer_latents(
    lam: LatentActionModel,
    frames: np.ndarray,
    device: str,
    batch: int = 32,
    tokenizer: VideoTokenizer | None = None,
) -> np.ndarray:
    """The LAM's code for every transition of ``frames_NTHW3``; ``tokenizer``: the one a token-input LAM reads."""
    out = []
    for i in range(0, len(frames), batch):
        video = torch.from_numpy(frames[i : i + batch]).to(device).permute(0, 1, 4, 2, 3).float() / 255
        out.append(lam.infer_actions(video, tokenizer=tokenizer).cpu())
    return torch.cat(out).numpy()


def behaviour_clone(
    frames: np.ndarray, labels: np.ndarray, num_actions: int, cfg: ImitationConfig, device: str
) -> Policy:
    """Train a policy on (frame t, the action taken at t) pairs."""
    x = torch.from_numpy(frames[:, :-1].reshape(-1, *frames.shape[2:]))
    y = torch.from_numpy(labels.reshape(-1)).long()
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    policy = Policy(num_actions).to(device)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    for _ in range(cfg.bc_steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        loss = F.cross_entropy(policy(x[idx].to(device)), y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


def evaluate(act: Any, cfg: ImitationConfig, seed: int) -> float:
    """Mean return of ``act(frames_BHW3) -> real action ids`` over ``cfg.episodes`` episodes of unseen levels."""
    from genie.data.procgen import make_env

    env_cfg = ProcgenShardConfig(game=cfg.game, num_envs=cfg.episodes, start_level=cfg.eval_start_level,
                                 num_levels=10_000)  # fmt: skip
    env = make_env(env_cfg, "train", seed)
    returns = np.zeros(cfg.episodes)
    done = np.zeros(cfg.episodes, bool)
    _, obs, _ = env.observe()
    for _ in range(cfg.max_steps):
        env.act(np.asarray(act(obs["rgb"]), dtype=np.int32))
        reward, obs, first = env.observe()
        returns += np.where(done, 0.0, reward)
        done |= first  # the first episode of each environment ended
        if done.all():
            break
    return float(returns.mean())


def run(
    lam_path: str, out_dir: str | os.PathLike[str], cfg: ImitationConfig, device: str = "cpu"
) -> dict[str, Any]:
    from genie.models.io import load_lam, resolve_checkpoint

    start = time.time()
    lam, reader = load_lam(resolve_checkpoint(lam_path, "LAM", "lam_ckpt"))
    lam.to(device).eval()
    if reader is not None:
        reader.to(device).eval()
    num_latent = int(lam.cfg.num_actions)
    frames, real = expert_data(cfg)
    latent = infer_latents(lam, frames, device, tokenizer=reader)
    rng = np.random.default_rng(cfg.seed)

    def policy_act(policy: Policy, mapping: np.ndarray | None) -> Any:
        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                logits = policy(torch.from_numpy(obs).to(device))
            a = torch.distributions.Categorical(logits=logits).sample().cpu().numpy()
            return mapping[a] if mapping is not None else a

        return act

    latent_bc = behaviour_clone(frames, latent, num_latent, cfg, device)
    oracle_bc = behaviour_clone(frames, real, len(ACTIONS), cfg, device)
    results: dict[str, Any] = {
        "config": asdict(cfg),
        "lam": str(lam_path),
        "random": evaluate(lambda obs: random_policy(rng, len(obs)), cfg, cfg.seed + 1),
        "expert_script": evaluate(lambda obs: coinrun_expert(rng, len(obs)), cfg, cfg.seed + 1),
        "oracle_bc": evaluate(policy_act(oracle_bc, None), cfg, cfg.seed + 1),
        "latent_bc": {},
    }
    for n in cfg.labels:
        amap = ActionMap.fit(
            latent, real, num_latent, len(ACTIONS), labels=n, seed=cfg.seed, real_names=ACTIONS
        )
        ret = evaluate(policy_act(latent_bc, np.asarray(amap.latent_to_real)), cfg, cfg.seed + 1)
        results["latent_bc"][str(n)] = {"return": ret, "map_accuracy": amap.accuracy["latent_to_real"]}
    results["seconds"] = round(time.time() - start, 1)
    write_report(results, Path(out_dir))
    return results


def write_report(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "imitation.json", json.dumps(results, indent=1))
    lines = [
        "| policy | labels N | mean return | latent→real map accuracy |",
        "|---|---|---|---|",
        f"| random | – | {results['random']:.2f} | |",
        f"| scripted expert (the data) | – | {results['expert_script']:.2f} | |",
        f"| BC on true actions (oracle) | all | {results['oracle_bc']:.2f} | |",
    ]
    for n, r in results["latent_bc"].items():
        lines.append(f"| BC on latent actions + map | {n} | {r['return']:.2f} | {r['map_accuracy']:.1%} |")
    atomic_write_text(out / "imitation.md", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    ns = [int(n) for n in results["latent_bc"]]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.plot(ns, [results["latent_bc"][str(n)]["return"] for n in ns], "o-", label="latent BC + N labels")
    for key, style in (("oracle_bc", "--"), ("random", ":"), ("expert_script", "-.")):
        ax.axhline(results[key], linestyle=style, color="grey", label=key)
    ax.set_xscale("log")
    ax.set_xlabel("labelled transitions N")
    ax.set_ylabel("mean return")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "imitation.tmp.png")  # then renamed: never half a picture
    os.replace(out / "imitation.tmp.png", out / "imitation.png")
    plt.close(fig)


def command(cfg: Any) -> None:
    """The body of ``python -m genie.imitation`` (conf/imitation.yaml)."""
    from genie.config import options

    out = Path(cfg.paths.output_dir)
    results = run(str(cfg.lam_ckpt), out, options(cfg.imitation, ImitationConfig), str(cfg.device))
    print((out / "imitation.md").read_text())
    print(f"-> {out}/imitation.json, imitation.md, imitation.png ({results['seconds']} s)")


def main() -> None:
    from genie.config import hydra_entry

    hydra_entry("imitation", command)()


if __name__ == "__main__":
    main()
