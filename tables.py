"""The paper's tables and its claimed differences, from the runs' evaluations alone (no features):
04_analyze.py's products Table 1-3, Fig. 9's methods table, the comparisons (Fisher's exact test,
Holm's correction), Fig. 10's guidance and Fig. 15's guideline tables, with the formatting they
share and the paper's numbers printed beside ours. Each table returns (json rows, markdown,
missing runs)."""
import os

import numpy as np
from scipy import stats

import common
import records
from methods import METHODS, PRETRAIN_FT, method_order
from records import data_version, setting


# ----------------------------------------------------------------------------------------------
# shared formatting
# ----------------------------------------------------------------------------------------------
def cell(ev) -> str:
    """A success rate with its trial count and Wilson 95% interval, for a markdown table."""
    if not ev:
        return "-"
    lo, hi = ev["wilson95"]
    return f"{ev['success_rate']:.3f} ({ev['successes']}/{ev['trials']}; {lo:.2f}-{hi:.2f})"


def markdown_table(rows: list, cols: list, fmt: dict = None) -> str:
    fmt = fmt or {}
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) if r.get(c) is not None else "-"
                                     for c in cols) + " |")
    return "\n".join(out)


def split_setting(name: str) -> tuple:
    """setting() back to (task, target domain, profile)."""
    head, _, prof = name.partition(" (")
    task, domain = head.split("/")
    return task, domain, prof.rstrip(")") or "cpu"


def train_cmd(name: str, method: str, ratio=None) -> str:
    """The 02_train.py command that makes a missing run of a setting (each one runs as printed:
    tests/test_analyze.py checks them). App. D.4's pre-train + fine-tune is two commands."""
    task, domain, prof = split_setting(name)
    base = f"python 02_train.py --profile {prof} --task {task} --target-domain {domain}"
    if method == PRETRAIN_FT:
        pre = f"runs/train/{task}_{domain}_sim_only_r0_encdec_s0"
        return (f"{base} --method sim_only, then {base} --method real_only --init-from {pre}/ckpt.pt "
                f"--out runs/train/{task}_{domain}_pretrain_ft_r1_encdec_s0")  # plans/nut_study.toml's C8
    r = f" --ratio {ratio:.3g}" if ratio is not None and METHODS[method].ratio is None else ""
    return f"{base} --method {method}{r}"


# ----------------------------------------------------------------------------------------------
# the paper's numbers, printed beside ours (Lei et al. 2026: Table 1, Table 3, Sec. 4.2)
# ----------------------------------------------------------------------------------------------
PAPER_TABLE1 = {"NutAssembly": (0.85, 0.79), "MugCleanup": (0.44, 0.415), "MugHang": (0.27, 0.215)}
PAPER_TABLE3 = {"NutAssembly": (0.77, 0.925), "MugCleanup": (0.215, 0.495), "MugHang": (0.225, 0.26)}
# Table 2 (sim-and-real NutAssembly, successes of 30 real trials; the paper's ratio for all methods)
PAPER_TABLE2 = {"real_only": 8.6 / 30, "cotrain": 15.3 / 30, "ot": 14.3 / 30, "adda": 14.3 / 30, "cfg": 15.3 / 30,
                "cfg_adda@0": 18.6 / 30, "cfg_adda": 21 / 30}
PAPER_DOMAIN = "target_visual_physics"  # Table 1: visual-physics sim-and-sim (Sec. 4)
PAPER_CORRELATION = "+0.6 to +0.8 (alignment vs success; negative for the physics-only gap, Sec. 4.2)"


def methods_table(runs: list) -> tuple:
    """Fig. 9 / Table 2 form: success per method x mixing ratio, per task x gap setting."""
    out, md, missing = {}, [], []
    by = {}
    for r in runs:
        if r["eval"] and r["method"] != "pretrain_ft":
            by.setdefault(setting(r), []).append(r)
    for name, rs in sorted(by.items()):
        ratios = sorted({r["mixing_ratio"] for r in rs})
        methods = sorted({r["method"] for r in rs}, key=method_order().index)
        grid = {m: {f"{w:.3g}": cell(next((r["eval"] for r in rs if r["method"] == m and r["mixing_ratio"] == w), None))
                    for w in ratios} for m in methods}
        out[name] = {m: {f"{r['mixing_ratio']:.3g}": r["eval"]["success_rate"] for r in rs if r["method"] == m}
                     for m in methods}
        md.append(f"**{name}** (success rate, successes/trials, Wilson 95%)\n\n"
                  + markdown_table([{"method": m, **grid[m]} for m in methods],
                                   ["method"] + [f"{w:.3g}" for w in ratios]))
        for m in METHODS:  # pretrain_ft is Table 3's, not a column here
            if m not in methods:
                missing.append(f"methods x ratios {name}: no evaluated {m} run ({train_cmd(name, m)})")
    if not by:
        missing.append("methods x ratios: no evaluated checkpoints (03_eval.py)")
    return out, "\n\n".join(md), missing




def table1(runs: list) -> tuple:
    """Table 1: co-training vs +discrimination (ADDA's discriminator without gradient reversal)
    at the same mixing ratio, per task x gap setting; the paper's numbers (vis-phys) beside."""
    rows, missing, lacking = [], [], {}
    for r in runs:
        if r["method"] != "cotrain" or not r["eval"]:
            continue
        d = next((x for x in runs if x["method"] == "discriminate" and setting(x) == setting(r)
                  and x["mixing_ratio"] == r["mixing_ratio"] and x["eval"]), None)
        if d is None:
            lacking.setdefault(setting(r), []).append(r["mixing_ratio"])
            continue
        paper = PAPER_TABLE1.get(r["task"]) if r["target_domain"] == PAPER_DOMAIN else None
        rows.append({"setting": setting(r), "task": r["task"], "target_domain": r["target_domain"],
                     "mixing_ratio": r["mixing_ratio"],
                     "cotrain": r["eval"]["success_rate"], "discriminate": d["eval"]["success_rate"],
                     "cotrain_cell": cell(r["eval"]), "discriminate_cell": cell(d["eval"]),
                     "paper_cotrain": paper[0] if paper else None, "paper_discriminate": paper[1] if paper else None})
    for name, ws in sorted(lacking.items()):
        if not any(r["setting"] == name for r in rows):
            missing.append(f"Table 1 {name}: no evaluated discriminate run at a co-training ratio "
                           f"({', '.join(f'{w:.3g}' for w in sorted(ws))}); e.g. "
                           f"{train_cmd(name, 'discriminate', sorted(ws)[len(ws) // 2])}")
    if not any(r["method"] == "cotrain" and r["eval"] for r in runs):
        missing.append("Table 1: no evaluated cotrain run")
    md = markdown_table(rows, ["task", "target_domain", "mixing_ratio", "cotrain_cell", "discriminate_cell",
                               "paper_cotrain", "paper_discriminate"], {"mixing_ratio": "{:.3g}"})
    return rows, md, missing


def table3(runs: list) -> tuple:
    """Table 3 (App. D.4): sim pre-training + real fine-tuning vs co-training. Ours: the best
    evaluated checkpoint of each (the paper reports the best along training)."""
    rows, missing = [], []
    settings = sorted({setting(r) for r in runs if r["eval"] and r["method"] in ("cotrain", "pretrain_ft")})
    for name in settings:
        best = {}
        for m in ("pretrain_ft", "cotrain"):
            rs = [r for r in runs if setting(r) == name and r["method"] == m and r["eval"]]
            best[m] = max(rs, key=lambda r: r["eval"]["success_rate"]) if rs else None
        task, dom, _ = split_setting(name)
        if best["pretrain_ft"] is None or best["cotrain"] is None:
            m = "pretrain_ft" if best["pretrain_ft"] is None else "cotrain"
            missing.append(f"Table 3 {name}: no evaluated {m} run ({train_cmd(name, m)})")
            continue
        paper = PAPER_TABLE3.get(task) if dom == PAPER_DOMAIN else None
        rows.append({"setting": name, "task": task, "target_domain": dom,
                     "pretrain_ft": best["pretrain_ft"]["eval"]["success_rate"],
                     "cotrain": best["cotrain"]["eval"]["success_rate"],
                     "cotrain_ratio": best["cotrain"]["mixing_ratio"],
                     "pretrain_ft_cell": cell(best["pretrain_ft"]["eval"]),
                     "cotrain_cell": cell(best["cotrain"]["eval"]),
                     "paper_pretrain_ft": paper[0] if paper else None, "paper_cotrain": paper[1] if paper else None})
    md = markdown_table(rows, ["task", "target_domain", "pretrain_ft_cell", "cotrain_cell", "cotrain_ratio",
                               "paper_pretrain_ft", "paper_cotrain"], {"cotrain_ratio": "{:.3g}"})
    return rows, md, missing


def shared_ratio(rs: list):
    """The mixing ratio at which the most methods of a setting were evaluated (the study's auto =
    sqrt(w_n w_q)): Table 2's column and the comparisons' reference; None without a mixing method."""
    counts = {}
    for r in rs:
        if METHODS.get(r["method"]) is not None and METHODS[r["method"]].ratio is None and r["eval"]:
            counts.setdefault(round(r["mixing_ratio"], 6), set()).add(r["method"])
    return max(counts, key=lambda w: (len(counts[w]), w)) if counts else None


def find(rs: list, method: str, ratio=None, like: dict = None):
    """The evaluated run of a method (at a ratio; methods with a fixed ratio ignore it), or None;
    with `like`, one trained on like's data version if there is one (data_version)."""
    fixed = METHODS[method].ratio is not None if method in METHODS else True
    found = [r for r in rs if r["method"] == method and r["eval"]
             and (fixed or ratio is None or abs(r["mixing_ratio"] - ratio) < 1e-6)]
    same = [r for r in found if like is not None and data_version(r) == data_version(like)]
    return (same or found or [None])[0]


def data_mark(a: list, b: list) -> str:
    """"same" when the runs on both sides of a comparison trained on one data version, else which."""
    va, vb = ({data_version(r) for r in side if r} for side in (a, b))
    return "same" if len(va | vb) <= 1 else f"mixed: {'+'.join(sorted(va))} vs {'+'.join(sorted(vb))}"


def by_setting(runs: list) -> dict:
    """{(setting, N, M): runs}: a comparison never mixes profiles, tasks, gaps or dataset sizes."""
    out = {}
    for r in runs:
        out.setdefault((setting(r), r["n_target"], r["n_source"]), []).append(r)
    return out


def table2(runs: list) -> tuple:
    """Table 2's form: every method at one mixing ratio (shared_ratio), CFG-ADDA also at lambda = 0
    (its guidance sweep), the paper's sim-and-real NutAssembly numbers (x/30) beside."""
    rows, missing = [], []
    for (name, n, m), rs in sorted(by_setting(runs).items()):
        w = shared_ratio(rs)
        if w is None:
            continue
        task, dom, _ = split_setting(name)
        for method in method_order():
            r = find(rs, method, w) if method != PRETRAIN_FT else None
            variants = [(method, r["eval"] if r else None)]
            if method == "cfg_adda" and r is not None and 0.0 in r["evals"] and r["cfg"].get("guidance_scale") != 0.0:
                variants.append(("cfg_adda@0", r["evals"][0.0]))
            for label, ev in variants:
                if method == PRETRAIN_FT or ev is None:
                    continue
                rows.append({"setting": name, "task": task, "target_domain": dom, "N": n, "M": m,
                             "method": label, "mixing_ratio": r["mixing_ratio"], "data": data_version(r),
                             "guidance": ev["guidance"], "success": ev["success_rate"], "cell": cell(ev),
                             "paper_sim_and_real": PAPER_TABLE2.get(label) if task == "NutAssembly" else None})
        for method in METHODS:
            if method != "sim_only" and find(rs, method, w) is None:
                missing.append(f"Table 2 {name}: no evaluated {method} run at w = {w:.3g} "
                               f"({train_cmd(name, method, w)})")
    md = markdown_table(rows, ["setting", "method", "mixing_ratio", "guidance", "cell", "paper_sim_and_real", "data"],
                        {"mixing_ratio": "{:.3g}", "guidance": "{:g}", "paper_sim_and_real": "{:.3f}"})
    md += ("\n\n*paper_sim_and_real: Table 2 of the paper (sim-and-real NutAssembly, successes of 30 real "
           "trials, as a fraction); ours is sim-and-sim: another gap, 200 simulated episodes.*")
    return rows, md, missing


def fisher_exact(k_a: int, n_a: int, k_b: int, n_b: int) -> dict:
    """Fisher's exact test on two success counts: two-sided p, and one-sided p for a > b."""
    table = [[k_a, n_a - k_a], [k_b, n_b - k_b]]
    return {"p_two_sided": float(stats.fisher_exact(table).pvalue),
            "p_a_greater": float(stats.fisher_exact(table, alternative="greater").pvalue)}


def cmh_test(strata: list) -> dict:
    """Cochran-Mantel-Haenszel test of a common difference across strata (e.g. training seeds):
    strata = [(k_a, n_a, k_b, n_b), ...], success counts of a and b in each. Two-sided, with the
    continuity correction (R's mantelhaen.test); the Mantel-Haenszel common odds ratio (a vs b)."""
    obs = exp = var = num = den = 0.0
    for k_a, n_a, k_b, n_b in strata:
        n, k = n_a + n_b, k_a + k_b
        if n < 2:
            continue
        obs += k_a
        exp += n_a * k / n
        var += n_a * n_b * k * (n - k) / (n * n * (n - 1))
        num += k_a * (n_b - k_b) / n
        den += (n_a - k_a) * k_b / n
    if var == 0:
        return {"chi2": 0.0, "p_two_sided": 1.0, "p_a_greater": 1.0, "odds_ratio": float("nan")}
    chi2 = max(abs(obs - exp) - 0.5, 0.0) ** 2 / var
    z = float(np.sign(obs - exp) * np.sqrt(chi2))  # one-sided: a above b, the same corrected statistic
    return {"chi2": float(chi2), "p_two_sided": float(stats.chi2.sf(chi2, 1)), "p_a_greater": float(stats.norm.sf(z)),
            "odds_ratio": num / den if den else float("inf")}


def holm(ps: list) -> list:
    """Holm's step-down adjusted p-values (family-wise error over the tests given), in input order."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def pool(evs: list):
    """Evaluations pooled into one (successes, trials, rate, Wilson interval); None for none."""
    if not evs:
        return None
    k, n = sum(e["successes"] for e in evs), sum(e["trials"] for e in evs)
    return {"successes": k, "trials": n, "success_rate": k / n, "wilson95": common.wilson_interval(k, n)}


def seed_pairs(a_runs: list, b_runs: list) -> list:
    """(a, b) runs of the same training seed, by seed, for the seeds both sides have."""
    seed = lambda r: r["cfg"]["args"]["seed"]  # noqa: E731
    bs = {seed(r): r for r in b_runs}
    return [(r, bs[seed(r)]) for r in sorted(a_runs, key=seed) if seed(r) in bs]


def comparisons(runs: list, controls: list = (), replicates: list = ()) -> tuple:
    """The paper's claimed differences, each as a (a > b) Fisher exact test on the evaluation
    episodes, per setting at its shared ratio: C2 co-training > real-only; C6 CFG-ADDA > co-training
    and each method vs co-training, CFG-ADDA's lambda = -0.5 > lambda = 0 (its guidance sweep, the
    same seeds); C7 co-training > +discrimination; C8 co-training > pre-train + fine-tune; C3 the
    ratios inside [w_n, w_q] (pooled) > those outside (pooled, 0 < w < 1); and each control run
    (`controls`: run.json "control", e.g. co-training at pre-train + fine-tune's step budget) in the
    comparison it controls (C8). C2 with more than one training seed on both sides (`replicates`: the
    other seeds' runs) is the Cochran-Mantel-Haenszel test stratified by seed (rule difference-2),
    the pooled cells beside it, and each seed's Fisher test in a table of its own. p-values are per
    test; p_holm corrects them over the table's tests."""
    rows, by_seed = [], []

    def add(name, claim, a_label, ev_a, b_label, ev_b, runs_a=(), runs_b=(), test=None):
        if ev_a is None or ev_b is None:  # Tables 1-3, the guidance and guideline tables say which run is missing
            return
        f = test or fisher_exact(ev_a["successes"], ev_a["trials"], ev_b["successes"], ev_b["trials"])
        diff = ev_a["successes"] / ev_a["trials"] - ev_b["successes"] / ev_b["trials"]
        rows.append({"setting": name, "claim": claim, "a": a_label, "b": b_label, "a_cell": cell(ev_a),
                     "b_cell": cell(ev_b), "a_successes": ev_a["successes"], "a_trials": ev_a["trials"],
                     "b_successes": ev_b["successes"], "b_trials": ev_b["trials"], "difference": diff, **f,
                     "outcome": ("a > b" if diff > 0 else "a < b") if f["p_two_sided"] < 0.05
                     else "no difference detected", "data": data_mark(runs_a, runs_b),
                     "test": f.get("test", "Fisher exact")})

    def ev_of(r):
        return r["eval"] if r else None

    def label(r, given):
        return given or (f"{r['method']} w={r['mixing_ratio']:.3g}" if r else "")

    def pair(name, claim, a, b, a_label="", b_label=""):  # two runs' headline evaluations
        add(name, claim, label(a, a_label), ev_of(a), label(b, b_label), ev_of(b), [a], [b])

    for (name, n, m), rs in sorted(by_setting(runs).items()):
        w = shared_ratio(rs)
        if w is None:
            continue
        co = find(rs, "cotrain", w)
        reps = [r for r in replicates if setting(r) == name and r["eval"]]  # the other training seeds' runs
        seeds = seed_pairs([co] + [r for r in reps if r["method"] == "cotrain" and abs(r["mixing_ratio"] - w) < 1e-6],
                           [r for r in rs + reps if r["method"] == "real_only" and r["eval"]]) if co and reps else []
        if len(seeds) > 1:  # difference-2: stratified by training seed
            counts = [(a["eval"]["successes"], a["eval"]["trials"], b["eval"]["successes"], b["eval"]["trials"])
                      for a, b in seeds]
            test = {**cmh_test(counts), "test": f"CMH over {len(seeds)} training seeds"}
            pooled = [pool([a["eval"] for a, _ in seeds]), pool([b["eval"] for _, b in seeds])]
            test["p_fisher_pooled"] = fisher_exact(pooled[0]["successes"], pooled[0]["trials"],
                                                   pooled[1]["successes"], pooled[1]["trials"])["p_two_sided"]
            add(name, f"C2 co-training > real-only ({len(seeds)} seeds)", f"cotrain w={w:.3g}", pooled[0],
                "real_only", pooled[1], [a for a, _ in seeds], [b for _, b in seeds], test)
            for a, b in seeds:
                f = fisher_exact(a["eval"]["successes"], a["eval"]["trials"],
                                 b["eval"]["successes"], b["eval"]["trials"])
                by_seed.append({"setting": name, "seed": a["cfg"]["args"]["seed"], "a_cell": cell(a["eval"]),
                                "b_cell": cell(b["eval"]), "p_two_sided": f["p_two_sided"]})
        else:
            pair(name, "C2 co-training > real-only", co, find(rs, "real_only", like=co), b_label="real_only")
        for method in [x for x in METHODS if METHODS[x].ratio is None and x not in ("cotrain", "discriminate")]:
            r = find(rs, method, w)  # against co-training on its own data version where there is one
            pair(name, f"C6 {method} > co-training", r, find(rs, "cotrain", w, like=r) if r else None)
        ca = find(rs, "cfg_adda", w)
        if ca is not None:
            add(name, "C6 CFG-ADDA lambda = -0.5 > lambda = 0", "cfg_adda lambda=-0.5", ca["sweep"].get(-0.5),
                "cfg_adda lambda=0", ca["sweep"].get(0.0), [ca], [ca])
            cf = find(rs, "cfg", w, like=ca)  # CFG-ADDA's objective without the adversarial term: the control
            if cf is not None:
                add(name, "C6 control: CFG-ADDA > CFG at lambda = -0.5 (the adversarial term)", "cfg_adda lambda=-0.5",
                    ca["evals"].get(-0.5), "cfg lambda=-0.5", cf["evals"].get(-0.5), [ca], [cf])
        d = find(rs, "discriminate", w)
        pair(name, "C7 co-training > +discrimination", find(rs, "cotrain", w, like=d) if d else co, d)
        ft = find(rs, PRETRAIN_FT)
        pair(name, "C8 co-training > pre-train + fine-tune", find(rs, "cotrain", w, like=ft) if ft else co, ft,
             b_label=PRETRAIN_FT)
        for c in [c for c in controls if setting(c) == name and c["control"].startswith("C8") and c["eval"]]:
            pair(name, f"C8 co-training at {c['step'] // 1000}k steps (the control) > pre-train + fine-tune", c, ft,
                 a_label=f"cotrain w={c['mixing_ratio']:.3g} {c['step'] // 1000}k", b_label=PRETRAIN_FT)
        w_n, w_q = common.balanced_ratio_range(n, m)
        sweep = [r for r in rs if r["method"] == "cotrain" and r["eval"]]
        inside = [r for r in sweep if w_n - 1e-6 <= r["mixing_ratio"] <= w_q + 1e-6]
        outside = [r for r in sweep if not w_n - 1e-6 <= r["mixing_ratio"] <= w_q + 1e-6]
        add(name, f"C3 co-training inside [w_n, w_q] = [{w_n:.3g}, {w_q:.3g}] > outside",
            f"cotrain inside ({len(inside)} ratios)", pool([r["eval"] for r in inside]),
            f"cotrain outside ({len(outside)} ratios)", pool([r["eval"] for r in outside]), inside, outside)
    for r, p in zip(rows, holm([r["p_two_sided"] for r in rows])):
        r["p_holm"] = p
    md = markdown_table(rows, ["setting", "claim", "a_cell", "b_cell", "difference", "p_a_greater", "p_two_sided",
                               "p_holm", "outcome", "data"],
                        {"difference": "{:+.3f}", "p_a_greater": "{:.2g}", "p_two_sided": "{:.2g}", "p_holm": "{:.2g}"})
    md += (f"\n\n*{len(rows)} tests; Fisher's exact test on the episodes (a_cell vs b_cell: success rate, "
           "successes/trials, Wilson 95%); p_a_greater: one-sided, in the paper's direction; outcome at "
           "two-sided p < 0.05, not corrected for the number of tests; p_holm: the two-sided p after Holm's "
           "correction over this table's tests; data: whether both sides trained on one data version "
           "(target/source dataset digests), else which.*")
    if by_seed:
        md = md[:-1] + (" A C2 row over several seeds pools their episodes in its cells and takes p from the "
                        "Cochran-Mantel-Haenszel test stratified by seed (rule difference-2).*")
        md += "\n\n### C2 by training seed\n\n" + markdown_table(
            by_seed, ["setting", "seed", "a_cell", "b_cell", "p_two_sided"], {"p_two_sided": "{:.2g}"})
        md += "\n\n*a: co-training at the shared ratio, b: real-only, the same training seed; Fisher's exact test.*"
    return rows, md, []


def guidance_table(runs: list) -> tuple:
    """Fig. 10: success against the guidance scale lambda (eps = (1 + lambda) eps_c - lambda eps_null)
    for every evaluated label-conditioned (cfg, cfg_adda) checkpoint."""
    rows, missing = [], []
    for r in runs:
        if not r["use_label"]:
            continue
        evs = {g: ev for g, ev in r["sweep"].items() if g is not None}
        if not evs:
            missing.append(f"guidance sweep {r['run']}: not evaluated (python 03_eval.py --ckpt "
                           f"{records.portable(r['ckpt'] or os.path.join(r['folder'], 'ckpt.pt'))} "
                           f"--guidance=-1,-0.5,0,0.5 --trials 100)")
            continue
        for g in sorted(evs):
            rows.append({"task": r["task"], "target_domain": r["target_domain"], "method": r["method"],
                         "mixing_ratio": r["mixing_ratio"], "run": r["run"], "guidance": g,
                         "success": evs[g]["success_rate"], "cell": cell(evs[g])})
    if not any(r["use_label"] for r in runs):
        missing.append("guidance sweep (Fig. 10): no cfg or cfg_adda run ("
                       + train_cmd(f"NutAssembly/{PAPER_DOMAIN}", "cfg_adda") + ")")
    md = markdown_table(rows, ["task", "target_domain", "method", "mixing_ratio", "guidance", "cell"],
                        {"mixing_ratio": "{:.3g}", "guidance": "{:g}"})
    return rows, md, missing


def guideline_table(runs: list) -> tuple:
    """Fig. 15: the guideline's range [w_n, w_q] (App. D.5) against the best measured ratio of the
    co-training sweep, per task x gap setting x dataset size (N target, M source demos)."""
    rows, missing = [], []
    groups = {}
    for r in runs:
        if r["method"] in ("cotrain",) and r["eval"]:
            groups.setdefault((setting(r), r["task"], r["target_domain"], r["n_target"], r["n_source"]), []).append(r)
    for (name, task, dom, n, m), rs in sorted(groups.items()):
        if len(rs) < 2:
            missing.append(f"guideline {name} N={n} M={m}: {len(rs)} evaluated cotrain ratio(s), needs 2")
            continue
        w_n, w_q = common.balanced_ratio_range(n, m)
        best = max(rs, key=lambda r: r["eval"]["success_rate"])
        lo_best = best["eval"]["wilson95"][0]
        # ratios whose success interval reaches the best one's lower bound: statistically tied with it
        tied = sorted(r["mixing_ratio"] for r in rs if r["eval"]["wilson95"][1] >= lo_best)
        rows.append({"setting": name, "task": task, "target_domain": dom, "N": n, "M": m, "w_n": w_n, "w_q": w_q,
                     "auto": common.resolve_ratio("auto", n, m), "ratios": sorted(r["mixing_ratio"] for r in rs),
                     "best_ratio": best["mixing_ratio"], "best_success": best["eval"]["success_rate"],
                     "best_in_range": bool(w_n <= best["mixing_ratio"] <= w_q),
                     "tied_with_best": ", ".join(f"{w:.3g}" for w in tied)})
    md = markdown_table(rows, ["task", "target_domain", "N", "M", "w_n", "w_q", "best_ratio", "best_success",
                               "best_in_range", "tied_with_best"],
                        {"w_n": "{:.3f}", "w_q": "{:.3f}", "best_ratio": "{:.3g}", "best_success": "{:.3f}"})
    return rows, md, missing
