"""Benchmark: 02_train.py's training throughput, profile against profile and the loop against the
bare model step, in the same run.

For each method, a fresh `02_train.py --profile <profile>` process trains `--steps` steps on the
CPU dataset set (NutAssembly, low-dim); its metrics.jsonl gives samples/s and the fraction of wall
time spent outside the model (batch sampling, learning-rate update, logging, checkpoints). The
baseline is the bare step on the same network: one fixed batch already in memory, forward +
backward + AdamW + EMA, timed in this process for the same number of steps. ratio = loop / bare:
1.0 means the loop adds nothing around the model. Each profile's cotrain samples/s is also given
against the same method's under the first profile (default: the earlier cpu recipe `cpu_v1` vs today's `cpu`).
Run it on an otherwise idle machine.

    .venv/bin/python bench/bench_train.py [--steps 300] [--profiles cpu_v1,cpu] [--methods cotrain,ot,cfg_adda]
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402
import diffusion_policy  # noqa: E402


def loop_run(method, steps, profile, out, extra=()):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "02_train.py"), "--profile", profile,
                        "--method", method, "--steps", str(steps), "--log-every", str(steps // 3),
                        "--save-every", str(steps), "--snapshot-every", "0", "--out", out, *extra],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(r.stderr)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f][1:]  # the first interval holds start-up costs
    sps = sum(x["samples_per_s"] for x in rows) / len(rows)
    outside = sum(x["frac_outside_model"] for x in rows) / len(rows)
    with open(os.path.join(out, "config.json")) as f:
        return sps, outside, json.load(f)


def bare_run(config, steps):
    """Forward + backward + AdamW + EMA on one fixed batch: the model's own cost."""
    a, mcfg = config["args"], config["model"]
    target = common.load_demos(config["data"]["target"]["path"], mcfg["lowdim_keys"] + mcfg["image_keys"],
                               mcfg["n_obs"], mcfg["horizon"])
    source = common.load_demos(config["data"]["source"]["path"], mcfg["lowdim_keys"] + mcfg["image_keys"],
                               mcfg["n_obs"], mcfg["horizon"])
    torch.manual_seed(0)
    policy = diffusion_policy.DiffusionPolicy(mcfg)
    policy.normalizer.fit({**{k: target.obs[k] for k in mcfg["lowdim_keys"]}, "actions": target.actions})
    ema = copy.deepcopy(policy).requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=a["lr"])
    g = torch.Generator().manual_seed(0)
    batch = common.sample_cotrain_batch(target, source, config["mixing_ratio"], a["batch_size"], g)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        _, z = policy.encode(batch["obs"], g)
        loss = policy.diffusion_loss(batch["actions"], policy.condition(z, batch["domain"]), g,
                                     policy.action_origin(batch["obs"])).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        common.ema_update(ema.parameters(), policy.parameters(), 0.999)
        times.append(time.perf_counter() - t0)
    times = times[steps // 3:]
    return a["batch_size"] * len(times) / sum(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--profiles", default="cpu_v1,cpu", help="02_train.py profiles, the first is the baseline")
    p.add_argument("--methods", default="cotrain,ot,cfg_adda")
    p.add_argument("--extra", default="", help="more 02_train.py flags, space-separated")
    args = p.parse_args()
    print(f"02_train.py, {args.steps} steps each, torch threads {torch.get_num_threads()}")
    print("| profile | method | loop samples/s | vs first profile | bare model step samples/s | loop / bare "
          "| time outside the model |")
    print("|---|---|---|---|---|---|---|")
    first = {}  # method -> the first profile's samples/s
    for profile in args.profiles.split(","):
        bare = None
        for method in args.methods.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                sps, outside, config = loop_run(method, args.steps, profile, os.path.join(tmp, "run"),
                                                args.extra.split())
            if bare is None:  # the plain co-training network (methods add their terms on top)
                bare = bare_run(config, args.steps)
            first.setdefault(method, sps)
            print(f"| {profile} | {method} | {sps:.0f} | {sps / first[method]:.2f}x | {bare:.0f} | {sps / bare:.2f} "
                  f"| {100 * outside:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
