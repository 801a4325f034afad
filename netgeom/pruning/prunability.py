"""Prunability (Ankner et al.): the largest sparsity whose test accuracy is not worse than the dense one's.

``prunability(runs, eps)`` reads the accuracy-vs-sparsity curve of one or several IMP runs (one per seed,
same configuration) and returns the largest sparsity ``s`` with ``mean_acc(s) >= mean_acc(0) - eps``. The
largest such sparsity is taken over the whole curve (the curve need not be monotone).

Default ``eps`` (documented choice): with one seed ``eps = 0``; with ``n >= 2`` seeds ``eps`` is one standard
error of the dense accuracy over seeds, ``std(acc_0, ddof=1) / sqrt(n)`` -- a level counts as "not worse"
when it is within the seed-to-seed noise of the dense network.

>>> from types import SimpleNamespace as L
>>> levels = [L(sparsity=0.0, test_acc=0.90), L(sparsity=0.2, test_acc=0.91), L(sparsity=0.36, test_acc=0.89)]
>>> prunability(levels).prunability
0.2
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..results import Result, new_axes

__all__ = ["PrunabilityResult", "prunability"]


@dataclasses.dataclass
class PrunabilityResult(Result):
    """``prunability``: the largest sparsity meeting ``acc >= dense_acc - eps``; ``level``: its index.

    The curve it was read from: ``sparsity`` (per level; the runs agree on it), ``mean_acc``, ``se_acc``
    (standard error over seeds, 0 with one seed), ``n_seeds``. ``censored``: the last level still met the
    threshold (or there is only the dense one), so the curve never fell below ``dense − eps`` and the
    network's prunability is at least ``prunability``, not equal to it.
    """

    prunability: float
    level: int
    eps: float
    dense_acc: float
    threshold: float
    n_seeds: int
    sparsity: list[float]
    mean_acc: list[float]
    se_acc: list[float]
    censored: bool = False

    def plot(self, ax=None):
        fig, ax = new_axes(ax)
        s = 100 * np.asarray(self.sparsity)
        ax.errorbar(s, self.mean_acc, yerr=self.se_acc if self.n_seeds > 1 else None, fmt="o-", label="test")
        ax.axhline(self.threshold, color="gray", ls=":", label=f"dense − ε (ε={self.eps:.3g})")
        pct = 100 * self.prunability
        ax.axvline(pct, color="C3", ls="--", label=f"prunability {pct:.1f}%")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize="small")
        return ax


def _get(rec: Any, key: str) -> float:
    v = rec.get(key) if isinstance(rec, Mapping) else getattr(rec, key, None)
    if v is None:
        raise TypeError(f"a level record needs '{key}', got {type(rec).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"level record has non-finite {key}: {v}")
    return v


def _as_runs(levels_or_results) -> list[list[Any]]:
    if hasattr(levels_or_results, "levels"):
        return [list(levels_or_results.levels)]
    if not isinstance(levels_or_results, Sequence) or isinstance(levels_or_results, str):
        raise TypeError(
            "prunability takes an IMPResult, a list of IMPResults (one per seed), a list of level records, "
            f"or a list of such lists; got {type(levels_or_results).__name__}"
        )
    items = list(levels_or_results)
    if not items:
        raise ValueError("prunability needs at least one level")
    if all(hasattr(x, "levels") for x in items):
        return [list(x.levels) for x in items]
    if all(isinstance(x, Sequence) and not isinstance(x, (str, Mapping)) for x in items):
        return [list(x) for x in items]
    return [items]


def prunability(levels_or_results, eps: float | None = None) -> PrunabilityResult:
    """Prunability of one run (list of levels / an ``IMPResult``) or of several seeds (a list of them).

    Every run must have the same number of levels, the first being dense (sparsity 0). See the module
    docstring for the default ``eps``.
    """
    runs = _as_runs(levels_or_results)
    n_levels = {len(r) for r in runs}
    if len(n_levels) != 1:
        raise ValueError(f"runs have different numbers of levels {sorted(n_levels)}; finish or trim them")
    if 0 in n_levels:
        raise ValueError("prunability needs at least one level per run")
    sp = np.array([[_get(lv, "sparsity") for lv in r] for r in runs])
    acc = np.array([[_get(lv, "test_acc") for lv in r] for r in runs])
    if np.any((acc < 0.0) | (acc > 1.0)):
        bad = sorted(set(acc[(acc < 0.0) | (acc > 1.0)].tolist()))[:3]
        raise ValueError(f"test_acc must be a fraction in [0, 1] (not a percentage), got {bad}")
    if np.any((sp < 0.0) | (sp >= 1.0)):
        raise ValueError(f"level sparsities must lie in [0, 1), got {sorted(set(sp[(sp < 0) | (sp >= 1)]))}")
    if np.any(sp[:, 0] != 0.0):
        raise ValueError(f"the first level of every run must be dense (sparsity 0), got {sp[:, 0].tolist()}")
    if np.ptp(sp, axis=0).max() > 1e-6:
        raise ValueError("runs disagree on the sparsity of a level; pass runs of one configuration")
    n = len(runs)
    mean = acc.mean(axis=0)
    se = acc.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.zeros(acc.shape[1])
    if eps is None:
        eps = float(se[0])
    else:
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
            raise TypeError(f"eps must be a number (accuracy units), got {type(eps).__name__} {eps!r}")
        eps = float(eps)
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    threshold = float(mean[0] - eps)
    s = sp[0]  # (the runs agree to 1e-6: the first run's own values, not a mean that rounds 0.2 off)
    ok = np.flatnonzero(mean >= threshold - 1e-12)  # level 0 always qualifies
    best = int(ok[np.argmax(s[ok])])
    return PrunabilityResult(
        prunability=float(s[best]), level=best, eps=eps, dense_acc=float(mean[0]), threshold=threshold,
        n_seeds=n, sparsity=s.tolist(), mean_acc=mean.tolist(), se_acc=se.tolist(),
        censored=bool(mean[-1] >= threshold - 1e-12),
    )
