"""Dynamics model (MaskGIT): masking statistics, causality over frames, action alignment, paper size."""

from __future__ import annotations

import pytest
import torch

from genie.models.dynamics import DynamicsConfig, DynamicsModel
from genie.nn import KVCache, STConfig


def tiny(action_mode: str = "add") -> DynamicsModel:
    cfg = DynamicsConfig(
        num_codes=32,
        grid=(3, 4),
        num_actions=4,
        action_mode=action_mode,  # type: ignore[arg-type]
        transformer={"dim": 32, "depth": 2, "num_heads": 4},
    )
    return DynamicsModel(cfg).eval()


def test_shapes_and_loss() -> None:
    model = tiny()
    tokens = torch.randint(0, 32, (2, 5, 3, 4))
    actions = torch.randint(0, 4, (2, 4))
    logits = model(tokens, actions)
    assert logits.shape == (2, 5, 12, 32)
    loss, _, mask = model.loss(tokens, actions)
    assert torch.isfinite(loss) and mask.shape == (2, 5, 12)


def test_mask_rate_statistics() -> None:
    model = tiny()
    g = torch.Generator().manual_seed(0)
    mask = model.random_mask(4000, 4, g)
    assert not mask[:, 0].any()  # frame 1 is never masked
    rate_B = mask[:, 1:].float().mean(dim=(1, 2))
    assert rate_B.min() >= 0.3 and rate_B.max() <= 1.0
    assert abs(rate_B.mean().item() - 0.75) < 0.01  # U(0.5, 1) has mean 0.75
    assert abs((rate_B < 0.75).float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("mode", ["add", "prepend"])
def test_causal_over_frames(mode: str) -> None:
    model = tiny(mode)
    tokens = torch.randint(0, 32, (1, 5, 3, 4))
    actions = torch.randint(0, 4, (1, 4))
    a = model(tokens, actions)
    tokens2 = tokens.clone()
    tokens2[:, 3:] = torch.randint(0, 32, (1, 2, 3, 4))
    actions2 = actions.clone()
    actions2[:, 3:] = (actions[:, 3:] + 1) % 4  # the action into frame 4 changes
    b = model(tokens2, actions2)
    assert torch.equal(a[:, :3], b[:, :3])


@pytest.mark.parametrize("mode", ["add", "prepend"])
def test_action_conditions_the_frame_it_produced(mode: str) -> None:
    """a_{t-1} (transition t-1 → t) conditions frame t: changing it changes frame t's logits, never earlier ones."""
    model = tiny(mode)
    tokens = torch.randint(0, 32, (1, 4, 3, 4))
    actions = torch.tensor([[0, 1, 2]])
    base = model(tokens, actions)
    for i in range(3):
        changed = actions.clone()
        changed[0, i] = (changed[0, i] + 1) % 4
        out = model(tokens, changed)
        frame = i + 1
        assert torch.equal(out[:, :frame], base[:, :frame]), f"action {i} leaked into frames < {frame}"
        assert not torch.allclose(out[:, frame], base[:, frame]), f"action {i} does not reach frame {frame}"


@pytest.mark.parametrize("mode", ["add", "prepend"])
def test_cached_frames_match_full_pass(mode: str) -> None:
    model = tiny(mode)
    tokens = torch.randint(0, 32, (2, 4, 3, 4))
    actions = torch.randint(0, 4, (2, 3))
    full = model(tokens, actions)
    cache = KVCache()
    head = model(tokens[:, :3], actions[:, :2], cache=cache, write_cache=True)
    tail = model(tokens[:, 3:], actions[:, 2:], cache=cache)
    torch.testing.assert_close(torch.cat((head, tail), 1), full, rtol=1e-4, atol=1e-5)


def test_bad_actions_are_named() -> None:
    model = tiny()
    tokens = torch.randint(0, 32, (1, 3, 3, 4))
    with pytest.raises(ValueError, match=r"action ids must be in \[0, 4\)"):
        model(tokens, torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match="expected 2 actions"):
        model(tokens, torch.tensor([[0]]))


def test_dynamics_11b_on_meta_within_5_percent() -> None:
    st = STConfig(dim=5120, depth=48, num_heads=36, head_dim=128, mlp_ratio=0.4)
    cfg = DynamicsConfig(num_codes=1024, grid=(23, 40), transformer=st)
    with torch.device("meta"):
        model = DynamicsModel(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert n == cfg.num_params()
    assert abs(n / 10.1e9 - 1) < 0.05, n
