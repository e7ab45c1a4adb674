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
    """argparse that reports bad input in one line (no usage dump) and exits with code 2, and
    takes comma lists that start with a negative number as values (`--guidance -1,-0.5,0`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import re
        self._negative_number_matcher = re.compile(r"^-\d*\.?\d+(,-?\d*\.?\d+)*$")

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


# ----------------------------------------------------------------------------------------------
# 8. datasets: robomimic-format HDF5 held in memory, windows of (observation history, action chunk)
# ----------------------------------------------------------------------------------------------
IMAGE_SUFFIX = "_image"
PROPRIO_KEYS = ["robot0_joint_pos", "robot0_gripper_qpos"]  # App. C: joint + gripper positions


@dataclass
class DemoSet:
    """One dataset in memory: obs arrays and actions concatenated over demos, plus an index of
    every training window. Window i observes steps obs_index[i] (n_obs, oldest first) and
    predicts actions act_index[i] (horizon, starting at the current step); indices are clipped
    at the demo's ends (first frame / last action repeated), as in Diffusion Policy."""
    path: str
    obs: dict
    actions: np.ndarray
    obs_index: np.ndarray
    act_index: np.ndarray
    num_demos: int
    attrs: dict
    digest: str

    def __len__(self):
        return len(self.obs_index)


def open_dataset(path: str):
    """Open a robomimic-format HDF5 for reading; UsageError if missing or of another layout."""
    import h5py
    if not os.path.isfile(path):
        raise UsageError(f"dataset not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UsageError(f"{path}: not a readable HDF5 file ({e})")
    if "data" not in f or not any(k.startswith("demo_") for k in f["data"]):
        f.close()
        raise UsageError(f"{path}: not a robomimic-format dataset (no data/demo_K groups)")
    return f


def lowdim_keys_of(path: str) -> list:
    """The low-dim observation keys a dataset offers: proprioception first, then the object
    keys, without the end-effector pose (the policy acts in joint space, App. C)."""
    with open_dataset(path) as f:
        first = next(k for k in sorted(f["data"]) if k.startswith("demo_"))
        keys = list(f["data"][first]["obs"].keys())
    objs = sorted(k for k in keys if not k.endswith(IMAGE_SUFFIX) and not k.startswith("robot0_"))
    return [k for k in PROPRIO_KEYS if k in keys] + objs


def load_demos(path: str, obs_keys, n_obs: int, horizon: int, action_key: str = "joint_actions",
               max_demos: int = 0) -> DemoSet:
    """Read a robomimic-format file into memory (bad layout, missing keys or non-finite values
    raise UsageError naming the file and key). max_demos > 0 keeps the first demos only."""
    import hashlib
    with open_dataset(path) as f:
        names = sorted((k for k in f["data"] if k.startswith("demo_")), key=lambda k: int(k[5:]))
        names = names[:max_demos] if max_demos > 0 else names
        obs = {k: [] for k in obs_keys}
        acts, obs_index, act_index, start = [], [], [], 0
        for name in names:
            d = f["data"][name]
            if action_key not in d:
                raise UsageError(f"{path}: {name} has no '{action_key}' dataset")
            a = d[action_key][()].astype(np.float32)
            for k in obs_keys:
                if k not in d["obs"]:
                    raise UsageError(f"{path}: {name} has no observation '{k}' "
                                     f"(it has {sorted(d['obs'].keys())})")
                obs[k].append(d["obs"][k][()])
            T = len(a)
            t = np.arange(T)[:, None]
            obs_index.append(start + np.clip(t + np.arange(-n_obs + 1, 1), 0, T - 1))
            act_index.append(start + np.clip(t + np.arange(horizon), 0, T - 1))
            acts.append(a)
            start += T
        attrs = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                 for k, v in f["data"].attrs.items()}
    obs = {k: np.concatenate(v) for k, v in obs.items()}
    for k, v in obs.items():
        if not k.endswith(IMAGE_SUFFIX):
            obs[k] = v.astype(np.float32)
    actions = np.concatenate(acts)
    h = hashlib.blake2b(digest_size=8)
    for k, v in [("actions", actions)] + sorted(obs.items()):
        if v.dtype != np.uint8 and not np.isfinite(v).all():
            raise UsageError(f"{path}: non-finite values (NaN or inf) in '{k}'")
        h.update(k.encode()); h.update(np.ascontiguousarray(v).data)
    return DemoSet(path=path, obs=obs, actions=actions, obs_index=np.concatenate(obs_index),
                   act_index=np.concatenate(act_index), num_demos=len(names),
                   attrs={k: attrs[k] for k in ("task", "domain", "total") if k in attrs},
                   digest=h.hexdigest())


def gather(ds: DemoSet, idx: np.ndarray) -> dict:
    """Batch of windows as torch tensors: obs/<key> (B, n_obs, ...) and actions (B, horizon, A)."""
    oi = ds.obs_index[idx]
    out = {"obs": {k: torch.from_numpy(v[oi]) for k, v in ds.obs.items()},
           "actions": torch.from_numpy(ds.actions[ds.act_index[idx]])}
    return out


def mixed_batch_counts(w: float, batch_size: int, generator: torch.Generator) -> int:
    """Number of target samples in a batch for mixing ratio w, as exact as a batch allows:
    floor(w B) or ceil(w B), rounded at random so that its expectation is exactly w B (Eq. 1)."""
    x = check_ratio(w) * batch_size
    lo = math.floor(x)
    return lo + int(torch.rand((), generator=generator, dtype=torch.float64).item() < x - lo)


def sample_cotrain_batch(target: DemoSet, source: DemoSet, w: float, batch_size: int,
                         generator: torch.Generator) -> dict:
    """A co-training batch (Eq. 1): round(w B) windows from the target set, the rest from the
    source set, each uniform with replacement. Adds `domain` (B,): 0 = target, 1 = source."""
    n_t = mixed_batch_counts(w, batch_size, generator)
    if n_t > 0 and target is None or n_t < batch_size and source is None:
        raise UsageError(f"mixing ratio {w} needs both datasets")
    parts = []
    for ds, n in ((target, n_t), (source, batch_size - n_t)):
        if n > 0:
            parts.append(gather(ds, torch.randint(0, len(ds), (n,), generator=generator).numpy()))
    batch = {"obs": {k: torch.cat([p["obs"][k] for p in parts]) for k in parts[0]["obs"]},
             "actions": torch.cat([p["actions"] for p in parts])}
    batch["domain"] = torch.cat([torch.zeros(n_t, dtype=torch.long),
                                 torch.ones(batch_size - n_t, dtype=torch.long)])
    return batch


class Normalizer(torch.nn.Module):
    """Per-dimension affine map of each low-dim key and of the actions to [-1, 1], fitted on the
    union of the two datasets (min/max, as Diffusion Policy's action normalizer); constant dims
    are only centred. Images go from uint8 to [-1, 1]. Buffers, so they travel in state_dict."""

    def __init__(self, dims: dict):
        super().__init__()
        self.keys = list(dims)
        for k, d in dims.items():
            self.register_buffer(f"{k}__scale", torch.ones(d))
            self.register_buffer(f"{k}__offset", torch.zeros(d))

    def fit(self, arrays: dict):
        for k, x in arrays.items():
            x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, x.shape[-1])
            lo, hi = x.min(0).values, x.max(0).values
            rng = hi - lo
            scale = torch.where(rng > 1e-4, 2 / rng.clamp_min(1e-4), torch.ones_like(rng))
            getattr(self, f"{k}__scale").copy_(scale)
            getattr(self, f"{k}__offset").copy_(-(lo + hi) / 2 * scale)
        return self

    def forward(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if key.endswith(IMAGE_SUFFIX):
            return x.float() / 127.5 - 1
        return x * getattr(self, f"{key}__scale") + getattr(self, f"{key}__offset")

    def inverse(self, key: str, y: torch.Tensor) -> torch.Tensor:
        return (y - getattr(self, f"{key}__offset")) / getattr(self, f"{key}__scale")


# ----------------------------------------------------------------------------------------------
# 9. networks: ResNet18-GN vision stem, observation encoder, three denoisers (App. C, D.3)
# ----------------------------------------------------------------------------------------------
import torch.nn as nn
import torch.nn.functional as F


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, c // 16), c)  # Diffusion Policy: BatchNorm -> GroupNorm(c/16)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _gn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _gn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))

    def forward(self, x):
        y = F.relu(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18GN(nn.Module):
    """ResNet18 (He et al. 2016) with GroupNorm, trained from scratch, global average pool and a
    linear projection to `out_dim` (the "vision stem" feature point). width = 64 is the original."""

    def __init__(self, width: int = 64, out_dim: int = 512):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        layers = [nn.Conv2d(3, w[0], 7, 2, 3, bias=False), _gn(w[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = w[0]
        for i, c in enumerate(w):
            layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(w[-1], out_dim)

    def forward(self, x):  # (B, 3, H, W) in [-1, 1]
        return self.proj(self.body(x).mean((2, 3)))


def random_crop(x: torch.Tensor, size: int, generator: torch.Generator = None) -> torch.Tensor:
    """Independent random crop per image of a (N, C, H, W) batch (training augmentation)."""
    n, _, h, w = x.shape
    i = torch.randint(0, h - size + 1, (n,), generator=generator)
    j = torch.randint(0, w - size + 1, (n,), generator=generator)
    rows = (i[:, None] + torch.arange(size))[:, None, :, None].expand(n, x.shape[1], size, w)
    x = x.gather(2, rows)
    cols = (j[:, None] + torch.arange(size))[:, None, None, :].expand(n, x.shape[1], size, size)
    return x.gather(3, cols)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    i, j = (h - size) // 2, (w - size) // 2
    return x[..., i:i + size, j:j + size]


class ObsEncoder(nn.Module):
    """phi(o): per camera a ResNet18-GN on each history frame (the "vision stem"), concatenated
    with the normalized low-dim keys, then a 2-layer MLP trunk per history step (the "trunk"
    feature point, Sec. 4.1). Without cameras the stem is the identity on the low-dim keys."""

    def __init__(self, image_keys, lowdim_dim: int, d_feat: int, crop: int = 0,
                 resnet_width: int = 64, vision_dim: int = 256):
        super().__init__()
        self.image_keys, self.crop = list(image_keys), crop
        self.vision = nn.ModuleDict({k: ResNet18GN(resnet_width, vision_dim) for k in self.image_keys})
        d_in = len(self.image_keys) * vision_dim + lowdim_dim
        self.trunk = nn.Sequential(nn.Linear(d_in, d_feat), nn.Mish(), nn.Linear(d_feat, d_feat))

    def stem(self, images: dict, lowdim: torch.Tensor, generator=None) -> torch.Tensor:
        feats = []
        for k in self.image_keys:
            x = images[k]  # (B, n_obs, H, W, 3) in [-1, 1]
            b, n = x.shape[:2]
            x = x.reshape(b * n, *x.shape[2:]).permute(0, 3, 1, 2)
            if self.crop:
                x = random_crop(x, self.crop, generator) if self.training else center_crop(x, self.crop)
            feats.append(self.vision[k](x).reshape(b, n, -1))
        return torch.cat(feats + [lowdim], -1)

    def forward(self, images: dict, lowdim: torch.Tensor, generator=None):
        s = self.stem(images, lowdim, generator)
        return s, self.trunk(s)  # (B, n_obs, d_stem), (B, n_obs, d_feat)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the diffusion step (as Diffusion Policy's SinusoidalPosEmb)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / (half - 1))
    x = t.float()[:, None] * freq[None]
    return torch.cat([x.sin(), x.cos()], -1)


class TransformerDenoiser(nn.Module):
    """eps_theta(a_t, t, cond). `encdec` (the paper's default, Chi et al.'s transformer with an
    observation encoder): [time, obs tokens] -> TransformerEncoder -> memory; action tokens ->
    TransformerDecoder with cross-attention. `dec`: one self-attention stack over
    [time, obs tokens, action tokens] (decoder-only, App. D.3)."""

    def __init__(self, action_dim, horizon, n_obs, d_cond, d_model=256, n_heads=4, n_layers=8,
                 n_cond_layers=4, dropout=0.1, kind="encdec"):
        super().__init__()
        self.kind, self.d_model = kind, d_model
        self.act_in = nn.Linear(action_dim, d_model)
        self.cond_in = nn.Linear(d_cond, d_model)
        self.time_in = nn.Sequential(nn.Linear(d_model, d_model), nn.Mish())
        self.act_pos = nn.Parameter(torch.zeros(1, horizon, d_model))
        self.cond_pos = nn.Parameter(torch.zeros(1, n_obs + 1, d_model))
        nn.init.normal_(self.act_pos, std=0.02)
        nn.init.normal_(self.cond_pos, std=0.02)
        layer = lambda cls: cls(d_model, n_heads, 4 * d_model, dropout, activation="gelu",
                                batch_first=True, norm_first=True)
        if kind == "encdec":
            self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), n_cond_layers,
                                                 enable_nested_tensor=False)
            self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), n_layers)
        elif kind == "dec":
            self.decoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), n_layers,
                                                 enable_nested_tensor=False)
        else:
            raise ValueError(f"unknown transformer kind {kind!r}")
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, action_dim)

    def forward(self, x, t, cond):  # x (B, H, A), t (B,), cond (B, n_obs, d_cond)
        tok_t = self.time_in(timestep_embedding(t, self.d_model))[:, None]
        mem = torch.cat([tok_t, self.cond_in(cond)], 1) + self.cond_pos
        h = self.act_in(x) + self.act_pos
        if self.kind == "encdec":
            h = self.decoder(h, self.encoder(mem))
        else:
            h = self.decoder(torch.cat([mem, h], 1))[:, mem.shape[1]:]
        return self.out(self.norm(h))


class CondResBlock1D(nn.Module):
    """Conv1d residual block with FiLM conditioning (Diffusion Policy's ConditionalResidualBlock1D)."""

    def __init__(self, cin, cout, d_cond, k=5):
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(8, cout), nn.Mish())
        self.c2 = nn.Sequential(nn.Conv1d(cout, cout, k, padding=k // 2), nn.GroupNorm(8, cout), nn.Mish())
        self.film = nn.Sequential(nn.Mish(), nn.Linear(d_cond, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, c):
        scale, bias = self.film(c)[..., None].chunk(2, 1)
        return self.c2(self.c1(x) * scale + bias) + self.skip(x)


class UNetDenoiser(nn.Module):
    """1-D conditional U-Net over the action chunk (Chi et al.'s ConditionalUnet1D, App. D.3):
    global condition = [time embedding, flattened observation features] fed by FiLM."""

    def __init__(self, action_dim, horizon, n_obs, d_cond, down_dims=(256, 512, 1024), d_time=128):
        super().__init__()
        if horizon % 2 ** (len(down_dims) - 1):
            raise ValueError(f"U-Net needs horizon divisible by {2 ** (len(down_dims) - 1)}")
        self.d_time = d_time
        self.time = nn.Sequential(nn.Linear(d_time, 4 * d_time), nn.Mish(), nn.Linear(4 * d_time, d_time))
        dc = d_time + n_obs * d_cond
        dims = [action_dim] + list(down_dims)
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(down_dims) - 1
            self.down.append(nn.ModuleList([CondResBlock1D(a, b, dc), CondResBlock1D(b, b, dc),
                                            nn.Identity() if last else nn.Conv1d(b, b, 3, 2, 1)]))
        self.mid = nn.ModuleList([CondResBlock1D(dims[-1], dims[-1], dc) for _ in range(2)])
        self.up = nn.ModuleList()
        for a, b in zip(reversed(dims[2:]), reversed(dims[1:-1])):
            self.up.append(nn.ModuleList([CondResBlock1D(2 * a, b, dc), CondResBlock1D(b, b, dc),
                                          nn.ConvTranspose1d(b, b, 4, 2, 1)]))
        self.out = nn.Sequential(nn.Conv1d(down_dims[0], down_dims[0], 5, padding=2),
                                 nn.GroupNorm(8, down_dims[0]), nn.Mish(),
                                 nn.Conv1d(down_dims[0], action_dim, 1))

    def forward(self, x, t, cond):
        c = torch.cat([self.time(timestep_embedding(t, self.d_time)), cond.flatten(1)], -1)
        h, skips = x.transpose(1, 2), []
        for r1, r2, down in self.down:
            h = r2(r1(h, c), c)
            skips.append(h)
            h = down(h)
        for r in self.mid:
            h = r(h, c)
        for r1, r2, up in self.up:
            h = up(r2(r1(torch.cat([h, skips.pop()], 1), c), c))
        return self.out(h).transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# 10. the policy: phi(o) -> [features, domain label] -> eps_theta; DDIM sampling with CFG
# ----------------------------------------------------------------------------------------------
TARGET, SOURCE, NULL_LABEL = 0, 1, -1  # domain labels; NULL_LABEL = CFG's dropped label
NUM_DOMAINS = 2


class DiffusionPolicy(nn.Module):
    """Diffusion Policy (Chi et al. 2023) as the paper uses it (Sec. 4, App. C).

    cfg keys: image_keys, lowdim_keys (with their dims in lowdim_dims), action_dim, n_obs,
    horizon, n_action, arch (encdec | dec | unet), d_feat, widths, crop, use_label, T (train
    diffusion steps). With use_label (CFG, CFG-ADDA) the one-hot domain label is concatenated to
    the observation features after the encoder; the null label is all zeros (Sec. 5.1)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        c = self.cfg
        lowdim = sum(c["lowdim_dims"][k] for k in c["lowdim_keys"])
        self.normalizer = Normalizer({**{k: c["lowdim_dims"][k] for k in c["lowdim_keys"]},
                                      "actions": c["action_dim"]})
        self.encoder = ObsEncoder(c["image_keys"], lowdim, c["d_feat"], c["crop"],
                                  c["resnet_width"], c["vision_dim"])
        d_cond = c["d_feat"] + (NUM_DOMAINS if c["use_label"] else 0)
        if c["arch"] in ("encdec", "dec"):
            self.denoiser = TransformerDenoiser(c["action_dim"], c["horizon"], c["n_obs"], d_cond,
                                                c["d_model"], c["n_heads"], c["n_layers"],
                                                c["n_cond_layers"], c["dropout"], c["arch"])
        elif c["arch"] == "unet":
            self.denoiser = UNetDenoiser(c["action_dim"], c["horizon"], c["n_obs"], d_cond,
                                         tuple(c["unet_dims"]))
        else:
            raise UsageError(f"unknown architecture {c['arch']!r} (encdec, dec, unet)")
        self.schedule = NoiseSchedule.make(c["T"])

    # --- observation features (the two feature points of Sec. 4.1) ---
    def encode(self, obs: dict, generator=None):
        """obs: raw batch (B, n_obs, ...) per key -> (stem, trunk) features."""
        lowdim = torch.cat([self.normalizer(k, obs[k].float()) for k in self.cfg["lowdim_keys"]], -1)
        images = {k: self.normalizer(k, obs[k]) for k in self.cfg["image_keys"]}
        return self.encoder(images, lowdim, generator)

    def condition(self, z: torch.Tensor, label) -> torch.Tensor:
        """[z, one-hot(label)] (label-free if the policy has no label); label: (B,) long with
        NULL_LABEL rows getting all zeros."""
        if not self.cfg["use_label"]:
            return z
        label = torch.as_tensor(label, device=z.device).expand(z.shape[0])
        onehot = F.one_hot(label.clamp_min(0), NUM_DOMAINS).to(z.dtype) * (label >= 0)[:, None].to(z.dtype)
        return torch.cat([z, onehot[:, None].expand(-1, z.shape[1], -1)], -1)

    def forward(self, x_t, t, cond):
        return self.denoiser(x_t, t, cond)

    def diffusion_loss(self, actions, cond, generator=None):
        """Per-sample epsilon-prediction loss l = ||eps - eps_theta(a_t, t, cond)||^2 (Eq. 1) on
        normalized action chunks; t and eps drawn on the CPU from `generator` (same draws on
        any device), as common.ddpm_loss."""
        a = self.normalizer("actions", actions)
        t = torch.randint(0, self.schedule.num_train_timesteps, a.shape[:1], generator=generator)
        eps = torch.randn(a.shape, generator=generator)
        abar = self.schedule.alphas_cumprod.float()[t][:, None, None]
        t, eps, abar = t.to(a.device), eps.to(a.device), abar.to(a.device)
        x_t = abar.sqrt() * a + (1 - abar).sqrt() * eps
        return (self.denoiser(x_t, t, cond) - eps).pow(2).mean((-2, -1))

    # --- inference ---
    @torch.no_grad()
    def predict_action(self, obs: dict, label=TARGET, guidance_scale: float = 0.0,
                       sample_steps: int = 10, generator: torch.Generator = None,
                       sampler: str = "ddim") -> torch.Tensor:
        """Action chunk (B, horizon, action_dim) in robot units for raw obs (B, n_obs, ...).
        With a label and guidance_scale != 0: eps = (1 + lambda) eps(o, c) - lambda eps(o, null)
        (cfg_combine), both halves in one batched forward pass."""
        _, z = self.encode(obs)
        b = z.shape[0]
        guided = self.cfg["use_label"] and guidance_scale != 0
        if guided:
            cond = torch.cat([self.condition(z, label), self.condition(z, NULL_LABEL)])
        else:
            cond = self.condition(z, label)
        dev = z.device

        def eps_fn(x, t):  # the samplers give one t per element; the chunk shares it
            x, t = x.to(dev), t.reshape(b, -1)[:, 0].to(dev)
            if not guided:
                return self.denoiser(x, t, cond).float().cpu()
            e = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), cond).float().cpu()
            return cfg_combine(e[:b], e[b:], guidance_scale)

        shape = (b, self.cfg["horizon"], self.cfg["action_dim"])
        if sampler == "ddpm":
            a = ddpm_sample(eps_fn, shape, self.schedule, generator, clip=1.0)
        else:
            a = ddim_sample(eps_fn, shape, self.schedule, sample_steps, generator, clip=1.0)
        return self.normalizer.inverse("actions", a.to(dev))


# ----------------------------------------------------------------------------------------------
# 11. co-training losses: ADDA's discriminator with gradient reversal, OT, CFG label drop (Sec. 5.1)
# ----------------------------------------------------------------------------------------------
class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -coeff backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.coeff * g, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return GradReverse.apply(x, coeff)


class Discriminator(nn.Module):
    """Domain discriminator: a 3-layer MLP on the flattened observation features (App. C)."""

    def __init__(self, d_in: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Mish(), nn.Linear(hidden, hidden),
                                 nn.Mish(), nn.Linear(hidden, 1))

    def forward(self, z):
        return self.net(z.flatten(1)).squeeze(-1)


def discriminator_loss(disc: Discriminator, z: torch.Tensor, domain: torch.Tensor, reverse: bool):
    """BCE of the discriminator predicting "source" (domain == SOURCE) from features z.
    reverse=True (ADDA, CFG-ADDA): the encoder receives the reversed gradient, so it learns to
    fool the discriminator while the discriminator learns to tell the domains apart.
    reverse=False (Table 1's "+discrimination"): both minimize the BCE, so the encoder makes the
    domains easier to tell apart. Returns (loss, accuracy)."""
    logits = disc(grad_reverse(z) if reverse else z)
    y = (domain == SOURCE).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y.float())
    acc = ((logits > 0) == (y > 0.5)).float().mean()
    return loss, acc


def unbalanced_sinkhorn(C: torch.Tensor, reg: float, reg_m: float, iters: int = 100) -> torch.Tensor:
    """Entropic unbalanced OT plan between uniform weights (KL-relaxed marginals, weight reg_m),
    in the log domain so that small `reg` stays stable (Chizat et al. 2018)."""
    n, m = C.shape
    log_a = torch.full((n,), -math.log(n), dtype=C.dtype, device=C.device)
    log_b = torch.full((m,), -math.log(m), dtype=C.dtype, device=C.device)
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    fi = reg_m / (reg_m + reg)
    for _ in range(iters):
        f = fi * reg * (log_a - torch.logsumexp((g[None] - C) / reg, 1))
        g = fi * reg * (log_b - torch.logsumexp((f[:, None] - C) / reg, 0))
    return torch.exp((f[:, None] + g[None] - C) / reg)


def ot_loss(z_src: torch.Tensor, z_tgt: torch.Tensor, reg: float = 0.05, reg_m: float = 1.0,
            a_src: torch.Tensor = None, a_tgt: torch.Tensor = None, action_weight: float = 0.0):
    """OT alignment loss (Cheng et al. 2025, as the paper runs it: no pairing sampler): an
    unbalanced Sinkhorn plan between the batch's source and target features, with cost = mean
    squared feature difference (+ action_weight x mean squared action-chunk difference), the plan
    held constant; loss = sum(plan * cost) / sum(plan), the mean cost of the matched pairs (the
    unbalanced plan drops mass between far-apart pairs, so its raw sum shrinks for large shifts;
    normalized, the loss grows with the shift). Zero when either side is empty."""
    if len(z_src) == 0 or len(z_tgt) == 0:
        return z_src.sum() * 0 + z_tgt.sum() * 0
    zs, zt = z_src.flatten(1).float(), z_tgt.flatten(1).float()
    C = (zs[:, None] - zt[None]).pow(2).mean(-1)
    if action_weight and a_src is not None:
        C = C + action_weight * (a_src.flatten(1)[:, None] - a_tgt.flatten(1)[None]).pow(2).mean(-1)
    with torch.no_grad():
        plan = unbalanced_sinkhorn(C.detach().double(), reg, reg_m)
        plan = (plan / plan.sum().clamp_min(1e-300)).to(C.dtype)
    return (plan * C).sum()


def drop_labels(domain: torch.Tensor, p: float, generator: torch.Generator = None) -> torch.Tensor:
    """CFG training: each sample's domain label becomes NULL_LABEL with probability p."""
    drop = torch.rand(domain.shape, generator=generator) < p
    return torch.where(drop.to(domain.device), torch.full_like(domain, NULL_LABEL), domain)


def get_lr(step: int, lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to min_lr (nanoGPT's get_lr; Diffusion Policy's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (lr - min_lr)


def load_policy(path: str, device="cpu", weights: str = "ema"):
    """A trained policy (EMA weights by default, as Diffusion Policy evaluates) and its run
    config from a 02_train.py checkpoint (ckpt.pt or an EMA-only ckpt_<step>.pt)."""
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        cfg = ck["config"]
        policy = DiffusionPolicy(cfg["model"])
        state = ck["ema"] if weights == "ema" else \
            {k[len("policy."):]: v for k, v in ck["objective"].items() if k.startswith("policy.")}
        policy.load_state_dict(state)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"{path}: not a 02_train.py checkpoint ({type(e).__name__}: {e})")
    return policy.to(device).eval(), cfg
