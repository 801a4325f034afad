"""Intrinsic-dimension estimators on a shared exact kNN graph: MLE (Levina–Bickel, MacKay–Ghahramani), TwoNN.

Conventions (checked against scikit-dimension 0.5's ``skdim.id.MLE`` and ``skdim.id.TwoNN`` sources; the
tests assert agreement to 1e-6 relative):

* ``k`` counts neighbours **excluding the point itself** (skdim's ``n_neighbors``, found by scikit-learn's
  ``NearestNeighbors.kneighbors()`` without a query, which excludes self).
* Per point, with ``T_j`` the distance to the j-th neighbour:
  ``m_k(x) = (k − 1) / Σ_{j=1}^{k−1} log(T_k / T_j)`` — skdim's ``kfac = k − 1`` over
  ``Σ_{j=1}^{k} log(T_k/T_j)`` (its j = k term is 0). ``unbiased=True`` uses ``k − 2``
  (skdim's ``unbiased=True``).
* Global: ``variant="levina_bickel"`` (our default) is the mean of ``m_k(x)`` (skdim ``comb="mean"``);
  ``variant="mackay_ghahramani"`` inverts the mean of the inverses (skdim's **default** ``comb="mle"``).
  skdim's default ``MLE().fit(X)`` therefore equals ``MLE(k=20, variant="mackay_ghahramani")`` here.
* A k-range ``k=(k1, k2)`` averages the global estimates over ``k = k1 … k2`` inclusive (Levina–Bickel's
  recipe); the per-point values are averaged likewise.
* TwoNN: ``μ_i = T_2/T_1``; skdim keeps the ``n_keep = int(N·(1 − discard_fraction))`` smallest ratios.
  ``fit="linear"`` (skdim's default ``method="linear"``, Facco et al.) regresses ``−log(1 − i/N)``,
  ``i = 1…n_keep``, on ``log μ_(i)`` through the origin. ``fit="mle"`` treats the discarded ratios as
  censored: ``d = (n_keep − 1) / (Σ_{i≤n_keep} log μ_(i) + (N − n_keep) log μ_(n_keep))``; with
  ``discard_fraction=0`` it is the closed form ``(N − 1) / Σ log μ_i``.
* Duplicates: skdim keeps duplicate points in everybody's neighbour lists and (TwoNN only) drops the ratios
  that are not finite, while its MLE returns ``inf``. Here exact duplicate rows are removed before the kNN
  (``duplicates="drop"``, reported as ``n_dropped``) or refused (``"error"``); results agree with skdim on
  data without duplicates.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._validation import check_choice, check_fraction, check_int
from ..results import Result, new_axes
from .neighbors import NeighborGraph, nearest_neighbors

__all__ = ["DimensionResult", "MLE", "TwoNN", "intrinsic_dimension", "mle_dimension_pw"]

_VARIANTS = ("levina_bickel", "mackay_ghahramani")


@dataclasses.dataclass
class DimensionResult(Result):
    """An intrinsic-dimension estimate.

    ``dimension`` is the global estimate; ``dimension_pw`` the per-point estimates (MLE only; ``None`` for
    TwoNN); ``per_k`` the global estimate for every ``k`` of a k-range; ``n_used`` the number of points the
    estimate rests on and ``n_dropped`` the duplicates removed; ``log_mu``/``fit_y`` TwoNN's regression data.
    """

    method: str
    dimension: float
    k: int | tuple[int, int] | None
    n_used: int
    n_dropped: int
    variant: str | None = None
    per_k: dict[int, float] | None = None
    dimension_pw: np.ndarray | None = dataclasses.field(default=None, repr=False)
    log_mu: np.ndarray | None = dataclasses.field(default=None, repr=False)
    fit_y: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def plot(self, ax=None):
        """MLE: histogram of per-point estimates; TwoNN: the fit of ``−log(1 − F(μ))`` against ``log μ``."""
        fig, ax = new_axes(ax)
        if self.dimension_pw is not None:
            ax.hist(self.dimension_pw, bins=50, color="C0", alpha=0.8)
            ax.axvline(self.dimension, color="C3", label=f"global {self.dimension:.2f}")
            ax.set_xlabel("local intrinsic dimension")
            ax.set_ylabel("points")
        elif self.log_mu is not None:
            ax.plot(self.log_mu, self.fit_y, ".", ms=2, label="data")
            xs = np.array([0.0, float(self.log_mu.max())])
            ax.plot(xs, self.dimension * xs, "C3", label=f"slope d = {self.dimension:.2f}")
            ax.set_xlabel("log μ")
            ax.set_ylabel("−log(1 − F(μ))")
        ax.set_title(f"{self.method}: d = {self.dimension:.2f} (n = {self.n_used})")
        ax.legend()
        return ax


def _parse_k(k: Any) -> tuple[int, int]:
    if isinstance(k, (tuple, list)):
        if len(k) != 2:
            raise ValueError(f"a k-range is a pair (k1, k2), got {k!r}")
        k1, k2 = check_int(k[0], "k[0]", minimum=2), check_int(k[1], "k[1]", minimum=2)
        if k2 < k1:
            raise ValueError(f"k-range must have k1 <= k2, got {k!r}")
        return k1, k2
    k = check_int(k, "k", minimum=2)
    return k, k


def _graph(X, neighbors, k_max: int, duplicates: str, method: str, device) -> NeighborGraph:
    if (X is None) == (neighbors is None):
        raise TypeError("pass exactly one of X or neighbors=")
    if neighbors is None:
        neighbors = nearest_neighbors(X, k_max, duplicates=duplicates, method=method, device=device)
    if not isinstance(neighbors, NeighborGraph):
        raise TypeError(f"neighbors must be a NeighborGraph, got {type(neighbors).__name__}")
    if neighbors.k < k_max:
        raise ValueError(f"neighbors holds k={neighbors.k} neighbours but {k_max} are needed")
    if (neighbors.distances[:, 0] <= 0).any():
        raise ValueError(
            f"neighbors has {int((neighbors.distances[:, 0] <= 0).sum())} zero first-neighbour distance(s) "
            "(duplicate points, or distances below float64 range); build it with duplicates='drop'"
        )
    return neighbors


def mle_dimension_pw(distances: np.ndarray, k: int, unbiased: bool = False) -> np.ndarray:
    """Per-point Levina–Bickel estimates ``m_k(x)`` from sorted neighbour distances (self excluded)."""
    T = distances[:, :k]
    # log(T_k / T_j) directly (not as differences of logs) keeps full precision when distances are close
    s = np.log(T[:, k - 1 : k] / T[:, : k - 1]).sum(axis=1)
    bad = ~(s > 0)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} point(s) have all {k} neighbours at one distance (log-ratio sum 0), so the "
            "MLE is infinite; use a larger k or perturb lattice-like data"
        )
    return (k - 2 if unbiased else k - 1) / s


class MLE:
    """Levina–Bickel maximum-likelihood intrinsic dimension, with the MacKay–Ghahramani variant.

    Parameters
    ----------
    k : neighbours per point (self excluded), or a pair ``(k1, k2)`` to average over ``k1 … k2``.
    variant : ``"levina_bickel"`` (default: mean of per-point estimates) or ``"mackay_ghahramani"``
        (inverse of the mean inverse; skdim's default ``comb="mle"``, as used by Pope et al.).
    unbiased : normalise by ``k − 2`` instead of ``k − 1`` (needs ``k >= 3``).
    duplicates : ``"drop"`` or ``"error"`` (see :func:`~netgeom.dimension.nearest_neighbors`).

    After :meth:`fit`: ``dimension_``, ``dimension_pw_`` (per point, averaged over a k-range), ``result_``.

    Example
    -------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(1000, 3)) @ np.random.default_rng(1).normal(size=(3, 20))
    >>> round(MLE(k=20).fit(X).dimension_)
    3
    """

    def __init__(
        self,
        k: int | tuple[int, int] = 20,
        variant: str = "levina_bickel",
        unbiased: bool = False,
        duplicates: str = "drop",
        knn_method: str = "auto",
        device: str = "cpu",
    ):
        self.k = k
        self.variant = variant
        self.unbiased = unbiased
        self.duplicates = duplicates
        self.knn_method = knn_method
        self.device = device

    def fit(self, X=None, y=None, *, neighbors: NeighborGraph | None = None) -> MLE:
        k1, k2 = _parse_k(self.k)
        check_choice(self.variant, "variant", _VARIANTS)
        check_choice(self.duplicates, "duplicates", ("drop", "error"))
        if self.unbiased and k1 < 3:
            raise ValueError(f"unbiased=True normalises by k - 2, so k must be >= 3, got {k1}")
        g = _graph(X, neighbors, k2, self.duplicates, self.knn_method, self.device)
        per_k, pw_sum = {}, np.zeros(g.n)
        for k in range(k1, k2 + 1):
            pw = mle_dimension_pw(g.distances, k, bool(self.unbiased))
            per_k[k] = float(pw.mean() if self.variant == "levina_bickel" else 1.0 / np.mean(1.0 / pw))
            pw_sum += pw
        self.dimension_pw_ = pw_sum / (k2 - k1 + 1)
        self.dimension_ = float(np.mean(list(per_k.values())))
        self.result_ = DimensionResult(
            method="mle",
            dimension=self.dimension_,
            k=k1 if k1 == k2 else (k1, k2),
            n_used=g.n,
            n_dropped=g.n_dropped,
            variant=self.variant,
            per_k=per_k if k1 != k2 else None,
            dimension_pw=self.dimension_pw_,
        )
        return self

    def fit_transform(self, X=None, y=None, *, neighbors=None) -> np.ndarray:
        return self.fit(X, neighbors=neighbors).dimension_pw_


class TwoNN:
    """TwoNN (Facco et al. 2017): the ratio ``μ = T_2/T_1`` is Pareto(1, d) distributed.

    Parameters
    ----------
    fit : ``"linear"`` (Facco's regression of ``−log(1 − F(μ))`` on ``log μ`` through the origin; skdim's
        default) or ``"mle"`` (closed form, discarded ratios treated as censored; see the module docstring).
    discard_fraction : fraction of the largest ratios left out (``int(N(1 − f))`` kept, as skdim). The linear
        fit needs at least one ratio discarded (``F = 1`` has an infinite ordinate).
    duplicates : ``"drop"`` or ``"error"``.

    After :meth:`fit`: ``dimension_``, ``mu_`` (the ratios of the retained points), ``result_``.

    Example
    -------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).uniform(size=(2000, 2)) @ np.random.default_rng(1).normal(size=(2, 30))
    >>> round(TwoNN().fit(X).dimension_)
    2
    """

    def __init__(
        self,
        fit: str = "linear",
        discard_fraction: float = 0.1,
        duplicates: str = "drop",
        knn_method: str = "auto",
        device: str = "cpu",
    ):
        self.fit_method = fit
        self.discard_fraction = discard_fraction
        self.duplicates = duplicates
        self.knn_method = knn_method
        self.device = device

    def fit(self, X=None, y=None, *, neighbors: NeighborGraph | None = None) -> TwoNN:
        check_choice(self.fit_method, "fit", ("linear", "mle"))
        check_choice(self.duplicates, "duplicates", ("drop", "error"))
        frac = check_fraction(self.discard_fraction, "discard_fraction", high_inclusive=False)
        g = _graph(X, neighbors, 2, self.duplicates, self.knn_method, self.device)
        mu = g.distances[:, 1] / g.distances[:, 0]
        N = len(mu)
        n_keep = int(N * (1 - frac))  # the same expression as skdim, so the same rounding
        if n_keep < 2:
            raise ValueError(f"only {n_keep} ratio(s) left after discarding {frac:.0%} of {N}; need >= 2")
        log_mu = np.log(np.sort(mu)[:n_keep])
        F = np.arange(1, n_keep + 1) / N
        denom = float(log_mu @ log_mu) if self.fit_method == "linear" else float(
            log_mu.sum() + (N - n_keep) * log_mu[-1]
        )
        if denom <= 0:
            raise ValueError("all kept ratios T2/T1 equal 1 (equidistant neighbours); TwoNN is undefined")
        if self.fit_method == "linear":
            if n_keep == N:
                raise ValueError(
                    "fit='linear' needs discard_fraction large enough to drop at least one ratio "
                    f"(N={N}, discard_fraction={frac}): the largest has F = 1 and -log(1 - F) = inf"
                )
            d = float(log_mu @ -np.log1p(-F)) / denom
        else:
            d = (n_keep - 1) / denom
        n_plot = min(n_keep, N - 1)  # F = 1 has an infinite ordinate: leave it out of the plot data
        self.mu_ = mu
        self.dimension_ = float(d)
        self.dimension_pw_ = None
        self.result_ = DimensionResult(
            method="twonn",
            dimension=self.dimension_,
            k=2,
            n_used=g.n,
            n_dropped=g.n_dropped,
            variant=self.fit_method,
            log_mu=log_mu[:n_plot],
            fit_y=-np.log1p(-F[:n_plot]),
        )
        return self


_METHODS = ("mle", "twonn")


def intrinsic_dimension(
    X=None,
    method: str = "mle",
    k: int | tuple[int, int] = 20,
    *,
    neighbors: NeighborGraph | None = None,
    **kw,
) -> DimensionResult:
    """Intrinsic dimension of the rows of ``X`` (or of a precomputed ``neighbors`` graph).

    ``method="mle"`` → :class:`MLE` (``k``, ``variant``, ``unbiased``); ``method="twonn"`` → :class:`TwoNN`
    (``fit``, ``discard_fraction``; ``k`` ignored). ``duplicates`` is passed on. Returns a
    :class:`DimensionResult`.

    Example
    -------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(1000, 2)) @ np.random.default_rng(1).normal(size=(2, 10))
    >>> r = intrinsic_dimension(X, "twonn")
    >>> r.method, round(r.dimension)
    ('twonn', 2)
    """
    method = check_choice(method, "method", _METHODS)
    est = MLE(k=k, **kw) if method == "mle" else TwoNN(**kw)
    return est.fit(X, neighbors=neighbors).result_
