"""Pre-registered verdict rules of the three findings, and the README "Results" section written from them.

The rules are those of ``experiments/PROTOCOL.md`` (committed before the runs). Every verdict is recomputed
here from the per-run numbers stored in ``experiments/results/<name>/<mode>/results.json``; the experiment
scripts call the same functions, and ``tests/test_experiments.py`` checks that stored and recomputed verdicts
agree. The README section (between ``<!-- results:start -->`` and ``<!-- results:end -->``) reports full-mode
results only; a finding without a clean, current-schema full result says "full run pending". A full-mode
result with ``git_dirty: true`` or another schema is refused.

    python experiments/make_results.py           # rewrite README.md in place
    python experiments/make_results.py --check   # exit 1 if README.md differs from what would be written
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments._common import SCHEMA, cluster_bootstrap, to_plain  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
NAMES = ("prunability_vs_dimension", "regions_vs_sparsity", "topology_under_imp")

N_BOOT, BOOT_SEED, MIN_UNITS = 2000, 0, 3
# Finding 1
EPS_MIN = 0.01            # ε is at least one accuracy point ...
DIFFICULTY_BAND = 0.03    # max - min over d of the seed-mean dense accuracy
ID_MIN_RATIO = 0.5        # measured MLE ID >= 0.5 d at every d, and strictly increasing in d
RHO_MARGIN = 0.3          # |rho| below this: no association
# Finding 2
ACC_FRACTION = 0.10       # accuracy has lost 10% of its margin above chance
COUNT_FRACTION = 0.50     # region count / bound has fallen to half of dense
DECADE_MARGIN = 0.5       # critical densities within half a decade: "together"
BOUND_TAU = 0.01          # log10 gain of the allocation's bound over uniform needed for a pair to count
ALLOC_EQ_TOL = 1e-9       # per-layer densities this close are the same allocation
ACC_MARGIN_2B = 0.005     # +-0.5 accuracy points
# Finding 3
RET_MIN_EXCESS = 0.1      # "far more often" than random
RET_MARGIN = 0.02         # IMP must beat the stronger magnitude null by this much retention
ACC_MARGIN_3C = 0.005     # non-inferiority margin, 0.5 accuracy points


# --------------------------------------------------------------------------------------------- helpers
def _interval_verdict(ci, *, above: str, below: str, margin: tuple[float, float] | None = None,
                      inside: str = "not reproduced (no effect: within the equivalence margin)") -> str:
    lo, hi = ci
    if lo is None or hi is None:
        return "inconclusive (no interval)"
    if lo > 0:
        return above
    if hi < 0:
        return below
    if margin is not None and margin[0] <= lo and hi <= margin[1]:
        return inside
    return "inconclusive"


def _boot(groups: list[list], stat, seed: int = BOOT_SEED) -> dict[str, Any]:
    return cluster_bootstrap(groups, stat, n_boot=N_BOOT, seed=seed)


# ------------------------------------------------------------------------------------------ Finding 1
def run_prunability(sparsity, acc, n_test: int) -> dict[str, Any]:
    """ε, prunability (sparsity of the last level before the first failing level) and censoring of one run."""
    a = float(acc[0])
    eps = max(EPS_MIN, math.sqrt(a * (1 - a) / n_test))
    fail = [i for i, x in enumerate(acc) if x < a - eps]
    if fail:
        return {"eps": eps, "prunability": float(sparsity[fail[0] - 1]), "level": fail[0] - 1,
                "censored": False}
    return {"eps": eps, "prunability": float(sparsity[-1]), "level": len(acc) - 1, "censored": True}


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank: ``scipy.stats.rankdata(v)`` (every value is an integer or a
    half, so exact)."""
    o = np.argsort(v, kind="mergesort")
    s = v[o]
    first = np.flatnonzero(np.concatenate([[True], s[1:] != s[:-1]]))
    end = np.append(first[1:], s.size)
    r = np.empty(s.size)
    r[o] = np.repeat((first + end + 1) / 2.0, end - first)
    return r


def _spearman(x, y) -> float:
    """Spearman's ρ, equal bit for bit to ``scipy.stats.spearmanr(x, y).statistic`` (the same ranks in the
    same memory layout into the same ``np.corrcoef``) at a fiftieth of its cost: the bootstrap calls it
    thousands of times."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0 or np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    ranked = np.empty((2, x.size))
    ranked[0], ranked[1] = _average_ranks(x), _average_ranks(y)
    # scipy ranks the columns of column_stack((x, y)) with apply_along_axis: a Fortran-ordered (n, 2) array
    return float(np.corrcoef(ranked.T, rowvar=False)[1, 0])


def _f1_group(runs: list[dict], label: str, cluster_key) -> dict[str, Any]:
    per = [{**r, **run_prunability(r["sparsity"], r["test_acc"], r["n_test"])} for r in runs]
    dims = sorted({r["d"] for r in per})
    by_d = []
    for d in dims:
        q = [r for r in per if r["d"] == d]
        by_d.append({"d": d, "mle": float(np.mean([r["mle"] for r in q])),
                     "twonn": float(np.mean([r["twonn"] for r in q])),
                     "dense_acc": float(np.mean([r["test_acc"][0] for r in q])),
                     "prunability": float(np.mean([r["prunability"] for r in q])),
                     "n_censored": int(sum(r["censored"] for r in q)), "n_runs": len(q)})
    dense = [b["dense_acc"] for b in by_d]
    spread = float(max(dense) - min(dense))
    mle = [b["mle"] for b in by_d]
    id_ok = all(b > a for a, b in zip(mle, mle[1:])) and all(b["mle"] >= ID_MIN_RATIO * b["d"] for b in by_d)
    clusters: dict[Any, list] = {}
    for r in per:
        clusters.setdefault(cluster_key(r), []).append((r["mle"], r["prunability"]))
    groups = list(clusters.values())

    def stat(gs):
        obs = [o for g in gs for o in g]
        return _spearman([o[0] for o in obs], [o[1] for o in obs])

    rho = stat(groups)
    boot = _boot(groups, stat)
    n_cens = int(sum(r["censored"] for r in per))
    if len(groups) < MIN_UNITS:
        verdict = "inconclusive (too few units)"
    elif n_cens:
        verdict = f"inconclusive (censored: {n_cens} runs never fell below dense − ε)"
    elif spread > DIFFICULTY_BAND:
        verdict = f"inconclusive (control failed: dense accuracy spread {100 * spread:.1f} points > 3)"
    elif not id_ok:
        verdict = "inconclusive (control failed: measured ID does not track d)"
    elif not np.isfinite(rho):
        verdict = "not reproduced (no association: prunability identical in every run)"
    else:
        verdict = _interval_verdict(boot["ci"], above="not reproduced (opposite direction)",
                                    below="reproduced", margin=(-RHO_MARGIN, RHO_MARGIN),
                                    inside="not reproduced (no association: |ρ| < 0.3)")
    return {"label": label, "rho": rho, "ci": boot["ci"], "n_units": len(groups), "n_runs": len(per),
            "n_censored": n_cens, "dense_acc_spread": spread, "id_tracks_d": bool(id_ok),
            "D": sorted({r["D"] for r in per}), "per_d": by_d, "verdict": verdict}


def verdict_1(res: dict) -> dict[str, Any]:
    """Per data family and pooled; unit: the seed (one teacher and one frame, shared by both families)."""
    runs = res["runs"]
    fams = sorted({r["family"] for r in runs})
    out = {f: _f1_group([r for r in runs if r["family"] == f], f, lambda r: r["seed"]) for f in fams}
    pooled = _f1_group(runs, "pooled", lambda r: r["seed"])
    return {"families": out, "pooled": pooled}


# ------------------------------------------------------------------------------------------ Finding 2
def critical_density(dens, values, threshold: float) -> tuple[float, bool]:
    """First density (from dense downwards, log-linear interpolation between grid points) where ``values``
    reaches ``threshold`` or below; ``(lowest density, True)`` when it never does (censored)."""
    order = np.argsort(dens)[::-1]
    d = np.asarray(dens, float)[order]
    v = np.asarray(values, float)[order]
    for i in range(1, len(d)):
        if v[i] <= threshold:
            if v[i - 1] <= v[i]:
                return float(d[i]), False
            t = (v[i - 1] - threshold) / (v[i - 1] - v[i])
            ld = math.log10(d[i - 1]) + t * (math.log10(d[i]) - math.log10(d[i - 1]))
            return float(10 ** ld), False
    return float(d[-1]), True


def unit_critical(recs: list[dict]) -> dict[str, tuple[float, bool]]:
    """Critical densities of one (data, width, seed) unit from its uniform-allocation records: accuracy has
    lost ACC_FRACTION of its margin above chance; region count and bounds have fallen to
    (1 - COUNT_FRACTION) of dense (in log10: by log10 2)."""
    u = sorted((r for r in recs if r["allocation"] == "uniform"), key=lambda r: -r["density"])
    dens = [r["density"] for r in u]
    chance = 1.0 / u[0]["n_classes"]
    acc = [r["test_acc"] for r in u]
    out = {"acc": critical_density(dens, acc, chance + (1 - ACC_FRACTION) * (acc[0] - chance))}
    drop = -math.log10(1.0 - COUNT_FRACTION)
    for key, field in (("regions", "slice_regions"), ("bound", "log10_bound"),
                       ("bound_slice", "log10_bound_slice")):
        vals = [math.log10(r[field]) if field == "slice_regions" else r[field] for r in u]
        out[key] = critical_density(dens, vals, vals[0] - drop)
    return out


def _units_2(records: list[dict]) -> dict[tuple, list[dict]]:
    units: dict[tuple, list[dict]] = {}
    for r in records:
        units.setdefault((r["dataset"], r["width"], r["seed"]), []).append(r)
    return units


def _f2a_group(units: dict[tuple, list[dict]], label: str) -> dict[str, Any]:
    rows, excluded = [], 0
    for key, recs in sorted(units.items()):
        cr = unit_critical(recs)
        if cr["acc"][1]:
            excluded += 1
            continue
        la = math.log10(cr["acc"][0])
        rows.append({"unit": list(key), **{f"p_{k}": v[0] for k, v in cr.items()},
                     **{f"censored_{k}": v[1] for k, v in cr.items()},
                     "d_regions": math.log10(cr["regions"][0]) - la,
                     "d_bound": math.log10(cr["bound"][0]) - la,
                     "d_bound_slice": math.log10(cr["bound_slice"][0]) - la})
    res = {"label": label, "n_units": len(rows), "n_excluded_acc_never_falls": excluded, "units": rows}
    for k in ("d_regions", "d_bound", "d_bound_slice", ):
        groups = [[r[k]] for r in rows]
        b = _boot(groups, "mean") if rows else {"ci": [None, None]}
        res[k] = {"mean": float(np.mean([r[k] for r in rows])) if rows else None, "ci": b["ci"]}
    res["n_censored_regions"] = int(sum(r["censored_regions"] for r in rows))
    res["n_censored_bound"] = int(sum(r["censored_bound"] for r in rows))
    if len(rows) < MIN_UNITS:
        v = "inconclusive (too few units)"
    else:
        def inside(ci):
            return -DECADE_MARGIN <= ci[0] and ci[1] <= DECADE_MARGIN

        def outside(ci):
            return ci[0] > DECADE_MARGIN or ci[1] < -DECADE_MARGIN

        cis = [res["d_regions"]["ci"], res["d_bound"]["ci"]]
        if all(inside(c) for c in cis):
            v = "reproduced"
        elif any(outside(c) for c in cis):
            which = [n for n, c in zip(("region count", "bound"), cis) if outside(c)]
            v = f"not reproduced ({' and '.join(which)} critical density > 0.5 decades from accuracy's)"
        else:
            v = "inconclusive"
    res["verdict"] = v
    return res


def verdict_2a(res: dict) -> dict[str, Any]:
    units = _units_2(res["records"])
    data = sorted({k[0] for k in units})
    per = {ds: _f2a_group({k: v for k, v in units.items() if k[0] == ds}, ds) for ds in data}
    return {"datasets": per, "pooled": _f2a_group(units, "pooled")}


def pairs_2b(records: list[dict]) -> list[dict]:
    uni = {(r["dataset"], r["width"], r["seed"], r["density"]): r
           for r in records if r["allocation"] == "uniform"}
    out = []
    for r in records:
        if r["allocation"] != "bound" or r["density"] >= 1.0:
            continue
        u = uni[(r["dataset"], r["width"], r["seed"], r["density"])]
        same = max(abs(a - b) for a, b in zip(r["target_density"], u["target_density"])) <= ALLOC_EQ_TOL
        gain = r["log10_bound"] - u["log10_bound"]
        status = "equal_allocation" if same else "flat_bound" if gain <= BOUND_TAU else "included"
        out.append({"dataset": r["dataset"], "width": r["width"], "seed": r["seed"], "density": r["density"],
                    "diff": r["test_acc"] - u["test_acc"], "gain_log10": gain, "status": status})
    return out


def _f2b_group(pairs: list[dict], label: str) -> dict[str, Any]:
    inc = [p for p in pairs if p["status"] == "included"]
    units: dict[tuple, list[float]] = {}
    for p in inc:
        units.setdefault((p["dataset"], p["width"], p["seed"]), []).append(p["diff"])
    groups = list(units.values())
    d = np.array([p["diff"] for p in inc])
    res = {"label": label, "n_pairs": len(pairs), "n_included": len(inc),
           "n_equal_allocation": sum(p["status"] == "equal_allocation" for p in pairs),
           "n_flat_bound": sum(p["status"] == "flat_bound" for p in pairs), "n_units": len(groups),
           "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum())}
    dec = res["wins"] + res["losses"]
    res["win_rate"] = res["wins"] / dec if dec else None
    if groups:
        b = _boot(groups, "mean")
        res["mean_diff"], res["ci"] = float(d.mean()), b["ci"]
    else:
        res["mean_diff"], res["ci"] = None, [None, None]
    if len(groups) < MIN_UNITS:
        res["verdict"] = "inconclusive (too few units)"
    else:
        res["verdict"] = _interval_verdict(
            res["ci"], above="reproduced", below="not reproduced (bound-guided worse)",
            margin=(-ACC_MARGIN_2B, ACC_MARGIN_2B),
            inside="not reproduced (no gain: within ±0.5 points)")
    return res


def verdict_2b(res: dict) -> dict[str, Any]:
    pairs = pairs_2b(res["records"])
    data = sorted({p["dataset"] for p in pairs})
    return {"datasets": {ds: _f2b_group([p for p in pairs if p["dataset"] == ds], ds) for ds in data},
            "pooled": _f2b_group(pairs, "pooled")}


# ------------------------------------------------------------------------------------------ Finding 3
def _seed_rows(res: dict) -> dict[tuple, dict]:
    return {(s["dataset"], s["seed"]): s for s in res["per_seed"]}


def _f3a_group(seeds: list[dict], label: str) -> dict[str, Any]:
    groups_r, groups_m, groups_g, groups_l = [], [], [], []
    for s in seeds:
        lv = {(r["variant"], r["level"]): r for r in s["levels"]}
        levels = sorted(r["level"] for r in s["levels"] if r["variant"] == "imp" and r["level"] > 0)
        dr, dm, dg, dl = [], [], [], []
        for k in levels:
            imp, rnd = lv[("imp", k)], lv[("random", k)]
            g, la = imp["oneshot_global_retention"], imp["oneshot_layer_retention"]
            dr.append(imp["msf_retention"] - rnd["msf_retention"])
            dm.append(imp["msf_retention"] - max(g, la))
            dg.append(imp["msf_retention"] - g)
            dl.append(imp["msf_retention"] - la)
        groups_r.append([float(np.mean(dr))])
        groups_m.append([float(np.mean(dm))])
        groups_g.append([float(np.mean(dg))])
        groups_l.append([float(np.mean(dl))])

    def mean(gs):
        return float(np.mean([g[0] for g in gs]))

    out = {"label": label, "n_units": len(seeds)}
    for k, gs in (("vs_random", groups_r), ("vs_magnitude", groups_m), ("vs_oneshot_global", groups_g),
                  ("vs_oneshot_layer", groups_l)):
        out[k] = {"mean": mean(gs), "ci": _boot(gs, "mean")["ci"], "per_seed": [g[0] for g in gs]}
    last = []
    for s in seeds:
        top = max(r["level"] for r in s["levels"] if r["variant"] == "imp")
        lv = {(r["variant"], r["level"]): r for r in s["levels"]}
        imp = lv[("imp", top)]
        last.append({"sparsity": imp["sparsity"], "imp": imp["msf_retention"],
                     "random": lv[("random", top)]["msf_retention"],
                     "oneshot_global": imp["oneshot_global_retention"],
                     "oneshot_layer": imp["oneshot_layer_retention"]})
    out["last_level"] = {k: float(np.mean([x[k] for x in last])) for k in last[0]}
    vr, vm = out["vs_random"], out["vs_magnitude"]
    if len(seeds) < MIN_UNITS:
        v = "inconclusive (too few units)"
    elif vr["ci"][0] is None or not vr["ci"][0] > 0:
        v = "not reproduced (IMP does not keep more MSF edges than random pruning)"
    elif vm["ci"][1] < RET_MARGIN:
        v = "not reproduced (a magnitude effect: one-shot magnitude pruning keeps as many MSF edges)"
    elif vr["mean"] >= RET_MIN_EXCESS and vm["ci"][0] > RET_MARGIN:
        v = "reproduced"
    else:
        v = "inconclusive"
    out["verdict"] = v
    return out


def _f3b_group(seeds: list[dict], label: str) -> dict[str, Any]:
    kept = all(s["bound"]["all_diagrams_kept"] for s in seeds)
    cost = [[s["bound"]["acc_dense"] - s["bound"]["acc_after_finetune"]] for s in seeds]

    def mean(gs):
        return float(np.mean([g[0] for g in gs]))

    b0 = seeds[0]["bound"]
    return {"label": label, "n_units": len(seeds), "eta": b0["eta"], "max_sparsity": b0["max_sparsity"],
            "pruned_sparsity": b0["pruned_sparsity"],
            "all_diagrams_kept": kept, "acc_cost": mean(cost), "ci": _boot(cost, "mean")["ci"],
            "acc_after_finetune": float(np.mean([s["bound"]["acc_after_finetune"] for s in seeds])),
            "verdict": "holds by construction (check passed)" if kept else "check FAILED (a diagram changed)"}


def _f3c_group(seeds: list[dict], label: str) -> dict[str, Any]:
    groups, n_same, n_diff, gaps, kept = [], 0, 0, [], True
    for s in seeds:
        lv = {(r["variant"], r["level"]): r for r in s["levels"]}
        diffs = []
        for r in s["levels"]:
            if r["variant"] != "tp_imp" or r["level"] == 0:
                continue
            kept = kept and bool(r["all_diagrams_kept"])
            if r["masks_equal_imp"]:
                n_same += 1
                continue
            n_diff += 1
            diffs.append(r["test_acc"] - lv[("imp", r["level"])]["test_acc"])
        if diffs:
            groups.append([float(np.mean(diffs))])
        top = max(r["level"] for r in s["levels"] if r["variant"] == "tp_imp")
        gaps.append(lv[("tp_imp", top)]["test_acc"] - lv[("imp", top)]["test_acc"])

    def mean(gs):
        return float(np.mean([g[0] for g in gs]))

    out = {"label": label, "n_units": len(groups), "n_levels_compared": n_diff, "n_levels_identical": n_same,
           "all_diagrams_kept": kept, "high_sparsity_gap": gaps,
           "high_sparsity_gap_mean": float(np.mean(gaps))}
    if groups:
        out["mean_diff"], out["ci"] = mean(groups), _boot(groups, "mean")["ci"]
    else:
        out["mean_diff"], out["ci"] = None, [None, None]
    if not kept:
        v = "not reproduced (a TP-IMP pruning step changed a diagram)"
    elif not groups:
        v = "inconclusive (masks identical)"
    elif len(groups) < MIN_UNITS:
        v = "inconclusive (too few units)"
    elif out["ci"][0] > -ACC_MARGIN_3C:
        v = "reproduced"
    elif out["ci"][1] < -ACC_MARGIN_3C:
        v = "not reproduced (TP-IMP more than 0.5 points below IMP)"
    else:
        v = "inconclusive"
    out["verdict"] = v
    return out


def verdict_3(res: dict) -> dict[str, Any]:
    seeds = res["per_seed"]
    data = sorted({s["dataset"] for s in seeds})
    out = {}
    for key, fn in (("a", _f3a_group), ("b", _f3b_group), ("c", _f3c_group)):
        out[key] = {"datasets": {ds: fn([s for s in seeds if s["dataset"] == ds], ds) for ds in data},
                    "pooled": fn(seeds, "pooled")}
    return out


VERDICTS = {"prunability_vs_dimension": lambda r: {"1": verdict_1(r)},
            "regions_vs_sparsity": lambda r: {"2a": verdict_2a(r), "2b": verdict_2b(r)},
            "topology_under_imp": lambda r: {f"3{k}": v for k, v in verdict_3(r).items()}}


def verdicts(name: str, res: dict) -> dict[str, Any]:
    """All verdicts of one experiment's results, recomputed with the rules above."""
    return VERDICTS[name](res)


def verdicts_match(name: str, res: dict) -> bool:
    """Whether the verdicts stored in ``res`` are those the rules give on its numbers (as written to JSON)."""
    return json.loads(json.dumps(to_plain(verdicts(name, res)))) == res["verdicts"]


# ----------------------------------------------------------------------------------------------- README
def check_result(res: dict, path: Path | str) -> None:
    d = res.get("description", {})
    if d.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {d.get('schema')!r}, expected {SCHEMA}; rerun the experiment")
    if d.get("mode") == "full" and d.get("git_dirty") is not False:
        raise ValueError(f"{path}: a full result from uncommitted code (git_dirty={d.get('git_dirty')!r}) is "
                         "not a result; commit, then rerun from the clean tree")


def load(name: str, mode: str = "full", results: Path = RESULTS) -> dict | None:
    """The checked results of ``name`` in ``mode``, or None when none are committed."""
    p = results / name / mode / "results.json"
    if not p.exists():
        return None
    res = json.loads(p.read_text())
    check_result(res, p)
    return res


def _ci(ci, scale: float = 1.0, fmt: str = "{:+.2f}") -> str:
    if ci is None or ci[0] is None:
        return "[n/a]"
    return f"[{fmt.format(scale * ci[0])}, {fmt.format(scale * ci[1])}]"


CLAIMS = {
    "1": "1. Lower intrinsic dimension ⇒ more prunable (Ankner et al.)",
    "2a": "2a. Past a critical density, accuracy, exact region count and bound fall together (Cai et al.)",
    "2b": "2b. Bound-guided layer densities beat uniform at equal total density (Cai et al.)",
    "3a": "3a. IMP keeps the dense MSF edges more than random pruning, beyond magnitude (Balwani & Krzyston)",
    "3b": "3b. Pruning to 1 − 1/η keeps every layer's zeroth-order diagram (by construction)",
    "3c": "3c. Topology-preserving IMP keeps the diagrams and IMP's accuracy",
}
PENDING = {"1": ["linear", "curved"], "2a": ["digits", "mnist1d", "mnist_test"],
           "2b": ["digits", "mnist1d", "mnist_test"], "3a": ["mnist_test", "mnist1d"],
           "3b": ["mnist_test", "mnist1d"], "3c": ["mnist_test", "mnist1d"]}
FINDING_OF = {"1": NAMES[0], "2a": NAMES[1], "2b": NAMES[1], "3a": NAMES[2], "3b": NAMES[2], "3c": NAMES[2]}


def _measured(key: str, g: dict) -> str:
    if key == "1":
        rho = "n/a" if g["rho"] is None or not math.isfinite(g["rho"]) else f"{g['rho']:+.2f}"
        return (f"Spearman(MLE ID, prunability) ρ = {rho}, 95% CI {_ci(g['ci'])} over "
                f"{g['n_units']} seed clusters; D = {'/'.join(map(str, g['D']))}; dense-accuracy spread "
                f"{100 * g['dense_acc_spread']:.1f} pts; ID tracks d: {g['id_tracks_d']}; censored runs "
                f"{g['n_censored']}/{g['n_runs']}")
    if key == "2a":
        def m(k):
            x = g[k]
            return "n/a" if x["mean"] is None else f"{x['mean']:+.2f} {_ci(x['ci'])}"
        return (f"log10 p*(X) − log10 p*(accuracy), decades: regions {m('d_regions')}, full-input bound "
                f"{m('d_bound')}, slice (n0=2) bound {m('d_bound_slice')}; {g['n_units']} units "
                f"({g['n_excluded_acc_never_falls']} excluded: accuracy never fell)")
    if key == "2b":
        md = "n/a" if g["mean_diff"] is None else f"{100 * g['mean_diff']:+.2f} pts {_ci(g['ci'], 100)}"
        return (f"bound-guided − uniform accuracy {md} on {g['n_included']} pairs / {g['n_units']} units "
                f"(wins {g['wins']}, losses {g['losses']}, ties {g['ties']}); excluded: "
                f"{g['n_equal_allocation']} equal allocations, {g['n_flat_bound']} flat bounds")
    if key == "3a":
        vr = g["vs_random"]
        return (f"retention IMP − random {vr['mean']:+.3f} {_ci(vr['ci'], 1, '{:+.3f}')}; "
                f"IMP − stronger one-shot magnitude null {g['vs_magnitude']['mean']:+.3f} "
                f"{_ci(g['vs_magnitude']['ci'], 1, '{:+.3f}')}; at {100 * g['last_level']['sparsity']:.1f}% "
                f"sparsity IMP {g['last_level']['imp']:.3f}, one-shot global "
                f"{g['last_level']['oneshot_global']:.3f}, layerwise {g['last_level']['oneshot_layer']:.3f}, "
                f"random {g['last_level']['random']:.3f}")
    if key == "3b":
        return (f"η = {g['eta']:.1f}, 1 − 1/η = {100 * g['max_sparsity']:.2f}%, pruned to "
                f"{100 * g['pruned_sparsity']:.2f}% with the forest kept; diagrams kept: "
                f"{g['all_diagrams_kept']}; accuracy cost after fine-tuning {100 * g['acc_cost']:+.2f} pts "
                f"{_ci(g['ci'], 100)}")
    md = "n/a" if g["mean_diff"] is None else f"{100 * g['mean_diff']:+.2f} pts {_ci(g['ci'], 100)}"
    return (f"TP-IMP − IMP accuracy {md} over {g['n_levels_compared']} levels with differing masks "
            f"({g['n_levels_identical']} identical excluded); diagrams kept: {g['all_diagrams_kept']}; "
            f"gap at the last level {100 * g['high_sparsity_gap_mean']:+.2f} pts")


def rows(results: Path = RESULTS) -> list[list[str]]:
    out = []
    full = {n: load(n, "full", results) for n in NAMES}
    for key, claim in CLAIMS.items():
        res = full[FINDING_OF[key]]
        if res is None:
            for ds in PENDING[key] + ["pooled"]:
                out.append([claim, ds, "—", "full run pending"])
            continue
        v = verdicts(FINDING_OF[key], res)[key]
        groups = v.get("families") or v.get("datasets")
        commit = res["description"]["git_commit"][:10]
        for ds, g in [*groups.items(), ("pooled", v["pooled"])]:
            out.append([claim, f"{ds} (full, {commit})", _measured(key, g), g["verdict"]])
    return out


def section(results: Path = RESULTS) -> str:
    lines = [
        "(Generated by `python experiments/make_results.py` from the committed full-mode "
        "`experiments/results/*/full/results.json`, with the verdict rules pre-registered in "
        "`experiments/PROTOCOL.md`; 95% cluster-bootstrap intervals. Quick-mode results are pipeline checks, "
        "not results: see the notebooks.)",
        "",
        "| finding | data | measured | verdict |",
        "|---|---|---|---|",
    ]
    for r in rows(results):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    lines.append("")
    for name in NAMES:
        res = load(name, "full", results)
        for png in res["plots"] if res is not None else []:
            rel = (results / name / "full" / png).relative_to(results.parent.parent)
            lines.append(f"![{name}]({rel.as_posix()})")
            lines.append("")
    lines.append("Commands: `python experiments/run_all.py --quick` (all three in quick mode, plots, "
                 "notebooks, this table); full mode per script as listed in `experiments/PROTOCOL.md` and "
                 "`experiments/run_all.py --help`; `--jobs N` local processes, `--scheduler ADDRESS` a Dask "
                 "cluster. Interrupted full runs resume from `<out>/runs`.")
    return "\n".join(lines)


def render(readme: str, results: Path = RESULTS) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise ValueError(f"README must contain exactly one {START} and one {END}")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{section(results)}\n{END}{tail}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    args = p.parse_args(argv)
    path = Path(args.readme)
    old = path.read_text()
    try:
        new = render(old)
    except ValueError as exc:
        print(f"make_results: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if new != old:
            print("README results section is out of date; run python experiments/make_results.py")
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
