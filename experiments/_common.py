"""Shared helpers of the experiment scripts: argparse, the exact run description, statistics, JSON output.

Every script writes ``<out>/results.json`` holding ``description`` (schema version, git commit and dirty
flag, seeds, package versions, command line, config) next to its numbers, and PNG plots beside it.
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
DESCRIPTION_FIELDS = (
    "schema", "experiment", "mode", "git_commit", "git_dirty", "seeds", "versions", "config", "argv",
)
# Version of the results.json layout and of the verdict rules (experiments/PROTOCOL.md). Bump it when either
# changes: results of another schema are refused by make_results.py and the tests.
SCHEMA = 2


def limit_threads() -> None:
    """One intra-op thread per process: on 2 shared cores, torch's default thread pool is ~20x slower
    for these small matrices (measured), and sweeps parallelise over processes instead."""
    import torch

    torch.set_num_threads(1)


def parser(
    name: str, doc: str, full_seeds: Sequence[int], quick_seeds: Sequence[int]
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"experiments/{name}.py", description=doc)
    p.add_argument("--quick", action="store_true", help="small configuration (a few minutes on 2 cores)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"run seeds (default: {' '.join(map(str, full_seeds))}; "
                        f"with --quick {' '.join(map(str, quick_seeds))})")
    p.set_defaults(_seeds=(list(full_seeds), list(quick_seeds)))
    p.add_argument(
        "--out", default=None, help=f"output directory (default: experiments/results/{name}/<mode>)",
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the units on a Dask cluster (scheduler address, e.g. tcp://host:8786), one "
                        "task per unit on its workers; --out must then be on a path every worker sees")
    p.add_argument("--fresh", action="store_true",
                   help="delete this mode's run directories first (no resuming from earlier runs)")
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = args._seeds[1] if args.quick else args._seeds[0]
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        p.error(f"--seeds must be distinct integers >= 0, got {args.seeds}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def out_dir(name: str, args) -> Path:
    import shutil

    mode = "quick" if args.quick else "full"
    # absolute: the units (on Dask workers, in other working directories) write their runs under it
    path = Path(args.out).expanduser().resolve() if args.out else RESULTS / name / mode
    path.mkdir(parents=True, exist_ok=True)
    if getattr(args, "fresh", False):
        for sub in path.glob("runs*"):
            if sub.is_dir():
                shutil.rmtree(sub)
    return path


def parallel_map(fn, items: Sequence, *, jobs: int = 1, scheduler: str | None = None,
                 shared: str | Path | None = None) -> list:
    """``[fn(*item) for item in items]``, in order: in this process (``jobs == 1``), in ``jobs`` local
    processes (joblib/loky), or as one task per item on the Dask cluster at ``scheduler`` (every worker needs
    this checkout importable). ``shared``: the directory the units write into; with ``scheduler`` it must be
    an absolute path that every worker sees, checked before any unit starts."""
    items = list(items)
    if scheduler:
        return _on_cluster(fn, items, scheduler, shared)
    from joblib import Parallel, delayed

    if jobs == 1 or len(items) <= 1:
        return [fn(*it) for it in items]
    return _same_code(list(Parallel(n_jobs=jobs)(delayed(_unit)(fn, *it) for it in items)))


def _on_cluster(fn, items: list, scheduler: str, shared: str | Path | None) -> list:
    # Submitted to the cluster directly: joblib's dask backend resolves n_jobs=-1 to the cluster's thread
    # count and, for a cluster of one thread, ran every unit in this process instead
    try:
        from distributed import Client
    except ImportError as exc:  # an explicit request for a cluster is never run locally instead
        raise SystemExit(f"--scheduler needs the 'distributed' package: {exc}") from None
    if shared is not None and not Path(shared).is_absolute():
        raise ValueError(f"the units' output directory {str(shared)!r} is relative: a worker would resolve "
                         "it in its own working directory; give an absolute path")
    try:
        client = Client(scheduler, timeout=30, set_as_default=False)
    except OSError as exc:
        raise SystemExit(f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
    with client:
        if shared is not None:
            from netgeom.pruning.sweeps import _check_shared_dir

            _check_shared_dir(Path(shared), client, None, "--out")
        # pure=False: a unit writes its run directories, it is never deduplicated
        return _same_code(client.gather([client.submit(_unit, fn, *it, pure=False) for it in items]))


def code_identity() -> dict[str, Any]:
    """The code the units compute with: netgeom's sources and these scripts' (see
    ``netgeom.pruning.code_identity``); every run directory of an experiment records it, and reopening one
    written by other code is refused."""
    from netgeom.pruning import code_identity as identity

    return identity(ROOT / "experiments")


def _unit(fn, *args):
    """A unit run by a worker, returned with the identity of the code the worker ran."""
    return code_identity()["sources_sha256"], fn(*args)


def _same_code(tagged: list) -> list:
    mine = code_identity()["sources_sha256"]
    other = sorted({sha for sha, _ in tagged if sha != mine})
    if other:
        raise RuntimeError(
            f"workers ran other code (sources sha256 {', '.join(s[:16] for s in other)}) than this process "
            f"({mine[:16]}), whose git state results.json records: run every worker on this checkout"
        )
    return [r for _, r in tagged]


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
    # results written by an earlier script of the same run_all are not code: they do not make a run dirty
    status = _git("status", "--porcelain", "--", "netgeom", "experiments", ":!experiments/results")
    return {
        "schema": SCHEMA,
        "experiment": experiment,
        "mode": "quick" if args.quick else "full",
        "git_commit": _git("rev-parse", "HEAD"),
        # uncommitted changes to the library or the scripts make the commit an incomplete description
        "git_dirty": bool(status) if status is not None else None,
        # what the units' run directories record (netgeom.pruning.code_identity of netgeom + experiments)
        "sources_sha256": code_identity()["sources_sha256"],
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


def cluster_bootstrap(groups: Sequence[Sequence], stat, *, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap over independent units: ``groups[i]`` holds every observation of unit ``i``;
    a resample draws units with replacement and ``stat(list_of_groups)`` is recomputed on it. Resamples
    where ``stat`` is not finite (e.g. a constant variable has no rank correlation) are skipped and counted.
    ``stat="mean"`` is the mean of every observation of the drawn units, ``np.mean`` of their concatenation.
    """
    groups = [list(g) for g in groups]
    if not groups:
        raise ValueError("cluster_bootstrap needs at least one unit")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    if isinstance(stat, str) and stat != "mean":
        raise ValueError(f"stat must be a callable or 'mean', got {stat!r}")
    if stat == "mean" and all(len(g) == 1 for g in groups):
        # one observation per unit: all resamples at once. A row mean of a C-ordered array sums the row
        # pairwise like np.mean of the row alone, so the values are those of the loop below, bit for bit
        vals = np.array([g[0] for g in groups], dtype=float)[idx].mean(axis=1)
    elif stat == "mean":
        vals = np.array([np.mean([x for i in row for x in groups[i]]) for row in idx], dtype=float)
    else:
        vals = np.array([stat([groups[i] for i in row]) for row in idx], dtype=float)
    ok = vals[np.isfinite(vals)]
    a = (1 - level) / 2
    ci = [float(np.quantile(ok, a)), float(np.quantile(ok, 1 - a))] if ok.size else [None, None]
    return {"ci": ci, "level": level, "n_units": len(groups), "n_boot": n_boot,
            "n_boot_skipped": int(n_boot - ok.size)}


def savefig(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
