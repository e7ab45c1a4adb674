"""The paper's claims as code: 04_analyze.py writes results/analysis/claims.md (+ .json) from here.

One row per claim x setting: the paper's number, ours with n and a 95 % interval, the test behind
ours and its p, and the verdict computed by the claim's rule. A rule is fixed before the data it
judges and names the commit that fixed it; a rule changed later is a new rule (a new id) and the
table says which one each row used. Three rules were written after their data had been seen (the
toy model's and the probe's): they say so, and their rows are descriptions, not tests of a
prediction. The inputs are the analysis tables (comparisons, guideline, correlations, alignment)
and the toy model's metrics.json, all under results/, so the table rebuilds from the committed
records alone:

    python 04_analyze.py --runs results --out results/analysis --only claims
"""
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import gammaln


@dataclass(frozen=True)
class Rule:
    id: str
    fixed: str   # the commit that fixed the rule before its data, or "after the data: ..."
    text: str


RULES = {r.id: r for r in (
    Rule("difference-1", "e7889c0",
         "reproduced when the paper's direction holds at Fisher two-sided p < 0.05; otherwise not "
         "reproduced: the opposite difference (p < 0.05) or no difference detected, with the test's "
         "power at the paper's effect"),
    Rule("difference-2", "965a426 (before any of its policies was evaluated)",
         "C2 with several training seeds on both sides (seed i against seed i): the Cochran-Mantel-Haenszel "
         "test stratified by seed (two-sided, continuity-corrected) decides as difference-1's Fisher test "
         "does; the power, of Fisher's test on the pooled episodes; each seed's test and the pooled one "
         "reported beside it (comparisons.md)"),
    Rule("range-1", "e7889c0",
         "reproduced when the best co-training ratio lies in [w_n, w_q] and the in-range ratios' pooled "
         "episodes beat the out-of-range ones' (0 < w < 1) at two-sided p < 0.05; not reproduced when the "
         "pooled test goes the other way at p < 0.05, or the best ratio lies outside with no in-range "
         "ratio tied with it (Wilson intervals); inconclusive otherwise"),
    Rule("correlation-1", "e7889c0",
         "over the ratio sweep (co-training at every ratio, sim_only and real_only its ends), trunk W "
         "against success: reproduced at permutation p < 0.05 in the paper's sign for the gap the policy "
         "sees (Fig. 7: positive physics-only, negative visual-only and visual-physics); inconclusive "
         "otherwise"),
    Rule("control-1", "5a9ea28 (before its control run finished training)",
         "C8 by difference-1 against co-training trained for pre-train + fine-tune's total steps (a "
         "control run of the plan); until that run is evaluated: not comparable yet (the 20k co-training "
         "had half the steps); a comparison across data versions names them"),
    Rule("probe-1", "after the data: issue 45",
         "reproduced when the 2-layer MLP domain probe reaches >= 0.9 accuracy on every evaluated "
         "headline checkpoint of the setting"),
    Rule("toy-anova-1", "after the data: issue 45",
         "reproduced when the alignment factor explains a larger share of the loss variance than the "
         "mixing ratio (the paper: 0.48 against 0.22), two-way ANOVA on the loss"),
    Rule("toy-regime-1", "after the data: issue 45",
         "reproduced when the lowest seed-mean loss over the grid (w < 1) lies in a structured cell and "
         "is below the best overlapping and the best disjoint cell at Welch two-sided p < 0.05 over seeds"),
)}

# The paper's numbers (Lei et al. 2026) and the effect, in success rate, a power statement uses.
# C2's effect is the physics-only one of Fig. 8 (NutAssembly: best co-training 0.88-0.89 against
# target-only 0.85); the visual settings use Fig. 8's visual-only gap (0.975 against ~0.85).
PAPER = {
    "C1": ("Sec. 3, Fig. 4 ANOVA", "alignment 0.48, ratio 0.22, interaction 0.30 of the variance", None),
    "C1b": ("Sec. 3, Fig. 3-4", "structured alignment lowest (~1) against overlapping and disjoint (~10-40)", None),
    "C2": ("Sec. 4, Fig. 8, Table 2", "sim-and-sim physics-only 0.85 -> 0.88-0.89; sim-and-real 8.6 -> 15.3 of 30",
           {"physics": 0.04, "visual": 0.12}),
    "C3": ("App. D.5, Fig. 15", "the best ratio lies in [w_n, w_q]", None),
    "C4": ("Sec. 4.2, Fig. 7", "Pearson r(W, success): physics-only +0.57, visual-only -0.76, visual-physics -0.70",
           None),
    "C5": ("Sec. 4.2", "a 2-layer MLP probe tells the domains apart (~1.0)", None),
    "C6": ("Table 2, Fig. 9", "CFG-ADDA 0.88 vs co-training 0.85 (Fig. 9, w = 0.1); 21 vs 15.3 of 30 (Table 2)",
           {"any": 0.03}),
    "C6-guidance": ("Fig. 10", "CFG-ADDA 0.545 at lambda = -0.5 vs 0.51 at 0", {"any": 0.035}),
    "C7": ("Table 1", "co-training 0.85 -> +discrimination 0.79", {"any": 0.06}),
    "C8": ("Table 3", "pre-train + fine-tune 0.77 vs co-training 0.925", {"any": 0.155}),
}
SIGN = {"physics": +1, "visual": -1, "visual_physics": -1}  # Fig. 7: the sign of r(W, success) per gap
TITLES = {
    "C1": "Toy: alignment explains more loss variance than the ratio",
    "C1b": "Toy: structured alignment beats overlapping and disjoint",
    "C2": "Co-training beats real-only",
    "C3": "The best ratio lies in the guideline's range",
    "C4": "Alignment of the features correlates with success",
    "C5": "A probe tells the domains apart",
    "C6": "CFG-ADDA beats co-training",
    "C6-guidance": "CFG-ADDA: lambda = -0.5 beats lambda = 0",
    "C7": "+discrimination hurts co-training",
    "C8": "Sim pre-training + real fine-tuning falls below co-training",
}


def claim_command(claim: str, plan: str = "plans/nut_study.toml") -> str:
    """The one command that reruns a claim (its runs in the plan of its setting, then its products)."""
    if claim.startswith("C1"):
        return "python 00_toy.py --design paper --out results/toy_paper; python 00_toy.py --out results/toy"
    c = claim.split("-")[0]
    runs = "" if c == "C5" else f" --claim {c}"  # C5 probes every checkpoint of the study
    return f"python study.py {plan}{runs}; python 04_analyze.py --runs results --claim {c}"


def gap_seen(setting: str, images: bool) -> str:
    """The gap a policy sees in a setting: a low-dim policy sees no pixels (physics only)."""
    domain = setting.split("/")[1].split(" ")[0]
    visual, physics = images and "visual" in domain, "physics" in domain
    return "visual_physics" if visual and physics else "visual" if visual else "physics"


def fisher_p_values(n_a: int, n_b: int, k: int) -> tuple:
    """Fisher's two-sided exact p-value of every table with k successes in all (a: i of n_a, b: k - i
    of n_b): the probability, given the margins, of the tables no more likely than it (scipy's rule,
    relative tolerance 1e-7). Returns (i values, p-values)."""
    i = np.arange(max(0, k - n_b), min(n_a, k) + 1)
    log_c = lambda n, x: gammaln(n + 1) - gammaln(x + 1) - gammaln(n - x + 1)  # noqa: E731
    h = np.exp(log_c(n_a, i) + log_c(n_b, k - i) - log_c(n_a + n_b, k))  # hypergeometric P(i | k)
    order = np.sort(h)
    below = np.searchsorted(order, h * (1 + 1e-7), side="right")  # tables at most as likely as each
    return i, np.minimum(np.cumsum(order)[below - 1], 1.0)


def fisher_power(p_b: float, effect: float, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    """Power of Fisher's two-sided exact test at level alpha to find a = b + effect when b succeeds
    at p_b (n_a and n_b episodes): exact, summed over every outcome (deterministic)."""
    p_a = min(max(p_b + effect, 0.0), 1.0)
    pa, pb = stats.binom.pmf(np.arange(n_a + 1), n_a, p_a), stats.binom.pmf(np.arange(n_b + 1), n_b, p_b)
    power = 0.0
    for k in range(n_a + n_b + 1):
        i, p = fisher_p_values(n_a, n_b, k)
        power += float(np.sum(pa[i] * pb[k - i] * (p < alpha)))
    return power


def effect_for(claim: str, gap: str):
    table = PAPER[claim][2] or {}
    return table.get("any", table.get("visual" if "visual" in gap else "physics"))


def difference_verdict(c: dict, claim: str, gap: str) -> str:
    """difference-1 on one comparisons row (a > b is the paper's direction)."""
    p = c["p_two_sided"]
    if p < 0.05:
        return f"reproduced (p = {p:.2g})" if c["difference"] > 0 else f"not reproduced: the opposite (p = {p:.2g})"
    effect = effect_for(claim, gap)
    power = fisher_power(c["b_successes"] / c["b_trials"], effect, c["a_trials"], c["b_trials"]) if effect else None
    return ("not reproduced: no difference detected" +
            (f" (p = {p:.2g}; power {100 * power:.0f} % at the paper's {effect:+.3g})" if power is not None else ""))


def row(claim, setting, ours, test, p, verdict, rule, data="same") -> dict:
    plan = "plans/img_study.toml" if ", images:" in setting else "plans/nut_study.toml"  # the setting's plan
    return {"claim": claim, "title": TITLES[claim], "setting": setting, "paper": PAPER[claim][1],
            "paper_where": PAPER[claim][0], "ours": ours, "test": test, "p": p, "verdict": verdict, "rule": rule,
            "rule_fixed": RULES[rule].fixed, "data": data,
            "command": claim_command(claim, plan)}


def data_note(c: dict) -> str:
    return c.get("data", "same")


def robot_rows(comparisons: list, guideline: list, correlations: list, alignment: list, images: dict) -> list:
    """Every robot-level claim, per setting of the comparisons table (04_analyze.comparisons)."""
    out = []
    settings = sorted({c["setting"] for c in comparisons} | {g["setting"] for g in guideline if "setting" in g})
    for s in settings:
        cs = {c["claim"]: c for c in comparisons if c["setting"] == s}
        gap = gap_seen(s, images.get(s, False))
        where = f"{s}, {'low-dim' if not images.get(s) else 'images'}: {gap.replace('_', '+')} gap"

        def diff(claim, key, label=None):
            c = next((v for k, v in cs.items() if k.startswith(key)), None)
            if c is None:
                return row(label or claim, where, "not measured", "", None, "pending: no evaluated pair",
                           "difference-1")
            test = c.get("test", "Fisher exact")
            return row(label or claim, where, f"{c['a_cell']} vs {c['b_cell']}", f"{test}, {c['claim']}",
                       c["p_two_sided"], difference_verdict(c, label or claim, gap),
                       "difference-2" if test.startswith("CMH") else "difference-1", data_note(c))

        out.append(diff("C2", "C2 "))
        out.append(c3_row(s, where, cs, guideline))
        out.append(c4_row(s, where, gap, correlations))
        out.append(c5_row(s, where, alignment))
        out.append(diff("C6", "C6 cfg_adda > co-training"))
        out.append(diff("C6", "C6 CFG-ADDA lambda = -0.5 > lambda = 0", "C6-guidance"))
        out.append(diff("C7", "C7 "))
        out.append(c8_row(where, cs, gap))
    return out


def c3_row(s, where, cs, guideline) -> dict:
    g = next((x for x in guideline if f"{x['task']}/{x['target_domain']}" == s.split(" ")[0]), None)
    c = next((v for k, v in cs.items() if k.startswith("C3 ")), None)
    if g is None or c is None:
        return row("C3", where, "not measured", "", None, "pending: no ratio sweep", "range-1")
    tied_in = [w for w in map(float, g["tied_with_best"].split(", ")) if g["w_n"] - 1e-6 <= w <= g["w_q"] + 1e-6]
    p = c["p_two_sided"]
    if g["best_in_range"] and c["difference"] > 0 and p < 0.05:
        verdict = "reproduced"
    elif (c["difference"] < 0 and p < 0.05) or (not g["best_in_range"] and not tied_in):
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    ours = (f"best w = {g['best_ratio']:.3g} ({g['best_success']:.3f}; range [{g['w_n']:.3g}, {g['w_q']:.3g}]; "
            f"tied with it: {g['tied_with_best']}); inside {c['a_cell']} vs outside {c['b_cell']}")
    return row("C3", where, ours, "best ratio's place; Fisher exact, pooled in vs out", p,
               f"{verdict} (best ratio {'inside' if g['best_in_range'] else 'outside'} the range; pooled p = {p:.2g})",
               "range-1", data_note(c))


def c4_row(s, where, gap, correlations) -> dict:
    c = next((x for x in correlations if x["setting"] == s and x["checkpoints"] == "ratio sweep"
              and x["metric"] == "W trunk" and "pearson" in x), None)
    if c is None:
        return row("C4", where, "not measured", "", None, "pending: fewer than 3 evaluated sweep checkpoints",
                   "correlation-1")
    sign = SIGN[gap]
    ok = np.sign(c["pearson"]) == sign and c["pearson_p"] < 0.05
    ours = f"r(W trunk, success) = {c['pearson']:+.2f} (n = {c['n']}; Spearman {c['spearman']:+.2f})"
    return row("C4", where, ours, f"Pearson, {c['p_method']} p", c["pearson_p"],
               f"{'reproduced' if ok else 'inconclusive'} (paper's sign here {'+' if sign > 0 else '-'}; "
               f"p = {c['pearson_p']:.2g})", "correlation-1")


def c5_row(s, where, alignment) -> dict:
    rs = [r for r in alignment if r["setting"] == s and r["headline"]
          and r.get("success") is not None and r.get("probe_trunk") is not None]
    if not rs:
        return row("C5", where, "not measured", "", None, "pending: no probed checkpoint", "probe-1")
    lo = min(rs, key=lambda r: r["probe_trunk"])
    ok = lo["probe_trunk"] >= 0.9
    sd = f" +- {lo['probe_trunk_sd']:.3f}" if lo.get("probe_trunk_sd") is not None else ""
    ours = (f"MLP probe {lo['probe_trunk']:.3f}{sd}-{max(r['probe_trunk'] for r in rs):.3f} over {len(rs)} checkpoints "
            f"(lowest: {lo['method']}); linear probe {min(r['probe_trunk_linear'] for r in rs):.3f}-"
            f"{max(r['probe_trunk_linear'] for r in rs):.3f}")
    return row("C5", where, ours, "held-out probe accuracy", None,
               "reproduced (descriptive)" if ok else "not reproduced (descriptive)", "probe-1")


def c8_row(where, cs, gap) -> dict:
    ctl = next((v for k, v in cs.items() if k.startswith("C8 co-training at") and "(the control)" in k), None)
    plain = next((v for k, v in cs.items() if k.startswith("C8 co-training > pre-train")), None)
    if ctl is None:
        ours = f"{plain['a_cell']} vs {plain['b_cell']}" if plain else "not measured"
        return row("C8", where, ours, "", plain["p_two_sided"] if plain else None,
                   "not comparable yet: the co-training control at pre-train + fine-tune's step budget is not "
                   "evaluated", "control-1", data_note(plain) if plain else "")
    return row("C8", where, f"{ctl['a_cell']} vs {ctl['b_cell']}", f"Fisher exact, {ctl['claim']}", ctl["p_two_sided"],
               difference_verdict(ctl, "C8", gap), "control-1", data_note(ctl))


# ----------------------------------------------------------------------------------------------
# the toy model (Sec. 3): from 00_toy.py's metrics.json
# ----------------------------------------------------------------------------------------------
def toy_rows(toys: dict) -> list:
    """{label: metrics.json content}: C1 (ANOVA shares) and C1b (the best regime) per toy design."""
    out = []
    for label, m in toys.items():
        where = f"toy model ({label})"
        for an in [m["anova"]] + [v for v in m["anova_variants"] if v["metric"] == "log " + m["anova"]["metric"]
                                  and v["ratios"] == m["anova"]["ratios"]]:
            a, w, i = (an[k]["share"] for k in ("alignment", "ratio", "interaction"))
            explained = a + w + i
            ours = (f"{an['metric']}: alignment {a:.3f}, ratio {w:.3f}, interaction {i:.3f} of the variance "
                    f"(of the explained part {a / explained:.2f} / {w / explained:.2f} / {i / explained:.2f})")
            out.append(row("C1", where, ours, f"two-way ANOVA, alignment F p = {an['alignment']['p']:.2g}",
                           an["alignment"]["p"], f"{'reproduced' if a > w else 'not reproduced'} (descriptive)",
                           "toy-anova-1", data=""))
        out.append(regime_row(where, m))
    return out


def regime_row(where: str, m: dict) -> dict:
    cells = {}
    for c in m["cells"]:
        if c["w"] < 1:
            cells.setdefault((c["d"], c["w"]), []).append(c)
    mean = {k: float(np.mean([c["mse_all"] for c in v])) for k, v in cells.items()}
    regime = {k: max(set(c["regime"] for c in v), key=[c["regime"] for c in v].count) for k, v in cells.items()}
    best = {}
    for k in cells:
        if regime[k] not in best or mean[k] < mean[best[regime[k]]]:
            best[regime[k]] = k
    top = min(best.values(), key=mean.get)
    ps = {g: float(stats.ttest_ind([c["mse_all"] for c in cells[top]], [c["mse_all"] for c in cells[k]],
                                   equal_var=False).pvalue) for g, k in best.items() if k != top}
    p = max(ps.values()) if ps else None
    seeds = len(cells[top])
    if regime[top] != "structured":
        verdict = f"not reproduced (descriptive): the lowest loss is {regime[top]}'s"
    elif p is not None and p >= 0.05:
        verdict = f"not reproduced (descriptive): structured lowest, not separated (p = {p:.2g}, {seeds} seeds)"
    else:
        verdict = "reproduced (descriptive)" + (f" (p <= {p:.2g})" if p is not None else "")
    ours = "; ".join(f"{g} best {mean[k]:.3g} (d = {k[0]:g}, w = {k[1]:g})" for g, k in sorted(best.items()))
    return row("C1b", where, ours, "Welch t over seeds, best cell vs each other regime's best", p, verdict,
               "toy-regime-1", data="")


COLS = ["claim", "title", "setting", "paper", "ours", "verdict", "rule", "data"]


def markdown(rows: list) -> str:
    """The claims table, then the rules it used (with where each was fixed) and the commands."""
    def esc(v):
        return "" if v is None else str(v).replace("|", "\\|")
    lines = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    lines += ["| " + " | ".join(esc(r[c]) for c in COLS) + " |" for r in rows]
    used = sorted({r["rule"] for r in rows})
    lines += ["", "Rules (each fixed at the commit named, before its data unless it says otherwise):", ""]
    lines += [f"- **{k}** (fixed: {RULES[k].fixed}): {RULES[k].text}." for k in used]
    lines += ["", "One command per claim (its runs, resumable, then its products):", ""]
    lines += [f"- {c}: `{cmd}`" for c, cmd in sorted({(r["claim"], r["command"]) for r in rows})]
    return "\n".join(lines)
