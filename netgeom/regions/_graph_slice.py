"""Exact regions on a 2-D slice through a traced graph (residual add, concatenation, max-pool, LeakyReLU).

The geometry is that of the chain engine (:mod:`._slice`): convex polygons in projective coordinates, a
polygon being a cyclic list of vertices (homogeneous points ``(D, X, Y)``, ``D > 0``) each followed by the
line of its next edge, every float carrying an absolute error bound, and every line an id from which its
exact coefficients can be rebuilt. What changes is the network: nodes are read in topological order, and on
every current polygon each node's value is an affine map of ``(u, v)`` (``A + u B_0 + v B_1``, with one
error bound per entry that bounds all three coefficients), so

* an affine node pushes its input's maps through its dense matrix, an ``add`` sums its inputs' maps and a
  ``cat`` concatenates them (all on the same polygon, no cut);
* a ``relu`` node (any negative slope) cuts every polygon along the zero line of each unit that takes both
  signs at its vertices, unit after unit, as the chain engine does;
* a ``maxpool`` node cuts every polygon, window by window, into the cells where the window's argmax is
  constant: the cell of candidate ``i`` is the polygon clipped by the half-planes ``c_i - c_j >= 0`` for
  every other valid candidate ``j`` (padding entries, ``-1``, never count). Where ``c_i - c_j`` is
  identically zero on a polygon the earlier position wins, as torch's argmax does, so the cells partition the
  polygon and no cell of zero area is kept.

A sign is taken from floats when it exceeds its certified error bound and otherwise exactly: the exact
maps of every node on a polygon are rebuilt from the pattern that selects them (integer arithmetic on the
float64 weights and plane, :class:`_ExactGraph`), so the partition is exactly that of the float64 network
(its affine nodes as their dense matrices and bias vectors) at any scale. A line that is exactly zero with
zero error (two max-pool candidates both ReLU outputs that are off) is known to vanish without any exact
work.

The inner loops run compiled (:mod:`._graph_slice_kernel`, numba): affine nodes input by input (skipping
inputs that are exactly zero, the off ReLU units, and a sparse matrix's zero weights), ReLU cuts polygon by
polygon (depth first), and max-pool nodes, which first drop the candidates certainly below another one at
every vertex of a polygon (most windows keep one, and need no cut) and then clip the survivors' cells. A
ReLU node's output maps are not written out: the affine and add kernels read them from the node's input
maps, parents and bits (:class:`_ReluOut`), and nothing is computed for the last pattern node's output.
The kernels use the numpy path's formulas and certified predicates and no exact arithmetic: a polygon with a
decision within its error bound is given back to the numpy path (``compiled=False`` runs only that path),
which settles it exactly. The cutting kernels write a piece's vertices only (not the padding slots
after them, which the numpy path reads: the polygons given back, and the final pieces handed to a caller, are
padded).

The pattern of a piece is, in node order, the bits ``z > 0`` of every ReLU node and the one-hot argmax
(``windows x k`` columns) of every max-pool node: for a chain it is the chain engine's pattern.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _exact, _slice
from ._slice import (
    _BLOCK_SHIFT,
    _H,
    _HD,
    _ID,
    _REC,
    _ROW_SHIFT,
    _TINY,
    _U,
    TooManyRegionsError,
    _as_float,
    _buffer,
    _cat,
    _ids,
    _pad_to,
    _tol,
)

# the chain engine's vertex records and line ids (a block here is one pattern node applied to one set of
# polygons)
_UNIT_MAX, _ROW_MAX = 1 << 20, 1 << 24
# 8-byte entries kept per polygon and unit of a live node (A, B_0, B_1, their error bound, the origin)
_BYTES_PER_ENTRY = 5 * 8
# origin of an entry that is no ReLU output (ReLU outputs carry their unit's line id)
_NO_ORIGIN = np.int64(-(1 << 62))
# polygons x nonzero weights below which an affine node is computed by the compiled kernel, not BLAS
_SMALL_AFFINE = 4_000_000
# rows of a ReLU node's working arrays up to which they are sized for every piece its lines can make
_CAP_ROWS = 4096
# density from which the compiled affine kernel updates every output per input (it vectorises), not the
# nonzero weights only
_DENSE_AFFINE = 0.2


def initial_polygon(corners_h, edges) -> tuple[np.ndarray, np.ndarray]:
    """The chain engine's starting polygon (records) and its vertex count."""
    return _slice.initial_polygon(corners_h, edges), np.array([len(corners_h)])


def polygons_uv(rec: np.ndarray, nv: np.ndarray) -> tuple[list, np.ndarray]:
    """Pieces as ``(n_k, 2)`` vertex arrays in ``(u, v)`` and their areas."""
    H = rec[..., _H]
    V = H[..., 1:] / H[..., :1]
    Vn = np.roll(V, -1, axis=1)
    real = np.arange(V.shape[1])[None, :] < nv[:, None]
    # padding slots repeat vertex 0, so the rolled sum over all slots is the shoelace sum of the vertices;
    # each polygon is scaled to unit size first so that huge boxes give inf areas, not inf - inf
    sc = np.abs(V).max(axis=(1, 2))
    sc = np.where(sc > 0, sc, 1.0)[:, None, None]
    W, Wn = V / sc, Vn / sc
    with np.errstate(over="ignore"):
        areas = 0.5 * np.abs((W[..., 0] * Wn[..., 1] - Wn[..., 0] * W[..., 1]).sum(axis=1)) * sc[:, 0, 0] ** 2
    Vr, off = V[real], np.concatenate([[0], np.cumsum(nv)]).tolist()
    return [Vr[a:b] for a, b in zip(off[:-1], off[1:])], areas


def polygons_uv_fast(rec: np.ndarray, nv: np.ndarray) -> tuple[_slice.PolygonList, np.ndarray]:
    """:func:`polygons_uv` by the compiled kernel, as a read-only sequence of views into one stacked vertex
    array (areas summed vertex by vertex: they may differ from :func:`polygons_uv`'s in the last bits)."""
    from . import _slice_kernel

    nv = np.asarray(nv, dtype=np.int64)
    V, areas = _slice_kernel.uv_areas_scaled(np.ascontiguousarray(rec), nv)
    return _slice.PolygonList(V, nv), areas


# ================================================================================== exact graph maps
class _ExactGraph:
    """Exact affine maps (constant, ``d1``, ``d2`` parts, each ``(ints, exp)``) of the graph's nodes on a
    polygon, from the pattern columns that select them; cached by node and pattern prefix."""

    def __init__(self, g, base, cols_before: dict, col_span: dict):
        self.g = g
        self.base = [_exact.to_exact(np.asarray(v, dtype=np.float64).reshape(-1)) for v in base]
        self.cols_before = cols_before
        self.col_span = col_span
        self._params: dict[int, tuple] = {}
        self._maps: dict[tuple, list] = {}

    def _affine(self, node):
        if node.index not in self._params:
            M, b = node._arrays()
            self._params[node.index] = (_exact.to_exact(M), _exact.to_exact(b))
        return self._params[node.index]

    def map_at(self, i: int, prefix: np.ndarray) -> list:
        node = self.g.nodes[i]
        if node.op == "input":
            return self.base
        # the map of a ReLU or max-pool node depends on its own columns too
        n_key = self.col_span[i][1] if i in self.col_span else self.cols_before[i]
        pre = np.asarray(prefix[:n_key], dtype=bool)
        key = (i, np.packbits(pre).tobytes(), len(pre))
        if key in self._maps:
            return self._maps[key]
        ins = [self.map_at(j, prefix) for j in node.inputs]
        if node.op == "affine":
            (Mi, Me), bias = self._affine(node)
            out = [(Mi.dot(vi), Me + ve) for vi, ve in ins[0]]
            out[0] = _exact.exact_add(out[0], bias)
        elif node.op == "relu":
            start, stop = self.col_span[i]
            bits = np.asarray(prefix[start:stop], dtype=bool)
            si, se = _exact.to_exact(np.array(node.negative_slope))
            e = min(0, se)
            gain = np.where(bits, 1 << (0 - e), 0).astype(object)
            gain[~bits] = int(si.item()) << (se - e)
            out = [(vi * gain, ve + e) for vi, ve in ins[0]]
        elif node.op == "maxpool":
            start, stop = self.col_span[i]
            W = node.windows.numpy()
            onehot = np.asarray(prefix[start:stop], dtype=bool).reshape(W.shape)
            idx = W[np.arange(len(W)), np.argmax(onehot, axis=1)]
            out = [(vi[idx], ve) for vi, ve in ins[0]]
        elif node.op == "add":
            out = list(ins[0])
            for other in ins[1:]:
                out = [_exact.exact_add(a, b) for a, b in zip(out, other)]
        elif node.op == "cat":
            out = []
            for parts in zip(*ins):
                e = min(pe for _, pe in parts)
                out.append((np.concatenate([pi * (1 << (pe - e)) for pi, pe in parts]), e))
        elif node.op == "output":
            out = ins[0]
        else:  # pragma: no cover - the tracer emits no other ops
            raise TypeError(f"unsupported node op {node.op!r}")
        if len(self._maps) > 4096:  # bounded: exact maps of wide nodes are large
            self._maps = {}
        self._maps[key] = out
        return out

    def entry_line(self, i: int, prefix, j: int, j2: int | None = None) -> list[int]:
        """Integer line ``(a, b, c)`` of entry ``j`` of node ``i``'s map (minus entry ``j2`` if given)."""
        vals = []
        for vi, ve in self.map_at(i, prefix):
            v = int(vi[j]) - (int(vi[j2]) if j2 is not None else 0)
            vals.append((v, ve))
        e = min(ev for _, ev in vals)
        return [iv << (ev - e) for iv, ev in vals]


# ================================================================================== the engine
@dataclass
class GraphSliceCtx(_slice.ExactLines):
    """State of one pass of the graph engine over a starting polygon (box, or a quadrant's triangle)."""

    g: object
    base: list  # [x0, d1, d2] float64
    frame_lines: list  # the starting polygon's edges (ids -1, -2, ...): exact integer lists, or float64 rows
    quadrant: tuple | None = None  # (su, sv): u = su s / (1 - s - t), v = sv t / (1 - s - t)
    max_regions: int = 1_000_000
    budget: int = 2**28
    blocks: list = field(default_factory=list)  # (node index, parents' pattern at the node) per block
    reached: dict = field(default_factory=dict)
    n_exact: int = 0
    order: list = field(default_factory=list)
    last_use: dict = field(default_factory=dict)
    cols_before: dict = field(default_factory=dict)
    col_span: dict = field(default_factory=dict)
    n_cols: int = 0
    compiled: bool = True  # the numba kernels (False: the numpy path only, e.g. to cross-check them)
    origins: bool = True  # whether entries carry their origin (read by max-pool nodes only)
    _exact_graph: object = None
    _line_cache: dict = field(default_factory=dict)

    def __post_init__(self):
        nodes = self.g.nodes
        pattern = [n.index for n in nodes if n.op in ("relu", "maxpool")]
        last = max(pattern, default=-1)
        # only the pattern nodes and what they read matter
        needed = set(pattern)
        for i in sorted(pattern, reverse=True):
            stack = [i]
            while stack:
                for j in nodes[stack.pop()].inputs:
                    if j not in needed:
                        needed.add(j)
                        stack.append(j)
        self.order = [n.index for n in nodes if n.index in needed and n.index <= last and n.op != "input"]
        for i in self.order:
            for j in nodes[i].inputs:
                self.last_use[j] = max(self.last_use.get(j, -1), i)
        col = 0
        for n in nodes:
            self.cols_before[n.index] = col
            if n.op == "relu":
                self.col_span[n.index] = (col, col + n.size)
                col += n.size
            elif n.op == "maxpool":
                nw, k = n.windows.shape
                if nw * k * k > _UNIT_MAX:
                    raise ValueError(
                        f"max-pool node {n.index} ({n.source}) has {nw} windows of {k}: too many candidate "
                        "pairs for the slice's line ids (at most 2^20); slice a smaller input"
                    )
                self.col_span[n.index] = (col, col + nw * k)
                col += nw * k
            if n.op == "relu" and n.size > _UNIT_MAX:
                raise ValueError(
                    f"ReLU node {n.index} ({n.source}) has over 2^20 units: slice a smaller input"
                )
        self.n_cols = col
        # An entry's origin is a ReLU unit's line id only on the way from a ReLU node to a max-pool through
        # max-pools, concatenations and the output; an affine or add node's entries have none. Origins are
        # kept only when some max-pool reads an entry that may have one (else every candidate's origin is
        # none, and the arrays of none, filled per node and piece, would be read by nobody).
        carries = {}
        for n in nodes:
            if n.op == "relu":
                carries[n.index] = True
            elif n.op in ("maxpool", "output", "cat"):
                carries[n.index] = any(carries.get(j, False) for j in n.inputs)
        self.origins = any(n.op == "maxpool" and carries.get(n.inputs[0], False) for n in nodes)

    def read_later(self, i: int) -> bool:
        """Whether a node after node ``i`` (in the order walked) reads its value."""
        return self.last_use.get(i, -1) > i

    def no_origin(self, m: int, n: int) -> np.ndarray:
        """Origins of ``(m, n)`` entries that are no ReLU outputs (no columns when nothing reads them)."""
        if not self.origins:
            return np.empty((m, 0), dtype=np.int64)
        out = _buffer((m, n), np.int64)  # (pooled: a fresh array per affine node costs its page faults)
        out.fill(_NO_ORIGIN)
        return out

    # ------------------------------------------------------------------------------ exact fallback
    def _line_of(self, lid: int) -> tuple:
        """The exact integer line of a ReLU unit or a max-pool candidate pair (before the quadrant map)."""
        if self._exact_graph is None:
            self._exact_graph = _ExactGraph(self.g, self.base, self.cols_before, self.col_span)
        block, row, unit = lid >> _BLOCK_SHIFT, (lid >> _ROW_SHIFT) & (_ROW_MAX - 1), lid & (_UNIT_MAX - 1)
        i, prefix = self.blocks[block]
        node = self.g.nodes[i]
        src = node.inputs[0]
        if node.op == "relu":
            return self._exact_graph.entry_line(src, prefix[row], unit)
        W = node.windows.numpy()
        k = W.shape[1]
        w, rest = divmod(unit, k * k)
        x, y = divmod(rest, k)
        return self._exact_graph.entry_line(src, prefix[row], int(W[w, x]), int(W[w, y]))

    def new_block(self, node_index: int, prefix: np.ndarray) -> int:
        if len(self.blocks) >= 1 << (63 - _BLOCK_SHIFT):
            raise TooManyRegionsError(
                f"the slice needed over 2^19 chunks of polygons by node {node_index}; raise memory_budget"
            )
        if len(prefix) >= _ROW_MAX:
            raise TooManyRegionsError(
                f"{len(prefix)} polygons reach node {node_index} in one block (the slice's line ids allow "
                f"2^24); lower memory_budget so that they are processed in chunks"
            )
        self.blocks.append((node_index, prefix))
        return len(self.blocks) - 1

    def count(self, node, add: int) -> None:
        total = self.reached.get(node.index, 0) + add
        self.reached[node.index] = total
        if total > self.max_regions:
            raise TooManyRegionsError(
                f"the slice is cut into at least {total} pieces by node {node.index} ({node.op}, "
                f"{node.source}), more than max_regions={self.max_regions}; use a smaller box or raise "
                "max_regions if the memory allows"
            )


def _lines(ctx: GraphSliceCtx, A, B0, B1, E):
    """Affine functions ``A + u B0 + v B1`` (any equal shapes; ``E`` bounds the error of each of the three)
    as unit-scaled lines ``(..., 3)`` in the polygons' coordinates, with absolute error bounds, and a mask
    of those exactly zero."""
    zero = (A == 0) & (B0 == 0) & (B1 == 0) & (E == 0)
    L = np.stack([A, B0, B1], axis=-1)
    dL = E
    if ctx.quadrant is not None:
        su, sv = ctx.quadrant
        L[..., 1] = su * L[..., 1] - A
        L[..., 2] = sv * L[..., 2] - A
        dL = 2 * dL + _U * np.abs(L).max(axis=-1)
    _, ex = np.frexp(np.abs(L).max(axis=-1))
    L = np.ldexp(L, -ex[..., None])
    dL = np.ldexp(dL, -ex) * (1 + 1e-9) + _TINY
    return L, dL, zero




def _vertex_signs(ctx: GraphSliceCtx, R, nr, lr, zero, known=None) -> np.ndarray:
    """Signs ``(r, K)`` of the lines ``lr (r, 5)`` (line, error, id) at the vertices of pieces ``R``; padding
    slots get vertex 0's sign; lines in ``zero`` are 0 everywhere."""
    H = R[..., _H]
    s = H[..., 0] * lr[:, 0, None] + H[..., 1] * lr[:, 1, None] + H[..., 2] * lr[:, 2, None]
    tol = _tol(R[..., _HD], lr[:, 3, None])
    sig = (s > tol).astype(np.int8) - (s < -tol)
    real = np.arange(R.shape[1])[None, :] < nr[:, None]
    unc = (sig == 0) & real & ~zero[:, None]
    if unc.any():
        r, k = np.nonzero(unc)
        ids = _ids(R[r][..., _ID])
        kprev = np.where(k > 0, k - 1, nr[r] - 1)
        a = np.arange(len(r))
        pid, nid = ids[a, kprev], ids[a, k]
        if known is not None:
            kz = _both_zero([v[r] for v in known], pid, nid)
            r, k, pid, nid = r[~kz], k[~kz], pid[~kz], nid[~kz]
        sig[r, k] = ctx.exact_signs(pid, nid, _ids(lr[r, 4]))
    return np.where(real, sig, sig[:, :1])


def _split(ctx: GraphSliceCtx, R, nr, sig, lr, both: bool = True):
    """The chain engine's cut (:func:`._slice._split`) of polygons with ``nr`` vertices each."""
    real = np.arange(R.shape[1])[None, :] < nr[:, None]
    return _slice._split(ctx, R, real, sig, lr, both)


def _block_ids(block: int, rows: np.ndarray, units: np.ndarray) -> np.ndarray:
    return (np.int64(block) << _BLOCK_SHIFT) | (rows.astype(np.int64) << _ROW_SHIFT) | units.astype(np.int64)


def _both_zero(known, prev, nxt):
    """Where both candidates of a difference line ``c_a - c_b`` are exactly 0 at a vertex (the crossing of
    edges ``prev`` and ``nxt``): each is identically zero, or a ReLU output whose own zero line is one of the
    two edges. ``known = (origin_a, origin_b, zero_a, zero_b)`` per tested line."""
    oa, ob, za, zb = known
    ka = za | (oa == prev) | (oa == nxt)
    kb = zb | (ob == prev) | (ob == nxt)
    return ka & kb


def _start_signs(ctx, rec, nv, L, dL, zero, ids, known=None):
    """Per (polygon, line) of ``L (m, n, 3)``: whether some vertex is strictly positive / negative."""
    m, n = L.shape[:2]
    K = rec.shape[1]
    anyp = np.zeros((m, n), dtype=bool)
    anyn = np.zeros((m, n), dtype=bool)
    kk = np.arange(K)
    step = max(1, 2_000_000 // max(1, K * n))
    for i in range(0, m, step):
        R = rec[i : i + step]
        S = np.matmul(R[..., _H], L[i : i + step].transpose(0, 2, 1))  # (c, K, n)
        # One tolerance per (polygon, line) from the polygon's largest vertex error bounds them all; padding
        # slots repeat vertex 0, so reductions over all slots are reductions over the vertices.
        tmax = _tol(R[..., _HD].max(axis=1)[:, None], dL[i : i + step])
        anyp[i : i + step] = S.max(axis=1) > tmax
        anyn[i : i + step] = S.min(axis=1) < -tmax
        close = ~(np.abs(S).min(axis=1) > tmax) & ~zero[i : i + step]  # (a NaN is close too)
        if close.any():
            rr, jj = np.nonzero(close)
            Sv = S[rr, :, jj]
            tol = _tol(R[rr, :, _HD], dL[i + rr, jj][:, None])
            sg = (Sv > tol).astype(np.int8) - (Sv < -tol)
            real = kk[None, :] < nv[i + rr, None]
            q, k = np.nonzero(real & (sg == 0))
            if len(q):
                vid = _ids(R[..., _ID])
                r_ = rr[q]
                kprev = np.where(k > 0, k - 1, nv[i + r_] - 1)
                pid, nid = vid[r_, kprev], vid[r_, k]
                if known is not None:
                    kz = _both_zero([a[i + r_, jj[q]] for a in known], pid, nid)
                    q, k, r_, pid, nid = q[~kz], k[~kz], r_[~kz], pid[~kz], nid[~kz]
                sg[q, k] = ctx.exact_signs(pid, nid, ids[i + r_, jj[q]])
            sg = np.where(real, sg, 0)
            anyp[i + rr, jj] = (sg > 0).any(axis=1)
            anyn[i + rr, jj] = (sg < 0).any(axis=1)
    return anyp, anyn


class _Pieces:
    """Growing arrays of pieces: records, vertex counts and the polygon (at the node's start) of each."""

    def __init__(self, rec, nv):
        m = len(rec)
        cap = max(2 * m, 64)
        self.R = np.empty((cap, rec.shape[1], _REC))
        self.R[:m] = rec
        self.N = np.empty(cap, dtype=np.int64)
        self.N[:m] = nv
        self.P = np.empty(cap, dtype=np.int64)
        self.P[:m] = np.arange(m)
        self.cur = m

    def replace_and_append(self, rows, pieces, counts, n_first: int):
        """Pieces ``[:n_first]`` replace ``rows``; the rest (with parents ``parents``) are appended."""
        K = pieces.shape[1]
        if K > self.R.shape[1]:
            self.R = _pad_to(self.R, K)
        elif K < self.R.shape[1]:
            pieces = _pad_to(pieces, self.R.shape[1])
        self.R[rows], self.N[rows] = pieces[:n_first], counts[:n_first]
        return pieces[n_first:], counts[n_first:]

    def append(self, pieces, counts, parents) -> np.ndarray:
        k = len(pieces)
        if self.cur + k > len(self.R):
            grow = max(len(self.R), k)
            self.R = np.concatenate([self.R, np.empty((grow, *self.R.shape[1:]))])
            self.N = np.concatenate([self.N, np.empty(grow, dtype=np.int64)])
            self.P = np.concatenate([self.P, np.empty(grow, dtype=np.int64)])
        if pieces.shape[1] < self.R.shape[1]:
            pieces = _pad_to(pieces, self.R.shape[1])
        elif pieces.shape[1] > self.R.shape[1]:
            self.R = _pad_to(self.R, pieces.shape[1])
        s = slice(self.cur, self.cur + k)
        self.R[s], self.N[s], self.P[s] = pieces, counts, parents
        self.cur += k
        return np.arange(s.start, s.stop)


def _relu_cut(ctx: GraphSliceCtx, node, rec, nv, inp, block: int, rows: np.ndarray):
    """The numpy path of a ReLU node on the polygons ``rec`` (rows ``rows`` of the block): ``(pieces, counts,
    parents, bits)``, parents indexing ``rec``."""
    A, B, E = inp
    m, n = A.shape
    L, dL, zero = _lines(ctx, A, B[:, 0], B[:, 1], E)
    ids = _block_ids(block, rows[:, None], np.arange(n)[None, :])
    anyp, anyn = _start_signs(ctx, rec, nv, L, dL, zero, ids)
    cand = anyp & anyn
    pcs = _Pieces(rec, nv)
    bits = np.empty((pcs.R.shape[0], n), dtype=bool)
    bits[:m] = anyp
    ctx.count(node, m)
    lrec = np.empty((m, n, 5))
    lrec[..., :3], lrec[..., 3], lrec[..., 4] = L, dL, _as_float(ids)
    candT = np.ascontiguousarray(cand.T)
    for j in np.nonzero(cand.any(axis=0))[0]:
        rows = np.nonzero(candT[j][pcs.P[: pcs.cur]])[0]
        par = pcs.P[rows]
        R, nr = pcs.R[rows], pcs.N[rows]
        lr = lrec[par, j]
        sig = _vertex_signs(ctx, R, nr, lr, zero[par, j])
        hp, hn = (sig > 0).any(axis=1), (sig < 0).any(axis=1)
        bits[rows, j] = hp
        cut = hp & hn
        if not cut.any():
            continue
        rows, par = rows[cut], par[cut]
        pieces, counts = _split(ctx, R[cut], nr[cut], sig[cut], lr[cut])
        ctx.count(node, len(rows))
        rest, rest_n = pcs.replace_and_append(rows, pieces, counts, len(rows))
        new = pcs.append(rest, rest_n, par)
        if len(bits) < len(pcs.R):
            bits = np.concatenate([bits, np.empty((len(pcs.R) - len(bits), n), dtype=bool)])
        bits[new] = bits[rows]
        bits[rows, j] = True
        bits[new, j] = False
    cur = pcs.cur
    return pcs.R[:cur], pcs.N[:cur], pcs.P[:cur], bits[:cur]


class _ReluOut:
    """A ReLU node's output maps on pieces, not written out (compiled path): row ``q`` is row ``parent[q]``
    of the node's input maps ``A, B, E`` times the gain of ``bits[q]`` (1 on, ``slope`` off), exactly what
    :func:`._graph_slice_kernel.relu_maps` writes. The affine and add kernels read it in place; carrying it
    past later cuts composes ``parent`` instead of copying four arrays; anything else materialises it."""

    __slots__ = ("A", "B", "E", "parent", "bits", "slope", "block", "origins")

    def __init__(self, A, B, E, parent, bits, slope: float, block: int, origins: bool):
        self.A, self.B, self.E = A, B, E
        self.parent, self.bits = parent, bits
        self.slope, self.block, self.origins = slope, block, origins

    @property
    def width(self) -> int:
        return self.A.shape[1]

    def take(self, rows) -> _ReluOut:
        return _ReluOut(
            self.A, self.B, self.E, self.parent[rows], self.bits[rows], self.slope, self.block, self.origins
        )

    def materialize(self) -> tuple:
        from . import _graph_slice_kernel as kern

        c = np.ascontiguousarray
        m, n = len(self.parent), self.A.shape[1]
        return kern.relu_maps(
            self.A, self.B, self.E, c(self.parent, dtype=np.int64), c(self.bits), self.slope, self.block,
            self.origins, *_maps_out(m, n), _buffer((m, n if self.origins else 0), np.int64),
        )

    def kernel_args(self) -> tuple:
        """``(A, B, E, parent, bits, slope, lazy)`` for the affine and add kernels."""
        c = np.ascontiguousarray
        return self.A, self.B, self.E, c(self.parent, dtype=np.int64), c(self.bits), self.slope, True


_NO_PARENT, _NO_BITS = np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=bool)
# the affine kernel's unused operands, shared (it never writes them; not flagged read-only, which numba would
# compile the kernels for again): a dense matrix's sparse lists, a sparse one's matrix
_PTR0, _ROWS0, _VALS0, _MT0 = np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 0))


def _maps_out(m: int, n: int) -> tuple:
    """Pooled arrays for a node's maps ``A (m, n)``, ``B (m, 2, n)``, ``E (m, n)`` (written by a kernel): one
    buffer cut in three contiguous parts (one pool look-up, not three, per node)."""
    mn = m * n
    flat = _buffer(4 * mn)
    return flat[:mn].reshape(m, n), flat[mn : 3 * mn].reshape(m, 2, n), flat[3 * mn :].reshape(m, n)


def _kernel_args(v) -> tuple:
    if isinstance(v, _ReluOut):
        return v.kernel_args()
    c = np.ascontiguousarray
    return c(v[0]), c(v[1]), c(v[2]), _NO_PARENT, _NO_BITS, 1.0, False


def _plain(v) -> tuple:
    """A node's maps as arrays ``(A, B, E, origin)``."""
    return v.materialize() if isinstance(v, _ReluOut) else v


def _take(v, rows):
    return v.take(rows) if isinstance(v, _ReluOut) else tuple(a[rows] for a in v)


def _width(v) -> int:
    return v.width if isinstance(v, _ReluOut) else v[0].shape[1]


def _padded_rows(rec, nv, rows) -> np.ndarray:
    """``rec[rows]`` with every slot past a piece's vertices repeating its vertex 0, as the numpy path reads
    them (the compiled kernels leave those slots unwritten)."""
    from . import _graph_slice_kernel as kern

    R = rec[rows]
    kern._pad_rows(R, np.ascontiguousarray(nv[rows], dtype=np.int64), len(R))
    return R


def _relu_node(ctx: GraphSliceCtx, node, rec, nv, inp, prefix):
    A, B, E, _ = inp
    m, n = A.shape
    block = ctx.new_block(node.index, prefix)
    if ctx.compiled:
        from . import _graph_slice_kernel as kern

        su, sv = ctx.quadrant if ctx.quadrant is not None else (1, 1)
        c = np.ascontiguousarray
        nv = c(nv, dtype=np.int64)
        A, B, E = c(A), c(B), c(E)  # (once: the kernel and the node's output read them)
        # working slots from the real vertex counts, so that padding does not grow node by node; rows for
        # four pieces a polygon, or (up to _CAP_ROWS) as many as n lines can cut it into (1 + n + n(n-1)/2):
        # a few polygons cut by many units (the first ReLU node) would otherwise grow them again and again
        cap = max(4 * m + 64, min(m * (1 + n + n * (n - 1) // 2), _CAP_ROWS))
        Kc = max(int(nv.max(initial=0)) + 2, 8)
        status, low, R, nr, parent, bits, fb = kern.relu_split(
            c(rec), nv, A, B, E, ctx.quadrant is not None,
            float(su), float(sv), block, ctx.reached.get(node.index, 0), ctx.max_regions,
            _buffer((cap, Kc, rec.shape[2])), _buffer(cap, np.int64), _buffer(cap, np.int64),
            _buffer((cap, n), np.bool_),
        )
        ctx.count(node, low if status else len(R))
        if fb.any():  # polygons with a decision too close to call in floats: the exact path
            rows = np.nonzero(fb)[0]
            Rf, nf, pf, bf = _relu_cut(ctx, node, _padded_rows(rec, nv, rows), nv[rows],
                                       (A[rows], B[rows], E[rows]), block, rows)
            R, nr = _cat([(R, nr, nr), (Rf, nf, nf)])[:2]
            parent = np.concatenate([parent, rows[pf]])
            bits = np.concatenate([bits, bf])
    else:
        R, nr, parent, bits = _relu_cut(ctx, node, rec, nv, (A, B, E), block, np.arange(m))
    if not ctx.read_later(node.index):  # (the last pattern node: its output is never read)
        return R, nr, parent, bits, None
    if ctx.compiled:
        out = _ReluOut(A, B, E, parent, bits, float(node.negative_slope), block, ctx.origins)
        return R, nr, parent, bits, out
    gain = np.where(bits, 1.0, node.negative_slope)
    egain = np.where(bits, 1.0, abs(node.negative_slope))
    # a unit on keeps its value exactly; an off unit of a ReLU is exactly 0 (its bit is certain)
    rnd = np.where(bits, 0.0, _U)
    nA = A[parent] * gain
    nB = B[parent] * gain[:, None, :]
    nE = E[parent] * egain + rnd * np.maximum(np.abs(nA), np.abs(nB).max(axis=1))
    ids = _block_ids(block, parent[:, None], np.arange(n if ctx.origins else 0)[None, :])
    # each output vanishes exactly on its unit's line (on or off, any slope): its origin is that line's id
    return R, nr, parent, bits, (nA, nB, nE, ids)


def _pool_cut(ctx: GraphSliceCtx, node, rec, nv, inp, block: int, block_rows: np.ndarray, surv):
    """The numpy path of a max-pool node on the polygons ``rec`` (rows ``block_rows`` of the block, maps
    ``inp`` on them), given the candidates that may win on each (``surv (m, nw, k)``, None: all valid):
    ``(pieces, counts, parents, argmax positions (pieces, nw))``, parents indexing ``rec``."""
    A, B, E, orig = inp
    m = len(A)
    W = node.windows.numpy()
    nw, k = W.shape
    valid = W >= 0
    Wc = np.where(valid, W, 0)
    rows_m = np.arange(m)[:, None]

    def pair_lines(par, w, x, y):
        """Lines of c_x - c_y (windows ``w``, positions ``x``, ``y``) on the polygons ``par``."""
        ix, iy = Wc[w, x], Wc[w, y]
        dA = A[par, ix] - A[par, iy]
        dB0 = B[par, 0, ix] - B[par, 0, iy]
        dB1 = B[par, 1, ix] - B[par, 1, iy]
        eD = E[par, ix] + E[par, iy] + _U * np.maximum(np.abs(dA), np.maximum(np.abs(dB0), np.abs(dB1)))
        L, dL, zero = _lines(ctx, dA, dB0, dB1, eD)
        ids = _block_ids(block, np.broadcast_to(block_rows[par], L.shape[:-1]), w * k * k + x * k + y)
        if orig.shape[1]:
            known = (orig[par, ix], orig[par, iy], czero[par, ix], czero[par, iy])
        else:  # no candidate of this node is a ReLU output
            none = np.full(np.shape(dA), _NO_ORIGIN)
            known = (none, none, czero[par, ix], czero[par, iy])
        return L, dL, zero, ids, known

    # candidates identically zero (ReLU outputs that are off): exactly 0 everywhere on their polygon
    czero = (A == 0) & (B[:, 0] == 0) & (B[:, 1] == 0) & (E == 0)

    # Relation of every pair x < y of every window on every polygon: 1 (c_x > c_y inside), -1 (c_x < c_y),
    # 0 (identically equal: x wins), 2 (the polygon is cut).
    wins = np.zeros((m, nw, k), dtype=np.int64)  # how many others each position beats (where not cut)
    active = np.zeros((m, nw), dtype=bool)
    rel = {}
    allw = np.arange(nw)
    # With ``surv``: candidates certainly below another one on the whole polygon are never its argmax;
    # survivors are compared pairwise below. A survivor beats every dropped candidate wherever it is the
    # argmax, so a pair with one dropped candidate is recorded as won by the other (only the winner's count
    # of wins and the survivors' cells use these relations).
    for x in range(k):
        for y in range(x + 1, k):
            both = valid[:, x] & valid[:, y]
            if not both.any():
                continue
            w = allw[both]
            if surv is not None:
                sx, sy = surv[:, w, x], surv[:, w, y]
                anyp, anyn = sx & ~sy, ~sx & sy
                pr, pw = np.nonzero(sx & sy)
                if len(pr):
                    L, dL, zero, ids, known = pair_lines(pr, w[pw], x, y)
                    ap, an = _start_signs(
                        ctx, rec[pr], nv[pr], L[:, None], dL[:, None], zero[:, None], ids[:, None],
                        tuple(a[:, None] for a in known),
                    )
                    anyp[pr, pw], anyn[pr, pw] = ap[:, 0], an[:, 0]
            else:
                L, dL, zero, ids, known = pair_lines(rows_m, w[None, :], x, y)
                known = tuple(np.broadcast_to(a, L.shape[:-1]) for a in known)
                anyp, anyn = _start_signs(ctx, rec, nv, L, dL, zero, ids, known)
            active[:, w] |= anyp & anyn
            wins[:, w, x] += ~anyn
            wins[:, w, y] += anyn
            code = np.zeros((m, nw), dtype=np.int8)
            code[:, w] = np.where(anyp & anyn, 2, anyp.astype(np.int8) - anyn)
            rel[x, y] = code
    nvalid = valid.sum(axis=1)
    beats_all = (wins == (nvalid - 1)[None, :, None]) & valid[None]
    winner = np.argmax(beats_all, axis=2)  # the position that beats every other
    ok = np.take_along_axis(wins, winner[..., None], axis=2)[..., 0] == nvalid - 1
    if np.any(~active & ~ok):  # pragma: no cover - exact relations always order the candidates
        raise RuntimeError(f"internal error: no argmax at max-pool node {node.index}")
    pcs = _Pieces(rec, nv)
    best = np.empty((pcs.R.shape[0], nw), dtype=np.int64)
    best[:m] = winner
    ctx.count(node, m)
    activeT = np.ascontiguousarray(active.T)
    for w in np.nonzero(active.any(axis=0))[0]:
        rows = np.nonzero(activeT[w][pcs.P[: pcs.cur]])[0]
        par = pcs.P[rows]
        cells = []  # (source row index into rows, pieces, counts, position)
        for i in np.nonzero(valid[w])[0]:
            R, nr, src = pcs.R[rows], pcs.N[rows], np.arange(len(rows))
            for j in np.nonzero(valid[w])[0]:
                if j == i or not len(src):
                    continue
                # the pair's relation on the parent polygon holds on its pieces: only a cut pair is tested
                code = rel[min(i, j), max(i, j)][par[src], w] * (1 if i < j else -1)
                code[np.abs(code) == 2] = 2
                drop = (code == -1) | ((code == 0) & (i > j))
                sub = np.nonzero(code == 2)[0]
                if len(sub):
                    L, dL, zero, ids, known = pair_lines(par[src[sub]], w, i, j)
                    lr = np.empty((len(sub), 5))
                    lr[:, :3], lr[:, 3], lr[:, 4] = L, dL, _as_float(ids)
                    Rs, ns = R[sub], nr[sub]
                    sig = _vertex_signs(ctx, Rs, ns, lr, zero, known)
                    hp, hn = (sig > 0).any(axis=1), (sig < 0).any(axis=1)
                    # keep the part where c_i - c_j >= 0; where c_i == c_j everywhere, the earlier position
                    drop[sub] = ~(hp | (~hn & (i < j)))
                    cut = hp & hn
                    if cut.any():
                        pieces, counts = _split(ctx, Rs[cut], ns[cut], sig[cut], lr[cut], both=False)
                        K = max(R.shape[1], pieces.shape[1])
                        R, pieces = _pad_to(R, K), _pad_to(pieces, K)
                        nr = nr.copy()
                        R[sub[cut]], nr[sub[cut]] = pieces, counts
                R, nr, src = R[~drop], nr[~drop], src[~drop]
            cells.append((src, R, nr, np.full(len(src), i)))
        src = np.concatenate([c[0] for c in cells])
        K = max(c[1].shape[1] for c in cells)
        R = np.concatenate([_pad_to(c[1], K) for c in cells])
        nr = np.concatenate([c[2] for c in cells])
        pos = np.concatenate([c[3] for c in cells])
        order = np.argsort(src, kind="stable")
        src, R, nr, pos = src[order], R[order], nr[order], pos[order]
        first = np.concatenate([[True], src[1:] != src[:-1]])
        if first.sum() != len(rows):  # pragma: no cover - the cells cover every polygon
            raise RuntimeError(f"internal error: a polygon lost every argmax cell at node {node.index}")
        ctx.count(node, len(src) - len(rows))
        # the first cell of each piece takes its place, the others are appended
        pcs.replace_and_append(rows, R[first], nr[first], len(rows))
        best[rows, w] = pos[first]
        if (~first).any():
            new = pcs.append(R[~first], nr[~first], par[src[~first]])
            if len(best) < len(pcs.R):
                best = np.concatenate([best, np.empty((len(pcs.R) - len(best), nw), dtype=np.int64)])
            best[new] = best[rows[src[~first]]]
            best[new, w] = pos[~first]
    cur = pcs.cur
    return pcs.R[:cur], pcs.N[:cur], pcs.P[:cur], best[:cur]


def _maxpool_node(ctx: GraphSliceCtx, node, rec, nv, inp, prefix):
    A, B, E, orig = inp
    m = len(A)
    W = node.windows.numpy()
    nw, k = W.shape
    Wc = np.where(W >= 0, W, 0)
    block = ctx.new_block(node.index, prefix)
    if ctx.compiled:
        from . import _graph_slice_kernel as kern

        su, sv = ctx.quadrant if ctx.quadrant is not None else (1, 1)
        c = np.ascontiguousarray
        cA, cB, cE = c(A), c(B), c(E)  # (once: the three kernels read them)
        args = (cA, cB, cE, c(W, dtype=np.int64), ctx.quadrant is not None, float(su), float(sv))
        nv = c(nv, dtype=np.int64)
        crec = c(rec)
        # slots from the real vertex counts, so that padding does not grow node by node
        cap, Ks = 2 * m + 16, max(int(nv.max(initial=0)) + 2, 8)
        status, low, R, nr, parent, best, fb, surv = kern.pool_split(
            crec, nv, *args, block, ctx.reached.get(node.index, 0), ctx.max_regions,
            _buffer((cap, Ks, rec.shape[2])), _buffer(cap, np.int64), _buffer(cap, np.int64),
            _buffer((cap, nw), np.int64),
        )
        ctx.count(node, low if status else len(R))
        if fb.any():  # polygons with a decision too close to call in floats: the exact path
            rows = np.nonzero(fb)[0]
            Rf, nf, pf, bf = _pool_cut(
                ctx, node, _padded_rows(rec, nv, rows), nv[rows], tuple(a[rows] for a in inp), block, rows,
                surv[rows],
            )
            R, nr = _cat([(R, nr, nr), (Rf, nf, nf)])[:2]
            parent = np.concatenate([parent, rows[pf]])
            best = np.concatenate([best, bf])
    else:
        R, nr, parent, best = _pool_cut(ctx, node, rec, nv, inp, block, np.arange(m), None)
    cur = len(R)
    if ctx.compiled:
        c = np.ascontiguousarray
        maps = ctx.read_later(node.index)
        out = _maps_out(cur, nw) if maps else (np.zeros((0, 0)), np.zeros((0, 2, 0)), np.zeros((0, 0)))
        no = _buffer((cur, nw if maps and orig.shape[1] else 0), np.int64)
        onehot = kern.pool_outputs(
            cA, cB, cE, c(orig), c(Wc, dtype=np.int64), c(parent, dtype=np.int64),
            c(best, dtype=np.int64), maps, _buffer((cur, nw * k), np.bool_), *out, no,
        )
        return R, nr, parent, onehot, ((*out, no) if maps else None)
    onehot = np.zeros((cur, nw * k), dtype=bool)
    onehot[np.arange(cur)[:, None], np.arange(nw)[None, :] * k + best] = True
    if not ctx.read_later(node.index):
        return R, nr, parent, onehot, None
    idx = Wc[np.arange(nw)[None, :], best]  # (cur, nw) input entries selected
    pr = parent[:, None]
    Bs = B[pr, :, idx].transpose(0, 2, 1)
    no = orig[pr, idx] if orig.shape[1] else np.empty((cur, 0), dtype=np.int64)
    newv = (A[pr, idx], np.ascontiguousarray(Bs), E[pr, idx], no)
    return R, nr, parent, onehot, newv


def _affine_node(ctx: GraphSliceCtx, node, inp):
    M, b = node._arrays()
    m, n_in = len(inp.parent) if isinstance(inp, _ReluOut) else inp[0].shape[0], M.shape[1]
    gam = 1.01 * (n_in + 2) * _U
    nnz = np.count_nonzero(M)
    if ctx.compiled and (m * nnz < _SMALL_AFFINE or nnz < 0.5 * M.size):
        # A pruned (or convolution's) matrix skips its zeros here, and a small product is dominated by
        # BLAS's thread start-up on a busy machine; a large dense one is left to BLAS.
        from . import _graph_slice_kernel as kern

        c = np.ascontiguousarray
        if nnz >= _DENSE_AFFINE * M.size:
            MT, ptr, rows, w = c(M.T), _PTR0, _ROWS0, _VALS0
        else:
            nz = np.nonzero(M.T)  # (input, output) pairs in input order
            ptr = np.searchsorted(nz[0], np.arange(M.shape[1] + 1))
            MT, rows, w = _MT0, nz[1].astype(np.int64), c(M.T[nz])
        nA, nB, nE, finite = kern.affine_maps_checked(
            *_kernel_args(inp), MT, ptr, rows, w, c(b), gam, _TINY, *_maps_out(m, M.shape[0])
        )
        if not finite:  # (the kernel tests every value as it writes it)
            _slice.check_finite(node.source, nA, nB, nE)
        return nA, nB, nE, ctx.no_origin(*nA.shape)
    A, B, E, _ = _plain(inp)
    aMT = np.abs(M).T
    nA = A @ M.T + b
    nB = (B.reshape(-1, n_in) @ M.T).reshape(m, 2, -1)
    # |fl(m.x + b) - (m.x + b)| <= gamma (|m|.|x| + |b|); an input error e adds |m|.e; the bound's own
    # sums of nonnegative terms are rounded up by the factor (1 + gamma). One bound serves A, B_0 and B_1:
    # |x| is the largest of the three, and |b| is added to all.
    eX = E * (1 + gam) + gam * np.maximum(np.abs(A), np.abs(B).max(axis=1))
    eY = (eX @ aMT) * (1 + gam) + (_TINY + gam * np.abs(b))
    _slice.check_finite(node.source, nA, nB, eY)
    return nA, nB, eY, ctx.no_origin(*nA.shape)


def _add_node(ctx: GraphSliceCtx, ins):
    if ctx.compiled and len(ins) == 2:
        from . import _graph_slice_kernel as kern

        m = len(ins[0].parent) if isinstance(ins[0], _ReluOut) else ins[0][0].shape[0]
        A, B, E = kern.add_maps(
            *_kernel_args(ins[0]), *_kernel_args(ins[1]), 2 * _U * (1 + 1e-9), *_maps_out(m, _width(ins[0]))
        )
        _slice.check_finite("a sum of two nodes", A, B, E)
        return A, B, E, ctx.no_origin(*A.shape)
    ins = [_plain(v) for v in ins]
    A = sum(v[0] for v in ins)
    B = sum(v[1] for v in ins)
    # a sum of k terms is off by at most (k - 1) u times the sum of their magnitudes (not of the result's)
    c = len(ins) * _U * (1 + 1e-9)
    mag = sum(np.maximum(np.abs(v[0]), np.abs(v[1]).max(axis=1)) for v in ins)
    E = sum(v[2] for v in ins) * (1 + c) + c * mag
    _slice.check_finite("a sum of nodes", A, B, E)
    return A, B, E, ctx.no_origin(*A.shape)


def _cat_node(ins):
    ins = [_plain(v) for v in ins]
    return (
        np.concatenate([v[0] for v in ins], axis=1),
        np.concatenate([v[1] for v in ins], axis=2),
        np.concatenate([v[2] for v in ins], axis=1),
        np.concatenate([v[3] for v in ins], axis=1),
    )


def _extend(pats, parent, cols, final: bool):
    """``[pats[parent], cols]``: in pooled memory but for the final patterns (handed to the caller)."""
    from . import _graph_slice_kernel as kern

    if pats.shape[1] == 0 and len(cols) == len(parent):
        # the first pattern node: its columns are the patterns (the kernel's copy of them into an empty
        # prefix ran ten times slower than one with a prefix)
        return np.array(cols) if final else cols
    shape = (len(parent), pats.shape[1] + cols.shape[1])
    out = np.empty(shape, dtype=bool) if final else _buffer(shape, np.bool_)
    c = np.ascontiguousarray
    return kern.extend_patterns(c(pats), c(parent, dtype=np.int64), c(cols), out)


def _live_units(ctx, vals, after: int) -> int:
    return sum(_width(v) for key, v in vals.items() if ctx.last_use.get(key, -1) > after)


def _walk(ctx: GraphSliceCtx, pos: int, rec, nv, vals: dict, pats):
    """Carry the pieces ``rec`` (with node maps ``vals`` and pattern columns ``pats``) through the nodes
    ``ctx.order[pos:]``; returns the final ``(rec, nv, patterns)``. Pieces are processed in chunks, each
    through the rest of the graph (depth first), when their maps would exceed the memory budget."""
    nodes = ctx.g.nodes
    for p in range(pos, len(ctx.order)):
        node = nodes[ctx.order[p]]
        i = node.index
        if node.op in ("relu", "maxpool"):
            width = _live_units(ctx, vals, i - 1) + node.size
            step = max(1, ctx.budget // (_BYTES_PER_ENTRY * 4 * max(1, width)))
            if len(rec) > step:
                return _cat(
                    [
                        _walk(
                            ctx,
                            p,
                            rec[s : s + step],
                            nv[s : s + step],
                            {key: _take(v, slice(s, s + step)) for key, v in vals.items()},
                            pats[s : s + step],
                        )
                        for s in range(0, len(rec), step)
                    ]
                )
            fn = _relu_node if node.op == "relu" else _maxpool_node
            rec, nv, parent, cols, newv = fn(ctx, node, rec, nv, _plain(vals[node.inputs[0]]), pats)
            pats = _extend(pats, parent, cols, final=p + 1 == len(ctx.order))
            vals = {key: _take(v, parent) for key, v in vals.items() if ctx.last_use.get(key, -1) > i}
            if newv is not None:
                vals[i] = newv
        else:
            ins = [vals[j] for j in node.inputs]
            if node.op == "affine":
                vals[i] = _affine_node(ctx, node, ins[0])
            elif node.op == "add":
                vals[i] = _add_node(ctx, ins)
            elif node.op == "cat":
                vals[i] = _cat_node(ins)
            elif node.op == "output":
                vals[i] = ins[0]
            else:  # pragma: no cover - the tracer emits no other ops
                raise TypeError(f"unsupported node op {node.op!r}")
            vals = {key: v for key, v in vals.items() if key == i or ctx.last_use.get(key, -1) > i}
        if p + 1 < len(ctx.order) and node.op in ("relu", "maxpool"):
            width = _live_units(ctx, vals, i)
            step = max(1, ctx.budget // (_BYTES_PER_ENTRY * max(1, width)))
            if len(rec) > step:
                return _cat(
                    [
                        _walk(
                            ctx,
                            p + 1,
                            rec[s : s + step],
                            nv[s : s + step],
                            {key: _take(v, slice(s, s + step)) for key, v in vals.items()},
                            pats[s : s + step],
                        )
                        for s in range(0, len(rec), step)
                    ]
                )
    return rec, nv, pats


def slice_graph(ctx: GraphSliceCtx, frame_h, frame_l):
    """Pieces of the starting polygon (homogeneous corners ``frame_h``, edges ``frame_l``, in the polygons'
    coordinates) through the graph: ``(rec, nv, patterns)``."""
    rec, nv = initial_polygon(frame_h, frame_l)
    x0, d1, d2 = ctx.base
    n = x0.size
    vals = {
        0: (
            x0[None, :], np.stack([d1, d2])[None], np.zeros((1, n)), ctx.no_origin(1, n),
        )
    }
    pats = np.zeros((1, 0), dtype=bool)
    if not ctx.order:
        return rec, nv, pats
    return _walk(ctx, 0, rec, nv, vals, pats)


def slice_graph_regions(
    g, x0, d1, d2, box, max_regions: int, memory_budget: int, compiled: bool = True, padded: bool = True
):
    """Regions of the plane ``x0 + u d1 + v d2`` through the graph ``g``, in ``box = (u0, u1, v0, v1)`` or
    (``box=None``) in the whole plane: returns ``(box, rec, nv, patterns, n_exact)``.

    The box or the whole plane is handled by :func:`._slice.slice_plane`, as for chains. ``compiled=False``
    runs the numpy path only (the reference the compiled kernels are checked against). ``padded=False``
    leaves the slots of ``rec`` past a piece's ``nv`` vertices as the kernels left them (unwritten), for a
    caller that reads ``nv`` vertices only; otherwise they repeat the piece's vertex 0."""

    def run(frame_h, frame_l, quadrant):
        ctx = GraphSliceCtx(
            g=g,
            base=[x0, d1, d2],
            frame_lines=list(np.asarray(frame_l, dtype=float)),  # made exact when a decision needs them
            quadrant=quadrant,
            max_regions=max_regions,
            budget=memory_budget,
            compiled=compiled,
        )
        rec, nv, pats = slice_graph(ctx, frame_h, frame_l)
        # the pieces handed on: every slot past a piece's vertices repeats its vertex 0 (the whole plane's
        # quadrants always: their reach, _slice._reach, reads every slot)
        if compiled and (padded or quadrant is not None):
            from . import _graph_slice_kernel as kern

            kern._pad_rows(rec, np.ascontiguousarray(nv, dtype=np.int64), len(rec))
        return rec, nv, pats, ctx

    return _slice.slice_plane(run, box)


__all__ = ["GraphSliceCtx", "slice_graph", "slice_graph_regions", "polygons_uv", "polygons_uv_fast"]
