"""Compiled (numba) split of a layer's polygons by the layer's units, for chain networks.

This is the inner loop of :func:`netgeom.regions._slice._slice_chunk` for one layer: each polygon is cut by
its candidate units one at a time, with exactly the certified float predicates of the numpy path
(:func:`netgeom.regions._slice._split`): the same tolerances, the same crossing-point formulas and the same
vertex-record layout, so a polygon it finishes is bit for bit the numpy path's. It has no exact arithmetic
(Python integers): a polygon on which any decision falls within its error bound (a vertex too close to a
unit's line, a crossing point whose ``D`` sign is uncertain, a NaN bound) is *given back* untouched, flagged,
and the caller cuts that polygon with the numpy path, which settles those decisions exactly. A unit whose
line and error bound are both exactly zero (a pruned unit) is identically zero on the polygon: bit False, no
cut, no exact decision needed.

Compiled on first use and cached on disk (``cache=True``): later processes load it in well under a second.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_U = 2.0**-53
_TINY = 1e-300
_SIG_TOL = 1 + 1e-6
_X_TOL = 1 + 1e-9
_SLACK = 10 * _U + _TINY  # constant term of a sign's tolerance, as in _slice (same floating-point value)

OK, TOO_MANY = 0, 1
ROW_SHIFT = 20  # as _slice._ROW_SHIFT


@numba.njit(cache=True, nogil=True)
def _grow_rows(out, onv, par, bits, need):
    cap = out.shape[0]
    new = max(2 * cap, need)
    out2 = np.empty((new, out.shape[1], out.shape[2]))
    out2[:cap] = out
    onv2 = np.empty(new, dtype=np.int64)
    onv2[:cap] = onv
    par2 = np.empty(new, dtype=np.int64)
    par2[:cap] = par
    bits2 = np.empty((new, bits.shape[1]), dtype=np.bool_)
    bits2[:cap] = bits
    return out2, onv2, par2, bits2


@numba.njit(cache=True, nogil=True)
def _grow_slots(out, need):
    K = out.shape[1]
    new = max(K + 4, need)  # pieces rarely have many more vertices: padding slots are memory touched
    out2 = np.empty((out.shape[0], new, out.shape[2]))
    out2[:, :K] = out
    return out2


@numba.njit(cache=True, nogil=True)
def _nanmax(a, b):
    """``np.maximum``: NaN if either is NaN (a NaN error bound must stay NaN, i.e. uncertain)."""
    if a != a or b != b:
        return math.nan
    return a if a >= b else b


@numba.njit(cache=True, nogil=True)
def _grow_stack(S, Snv, Sbits, Scand, Snc, depth):
    d = S.shape[0]
    S2 = np.empty((depth, S.shape[1], S.shape[2]))
    S2[:d] = S
    Snv2 = np.empty(depth, dtype=np.int64)
    Snv2[:d] = Snv
    Sbits2 = np.empty((depth, Sbits.shape[1]), dtype=np.bool_)
    Sbits2[:d] = Sbits
    Scand2 = np.empty((depth, Scand.shape[1]), dtype=np.int32)
    Scand2[:d] = Scand
    Snc2 = np.empty(depth, dtype=np.int64)
    Snc2[:d] = Snc
    return S2, Snv2, Sbits2, Scand2, Snc2


@intrinsic
def as_bits(typingctx, x):
    """The int64 whose bits are those of the float64 ``x`` (a bit cast: no memory, no call)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def from_bits(typingctx, x):
    """The float64 whose bits are those of the int64 ``x`` (the inverse of :func:`as_bits`)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@numba.njit(cache=True, nogil=True, inline="always")
def _pow2_inv(mag):
    """``2**-e`` for ``mag = f 2**e`` (``0.5 <= f < 1``, as ``frexp``) built from the float's exponent bits,
    or 0.0 outside the normal range where that power is a normal float (the caller then uses frexp/ldexp).
    Multiplying by it is ``ldexp(x, -e)`` exactly: both are the correctly rounded ``x 2**-e``. (C calls to
    frexp and ldexp per value cost ten times the rest of a line's construction.)"""
    e = (as_bits(mag) >> 52) & 0x7FF
    if e == 0 or e > 2044:  # zero, subnormal, >= 2**1021, inf or NaN
        return 0.0
    return from_bits((2045 - e) << 52)


@numba.njit(cache=True, nogil=True, inline="always")
def _tol(hd, dl):
    """Bound on the error of ``l . h`` for unit-scaled ``l``, ``h`` with errors ``dl``, ``hd``:
    ``|l.h - l*.h*| <= 3 (dl + hd + dl hd)``, times ``1 + 1e-6`` and plus ``10 u`` for the dot product's own
    rounding (the numpy paths' ``_tol``; shared by the chain and graph kernels)."""
    return 3 * (hd + dl + hd * dl) * _SIG_TOL + _SLACK


@numba.njit(cache=True, nogil=True, inline="always")
def _crossing(e0, e1, e2, ed, l0, l1, l2, dl):
    """The crossing point of an edge's line ``e`` (error ``ed``) and a cutting line ``l`` (error ``dl``),
    unit-scaled with ``D > 0``, and its error bound: ``(ok, x0, x1, x2, dX)``, ``ok`` False when a value is
    not finite or the sign of ``D`` is within its bound (the caller gives the polygon to the exact path).
    The numpy path's ``_split`` formulas, bit for bit; shared by the chain and graph kernels."""
    x0 = e1 * l2 - e2 * l1
    x1 = e2 * l0 - e0 * l2
    x2 = e0 * l1 - e1 * l0
    dX = 2 * (ed + dl + ed * dl) + 5 * _U + _TINY
    mx = max(abs(x0), max(abs(x1), abs(x2)))
    if not (math.isfinite(mx) and math.isfinite(dX)):
        return False, x0, x1, x2, dX
    sc = _pow2_inv(mx)
    if sc != 0.0:
        x0, x1, x2, dX = x0 * sc, x1 * sc, x2 * sc, dX * sc
    elif mx != 0:
        ex = math.frexp(mx)[1]
        x0, x1, x2, dX = math.ldexp(x0, -ex), math.ldexp(x1, -ex), math.ldexp(x2, -ex), math.ldexp(dX, -ex)
    dX = dX * _X_TOL + _TINY
    if not (abs(x0) > dX):
        return False, x0, x1, x2, dX
    if x0 < 0:
        x0, x1, x2 = -x0, -x1, -x2
    return True, x0, x1, x2, dX


@numba.njit(cache=True, nogil=True, inline="always")
def _halves(S, s, Kn, sig, l0, l1, l2, dl, lid, pg, ng):
    """Cut the piece in slot ``s`` of the record stack ``S`` (``Kn`` vertices, signs ``sig`` all +-1) by the
    line ``(l0, l1, l2)`` (error ``dl``, id bits ``lid``): its positive half into slot ``pg`` and its
    negative half into slot ``ng``. Returns their vertex counts, or ``(-1, -1)`` when a crossing is
    uncertain. The cut of both the chain kernel and the graph kernel's ReLU nodes."""
    nrec = S.shape[2]
    cp = 0
    cn = 0
    for k in range(Kn):
        sk = sig[k]
        sx = sig[k + 1] if k + 1 < Kn else sig[0]
        # Signs are +-1 here (a zero is uncertain and goes exact), so a vertex is in one half with its
        # edge; the edge after a crossing point is the line where the half leaves through it, else the
        # rest of edge k.
        if sk > 0:
            for t in range(nrec):
                S[pg, cp, t] = S[s, k, t]
            cp += 1
        else:
            for t in range(nrec):
                S[ng, cn, t] = S[s, k, t]
            cn += 1
        if sk != sx:
            ok, x0, x1, x2, dX = _crossing(S[s, k, 4], S[s, k, 5], S[s, k, 6], S[s, k, 7], l0, l1, l2, dl)
            if not ok:
                return -1, -1
            S[pg, cp, 0], S[pg, cp, 1], S[pg, cp, 2], S[pg, cp, 3] = x0, x1, x2, dX
            S[ng, cn, 0], S[ng, cn, 1], S[ng, cn, 2], S[ng, cn, 3] = x0, x1, x2, dX
            if sx < 0:  # the positive half leaves along the line
                S[pg, cp, 4], S[pg, cp, 5], S[pg, cp, 6], S[pg, cp, 7], S[pg, cp, 8] = l0, l1, l2, dl, lid
                for t in range(4, 9):
                    S[ng, cn, t] = S[s, k, t]
            else:
                for t in range(4, 9):
                    S[pg, cp, t] = S[s, k, t]
                S[ng, cn, 4], S[ng, cn, 5], S[ng, cn, 6], S[ng, cn, 7], S[ng, cn, 8] = l0, l1, l2, dl, lid
            cp += 1
            cn += 1
    return cp, cn


@numba.njit(cache=True, nogil=True, inline="always")
def _take_cut(S, Snv, Sbits, Scand, Snc, s, pg, ng, cp, cn, j, cutting, ncut, nrec, n):
    """After :func:`_halves`: slot ``s`` gets the positive half (built in slot ``pg``), slot ``ng`` keeps
    the negative one; both inherit the parent's bits with unit ``j`` set / cleared and the parent's other
    cutting candidates (the chain and graph kernels' stacks share this layout)."""
    for k in range(cp):
        for t in range(nrec):
            S[s, k, t] = S[pg, k, t]
    Snv[s] = cp
    Snv[ng] = cn
    for t in range(n):
        Sbits[ng, t] = Sbits[s, t]
    Sbits[s, j] = True
    Sbits[ng, j] = False
    for c in range(1, ncut):
        Scand[s, c - 1] = cutting[c]
        Scand[ng, c - 1] = cutting[c]
    Snc[s] = ncut - 1
    Snc[ng] = ncut - 1


@numba.njit(cache=True, nogil=True, inline="always")
def _poly_lines(A, B, eA, eB, p, su, sv, quadrant, rid, L, Li, Z):
    """Polygon ``p``'s lines into ``L (5, n)`` (``Li`` its int64 view, for the ids) and ``Z (n)``: see
    :func:`make_lines`."""
    n = A.shape[1]
    for j in range(n):
        a, b, c = A[p, j], B[p, 0, j], B[p, 1, j]
        d = _nanmax(eA[p, j], _nanmax(eB[p, 0, j], eB[p, 1, j]))
        if quadrant:
            b = su * b - a
            c = sv * c - a
            d = 2 * d + _U * _nanmax(_nanmax(abs(a), abs(b)), abs(c))
        mag = _nanmax(abs(a), _nanmax(abs(b), abs(c)))
        sc = _pow2_inv(mag)
        if sc != 0.0:
            a, b, c, d = a * sc, b * sc, c * sc, d * sc
        elif math.isfinite(mag) and mag != 0:
            ex = math.frexp(mag)[1]
            a, b, c, d = math.ldexp(a, -ex), math.ldexp(b, -ex), math.ldexp(c, -ex), math.ldexp(d, -ex)
        Z[j] = d == 0 and a == 0 and b == 0 and c == 0
        L[0, j] = a
        L[1, j] = b
        L[2, j] = c
        L[3, j] = d * _X_TOL + _TINY
        Li[4, j] = rid | j


@numba.njit(cache=True, nogil=True)
def make_lines(A, B, eA, eB, su, sv, quadrant, id0):
    """Every unit's line on every polygon, unit-scaled, as ``_slice._lines`` builds it with numpy (the same
    elementwise operations in the same order): ``lines (m, 5, n)`` (rows ``a, b, c``, error bound, id bits)
    and ``zero`` (line and bound exactly zero). ``A (m, n)``, ``B (m, 2, n)`` and their error bounds are the
    layer's pre-activation maps; ``id0`` the ids of row 0 (block bits); ids add ``row << 20 | unit``.
    (:func:`split_layer` builds them polygon by polygon; this is for the polygons it gives back.)"""
    m, n = A.shape
    lines = np.empty((m, 5, n))
    ids = lines.view(np.int64)
    zero = np.empty((m, n), dtype=np.bool_)
    for p in range(m):
        rid = id0 | (np.int64(p) << ROW_SHIFT)
        _poly_lines(A, B, eA, eB, p, su, sv, quadrant, rid, lines[p], ids[p], zero[p])
    return lines, zero


@numba.njit(cache=True, nogil=True)
def _signs(S, sn, Kn, l0, l1, l2, dl, tmax, sig):
    """Certified signs of the line at the ``Kn`` vertices of the record array ``S``; 0 where uncertain.
    Returns (any positive, any negative, any uncertain). ``tmax`` is a tolerance valid for every vertex."""
    hp = False
    hn = False
    for k in range(Kn):
        v = S[sn, k, 0] * l0 + S[sn, k, 1] * l1 + S[sn, k, 2] * l2
        if v > tmax:
            sig[k] = 1
            hp = True
        elif v < -tmax:
            sig[k] = -1
            hn = True
        else:  # close to the line: this vertex's own (smaller) tolerance, as the numpy path
            tol = _tol(S[sn, k, 3], dl)
            if v > tol:
                sig[k] = 1
                hp = True
            elif v < -tol:
                sig[k] = -1
                hn = True
            else:
                return hp, hn, True
    return hp, hn, False


@numba.njit(cache=True, nogil=True)
def _root_test(rec, p, k1, Lp, Zp, smin, smax, sig, bits0, cand):
    """Test polygon ``p`` against all its units at once (vectorised over units; ``Lp``, ``Zp`` its lines):
    fixes the bits of the units that do not cut it and lists in ``cand`` those that do. Returns their
    number, or -1 when a decision is within its error bound."""
    n = Lp.shape[1]
    L0, L1, L2, dL = Lp[0], Lp[1], Lp[2], Lp[3]
    for j in range(n):
        smin[j] = np.inf
        smax[j] = -np.inf
    hmax = 0.0
    for k in range(k1):
        h0, h1, h2 = rec[p, k, 0], rec[p, k, 1], rec[p, k, 2]
        hmax = max(hmax, rec[p, k, 3])
        for j in range(n):
            v = h0 * L0[j] + h1 * L1[j] + h2 * L2[j]
            smin[j] = v if v < smin[j] else smin[j]
            smax[j] = v if v > smax[j] else smax[j]
    nc = 0
    for j in range(n):
        if Zp[j]:
            bits0[j] = False
            continue
        tmax = _tol(hmax, dL[j])
        # vertex values are finite when the line is (points are unit-scaled): min/max skip no NaN
        fin = abs(L0[j]) + abs(L1[j]) + abs(L2[j]) < np.inf
        if fin and smin[j] > tmax:
            bits0[j] = True
        elif fin and smax[j] < -tmax:
            bits0[j] = False
        elif fin and smax[j] > tmax and smin[j] < -tmax:
            cand[nc] = j
            nc += 1
        else:  # some vertex near the line: its own tolerance, as the numpy path
            hp, hn, unsure = _signs(rec, p, k1, L0[j], L1[j], L2[j], dL[j], tmax, sig)
            if unsure:
                return -1
            if hp and hn:
                cand[nc] = j
                nc += 1
            else:
                bits0[j] = hp
    return nc


@numba.njit(cache=True, nogil=True)
def split_layer(rec, nv, A, B, eA, eB, su, sv, quadrant, id0, base, max_regions, out, onv, par, bits):
    """Cut polygons ``rec (m, K1, 9)`` (``nv`` real vertices each) by their units' lines, built polygon by
    polygon from the maps ``A, B, eA, eB`` as :func:`make_lines` builds them (arguments as there), without
    the ``(m, 5, n)`` array.

    Depth first: a piece is tested against every unit still able to cut it (those that cut its parent after
    the parent's cutting unit), a unit that does not cut it fixes its bit, and the piece is cut by the first
    unit that does; its two halves go on with the remaining cutting units. Each final piece thus undergoes
    the cuts of the numpy path (which applies the units in order to all pieces) in the same order, and its
    vertex record is the same; only the order of the pieces differs.

    Returns ``(status, count, out, onv, parent, bits, fallback)``: the pieces (padding slots repeat vertex 0),
    their vertex counts, parent polygons and pattern bits for this layer, and the polygons given back for
    the exact path. ``status`` is ``TOO_MANY`` when ``base`` plus a lower bound ``count`` on this layer's
    pieces exceeds ``max_regions``.

    ``out (cap, Kc, 9)``, ``onv``, ``par`` (``cap``) and ``bits (cap, n)`` are the working arrays to start
    with (the caller's pooled memory; grown here when too small), ``Kc`` at least 2 more than any ``nv``.
    """
    m, K1, nrec = rec.shape
    n = A.shape[1]
    lines = np.empty((5, n))  # polygon p's lines (rows a, b, c, error bound, id bits) and zero flags
    lines_i = lines.view(np.int64)
    zero = np.empty(n, dtype=np.bool_)
    Kc = out.shape[1]
    fallback = np.zeros(m, dtype=np.bool_)
    # The stack of pieces still to test: records, vertex counts, bits, and candidate units.
    # (a path of d nested cuts needs d + 3 slots, d <= the candidates of its polygon; grown on demand)
    depth = min(n + 3, 64)
    S = np.empty((depth, Kc, nrec))
    Snv = np.empty(depth, dtype=np.int64)
    Sbits = np.empty((depth, n), dtype=np.bool_)
    Scand = np.empty((depth, n), dtype=np.int32)
    Snc = np.empty(depth, dtype=np.int64)
    sig = np.empty(Kc, dtype=np.int8)
    smin = np.empty(n)
    smax = np.empty(n)
    cutting = np.empty(n, dtype=np.int32)
    cur = 0
    n_fb = 0
    for p in range(m):
        start = cur
        ok = True
        k1 = nv[p]
        for k in range(k1):
            for t in range(nrec):
                S[0, k, t] = rec[p, k, t]
        Snv[0] = k1
        rid = id0 | (np.int64(p) << ROW_SHIFT)
        _poly_lines(A, B, eA, eB, p, su, sv, quadrant, rid, lines, lines_i, zero)
        nc = _root_test(rec, p, k1, lines, zero, smin, smax, sig, Sbits[0], Scand[0])
        if nc < 0:
            fallback[p] = True
            n_fb += 1
            continue
        Snc[0] = nc
        top = 1
        pretested = True  # the polygon itself: its cutting units are Scand[0]
        while top > 0:
            top -= 1
            sn = top
            Kn = Snv[sn]
            hmax = 0.0
            for k in range(Kn):
                hmax = max(hmax, S[sn, k, 3])
            if pretested:
                pretested = False
                ncut = Snc[sn]
                for c in range(ncut):
                    cutting[c] = Scand[sn, c]
            else:
                # The candidates' extreme values over the vertices first (no branch per vertex), then one
                # decision per candidate, as _root_test: a unit with a certified positive and a certified
                # negative vertex cuts the piece whatever its other vertices; those are checked when it is
                # applied (its own _signs below) or, on the halves, by this same test, so a vertex too close
                # to call is still always found.
                nco = Snc[sn]
                for c in range(nco):
                    smin[c] = np.inf
                    smax[c] = -np.inf
                for k in range(Kn):
                    h0, h1, h2 = S[sn, k, 0], S[sn, k, 1], S[sn, k, 2]
                    for c in range(nco):
                        j = Scand[sn, c]
                        v = h0 * lines[0, j] + h1 * lines[1, j] + h2 * lines[2, j]
                        smin[c] = v if v < smin[c] else smin[c]
                        smax[c] = v if v > smax[c] else smax[c]
                ncut = 0
                for c in range(nco):
                    j = Scand[sn, c]
                    dl = lines[3, j]
                    tmax = _tol(hmax, dl)
                    l0, l1, l2 = lines[0, j], lines[1, j], lines[2, j]
                    # vertex values are finite when the line is (points are unit-scaled): min/max skip no NaN
                    fin = abs(l0) + abs(l1) + abs(l2) < np.inf
                    if fin and smin[c] > tmax:
                        Sbits[sn, j] = True
                    elif fin and smax[c] < -tmax:
                        Sbits[sn, j] = False
                    elif fin and smax[c] > tmax and smin[c] < -tmax:
                        cutting[ncut] = j
                        ncut += 1
                    else:
                        hp, hn, unsure = _signs(S, sn, Kn, l0, l1, l2, dl, tmax, sig)
                        if unsure:
                            ok = False  # within the error bound (or a NaN bound): the exact path decides
                            break
                        if hp and hn:
                            cutting[ncut] = j
                            ncut += 1
                        else:
                            Sbits[sn, j] = hp
            if not ok:
                break
            if ncut == 0:
                if cur + 1 > out.shape[0]:
                    out, onv, par, bits = _grow_rows(out, onv, par, bits, cur + 1)
                if Kn + 1 > out.shape[1]:
                    out = _grow_slots(out, Kn + 1)
                for k in range(Kn):
                    for t in range(nrec):
                        out[cur, k, t] = S[sn, k, t]
                onv[cur] = Kn
                par[cur] = p
                for t in range(n):
                    bits[cur, t] = Sbits[sn, t]
                cur += 1
                # a lower bound on the layer's pieces: those made, those on the stack, one per polygon to come
                low = cur + top + n_fb + (m - p - 1)
                if base + low > max_regions:
                    return TOO_MANY, low, out, onv, par, bits, fallback
                continue
            # Cut by the first cutting unit: the positive half replaces the piece, the negative one is pushed.
            j = cutting[0]
            l0, l1, l2, dl = lines[0, j], lines[1, j], lines[2, j], lines[3, j]
            if top + 3 > depth:
                depth = min(2 * depth, n + 3)
                S, Snv, Sbits, Scand, Snc = _grow_stack(S, Snv, Sbits, Scand, Snc, depth)
            if Kn + 2 > S.shape[1]:
                S2 = np.empty((depth, 2 * Kn + 2, nrec))
                S2[:, : S.shape[1]] = S
                S = S2
                sig = np.empty(S.shape[1], dtype=np.int8)
            # (the polygon's own cutting units were found from one certified positive and one certified
            # negative vertex: its other vertices may still be too close to call)
            if _signs(S, sn, Kn, l0, l1, l2, dl, _tol(hmax, dl), sig)[2]:
                ok = False
                break
            ng = top + 1  # the negative half's slot; the positive half is built in slot top + 2, then moved
            pg = top + 2
            cp, cn = _halves(S, sn, Kn, sig, l0, l1, l2, dl, lines[4, j], pg, ng)
            if cp < 0:
                ok = False  # a crossing's side of the frame is uncertain: exact path
            if not ok:
                break
            # slot sn (== top) gets the positive half, slot top + 1 the negative one
            _take_cut(S, Snv, Sbits, Scand, Snc, sn, pg, ng, cp, cn, j, cutting, ncut, nrec, n)
            top += 2
        if not ok:
            cur = start
            fallback[p] = True
            n_fb += 1
    # The pieces as the first rows of the working array, contiguous (no copy here nor in the caller: fresh
    # memory for a copy costs page faults, more than the cut itself on small slices); padding slots repeat
    # vertex 0 (the numpy path's reductions over slots rely on it).
    Kout = 1
    for q in range(cur):
        Kout = max(Kout, onv[q] + 1)
    if Kout > out.shape[1]:
        out = _grow_slots(out, Kout)
    Kout = out.shape[1]
    for q in range(cur):
        for k in range(onv[q], Kout):
            for t in range(nrec):
                out[q, k, t] = out[q, 0, t]
    return OK, cur + n_fb, out[:cur], onv[:cur], par[:cur], bits[:cur], fallback


@numba.njit(cache=True, nogil=True, error_model="numpy")
def uv_areas(rec, nv):
    """The pieces' vertices in ``(u, v)`` (``X / D``, ``Y / D``), stacked, and their areas (shoelace). As
    in numpy, a vertex whose float ``D`` is 0 (a point ~1e300 away, placed by exact signs) comes out
    infinite rather than raising."""
    m = rec.shape[0]
    V = np.empty((nv.sum(), 2))
    areas = np.empty(m)
    o = 0
    for q in range(m):
        k1 = nv[q]
        for k in range(k1):
            V[o + k, 0] = rec[q, k, 1] / rec[q, k, 0]
            V[o + k, 1] = rec[q, k, 2] / rec[q, k, 0]
        s = 0.0
        for k in range(k1):
            kn = o + k + 1 if k + 1 < k1 else o
            s += V[o + k, 0] * V[kn, 1] - V[kn, 0] * V[o + k, 1]
        areas[q] = abs(0.5 * s)
        o += k1
    return V, areas


@numba.njit(cache=True, nogil=True, error_model="numpy")
def uv_areas_scaled(rec, nv):
    """:func:`uv_areas` with each piece scaled to unit size for its shoelace sum (the graph engine's areas:
    a piece of a huge box gets an infinite area, not ``inf - inf``)."""
    m = rec.shape[0]
    V = np.empty((nv.sum(), 2))
    areas = np.empty(m)
    o = 0
    for q in range(m):
        k1 = nv[q]
        sc = 0.0
        nan = False
        for k in range(k1):
            x = rec[q, k, 1] / rec[q, k, 0]
            y = rec[q, k, 2] / rec[q, k, 0]
            V[o + k, 0] = x
            V[o + k, 1] = y
            nan = nan or x != x or y != y
            sc = max(sc, max(abs(x), abs(y)))
        if nan or not sc > 0:
            sc = 1.0
        s = 0.0
        for k in range(k1):
            kn = o + k + 1 if k + 1 < k1 else o
            s += (V[o + k, 0] / sc) * (V[kn, 1] / sc) - (V[kn, 0] / sc) * (V[o + k, 1] / sc)
        areas[q] = 0.5 * abs(s) * sc**2
        o += k1
    return V, areas


@numba.njit(cache=True, nogil=True, error_model="numpy")
def any_far_vertex(rec, nv):
    """Whether a real vertex's ``(X / D, Y / D)`` is not finite (``D`` underflowed: a box far beyond the
    arrangement's scale), the check of :func:`netgeom.regions._slice._exact_far_vertices`."""
    for q in range(rec.shape[0]):
        for k in range(nv[q]):
            x = rec[q, k, 1] / rec[q, k, 0]
            y = rec[q, k, 2] / rec[q, k, 0]
            if not (math.isfinite(x) and math.isfinite(y)):
                return True
    return False
