"""00_toy.py: pieces of the toy world, the batched ensemble, a smoke run end to end, resume, bad input."""
import json
import math
import os

import numpy as np
import pytest
import torch
from scipy import stats

import common
from conftest import run_stage


def test_toy_world(toy):
    a = toy.Args()
    theta = torch.linspace(0, 2 * math.pi, 50)
    # the domains share the structure and differ by the target scale: copying source is wrong
    assert torch.allclose(toy.true_output(theta, True, a), a.target_scale * toy.true_output(theta, False, a))
    th_t, y_t, th_s, y_s = toy.make_dataset(0, a)
    assert len(th_t) == a.n_target and len(th_s) == a.n_source
    assert th_t.max() <= 2 * math.pi * a.target_coverage  # target covers part of the curve only
    assert th_s.max() > 2 * math.pi * a.target_coverage  # source covers the OOD part too
    x = toy.latent_input(th_t, 3.0, torch.ones(len(th_t)))
    assert torch.allclose(x[:, 2], torch.full((len(th_t),), 3.0))  # separated by d along z3
    _, ood = toy.eval_thetas(a)
    assert 0 < ood.float().mean() < 1
    assert toy.regime(0.0, a) == "overlapping" and toy.regime(1.0, a) == "structured"
    assert toy.regime(8.0, a) == "disjoint"


def test_ensemble_members_are_independent(toy):
    """Member k of the batched ensemble computes what a lone MLP with its weights computes, and a
    loss on one member leaves the others' gradients at zero."""
    m = toy.EnsembleMLP([1, 2, 3], 5, 16, 2, 8)
    y_t, x = torch.randn(3, 4, 2), torch.randn(3, 4, 3)
    t = torch.randint(0, 100, (3, 4))
    out = m(y_t, t, x)
    solo = toy.EnsembleMLP([2], 5, 16, 2, 8)
    assert torch.allclose(out[1], solo(y_t[1:2], t[1:2], x[1:2])[0], atol=1e-6)
    out[1].sum().backward()
    assert m.W[0].grad[0].abs().sum() == 0 and m.W[0].grad[2].abs().sum() == 0
    assert m.W[0].grad[1].abs().sum() > 0


def test_cell_metrics_know_the_answer(toy):
    a = toy.Args(eval_points=40, eval_samples=3)
    theta, ood = toy.eval_thetas(a)
    perfect = toy.true_output(theta, True, a).unsqueeze(1).expand(-1, 3, 2)
    m = toy.cell_metrics(perfect, a)
    assert m["mse_all"] == 0 and m["w2"] == pytest.approx(0, abs=1e-6) and m["source_mode"] == 0
    copied = toy.true_output(theta, False, a).unsqueeze(1).expand(-1, 3, 2)
    m = toy.cell_metrics(copied, a)
    assert m["mse_all"] > 0.1 and m["source_mode"] == 1.0


def test_smoke_run_end_to_end_and_resume(tmp_path):
    out = tmp_path / "toy"
    r = run_stage("00_toy.py", "--profile", "smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for f in ("config.json", "metrics.json", "fig3_grid.png", "fig4_loss_vs_ratio.png",
              "fig_setup.png", "summary.md", "cells/d_0.json", "cells/d_1.json"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["cells"]) == 2 * 2 * 2  # d x w x seeds of the smoke profile
    shares = [m["anova"][k]["share"] for k in ("alignment", "ratio", "interaction", "residual")]
    assert sum(shares) == pytest.approx(1)
    assert all(math.isfinite(c["mse_all"]) for c in m["cells"])

    # resume: a lost cell file is recomputed, identical to the first run; the rest is reused
    def cell(name):
        g = json.loads((out / "cells" / name).read_text())
        g.pop("seconds")
        return g

    before = cell("d_1.json")
    os.remove(out / "cells" / "d_1.json")
    d0 = out / "cells" / "d_0.json"
    d0.write_text(json.dumps({**json.loads(d0.read_text()), "marker": 1}))
    r = run_stage("00_toy.py", "--profile", "smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert cell("d_1.json") == before
    assert json.loads((out / "cells" / "d_0.json").read_text())["marker"] == 1  # not retrained

    # the same folder with another config is refused, nothing overwritten
    cfg = (out / "config.json").read_text()
    r = run_stage("00_toy.py", "--profile", "smoke", "--n-target", "7", "--out", str(out))
    assert r.returncode == 2 and "different config" in r.stderr
    assert (out / "config.json").read_text() == cfg


@pytest.mark.parametrize("flags, words", [
    (["--profile", "gpu-huge"], "invalid choice"),
    (["--ratios", "0.1,1.5"], "mixing ratio must be in [0, 1]"),
    (["--ratios", "0.1,fast"], "ratio must be a number"),
    (["--n-target", "0"], "--n-target must be positive"),
    (["--n-source", "-5"], "--n-source must be positive"),
    (["--train-steps", "0"], "--train-steps must be positive"),
    (["--d-values=-1,2"], "--d-values must be finite and >= 0"),
    (["--target-coverage", "1.2"], "--target-coverage"),
    (["--design", "mine"], "invalid choice"),
    (["--design", "paper", "--fig3-ratios", "0,x"], "--fig3-ratios must be numbers"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, flags, words):
    out = tmp_path / "never"
    r = run_stage("00_toy.py", "--profile", "smoke", "--out", str(out), *flags)
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert not out.exists()


def paper_args(toy, argv=()):
    return common.parse_args(toy.Args, toy.PROFILES, ["--design", "paper", *argv], presets={"design": toy.DESIGNS})


def test_paper_design_defaults_are_fig4s_grid(toy):
    """--design paper takes Fig. 4's dz and w levels; a flag or a profile still overrides them."""
    a = paper_args(toy)
    assert a.d_values == [0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 50.0]
    assert [float(w) for w in a.ratios] == [0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99]
    assert not a.clip_samples and a.out == "runs/toy/paper"
    assert paper_args(toy, ["--d-values", "0.5,3"]).d_values == [0.5, 3.0]
    assert paper_args(toy, ["--profile", "smoke"]).d_values == toy.PROFILES["smoke"]["d_values"]
    ws = [float(w) for w in a.ratios]
    # Fig. 3's columns w = 0 and 1 are trained on its rows only, outside the ANOVA grid
    assert toy.group_ratios(1.0, ws, a) == ws + [0.0, 1.0]
    assert toy.group_ratios(3.0, ws, a) == ws
    assert [toy.regime(d, a) for d in (0.01, 0.1, 0.5, 5.0, 10.0, 50.0)] == [
        "overlapping", "overlapping", "structured", "structured", "disjoint", "disjoint"]


def test_paper_geometry(toy):
    """Fig. 3: inputs fill a unit-square plane per domain (z = 0 source, z = dz target); outputs
    are spirals, the target's the source's rotated 90 degrees and scaled; the target samples cover
    u <= c only, the rest of the target plane is the OOD region."""
    a = paper_args(toy)
    p_t, y_t, p_s, y_s = toy.make_dataset(0, a)
    assert p_t.shape == (a.n_target, 2) and p_s.shape == (a.n_source, 2)
    x_s, x_t = toy.latent_input(p_s, 7.0, torch.zeros(len(p_s))), toy.latent_input(p_t, 7.0, torch.ones(len(p_t)))
    assert (x_s[:, 2] == 0).all() and (x_t[:, 2] == 7.0).all()
    assert ((x_s[:, :2] >= 0) & (x_s[:, :2] <= 1)).all() and x_s[:, :2].min() < 0.05 and x_s[:, :2].max() > 0.95
    assert p_t[:, 0].max() <= a.target_coverage < p_s[:, 0].max()  # the target covers part only
    u = torch.linspace(0, 1, 50)
    ys, yt = toy.true_output(u, False, a), toy.true_output(u, True, a)
    assert torch.allclose(yt.norm(dim=-1), a.target_scale * ys.norm(dim=-1), atol=1e-5)
    assert torch.allclose(yt, a.target_scale * torch.stack([-ys[:, 1], ys[:, 0]], -1), atol=1e-5)  # +90 deg
    r = ys.norm(dim=-1)
    assert r[0] == pytest.approx(a.spiral_radius[0]) and r[-1] == pytest.approx(a.spiral_radius[1])
    # the output depends on u only: v moves the input across the plane, not the output
    p = torch.stack([u, torch.rand(50)], -1)
    assert torch.allclose(toy.true_output(p, True, a), yt)
    pts, ood = toy.eval_thetas(a)
    assert pts.shape == (a.eval_points, 2) and ood.float().mean() == pytest.approx(1 - a.target_coverage, abs=0.02)
    assert (ood == (pts[:, 0] > a.target_coverage)).all()
    m = toy.cell_metrics(toy.true_output(pts, True, a).unsqueeze(1).expand(-1, a.eval_samples, 2), a)
    assert m["mse_all"] == 0 and m["source_mode"] == 0


def test_paper_design_smoke_run(tmp_path):
    out = tmp_path / "toy"
    r = run_stage("00_toy.py", "--profile", "smoke", "--design", "paper", "--out", str(out))
    assert r.returncode == 0, r.stderr
    for f in ("fig3_grid.png", "fig4_paper_style.png", "fig4_paper_style_logloss.png", "summary.md"):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    # smoke: d in {0, 1} x w in {0.1, 1}, plus Fig. 3's w = 0 and 0.01 on its row d = 1; 2 seeds
    want = [(0, 0.1), (0, 1.0), (1, 0.0), (1, 0.01), (1, 0.1), (1, 1.0)]
    assert sorted({(c["d"], c["w"]) for c in m["cells"]}) == want
    assert m["anova"]["ratios"] == [0.1, 1.0]  # the ANOVA stays on the grid
    assert "0.48" in (out / "summary.md").read_text()


# --- mixing-ratio sampler (Eq. 1) ------------------------------------------------------------
@pytest.mark.parametrize("w", [0.0, 0.016, 0.1, 0.5, 0.8, 1.0])
def test_sampler_composition_matches_w(toy, w):
    g = torch.Generator().manual_seed(1)
    is_t, idx = toy.sample_mixed_batch(50, 3000, w, 256, g)
    assert is_t.shape == idx.shape == (256,)
    fracs = [toy.sample_mixed_batch(50, 3000, w, 256, g)[0].float().mean().item() for _ in range(400)]
    mean = float(np.mean(fracs))
    se = math.sqrt(max(w * (1 - w), 1e-12) / (256 * 400))
    assert abs(mean - w) < 5 * se + 1e-12
    if w == 0.0:
        assert max(fracs) == 0.0
    if w == 1.0:
        assert min(fracs) == 1.0


def test_sampler_indices_in_range_and_vector_w(toy):
    g = torch.Generator().manual_seed(2)
    w = torch.tensor([0.0, 0.3, 1.0])
    is_t, idx = toy.sample_mixed_batch(7, 11, w, 5000, g)
    assert is_t.shape == (3, 5000)
    assert not is_t[0].any() and is_t[2].all()
    assert (idx[is_t] < 7).all() and (idx[~is_t] < 11).all() and (idx >= 0).all()
    assert set(idx[is_t].tolist()) == set(range(7))  # uniform within the domain: all drawn
    assert abs(is_t[1].float().mean().item() - 0.3) < 0.03


@pytest.mark.parametrize("w", [-0.1, 1.5, float("nan")])
def test_sampler_rejects_bad_ratio(toy, w):
    with pytest.raises(toy.common.UsageError):
        toy.sample_mixed_batch(5, 5, w, 8)


def test_sampler_rejects_empty_domain(toy):
    with pytest.raises(toy.common.UsageError):
        toy.sample_mixed_batch(0, 5, 0.5, 8)
    with pytest.raises(toy.common.UsageError):
        toy.sample_mixed_batch(5, 0, 0.5, 8)
    toy.sample_mixed_batch(5, 0, 1.0, 8)  # real-only needs no source
    toy.sample_mixed_batch(0, 5, 0.0, 8)  # sim-only needs no target


# --- ANOVA -----------------------------------------------------------------------------------
def test_two_way_anova_hand_example(toy):
    # cells (A, B): A1B1 {1, 3}, A1B2 {5, 7}, A2B1 {2, 4}, A2B2 {10, 12}; grand mean 5.5.
    # By hand: SS_A = 2*2*((4-5.5)^2 + (7-5.5)^2) = 18; SS_B = 2*2*((2.5-5.5)^2 + (8.5-5.5)^2) = 72;
    # interaction residuals of the cell means are +-1, so SS_AB = 2*4*1 = 8; within cells every
    # value is +-1 from its mean, SS_E = 8; total 106. F_A = 18 / (8 / 4) = 9.
    y = np.array([[[1, 3], [5, 7]], [[2, 4], [10, 12]]], dtype=float)
    r = toy.two_way_anova(y)
    assert r["A"]["ss"] == pytest.approx(18)
    assert r["B"]["ss"] == pytest.approx(72)
    assert r["AB"]["ss"] == pytest.approx(8)
    assert r["residual"]["ss"] == pytest.approx(8)
    assert r["ss_total"] == pytest.approx(106)
    assert (r["A"]["df"], r["B"]["df"], r["AB"]["df"], r["residual"]["df"]) == (1, 1, 1, 4)
    assert r["A"]["F"] == pytest.approx(9)
    assert r["B"]["F"] == pytest.approx(36)
    assert r["A"]["share"] == pytest.approx(18 / 106)
    # p of F(1, 4) = 9: the F(1, 4) tail equals the two-sided t(4) tail at t = 3
    assert r["A"]["p"] == pytest.approx(2 * stats.t.sf(3, 4))
    assert sum(r[k]["share"] for k in ("A", "B", "AB", "residual")) == pytest.approx(1)


def test_two_way_anova_pure_factor(toy):
    rng = np.random.default_rng(0)
    y = np.arange(4)[:, None, None] + np.zeros((4, 3, 5)) + 1e-6 * rng.standard_normal((4, 3, 5))
    r = toy.two_way_anova(y)
    assert r["A"]["share"] > 0.999 and r["B"]["share"] < 1e-6
    with pytest.raises(ValueError):
        toy.two_way_anova(np.zeros((2, 2, 1)))
