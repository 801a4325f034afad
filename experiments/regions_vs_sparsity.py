"""Finding 2 (Cai et al. 2023): sparsity vs linear regions, and bound-guided per-layer densities.

MLPs with two hidden layers are trained dense, then pruned one-shot, layer by layer by magnitude (hidden
layers only; the classifier stays dense) to each total hidden density and fine-tuned. Per density:
test accuracy, the exact number of linear regions on the plane through three training points
(``regions_on_slice`` / ``plane_through``), the number of distinct activation patterns over all samples
(``count_patterns``) and the log10 sparse bound at the network's actual hidden densities. Then the same
total density is spread over the two hidden layers either uniformly or as ``allocate_densities`` chooses
(maximising the sparse bound), and the accuracies are compared over (data, width, density, seed).

Resumable: each (data, width, seed) has a run directory (``netgeom.pruning.RunDir``) under ``<out>/runs``
holding the dense weights and one record per (density, allocation); finished records are not recomputed.

    python experiments/regions_vs_sparsity.py --quick     # digits, width 100, 3 seeds
    python experiments/regions_vs_sparsity.py             # digits, MNIST-1D, MNIST test split; 100/200/400
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import _common as C

NAME = "regions_vs_sparsity"
MNIST_ROOT = C.MNIST_ROOT


def make_config(quick: bool) -> dict:
    base = {"lr": 0.05, "batch_size": 64, "allocations": ["uniform", "bound"], "slice_margin": 0.25}
    if quick:
        return {**base, "datasets": ["digits", "mnist1d"], "widths": [100],
                "densities": [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01], "epochs": 20, "ft_epochs": 10}
    return {**base, "datasets": ["digits", "mnist1d", "mnist_test"], "widths": [100, 200, 400],
            "densities": [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005], "epochs": 30, "ft_epochs": 15}


def data_description(name: str, seed: int) -> dict:
    if name == "mnist_test":
        # only the 10,000-image test split is on disk: split it 8,000 / 2,000 (load_idx's split="test")
        return {"name": "mnist", "root": MNIST_ROOT, "split": "test", "seed": seed, "flat": True}
    return {"name": name, "seed": seed, "flat": True}


def hidden_names(model) -> list[str]:
    from netgeom.nets import affine_layers

    return [la.param_name for la in affine_layers(model)[:-1]]


def allocation(model, density: float, kind: str) -> dict[str, float]:
    """Per-hidden-layer sparsities for a total hidden density (classifier untouched)."""
    from netgeom.regions.allocation import allocate_densities

    names = hidden_names(model)
    if kind == "uniform" or density >= 1.0:
        return {k: 1.0 - density for k in names}
    per = allocate_densities(model=model, total_density=density).per_layer(model)
    return {k: float(per[k]) for k in names}


def measure(model, masks, data, plane_idx) -> dict:
    import torch

    from netgeom.nets import affine_layers
    from netgeom.regions.bounds import sparse_bound
    from netgeom.regions.exact import plane_through, regions_on_slice
    from netgeom.regions.patterns import count_patterns

    layers = affine_layers(model, masks)
    dens = [la.density for la in layers[:-1]]
    x0, d1, d2, box = plane_through(*(data.X_train[i] for i in plane_idx))
    sl = regions_on_slice(model, x0, d1, d2, box, masks=masks)
    pat = count_patterns(model, torch.cat([data.X_train, data.X_test]), masks=masks)
    n0, widths = layers[0].n_in, [la.n_out for la in layers[:-1]]
    return {"layer_density": dens, "slice_regions": sl.count, "patterns": pat.count,
            "patterns_saturated": pat.saturated, "log10_bound": sparse_bound(n0, widths, dens).log10}


def run_unit(dataset: str, width: int, seed: int, cfg: dict, root: Path) -> list[dict]:
    """Dense training, then every (density, allocation) for one (data set, width, seed); resumable."""
    import torch

    C.limit_threads()
    from netgeom.data.datasets import load_dataset
    from netgeom.nets import mlp
    from netgeom.pruning import Masks, RunDir, magnitude_prune
    from netgeom.training import TrainConfig, Trainer, evaluate

    desc = {"kind": NAME, "data": data_description(dataset, seed), "width": width, "seed": seed,
            "epochs": cfg["epochs"], "ft_epochs": cfg["ft_epochs"], "lr": cfg["lr"],
            "batch_size": cfg["batch_size"]}
    rd = RunDir(root, desc, prefix=f"{dataset}-w{width}-s{seed}")
    data = load_dataset(desc["data"])
    tc = TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                     schedule="cosine", seed=seed)
    net = mlp(data.n_features, [width, width], data.n_classes, seed=seed)
    if rd.exists("dense.pt"):
        net.load_state_dict(rd.load_tensors("dense.pt"))
    else:
        Trainer(net, data, tc, verbose=False).run()
        rd.save_tensors("dense.pt", net.state_dict())
    dense_state = {k: v.clone() for k, v in net.state_dict().items()}
    # three training points chosen by the seed, the same for every density of this unit
    plane_idx = np.random.default_rng(seed).choice(data.n_train, size=3, replace=False).tolist()
    out = []
    for p in cfg["densities"]:
        for kind in cfg["allocations"]:
            if p >= 1.0 and kind != "uniform":
                continue
            rec_name = f"p{p:g}_{kind}.json"
            if rd.exists(rec_name):
                out.append(rd.load_json(rec_name))
                continue
            net.load_state_dict(dense_state)
            per = allocation(net, p, kind)
            if p < 1.0:
                masks = magnitude_prune(net, per_layer=per, include_output=False, relative_to="all")
                ft = tc.replace(epochs=cfg["ft_epochs"])
                Trainer(net, data, ft, masks=masks, verbose=False).run()
            else:
                masks = Masks({k: torch.ones_like(v, dtype=torch.bool) for k, v in net.state_dict().items()
                               if k in per})
            _, acc = evaluate(net, data.X_test, data.y_test)
            rec = {"dataset": dataset, "width": width, "seed": seed, "density": p, "allocation": kind,
                   "target_layer_sparsity": per, "test_acc": acc, "plane_idx": plane_idx,
                   **measure(net, masks, data, plane_idx)}
            rd.save_json(rec_name, rec)
            out.append(rec)
    return out


def summarise(records: list[dict], cfg: dict, n_boot: int) -> dict:
    curves = []
    for ds in cfg["datasets"]:
        for w in cfg["widths"]:
            for p in cfg["densities"]:
                rs = [r for r in records if r["dataset"] == ds and r["width"] == w and r["density"] == p
                      and r["allocation"] == "uniform"]
                curves.append({
                    "dataset": ds, "width": w, "density": p, "n_seeds": len(rs),
                    **{k: float(np.mean([r[k] for r in rs])) for k in
                       ("test_acc", "slice_regions", "patterns", "log10_bound")},
                    "test_acc_sd": float(np.std([r["test_acc"] for r in rs])),
                    "slice_regions_sd": float(np.std([r["slice_regions"] for r in rs])),
                })
    pairs = []
    for r in records:
        if r["allocation"] != "bound":
            continue
        u = [x for x in records if x["allocation"] == "uniform" and
             all(x[k] == r[k] for k in ("dataset", "width", "seed", "density"))]
        pairs.append({k: r[k] for k in ("dataset", "width", "seed", "density")} |
                     {"bound_acc": r["test_acc"], "uniform_acc": u[0]["test_acc"],
                      "diff": r["test_acc"] - u[0]["test_acc"], "bound_log10": r["log10_bound"],
                      "uniform_log10": u[0]["log10_bound"], "bound_density": r["layer_density"]})
    diffs = np.array([q["diff"] for q in pairs])
    wins = float(np.mean((diffs > 0) + 0.5 * (diffs == 0)))
    comparison = {"n_pairs": len(pairs), "win_rate": wins, "n_wins": int((diffs > 0).sum()),
                  "n_ties": int((diffs == 0).sum()), "mean_diff": C.mean_bootstrap(diffs, n_boot=n_boot),
                  "pairs": pairs}
    return {"curves": curves, "comparison": comparison}


def headline(res: dict, cfg: dict) -> dict:
    """Rules (also stated in make_results.py).

    (a) per (data, width): ``drop`` = accuracy at the lowest density is more than 2 points below dense;
    ``co-vary`` = Spearman over the density grid of mean accuracy with mean slice region count > 0, and with
    the log10 bound (rounded to 6 decimals) > 0. reproduced: drop and both co-vary in every (data, width);
    partly: drop and at least one co-varies in some (data, width); else not reproduced.
    (b) reproduced: win rate > 0.5 and the bootstrap interval of the mean accuracy difference (bound-guided
    − uniform) above 0; partly: win rate > 0.5 or mean difference > 0; not reproduced otherwise.
    """
    from scipy.stats import spearmanr

    per = []
    for ds in cfg["datasets"]:
        for w in cfg["widths"]:
            c = sorted((x for x in res["curves"] if x["dataset"] == ds and x["width"] == w),
                       key=lambda x: -x["density"])
            acc = [x["test_acc"] for x in c]
            rho_r = float(spearmanr(acc, [x["slice_regions"] for x in c]).statistic)
            # rounded so that float noise (~1e-13) in a bound that does not move is not read as a trend;
            # a constant sequence has no rank correlation (NaN), which does not count as co-varying
            rho_b = float(spearmanr(acc, [round(x["log10_bound"], 6) for x in c]).statistic)
            per.append({"dataset": ds, "width": w, "dense_acc": acc[0], "lowest_density": c[-1]["density"],
                        "lowest_acc": acc[-1], "drop": bool(acc[-1] < acc[0] - 0.02),
                        "rho_acc_regions": rho_r, "rho_acc_bound": rho_b,
                        "dense_regions": c[0]["slice_regions"], "lowest_regions": c[-1]["slice_regions"],
                        "dense_log10_bound": c[0]["log10_bound"], "lowest_log10_bound": c[-1]["log10_bound"]})
    full = [q["drop"] and q["rho_acc_regions"] > 0 and q["rho_acc_bound"] > 0 for q in per]
    some = [q["drop"] and (q["rho_acc_regions"] > 0 or q["rho_acc_bound"] > 0) for q in per]
    va = "reproduced" if all(full) else "partly reproduced" if any(some) else "not reproduced"
    cmp_ = res["comparison"]
    md = cmp_["mean_diff"]
    if cmp_["win_rate"] > 0.5 and md["ci"][0] > 0:
        vb = "reproduced"
    elif cmp_["win_rate"] > 0.5 or md["mean"] > 0:
        vb = "partly reproduced"
    else:
        vb = "not reproduced"
    return {"a": {"per_setting": per, "verdict": va},
            "b": {"win_rate": cmp_["win_rate"], "n_pairs": cmp_["n_pairs"], "mean_diff": md["mean"],
                  "ci": md["ci"], "verdict": vb}}


def plot(res: dict, cfg: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    keys = [("test_acc", "test accuracy"), ("slice_regions", "regions on the slice (exact)"),
            ("patterns", "distinct patterns (samples)"), ("log10_bound", "log10 sparse bound")]
    i = 0
    for ds in cfg["datasets"]:
        for w in cfg["widths"]:
            c = sorted((x for x in res["curves"] if x["dataset"] == ds and x["width"] == w),
                       key=lambda x: x["density"])
            dens = [100 * x["density"] for x in c]
            for ax, (k, lab) in zip(axes, keys):
                ax.plot(dens, [x[k] for x in c], "o-", color=f"C{i}", label=f"{ds} w={w}")
                ax.set_xscale("log")
                ax.set_xlabel("hidden-layer density (%)")
                ax.set_ylabel(lab)
            i += 1
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("One-shot layerwise magnitude pruning + fine-tuning (means over seeds)")
    files = [C.savefig(fig, out / "regions_vs_density.png")]

    pairs = res["comparison"]["pairs"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, ds in enumerate(cfg["datasets"]):
        q = [x for x in pairs if x["dataset"] == ds]
        ax.scatter([100 * x["density"] for x in q], [100 * x["diff"] for x in q], color=f"C{i}", label=ds,
                   alpha=0.7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("total hidden density (%)")
    ax.set_ylabel("accuracy: bound-guided − uniform (points)")
    h = res["headline"]["b"]
    ax.set_title(f"win rate {h['win_rate']:.2f}, mean {100 * h['mean_diff']:+.2f} pts "
                 f"[{100 * h['ci'][0]:+.2f}, {100 * h['ci'][1]:+.2f}]", fontsize=9)
    ax.legend(fontsize=7)
    files.append(C.savefig(fig, out / "bound_vs_uniform.png"))
    return files


def run(cfg: dict, seeds, out: Path, jobs: int = 2, n_boot: int = 2000) -> dict:
    from joblib import Parallel, delayed

    units = [(ds, w, s) for ds in cfg["datasets"] for w in cfg["widths"] for s in seeds]
    root = out / "runs"
    if jobs == 1:
        recs = [run_unit(*u, cfg, root) for u in units]
    else:
        recs = Parallel(n_jobs=jobs)(delayed(run_unit)(*u, cfg, root) for u in units)
    records = [r for rs in recs for r in rs]
    res = {"records": records, **summarise(records, cfg, n_boot)}
    res["headline"] = headline(res, cfg)
    return res


def main(argv=None) -> int:
    args = C.parser(NAME, __doc__.splitlines()[0], default_seeds=[0, 1, 2]).parse_args(argv)
    C.limit_threads()
    cfg = make_config(args.quick)
    out = C.out_dir(NAME, args)
    res = run(cfg, args.seeds, out, jobs=args.jobs, n_boot=args.n_boot)
    res["plots"] = plot(res, cfg, out)
    res = {"description": C.describe(NAME, args, cfg), **res}
    C.write_json(out / "results.json", res)
    for c in res["curves"]:
        print(f"{c['dataset']:>10} w={c['width']:>3} p={c['density']:<6g} acc={c['test_acc']:.3f} "
              f"slice={c['slice_regions']:8.0f} patterns={c['patterns']:6.0f} log10B={c['log10_bound']:.1f}")
    print("headline (a):", res["headline"]["a"]["verdict"], " (b):", res["headline"]["b"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
