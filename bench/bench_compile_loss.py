"""Benchmark: does the compiled training step learn the same? (adopting 02_train.py --compile)

`--compile` (torch.compile on the encoder and the denoiser, the vision stem channels-last) changes
the order of floating-point operations, so a compiled run is not the plain run bit for bit. It is
adopted when its loss curve stays within run-to-run noise: three short cpu_img runs on the same
image data, plain with seed 0, plain with seed 1 (the noise) and compiled with seed 0, one torch
thread each, one after the other. Prints each logged loss (the mean over the last log_every steps),
the largest |compiled - plain s0| and |plain s1 - plain s0| after the warm-up, and the speed ratio
(samples/s over the logged steps, compile time excluded). Finished runs under --out are kept.

    .venv/bin/python bench/bench_compile_loss.py --data data/NutAssembly/source/mimicgen_500_img64.hdf5
        [--steps 1500] [--out runs/bench_compile]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"plain_s0": ["--seed", "0"], "plain_s1": ["--seed", "1"], "compile_s0": ["--seed", "0", "--compile"]}


def train(name, flags, a):
    out = os.path.join(a.out, name)
    cmd = [sys.executable, os.path.join(ROOT, "02_train.py"), "--profile", "cpu_img", "--method", "cotrain",
           "--ratio", "0.5", "--target-data", a.data, "--source-data", a.data, "--steps", str(a.steps),
           "--log-every", "100", "--save-every", str(a.steps), "--snapshot-every", "0", "--out", out,
           "--resume", *flags]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r for r in rows if "loss" in r}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "data/NutAssembly/source/mimicgen_500_img64.hdf5"))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_compile"))
    a = p.parse_args()
    if not os.path.isfile(a.data):
        sys.exit(f"error: {a.data} not found (make it with `make data-img`)")
    runs = {name: train(name, flags, a) for name, flags in VARIANTS.items()}
    steps = sorted(set.intersection(*(set(r) for r in runs.values())))
    print("| step | plain s0 | plain s1 | compiled s0 |")
    print("|---|---|---|---|")
    for s in steps:
        print(f"| {s} | " + " | ".join(f"{runs[n][s]['loss']:.4f}" for n in VARIANTS) + " |")
    late = [s for s in steps if s > 500]  # after the learning-rate warm-up and the first fall
    gap = lambda n: max(abs(runs[n][s]["loss"] - runs["plain_s0"][s]["loss"]) for s in late)  # noqa: E731
    speed = {n: np.mean([runs[n][s]["samples_per_s"] for s in steps[1:]]) for n in VARIANTS}
    print(f"largest |loss - plain s0| after step 500: plain s1 {gap('plain_s1'):.4f}, compiled s0 "
          f"{gap('compile_s0'):.4f} ({'within' if gap('compile_s0') <= gap('plain_s1') else 'beyond'} "
          f"run-to-run noise)")
    print(f"samples/s (1 thread, logged steps after the first): plain {speed['plain_s0']:.0f}, compiled "
          f"{speed['compile_s0']:.0f}: {speed['compile_s0'] / speed['plain_s0']:.2f}x")


if __name__ == "__main__":
    main()
