"""Bring results/ into the layout of records.py (rerunnable: a second run changes nothing).

    python tools/migrate_results.py            # needs data/ only for the feature samples
    python tools/migrate_results.py --check-against 0dc25e9   # every number as at that commit

What it does, and why each step keeps every number:
  1. The committed EMA checkpoints move from results/checkpoints/<run>/ckpt.pt to their run's
     results/train/<run>/ckpt.pt (same bytes), and results/checkpoints/README.md to results/train/.
  2. Every evaluation record (results.json, episodes.jsonl anywhere under results/) names its
     checkpoint portably: the machine's absolute path becomes the repo-relative one, the moved
     checkpoints their new path; weights digests, seeds, successes are copied as they are.
  3. Each committed run gets run.json (step reached, finished, weights digest) and, for low-dim
     policies, features.npz: its checkpoint's stem and trunk features on the task's fixed
     observation sets, results/obs_sets/<task>/<domain>.npz (made from data/ once, then committed).
  4. The cpu_v1 study (RESULTS "Training" .. "Representation alignment"; its checkpoints were not
     kept): its analysis moves to results/cpu_v1/analysis/, each of its runs gets run.json (profile
     cpu_v1: the recipe was called cpu when it ran; no digest: its evaluations predate digests and
     are joined by run name) and alignment.json (its row of the committed alignment table, with the
     settings it was made with).
  5. An evaluation folder whose record was committed under another name (r05.json) gets
     results.json, the name 04_analyze.py reads.
  6. The image policy's metrics (results/analysis_img/alignment.json) go into its run folder the
     same way.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import diffusion_policy  # noqa: E402
import records  # noqa: E402

R = os.path.join(records.REPO, "results")
OLD_REPOS = ("/work/main/",)  # where the records were written before they were portable


def rel(path: str) -> str:
    """An old absolute path -> repo-relative (the records were written from the repository root)."""
    for root in OLD_REPOS + (records.REPO + "/",):
        if path.startswith(root):
            return path[len(root):]
    return records.portable(path)


def git_mv(src: str, dst: str):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if subprocess.run(["git", "-C", records.REPO, "mv", src, dst], capture_output=True).returncode:
        shutil.move(src, dst)


def move_checkpoints() -> dict:
    moves = {}
    for ck in sorted(glob.glob(os.path.join(R, "checkpoints", "*", "ckpt.pt"))):
        run = os.path.basename(os.path.dirname(ck))
        dst = os.path.join(R, "train", run, "ckpt.pt")
        git_mv(ck, dst)
        moves[f"results/checkpoints/{run}/ckpt.pt"] = f"results/train/{run}/ckpt.pt"
    readme = os.path.join(R, "checkpoints", "README.md")
    if os.path.exists(readme):
        git_mv(readme, os.path.join(R, "train", "README.md"))
    for ck in glob.glob(os.path.join(R, "train", "*", "ckpt.pt")):  # rerun: the moves done before
        run = os.path.basename(os.path.dirname(ck))
        moves[f"results/checkpoints/{run}/ckpt.pt"] = f"results/train/{run}/ckpt.pt"
    return moves


def fix_record(ev: dict, moves: dict, digests: dict) -> dict:
    """One evaluation record (results.json entry or episodes.jsonl line) with portable names."""
    ev = dict(ev)
    if "ckpt" in ev:
        ev["ckpt"] = fix_path(ev["ckpt"], moves, ev.get("digest"), digests)
    if "key" in ev:
        head, _, rest = ev["key"].partition("|")
        ev["key"] = f"{fix_path(head, moves, ev.get('digest'), digests)}|{rest}"
    return ev


def fix_path(path: str, moves: dict, digest, digests: dict) -> str:
    p = rel(path)
    p = moves.get(p, p)
    # a runs/train/<run>/ckpt.pt whose weights are committed as results/train/<run>/ckpt.pt
    if p.startswith("runs/train/") and p.endswith("/ckpt.pt"):
        run = p.split("/")[2]
        if digest is not None and digests.get(run) == digest:
            p = f"results/train/{run}/ckpt.pt"
    return p


def one_name_per_evaluation():
    """An evaluation folder of a study (results/eval, results/cpu_v1/eval) holds results.json: one
    whose record was committed under another name (r05.json) gets the name 04_analyze.py reads."""
    for folder in sorted(glob.glob(os.path.join(R, "eval", "*")) + glob.glob(os.path.join(R, "cpu_v1", "eval", "*"))):
        if os.path.exists(os.path.join(folder, "results.json")):
            continue
        named = [f for f in glob.glob(os.path.join(folder, "*.json")) if f.endswith(".json")
                 and isinstance(common.read_json(f), dict) and "evaluations" in common.read_json(f)]
        if len(named) == 1:
            git_mv(named[0], os.path.join(folder, "results.json"))


def fix_evaluations(moves: dict, digests: dict) -> int:
    n = 0
    for path in sorted(glob.glob(os.path.join(R, "**", "*.json"), recursive=True)):
        res = common.read_json(path)
        if not isinstance(res, dict) or not isinstance(res.get("evaluations"), dict):
            continue  # not an evaluation record (any file name: results.json, r05.json, ...)
        evs = {}
        for k, v in res["evaluations"].items():
            v = fix_record({**v, "key": k}, moves, digests)
            evs[v.pop("key")] = v
        new = {**res, "evaluations": evs}
        if new != res:
            common.write_json(path, new)
            n += 1
    for path in sorted(glob.glob(os.path.join(R, "**", "*.jsonl"), recursive=True)):
        rows = records.read_jsonl(path)
        if not rows or "key" not in rows[0]:
            continue  # not an episodes file (metrics.jsonl, ...)
        new = [fix_record(r, moves, digests) for r in rows]
        if new != rows:
            records.write_jsonl(path, new)
            n += 1
    return n


def committed_runs(moves: dict) -> dict:
    """{run: weights digest} of every run under results/train with a checkpoint; writes run.json,
    a portable config.json and (low-dim policies, if the observation sets can be had) features."""
    digests = {}
    for ck_path in sorted(glob.glob(os.path.join(R, "train", "*", "ckpt.pt"))):
        folder = os.path.dirname(ck_path)
        ck = common.load_checkpoint(ck_path)
        policy = diffusion_policy.load_policy(ck_path)[0]
        digest = diffusion_policy.weights_digest(policy)
        digests[os.path.basename(folder)] = digest
        # the config.json as written (not upgraded: it is the run's own record), portable paths
        cfg_path = os.path.join(folder, "config.json")
        cfg = common.read_json(cfg_path) if os.path.exists(cfg_path) else ck["config"]
        common.write_json(cfg_path, records.portable_config(cfg))
        old = os.path.join(folder, "run.json")
        keep = common.read_json(old) if os.path.exists(old) else {}
        rec = {**asdict(records.run_record(ck, digest)), "commit": keep.get("commit", ""),
               **{k: keep[k] for k in ("note",) if k in keep}}
        common.write_json(old, rec)
        feat = os.path.join(folder, "features.npz")
        if not ck["config"]["model"]["image_keys"] and not os.path.exists(feat):
            try:
                feats, sets = records.run_features(ck_path, R)
                records.save_features(feat, feats, sets)
            except common.UsageError as e:
                print(f"  no features for {os.path.basename(folder)}: {e}")
    return digests


def cpu_v1_study():
    """results/cpu_v1: analysis moved in, run.json and alignment.json per run."""
    v1 = os.path.join(R, "cpu_v1")
    if os.path.isdir(os.path.join(R, "analysis")) and not os.path.isdir(os.path.join(v1, "analysis")):
        git_mv(os.path.join(R, "analysis"), os.path.join(v1, "analysis"))
    digests = {}  # none: these evaluations predate weights digests (04_analyze joins them by run name)
    for path in glob.glob(os.path.join(v1, "eval", "*", "results.json")):
        for ev in common.read_json(path)["evaluations"].values():
            if ev.get("digest"):
                digests[ev["ckpt"].split("/")[-2]] = ev["digest"]
    apath = os.path.join(v1, "analysis", "alignment.json")
    for cfg_path in sorted(glob.glob(os.path.join(v1, "train", "*", "config.json"))):
        folder = os.path.dirname(cfg_path)
        run = os.path.basename(folder)
        cfg = common.read_json(cfg_path)
        common.write_json(cfg_path, records.portable_config(cfg))
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            last = [json.loads(x) for x in f if x.strip()][-1]["step"]
        steps = cfg["args"]["steps"]
        common.write_json(os.path.join(folder, "run.json"), {
            "step": last, "steps": steps, "final": last >= steps, "weights_digest": digests.get(run),
            "profile": "cpu_v1", "method": cfg["args"]["method"], "commit": "",
            "note": "made when this recipe was the cpu profile (today's cpu_v1); weights not kept"})
    kept_alignment(apath, os.path.join(v1, "train"),
                   "measured by 04_analyze.py from the checkpoint on data/ before its weights were dropped")


def without_names(o):
    """A record with its checkpoint names (ckpt fields, keys' path part) taken out."""
    if isinstance(o, dict):
        return sorted((k.split("|", 1)[1] if "|" in k else k, without_names(v))
                      for k, v in o.items() if k not in ("ckpt", "key"))
    if isinstance(o, list):
        return [without_names(x) for x in o]
    return o


def check_against(rev: str) -> int:
    """Every evaluation file changed since `rev` holds the same numbers once names are set aside."""
    out = subprocess.run(["git", "-C", records.REPO, "diff", "--name-only", rev, "--", "results"],
                         capture_output=True, text=True, check=True).stdout.split()
    bad = n = 0
    for f in out:
        if not f.endswith((".json", ".jsonl")) or not os.path.exists(os.path.join(records.REPO, f)):
            continue
        old = subprocess.run(["git", "-C", records.REPO, "show", f"{rev}:{f}"], capture_output=True, text=True)
        if old.returncode:
            continue  # a file the migration added
        with open(os.path.join(records.REPO, f)) as fh:
            new = fh.read()
        load = (lambda t: [json.loads(x) for x in t.splitlines() if x.strip()]) if f.endswith(".jsonl") else json.loads
        n += 1
        if without_names(load(old.stdout)) != without_names(load(new)):
            bad += 1
            print(f"numbers differ: {f}")
    print(f"{n} record files changed since {rev}: {n - bad} hold the same numbers, {bad} differ")
    return bad


def kept_alignment(table: str, train: str, note: str):
    """Each row of a committed alignment table -> <train>/<run>/alignment.json, with the settings
    04_analyze.py used then (its defaults: 2048 samples per domain, seed 0, exact GW)."""
    if not os.path.exists(table):
        return
    keys = ("w_stem", "w_trunk", "gw_stem", "gw_trunk", "probe_trunk")
    for row in common.read_json(table):
        folder = os.path.join(train, row["run"])
        if os.path.isdir(folder):
            common.write_json(os.path.join(folder, "alignment.json"), {
                "num_samples": 2048, "seed": 0, "gw_method": "exact",
                "metrics": {k: row[k] for k in keys}, "note": note})


def main():
    if sys.argv[1:2] == ["--check-against"]:
        sys.exit(1 if check_against(sys.argv[2]) else 0)
    moves = move_checkpoints()
    digests = committed_runs(moves)
    one_name_per_evaluation()
    n = fix_evaluations(moves, digests)
    cpu_v1_study()
    # 5. the image policy's metrics (results/analysis_img/, measured on its image training windows
    #    from data/; image observation sets are not kept): into its run folder, so the rebuilt
    #    tables carry them
    kept_alignment(os.path.join(R, "analysis_img", "alignment.json"), os.path.join(R, "train"),
                   "measured by 04_analyze.py on the image policy's training windows from data/ "
                   "(RESULTS 'Image policies')")
    print(f"{len(moves)} checkpoints under results/train, {len(digests)} committed runs, "
          f"{n} evaluation files rewritten")
    bad = records.find_machine_paths(R)
    print("\n".join(bad[:20]) or "no machine paths left under results/")


if __name__ == "__main__":
    main()
