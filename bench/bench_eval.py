"""Benchmark: 03_eval.py episodes per minute with 2 workers vs 1, policy inference time per
action chunk with DDIM (few steps) vs DDPM (all training steps), and an image policy's episodes
per minute with its cameras rendered on demand (only the frames it reads) vs every step, in the
same run.

Episodes: each setting is a fresh `03_eval.py` process evaluating the same seeds of one checkpoint
(start-up included, as a user pays it). Inference: one observation window from the run's target
dataset, predict_action timed `--reps` times per sampler, 1 and 2 torch threads.

    .venv/bin/python bench/bench_eval.py [--ckpt runs/train/<run>/ckpt.pt] [--episodes 8]
    .venv/bin/python bench/bench_eval.py --only render [--image-ckpt ...] [--image-episodes 6]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import diffusion_policy  # noqa: E402

DEFAULT = "runs/train/NutAssembly_target_visual_physics_cotrain_r0.17_encdec_s0/ckpt.pt"
IMAGE = "results/train/NutAssembly_target_visual_physics_img64_sim_only_r0_encdec_s0_40k/ckpt.pt"


def episodes_per_min(ckpt, episodes, workers, out, *extra):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "03_eval.py"), "--ckpt", ckpt, "--trials",
                        str(episodes), "--workers", str(workers), "--out", out, *extra], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr)
    return 60 * episodes / (time.perf_counter() - t0)


def chunk_ms(policy, cfg, sampler, steps, reps):
    ds = common.load_demos(cfg["data"]["target"]["path"], cfg["model"]["lowdim_keys"] + cfg["model"]["image_keys"],
                           cfg["model"]["n_obs"], cfg["model"]["horizon"], max_demos=1)
    obs = common.gather(ds, np.array([10]))["obs"]
    g = torch.Generator().manual_seed(0)
    policy.predict_action(obs, sample_steps=steps, generator=g, sampler=sampler)  # warm-up
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        policy.predict_action(obs, sample_steps=steps, generator=g, sampler=sampler)
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=DEFAULT)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--image-ckpt", default=IMAGE, help="an image policy (default: the committed cpu_img sim_only)")
    p.add_argument("--image-episodes", type=int, default=6)
    p.add_argument("--only", default="", help="render: only the on-demand rendering comparison")
    args = p.parse_args()
    print("| measure | baseline | ours | ratio |")
    print("|---|---|---|---|")
    if os.path.isfile(os.path.join(ROOT, args.image_ckpt)):
        render(os.path.join(ROOT, args.image_ckpt), args.image_episodes)
    else:
        print(f"(no image checkpoint at {args.image_ckpt}: rendering comparison skipped)")
    if args.only == "render":
        return
    if not os.path.isfile(os.path.join(ROOT, args.ckpt)):
        sys.exit(f"no checkpoint at {args.ckpt}: train one first (README, 02_train.py)")
    ckpt = os.path.join(ROOT, args.ckpt)
    policy, cfg, _ = diffusion_policy.load_policy(ckpt)
    print(f"checkpoint {args.ckpt} ({cfg['args']['method']}, arch {cfg['model']['arch']})")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ddpm = chunk_ms(policy, cfg, "ddpm", cfg["model"]["T"], args.reps // 4 or 1)
        ddim = chunk_ms(policy, cfg, "ddim", cfg["model"]["sample_steps"], args.reps)
        print(f"| ms per chunk, {threads} thread(s) | DDPM {cfg['model']['T']} steps: {ddpm:.1f} | "
              f"DDIM {cfg['model']['sample_steps']} steps: {ddim:.1f} | {ddpm / ddim:.1f}x faster |")
    with tempfile.TemporaryDirectory() as tmp:
        one = episodes_per_min(ckpt, args.episodes, 1, os.path.join(tmp, "w1"))
        two = episodes_per_min(ckpt, args.episodes, 2, os.path.join(tmp, "w2"))
    print(f"| episodes/min, {args.episodes} episodes | 1 worker: {one:.1f} | 2 workers: {two:.1f} | "
          f"{two / one:.2f}x |")


def render(ckpt, episodes):
    """One worker, the same seeds in the source domain: every camera rendered at every step against
    only at the steps whose observation the policy reads (03_eval.py --render); the episodes must
    agree (tests/test_eval.py checks frames too)."""
    cfg = diffusion_policy.load_policy(ckpt)[1]
    rates, outcomes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("every", "demand"):
            out = os.path.join(tmp, mode)
            rates[mode] = episodes_per_min(ckpt, episodes, 1, out, "--domain", "source", "--render", mode)
            with open(os.path.join(out, "episodes.jsonl")) as f:
                outcomes[mode] = [(e["seed"], e["success"], e["length"]) for e in map(json.loads, f)]
    same = "same episodes" if sorted(outcomes["every"]) == sorted(outcomes["demand"]) else "EPISODES DIFFER"
    print(f"| image episodes/min ({', '.join(cfg['model']['image_keys'])} at {cfg['model']['image_size']} px, "
          f"n_obs {cfg['model']['n_obs']}, n_action {cfg['model']['n_action']}; {episodes} episodes, 1 worker) | "
          f"every step: {rates['every']:.2f} | on demand: {rates['demand']:.2f} | "
          f"{rates['demand'] / rates['every']:.2f}x ({same}) |")


if __name__ == "__main__":
    main()
