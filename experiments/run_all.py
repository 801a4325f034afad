"""Run the three finding experiments, then write the README results table and the notebooks.

    python experiments/run_all.py --quick            # all three in quick mode from scratch (pipeline check)
    python experiments/run_all.py --jobs 2           # all three in full mode (resumes from <out>/runs)

Refuses to start from a tree with uncommitted changes under ``netgeom/`` or ``experiments/`` (outside
``experiments/results/``): results must name the code they came from (``--allow-dirty`` for trying things
out; such results are refused by ``make_results.py`` in full mode and by the tests). Quick mode always starts
afresh (``--fresh``) so that a changed library is never read from earlier run directories. Prints the wall
time of every step.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from experiments import _common as C  # noqa: E402

SCRIPTS = ("prunability_vs_dimension", "regions_vs_sparsity", "topology_under_imp")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="quick mode (minutes), always from scratch")
    p.add_argument("--jobs", type=int, default=2, help="worker processes per experiment (default 2)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler address")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS), help="experiments to run")
    p.add_argument("--allow-dirty", action="store_true", help="run even with uncommitted code changes")
    p.add_argument("--compare-committed", action="store_true",
                   help="afterwards, check that every number (all but the description) equals the committed "
                        "results.json of the same mode (exit 1 if not)")
    args = p.parse_args(argv)
    status = C._git("status", "--porcelain", "--", "netgeom", "experiments", ":!experiments/results")
    if status and not args.allow_dirty:
        print("run_all: uncommitted changes under netgeom/ or experiments/ -- commit first (results must "
              f"name their code), or pass --allow-dirty:\n{status}", file=sys.stderr)
        return 2
    times = {}
    for name in args.only:
        cmd = [sys.executable, str(ROOT / "experiments" / f"{name}.py"), "--jobs", str(args.jobs)]
        if args.quick:
            cmd += ["--quick", "--fresh"]
        if args.scheduler:
            cmd += ["--scheduler", args.scheduler]
        print("$", " ".join(cmd), flush=True)
        t = time.time()
        subprocess.run(cmd, check=True, cwd=ROOT)
        times[name] = time.time() - t
        print(f"{name}: {times[name]:.0f} s", flush=True)
    for step in ("make_results", "make_notebooks"):
        t = time.time()
        subprocess.run([sys.executable, str(ROOT / "experiments" / f"{step}.py")], check=True, cwd=ROOT)
        times[step] = time.time() - t
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items())
          + f"; total {sum(times.values()):.0f} s")
    if args.compare_committed:
        return compare_committed(args.only, "quick" if args.quick else "full")
    return 0


def compare_committed(names, mode: str) -> int:
    """Whether the fresh results equal the committed ones, description (commit, timing) aside."""
    import json

    bad = 0
    for name in names:
        rel = f"experiments/results/{name}/{mode}/results.json"
        old = C._git("show", f"HEAD:{rel}")
        if old is None:
            print(f"{rel}: nothing committed to compare with")
            bad += 1
            continue
        a, b = json.loads(old), json.loads((ROOT / rel).read_text())
        a.pop("description")
        b.pop("description")
        same = a == b
        bad += not same
        verdict = "numbers identical to the committed ones" if same else "DIFFERS from the committed one"
        print(f"{rel}: {verdict}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
