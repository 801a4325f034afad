"""Finding 3 (Balwani & Krzyston 2022): zeroth-order topology of the weight graphs under IMP.

(a) IMP keeps the dense network's maximum-spanning-forest (MSF) edges far more often than random pruning
    at the same sparsity: per round, the fraction of the dense network's MSF edges present in the level's
    mask (``msf_retention`` with the masks applied to the dense weights) for IMP and for random pruning with
    the same counts, against the random expectation (the density).
(b) a network can be pruned to ``1 − 1/η`` keeping every layer's zeroth-order diagram: the trained dense
    network is pruned one-shot to exactly that sparsity with its MSF protected (``magnitude_prune(...,
    protect=msf_protect)``), the diagrams are compared, then it is fine-tuned.
(c) topology-preserving IMP (IMP with the MSF protect callback) against IMP: accuracy per sparsity, and at
    every pruning step the diagram of the previous level's trained weights under the old mask and under the
    new one (checked at pruning time, before rewinding).
Also neural persistence per layer per round (IMP, random, topology-preserving).

    python experiments/topology_under_imp.py --quick   # 40-100-100-10 on MNIST-1D, 6 rounds
    python experiments/topology_under_imp.py           # 784-100-100-10, MNIST test split, 19 rounds

Full mode stops at 19 rounds (98.6% sparsity): round 20 would pass 1 − 1/η ≈ 98.7%, which TP-IMP cannot.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import _common as C

NAME = "topology_under_imp"
MNIST_ROOT = C.MNIST_ROOT


def make_config(quick: bool) -> dict:
    base = {"q": 0.2, "rewind": "init", "lr": 0.05, "batch_size": 64}
    if quick:
        return {**base, "data": {"name": "mnist1d", "flat": True}, "widths": [100, 100], "rounds": 6,
                "epochs": 15}
    return {**base, "data": {"name": "mnist", "root": MNIST_ROOT, "split": "test", "flat": True},
            "widths": [100, 100], "rounds": 19, "epochs": 30}


def imp_configs(cfg: dict, seed: int):
    from netgeom.data.datasets import load_dataset
    from netgeom.pruning import IMPConfig, parse_rewind
    from netgeom.training import TrainConfig

    data = {**cfg["data"], "seed": seed}
    ds = load_dataset(data)
    base = IMPConfig(
        model={"name": "mlp", "n_in": ds.n_features, "widths": list(cfg["widths"]), "n_out": ds.n_classes},
        data=data,
        train=TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                          schedule="cosine"),
        q=cfg["q"], rounds=cfg["rounds"], rewind=parse_rewind(cfg["rewind"]), scope="global",
        include_output=True, seed=seed,
    )
    import dataclasses

    return base, dataclasses.replace(base, prune="random"), ds


def _model(res, level: int):
    return res.model_at(level)


def analyse_run(res, dense_model, label: str) -> list[dict]:
    """Per level: accuracy, MSF retention of the dense network's forest, neural persistence, and whether
    pruning this level kept the previous level's diagrams (same weights, old vs new mask)."""
    from netgeom.topology import msf_retention, neural_persistence

    rows = []
    for r, lv in enumerate(res.levels):
        ret = msf_retention(dense_model, lv.masks)
        npr = neural_persistence(_model(res, r), lv.masks)
        row = {"variant": label, "level": r, "sparsity": lv.sparsity, "test_acc": lv.test_acc,
               "msf_retention": ret.retention_total, "random_expectation": ret.expected_total,
               "msf_retention_layer": ret.retention, "np_layer": npr.layer_np_normalized,
               "np_network": npr.network_np, "layer_names": npr.layer_names}
        if r > 0:
            prev = _model(res, r - 1)
            chk = msf_retention(prev, lv.masks, dense_masks=res.levels[r - 1].masks)
            row["diagram_kept_at_pruning"] = chk.diagram_unchanged
            row["all_diagrams_kept"] = chk.all_unchanged
        rows.append(row)
    return rows


def bound_check(dense_model, data, cfg: dict, seed: int) -> dict:
    """(b): prune the trained dense net to exactly 1 − 1/η keeping its MSF, compare diagrams, fine-tune."""
    from netgeom.nets import affine_layers, layer_widths
    from netgeom.pruning import magnitude_prune
    from netgeom.topology import msf_protect, msf_retention, topology_bound
    from netgeom.training import TrainConfig, Trainer, evaluate

    b = topology_bound(layer_widths(affine_layers(dense_model)))
    target = 1.0 - sum(b.n_tree) / sum(b.n_possible)
    masks = magnitude_prune(dense_model, target, protect=msf_protect, relative_to="all", include_output=True)
    chk = msf_retention(dense_model, masks)
    import copy

    net = copy.deepcopy(dense_model)
    masks.apply(net)
    _, acc0 = evaluate(net, data.X_test, data.y_test)
    tc = TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                     schedule="cosine", seed=seed)
    Trainer(net, data, tc, masks=masks, verbose=False).run()
    _, acc1 = evaluate(net, data.X_test, data.y_test)
    after = msf_retention(dense_model, masks)  # masks unchanged by training: the structure is what counts
    return {"eta": b.eta, "max_sparsity": b.max_sparsity, "layer_max_sparsity": b.layer_max_sparsity,
            "pruned_sparsity": masks.sparsity(), "diagrams_kept": chk.diagram_unchanged,
            "all_diagrams_kept": chk.all_unchanged, "acc_before_finetune": acc0, "acc_after_finetune": acc1,
            "msf_retention": after.retention_total}


def run_seed(cfg: dict, seed: int, out: Path) -> dict:
    C.limit_threads()
    from netgeom.pruning import IMP
    from netgeom.topology import msf_protect

    base, rand, ds = imp_configs(cfg, seed)
    runs = out / "runs"
    imp = IMP(base, out_dir=runs, verbose=False, data=ds).run()
    rnd = IMP(rand, out_dir=runs, verbose=False, data=ds).run()
    # protect is not part of IMPConfig's description, so it gets its own run root to keep hashes apart
    tp = IMP(base, out_dir=out / "runs_msf_protect", protect=msf_protect, verbose=False, data=ds).run()
    dense = imp.model_at(0)
    rows = [row for res, lab in ((imp, "imp"), (rnd, "random"), (tp, "tp_imp"))
            for row in analyse_run(res, dense, lab)]
    for r in rows:
        r["seed"] = seed
    return {"seed": seed, "levels": rows, "bound": bound_check(dense, ds, cfg, seed),
            "run_dirs": [str(Path(x.run_dir).relative_to(out)) for x in (imp, rnd, tp)]}


def summarise(per_seed: list[dict], n_boot: int) -> dict:
    rows = [r for s in per_seed for r in s["levels"]]
    levels = sorted({r["level"] for r in rows})
    table = []
    for lv in levels:
        entry = {"level": lv}
        for v in ("imp", "random", "tp_imp"):
            q = [r for r in rows if r["variant"] == v and r["level"] == lv]
            entry[v] = {
                "sparsity": float(np.mean([r["sparsity"] for r in q])),
                "test_acc": float(np.mean([r["test_acc"] for r in q])),
                "msf_retention": float(np.mean([r["msf_retention"] for r in q])),
                "random_expectation": float(np.mean([r["random_expectation"] for r in q])),
                "np_layer": np.mean([r["np_layer"] for r in q], axis=0).tolist(),
                "all_diagrams_kept": all(r.get("all_diagrams_kept", True) for r in q),
            }
        table.append(entry)
    pruned = [r for r in rows if r["level"] > 0]
    excess_imp = [r["msf_retention"] - r["random_expectation"] for r in pruned if r["variant"] == "imp"]
    excess_rnd = [r["msf_retention"] - r["random_expectation"] for r in pruned if r["variant"] == "random"]
    imp_acc = {(r["seed"], r["level"]): r["test_acc"] for r in pruned if r["variant"] == "imp"}
    acc_diff = [t["test_acc"] - imp_acc[t["seed"], t["level"]] for t in pruned if t["variant"] == "tp_imp"]
    return {
        "per_level": table,
        "imp_excess_retention": C.mean_bootstrap(excess_imp, n_boot=n_boot),
        "random_excess_retention": C.mean_bootstrap(excess_rnd, n_boot=n_boot),
        "tp_minus_imp_acc": C.mean_bootstrap(acc_diff, n_boot=n_boot),
        "tp_all_diagrams_kept": all(r["all_diagrams_kept"] for r in pruned if r["variant"] == "tp_imp"),
        "imp_levels_diagrams_kept": float(np.mean([r["all_diagrams_kept"] for r in pruned
                                                   if r["variant"] == "imp"])),
        "bound_all_diagrams_kept": all(s["bound"]["all_diagrams_kept"] for s in per_seed),
    }


def headline(res: dict) -> dict:
    """Rules (also stated in make_results.py).
    (a) reproduced: the bootstrap interval of IMP's excess retention over the random expectation (pooled
        over pruned levels and seeds) lies above 0 and the mean excess is at least 0.1 ("far more often");
        partly: interval above 0 but mean < 0.1; not reproduced otherwise.
    (b) reproduced: at sparsity 1 − 1/η with the MSF kept, every layer's diagram is unchanged in every seed
        (this is a theorem; the check guards the implementation) — otherwise not reproduced.
    (c) reproduced: topology-preserving IMP kept every diagram at every pruning step and its accuracy
        interval (TP-IMP − IMP) includes 0 or lies above it; partly: diagrams kept but accuracy lower
        (interval below 0); not reproduced: some diagram changed.
    """
    s = res["summary"]
    ex = s["imp_excess_retention"]
    va = ("reproduced" if ex["ci"][0] > 0 and ex["mean"] >= 0.1 else
          "partly reproduced" if ex["ci"][0] > 0 else "not reproduced")
    vb = "reproduced" if s["bound_all_diagrams_kept"] else "not reproduced"
    d = s["tp_minus_imp_acc"]
    vc = ("not reproduced" if not s["tp_all_diagrams_kept"] else
          "reproduced" if d["ci"][1] >= 0 else "partly reproduced")
    last = res["summary"]["per_level"][-1]
    b0 = res["per_seed"][0]["bound"]
    return {
        "a": {"imp_retention_last": last["imp"]["msf_retention"],
              "random_retention_last": last["random"]["msf_retention"],
              "expectation_last": last["imp"]["random_expectation"], "sparsity_last": last["imp"]["sparsity"],
              "imp_excess": ex["mean"], "ci": ex["ci"], "verdict": va},
        "b": {"eta": b0["eta"], "max_sparsity": b0["max_sparsity"],
              "acc_after_finetune": float(np.mean([p["bound"]["acc_after_finetune"]
                                                   for p in res["per_seed"]])),
              "all_diagrams_kept": s["bound_all_diagrams_kept"], "verdict": vb},
        "c": {"tp_minus_imp_acc": d["mean"], "ci": d["ci"], "all_diagrams_kept": s["tp_all_diagrams_kept"],
              "imp_fraction_levels_diagrams_kept": s["imp_levels_diagrams_kept"], "verdict": vc},
    }


def plot(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res["summary"]["per_level"]
    sp = {v: [100 * e[v]["sparsity"] for e in t] for v in ("imp", "random", "tp_imp")}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(sp["imp"], [e["imp"]["msf_retention"] for e in t], "o-", label="IMP")
    ax.plot(sp["random"], [e["random"]["msf_retention"] for e in t], "s-", label="random pruning")
    ax.plot(sp["imp"], [e["imp"]["random_expectation"] for e in t], "k:",
            label="random expectation at IMP's layer densities")
    ax.plot(sp["random"], [e["random"]["random_expectation"] for e in t], ":", color="0.6",
            label="random expectation at random's layer densities")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("dense MSF edges kept")
    ax.set_title("(a) MSF retention")
    ax.legend(fontsize=8)
    ax = axes[1]
    names = res["per_seed"][0]["levels"][0]["layer_names"]
    for k, name in enumerate(names):
        for v, ls in (("imp", "-"), ("random", ":"), ("tp_imp", "--")):
            ax.plot(sp[v], [e[v]["np_layer"][k] for e in t], ls, color=f"C{k}",
                    label=f"{name} {v}" if k == 0 or v == "imp" else None)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("normalised neural persistence")
    ax.set_title("neural persistence per layer (— IMP, ··· random, -- TP-IMP)", fontsize=9)
    ax.legend(fontsize=6)
    ax = axes[2]
    for v, m in (("imp", "o-"), ("tp_imp", "^--"), ("random", "s:")):
        ax.plot(sp[v], [e[v]["test_acc"] for e in t], m, label=v)
    b = res["per_seed"][0]["bound"]
    ax.axvline(100 * b["max_sparsity"], color="C3", lw=0.8, label=f"1 − 1/η = {100 * b['max_sparsity']:.1f}%")
    ax.plot([100 * b["pruned_sparsity"]], [b["acc_after_finetune"]], "r*", ms=10,
            label="MSF only, fine-tuned")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title("(c) topology-preserving IMP vs IMP")
    ax.legend(fontsize=7)
    return [C.savefig(fig, out / "topology_under_imp.png")]


def run(cfg: dict, seeds, out: Path, jobs: int = 2, n_boot: int = 2000) -> dict:
    from joblib import Parallel, delayed

    if jobs == 1 or len(seeds) == 1:
        per_seed = [run_seed(cfg, s, out) for s in seeds]
    else:
        per_seed = Parallel(n_jobs=jobs)(delayed(run_seed)(cfg, s, out) for s in seeds)
    res = {"per_seed": per_seed}
    res["summary"] = summarise(per_seed, n_boot)
    res["headline"] = headline(res)
    return res


def main(argv=None) -> int:
    args = C.parser(NAME, __doc__.splitlines()[0], default_seeds=[0, 1]).parse_args(argv)
    C.limit_threads()
    cfg = make_config(args.quick)
    out = C.out_dir(NAME, args)
    res = run(cfg, args.seeds, out, jobs=args.jobs, n_boot=args.n_boot)
    res["plots"] = plot(res, out)
    res = {"description": C.describe(NAME, args, cfg), **res}
    C.write_json(out / "results.json", res)
    for e in res["summary"]["per_level"]:
        print(f"level {e['level']:>2} " + "  ".join(
            f"{v}: s={e[v]['sparsity']:.3f} acc={e[v]['test_acc']:.3f} ret={e[v]['msf_retention']:.3f}"
            for v in ("imp", "random", "tp_imp")) + f"  exp={e['imp']['random_expectation']:.3f}")
    for k, v in res["headline"].items():
        print(k, v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
