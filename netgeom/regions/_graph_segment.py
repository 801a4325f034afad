"""Exact regions on a segment through a traced graph (residual add, concatenation, max-pooling).

The graph's nodes are evaluated on every piece of the segment as affine functions of ``t`` (``alpha +
beta t``, one pair of vectors per node and piece, with absolute error bounds). At a ReLU node a piece is
split at the roots of its units; at a max-pool node it is split at every root of a difference of two
candidates of a window and the sub-pieces whose argmaxes agree are merged again, so that each final piece
has one pattern (ReLU signs and max-pool argmaxes) and consecutive pieces differ. Every decision (a root
inside a piece or not, two roots distinct or not, a sign or an argmax at a sub-piece) is certified by its
float error bound; the exact integer fallback of :mod:`._exact` covers chains only, so a decision on a
graph that is too close to call raises :class:`CloseCallError` instead of guessing.
"""

from __future__ import annotations

import numpy as np

from ._slice import TooManyRegionsError

# float64 arrays (value, slope and their two error bounds) kept per piece and per live unit
_BYTES_PER_ENTRY = 4 * 8

_U = 2.0**-53


class CloseCallError(ArithmeticError):
    """A decision on a traced graph lies within its float error bound (exact fallback: chains only)."""


def _close(what: str, node) -> CloseCallError:
    return CloseCallError(
        f"{what} at node {node.index} ({node.op}, {node.source}) is within the float64 error bound; the "
        "exact fallback covers chain networks only, so this traced graph cannot be answered exactly here"
    )


def _same_line(eline, rline):
    """Whether a root's line is (bitwise) the line that made an end point, up to sign: the same root."""
    return np.all(eline == rline, axis=1) | np.all(eline == -rline, axis=1)


def _split(edges, eerr, eline, roots_p, roots_t, roots_e, roots_l, node):
    """Split pieces ``[edges[p], edges[p+1]]`` at the given roots (piece, value, error bound, line).

    Roots certainly outside their piece are dropped, and so are roots of the very line that made an end
    point (a max-pool candidate that is a ReLU output vanishing exactly there); equal-within-error roots or
    other roots within error of an end point raise. Returns new edges, their errors and lines, and the
    parent piece of each new piece."""
    m = len(edges) - 1
    lo, hi = edges[roots_p], edges[roots_p + 1]
    elo, ehi = eerr[roots_p], eerr[roots_p + 1]
    inside = (roots_t - roots_e > lo + elo) & (roots_t + roots_e < hi - ehi)
    outside = (roots_t + roots_e < lo - elo) | (roots_t - roots_e > hi + ehi)
    outside |= _same_line(eline[roots_p], roots_l) | _same_line(eline[roots_p + 1], roots_l)
    inside &= ~outside
    if np.any(~inside & ~outside):
        raise _close("a breakpoint near a piece's end", node)
    rp, rt, re, rl = roots_p[inside], roots_t[inside], roots_e[inside], roots_l[inside]
    order = np.lexsort((rt, rp))
    rp, rt, re, rl = rp[order], rt[order], re[order], rl[order]
    if len(rp) > 1:
        same = rp[1:] == rp[:-1]
        gap = rt[1:] - rt[:-1]
        # identical roots of identical lines (duplicated units, a ReLU output against another): one point
        exactly = same & _same_line(rl[1:], rl[:-1])
        if np.any(same & ~exactly & (gap <= re[1:] + re[:-1])):
            raise _close("two breakpoints", node)
        if np.any(exactly):
            keep = np.concatenate([[True], ~exactly])
            rp, rt, re, rl = rp[keep], rt[keep], re[keep], rl[keep]
    counts = np.bincount(rp, minlength=m)
    parent = np.repeat(np.arange(m), counts + 1)
    # new edges: each piece's left end, then its roots; finally the last right end
    key = np.concatenate([np.arange(m) * 2.0, rp * 2.0 + 1])
    sub = np.concatenate([np.full(m, -np.inf), rt])
    o = np.lexsort((sub, key))
    new_edges = np.concatenate([np.concatenate([edges[:-1], rt])[o], edges[-1:]])
    new_err = np.concatenate([np.concatenate([eerr[:-1], re])[o], eerr[-1:]])
    new_line = np.concatenate([np.concatenate([eline[:-1], rl])[o], eline[-1:]])
    return new_edges, new_err, new_line, parent


def _roots(al, be, ea, eb):
    """Roots ``-al / be`` of affine functions and their error bounds (infinite where ``be`` may be 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -al / be
        err = (ea + np.abs(t) * eb) / np.abs(be) * (1 + 1e-6) * np.where(np.abs(be) > eb, 1.0, np.inf)
        err = err + 4 * _U * np.abs(t)
    return t, err


def _certified_roots(al, be, ea, eb, tmax: float, what: str, node):
    """Zeros in ``t`` of the affine functions ``al + be t`` (per piece and column) whose position is certain:
    ``(piece, root, error, line)`` arrays. A function whose slope is within its error of zero is certain only
    if its value stays away from 0 over the whole segment; otherwise :class:`CloseCallError` names
    ``what``."""
    t, err = _roots(al, be, ea, eb)
    cu, cj = np.nonzero(~np.isfinite(err) & (np.abs(be) > 0))
    if len(cu):
        far = np.abs(al[cu, cj]) - ea[cu, cj] - (np.abs(be[cu, cj]) + eb[cu, cj]) * tmax
        if np.any(far <= 0):
            raise _close(what, node)
    p, j = np.nonzero(np.isfinite(err))
    return p, t[p, j], err[p, j], np.stack([al[p, j], be[p, j]], axis=1)


def segment_graph(g, a: np.ndarray, d: np.ndarray, t0: float, t1: float, memory_budget: float = 2**31):
    """Pieces of ``a + t d``, ``t`` in ``[t0, t1]``, through the traced graph ``g``: returns
    ``(edges, patterns)`` (``edges`` sorted, ``patterns`` boolean: ReLU bits then one-hot argmaxes).

    Every piece carries an affine map per unit of each node still to be read, so memory grows with
    pieces x live units: values are dropped after their last reader, and the trace stops with
    :class:`TooManyRegionsError` (naming the node) before it would hold more than ``memory_budget`` bytes."""
    last_use = {node.index: node.index for node in g.nodes}
    for node in g.nodes:
        for i in node.inputs:
            last_use[i] = max(last_use[i], node.index)
    edges = np.array([t0, t1], dtype=np.float64)
    eerr = np.zeros(2)
    eline = np.full((2, 2), np.nan)  # the line (alpha, beta) whose root made each end point
    vals: dict[int, tuple] = {}
    cols: list[np.ndarray] = []
    tmax = max(abs(t0), abs(t1))
    for node in g.nodes:
        if node.op == "input":
            vals[node.index] = (a[None, :], d[None, :], np.zeros((1, a.size)), _U * np.abs(d)[None, :])
            continue
        ins = [vals[i] for i in node.inputs]
        if node.op == "affine":
            al, be, ea, eb = ins[0]
            M = node.matrix().numpy()
            b = node.bias_vector.numpy()
            aM = np.abs(M)
            gam = 1.01 * (M.shape[1] + 2) * _U
            A, B = al @ M.T + b, be @ M.T
            vals[node.index] = (
                A,
                B,
                ea @ aM.T + gam * (np.abs(al) @ aM.T + np.abs(b)),
                eb @ aM.T + gam * (np.abs(be) @ aM.T),
            )
        elif node.op == "add":
            parts = list(zip(*ins))
            A, B = sum(parts[0]), sum(parts[1])
            vals[node.index] = (
                A, B, sum(parts[2]) + len(ins) * _U * np.abs(A), sum(parts[3]) + len(ins) * _U * np.abs(B)
            )
        elif node.op == "cat":
            vals[node.index] = tuple(np.concatenate(p, axis=1) for p in zip(*ins))
        elif node.op == "output":
            vals[node.index] = ins[0]
        elif node.op in ("relu", "maxpool"):
            al, be, ea, eb = ins[0]
            if node.op == "relu":
                what = "a unit nearly constant along the segment"
                roots = _certified_roots(al, be, ea, eb, tmax, what, node)
                new_edges, new_err, new_line, parent = _split(edges, eerr, eline, *roots, node)
            else:
                W = node.windows.numpy()
                k = W.shape[1]
                pairs = [(x, y) for x in range(k) for y in range(x + 1, k)]
                rp, rt, re, rl = [], [], [], []
                for x, y in pairs:
                    wx, wy = W[:, x], W[:, y]
                    valid = (wx >= 0) & (wy >= 0)
                    wx, wy = wx[valid], wy[valid]
                    dal, dbe = al[:, wx] - al[:, wy], be[:, wx] - be[:, wy]
                    dea = ea[:, wx] + ea[:, wy] + _U * np.abs(dal)
                    deb = eb[:, wx] + eb[:, wy] + _U * np.abs(dbe)
                    pp, tt, ee, ll = _certified_roots(
                        dal, dbe, dea, deb, tmax, "two max-pool candidates nearly parallel and close", node
                    )
                    rp.append(pp)
                    rt.append(tt)
                    re.append(ee)
                    rl.append(ll)
                new_edges, new_err, new_line, parent = _split(
                    edges, eerr, eline, np.concatenate(rp), np.concatenate(rt), np.concatenate(re),
                    np.concatenate(rl), node,
                )
            mid = 0.5 * (new_edges[:-1] + new_edges[1:])
            A, B, EA, EB = al[parent], be[parent], ea[parent], eb[parent]
            Z = A + B * mid[:, None]
            EZ = EA + EB * np.abs(mid)[:, None] + 4 * _U * (np.abs(A) + np.abs(B * mid[:, None]))
            if node.op == "relu":
                # identically zero (bit False) only where that is certain: zero values with zero error
                zero = (A == 0) & (B == 0) & (EA == 0) & (EB == 0)
                if np.any((np.abs(Z) <= EZ) & ~zero):
                    raise _close("a ReLU sign", node)
                bits = Z > EZ
                gain = np.where(bits, 1.0, node.negative_slope)
                # an off unit of a ReLU is exactly 0 (its bit is certain): no error left
                eg = np.where(bits, 1.0, abs(node.negative_slope))
                newv = (A * gain, B * gain, EA * eg + _U * np.abs(A * gain), EB * eg + _U * np.abs(B * gain))
                newcols = [bits]
            else:
                W = node.windows.numpy()
                Wc = np.where(W >= 0, W, 0)
                cand = np.where((W >= 0)[None], Z[:, Wc], -np.inf)  # (m', windows, k)
                cerr = EZ[:, Wc]
                best = np.argmax(cand, axis=2)
                top = np.take_along_axis(cand, best[..., None], axis=2)[..., 0]
                terr = np.take_along_axis(cerr, best[..., None], axis=2)[..., 0]
                others = np.where(np.arange(W.shape[1])[None, None, :] == best[..., None], -np.inf, cand)
                margin = top[..., None] - others - terr[..., None] - cerr
                # exact ties (e.g. two ReLU outputs both exactly 0): the first position, as torch takes
                tie = (others == top[..., None]) & (cerr == 0) & (terr[..., None] == 0)
                if np.any((margin <= 0) & ~tie):
                    raise _close("a max-pool argmax", node)
                Wb = np.broadcast_to(Wc[None], cand.shape)
                idx = np.take_along_axis(Wb, best[..., None], axis=2)[..., 0]
                rows = np.arange(len(mid))[:, None]
                newv = (A[rows, idx], B[rows, idx], EA[rows, idx], EB[rows, idx])
                onehot = np.zeros((len(mid), W.shape[0] * W.shape[1]), dtype=bool)
                slot = np.arange(W.shape[0])[None, :] * W.shape[1] + best
                onehot[np.arange(len(mid))[:, None], slot] = True
                newcols = [onehot]
                # over-split: merge consecutive sub-pieces of one piece with the same argmaxes
                same = (parent[1:] == parent[:-1]) & np.all(best[1:] == best[:-1], axis=1)
                if np.any(same):
                    keep_piece = np.concatenate([[True], ~same])
                    keep_edge = np.concatenate([[True], ~same, [True]])
                    new_edges, new_err = new_edges[keep_edge], new_err[keep_edge]
                    new_line = new_line[keep_edge]
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
            edges, eerr, eline = new_edges, new_err, new_line
        else:  # pragma: no cover - the tracer emits no other ops
            raise TypeError(f"unsupported node op {node.op!r}")
        for key in [k for k in vals if last_use[k] <= node.index]:
            del vals[key]
    patterns = np.concatenate(cols, axis=1) if cols else np.zeros((len(edges) - 1, 0), dtype=bool)
    return edges, patterns


__all__ = ["CloseCallError", "segment_graph"]
