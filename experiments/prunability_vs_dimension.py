"""Finding 1 (Ankner et al. 2022): does lower intrinsic dimension of the data make a network more prunable?

Data of controlled intrinsic dimension ``d`` in a fixed ambient dimension ``D`` (``netgeom.data.synthetic``:
a curved ``d``-manifold with labels from a fixed teacher on the latent coordinates; in full mode also
MNIST-1D reduced to ``d`` principal components), an MLP, IMP with weight rewinding (to epoch 1), several
seeds. Per ``d``: measured ID (MLE, MacKay–Ghahramani "averaged inverses", k = 25; TwoNN), dense accuracy,
prunability (largest IMP sparsity whose mean accuracy is within one standard error of the dense one). The
Spearman correlation between measured ID and prunability is computed over the (d, seed) runs, each run's
prunability read against the same threshold as its ``d``'s mean curve, with a bootstrap interval over runs.
The direction is reported as measured: the spec treats it as open.

    python experiments/prunability_vs_dimension.py --quick        # ~1-2 minutes on 2 cores
    python experiments/prunability_vs_dimension.py --seeds 0 1 2  # full mode
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import _common as C

NAME = "prunability_vs_dimension"


def make_config(quick: bool) -> dict:
    if quick:
        return {
            "families": ["synthetic_curved"], "dims": [2, 4, 8, 16], "D": 64, "n_train": 1000, "n_test": 1000,
            "n_classes": 4, "widths": [64, 64], "epochs": 12, "rounds": 10, "q": 0.3, "lr": 0.05,
            "batch_size": 64, "rewind": "epoch:1", "mle_k": 25,
        }
    return {
        "families": ["synthetic_curved", "reduced_mnist1d"], "dims": [2, 4, 8, 16, 32], "D": 64,
        "n_train": 4000, "n_test": 2000, "n_classes": 4, "widths": [100, 100], "epochs": 30, "rounds": 12,
        "q": 0.3, "lr": 0.05, "batch_size": 64, "rewind": "epoch:1", "mle_k": 25,
    }


def data_description(family: str, d: int, seed: int, cfg: dict) -> dict:
    if family == "synthetic_curved":
        return {"name": "synthetic_curved", "d": d, "D": cfg["D"], "n_train": cfg["n_train"],
                "n_test": cfg["n_test"], "n_classes": cfg["n_classes"], "seed": seed}
    if family.startswith("reduced_"):
        return {"name": "reduced", "dataset": family.split("_", 1)[1], "d": d, "seed": seed}
    raise ValueError(f"unknown data family {family!r}")


def imp_config(family: str, d: int, seed: int, cfg: dict):
    from netgeom.data.datasets import load_dataset
    from netgeom.pruning import IMPConfig, parse_rewind
    from netgeom.training import TrainConfig

    desc = data_description(family, d, seed, cfg)
    ds = load_dataset(desc)
    return IMPConfig(
        model={"name": "mlp", "n_in": ds.n_features, "widths": list(cfg["widths"]), "n_out": ds.n_classes},
        data=desc,
        train=TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                          schedule="cosine"),
        q=cfg["q"], rounds=cfg["rounds"], rewind=parse_rewind(cfg["rewind"]), scope="global",
        include_output=True, seed=seed,
    ), ds


def measure_id(X, k: int) -> dict:
    from netgeom.dimension import intrinsic_dimension

    X = np.asarray(X, dtype=np.float64)
    mle = intrinsic_dimension(X, "mle", k=k, variant="mackay_ghahramani").dimension
    twonn = intrinsic_dimension(X, "twonn").dimension
    return {"mle": float(mle), "twonn": float(twonn)}


def run(cfg: dict, seeds, out: Path, jobs: int = 2, n_boot: int = 2000) -> dict:
    """Run the sweep (resumable: IMP run directories under ``out/runs``) and return the results dict."""
    from netgeom.pruning import prunability, run_sweep

    configs, ids, keys = [], {}, []
    for fam in cfg["families"]:
        for d in cfg["dims"]:
            for s in seeds:
                c, ds = imp_config(fam, d, s, cfg)
                configs.append(c)
                keys.append((fam, d, s))
                ids[(fam, d, s)] = measure_id(ds.X_train.numpy(), cfg["mle_k"])
    results = run_sweep(configs, out_dir=out / "runs", n_jobs=jobs)
    by_key = dict(zip(keys, results))

    rows, runs, summary = [], [], {}
    for fam in cfg["families"]:
        xs_mle, xs_two, ys, xs_nom = [], [], [], []
        for d in cfg["dims"]:
            res = [by_key[(fam, d, s)] for s in seeds]
            pr = prunability(res)
            mle = [ids[(fam, d, s)]["mle"] for s in seeds]
            two = [ids[(fam, d, s)]["twonn"] for s in seeds]
            rows.append({
                "family": fam, "d": d, "mle": float(np.mean(mle)), "twonn": float(np.mean(two)),
                "dense_acc": pr.dense_acc, "prunability": pr.prunability, "eps": pr.eps,
                "sparsity": pr.sparsity, "mean_acc": pr.mean_acc, "se_acc": pr.se_acc,
                # prunability at the last level tested is a lower bound only (IMP stopped before acc fell)
                "censored": bool(pr.level == len(pr.sparsity) - 1),
            })
            for s, r in zip(seeds, res):
                # the same threshold as this d's mean curve, so runs are comparable with the row above
                p_run = prunability(r, eps=pr.eps).prunability
                runs.append({"family": fam, "d": d, "seed": s, "mle": ids[(fam, d, s)]["mle"],
                             "twonn": ids[(fam, d, s)]["twonn"], "dense_acc": r.levels[0].test_acc,
                             "prunability": p_run, "run_dir": str(Path(r.run_dir).relative_to(out))})
                xs_mle.append(ids[(fam, d, s)]["mle"])
                xs_two.append(ids[(fam, d, s)]["twonn"])
                xs_nom.append(d)
                ys.append(p_run)
        summary[fam] = {
            "spearman_mle": C.spearman_bootstrap(xs_mle, ys, n_boot=n_boot, seed=0),
            "spearman_twonn": C.spearman_bootstrap(xs_two, ys, n_boot=n_boot, seed=1),
            "spearman_nominal": C.spearman_bootstrap(xs_nom, ys, n_boot=n_boot, seed=2),
        }
    return {"per_dimension": rows, "per_run": runs, "correlation": summary}


def headline(res: dict) -> dict:
    """The headline of every data family: ``{"families": {family: headline_for(res, family)}}`` plus the
    first family's fields at the top level (kept for older readers)."""
    fams = {fam: headline_for(res, fam) for fam in res["correlation"]}
    return {**next(iter(fams.values())), "families": fams}


def headline_for(res: dict, fam: str) -> dict:
    """Rule (stated in make_results.py): the claimed direction is a negative ID–prunability correlation.
    reproduced: the bootstrap interval of Spearman(MLE ID, prunability) over runs lies below 0; not
    reproduced (opposite direction): it lies above 0; inconclusive: it includes 0, whatever the sign of the
    point estimate (a non-significant correlation is not evidence for either direction)."""
    from scipy.stats import spearmanr

    sp = res["correlation"][fam]["spearman_mle"]
    lo, hi = sp["ci"]
    rho = sp["rho"]
    rows = [r for r in res["per_dimension"] if r["family"] == fam]
    rho_means = float(spearmanr([r["d"] for r in rows], [r["prunability"] for r in rows]).statistic)
    if rho is None or lo is None or not np.isfinite(rho):
        verdict = "not reproduced"
    elif hi < 0:
        verdict = "reproduced"
    elif lo > 0:
        verdict = "not reproduced (opposite direction)"
    else:
        verdict = "inconclusive"
    return {"family": fam, "rho": rho, "ci": [lo, hi], "rho_per_d_means": rho_means, "verdict": verdict,
            "n_censored": sum(r["censored"] for r in rows), "n_dims": len(rows)}


def plot(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, fam in enumerate(res["correlation"]):
        runs = [r for r in res["per_run"] if r["family"] == fam]
        rows = [r for r in res["per_dimension"] if r["family"] == fam]
        axes[0].scatter([r["mle"] for r in runs], [100 * r["prunability"] for r in runs], color=f"C{i}",
                        alpha=0.5, s=15)
        sp = res["correlation"][fam]["spearman_mle"]
        ci = sp["ci"]
        lab = f"{fam}: ρ={sp['rho']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci[0] is not None else fam
        axes[0].plot([r["mle"] for r in rows], [100 * r["prunability"] for r in rows], "o-", color=f"C{i}",
                     label=lab)
        for r in rows:
            axes[1].plot(100 * np.asarray(r["sparsity"]), r["mean_acc"], marker=".",
                         label=f"{fam[:9]} d={r['d']}", color=plt.cm.viridis(np.log2(r["d"]) / 5), alpha=0.8,
                         ls="-" if i == 0 else "--")
    axes[0].set_xlabel("measured intrinsic dimension (MLE, k=25)")
    axes[0].set_ylabel("prunability (% sparsity)")
    axes[0].set_title("Prunability vs intrinsic dimension")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("sparsity (%)")
    axes[1].set_ylabel("test accuracy (mean over seeds)")
    axes[1].set_title("IMP with rewinding, per d")
    axes[1].legend(fontsize=6, ncol=2)
    files.append(C.savefig(fig, out / "prunability_vs_id.png"))
    return files


def main(argv=None) -> int:
    args = C.parser(NAME, __doc__.splitlines()[0], default_seeds=[0, 1, 2]).parse_args(argv)
    C.limit_threads()
    cfg = make_config(args.quick)
    out = C.out_dir(NAME, args)
    res = run(cfg, args.seeds, out, jobs=args.jobs, n_boot=args.n_boot)
    res["headline"] = headline(res)
    res["plots"] = plot(res, out)
    res = {"description": C.describe(NAME, args, cfg), **res}
    C.write_json(out / "results.json", res)
    for r in res["per_dimension"]:
        print(f"{r['family']:>18} d={r['d']:>3} MLE={r['mle']:6.2f} TwoNN={r['twonn']:6.2f} "
              f"dense={r['dense_acc']:.3f} prunability={r['prunability']:.3f}")
    print("headline:", res["headline"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
