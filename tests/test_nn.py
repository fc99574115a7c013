"""genie.nn: attention, the ST block, positions, vector quantisation."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from genie.distributed import checkpoint_activations
from genie.nn import (
    Attention,
    KVCache,
    STBlock,
    STConfig,
    STTransformer,
    VectorQuantizer,
    apply_rope,
    block_causal_mask,
    patchify,
    rope_frequencies,
    unpatchify,
)
from genie.nn.attention import explicit_attention

MODES = ["st", "full", "spatial"]
POS = ["rope", "learned"]


def tiny(mode: str = "st", pos: str = "rope", **kw: object) -> STTransformer:
    cfg = STConfig(dim=32, depth=2, num_heads=4, attention=mode, pos_emb=pos, max_grid=(4, 4), **kw)  # type: ignore[arg-type]
    return STTransformer(cfg).eval()


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("mode", ["st", "full"])
def test_causal_in_time_exactly(mode: str, pos: str) -> None:
    torch.manual_seed(0)
    model = tiny(mode, pos)
    x = torch.randn(2, 6, 12, 32)
    y = model(x, (3, 4))
    for t in range(5):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
        y2 = model(x2, (3, 4))
        assert torch.equal(y[:, : t + 1], y2[:, : t + 1]), (
            f"output at <= {t} changed when frames > {t} changed"
        )
        assert not torch.allclose(y[:, t + 1 :], y2[:, t + 1 :])


def test_non_causal_time_sees_the_future() -> None:
    torch.manual_seed(0)
    model = tiny("st", causal=False)
    x = torch.randn(1, 4, 12, 32)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(model(x, (3, 4))[:, 0], model(x2, (3, 4))[:, 0])


@pytest.mark.parametrize("pos", POS)
def test_spatial_mode_never_mixes_frames(pos: str) -> None:
    torch.manual_seed(0)
    model = tiny("spatial", pos)
    x = torch.randn(2, 5, 12, 32)
    y = model(x, (3, 4))
    x2 = x.clone()
    x2[:, 2] = torch.randn_like(x2[:, 2])
    y2 = model(x2, (3, 4))
    others = [0, 1, 3, 4]
    assert torch.equal(y[:, others], y2[:, others])
    assert not torch.allclose(y[:, 2], y2[:, 2])


def test_st_spatial_attention_stays_within_frame() -> None:
    """In the ST block the spatial attention alone mixes tokens of one frame only."""
    torch.manual_seed(0)
    block = STBlock(STConfig(dim=16, depth=1, num_heads=2))
    x = torch.randn(1, 3, 4, 16)
    h = block.norm_spatial(x).reshape(3, 4, 16)
    out = block.spatial(h)
    h2 = h.clone()
    h2[1] += 1.0
    out2 = block.spatial(h2)
    assert torch.equal(out[[0, 2]], out2[[0, 2]])


def reference_attention(attn: Attention, x: torch.Tensor, causal: bool, rope: tuple | None) -> torch.Tensor:
    """Explicit softmax(QKᵀ/√k)V with the module's own weights."""
    b, n, _ = x.shape
    h, k = attn.num_heads, attn.head_dim
    q, kk, v = attn.qkv(x).reshape(b, n, 3, h, k).permute(2, 0, 3, 1, 4)
    if attn.q_scale is not None:
        if attn.qk_norm == "layer":  # LayerNorm without bias: centre, then scale to unit variance
            q, kk = q - q.mean(-1, keepdim=True), kk - kk.mean(-1, keepdim=True)
        q = q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + attn.norm_eps) * attn.q_scale
        kk = kk * torch.rsqrt(kk.pow(2).mean(-1, keepdim=True) + attn.norm_eps) * attn.k_scale
    if rope is not None:  # channel i pairs with i + k/2, rotated by the angle whose cos/sin the tables hold
        cos, sin = rope[0][:, : k // 2], rope[1][:, k // 2 :]

        def rotate(t: torch.Tensor) -> torch.Tensor:
            t1, t2 = t.chunk(2, dim=-1)
            return torch.cat((t1 * cos - t2 * sin, t2 * cos + t1 * sin), dim=-1)

        q, kk = rotate(q), rotate(kk)
    scores = q @ kk.transpose(-1, -2) / math.sqrt(k)
    if causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, h * k))


@pytest.mark.parametrize("qk_norm", ["layer", "rms", "none"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("use_rope", [True, False])
def test_sdpa_matches_explicit_softmax(qk_norm: str, causal: bool, use_rope: bool) -> None:
    torch.manual_seed(0)
    attn = Attention(dim=24, num_heads=3, head_dim=10, qk_norm=qk_norm)  # heads·head_dim ≠ dim on purpose
    if attn.q_scale is not None and attn.k_scale is not None:  # learnt scales differ per channel and q/k
        with torch.no_grad():
            attn.q_scale.uniform_(0.5, 1.5)
            attn.k_scale.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 24)
    rope = rope_frequencies(torch.arange(7)[:, None], 10) if use_rope else None
    out = attn(x, causal=causal, rope=rope)
    ref = reference_attention(attn, x, causal, rope)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_qk_norm_kinds_and_old_checkpoints_booleans_migrate() -> None:
    assert STConfig().qk_norm == "layer"
    with pytest.raises(ValueError, match="qk_norm must be"):
        STConfig(qk_norm=True)  # type: ignore[arg-type]
    from genie.models.io import config_from_dict  # checkpoints saved with the boolean load as trained

    old = {
        "num_codes": 8,
        "grid": [2, 2],
        "num_actions": 4,
        "transformer": {"dim": 16, "depth": 1, "num_heads": 2, "qk_norm": True},
    }
    assert config_from_dict("dynamics", old).st.qk_norm == "rms"
    old["transformer"]["qk_norm"] = False  # type: ignore[index]
    assert config_from_dict("dynamics", old).st.qk_norm == "none"
    old["transformer"]["checkpoint_activations"] = True  # type: ignore[index]  # now a training policy: dropped
    assert config_from_dict("dynamics", old).st.dim == 16
    with pytest.raises(TypeError):
        STConfig(checkpoint_activations=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="qk_norm must be"):
        STConfig(qk_norm="l2")  # type: ignore[arg-type]
    # LayerNorm and RMSNorm differ exactly by the per-head mean of the queries and keys
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    layer, rms = Attention(16, 2, qk_norm="layer"), Attention(16, 2, qk_norm="rms")
    rms.load_state_dict(layer.state_dict())
    assert not torch.allclose(layer(x), rms(x))
    with torch.no_grad():  # queries and keys with zero mean per head: both norms agree
        w = layer.qkv.weight.view(3, 2, 8, 16)
        w[:2] -= w[:2].mean(2, keepdim=True)
    rms.load_state_dict(layer.state_dict())
    torch.testing.assert_close(layer(x), rms(x), rtol=1e-5, atol=1e-6)


def test_attention_cache_matches_full_causal() -> None:
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2)
    x = torch.randn(3, 6, 16)
    full = attn(x, causal=True)
    cache = KVCache()
    attn(x[:, :4], causal=True, cache=cache.layer(0), frames=4)
    cache.advance(4)
    tail = attn(x[:, 4:], causal=True, cache=cache.layer(0), frames=2)  # two queries: causal between them
    torch.testing.assert_close(tail, full[:, 4:], rtol=1e-5, atol=1e-6)
    tail5 = attn(x[:, 4:5], causal=True, cache=cache.layer(0))  # not committed: overwrites the slot
    torch.testing.assert_close(tail5, full[:, 4:5], rtol=1e-5, atol=1e-6)


def test_explicit_attention_equals_sdpa() -> None:
    """The explicit attention (two batched products) is SDPA's result, gradients included: one query per
    sequence on non-contiguous views like the cache's, a causal mask, a cache's offset causal mask (queries
    are the last positions); close to it in bf16."""
    torch.manual_seed(0)
    buf_k, buf_v = torch.randn(5, 3, 9, 8, requires_grad=True), torch.randn(5, 3, 9, 8, requires_grad=True)
    k, v = buf_k[:, :, :6], buf_v[:, :, :6]  # a filled part of a preallocated buffer
    for q_len, mask in [
        (1, None),
        (6, torch.ones(6, 6, dtype=torch.bool).tril()),
        (2, torch.ones(2, 6).tril(4)),
    ]:
        q = torch.randn(5, 3, q_len, 8, requires_grad=True)
        mask = None if mask is None else mask.bool()
        out = explicit_attention(q, k, v, mask)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        grads = torch.autograd.grad(out.square().sum(), (q, buf_k, buf_v))
        ref_grads = torch.autograd.grad(ref.square().sum(), (q, buf_k, buf_v))
        for g, r in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
        half = explicit_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_short_sequences_on_cpu_match_the_fused_kernel(
    monkeypatch: pytest.MonkeyPatch, causal: bool
) -> None:
    """Below ``CPU_EXPLICIT_MAX_KEYS`` keys the CPU takes the explicit path: the same outputs and gradients
    as SDPA's kernel (the path every longer sequence takes), with and without the causal mask."""
    import genie.nn.attention as attention

    torch.manual_seed(0)
    attn = Attention(16, num_heads=2)
    x = torch.randn(3, 8, 16, requires_grad=True)
    calls = []
    monkeypatch.setattr(attention, "explicit_attention", lambda *a: calls.append(1) or explicit_attention(*a))
    out = attn(x, causal=causal)
    assert calls, "8 keys on the CPU take the explicit path"
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    monkeypatch.setattr(attention, "CPU_EXPLICIT_MAX_KEYS", 0)
    calls.clear()
    ref = attn(x, causal=causal)
    assert not calls, "with the threshold at 0 SDPA's kernel runs"
    ref_grad = torch.autograd.grad(ref.square().sum(), x)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_frequencies(torch.tensor([[pq]]), 8)
        ck, sk = rope_frequencies(torch.tensor([[pk]]), 8)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(10, 8))
    assert not torch.allclose(score(3, 1), score(3, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_equals_the_plain_rotation_to_the_bit_forward_and_backward(dtype: torch.dtype) -> None:
    # the written-out rotation must round every product and sum as x·cos + swap(x)·sin does, so that a
    # model's numbers do not depend on which of the two ran
    torch.manual_seed(0)
    cos, sin = rope_frequencies(
        torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij"), -1).flatten(0, 1), 16
    )
    qkv = torch.randn(3, 16, 3, 2, 16, dtype=dtype, requires_grad=True)  # B L three H K
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # a strided B H L K view, as the attention takes it

    def plain(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        swapped = torch.cat(xf.chunk(2, dim=-1)[::-1], dim=-1)
        return (xf * cos + swapped * sin).to(x.dtype)

    weight = torch.randn(3, 2, 16, 16)
    out = apply_rope(q, cos, sin)
    (grad,) = torch.autograd.grad((out.float() * weight).sum(), qkv)
    ref = plain(q)
    (ref_grad,) = torch.autograd.grad((ref.float() * weight).sum(), qkv)
    assert out.dtype == dtype and torch.equal(out, ref)
    assert torch.equal(grad, ref_grad)


def test_rope_gradient_checks_twice_and_refuses_trainable_tables() -> None:
    cos, sin = (t.double() for t in rope_frequencies(torch.arange(5)[:, None], 8))
    x = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    # apply_rope computes in fp32: check its adjoint on the fp32-exact rotation's own terms
    assert torch.autograd.gradcheck(
        lambda t: apply_rope(t, cos, sin).double(), (x.float().double(),), eps=1e-3, atol=1e-2
    )
    y = apply_rope(x.float(), cos.float(), sin.float())
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)  # a rotation is linear: the second derivative goes through it
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
    with pytest.raises(ValueError, match="constants"):
        apply_rope(x, cos.requires_grad_(), sin)


@pytest.mark.parametrize("mode", ["st", "full"])
def test_position_tables_are_kept_and_right(mode: str) -> None:
    """The shape-only tables are computed once per grid/prefix/device; every call's tables equal fresh ones."""
    model = tiny(mode)
    cache = KVCache()
    cache.position = 5
    cpu = torch.device("cpu")
    first = model._position_tables(2, (3, 4), cpu, 1, cache)
    again = model._position_tables(2, (3, 4), cpu, 1, cache)
    if mode == "st":
        assert first[0] is not None and again[0] is not None
        assert first[0][0] is again[0][0]  # the spatial table, kept
    fresh = STTransformer(model.cfg)._position_tables(2, (3, 4), cpu, 1, cache)
    for got, want in zip(again, fresh, strict=True):
        if isinstance(want, tuple):
            assert isinstance(got, tuple)
            for a, b in zip(got, want, strict=True):
                torch.testing.assert_close(a, b)
        else:
            assert (got is None) == (want is None)
    cache.advance(4)  # the temporal tables follow the cache's position: 9 now
    moved = model._position_tables(1, (3, 4), cpu, 1, cache)
    frames = torch.tensor([[9]]) if mode == "st" else None
    if frames is not None:
        assert moved[1] is not None
        torch.testing.assert_close(moved[1][0], rope_frequencies(frames, model.cfg.resolved_head_dim)[0])


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("mode", MODES)
def test_kv_cache_matches_uncached(mode: str, pos: str) -> None:
    torch.manual_seed(0)
    model = tiny(mode, pos)
    x = torch.randn(2, 5, 12, 32)
    full = model(x, (3, 4))
    cache = KVCache()
    first = model(x[:, :3], (3, 4), cache=cache, write_cache=True)
    step4 = model(x[:, 3:4], (3, 4), cache=cache, write_cache=True)
    step5 = model(x[:, 4:5], (3, 4), cache=cache)
    torch.testing.assert_close(torch.cat((first, step4, step5), 1), full, rtol=1e-4, atol=1e-5)
    assert cache.frames == 4 and cache.position == 4


def test_kv_cache_window_keeps_last_frames() -> None:
    torch.manual_seed(0)
    model = tiny("st")
    cache, unbounded = KVCache(max_frames=3), KVCache()
    x = torch.randn(1, 6, 12, 32)
    model(x[:, :2], (3, 4), cache=cache, write_cache=True)
    model(x[:, :2], (3, 4), cache=unbounded, write_cache=True)
    for i in range(2, 6):
        model(x[:, i : i + 1], (3, 4), cache=cache, write_cache=True)
        model(x[:, i : i + 1], (3, 4), cache=unbounded, write_cache=True)
    assert cache.frames == 3 and cache.position == 6 and unbounded.frames == 6
    assert all(k.shape[:3] == v.shape[:3] == (12, 4, 3) for k, v in cache.layers)  # (b s) h t k
    # the first block's temporal keys depend on their own frame only: the window holds frames 4..6
    for kept, full in zip(cache.layers[0], unbounded.layers[0], strict=True):
        torch.testing.assert_close(kept, full[:, :, 3:])


def test_bounded_kv_cache_has_one_size_however_it_was_filled() -> None:
    """A 1-frame and a 3-frame prompt leave the same buffers once the window is full (one compiled graph)."""
    torch.manual_seed(0)
    model = tiny("st")
    x = torch.randn(1, 6, 12, 32)
    sizes = []
    for prompt in (1, 3):
        cache = KVCache(max_frames=3)
        model(x[:, :prompt], (3, 4), cache=cache, write_cache=True)
        for i in range(prompt, 6):
            model(x[:, i : i + 1], (3, 4), cache=cache, write_cache=True)
        sizes.append([tuple(k.shape) for k in cache._keys])
    assert sizes[0] == sizes[1] == [(12, 4, 4, 8)] * 2  # (b s) h (window + 1) k


def test_block_causal_mask() -> None:
    m = block_causal_mask(2, 3, 2, torch.device("cpu"))
    assert m.shape == (4, 6)
    assert m[0].tolist() == [True, True, True, True, False, False]
    assert m[3].tolist() == [True] * 6


@pytest.mark.parametrize("qk_norm", ["layer", "rms", "none"])
def test_trains_with_and_without_qk_norm(qk_norm: str) -> None:
    torch.manual_seed(0)
    model = tiny("st", qk_norm=qk_norm).train()
    x = torch.randn(4, 4, 12, 32)
    target = torch.roll(x, 1, dims=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(model(x, (3, 4)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_forward_backward_finite(mode: str) -> None:
    torch.manual_seed(0)
    model = tiny(mode).train()
    x = torch.randn(2, 3, 12, 32, requires_grad=True)
    dtypes = []
    model.blocks[0].mlp.fc_in.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, (3, 4)).float().pow(2).mean()
    assert dtypes == [torch.bfloat16]  # matmuls ran in bf16; norms stay fp32 under autocast
    loss.backward()
    assert torch.isfinite(loss)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_activation_checkpointing_same_gradients() -> None:
    torch.manual_seed(0)
    plain = tiny("st").train()
    ckpt = tiny("st").train()
    ckpt.load_state_dict(plain.state_dict())
    assert checkpoint_activations(ckpt) == len(ckpt.blocks)  # applied from outside (genie.distributed)
    x = torch.randn(2, 3, 12, 32)
    for m in (plain, ckpt):
        m(x, (3, 4)).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.equal(a.grad, b.grad), name  # recomputation is exact


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"attention": "full"},
        {"attention": "spatial", "mlp": "swiglu"},
        {"head_dim": 10, "num_heads": 3, "mlp_dim": 50, "qk_norm": "none"},
        {"qk_norm": "rms"},
        {"pos_emb": "learned", "max_frames": 7, "max_grid": (5, 9)},
        {"pos_emb": "none", "depth": 3},
    ],
)
def test_param_formula_matches_numel(kw: dict) -> None:
    cfg = STConfig(**{"dim": 24, "depth": 2, "num_heads": 4, **kw})
    model = STTransformer(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_param_formula_on_meta_device_large() -> None:
    cfg = STConfig(dim=1024, depth=20, num_heads=16, mlp_dim=4096)
    with torch.device("meta"):
        model = STTransformer(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        STConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="attention must be"):
        STConfig(attention="cvivit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="learned frame positions"):
        tiny("st", "learned")(torch.randn(1, 17, 12, 32), (3, 4))
    with pytest.raises(ValueError, match="tokens per frame"):
        tiny()(torch.randn(1, 2, 12, 32), (4, 4))


def test_patchify_round_trip() -> None:
    video = torch.randn(2, 3, 3, 16, 24)
    x = patchify(video, 4)
    assert x.shape == (2, 3, 24, 48)
    assert torch.equal(unpatchify(x, 4, (4, 6), 3), video)
    # the first patch is the top-left 4×4 square of every channel
    assert torch.equal(x[0, 0, 0].reshape(3, 4, 4), video[0, 0, :, :4, :4])
    with pytest.raises(ValueError, match="not divisible by patch"):
        patchify(torch.randn(1, 1, 3, 10, 16), 4)


# ----------------------------------------------------------------------------- vector quantisation


def test_vq_straight_through_gradient_reaches_encoder() -> None:
    torch.manual_seed(0)
    enc = torch.nn.Linear(8, 4)
    vq = VectorQuantizer(16, 4)
    out = vq(enc(torch.randn(32, 8)))
    (out.z_q.square().sum() + out.loss).backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_vq_picks_nearest_code_and_reports_usage() -> None:
    vq = VectorQuantizer(4, 2, dead_code_steps=0).eval()
    vq.codebook.data = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    z = torch.tensor([[[0.5, -0.2], [9.0, 1.0]], [[1.0, 9.5], [0.2, 0.1]]])
    out = vq(z)
    assert out.indices.tolist() == [[0, 1], [2, 0]]
    assert torch.equal(out.z_q, vq.lookup(out.indices))
    assert out.usage.item() == 0.75
    assert out.counts.tolist() == [2, 1, 1, 0]
    probs = torch.tensor([0.5, 0.25, 0.25])
    torch.testing.assert_close(out.perplexity, torch.exp(-(probs * probs.log()).sum()))


def test_dead_code_restart_revives_unused_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 4, dead_code_steps=5, init_from_data=False).train()
    vq.codebook.data[1:] += 100.0  # all but code 0 far from the data: dead
    data = torch.randn(512, 4)
    assert vq(data).usage.item() == 1 / 32
    for _ in range(6):
        vq(data)
    out = vq(data)
    assert out.usage.item() > 0.5, out.usage
    assert vq.codebook.data.abs().max() < 50


@pytest.mark.parametrize("restart", ["uniform", "error"])
def test_error_weighted_restart_puts_dead_codes_where_the_data_is_worst_represented(restart: str) -> None:
    # 95% of the vectors sit on code 0; 5% are far away, each on its own (the rare edges of a flat image)
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, dead_code_steps=1, init_from_data=False, restart=restart)
    vq.train()
    vq.codebook.data.zero_()
    vq.codebook.data[1:] += 100.0  # dead
    rare = torch.randn(26, 4) * 0.1 + 10.0
    data = torch.cat((torch.zeros(486, 4), rare))
    vq(data)  # restarts the 7 dead codes
    assert torch.equal(vq.codebook.data[0], torch.zeros(4))  # the live code is left as it was
    on_rare = int(((vq.codebook.data[1:] - 10.0).abs().max(-1).values < 1).sum())
    if restart == "error":
        assert on_rare == 7  # every restarted code lands on a badly represented vector
    else:
        assert on_rare <= 3  # uniform draws mostly copy the common vector again (expected 0.35 of 7)


@pytest.mark.parametrize("restart", ["uniform", "error"])
@pytest.mark.parametrize("ema", [False, True])
def test_vq_training_call_never_waits_for_the_device(restart: str, ema: bool) -> None:
    # On XLA (and meta) restarts run in fixed shapes: the whole training call runs on meta tensors, where
    # reading any value raises (what would be a cut graph on XLA and a host sync per step on a GPU).
    vq = VectorQuantizer(
        16, 4, use_ema=ema, dead_code_steps=1, init_from_data=False, restart=restart, dropout=0.1
    )
    vq = vq.train().to("meta")
    out = vq(torch.randn(64, 4, device="meta"))
    assert out.z_q.shape == (64, 4) and out.indices.shape == (64,)


def test_codebook_dropout_sends_a_share_of_vectors_to_another_code_in_training_only() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, dead_code_steps=0, init_from_data=False, dropout=0.3)
    vq.codebook.data = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    z = torch.randn(20_000, 2)  # every vector's nearest code is code 0
    assert vq.eval()(z).indices.eq(0).all()
    idx = vq.train()(z).indices
    # code 0 withheld, and not every code with it (a vector that loses all four keeps its nearest)
    moved = idx.ne(0).float().mean().item()
    assert abs(moved - 0.3 * (1 - 0.3**3)) < 0.015, moved
    assert set(idx.unique().tolist()) == {0, 1, 2, 3}
    # with every code almost always withheld, vectors keep their nearest, never an arbitrary one
    vq.dropout = 0.999
    z = torch.randn(2_000, 2) * 0.1 + torch.tensor([10.0, 10.0])  # nearest: code 3
    assert vq(z).indices.eq(3).float().mean().item() > 0.99


def test_codebook_dropout_option_is_checked_and_reaches_the_lam() -> None:
    from genie.nn import VQConfig

    with pytest.raises(ValueError, match=r"vq\.dropout must be in"):
        VQConfig(dropout=1.0)
    with pytest.raises(ValueError, match="codebook dropout must be in"):
        VectorQuantizer(8, 4, dropout=-0.1)
    from genie.models.lam import LAMConfig, LatentActionModel

    lam = LatentActionModel(LAMConfig(vq={"dropout": 0.25}))
    assert isinstance(lam.quantizer, VectorQuantizer) and lam.quantizer.dropout == 0.25


def test_vq_restart_option_is_checked() -> None:
    with pytest.raises(ValueError, match="restart must be"):
        VectorQuantizer(8, 4, restart="worst")


def test_no_restart_in_eval_or_when_disabled() -> None:
    vq = VectorQuantizer(8, 4, dead_code_steps=0, init_from_data=False).train()
    vq.codebook.data[1:] += 100.0
    before = vq.codebook.data.clone()
    for _ in range(10):
        vq(torch.randn(64, 4))
    assert torch.equal(vq.codebook.data, before)


def test_vq_init_from_data_on_first_training_call() -> None:
    vq = VectorQuantizer(16, 4, dead_code_steps=0)
    data = torch.randn(256, 4) * 0.01 + 5.0  # far from the N(0, 1) initial codes
    vq.eval()
    assert vq(data).usage.item() <= 2 / 16  # eval never initialises
    vq.train()
    vq(data)
    assert bool(vq.initialized)
    assert (vq.codebook.data - 5.0).abs().max() < 0.1
    before = vq.codebook.data.clone()
    vq(torch.randn(256, 4))
    assert torch.equal(before, vq.codebook.data)  # only once
    vq.load_state_dict(VectorQuantizer(16, 4, dead_code_steps=0).state_dict())  # an uninitialised state:
    vq(data)  # the next training call initialises from data again
    assert (vq.codebook.data - 5.0).abs().max() < 0.1


def test_vq_ema_moves_codes_to_data() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, use_ema=True, ema_decay=0.8, dead_code_steps=0, init_from_data=False).train()
    centres = torch.randn(8, 2) * 5
    errors = []
    for _ in range(40):
        data = centres[torch.randint(0, 8, (256,))] + 0.05 * torch.randn(256, 2)
        errors.append(vq(data).commitment_loss.item())
    assert errors[-1] < 0.2 * errors[0]
    assert not vq.codebook.requires_grad


def test_vq_l2_normalised_codes_are_unit() -> None:
    vq = VectorQuantizer(8, 4, l2_normalize=True)
    out = vq(torch.randn(10, 4) * 7)
    torch.testing.assert_close(out.z_q.norm(dim=-1), torch.ones(10))


def test_vq_bf16_autocast() -> None:
    vq = VectorQuantizer(8, 4)
    z = torch.randn(10, 4, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert out.z_q.dtype == torch.bfloat16
    out.z_q.float().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad.float()).all()


def test_vq_bad_dim_error() -> None:
    with pytest.raises(ValueError, match="vectors of size 4"):
        VectorQuantizer(8, 4)(torch.randn(3, 5))


def test_genie_nn_imports_without_lightning_or_hydra() -> None:
    code = (
        "import sys, genie.nn, genie.nn.quantize, genie.nn.st_block;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("mode", MODES)
def test_prefix_tokens(mode: str, pos: str) -> None:
    """An extra token per frame (e.g. an action) joins attention and keeps causality and caching intact."""
    torch.manual_seed(0)
    model = tiny(mode, pos)
    x = torch.randn(1, 4, 13, 32)  # 1 prefix + 3×4 grid
    y = model(x, (3, 4), prefix=1)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 2, 0] = torch.randn(32)  # change only frame 2's prefix token
    y2 = model(x2, (3, 4), prefix=1)
    assert torch.equal(y[:, :2], y2[:, :2])
    assert not torch.allclose(y[:, 2, 1:], y2[:, 2, 1:])  # the grid tokens of that frame see it
    cache = KVCache()
    head = model(x[:, :3], (3, 4), cache=cache, write_cache=True, prefix=1)
    tail = model(x[:, 3:], (3, 4), cache=cache, prefix=1)
    torch.testing.assert_close(torch.cat((head, tail), 1), y, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="0 prefix tokens has 12"):
        model(x, (3, 4))


def test_one_vq_config_for_tokenizer_and_lam_and_old_flat_keys_migrate() -> None:
    from genie.models import LatentActionModel, VideoTokenizer
    from genie.models.io import config_from_dict
    from genie.nn import VQConfig

    st = {"dim": 16, "depth": 1, "num_heads": 2}
    flat = {"image_size": [8, 8], "patch": 4, "num_codes": 16, "code_dim": 4, "encoder": st, "decoder": st,
            "vq_beta": 0.5, "vq_ema": True, "vq_ema_decay": 0.9, "vq_l2": False, "dead_code_steps": 7,
            "vq_restart": "error"}  # fmt: skip
    old = config_from_dict("tokenizer", flat)  # a checkpoint saved before ``vq``
    new = config_from_dict("tokenizer", {**{k: v for k, v in flat.items() if not k.startswith(("vq", "dead"))},
                                          "vq": {"beta": 0.5, "use_ema": True, "ema_decay": 0.9, "dead_code_steps": 7,
                                                 "restart": "error"}})  # fmt: skip
    assert old == new and new.vq == VQConfig(
        beta=0.5, use_ema=True, ema_decay=0.9, dead_code_steps=7, restart="error"
    )
    models, outs = [], []
    x = torch.rand(2, 3, 3, 8, 8)
    for cfg in (old, new):  # the same model, bit for bit, through a training call (codes from data)
        torch.manual_seed(0)
        models.append(VideoTokenizer(cfg).train())
        outs.append(models[-1](x).recon)
    assert torch.equal(outs[0], outs[1])
    assert all(
        torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values())
    )
    q = models[1].quantizer
    assert (q.beta, q.use_ema, q.ema_decay, q.dead_code_steps, q.restart) == (0.5, True, 0.9, 7, "error")
    # the LAM takes the same config (cosine look-up by default)
    lam = config_from_dict("lam", {"image_size": [8, 8], "patch": 4, "num_actions": 4, "latent_dim": 4,
                                   "encoder": st, "decoder": st, "dead_code_steps": 3})  # fmt: skip
    assert lam.vq == VQConfig(l2_normalize=True, dead_code_steps=3)
    assert LatentActionModel(lam).quantizer.l2_normalize
    with pytest.raises(ValueError, match="unknown vq option"):
        config_from_dict("lam", {"vq": {"l2": True}})


def test_fsq_rounds_to_a_grid_with_indices_that_lookup_inverts() -> None:
    from genie.nn import FiniteScalarQuantizer

    fsq = FiniteScalarQuantizer([3, 2, 4])
    assert (fsq.num_codes, fsq.code_dim) == (24, 3)
    z = torch.randn(5000, 3)
    out = fsq(z)
    assert out.indices.min() >= 0 and out.indices.max() < 24
    assert torch.equal(fsq.lookup(out.indices), out.z_q)  # the index names the grid point
    assert len(torch.unique(out.indices)) == 24 and out.usage == 1.0  # every combination reachable
    assert int(out.counts.sum()) == 5000 and float(out.loss) == 0.0
    # each dimension takes exactly its number of levels, spread within [-1, 1]
    for d, n in enumerate([3, 2, 4]):
        values = torch.unique(out.z_q[:, d])
        assert len(values) == n and values.min() >= -1 and values.max() <= 1
    # odd levels are symmetric about 0; a latent near 0 picks the middle level
    assert torch.equal(
        FiniteScalarQuantizer([3]).lookup(torch.arange(3)).flatten(), torch.tensor([-1.0, 0.0, 1.0])
    )
    assert int(FiniteScalarQuantizer([3])(torch.zeros(1, 1)).indices) == 1


def test_fsq_straight_through_gradient_and_relaxed_latent() -> None:
    from genie.nn import FiniteScalarQuantizer

    fsq = FiniteScalarQuantizer([5, 5])
    z = (torch.randn(64, 2) * 0.5).requires_grad_()
    out = fsq(z)
    out.z_q.sum().backward()
    assert z.grad is not None and bool((z.grad > 0).all())  # through the tanh bound, rounding skipped
    relaxed = fsq.relax(z.detach())
    assert (relaxed - out.z_q.detach()).abs().max() <= 0.5 / 2 + 1e-6  # within half a level (1/2 apart)


def test_fsq_config_builds_the_fsq_and_names_a_size_mismatch() -> None:
    from genie.nn import FiniteScalarQuantizer, VQConfig, quantizer_from_config

    assert isinstance(quantizer_from_config(9, 2, VQConfig(kind="fsq", levels=[3, 3])), FiniteScalarQuantizer)
    with pytest.raises(ValueError, match=r"make 9 codes of width 2, but the model has 8 codes of width 32"):
        quantizer_from_config(8, 32, VQConfig(kind="fsq", levels=[3, 3]))
    with pytest.raises(ValueError, match=r"vq\.kind=fsq needs vq\.levels"):
        VQConfig(kind="fsq")
    with pytest.raises(ValueError, match=r"vq\.kind must be 'vq' or 'fsq'"):
        VQConfig(kind="lfq")


def test_lam_with_fsq_trains_its_params_count_and_uses_codes() -> None:
    from genie.models import LAMConfig, LatentActionModel

    st = {"dim": 32, "depth": 1, "num_heads": 2}
    cfg = LAMConfig(
        image_size=(16, 16),
        patch=8,
        num_actions=9,
        latent_dim=2,
        encoder=st,
        decoder=st,
        vq={"kind": "fsq", "levels": [3, 3]},
        aids={"vq_warmup_steps": 2},
    )
    lam = LatentActionModel(cfg)
    assert sum(p.numel() for p in lam.parameters()) == cfg.num_params()
    x = torch.rand(4, 3, 3, 16, 16)
    for _ in range(3):  # two warm-up steps on the relaxed latent, then the grid
        out = lam(x)
        out.loss.backward()
        assert torch.isfinite(out.loss) and out.actions.max() < 9
    assert lam.to_latent.weight.grad is not None and lam.to_latent.weight.grad.abs().sum() > 0


def test_sizes_take_a_pair_or_one_number_and_name_the_setting_they_refuse() -> None:
    """``size_pair``: ``[h, w]`` as given, one number as a square; a config of each model takes both forms, and
    a size that is not two positive whole numbers is one error naming its setting (a bare TypeError before)."""
    from genie.models.dynamics import DynamicsConfig
    from genie.models.lam import LAMConfig
    from genie.models.tokenizer import TokenizerConfig
    from genie.nn.options import size_pair

    assert size_pair([90, 160], "x") == (90, 160) and size_pair(64, "x") == (64, 64)
    assert size_pair((torch.tensor(3), 5), "x") == (3, 5)  # any whole-number type (operator.index)
    assert LAMConfig(image_size=64, patch=8).image_size == (64, 64)
    assert TokenizerConfig(image_size=[32, 48], patch=4).image_size == (32, 48)
    assert DynamicsConfig(grid=8).grid == (8, 8)
    for bad in ("64", [64], [64, 64, 3], 0, [64, -1], [64, 64.5], True, None):
        with pytest.raises(ValueError, match=r"^LAM image_size must be \[height, width\] or one size"):
            LAMConfig(image_size=bad)
    with pytest.raises(ValueError, match=r"^dynamics grid must be"):
        DynamicsConfig(grid=[8])
