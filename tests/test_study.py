"""study.py: a plan expands to the runs it names; the local pool and submitit's local executor run
a 3-run smoke plan to the same outputs, and a run killed half way resumes to them too."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import submitit

import cli
import study
import train_config
from conftest import ROOT, load_stage, run_stage


def test_smoke_plan_expands_to_its_runs():
    runs = study.load_plan(os.path.join(ROOT, "plans", "smoke.toml"))
    assert [r.name for r in runs] == ["NutAssembly_target_visual_physics_cotrain_r0.3_encdec_s0",
                                      "NutAssembly_target_visual_physics_cfg_adda_r0.3_encdec_s0",
                                      "NutAssembly_target_visual_physics_real_only_r1_encdec_s0"]
    assert runs[0].train[:8] == ["--profile", "smoke", "--task", "NutAssembly", "--target-domain",
                                 "target_visual_physics", "--method", "cotrain"]
    assert "--ratio" not in runs[2].train  # real_only: w = 1 by its method
    assert runs[1].evals[0].guidance == [-0.5, 0] and runs[1].evals[0].episodes == 2


def test_list_values_expand_and_names_follow_02_train(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[[run]]\nmethod = "cotrain"\nratio = [0.03, "natural", "auto"]\nseed = [0, 1]\n'
                    '[[run]]\nmethod = "sim_only"\neval = [{domain = "source", episodes = 10}, {}]\n')
    runs = study.load_plan(str(plan))
    names = [r.name for r in runs]
    assert names[:2] == ["NutAssembly_target_visual_physics_cotrain_r0.03_encdec_s0",
                         "NutAssembly_target_visual_physics_cotrain_r0.03_encdec_s1"]
    assert "NutAssembly_target_visual_physics_cotrain_r0.0909_encdec_s0" in names  # N/(N+M) = 50/550
    assert "NutAssembly_target_visual_physics_cotrain_r0.17_encdec_s0" in names    # auto
    sim = runs[-1]
    assert [e.name for e in sim.evals] == [sim.name + "_in_source", sim.name]
    left, total = study.cpu_hours(sim, str(tmp_path / "runs"), str(tmp_path / "results"))
    assert left == total > 1.0  # 20k steps x 128 + 210 episodes on this machine's measured rates
    # the rates measured here (--train-rate, --episode-s) instead of the cost model's: exact arithmetic
    _, slow = study.cpu_hours(sim, str(tmp_path / "runs"), str(tmp_path / "results"), rate=500, episode_s=10)
    assert slow == pytest.approx((20000 * 128 / 500 + 210 * 10) / 3600)



def test_runner_names_steps_and_batch_equal_the_stages_for_every_profile(capsys):
    """One source: for every profile of 02_train.py, the run name, step count and batch size the
    runner prices and names a run by are those 02_train.py itself resolves from the runner's
    argument list (its --print-config), with the name its run folder gets."""
    stage = load_stage("02_train.py")
    specs = [dict(method="cotrain", ratio="auto"), dict(method="sim_only", seed=2, arch="unet"),
             dict(method="cfg_adda", ratio=0.3, steps=40, target_domain="target_visual"),
             dict(method="real_only", flags=["--batch-size", "8"])]
    checked = 0
    for profile in train_config.PROFILES:
        for spec in specs:
            run = study.make_run({"profile": profile, "seed": 0, "ratio": "auto", **spec})
            with pytest.raises(SystemExit) as done:
                stage.main([*run.train, "--print-config"])
            assert done.value.code == 0
            a = stage.Args(**json.loads(capsys.readouterr().out))
            sizes = cli.DATASET_SETS.get(profile, cli.DATASET_SETS["cpu"])  # the data the stage would read
            w = study.ratio_of(a.method, a.ratio, sizes["target"], sizes["source"])
            assert (run.name, run.steps, run.batch) == (stage.run_name(a, w), a.steps, a.batch_size), profile
            # and the argument list says what the plan asked for (a field the runner dropped fails here)
            want = {"method": spec["method"], "seed": spec.get("seed", 0), "arch": spec.get("arch", "encdec"),
                    "target_domain": spec.get("target_domain", "target_visual_physics"), "profile": profile}
            assert {k: getattr(a, k) for k in want} == want and a.steps == spec.get("steps", a.steps)
            checked += 1
    assert checked == 4 * len(train_config.PROFILES)
    img = study.make_run({"profile": "cpu_img", "method": "cotrain", "seed": 0, "ratio": "auto"})
    assert "_img64_" in img.name  # the image suffix the stage puts in its folder name


NUT = "NutAssembly_target_visual_physics_"


def test_img_study_plan_expands_to_exactly_the_issues_runs():
    """plans/img_study.toml (issue 43): image policies on target_visual; real_only and co-training
    at auto = 0.17 with training seeds 0, 1, 2; the sweep at seed 0; sim_only also in its source;
    200 episodes per policy in target_visual."""
    runs = study.load_plan(os.path.join(ROOT, "plans", "img_study.toml"))
    img = "NutAssembly_target_visual_img64_"
    by = {r.name[len(img):]: r for r in runs if r.name.startswith(img)}
    assert len(by) == len(runs) == 12
    assert sorted(by) == sorted(
        [*[f"{m}_encdec_s{s}" for m in ("cotrain_r0.17", "real_only_r1") for s in (0, 1, 2)], "sim_only_r0_encdec_s0",
         *[f"cotrain_r{w}_encdec_s0" for w in ("0.03", "0.0909", "0.316", "0.5", "0.8")]])
    for name, r in by.items():
        a = study.stage_args(r.train, r.name)
        assert (a.profile, a.images, a.target_domain) == ("cpu_img", True, "target_visual")
        domains = sorted((e.domain, e.episodes) for e in r.evals)
        assert domains == ([("", 200), ("source", 200)] if name.startswith("sim_only") else [("", 200)])


def test_nut_study_plan_expands_to_exactly_the_issues_runs():
    """plans/nut_study.toml: every run of the NutAssembly study, its flags and evaluations."""
    runs = study.load_plan(os.path.join(ROOT, "plans", "nut_study.toml"))
    by = {r.name[len(NUT):]: r for r in runs}
    assert sorted(by) == sorted(
        ["real_only_r1_encdec_s0_20k",                                               # C2
         "cfg_adda_r0.17_encdec_s0", "ot_r0.17_encdec_s0", "adda_r0.17_encdec_s0",  # C6
         "cfg_r0.17_encdec_s0", "discriminate_r0.17_encdec_s0",                     # C6, C7
         *[f"cotrain_r{w}_encdec_s0" for w in ("0.03", "0.0909", "0.17", "0.316", "0.5", "0.8")],  # C3
         "sim_only_r0_encdec_s0", "pretrain_ft_r1_encdec_s0",                       # C3, C8
         *[f"{m}_r0.17_encdec_s0_v3" for m in ("adda", "ot", "cfg_adda", "discriminate")],  # issue 44's fixes
         "cotrain_r0.17_encdec_s0_40k"])                                              # C8's control
    for name, r in by.items():
        assert r.train[:6] == ["--profile", "cpu", "--task", "NutAssembly", "--target-domain", "target_visual_physics"]
        if name.endswith("_40k"):
            assert r.steps == 40000 and r.train[-2:] == ["--steps", "40000"]
            continue
        assert r.steps == 20000 and r.batch == 128 and "--steps" not in r.train, name  # the profile's full budget
        assert [(e.domain, e.episodes, e.guidance) for e in r.evals][-1][:2] == ("", 200) or name.startswith("cfg")
    method = {n: r.train[r.train.index("--method") + 1] for n, r in by.items()}
    assert method["real_only_r1_encdec_s0_20k"] == method["pretrain_ft_r1_encdec_s0"] == "real_only"
    ratio = {n: r.train[r.train.index("--ratio") + 1] for n, r in by.items() if "--ratio" in r.train}
    assert ratio["cotrain_r0.0909_encdec_s0"] == "natural" and ratio["cfg_adda_r0.17_encdec_s0"] == "auto"
    assert all(ratio[f"{m}_r0.17_encdec_s0"] == "auto" for m in ("ot", "adda", "cfg", "discriminate", "cotrain"))
    ft = by["pretrain_ft_r1_encdec_s0"]
    assert ft.train[-2:] == ["--init-from", "{results}/train/" + NUT + "sim_only_r0_encdec_s0/ckpt.pt"]
    assert study.needs(ft) == [NUT + "sim_only_r0_encdec_s0"]
    assert [(e.name[len(NUT):], e.episodes, e.guidance) for e in by["cfg_adda_r0.17_encdec_s0"].evals] == [
        ("cfg_adda_r0.17_encdec_s0", 200, []),
        ("cfg_adda_r0.17_encdec_s0_guidance", 100, [-1, -0.5, 0, 0.5, 1])]            # Fig. 10
    assert [(e.name[len(NUT):], e.episodes, e.guidance) for e in by["cfg_r0.17_encdec_s0"].evals] == [
        ("cfg_r0.17_encdec_s0", 200, []), ("cfg_r0.17_encdec_s0_guidance", 100, [-0.5, 0])]  # C6's control
    assert [(e.name[len(NUT):], e.episodes) for e in by["cotrain_r0.17_encdec_s0"].evals] == [
        ("cotrain_r0.17_encdec_s0", 200), ("cotrain_r0.17_encdec_s0_repeat", 200)]  # episode records, a repeat
    assert [(e.domain, e.name[len(NUT):]) for e in by["sim_only_r0_encdec_s0"].evals] == [
        ("source", "sim_only_r0_encdec_s0_in_source"), ("", "sim_only_r0_encdec_s0")]
    # the superseded runs keep the behaviour they were trained with (a rerun from nothing makes them again)
    assert by["ot_r0.17_encdec_s0"].train[-2:] == ["--ot-cost-scale", "none"]
    assert all(by[f"{m}_r0.17_encdec_s0"].train[-1] == "--disc-during-warmup"
               for m in ("adda", "cfg_adda", "discriminate"))
    assert not any(x.startswith(("--disc-during", "--ot-cost")) for m in ("adda", "ot", "cfg_adda", "discriminate")
                   for x in by[f"{m}_r0.17_encdec_s0_v3"].train)
    waves = study.waves(runs)  # nothing finished: the fine-tuning waits for its pre-training
    assert [r.name for r in waves[1]] == [NUT + "pretrain_ft_r1_encdec_s0"]
    # one command per claim: the runs tagged with it and every run they need
    c8 = [r.name[len(NUT):] for r in study.select(runs, "C8")]
    assert c8 == ["sim_only_r0_encdec_s0", "cotrain_r0.17_encdec_s0", "pretrain_ft_r1_encdec_s0",
                  "cotrain_r0.17_encdec_s0_40k"]
    assert all(r.claims for r in runs)


def test_a_run_that_needs_another_waits_for_it(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[[run]]\nmethod = "real_only"\nname = "ft"\n'
                    'flags = ["--init-from", "{results}/train/pre/ckpt.pt"]\n'
                    '[[run]]\nmethod = "sim_only"\nname = "pre"\n')
    runs = study.load_plan(str(plan))
    assert [[r.name for r in w] for w in study.waves(runs)] == [["pre"], ["ft"]]
    os.makedirs(tmp_path / "res" / "train" / "pre")
    (tmp_path / "res" / "train" / "pre" / "run.json").write_text('{"final": true}')
    assert [[r.name for r in w] for w in study.waves(runs, str(tmp_path / "res"))] == [["ft", "pre"]]
    plan.write_text('[[run]]\nmethod = ["cotrain", "ot"]\nname = "x"\n')
    with pytest.raises(study.PlanError, match="name"):
        study.load_plan(str(plan))


def test_minutes_defers_training_that_would_not_end_and_stops_evaluations(tmp_path):
    """--minutes: a training run the cost model says would outlast the deadline does not start; an
    evaluation running at the deadline is stopped by SIGTERM (here a stand-in python
    that sleeps), and the chain says so instead of failing."""
    plan = tmp_path / "p.toml"
    plan.write_text('[defaults]\nprofile = "cpu"\n[[run]]\nmethod = "cotrain"\nname = "a"\n')
    run = study.load_plan(str(plan))[0]
    res, runs_dir = tmp_path / "res", tmp_path / "runs"
    msg = study.run_chain(run, str(runs_dir), str(res), "data", 1, 1, deadline=time.time() + 600)
    assert "deferred: training needs ~57 min" in msg  # 20k x 128 samples at 745 samples/s
    assert "needs ~85 min" in study.run_chain(run, str(runs_dir), str(res), "data", 1, 1, deadline=time.time() + 600,
                                              rate=500)  # --train-rate: what this machine measured
    assert "02_train.py" not in (runs_dir / "logs" / "a.log").read_text()
    os.makedirs(res / "train" / "a")
    (res / "train" / "a" / "run.json").write_text('{"final": true}')
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho $$ > %s\nexec sleep 60\n" % (tmp_path / "pid"))
    fake.chmod(0o755)
    t0 = time.time()
    msg = study.run_chain(run, str(runs_dir), str(res), "data", 1, 1, python=str(fake), deadline=time.time() + 2)
    assert "stopped at --minutes: 0 episodes" in msg and time.time() - t0 < 30
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)
    assert "deferred: --minutes reached" in study.run_chain(run, str(runs_dir), str(res), "data", 1, 1,
                                                           python=str(fake), deadline=time.time() - 1)


def test_fill_starts_a_late_training_and_stops_it_at_the_deadline(tmp_path):
    """--minutes --fill: a training that would not end in time starts anyway (the stand-in python
    here sleeps) and is stopped at the deadline, reaped, nothing collected; its metrics so far
    (with a line cut by the stop) count as progress, so the cost model knows what is left."""
    plan = tmp_path / "p.toml"
    plan.write_text('[defaults]\nprofile = "cpu"\n[[run]]\nmethod = "cotrain"\nname = "a"\n')
    run = study.load_plan(str(plan))[0]
    res, runs_dir = tmp_path / "res", tmp_path / "runs"
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho $$ > %s\nexec sleep 60\n" % (tmp_path / "pid"))
    fake.chmod(0o755)
    msg = study.run_chain(run, str(runs_dir), str(res), "data", 1, 1, python=str(fake), deadline=time.time() + 2,
                          fill=True)
    assert "training stopped at --minutes" in msg and "it resumes from its last checkpoint" in msg
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(int((tmp_path / "pid").read_text()), 0)
    assert not (res / "train" / "a").exists()  # a stopped training is not collected
    (runs_dir / "train" / "a").mkdir(parents=True)
    (runs_dir / "train" / "a" / "metrics.jsonl").write_text('{"step": 4000}\n{"step": 4100}\n{"ste')
    assert study.train_progress(run, str(runs_dir), str(res)) == 4100
    r = run_stage("study.py", str(plan), "--fill")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--fill goes with --minutes" in r.stderr


def test_bad_plans_stop_with_one_line(tmp_path):
    cases = {"x.toml": None, "bad.toml": "[[run]\n", "field.toml": '[[run]]\nmethod = "cotrain"\nlr = 3\n',
             "method.toml": '[[run]]\nmethod = "cotrian"\n',
             "dup.toml": '[[run]]\nmethod = "real_only"\n[[run]]\nmethod = "real_only"\n',
             "empty.toml": "", "runs.toml": '[[runs]]\nmethod = "real_only"\n',
             "task.toml": '[[run]]\nmethod = "real_only"\ntask = "NutAsembly"\n',
             "profile.toml": '[[run]]\nmethod = "real_only"\nprofile = "smokey"\n',
             "evaldomain.toml": '[[run]]\nmethod = "real_only"\neval = [{domain = "target_visaul"}]\n',
             "evalkey.toml": '[[run]]\nmethod = "real_only"\neval = [{domian = "source"}]\n',
             "claims.toml": '[[run]]\nmethod = "real_only"\nclaims = "C2"\n'}
    (tmp_path / "ok.toml").write_text('[[run]]\nmethod = "real_only"\n')
    r = run_stage("study.py", str(tmp_path / "ok.toml"), "--minutes", "-5")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--minutes" in r.stderr
    r = run_stage("study.py", str(tmp_path / "ok.toml"), "--dry-run", "--episode-s", "-1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--episode-s" in r.stderr
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        r = run_stage("study.py", str(tmp_path / name), "--dry-run")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), (name, r.stderr)
    (tmp_path / "file").write_text("a file")
    for extra, says in ((["--only", "nomatch"], "--only"), (["--claim", "C9"], "C9"), (["--launcher", "nonsense"],
                        "--launcher"), (["--results", str(tmp_path / "file" / "res")], "--results")):
        r = run_stage("study.py", str(tmp_path / "ok.toml"), "--dry-run", *extra)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, (extra, r.stderr)


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_data")
    r = run_stage("01_generate_data.py", "--profile", "smoke", "--workers", "1", "--root", str(root))
    assert r.returncode == 0, r.stderr
    return str(root)


def run_plan(tmp, data, *extra):
    return subprocess.run([sys.executable, "study.py", "plans/smoke.toml", "--runs-dir", str(tmp / "runs"),
                           "--results", str(tmp / "results"), "--data-root", data, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def outputs(results) -> dict:
    """What a study leaves under results/: every run's record and every evaluation's episodes."""
    out = {}
    for dirpath, _, files in os.walk(results):
        for f in files:
            p = os.path.join(dirpath, f)
            rel = os.path.relpath(p, results)
            if f == "run.json":
                rec = json.load(open(p))
                out[rel] = (rec["step"], rec["final"], rec["weights_digest"])
            elif f == "episodes.jsonl":
                out[rel] = sorted((r["seed"], r["success"], r["length"], r["digest"], r["final_joint_pos"][0])
                                  for r in map(json.loads, open(p)))
            elif f in ("ckpt.pt", "features.npz", "config.json", "results.json"):
                out[rel] = True
    return out


def test_local_pool_submitit_and_a_kill_give_the_same_outputs(tmp_path, smoke_data):
    a = run_plan(tmp_path / "a", smoke_data)
    assert a.returncode == 0, a.stderr[-2000:]
    ref = outputs(tmp_path / "a" / "results")
    assert len([k for k in ref if k.endswith("run.json")]) == 3
    assert len([k for k in ref if k.endswith("episodes.jsonl")]) == 3
    log = tmp_path / "a" / "runs" / "logs" / "NutAssembly_target_visual_physics_real_only_r1_encdec_s0.log"
    before = log.read_text()
    again = run_plan(tmp_path / "a", smoke_data)  # everything done: nothing trains or rolls out again
    assert again.returncode == 0 and before.count("02_train.py") == 1 and log.read_text() == before
    assert outputs(tmp_path / "a" / "results") == ref

    # the plan's committed runs trained on other data than data/ holds now: a run that must train
    # is refused (one line naming both digest pairs) unless --allow-new-data; nothing is trained
    d = tmp_path / "d"
    shutil.copytree(tmp_path / "a", d)
    for cfg in (d / "results" / "train").glob("*/config.json"):
        c = json.loads(cfg.read_text())
        c["data"]["target"]["digest"], c["data"]["source"]["digest"] = "ab" * 8, "cd" * 8
        cfg.write_text(json.dumps(c))
    shutil.rmtree(d / "results" / "train" / "NutAssembly_target_visual_physics_real_only_r1_encdec_s0")
    refused = run_plan(d, smoke_data)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "abababab/cdcdcdcd" in refused.stderr and "--allow-new-data" in refused.stderr
    assert (d / "runs" / "logs" / log.name).read_text() == before  # nothing ran

    # killed in the middle (once the second run has started training), then run again
    b = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "study.py", "plans/smoke.toml", "--runs-dir", str(b / "runs"),
                          "--results", str(b / "results"), "--data-root", smoke_data], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    second = b / "runs" / "train" / "NutAssembly_target_visual_physics_cfg_adda_r0.3_encdec_s0" / "metrics.jsonl"
    t0 = time.time()
    while not second.exists() and p.poll() is None and time.time() - t0 < 600:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (b / "results" / "train" / "NutAssembly_target_visual_physics_real_only_r1_encdec_s0").exists()
    r = run_plan(b, smoke_data)
    assert r.returncode == 0, r.stderr[-2000:]
    assert outputs(b / "results") == ref

    c = run_plan(tmp_path / "c", smoke_data, "--launcher", "submitit-local")
    assert c.returncode == 0, c.stderr[-2000:]
    assert outputs(tmp_path / "c" / "results") == ref


def test_slurm_launcher_submits_one_job_per_run_after_the_runs_it_needs(tmp_path, monkeypatch):
    """The SLURM branch has never run on a cluster (README); what it would submit is tested with
    submitit's executor replaced: one job per run with the SLURM settings given, and a run that
    needs another (pretrain_ft: its sim_only) submitted with an afterok dependency on that job."""
    made, submitted = [], []

    class Job:
        def __init__(self, i):
            self.job_id = str(1000 + i)

    class Executor:
        def __init__(self, folder, cluster):
            made.append((folder, cluster))
            self.params = {}

        def update_parameters(self, **kw):
            self.params.update(kw)

        def submit(self, fn, run, *args):
            submitted.append((run.name, dict(self.params), args))
            return Job(len(submitted))

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    runs = study.load_plan(os.path.join(ROOT, "plans", "smoke_study.toml"))
    a = argparse.Namespace(launcher="slurm", runs_dir=str(tmp_path / "runs"), results=str(tmp_path / "results"),
                           data_root="data", slurm_minutes=240, slurm_cpus=8, slurm_partition="gpu", slurm_gpus=1,
                           jobs=2)
    study.launch_submitit(runs, a)
    assert made == [(os.path.join(str(tmp_path / "runs"), "submitit"), "slurm")]
    assert sorted(n for n, _, _ in submitted) == sorted(r.name for r in runs)
    ids = {n: str(1001 + i) for i, (n, _, _) in enumerate(submitted)}
    for name, params, args in submitted:
        assert (params["timeout_min"], params["cpus_per_task"], params["slurm_partition"], params["gpus_per_node"]) \
            == (240, 8, "gpu", 1)
        assert args[-2:] == (8, 8)  # threads and rollout workers: the job's CPUs
        dep = params["slurm_additional_parameters"].get("dependency", "")
        if "pretrain_ft" in name:
            sim = next(n for n in ids if "sim_only" in n)
            assert dep == f"afterok:{ids[sim]}"
        else:
            assert dep == ""
