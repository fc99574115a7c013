"""Dynamics model (MaskGIT): masking statistics, causality over frames, action alignment, paper size."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from genie.models.aids import DynamicsAids
from genie.models.dynamics import DynamicsConfig, DynamicsModel, masked_cross_entropy
from genie.models.sampling import Rollout, SamplingConfig, maskgit_fill, maskgit_schedule
from genie.nn import KVCache, STConfig


def tiny(action_mode: str = "add", **kw: object) -> DynamicsModel:
    aids = {
        k: kw.pop(k) for k in list(kw) if k in DynamicsAids.__dataclass_fields__
    }  # aids by their own name
    base: dict[str, object] = {"num_codes": 32, "grid": (3, 4), "num_actions": 4, "aids": aids}
    cfg = DynamicsConfig(
        action_mode=action_mode,  # type: ignore[arg-type]
        transformer={"dim": 32, "depth": 2, "num_heads": 4},
        **{**base, **kw},  # type: ignore[arg-type]
    )
    return DynamicsModel(cfg).eval()


def with_random_copy_head(model: DynamicsModel) -> DynamicsModel:
    """A copy head that looks trained (its zero-initialised weights would ignore the hidden state)."""
    assert model.copy_head is not None
    torch.nn.init.normal_(model.copy_head.weight, std=0.5)
    return model


def mode_variant(mode: str, **transformer: object) -> DynamicsModel:
    """``add`` / ``prepend`` actions, or ``copy`` (added actions and a random copy head): 2 blocks of d 32."""
    cfg = DynamicsConfig(
        num_codes=32,
        grid=(3, 4),
        num_actions=4,
        action_mode="prepend" if mode == "prepend" else "add",
        transformer={"dim": 32, "depth": 2, "num_heads": 4, **transformer},
        aids={"copy_radius": 1 if mode == "copy" else 0},
    )
    model = DynamicsModel(cfg).eval()
    return with_random_copy_head(model) if mode == "copy" else model


MODELS = {  # variants every causality/caching test runs on
    "add": lambda: tiny("add"),
    "prepend": lambda: tiny("prepend"),
    "copy": lambda: with_random_copy_head(tiny("add", copy_radius=1)),
}


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


def test_full_mask_prob_masks_whole_frames() -> None:
    g = torch.Generator().manual_seed(0)
    mask = tiny(full_mask_prob=0.5).random_mask(4000, 4, g)
    assert not mask[:, 0].any()
    whole = mask[:, 1:].all(-1).float().mean().item()
    # P(whole) = 0.5 + 0.5 · P(a U(0.5, 1)-rate draw masks all 12 tokens) ≈ 0.5 + 0.5 · 0.08
    assert 0.51 < whole < 0.58
    assert tiny(full_mask_prob=1.0).random_mask(8, 4, g)[:, 1:].all()
    for bad in ({"full_mask_prob": 1.5}, {"mask_rate": (0.8, 0.5)}, {"copy_radius": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tiny(**bad)


def test_copy_head_mixes_in_shifted_previous_tokens() -> None:
    torch.manual_seed(0)
    model = tiny(copy_radius=1)
    assert model.copy_head is not None
    assert model.cfg.num_params() == sum(p.numel() for p in model.parameters())
    tokens = torch.randint(0, 32, (2, 3, 3, 4))
    actions = torch.randint(0, 4, (2, 2))
    logp = model(tokens, actions)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 3, 12))  # normalised log-probabilities
    # A head that always copies from one column to the right (offset dy 0, dx +1): frame t predicts frame
    # t-1 shifted left by one token (the last column repeats, as the grid's edge is clamped).
    with torch.no_grad():
        model.copy_head.bias.fill_(-30.0)
        model.copy_head.bias[5] = 30.0  # offsets are (dy, dx) in row-major order over [-1, 1]²; 5 = (0, +1)
    pred = model(tokens, actions).argmax(-1).reshape(2, 3, 3, 4)
    expected = torch.cat((tokens[..., 1:], tokens[..., -1:]), -1)
    assert torch.equal(pred[:, 1:], expected[:, :-1])
    # the sparse mixture equals the dense one, gradients included (small vocabulary: many repeated sources)
    small = tiny(copy_radius=1, num_codes=4)
    logits = torch.randn(2, 3, 12, 4, requires_grad=True)
    copy = torch.randn(2, 3, 12, 10, requires_grad=True)
    prev = torch.randint(0, 4, (2, 3, 12))
    gate = torch.sigmoid(copy[..., 9:])
    dense = (logits.softmax(-1) * gate).scatter_add(
        -1, prev[:, :, small.copy_head.index], copy[..., :9].softmax(-1) * (1 - gate)
    )
    weights = torch.randn(2, 3, 12, 4)
    got, want = small.copy_head.mix(logits, copy, prev[:, :, small.copy_head.index]), dense.log()
    torch.testing.assert_close(got, want)
    for g1, g2 in zip(
        torch.autograd.grad((got * weights).sum(), (logits, copy)),
        torch.autograd.grad((want * weights).sum(), (logits, copy)),
        strict=True,
    ):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # (inference skips what only the gradients need)
        torch.testing.assert_close(small.copy_head.mix(logits, copy, prev[:, :, small.copy_head.index]), want)
    # continuing from a cache needs the previous frame
    cache = KVCache()
    model(tokens[:, :2], actions[:, :1], cache=cache, write_cache=True)
    with pytest.raises(ValueError, match="prev_tokens_BHW"):
        model(tokens[:, 2:], actions[:, 1:], cache=cache)


@pytest.mark.parametrize("mode", list(MODELS))
def test_causal_over_frames(mode: str) -> None:
    model = MODELS[mode]()
    tokens = torch.randint(0, 32, (1, 5, 3, 4))
    actions = torch.randint(0, 4, (1, 4))
    a = model(tokens, actions)
    tokens2 = tokens.clone()
    tokens2[:, 3:] = torch.randint(0, 32, (1, 2, 3, 4))
    actions2 = actions.clone()
    actions2[:, 3:] = (actions[:, 3:] + 1) % 4  # the action into frame 4 changes
    b = model(tokens2, actions2)
    assert torch.equal(a[:, :3], b[:, :3])


@pytest.mark.parametrize("mode", list(MODELS))
def test_action_conditions_the_frame_it_produced(mode: str) -> None:
    """a_{t-1} (transition t-1 → t) conditions frame t: changing it changes frame t's logits, never earlier ones."""
    model = MODELS[mode]()
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


@pytest.mark.parametrize("mode", list(MODELS))
def test_cached_frames_match_full_pass(mode: str) -> None:
    model = MODELS[mode]()
    tokens = torch.randint(0, 32, (2, 4, 3, 4))
    actions = torch.randint(0, 4, (2, 3))
    full = model(tokens, actions)
    cache = KVCache()
    head = model(tokens[:, :3], actions[:, :2], cache=cache, write_cache=True)
    tail = model(tokens[:, 3:], actions[:, 2:], cache=cache, prev_tokens_BHW=tokens[:, 2])
    torch.testing.assert_close(torch.cat((head, tail), 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", list(MODELS))
def test_extend_cache_writes_the_context_a_forward_pass_writes(mode: str) -> None:
    """Generation commits each finished frame with ``extend_cache`` (no output head): the cache it leaves
    holds the same keys/values and position as a forward pass writing the cache."""
    model = MODELS[mode]()
    tokens = torch.randint(0, 32, (2, 3, 3, 4))
    actions = torch.randint(0, 4, (2, 2))
    ids = tokens.flatten(2)
    by_forward, by_extend = KVCache(), KVCache()
    model(tokens, actions, cache=by_forward, write_cache=True)
    model.extend_cache(ids, model.frame_actions(actions, 2, 3), by_extend)
    assert by_extend.position == by_forward.position == 3
    for (k1, v1), (k2, v2) in zip(by_forward.layers, by_extend.layers, strict=True):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


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


def test_maskgit_schedule_is_cosine_and_ends_unmasked() -> None:
    left = maskgit_schedule(256, 25)
    assert len(left) == 25 and left[-1] == 0
    assert all(a > b for a, b in itertools.pairwise(left))
    assert left[0] == math.floor(256 * math.cos(math.pi / 2 / 25))
    assert maskgit_schedule(3, 25)[-1] == 0  # fewer tokens than steps still ends filled


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_sampler_valid_ids_and_deterministic(temperature: float) -> None:
    torch.manual_seed(0)
    model = tiny()
    prompt = torch.randint(0, 32, (2, 1, 3, 4))
    actions = torch.randint(0, 4, (2, 3))
    cfg = SamplingConfig(steps=5, temperature=temperature)
    out1 = model.generate(prompt, actions, sampling=cfg, generator=torch.Generator().manual_seed(1))
    out2 = model.generate(prompt, actions, sampling=cfg, generator=torch.Generator().manual_seed(1))
    assert out1.shape == (2, 4, 3, 4)
    assert torch.equal(out1, out2)
    assert out1.min() >= 0 and out1.max() < 32  # never the mask id
    assert torch.equal(out1[:, :1], prompt)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampler_draws_from_the_tempered_softmax(temperature: float) -> None:
    # One step fills every token: each is one categorical draw. Code 4 has probability 0 and is never drawn.
    logits_V = torch.tensor([0.0, 1.0, 2.0, 3.0, -math.inf])
    n = 20000
    ids = maskgit_fill(
        lambda ids_BS, pos_BM: logits_V.expand(*pos_BM.shape, 5),
        n,
        1,
        5,
        1,
        temperature,
        torch.Generator().manual_seed(0),
    )
    freq = torch.bincount(ids.flatten(), minlength=5).float() / n
    expected = (logits_V / temperature).softmax(-1)
    assert freq[4] == 0
    torch.testing.assert_close(freq, expected, atol=0.012, rtol=0)


def test_confidence_noise_chooses_which_draws_stay_and_anneals() -> None:
    """Without noise the first pass keeps the most confident draws; MaskGIT's Gumbel noise on the
    confidences (annealed) lets less confident ones stay too, differently per seed."""
    s, v = 16, 8
    # argmax draws (temperature 0); token i's confidence grows with i: without noise, the last ones stay
    logits_SV = torch.zeros(s, v)
    logits_SV[:, 3] = torch.linspace(0.5, 6.0, s)
    seen = []
    for noise in (0.0, 0.0, 50.0, 50.0):
        calls: list[torch.Tensor] = []  # the still-masked positions at each pass

        def predict(
            ids_BS: torch.Tensor, pos_BM: torch.Tensor, calls: list[torch.Tensor] = calls
        ) -> torch.Tensor:
            calls.append(pos_BM)
            return logits_SV[pos_BM]

        g = torch.Generator().manual_seed(len(seen))
        ids = maskgit_fill(predict, 1, s, v, 4, 0.0, g, confidence_noise=noise)
        assert (ids == 3).all()  # the draws themselves are the argmax either way
        seen.append(set(calls[1][0].tolist()))  # masked again after the first pass
    assert seen[0] == seen[1] == set(range(len(seen[0])))  # the least confident stay masked
    assert seen[2] != seen[0] and seen[2] != seen[3]  # noise: other tokens, per seed
    with pytest.raises(ValueError, match="confidence_noise"):
        SamplingConfig(confidence_noise=-1.0)


@pytest.mark.parametrize("mode", ["add", "prepend", "copy"])
@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_cached_and_uncached_generation_agree(mode: str, pos_emb: str) -> None:
    torch.manual_seed(0)
    model = mode_variant(mode, pos_emb=pos_emb, max_frames=8)
    prompt = torch.randint(0, 32, (2, 2, 3, 4))
    prompt_actions = torch.randint(0, 4, (2, 1))
    actions = torch.randint(0, 4, (2, 4))
    outs = [
        model.generate(
            prompt,
            actions,
            prompt_actions,
            SamplingConfig(steps=4, temperature=1.0, context_frames=8, use_cache=use_cache),
            torch.Generator().manual_seed(3),
        )
        for use_cache in (True, False)
    ]
    assert torch.equal(outs[0], outs[1])


def test_rollout_slides_past_the_window() -> None:
    torch.manual_seed(0)
    for pos_emb in ("rope", "learned"):
        cfg = DynamicsConfig(
            num_codes=32,
            grid=(2, 2),
            num_actions=4,
            transformer={"dim": 32, "depth": 1, "num_heads": 4, "pos_emb": pos_emb, "max_frames": 4},
        )
        model = DynamicsModel(cfg).eval()
        rollout = Rollout(model, SamplingConfig(steps=2, context_frames=4))
        rollout.start(torch.randint(0, 32, (1, 1, 2, 2)))
        for i in range(7):
            rollout.step(torch.tensor([i % 4]))
        assert rollout.tokens.shape == (1, 8, 2, 2)
        assert rollout.cache is not None and rollout.cache.frames == 3
        with pytest.raises(ValueError, match="action ids"):
            rollout.step(torch.tensor([4]))


@pytest.mark.parametrize("mode", ["add", "prepend"])
def test_past_the_window_the_cache_is_the_window_with_its_oldest_action_kept(mode: str) -> None:
    """What a cached rollout's memory is once it is longer than the window (the semantics the docs state):
    the last ``context_frames - 1`` frames, the oldest keeping the action that produced it, where training
    (and ``use_cache=false``) gives a clip's first frame "no action yet". At depth 1 a cached frame's keys
    depend on that frame and its action alone, so the cached logits equal a forward pass over the window
    with the real oldest action exactly, and differ from the training view."""
    torch.manual_seed(0)
    model = mode_variant(mode, depth=1)
    rollout = Rollout(model, SamplingConfig(steps=2, context_frames=4))
    rollout.start(torch.randint(0, 32, (2, 1, 3, 4)))
    for i in range(6):
        rollout.step(torch.tensor([i % 4, (i + 1) % 4]))
    assert rollout.cache is not None and rollout.cache.frames == 3
    new_action = torch.tensor([[1], [2]])
    masked = torch.full((2, 1, 12), model.mask_id)
    cached = model.forward_ids(masked, new_action, rollout.cache)[:, -1]
    ids = torch.cat((torch.stack(rollout.frames[-3:], 1), masked), 1)
    acts = torch.cat((torch.stack(rollout.actions[-3:], 1), new_action), 1)
    kept = model.forward_ids(ids, acts)[:, -1]
    torch.testing.assert_close(cached, kept, rtol=1e-4, atol=1e-5)
    training_view = acts.clone()
    training_view[:, 0] = model.cfg.num_actions  # "no action yet", as the uncached rollout re-encodes it
    assert not torch.allclose(cached, model.forward_ids(ids, training_view)[:, -1], atol=1e-3)


def test_multi_frame_prompt_needs_actions() -> None:
    with pytest.raises(ValueError, match="needs the 2 actions"):
        tiny().generate(torch.randint(0, 32, (1, 3, 3, 4)), torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.parametrize("variant", list(MODELS))
def test_logits_at_positions_equal_the_full_last_frame(variant: str) -> None:
    # MaskGIT sampling asks for the still-masked tokens of the last frame only
    torch.manual_seed(0)
    model = MODELS[variant]()
    clean = torch.randint(0, 32, (2, 3, 12))
    ids = clean.masked_fill(torch.rand(2, 3, 12) < 0.5, model.mask_id)
    acts = model.frame_actions(torch.randint(0, 4, (2, 2)), 2, 3)
    prev = torch.cat((clean[:, :1], clean[:, :-1]), 1)
    pos = torch.stack((torch.tensor([0, 3, 4, 11]), torch.tensor([1, 2, 7, 10])))
    full = model.forward_ids(ids, acts, prev_ids_BTS=prev)[:, -1]
    want = full.gather(1, pos[..., None].expand(-1, -1, full.shape[-1]))
    got = model.forward_ids(ids, acts, prev_ids_BTS=prev, positions_BM=pos)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("variant", list(MODELS))
def test_loss_on_the_masked_tokens_equals_the_static_shape_loss(variant: str) -> None:
    # training runs the head on the masked tokens only; XLA scores every token weighted by the mask
    torch.manual_seed(0)
    model = MODELS[variant]().train()
    tokens, actions = torch.randint(0, 32, (2, 4, 3, 4)), torch.randint(0, 4, (2, 3))
    m = model.random_mask(2, 4)
    torch.testing.assert_close(model(tokens, actions, m, select_BTS=m), model(tokens, actions, m)[m])
    loss, acc, mask = model.loss(tokens, actions, torch.Generator().manual_seed(1))
    logits = model(tokens, actions, mask)
    targets = tokens.flatten(2)
    torch.testing.assert_close(loss, masked_cross_entropy(logits, targets, mask))
    want_acc = ((logits.argmax(-1) == targets) & mask).sum() / mask.sum()
    torch.testing.assert_close(acc, want_acc.float())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_maskgit_draws_are_the_sizes_each_pass_samples() -> None:
    from genie.models.sampling import maskgit_draws

    for num_tokens, steps in ((12, 4), (256, 25), (3, 8), (1, 1)):
        seen: list[int] = []

        def predict(ids: torch.Tensor, pos: torch.Tensor, seen: list[int] = seen) -> torch.Tensor:
            seen.append(pos.shape[1])
            return torch.zeros(ids.shape[0], pos.shape[1], 5)

        maskgit_fill(predict, 2, num_tokens, 5, steps, 1.0, torch.Generator().manual_seed(0))
        assert maskgit_draws(num_tokens, steps) == seen


def test_kv_cache_position_tensor_follows_the_position() -> None:
    cache = KVCache(max_frames=2)
    pos = cache.position_tensor(torch.device("cpu"))
    assert int(pos) == 0
    for _ in range(4):  # past the window: the position keeps counting, in place
        cache.extend(0, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2), frames=1)
        cache.advance(1)
    assert cache.position_tensor(torch.device("cpu")) is pos and int(pos) == cache.position == 4
    cache.reset()
    assert int(cache.position_tensor(torch.device("cpu"))) == 0


@pytest.mark.parametrize("mode", ["add", "prepend", "copy"])
@pytest.mark.parametrize(
    ("temperature", "noise"), [(0.0, 0.0), (1.0, 0.0), (2.0, 0.0), (0.0, 3.0), (1.0, 3.0)]
)
def test_captured_step_frames_equal_the_plain_steps(mode: str, temperature: float, noise: float) -> None:
    """``sampling.cuda_graph``: full-window frames come from fixed input tensors through a CapturedStep (a CUDA
    graph on a GPU; called directly here) - the same frames as the plain step, the same sampling noise."""
    torch.manual_seed(0)
    model = mode_variant(mode)
    prompt, actions = torch.randint(0, 32, (2, 1, 3, 4)), torch.randint(0, 4, (2, 9))
    outs, rollouts = [], []
    for graph in (True, False):
        sampling = SamplingConfig(
            steps=4, temperature=temperature, confidence_noise=noise, context_frames=4, cuda_graph=graph
        )
        rollout = Rollout(model, sampling)
        rollout.start(prompt)
        g = torch.Generator().manual_seed(5)
        for i in range(actions.shape[1]):  # past the window: 7 frames through the captured step
            rollout.step(actions[:, i], generator=g)
        outs.append(rollout.tokens)
        rollouts.append(rollout)
    assert torch.equal(outs[0], outs[1])
    assert rollouts[0]._captured is not None and rollouts[0]._captured.calls == 7
    assert rollouts[1]._captured is None
    assert rollouts[0].cache is not None and rollouts[0].cache.position == 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
def test_cuda_graph_rollout_replays_the_plain_frames_on_gpu() -> None:
    """On a GPU the full-window frames are replays of one captured CUDA graph, and they are the frames the
    plain (eager) steps give; the cache's position stays in step with the graph's device-side one."""
    torch.manual_seed(0)
    cfg = DynamicsConfig(
        num_codes=64, grid=(4, 4), num_actions=4, transformer={"dim": 64, "depth": 2, "num_heads": 4}
    )
    model = DynamicsModel(cfg).cuda().eval()
    prompt = torch.randint(0, 64, (2, 1, 4, 4), device="cuda")
    actions = torch.randint(0, 4, (2, 10), device="cuda")
    outs, rollouts = [], []
    for graph in (True, False):
        rollout = Rollout(model, SamplingConfig(steps=6, temperature=2.0, context_frames=4, cuda_graph=graph))
        rollout.start(prompt)
        g = torch.Generator(device="cuda").manual_seed(5)
        for i in range(actions.shape[1]):
            rollout.step(actions[:, i], generator=g)
        outs.append(rollout.tokens)
        rollouts.append(rollout)
    assert torch.equal(outs[0], outs[1])
    captured = rollouts[0]._captured
    assert captured is not None and captured.captured and captured.calls == 8
    cache = rollouts[0].cache
    assert cache is not None and int(cache.position_tensor(torch.device("cuda"))) == cache.position == 11


def test_compiled_blocks_share_one_graph_whatever_the_depth(compiles: None) -> None:
    """``sampling.compile``: the cache's per-layer view does not make the compiled code depend on the layer,
    so the ST blocks of a model share one graph (dynamo recompiles at most 8 times per function: with one
    graph per block, a 12-block model's last blocks ran eagerly)."""
    from torch._dynamo.utils import counters

    for depth in (1, 3):
        torch._dynamo.reset()
        counters.clear()
        cfg = DynamicsConfig(
            num_codes=32,
            grid=(3, 4),
            num_actions=4,
            transformer={"dim": 32, "depth": depth, "num_heads": 4},
        )
        rollout = Rollout(DynamicsModel(cfg).eval(), SamplingConfig(steps=3, context_frames=4, compile=True))
        rollout.start(torch.randint(0, 32, (1, 1, 3, 4)))
        for i in range(5):
            rollout.step(torch.tensor([i % 4]))
        assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")
def test_failed_cuda_graph_capture_names_the_way_out_on_gpu() -> None:
    from genie.nn import CapturedStep

    x = torch.ones(3, device="cuda")
    step = CapturedStep(
        lambda: x * float(x.sum().item()), device=torch.device("cuda")
    )  # a sync: not capturable
    assert torch.equal(step(), torch.full((3,), 3.0, device="cuda"))  # the warm-up runs it eagerly
    with pytest.raises(RuntimeError, match=r"sampling.cuda_graph=false"):
        step()


def test_auto_compile_compiles_where_a_compiler_exists(
    compiles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sampling.compile: auto`` (the default) compiles the blocks where torch.compile has a compiler for the
    model's device, runs eagerly where it has none or where torch.compile is switched off; other values are
    refused in one line."""
    import genie.models.sampling as sampling
    from genie.nn.st_block import STBlock

    cfg = DynamicsConfig(num_codes=32, grid=(3, 4), num_actions=4, transformer={"dim": 32, "depth": 1})
    assert SamplingConfig().compile == "auto"
    monkeypatch.setattr(sampling, "_has_compiler", lambda device_type: True)
    model = DynamicsModel(cfg).eval()
    assert Rollout(model, SamplingConfig()).compiles
    monkeypatch.setattr(sampling, "_has_compiler", lambda device_type: False)
    model = DynamicsModel(cfg).eval()
    assert not Rollout(model, SamplingConfig()).compiles
    assert all(
        getattr(b, "_compiled_call_impl", None) is None for b in model.modules() if isinstance(b, STBlock)
    )
    assert Rollout(DynamicsModel(cfg).eval(), SamplingConfig(compile=True)).compiles  # true insists
    # "auto" compiles once the session has run context_frames full-window steps eagerly (short clips never do)
    from torch._dynamo.utils import counters

    monkeypatch.setattr(sampling, "_has_compiler", lambda device_type: True)
    torch._dynamo.reset()
    counters.clear()
    model = DynamicsModel(cfg).eval()
    rollout = Rollout(model, SamplingConfig(steps=2, context_frames=3))
    rollout.start(torch.randint(0, 32, (1, 2, 3, 4)), torch.zeros(1, 1, dtype=torch.long))  # a full window
    for i in range(3):
        rollout.step(torch.tensor([i % 4]))
    assert counters["stats"]["unique_graphs"] == 0  # the first 3 full-window steps: eager
    # ... and the model untouched until then (a validation rollout must not make training steps compile)
    assert all(
        getattr(b, "_compiled_call_impl", None) is None for b in model.modules() if isinstance(b, STBlock)
    )
    rollout.step(torch.tensor([0]))
    assert counters["stats"]["unique_graphs"] == 1
    assert all(
        getattr(b, "_compiled_call_impl", None) is not None for b in model.modules() if isinstance(b, STBlock)
    )
    with torch._dynamo.config.patch(disable=True):  # TORCH_COMPILE_DISABLE=1
        assert not SamplingConfig().compiles("cpu")
    with pytest.raises(ValueError, match="sampling compile must be true, false or auto, got 'yes'"):
        SamplingConfig(compile="yes")
