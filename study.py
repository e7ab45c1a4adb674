"""The study runner: a plan of training runs and their evaluations, run resumably, here or on SLURM.

    python study.py plans/smoke.toml --dry-run          # the expanded plan and its CPU-hours
    python study.py plans/smoke.toml                    # run it here (local pool)
    python study.py plans/nut_study.toml --claim C8 --dry-run  # one claim's runs and what they need
    python study.py plans/nut_study.toml --launcher slurm --slurm-partition gpu --slurm-gpus 1

A plan (TOML) is a table of runs; each [[run]] names 02_train.py's settings (task, method, ratio,
seed, target_name / source_name for N:M, arch, extra flags, where "{results}" stands for --results)
and its evaluations (domain, episodes, guidance); a list-valued method, ratio or seed expands to one
run per value; [defaults] fills what a run leaves out. Each run is one chain of commands:

    02_train.py ... --out <runs>/train/<run> --resume        (a half-finished run resumes)
    records.collect_run -> <results>/train/<run>/            (config, metrics, EMA ckpt, features)
    03_eval.py --ckpt <results>/train/<run>/ckpt.pt --out <results>/eval/<eval>   (episode-resumable)

A finished run (its record under <results>/train with run.json final) is not trained again, an
evaluation continues with the episodes it lacks, so the same command after a kill, or on a new
machine after `make data`, picks up where the work stopped; outputs land under results/ as each
run finishes, ready to commit. --minutes M (local pool) fits the work into a session: training starts
only if the cost model says it ends within M minutes, evaluations stop at M (episodes resume).
Scheduling follows bench/bench_threads.py (RESULTS "Speed", this
2-core machine): two 1-thread runs side by side train 1.29x the samples of one 2-thread run
alone, a 2-thread run beside rollouts stalls (under 25 steps in 75 s) unless OpenMP threads sleep
when they wait, and a 1-thread run beside rollouts keeps 0.67x. So by default two chains run side
by side (--jobs 2) with cores/2 threads each and OMP_WAIT_POLICY=PASSIVE in every job; --jobs 1
gives one run all cores (it finishes sooner, the study later). One run on several GPUs stays
torchrun's (02_train.py's docstring).
"""
import argparse
import contextlib
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import cli
import common
import methods
import tasks
import train_config

REPO = os.path.dirname(os.path.abspath(__file__))

# Cost model of --dry-run (RESULTS "Speed", this 2-core machine): a 1-thread cpu-profile training
# run beside another job trains ~745 samples/s (bench/bench_threads.py: two side by side, 1,491
# in all); rollouts take ~3.6 s per episode per core (200 episodes in ~12 min on 2 workers).
TRAIN_SAMPLES_PER_CPU_S = 745.0
# Image profiles train slower per sample: cpu_img (one 64-px camera, compiled) 839 samples/s with 2
# threads alone (the image study's first run, RESULTS "The instrument"), ~420 per CPU-second.
TRAIN_SAMPLES_PER_CPU_S_BY_PROFILE = {"cpu_img": 420.0}
EVAL_CPU_S_PER_EPISODE = 7.2
RUN_KEYS = ("profile", "task", "target_domain", "method", "ratio", "seed", "arch", "target_name",
            "source_name", "steps", "flags", "name", "n_target", "n_source", "claims", "control")


@dataclass
class Evaluation:
    domain: str = ""        # empty: the run's target domain
    episodes: int = 200
    guidance: list = field(default_factory=list)
    name: str = ""          # folder under <results>/eval (default <run>, or <run>_in_<domain>)


@dataclass
class Run:
    name: str
    train: list             # the 02_train.py argument list
    steps: int
    batch: int
    evals: list
    eval_profile: str = "cpu"  # 03_eval.py's profile (smoke: episodes cut at 40 steps)
    claims: list = field(default_factory=list)  # the paper's claims it serves (C2 ... C8): --claim
    control: str = ""       # what the run controls for (run.json "control": the analysis keeps it out of
                            # the headline tables and uses it in that comparison only)
    rate: float = TRAIN_SAMPLES_PER_CPU_S  # the cost model's training samples per CPU-second (its profile's)


class PlanError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------
# a plan: TOML -> runs
# ----------------------------------------------------------------------------------------------
def ratio_of(method: str, ratio, n_target: int, n_source: int) -> float:
    """The mixing ratio 02_train.py will use (for the run's name): fixed by the method or resolved."""
    fixed = methods.METHODS[method].ratio
    return fixed if fixed is not None else common.resolve_ratio(str(ratio), n_target, n_source)


def expand(plan: dict) -> list:
    """Every [[run]] with its list-valued method / ratio / seed expanded, [defaults] filled in."""
    bad = sorted(set(plan) - {"defaults", "run"})
    if bad:
        raise PlanError(f"unknown table(s) {', '.join(bad)} (a plan has [defaults] and [[run]] tables)")
    if not plan.get("run"):
        raise PlanError("no [[run]] in the plan")
    defaults = plan.get("defaults", {})
    runs = []
    for i, spec in enumerate(plan.get("run", [])):
        spec = {**defaults, **spec}
        bad = sorted(set(spec) - set(RUN_KEYS) - {"eval"})
        if bad:
            raise PlanError(f"run {i + 1}: unknown field(s) {', '.join(bad)} (known: {', '.join(RUN_KEYS)}, eval)")
        names, ratios, seeds = (v if isinstance(v, list) else [v] for v in
                                (spec.get("method"), spec.get("ratio", "auto"), spec.get("seed", 0)))
        for method in names:
            if method not in methods.METHODS:
                raise PlanError(f"run {i + 1}: unknown method {method!r}")
        if len(names) * len(ratios) * len(seeds) > 1 and spec.get("name"):
            raise PlanError(f"run {i + 1}: a name given to a list of runs (name one run, or let names "
                            f"follow 02_train.py)")
        for method, ratio, seed in itertools.product(names, ratios, seeds):
            runs.append(make_run({**spec, "method": method, "ratio": ratio, "seed": seed}))
    for what, names in (("runs", [r.name for r in runs]), ("evaluations", [e.name for r in runs for e in r.evals])):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise PlanError(f"two {what} of the plan have the same name: {', '.join(dup)} (give one a name)")
    return runs


def make_run(s: dict) -> Run:
    profile, task = s.get("profile", "cpu"), s.get("task", "NutAssembly")
    domain, method, arch = s.get("target_domain", "target_visual_physics"), s["method"], s.get("arch", "encdec")
    check_names(profile, task, domain)
    train = ["--profile", profile, "--task", task, "--target-domain", domain, "--method", method,
             "--seed", str(s["seed"]), "--arch", arch]
    if common_ratio(method):
        train += ["--ratio", str(s["ratio"])]
    for k in ("target_name", "source_name"):
        if k in s:
            train += [f"--{k.replace('_', '-')}", str(s[k])]
    if "steps" in s:
        train += ["--steps", str(s["steps"])]
    train += [str(x) for x in s.get("flags", [])]
    a = stage_args(train, s.get("name") or method)  # 02_train.py's own parser: one source of its settings
    n_t, n_s = (int(s[k]) if k in s else demos_in(name, k) for k, name in
                (("n_target", a.target_name), ("n_source", a.source_name)))
    try:
        w = ratio_of(method, s["ratio"], n_t, n_s)
    except Exception as e:
        raise PlanError(f"{method}: ratio {s['ratio']!r}: {e}")
    name = s.get("name") or train_config.run_name(a, w)
    steps, batch = a.steps, a.batch_size
    evals = [make_evaluation(e, name, domain) for e in s.get("eval", [{}])]
    claims = s.get("claims", [])
    if not isinstance(claims, list) or not all(re.fullmatch(r"C\d+", str(c)) for c in claims):
        raise PlanError(f"{name}: claims must be a list like [\"C6\", \"C7\"], got {claims!r}")
    if not isinstance(s.get("control", ""), str):
        raise PlanError(f"{name}: control must be a sentence (what the run controls for), got {s['control']!r}")
    return Run(name=name, train=train, steps=steps, batch=batch, evals=evals,
               eval_profile=profile if profile in ("smoke", "paper") else "cpu", claims=claims,
               control=s.get("control", ""),
               rate=TRAIN_SAMPLES_PER_CPU_S_BY_PROFILE.get(profile, TRAIN_SAMPLES_PER_CPU_S))


def demos_in(file_name: str, key: str) -> int:
    """The demo count a dataset set's file name carries (demos_50, mimicgen_500: 01_generate_data.py's
    names), for the run's name before its data exist; other names need the plan's n_target / n_source."""
    m = re.fullmatch(r"[a-z]+_(\d+)", file_name)
    if not m:
        raise PlanError(f"{file_name}: give {key} in the plan (the name does not carry the demo count)")
    return int(m.group(1))


def stage_args(train: list, run: str) -> train_config.Args:
    """The settings 02_train.py resolves from this argument list (its profile, then the flags): the
    run's name, steps and batch come from them, never from a copy. A flag it refuses: PlanError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.parse_args(train_config.Args, train_config.PROFILES, train)
    except SystemExit:
        raise PlanError(f"{run}: 02_train.py refuses its flags: {err.getvalue().strip().removeprefix('error: ')}")


def data_key(a: train_config.Args) -> tuple:
    """What fixes a run's data digests: its dataset files and the keys it loads from them."""
    return (a.task, a.target_domain, a.target_name, a.source_name, a.target_data, a.source_data, a.images,
            a.image_suffix, tuple(a.image_keys), tuple(a.obs_keys), a.obs_set, a.action_space, a.max_demos)


def check_data(plan: list, runs: list, results: str, data_root: str):
    """PlanError (one line) when a run about to train would read data whose digests differ from
    every pair the plan's committed runs of the same datasets trained on: the same command makes
    other bits on another CPU or commit (docs/datasets.md), and one comparison must not mix them
    unawares. Data not made yet is 02_train.py's to report."""
    seen = {}
    for r in plan:
        path = os.path.join(results, "train", r.name, "config.json")
        if os.path.exists(path):
            d = common.read_json(path).get("data", {})
            pair = (d.get("target", {}).get("digest"), d.get("source", {}).get("digest"))
            seen.setdefault(data_key(stage_args(r.train, r.name)), set()).add(pair)
    digests = {}
    for r in runs:
        a = stage_args(r.train + ["--data-root", data_root], r.name)
        want = seen.get(data_key(a))
        if run_done(r, results) or not want:
            continue
        paths = train_config.data_paths(a)
        if not all(os.path.isfile(p) for p in paths):
            continue
        if paths not in digests:
            lowdim, images, action = train_config.data_keys(a, paths[0])
            digests[paths] = tuple(common.load_demos(p, lowdim + images, 1, 1, action_key=action).digest for p in paths)
        if digests[paths] not in want:
            short = lambda pair: "/".join(x[:8] for x in pair)  # noqa: E731
            raise PlanError(f"{r.name}: the data under {data_root} has digests {short(digests[paths])}, the plan's "
                            f"committed runs trained on {', '.join(short(w) for w in sorted(want))} (made on another "
                            "CPU or commit? docs/datasets.md); --allow-new-data trains on it anyway")


def check_names(profile: str, task: str, domain: str, what: str = "target_domain"):
    """PlanError (one line) for a profile, task or domain 02_train.py / 03_eval.py would refuse."""
    if profile not in train_config.PROFILES:
        raise PlanError(f"unknown profile {profile!r}; choose from {', '.join(train_config.PROFILES)}")
    if task not in tasks.TASK_NAMES:
        raise PlanError(f"unknown task {task!r}; choose from {', '.join(tasks.TASK_NAMES)}")
    if domain not in tasks.DOMAIN_NAMES + tasks.PART_DOMAINS:
        raise PlanError(f"unknown {what} {domain!r}; choose from {', '.join(tasks.DOMAIN_NAMES + tasks.PART_DOMAINS)}")


def make_evaluation(e: dict, run: str, domain: str) -> Evaluation:
    known = [f.name for f in fields(Evaluation)]
    bad = sorted(set(e) - set(known))
    if bad:
        raise PlanError(f"{run}: unknown eval field(s) {', '.join(bad)} (known: {', '.join(known)})")
    ev = Evaluation(**e)
    if ev.domain:
        check_names("cpu", "NutAssembly", ev.domain, "eval domain")
    if not isinstance(ev.episodes, int) or ev.episodes <= 0:
        raise PlanError(f"{run}: eval episodes must be a positive integer, got {ev.episodes!r}")
    ev.name = ev.name or (run if not ev.domain or ev.domain == domain else f"{run}_in_{ev.domain}")
    return ev


def common_ratio(method: str) -> bool:
    return methods.METHODS[method].ratio is None


def load_plan(path: str) -> list:
    if not os.path.isfile(path):
        raise PlanError(f"plan not found: {path}")
    try:
        with open(path, "rb") as f:
            return expand(tomllib.load(f))
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{path}: not a TOML plan ({e})")


def select(runs: list, claim: str = "", only: str = "") -> list:
    """The runs tagged with `claim` and every run of the plan they need (transitively), then those
    whose name contains one of `only`'s comma-separated parts; PlanError when none is left."""
    if claim:
        by_name, picked = {r.name: r for r in runs}, []
        todo = [r for r in runs if claim in r.claims]
        if not todo:
            tags = sorted({c for r in runs for c in r.claims})
            raise PlanError(f"no run of the plan serves claim {claim!r} (tagged: {', '.join(tags) or 'none'})")
        while todo:
            r = todo.pop()
            if r.name not in {x.name for x in picked}:
                picked.append(r)
                todo += [by_name[d] for d in needs(r) if d in by_name]
        runs = [r for r in runs if r.name in {x.name for x in picked}]  # in plan order
    if only:
        parts = only.split(",")
        runs = [r for r in runs if any(o in r.name for o in parts)]
        if not runs:
            raise PlanError(f"no run of the plan matches --only {only!r}")
    return runs


def needs(run: Run) -> list:
    """The runs whose collected outputs this run's training reads ("{results}/train/<name>/", e.g.
    --init-from a pre-trained checkpoint: App. D.4's fine-tuning)."""
    return sorted({m for x in run.train for m in re.findall(r"\{results\}/train/([^/]+)/", x)})


def waves(runs: list, results: str = "") -> list:
    """The plan in waves: a run goes after every run of the plan it needs that is not finished
    under results/ yet (PlanError on a cycle)."""
    names = {r.name for r in runs if not (results and run_done(r, results))}
    level = {}

    def depth(r, seen=()):
        if r.name in seen:
            raise PlanError(f"runs that need each other: {' -> '.join(seen + (r.name,))}")
        if r.name not in level:
            deps = [d for d in needs(r) if d in names]
            level[r.name] = 1 + max((depth(next(x for x in runs if x.name == d), seen + (r.name,)) for d in deps),
                                    default=-1)
        return level[r.name]
    for r in runs:
        depth(r)
    return [[r for r in runs if level[r.name] == k] for k in range(max(level.values(), default=-1) + 1)]


# ----------------------------------------------------------------------------------------------
# what is done, what it costs
# ----------------------------------------------------------------------------------------------
def run_done(run: Run, results: str) -> bool:
    rec = os.path.join(results, "train", run.name, "run.json")
    return os.path.exists(rec) and json.load(open(rec)).get("final", False)


def train_progress(run: Run, runs_dir: str, results: str) -> int:
    """Training steps already made (finished: all of them)."""
    if run_done(run, results):
        return run.steps
    m = os.path.join(runs_dir, "train", run.name, "metrics.jsonl")
    if not os.path.exists(m):
        return 0
    steps = []
    with open(m) as f:
        for x in f:
            try:
                steps.append(json.loads(x)["step"])
            except (json.JSONDecodeError, KeyError):  # a line cut by a stop: 02_train.py --resume drops it
                continue
    return steps[-1] if steps else 0


def episodes_done(ev: Evaluation, results: str) -> int:
    """Episodes of this evaluation already run: episodes.jsonl's lines, or, for an evaluation
    committed with its results.json only (older records), the trials it reports."""
    p = os.path.join(results, "eval", ev.name, "episodes.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            return sum(1 for x in f if x.strip())
    r = os.path.join(results, "eval", ev.name, "results.json")
    if os.path.exists(r):
        with open(r) as f:
            return sum(e["trials"] for e in json.load(f)["evaluations"].values() if e.get("as_trained", True))
    return 0


def eval_done(ev: Evaluation, results: str) -> bool:
    return episodes_done(ev, results) >= ev.episodes * max(1, len(ev.guidance))


def cpu_hours(run: Run, runs_dir: str, results: str, rate: float = 0, episode_s: float = 0) -> tuple:
    """(CPU-hours left, CPU-hours in all) of one run: training + its evaluations, at `rate` training
    samples per CPU-second and `episode_s` CPU-seconds per episode (default: the cost model's)."""
    rate, episode_s = rate or run.rate, episode_s or EVAL_CPU_S_PER_EPISODE
    left_steps = run.steps - train_progress(run, runs_dir, results)
    total = run.steps * run.batch / rate
    left = left_steps * run.batch / rate
    for ev in run.evals:
        n = ev.episodes * max(1, len(ev.guidance))
        total += n * episode_s
        left += max(0, n - episodes_done(ev, results)) * episode_s
    return left / 3600, total / 3600


def print_plan(runs: list, runs_dir: str, results: str, cores: int, rate: float = 0, episode_s: float = 0):
    tot_left = tot = 0.0
    print(f"{'run':<70} {'steps':>6} {'evals':<28} {'CPU-h left / all':>16}")
    for r in runs:
        left, all_ = cpu_hours(r, runs_dir, results, rate, episode_s)
        tot_left, tot = tot_left + left, tot + all_
        evs = ", ".join(f"{e.domain or 'target'}x{e.episodes}" + (f" g{len(e.guidance)}" if e.guidance else "")
                        for e in r.evals)
        print(f"{r.name:<70} {r.steps:>6} {evs:<28} {left:7.2f} / {all_:6.2f}")
        print(f"    02_train.py {' '.join(r.train)}")
    print(f"{len(runs)} runs: {tot_left:.1f} of {tot:.1f} CPU-hours left, ~{tot_left / cores:.1f} h on {cores} cores")


# ----------------------------------------------------------------------------------------------
# one run's chain: train -> collect -> evaluate (each step skips what is done)
# ----------------------------------------------------------------------------------------------
def thread_env(threads: int) -> dict:
    """A job's environment: its torch / OpenMP threads, and OpenMP threads that sleep instead of
    spinning when they wait (bench/bench_threads.py: spinning stalls steps on shared cores)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
               MPLBACKEND="Agg")
    return env


def sh(cmd: list, env: dict, log, deadline: float = None) -> bool:
    """Run one command of a chain; False when the deadline stopped it (SIGTERM: 03_eval.py ends its
    rollout workers; an evaluation keeps the episodes it committed and resumes from them). The command
    stays in the runner's process group, so killing the runner's group kills it too."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        rc = p.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.write(f"stopped at the deadline: {' '.join(cmd)}\n")
        return False
    if rc:
        raise RuntimeError(f"exit {rc}: {' '.join(cmd)} (log: {log.name})")
    return True


def train_minutes(run: Run, runs_dir: str, results: str, threads: int, rate: float = 0) -> float:
    """Wall minutes the run's training still needs at `rate` samples/s (default: the cost model's
    rate per thread)."""
    left = run.steps - train_progress(run, runs_dir, results)
    return left * run.batch / (rate or run.rate * threads) / 60


def mark_control(run: Run, results: str):
    """A control run's record says what it controls for (run.json "control", records.superseded_by)."""
    path = os.path.join(results, "train", run.name, "run.json")
    if run.control and os.path.exists(path):
        rec = common.read_json(path)
        if rec.get("control") != run.control:
            common.write_json(path, {**rec, "control": run.control})


def run_chain(run: Run, runs_dir: str, results: str, data_root: str, threads: int, workers: int,
              python: str = sys.executable, deadline: float = None, rate: float = 0, fill: bool = False) -> str:
    """Train (resuming), collect into results/, evaluate (resuming). Returns the run's name. With a
    deadline (time.time() seconds), training starts only if the cost model says it ends before it,
    and evaluations stop at it, so a session ends with every started training run finished; with
    `fill`, a training that would not end starts anyway (its slot would idle otherwise) and is
    stopped at the deadline: it resumes from its last checkpoint (runs/train/<run>/ckpt.pt) when
    the plan runs again, or, where runs/ did not survive, starts over (only idle time was spent)."""
    env = thread_env(threads)
    os.makedirs(os.path.join(runs_dir, "logs"), exist_ok=True)
    with open(os.path.join(runs_dir, "logs", f"{run.name}.log"), "a") as log:
        out = os.path.join(runs_dir, "train", run.name)
        if not run_done(run, results):
            need = train_minutes(run, runs_dir, results, threads, rate)
            late = deadline is not None and time.time() + need * 60 > deadline
            if late and (not fill or time.time() >= deadline):
                return f"{run.name} (deferred: training needs ~{need:.0f} min, "\
                       f"{max(0, deadline - time.time()) / 60:.0f} left before --minutes)"
            train = [x.replace("{results}", results) for x in run.train]  # e.g. --init-from {results}/train/...
            if not sh([python, "02_train.py", *train, "--data-root", data_root, "--out", out, "--resume"], env, log,
                      deadline if late else None):
                return f"{run.name} (training stopped at --minutes at step ~{train_progress(run, runs_dir, results)}:"\
                       f" it resumes from its last checkpoint)"
            sh([python, "records.py", "collect-into", results, out], env, log)
        mark_control(run, results)
        ckpt = os.path.join(results, "train", run.name, "ckpt.pt")
        for ev in run.evals:
            if eval_done(ev, results):
                continue
            if deadline is not None and time.time() >= deadline:
                return f"{run.name} (evaluation {ev.name} deferred: --minutes reached)"
            cmd = [python, "03_eval.py", "--profile", run.eval_profile, "--ckpt", ckpt, "--trials", str(ev.episodes),
                   "--workers", str(workers),
                   "--out", os.path.join(results, "eval", ev.name)]
            cmd += ["--domain", ev.domain] if ev.domain else []
            cmd += [f"--guidance={','.join(str(g) for g in ev.guidance)}"] if ev.guidance else []
            if not sh(cmd, env, log, deadline):
                return f"{run.name} (evaluation {ev.name} stopped at --minutes: {episodes_done(ev, results)} episodes)"
    return run.name


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
def launch_local(runs: list, a, cores: int):
    """A pool of --jobs chains on this machine, cores split among them; a run that needs another
    (waves) starts after it."""
    threads = max(1, cores // a.jobs)
    workers = max(1, cores // a.jobs)
    deadline = time.time() + a.minutes * 60 if a.minutes else None
    for wave in waves(runs, a.results):
        with ThreadPoolExecutor(a.jobs) as pool:
            futs = [pool.submit(run_chain, r, a.runs_dir, a.results, a.data_root, threads, workers,
                                deadline=deadline, rate=a.train_rate, fill=a.fill) for r in wave]
            for f in futs:
                print(f"done: {f.result()}", flush=True)


def launch_submitit(runs: list, a):
    """One SLURM job per run through submitit (or its local executor, --launcher submitit-local)."""
    import submitit  # noqa: PLC0415 (optional: only the SLURM and submitit-local launchers need it)
    folder = os.path.join(a.runs_dir, "submitit")
    if a.launcher == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(timeout_min=a.slurm_minutes, cpus_per_task=a.slurm_cpus, slurm_partition=a.slurm_partition,
                             gpus_per_node=a.slurm_gpus, name="cotrain-study")
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=a.slurm_minutes)
    threads = a.slurm_cpus if a.launcher == "slurm" else max(1, (os.cpu_count() or 2) // a.jobs)
    jobs, ids = [], {}
    for wave in waves(runs, a.results):
        for i in range(0, len(wave), a.jobs if a.launcher != "slurm" else len(wave)):  # local: --jobs at a time
            batch = []
            for r in wave[i:i + a.jobs] if a.launcher != "slurm" else wave:
                after = [ids[d] for d in needs(r) if d in ids]
                if a.launcher == "slurm":  # a run that needs another starts when that job has ended well
                    ex.update_parameters(slurm_additional_parameters={"dependency": "afterok:" + ":".join(after)}
                                         if after else {})
                batch.append(ex.submit(run_chain, r, os.path.abspath(a.runs_dir), os.path.abspath(a.results),
                                       os.path.abspath(a.data_root), threads, threads))
                ids[r.name] = batch[-1].job_id
            jobs += batch
            if a.launcher != "slurm":
                for j in batch:
                    print(f"done: {j.result()}", flush=True)
    if a.launcher == "slurm":
        print(f"submitted {len(jobs)} jobs: {', '.join(j.job_id for j in jobs)} (logs under {folder}); "
              f"rerun this command after they end to check, or to resume what a time limit cut")


def main(argv=None):
    p = common.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan", help="the plan file (TOML; plans/*.toml)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded plan and its CPU-hours, run nothing")
    p.add_argument("--only", default="", help="run only the runs whose name contains this (comma-separated: any "
                   "of these)")
    p.add_argument("--claim", default="", help="run only the runs the plan tags with this claim (claims = [\"C8\"]) "
                   "and every run they need (pretrain_ft: its pre-trained sim_only)")
    p.add_argument("--launcher", default="local", choices=["local", "submitit-local", "slurm"],
                   help="local: a pool on this machine; submitit-local: the same through submitit; slurm: one "
                        "SLURM job per run, a run after the runs it needs (never run on a cluster yet: README)")
    p.add_argument("--jobs", type=int, default=2, help="chains side by side, cores/jobs threads each (default 2: "
                   "the most training per CPU-hour on 2 cores, bench/bench_threads.py)")
    p.add_argument("--minutes", type=float, default=0, help="local pool: stop after this many minutes (a session's "
                   "length): no training starts that the cost model says would not end by then, evaluations stop "
                   "then (their committed episodes resume); 0 = no limit")
    p.add_argument("--fill", action="store_true", help="with --minutes: a training that would not end in time "
                   "starts anyway when its slot would idle, and is stopped at the deadline (it resumes from its "
                   "last checkpoint next time; where runs/ did not survive it starts over)")
    p.add_argument("--train-rate", type=float, default=0, help="the samples/s one job trains at here, for the "
                   "CPU-hours printed and --minutes (04_analyze.py's compute table has what past runs measured; "
                   f"default: the cost model's {TRAIN_SAMPLES_PER_CPU_S:.0f} per thread, from two training runs "
                   "side by side)")
    p.add_argument("--episode-s", type=float, default=0, help="the seconds one evaluation episode takes on one "
                   f"worker here, for the CPU-hours printed (default: the cost model's {EVAL_CPU_S_PER_EPISODE})")
    p.add_argument("--runs-dir", default="runs", help="where training runs and logs go")
    p.add_argument("--results", default="results", help="where finished runs and evaluations are collected")
    p.add_argument("--data-root", default="data", help="the dataset set (make data)")
    p.add_argument("--allow-new-data", action="store_true", help="train even where the data's digests differ from "
                   "those the plan's committed runs trained on (the comparisons then mark the mixed versions)")
    p.add_argument("--slurm-partition", default="", help="SLURM partition")
    p.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job")
    p.add_argument("--slurm-cpus", type=int, default=8, help="CPUs per job (its torch threads and rollout workers)")
    p.add_argument("--slurm-minutes", type=int, default=240, help="time limit per job")
    a = p.parse_args(argv)
    try:
        plan = load_plan(a.plan)
        runs = select(plan, a.claim, a.only)
        waves(runs)
        for path, flag in ((a.results, "--results"), (a.runs_dir, "--runs-dir")):
            try:
                common.check_writable(path, flag)
            except common.UsageError as e:
                raise PlanError(str(e))
        if a.jobs < 1:
            raise PlanError(f"--jobs must be at least 1, got {a.jobs}")
        if a.train_rate < 0 or a.episode_s < 0:
            raise PlanError(f"--train-rate and --episode-s must be >= 0, got {a.train_rate} and {a.episode_s}")
        if a.fill and not a.minutes:
            raise PlanError("--fill goes with --minutes (it fills a session's last minutes)")
        if a.minutes < 0 or (a.minutes and a.launcher != "local"):
            raise PlanError(f"--minutes must be >= 0 and goes with --launcher local, got {a.minutes} with {a.launcher}")
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    cores = os.cpu_count() or 2
    print_plan(runs, a.runs_dir, a.results, cores, a.train_rate, a.episode_s)
    if a.dry_run:
        return
    try:
        if not a.allow_new_data:
            check_data(plan, runs, a.results, a.data_root)
    except (PlanError, common.UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    t0 = time.time()
    if a.launcher == "local":
        launch_local(runs, a, cores)
    else:
        launch_submitit(runs, a)
    print(f"study: {len(runs)} runs in {(time.time() - t0) / 60:.1f} min; outputs under {a.results}/ (commit them)")


if __name__ == "__main__":
    main()
