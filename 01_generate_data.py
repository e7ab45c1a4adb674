"""Stage 01: the datasets (paper Sec. 4 "Data preparation").

Per task, N target demos in each target domain and M source demos in the source domain, the
source demos multiplied from a few seed demos by the MimicGen algorithm (Mandlekar et al. 2023),
implemented here on robosuite 1.5 (the official code is robosuite-1.4-only; never install the
registry package named `mimicgen`, it is unrelated).

    python 01_generate_data.py --profile cpu --workers 2     # the whole CPU dataset set (make data)
    python 01_generate_data.py --mode expert --task NutAssembly --domain target_visual --num-demos 50
    python 01_generate_data.py --mode generate --task NutAssembly --num-demos 500 \\
        --seed-data data/NutAssembly/source/seed_50.hdf5
    python 01_generate_data.py --mode import --task NutAssembly --input human.hdf5 --out my.hdf5
    python 01_generate_data.py --verify data/NutAssembly/source/mimicgen_500.hdf5

Modes
  expert    seed / target demos from the scripted expert (the stand-in for teleoperation)
  generate  MimicGen: for a new scene, per subtask pick a seed segment (nearest initial object
            poses, or random), express its end-effector target poses in the subtask's reference
            object frame, re-target them to the object's pose now, bridge from the current pose by
            interpolation, execute with the OSC controller plus action noise; keep successes
  import    a robomimic/MimicGen HDF5 (e.g. human teleoperation) recorded in the same scene:
            validated, observations, joint actions and subtask signals recomputed from its states
  set       (default) every file of the profile's dataset set, in order, each resumable

Output: one robomimic-format HDF5 per task x domain x set (data/<task>/<domain>/<name>.hdf5):
  data.attrs: total, env_args (JSON), task, domain, domain_params, source, generation statistics
  data/demo_K: attrs num_samples, seed, provenance; `actions` (robosuite OSC_POSE deltas, 7-D, the
  controller that made the demo), `joint_actions` (absolute joint positions + gripper, 8-D: what the
  policy trains on, App. C), `states`, `rewards`, `dones`, obs/<key> (images uint8 HWC with
  --images), subtask_signals/<name>;  mask/train, mask/valid.
A run writes one small HDF5 per attempt into <out>.parts/ (atomically) and assembles the final
file at the end (atomically): killed at any point and run again, it continues with the attempts not
yet done, and the final file equals an uninterrupted run's, for any --workers.

The file reads in the order of the method: arguments; MimicGen (seed demos -> segments -> a new
demo); one attempt (expert or MimicGen episode); robomimic HDF5 writing and checks; then the
machinery: the resumable job (parts, worker pool, assembly), replay verification, main.
"""
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace

import h5py
import numpy as np
from tqdm import tqdm

import cli
import experts
import tasks
from cli import arg, die  # cli, not common: no torch in the generation workers (bench_generate.py)


# ----------------------------------------------------------------------------------------------
# arguments: every default visible here; a profile overrides some (table below)
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    profile: str = "cpu"
    mode: str = arg("set", "set | expert | generate | import (see the module docstring)")
    task: str = arg("", "task name (NutAssembly, MugCleanup, MugHang); set mode: empty = all")
    domain: str = arg("source", "domain the demos are recorded in")
    num_demos: int = arg(50, "successful demos to keep (import: at most this many)")
    out: str = arg("", "output HDF5 (default data/<task>/<domain>/<mode name>_<num>.hdf5)")
    root: str = arg("data", "set mode: folder of the dataset set")
    seed_data: str = arg("", "generate: HDF5 of seed demos (expert or import mode output)")
    input: str = arg("", "import: robomimic-format HDF5 to import")
    first_seed: int = arg(-1, "first initial-state seed; -1 = the mode's range (tasks.SEED_BASE)")
    workers: int = arg(1, "parallel processes, each with its own env (the result does not depend on it)")
    images: bool = arg(False, "also record camera images")
    cameras: list = arg(["agentview", "robot0_eye_in_hand"], "cameras for --images (paper App. C: 2)")
    image_size: int = arg(84, "image height = width (paper App. C: 84)")
    framing: str = arg("wide", "--images: the agentview camera's framing (tasks.FRAMINGS: wide | workspace)")
    image_suffix: str = arg("_img", "set: the image copy of <name>.hdf5 is <name><suffix>.hdf5")
    nut_expert: str = arg("first", "expert: which NutAssembly expert (experts.NUT_EXPERTS); the first's data "
                                    "trains the strongest policies (RESULTS 'A CPU recipe', item 8)")
    selection: str = arg("nearest", "generate: seed demo choice, nearest (initial object poses) | random")
    nn_k: int = arg(3, "generate: pick uniformly among the k nearest seed demos")
    per_subtask: bool = arg(False, "generate: choose a seed demo per subtask (MimicGen default: one per episode)")
    action_noise: float = arg(0.05, "generate: Gaussian noise on the normalized pose action (MimicGen: 0.05)")
    interp_speed: float = arg(0.02, "generate: m per step when bridging to the next segment")
    term_offset: list = arg([5, 15], "generate: random extra steps appended to each subtask but the last")
    max_attempts: int = arg(0, "give up after this many attempts (0 = 20 x num_demos)")
    valid_fraction: float = arg(0.1, "fraction of demos in mask/valid")
    resume: bool = arg(False, "an output that exists already is left as it is (no error)")
    overwrite: bool = arg(False, "replace an existing output")
    verify: str = arg("", "replay the joint actions of this HDF5 from its initial states and report")
    verify_demos: int = arg(0, "--verify: check only the first this many demos (0 = all)")
    report: str = arg("", "print a markdown table of the datasets under this folder (demos, rate, time)")
    # set mode: the dataset set (paper Sec. 4: 50 seeds -> 3000 source, 50 target per task)
    set_seeds: int = arg(cli.DATASET_SETS["cpu"]["seeds"], "set: source seed demos per task")
    set_source: int = arg(cli.DATASET_SETS["cpu"]["source"], "set: generated source demos per task")
    set_target: int = arg(cli.DATASET_SETS["cpu"]["target"], "set: expert demos per target domain")
    set_tasks: list = arg(["NutAssembly", "MugCleanup", "MugHang"], "set: tasks")
    set_image_tasks: list = arg(["NutAssembly"], "set: tasks recorded with images")


def set_sizes(profile: str) -> dict:
    """The profile's dataset set sizes (cli.DATASET_SETS: 02_train.py reads the files by them)."""
    return {f"set_{k}": v for k, v in cli.DATASET_SETS[profile].items()}


PROFILES = {
    "smoke": dict(**set_sizes("smoke"), set_tasks=["NutAssembly"], set_image_tasks=[], num_demos=2),
    "cpu": dict(),
    # The image copies of the small-image cpu profile (02_train.py --profile cpu_img): NutAssembly,
    # one agentview camera at 64x64 (RESULTS "Image policies"); the low-dim files are the cpu set's.
    "cpu_img": dict(set_tasks=["NutAssembly"], set_image_tasks=["NutAssembly"], cameras=["agentview"],
                    image_size=64, image_suffix="_img64"),
    "paper": dict(**set_sizes("paper"), set_image_tasks=["NutAssembly", "MugCleanup", "MugHang"]),
}


# ----------------------------------------------------------------------------------------------
# MimicGen (Mandlekar et al. 2023, Sec. 4): seed demos cut into object-centric subtask segments
# ----------------------------------------------------------------------------------------------
class SeedDemos:
    """Seed demos as MimicGen uses them: per demo, the controller's end-effector target pose and
    gripper command per step, the subtask signals, and the reference frames' poses per step."""

    def __init__(self, path: str, task: str):
        self.task = task
        self.subtasks = tasks.TASK_CLASSES[task].subtasks
        self.demos = []
        with h5py.File(path, "r") as f:
            for name in sorted(f["data"], key=lambda n: int(n.split("_")[1])):
                g = f["data"][name]
                obs = {k: g["obs"][k][()] for k in g["obs"] if not k.endswith("_image")}
                a = np.clip(g["actions"][()], -1, 1)
                T = len(a)
                targets = np.zeros((T, 4, 4))
                for t in range(T):
                    # the pose the OSC controller was asked to reach at step t (delta in world frame)
                    E = tasks.eef_pose({k: v[t] for k, v in obs.items()})
                    targets[t] = np.eye(4)
                    targets[t, :3, 3] = E[:3, 3] + a[t, :3] * tasks.OSC_POS_SCALE
                    targets[t, :3, :3] = experts.rotvec_to_mat(a[t, 3:6] * tasks.OSC_ROT_SCALE) @ E[:3, :3]
                frames = {fr: np.stack([tasks.frame_pose(task, fr, {k: v[t] for k, v in obs.items()})
                                        for t in range(T)])
                          for fr in tasks.TASK_CLASSES[task].frames}
                signals = {s: g["subtask_signals"][s][()].astype(bool) for s, _ in self.subtasks}
                self.demos.append(dict(targets=targets, grip=a[:, 6], frames=frames, signals=signals,
                                       ends=self._subtask_ends(signals, T), name=name))

    def _subtask_ends(self, signals, T):
        """End step (exclusive) of each subtask: the first step its signal holds after the previous
        subtask ended (MimicGen's subtask termination signals); the last ends with the demo."""
        ends, start = [], 0
        for s, _ in self.subtasks[:-1]:
            hits = np.flatnonzero(signals[s][start:])
            end = start + int(hits[0]) + 1 if len(hits) else T
            ends.append(end)
            start = end
        return ends + [T]

    def distance(self, d: int, frames_now: dict, t: int = 0) -> float:
        """Distance between seed demo d's reference-frame poses at its step t and the new scene's:
        position (m) + rotation angle (rad), summed over the frames (MimicGen's nearest object)."""
        dist = 0.0
        for fr, T_now in frames_now.items():
            T_src = self.demos[d]["frames"][fr][t]
            dist += np.linalg.norm(T_now[:3, 3] - T_src[:3, 3])
            dist += np.linalg.norm(experts.rotvec(T_now[:3, :3] @ T_src[:3, :3].T))
        return float(dist)


def interpolate_poses(T0, T1, speed: float, min_steps: int = 5) -> list:
    """Poses from T0 (excluded) to T1 (included): linear in position, constant-rate rotation about
    one axis (slerp), at most `speed` m and 5 x `speed` rad per step (MimicGen: 5 steps)."""
    dR = experts.rotvec(T1[:3, :3] @ T0[:3, :3].T)
    n = max(min_steps, int(np.ceil(np.linalg.norm(T1[:3, 3] - T0[:3, 3]) / speed)),
            int(np.ceil(np.linalg.norm(dR) / (5 * speed))))
    out = []
    for k in range(1, n + 1):
        s = k / n
        T = np.eye(4)
        T[:3, 3] = (1 - s) * T0[:3, 3] + s * T1[:3, 3]
        T[:3, :3] = experts.rotvec_to_mat(s * dR) @ T0[:3, :3]
        out.append(T)
    return out


class MimicGenAgent:
    """Executes one MimicGen episode: at the start of each subtask, read the reference object's
    pose, transform the chosen seed segment into it (T_new = F_now F_src^-1 T_src), bridge to it
    by interpolation, then follow its target poses with OSC delta actions plus noise."""

    def __init__(self, env, seed: int, src: SeedDemos, a: Args):
        self.env, self.src, self.a = env, src, a
        self.rng = np.random.default_rng([seed, 2])   # own stream: selection, offsets, noise
        self.subtask, self.queue, self.done = -1, [], False
        self.info = {"src_demo": [], "src_segment": []}
        obs = env.observe()
        self.frames0 = {fr: tasks.frame_pose(env.task, fr, obs) for fr in type(env).frames}
        self.demo = self._select(self.frames0, 0) if not a.per_subtask else None
        self.queue_last, self.grip_last = None, -1.0   # last target pose and gripper command

    def _select(self, frames_now, subtask: int) -> int:
        """A seed demo: uniform among the nn_k nearest at the start of `subtask`, or at random."""
        n = len(self.src.demos)
        if self.a.selection == "random":
            return int(self.rng.integers(n))
        starts = [self.src.demos[d]["ends"][subtask - 1] if subtask else 0 for d in range(n)]
        dist = np.array([self.src.distance(d, frames_now, starts[d]) for d in range(n)])
        return int(self.rng.choice(np.argsort(dist, kind="stable")[:min(self.a.nn_k, n)]))

    def _plan_next(self, obs):
        self.subtask += 1
        i, (_, frame) = self.subtask, self.env.subtasks[self.subtask]
        F_now = tasks.frame_pose(self.env.task, frame, obs)
        d = self.demo if self.demo is not None else self._select({frame: F_now}, i)
        demo = self.src.demos[d]
        # segment [start, end): where the last segment of this demo stopped (or, for a demo new in
        # this episode, its subtask start) to this subtask's end plus a random offset (MimicGen)
        lo, hi = self.a.term_offset
        ends = list(demo["ends"])
        if i == 0:
            start = 0
        elif self.demo is not None:
            start = self._seg_end_prev
        else:
            start = ends[i - 1]
        end = ends[i] if i == len(ends) - 1 else min(ends[i] + int(self.rng.integers(lo, hi + 1)), ends[-1])
        end = max(end, start + 1)
        self._seg_end_prev = end
        F_src = demo["frames"][frame][start]
        M = F_now @ np.linalg.inv(F_src)
        targets = [M @ T for T in demo["targets"][start:end]]
        grips = demo["grip"][start:end]
        cur = self.queue_last if self.queue_last is not None else tasks.eef_pose(obs)
        grip0 = self.grip_last
        bridge = interpolate_poses(cur, targets[0], self.a.interp_speed)
        self.queue = [(T, grip0) for T in bridge[:-1]] + list(zip(targets, grips))
        self.info["src_demo"].append(d)
        self.info["src_segment"].append([start, end])

    def act(self, obs):
        while not self.queue and not self.done:
            if self.subtask + 1 == len(self.env.subtasks):
                self.done = True
            else:
                self._plan_next(obs)
        if self.queue:
            T, grip = self.queue.pop(0)
            self.queue_last, self.grip_last = T, float(grip)
        T, grip = self.queue_last, self.grip_last  # done: hold the last target
        E = tasks.eef_pose(obs)
        a = np.zeros(7)
        a[:3] = np.clip((T[:3, 3] - E[:3, 3]) / tasks.OSC_POS_SCALE, -1, 1)
        a[3:6] = np.clip(experts.rotvec(T[:3, :3] @ E[:3, :3].T) / tasks.OSC_ROT_SCALE, -1, 1)
        if not self.done:
            a[:6] += self.a.action_noise * self.rng.standard_normal(6)
        a[6] = grip
        return a


# ----------------------------------------------------------------------------------------------
# one attempt = one episode from one initial-state seed (runs in a worker process)
# ----------------------------------------------------------------------------------------------
_W = {}  # the worker's env and seed demos, built once per process


def _init_worker(a: Args):
    if a.workers > 1:
        cli.exit_with_parent()  # a killed run leaves no worker behind
    _W.clear()
    _W["expert"] = experts.nut_expert(a.nut_expert)  # NutAssembly's variant (other tasks ignore it)
    cams = a.cameras if a.images else ()
    _W["args"] = a
    _W["env"] = tasks.make_env(a.task, a.domain, cameras=cams, image_size=a.image_size, framing=a.framing)
    if a.mode == "generate":
        _W["src"] = SeedDemos(a.seed_data, a.task)
    if a.mode == "import":
        _W["input"] = list_demos(a.input)


def _attempt(i: int) -> dict:
    """Attempt i of the job: an episode from seed first_seed + i (expert or MimicGen), or the
    import of input demo i. Deterministic in (arguments, i)."""
    a, env = _W["args"], _W["env"]
    t0 = time.time()
    if a.mode == "import":
        ep = import_demo(env, a.input, _W["input"][i])
        ep["keep"] = True   # imported demos are all kept; `success` records the task's state
    elif a.mode == "expert":
        ep = tasks.run_expert_episode(env, a.first_seed + i, expert=_W["expert"])
    else:
        ep = tasks.run_episode(env, a.first_seed + i, lambda e, s: MimicGenAgent(e, s, _W["src"], a))
    ep["attempt"], ep["seconds"] = i, time.time() - t0
    # how far it got: the number of subtasks whose end signal fired, in order (failure analysis)
    ep["reached"] = 0
    for name, _ in env.subtasks:
        if not np.any(ep.get(f"signal_{name}", False)):
            break
        ep["reached"] += 1
    return ep


# ----------------------------------------------------------------------------------------------
# robomimic-format HDF5: write a demo, read and validate files
# ----------------------------------------------------------------------------------------------
def write_demo(g, ep: dict):
    """Fill an HDF5 group with one episode in robomimic's demo layout (plus our extras)."""
    T = len(ep["actions"])
    g.attrs["num_samples"] = T
    g.attrs["seed"] = int(ep["seed"])
    g.attrs["attempt"] = int(ep["attempt"])
    g.attrs["success"] = bool(ep["success"])
    for k, v in ep.get("info", {}).items():  # provenance (seed demo and segment per subtask)
        g.attrs[k] = v if isinstance(v, str) else np.asarray(v)
    g.create_dataset("actions", data=np.asarray(ep["actions"], dtype=np.float64))
    g.create_dataset("joint_actions", data=np.asarray(ep["joint_actions"], dtype=np.float64))
    g.create_dataset("states", data=np.asarray(ep["states"], dtype=np.float64))
    rewards = np.zeros(T)
    rewards[-1] = float(ep["success"])
    g.create_dataset("rewards", data=rewards)
    dones = np.zeros(T, dtype=np.int64)
    dones[-1] = 1
    g.create_dataset("dones", data=dones)
    for k, v in ep.items():
        if k.startswith("obs_"):
            v = np.asarray(v)
            if v.dtype == np.uint8:  # images: one chunk per frame, light compression
                g.create_dataset(f"obs/{k[4:]}", data=v, chunks=(1, *v.shape[1:]), compression="gzip",
                                 compression_opts=1)
            else:
                g.create_dataset(f"obs/{k[4:]}", data=v.astype(np.float64))
        elif k.startswith("signal_"):
            g.create_dataset(f"subtask_signals/{k[7:]}", data=np.asarray(v, dtype=np.uint8))


def _open_h5(path: str):
    if not os.path.isfile(path):
        raise cli.UsageError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise cli.UsageError(f"{path}: not a readable HDF5 file ({e})")


def list_demos(path: str) -> list:
    """Demo names of a robomimic-format file, in numeric order, after checking the layout."""
    with _open_h5(path) as f:
        if "data" not in f:
            raise cli.UsageError(f"{path}: no 'data' group (not a robomimic-format dataset)")
        names = [n for n in f["data"] if n.startswith("demo_")]
        if not names:
            raise cli.UsageError(f"{path}: 'data' holds no demo_K groups")
        try:
            names.sort(key=lambda n: int(n.split("_")[1]))
        except ValueError:
            raise cli.UsageError(f"{path}: demo group names must be demo_<integer>")
        for n in names:
            g = f["data"][n]
            for key in ("actions", "states"):
                if key not in g:
                    raise cli.UsageError(f"{path}: data/{n} has no '{key}' dataset")
            T = len(g["actions"])
            if len(g["states"]) != T or T == 0:
                raise cli.UsageError(f"{path}: data/{n} has {T} actions and {len(g['states'])} states")
    return names


def check_seed_file(path: str, task: str):
    """A seed-demo file for `generate`: our layout, the same task, and what MimicGen needs."""
    names = list_demos(path)
    need_obs = {"robot0_eef_pos", "robot0_eef_quat"} | {k for p, q in tasks.TASK_CLASSES[task].frames.values()
                                                        for k in (p, q) if k}
    with _open_h5(path) as f:
        file_task = f["data"].attrs.get("task")
        if file_task is not None and file_task != task:
            raise cli.UsageError(f"{path}: seed demos are for task {file_task}, not {task}")
        for n in names:
            g = f["data"][n]
            if g["actions"].shape[1:] != (7,):
                raise cli.UsageError(f"{path}: data/{n}/actions must be 7-D OSC_POSE deltas, "
                                        f"got shape {g['actions'].shape}")
            missing = [k for k in need_obs if k not in g.get("obs", {})]
            missing += [f"subtask_signals/{s}" for s, _ in tasks.TASK_CLASSES[task].subtasks
                        if s not in g.get("subtask_signals", {})]
            if missing:
                raise cli.UsageError(f"{path}: data/{n} lacks {', '.join(sorted(missing))} "
                                        f"(make seed demos with --mode expert or --mode import)")
    return names


def check_import_file(path: str, task: str, domain: str):
    """A robomimic file to import must come from the same scene: its states must fit our model."""
    names = list_demos(path)
    env = tasks.make_env(task, domain)
    dim = len(env.get_state())
    with _open_h5(path) as f:
        for n in names:
            s = f["data"][n]["states"]
            a = f["data"][n]["actions"]
            if s.ndim != 2 or s.shape[1] != dim:
                raise cli.UsageError(f"{path}: data/{n}/states have shape {s.shape}, {task} needs "
                                        f"(T, {dim}): recorded in a different scene?")
            if a.ndim != 2 or a.shape[1] != 7:
                raise cli.UsageError(f"{path}: data/{n}/actions have shape {a.shape}, need (T, 7) "
                                        "OSC_POSE deltas")
            if not (np.isfinite(s[()]).all() and np.isfinite(a[()]).all()):
                raise cli.UsageError(f"{path}: data/{n} holds NaN or inf")
    return names


def import_demo(env, path: str, name: str) -> dict:
    """Recompute one imported demo's observations, joint actions and subtask signals from its
    states (as robomimic's dataset_states_to_obs does): joint_actions[t] = the joint positions of
    state t+1 (what the robot reached) + the gripper command of action t."""
    with h5py.File(path, "r") as f:
        g = f["data"][name]
        states, actions = g["states"][()], g["actions"][()]
        # keep the input's provenance when it has some (a file of this project, re-rendered)
        info = {k: v for k, v in g.attrs.items() if k in ("src_demo", "src_segment", "seed", "imported_from")}
    env.reset(0)
    ep = {"states": states, "actions": actions, "seed": int(info.pop("seed", -1))}
    obs_list, sig_list, q = [], [], []
    for s in states:
        env.set_state(s)
        obs_list.append(env.observe())
        sig_list.append(env.subtask_signals())
        q.append(env.joint_target()[:7])
    q = np.asarray(q)
    ep["joint_actions"] = np.concatenate([np.concatenate([q[1:], q[-1:]]), actions[:, 6:7]], axis=1)
    for k in obs_list[0]:
        ep[f"obs_{k}"] = np.stack([o[k] for o in obs_list])
    for k in sig_list[0]:  # as recorded live: the signal of step t is read after the step (state t+1)
        sig = np.array([s[k] for s in sig_list])
        ep[f"signal_{k}"] = np.concatenate([sig[1:], sig[-1:]])
    ep["success"] = env.success()
    ep["info"] = {"imported_from": f"{os.path.abspath(path)}:{name}", **info}
    return ep


def env_args(a: Args) -> dict:
    """robomimic's env_args: how to rebuild the env the demos were recorded in."""
    import robosuite  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    return {"env_name": tasks.TASK_CLASSES[a.task].robosuite_env, "type": 1,  # 1 = robomimic EnvType.ROBOSUITE_TYPE
            "env_version": robosuite.__version__,
            "env_kwargs": {"robots": "Panda", "controller_configs": tasks.controller_config("osc"),
                           "control_freq": tasks.CONTROL_FREQ, "camera_names": list(a.cameras) if a.images else [],
                           "camera_heights": a.image_size, "camera_widths": a.image_size,
                           "task": a.task, "domain": a.domain, **({"framing": a.framing} if a.images else {})}}


# ----------------------------------------------------------------------------------------------
# a job: attempts in seed order until num_demos successes; parts on disk; final file assembled
# ----------------------------------------------------------------------------------------------
def job_config(a: Args) -> dict:
    """What determines the output; a resumed run must match it."""
    keys = ["mode", "task", "domain", "num_demos", "first_seed", "images", "cameras", "image_size"]
    if a.mode == "expert" and a.task == "NutAssembly":
        keys += ["nut_expert"]
    if a.mode == "generate":
        keys += ["seed_data", "selection", "nn_k", "per_subtask", "action_noise", "interp_speed", "term_offset"]
    if a.mode == "import":
        keys += ["input"]
    if a.images and a.framing != "wide":  # the framing before there were others: "wide"
        keys += ["framing"]
    return {k: getattr(a, k) for k in keys}


def _read_parts(parts: str) -> dict:
    """attempt index -> success, for every complete part file (partial ones never get a name)."""
    done = {}
    for fn in os.listdir(parts):
        if fn.startswith("attempt_") and fn.endswith(".h5"):
            with h5py.File(os.path.join(parts, fn), "r") as f:
                done[int(fn[8:-3])] = bool(f.attrs["success"])
    return done


def _write_part(parts: str, ep: dict):
    path = os.path.join(parts, f"attempt_{ep['attempt']:06d}.h5")
    tmp = path + f".tmp{os.getpid()}"
    kept = bool(ep.get("keep", ep["success"]))
    with h5py.File(tmp, "w") as f:
        f.attrs["success"] = kept    # kept in the dataset (a success, or an imported demo)
        f.attrs["seconds"] = float(ep["seconds"])
        f.attrs["length"] = len(ep["actions"])
        f.attrs["reached"] = int(ep["reached"])
        if kept:
            write_demo(f.create_group("demo"), ep)
    os.replace(tmp, path)


def _kept(done: dict, n: int):
    """The first n successes in attempt order, if every attempt before the n-th is done."""
    ok = sorted(i for i, s in done.items() if s)
    if len(ok) < n:
        return None
    last = ok[n - 1]
    return ok[:n] if all(i in done for i in range(last + 1)) else None


def run_job(a: Args, out: str, desc: str = ""):
    """Run the attempts of one output file (resuming from <out>.parts/) and assemble it."""
    parts = out + ".parts"
    cfg = job_config(a)
    os.makedirs(parts, exist_ok=True)
    cfg_path = os.path.join(parts, "config.json")
    if os.path.exists(cfg_path):
        try:
            cli.check_same_settings(cli.read_json(cfg_path), cfg, f"{parts} (an interrupted run)",
                                       hint="rerun with those, or --overwrite")
        except cli.UsageError as e:
            die(str(e))
    else:
        cli.write_json(cfg_path, cfg)
    done = _read_parts(parts)
    n_total = len(list_demos(a.input)) if a.mode == "import" else None
    n_goal = min(a.num_demos, n_total) if n_total is not None else a.num_demos
    max_attempts = n_total if n_total is not None else (a.max_attempts or 20 * a.num_demos)
    sessions_path = os.path.join(parts, "sessions.json")
    sessions = []   # wall seconds of each run of this job (resumes add up)
    if os.path.exists(sessions_path):
        with open(sessions_path) as f:
            sessions = json.load(f)
    t_start = time.time()
    if done:
        print(f"{desc}: resuming, {sum(done.values())} successes in {len(done)} attempts already done")
    bar = tqdm(total=n_goal, initial=min(sum(done.values()), n_goal), desc=desc, unit="demo", leave=True,
               dynamic_ncols=True, file=sys.stdout)

    sessions.append(0.0)

    def on_result(ep):
        _write_part(parts, ep)
        done[ep["attempt"]] = bool(ep.get("keep", ep["success"]))
        sessions[-1] = time.time() - t_start   # this run's wall time so far, kept across a kill
        cli.write_json(sessions_path, sessions)
        n_ok = sum(done.values())
        bar.n = min(n_ok, n_goal)
        bar.set_postfix(attempts=len(done), rate=f"{n_ok / max(len(done), 1):.2f}", refresh=False)
        bar.refresh()

    todo = (i for i in range(max_attempts) if i not in done)
    if _kept(done, n_goal) is None:
        if a.workers == 1:
            _init_worker(a)
            for i in todo:
                if _kept(done, n_goal) is not None:
                    break
                on_result(_attempt(i))
        else:
            _run_pool(a, todo, done, n_goal, on_result)
    bar.close()
    kept = _kept(done, n_goal)
    sessions[-1] = time.time() - t_start
    cli.write_json(sessions_path, sessions)
    if kept is None:
        die(f"{desc}: only {sum(done.values())} successes in {len(done)} attempts (limit {max_attempts}); "
            f"raise --max-attempts and rerun to continue", code=1)
    _assemble(a, out, parts, kept, attempts=kept[-1] + 1, seconds=float(sum(sessions)))
    shutil.rmtree(parts)


def _run_pool(a: Args, todo, done: dict, n_goal: int, on_result):
    """Attempts on `workers` processes, at most 2 per worker in flight, submitted in seed order."""
    with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=(a,)) as pool:
        flying = set()
        while True:
            # submit more only while the successes done so far cannot settle the kept set
            while len(flying) < 2 * a.workers and sum(done.values()) < n_goal:
                i = next(todo, None)
                if i is None:
                    break
                flying.add(pool.submit(_attempt, i))
            if not flying or _kept(done, n_goal) is not None:
                break
            finished, flying = wait(flying, return_when=FIRST_COMPLETED)
            for fut in finished:
                on_result(fut.result())
        for fut in flying:
            fut.cancel()
        if flying:  # attempts still running are past the kept set: stop their workers instead of
            for proc in list(pool._processes.values()):  # waiting ~1-2 attempts (bench_generate.py)
                proc.terminate()


def _assemble(a: Args, out: str, parts: str, kept: list, attempts: int, seconds: float):
    """Write the final robomimic-format file from the kept parts, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + f".tmp{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        total, lengths = 0, []
        for j, i in enumerate(kept):
            with h5py.File(os.path.join(parts, f"attempt_{i:06d}.h5"), "r") as p:
                p.copy(p["demo"], data, name=f"demo_{j}")
                total += int(p["demo"].attrs["num_samples"])
                lengths.append(int(p["demo"].attrs["num_samples"]))
        data.attrs["total"] = total
        # attempts that failed, by the subtask they failed in (MimicGen reports the same)
        fails, worker_seconds = {}, 0.0
        for i in range(attempts):
            with h5py.File(os.path.join(parts, f"attempt_{i:06d}.h5"), "r") as p:
                worker_seconds += float(p.attrs["seconds"])
                if not p.attrs["success"]:
                    names = [s for s, _ in tasks.TASK_CLASSES[a.task].subtasks]
                    k = names[min(int(p.attrs["reached"]), len(names) - 1)]
                    fails[k] = fails.get(k, 0) + 1
        data.attrs["failed_in_subtask"] = json.dumps(fails)
        data.attrs["worker_seconds"] = worker_seconds   # episode time summed over the counted attempts
        data.attrs["env_args"] = json.dumps(env_args(a))
        data.attrs["task"], data.attrs["domain"] = a.task, a.domain
        data.attrs["domain_params"] = json.dumps(asdict(tasks.get_domain(a.task, a.domain)))
        data.attrs["source"] = {"expert": "scripted_expert", "generate": "mimicgen", "import": "import"}[a.mode]
        data.attrs["num_attempts"] = attempts
        data.attrs["success_rate"] = len(kept) / attempts
        data.attrs["seconds"] = seconds
        data.attrs["config"] = json.dumps(job_config(a))
        data.attrs["machine"] = json.dumps(cli.machine())  # the CPU that made it (cli.PORTABLE_SIMD)
        data.attrs["action_spaces"] = json.dumps({
            "actions": "robosuite OSC_POSE delta: dpos/0.05 m, drot/0.5 rad (axis-angle, world), gripper",
            "joint_actions": "absolute joint positions (7, rad) reached after the step + gripper command"})
        # train/valid split: a seeded permutation (robomimic's split_train_val_from_hdf5 does the same)
        names = [f"demo_{j}" for j in range(len(kept))]
        perm = np.random.default_rng(0).permutation(len(names))
        n_valid = int(round(a.valid_fraction * len(names))) if len(names) > 1 else 0
        f.create_dataset("mask/valid", data=np.array(sorted((names[k] for k in perm[:n_valid]), key=_num), dtype="S"))
        f.create_dataset("mask/train", data=np.array(sorted((names[k] for k in perm[n_valid:]), key=_num), dtype="S"))
    os.replace(tmp, out)
    print(f"wrote {out}: {len(kept)} demos, {total} steps, {len(kept)}/{attempts} attempts succeeded "
          f"({len(kept) / attempts:.0%}), {seconds:.0f} s")


def _num(name: str) -> int:
    return int(name.split("_")[1])


# ----------------------------------------------------------------------------------------------
# --verify: replay stored joint actions from the stored initial states
# ----------------------------------------------------------------------------------------------
_V = {}


def _verify_init(path: str, task: str, domain: str):
    _V.update(path=path, env=tasks.make_env(task, domain, control="joint"))


def _verify_one(name: str) -> bool:
    with h5py.File(_V["path"], "r") as f:
        g = f["data"][name]
        return tasks.replay_joint_actions(_V["env"], g["states"][0], g["joint_actions"][()])


def verify(path: str, workers: int, max_demos: int = 0) -> float:
    names = list_demos(path)
    names = names[:max_demos] if max_demos > 0 else names
    with _open_h5(path) as f:
        task, domain = f["data"].attrs.get("task"), f["data"].attrs.get("domain")
        if task is None or "joint_actions" not in f["data"][names[0]]:
            raise cli.UsageError(f"{path}: not written by this project (no task attr or joint_actions); "
                                    "import it first (--mode import)")
    if workers == 1:
        _verify_init(path, task, domain)
        ok = [_verify_one(n) for n in tqdm(names, desc="verify", file=sys.stdout)]
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_verify_init,
                                 initargs=(path, task, domain)) as pool:
            ok = list(tqdm(pool.map(_verify_one, names), total=len(names), desc="verify", file=sys.stdout))
    rate = float(np.mean(ok))
    print(f"verify {path}: {sum(ok)}/{len(ok)} demos succeed when their joint actions are replayed "
          f"from their initial states ({rate:.0%})")
    return rate


def report(root: str) -> str:
    """One markdown row per dataset file under `root`: the numbers RESULTS.md quotes."""
    rows = ["| file | source | demos | steps | attempts | success rate | failed in subtask | wall s | demos/min |",
            "|---|---|---|---|---|---|---|---|---|"]
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".hdf5"))
    if not paths:
        raise cli.UsageError(f"no .hdf5 files under {root}")
    total_demos, total_sec = 0, 0.0
    for p in paths:
        with _open_h5(p) as f:
            at = f["data"].attrs
            n = len([k for k in f["data"] if k.startswith("demo_")])
            sec = float(at.get("seconds", float("nan")))
            total_demos, total_sec = total_demos + n, total_sec + sec
            rows.append(f"| {os.path.relpath(p, root)} | {at.get('source', '?')} | {n} | {at.get('total', '?')} | "
                        f"{at.get('num_attempts', '?')} | {float(at.get('success_rate', float('nan'))):.3f} | "
                        f"{at.get('failed_in_subtask', '')} | {sec:.0f} | {60 * n / sec:.1f} |")
    return "\n".join(rows) + f"\n\n{len(paths)} files, {total_demos} demos, {total_sec:.0f} s of wall time in all"


# ----------------------------------------------------------------------------------------------
# main: check every input first (exit 2, nothing written), then run
# ----------------------------------------------------------------------------------------------
def default_out(a: Args, root: str = "data") -> str:
    name = {"expert": "seed" if a.domain == "source" else "demos", "generate": "mimicgen", "import": "import"}[a.mode]
    return os.path.join(root, a.task, a.domain, f"{name}_{a.num_demos}.hdf5")


def check_args(a: Args):
    if a.mode not in ("set", "expert", "generate", "import"):
        raise cli.UsageError(f"unknown --mode {a.mode!r}; choose set, expert, generate or import")
    for t in ([a.task] if a.task else []) + (a.set_tasks if a.mode == "set" else []):
        try:
            tasks.get_domain(t, a.domain)
        except tasks.TaskError as e:
            raise cli.UsageError(str(e))
    if a.mode != "set" and not a.task:
        raise cli.UsageError(f"--mode {a.mode} needs --task ({', '.join(tasks.TASK_NAMES)})")
    if a.domain not in tasks.DOMAIN_NAMES + tasks.PART_DOMAINS:
        raise cli.UsageError(f"unknown domain {a.domain!r}")
    for name in ("num_demos", "workers", "image_size", "nn_k", "interp_speed", "set_seeds", "set_source", "set_target"):
        if getattr(a, name) <= 0:
            raise cli.UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if a.framing not in tasks.FRAMINGS:
        raise cli.UsageError(f"unknown --framing {a.framing!r}; choose from {', '.join(tasks.FRAMINGS)}")
    if a.nut_expert not in experts.NUT_EXPERTS:
        raise cli.UsageError(f"unknown --nut-expert {a.nut_expert!r}; choose from {', '.join(experts.NUT_EXPERTS)}")
    if a.selection not in ("nearest", "random"):
        raise cli.UsageError(f"unknown --selection {a.selection!r}; choose nearest or random")
    if len(a.term_offset) != 2 or not 0 <= a.term_offset[0] <= a.term_offset[1]:
        raise cli.UsageError(f"--term-offset must be two integers 0 <= lo <= hi, got {a.term_offset}")
    if not 0 <= a.valid_fraction < 1 or a.action_noise < 0:
        raise cli.UsageError("--valid-fraction must be in [0, 1) and --action-noise >= 0")
    if a.resume and a.overwrite:
        raise cli.UsageError("--resume and --overwrite exclude each other")
    if a.mode == "generate":
        if not a.seed_data:
            raise cli.UsageError("--mode generate needs --seed-data (a file of seed demos)")
        check_seed_file(a.seed_data, a.task)
    if a.mode == "import":
        if not a.input:
            raise cli.UsageError("--mode import needs --input (a robomimic-format HDF5)")
        check_import_file(a.input, a.task, a.domain)
    if a.first_seed < 0 and a.mode in ("expert", "generate"):
        split = "generate" if a.mode == "generate" else "seed" if a.domain == "source" else "target"
        a.first_seed = tasks.SEED_BASE[split]
    if a.mode not in ("set", "import") and a.first_seed < 0:
        raise cli.UsageError("--first-seed must be >= 0")


def check_out(out: str, a: Args) -> bool:
    """True if the job should run. An existing output is an error unless --resume / --overwrite."""
    if os.path.exists(out):
        if a.resume:
            print(f"{out} exists, kept (--resume)")
            return False
        if not a.overwrite:
            raise cli.UsageError(f"{out} exists; pass --resume to keep it or --overwrite to replace it")
    if a.overwrite and os.path.isdir(out + ".parts"):
        shutil.rmtree(out + ".parts")
    return True


def dataset_set(a: Args) -> list:
    """The files of the profile's dataset set, in build order: per task, source seed demos,
    MimicGen source demos, expert demos in each target domain (low-dim); then, after every task's,
    for the image tasks a copy of the training files (not the seeds) with camera images rendered
    from their states (`<name><image suffix>.hdf5`)."""
    jobs, renders = [], []
    for task in ([a.task] if a.task else a.set_tasks):
        base = replace(a, task=task, images=False, first_seed=-1, out="", resume=False, overwrite=False)
        seed = replace(base, mode="expert", domain="source", num_demos=a.set_seeds)
        seed_out = default_out(seed, a.root)
        generate = replace(base, mode="generate", domain="source", num_demos=a.set_source, seed_data=seed_out)
        task_jobs = [(seed, seed_out), (generate, None)]
        task_jobs += [(replace(base, mode="expert", domain=dom, num_demos=a.set_target), None)
                      for dom in tasks.DOMAIN_NAMES[1:]]
        task_jobs = [(j, o or default_out(j, a.root)) for j, o in task_jobs]
        jobs += task_jobs
        if a.images or task in a.set_image_tasks:   # last: rendering is the slow part on a CPU
            renders += [(replace(j, mode="import", input=o, images=True), o[:-len(".hdf5")] + a.image_suffix + ".hdf5")
                        for j, o in task_jobs[1:]]
    return jobs + renders


def main(argv=None):
    a = cli.parse_args(Args, PROFILES, argv, description=__doc__)
    try:
        if a.report:
            print(report(a.report))
            return
        if a.verify:
            if a.workers <= 0:
                raise cli.UsageError(f"--workers must be positive, got {a.workers}")
            verify(a.verify, a.workers, a.verify_demos)
            return
        check_args(a)
        if a.mode != "set":
            out = a.out or default_out(a)
            cli.check_writable(os.path.dirname(out) or ".")
            if check_out(out, a):
                run_job(a, out, desc=f"{a.task}/{a.domain} {a.mode}")
            return
        if a.out:
            raise cli.UsageError("set mode writes under --root; --out is for a single file")
        cli.check_writable(a.root, "--root")
        t0 = time.time()
        for job, out in dataset_set(a):
            if os.path.exists(out):  # set mode: finished files are kept, unfinished ones resume
                print(f"{out} exists, kept")
                continue
            check_args(job)
            run_job(job, out, desc=f"{job.task}/{job.domain} {job.mode}")
        print(f"dataset set under {a.root}/ complete ({time.time() - t0:.0f} s this run)")
    except cli.UsageError as e:
        die(str(e))


if __name__ == "__main__":
    cli.portable_simd()  # the same dataset bits on every x86-64 CPU (cli.PORTABLE_SIMD)
    main()
