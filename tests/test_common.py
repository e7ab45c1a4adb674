"""Unit tests of common.py: diffusion core, CFG, mixing-ratio sampler and guideline, ANOVA."""
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields

import numpy as np
import pytest
import torch

import common
import diffusion_policy
import methods
from conftest import ROOT, run_stage


# --- noise schedule --------------------------------------------------------------------------
def test_squaredcos_schedule_matches_closed_form():
    T = 100
    sched = common.NoiseSchedule.make(T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = sched.betas.numpy()
    assert betas.shape == (T,)
    assert np.all(betas > 0) and np.all(betas <= 0.999)
    assert np.all(np.diff(sched.alphas_cumprod.numpy()) < 0)
    # where no beta is capped, prod(1 - beta) telescopes to f(t + 1) / f(0)
    for t in (0, 10, 50, 90):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert betas[-1] == pytest.approx(0.999)  # the cap of squaredcos_cap_v2


def test_add_noise_endpoints():
    sched = common.NoiseSchedule.make(100)
    x0 = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 20, 50, 99])
    out = sched.add_noise(x0, torch.zeros_like(x0), t)
    assert torch.allclose(out, sched.alphas_cumprod[t].sqrt()[:, None] * x0)
    eps = torch.randn_like(x0)
    out = sched.add_noise(torch.zeros_like(x0), eps, t)
    assert torch.allclose(out, (1 - sched.alphas_cumprod[t]).sqrt()[:, None] * eps)


def test_ddpm_loss_oracle_is_zero_and_zero_model_is_one():
    sched = common.NoiseSchedule.make(100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4096, 2)  # data at the origin: x_t = sqrt(1 - abar) eps exactly
    oracle = lambda x_t, t, c: x_t / (1 - sched.alphas_cumprod.float()[t]).sqrt()[:, None]
    assert common.ddpm_loss(oracle, x0, None, sched, g).item() < 1e-10
    zero = lambda x_t, t, c: torch.zeros_like(x_t)
    assert common.ddpm_loss(zero, x0, None, sched, g).item() == pytest.approx(1.0, abs=0.05)
    per = common.ddpm_loss(zero, torch.zeros(3, 7, 2), None, sched, g, reduce=False)
    assert per.shape == (3, 7)


def test_ddim_timesteps():
    assert common.ddim_timesteps(100, 10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert common.ddim_timesteps(100, 100) == list(range(99, -1, -1))
    with pytest.raises(ValueError):
        common.ddim_timesteps(100, 0)


def two_mode_eps(sched):
    """Exact eps for data 0.5 * delta(-1) + 0.5 * delta(+1): eps = (x - sqrt(abar) E[x0|x]) / sqrt(1-abar)."""
    def eps_fn(x, t):
        a = sched.alphas_cumprod.float()[t].unsqueeze(-1)
        logit = 2 * a.sqrt() * x / (1 - a)  # log p(x | +1) - log p(x | -1)
        x0 = torch.tanh(logit / 2)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return eps_fn


def assert_two_modes(x, tol=0.15, share=0.95):
    x = x.flatten()
    near = (x - x.sign()).abs() < tol
    assert near.float().mean() > share, "samples should sit on the modes at -1 and +1"
    frac_pos = (x > 0).float().mean().item()
    assert 0.4 < frac_pos < 0.6, f"both modes should be recovered, got {frac_pos:.2f} at +1"


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samplers_with_exact_denoiser_recover_both_modes(sampler):
    sched = common.NoiseSchedule.make(100)
    g = torch.Generator().manual_seed(0)
    if sampler == "ddpm":
        x = common.ddpm_sample(two_mode_eps(sched), (2000, 1), sched, g)
    else:
        x = common.ddim_sample(two_mode_eps(sched), (2000, 1), sched, 10, g)
    assert_two_modes(x)


def test_samplers_with_trained_denoiser_recover_both_modes():
    """Train a small MLP on 1-D two-mode data, then DDPM (100 steps) and DDIM (10) sample it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sched = common.NoiseSchedule.make(100)
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Mish(), torch.nn.Linear(64, 64),
                              torch.nn.Mish(), torch.nn.Linear(64, 1))
    model = lambda x_t, t, c: net(torch.cat([x_t, (t.float() / 100).unsqueeze(-1)], -1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(1500):
        x0 = torch.where(torch.rand(256, 1, generator=g) < 0.5, -1.0, 1.0)
        loss = common.ddpm_loss(model, x0, None, sched, g)
        opt.zero_grad(); loss.backward(); opt.step()
    eps_fn = lambda x, t: model(x, t, None)
    with torch.no_grad():
        assert_two_modes(common.ddpm_sample(eps_fn, (1000, 1), sched, g, clip=1.0), 0.25, 0.9)
        assert_two_modes(common.ddim_sample(eps_fn, (1000, 1), sched, 10, g, clip=1.0), 0.25, 0.9)


def test_ddim_eta0_is_deterministic_given_noise():
    sched = common.NoiseSchedule.make(100)
    a = common.ddim_sample(two_mode_eps(sched), (50, 1), sched, 10, torch.Generator().manual_seed(3))
    b = common.ddim_sample(two_mode_eps(sched), (50, 1), sched, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# --- CFG -------------------------------------------------------------------------------------
def test_cfg_combine():
    c, u = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(common.cfg_combine(c, u, 0.0), c)
    assert torch.allclose(common.cfg_combine(c, u, -1.0), u)
    assert torch.allclose(common.cfg_combine(c, u, 1.0), 2 * c - u)
    assert torch.allclose(common.cfg_combine(c, u, -0.5), 0.5 * c + 0.5 * u)


# --- EMA -------------------------------------------------------------------------------------
def test_ema_update_and_decay():
    e, p = [torch.zeros(3)], [torch.ones(3)]
    common.ema_update(e, p, 0.75)
    assert torch.allclose(e[0], torch.full((3,), 0.25))
    common.ema_update(e, p, 0.0)
    assert torch.allclose(e[0], p[0])
    assert common.ema_decay(0) == 0.0
    assert 0.99 < common.ema_decay(10_000) < 0.9999 + 1e-12


# --- the guideline (App. B.3, D.5) -----------------------------------------------------------
def test_guideline_numbers():
    assert common.natural_ratio(50, 3000) == pytest.approx(50 / 3050)
    w_n, w_q = common.balanced_ratio_range(50, 3000)
    assert w_n == pytest.approx(0.0164, abs=1e-4)
    assert w_q == pytest.approx(0.129, abs=1e-3)
    # M/N = 10 > 5: sqrt(N/M)
    assert common.balanced_ratio_range(50, 500)[1] == pytest.approx(math.sqrt(0.1))
    assert common.balanced_ratio_range(10, 3000)[1] == pytest.approx(math.sqrt(10 / 3000))
    # M/N = 2 <= 5: N q / ((1 - q) M + N q) with q = 0.8
    assert common.balanced_ratio_range(50, 100)[1] == pytest.approx(40 / 60)
    assert common.balanced_ratio_range(50, 100, cap=0.5)[1] == 0.5
    for n, m in [(10, 3000), (50, 500), (50, 100), (50, 3000)]:
        lo, hi = common.balanced_ratio_range(n, m)
        assert 0 < lo < hi < 1
    with pytest.raises(common.UsageError):
        common.natural_ratio(0, 10)


def test_resolve_ratio():
    assert common.resolve_ratio("natural", 50, 3000) == pytest.approx(50 / 3050)
    lo, hi = common.balanced_ratio_range(50, 3000)
    assert common.resolve_ratio("auto", 50, 3000) == pytest.approx(math.sqrt(lo * hi))
    assert common.resolve_ratio("0.3", 50, 3000) == 0.3
    assert common.resolve_ratio(1, 50, 3000) == 1.0
    for bad in ("1.5", "-0.1", "abc", "nan"):
        with pytest.raises(common.UsageError):
            common.resolve_ratio(bad, 50, 3000)


# --- seeding and argument parsing ------------------------------------------------------------
def test_seed_everything_reproducible():
    common.seed_everything(5)
    a = (torch.rand(3), np.random.rand(3))
    common.seed_everything(5)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_parse_args_profiles_and_flags(toy):
    a = common.parse_args(toy.Args, toy.PROFILES, ["--profile", "smoke", "--seeds", "3,4", "--lr", "0.01"])
    assert a.profile == "smoke" and a.seeds == [3, 4] and a.lr == 0.01
    assert a.d_values == toy.PROFILES["smoke"]["d_values"]
    a = common.parse_args(toy.Args, toy.PROFILES, ["--no-ema"])
    assert a.profile == "cpu" and a.ema is False and a.train_steps == toy.Args().train_steps
    with pytest.raises(SystemExit) as e:
        common.parse_args(toy.Args, toy.PROFILES, ["--lr", "fast"])
    assert e.value.code == 2


# --- co-training losses (issue 5) --------------------------------------------------------------
def test_gradient_reversal_flips_the_encoders_gradient_only():
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 6)
    disc = methods.Discriminator(6, hidden=8)
    x = torch.randn(32, 4)
    domain = torch.randint(0, 2, (32,))
    grads = {}
    for reverse in (False, True):
        enc.zero_grad(); disc.zero_grad()
        loss, acc = methods.discriminator_loss(disc, enc(x), domain, reverse=reverse)
        loss.backward()
        grads[reverse] = ([p.grad.clone() for p in enc.parameters()],
                          [p.grad.clone() for p in disc.parameters()])
        assert 0 <= acc.item() <= 1
    for g_plain, g_rev in zip(grads[False][0], grads[True][0]):
        assert g_plain.abs().sum() > 0
        assert torch.allclose(g_rev, -g_plain)  # the encoder is pushed to fool the discriminator
    for g_plain, g_rev in zip(grads[False][1], grads[True][1]):
        assert torch.allclose(g_rev, g_plain)  # the discriminator itself learns as usual
    x = torch.randn(3, requires_grad=True)
    methods.grad_reverse(x, 0.5).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), -0.5))


def test_cfg_null_label_is_used_at_the_drop_rate():
    g = torch.Generator().manual_seed(0)
    domain = torch.randint(0, 2, (200_000,), generator=g)
    for p in (0.0, 0.2, 0.5, 1.0):
        out = methods.drop_labels(domain, p, g)
        dropped = out == methods.NULL_LABEL
        assert dropped.float().mean().item() == pytest.approx(p, abs=0.005)
        assert torch.equal(out[~dropped], domain[~dropped])


def test_ot_loss_zero_for_identical_batches_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g)
    losses = [methods.ot_loss(z + s, z)[0].item() for s in (0.25, 0.5, 1.0, 2.0)]
    # zero up to the entropic blur of the plan (off-diagonal mass ~ exp(-cost / reg), reg 5 % of
    # the mean cost: near neighbours keep a little)
    assert methods.ot_loss(z, z.clone())[0].item() < 0.05 * losses[0]
    assert methods.ot_loss(z, z.clone(), cost_scale="none")[0].item() < 1e-3 * losses[0]
    assert all(b > a for a, b in zip(losses, losses[1:])) and losses[0] > 1e-3
    assert methods.ot_loss(z[:0], z)[0].item() == 0.0  # no source sample in the batch
    # the plan is held constant: the gradient is sum(plan * dC/dz), pulling source toward target
    zs = (z + 1.0).requires_grad_(True)
    methods.ot_loss(zs, z)[0].backward()
    assert (zs.grad > 0).float().mean() > 0.9


def ot_plan(zs, zt, scale):
    """The normalized plan ot_loss holds constant, and ot_loss's entropy of it."""
    C = (zs[:, None] - zt[None]).pow(2).mean(-1).double()
    Cp = C / C.mean() if scale == "mean" else C
    P = methods.unbalanced_sinkhorn(Cp, 0.05, 1.0)
    return P / P.sum(), methods.ot_loss(zs, zt, cost_scale=scale)[1].item()


def test_ot_plan_transports_instead_of_averaging():
    """Issue 44: with the cost scaled to the batch, the plan pairs each source point with its true
    partner (a shuffled, slightly moved and shifted copy of the target batch) and its entropy is
    near a one-to-one assignment's; on the raw cost of features at the trunk's scale (mean cost
    ~0.02, reg 0.05) it is ~uniform, which is what runs before config version 3 trained with."""
    g = torch.Generator().manual_seed(0)
    zt = 0.15 * torch.randn(24, 32, generator=g)          # trunk-like scale: mean cost ~0.05
    perm = torch.randperm(24, generator=g)
    zs = zt[perm] + 0.01 * torch.randn(24, 32, generator=g) + 0.02  # source i <-> target perm[i]
    plan, H = ot_plan(zs, zt, "mean")
    assert torch.equal(plan.argmax(1), perm)
    assert plan.max(1).values.sum() > 0.9  # > 90 % of the mass on the true pairs
    one_to_one = math.log(24) / math.log(24 * 24)  # 0.5
    assert H < one_to_one + 0.1 and H == pytest.approx(methods.plan_entropy(plan).item(), abs=1e-6)
    _, H_raw = ot_plan(zs, zt, "none")
    assert H_raw > 0.99  # the uniform plan's entropy is 1
    assert methods.plan_entropy(torch.ones(5, 7)).item() == pytest.approx(1.0)
    # a shifted cloud: the plan is far from uniform whatever the features' scale
    for s in (0.01, 1.0, 100.0):
        z = s * torch.randn(64, 16, generator=g)
        assert ot_plan(z + 0.5 * s, z, "mean")[1] < 0.85


def test_unbalanced_sinkhorn_plan_matches_marginals_when_relaxation_is_strong():
    C = torch.rand(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    P = methods.unbalanced_sinkhorn(C, reg=0.1, reg_m=1e4, iters=2000)
    assert torch.allclose(P.sum(1), torch.full((5,), 1 / 5, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(P.sum(0), torch.full((7,), 1 / 7, dtype=torch.float64), atol=1e-3)


def test_mixed_batch_counts_exact_in_expectation():
    g = torch.Generator().manual_seed(0)
    for w, B in ((0.0, 256), (1.0, 256), (0.5, 256), (0.016, 256), (0.1, 128)):
        n = np.array([common.mixed_batch_counts(w, B, g) for _ in range(20000)])
        assert set(np.unique(n)) <= {math.floor(w * B), math.ceil(w * B)}
        assert n.mean() == pytest.approx(w * B, abs=0.02)
    with pytest.raises(common.UsageError):
        common.mixed_batch_counts(1.5, 8, g)


# --- policy networks ----------------------------------------------------------------------------
def small_policy_cfg(**kw):
    cfg = dict(arch="encdec", n_obs=2, horizon=8, n_action=4, d_feat=16, d_model=16, n_heads=2,
               n_layers=1, n_cond_layers=1, dropout=0.0, unet_dims=[16, 32], resnet_width=8,
               vision_dim=8, crop=0, T=100, sample_steps=5, image_keys=[],
               lowdim_keys=["a", "b"], lowdim_dims={"a": 3, "b": 2}, action_dim=4, use_label=False)
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("arch", ["encdec", "dec", "unet"])
def test_denoisers_map_chunks_to_chunks(arch):
    torch.manual_seed(0)
    pol = diffusion_policy.DiffusionPolicy(small_policy_cfg(arch=arch, use_label=True))
    obs = {"a": torch.randn(5, 2, 3), "b": torch.randn(5, 2, 2)}
    stem, z = pol.encode(obs)
    assert stem.shape == (5, 2, 5) and z.shape == (5, 2, 16)
    cond = pol.condition(z, torch.tensor([0, 1, -1, 0, 1]))
    assert cond.shape == (5, 2, 18)
    assert torch.equal(cond[2, :, 16:], torch.zeros(2, 2))  # the null label is all zeros
    assert torch.equal(cond[1, 0, 16:], torch.tensor([0.0, 1.0]))
    loss = pol.diffusion_loss(torch.randn(5, 8, 4), cond)
    assert loss.shape == (5,)
    a = pol.predict_action(obs, guidance_scale=-0.5, sample_steps=3,
                           generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 8, 4) and torch.isfinite(a).all()


def test_guidance_combines_conditional_and_null_predictions():
    torch.manual_seed(0)
    pol = diffusion_policy.DiffusionPolicy(small_policy_cfg(use_label=True)).eval()
    obs = {"a": torch.randn(3, 2, 3), "b": torch.randn(3, 2, 2)}
    run = lambda lam, label=0: pol.predict_action(obs, label=label, guidance_scale=lam, sample_steps=1,
                                                  generator=torch.Generator().manual_seed(1))
    # with one DDIM step the output is linear in eps, so the guided chunk is the CFG mix
    a0, a_null, a_g = run(0.0), run(0.0, methods.NULL_LABEL), run(-0.5)
    assert not torch.allclose(a0, a_null)
    assert torch.allclose(a_g, 0.5 * a0 + 0.5 * a_null, atol=1e-4)


def test_agent_executes_the_nearest_gripper_command():
    """robosuite's gripper moves by sign(command): a near-0 output must become the demos' 0
    (hold) where the demos use it (MugCleanup), and stay on its side of 0 where they use -1 / 1."""
    pol = diffusion_policy.DiffusionPolicy(small_policy_cfg()).eval()
    obs = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}

    def first_actions(levels, gripper):
        agent = diffusion_policy.PolicyAgent(pol, 0, None, 2, gripper_levels=levels)
        agent.predict = lambda history: np.tile(np.array([0.3, -0.2, 0.1, gripper], np.float32), (8, 1))
        return agent.act(obs)

    assert first_actions(None, -0.04)[-1] == pytest.approx(-0.04)  # as predicted
    assert first_actions((-1.0, 0.0, 1.0), -0.04)[-1] == 0.0
    assert first_actions((-1.0, 0.0, 1.0), 0.7)[-1] == 1.0
    for g in (-0.04, 0.3, 0.9):  # two levels: the side of 0 (what the gripper integrates) is kept
        assert np.sign(first_actions((-1.0, 1.0), g)[-1]) == np.sign(g)
    assert first_actions((-1.0, 0.0, 1.0), 0.2)[:3] == pytest.approx([0.3, -0.2, 0.1])  # arm untouched


def test_resnet18gn_and_crops():
    net = diffusion_policy.ResNet18GN(width=8, out_dim=10)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).reshape(2, 3, 10, 10)
    c = diffusion_policy.random_crop(x, 6, torch.Generator().manual_seed(0))
    assert c.shape == (2, 3, 6, 6)
    for n in range(2):  # every crop is a contiguous window of its own image
        i, j = divmod(int(c[n, 0, 0, 0].item()) - n * 300, 10)
        assert torch.equal(c[n], x[n, :, i:i + 6, j:j + 6])
    assert torch.equal(diffusion_policy.center_crop(x, 6), x[..., 2:8, 2:8])


def test_spatial_softmax_returns_the_expected_keypoint_position():
    """A feature map with one hot cell: each keypoint's softmax concentrates there as the
    temperature drops, and its (x, y) is the cell's position in [-1, 1]."""
    pool = diffusion_policy.SpatialSoftmax(cin=1, num_kp=2)
    with torch.no_grad():
        pool.kp.weight.fill_(1.0)
        pool.kp.bias.zero_()
        pool.log_temperature.fill_(-5.0)  # temperature 0.007: a hard argmax
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 4] = 1.0  # row 1 (y = -0.5), column 4 (x = 1)
    assert pool(x).flatten().tolist() == pytest.approx([1.0, -0.5, 1.0, -0.5], abs=1e-3)
    net = diffusion_policy.ResNet18GN(width=8, out_dim=10, pool="spatial_softmax")
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10) and net.proj.in_features == 64
    with pytest.raises(ValueError, match="pool"):
        diffusion_policy.ResNet18GN(width=8, out_dim=10, pool="max")


def test_normalizer_maps_union_to_unit_box_and_back():
    x = np.random.default_rng(0).normal(3, 2, (500, 4)).astype(np.float32)
    x[:, 3] = 1.5  # a constant dim is only centred
    norm = common.Normalizer({"k": 4}).fit({"k": x})
    y = norm("k", torch.from_numpy(x))
    assert y[:, :3].min().item() == pytest.approx(-1) and y[:, :3].max().item() == pytest.approx(1)
    assert torch.allclose(y[:, 3], torch.zeros(500))
    assert torch.allclose(norm.inverse("k", y), torch.from_numpy(x), atol=1e-5)


def test_old_run_configs_upgrade_to_todays_form(tmp_path):
    """A config written before a setting existed gets that setting's old value (common.LATER_SETTINGS),
    in one place that resume, --init-from, 03, 04 and 05 all go through (load_checkpoint)."""
    v1 = {"args": {"method": "cotrain", "steps": 100}, "model": {"image_keys": ["agentview_image"]}}
    up = common.upgrade_config(v1)
    assert up["version"] == common.CONFIG_VERSION and "version" not in v1  # the input is not changed
    assert up["args"]["obs_set"] == "world" and up["args"]["action_space"] == "abs" and up["args"]["grl_ramp"] == 0
    assert up["model"]["vision_pool"] == "avg" and up["model"]["image_size"] == 84  # the paper's frames then
    assert common.upgrade_config({"args": {}, "model": {"image_keys": []}})["model"]["image_size"] == 0
    kept = common.upgrade_config({"args": {"obs_set": "rel"}, "model": {"image_keys": [], "image_size": 64}})
    assert kept["args"]["obs_set"] == "rel" and kept["model"]["image_size"] == 64  # set values are kept
    with pytest.raises(common.UsageError, match="newer"):
        common.upgrade_config({"version": common.CONFIG_VERSION + 1, "args": {}, "model": {}})
    # "finished" is the step reached, whatever file the weights were copied to
    for step, final in ((100, True), (50, False)):
        path = str(tmp_path / f"ck{step}.pt")
        torch.save({"ema": {}, "step": step, "config": v1, "final": not final}, path)
        ck = common.load_checkpoint(path)
        assert ck["final"] is final and ck["config"]["args"]["obs_set"] == "world"


def test_a_pool_worker_exits_when_its_parent_is_killed():
    """cli.exit_with_parent: the generation and rollout workers do not run on as orphans."""
    child = ("import cli, time; cli.exit_with_parent(0.05); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                               f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
                               "print(p.pid, flush=True); time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    time.sleep(0.5)
    assert os.path.exists(f"/proc/{pid}")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    t0 = time.time()
    while time.time() - t0 < 10:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":  # exited, not yet reaped by init
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the orphaned worker kept running")


def test_help_shows_what_a_plain_run_uses_and_every_profile_and_preset():
    """--help: a flag's default is the default profile's value, then the other profiles' and
    presets' where they differ; an empty default explained by its own help text is not doubled."""
    train = run_stage("02_train.py", "--help").stdout
    flat = " ".join(train.split())
    assert "training steps (default: 20000 with --profile cpu; paper: 100000;" in flat
    assert "(default: )" not in flat and "default: DEFAULT_WORKSPACE" not in flat
    toy = " ".join(run_stage("00_toy.py", "--help").stdout.split())
    assert "--design paper: 0.01,0.1,0.5" in toy  # the preset's separations, shown where the flag is
    deploy = " ".join(run_stage("05_real_deploy.py", "--help").stdout.split())
    assert "(default: 0.1,0.9,-0.5,0.5,-0.1,0.6)" in deploy and "(default: )" not in deploy


def test_every_committed_model_config_loads_with_its_values():
    """diffusion_policy.ModelConfig reads every committed run's config["model"] (any version):
    nothing it holds is dropped or changed, and only settings added later are filled, at the value
    those runs had (action_space abs, vision_pool avg, image_size 84 with cameras else 0, the
    agentview framing "wide")."""
    names = {f.name for f in fields(diffusion_policy.ModelConfig)}
    filled = set()
    paths = glob.glob(os.path.join(ROOT, "results", "**", "config.json"), recursive=True)
    for p in paths:
        m = json.load(open(p)).get("model")
        if m is None:
            continue
        assert set(m) <= names, p
        up = diffusion_policy.ModelConfig.from_dict(m).to_dict()
        assert all(up[k] == v for k, v in m.items()), p
        filled |= set(up) - set(m)
        if "image_size" not in m:
            assert up["image_size"] == (84 if m["image_keys"] else 0)
        if "framing" not in m:
            assert up["framing"] == "wide"
    assert len(paths) > 20 and filled <= {"action_space", "vision_pool", "image_size", "framing"}
