"""Exact regions on a segment through a traced graph (residual add, concatenation, max-pooling).

The graph's nodes are evaluated on every piece of the segment as affine functions of ``t`` (``alpha +
beta t``, one pair of vectors per node and piece, with absolute error bounds). At a ReLU node a piece is
split at the roots of its units; at a max-pool node it is split at every root of a difference of two
candidates of a window and the sub-pieces whose argmaxes agree are merged again, so that each final piece
has one pattern (ReLU signs and max-pool argmaxes) and consecutive pieces differ. Every decision (a root
inside a piece or not, two roots distinct or not, a sign or an argmax at a sub-piece) is certified by its
float error bound. A piece with a decision too close to call is split at that node in exact arithmetic
instead (:mod:`._graph_exact`: the piece's exact affine maps, roots as fractions), so the pieces are
exactly those of the float64 network, however deep; the floats only decide how often that is needed.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ._exact import to_exact
from ._graph_exact import ExactGraph, lines, root, signs_at
from ._slice import _ETA, TooManyRegionsError, check_finite

# float64 arrays (value, slope and their two error bounds) kept per piece and per live unit
_BYTES_PER_ENTRY = 4 * 8

_U = 2.0**-53


class CloseCallError(ArithmeticError):
    """A decision within its float error bound that exact arithmetic was not allowed to settle."""


def _same_line(eline, rline):
    """Whether a root's line is (bitwise) the line that made an end point, up to sign: the same root."""
    return np.all(eline == rline, axis=1) | np.all(eline == -rline, axis=1)


def _split(edges, eerr, eline, esrc, roots, bad):
    """Split pieces ``[edges[p], edges[p+1]]`` at the given roots ``(piece, value, error, line, source)``.

    Roots certainly outside their piece are dropped, and so are roots of the very line that made an end
    point (a max-pool candidate that is a ReLU output vanishing exactly there); a piece with a root within
    error of an end point, or with two roots equal within error, is marked in ``bad`` (which is updated)
    and left unsplit, for the exact path. Returns new edges, their errors, lines and sources, and the
    parent piece of each new piece."""
    roots_p, roots_t, roots_e, roots_l, roots_s = roots
    m = len(edges) - 1
    lo, hi = edges[roots_p], edges[roots_p + 1]
    elo, ehi = eerr[roots_p], eerr[roots_p + 1]
    inside = (roots_t - roots_e > lo + elo) & (roots_t + roots_e < hi - ehi)
    outside = (roots_t + roots_e < lo - elo) | (roots_t - roots_e > hi + ehi)
    outside |= _same_line(eline[roots_p], roots_l) | _same_line(eline[roots_p + 1], roots_l)
    inside &= ~outside
    bad[roots_p[~inside & ~outside]] = True
    inside &= ~bad[roots_p]
    rp, rt, re, rl, rs = roots_p[inside], roots_t[inside], roots_e[inside], roots_l[inside], roots_s[inside]
    order = np.lexsort((rt, rp))
    rp, rt, re, rl, rs = rp[order], rt[order], re[order], rl[order], rs[order]
    if len(rp) > 1:
        same = rp[1:] == rp[:-1]
        gap = rt[1:] - rt[:-1]
        # identical roots of identical lines (duplicated units, a ReLU output against another): one point
        exactly = same & _same_line(rl[1:], rl[:-1])
        close = same & ~exactly & (gap <= re[1:] + re[:-1])
        bad[rp[1:][close]] = True
        keep = np.concatenate([[True], ~exactly]) & ~bad[rp]
        rp, rt, re, rl, rs = rp[keep], rt[keep], re[keep], rl[keep], rs[keep]
    counts = np.bincount(rp, minlength=m)
    parent = np.repeat(np.arange(m), counts + 1)
    # new edges: each piece's left end, then its roots; finally the last right end
    key = np.concatenate([np.arange(m) * 2.0, rp * 2.0 + 1])
    sub = np.concatenate([np.full(m, -np.inf), rt])
    o = np.lexsort((sub, key))
    new_edges = np.concatenate([np.concatenate([edges[:-1], rt])[o], edges[-1:]])
    new_err = np.concatenate([np.concatenate([eerr[:-1], re])[o], eerr[-1:]])
    new_line = np.concatenate([np.concatenate([eline[:-1], rl])[o], eline[-1:]])
    new_src = np.concatenate([np.concatenate([esrc[:-1], rs])[o], esrc[-1:]])
    return new_edges, new_err, new_line, new_src, parent


def _roots(al, be, ea, eb):
    """Roots ``-al / be`` of affine functions and their error bounds (infinite where ``be`` may be 0)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = -al / be
        err = (ea + np.abs(t) * eb) / np.abs(be) * (1 + 1e-6) * np.where(np.abs(be) > eb, 1.0, np.inf)
        err = err + 4 * _U * np.abs(t)
    return t, err


def _certified_roots(al, be, ea, eb, tmax: float, bad):
    """Zeros in ``t`` of the affine functions ``al + be t`` (per piece and column) whose position is certain:
    ``(piece, root, error, line, column)`` arrays. A function whose slope is within its error of zero is
    certain only if its value stays away from 0 over the whole segment; otherwise its piece is marked in
    ``bad`` (for the exact path)."""
    t, err = _roots(al, be, ea, eb)
    cu, cj = np.nonzero(~np.isfinite(err) & (np.abs(be) > 0))
    if len(cu):
        far = np.abs(al[cu, cj]) - ea[cu, cj] - (np.abs(be[cu, cj]) + eb[cu, cj]) * tmax
        bad[cu[~(far > 0)]] = True
    p, j = np.nonzero(np.isfinite(err))
    return p, t[p, j], err[p, j], np.stack([al[p, j], be[p, j]], axis=1), j


class _Exact:
    """The exact path of one segment: pieces' patterns -> exact maps -> exact splits of single pieces."""

    def __init__(self, g, a_exact, d_exact):
        self.net = ExactGraph(g, a_exact, d_exact)
        self.n_pieces = 0

    def pattern(self, cols, col_nodes, p: int) -> dict:
        out = {}
        for c, (idx, k) in zip(cols, col_nodes):
            row = c[p]
            out[idx] = row if k == 0 else row.reshape(-1, k).argmax(axis=1)
        return out

    def edge(self, ins, value: float, src) -> Fraction:
        node, ca, cb = (int(s) for s in src)
        if node < 0:
            return Fraction(value)  # an end of t_range: exactly the given float
        A, B = lines(ins[node], np.array([ca]), None if cb < 0 else np.array([cb]))
        return root(A[0], B[0])

    def split(self, node, p, edges, esrc, cols, col_nodes, al, be):
        """Sub-pieces of piece ``p`` at ``node`` (a ReLU or a max-pool), exactly: ``(roots, lines,
        sources, decisions)`` with roots as fractions, in order, and one decision row per sub-piece (ReLU
        bits or argmax positions)."""
        self.n_pieces += 1
        k = node.index
        pat = self.pattern(cols, col_nodes, p)
        want = {k} | {int(s[0]) for s in (esrc[p], esrc[p + 1]) if s[0] >= 0}
        ins = self.net.inputs(pat, k, want)
        lo = self.edge(ins, edges[p], esrc[p])
        hi = self.edge(ins, edges[p + 1], esrc[p + 1])
        if node.op == "relu":
            n = node.size
            A, B = lines(ins[k], np.arange(n))
            sL, sR = signs_at(A, B, lo), signs_at(A, B, hi)
            cut = np.nonzero(sL.astype(np.int16) * sR < 0)[0]
            rts = [root(A[j], B[j]) for j in cut.tolist()]
            order = sorted(range(len(cut)), key=lambda i: rts[i])
            distinct, group = [], np.empty(len(cut), dtype=np.int64)
            for i in order:
                if not distinct or rts[i] != distinct[-1][0]:
                    distinct.append((rts[i], int(cut[i])))
                group[i] = len(distinct) - 1
            q = np.arange(len(distinct) + 1)[:, None]
            bits = np.broadcast_to((sL > 0) | (sR > 0), (len(q), n)).copy()
            if len(cut):
                bits[:, cut] = np.where(q <= group[None, :], sL[cut] > 0, sR[cut] > 0)
            rline = np.array([[al[p, j], be[p, j]] for _, j in distinct]).reshape(-1, 2)
            rsrc = np.array([[k, j, -1] for _, j in distinct], dtype=np.int64).reshape(-1, 3)
            return [r for r, _ in distinct], rline, rsrc, bits
        W = node.windows.numpy()
        nw, kk = W.shape
        px, py = np.triu_indices(kk, 1)
        wx, wy = W[:, px].reshape(-1), W[:, py].reshape(-1)
        ok = (wx >= 0) & (wy >= 0)
        wx, wy = wx[ok], wy[ok]
        A, B = lines(ins[k], wx, wy)
        sL, sR = signs_at(A, B, lo), signs_at(A, B, hi)
        cut = np.nonzero(sL.astype(np.int16) * sR < 0)[0].tolist()
        cand = sorted({(root(A[i], B[i]), i) for i in cut}, key=lambda x: x[0])
        distinct = []
        for r, i in cand:
            if not distinct or r != distinct[-1][0]:
                distinct.append((r, i))
        Wc = np.where(W >= 0, W, 0)
        CA, CB = lines(ins[k], Wc.reshape(-1))
        pts = [lo] + [r for r, _ in distinct] + [hi]
        best = []
        for q in range(len(pts) - 1):
            mid = (pts[q] + pts[q + 1]) / 2
            v = CA * mid.denominator + CB * mid.numerator
            v = np.where((W >= 0).reshape(-1), v, float("-inf")).reshape(nw, kk)
            best.append(np.argmax(v, axis=1))
        best = np.array(best).reshape(-1, nw)
        # keep only the roots where the argmaxes change
        change = np.any(best[1:] != best[:-1], axis=1)
        keep_rows = np.concatenate([[True], change])
        distinct = [d for d, c in zip(distinct, change) if c]
        best = best[keep_rows]
        dal, dbe = al[p, wx] - al[p, wy], be[p, wx] - be[p, wy]
        rline = np.array([[dal[i], dbe[i]] for _, i in distinct]).reshape(-1, 2)
        rsrc = np.array([[k, wx[i], wy[i]] for _, i in distinct], dtype=np.int64).reshape(-1, 3)
        return [r for r, _ in distinct], rline, rsrc, best


def _underflow(S: np.ndarray, X: np.ndarray, aMt, row_nnz: np.ndarray):
    """Absolute slack for the products of ``X @ M^T`` that may have underflowed: an operation whose exact
    result is subnormal errs by up to 2^-1075 however small its operands, which the relative bound
    ``gamma (|x| @ |M^T|)`` does not cover where that sum (``S``, as computed) is below ~2^-900; there, the
    entries with a nonzero product (``X``: the magnitudes and their errors) get ``(nnz + 8) 2^-1074``.
    Elsewhere the relative bound exceeds any such error by far. Exact zeros keep a zero bound."""
    small = S < 2.0**-900
    if not small.any():
        return 0.0
    ind = aMt.astype(bool).astype(np.float64)
    hit = np.asarray((X > 0).astype(np.float64) @ ind) > 0
    return (small & hit) * ((row_nnz + 8) * _ETA)


def segment_graph(
    g,
    a: np.ndarray,
    d: np.ndarray,
    t0: float,
    t1: float,
    memory_budget: float = 2**31,
    *,
    d_exact=None,
    exact: str = "auto",
    info: dict | None = None,
):
    """Pieces of ``a + t d``, ``t`` in ``[t0, t1]``, through the traced graph ``g``: returns
    ``(edges, patterns)`` (``edges`` sorted, ``patterns`` boolean: ReLU bits then one-hot argmaxes).

    ``d_exact`` (``(ints, exp)``, see :func:`._exact.to_exact`) is the exact direction when ``d`` is its
    rounding (``b - a`` in floats); by default ``d`` itself is the direction. ``exact`` says which pieces
    are split in exact arithmetic: ``"auto"`` those with a decision within its float error bound,
    ``"always"`` every piece at every node (a cross-check of the float path), ``"never"`` none (a close
    call raises :class:`CloseCallError`). ``info`` (a dict), when given, receives ``n_exact``: the number
    of (node, piece) splits made exactly.

    Every piece carries an affine map per unit of each node still to be read, so memory grows with
    pieces x live units: values are dropped after their last reader, and the trace stops with
    :class:`TooManyRegionsError` (naming the node) before it would hold more than ``memory_budget`` bytes."""
    if exact not in ("auto", "always", "never"):
        raise ValueError(f"exact must be 'auto', 'always' or 'never', got {exact!r}")
    last_use = {node.index: node.index for node in g.nodes}
    for node in g.nodes:
        for i in node.inputs:
            last_use[i] = max(last_use[i], node.index)
    edges = np.array([t0, t1], dtype=np.float64)
    eerr = np.zeros(2)
    eline = np.full((2, 2), np.nan)  # the line (alpha, beta) whose root made each end point
    esrc = np.full((2, 3), -1, dtype=np.int64)  # (node, unit, other unit or -1) whose root made it
    vals: dict[int, tuple] = {}
    cols: list[np.ndarray] = []
    col_nodes: list[tuple[int, int]] = []  # (node index, window size or 0 for a ReLU) per entry of cols
    tmax = max(abs(t0), abs(t1))
    ex = None
    for node in g.nodes:
        if node.op == "input":
            vals[node.index] = (a[None, :], d[None, :], np.zeros((1, a.size)), _U * np.abs(d)[None, :])
            continue
        ins = [vals[i] for i in node.inputs]
        if node.op == "affine":
            al, be, ea, eb = ins[0]
            # (the sparse form: a convolution's dense matrix is mostly zeros and costly to unroll)
            S = node.sparse_matrix()
            b = node.bias_vector.numpy()
            row_nnz = np.diff(S.indptr).astype(np.int64)
            # rounding of a dot product: one per nonzero product and addition (zeros add exactly, so
            # neither a dense nor a sparse product rounds more often than a row has nonzeros)
            gam = 1.01 * (int(row_nnz.max(initial=0)) + 2) * _U
            if S.nnz < 0.2 * (S.shape[0] * S.shape[1]):  # a convolution's or a pruned layer's matrix
                Mt = S.T.tocsr()
            else:
                Mt = node.matrix().numpy().T
            aMt = abs(Mt)
            A, B = np.asarray(al @ Mt) + b, np.asarray(be @ Mt)
            with np.errstate(under="ignore"):
                EA, SA = np.asarray(ea @ aMt), np.asarray(np.abs(al) @ aMt)
                EB, SB = np.asarray(eb @ aMt), np.asarray(np.abs(be) @ aMt)
                slack_a = _underflow(EA + SA, np.abs(al) + ea, aMt, row_nnz)
                slack_b = _underflow(EB + SB, np.abs(be) + eb, aMt, row_nnz)
                EA = EA * (1 + gam) + gam * (SA + np.abs(b)) + slack_a
                EB = EB * (1 + gam) + gam * SB + slack_b
            vals[node.index] = (A, B, EA, EB)
        elif node.op == "add":
            parts = list(zip(*ins))
            A, B = sum(parts[0]), sum(parts[1])
            n = len(ins)
            vals[node.index] = (
                A,
                B,
                sum(parts[2]) * (1 + n * _U) + n * _U * np.abs(A),
                sum(parts[3]) * (1 + n * _U) + n * _U * np.abs(B),
            )
        elif node.op == "cat":
            vals[node.index] = tuple(np.concatenate(p, axis=1) for p in zip(*ins))
        elif node.op == "output":
            vals[node.index] = ins[0]
        elif node.op in ("relu", "maxpool"):
            al, be, ea, eb = ins[0]
            check_finite(node.source, al, be, ea, eb)
            m = len(edges) - 1
            bad = np.full(m, exact == "always")
            if node.op == "relu":
                rp, rt, re, rl, rj = _certified_roots(al, be, ea, eb, tmax, bad)
                rs = np.stack([np.full(len(rp), node.index), rj, np.full(len(rp), -1)], axis=1)
                roots = (rp, rt, re, rl, rs)
            else:
                W = node.windows.numpy()
                k = W.shape[1]
                parts = []
                for x, y in zip(*np.triu_indices(k, 1)):
                    wx, wy = W[:, x], W[:, y]
                    valid = (wx >= 0) & (wy >= 0)
                    wx, wy = wx[valid], wy[valid]
                    dal, dbe = al[:, wx] - al[:, wy], be[:, wx] - be[:, wy]
                    dea = ea[:, wx] + ea[:, wy] + _U * np.abs(dal)
                    deb = eb[:, wx] + eb[:, wy] + _U * np.abs(dbe)
                    pp, tt, ee, ll, jj = _certified_roots(dal, dbe, dea, deb, tmax, bad)
                    ss = np.stack([np.full(len(pp), node.index), wx[jj], wy[jj]], axis=1)
                    parts.append((pp, tt, ee, ll, ss))
                roots = tuple(np.concatenate(z) for z in zip(*parts))
            new_edges, new_err, new_line, new_src, parent = _split(edges, eerr, eline, esrc, roots, bad)
            mid = 0.5 * (new_edges[:-1] + new_edges[1:])
            A, B, EA, EB = al[parent], be[parent], ea[parent], eb[parent]
            Z = A + B * mid[:, None]
            EZ = EA + EB * np.abs(mid)[:, None] + 4 * _U * (np.abs(A) + np.abs(B * mid[:, None]))
            EZ += (B != 0) * (2 * _ETA)  # (B * mid may underflow)
            check_finite(node.source, Z, EZ)
            if node.op == "relu":
                # identically zero (bit False) only where that is certain: zero values with zero error
                zero = (A == 0) & (B == 0) & (EA == 0) & (EB == 0)
                bad[parent[np.any((np.abs(Z) <= EZ) & ~zero, axis=1)]] = True
                dec = Z > EZ
            else:
                Wc = np.where(W >= 0, W, 0)
                cand = np.where((W >= 0)[None], Z[:, Wc], -np.inf)  # (m', windows, k)
                cerr = EZ[:, Wc]
                dec = np.argmax(cand, axis=2)
                top = np.take_along_axis(cand, dec[..., None], axis=2)[..., 0]
                terr = np.take_along_axis(cerr, dec[..., None], axis=2)[..., 0]
                others = np.where(np.arange(W.shape[1])[None, None, :] == dec[..., None], -np.inf, cand)
                margin = top[..., None] - others - terr[..., None] - cerr
                # exact ties (e.g. two ReLU outputs both exactly 0): the first position, as torch takes
                tie = (others == top[..., None]) & (cerr == 0) & (terr[..., None] == 0)
                bad[parent[np.any((margin <= 0) & ~tie, axis=(1, 2))]] = True
            if bad.any():
                if exact == "never":
                    raise CloseCallError(
                        f"a decision at node {node.index} ({node.op}, {node.source}) is within the float64 "
                        "error bound, and exact='never' forbids settling it in exact arithmetic"
                    )
                if ex is None:
                    if d_exact is None:
                        d_exact = to_exact(d)
                    ex = _Exact(g, to_exact(a), d_exact)
                # drop the float sub-pieces of the bad pieces, put their exact split in their place
                keep = ~bad[parent]
                sub_p, sub_e, sub_r, sub_l, sub_s, sub_d = [parent[keep]], [], [], [], [], [dec[keep]]
                sub_e.append(new_edges[:-1][keep])
                sub_r.append(new_err[:-1][keep])
                sub_l.append(new_line[:-1][keep])
                sub_s.append(new_src[:-1][keep])
                for p in np.nonzero(bad)[0].tolist():
                    rts, rline, rsrc, rdec = ex.split(node, p, edges, esrc, cols, col_nodes, al, be)
                    ft = np.array([float(r) for r in rts], dtype=np.float64)
                    sub_p.append(np.full(len(rts) + 1, p))
                    sub_e.append(np.concatenate([edges[p : p + 1], ft]))
                    # a fraction rounded to the nearest float64: half an ulp (tiny slack for subnormals)
                    sub_r.append(np.concatenate([eerr[p : p + 1], _U * np.abs(ft) + 1e-320]))
                    sub_l.append(np.concatenate([eline[p : p + 1], rline]))
                    sub_s.append(np.concatenate([esrc[p : p + 1], rsrc]))
                    sub_d.append(rdec)
                parent = np.concatenate(sub_p)
                o = np.argsort(parent, kind="stable")
                parent = parent[o]
                dec = np.concatenate(sub_d)[o]
                new_edges = np.concatenate([np.concatenate(sub_e)[o], edges[-1:]])
                new_err = np.concatenate([np.concatenate(sub_r)[o], eerr[-1:]])
                new_line = np.concatenate([np.concatenate(sub_l)[o], eline[-1:]])
                new_src = np.concatenate([np.concatenate(sub_s)[o], esrc[-1:]])
                A, B, EA, EB = al[parent], be[parent], ea[parent], eb[parent]
            if node.op == "relu":
                bits = dec
                gain = np.where(bits, 1.0, node.negative_slope)
                # an off unit of a ReLU is exactly 0 (its bit is certain): no error left
                eg = np.where(bits, 1.0, abs(node.negative_slope))
                newv = (A * gain, B * gain, EA * eg + _U * np.abs(A * gain), EB * eg + _U * np.abs(B * gain))
                if node.negative_slope not in (0.0, 1.0):  # (slope * z may underflow: up to 2^-1075)
                    newv = (*newv[:2], newv[2] + (A != 0) * _ETA, newv[3] + (B != 0) * _ETA)
                newcols = [bits]
                col_nodes.append((node.index, 0))
            else:
                best = dec
                idx = np.take_along_axis(
                    np.broadcast_to(Wc[None], (len(parent),) + W.shape), best[..., None], axis=2
                )[..., 0]
                rows = np.arange(len(parent))[:, None]
                newv = (A[rows, idx], B[rows, idx], EA[rows, idx], EB[rows, idx])
                onehot = np.zeros((len(parent), W.shape[0] * W.shape[1]), dtype=bool)
                slot = np.arange(W.shape[0])[None, :] * W.shape[1] + best
                onehot[np.arange(len(parent))[:, None], slot] = True
                newcols = [onehot]
                col_nodes.append((node.index, W.shape[1]))
                # over-split: merge consecutive sub-pieces of one piece with the same argmaxes
                same = (parent[1:] == parent[:-1]) & np.all(best[1:] == best[:-1], axis=1)
                if np.any(same):
                    keep_piece = np.concatenate([[True], ~same])
                    keep_edge = np.concatenate([[True], ~same, [True]])
                    new_edges, new_err = new_edges[keep_edge], new_err[keep_edge]
                    new_line, new_src = new_line[keep_edge], new_src[keep_edge]
                    parent = parent[keep_piece]
                    newv = tuple(v[keep_piece] for v in newv)
                    newcols = [c[keep_piece] for c in newcols]
            live = sum(v[0].shape[1] for k, v in vals.items() if last_use[k] > node.index) + node.size
            n_bits = sum(c.shape[1] for c in cols + newcols)
            need = len(parent) * (live * _BYTES_PER_ENTRY + n_bits)
            if need > memory_budget:
                raise TooManyRegionsError(
                    f"the segment crosses {len(parent)} pieces by {node.source}, and carrying them through "
                    f"the rest of the graph ({live} live units) would need {need / 2**30:.1f} GiB, more than "
                    f"memory_budget={memory_budget / 2**30:.1f} GiB: use a shorter segment or a larger budget"
                )
            for key in list(vals):
                if last_use[key] <= node.index:
                    del vals[key]
                else:
                    vals[key] = tuple(v[parent] for v in vals[key])
            cols = [c[parent] for c in cols] + newcols
            vals[node.index] = newv
            edges, eerr, eline, esrc = new_edges, new_err, new_line, new_src
        else:  # pragma: no cover - the tracer emits no other ops
            raise TypeError(f"unsupported node op {node.op!r}")
        for key in [k for k in vals if last_use[k] <= node.index]:
            del vals[key]
    if info is not None:
        info["n_exact"] = ex.n_pieces if ex is not None else 0
    patterns = np.concatenate(cols, axis=1) if cols else np.zeros((len(edges) - 1, 0), dtype=bool)
    return edges, patterns


__all__ = ["CloseCallError", "segment_graph"]
