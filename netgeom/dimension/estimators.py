"""Intrinsic-dimension estimators on a shared exact kNN graph: MLE (Levina–Bickel, MacKay–Ghahramani), TwoNN,
local PCA (its conventions are stated above :class:`LocalPCA`).

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
import inspect
from typing import Any

import numpy as np
import torch

from .._validation import check_array, check_bool, check_choice, check_device, check_fraction, check_int
from ..results import Result, new_axes
from .neighbors import NeighborGraph, _spread_scaled, nearest_neighbors

__all__ = [
    "DimensionResult",
    "MLE",
    "TwoNN",
    "LocalPCA",
    "intrinsic_dimension",
    "mle_dimension_pw",
    "pca_rule_dimension",
    "local_pca_spectra",
]

_VARIANTS = ("levina_bickel", "mackay_ghahramani")
_KNN_METHODS = ("auto", "torch", "kdtree")  # nearest_neighbors' methods (a test keeps the two in step)


def _check_knn_options(knn_method, duplicates, device) -> None:
    """The kNN options, checked also when a reused ``neighbors=`` graph makes them unused: a typo is still
    an error."""
    check_choice(knn_method, "knn_method", _KNN_METHODS)
    check_choice(duplicates, "duplicates", ("drop", "error"))
    check_device(device)


def _check_reused(neighbors: NeighborGraph, duplicates: str) -> None:
    """A reused graph from which duplicates were dropped must not pass ``duplicates="error"``: a direct fit
    on the same points raises, so this one does too."""
    if duplicates == "error" and isinstance(neighbors, NeighborGraph) and neighbors.n_dropped:
        raise ValueError(
            f"neighbors was built from an X with {neighbors.n_dropped} exact duplicate row(s) (dropped, "
            "n_dropped > 0) but duplicates='error'; they give zero neighbour distances (infinite "
            "log-ratios). Pass duplicates='drop' to accept the graph's de-duplicated points"
        )


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
    _check_reused(neighbors, duplicates)
    if neighbors is None:
        X = check_array(X, "X", ndim=2, dtype=np.float64)
        # MLE and TwoNN read only ratios of distances: with the spread of X brought to [0.5, 1) by a power of
        # two (constant features set to 0, which changes no difference) the distances are far from
        # float64's limits (1e-160 spreads next to O(1) coordinates, |x| ~ 1e200) and no bit of the
        # estimate changes
        X, _ = _spread_scaled(X)
        neighbors = nearest_neighbors(X, k_max, duplicates=duplicates, method=method, device=device)
    if not isinstance(neighbors, NeighborGraph):
        raise TypeError(f"neighbors must be a NeighborGraph, got {type(neighbors).__name__}")
    if neighbors.k < k_max:
        raise ValueError(f"neighbors holds k={neighbors.k} neighbours but {k_max} are needed")
    if (neighbors.distances[:, 0] <= 0).any():
        raise ValueError(
            f"neighbors has {int((neighbors.distances[:, 0] <= 0).sum())} zero first-neighbour distance(s): "
            "exact duplicate rows, kept by duplicates='keep'; build it with duplicates='drop'"
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
        unbiased = check_bool(self.unbiased, "unbiased")
        _check_knn_options(self.knn_method, self.duplicates, self.device)
        if unbiased and k1 < 3:
            raise ValueError(f"unbiased=True normalises by k - 2, so k must be >= 3, got {k1}")
        g = _graph(X, neighbors, k2, self.duplicates, self.knn_method, self.device)
        per_k, pw_sum = {}, np.zeros(g.n)
        for k in range(k1, k2 + 1):
            pw = mle_dimension_pw(g.distances, k, unbiased)
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
        frac = check_fraction(self.discard_fraction, "discard_fraction", high_inclusive=False)
        _check_knn_options(self.knn_method, self.duplicates, self.device)
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


_METHODS = ("mle", "twonn", "lpca")


def intrinsic_dimension(
    X=None,
    method: str = "mle",
    k: int | tuple[int, int] | None = None,
    *,
    neighbors: NeighborGraph | None = None,
    **kw,
) -> DimensionResult:
    """Intrinsic dimension of the rows of ``X`` (or of a precomputed ``neighbors`` graph).

    ``method="mle"`` → :class:`MLE` (``k``, default 20, ``variant``, ``unbiased``); ``method="twonn"`` →
    :class:`TwoNN` (``fit``, ``discard_fraction``; giving ``k`` is an error: TwoNN uses two neighbours);
    ``method="lpca"`` → :class:`LocalPCA` (``k``, ``rule``,
    its thresholds, ``include_self``, ``aggregate``; needs ``X`` even with ``neighbors``). ``duplicates``,
    ``knn_method`` and ``device`` are passed on; an option the chosen method does not use is an error.
    Returns a :class:`DimensionResult`.

    Example
    -------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(1000, 2)) @ np.random.default_rng(1).normal(size=(2, 10))
    >>> r = intrinsic_dimension(X, "twonn")
    >>> r.method, round(r.dimension)
    ('twonn', 2)
    """
    method = check_choice(method, "method", _METHODS)
    cls = {"mle": MLE, "twonn": TwoNN, "lpca": LocalPCA}[method]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "k")]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise TypeError(f"method={method!r} does not use {unknown}; its options are {accepted}")
    if method == "twonn":
        if k is not None:
            # an ignored k would be reported as if it had been used
            raise ValueError(
                f"method='twonn' does not use k (got k={k!r}): TwoNN always uses the two nearest neighbours; "
                "leave k out, or use method='mle' or 'lpca'"
            )
        return TwoNN(**kw).fit(X, neighbors=neighbors).result_
    k = 20 if k is None else k
    return cls(k=k, **kw).fit(X, neighbors=neighbors).result_


# ------------------------------------------------------------------------------------------ local PCA
# Conventions (checked against scikit-dimension 0.5's ``skdim.id.lPCA`` source; tests assert agreement):
#
# * Neighbourhood of x: its k nearest neighbours **without x itself** (skdim's ``fit_pw`` with its own
#   ``kneighbors()`` or a precomputed index array), centred at their own mean (sklearn ``PCA``).
#   ``include_self=True`` adds x (k + 1 points). The spectrum has ``min(points, D)`` eigenvalues, like
#   ``PCA().explained_variance_`` (so rules that depend on its length — Kaiser, broken stick, Fan — agree).
# * Eigenvalues below ``m · eps · λ_max`` (m the spectrum length) are set to 0: they are rounding noise of the
#   Gram matrix, and zeroing them makes the first exact zero an infinite gap ("maxgap" is then exact on
#   linear subspaces). skdim's SVD resolves them to ~1e-32 instead; the rules decide identically unless
#   the answer itself rests on rounding noise.
# * Rules (skdim name → ours): "FO" → "fo", "Fan" → "fan", "maxgap", "ratio", "participation_ratio",
#   "Kaiser" → "kaiser", "broken_stick". Names are case-insensitive. skdim's signal-rank versions (MP, GD,
#   KN, Minka, parallel, …) estimate the rank of a linear signal under noise, not a local manifold
#   dimension, and are not offered.
# * ``alpha_ratio`` means what skdim's ``alphaRatio`` means (the fewest components whose cumulative share of
#   variance reaches it), but our default is 0.95; skdim's default 0.05 nearly always answers 1.
# * skdim's ``fit_pw`` only produces per-point values (its ``dimension_`` is then the last neighbourhood's);
#   our global value is their mean (``aggregate="mean"``) or median, as skdim's local estimators combine.

_PCA_RULES = ("fo", "fan", "maxgap", "ratio", "participation_ratio", "kaiser", "broken_stick")


def _first_true(mask: np.ndarray) -> np.ndarray:
    """Index of the first True along the last axis, or the axis length where there is none."""
    return np.where(mask.any(axis=-1), mask.argmax(axis=-1), mask.shape[-1])


def pca_rule_dimension(
    eigenvalues,
    rule: str = "fo",
    *,
    alpha_fo: float = 0.05,
    alpha_ratio: float = 0.95,
    alpha_fan: float = 10.0,
    beta_fan: float = 0.8,
    p_fan: float = 0.95,
) -> np.ndarray:
    """Dimension chosen by a PCA rule from spectra, one per row (batched; no loop over rows).

    Parameters
    ----------
    eigenvalues : ``(..., m)`` PCA variances per spectrum, sorted in decreasing order (``m >= 2``).
    rule : ``"fo"`` (Fukunaga–Olsen: eigenvalues above ``alpha_fo`` times the largest), ``"fan"`` (Fan et
        al.: first large gap ``> alpha_fan`` or cumulative share ``> beta_fan`` after subtracting the noise
        level, the mean of the eigenvalues beyond the share ``p_fan``), ``"maxgap"`` (position of the largest
        ratio of consecutive eigenvalues), ``"ratio"`` (fewest components reaching the share
        ``alpha_ratio`` of the variance), ``"participation_ratio"`` (``(Σλ)² / Σλ²``, real-valued),
        ``"kaiser"`` (eigenvalues above their mean), ``"broken_stick"`` (leading eigenvalues above the
        broken-stick expectation; 0 if even the first is below it).

    Beware ``"maxgap"`` on local neighbourhoods of ``p <= D`` points: centring leaves rank ``<= p − 1``, so
    the last eigenvalue is an exact zero (an infinite gap) and noisy data always get ``p − 1``; it is
    meaningful for ``p > D`` or for data lying exactly on a linear subspace (skdim behaves the same).

    Returns a float array of shape ``eigenvalues.shape[:-1]``. Raises ``ValueError`` on an all-zero spectrum
    or where a rule is undefined (the message names the rule and the number of spectra).

    Example
    -------
    >>> pca_rule_dimension(np.array([[4.0, 3.0, 0.1, 0.01], [5.0, 0.0, 0.0, 0.0]]), "fo").tolist()
    [2.0, 1.0]
    """
    ev = check_array(eigenvalues, "eigenvalues", ndim=None, dtype=np.float64)
    if ev.ndim < 1 or ev.shape[-1] < 2:
        raise ValueError(f"eigenvalues needs at least 2 per spectrum (last axis), got shape {ev.shape}")
    rule = check_choice(rule.lower() if isinstance(rule, str) else rule, "rule", _PCA_RULES)
    if (np.diff(ev, axis=-1) > 0).any():
        raise ValueError("eigenvalues must be sorted in decreasing order along the last axis")
    m = ev.shape[-1]
    top = ev[..., :1]
    if not (top > 0).all():
        raise ValueError(f"{int((top <= 0).sum())} spectrum/spectra have no positive eigenvalue (no spread)")
    ev = np.where(ev <= m * np.finfo(np.float64).eps * top, 0.0, ev)
    with np.errstate(divide="ignore", invalid="ignore"):
        if rule == "fo":
            return (ev > check_fraction(alpha_fo, "alpha_fo") * top).sum(-1).astype(np.float64)
        csum = np.cumsum(ev, axis=-1)  # sequential, like skdim's Python sum(): same rounding at thresholds
        total = csum[..., -1:]
        if rule == "ratio":
            a = check_fraction(alpha_ratio, "alpha_ratio", low_inclusive=False)
            return ((csum / total < a).sum(-1) + 1).astype(np.float64)
        if rule == "participation_ratio":
            return total[..., 0] ** 2 / np.square(ev).sum(-1)
        if rule == "kaiser":
            return (ev > ev.mean(-1, keepdims=True)).sum(-1).astype(np.float64)
        if rule == "broken_stick":
            stick = np.cumsum(1.0 / np.arange(m, 0, -1))[::-1] / m  # (1/m) Σ_{j>=i} 1/j
            # the first i with the stick above the normalised eigenvalue; none (all equal) means 0, as skdim
            first = _first_true(stick > ev / ev.sum(-1, keepdims=True))
            return np.where(first == m, 0, first).astype(np.float64)
        gaps = ev[..., :-1] / ev[..., 1:]
        if rule == "maxgap":
            # nanargmax: 0/0 gaps (beyond the numerical rank) carry no information; an exact zero after a
            # positive eigenvalue is an infinite gap
            return (np.nanargmax(gaps, axis=-1) + 1).astype(np.float64)
        # Fan et al.
        a, b = float(alpha_fan), check_fraction(beta_fan, "beta_fan")
        p = check_fraction(p_fan, "p_fan", high_inclusive=False)
        r = _first_true(csum / total > p)[..., None]
        tail = np.arange(m) >= r
        sigma = (ev * tail).sum(-1, keepdims=True) / tail.sum(-1, keepdims=True)
        ev2 = ev - sigma
        gaps2 = ev2[..., :-1] / ev2[..., 1:]
        c2 = np.cumsum(ev2, axis=-1)
        i1 = _first_true(gaps2 > a)
        i2 = _first_true(c2 / c2[..., -1:] > b)
        bad = (i1 == m - 1) & (i2 == m)
        if bad.any():
            raise ValueError(
                f"rule 'fan' is undefined for {int(bad.sum())} spectrum/spectra (no gap above alpha_fan and "
                "no cumulative share above beta_fan: all eigenvalues equal)"
            )
        return (1 + np.minimum(i1, i2)).astype(np.float64)


def _check_graph_of(X: np.ndarray, g: NeighborGraph) -> np.ndarray:
    """The retained rows of ``X`` after checking that ``g`` is a kNN graph of ``X`` (cheap spot check)."""
    if not isinstance(g, NeighborGraph):
        raise TypeError(f"neighbors must be a NeighborGraph, got {type(g).__name__}")
    if len(g.kept) != g.n or (g.n and int(g.kept.max()) >= len(X)):
        raise ValueError(
            f"neighbors (built from {g.n + g.n_dropped} points) does not match X ({len(X)} rows)"
        )
    Xk = X[g.kept]
    # compared at the spread of X brought to [0.5, 1) by a power of two (squares of 1e-160 differences, or
    # of 1e160 entries, neither underflow nor overflow); pairs far closer than the spread are within atol
    Y, shift = _spread_scaled(Xk)
    diff = Y - Y[g.indices[:, -1]]
    d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    if not np.allclose(d, np.ldexp(g.distances[:, -1], shift), rtol=1e-9, atol=2.0**-400):
        raise ValueError("neighbors was not built from this X: its distances do not match the coordinates")
    return Xk


def local_pca_spectra(
    X: np.ndarray, indices: np.ndarray, include_self: bool = False, chunk_size: int | None = None
) -> np.ndarray:
    """PCA variances (decreasing, ``(n, min(p, D))``) of every neighbourhood ``X[indices[i]]`` (+ ``X[i]``).

    Batched: each chunk of neighbourhoods is gathered into a ``(b, p, D)`` tensor, centred, and its ``p × p``
    Gram (or ``D × D`` scatter, whichever is smaller) decomposed by one batched ``eigvalsh`` in float64.
    """
    n, k = indices.shape
    D = X.shape[1]
    p = k + int(bool(include_self))
    m = min(p, D)
    if chunk_size is None:
        chunk_size = max(1, 2**25 // (8 * p * max(D, p)))  # ~32 MB per gathered block
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
    It = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
    out = np.empty((n, m))
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        centre = Xt[a:b, None, :]
        # differences to the centre point first, so neighbourhoods far from the origin keep their digits
        Y = Xt[It[a:b]] - centre
        if include_self:
            Y = torch.cat([torch.zeros_like(centre), Y], dim=1)
        Y = Y - Y.mean(dim=1, keepdim=True)
        G = Y @ Y.mT if p <= D else Y.mT @ Y
        out[a:b] = torch.linalg.eigvalsh(G).flip(-1).numpy() / (p - 1)
    return out


class LocalPCA:
    """Local PCA (lPCA): per-point PCA of the k nearest neighbours, ID = components kept by a rule.

    Parameters
    ----------
    k : neighbours per point (self excluded, as for :class:`MLE`); the neighbourhood has ``k`` points, or
        ``k + 1`` with ``include_self=True``. Needs ``k >= 2``.
    rule : ``"fo"`` (default, Fukunaga–Olsen), ``"fan"``, ``"maxgap"``, ``"ratio"``,
        ``"participation_ratio"``, ``"kaiser"``, ``"broken_stick"``; see :func:`pca_rule_dimension`.
    alpha_fo, alpha_ratio, alpha_fan, beta_fan, p_fan : the rules' thresholds (skdim's ``alphaFO``,
        ``alphaRatio``, ``alphaFan``, ``betaFan``, ``PFan``; defaults equal except ``alpha_ratio``).
    include_self : add the point itself to its neighbourhood (skdim's ``fit_pw`` does not).
    aggregate : global value = ``"mean"`` (default) or ``"median"`` of the per-point dimensions.
    duplicates, knn_method, device : passed to :func:`~netgeom.dimension.nearest_neighbors`.
    chunk_size : neighbourhoods per batched eigen-decomposition (default: ~32 MB blocks).

    :meth:`fit` takes ``X`` and optionally the shared ``neighbors=`` graph **of that X** (checked; lPCA needs
    the coordinates, not only the distances). After fit: ``dimension_``, ``dimension_pw_`` (per retained
    point), ``spectra_`` (``(n, min(p, D))`` local PCA variances, decreasing), ``result_``.

    Example
    -------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(500, 3)) @ np.random.default_rng(1).normal(size=(3, 20))
    >>> LocalPCA(k=15, rule="maxgap").fit(X).dimension_  # exact on a linear subspace
    3.0
    >>> round(LocalPCA(k=15).fit(X).dimension_, 1)  # Fukunaga–Olsen, alpha_fo = 0.05
    3.0
    """

    def __init__(
        self,
        k: int = 20,
        rule: str = "fo",
        *,
        alpha_fo: float = 0.05,
        alpha_ratio: float = 0.95,
        alpha_fan: float = 10.0,
        beta_fan: float = 0.8,
        p_fan: float = 0.95,
        include_self: bool = False,
        aggregate: str = "mean",
        duplicates: str = "drop",
        knn_method: str = "auto",
        device: str = "cpu",
        chunk_size: int | None = None,
    ):
        self.k = k
        self.rule = rule
        self.alpha_fo = alpha_fo
        self.alpha_ratio = alpha_ratio
        self.alpha_fan = alpha_fan
        self.beta_fan = beta_fan
        self.p_fan = p_fan
        self.include_self = include_self
        self.aggregate = aggregate
        self.duplicates = duplicates
        self.knn_method = knn_method
        self.device = device
        self.chunk_size = chunk_size

    def _rule_kw(self) -> dict:
        return dict(
            alpha_fo=self.alpha_fo,
            alpha_ratio=self.alpha_ratio,
            alpha_fan=self.alpha_fan,
            beta_fan=self.beta_fan,
            p_fan=self.p_fan,
        )

    def fit(self, X=None, y=None, *, neighbors: NeighborGraph | None = None) -> LocalPCA:
        k = check_int(self.k, "k", minimum=2)
        rule = self.rule.lower() if isinstance(self.rule, str) else self.rule
        rule = check_choice(rule, "rule", _PCA_RULES)
        check_choice(self.aggregate, "aggregate", ("mean", "median"))
        _check_knn_options(self.knn_method, self.duplicates, self.device)
        include_self = check_bool(self.include_self, "include_self")
        chunk = None if self.chunk_size is None else check_int(self.chunk_size, "chunk_size", minimum=1)
        if X is None:
            raise TypeError("LocalPCA needs the coordinates X (pass neighbors= as well to reuse a kNN graph)")
        X = check_array(X, "X", ndim=2, dtype=np.float64)
        if neighbors is None:
            neighbors = nearest_neighbors(
                X, k, duplicates=self.duplicates, method=self.knn_method, device=self.device
            )
        _check_reused(neighbors, self.duplicates)
        Xk = _check_graph_of(X, neighbors)
        if neighbors.k < k:
            raise ValueError(f"neighbors holds k={neighbors.k} neighbours but {k} are needed")
        # every rule compares eigenvalues with each other: the neighbourhoods are decomposed at the spread of
        # X brought to [0.5, 1) by a power of two (squares of tiny spreads underflowed: 1e-160 gave 9.4187
        # for 9.419, 1e-200 "no spread"; those of 1e153 entries overflow), and the spectra reported scaled
        # back
        Xs, shift = _spread_scaled(Xk)
        spectra = local_pca_spectra(Xs, neighbors.indices[:, :k], include_self, chunk)
        pw = pca_rule_dimension(spectra, rule, **self._rule_kw())
        with np.errstate(under="ignore"):
            self.spectra_ = np.ldexp(spectra, -2 * shift) if shift else spectra
        self.dimension_pw_ = pw
        self.dimension_ = float(pw.mean() if self.aggregate == "mean" else np.median(pw))
        self.result_ = DimensionResult(
            method="lpca",
            dimension=self.dimension_,
            k=k,
            n_used=neighbors.n,
            n_dropped=neighbors.n_dropped,
            variant=rule,
            dimension_pw=pw,
        )
        return self

    def fit_transform(self, X=None, y=None, *, neighbors=None) -> np.ndarray:
        return self.fit(X, neighbors=neighbors).dimension_pw_
