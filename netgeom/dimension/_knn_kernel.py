"""Compiled (numba) gather of float64 differences for the re-rank of :mod:`netgeom.dimension.neighbors`.

Only the differences are computed here: each is one correctly rounded float64 subtraction, so they are
bit for bit numpy's. The sums of squares stay with ``np.einsum`` (whose summation order, SIMD-dependent,
defines the float64 distances the results are compared with).

Compiled on first use and cached on disk (``cache=True``): later processes load it in well under a second.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def gather_diff(X, Xg, a0, cand, n_keep, out):
    """``out[i, j] = Xg[cand[i, j]] − X[a0 + i]`` in float64 for ``j < n_keep[i]``; the other slots of
    ``out[i]`` (up to ``out.shape[1]``) are zeroed. ``Xg`` holds the values of ``X`` (``X`` itself or an
    exact float32 copy), so the differences are those of ``X``; one pass, no float32 temporary."""
    D = X.shape[1]
    for i in range(out.shape[0]):
        x = X[a0 + i]
        for j in range(out.shape[1]):
            o = out[i, j]
            if j < n_keep[i]:
                y = Xg[cand[i, j]]
                for t in range(D):
                    o[t] = y[t] - x[t]
            else:
                for t in range(D):
                    o[t] = 0.0


# ------------------------------------------------------------------------------------ candidate selection
# A candidate store is a max-heap of m (score, column) pairs per row (``hv[r, 0]`` the largest score), all
# +inf at first. ``tau[r]`` is a threshold shared by every store: an entry below it enters the row's heap.
# A store that holds m entries below some value proves that the row's m best lie below it, so ``tau[r]``
# may be lowered to any store's heap maximum, by any thread at any time: a value read late, or an update
# lost to another thread's write, only leaves a larger (still valid) threshold.


@numba.njit(cache=True, nogil=True, inline="always")
def _push(hv, hi, r, s, c):
    """Replace row ``r``'s largest entry by ``(s, c)`` (``s`` below it) and restore the heap."""
    m = hv.shape[1]
    i = 0
    while True:
        left = 2 * i + 1
        if left >= m:
            break
        big = left
        if left + 1 < m and hv[r, left + 1] > hv[r, left]:
            big = left + 1
        if hv[r, big] <= s:
            break
        hv[r, i] = hv[r, big]
        hi[r, i] = hi[r, big]
        i = big
    hv[r, i] = s
    hi[r, i] = c


@numba.njit(cache=True, nogil=True)
def select_block(S, a, c0, hv, hi, tau, diagonal):
    """Merge the scores ``S`` of rows ``a ...`` against columns ``c0 ...`` into the store ``(hv, hi)``.

    ``diagonal``: a block on the diagonal (``c0 == a``): each row takes its own row's entries, self
    excluded. Otherwise each entry serves its row and, as the score of the symmetric pair, its column."""
    nr, nc = S.shape
    for i in range(nr):
        r = a + i
        t = tau[r]
        for j in range(nc):
            s = S[i, j]
            if s < t:
                c = c0 + j
                if not (diagonal and c == r):
                    _push(hv, hi, r, s, c)
                    if hv[r, 0] < tau[r]:
                        tau[r] = hv[r, 0]
                    t = tau[r]
            if not diagonal:
                c = c0 + j
                if s < tau[c]:
                    _push(hv, hi, c, s, r)
                    if hv[c, 0] < tau[c]:
                        tau[c] = hv[c, 0]


@numba.njit(cache=True, nogil=True)
def merge_stores(hv, hi, hv2, hi2):
    """Merge the store ``(hv2, hi2)`` into ``(hv, hi)``: each row keeps its m smallest entries."""
    n, m = hv.shape
    for r in range(n):
        for j in range(m):
            s = hv2[r, j]
            if s < hv[r, 0]:
                _push(hv, hi, r, s, hi2[r, j])


# ------------------------------------------------------------------------------------------ score inputs
@numba.njit(cache=True, nogil=True)
def column_stats(X):
    """One pass over ``X``: per-feature mean, minimum and maximum, and whether every value is exactly a
    float32 (then a float32 copy holds the same values)."""
    n, D = X.shape
    total = np.zeros(D)
    lo = X[0].copy()
    hi = X[0].copy()
    exact32 = True
    for i in range(n):
        for j in range(D):
            x = X[i, j]
            total[j] += x
            if x < lo[j]:
                lo[j] = x
            if x > hi[j]:
                hi[j] = x
            if exact32 and np.float64(np.float32(x)) != x:
                exact32 = False
    return total / n, lo, hi, exact32


@numba.njit(cache=True, nogil=True)
def score_inputs(X, cols, mean, scale, left, right):
    """Rows ``[x, ‖x‖², 1]`` into ``left`` and ``[−2x, 1, ‖x‖²]`` into ``right`` (float32), with
    ``x = float32((X[:, cols] − mean) · scale)`` (``scale`` a power of two: exact) and ``‖x‖²`` summed in
    float64 from the float32 values; returns the float64 squared norms."""
    n = X.shape[0]
    d = cols.size
    sq = np.empty(n)
    for i in range(n):
        acc = 0.0
        for t in range(d):
            v = np.float32((X[i, cols[t]] - mean[t]) * scale)
            left[i, t] = v
            right[i, t] = v * np.float32(-2.0)
            acc += np.float64(v) * np.float64(v)
        sq[i] = acc
        left[i, d] = np.float32(acc)
        right[i, d + 1] = np.float32(acc)
        left[i, d + 1] = 1.0
        right[i, d] = 1.0
    return sq


# --------------------------------------------------------------------------------------------- re-rank
@numba.njit(cache=True, nogil=True)
def rerank_prepare(best_v, best_i, a, norms, k, nmax, c_err, abs_sq, u32, abs_pt, shrink, vals, cand, n_keep):
    """Rows ``a ...`` of the candidate store sorted by score into ``vals`` (float64) and ``cand``, and
    ``n_keep``: how many of them (a prefix) may lie within the k-th neighbour's distance, i.e. whose lower
    bound does not exceed the k-th smallest upper bound. Both bounds grow with the score, so the k-th
    smallest upper bound is the k-th candidate's."""
    rows, m = vals.shape
    for r in range(rows):
        for j in range(m):
            v = np.float64(best_v[a + r, j])
            c = best_i[a + r, j]
            t = j
            while t > 0 and vals[r, t - 1] > v:  # insertion sort: stable, m is small
                vals[r, t] = vals[r, t - 1]
                cand[r, t] = cand[r, t - 1]
                t -= 1
            vals[r, t] = v
            cand[r, t] = c
        s = norms[a + r] + nmax
        e = c_err * (s * s) + abs_sq
        up_k = (np.sqrt(vals[r, k - 1] + e) + (2 * u32) * s + 2 * abs_pt) / shrink
        keep = 0
        while keep < m:
            low = (np.sqrt(max(vals[r, keep] - e, 0.0)) - (2 * u32) * s - 2 * abs_pt) * shrink
            if not low <= up_k:
                break
            keep += 1
        n_keep[r] = keep


@numba.njit(cache=True, nogil=True)
def rerank_finish(d64, cand, vals, a, norms, k, nmax, c_err, abs_sq, u32, abs_pt, shrink, scale, all_cand,
                  dist, idx):
    """Sort each row's float64 distances by (distance, index), write the first ``k`` into ``dist``/``idx``
    and return which rows are certified: the k-th distance lies below the lower bound of the m-th
    candidate's score (every non-candidate scores at least that), or every other point is a candidate
    (``all_cand``), or the k-th distance is 0. A row whose m-th score is not finite certifies nothing."""
    rows, m = d64.shape
    ok = np.empty(rows, dtype=np.bool_)
    dv = np.empty(m)
    di = np.empty(m, dtype=np.int64)
    for r in range(rows):
        for j in range(m):
            v = d64[r, j]
            c = cand[r, j]
            t = j
            while t > 0 and (dv[t - 1] > v or (dv[t - 1] == v and di[t - 1] > c)):
                dv[t] = dv[t - 1]
                di[t] = di[t - 1]
                t -= 1
            dv[t] = v
            di[t] = c
        for j in range(k):
            dist[r, j] = dv[j]
            idx[r, j] = di[j]
        dk = dv[k - 1] * scale
        s = norms[a + r] + nmax
        e = c_err * (s * s) + abs_sq
        low = (np.sqrt(max(vals[r, m - 1] - e, 0.0)) - (2 * u32) * s - 2 * abs_pt) * shrink
        ok[r] = (dk < low or all_cand or dk == 0.0) and np.isfinite(vals[r, m - 1])
    return ok
