"""Activation regions of positive volume in a low-dimensional box, through a traced graph (residual add,
concatenation, max-pool, LeakyReLU): :func:`netgeom.regions.regions_in_box` on non-chain networks.

A piece is a polytope ``{G y ≤ h}`` of the box with a ball inside it, and on it every live node's value is
affine in ``y``: ``alpha + y @ Beta``. Nodes are read in topological order:

* an ``affine`` node pushes its input's maps through its dense matrix (all pieces at once), an ``add`` sums
  its inputs' maps and a ``cat`` concatenates them (no cut);
* a ``relu`` node (any negative slope) cuts every piece by its units exactly as the chain engine cuts by a
  layer (:func:`netgeom.regions.exact._cut_by_units`: inscribed and witness balls, else one LP), and the
  output on each piece is the unit's map times 1 or the slope, by the sign at the piece's ball centre;
* a ``maxpool`` node cuts every piece, window by window, into the cells where the window's argmax is
  constant: the cell of position ``i`` is the piece clipped by ``c_j - c_i ≤ 0`` for every other valid
  position ``j`` (padding, ``-1``, never counts; where ``c_j - c_i`` is identically zero on the piece the
  earlier position wins, as torch). A cell is kept when it holds a ball: the piece's own ball shrunk to the
  cell's walls when that is large enough, else its Chebyshev ball (LPs in the piece's units).
  Positions certainly below another one at every vertex of the piece (qhull, up to 6 dimensions) are
  dropped first, so most windows need no LP. The cells tile the piece, so one always holds a ball; only
  with ``min_radius > 0`` may none, and then the piece is kept whole, with the argmax at its centre.

Rounding is handled as in the chain engine: every map carries rigorous bounds on the errors of its entries
(``e_alpha``, ``e_Beta``: the affine push's gamma bounds with an allowance for underflow, the additions'
roundings), units and max-pool differences are scaled by their own powers of two in the box's unit frame,
every wall keeps its bound for all later cuts and its tag (``("u", node, unit, side)`` or ``("p", node,
q, p)``), from which its exact row is rebuilt by rational runs of the graph at ``d + 1`` points of the
piece's ball when floats cannot decide a side, and decisions within their bounds are exact: ReLU bits and
a last-resort argmax by rational arithmetic at the piece's centre (:class:`_ExactPoint`). A ReLU unit
whose slope is within its bound of zero is recomputed exactly on the piece (an affine map is fixed by its
exact values at ``d + 1`` points of the piece's ball); a max-pool difference in that case raises an error
naming the cause.

The pattern is, in node order, the bits ``z > 0`` of every ReLU node and the argmax position of every
window of a max-pool node with windows of more than one entry, in binary (most significant bit first): the
convention of :func:`netgeom.regions.count_patterns`, so the patterns can be compared.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from ..nets.certified import _pos_bits, exact_step, pattern_nodes
from .exact import (
    _ETA,
    _U,
    _active_units,
    _ball_in,
    _box_result,
    _box_tags,
    _cut_by_units,
    _exact_rows,
    _fraction_unit_frame,
    _frame_exp,
    _push_bounds,
    _scaled_box,
    _shifted,
    _too_many,
    _UncertainSlope,
    _unit_frame,
    _vertices,
)


def _needed(g) -> tuple[list[int], dict[int, int]]:
    """The nodes read up to the last pattern node, in order, and the last node that reads each."""
    nodes = g.nodes
    pat = [n.index for n in pattern_nodes(g)]
    last = max(pat, default=-1)
    need = set(pat)
    stack = list(pat)
    while stack:
        for j in nodes[stack.pop()].inputs:
            if j not in need:
                need.add(j)
                stack.append(j)
    order = [n.index for n in nodes if n.index in need and n.index <= last and n.op != "input"]
    last_use = {}
    for i in order:
        for j in nodes[i].inputs:
            last_use[j] = max(last_use.get(j, -1), i)
    return order, last_use


class _ExactPoint:
    """The traced graph evaluated exactly (rationals on the float64 weights) at points of the box: ReLU bits
    ``z > 0`` and max-pool argmax positions (first position on ties, as torch), for the few decisions the
    float error bounds cannot make."""

    def __init__(self, g, origin, basis, k: int, upto: int):
        self.g, self.k, self.upto = g, k, upto
        self.origin = [Fraction(float(v)) for v in origin]
        self.basis = [[Fraction(float(v)) for v in row] for row in basis]
        self._aff = {}

    def __call__(self, c_scaled) -> dict:
        return self._run(c_scaled)[0]

    def map_on_piece(self, node: int, c, r: float):
        """Exact affine map ``(A, B)`` (Fractions; ``B`` as d lists) of ``node``'s value on the piece whose
        certified ball is ``(c, r)`` (frame ``y'``), in the box's coordinates ``y``."""
        return self.maps_on_piece(c, r)(node)

    def maps_on_piece(self, c, r: float):
        """``node -> (A, B)``: :meth:`map_on_piece` of every node from one exact run at each of ``c`` and
        ``c + (r / 2) e_i`` (exact rational points, all inside the piece: an affine function is fixed
        by its values there)."""
        d = len(c)
        cq = [Fraction(float(v)) for v in c]
        t = Fraction(float(r)) / 2
        two_k = Fraction(2) ** self.k
        runs = [self._run(cq)[1]]
        for i in range(d):
            ci = list(cq)
            ci[i] += t
            runs.append(self._run(ci)[1])
        step = t * two_k
        y0 = [v * two_k for v in cq]
        cache = {}

        def get(node):
            if node not in cache:
                v0 = runs[0][node]
                B = [[(b - a) / step for a, b in zip(v0, runs[i + 1][node])] for i in range(d)]
                A = [a - sum((B[i][j] * y0[i] for i in range(d)), Fraction(0)) for j, a in enumerate(v0)]
                cache[node] = (A, B)
            return cache[node]

        return get

    def _run(self, c_scaled):
        y = [Fraction(v) * Fraction(2) ** self.k for v in c_scaled]
        x = list(self.origin)
        for yi, row in zip(y, self.basis):
            if yi:
                x = [a + yi * b for a, b in zip(x, row)]
        vals = {0: x}
        out = {}
        for node in self.g.nodes[1 : self.upto + 1]:
            ins = node.inputs
            if node.op == "affine":
                if node.index not in self._aff:
                    S = node.sparse_matrix()  # (its nonzeros: a convolution's dense matrix is mostly zeros)
                    ind, val = S.indices.tolist(), S.data.tolist()
                    rows = [
                        [(j, Fraction(w)) for j, w in zip(ind[lo:hi], val[lo:hi])]
                        for lo, hi in zip(S.indptr[:-1].tolist(), S.indptr[1:].tolist())
                    ]
                    self._aff[node.index] = (rows, [Fraction(float(b)) for b in node.bias_vector.numpy()])
                rows, bias = self._aff[node.index]
                xin = vals[ins[0]]
                v = [bi + sum((w * xin[j] for j, w in row), Fraction(0)) for row, bi in zip(rows, bias)]
            else:
                v, dec = exact_step(node, vals)
                if dec is not None:
                    out[node.index] = np.array(dec)
            vals[node.index] = v
        return out, vals


def _window_cells(
    piece, a, B, ea, eB, valid, ix, k, lo, hi, r_min, exact_at, key, exact_rows, exact_map=None
):
    """Cells of one window on one piece ``(G, h, e, tags, c, r)`` (frame ``y'``, as in
    :func:`netgeom.regions.exact._cut_by_units`): list of ``(cell, position)`` (cells are pieces), LPs solved
    and sides decided in rationals. ``a (k,)``, ``B (d, k)`` (errors ``ea``, ``eB``): the window's entries on
    the piece in the box's coordinates (``valid`` marks non-padding positions, ``ix`` their indices in the
    map ``key``). The wall between positions ``p`` and ``q`` is the zero set of ``z_q - z_p``, normalised
    and bounded as a unit's (:func:`netgeom.regions.exact._unit_frame`), with its bound over the box.
    ``exact_map``: the window's input node's exact map on the piece (Fractions ``(A, B)``, as
    ``map_on_piece``), whose differences replace the float ones."""
    G, h, e, tags, c, r = piece
    pos = np.nonzero(valid)[0]
    d = G.shape[1]
    m = len(pos)
    if m == 1:
        return [(piece, int(pos[0]))], 0, 0
    # differences D[p][q] = z_q - z_p for every ordered pair, as normalised units
    pa, pb = np.repeat(pos, m), np.tile(pos, m)  # (p, q) pairs
    if exact_map is not None:
        Aq, Bq = exact_map
        ia, ib = ix[pa].tolist(), ix[pb].tolist()
        dAq = [Aq[q] - Aq[p] for p, q in zip(ia, ib)]
        dBq = [[row[q] - row[p] for p, q in zip(ia, ib)] for row in Bq]
        U = _fraction_unit_frame(dAq, dBq, k)[4]
    else:
        with np.errstate(under="ignore"):
            dA = a[pb] - a[pa]
            dB = B[:, pb] - B[:, pa]
            edA = (ea[pb] + ea[pa] + _U * np.abs(dA)) * (1 + 2 * _U)
            edB = (eB[:, pb] + eB[:, pa] + _U * np.abs(dB)) * (1 + 2 * _U)
        U = _unit_frame(dA, dB, edA, edB, k)
    live = U.live
    zmin, zmax, err = U.box_range(lo, hi)
    above = live & (zmin > err)  # z_q > z_p on the whole box
    below = live & (zmax < -err)
    # Positions certainly below another one at every vertex of the piece never win.
    verts = _vertices(G, _shifted(h, e, 1.0), c) if d <= 6 else None  # the outer polytope's
    if verts is not None:
        zv, ev = U.z_at(verts)
        scale = 1.0 + float(np.abs(verts).max())
        margin = ev.max(axis=0) + 1e-8 * scale * U.gn
        above |= live & (zv.min(axis=0) > margin)
        below |= live & (zv.max(axis=0) < -margin)
    above = above.reshape(m, m)
    below = below.reshape(m, m)
    tie = (~live).reshape(m, m)  # identical entries on the piece: the first position wins
    first = np.arange(m)[None, :] < np.arange(m)[:, None]  # first[p, q]: q comes before p
    never = (above | (tie & first)).any(axis=1)
    n_lp = n_ex = 0
    cells = []
    ew = U.wall_bounds(np.maximum(np.abs(lo), np.abs(hi)))
    for ip in np.nonzero(~never)[0]:
        walls = [iq for iq in range(m) if iq != ip and not below[ip, iq] and not tie[ip, iq]]
        if not walls:
            cells.append((piece, int(pos[ip])))
            continue
        idx = ip * m + np.array(walls)
        if not U.sure[idx].all():
            if exact_map is not None:
                raise RuntimeError("internal error: an exact window difference has an undecided slope")
            raise _UncertainSlope(int(pos[ip]))
        rows = (U.Bn[:, idx] / U.gn[idx]).T  # p needs z_q - z_p ≤ 0
        rhs = -U.An[idx] / U.gn[idx]

        def dmax(cc, rr, idx=idx):
            return max(U.delta(q, cc, rr) for q in idx.tolist())

        Gc, hc = np.vstack([G, rows]), np.concatenate([h, rhs])
        ec = np.concatenate([e, ew[idx]])
        tc = tags + [("p", key, int(ix[pos[iq]]), int(ix[pos[ip]])) for iq in walls]
        # The piece's own ball, shrunk to the cell's walls, when the centre is in the cell.
        rr = min(r, float((rhs - rows @ c).min())) - dmax(c, r)
        if rr > r_min:
            cells.append(((Gc, hc, ec, tc, c, rr), int(pos[ip])))
            continue
        ball, n, ex = _ball_in(Gc, hc, ec, tc, c, r, r_min, exact_rows)
        n_lp += n
        n_ex += ex
        if ball is not None:
            cells.append(((Gc, hc, ec, tc, ball[0], ball[1]), int(pos[ip])))
    if not cells:
        # The cells tile the piece, so one holds a ball of positive radius: only min_radius > 0 leaves
        # none. Then the piece stays whole, its argmax the one at its centre.
        if r_min == 0:
            raise AssertionError("internal error in regions_in_box: no max-pool cell of a piece holds a ball")
        zc, ecz = U.z_at(c[None, :])
        zc, ecz = zc[0].reshape(m, m), ecz[0].reshape(m, m)
        wins = [ip for ip in range(m) if np.all((zc[ip] < -ecz[ip]) | (np.arange(m) == ip))]
        p = int(pos[wins[0]]) if len(wins) == 1 else int(exact_at(c))
        return [(piece, p)], n_lp, n_ex
    return cells, n_lp, n_ex


def box_graph_regions(g, lo, hi, origin, basis, max_regions, min_radius, verbose):
    """:func:`netgeom.regions.regions_in_box` on a traced graph (the box and subspace already checked)."""
    import torch
    from tqdm.auto import tqdm

    nodes = g.nodes
    d = basis.shape[0]
    k = _frame_exp(lo, hi)
    lo_s, hi_s = _scaled_box(lo, hi, k)
    r_min = math.ldexp(min_radius, -k)
    order, last_use = _needed(g)
    pnodes = {n.index for n in pattern_nodes(g)}
    n_pat = len(pnodes)
    exact = _ExactPoint(g, origin, basis, k, max(order, default=0))
    # A piece: [G, h, centre, radius, vals, bits] (frame y' = y / 2^k); vals[node] = (alpha (n,), Beta (d, n),
    # e_alpha (n,), e_Beta (d, n)): the node's value alpha + y @ Beta in the box's coordinates y, and bounds
    # on the errors of the computed entries.
    G0 = np.vstack([np.eye(d), -np.eye(d)])
    h0 = np.concatenate([hi_s, -lo_s])
    o64, b64 = origin.astype(np.float64), basis.astype(np.float64)
    vals0 = {0: (o64, b64, np.zeros_like(o64), np.zeros_like(b64))}
    piece0 = (G0, h0, np.zeros(2 * d), _box_tags(d), 0.5 * (lo_s + hi_s), 0.5 * float(np.min(hi_s - lo_s)))
    pieces = [(piece0, vals0, [])]
    ym = np.maximum(np.abs(lo_s), np.abs(hi_s))

    def exact_rows(tags, c, r):
        maps = exact.maps_on_piece(c, r)

        def unit(key, j):
            A, B = maps(key)
            return A[j], [row[j] for row in B]

        return _exact_rows(tags, k, lo_s, hi_s, unit)

    n_lp = n_ex = 0
    k_pat = 0
    for i in order:
        node = nodes[i]
        op = node.op
        if op == "affine":
            W = node.matrix().numpy()
            b = node.bias_vector.numpy()
            aW = np.abs(W)
            wmin = float(aW[aW > 0].min()) if (aW > 0).any() else 0.0
            live_w = (aW > 0).any(axis=1)
            j = node.inputs[0]
            # all pieces at once: one product for every piece's alpha and Beta rows
            al = np.stack([p[1][j][0] for p in pieces])
            Be = np.stack([p[1][j][1] for p in pieces])  # (m, d, n_in)
            eal = np.stack([p[1][j][2] for p in pieces])
            eBe = np.stack([p[1][j][3] for p in pieces])
            A, Bm, eA, eB = _push_bounds(al, Be, eal, eBe, W, b, 0.0 if wmin == 0 else wmin, live_w)
            for kk, p in enumerate(pieces):
                p[1][i] = (A[kk], Bm[kk], eA[kk], eB[kk])
        elif op in ("add", "cat", "output"):
            for p in pieces:
                ins = [p[1][j] for j in node.inputs]
                if op == "add":
                    with np.errstate(under="ignore"):
                        al, Be, eal, eBe = (sum(v[t] for v in ins) for t in range(4))
                        # each of the len(ins) - 1 additions rounds once, relative to the partial sums
                        gam = 1.01 * len(ins) * _U
                        eal = (eal + gam * sum(np.abs(v[0]) for v in ins)) * (1 + gam)
                        eBe = (eBe + gam * sum(np.abs(v[1]) for v in ins)) * (1 + gam)
                elif op == "cat":
                    al, eal = (np.concatenate([v[t] for v in ins]) for t in (0, 2))
                    Be, eBe = (np.concatenate([v[t] for v in ins], axis=1) for t in (1, 3))
                else:
                    al, Be, eal, eBe = ins[0]
                p[1][i] = (al, Be, eal, eBe)
        elif op == "relu":
            k_pat += 1
            slope = float(node.negative_slope)
            bar = tqdm(
                desc=f"regions_in_box node {k_pat}/{n_pat}",
                unit="region",
                disable=not verbose,
                leave=k_pat == n_pat,
            )
            new = []
            j = node.inputs[0]
            for k_reg, (piece, vals, bits) in enumerate(pieces):
                G, h, e, _, c, r = piece
                A, Bm, eA, eB = vals[j]
                U = _unit_frame(A, Bm, eA, eB, k)
                active = _active_units(G, h, e, c, U, lo_s, hi_s)
                if not U.sure[active].all():
                    # a slope within its rounding bound of zero: the unit's exact map on this piece
                    A, Bm, eA, eB, U = _fraction_unit_frame(*exact.map_on_piece(j, c, r), k)
                    active = _active_units(G, h, e, c, U, lo_s, hi_s)
                room = max_regions - (len(new) + len(pieces) - k_reg - 1)
                try:
                    cut, n, ex = _cut_by_units(
                        piece, U, active, r_min, room, max_regions, bar, ym, j, exact_rows
                    )
                except _UncertainSlope as err:
                    raise _UncertainSlope(err.unit) from None
                n_lp += n
                n_ex += ex
                for new_piece in cut:
                    c_ = new_piece[4]
                    z, err = U.z_at(c_[None, :])
                    on = z[0] > 0
                    if np.any(U.live & (np.abs(z[0]) <= err[0])):
                        on = exact(c_)[i]
                    on &= U.live
                    s = np.where(on, 1.0, slope)
                    v2 = dict(vals) if len(cut) > 1 else vals
                    with np.errstate(under="ignore"):
                        sA, sB = s * A, s * Bm
                        off = ~on & (slope != 0.0)
                        esA = np.abs(s) * eA + np.where(off, _U * np.abs(sA) + _ETA, 0.0)
                        esB = np.abs(s) * eB + np.where(off, _U * np.abs(sB) + _ETA, 0.0)
                    v2[i] = (sA, sB, esA, esB)
                    new.append((new_piece, v2, bits + [on]))
            bar.close()
            pieces = new
        elif op == "maxpool":
            win = node.windows.numpy() if isinstance(node.windows, torch.Tensor) else np.asarray(node.windows)
            nw, kw = win.shape
            has_bits = i in pnodes
            if has_bits:
                k_pat += 1
            bar = tqdm(
                desc=f"regions_in_box node {k_pat}/{n_pat}",
                unit="region",
                disable=not verbose or not has_bits,
                leave=k_pat == n_pat,
            )
            valid = win >= 0
            safe = np.where(valid, win, 0)
            j = node.inputs[0]
            new = []
            for k_reg, (piece, vals, bits) in enumerate(pieces):
                al, Be, eal, eBe = vals[j]
                cur = [(piece, np.zeros(nw, dtype=np.int64))]
                for w in range(nw):
                    if valid[w].sum() == 1:
                        for q in cur:
                            q[1][w] = int(np.nonzero(valid[w])[0][0])
                        continue
                    nxt = []
                    ix = safe[w]
                    for cpiece, choice in cur:
                        entries = (al[ix], Be[:, ix], eal[ix], eBe[:, ix], valid[w], ix)
                        at = lambda cc, w=w, i=i: exact(cc)[i][w]  # noqa: E731
                        try:
                            cells, n, ex = _window_cells(
                                cpiece, *entries, k, lo_s, hi_s, r_min, at, j, exact_rows
                            )
                        except _UncertainSlope:
                            # a difference's slope within its rounding bound of zero (a pruned filter's
                            # windows hold the same constant): the window's exact map on this piece
                            exact_map = exact.map_on_piece(j, cpiece[4], cpiece[5])
                            cells, n, ex = _window_cells(
                                cpiece, *entries, k, lo_s, hi_s, r_min, at, j, exact_rows, exact_map
                            )
                        n_lp += n
                        n_ex += ex
                        for cell, p in cells:
                            ch = choice if len(cells) == 1 else choice.copy()
                            ch[w] = p
                            nxt.append((cell, ch))
                    cur = nxt
                    if len(new) + len(cur) + len(pieces) - k_reg - 1 > max_regions:
                        raise _too_many(max_regions)
                for cpiece, choice in cur:
                    sel = safe[np.arange(nw), choice]
                    v2 = dict(vals) if len(cur) > 1 else vals
                    v2[i] = (al[sel], Be[:, sel], eal[sel], eBe[:, sel])
                    if has_bits:
                        nb = _pos_bits(kw)
                        shifts = np.arange(nb - 1, -1, -1)
                        code = ((choice[:, None] >> shifts) & 1).astype(bool).reshape(-1)
                        b2 = bits + [code]
                    else:
                        b2 = bits
                    new.append((cpiece, v2, b2))
                    bar.update(1)
            bar.close()
            pieces = new
        else:
            raise RuntimeError(f"internal error: node {i} ({node.source}) has unknown op {op!r}")
        # free the values no later node reads
        for j in node.inputs:
            if last_use.get(j) == i:
                for p in pieces:
                    p[1].pop(j, None)
    n_bits = sum(len(b) for b in pieces[0][2]) if pieces[0][2] else 0
    regions = [(pc[0], pc[1], pc[4], pc[5], bits) for pc, _, bits in pieces]
    return _box_result(regions, lo, hi, origin, basis, n_lp, n_bits, k, n_ex)
