"""Alignment metrics of App. D.2 and the probe of Sec. 4.2, on two point clouds of features
(split from 04_analyze.py by concept; 04 re-exports them): each domain standardized on its own,
2-Wasserstein between the clouds, Gromov-Wasserstein between their distance matrices (pooled-mean
normalized), a 2-layer MLP domain probe, a linear readout of task state, Pearson / Spearman
correlations."""
import itertools

import numpy as np
import ot
import torch
from scipy import stats

from cli import UsageError


def standardize(x: np.ndarray) -> np.ndarray:
    """Each domain normalized on its own (App. D.2): zero mean, unit variance per dimension."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


def wasserstein(xs: np.ndarray, xt: np.ndarray, method: str = "exact", reg: float = 0.05) -> float:
    """2-Wasserstein distance between two point clouds with uniform weights.
    exact: network simplex (ot.emd2); sinkhorn: entropic OT with reg x the mean squared cost
    (ot.sinkhorn2, log-domain), an upper bound that converges to the exact value as reg -> 0."""
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
    return float(ot.gromov.gromov_wasserstein2(Cs, Ct, ot.unif(len(Cs)), ot.unif(len(Ct)),
                                               "square_loss", max_iter=1000))


def domain_probe(zs: np.ndarray, zt: np.ndarray, seed: int = 0, hidden: int = 64, steps: int = 500,
                 folds: int = 5, seeds: int = 1) -> tuple:
    """Discernibility (Sec. 4.2): held-out accuracy of a 2-layer MLP that tells the domains apart
    from (standardized, pooled) features; 0.5 = indiscernible, 1.0 = fully discernible.
    hidden = 0: a linear probe (logistic regression), which sees only linearly separable domains.
    `folds`-fold cross-validated (a seeded split; each fold's probe seeded), optionally repeated
    over `seeds` splits (seed, seed + 1, ...): returns (mean held-out accuracy, standard deviation
    of the folds' accuracies). One held-out split moved the MLP probe by up to 0.17 between
    machines where the domains are not fully separable; the spread says which digits mean something."""
    x = np.concatenate([zs, zt]).astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = np.concatenate([np.zeros(len(zs)), np.ones(len(zt))]).astype(np.float32)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    accs = []
    for s in range(seed, seed + seeds):
        parts = np.array_split(np.random.default_rng(s).permutation(len(x)), folds)
        for k, test in enumerate(parts):
            train = torch.from_numpy(np.concatenate([p for j, p in enumerate(parts) if j != k]))
            torch.manual_seed(s * folds + k)
            net = (torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden, 1)) if hidden else torch.nn.Linear(x.shape[1], 1))
            opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
            for _ in range(steps):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X[train]).squeeze(-1), Y[train])
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                accs.append(float(((net(X[test]).squeeze(-1) > 0).float() == Y[test]).float().mean()))
    return float(np.mean(accs)), float(np.std(accs))


def state_probe(zs: np.ndarray, zt: np.ndarray, ys: np.ndarray, yt: np.ndarray, folds: int = 5,
                ridge: float = 1e-4, seed: int = 0) -> float:
    """Task-state readout: how well a linear map recovers a task-relevant state y (e.g. the peg's
    xy, tasks.PROBE_STATE) from the features of both domains pooled and standardized. The mean
    Euclidean error of held-out predictions (y's units), `folds`-fold cross-validated with a
    seeded split, ridge regression in closed form (deterministic: no training loop). Where y is
    fixed per domain (the peg in the physics gap) this asks whether the features still carry
    "where the goal is", the information a domain-confusion loss is built to remove."""
    x = np.concatenate([zs, zt]).astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    x = np.concatenate([x, np.ones((len(x), 1))], 1)
    y = np.concatenate([ys, yt]).astype(np.float64)
    parts = np.array_split(np.random.default_rng(seed).permutation(len(x)), folds)
    errs = []
    for k, test in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != k])
        A = x[train].T @ x[train] + ridge * len(train) * np.eye(x.shape[1])
        coef = np.linalg.solve(A, x[train].T @ y[train])
        errs.append(np.linalg.norm(x[test] @ coef - y[test], axis=1))
    return float(np.concatenate(errs).mean())


EXACT_P_MAX_N = 8  # up to 8! = 40,320 orderings: p-values by enumerating them


def exact_p(x, y, stat) -> float:
    """Two-sided permutation p-value of stat(x, y) over every ordering of y: the share of orderings
    at least as extreme. With a handful of checkpoints the t-approximation is wrong (3 points in
    perfect rank order get p = 0 from it, where 2 of the 6 orderings are that extreme: p = 1/3)."""
    obs = abs(stat(x, y))
    perms = np.array(list(itertools.permutations(y)))
    vals = np.array([abs(stat(x, yp)) for yp in perms])
    return float(np.mean(vals >= obs - 1e-12))


RANDOM_ORDERINGS = 200_000  # past EXACT_P_MAX_N points: a seeded sample of orderings instead


def random_p(x, y, n: int = RANDOM_ORDERINGS, seed: int = 0) -> float:
    """Two-sided permutation p-value of Pearson's r(x, y) over `n` random orderings of y (seeded:
    the same inputs give the same p); its standard error is at most 0.5 / sqrt(n) ~ 0.001."""
    x = (x - x.mean()) / np.linalg.norm(x - x.mean())
    y = (y - y.mean()) / np.linalg.norm(y - y.mean())
    perms = np.random.default_rng(seed).permuted(np.tile(y, (n, 1)), axis=1)
    return float(np.mean(np.abs(perms @ x) >= abs(float(x @ y)) - 1e-12))


def correlation(x, y) -> dict:
    """Pearson and Spearman correlation with two-sided permutation p-values (Fig. 7): exact
    (every ordering) for up to EXACT_P_MAX_N checkpoints, from RANDOM_ORDERINGS seeded random
    orderings above (scipy's t-approximation kept as pearson_t_p / spearman_t_p)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        raise UsageError(f"a correlation needs at least 3 checkpoints, got {len(x)}")
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    out = {"n": len(x), "pearson": float(pr.statistic), "spearman": float(sr.statistic),
           "pearson_t_p": float(pr.pvalue), "spearman_t_p": float(sr.pvalue)}
    if len(x) <= EXACT_P_MAX_N:
        pearson = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
        out.update(pearson_p=exact_p(x, y, pearson), spearman_p=exact_p(rx, ry, pearson),
                   p_method="exact permutation")
    else:
        out.update(pearson_p=random_p(x, y), spearman_p=random_p(rx, ry),
                   p_method=f"permutation ({RANDOM_ORDERINGS:,} random orderings)")
    return out
