"""03_eval.py: smoke evaluation, determinism across workers, resume, video, guidance, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import diffusion_policy
import methods
import records
import tasks
from conftest import ROOT, load_stage, make_fake_dataset, run_stage
from diffusion_policy import load_policy


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_ckpts")
    tgt = make_fake_dataset(d / "t.hdf5", 3, 20, seed=0)
    src = make_fake_dataset(d / "s.hdf5", 4, 20, seed=1, domain="source")
    out = {}
    for method in ("cotrain", "cfg"):
        r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                      "--method", method, "--ratio", "0.5", "--out", str(d / method))
        assert r.returncode == 0, r.stderr
        out[method] = str(d / method / "ckpt.pt")
    return out


def evaluate(ckpt, out, *extra):
    return run_stage("03_eval.py", "--profile", "smoke", "--ckpt", ckpt, "--out", str(out), *extra)


def results(out):
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)["evaluations"]


def episodes(out):
    with open(os.path.join(out, "episodes.jsonl")) as f:
        return [json.loads(r) for r in f]


def test_wilson_interval_known_values():
    ev = load_stage("03_eval.py")
    assert ev.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert ev.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert ev.wilson_interval(50, 50) == pytest.approx((0.9287, 1.0), abs=1e-4)


def test_smoke_evaluation_and_same_seeds_same_results(ckpts, tmp_path):
    r1 = evaluate(ckpts["cotrain"], tmp_path / "w1", "--trials", "3")
    assert r1.returncode == 0, r1.stderr
    res = results(tmp_path / "w1")
    (key, ev), = res.items()
    assert ev["trials"] == 3 and ev["domain"] == "target_visual_physics" and ev["guidance"] is None
    assert ev["run"]["method"] == "cotrain" and ev["step"] == 20
    assert [e["seed"] for e in ev["episodes"]] == [1_000_000, 1_000_001, 1_000_002]
    lo, hi = ev["wilson95"]
    assert 0 <= lo <= ev["success_rate"] <= hi <= 1
    assert all(e["length"] <= 40 for e in ev["episodes"])
    r2 = evaluate(ckpts["cotrain"], tmp_path / "w2", "--trials", "3", "--workers", "2")
    assert r2.returncode == 0, r2.stderr
    strip = lambda eps: [(e["seed"], e["success"], e["length"], e["final_joint_pos"]) for e in eps]
    assert strip(episodes(tmp_path / "w1")) == strip(episodes(tmp_path / "w2"))
    # the policy acted: the arm is not where every episode started
    assert len({tuple(e["final_joint_pos"]) for e in episodes(tmp_path / "w1")}) == 3


def test_resume_after_kill(ckpts, tmp_path):
    out = tmp_path / "ev"
    cmd = [sys.executable, "03_eval.py", "--profile", "smoke", "--ckpt", ckpts["cotrain"], "--out",
           str(out), "--trials", "4"]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "episodes.jsonl"
    while p.poll() is None and not (path.exists() and path.read_text().count("\n") >= 1):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"
    n_before = path.read_text().count("\n")
    assert 1 <= n_before < 4
    r = evaluate(ckpts["cotrain"], out, "--trials", "4")
    assert r.returncode == 0, r.stderr
    assert f"{n_before} done before" in r.stdout
    eps = episodes(out)
    assert sorted(e["seed"] for e in eps) == list(range(1_000_000, 1_000_004))  # no duplicates
    ref = tmp_path / "ref"
    assert evaluate(ckpts["cotrain"], ref, "--trials", "4").returncode == 0
    key = lambda e: (e["seed"], e["success"], e["length"], e["final_joint_pos"])
    assert sorted(map(key, eps)) == sorted(map(key, episodes(ref)))


def children(pid: int) -> list:
    """Processes whose parent is pid (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        try:
            if d.isdigit() and int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_sigterm_ends_the_rollout_workers_and_keeps_the_episodes(ckpts, tmp_path):
    """study.py --minutes stops an evaluation with SIGTERM: it exits (143), its rollout workers with it,
    and the episodes it finished stay for the resume."""
    out = tmp_path / "ev"
    p = subprocess.Popen([sys.executable, "03_eval.py", "--profile", "smoke", "--ckpt", ckpts["cotrain"], "--out",
                          str(out), "--trials", "12", "--workers", "2"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "episodes.jsonl"
    while p.poll() is None and not (path.exists() and path.read_text().count("\n") >= 1):
        time.sleep(0.02)
    workers = children(p.pid)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, "the evaluation finished before it could be stopped"
    assert workers  # the pool was running
    time.sleep(0.5)
    assert not [w for w in workers if os.path.exists(f"/proc/{w}") and "zombie" not in open(f"/proc/{w}/status").read()]
    assert 1 <= path.read_text().count("\n") < 12 and not (out / "results.json").exists()


def test_moved_checkpoint_keeps_its_episodes(ckpts, tmp_path):
    """The same weights at another path (a checkpoint copied under results/) resume the evaluation
    instead of running every episode again."""
    out = tmp_path / "ev"
    assert evaluate(ckpts["cotrain"], out, "--trials", "2").returncode == 0
    moved = tmp_path / "moved" / "ckpt.pt"
    moved.parent.mkdir()
    shutil.copy(ckpts["cotrain"], moved)
    r = evaluate(str(moved), out, "--trials", "3")
    assert r.returncode == 0, r.stderr
    assert "1 to run, 2 done before" in r.stdout
    (ev,) = results(out).values()
    assert ev["ckpt"] == records.portable(str(moved)) == "moved/ckpt.pt"
    assert [e["seed"] for e in ev["episodes"]] == [1_000_000, 1_000_001, 1_000_002]


def test_guidance_sweep_and_video(ckpts, tmp_path):
    r = evaluate(ckpts["cfg"], tmp_path / "g", "--guidance", "-1,0.5", "--trials", "1", "--video", "1")
    assert r.returncode == 0, r.stderr
    res = results(tmp_path / "g")
    assert sorted(ev["guidance"] for ev in res.values()) == [-1.0, 0.5]
    vids = sorted(os.listdir(tmp_path / "g" / "videos"))
    assert len(vids) == 2 and all(v.endswith(".mp4") for v in vids)
    frames = iio.imread(tmp_path / "g" / "videos" / vids[0])
    assert frames.shape[0] == 41 and frames.shape[1:] == (64, 64, 3)  # 40 steps + the last state
    # default guidance of a CFG checkpoint is the one stored in it (CFG: 0)
    r = evaluate(ckpts["cfg"], tmp_path / "d", "--trials", "1")
    assert [ev["guidance"] for ev in results(tmp_path / "d").values()] == [0.0]


def test_retrained_checkpoint_does_not_inherit_old_episodes(tmp_path):
    """Episodes carry a digest of the weights: after a run is trained again at the same path, a
    rerun into the same folder is refused (exit 2, nothing written) instead of counting the old
    checkpoint's episodes as done; --overwrite starts over."""
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 3, 20, seed=0)
    src = make_fake_dataset(tmp_path / "s.hdf5", 4, 20, seed=1, domain="source")

    def train(seed):
        r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                      "--method", "real_only", "--seed", str(seed), "--out", str(tmp_path / "run"),
                      "--overwrite")
        assert r.returncode == 0, r.stderr

    train(0)
    ckpt, out = str(tmp_path / "run" / "ckpt.pt"), tmp_path / "ev"
    assert evaluate(ckpt, out, "--trials", "1").returncode == 0
    before = episodes(out)
    train(1)
    r = evaluate(ckpt, out, "--trials", "2")
    assert r.returncode == 2 and "other weights" in r.stderr, r.stderr
    assert episodes(out) == before  # nothing written
    r = evaluate(ckpt, out, "--trials", "1", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert [e["digest"] for e in episodes(out)] != [e["digest"] for e in before]


@pytest.mark.parametrize("case", ["missing", "domain", "guidance", "trials", "not_ckpt"])
def test_bad_input_exits_2_and_writes_nothing(ckpts, tmp_path, case):
    ckpt, extra = ckpts["cotrain"], []
    if case == "missing":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "domain":
        extra = ["--domain", "target_moon"]
    elif case == "guidance":
        extra = ["--guidance", "-0.5"]
    elif case == "trials":
        extra = ["--trials", "0"]
    elif case == "not_ckpt":
        (tmp_path / "x.pt").write_text("not a checkpoint")
        ckpt = str(tmp_path / "x.pt")
    r = evaluate(ckpt, tmp_path / "out", *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert {"missing": "not found", "domain": "target_moon", "guidance": "domain label",
            "trials": "--trials", "not_ckpt": "checkpoint"}[case] in lines[0]
    assert not os.path.exists(tmp_path / "out")


def test_label_reaches_the_policy(ckpts, monkeypatch):
    """--label picks the domain label a CFG policy is conditioned on; by default it is the
    evaluated domain's (source in the source domain), where the agent used to pass target always."""
    ev = load_stage("03_eval.py")
    seen = []
    orig = diffusion_policy.DiffusionPolicy.predict_action

    def spy(self, obs, label=methods.TARGET, *args, **kw):
        seen.append(int(label))
        return orig(self, obs, label, *args, **kw)

    monkeypatch.setattr(diffusion_policy.DiffusionPolicy, "predict_action", spy)
    worker = ev.Worker()
    for domain, label, want in [("source", "", methods.SOURCE), ("source", "target", methods.TARGET),
                                ("target_visual", "", methods.TARGET), ("target_visual", "source", methods.SOURCE)]:
        (e,) = ev.plan(ev.Args(ckpt=[ckpts["cfg"]], domain=domain, label=label))
        assert e.label == {methods.SOURCE: "source", methods.TARGET: "target"}[want]
        seen.clear()
        worker.episode(ev.make_job(e, 5, max_steps=9))
        assert seen and set(seen) == {want}
    # on the command line: both labels in one folder, their episodes kept apart
    tmp = os.path.join(os.path.dirname(ckpts["cfg"]), "lab")
    for label in ("source", "target"):
        r = evaluate(ckpts["cfg"], tmp, "--domain", "source", "--label", label, "--trials", "1")
        assert r.returncode == 0, r.stderr
        assert [ev["label"] for ev in results(tmp).values()] == [label]
    assert len({e["key"] for e in episodes(tmp)}) == 2
    r = evaluate(ckpts["cfg"], os.path.join(tmp, "x"), "--label", "moon")
    assert r.returncode == 2 and "--label" in r.stderr


def test_n_action_sets_how_often_the_policy_replans(ckpts, monkeypatch, tmp_path):
    """--n-action executes fewer (or more) actions of each chunk than training's n_action: over the
    same 9 steps the policy predicts ceil(9 / n_action) chunks. Episodes record the subtasks they
    reached (tasks.py's signals), and results.json their rates."""
    ev = load_stage("03_eval.py")
    calls = []
    orig = diffusion_policy.DiffusionPolicy.predict_action

    def spy(self, *args, **kw):
        calls.append(1)
        return orig(self, *args, **kw)

    monkeypatch.setattr(diffusion_policy.DiffusionPolicy, "predict_action", spy)
    worker = ev.Worker()
    trained = None
    for n_action, want in [(0, 3), (2, 5), (1, 9)]:  # smoke profile: horizon 8, n_action 4
        (e,) = ev.plan(ev.Args(ckpt=[ckpts["cotrain"]], n_action=n_action))
        trained = trained or e.n_action
        assert e.n_action == (n_action or trained) and ("n_action=" in e.key) == (n_action > 0)
        calls.clear()
        r = worker.episode(ev.make_job(e, 5, max_steps=9))
        assert len(calls) == want, (n_action, len(calls))
        assert set(r["reached"]) == {"grasp", "insert"}  # NutAssembly's subtasks, each a step or None
    r = evaluate(ckpts["cotrain"], tmp_path / "n", "--trials", "1", "--n-action", "2")
    assert r.returncode == 0, r.stderr
    (res,) = results(tmp_path / "n").values()
    assert res["n_action"] == 2 and not res["as_trained"] and set(res["reached"]) == {"grasp", "insert"}
    r = evaluate(ckpts["cotrain"], tmp_path / "m", "--n-action", "99")
    assert r.returncode == 2 and "--n-action" in r.stderr and not os.path.exists(tmp_path / "m")


def test_osc_action_space_trains_on_the_osc_commands_and_runs_with_the_osc_controller(tmp_path):
    """--action-space osc: the policy learns the stored OSC_POSE commands (`actions`, 7-D), not the
    joint targets, and 03_eval.py executes its chunks with robosuite's OSC controller (a joint
    controller would refuse 7-D actions); 05_real_deploy.py refuses it (its robots take joints)."""
    paths = []
    for name, seed, domain in (("t", 0, "target"), ("s", 1, "source")):
        p = make_fake_dataset(tmp_path / f"{name}.hdf5", 2, 16, seed=seed, home=True, domain=domain,
                              lowdim={"robot0_joint_pos": 7, "robot0_gripper_qpos": 2, "robot0_eef_pos": 3,
                                      "robot0_eef_quat": 4, "nut_pos": 3, "nut_quat": 4, "peg_pos": 3})
        with h5py.File(p, "r+") as f:  # small OSC commands: +-0.2 of the 5 cm / 0.5 rad range
            for d in f["data"].values():
                d["actions"][...] = np.random.default_rng(seed).uniform(-0.2, 0.2, d["actions"].shape)
        paths.append(p)
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", paths[0], "--source-data", paths[1],
                  "--method", "real_only", "--obs-set", "rel", "--action-space", "osc", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    policy = load_policy(ckpt)[0]
    assert policy.cfg["action_dim"] == 7 and policy.cfg["action_space"] == "osc"
    span = policy.normalizer.inverse("actions", torch.tensor([[-1.0] * 7, [1.0] * 7]))  # fitted on `actions`
    assert span.abs().max() <= 0.2 + 1e-5 and (span[1] - span[0]).min() > 0.3
    ev = evaluate(ckpt, tmp_path / "eval", "--trials", "1", "--max-steps", "12")
    assert ev.returncode == 0, ev.stderr
    (res,) = results(tmp_path / "eval").values()
    assert res["control"] == "osc" and res["trials"] == 1
    (e,) = episodes(tmp_path / "eval")
    assert e["length"] == 12
    dep = run_stage("05_real_deploy.py", "--profile", "smoke", "--ckpt", ckpt, "--robot", "sim",
                    "--episodes", "1", "--max-steps", "12", "--out", str(tmp_path / "dep"))
    assert dep.returncode == 2 and "--action-space osc" in dep.stderr and not os.path.exists(tmp_path / "dep")


def test_derived_observations_and_relative_actions_run_closed_loop(tmp_path):
    """A policy on the cpu profile's observation and action spaces (--obs-set rel: gripper-relative
    positions and 6-D rotations derived from the stored keys; --action-space rel) runs in the
    simulator through 03_eval.py and 05_real_deploy.py's sim robot, the same episodes both ways."""
    lowdim = {"robot0_joint_pos": 7, "robot0_gripper_qpos": 2, "robot0_eef_pos": 3,
              "robot0_eef_quat": 4, "nut_pos": 3, "nut_quat": 4, "peg_pos": 3}
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 2, 16, seed=0, lowdim=lowdim, home=True)
    src = make_fake_dataset(tmp_path / "s.hdf5", 2, 16, seed=1, lowdim=lowdim, home=True, domain="source")
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                  "--method", "cotrain", "--ratio", "0.5", "--obs-set", "rel", "--action-space", "rel",
                  "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    ev = run_stage("03_eval.py", "--profile", "smoke", "--ckpt", ckpt, "--trials", "1", "--max-steps", "12",
                   "--split", "demo", "--out", str(tmp_path / "eval"))  # 05's sim robot: the demo seeds
    assert ev.returncode == 0, ev.stderr
    dep = run_stage("05_real_deploy.py", "--profile", "smoke", "--ckpt", ckpt, "--robot", "sim",
                    "--episodes", "1", "--max-steps", "12", "--out", str(tmp_path / "dep"))
    assert dep.returncode == 0, dep.stderr
    (e,) = episodes(tmp_path / "eval")
    with h5py.File(tmp_path / "dep" / "episodes.hdf5", "r") as f:
        assert np.allclose(f["data/demo_0"].attrs["final_joint_pos"], e["final_joint_pos"], atol=1e-5)


def test_image_policy_rendered_at_its_training_size(tmp_path):
    """A policy trained on 32x32 frames is evaluated on 32x32 renders (the checkpoint's
    image_size, not the envs' default 84), and PolicyAgent refuses frames of another size."""
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 2, 12, seed=0, images=32)
    src = make_fake_dataset(tmp_path / "s.hdf5", 2, 12, seed=1, images=32, domain="source")
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src, "--images",
                  "--crop", "28", "--method", "cotrain", "--ratio", "0.5", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    policy, cfg, _ = diffusion_policy.load_policy(ckpt)
    assert cfg["model"]["image_size"] == 32
    r = evaluate(ckpt, tmp_path / "ev", "--trials", "1", "--max-steps", "10")
    assert r.returncode == 0, r.stderr
    (ev,) = results(tmp_path / "ev").values()
    assert ev["trials"] == 1 and ev["episodes"][0]["length"] == 10
    agent = diffusion_policy.PolicyAgent(policy, 0, None, 2)
    obs = {"robot0_joint_pos": np.zeros(7), "robot0_gripper_qpos": np.zeros(2),
           "agentview_image": np.zeros((84, 84, 3), np.uint8),
           "robot0_eye_in_hand_image": np.zeros((84, 84, 3), np.uint8)}
    with pytest.raises(ValueError, match="32x32"):
        agent.act(obs)


def test_image_policy_rendered_with_its_training_framing(tmp_path, monkeypatch):
    """Frames rendered with the "workspace" framing train a policy that records it, and 03_eval.py
    renders that policy's episodes with it; a target and a source file of different framings
    are refused (one line, exit 2, no run folder)."""
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 2, 12, seed=0, images=32, framing="workspace")
    src = make_fake_dataset(tmp_path / "s.hdf5", 2, 12, seed=1, images=32, domain="source", framing="workspace")
    wide = make_fake_dataset(tmp_path / "w.hdf5", 2, 12, seed=1, images=32, domain="source")
    train = ("02_train.py", "--profile", "smoke", "--target-data", tgt, "--images", "--crop", "28", "--steps", "5")
    r = run_stage(*train, "--source-data", wide, "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "different camera framings: workspace" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()
    r = run_stage(*train, "--source-data", src, "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "run" / "ckpt.pt")
    assert diffusion_policy.load_policy(ckpt)[1]["model"]["framing"] == "workspace"
    made, make_env = [], tasks.make_env
    monkeypatch.setattr(tasks, "make_env", lambda *a, **k: made.append(k.get("framing")) or make_env(*a, **k))
    ev = load_stage("03_eval.py")
    (e,) = ev.plan(ev.Args(ckpt=[ckpt], domain="target_visual"))
    ev.Worker().episode(ev.make_job(e, 5, max_steps=4))
    assert made == ["workspace"]


def test_rendering_on_demand_gives_the_same_episodes_and_frames(tmp_path, monkeypatch):
    """Issue 43: an image policy reads 2 frames of every 8 steps (n_obs 2, n_action 8 at the cpu
    profile; 2 of 4 here), so cameras render only at those steps (--render demand). Rendering
    does not touch the physics: the same seeds give the same outcomes, lengths, final joints, and
    every frame the policy received is the frame rendering every step gives; fewer frames rendered."""
    ev = load_stage("03_eval.py")
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 2, 12, seed=2, images=32)
    src = make_fake_dataset(tmp_path / "s.hdf5", 2, 12, seed=3, images=32, domain="source")
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src, "--images",
                  "--crop", "28", "--steps", "5", "--out", str(tmp_path / "img"))
    assert r.returncode == 0, r.stderr
    received, rendered = [], []
    predict, observe = diffusion_policy.PolicyAgent.predict, tasks.TaskEnv.observe

    def spy_predict(self, history):
        received.append([np.array(o[k]) for o in history for k in self.cfg["image_keys"]])
        return predict(self, history)

    def spy_observe(self, obs=None):
        out = observe(self, obs)
        rendered.append(sum(k.endswith("_image") for k in out))
        return out
    monkeypatch.setattr(diffusion_policy.PolicyAgent, "predict", spy_predict)
    monkeypatch.setattr(tasks.TaskEnv, "observe", spy_observe)
    (e,) = ev.plan(ev.Args(ckpt=[str(tmp_path / "img" / "ckpt.pt")], domain="target_visual"))
    worker, runs = ev.Worker(), {}
    for mode in ("every", "demand"):
        received.clear()
        rendered.clear()
        eps = [worker.episode(ev.make_job(e, s, max_steps=30, render=mode)) for s in (5, 6)]
        runs[mode] = ([(x["success"], x["length"], x["final_joint_pos"]) for x in eps], list(received), sum(rendered))
    assert runs["every"][0] == runs["demand"][0]
    assert len(runs["every"][1]) == len(runs["demand"][1]) > 2
    for a, b in zip(runs["every"][1], runs["demand"][1]):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert runs["demand"][2] < 0.7 * runs["every"][2]  # 2 cameras x (2 of 4 steps + resets) vs every step
    r = evaluate(str(tmp_path / "img" / "ckpt.pt"), tmp_path / "bad", "--render", "sometimes")
    assert r.returncode == 2 and "--render" in r.stderr and not os.path.exists(tmp_path / "bad")


def test_every_stage_refuses_an_unwritable_out_before_any_work(ckpts, tmp_path):
    """An --out under a regular file (or in a read-only place) is one line and exit 2, checked
    before any work (04_analyze.py computed for minutes first, then failed with a traceback)."""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    bad = str(blocker / "out")
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 2, 12, seed=0)
    src = make_fake_dataset(tmp_path / "s.hdf5", 2, 12, seed=1, domain="source")
    cases = {"00_toy.py": ["--profile", "smoke", "--out", bad],
             "01_generate_data.py": ["--mode", "expert", "--task", "NutAssembly", "--num-demos", "1",
                                     "--out", os.path.join(bad, "d.hdf5")],
             "02_train.py": ["--profile", "smoke", "--target-data", tgt, "--source-data", src, "--out", bad],
             "03_eval.py": ["--profile", "smoke", "--ckpt", ckpts["cotrain"], "--out", bad],
             "04_analyze.py": ["--profile", "smoke", "--runs", "tests/fixtures/results_smoke", "--out", bad],
             "05_real_deploy.py": ["--profile", "smoke", "--ckpt", ckpts["cotrain"], "--robot", "sim",
                                   "--episodes", "1", "--out", bad]}
    for stage, args in cases.items():
        r = run_stage(stage, *args)
        assert r.returncode == 2, (stage, r.stderr[-500:])
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "is a file, not a folder" in lines[0], (stage, r.stderr[-500:])
    r = evaluate(str(tmp_path), tmp_path / "ev")  # a folder given as --ckpt
    assert r.returncode == 2 and "is a folder" in r.stderr and not os.path.exists(tmp_path / "ev")
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                  "--task", "Nonsense", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--task" in r.stderr and not os.path.exists(tmp_path / "run")
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                  "--target-domain", "nonsense", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "--target-domain" in r.stderr and not os.path.exists(tmp_path / "run")
