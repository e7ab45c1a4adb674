"""Benchmark: Wasserstein and Gromov-Wasserstein at 2048 points per domain (App. D.2's sample
size), exact vs the fast variant, in the same run, with the fast variant's relative error.

Point clouds: 2048 x 128 features per domain, a Gaussian target and a source that is shifted,
rescaled along some axes and rotated (stand-ins for a policy's trunk features; 04_analyze.py
standardizes each domain first, as here).

    .venv/bin/python bench/bench_analyze.py [--n 2048] [--dim 128]
    .venv/bin/python bench/bench_analyze.py --features runs/analysis_cache/<run>_step15000_n2048_s0.npz

--features: a policy's cached features (04_analyze.py) instead of the synthetic clouds.
"""
import argparse
import importlib.util
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
spec = importlib.util.spec_from_file_location("analyze", os.path.join(ROOT, "04_analyze.py"))
an = importlib.util.module_from_spec(spec)
spec.loader.exec_module(an)


def timed(f):
    t0 = time.perf_counter()
    v = f()
    return v, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--subsample", type=int, default=512)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--features", default="", help="a feature cache .npz of 04_analyze.py")
    p.add_argument("--point", default="trunk", help="feature point in --features: stem | trunk")
    args = p.parse_args()
    if args.features:
        with np.load(args.features) as f:
            zs, zt = f[f"source_{args.point}"], f[f"target_{args.point}"]
        what = f"{os.path.basename(args.features)} ({args.point})"
    else:
        rng = np.random.default_rng(0)
        zt = rng.normal(size=(args.n, args.dim))
        rot = np.linalg.qr(rng.normal(size=(args.dim, args.dim)))[0]
        zs = (rng.normal(size=(args.n, args.dim)) * np.linspace(0.3, 2.0, args.dim) + 0.5) @ rot
        what = "synthetic clouds"
    xs, xt = an.standardize(zs), an.standardize(zt)
    print(f"{what}: {len(xs)} points per domain, {xs.shape[1]} dims")
    print("| distance | exact | time | fast variant | time | speed-up | relative error |")
    print("|---|---|---|---|---|---|---|")
    w, tw = timed(lambda: an.wasserstein(xs, xt))
    ws, tws = timed(lambda: an.wasserstein(xs, xt, "sinkhorn"))
    print(f"| W2 | {w:.4f} | {tw:.1f} s | Sinkhorn (reg 0.05 x mean cost) {ws:.4f} | {tws:.1f} s | "
          f"{tw / tws:.1f}x | {abs(ws - w) / w:.1%} |")
    g, tg = timed(lambda: an.gromov_wasserstein(xs, xt))
    gs, tgs = timed(lambda: an.gromov_wasserstein(xs, xt, "subsample", args.subsample, args.repeats))
    print(f"| GW | {g:.5f} | {tg:.1f} s | mean of {args.repeats} exact solves on {args.subsample} points "
          f"{gs:.5f} | {tgs:.1f} s | {tg / tgs:.1f}x | {abs(gs - g) / g:.1%} |")


if __name__ == "__main__":
    main()
