"""Learning code shared by the stage scripts (paper: Lei et al. 2026).

Sections, in the order of the method:
  1. seeding and command-line errors
  2. diffusion core: noise schedule, DDPM loss, DDPM and DDIM samplers (Chi et al. Diffusion Policy)
  3. classifier-free guidance combination (Sec. 5.1, App. C)
  4. mixing ratio: batch sampler (Eq. 1) and the ratio guideline (App. B.3, D.5)
  5. statistics: two-factor ANOVA (Sec. 3, Finding 2)
Later issues add the policy, losses and datasets below these.
"""
import argparse
import math
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch


# ----------------------------------------------------------------------------------------------
# 1. seeding and command-line errors
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed python, numpy and torch; on CPU also ask torch for deterministic kernels.
    Returns a torch.Generator seeded with `seed` for code that wants its own stream."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


class UsageError(Exception):
    """Bad input from the user: the stage prints one line and exits with code 2."""


def die(msg: str, code: int = 2):
    """Print one clear line to stderr and exit (code 2 = bad input, as argparse does)."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad input in one line (no usage dump) and exits with code 2."""

    def error(self, message):
        die(f"{self.prog}: {message}")


# ----------------------------------------------------------------------------------------------
# 2. diffusion core
# ----------------------------------------------------------------------------------------------
def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule of Nichol & Dhariwal (2021), the `squaredcos_cap_v2` of diffusers that
    Diffusion Policy uses: alpha_bar(t) = cos^2((t + 0.008) / 1.008 * pi / 2), betas capped."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    T = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


@dataclass
class NoiseSchedule:
    """Discrete-time DDPM schedule (float64 buffers, cast on use). Diffusion Policy: T = 100."""
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @classmethod
    def make(cls, num_train_timesteps: int = 100):
        betas = squaredcos_cap_v2_betas(num_train_timesteps)
        return cls(betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; t has x0's
        leading shape (one timestep per sample)."""
        abar = self.alphas_cumprod.to(x0.dtype)[t].reshape(t.shape + (1,) * (x0.dim() - t.dim()))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def ddpm_loss(eps_model, x0: torch.Tensor, cond, schedule: NoiseSchedule,
              generator: torch.Generator = None, reduce: bool = True) -> torch.Tensor:
    """Epsilon-prediction denoising loss l = ||eps - eps_theta(x_t, t, cond)||^2 (Eq. 1's l).
    `x0` is (..., D) with one sample per leading index; eps_model(x_t, t, cond) -> eps.
    reduce=False returns the per-sample loss (shape x0.shape[:-1]) so callers can weight it."""
    lead = x0.shape[:-1]
    t = torch.randint(0, schedule.num_train_timesteps, lead, generator=generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = schedule.add_noise(x0, eps, t)
    per_sample = (eps_model(x_t, t, cond) - eps).pow(2).mean(-1)
    return per_sample.mean() if reduce else per_sample


@torch.no_grad()
def ddpm_sample(eps_fn, shape, schedule: NoiseSchedule, generator: torch.Generator = None,
                clip: float = None) -> torch.Tensor:
    """Ancestral DDPM sampling over all T steps with the posterior variance beta_tilde
    ("fixed_small"). eps_fn(x_t, t_batch) -> eps, where t_batch has x's leading shape.
    clip: clamp the predicted x0 to [-clip, clip] (Diffusion Policy clips at 1; None = off)."""
    abar = schedule.alphas_cumprod
    x = torch.randn(shape, generator=generator)
    for t in reversed(range(schedule.num_train_timesteps)):
        a_t = abar[t].item()
        a_prev = abar[t - 1].item() if t > 0 else 1.0
        beta_t = 1 - a_t / a_prev
        eps = eps_fn(x, torch.full(shape[:-1], t, dtype=torch.long))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        # posterior mean of q(x_{t-1} | x_t, x0)
        mean = (math.sqrt(a_prev) * beta_t / (1 - a_t)) * x0 + \
               (math.sqrt(1 - beta_t) * (1 - a_prev) / (1 - a_t)) * x
        if t > 0:
            var = beta_t * (1 - a_prev) / (1 - a_t)
            mean = mean + math.sqrt(var) * torch.randn(shape, generator=generator)
        x = mean
    return x


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list:
    """Evenly spaced ("leading") timesteps, largest first, as diffusers' DDIMScheduler."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be in [1, {num_train_timesteps}], "
                         f"got {num_inference_steps}")
    step = num_train_timesteps // num_inference_steps
    return [i * step for i in reversed(range(num_inference_steps))]


@torch.no_grad()
def ddim_sample(eps_fn, shape, schedule: NoiseSchedule, num_inference_steps: int = 10,
                generator: torch.Generator = None, eta: float = 0.0, clip: float = None) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) in `num_inference_steps` steps; eta = 0 is deterministic
    given the initial noise. Same eps_fn contract as ddpm_sample."""
    abar = schedule.alphas_cumprod
    ts = ddim_timesteps(schedule.num_train_timesteps, num_inference_steps)
    x = torch.randn(shape, generator=generator)
    for i, t in enumerate(ts):
        a_t = abar[t].item()
        a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        eps = eps_fn(x, torch.full(shape[:-1], t, dtype=torch.long))
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
            eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator)
    return x


def ema_decay(step: int, power: float = 0.75, max_decay: float = 0.9999) -> float:
    """EMA warm-up of Diffusion Policy's EMAModel: decay = 1 - (1 + step)^-power, capped."""
    return min(max_decay, max(0.0, 1 - (1 + step) ** -power))


@torch.no_grad()
def ema_update(ema_params, params, decay: float):
    """ema <- decay * ema + (1 - decay) * param, for matching iterables of tensors."""
    for e, p in zip(ema_params, params):
        e.lerp_(p.detach(), 1 - decay)


# ----------------------------------------------------------------------------------------------
# 3. classifier-free guidance (Sec. 5.1; Wei et al. 2025)
# ----------------------------------------------------------------------------------------------
def cfg_combine(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """eps = (1 + lambda) * eps(o, c) - lambda * eps(o, null).
    lambda = 0: plain conditional; lambda = -1: label-free; lambda < 0 moves toward the
    label-free "average over domains" prediction (paper's CFG-ADDA default: -0.5).
    Convention: codebases that write eps_u + s * (eps_c - eps_u) use s = 1 + lambda."""
    return (1 + guidance_scale) * eps_cond - guidance_scale * eps_uncond


# ----------------------------------------------------------------------------------------------
# 4. mixing ratio (Eq. 1: L = w E_T[l] + (1 - w) E_S[l]) and its guideline (App. B.3, D.5)
# ----------------------------------------------------------------------------------------------
def check_ratio(w: float) -> float:
    w = float(w)
    if not (0.0 <= w <= 1.0) or math.isnan(w):
        raise UsageError(f"mixing ratio must be in [0, 1], got {w}")
    return w


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
        check_ratio(v)
    if n_target <= 0 and bool((w_t > 0).any()):
        raise UsageError("mixing ratio > 0 needs a non-empty target dataset")
    if n_source <= 0 and bool((w_t < 1).any()):
        raise UsageError("mixing ratio < 1 needs a non-empty source dataset")
    shape = tuple(w_t.shape) + (batch_size,)
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    is_target = u < w_t.unsqueeze(-1)
    i_t = torch.randint(0, max(n_target, 1), shape, generator=generator)
    i_s = torch.randint(0, max(n_source, 1), shape, generator=generator)
    return is_target, torch.where(is_target, i_t, i_s)


def natural_ratio(n_target: int, n_source: int) -> float:
    """w_n = N / (N + M): the ratio plain concatenation of the two datasets gives (Sec. 2.2)."""
    if n_target <= 0 or n_source <= 0:
        raise UsageError(f"dataset sizes must be positive, got N={n_target}, M={n_source}")
    return n_target / (n_target + n_source)


def balanced_ratio_range(n_target: int, n_source: int, q: float = 0.8, cap: float = None):
    """The guideline's balanced mixing-ratio range (w_n, w_q) (App. B.3, D.5).
    Lower bound w_n = N/(N+M). Upper bound w_q = sqrt(N/M) when M/N > 5, else
    N q / ((1 - q) M + N q) with q = 0.8; optionally capped (e.g. at 0.5).
    N = 50, M = 3000 gives about (0.0164, 0.129)."""
    w_n = natural_ratio(n_target, n_source)
    if n_source / n_target > 5:
        w_q = math.sqrt(n_target / n_source)
    else:
        w_q = n_target * q / ((1 - q) * n_source + n_target * q)
    if cap is not None:
        w_q = min(w_q, cap)
    return w_n, w_q


def resolve_ratio(spec, n_target: int, n_source: int) -> float:
    """`--ratio` value: a number in [0, 1], `natural` (w_n) or `auto` (geometric middle of the
    balanced range, sqrt(w_n * w_q); our choice, the paper gives a range, not a point)."""
    s = str(spec).strip().lower()
    if s == "natural":
        return natural_ratio(n_target, n_source)
    if s == "auto":
        w_n, w_q = balanced_ratio_range(n_target, n_source)
        return math.sqrt(w_n * w_q)
    try:
        w = float(s)
    except ValueError:
        raise UsageError(f"ratio must be a number in [0, 1], 'natural' or 'auto', got {spec!r}")
    return check_ratio(w)


# ----------------------------------------------------------------------------------------------
# 5. statistics
# ----------------------------------------------------------------------------------------------
def two_way_anova(y: np.ndarray) -> dict:
    """Two-factor ANOVA with replication on a balanced design (Fisher; Sec. 3, Finding 2).
    y has shape (a, b, n): levels of factor A x levels of factor B x n replicates (n >= 2).
    Returns sums of squares, degrees of freedom, mean squares, F, p and each term's share of the
    total sum of squares for A, B, the A x B interaction and the residual."""
    from scipy import stats
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


# ----------------------------------------------------------------------------------------------
# 6. command line: a dataclass of arguments with one-line docs, defaults set by a profile
# ----------------------------------------------------------------------------------------------
def arg(default, help: str):
    """A dataclass field whose help text shows in `--help` (CleanRL-style documented Args)."""
    from dataclasses import field
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def parse_args(args_cls, profiles: dict, argv=None, description: str = ""):
    """Build an argparse parser from a dataclass (each field: --flag-name, its help text), apply
    the chosen profile's defaults, then the flags given on the command line. Lists are given as
    comma-separated values. Bad values exit with one line and code 2."""
    from dataclasses import fields, MISSING
    p = ArgumentParser(description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="cpu", choices=sorted(profiles),
                   help="preset of defaults, flags override it; the defaults shown are "
                        "the base values, a profile may change them (default: cpu)")
    for f in fields(args_cls):
        if f.name == "profile":
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help=f.metadata.get("help", "") + f" (default: {default})")
        else:
            p.add_argument(flag, type=str, default=None,
                           help=f.metadata.get("help", "") + f" (default: {default})")
    ns = p.parse_args(argv)
    values = {}
    for f in fields(args_cls):
        if f.name == "profile":
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        raw = getattr(ns, f.name)
        if raw is None:
            values[f.name] = profiles[ns.profile].get(f.name, default)
            continue
        values[f.name] = _convert(raw, default, f.name, p)
    return args_cls(profile=ns.profile, **values)


def _convert(raw, default, name, parser):
    if isinstance(default, bool):
        return raw
    flag = "--" + name.replace("_", "-")
    try:
        if isinstance(default, list):
            elem = type(default[0]) if default else str
            return [elem(v) for v in str(raw).split(",") if v.strip() != ""]
        if default is None:
            return raw
        return type(default)(raw)
    except ValueError:
        parser.error(f"argument {flag}: invalid value {raw!r}")


# ----------------------------------------------------------------------------------------------
# 7. files: write to a temporary file, then rename (nothing is ever left half-written)
# ----------------------------------------------------------------------------------------------
def write_text(path: str, text: str):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj):
    import json
    write_text(path, json.dumps(obj, indent=1))
