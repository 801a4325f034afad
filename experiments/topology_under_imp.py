"""Finding 3 (Balwani & Krzyston 2022): zeroth-order topology of the weight graphs under IMP.

Design (pre-registered in ``experiments/PROTOCOL.md``), per (data set, seed):

(a) the fraction of the trained dense network's maximum-spanning-forest (MSF) edges kept by each IMP level's
    mask, beside random pruning with the same counts and the two magnitude nulls — one-shot global magnitude
    pruning of the dense weights to the level's sparsity, and one-shot layerwise magnitude pruning to the
    level's per-layer sparsities. "More than random" alone would show a magnitude effect, not an IMP effect.
(b) pruning the dense network one-shot to exactly ``1 − 1/η`` with its MSF protected keeps every diagram —
    true by construction; reported as an implementation check with its accuracy cost after fine-tuning.
(c) topology-preserving IMP (the MSF protect callback) against IMP, compared only at levels where their masks
    differ; at every TP-IMP pruning step the diagram of the previous level's trained weights under the old and
    the new mask is compared.
Also neural persistence per layer per level (netgeom's default definition; recorded in the JSON). IMP runs
stop at the last round whose density stays above ``1/η`` (TP-IMP cannot go further). Verdicts are computed by
``experiments/make_results.py`` from the stored per-level rows.

    python experiments/topology_under_imp.py --quick --fresh     # pipeline check, minutes
    python experiments/topology_under_imp.py --jobs 2            # full mode (see PROTOCOL.md)

    python experiments/topology_under_imp.py --jobs 2 --lenet5   # also LeNet-5 with max-pooling (long)
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import _common as C

NAME = "topology_under_imp"
DATA = {"mnist_test": {"name": "mnist", "root": C.MNIST_ROOT, "split": "test", "flat": True},
        "mnist1d": {"name": "mnist1d", "flat": True}}
# LeNet-5 with max-pooling (opt-in, --lenet5): on the MNIST split only, with its own (smaller) schedule
LENET = "lenet5_maxpool"


def make_config(quick: bool, lenet5: bool = False) -> dict:
    base = {"q": 0.2, "rewind": "init", "lr": 0.05, "batch_size": 64, "widths": [100, 100],
            "models": ["mlp", LENET] if lenet5 else ["mlp"]}
    if quick:
        return {**base, "datasets": ["mnist1d"], "max_rounds": 8, "epochs": 5,
                "lenet5": {"max_rounds": 3, "epochs": 2}}
    return {**base, "datasets": ["mnist_test", "mnist1d"], "max_rounds": None, "epochs": 6,
            "lenet5": {"max_rounds": None, "epochs": 6}}


def to_maxpool(net):
    """netgeom's LeNet-5 with its average pools replaced by max pools (no parameters change, so the seeded
    initialisation is the same)."""
    from torch import nn

    for i, m in enumerate(net):
        if isinstance(m, nn.AvgPool2d):
            net[i] = nn.MaxPool2d(m.kernel_size, m.stride)
    return net


def make_imp():
    """IMP for the max-pooling LeNet-5: ``build_model`` knows LeNet-5 with average pooling only, so the
    description names that one and the networks are built with max pools; such runs live under their own
    root (``runs_lenet5_maxpool``) so they can never be mixed with average-pooling runs of the same hash."""
    from netgeom.pruning import IMP

    class MaxPoolIMP(IMP):
        def _build(self):
            return to_maxpool(super()._build())

    return MaxPoolIMP


def model_at(res, level: int, model_name: str):
    net = res.model_at(level)
    return to_maxpool(net) if model_name == LENET else net


def protected_count(model) -> int:
    from netgeom.topology import msf_protect

    return int(sum(int(v.sum()) for v in msf_protect(model).values()))


def _n_prunable(model) -> int:
    from netgeom.pruning import prunable_parameters

    params = dict(model.named_parameters())
    return sum(int(params[k].numel()) for k in prunable_parameters(model, include_output=True))


def rounds_below_bound(model, q: float) -> int:
    """The last IMP round whose kept-weight count stays at or above the number of weights the MSF protect
    callback keeps (for an MLP the forest size: density >= 1/η; a convolution's forest edge is a kernel)."""
    n_keep = protected_count(model)
    n_all = _n_prunable(model)
    r = int(math.floor(math.log(n_keep / n_all) / math.log(1 - q)))
    while r > 0 and math.floor((1 - q) ** r * n_all) < n_keep:  # the level's count is rounded down
        r -= 1
    return r


def imp_configs(cfg: dict, dataset: str, seed: int, model_name: str = "mlp"):
    from netgeom.data.datasets import load_dataset
    from netgeom.nets import build_model
    from netgeom.pruning import IMPConfig, parse_rewind
    from netgeom.training import TrainConfig

    sched = cfg if model_name == "mlp" else {**cfg, **cfg["lenet5"]}
    if model_name == "mlp":
        data = {**DATA[dataset], "seed": seed}
        ds = load_dataset(data)
        model = {"name": "mlp", "n_in": ds.n_features, "widths": list(cfg["widths"]), "n_out": ds.n_classes}
        net = build_model({**model, "seed": seed})
    else:
        data = {k: v for k, v in DATA[dataset].items() if k != "flat"} | {"seed": seed}
        ds = load_dataset(data)
        model = {"name": "lenet5", "in_shape": list(ds.input_shape), "n_out": ds.n_classes}
        net = to_maxpool(build_model({**model, "seed": seed}))
    rounds = rounds_below_bound(net, cfg["q"])
    if sched["max_rounds"] is not None:
        rounds = min(rounds, sched["max_rounds"])
    base = IMPConfig(
        model=model, data=data,
        train=TrainConfig(epochs=sched["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                          schedule="cosine"),
        q=cfg["q"], rounds=rounds, rewind=parse_rewind(cfg["rewind"]), scope="global",
        include_output=True, seed=seed,
    )
    return base, dataclasses.replace(base, prune="random"), ds


def _masks_equal(a, b) -> bool:
    import torch

    return set(a.keys()) == set(b.keys()) and all(torch.equal(a[k], b[k]) for k in a.keys())


def analyse_run(res, dense_model, label: str, imp_res=None, model_name: str = "mlp") -> list[dict]:
    """Per level: accuracy, MSF retention of the dense network's forest (and, for IMP, of the two one-shot
    magnitude nulls at the same sparsities), neural persistence, whether pruning this level kept the previous
    level's diagrams, and (TP-IMP) whether its masks equal IMP's."""
    from netgeom.pruning import magnitude_prune
    from netgeom.topology import msf_retention, neural_persistence

    rows = []
    for r, lv in enumerate(res.levels):
        ret = msf_retention(dense_model, lv.masks)
        npr = neural_persistence(model_at(res, r, model_name), lv.masks)
        row = {"variant": label, "level": r, "sparsity": lv.sparsity, "test_acc": lv.test_acc,
               "msf_retention": ret.retention_total, "random_expectation": ret.expected_total,
               "msf_retention_layer": ret.retention, "np_layer": npr.layer_np_normalized,
               "np_network": npr.network_np, "layer_names": npr.layer_names}
        if r > 0:
            prev = model_at(res, r - 1, model_name)
            chk = msf_retention(prev, lv.masks, dense_masks=res.levels[r - 1].masks)
            row["all_diagrams_kept"] = chk.all_unchanged
            if label == "imp":
                g = magnitude_prune(dense_model, lv.sparsity, scope="global", include_output=True,
                                    relative_to="all")
                la = magnitude_prune(dense_model, per_layer=dict(lv.layer_sparsity), include_output=True,
                                     relative_to="all")
                row["oneshot_global_retention"] = msf_retention(dense_model, g).retention_total
                row["oneshot_layer_retention"] = msf_retention(dense_model, la).retention_total
                row["oneshot_global_sparsity"] = g.sparsity()
                row["oneshot_layer_sparsity"] = la.sparsity()
        if imp_res is not None:
            row["masks_equal_imp"] = _masks_equal(lv.masks, imp_res.levels[r].masks)
        rows.append(row)
    return rows


def bound_check(dense_model, dense_acc: float, data, cfg: dict, seed: int) -> dict:
    """(b): prune the trained dense net to exactly 1 − 1/η keeping its MSF, compare diagrams, fine-tune.
    (For an MLP the protected weights are the forest, so the target is exactly 1 − 1/η; a convolution's
    forest edge keeps its whole kernel, so there the target is 1 − protected / all weights.)"""
    import copy

    from netgeom.pruning import magnitude_prune
    from netgeom.topology import msf_protect, msf_retention, topology_bound
    from netgeom.training import TrainConfig, Trainer, evaluate

    b = topology_bound(dense_model)
    n_all = _n_prunable(dense_model)
    target = 1.0 - protected_count(dense_model) / n_all
    masks = magnitude_prune(dense_model, target, protect=msf_protect, relative_to="all", include_output=True)
    chk = msf_retention(dense_model, masks)
    net = copy.deepcopy(dense_model)
    masks.apply(net)
    _, acc0 = evaluate(net, data.X_test, data.y_test)
    tc = TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                     schedule="cosine", seed=seed)
    Trainer(net, data, tc, masks=masks, verbose=False).run()
    _, acc1 = evaluate(net, data.X_test, data.y_test)
    return {"eta": b.eta, "max_sparsity": b.max_sparsity, "layer_max_sparsity": b.layer_max_sparsity,
            "pruned_sparsity": masks.sparsity(), "all_diagrams_kept": chk.all_unchanged,
            "acc_dense": dense_acc, "acc_before_finetune": acc0, "acc_after_finetune": acc1,
            "msf_retention": chk.retention_total}


def run_seed(cfg: dict, dataset: str, seed: int, out: str, model_name: str = "mlp") -> dict:
    C.limit_threads()
    from netgeom.pruning import IMP
    from netgeom.topology import msf_protect, neural_persistence

    out = Path(out)
    base, rand, ds = imp_configs(cfg, dataset, seed, model_name)
    runs = out / ("runs" if model_name == "mlp" else f"runs_{model_name}")
    imp_cls = IMP if model_name == "mlp" else make_imp()
    sched = cfg if model_name == "mlp" else {**cfg, **cfg["lenet5"]}
    code = C.code_identity()  # these scripts shape the runs too (MaxPoolIMP, the configs)
    imp = imp_cls(base, out_dir=runs, verbose=False, data=ds, code=code).run()
    rnd = imp_cls(rand, out_dir=runs, verbose=False, data=ds, code=code).run()
    tp = imp_cls(base, out_dir=runs, protect=msf_protect, verbose=False, data=ds, code=code).run()
    dense = model_at(imp, 0, model_name)
    rows = (analyse_run(imp, dense, "imp", model_name=model_name)
            + analyse_run(rnd, dense, "random", model_name=model_name)
            + analyse_run(tp, dense, "tp_imp", imp_res=imp, model_name=model_name))
    npr = neural_persistence(dense)
    np_def = {k: getattr(npr, k) for k in ("normalize", "aggregate", "p", "definition") if hasattr(npr, k)}
    # the verdicts group units by this label: an MLP unit by its data set, a LeNet-5 unit apart from it
    label = dataset if model_name == "mlp" else f"{dataset} ({model_name})"
    return {"dataset": label, "data": dataset, "model": model_name, "seed": seed, "n0": ds.n_features,
            "n_test": ds.n_test, "rounds": base.rounds,
            "levels": rows, "bound": bound_check(dense, imp.levels[0].test_acc, ds, sched, seed),
            "neural_persistence_definition": np_def,
            "run_dirs": [str(Path(x.run_dir).relative_to(out)) for x in (imp, rnd, tp)]}


def run(cfg: dict, seeds, out: Path, jobs: int = 2, scheduler: str | None = None) -> dict:
    out = Path(out).resolve()  # the units may run in other working directories (--scheduler)
    units = [(cfg, ds, s, str(out), "mlp") for ds in cfg["datasets"] for s in seeds]
    if LENET in cfg["models"]:
        # LeNet-5 first: its units are the longest
        units = [(cfg, "mnist_test", s, str(out), LENET) for s in seeds] + units
    # the workers import this module by name (a function of __main__ would be pickled with its globals)
    from experiments import topology_under_imp as mod

    per_seed = C.parallel_map(mod.run_seed, units, jobs=jobs, scheduler=scheduler, shared=out)
    res = {"per_seed": per_seed}
    from experiments.make_results import verdicts

    res["verdicts"] = verdicts(NAME, res)
    return res


def plot(res: dict, cfg: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = []
    for ds in sorted({s["dataset"] for s in res["per_seed"]}):
        seeds = [s for s in res["per_seed"] if s["dataset"] == ds]
        n_lv = min(s["rounds"] for s in seeds) + 1

        def curve(variant, key, seeds=seeds, n_lv=n_lv):
            a = np.array([[next(r[key] for r in s["levels"] if r["variant"] == variant and r["level"] == k)
                           for k in range(n_lv)] for s in seeds], dtype=float)
            return a.mean(0), a.min(0), a.max(0)

        rem = 100 * (1 - curve("imp", "sparsity")[0])
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        ax = axes[0]
        series = (("imp", "msf_retention", "IMP", "C0"),
                  ("imp", "oneshot_global_retention", "one-shot global magnitude", "C1"),
                  ("imp", "oneshot_layer_retention", "one-shot layerwise magnitude", "C2"),
                  ("random", "msf_retention", "random pruning (null)", "0.5"))
        for variant, key, lab, col in series:
            if key.startswith("oneshot"):
                a = np.array([[next(r[key] for r in s["levels"] if r["variant"] == "imp" and r["level"] == k)
                               if k > 0 else 1.0 for k in range(n_lv)] for s in seeds])
                m, lo, hi = a.mean(0), a.min(0), a.max(0)
            else:
                m, lo, hi = curve(variant, key)
            ax.plot(rem, m, "o-", ms=3, color=col, label=lab)
            ax.fill_between(rem, lo, hi, color=col, alpha=0.2)
        ax.set_ylabel("dense MSF edges kept")
        ax.set_title(f"(a) MSF retention, {ds}", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1]
        names = seeds[0]["levels"][0]["layer_names"]
        for k, name in enumerate(names):
            for v, ls in (("imp", "-"), ("random", ":"), ("tp_imp", "--")):
                a = np.array([[next(r["np_layer"][k] for r in s["levels"]
                                    if r["variant"] == v and r["level"] == j) for j in range(n_lv)]
                              for s in seeds])
                lab = f"{name} {v}" if v == "imp" or k == 0 else None
                ax.plot(rem, a.mean(0), ls, color=f"C{k}", label=lab)
        ax.set_ylabel("normalised neural persistence")
        ax.set_title("neural persistence per layer (— IMP, ··· random, -- TP-IMP)", fontsize=9)
        ax.legend(fontsize=6)
        ax = axes[2]
        for v, col, lab in (("imp", "C0", "IMP"), ("tp_imp", "C3", "TP-IMP"), ("random", "0.5", "random")):
            m, lo, hi = curve(v, "test_acc")
            ax.plot(rem, m, "o-", ms=3, color=col, label=lab)
            ax.fill_between(rem, lo, hi, color=col, alpha=0.2)
        b = seeds[0]["bound"]
        ax.axvline(100 * (1 - b["max_sparsity"]), color="k", lw=0.8, ls=":",
                   label=f"1/η = {100 * (1 - b['max_sparsity']):.2f}% remaining")
        acc_b = np.mean([s["bound"]["acc_after_finetune"] for s in seeds])
        ax.plot([100 * (1 - b["pruned_sparsity"])], [acc_b], "r*", ms=10, label="MSF only, fine-tuned")
        ax.set_ylabel("test accuracy")
        ax.set_title("(c) TP-IMP vs IMP (band: range over seeds)", fontsize=9)
        ax.legend(fontsize=7)
        for ax in axes:
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("weights remaining (%)")
        tag = ds.replace(" (", "_").replace(")", "")
        files.append(C.savefig(fig, out / f"topology_under_imp_{tag}.png"))
    return files


def main(argv=None) -> int:
    p = C.parser(NAME, __doc__.splitlines()[0], [0, 1, 2], [0, 1, 2])
    p.add_argument("--lenet5", action="store_true",
                   help="also LeNet-5 with max-pooling on the MNIST split (opt-in: about 17 min per seed on "
                        "one core in full mode, ~1 min in quick mode)")
    args = C.parse(p, argv)
    C.limit_threads()
    cfg = make_config(args.quick, lenet5=args.lenet5)
    out = C.out_dir(NAME, args)
    desc = C.describe(NAME, args, cfg)
    t0 = time.time()
    res = run(cfg, args.seeds, out, jobs=args.jobs, scheduler=args.scheduler)
    res["plots"] = plot(res, cfg, out)
    desc["elapsed_s"] = round(time.time() - t0, 1)
    res = {"description": desc, **res}
    C.write_json(out / "results.json", res)
    for key, v in res["verdicts"].items():
        for ds, g in [*v["datasets"].items(), ("pooled", v["pooled"])]:
            print(f"{key} {ds}: {g['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
