"""The composed world model in pure torch: play, rollouts, input validation, caching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genie.models import (
    DynamicsConfig,
    DynamicsModel,
    Genie,
    LAMConfig,
    LatentActionModel,
    SamplingConfig,
    TokenizerConfig,
    VideoTokenizer,
)
from genie.params import main as params_main

ST = {"dim": 32, "depth": 1, "num_heads": 2}


def tiny_genie(context: int = 4, steps: int = 3) -> Genie:
    torch.manual_seed(0)
    tok = VideoTokenizer(
        TokenizerConfig(image_size=(12, 16), patch=4, num_codes=32, code_dim=8, encoder=ST, decoder=ST)
    )
    lam = LatentActionModel(
        LAMConfig(image_size=(12, 16), patch=4, num_actions=5, latent_dim=8, encoder=ST, decoder=ST)
    )
    dyn = DynamicsModel(DynamicsConfig(num_codes=32, grid=(3, 4), num_actions=5, transformer=ST))
    return Genie(tok, dyn, lam, SamplingConfig(steps=steps, temperature=1.0, context_frames=context))


def test_reset_step_rollout_shapes() -> None:
    genie = tiny_genie()
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    frame = genie.reset(image, seed=0)
    assert frame.shape == (1, 3, 12, 16) and frame.min() >= 0 and frame.max() <= 1
    assert genie.step(2).shape == (1, 3, 12, 16)
    video = genie.rollout([0, 1, 4, 4, 3, 2])  # past the 4-frame window
    assert video.shape == (1, 8, 3, 12, 16)
    assert genie.num_actions == 5 and genie.image_size == (12, 16)


def test_seeded_sessions_are_reproducible_and_actions_matter() -> None:
    genie = tiny_genie()
    image = torch.rand(3, 12, 16)
    a = genie.rollout([1, 2, 3], prompt=image, seed=7)
    b = genie.rollout([1, 2, 3], prompt=image, seed=7)
    assert torch.equal(a, b)
    c = genie.rollout([4, 0, 0], prompt=image, seed=7)
    assert not torch.equal(a, c)


def test_compiled_sampling_matches_eager_and_compiles_once(compiles: None) -> None:
    """``sampling.compile``: the blocks run compiled once the window is full (one graph for all layers, no
    recompiles as the session goes on) and give the eager session's frames. (The recompute path,
    ``use_cache=False``, runs compiled in ``make bench``.)"""
    from torch._dynamo.utils import counters

    eager, compiled = tiny_genie(), tiny_genie()
    eager.sampling = SamplingConfig(steps=3, temperature=0.0, context_frames=4)
    compiled.sampling = dataclasses.replace(eager.sampling, compile=True)
    image, actions = torch.rand(3, 12, 16), [0, 1, 4, 4, 3, 2]
    want = eager.rollout(actions, prompt=image)
    torch._dynamo.reset()
    compiled.rollout(actions[:4], prompt=image)  # steps 3 and 4 fill the windows: compiled from there
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    got = compiled.rollout(actions[4:])
    assert counters["stats"]["unique_graphs"] == graphs  # the same shapes from then on
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_frame_by_frame_decoding_matches_whole_clip_decoding() -> None:
    genie = tiny_genie(context=8)
    genie.reset(torch.rand(3, 12, 16), seed=1)
    video = genie.rollout([0, 1, 2, 3])
    assert genie._rollout is not None
    whole = genie.tokenizer.decode(genie._rollout.tokens)
    torch.testing.assert_close(video, whole, rtol=1e-4, atol=1e-5)


def test_past_the_window_the_decoder_sees_the_dynamics_window() -> None:
    """Once the session is longer than ``context_frames``, each new frame is decoded from the last
    ``context_frames`` frames (the dynamics model's memory), never one more (depth-1 decoder: its cached
    keys depend on their own frame only, so the cached decode equals decoding that window afresh)."""
    genie = tiny_genie(context=4)
    genie.reset(torch.rand(3, 12, 16), seed=1)
    video = genie.rollout([0, 1, 2, 3, 4, 0])  # 7 frames: 3 past the window
    assert genie._rollout is not None and genie._decoder_cache is not None
    assert genie._decoder_cache.frames == 3
    tokens = genie._rollout.tokens
    window = genie.tokenizer.decode(tokens[:, -4:])[:, -1]
    longer = genie.tokenizer.decode(tokens[:, -5:])[:, -1]
    torch.testing.assert_close(video[:, -1], window, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(video[:, -1], longer, atol=1e-4)  # (the 17th-frame case: one frame more)


@pytest.mark.parametrize("action", [2.7, 1.0, True, "1", [0.5]])
def test_non_integer_actions_are_refused_not_truncated(action: object) -> None:
    genie = tiny_genie()
    genie.reset(np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="integers"):
        genie.step(action)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        genie.rollout([1, 2.5])
    assert genie._rollout is not None
    with pytest.raises(ValueError, match="integers"):
        genie._rollout.step(torch.tensor([2.7]))
    assert genie.frames.shape[1] == 1  # nothing was played


def test_batched_worlds_and_multi_frame_prompt() -> None:
    genie = tiny_genie()
    prompt = torch.rand(2, 3, 3, 12, 16)  # 2 worlds, 3 prompt frames: actions inferred by the LAM
    frame = genie.reset(prompt)
    assert frame.shape == (2, 3, 12, 16)
    assert genie.step([0, 4]).shape == (2, 3, 12, 16)
    assert genie.step(1).shape == (2, 3, 12, 16)  # one action for every world
    assert genie.frames.shape == (2, 5, 3, 12, 16)


def test_bad_inputs_are_named() -> None:
    genie = tiny_genie()
    with pytest.raises(RuntimeError, match="reset"):
        genie.step(0)
    with pytest.raises(ValueError, match="model takes 12x16"):
        genie.reset(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ValueError, match="channels"):
        genie.reset(np.zeros((12, 16, 4), np.uint8))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        genie.reset(torch.full((3, 12, 16), 2.0))
    genie.reset(np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"action ids must be in \[0, 5\)"):
        genie.step(5)
    with pytest.raises(ValueError, match="expected 1 action"):
        genie.step([0, 1])


def test_mismatched_parts_are_named() -> None:
    genie = tiny_genie()
    other = DynamicsModel(DynamicsConfig(num_codes=64, grid=(3, 4), num_actions=5, transformer=ST))
    with pytest.raises(ValueError, match="pair the dynamics with the tokenizer"):
        Genie(genie.tokenizer, other)


def test_param_count_command(capsys: pytest.CaptureFixture[str]) -> None:
    params_main(["+experiment=dynamics_11b"])
    out = capsys.readouterr().out
    n = int(out.split("dynamics: ")[1].split(" params")[0].replace(",", ""))
    assert abs(n / 10.1e9 - 1) < 0.05


@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_sessions_give_the_plain_frames(compile: bool, request: pytest.FixtureRequest) -> None:
    """``sampling.cuda_graph`` (the default) runs full-window steps - the dynamics' MaskGIT fill and the
    decoder's frame - through CapturedSteps; on a CPU they are called directly and give the same frames."""
    if compile:
        request.getfixturevalue("compiles")
        torch._dynamo.reset()
    plain, graphed = tiny_genie(), tiny_genie()
    plain.sampling = SamplingConfig(
        steps=3, temperature=1.0, context_frames=4, cuda_graph=False, compile=compile
    )
    graphed.sampling = dataclasses.replace(plain.sampling, cuda_graph=True)
    image, actions = torch.rand(3, 12, 16), [0, 1, 4, 4, 3, 2, 1]
    want = plain.rollout(actions, prompt=image, seed=3)
    got = graphed.rollout(actions, prompt=image, seed=3)
    assert graphed._decode_step is not None and graphed._decode_step.calls > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bf16_precision_plays_under_autocast() -> None:
    """``sampling.precision=bf16``: the dynamics and the decoder run under autocast (their caches hold bf16
    keys/values), the prompt is tokenized in fp32 (its reconstruction stays close to the fp32 session's), and
    frames come back as fp32 in [0, 1]."""
    plain, half = tiny_genie(), tiny_genie()
    half.sampling = dataclasses.replace(plain.sampling, precision="bf16")
    image, actions = torch.rand(3, 12, 16), [0, 1, 4, 4, 3]
    video = half.rollout(actions, prompt=image, seed=3)
    assert video.dtype == torch.float32 and video.shape == (1, 6, 3, 12, 16)
    assert video.min() >= 0 and video.max() <= 1
    assert half._rollout is not None and half._rollout.cache is not None
    assert all(k.dtype == torch.bfloat16 for k, _ in half._rollout.cache.layers)
    assert half._decoder_cache is not None
    assert all(k.dtype == torch.bfloat16 for k, _ in half._decoder_cache.layers)
    want = plain.rollout(actions, prompt=image, seed=3)
    torch.testing.assert_close(video[:, 0], want[:, 0], rtol=0, atol=0.05)  # the prompt's reconstruction
    with pytest.raises(ValueError, match="precision must be one of"):
        SamplingConfig(precision="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
def test_cuda_graph_play_on_gpu_matches_eager() -> None:
    plain, graphed = tiny_genie().cuda(), tiny_genie().cuda()
    plain.sampling = SamplingConfig(steps=3, temperature=1.0, context_frames=4, cuda_graph=False)
    graphed.sampling = dataclasses.replace(plain.sampling, cuda_graph=True)
    image, actions = torch.rand(3, 12, 16), [0, 1, 4, 4, 3, 2, 1, 0]
    want = plain.rollout(actions, prompt=image, seed=3)
    got = graphed.rollout(actions, prompt=image, seed=3)
    assert graphed._decode_step is not None and graphed._decode_step.captured
    assert graphed._rollout is not None and graphed._rollout._captured is not None
    assert graphed._rollout._captured.captured
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
