"""04_analyze.py: alignment metrics and the domain probe on point clouds with known answers."""
import numpy as np
import pytest

from conftest import load_stage


@pytest.fixture(scope="module")
def an():
    return load_stage("04_analyze.py")


def clouds(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) * np.linspace(0.5, 2.0, d)


def test_identical_clouds_have_zero_w_and_gw(an):
    x = clouds()
    assert an.wasserstein(x, x.copy()) == pytest.approx(0.0, abs=1e-6)
    assert an.gromov_wasserstein(x, x.copy()) == pytest.approx(0.0, abs=1e-9)


def test_translation_moves_w_not_gw(an):
    x = clouds()
    y = x + 2.0
    assert an.wasserstein(x, y) == pytest.approx(2.0 * np.sqrt(x.shape[1]), rel=1e-6)  # W2 of a shift
    assert an.gromov_wasserstein(x, y) == pytest.approx(0.0, abs=1e-9)
    rot = np.linalg.qr(np.random.default_rng(1).normal(size=(6, 6)))[0]
    assert an.gromov_wasserstein(x, x @ rot) == pytest.approx(0.0, abs=1e-9)  # isometry
    # a mildly and a strongly reshaped cloud: GW grows with the change of shape, in the exact
    # and in the subsampled variant (which is biased upward at small subsets: bench/bench_analyze.py)
    mild, strong = x * np.array([1.5, 1, 1, 1, 1, 1]), x * np.array([4, 1, 1, 1, 1, 0.1])
    for kw in ({}, {"method": "subsample", "subsample": 60, "repeats": 4}):
        g_mild, g_strong = an.gromov_wasserstein(x, mild, **kw), an.gromov_wasserstein(x, strong, **kw)
        assert 1e-4 < g_mild < g_strong
    assert an.wasserstein(x, y, "sinkhorn") == pytest.approx(an.wasserstein(x, y), rel=0.1)


def test_standardize_removes_per_domain_shift_and_scale(an):
    x = clouds()
    assert np.allclose(an.standardize(3 * x + 5), an.standardize(x))


def test_probe_separates_shifted_gaussians_not_identical_distributions(an):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert an.domain_probe(a, b + 1.5, steps=300) > 0.95
    assert 0.35 < an.domain_probe(a, b, steps=300) < 0.65


def test_correlation_hand_example(an):
    r = an.correlation([1, 2, 3, 4], [2, 4, 6, 8])
    assert r["pearson"] == pytest.approx(1.0) and r["spearman"] == pytest.approx(1.0)
    r = an.correlation([1, 2, 3, 4, 5], [5, 3, 4, 1, 2])
    assert r["spearman"] == pytest.approx(-0.8)  # 1 - 6 * 36 / (5 * 24)
    assert r["pearson"] == pytest.approx(-0.8)
    assert 0 < r["pearson_p"] < 1


def test_smoke_end_to_end_and_no_runs(tmp_path):
    import json
    import os
    from conftest import make_fake_dataset, run_stage
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 3, 20, seed=0)
    src = make_fake_dataset(tmp_path / "s.hdf5", 4, 20, seed=1, domain="source")
    runs = tmp_path / "runs"
    for method, ratio in (("cotrain", "0.3"), ("real_only", "1")):
        r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                      "--method", method, "--ratio", ratio, "--out", str(runs / "train" / method))
        assert r.returncode == 0, r.stderr
    r = run_stage("03_eval.py", "--profile", "smoke", "--ckpt", str(runs / "train" / "cotrain" / "ckpt.pt"),
                  "--trials", "1", "--out", str(runs / "eval" / "cotrain"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "analysis"
    r = run_stage("04_analyze.py", "--profile", "smoke", "--runs", str(runs), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "alignment.json").read_text())
    assert sorted(r["method"] for r in rows) == ["cotrain", "real_only"]
    by = {r["method"]: r for r in rows}
    assert by["cotrain"]["success"] is not None and by["real_only"]["success"] is None
    assert all(r["w_trunk"] > 0 and 0 <= r["probe_trunk"] <= 1 for r in rows)
    assert (out / "alignment.md").exists() and (out / "alignment_vs_ratio.png").stat().st_size > 0
    assert "needs 3" in r.stdout  # too few evaluated checkpoints for a correlation: said so
    bad = run_stage("04_analyze.py", "--profile", "smoke", "--runs", str(tmp_path / "none"),
                    "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: no training runs")
    assert not os.path.exists(tmp_path / "bad")
