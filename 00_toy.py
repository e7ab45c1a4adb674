"""Sec. 3: the controlled toy co-training model (Fig. 3, Fig. 4, ANOVA).

A fixed "pre-trained" encoder is stood in for by its 3-D latent space: each input coordinate is one
principal direction. The source manifold S and the target manifold T are the same curve (a unit
circle in the first two directions, parameter theta) placed at x3 = 0 and x3 = d: aligned along two
directions, separated by d along the third. d sets the regime (Sec. 2.1): d = 0 overlapping,
moderate d structured, large d disjoint.

The input -> output mappings share a task structure (a five-petal flower) and differ by a domain
factor (the target flower is scaled), so copying source outputs is wrong in the target domain.
Target data is sparse (N << M) and covers only part of the curve; the rest is the target's
out-of-distribution (OOD) region. A 4-layer MLP diffusion model learns p(y | x), co-trained with
mixing ratio w (Eq. 1). Every (d, w, seed) cell is one model; the models of one d are trained
together as a batched ensemble (one bmm per layer), which is exactly K independent trainings.

    python 00_toy.py                      # default sweep, ~9 min on 2 CPU cores
    python 00_toy.py --profile smoke      # seconds
    python 00_toy.py --d-values 0,0.5,4 --ratios 0.016,0.1,natural --seeds 0,1,2

Outputs in --out: config.json, cells/d_<d>.json (per-cell metrics; a rerun skips finished d values),
metrics.json (all cells + ANOVA), summary.md, fig3_grid.png, fig4_loss_vs_ratio.png, fig_loss_vs_d.png,
fig_setup.png. A killed run, rerun with the same arguments, resumes at the first unfinished d.
"""
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import common
from common import arg

# ----------------------------------------------------------------------------------------------
# arguments: every knob of the experiment, one line of documentation each
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    profile: str = "cpu"
    out: str = arg("runs/toy/default", "output folder")
    d_values: list = arg([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
                         "separations d of the target from the source manifold along the 3rd latent direction")
    structured_range: list = arg([0.01, 2.0], "d values labelled 'structured' (inclusive; a priori: up to the manifold's diameter, 2); 0 is 'overlapping', above is 'disjoint'")
    ratios: list = arg(["0.005", "0.016", "0.1", "0.3", "0.5", "0.8", "1.0"],
                       "mixing ratios w (Sec. 3 grid); numbers, 'natural' or 'auto'")
    seeds: list = arg([0, 1, 2], "seeds; seed s draws dataset s and initialises/trains model s")
    n_target: int = arg(20, "N: target samples (sparse)")
    n_source: int = arg(2000, "M: source samples (cover the whole manifold)")
    target_coverage: float = arg(0.6, "fraction of the curve (theta in [0, 2 pi * c]) the target data covers; the rest is OOD")
    target_scale: float = arg(1.5, "domain difference: target output = target_scale * source output")
    petal_amp: float = arg(0.3, "shared structure: r(theta) = 1 + petal_amp * sin(petals * theta)")
    petals: int = arg(5, "shared structure: number of petals")
    output_noise: float = arg(0.02, "std of Gaussian noise on the training outputs")
    hidden: int = arg(128, "width of the 4-layer MLP denoiser")
    t_emb: int = arg(16, "size of the sinusoidal diffusion-step embedding")
    diffusion_steps: int = arg(100, "T, DDPM training steps (Diffusion Policy: 100)")
    train_steps: int = arg(4000, "optimizer steps per model")
    batch_size: int = arg(128, "samples per batch per model")
    lr: float = arg(5e-3, "peak Adam learning rate (warm-up then cosine decay)")
    ema: bool = arg(True, "sample with an EMA of the weights (Diffusion Policy's EMAModel schedule)")
    warmup: int = arg(100, "learning-rate warm-up steps")
    eval_points: int = arg(120, "test inputs, evenly spaced in theta over the whole target curve")
    eval_samples: int = arg(8, "sampled outputs per test input")
    sampler: str = arg("ddpm", "ddpm (all T steps) or ddim")
    sample_steps: int = arg(10, "DDIM steps when --sampler ddim")
    threads: int = arg(0, "torch threads (0 = torch's default)")


PROFILES = {
    "smoke": dict(d_values=[0.0, 1.0], ratios=["0.1", "1.0"], seeds=[0, 1], n_source=200,
                  hidden=32, train_steps=30, batch_size=32, warmup=5, eval_points=12,
                  eval_samples=2, diffusion_steps=20),
    "cpu": {},
    "paper": dict(seeds=[0, 1, 2, 3, 4], train_steps=8000),
}


def check_args(a: Args):
    """Reject bad input before anything is written (exit 2 via UsageError)."""
    for name in ("n_target", "n_source", "hidden", "t_emb", "diffusion_steps", "train_steps",
                 "batch_size", "eval_points", "eval_samples", "sample_steps"):
        if getattr(a, name) <= 0:
            raise common.UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if not a.d_values or not a.ratios or not a.seeds:
        raise common.UsageError("--d-values, --ratios and --seeds must each name at least one value")
    if any(d < 0 or not math.isfinite(d) for d in a.d_values):
        raise common.UsageError(f"--d-values must be finite and >= 0, got {a.d_values}")
    if not 0 < a.target_coverage < 1:
        raise common.UsageError(f"--target-coverage must be in (0, 1), got {a.target_coverage}")
    if a.sampler not in ("ddpm", "ddim"):
        raise common.UsageError(f"--sampler must be ddpm or ddim, got {a.sampler!r}")
    if a.lr <= 0:
        raise common.UsageError(f"--lr must be positive, got {a.lr}")
    ws = [common.resolve_ratio(r, a.n_target, a.n_source) for r in a.ratios]
    if len(set(ws)) != len(ws):
        raise common.UsageError(f"--ratios has repeated values: {ws}")
    if len(set(a.d_values)) != len(a.d_values) or len(set(a.seeds)) != len(a.seeds):
        raise common.UsageError("--d-values and --seeds must not repeat")
    return ws


def regime(d: float, a: Args) -> str:
    lo, hi = a.structured_range
    return "overlapping" if d == 0 else ("structured" if lo <= d <= hi else "disjoint")


# ----------------------------------------------------------------------------------------------
# the toy world: manifolds and ground-truth mappings
# ----------------------------------------------------------------------------------------------
def latent_input(theta: torch.Tensor, d: float, target: torch.Tensor) -> torch.Tensor:
    """Input x = (cos theta, sin theta, d * [target]): the two aligned directions and the
    separating one."""
    return torch.stack([theta.cos(), theta.sin(), d * target.to(theta.dtype)], dim=-1)


def true_output(theta: torch.Tensor, target, a: Args) -> torch.Tensor:
    """Ground truth y(theta): a shared petal curve r(theta)(cos, sin); the target's is scaled."""
    r = 1 + a.petal_amp * torch.sin(a.petals * theta)
    y = torch.stack([r * theta.cos(), r * theta.sin()], dim=-1)
    scale = torch.where(torch.as_tensor(target, dtype=torch.bool), a.target_scale, 1.0)
    return y * scale.to(y.dtype).unsqueeze(-1)


def make_dataset(seed: int, a: Args):
    """Seed `seed`'s datasets: theta and noisy outputs. Target theta ~ U[0, 2 pi c] (partial),
    source theta ~ U[0, 2 pi) (whole curve). Shared by every (d, w) cell with this seed."""
    g = torch.Generator().manual_seed(10_000 + seed)
    th_t = torch.rand(a.n_target, generator=g) * 2 * math.pi * a.target_coverage
    th_s = torch.rand(a.n_source, generator=g) * 2 * math.pi
    y_t = true_output(th_t, True, a) + a.output_noise * torch.randn(a.n_target, 2, generator=g)
    y_s = true_output(th_s, False, a) + a.output_noise * torch.randn(a.n_source, 2, generator=g)
    return th_t, y_t, th_s, y_s


# ----------------------------------------------------------------------------------------------
# the model: K independent 4-layer MLP denoisers, evaluated as one batched ensemble
# ----------------------------------------------------------------------------------------------
class EnsembleMLP(nn.Module):
    """K 4-layer MLPs eps_theta(y_t, t, x) with stacked weights: layer l maps (K, B, i) -> (K, B, o)
    with one bmm. Initialised like nn.Linear, each member from its own seed."""

    def __init__(self, seeds, in_dim, hidden, out_dim, t_emb):
        super().__init__()
        self.t_emb = t_emb
        dims = [in_dim + t_emb, hidden, hidden, hidden, out_dim]
        Ws, bs = [[] for _ in dims[1:]], [[] for _ in dims[1:]]
        for s in seeds:
            torch.manual_seed(s)
            for l, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
                lin = nn.Linear(i, o)
                Ws[l].append(lin.weight.detach().T.clone())
                bs[l].append(lin.bias.detach().clone())
        self.W = nn.ParameterList([nn.Parameter(torch.stack(w)) for w in Ws])
        self.b = nn.ParameterList([nn.Parameter(torch.stack(b).unsqueeze(1)) for b in bs])

    def forward(self, y_t, t, x):
        """y_t (K, B, 2), t (K, B) long, x (K, B, 3) -> eps (K, B, 2)."""
        half = self.t_emb // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half) / max(half - 1, 1))
        ang = t.unsqueeze(-1).float() * freqs
        h = torch.cat([y_t, x, ang.sin(), ang.cos()], dim=-1)
        for l, (W, b) in enumerate(zip(self.W, self.b)):
            h = torch.baddbmm(b, h, W)
            if l < len(self.W) - 1:
                h = nn.functional.mish(h)
        return h


def lr_at(step: int, a: Args) -> float:
    """Linear warm-up then cosine decay to 0 (nanoGPT's get_lr)."""
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    progress = (step - a.warmup) / max(a.train_steps - a.warmup, 1)
    return a.lr * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# training and evaluation of all cells of one d
# ----------------------------------------------------------------------------------------------
def train_group(d: float, ws: list, a: Args, data: dict, pbar=None):
    """Train one model per (w, seed) for this d, all at once. Returns the model and the per-model
    (w, seed) list."""
    cells = [(w, s) for w in ws for s in a.seeds]
    K = len(cells)
    w_vec = torch.tensor([w for w, _ in cells], dtype=torch.float64)
    seed_idx = torch.tensor([a.seeds.index(s) for _, s in cells])
    # stacked datasets: (num_seeds, N or M, ...)
    x_t = torch.stack([latent_input(data[s][0], d, torch.ones(a.n_target)) for s in a.seeds])
    y_t = torch.stack([data[s][1] for s in a.seeds])
    x_s = torch.stack([latent_input(data[s][2], d, torch.zeros(a.n_source)) for s in a.seeds])
    y_s = torch.stack([data[s][3] for s in a.seeds])
    # outputs normalised per dimension to [-1, 1] over the union of both datasets (as Diffusion
    # Policy normalises actions), so samples can be clipped at 1
    center, half = output_normalizer(y_t, y_s)
    y_t, y_s = (y_t - center) / half, (y_s - center) / half

    model = EnsembleMLP([1000 * s + 7 for _, s in cells], 2 + 3, a.hidden, 2, a.t_emb)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = common.NoiseSchedule.make(a.diffusion_steps)
    g = torch.Generator().manual_seed(int(d * 1000) + 1)
    sel = seed_idx.unsqueeze(1)
    for step in range(a.train_steps):
        # --- co-training batch: each sample is a target sample with probability w (Eq. 1) ---
        is_t, idx = common.sample_mixed_batch(a.n_target, a.n_source, w_vec, a.batch_size, g)
        m = is_t.unsqueeze(-1)
        x = torch.where(m, x_t[sel, idx.clamp(max=a.n_target - 1)], x_s[sel, idx.clamp(max=a.n_source - 1)])
        y = torch.where(m, y_t[sel, idx.clamp(max=a.n_target - 1)], y_s[sel, idx.clamp(max=a.n_source - 1)])
        # --- denoising loss, summed over members so each gets its own mean-loss gradient ---
        loss = common.ddpm_loss(lambda yt, t, c: model(yt, t, c), y, x, sched, g, reduce=False)
        loss = loss.mean(1).sum()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, a)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        common.ema_update(ema.parameters(), model.parameters(), common.ema_decay(step) if a.ema else 0.0)
        if pbar is not None:
            pbar.update(1)
            if step % 100 == 0:
                pbar.set_postfix(d=d, loss=f"{loss.item() / K:.4f}")
    return ema, cells, (center[seed_idx], half[seed_idx])


def output_normalizer(y_t, y_s):
    """Per-seed, per-dimension (center, half-range) mapping the union of outputs to [-1, 1]."""
    y = torch.cat([y_t, y_s], dim=1)
    lo, hi = y.amin(1, keepdim=True), y.amax(1, keepdim=True)
    return (hi + lo) / 2, (hi - lo) / 2


def eval_thetas(a: Args):
    """Test inputs: evenly spaced theta over the whole curve, and which of them are OOD."""
    theta = (torch.arange(a.eval_points) + 0.5) * 2 * math.pi / a.eval_points
    ood = theta > 2 * math.pi * a.target_coverage
    return theta, ood


@torch.no_grad()
def sample_outputs(model, d: float, norm, a: Args, seed: int = 0):
    """Sample eval_samples outputs per test input for every member: (K, P, S, 2), in output units."""
    center, half = norm
    K = len(center)
    theta, _ = eval_thetas(a)
    P, S = a.eval_points, a.eval_samples
    x = latent_input(theta, d, torch.ones(P)).repeat_interleave(S, 0).expand(K, P * S, 3)
    sched = common.NoiseSchedule.make(a.diffusion_steps)
    g = torch.Generator().manual_seed(seed)
    eps_fn = lambda y_t, t: model(y_t, t, x)
    if a.sampler == "ddpm":
        y = common.ddpm_sample(eps_fn, (K, P * S, 2), sched, g, clip=1.0)
    else:
        y = common.ddim_sample(eps_fn, (K, P * S, 2), sched, a.sample_steps, g, clip=1.0)
    return (y * half + center).reshape(K, P, S, 2)


def cell_metrics(y_hat: torch.Tensor, a: Args) -> dict:
    """Errors of one member's samples (P, S, 2) against the known target mapping.
    mse_*: mean squared error of sampled outputs in-distribution, OOD and over the whole curve
    (the Fig. 4 "loss"); w2: exact 2-Wasserstein distance between sampled and true (input, output)
    clouds; source_mode: share of samples nearer the source output than the target output."""
    import ot
    theta, ood = eval_thetas(a)
    y_true = true_output(theta, True, a).unsqueeze(1)
    y_src = true_output(theta, False, a).unsqueeze(1)
    se = (y_hat - y_true).pow(2).sum(-1)  # (P, S)
    near_src = ((y_hat - y_src).pow(2).sum(-1) < se).float()
    x = latent_input(theta, 0.0, torch.zeros(len(theta)))[:, :2].unsqueeze(1).expand(-1, a.eval_samples, 2)
    pred = torch.cat([x, y_hat], -1).reshape(-1, 4).double().numpy()
    true = torch.cat([x, y_true.expand_as(y_hat)], -1).reshape(-1, 4).double().numpy()
    n = len(pred)
    w2 = math.sqrt(max(ot.emd2(np.full(n, 1 / n), np.full(n, 1 / n), ot.dist(pred, true)), 0.0))
    return {
        "mse_all": se.mean().item(),
        "mse_id": se[~ood].mean().item(),
        "mse_ood": se[ood].mean().item() if ood.any() else float("nan"),
        "w2": w2,
        "source_mode": near_src.mean().item(),
    }


def run_group(d: float, ws: list, a: Args, data: dict, pbar) -> dict:
    t0 = time.time()
    model, cells, norm = train_group(d, ws, a, data, pbar)
    y_hat = sample_outputs(model, d, norm, a)
    rows = []
    for k, (w, s) in enumerate(cells):
        rows.append({"d": d, "w": w, "seed": s, "regime": regime(d, a), **cell_metrics(y_hat[k], a)})
    return {"d": d, "cells": rows, "seconds": time.time() - t0,
            # seed-0 samples kept for the Fig. 3 grid
            "samples_seed0": {str(w): y_hat[k].tolist() for k, (w, s) in enumerate(cells) if s == a.seeds[0]}}


# ----------------------------------------------------------------------------------------------
# analysis: ANOVA and figures
# ----------------------------------------------------------------------------------------------
def anova_table(rows: list, a: Args, ws: list, key: str = "mse_all", log: bool = False) -> dict:
    """Two-factor ANOVA of `key` over (alignment d, mixing ratio w in `ws`), seeds as replicates."""
    y = np.zeros((len(a.d_values), len(ws), len(a.seeds)))
    for r in rows:
        if r["w"] in ws:
            v = r[key]
            y[a.d_values.index(r["d"]), ws.index(r["w"]), a.seeds.index(r["seed"])] = math.log(v) if log else v
    res = common.two_way_anova(y)
    return {"metric": ("log " if log else "") + key, "ratios": ws,
            "factor_A": "alignment d", "factor_B": "mixing ratio w",
            "alignment": res["A"], "ratio": res["B"], "interaction": res["AB"],
            "residual": res["residual"], "ss_total": res["ss_total"]}


def plot_fig3(groups: list, a: Args, ws: list, data: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    theta, ood = eval_thetas(a)
    dense = torch.linspace(0, 2 * math.pi, 400)
    y_tgt, y_src = true_output(dense, True, a), true_output(dense, False, a)
    th_t, yt, _, _ = data[a.seeds[0]]
    R, C = len(groups), len(ws)
    fig, axes = plt.subplots(R, C, figsize=(1.9 * C, 1.9 * R), squeeze=False)
    for i, gr in enumerate(groups):
        for j, w in enumerate(ws):
            ax = axes[i, j]
            ax.plot(y_src[:, 0], y_src[:, 1], color="0.7", lw=0.8, ls="--")
            ax.plot(y_tgt[:, 0], y_tgt[:, 1], color="k", lw=0.8)
            y = np.asarray(gr["samples_seed0"][str(w)])  # (P, S, 2)
            ax.scatter(*y[~ood.numpy()].reshape(-1, 2).T, s=1.5, color="tab:blue", alpha=0.6)
            ax.scatter(*y[ood.numpy()].reshape(-1, 2).T, s=1.5, color="tab:red", alpha=0.6)
            ax.scatter(yt[:, 0], yt[:, 1], s=6, marker="x", color="tab:green", lw=0.7)
            ax.set_xlim(-2.2, 2.2); ax.set_ylim(-2.2, 2.2)
            ax.set_xticks([]); ax.set_yticks([]); ax.set_aspect("equal")
            if i == 0:
                ax.set_title(f"w = {w:.3g}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"d = {gr['d']:g}\n{regime(gr['d'], a)}", fontsize=8)
    fig.suptitle("Toy co-training (Fig. 3 analogue), seed 0: samples in-distribution (blue) and OOD (red); "
                 "true target (black), source (grey dashed), target data (green x)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_fig4(rows: list, a: Args, ws: list, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [("mse_all", "whole target curve"), ("mse_id", "in-distribution"), ("mse_ood", "OOD region")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    cmap = plt.get_cmap("viridis")
    for ax, (key, title) in zip(axes, keys):
        for i, d in enumerate(a.d_values):
            m = [np.mean([r[key] for r in rows if r["d"] == d and r["w"] == w]) for w in ws]
            s = [np.std([r[key] for r in rows if r["d"] == d and r["w"] == w]) for w in ws]
            c = cmap(i / max(len(a.d_values) - 1, 1))
            ax.errorbar(ws, m, yerr=s, marker="o", ms=3, capsize=2, color=c,
                        label=f"d={d:g} ({regime(d, a)})")
        ax.set_xscale("log"); ax.set_yscale("log")
        ax.set_xlabel("mixing ratio w (w = 1: target-only)")
        ax.set_title(f"MSE, {title}", fontsize=9)
    axes[0].set_ylabel("loss vs ground truth (mean +- std over seeds)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Toy co-training: loss vs mixing ratio, one curve per alignment d (Fig. 4 analogue)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_loss_vs_d(rows: list, a: Args, ws: list, path: str):
    """Loss against the separation d: mean over the co-training ratios (w < 1) and best ratio."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cot = [w for w in ws if w < 1] or ws
    xs = np.arange(len(a.d_values))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label, c in (("mse_all", "whole curve", "k"), ("mse_ood", "OOD region", "tab:red")):
        cell = {(d, w): np.mean([r[key] for r in rows if r["d"] == d and r["w"] == w]) for d in a.d_values for w in ws}
        ax.plot(xs, [np.mean([cell[d, w] for w in cot]) for d in a.d_values], "-o", color=c, ms=4,
                label=f"{label}: mean over w < 1")
        ax.plot(xs, [min(cell[d, w] for w in cot) for d in a.d_values], "--s", color=c, ms=3,
                label=f"{label}: best w < 1")
        if 1.0 in ws:
            ax.axhline(np.mean([cell[d, 1.0] for d in a.d_values]), color=c, lw=0.8, ls=":",
                       label=f"{label}: target-only (w = 1)")
    ax.set_xticks(xs, [f"{d:g}\n{regime(d, a)[:4]}" for d in a.d_values], fontsize=7)
    ax.set_xlabel("separation d along z3 (regime)"); ax.set_ylabel("MSE vs ground truth")
    ax.set_yscale("log"); ax.legend(fontsize=6)
    ax.set_title("Toy co-training: loss against alignment", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_setup(a: Args, data: dict, path: str):
    """The toy world: inputs in the 3-D latent space and outputs, for one d."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    th_t, y_t, th_s, y_s = data[a.seeds[0]]
    d = a.structured_range[1]  # the largest "structured" separation
    fig = plt.figure(figsize=(9, 4))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    xs, xt = latent_input(th_s, 0.0, torch.zeros(len(th_s))), latent_input(th_t, d, torch.ones(len(th_t)))
    ax.scatter(*xs.T, s=1, color="0.6", label=f"source (M={a.n_source})")
    ax.scatter(*xt.T, s=8, color="tab:green", label=f"target (N={a.n_target})")
    ax.set_xlabel("z1"); ax.set_ylabel("z2"); ax.set_zlabel("z3")
    ax.set_title(f"inputs: latent directions, d = {d:g}", fontsize=9)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    ax.scatter(*y_s.T, s=1, color="0.6", label="source outputs")
    ax.scatter(*y_t.T, s=8, color="tab:green", label="target outputs")
    dense = torch.linspace(0, 2 * math.pi, 400)
    ax.plot(*true_output(dense, True, a).T, color="k", lw=0.8, label="true target mapping")
    ax.set_aspect("equal"); ax.legend(fontsize=7)
    ax.set_title("outputs y", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def loss_table(rows: list, a: Args, ws: list, key: str) -> list:
    lines = ["| d | regime | " + " | ".join(f"w={w:.3g}" for w in ws) + " |",
             "|---|---|" + "---|" * len(ws)]
    for d in a.d_values:
        cells = []
        for w in ws:
            v = [r[key] for r in rows if r["d"] == d and r["w"] == w]
            cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f}")
        lines.append(f"| {d:g} | {regime(d, a)} | " + " | ".join(cells) + " |")
    return lines


def per_d_table(rows: list, a: Args, ws: list) -> list:
    """Per separation d: loss averaged over the co-training ratios (w < 1), the best of them, and
    the OOD loss likewise (the numbers behind fig_loss_vs_d.png)."""
    cot = [w for w in ws if w < 1] or ws
    lines = ["| d | regime | mean loss, w < 1 | best loss (w) | mean OOD loss, w < 1 | best OOD loss (w) |",
             "|---|---|---|---|---|---|"]
    for d in a.d_values:
        row = [f"{d:g}", regime(d, a)]
        for key in ("mse_all", "mse_ood"):
            cell = {w: np.mean([r[key] for r in rows if r["d"] == d and r["w"] == w]) for w in cot}
            best = min(cell, key=cell.get)
            row += [f"{np.mean(list(cell.values())):.3f}", f"{cell[best]:.3f} ({best:g})"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_markdown(rows: list, anovas: list, a: Args, ws: list) -> str:
    n = len(a.seeds)
    out = ["Per separation d, over the co-training ratios (seed means):", ""] + per_d_table(rows, a, ws) + [
           "", f"Loss (MSE of sampled outputs vs ground truth over the whole target curve), mean ± std over {n} seeds:",
           ""] + loss_table(rows, a, ws, "mse_all") + [
           "", f"MSE in the target's OOD region only, mean ± std over {n} seeds:", ""] + loss_table(
           rows, a, ws, "mse_ood") + [
           "", "Share of samples nearer the source output than the target output (bimodality), "
           f"mean ± std over {n} seeds:", ""] + loss_table(rows, a, ws, "source_mode") + [""]
    for tab in anovas:
        which = "all ratios" if tab["ratios"] == ws else "ratios " + ", ".join(f"{w:g}" for w in tab["ratios"])
        out += [f"Two-factor ANOVA on {tab['metric']}, {which} (share of total sum of squares):", "",
                "| term | SS | df | share | F | p |", "|---|---|---|---|---|---|"]
        for k in ("alignment", "ratio", "interaction", "residual"):
            r = tab[k]
            out.append(f"| {k} | {r['ss']:.4g} | {r['df']} | {100 * r['share']:.1f}% | "
                       f"{r.get('F', float('nan')):.3g} | {r.get('p', float('nan')):.2g} |")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
def main(argv=None):
    a = common.parse_args(Args, PROFILES, argv, description=__doc__)
    try:
        ws = check_args(a)
    except common.UsageError as e:
        common.die(str(e))
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    config = {k: v for k, v in asdict(a).items() if k not in ("out", "threads")}
    os.makedirs(os.path.join(a.out, "cells"), exist_ok=True)
    cfg_path = os.path.join(a.out, "config.json")
    if os.path.exists(cfg_path):
        try:
            common.check_same_settings(common.read_json(cfg_path), config, a.out,
                                       hint="use another --out or delete it")
        except common.UsageError as e:
            common.die(str(e))
    else:
        common.write_json(cfg_path, config)

    common.seed_everything(0)
    data = {s: make_dataset(s, a) for s in a.seeds}
    groups = []
    todo = [d for d in a.d_values if not os.path.exists(os.path.join(a.out, "cells", f"d_{d:g}.json"))]
    with tqdm(total=len(todo) * a.train_steps, desc="toy: training", unit="step",
              disable=not sys.stderr.isatty() and os.environ.get("TQDM_FORCE") is None) as pbar:
        for d in a.d_values:
            path = os.path.join(a.out, "cells", f"d_{d:g}.json")
            if os.path.exists(path):  # resume: this d is done
                with open(path) as f:
                    groups.append(json.load(f))
                continue
            gr = run_group(d, ws, a, data, pbar)
            common.write_json(path, gr)
            groups.append(gr)
    rows = [r for gr in groups for r in gr["cells"]]

    metrics = {"cells": rows, "ratios": ws, "d_values": a.d_values,
               "natural_ratio": common.natural_ratio(a.n_target, a.n_source),
               "balanced_range": common.balanced_ratio_range(a.n_target, a.n_source)}
    if len(a.seeds) >= 2:
        metrics["anova"] = anova_table(rows, a, ws)  # the pre-declared analysis
        # secondary views: log loss; co-training ratios only (w = 1 ignores the source, so d has
        # no effect there); the OOD region alone
        cotrain = [w for w in ws if w < 1]
        metrics["anova_variants"] = [anova_table(rows, a, ws, log=True)] + (
            [anova_table(rows, a, cotrain)] if 2 <= len(cotrain) < len(ws) else []) + [
            anova_table(rows, a, ws, key="mse_ood")]
    common.write_json(os.path.join(a.out, "metrics.json"), metrics)
    plot_fig3(groups, a, ws, data, os.path.join(a.out, "fig3_grid.png"))
    plot_fig4(rows, a, ws, os.path.join(a.out, "fig4_loss_vs_ratio.png"))
    plot_setup(a, data, os.path.join(a.out, "fig_setup.png"))
    plot_loss_vs_d(rows, a, ws, os.path.join(a.out, "fig_loss_vs_d.png"))
    if "anova" in metrics:
        md = summary_markdown(rows, [metrics["anova"]] + metrics["anova_variants"], a, ws)
        common.write_text(os.path.join(a.out, "summary.md"), md)
        print(md)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
