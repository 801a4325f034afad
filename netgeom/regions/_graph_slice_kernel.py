"""Compiled (numba) inner loops of the graph slice engine (:mod:`netgeom.regions._graph_slice`).

:func:`relu_split` cuts a ReLU node's polygons by their units' zero lines, one polygon at a time, depth first:
the lines are built from the node's input maps with the numpy path's formulas (``_lines``), every sign is
certified with the numpy path's tolerance (``_tol``) and every crossing point is the numpy path's
(``_split``), so a polygon finished here is the numpy path's, piece for piece and bit for bit. There is no
exact arithmetic here: a polygon on which any decision falls within its error bound (a vertex too close to a
line, a crossing whose ``D`` sign is uncertain, a non-finite value) is *given back* untouched and the caller
cuts it with the numpy path, which settles such decisions exactly.

:func:`pool_dominance` prunes a max-pool node's candidates: per polygon and window it takes the candidate
largest at the first vertex and drops every candidate it certainly beats at every vertex (a linear function
on a convex polygon is extreme at its vertices), so most windows keep a single candidate and need no cut;
:func:`pool_split` (which runs it first) then clips the survivors' argmax cells, with the same give-back
rule. The two cutting kernels write a piece's vertices only: the slots past them in their working arrays are
left unwritten (the kernels read ``nv`` vertices; the numpy path and the engine's caller get padded rows).
:func:`affine_maps`, :func:`add_maps` and :func:`relu_maps` push the per-polygon maps through a node in one
pass each, with the numpy path's error bounds; the first two also read a ReLU node's output in place (its
input maps, parents and bits: the floats :func:`relu_maps` would write). :func:`affine_maps` starts each
piece of a polygon from the sums of the rows it shares with the piece before (the same floats).

Compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Inlined into this module's kernels: numba's on-disk cache tracks only this file, so after editing these in
# _slice_kernel, touch this file too (or clear its __pycache__) to have its kernels recompiled.
from ._slice_kernel import _crossing, _halves, _pow2_inv, _take_cut, _tol, from_bits

_U = 2.0**-53
_TINY = 1e-300
_BLOCK_SHIFT, _ROW_SHIFT = 44, 20  # as _graph_slice
_TABLE_MAX = 1 << 15  # entries of affine_maps' per-polygon product table (kept in cache)
_SWEEP_MIN = 8  # cutting candidates from which the ReLU cut sweeps a piece's vertices for all at once


@numba.njit(cache=True, nogil=True, inline="always")
def _scale(x0, x1, x2, d):
    """``(x0, x1, x2, d)`` times ``2**-e`` for ``max |x_i| = f 2**e`` (``0.5 <= f < 1``, as ``frexp``): the
    numpy path's ``ldexp(x, -e)``, bit for bit, by one multiplication when ``2**-e`` is a normal float (the
    exponent read from the float's bits, :func:`._slice_kernel._pow2_inv`), else by ``frexp``/``ldexp``.
    ``max |x_i|`` must be finite; a zero maximum leaves the values unscaled."""
    mx = max(abs(x0), max(abs(x1), abs(x2)))
    sc = _pow2_inv(mx)
    if sc != 0.0:
        return x0 * sc, x1 * sc, x2 * sc, d * sc
    if mx != 0:
        ex = math.frexp(mx)[1]
        return math.ldexp(x0, -ex), math.ldexp(x1, -ex), math.ldexp(x2, -ex), math.ldexp(d, -ex)
    return x0, x1, x2, d


@numba.njit(cache=True, nogil=True, inline="always")
def _line(a, b, c, e, quadrant, su, sv, out):
    """``out[:4]`` = the unit-scaled line of ``a + u b + v c`` and its error bound (the numpy path's
    ``_lines``); returns whether it is exactly zero, or raises a flag (-1) when a value is not finite."""
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c) and math.isfinite(e)):
        return -1
    zero = a == 0 and b == 0 and c == 0 and e == 0
    d = e
    if quadrant:
        b = su * b - a
        c = sv * c - a
        d = 2 * d + _U * max(abs(a), max(abs(b), abs(c)))
    if not (math.isfinite(b) and math.isfinite(c) and math.isfinite(d)):
        return -1
    a, b, c, d = _scale(a, b, c, d)
    out[0], out[1], out[2] = a, b, c
    out[3] = d * (1 + 1e-9) + _TINY
    return 1 if zero else 0


@numba.njit(cache=True, nogil=True)
def _signs(S, s, Kn, l0, l1, l2, dl, sig):
    """Certified signs of a line at the ``Kn`` vertices of slot ``s`` of ``S``. Returns (any positive, any
    negative, any uncertain)."""
    hp = False
    hn = False
    for k in range(Kn):
        v = S[s, k, 0] * l0 + S[s, k, 1] * l1 + S[s, k, 2] * l2
        tol = _tol(S[s, k, 3], dl)
        if v > tol:
            sig[k] = 1
            hp = True
        elif v < -tol:
            sig[k] = -1
            hn = True
        else:
            sig[k] = 0
            return hp, hn, True
    return hp, hn, False


@numba.njit(cache=True, nogil=True, inline="always")
def _line_soa(a, b, c, e, quadrant, su, sv):
    """:func:`_line` without branches on the values, so that a loop of it vectorises: ``(finite, zero, rare,
    l0, l1, l2, dl)``, the same floats as :func:`_line` unless ``rare`` (a scaling past the normal range,
    which only :func:`_line` does right) or not ``finite`` (the polygon is given back)."""
    fin = (abs(a) < np.inf) & (abs(b) < np.inf) & (abs(c) < np.inf) & (abs(e) < np.inf)
    z = (a == 0) & (b == 0) & (c == 0) & (e == 0)
    d = e
    if quadrant:
        b = su * b - a
        c = sv * c - a
        d = 2 * d + _U * max(abs(a), max(abs(b), abs(c)))
        fin = fin & (abs(b) < np.inf) & (abs(c) < np.inf) & (abs(d) < np.inf)
    mx = max(abs(a), max(abs(b), abs(c)))
    sc = _pow2_inv(mx)
    rare = (sc == 0.0) & (mx != 0)
    sc = sc if sc != 0.0 else 1.0  # (mx == 0: unscaled, as _scale)
    return fin, z, rare, a * sc, b * sc, c * sc, (d * sc) * (1 + 1e-9) + _TINY


@numba.njit(cache=True, nogil=True)
def _grow_out(out, onv, par, bits, used, need_rows, need_slots):
    """The working arrays grown to ``need_rows`` rows (doubling) of ``need_slots`` slots; only their first
    ``used`` rows (the pieces written so far) are copied: the rest hold nothing yet."""
    rows = max(out.shape[0], need_rows)
    if need_rows > out.shape[0]:
        rows = max(2 * out.shape[0], need_rows)
    slots = max(out.shape[1], need_slots)
    out2 = np.empty((rows, slots, out.shape[2]))
    out2[:used, : out.shape[1]] = out[:used]
    onv2 = np.empty(rows, dtype=np.int64)
    onv2[:used] = onv[:used]
    par2 = np.empty(rows, dtype=np.int64)
    par2[:used] = par[:used]
    bits2 = np.empty((rows, bits.shape[1]), dtype=np.bool_)
    bits2[:used] = bits[:used]
    return out2, onv2, par2, bits2


# Loops over a working array that the calling kernel may rebind (grow) run in functions of their own (not
# inlined): in a loop that may rebind an array, numba reads its data pointer and strides again at every
# access.
@numba.njit(cache=True, nogil=True)
def _pad_rows(out, onv, cur):
    """Every slot past a piece's vertices repeats its vertex 0, in the first ``cur`` rows of ``out``."""
    for q in range(cur):
        for k in range(onv[q], out.shape[1]):
            for t in range(out.shape[2]):
                out[q, k, t] = out[q, 0, t]


_DONE, _GIVE_BACK, _TOO_MANY, _GROW_STACK, _GROW_SLOTS, _GROW_OUT, _GROW_CELLS = 0, 1, 2, 3, 4, 5, 6


@numba.njit(cache=True, nogil=True)
def _relu_dfs(p, S, Snv, Sbits, Scand, Snc, sig, cutting, L0, L1, L2, Ld, out, onv, par, bits, cur, n_fb, m,
              base, max_regions, block, top, first, CX):
    """The depth-first cut of polygon ``p`` for :func:`relu_split` (the stack's ``top`` slots, slot 0 its
    root and ``first`` while the root's cutting units ``Scand[0]`` are still to apply), into ``out`` from
    row ``cur``. Returns ``(status, cur, top, a, b)``: ``_DONE``; ``_GIVE_BACK`` (a decision too close to
    call); ``_TOO_MANY`` with the lower bound ``a``; or a buffer to grow, ``_GROW_STACK``, ``_GROW_SLOTS``
    (to hold ``a`` vertices) or ``_GROW_OUT`` (``a`` rows of ``b`` slots), after which the caller resumes
    with the ``cur`` and ``top`` returned (the piece at hand is tested again). No array is rebound here: in
    a loop that may rebind an array, numba reads its data pointer and strides again at every access, which
    made the cut a third slower than with the arrays as fixed arguments. ``CX (5, n)`` is scratch space for
    a piece's candidates' lines and extremes."""
    nrec = S.shape[2]
    C0, C1, C2, lo_c, hi_c = CX[0], CX[1], CX[2], CX[3], CX[4]
    n = Sbits.shape[1]
    rid = (np.int64(block) << _BLOCK_SHIFT) | (np.int64(p) << _ROW_SHIFT)
    while top > 0:
        top -= 1
        s = top
        Kn = Snv[s]
        ncut = 0
        if first:
            first = False
            for c in range(Snc[s]):
                cutting[c] = Scand[s, c]
            ncut = Snc[s]
        else:
            # The candidates' extremes over the vertices, then one decision per candidate with one
            # tolerance valid at every vertex (the largest vertex error); only an undecided candidate is
            # checked vertex by vertex. A cutting unit's other vertices may be too close to call: they are
            # checked when it cuts (below) or, on the halves, by this same test. Many candidates: their
            # lines gathered, then all of them against one vertex after another (a loop without branches,
            # vectorised); a few: each over the vertices until it is certainly positive and negative
            # somewhere (where the full extremes would make it cut too: the same decisions).
            nco = Snc[s]
            hmax = 0.0
            for k in range(Kn):
                hmax = max(hmax, S[s, k, 3])
            swept = nco >= _SWEEP_MIN
            if swept:
                for c in range(nco):
                    j = Scand[s, c]
                    C0[c], C1[c], C2[c] = L0[j], L1[j], L2[j]
                    lo_c[c] = np.inf
                    hi_c[c] = -np.inf
                for k in range(Kn):
                    s0, s1, s2 = S[s, k, 0], S[s, k, 1], S[s, k, 2]
                    for c in range(nco):
                        v = s0 * C0[c] + s1 * C1[c] + s2 * C2[c]
                        lo_c[c] = v if v < lo_c[c] else lo_c[c]
                        hi_c[c] = v if v > hi_c[c] else hi_c[c]
            for c in range(nco):
                j = Scand[s, c]
                l0, l1, l2 = L0[j], L1[j], L2[j]
                tmax = _tol(hmax, Ld[j])
                if swept:
                    lo, hi = lo_c[c], hi_c[c]
                else:
                    lo = np.inf
                    hi = -np.inf
                    for k in range(Kn):
                        v = S[s, k, 0] * l0 + S[s, k, 1] * l1 + S[s, k, 2] * l2
                        lo = v if v < lo else lo
                        hi = v if v > hi else hi
                        if hi > tmax and lo < -tmax:
                            break
                if lo > tmax:
                    Sbits[s, j] = True
                elif hi < -tmax:
                    Sbits[s, j] = False
                elif hi > tmax and lo < -tmax:
                    cutting[ncut] = j
                    ncut += 1
                else:
                    hp, hn, unsure = _signs(S, s, Kn, l0, l1, l2, Ld[j], sig)
                    if unsure:
                        return _GIVE_BACK, cur, 0, 0, 0
                    if hp and hn:
                        cutting[ncut] = j
                        ncut += 1
                    else:
                        Sbits[s, j] = hp
        if ncut == 0:
            if cur + 1 > out.shape[0] or Kn + 1 > out.shape[1]:
                return _GROW_OUT, cur, s + 1, cur + 1, Kn + 1
            for k in range(Kn):
                for t in range(nrec):
                    out[cur, k, t] = S[s, k, t]
            onv[cur] = Kn
            par[cur] = p
            for t in range(n):
                bits[cur, t] = Sbits[s, t]
            cur += 1
            low = cur + top + n_fb + (m - p - 1)
            if base + low > max_regions:
                return _TOO_MANY, cur, 0, low, 0
            continue
        j = cutting[0]
        l0, l1, l2, dl = L0[j], L1[j], L2[j], Ld[j]
        if top + 3 > S.shape[0]:
            return _GROW_STACK, cur, s + 1, 0, 0
        if Kn + 2 > S.shape[1]:
            return _GROW_SLOTS, cur, s + 1, Kn, 0
        # the root's cutting units were found with one tolerance for all vertices: recheck each vertex
        if _signs(S, s, Kn, l0, l1, l2, dl, sig)[2]:
            return _GIVE_BACK, cur, 0, 0, 0
        lid = from_bits(rid | j)
        ng = top + 1
        pg = top + 2
        cp, cn = _halves(S, s, Kn, sig, l0, l1, l2, dl, lid, pg, ng)
        if cp < 0:
            return _GIVE_BACK, cur, 0, 0, 0
        _take_cut(S, Snv, Sbits, Scand, Snc, s, pg, ng, cp, cn, j, cutting, ncut, nrec, n)
        top += 2
    return _DONE, cur, 0, 0, 0


@numba.njit(cache=True, nogil=True)
def relu_split(rec, nv, A, B, E, quadrant, su, sv, block, base, max_regions, out, onv, par, bits):
    """Cut polygons ``rec (m, K1, 9)`` by the zero lines of their ReLU node's input maps ``A (m, n)``,
    ``B (m, 2, n)`` (``E (m, n)`` bounds the error of all three). Line ids are
    ``block << 44 | row << 20 | unit``.

    Returns ``(status, low, out, onv, parent, bits, fallback)``: the pieces (slots past a piece's ``onv``
    vertices are not written), their vertex counts, polygons and bits ``z > 0``, and the polygons given
    back. ``status`` is 1 when ``base`` plus a lower bound ``low`` on the node's pieces exceeds
    ``max_regions`` (the arrays are then incomplete), else 0.

    ``out (cap, Kc, 9)``, ``onv``, ``par`` (``cap``) and ``bits (cap, n)`` are the working arrays to start
    with (the caller's pooled memory; grown here when too small), ``Kc`` at least 2 more than any ``nv``."""
    m, K1, nrec = rec.shape
    n = A.shape[1]
    Kc = out.shape[1]
    fallback = np.zeros(m, dtype=np.bool_)
    L = np.empty((n, 4))
    LS = np.empty((4, n))
    L0, L1, L2, Ld = LS[0], LS[1], LS[2], LS[3]
    zero = np.empty(n, dtype=np.bool_)
    smin = np.empty(n)
    smax = np.empty(n)
    # the stack of pieces still to cut: records, counts, bits, remaining cutting units
    depth = 16
    S = np.empty((depth, Kc, nrec))
    Snv = np.empty(depth, dtype=np.int64)
    Sbits = np.empty((depth, n), dtype=np.bool_)
    Scand = np.empty((depth, n), dtype=np.int32)
    Snc = np.empty(depth, dtype=np.int64)
    sig = np.empty(2 * Kc + 2, dtype=np.int8)
    cutting = np.empty(n, dtype=np.int32)
    CX = np.empty((5, n))
    cur = 0
    n_fb = 0
    for p in range(m):
        k1 = nv[p]
        # the polygon's lines (a loop without branches: about a quarter of the ReLU cut, vectorised)
        bad = False
        rare = False
        for j in range(n):
            f, z, r, x0, x1, x2, xd = _line_soa(A[p, j], B[p, 0, j], B[p, 1, j], E[p, j], quadrant, su, sv)
            bad |= not f
            rare |= r
            zero[j] = z
            L0[j] = x0
            L1[j] = x1
            L2[j] = x2
            Ld[j] = xd
        ok = not bad
        if ok and rare:
            for j in range(n):
                _line(A[p, j], B[p, 0, j], B[p, 1, j], E[p, j], quadrant, su, sv, L[j])
                L0[j], L1[j], L2[j], Ld[j] = L[j, 0], L[j, 1], L[j, 2], L[j, 3]
        if not ok:
            fallback[p] = True
            n_fb += 1
            continue
        # the polygon against all its units at once
        for j in range(n):
            smin[j] = np.inf
            smax[j] = -np.inf
        hmax = 0.0
        for k in range(k1):
            h0, h1, h2 = rec[p, k, 0], rec[p, k, 1], rec[p, k, 2]
            if not (math.isfinite(h0) and math.isfinite(h1) and math.isfinite(h2)):
                ok = False
                break
            hmax = max(hmax, rec[p, k, 3])
            for j in range(n):
                v = h0 * L0[j] + h1 * L1[j] + h2 * L2[j]
                smin[j] = v if v < smin[j] else smin[j]
                smax[j] = v if v > smax[j] else smax[j]
        if not math.isfinite(hmax):  # (a NaN bound compares false: the max stays finite, so test each)
            ok = False
        for k in range(k1):
            if not rec[p, k, 3] < np.inf:
                ok = False
        nc = 0
        # Most polygons are cut by no unit: every unit's decision made first in a loop without branches
        # (the same comparisons as below); only where some unit is not certainly on one side (it cuts, or a
        # vertex is near its line) does the loop below decide unit by unit, from the start.
        near = np.uint8(0)
        if ok:
            for j in range(n):
                tmax = _tol(hmax, Ld[j])
                on = smin[j] > tmax
                Sbits[0, j] = on & (not zero[j])
                near |= np.uint8(not (on or smax[j] < -tmax or zero[j]))
        for j in range(n):
            if not ok or near == 0:
                break
            if zero[j]:
                Sbits[0, j] = False
                continue
            tmax = _tol(hmax, Ld[j])
            if smin[j] > tmax:
                Sbits[0, j] = True
            elif smax[j] < -tmax:
                Sbits[0, j] = False
            elif smax[j] > tmax and smin[j] < -tmax:
                Scand[0, nc] = j
                nc += 1
            else:  # some vertex near the line: the per-vertex tolerance, then exact (given back)
                for k in range(k1):
                    for t in range(nrec):
                        S[0, k, t] = rec[p, k, t]
                hp, hn, unsure = _signs(S, 0, k1, L0[j], L1[j], L2[j], Ld[j], sig)
                if unsure:
                    ok = False
                elif hp and hn:
                    Scand[0, nc] = j
                    nc += 1
                else:
                    Sbits[0, j] = hp
        if not ok:
            fallback[p] = True
            n_fb += 1
            continue
        if nc == 0:  # no unit cuts the polygon: it is a piece as it is (no trip through the stack)
            if cur + 1 > out.shape[0] or k1 + 1 > out.shape[1]:
                out, onv, par, bits = _grow_out(out, onv, par, bits, cur, cur + 1, k1 + 1)
            for k in range(k1):
                for t in range(nrec):
                    out[cur, k, t] = rec[p, k, t]
            onv[cur] = k1
            par[cur] = p
            for t in range(n):
                bits[cur, t] = Sbits[0, t]
            cur += 1
            low = cur + n_fb + (m - p - 1)
            if base + low > max_regions:
                return 1, low, out, onv, par, bits, fallback
            continue
        for k in range(k1):
            for t in range(nrec):
                S[0, k, t] = rec[p, k, t]
        Snv[0] = k1
        Snc[0] = nc
        start = cur
        top = 1
        first = True
        while True:
            status, cur, top, v1, v2 = _relu_dfs(
                p, S, Snv, Sbits, Scand, Snc, sig, cutting, L0, L1, L2, Ld, out, onv, par, bits, cur, n_fb, m,
                base, max_regions, block, top, first, CX,
            )
            # a buffer too small: grown here (contents kept), and the cut resumes with the piece at hand
            first = False
            if status == _GROW_STACK:
                d2 = 2 * S.shape[0]
                S2 = np.empty((d2, S.shape[1], nrec))
                S2[: S.shape[0]] = S
                S = S2
                Snv2 = np.empty(d2, dtype=np.int64)
                Snv2[: Snv.shape[0]] = Snv
                Snv = Snv2
                Sb2 = np.empty((d2, n), dtype=np.bool_)
                Sb2[: Sbits.shape[0]] = Sbits
                Sbits = Sb2
                Sc2 = np.empty((d2, n), dtype=np.int32)
                Sc2[: Scand.shape[0]] = Scand
                Scand = Sc2
                Snc2 = np.empty(d2, dtype=np.int64)
                Snc2[: Snc.shape[0]] = Snc
                Snc = Snc2
            elif status == _GROW_SLOTS:
                S2 = np.empty((S.shape[0], 2 * v1 + 2, nrec))
                S2[:, : S.shape[1]] = S
                S = S2
                sig = np.empty(2 * S.shape[1] + 2, dtype=np.int8)
            elif status == _GROW_OUT:
                out, onv, par, bits = _grow_out(out, onv, par, bits, cur, v1, v2)
            else:
                break
        if status == _TOO_MANY:
            return 1, v1, out, onv, par, bits, fallback
        if status == _GIVE_BACK:
            cur = start
            fallback[p] = True
            n_fb += 1
    Kout = 1
    for q in range(cur):
        Kout = max(Kout, onv[q] + 1)
    if Kout > out.shape[1]:
        out, onv, par, bits = _grow_out(out, onv, par, bits, cur, cur, Kout)
    # every slot of the working array is returned (its first rows are contiguous: a narrower view would be
    # copied by the next kernel's caller, into fresh memory), but the slots past a piece's vertices are not
    # written: the kernels read a piece's nv vertices only, and padding every row wrote (and brought into
    # cache) about as many bytes again as its vertices; the numpy path pads what it is given (_padded_rows)
    return 0, cur + n_fb, out[:cur], onv[:cur], par[:cur], bits[:cur], fallback


@numba.njit(cache=True, nogil=True)
def pool_dominance(rec, nv, A, B, E, W, quadrant, su, sv):
    """Candidates of a max-pool node that may be the argmax somewhere on each polygon: ``surv (m, nw, k)``.

    Per polygon and window, the reference is the valid candidate largest at vertex 0 (any choice is sound);
    a candidate is dropped when the line of ``c_ref - c_i`` (built, with its error bound, as the numpy path's
    ``pair_lines``) is certainly positive at every vertex, so ``c_ref > c_i`` on the whole polygon. Anything
    not certain (a vertex within the bound, identical candidates, a non-finite value) keeps the candidate
    for the numpy path. ``W (nw, k)`` holds input entries, -1 for padding (never a candidate).

    A window's candidates are handled together, in loops without branches that vectorise: their entries
    gathered, their lines built (:func:`_line_soa`; the scalar :func:`_line` where a scaling leaves the
    normal range), then every candidate tested against one vertex after another."""
    m, K1, _ = rec.shape
    nw, k = W.shape
    surv = np.zeros((m, nw, k), dtype=np.bool_)
    L = np.empty(4)
    G = np.empty((4, k))  # the candidates' entries a, b_0, b_1, error
    LS = np.empty((4, k))  # their lines against the reference and the lines' error bounds
    L0, L1, L2, Ld = LS[0], LS[1], LS[2], LS[3]
    test = np.empty(k, dtype=np.uint8)  # a valid candidate whose line is tested at the vertices
    keep = np.empty(k, dtype=np.uint8)
    one = np.uint8(1)
    for p in range(m):
        k1 = nv[p]
        h0, h1, h2 = rec[p, 0, 0], rec[p, 0, 1], rec[p, 0, 2]
        for w in range(nw):
            ref = -1
            best = -np.inf
            for x in range(k):
                ix = W[w, x]
                if ix < 0:
                    continue
                a, b, c = A[p, ix], B[p, 0, ix], B[p, 1, ix]
                if quadrant:
                    b = su * b - a
                    c = sv * c - a
                v = h0 * a + h1 * b + h2 * c
                if ref < 0 or v > best:
                    ref, best = x, v
            if ref < 0:
                continue
            surv[p, w, ref] = True
            ir = W[w, ref]
            for x in range(k):
                ix = max(W[w, x], 0)  # (padding reads entry 0, and is not tested)
                G[0, x], G[1, x], G[2, x], G[3, x] = A[p, ix], B[p, 0, ix], B[p, 1, ix], E[p, ix]
            a0, b0, c0, e0 = A[p, ir], B[p, 0, ir], B[p, 1, ir], E[p, ir]
            rare = np.uint8(0)
            for x in range(k):
                dA = a0 - G[0, x]
                dB0 = b0 - G[1, x]
                dB1 = c0 - G[2, x]
                eD = e0 + G[3, x] + _U * max(abs(dA), max(abs(dB0), abs(dB1)))
                f, z, r, x0, x1, x2, xd = _line_soa(dA, dB0, dB1, eD, quadrant, su, sv)
                valid = np.uint8(W[w, x] >= 0) & np.uint8(x != ref)
                line = np.uint8(f) & (one - np.uint8(z))  # finite and not identically zero
                test[x] = valid & line
                keep[x] = valid & (one - line)
                rare |= valid & line & np.uint8(r)
                L0[x], L1[x], L2[x], Ld[x] = x0, x1, x2, xd
            if rare:  # a scaling past the normal range: the scalar construction's floats
                for x in range(k):
                    if test[x]:
                        ix = W[w, x]
                        dA = a0 - A[p, ix]
                        dB0 = b0 - B[p, 0, ix]
                        dB1 = c0 - B[p, 1, ix]
                        eD = e0 + E[p, ix] + _U * max(abs(dA), max(abs(dB0), abs(dB1)))
                        _line(dA, dB0, dB1, eD, quadrant, su, sv, L)
                        L0[x], L1[x], L2[x], Ld[x] = L[0], L[1], L[2], L[3]
            # kept unless certainly positive at every vertex, each with its own tolerance (a tolerance from
            # the largest vertex error, a shortcut of the scalar version, never decides otherwise: _tol,
            # rounding included, does not decrease with the error)
            for q in range(k1):
                g0, g1, g2, gd = rec[p, q, 0], rec[p, q, 1], rec[p, q, 2], rec[p, q, 3]
                for x in range(k):
                    s = g0 * L0[x] + g1 * L1[x] + g2 * L2[x]
                    keep[x] |= test[x] & np.uint8(not (s > _tol(gd, Ld[x])))
            for x in range(k):
                if keep[x]:
                    surv[p, w, x] = True
    return surv


@numba.njit(cache=True, nogil=True, inline="always")
def _entry(A, B, E, p, lazy, on, slope, aslope, j):
    """Entry ``j`` of row ``p`` of a node's maps ``(a, b_0, b_1, error)``; with ``lazy``, of the ReLU output
    of those maps with bit ``on`` (:func:`relu_maps`'s formulas: an on unit keeps its value exactly, an off
    unit is scaled by ``slope``, which rounds once unless it is 0)."""
    a, b0, b1, e = A[p, j], B[p, 0, j], B[p, 1, j], E[p, j]
    if lazy and not on:
        a, b0, b1 = a * slope, b0 * slope, b1 * slope
        e = e * aslope + _U * max(abs(a), max(abs(b0), abs(b1)))
    return a, b0, b1, e


@numba.njit(cache=True, nogil=True)
def relu_maps(A, B, E, parent, bits, slope, block, origins, nA, nB, nE, orig):
    """A ReLU node's output maps on its pieces (the numpy path's formulas in one pass): ``(A, B, E,
    origin)``, a unit on keeping its input's value, an off unit scaled by ``slope`` (0 is exact, any other
    slope rounds once), and every output's origin the id of its unit's line (none unless ``origins``),
    written into ``nA (m, n)``, ``nB (m, 2, n)``, ``nE (m, n)`` and ``orig (m, n or 0)``."""
    m = parent.shape[0]
    n = A.shape[1]
    aslope = abs(slope)
    for q in range(m):
        p = parent[q]
        rid = (np.int64(block) << _BLOCK_SHIFT) | (np.int64(p) << _ROW_SHIFT)
        for j in range(n):
            a, b0, b1, e = _entry(A, B, E, p, True, bits[q, j], slope, aslope, j)
            nA[q, j], nB[q, 0, j], nB[q, 1, j], nE[q, j] = a, b0, b1, e
            if origins:
                orig[q, j] = rid | j
    return nA, nB, nE, orig


@numba.njit(cache=True, nogil=True)
def affine_maps(A, B, E, parent, bits, slope, lazy, MT, ptr, rows, vals, bias, gam, tiny, nA, nB, nE):
    """:func:`affine_maps_checked` without the finiteness flag: ``(nA, nB, nE)``."""
    nA, nB, nE, _ = affine_maps_checked(
        A, B, E, parent, bits, slope, lazy, MT, ptr, rows, vals, bias, gam, tiny, nA, nB, nE
    )
    return nA, nB, nE


@numba.njit(cache=True, nogil=True)
def affine_maps_checked(A, B, E, parent, bits, slope, lazy, MT, ptr, rows, vals, bias, gam, tiny, nA, nB, nE):
    """An affine node's output maps and error bound (the numpy path's formulas), input by input: each
    output sums ``bias + w_0 x_0 + w_1 x_1 + ...`` in input order, skipping inputs that are exactly zero on
    the polygon (the ReLU outputs that are off: their map and error are 0) and, given ``MT`` of shape
    ``(0, 0)``, pruned weights. The matrix comes transposed, ``MT (n_in, n_out)`` (a dense update of all
    outputs per input, which vectorises), or as compressed columns ``ptr``, ``rows``, ``vals`` (the nonzero
    weights of input ``i`` are ``vals[ptr[i]:ptr[i + 1]]`` at outputs ``rows[...]``). The bound
    ``gamma (|m|.|x| + |b|)`` holds for any order of summation.

    With ``lazy`` the input is the ReLU output (gain ``slope``) of rows ``parent`` of ``A, B, E`` with bits
    ``bits``, read as :func:`relu_maps` would write it (the same floats), without writing it. The output
    is written into ``nA (m, n_out)``, ``nB (m, 2, n_out)``, ``nE (m, n_out)``; returns them and ``finite``,
    True only if every value written is finite (tested while writing them: the four values of an output
    summed, a sum that is finite only when all four are; a sum of finite values that overflows gives False
    too, so False asks the caller for ``_slice.check_finite``'s own test)."""
    m = parent.shape[0] if lazy else A.shape[0]
    n_in = A.shape[1]
    n_out = bias.shape[0]
    dense = MT.shape[0] == n_in and n_in > 0
    aMT = np.abs(MT)
    avals = np.abs(vals)
    aslope = abs(slope)
    # the sums of one piece accumulate in one small local array (rows A, B_0, B_1, bound), written out at
    # the end: about a third faster than updating the three output arrays' rows in place
    acc = np.empty((4, n_out))
    # Pieces of one polygon (consecutive rows with one parent, as the ReLU kernel writes them) read the same
    # input entries: in a run of at least 4 such pieces their products with the weights are made once, in a
    # table (gain on, and off for a leaky ReLU), and each piece adds its table rows in input order, so the
    # sums are the same floats as multiplying per piece. Only for narrow outputs (<= 16): there the per
    # piece cost is the four short loops over outputs, which the table's one loop of 4 n_out replaces; on
    # wider ones the table's extra loads cost what the multiplications saved (measured).
    use_table = lazy and dense and n_out <= 16 and n_in * n_out * 4 <= _TABLE_MAX
    n_tab = 2 if slope != 0.0 else 1
    tab = np.empty((n_tab, n_in, 4, n_out) if use_table else (1, 0, 4, 0))
    # (two rows even without an off table: an off unit of a ReLU then reads a row that is all skipped)
    skip = np.ones((2, n_in if use_table else 0), dtype=np.bool_)
    tab_p = -1
    tab2 = tab.reshape(tab.shape[0] * tab.shape[1], 4 * tab.shape[3])
    accf = acc.reshape(4 * n_out)
    # a piece's table rows to add, in input order: listed without a branch per input first (whether a unit
    # is on is close to a coin flip, so a branch per input mispredicts about every other time); pos[i]: how
    # many of them come before input i
    take = np.empty(n_in if use_table else 0, dtype=np.int64)
    pos = np.zeros(n_in + 1 if use_table else 1, dtype=np.int64)
    # Pieces of one polygon as the ReLU kernel writes them (depth first, units cut in input order) share the
    # bits of the units before the first one that separates them, so their first rows, and the sums of those
    # rows, are the same: the rows listed and the sums after every four rows (snap[b]: after 4 b rows) of the
    # last piece are kept, and the next piece of the same table lists its rows from its first bit that
    # differs and adds them from the last such state before it (the same floats: the same rows, in order).
    snap = np.empty((n_in // 4 + 1 if use_table else 0, 4 * n_out))
    prev = False  # whether piece q - 1 went through the table now in use
    fin = np.uint8(1)
    for q in range(m):
        for o in range(n_out):
            acc[0, o] = bias[o]
            acc[1, o] = 0.0
            acc[2, o] = 0.0
            acc[3, o] = 0.0
        p = parent[q] if lazy else q
        if use_table and (tab_p == p or (q + 3 < m and parent[q + 1] == p and parent[q + 3] == p)):
            if tab_p != p:
                tab_p = p
                prev = False
                for g in range(n_tab):
                    on = g == 0
                    for i in range(n_in):
                        a, b0, b1, e = _entry(A, B, E, p, lazy, on, slope, aslope, i)
                        x = e * (1 + gam) + gam * max(abs(a), max(abs(b0), abs(b1)))
                        skip[g, i] = (not on and slope == 0.0) or (a == 0 and b0 == 0 and b1 == 0 and x == 0)
                        if skip[g, i]:
                            continue
                        for o in range(n_out):
                            w = MT[i, o]
                            tab[g, i, 0, o] = w * a
                            tab[g, i, 1, o] = w * b0
                            tab[g, i, 2, o] = w * b1
                            tab[g, i, 3, o] = aMT[i, o] * x
            d = 0
            if prev:
                while d < n_in and bits[q, d] == bits[q - 1, d]:
                    d += 1
            prev = True
            nt = pos[d]
            same = nt
            for i in range(d, n_in):
                pos[i] = nt
                g = 1 - np.int64(bits[q, i])
                take[nt] = g * n_in + i
                nt += 1 - np.int64(skip[g, i])
            pos[n_in] = nt
            # eight (then four) rows per pass over the sums, each still added in input order (the same
            # floats): a row at a time reloads and stores every sum per row, which bounds the loop
            t = (same // 4) * 4
            if t > 0:
                b = t // 4
                for o in range(4 * n_out):
                    accf[o] = snap[b, o]
            while t + 7 < nt:
                r1, r2, r3, r4 = take[t], take[t + 1], take[t + 2], take[t + 3]
                r5, r6, r7, r8 = take[t + 4], take[t + 5], take[t + 6], take[t + 7]
                b = t // 4 + 1
                for o in range(4 * n_out):
                    v = (((accf[o] + tab2[r1, o]) + tab2[r2, o]) + tab2[r3, o]) + tab2[r4, o]
                    snap[b, o] = v
                    v = (((v + tab2[r5, o]) + tab2[r6, o]) + tab2[r7, o]) + tab2[r8, o]
                    accf[o] = v
                    snap[b + 1, o] = v
                t += 8
            while t + 3 < nt:
                r1, r2, r3, r4 = take[t], take[t + 1], take[t + 2], take[t + 3]
                b = t // 4 + 1
                for o in range(4 * n_out):
                    v = (((accf[o] + tab2[r1, o]) + tab2[r2, o]) + tab2[r3, o]) + tab2[r4, o]
                    accf[o] = v
                    snap[b, o] = v
                t += 4
            while t < nt:
                r = take[t]
                for o in range(4 * n_out):
                    accf[o] += tab2[r, o]
                t += 1
            fin &= _store_piece(acc, q, n_out, bias, gam, tiny, nA, nB, nE)
            continue
        prev = False
        for i in range(n_in):
            on = bits[q, i] if lazy else True
            if not on and slope == 0.0:
                continue  # an off ReLU unit is exactly zero
            a, b0, b1, e = _entry(A, B, E, p, lazy, on, slope, aslope, i)
            x = e * (1 + gam) + gam * max(abs(a), max(abs(b0), abs(b1)))
            if a == 0 and b0 == 0 and b1 == 0 and x == 0:
                continue  # adds exact zeros
            if dense:
                for o in range(n_out):
                    w = MT[i, o]
                    acc[0, o] += w * a
                    acc[1, o] += w * b0
                    acc[2, o] += w * b1
                    acc[3, o] += aMT[i, o] * x
            else:
                for t in range(ptr[i], ptr[i + 1]):
                    o = rows[t]
                    w = vals[t]
                    acc[0, o] += w * a
                    acc[1, o] += w * b0
                    acc[2, o] += w * b1
                    acc[3, o] += avals[t] * x
        fin &= _store_piece(acc, q, n_out, bias, gam, tiny, nA, nB, nE)
    return nA, nB, nE, fin == 1


@numba.njit(cache=True, nogil=True, inline="always")
def _store_piece(acc, q, n_out, bias, gam, tiny, nA, nB, nE):
    """Piece ``q``'s sums into its maps and error bound; 1 when all four of every output are finite."""
    fin = np.uint8(1)
    for o in range(n_out):
        a0, a1, a2 = acc[0, o], acc[1, o], acc[2, o]
        a3 = acc[3, o] * (1 + gam) + (tiny + gam * abs(bias[o]))
        nA[q, o] = a0
        nB[q, 0, o] = a1
        nB[q, 1, o] = a2
        nE[q, o] = a3
        fin &= np.uint8(abs((a0 + a1) + (a2 + a3)) < np.inf)
    return fin


@numba.njit(cache=True, nogil=True)
def _fit3(a, rows, slots):
    """``a`` (rows, slots, r) grown to at least ``rows`` x ``slots`` (doubling), contents kept."""
    if rows <= a.shape[0] and slots <= a.shape[1]:
        return a
    r2 = a.shape[0] if rows <= a.shape[0] else max(2 * a.shape[0], rows)
    s2 = a.shape[1] if slots <= a.shape[1] else max(2 * a.shape[1], slots)
    b = np.empty((r2, s2, a.shape[2]), dtype=a.dtype)
    b[: a.shape[0], : a.shape[1]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _fit2(a, rows):
    if rows <= a.shape[0]:
        return a
    b = np.empty((max(2 * a.shape[0], rows), a.shape[1]), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _fit1(a, rows):
    if rows <= a.shape[0]:
        return a
    b = np.empty(max(2 * a.shape[0], rows), dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@numba.njit(cache=True, nogil=True)
def _clip(S, s, Kn, sig, l0, l1, l2, dl, lid, D, d):
    """The part of piece ``S[s]`` (``Kn`` vertices, signs ``sig`` all +-1) where the line is positive, into
    ``D[d]`` (as the numpy path's ``_split``); returns its vertex count, or -1 when a crossing's side of
    the frame is uncertain."""
    cnt = 0
    for k in range(Kn):
        sk = sig[k]
        sx = sig[k + 1] if k + 1 < Kn else sig[0]
        if sk > 0:
            for t in range(9):
                D[d, cnt, t] = S[s, k, t]
            cnt += 1
        if sk != sx:
            ok, x0, x1, x2, dX = _crossing(S[s, k, 4], S[s, k, 5], S[s, k, 6], S[s, k, 7], l0, l1, l2, dl)
            if not ok:
                return -1
            D[d, cnt, 0], D[d, cnt, 1], D[d, cnt, 2], D[d, cnt, 3] = x0, x1, x2, dX
            if sx < 0:  # the piece leaves along the line
                D[d, cnt, 4], D[d, cnt, 5], D[d, cnt, 6], D[d, cnt, 7], D[d, cnt, 8] = l0, l1, l2, dl, lid
            else:
                for t in range(4, 9):
                    D[d, cnt, t] = S[s, k, t]
            cnt += 1
    return cnt


@numba.njit(cache=True, nogil=True)
def _pool_cells(
    p, rec, nv, A, B, E, W, quadrant, su, sv, surv, rid, PQ, PQn, PQb, T, sig, sl, L, out, onv, par, best,
    cur, m, base, max_regions,
):
    """The argmax cells of polygon ``p`` for :func:`pool_split`, into ``out`` from row ``cur``: the pieces
    so far are ``PQ[c]`` (counts ``PQn[c]``, argmax positions ``PQb[c]``), and the next window's cells are
    built in ``PQ[1 - c]``. Returns ``(status, a, b)`` as :func:`_relu_dfs`: ``_DONE`` with the new row
    count; ``_GIVE_BACK``; ``_TOO_MANY`` with a lower bound; ``_GROW_SLOTS`` (``a`` vertex slots),
    ``_GROW_CELLS`` (``a`` cells of ``b`` slots) or ``_GROW_OUT`` (``a`` rows of ``b`` slots) for the caller
    to grow before it cuts the polygon again. No array is rebound here (see :func:`_relu_dfs`)."""
    nw, k = W.shape
    nrec = rec.shape[2]
    k1 = nv[p]
    if k1 + 2 > PQ.shape[2]:
        return _GROW_SLOTS, k1 + 2, 0
    for kk in range(k1):
        for t in range(nrec):
            PQ[0, 0, kk, t] = rec[p, kk, t]
    PQn[0, 0] = k1
    c = 0
    npc = 1
    for w in range(nw):
        ns = 0
        for x in range(k):
            if W[w, x] >= 0 and surv[p, w, x]:
                sl[ns] = x
                ns += 1
        if ns == 1:
            for q in range(npc):
                PQb[c, q, w] = sl[0]
            continue
        d = 1 - c
        nq = 0
        for q in range(npc):
            for a in range(ns):
                i = sl[a]
                ix = W[w, i]
                tn = PQn[c, q]
                if tn + ns + 2 > T.shape[1]:
                    return _GROW_SLOTS, tn + ns + 2, 0
                for kk in range(tn):
                    for t in range(nrec):
                        T[0, kk, t] = PQ[c, q, kk, t]
                ct = 0
                empty = False
                for b in range(ns):
                    j = sl[b]
                    if j == i:
                        continue
                    iy = W[w, j]
                    dA = A[p, ix] - A[p, iy]
                    dB0 = B[p, 0, ix] - B[p, 0, iy]
                    dB1 = B[p, 1, ix] - B[p, 1, iy]
                    eD = E[p, ix] + E[p, iy] + _U * max(abs(dA), max(abs(dB0), abs(dB1)))
                    f = _line(dA, dB0, dB1, eD, quadrant, su, sv, L)
                    if f < 0:
                        return _GIVE_BACK, 0, 0
                    if f == 1:  # c_i == c_j exactly everywhere: the earlier position wins
                        if i > j:
                            empty = True
                            break
                        continue
                    hp, hn, unsure = _signs(T, ct, tn, L[0], L[1], L[2], L[3], sig)
                    if unsure:
                        return _GIVE_BACK, 0, 0
                    if not hp:
                        empty = True
                        break
                    if not hn:
                        continue
                    lid = from_bits(rid | (w * k * k + i * k + j))
                    cnt = _clip(T, ct, tn, sig, L[0], L[1], L[2], L[3], lid, T, 1 - ct)
                    if cnt < 0:
                        return _GIVE_BACK, 0, 0
                    ct = 1 - ct
                    tn = cnt
                if empty:
                    continue
                if nq + 1 > PQ.shape[1] or tn + 2 > PQ.shape[2]:
                    return _GROW_CELLS, nq + 1, tn + 2
                for kk in range(tn):
                    for t in range(nrec):
                        PQ[d, nq, kk, t] = T[ct, kk, t]
                PQn[d, nq] = tn
                for t in range(nw):
                    PQb[d, nq, t] = PQb[c, q, t]
                PQb[d, nq, w] = i
                nq += 1
        c = d
        npc = nq
        low = cur + npc + (m - p - 1)
        if base + low > max_regions:
            return _TOO_MANY, low, 0
    for q in range(npc):
        kq = PQn[c, q]
        if cur + 1 > out.shape[0] or kq + 1 > out.shape[1] or cur + 1 > onv.shape[0]:
            return _GROW_OUT, cur + 1, kq + 1
        if cur + 1 > par.shape[0] or cur + 1 > best.shape[0]:
            return _GROW_OUT, cur + 1, kq + 1
        for kk in range(kq):
            for t in range(nrec):
                out[cur, kk, t] = PQ[c, q, kk, t]
        onv[cur] = kq
        par[cur] = p
        for t in range(nw):
            best[cur, t] = PQb[c, q, t]
        cur += 1
    return _DONE, cur, 0


@numba.njit(cache=True, nogil=True, inline="always")
def _pool_single(p, W, surv, sl):
    """Whether every window of polygon ``p`` keeps exactly one candidate (its position is left in
    ``sl[0]`` for the last window checked)."""
    nw, k = W.shape
    for w in range(nw):
        ns = 0
        for x in range(k):
            if W[w, x] >= 0 and surv[p, w, x]:
                sl[0] = x
                ns += 1
        if ns != 1:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _pool_singles(p, rec, nv, W, surv, out, onv, par, best, cur):
    """Copy polygons ``p, p + 1, ...`` that are their own argmax cells (one candidate left in every window)
    into ``out`` from row ``cur``, with their argmax positions, up to the first polygon that is not or that
    does not fit; returns that polygon's index (``m`` at the end) and the new row count. No array is
    rebound here (see :func:`_relu_dfs`)."""
    m, _, nrec = rec.shape
    nw, k = W.shape
    while p < m:
        k1 = nv[p]
        if cur + 1 > out.shape[0] or k1 + 1 > out.shape[1] or cur + 1 > onv.shape[0]:
            return p, cur
        if cur + 1 > par.shape[0] or cur + 1 > best.shape[0]:
            return p, cur
        for w in range(nw):
            ns = 0
            for x in range(k):
                if W[w, x] >= 0 and surv[p, w, x]:
                    best[cur, w] = x
                    ns += 1
            if ns != 1:
                return p, cur
        for kk in range(k1):
            for t in range(nrec):
                out[cur, kk, t] = rec[p, kk, t]
        onv[cur] = k1
        par[cur] = p
        cur += 1
        p += 1
    return p, cur


@numba.njit(cache=True, nogil=True)
def pool_split(rec, nv, A, B, E, W, quadrant, su, sv, block, base, max_regions, out, onv, par, best):
    """Cut polygons ``rec (m, K1, 9)`` into a max-pool node's argmax cells, window after window: the cell of
    surviving candidate ``i`` (those :func:`pool_dominance` keeps, found first, in the same call) is the
    piece clipped by ``c_i - c_j >= 0`` for every other survivor ``j``, in position order, as the numpy path
    clips (line ids ``block << 44 | row << 20 | w k^2 + i k + j``); where ``c_i - c_j`` is exactly zero with
    a zero bound the earlier position wins. Returns ``(status, low, out, onv, parent, best, fallback,
    surv)``: the pieces (slots past a piece's ``onv`` vertices are not written), their vertex counts,
    polygons and argmax positions ``(pieces, nw)``, the polygons given back to the numpy path (a decision
    within its error bound, a non-finite value) and the survivors ``(m, nw, k)`` (where the numpy path starts
    on those polygons); status 1 (arrays incomplete) when ``base`` plus a lower bound ``low`` on the pieces
    exceeds ``max_regions``. ``out (cap, Ks, 9)``, ``onv``, ``par`` (``cap``) and ``best (cap, nw)`` are the
    working arrays to start with (the caller's pooled memory; grown here when too small), ``Ks`` at least 2
    more than any ``nv``."""
    m, K1, nrec = rec.shape
    nw, k = W.shape
    Ks = out.shape[1]
    fallback = np.zeros(m, dtype=np.bool_)
    surv = pool_dominance(rec, nv, A, B, E, W, quadrant, su, sv)
    PQ = np.empty((2, 8, Ks, nrec))  # the pieces of a polygon so far, and the next window's cells
    PQn = np.empty((2, 8), dtype=np.int64)
    PQb = np.empty((2, 8, nw), dtype=np.int64)
    T = np.empty((2, Ks, nrec))
    sig = np.empty(Ks + 1, dtype=np.int8)
    sl = np.empty(k, dtype=np.int64)
    L = np.empty(4)
    cur = 0
    p = -1
    while p < m - 1:
        p += 1
        # the common case, one candidate left in every window: the polygon is its own cell (a run of such
        # polygons is copied by a function of its own, which rebinds no array)
        p, cur = _pool_singles(p, rec, nv, W, surv, out, onv, par, best, cur)
        if p == m:
            break
        k1 = nv[p]
        if _pool_single(p, W, surv, sl):
            # no room left for it: grown here, and the run resumes with this polygon
            out = _fit3(out, cur + 1, k1 + 1)
            onv = _fit1(onv, cur + 1)
            par = _fit1(par, cur + 1)
            best = _fit2(best, cur + 1)
            p -= 1
            continue
        rid = (np.int64(block) << _BLOCK_SHIFT) | (np.int64(p) << _ROW_SHIFT)
        status, a, b = _pool_cells(p, rec, nv, A, B, E, W, quadrant, su, sv, surv, rid, PQ, PQn, PQb, T, sig,
                                   sl, L, out, onv, par, best, cur, m, base, max_regions)
        # a buffer too small: grown here, and the polygon is cut again from the start
        if status == _GROW_SLOTS:
            slots = max(a, 2 * T.shape[1])
            T = np.empty((2, slots, nrec))
            sig = np.empty(slots + 1, dtype=np.int8)
            if slots > PQ.shape[2]:
                PQ = np.empty((2, PQ.shape[1], slots, nrec))
            p -= 1
        elif status == _GROW_CELLS:
            rows = max(a, 2 * PQ.shape[1])
            PQ = np.empty((2, rows, max(b, PQ.shape[2]), nrec))
            PQn = np.empty((2, rows), dtype=np.int64)
            PQb = np.empty((2, rows, nw), dtype=np.int64)
            p -= 1
        elif status == _GROW_OUT:
            out = _fit3(out, a, b)
            onv = _fit1(onv, a)
            par = _fit1(par, a)
            best = _fit2(best, a)
            p -= 1
        elif status == _TOO_MANY:
            return 1, a, out[:0], onv[:0], par[:0], best[:0], fallback, surv
        elif status == _GIVE_BACK:
            fallback[p] = True
        else:
            cur = a
    Kout = 1
    for q in range(cur):
        Kout = max(Kout, onv[q] + 1)
    out = _fit3(out, cur, Kout)  # (slots past a piece's vertices not written, as in relu_split)
    return 0, cur, out[:cur], onv[:cur], par[:cur], best[:cur], fallback, surv


@numba.njit(cache=True, nogil=True)
def add_maps(A1, B1, E1, par1, bits1, slope1, lazy1, A2, B2, E2, par2, bits2, slope2, lazy2, c, nA, nB, nE):
    """The sum of two nodes' maps and its error bound (the numpy path's formula, ``c`` = 2 u (1 + 1e-9)),
    in one pass, written into ``nA``, ``nB``, ``nE``; an operand with ``lazy`` is a ReLU output read as in
    :func:`affine_maps`."""
    m = par1.shape[0] if lazy1 else A1.shape[0]
    n = A1.shape[1]
    as1, as2 = abs(slope1), abs(slope2)
    for q in range(m):
        p1 = par1[q] if lazy1 else q
        p2 = par2[q] if lazy2 else q
        for j in range(n):
            a1, b10, b11, e1 = _entry(A1, B1, E1, p1, lazy1, bits1[q, j] if lazy1 else True, slope1, as1, j)
            a2, b20, b21, e2 = _entry(A2, B2, E2, p2, lazy2, bits2[q, j] if lazy2 else True, slope2, as2, j)
            nA[q, j] = a1 + a2
            nB[q, 0, j] = b10 + b20
            nB[q, 1, j] = b11 + b21
            mag = max(abs(a1), max(abs(b10), abs(b11))) + max(abs(a2), max(abs(b20), abs(b21)))
            nE[q, j] = (e1 + e2) * (1 + c) + c * mag
    return nA, nB, nE


@numba.njit(cache=True, nogil=True)
def extend_patterns(pats, parent, cols, out):
    """``out[q] = [pats[parent[q]], cols[q]]`` (the pieces' pattern columns after a pattern node)."""
    n = pats.shape[1]
    for q in range(parent.shape[0]):
        p = parent[q]
        for t in range(n):
            out[q, t] = pats[p, t]
        for t in range(cols.shape[1]):
            out[q, n + t] = cols[q, t]
    return out


@numba.njit(cache=True, nogil=True)
def pool_outputs(A, B, E, orig, W, parent, best, maps, onehot, nA, nB, nE, norig):
    """A max-pool node's pattern columns ``onehot (pieces, nw k)`` (the argmax ``best`` of each window)
    and, with ``maps``, its output maps on the pieces: the selected candidate's map (``A, B, E``, origin) of
    the piece's polygon ``parent``. The output arrays are written, not allocated."""
    nw, k = W.shape
    for q in range(parent.shape[0]):
        p = parent[q]
        for t in range(nw * k):
            onehot[q, t] = False
        for w in range(nw):
            b = best[q, w]
            onehot[q, w * k + b] = True
            if maps:
                j = W[w, b]
                nA[q, w] = A[p, j]
                nB[q, 0, w] = B[p, 0, j]
                nB[q, 1, w] = B[p, 1, j]
                nE[q, w] = E[p, j]
                if norig.shape[1] > 0:
                    norig[q, w] = orig[p, j]
    return onehot
