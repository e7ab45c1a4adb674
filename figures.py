"""04_analyze.py's figures (Fig. 6, 7, 9, 10, 15, 16, the discriminator and OT's plan over training): each
function takes rows and runs the stage has already built and writes one PNG (to a temporary file,
then renamed). Only 04_analyze.py uses this file; it is split from it by concept, as alignment.py is.
"""
import json
import os

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from methods import METHODS, in_ratio_sweep, marker, method_order
from records import setting


def new_figure(*args, **kw):
    matplotlib.use("Agg")
    return plt.subplots(*args, **kw)


def save(fig, path: str):
    tmp = path[:-4] + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)




def plot_alignment(rows: list, path: str):
    """Fig. 6 (right) / Fig. 7 form: W and GW of the trunk features against the mixing ratio (the
    ratio sweep as lines, other methods as markers), and success against W."""
    fig, ax = new_figure(1, 3, figsize=(13, 3.8))
    for name in sorted({r["setting"] for r in rows}):
        rs = sorted((r for r in rows if r["setting"] == name), key=lambda r: r["mixing_ratio"])
        sweep = [r for r in rs if in_ratio_sweep(r["method"])]
        for i, key in enumerate(("w_trunk", "gw_trunk")):
            line, = ax[i].plot([r["mixing_ratio"] for r in sweep], [r[key] for r in sweep], "o-",
                               label=f"{name} (cotrain)")
            for r in rs:
                if not in_ratio_sweep(r["method"]):
                    ax[i].scatter(r["mixing_ratio"], r[key], marker=marker(r["method"]), s=60,
                                  color=line.get_color(), edgecolor="k", label=f"{name} ({r['method']})")
        for r in (r for r in rs if r["success"] is not None):
            ax[2].scatter(r["w_trunk"], r["success"], marker=marker(r["method"]), s=50)
            ax[2].annotate(f"{r['method']} w={r['mixing_ratio']:.2g}", (r["w_trunk"], r["success"]), fontsize=7)
    for i, (t, yl) in enumerate([("Wasserstein (trunk)", "W2"), ("Gromov-Wasserstein (trunk)", "GW"),
                                 ("success vs alignment (Fig. 7)", "success rate")]):
        ax[i].set_title(t, fontsize=10)
        ax[i].set_ylabel(yl)
        if i < 2:
            ax[i].set_xscale("symlog", linthresh=0.01)
            ax[i].set_xlabel("mixing ratio w (symlog)")
        else:
            ax[i].set_xscale("log")
            ax[i].set_xlabel("W2 (trunk), log scale")
    ax[0].legend(fontsize=6)
    fig.tight_layout()
    save(fig, path)


def plot_umap_one(emb: np.ndarray, ax, title: str):
    n = len(emb) // 2
    ax.scatter(emb[n:, 0], emb[n:, 1], s=2, alpha=0.4, c="tab:blue", label="source (sim)")
    ax.scatter(emb[:n, 0], emb[:n, 1], s=2, alpha=0.4, c="tab:red", label="target (real)")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_umaps(embs: dict, runs: list, out: str) -> list:
    """Fig. 6 (left): UMAP of source vs target trunk features (`embs`: run name -> embedding), one
    PNG per run under umap/, and one grid per setting across the mixing-ratio sweep. Returns the
    files written."""
    os.makedirs(os.path.join(out, "umap"), exist_ok=True)
    written = []
    for r in runs:
        if r["run"] not in embs:
            continue
        fig, ax = new_figure(figsize=(4, 4))
        plot_umap_one(embs[r["run"]], ax, f"{r['run']}\n{umap_title(r)}")
        ax.legend(fontsize=7, markerscale=4)
        fig.tight_layout()
        save(fig, os.path.join(out, "umap", f"{r['run']}.png"))
        written.append(f"umap/{r['run']}.png")
    for name in sorted({setting(r) for r in runs}):
        sweep = sorted((r for r in runs if setting(r) == name and in_ratio_sweep(r["method"]) and r["run"] in embs),
                       key=lambda r: r["mixing_ratio"])
        if len(sweep) < 2:
            continue
        fig, axes = new_figure(1, len(sweep), figsize=(3.2 * len(sweep), 3.4), squeeze=False)
        for ax, r in zip(axes[0], sweep):
            plot_umap_one(embs[r["run"]], ax, umap_title(r))
        axes[0][0].legend(fontsize=7, markerscale=4)
        fig.suptitle(f"{name}: trunk features across mixing ratios (Fig. 6)", fontsize=10)
        fig.tight_layout()
        fname = f"umap_grid_{name.replace('/', '_').replace(' (', '_').rstrip(')')}.png"
        save(fig, os.path.join(out, fname))
        written.append(fname)
    return written


def umap_title(r: dict) -> str:
    s = f"{r['method']} w={r['mixing_ratio']:.3g}"
    return s + (f", success {r['eval']['success_rate']:.2f}" if r["eval"] else ", not evaluated")


def plot_regimes(rows: list, path: str):
    """Fig. 16 form: alignment (W, trunk) against discernibility (probe accuracy), coloured by
    success; one marker shape per method."""
    fig, ax = new_figure(figsize=(6.4, 4.6))
    ev = [r for r in rows if r["success"] is not None]
    if ev:
        sc = None
        for m in sorted({r["method"] for r in ev}):
            rs = [r for r in ev if r["method"] == m]
            sc = ax.scatter([r["w_trunk"] for r in rs], [r["probe_trunk"] for r in rs], c=[r["success"] for r in rs],
                            cmap="viridis", vmin=0, vmax=max(r["success"] for r in ev) or 1, s=70,
                            marker=marker(m), edgecolor="k", label=m)
            for r in rs:
                ax.annotate(f"w={r['mixing_ratio']:.2g}", (r["w_trunk"], r["probe_trunk"]), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
        fig.colorbar(sc, ax=ax, label="success rate")
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("W2 between domains (trunk), lower = more aligned")
    ax.set_ylabel("domain probe accuracy (held out)")
    ax.set_ylim(0.45, 1.03)  # 0.5: indiscernible, 1: fully discernible
    ax.set_title("alignment vs discernibility (Fig. 16)", fontsize=10)
    fig.tight_layout()
    save(fig, path)


def plot_methods(runs: list, path: str):
    """Fig. 9 form: success (Wilson 95% bars) against the mixing ratio, one series per method."""
    names = sorted({setting(r) for r in runs if r["eval"]})
    fig, axes = new_figure(1, max(1, len(names)), figsize=(5.5 * max(1, len(names)), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rs = [r for r in runs if setting(r) == name and r["eval"]]
        for m in [m for m in method_order() if any(r["method"] == m for r in rs)]:
            plot_success(ax, [r for r in rs if r["method"] == m], marker(m), m)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("mixing ratio w (symlog)")
        ax.set_ylabel("success rate")
        ax.set_title(f"{name} (Fig. 9 form)", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def plot_success(ax, runs: list, marker: str, label: str):
    """Success rate (Wilson 95% bars) against the mixing ratio, one series."""
    pts = sorted(runs, key=lambda r: r["mixing_ratio"])
    y = np.array([r["eval"]["success_rate"] for r in pts])
    err = np.abs(np.array([r["eval"]["wilson95"] for r in pts]).T - y)
    ax.errorbar([r["mixing_ratio"] for r in pts], y, yerr=err, marker=marker, capsize=3,
                linestyle="-" if len(pts) > 1 else "none", label=label)


def metric_curves(runs: list, part: str, keys: tuple) -> dict:
    """{run: {key: (steps, values)}} from metrics.jsonl, for every run whose method has `part`
    (methods.Method: "disc" = adda, cfg_adda, discriminate; "ot"), each key where it was logged
    (a discriminator that waits out its warm-up logs nothing before it starts)."""
    out = {}
    for r in runs:
        path = os.path.join(r["folder"], "metrics.jsonl")
        if not getattr(METHODS.get(r["cfg"]["args"]["method"], METHODS["cotrain"]), part) or not os.path.exists(path):
            continue
        with open(path) as f:
            rows = [json.loads(x) for x in f if x.strip()]
        curves = {k: tuple(map(list, zip(*[(x["step"], x[k]) for x in rows if x.get(k) is not None]))) for k in keys}
        curves = {k: v for k, v in curves.items() if v}
        if curves:
            out[r["run"]] = curves
    return out


def disc_curves(runs: list) -> dict:
    """The discriminator's balanced accuracy (0.5 = it cannot tell the domains apart: features
    aligned, or a collapsed discriminator; 1.0 = it always can) and its balanced BCE over training."""
    return metric_curves(runs, "disc", ("disc_acc", "disc"))


def run_label(r: dict) -> str:
    return (f"{r['method']} w={r['mixing_ratio']:.3g} ({setting(r)})" +
            (" superseded" if r.get("superseded") else ""))


def smooth(steps: list, vals: list, k: int = 10) -> tuple:
    k = max(1, min(k, len(vals)))
    return steps[k - 1:], np.convolve(vals, np.ones(k) / k, mode="valid")


def plot_discriminator(curves: dict, runs: list, path: str):
    """The discriminator's balanced accuracy and BCE over training (App. C: it starts after
    --disc-warmup steps, then gradient reversal for adda / cfg_adda; superseded runs trained it
    during the warm-up); smoothed over 10 logged points."""
    fig, ax = new_figure(1, 2, figsize=(11, 4))
    for name, c in sorted(curves.items()):
        r = next(x for x in runs if x["run"] == name)
        ls = ":" if r.get("superseded") else "-"
        for i, key in enumerate(("disc_acc", "disc")):
            if key in c:
                ax[i].plot(*smooth(*c[key]), ls=ls, label=run_label(r), lw=1)
        warm = r["cfg"]["args"].get("disc_warmup")
        if warm:
            for a in ax:
                a.axvline(warm, color="gray", ls=":", lw=0.8)
    ax[0].axhline(0.5, color="k", lw=0.6)
    ax[0].set_ylim(0.0, 1.02)
    ax[0].set_ylabel("discriminator balanced accuracy")
    ax[1].set_yscale("log")
    ax[1].set_ylabel("discriminator balanced BCE")
    ax[1].axhline(np.log(2), color="k", lw=0.6)  # chance: a constant logit
    for a in ax:
        a.set_xlabel("training step")
    fig.suptitle("domain discriminator over training (grey dotted: end of its warm-up; black: chance)", fontsize=9)
    ax[0].legend(fontsize=6)
    fig.tight_layout()
    save(fig, path)


def plot_ot_entropy(curves: dict, runs: list, path: str):
    """OT's transport plan over training: its entropy over the uniform plan's (1 = uniform: every
    source-target pair weighted alike, moment matching rather than transport)."""
    fig, ax = new_figure(figsize=(6, 4))
    for name, c in sorted(curves.items()):
        r = next(x for x in runs if x["run"] == name)
        ax.plot(*smooth(*c["ot_entropy"]), label=run_label(r), lw=1)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("plan entropy / uniform plan's")
    ax.set_title("OT plan over training (1 = uniform)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, path)


def plot_guidance(rows: list, path: str):
    """Fig. 10 form: success against the guidance scale lambda, one line per checkpoint."""
    fig, ax = new_figure(figsize=(5.5, 4))
    for run in sorted({r["run"] for r in rows}):
        rs = sorted((r for r in rows if r["run"] == run), key=lambda r: r["guidance"])
        ax.plot([r["guidance"] for r in rs], [r["success"] for r in rs], marker=marker(rs[0]["method"]),
                label=f"{rs[0]['method']} w={rs[0]['mixing_ratio']:.3g} ({rs[0]['task']})")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("guidance scale lambda (0 = conditional, -1 = label-free)")
    ax.set_ylabel("success rate")
    ax.set_title("guidance sweep (Fig. 10)", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)


def plot_guideline(runs: list, rows: list, path: str):
    """Fig. 15 form: the co-training sweep's success against w, with the guideline's range shaded."""
    fig, axes = new_figure(1, max(1, len(rows)), figsize=(5.5 * max(1, len(rows)), 4), squeeze=False)
    for ax, g in zip(axes[0], rows):
        plot_success(ax, [r for r in runs if r["method"] == "cotrain" and r["eval"] and r["task"] == g["task"]
                          and r["target_domain"] == g["target_domain"] and r["n_target"] == g["N"]
                          and r["n_source"] == g["M"]], "o", "co-training")
        ax.axvspan(g["w_n"], g["w_q"], color="tab:green", alpha=0.2, label="guideline [w_n, w_q]")
        ax.axvline(g["auto"], color="tab:green", ls="--", lw=1, label="auto = sqrt(w_n w_q)")
        ax.set_xscale("log")
        ax.set_xlabel("mixing ratio w")
        ax.set_ylabel("success rate")
        ax.set_title(f"{g['task']}/{g['target_domain']} N={g['N']} M={g['M']} (Fig. 15)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path)
