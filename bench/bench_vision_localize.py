"""Benchmark: can the vision stem locate the nut? (choosing the image policy's pooling, camera
framing and image size)

An image policy without object poses must read the nut's position off the camera (RESULTS "The
instrument"). This trains the vision stem alone, ResNet18-GN with each pooling, to regress the nut
handle's position (m, the point the gripper closes on) from one agentview frame of an image copy
of the MimicGen source file, with the policy's augmentation (random crop of 90 % in training,
center crop at test), and reports the error on held-out demos (the file's last tenth, at least 16;
training on the first 200 of the rest) and the time per step. Baseline: the first file with global
average pooling (the stem as first built), in the same run. Several files (e.g. the same demos
rendered with another framing or size, `01_generate_data.py --mode import --framing ...`) compare
what the camera gives the stem.

    .venv/bin/python bench/bench_vision_localize.py [--data data/NutAssembly/source/mimicgen_500_img64.hdf5 ...]
        [--pools avg,spatial_softmax] [--steps 1500] [--batch 64] [--width 8]
"""
import argparse
import os
import sys
import time

import h5py
import numpy as np
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import diffusion_policy  # noqa: E402


def load(path):
    """Every frame of the training and the test demos: (images (N, H, W, 3) uint8, handle
    positions (N, 3)) for each."""
    with h5py.File(path, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
    n_test = max(len(names) // 10, 16)
    return _frames(path, names[:min(200, len(names) - n_test)]), _frames(path, names[-n_test:])


def _frames(path, names):
    imgs, pos = [], []
    with h5py.File(path, "r") as f:
        for n in names:
            imgs.append(f[f"data/{n}/obs/agentview_image"][()])
            pos.append(f[f"data/{n}/obs/handle_pos"][()])
    return np.concatenate(imgs), np.concatenate(pos).astype(np.float32)


IMAGE = common.Normalizer({})  # the policy's image scaling: uint8 -> [-1, 1]


def to_input(x: np.ndarray) -> torch.Tensor:
    return IMAGE("agentview_image", torch.from_numpy(x)).permute(0, 3, 1, 2)


def run(pool, train, test, a):
    torch.manual_seed(0)
    (xi, yi), (xt, yt) = train, test
    mu, sd = yi.mean(0), yi.std(0)
    net = nn.Sequential(diffusion_policy.ResNet18GN(a.width, 64, pool), nn.Mish(), nn.Linear(64, 3))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-6)
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    crop = int(0.9 * xi.shape[1])  # the cpu_img profile's 90 % (58 of 64)
    for _ in range(a.steps):
        i = rng.integers(0, len(xi), a.batch)
        x = diffusion_policy.random_crop(to_input(xi[i]), crop, g)
        loss = ((net(x) - torch.from_numpy((yi[i] - mu) / sd)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    step_ms = 1000 * (time.perf_counter() - t0) / a.steps
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(diffusion_policy.center_crop(to_input(xt[j:j + 256]), crop))
                          for j in range(0, len(xt), 256)]).numpy() * sd + mu
    err = np.linalg.norm((pred - yt)[:, :2], axis=1) * 1000  # xy error, mm
    return step_ms, float(np.median(err)), float(np.percentile(err, 90))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=[os.path.join(ROOT, "data/NutAssembly/source/mimicgen_500_img64.hdf5")])
    p.add_argument("--pools", default="avg,spatial_softmax", help="comma-separated poolings of the stem")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=8)
    a = p.parse_args()
    for path in a.data:
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found (make it with `01_generate_data.py --profile cpu_img`)")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(f"{a.steps} steps at batch {a.batch}, width {a.width}, crop 90 %")
    print("| data | framing | px | pooling | ms / step | handle xy error, median mm | 90th pct mm "
          "| mean predictor mm |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for path in a.data:
        train, test = load(path)
        spread = np.median(np.linalg.norm(test[1][:, :2] - train[1][:, :2].mean(0), axis=1) * 1000)
        for pool in a.pools.split(","):
            ms, med, p90 = run(pool, train, test, a)
            base = base or (ms, med)
            print(f"| {os.path.basename(path)} ({len(train[0])} / {len(test[0])} frames) "
                  f"| {common.camera_framing(path)} | {train[0].shape[1]} | {pool} | {ms:.1f} ({ms / base[0]:.2f}x) "
                  f"| {med:.1f} ({med / base[1]:.2f}x) "
                  f"| {p90:.1f} | {spread:.0f} |", flush=True)


if __name__ == "__main__":
    main()
