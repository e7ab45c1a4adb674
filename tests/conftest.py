import importlib.util
import os
import subprocess
import sys

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
