"""Shared helpers of the experiment scripts: argparse, the exact run description, statistics, JSON output.

Every script writes ``<out>/results.json`` holding ``description`` (git commit and dirty flag, seeds,
package versions, command line, config) next to its numbers, and PNG plots beside it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "experiments" / "results"
# The shared MNIST test split lies beside the checkout (../shared/data/mnist); users pass their own copy.
MNIST_ROOT = str(ROOT.parent / "shared" / "data" / "mnist")
PACKAGES = ("netgeom", "torch", "numpy", "scipy", "scikit-learn", "gudhi", "mnist1d", "joblib", "matplotlib")
DESCRIPTION_FIELDS = ("experiment", "mode", "git_commit", "git_dirty", "seeds", "versions", "config", "argv")


def limit_threads() -> None:
    """One intra-op thread per process: on 2 shared cores, torch's default thread pool is ~20x slower
    for these small matrices (measured), and sweeps parallelise over processes instead."""
    import torch

    torch.set_num_threads(1)


def parser(name: str, doc: str, default_seeds: Sequence[int]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=doc)
    p.add_argument("--quick", action="store_true", help="small configuration (a few minutes on 2 cores)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds), help="run seeds")
    p.add_argument(
        "--out", default=None, help=f"output directory (default: experiments/results/{name}/<mode>)",
    )
    p.add_argument("--jobs", type=int, default=2, help="joblib worker processes for sweeps")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples for intervals")
    return p


def out_dir(name: str, args) -> Path:
    mode = "quick" if args.quick else "full"
    path = Path(args.out) if args.out else RESULTS / name / mode
    path.mkdir(parents=True, exist_ok=True)
    return path


def _git(*cmd: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True, timeout=20
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def describe(experiment: str, args, config: dict[str, Any]) -> dict[str, Any]:
    """The exact description of a run: what was run, from which commit, with which packages."""
    status = _git("status", "--porcelain", "--", "netgeom", "experiments")
    return {
        "experiment": experiment,
        "mode": "quick" if args.quick else "full",
        "git_commit": _git("rev-parse", "HEAD"),
        # uncommitted changes to the library or the scripts make the commit an incomplete description
        "git_dirty": bool(status) if status is not None else None,
        "seeds": list(args.seeds),
        "versions": versions(),
        "config": config,
        "argv": list(sys.argv),
        "platform": platform.platform(),
    }


def to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: dict[str, Any]) -> Path:
    path.write_text(json.dumps(to_plain(obj), indent=1, sort_keys=False) + "\n")
    return path


def spearman_bootstrap(x, y, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Spearman's rho of paired samples with a percentile bootstrap interval over the pairs.

    Resamples in which either variable is constant have no rank correlation and are skipped (their number
    is reported), rather than counted as 0.
    """
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise ValueError(f"need two 1-D arrays of equal length >= 3, got {x.shape} and {y.shape}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        rho, pval = float("nan"), float("nan")
    else:
        res = spearmanr(x, y)
        rho, pval = float(res.statistic), float(res.pvalue)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boots = []
    for row in idx:  # loop over resamples (not over data): spearmanr takes one pair of vectors
        xs, ys = x[row], y[row]
        if np.ptp(xs) > 0 and np.ptp(ys) > 0:
            boots.append(spearmanr(xs, ys).statistic)
    boots = np.asarray(boots)
    a = (1 - level) / 2
    ci = [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))] if boots.size else [None, None]
    return {"rho": rho, "p_value": pval, "ci": ci, "level": level, "n": int(x.size),
            "n_boot": n_boot, "n_boot_skipped": int(n_boot - boots.size)}


def mean_bootstrap(x, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Mean of ``x`` with a percentile bootstrap interval."""
    x = np.asarray(x, float)
    if x.ndim != 1 or x.size < 1:
        raise ValueError(f"need a non-empty 1-D array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return {"mean": float(x.mean()), "ci": [float(np.quantile(means, a)), float(np.quantile(means, 1 - a))],
            "level": level, "n": int(x.size), "n_boot": n_boot}


def savefig(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
