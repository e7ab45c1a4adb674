"""Benchmark: the toy's batched ensemble (K models, one bmm per layer) vs a plain loop over K
separate nn.Sequential models with their own Adam, same widths, batch and steps, in one run.

    .venv/bin/python bench/bench_toy_ensemble.py [--models 21] [--steps 200]

Prints steps/s of each and the speed-up ratio (ensemble / loop)."""
import argparse
import importlib.util
import os
import sys
import time

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402

spec = importlib.util.spec_from_file_location("toy", os.path.join(ROOT, "00_toy.py"))
toy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(toy)


def time_ensemble(K, steps, a):
    model = toy.EnsembleMLP(list(range(K)), 5, a.hidden, 2, a.t_emb)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = common.NoiseSchedule.make(a.diffusion_steps)
    y, x = torch.randn(K, a.batch_size, 2), torch.randn(K, a.batch_size, 3)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = common.ddpm_loss(model, y, x, sched, reduce=False).mean(1).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    return steps / (time.perf_counter() - t0)


def time_loop(K, steps, a):
    half = a.t_emb // 2
    freqs = torch.exp(-torch.log(torch.tensor(10_000.0)) * torch.arange(half) / max(half - 1, 1))
    nets = [nn.Sequential(nn.Linear(5 + a.t_emb, a.hidden), nn.Mish(), nn.Linear(a.hidden, a.hidden), nn.Mish(),
                          nn.Linear(a.hidden, a.hidden), nn.Mish(), nn.Linear(a.hidden, 2)) for _ in range(K)]
    opts = [torch.optim.Adam(n.parameters(), lr=1e-3) for n in nets]
    sched = common.NoiseSchedule.make(a.diffusion_steps)
    y, x = torch.randn(a.batch_size, 2), torch.randn(a.batch_size, 3)

    def fwd(net):
        def eps_model(y_t, t, c):
            ang = t.unsqueeze(-1).float() * freqs
            return net(torch.cat([y_t, c, ang.sin(), ang.cos()], -1))
        return eps_model

    t0 = time.perf_counter()
    for _ in range(steps):
        for net, opt in zip(nets, opts):
            loss = common.ddpm_loss(fwd(net), y, x, sched)
            opt.zero_grad(); loss.backward(); opt.step()
    return steps / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", type=int, default=21, help="K models (default: 7 ratios x 3 seeds)")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    a = toy.Args()
    torch.manual_seed(0)
    time_ensemble(args.models, 10, a); time_loop(args.models, 2, a)  # warm-up
    e = time_ensemble(args.models, args.steps, a)
    l = time_loop(args.models, args.steps, a)
    print(f"toy training, K={args.models} models, batch {a.batch_size}, width {a.hidden}, "
          f"{torch.get_num_threads()} threads")
    print(f"  plain loop over models : {l:7.1f} steps/s (each step trains all K)")
    print(f"  batched ensemble (bmm) : {e:7.1f} steps/s")
    print(f"  speed-up ensemble/loop : {e / l:.2f}x")


if __name__ == "__main__":
    main()
