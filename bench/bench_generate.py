"""Benchmark: demos per minute of 01_generate_data.py with 2 workers vs 1, in the same run.

Each setting is a fresh `01_generate_data.py` process writing K demos (expert or MimicGen mode) to
a temporary folder, so the time includes what a user pays: process start, env builds, writing.
Run it on an otherwise idle machine (2 cores here: 2 workers is the ceiling).

    .venv/bin/python bench/bench_generate.py [--demos 12] [--mode generate] [--task NutAssembly]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = os.path.join(ROOT, "01_generate_data.py")


def run(args, workers):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, GEN, *args, "--workers", str(workers)], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--demos", type=int, default=12)
    p.add_argument("--mode", default="generate", choices=["expert", "generate"])
    p.add_argument("--task", default="NutAssembly")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        seed = os.path.join(d, "seed.hdf5")
        subprocess.run([sys.executable, GEN, "--mode", "expert", "--task", a.task, "--num-demos", "5",
                        "--out", seed], cwd=ROOT, check=True, capture_output=True)
        base = ["--mode", a.mode, "--task", a.task, "--num-demos", str(a.demos)]
        if a.mode == "generate":
            base += ["--seed-data", seed]
        rates = {}
        for w in (1, 2):
            sec = run(base + ["--out", os.path.join(d, f"w{w}.hdf5")], w)
            rates[w] = a.demos / sec * 60
            print(f"{a.task} {a.mode}, {a.demos} demos, {w} worker{'s' if w > 1 else ' '}: {sec:6.1f} s, "
                  f"{rates[w]:5.1f} demos/min{' (baseline)' if w == 1 else ''}")
        print(f"2 workers vs 1: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
