"""Does this checkout behave as a git commit does, bit for bit? The check for a refactor.

    python tools/same_behaviour.py main            # this working tree against the commit `main`
    python tools/same_behaviour.py HEAD~3 --episodes 3

1. data: 01_generate_data.py --profile smoke (scripted experts, MimicGen) in both trees: every
   array of every dataset file equal.
2. training: 02_train.py --profile smoke for every method of methods.METHODS that both trees know,
   on the data of (1): every tensor of the final checkpoint (model, EMA, optimizer state) equal.
3. evaluation: 03_eval.py in both trees re-runs the first --episodes episodes of committed
   evaluations (results/eval/: the study's cfg_adda, ot and cotrain runs): success, length and
   final joint positions equal between the trees; success and length equal to the committed
   episodes (their joint positions, made on another CPU, differ in the last digits, which 500 steps
   of contact dynamics can amplify: the largest difference is printed).
The commit is checked out with `git worktree` into a temporary folder (removed at the end); both
trees run with this checkout's .venv. Exit code 0 when everything is equal, 1 otherwise (each
difference listed), 2 for bad input (one line).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import methods  # noqa: E402
from cli import die  # noqa: E402

# committed evaluations re-run in step 3 (one per kind of method: the paper's, OT, plain co-training)
EVALS = ["NutAssembly_target_visual_physics_cfg_adda_r0.17_encdec_s0",
         "NutAssembly_target_visual_physics_ot_r0.17_encdec_s0",
         "NutAssembly_target_visual_physics_cotrain_r0.0909_encdec_s0"]


def run(tree: str, *args, timeout: int = 1800):
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(args[:3])} failed in {tree}:\n{r.stderr[-2000:]}")
    return r


def arrays(path: str) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def same_arrays(a: dict, b: dict, where: str) -> list:
    diffs = [f"{where}: keys differ ({sorted(set(a) ^ set(b))[:5]})"] if set(a) != set(b) else []
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor):
            same = isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
        elif isinstance(x, np.ndarray):
            same = isinstance(y, np.ndarray) and x.shape == y.shape and np.array_equal(x, y)
        else:
            same = x == y
        if not same:
            diffs.append(f"{where}: {k} differs")
    return diffs


def tensors(obj, prefix: str = "") -> dict:
    """Every tensor of a nested checkpoint (dicts and lists), by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in tensors(val, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, val in enumerate(obj) for k, v in tensors(val, f"{prefix}/{i}").items()}
    return {}


def check_data(here: str, ref: str) -> list:
    diffs = []
    for tree in (here, ref):
        run(tree, "01_generate_data.py", "--profile", "smoke", "--workers", "2", "--root", "same_behaviour/data")
    root = os.path.join(here, "same_behaviour", "data")
    files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                   if f.endswith(".hdf5"))
    for rel in files:
        other = os.path.join(ref, "same_behaviour", "data", rel)
        if not os.path.exists(other):
            diffs.append(f"data: {rel} missing in the reference")
            continue
        diffs += same_arrays(arrays(os.path.join(root, rel)), arrays(other), f"data {rel}")
    print(f"data: {len(files)} dataset files compared, {len(diffs)} differences", flush=True)
    return diffs


def check_training(here: str, ref: str) -> list:
    known = run(ref, "-c", "import json, sys; sys.path.insert(0, '.'); "
                "import common; print(json.dumps(list(getattr(common, 'METHODS', None) or "
                "__import__('methods').METHODS)))").stdout
    names = [m for m in json.loads(known.strip().splitlines()[-1]) if m in methods.METHODS]
    data = os.path.join(here, "same_behaviour", "data", "NutAssembly")
    diffs = []
    for m in names:
        cks = []
        for tree in (here, ref):
            out = os.path.join("same_behaviour", "train", m)
            run(tree, "02_train.py", "--profile", "smoke", "--method", m, "--ratio", "0.5", "--overwrite",
                "--target-data", os.path.join(data, "target_visual_physics", "demos_1.hdf5"),
                "--source-data", os.path.join(data, "source", "mimicgen_2.hdf5"), "--out", out)
            cks.append(torch.load(os.path.join(tree, out, "ckpt.pt"), map_location="cpu", weights_only=False))
        diffs += same_arrays(*(tensors({k: ck[k] for k in ("objective", "ema", "optimizer")}) for ck in cks),
                             f"train {m}")
        print(f"train {m}: {len(tensors(cks[0]['objective']))} tensors compared", flush=True)
    return diffs


def episodes_of(path: str) -> dict:
    return {(e["key"], e["seed"]): e for e in map(json.loads, open(path))}


def check_evaluation(here: str, ref: str, episodes: int) -> list:
    """Both trees re-run the first episodes of each committed evaluation on this machine: equal bit
    for bit (success, length, final joint positions). Against the committed episodes, made on
    another machine, success and length must agree; joint positions may differ in the last digits
    there (float kernels differ between CPUs), and the largest difference is printed."""
    diffs = []
    for name in EVALS:
        committed = os.path.join(here, "results", "eval", name, "episodes.jsonl")
        if not os.path.exists(committed):
            diffs.append(f"eval {name}: no committed episodes.jsonl")
            continue
        want, got = episodes_of(committed), []
        for tree in (here, ref):
            out = os.path.join("same_behaviour", "eval", name)
            run(tree, "03_eval.py", "--profile", "cpu", "--ckpt", f"results/train/{name}/ckpt.pt",
                "--trials", str(episodes), "--overwrite", "--out", out)  # each tree's committed copy
            got.append(episodes_of(os.path.join(tree, out, "episodes.jsonl")))
        dq = 0.0
        for k, e in got[0].items():
            f = got[1].get(k)
            if f is None or (e["success"], e["length"], e["final_joint_pos"]) != \
                    (f["success"], f["length"], f["final_joint_pos"]):
                diffs.append(f"eval {name} seed {e['seed']}: differs from the reference's")
            w = want.get(k)
            if w is None or (e["success"], e["length"]) != (w["success"], w["length"]):
                diffs.append(f"eval {name} seed {e['seed']}: {(e['success'], e['length'])} vs committed "
                             f"{None if w is None else (w['success'], w['length'])}")
            else:
                dq = max(dq, float(np.abs(np.subtract(e["final_joint_pos"], w["final_joint_pos"])).max()))
        print(f"eval {name}: {len(got[0])} episodes, both trees equal: "
              f"{not any(d.startswith(f'eval {name}') for d in diffs)}; committed success and length agree, "
              f"final joint positions within {dq:.1e} rad of the committed ones", flush=True)
    return diffs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="the git commit to compare with (e.g. main)")
    p.add_argument("--episodes", type=int, default=2, help="episodes re-run per committed evaluation")
    p.add_argument("--skip", default="", help="comma list of checks to skip: data, train, eval")
    a = p.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if skip - {"data", "train", "eval"}:
        die(f"--skip takes data, train, eval; got {', '.join(sorted(skip - {'data', 'train', 'eval'}))}")
    known = subprocess.run(["git", "rev-parse", "--verify", f"{a.ref}^{{commit}}"], cwd=REPO, capture_output=True)
    if known.returncode:
        die(f"{a.ref!r} is not a commit of this repository")
    with tempfile.TemporaryDirectory() as tmp:
        ref = os.path.join(tmp, "ref")
        subprocess.run(["git", "worktree", "add", "--detach", ref, a.ref], cwd=REPO, check=True, capture_output=True)
        try:
            diffs = []
            if "data" not in skip:
                diffs += check_data(REPO, ref)
            if "train" not in skip:
                diffs += check_training(REPO, ref)
            if "eval" not in skip:
                diffs += check_evaluation(REPO, ref, a.episodes)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", ref], cwd=REPO, capture_output=True)
    print("\n".join(diffs) if diffs else f"same behaviour as {a.ref}: every compared array, tensor and episode equal")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
