"""Committed run records: the layout of results/, portable names, fixed feature samples.

A study runs over many sessions and machines, and a fresh clone has no data/ and no runs/. So
every finished run's small outputs are committed under a results folder in one layout, and
04_analyze.py rebuilds every table and figure from that folder alone:

    results/train/<run>/config.json     02_train.py's run config (dataset paths repo-relative)
                        metrics.jsonl   its training log
                        run.json        step reached, finished or not, weights digest, commit
                        ckpt.pt         the EMA weights at the final step (03_eval, 04, 05 load it)
                        features.npz    float16 stem and trunk features of the fixed observation
                                        sets below (App. D.2: W, GW, UMAP, the probes)
    results/eval/<name>/results.json, episodes.jsonl, settings.json   03_eval.py's outputs
    results/obs_sets/<task>/<domain>.npz   the fixed observation sets: FEATURE_SAMPLES windows of
                                        the domain's dataset (stored low-dim keys, 2-step history)

No record holds a machine path: a checkpoint is named by its repo-relative path (or
<run>/<file> outside the repository) and evaluations are joined to runs by weights digest.
`python records.py collect RUN_DIR` puts a finished run under results/ (`collect-into DIR RUN_DIR`:
under DIR); `python records.py check [DIR]` lists machine paths. 04_analyze.py and the study runner
(study.py) use the functions below; the last section reads the records back (`discover`: the
finished runs of a folder, each joined to its evaluations by weights digest).
"""
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch

import common
import diffusion_policy
from methods import method_of

REPO = os.path.dirname(os.path.abspath(__file__))
FEATURE_SAMPLES = 2048  # App. D.2: a large batch of features per domain
OBS_SET_SEED = 0
OBS_HISTORY = 2  # windows keep 2 steps (App. C: n_obs = 2); a 1-step policy takes the last


# ----------------------------------------------------------------------------------------------
# portable names
# ----------------------------------------------------------------------------------------------
def portable(path: str) -> str:
    """A path as records store it: repo-relative inside the repository, <parent>/<file> outside
    (a run folder and its checkpoint), never a machine's absolute path."""
    if not path:
        return path
    full = os.path.abspath(path)
    if full == REPO or full.startswith(REPO + os.sep):
        return os.path.relpath(full, REPO)
    return os.path.join(os.path.basename(os.path.dirname(full)), os.path.basename(full))


def is_machine_path(s: str) -> bool:
    return isinstance(s, str) and (s.startswith("/") or (len(s) > 2 and s[1] == ":" and s[2] in "/\\"))


def machine_paths(obj, where: str = "") -> list:
    """Every string in a JSON value that is an absolute path, or holds one (a composite key)."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += [f"{where}: key {k!r}"] if any(is_machine_path(p) for p in str(k).split("|")) else []
            out += machine_paths(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += machine_paths(v, f"{where}[{i}]")
    elif isinstance(obj, str) and any(is_machine_path(p) for p in obj.split("|")):
        out.append(f"{where}: {obj!r}")
    return out


def find_machine_paths(root: str) -> list:
    """Machine paths in every JSON / JSONL / markdown file under root: 'file: where' lines."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if path.endswith(".json"):
            with open(path) as f:
                out += [f"{path}{w}" for w in machine_paths(json.load(f))]
        elif path.endswith(".jsonl"):
            with open(path) as f:
                for i, line in enumerate(f):
                    if line.strip():
                        out += [f"{path}:{i + 1}{w}" for w in machine_paths(json.loads(line))]
        elif path.endswith(".md"):
            with open(path) as f:
                text = f.read()
            out += [f"{path}: {REPO}" for _ in range(text.count(REPO + "/"))][:1]
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


# ----------------------------------------------------------------------------------------------
# the fixed observation sets and the feature samples (Sec. 4.1's two feature points)
# ----------------------------------------------------------------------------------------------
def obs_set_path(results: str, task: str, domain: str) -> str:
    return os.path.join(results, "obs_sets", task, f"{domain}.npz")


def make_obs_set(dataset: str, n: int = FEATURE_SAMPLES, seed: int = OBS_SET_SEED) -> dict:
    """n random training windows of a dataset (seeded): every stored low-dim key, (n, 2, d)."""
    keys = [k for k in common.stored_keys_of(dataset) if not k.endswith(common.IMAGE_SUFFIX)]
    ds = common.load_demos(dataset, keys, OBS_HISTORY, 1)
    idx = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=len(ds) < n))
    oi = ds.obs_index[idx]
    return {**{f"obs/{k}": ds.obs[k][oi] for k in keys}, "window": idx,
            "meta": np.array(json.dumps({"dataset": portable(dataset), "digest": ds.digest, "seed": seed,
                                         "num_demos": ds.num_demos, "num_windows": len(ds)}))}


def save_npz(path: str, arrays: dict):
    """Atomic write; the temporary file is the process's own, as two study chains collecting at
    once may both make the same (deterministic) observation set."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_obs_set(path: str) -> dict:
    with np.load(path) as f:
        return {k[4:]: f[k] for k in f.files if k.startswith("obs/")}


def ensure_obs_sets(results: str, cfg: dict) -> dict:
    """The run's two observation sets ({"target": path, "source": path}), made from its datasets
    if they are not under results/ yet (needs data/ then; UsageError if neither exists)."""
    task, domain = cfg["args"]["task"], cfg["args"]["target_domain"]
    paths = {}
    for which, dom in (("target", domain), ("source", "source")):
        path = obs_set_path(results, task, dom)
        if not os.path.exists(path):
            dataset = cfg["data"][which]["path"]
            if not os.path.isfile(dataset):
                raise common.UsageError(f"no observation set {path} and no dataset {dataset} to make it from "
                                        f"(make data first)")
            save_npz(path, make_obs_set(dataset))
        paths[which] = path
    return paths


def features(policy, obs_set: dict, batch: int = 512) -> dict:
    """The policy's (eval mode, center crop) stem and trunk features of an observation set,
    flattened over the history: {"stem": (n, n_obs d_stem), "trunk": (n, n_obs d_feat)}."""
    c = policy.cfg
    if c["image_keys"]:
        raise common.UsageError("feature samples of image policies need image observation sets "
                                "(not kept under results/; 04_analyze.py reads them from data/)")
    obs = common.derive_obs(obs_set, c["lowdim_keys"])
    obs = {k: np.asarray(obs[k], np.float32)[:, OBS_HISTORY - c["n_obs"]:] for k in c["lowdim_keys"]}
    n = len(next(iter(obs.values())))
    stems, trunks = [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            stem, z = policy.encode({k: torch.from_numpy(v[i:i + batch]) for k, v in obs.items()})
            stems.append(stem.flatten(1).numpy())
            trunks.append(z.flatten(1).numpy())
    return {"stem": np.concatenate(stems), "trunk": np.concatenate(trunks)}


def save_features(path: str, feats: dict, obs_sets: dict):
    """feats {domain: {point: array}} as float16 (the committed sample), with its sets' names."""
    arrays = {f"{d}_{p}": v.astype(np.float16) for d, f in feats.items() for p, v in f.items()}
    arrays["obs_sets"] = np.array(json.dumps({d: portable(p) for d, p in obs_sets.items()}))
    save_npz(path, arrays)


def load_features(path: str) -> dict:
    """{domain: {"stem", "trunk"}} as float32, from a features.npz."""
    with np.load(path) as f:
        return {d: {p: f[f"{d}_{p}"].astype(np.float32) for p in ("stem", "trunk")} for d in ("target", "source")}


def run_features(ckpt: str, results: str) -> dict:
    """The feature sample of a checkpoint on its task's fixed observation sets."""
    policy, cfg, _ = diffusion_policy.load_policy(ckpt)
    sets = ensure_obs_sets(results, cfg)
    return {d: features(policy, load_obs_set(p)) for d, p in sets.items()}, sets


# ----------------------------------------------------------------------------------------------
# run and evaluation records
# ----------------------------------------------------------------------------------------------
def portable_config(cfg: dict) -> dict:
    """A run config with its dataset and --init-from paths portable."""
    cfg = json.loads(json.dumps(cfg))
    for d in cfg.get("data", {}).values():
        if isinstance(d, dict) and "path" in d:
            d["path"] = portable(d["path"])
    for k in ("init_from", "out", "target_data", "source_data", "data_root"):
        if cfg.get("args", {}).get(k):
            cfg["args"][k] = portable(cfg["args"][k])
    return cfg


def portable_key(key: str) -> str:
    """An evaluation key 'ckpt|domain|guidance=...' with its checkpoint part portable."""
    head, _, rest = key.partition("|")
    return f"{portable(head)}|{rest}" if rest else portable(head)


def portable_eval_record(ev: dict) -> dict:
    ev = dict(ev)
    if "ckpt" in ev:
        ev["ckpt"] = portable(ev["ckpt"])
    if "key" in ev:
        ev["key"] = portable_key(ev["key"])
    return ev


def portable_results(res: dict) -> dict:
    return {**res, "evaluations": {portable_key(k): portable_eval_record(v) for k, v in res["evaluations"].items()}}


def write_jsonl(path: str, rows: list):
    common.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect_eval(eval_dir: str, dest: str, ckpt_moves: dict = None):
    """An evaluation folder's results, episodes and settings, portable, into dest. ckpt_moves
    {old portable ckpt path: new one} renames checkpoints that were moved with their run."""
    moves = ckpt_moves or {}

    def move(ev):
        ev = portable_eval_record(ev)
        new = moves.get(ev.get("ckpt"))
        if new:
            ev["ckpt"] = new
        if "key" in ev:
            head, _, rest = ev["key"].partition("|")
            ev["key"] = f"{moves.get(head, head)}|{rest}"
        return ev
    os.makedirs(dest, exist_ok=True)
    res_path = os.path.join(eval_dir, "results.json")
    if os.path.exists(res_path):
        res = common.read_json(res_path)
        evs = {}
        for k, v in res["evaluations"].items():
            v = move({**v, "key": k})
            evs[v.pop("key")] = v
        common.write_json(os.path.join(dest, "results.json"), {**res, "evaluations": evs})
    ep_path = os.path.join(eval_dir, "episodes.jsonl")
    if os.path.exists(ep_path):
        write_jsonl(os.path.join(dest, "episodes.jsonl"), [move(r) for r in read_jsonl(ep_path)])
    for extra in ("settings.json",):
        if os.path.exists(os.path.join(eval_dir, extra)) and os.path.abspath(eval_dir) != os.path.abspath(dest):
            shutil.copyfile(os.path.join(eval_dir, extra), os.path.join(dest, extra))


@dataclass
class RunRecord:
    """run.json: what a committed run is (04_analyze.py reads "profile" from here first: a run
    made under a profile that was renamed since says so here, its config stays as written)."""
    step: int               # the step it reached
    steps: int              # its step budget
    final: bool
    weights_digest: str     # of its EMA weights (diffusion_policy.weights_digest): evaluations join on it
    profile: str
    method: str
    commit: str             # the repository's commit when it was collected


def run_record(ck: dict, digest: str) -> RunRecord:
    args = ck["config"]["args"]
    return RunRecord(step=int(ck["step"]), steps=int(args["steps"]), final=bool(ck["final"]), weights_digest=digest,
                     profile=args["profile"], method=args["method"], commit=git_commit())


def collect_run(run_dir: str, results: str = "results", checkpoint: bool = True, with_features: bool = True) -> str:
    """A finished 02_train.py run into <results>/train/<run>/: config (portable), metrics,
    run.json, the final EMA weights as ckpt.pt (with checkpoint), the feature sample (low-dim
    policies). Rerunnable: the same run gives the same files. Returns the destination."""
    src = os.path.join(run_dir, "ckpt.pt")
    ck = common.load_checkpoint(src)
    if not ck["final"]:
        raise common.UsageError(f"{src}: step {ck['step']} of {ck['config']['args']['steps']}, not finished")
    dest = os.path.join(results, "train", os.path.basename(os.path.normpath(run_dir)))
    os.makedirs(dest, exist_ok=True)
    policy, cfg, step = diffusion_policy.load_policy(src)
    digest = diffusion_policy.weights_digest(policy)
    cfg = portable_config(cfg)
    common.write_json(os.path.join(dest, "config.json"), cfg)
    if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) and \
            os.path.abspath(run_dir) != os.path.abspath(dest):
        shutil.copyfile(os.path.join(run_dir, "metrics.jsonl"), os.path.join(dest, "metrics.jsonl"))
    if checkpoint and os.path.abspath(run_dir) != os.path.abspath(dest):
        common.save_checkpoint({"ema": ck["ema"], "step": step, "config": cfg, "final": True},
                               os.path.join(dest, "ckpt.pt"))
    if with_features and not cfg["model"]["image_keys"]:
        feats, sets = run_features(src, results)
        save_features(os.path.join(dest, "features.npz"), feats, sets)
    old = os.path.join(dest, "run.json")
    keep = {k: v for k, v in (common.read_json(old) if os.path.exists(old) else {}).items()
            if k in ("profile", "note", "commit", "superseded_by", "superseded_reason", "control")}  # a rerun keeps
    # what the first collect said
    common.write_json(old, {**asdict(run_record(ck, digest)), **keep})
    return dest


# ----------------------------------------------------------------------------------------------
# reading results back (04_analyze.py): runs, their evaluations, the comparison each belongs to
# ----------------------------------------------------------------------------------------------
def read_run(folder: str) -> dict:
    """A run folder's record: its (upgraded) config, the step it reached, whether it finished,
    its weights digest and checkpoint. A folder with ckpt.pt (runs/train/<run>/, or a committed
    results/train/<run>/) is read from the checkpoint ("finished" = it reached its step budget);
    one without (a committed record whose weights were not kept) from config.json + run.json."""
    ckpt = os.path.join(folder, "ckpt.pt")
    rec_path = os.path.join(folder, "run.json")
    rec = common.read_json(rec_path) if os.path.exists(rec_path) else {}
    if os.path.isfile(ckpt):
        ck = common.load_checkpoint(ckpt)
        digest = rec.get("weights_digest") if rec.get("step") == ck["step"] else None
        if digest is None and ck["final"]:
            digest = diffusion_policy.weights_digest(diffusion_policy.load_policy(ckpt)[0])
        return {"cfg": ck["config"], "step": int(ck["step"]), "final": ck["final"], "digest": digest, "ckpt": ckpt,
                "profile": rec.get("profile") or ck["config"]["args"]["profile"], **superseded_by(rec)}
    if rec and os.path.exists(os.path.join(folder, "config.json")):
        return {"cfg": common.upgrade_config(common.read_json(os.path.join(folder, "config.json"))),
                "step": rec["step"], "final": rec["final"], "digest": rec["weights_digest"], "ckpt": None,
                "profile": rec.get("profile") or "cpu", **superseded_by(rec)}
    return None


def superseded_by(rec: dict) -> dict:
    """run.json's "superseded_by" (the run that replaces this one in every comparison, once it is
    finished) and "superseded_reason"; a superseded run stays readable in the alignment table. And
    "control": what the run controls for (a plan's `control`, e.g. C8's co-training at pre-train +
    fine-tune's step budget): it serves that comparison only, and never replaces the headline run."""
    return {"superseded_by": rec.get("superseded_by", ""), "superseded_reason": rec.get("superseded_reason", ""),
            "control": rec.get("control", "")}


def join_key(digest, ckpt: str) -> str:
    """How an evaluation finds its run: the weights digest; records made before digests existed
    (the cpu_v1 study) by the run folder of their checkpoint."""
    return digest or f"run:{os.path.basename(os.path.dirname(ckpt))}"


def read_evaluations(runs_dir: str) -> dict:
    """Every evaluation under <runs>/eval/*/results.json made as trained (the checkpoint's own
    label and execution), keyed by (weights digest, evaluated domain), then folder, then guidance."""
    evals = {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "eval", "*", "results.json"))):
        for ev in common.read_json(path)["evaluations"].values():
            if ev.get("as_trained") is False:  # another label or execution (03 --label / --n-action)
                continue
            where = os.path.dirname(path)
            evals.setdefault((join_key(ev.get("digest"), ev["ckpt"]), ev["domain"]), {}) \
                .setdefault(where, {})[ev["guidance"]] = {**ev, "where": where}
    return evals


def by_guidance(folders: dict) -> tuple:
    """A run's evaluations in one domain ({folder: {guidance: ev}}) as (each guidance value with its
    largest evaluation: a 200-episode evaluation beats a 100-episode sweep on its first seeds; the
    folder with the most guidance values, Fig. 10's sweep: every value on the same seeds)."""
    best, sweep = {}, {}
    for where in sorted(folders):
        for g, ev in folders[where].items():
            if g not in best or ev["trials"] > best[g]["trials"]:
                best[g] = ev
        if len(folders[where]) > len(sweep):
            sweep = folders[where]
    return best, dict(sweep)


def discover(runs_dir: str, only_ckpts: list = None) -> tuple:
    """One record per finished run (<runs>/train/*/, or the given checkpoints) with its config
    and its evaluations in its own target domain (<runs>/eval/*/results.json, joined by weights
    digest), keyed by guidance; and the runs still training (skipped)."""
    if only_ckpts:
        for c in only_ckpts:
            if os.path.isdir(c):
                raise common.UsageError(f"{c} is a folder: give the checkpoint file in it "
                                        f"(e.g. {os.path.join(c, 'ckpt.pt')})")
            if not os.path.isfile(c):
                raise common.UsageError(f"checkpoint not found: {c}")
        folders = [os.path.dirname(os.path.abspath(c)) for c in only_ckpts]
    else:
        folders = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(runs_dir, "train", "*", "config.json")))
        folders += sorted(os.path.dirname(p) for p in glob.glob(os.path.join(runs_dir, "train", "*", "ckpt.pt"))
                          if not os.path.exists(os.path.join(os.path.dirname(p), "config.json")))
    evals = read_evaluations(runs_dir)
    runs, unfinished = [], []
    for folder, given in zip(folders, only_ckpts or [None] * len(folders)):
        rec = read_run(folder) if given is None or os.path.basename(given) == "ckpt.pt" else None
        if given is not None and rec is None:  # an explicit snapshot ckpt_<step>.pt
            ck = common.load_checkpoint(given)
            rec = {"cfg": ck["config"], "step": int(ck["step"]), "final": True, "ckpt": given,
                   "profile": ck["config"]["args"]["profile"],
                   "digest": diffusion_policy.weights_digest(diffusion_policy.load_policy(given)[0])}
        if rec is None:
            continue
        cfg, args = rec["cfg"], rec["cfg"]["args"]
        name = os.path.basename(folder)
        if not rec["final"]:
            unfinished.append(f"{name} (step {rec['step']} of {args['steps']})")
            continue
        by_g, sweep = by_guidance(evals.get((join_key(rec["digest"], os.path.join(folder, "ckpt.pt")),
                                             args["target_domain"]), {}))
        runs.append({"ckpt": rec["ckpt"], "folder": folder, "run": name, "cfg": cfg, "step": rec["step"],
                     "digest": rec["digest"], "profile": rec["profile"],
                     "task": args["task"], "target_domain": args["target_domain"], "method": method_of(cfg),
                     "arch": args["arch"], "mixing_ratio": cfg["mixing_ratio"], "use_label": cfg["model"]["use_label"],
                     "n_target": cfg["data"]["target"]["num_demos"], "n_source": cfg["data"]["source"]["num_demos"],
                     "evals": by_g, "sweep": sweep, "eval": by_g.get(cfg.get("guidance_scale")),
                     "superseded_by": rec["superseded_by"], "superseded_reason": rec["superseded_reason"],
                     "control": rec["control"]})
    return mark_superseded(runs), unfinished


def mark_superseded(runs: list) -> list:
    """Runs that differ only in their step budget (the study's real_only at 20k beside the earlier
    15k one) compare through the one trained longest, and a run whose run.json names a finished
    run that supersedes it (a method fixed since: "superseded_by") through that one; the others get
    superseded=True and stay in the alignment table only. A control run (run.json "control") takes no
    part: it is not superseded and supersedes nothing. headline = neither: the run of its table cell.
    replicate: a headline run trained with another seed beside a headline run of a lower seed that
    is otherwise the same (the image study's C2 seeds): the tables and the sweep use the lowest
    seed's run; C2's comparison uses every seed (tables.comparisons)."""
    finished = {r.get("run") for r in runs}
    replaced = {r.get("run") for r in runs if r.get("superseded_by") and r["superseded_by"] in finished}
    def key(r, seed=True):
        a = r["cfg"]["args"]
        return (setting(r), r["method"], round(r["mixing_ratio"], 6), r["arch"], r["n_target"], r["n_source"],
                a["seed"] if seed else None, a.get("disc_weight"), r["cfg"].get("guidance_scale"),
                a.get("init_from", ""), data_version(r))
    longest = {}
    for r in runs:
        k = key(r)
        if r.get("run") in replaced or r.get("control"):
            continue
        if k not in longest or r["step"] > longest[k]["step"]:
            longest[k] = r
    for r in runs:
        r["superseded"] = not r.get("control") and (r.get("run") in replaced or longest[key(r)] is not r)
        r["headline"] = not r["superseded"] and not r.get("control")
    lowest = {}
    for r in runs:
        if r["headline"]:
            k = key(r, seed=False)
            lowest[k] = min(lowest.get(k, r["cfg"]["args"]["seed"]), r["cfg"]["args"]["seed"])
    for r in runs:
        r["replicate"] = r["headline"] and r["cfg"]["args"]["seed"] > lowest[key(r, seed=False)]
    return runs


def data_version(r: dict) -> str:
    """The data a run trained on: its target / source dataset digests (8 hex digits each). The same
    command makes other bits on another CPU (docs/datasets.md), so comparisons say when they mix."""
    d = r["cfg"].get("data", {})
    return "/".join(d.get(k, {}).get("digest", "?")[:8] for k in ("target", "source"))


def setting(r: dict) -> str:
    """The comparison a run belongs to: task / target domain, and its profile when that is not the
    cpu recipe (never mix profiles inside one comparison: image policies are their own)."""
    return f"{r['task']}/{r['target_domain']}" + ("" if r["profile"] == "cpu" else f" ({r['profile']})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["collect"] and len(argv) >= 2:
        for run_dir in argv[1:]:
            print(collect_run(run_dir))
    elif argv[:1] == ["collect-into"] and len(argv) >= 3:
        for run_dir in argv[2:]:
            print(collect_run(run_dir, argv[1]))
    elif argv[:1] == ["check"]:
        bad = find_machine_paths(argv[1] if len(argv) > 1 else os.path.join(REPO, "results"))
        print("\n".join(bad[:50]) or "no machine paths")
        sys.exit(1 if bad else 0)
    else:
        common.die("usage: python records.py collect RUN_DIR [RUN_DIR ...] | collect-into DIR RUN_DIR [...] "
                   "| check [DIR]")


if __name__ == "__main__":
    try:
        main()
    except common.UsageError as e:
        common.die(str(e))
