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
from conftest import ROOT, make_fake_dataset, run_stage, load_stage


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


@pytest.mark.parametrize("method", ["real_only", "sim_only", "cotrain", "ot", "adda",
                                    "discriminate", "cfg", "cfg_adda"])
def test_every_method_trains_at_smoke(data, tmp_path, method):
    r = train(data, tmp_path / "run", "--method", method, "--ratio", "0.5")
    assert r.returncode == 0, r.stderr
    rows = metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert all(np.isfinite(row["loss"]) for row in rows)
    want = {"ot": {"ot"}, "adda": {"disc", "disc_acc"}, "discriminate": {"disc", "disc_acc"},
            "cfg_adda": {"disc", "disc_acc"}}.get(method, set())
    extra = set(rows[0]) - {"step", "loss", "diffusion", "lr", "target_fraction", "samples_per_s",
                            "frac_outside_model"}
    assert extra == want
    frac = np.mean([row["target_fraction"] for row in rows])
    assert frac == {"real_only": 1.0, "sim_only": 0.0}.get(method, pytest.approx(0.5, abs=0.15))
    policy, cfg, _ = diffusion_policy.load_policy(str(tmp_path / "run" / "ckpt.pt"))
    assert cfg["args"]["method"] == method and cfg["model"]["use_label"] == (method in ("cfg", "cfg_adda"))
    assert cfg["guidance_scale"] == {"cfg": 0.0, "cfg_adda": -0.5}.get(method)
    assert sorted(os.listdir(tmp_path / "run")) == ["ckpt.pt", "ckpt_0000010.pt", "ckpt_0000020.pt",
                                                    "config.json", "metrics.jsonl"]


@pytest.mark.parametrize("extra", [["--arch", "dec"], ["--arch", "unet"],
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


def test_resumed_run_equals_uninterrupted(data, tmp_path):
    args = ["--method", "cfg_adda", "--ratio", "0.3", "--steps", "400", "--save-every", "50",
            "--snapshot-every", "0"]
    r = train(data, tmp_path / "a", *args)
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "02_train.py", "--profile", "smoke", "--target-data", data["target"],
           "--source-data", data["source"], "--out", str(tmp_path / "b"), *args]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(tmp_path / "b" / "ckpt.pt") and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=False)["step"]
    assert 0 < killed_at < 400
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
    extra, kw = [], {}
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
    expect = {"method": "unknown method", "ratio": "[0, 1]", "ratio_word": "ratio", "keys": "mismatched",
              "action_dim": "mismatched action", "nan": "non-finite", "missing": "not found",
              "not_hdf5": "HDF5", "resume_other_arch": "different settings: arch",
              "guidance": "domain label"}[case]
    assert expect in lines[0]
    if case == "resume_other_arch":
        assert (sorted(os.listdir(out)), open(out / "metrics.jsonl").read()) == before
    else:
        assert not os.path.exists(out)
