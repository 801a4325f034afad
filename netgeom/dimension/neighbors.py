"""Exact Euclidean k-nearest neighbours, computed once and shared by every intrinsic-dimension estimator.

Two back-ends:

* ``"torch"`` — scores ``‖x‖² + ‖y‖² − 2x·y`` of the float32 points, the Gram entry ``x·y`` by a float32
  product (on the CPU torch's oneDNN where the blocks are large enough and torch runs AVX-512 code, else
  numpy's BLAS; torch's on an accelerator), the squared norms and the sum in float64; ``k + n_extra``
  candidates per row. The score is symmetric, so only the blocks on and above the diagonal of the Gram matrix
  are computed (about 5/8 of the flops of ``X @ X.T`` with oneDNN, whose diagonal blocks are full products,
  half with BLAS's syrk; a flat index such as faiss's ``IndexFlatL2`` computes all of them). Up to 2048 points
  the whole Gram matrix is kept (at most 16 MB; each block mirrored below the diagonal) and each row's
  candidates are selected from its full row at once: a threshold from a sample of the row, checked by one
  pass, then a bisection on the value over the few scores below it, which are ranked. More points (or an
  explicit ``chunk_size``) stream the blocks: the diagonal blocks are selected the same way, which gives every
  row a threshold (its current ``(k + n_extra)``-th score), and each panel entry serves its row and its
  column, entering a row's candidate heap only below the row's threshold, so a block costs one comparison pass
  (compiled with numba, as are the selections and the re-rank: :mod:`._knn_kernel`). Features that are
  constant over all points add exactly 0 to every distance and are left out of the float32 scores and of the
  float64 sums. On the CPU every phase (the passes over ``X``, the blocks, the selections and the re-rank) is
  shared by ``torch.get_num_threads()`` threads, the caller included, each running its products on one thread
  (one OpenMP thread for oneDNN, one BLAS thread for numpy: independent products keep both cores busy where a
  shared product waits for its slower half, e.g. on a loaded machine, no OpenMP team spins after a product,
  and the selection runs in parallel too); work goes to whichever thread is free, so a thread the OS does not
  schedule delays nobody (the helpers are started without waiting for them to run).
  The candidates' distances are then recomputed in float64 *directly* as ``‖x − y‖`` (not through the
  expansion, which loses all precision for close points; the sum of squares of the float64 differences
  in ``np.einsum``'s order, two lanes at a time, by one compiled pass over rows that hold the two lanes'
  terms interleaved and never stores the differences: bit for bit
  ``sqrt(einsum(d, d))``, the same numbers as a brute-force float64 pass, on x86-64 builds of numpy
  whose baseline SIMD is 128 bits wide, which the tests check) and re-ranked; rigorous float32
  error bounds skip the candidates that provably lie beyond the k-th neighbour, and certify, row by row,
  that no point outside the candidate set can be closer than the k-th re-ranked neighbour; rows that fail
  the certificate are recomputed exactly in float64 against every point (counted in
  :attr:`NeighborGraph.n_fallback`). The result is therefore the exact float64 kNN, each row ordered by
  (distance, index): every point tied with the k-th neighbour is a candidate (the certificate is strict),
  so the smallest indices win; only where the k-th distance is 0 (more than k exact copies of a point,
  ``duplicates="keep"``) may any k of the copies be returned.
* ``"kdtree"`` — :class:`scipy.spatial.cKDTree` (fast in low ambient dimension) for candidates: ``k + 1``
  neighbours besides self, their distances recomputed by the same compiled kernel (so the two back-ends
  return the same numbers) and each row ordered by (distance, index). The tree's own distances lie within
  a rigorous bound of those, which certifies that no other point is within the k-th distance; a row that
  fails (a tie or near tie at the k-th distance: lattices, integer or binary data) takes every point of a
  ball query at that radius plus the bound, so there too the tied points with the smallest indices are
  the ones in the set.

``method="auto"`` picks the k-d tree for ≤ 16 features, torch otherwise.

**The distance** of two rows is computed from their float64 differences, scaled by a power of two ``2^t``
chosen from the *spread* of the points (the largest feature range ``max − min``: ranges below 0.5 are
brought to [0.5, 1), ranges from 2^400 on likewise; in between nothing is scaled):
``sqrt(Σ ((x_t − y_t) · 2^t)²) · 2^-t``, summed in ``np.einsum``'s order. It depends on the differences
alone — a translation that leaves them unchanged changes nothing, and a power-of-two scaling of ``X``
scales every distance by the same power — and neither the squares of large data (1e200) overflow nor
those of tiny spreads next to large coordinates (1e-160 differences beside O(1) entries) underflow. A pair
far closer than the spread (scaled distance below 2^-480, where squares may lose bits to underflow) is
recomputed with a power of two of its own, from its largest difference: a distance is 0 only for rows
that are equal in every feature, so the zero distances that ``duplicates`` handles are exactly the
duplicated rows. (Only data whose differences, or distances, exceed float64's range are refused, and
pairs more than ~2^1074 times closer than the spread, which no common scale can represent.) Rows are
ordered by the scaled values; where distances come back subnormal (data near 1e-310) tied printed
values may therefore appear in either index order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import threading

import numpy as np
import torch

from .._matmul import ieee_float32
from .._validation import check_array, check_choice, check_device, check_int
from ..results import Result

__all__ = ["NeighborGraph", "nearest_neighbors", "deduplicate"]

_KDTREE_MAX_FEATURES = 16
# scores per panel chunk of the torch back-end (float32: 64 MB)
_PANEL_SCORES = 1 << 24
_DUPLICATE_POLICIES = ("drop", "error", "keep")
# up to this many points (and no chunk_size given) the whole float32 Gram matrix is kept (at most 16 MB);
# beyond, the selections over full rows (a few counting passes each) cost more CPU than streaming the
# blocks through heaps (MNIST, k = 20: 49 vs 52 ms at 2000 points, 80 vs 76 ms at 2500)
_DENSE_MAX_POINTS = 2048
# up to this size (bytes of a float64 copy) the re-rank gathers candidates from float64 rows even where the
# data are float32 values: none (the 8-lane re-rank widens float32 pairs at no cost, and in the call the rows
# come from memory: 1000 MNIST points, 10.5 -> 10.1 ms CPU); the tests raise it to cover both copies
_GATHER_FLOAT64_BYTES = 0
# rows of a dense Gram block by oneDNN (where oneDNN still takes blocks that size: see _knn_torch_pool)
_GRAM_BLOCK_ROWS = 256


@dataclasses.dataclass
class NeighborGraph(Result):
    """Sorted exact k-nearest neighbours of every (retained) point, self excluded.

    Attributes
    ----------
    distances : float64 ``(n, k)``, non-decreasing along each row; ``distances[i, j]`` is ``T_{j+1}(x_i)``.
    indices : int64 ``(n, k)``, indices into the *retained* points (``X[kept]``).
    kept : int64 ``(n,)``, indices of the retained points in the original input (duplicates dropped).
    n_dropped : number of exact duplicate rows dropped (policy ``"drop"``).
    n_fallback : rows whose float32 candidates could not be certified and were recomputed exactly in float64.
    method : ``"torch"`` or ``"kdtree"``.
    """

    distances: np.ndarray = dataclasses.field(repr=False)
    indices: np.ndarray = dataclasses.field(repr=False)
    kept: np.ndarray = dataclasses.field(repr=False)
    n_dropped: int = 0
    n_fallback: int = 0
    method: str = "torch"

    @property
    def k(self) -> int:
        return int(self.distances.shape[1])

    @property
    def n(self) -> int:
        return int(self.distances.shape[0])

    def truncate(self, k: int) -> NeighborGraph:
        """The same graph restricted to the first ``k`` neighbours (no recomputation)."""
        k = check_int(k, "k", minimum=1, maximum=self.k)
        return dataclasses.replace(self, distances=self.distances[:, :k], indices=self.indices[:, :k])

    def to_dict(self):
        d = super().to_dict()
        d.update(n=self.n, k=self.k)
        return d

    def plot(self, ax=None):
        """Histogram of the distance to the first and the k-th neighbour."""
        from ..results import new_axes

        fig, ax = new_axes(ax)
        ax.hist(self.distances[:, 0], bins=50, alpha=0.6, label="1st neighbour")
        ax.hist(self.distances[:, -1], bins=50, alpha=0.6, label=f"{self.k}-th neighbour")
        ax.set_xlabel("distance")
        ax.set_ylabel("points")
        ax.legend()
        return ax


def deduplicate(X: np.ndarray) -> np.ndarray:
    """Sorted indices of the first occurrence of every distinct row of ``X`` (``-0.0`` equals ``0.0``)."""
    Xc = np.ascontiguousarray(X + 0.0)  # + 0.0 maps -0.0 to 0.0 so byte comparison equals value comparison
    rows = Xc.view(np.dtype((np.void, Xc.dtype.itemsize * Xc.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    return np.sort(first)


def nearest_neighbors(
    X,
    k: int,
    *,
    method: str = "auto",
    duplicates: str = "drop",
    chunk_size: int | None = None,
    n_extra: int | None = None,
    device: str | torch.device = "cpu",
) -> NeighborGraph:
    """Exact Euclidean ``k`` nearest neighbours of every row of ``X`` (self excluded), in float64.

    Distances are computed from the float64 differences at the spread of ``X`` (see the module docstring:
    no underflow or overflow, unchanged by translations that leave the differences unchanged); each row is
    ordered by (distance, index), on either back-end.

    Parameters
    ----------
    X : array-like ``(n, D)`` of finite numbers (numpy or torch).
    k : number of neighbours, ``1 <= k < number of distinct points``.
    method : ``"auto"`` (k-d tree for ``D <= 16``, else torch), ``"torch"`` or ``"kdtree"``.
    duplicates : ``"drop"`` (default) removes exact duplicate rows first and reports how many in
        ``n_dropped``; ``"error"`` raises if any exist; ``"keep"`` keeps them (zero distances then appear).
    chunk_size : rows per block of the torch back-end (default: the whole Gram matrix up to 2048 points,
        else ~1500); the score blocks take at most ``max(64 MB, 4 chunk_size²)`` bytes.
    n_extra : extra float32 candidates per row of the torch back-end (default 10), the margin of the
        certificate; only candidates that the float32 error bounds cannot place beyond the k-th neighbour
        get a float64 distance.
        ``chunk_size`` and ``n_extra`` tune the torch back-end only: given with ``method="kdtree"``, or
        with ``method="auto"`` where it picks the k-d tree (``D <= 16`` on the CPU), they raise an error
        (the k-d tree has neither setting, and an argument is never silently ignored).
    device : torch device for the float32 matmul.

    On the CPU the torch back-end uses ``torch.get_num_threads()`` threads in all (numpy's BLAS is held to
    that budget while it runs), so ``torch.set_num_threads(1)`` makes it single-threaded.

    Example
    -------
    >>> import numpy as np
    >>> g = nearest_neighbors(np.random.default_rng(0).normal(size=(100, 50)), 5)
    >>> g.distances.shape, g.n_dropped
    ((100, 5), 0)
    """
    # finiteness is checked below, by the two reductions that give the largest |x|
    X = check_array(X, "X", ndim=2, dtype=np.float64, finite=False)
    method = check_choice(method, "method", ("auto", "torch", "kdtree"))
    duplicates = check_choice(duplicates, "duplicates", _DUPLICATE_POLICIES)
    k = check_int(k, "k", minimum=1)
    device = check_device(device)  # an unknown or absent device is an error, never a silent CPU run
    if X.shape[1] < 1:
        raise ValueError(f"X must have at least one feature, got shape {X.shape}")

    if method == "kdtree" and device.type != "cpu":
        raise ValueError(f"method='kdtree' runs on the CPU; device={str(device)!r} needs method='torch'")
    auto = method == "auto"
    if auto:
        # an accelerator was asked for: use it (the k-d tree would run on the CPU)
        low_dim = X.shape[1] <= _KDTREE_MAX_FEATURES and device.type == "cpu"
        method = "kdtree" if low_dim else "torch"
    if method == "kdtree":
        # the k-d tree has no blocks and no float32 candidates: these would be ignored
        given = [name for name, v in (("chunk_size", chunk_size), ("n_extra", n_extra)) if v is not None]
        if given:
            chose = " (chosen by method='auto' for <= 16 features)" if auto else ""
            raise ValueError(
                f"{' and '.join(given)} tune(s) the torch back-end only; method='kdtree'{chose} has no such "
                "setting. Pass method='torch' to use it, or leave it out"
            )
    n_extra = 10 if n_extra is None else check_int(n_extra, "n_extra", minimum=0)
    n_input = len(X)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    if k >= n_input:
        raise ValueError(f"k={k} needs at least k+1={k + 1} distinct points, got {n_input} points")
    # subnormals flushed to zero (torch.set_flush_denormal) would make tiny distinct points duplicates and
    # void the float32 bounds: gradual underflow (and IEEE float32 products) for the whole search
    with ieee_float32(torch_threads=False):
        kept = np.arange(n_input)
        dist, idx, n_fallback = _knn(X, k, method, n_extra, chunk_size, device)
        # exact duplicates are exactly the points at float64 distance 0 from their first neighbour (x − y is
        # never 0 for distinct floats), so detection is free and np.unique runs only on the few suspects
        zero = dist[:, 0] == 0
        if duplicates != "keep" and zero.any():
            suspects = np.flatnonzero(zero)
            first = suspects[deduplicate(X[suspects])]
            kept = np.sort(np.concatenate([np.flatnonzero(~zero), first]))
            if duplicates == "error":
                # (a zero distance is an exact duplicate: distances are computed without underflow)
                raise ValueError(
                    f"X has {n_input - len(kept)} exact duplicate row(s) (rows equal in every feature); they "
                    "give zero neighbour distances (infinite log-ratios). Pass duplicates='drop' to remove "
                    "them"
                )
            if k >= len(kept):
                raise ValueError(
                    f"k={k} needs at least k+1={k + 1} distinct points, got {len(kept)} distinct of {n_input}"
                )
            dist, idx, n_fallback = _knn(X[kept], k, method, n_extra, chunk_size, device)
    return NeighborGraph(
        distances=dist,
        indices=idx,
        kept=kept,
        n_dropped=n_input - len(kept),
        n_fallback=int(n_fallback),
        method=method,
    )


# A pair's distance is ``sqrt(Σ ((x_t − y_t) · 2^s)²) · 2^-s``: the float64 differences first, then an exact
# power-of-two scale ``2^s`` chosen from the spread of the points (the largest feature range brought to
# [0.5, 1)), squares summed in einsum's order. The result depends on the differences alone (a translation
# that leaves them unchanged leaves every distance unchanged; so does a power-of-two scaling), and neither
# squares of large data overflow nor those of tiny data underflow. A pair far closer than that spread
# (scaled distance below _TINY_DIST: some squares may have lost bits to underflow, or all of them: distinct
# points at distance 0) is recomputed with a scale of its own, from its largest difference.
_TINY_DIST = 2.0**-480


def _spread_shift(lo: np.ndarray, hi: np.ndarray, window: bool = True) -> int:
    """The power of two ``t`` bringing the largest feature range ``max − min`` to [0.5, 1) (0 if every
    feature is constant). ``window``: 0 where the range lies in [0.5, 2^400) (nothing to scale: squares of
    differences that large neither overflow, and scaling down would cost the kernel a multiply per term;
    pairs far closer than the range are rescaled anyway, see :data:`_TINY_DIST`), so ranges below 0.5 are
    scaled up (exact) and only ranges from 2^400 on scaled down. A range that overflows float64 is
    refused: distances across it are no float64 numbers, at any scale of the differences."""
    with np.errstate(over="ignore", invalid="ignore"):
        span = hi - lo
    R = float(span.max()) if span.size else 0.0
    if not math.isfinite(R):
        j = int(np.flatnonzero(~np.isfinite(span))[0])
        raise ValueError(
            f"feature {j} of X spans {lo[j]:.3g} to {hi[j]:.3g}: the difference overflows float64, so the "
            "distances are no float64 numbers; rescale X (every intrinsic-dimension estimate is "
            "scale-invariant)"
        )
    t = -math.frexp(R)[1] if R > 0 else 0
    return 0 if window and -400 < t < 0 else t


def _spread_scaled(X: np.ndarray) -> tuple[np.ndarray, int]:
    """``(Y, t)``: ``X`` with its constant features set to 0 and scaled by ``2^t`` (:func:`_spread_shift`),
    so its largest feature range lies in [0.5, 1). Differences of ``Y`` are those of ``X`` times ``2^t``
    (exact, up to the rounding of entries that fall below float64's normal range), and no varying entry
    is large (a nonzero range is at least an ulp of its entries): every estimate that depends on the
    differences only, scale-invariantly, can be computed from ``Y`` without overflow or underflow."""
    if X.size == 0:
        return X, 0
    lo, hi = X.min(axis=0), X.max(axis=0)
    _check_finite(X, lo, hi)
    t = _spread_shift(lo, hi, window=False)
    const = hi == lo
    if not const.any():
        if t == 0:
            return X, 0
        with np.errstate(under="ignore"):
            return np.ldexp(X, t), t
    Y = np.where(const, 0.0, X)  # (one copy, scaled in place)
    with np.errstate(under="ignore"):
        return np.ldexp(Y, t, out=Y), t


def _check_finite(X, lo, hi, n_bad: int | None = None):
    """Refuse non-finite entries (an extreme is not finite: max and min propagate NaN and reach ±inf)."""
    if n_bad or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        bad = int((~np.isfinite(X)).sum()) if n_bad is None else n_bad
        raise ValueError(f"X contains {bad} non-finite value(s) (NaN or inf); clean the input first")


def _per_pair(diff: np.ndarray, t: int) -> np.ndarray:
    """Distances (in units of ``2^-t``) of the difference rows ``diff``, each scaled by a power of two of its
    own (its largest entry to [0.5, 1)): no square underflows. Raises where the result is not
    representable in those units (a pair more than ~2^1074 times closer than the spread of X)."""
    diff = np.ascontiguousarray(diff)
    mx = np.abs(diff).max(axis=1)
    e = np.frexp(mx)[1]
    sc = np.ldexp(diff, -e[:, None])
    v = np.sqrt(np.einsum("ij,ij->i", sc, sc))
    with np.errstate(under="ignore"):
        out = np.ldexp(v, e + t)
    lost = (out == 0) & (mx > 0)
    if lost.any():
        raise ValueError(
            f"two distinct rows of X differ by at most {float(mx[lost][0]):.3g}, below float64's range "
            f"relative to X's largest feature range (~2^{-t}): no common scale represents both distances; "
            "rescale the features"
        )
    return out


def _refine_tiny(X: np.ndarray, rows: np.ndarray, cand: np.ndarray, d: np.ndarray, t: int) -> None:
    """Recompute in place, pair by pair (:func:`_per_pair`), the distances ``d[i, j]`` (units ``2^-t``) of
    ``X[rows[i]]`` and ``X[cand[i, j]]`` that lie below :data:`_TINY_DIST`."""
    if not d.size or d.min() >= _TINY_DIST:  # (almost always: one reduction, no index arrays)
        return
    i, j = np.nonzero(d < _TINY_DIST)
    if i.size:
        d[i, j] = _per_pair(X[cand[i, j]] - X[rows[i]], t)


def _pair_layout(D: int, varying: np.ndarray):
    """:func:`._knn_kernel.pair_layout`, kept for the last few sets of varying features (~0.15 ms of numpy
    calls each time, against ~5 ms for a whole 1000-point kNN: repeated calls on one data set, e.g. every
    estimator's, or a benchmark's, find it made); the arrays are read-only."""
    return _pair_layout_of(D, np.asarray(varying, dtype=np.int64).tobytes())


@functools.lru_cache(maxsize=8)
def _pair_layout_of(D: int, varying: bytes):
    from . import _knn_kernel as kern

    out = kern.pair_layout(D, np.frombuffer(varying, dtype=np.int64))
    for a in out[:2]:
        a.flags.writeable = False
    return out


def _pair_copy(X: np.ndarray, varying: np.ndarray, t: int) -> tuple[np.ndarray, float | None]:
    """The ``varying`` features of ``X`` in :func:`._knn_kernel.pair_layout` (float64) and the factor ``sc``
    for :func:`._knn_kernel.direct_distances` (distances in units of ``2^-t``): ``t > 0`` scales the copy
    (exact: scaled up, and a varying feature's entries are at most ~2^53 times its range), ``t < 0``
    (ranges from 2^400 on) scales each difference in the kernel."""

    pos, pad, width = _pair_layout(X.shape[1], varying)
    P = np.zeros((len(X), width))
    P[:, pos] = X[:, varying]
    if t > 0:
        return np.ldexp(P, t), None
    return P, (math.ldexp(1.0, t) if t < 0 else None)


def _knn(X, k, method, n_extra, chunk_size, device):
    if method != "kdtree":
        # a TF32/bf16 matmul (precision "high"/"medium", often set globally for training) loosens the
        # error bound so much that almost every row needs the slow exact rescan; full float32 costs little
        # here. The caller's setting is restored on the way out. (The checks of X and its scale are made
        # by the torch back-end's first pass.)
        with ieee_float32(torch_threads=False):
            return _knn_torch(X, k, n_extra, chunk_size, torch.device(device))
    return _knn_kdtree(X, k)


def _scale_back(dist: np.ndarray, t: int) -> np.ndarray:
    """Distances in units of ``2^-t`` back to X's units; refuses distances beyond float64's range.
    Distances of subnormal data come back subnormal, by design (they are ordered by their scaled values)."""
    if t == 0:  # (data spread over [0.5, 2^400): the units are X's; float64 sums that far below overflow)
        return dist
    with np.errstate(under="ignore", over="ignore"):
        out = np.ldexp(dist, -t)
    if out.size and not np.isfinite(out[:, -1]).all():
        raise ValueError(
            "neighbour distances of X exceed float64's largest number; rescale X (every intrinsic-dimension "
            "estimate is scale-invariant)"
        )
    return out


def _knn_kdtree(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The k-d tree back-end: candidates by :class:`scipy.spatial.cKDTree` on the spread-scaled varying
    features, their distances recomputed as the torch back-end computes them (the same kernel), rows
    ordered by (distance, index); the tree's distances, within a rigorous error bound of those, certify
    each row (no point outside the candidates is within the k-th distance); a row that fails (a tie, or
    a near tie, at the k-th distance) takes every point of a ball query at that radius (plus the bound),
    so the smallest indices win ties there as on the torch path."""
    from scipy.spatial import cKDTree

    from . import _knn_kernel as kern

    n, D = X.shape
    X = np.ascontiguousarray(X)
    lo, hi = X.min(axis=0), X.max(axis=0)
    _check_finite(X, lo, hi)
    t = _spread_shift(lo, hi)
    varying = np.flatnonzero(hi != lo)
    if varying.size == 0:  # all points equal: one (constant) feature keeps the shapes non-empty
        varying = np.zeros(1, dtype=np.intp)
    P, sc = _pair_copy(X, varying, t)
    with np.errstate(under="ignore"):
        Y = np.ldexp(X[:, varying], t)
    workers = max(1, torch.get_num_threads())
    tree = cKDTree(Y)
    kq = min(k + 2, n)  # self, k neighbours and one more: a tie at the k-th distance shows
    dt, it = tree.query(Y, k=kq, workers=workers)
    it = np.ascontiguousarray(it, dtype=np.int64)
    rows = np.arange(n, dtype=np.int64)
    ex = np.empty((n, kq))
    kern.direct_distances(P, 0, it, np.full(n, kq, dtype=np.int64), sc, ex)
    ex[it == rows[:, None]] = np.inf  # self
    _refine_tiny(X, rows, it, ex, t)
    order = np.lexsort((it, ex))[:, :k]
    dist, idx = np.take_along_axis(ex, order, 1), np.take_along_axis(it, order, 1)
    # the tree's distances (its own float64 sums over the scaled features, whose coordinates may have
    # lost bits below float64's normal range) lie within a relative rho and an absolute alpha of ours
    Dv = varying.size
    rho = (2 * Dv + 8) * 2.0**-52
    alpha = math.sqrt(Dv) * 2.0**-520
    if kq < n:
        bad = np.flatnonzero(~(dist[:, -1] < dt[:, -1] * (1 - rho) - alpha))
    else:
        bad = np.zeros(0, dtype=np.int64)  # every other point is a candidate
    if bad.size:
        # every point within the k-th distance lies in the ball of that radius plus the bound
        balls = tree.query_ball_point(Y[bad], dist[bad, -1] * (1 + rho) + alpha, workers=workers,
                                      return_sorted=False)
        sizes = np.fromiter(map(len, balls), dtype=np.int64, count=len(balls))
        flat = np.fromiter(itertools.chain.from_iterable(balls), dtype=np.int64, count=int(sizes.sum()))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        # rows by ball size, in groups of a bounded padded size (a few large balls, e.g. of many exact
        # copies, do not pad the others)
        by_size = np.argsort(sizes, kind="stable")
        g0 = 0
        while g0 < len(by_size):
            g1 = g0 + 1
            while g1 < len(by_size) and (g1 + 1 - g0) * sizes[by_size[g1]] <= 1 << 20:
                g1 += 1
            grp = by_size[g0:g1]
            width = int(sizes[grp[-1]])
            cols = np.arange(width)
            src = np.minimum(starts[grp][:, None] + cols, flat.size - 1)
            # (padding n: sorted last, never kept)
            cand = np.where(cols < sizes[grp][:, None], flat[src], n)
            rows_g = bad[grp]
            e = np.empty((len(grp), width))
            kern.gathered_distances(P, rows_g, np.minimum(cand, n - 1), sizes[grp], sc, e)
            e[cand == rows_g[:, None]] = np.inf  # self
            _refine_tiny(X, rows_g, np.minimum(cand, n - 1), e, t)
            o = np.lexsort((cand, e))[:, :k]
            dist[rows_g], idx[rows_g] = np.take_along_axis(e, o, 1), np.take_along_axis(cand, o, 1)
            g0 = g1
    return _scale_back(dist, t), idx, 0


def _exact_rows(X: np.ndarray, rows: np.ndarray, k: int, t: int, budget: int = 2**22
               ) -> tuple[np.ndarray, ...]:
    """Exact float64 kNN (distances in units of ``2^-t``) of ``rows`` against all points, by direct
    differences, in memory-bounded blocks."""
    n, D = X.shape
    col_block = max(1, min(n, budget // D))
    out_d = np.empty((len(rows), k))
    out_i = np.empty((len(rows), k), dtype=np.int64)
    for j, r in enumerate(rows):  # only rows whose float32 candidates could not be certified (rare)
        d = np.empty(n)
        for c0 in range(0, n, col_block):
            diff = X[c0 : c0 + col_block] - X[r]
            if t:
                with np.errstate(under="ignore"):
                    diff = np.ldexp(diff, t, out=diff)
            d[c0 : c0 + col_block] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        d[r] = np.inf
        tiny = np.flatnonzero(d < _TINY_DIST)
        if tiny.size:
            d[tiny] = _per_pair(X[tiny] - X[r], t)
        part = np.argpartition(d, k - 1)[:k]
        kth = d[part].max()
        ids = np.flatnonzero(d <= kth)  # every tie at the k-th distance, then ordered by (distance, index)
        ids = ids[np.lexsort((ids, d[ids]))][:k]
        out_d[j], out_i[j] = d[ids], ids
    return out_d, out_i


def _block_size(n: int) -> int:
    """Default Gram block: ~1.5k rows (a 9 MB float32 block, BLAS-efficient), evened out over ``n``."""
    # at least 4 blocks from 800 points on: the blocks above the diagonal are then 5/8 of the flops of the
    # full product, or less (one block is the full product), and two threads share them evenly (the panels
    # right of 4 diagonal blocks have sizes 3:2:1; with 3 blocks, 2:1)
    nb = max(math.ceil(n / 1536), min(4, n // 200), 1)
    return math.ceil(n / nb)


def _knn_torch(
    X: np.ndarray, k: int, n_extra: int, chunk_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, int]:
    # one thread pool serves every parallel phase of the call, and every call of the process (see
    # _shared_helpers)
    threads = max(1, torch.get_num_threads())
    pool = _shared_helpers(threads - 1) if threads > 1 else None
    dist, idx, n_fallback, t = _knn_torch_pool(X, k, n_extra, chunk_size, device, threads, pool)
    return _scale_back(dist, t), idx, n_fallback


def _knn_torch_pool(X, k, n_extra, chunk_size, device, threads, pool):
    n, D = X.shape
    m = min(k + n_extra, n - 1)
    from . import _knn_kernel as kern

    X = np.ascontiguousarray(X)
    # the passes over X are shared by the threads, by rows: four ranges per thread, so a thread that runs
    # late or slowly (another process on its core) leaves less for the other to wait for. (Even at 1000 x
    # 784 they pay: in the call they read X from memory, 3-4x slower than from cache, 1.1 + 1.3 ms alone)
    step = max(64, math.ceil(n / (4 * threads)))
    ranges = [(r0, min(r0 + step, n)) for r0 in range(0, n, step)]
    stats = _parallel(lambda r: kern.column_stats(X, *r), ranges, threads, pool=pool)
    lo = np.min([st[1] for st in stats], axis=0)
    hi = np.max([st[2] for st in stats], axis=0)
    _check_finite(X, lo, hi, sum(st[4] for st in stats))
    # the float64 distances in units of 2^-t, t from the spread (see _TINY_DIST)
    t = _spread_shift(lo, hi)
    if t > 0:
        # a spread below 0.5: the varying features scaled up first (exact: a varying feature's entries are
        # at most ~2^53 times its range), so the kernel needs no factor; the distances come back in units
        # of 2^-t (the constant features are left alone: they may be large, and add 0)
        Xs = X.copy()
        vary = hi != lo
        Xs[:, vary] = np.ldexp(X[:, vary], t)
        dist, idx, n_fallback, t_in = _knn_torch_pool(Xs, k, n_extra, chunk_size, device, threads, pool)
        return dist, idx, n_fallback, t_in + t
    sc = math.ldexp(1.0, t) if t < 0 else None
    mean = np.sum([st[0] for st in stats], axis=0) / n
    if not np.isfinite(mean).all():  # the sum of huge entries overflowed: any centre in [lo, hi] serves
        mean = np.where(np.isfinite(mean), mean, 0.5 * lo + 0.5 * hi)
    exact32 = all(st[3] for st in stats)
    # A feature that is the same for every point (the border pixels of images) adds exactly 0 to every
    # distance: the float32 scores leave it out (fewer flops, a smaller error bound), and so does the
    # float64 re-rank (its sums are the same numbers either way: see _knn_kernel.pair_layout).
    varying = np.flatnonzero(hi != lo)
    if varying.size == 0:  # all points equal: one (constant) feature keeps the shapes non-empty
        varying = np.zeros(1, dtype=np.intp)
    D32 = varying.size
    mean = mean[varying]
    # centring in float64 shrinks the norms, hence the float32 expansion error, without changing distances;
    # the exact power-of-two scaling to norms <= 1 keeps every float32 square and product away from overflow
    # (inf/NaN scores would void the certificate) and from underflow far below the data's scale. The
    # largest |x − mean| is at a feature's minimum or maximum (rounded subtraction is monotone).
    amax = float(max(np.max(hi[varying] - mean), np.max(mean - lo[varying])))
    shift = (math.frexp(amax)[1] + math.ceil(0.5 * math.log2(D32))) if amax > 0 else 0
    # The score ‖x‖² + ‖y‖² − 2x·y of two float32 points is formed in float64 by the selection pass from
    # their float32 Gram entry x·y and their squared norms, summed in float64 from exact squares. A Gram
    # block on the diagonal is symmetric: BLAS computes it at half the flops (syrk, which numpy calls for
    # A @ A.T), where [x, ‖x‖², 1] · [−2y, 1, ‖y‖²] would need a full product.
    workers = max(1, torch.get_num_threads()) if device.type == "cpu" else 1
    # Few points: the whole Gram matrix (blocks, one barrier), then each row's m smallest scores by a
    # selection over its full row, done by the re-rank's own pass over its rows (no candidate heaps,
    # nothing to merge, one barrier less). More points: blocks, streamed through per-row heaps
    dense = chunk_size is None and n <= _DENSE_MAX_POINTS
    if chunk_size is None:
        chunk_size = _block_size(n)
    # the re-rank (and, in the dense case, the selection) runs by pieces of rows, about four per thread: a
    # thread that starts late or is descheduled leaves less to wait for
    piece = max(64, min(chunk_size, math.ceil(n / (4 * threads))))
    pieces = [(a, min(a + piece, n)) for a in range(0, n, piece)]
    # the dense Gram matrix by oneDNN where it pays (see _onednn_gram), in blocks of one shape: at least
    # four a side (the ten on and above the diagonal are 5/8 of the full product), the rows padded with
    # zeros to whole blocks; ~256 rows a block where oneDNN still takes them (the blocks above the diagonal
    # are nearer half the product, at the same rate: 2000 MNIST points on one thread, 14.3 -> 12.7 ms)
    onednn = None
    if dense and device.type == "cpu":
        for sides in (max(4, 2 * workers, math.ceil(n / _GRAM_BLOCK_ROWS)), max(4, 2 * workers)):
            gram_block = math.ceil(n / sides)
            if (onednn := _onednn_gram(gram_block, D32)) is not None:
                break
    if onednn is None:
        gram_block = math.ceil(n / max(4, 2 * workers))
    left = np.empty((n if onednn is None else gram_block * math.ceil(n / gram_block), D32), dtype=np.float32)
    left[n:] = 0
    # Data that came from float32 (most data sets) gather half the bytes from a float32 copy: the values
    # are the same, so the float64 differences of the re-rank are bit for bit those of the float64 input
    gather32 = exact32 and n * D32 * 8 > _GATHER_FLOAT64_BYTES
    # the varying features in the re-rank's order of addition (_knn_kernel.pair_layout), copied by the
    # same pass
    pos, pad, width = _pair_layout(D, varying)
    P = np.empty((n, width), dtype=np.float32 if gather32 else np.float64)
    P[:, pad] = 0
    sq = np.empty(n)
    cols, scale = varying.astype(np.int64), math.ldexp(1.0, -shift)

    def inputs(r):
        kern.score_inputs(X, *r, cols, mean, scale, left, pos, P, sq)

    if not dense:  # (dense: in the same phase as the products, see below)
        _parallel(inputs, ranges, threads, pool=pool)
    if device.type == "cpu":
        # (where oneDNN does not pay: see _onednn_gram) numpy's float32 GEMM (OpenBLAS) runs these shapes
        # ~1.5x faster than torch's default (MKL's AVX2 code on AMD), and always in full float32
        def make_scores():
            return _numpy_scores(left)

        u = 2.0**-24
    else:
        def make_scores():
            return _torch_scores(left, device)

        u = 2.0**-24  # :func:`_knn` holds torch's products at IEEE float32
    u32 = 2.0**-24
    u64 = 2.0**-53
    K = D32 + 2
    gamma = K * u / (1 - K * u) if K * u < 0.5 else math.inf
    # the score's error against the squared distance of the float32 points: the Gram entry is a float32 dot
    # product of D32 terms, off by at most γ_D32 Σ|x_t y_t| <= γ_D32 ‖x‖ ‖y‖ <= γ_D32 (‖x‖ + ‖y‖)² / 4
    # (any order of summation, fused or not); the squared norms are float64 sums of exact squares (relative
    # error γ64_D32) and the score's two float64 operations add 2 u64 (‖x‖ + ‖y‖)². So the error is at most
    # (γ_D32 / 2 + γ64_(D32+2)) (‖x‖ + ‖y‖)², below c_err (‖x‖ + ‖y‖)² with
    #   c_err = 2 (γ_K + 5 u32),  K = D32 + 2,
    # which is kept generous: it also stands for the second-order terms (float64 centring, products of
    # errors) and it covers a matmul of lower precision u on an accelerator
    c_err = 2.0 * (gamma + 5 * u32)
    # gradual underflow adds an absolute error of at most 2^-150 per float32 rounding (casts, squares,
    # products, additions); with norms <= 1 these terms are tiny but not relative to the data, so they are
    # bounded apart
    abs_sq = (2 * D32 + 12) * 2.0**-149
    abs_pt = math.sqrt(D32) * 2.0**-147
    # the float64 distances themselves (over all D features) carry a relative error up to ~(D + 2) u64
    shrink = 1 - (D + 4) * u64

    # the bounds on a pair's float64 distance (scaled units) from its float32 score, for a row of norm xn
    # (the other point's norm is at most nmax), with e = c_err (xn + nmax)² + abs_sq:
    #   lower = (sqrt(max(score − e, 0)) − 2 u32 (xn + nmax) − 2 abs_pt) · shrink
    #   upper = (sqrt(score + e) + 2 u32 (xn + nmax) + 2 abs_pt) / shrink
    # computed per row by the compiled re-rank (_knn_kernel.rerank_prepare / rerank_finish), once every
    # squared norm is known (nmax)
    norms = bounds = None

    def finalize():
        nonlocal norms, bounds
        norms = np.sqrt(sq)
        bounds = (float(norms.max()), c_err, abs_sq, u32, abs_pt, shrink)

    if not dense:
        finalize()

    if dense:
        if onednn is None:
            G, gram_tasks = _gram_tasks(make_scores, n, workers)
        else:
            G, gram_tasks = _gram_tasks(_onednn_scores(left, gram_block, onednn), n, workers, gram_block)
        best_v, best_i, stores = np.empty((n, m)), np.empty((n, m), dtype=np.int64), []
        tau = np.empty(n)  # (each row's threshold: set by the selection, not used further)
    else:
        # the streamed blocks by oneDNN too, where it pays (several shapes: their kernels are built once
        # per process, ~1 ms each, against ~0.2 s of products from 5000 points on)
        op = _onednn_gram(chunk_size, D32) if device.type == "cpu" else None
        if op is not None:
            make_scores = _onednn_panels(left, op)
        with _one_openmp_caller(None if op is None else _openmp_runtime()):
            best_v, best_i, stores = _candidates(make_scores, sq, m, chunk_size, workers, pool, op is None)
    dist = np.empty((n, k))
    idx = np.empty((n, k), dtype=np.int64)

    def rerank(a, b):
        """Float64 distances of rows ``[a, b)``'s candidates, sorted; returns the uncertified rows."""
        vals = np.empty((b - a, m))
        cand = np.empty((b - a, m), dtype=np.int64)
        n_keep = np.empty(b - a, dtype=np.int64)
        if dense:
            kern.smallest_in_rows(G[a:b], a, 0, sq, best_v, best_i, tau, True)
        for store_v, store_i in stores:  # the other threads' candidates of these rows
            kern.merge_stores(best_v, best_i, store_v, store_i, a, b)
        # sorted by score (a score ties only with the same pair's symmetric twin); a candidate whose lower
        # bound exceeds the k-th smallest upper bound is farther than the k-th neighbour: no float64
        # distance is needed for it. The kept ones form a prefix of the sorted row.
        kern.rerank_prepare(best_v, best_i, a, norms, k, *bounds, vals, cand, n_keep)
        d64 = np.empty((b - a, m))
        kern.direct_distances(P, a, cand, n_keep, sc, d64)
        _refine_tiny(X, np.arange(a, b), cand, d64, t)
        # (d64 is in units of 2^-t, the scores in units of 2^shift)
        ok = kern.rerank_finish(d64, cand, vals, a, norms, k, *bounds, math.ldexp(1.0, -shift - t),
                                m == n - 1, dist[a:b], idx[a:b])
        return a + np.flatnonzero(~ok)

    # numpy is single-threaded but releases the GIL in every array operation: pieces of rows re-ranked by
    # a few threads use the cores the GEMM used (at n = 2000 the re-rank costs as much as the GEMM)
    if dense:
        # one phase: the float32 rows (score_inputs), the Gram blocks, the norms' maximum, then the pieces
        # of rows; each item starts as soon as those it reads are done (a block once its rows are in, a
        # piece once the blocks holding its rows are: a thread done with the products takes the first
        # rows while the other finishes the last block, instead of waiting for it). No barrier between
        # the stages, and the helpers are woken once (on a busy machine a helper woken for the float32
        # rows alone often came when they were done). Every item waits only for items before it, all
        # taken before it: never for one nobody runs
        n_in, n_blocks = len(ranges), len(gram_tasks)
        in_done = [threading.Event() for _ in ranges]
        done = [threading.Event() for _ in gram_tasks]
        final = threading.Event()
        # the ranges of rows are `step` long: a block reads those that overlap its rows and its columns
        block_reads = [sorted({*range(ga // step, (gb - 1) // step + 1),
                               *range(gc0 // step, (gc1 - 1) // step + 1)})
                       for ga, gb, gc0, gc1, _ in gram_tasks]
        needs = [[t for t, (ga, gb, gc0, gc1, _) in enumerate(gram_tasks)
                  if ga < b and a < gb or gc0 < b and a < gc1] for a, b in pieces]

        def item(i):
            if i < n_in:
                try:
                    inputs(ranges[i])
                finally:
                    in_done[i].set()
                return None
            i -= n_in
            if i < n_blocks:
                for r in block_reads[i]:
                    in_done[r].wait()
                try:
                    gram_tasks[i][-1]()
                finally:
                    done[i].set()
                return None
            i -= n_blocks
            if i == 0:  # (taken after every block: the rows were all in before)
                for e in in_done:
                    e.wait()
                try:
                    finalize()
                finally:
                    final.set()
                return None
            p = i - 1
            final.wait()
            for t in needs[p]:
                done[t].wait()
            return rerank(*pieces[p])

        # (oneDNN's products run on the caller's thread alone, as on each helper: see _knn_torch)
        first = n_in + n_blocks + 1
        with _one_openmp_caller(None if onednn is None else _openmp_runtime()):
            failed = _parallel(item, range(first + len(pieces)), workers, blas=onednn is None,
                               pool=pool)[first:]
    else:
        failed = _parallel(lambda ab: rerank(*ab), pieces, threads, pool=pool)
    failed = [f for f in failed if f.size]
    n_fallback = 0
    if failed:
        rows = np.concatenate(failed)
        n_fallback = len(rows)
        dist[rows], idx[rows] = _exact_rows(X, rows, k, t)
    return dist, idx, n_fallback, t


def _openmp_runtime():
    """torch's OpenMP runtime, whose per-thread thread count torch's CPU operations follow, or ``None``."""
    from ..nets._workers import _openmp

    return _openmp()


def _one_openmp_thread(lib) -> None:
    """Run this (helper) thread's torch operations on it alone."""
    from ..nets._workers import _one_openmp_thread

    _one_openmp_thread(lib)


@contextlib.contextmanager
def _one_openmp_caller(lib):
    """The calling thread's torch operations on it alone inside the block, its thread count restored
    after (a no-op without ``lib``)."""
    if lib is None:
        yield
        return
    before = torch.get_num_threads()
    lib.omp_set_num_threads(1)
    try:
        yield
    finally:
        lib.omp_set_num_threads(before)


@functools.cache
def _avx512_kernels() -> bool:
    """Whether torch's CPU kernels (oneDNN's products among them) run AVX-512 code on this machine."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _onednn_gram(block: int, d: int):
    """torch's oneDNN float32 product, where ``block x block`` Gram blocks of ``d`` features are worth
    computing by it, else ``None``.

    Why: numpy's OpenBLAS runs its AVX2 (Haswell) kernels on AMD processors it does not know, where oneDNN
    uses AVX-512: on the reference machine (AMD EPYC) the ten blocks on and above the diagonal of the
    1000-point MNIST Gram matrix (594 varying features) take 3.9 ms by oneDNN on one thread, against 6.2 ms
    by OpenBLAS (syrk for the diagonal blocks). Both are IEEE float32 dot products in some order (the kNN
    holds oneDNN at IEEE float32: :func:`.._matmul.ieee_float32`), so one error bound covers either.
    oneDNN builds (and caches) a kernel per shape, ~1.3 ms the first time: the blocks share one shape, and
    products too small to repay it stay with numpy (the threshold of :func:`.._matmul.linear32`). Each
    thread's products must run on that thread alone (:func:`_one_openmp_thread`), which needs torch's
    OpenMP runtime.

    Without AVX-512 (:func:`_avx512_kernels`) oneDNN's AVX2 code is the slower one: on a 2-core AMD EPYC
    with AVX2 only, 1000 / 2000 MNIST points (one thread, CPU time of the whole call, load ~8) take 36.5 /
    89 ms with oneDNN's blocks against 24.6 / 67 ms with OpenBLAS's (Haswell kernel, syrk on the diagonal),
    so there the products stay with numpy."""
    from .._matmul import _ONEDNN_MIN_MACS, _onednn_linear

    if block * block * d < _ONEDNN_MIN_MACS or not torch.backends.mkldnn.enabled or not _avx512_kernels():
        return None
    op = _onednn_linear()
    if op is None or _openmp_runtime() is None:
        return None
    return op


def _onednn_scores(left: np.ndarray, block: int, op):
    """``make_scores`` for :func:`_gram_tasks` by oneDNN's ``op``: the block of rows ``[a, b)`` and columns
    ``[c0, c1)``, computed as the ``block x block`` product of rows ``a ...`` and ``c0 ...`` of ``left``
    (padded with zero rows to whole blocks: one shape for every block) and copied into ``out``. A diagonal
    block is the full product (oneDNN has no syrk); each row reads only its own entries, so the two
    triangles need not agree."""
    lt = torch.from_numpy(left)

    def scores(a, b, c0, c1, out):
        G = op(lt[a : a + block], lt[c0 : c0 + block], None, "none", [], "").numpy()
        out[...] = G[: b - a, : c1 - c0]
        return out

    return lambda: scores


def _onednn_panels(left: np.ndarray, op):
    """``make_scores`` for :func:`_candidates` by oneDNN's ``op`` (see :func:`_onednn_gram`): each block a
    fresh array (oneDNN writes no given buffer); a diagonal block is the full product (each of its rows
    is selected from its own entries, so the two triangles need not agree)."""
    lt = torch.from_numpy(left)

    def scores(a, b, c0, c1, out=None):
        G = op(lt[a:b], lt[c0:c1], None, "none", [], "").numpy()
        if out is None:
            return G
        out[...] = G
        return out

    return lambda: scores


def _numpy_scores(left: np.ndarray):
    """float32 Gram block ``x·y`` of rows ``[a, b)`` against columns ``[c0, c1)`` by numpy's BLAS, written
    into one reused buffer (a fresh 64 MB array per panel costs its page faults again). A diagonal block
    is ``A @ A.T`` of one operand, which numpy hands to syrk (half the flops). One such function per
    thread: the buffer is its own."""
    buf = np.empty(0, dtype=np.float32)

    def scores(a, b, c0, c1, out=None):
        nonlocal buf
        if out is None:
            size = (b - a) * (c1 - c0)
            if buf.size < size:
                buf = np.empty(size, dtype=np.float32)
            out = buf[:size].reshape(b - a, c1 - c0)
        rows = left[a:b]
        cols = rows if (c0, c1) == (a, b) else left[c0:c1]
        return np.matmul(rows, cols.T, out=out)

    return scores


def _torch_scores(left: np.ndarray, device: torch.device):
    """The same Gram blocks by torch on ``device`` (an accelerator), returned as numpy."""
    lt = torch.from_numpy(left).to(device)

    def scores(a, b, c0, c1, out=None):
        G = (lt[a:b] @ lt[c0:c1].T).cpu().numpy()
        if out is None:
            return G
        out[...] = G
        return out

    return scores


_BLAS_LOCK = threading.Lock()


_SHARED = threading.Lock(), {}


def _fresh_locks() -> None:
    """In a forked child: free locks and no helpers. The child inherits each lock as the parent held it at
    the fork, and a call running on another thread of the parent then (a limited BLAS section, a first
    call starting its helpers) would have left it held for good; its first kNN would wait forever."""
    global _BLAS_LOCK, _SHARED
    _BLAS_LOCK = threading.Lock()
    _SHARED = threading.Lock(), {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks)


def _shared_helpers(count: int) -> _Helpers:
    """The process's :class:`_Helpers`, at least ``count`` of them, started at the first call that needs
    them and kept (idle, blocked on their queue) for the next calls.

    Why: a thread started for each call first waits for the scheduler: Linux places a new thread behind
    the threads already running, so on a busy machine the helper of a 1000-point kNN started 1.3-4 ms
    into a ~9 ms call, the caller doing everything alone until then; a thread woken from sleep is run
    at once. The helpers hold no data between calls (each job brings its own), so the answers do not
    depend on them; and since every caller also works through its own items and cancels the jobs no
    helper has started, callers from several threads may share them, and a child process (``fork``
    copies no threads) gets helpers of its own. Each helper's torch operations (the oneDNN Gram blocks)
    run on that helper alone: a team of OpenMP threads per helper would oversubscribe the cores and
    spin on them after every product."""
    lock, pools = _SHARED
    with lock:
        pool = pools.get(os.getpid())
        if pool is None:
            pools.clear()  # (a forked child's copy of its parent's helpers: they do not run here)
            lib = _openmp_runtime()
            pool = pools[os.getpid()] = _Helpers(0, None if lib is None else functools.partial(
                _one_openmp_thread, lib))
        pool.grow(count)
    return pool


class _Helpers:
    """``count`` helper threads for :func:`_parallel`, started without waiting for them to run.

    ``threading.Thread.start`` (hence ``ThreadPoolExecutor.submit``) blocks until the new thread has run
    once: on a loaded machine that takes milliseconds, during which the caller, who could be working,
    waits (measured: ~3.7 ms of a 10 ms kNN call at a load of 3 on 2 cores). ``_thread.start_new_thread``
    returns at once; a job submitted before its helper runs waits in the queue, and is cancelled if the
    caller has done the work by then. ``close()`` lets the helpers exit once idle.
    """

    def __init__(self, count: int, init=None):
        import queue

        self._jobs = queue.SimpleQueue()
        self._count = 0
        self._init = init
        self.grow(count)

    def grow(self, count: int) -> None:
        """Start helpers until there are ``count``."""
        import _thread

        while self._count < count:
            _thread.start_new_thread(self._serve, ())
            self._count += 1

    def _serve(self):
        if self._init is not None:
            self._init()
        while (job := self._jobs.get()) is not None:
            job.run()

    def submit(self, fn) -> _Job:
        job = _Job(fn)
        self._jobs.put(job)
        return job

    def close(self):
        for _ in range(self._count):
            self._jobs.put(None)


class _Job:
    """One call of ``fn`` on a helper: cancellable until it starts; ``result()`` waits and re-raises."""

    def __init__(self, fn):
        self._fn = fn
        self._lock = threading.Lock()
        self._state = "pending"
        self._done = threading.Event()
        self._error = None

    def run(self):
        with self._lock:
            if self._state != "pending":
                return
            self._state = "running"
        try:
            self._fn()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        finally:
            self._done.set()

    def cancel(self) -> bool:
        with self._lock:
            if self._state == "pending":
                self._state = "cancelled"
            return self._state == "cancelled"

    def result(self):
        self._done.wait()
        if self._error is not None:
            raise self._error


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # inspecting the loaded libraries takes ~3 ms: once per process


def _parallel(fn, items, workers: int, blas: bool = False, pool=None) -> list:
    """``[fn(x) for x in items]`` on up to ``workers`` threads (numpy releases the GIL in its array
    operations).

    ``blas``: the matrix products inside share the same budget: each thread runs its products on
    ``workers // threads`` BLAS threads (one, when the items are shared among threads), so the threads use
    the cores without oversubscription, and independent single-threaded products keep going when another
    process takes a core, where one product split over both cores waits for its slower half. The limit is
    set on the process's BLAS for the duration (threadpoolctl) and restored after.

    ``pool``: :class:`_Helpers` of at least ``workers - 1`` threads to help on (else some are started for
    the call). The calling thread works too, and the items are taken one at a time by whichever thread is
    free: on a loaded machine a helper that is not scheduled in time takes nothing (its turn is
    cancelled), so nobody waits for a thread that has not started.
    """
    threads = max(1, min(workers, len(items)))
    # the limit is process-wide: two calls from different threads must not interleave their set and restore
    # (the second would restore the first's limit for good), so limited sections run one at a time.
    # threadpoolctl applies a limit when it is created, hence inside the lock.
    with contextlib.ExitStack() as stack:
        if blas:
            stack.enter_context(_BLAS_LOCK)
            stack.enter_context(_blas_controller().limit(limits=max(1, workers // threads), user_api="blas"))
        if threads == 1:
            return [fn(x) for x in items]
        if pool is None:
            pool = _Helpers(threads - 1)
            stack.callback(pool.close)
        results = [None] * len(items)
        queue = iter(range(len(items)))
        lock = threading.Lock()

        def drain():
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                results[i] = fn(items[i])

        helpers = [pool.submit(drain) for _ in range(threads - 1)]
        try:
            drain()
        finally:
            for h in helpers:
                if not h.cancel():  # started: let it finish its item (and raise its error, if any)
                    h.result()
        return results


def _gram_tasks(make_scores, n: int, workers: int, block=None):
    """The float32 Gram matrix ``x_i·x_j`` of all points (``make_scores`` as for :func:`_candidates`), as
    an empty ``(n, n)`` array and the tasks that fill it: ``(a, b, c0, c1, run)``, ``run()`` computing
    the block of rows ``[a, b)`` and columns ``[c0, c1)`` on and above the diagonal and mirroring it below
    (a diagonal block by syrk: half its flops). Blocks in row order: the first rows are complete first."""
    from . import _knn_kernel as kern

    G = np.empty((n, n), dtype=np.float32)
    # two blocks per thread and side: 2w diagonal blocks (syrk) and w (2w - 1) others, shared by whichever
    # thread is free, balance the threads within a few percent (one block per thread and side would leave
    # the two diagonal syrks of one thread against the other thread's single, faster GEMM)
    if block is None:
        block = math.ceil(n / (2 * workers if workers > 1 else 1))
    starts = range(0, n, block)

    def task(a, b, c0, c1):
        def run():
            make_scores()(a, b, c0, c1, out=G[a:b, c0:c1])
            if c0 != a:
                kern.mirror(G, a, b, c0, c1)

        return a, b, c0, c1, run

    return G, [task(a, min(a + block, n), c0, min(c0 + block, n)) for a in starts for c0 in starts if c0 >= a]


def _candidates(make_scores, sq: np.ndarray, m: int, block: int, workers: int = 1, pool=None, blas=True):
    """The ``m`` smallest scores ``sq[r] + sq[c] − 2 x_r·x_c`` of every row ``r`` (self excluded) and their
    columns (in no order), as ``(scores, columns, stores)``: ``stores`` are the other threads' candidate
    stores, still to be merged into the first (:func:`._knn_kernel.merge_stores`, by the re-rank, row by
    row, in parallel).

    The score is symmetric, so the Gram matrix is computed by blocks on and above the diagonal only: a
    diagonal block by syrk (half its flops), the panel right of it in column chunks. The diagonal blocks
    come first: a selection in each of their full rows (:func:`._knn_kernel.smallest_in_rows`) gives
    every row a threshold, its ``m``-th best score so far. In a panel each entry serves its row and, along
    the other axis, its column, and only the entries below a row's threshold (a few per row) enter its
    candidate heap (compiled: :func:`._knn_kernel.select_block`, one pass over the block, the scores
    formed there in float64); the thresholds tighten as blocks are met. Every point outside a row's
    result has a score at least its ``m``-th (equal scores may be left out, which the certificate allows).

    ``make_scores()`` returns a Gram-block function for one thread. With ``workers > 1`` the blocks are
    shared among threads (each product on one BLAS thread), taken one at a time by whichever is free;
    every thread merges into its own candidate store (blocks write to overlapping rows), all filter
    against one shared threshold per row (any store's ``m``-th best bounds the union's from above), and
    the stores are merged at the end: each pair of points is met in exactly one block, hence lies in one
    store. ``pool``: the threads to run on (see :func:`_parallel`); ``blas``: the products are numpy's,
    whose BLAS threads share the budget (:func:`_parallel`).
    """
    from . import _knn_kernel as kern

    n = len(sq)
    starts = list(range(0, n, block))
    n_stores = min(workers, len(starts) * (len(starts) + 1) // 2)
    tau = np.full(n, np.inf)
    stores = [(np.full((n, m), np.inf), np.zeros((n, m), dtype=np.int64)) for _ in range(n_stores)]
    # the diagonal blocks first (a selection in each of their full rows sets the row's threshold; every
    # thread takes diagonal blocks only until they run out, so its store's rows are empty when it meets
    # them: rows of different diagonal blocks are disjoint), then the panels
    # right of them in column chunks of <= 2^24 scores (64 MB) per thread: few, large matrix products,
    # which BLAS runs near its peak; largest first, so the threads end together
    tasks = [(a, min(a + block, n), a, min(a + block, n)) for a in starts]
    panels = []
    for a in starts:
        b = min(a + block, n)
        width = max(block, _PANEL_SCORES // ((b - a) * n_stores))
        panels += [(a, b, c0, min(c0 + width, n)) for c0 in range(b, n, width)]
    panels.sort(key=lambda t: -(t[1] - t[0]) * (t[3] - t[2]))
    queue = iter(tasks + panels)
    lock = threading.Lock()

    def worker(store):
        store_v, store_i = store
        scores = make_scores()
        while True:
            with lock:
                task = next(queue, None)
            if task is None:
                return
            a, b, c0, c1 = task
            if c0 == a:  # a row's first block (its store's rows are still empty): a selection
                kern.smallest_in_rows(scores(a, b, a, b), a, a, sq, store_v, store_i, tau, False)
            else:
                kern.select_block(scores(a, b, c0, c1), a, c0, sq, store_v, store_i, tau, False)

    _parallel(worker, stores, workers, blas=blas, pool=pool)
    return stores[0][0], stores[0][1], stores[1:]
