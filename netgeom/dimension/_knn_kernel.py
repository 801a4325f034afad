"""Compiled (numba) kernels of :mod:`netgeom.dimension.neighbors`: candidate selection, score inputs and the
float64 re-rank.

The float64 distances are summed in numpy's ``einsum`` order for a contiguous two-operand reduction
(two lanes, eight terms per step, lanes added last; the x86-64 baseline SIMD build), so they are bit for
bit ``sqrt(einsum("ij,ij->i", d, d))`` of the float64 differences ``d``, the brute-force reference,
without materialising ``d``. The tests check this equality (:func:`sq_dist` against ``np.einsum``).

Compiled on first use and cached on disk (``cache=True``): later processes load it in well under a second.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _sq_dist(x, y, D):
    """``Σ (y_t − x_t)²`` in float64, in einsum's order: lane ``l`` sums the terms ``t ≡ l (mod 2)``,
    each step of eight adding them last to first (no fused multiply-add: numba does not contract)."""
    a0 = 0.0
    a1 = 0.0
    t = 0
    while t + 8 <= D:
        e0 = y[t + 6] - x[t + 6]
        e1 = y[t + 7] - x[t + 7]
        v0 = e0 * e0 + a0
        v1 = e1 * e1 + a1
        e0 = y[t + 4] - x[t + 4]
        e1 = y[t + 5] - x[t + 5]
        v0 = e0 * e0 + v0
        v1 = e1 * e1 + v1
        e0 = y[t + 2] - x[t + 2]
        e1 = y[t + 3] - x[t + 3]
        v0 = e0 * e0 + v0
        v1 = e1 * e1 + v1
        e0 = y[t] - x[t]
        e1 = y[t + 1] - x[t + 1]
        a0 = e0 * e0 + v0
        a1 = e1 * e1 + v1
        t += 8
    while t + 2 <= D:
        e0 = y[t] - x[t]
        e1 = y[t + 1] - x[t + 1]
        a0 = e0 * e0 + a0
        a1 = e1 * e1 + a1
        t += 2
    if t < D:
        e0 = y[t] - x[t]
        a0 = e0 * e0 + a0
    return a0 + a1


@numba.njit(cache=True, nogil=True)
def sq_dist(x, y):
    """``Σ (y − x)²`` of two float64 vectors, bit for bit ``np.einsum("i,i->", y - x, y - x)``."""
    return _sq_dist(x, y, x.size)


@numba.njit(cache=True, nogil=True)
def direct_distances(X, Xg, a0, cand, n_keep, out):
    """``out[i, j] = ‖X[a0 + i] − X[cand[i, j]]‖`` in float64 for ``j < n_keep[i]`` (``inf`` in the other
    slots). ``Xg`` holds the values of ``X`` (``X`` itself or an exact float32 copy: half the bytes to
    gather), so every difference is the float64 one. Four candidates at a time: eight independent
    accumulation chains keep the adder busy where one pair's two chains wait on its latency."""
    D = X.shape[1]
    for i in range(out.shape[0]):
        x = X[a0 + i]
        nk = n_keep[i]
        j = 0
        while j + 4 <= nk:
            y0 = Xg[cand[i, j]]
            y1 = Xg[cand[i, j + 1]]
            y2 = Xg[cand[i, j + 2]]
            y3 = Xg[cand[i, j + 3]]
            p0 = p1 = q0 = q1 = r0 = r1 = s0 = s1 = 0.0
            t = 0
            while t + 8 <= D:
                for o in (6, 4, 2, 0):
                    x0 = x[t + o]
                    x1 = x[t + o + 1]
                    e0 = y0[t + o] - x0
                    e1 = y0[t + o + 1] - x1
                    p0 = e0 * e0 + p0
                    p1 = e1 * e1 + p1
                    e0 = y1[t + o] - x0
                    e1 = y1[t + o + 1] - x1
                    q0 = e0 * e0 + q0
                    q1 = e1 * e1 + q1
                    e0 = y2[t + o] - x0
                    e1 = y2[t + o + 1] - x1
                    r0 = e0 * e0 + r0
                    r1 = e1 * e1 + r1
                    e0 = y3[t + o] - x0
                    e1 = y3[t + o + 1] - x1
                    s0 = e0 * e0 + s0
                    s1 = e1 * e1 + s1
                t += 8
            while t + 2 <= D:
                x0 = x[t]
                x1 = x[t + 1]
                e0 = y0[t] - x0
                e1 = y0[t + 1] - x1
                p0 = e0 * e0 + p0
                p1 = e1 * e1 + p1
                e0 = y1[t] - x0
                e1 = y1[t + 1] - x1
                q0 = e0 * e0 + q0
                q1 = e1 * e1 + q1
                e0 = y2[t] - x0
                e1 = y2[t + 1] - x1
                r0 = e0 * e0 + r0
                r1 = e1 * e1 + r1
                e0 = y3[t] - x0
                e1 = y3[t + 1] - x1
                s0 = e0 * e0 + s0
                s1 = e1 * e1 + s1
                t += 2
            if t < D:
                x0 = x[t]
                e0 = y0[t] - x0
                p0 = e0 * e0 + p0
                e0 = y1[t] - x0
                q0 = e0 * e0 + q0
                e0 = y2[t] - x0
                r0 = e0 * e0 + r0
                e0 = y3[t] - x0
                s0 = e0 * e0 + s0
            out[i, j] = np.sqrt(p0 + p1)
            out[i, j + 1] = np.sqrt(q0 + q1)
            out[i, j + 2] = np.sqrt(r0 + r1)
            out[i, j + 3] = np.sqrt(s0 + s1)
            j += 4
        while j < nk:
            out[i, j] = np.sqrt(_sq_dist(x, Xg[cand[i, j]], D))
            j += 1
        while j < out.shape[1]:
            out[i, j] = np.inf
            j += 1


def lane_order(D):
    """The features in the order :func:`_sq_dist` adds them: lane 0's terms, then lane 1's."""
    G = D // 8
    base = (8 * np.arange(G)[:, None] + np.array([6, 4, 2, 0])[None, :]).ravel()
    tail = np.arange(8 * G, D, 2)
    lanes = [np.concatenate([base + lane, tail + lane]) for lane in (0, 1)]
    return [order[order < D] for order in lanes]


@numba.njit(cache=True, nogil=True)
def direct_distances_lanes(P, n0, a0, cand, n_keep, out):
    """:func:`direct_distances` from ``P``: the varying features of ``X`` (a constant feature's difference
    is 0, and adding ``0 * 0`` leaves a sum unchanged), columns ``[0, n0)`` lane 0's terms and the rest
    lane 1's, each in its order of addition (:func:`lane_order`). Each lane is a plain running sum, so the
    distances are bit for bit those over every feature, with fewer terms and contiguous reads."""
    D = P.shape[1]
    n1 = D - n0
    both = min(n0, n1)
    for i in range(out.shape[0]):
        x = P[a0 + i]
        x1 = x[n0:]
        nk = n_keep[i]
        j = 0
        while j < nk:
            y0 = P[cand[i, j]]
            y1 = P[cand[i, min(j + 1, nk - 1)]]
            y2 = P[cand[i, min(j + 2, nk - 1)]]
            y3 = P[cand[i, min(j + 3, nk - 1)]]
            z0 = y0[n0:]
            z1 = y1[n0:]
            z2 = y2[n0:]
            z3 = y3[n0:]
            p0 = p1 = q0 = q1 = r0 = r1 = s0 = s1 = 0.0
            for t in range(both):
                xa = np.float64(x[t])
                xb = np.float64(x1[t])
                e0 = y0[t] - xa
                e1 = z0[t] - xb
                p0 = e0 * e0 + p0
                p1 = e1 * e1 + p1
                e0 = y1[t] - xa
                e1 = z1[t] - xb
                q0 = e0 * e0 + q0
                q1 = e1 * e1 + q1
                e0 = y2[t] - xa
                e1 = z2[t] - xb
                r0 = e0 * e0 + r0
                r1 = e1 * e1 + r1
                e0 = y3[t] - xa
                e1 = z3[t] - xb
                s0 = e0 * e0 + s0
                s1 = e1 * e1 + s1
            for t in range(both, n0):
                xa = np.float64(x[t])
                e0 = y0[t] - xa
                p0 = e0 * e0 + p0
                e0 = y1[t] - xa
                q0 = e0 * e0 + q0
                e0 = y2[t] - xa
                r0 = e0 * e0 + r0
                e0 = y3[t] - xa
                s0 = e0 * e0 + s0
            for t in range(both, n1):
                xb = np.float64(x1[t])
                e1 = z0[t] - xb
                p1 = e1 * e1 + p1
                e1 = z1[t] - xb
                q1 = e1 * e1 + q1
                e1 = z2[t] - xb
                r1 = e1 * e1 + r1
                e1 = z3[t] - xb
                s1 = e1 * e1 + s1
            # past the row's count the slots repeat its last candidate (same reads, discarded)
            out[i, j] = np.sqrt(p0 + p1)
            if j + 1 < nk:
                out[i, j + 1] = np.sqrt(q0 + q1)
            if j + 2 < nk:
                out[i, j + 2] = np.sqrt(r0 + r1)
            if j + 3 < nk:
                out[i, j + 3] = np.sqrt(s0 + s1)
            j += 4
        for j in range(nk, out.shape[1]):
            out[i, j] = np.inf


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
def select_block(G, a, c0, sq, hv, hi, tau, diagonal):
    """Merge the scores of rows ``a ...`` against columns ``c0 ...`` into the store ``(hv, hi)``, from their
    float32 Gram block ``G``: the score of the pair ``(r, c)`` is ``sq[r] + sq[c] − 2 G[r − a, c − c0]``,
    formed in float64. Each entry serves its row and, as the score of the symmetric pair, its column.

    ``diagonal``: a block on the diagonal (``c0 == a``, ``G`` symmetric): only its entries above the
    diagonal are read (each pair once, self never)."""
    nr, nc = G.shape
    for i in range(nr):
        r = a + i
        sr = sq[r]
        t = tau[r]
        for j in range(i + 1 if diagonal else 0, nc):
            c = c0 + j
            s = (sr + sq[c]) - 2.0 * np.float64(G[i, j])
            if s < t:
                _push(hv, hi, r, s, c)
                if hv[r, 0] < tau[r]:
                    tau[r] = hv[r, 0]
                t = tau[r]
            if s < tau[c]:
                _push(hv, hi, c, s, r)
                if hv[c, 0] < tau[c]:
                    tau[c] = hv[c, 0]


@numba.njit(cache=True, nogil=True)
def smallest_in_rows(G, a, c0, sq, hv, hi, tau, ascending):
    """For each row ``a + i`` of the float32 Gram block ``G`` (full rows: columns ``c0 ...``), its
    ``w = min(m, columns other than itself)`` smallest scores ``sq[r] + sq[c] − 2 G[i, c − c0]`` (formed in
    float64) and their columns into ``hv[r]``, ``hi[r]`` (``m = hv.shape[1]``), ordered by score, and
    ``tau[r]`` lowered to the largest. ``ascending``: smallest first, the other ``m − w`` slots ``inf`` at
    the end; else largest first after the ``inf`` slots (a max-heap, for later pushes). The rows' slots
    must hold nothing yet: they are overwritten. Entries equal to the ``w``-th smallest may be left out.

    A threshold with between ``w`` and ``w + 16`` scores at or below it is found by bisection on the
    value, each step one branch-free counting pass over the row, so only those few scores are sorted (a
    heap fed the whole row would take ~m ln(columns / m) insertions, each a few mispredicted branches).
    The scores of points scaled to norms <= 1 lie in [0, 4] up to rounding, which brackets the search."""
    nr, nc = G.shape
    m = hv.shape[1]
    s = np.empty(nc)
    kv = np.empty(nc)
    ki = np.empty(nc, dtype=np.int64)
    for i in range(nr):
        r = a + i
        sr = sq[r]
        for j in range(nc):
            s[j] = (sr + sq[c0 + j]) - 2.0 * np.float64(G[i, j])
        others = nc
        own = r - c0
        if 0 <= own < nc:
            s[own] = np.nan  # never counted, never kept (every comparison with NaN is false)
            others -= 1
        w = min(m, others)
        n_kept = 0
        if w > 0:
            # invariant: fewer than w scores <= lo, count_top = the number of scores <= top >= w
            lo = -1.0
            top = 8.0
            count_top = 0
            count_lo = 0
            for j in range(nc):
                count_top += s[j] <= top
                count_lo += s[j] <= lo
            if count_top < w:  # (not for scaled points) every score
                top = np.inf
                count_top = others
            if count_lo >= w:  # (not for scaled points) every score up to lo, sorted below
                top = lo
                count_top = count_lo
            steps = 0
            while count_top > w + 16 and steps < 64:  # (64 halvings: near ties, the sort takes the rest)
                steps += 1
                mid = lo + 0.5 * (top - lo)
                if not lo < mid < top:  # no value strictly between: the rest are ties with top
                    break
                c = 0
                for j in range(nc):
                    c += s[j] <= mid
                if c < w:
                    lo = mid
                else:
                    top = mid
                    count_top = c
            for j in range(nc):  # branch-free: every column is written, the kept ones advance
                ki[n_kept] = j
                n_kept += s[j] <= top
            for j in range(n_kept):
                kv[j] = s[ki[j]]
                ki[j] += c0
            if n_kept > 64:  # ties at the threshold: a sort, not insertions
                o = np.argsort(kv[:n_kept], kind="mergesort")
                kv[:n_kept] = kv[:n_kept][o]
                ki[:n_kept] = ki[:n_kept][o]
            else:
                for j in range(1, n_kept):
                    v = kv[j]
                    c = ki[j]
                    t = j
                    while t > 0 and kv[t - 1] > v:
                        kv[t] = kv[t - 1]
                        ki[t] = ki[t - 1]
                        t -= 1
                    kv[t] = v
                    ki[t] = c
        for j in range(m):
            slot = j if ascending else m - 1 - j
            if j < w:
                hv[r, slot] = kv[j]
                hi[r, slot] = ki[j]
            else:
                hv[r, slot] = np.inf
                hi[r, slot] = 0
        if w == m and kv[w - 1] < tau[r]:
            tau[r] = kv[w - 1]


@numba.njit(cache=True, nogil=True)
def mirror(G, a, b, c0, c1):
    """``G[c0:c1, a:b] = G[a:b, c0:c1].T`` by 32 x 32 tiles (numpy's copy walks the source's columns: a
    cache and TLB miss per element once rows are a few kB apart)."""
    for i0 in range(a, b, 32):
        i1 = min(i0 + 32, b)
        for j0 in range(c0, c1, 32):
            j1 = min(j0 + 32, c1)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    G[j, i] = G[i, j]


@numba.njit(cache=True, nogil=True)
def merge_stores(hv, hi, hv2, hi2, r0, r1):
    """Merge rows ``[r0, r1)`` of the store ``(hv2, hi2)`` into ``(hv, hi)``: each keeps its m smallest."""
    m = hv.shape[1]
    for r in range(r0, r1):
        for j in range(m):
            s = hv2[r, j]
            if s < hv[r, 0]:
                _push(hv, hi, r, s, hi2[r, j])


# ------------------------------------------------------------------------------------------ score inputs
@numba.njit(cache=True, nogil=True)
def abs_max(X):
    """``(max |x|, number of non-finite entries)`` of a float64 array in one pass (no temporaries)."""
    flat = X.ravel()
    amax = 0.0
    bad = 0
    for x in flat:
        a = abs(x)
        if a > amax:
            amax = a
        if not a < np.inf:  # inf, or NaN (every comparison with NaN is false)
            bad += 1
    return amax, bad


@numba.njit(cache=True, nogil=True)
def column_stats(X, r0, r1):
    """One pass over rows ``[r0, r1)`` of ``X``: per-feature sum, minimum and maximum, whether every
    value is exactly a float32 (then a float32 copy holds the same values), and how many values are not
    finite (NaN or ±inf)."""
    D = X.shape[1]
    total = np.zeros(D)
    lo = X[r0].copy()
    hi = X[r0].copy()
    inexact = np.zeros(D)  # branch-free (vectorised) per feature: counts values that are not float32
    bad = np.zeros(D)
    for i in range(r0, r1):
        for j in range(D):
            x = X[i, j]
            total[j] += x
            lo[j] = min(lo[j], x)
            hi[j] = max(hi[j], x)
            inexact[j] += np.float64(np.float32(x)) != x
            bad[j] += not abs(x) < np.inf  # (every comparison with NaN is false)
    return total, lo, hi, not inexact.any(), int(bad.sum())


@numba.njit(cache=True, nogil=True)
def score_inputs(X, r0, r1, cols, mean, scale, left, pos, P, sq):
    """Rows ``x = float32((X[:, cols] − mean) · scale)`` into ``left`` (``scale`` a power of two: exact) and
    ``‖x‖²`` summed in float64 from the float32 values (exact squares) into ``sq``, for rows ``[r0, r1)``.
    If ``P`` has rows, the same pass also copies ``X[:, cols[t]]`` to ``P[:, pos[t]]`` (the re-rank's
    lane-ordered columns)."""
    d = cols.size
    copy = P.shape[0] > 0
    for i in range(r0, r1):
        acc = 0.0
        for t in range(d):
            xv = X[i, cols[t]]
            if copy:
                P[i, pos[t]] = xv
            v = np.float32((xv - mean[t]) * scale)
            left[i, t] = v
            acc += np.float64(v) * np.float64(v)
        sq[i] = acc


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
        # (a k-th distance of 0 certifies nothing about the order of ties: a duplicate with a smaller index
        # may be missing from the candidates, so such rows go to the exact fallback)
        ok[r] = (dk < low or all_cand) and np.isfinite(vals[r, m - 1])
    return ok
