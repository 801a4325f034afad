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
    new = max(2 * K, need)
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
def make_lines(A, B, eA, eB, su, sv, quadrant, id0):
    """Every unit's line on every polygon, unit-scaled, as ``_slice._slice_chunk`` builds it with numpy
    (the same elementwise operations in the same order): ``lrec (m, n, 5)`` (line, error bound, id bits)
    and ``zero`` (line and bound exactly zero). ``A (m, n)``, ``B (m, 2, n)`` and their error bounds are the
    layer's pre-activation maps; ``id0`` the ids of row 0 (block bits); ids add ``row << 20 | unit``."""
    m, n = A.shape
    lrec = np.empty((m, n, 5))
    ids = lrec.view(np.int64)
    zero = np.empty((m, n), dtype=np.bool_)
    for p in range(m):
        rid = id0 | (np.int64(p) << ROW_SHIFT)
        for j in range(n):
            a, b, c = A[p, j], B[p, 0, j], B[p, 1, j]
            d = _nanmax(eA[p, j], _nanmax(eB[p, 0, j], eB[p, 1, j]))
            if quadrant:
                b = su * b - a
                c = sv * c - a
                d = 2 * d + _U * _nanmax(_nanmax(abs(a), abs(b)), abs(c))
            mag = _nanmax(abs(a), _nanmax(abs(b), abs(c)))
            if math.isfinite(mag) and mag != 0:
                ex = math.frexp(mag)[1]
                a, b, c, d = math.ldexp(a, -ex), math.ldexp(b, -ex), math.ldexp(c, -ex), math.ldexp(d, -ex)
            zero[p, j] = d == 0 and a == 0 and b == 0 and c == 0
            lrec[p, j, 0] = a
            lrec[p, j, 1] = b
            lrec[p, j, 2] = c
            lrec[p, j, 3] = d * _X_TOL + _TINY
            ids[p, j, 4] = rid | j
    return lrec, zero


@numba.njit(cache=True, nogil=True)
def split_layer(rec, nv, lrec, zero, base, max_regions):
    """Cut polygons ``rec (m, K1, 9)`` (``nv`` real vertices each) by their units' lines ``lrec (m, n, 5)``
    (line, error bound, id bits). ``zero[p, j]``: the line is exactly zero on polygon ``p``.

    Returns ``(status, count, out, onv, parent, bits, fallback)``: the pieces (padding slots repeat vertex 0),
    their vertex counts, parent polygons and pattern bits for this layer, and the polygons given back for
    the exact path. ``status`` is ``TOO_MANY`` when ``base`` plus a lower bound ``count`` on this layer's
    pieces exceeds ``max_regions``.
    """
    m, K1, nrec = rec.shape
    n = lrec.shape[1]
    cap = max(2 * m, 64)
    Kc = max(K1, 8)
    out = np.empty((cap, Kc, nrec))
    onv = np.empty(cap, dtype=np.int64)
    par = np.empty(cap, dtype=np.int64)
    bits = np.empty((cap, n), dtype=np.bool_)
    fallback = np.zeros(m, dtype=np.bool_)
    b0 = np.empty(n, dtype=np.bool_)
    cand = np.empty(n, dtype=np.int64)
    sig = np.empty(Kc, dtype=np.int64)
    tmp = np.empty((Kc, nrec))
    X = np.empty(3)
    cur = 0
    n_fb = 0
    for p in range(m):
        k1 = nv[p]
        # Units that cut the polygon: a unit with one sign at every vertex cuts none of its pieces.
        ok = True
        nc = 0
        for j in range(n):
            if zero[p, j]:
                b0[j] = False
                continue
            l0, l1, l2, dl = lrec[p, j, 0], lrec[p, j, 1], lrec[p, j, 2], lrec[p, j, 3]
            anyp = False
            anyn = False
            for k in range(k1):
                v = rec[p, k, 0] * l0 + rec[p, k, 1] * l1 + rec[p, k, 2] * l2
                tol = 3 * (rec[p, k, 3] + dl) * _SIG_TOL + _SLACK
                if v > tol:
                    anyp = True
                elif v < -tol:
                    anyn = True
                else:
                    ok = False  # within the error bound (or NaN): the exact path decides
                    break
            if not ok:
                break
            b0[j] = anyp
            if anyp and anyn:
                cand[nc] = j
                nc += 1
        if ok:
            if cur + 1 > out.shape[0]:
                out, onv, par, bits = _grow_rows(out, onv, par, bits, cur + 1)
            if k1 + 2 > out.shape[1]:
                out = _grow_slots(out, k1 + 2)
            start = cur
            for k in range(k1):
                for t in range(nrec):
                    out[cur, k, t] = rec[p, k, t]
            onv[cur] = k1
            par[cur] = p
            bits[cur] = b0
            cur += 1
            for c in range(nc):
                j = cand[c]
                l0, l1, l2, dl = lrec[p, j, 0], lrec[p, j, 1], lrec[p, j, 2], lrec[p, j, 3]
                end = cur
                for q in range(start, end):
                    nq = onv[q]
                    if nq + 2 > out.shape[1]:
                        out = _grow_slots(out, nq + 2)
                    if out.shape[1] > sig.shape[0]:
                        sig = np.empty(out.shape[1], dtype=np.int64)
                        tmp = np.empty((out.shape[1], nrec))
                    hp = False
                    hn = False
                    for k in range(nq):
                        v = out[q, k, 0] * l0 + out[q, k, 1] * l1 + out[q, k, 2] * l2
                        tol = 3 * (out[q, k, 3] + dl) * _SIG_TOL + _SLACK
                        if v > tol:
                            sig[k] = 1
                            hp = True
                        elif v < -tol:
                            sig[k] = -1
                            hn = True
                        else:
                            ok = False
                            break
                    if not ok:
                        break
                    bits[q, j] = hp
                    if not (hp and hn):
                        continue
                    if cur + 1 > out.shape[0]:
                        out, onv, par, bits = _grow_rows(out, onv, par, bits, cur + 1)
                    R = out[q]
                    N = out[cur]
                    cp = 0
                    cn = 0
                    for k in range(nq):
                        sk = sig[k]
                        sn = sig[k + 1] if k + 1 < nq else sig[0]
                        # Signs here are +-1 only (a zero is uncertain and goes exact), so a vertex is in
                        # one piece with its edge; the edge after a crossing point is the unit's line
                        # where the piece leaves through it, else the rest of edge k.
                        if sk > 0:
                            for t in range(nrec):
                                tmp[cp, t] = R[k, t]
                            cp += 1
                        else:
                            for t in range(nrec):
                                N[cn, t] = R[k, t]
                            cn += 1
                        if sk * sn < 0:
                            # the crossing point on edge k: edge line x unit line
                            e0, e1, e2, ed = R[k, 4], R[k, 5], R[k, 6], R[k, 7]
                            X[0] = e1 * l2 - e2 * l1
                            X[1] = e2 * l0 - e0 * l2
                            X[2] = e0 * l1 - e1 * l0
                            dX = 2 * (ed + dl + ed * dl) + 5 * _U + _TINY
                            mx = max(abs(X[0]), max(abs(X[1]), abs(X[2])))
                            if not (math.isfinite(mx) and math.isfinite(dX)):
                                ok = False
                                break
                            ex = math.frexp(mx)[1]
                            X[0] = math.ldexp(X[0], -ex)
                            X[1] = math.ldexp(X[1], -ex)
                            X[2] = math.ldexp(X[2], -ex)
                            dX = math.ldexp(dX, -ex) * _X_TOL + _TINY
                            D = X[0]
                            if not (abs(D) > dX):
                                ok = False  # the crossing's side of the frame is uncertain: exact path
                                break
                            g = 1.0 if D > 0 else -1.0
                            for t in range(3):
                                tmp[cp, t] = X[t] * g
                                N[cn, t] = X[t] * g
                            tmp[cp, 3] = dX
                            N[cn, 3] = dX
                            for t in range(4, nrec):
                                tmp[cp, t] = R[k, t]
                                N[cn, t] = R[k, t]
                            if sn < 0:
                                for t in range(5):
                                    tmp[cp, 4 + t] = lrec[p, j, t]
                            else:
                                for t in range(5):
                                    N[cn, 4 + t] = lrec[p, j, t]
                            cp += 1
                            cn += 1
                    if not ok:
                        break
                    for k in range(cp):
                        for t in range(nrec):
                            R[k, t] = tmp[k, t]
                    onv[q] = cp
                    onv[cur] = cn
                    par[cur] = p
                    for t in range(n):
                        bits[cur, t] = bits[q, t]
                    bits[q, j] = True
                    bits[cur, j] = False
                    cur += 1
                    # a lower bound on this layer's pieces: those made, one per polygon still to come
                    if base + cur + n_fb + (m - p - 1) > max_regions:
                        return TOO_MANY, cur + n_fb + (m - p - 1), out, onv, par, bits, fallback
                if not ok:
                    break
            if not ok:
                cur = start
        if not ok:
            fallback[p] = True
            n_fb += 1
    # Padding slots repeat vertex 0 (the numpy path's reductions over slots rely on it).
    Kout = 1
    for q in range(cur):
        Kout = max(Kout, onv[q] + 1)
    for q in range(cur):
        for k in range(onv[q], Kout):
            out[q, k] = out[q, 0]
    return OK, cur + n_fb, out[:cur, :Kout], onv[:cur], par[:cur], bits[:cur], fallback
