"""Stage 04: representation alignment, discernibility, correlations, the paper's tables and figures
(paper Sec. 4.1-4.2, 5.2, App. D.2, D.4-D.6).

    python 04_analyze.py --runs runs/ --out results/analysis/          # whatever the runs support
    python 04_analyze.py --only guidance --ckpt runs/train/<cfg_adda run>/ckpt.pt

Reads runs/train/*/ckpt.pt (02_train.py) and runs/eval/*/results.json (03_eval.py); writes, each as
markdown (for RESULTS.md) and JSON, with PNG figures:
  alignment     W and GW between source and target features at the two feature points (after the
                vision stem; trunk output), domain-probe accuracy (2-layer MLP and linear), the
                task-state probe (error of a linear readout of the peg's xy, tasks.PROBE_STATE), success
                (Fig. 6 right, Fig. 17)
  umap          UMAP of source vs target trunk features per checkpoint, grid across ratios (Fig. 6)
  correlations  Pearson / Spearman of log W and log GW (trunk, stem) vs success over the ratio sweep
                and over every checkpoint of a setting (Fig. 7; the scatter: alignment_vs_ratio.png)
  regimes       alignment (W) vs discernibility (probe) coloured by success (Fig. 16)
  methods       success per method x mixing ratio (Fig. 9 / Table 2 form), and the domain
                discriminator's accuracy and BCE over training of every adversarial run
                (discriminator.png), OT's plan entropy over training (ot_plan.png)
  table1        co-training vs +discrimination (Table 1), the paper's numbers beside
  table2        every method at one mixing ratio (Table 2's form), the paper's sim-and-real numbers beside
  table3        sim pre-training + real fine-tuning vs co-training (Table 3, App. D.4)
  comparisons   the paper's claimed differences, each a Fisher exact test on the episodes
  guidance      success against the guidance scale lambda (Fig. 10)
  guideline     the ratio guideline's range vs the best measured ratio (Fig. 15, App. D.5)
  repeats       a determinism check: episodes of one checkpoint, domain and guidance run twice on the
                same seeds (in two evaluation folders) must agree episode for episode
  failures      where NutAssembly episodes failed (grasp, lift, the nut's closest pass over the peg's
                axis), per evaluation whose episodes record the nut's path
  compute       what each committed run cost: training wall minutes and samples/s (its metrics.jsonl),
                evaluation seconds per episode (its episodes.jsonl)
and missing.md: which table lacks which runs, with the command that makes them.

Alignment metrics (App. D.2): a sample of features from each domain, each domain standardized on
its own; the Wasserstein distance between the two point clouds (global alignment) and the
Gromov-Wasserstein distance between their intra-domain distance matrices, both normalized by the
pooled mean distance (local geometry, comparable across policies). The features are each run's
committed sample (records.py: its checkpoint on fixed source and target observation sets), so
`--runs results` rebuilds everything from the repository alone, without runs/ or data/. Metrics
and UMAP embeddings are cached per run under <out>/analysis_cache.

Split by concept (this file: the features, the feature tables and the stage): the metrics in
alignment.py, the tables from evaluations alone (Tables 1-3, methods, comparisons, guidance,
guideline) in tables.py, the claims' rules in claims.py, the figures in figures.py, reading runs
and evaluations back in records.py (`discover`), where each method goes in tables and plots in
methods.py.
"""
import glob
import json
import os
import statistics
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import claims
import common
import diffusion_policy
import methods
import records
import tasks
from alignment import (  # noqa: F401
    correlation,
    domain_probe,
    exact_p,
    gromov_wasserstein,
    standardize,
    state_probe,
    wasserstein,  # App. D.2's metrics and Sec. 4.2's probe (alignment.py; tests use them here)
)
from common import UsageError, arg, die
from figures import (
    disc_curves,
    metric_curves,
    plot_alignment,
    plot_discriminator,
    plot_guidance,
    plot_guideline,
    plot_methods,
    plot_ot_entropy,
    plot_regimes,
    plot_umaps,
)
from methods import METHODS, in_ratio_sweep
from records import data_version, discover, setting
from tables import (  # noqa: F401 (the tables without features; tests reach them through this stage)
    PAPER_CORRELATION,
    PAPER_DOMAIN,
    cell,
    comparisons,
    fisher_exact,
    guidance_table,
    guideline_table,
    holm,
    markdown_table,
    methods_table,
    table1,
    table2,
    table3,
    train_cmd,
)

# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------
PRODUCTS = ["alignment", "umap", "correlations", "regimes", "methods", "table1", "table2", "table3", "comparisons",
            "guidance", "guideline", "repeats", "compute", "failures", "claims"]


# The products that bear on each claim of the paper (claims.py): --claim C8. Each rebuilds the
# claims table too (its other rows from the tables already under --out).
CLAIM_PRODUCTS = {"C2": ["table2", "comparisons"], "C3": ["guideline", "methods", "comparisons"],
                  "C4": ["alignment", "correlations", "regimes"], "C5": ["alignment"],
                  "C6": ["table2", "comparisons", "guidance", "methods", "failures"],
                  "C7": ["table1", "comparisons", "methods"], "C8": ["table3", "comparisons"]}
CLAIM_PRODUCTS = {c: ps + ["claims"] for c, ps in CLAIM_PRODUCTS.items()}
CLAIM_INPUTS = ["comparisons", "guideline", "correlations", "alignment"]  # the tables claims.py reads
TOYS = {"the paper's design": "toy_paper", "our design": "toy"}  # 00_toy.py's folders under --runs


CLAIMS_BEGIN, CLAIMS_END = "<!-- claims: written by 04_analyze.py --report -->", "<!-- /claims -->"


@dataclass
class Args:
    profile: str = "cpu"
    runs: str = arg("runs", "folder with train/ and eval/ run folders (02_train.py, 03_eval.py)")
    out: str = arg("results/analysis", "where the tables (markdown + JSON) and figures go")
    ckpt: list = arg([], "only these checkpoints (default: every runs/train/*/ckpt.pt)")
    only: list = arg([], "build only these: " + ", ".join(PRODUCTS) + " (default: all the runs support)")
    claim: str = arg("", "build only the products of this claim of the paper (CLAIM_PRODUCTS: C2 ... C8)")
    num_samples: int = arg(2048, "feature samples per domain (App. D.2: a large batch)")
    gw_method: str = arg("exact", "Gromov-Wasserstein solver: exact | subsample (faster, biased: "
                                  "bench/bench_analyze.py)")
    cache: str = arg("", "cache folder of features, metrics and embeddings (default <out>/analysis_cache)")
    seed: int = arg(0, "seed of the feature samples, GW subsets, the probe and UMAP")
    report: str = arg("", "a markdown report (RESULTS.md) whose claims block, between the lines "
                          f"{CLAIMS_BEGIN} and {CLAIMS_END}, gets the claims table (make analysis)")


PROFILES = {"paper": {}, "cpu": {}, "smoke": dict(num_samples=64)}


def check_args(a: Args):
    common.check_writable(a.out)
    if a.cache:
        common.check_writable(a.cache, "--cache")
    if a.num_samples < 16:
        raise UsageError(f"--num-samples must be at least 16, got {a.num_samples}")
    if a.gw_method not in ("exact", "subsample"):
        raise UsageError(f"--gw-method must be exact or subsample, got {a.gw_method!r}")
    if a.claim:
        if a.claim not in CLAIM_PRODUCTS:
            raise UsageError(f"--claim: unknown {a.claim!r}; choose from {', '.join(CLAIM_PRODUCTS)}")
        a.only = sorted(set(a.only) | set(CLAIM_PRODUCTS[a.claim]))
    bad = [p for p in a.only if p not in PRODUCTS]
    if bad:
        raise UsageError(f"--only: unknown {', '.join(bad)}; choose from {', '.join(PRODUCTS)}")
    if a.report:
        if not os.path.isfile(a.report):
            raise UsageError(f"--report: no file {a.report}")
        text = open(a.report).read()
        if text.count(CLAIMS_BEGIN) != 1 or text.count(CLAIMS_END) != 1:
            raise UsageError(f"--report: {a.report} needs one line {CLAIMS_BEGIN} and one {CLAIMS_END} around "
                             "its claims table")
        if not os.access(a.report, os.W_OK):
            raise UsageError(f"--report: {a.report} is not writable")


# ----------------------------------------------------------------------------------------------
# features at the two feature points (Sec. 4.1), cached per checkpoint
# ----------------------------------------------------------------------------------------------
def extract_features(ckpt: str, num_samples: int, seed: int = 0, cache_dir: str = "", step: int = None) -> dict:
    """Encode `num_samples` random training windows of each domain with the checkpoint's EMA
    policy (eval mode, center crop): {domain: {"stem": (n, d), "trunk": (n, d)}}, each flattened
    over the observation history. Cached as <cache_dir>/<run>_step<k>_n<n>_s<seed>.npz (with the
    checkpoint's `step` given, a cached result is read without loading the checkpoint)."""
    run = os.path.basename(os.path.dirname(os.path.abspath(ckpt)))

    def cache_path(k):
        return os.path.join(cache_dir, f"{run}_step{k}_n{num_samples}_s{seed}.npz") if cache_dir else ""
    path = cache_path(step) if step is not None else ""
    if not (path and os.path.exists(path)):
        policy, cfg, step = diffusion_policy.load_policy(ckpt)
        path = cache_path(step)
    if path and os.path.exists(path):
        with np.load(path) as f:
            return {d: {p: f[f"{d}_{p}"] for p in ("stem", "trunk")} for d in ("target", "source")}
    m = cfg["model"]
    rng = np.random.default_rng(seed)
    out = {}
    for domain in ("target", "source"):
        ds = common.load_demos(cfg["data"][domain]["path"], m["lowdim_keys"] + m["image_keys"],
                               m["n_obs"], m["horizon"])
        idx = rng.choice(len(ds), num_samples, replace=len(ds) < num_samples)
        stems, trunks = [], []
        with torch.no_grad():
            for i in range(0, num_samples, 512):
                stem, z = policy.encode(common.gather(ds, idx[i:i + 512])["obs"])
                stems.append(stem.flatten(1).numpy())
                trunks.append(z.flatten(1).numpy())
        out[domain] = {"stem": np.concatenate(stems), "trunk": np.concatenate(trunks)}
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, **{f"{d}_{p}": v for d, f in out.items() for p, v in f.items()})
        os.replace(tmp, path)
    return out


def alignment_row(feats: dict, gw_method: str = "exact", seed: int = 0) -> dict:
    """W and GW between source and target at both feature points, and the probes on the trunk."""
    row = {}
    for point in ("stem", "trunk"):
        xs, xt = standardize(feats["source"][point]), standardize(feats["target"][point])
        row[f"w_{point}"] = wasserstein(xs, xt)
        row[f"gw_{point}"] = gromov_wasserstein(xs, xt, gw_method, seed=seed)
    return {**row, **probe_row(feats, seed)}


def state_row(r: dict, feats: dict, roots: list, seed: int = 0) -> dict:
    """The task-state probe on the trunk features (alignment.state_probe): mean held-out error in
    mm of a linear readout of tasks.PROBE_STATE (NutAssembly: the peg's xy) from both domains'
    features; None where the features are not of the fixed observation sets (image policies)."""
    key, dims = tasks.PROBE_STATE.get(r["task"], (None, None))
    root = next((x for x in roots if all(os.path.exists(records.obs_set_path(x, r["task"], d))
                                         for d in (r["target_domain"], "source"))), None)
    if key is None or root is None or r["cfg"]["model"]["image_keys"]:
        return {"state_probe_mm": None}
    n = len(feats["target"]["trunk"])
    ys, yt = (records.load_obs_set(records.obs_set_path(root, r["task"], d))[key][:n, -1][:, list(dims)]
              for d in ("source", r["target_domain"]))
    return {"state_probe_mm": 1000 * state_probe(feats["source"]["trunk"], feats["target"]["trunk"], ys, yt,
                                                  seed=seed)}


def probe_row(feats: dict, seed: int = 0) -> dict:
    """Sec. 4.2's discernibility on the trunk features: the 2-layer MLP probe and a linear one,
    each 5-fold cross-validated (the mean, and the folds' spread: *_sd)."""
    zs, zt = feats["source"]["trunk"], feats["target"]["trunk"]
    mlp, mlp_sd = domain_probe(zs, zt, seed=seed)
    linear, linear_sd = domain_probe(zs, zt, seed=seed, hidden=0)
    return {"probe_trunk": mlp, "probe_trunk_sd": mlp_sd, "probe_trunk_linear": linear,
            "probe_trunk_linear_sd": linear_sd}


def umap_embedding(feats: dict, seed: int = 0, cache: str = "") -> np.ndarray:
    """2-D UMAP (McInnes et al.) of the pooled source + target trunk features, standardized
    together so a shift between the domains stays visible (Fig. 6): rows are target then source.
    Saved to `cache` if given."""
    with warnings.catch_warnings():  # umap's notes on numba / n_jobs with a fixed seed
        warnings.simplefilter("ignore")
        import umap  # noqa: PLC0415 (slow: umap-learn compiles with numba on import (~10 s); one figure needs it)
    x = np.concatenate([feats["target"]["trunk"], feats["source"]["trunk"]]).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(x).astype(np.float32)
    if cache:
        tmp = cache + ".tmp.npy"
        np.save(tmp, emb)
        os.replace(tmp, cache)
    return emb


# ----------------------------------------------------------------------------------------------
# tables: each returns (json rows, markdown, missing runs)
# ----------------------------------------------------------------------------------------------
def cache_dir(a) -> str:
    return a.cache or os.path.join(a.out, "analysis_cache")


def run_features(r: dict, a) -> tuple:
    """A run's feature sample ({domain: {stem, trunk}}, first --num-samples rows) and where it
    came from; (None, reason) when there is none. In order: the committed features.npz; its
    checkpoint on the task's fixed observation sets (records.py: <runs>/obs_sets, results/obs_sets,
    or made from data/ into the cache); an image policy's training windows from data/."""
    path = os.path.join(r["folder"], "features.npz")
    feats, where = None, ""
    if os.path.exists(path):
        feats, where = records.load_features(path), "features.npz"
    elif r["ckpt"] and not r["cfg"]["model"]["image_keys"]:
        cache = os.path.join(cache_dir(a), f"{r['run']}_{r['digest']}_features.npz")
        if not os.path.exists(cache):
            roots = [a.runs, os.path.join(records.REPO, "results")]
            root = next((x for x in roots if all(os.path.exists(records.obs_set_path(x, r["task"], d))
                                                   for d in (r["target_domain"], "source"))), cache_dir(a))
            try:
                f, sets = records.run_features(r["ckpt"], root)
            except UsageError:
                return None, (f"no observation sets results/obs_sets/{r['task']}/ and no dataset under data/ "
                              f"to make them from (make data, then python tools/migrate_results.py)")
            records.save_features(cache, f, sets)
        feats, where = records.load_features(cache), "checkpoint on the fixed observation sets"
    elif r["ckpt"]:
        try:
            feats, where = extract_features(r["ckpt"], a.num_samples, a.seed, cache_dir(a), r["step"]), "data/"
        except UsageError as e:
            return None, str(e)
    else:
        return None, "no features.npz and no checkpoint"
    n = min(a.num_samples, len(feats["target"]["trunk"]))
    return {d: {p: v[:n] for p, v in f.items()} for d, f in feats.items()}, where


def alignment_rows(runs: list, a) -> tuple:
    """One row per run: W, GW (stem, trunk), the probe, success. Metrics come from the run's
    features (cached per run, weights and settings under <out>/analysis_cache: exact GW takes
    ~20-40 s), or, for a committed record without features, from its alignment.json (measured
    when its weights existed). Returns (rows, missing)."""
    rows, missing = [], []
    for r in tqdm(runs, desc="alignment"):
        key = os.path.join(cache_dir(a), f"{r['run']}_{r['digest']}_n{a.num_samples}_s{a.seed}_{a.gw_method}.json")
        kept = os.path.join(r["folder"], "alignment.json")
        settings = {"num_samples": a.num_samples, "seed": a.seed, "gw_method": a.gw_method}
        roots = [a.runs, os.path.join(records.REPO, "results")]
        if os.path.exists(key):
            metrics = common.read_json(key)
            if "probe_trunk_sd" not in metrics or "state_probe_mm" not in metrics:  # cached before
                feats, _ = run_features(r, a)                                         # them: add what
                if feats is not None:                                                 # is missing
                    if "probe_trunk_sd" not in metrics:  # (the probes before: one held-out split)
                        metrics = {**metrics, **probe_row(feats, a.seed)}
                    if "state_probe_mm" not in metrics:
                        metrics = {**metrics, **state_row(r, feats, roots, a.seed)}
                    common.write_json(key, metrics)
        elif os.path.exists(kept) and not os.path.exists(os.path.join(r["folder"], "features.npz")) \
                and all(common.read_json(kept).get(k) == v for k, v in settings.items()):
            metrics = common.read_json(kept)["metrics"]
        else:
            feats, where = run_features(r, a)
            if feats is None:
                missing.append(f"alignment {r['run']}: no features ({where})")
                continue
            metrics = {**alignment_row(feats, a.gw_method, a.seed), **state_row(r, feats, roots, a.seed)}
            common.write_json(key, metrics)
        ev, args = r["eval"], r["cfg"]["args"]
        rows.append({"run": r["run"], "setting": setting(r), "task": r["task"], "target_domain": r["target_domain"],
                     "method": r["method"], "arch": r["arch"], "mixing_ratio": r["mixing_ratio"], "steps": r["step"],
                     "superseded": r["superseded"], "headline": r["headline"] and not r["replicate"],
                     "data": data_version(r),
                     "note": "superseded" if r.get("superseded") else (f"control ({r['control']})" if r.get("control")
                                                                       else f"seed {args['seed']} (C2's replicate)"
                                                                       if r["replicate"] else None),
                     "disc_weight": args["disc_weight"] if METHODS[args["method"]].disc else None,
                     "success": ev["success_rate"] if ev else None, "trials": ev["trials"] if ev else None,
                     **metrics})
    return rows, missing


ALIGN_COLS = ["setting", "method", "mixing_ratio", "steps", "success", "trials", "w_stem", "w_trunk",
              "gw_stem", "gw_trunk", "probe_trunk", "probe_trunk_sd", "probe_trunk_linear", "state_probe_mm", "data",
              "note"]
ALIGN_FMT = {"mixing_ratio": "{:.3g}", "success": "{:.3f}", "w_stem": "{:.3f}", "w_trunk": "{:.3f}",
             "gw_stem": "{:.4f}", "gw_trunk": "{:.4f}", "probe_trunk": "{:.3f}", "probe_trunk_sd": "{:.3f}",
             "probe_trunk_linear": "{:.3f}", "state_probe_mm": "{:.2f}"}


CORR_METRICS = (("W trunk", "w_trunk"), ("GW trunk", "gw_trunk"), ("W stem", "w_stem"), ("GW stem", "gw_stem"))


def correlations(rows: list) -> tuple:
    """Fig. 7: alignment vs success per setting, over two sets of evaluated checkpoints: the
    mixing-ratio sweep (co-training at every ratio, w = 0 and 1 its ends: the paper's form) and every
    checkpoint of the setting (each method too), for W and GW at the trunk and the stem. Sign
    convention: a distance D is correlated as log D with success ("pearson", "spearman": negative when
    the better aligned policies succeed more), and in the paper's direction, alignment = -log D
    ("pearson_alignment", "spearman_alignment": positive when alignment goes with success, as the
    paper's 0.6-0.8). A metric that is the same for every checkpoint (the low-dim identity stem; up
    to a relative 1e-6, the float noise of features extracted on different CPUs) has no
    correlation and says so."""
    groups, out, missing = {}, [], []
    for r in rows:
        if r["success"] is not None and r["headline"]:
            groups.setdefault(r["setting"], []).append(r)
    for name, rs in sorted(groups.items()):
        sweep = [r for r in rs if in_ratio_sweep(r["method"])]
        for scope, members in (("ratio sweep", sweep), ("all checkpoints", rs)):
            if len(members) < 3:
                missing.append(f"correlation {name} ({scope}): {len(members)} evaluated checkpoint(s), needs 3")
                continue
            if scope == "all checkpoints" and len(members) == len([r for r in rs if in_ratio_sweep(r["method"])]):
                continue  # the same checkpoints as the sweep
            for label, key in CORR_METRICS:
                d = np.log([r[key] for r in members])
                row = {"setting": name, "checkpoints": scope, "metric": label, "n": len(members),
                       "ratios": [r["mixing_ratio"] for r in members], "methods": [r["method"] for r in members],
                       "paper": PAPER_CORRELATION}
                succ = [r["success"] for r in members]
                same = np.ptp(d) < 1e-6  # equal up to float noise (features extracted on different CPUs)
                if same or np.ptp(succ) == 0:
                    out.append({**row, "note": f"{'the distance' if same else 'success'} is the same "
                                               "for every checkpoint"})
                    continue
                c = correlation(d, succ)
                out.append({**row, **c, "pearson_alignment": -c["pearson"], "spearman_alignment": -c["spearman"],
                            "note": ""})
    md = markdown_table(out, ["setting", "checkpoints", "metric", "n", "pearson_alignment", "spearman_alignment",
                              "pearson", "pearson_p", "spearman", "spearman_p", "p_method", "note"],
                        {"pearson": "{:.2f}", "pearson_p": "{:.2g}", "spearman": "{:.2f}", "spearman_p": "{:.2g}",
                         "pearson_alignment": "{:+.2f}", "spearman_alignment": "{:+.2f}"})
    md += ("\n\n*_alignment: correlation of alignment (-log distance) with success, the paper's direction "
           f"(Fig. 7: {PAPER_CORRELATION}); pearson / spearman: of log distance itself, with two-sided "
           "permutation p-values (exact, over every ordering of the checkpoints, up to 8 of them; above, "
           "200,000 seeded random orderings; the t-approximation's in correlations.json). ratio sweep: "
           "co-training at each ratio with sim_only (w = 0) and real_only (w = 1); "
           "all checkpoints: every method of the setting too.*")
    return out, md, missing


def read_episodes(path: str) -> list:
    """An evaluation's episodes.jsonl; a line cut by a kill (03_eval.py runs that episode again) is
    skipped, as 03_eval.py's own resume does."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def repeats(runs_dir: str) -> tuple:
    """Episodes run twice: the same checkpoint, domain and guidance on the same seed in two evaluation
    folders (CFG-ADDA's 200-episode evaluation and its guidance sweep share lambda = -0.5 and the first
    100 seeds). Rollouts are seeded per episode, so the two must agree in success and episode length."""
    seen = {}  # (run, weights digest, domain|guidance, seed) -> [(folder, success, length)]

    def add(folder, key, digest, e):
        ckpt, rest = key.split("|", 1)  # the same weights may be named by another path
        seen.setdefault((os.path.basename(os.path.dirname(ckpt)), digest, rest, e["seed"]), []).append(
            (folder, e["success"], e["length"]))

    for folder in sorted(glob.glob(os.path.join(runs_dir, "eval", "*"))):
        if os.path.exists(os.path.join(folder, "episodes.jsonl")):
            for e in read_episodes(os.path.join(folder, "episodes.jsonl")):
                add(folder, e["key"], e.get("digest"), e)
        elif os.path.exists(os.path.join(folder, "results.json")):  # older records: episodes in results.json
            for key, ev in common.read_json(os.path.join(folder, "results.json"))["evaluations"].items():
                for e in ev.get("episodes", []):
                    add(folder, key, ev.get("digest"), e)
    pairs = {}
    for (run, digest, rest, seed), eps in seen.items():
        for i in range(len(eps)):
            for j in range(i + 1, len(eps)):
                p = pairs.setdefault((run, rest, eps[i][0], eps[j][0]),
                                     {"episodes": 0, "same_success": 0, "same_length": 0})
                p["episodes"] += 1
                p["same_success"] += eps[i][1] == eps[j][1]
                p["same_length"] += eps[i][2] == eps[j][2]
    rows = [{"run": run, "evaluation": rest.replace("|", ", "), "folder_a": os.path.basename(a),
             "folder_b": os.path.basename(b), **p,
             "agree": p["same_success"] == p["episodes"] == p["same_length"]}
            for (run, rest, a, b), p in sorted(pairs.items())]
    md = markdown_table(rows, ["run", "evaluation", "folder_a", "folder_b", "episodes", "same_success", "same_length",
                               "agree"])
    md += "\n\n*Episodes run twice on the same seed (same checkpoint, domain, guidance) in two folders.*"
    return rows, md, []


def failures_table(runs_dir: str) -> tuple:
    """How the episodes of each evaluation failed, from what 03_eval.py records per episode (NutAssembly:
    tasks.nut_path): grasped (the grasp stage reached), lifted (the nut 5 cm above its start), passed
    above the peg's top, and how far off the peg's axis the nut came there (quartiles, mm; the hole's
    clearance is 6.7 mm). Evaluations recorded before the nut's path was (older records) are skipped."""
    rows = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "eval", "*", "episodes.jsonl"))):
        by_g = {}
        for e in read_episodes(path):
            if e.get("nut_path"):
                by_g.setdefault(e["key"].split("|", 1)[1].replace("|", ", "), []).append(e)
        for where, eps in sorted(by_g.items()):
            fail = [e for e in eps if not e["success"]]
            off = [e["nut_path"]["min_peg_xy_mm"] for e in fail if e["nut_path"].get("min_peg_xy_mm") is not None]
            q = np.percentile(off, [25, 50, 75]) if off else None
            rows.append({"evaluation": os.path.basename(os.path.dirname(path)), "domain_guidance": where,
                         "episodes": len(eps), "successes": sum(e["success"] for e in eps), "failures": len(fail),
                         "failed_grasped": sum((e.get("reached") or {}).get("grasp") is not None for e in fail),
                         "failed_lifted": sum(e["nut_path"].get("lift_mm", 0) > 50 for e in fail),
                         "failed_above_peg": len(off),
                         "off_axis_mm_q25_50_75": None if q is None else " / ".join(f"{v:.0f}" for v in q)})
    md = markdown_table(rows, ["evaluation", "domain_guidance", "episodes", "successes", "failures", "failed_grasped",
                               "failed_lifted", "failed_above_peg", "off_axis_mm_q25_50_75"])
    md += ("\n\n*Failed episodes only: grasped, lifted 5 cm, passed above the peg's top; off_axis: the nut's "
           "closest pass to the peg's axis above its top, quartiles in mm (the hole's clearance: 6.7 mm).*")
    return rows, md, []


def compute_table(runs_dir: str) -> tuple:
    """The compute each record holds: a training run's wall time is the sum over its logged intervals
    of samples / samples_per_s (02_train.py's metrics.jsonl, resumed runs included); an evaluation's
    is the sum of its episodes' wall seconds (03_eval.py, per rollout worker)."""
    rows = []
    for cfg_path in sorted(glob.glob(os.path.join(runs_dir, "train", "*", "config.json"))):
        folder = os.path.dirname(cfg_path)
        batch = common.read_json(cfg_path)["args"]["batch_size"]
        prev, secs, rates = 0, 0.0, []
        for m in records.read_jsonl(os.path.join(folder, "metrics.jsonl")):
            if m.get("samples_per_s"):
                secs += (m["step"] - prev) * batch / m["samples_per_s"]
                rates.append(m["samples_per_s"])
            prev = m["step"]
        if rates:
            rows.append({"kind": "train", "name": os.path.basename(folder), "work": f"{prev} steps x {batch}",
                         "minutes": secs / 60, "rate": f"{statistics.median(rates):.0f} samples/s"})
    for path in sorted(glob.glob(os.path.join(runs_dir, "eval", "*", "episodes.jsonl"))):
        sec = [e["seconds"] for e in read_episodes(path) if "seconds" in e]
        if sec:
            rows.append({"kind": "evaluate", "name": os.path.basename(os.path.dirname(path)),
                         "work": f"{len(sec)} episodes", "minutes": sum(sec) / 60,
                         "rate": f"{statistics.mean(sec):.1f} s/episode"})
    md = markdown_table(rows, ["kind", "name", "work", "minutes", "rate"], {"minutes": "{:.1f}"})
    md += ("\n\n*Wall time as the records measured it, on whatever machine and beside whatever else ran "
           "(RESULTS says which); study.py runs two 1-thread jobs side by side on 2 cores.*")
    return rows, md, []


def claims_table(runs: list, tables: dict, a) -> tuple:
    """The paper's claims, each with its verdict by the rule fixed for it (claims.py), from this
    call's tables, or, for a table this call did not build, its copy under --out (a cheap
    `--only claims` rebuild reads the alignment and correlations `make analysis` wrote)."""
    inputs, missing = {}, []
    for name in CLAIM_INPUTS:
        path = os.path.join(a.out, f"{name}.json")
        if name in tables:
            inputs[name] = tables[name][0]
        elif os.path.exists(path):
            inputs[name] = common.read_json(path)
        else:
            inputs[name] = []
            missing.append(f"claims: no {name} table (04_analyze.py --only {name})")
    images = {setting(r): bool(r["cfg"]["model"]["image_keys"]) for r in runs}
    toys = {label: common.read_json(os.path.join(a.runs, d, "metrics.json")) for label, d in TOYS.items()
            if os.path.exists(os.path.join(a.runs, d, "metrics.json"))}
    rows = claims.toy_rows(toys) + claims.robot_rows(inputs["comparisons"], inputs["guideline"],
                                                     inputs["correlations"], inputs["alignment"], images)
    return rows, claims.markdown(rows), missing


def write_report(path: str, claims_md: str):
    """The claims table into the report between its two marker lines (the rest of it untouched)."""
    text = open(path).read()
    head, rest = text.split(CLAIMS_BEGIN)
    _, tail = rest.split(CLAIMS_END)
    common.write_text(path, f"{head}{CLAIMS_BEGIN}\n{claims_md}\n{CLAIMS_END}{tail}")


def umap_embeddings(runs: list, a) -> tuple:
    """Fig. 6's UMAP embedding of each run's trunk features (cached per run). Returns
    ({run name: embedding}, missing)."""
    embs, missing = {}, []
    for r in tqdm(runs, desc="umap"):
        key = os.path.join(cache_dir(a), f"{r['run']}_{r['digest']}_n{a.num_samples}_s{a.seed}_umap.npy")
        if os.path.exists(key):
            embs[r["run"]] = np.load(key)
            continue
        feats, where = run_features(r, a)
        if feats is None:
            missing.append(f"umap {r['run']}: no features ({where})")
            continue
        os.makedirs(cache_dir(a), exist_ok=True)
        embs[r["run"]] = umap_embedding(feats, a.seed, key)
    return embs, missing


# ----------------------------------------------------------------------------------------------
# the stage: every product the runs support
# ----------------------------------------------------------------------------------------------
def analyze(a: Args):
    check_args(a)
    runs, unfinished = discover(a.runs, a.ckpt)
    if not runs:
        raise UsageError(f"no finished training runs under {os.path.join(a.runs, 'train')} (02_train.py "
                         f"writes them)" + (f"; still training: {', '.join(unfinished)}" if unfinished else ""))
    if "guidance" in a.only:  # asked for explicitly: every checkpoint must carry a domain label
        plain = [r for r in runs if not r["use_label"]] if a.ckpt else \
            ([] if any(r["use_label"] for r in runs) else runs)
        if plain:
            raise UsageError(f"a guidance table needs checkpoints trained with a domain label "
                             f"({', '.join(methods.label_methods())}); "
                             f"{plain[0]['ckpt']} was trained with {plain[0]['method']}")
    want = set(a.only or PRODUCTS)
    if "claims" in want:  # the claims' own tests: cheap, from the evaluations (the rest: claims_table)
        want |= {"comparisons", "guideline"}
    tables, figures, missing = {}, [], [f"still training, skipped: {u}" for u in unfinished]
    rows, miss = alignment_rows(runs, a) if want & {"alignment", "correlations", "regimes"} else ([], [])
    missing += miss
    if "alignment" in want:
        tables["alignment"] = (rows, markdown_table(rows, ALIGN_COLS, ALIGN_FMT))
    if "correlations" in want:
        corr, md, miss = correlations(rows)
        tables["correlations"] = (corr, md)
        missing += miss
    # one run per comparison cell (no superseded, no control run, the lowest training seed)
    headline = [r for r in runs if r["headline"] and not r["replicate"]]
    controls, replicates = [r for r in runs if r["control"]], [r for r in runs if r["replicate"]]
    for name, build in (("methods", methods_table), ("table1", table1), ("table2", table2), ("table3", table3),
                        ("comparisons", lambda rs: comparisons(rs, controls, replicates)), ("guidance", guidance_table),
                        ("guideline", guideline_table)):
        if name in want:
            data, md, miss = build(headline)
            tables[name] = (data, md)
            missing += miss
    if "repeats" in want and not a.ckpt:
        data, md, _ = repeats(a.runs)
        tables["repeats"] = (data, md)
    if "failures" in want and not a.ckpt:
        data, md, _ = failures_table(a.runs)
        tables["failures"] = (data, md)
    if "compute" in want and not a.ckpt:
        data, md, _ = compute_table(a.runs)
        tables["compute"] = (data, md)
    if "claims" in want:
        data, md, miss = claims_table(runs, tables, a)
        tables["claims"] = (data, md)
        missing += miss
    os.makedirs(a.out, exist_ok=True)  # every check has passed: now write
    for name, (data, md) in tables.items():
        common.write_json(os.path.join(a.out, f"{name}.json"), data)
        common.write_text(os.path.join(a.out, f"{name}.md"), md + "\n")
    if "alignment" in want:
        plot_alignment([r for r in rows if r["headline"]], os.path.join(a.out, "alignment_vs_ratio.png"))
        figures.append("alignment_vs_ratio.png")
    if "regimes" in want:
        plot_regimes([r for r in rows if r["headline"]], os.path.join(a.out, "regimes.png"))
        figures.append("regimes.png")
    if "methods" in want and tables["methods"][0]:
        plot_methods(headline, os.path.join(a.out, "methods_vs_ratio.png"))
        figures.append("methods_vs_ratio.png")
    if "guidance" in want and tables["guidance"][0]:
        plot_guidance(tables["guidance"][0], os.path.join(a.out, "guidance_sweep.png"))
        figures.append("guidance_sweep.png")
    if "methods" in want:  # before and after a method's fix: superseded runs drawn dotted
        curves = disc_curves(runs)
        if curves:
            plot_discriminator(curves, runs, os.path.join(a.out, "discriminator.png"))
            figures.append("discriminator.png")
        curves = metric_curves(runs, "ot", ("ot_entropy",))
        if curves:
            plot_ot_entropy(curves, runs, os.path.join(a.out, "ot_plan.png"))
            figures.append("ot_plan.png")
    if "guideline" in want and tables["guideline"][0]:
        plot_guideline(headline, tables["guideline"][0], os.path.join(a.out, "guideline.png"))
        figures.append("guideline.png")
    if "umap" in want:
        embs, miss = umap_embeddings(headline, a)
        figures += plot_umaps(embs, headline, a.out)
        missing += miss
    if a.report and "claims" in tables:
        write_report(a.report, tables["claims"][1])
    if not a.only:  # what every product lacks (a partial build would list a part of it)
        common.write_text(os.path.join(a.out, "missing.md"),
                          "".join(f"- {m}\n" for m in missing) or "- nothing: every table has its runs\n")
    for name, (data, md) in tables.items():
        if data:
            print(f"\n## {name}\n\n{md}")
    print(f"\nwrote {len(tables)} tables (markdown + JSON) and {len(figures)} figures to {a.out}")
    for m in missing:
        print(f"missing: {m}")


def main(argv=None):
    a = common.parse_args(Args, PROFILES, argv, description=__doc__, check=check_args)
    try:
        analyze(a)
    except UsageError as e:
        die(str(e))


if __name__ == "__main__":
    main()
