"""GenieEnv / GenieVectorEnv (gymnasium) over a tiny untrained Genie, and the latent <-> real action map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium", reason="the agents extra (gymnasium) is absent")

from gymnasium.utils.env_checker import check_env  # noqa: E402

from genie.envs import ActionMap, GenieEnv, GenieVectorEnv  # noqa: E402
from genie.models import Genie  # noqa: E402
from genie.models.dynamics import SamplingConfig  # noqa: E402
from tiny import SIZE, tiny_models  # noqa: E402


def tiny_genie(temperature: float = 1.0) -> Genie:
    torch.manual_seed(0)
    tok, lam, dyn = tiny_models()
    return Genie(tok, dyn, lam, SamplingConfig(steps=2, temperature=temperature))


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def test_env_passes_gymnasium_checker_and_truncates() -> None:
    env = GenieEnv(tiny_genie(), prompts=images(4), horizon=3)
    check_env(env, skip_render_check=False)
    obs, info = env.reset(seed=1)
    assert obs.shape == (SIZE, SIZE, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    assert env.action_space.n == 4
    for t in range(1, 4):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert reward == 0.0 and not terminated and truncated == (t == 3) and info["t"] == t
    assert np.array_equal(env.render(), obs)
    # same seed, same world
    a, _ = env.reset(seed=7)
    sa = env.step(2)[0]
    b, _ = env.reset(seed=7)
    assert np.array_equal(a, b) and np.array_equal(sa, env.step(2)[0])
    # an explicit prompt, and bad input
    own, _ = env.reset(options={"prompt": images(1, seed=5)[0]})
    assert own.shape == (SIZE, SIZE, 3)
    with pytest.raises(ValueError, match=r"actions must be in \[0, 4\)"):
        env.step(9)
    with pytest.raises(ValueError, match="no prompts"):
        GenieEnv(tiny_genie()).reset()


def test_vector_env_matches_single_envs() -> None:
    prompts = images(3, seed=2)
    actions = [[0, 1, 2], [3, 3, 0], [1, 0, 2], [2, 2, 1]]
    venv = GenieVectorEnv(tiny_genie(temperature=0.0), num_envs=3, horizon=4)
    obs, _ = venv.reset(seed=0, options={"prompt": prompts})
    batched = [obs]
    for a in actions:
        obs, rewards, terminated, truncated, info = venv.step(np.array(a))
        batched.append(obs)
    assert truncated.all() and not terminated.any() and rewards.shape == (3,)
    assert venv.observation_space.shape == (3, SIZE, SIZE, 3)
    # greedy sampling (temperature 0): each world alone gives the same frames as in the batch
    for i in range(3):
        env = GenieEnv(tiny_genie(temperature=0.0), horizon=4)
        single = [env.reset(seed=0, options={"prompt": prompts[i]})[0]]
        single += [env.step(a[i])[0] for a in actions]
        for t, frame in enumerate(single):
            assert np.array_equal(frame, batched[t][i]), (i, t)
    # next-step autoreset: after truncation the next step starts new worlds
    obs, rewards, _, truncated, info = venv.step(np.zeros(3, int))
    assert not truncated.any() and (info["t"] == 0).all()


def test_action_map_recovers_a_permutation_and_drives_real_actions() -> None:
    rng = np.random.default_rng(0)
    real = rng.integers(0, 6, 2000)
    perm = np.array([3, 0, 5, 1, 4, 2])
    amap = ActionMap.fit(perm[real], real, num_latent=6, num_real=6, labels=200)
    assert amap.accuracy["latent_to_real"] == 1.0 and amap.accuracy["real_to_latent"] == 1.0
    assert amap.real_to_latent == perm.tolist() and amap.labels == 200
    # a latent code standing for two real actions: latent -> real is right for the more frequent one
    noisy = ActionMap.fit(np.minimum(real, 4), real, num_latent=5, num_real=6)
    assert 0.75 < noisy.accuracy["latent_to_real"] < 0.9

    genie_map = ActionMap.fit(np.arange(4).repeat(10) % 4, np.arange(4).repeat(10) % 4 + 1, 4, 6, labels=30)
    env = GenieEnv(tiny_genie(), prompts=images(2), action_map=genie_map, real_actions=True, horizon=2)
    assert env.action_space.n == 6
    env.reset(seed=0)
    _, _, _, _, info = env.step(3)  # real action 3 <- latent 2
    assert info["latent_action"] == 2
    with pytest.raises(ValueError, match="needs an action_map"):
        GenieEnv(tiny_genie(), prompts=images(1), real_actions=True)


def test_action_map_saves_and_loads(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "action_map.json"
    amap = ActionMap.fit([0, 1, 2, 0, 1, 2], [1, 2, 0, 1, 2, 0], 3, 3, labels=3, real_names=["a", "b", "c"])
    assert ActionMap.load(amap.save(path)) == amap
    with pytest.raises(FileNotFoundError, match="fit_action_map"):
        ActionMap.load(Path(str(tmp_path)) / "none.json")


def test_fit_action_map_tool_then_real_action_env(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from genie.data.synthetic import write_synthetic_shards
    from test_export import write_checkpoint

    root = Path(str(tmp_path))
    ckpt = write_checkpoint(root / "last.ckpt")
    write_synthetic_shards(
        root / "data", train_clips=2, val_clips=6, clips_per_shard=3, height=SIZE, width=SIZE
    )
    tool = Path(__file__).resolve().parents[1] / "tools" / "fit_action_map.py"
    proc = subprocess.run(
        [sys.executable, str(tool), str(ckpt), str(root / "data" / "val-*.tar"), "--labels", "40"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "held-out (50) accuracy" in proc.stdout and (root / "action_map.json").exists()
    amap = ActionMap.load(root / "action_map.json")
    assert amap.num_latent == 4 and amap.num_real == 6 and amap.real_names[1] == "left"  # type: ignore[index]
    env = GenieEnv(ckpt, prompts=str(root / "data" / "val-*.tar"), real_actions=True)  # finds the map
    assert env.action_space.n == 6
    env.reset(seed=0)
    assert env.step(5)[4]["latent_action"] == amap.real_to_latent[5]
    bad = subprocess.run(
        [sys.executable, str(tool), str(ckpt), str(root / "nothing-*.tar")], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "no shards match" in bad.stderr and "Traceback" not in bad.stderr
