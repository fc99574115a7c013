"""Agents in generated worlds: Gymnasium environments over a trained :class:`~genie.models.Genie`.

    from genie.envs import GenieEnv
    env = GenieEnv("exported/platformer", prompts="data/synthetic-64/val-*.tar", horizon=16)
    obs, info = env.reset(seed=0)                    # a world generated from one prompt image
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())

- ``action_space = Discrete(|A|)``: the latent actions; with an :class:`ActionMap` (fitted from a few
  labelled transitions, App. F) and ``real_actions=True`` the env takes the *real* actions of a known game
  (e.g. CoinRun's 15) and maps them to latent ones.
- observations: RGB uint8 frames at the model's size; ``render()`` returns the current frame.
- ``reset(seed, options={"prompt": image | path})`` starts from that image, else from one drawn from the
  configured prompts (images, image files, or the first frames of clips in a shard set).
- ``terminated`` is always False (a world model has no game over); ``truncated`` after ``horizon`` steps
  (default 16, the model's memory). Genie predicts no reward: ``reward_fn(prev, frame, action)`` can add one.
- :class:`GenieVectorEnv` steps ``num_envs`` worlds in one batched forward pass (gymnasium's vector API).

Needs the ``agents`` extra (gymnasium).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import gymnasium as gym
    from gymnasium import spaces
    from gymnasium.vector.utils import batch_space
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError("genie.envs needs gymnasium: pip install 'genie-world-model[agents]'") from err

from genie.data.shards import atomic_write_text
from genie.metrics.actions import fit_action_map
from genie.models.genie import Genie

RewardFn = Callable[[np.ndarray, np.ndarray, int], float]


# -- latent <-> real actions ------------------------------------------------------------------------------
@dataclass
class ActionMap:
    """Latent→real and real→latent action maps fitted from labelled transitions (Genie App. F)."""

    latent_to_real: list[int]
    real_to_latent: list[int]
    labels: int = 0  # labelled transitions it was fitted on
    accuracy: dict[str, float] = field(default_factory=dict)  # on held-out labelled transitions
    real_names: list[str] | None = None

    @property
    def num_latent(self) -> int:
        return len(self.latent_to_real)

    @property
    def num_real(self) -> int:
        return len(self.real_to_latent)

    @classmethod
    def fit(
        cls,
        latent: Any,
        real: Any,
        num_latent: int,
        num_real: int,
        labels: int = 200,
        seed: int = 0,
        real_names: Sequence[str] | None = None,
    ) -> ActionMap:
        """Fit on ``labels`` random transitions of the pairs ``(latent, real)``; accuracy on the others:
        ``latent_to_real`` (real action predicted from the latent one) and ``real_to_latent`` (latent action
        predicted from the real one, against the LAM's)."""
        lat = torch.as_tensor(latent).reshape(-1).long()
        rea = torch.as_tensor(real).reshape(-1).long()
        if lat.shape != rea.shape or lat.numel() < 2:
            raise ValueError(
                f"need matching latent and real action sequences, got {lat.numel()} and {rea.numel()}"
            )
        if (
            int(rea.min()) < 0
            or int(rea.max()) >= num_real
            or int(lat.min()) < 0
            or int(lat.max()) >= num_latent
        ):
            raise ValueError(f"actions out of range: latent in [0, {num_latent}), real in [0, {num_real})")
        order = torch.randperm(lat.numel(), generator=torch.Generator().manual_seed(seed))
        n = min(labels, lat.numel() - 1)
        fit_idx, test_idx = order[:n], order[n:]
        l2r = fit_action_map(lat[fit_idx], rea[fit_idx], num_latent)
        r2l = fit_action_map(rea[fit_idx], lat[fit_idx], num_real)
        accuracy = {
            "latent_to_real": float((l2r[lat[test_idx]] == rea[test_idx]).float().mean()),
            "real_to_latent": float((r2l[rea[test_idx]] == lat[test_idx]).float().mean()),
            "held_out": int(test_idx.numel()),
        }
        names = list(real_names) if real_names is not None else None
        return cls(l2r.tolist(), r2l.tolist(), int(n), accuracy, names)

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ActionMap:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no action map at {path}; fit one with tools/fit_action_map.py")
        return cls(**json.loads(path.read_text()))


# -- prompts ------------------------------------------------------------------------------------------
def load_prompts(source: Any, size: tuple[int, int], limit: int = 256) -> list[np.ndarray]:
    """Prompt frames (H×W×3 uint8 at ``size``) from images/arrays, image paths, or a shard pattern (the first
    frame of each clip, up to ``limit``)."""
    from genie.data.pipeline import expand_shards, resize_crop
    from genie.data.shards import read_shard
    from genie.media import load_image

    if source is None:
        return []
    items = [source] if isinstance(source, str | os.PathLike | np.ndarray) else list(source)
    frames: list[np.ndarray] = []
    for item in items:
        if isinstance(item, np.ndarray):
            arr = item if item.dtype == np.uint8 else (np.clip(item, 0, 1) * 255).round().astype(np.uint8)
            t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
            frames.append(resize_crop(t, size)[0].permute(1, 2, 0).numpy())
        elif str(item).endswith(".tar") or any(c in str(item) for c in "*?{"):
            shards = expand_shards(str(item))
            if not shards:
                raise FileNotFoundError(f"no shards match {item!r} for prompts")
            for shard in shards:
                for _, clip, _ in read_shard(shard):
                    t = torch.from_numpy(np.ascontiguousarray(clip[:1])).permute(0, 3, 1, 2)
                    frames.append(resize_crop(t, size)[0].permute(1, 2, 0).numpy())
                    if len(frames) >= limit:
                        return frames
        else:
            frames.append(load_image(Path(item), size)[0])
    return frames


def load_genie(genie: Genie | str | os.PathLike[str], device: str) -> Genie:
    if isinstance(genie, Genie):
        return genie
    path = Path(genie)
    return (
        Genie.from_pretrained(path, device=device)
        if path.is_dir()
        else Genie.from_checkpoints(path, device=device)
    )


def _to_uint8(frame_BCHW: torch.Tensor) -> np.ndarray:
    return (frame_BCHW.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class _Worlds:
    """What GenieEnv and GenieVectorEnv share: the model, prompts, the action mapping and the horizon."""

    def __init__(
        self,
        genie: Genie | str | os.PathLike[str],
        prompts: Any,
        horizon: int,
        action_map: ActionMap | str | os.PathLike[str] | None,
        real_actions: bool,
        reward_fn: RewardFn | None,
        device: str,
    ) -> None:
        self.genie = load_genie(genie, device).eval()
        if action_map is None and not isinstance(genie, Genie):  # saved beside the model by fit_action_map
            beside = (Path(genie) if Path(genie).is_dir() else Path(genie).parent) / "action_map.json"
            action_map = beside if beside.is_file() else None
        self.size = self.genie.image_size
        self.prompts = load_prompts(prompts, self.size)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        self.horizon = horizon
        self.action_map = (
            ActionMap.load(action_map) if isinstance(action_map, str | os.PathLike) else action_map
        )
        if real_actions and self.action_map is None:
            raise ValueError("real_actions=True needs an action_map (fit one with tools/fit_action_map.py)")
        if self.action_map is not None and self.action_map.num_latent != self.genie.num_actions:
            raise ValueError(
                f"the action map has {self.action_map.num_latent} latent actions but the model {self.genie.num_actions}"
            )
        self.real_actions = real_actions
        self.reward_fn = reward_fn
        n = self.action_map.num_real if real_actions and self.action_map else self.genie.num_actions
        self.single_action_space = spaces.Discrete(n)
        h, w = self.size
        self.single_observation_space = spaces.Box(0, 255, (h, w, 3), np.uint8)

    def latent(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions, dtype=np.int64).reshape(-1)
        if (a < 0).any() or (a >= self.single_action_space.n).any():
            raise ValueError(f"actions must be in [0, {self.single_action_space.n}), got {a.tolist()}")
        if self.real_actions:
            assert self.action_map is not None
            return np.asarray(self.action_map.real_to_latent, np.int64)[a]
        return a

    def pick_prompts(self, rng: np.random.Generator, n: int, options: dict[str, Any] | None) -> np.ndarray:
        given = (options or {}).get("prompt")
        if given is not None:
            frames = load_prompts(given if isinstance(given, list) else [given], self.size)
            if len(frames) == 1 and n > 1:
                frames = frames * n
            if len(frames) != n:
                raise ValueError(f"options['prompt'] gave {len(frames)} prompts for {n} worlds")
            return np.stack(frames)
        if not self.prompts:
            raise ValueError(
                "no prompts: pass prompts= (images, files or shards) or reset(options={'prompt': image})"
            )
        return np.stack([self.prompts[int(i)] for i in rng.integers(len(self.prompts), size=n)])


class GenieEnv(gym.Env[np.ndarray, np.int64]):
    """One generated world (see the module docstring)."""

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 10}  # noqa: RUF012 (gymnasium API)

    def __init__(
        self,
        genie: Genie | str | os.PathLike[str],
        prompts: Any = None,
        horizon: int = 16,
        action_map: ActionMap | str | os.PathLike[str] | None = None,
        real_actions: bool = False,
        reward_fn: RewardFn | None = None,
        render_mode: str | None = "rgb_array",
        device: str = "cpu",
    ) -> None:
        super().__init__()
        self.worlds = _Worlds(genie, prompts, horizon, action_map, real_actions, reward_fn, device)
        self.action_space = self.worlds.single_action_space
        self.observation_space = self.worlds.single_observation_space
        self.render_mode = render_mode
        self._frame: np.ndarray | None = None
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        prompt = self.worlds.pick_prompts(self.np_random, 1, options)
        world_seed = int(self.np_random.integers(2**31))
        self._frame = _to_uint8(self.worlds.genie.reset(prompt[0], seed=world_seed))[0]
        self._t = 0
        return self._frame.copy(), {"t": 0}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        latent = self.worlds.latent(np.asarray(action))
        prev = self._frame
        self._frame = _to_uint8(self.worlds.genie.step(int(latent[0])))[0]
        self._t += 1
        reward = float(
            self.worlds.reward_fn(prev, self._frame, int(np.asarray(action)))
            if self.worlds.reward_fn
            else 0.0
        )
        return (
            self._frame.copy(),
            reward,
            False,
            self._t >= self.worlds.horizon,
            {"t": self._t, "latent_action": int(latent[0])},
        )

    def render(self) -> np.ndarray | None:
        return None if self._frame is None else self._frame.copy()


class GenieVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` worlds stepped together in one batched forward pass. All worlds share the horizon, so they
    truncate together; the next ``step`` then resets them (gymnasium's next-step autoreset)."""

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium API)
        "render_modes": ["rgb_array"],
        "render_fps": 10,
        "autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        genie: Genie | str | os.PathLike[str],
        num_envs: int,
        prompts: Any = None,
        horizon: int = 16,
        action_map: ActionMap | str | os.PathLike[str] | None = None,
        real_actions: bool = False,
        reward_fn: RewardFn | None = None,
        device: str = "cpu",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.worlds = _Worlds(genie, prompts, horizon, action_map, real_actions, reward_fn, device)
        self.num_envs = num_envs
        self.single_action_space = self.worlds.single_action_space
        self.single_observation_space = self.worlds.single_observation_space
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.render_mode = "rgb_array"
        self._frames: np.ndarray | None = None
        self._t = 0
        self._needs_reset = False
        self._options: dict[str, Any] | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._np_random, _ = gym.utils.seeding.np_random(seed)
        self._options = options
        prompts = self.worlds.pick_prompts(self.np_random, self.num_envs, options)
        world_seed = int(self.np_random.integers(2**31))
        self._frames = _to_uint8(
            self.worlds.genie.reset(
                torch.from_numpy(prompts).permute(0, 3, 1, 2)[:, None].float() / 255, seed=world_seed
            )
        )
        self._t, self._needs_reset = 0, False
        return self._frames.copy(), {"t": np.zeros(self.num_envs, np.int64)}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._frames is None:
            raise RuntimeError("call reset() before step()")
        n = self.num_envs
        if self._needs_reset:  # next-step autoreset: this step starts new worlds and ignores the actions
            obs, info = self.reset(options=self._options)
            return obs, np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), info
        acts = np.asarray(actions, dtype=np.int64).reshape(-1)
        if acts.shape[0] != n:
            raise ValueError(f"expected {n} actions (one per world), got {acts.shape[0]}")
        latent = self.worlds.latent(acts)
        prev = self._frames
        self._frames = _to_uint8(self.worlds.genie.step(torch.from_numpy(latent)))
        self._t += 1
        fn = self.worlds.reward_fn
        rewards = np.array(
            [fn(p, f, int(a)) for p, f, a in zip(prev, self._frames, acts, strict=True)]
            if fn
            else np.zeros(n),
            np.float64,
        )
        truncated = np.full(n, self._t >= self.worlds.horizon)
        self._needs_reset = bool(truncated[0])
        info = {"t": np.full(n, self._t, np.int64), "latent_action": latent}
        return self._frames.copy(), rewards, np.zeros(n, bool), truncated, info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        return None if self._frames is None else self._frames.copy()
