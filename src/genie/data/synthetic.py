"""A procedurally generated 2D platformer: the embedded default dataset (no download).

Every world is drawn from a seed: a colour theme, a background of hills and clouds (optionally parallax), a
striped ground with gaps, floating platforms at random heights, coins, and a player sprite with gravity and
jumps (its pose shows the buttons held: legs apart while running, a yellow body while jump is held). The
camera follows the player, so running scrolls the view by ``run_speed`` pixels a frame: 4 by default, one
token of the tiny tokenizer's 4-pixel patches, so that a control learnt by a small model is "move the tokens
one place" rather than a table of half-shifted codes (``run_speed=2, parallax=0.5`` is the harder world).
A uniformly random policy (a fresh action every frame, like the random agents behind the CoinRun datasets;
``action_repeat_prob`` adds persistence) drives the player over a small real action set, and the true
action of every transition is recorded so that latent actions can be evaluated against it.

Pure numpy; deterministic per seed. Frames render at a logical height of 64 px and are resampled
(nearest neighbour) to any requested size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genie.data.shards import FPS, ShardWriter, atomic_write_text, clip_record

ACTIONS = ("noop", "left", "right", "jump", "left+jump", "right+jump")
NUM_ACTIONS = len(ACTIONS)

_LOGICAL_H = 64
# fmt: off
_THEMES = (  # sky, far hills, clouds, ground, ground texture, platform, platform edge
    ((110, 170, 255), (80, 150, 90), (240, 245, 255), (150, 95, 45), (120, 70, 30), (200, 120, 60), (90, 50, 20)),
    ((255, 190, 120), (200, 110, 80), (255, 225, 190), (95, 75, 60), (70, 55, 45), (170, 140, 100), (60, 45, 30)),
    ((20, 25, 60), (45, 50, 100), (110, 110, 150), (60, 60, 80), (40, 40, 55), (120, 120, 170), (200, 200, 240)),
    ((180, 230, 240), (140, 200, 210), (255, 255, 255), (230, 240, 250), (170, 200, 220), (100, 160, 200), (40, 90, 140)),
    ((60, 20, 20), (110, 40, 30), (160, 80, 60), (40, 30, 30), (90, 30, 20), (200, 80, 40), (255, 170, 60)),
)
# fmt: on
_PLAYER = np.array(
    [  # 0 transparent, 1 body, 2 face, 3 eye, 4 shoes
        [0, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 2, 2, 2, 3, 1],
        [1, 2, 2, 2, 2, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 0],
        [0, 1, 0, 0, 1, 0],
        [0, 4, 0, 0, 4, 0],
    ],
    dtype=np.uint8,
)
_PLAYER_COLOURS = np.array([[0, 0, 0], [220, 30, 40], [250, 210, 170], [10, 10, 10], [40, 40, 200]], np.uint8)
# The sprite shows the buttons held, as platformer animations do: legs apart while running, and the body
# lights up (yellow) while jump is held. Every action therefore leaves a visible trace in the next frame.
_PLAYER_RUN = _PLAYER.copy()
_PLAYER_RUN[6:] = [[1, 0, 0, 0, 0, 1], [4, 0, 0, 0, 0, 4]]
_JUMP_BODY = np.array([250, 200, 20], np.uint8)
_COIN = (250, 215, 0)

_GRAVITY = 0.6
_JUMP_SPEED = 5.2  # at sprite_scale 1
_MAX_FALL = 6.0


@dataclass
class PlatformerConfig:
    """Knobs of the synthetic world and its random policy."""

    height: int = 64
    width: int = 64
    world_width: int = 1536  # logical pixels
    # Chance that the policy keeps its last action. 0 (i.i.d.): the last frames never predict the next action,
    # so a latent action model has to get it from the transition itself (persistent actions let the LAM's
    # decoder guess the action from the sprite's pose and leave the codes meaningless for much longer).
    action_repeat_prob: float = 0.0
    num_platforms: int = 28
    num_gaps: int = 6
    num_coins: int = 20
    camera_deadzone: float = 0.0  # > 0: the camera scrolls only when the player leaves the middle band
    parallax: float = 1.0  # background scroll speed relative to the foreground (1: no parallax)
    run_speed: float = 4.0  # logical pixels per frame
    sprite_scale: int = 1  # the player is 6x8 logical pixels times this


class PlatformerWorld:
    """One world: static layers rendered once, the player simulated and composited per frame."""

    def __init__(self, seed: int, cfg: PlatformerConfig | None = None) -> None:
        self.cfg = cfg or PlatformerConfig()
        self.rng = np.random.default_rng(seed)
        self.view_w = max(16, round(_LOGICAL_H * self.cfg.width / self.cfg.height))
        ww = max(self.cfg.world_width, 4 * self.view_w)
        self.world_w = ww
        k = max(1, int(self.cfg.sprite_scale))
        self.sprites = {
            run: np.kron(sprite, np.ones((k, k), np.uint8))
            for run, sprite in ((False, _PLAYER), (True, _PLAYER_RUN))
        }
        self.ph, self.pw = self.sprites[False].shape
        # A bigger player jumps proportionally higher (apex ~14 px above its head at any scale).
        self.jump_speed = _JUMP_SPEED * float(np.sqrt((self.ph + 14.5) / (_PLAYER.shape[0] + 14.5)))
        theme = _THEMES[int(self.rng.integers(len(_THEMES)))]
        self._build_layers(theme)
        self.x = float(self.rng.integers(self.view_w // 2, ww - self.view_w // 2))
        self.y = float(self._surface_below(self.x, 0.0)) - self.ph
        self.vy = 0.0
        self.facing = 1
        self.running = False
        self.jump_held = False
        self.cam = float(np.clip(self.x + self.pw / 2 - self.view_w / 2, 0, ww - self.view_w))

    def _build_layers(self, theme: tuple[tuple[int, int, int], ...]) -> None:
        sky, hills, clouds, ground, texture, platform, edge = (np.array(c, np.uint8) for c in theme)
        rng, h, ww = self.rng, _LOGICAL_H, self.world_w
        # Background (scrolls at ``parallax`` times the foreground's speed): sky, rolling hills, clouds.
        bw = int(ww * self.cfg.parallax) + self.view_w
        bg = np.empty((h, bw, 3), np.uint8)
        bg[:] = sky
        xs = np.arange(bw)
        phase, period, amp = rng.uniform(0, 6.3), rng.uniform(40, 90), rng.uniform(5, 10)
        hill_top = (h * 0.55 + amp * np.sin(xs / period * 2 * np.pi + phase)).astype(int)
        rows = np.arange(h)[:, None]
        bg[rows >= hill_top[None]] = hills
        for _ in range(bw // 40):
            cx, cy = int(rng.integers(0, bw)), int(rng.integers(4, h // 3))
            cw, ch = int(rng.integers(8, 18)), int(rng.integers(3, 6))
            bg[cy : cy + ch, cx : cx + cw] = clouds
        self.background = bg
        # Foreground: ground with gaps and a stripe texture (so horizontal motion is visible), platforms, coins.
        fg = np.zeros((h, ww, 3), np.uint8)
        solid = np.zeros((h, ww), bool)
        self.ground_y = h - 10
        solid[self.ground_y :, :] = True
        for _ in range(self.cfg.num_gaps):
            gx = int(rng.integers(self.view_w, ww - self.view_w))
            solid[self.ground_y :, gx : gx + int(rng.integers(8, 16))] = False
        fg[solid] = ground
        # Stripes with a 12-px period: a 4-px scroll either way looks different (a period of 8 would look the
        # same scrolled 4 px left or right, hiding the direction of motion).
        band = (np.arange(ww) // 6) % 2 == 0
        stripes = band[None] & solid & (np.arange(h)[:, None] >= self.ground_y + 2)
        fg[stripes] = texture
        fg[self.ground_y, solid[self.ground_y]] = edge
        for _ in range(self.cfg.num_platforms):
            px, pw = int(rng.integers(0, ww - 24)), int(rng.integers(12, 28))
            py = int(rng.integers(self.ground_y - self.ph - 28, self.ground_y - self.ph - 2))
            solid[py : py + 4, px : px + pw] = True
            fg[py : py + 4, px : px + pw] = platform
            fg[py, px : px + pw] = edge
        for _ in range(self.cfg.num_coins):
            cx, cy = int(rng.integers(0, ww - 3)), int(rng.integers(self.ground_y - 40, self.ground_y - 4))
            if not solid[cy : cy + 3, cx : cx + 3].any():
                fg[cy : cy + 3, cx : cx + 3] = _COIN
        self.foreground, self.solid = fg, solid
        self.opaque = np.asarray(fg.any(-1), dtype=bool)

    def _surface_below(self, x: float, y: float) -> int:
        """Top row of the first solid cell under the player's feet at or below ``y`` (or the floor of the world)."""
        cols = slice(int(x), int(x) + self.pw)
        solid_rows = np.nonzero(self.solid[int(max(y, 0)) :, cols].any(1))[0]
        return int(max(y, 0)) + int(solid_rows[0]) if len(solid_rows) else _LOGICAL_H + 20

    def step(self, action: int) -> None:
        """Advance physics by one frame (1/10 s of game time at the dataset's 10 FPS)."""
        name = ACTIONS[action]
        ph, pw = self.ph, self.pw
        speed = self.cfg.run_speed
        dx = (-speed if "left" in name else 0.0) + (speed if "right" in name else 0.0)
        self.running, self.jump_held = bool(dx), "jump" in name
        if dx:
            self.facing = 1 if dx > 0 else -1
            nx = float(np.clip(self.x + dx, 0, self.world_w - pw))
            body = self.solid[int(max(self.y, 0)) : int(self.y) + ph - 1, int(nx) : int(nx) + pw]
            if not body.any():
                self.x = nx
        feet = int(self.y) + ph
        on_ground = 0 <= feet < _LOGICAL_H and self.solid[feet, int(self.x) : int(self.x) + pw].any()
        if "jump" in name and on_ground:
            self.vy = -self.jump_speed
        self.vy = min(self.vy + _GRAVITY, _MAX_FALL)
        ny = self.y + self.vy
        if self.vy > 0:  # falling: land on the first surface crossed
            surface = self._surface_below(self.x, self.y + ph)
            if ny + ph >= surface:
                ny, self.vy = float(surface - ph), 0.0
        elif ny < 0:
            ny, self.vy = 0.0, 0.0
        self.y = ny
        if self.y > _LOGICAL_H + 8:  # fell through a gap: respawn on the ground
            self.x = float(np.clip(self.x + 24 * self.facing, 0, self.world_w - pw))
            self.y, self.vy = -float(ph), 0.0
        self._follow()

    def _follow(self) -> None:
        """Dead-zone camera (as in most platformers): scroll only to keep the player in the middle band."""
        vw, pw = self.view_w, self.pw
        margin = vw * (1 - self.cfg.camera_deadzone) / 2
        centre = self.x + pw / 2
        if centre - self.cam < margin:
            self.cam = centre - margin
        elif centre - self.cam > vw - margin:
            self.cam = centre - (vw - margin)
        self.cam = float(np.clip(self.cam, 0, self.world_w - vw))

    def render(self) -> np.ndarray:
        """The current view as ``frame_HW3`` uint8 at the configured size."""
        vw, ph, pw = self.view_w, self.ph, self.pw
        cam = int(self.cam)
        bx = int(cam * self.cfg.parallax)
        bg = self.background[:, bx : bx + vw]
        fg = self.foreground[:, cam : cam + vw]
        frame = np.where(self.opaque[:, cam : cam + vw, None], fg, bg)
        sprite = self.sprites[self.running]
        sprite = sprite[:, ::-1] if self.facing < 0 else sprite
        colours = _PLAYER_COLOURS.copy()
        if self.jump_held:
            colours[1] = _JUMP_BODY
        top, left = round(self.y), int(self.x) - cam
        r0, r1 = max(top, 0), min(top + ph, _LOGICAL_H)
        if r1 > r0:
            s = sprite[r0 - top : r1 - top, : max(0, min(pw, vw - left))]
            region = frame[r0:r1, left : left + s.shape[1]]
            region[s > 0] = colours[s[s > 0]]
        if (self.cfg.height, self.cfg.width) != (_LOGICAL_H, vw):
            rows = (np.arange(self.cfg.height) * _LOGICAL_H // self.cfg.height).clip(0, _LOGICAL_H - 1)
            cols = (np.arange(self.cfg.width) * vw // self.cfg.width).clip(0, vw - 1)
            frame = frame[rows][:, cols]
        return np.ascontiguousarray(frame)


def random_policy(rng: np.random.Generator, steps: int, repeat_prob: float) -> np.ndarray:
    """Actions with persistence: keep the last action with ``repeat_prob``, else draw uniformly."""
    actions = np.empty(steps, np.int64)
    a = int(rng.integers(NUM_ACTIONS))
    for i in range(steps):
        if rng.random() > repeat_prob:
            a = int(rng.integers(NUM_ACTIONS))
        actions[i] = a
    return actions


def generate_episode(
    seed: int, num_frames: int, cfg: PlatformerConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One world played by the random policy: ``frames_THW3`` uint8 and ``actions_(T-1)`` (action t → frame t+1)."""
    world = PlatformerWorld(seed, cfg)
    actions = random_policy(world.rng, num_frames - 1, world.cfg.action_repeat_prob)
    frames = np.empty((num_frames, world.cfg.height, world.cfg.width, 3), np.uint8)
    frames[0] = world.render()
    for t, a in enumerate(actions):
        world.step(int(a))
        frames[t + 1] = world.render()
    return frames, actions


def generate_clips(
    seed: int,
    num_clips: int,
    clip_frames: int = 16,
    clips_per_episode: int = 10,
    cfg: PlatformerConfig | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, int]]]:
    """Yield ``(frames_THW3, actions_(T-1), info)`` clips; each episode (one world) is cut into consecutive clips."""
    made, episode = 0, 0
    while made < num_clips:
        ep_seed = int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])
        n = min(clips_per_episode, num_clips - made)
        frames, actions = generate_episode(ep_seed, n * clip_frames, cfg)
        for c in range(n):
            s = c * clip_frames
            info = {"episode": episode, "episode_seed": ep_seed, "start_frame": s}
            yield frames[s : s + clip_frames], actions[s : s + clip_frames - 1], info
            made += 1
        episode += 1


def write_synthetic_shards(
    out_dir: str | Path,
    train_clips: int = 2000,
    val_clips: int = 200,
    clips_per_shard: int = 100,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    clip_frames: int = 16,
    run_speed: float = 4.0,
    parallax: float = 1.0,
) -> dict[str, Any]:
    """Write ``train-*.tar`` and ``val-*.tar`` shards of platformer clips (val worlds are unseen in train).
    ``run_speed`` and ``parallax``: see :class:`PlatformerConfig`.

    Idempotent: a ``manifest.json`` is written last; when it exists with the same settings nothing is redone.
    """
    out = Path(out_dir)
    settings = {
        "generator": "genie.data.synthetic",
        "version": 4,  # 2: the sprite shows the buttons held; 3: i.i.d. random actions; 4: 12-px stripes
        "train_clips": train_clips,
        "val_clips": val_clips,
        "clips_per_shard": clips_per_shard,
        "height": height,
        "width": width,
        "seed": seed,
        "clip_frames": clip_frames,
        "fps": FPS,
        "actions": list(ACTIONS),
        "run_speed": float(run_speed),
        "parallax": float(parallax),
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("settings") == settings and all((out / p).exists() for p in manifest["shards"]):
            return manifest
    for stale in [*out.glob("train-*.tar"), *out.glob("val-*.tar")]:  # other settings: start afresh
        stale.unlink()
    cfg = PlatformerConfig(height=height, width=width, run_speed=run_speed, parallax=parallax)
    shards: list[str] = []
    for split, n, split_seed in (("train", train_clips, seed), ("val", val_clips, seed + 1_000_003)):
        with ShardWriter(str(out / f"{split}-%06d.tar"), max_count=clips_per_shard) as writer:
            for i, (frames, actions, info) in enumerate(generate_clips(split_seed, n, clip_frames, cfg=cfg)):
                record = clip_record(frames, source=f"synthetic-platformer/{split}", actions=actions, **info)
                writer.write(f"{split}{i:08d}", frames, record)
        shards += [Path(p).name for p in writer.paths]
    manifest = {"settings": settings, "shards": shards}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    return manifest
