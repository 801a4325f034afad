"""Intrinsic dimension as a function of scale: MLE / lPCA over a range of ``k``, TwoNN under decimation.

An estimate depends on the scale it looks at: noise inflates it at small scales, curvature and boundaries
bend it at large ones. A plateau over a range of scales is the evidence that a dimension is meaningful
(Facco et al. 2017, Sec. "Scale dependence"). Two probes, both on the same de-duplicated points:

* **k-sweep** (MLE, and lPCA if asked): one exact kNN graph of ``k_max = max(ks)`` is computed and every
  ``k`` reuses its first ``k`` columns, so ``mle[i]`` is exactly ``MLE(k=ks[i]).fit(X).dimension_``. The
  scale of a ``k`` is the median distance to the k-th neighbour.
* **decimation** (TwoNN, Facco et al.): at level ``j = 0 … halvings`` a seeded random permutation splits the
  points into ``2^j`` disjoint subsets of ``n // 2^j`` points (the ``n mod 2^j`` left over are unused); TwoNN
  is fitted on each and the estimates averaged (their standard deviation is reported). Halving the sample
  roughly multiplies neighbour distances by ``2^{1/d}``, so smaller subsets probe larger scales. The scale of
  a level is the median second-neighbour distance over all its subsets. Level 0 is TwoNN on all points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from .._validation import as_generator, check_array, check_bool, check_choice, check_fraction, check_int
from ..results import Result, new_axes
from .estimators import _VARIANTS, MLE, LocalPCA, TwoNN, _check_graph_of, _check_knn_options, _check_reused
from .neighbors import NeighborGraph, nearest_neighbors

__all__ = ["ScaleSweepResult", "id_scale_sweep"]

_SWEEP_METHODS = ("mle", "twonn", "lpca")


@dataclasses.dataclass
class ScaleSweepResult(Result):
    """Intrinsic dimension against scale.

    ``ks`` with ``mle[i]`` / ``lpca[i]`` (global estimates at ``k = ks[i]``) and ``k_scale[i]`` (median
    distance to the ``ks[i]``-th neighbour); ``twonn_n[j]`` (subset size at level ``j``), ``twonn[j]`` (mean
    TwoNN over the ``2^j`` subsets), ``twonn_std[j]`` and ``twonn_scale[j]`` (median second-neighbour
    distance). Lists of methods not asked for are ``None``.
    """

    methods: tuple[str, ...]
    n_used: int
    n_dropped: int
    seed: int
    ks: list[int] | None = None
    k_scale: list[float] | None = None
    mle: list[float] | None = None
    lpca: list[float] | None = None
    twonn_n: list[int] | None = None
    twonn: list[float] | None = None
    twonn_std: list[float] | None = None
    twonn_scale: list[float] | None = None

    def plot(self, ax=None, x: str = "scale"):
        """ID against scale (``x="scale"``, log axis, every method on one axis), ``"k"`` or ``"n"``."""
        check_choice(x, "x", ("scale", "k", "n"))
        fig, ax = new_axes(ax)
        if x in ("scale", "k") and self.ks is not None:
            xs = self.k_scale if x == "scale" else self.ks
            if self.mle is not None:
                ax.plot(xs, self.mle, "o-", label="MLE (k sweep)")
            if self.lpca is not None:
                ax.plot(xs, self.lpca, "s-", label="lPCA (k sweep)")
        if x in ("scale", "n") and self.twonn is not None:
            xs = self.twonn_scale if x == "scale" else self.twonn_n
            ax.errorbar(xs, self.twonn, yerr=self.twonn_std, fmt="^-", capsize=3, label="TwoNN (decimation)")
        if x in ("scale", "n"):
            ax.set_xscale("log")
        ax.set_xlabel({"scale": "scale (median neighbour distance)", "k": "k", "n": "points per subset"}[x])
        ax.set_ylabel("intrinsic dimension")
        ax.set_title(f"ID vs scale (n = {self.n_used})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        return ax


def id_scale_sweep(
    X,
    ks: Iterable[int] | None = None,
    methods: str | Iterable[str] = ("mle", "twonn"),
    *,
    halvings: int | None = None,
    seed: int | None = None,
    variant: str | None = None,
    unbiased: bool | None = None,
    twonn_fit: str | None = None,
    discard_fraction: float | None = None,
    lpca_kw: dict | None = None,
    neighbors: NeighborGraph | None = None,
    duplicates: str = "drop",
    knn_method: str = "auto",
    device: str = "cpu",
    verbose: bool = False,
) -> ScaleSweepResult:
    """Intrinsic dimension of the rows of ``X`` across scales (see the module docstring).

    Parameters
    ----------
    ks : neighbourhood sizes for the MLE / lPCA sweep (each ``>= 2``; duplicates removed, sorted; default
        5, 10, 15, 20, 30, 40).
    methods : any of ``"mle"``, ``"twonn"``, ``"lpca"``.
    halvings : decimation levels after the full set (default 4; subsets down to ``n // 2^halvings`` points,
        which must be at least 20).
    seed : seeds the decimation's random partitions (default 0).
    variant, unbiased : passed to :class:`~netgeom.dimension.MLE` (defaults ``"levina_bickel"``, False).
    twonn_fit, discard_fraction : passed to :class:`~netgeom.dimension.TwoNN` (its ``fit`` and fraction;
        defaults ``"linear"``, 0.1).

    An option of a method not in ``methods`` (e.g. ``ks`` with ``methods="twonn"``) is an error, not
    ignored.
    lpca_kw : keyword arguments for :class:`~netgeom.dimension.LocalPCA` (``rule``, thresholds, …).
    neighbors : an existing kNN graph of this ``X`` with at least ``max(ks)`` neighbours (reused).
    duplicates, knn_method, device : passed to :func:`~netgeom.dimension.nearest_neighbors`.
    verbose : progress bar over the decimation subsets.

    Example
    -------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).uniform(size=(2000, 2)) @ np.random.default_rng(1).normal(size=(2, 10))
    >>> r = id_scale_sweep(X, ks=(10, 20), halvings=2)
    >>> [round(v) for v in r.mle + r.twonn]
    [2, 2, 2, 2, 2]
    """
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    if not methods:
        raise ValueError("methods must name at least one of " + ", ".join(_SWEEP_METHODS))
    for m in methods:
        check_choice(m, "methods", _SWEEP_METHODS)
    methods = tuple(dict.fromkeys(methods))
    # an option of a method that is not run would be silently ignored: refuse it instead
    unused = [
        nm
        for nm, value, users in (
            ("ks", ks, ("mle", "lpca")),
            ("variant", variant, ("mle",)),
            ("unbiased", unbiased, ("mle",)),
            ("halvings", halvings, ("twonn",)),
            ("twonn_fit", twonn_fit, ("twonn",)),
            ("discard_fraction", discard_fraction, ("twonn",)),
        )
        if value is not None and not set(users) & set(methods)
    ]
    if unused:
        raise ValueError(f"{unused} given, but no method that uses them is in methods={list(methods)}")
    ks = (5, 10, 15, 20, 30, 40) if ks is None else ks
    halvings = 4 if halvings is None else halvings
    seed = 0 if seed is None else seed
    variant = "levina_bickel" if variant is None else variant
    unbiased = False if unbiased is None else check_bool(unbiased, "unbiased")
    verbose = check_bool(verbose, "verbose")
    twonn_fit = "linear" if twonn_fit is None else twonn_fit
    discard_fraction = 0.1 if discard_fraction is None else discard_fraction
    seed = check_int(seed, "seed", minimum=0)
    check_choice(variant, "variant", _VARIANTS)
    check_choice(twonn_fit, "twonn_fit", ("linear", "mle"))
    check_fraction(discard_fraction, "discard_fraction", high_inclusive=False)
    _check_knn_options(knn_method, duplicates, device)
    if lpca_kw is not None and not isinstance(lpca_kw, dict):
        raise TypeError(f"lpca_kw must be a dict of LocalPCA arguments, got {type(lpca_kw).__name__}")
    if lpca_kw and "k" in lpca_kw:
        raise ValueError("lpca_kw must not set k: the sweep sets it from ks")
    if lpca_kw and "lpca" not in methods:
        raise ValueError("lpca_kw given but 'lpca' is not in methods")
    sweep_k = "mle" in methods or "lpca" in methods
    if sweep_k:
        if isinstance(ks, (str, bytes)) or not isinstance(ks, Iterable):
            raise TypeError(f"ks must be an iterable of integers, got {ks!r}")
        ks = sorted({check_int(k, "ks[i]", minimum=2) for k in ks})
        if not ks:
            raise ValueError("ks is empty; give at least one neighbourhood size")
        if unbiased and "mle" in methods and ks[0] < 3:
            raise ValueError(f"unbiased=True normalises by k - 2, so every k must be >= 3, got {ks[0]}")
    X = check_array(X, "X", ndim=2, dtype=np.float64)
    k_max = max(ks[-1] if sweep_k else 2, 2)
    if neighbors is None:
        neighbors = nearest_neighbors(X, k_max, duplicates=duplicates, method=knn_method, device=device)
    _check_reused(neighbors, duplicates)
    Xk = _check_graph_of(X, neighbors)
    if neighbors.k < k_max:
        raise ValueError(f"neighbors holds k={neighbors.k} neighbours but max(ks)={k_max} are needed")
    if (neighbors.distances[:, 0] <= 0).any():
        raise ValueError(
            "neighbors has zero first-neighbour distances (duplicates); build it with duplicates='drop'"
        )
    out = ScaleSweepResult(methods=methods, n_used=neighbors.n, n_dropped=neighbors.n_dropped, seed=seed)
    if sweep_k:
        out.ks = list(ks)
        out.k_scale = [float(np.median(neighbors.distances[:, k - 1])) for k in ks]
    if "mle" in methods:
        mle = [MLE(k=k, variant=variant, unbiased=unbiased).fit(neighbors=neighbors) for k in ks]
        out.mle = [e.dimension_ for e in mle]
    if "lpca" in methods:
        g_own = _as_retained(neighbors)
        out.lpca = [LocalPCA(k=k, **(lpca_kw or {})).fit(Xk, neighbors=g_own).dimension_ for k in ks]
    if "twonn" in methods:
        two = TwoNN(fit=twonn_fit, discard_fraction=discard_fraction)
        _decimate(out, Xk, neighbors, halvings, seed, two, knn_method, device, verbose)
    return out


def _as_retained(g: NeighborGraph) -> NeighborGraph:
    """The graph re-indexed as a graph of the retained points themselves (``kept`` = identity)."""
    return dataclasses.replace(g, kept=np.arange(g.n), n_dropped=g.n_dropped)


def _decimate(out, Xk, g, halvings, seed, est, knn_method, device, verbose):
    n = len(Xk)
    halvings = check_int(halvings, "halvings", minimum=0)
    if n // 2**halvings < 20:
        raise ValueError(
            f"halvings={halvings} leaves subsets of {n // 2**halvings} points (of {n}); need >= 20 per subset"
        )
    from tqdm.auto import tqdm

    rng = as_generator(seed)
    sizes, means, stds, scales = [], [], [], []
    bar = tqdm(total=2 ** (halvings + 1) - 1, desc="TwoNN decimation", disable=not verbose)
    for j in range(halvings + 1):
        parts, size = 2**j, n // 2**j
        if j == 0:
            subsets, graphs = [None], [g.truncate(2)]  # level 0 is the full set: reuse the shared graph
        else:
            subsets = rng.permutation(n)[: parts * size].reshape(parts, size)
            graphs = [None] * parts
        dims, t2 = [], []
        for s, sg in zip(subsets, graphs):  # a loop over subsets (pieces), each a vectorised fit
            if sg is None:
                # the points are distinct already, so "error" can only fire on a bug, never silently
                sg = nearest_neighbors(Xk[s], 2, duplicates="error", method=knn_method, device=device)
            dims.append(est.fit(neighbors=sg).dimension_)
            t2.append(sg.distances[:, 1])
            bar.update()
        sizes.append(size)
        means.append(float(np.mean(dims)))
        stds.append(float(np.std(dims)))
        scales.append(float(np.median(np.concatenate(t2))))
    bar.close()
    out.twonn_n, out.twonn, out.twonn_std, out.twonn_scale = sizes, means, stds, scales
