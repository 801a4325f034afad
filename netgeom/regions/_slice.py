"""The exact 2-D slice: convex polygons cut layer by layer, with certified sign decisions.

Geometry is projective so that no decision depends on the box's size. A polygon is a cyclic list of
*edges*, each an affine function ``l = (a, b, c)`` (the line ``a + b u + c v = 0``), and of *vertices*, each
the crossing point of its two edges in homogeneous coordinates ``h = (D, X, Y)`` (the point ``(X/D, Y/D)``,
``D > 0``). A unit's pre-activation ``z`` on a region is an affine function too, and the sign of ``z`` at a
vertex is the sign of the dot product ``l · h``. Lines and points are scaled by powers of two (exact) to
unit size, and every float carries an absolute error bound (from the forward pass's rounding, then from
each cross product), so a sign is *certain* when ``|l · h|`` exceeds its bound. The rare decisions within
the bound are settled exactly (:mod:`._exact`: integer arithmetic on the float64 weights and plane), so the
partition is the exact one of the float64 network as given, at any scale.

Per layer, the polygons' affine maps give every unit's line on every polygon; a unit whose sign at the
vertices of a polygon is constant never cuts its pieces. Units are then applied one at a time to all the
pieces they may cut (vectorised over pieces): a piece is cut when its vertices have both signs, and the
two pieces keep the vertices of their sign, the vertices with ``z = 0`` and the new crossing points on
the cut edges. No piece of zero area can arise (a cut needs a strictly positive and a strictly negative
vertex), so no area or distance tolerance exists.

Chain networks cut their polygons with a compiled kernel (:mod:`._slice_kernel`, numba): the same
predicates and formulas, polygon by polygon and depth first (a piece is tested only against the units
that cut its parent). A polygon on which any decision is within its error bound is given back whole and
cut here by :func:`_layer_numpy`, which decides it exactly, so both paths give the same partition (set
``_KERNEL = False`` for the numpy path alone). A unit whose line and error bound are exactly zero (a
pruned unit) is identically zero on the polygon: bit False without an exact decision.

The chain of per-layer operations is: affine push of the parametrisation (``P + (u, v) @ Q`` through
``W``), the unit-by-unit split of the polygons (``relu``/``leaky_relu`` bits), then the gains. A traced graph
(residual add, max-pool argmax, cat) plugs in at the first and last steps: maps of a node are affine
combinations of its inputs' maps on the same polygon, and a max-pool window's argmax split is the same
polygon cut by the difference lines of two candidates.
"""

from __future__ import annotations

import contextlib
import math
import operator
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import _exact

_U = 2.0**-53
_TINY = 1e-300  # absolute slack for underflow in products of unit-scaled numbers
# A vertex record: homogeneous point (3), its error (1), the line of the edge that follows it (3), that
# line's error (1) and its id (1, int64 stored in a float64's bits).
_H, _HD, _E, _ED, _ID = slice(0, 3), 3, slice(4, 7), 7, 8
_REC = 9
_BLOCK_SHIFT, _ROW_SHIFT = 44, 20
# The chain path cuts polygons with the compiled kernel (tests switch it off to compare with numpy).
_KERNEL = True


class TooManyRegionsError(RuntimeError):
    """The enumeration met more regions than the caller's ``max_regions`` allows."""


def _tol(hd, dl):
    """Bound on the error of ``l . h`` for unit-scaled ``l``, ``h`` with errors ``dl``, ``hd``:
    ``|l.h - l*.h*| <= 3 (dl + hd + dl hd)``, times ``1 + 1e-6`` and plus ``10 u`` for the dot product's own
    rounding (the product term matters only for large bounds, but it is part of the bound)."""
    return 3 * (hd + dl + hd * dl) * (1 + 1e-6) + 10 * _U + _TINY


def _ids(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).view(np.int64)


def _as_float(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).view(np.float64)


def safe_norm(x: np.ndarray, axis: int) -> np.ndarray:
    """Euclidean norms along ``axis`` without overflow or underflow for entries near float64's limits (a
    norm divides a row to unit length in the box engines: an underflowed 0 gave inf rows there)."""
    with np.errstate(over="ignore", under="ignore"):
        out = np.linalg.norm(x, axis=axis)
    if np.all((out < 1e150) & (out > 1e-140)):  # no square came near overflow or underflow
        return out
    m = np.abs(x).max(axis=axis, keepdims=True)
    scale = np.where(m > 0, m, 1.0)
    with np.errstate(over="ignore", under="ignore"):
        return np.linalg.norm(x / scale, axis=axis) * np.squeeze(scale, axis=axis)


def _normalise(X: np.ndarray, dX: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale each row of ``X`` (last axis) by a power of two to a max-norm in [0.5, 1); errors alike."""
    _, e = np.frexp(np.abs(X).max(axis=-1))
    return np.ldexp(X, -e[..., None]), np.ldexp(dX, -e)


class ExactLines:
    """The exact fallback shared by the chain and graph engines: integer lines by id (frame edges ``-1, -2,
    ...``; unit lines by ``block << 44 | row << 20 | unit``, from the subclass's ``_line_of``), cached, and
    exact signs at vertices. Subclasses are dataclasses with ``frame_lines``, ``quadrant``, ``n_exact`` and
    ``_line_cache``."""

    def exact_line(self, lid: int) -> list[int]:
        if lid < 0:
            line = self.frame_lines[-lid - 1]
            if not isinstance(line, list):  # float64 coefficients, made exact on first use
                line = self.frame_lines[-lid - 1] = _exact.float_line(line)
            return line
        if lid in self._line_cache:
            return self._line_cache[lid]
        a, b, c = self._line_of(lid)
        if self.quadrant is not None:
            su, sv = self.quadrant
            b, c = su * b - a, sv * c - a
        line = [a, b, c]
        if len(self._line_cache) > 100_000:
            self._line_cache.clear()
        self._line_cache[lid] = line
        return line

    def exact_signs(self, prev_ids, next_ids, line_ids) -> np.ndarray:
        """Exact sign of each line at the crossing point of its vertex's two edges (``D`` made > 0)."""
        out = np.empty(len(line_ids), dtype=np.int8)
        for i, (p, q, r) in enumerate(zip(prev_ids.tolist(), next_ids.tolist(), line_ids.tolist())):
            h = _exact.cross(self.exact_line(p), self.exact_line(q))
            out[i] = _exact.sign_at(self.exact_line(r), h)
        self.n_exact += len(out)
        return out

    def exact_d_signs(self, e_ids, l_ids) -> np.ndarray:
        out = np.empty(len(e_ids), dtype=np.int8)
        for i, (p, q) in enumerate(zip(e_ids.tolist(), l_ids.tolist())):
            out[i] = _exact.sign(_exact.cross(self.exact_line(p), self.exact_line(q))[0])
        self.n_exact += len(out)
        return out


@dataclass
class SliceCtx(ExactLines):
    plan: list
    names: list
    last: int
    max_regions: int
    budget: int
    reached: list
    base: list  # [x0, d1, d2] float64
    frame_lines: list  # the initial polygon's edges (ids -1, -2, ...): exact integer lists, or float64 rows
    quadrant: tuple | None = None  # (su, sv): plane coordinates u = su s / (1-s-t), v = sv t / (1-s-t)
    blocks: list = field(default_factory=list)  # (layer, prefix bits) per chunk: provenance of lines
    n_exact: int = 0
    _exact_net: object = None
    _line_cache: dict = field(default_factory=dict)

    def _line_of(self, lid: int) -> tuple:
        """The exact integer line of a unit (before the quadrant's change of coordinates)."""
        if self._exact_net is None:
            self._exact_net = _exact.ExactNet(self.plan, self.base)
        block, row, unit = lid >> _BLOCK_SHIFT, (lid >> _ROW_SHIFT) & ((1 << 24) - 1), lid & ((1 << 20) - 1)
        li, prefix = self.blocks[block]
        return self._exact_net.line(li, prefix[row], unit)


def initial_polygon(corners_h: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Vertex records of one convex polygon: ``corners_h (n, 3)`` homogeneous vertices (``D > 0``) and
    ``edges (n, 3)``, edge ``k`` running from vertex ``k`` to ``k + 1``, with ids ``-1 - k``."""
    n = len(corners_h)
    # each corner and edge scaled by a power of two to a max-norm in [0.5, 1), as _normalise (their error
    # bounds are 0), in Python floats (ldexp scales exactly, as numpy's): a few numpy calls fewer per slice,
    # each several microseconds right after a slice's kernels
    vals = []
    for h, e in zip(np.asarray(corners_h, dtype=float).tolist(), np.asarray(edges, dtype=float).tolist()):
        for row in (h, e):
            ex = math.frexp(max(abs(row[0]), abs(row[1]), abs(row[2])))[1]
            vals.extend([math.ldexp(row[0], -ex), math.ldexp(row[1], -ex), math.ldexp(row[2], -ex), 0.0])
        vals.append(0.0)  # the id, set below
    vals.extend(vals[:_REC])
    rec = np.array(vals).reshape(1, n + 1, _REC)
    rec.view(np.int64)[0, :, _ID] = [*range(-1, -1 - n, -1), -1]
    return rec


def _too_many(ctx: SliceCtx, li: int, count: int) -> TooManyRegionsError:
    return TooManyRegionsError(
        f"the slice is cut into at least {count} pieces by layer {li} ({ctx.names[li]}), more than "
        f"max_regions={ctx.max_regions}; use a smaller box, fewer layers (a truncated model), or raise "
        "max_regions if the memory allows"
    )


# ---------------------------------------------------------------------------------- buffer pool
# Large arrays freed by one node and asked for by the next are, by glibc's malloc, given back to the system
# (its heap is trimmed, or they were mapped) and faulted in again page by page: on small slices the page
# faults cost as much CPU as the geometry. The engines' large working arrays come from a pool instead: per
# thread (nothing shared between threads), bounded (at most _POOL_BYTES kept), and a buffer is handed out
# again only once no array views it any more (its reference count is back to the pool's own), so reuse can
# never alias a live array.
_POOL_MIN = 1 << 16  # smaller requests are served by malloc's free lists without faults
_POOL_BYTES = 256 << 20  # kept while a slice runs
_POOL_KEEP = 64 << 20  # kept between slices (:func:`pool_trim`)


class _Pool(threading.local):
    def __init__(self):
        self.bufs: list = []


_POOL = _Pool()


def _refcounts(bufs: list) -> list[int]:
    """Reference counts of the pool's buffers, each as seen from this loop (one idiom, measured below)."""
    out = []
    for i in range(len(bufs)):
        b = bufs[i]
        out.append(sys.getrefcount(b))
    return out


# the count of a buffer referenced by the pool's list only (measured, as interpreters differ in what they
# count)
_FREE = _refcounts([np.empty(1, dtype=np.uint8)])[0]
_DTYPES = {t: np.dtype(t) for t in (np.float64, np.int64, np.bool_, np.int8, np.int32, np.uint8)}


def _buffer(shape, dtype=np.float64) -> np.ndarray:
    """An uninitialised array of ``shape``, from this thread's pool when it is large."""
    dt = _DTYPES.get(dtype)
    if dt is None:
        dt = np.dtype(dtype)
    if type(shape) is not tuple:
        shape = (shape,)
    nbytes = dt.itemsize
    for s in shape:
        nbytes *= int(s)
    if nbytes < _POOL_MIN:
        return np.empty(shape, dtype=dt)
    bufs = _POOL.bufs
    pick, size, free = -1, 0, []
    for i, r in enumerate(_refcounts(bufs)):
        if r == _FREE:
            free.append(i)
            n = bufs[i].nbytes
            if n >= nbytes and (pick < 0 or n < size):
                pick, size = i, n
    if pick < 0:
        # a power of two, so that a slightly larger request later finds it (pages never written are never
        # faulted in: the unused tail costs address space only)
        new = np.empty(1 << (nbytes - 1).bit_length(), dtype=np.uint8)
        total = sum(b.nbytes for b in bufs) + new.nbytes
        for i in sorted(free, key=lambda i: bufs[i].nbytes):
            if total <= _POOL_BYTES:
                break
            total -= bufs[i].nbytes
            bufs[i] = None
        bufs[:] = [b for b in bufs if b is not None]
        if total <= _POOL_BYTES:
            bufs.append(new)
        buf = new
    else:
        buf = bufs[pick]
    return np.ndarray(shape, dt, buf)


def pool_trim(keep: int = _POOL_KEEP) -> None:
    """Drop this thread's free pooled buffers, largest first, until at most ``keep`` bytes are pooled."""
    bufs = _POOL.bufs
    total = sum(b.nbytes for b in bufs)
    if total <= keep:
        return
    refs = _refcounts(bufs)
    for i in sorted(range(len(bufs)), key=lambda i: -bufs[i].nbytes):
        if total <= keep:
            break
        if refs[i] == _FREE:
            total -= bufs[i].nbytes
            bufs[i] = None
    bufs[:] = [b for b in bufs if b is not None]


def _pad_to(R: np.ndarray, K: int) -> np.ndarray:
    if R.shape[1] >= K:
        return R
    return np.concatenate([R, np.repeat(R[:, :1], K - R.shape[1], axis=1)], axis=1)


def _cat(outs):
    if len(outs) == 1:
        return outs[0]
    K = max(o[0].shape[1] for o in outs)
    return (
        np.concatenate([_pad_to(o[0], K) for o in outs]),
        np.concatenate([o[1] for o in outs]),
        np.concatenate([o[2] for o in outs]),
    )


def slice_from(ctx: SliceCtx, li: int, rec, nv, P, Q, eP, eQ, prefix):
    """Split the polygons ``rec`` (layer ``li``'s input ``P + (u, v) @ Q``, errors ``eP``, ``eQ`` as 2-norm
    bounds) by layers ``li..last``; returns the final ``(rec, nv, patterns)``. Chunked by rows so that
    ``(rows, n_units)`` arrays stay within the memory budget."""
    n = ctx.plan[li][0].shape[0]
    step = max(1, ctx.budget // (8 * 6 * max(n, Q.shape[2])))
    if len(rec) <= step:
        return _slice_chunk(ctx, li, rec, nv, P, Q, eP, eQ, prefix)
    return _cat(
        [
            _slice_chunk(
                ctx,
                li,
                rec[i : i + step],
                nv[i : i + step],
                P[i : i + step],
                Q[i : i + step],
                eP[i : i + step],
                eQ[i : i + step],
                prefix[i : i + step],
            )
            for i in range(0, len(rec), step)
        ]
    )


_BLAS_ONE_THREAD_BELOW = 3 * 10**8  # multiply-adds of a push below which BLAS runs on one thread
_BLAS_SINGLE_ANYWAY = 3 * 2**18  # below this, each product is under OpenBLAS's own threading threshold
_blas = []


def _blas_threads(work: int):
    """One BLAS thread for a small product: its threads' start-up and, on a busy machine, the wait for a
    free core cost more than the product (milliseconds against ~0.1 ms)."""
    if work >= _BLAS_ONE_THREAD_BELOW or work <= _BLAS_SINGLE_ANYWAY:
        return contextlib.nullcontext()
    if not _blas:
        from threadpoolctl import ThreadpoolController

        _blas.append(ThreadpoolController())
    return _blas[0].limit(limits=1, user_api="blas")


def _push(W, bias, P, Q, eP, eQ):
    """Affine push ``z = W x + b`` of the maps, with absolute error bounds per entry."""
    m, n_in = P.shape
    # Three products of m rows each (not one of 2m rows for B): each stays under OpenBLAS's threading
    # threshold for twice as many rows, where no thread-limit call (~0.1 ms) is needed.
    WT = W.T
    with _blas_threads(3 * m * n_in * W.shape[0]):
        A = np.matmul(P, WT, out=_buffer((m, W.shape[0])))
        A += bias
        B = _buffer((m, 2, W.shape[0]))
        np.matmul(Q[:, 0], WT, out=B[:, 0])
        np.matmul(Q[:, 1], WT, out=B[:, 1])
    # |fl(w·x) - w·x| <= gamma_{n+1} (|w|·|x| + |b|) <= gamma (||w|| ||x|| + |b|), plus ||w|| ||x - x_hat||.
    gamma = 1.01 * (n_in + 2) * _U
    nW = safe_norm(W, axis=1)  # (|w| near 1e300: plain norms square it to inf, and inf * 0 is NaN)
    nP = safe_norm(P, axis=1)
    nQ = safe_norm(Q, axis=2)
    with np.errstate(under="ignore"):  # (maps of size 1e-300: bounds in the subnormal range, as before)
        eA = (gamma * nP + eP)[:, None] * nW + gamma * np.abs(bias)
        eB = (gamma * nQ + eQ)[:, :, None] * nW
        units = nW > 0
        eA += underflow_slack(n_in, (nP > 0) | (eP > 0), units)
        eB += underflow_slack(n_in, (nQ > 0) | (eQ > 0), units)
    return A, B, eA, eB


_ETA = 2.0**-1074  # the smallest subnormal; an operation whose exact result is subnormal errs by half of it


def underflow_slack(n_terms: int, rows: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Absolute error bounds to add to those of dot products of ``n_terms`` products: a product, addition or
    fused multiply-add whose exact result lies below 2^-1022 errs by up to 2^-1075 (half of ``_ETA``) however
    small its operands are, which no bound relative to ``|w|·|x|`` covers (weights of 2^-500 on maps of
    2^-600 give products that underflow to exactly 0, and a unit would read as identically zero). Zero
    where the dot product is exact: a row whose inputs and their errors are all zero (``rows`` False; any
    shape) or a unit without weights (``units`` False, last axis). The bound arithmetic's own underflow
    is covered by the same slack (a few operations per entry)."""
    return np.multiply.outer(rows, units) * ((n_terms + 8) * _ETA)


def check_finite(where: str, *arrays) -> None:
    """Raise if a value or error bound of the exact engines left float64's range: its lines and signs would
    be NaN or inf, and the pieces silently wrong. (One sum per array; only an inf or NaN sum, which an
    overflowing sum of finite entries also gives, is checked entry by entry.)"""
    for a in arrays:
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isfinite(float(np.sum(a))) or np.isfinite(a).all():
                continue
        raise OverflowError(
            f"exact regions: {where}: a value or its error bound exceeds float64's range (~1.8e308); the "
            "network's weights, biases or the input region are too large to certify. Rescaling consecutive "
            "layers by reciprocal powers of two (W1 * 2**-k, W2 * 2**k, b1 * 2**-k) leaves every region "
            "unchanged and can bring them into range"
        )


def _slice_chunk(ctx: SliceCtx, li: int, rec, nv, P, Q, eP, eQ, prefix):
    W, bias, has_bits, slope = ctx.plan[li]
    A, B, eA, eB = _push(W, bias, P, Q, eP, eQ)
    check_finite(f"layer {li}", A, B, eA, eB)
    if not has_bits:
        return slice_from(
            ctx, li + 1, rec, nv, A, B, safe_norm(eA, axis=1), safe_norm(eB, axis=2), prefix
        )
    m, n = A.shape
    block = len(ctx.blocks)
    ctx.blocks.append((li, prefix))
    base = ctx.reached[li]
    if base + m > ctx.max_regions:
        raise _too_many(ctx, li, base + m)
    if _KERNEL:
        su, sv = ctx.quadrant if ctx.quadrant is not None else (1, 1)
        maps = (A, B, eA, eB, float(su), float(sv), ctx.quadrant is not None, np.int64(block) << _BLOCK_SHIFT)
        rec, nv, parent, bits, cur = _layer_kernel(ctx, li, rec, nv, maps, base)
    else:
        lrec, zero = _lines(ctx, block, A, B, eA, eB)
        rec, nv, parent, bits, cur = _layer_numpy(ctx, li, rec, nv, lrec, zero, base)
    ctx.reached[li] = base + cur
    pre = np.concatenate([prefix[parent], bits], axis=1)
    if li == ctx.last:
        return rec, nv, pre
    # Next layer's maps, a chunk of pieces at a time (depth first), so that memory stays within budget.
    gain_err = max(1.0, abs(slope))
    with np.errstate(under="ignore"):  # (tiny slices: squares underflow, harmless in a bound)
        nA, nB = safe_norm(A, axis=1), safe_norm(B, axis=2)
        eAn = safe_norm(eA, axis=1) * gain_err + _U * nA
        eBn = safe_norm(eB, axis=2) * gain_err + _U * nB
        if slope not in (0.0, 1.0):  # (slope * z may underflow: up to 2^-1075 per unit)
            eAn += (nA > 0) * (n * _ETA)
            eBn += (nB > 0) * (n * _ETA)
    step = max(1, ctx.budget // (8 * 6 * max(n, ctx.plan[li + 1][0].shape[0])))
    outs = []
    for i in range(0, cur, step):
        pa = parent[i : i + step]
        gain = np.where(bits[i : i + step], 1.0, slope)
        An = np.take(A, pa, axis=0, out=_buffer((len(pa), n)))
        An *= gain
        Bn = np.take(B, pa, axis=0, out=_buffer((len(pa), *B.shape[1:])))
        Bn *= gain[:, None, :]
        outs.append(
            slice_from(
                ctx,
                li + 1,
                rec[i : i + step],
                nv[i : i + step],
                An,
                Bn,
                eAn[pa],
                eBn[pa],
                pre[i : i + step],
            )
        )
    return _cat(outs)


def _lines(ctx: SliceCtx, block: int, A, B, eA, eB):
    """Every unit's line on every polygon, in the polygons' coordinates, unit-scaled: ``lrec (m, n, 5)``
    (line, error bound, id bits) and ``zero`` (the line and its error bound are exactly zero)."""
    m, n = A.shape
    L = np.empty((m, n, 3))
    L[..., 0], L[..., 1], L[..., 2] = A, B[:, 0], B[:, 1]
    dL = np.maximum(eA, np.maximum(eB[:, 0], eB[:, 1]))
    if ctx.quadrant is not None:
        su, sv = ctx.quadrant
        L[..., 1] = su * L[..., 1] - A
        L[..., 2] = sv * L[..., 2] - A
        dL = 2 * dL + _U * np.abs(L).max(axis=2)
    # Lines are scaled to unit size by a power of two (exact) so that products with unit-size points
    # cannot overflow and the error bound below needs no magnitudes.
    Lmag = np.maximum(np.abs(L[..., 0]), np.maximum(np.abs(L[..., 1]), np.abs(L[..., 2])))
    _, ex = np.frexp(Lmag)
    if np.any(ex):
        L = np.ldexp(L, -ex[..., None])
        dL = np.ldexp(dL, -ex)
    # A line with a zero error bound is exact: if it is zero, the unit is identically zero on the polygon
    # (a pruned unit): bit False, never a cut, no exact decision.
    zero = (dL == 0) & ~L.any(axis=2)
    dL = dL * (1 + 1e-9) + _TINY
    unit_ids = (np.int64(block) << _BLOCK_SHIFT) | (np.arange(m, dtype=np.int64)[:, None] << _ROW_SHIFT)
    unit_ids = unit_ids | np.arange(n, dtype=np.int64)[None, :]
    lrec = np.empty((m, n, 5))
    lrec[..., :3], lrec[..., 3], lrec[..., 4] = L, dL, _as_float(unit_ids)
    return lrec, zero


def _layer_numpy(ctx: SliceCtx, li: int, rec, nv, lrec, zero, base):
    """Cut the polygons ``rec`` by their units' lines ``lrec (m, n, 5)`` (line, error bound, id bits), one
    unit at a time over all pieces, deciding close calls exactly. Returns ``(rec, nv, parent, bits, count)``
    for the pieces (``bits``: this layer's pattern bits)."""
    m, n = lrec.shape[:2]
    L, dL, unit_ids = lrec[..., :3], lrec[..., 3], _ids(lrec[..., 4])
    # Signs of every unit at the vertices of the polygons at the start of the layer: a unit that does not
    # cut a polygon cuts none of its pieces, and its bit there is fixed.
    K1 = rec.shape[1]
    kk = np.arange(K1)
    cand = np.zeros((m, n), dtype=bool)
    bit0 = np.zeros((m, n), dtype=bool)
    step = max(1, 2_000_000 // max(1, K1 * n))
    for i in range(0, m, step):
        R = rec[i : i + step]
        Hh = R[..., _H]
        S = np.matmul(Hh, L[i : i + step].transpose(0, 2, 1))
        # One tolerance per (polygon, unit) from the polygon's largest vertex error bounds every vertex's.
        # Padding slots repeat vertex 0, so reductions over all slots are reductions over the vertices.
        tmax = _tol(R[..., _HD].max(axis=1)[:, None], dL[i : i + step])
        smax, smin = S.max(axis=1), S.min(axis=1)
        anyp, anyn = smax > tmax, smin < -tmax
        close = (np.abs(S).min(axis=1) <= tmax) & ~zero[i : i + step]
        if close.any():
            # Some vertex is within the coarse tolerance: decide those vertices one by one.
            rr, jj = np.nonzero(close)
            real = kk[None, :] < nv[i + rr, None]
            Sv = S[rr, :, jj]
            tol = _tol(R[rr, :, _HD], dL[i + rr, jj][:, None])
            sg = np.where(Sv > tol, 1, np.where(Sv < -tol, -1, 0)).astype(np.int8)
            q, k = np.nonzero(real & (sg == 0))
            if len(q):
                ids = _ids(R[..., _ID])
                r_ = rr[q]
                kprev = np.where(k > 0, k - 1, nv[i + r_] - 1)
                sg[q, k] = ctx.exact_signs(ids[r_, kprev], ids[r_, k], unit_ids[i + r_, jj[q]])
            sg = np.where(real, sg, 0)
            anyp[rr, jj] = (sg > 0).any(axis=1)
            anyn[rr, jj] = (sg < 0).any(axis=1)
        cand[i : i + step] = anyp & anyn
        bit0[i : i + step] = anyp
    cap = max(2 * m, 64)
    CR = np.empty((cap, K1, _REC))
    CR[:m] = rec
    CN = np.empty(cap, dtype=np.int64)
    CN[:m] = nv
    CP = np.empty(cap, dtype=np.int64)
    CP[:m] = np.arange(m)
    bits = np.empty((cap, n), dtype=bool)
    bits[:m] = bit0
    cur = m
    candT = np.ascontiguousarray(cand.T)
    for j in np.nonzero(cand.any(axis=0))[0]:
        rows = np.nonzero(candT[j][CP[:cur]])[0]
        par = CP[rows]
        R = CR[rows]
        lr = lrec[par, j]
        Hr = R[..., _H]
        s = Hr[..., 0] * lr[:, 0, None] + Hr[..., 1] * lr[:, 1, None] + Hr[..., 2] * lr[:, 2, None]
        tol = _tol(R[..., _HD], lr[:, 3, None])
        sig = (s > tol).astype(np.int8) - (s < -tol)
        nr = CN[rows]
        real = np.arange(R.shape[1])[None, :] < nr[:, None]
        unc = sig == 0
        if unc.any():
            r, k = np.nonzero(unc & real)
            if len(r):
                ids = _ids(R[r, :, _ID])
                kprev = np.where(k > 0, k - 1, nr[r] - 1)
                sig[r, k] = ctx.exact_signs(
                    ids[np.arange(len(r)), kprev], ids[np.arange(len(r)), k], _ids(lr[r, 4])
                )
            # padding slots repeat vertex 0
            sig = np.where(real, sig, sig[:, :1])
        hp, hn = (sig > 0).any(axis=1), (sig < 0).any(axis=1)
        cut = hp & hn
        bits[rows, j] = hp
        if not cut.any():
            continue
        rows, R, lr, sig, real = rows[cut], R[cut], lr[cut], sig[cut], real[cut]
        pieces, npieces = _split(ctx, R, real, sig, lr)
        k_new = len(rows)
        if base + cur + k_new > ctx.max_regions:
            raise _too_many(ctx, li, base + cur + k_new)
        K = pieces.shape[1]
        if K > CR.shape[1]:
            CR = _pad_to(CR, K)
        elif K < CR.shape[1]:
            pieces = _pad_to(pieces, CR.shape[1])
        if cur + k_new > len(CR):
            grow = max(len(CR), k_new)
            CR = np.concatenate([CR, np.empty((grow, *CR.shape[1:]))])
            CN = np.concatenate([CN, np.empty(grow, dtype=np.int64)])
            CP = np.concatenate([CP, np.empty(grow, dtype=np.int64)])
            bits = np.concatenate([bits, np.empty((grow, n), dtype=bool)])
        CR[rows], CN[rows] = pieces[:k_new], npieces[:k_new]
        CR[cur : cur + k_new], CN[cur : cur + k_new] = pieces[k_new:], npieces[k_new:]
        CP[cur : cur + k_new] = CP[rows]
        bits[cur : cur + k_new] = bits[rows]
        bits[rows, j] = True
        bits[cur : cur + k_new, j] = False
        cur += k_new
    return CR[:cur], CN[:cur], CP[:cur], bits[:cur], cur


def _layer_kernel(ctx: SliceCtx, li: int, rec, nv, maps, base):
    """:func:`_layer_numpy` by the compiled kernel (``maps``: the arguments of ``_slice_kernel.make_lines``,
    from which the kernel builds each polygon's lines); the polygons it gives back (a decision within its
    error bound) are cut by :func:`_layer_numpy`, which settles them exactly."""
    from . import _slice_kernel as kern

    nv = np.asarray(nv, dtype=np.int64)
    m, n = len(rec), maps[0].shape[1]
    # slots from the real vertex counts, so that padding does not grow by layer
    cap, Kc = max(6 * m, 64), max(int(nv.max(initial=0)) + 2, 8)
    status, count, out, onv, par, bits, fb = kern.split_layer(
        np.ascontiguousarray(rec), nv, *maps, base, ctx.max_regions, _buffer((cap, Kc, rec.shape[2])),
        _buffer(cap, np.int64), _buffer(cap, np.int64), _buffer((cap, n), np.bool_),
    )
    if status == kern.TOO_MANY:
        raise _too_many(ctx, li, base + count)
    if not fb.any():
        return out, onv, par, bits, len(out)
    idx = np.nonzero(fb)[0]
    lines, zero = kern.make_lines(*maps)  # the lines of every polygon (ids by row): rare, so not trimmed
    lrec = np.ascontiguousarray(lines[idx].transpose(0, 2, 1))
    R2, N2, P2, B2, c2 = _layer_numpy(ctx, li, rec[idx], nv[idx], lrec, zero[idx], base + len(out))
    K = max(out.shape[1], R2.shape[1])
    return (
        np.concatenate([_pad_to(out, K), _pad_to(R2, K)]),
        np.concatenate([onv, N2]),
        np.concatenate([par, idx[P2]]),
        np.concatenate([bits, B2]),
        len(out) + c2,
    )


def _split(ctx: ExactLines, R, real, sig, lr, both: bool = True):
    """Cut each polygon ``R (r, K1, rec)`` by its line ``lr (r, 5)`` whose signs at the vertices are ``sig``
    (both signs present). Returns ``(pieces, n)``: rows ``0..r-1`` the positive pieces and, with ``both``,
    rows ``r..2r-1`` the negative ones (the graph engine's max-pool cells keep one side only)."""
    r, K1, _ = R.shape
    sn = sig[:, np.r_[1:K1, 0]]
    xk = real & (sig.astype(np.int16) * sn < 0)
    # The crossing points on the cut edges: edge line x unit line.
    qr, qk = np.nonzero(xk)
    Ee = R[qr, qk]
    Ll = lr[qr]
    e0, e1, e2, l0, l1, l2 = Ee[:, 4], Ee[:, 5], Ee[:, 6], Ll[:, 0], Ll[:, 1], Ll[:, 2]
    X = np.stack([e1 * l2 - e2 * l1, e2 * l0 - e0 * l2, e0 * l1 - e1 * l0], axis=1)
    dX = 2 * (Ee[:, _ED] + Ll[:, 3] + Ee[:, _ED] * Ll[:, 3]) + 5 * _U + _TINY
    X, dX = _normalise(X, dX)
    dX = dX * (1 + 1e-9) + _TINY
    D = X[:, 0]
    unsure = ~(np.abs(D) > dX)  # a NaN bound (an overflowed norm) is unsure too: it goes exact
    sgnD = np.sign(D)
    if unsure.any():
        sgnD[unsure] = ctx.exact_d_signs(_ids(Ee[unsure, _ID]), _ids(Ll[unsure, 4]))
    X *= sgnD[:, None]
    xidx = np.zeros((r, K1), dtype=np.int64)
    xidx[qr, qk] = np.arange(len(qr))
    # Slots 2k = vertex k, 2k + 1 = the crossing point on edge k, for the positive pieces (rows 0..r-1) and
    # the negative ones (rows r..2r-1, the positive pieces of the flipped signs). Only kept slots are built.
    nout = 2 * r if both else r
    keep = np.empty((nout, 2 * K1), dtype=bool)
    keep[:r, 0::2] = real & (sig >= 0)
    keep[:r, 1::2] = xk
    if both:
        keep[r:, 0::2] = real & (sig <= 0)
        keep[r:, 1::2] = xk
    cnt = keep.sum(axis=1)
    Kn = int(cnt.max()) + 1
    dest = np.cumsum(keep, axis=1) - 1
    rr, cc = np.nonzero(keep)
    src = np.where(rr < r, rr, rr - r)
    k = cc >> 1
    odd = (cc & 1).astype(bool)
    vals = R[src, k]
    vals[odd, :4] = np.concatenate([X, dX[:, None]], axis=1)[xidx[src[odd], k[odd]]]
    # The edge that follows a slot is the unit's line where the next original vertex is on the far side
    # (leaving through a crossing point, or through a vertex with z = 0); otherwise the original edge.
    flip = np.where(rr < r, 1, -1).astype(np.int8)
    nxt = sn[src, k] * flip
    use_l = (nxt < 0) & (odd | (sig[src, k] == 0))
    vals[use_l, 4:] = lr[src[use_l]]
    out = np.empty((nout, Kn, _REC))
    out[rr, dest[rr, cc]] = vals
    pad = np.arange(Kn)[None, :] >= cnt[:, None]
    out = np.where(pad[..., None], out[:, :1], out)
    return out, cnt


def polygons_uv(rec: np.ndarray, nv: np.ndarray) -> tuple[list, np.ndarray]:
    """Final pieces as ``(n_k, 2)`` vertex arrays in ``(u, v)`` (finite box) and their areas."""
    H = rec[..., _H]
    V = H[..., 1:] / H[..., :1]
    Vn = np.roll(V, -1, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        areas = 0.5 * (V[..., 0] * Vn[..., 1] - Vn[..., 0] * V[..., 1]).sum(axis=1)
    real = np.arange(V.shape[1])[None, :] < nv[:, None]
    Vr = V[real]
    ends = np.cumsum(nv).tolist()
    # slices of one array (what np.split gives, without its per-piece overhead)
    return [Vr[a:b] for a, b in zip([0, *ends[:-1]], ends)], np.abs(areas)


def polygons_uv_fast(rec: np.ndarray, nv: np.ndarray) -> tuple[list, np.ndarray]:
    """:func:`polygons_uv` by the compiled kernel (areas summed vertex by vertex: they may differ from
    :func:`polygons_uv`'s in the last bits); the numpy function when the kernel is off."""
    if not _KERNEL:
        return polygons_uv(rec, nv)
    from . import _slice_kernel

    V, areas = _slice_kernel.uv_areas(np.ascontiguousarray(rec), np.asarray(nv, dtype=np.int64))
    return PolygonList(V, nv), areas


# ============================================================================ the box or the whole plane
def _reach(ctx, rec, nv) -> float:
    """Largest ``|u|``, ``|v|`` of a finite vertex of the pieces of one quadrant's triangle (whose edge ``-2``
    is the line at infinity); exact where the float position is unsure."""
    H = rec[..., _H]
    ids = _ids(rec[..., _ID])
    prev = np.concatenate([ids[:, -1:], ids[:, :-1]], axis=1)
    prev[np.arange(len(nv)), 0] = ids[np.arange(len(nv)), nv - 1]
    real = np.arange(H.shape[1])[None, :] < nv[:, None]
    fin = real & (ids != -2) & (prev != -2)
    w = H[..., 0] - H[..., 1] - H[..., 2]
    # w is off by a few times the vertex's error bound; where that is not small against w, the vertex is far
    # out and its position is computed exactly
    sure = np.abs(w) > 1e3 * (rec[..., _HD] + 4 * _U)
    reach = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.abs(H[..., 1:][fin & sure] / w[fin & sure][:, None])
    if uv.size:
        reach = float(uv.max())
    for r_, k_ in zip(*np.nonzero(fin & ~sure)):
        D, X, Y = _exact.cross(ctx.exact_line(int(prev[r_, k_])), ctx.exact_line(int(ids[r_, k_])))
        den = D - X - Y
        if den == 0:  # two parallel lines meet at infinity: not a vertex
            continue
        big = max(abs(X), abs(Y))
        # |coordinate| = big / |den|, compared in integers (it may exceed the float range)
        if big > (1 << 996) * abs(den):
            raise ValueError(
                "the arrangement of this plane has a vertex beyond 1e300 (nearly parallel boundaries), so no "
                "float64 box holds every region; pass a finite box"
            )
        reach = max(reach, big / abs(den))
        ctx.n_exact += 1
    return reach


def _exact_far_vertices(ctx, rec, nv) -> None:
    """Vertices whose float ``D`` underflowed (a box far beyond the arrangement's scale, e.g. 1e200 wide):
    their ``(u, v)`` from the exact crossing of their two edges, stored as ``(1, u, v)`` (output only)."""
    from . import _slice_kernel

    if not _slice_kernel.any_far_vertex(np.ascontiguousarray(rec), np.asarray(nv, dtype=np.int64)):
        return
    # padding slots repeat vertex 0 (first: the graph engine may hand its pieces over unpadded)
    pad = np.arange(rec.shape[1])[None, :] >= nv[:, None]
    rec[..., _H] = np.where(pad[..., None], rec[:, :1, _H], rec[..., _H])
    H = rec[..., _H]
    real = ~pad
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bad = real & ~np.all(np.isfinite(H[..., 1:] / H[..., :1]), axis=-1)
    from fractions import Fraction

    ids = _ids(rec[..., _ID])
    for r_, k_ in zip(*np.nonzero(bad)):
        kp = k_ - 1 if k_ > 0 else nv[r_] - 1
        D, X, Y = _exact.cross(ctx.exact_line(int(ids[r_, kp])), ctx.exact_line(int(ids[r_, k_])))
        rec[r_, k_, _H] = (1.0, float(Fraction(X, D)), float(Fraction(Y, D)))
    # padding slots repeat vertex 0 (vertex 0 may have been replaced)
    rec[..., _H] = np.where(pad[..., None], rec[:, :1, _H], rec[..., _H])


def slice_plane(run, box):
    """:func:`_slice_plane`, then this thread's buffer pool trimmed to what is kept between slices."""
    try:
        return _slice_plane(run, box)
    finally:
        pool_trim()


def _slice_plane(run, box):
    """The regions of a finite ``box = (u0, u1, v0, v1)`` or (``box=None``) of the whole plane, for either
    engine: ``run(frame_h, frame_l, quadrant)`` cuts one starting polygon and returns ``(rec, nv, patterns,
    ctx)``. Returns ``(box, rec, nv, patterns, n_exact)``.

    The whole plane is cut as four quadrants, each mapped onto a triangle by a projective map (lines stay
    lines), which finds every region's pattern; then a square box twice as wide as the farthest finite vertex
    is cut, and grown until it holds that many regions."""

    def run_box(u0, u1, v0, v1):
        corners = [[1.0, u0, v0], [1.0, u1, v0], [1.0, u1, v1], [1.0, u0, v1]]
        edges = [[-v0, 0.0, 1.0], [-u1, 1.0, 0.0], [-v1, 0.0, 1.0], [-u0, 1.0, 0.0]]
        return run(corners, edges, None)

    if box is not None:
        rec, nv, pats, ctx = run_box(*box)
        _exact_far_vertices(ctx, rec, nv)
        return tuple(box), rec, nv, pats, ctx.n_exact
    from .patterns import pack_patterns, unique_rows

    tri_h = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    tri_l = [[0.0, 0.0, 1.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    all_pats, reach, n_exact = [], 0.0, 0
    for quadrant in ((1, 1), (-1, 1), (-1, -1), (1, -1)):
        rec, nv, pats, ctx = run(tri_h, tri_l, quadrant)
        all_pats.append(pats)
        reach = max(reach, _reach(ctx, rec, nv))
        n_exact += ctx.n_exact
    total = len(unique_rows(pack_patterns(np.concatenate(all_pats)))[0])
    R = 2.0 * reach if reach > 0 else 1.0
    for _ in range(8):
        rec, nv, pats, ctx = run_box(-R, R, -R, R)
        n_exact += ctx.n_exact
        if len(pats) == total:
            _exact_far_vertices(ctx, rec, nv)
            return (-R, R, -R, R), rec, nv, pats, n_exact
        if len(pats) > total:  # both counts are exact
            raise RuntimeError(f"internal error: box count {len(pats)} > plane count {total}")
        R *= 16.0
        if not np.isfinite(R * 16):
            break
    raise RuntimeError("no finite box met every region of the plane; please report this network")


class PolygonList(Sequence):
    """The pieces' ``(n_k, 2)`` vertex arrays, kept as one stacked array and built on access: a read-only
    sequence (indexing, slicing, iteration, ``len``) of views into the stack. Building every array up front
    costs more than a small slice's whole cut."""

    __slots__ = ("_V", "_nv", "_ends_list")

    def __init__(self, V: np.ndarray, nv: np.ndarray):
        self._V = V
        self._nv = np.array(nv, dtype=np.int64)  # (own copy: the caller's may be pooled memory)
        self._ends_list = None

    @property
    def _ends(self) -> list[int]:
        # the offsets as a list, made on first access (a count alone never needs them)
        e = self._ends_list
        if e is None:
            e = self._ends_list = np.concatenate([[0], np.cumsum(self._nv)]).tolist()
        return e

    def __len__(self) -> int:
        return len(self._nv)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        k = operator.index(i)
        if k < 0:
            k += n
        if not 0 <= k < n:
            raise IndexError(f"polygon index {i} out of range for {n} polygons")
        return self._V[self._ends[k] : self._ends[k + 1]]

    def __iter__(self):
        V, e = self._V, self._ends
        return (V[a:b] for a, b in zip(e[:-1], e[1:]))

    def __eq__(self, other):
        if not isinstance(other, Sequence) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(np.array_equal(a, b) for a, b in zip(self, other))

    __hash__ = None

    def __repr__(self) -> str:
        return f"PolygonList({len(self)} polygons)"
