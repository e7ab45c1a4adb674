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

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import ot
import torch
import torch.nn as nn
from scipy import stats
from tqdm import tqdm

import common
from common import arg


# ----------------------------------------------------------------------------------------------
# arguments: every knob of the experiment, one line of documentation each
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    profile: str = "cpu"
    design: str = arg("ours", "toy geometry: ours (circle manifolds, petal outputs; README) or paper "
                              "(Fig. 3: input planes, spiral outputs; Fig. 4's grid; DESIGNS below)")
    out: str = arg("runs/toy/default", "output folder")
    d_values: list = arg([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0],
                         "separations d of the target from the source manifold along the 3rd latent direction")
    structured_range: list = arg([0.01, 2.0], "d values labelled 'structured' (inclusive; a priori: up to the "
                                              "manifold's diameter, 2); 0 is 'overlapping', above is 'disjoint'")
    ratios: list = arg(["0.005", "0.016", "0.1", "0.3", "0.5", "0.8", "1.0"],
                       "mixing ratios w (Sec. 3 grid); numbers, 'natural' or 'auto'")
    seeds: list = arg([0, 1, 2], "seeds; seed s draws dataset s and initialises/trains model s")
    n_target: int = arg(20, "N: target samples (sparse)")
    n_source: int = arg(2000, "M: source samples (cover the whole manifold)")
    target_coverage: float = arg(0.6, "fraction of the curve (theta in [0, 2 pi * c]) the target data covers; "
                                          "the rest is OOD")
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
    # the paper design's geometry (read off Fig. 3; unused by --design ours)
    overlap_max: float = arg(0.0, "d values up to this are labelled 'overlapping'")
    clip_samples: bool = arg(True, "clip sampled outputs to the normalized data range [-1, 1] (Diffusion "
                                     "Policy's action clip)")
    spiral_turns: float = arg(1.75, "paper design: turns of the output spiral")
    spiral_radius: list = arg([1.0, 10.0], "paper design: the spiral's radius at its inner and outer end")
    target_rotation: float = arg(90.0, "paper design: the target spiral is the source's rotated by this many "
                                          "degrees (and scaled by --target-scale)")
    fig3_d_values: list = arg([], "d values drawn as Fig. 3's rows (they get the extra ratios --fig3-ratios)")
    fig3_ratios: list = arg([], "Fig. 3's columns; those not in --ratios are trained for the Fig. 3 rows only, "
                                "outside the ANOVA (empty: every ratio, every d)")


PROFILES = {
    "smoke": dict(d_values=[0.0, 1.0], ratios=["0.1", "1.0"], seeds=[0, 1], n_source=200,
                  hidden=32, train_steps=30, batch_size=32, warmup=5, eval_points=12,
                  eval_samples=2, diffusion_steps=20),
    "cpu": {},
    "paper": dict(seeds=[0, 1, 2, 3, 4], train_steps=8000),
}

# --design paper: the paper's own toy as far as Fig. 3 and Fig. 4 show it, fixed before any run.
# Read off the figures: each domain's inputs fill a 2-D plane (z = 0 source, z = dz target; the
# planes are unit squares; Fig. 3's rows sit at dz ~ 0, 1, 10); the outputs are spiral curves, the
# target's a transformed copy of the source's; the target samples cover only part of their
# manifold; the loss axis runs from ~1 to ~5000 (so sampled outputs are not clipped to the data
# range, which would cap the loss near (2 x the spiral's radius)^2); Fig. 4's dz and w levels.
# Left open by the figures, chosen here (docs/toy.md lists each): the output depends on the
# input's position u along one edge of the plane (v, across it, is a nuisance direction); an
# Archimedean spiral of 1.75 turns, radius 1 -> 10; target = source rotated 90 degrees and scaled
# 1.2; N = 30 target samples covering u in [0, 0.7] (u > 0.7 is the OOD region), M = 3000 source
# samples over the whole plane; output noise 0.1; regimes: dz <= 0.1 overlapping, 0.5-5
# structured, >= 10 disjoint; the network, optimizer and budget of our design.
DESIGNS = {
    "ours": {},
    "paper": dict(d_values=[0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 50.0],
                  ratios=["0.001", "0.01", "0.05", "0.1", "0.3", "0.5", "0.7", "0.9", "0.99"],
                  structured_range=[0.5, 5.0], overlap_max=0.1, n_target=30, n_source=3000,
                  target_coverage=0.7, target_scale=1.2, output_noise=0.1, clip_samples=False,
                  fig3_d_values=[0.01, 1.0, 10.0], fig3_ratios=["0", "0.01", "0.1", "1"], out="runs/toy/paper"),
}


def check_args(a: Args):
    """Reject bad input before anything is written (exit 2 via UsageError)."""
    common.check_writable(a.out)
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
    for w in fig3_ratios(a):
        common.check_ratio(w)
    return ws


def fig3_ratios(a: Args) -> list:
    try:
        return [float(w) for w in a.fig3_ratios]
    except ValueError:
        raise common.UsageError(f"--fig3-ratios must be numbers, got {a.fig3_ratios}")


def group_ratios(d: float, ws: list, a: Args) -> list:
    """The ratios trained at separation d: the grid's, plus Fig. 3's extra columns on its rows."""
    extra = [w for w in fig3_ratios(a) if w not in ws] if d in a.fig3_d_values else []
    return ws + extra


def regime(d: float, a: Args) -> str:
    lo, hi = a.structured_range
    return "overlapping" if d <= a.overlap_max else ("structured" if lo <= d <= hi else "disjoint")


# ----------------------------------------------------------------------------------------------
# the toy world: manifolds and ground-truth mappings. A sample's position on its manifold is a
# tensor p: theta, shape (n,), in our design; (u, v) in the unit square, shape (n, 2), in the
# paper's (u = position along the output curve, v = across the plane, ignored by the output).
# ----------------------------------------------------------------------------------------------
def latent_input(p: torch.Tensor, d: float, target: torch.Tensor) -> torch.Tensor:
    """Input x: ours (cos theta, sin theta, d * [target]), the paper's (u, v, d * [target]): two
    aligned directions and the separating one."""
    z = d * target.to(p.dtype)
    if p.dim() == 2:
        return torch.stack([p[:, 0], p[:, 1], z], dim=-1)
    return torch.stack([p.cos(), p.sin(), z], dim=-1)


def true_output(p: torch.Tensor, target, a: Args) -> torch.Tensor:
    """Ground truth y(p). Ours: a shared petal curve r(theta)(cos, sin), the target's scaled.
    The paper's: an Archimedean spiral in u, the target's rotated and scaled."""
    is_t = torch.as_tensor(target, dtype=torch.bool)
    if a.design == "paper":
        u = p[:, 0] if p.dim() == 2 else p
        r0, r1 = a.spiral_radius
        phi, r = 2 * math.pi * a.spiral_turns * u, r0 + (r1 - r0) * u
        y = torch.stack([r * phi.cos(), r * phi.sin()], dim=-1)
        c, s_ = math.cos(math.radians(a.target_rotation)), math.sin(math.radians(a.target_rotation))
        y_t = a.target_scale * torch.stack([c * y[:, 0] - s_ * y[:, 1], s_ * y[:, 0] + c * y[:, 1]], -1)
        return torch.where(is_t.unsqueeze(-1), y_t, y)
    r = 1 + a.petal_amp * torch.sin(a.petals * p)
    y = torch.stack([r * p.cos(), r * p.sin()], dim=-1)
    scale = torch.where(is_t, a.target_scale, 1.0)
    return y * scale.to(y.dtype).unsqueeze(-1)


def make_dataset(seed: int, a: Args):
    """Seed `seed`'s datasets: positions and noisy outputs. The target covers a fraction c of its
    curve (theta in [0, 2 pi c], or u in [0, c]); the source the whole manifold. Shared by every
    (d, w) cell with this seed."""
    g = torch.Generator().manual_seed(10_000 + seed)
    if a.design == "paper":
        p_t = torch.stack([torch.rand(a.n_target, generator=g) * a.target_coverage,
                           torch.rand(a.n_target, generator=g)], -1)
        p_s = torch.rand(a.n_source, 2, generator=g)
    else:
        p_t = torch.rand(a.n_target, generator=g) * 2 * math.pi * a.target_coverage
        p_s = torch.rand(a.n_source, generator=g) * 2 * math.pi
    y_t = true_output(p_t, True, a) + a.output_noise * torch.randn(a.n_target, 2, generator=g)
    y_s = true_output(p_s, False, a) + a.output_noise * torch.randn(a.n_source, 2, generator=g)
    return p_t, y_t, p_s, y_s


def dense_curve(a: Args, n: int = 400) -> torch.Tensor:
    """Positions tracing the whole output curve (for drawing it)."""
    if a.design == "paper":
        return torch.stack([torch.linspace(0, 1, n), torch.zeros(n)], -1)
    return torch.linspace(0, 2 * math.pi, n)


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
def sample_mixed_batch(n_target: int, n_source: int, w, batch_size: int,
                       generator: torch.Generator = None):
    """Draw one co-training batch: each sample comes from the target domain with probability w
    (so the batch's target count is Binomial(batch_size, w)) and is then drawn uniformly, with
    replacement, from that domain. w = 1 is target-only (real-only), w = 0 source-only (sim-only).

    `w` is a float or a tensor of shape (K,) to draw K independent batches at once (one per
    model of an ensemble). Returns (is_target, index): bool and long tensors of shape
    (batch_size,) or (K, batch_size); `index` indexes the target set where is_target, else the
    source set."""
    w_t = torch.as_tensor(w, dtype=torch.float64)
    for v in w_t.reshape(-1).tolist():
        common.check_ratio(v)
    if n_target <= 0 and bool((w_t > 0).any()):
        raise common.UsageError("mixing ratio > 0 needs a non-empty target dataset")
    if n_source <= 0 and bool((w_t < 1).any()):
        raise common.UsageError("mixing ratio < 1 needs a non-empty source dataset")
    shape = tuple(w_t.shape) + (batch_size,)
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    is_target = u < w_t.unsqueeze(-1)
    i_t = torch.randint(0, max(n_target, 1), shape, generator=generator)
    i_s = torch.randint(0, max(n_source, 1), shape, generator=generator)
    return is_target, torch.where(is_target, i_t, i_s)


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
        is_t, idx = sample_mixed_batch(a.n_target, a.n_source, w_vec, a.batch_size, g)
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
    """Test inputs on the target manifold, evenly spaced along the whole curve (the paper's: v
    spread over the plane by a golden-ratio sequence), and which of them are OOD."""
    if a.design == "paper":
        u = (torch.arange(a.eval_points) + 0.5) / a.eval_points
        v = (torch.arange(a.eval_points) * 0.6180339887498949 + 0.5) % 1.0
        return torch.stack([u, v], -1), u > a.target_coverage
    theta = (torch.arange(a.eval_points) + 0.5) * 2 * math.pi / a.eval_points
    return theta, theta > 2 * math.pi * a.target_coverage


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
        y = common.ddpm_sample(eps_fn, (K, P * S, 2), sched, g, clip=1.0 if a.clip_samples else None)
    else:
        y = common.ddim_sample(eps_fn, (K, P * S, 2), sched, a.sample_steps, g, clip=1.0 if a.clip_samples else None)
    return (y * half + center).reshape(K, P, S, 2)


def cell_metrics(y_hat: torch.Tensor, a: Args) -> dict:
    """Errors of one member's samples (P, S, 2) against the known target mapping.
    mse_*: mean squared error of sampled outputs in-distribution, OOD and over the whole curve
    (the Fig. 4 "loss"); w2: exact 2-Wasserstein distance between sampled and true (input, output)
    clouds; source_mode: share of samples nearer the source output than the target output."""
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
def two_way_anova(y: np.ndarray) -> dict:
    """Two-factor ANOVA with replication on a balanced design (Fisher; Sec. 3, Finding 2).
    y has shape (a, b, n): levels of factor A x levels of factor B x n replicates (n >= 2).
    Returns sums of squares, degrees of freedom, mean squares, F, p and each term's share of the
    total sum of squares for A, B, the A x B interaction and the residual."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 3 or min(y.shape) < 1 or y.shape[2] < 2:
        raise ValueError(f"two_way_anova needs shape (a, b, n) with n >= 2, got {y.shape}")
    a, b, n = y.shape
    grand = y.mean()
    m_a, m_b, m_ab = y.mean(axis=(1, 2)), y.mean(axis=(0, 2)), y.mean(axis=2)
    ss = {
        "A": b * n * ((m_a - grand) ** 2).sum(),
        "B": a * n * ((m_b - grand) ** 2).sum(),
        "AB": n * ((m_ab - m_a[:, None] - m_b[None, :] + grand) ** 2).sum(),
        "residual": ((y - m_ab[:, :, None]) ** 2).sum(),
    }
    df = {"A": a - 1, "B": b - 1, "AB": (a - 1) * (b - 1), "residual": a * b * (n - 1)}
    ss_total = ((y - grand) ** 2).sum()
    ms_res = ss["residual"] / df["residual"]
    out = {"ss_total": float(ss_total), "df_total": a * b * n - 1}
    for k in ss:
        ms = ss[k] / df[k] if df[k] > 0 else float("nan")
        row = {"ss": float(ss[k]), "df": df[k], "ms": float(ms),
               "share": float(ss[k] / ss_total) if ss_total > 0 else float("nan")}
        if k != "residual" and df[k] > 0 and ms_res > 0:
            row["F"] = float(ms / ms_res)
            row["p"] = float(stats.f.sf(row["F"], df[k], df["residual"]))
        out[k] = row
    return out


def anova_table(rows: list, a: Args, ws: list, key: str = "mse_all", log: bool = False) -> dict:
    """Two-factor ANOVA of `key` over (alignment d, mixing ratio w in `ws`), seeds as replicates."""
    y = np.zeros((len(a.d_values), len(ws), len(a.seeds)))
    for r in rows:
        if r["w"] in ws:
            v = r[key]
            y[a.d_values.index(r["d"]), ws.index(r["w"]), a.seeds.index(r["seed"])] = math.log(v) if log else v
    res = two_way_anova(y)
    return {"metric": ("log " if log else "") + key, "ratios": ws,
            "factor_A": "alignment d", "factor_B": "mixing ratio w",
            "alignment": res["A"], "ratio": res["B"], "interaction": res["AB"],
            "residual": res["residual"], "ss_total": res["ss_total"]}


def plot_fig3(groups: list, a: Args, ws: list, data: dict, path: str):
    """Rows: the Fig. 3 separations (--fig3-d-values; default every d), columns: the Fig. 3
    ratios (--fig3-ratios; default every w); seed 0's samples."""
    matplotlib.use("Agg")
    _, ood = eval_thetas(a)
    dense = dense_curve(a)
    y_tgt, y_src = true_output(dense, True, a), true_output(dense, False, a)
    _, yt, _, _ = data[a.seeds[0]]
    rows = [gr for gr in groups if gr["d"] in a.fig3_d_values] or groups
    cols = [w for w in (fig3_ratios(a) or ws) if all(str(w) in gr["samples_seed0"] for gr in rows)]
    lim = 1.15 * float(torch.cat([y_tgt, y_src]).abs().max())
    R, C = len(rows), len(cols)
    fig, axes = plt.subplots(R, C, figsize=(1.9 * C, 1.9 * R), squeeze=False)
    for i, gr in enumerate(rows):
        for j, w in enumerate(cols):
            ax = axes[i, j]
            ax.plot(y_src[:, 0], y_src[:, 1], color="0.7", lw=0.8, ls="--")
            ax.plot(y_tgt[:, 0], y_tgt[:, 1], color="k", lw=0.8)
            y = np.asarray(gr["samples_seed0"][str(w)])  # (P, S, 2)
            ax.scatter(*y[~ood.numpy()].reshape(-1, 2).T, s=1.5, color="tab:blue", alpha=0.6)
            ax.scatter(*y[ood.numpy()].reshape(-1, 2).T, s=1.5, color="tab:red", alpha=0.6)
            ax.scatter(yt[:, 0], yt[:, 1], s=6, marker="x", color="tab:green", lw=0.7)
            ax.set_xlim(-lim, lim); ax.set_ylim(-lim, lim)
            ax.set_xticks([]); ax.set_yticks([]); ax.set_aspect("equal")
            if i == 0:
                name = {0.0: " (source-only)", 1.0: " (target-only)"}.get(w, "")
                ax.set_title(f"w = {w:.3g}{name}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"d = {gr['d']:g}\n{regime(gr['d'], a)}", fontsize=8)
    fig.suptitle("Toy co-training (Fig. 3 analogue), seed 0: samples in-distribution (blue) and OOD (red); "
                 "true target (black), source (grey dashed), target data (green x)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_fig4_paper(rows: list, a: Args, ws: list, anova: dict, path: str):
    """Fig. 4 as the paper draws it: log loss against the ratio levels (evenly spaced), one curve
    per d (coolwarm, red = small d), and the ANOVA shares as bars (d, w, interaction)."""
    matplotlib.use("Agg")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    cmap = plt.get_cmap("coolwarm_r")
    for i, d in enumerate(a.d_values):
        m = [np.mean([r["mse_all"] for r in rows if r["d"] == d and r["w"] == w]) for w in ws]
        ax.plot(range(len(ws)), m, "-o", ms=4, color=cmap(i / max(len(a.d_values) - 1, 1)), label=f"dz = {d:g}")
    ax.set_yscale("log")
    ax.set_xticks(range(len(ws)), [f"{w:g}" for w in ws])
    ax.set_xlabel("mixing ratio w"); ax.set_ylabel("L2 loss (log), mean over seeds")
    ax.set_title("L2 loss"); ax.grid(True, which="both", ls="--", alpha=0.4); ax.legend(fontsize=7, title="dz")
    shares = [anova[k]["share"] for k in ("alignment", "ratio", "interaction")]
    bx.bar(["dz", "w", "interaction"], shares, color=["firebrick", "royalblue", "0.8"])
    bx.set_ylabel("variance explained"); bx.set_title(f"ANOVA ({anova['metric']})")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_fig4(rows: list, a: Args, ws: list, path: str):
    matplotlib.use("Agg")
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
    matplotlib.use("Agg")
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
    matplotlib.use("Agg")
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
    ax.plot(*true_output(dense_curve(a), True, a).T, color="k", lw=0.8, label="true target mapping")
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
    if a.design == "paper":
        out += ["The paper's Fig. 4 bars (read off the figure): dz 0.48, w 0.22, interaction 0.30.", ""]
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
    a = common.parse_args(Args, PROFILES, argv, description=__doc__, presets={"design": DESIGNS}, check=check_args)
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
            gr = run_group(d, group_ratios(d, ws, a), a, data, pbar)
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
    if "anova" in metrics:
        plot_fig4_paper(rows, a, ws, metrics["anova"], os.path.join(a.out, "fig4_paper_style.png"))
        plot_fig4_paper(rows, a, ws, metrics["anova_variants"][0], os.path.join(a.out, "fig4_paper_style_logloss.png"))
    plot_setup(a, data, os.path.join(a.out, "fig_setup.png"))
    plot_loss_vs_d(rows, a, ws, os.path.join(a.out, "fig_loss_vs_d.png"))
    if "anova" in metrics:
        md = summary_markdown(rows, [metrics["anova"]] + metrics["anova_variants"], a, ws)
        common.write_text(os.path.join(a.out, "summary.md"), md)
        print(md)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
