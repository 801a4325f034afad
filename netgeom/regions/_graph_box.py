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
  earlier position wins, as torch). A cell is kept when it holds a ball of radius ``> r_min``: the piece's
  own ball shrunk to the cell's walls when that is large enough, else its Chebyshev ball (one LP).
  Positions certainly below another one at every vertex of the piece (qhull, up to 6 dimensions) are
  dropped first, so most windows need no LP. When no cell holds such a ball the piece is kept whole, with
  the argmax at its centre (as a unit too thin to split a piece leaves it whole).

Rounding is handled as in the chain engine: every map carries the magnitudes its entries were summed from
(``Ma``, ``MB``), slope entries below ``rel_tol`` times their magnitude are zero, and a value within
``rel_tol`` of its magnitude over the box is zero.

The pattern is, in node order, the bits ``z > 0`` of every ReLU node and the argmax position of every
window of a max-pool node with windows of more than one entry, in binary (most significant bit first): the
convention of :func:`netgeom.regions.count_patterns`, so the patterns can be compared.
"""

from __future__ import annotations

import numpy as np

from ..nets.certified import _pos_bits, pattern_nodes
from . import _slice
from .exact import (
    _active_units,
    _box_result,
    _chebyshev,
    _cut_by_units,
    _too_many,
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


def _window_cells(G, h, c, r, a, B, Ma, MB, valid, ymax, r_min, size, rel_tol):
    """Cells of one window on one piece: list of ``(G, h, centre, radius, position)`` and LPs solved.
    ``a (k,)``, ``B (d, k)``: the window's entries on the piece (``valid`` marks non-padding positions)."""
    T = rel_tol * (Ma + (MB * ymax[:, None]).sum(0))
    pos = np.nonzero(valid)[0]
    d = G.shape[1]
    # Positions certainly below another one on the whole piece never win (checked at the piece's vertices).
    if len(pos) > 1 and d <= 6:
        from scipy.spatial import HalfspaceIntersection, QhullError

        keep = np.linalg.norm(G, axis=1) > 0
        try:
            verts = HalfspaceIntersection(np.hstack([G[keep], -h[keep, None]]), c).intersections
        except (QhullError, ValueError):
            verts = None
        if verts is not None:
            Z = a[pos] + verts @ B[:, pos]  # (nv, m)
            m = len(pos)
            D = Z[:, :, None] - Z[:, None, :]  # D[v, q, p] = z_q - z_p
            dB = _slice.safe_norm(B[:, pos][:, :, None] - B[:, pos][:, None, :], axis=0)
            margin = T[pos][:, None] + T[pos][None, :] + 1e-8 * size * dB
            beaten = np.any((D.min(axis=0) > margin) & ~np.eye(m, dtype=bool), axis=0)
            pos = pos[~beaten]
    if len(pos) == 1:
        return [(G, h, c, r, int(pos[0]))], 0
    n_lp = 0
    cells = []
    for p in pos:
        rows, rhs, never = [], [], False
        for q in pos:
            if q == p:
                continue
            gq = B[:, q] - B[:, p]
            gq = np.where(np.abs(gq) <= rel_tol * (MB[:, q] + MB[:, p]), 0.0, gq)
            dq = a[q] - a[p]  # p needs dq + y·gq ≤ 0 (< 0 when q comes first)
            tq = T[q] + T[p]
            nq = float(_slice.safe_norm(gq, axis=0))
            if nq == 0.0:
                if dq > tq or (q < p and dq >= -tq):
                    never = True  # q is above p, or ties with it and comes first, on the whole piece
                    break
                continue
            rows.append(gq / nq)
            rhs.append(-dq / nq)
        if never:
            continue
        if not rows:
            cells.append((G, h, c, r, int(p)))
            continue
        Gc, hc = np.vstack([G, *rows]), np.concatenate([h, rhs])
        # The piece's own ball, shrunk to the cell's walls, when the centre is in the cell.
        slack = np.asarray(rhs) - np.asarray(rows) @ c
        rr = min(r, float(slack.min()))
        if rr > r_min:
            cells.append((Gc, hc, c, rr, int(p)))
            continue
        oc, orad = _chebyshev(Gc, hc, size)
        n_lp += 1
        if oc is not None and orad > r_min:
            cells.append((Gc, hc, oc, orad, int(p)))
    if not cells:
        # Every cell too thin to hold a ball: keep the piece whole, its argmax the one at its centre.
        z = a[pos] + c @ B[:, pos]
        return [(G, h, c, r, int(pos[int(np.argmax(z))]))], n_lp
    return cells, n_lp


def box_graph_regions(g, lo, hi, origin, basis, max_regions, min_radius, rel_tol, verbose):
    """:func:`netgeom.regions.regions_in_box` on a traced graph (the box and subspace already checked)."""
    import torch
    from tqdm.auto import tqdm

    nodes = g.nodes
    d = basis.shape[0]
    size = float(np.max(hi - lo))
    r_min = min_radius * size
    ymax = np.maximum(np.abs(lo), np.abs(hi))
    order, last_use = _needed(g)
    pnodes = {n.index for n in pattern_nodes(g)}
    n_pat = len(pnodes)
    # A piece: [G, h, centre, radius, vals, bits]; vals[node] = (alpha (n,), Beta (d, n), Ma (n,), MB (d, n)).
    G0 = np.vstack([np.eye(d), -np.eye(d)])
    h0 = np.concatenate([hi, -lo])
    vals0 = {0: (origin.astype(np.float64), basis.astype(np.float64), np.abs(origin), np.abs(basis))}
    pieces = [(G0, h0, 0.5 * (lo + hi), 0.5 * float(np.min(hi - lo)), vals0, [])]
    n_lp = 0
    k_pat = 0
    for i in order:
        node = nodes[i]
        op = node.op
        if op == "affine":
            W = node.matrix().numpy()
            b = node.bias_vector.numpy()
            absW = np.abs(W).T
            j = node.inputs[0]
            # all pieces at once: one product for every piece's alpha and Beta rows
            al = np.stack([p[4][j][0] for p in pieces])
            Be = np.stack([p[4][j][1] for p in pieces])  # (m, d, n_in)
            A = al @ W.T + b
            Bm = Be @ W.T
            SB = np.abs(Be) @ absW
            Bm = np.where(np.abs(Bm) <= rel_tol * SB, 0.0, Bm)
            Ma = np.abs(al) @ absW + np.abs(b)
            for k, p in enumerate(pieces):
                p[4][i] = (A[k], Bm[k], Ma[k], SB[k])
        elif op in ("add", "cat", "output"):
            for p in pieces:
                ins = [p[4][j] for j in node.inputs]
                if op == "add":
                    al, Be, Ma, MB = (sum(v[t] for v in ins) for t in range(4))
                    Be = np.where(np.abs(Be) <= rel_tol * MB, 0.0, Be)
                elif op == "cat":
                    al, Ma = (np.concatenate([v[t] for v in ins]) for t in (0, 2))
                    Be, MB = (np.concatenate([v[t] for v in ins], axis=1) for t in (1, 3))
                else:
                    al, Be, Ma, MB = ins[0]
                p[4][i] = (al, Be, Ma, MB)
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
            for k_reg, (G, h, c, r, vals, bits) in enumerate(pieces):
                A, Bm, Ma, MB = vals[j]
                T = rel_tol * (Ma + (MB * ymax[:, None]).sum(0))
                active = _active_units(G, h, c, A, Bm, T, lo, hi, size)
                room = max_regions - (len(new) + len(pieces) - k_reg - 1)
                cut, n = _cut_by_units(G, h, c, r, A, Bm, T, active, r_min, size, room, max_regions, bar)
                n_lp += n
                for G_, h_, c_, r_ in cut:
                    on = A + c_ @ Bm > T
                    s = np.where(on, 1.0, slope)
                    v2 = dict(vals) if len(cut) > 1 else vals
                    v2[i] = (s * A, s * Bm, abs(s) * Ma, abs(s) * MB)
                    new.append((G_, h_, c_, r_, v2, bits + [on]))
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
            for k_reg, (G, h, c, r, vals, bits) in enumerate(pieces):
                al, Be, Ma, MB = vals[j]
                cur = [(G, h, c, r, np.zeros(nw, dtype=np.int64))]
                for w in range(nw):
                    if valid[w].sum() == 1:
                        for q in cur:
                            q[4][w] = int(np.nonzero(valid[w])[0][0])
                        continue
                    nxt = []
                    ix = safe[w]
                    for G_, h_, c_, r_, choice in cur:
                        entries = (al[ix], Be[:, ix], Ma[ix], MB[:, ix], valid[w])
                        cells, n = _window_cells(G_, h_, c_, r_, *entries, ymax, r_min, size, rel_tol)
                        n_lp += n
                        for Gc, hc, cc, rc, p in cells:
                            ch = choice if len(cells) == 1 else choice.copy()
                            ch[w] = p
                            nxt.append((Gc, hc, cc, rc, ch))
                    cur = nxt
                    if len(new) + len(cur) + len(pieces) - k_reg - 1 > max_regions:
                        raise _too_many(max_regions)
                for G_, h_, c_, r_, choice in cur:
                    sel = safe[np.arange(nw), choice]
                    v2 = dict(vals) if len(cur) > 1 else vals
                    v2[i] = (al[sel], Be[:, sel], Ma[sel], MB[:, sel])
                    if has_bits:
                        nb = _pos_bits(kw)
                        shifts = np.arange(nb - 1, -1, -1)
                        code = ((choice[:, None] >> shifts) & 1).astype(bool).reshape(-1)
                        b2 = bits + [code]
                    else:
                        b2 = bits
                    new.append((G_, h_, c_, r_, v2, b2))
                    bar.update(1)
            bar.close()
            pieces = new
        else:
            raise RuntimeError(f"internal error: node {i} ({node.source}) has unknown op {op!r}")
        # free the values no later node reads
        for j in node.inputs:
            if last_use.get(j) == i:
                for p in pieces:
                    p[4].pop(j, None)
    n_bits = sum(len(b) for b in pieces[0][5]) if pieces[0][5] else 0
    regions = [(G, h, c, r, bits) for G, h, c, r, _, bits in pieces]
    return _box_result(regions, lo, hi, origin, basis, n_lp, n_bits)
