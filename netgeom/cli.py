"""Command line: ``netgeom demo | imp | bounds | regions | id | persistence``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from .report import run_demo

    path = run_demo(
        args.out, seed=args.seed, quick=not args.full, sections=args.sections, verbose=not args.quiet
    )
    print(f"wrote {path}")
    return 0


def _imp(argv: Sequence[str]) -> int:
    from .pruning.imp import imp_main

    return int(imp_main(list(argv)) or 0)


def _bounds(args: argparse.Namespace) -> int:
    from .regions.bounds import serra_bound, sparse_bound

    n0, widths = args.widths[0], args.widths[1:]
    out = {"n0": n0, "widths": widths, "serra_log10": _log10(serra_bound(n0, widths))}
    if args.densities:
        out["sparse_log10"] = sparse_bound(n0, widths, args.densities).log10
    print(json.dumps(out, indent=2))
    return 0


def _log10(n: int) -> float:
    from .regions.bounds import int_log10

    return int_log10(n)


def _regions(args: argparse.Namespace) -> int:
    import numpy as np

    from .nets import mlp
    from .regions import regions_on_slice, serra_bound
    from .regions.bounds import int_log10

    n0, widths = args.widths[0], args.widths[1:]
    if not widths:
        raise SystemExit("netgeom regions: give the input dimension and at least one hidden width")
    net = mlp(n0, widths, 1, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    # a random plane through the origin, spanned by two orthonormal directions
    q, _ = np.linalg.qr(rng.standard_normal((n0, 2))) if n0 >= 2 else (None, None)
    if q is None:
        raise SystemExit("netgeom regions: a 2-D slice needs an input dimension of at least 2")
    r = args.radius
    res = regions_on_slice(net, np.zeros(n0), q[:, 0], q[:, 1], box=(-r, r, -r, r))
    out = {
        "n0": n0, "widths": widths, "seed": args.seed, "box_radius": r,
        "regions_on_slice": res.count, "serra_log10": int_log10(serra_bound(n0, widths)),
    }
    print(json.dumps(out, indent=2))
    return 0


def _id(args: argparse.Namespace) -> int:
    from .data.datasets import load_dataset
    from .dimension import intrinsic_dimension

    ds = load_dataset({"name": args.data, **({"root": args.root} if args.root else {})}).flat()
    res = intrinsic_dimension(ds.X_train.numpy(), method=args.method, k=args.k)
    print(
        json.dumps(
            {"data": args.data, "method": args.method, "k": args.k, "dimension": res.dimension}, indent=2
        )
    )
    return 0


def _persistence(args: argparse.Namespace) -> int:
    from .topology import topology_bound

    print(topology_bound(args.widths).to_json())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "imp":
        return _imp(argv[1:])
    p = argparse.ArgumentParser(prog="netgeom", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="train, prune and analyse a small MLP; write runs/demo/report.md")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--full", action="store_true", help="larger data and longer training")
    d.add_argument("--sections", nargs="*", default=None, help="only these report sections")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)

    sub.add_parser("imp", help="iterative magnitude pruning run (see `netgeom imp --help`)")

    b = sub.add_parser("bounds", help="Serra / sparse region bounds for widths n0 n1 … nL")
    b.add_argument("widths", type=int, nargs="+")
    b.add_argument("--densities", type=float, nargs="*", default=None)
    b.set_defaults(func=_bounds)

    r = sub.add_parser("regions", help="exact regions of a random MLP n0-n1-…-nL on a random 2-D slice")
    r.add_argument("widths", type=int, nargs="+")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--radius", type=float, default=3.0, help="half-width of the (u, v) box")
    r.set_defaults(func=_regions)

    i = sub.add_parser("id", help="intrinsic dimension of a data set")
    i.add_argument("data", help="digits | mnist1d | mnist | …")
    i.add_argument("--root", default=None, help="directory for file-based data sets")
    i.add_argument("--method", default="mle")
    i.add_argument("--k", type=int, default=20)
    i.set_defaults(func=_id)

    t = sub.add_parser("persistence", help="topology-preserving pruning bound for widths n0 n1 … nL")
    t.add_argument("widths", type=int, nargs="+")
    t.set_defaults(func=_persistence)

    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
