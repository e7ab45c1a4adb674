"""02_train.py: every method at --profile smoke, resume = uninterrupted, init-from, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import common
import diffusion_policy
import methods
from conftest import ROOT, load_stage, make_fake_dataset, run_stage


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_data")
    return {"target": make_fake_dataset(d / "target.hdf5", 3, 20, seed=0, domain="target"),
            "source": make_fake_dataset(d / "source.hdf5", 6, 20, seed=1, domain="source"),
            "target_img": make_fake_dataset(d / "target_img.hdf5", 2, 12, seed=2, images=32),
            "source_img": make_fake_dataset(d / "source_img.hdf5", 3, 12, seed=3, images=32,
                                            domain="source"),
            "dir": d}


def train(data, out, *extra, target="target", source="source"):
    return run_stage("02_train.py", "--profile", "smoke", "--target-data", data[target],
                     "--source-data", data[source], "--out", str(out), *extra)


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(r) for r in f]


@pytest.mark.parametrize("method", list(methods.METHODS))
def test_every_method_trains_at_smoke(data, tmp_path, method):
    r = train(data, tmp_path / "run", "--method", method, "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    rows = metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert all(np.isfinite(row["loss"]) for row in rows)
    row = methods.METHODS[method]  # the table says which loss terms the method adds
    want = ({"disc", "disc_acc", "grl_coeff"} if row.disc else set()) | ({"ot", "ot_entropy"} if row.ot else set())
    base = {"step", "loss", "diffusion", "lr", "target_fraction", "samples_per_s", "frac_outside_model"}
    assert set(rows[0]) - base == (want - {"disc", "disc_acc", "grl_coeff"})  # in warm-up (5 steps)
    assert set(rows[-1]) - base == want
    frac = np.mean([row["target_fraction"] for row in rows])
    assert frac == {"real_only": 1.0, "sim_only": 0.0}.get(method, pytest.approx(0.5, abs=0.15))
    policy, cfg, _ = diffusion_policy.load_policy(str(tmp_path / "run" / "ckpt.pt"))
    assert cfg["args"]["method"] == method and cfg["model"]["use_label"] == (method in ("cfg", "cfg_adda"))
    assert cfg["guidance_scale"] == {"cfg": 0.0, "cfg_adda": -0.5}.get(method)
    assert sorted(os.listdir(tmp_path / "run")) == ["ckpt.pt", "ckpt_0000010.pt", "ckpt_0000020.pt",
                                                    "config.json", "metrics.jsonl"]


@pytest.mark.parametrize("extra", [["--arch", "dec"], ["--arch", "unet"], ["--arch", "mlp"],
                                   ["--images", "--crop", "28", "--method", "cfg_adda"]])
def test_architectures_and_images(data, tmp_path, extra):
    kw = dict(target="target_img", source="source_img") if "--images" in extra else {}
    r = train(data, tmp_path / "run", *extra, **kw)
    assert r.returncode == 0, r.stderr
    policy, cfg, _ = diffusion_policy.load_policy(str(tmp_path / "run" / "ckpt.pt"))
    ds = common.load_demos(data[kw.get("target", "target")],
                           cfg["model"]["lowdim_keys"] + cfg["model"]["image_keys"], 2, 8)
    chunk = policy.predict_action(common.gather(ds, np.arange(3))["obs"], sample_steps=2)
    assert chunk.shape == (3, 8, 8) and torch.isfinite(chunk).all()
    if "--images" in extra:
        assert cfg["model"]["image_keys"] == ["agentview_image", "robot0_eye_in_hand_image"]
        stem, z = policy.encode(common.gather(ds, np.arange(3))["obs"])
        assert stem.shape == (3, 2, 2 * 16 + 9)  # two cameras' stem features + joint + gripper


def test_method_table_as_the_paper_names_it():
    """Sec. 5.1: which method adds what (the table every stage reads)."""
    M = methods.METHODS
    assert list(M) == ["real_only", "sim_only", "cotrain", "ot", "adda", "discriminate", "cfg", "cfg_adda"]
    assert [m for m in M if M[m].label] == ["cfg", "cfg_adda"] == methods.label_methods()
    assert {m: M[m].disc for m in M if M[m].disc} == {"adda": "reverse", "discriminate": "plain",
                                                     "cfg_adda": "reverse"}
    assert [m for m in M if M[m].ot] == ["ot"]
    assert (M["real_only"].ratio, M["sim_only"].ratio, M["cotrain"].ratio) == (1.0, 0.0, None)
    assert (M["cfg"].guidance, M["cfg_adda"].guidance) == (0.0, -0.5)  # Table 2: lambda = -0.5
    methods.check_methods()


def add_center_method(src: str) -> str:
    """methods.py with a throwaway method added as its docstring says, and nothing else: one row
    in METHODS, one setting in MethodArgs, one ALGO LOGIC block in CoTrainObjective.forward. The
    method pulls the mean of the batch's target features onto the mean of its source features."""
    edits = [
        ('    "cfg_adda":     Method(', '    "center":       Method(marker="p"),  # throwaway: feature means matched\n'
                                      '    "cfg_adda":     Method('),
        ('    ot_action_weight: float = arg(', '    center_weight: float = arg(0.1, "center: loss weight")\n'
                                            '    ot_action_weight: float = arg('),
        ('        terms["loss"] = loss\n',
         '        # ALGO LOGIC (center): the batch\'s target and source feature means pulled together\n'
         '        if a.method == "center":\n'
         '            is_t = batch["domain"] == TARGET\n'
         '            terms["center"] = (z[is_t].mean(0) - z[~is_t].mean(0)).pow(2).mean()\n'
         '            loss = loss + a.center_weight * terms["center"]\n'
         '        terms["loss"] = loss\n')]
    for anchor, text in edits:
        assert src.count(anchor) == 1, anchor
        src = src.replace(anchor, text)
    return src


def test_a_new_method_is_one_row_and_one_block_in_methods_py(data, tmp_path):
    """The "add a method" recipe (methods.py's docstring) in a copy of the repository where only
    methods.py is edited: the new method trains at smoke size with its own flag and loss term,
    its checkpoint loads, older runs still resume, and the tables and figures place it (methods.check_placement)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for f in os.listdir(ROOT):
        if f.endswith(".py"):
            (repo / f).write_text(open(os.path.join(ROOT, f)).read())
    (repo / "methods.py").write_text(add_center_method((repo / "methods.py").read_text()))
    env = dict(os.environ, MPLBACKEND="Agg")

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True, env=env,
                              timeout=600)
    common_flags = ["--profile", "smoke", "--target-data", data["target"], "--source-data", data["source"]]
    r = run("02_train.py", *common_flags, "--method", "center", "--center-weight", "0.2", "--ratio", "0.5",
            "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    rows = metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert all(np.isfinite(row["center"]) and row["center"] > 0 for row in rows)
    cfg = json.load(open(tmp_path / "run" / "config.json"))
    assert cfg["args"]["method"] == "center" and cfg["args"]["center_weight"] == 0.2
    assert cfg["guidance_scale"] is None
    # a run made before the method existed (trained by the unedited repository) still resumes
    r = train(data, tmp_path / "old", "--method", "cotrain", "--steps", "10")
    assert r.returncode == 0, r.stderr
    r = run("02_train.py", *common_flags, "--method", "cotrain", "--steps", "10", "--resume",
            "--out", str(tmp_path / "old"))
    assert r.returncode == 0, r.stderr
    check = ("import diffusion_policy, methods; methods.check_placement(); "
             f"p, c, _ = diffusion_policy.load_policy({str(tmp_path / 'run' / 'ckpt.pt')!r}); "
             "print(methods.marker('center'), methods.method_order()[-3:], c['model']['use_label'])")
    r = run("-c", check)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "p ['center', 'cfg_adda', 'pretrain_ft'] False"


def test_discriminator_sees_only_label_free_dims(data):
    train_mod = load_stage("02_train.py")
    a = train_mod.Args(method="cfg_adda", d_feat=16, d_model=16, n_heads=2, n_layers=1,
                       n_cond_layers=1, horizon=8, disc_warmup=0, disc_hidden=8)
    target, source, lowdim, images = train_mod.load_data(
        train_mod.Args(target_data=data["target"], source_data=data["source"], horizon=8))
    policy = diffusion_policy.DiffusionPolicy(train_mod.model_config(a, target, lowdim, images))
    policy.normalizer.fit({k: target.obs[k] for k in lowdim} | {"actions": target.actions})
    obj = train_mod.CoTrainObjective(policy, a)
    seen = []
    obj.disc.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    batch = common.sample_cotrain_batch(target, source, 0.5, 8, torch.Generator().manual_seed(0))
    obj(batch, 10, torch.Generator().manual_seed(0))
    _, z = policy.encode(batch["obs"])
    assert seen[0].shape == (8, 2, 16)  # n_obs x d_feat: no label dims
    assert torch.allclose(seen[0], z)
    assert policy.condition(z, batch["domain"]).shape == (8, 2, 18)  # the denoiser gets the label


def test_discriminator_waits_out_its_warmup(data, tmp_path):
    """App. C (issue 44): before --disc-warmup steps the discriminator neither trains nor sends a
    gradient: after 8 of 10 warm-up steps its weights are those it was built with, and the policy
    equals plain co-training's bit for bit (the same batches and noise, no other term). With
    --disc-during-warmup (runs before config version 3) it trains on detached features."""
    flags = ["--ratio", "0.5", "--steps", "8", "--disc-warmup", "10", "--snapshot-every", "0"]
    for name, extra in (("cotrain", []), ("adda", []), ("discriminate", []), ("old", ["--disc-during-warmup"])):
        r = train(data, tmp_path / name, "--method", "cotrain" if name == "cotrain" else
                  ("adda" if name == "old" else name), *flags, *extra)
        assert r.returncode == 0, r.stderr
    train_mod = load_stage("02_train.py")
    ck = {n: torch.load(tmp_path / n / "ckpt.pt", weights_only=False)
          for n in ("cotrain", "adda", "discriminate", "old")}
    a = common.parse_args(train_mod.Args, train_mod.PROFILES, ["--profile", "smoke", "--method", "adda", *flags])
    target, source, *_ = train_mod.load_data(train_mod.Args(target_data=data["target"], source_data=data["source"],
                                                            horizon=a.horizon, obs_set=a.obs_set))
    _, built, *_ = train_mod.build_model(a, ck["adda"]["config"], target, source, None, 0, torch.device("cpu"))
    disc0 = {k: v for k, v in built.state_dict().items() if k.startswith("disc.")}
    assert disc0
    for n in ("adda", "discriminate"):
        assert all(torch.equal(ck[n]["objective"][k], v) for k, v in disc0.items()), n
        pol = [k for k in ck[n]["objective"] if k.startswith("policy.")]
        assert all(torch.equal(ck[n]["objective"][k], ck["cotrain"]["objective"][k]) for k in pol), n
        assert all("disc" not in row for row in metrics(tmp_path / n))
    assert not all(torch.equal(ck["old"]["objective"][k], v) for k, v in disc0.items())
    assert all("disc" in row for row in metrics(tmp_path / "old"))
    assert ck["adda"]["config"]["args"]["disc_during_warmup"] is False


def killed_run(data, out, args):
    """02_train.py killed as soon as its first checkpoint is written; returns the step it holds."""
    cmd = [sys.executable, "02_train.py", "--profile", "smoke", "--target-data", data["target"],
           "--source-data", data["source"], "--out", str(out), *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(out / "ckpt.pt") and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return torch.load(out / "ckpt.pt", weights_only=False)["step"]


def test_a_run_made_before_config_version_3_resumes_as_it_was_trained(data, tmp_path):
    """A run whose config predates the discriminator's late start and OT's scaled cost (version 2,
    no such settings) reads their old values (common.LATER_SETTINGS): resumed with them, it ends
    with the weights of an uninterrupted run of the old behaviour; settings its method never reads
    may differ on --resume (methods.unused_settings); without the old flag it is refused."""
    for method, old, unread in (("cfg_adda", "--disc-during-warmup", "--ot-reg=0.3"),
                                ("ot", "--ot-cost-scale=none", "--cfg-drop-prob=0.5")):
        args = ["--method", method, "--ratio", "0.3", "--steps", "300", "--save-every", "50",
                "--snapshot-every", "0", old]
        r = train(data, tmp_path / f"{method}_a", *args)
        assert r.returncode == 0, r.stderr
        assert 0 < killed_run(data, tmp_path / f"{method}_b", args) < 300
        ck_path = tmp_path / f"{method}_b" / "ckpt.pt"  # made "before version 3": the new keys removed
        ck = torch.load(ck_path, weights_only=False)
        ck["config"]["version"] = 2
        for k in ("disc_during_warmup", "ot_cost_scale"):
            del ck["config"]["args"][k]
        torch.save(ck, ck_path)
        r = train(data, tmp_path / f"{method}_b", *args[:-1], "--resume")
        assert r.returncode == 2 and ("disc_during_warmup" if method == "cfg_adda" else "ot_cost_scale") in r.stderr
        r = train(data, tmp_path / f"{method}_b", *args, unread, "--resume")
        assert r.returncode == 0, r.stderr
        A = torch.load(tmp_path / f"{method}_a" / "ckpt.pt", weights_only=False)
        B = torch.load(ck_path, weights_only=False)
        assert B["step"] == 300 and all(torch.equal(A["ema"][k], B["ema"][k]) for k in A["ema"]), method


def test_resumed_run_equals_uninterrupted(data, tmp_path):
    args = ["--method", "cfg_adda", "--ratio", "0.3", "--steps", "400", "--save-every", "50",
            "--snapshot-every", "0"]
    r = train(data, tmp_path / "a", *args)
    assert r.returncode == 0, r.stderr
    assert 0 < killed_run(data, tmp_path / "b", args) < 400
    again = train(data, tmp_path / "b", *args)  # without --resume: refused, nothing touched
    assert again.returncode == 2 and "--resume" in again.stderr
    r = train(data, tmp_path / "b", *args, "--resume")
    assert r.returncode == 0, r.stderr
    A = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=False)
    B = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)
    assert A["step"] == B["step"] == 400
    for part in ("ema", "objective"):
        assert all(torch.equal(A[part][k], B[part][k]) for k in A[part]), part
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [m["step"] for m in mb] == [m["step"] for m in ma]  # no duplicated lines
    assert [m["loss"] for m in mb] == pytest.approx([m["loss"] for m in ma], rel=1e-6)
    mtime = os.path.getmtime(tmp_path / "b" / "ckpt.pt")
    r = train(data, tmp_path / "b", *args, "--resume")  # a finished run: nothing to do, nothing touched
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert os.path.getmtime(tmp_path / "b" / "ckpt.pt") == mtime and len(metrics(tmp_path / "b")) == len(mb)


def test_init_from_pretrained_and_architecture_mismatch(data, tmp_path):
    r = train(data, tmp_path / "pre", "--method", "sim_only")
    assert r.returncode == 0, r.stderr
    pre = str(tmp_path / "pre" / "ckpt.pt")
    r = train(data, tmp_path / "ft", "--method", "real_only", "--init-from", pre, "--steps", "1")
    assert r.returncode == 0, r.stderr
    ft = torch.load(tmp_path / "ft" / "ckpt.pt", weights_only=False)
    src = torch.load(pre, weights_only=False)["ema"]
    w = "encoder.trunk.0.weight"
    assert (ft["objective"]["policy." + w] - src[w]).abs().max() < 0.01  # one small step away
    r = train(data, tmp_path / "bad", "--method", "real_only", "--init-from", pre, "--arch", "unet")
    assert r.returncode == 2 and "different architecture" in r.stderr
    assert not os.path.exists(tmp_path / "bad")


def corrupt(tmp_path, name, **kw):
    return make_fake_dataset(tmp_path / name, 2, 10, **kw)


@pytest.mark.parametrize("case", ["method", "ratio", "ratio_word", "keys", "action_dim", "nan",
                                  "missing", "not_hdf5", "resume_other_arch", "guidance"])
def test_bad_input_exits_2_and_writes_nothing(data, tmp_path, case):
    out = tmp_path / "run"
    extra = []
    if case == "method":
        extra = ["--method", "mixup"]
    elif case == "ratio":
        extra = ["--ratio", "1.5"]
    elif case == "ratio_word":
        extra = ["--ratio", "lots"]
    elif case == "keys":
        data = dict(data, source=corrupt(tmp_path, "s.hdf5", lowdim={"robot0_joint_pos": 7,
                                                                     "robot0_gripper_qpos": 2}))
    elif case == "action_dim":
        data = dict(data, source=corrupt(tmp_path, "s.hdf5", action_dim=7))
    elif case == "nan":
        data = dict(data, target=corrupt(tmp_path, "t.hdf5", nan=True))
    elif case == "missing":
        data = dict(data, target=str(tmp_path / "nope.hdf5"))
    elif case == "not_hdf5":
        (tmp_path / "t.hdf5").write_text("not hdf5")
        data = dict(data, target=str(tmp_path / "t.hdf5"))
    elif case == "resume_other_arch":
        assert train(data, out).returncode == 0
        before = sorted(os.listdir(out)), open(out / "metrics.jsonl").read()
        extra = ["--resume", "--arch", "unet"]
    elif case == "guidance":
        extra = ["--method", "cotrain", "--guidance", "-0.5"]
    r = train(data, out, *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    expect = {"method": "unknown method", "ratio": "[0, 1]", "ratio_word": "ratio", "keys": "not in",
              "action_dim": "mismatched action", "nan": "non-finite", "missing": "not found",
              "not_hdf5": "HDF5", "resume_other_arch": "different settings: arch",
              "guidance": "domain label"}[case]
    assert expect in lines[0]
    if case == "resume_other_arch":
        assert (sorted(os.listdir(out)), open(out / "metrics.jsonl").read()) == before
    else:
        assert not os.path.exists(out)


EEF_LOWDIM = {"robot0_joint_pos": 7, "robot0_gripper_qpos": 2, "robot0_eef_pos": 3, "robot0_eef_quat": 4,
              "nut_pos": 3, "nut_quat": 4, "peg_pos": 3}


@pytest.fixture(scope="module")
def eef_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("eef_data")
    return {"target": make_fake_dataset(d / "t.hdf5", 2, 12, seed=4, lowdim=EEF_LOWDIM),
            "source": make_fake_dataset(d / "s.hdf5", 3, 12, seed=5, lowdim=EEF_LOWDIM, domain="source")}


def test_obs_keys_take_the_end_effector_pose(eef_data, tmp_path):
    """--obs-keys robot0_eef_pos,robot0_eef_quat was refused by a key check that dropped every
    robot0_* key; both files hold them."""
    r = train(eef_data, tmp_path / "run", "--obs-keys", "robot0_joint_pos,robot0_eef_pos,robot0_eef_quat,nut_pos_rel")
    assert r.returncode == 0, r.stderr
    _, cfg, _ = diffusion_policy.load_policy(str(tmp_path / "run" / "ckpt.pt"))
    assert cfg["model"]["lowdim_keys"] == ["robot0_joint_pos", "robot0_eef_pos", "robot0_eef_quat", "nut_pos_rel"]
    r = train(eef_data, tmp_path / "bad", "--obs-keys", "robot0_joint_pos,robot0_eef_vel")
    assert r.returncode == 2 and "robot0_eef_vel" in r.stderr and not os.path.exists(tmp_path / "bad")


@pytest.mark.parametrize("obs_set,keys", [
    ("world", ["robot0_joint_pos", "robot0_gripper_qpos", "nut_pos", "nut_quat", "peg_pos"]),
    ("eef", ["robot0_joint_pos", "robot0_gripper_qpos", "robot0_eef_pos", "robot0_eef_rot6d",
             "nut_pos", "nut_rot6d", "peg_pos"]),
    ("rel", ["robot0_joint_pos", "robot0_gripper_qpos", "robot0_eef_pos", "robot0_eef_rot6d",
             "nut_pos_rel", "nut_rot6d", "peg_pos_rel"])])
def test_obs_sets(eef_data, obs_set, keys):
    assert common.lowdim_keys_of(eef_data["target"], obs_set) == keys


def test_rel_set_moves_positions_only(tmp_path):
    """MugCleanup stores a scalar drawer_opening beside its positions: the rel set keeps it as it
    is (subtracting the gripper's position from it would broadcast a scalar into 3 numbers)."""
    path = make_fake_dataset(tmp_path / "mug.hdf5", 1, 6, seed=1, lowdim={
        "robot0_joint_pos": 7, "robot0_gripper_qpos": 2, "robot0_eef_pos": 3, "robot0_eef_quat": 4,
        "mug_pos": 3, "mug_quat": 4, "drawer_handle_pos": 3, "drawer_opening": 1})
    keys = common.lowdim_keys_of(path, "rel")
    assert keys[4:] == ["drawer_handle_pos_rel", "drawer_opening", "mug_pos_rel", "mug_rot6d"]
    ds = common.load_demos(path, keys, 1, 4)
    assert ds.obs["drawer_opening"].shape == (6, 1) and ds.obs["mug_rot6d"].shape == (6, 6)


def test_derived_keys_are_the_same_in_training_and_in_the_loop(eef_data):
    """A derived key computed over a whole file (load_demos) equals the one PolicyAgent computes
    from a single step's stored observation."""
    keys = common.lowdim_keys_of(eef_data["target"], "rel")
    ds = common.load_demos(eef_data["target"], keys, 1, 4)
    with h5py.File(eef_data["target"], "r") as f:
        step = {k: f["data/demo_0/obs"][k][3] for k in f["data/demo_0/obs"]}
    live = common.derive_obs(step, keys)
    for k in keys:
        np.testing.assert_allclose(ds.obs[k][3], live[k], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(live["peg_pos_rel"], step["peg_pos"] - step["robot0_eef_pos"], rtol=1e-6)


def test_rot6d_is_continuous_and_sign_free():
    """Yaw over a full turn: the quaternion flips sign between yaw = 2 pi - e and e, the 6-D
    rotation does not; q and -q map to the same vector; xyzw order gives the same rotation."""
    yaw = np.linspace(0, 2 * np.pi, 721)
    q = np.stack([np.cos(yaw / 2), 0 * yaw, 0 * yaw, np.sin(yaw / 2)], -1)  # wxyz, z-axis yaw
    r = common.quat_to_rot6d(q)
    np.testing.assert_allclose(r[:, 0], np.cos(yaw), atol=1e-6)
    np.testing.assert_allclose(r[:, 1], np.sin(yaw), atol=1e-6)
    np.testing.assert_allclose(r[0], r[-1], atol=1e-6)  # q(2 pi) = -q(0)
    assert np.abs(q[0] - q[-1]).max() > 1.9
    np.testing.assert_allclose(common.quat_to_rot6d(-q), r, atol=1e-6)
    np.testing.assert_allclose(common.quat_to_rot6d(q[:, [1, 2, 3, 0]], "xyzw"), r, atol=1e-6)


def test_balanced_discriminator_loss_ignores_the_majority_class():
    """With 17 % target samples, a constant "source" prediction scored 0.83 plain accuracy and
    beat chance on plain BCE; balanced, any constant prediction scores 0.5 and its best loss is
    at logit 0, while a discriminator that separates the domains scores 1."""
    y = torch.tensor([0.0] * 17 + [1.0] * 83)
    for c in (-3.0, 0.0, 3.0):
        assert methods.balanced_accuracy(torch.full((100,), c), y) == pytest.approx(0.5)
    losses = {c: float(methods.balanced_bce(torch.full((100,), c), y)) for c in (-1.0, 0.0, 1.6)}
    assert min(losses, key=losses.get) == 0.0
    plain = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(plain(torch.full((100,), 1.6), y)) < float(plain(torch.zeros(100), y))  # the old trap
    assert methods.balanced_accuracy(torch.where(y > 0.5, 2.0, -2.0), y) == 1.0
    # a discriminator trained on imbalanced constant features stays at chance
    disc = methods.Discriminator(4, 16)
    opt = torch.optim.Adam(disc.parameters(), 1e-2)
    z = torch.ones(100, 4)
    for _ in range(200):
        loss, acc = methods.discriminator_loss(disc, z, y.long(), reverse=True)
        opt.zero_grad(); loss.backward(); opt.step()
    assert float(acc) == pytest.approx(0.5) and loss.item() == pytest.approx(np.log(2), abs=1e-3)


def test_grl_coefficient_and_warmup():
    assert methods.grl_coeff(99, 100, 50) == 0.0
    assert methods.grl_coeff(100, 100, 50) == 0.0
    assert 0 < methods.grl_coeff(110, 100, 50) < methods.grl_coeff(130, 100, 50) < 1
    assert methods.grl_coeff(150, 100, 50) == pytest.approx(2 / (1 + np.exp(-10)) - 1)
    assert methods.grl_coeff(100, 100, 0) == 1.0
    # in warm-up the encoder gets no gradient from the discriminator, the discriminator does
    disc = methods.Discriminator(3, 8)
    z = torch.randn(6, 3, requires_grad=True)
    loss, _ = methods.discriminator_loss(disc, z, torch.tensor([0, 1] * 3), reverse=True, coeff=0.0)
    loss.backward()
    assert z.grad is None and disc.net[0].weight.grad.abs().sum() > 0
    # after it, the encoder's gradient is the discriminator's reversed and scaled by coeff
    z2 = z.detach().clone().requires_grad_(True)
    methods.discriminator_loss(disc, z2, torch.tensor([0, 1] * 3), reverse=False)[0].backward()
    z3 = z.detach().clone().requires_grad_(True)
    methods.discriminator_loss(disc, z3, torch.tensor([0, 1] * 3), reverse=True, coeff=0.3)[0].backward()
    torch.testing.assert_close(z3.grad, -0.3 * z2.grad)


def test_relative_actions_round_trip(data, tmp_path):
    """--action-space rel: the policy learns joint targets minus the current joint positions and
    adds them back, so its chunks come out in robot units like an absolute policy's."""
    ds = common.load_demos(data["target"], ["robot0_joint_pos", "robot0_gripper_qpos"], 2, 8)
    rel = load_stage("02_train.py").relative_chunks(ds)
    i = 7
    q = ds.obs["robot0_joint_pos"][ds.obs_index[i, -1]]
    np.testing.assert_allclose(rel[i, :, :7], ds.actions[ds.act_index[i]][:, :7] - q, rtol=1e-6)
    np.testing.assert_allclose(rel[i, :, 7], ds.actions[ds.act_index[i]][:, 7])  # gripper absolute
    r = train(data, tmp_path / "run", "--action-space", "rel", "--method", "real_only")
    assert r.returncode == 0, r.stderr
    policy, cfg, _ = diffusion_policy.load_policy(str(tmp_path / "run" / "ckpt.pt"))
    assert cfg["model"]["action_space"] == "rel"
    obs = common.gather(common.load_demos(data["target"], cfg["model"]["lowdim_keys"], 2, 8), np.arange(4))["obs"]
    g = lambda: torch.Generator().manual_seed(0)
    a = policy.predict_action(obs, sample_steps=2, generator=g())
    policy.m.action_space = "abs"  # the same network read as absolute (its ModelConfig): off by the origin
    b = policy.predict_action(obs, sample_steps=2, generator=g())
    torch.testing.assert_close(a[..., :7] - b[..., :7], obs["robot0_joint_pos"][:, -1, None].expand(-1, 8, -1))
    torch.testing.assert_close(a[..., 7], b[..., 7])


def test_get_lr_warmup_then_cosine():
    train_mod = load_stage("02_train.py")
    assert train_mod.get_lr(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert train_mod.get_lr(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert train_mod.get_lr(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert train_mod.get_lr(110, 1.0, 10, 110) == pytest.approx(0.0)
