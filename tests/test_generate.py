"""01_generate_data.py: MimicGen pieces, file layout, workers, resume, import, verify, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import cli
import common
import train_config
from conftest import ROOT, load_stage, run_stage
from experts import rotvec, rotvec_to_mat
from tasks import OSC_POS_SCALE, OSC_ROT_SCALE, TASK_CLASSES, eef_pose

GEN = "01_generate_data.py"
TASK = "NutAssembly"


@pytest.fixture(scope="module")
def gen():
    return load_stage(GEN)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three expert seed demos and three MimicGen demos made from them (one worker)."""
    d = tmp_path_factory.mktemp("gen")
    seed, mg = str(d / "seed.hdf5"), str(d / "mimicgen.hdf5")
    r = run_stage(GEN, "--mode", "expert", "--task", TASK, "--num-demos", "3", "--out", seed)
    assert r.returncode == 0, r.stderr
    r = run_stage(GEN, "--mode", "generate", "--task", TASK, "--num-demos", "3", "--seed-data", seed, "--out", mg)
    assert r.returncode == 0, r.stderr
    return {"dir": d, "seed": seed, "mimicgen": mg}


def _arrays(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


# --- MimicGen pieces ---------------------------------------------------------------------------
def test_interpolation_ends_on_target_and_respects_speed(gen):
    T0, T1 = np.eye(4), np.eye(4)
    T1[:3, 3] = [0.1, -0.05, 0.02]
    T1[:3, :3] = rotvec_to_mat([0, 0, 1.2])
    poses = gen.interpolate_poses(T0, T1, speed=0.02)
    assert np.allclose(poses[-1], T1)
    steps = [np.linalg.norm(b[:3, 3] - a[:3, 3]) for a, b in zip([T0] + poses[:-1], poses)]
    turns = [np.linalg.norm(rotvec(b[:3, :3] @ a[:3, :3].T)) for a, b in zip([T0] + poses[:-1], poses)]
    assert max(steps) <= 0.02 + 1e-9 and max(turns) <= 0.1 + 1e-9
    assert len(gen.interpolate_poses(T0, T0, speed=0.02)) == 5  # MimicGen's minimum bridge


def test_subtask_ends_follow_signals(gen, files):
    src = gen.SeedDemos(files["seed"], TASK)
    d = src.demos[0]
    grasp = d["signals"]["grasp"]
    assert d["ends"][0] == int(np.argmax(grasp)) + 1 and d["ends"][-1] == len(grasp)
    assert src.distance(0, {fr: T[0] for fr, T in d["frames"].items()}) == 0.0
    assert src.distance(1, {fr: T[0] for fr, T in d["frames"].items()}) > 0.0


def test_seed_targets_reproduce_the_recorded_actions(gen, files):
    """The stored target poses, turned back into OSC actions from the recorded eef poses, give the
    recorded (clipped) actions: the retargeting starts from what the controller was told."""
    src = gen.SeedDemos(files["seed"], TASK)
    with h5py.File(files["seed"], "r") as f:
        g = f["data/demo_1"]
        obs = {k: g["obs"][k][()] for k in ("robot0_eef_pos", "robot0_eef_quat")}
        acts = np.clip(g["actions"][()], -1, 1)
    for t in (0, 50, 120):
        E = eef_pose({k: v[t] for k, v in obs.items()})
        T = src.demos[1]["targets"][t]
        assert np.allclose((T[:3, 3] - E[:3, 3]) / OSC_POS_SCALE, acts[t, :3], atol=1e-9)
        assert np.allclose(rotvec(T[:3, :3] @ E[:3, :3].T) / OSC_ROT_SCALE, acts[t, 3:6], atol=1e-6)


# --- the written files ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["seed", "mimicgen"])
def test_robomimic_layout(files, which):
    with h5py.File(files[which], "r") as f:
        data = f["data"]
        names = sorted(data, key=lambda n: int(n.split("_")[1]))
        assert names == ["demo_0", "demo_1", "demo_2"]
        assert data.attrs["total"] == sum(data[n].attrs["num_samples"] for n in names)
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "NutAssemblySquare" and env_args["type"] == 1
        assert data.attrs["task"] == TASK and data.attrs["domain"] == "source"
        assert json.loads(data.attrs["domain_params"])["name"] == "source"
        made_by = json.loads(data.attrs["machine"])  # the CPU, and the SIMD settings it ran under
        assert made_by["simd"] is not None and made_by["arch"]
        if made_by["arch"] == "x86_64":  # re-executed with numpy's and OpenBLAS's portable kernels
            assert made_by["env"] == cli.PORTABLE_SIMD
        for n in names:
            g = data[n]
            T = g.attrs["num_samples"]
            assert g["actions"].shape == (T, 7) and g["joint_actions"].shape == (T, 8)
            assert g["states"].shape[0] == T and g["rewards"].shape == (T,) and g["dones"].shape == (T,)
            assert g["dones"][-1] == 1 and g["dones"][:-1].sum() == 0 and g["rewards"][-1] == 1
            assert g["obs/robot0_joint_pos"].shape == (T, 7) and g["obs/nut_pos"].shape == (T, 3)
            assert set(g["subtask_signals"]) == {s for s, _ in TASK_CLASSES[TASK].subtasks}
            assert g.attrs["success"]
            # joint action t = the joint positions reached after step t = those of state t+1
            # (flattened MuJoCo state: time, qpos with the arm's 7 joints first, qvel)
            assert np.allclose(g["joint_actions"][:-1, :7], g["states"][1:, 1:8])
        train = [x.decode() for x in f["mask/train"][()]]
        valid = [x.decode() for x in f["mask/valid"][()]]
        assert sorted(train + valid) == sorted(names) and not set(train) & set(valid)


def test_mimicgen_records_provenance_and_rate(files):
    with h5py.File(files["mimicgen"], "r") as f:
        data = f["data"]
        assert data.attrs["source"] == "mimicgen"
        assert 3 <= data.attrs["num_attempts"] and data.attrs["success_rate"] == 3 / data.attrs["num_attempts"]
        for n in data:
            g = data[n]
            assert len(g.attrs["src_demo"]) == 2 and all(0 <= d < 3 for d in g.attrs["src_demo"])
            assert g.attrs["src_segment"].shape == (2, 2)
            assert g.attrs["seed"] >= 200_000   # generation seeds: disjoint from seed demos and eval
        # new scenes: the nut starts somewhere no seed demo started
    with h5py.File(files["seed"], "r") as s, h5py.File(files["mimicgen"], "r") as m:
        p0 = {tuple(np.round(s[f"data/demo_{i}/obs/nut_pos"][0], 6)) for i in range(3)}
        assert not p0 & {tuple(np.round(m[f"data/demo_{i}/obs/nut_pos"][0], 6)) for i in range(3)}


def test_per_subtask_random_selection(files):
    out = str(files["dir"] / "per_subtask.hdf5")
    r = run_stage(GEN, "--mode", "generate", "--task", TASK, "--num-demos", "2", "--seed-data", files["seed"],
                  "--per-subtask", "--selection", "random", "--first-seed", "300000", "--out", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        for n in f["data"]:
            seg = f[f"data/{n}"].attrs["src_segment"]
            assert len(f[f"data/{n}"].attrs["src_demo"]) == 2 and (seg[:, 1] > seg[:, 0]).all()


def test_robomimic_sequence_dataset_reads_our_file(files):
    ObsUtils = pytest.importorskip("robomimic.utils.obs_utils")
    from robomimic.utils.dataset import SequenceDataset  # noqa: PLC0415 (optional: installed without its dependencies (requirements-nodeps.txt))
    keys = ("robot0_joint_pos", "robot0_gripper_qpos", "nut_pos")
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": list(keys)}})
    ds = SequenceDataset(hdf5_path=files["mimicgen"], obs_keys=keys, dataset_keys=("actions", "joint_actions"),
                         frame_stack=1, seq_length=16, load_next_obs=False, hdf5_cache_mode="low_dim",
                         hdf5_use_swmr=False)
    with h5py.File(files["mimicgen"], "r") as f:
        assert len(ds) == f["data"].attrs["total"]
        first = f["data/demo_0/joint_actions"][:16]
    x = ds[0]
    assert x["obs"]["robot0_joint_pos"].shape == (16, 7) and x["joint_actions"].shape == (16, 8)
    assert np.allclose(x["joint_actions"], first)


def test_verify_replays_joint_actions(files):
    r = run_stage(GEN, "--verify", files["seed"])
    assert r.returncode == 0, r.stderr
    assert "3/3 demos succeed" in r.stdout


# --- workers, resume -------------------------------------------------------------------------------
def test_two_workers_write_the_same_file(files):
    out = str(files["dir"] / "w2.hdf5")
    r = run_stage(GEN, "--mode", "generate", "--task", TASK, "--num-demos", "3", "--seed-data", files["seed"],
                  "--out", out, "--workers", "2")
    assert r.returncode == 0, r.stderr
    a, b = _arrays(files["mimicgen"]), _arrays(out)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_after_kill_equals_uninterrupted_run(files):
    out = str(files["dir"] / "killed.hdf5")
    cmd = [sys.executable, GEN, "--mode", "expert", "--task", TASK, "--num-demos", "3", "--out", out]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out + ".parts"
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.isdir(parts) and any(f.endswith(".h5") for f in os.listdir(parts))):
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not os.path.exists(out)                     # the final file only appears when complete
    done = [f for f in os.listdir(parts) if f.endswith(".h5")]
    assert 1 <= len(done) < 3
    for f in done:                                     # every part on disk is a valid HDF5 file
        with h5py.File(os.path.join(parts, f), "r") as h:
            assert "success" in h.attrs
    r = run_stage(*cmd[1:])
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout and not os.path.exists(parts)
    a, b = _arrays(files["seed"]), _arrays(out)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_smoke_set_end_to_end_and_rerun_keeps_it(tmp_path):
    r = run_stage(GEN, "--profile", "smoke", "--root", str(tmp_path))
    assert r.returncode == 0, r.stderr
    want = ["source/seed_2.hdf5", "source/mimicgen_2.hdf5", "target_visual/demos_1.hdf5",
            "target_physics/demos_1.hdf5", "target_visual_physics/demos_1.hdf5"]
    for w in want:
        with h5py.File(tmp_path / TASK / w, "r") as f:
            assert f["data"].attrs["domain"] == w.split("/")[0]
    # 02_train.py's smoke profile reads this set by the same names (one profile, one set of names)
    smoke = train_config.PROFILES["smoke"]
    assert f"source/{smoke['source_name']}.hdf5" in want
    assert f"target_visual_physics/{smoke['target_name']}.hdf5" in want
    r = run_stage(GEN, "--profile", "smoke", "--root", str(tmp_path))
    assert r.returncode == 0 and r.stdout.count("exists, kept") == len(want)
    r = run_stage(GEN, "--report", str(tmp_path))
    assert r.returncode == 0 and r.stdout.count("\n| NutAssembly/") == len(want)
    # image copies of the training files (not the seeds), one camera at 32 px, under their own suffix
    r = run_stage(GEN, "--profile", "smoke", "--root", str(tmp_path), "--set-image-tasks", TASK,
                  "--cameras", "agentview", "--image-size", "32", "--image-suffix", "_img32")
    assert r.returncode == 0, r.stderr
    for w in want[1:]:
        with h5py.File(tmp_path / TASK / w.replace(".hdf5", "_img32.hdf5"), "r") as f:
            g = f["data/demo_0"]
            assert g["obs/agentview_image"].shape == (g.attrs["num_samples"], 32, 32, 3)
            assert "robot0_eye_in_hand_image" not in g["obs"]
    assert not os.path.exists(tmp_path / TASK / "source/seed_2_img32.hdf5")


def test_images_rendered_from_states(files):
    out = str(files["dir"] / "img.hdf5")
    r = run_stage(GEN, "--mode", "import", "--task", TASK, "--input", files["seed"], "--num-demos", "1",
                  "--images", "--out", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r") as f:
        g = f["data/demo_0"]
        a, b = g["obs/agentview_image"], g["obs/robot0_eye_in_hand_image"]
        assert a.dtype == np.uint8 and a.shape == (g.attrs["num_samples"], 84, 84, 3) and b.shape == a.shape
        assert not np.array_equal(a[0], b[0]) and a[0].std() > 5     # two cameras, real pictures
        assert json.loads(f["data"].attrs["env_args"])["env_kwargs"]["camera_names"] == \
            ["agentview", "robot0_eye_in_hand"]
        assert common.camera_framing(out) == "wide"
    # the workspace framing: recorded (02_train.py keeps it for 03_eval.py), another picture
    ws = str(files["dir"] / "img_ws.hdf5")
    r = run_stage(GEN, "--mode", "import", "--task", TASK, "--input", files["seed"], "--num-demos", "1",
                  "--images", "--cameras", "agentview", "--image-size", "32", "--framing", "workspace", "--out", ws)
    assert r.returncode == 0, r.stderr
    assert common.camera_framing(ws) == "workspace"
    r = run_stage(GEN, "--mode", "import", "--task", TASK, "--input", files["seed"], "--images",
                  "--framing", "closeup", "--out", str(files["dir"] / "bad.hdf5"))
    assert r.returncode == 2 and "--framing" in r.stderr and not os.path.exists(files["dir"] / "bad.hdf5")


# --- import ----------------------------------------------------------------------------------------
def test_import_recomputes_what_a_plain_robomimic_file_lacks(files):
    """A robomimic file with only the standard keys (actions, states, a few obs) is imported:
    joint actions, our observations and the subtask signals come back as the original had them."""
    plain, out = str(files["dir"] / "plain.hdf5"), str(files["dir"] / "imported.hdf5")
    with h5py.File(files["seed"], "r") as src, h5py.File(plain, "w") as f:
        f.create_group("data").attrs["env_args"] = src["data"].attrs["env_args"]
        for n in ("demo_0", "demo_1"):
            g = f.create_group(f"data/{n}")
            g.attrs["num_samples"] = src[f"data/{n}"].attrs["num_samples"]
            for k in ("actions", "states", "obs/robot0_eef_pos"):
                g.create_dataset(k, data=src[f"data/{n}/{k}"][()])
    r = run_stage(GEN, "--mode", "import", "--task", TASK, "--input", plain, "--out", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(files["seed"], "r") as a, h5py.File(out, "r") as b:
        assert b["data"].attrs["source"] == "import" and sorted(b["data"]) == ["demo_0", "demo_1"]
        for n in ("demo_0", "demo_1"):
            ga, gb = a[f"data/{n}"], b[f"data/{n}"]
            assert np.allclose(ga["joint_actions"][:-1], gb["joint_actions"][:-1])
            # live observations come from mj_step, whose body poses are computed before its last
            # integration (one 2 ms substep behind the state); imported ones from the state itself
            assert np.abs(ga["obs/nut_pos"][()] - gb["obs/nut_pos"][()]).max() < 2e-3
            for s in ga["subtask_signals"]:
                assert np.array_equal(ga[f"subtask_signals/{s}"][()], gb[f"subtask_signals/{s}"][()])
            assert gb.attrs["success"]


# --- bad input: one line, exit 2, nothing written --------------------------------------------------
def _bad(tmp_path, *args, out_name="out.hdf5"):
    out = str(tmp_path / out_name)
    r = run_stage(GEN, *args, "--out", out)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(out) and not os.path.exists(out + ".parts")
    return r.stderr


def test_bad_input_exit_2(tmp_path, files):
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    empty = str(tmp_path / "empty.hdf5")
    with h5py.File(empty, "w") as f:
        f.create_group("other")
    assert "not found" in _bad(tmp_path, "--mode", "generate", "--task", TASK, "--seed-data", "nope.hdf5")
    assert "not a readable HDF5" in _bad(tmp_path, "--mode", "generate", "--task", TASK, "--seed-data", str(junk))
    assert "no 'data' group" in _bad(tmp_path, "--mode", "import", "--task", TASK, "--input", empty)
    assert "unknown task" in _bad(tmp_path, "--mode", "expert", "--task", "Juggle")
    assert "unknown domain" in _bad(tmp_path, "--mode", "expert", "--task", TASK, "--domain", "mars")
    assert "must be positive" in _bad(tmp_path, "--mode", "expert", "--task", TASK, "--num-demos", "0")
    assert "must be positive" in _bad(tmp_path, "--mode", "expert", "--task", TASK, "--workers", "-1")
    assert "seed demos are for task" in _bad(tmp_path, "--mode", "generate", "--task", "MugHang",
                                             "--seed-data", files["seed"])
    assert "different scene" in _bad(tmp_path, "--mode", "import", "--task", "MugHang", "--input", files["seed"])
    r = run_stage(GEN, "--verify", str(junk))
    assert r.returncode == 2 and "not a readable HDF5" in r.stderr


def test_existing_output_needs_resume_or_overwrite(files):
    before = os.path.getmtime(files["seed"])
    r = run_stage(GEN, "--mode", "expert", "--task", TASK, "--num-demos", "3", "--out", files["seed"])
    assert r.returncode == 2 and "exists" in r.stderr and r.stderr.count("\n") == 1
    r = run_stage(GEN, "--mode", "expert", "--task", TASK, "--num-demos", "3", "--out", files["seed"], "--resume")
    assert r.returncode == 0 and os.path.getmtime(files["seed"]) == before
