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
    if not widths:
        raise UsageError("give the input dimension and at least one hidden width, e.g. `bounds 40 100 100`")
    out = {"n0": n0, "widths": widths, "serra_log10": _log10(serra_bound(n0, widths))}
    if args.densities:
        dens = args.densities * len(widths) if len(args.densities) == 1 else args.densities
        if len(dens) != len(widths):
            raise UsageError(
                f"--densities takes one value or one per hidden layer ({len(widths)}), got {len(dens)}"
            )
        out["densities"] = dens
        out["sparse_log10"] = sparse_bound(n0, widths, dens).log10
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
        raise UsageError("give the input dimension and at least one hidden width, e.g. `regions 10 50 50`")
    net = mlp(n0, widths, 1, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    # a random plane through the origin, spanned by two orthonormal directions
    q, _ = np.linalg.qr(rng.standard_normal((n0, 2))) if n0 >= 2 else (None, None)
    if q is None:
        raise UsageError("a 2-D slice needs an input dimension of at least 2")
    if not args.radius > 0:
        raise UsageError(f"--radius must be positive (or inf for the whole plane), got {args.radius}")
    r = args.radius if np.isfinite(args.radius) else None  # None: the whole plane, exactly
    res = regions_on_slice(net, np.zeros(n0), q[:, 0], q[:, 1], box=None if r is None else (-r, r, -r, r))
    out = {
        "n0": n0,
        "widths": widths,
        "seed": args.seed,
        "box_radius": r if r is not None else res.box[1],
        "whole_plane": r is None,
        "regions_on_slice": res.count,
        "serra_log10": int_log10(serra_bound(n0, widths)),
    }
    print(json.dumps(out, indent=2))
    return 0


def _id(args: argparse.Namespace) -> int:
    from .data.datasets import load_dataset
    from .dimension import intrinsic_dimension

    if args.data in ("mnist", "fashion_mnist", "cifar10") and not args.root:
        raise UsageError(f"data set {args.data!r} is read from a directory: pass --root DIR")
    ds = load_dataset({"name": args.data, **({"root": args.root} if args.root else {})}).flat()
    kw = {} if args.method == "twonn" else {"k": args.k}  # TwoNN uses the two nearest neighbours only
    res = intrinsic_dimension(ds.X_train.numpy(), method=args.method, **kw)
    out = {
        "data": args.data,
        "method": args.method,
        "k": kw.get("k"),
        "n": res.n_used,
        "dimension": res.dimension,
    }
    print(json.dumps(out, indent=2))
    return 0


def _persistence(args: argparse.Namespace) -> int:
    from .topology import topology_bound

    if len(args.widths) < 2:
        raise UsageError("give at least two layer widths, e.g. `persistence 784 300 100 10`")
    print(topology_bound(args.widths).to_json())
    return 0


class UsageError(ValueError):
    """A command-line argument the command cannot use."""


# Errors a user can fix from the command line: reported in one line, without a traceback (--debug shows it).
_USER_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return _main(argv)
    except _USER_ERRORS as exc:
        if debug:
            raise
        cmd = argv[0] if argv else ""
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"netgeom {cmd}: error: {msg}  (--debug for the traceback)", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "imp":
        return _imp(argv[1:])
    p = argparse.ArgumentParser(
        prog="netgeom", description=__doc__, epilog="--debug anywhere shows the traceback of an error"
    )
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
    r.add_argument(
        "--radius", type=float, default=3.0, help="half-width of the (u, v) box; 'inf': the whole plane"
    )
    r.set_defaults(func=_regions)

    i = sub.add_parser("id", help="intrinsic dimension of a data set")
    i.add_argument("data", help="digits | mnist1d | mnist | …")
    i.add_argument("--root", default=None, help="directory for file-based data sets")
    i.add_argument("--method", default="mle")
    i.add_argument("--k", type=int, default=20, help="neighbours for MLE (TwoNN always uses two)")
    i.set_defaults(func=_id)

    t = sub.add_parser("persistence", help="topology-preserving pruning bound for widths n0 n1 … nL")
    t.add_argument("widths", type=int, nargs="+")
    t.set_defaults(func=_persistence)

    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
