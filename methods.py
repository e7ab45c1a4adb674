"""The co-training methods of the paper's Sec. 5.1 in one file: the method table, the methods'
settings, the co-training objective and every method's loss term (Lei et al. 2026).

    real_only     w = 1 (target data only)           sim_only   w = 0 (source data only)
    cotrain       batches mixed with ratio w (Eq. 1: L = w E_T[l] + (1 - w) E_S[l])
    ot            + unbalanced Sinkhorn OT between the batch's source and target features (Cheng et al. 2025)
    adda          + domain discriminator on the features, gradient reversal into the encoder (Tzeng et al. 2017)
    discriminate  ADDA's discriminator without gradient reversal (Table 1, "+discrimination")
    cfg           + one-hot domain label on the features, dropped to the null label; guidance at
                  inference (Wei et al. 2025)
    cfg_adda      CFG's label + ADDA's discriminator on the label-free feature dims (the paper's)

Add a method, all in this file: (1) one row in METHODS (its marker, and which of label / disc / ot
/ fixed ratio / default guidance it uses); (2) if it adds a new kind of loss term, one ALGO LOGIC
block in CoTrainObjective.forward, with its settings as MethodArgs fields (02_train.py's flags;
their defaults must leave the methods that existed before unchanged: runs made before a setting
existed read it at its default, common.upgrade_config) and their checks in check_method_args.
02_train.py, 03_eval.py, 04_analyze.py, 05_real_deploy.py and study.py read the table; nothing
else changes (tests/test_train.py adds a method this way to a copy of the repository).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cli import UsageError, arg

TARGET, SOURCE, NULL_LABEL = 0, 1, -1  # domain labels; NULL_LABEL = CFG's dropped label
NUM_DOMAINS = 2


# ----------------------------------------------------------------------------------------------
# the method table: what each method is, for every stage
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """What a co-training method is, for every stage: CoTrainObjective builds its loss from these
    fields, 03_eval.py and 05_real_deploy.py read `label` and `guidance`, 04_analyze.py orders,
    groups and draws by them."""
    marker: str                 # matplotlib marker of the method in 04_analyze.py's plots (unique)
    ratio: float = None         # fixed mixing ratio w (real_only 1, sim_only 0); None: --ratio
    label: bool = False         # CFG: one-hot domain label on the features, dropped to the null label
    disc: str = ""              # "": none; "reverse": ADDA discriminator with gradient reversal;
                                # "plain": the discriminator without reversal (Table 1)
    ot: bool = False            # OT alignment loss between source and target batch features
    guidance: float = None      # default guidance lambda stored for evaluation (label methods)
    sweep: bool = False         # plain co-training at a ratio: the ratio sweep of Fig. 6 / Fig. 9


# One row per method, in the order of the paper's tables (04_analyze.py keeps this order).
METHODS = {
    "real_only":    Method(marker="s", ratio=1.0, sweep=True),   # w = 1: target data only
    "sim_only":     Method(marker="v", ratio=0.0, sweep=True),   # w = 0: source data only
    "cotrain":      Method(marker="o", sweep=True),              # Eq. 1, batches mixed with ratio w
    "ot":           Method(marker="P", ot=True),                 # Cheng et al. 2025
    "adda":         Method(marker="X", disc="reverse"),          # Tzeng et al. 2017
    "discriminate": Method(marker="D", disc="plain"),            # Table 1, "+discrimination"
    "cfg":          Method(marker="^", label=True, guidance=0.0),          # Wei et al. 2025
    "cfg_adda":     Method(marker="*", label=True, disc="reverse", guidance=-0.5),  # the paper's (Table 2)
}


def check_methods(methods: dict = None):
    """Raise ValueError if a row of the method table cannot be trained or placed in a plot: an
    unknown disc kind, guidance without a label, a fixed ratio outside [0, 1], a marker shared."""
    methods = METHODS if methods is None else methods
    seen = {}
    for name, m in methods.items():
        if m.disc not in ("", "reverse", "plain"):
            raise ValueError(f"method {name}: disc must be '', 'reverse' or 'plain', got {m.disc!r}")
        if m.guidance is not None and not m.label:
            raise ValueError(f"method {name}: a default guidance needs label=True")
        if m.ratio is not None and not 0 <= m.ratio <= 1:
            raise ValueError(f"method {name}: fixed ratio {m.ratio} outside [0, 1]")
        if not m.marker or m.marker in seen:
            raise ValueError(f"method {name}: marker {m.marker!r} is empty or already {seen.get(m.marker)}'s")
        seen[m.marker] = name


def label_methods() -> list:
    return [n for n, m in METHODS.items() if m.label]


# ----------------------------------------------------------------------------------------------
# where each method goes in tables and plots
# ----------------------------------------------------------------------------------------------
# Where each method goes in 04_analyze.py's tables and figures, read from METHODS when asked (so a
# row added there is placed without another edit): the ratio sweep (plain co-training; w = 1 and w = 0 are
# its ends), the table order, one marker per method. App. D.4's pre-train + fine-tune is a
# real_only run started from a checkpoint (method_of), drawn with its own marker.
PRETRAIN_FT, PRETRAIN_FT_MARKER = "pretrain_ft", "h"


def in_ratio_sweep(method: str) -> bool:
    return method in METHODS and METHODS[method].sweep


def method_order() -> list:
    return list(METHODS) + [PRETRAIN_FT]


def marker(method: str) -> str:
    return PRETRAIN_FT_MARKER if method == PRETRAIN_FT else METHODS[method].marker


def check_placement():
    """Every row of the method table has a place here: valid, with a marker of its own
    (ValueError otherwise; tests/test_analyze.py runs it on the table)."""
    check_methods()
    markers = [marker(m) for m in method_order()]
    if len(set(markers)) != len(markers):
        raise ValueError(f"04_analyze.py cannot tell the methods apart: markers {dict(zip(method_order(), markers))}")


def method_of(cfg: dict) -> str:
    """The method as the paper's tables name it: a real_only run started from a checkpoint is
    App. D.4's pre-train + fine-tune."""
    m = cfg["args"]["method"]
    return PRETRAIN_FT if m == "real_only" and cfg["args"].get("init_from") else m


# ----------------------------------------------------------------------------------------------
# the methods' settings (02_train.py's Args extends this; App. C, D.6)
# ----------------------------------------------------------------------------------------------
@dataclass
class MethodArgs:
    disc_weight: float = arg(0.05, "ADDA/CFG-ADDA discriminator loss weight alpha (App. D.6 sweep: 0, 0.05, 0.5)")
    disc_warmup: int = arg(5000, "warm-up steps before the discriminator starts: it neither trains nor "
                                 "sends a gradient until then (App. C: 5000)")
    disc_during_warmup: bool = arg(False, "train the discriminator on detached features during the "
                                          "warm-up (how runs made before config version 3 trained; "
                                          "not the paper's)")
    grl_ramp: int = arg(0, "steps over which the encoder's reversed-gradient coefficient ramps "
                           "0 -> 1 after warm-up (Ganin & Lempitsky schedule; 0 = at once)")
    disc_hidden: int = arg(256, "discriminator hidden width (3-layer MLP, App. C)")
    cfg_drop_prob: float = arg(0.2, "CFG: probability of replacing the domain label by the null label")
    guidance: str = arg("", "default guidance lambda stored for eval (empty: CFG 0, CFG-ADDA -0.5)")
    ot_weight: float = arg(0.1, "OT: loss weight")
    ot_reg: float = arg(0.05, "OT: entropic regularization of the unbalanced Sinkhorn plan, in units "
                              "of the batch's mean cost (--ot-cost-scale mean)")
    ot_reg_m: float = arg(1.0, "OT: marginal relaxation (KL weight) of the unbalanced plan, same units")
    ot_cost_scale: str = arg("mean", "OT: mean: the plan is computed on the cost divided by the batch's "
                                     "mean cost, so --ot-reg and --ot-reg-m are fractions of it (POT's "
                                     "M /= M.max() idiom); none: on the raw cost (runs made before config "
                                     "version 3; a plan that is ~uniform)")
    ot_action_weight: float = arg(0.0, "OT: weight of the action-chunk distance in the cost")


OT_COST_SCALES = ("mean", "none")
# The settings each part of a method reads: a method without that part never reads them, so they
# may differ on --resume (02_train.py) and an older run's value of them changes nothing.
PART_SETTINGS = {"disc": ("disc_weight", "disc_warmup", "disc_during_warmup", "grl_ramp", "disc_hidden"),
                 "label": ("cfg_drop_prob", "guidance"),
                 "ot": ("ot_weight", "ot_reg", "ot_reg_m", "ot_cost_scale", "ot_action_weight")}


def unused_settings(method: str) -> set:
    """The method settings (MethodArgs fields) this method never reads."""
    m = METHODS[method]
    return {k for part, keys in PART_SETTINGS.items() if not getattr(m, part) for k in keys}


def check_method_args(a):
    """UsageError (one line) for a method setting that cannot be trained."""
    if a.method not in METHODS:
        raise UsageError(f"unknown method {a.method!r}; choose from {', '.join(METHODS)}")
    if not 0 <= a.cfg_drop_prob <= 1:
        raise UsageError(f"--cfg-drop-prob must be in [0, 1], got {a.cfg_drop_prob}")
    if a.ot_cost_scale not in OT_COST_SCALES:
        raise UsageError(f"--ot-cost-scale must be one of {', '.join(OT_COST_SCALES)}, got {a.ot_cost_scale!r}")
    if a.ot_reg <= 0 or a.ot_reg_m <= 0:
        raise UsageError(f"--ot-reg and --ot-reg-m must be positive, got {a.ot_reg} and {a.ot_reg_m}")
    if a.guidance and not METHODS[a.method].label:
        raise UsageError(f"--guidance needs a domain label (methods {', '.join(label_methods())}), "
                         f"not {a.method}")


def default_guidance(a) -> float:
    """The guidance lambda stored for evaluation: --guidance, else the method's default."""
    return float(a.guidance) if a.guidance else METHODS[a.method].guidance


# ----------------------------------------------------------------------------------------------
# the co-training objective: one module, so DistributedDataParallel sees every parameter
# ----------------------------------------------------------------------------------------------
class CoTrainObjective(nn.Module):
    """Total loss of one batch for any method. The shared part is the diffusion loss of Eq. 1
    (the batch composition carries w); each method adds one term or one conditioning input,
    in the ALGO LOGIC blocks below, switched on by its row of METHODS. `policy` is a
    diffusion_policy.DiffusionPolicy, `a` 02_train.py's Args."""

    def __init__(self, policy: nn.Module, a):
        super().__init__()
        self.policy, self.a, self.m = policy, a, METHODS[a.method]
        d_disc = a.n_obs * a.d_feat  # the label-free features only (CFG-ADDA, Sec. 5.1)
        self.disc = Discriminator(d_disc, a.disc_hidden) if self.m.disc else None

    def forward(self, batch: dict, step: int, gen: torch.Generator):
        a, m, policy = self.a, self.m, self.policy
        stem, z = policy.encode(batch["obs"], gen)
        label = batch["domain"]
        # ALGO LOGIC (CFG, CFG-ADDA): the domain label, dropped to the null label with prob. p
        if m.label:
            label = drop_labels(label, a.cfg_drop_prob, gen)
        cond = policy.condition(z, label)
        origin = policy.action_origin(batch["obs"])  # None for absolute actions
        # the diffusion loss of Eq. 1, shared by every method
        terms = {"diffusion": policy.diffusion_loss(batch["actions"], cond, gen, origin).mean()}
        loss = terms["diffusion"]
        # ALGO LOGIC (ADDA, CFG-ADDA, +discrimination): a discriminator on z (label-free dims)
        if m.disc and (step >= a.disc_warmup or a.disc_during_warmup):
            # App. C: the discriminator starts after the warm-up (neither trains nor sends a
            # gradient before); then the encoder's reversed gradient ramps in (Ganin & Lempitsky).
            # --disc-during-warmup: it trains on detached features during the warm-up (older runs)
            coeff = grl_coeff(step, a.disc_warmup, a.grl_ramp)
            d_loss, acc = discriminator_loss(self.disc, z, batch["domain"], reverse=m.disc == "reverse",
                                             coeff=coeff)
            terms["disc"], terms["disc_acc"] = d_loss, acc  # acc: balanced over the two domains
            terms["grl_coeff"] = torch.tensor(coeff)
            loss = loss + a.disc_weight * d_loss
        # ALGO LOGIC (OT): unbalanced Sinkhorn between the batch's source and target features
        if m.ot:
            is_t = batch["domain"] == TARGET
            terms["ot"], terms["ot_entropy"] = ot_loss(
                z[~is_t], z[is_t], a.ot_reg, a.ot_reg_m, batch["actions"][~is_t], batch["actions"][is_t],
                a.ot_action_weight, a.ot_cost_scale)
            loss = loss + a.ot_weight * terms["ot"]
        terms["loss"] = loss
        return terms


# ----------------------------------------------------------------------------------------------
# the loss terms: CFG's label drop, ADDA's discriminator with gradient reversal, OT
# ----------------------------------------------------------------------------------------------
def drop_labels(domain: torch.Tensor, p: float, generator: torch.Generator = None) -> torch.Tensor:
    """CFG training: each sample's domain label becomes NULL_LABEL with probability p."""
    drop = torch.rand(domain.shape, generator=generator) < p
    return torch.where(drop.to(domain.device), torch.full_like(domain, NULL_LABEL), domain)


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


def balanced_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with each domain's samples averaged on their own, then the two means
    averaged: a batch with 17 % target samples weighs both domains equally, so predicting the
    majority domain no longer lowers the loss (a constant logit is best at 0, chance). A domain
    absent from the batch contributes nothing."""
    per = F.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")
    means = [per[y == c].mean() for c in (0.0, 1.0) if bool((y == c).any())]
    return torch.stack(means).mean() if means else per.sum() * 0


def balanced_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of the per-domain accuracies (0.5 for any constant prediction)."""
    hit = ((logits > 0) == (y > 0.5)).float()
    accs = [hit[y == c].mean() for c in (0.0, 1.0) if bool((y == c).any())]
    return torch.stack(accs).mean() if accs else hit.sum() * 0


def grl_coeff(step: int, warmup: int, ramp: int) -> float:
    """Gradient-reversal coefficient (Ganin & Lempitsky 2015): 0 during the discriminator's
    warm-up, then 2 / (1 + exp(-10 p)) - 1 with p going 0 -> 1 over `ramp` steps (ramp = 0: 1 at once)."""
    if step < warmup:
        return 0.0
    if ramp <= 0:
        return 1.0
    p = min(1.0, (step - warmup) / ramp)
    return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0


def discriminator_loss(disc: Discriminator, z: torch.Tensor, domain: torch.Tensor, reverse: bool,
                       coeff: float = 1.0):
    """Domain-balanced BCE of the discriminator predicting "source" (domain == SOURCE) from z.
    reverse=True (ADDA, CFG-ADDA): the encoder receives the gradient reversed and scaled by
    `coeff` (grl_coeff: 0 while the discriminator warms up on its own), so it learns to fool the
    discriminator while the discriminator learns to tell the domains apart.
    reverse=False (Table 1's "+discrimination"): both minimize the BCE, so the encoder makes the
    domains easier to tell apart (coeff scales the encoder's share the same way).
    Returns (loss, balanced accuracy)."""
    if coeff == 0:
        zin = z.detach()
    else:
        zin = grad_reverse(z, coeff) if reverse else z * coeff + z.detach() * (1 - coeff)
    logits = disc(zin)
    y = (domain == SOURCE).to(logits.dtype)
    return balanced_bce(logits, y), balanced_accuracy(logits.detach(), y)


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


def plan_entropy(plan: torch.Tensor) -> torch.Tensor:
    """Entropy of a transport plan (normalized to sum 1) over log(n m), the entropy of the uniform
    plan: 1 = uniform (every pair weighted alike: moment matching, not transport); a one-to-one
    assignment of n rows to m >= n columns gives log(n) / log(n m)."""
    p = plan / plan.sum().clamp_min(1e-300)
    return -(p * torch.log(p.clamp_min(1e-300))).sum() / math.log(max(p.numel(), 2))


def ot_loss(z_src: torch.Tensor, z_tgt: torch.Tensor, reg: float = 0.05, reg_m: float = 1.0,
            a_src: torch.Tensor = None, a_tgt: torch.Tensor = None, action_weight: float = 0.0,
            cost_scale: str = "mean"):
    """OT alignment loss (Cheng et al. 2025, as the paper runs it: no pairing sampler): an
    unbalanced Sinkhorn plan between the batch's source and target features, with cost = mean
    squared feature difference (+ action_weight x mean squared action-chunk difference), the plan
    held constant; loss = sum(plan * cost) / sum(plan), the mean cost of the matched pairs (the
    unbalanced plan drops mass between far-apart pairs, so its raw sum shrinks for large shifts;
    normalized, the loss grows with the shift).
    cost_scale "mean": the plan sees cost / mean(cost), so reg and reg_m are fractions of the
    batch's mean cost and the plan pairs near neighbours whatever the features' scale; "none": the
    raw cost (reg 0.05 against costs ~0.02 gave a plan at 0.998-1.000 of the uniform plan's
    entropy: runs made before config version 3).
    Returns (loss, the plan's normalized entropy, plan_entropy); both zero when a side is empty."""
    if len(z_src) == 0 or len(z_tgt) == 0:
        zero = z_src.sum() * 0 + z_tgt.sum() * 0
        return zero, zero.detach()
    zs, zt = z_src.flatten(1).float(), z_tgt.flatten(1).float()
    C = (zs[:, None] - zt[None]).pow(2).mean(-1)
    if action_weight and a_src is not None:
        C = C + action_weight * (a_src.flatten(1)[:, None] - a_tgt.flatten(1)[None]).pow(2).mean(-1)
    with torch.no_grad():
        Cp = C.detach().double()
        if cost_scale == "mean":
            Cp = Cp / Cp.mean().clamp_min(1e-30)
        plan = unbalanced_sinkhorn(Cp, reg, reg_m)
        plan = (plan / plan.sum().clamp_min(1e-300)).to(C.dtype)
    return (plan * C).sum(), plan_entropy(plan)
