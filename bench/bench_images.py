"""Benchmark: what images cost on this CPU, to choose a small-image cpu profile (image policies).

1. Rendering: NutAssembly env steps/s (source domain, zero actions) with one camera (agentview)
   and two (agentview + eye-in-hand) at 64 and 84 px, against the same env without cameras in the
   same run (the baseline).
2. Training: one policy step (forward + backward + AdamW) at batch 64 on a synthetic batch, with
   the cpu profile's transformer denoiser and a ResNet18-GN vision stem per camera (history 2,
   random crop to 90 % of the side), for 1 and 2 cameras, 64 and 84 px, base widths 8 and 16,
   against the same network without images (proprioception only) in the same run.

4. (--compile, alone) The cpu_img training step (1 camera, 64 px, width 8, batch 64) plain (the
   baseline) against the same step with the vision stem in channels-last memory
   format, with torch.compile (inductor) on the encoder and the denoiser, and with both, in one
   run; compile time is reported apart and not counted in the step time (issue 43's lever: adopt
   only at >= 1.15x).

3. (--flops, alone) Work per training step: FLOPs of one forward + backward (torch's
   FlopCounterMode) of the small-image cpu profile (02_train.py --profile cpu_img) and of the
   paper profile (2 cameras 84 px, crop 76, width-64 ResNet18-GN, 8+4-layer width-256
   transformer), each at its batch size: a count, not a timing.

    .venv/bin/python bench/bench_images.py [--render-steps 100] [--train-steps 20] [--batch 64] [--flops | --compile]
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import diffusion_policy  # noqa: E402
import tasks  # noqa: E402

CAMERAS = ("agentview", "robot0_eye_in_hand")
# proprioception of the image policies (no object poses): joint positions, gripper, end effector
LOWDIM = {"robot0_joint_pos": 7, "robot0_gripper_qpos": 2, "robot0_eef_pos": 3, "robot0_eef_quat": 4}


def render_rate(task, cams, size, steps):
    env = tasks.make_env(task, "source", cameras=cams, image_size=size)
    env.reset(0)
    zero = np.zeros(7)  # OSC: 6-D end-effector delta + gripper
    env.step(zero)  # warm-up (first render compiles the shaders)
    t0 = time.perf_counter()
    for _ in range(steps):
        env.step(zero)
    dt = (time.perf_counter() - t0) / steps
    env.env.close()  # the robosuite env (frees its renderer)
    return dt


def policy_cfg(n_cams, size, width):
    return dict(arch="encdec", n_obs=2, horizon=16, n_action=8, d_feat=128, d_model=128, n_heads=4,
                n_layers=2, n_cond_layers=1, dropout=0.0, unet_dims=[64, 128, 256], resnet_width=width,
                vision_dim=64, crop=int(0.9 * size) if n_cams else 0, T=100, sample_steps=10,
                image_keys=[f"{c}_image" for c in CAMERAS[:n_cams]], lowdim_keys=list(LOWDIM),
                lowdim_dims=LOWDIM, action_dim=8, use_label=False, action_space="rel")


def train_step_time(cfg, size, batch, steps, variant=""):
    torch.manual_seed(0)
    policy = diffusion_policy.DiffusionPolicy(cfg)
    diffusion_policy.speed_up(policy, "channels_last" in variant, "compile" in variant)  # as 02_train --compile
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(batch, cfg["n_obs"], d) for k, d in LOWDIM.items()}
    for k in cfg["image_keys"]:
        obs[k] = torch.randint(0, 256, (batch, cfg["n_obs"], size, size, 3), dtype=torch.uint8)
    actions = torch.randn(batch, cfg["horizon"], cfg["action_dim"])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, z = policy.encode(obs, g)
        loss = policy.diffusion_loss(actions, policy.condition(z, None), g, policy.action_origin(obs)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    first = times[0]  # compile (if any) and allocation
    times = times[max(1, steps // 4):]  # drop the first steps (allocation)
    n_params = sum(p.numel() for p in policy.parameters())
    return sum(times) / len(times), n_params, first


def compile_table(batch: int, steps: int):
    cfg = policy_cfg(1, 64, 8)  # the cpu_img profile's stem and camera
    print(f"\n4. The cpu_img training step (1 camera, 64 px, width 8), batch {batch}, {steps} steps each\n")
    print("| variant | ms per step | samples/s | vs plain | first step (compile + allocation) s |")
    print("|---|---|---|---|---|")
    base, _, _ = train_step_time(cfg, 64, batch, steps)
    print(f"| plain (baseline) | {1e3 * base:.0f} | {batch / base:.0f} | 1.00x | - |", flush=True)
    for variant in ("channels_last", "compile", "channels_last+compile"):  # the last: 02_train.py --compile
        dt, _, first = train_step_time(cfg, 64, batch, steps, variant)
        print(f"| {variant} | {1e3 * dt:.0f} | {batch / dt:.0f} | {base / dt:.2f}x | {first:.1f} |", flush=True)


def step_flops(cfg, size, batch):
    """FLOPs of one forward + backward at `batch` (counted at batch 4, linear in the batch)."""
    torch.manual_seed(0)
    policy = diffusion_policy.DiffusionPolicy(cfg)
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.randn(4, cfg["n_obs"], d) for k, d in LOWDIM.items()}
    for k in cfg["image_keys"]:
        obs[k] = torch.randint(0, 256, (4, cfg["n_obs"], size, size, 3), dtype=torch.uint8)
    actions = torch.randn(4, cfg["horizon"], cfg["action_dim"])
    with FlopCounterMode(display=False) as fc:
        _, z = policy.encode(obs, g)
        policy.diffusion_loss(actions, policy.condition(z, None), g, policy.action_origin(obs)).mean().backward()
    return fc.get_total_flops() * batch / 4


def flops_table():
    small = {**policy_cfg(1, 64, 8), "crop": 58}
    paper = {**policy_cfg(2, 84, 64), "crop": 76, "d_feat": 256, "d_model": 256, "n_layers": 8,
             "n_cond_layers": 4, "vision_dim": 256, "unet_dims": [256, 512, 1024]}
    f_small, f_paper = step_flops(small, 64, 64), step_flops(paper, 84, 256)
    print("\n3. Work per training step (forward + backward, FlopCounterMode)\n")
    print("| profile | batch | GFLOP per step |")
    print("|---|---|---|")
    print(f"| cpu_img (1 camera 64 px, crop 58, width 8, 2+1-layer width-128 transformer) | 64 | {f_small / 1e9:.2f} |")
    print("| paper (2 cameras 84 px, crop 76, width 64, 8+4-layer width-256 transformer) | 256 | "
          f"{f_paper / 1e9:.1f} |")
    print(f"paper / cpu_img work per step: {f_paper / f_small:.0f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="NutAssembly")
    p.add_argument("--render-steps", type=int, default=100)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--flops", action="store_true", help="only part 3 (work per training step)")
    p.add_argument("--compile", action="store_true", help="only part 4 (channels-last, torch.compile)")
    a = p.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    if a.flops:
        return flops_table()
    if a.compile:
        return compile_table(a.batch, a.train_steps)

    print(f"\n1. Rendering, {a.task}, source domain, {a.render_steps} env steps each\n")
    print("| cameras | px | ms per env step | vs no cameras | rendering ms per step |")
    print("|---|---|---|---|---|")
    base = render_rate(a.task, (), 84, a.render_steps)
    print(f"| none (baseline) | - | {1e3 * base:.1f} | 1.00x | 0 |", flush=True)
    for n in (1, 2):
        for size in (64, 84):
            dt = render_rate(a.task, CAMERAS[:n], size, a.render_steps)
            print(f"| {n} | {size} | {1e3 * dt:.1f} | {dt / base:.2f}x | {1e3 * (dt - base):.1f} |", flush=True)

    print(f"\n2. Training step, batch {a.batch}, history 2, cpu transformer denoiser, {a.train_steps} steps each\n")
    print("| cameras | px (crop) | ResNet18-GN width | parameters | ms per step | samples/s | vs no images |")
    print("|---|---|---|---|---|---|---|")
    base, n0, _ = train_step_time(policy_cfg(0, 0, 16), 0, a.batch, a.train_steps)
    print(f"| none (baseline) | - | - | {n0 / 1e6:.2f} M | {1e3 * base:.0f} | {a.batch / base:.0f} | 1.00x |",
          flush=True)
    for n in (1, 2):
        for size in (64, 84):
            for width in (8, 16):
                cfg = policy_cfg(n, size, width)
                dt, npar, _ = train_step_time(cfg, size, a.batch, a.train_steps)
                print(f"| {n} | {size} ({cfg['crop']}) | {width} | {npar / 1e6:.2f} M | {1e3 * dt:.0f} | "
                      f"{a.batch / dt:.0f} | {dt / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
