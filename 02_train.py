"""Stage 02: diffusion policy co-training with every method (paper Sec. 4, 5.1, App. C, D.3, D.4).

    python 02_train.py --method cfg_adda --ratio 0.1                 # the paper's method
    python 02_train.py --method cotrain --ratio natural              # plain concatenation
    python 02_train.py --method sim_only --out runs/train/pre        # App. D.4: pre-train on sim,
    python 02_train.py --method real_only --init-from runs/train/pre/ckpt.pt   # then fine-tune
    torchrun --nproc_per_node 4 02_train.py --profile paper --method cotrain   # data parallel

Methods (Sec. 5.1): real_only, sim_only, cotrain (Eq. 1), ot, adda, discriminate, cfg, cfg_adda;
the method table, their settings (flags --disc-weight ... --ot-action-weight: methods.MethodArgs), the
co-training objective and every loss term are in methods.py, and a new method is added there
alone: one row in methods.METHODS and one ALGO LOGIC block in methods.CoTrainObjective (its
docstring says how; tests/test_train.py adds one that way).
Guidance convention: eps = (1 + lambda) eps(o, c) - lambda eps(o, null); lambda = --guidance is
stored in the checkpoint as 03_eval.py's default (CFG: 0, CFG-ADDA: -0.5). Codebases that write
eps_u + s (eps_c - eps_u) use s = 1 + lambda.

Writes runs/train/<run>/: config.json, metrics.jsonl, ckpt.pt (latest: model, EMA, optimizer,
RNG states, step, config, normalization, dataset digests; --resume continues from it, and on CPU
a killed and resumed run ends with the same weights as an uninterrupted one), ckpt_<step>.pt
(EMA-only snapshots every --snapshot-every steps, for App. D.4's "best along training").
"""
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

import common
import diffusion_policy
import methods
import tasks
from common import UsageError, die
from diffusion_policy import ModelConfig
from methods import METHODS, CoTrainObjective  # Sec. 5.1
from train_config import MODEL_FLAGS, MODEL_KEYS, PROFILES, RESUME_FREE, Args, data_keys, data_paths, run_name


# ----------------------------------------------------------------------------------------------
# checks and data
# ----------------------------------------------------------------------------------------------
def check_args(a: Args):
    methods.check_method_args(a)
    if a.out:  # before the data load (the default folder is known after it)
        common.check_writable(a.out)
    if a.task not in tasks.TASK_NAMES:  # also with --target-data/--source-data: the run records it
        raise UsageError(f"unknown --task {a.task!r}; choose from {', '.join(tasks.TASK_NAMES)}")
    if a.target_domain not in tasks.DOMAIN_NAMES[1:] + tasks.PART_DOMAINS:
        raise UsageError(f"unknown --target-domain {a.target_domain!r}; choose from "
                         f"{', '.join(tasks.DOMAIN_NAMES[1:] + tasks.PART_DOMAINS)}")
    if a.vision_pool not in ("avg", "spatial_softmax"):
        raise UsageError(f"unknown --vision-pool {a.vision_pool!r}; choose from avg, spatial_softmax")
    if a.arch not in diffusion_policy.ARCHS:
        raise UsageError(f"unknown --arch {a.arch!r}; choose from {', '.join(diffusion_policy.ARCHS)}")
    for name in ("steps", "batch_size", "n_obs", "horizon", "n_action", "T", "sample_steps"):
        if getattr(a, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if a.n_action > a.horizon:
        raise UsageError(f"--n-action ({a.n_action}) cannot exceed --horizon ({a.horizon})")
    if a.action_space not in common.ACTION_SPACES:
        raise UsageError(f"--action-space must be one of {', '.join(common.ACTION_SPACES)}, got {a.action_space!r}")
    if a.resume and a.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")


def load_data(a: Args):
    """Both datasets (the source set also serves real_only: actions and observations are
    normalized over the union of both, so every method sees the same normalization)."""
    tgt_path, src_path = data_paths(a)
    for p in (tgt_path, src_path):
        if not os.path.isfile(p):
            make = (f"01_generate_data.py --profile {a.profile} --workers 2 writes the image copies "
                    f"(*{a.image_suffix}.hdf5)" if a.images else "make it with `make data` or 01_generate_data.py")
            raise UsageError(f"dataset not found: {p} ({make}; or name it with --target-data/--source-data)")
    lowdim_keys, image_keys, action_key = data_keys(a, tgt_path)
    for p in (tgt_path, src_path):  # every stored key the observation needs, derived keys resolved
        stored = set(common.stored_keys_of(p))
        missing = sorted({s for k in lowdim_keys + image_keys for s in common.derived_sources(k)} - stored)
        if missing:
            raise UsageError(f"observation keys {missing} are not in {p} (it has {sorted(stored)})")
    sets = []
    for p in (tgt_path, src_path):
        sets.append(common.load_demos(p, lowdim_keys + image_keys, a.n_obs, a.horizon,
                                      action_key=action_key, max_demos=a.max_demos))
    target, source = sets
    for k in lowdim_keys + image_keys:
        if target.obs[k].shape[1:] != source.obs[k].shape[1:]:
            raise UsageError(f"datasets have mismatched observation '{k}': {target.obs[k].shape[1:]} "
                             f"in {tgt_path} vs {source.obs[k].shape[1:]} in {src_path}")
    if target.actions.shape[1] != source.actions.shape[1]:
        raise UsageError(f"datasets have mismatched action dims: {target.actions.shape[1]} vs "
                         f"{source.actions.shape[1]}")
    framings = [common.camera_framing(p) for p in (tgt_path, src_path)] if image_keys else []
    if len(set(framings)) > 1:
        raise UsageError(f"datasets' frames were rendered with different camera framings: "
                         f"{framings[0]} in {tgt_path} vs {framings[1]} in {src_path}")
    if a.action_space == "rel" and "robot0_joint_pos" not in lowdim_keys:
        raise UsageError("--action-space rel measures actions from robot0_joint_pos: add it to --obs-keys")
    return target, source, lowdim_keys, image_keys


def mixing_ratio(a: Args, target, source) -> float:
    """w = P(target sample) of Eq. 1: fixed by the method (real_only 1, sim_only 0) or --ratio."""
    fixed = METHODS[a.method].ratio
    return fixed if fixed is not None else common.resolve_ratio(a.ratio, target.num_demos, source.num_demos)


def model_config(a: Args, target, lowdim_keys, image_keys) -> dict:
    """The network's settings (diffusion_policy.ModelConfig): the model flags, and what the data
    and the method fix."""
    return ModelConfig(**{k: getattr(a, k) for k in MODEL_FLAGS}, crop=a.crop if image_keys else 0,
                       image_keys=list(image_keys), lowdim_keys=list(lowdim_keys),
                       lowdim_dims={k: int(target.obs[k].shape[-1]) for k in lowdim_keys},
                       action_dim=int(target.actions.shape[1]), use_label=METHODS[a.method].label,
                       image_size=int(target.obs[image_keys[0]].shape[-2]) if image_keys else 0,
                       framing=common.camera_framing(data_paths(a)[0]) if image_keys else "wide").to_dict()


def run_config(a: Args, w: float, target, source, lowdim_keys, image_keys) -> dict:
    """Everything that defines the run (stored in config.json and in every checkpoint)."""
    guidance = methods.default_guidance(a)
    return {"version": common.CONFIG_VERSION, "args": asdict(a),
            "model": model_config(a, target, lowdim_keys, image_keys), "mixing_ratio": w, "guidance_scale": guidance,
            "data": {name: {"path": ds.path, "digest": ds.digest, "num_demos": ds.num_demos,
                            "num_windows": len(ds), **ds.attrs}
                     for name, ds in (("target", target), ("source", source))}}


# ----------------------------------------------------------------------------------------------
# training: the helpers train() calls, in the order it calls them
# ----------------------------------------------------------------------------------------------
RESUME_HINT = "--resume to continue it, --overwrite to start over, or another --out"


def relative_chunks(ds, key: str = "robot0_joint_pos") -> np.ndarray:
    """Every window's action chunk (N, horizon, A) minus the window's current `key` value (the
    joint positions at its last observed step) on the first dims, the gripper left absolute: the
    targets of a relative-action policy (DiffusionPolicy.action_origin), for fitting its normalizer."""
    q = ds.obs[key][ds.obs_index[:, -1]]
    chunks = ds.actions[ds.act_index].copy()
    chunks[..., :q.shape[-1]] -= q[:, None]
    return chunks


def get_lr(step: int, lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to min_lr (nanoGPT's get_lr; Diffusion Policy's schedule)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (lr - min_lr)


def setup_distributed(a: Args):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: one process per GPU, gradients all-reduced.
    Returns (world size, rank, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = 0, 0
    if world > 1:
        import torch.distributed as dist  # noqa: PLC0415 (optional: only under torchrun)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, local_rank = dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if a.batch_size % world:
        raise UsageError(f"--batch-size {a.batch_size} is not divisible by {world} processes")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return world, rank, device


def checkpoint_to_resume(a: Args, out: str, config: dict, world: int):
    """The run's own checkpoint if --resume may continue it, None for a fresh run; UsageError if
    the folder holds a run and neither --resume nor --overwrite was given, or its settings differ."""
    ckpt_path = os.path.join(out, "ckpt.pt")
    if not os.path.exists(ckpt_path) or a.overwrite:
        return None
    if not a.resume:
        raise UsageError(f"{out} holds a run already: {RESUME_HINT}")
    ck = common.load_checkpoint(ckpt_path)
    old = ck["config"]
    common.check_same_settings(
        {**old["args"], **{f"data.{k}.digest": old["data"][k]["digest"] for k in ("target", "source")}},
        {**config["args"], **{f"data.{k}.digest": config["data"][k]["digest"] for k in ("target", "source")}},
        f"--resume: {ckpt_path}", free=RESUME_FREE | methods.unused_settings(a.method), hint=RESUME_HINT)
    if len(ck["rng"]) != world and not (ck.get("final") and ck["step"] >= a.steps):
        raise UsageError(f"--resume: {ckpt_path} was made by {len(ck['rng'])} process(es), this run has {world}")
    return ck


def checkpoint_to_init_from(a: Args, mcfg: dict):
    """App. D.4 fine-tuning: the --init-from checkpoint, which must have this run's architecture."""
    if not a.init_from:
        return None
    ck = common.load_checkpoint(a.init_from)
    have = ck["config"]["model"]  # upgraded by load_checkpoint (settings added later, at their old values)
    bad = [f"{k}: {have.get(k)} vs {mcfg[k]}" for k in MODEL_KEYS if have.get(k) != mcfg[k]]
    if bad:
        raise UsageError(f"--init-from {a.init_from}: checkpoint from a different architecture ({'; '.join(bad)})")
    return ck


def build_model(a: Args, config: dict, target, source, init_ck, rank: int, device):
    """The policy (normalizer fitted on both datasets; --init-from's EMA weights), the objective
    (policy + the method's extra modules), its EMA copy, AdamW and the two random streams."""
    common.seed_everything(a.seed + rank, deterministic=device.type == "cpu")
    policy = diffusion_policy.DiffusionPolicy(config["model"])
    lowdim_keys = config["model"]["lowdim_keys"]
    acts = [target.actions, source.actions] if a.action_space != "rel" else \
        [relative_chunks(ds).reshape(-1, target.actions.shape[1]) for ds in (target, source)]
    policy.normalizer.fit({**{k: np.concatenate([target.obs[k], source.obs[k]]) for k in lowdim_keys},
                           "actions": np.concatenate(acts)})
    if init_ck is not None:
        policy.load_state_dict(init_ck["ema"])
    objective = CoTrainObjective(policy, a).to(device)
    ema = copy.deepcopy(policy).requires_grad_(False).eval()
    if a.compile:  # the trained copy only; the EMA copy (what is saved and evaluated) stays plain
        diffusion_policy.speed_up(policy)
    decay, no_decay = [], []
    for n, p in objective.named_parameters():
        (decay if p.dim() >= 2 and "pos" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.95, 0.999))
    gens = {"sampler": torch.Generator().manual_seed(a.seed * 1000 + rank),
            "noise": torch.Generator().manual_seed(a.seed * 1000 + 500 + rank)}
    return policy, objective, ema, opt, gens


def rng_states(gens: dict) -> dict:
    out = {k: g.get_state() for k, g in gens.items()}
    out["torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(gens: dict, states: dict):
    for k, g in gens.items():
        g.set_state(states[k])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def restore(ck: dict, objective, ema, opt, gens: dict, rank: int) -> int:
    """Load a --resume checkpoint into the training state; returns its step."""
    objective.load_state_dict(ck["objective"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["optimizer"])
    set_rng_states(gens, ck["rng"][rank])  # one entry per process
    return ck["step"]


def prepare_run_folder(a: Args, out: str, config: dict, step: int):
    """Written only once every check has passed: --overwrite clears the old run's files,
    config.json, and metrics.jsonl cut back to the resumed step. Returns a TensorBoard writer or None."""
    if a.overwrite and os.path.isdir(out):
        for f in os.listdir(out):
            if f.startswith("ckpt") or f in ("metrics.jsonl", "config.json") or f.startswith("events."):
                os.remove(os.path.join(out, f))
    os.makedirs(out, exist_ok=True)
    common.write_json(os.path.join(out, "config.json"), config)
    keep_metrics_until(os.path.join(out, "metrics.jsonl"), step)
    return tensorboard_writer(out, config)


def keep_metrics_until(path: str, step: int):
    """On resume, drop metrics lines logged after the checkpoint (they will be logged again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [r for r in f if r.strip() and json.loads(r)["step"] <= step]
    common.write_text(path, "".join(rows))


def tensorboard_writer(out: str, config: dict):
    """TensorBoard logging if the package is installed (not a requirement), hparams as text."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional: tensorboard is not a dependency)
    except Exception:
        return None
    tb = SummaryWriter(out)
    tb.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                "\n".join(f"|{k}|{v}|" for k, v in config["args"].items()))
    return tb


def to_device(batch: dict, device) -> dict:
    return {"obs": {k: v.to(device, non_blocking=True) for k, v in batch["obs"].items()},
            "actions": batch["actions"].to(device, non_blocking=True),
            "domain": batch["domain"].to(device, non_blocking=True)}


def new_interval() -> dict:
    """Accumulators between two metrics lines; wall time counts everything (data, model,
    logging, checkpoints), model time only forward + backward + optimizer + EMA."""
    return {"t_start": time.perf_counter(), "t_model": 0.0, "n": 0, "n_target": 0, "terms": {}, "count": {}}


def log_metrics(acc: dict, step: int, lr: float, local_batch: int, world: int, path, tb) -> dict:
    """One metrics line (losses and the target fraction of this process's batches); a term is the
    mean over the steps that had it (the discriminator's start after its warm-up)."""
    n = max(acc["n"], 1)
    wall = max(time.perf_counter() - acc["t_start"], 1e-9)
    row = {"step": step, **{k: float(v) / acc["count"][k] for k, v in acc["terms"].items()}, "lr": lr,
           "target_fraction": acc["n_target"] / (n * local_batch),
           "samples_per_s": acc["n"] * local_batch * world / wall,
           "frac_outside_model": max(0.0, 1 - acc["t_model"] / wall)}
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    if tb is not None:
        for k, v in row.items():
            if k != "step":
                tb.add_scalar(k, v, step)
    return row


def save_training_state(path: str, objective, ema, opt, step: int, config: dict, gens: dict,
                        world: int, main_proc: bool, final: bool = False):
    """ckpt.pt: everything --resume needs, with every process's sampler and noise streams."""
    rng = [rng_states(gens)]
    if world > 1:
        rng = [None] * world
        torch.distributed.all_gather_object(rng, rng_states(gens))
    if main_proc:
        common.save_checkpoint({"objective": objective.state_dict(), "ema": ema.state_dict(),
                                "optimizer": opt.state_dict(), "step": step, "config": config,
                                "rng": rng, "final": final}, path)


def save_snapshot(out: str, ema, step: int, config: dict):
    """ckpt_<step>.pt: the EMA weights only (App. D.4's "best along training"; 03_eval.py loads it)."""
    common.save_checkpoint({"ema": ema.state_dict(), "step": step, "config": config, "final": False},
                           os.path.join(out, f"ckpt_{step:07d}.pt"))


# ----------------------------------------------------------------------------------------------
# train(): arguments -> data -> resume or refuse -> model and optimizer -> run folder -> loop -> save
# ----------------------------------------------------------------------------------------------
def train(a: Args):
    # arguments
    check_args(a)
    world, rank, device = setup_distributed(a)
    main_proc = rank == 0

    # data, ratio, configuration: everything is checked before anything is written
    target, source, lowdim_keys, image_keys = load_data(a)
    w = mixing_ratio(a, target, source)
    config = run_config(a, w, target, source, lowdim_keys, image_keys)
    config["device"] = str(device)
    config["machine"] = common.machine()  # the CPU it trained on (cli.machine)
    out = a.out or os.path.join("runs", "train", run_name(a, w))
    common.check_writable(out)
    ckpt_path = os.path.join(out, "ckpt.pt")
    if main_proc:
        print(f"{out}: profile {a.profile}, {a.method} w={w:.3g}, {a.steps} steps x {a.batch_size}, "
              f"{a.arch} d_model {a.d_model} x {a.n_layers} layers, "
              f"{'images ' + ','.join(image_keys) if image_keys else 'low-dim ' + a.obs_set} obs, {a.action_space} "
              f"actions, device {device}, {torch.get_num_threads()} torch threads (--print-config: all settings)")
        if a.images and device.type == "cpu" and a.profile == "paper":
            print("warning: --profile paper is the GPU setting (2 cameras at 84 px, ResNet18 per camera, batch "
                  "256): ~75 s a step and ~6 GB on a 2-core CPU, ~550 MB checkpoints; on a CPU use --profile cpu "
                  "(low-dim) or cpu_img (one 64-px camera)", file=sys.stderr)

    # resume or refuse; --init-from
    resume_ck = checkpoint_to_resume(a, out, config, world)
    if resume_ck is not None and resume_ck.get("final") and resume_ck["step"] >= a.steps:
        if main_proc:
            print(f"{out}: finished at step {resume_ck['step']}, nothing to do")
        if world > 1:
            torch.distributed.destroy_process_group()
        return out
    init_ck = checkpoint_to_init_from(a, config["model"])

    # model, EMA, optimizer, random streams (restored on --resume)
    policy, objective, ema, opt, gens = build_model(a, config, target, source, init_ck, rank, device)
    step = restore(resume_ck, objective, ema, opt, gens, rank) if resume_ck is not None else 0
    model = objective
    if world > 1:  # a discriminator that waits out its warm-up gets no gradient until then
        late_disc = bool(METHODS[a.method].disc) and not a.disc_during_warmup
        model = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=late_disc)
    metrics_path = os.path.join(out, "metrics.jsonl") if main_proc else None
    tb = prepare_run_folder(a, out, config, step) if main_proc else None

    # the loop
    local_batch = a.batch_size // world
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)
    bar = tqdm(total=a.steps, initial=step, desc=f"train {a.method} w={w:.3g}", disable=not main_proc,
               dynamic_ncols=True)
    acc = new_interval()
    objective.train()
    while step < a.steps:
        batch = to_device(common.sample_cotrain_batch(target, source, w, local_batch, gens["sampler"]), device)
        lr = get_lr(step, a.lr, a.warmup, a.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        t1 = time.perf_counter()
        with amp:
            terms = model(batch, step, gens["noise"])
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(objective.parameters(), a.grad_clip)
        opt.step()
        common.ema_update(ema.parameters(), policy.parameters(), common.ema_decay(step, a.ema_power, a.ema_max))
        step += 1
        acc["t_model"] += time.perf_counter() - t1
        acc["n"] += 1
        acc["n_target"] += int((batch["domain"] == methods.TARGET).sum())
        for k, v in terms.items():
            acc["terms"][k] = acc["terms"].get(k, 0.0) + v.detach().float()
            acc["count"][k] = acc["count"].get(k, 0) + 1
        if step % a.log_every == 0 or step == a.steps:
            row = log_metrics(acc, step, lr, local_batch, world, metrics_path, tb)
            bar.set_postfix(loss=f"{row['loss']:.4f}", sps=f"{row['samples_per_s']:.0f}")
            if a.verbose and main_proc:
                tqdm.write(json.dumps(row))
            acc = new_interval()
        if a.snapshot_every and step % a.snapshot_every == 0 and main_proc:
            save_snapshot(out, ema, step, config)
        if step % a.save_every == 0 and step < a.steps:
            save_training_state(ckpt_path, objective, ema, opt, step, config, gens, world, main_proc)
        bar.update(1)
    bar.close()

    # save
    save_training_state(ckpt_path, objective, ema, opt, step, config, gens, world, main_proc, final=True)
    if tb is not None:
        tb.close()
    if main_proc:
        print(f"done: {ckpt_path} (step {step}, mixing ratio {w:.4g})")
    if world > 1:
        torch.distributed.destroy_process_group()
    return out


def main(argv=None):
    a = common.parse_args(Args, PROFILES, argv, description=__doc__, check=check_args)
    try:
        train(a)
    except UsageError as e:
        die(str(e))


if __name__ == "__main__":
    main()
