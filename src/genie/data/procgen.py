"""Procgen (CoinRun and the other 15 games) → clip shards with true actions: the paper's App. F dataset.

A uniformly random policy (or, by option, a sticky one) plays levels ``start_level .. start_level + num_levels - 1`` (procgen picks a level
for each episode; an episode lasts until the level ends or 1000 steps); every run of 16 consecutive frames
inside one episode becomes a clip whose 15 transitions keep their true action (procgen's 15-way action
space). Validation clips come from levels after the training ones, so they are unseen.

Each shard is made by its own environment batch seeded from ``(seed, split, shard index)``, so a shard's
content does not depend on which other shards exist or on how many processes made them: re-running the same
command keeps finished shards and makes only the missing ones (resumable), and the result is identical
whichever way it was produced (deterministic). The ``procgen2`` package (import ``procgen``) is the
``procgen`` extra; it needs numpy<2.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genie.data.shards import FPS, ShardWriter, atomic_write_text, claim_output_dir, clip_record, run_jobs

# The 16 procgen games (procgen.env.ENV_NAMES), checked before procgen is imported.
GAMES = (
    "bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot",
    "heist", "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot",
)  # fmt: skip
# procgen's 15 buttons combinations (procgen.env.ProcgenGym3Env.get_combos), index = action id.
ACTIONS = (
    "left+down", "left", "left+up", "down", "noop", "up", "right+down", "right", "right+up",
    "d", "a", "w", "s", "q", "e",
)  # fmt: skip
MAX_EPISODE_STEPS = 1000  # procgen ends every episode by then

# What a button does in the platformers (CoinRun, Ninja, ...): horizontal left / none / right x jump or not.
# "down" and the five letter buttons move nothing there, so 8 of the 15 buttons share "none".
EFFECTS = ("left", "left+jump", "none", "jump", "right", "right+jump")


def _effect_of(name: str) -> int:
    horizontal = 0 if "left" in name else (2 if "right" in name else 1)
    return 2 * horizontal + int("up" in name)


ACTION_EFFECTS = tuple(_effect_of(name) for name in ACTIONS)  # action id -> index into EFFECTS


def effect_factors(effects: Any) -> dict[str, Any]:
    """The two factors of effect class ids (:data:`EFFECTS`, a numpy array or torch tensor): ``horizontal``
    (0 left, 1 none, 2 right) and ``jump`` (0 / 1) - which of the two a labelling carries."""
    return {"horizontal": effects // 2, "jump": effects % 2}


def effect_ids(actions: Any) -> Any:
    """Effect class ids (:data:`EFFECTS`) of procgen action ids (a numpy array or torch tensor of any shape);
    unknown actions (-1) stay -1."""
    import torch

    if isinstance(actions, torch.Tensor):
        table = torch.tensor([*ACTION_EFFECTS, -1], device=actions.device)
        return table[actions.long()]  # index -1 is the table's last entry: -1 stays -1
    table_np = np.array([*ACTION_EFFECTS, -1])
    return table_np[np.asarray(actions, dtype=np.int64)]


@dataclass
class ProcgenShardConfig:
    """What :func:`write_procgen_shards` makes (the defaults are a CPU-sized CoinRun run)."""

    game: str = "coinrun"
    distribution_mode: str = "hard"  # App. F: hard
    train_transitions: int = 150_000  # transitions kept in train clips (15 per clip); the paper: 10M
    val_transitions: int = 7_500
    num_levels: int = 10_000  # train levels 0 .. num_levels-1; val levels follow them
    val_levels: int = 1_000
    start_level: int = 0
    clip_frames: int = 16
    clips_per_shard: int = 500
    num_envs: int = 64  # environments stepped together per shard
    seed: int = 0
    # The data policy: each step repeats the environment's previous action with this probability, else draws
    # uniformly (as people and trained agents play); 0 is App. F's uniformly random policy.
    action_repeat_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.game not in GAMES:
            raise ValueError(f"unknown procgen game {self.game!r}; choose one of: {', '.join(GAMES)}")
        if self.distribution_mode not in ("easy", "hard", "extreme", "memory", "exploration"):
            raise ValueError(
                f"distribution_mode must be easy, hard, extreme, memory or exploration, got {self.distribution_mode!r}"
            )
        if self.clip_frames < 2:
            raise ValueError(f"clip_frames must be >= 2 (one transition), got {self.clip_frames}")
        for name in ("train_transitions", "num_levels", "clips_per_shard", "num_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.action_repeat_prob < 1.0:
            raise ValueError(f"action_repeat_prob must be in [0, 1), got {self.action_repeat_prob}")

    def policy(self) -> Policy:
        """The data policy: uniformly random, sticky when ``action_repeat_prob`` > 0."""
        return (
            StickyPolicy(random_policy, self.action_repeat_prob) if self.action_repeat_prob else random_policy
        )

    def clips(self, split: str) -> int:
        n = self.train_transitions if split == "train" else self.val_transitions
        return math.ceil(n / (self.clip_frames - 1)) if n > 0 else 0

    def shard_counts(self, split: str) -> list[int]:
        """Clips in each shard of ``split`` (all full but the last)."""
        n = self.clips(split)
        full, rest = divmod(n, self.clips_per_shard)
        return [self.clips_per_shard] * full + ([rest] if rest else [])

    def levels(self, split: str) -> tuple[int, int]:
        """``(start_level, num_levels)`` of ``split``."""
        if split == "train":
            return self.start_level, self.num_levels
        return self.start_level + self.num_levels, self.val_levels


def make_env(cfg: ProcgenShardConfig, split: str, env_seed: int) -> Any:
    try:
        with contextlib.redirect_stderr(
            io.StringIO()
        ):  # procgen imports gym, which prints a deprecation banner
            from procgen import ProcgenGym3Env
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError(
            "procgen is not installed: pip install 'genie-world-model[procgen]' (it needs numpy<2; "
            "the Makefile keeps it in .venv-procgen)"
        ) from e
    start, levels = cfg.levels(split)
    return ProcgenGym3Env(
        num=cfg.num_envs,
        env_name=cfg.game,
        distribution_mode=cfg.distribution_mode,
        start_level=start,
        num_levels=levels,
        rand_seed=env_seed,
        num_threads=1,  # one process per shard; parallelism comes from several shard processes
    )


Policy = Callable[[np.random.Generator, int], np.ndarray]  # (rng, number of envs) -> action ids


def random_policy(rng: np.random.Generator, n: int) -> np.ndarray:
    """App. F's data policy: uniformly random over the 15 actions."""
    return rng.integers(0, len(ACTIONS), n)


class StickyPolicy:
    """``policy``, except that each environment repeats its previous action with probability ``repeat``
    (sticky actions: one draw per step and environment decides; the first step always draws)."""

    def __init__(self, policy: Policy, repeat: float) -> None:
        self.policy, self.repeat = policy, repeat
        self.previous: np.ndarray | None = None

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        fresh = np.asarray(self.policy(rng, n))
        keep = rng.random(n) < self.repeat
        if self.previous is not None and self.previous.shape == fresh.shape:
            fresh = np.where(keep, self.previous, fresh)
        self.previous = fresh
        return fresh


def coinrun_expert(rng: np.random.Generator, n: int) -> np.ndarray:
    """A scripted CoinRun "expert": the coin is at the far right of every level, so run right and jump often
    (right 60%, right+up 35%, up 5%). It reaches the coin far more often than the random policy."""
    return rng.choice(np.array([ACTIONS.index("right"), ACTIONS.index("right+up"), ACTIONS.index("up")]),
                      size=n, p=[0.6, 0.35, 0.05])  # fmt: skip


def procgen_clips(
    cfg: ProcgenShardConfig, split: str, num_clips: int, seed: int, policy: Policy = random_policy
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """``num_clips`` clips ``(frames_THW3, actions_(T-1), info)`` played by ``policy`` (default: uniformly
    random, App. F); deterministic by ``seed``.

    Clips never span two episodes: when an episode ends, the frames gathered since its last full clip are
    dropped. ``actions[t]`` is the action taken at frame t, which produced frame t+1.
    """
    seeds = np.random.SeedSequence(seed).generate_state(2)
    env = make_env(cfg, split, int(seeds[0]) & 0x7FFFFFFF)
    rng = np.random.default_rng(int(seeds[1]))
    n, t_clip = cfg.num_envs, cfg.clip_frames
    frames: list[list[np.ndarray]] = [[] for _ in range(n)]
    actions: list[list[int]] = [[] for _ in range(n)]
    episode = np.zeros(n, np.int64)
    step_in_episode = np.zeros(n, np.int64)
    made = 0
    _, obs, _ = env.observe()
    for i in range(n):
        frames[i].append(obs["rgb"][i].copy())
    while made < num_clips:
        act = np.asarray(policy(rng, n), dtype=np.int64)
        env.act(act.astype(np.int32))
        _, obs, first = env.observe()
        rgb = obs["rgb"]
        for i in range(n):
            if first[i]:  # a new episode began: this frame was not produced by the action
                episode[i] += 1
                step_in_episode[i] = 0
                frames[i], actions[i] = [rgb[i].copy()], []
                continue
            step_in_episode[i] += 1
            frames[i].append(rgb[i].copy())
            actions[i].append(int(act[i]))
            if len(frames[i]) == t_clip:
                info = {
                    "env": i,
                    "episode": int(episode[i]),
                    "start_step": int(step_in_episode[i]) - (t_clip - 1),
                }
                yield np.stack(frames[i]), np.asarray(actions[i], np.int64), info
                made += 1
                if made == num_clips:
                    break
                frames[i], actions[i] = [frames[i][-1]], []  # the next clip starts at this frame
    del env


def _shard_seed(cfg: ProcgenShardConfig, split: str, index: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, 0 if split == "train" else 1, index]).generate_state(1)[0])


def _write_shard(cfg: ProcgenShardConfig, out: str, split: str, index: int, count: int) -> str:
    pattern = str(Path(out) / f"{split}-%06d.tar")
    source = f"procgen/{cfg.game}/{split}"
    with ShardWriter(pattern, max_count=count + 1, start_index=index) as writer:
        for k, (frames, acts, info) in enumerate(
            procgen_clips(cfg, split, count, _shard_seed(cfg, split, index), policy=cfg.policy())
        ):
            record = clip_record(frames, source=source, actions=acts, fps=FPS, game=cfg.game, **info)
            writer.write(f"{split}{index:06d}_{k:05d}", frames, record)
    return pattern % index


def write_procgen_shards(
    out_dir: str | os.PathLike[str],
    cfg: ProcgenShardConfig | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``train-*.tar`` / ``val-*.tar`` clip shards of ``cfg.game`` under ``out_dir`` (+ ``manifest.json``).

    Resumable: shards already on disk (made with the same settings, see ``settings.json``) are kept and only the
    missing ones are made, in ``workers`` processes. ``progress(done, total)`` is called after each shard.
    """
    cfg = cfg or ProcgenShardConfig()
    out = Path(out_dir)
    settings = {
        "generator": "genie.data.procgen",
        "version": 1,
        "fps": FPS,
        "actions": list(ACTIONS),
        **asdict(cfg),
    }
    if not cfg.action_repeat_prob:  # the paper's policy: folders made before the option stay resumable
        settings.pop("action_repeat_prob")
    claim_output_dir(out, settings, "procgen shards")
    jobs = [
        (split, i, count) for split in ("train", "val") for i, count in enumerate(cfg.shard_counts(split))
    ]
    todo = [(cfg, str(out), *j) for j in jobs if not (out / f"{j[0]}-{j[1]:06d}.tar").exists()]
    run_jobs(_write_shard, todo, len(jobs), workers, progress)
    manifest = {
        "settings": settings,
        "shards": [f"{split}-{i:06d}.tar" for split, i, _ in jobs],
        "clips": {split: cfg.clips(split) for split in ("train", "val")},
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return manifest
