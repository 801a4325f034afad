"""Compiled (numba) kernels of :mod:`netgeom.dimension.neighbors`: candidate selection, score inputs and the
float64 re-rank.

The float64 distances are summed in numpy's ``einsum`` order for a contiguous two-operand reduction
(two lanes, eight terms per step, lanes added last; the x86-64 baseline SIMD build), so they are bit for
bit ``sqrt(einsum("ij,ij->i", d, d))`` of the float64 differences ``d``, the brute-force reference,
without materialising ``d``. The tests check this equality (:func:`sq_dist` against ``np.einsum``). The
re-rank kernel optionally scales each difference by a power of two before squaring it (data spread over
more than 2^400; smaller spreads come pre-scaled, see :mod:`.neighbors`).

Compiled on first use and cached on disk (``cache=True``): later processes load it in well under a second.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


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


def lane_order(D):
    """The features in the order :func:`_sq_dist` adds them: lane 0's terms, then lane 1's."""
    G = D // 8
    base = (8 * np.arange(G)[:, None] + np.array([6, 4, 2, 0])[None, :]).ravel()
    tail = np.arange(8 * G, D, 2)
    lanes = [np.concatenate([base + lane, tail + lane]) for lane in (0, 1)]
    return [order[order < D] for order in lanes]


def pair_layout(D, features):
    """Where :func:`direct_distances` wants each of ``features`` (sorted indices into ``D`` features; the
    others are left out: constant features add ``0 * 0``, which leaves a sum unchanged): ``(pos, pad,
    width)``, feature ``features[t]`` at column ``pos[t]`` of rows ``width`` wide, and the columns ``pad``
    zero. Column ``2 j + l`` holds lane ``l``'s ``j``-th term (:func:`lane_order`), so the rows are read
    front to back, one pair of lanes at a time; the shorter lane is padded with zeros (``0 - 0``)."""
    kept = np.zeros(D, dtype=bool)
    kept[features] = True
    lanes = [order[kept[order]] for order in lane_order(D)]
    width = 2 * max(lanes[0].size, lanes[1].size)
    at = np.empty(D, dtype=np.int64)
    for lane, order in enumerate(lanes):
        at[order] = 2 * np.arange(order.size) + lane
    pad = np.concatenate([2 * np.arange(order.size, width // 2) + lane for lane, order in enumerate(lanes)])
    return at[features], pad.astype(np.int64), width


def _pair_sums_codegen(n_cand):
    """The code of :func:`_pair_sums4` / :func:`_pair_sums8` (``n_cand`` candidates, a multiple of 4)."""
    n_vec = n_cand // 4

    def typer(typingctx, Q, x, sc, *cands):
        if not (isinstance(Q, types.Array) and Q.ndim == 2 and Q.layout == "C" and Q.dtype in (types.float32,
                                                                                         types.float64)):
            return None  # (the loads assume unit stride along a row)
        if not isinstance(sc, (types.NoneType, types.Float)):
            return None
        scaled = isinstance(sc, types.Float)  # (None: the rows hold the scaled values already)
        sig = types.UniTuple(types.float64, n_cand)(Q, x, types.float64 if scaled else sc, *cands)
        single = Q.dtype == types.float32

        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            i32, i64, f64 = ir.IntType(32), ir.IntType(64), ir.DoubleType()
            elem, elem_bytes = (ir.FloatType(), 4) if single else (f64, 8)
            vec, wide = ir.VectorType(elem, 2), ir.VectorType(f64, 2)
            base = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
            stride = builder.extract_value(arr.strides, 0)

            def row(k):
                r = context.cast(builder, args[k], signature.args[k], types.int64)
                return builder.bitcast(builder.gep(base, [builder.mul(r, stride)]), elem.as_pointer())

            def pair(ptr, t):
                v = builder.load(builder.bitcast(builder.gep(ptr, [t]), vec.as_pointer()), align=elem_bytes)
                return builder.fpext(v, wide) if single else v

            x_row, rows = row(1), [row(k) for k in range(3, 3 + n_cand)]
            # each difference times the power of two sc (exact, or rounded once where it lands below
            # float64's normal range), then squared: the squares of data spread over more than 2^400 do
            # not overflow (smaller spreads come pre-scaled: sc is None)
            if scaled:
                sc8 = builder.insert_element(ir.Constant(ir.VectorType(f64, 8), None), args[2],
                                             ir.Constant(i32, 0))
                sc8 = builder.shuffle_vector(sc8, sc8, ir.Constant(ir.VectorType(i32, 8), [0] * 8))
            # four candidates' pairs side by side in one 8-lane vector (lanes 2c and 2c + 1: candidate c's
            # two einsum lanes): one subtraction, product and sum per step for all four, each lane still a
            # plain running sum in the same order; eight candidates in two such vectors, whose sums do not
            # wait on each other (each step's sum waits on the previous step's: the adder's latency)
            eight = ir.VectorType(f64, 8)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(eight, [0.0] * 8)) for _ in range(n_vec)]
            steps = builder.udiv(builder.extract_value(arr.shape, 1), ir.Constant(i64, 2))
            with cgutils.for_range(builder, steps) as loop:
                t = builder.mul(loop.index, ir.Constant(i64, 2))
                xv = pair(x_row, t)
                x8 = builder.shuffle_vector(xv, xv, ir.Constant(ir.VectorType(i32, 8), [0, 1] * 4))
                for q, acc in enumerate(accs):
                    y = [pair(ptr, t) for ptr in rows[4 * q : 4 * q + 4]]
                    y01 = builder.shuffle_vector(y[0], y[1], ir.Constant(ir.VectorType(i32, 4), [0, 1, 2, 3]))
                    y23 = builder.shuffle_vector(y[2], y[3], ir.Constant(ir.VectorType(i32, 4), [0, 1, 2, 3]))
                    y8 = builder.shuffle_vector(y01, y23, ir.Constant(ir.VectorType(i32, 8), list(range(8))))
                    e = builder.fsub(y8, x8)
                    if scaled:  # (a multiply per step: ~10 % of the kernel, so only where needed)
                        e = builder.fmul(e, sc8)
                    builder.store(builder.fadd(builder.fmul(e, e), builder.load(acc)), acc)
            sums = []
            for acc in accs:
                v = builder.load(acc)
                for c in range(4):
                    lane0 = builder.extract_element(v, ir.Constant(i32, 2 * c))
                    lane1 = builder.extract_element(v, ir.Constant(i32, 2 * c + 1))
                    sums.append(builder.fadd(lane0, lane1))
            return context.make_tuple(builder, signature.return_type, sums)

        return sig, codegen

    return typer


@intrinsic
def _pair_sums4(typingctx, Q, x, sc, c0, c1, c2, c3):
    """``Σ (Q[c] − Q[x])²`` for the four rows ``c = c0 … c3`` of ``Q`` (2-D, C order, even width; float64,
    or float32 widened exactly): :func:`_sq_dist`'s sums, each row holding its two lanes' terms
    interleaved in order of addition (:func:`pair_layout`). Each step adds one pair of terms per
    candidate to its two lanes, the lanes added last, as numpy's einsum does with 128-bit SIMD; the four
    candidates' lanes share one 8-lane vector (one AVX-512 operation each for the difference, the square
    and the sum: 1.66 -> 1.27 ms for 20 000 MNIST distances, against 2-lane vectors). numba alone emits
    scalar code here (its SLP vectoriser is off); LLVM's vector types say what to do. A multiply and an
    add, never fused (no fast-math flags)."""
    return _pair_sums_codegen(4)(typingctx, Q, x, sc, c0, c1, c2, c3)


@intrinsic
def _pair_sums8(typingctx, Q, x, sc, c0, c1, c2, c3, c4, c5, c6, c7):
    """:func:`_pair_sums4` for eight rows at once, in two independent 8-lane sums: a step's sum no longer
    waits for the previous step's (the adder's latency, ~3 cycles, bounds one chain), so eight distances
    cost about what four did (1000 MNIST points, 20 candidates each: 1.8 -> 1.2 ms)."""
    return _pair_sums_codegen(8)(typingctx, Q, x, sc, c0, c1, c2, c3, c4, c5, c6, c7)


@numba.njit(cache=True, nogil=True, inline="always")
def _row_distances(Q, x, cand, nk, sc, out):
    """``out[j] = sqrt(Σ ((Q[cand[j]] − Q[x]) · sc)²)`` for ``j < nk`` (``inf`` in the other slots)."""
    last = nk - 1
    j = 0
    while j + 4 < nk:
        # past the row's count the slots repeat its last candidate (same reads, discarded)
        s = _pair_sums8(Q, x, sc, cand[j], cand[j + 1], cand[j + 2], cand[j + 3], cand[j + 4],
                        cand[min(j + 5, last)], cand[min(j + 6, last)], cand[min(j + 7, last)])
        for t in range(min(8, nk - j)):
            out[j + t] = np.sqrt(s[t])
        j += 8
    if j < nk:
        s4 = _pair_sums4(Q, x, sc, cand[j], cand[min(j + 1, last)], cand[min(j + 2, last)],
                         cand[min(j + 3, last)])
        for t in range(min(4, nk - j)):
            out[j + t] = np.sqrt(s4[t])
    for j in range(nk, out.shape[0]):
        out[j] = np.inf


@numba.njit(cache=True, nogil=True)
def direct_distances(Q, a0, cand, n_keep, sc, out):
    """``out[i, j] = ‖(x − y) · sc‖`` in float64 of the points ``x = Q[a0 + i]`` and ``y = Q[cand[i, j]]``
    for ``j < n_keep[i]`` (``inf`` in the other slots), ``Q`` in :func:`pair_layout` (float64, or float32
    holding the exact values: half the bytes to gather), so the sums are bit for bit
    ``sqrt(einsum(e, e))`` of the scaled float64 differences ``e = (y − x) · sc`` over all features
    (``sc`` a power of two, or ``None``: no scaling, a separate compiled version without the multiply).
    Eight candidates at a time (four for the last four or fewer): sixteen independent accumulation chains
    keep the adder busy where one pair's two chains wait on its latency."""
    for i in range(out.shape[0]):
        _row_distances(Q, a0 + i, cand[i], n_keep[i], sc, out[i])


@numba.njit(cache=True, nogil=True)
def gathered_distances(Q, rows, cand, n_keep, sc, out):
    """:func:`direct_distances` of the points ``x = Q[rows[i]]``."""
    for i in range(out.shape[0]):
        _row_distances(Q, rows[i], cand[i], n_keep[i], sc, out[i])


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
    value, each step one branch-free counting pass, so only those few scores are sorted (a heap fed the
    whole row would take ~m ln(columns / m) insertions, each a few mispredicted branches). The search
    starts from a threshold taken from a sample of the row, which one pass over the row checks; the
    scores up to the upper end are compacted, and the bisection counts only those (a few dozen, where it
    took ~10 passes over the whole row from the fixed bracket). The scores of points scaled to norms
    <= 1 lie in [0, 4] up to rounding, which brackets the search where the sample's guess does not."""
    nr, nc = G.shape
    m = hv.shape[1]
    s = np.empty(nc)
    kv = np.empty(nc)
    ki = np.empty(nc, dtype=np.int64)
    smp = np.empty(64)
    sv = np.empty(nc)
    si = np.empty(nc, dtype=np.int64)
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
            # A first threshold t from a sample of the row: about 3w scores at or below it, expected. One
            # counting pass then brackets the w-th smallest by t and the fixed bounds, and the scores
            # below the upper end are compacted: the bisection's passes run over those few. (At 2w a
            # quarter of 2000-column MNIST rows found fewer than w below the guess, and then compacted
            # and bisected the whole row: 6.2 -> 5.4 ms for 2000 rows at 3w; a larger sample costs more
            # in its insertion sort than it saves.)
            # invariant: fewer than w scores <= lo, count_top = the number of scores <= top >= w
            n_smp = min(nc, 64)
            stride = nc // n_smp
            q = min(n_smp, (3 * w * n_smp + nc - 1) // nc)
            got = 0
            for u in range(n_smp):  # the q smallest sampled scores, sorted, by insertion
                v = s[u * stride]
                if not v == v:  # its own column
                    continue
                if got == q:
                    if not v < smp[q - 1]:
                        continue
                    t = q - 1
                else:
                    t = got
                    got += 1
                while t > 0 and smp[t - 1] > v:
                    smp[t] = smp[t - 1]
                    t -= 1
                smp[t] = v
            # the scores up to the guess, compacted (branch-free: every column is written, the kept ones
            # advance); fewer than w: up to the fixed bound, else every score
            top = smp[q - 1] if got == q else np.inf
            lo = -1.0
            for bound in (top, 8.0, np.inf):
                if bound < top:
                    continue
                n_kept = 0
                for j in range(nc):
                    v = s[j]
                    ki[n_kept] = j
                    kv[n_kept] = v
                    n_kept += v <= bound
                if n_kept >= w:
                    top = bound
                    break
                lo = max(lo, bound)  # (fewer than w scores up to it)
            count_top = n_kept
            steps = 0
            while count_top > w + 2 and steps < 64:  # (64 halvings: near ties, the sort takes the rest)
                steps += 1
                mid = lo + 0.5 * (top - lo)
                if not lo < mid < top:  # no value strictly between: the rest are ties with top
                    break
                c = 0
                for j in range(n_kept):
                    c += kv[j] <= mid
                if c < w:
                    lo = mid
                else:
                    top = mid
                    count_top = c
            if count_top < n_kept:  # keep those at or below the final top (in place, in order)
                kept = 0
                for j in range(n_kept):
                    v = kv[j]
                    kv[kept] = v
                    ki[kept] = ki[j]
                    kept += v <= top
                n_kept = kept
            if n_kept > 64:  # ties at the threshold: a sort
                o = np.argsort(kv[:n_kept], kind="mergesort")
                for j in range(w):
                    sv[j] = kv[o[j]]
                    si[j] = ki[o[j]] + c0
            else:
                # sorted by (score, column), branch-free: each score's rank is the number of scores before
                # it (a few dozen: ~n² vectorised comparisons cost less than an insertion sort's
                # mispredicted branches)
                for j in range(n_kept):
                    v = kv[j]
                    rank = 0
                    for t in range(n_kept):
                        u = kv[t]
                        rank += (u < v) | ((u == v) & (t < j))
                    sv[rank] = v
                    si[rank] = ki[j] + c0
            for j in range(min(n_kept, w)):
                kv[j] = sv[j]
                ki[j] = si[j]
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
    """``G[c0:c1, a:b] = G[a:b, c0:c1].T`` by tiles of 8 source rows and 64 columns (numpy's copy walks the
    source's columns: a cache and TLB miss per element once rows are a few kB apart). Eight rows: the
    source lines a tile reads stay in an 8-way L1 cache even where the rows' stride maps them all to one
    set (32 rows did not: 2000 points, six 500 x 500 blocks, 4.9-5.4 -> 3.5-3.6 ms; 1000 points, six
    250 x 250 blocks, 0.70-0.94 -> 0.80 ms)."""
    for i0 in range(a, b, 8):
        i1 = min(i0 + 8, b)
        for j0 in range(c0, c1, 64):
            j1 = min(j0 + 64, c1)
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
    # two rows per sweep over the per-feature accumulators (half their loads and stores: 1000 x 784, in
    # cache, 0.21 -> 0.13 ms); each sum still adds the rows in order
    i = r0
    while i < r1:
        ra = X[i]
        rb = X[min(i + 1, r1 - 1)]
        two = i + 1 < r1
        for j in range(D):
            xa = ra[j]
            xb = rb[j] if two else xa
            total[j] += xa
            if two:
                total[j] += xb
            lo[j] = min(lo[j], min(xa, xb))
            hi[j] = max(hi[j], max(xa, xb))
            inexact[j] += (np.float64(np.float32(xa)) != xa) + (np.float64(np.float32(xb)) != xb)
        i += 2
    # a NaN or ±inf makes its feature's sum NaN or ±inf (finite sums prove finite entries): only such
    # features are counted
    bad = 0
    for j in range(D):
        if not abs(total[j]) < np.inf:  # (every comparison with NaN is false)
            for i in range(r0, r1):
                bad += not abs(X[i, j]) < np.inf
    return total, lo, hi, not inexact.any(), bad


@numba.njit(cache=True, nogil=True)
def score_inputs(X, r0, r1, cols, mean, scale, left, pos, P, sq):
    """Rows ``x = float32((X[:, cols] − mean) · scale)`` into ``left`` (``scale`` a power of two: exact) and
    ``‖x‖²`` summed in float64 from the float32 values (exact squares) into ``sq``, for rows ``[r0, r1)``.
    The same pass also copies ``X[:, cols[t]]`` to ``P[:, pos[t]]`` (the re-rank's :func:`pair_layout`)."""
    d = cols.size
    copy = P.shape[0] > 0
    for i in range(r0, r1):
        for t in range(d):
            xv = X[i, cols[t]]
            if copy:
                P[i, pos[t]] = xv
            left[i, t] = np.float32((xv - mean[t]) * scale)
        # four running sums (one would wait on the adder's latency at every term): the bounds allow any
        # order of the float64 sum
        row = left[i]
        a0 = a1 = a2 = a3 = 0.0
        t = 0
        while t + 4 <= d:
            v0 = np.float64(row[t])
            v1 = np.float64(row[t + 1])
            v2 = np.float64(row[t + 2])
            v3 = np.float64(row[t + 3])
            a0 += v0 * v0
            a1 += v1 * v1
            a2 += v2 * v2
            a3 += v3 * v3
            t += 4
        while t < d:
            v0 = np.float64(row[t])
            a0 += v0 * v0
            t += 1
        sq[i] = (a0 + a1) + (a2 + a3)


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
