"""Finding 2 (Cai et al. 2023): sparsity vs linear regions, and bound-guided per-layer densities.

Design (pre-registered in ``experiments/PROTOCOL.md``): MLPs ``n0-w-w-c`` trained dense, then pruned one-shot,
layer by layer by magnitude (hidden layers; the classifier stays dense) to each total hidden density — down to
1e-4, and 1e-5 on the 784-input MNIST split, where the full-input bound responds — and fine-tuned. Per
density: test accuracy, the exact region count on the plane through three training points (the same plane at
every density), the log10 sparse bound for the full input and the slice's own bound (n0 = 2). The same total
density is also spread as ``allocate_densities`` chooses (maximising the bound). Critical densities, the 2b
pairs (allocation equal to uniform or a flat bound excluded and counted) and the verdicts are computed by
``experiments/make_results.py`` from the stored records.

Resumable: each (data set, width, seed) has a run directory under ``<out>/runs`` holding the dense weights and
one record per (density, allocation).

    python experiments/regions_vs_sparsity.py --quick --fresh     # pipeline check, minutes
    python experiments/regions_vs_sparsity.py --jobs 2            # full mode (see PROTOCOL.md)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import _common as C

NAME = "regions_vs_sparsity"
GRID = [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 3e-3, 1e-3, 3e-4, 1e-4]


def make_config(quick: bool) -> dict:
    base = {"lr": 0.05, "batch_size": 64, "allocations": ["uniform", "bound"], "slice_margin": 0.25}
    if quick:
        return {**base, "datasets": ["digits", "mnist1d"], "widths": [64],
                "densities": {"digits": GRID[::2], "mnist1d": GRID[::2]}, "epochs": 10, "ft_epochs": 3}
    return {**base, "datasets": ["digits", "mnist1d", "mnist_test"], "widths": [100, 200],
            "densities": {"digits": GRID, "mnist1d": GRID, "mnist_test": GRID + [3e-5, 1e-5]},
            "epochs": 15, "ft_epochs": 4}


def data_description(name: str, seed: int) -> dict:
    if name == "mnist_test":
        # only the 10,000-image test split is on disk: split it 8,000 / 2,000 (load_idx's split="test")
        return {"name": "mnist", "root": C.MNIST_ROOT, "split": "test", "seed": seed, "flat": True}
    return {"name": name, "seed": seed, "flat": True}


def hidden_names(model) -> list[str]:
    from netgeom.nets import affine_layers

    return [la.param_name for la in affine_layers(model)[:-1]]


def allocation(model, density: float, kind: str) -> dict[str, float]:
    """Per-hidden-layer target densities for a total hidden density (classifier untouched)."""
    from netgeom.regions.allocation import allocate_densities

    names = hidden_names(model)
    if kind == "uniform" or density >= 1.0:
        return {k: density for k in names}
    per = allocate_densities(model=model, total_density=density).per_layer(model)
    return {k: 1.0 - float(per[k]) for k in names}


def _log10_bound(n0: int, widths: list[int], dens: list[float]) -> float:
    from netgeom.regions.bounds import sparse_bound

    # an empty hidden layer makes the network constant: exactly one region, whatever any bound says
    if min(widths) == 0 or min(dens) == 0.0:
        return 0.0
    return float(sparse_bound(n0, widths, dens).log10)


def measure(model, masks, data, plane_idx) -> dict:
    import torch

    from netgeom.nets import affine_layers
    from netgeom.regions.exact import plane_through, regions_on_slice

    layers = affine_layers(model, masks)
    hidden = layers[:-1]
    dens = [float(la.density) for la in hidden]
    x0, d1, d2, box = plane_through(*(data.X_train[i] for i in plane_idx))
    sl = regions_on_slice(model, x0, d1, d2, box, masks=masks)
    widths = [la.n_out for la in hidden]
    # the slice's own bound: restricted to the plane, layer 1 is a dense (alive units) x 2 matrix; later
    # layers keep their masks, their densities taken over the columns of alive units
    W = [torch.as_tensor(la.weight).reshape(la.n_out, -1) for la in hidden]
    alive = (W[0] != 0).any(dim=1)
    s_widths, s_dens = [int(alive.sum())], [1.0]
    for Wl in W[1:]:
        sub = Wl[:, alive]
        s_dens.append(float((sub != 0).sum()) / max(1, sub.numel()))
        s_widths.append(int(Wl.shape[0]))
        alive = (Wl != 0).any(dim=1)
    return {"layer_density": dens, "slice_regions": int(sl.count),
            "log10_bound": _log10_bound(layers[0].n_in, widths, dens),
            "log10_bound_slice": _log10_bound(2, s_widths, s_dens), "slice_widths": s_widths,
            "slice_densities": s_dens}


def run_unit(dataset: str, width: int, seed: int, cfg: dict, root: str) -> list[dict]:
    """Dense training, then every (density, allocation) for one (data set, width, seed); resumable."""
    import torch

    C.limit_threads()
    import warnings

    # at 1e-4 and below a hidden layer may lose every weight: recorded (layer_density 0, one region), expected
    warnings.filterwarnings("ignore", message=".*removes every weight.*")
    from netgeom.data.datasets import load_dataset
    from netgeom.nets import mlp
    from netgeom.pruning import Masks, RunDir, magnitude_prune
    from netgeom.training import TrainConfig, Trainer, evaluate

    desc = {"kind": NAME, "schema": C.SCHEMA, "data": data_description(dataset, seed), "width": width,
            "seed": seed, "epochs": cfg["epochs"], "ft_epochs": cfg["ft_epochs"], "lr": cfg["lr"],
            "batch_size": cfg["batch_size"]}
    rd = RunDir(root, desc, prefix=f"{dataset}-w{width}-s{seed}", code=C.code_identity())
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
    # three training points chosen by the seed, the same plane for every density of this unit
    plane_idx = np.random.default_rng(seed).choice(data.n_train, size=3, replace=False).tolist()
    out = []
    for p in cfg["densities"][dataset]:
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
                masks = magnitude_prune(net, per_layer={k: 1.0 - v for k, v in per.items()},
                                        include_output=False, relative_to="all", apply=True)
                Trainer(net, data, tc.replace(epochs=cfg["ft_epochs"]), masks=masks, verbose=False).run()
            else:
                masks = Masks({k: torch.ones_like(v, dtype=torch.bool) for k, v in net.state_dict().items()
                               if k in per})
            _, acc = evaluate(net, data.X_test, data.y_test)
            rec = {"dataset": dataset, "n0": data.n_features, "n_classes": data.n_classes, "width": width,
                   "seed": seed, "density": p, "allocation": kind, "target_density": list(per.values()),
                   "test_acc": acc, "n_test": data.n_test, "plane_idx": plane_idx,
                   **measure(net, masks, data, plane_idx)}
            rd.save_json(rec_name, rec)
            out.append(rec)
    return out


def run(cfg: dict, seeds, out: Path, jobs: int = 2, scheduler: str | None = None) -> dict:
    out = Path(out).resolve()  # the units may run in other working directories (--scheduler)
    # the 784-input units are the slowest: start them first so two workers finish together
    order = {"mnist_test": 0, "digits": 1, "mnist1d": 2}
    units = sorted(((ds, w, s, cfg, str(out / "runs")) for ds in cfg["datasets"] for w in cfg["widths"]
                    for s in seeds), key=lambda u: (order.get(u[0], 3), -u[1]))
    # the workers import this module by name (a function of __main__ would be pickled with its globals)
    from experiments import regions_vs_sparsity as mod

    recs = C.parallel_map(mod.run_unit, units, jobs=jobs, scheduler=scheduler, shared=out)
    key = {(u[0], u[1], u[2]): i for i, u in enumerate(units)}
    records = [r for ds in cfg["datasets"] for w in cfg["widths"] for s in seeds
               for r in recs[key[(ds, w, s)]]]
    res = {"records": records}
    from experiments.make_results import verdicts

    res["verdicts"] = verdicts(NAME, res)
    return res


def plot(res: dict, cfg: dict, seeds, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    keys = [("test_acc", "test accuracy"), ("slice_regions", "regions on the slice (exact)"),
            ("log10_bound", "log10 sparse bound (full input)"), ("log10_bound_slice", "log10 bound (n0 = 2)")]
    i = 0
    v2a = res["verdicts"]["2a"]["datasets"]
    for ds in cfg["datasets"]:
        for w in cfg["widths"]:
            dens = sorted(cfg["densities"][ds], reverse=True)
            for ax, (k, lab) in zip(axes, keys):
                vals = np.array([[r[k] for r in res["records"] if r["dataset"] == ds and r["width"] == w and
                                  r["seed"] == s and r["allocation"] == "uniform" and r["density"] == p]
                                 for p in dens for s in seeds]).reshape(len(dens), len(seeds))
                m = vals.mean(1)
                ax.plot([100 * p for p in dens], m, "o-", color=f"C{i}", ms=3, label=f"{ds} w={w}")
                ax.fill_between([100 * p for p in dens], vals.min(1), vals.max(1), color=f"C{i}", alpha=0.2)
                ax.set_xscale("log")
                ax.invert_xaxis() if not ax.xaxis_inverted() else None
                ax.set_xlabel("hidden-layer density (%)")
                ax.set_ylabel(lab)
            units = [u for u in v2a.get(ds, {}).get("units", []) if u["unit"][1] == w]
            if units:
                pa = 10 ** np.mean([np.log10(u["p_acc"]) for u in units])
                axes[0].axvline(100 * pa, color=f"C{i}", ls=":", lw=1)
            i += 1
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("One-shot layerwise magnitude pruning + fine-tuning (mean, band = range over seeds; dotted: "
                 "accuracy's critical density)", fontsize=9)
    files = [C.savefig(fig, out / "regions_vs_density.png")]

    from experiments.make_results import pairs_2b

    pairs = pairs_2b(res["records"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, ds in enumerate(cfg["datasets"]):
        for st, mk in (("included", "o"), ("flat_bound", "x"), ("equal_allocation", ".")):
            q = [x for x in pairs if x["dataset"] == ds and x["status"] == st]
            ax.scatter([100 * x["density"] for x in q], [100 * x["diff"] for x in q], color=f"C{i}",
                       marker=mk,
                       label=f"{ds} ({st}, {len(q)})", alpha=0.7 if st == "included" else 0.35)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("total hidden density (%)")
    ax.set_ylabel("accuracy: bound-guided − uniform (points)")
    g = res["verdicts"]["2b"]["pooled"]
    ttl = ("no included pairs" if g["mean_diff"] is None else
           f"pooled: {100 * g['mean_diff']:+.2f} pts, {g['n_included']} included pairs")
    ax.set_title(ttl, fontsize=9)
    ax.legend(fontsize=6)
    files.append(C.savefig(fig, out / "bound_vs_uniform.png"))
    return files


def main(argv=None) -> int:
    args = C.parse(C.parser(NAME, __doc__.splitlines()[0], [0, 1, 2], [0, 1, 2]), argv)
    C.limit_threads()
    cfg = make_config(args.quick)
    out = C.out_dir(NAME, args)
    desc = C.describe(NAME, args, cfg)
    t0 = time.time()
    res = run(cfg, args.seeds, out, jobs=args.jobs, scheduler=args.scheduler)
    res["plots"] = plot(res, cfg, args.seeds, out)
    desc["elapsed_s"] = round(time.time() - t0, 1)
    res = {"description": desc, **res}
    C.write_json(out / "results.json", res)
    for key in ("2a", "2b"):
        v = res["verdicts"][key]
        for ds, g in [*v["datasets"].items(), ("pooled", v["pooled"])]:
            print(f"{key} {ds}: {g['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
