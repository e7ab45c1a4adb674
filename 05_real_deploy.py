"""Stage 05: closed-loop rollout of a trained policy on a robot, safely (paper Table 2: a real
Franka Panda with cameras, 30 trials per policy).

    python 05_real_deploy.py --ckpt runs/train/<run>/ckpt.pt --robot sim --episodes 5   # dry stand-in
    python 05_real_deploy.py --ckpt <image policy>/ckpt.pt --robot franka --robot-ip 172.16.0.2 \\
        --cameras agentview=realsense:<serial>,robot0_eye_in_hand=realsense:<serial> --dry-run
    python 05_real_deploy.py ... --robot franka --episodes 30          # then for real: k/30

Robot interface (two backends): observe() -> joint positions, gripper, camera frames with their
capture times; command(joint targets + gripper); hold() (stop where it is); joint_pos(); close().
  sim     the robosuite task in --domain plays the robot (tests, dry runs; success is automatic)
  franka  a Franka Panda through franky (franky-control, libfranka + Ruckig) with RealSense
          (pyrealsense2) or OpenCV cameras; imported only when selected. docs/real_robot.md: "Running on a
          real robot".
Loop at --hz (the data's 20 Hz by default): observation -> safety checks -> policy (the same
diffusion_policy.PolicyAgent as 03_eval.py; DDIM; guidance from the checkpoint or --guidance) ->
safety filter -> command. --inference async hides inference latency: the next chunk is predicted
in a background thread from the observation `lead` steps before the current chunk runs out, and
its first `lead` actions (already in the past when it arrives) are skipped.
Safety, every step before a command is sent: NaN/inf, joint limits (clipped within
--joint-tolerance, stop beyond), Cartesian workspace of the gripper (forward kinematics of the
target), per-step joint velocity clamp, stale camera frames, control-loop overrun, lost connection.
A stop holds the robot, saves the episode and exits 3; Ctrl-C does the same (exit 130).
Writes runs/deploy/<name>/: episodes/ep_<k>.hdf5 (one per episode, atomic), episodes.hdf5
(robomimic format: observations, commanded and raw policy actions, per-step time, loop work and
whether a prediction started, per-chunk inference ms), tally.json (running k/n) and timing.json.
A rerun continues with the next episode.
"""
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass

import cv2
import h5py
import numpy as np

import common
import diffusion_policy
import methods
import tasks
from common import UsageError, arg, die

# ----------------------------------------------------------------------------------------------
# Franka Panda: limits (Franka datasheet) and forward kinematics (modified DH, Franka docs)
# ----------------------------------------------------------------------------------------------
Q_MIN = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
Q_MAX = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
DQ_MAX = np.array([2.1750, 2.1750, 2.1750, 2.1750, 2.6100, 2.6100, 2.6100])  # rad/s
DH = [(0.0, 0.333, 0.0), (0.0, 0.0, -math.pi / 2), (0.0, 0.316, math.pi / 2), (0.0825, 0.0, math.pi / 2),
      (-0.0825, 0.384, -math.pi / 2), (0.0, 0.0, math.pi / 2), (0.088, 0.0, math.pi / 2)]  # (a, d, alpha)
FLANGE = 0.107      # m, link 7 -> flange
TCP_OFFSET = 0.0965  # m, flange -> robosuite's grip site (Franka's own TCP: 0.1034)


def _dh(a, d, alpha, theta) -> np.ndarray:
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([[ct, -st, 0, a], [st * ca, ct * ca, -sa, -d * sa], [st * sa, ct * sa, ca, d * ca], [0, 0, 0, 1]])


def panda_fk(q) -> np.ndarray:
    """4x4 pose of the gripper's grip point in the robot base frame for joint positions q."""
    T = np.eye(4)
    for (a, d, alpha), theta in zip(DH, q):
        T = T @ _dh(a, d, alpha, theta)
    return T @ _dh(0.0, FLANGE + TCP_OFFSET, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------
# safety: every check runs before a command is sent; a violation raises SafetyStop
# ----------------------------------------------------------------------------------------------
class SafetyStop(Exception):
    """The robot must stop: the message says why."""


class RobotError(Exception):
    """The robot or a camera stopped answering (a backend raises it; the loop stops safely)."""


class Safety:
    """Checks and filters for one control loop (limits in the robot base frame)."""

    def __init__(self, period: float, joint_tolerance: float = 0.05, speed: float = 1.0, workspace=None,
                 max_frame_age: float = 0.2, max_overrun: float = 2.0):
        self.period, self.tol = period, joint_tolerance
        self.max_frame_age, self.max_overrun = max_frame_age, max_overrun
        self.max_step = DQ_MAX * speed * period  # rad per control step
        self.workspace = np.asarray(workspace if workspace is not None else DEFAULT_WORKSPACE, float).reshape(3, 2)
        self.clamped = 0  # steps whose velocity was clamped
        self.clipped = 0  # steps whose target was clipped into the joint limits

    def check_observation(self, obs: dict, now: float):
        q = np.asarray(obs["robot0_joint_pos"], float)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            raise SafetyStop(f"joint positions unreadable: {q}")
        for cam, t in obs.get("frame_times", {}).items():
            if now - t > self.max_frame_age:
                raise SafetyStop(f"stale camera frame: {cam} is {1000 * (now - t):.0f} ms old "
                                 f"(limit {1000 * self.max_frame_age:.0f} ms)")

    def filter_action(self, action: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        """NaN/inf -> stop; joint limits: clip within the tolerance, stop beyond; velocity: clamp
        each joint's step from the measured position; workspace: FK of the target, stop outside."""
        a = np.asarray(action, float).copy()
        if a.shape != (8,) or not np.all(np.isfinite(a)):
            raise SafetyStop(f"policy action is not 8 finite numbers: {a}")
        q = a[:7]
        over = np.maximum(Q_MIN - q, q - Q_MAX)
        if over.max() > self.tol:
            j = int(over.argmax())
            raise SafetyStop(f"joint {j + 1} target {q[j]:.3f} rad outside its limits "
                             f"[{Q_MIN[j]:.3f}, {Q_MAX[j]:.3f}] by {over[j]:.3f} rad (tolerance {self.tol})")
        if over.max() > 0:
            self.clipped += 1
            q = np.clip(q, Q_MIN, Q_MAX)
        step = np.clip(q - q_now, -self.max_step, self.max_step)
        if np.any(np.abs(q - q_now) > self.max_step + 1e-12):
            self.clamped += 1
        q = q_now + step
        tcp = panda_fk(q)[:3, 3]
        lo, hi = self.workspace[:, 0], self.workspace[:, 1]
        if np.any(tcp < lo) or np.any(tcp > hi):
            raise SafetyStop(f"gripper target {np.round(tcp, 3).tolist()} m (base frame) outside the workspace "
                             f"{self.workspace.tolist()}")
        a[:7] = q
        a[7] = float(np.clip(a[7], -1.0, 1.0))
        return a

    def check_timing(self, loop_seconds: float):
        if loop_seconds > self.max_overrun * self.period:
            raise SafetyStop(f"control loop overrun: a step took {1000 * loop_seconds:.0f} ms, "
                             f"limit {self.max_overrun:g} x {1000 * self.period:.0f} ms")


# x, y, z bounds (m) of the grip point in the robot base frame: the tasks' reach with a margin,
# z from just above the sim table (0.112 m below the base). Measure yours: docs/real_robot.md checklist.
DEFAULT_WORKSPACE = [(0.1, 0.9), (-0.5, 0.5), (-0.10, 0.6)]


# ----------------------------------------------------------------------------------------------
# robots
# ----------------------------------------------------------------------------------------------
class SimRobot:
    """The robosuite task in one domain plays the robot: same env, control and seeds as
    03_eval.py, so a sim session reproduces 03_eval.py's episodes (tested)."""
    name = "sim"

    def __init__(self, task: str, domain: str, cameras=(), image_size: int = 84, max_steps: int = 0,
                 framing: str = "wide"):
        self.env = tasks.make_env(task, domain, control="joint", cameras=cameras, image_size=image_size,
                                  framing=framing)
        self.cameras = tuple(cameras)
        self.horizon = min(type(self.env).horizon, max_steps) if max_steps else type(self.env).horizon
        self.done_at, self._obs = None, None

    def provides(self) -> set:
        return set(self._obs or self.env.observe())

    def reset(self, seed: int):
        self._obs = self.env.reset(seed)
        self.done_at = None

    def observe(self) -> dict:
        now = time.monotonic()
        return {**self._obs, "frame_times": {c: now for c in self.cameras}}

    def joint_pos(self) -> np.ndarray:
        """The joints now (robosuite's step observation lags one physics substep behind this)."""
        return self.env.observe()["robot0_joint_pos"]

    def command(self, action: np.ndarray):
        self._obs = self.env.step(action)
        if self.done_at is None and self.env.success():
            self.done_at = self.env.t

    def hold(self):
        pass  # the sim robot holds its last target

    def episode_over(self) -> bool:
        """tasks.run_episode's rule: the task's settle steps after the first success, or the horizon."""
        settled = self.done_at is not None and self.env.t - self.done_at >= self.env.settle_steps
        return self.env.t >= self.horizon or settled

    def success(self):
        return bool(self.env.success())

    def close(self):
        pass


class FrankaRobot:
    """A Franka Panda through franky (https://github.com/TimSchneider42/franky): joint targets as
    preemptive asynchronous JointMotions (Ruckig re-plans to each new target), the gripper
    through franky.Gripper, cameras through CameraSource."""
    name = "franka"

    def __init__(self, ip: str, cameras: dict, image_size: int, dynamics: float, max_steps: int):
        try:
            import franky  # noqa: PLC0415 (optional: the real robot's driver)
        except ImportError:
            raise UsageError("--robot franka needs franky: pip install franky-control (docs/real_robot.md)")
        self.franky = franky
        try:
            self.robot = franky.Robot(ip)
            self.robot.recover_from_errors()
            self.robot.relative_dynamics_factor = dynamics
            self.gripper = franky.Gripper(ip)
        except Exception as e:
            raise UsageError(f"cannot connect to the Franka at {ip} (FCI on, brakes open?): {e}")
        self.cams = {name: CameraSource(spec, image_size) for name, spec in cameras.items()}
        self.horizon = max_steps
        self.t, self._closed = 0, None

    def provides(self) -> set:
        return {"robot0_joint_pos", "robot0_gripper_qpos", *(f"{c}{common.IMAGE_SUFFIX}" for c in self.cams)}

    def reset(self, seed: int):
        self.t = 0  # the operator resets the scene; the robot starts where it is (docs/real_robot.md checklist)

    def observe(self) -> dict:
        try:
            q = np.array(self.robot.current_joint_state.position)
            w = float(self.gripper.width)
        except Exception as e:
            raise RobotError(f"robot state unreadable: {e}")
        obs = {"robot0_joint_pos": q, "robot0_gripper_qpos": np.array([w / 2, -w / 2]), "frame_times": {}}
        for name, cam in self.cams.items():
            obs[f"{name}{common.IMAGE_SUFFIX}"], obs["frame_times"][name] = cam.read()
        return obs

    def joint_pos(self) -> np.ndarray:
        return np.array(self.robot.current_joint_state.position)

    def command(self, action: np.ndarray):
        try:
            self.robot.move(self.franky.JointMotion(action[:7].tolist()), asynchronous=True)
            close = action[7] > 0  # robosuite's gripper command: -1 open, +1 close
            if close != self._closed:
                if close:
                    self.gripper.grasp_async(0.0, 0.1, 20.0, epsilon_outer=1.0)
                else:
                    self.gripper.move_async(0.08, 0.1)
                self._closed = close
        except Exception as e:
            raise RobotError(f"command failed: {e}")
        self.t += 1

    def hold(self):
        self.robot.move(self.franky.JointStopMotion(), asynchronous=False)

    def episode_over(self) -> bool:
        return self.t >= self.horizon

    def success(self):
        return None  # the operator says

    def close(self):
        for cam in self.cams.values():
            cam.close()


class CameraSource:
    """One camera: `realsense:<serial>` (pyrealsense2) or `opencv:<index>`; frames come back RGB,
    resized to the policy's image size, with their capture time (time.monotonic)."""

    def __init__(self, spec: str, size: int):
        kind, _, ident = spec.partition(":")
        self.kind, self.size = kind, size
        if kind == "realsense":
            try:
                import pyrealsense2 as rs  # noqa: PLC0415 (optional: the real robot's camera)
            except ImportError:
                raise UsageError("realsense cameras need pyrealsense2: pip install pyrealsense2")
            self.pipe, cfg = rs.pipeline(), rs.config()
            if ident:
                cfg.enable_device(ident)
            cfg.enable_stream(rs.stream.color, 640, 480, rs.format.rgb8, 30)
            self.pipe.start(cfg)
        elif kind == "opencv":
            self.cap = cv2.VideoCapture(int(ident or 0))
            if not self.cap.isOpened():
                raise RobotError(f"camera {spec} does not open")
        else:
            raise UsageError(f"camera {spec!r}: use realsense:<serial> or opencv:<index>")

    def read(self):
        if self.kind == "realsense":
            frames = self.pipe.wait_for_frames(timeout_ms=1000)
            img = np.asanyarray(frames.get_color_frame().get_data())
        else:
            ok, bgr = self.cap.read()
            if not ok:
                raise RobotError("camera frame lost")
            img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        t = time.monotonic()
        h, w = img.shape[:2]
        s = min(h, w)  # center square, then the training size (match the sim camera: docs/real_robot.md)
        img = img[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2]
        return cv2.resize(img, (self.size, self.size), interpolation=cv2.INTER_AREA), t

    def close(self):
        if self.kind == "realsense":
            self.pipe.stop()
        else:
            self.cap.release()


# ----------------------------------------------------------------------------------------------
# one episode: observe -> check -> act -> filter -> command, at a fixed rate
# ----------------------------------------------------------------------------------------------
def run_episode(robot, agent, safety: Safety, seed: int, period: float, realtime: bool, dry_run: bool,
                keys: list, max_steps: int) -> dict:
    """Returns the episode record (per-step arrays, stop reason); `stop` is set if a safety
    condition, a lost connection or Ctrl-C ended it, and the robot has then been held."""
    steps = {k: [] for k in ("t", "loop_ms", "predicted", "actions", "policy_actions")}
    obs_rec = {k: [] for k in keys}
    stop, interrupted = None, False
    robot.reset(seed)
    t_start = next_tick = time.monotonic()
    last = None
    try:
        for t in range(max_steps):
            tick = time.monotonic()
            if realtime and last is not None:
                safety.check_timing(tick - last)
            last = tick
            obs = robot.observe()
            safety.check_observation(obs, time.monotonic())
            raw = agent.act({k: obs[k] for k in agent.sources})
            a = safety.filter_action(raw, np.asarray(obs["robot0_joint_pos"], float))
            if not dry_run:
                robot.command(a)
            for k in keys:
                obs_rec[k].append(np.asarray(obs[k]))
            steps["t"].append(tick - t_start)
            steps["predicted"].append(bool(getattr(agent, "started", False)))  # a chunk prediction started
            steps["actions"].append(a)
            steps["policy_actions"].append(np.asarray(raw, float))
            steps["loop_ms"].append(1000 * (time.monotonic() - tick))
            if robot.episode_over():
                break
            if realtime:
                next_tick += period
                time.sleep(max(0.0, next_tick - time.monotonic()))
    except SafetyStop as e:
        stop = f"safety stop: {e}"
    except RobotError as e:
        stop = f"robot lost: {e}"
    except KeyboardInterrupt:
        stop, interrupted = "interrupted (Ctrl-C)", True
    finally:
        agent.close()
    final_q = np.full(7, np.nan)
    if stop is not None:
        try:
            robot.hold()
        except Exception as e:  # the connection may be gone: say so, the record is saved anyway
            stop += f"; hold failed: {e}"
    else:
        final_q = np.asarray(robot.joint_pos(), float)  # where the last command left it
    return {"seed": seed, "stop": stop, "final_joint_pos": final_q,
            "chunk_ms": 1000 * np.asarray(agent.chunk_seconds, dtype=np.float64), "interrupted": interrupted,
            "obs": obs_rec, "dry_run": dry_run,
            "clamped": safety.clamped, "clipped": safety.clipped,
            **{k: np.asarray(v, dtype=np.float64).reshape(len(v), -1 if v else 8) if "actions" in k
               else np.asarray(v, dtype=bool if k == "predicted" else np.float64) for k, v in steps.items()}}


# ----------------------------------------------------------------------------------------------
# recording: one robomimic-format file per episode, assembled into episodes.hdf5
# ----------------------------------------------------------------------------------------------
def write_episode(path: str, ep: dict, success, label: str, meta: dict):
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(meta["env_args"])
        d = data.create_group("demo_0")
        n = len(ep["actions"])
        d.attrs["num_samples"] = n
        d.attrs["seed"] = ep["seed"]
        d.attrs["success"] = -1 if success is None else int(bool(success))
        d.attrs["label"] = label
        d.attrs["stop_reason"] = ep["stop"] or ""
        d.attrs["dry_run"] = ep["dry_run"]
        d.attrs["clamped_steps"], d.attrs["clipped_steps"] = ep["clamped"], ep["clipped"]
        d.attrs["final_joint_pos"] = ep["final_joint_pos"]
        for k, v in ep["obs"].items():
            d.create_dataset(f"obs/{k}", data=np.asarray(v) if n else np.zeros((0,)))
        for k in ("actions", "policy_actions", "t", "loop_ms", "predicted", "chunk_ms"):
            d.create_dataset(k, data=ep[k])
        d.create_dataset("dones", data=(np.arange(n) == n - 1).astype(np.uint8))
    os.replace(tmp, path)


def assemble(out: str, meta: dict) -> int:
    """episodes.hdf5 from the per-episode files (data/demo_<k>), written atomically."""
    parts = sorted(f for f in os.listdir(os.path.join(out, "episodes")) if f.endswith(".hdf5"))
    tmp = os.path.join(out, "episodes.hdf5.tmp")
    total = 0
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for i, name in enumerate(parts):
            with h5py.File(os.path.join(out, "episodes", name), "r") as p:
                p.copy(p["data/demo_0"], data, name=f"demo_{i}")
                total += int(p["data/demo_0"].attrs["num_samples"])
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(meta["env_args"])
        data.attrs["deploy"] = json.dumps(meta["settings"])
    os.replace(tmp, os.path.join(out, "episodes.hdf5"))
    return len(parts)


def read_tally(out: str) -> list:
    rows = []
    folder = os.path.join(out, "episodes")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".hdf5"):
            with h5py.File(os.path.join(folder, name), "r") as f:
                d = f["data/demo_0"]
                rows.append({"episode": name, "seed": int(d.attrs["seed"]), "success": int(d.attrs["success"]),
                             "label": str(d.attrs["label"]), "stop": str(d.attrs["stop_reason"]),
                             "length": int(d.attrs["num_samples"])})
    return rows


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    profile: str = "cpu"
    ckpt: str = arg("", "checkpoint from 02_train.py (EMA weights)")
    robot: str = arg("sim", "sim | franka")
    episodes: int = arg(30, "episodes in this session's tally (Table 2: 30); a rerun continues")
    domain: str = arg("", "sim: the domain that plays the robot (default: the run's target domain)")
    split: str = arg("demo", "sim: initial-state seeds: demo (a stand-in robot's looks; no reported number "
                             "spends them), eval or valid (03_eval.py's ranges)")
    first_seed: int = arg(-1, "sim: first initial-state seed instead of --split's range "
                                  "(-1 = tasks.SEED_BASE[--split])")
    hz: float = arg(20.0, "control rate (the data's: tasks.CONTROL_FREQ = 20 Hz)")
    realtime: bool = arg(False, "sim: pace the loop at --hz (always on for franka)")
    inference: str = arg("sync", "sync (predict when a chunk runs out) | async (predict ahead in a thread)")
    lead: int = arg(-1, "async: steps ahead to start predicting (-1 = from the measured inference time)")
    guidance: str = arg("", "guidance lambda (default: the checkpoint's; CFG / CFG-ADDA only)")
    sample_steps: int = arg(0, "DDIM steps (0 = the checkpoint's)")
    dry_run: bool = arg(False, "run everything except sending commands: nothing moves")
    label: str = arg("", "auto (sim success) | prompt (operator: y/n after each episode); default by robot")
    max_steps: int = arg(0, "steps per episode (0 = the task's horizon)")
    joint_tolerance: float = arg(0.05, "rad a target may exceed a joint limit and be clipped; beyond: stop")
    speed: float = arg(1.0, "per-step joint velocity clamp as a fraction of the Panda's limits")
    workspace: list = arg([], "xmin,xmax,ymin,ymax,zmin,zmax of the grip point, base frame, m (default: "
                              + ",".join(f"{v:g}" for lo_hi in DEFAULT_WORKSPACE for v in lo_hi) + ")")
    max_frame_age: float = arg(0.2, "s: an older camera frame stops the robot")
    max_overrun: float = arg(2.0, "a loop step longer than this many periods stops the robot (realtime)")
    robot_ip: str = arg("172.16.0.2", "franka: FCI address")
    cameras: list = arg([], "franka: name=realsense:<serial> or name=opencv:<index> per policy camera")
    image_size: int = arg(0, "camera frames are resized to this (0 = the training images' size)")
    dynamics: float = arg(0.2, "franka: franky relative dynamics factor (velocity/acceleration/jerk)")
    out: str = arg("", "output folder (default runs/deploy/<run>_<robot>[_dry])")
    overwrite: bool = arg(False, "discard earlier episodes in --out")


PROFILES = {"paper": {}, "cpu": {}, "smoke": dict(episodes=2, max_steps=40)}
EXIT_SAFETY, EXIT_INTERRUPT = 3, 130


def check_args(a: Args):
    if a.split not in ("demo", "eval", "valid"):
        raise UsageError(f"--split must be demo, eval or valid, got {a.split!r}")
    if a.first_seed >= 0 and a.split != "demo":
        raise UsageError(f"--first-seed and --split {a.split} both choose the seeds: give one of them")
    if not a.ckpt:
        raise UsageError("--ckpt is required (a checkpoint from 02_train.py)")
    if a.robot not in ("sim", "franka"):
        raise UsageError(f"--robot must be sim or franka, got {a.robot!r}")
    if a.episodes <= 0:
        raise UsageError(f"--episodes must be positive, got {a.episodes}")
    if not 1 <= a.hz <= 100:
        raise UsageError(f"--hz must be in [1, 100], got {a.hz}")
    if a.inference not in ("sync", "async"):
        raise UsageError(f"--inference must be sync or async, got {a.inference!r}")
    if a.label not in ("", "auto", "prompt"):
        raise UsageError(f"--label must be auto or prompt, got {a.label!r}")
    if a.label == "auto" and a.robot != "sim":
        raise UsageError("--label auto needs --robot sim (on a robot the operator says)")
    if not 0 < a.speed <= 1:
        raise UsageError(f"--speed must be in (0, 1] (a fraction of the Panda's joint velocity limits), got {a.speed}")
    if a.workspace and len(a.workspace) != 6:
        raise UsageError(f"--workspace takes 6 numbers xmin,xmax,ymin,ymax,zmin,zmax, got {len(a.workspace)}")
    if a.robot == "franka" and a.max_steps <= 0:
        raise UsageError("--robot franka needs --max-steps (episode length; the operator resets between episodes)")


def parse_cameras(specs: list) -> dict:
    out = {}
    for s in specs:
        name, sep, src = s.partition("=")
        if not sep:
            raise UsageError(f"--cameras {s!r}: use name=realsense:<serial> or name=opencv:<index>")
        out[name] = src
    return out


def prompt_label(i: int) -> bool:
    while True:
        try:
            ans = input(f"episode {i}: success? [y/n] ").strip().lower()
        except EOFError:
            raise UsageError("--label prompt needs an operator at the terminal (stdin closed)")
        if ans in ("y", "n"):
            return ans == "y"


# ----------------------------------------------------------------------------------------------
# the session
# ----------------------------------------------------------------------------------------------
def setup(a: Args):
    """Load and check everything before the robot is touched: policy, robot, keys, output."""
    check_args(a)
    policy, cfg, step = diffusion_policy.load_policy(a.ckpt)
    if common.ACTION_SPACES[cfg["model"]["action_space"]][1] != "joint":
        raise UsageError(f"{a.ckpt} predicts OSC commands (--action-space osc); the robots here take "
                         f"joint targets (App. C): deploy a policy trained with --action-space abs or rel")
    trained = cfg["model"]["image_size"] if cfg["model"]["image_keys"] else None
    if a.image_size and trained and a.image_size != trained:
        raise UsageError(f"--image-size {a.image_size}: {a.ckpt} was trained on {trained}x{trained} frames")
    a.image_size = a.image_size or trained or 84  # checkpoints before image_size: 84 px
    labelled = cfg["model"]["use_label"]
    if a.guidance and not labelled:
        raise UsageError(f"--guidance needs a checkpoint trained with a domain label "
                         f"({', '.join(methods.label_methods())}); {a.ckpt} was trained with {cfg['args']['method']}")
    try:
        guidance = float(a.guidance) if a.guidance else (cfg.get("guidance_scale") if labelled else None)
        workspace = [float(x) for x in a.workspace] if a.workspace else None
    except ValueError:
        raise UsageError(f"--guidance / --workspace take numbers, got {a.guidance!r} / {a.workspace}")
    steps = a.sample_steps or cfg["model"]["sample_steps"]
    task, domain = cfg["args"]["task"], a.domain or cfg["args"]["target_domain"]
    cams = tuple(k[:-len(common.IMAGE_SUFFIX)] for k in cfg["model"]["image_keys"])
    cam_specs = parse_cameras(a.cameras)
    if a.robot == "franka" and set(cam_specs) != set(cams):
        raise UsageError(f"--cameras must name the policy's cameras {list(cams)}, got {list(cam_specs)}")
    run = os.path.basename(os.path.dirname(os.path.abspath(a.ckpt)))
    out = a.out or os.path.join("runs", "deploy", f"{run}_{a.robot}{'_dry' if a.dry_run else ''}")
    common.check_writable(out)
    settings = {"ckpt": os.path.abspath(a.ckpt), "step": step, "robot": a.robot, "task": task,
                "domain": domain if a.robot == "sim" else "real", "hz": a.hz, "inference": a.inference,
                "guidance": guidance, "sample_steps": steps, "dry_run": a.dry_run,
                "first_seed": a.first_seed, "split": a.split, "max_steps": a.max_steps,
                "framing": diffusion_policy.ModelConfig.from_dict(cfg["model"]).framing}
    old = os.path.join(out, "settings.json")
    if os.path.exists(old) and not a.overwrite:
        common.check_same_settings(common.read_json(old), settings, out)
    return policy, cfg, settings, out, guidance, steps, workspace, cams, cam_specs


def make_robot(a: Args, settings: dict, cams, cam_specs):
    if a.robot == "sim":
        try:
            tasks.get_domain(settings["task"], settings["domain"])
        except tasks.TaskError as e:
            raise UsageError(str(e))
        return SimRobot(settings["task"], settings["domain"], cams, a.image_size, a.max_steps,
                        settings["framing"])
    return FrankaRobot(a.robot_ip, cam_specs, a.image_size, a.dynamics, a.max_steps)


def deploy(a: Args, robot=None, make_agent=None) -> int:
    """The whole session; returns the exit code. `robot` / `make_agent(seed)` replace the real
    ones in tests (a misbehaving robot or policy)."""
    policy, cfg, settings, out, guidance, steps, workspace, cams, cam_specs = setup(a)
    need = {s for k in cfg["model"]["lowdim_keys"] + cfg["model"]["image_keys"]
            for s in common.derived_sources(k)}  # stored keys (relative positions come from them)
    robot = robot or make_robot(a, settings, cams, cam_specs)
    missing = sorted(need - robot.provides())
    if missing:
        raise UsageError(f"the checkpoint observes {', '.join(missing)}, which the {robot.name} robot does not "
                         f"provide (a real robot gives joints, gripper and cameras: train with --images)")
    label_mode = a.label or ("auto" if a.robot == "sim" else "prompt")
    if label_mode == "prompt" and not sys.stdin.isatty():  # before anything moves or is written
        raise UsageError("--label prompt needs an operator at a terminal (stdin is not one)")
    period = 1.0 / a.hz
    realtime = a.realtime or a.robot == "franka"
    keys = sorted(need | {"robot0_joint_pos", "robot0_gripper_qpos"})
    first = a.first_seed if a.first_seed >= 0 else tasks.SEED_BASE[a.split]
    lead = a.lead
    if a.inference == "async" and lead < 0:  # measure: a few warm-up predictions on a first observation
        robot.reset(first)
        probe = diffusion_policy.PolicyAgent(policy, 0, guidance, steps)
        o = robot.observe()
        for _ in range(3):
            probe.predict([{k: o[k] for k in probe.sources}] * cfg["model"]["n_obs"])
        # x2: in the background thread inference shares the CPU with the loop (bench_deploy.py)
        lead = max(1, math.ceil(2 * max(probe.chunk_seconds[1:]) / period))
    max_lead = cfg["model"]["horizon"] - cfg["model"]["n_action"]
    if lead > max_lead:
        raise UsageError(f"inference takes {lead} control steps, more than the chunk leaves ({max_lead}): "
                         f"lower --hz or --sample-steps")
    lead = max(lead, 0) if a.inference == "async" else 0
    levels = tasks.TASK_CLASSES[settings["task"]].gripper_levels  # the demos' gripper commands
    make_agent = make_agent or (lambda seed: diffusion_policy.PolicyAgent(policy, seed, guidance, steps, "ddim", lead,
                                                                          gripper_levels=levels))
    meta = {"env_args": {"env_name": settings["task"], "type": 1,
                         "env_kwargs": {"robot": a.robot, "domain": settings["domain"], "control": "joint_position",
                                        "control_freq": a.hz}},
            "settings": {**settings, "lead": lead}}
    if a.overwrite and os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "episodes"), exist_ok=True)
    common.write_json(os.path.join(out, "settings.json"), settings)
    tally = read_tally(out)
    if tally:
        print(f"{out}: {len(tally)} episode(s) already recorded, continuing")
    max_steps = a.max_steps or robot.horizon
    code = 0
    timing = {"inference_ms": [], "loop_ms": [], "period_ms": []}
    for i in range(len(tally), a.episodes):
        seed = first + i
        safety = Safety(period, a.joint_tolerance, a.speed, workspace, a.max_frame_age, a.max_overrun)
        ep = run_episode(robot, make_agent(seed), safety, seed, period, realtime, a.dry_run, keys, max_steps)
        if ep["stop"] is not None:
            success, label = False, "stopped"
        elif label_mode == "auto":
            success, label = robot.success(), "auto"
        else:
            success, label = prompt_label(i), "operator"
        write_episode(os.path.join(out, "episodes", f"ep_{i:04d}.hdf5"), ep, success, label, meta)
        n = assemble(out, meta)
        tally = read_tally(out)
        wins = sum(r["success"] == 1 for r in tally)
        timing["inference_ms"] += ep["chunk_ms"].tolist()
        timing["loop_ms"] += ep["loop_ms"].tolist()
        timing["period_ms"] += (1000 * np.diff(ep["t"])).tolist()
        common.write_json(os.path.join(out, "tally.json"), {"successes": wins, "episodes": n, "rows": tally})
        what = ep["stop"] or ("success" if success else "failure")
        print(f"episode {i + 1}/{a.episodes} (seed {seed}, {len(ep['actions'])} steps, "
              f"{ep['clamped']} clamped): {what} | tally {wins}/{n}")
        if ep["stop"] is not None:
            code = EXIT_INTERRUPT if ep["interrupted"] else EXIT_SAFETY
            print(f"error: {ep['stop']}; robot held, episode saved to {out}/episodes/ep_{i:04d}.hdf5",
                  file=sys.stderr)
            break
    robot.close()
    common.write_json(os.path.join(out, "timing.json"), timing_summary(timing, period, realtime, lead))
    return code


def timing_summary(t: dict, period: float, realtime: bool, lead: int) -> dict:
    inf, loop, per = (np.asarray(t[k]) for k in ("inference_ms", "loop_ms", "period_ms"))
    q = lambda x, p: float(np.percentile(x, p)) if len(x) else None  # noqa: E731
    return {"target_period_ms": 1000 * period, "realtime": realtime, "lead": lead,
            "inference_ms_mean": float(inf.mean()) if len(inf) else None, "inference_ms_p95": q(inf, 95),
            "loop_ms_mean": float(loop.mean()) if len(loop) else None, "loop_ms_p95": q(loop, 95),
            "loop_ms_max": float(loop.max()) if len(loop) else None,
            "period_ms_mean": float(per.mean()) if len(per) else None,
            "jitter_ms_std": float(per.std()) if len(per) else None, "period_ms_max": q(per, 100),
            "steps_over_period": int((loop > 1000 * period).sum())}


def _sigterm(*_):
    raise KeyboardInterrupt  # a kill is handled like Ctrl-C: hold, save, exit


def main(argv=None):
    a = common.parse_args(Args, PROFILES, argv, description=__doc__, check=check_args)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        code = deploy(a)
    except UsageError as e:
        die(str(e))
    except RobotError as e:  # outside an episode: nothing was moving
        die(f"robot: {e}", EXIT_SAFETY)
    except KeyboardInterrupt:  # between episodes: every finished episode is saved
        die("interrupted between episodes; recorded episodes are kept", EXIT_INTERRUPT)
    sys.exit(code)


if __name__ == "__main__":
    main()
