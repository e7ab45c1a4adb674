"""Stage 03: success rate of a trained policy in a target domain (paper Sec. 4-5, Fig. 8-10).

    python 03_eval.py --ckpt runs/train/<run>/ckpt.pt                       # the run's target domain
    python 03_eval.py --ckpt runs/train/<run>/ckpt.pt --domain target_physics --trials 200
    python 03_eval.py --ckpt runs/train/<cfg_adda run>/ckpt.pt --guidance -1,-0.5,0,0.5,1   # Fig. 10
    python 03_eval.py --ckpt a/ckpt.pt,b/ckpt.pt --workers 2 --video 3

The policy runs closed loop with a receding horizon (Diffusion Policy): from the last n_obs
observations it predicts a chunk of `horizon` joint targets + gripper (DDIM, the checkpoint's
steps) and executes the first n_action of them, then predicts again. Episodes start from the
evaluation seeds (tasks.SEED_BASE["eval"] + i; `--split valid`: validation seeds, for choosing
recipes), which no training demo used; the policy's
sampling noise is seeded by the episode seed, so a result does not depend on --workers.

Writes runs/eval/<name>/: episodes.jsonl (one line per finished episode: resumable, a rerun
continues with the episodes not yet done), results.json (per checkpoint x domain x guidance:
success rate with a 95% Wilson interval, mean episode length, the subtasks reached, where the
first close command came (tasks.grasp_close), per-episode results; the form
04_analyze.py reads), and videos/*.mp4 with --video K.
"""
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import cv2
import imageio
import numpy as np
import torch
from tqdm import tqdm

import common
import diffusion_policy
import methods
import records
import tasks
from common import UsageError, arg, die, wilson_interval


# ----------------------------------------------------------------------------------------------
# arguments: every default visible here; a profile overrides some (table below)
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    profile: str = "cpu"
    ckpt: list = arg([], "checkpoint(s) from 02_train.py, comma-separated")
    domain: str = arg("", "domain to evaluate in (default: the run's target domain)")
    trials: int = arg(50, "episodes per checkpoint x domain x guidance (paper: 200 in simulation)")
    guidance: list = arg([], "guidance scales lambda, comma-separated (default: the checkpoint's); "
                             "needs a checkpoint trained with a domain label ("
                             + ", ".join(methods.label_methods()) + ")")
    split: str = arg("eval", "initial-state seeds: eval (reported numbers), valid (a range of its "
                             "own, for choosing recipes, checkpoints and hyperparameters) or demo "
                             "(one-off looks, diagnostics, videos)")
    first_seed: int = arg(-1, "first initial-state seed instead of --split's range (-1 = tasks.SEED_BASE[--split])")
    label: str = arg("", "domain label a CFG / CFG-ADDA policy sees: source | target (default: the "
                         "evaluated domain's, i.e. source in the source domain, target elsewhere)")
    sample_steps: int = arg(0, "DDIM steps (0 = the checkpoint's)")
    sampler: str = arg("ddim", "ddim | ddpm (all training steps)")
    n_action: int = arg(0, "actions executed per predicted chunk (0 = the checkpoint's n_action; "
                           "fewer re-plans more often at the same training)")
    workers: int = arg(1, "parallel rollout processes, each with its own env (results do not depend on it)")
    video: int = arg(0, "write an MP4 of the first K episodes of each evaluation")
    video_size: int = arg(256, "video frame size (agentview camera)")
    max_steps: int = arg(0, "cut episodes at this many steps (0 = the task's horizon)")
    render: str = arg("demand", "image policies: render the cameras only at the steps whose observation "
                                "the policy reads (demand: the same episodes, bench/bench_eval.py) or at every step")
    device: str = arg("cpu", "device of the policy in each rollout worker: cpu or cuda (a GPU helps "
                             "image policies; low-dim ones run faster on the CPU than the transfers)")
    out: str = arg("", "output folder (default runs/eval/<run name of the first checkpoint>)")
    overwrite: bool = arg(False, "discard earlier episodes in --out and start over")


PROFILES = {
    "paper": dict(trials=200),  # Sec. 4: 200 trials per checkpoint in simulation
    "cpu": dict(trials=50),
    "smoke": dict(trials=2, max_steps=40, video_size=64),
}


# ----------------------------------------------------------------------------------------------
# the closed loop
# ----------------------------------------------------------------------------------------------
def marked_video(frames: list, success: bool) -> list:
    """Frames with a green (success) or red (failure) bar and label at the top."""
    color = (40, 180, 60) if success else (200, 40, 40)
    out = []
    for f in frames:
        f = f.copy()
        f[:18] = color
        cv2.putText(f, "success" if success else "failure", (4, 13), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (255, 255, 255), 1, cv2.LINE_AA)
        out.append(f)
    return out


class Worker:
    """One process's policies and envs (built on first use), and the episode function."""

    def __init__(self, threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.policies, self.envs = {}, {}

    def policy(self, ckpt, device="cpu"):
        if ckpt not in self.policies:
            self.policies[ckpt] = diffusion_policy.load_policy(ckpt, device)[0]
        return self.policies[ckpt]

    def env(self, task, domain, cameras, filmed, max_steps, control="joint", image_size=84, render="demand",
            framing="wide"):
        key = (task, domain, cameras, filmed, control, image_size, render, framing)
        if key not in self.envs:
            self.envs[key] = tasks.make_env(task, domain, control=control, cameras=cameras, offscreen=filmed,
                                            image_size=image_size, render=render, framing=framing)
        env = self.envs[key]
        env.horizon = min(type(env).horizon, max_steps) if max_steps else type(env).horizon
        return env

    def episode(self, job: dict) -> dict:
        policy = self.policy(job["path"], job["device"])
        cams = tuple(k[:-len(common.IMAGE_SUFFIX)] for k in policy.cfg["image_keys"])
        filmed = bool(job["video_path"])
        env = self.env(job["task"], job["domain"], cams, filmed, job["max_steps"], job["control"],
                       policy.cfg["image_size"] or 84, job["render"], policy.cfg["framing"])  # low-dim: 84 px videos
        frames, agents = [], []

        def make_agent(e, seed):
            label = methods.SOURCE if job["label"] == "source" else methods.TARGET
            agents.append(diffusion_policy.PolicyAgent(policy, seed, job["guidance"], job["sample_steps"],
                                                       job["sampler"], label=label, n_action=job["n_action"],
                                                       gripper_levels=e.gripper_levels))
            if filmed:
                agents[-1].on_act = lambda: frames.append(film(e, job["video_size"]))
            return agents[-1]

        t0 = time.perf_counter()
        ep = tasks.run_episode(env, job["seed"], make_agent, record=True)
        if filmed:
            frames.append(film(env, job["video_size"]))
            write_video(job["video_path"], marked_video(frames, ep["success"]))
        chunk = agents[0].chunk_seconds
        return {"key": job["key"], "digest": job["digest"], "seed": job["seed"], "success": bool(ep["success"]),
                "length": int(ep["length"]), "reached": ep["reached"], "seconds": time.perf_counter() - t0,
                "close": tasks.grasp_close(job["task"], ep),  # where the first close command came
                "nut_path": tasks.nut_path(ep),  # where the nut went (NutAssembly; {} otherwise)
                "final_joint_pos": [round(float(q), 6) for q in env.observe()["robot0_joint_pos"]],
                "chunk_ms": 1000 * float(np.mean(chunk)) if chunk else None}


def film(env, size: int) -> np.ndarray:
    img = env.sim.render(width=size, height=size, camera_name="agentview")
    return np.ascontiguousarray(img[::-1])


def write_video(path: str, frames: list, fps: int = 20):
    tmp = path + ".tmp.mp4"
    imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
    os.replace(tmp, path)


_WORKER = None


def _init_worker(threads):
    global _WORKER
    if threads:  # a pool worker: a killed evaluation leaves no worker behind
        common.exit_with_parent()
    os.environ.setdefault("MUJOCO_GL", "egl")
    _WORKER = Worker(threads)


def _run_job(job):
    return _WORKER.episode(job)


# ----------------------------------------------------------------------------------------------
# evaluations: checkpoints x domains x guidance scales, episodes in seed order, resumable
# ----------------------------------------------------------------------------------------------
RUN_FIELDS = ("task", "target_domain", "method", "arch", "seed")  # an Evaluation's "run": what run it is


@dataclass
class Evaluation:
    """One evaluation (a checkpoint x domain x guidance x label x execution): what each of its
    episodes runs with and, less UNREPORTED, what results.json says of it. The checkpoint is named
    portably (repo-relative; records.portable) with its weights digest, by which 04_analyze.py
    joins evaluations to runs; `path` is for loading only."""
    key: str            # <ckpt>|<domain>|guidance=<g>[|label=..][|n_action=..]: episodes.jsonl's join key
    ckpt: str
    path: str
    device: str
    step: int
    digest: str
    task: str
    domain: str         # the domain evaluated in (the run's own is run["target_domain"])
    guidance: float
    label: str          # the domain label the policy is conditioned on: source | target
    control: str        # the controller that executes its actions: joint targets or OSC commands
    sample_steps: int
    sampler: str
    n_action: int
    as_trained: bool    # the run's own label and execution: the run's number (04_analyze reads only these)
    run: dict           # the run's task, target_domain, method, arch, seed
    mixing_ratio: float
    UNREPORTED: ClassVar[tuple] = ("key", "path", "device")


def plan(a: Args) -> list:
    """One Evaluation per (checkpoint, domain, guidance): everything checked before anything runs."""
    if not a.ckpt:
        raise UsageError("--ckpt is required (a checkpoint from 02_train.py)")
    if a.trials <= 0:
        raise UsageError(f"--trials must be positive, got {a.trials}")
    if a.workers <= 0:
        raise UsageError(f"--workers must be positive, got {a.workers}")
    if a.split not in ("eval", "valid", "demo"):
        raise UsageError(f"--split must be eval, valid or demo, got {a.split!r}")
    if a.first_seed >= 0 and a.split != "eval":
        raise UsageError(f"--first-seed and --split {a.split} both choose the seeds: give one of them")
    if a.device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, got {a.device!r}")
    if a.render not in tasks.RENDER_MODES:
        raise UsageError(f"--render must be {' or '.join(tasks.RENDER_MODES)}, got {a.render!r}")
    if a.device == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no GPU is visible to torch here")
    if a.label not in ("", "source", "target"):
        raise UsageError(f"--label must be source or target, got {a.label!r}")
    if a.sampler not in ("ddim", "ddpm"):
        raise UsageError(f"--sampler must be ddim or ddpm, got {a.sampler!r}")
    evals = []
    for ckpt in a.ckpt:
        policy, cfg, step = diffusion_policy.load_policy(ckpt)
        digest = diffusion_policy.weights_digest(policy)
        task = cfg["args"]["task"]
        domain = a.domain or cfg["args"]["target_domain"]
        try:
            tasks.get_domain(task, domain)
        except tasks.TaskError as e:
            raise UsageError(str(e))
        labelled = cfg["model"]["use_label"]
        if a.guidance and not labelled:
            raise UsageError(f"--guidance needs a checkpoint trained with a domain label "
                             f"({', '.join(methods.label_methods())}); {ckpt} was trained with {cfg['args']['method']}")
        try:
            scales = [float(g) for g in a.guidance] or [cfg.get("guidance_scale") if labelled else None]
        except ValueError:
            raise UsageError(f"--guidance takes numbers, got {','.join(a.guidance)}")
        steps = a.sample_steps or cfg["model"]["sample_steps"]
        if not 1 <= steps <= cfg["model"]["T"]:
            raise UsageError(f"--sample-steps must be in [1, {cfg['model']['T']}], got {steps}")
        if not 0 <= a.n_action <= cfg["model"]["horizon"]:
            raise UsageError(f"--n-action must be in [0, {cfg['model']['horizon']}], got {a.n_action}")
        n_action = a.n_action or cfg["model"]["n_action"]
        own = "source" if domain == "source" else "target"  # the evaluated domain's label
        label = a.label or own
        tag = "" if label == own else f"|label={label}"  # keys of default-label runs stay as before
        tag += "" if n_action == cfg["model"]["n_action"] else f"|n_action={n_action}"
        for g in scales:
            evals.append(Evaluation(key=f"{records.portable(ckpt)}|{domain}|guidance={g}{tag}",
                                    ckpt=records.portable(ckpt), path=os.path.abspath(ckpt), device=a.device,
                                    step=step, digest=digest, task=task, domain=domain, guidance=g, label=label,
                                    control=common.ACTION_SPACES[cfg["model"]["action_space"]][1],
                                    sample_steps=steps, sampler=a.sampler, n_action=n_action, as_trained=not tag,
                                    run={k: cfg["args"][k] for k in RUN_FIELDS},
                                    mixing_ratio=cfg["mixing_ratio"]))
    return evals


def make_job(ev: "Evaluation", seed: int, video_path: str = "", video_size: int = 256, max_steps: int = 0,
             render: str = "demand") -> dict:
    """One episode of evaluation `ev`: what Worker.episode needs (a dict: it crosses to the workers)."""
    return {**asdict(ev), "seed": seed, "video_path": video_path, "video_size": video_size, "max_steps": max_steps,
            "render": render}


def read_episodes(path: str) -> dict:
    done = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that episode runs again
                    continue
                done[(r["key"], r["seed"])] = r
    return done


def summarize(evals: list, done: dict, seeds: list, settings: dict) -> dict:
    out = {"settings": settings, "evaluations": {}}
    for ev in evals:
        eps = [done[(ev.key, s)] for s in seeds if (ev.key, s) in done]
        k, n = sum(e["success"] for e in eps), len(eps)
        lo, hi = wilson_interval(k, n)
        chunk = [e["chunk_ms"] for e in eps if e.get("chunk_ms") is not None]
        out["evaluations"][ev.key] = {
            **{k: v for k, v in asdict(ev).items() if k not in Evaluation.UNREPORTED},
            "trials": n, "successes": k, "success_rate": k / n if n else None, "wilson95": [lo, hi],
            "mean_length": float(np.mean([e["length"] for e in eps])) if eps else None,
            "chunk_ms": float(np.mean(chunk)) if chunk else None,
            # where episodes stop: the fraction that reached each subtask (tasks.py's signals)
            "reached": {s: float(np.mean([(e.get("reached") or {}).get(s) is not None for e in eps]))
                        for s in (eps[-1].get("reached") or {})} if eps else {},
            # where the first close command came (tasks.grasp_close), mean over successes / failures
            "close": {o: c for o, c in ((o, tasks.mean_close([e.get("close") for e in eps if e["success"] == won]))
                                        for o, won in (("success", True), ("failure", False))) if c},
            "episodes": [{x: e[x] for x in ("seed", "success", "length")} for e in eps]}
    return out


def evaluate(a: Args) -> str:
    evals = plan(a)
    first = a.first_seed if a.first_seed >= 0 else tasks.SEED_BASE[a.split]
    seeds = list(range(first, first + a.trials))
    out = a.out or os.path.join("runs", "eval", os.path.basename(os.path.dirname(evals[0].ckpt)))
    common.check_writable(out)
    settings = {"first_seed": first, "sampler": a.sampler, "max_steps": a.max_steps}
    ep_path = os.path.join(out, "episodes.jsonl")
    set_path = os.path.join(out, "settings.json")
    if os.path.exists(set_path) and not a.overwrite:
        common.check_same_settings(common.read_json(set_path), settings, out)
    if a.overwrite:
        for f in (ep_path, set_path, os.path.join(out, "results.json")):
            if os.path.exists(f):
                os.remove(f)
    done = read_episodes(ep_path)
    for ev in evals:  # a checkpoint trained again at the same path must not inherit old episodes
        if any(k == ev.key and r.get("digest", ev.digest) != ev.digest for (k, _), r in done.items()):
            raise UsageError(f"{out} holds episodes of other weights at {ev.ckpt} (the checkpoint "
                             f"changed since they ran); --overwrite to start over or another --out")
    adopt_moved_episodes(evals, done)
    os.makedirs(out, exist_ok=True)
    common.write_json(set_path, settings)
    jobs = []
    for ev in evals:
        for i, s in enumerate(seeds):
            if (ev.key, s) in done:
                continue
            video = ""
            if i < a.video:
                os.makedirs(os.path.join(out, "videos"), exist_ok=True)
                tag = f"{os.path.basename(os.path.dirname(ev.path))}_{ev.domain}_g{ev.guidance}"
                video = os.path.join(out, "videos", f"{tag}_seed{s}.mp4")
            jobs.append(make_job(ev, s, video, a.video_size, a.max_steps, a.render))
    print(f"{len(evals)} evaluation(s) x {len(seeds)} episodes: {len(jobs)} to run, "
          f"{len(evals) * len(seeds) - len(jobs)} done before -> {out}")
    run_jobs(jobs, a.workers, ep_path, done)
    if a.video and jobs:
        print(f"videos: {os.path.join(out, 'videos')}/")
    results = summarize(evals, done, seeds, settings)
    common.write_json(os.path.join(out, "results.json"), results)
    for r in results["evaluations"].values():
        lo, hi = r["wilson95"]
        g = "" if r["guidance"] is None else f", guidance {r['guidance']:g}"
        print(f"{r['run']['method']} w={r['mixing_ratio']:.3g} step {r['step']} in {r['domain']}{g}: "
              f"{r['successes']}/{r['trials']} = {r['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}), "
              f"mean length {r['mean_length']:.0f}"
              + "".join(f", {s} reached {v:.2f}" for s, v in r["reached"].items())
              + "".join(f"; close in {o}: {c['dz_mm']:.1f} mm above the grasp point, moving {c['speed_mm']:.1f} mm/step"
                        for o, c in r["close"].items()))
    return out


def adopt_moved_episodes(evals: list, done: dict):
    """Episodes keyed by another path but run with the same weights (same digest, domain,
    guidance and label) count as done: a checkpoint moved (e.g. committed under results/) resumes
    its evaluation instead of starting it over."""
    for ev in evals:
        rest = ev.key.split("|", 1)[1]
        for (k, s), r in list(done.items()):
            if k != ev.key and k.split("|", 1)[1] == rest and r.get("digest") == ev.digest:
                done.setdefault((ev.key, s), {**r, "key": ev.key})


def run_jobs(jobs: list, workers: int, ep_path: str, done: dict):
    """Episodes in job order (whatever the number of workers), each appended to episodes.jsonl
    as soon as it and every earlier one are finished."""
    bar = tqdm(total=len(jobs), desc="episodes", dynamic_ncols=True)
    succ = 0

    def record(r):
        nonlocal succ
        with open(ep_path, "a") as f:
            f.write(json.dumps(r) + "\n")
        done[(r["key"], r["seed"])] = r
        succ += r["success"]
        bar.update(1)
        bar.set_postfix(success=f"{succ}/{bar.n}")

    if workers == 1 or len(jobs) <= 1:
        _init_worker(0)
        for job in jobs:
            record(_run_job(job))
    else:
        with mp.get_context("spawn").Pool(workers, _init_worker, (1,)) as pool:
            for r in pool.imap(_run_job, jobs, chunksize=1):
                record(r)
    bar.close()


def main(argv=None):
    a = common.parse_args(Args, PROFILES, argv, description=__doc__)
    # SIGTERM (study.py --minutes, a scheduler's time limit) unwinds like an exit, so the rollout
    # pool's workers are ended with it; finished episodes are already in episodes.jsonl
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
    try:
        evaluate(a)
    except UsageError as e:
        die(str(e))


if __name__ == "__main__":
    main()
