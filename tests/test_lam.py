"""Latent action model: shapes, the decoder's information bottleneck, param counts, overfitting one batch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genie.models.aids import LAMAids
from genie.models.lam import LAMConfig, LatentActionModel
from genie.nn.static_shapes import windows


def tiny_cfg(**kw: object) -> LAMConfig:
    base: dict[str, object] = {
        "image_size": (32, 48),
        "patch": 16,
        "num_actions": 4,
        "latent_dim": 8,
        "encoder": {"dim": 32, "depth": 2, "num_heads": 4},
        "decoder": {"dim": 32, "depth": 2, "num_heads": 4},
    }
    aids = {k: kw.pop(k) for k in list(kw) if k in LAMAids.__dataclass_fields__}  # aids by their own name
    base.update(kw, aids=aids)
    return LAMConfig(**base)  # type: ignore[arg-type]


def test_shapes_and_infer_actions() -> None:
    model = LatentActionModel(tiny_cfg())
    video = torch.rand(2, 5, 3, 32, 48)
    out = model(video)
    assert out.pred.shape == (2, 4, 3, 32, 48)
    assert out.pred.min() >= 0 and out.pred.max() <= 1
    assert out.actions.shape == (2, 4) and torch.isfinite(out.loss)
    actions = model.infer_actions(video)
    assert actions.shape == (2, 4) and actions.dtype == torch.long
    assert actions.min() >= 0 and actions.max() < 4


def test_non_multiple_frame_size_pads() -> None:
    model = LatentActionModel(tiny_cfg(image_size=(20, 40)))
    assert model.cfg.grid == (2, 3)
    assert model(torch.rand(1, 3, 3, 20, 40)).pred.shape == (1, 2, 3, 20, 40)


def test_decoder_sees_next_frame_only_through_the_action() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg()).eval()
    video = torch.rand(1, 6, 3, 32, 48)
    z = model.quantize(video).z_q
    pred = model.decode(video[:, :-1], z)
    for k in range(1, 5):  # perturb context frame k: predictions of frames <= k (indices < k) are unchanged
        other = video.clone()
        other[:, k] = torch.rand_like(other[:, k])
        pred2 = model.decode(other[:, :-1], z)
        assert torch.allclose(pred[:, :k], pred2[:, :k], atol=1e-6)
        assert not torch.allclose(pred[:, k:], pred2[:, k:])
    # The encoder: the action of transition t -> t+1 does not depend on frames after t+1.
    latents = model.encode_latents(video)
    other = video.clone()
    other[:, 4:] = torch.rand_like(other[:, 4:])
    assert torch.allclose(latents[:, :3], model.encode_latents(other)[:, :3], atol=1e-6)
    # And the whole model: change x_{t+1}; the model's prediction of it is exactly the decoder run on the
    # unchanged past frames with the changed clip's actions - x_{t+1} reaches it through a_t alone.
    changed = video.clone()
    changed[:, -1] = torch.rand_like(changed[:, -1])
    z_changed = model.quantize(changed).z_q
    assert torch.equal(z_changed[:, :-1], z[:, :-1])  # only the last transition's action can change
    torch.testing.assert_close(model(changed).pred, model.decode(video[:, :-1], z_changed))
    torch.testing.assert_close(model(changed).pred[:, :-1], model(video).pred[:, :-1])


def test_token_input_ablation() -> None:
    model = LatentActionModel(tiny_cfg(input="tokens", token_vocab=64, token_grid=(3, 4)))
    tokens = torch.randint(0, 64, (2, 4, 3, 4))
    out = model(tokens)
    assert out.pred.shape == (2, 3, 12, 64) and torch.isfinite(out.loss)
    assert model.infer_actions(tokens).shape == (2, 3)
    # the null token settings of conf/model/lam_model/paper.yaml: a pixel LAM keeps the (unused) defaults, a token
    # one needs them
    assert tiny_cfg(token_vocab=None, token_grid=None).token_grid == (23, 40)
    with pytest.raises(ValueError, match="a token-input LAM needs token_vocab and token_grid"):
        tiny_cfg(input="tokens", token_vocab=None, token_grid=None)


@pytest.mark.parametrize("kind", ["pixels", "tokens"])
def test_num_params_closed_form(kind: str) -> None:
    cfg = tiny_cfg(
        input=kind, token_vocab=64, token_grid=(3, 4), decoder_mask_rate=0.3 if kind == "pixels" else 0.0
    )
    assert cfg.num_params() == sum(p.numel() for p in LatentActionModel(cfg).parameters())
    cfg = tiny_cfg(input=kind, token_vocab=64, token_grid=(3, 4), decoder_anchor=True)
    model = LatentActionModel(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_bad_inputs_are_named() -> None:
    model = LatentActionModel(tiny_cfg())
    with pytest.raises(ValueError, match="resize frames"):
        model(torch.rand(1, 4, 3, 30, 48))
    with pytest.raises(ValueError, match="at least 2 frames"):
        model(torch.rand(1, 1, 3, 32, 48))
    with pytest.raises(ValueError, match="causally"):
        tiny_cfg(encoder={"dim": 32, "depth": 1, "num_heads": 4, "causal": False})


def test_overfits_one_batch_and_uses_several_codes() -> None:
    """A moving square: the direction of motion is the only thing the decoder cannot see."""
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(vq={"dead_code_steps": 5}))
    b, t = 8, 4
    video = torch.zeros(b, t, 3, 32, 48)
    dirs = torch.tensor([-1, 1, -1, 1, 0, 0, -1, 1])
    for i in range(b):
        x = 20
        for j in range(t):
            video[i, j, :, 12:20, x : x + 8] = 1.0
            x += 4 * int(dirs[i])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        out = model(video)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.recon_loss.item()
    assert out.recon_loss.item() < 0.2 * first
    assert model.infer_actions(video).unique().numel() >= 2


@pytest.mark.parametrize("window", [2, 3])
def test_windowed_lam_matches_running_each_window(window: int) -> None:
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(window=window, motion_input=True, predict_residual=True)).eval()
    video = torch.rand(2, 6, 3, 32, 48)
    out = model(video)
    assert out.pred.shape == (2, 5, 3, 32, 48) and out.actions.shape == (2, 5)
    # the latent of transition t -> t+1 comes from the window ending at frame t+1 (or the first window)
    whole = model.encode_latents(video)
    for t in range(5):
        lo, hi = (0, window) if t + 1 < window else (t + 2 - window, t + 2)
        latents = model.encode_latents(video[:, lo:hi])
        torch.testing.assert_close(whole[:, t], latents[:, t - lo], rtol=1e-4, atol=1e-5)
    # the decoder still never sees the frame it predicts
    z = model.quantize(video).z_q
    other = video.clone()
    other[:, 3] = torch.rand_like(other[:, 3])
    torch.testing.assert_close(model.decode(video[:, :-1], z)[:, :3], model.decode(other[:, :-1], z)[:, :3])


def test_flow_input_gives_the_direction_of_motion_a_sign() -> None:
    """``aids.flow_input``: the frame difference times the spatial gradients, per pixel; a ramp moved right and the
    same ramp moved left give horizontal products of opposite sign (and no vertical ones), the first frame none;
    the encoder embeds them per patch (parameters counted in closed form); it needs the motion input."""
    cfg = tiny_cfg(motion_input=True, flow_input=True)
    model = LatentActionModel(cfg)
    assert model.flow_embed is not None
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    ramp = torch.linspace(0, 1, 48).expand(3, 32, 48)
    right = torch.stack((ramp, torch.roll(ramp, 2, -1)))[None]  # (1, 2, 3, 32, 48)
    left = torch.stack((ramp, torch.roll(ramp, -2, -1)))[None]
    along_x, along_y = model.flow_embed.maps(right)
    back_x, _ = model.flow_embed.maps(left)
    assert float(along_x[:, 0].abs().sum()) == 0.0 and float(along_y.abs().sum()) == 0.0
    inner = (..., slice(4, -4))  # away from the roll's wrap-around and the zero border
    assert (along_x[:, 1][inner] < 0).float().mean() > 0.9 and (back_x[:, 1][inner] > 0).float().mean() > 0.9
    z = model.encode_latents(right)
    assert z.shape == (1, 1, cfg.latent_dim)
    with pytest.raises(ValueError, match=r"flow_input needs aids\.motion_input"):
        tiny_cfg(flow_input=True)


def _textured_image() -> torch.Tensor:
    """A smooth 32x48 texture with gradients both ways: a global shift of it can be read to first order."""
    ramp = torch.arange(48) * 2 * torch.pi / 24
    return (0.5 + 0.5 * torch.sin(ramp))[None, :] * (0.5 + 0.5 * torch.cos(torch.arange(32) * torch.pi / 8))[
        :, None
    ]


def test_extrapolate_motion_carries_the_views_motion_on_and_keeps_the_decoder_causal() -> None:
    """``aids.extrapolate_motion``: the global shift of a moving image is read to ~5%, the frame moved on by it is
    closer to the next frame than a copy, the decoder still never sees the frame it predicts, and a window of 2
    or a decoder that predicts the frame itself is refused."""
    from genie.models.aids import extrapolate_motion, global_shift, translate

    img = _textured_image()
    step = torch.tensor([0.6, -0.4])  # px per frame: right and up
    frames = torch.stack(
        [translate(img.expand(3, 32, 48)[None, None], (k * step)[None, None])[0, 0] for k in range(4)]
    )
    frames = frames[None]  # (1, 4, 3, 32, 48)
    torch.testing.assert_close(
        global_shift(frames[:, :-1], frames[:, 1:]), step.expand(1, 3, 2), atol=0.04, rtol=0
    )
    guess = extrapolate_motion(frames[:, :-1])
    torch.testing.assert_close(guess[:, 0], frames[:, 0])  # the first frame has no motion before it
    copy_err = (frames[:, 2:] - frames[:, 1:-1]).abs().mean()
    assert (frames[:, 2:] - guess[:, 1:]).abs().mean() < 0.3 * copy_err
    torch.manual_seed(0)
    cfg = tiny_cfg(predict_residual=True, extrapolate_motion=True, window=3)
    model = LatentActionModel(cfg).eval()
    video = torch.rand(1, 5, 3, 32, 48)
    z = model.quantize(video).z_q
    other = video.clone()
    other[:, 3] = torch.rand_like(other[:, 3])
    torch.testing.assert_close(model.decode(video[:, :-1], z)[:, :3], model.decode(other[:, :-1], z)[:, :3])
    with pytest.raises(ValueError, match=r"extrapolate_motion needs aids\.window >= 3"):
        tiny_cfg(predict_residual=True, extrapolate_motion=True, window=2)
    with pytest.raises(ValueError, match=r"extrapolate_motion needs aids\.predict_residual"):
        tiny_cfg(extrapolate_motion=True)


def test_target_motion_moves_the_base_by_the_predicted_transitions_global_shift() -> None:
    """``aids.target_motion``: at initialisation (zero residual head) the windowed decoder's guess of each frame
    is the frame before it moved by that transition's global shift - closer than a copy; choosing it with
    extrapolate_motion, or without residual prediction, is refused."""
    from genie.models.aids import translate

    img = _textured_image()
    steps = torch.tensor([[0.6, -0.4], [-0.5, 0.3], [0.2, 0.7], [0.0, -0.6]])  # a different motion each frame
    offsets = torch.cat((torch.zeros(1, 2), steps.cumsum(0)))
    frames = torch.stack(
        [translate(img.expand(3, 32, 48)[None, None], o[None, None])[0, 0] for o in offsets]
    )[None]
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(predict_residual=True, target_motion=True, window=2)).eval()
    pred = model(frames).pred
    copy_err = (frames[:, 1:] - frames[:, :-1]).abs().mean()
    assert (pred - frames[:, 1:]).abs().mean() < 0.3 * copy_err
    with pytest.raises(ValueError, match=r"choose one"):
        tiny_cfg(predict_residual=True, target_motion=True, extrapolate_motion=True, window=3)
    with pytest.raises(ValueError, match=r"target_motion needs aids\.predict_residual"):
        tiny_cfg(target_motion=True)


@pytest.mark.parametrize("residual", [False, True])
def test_decoder_anchor_sees_only_the_first_context_frame(residual: bool) -> None:
    """``aids.decoder_anchor``: every guess depends on the first context frame and the actions alone - the later
    context frames can be anything - and with residual prediction the base is the anchor; a 2-frame window (no
    later frame to hide) and the motion aids, which read the hidden frames, are refused."""
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(decoder_anchor=True, predict_residual=residual)).eval()
    assert model.dec_mask is not None
    video = torch.rand(2, 5, 3, 32, 48)
    z = model.quantizer.relax(torch.randn(2, 4, 8))
    other = video.clone()
    other[:, 1:] = torch.rand_like(other[:, 1:])
    pred = model.decode(video[:, :-1], z)
    torch.testing.assert_close(pred, model.decode(other[:, :-1], z))
    moved = video.clone()
    moved[:, 0] = torch.rand_like(moved[:, 0])
    assert (pred - model.decode(moved[:, :-1], z)).abs().amax(dim=(0, 2, 3, 4)).min() > 1e-3  # every guess
    if residual:  # at initialisation (zero residual head) every guess is the anchor
        with torch.no_grad():
            model.head.weight.zero_()
            model.head.bias.zero_()
        base = model.decode(video[:, :-1], z)
        torch.testing.assert_close(base, video[:, :1].clamp(1e-3, 1 - 1e-3).expand_as(base))
    with pytest.raises(ValueError, match=r"decoder_anchor needs aids\.window >= 3"):
        tiny_cfg(decoder_anchor=True, window=2)
    with pytest.raises(ValueError, match=r"decoder_anchor hides the frames aids\.target_motion"):
        tiny_cfg(decoder_anchor=True, predict_residual=True, target_motion=True)


def test_warp_decoder_keeps_the_bottleneck_and_shifts_per_patch() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(predict_residual=True, warp_radius=2, window=2, motion_input=True, recon_weight=100.0)
    model = LatentActionModel(cfg).eval()
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    assert model.warp_head is not None
    # At initialisation a flat frame comes back unchanged (the taps sum to one, the residual head is zero).
    flat = torch.full((1, 3, 3, 32, 48), 0.4)
    torch.testing.assert_close(
        model.decode(flat[:, :-1], model.quantize(flat).z_q), flat[:, 1:], atol=1e-4, rtol=0
    )
    # Taps that all pick "content moves right by one pixel" (horizontal tap r-1, vertical tap r = no shift).
    x = torch.rand(1, 2, 3, 32, 48)
    taps = torch.full((1, 2, 6, 10), -30.0)
    taps[..., 1] = 30.0
    taps[..., 5 + 2] = 30.0
    shifted = model.warp_head.shift(x, taps)
    torch.testing.assert_close(shifted[..., 1:], x[..., :-1])
    # With warp_stride 2 the same taps shift by two pixels.
    strided = LatentActionModel(
        dataclasses.replace(cfg, aids=dataclasses.replace(cfg.aids, warp_stride=2))
    ).eval()
    assert strided.warp_head is not None
    torch.testing.assert_close(strided.warp_head.shift(x, taps)[..., 2:], x[..., :-2])
    # With trained-looking (random) heads the decoder still sees x_t+1 only through the action.
    for head in (model.head, model.warp_head):
        torch.nn.init.normal_(head.weight, std=0.05)
    video = torch.rand(1, 5, 3, 32, 48)
    z = model.quantize(video).z_q
    pred = model.decode(video[:, :-1], z)
    other = video.clone()
    other[:, 2] = torch.rand_like(other[:, 2])
    pred2 = model.decode(other[:, :-1], z)
    torch.testing.assert_close(pred[:, :2], pred2[:, :2])
    assert not torch.allclose(pred[:, 2:], pred2[:, 2:])


def test_recon_weight_scales_the_reconstruction_term() -> None:
    torch.manual_seed(0)
    video = torch.rand(1, 3, 3, 32, 48)
    out = LatentActionModel(tiny_cfg(recon_weight=1000.0)).eval()(video)
    torch.testing.assert_close(out.loss, 1000.0 * out.recon_loss + out.vq.loss)
    with pytest.raises(ValueError, match="predict_residual"):
        tiny_cfg(warp_radius=2)
    with pytest.raises(ValueError, match="recon_weight"):
        tiny_cfg(recon_weight=0.0)
    with pytest.raises(ValueError, match="warp_stride"):
        tiny_cfg(warp_stride=0)


def test_vq_warmup_feeds_continuous_latents_then_closes_the_bottleneck() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(vq_warmup_steps=2))
    video = torch.rand(2, 3, 3, 32, 48)
    z = model.encode_latents(video)
    assert model.vq_warmup is not None
    for step in range(3):
        warming = model.vq_warmup.active
        assert warming == (step < 2)
        out = model(video)
        if warming:  # the decoder read the normalised continuous latent, and no commitment term was added
            expected = model.decode(video[:, :-1], torch.nn.functional.normalize(z, dim=-1))
            torch.testing.assert_close(out.pred, expected)
            torch.testing.assert_close(out.loss, out.recon_loss + out.vq.codebook_loss)
        else:
            torch.testing.assert_close(out.loss, out.recon_loss + out.vq.loss)
    assert (
        int(model.state_dict()["vq_warmup.train_steps"]) == 3
    )  # saved with the weights: a resumed run knows
    assert not model.eval().vq_warmup.active
    assert LatentActionModel(tiny_cfg()).vq_warmup is None  # off: no module, nothing saved
    assert not any("train_steps" in k for k in LatentActionModel(tiny_cfg()).state_dict())
    fresh = LatentActionModel(tiny_cfg(vq_warmup_steps=2)).train()
    assert fresh.vq_warmup is not None and fresh.vq_warmup.active  # the host counter, read once ...
    fresh.load_state_dict(model.state_dict())
    assert not fresh.vq_warmup.active  # ... is read again after loading: a resumed run is past its warm-up
    with pytest.raises(ValueError, match="vq_warmup_steps"):
        tiny_cfg(vq_warmup_steps=-1)


@pytest.mark.parametrize(("dim", "size", "step"), [(-1, 5, 3), (-2, 5, 2), (1, 2, 1), (-1, 11, 1)])
def test_warp_windows_as_slices_equal_unfold(dim: int, size: int, step: int) -> None:
    # (the form XLA runs: its unfold reads the tensor back to the host mid-step)
    x = torch.randn(2, 3, 9, 11)
    assert torch.equal(windows(x, dim, size, step, slices=True), x.unfold(dim, size, step))


def test_aids_are_one_nested_config_and_old_flat_configs_removed_aids_and_weights_migrate() -> None:
    from genie.models.aids import DynamicsAids
    from genie.models.io import build_from_state, config_from_dict

    base = {"image_size": [32, 48], "patch": 16, "num_actions": 4, "latent_dim": 8,
            "encoder": {"dim": 32, "depth": 2, "num_heads": 4}, "decoder": {"dim": 32, "depth": 2, "num_heads": 4}}  # fmt: skip
    aids = {"recon_weight": 100.0, "predict_residual": True, "motion_input": True, "window": 2, "warp_radius": 2,
            "warp_stride": 2, "vq_warmup_steps": 1, "decoder_mask_rate": 0.25}  # fmt: skip
    old = config_from_dict("lam", {**base, **aids})  # a config saved before ``aids``
    new = config_from_dict("lam", {**base, "aids": aids})
    assert old == new and new.aids == LAMAids(**aids)  # type: ignore[arg-type]
    assert LAMConfig().aids == LAMAids()  # the paper's LAM: every aid off
    dyn = config_from_dict(
        "dynamics", {"num_codes": 32, "grid": [3, 4], "copy_radius": 1, "full_mask_prob": 0.5}
    )
    assert dyn.aids == DynamicsAids(full_mask_prob=0.5, copy_radius=1)
    with pytest.raises(ValueError, match="unknown aids option"):
        config_from_dict("lam", {**base, "aids": {"warp": 2}})
    # a removed aid: off, it is dropped (the config loads as trained); on, the one line names it and where it lives
    assert config_from_dict("lam", {**base, "aids": {**aids, "decoder_motion": False}}) == new
    with pytest.raises(
        ValueError, match=r"trained with aids\.decoder_motion, which was removed .* at commit 9ce6fe1"
    ):
        config_from_dict("lam", {**base, "aids": {**aids, "decoder_motion": True}})
    # weights saved when the warm-up's step count was the LAM's own buffer load into the module that holds it now
    torch.manual_seed(0)
    model = LatentActionModel(new).train()
    model(torch.rand(1, 3, 3, 32, 48))
    state = {("train_steps" if k == "vq_warmup.train_steps" else k): v for k, v in model.state_dict().items()}
    loaded = build_from_state("lam", new, state)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert int(loaded.state_dict()["vq_warmup.train_steps"]) == 1


def test_latent_norm_aid_adds_its_term_in_training_only_and_pulls_the_raw_latent_to_unit_length() -> None:
    from genie.models.aids import latent_norm_loss

    lengths_5_and_1 = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    assert latent_norm_loss(lengths_5_and_1).item() == pytest.approx(8.0)  # ((5 - 1)² + 0) / 2
    torch.manual_seed(0)
    video = torch.rand(2, 4, 3, 32, 48)
    held = LatentActionModel(tiny_cfg(latent_norm_weight=0.5))
    free = LatentActionModel(tiny_cfg())
    free.load_state_dict(held.state_dict())
    z = free.encode_latents(video).detach()
    torch.manual_seed(1)
    out_held = held.train()(video)
    torch.manual_seed(1)
    out_free = free.train()(video)
    assert (out_held.loss - out_free.loss).item() == pytest.approx(0.5 * latent_norm_loss(z).item(), rel=1e-4)
    assert out_held.latent_norm.item() == pytest.approx(z.norm(dim=-1).mean().item(), rel=1e-5)
    assert held.eval()(video).loss.item() == pytest.approx(free.eval()(video).loss.item(), rel=1e-6)
    # training with the term brings an inflated raw latent back towards unit length; without it, it stays long
    for model in (held, free):
        with torch.no_grad():
            model.to_latent.weight.mul_(20)
    start = held.eval()(video).latent_norm.item()
    for model in (held, free):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(30):
            opt.zero_grad()
            model.train()(video).loss.backward()
            opt.step()
    assert start > 10
    assert held.eval()(video).latent_norm.item() < start / 3 < free.eval()(video).latent_norm.item()


def test_latent_norm_aid_needs_the_cosine_look_up() -> None:
    with pytest.raises(ValueError, match="latent_norm_weight must be >= 0"):
        LAMAids(latent_norm_weight=-0.1)
    for vq in ({"l2_normalize": False}, {"kind": "fsq", "levels": [3, 3]}):
        with pytest.raises(ValueError, match="needs the cosine look-up"):
            tiny_cfg(latent_norm_weight=0.01, vq=vq, latent_dim=2 if vq.get("kind") else 8)
