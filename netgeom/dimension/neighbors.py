"""Exact Euclidean k-nearest neighbours, computed once and shared by every intrinsic-dimension estimator.

Two back-ends:

* ``"torch"`` — chunked float32 ``X @ X.T`` + ``topk`` (the speed of BLAS), asking for ``k + n_extra``
  candidates per row; the candidates' distances are then recomputed in float64 *directly* as ``‖x − y‖``
  (not through ``‖x‖² + ‖y‖² − 2x·y``, which loses all precision for close points) and re-ranked. A
  rigorous float32 rounding-error bound certifies, row by row, that no point outside the candidate set can be
  closer than the k-th re-ranked neighbour; rows that fail the certificate are recomputed exactly in float64
  against every point (counted in :attr:`NeighborGraph.n_fallback`). The result is therefore the exact
  float64 kNN (indices up to ties).
* ``"kdtree"`` — :class:`scipy.spatial.cKDTree`, exact and fast in low ambient dimension.

``method="auto"`` picks the k-d tree for ≤ 16 features, torch otherwise.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .._validation import check_array, check_choice, check_device, check_int
from ..results import Result

__all__ = ["NeighborGraph", "nearest_neighbors", "deduplicate"]

_KDTREE_MAX_FEATURES = 16
_DUPLICATE_POLICIES = ("drop", "error", "keep")
# unit round-off of float32 matmul under torch's float32_matmul_precision setting (bf16 / tf32 / fp32)
_MATMUL_UNIT_ROUNDOFF = {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}


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
    n_extra: int = 10,
    device: str | torch.device = "cpu",
) -> NeighborGraph:
    """Exact Euclidean ``k`` nearest neighbours of every row of ``X`` (self excluded), in float64.

    Parameters
    ----------
    X : array-like ``(n, D)`` of finite numbers (numpy or torch).
    k : number of neighbours, ``1 <= k < number of distinct points``.
    method : ``"auto"`` (k-d tree for ``D <= 16``, else torch), ``"torch"`` or ``"kdtree"``.
    duplicates : ``"drop"`` (default) removes exact duplicate rows first and reports how many in
        ``n_dropped``; ``"error"`` raises if any exist; ``"keep"`` keeps them (zero distances then appear).
    chunk_size : rows per block of the torch back-end; memory is about ``chunk_size * n * 4`` bytes.
        Default: enough rows for ~128 MB.
    n_extra : extra float32 candidates per row re-ranked in float64.
    device : torch device for the float32 matmul.

    Example
    -------
    >>> import numpy as np
    >>> g = nearest_neighbors(np.random.default_rng(0).normal(size=(100, 50)), 5)
    >>> g.distances.shape, g.n_dropped
    ((100, 5), 0)
    """
    X = check_array(X, "X", ndim=2, dtype=np.float64)
    method = check_choice(method, "method", ("auto", "torch", "kdtree"))
    duplicates = check_choice(duplicates, "duplicates", _DUPLICATE_POLICIES)
    k = check_int(k, "k", minimum=1)
    n_extra = check_int(n_extra, "n_extra", minimum=0)
    device = check_device(device)  # an unknown or absent device is an error, never a silent CPU run
    if X.shape[1] < 1:
        raise ValueError(f"X must have at least one feature, got shape {X.shape}")

    # squared distances are summed in float64: they must not overflow (sufficient: 4 D max|x|² < 1e308)
    amax = float(np.abs(X).max()) if X.size else 0.0
    if amax > 0.5e154 / math.sqrt(X.shape[1]):
        raise ValueError(
            f"X has entries up to {amax:.3g}: squared distances would overflow float64; rescale X "
            "(every intrinsic-dimension estimate is scale-invariant)"
        )
    n_input = len(X)
    if method == "kdtree" and device.type != "cpu":
        raise ValueError(f"method='kdtree' runs on the CPU; device={str(device)!r} needs method='torch'")
    if method == "auto":
        # an accelerator was asked for: use it (the k-d tree would run on the CPU)
        low_dim = X.shape[1] <= _KDTREE_MAX_FEATURES and device.type == "cpu"
        method = "kdtree" if low_dim else "torch"
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    if k >= n_input:
        raise ValueError(f"k={k} needs at least k+1={k + 1} distinct points, got {n_input} points")
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
            raise ValueError(
                f"X has {n_input - len(kept)} exact duplicate row(s); they give zero neighbour distances "
                "(infinite log-ratios). Pass duplicates='drop' to remove them"
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


def _knn(X, k, method, n_extra, chunk_size, device):
    if method == "kdtree":
        dist, idx = _knn_kdtree(X, k)
        return dist, idx, 0
    if chunk_size is None:
        chunk_size = int(min(max(2**25 // len(X), 16), len(X)))
    # a TF32/bf16 matmul (precision "high"/"medium", often set globally for training) loosens the error
    # bound so much that almost every row needs the slow exact rescan; full float32 costs little here.
    # The caller's setting is restored on the way out.
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        return _knn_torch(X, k, n_extra, chunk_size, torch.device(device))
    finally:
        torch.set_float32_matmul_precision(previous)


def _knn_kdtree(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    tree = cKDTree(X)
    dist, idx = tree.query(X, k=k + 1, workers=max(1, torch.get_num_threads()))
    idx = idx.astype(np.int64)
    # self is normally column 0, but with zero-distance duplicates it may sit anywhere among the ties
    is_self = idx == np.arange(len(X))[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True  # self lies beyond k+1 tied points: drop the last tie instead
    keep = ~is_self
    dist = dist[keep].reshape(len(X), k)
    idx = idx[keep].reshape(len(X), k)
    return _sort_rows(dist, idx)


def _sort_rows(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (distance, index) so ties are broken deterministically."""
    o1 = np.argsort(idx, axis=1, kind="stable")
    o2 = np.argsort(np.take_along_axis(dist, o1, 1), axis=1, kind="stable")
    order = np.take_along_axis(o1, o2, 1)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(idx, order, 1)


def _exact_rows(X: np.ndarray, rows: np.ndarray, k: int, budget: int = 2**22) -> tuple[np.ndarray, ...]:
    """Exact float64 kNN of ``rows`` against all points, by direct differences, in memory-bounded blocks."""
    n, D = X.shape
    col_block = max(1, min(n, budget // D))
    out_d = np.empty((len(rows), k))
    out_i = np.empty((len(rows), k), dtype=np.int64)
    for j, r in enumerate(rows):  # only rows whose float32 candidates could not be certified (rare)
        d = np.empty(n)
        for c0 in range(0, n, col_block):
            diff = X[c0 : c0 + col_block] - X[r]
            d[c0 : c0 + col_block] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        d[r] = np.inf
        part = np.argpartition(d, k - 1)[:k]
        kth = d[part].max()
        ids = np.flatnonzero(d <= kth)  # every tie at the k-th distance, then ordered by (distance, index)
        ids = ids[np.lexsort((ids, d[ids]))][:k]
        out_d[j], out_i[j] = d[ids], ids
    return out_d, out_i


def _knn_torch(
    X: np.ndarray, k: int, n_extra: int, chunk_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, int]:
    n, D = X.shape
    m = min(k + n_extra, n - 1)
    # centring in float64 shrinks the norms, hence the float32 expansion error, without changing distances;
    # the exact power-of-two scaling to norms <= 1 keeps every float32 square and product away from overflow
    # (inf/NaN scores would void the certificate) and from underflow far below the data's scale
    Xc = X - X.mean(axis=0)
    amax = float(np.abs(Xc).max())
    shift = (math.frexp(amax)[1] + math.ceil(0.5 * math.log2(D))) if amax > 0 else 0
    X32 = torch.from_numpy(np.ldexp(Xc, -shift).astype(np.float32))
    sq = X32.double().square_().sum(1)  # exact-ish squared norms of the float32 points
    sq32 = sq.float().to(device)
    X32 = X32.to(device)
    norms = sq.sqrt()
    nmax = float(norms.max())
    u = _MATMUL_UNIT_ROUNDOFF.get(torch.get_float32_matmul_precision(), 2.0**-8)
    u32 = 2.0**-24
    u64 = 2.0**-53
    gamma = D * u / (1 - D * u) if D * u < 0.5 else math.inf
    # rigorous bound on |fl(‖y‖² − 2x·y) − (‖y‖² − 2x·y)| is (γ_D + 2u)(‖x‖ + ‖y‖)²; doubled for the
    # second-order terms (float64 centring, the final addition) that the first-order bound leaves out
    c_err = 2.0 * (gamma + 3 * u32)
    # gradual underflow adds an absolute error of at most 2^-150 per float32 rounding (cast, square,
    # product); with norms <= 1 these terms are tiny but not relative to the data, so they are bounded apart
    abs_sq = (2 * D + 8) * 2.0**-149
    abs_pt = math.sqrt(D) * 2.0**-147
    # the float64 distances themselves carry a relative error up to ~(D + 2) u64
    shrink = 1 - (D + 4) * u64

    dist = np.empty((n, k))
    idx = np.empty((n, k), dtype=np.int64)
    failed = []
    # float64 re-ranking in cache-sized blocks (~4 MB) with numpy: the gather is memory-bound, and many
    # small multi-threaded torch ops stall badly when the cores are shared
    sub = max(1, min(chunk_size, 2**19 // max(m * D, 1)))
    for a in range(0, n, chunk_size):
        b = min(a + chunk_size, n)
        # ranking within a row needs only ‖y‖² − 2x·y: one fused addmm pass
        G = torch.addmm(sq32[None, :], X32[a:b], X32.T, beta=1.0, alpha=-2.0)
        r = torch.arange(b - a, device=device)
        G[r, r + a] = math.inf
        vals, cand = torch.topk(G, m, dim=1, largest=False, sorted=False)
        cand = cand.cpu()
        s_max = vals.max(dim=1).values.double().cpu()  # every non-candidate has a value >= this
        cand = cand.numpy()
        d64 = np.empty((b - a, m))
        for s0 in range(0, b - a, sub):
            cd = cand[s0 : s0 + sub]
            diff = np.take(X, cd, axis=0)
            np.subtract(diff, X[a + s0 : a + s0 + len(cd), None, :], out=diff)
            d64[s0 : s0 + len(cd)] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        d_sorted, order = _sort_rows(d64, cand)
        dk = torch.from_numpy(np.ldexp(d_sorted[:, k - 1], -shift))
        rows = torch.arange(a, b)
        xn = norms[rows]
        lower_sq = s_max + sq[rows] * (1 - D * u64) - c_err * (xn + nmax) ** 2 - abs_sq
        lower = (lower_sq.clamp_min(0).sqrt() - 2 * u32 * (xn + nmax) - 2 * abs_pt) * shrink
        # all other points are candidates: nothing to certify; or the k-th distance is 0: no point is closer
        # and any k zero-distance neighbours are the kNN up to ties (rows with many duplicates)
        ok = (dk < lower) | (m == n - 1) | (dk == 0)
        dist[a:b] = d_sorted[:, :k]
        idx[a:b] = order[:, :k]
        if not bool(ok.all()):
            failed.append(rows[~ok])
    n_fallback = 0
    if failed:
        rows = torch.cat(failed).numpy()
        n_fallback = len(rows)
        dist[rows], idx[rows] = _exact_rows(X, rows, k)
    return dist, idx, n_fallback
