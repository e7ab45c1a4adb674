"""Learning code shared by the stage scripts (paper: Lei et al. 2026).

Sections, in the order of the method:
  1. seeding (command-line errors, dataclass arguments, atomic files: cli.py, re-exported here)
  2. diffusion core: noise schedule, DDPM loss, DDPM and DDIM samplers (Chi et al. Diffusion Policy)
  3. classifier-free guidance combination (Sec. 5.1, App. C)
  4. mixing ratio and its guideline (App. B.3, D.5)
  5. statistics: Wilson intervals
  6-7. checkpoints, run config versions and their upgrade
  8. datasets: robomimic-format HDF5 in memory, co-training batches (Eq. 1), normalization
The co-training methods (Sec. 5.1: the method table, the objective, every method's loss) are in
methods.py; the networks and the policy built on these in diffusion_policy.py; code one stage
alone uses lives in that stage (the toy's sampler and ANOVA in 00_toy.py).
"""
import hashlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass

import h5py
import numpy as np
import torch

# command line and files (cli.py, torch-free), re-exported: common.arg, common.die, ...
from cli import (  # noqa: F401
    ArgumentParser,
    UsageError,
    arg,
    check_same_settings,
    check_writable,
    die,
    exit_with_parent,
    fmt_value,
    machine,
    parse_args,
    read_json,
    write_json,
    write_text,
)
from methods import MethodArgs


# ----------------------------------------------------------------------------------------------
# 1. seeding
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
def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple:
    """95% Wilson score interval for k successes in n trials (Wilson 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


# ----------------------------------------------------------------------------------------------
# 6-7. checkpoints (written atomically) and run config versions; the command line, files and the
#      resume rule are in cli.py
# ----------------------------------------------------------------------------------------------
def save_checkpoint(obj: dict, path: str):
    """torch.save to a temporary file, then rename: a kill never leaves a truncated checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


# The run config's version (config["version"]; configs written before versions are version 1).
# A setting added to 02_train.py's Args (train_config.py) after runs were made gets one line in
# LATER_SETTINGS with the value those older runs had, and CONFIG_VERSION goes up by one: every
# reader (--resume, --init-from, 03_eval, 04_analyze, 05_real_deploy) sees the upgraded config.
# A network setting is a diffusion_policy.ModelConfig field whose default is that old value.
# A method setting (methods.MethodArgs) needs no line when its default leaves the methods that
# existed before unchanged (methods.py's rule): an older config lacking it reads its default.
# Two method settings whose defaults changed the methods (version 2 -> 3: the paper's discriminator
# starts after its warm-up; OT's plan is computed on the cost scaled to the batch) are listed too.
CONFIG_VERSION = 4
LATER_SETTINGS = {  # versions 1, 2, 3 -> 4: settings a config lacks, at the value its run had
    "args": {"obs_set": "world", "action_space": "abs", "image_suffix": "_img", "vision_pool": "avg",
             "disc_during_warmup": True, "ot_cost_scale": "none",  # version 2 -> 3
             "compile": False},  # version 3 -> 4
}  # the network's settings ("model"): diffusion_policy.ModelConfig's defaults are their old values


def upgrade_config(cfg: dict) -> dict:
    """A run config (config.json, or a checkpoint's "config") in today's form: settings it predates
    get the value they had when it was made. Returns a new dict; the input is not changed."""
    cfg = json.loads(json.dumps(cfg))
    version = cfg.get("version", 1)
    if version > CONFIG_VERSION:
        raise UsageError(f"run config version {version} is newer than this code's ({CONFIG_VERSION}): "
                         f"update the repository")
    from diffusion_policy import ModelConfig  # noqa: PLC0415 (it imports this module)
    cfg["args"] = upgrade_settings(cfg.get("args", {}), "args")
    cfg["model"] = ModelConfig.from_dict(cfg.get("model", {})).to_dict()
    cfg["version"] = CONFIG_VERSION
    return cfg


def upgrade_settings(d: dict, part: str = "args") -> dict:
    """A run config's "args" with the settings it predates added at their old values
    (LATER_SETTINGS; a method setting at its default); a new dict."""
    d = dict(d)
    later = {**asdict(MethodArgs()), **LATER_SETTINGS[part]}
    for k, v in later.items():
        if k not in d:
            d[k] = v(d) if callable(v) else v
    return d


def is_final(ck: dict) -> bool:
    """Whether a checkpoint holds a finished run: decided by the step it reached, so a copy (an
    EMA-only snapshot committed under results/) counts as finished wherever it lies."""
    return int(ck["step"]) >= int(ck["config"]["args"]["steps"])


def load_checkpoint(path: str, what: str = "a 02_train.py checkpoint") -> dict:
    """A checkpoint dict with its config upgraded to today's form (upgrade_config) and "final"
    set from its step (is_final), or UsageError (one line) for a missing, truncated or foreign file."""
    if os.path.isdir(path):
        raise UsageError(f"{path} is a folder: give the checkpoint file in it (e.g. {os.path.join(path, 'ckpt.pt')})")
    if not os.path.isfile(path):
        raise UsageError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UsageError(f"{path}: not {what} ({type(e).__name__}: {e})")
    if not isinstance(ck, dict) or "config" not in ck or "step" not in ck:
        raise UsageError(f"{path}: not {what} (no config or step in it)")
    try:
        ck["config"] = upgrade_config(ck["config"])
        ck["final"] = is_final(ck)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: not {what} (its config has no {e})")
    return ck


# ----------------------------------------------------------------------------------------------
# 8. datasets: robomimic-format HDF5 held in memory, windows of (observation history, action chunk)
# ----------------------------------------------------------------------------------------------
IMAGE_SUFFIX = "_image"
PROPRIO_KEYS = ["robot0_joint_pos", "robot0_gripper_qpos"]  # App. C: joint + gripper positions
# A policy's action space -> (stored action key, robosuite controller that executes it).
# abs / rel: joint targets (App. C; rel predicts them minus the current joint positions);
# osc: the OSC_POSE delta commands the expert / MimicGen sent (robomimic's low-dim action space).
ACTION_SPACES = {"abs": ("joint_actions", "joint"), "rel": ("joint_actions", "joint"), "osc": ("actions", "osc")}


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


OBS_SETS = ("world", "eef", "rel")
EEF_KEYS = ["robot0_eef_pos", "robot0_eef_rot6d"]


def quat_to_rot6d(q: np.ndarray, order: str = "wxyz") -> np.ndarray:
    """Continuous 6-D rotation (Zhou et al. 2019): the first two columns of the rotation matrix of
    unit quaternions q (..., 4). q and -q give the same 6-D vector, so a yaw drawn over a full
    turn has no jump where the quaternion flips sign. order: "wxyz" (MuJoCo bodies) or "xyzw"
    (robosuite's robot0_eef_quat)."""
    q = np.asarray(q, dtype=np.float64)
    w, x, y, z = (q[..., 0], q[..., 1], q[..., 2], q[..., 3]) if order == "wxyz" else \
                 (q[..., 3], q[..., 0], q[..., 1], q[..., 2])
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    cols = [1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y),   # R[:, 0]
            2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)]   # R[:, 1]
    return np.stack(cols, -1).astype(np.float32)


def derived_sources(key: str) -> list:
    """The stored keys a derived observation key is computed from ([key] for a stored one):
      <name>_rot6d   from <name>_quat (6-D rotation, see quat_to_rot6d)
      <name>_rel     from <name> and robot0_eef_pos: a position relative to the gripper (world axes)"""
    if key.endswith("_rot6d"):
        return [key[:-len("_rot6d")] + "_quat"]
    if key.endswith("_rel"):
        return [key[:-len("_rel")], "robot0_eef_pos"]
    return [key]


def derive_obs(obs: dict, keys) -> dict:
    """obs (stored keys, arrays (..., d)) plus the derived keys among `keys`, computed the same
    way in training (whole datasets) and at test time (one step's observation)."""
    out = dict(obs)
    for k in keys:
        if k in out:
            continue
        if k.endswith("_rot6d"):
            src = derived_sources(k)[0]
            out[k] = quat_to_rot6d(obs[src], "xyzw" if src.startswith("robot0_") else "wxyz")
        elif k.endswith("_rel"):
            base, eef = derived_sources(k)
            out[k] = (np.asarray(obs[base]) - np.asarray(obs[eef])).astype(np.float32)
    return out


def lowdim_keys_of(path: str, obs_set: str = "world") -> list:
    """The low-dim observation keys of a dataset for an observation set (02_train.py --obs-set):
      world  proprioception (joint + gripper positions, App. C) + the stored object keys in the
             world frame (orientations as stored quaternions): the original cpu set
      eef    world + the end-effector pose (robot0_eef_pos, robot0_eef_rot6d), every orientation
             as a continuous 6-D rotation instead of a quaternion
      rel    proprioception + end-effector pose + every object position (<name>_pos) relative to
             the gripper (<name>_pos_rel), orientations as 6-D rotations, other object keys (e.g.
             MugCleanup's drawer_opening) as stored; no world-frame object position, so a
             fixed fixture (NutAssembly's peg) is no longer a constant per domain
    Keys are returned proprioception first, then sorted object keys."""
    if obs_set not in OBS_SETS:
        raise UsageError(f"unknown observation set {obs_set!r}; choose from {', '.join(OBS_SETS)}")
    keys = stored_keys_of(path)
    objs = sorted(k for k in keys if not k.endswith(IMAGE_SUFFIX) and not k.startswith("robot0_"))
    proprio = [k for k in PROPRIO_KEYS if k in keys]
    if obs_set == "world":
        return proprio + objs
    objs = [k[:-len("_quat")] + "_rot6d" if k.endswith("_quat") else k for k in objs]
    if obs_set == "rel":  # positions only: a scalar such as MugCleanup's drawer_opening stays
        objs = [k + "_rel" if k.endswith("_pos") else k for k in objs]
    return proprio + EEF_KEYS + objs


def stored_keys_of(path: str) -> list:
    """Every observation key stored in a dataset's first demo (images included)."""
    with open_dataset(path) as f:
        first = next(k for k in sorted(f["data"]) if k.startswith("demo_"))
        return list(f["data"][first]["obs"].keys())


def camera_framing(path: str) -> str:
    """The agentview framing a dataset's frames were rendered with (tasks.FRAMINGS; files made
    before framings were recorded: "wide", robosuite's agentview)."""
    with open_dataset(path) as f:
        env_args = json.loads(f["data"].attrs.get("env_args", "{}"))
    return env_args.get("env_kwargs", {}).get("framing", "wide")


def load_demos(path: str, obs_keys, n_obs: int, horizon: int, action_key: str = "joint_actions",
               max_demos: int = 0) -> DemoSet:
    """Read a robomimic-format file into memory (bad layout, missing keys or non-finite values
    raise UsageError naming the file and key). max_demos > 0 keeps the first demos only."""
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
            raw = {}
            for k in obs_keys:
                for src in derived_sources(k):
                    if src not in d["obs"]:
                        raise UsageError(f"{path}: {name} has no observation '{src}' "
                                         f"(it has {sorted(d['obs'].keys())})")
                    raw[src] = d["obs"][src][()]
            raw = derive_obs(raw, obs_keys)
            for k in obs_keys:
                obs[k].append(raw[k])
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
