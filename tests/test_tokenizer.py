"""Video tokenizer: shapes, causality, ablation variants, overfitting one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genie.models import TokenizerConfig, VideoTokenizer


def tiny_cfg(**kw: object) -> TokenizerConfig:
    st = {"dim": 32, "depth": 1, "num_heads": 2}
    base: dict = {
        "image_size": (16, 24),
        "patch": 4,
        "num_codes": 64,
        "code_dim": 8,
        "encoder": st,
        "decoder": st,
    }
    base.update(kw)
    return TokenizerConfig(**base)


def test_encode_decode_shapes() -> None:
    model = VideoTokenizer(tiny_cfg()).eval()
    video = torch.rand(2, 3, 3, 16, 24)
    tokens = model.encode(video)
    assert tokens.shape == (2, 3, 4, 6) and tokens.dtype == torch.long
    assert tokens.min() >= 0 and tokens.max() < 64
    recon = model.decode(tokens)
    assert recon.shape == video.shape and recon.min() >= 0 and recon.max() <= 1
    out = model(video)
    assert torch.equal(out.tokens, tokens)
    torch.testing.assert_close(out.recon.clamp(0, 1), recon)


def test_non_divisible_frame_is_padded() -> None:
    model = VideoTokenizer(tiny_cfg(image_size=(18, 22))).eval()
    assert model.cfg.grid == (5, 6)
    out = model(torch.rand(1, 2, 3, 18, 22))
    assert out.recon.shape == (1, 2, 3, 18, 22)


@pytest.mark.parametrize("attention", ["st", "full"])
def test_tokenizer_is_causal_in_time(attention: str) -> None:
    st = {"dim": 32, "depth": 1, "num_heads": 2, "attention": attention}
    model = VideoTokenizer(tiny_cfg(encoder=st, decoder=st)).eval()
    video = torch.rand(1, 4, 3, 16, 24)
    changed = video.clone()
    changed[:, 2:] = torch.rand_like(changed[:, 2:])
    a, b = model(video), model(changed)
    assert torch.equal(a.tokens[:, :2], b.tokens[:, :2])
    assert torch.equal(a.recon[:, :2], b.recon[:, :2])


def test_spatial_variant_is_per_frame() -> None:
    st = {"dim": 32, "depth": 1, "num_heads": 2, "attention": "spatial"}
    model = VideoTokenizer(tiny_cfg(encoder=st, decoder=st)).eval()
    video = torch.rand(1, 3, 3, 16, 24)
    single = model(video[:, 1:2]).recon
    torch.testing.assert_close(model(video).recon[:, 1:2], single)


def test_bad_input_shape_error() -> None:
    model = VideoTokenizer(tiny_cfg())
    with pytest.raises(ValueError, match=r"expects video \(B, T, 3, 16, 24\)"):
        model(torch.rand(1, 2, 3, 32, 32))
    with pytest.raises(ValueError, match="expected tokens"):
        model.decode(torch.zeros(1, 2, 3, 3, dtype=torch.long))


def test_overfit_one_batch() -> None:
    """Reconstruction MSE falls 10x on one batch within a few hundred CPU steps."""
    torch.manual_seed(0)
    st = {"dim": 64, "depth": 1, "num_heads": 4}
    model = VideoTokenizer(tiny_cfg(encoder=st, decoder=st, num_codes=128, code_dim=16)).train()
    # smooth blobs: structured like frames, not white noise
    video = F.interpolate(torch.rand(2 * 2, 3, 4, 6), size=(16, 24), mode="bilinear").reshape(2, 2, 3, 16, 24)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _step in range(300):
        out = model(video)
        mse = F.mse_loss(out.recon, video)
        first = first if first is not None else mse.item()
        opt.zero_grad()
        (mse + out.vq.loss).backward()
        opt.step()
    assert mse.item() < first / 10, (first, mse.item())
