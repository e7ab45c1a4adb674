"""Benchmark: can 05_real_deploy.py's control loop hold 10 Hz (and the data's 20 Hz) on this CPU?
Synchronous inference (predict when a chunk runs out) against asynchronous (predict ahead in a
thread), in the same run, paced in real time with the sim robot standing in for the Panda.

Per setting: inference ms per chunk (mean, p95), loop step ms (the work of one step: observe,
checks, policy, command; p95, max), achieved period and its jitter (std), steps whose work took
longer than the period; the ratio is sync's p95 step work over async's (the first step of an
episode always waits for a first chunk, so the max is the same in both). The sim robot's physics
(~8 ms a step, bench_tasks.py) stands in for a real robot's I/O and camera reads.

    .venv/bin/python bench/bench_deploy.py --ckpt runs/train/<cpu run>/ckpt.pt [--steps 200]
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

spec = importlib.util.spec_from_file_location("deploy", os.path.join(ROOT, "05_real_deploy.py"))
dep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dep)


def run(ckpt: str, hz: float, inference: str, steps: int, episodes: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        a = common.parse_args(dep.Args, dep.PROFILES, ["--ckpt", ckpt, "--robot", "sim", "--realtime", "--hz", str(hz),
                                                       "--inference", inference, "--episodes", str(episodes),
                                                       "--max-steps", str(steps), "--max-overrun", "100",
                                                       "--out", out])
        code = dep.deploy(a)
        with open(os.path.join(out, "timing.json")) as f:
            t = json.load(f)
    t["exit"] = code
    return t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--hz", default="10,20")
    args = p.parse_args()
    print("| Hz | inference | lead | inference ms (mean / p95) | step work ms (p95 / max) | period ms (mean +- std) "
          "| max period ms | steps over the period |")
    print("|---|---|---|---|---|---|---|---|")
    for hz in [float(h) for h in args.hz.split(",")]:
        res = {}
        for mode in ("sync", "async"):
            t = res[mode] = run(args.ckpt, hz, mode, args.steps, args.episodes)
            print(f"| {hz:g} | {mode} | {t['lead']} | {t['inference_ms_mean']:.1f} / {t['inference_ms_p95']:.1f} | "
                  f"{t['loop_ms_p95']:.1f} / {t['loop_ms_max']:.1f} | "
                  f"{t['period_ms_mean']:.1f} +- {t['jitter_ms_std']:.1f} | "
                  f"{t['period_ms_max']:.1f} | {t['steps_over_period']} |", flush=True)
        ratio = res['sync']['loop_ms_p95'] / res['async']['loop_ms_p95']
        print(f"|   | p95 step work sync / async | {ratio:.1f}x | | | | | |")


if __name__ == "__main__":
    main()
