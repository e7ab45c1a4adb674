"""Benchmark: training throughput on a small machine, by threads, wait policy and what runs beside.

Each condition starts fresh `02_train.py --profile cpu` processes (what a user pays) for about
--seconds each and reads samples/s from their metrics.jsonl (the first interval, start-up, left
out). "beside" is a rollout process started first and kept busy (`03_eval.py --workers 1` with one
thread on a committed checkpoint), as the study runner's evaluations or a test run would be.
The baseline is one 2-thread run alone with the default OpenMP wait policy, in the same run.
study.py's scheduling follows this table (RESULTS "Speed"). Needs `make data` (NutAssembly) and an
otherwise idle machine.

    .venv/bin/python bench/bench_threads.py [--seconds 75]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = os.path.join(ROOT, "results", "train", "NutAssembly_target_visual_physics_cotrain_r0.17_encdec_s0", "ckpt.pt")


def env_for(threads: int, passive: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = str(threads)
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def start_training(out: str, threads: int, passive: bool):
    return subprocess.Popen([sys.executable, "02_train.py", "--profile", "cpu", "--method", "cotrain",
                             "--steps", "100000",
                             "--log-every", "25", "--save-every", "100000", "--snapshot-every", "0", "--out", out],
                            cwd=ROOT, env=env_for(threads, passive), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def start_rollouts(out: str):
    return subprocess.Popen([sys.executable, "03_eval.py", "--ckpt", CKPT, "--trials", "1000", "--workers", "1",
                             "--split", "demo", "--out", out], cwd=ROOT, env=env_for(1, False),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def samples_per_s(out: str) -> float:
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        rows = [json.loads(x) for x in f if x.strip()][1:]
    return sum(r["samples_per_s"] for r in rows) / len(rows) if rows else 0.0


def condition(d: str, name: str, trainings: list, beside: bool, seconds: float) -> float:
    """Total samples/s of `trainings` [(threads, passive)] run together for `seconds`."""
    rollouts = start_rollouts(os.path.join(d, f"{name}_eval")) if beside else None
    if rollouts:
        time.sleep(15)  # its policy and env are built: it is stepping episodes
    procs = [(start_training(os.path.join(d, f"{name}_{i}"), t, p), os.path.join(d, f"{name}_{i}"))
             for i, (t, p) in enumerate(trainings)]
    time.sleep(seconds)
    for p, _ in procs:
        stop(p)
    if rollouts:
        stop(rollouts)
    return sum(samples_per_s(out) for _, out in procs)


CONDITIONS = [  # name, trainings [(threads, OMP_WAIT_POLICY=PASSIVE)], rollouts beside
    ("alone, 2 threads", [(2, False)], False),
    ("alone, 2 threads, PASSIVE", [(2, True)], False),
    ("alone, 1 thread", [(1, False)], False),
    ("beside rollouts, 2 threads", [(2, False)], True),
    ("beside rollouts, 2 threads, PASSIVE", [(2, True)], True),
    ("beside rollouts, 1 thread", [(1, False)], True),
    ("two runs side by side, 1 thread each (sum)", [(1, False), (1, False)], False),
    ("two runs side by side, 2 threads each, PASSIVE (sum)", [(2, True), (2, True)], False),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=75.0, help="seconds each condition trains")
    a = p.parse_args()
    if not os.path.exists(os.path.join(ROOT, "data", "NutAssembly", "source", "mimicgen_500.hdf5")):
        sys.exit("error: needs data/NutAssembly (make data)")
    with tempfile.TemporaryDirectory() as d:
        base = None
        for i, (name, trainings, beside) in enumerate(CONDITIONS):
            sps = condition(d, f"c{i}", trainings, beside, a.seconds)
            base = base or sps
            print(f"{name:<55} {sps:7.0f} samples/s  {sps / base:5.2f}x{' (baseline)' if i == 0 else ''}", flush=True)


if __name__ == "__main__":
    main()
