"""Exact affine maps of a traced graph's nodes along one piece of a segment.

On a piece of the segment ``x(t) = a + t d`` where every ReLU sign and max-pool argmax is fixed, each node's
value is ``alpha + beta t`` with ``alpha, beta`` exact dyadic rationals: ``a``, ``d = b - a`` and every
float64 entry of the affine nodes' matrices and biases are dyadic, and the graph only multiplies, adds,
selects and concatenates. :class:`ExactGraph` computes these vectors as Python integers times one power of
two per vector (``ints * 2**exp``), so the decisions the float error bounds of :mod:`._graph_segment` cannot
make (a root against a piece's end, two roots, a sign, an argmax) are made exactly.

The exact network is the one the float path bounds: each affine node is ``x -> M x + b`` with ``M =
node.matrix()`` and ``b = node.bias_vector`` taken as exact numbers (as the chain path does with
``AffineLayer.weight``). Matrices are kept sparse (their nonzeros only, :meth:`PLNode.sparse_matrix`),
since a convolution's dense matrix is mostly zeros. A sweep costs about one Python-integer multiply-add per
nonzero weight and piece, so it runs only for the pieces the floats cannot settle; node values are cached by
the pattern prefix that selects them, so neighbouring pieces share the sweep up to the node where they differ.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from ._exact import to_exact

# budget for cached exact node values (estimated bytes of their Python integers)
_CACHE_BYTES = 2**28


def _norm(v):
    """Strip the common power of two of ``ints`` into ``exp`` (keeps the integers short)."""
    ints, e = v
    if ints.size == 0:
        return v
    g = int(np.bitwise_or.reduce(ints))
    if g == 0:
        return ints, 0
    tz = (g & -g).bit_length() - 1
    return (ints >> tz, e + tz) if tz else v


def _align(vs):
    e = min(v[1] for v in vs)
    return [v[0] * (1 << (v[1] - e)) if v[1] != e else v[0] for v in vs], e


def _add(vs):
    ints, e = _align(vs)
    out = ints[0]
    for x in ints[1:]:
        out = out + x
    return _norm((out, e))


def _nbytes(v) -> int:
    ints = v[0]
    if ints.size == 0:
        return 64
    top = max(int(np.max(ints)), -int(np.min(ints)))
    return ints.size * (top.bit_length() // 8 + 32)


class _SparseExact:
    """``M x + b`` on exact vectors, from the float64 matrix's nonzeros (``M`` in CSR form: grouped by
    row, as :meth:`PLNode.sparse_matrix` gives it)."""

    def __init__(self, M, b: np.ndarray):
        rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
        self.n_out = M.shape[0]
        self.cols = M.indices.astype(np.int64)
        self.vals = to_exact(M.data)
        self.rows, self.starts = np.unique(rows, return_index=True)
        self.bias = _norm(to_exact(b))

    def apply(self, x, bias: bool):
        xi, xe = x
        out = np.zeros(self.n_out, dtype=object)
        vi, ve = self.vals
        if len(self.cols):
            prod = vi * xi[self.cols]
            out[self.rows] = np.add.reduceat(prod, self.starts)
        y = _norm((out, ve + xe))
        return _add([y, self.bias]) if bias else y


class ExactGraph:
    """Exact ``(alpha, beta)`` of chosen nodes' inputs on a piece of the segment ``a + t d``.

    ``a`` and ``d`` are exact vectors ``(ints, exp)``. A piece is described by its pattern: for every ReLU
    node read so far, its boolean signs, and for every max-pool node, the argmax position of each window.
    """

    def __init__(self, g, a, d):
        self.g = g
        self.a, self.d = _norm(a), _norm(d)
        self._affine: dict[int, _SparseExact] = {}
        self._slope: dict[int, tuple] = {}
        self._cache: dict[tuple, tuple] = {}
        self._cache_bytes = 0
        self.n_sweeps = 0

    def _aff(self, node) -> _SparseExact:
        if node.index not in self._affine:
            self._affine[node.index] = _SparseExact(node.sparse_matrix(), node.bias_vector.numpy())
        return self._affine[node.index]

    def _relu(self, node, v, bits):
        ints, e = v
        s = node.negative_slope
        if s == 0:
            return _norm((np.where(bits, ints, 0), e))
        if node.index not in self._slope:
            si, se = to_exact(np.array([s]))
            self._slope[node.index] = (int(si[0]), se)
        si, se = self._slope[node.index]
        lo = min(0, se)
        on = ints * (1 << -lo) if lo else ints
        off = ints * (si << (se - lo))
        return _norm((np.where(bits, on, off), e + lo))

    def inputs(self, pattern: dict, upto: int, want) -> dict:
        """``{i: (alpha, beta)}`` of the input of each node ``i`` in ``want`` (all ``<= upto``), on the piece
        whose pattern is ``pattern`` (node index -> ReLU bits or max-pool argmax positions, for every
        pattern node before ``upto``)."""
        self.n_sweeps += 1
        g = self.g
        last_use = {}
        for node in g.nodes[: upto + 1]:
            for i in node.inputs:
                last_use[i] = node.index
        keep = {g.nodes[i].inputs[0] for i in want}
        vals: dict[int, tuple] = {}
        key = b""
        for node in g.nodes[:upto]:
            if node.op in ("relu", "maxpool"):
                key += (
                    np.packbits(pattern[node.index]).tobytes()
                    if node.op == "relu"
                    else (np.asarray(pattern[node.index], dtype=np.int32).tobytes())
                )
            ck = (node.index, key)
            hit = self._cache.get(ck)
            if hit is not None:
                vals[node.index] = hit
            else:
                vals[node.index] = self._eval(node, vals, pattern)
                self._store(ck, vals[node.index])
            for i in node.inputs:
                if last_use[i] == node.index and i not in keep:
                    vals.pop(i, None)
        return {i: vals[g.nodes[i].inputs[0]] for i in want}

    def _store(self, ck, value) -> None:
        size = _nbytes(value[0]) + _nbytes(value[1])
        if size > _CACHE_BYTES // 4:
            return
        while self._cache and self._cache_bytes + size > _CACHE_BYTES:
            old = next(iter(self._cache))  # oldest first
            v = self._cache.pop(old)
            self._cache_bytes -= _nbytes(v[0]) + _nbytes(v[1])
        self._cache[ck] = value
        self._cache_bytes += size

    def _eval(self, node, vals, pattern):
        op = node.op
        if op == "input":
            return (self.a, self.d)
        ins = [vals[i] for i in node.inputs]
        if op == "affine":
            aff = self._aff(node)
            ((al, be),) = ins
            return (aff.apply(al, True), aff.apply(be, False))
        if op == "relu":
            ((al, be),) = ins
            bits = np.asarray(pattern[node.index], dtype=bool)
            return (self._relu(node, al, bits), self._relu(node, be, bits))
        if op == "maxpool":
            ((al, be),) = ins
            W = node.windows.numpy()
            idx = W[np.arange(W.shape[0]), np.asarray(pattern[node.index])]
            return (_norm((al[0][idx], al[1])), _norm((be[0][idx], be[1])))
        if op == "add":
            return (_add([v[0] for v in ins]), _add([v[1] for v in ins]))
        if op == "cat":
            out = []
            for part in range(2):
                ints, e = _align([v[part] for v in ins])
                out.append(_norm((np.concatenate(ints), e)))
            return tuple(out)
        if op == "output":
            return ins[0]
        raise TypeError(f"unsupported node op {op!r}")  # pragma: no cover - the tracer emits no other ops


def lines(v, cols_a, cols_b=None):
    """Integer lines ``(A, B)`` (value ``(A + B t) 2**e`` for one common ``e``, object arrays) of the units
    ``cols_a`` of the exact value ``v = (alpha, beta)``, or of the differences ``cols_a - cols_b``."""
    (ai, ae), (bi, be) = v
    e = min(ae, be)
    A = ai[cols_a] * (1 << (ae - e))
    B = bi[cols_a] * (1 << (be - e))
    if cols_b is not None:
        A = A - ai[cols_b] * (1 << (ae - e))
        B = B - bi[cols_b] * (1 << (be - e))
    return A, B


def root(A: int, B: int) -> Fraction:
    """The zero ``-A / B`` of the line ``A + B t`` (``B != 0``)."""
    return Fraction(-int(A), int(B))


def signs_at(A, B, t: Fraction) -> np.ndarray:
    """Exact signs of ``A + B t`` (object arrays of integers) at the rational ``t``."""
    s = A * t.denominator + B * t.numerator
    return (s > 0).astype(np.int8) - (s < 0).astype(np.int8)
