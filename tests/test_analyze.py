"""04_analyze.py: alignment metrics and the domain probe on point clouds with known answers."""
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import claims
import common
import figures
import methods
import records
import tables
from conftest import ROOT, load_stage, make_fake_dataset, run_stage


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
    assert an.domain_probe(a, b + 1.5, steps=300)[0] > 0.95
    assert 0.35 < an.domain_probe(a, b, steps=300)[0] < 0.65
    assert an.domain_probe(a, b + 1.5, steps=300, hidden=0)[0] > 0.95  # linear: a shift it sees
    ring = b / np.linalg.norm(b, axis=1, keepdims=True) * 6.0          # same mean, another radius
    assert an.domain_probe(a, ring, steps=300)[0] > 0.9 and an.domain_probe(a, ring, steps=300, hidden=0)[0] < 0.7
    # cross-validated over seeds: deterministic on one machine, its spread reported beside it
    first, again = an.domain_probe(a, b + 0.3, steps=100), an.domain_probe(a, b + 0.3, steps=100)
    assert first == again and 0 < first[1] < 0.1


def test_correlation_hand_example(an):
    r = an.correlation([1, 2, 3, 4], [2, 4, 6, 8])
    assert r["pearson"] == pytest.approx(1.0) and r["spearman"] == pytest.approx(1.0)
    r = an.correlation([1, 2, 3, 4, 5], [5, 3, 4, 1, 2])
    assert r["spearman"] == pytest.approx(-0.8)  # 1 - 6 * 36 / (5 * 24)
    assert r["pearson"] == pytest.approx(-0.8)
    assert 0 < r["pearson_p"] < 1
    r = an.correlation([1, 2, 3], [0.1, 0.5, 0.9])  # 3 points in perfect order: 2 of 6 orderings as extreme
    assert r["spearman"] == pytest.approx(1.0) and r["spearman_p"] == pytest.approx(1 / 3)
    assert r["pearson_p"] == pytest.approx(1 / 3) and r["p_method"] == "exact permutation"
    r = an.correlation(list(range(10)), [0, 2, 1, 3, 5, 4, 6, 8, 7, 9])  # past 8 points: random orderings
    assert r["p_method"].startswith("permutation") and r["spearman_p"] < 1e-3
    # 9 points: the random-ordering p agrees with the exact one (9! = 362,880 orderings enumerated here)
    x, y = np.arange(9.0), np.array([2, 0, 1, 5, 3, 4, 8, 6, 7.0])
    exact = an.exact_p(x, y, lambda a, b: np.corrcoef(a, b)[0, 1])
    assert an.correlation(x, y)["pearson_p"] == pytest.approx(exact, abs=0.005)


def test_smoke_end_to_end_tables_and_bad_input(tmp_path):
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 3, 20, seed=0)
    src = make_fake_dataset(tmp_path / "s.hdf5", 4, 20, seed=1, domain="source")
    runs = tmp_path / "runs"
    for name, method, ratio in (("cotrain", "cotrain", "0.3"), ("cotrain6", "cotrain", "0.6"),
                                ("disc", "discriminate", "0.3"), ("cfg_adda", "cfg_adda", "0.3"),
                                ("real_only", "real_only", "1")):
        r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                      "--method", method, "--ratio", ratio, "--out", str(runs / "train" / name))
        assert r.returncode == 0, r.stderr
    ck = lambda name: str(runs / "train" / name / "ckpt.pt")  # noqa: E731
    r = run_stage("03_eval.py", "--profile", "smoke", "--ckpt", f"{ck('cotrain')},{ck('cotrain6')},{ck('disc')}",
                  "--trials", "1", "--out", str(runs / "eval" / "plain"))
    assert r.returncode == 0, r.stderr
    r = run_stage("03_eval.py", "--profile", "smoke", "--ckpt", ck("cfg_adda"), "--guidance=-1,-0.5",
                  "--trials", "1", "--out", str(runs / "eval" / "cfg_adda"))
    assert r.returncode == 0, r.stderr
    # a run still training is skipped and said so
    c = torch.load(ck("real_only"), weights_only=False)
    c["step"] = c["config"]["args"]["steps"] // 2  # stopped half way: still training
    os.makedirs(runs / "train" / "busy")
    torch.save(c, ck("busy"))

    out = tmp_path / "analysis"
    r = run_stage("04_analyze.py", "--profile", "smoke", "--runs", str(runs), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "alignment.json").read_text())
    assert sorted(r["method"] for r in rows) == ["cfg_adda", "cotrain", "cotrain", "discriminate", "real_only"]
    by = {(r["method"], r["mixing_ratio"]): r for r in rows}
    assert by[("cotrain", 0.3)]["success"] is not None and by[("real_only", 1.0)]["success"] is None
    assert by[("cfg_adda", 0.3)]["success"] is not None  # at its stored guidance, -0.5
    assert all(r["w_trunk"] > 0 and 0 <= r["probe_trunk"] <= 1 for r in rows)
    t1 = json.loads((out / "table1.json").read_text())
    assert len(t1) == 1 and t1[0]["mixing_ratio"] == 0.3 and t1[0]["paper_cotrain"] == 0.85
    g = json.loads((out / "guidance.json").read_text())
    assert sorted(x["guidance"] for x in g) == [-1.0, -0.5]
    gl = json.loads((out / "guideline.json").read_text())
    assert len(gl) == 1 and gl[0]["N"] == 3 and gl[0]["M"] == 4 and gl[0]["ratios"] == [0.3, 0.6]
    for f in ("alignment.md", "alignment_vs_ratio.png", "regimes.png", "methods_vs_ratio.png",
              "guidance_sweep.png", "guideline.png", "umap/cotrain.png",
              "umap_grid_NutAssembly_target_visual_physics_smoke.png"):
        assert (out / f).stat().st_size > 0, f
    missing = (out / "missing.md").read_text()
    assert "Table 3" in missing and "pretrain_ft" in missing and "still training" in missing
    assert "needs 3" in r.stdout  # too few evaluated ratio-sweep checkpoints for a correlation: said so
    # an evaluation under another label or execution (03_eval --label / --n-action) is not the
    # run's number, even when its file sorts after the run's own
    other = json.loads((runs / "eval" / "plain" / "results.json").read_text())
    assert all(ev["as_trained"] for ev in other["evaluations"].values())
    for ev in other["evaluations"].values():
        ev.update(as_trained=False, success_rate=0.123)
    os.makedirs(runs / "eval" / "zz_n_action")
    (runs / "eval" / "zz_n_action" / "results.json").write_text(json.dumps(other))
    found, _ = load_stage("04_analyze.py").discover(str(runs), [ck("cotrain")])
    assert found[0]["eval"]["success_rate"] != 0.123 and found[0]["eval"]["as_trained"]

    bad = run_stage("04_analyze.py", "--profile", "smoke", "--runs", str(tmp_path / "none"),
                    "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: no finished training runs")
    bad = run_stage("04_analyze.py", "--profile", "smoke", "--runs", str(runs), "--only", "guidance",
                    "--ckpt", ck("cotrain"), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "domain label" in bad.stderr and "cotrain" in bad.stderr
    bad = run_stage("04_analyze.py", "--profile", "smoke", "--runs", str(runs), "--only", "umpa",
                    "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "unknown umpa" in bad.stderr
    assert not os.path.exists(tmp_path / "bad")


def test_every_method_of_the_table_has_a_place(an, monkeypatch):
    """04_analyze.py orders, groups and draws methods from methods.METHODS: every row is placed,
    and a row it cannot tell apart from another (a marker already taken) fails the check."""
    methods.check_placement()
    assert methods.method_order() == list(methods.METHODS) + ["pretrain_ft"]
    assert [m for m in methods.method_order() if methods.in_ratio_sweep(m)] == ["real_only", "sim_only", "cotrain"]
    monkeypatch.setitem(methods.METHODS, "twin", methods.Method(marker=methods.METHODS["cotrain"].marker))
    with pytest.raises(ValueError, match="twin"):
        methods.check_placement()
    monkeypatch.setitem(methods.METHODS, "twin", methods.Method(marker="h"))  # pretrain_ft's
    with pytest.raises(ValueError, match="apart"):
        methods.check_placement()


def test_tables_rebuild_from_committed_results_in_a_clone_without_runs_or_data(tmp_path):
    """04_analyze.py --runs <committed results> needs nothing but the repository: the tracked files
    copied to another folder (no runs/, no data/) rebuild the fixture's committed tables."""
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(clone / os.path.dirname(f), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), clone / f)
    assert not (clone / "runs").exists() and not (clone / "data").exists()
    fixture = "tests/fixtures/results_smoke"
    r = subprocess.run([sys.executable, "04_analyze.py", "--profile", "smoke", "--runs", fixture, "--out",
                        str(tmp_path / "out")], cwd=clone, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, MPLBACKEND="Agg"))
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("alignment", "methods", "guidance", "table1", "table2", "table3", "comparisons", "guideline",
                 "correlations", "repeats", "compute", "failures", "claims"):
        want = (clone / fixture / "analysis" / f"{name}.md").read_text()
        assert (tmp_path / "out" / f"{name}.md").read_text() == want, name
    assert (tmp_path / "out" / "missing.md").read_text() == (clone / fixture / "analysis" / "missing.md").read_text()
    for f in ("alignment_vs_ratio.png", "methods_vs_ratio.png", "guidance_sweep.png",
              "umap_grid_NutAssembly_target_visual_physics_smoke.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0, f
    assert not (clone / "runs").exists() and not (clone / "data").exists()  # nothing written beside


def test_paper_tables_from_the_smoke_study_fixture(an):
    """Tables 1-3, the comparisons and Fig. 9's builders on the committed smoke study
    (plans/smoke_study.toml: N = 1, M = 2, auto = 0.471; 2 episodes per evaluation)."""
    runs, unfinished = records.discover(os.path.join(ROOT, "tests/fixtures/results_smoke"))
    assert not unfinished and len(runs) == 8 and not any(r["superseded"] for r in runs)
    auto = common.resolve_ratio("auto", 1, 2)
    t1, _, _ = an.table1(runs)
    assert [(r["mixing_ratio"], r["cotrain_cell"] != "-", r["paper_cotrain"]) for r in t1] == [(auto, True, 0.85)]
    t2, md2, miss2 = an.table2(runs)
    assert [r["method"] for r in t2] == ["real_only", "sim_only", "cotrain", "discriminate", "cfg_adda", "cfg_adda@0"]
    assert all(r["mixing_ratio"] == pytest.approx(auto) for r in t2 if r["method"] not in ("real_only", "sim_only"))
    assert [r["guidance"] for r in t2 if r["method"].startswith("cfg_adda")] == [-0.5, 0.0]
    assert {r["method"]: r["paper_sim_and_real"] for r in t2}["cfg_adda"] == pytest.approx(0.7)  # 21/30
    assert sorted(m.split(" no evaluated ")[1].split(" run")[0] for m in miss2) == ["adda", "cfg", "ot"]
    t3, _, _ = an.table3(runs)
    assert len(t3) == 1 and t3[0]["paper_pretrain_ft"] == 0.77
    comp, md, _ = an.comparisons(runs)
    claims = [r["claim"].split(" ")[0] for r in comp]
    assert claims == ["C2", "C6", "C6", "C7", "C8", "C3"]  # ot / adda / cfg not run: no test
    assert all(0 <= r["p_two_sided"] <= 1 and 0 <= r["p_a_greater"] <= 1 for r in comp)
    c3 = comp[-1]
    assert "1 ratios" in c3["a"] and "2 ratios" in c3["b"]  # 0.471 inside [0.333, 0.667]; 0.1, 0.9 outside
    ca = next(r for r in runs if r["method"] == "cfg_adda")  # its records stand in for a cfg run: the control row
    comp2, _, _ = an.comparisons(runs + [{**ca, "method": "cfg", "run": "cfg"}])
    control = [r for r in comp2 if r["claim"].startswith("C6 control")]
    assert len(comp2) == len(comp) + 2 and [(r["a"], r["b"], r["difference"]) for r in control] == [
        ("cfg_adda lambda=-0.5", "cfg lambda=-0.5", 0.0)]
    out, _, _ = an.methods_table(runs)
    grid = out["NutAssembly/target_visual_physics (smoke)"]
    assert sorted(grid["cotrain"]) == sorted(f"{w:.3g}" for w in (0.1, auto, 0.9))
    assert "pretrain_ft" not in grid and set(grid) >= {"real_only", "sim_only", "cotrain", "discriminate", "cfg_adda"}
    assert set(figures.disc_curves(runs)) == {r["run"] for r in runs if r["method"] in ("discriminate", "cfg_adda")}


def test_repeated_episodes_agree_and_a_changed_one_is_caught(an, tmp_path):
    """The smoke study runs CFG-ADDA at lambda = -0.5 in two folders on the same seeds (its evaluation
    and its guidance sweep): the repeats check pairs them; a changed outcome shows as disagreement."""
    root = str(tmp_path / "r")
    shutil.copytree(os.path.join(ROOT, "tests/fixtures/results_smoke"), root)
    rows, _, _ = an.repeats(root)
    assert [(r["folder_b"].endswith("_guidance"), r["episodes"], r["agree"]) for r in rows] == [(True, 2, True)]
    path = os.path.join(root, "eval", rows[0]["folder_b"], "episodes.jsonl")
    eps = [json.loads(line) for line in open(path)]
    hit = next(e for e in eps if "guidance=-0.5" in e["key"])
    hit["success"], hit["length"] = not hit["success"], hit["length"] - 1
    with open(path, "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in eps)
    bad = an.repeats(root)[0][0]
    assert not bad["agree"] and bad["same_success"] == bad["same_length"] == 1
    os.remove(path)  # an older record: its episodes only in results.json
    old = [r for r in an.repeats(root)[0] if r["evaluation"].endswith("guidance=-0.5")]
    assert [(r["episodes"], r["agree"]) for r in old] == [(2, True)]


def test_compute_table_sums_what_the_records_measured(an, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(os.path.join(ROOT, "tests/fixtures/results_smoke"), root)
    run = root / "train" / "NutAssembly_target_visual_physics_cotrain_r0.1_encdec_s0"
    (run / "metrics.jsonl").write_text('{"step": 10, "samples_per_s": 16}\n{"step": 20, "samples_per_s": 32}\n')
    ev = root / "eval" / "NutAssembly_target_visual_physics_real_only_r1_encdec_s0" / "episodes.jsonl"
    ev.write_text('{"seconds": 30}\n{"seconds": 90}\n')
    rows = {(r["kind"], r["name"]): r for r in an.compute_table(str(root))[0]}
    assert len([k for k in rows if k[0] == "train"]) == 8
    assert rows["train", run.name]["minutes"] == pytest.approx((10 * 16 / 16 + 10 * 16 / 32) / 60)  # batch 16
    e = rows["evaluate", ev.parent.name]
    assert e["minutes"] == pytest.approx(2.0) and e["work"] == "2 episodes"


def test_correlations_over_the_sweep_and_every_checkpoint(an):
    """Fig. 7: the better aligned (smaller W) checkpoints succeed more -> positive in the paper's
    direction; the sweep and all checkpoints are separate rows; a constant stem distance says so."""
    def row(method, w, succ):
        return {"setting": "S", "method": method, "mixing_ratio": 0.5, "success": succ, "superseded": False,
                "headline": True, "w_trunk": w, "gw_trunk": 2 * w, "w_stem": 4.0, "gw_stem": 0.04}
    rows = [row("sim_only", 8.0, 0.1), row("cotrain", 4.0, 0.4), row("real_only", 2.0, 0.5), row("ot", 1.0, 0.9),
            {**row("cotrain", 0.5, 0.0), "superseded": True, "headline": False},
            {**row("cotrain", 0.5, 0.0), "success": None}]
    out, md, missing = an.correlations(rows)
    got = {(r["checkpoints"], r["metric"]): r for r in out}
    assert got["ratio sweep", "W trunk"]["n"] == 3 and got["all checkpoints", "W trunk"]["n"] == 4
    assert got["ratio sweep", "W trunk"]["spearman_alignment"] == pytest.approx(1.0)
    gw = got["all checkpoints", "GW trunk"]
    assert gw["pearson_alignment"] > 0.9 and gw["pearson"] < 0
    assert "same" in got["ratio sweep", "W stem"]["note"] and "pearson" not in got["ratio sweep", "W stem"]
    assert not missing
    assert an.correlations(rows[:2])[2] == ["correlation S (ratio sweep): 2 evaluated checkpoint(s), needs 3",
                                            "correlation S (all checkpoints): 2 evaluated checkpoint(s), needs 3"]


def test_failures_table_counts_where_episodes_failed(an, tmp_path):
    d = tmp_path / "eval" / "e"
    os.makedirs(d)
    key = "results/train/r/ckpt.pt|target_visual_physics|guidance=None"
    def ep(seed, success, grasp, lift, xy):
        return {"key": key, "seed": seed, "success": success, "reached": {"grasp": grasp},
                "nut_path": {"lift_mm": lift, "min_peg_xy_mm": xy}}
    eps = [ep(0, True, 50, 90, 1.0), ep(1, False, None, 0, None),
           *[ep(2 + i, False, 60, 80, x) for i, x in enumerate((10.0, 20.0, 30.0))],
           {"key": key, "seed": 9, "success": False, "reached": {}, "nut_path": {}}]  # another task: skipped
    (d / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in eps) + '{"key": "cut by a ki')
    (row,), _, _ = an.failures_table(str(tmp_path))  # the cut last line is skipped, as 03_eval.py does
    assert (row["episodes"], row["successes"], row["failures"], row["failed_grasped"], row["failed_lifted"],
            row["failed_above_peg"], row["off_axis_mm_q25_50_75"]) == (5, 1, 4, 3, 3, 3, "15 / 20 / 25")


def test_cmh_test_matches_r_on_ucb_admissions():
    """tables.cmh_test against R's mantelhaen.test(UCBAdmissions) (admitted / applicants, men vs
    women, stratified by department): X-squared = 1.4269 with the continuity correction (1.5246
    without), p = 0.2323, common odds ratio 0.9047. One stratum alone is the uncorrected Pearson
    chi-square less the correction, and no variance gives p = 1."""
    ucb = [(512, 825, 89, 108), (353, 560, 17, 25), (120, 325, 202, 593), (138, 417, 131, 375),
           (53, 191, 94, 393), (22, 373, 24, 341)]
    r = tables.cmh_test(ucb)
    assert abs(r["chi2"] - 1.4269) < 1e-4 and abs(r["p_two_sided"] - 0.2323) < 1e-4
    assert abs(r["odds_ratio"] - 0.9046968) < 1e-6
    assert tables.cmh_test([(150, 200, 125, 200)])["p_two_sided"] < 0.01  # 0.75 vs 0.625, one seed
    assert tables.cmh_test([(0, 200, 0, 200)])["p_two_sided"] == 1.0


def test_fisher_and_superseded_runs(an):
    f = an.fisher_exact(125, 200, 95, 200)  # the cpu recipe's cotrain vs real_only (RESULTS)
    assert f["p_two_sided"] == pytest.approx(0.0035, abs=5e-4) and f["p_a_greater"] < f["p_two_sided"]
    assert an.fisher_exact(3, 10, 3, 10)["p_two_sided"] == pytest.approx(1.0)
    assert an.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # step-down, monotone
    assert an.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and an.holm([]) == []
    base = {"task": "NutAssembly", "target_domain": "target_visual_physics", "profile": "cpu", "method": "real_only",
            "mixing_ratio": 1.0, "arch": "encdec", "n_target": 50, "n_source": 500}
    cfg = {"args": {"seed": 0, "disc_weight": 0.1}, "guidance_scale": None}
    short, long_ = {**base, "step": 15000, "cfg": cfg}, {**base, "step": 20000, "cfg": cfg}
    other = {**base, "step": 15000, "cfg": {"args": {"seed": 1, "disc_weight": 0.1}, "guidance_scale": None}}
    records.mark_superseded([short, long_, other])
    assert short["superseded"] and not long_["superseded"] and not other["superseded"]
    # a run fixed since (run.json "superseded_by") is replaced once its replacement is finished
    old = {**base, "run": "adda", "step": 20000, "cfg": cfg, "superseded_by": "adda_v3"}
    new = {**base, "run": "adda_v3", "step": 20000, "cfg": cfg}
    records.mark_superseded([old, new])
    assert old["superseded"] and not new["superseded"]
    records.mark_superseded([old])  # its replacement not there (yet): it still counts
    assert not old["superseded"]
    # a control run (run.json "control": C8's co-training at 40k) trained longer supersedes nothing
    # and is no headline run itself; the 20k run stays the headline
    std, ctl = {**base, "step": 20000, "cfg": cfg}, {**base, "step": 40000, "cfg": cfg, "control": "C8: steps"}
    records.mark_superseded([std, ctl])
    assert (std["superseded"], std["headline"], ctl["superseded"], ctl["headline"]) == (False, True, False, False)


def test_c2_with_training_seeds_is_stratified_by_seed(an):
    """The image study's C2 (rule difference-2): co-training and real-only at seeds 0, 1, 2. The
    seed-0 runs are the headline (tables, the sweep); the others are replicates; C2 is one
    Cochran-Mantel-Haenszel row over the three seed pairs, the cells pooled, each seed's Fisher
    test in a table of its own, and the claims row names the CMH test and rule difference-2."""
    def run(method, w, seed, k):
        ev = {"successes": k, "trials": 200, "success_rate": k / 200, "wilson95": common.wilson_interval(k, 200)}
        return {"run": f"{method}_s{seed}", "task": "NutAssembly", "target_domain": "target_visual",
                "profile": "cpu_img", "method": method, "mixing_ratio": w, "arch": "encdec", "n_target": 50,
                "n_source": 500, "step": 40000,
                "cfg": {"args": {"seed": seed, "disc_weight": 0.1}, "guidance_scale": None}, "eval": ev}
    co = [run("cotrain", 0.17, s, k) for s, k in ((0, 120), (1, 110), (2, 130))]
    ro = [run("real_only", 1.0, s, k) for s, k in ((0, 100), (1, 95), (2, 105))]
    runs = records.mark_superseded(co + ro)
    assert [r["replicate"] for r in runs] == [False, True, True, False, True, True]
    assert all(r["headline"] for r in runs)
    headline = [r for r in runs if not r["replicate"]]
    rows, md, _ = an.comparisons(headline, [], [r for r in runs if r["replicate"]])
    (c2,) = [r for r in rows if r["claim"].startswith("C2")]
    want = tables.cmh_test([(120, 200, 100, 200), (110, 200, 95, 200), (130, 200, 105, 200)])
    assert c2["test"] == "CMH over 3 training seeds" and c2["p_two_sided"] == want["p_two_sided"] < 0.05
    assert (c2["a_successes"], c2["a_trials"], c2["b_successes"], c2["b_trials"]) == (360, 600, 300, 600)
    assert "C2 by training seed" in md and md.count("| NutAssembly/target_visual") >= 3
    (one,) = [r for r in an.comparisons(headline, [], [])[0] if r["claim"].startswith("C2")]
    assert one["test"] == "Fisher exact" and (one["a_successes"], one["b_successes"]) == (120, 100)
    (claim,) = [r for r in claims.robot_rows(rows, [], [], [], {c2["setting"]: True}) if r["claim"] == "C2"]
    assert claim["rule"] == "difference-2" and claim["test"].startswith("CMH") and "reproduced" in claim["verdict"]
    assert "plans/img_study.toml --claim C2" in claim["command"]


def test_state_probe_reads_back_a_linear_state_not_noise(an):
    """The task-state probe: ~0 error where the state is a linear function of the features, about
    the state's spread where the features carry nothing of it; deterministic."""
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(400, 16)), rng.normal(size=(400, 16)) + 0.5
    W = rng.normal(size=(16, 2))
    assert an.state_probe(zs, zt, zs @ W, zt @ W) < 1e-2
    ys, yt = rng.normal(size=(400, 2)), rng.normal(size=(400, 2))
    err = an.state_probe(zs, zt, ys, yt)
    assert 1.0 < err < 1.5 and err == an.state_probe(zs, zt, ys, yt)  # E|N(0, I_2)| = 1.25
    # a state fixed per domain (the peg in the physics gap): read back iff the features tell the domains
    peg_s, peg_t = np.tile([0.23, 0.10], (400, 1)), np.tile([0.25, 0.07], (400, 1))
    assert an.state_probe(zs, zs + 3, peg_s, peg_t) < 0.2 * an.state_probe(zs, zs[::-1], peg_s, peg_t)


def test_no_committed_record_holds_a_machine_path():
    for root in ("results", "tests/fixtures"):
        assert records.find_machine_paths(os.path.join(ROOT, root)) == [], root


def test_commands_that_missing_md_suggests_are_valid(an, tmp_path):
    """Every 02_train.py command a generated missing.md suggests parses and passes 02's checks
    (--print-config resolves the settings and runs nothing)."""
    cmds = []
    for path in [os.path.join(ROOT, "tests/fixtures/results_smoke/analysis/missing.md")]:
        for line in open(path):
            for part in line.split("python 02_train.py")[1:]:
                cmds.append(part.split(")")[0].split(", then")[0].split(";")[0])
    cmds.append(an.train_cmd("NutAssembly/target_visual_physics", "pretrain_ft").split(", then python 02_train.py")[1])
    assert len(cmds) > 5
    for c in cmds:
        r = run_stage("02_train.py", *shlex.split(c), "--print-config")
        assert r.returncode == 0, (c, r.stderr)


def test_comparisons_pair_runs_on_one_data_version_and_mark_mixed_ones(an):
    """A method is compared with the co-training run of its own data version where there is one
    (the same command makes other dataset bits on another CPU); a comparison across versions says so."""
    def run(name, method, w, k, digests):
        ev = {"successes": k, "trials": 200, "success_rate": k / 200, "wilson95": common.wilson_interval(k, 200),
              "guidance": None}
        return {"run": name, "method": method, "mixing_ratio": w, "eval": ev, "evals": {None: ev}, "sweep": {},
                "task": "NutAssembly", "target_domain": "target_visual_physics", "profile": "cpu",
                "n_target": 50, "n_source": 500,
                "cfg": {"data": {"target": {"digest": digests[0]}, "source": {"digest": digests[1]}}}}
    old, new = ("0d8ece99c4c7b5c7", "89cb5a99d6a2986b"), ("fd97d463ac7e21a6", "1641cdec5835953f")
    runs = [run("co", "cotrain", 0.17, 125, old), run("co2", "cotrain", 0.17, 120, new),
            run("ot", "ot", 0.17, 160, new), run("adda", "adda", 0.17, 40, old), run("ro", "real_only", 1.0, 132, old)]
    rows = {r["claim"]: r for r in an.comparisons(runs)[0]}
    ot, adda = rows["C6 ot > co-training"], rows["C6 adda > co-training"]
    assert ot["b_cell"].startswith("0.600 (120/200") and ot["data"] == "same"
    assert adda["b_cell"].startswith("0.625 (125/200") and rows["C2 co-training > real-only"]["data"] == "same"
    no_twin = [r for r in runs if r["run"] != "co2"]
    mixed = {r["claim"]: r for r in an.comparisons(no_twin)[0]}["C6 ot > co-training"]
    assert mixed["data"] == "mixed: fd97d463/1641cdec vs 0d8ece99/89cb5a99"


def test_one_claim_builds_its_products_only(tmp_path):
    """04_analyze.py --claim C8: Table 3, the comparisons and the claims table (with the guideline
    it reads), nothing else (no alignment: seconds)."""
    r = run_stage("04_analyze.py", "--profile", "smoke", "--runs", "tests/fixtures/results_smoke", "--claim", "C8",
                  "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    made = {f.rsplit(".", 1)[0] for f in os.listdir(tmp_path / "out") if f.endswith(".md")}
    assert made == {"table3", "comparisons", "guideline", "claims"}  # missing.md: a full build's
    r = run_stage("04_analyze.py", "--profile", "smoke", "--runs", "tests/fixtures/results_smoke", "--claim", "C1",
                  "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "--claim" in r.stderr and not os.path.exists(tmp_path / "bad")


def test_claims_table_rebuilds_from_the_committed_records_and_is_results_table(tmp_path):
    """results/analysis/claims.md is what 04_analyze.py makes from the committed records (the
    alignment and correlation tables `make analysis` wrote, the evaluations, the toy's metrics), and
    RESULTS.md's claims block is that table, copied by --report, never typed."""
    out = tmp_path / "an"
    out.mkdir()
    for f in ("correlations.json", "alignment.json"):
        shutil.copy(os.path.join(ROOT, "results", "analysis", f), out / f)
    report = tmp_path / "RESULTS.md"
    shutil.copy(os.path.join(ROOT, "RESULTS.md"), report)
    r = run_stage("04_analyze.py", "--runs", "results", "--out", str(out), "--only", "claims", "--report", str(report))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "claims.md").read_text() == open(os.path.join(ROOT, "results", "analysis", "claims.md")).read()
    assert report.read_text() == open(os.path.join(ROOT, "RESULTS.md")).read()
    bad = tmp_path / "nomarkers.md"
    bad.write_text("# a report without the claims markers\n")
    r = run_stage("04_analyze.py", "--runs", "results", "--out", str(tmp_path / "x"), "--only", "claims",
                  "--report", str(bad))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--report" in r.stderr
    assert not (tmp_path / "x").exists()


def test_claim_rules_power_and_verdict_words():
    """Fisher's two-sided p for every table of a margin equals scipy's; the power of 200 vs 200
    episodes at +0.06 from 0.625 is ~20 % (a simulation gave ~21 %); each rule's words."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        n_a, n_b = (int(x) for x in rng.integers(1, 40, 2))
        k = int(rng.integers(0, n_a + n_b + 1))
        for i, p in zip(*claims.fisher_p_values(n_a, n_b, k)):
            assert p == pytest.approx(stats.fisher_exact([[i, n_a - i], [k - i, n_b - k + i]]).pvalue, abs=1e-9)
    assert claims.fisher_power(0.565, 0.06, 200, 200) == pytest.approx(0.20, abs=0.03)
    assert claims.fisher_power(0.5, 0.0, 100, 100) < 0.05  # no effect: at most the level

    def cmp(k_a, k_b, claim="C7 co-training > +discrimination"):
        f = an_fisher(k_a, k_b)
        return {"claim": claim, "a_cell": "", "b_cell": "", "a_successes": k_a, "a_trials": 200,
                "b_successes": k_b, "b_trials": 200, "difference": (k_a - k_b) / 200, **f, "data": "same"}

    def an_fisher(k_a, k_b):
        return {"p_two_sided": stats.fisher_exact([[k_a, 200 - k_a], [k_b, 200 - k_b]]).pvalue}
    assert claims.difference_verdict(cmp(150, 100), "C7", "physics").startswith("reproduced")
    assert claims.difference_verdict(cmp(100, 150), "C7", "physics").startswith("not reproduced: the opposite")
    null = claims.difference_verdict(cmp(125, 132), "C7", "physics")
    assert null.startswith("not reproduced: no difference detected") and "power" in null and "+0.06" in null
    # C8 without its control run: not comparable yet, whatever the 20k comparison says
    plain = {**cmp(125, 169), "claim": "C8 co-training > pre-train + fine-tune"}
    (c8,) = [r for r in claims.robot_rows([{**plain, "setting": "T/target_visual_physics"}], [], [], [], {})
             if r["claim"] == "C8"]
    assert c8["verdict"].startswith("not comparable yet") and c8["rule"] == "control-1"
    ctl = {**cmp(160, 169), "claim": "C8 co-training at 40k steps (the control) > pre-train + fine-tune",
           "setting": "T/target_visual_physics"}
    (c8,) = [r for r in claims.robot_rows([{**plain, "setting": "T/target_visual_physics"}, ctl], [], [], [], {})
             if r["claim"] == "C8"]
    assert c8["verdict"].startswith("not reproduced: no difference detected")
