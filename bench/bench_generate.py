"""Benchmark: demos per minute of 01_generate_data.py with 2 workers vs 1, in the same run.

Each setting is a fresh `01_generate_data.py` process writing K demos (expert or MimicGen mode) to
a temporary folder, so the time includes what a user pays: process start, env builds, writing.
Run it on an otherwise idle machine (2 cores here: 2 workers is the ceiling). It ends with the
machine's own ceiling: two processes that share nothing (a pure-Python loop; MuJoCo steps of the
NutAssembly scene), 2 at once vs 1, so a generation ratio can be read against what the cores give.

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


CEILING = """
import sys, time
kind, seconds = sys.argv[1], float(sys.argv[2])
if kind == "python":
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x = 0
        for i in range(100_000):
            x += i * i
        n += 1
else:
    sys.path.insert(0, sys.argv[3])
    import tasks
    env = tasks.make_env("NutAssembly", "source")
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.sim.step()
        n += 1
print(n / (time.perf_counter() - t0))
"""


def ceiling(kind: str, procs: int, seconds: float = 8.0) -> float:
    """Throughput of `procs` copies of a CPU-bound loop run together (units per s, summed): what
    the machine's cores give two processes that share nothing."""
    ps = [subprocess.Popen([sys.executable, "-c", CEILING, kind, str(seconds), ROOT], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(procs)]
    return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in ps)


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
    # the machine's own ceiling: two processes that share nothing (a pure-Python loop; MuJoCo
    # physics steps of the NutAssembly scene), 2 copies at once vs 1
    for kind in ("python", "mujoco"):
        one, two = ceiling(kind, 1), ceiling(kind, 2)
        print(f"ceiling, {kind} loop: 1 process {one:.0f}/s, 2 processes {two:.0f}/s: {two / one:.2f}x")


if __name__ == "__main__":
    main()
