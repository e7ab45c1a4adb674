"""Stage 04: representation alignment, discernibility, correlations, the paper's tables and figures
(paper Sec. 4.1-4.2, 5.2, App. D.2, D.6).

    python 04_analyze.py --runs runs/ --out results/analysis/

Work in progress (issue 7): the alignment metrics and the domain probe are here; feature
extraction, figures and tables follow.

Alignment metrics (App. D.2): a sample of features from each domain, each domain standardized on
its own; the Wasserstein distance between the two point clouds (global alignment) and the
Gromov-Wasserstein distance between their intra-domain distance matrices, both normalized by the
pooled mean distance (local geometry, comparable across policies).
"""
import os

import numpy as np

import common
from common import UsageError


# ----------------------------------------------------------------------------------------------
# alignment metrics (App. D.2)
# ----------------------------------------------------------------------------------------------
def standardize(x: np.ndarray) -> np.ndarray:
    """Each domain normalized on its own (App. D.2): zero mean, unit variance per dimension."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def wasserstein(xs: np.ndarray, xt: np.ndarray, method: str = "exact", reg: float = 0.05) -> float:
    """2-Wasserstein distance between two point clouds with uniform weights.
    exact: network simplex (ot.emd2); sinkhorn: entropic OT with reg x the mean squared cost
    (ot.sinkhorn2, log-domain), an upper bound that converges to the exact value as reg -> 0."""
    import ot
    M = ot.dist(xs, xt, metric="sqeuclidean")
    a, b = ot.unif(len(xs)), ot.unif(len(xt))
    if method == "exact":
        w2 = ot.emd2(a, b, M, numItermax=10_000_000)
    elif method == "sinkhorn":
        scale = M.mean()
        w2 = scale * ot.sinkhorn2(a, b, M / scale, reg, method="sinkhorn_log", numItermax=2000)
    else:
        raise ValueError(f"unknown Wasserstein method {method!r}")
    return float(np.sqrt(max(float(w2), 0.0)))


def gromov_wasserstein(xs: np.ndarray, xt: np.ndarray, method: str = "exact", subsample: int = 512,
                       repeats: int = 4, seed: int = 0) -> float:
    """Gromov-Wasserstein discrepancy (square loss) between the two clouds' Euclidean distance
    matrices, each divided by the pooled mean distance of both (App. D.2), so policies with
    different feature scales compare. exact: POT's conditional-gradient solver on all points (a
    local optimum, started from the product plan); subsample: the mean of `repeats` exact solves
    on random subsets of `subsample` points per domain (POT's entropic GW was far slower here)."""
    import ot
    Cs, Ct = ot.dist(xs, xs, metric="euclidean"), ot.dist(xt, xt, metric="euclidean")
    pooled = np.concatenate([Cs.ravel(), Ct.ravel()]).mean()
    Cs, Ct = Cs / pooled, Ct / pooled
    if method == "exact":
        return _gw(Cs, Ct)
    if method == "subsample":  # mean of exact GW over random subsets (same pooled normalization)
        rng = np.random.default_rng(seed)
        vals = []
        for _ in range(repeats):
            i = rng.choice(len(xs), min(subsample, len(xs)), replace=False)
            j = rng.choice(len(xt), min(subsample, len(xt)), replace=False)
            vals.append(_gw(Cs[np.ix_(i, i)], Ct[np.ix_(j, j)]))
        return float(np.mean(vals))
    raise ValueError(f"unknown Gromov-Wasserstein method {method!r}")


def _gw(Cs, Ct) -> float:
    import ot
    return float(ot.gromov.gromov_wasserstein2(Cs, Ct, ot.unif(len(Cs)), ot.unif(len(Ct)),
                                               "square_loss", max_iter=1000))


def domain_probe(zs: np.ndarray, zt: np.ndarray, seed: int = 0, hidden: int = 64,
                 steps: int = 500, holdout: float = 0.3) -> float:
    """Discernibility (Sec. 4.2): held-out accuracy of a 2-layer MLP that tells the domains apart
    from (standardized, pooled) features; 0.5 = indiscernible, 1.0 = fully discernible."""
    import torch
    g = torch.Generator().manual_seed(seed)
    x = np.concatenate([zs, zt]).astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.concatenate([np.zeros(len(zs)), np.ones(len(zt))]).astype(np.float32)
    perm = torch.randperm(len(x), generator=g).numpy()
    n_test = int(holdout * len(x))
    test, train = perm[:n_test], perm[n_test:]
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X[train]).squeeze(-1), Y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((net(X[test]).squeeze(-1) > 0).float() == Y[test]).float().mean())


def correlation(x, y) -> dict:
    """Pearson and Spearman correlation with two-sided p-values (Fig. 7)."""
    from scipy import stats
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        raise UsageError(f"a correlation needs at least 3 checkpoints, got {len(x)}")
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"n": len(x), "pearson": float(pr.statistic), "pearson_p": float(pr.pvalue),
            "spearman": float(sr.statistic), "spearman_p": float(sr.pvalue)}


# ----------------------------------------------------------------------------------------------
# features at the two feature points (Sec. 4.1), cached per checkpoint
# ----------------------------------------------------------------------------------------------
def extract_features(ckpt: str, num_samples: int, seed: int = 0, cache_dir: str = "") -> dict:
    """Encode `num_samples` random training windows of each domain with the checkpoint's EMA
    policy (eval mode, center crop): {domain: {"stem": (n, d), "trunk": (n, d)}}, each flattened
    over the observation history. Cached as <cache_dir>/<run>_step<k>_n<n>_s<seed>.npz."""
    import torch
    policy, cfg = common.load_policy(ckpt)
    step = int(torch.load(ckpt, map_location="cpu", weights_only=False)["step"])
    run = os.path.basename(os.path.dirname(os.path.abspath(ckpt)))
    path = os.path.join(cache_dir, f"{run}_step{step}_n{num_samples}_s{seed}.npz") if cache_dir else ""
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


def alignment_row(feats: dict, gw_method: str = "subsample", seed: int = 0) -> dict:
    """W and GW between source and target at both feature points, and the probe on the trunk."""
    row = {}
    for point in ("stem", "trunk"):
        xs, xt = standardize(feats["source"][point]), standardize(feats["target"][point])
        row[f"w_{point}"] = wasserstein(xs, xt)
        row[f"gw_{point}"] = gromov_wasserstein(xs, xt, gw_method, seed=seed)
    row["probe_trunk"] = domain_probe(feats["source"]["trunk"], feats["target"]["trunk"], seed=seed)
    return row


# ----------------------------------------------------------------------------------------------
# runs and evaluation results
# ----------------------------------------------------------------------------------------------
def discover(runs_dir: str) -> tuple:
    """Training runs (runs/train/*/ckpt.pt with config.json) and evaluation results
    (runs/eval/*/results.json), the latter keyed by (absolute checkpoint, domain, guidance)."""
    import glob
    import json
    ckpts = sorted(glob.glob(os.path.join(runs_dir, "train", "*", "ckpt.pt")))
    evals = {}
    for path in sorted(glob.glob(os.path.join(runs_dir, "eval", "*", "results.json"))):
        with open(path) as f:
            for ev in json.load(f)["evaluations"].values():
                evals[(os.path.abspath(ev["ckpt"]), ev["domain"], ev["guidance"])] = ev
    return ckpts, evals


def success_of(evals: dict, ckpt: str, cfg: dict):
    """The checkpoint's evaluation in its own target domain at its stored guidance, if any."""
    return evals.get((os.path.abspath(ckpt), cfg["args"]["target_domain"], cfg.get("guidance_scale")))


def markdown_table(rows: list, cols: list, fmt: dict = None) -> str:
    fmt = fmt or {}
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) if r.get(c) is not None else "-"
                                     for c in cols) + " |")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
from dataclasses import dataclass  # noqa: E402
from common import arg, die  # noqa: E402


@dataclass
class Args:
    profile: str = "cpu"
    runs: str = arg("runs", "folder with train/ and eval/ run folders (02_train.py, 03_eval.py)")
    out: str = arg("results/analysis", "where the tables (markdown + JSON) and figures go")
    num_samples: int = arg(2048, "feature samples per domain (App. D.2: a large batch)")
    gw_method: str = arg("subsample", "Gromov-Wasserstein solver: exact | subsample (bench/bench_analyze.py)")
    cache: str = arg("", "feature cache folder (default <runs>/analysis_cache)")
    seed: int = arg(0, "seed of the feature samples, GW subsets and the probe")


PROFILES = {"paper": {}, "cpu": {}, "smoke": dict(num_samples=64)}


def alignment_table(a: Args) -> list:
    ckpts, evals = discover(a.runs)
    if not ckpts:
        raise UsageError(f"no training runs under {os.path.join(a.runs, 'train')} (02_train.py writes them)")
    rows = []
    from tqdm import tqdm
    for ckpt in tqdm(ckpts, desc="checkpoints"):
        _, cfg = common.load_policy(ckpt)
        ev = success_of(evals, ckpt, cfg)
        feats = extract_features(ckpt, a.num_samples, a.seed, a.cache or os.path.join(a.runs, "analysis_cache"))
        rows.append({"run": os.path.basename(os.path.dirname(ckpt)), "task": cfg["args"]["task"],
                     "target_domain": cfg["args"]["target_domain"], "method": cfg["args"]["method"],
                     "arch": cfg["args"]["arch"], "mixing_ratio": cfg["mixing_ratio"],
                     "success": ev["success_rate"] if ev else None, "trials": ev["trials"] if ev else None,
                     **alignment_row(feats, a.gw_method, a.seed)})
    return rows


def analyze(a: Args):
    import json
    if a.num_samples < 8:
        raise UsageError(f"--num-samples must be at least 8, got {a.num_samples}")
    if a.gw_method not in ("exact", "subsample"):
        raise UsageError(f"--gw-method must be exact or subsample, got {a.gw_method!r}")
    rows = alignment_table(a)
    os.makedirs(a.out, exist_ok=True)
    cols = ["task", "target_domain", "method", "mixing_ratio", "success", "trials", "w_stem", "w_trunk",
            "gw_stem", "gw_trunk", "probe_trunk"]
    fmt = {"mixing_ratio": "{:.3g}", "success": "{:.3f}", "w_stem": "{:.3f}", "w_trunk": "{:.3f}",
           "gw_stem": "{:.4f}", "gw_trunk": "{:.4f}", "probe_trunk": "{:.3f}"}
    common.write_text(os.path.join(a.out, "alignment.md"), markdown_table(rows, cols, fmt) + "\n")
    common.write_json(os.path.join(a.out, "alignment.json"), rows)
    # Fig. 7: log W (trunk) vs success, per task x gap, where >= 3 evaluated checkpoints exist
    corr, missing = {}, []
    groups = {}
    for r in rows:
        if r["success"] is not None:
            groups.setdefault((r["task"], r["target_domain"]), []).append(r)
    for (task, dom), rs in sorted(groups.items()):
        if len(rs) < 3:
            missing.append(f"correlation {task}/{dom}: {len(rs)} evaluated checkpoint(s), needs 3")
            continue
        corr[f"{task}/{dom}"] = correlation(np.log([r["w_trunk"] for r in rs]), [r["success"] for r in rs])
    common.write_json(os.path.join(a.out, "correlations.json"), corr)
    plot_alignment(rows, a.out)
    print(markdown_table(rows, cols, fmt))
    for k, c in corr.items():
        print(f"{k}: log W (trunk) vs success over {c['n']} checkpoints: Pearson {c['pearson']:.2f} "
              f"(p {c['pearson_p']:.2g}), Spearman {c['spearman']:.2f} (p {c['spearman_p']:.2g})")
    for m in missing + ["not built yet (issue 7 in progress): UMAP grid (Fig. 6), regimes (Fig. 16), "
                        "Tables 1-3, guidance sweep (Fig. 10), guideline (Fig. 15)"]:
        print(f"missing: {m}")


def plot_alignment(rows: list, out: str):
    """Fig. 6 (right) / Fig. 7 form: W and GW of the trunk features against the mixing ratio,
    and success against log W, one series per task x target domain."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    groups = {}
    for r in rows:
        groups.setdefault(f"{r['task']}/{r['target_domain']}", []).append(r)
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["mixing_ratio"])
        x = [max(r["mixing_ratio"], 1e-3) for r in rs]
        ax[0].plot(x, [r["w_trunk"] for r in rs], "o-", label=name)
        ax[1].plot(x, [r["gw_trunk"] for r in rs], "o-", label=name)
        ev = [r for r in rs if r["success"] is not None]
        ax[2].scatter([r["w_trunk"] for r in ev], [r["success"] for r in ev], label=name)
        for r in ev:
            ax[2].annotate(f"w={r['mixing_ratio']:.2g}", (r["w_trunk"], r["success"]), fontsize=7)
    for i, (t, yl) in enumerate([("Wasserstein (trunk)", "W2"), ("Gromov-Wasserstein (trunk)", "GW"),
                                 ("success vs alignment", "success rate")]):
        ax[i].set_title(t, fontsize=10)
        ax[i].set_ylabel(yl)
        ax[i].set_xscale("log")
        ax[i].set_xlabel("mixing ratio w" if i < 2 else "W2 (trunk), log scale")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "alignment_vs_ratio.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    a = common.parse_args(Args, PROFILES, argv, description=__doc__)
    try:
        analyze(a)
    except UsageError as e:
        die(str(e))


if __name__ == "__main__":
    main()
