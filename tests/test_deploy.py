"""05_real_deploy.py: kinematics and safety checks, a misbehaving fake robot and policy, the sim
backend against 03_eval.py, recording, resume, dry run, bad input."""
import json
import time

import h5py
import numpy as np
import pytest

import common
import tasks
from conftest import PANDA_HOME, load_stage, make_fake_dataset, run_stage


@pytest.fixture(scope="module")
def dep():
    return load_stage("05_real_deploy.py")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A smoke policy trained on data that stays near the Panda's initial pose."""
    tmp = tmp_path_factory.mktemp("deploy")
    tgt = make_fake_dataset(tmp / "t.hdf5", 3, 20, seed=0, home=True)
    src = make_fake_dataset(tmp / "s.hdf5", 3, 20, seed=1, domain="source", home=True)
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src,
                  "--method", "cotrain", "--ratio", "0.5", "--out", str(tmp / "run"))
    assert r.returncode == 0, r.stderr
    return str(tmp / "run" / "ckpt.pt")


def test_forward_kinematics_matches_the_simulated_panda(dep):
    env = tasks.make_env("NutAssembly", "source", control="joint")
    obs = env.reset(0)
    sim, robot = env.sim, env.env.robots[0]
    b = sim.model.body_name2id("robot0_base")
    base_pos, base_rot = sim.data.body_xpos[b].copy(), sim.data.body_xmat[b].reshape(3, 3).copy()
    rng = np.random.default_rng(0)
    for i in range(4):
        q = obs["robot0_joint_pos"] + rng.normal(0, 0.3, 7) * (i > 0)
        sim.data.qpos[robot._ref_joint_pos_indexes] = q
        sim.forward()
        eef = base_rot.T @ (env.observe()["robot0_eef_pos"] - base_pos)
        assert np.allclose(dep.panda_fk(q)[:3, 3], eef, atol=1e-4)


def test_safety_filter(dep):
    s = dep.Safety(period=0.05)
    home = np.array(PANDA_HOME)
    ok = s.filter_action(np.r_[home + 0.01, 0.5], home)
    assert np.allclose(ok[:7], home + 0.01) and s.clamped == 0 and s.clipped == 0
    for bad in (np.r_[home, np.nan], np.r_[home[:6], np.inf, 0.0], np.zeros(7)):
        with pytest.raises(dep.SafetyStop, match="finite"):
            s.filter_action(bad, home)
    far = home.copy()
    far[3] = 0.5  # joint 4 must stay below -0.0698
    with pytest.raises(dep.SafetyStop, match="joint 4 target"):
        s.filter_action(np.r_[far, 0.0], home)
    near = home.copy()
    near[5] = dep.Q_MAX[5] + 0.02  # within the tolerance: clipped to the limit
    near_now = home.copy()
    near_now[5] = dep.Q_MAX[5] - 0.05
    out = s.filter_action(np.r_[near, 0.0], near_now)
    assert out[5] == pytest.approx(dep.Q_MAX[5]) and s.clipped == 1
    jump = home + 1.0 * np.array([1, 0, 0, 0, 0, 0, 0])
    out = s.filter_action(np.r_[jump, 3.0], home)  # velocity clamp, gripper clipped to [-1, 1]
    assert out[0] == pytest.approx(home[0] + dep.DQ_MAX[0] * 0.05) and out[7] == 1.0 and s.clamped == 1
    tight = dep.Safety(period=0.05, workspace=[0.6, 0.9, -0.5, 0.5, -0.1, 0.6])
    with pytest.raises(dep.SafetyStop, match="workspace"):
        tight.filter_action(np.r_[home, 0.0], home)
    now = time.monotonic()
    s.check_observation({"robot0_joint_pos": home, "frame_times": {"agentview": now - 0.05}}, now)
    with pytest.raises(dep.SafetyStop, match="stale camera frame: agentview"):
        s.check_observation({"robot0_joint_pos": home, "frame_times": {"agentview": now - 0.5}}, now)
    s.check_timing(0.09)
    with pytest.raises(dep.SafetyStop, match="overrun"):
        s.check_timing(0.11)


class FakeRobot:
    """A robot that misbehaves on purpose: stale frames, a slow loop step, a lost connection."""
    name = "fake"
    error = RuntimeError  # the tests set the stage's RobotError

    def __init__(self, fault=None, at=3, horizon=12):
        self.fault, self.at, self.horizon = fault, at, horizon
        self.commands, self.held, self.t = [], False, 0

    def provides(self):
        return {"robot0_joint_pos", "robot0_gripper_qpos", "nut_pos"}

    def reset(self, seed):
        self.t, self.q = 0, np.array(PANDA_HOME)

    def observe(self):
        now = time.monotonic()
        if self.fault == "lost" and self.t >= self.at:
            raise self.error("no answer from 172.16.0.2")
        frame_age = 1.0 if self.fault == "stale" and self.t >= self.at else 0.0
        return {"robot0_joint_pos": self.q.copy(), "robot0_gripper_qpos": np.array([0.04, -0.04]),
                "nut_pos": np.zeros(3), "frame_times": {"agentview": now - frame_age}}

    def joint_pos(self):
        return self.q

    def command(self, a):
        if self.fault == "overrun" and self.t == self.at - 1:
            time.sleep(0.3)  # a slow step: the next one starts late
        self.commands.append(np.asarray(a).copy())
        self.q = np.asarray(a[:7]).copy()
        self.t += 1

    def hold(self):
        self.held = True

    def episode_over(self):
        return self.t >= self.horizon

    def success(self):
        return True

    def close(self):
        pass


class FakeAgent:
    """A policy that commands the initial pose, then misbehaves at step `at`."""

    def __init__(self, fault=None, at=3):
        self.fault, self.at, self.t = fault, at, 0
        self.keys = self.sources = ["robot0_joint_pos", "robot0_gripper_qpos", "nut_pos"]
        self.chunk_seconds = [0.001]

    def act(self, obs):
        self.t += 1
        a = np.r_[np.array(PANDA_HOME), -1.0]
        if self.t > self.at:
            if self.fault == "nan":
                a[2] = np.nan
            elif self.fault == "limit":
                a[3] = 0.5
            elif self.fault == "jump":
                a[0] += 1.0
            elif self.fault == "interrupt":
                raise KeyboardInterrupt
        return a

    def close(self):
        pass


def deploy_with(dep, ckpt, tmp_path, robot, agent_fault=None, *flags):
    a = common.parse_args(dep.Args, dep.PROFILES, ["--ckpt", ckpt, "--episodes", "2", "--out",
                                                   str(tmp_path / "dep"), *flags])
    return dep.deploy(a, robot=robot, make_agent=lambda seed: FakeAgent(agent_fault))


@pytest.mark.parametrize("robot_fault,agent_fault,flags,reason,code", [
    (None, "nan", (), "safety stop: policy action is not 8 finite numbers", 3),
    (None, "limit", (), "safety stop: joint 4 target", 3),
    (None, None, ("--workspace", "0.6,0.9,-0.5,0.5,-0.1,0.6"), "safety stop: gripper target", 3),
    ("stale", None, (), "safety stop: stale camera frame", 3),
    ("overrun", None, ("--realtime", "--hz", "20"), "safety stop: control loop overrun", 3),
    ("lost", None, (), "robot lost: no answer", 3),
    (None, "interrupt", (), "interrupted (Ctrl-C)", 130),
])
def test_each_safety_condition_holds_the_robot_and_saves_the_episode(dep, ckpt, tmp_path, robot_fault,
                                                                     agent_fault, flags, reason, code):
    robot = FakeRobot(robot_fault)
    robot.error = dep.RobotError
    assert deploy_with(dep, ckpt, tmp_path, robot, agent_fault, *flags) == code
    assert robot.held
    stopped_at = 0 if "gripper target" in reason else 3
    assert len(robot.commands) == stopped_at  # nothing was sent once the condition arose
    with h5py.File(tmp_path / "dep" / "episodes.hdf5", "r") as f:
        assert list(f["data"]) == ["demo_0"]  # the session ended with the stopped episode
        d = f["data/demo_0"]
        assert d.attrs["stop_reason"].startswith(reason) and d.attrs["success"] == 0
        assert d["actions"].shape == (stopped_at, 8) and d.attrs["num_samples"] == stopped_at
    tally = json.loads((tmp_path / "dep" / "tally.json").read_text())
    assert tally["successes"] == 0 and tally["episodes"] == 1


def test_velocity_clamp_and_dry_run(dep, ckpt, tmp_path):
    robot = FakeRobot()
    assert deploy_with(dep, ckpt, tmp_path, robot, "jump") == 0
    sent = np.array(robot.commands)
    assert len(sent) == 2 * robot.horizon and not robot.held
    for ep in (sent[:robot.horizon], sent[robot.horizon:]):  # never faster than the limit
        assert np.abs(np.diff(ep[:, 0])).max() == pytest.approx(dep.DQ_MAX[0] / 20)
    with h5py.File(tmp_path / "dep" / "episodes.hdf5", "r") as f:
        d = f["data/demo_0"]
        assert d.attrs["clamped_steps"] > 0 and d["policy_actions"][-1, 0] == pytest.approx(PANDA_HOME[0] + 1)
    dry = FakeRobot()
    assert deploy_with(dep, ckpt, tmp_path / "dry", dry, None, "--dry-run") == 0
    assert dry.commands == []  # everything ran, nothing was sent
    with h5py.File(tmp_path / "dry" / "dep" / "episodes.hdf5", "r") as f:
        assert len(f["data"]) == 2 and f["data/demo_0"].attrs["dry_run"]


def test_sim_backend_reproduces_03_eval_records_and_resumes(ckpt, tmp_path):
    ev = run_stage("03_eval.py", "--profile", "smoke", "--ckpt", ckpt, "--trials", "2", "--max-steps", "30",
                   "--split", "demo", "--out", str(tmp_path / "eval"))  # 05's sim robot starts from the demo seeds
    assert ev.returncode == 0, ev.stderr
    out = tmp_path / "dep"
    r = run_stage("05_real_deploy.py", "--profile", "smoke", "--ckpt", ckpt, "--robot", "sim", "--episodes", "2",
                  "--max-steps", "30", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "tally" in r.stdout
    episodes = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    with h5py.File(out / "episodes.hdf5", "r") as f:
        assert f["data"].attrs["total"] == 60
        for i, e in enumerate(sorted(episodes, key=lambda e: e["seed"])):
            d = f[f"data/demo_{i}"]
            assert d.attrs["seed"] == e["seed"] and d.attrs["success"] == int(e["success"])
            assert np.allclose(d.attrs["final_joint_pos"], e["final_joint_pos"], atol=1e-5)  # same episode
            assert d.attrs["clamped_steps"] == 0 and d.attrs["stop_reason"] == ""
            starts = np.flatnonzero(d["predicted"][:])  # a prediction every n_action steps
            assert starts[0] == 0 and len(set(np.diff(starts))) == 1
            assert len(d["chunk_ms"]) == len(starts) and np.all(d["chunk_ms"][:] > 0)
    demos = common.load_demos(str(out / "episodes.hdf5"), ["robot0_joint_pos", "nut_pos"], 2, 4, action_key="actions")
    assert demos.num_demos == 2 and demos.actions.shape[1] == 8  # loads back as a robomimic dataset
    r = run_stage("05_real_deploy.py", "--profile", "smoke", "--ckpt", ckpt, "--robot", "sim", "--episodes", "3",
                  "--max-steps", "30", "--out", str(out))
    assert r.returncode == 0 and "2 episode(s) already recorded" in r.stdout
    with h5py.File(out / "episodes.hdf5", "r") as f:
        assert [f[f"data/demo_{i}"].attrs["seed"] for i in range(3)] == [3000000, 3000001, 3000002]


def test_bad_input_exits_2_and_writes_nothing(dep, ckpt, tmp_path):
    out = tmp_path / "x"
    cases = [
        (["--ckpt", str(tmp_path / "none.pt")], "checkpoint not found"),
        (["--ckpt", ckpt, "--robot", "ur5"], "--robot must be sim or franka"),
        (["--ckpt", ckpt, "--robot", "franka", "--label", "auto", "--max-steps", "10"], "--label auto needs"),
        (["--ckpt", ckpt, "--robot", "franka", "--max-steps", "0"], "needs --max-steps"),
        (["--ckpt", ckpt, "--robot", "franka", "--max-steps", "10"], "pip install franky-control"),
        (["--ckpt", ckpt, "--guidance", "-0.5"], "domain label"),
        (["--ckpt", ckpt, "--workspace", "0,1"], "6 numbers"),
        (["--ckpt", ckpt, "--domain", "mars"], "mars"),
        (["--ckpt", ckpt, "--label", "prompt"], "operator at a terminal"),  # stdin is a pipe here
    ]
    for args, msg in cases:
        r = run_stage("05_real_deploy.py", "--profile", "smoke", *args, "--out", str(out))
        assert r.returncode == 2 and msg in r.stderr and r.stderr.startswith("error:"), (args, r.stderr)
        assert not out.exists()
    # a low-dim policy on a robot that has only joints, gripper and cameras
    robot = FakeRobot()
    robot.provides = lambda: {"robot0_joint_pos", "robot0_gripper_qpos"}
    with pytest.raises(common.UsageError, match="nut_pos"):
        deploy_with(dep, ckpt, tmp_path, robot)
    assert not (tmp_path / "dep").exists()


def test_image_size_other_than_the_training_frames_exits_2(tmp_path):
    """An image policy deployed with --image-size other than its training frames' is refused
    before the robot is touched (one line, exit 2, nothing written)."""
    tgt = make_fake_dataset(tmp_path / "t.hdf5", 2, 12, seed=0, images=32)
    src = make_fake_dataset(tmp_path / "s.hdf5", 2, 12, seed=1, images=32, domain="source")
    r = run_stage("02_train.py", "--profile", "smoke", "--target-data", tgt, "--source-data", src, "--images",
                  "--crop", "28", "--method", "real_only", "--steps", "2", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "deploy"
    r = run_stage("05_real_deploy.py", "--profile", "smoke", "--ckpt", str(tmp_path / "run" / "ckpt.pt"),
                  "--image-size", "84", "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "32x32" in r.stderr, r.stderr
    assert not out.exists()
