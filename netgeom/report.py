"""The demo report: a small end-to-end analysis of one network before and after pruning.

The report is a list of sections; a section is one function ``section(ctx) -> str`` that returns Markdown and
writes its plots into ``ctx.out_dir``. Each analysis module owns its section (``demo_section``), so adding an
analysis to the report is adding one entry to :data:`SECTIONS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._validation import check_bool
from .data.datasets import Dataset, load_mnist1d
from .pruning.masks import Masks

__all__ = ["DemoContext", "SECTIONS", "run_demo", "overview_section"]


@dataclasses.dataclass
class DemoContext:
    """What every report section may read. Models are in eval mode; ``pruned_model`` has ``masks`` applied.
    ``verbose`` is what a section passes to the progress bars of the analyses it calls."""

    data: Dataset
    model: nn.Module
    pruned_model: nn.Module
    masks: Masks
    imp_levels: list[Any]
    out_dir: Path
    seed: int
    quick: bool = True
    verbose: bool = True
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def savefig(self, fig, name: str) -> str:
        """Save a matplotlib figure into the report folder and return the Markdown image link."""
        import matplotlib.pyplot as plt

        path = self.out_dir / name
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return f"![{Path(name).stem}]({name})"


def overview_section(ctx: DemoContext) -> str:
    """Data, network and the dense/pruned accuracies."""
    from .nets import affine_layers, layer_widths
    from .training import evaluate

    widths = layer_widths(affine_layers(ctx.model))
    d = ctx.data
    dense_loss, dense_acc = evaluate(ctx.model, d.X_test, d.y_test)
    pruned_loss, pruned_acc = evaluate(ctx.pruned_model, d.X_test, d.y_test)
    rows = [
        "| | dense | pruned |",
        "|---|---|---|",
        f"| test accuracy | {dense_acc:.4f} | {pruned_acc:.4f} |",
        f"| test loss | {dense_loss:.4f} | {pruned_loss:.4f} |",
        f"| density (prunable weights) | 1.0000 | {ctx.masks.density():.4f} |",
    ]
    return "\n".join(
        [
            "## Network and data",
            f"Data: **{d.name}**, {d.n_train} training / {d.n_test} test samples, {d.n_features} features, "
            f"{d.n_classes} classes (seed {ctx.seed}).",
            f"Network: MLP with widths {'-'.join(map(str, widths))} (ReLU).",
            "",
            *rows,
        ]
    )


# (title, "module:function") — resolved lazily so that a report is only as heavy as its sections.
SECTIONS: list[tuple[str, str]] = [
    ("overview", "netgeom.report:overview_section"),
    ("pruning", "netgeom.pruning.imp:demo_section"),
    ("bounds", "netgeom.regions.bounds:demo_section"),
    ("regions", "netgeom.regions.exact:demo_section"),
    ("dimension", "netgeom.dimension.representations:demo_section"),
    ("topology", "netgeom.topology.measures:demo_section"),
]


def _resolve(spec: str) -> Callable[[DemoContext], str]:
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    seed: int = 0,
    quick: bool = True,
    sections: Sequence[str] | None = None,
    verbose: bool = True,
) -> Path:
    """Train a small MLP on MNIST-1D, prune it with a short IMP run, and write ``out_dir/report.md``.

    Returns the path of the report. Every section's plots are PNG files beside it; ``summary.json`` records
    the versions, seed and the time each section took. ``sections`` names some of :data:`SECTIONS` (default:
    all; an empty or unknown name is an error before any training); ``verbose`` reaches every section.

    Example (what ``netgeom demo`` and ``make demo`` run; about 10 s)::

        run_demo("runs/demo", seed=0)   # -> PosixPath('runs/demo/report.md')
    """
    from .pruning.imp import demo_imp

    quick, verbose = check_bool(quick, "quick"), check_bool(verbose, "verbose")
    known = [s[0] for s in SECTIONS]
    if sections is not None:
        # checked before the training: an empty or misspelt list would cost the whole run for nothing
        if isinstance(sections, str):
            raise TypeError(f"sections must be a list of names from {known}, got the string {sections!r}")
        sections = list(sections)
        if not all(isinstance(s, str) for s in sections):
            raise TypeError(f"sections must be a list of section names from {known}, got {sections!r}")
        if not sections:
            raise ValueError(f"no report sections named; name some of {known}, or leave sections out for all")
    chosen = [s for s in SECTIONS if sections is None or s[0] in sections]
    unknown = set(sections or ()) - set(known)
    if unknown:
        raise ValueError(f"unknown report section(s) {sorted(unknown)}; known: {known}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_mnist1d(seed=seed, num_samples=4000 if quick else 10000)
    dense, pruned, masks, levels = demo_imp(
        data, seed=seed, out_dir=out / "imp", quick=quick, verbose=verbose
    )
    ctx = DemoContext(
        data=data,
        model=dense.eval(),
        pruned_model=pruned.eval(),
        masks=masks,
        imp_levels=list(levels),
        out_dir=out,
        seed=seed,
        quick=quick,
        verbose=verbose,
    )
    ctx.timings["train_and_prune"] = time.perf_counter() - t0
    parts = [
        "# netgeom demo report",
        "",
        "A 2-hidden-layer ReLU MLP trained on MNIST-1D, then pruned by iterative magnitude pruning; each "
        "section below is one netgeom analysis of the dense and the pruned network.",
    ]
    for name, spec in chosen:
        t = time.perf_counter()
        parts += ["", _resolve(spec)(ctx).strip()]
        ctx.timings[name] = time.perf_counter() - t
    total = time.perf_counter() - t0
    parts += [
        "",
        "## Run",
        f"netgeom {_version()}, torch {torch.__version__}, Python {platform.python_version()}; seed {seed}; "
        f"{'quick' if quick else 'full'} mode; total {total:.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in ctx.timings.items())}).",
    ]
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    (out / "summary.json").write_text(
        json.dumps(
            {"seed": seed, "quick": quick, "timings_s": ctx.timings, "torch": torch.__version__}, indent=2
        )
    )
    return report


def _version() -> str:
    from . import __version__

    return __version__
