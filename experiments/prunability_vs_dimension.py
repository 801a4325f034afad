"""Finding 1 (Ankner et al. 2022): does lower intrinsic dimension of the data make a network more prunable?

Design (pre-registered in ``experiments/PROTOCOL.md``): latent ``z ~ N(0, I_d)`` embedded in a fixed ambient
``R^D``; labels from a teacher on the first two latent coordinates only, the same label function for every
``d`` at a given seed, so the task's difficulty does not move with ``d`` (checked: the dense accuracy must
stay within a 3-point band). Two families: ``linear`` (``x = Q z``) and ``curved`` (label coordinates
linear, the ``d − 2`` nuisance coordinates through random Fourier features into the orthogonal
complement). Per (family, d, seed): measured ID (MLE averaged inverses k = 25, TwoNN), then IMP with weight
rewinding far enough that accuracy always falls (≥ 99.7% sparsity). Prunability, ε (≥ 1 point and ≥ one
binomial standard error of the test accuracy), censoring and the verdict are computed by
``experiments/make_results.py`` from the stored curves.

    python experiments/prunability_vs_dimension.py --quick --fresh     # pipeline check, minutes
    python experiments/prunability_vs_dimension.py --jobs 2            # full mode (see PROTOCOL.md)
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from experiments import _common as C

NAME = "prunability_vs_dimension"
N_LABEL = 2           # latent coordinates the teacher reads
TEACHER_WIDTH = 64
TEACHER_SCALE = 0.4  # pre-activation scale: smooth class boundaries, learnable at every d
N_THRESHOLD = 200_000  # draws of (z1, z2) fixing the class thresholds, independent of d


def make_config(quick: bool) -> dict:
    base = {"families": ["linear", "curved"], "D": 64, "n_train": 8000, "n_classes": 2, "widths": [100, 100],
            "rounds": 14, "q": 0.35, "lr": 0.05, "batch_size": 64, "rewind": "epoch:1", "mle_k": 25,
            "frequency": 1.0}
    if quick:
        return {**base, "dims": [2, 8, 32], "n_test": 2000, "epochs": 4}
    return {**base, "dims": [2, 4, 8, 16, 32], "n_test": 5000, "epochs": 6}


@functools.lru_cache(maxsize=8)
def teacher(seed: int, n_classes: int):
    """The label function of a seed: a fixed tanh net on ``z[:, :2]`` with thresholds at the quantiles of its
    score over ``N_THRESHOLD`` draws, so the classes are balanced and identical for every ``d``."""
    rng = np.random.default_rng([seed, 101])
    W = rng.normal(size=(N_LABEL, TEACHER_WIDTH)) * TEACHER_SCALE
    b = rng.normal(size=TEACHER_WIDTH) * 0.5
    v = rng.normal(size=TEACHER_WIDTH) / np.sqrt(TEACHER_WIDTH)

    def score(z2):
        return np.tanh(z2 @ W + b) @ v

    ref = np.random.default_rng([seed, 102]).normal(size=(N_THRESHOLD, N_LABEL))
    cuts = np.quantile(score(ref), np.arange(1, n_classes) / n_classes)
    return lambda z: np.searchsorted(cuts, score(z[:, :N_LABEL]))


def make_data(family: str, d: int, seed: int, cfg: dict):
    """The data set of one (family, d, seed); see the module docstring."""
    from netgeom import Dataset

    D, n_tr, n_te = cfg["D"], cfg["n_train"], cfg["n_test"]
    if not N_LABEL <= d <= D:
        raise ValueError(f"d must lie in [{N_LABEL}, D={D}], got {d}")
    rng = np.random.default_rng([seed, 201, d, ["linear", "curved"].index(family)])
    Q, _ = np.linalg.qr(np.random.default_rng([seed, 202]).normal(size=(D, D)))  # one frame per seed
    z = rng.normal(size=(n_tr + n_te, d))
    x = z[:, :N_LABEL] @ Q[:, :N_LABEL].T
    if family == "linear":
        x = x + z[:, N_LABEL:] @ Q[:, N_LABEL:d].T
    elif family == "curved":
        if d > N_LABEL:
            k = d - N_LABEL
            W = rng.normal(size=(k, D - N_LABEL)) * cfg["frequency"] / np.sqrt(k)
            phi = np.cos(z[:, N_LABEL:] @ W + rng.uniform(0, 2 * np.pi, size=D - N_LABEL))
            phi = (phi - phi[:n_tr].mean(0)) / phi[:n_tr].std(0)
            # total nuisance variance d − 2, as in the linear family
            x = x + np.sqrt(k / (D - N_LABEL)) * phi @ Q[:, N_LABEL:].T
    else:
        raise ValueError(f"unknown family {family!r}")
    y = teacher(seed, cfg["n_classes"])(z)
    import torch

    t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    return Dataset(name=f"f1_{family}", X_train=t(x[:n_tr], torch.float32), y_train=t(y[:n_tr], torch.int64),
                   X_test=t(x[n_tr:], torch.float32), y_test=t(y[n_tr:], torch.int64),
                   n_classes=cfg["n_classes"], input_shape=(D,), intrinsic_dim=d,
                   meta={"family": family, "d": d, "D": D, "seed": seed})


def data_description(family: str, d: int, seed: int, cfg: dict) -> dict:
    # names the generator and every argument, so the run directory's hash changes with any of them
    keys = ("D", "n_train", "n_test", "n_classes", "frequency")
    return {"name": f"experiments.{NAME}.make_data", "schema": C.SCHEMA, "family": family, "d": d,
            "seed": seed, **{k: cfg[k] for k in keys}}


def measure_id(X, k: int) -> dict:
    from netgeom.dimension import intrinsic_dimension

    X = np.asarray(X, dtype=np.float64)
    mle = intrinsic_dimension(X, "mle", k=k, variant="mackay_ghahramani").dimension
    twonn = intrinsic_dimension(X, "twonn").dimension
    return {"mle": float(mle), "twonn": float(twonn)}


def run_unit(family: str, d: int, seed: int, cfg: dict, root: str) -> dict:
    """One (family, d, seed): data, measured ID, IMP (resumable under ``root``); the raw curve."""
    C.limit_threads()
    from netgeom.pruning import IMP, IMPConfig, parse_rewind
    from netgeom.training import TrainConfig

    ds = make_data(family, d, seed, cfg)
    conf = IMPConfig(
        model={"name": "mlp", "n_in": ds.n_features, "widths": list(cfg["widths"]), "n_out": ds.n_classes},
        data=data_description(family, d, seed, cfg),
        train=TrainConfig(epochs=cfg["epochs"], lr=cfg["lr"], batch_size=cfg["batch_size"], momentum=0.9,
                          schedule="cosine"),
        q=cfg["q"], rounds=cfg["rounds"], rewind=parse_rewind(cfg["rewind"]), scope="global",
        include_output=True, seed=seed,
    )
    res = IMP(conf, out_dir=root, verbose=False, data=ds, code=C.code_identity()).run()
    return {"family": family, "d": d, "D": ds.n_features, "seed": seed, "n_train": ds.n_train,
            "n_test": ds.n_test, **measure_id(ds.X_train.numpy(), cfg["mle_k"]),
            "sparsity": [lv.sparsity for lv in res.levels], "test_acc": [lv.test_acc for lv in res.levels],
            "run_dir": str(Path(res.run_dir).relative_to(Path(root).parent))}


def run(cfg: dict, seeds, out: Path, jobs: int = 2, scheduler: str | None = None) -> dict:
    out = Path(out).resolve()  # the units may run in other working directories (--scheduler)
    units = [(f, d, s, cfg, str(out / "runs")) for f in cfg["families"] for d in cfg["dims"] for s in seeds]
    # the workers import this module by name (a function of __main__ would be pickled with its globals)
    from experiments import prunability_vs_dimension as mod

    runs = C.parallel_map(mod.run_unit, units, jobs=jobs, scheduler=scheduler, shared=out)
    res = {"runs": runs}
    from experiments.make_results import verdicts

    res["verdicts"] = verdicts(NAME, res)
    return res


def plot(res: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = res["verdicts"]["1"]
    fams = list(v["families"])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, fam in enumerate(fams):
        g = v["families"][fam]
        runs = [r for r in res["runs"] if r["family"] == fam]
        from experiments.make_results import run_prunability

        pr = [run_prunability(r["sparsity"], r["test_acc"], r["n_test"])["prunability"] for r in runs]
        axes[0].scatter([r["mle"] for r in runs], [100 * (1 - p) for p in pr], color=f"C{i}", alpha=0.5, s=15)
        ci = g["ci"]
        lab = f"{fam}: ρ={g['rho']:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci[0] is not None else fam
        axes[0].plot([b["mle"] for b in g["per_d"]], [100 * (1 - b["prunability"]) for b in g["per_d"]], "o-",
                     color=f"C{i}", label=lab)
        axes[1].plot([b["d"] for b in g["per_d"]], [b["mle"] for b in g["per_d"]], "o-", color=f"C{i}",
                     label=f"{fam} MLE")
        axes[1].plot([b["d"] for b in g["per_d"]], [b["twonn"] for b in g["per_d"]], "s:", color=f"C{i}",
                     label=f"{fam} TwoNN")
        dims = [b["d"] for b in g["per_d"]]
        for j, d in enumerate(dims):
            q = [r for r in runs if r["d"] == d]
            acc = np.mean([r["test_acc"] for r in q], axis=0)
            dens = 100 * (1 - np.mean([r["sparsity"] for r in q], axis=0))
            col = plt.cm.viridis(j / max(1, len(dims) - 1))
            axes[2].plot(dens, acc, ls="-" if i == 0 else "--", color=col, label=f"{fam} d={d}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("measured intrinsic dimension (MLE, k=25)")
    axes[0].set_ylabel("weights remaining at prunability (%)")
    axes[0].set_title("Prunability vs measured ID (lower = more prunable)", fontsize=9)
    axes[0].legend(fontsize=7)
    lim = max(b["d"] for g in v["families"].values() for b in g["per_d"])
    axes[1].plot([0, lim], [0, lim], "k:", lw=0.8, label="measured = d")
    axes[1].set_xlabel("nominal d")
    axes[1].set_ylabel("measured ID")
    axes[1].legend(fontsize=7)
    axes[1].set_title("ID control")
    axes[2].set_xscale("log")
    axes[2].invert_xaxis()
    axes[2].set_xlabel("weights remaining (%)")
    axes[2].set_ylabel("test accuracy (mean over seeds)")
    axes[2].set_title("IMP with rewinding, per d (— linear, -- curved)", fontsize=9)
    axes[2].legend(fontsize=6, ncol=2)
    return [C.savefig(fig, out / "prunability_vs_id.png")]


def main(argv=None) -> int:
    args = C.parse(C.parser(NAME, __doc__.splitlines()[0], [0, 1, 2, 3, 4], [0, 1, 2]), argv)
    C.limit_threads()
    cfg = make_config(args.quick)
    out = C.out_dir(NAME, args)
    desc = C.describe(NAME, args, cfg)
    t0 = time.time()
    res = run(cfg, args.seeds, out, jobs=args.jobs, scheduler=args.scheduler)
    res["plots"] = plot(res, out)
    desc["elapsed_s"] = round(time.time() - t0, 1)
    res = {"description": desc, **res}
    C.write_json(out / "results.json", res)
    v = res["verdicts"]["1"]
    for fam, g in [*v["families"].items(), ("pooled", v["pooled"])]:
        for b in g["per_d"] if fam != "pooled" else []:
            print(f"{fam:>7} d={b['d']:>3} MLE={b['mle']:6.2f} TwoNN={b['twonn']:6.2f} "
                  f"dense={b['dense_acc']:.3f} "
                  f"prunability={b['prunability']:.4f} censored={b['n_censored']}")
        print(f"{fam}: rho={g['rho']:+.3f} ci={g['ci']} -> {g['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
