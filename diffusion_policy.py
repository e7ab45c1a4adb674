"""The diffusion policy of the paper (Sec. 4, App. C, D.3): vision stem, observation encoder,
four denoiser architectures, and the policy that joins them (phi(o) -> [features, domain label]
-> eps_theta), with DDIM/DDPM sampling and classifier-free guidance.

  0. ModelConfig: the network's settings (every checkpoint's config["model"])
  1. networks: ResNet18-GN stem, ObsEncoder, TransformerDenoiser (encdec | dec), UNetDenoiser,
     MLPDenoiser
  2. the policy: DiffusionPolicy, load_policy (a 02_train.py checkpoint -> policy, config, step)
  3. closed-loop control: PolicyAgent (receding horizon; 03_eval.py and 05_real_deploy.py)
"""
import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import (
    NoiseSchedule,
    Normalizer,
    UsageError,
    cfg_combine,
    ddim_sample,
    ddpm_sample,
    derive_obs,
    derived_sources,
    load_checkpoint,
)
from methods import NULL_LABEL, NUM_DOMAINS, TARGET

# ----------------------------------------------------------------------------------------------
# 0. the network's settings: one dataclass, stored as config["model"] in every run and checkpoint
# ----------------------------------------------------------------------------------------------
ARCHS = ("encdec", "dec", "unet", "mlp")  # DiffusionPolicy builds each; a new one: here and there


@dataclass
class ModelConfig:
    """The policy network and how it acts (Chi et al. Diffusion Policy; App. C, D.3). The defaults
    are the paper's; 02_train.py's model flags take theirs from here (train_config.Args), and a
    setting added later defaults to the value the checkpoints made before it had, so an older
    config["model"] loads as it was trained (`from_dict`)."""
    arch: str = "encdec"            # denoiser: ARCHS
    n_obs: int = 2                  # observation history
    horizon: int = 16               # predicted action chunk
    n_action: int = 8               # actions executed per chunk at test time
    d_feat: int = 256               # observation feature width (the trunk)
    d_model: int = 256              # transformer width (mlp: its width)
    n_heads: int = 4
    n_layers: int = 8               # decoder layers (mlp: residual blocks)
    n_cond_layers: int = 4          # encoder layers over the observation tokens (encdec)
    dropout: float = 0.1
    unet_dims: list = field(default_factory=lambda: [256, 512, 1024])
    resnet_width: int = 64          # ResNet18 base width (64 = the original)
    vision_dim: int = 256           # per-camera feature width after the vision stem
    vision_pool: str = "avg"        # avg | spatial_softmax (older checkpoints: avg)
    crop: int = 76                  # random crop in training, center crop at test (0 = none)
    T: int = 100                    # diffusion steps in training (DDPM)
    sample_steps: int = 10          # DDIM steps at inference
    image_keys: list = field(default_factory=list)   # the data it reads (02_train.py fills these)
    lowdim_keys: list = field(default_factory=list)
    action_space: str = "abs"       # abs | rel | osc (older checkpoints: abs)
    lowdim_dims: dict = field(default_factory=dict)
    action_dim: int = 0
    use_label: bool = False         # CFG / CFG-ADDA: the domain label joins the features
    image_size: int = None          # frames it was trained on; older checkpoints: 84 with cameras, else 0
    framing: str = "wide"           # the agentview camera's framing of those frames (tasks.FRAMINGS)

    # the settings a checkpoint for --init-from must share (the weights' shapes and meaning)
    NETWORK = ("arch", "n_obs", "horizon", "d_feat", "d_model", "n_heads", "n_layers", "n_cond_layers",
               "unet_dims", "resnet_width", "vision_dim", "vision_pool", "crop", "T", "image_keys",
               "lowdim_keys", "lowdim_dims", "action_dim", "use_label", "action_space")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """A stored config["model"] (any version): the settings it predates at their old values."""
        known = {f.name for f in fields(cls)}
        m = cls(**{k: v for k, v in d.items() if k in known})
        if m.image_size is None:
            m.image_size = 84 if m.image_keys else 0  # the paper's 84-px frames, before sizes were stored
        return m

    def to_dict(self) -> dict:
        return asdict(self)

# ----------------------------------------------------------------------------------------------
# 1. networks: ResNet18-GN vision stem, observation encoder, three denoisers (App. C, D.3)
# ----------------------------------------------------------------------------------------------


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


class SpatialSoftmax(nn.Module):
    """Keypoint pooling (Levine et al. 2016; robomimic's, which Diffusion Policy uses in place of
    global average pooling "to maintain spatial information"): a 1x1 conv to `num_kp` maps, a
    softmax over the positions of each (learned temperature), their expected (x, y) in [-1, 1]."""

    def __init__(self, cin: int, num_kp: int = 32):
        super().__init__()
        self.kp = nn.Conv2d(cin, num_kp, 1)
        self.log_temperature = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # (B, C, H, W) -> (B, 2 num_kp)
        h, w = x.shape[-2:]
        att = torch.softmax(self.kp(x).flatten(2) / self.log_temperature.exp(), -1)  # (B, K, H W)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device),
                                torch.linspace(-1, 1, w, device=x.device), indexing="ij")
        return (att @ torch.stack([xs.flatten(), ys.flatten()], -1)).flatten(1)


class ResNet18GN(nn.Module):
    """ResNet18 (He et al. 2016) with GroupNorm, trained from scratch, a pooling of its last
    feature map and a linear projection to `out_dim` (the "vision stem" feature point).
    width = 64 is the original; pool: avg (global average, torchvision's) | spatial_softmax
    (32 keypoints, robomimic / Diffusion Policy's)."""

    def __init__(self, width: int = 64, out_dim: int = 512, pool: str = "avg"):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        layers = [nn.Conv2d(3, w[0], 7, 2, 3, bias=False), _gn(w[0]), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        cin = w[0]
        for i, c in enumerate(w):
            layers += [BasicBlock(cin, c, 1 if i == 0 else 2), BasicBlock(c, c, 1)]
            cin = c
        self.body = nn.Sequential(*layers)
        if pool not in ("avg", "spatial_softmax"):
            raise ValueError(f"pool must be avg or spatial_softmax, got {pool!r}")
        self.pool = SpatialSoftmax(w[-1]) if pool == "spatial_softmax" else None
        self.proj = nn.Linear(2 * 32 if self.pool else w[-1], out_dim)

    def forward(self, x):  # (B, 3, H, W) in [-1, 1]
        y = self.body(x)
        return self.proj(self.pool(y) if self.pool else y.mean((2, 3)))


def speed_up(policy: nn.Module, channels_last: bool = True, compile: bool = True):
    """Faster CPU training, same network (02_train.py --compile: both): the vision stems' weights
    and inputs channels-last, and torch.compile (inductor) on the encoder and the denoiser, in place
    (the state_dict's keys and the weights' values do not change; bench/bench_images.py --compile
    measures each)."""
    if channels_last:
        for m in policy.encoder.modules():
            if isinstance(m, ResNet18GN):
                m.to(memory_format=torch.channels_last)
                m.register_forward_pre_hook(lambda _, x: (x[0].contiguous(memory_format=torch.channels_last),))
    if compile:
        policy.encoder.compile()
        policy.denoiser.compile()


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
                 resnet_width: int = 64, vision_dim: int = 256, pool: str = "avg"):
        super().__init__()
        self.image_keys, self.crop = list(image_keys), crop
        self.vision = nn.ModuleDict({k: ResNet18GN(resnet_width, vision_dim, pool) for k in self.image_keys})
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


class MLPDenoiser(nn.Module):
    """A cheap denoiser for low-dim policies (not in the paper; tried for the cpu profile and not
    kept, RESULTS "A CPU recipe": ~3x the samples/s, a worse fit per second): the flattened noisy
    chunk through `depth` pre-norm residual MLP blocks, each FiLM-modulated by [time embedding,
    flattened observation features], as the MLP denoisers of IDQL / BESO. No attention over the
    horizon: one matrix per block sees the whole chunk."""

    def __init__(self, action_dim, horizon, n_obs, d_cond, width=512, depth=3, d_time=128):
        super().__init__()
        self.d_time, self.shape = d_time, (horizon, action_dim)
        dc = d_time + n_obs * d_cond
        self.time = nn.Sequential(nn.Linear(d_time, 2 * d_time), nn.Mish(), nn.Linear(2 * d_time, d_time))
        self.inp = nn.Linear(horizon * action_dim, width)
        self.film = nn.ModuleList([nn.Linear(dc, 2 * width) for _ in range(depth)])
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(width, 2 * width), nn.Mish(),
                                                   nn.Linear(2 * width, width)) for _ in range(depth)])
        self.norms = nn.ModuleList([nn.LayerNorm(width) for _ in range(depth)])
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, horizon * action_dim))

    def forward(self, x, t, cond):  # x (B, H, A), t (B,), cond (B, n_obs, d_cond)
        c = F.mish(torch.cat([self.time(timestep_embedding(t, self.d_time)), cond.flatten(1)], -1))
        h = self.inp(x.flatten(1))
        for film, block, norm in zip(self.film, self.blocks, self.norms):
            scale, shift = film(c).chunk(2, -1)
            h = h + block(norm(h) * (1 + scale) + shift)
        return self.out(h).reshape(-1, *self.shape)


# ----------------------------------------------------------------------------------------------
# 2. the policy: phi(o) -> [features, domain label] -> eps_theta; DDIM sampling with CFG
# ----------------------------------------------------------------------------------------------


class DiffusionPolicy(nn.Module):
    """Diffusion Policy (Chi et al. 2023) as the paper uses it (Sec. 4, App. C).

    cfg: a ModelConfig (or its stored dict). With use_label (CFG, CFG-ADDA) the one-hot domain
    label is concatenated to the observation features after the encoder; the null label is all
    zeros (Sec. 5.1)."""

    def __init__(self, cfg):
        super().__init__()
        m = cfg if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg)
        self.m = m
        lowdim = sum(m.lowdim_dims[k] for k in m.lowdim_keys)
        self.normalizer = Normalizer({**{k: m.lowdim_dims[k] for k in m.lowdim_keys}, "actions": m.action_dim})
        self.encoder = ObsEncoder(m.image_keys, lowdim, m.d_feat, m.crop, m.resnet_width, m.vision_dim,
                                  m.vision_pool)
        d_cond = m.d_feat + (NUM_DOMAINS if m.use_label else 0)
        if m.arch in ("encdec", "dec"):
            self.denoiser = TransformerDenoiser(m.action_dim, m.horizon, m.n_obs, d_cond, m.d_model, m.n_heads,
                                                m.n_layers, m.n_cond_layers, m.dropout, m.arch)
        elif m.arch == "unet":
            self.denoiser = UNetDenoiser(m.action_dim, m.horizon, m.n_obs, d_cond, tuple(m.unet_dims))
        elif m.arch == "mlp":
            self.denoiser = MLPDenoiser(m.action_dim, m.horizon, m.n_obs, d_cond, m.d_model, m.n_layers)
        else:
            raise UsageError(f"unknown architecture {m.arch!r} ({', '.join(ARCHS)})")
        self.schedule = NoiseSchedule.make(m.T)

    @property
    def cfg(self) -> dict:
        """The settings by key (03_eval.py, 05_real_deploy.py read them so); a copy: set self.m."""
        return self.m.to_dict()

    # --- observation features (the two feature points of Sec. 4.1) ---
    def encode(self, obs: dict, generator=None):
        """obs: raw batch (B, n_obs, ...) per key -> (stem, trunk) features."""
        lowdim = torch.cat([self.normalizer(k, obs[k].float()) for k in self.m.lowdim_keys], -1)
        images = {k: self.normalizer(k, obs[k]) for k in self.m.image_keys}
        return self.encoder(images, lowdim, generator)

    def condition(self, z: torch.Tensor, label) -> torch.Tensor:
        """[z, one-hot(label)] (label-free if the policy has no label); label: (B,) long with
        NULL_LABEL rows getting all zeros."""
        if not self.m.use_label:
            return z
        label = torch.as_tensor(label, device=z.device).expand(z.shape[0])
        onehot = F.one_hot(label.clamp_min(0), NUM_DOMAINS).to(z.dtype) * (label >= 0)[:, None].to(z.dtype)
        return torch.cat([z, onehot[:, None].expand(-1, z.shape[1], -1)], -1)

    def forward(self, x_t, t, cond):
        return self.denoiser(x_t, t, cond)

    def action_origin(self, obs: dict):
        """What the denoised chunk is measured from: None for absolute joint targets (App. C,
        action_space "abs") and OSC commands ("osc"); for "rel", the current joint positions (last
        history step) on the joint dims and 0 on the gripper, so the policy predicts joint targets
        minus where the arm is now (finer steps after min/max normalization) and adds them back at
        execution."""
        if self.m.action_space != "rel":
            return None
        q = obs["robot0_joint_pos"][:, -1].float()
        return F.pad(q, (0, self.m.action_dim - q.shape[-1]))

    def diffusion_loss(self, actions, cond, generator=None, origin=None):
        """Per-sample epsilon-prediction loss l = ||eps - eps_theta(a_t, t, cond)||^2 (Eq. 1) on
        normalized action chunks (minus `origin` (B, A), see action_origin); t and eps drawn on
        the CPU from `generator` (same draws on any device), as common.ddpm_loss."""
        if origin is not None:
            actions = actions - origin[:, None]
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
        guided = self.m.use_label and guidance_scale != 0
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

        shape = (b, self.m.horizon, self.m.action_dim)
        if sampler == "ddpm":
            a = ddpm_sample(eps_fn, shape, self.schedule, generator, clip=1.0)
        else:
            a = ddim_sample(eps_fn, shape, self.schedule, sample_steps, generator, clip=1.0)
        a = self.normalizer.inverse("actions", a.to(dev))
        origin = self.action_origin(obs)
        return a if origin is None else a + origin.to(dev)[:, None]


def weights_digest(policy) -> str:
    """A short fingerprint of a policy's weights (normalizer included): tells two checkpoints apart
    that were written to the same path (a run trained again, or resumed further)."""
    h = hashlib.sha1()
    for k, v in sorted(policy.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def load_policy(path: str, device="cpu", weights: str = "ema"):
    """A trained policy (EMA weights by default, as Diffusion Policy evaluates), its run config and
    its training step, from a 02_train.py checkpoint (ckpt.pt or an EMA-only ckpt_<step>.pt)."""
    ck = load_checkpoint(path)
    try:
        cfg = ck["config"]
        policy = DiffusionPolicy(cfg["model"])
        state = ck["ema"] if weights == "ema" else \
            {k[len("policy."):]: v for k, v in ck["objective"].items() if k.startswith("policy.")}
        policy.load_state_dict(state)
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"{path}: not a 02_train.py checkpoint ({type(e).__name__}: {e})")
    return policy.to(device).eval(), cfg, int(ck["step"])


# ----------------------------------------------------------------------------------------------
# 3. closed-loop control: the same agent drives the simulator (03_eval.py) and a robot (05)
# ----------------------------------------------------------------------------------------------
class PolicyAgent:
    """Receding-horizon control (Diffusion Policy): keep the last n_obs observations (the first
    one repeated at the start), predict a chunk of `horizon` actions, execute its first n_action.

    lead = 0 (simulation): predict when the queue runs out, from that step's observation.
    lead = k > 0 (a robot, where inference is slower than a control step): start predicting in a
    background thread when k actions are left, from that step's observation; the new chunk's
    first k actions belong to steps that the old queue still covers and are skipped, so the
    switch happens without a pause if inference takes under k steps (it waits otherwise).
    Chunk index i is the action for i steps after the observation it was predicted from."""

    def __init__(self, policy, seed: int, guidance, sample_steps: int, sampler: str = "ddim", lead: int = 0,
                 label: int = TARGET, n_action: int = 0, gripper_levels=None):
        self.policy, self.cfg = policy, policy.cfg
        # actions executed per chunk (0 = the trained n_action; fewer = re-plan more often)
        self.n_action = n_action or self.cfg["n_action"]
        if not 1 <= self.n_action <= self.cfg["horizon"]:
            raise ValueError(f"n_action must be in [1, horizon = {self.cfg['horizon']}], got {n_action}")
        self.label = label  # domain label a CFG / CFG-ADDA policy is conditioned on (ignored otherwise)
        # the gripper commands of the demos (tasks.TaskEnv.gripper_levels): the last action dim is
        # executed as the nearest of them (None: as predicted)
        self.gripper_levels = None if gripper_levels is None else np.asarray(gripper_levels, dtype=np.float64)
        self.keys = self.cfg["lowdim_keys"] + self.cfg["image_keys"]
        # the stored observation keys it needs (derived keys resolved: common.derived_sources)
        self.sources = sorted({s for k in self.keys for s in derived_sources(k)})
        self.guidance = 0.0 if guidance is None else guidance
        self.sample_steps, self.sampler = sample_steps, sampler
        if not 0 <= lead <= self.cfg["horizon"] - self.n_action:
            raise ValueError(f"lead must be in [0, horizon - n_action = "
                             f"{self.cfg['horizon'] - self.n_action}], got {lead}")
        self.lead = lead
        self.gen = torch.Generator().manual_seed(seed)  # the episode's own noise stream
        self.history, self.queue = [], []
        self.chunk_seconds = []     # inference time of each chunk
        self.started = False        # whether the last act() started a prediction
        self.on_act = None          # called before each action (films a video frame)
        self._pool = ThreadPoolExecutor(1) if lead else None
        self._pending = None

    def predict(self, history: list) -> np.ndarray:
        history = [derive_obs(o, self.keys) for o in history]  # relative positions, 6-D rotations
        batch = {k: torch.from_numpy(np.stack([np.asarray(o[k]) for o in history])[None]) for k in self.keys}
        t0 = time.perf_counter()
        chunk = self.policy.predict_action(batch, self.label, self.guidance, self.sample_steps, self.gen,
                                           self.sampler)[0].numpy()
        self.chunk_seconds.append(time.perf_counter() - t0)
        return chunk

    def act(self, obs: dict) -> np.ndarray:
        if self.on_act is not None:
            self.on_act()
        size = self.cfg["image_size"]  # trained on size x size frames
        for k in self.cfg["image_keys"] if size else ():  # (a step whose frame nobody reads has none)
            if k in obs and np.shape(obs[k])[:2] != (size, size):
                raise ValueError(f"camera '{k}' gives {np.shape(obs[k])[:2]} frames; the policy was trained on "
                                 f"{size}x{size} (render the env at image_size={size})")
        self.history = (self.history or [obs] * self.cfg["n_obs"])[1:] + [obs]
        self.started = False
        if self._pool is None:
            if not self.queue:
                self.started = True
                self.queue = list(self.predict(self.history)[:self.n_action])
        else:
            if self._pending is None and len(self.queue) <= self.lead:
                self.started = True
                skip = len(self.queue)  # actions of the old queue still to run: skipped in the new chunk
                self._pending = (self._pool.submit(self.predict, list(self.history)), skip)
            if not self.queue:
                future, skip = self._pending
                self._pending = None
                self.queue = list(future.result()[skip:skip + self.n_action])
        action = self.queue.pop(0).astype(np.float64)
        if self.gripper_levels is not None:
            action[-1] = self.gripper_levels[np.abs(self.gripper_levels - action[-1]).argmin()]
        return action

    def reads_next(self) -> bool:
        """Whether the next step's observation will be read by a prediction (the env renders
        cameras only then: tasks.make_env(render="demand")). lead = 0: the next prediction runs
        when the queue is empty and reads the last n_obs observations, so the next one is read iff
        fewer than n_obs actions are left. lead > 0 (a robot): always."""
        return self.lead > 0 or len(self.queue) < self.cfg["n_obs"]

    def close(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True)

