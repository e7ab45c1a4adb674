import importlib.util
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_stage(name: str):
    """Import a stage script (its file name starts with a digit) as a module."""
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), os.path.join(ROOT, name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_stage(*args, timeout=600):
    """Run a stage script as a user would; returns the CompletedProcess."""
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="session")
def toy():
    return load_stage("00_toy.py")


PANDA_HOME = [0.0, 0.19635, 0.0, -2.61799, 0.0, 2.94159, 0.78540]  # robosuite's Panda init_qpos


def make_fake_dataset(path, num_demos=3, T=20, seed=0, domain="target", images=0, lowdim=None,
                      action_dim=8, nan=False, home=False, framing=None):
    """A small robomimic-format file with random low-dim observations (joint, gripper, an object
    position), optional `images`-sized camera frames and 8-D joint actions, for training tests.
    home: joints and joint targets stay within a few hundredths of a radian of the Panda's
    initial pose (a policy trained on it commands safe, slow targets: deployment tests).
    framing: the agentview framing recorded in env_args (None: none recorded, i.e. "wide")."""
    rng = np.random.default_rng(seed)
    lowdim = lowdim or {"robot0_joint_pos": 7, "robot0_gripper_qpos": 2, "nut_pos": 3}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = num_demos * T
        kwargs = {"framing": framing} if framing else {}
        data.attrs["env_args"] = json.dumps({"env_name": "NutAssembly", "type": 1, "env_kwargs": kwargs})
        data.attrs["task"], data.attrs["domain"] = "NutAssembly", domain
        for i in range(num_demos):
            d = data.create_group(f"demo_{i}")
            d.attrs["num_samples"] = T
            shift = 0.0 if domain == "target" else 0.5
            for k, n in lowdim.items():
                d.create_dataset(f"obs/{k}", data=rng.normal(shift, 1, (T, n)).astype(np.float32))
            if images:
                for cam in ("agentview_image", "robot0_eye_in_hand_image"):
                    d.create_dataset(f"obs/{cam}", data=rng.integers(0, 255, (T, images, images, 3), dtype=np.uint8))
            a = np.cumsum(rng.normal(0, 0.1, (T, action_dim)), 0).astype(np.float32)
            if home:
                a[:, :7] = np.array(PANDA_HOME) + np.cumsum(rng.normal(0, 0.003, (T, 7)), 0)
                d["obs/robot0_joint_pos"][...] = np.array(PANDA_HOME) + rng.normal(0, 0.01, (T, 7))
            if nan and i == num_demos - 1:
                a[T // 2, 0] = np.nan
            d.create_dataset("joint_actions", data=a)
            d.create_dataset("actions", data=a[:, :7])
            d.create_dataset("states", data=np.zeros((T, 10)))
            d.create_dataset("rewards", data=np.zeros(T))
            d.create_dataset("dones", data=np.zeros(T, dtype=np.int64))
        f.create_dataset("mask/train", data=np.array([f"demo_{i}" for i in range(num_demos)], dtype="S"))
        f.create_dataset("mask/valid", data=np.array([], dtype="S"))
    return str(path)
