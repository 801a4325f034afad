"""Command line: ``netgeom demo | imp | read | bounds | regions | id | persistence``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
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


def _read(args: argparse.Namespace) -> int:
    from .pruning.imp import _print_result, read_run

    _print_result(read_run(args.run_dir, partial=args.partial), args.json)
    return 0


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


# what each real data set's loader does to the pixels (the flag --raw turns off, its text with and without)
_PREPROCESSING = {
    "digits": ("standardize", "pixel values / 16, standardised per feature with the training split's mean "
               "and std", "pixel values / 16, not standardised"),
    "mnist": ("normalize", "pixel values / 255, standardised with the training split's overall mean and std",
              "pixel values / 255, not standardised"),
    "fashion_mnist": ("normalize", "pixel values / 255, standardised with the training split's overall mean "
                      "and std", "pixel values / 255, not standardised"),
    "cifar10": ("normalize", "pixel values / 255, standardised per feature with the training split's mean "
                "and std", "pixel values / 255, not standardised"),
}


def _id(args: argparse.Namespace) -> int:
    import torch

    from .data.datasets import load_dataset
    from .dimension import intrinsic_dimension

    if args.data in ("mnist", "fashion_mnist", "cifar10") and not args.root:
        raise UsageError(f"data set {args.data!r} is read from a directory: pass --root DIR")
    if args.root and args.data not in ("mnist", "fashion_mnist", "cifar10"):
        raise UsageError(f"--root is only for mnist, fashion_mnist and cifar10, not for {args.data!r}")
    if args.method == "twonn" and args.k is not None:
        raise UsageError("--k is not used by --method twonn (it uses two neighbours); leave it out")
    if args.raw and args.data not in _PREPROCESSING:
        raise UsageError(f"--raw: {args.data!r} is measured as generated; it has no standardisation to undo")
    desc = {"name": args.data, **({"root": args.root} if args.root else {})}
    if args.data in _PREPROCESSING:
        desc[_PREPROCESSING[args.data][0]] = not args.raw
    ds = load_dataset(desc).flat()
    X = {"train": ds.X_train, "test": ds.X_test, "all": torch.cat([ds.X_train, ds.X_test])}[args.split]
    kw = {} if args.k is None else {"k": args.k}
    res = intrinsic_dimension(X.numpy(), method=args.method, **kw)
    prep = _PREPROCESSING.get(args.data)
    data = {
        "name": args.data,
        "split": args.split,
        "n_samples": len(X),
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "preprocessing": "as generated" if prep is None else prep[2 if args.raw else 1],
        "loader": ds.meta,
    }
    out = {
        "data": args.data,
        "method": args.method,
        "k": res.k,
        "n": res.n_used,
        "n_dropped": res.n_dropped,
        "dimension": res.dimension,
        "data_description": data,
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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, unless its help text states it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``netgeom CMD: error: ...``) instead of usage + exit."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def add_argument(self, *args, **kwargs):
        # an option without a help text would show no default in --help
        default = kwargs.get("default")
        if kwargs.get("help") is None and not any(default is v for v in (None, False, argparse.SUPPRESS)):
            kwargs["help"] = "(default: %(default)s)"
        return super().add_argument(*args, **kwargs)


def cli_parser(prog: str, description: str | None = None, **kw) -> argparse.ArgumentParser:
    """The parser every netgeom command uses: defaults and choices in ``--help``, one-line errors."""
    return _Parser(prog=prog, description=description, formatter_class=_HelpFormatter, **kw)


def device_option(text: str):
    """``--device`` value checked once (an unknown or absent device is a usage error naming the option)."""
    from ._validation import check_device

    try:
        return str(check_device(text, "--device"))
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def widths_option(text: str) -> list[int]:
    """``--widths 100,100`` as a list of positive integers; the error names the option."""
    from ._validation import parse_int_list

    try:
        return parse_int_list(text, "--widths")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _seed(text: str) -> int:
    # torch and numpy take different ranges (a negative seed, or one past 2**63, fails deep inside them)
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"a seed lies in [0, 2**63), got {v}")
    return v


def _density(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(v) and 0 < v <= 1):
        raise argparse.ArgumentTypeError(f"a density lies in (0, 1], got {text}")
    return v


def check_mlp_memory(widths: list[int], n_out: int, what: str) -> None:
    """Refuse an MLP whose training memory would exceed what the machine has, before allocating it."""
    from ._validation import check_memory, mlp_bytes

    check_memory(mlp_bytes(widths[0], widths[1:], n_out), f"an MLP of widths {widths} ({what})",
                 hint="choose smaller widths")


def _user_errors() -> tuple[type[BaseException], ...]:
    from .pruning.runs import RunInUseError

    # OSError covers FileExistsError, PermissionError, NotADirectoryError, gzip.BadGzipFile; data files and
    # run files that do not parse raise ValueError subclasses naming the file
    return (ValueError, TypeError, KeyError, OSError, MemoryError, FloatingPointError, RunInUseError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a user error is printed as one line naming its cause (``--debug``: the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    cmd = argv[0] if argv and not argv[0].startswith("-") else ""
    prog = f"netgeom {cmd}" if cmd else "netgeom"

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # e.g. "run X is in use by process N; waiting": one line, like the errors
        print(f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = show_warning
            return _main(argv)
    except Exception as exc:
        if debug or not isinstance(exc, _user_errors()):
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        msg = " ".join(str(msg).split())  # one line, whatever the message
        print(f"{prog}: error: {msg}  (--debug for the traceback)", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "imp":
        return _imp(argv[1:])
    p = cli_parser("netgeom", __doc__, epilog="--debug anywhere shows the traceback of an error")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    d = add("demo", "train, prune and analyse a small MLP; write runs/demo/report.md")
    d.add_argument("--out", default="runs/demo", help="output directory")
    d.add_argument("--seed", type=_seed, default=0, help="seed of data, initialisation and pruning")
    d.add_argument("--full", action="store_true", help="larger data and longer training")
    d.add_argument("--sections", nargs="+", default=None, choices=_section_names(), metavar="NAME",
                   help=f"only these report sections, of {', '.join(_section_names())} (default: all)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)

    add("imp", "iterative magnitude pruning run (see `netgeom imp --help`)")

    rr = add("read", "show a finished IMP run directory read-only, with the code that computed it")
    rr.add_argument("run_dir", help="the run directory, e.g. runs/imp/imp-0123456789ab")
    rr.add_argument("--partial", action="store_true", help="show the finished levels of an unfinished run")
    rr.add_argument("--json", action="store_true", help="print the result as JSON")
    rr.set_defaults(func=_read)

    b = add("bounds", "Serra / sparse region bounds for widths n0 n1 … nL")
    b.add_argument("widths", type=_positive_int, nargs="+", help="input dimension, then hidden widths")
    b.add_argument("--densities", type=_density, nargs="+", default=None,
                   help="kept fraction of each hidden layer's weights (one value: every layer)")
    b.set_defaults(func=_bounds)

    r = add("regions", "exact regions of a random MLP n0-n1-…-nL on a random 2-D slice")
    r.add_argument("widths", type=_positive_int, nargs="+", help="input dimension, then hidden widths")
    r.add_argument("--seed", type=_seed, default=0, help="seed of the network and the slice")
    r.add_argument(
        "--radius", type=float, default=3.0, help="half-width of the (u, v) box; 'inf': the whole plane"
    )
    r.set_defaults(func=_regions)

    i = add("id", "intrinsic dimension of a data set")
    i.description = (
        "Intrinsic dimension of a data set's samples, each flattened to a vector. By default it measures the "
        "training split as loaded (digits: 75 % of the 1,797 images, standardised per feature; mnist, "
        "fashion_mnist, cifar10: standardised); --split and --raw change what is measured, and the JSON's "
        "data_description says what was. Exact duplicate samples are dropped first (n_dropped)."
    )
    i.add_argument("data", choices=_data_names(), help="data set")
    i.add_argument("--split", default="train", choices=("train", "test", "all"),
                   help="which samples: the training split, the test split or both")
    i.add_argument("--raw", action="store_true",
                   help="without the loader's standardisation (digits, mnist, fashion_mnist, cifar10)")
    i.add_argument("--root", default=None, help="directory for mnist, fashion_mnist and cifar10")
    i.add_argument("--method", default="mle", choices=("mle", "twonn", "lpca"), help="estimator")
    i.add_argument("--k", type=_positive_int, default=None,
                   help="neighbours for mle and lpca (default 20); not for twonn, which uses two")
    i.set_defaults(func=_id)

    t = add("persistence", "topology-preserving pruning bound for widths n0 n1 … nL")
    t.add_argument("widths", type=_positive_int, nargs="+", help="layer widths, input first")
    t.set_defaults(func=_persistence)

    args = p.parse_args(argv)
    if args.cmd == "regions" and len(args.widths) >= 2:
        check_mlp_memory(args.widths, 1, "regions")  # refused before anything is allocated
    return int(args.func(args) or 0)


def _section_names() -> list[str]:
    from .report import SECTIONS

    return [name for name, _ in SECTIONS]


def _data_names() -> list[str]:
    import inspect

    from .data.datasets import DATASET_NAMES
    from .data.synthetic import GENERATORS

    # only generators that run without arguments: the command has no option to pass, e.g., a dimension
    def no_required(f) -> bool:
        return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in inspect.signature(f).parameters.values())

    return [*DATASET_NAMES, *sorted(k for k, f in GENERATORS.items() if no_required(f))]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
