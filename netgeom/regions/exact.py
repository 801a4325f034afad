"""Exact activation regions on a segment, on a 2-D slice and in a low-dimensional box.

All three pass a set of inputs through the network layer by layer. Inside a piece (interval, polygon,
polyhedron) on which the earlier layers' pattern is fixed, the current layer's input is affine in the piece's
coordinates, so each pre-activation is affine there and the piece is split along the zero set of every unit
that changes sign inside it. The final pieces are exactly the activation regions met by the set (each region
is convex, so it meets a segment, plane or box in one connected piece: counting pieces counts patterns).

They count *activation* regions (distinct patterns), which can exceed the number of linear regions (maximal
sets where the network is affine) when e.g. a unit changes sign without changing the map.

Numerical conventions: the segment and the slice decide every sign with a certified float error bound
and, when a value is within its bound of zero, exactly (integer arithmetic on the float64 weights and the
given points; see :mod:`netgeom.regions._exact`), so their pieces are exactly those of the float64 network
at any scale. A unit's pattern bit is ``z > 0`` on the piece's interior, so a unit that is identically zero
there has bit False, as in :func:`netgeom.regions.count_patterns`. The box method decides by linear programs
(HiGHS) in units of the piece at hand, with certified float error bounds on every hyperplane (kept for
every later cut) and exact decisions of the bits; sides thinner than float64's precision are decided by an
exact rational LP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from .._validation import check_array, check_bool, check_fraction, check_int
from ..nets import AffineLayer, UnsupportedLayerError, affine_layers
from ..results import Result, new_axes
from . import _exact, _slice
from ._slice import TooManyRegionsError
from .bounds import int_log10, serra_bound
from .patterns import _last_pattern_layer, pattern_layers

__all__ = [
    "SegmentRegionsResult",
    "SliceRegionsResult",
    "BoxRegionsResult",
    "TooManyRegionsError",
    "regions_on_segment",
    "regions_on_slice",
    "regions_in_box",
    "plane_through",
    "demo_section",
]

_REL_TOL = 1e-10
_U = 2.0**-53
_TINY = 1e-300


def _hidden(
    model, masks, input_shape=None
) -> tuple[list[AffineLayer], list[tuple[np.ndarray, np.ndarray, bool, float]]]:
    """The layers and, for each layer up to the last one with pattern bits, ``(W, b, has_bits, slope)``."""
    return _plan(affine_layers(model, masks, input_shape=input_shape))


def _plan(layers) -> tuple[list[AffineLayer], list[tuple[np.ndarray, np.ndarray, bool, float]]]:
    """:func:`_hidden` on layers already read."""
    flags = pattern_layers(layers)
    plan = []
    for layer, flag in zip(layers[: _last_pattern_layer(flags) + 1], flags):
        slope = 1.0 if layer.activation == "identity" else float(layer.negative_slope)
        plan.append((layer.weight.numpy(), layer.bias.numpy(), flag, slope))
    return layers, plan


def _flat_point(x, name: str, n0: int) -> np.ndarray:
    if type(x) is np.ndarray and x.dtype == np.float64 and np.isfinite(x).all():
        arr = x  # what check_array gives back for it, without its other checks (a few us each, per slice)
    else:
        arr = check_array(x, name)
    if arr.size != n0:
        raise ValueError(
            f"{name} has {arr.size} entries (shape {arr.shape}), but the network takes {n0} inputs"
        )
    return arr.reshape(-1)


# ============================================================================================== segment
@dataclass
class SegmentRegionsResult(Result):
    """Activation regions along the line ``x(t) = a + t (b - a)`` for ``t`` in ``t_range``.

    ``breakpoints`` are the interior points where the pattern changes (sorted, ``count - 1`` of them,
    rounded to float64: two of them are equal when a piece is shorter than their spacing) and
    ``patterns[k]`` the pattern on the k-th piece. ``outputs`` holds the network output at ``edges``
    (``t_range[0]``, the breakpoints, ``t_range[1]``); the network is affine in between, so that is its
    whole graph along the segment. ``t_range`` is ``(0, 1)`` for the segment from ``a`` to ``b``; for the
    whole line (``t_range=None`` in :func:`regions_on_segment`) it is an interval found from the breakpoints
    that holds all of them, so the pieces are every region the line meets (the first and last unbounded).
    ``n_exact`` counts the sign decisions that needed exact arithmetic (on a traced graph with residual
    additions, concatenations or max-pooling: the pieces that a node split in exact arithmetic).
    """

    count: int
    n_bits: int
    breakpoints: np.ndarray
    patterns: np.ndarray = field(repr=False)
    outputs: np.ndarray = field(repr=False)
    length: float = 0.0
    t_range: tuple = (0.0, 1.0)
    n_exact: int = 0

    @property
    def edges(self) -> np.ndarray:
        return np.concatenate([[self.t_range[0]], self.breakpoints, [self.t_range[1]]])

    def plot(self, ax=None):
        """The output coordinates along the segment (exactly piecewise linear), breakpoints dashed."""
        fig, ax = new_axes(ax)
        ax.plot(self.edges, self.outputs, lw=1)
        for t in self.breakpoints:
            ax.axvline(t, color="0.6", lw=0.5, ls="--")
        ax.set_xlabel("t along the segment")
        ax.set_ylabel("network output")
        ax.set_title(f"{self.count} activation regions on the segment")
        return ax


class _SegCtx:
    """Exact fallback for the segment: lines ``(alpha, beta)`` (value ``alpha + beta s``), points as the
    roots of lines, ids as in the slice (negative ids: the frame's end points)."""

    def __init__(self, plan, base, frame_lines, sigma):
        self.plan, self.base, self.frame_lines, self.sigma = plan, base, frame_lines, sigma
        self.blocks: list = []
        self.n_exact = 0
        self._net = None
        self._cache: dict = {}

    def line(self, lid: int) -> list[int]:
        if lid < 0:
            return self.frame_lines[-lid - 1]
        if lid not in self._cache:
            if self._net is None:
                self._net = _exact.ExactNet(self.plan, self.base)
            block, row, unit = lid >> 44, (lid >> 20) & ((1 << 24) - 1), lid & ((1 << 20) - 1)
            li, prefix = self.blocks[block]
            al, be = self._net.line(li, prefix[row], unit)
            if self.sigma is not None:
                be = self.sigma * be - al
            self._cache[lid] = [al, be]
        return self._cache[lid]

    def sign_at_root(self, point_ids, line_ids) -> np.ndarray:
        out = np.empty(len(point_ids), dtype=np.int8)
        for i, (p, q) in enumerate(zip(point_ids.tolist(), line_ids.tolist())):
            a1, b1 = self.line(p)
            a3, b3 = self.line(q)
            out[i] = _exact.sign(a3 * b1 - b3 * a1) * _exact.sign(b1)
        self.n_exact += len(out)
        return out

    def compare(self, p: int, q: int) -> int:
        """Sign of (root of line q) - (root of line p)."""
        a1, b1 = self.line(p)
        a2, b2 = self.line(q)
        self.n_exact += 1
        return _exact.sign(a1 * b2 - a2 * b1) * _exact.sign(b1) * _exact.sign(b2)


def _segment_pass(plan, last, P, Q, eQ, t0, t1, ctx: _SegCtx):
    """Cut ``[t0, t1]`` (in the pass's coordinate ``s``; the line's input is ``P + s Q`` before the
    half-line transform of ``ctx.sigma``) by every layer. Returns ``(roots (W, T), patterns)``."""
    # Points: homogeneous (W, T), W > 0, the root of the line with id pid; errors dpt.
    pts = np.array([[1.0, t0], [1.0, t1]])
    _, ex = np.frexp(np.abs(pts).max(axis=1))
    pts = np.ldexp(pts, -ex[:, None])
    dpt = np.zeros(2)
    pid = np.array([-1, -2], dtype=np.int64)
    P, Q = P[None, :], Q[None, :]
    eP, eQv = np.zeros(1), np.array([eQ])
    prefix = np.zeros((1, 0), dtype=bool)
    for li, (W, bias, has_bits, slope) in enumerate(plan[: last + 1]):
        m, n_in = P.shape
        A = P @ W.T + bias
        B = Q @ W.T
        gamma = 1.01 * (n_in + 2) * _U
        nW = _slice.safe_norm(W, axis=1)
        nP, nQ = _slice.safe_norm(P, axis=1), _slice.safe_norm(Q, axis=1)
        with np.errstate(under="ignore"):  # (bounds of 1e-300-sized maps are subnormal)
            eA = (gamma * nP + eP)[:, None] * nW + gamma * np.abs(bias)
            eB = (gamma * nQ + eQv)[:, None] * nW
            eA += _slice.underflow_slack(n_in, (nP > 0) | (eP > 0), nW > 0)
            eB += _slice.underflow_slack(n_in, (nQ > 0) | (eQv > 0), nW > 0)
        _slice.check_finite(f"layer {li}", A, B, eA, eB)
        if not has_bits:
            P, Q, eP, eQv = A, B, _slice.safe_norm(eA, axis=1), _slice.safe_norm(eB, axis=1)
            continue
        n = A.shape[1]
        block = len(ctx.blocks)
        ctx.blocks.append((li, prefix))
        al, be = A, B
        dl = np.maximum(eA, eB)
        if ctx.sigma is not None:
            be = ctx.sigma * B - A
            dl = 2 * dl + _U * np.abs(be)
        mag = np.maximum(np.abs(al), np.abs(be))
        _, ex = np.frexp(mag)
        al, be, dl = np.ldexp(al, -ex), np.ldexp(be, -ex), np.ldexp(dl, -ex) * (1 + 1e-9) + _TINY
        ids = (np.int64(block) << 44) | (np.arange(m, dtype=np.int64)[:, None] << 20) | np.arange(n)[None, :]
        sides = []
        for side in (0, 1):
            pt = pts[np.arange(m) + side]
            s = al * pt[:, :1] + be * pt[:, 1:]
            tol = 2 * (dl + dpt[np.arange(m) + side, None]) * (1 + 1e-6) + 6 * _U + _TINY
            sg = (s > tol).astype(np.int8) - (s < -tol)
            unc = ~(np.abs(s) > tol)  # NaN tolerances (overflowed norms) go to exact arithmetic too
            if unc.any():
                r, j = np.nonzero(unc)
                sg[r, j] = ctx.sign_at_root(pid[r + side], ids[r, j])
            sides.append(sg)
        sL, sR = sides
        cut = sL.astype(np.int16) * sR < 0
        base_bits = (sL > 0) | (sR > 0)
        r, j = np.nonzero(cut)
        # Roots (W, T) = (beta, -alpha) made W > 0, sorted within each piece.
        sgn = np.sign(be[r, j])
        RW, RT = be[r, j] * sgn, -al[r, j] * sgn
        Rn = np.maximum(np.abs(RW), np.abs(RT))
        _, ex = np.frexp(Rn)
        RW, RT, Rd = np.ldexp(RW, -ex), np.ldexp(RT, -ex), np.ldexp(dl[r, j], -ex)
        key = np.empty(len(r))
        ok = RW > 2 * Rd
        key[ok] = RT[ok] / RW[ok]
        if not ok.all():
            # The float root is too uncertain to place: put it where its exact value is.
            from fractions import Fraction

            for i in np.nonzero(~ok)[0].tolist():
                al_i, be_i = ctx.line(int(ids[r[i], j[i]]))
                key[i] = float(Fraction(-al_i, be_i))
                RW[i], RT[i] = np.ldexp(np.array([1.0, key[i]]), -int(np.frexp(max(1.0, abs(key[i])))[1]))
                Rd[i] = 4 * _U
            ctx.n_exact += int((~ok).sum())
        order = np.lexsort((key, r))
        r, j, RW, RT, Rd = r[order], j[order], RW[order], RT[order], Rd[order]
        rid = ids[r, j]
        group = np.zeros(len(r), dtype=np.int64)  # distinct-root index within the piece
        if len(r) > 1:
            same_piece = r[1:] == r[:-1]
            diff = RT[1:] * RW[:-1] - RT[:-1] * RW[1:]
            tol = 2 * (Rd[1:] + Rd[:-1] + Rd[1:] * Rd[:-1]) * (1 + 1e-6) + 6 * _U + _TINY
            sure = diff > tol
            unsure = same_piece & ~sure
            if unsure.any():
                # Runs of roots too close to order in floats: order them (and merge equal ones) exactly.
                import functools

                idx = np.nonzero(unsure)[0]
                runs = []
                for i in idx.tolist():
                    if runs and runs[-1][1] == i:
                        runs[-1][1] = i + 1
                    else:
                        runs.append([i, i + 1])
                def cmp(x, y, rid=rid):
                    return ctx.compare(int(rid[y]), int(rid[x]))

                for lo, hi in runs:
                    seg = list(range(lo, hi + 1))
                    seg.sort(key=functools.cmp_to_key(cmp))
                    perm = np.array(seg)
                    r[lo : hi + 1], j[lo : hi + 1] = r[perm], j[perm]
                    RW[lo : hi + 1], RT[lo : hi + 1], Rd[lo : hi + 1] = RW[perm], RT[perm], Rd[perm]
                    rid[lo : hi + 1] = rid[perm]
                    for k in range(lo, hi):
                        sure[k] = ctx.compare(int(rid[k]), int(rid[k + 1])) > 0
            new_group = ~same_piece | sure
            group[1:] = np.cumsum(new_group)
            # restart numbering in each piece
            first = np.concatenate([[True], ~same_piece])
            group = group - np.maximum.accumulate(np.where(first, group, 0))
        G = np.zeros(m, dtype=np.int64)  # distinct roots per piece
        if len(r):
            np.maximum.at(G, r, group + 1)
        # New pieces: piece p becomes G[p] + 1 sub-pieces.
        n_sub = G + 1
        parent = np.repeat(np.arange(m), n_sub)
        q = np.arange(len(parent)) - np.repeat(np.cumsum(n_sub) - n_sub, n_sub)
        Gfull = np.full((m, n), -1, dtype=np.int64)
        Gfull[r, j] = group
        Gp = Gfull[parent]
        bits = np.where(Gp < 0, base_bits[parent], np.where(q[:, None] <= Gp, sL[parent] > 0, sR[parent] > 0))
        # New points: per piece its left point, then one per distinct root; then the final right point.
        firsts = np.ones(len(r), dtype=bool)
        if len(r) > 1:
            firsts[1:] = (r[1:] != r[:-1]) | (group[1:] != group[:-1])
        rr = r[firsts]
        new_pts = np.concatenate([pts[:-1], np.stack([RW[firsts], RT[firsts]], 1)])
        new_d = np.concatenate([dpt[:-1], Rd[firsts] * (1 + 1e-9) + _TINY])
        new_id = np.concatenate([pid[:-1], rid[firsts]])
        key = np.concatenate([np.arange(m) * 2.0, rr * 2.0 + 1])
        sub = np.concatenate([np.zeros(m), group[firsts] + 1.0])
        o = np.lexsort((sub, key))
        pts = np.concatenate([new_pts[o], pts[-1:]])
        dpt = np.concatenate([new_d[o], dpt[-1:]])
        pid = np.concatenate([new_id[o], pid[-1:]])
        prefix = np.concatenate([prefix[parent], bits], axis=1)
        gain = np.where(bits, 1.0, slope)
        P, Q = A[parent] * gain, B[parent] * gain
        g = max(1.0, abs(slope))
        with np.errstate(under="ignore"):  # (norms of 1e-300-sized maps: u times them is subnormal)
            nA, nB = _slice.safe_norm(A, axis=1), _slice.safe_norm(B, axis=1)
            eP = _slice.safe_norm(eA, axis=1) * g + _U * nA
            eQv = _slice.safe_norm(eB, axis=1) * g + _U * nB
            if slope not in (0.0, 1.0):  # (slope * z may underflow: up to 2^-1075 per unit)
                eP += (nA > 0) * (n * _slice._ETA)
                eQv += (nB > 0) * (n * _slice._ETA)
            eP, eQv = eP[parent], eQv[parent]
    return pts, prefix


def _length(d: np.ndarray, t0: float, t1: float) -> float:
    with np.errstate(under="ignore"):  # (a 1e-300 direction over a short range: a subnormal length)
        return float(_slice.safe_norm(d, axis=0) * (t1 - t0))


def regions_on_segment(
    model: torch.nn.Module, a, b, masks=None, *, t_range=(0.0, 1.0), input_shape=None
) -> SegmentRegionsResult:
    """Exact activation regions met by the segment from ``a`` to ``b`` (``x(t) = a + t (b - a)``, ``t`` in
    ``t_range``, default ``(0, 1)``), or by the whole line through them with ``t_range=None``.

    Breakpoints are roots of the pre-activations, affine in ``t`` on each piece; every sign decision is
    certified by a float error bound or, when too close to call, made in exact arithmetic on the float64
    weights and end points, so the pieces are exactly those of the float64 network at any scale (a
    longer segment never has fewer pieces). ``input_shape`` (one sample's shape, for conv nets) is passed
    to :func:`netgeom.nets.affine_layers`. A network that is not a chain (residual additions,
    concatenations, max-pooling) is read through its traced graph (:func:`netgeom.nets.trace`) with the
    same guarantee: a piece with a decision within its float error bound is split in exact rational
    arithmetic (:mod:`netgeom.regions._graph_segment`); there ``t_range`` must be finite.

    Example
    -------
    >>> from netgeom import mlp
    >>> res = regions_on_segment(mlp(1, [5], 1, seed=0), [-3.0], [3.0])
    >>> res.count == len(res.breakpoints) + 1 <= 6
    True
    >>> regions_on_segment(mlp(1, [5], 1, seed=0), [-3.0], [3.0], t_range=None).count >= res.count
    True
    """
    try:
        layers, plan = _hidden(model, masks, input_shape)
    except UnsupportedLayerError as err:
        from ..nets import trace

        g = trace(model, masks, input_shape=input_shape)  # raises again for a truly unsupported op
        if g.is_chain:
            raise err
        return _segment_on_graph(g, a, b, t_range)
    n0 = layers[0].n_in
    a = _flat_point(a, "a", n0)
    b = _flat_point(b, "b", n0)
    if np.array_equal(a, b):
        raise ValueError("a and b coincide: the segment is a single point")
    d = b - a
    if not np.all(np.isfinite(d)):
        raise ValueError("b - a overflows float64; choose end points closer together")
    # The exact direction b - a (its float64 rounding d carries an error bound instead).
    ai, ae = _exact.to_exact(a)
    bi, be = _exact.to_exact(b)
    d_exact = _exact.exact_add((bi, be), (-ai, ae))
    with np.errstate(under="ignore"):  # (a direction of size 1e-300: u times it is subnormal)
        eQ = _U * float(_slice.safe_norm(d, axis=0))
    last = max((i for i, step in enumerate(plan) if step[2]), default=-1)
    whole = t_range is None
    if not whole:
        t_range = check_array(t_range, "t_range", ndim=1)
        if t_range.size != 2 or not t_range[0] < t_range[1]:
            raise ValueError(f"t_range must be (t0, t1) with t0 < t1, got {t_range.tolist()}")
        t0, t1 = float(t_range[0]), float(t_range[1])
    n_exact = 0
    if last < 0:
        roots = np.zeros(0)
        patterns = np.zeros((1, 0), dtype=bool)
        if whole:
            t0, t1 = -1.0, 1.0  # no breakpoints: any interval holds them all
    elif not whole:
        ctx = _SegCtx(
            plan, [(ai, ae), d_exact], [_exact.float_line([-t0, 1.0]), _exact.float_line([-t1, 1.0])], None
        )
        pts, patterns = _segment_pass(plan, last, a, d, eQ, t0, t1, ctx)
        roots = pts[1:-1, 1] / pts[1:-1, 0]
        n_exact = ctx.n_exact
    else:
        # Two half-lines t >= 0 and t <= 0, each mapped onto s in [0, 1] by t = ±s / (1 - s), which keeps
        # lines straight and signs unchanged; s = 1 is the point at infinity.
        halves = []
        for sigma in (1, -1):
            ctx = _SegCtx(plan, [(ai, ae), d_exact], [[0, 1], [-1, 1]], sigma)
            pts, pats = _segment_pass(plan, last, a, d, eQ, 0.0, 1.0, ctx)
            s = pts[1:-1, 1] / pts[1:-1, 0]
            halves.append((sigma * s / (1 - s), pats))
            n_exact += ctx.n_exact
        (tp, pp), (tn, pn) = halves
        # t <= 0 pieces run from 0 outwards: reverse them; the two pieces at t = 0 are one when their
        # patterns agree (t = 0 is then no breakpoint).
        tn, pn = tn[::-1], pn[::-1]
        if np.array_equal(pn[-1], pp[0]):
            roots = np.concatenate([tn, tp])
            patterns = np.concatenate([pn[:-1], pp])
        else:
            roots = np.concatenate([tn, [0.0], tp])
            patterns = np.concatenate([pn, pp])
        lo, hi = (roots.min(), roots.max()) if len(roots) else (0.0, 0.0)
        pad = max(1.0, 0.25 * (hi - lo))
        t0, t1 = float(lo - pad), float(hi + pad)
    ts = np.concatenate([[t0], roots, [t1]])
    with torch.no_grad():
        pts_x = torch.as_tensor(a[None, :] + ts[:, None] * d[None, :])
        out = pts_x
        for layer in layers:
            out = layer(out)
    return SegmentRegionsResult(
        count=len(patterns),
        n_bits=patterns.shape[1],
        breakpoints=roots,
        patterns=patterns,
        outputs=out.numpy(),
        length=_length(d, t0, t1),
        t_range=(t0, t1),
        n_exact=n_exact,
    )


def _segment_on_graph(g, a, b, t_range) -> SegmentRegionsResult:
    """:func:`regions_on_segment` on a traced graph (residual add, cat, max-pool): see
    :mod:`netgeom.regions._graph_segment`."""
    from ._graph_segment import segment_graph

    n0 = g.n_in
    a = _flat_point(a, "a", n0)
    b = _flat_point(b, "b", n0)
    if np.array_equal(a, b):
        raise ValueError("a and b coincide: the segment is a single point")
    if t_range is None:
        raise ValueError("t_range=None (the whole line) needs a chain network; give a finite t_range")
    t_range = check_array(t_range, "t_range", ndim=1)
    if t_range.size != 2 or not t_range[0] < t_range[1]:
        raise ValueError(f"t_range must be (t0, t1) with t0 < t1, got {t_range.tolist()}")
    t0, t1 = float(t_range[0]), float(t_range[1])
    d = b - a
    if not np.all(np.isfinite(d)):
        raise ValueError("b - a overflows float64; choose end points closer together")
    # the exact direction b - a, for the pieces the float error bounds cannot settle
    d_exact = _exact.exact_add(_exact.to_exact(b), _exact.to_exact(-a))
    info: dict = {}
    edges, patterns = segment_graph(g, a, d, t0, t1, d_exact=d_exact, info=info)
    with torch.no_grad():
        out = g.forward(torch.as_tensor(a[None, :] + edges[:, None] * d[None, :]))
    return SegmentRegionsResult(
        count=len(patterns),
        n_bits=patterns.shape[1],
        breakpoints=edges[1:-1],
        patterns=patterns,
        outputs=out.numpy(),
        length=_length(d, t0, t1),
        t_range=(t0, t1),
        n_exact=info["n_exact"],
    )


# ================================================================================================ slice
@dataclass
class SliceRegionsResult(Result):
    """Activation regions met by the 2-D slice ``x(u, v) = x0 + u d1 + v d2`` over ``box``.

    ``polygons[k]`` is a convex ``(n_k, 2)`` array of ``(u, v)`` vertices (counter-clockwise) of the k-th
    region's piece (a read-only sequence of views into one stacked vertex array; a list on the chain
    engine's numpy path), ``patterns[k]`` its activation pattern and ``areas[k]`` its area. With
    ``box=None`` in :func:`regions_on_slice` the regions are all those the whole plane meets and ``box`` is
    a square found from the arrangement that meets every one of them. ``n_exact`` counts the sign decisions
    that needed exact arithmetic (float error bounds settle all others).
    """

    count: int
    n_bits: int
    box: tuple[float, float, float, float]
    polygons: list = field(repr=False)
    patterns: np.ndarray = field(repr=False)
    areas: np.ndarray = field(repr=False)
    marks: dict = field(default_factory=dict, repr=False)
    n_exact: int = 0
    whole_plane: bool = False

    def plot(self, ax=None, *, seed: int = 0, edgecolor: str = "k", linewidth: float = 0.1):
        """The regions as polygons in random colours (seeded), like Hanin & Rolnick (2019, Fig. 1).

        ``marks`` (name -> (u, v)) are drawn as points, e.g. the three inputs a plane was put through.
        """
        from matplotlib.collections import PolyCollection

        fig, ax = new_axes(ax)
        rng = np.random.default_rng(seed)
        colours = rng.uniform(0.15, 1.0, size=(self.count, 3))
        coll = PolyCollection(
            list(self.polygons), facecolors=colours, edgecolors=edgecolor, linewidths=linewidth
        )
        ax.add_collection(coll)
        for name, (u, v) in self.marks.items():
            ax.plot(u, v, "k*", ms=8)
            ax.annotate(str(name), (u, v), textcoords="offset points", xytext=(4, 4), fontsize=8)
        u0, u1, v0, v1 = self.box
        ax.set_xlim(u0, u1)
        ax.set_ylim(v0, v1)
        ax.set_aspect("equal")
        ax.set_title(f"{self.count} activation regions")
        return ax


def plane_through(x1, x2, x3, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """The plane through three inputs as Cai et al. (2023) draw it: ``x0 = x1``, ``d1 = x2 - x1``,
    ``d2 = x3 - x1``, so that the inputs sit at ``(u, v) = (0, 0), (1, 0), (0, 1)``; the box is their bounding
    box widened by ``margin`` on every side.

    >>> x0, d1, d2, box = plane_through([0, 0], [1, 0], [0, 2], margin=0.5)
    >>> d2.tolist(), box
    ([0.0, 2.0], (-0.5, 1.5, -0.5, 1.5))
    """
    margin = check_fraction(margin, "margin", high=np.inf)
    x1 = check_array(x1, "x1").reshape(-1)
    x2 = check_array(x2, "x2").reshape(-1)
    x3 = check_array(x3, "x3").reshape(-1)
    if not (x1.size == x2.size == x3.size):
        raise ValueError(f"x1, x2, x3 must have the same size, got {x1.size}, {x2.size}, {x3.size}")
    d1, d2 = x2 - x1, x3 - x1
    _check_plane(d1, d2)
    return x1, d1, d2, (-margin, 1.0 + margin, -margin, 1.0 + margin)


def _check_plane(d1: np.ndarray, d2: np.ndarray) -> None:
    """Refuse degenerate planes: a zero direction, or d1, d2 parallel (decided exactly)."""
    if d1.size <= 16:
        # a few finite entries: the float test below in Python floats (numpy's calls cost more than these
        # few products); a certainly nonzero minor also proves both directions nonzero
        v1, v2 = d1.tolist(), d2.tolist()
        if all(map(math.isfinite, v1 + v2)):
            a1 = [abs(v) for v in v1]
            k = a1.index(max(a1))  # (the first largest, as argmax)
            pq = ((v1[k] * w, v2[k] * v) for v, w in zip(v1, v2))
            if any(abs(p - q) > (abs(p) + abs(q)) * (4 * _U) + 1e-320 for p, q in pq):
                return
    if not d1.any() or not d2.any():
        raise ValueError("a direction of the plane is zero (d1 or d2), so the plane is degenerate")
    # Parallel iff every 2x2 minor d1[k] d2[i] - d2[k] d1[i] vanishes. A float minor above its rounding
    # bound (products and difference, plus underflow) certifies a nonzero one; otherwise decide exactly.
    # (Array methods and operations in place: the check runs once per slice, where numpy's call overheads,
    # not the few entries, are its cost.)
    k = int(np.abs(d1).argmax())
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        a, b = float(d1[k]) * d2, float(d2[k]) * d1
        bound = np.abs(a)
        bound += np.abs(b)
        bound *= 4 * _U
        bound += 1e-320
        a -= b
        certain = (np.abs(a, out=a) > bound).any()
    if not certain:
        i1, _ = _exact.to_exact(d1)
        i2, _ = _exact.to_exact(d2)
        # d1[k] d2[i] == d2[k] d1[i] for every i (the common scales of i1 and i2 cancel)
        if all(int(i1[k]) * int(w) == int(i2[k]) * int(v) for v, w in zip(i1, i2)):
            raise ValueError(
                "d1 and d2 are parallel, so they do not span a plane; choose independent directions"
            )
    if not (np.isfinite(d1).all() and np.isfinite(d2).all()):
        raise ValueError("d1 and d2 must be finite")


def _check_box(box, names=("u", "v")) -> tuple[float, ...]:
    if (
        type(box) is tuple
        and len(box) == 2 * len(names)
        and all(type(v) is float and math.isfinite(v) for v in box)
        and all(box[2 * i] < box[2 * i + 1] for i in range(len(names)))
    ):
        return box  # (finite, ordered floats: what the checks below pass unchanged)
    vals = check_array(box, "box", ndim=1)
    if vals.size != 2 * len(names):
        raise ValueError(f"box must be ({', '.join(f'{n}0, {n}1' for n in names)}), got {vals.tolist()}")
    for i, n in enumerate(names):
        if not vals[2 * i] < vals[2 * i + 1]:
            raise ValueError(f"box is empty: {n}0 = {vals[2 * i]} must be < {n}1 = {vals[2 * i + 1]}")
    return tuple(float(v) for v in vals)


def regions_on_slice(
    model: torch.nn.Module,
    x0,
    d1,
    d2,
    box=(-1.0, 1.0, -1.0, 1.0),
    masks=None,
    *,
    input_shape=None,
    max_regions: int = 1_000_000,
    memory_budget: int = 2**28,
) -> SliceRegionsResult:
    """Exact activation regions met by the plane ``x0 + u d1 + v d2`` with ``(u, v)`` in
    ``box = (u0, u1, v0, v1)``, or in the whole plane with ``box=None``; points may come in the input's own
    shape (e.g. ``(C, L)``): flattened.

    Layer by layer, every current convex polygon is split along the zero line of every unit of the layer
    that changes sign inside it. Decisions (the sign of a unit at a polygon's vertex) are made in
    projective coordinates with certified float error bounds, and exactly (integer arithmetic on the
    float64 weights, ``x0``, ``d1``, ``d2``) when too close to call, so the count is exact for the float64
    network at any scale: a larger box never has fewer regions, and scaling ``d1, d2`` by ``c`` and the box
    by ``1 / c`` changes nothing. With ``box=None`` the plane is cut as four quadrants, each mapped onto a
    triangle by a projective map (lines stay lines; the side opposite the origin is the line at infinity),
    so every region of the whole plane is found; a square box that meets all of them is then found from
    the arrangement's vertices and the polygons are given in it.

    Polygons are independent of one another, so when a layer's per-polygon maps would exceed
    ``memory_budget`` bytes, the polygons are processed in chunks, each carried through the remaining
    layers before the next (depth first). Raises :class:`TooManyRegionsError` as soon as a layer has cut
    the slice into more than ``max_regions`` pieces (a lower bound on the final count). ``input_shape``
    (one sample's shape) is passed to :func:`netgeom.nets.affine_layers`, for conv nets.

    Any traced network (:func:`netgeom.nets.trace`: residual additions, concatenations, max-pooling,
    LeakyReLU) is answered exactly too, by :mod:`netgeom.regions._graph_slice`: on every polygon each node's
    value is affine in ``(u, v)``; ReLU nodes cut as above, and each max-pool window cuts a polygon into the
    cells where its argmax is constant (ties to the first position, as torch). The pattern is then the ReLU
    bits and one-hot argmaxes in node order, with the same certified-then-exact decisions.

    Example
    -------
    >>> from netgeom import mlp
    >>> res = regions_on_slice(mlp(2, [3], 1, seed=0), [0, 0], [1, 0], [0, 1], box=(-5, 5, -5, 5))
    >>> res.count <= 7  # at most 1 + 3 + 3 regions for 3 lines
    True
    >>> regions_on_slice(mlp(2, [3], 1, seed=0), [0, 0], [1, 0], [0, 1], box=None).count >= res.count
    True

    A residual block (a graph, not a chain):

    >>> import torch
    >>> class Res(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         torch.manual_seed(0)
    ...         self.a, self.b = torch.nn.Linear(2, 4), torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return torch.relu(x + self.b(torch.relu(self.a(x))))
    >>> res = regions_on_slice(Res(), [0, 0], [1, 0], [0, 1], box=(-3, 3, -3, 3))
    >>> res.n_bits, res.count == len(res.polygons) == len(res.patterns)  # 4 + 2 ReLU bits
    (6, True)
    """
    max_regions = check_int(max_regions, "max_regions", minimum=1)
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    from ..nets import trace

    # One trace: its chain view (what affine_layers reads) when it is a chain, else the graph engine.
    g = trace(model, masks, input_shape=input_shape)
    if not g.is_chain:
        return _slice_on_graph(g, x0, d1, d2, box, max_regions, memory_budget)
    layers, plan = _plan(g.layers())
    return _slice_layers(layers, plan, x0, d1, d2, box, max_regions, memory_budget)


def _slice_layers(layers, plan, x0, d1, d2, box, max_regions: int, memory_budget: int) -> SliceRegionsResult:
    """:func:`regions_on_slice` on the layers and plan of :func:`_hidden` (the model already traced; the
    benchmark times this part apart from the trace)."""
    n0 = layers[0].n_in
    x0 = _flat_point(x0, "x0", n0)
    d1 = _flat_point(d1, "d1", n0)
    d2 = _flat_point(d2, "d2", n0)
    _check_plane(d1, d2)
    last = max((i for i, step in enumerate(plan) if step[2]), default=-1)
    plan = plan[: last + 1]
    names = [layer.name for layer in layers]

    def run(frame_h, frame_l, quadrant):
        ctx = _slice.SliceCtx(
            plan=plan,
            names=names,
            last=last,
            max_regions=max_regions,
            budget=memory_budget,
            reached=[0] * max(last + 1, 0),
            base=[x0, d1, d2],
            frame_lines=list(np.asarray(frame_l, dtype=float)),  # made exact when a decision needs them
            quadrant=quadrant,
        )
        rec = _slice.initial_polygon(np.array(frame_h, float), np.array(frame_l, float))
        nv = np.array([len(frame_h)])
        if last < 0:
            return rec, nv, np.zeros((1, 0), dtype=bool), ctx
        P, Q = x0[None, :], np.stack([d1, d2])[None]
        rec, nv, pats = _slice.slice_from(
            ctx, 0, rec, nv, P, Q, np.zeros(1), np.zeros((1, 2)), np.zeros((1, 0), bool)
        )
        return rec, nv, pats, ctx

    if box is not None:
        box = _check_box(box)
    (u0, u1, v0, v1), rec, nv, pats, n_exact = _slice.slice_plane(run, box)
    polygons, areas = _slice.polygons_uv_fast(rec, nv)
    return SliceRegionsResult(
        count=len(pats),
        n_bits=pats.shape[1],
        box=(u0, u1, v0, v1),
        polygons=polygons,
        patterns=pats,
        areas=areas,
        n_exact=n_exact,
        whole_plane=box is None,
    )


def _slice_on_graph(g, x0, d1, d2, box, max_regions: int, memory_budget: int) -> SliceRegionsResult:
    """:func:`regions_on_slice` on a traced graph (residual add, cat, max-pool): see
    :mod:`netgeom.regions._graph_slice`."""
    from ._graph_slice import polygons_uv_fast, slice_graph_regions

    n0 = g.n_in
    x0 = _flat_point(x0, "x0", n0)
    d1 = _flat_point(d1, "d1", n0)
    d2 = _flat_point(d2, "d2", n0)
    _check_plane(d1, d2)
    whole = box is None
    if not whole:
        box = _check_box(box)
    # (unpadded: polygons_uv_fast and the far-vertex check read each piece's nv vertices only)
    box, rec, nv, pats, n_exact = slice_graph_regions(
        g, x0, d1, d2, box, max_regions, memory_budget, padded=False
    )
    polygons, areas = polygons_uv_fast(rec, nv)
    return SliceRegionsResult(
        count=len(pats),
        n_bits=pats.shape[1],
        box=tuple(float(v) for v in box),
        polygons=polygons,
        patterns=pats,
        areas=areas,
        n_exact=n_exact,
        whole_plane=whole,
    )


# ================================================================================================== box
@dataclass
class BoxRegionsResult(Result):
    """Activation regions of positive volume in a box ``lo ≤ y ≤ hi`` of the input (or of a subspace
    ``x = origin + y @ basis``).

    ``points[k]`` is an interior input of region k (``coords[k]`` its subspace coordinates), the centre of a
    ball of radius ``radii[k]`` inside the region; ``patterns[k]`` its pattern. ``halfspaces[k] = (G, h)``
    describes the region's piece as ``G y ≤ h`` (rows normalised, the computed float64 walls: each exact
    wall lies within its certified error bound of its row). ``n_lp`` counts linear programs solved by
    HiGHS; ``n_exact`` the sides of cuts that floats could not decide (thinner than float64 can place
    their walls, e.g. at a vertex where hyperplanes meet exactly, as all of a bias-free net's do at 0),
    decided in rational arithmetic instead. The count and the patterns are exact either way.
    """

    count: int
    n_bits: int
    dim: int
    n_lp: int
    lo: np.ndarray
    hi: np.ndarray
    patterns: np.ndarray = field(repr=False)
    points: np.ndarray = field(repr=False)
    coords: np.ndarray = field(repr=False)
    radii: np.ndarray = field(repr=False)
    halfspaces: list = field(repr=False)
    n_exact: int = 0

    def polygons(self) -> list[np.ndarray]:
        """For a 2-D box, the regions as convex polygons ``(n_k, 2)`` in subspace coordinates."""
        if self.dim != 2:
            raise ValueError(f"polygons need a 2-D box, this one is {self.dim}-D")
        from scipy.spatial import HalfspaceIntersection

        # qhull's tolerances are absolute: it works in the box scaled to unit size by a power of two
        k = _frame_exp(self.lo, self.hi)
        out = []
        for (G, h), c in zip(self.halfspaces, self.coords):
            keep = np.linalg.norm(G, axis=1) > 0
            c_s = np.ldexp(c, -k)
            hs = HalfspaceIntersection(np.hstack([G[keep], -np.ldexp(h[keep, None], -k)]), c_s)
            pts = hs.intersections
            ang = np.arctan2(pts[:, 1] - c_s[1], pts[:, 0] - c_s[0])
            out.append(np.ldexp(pts[np.argsort(ang)], k))
        return out

    def plot(self, ax=None, *, seed: int = 0):
        """1-D: the intervals; 2-D: the polygons in random colours; otherwise a histogram of the inradii."""
        fig, ax = new_axes(ax)
        rng = np.random.default_rng(seed)
        if self.dim == 2:
            from matplotlib.collections import PolyCollection

            ax.add_collection(
                PolyCollection(
                    self.polygons(),
                    facecolors=rng.uniform(0.15, 1, (self.count, 3)),
                    edgecolors="k",
                    linewidths=0.2,
                )
            )
            ax.set_xlim(self.lo[0], self.hi[0])
            ax.set_ylim(self.lo[1], self.hi[1])
        elif self.dim == 1:
            for (G, h), col in zip(self.halfspaces, rng.uniform(0.15, 1, (self.count, 3))):
                g = G[:, 0]
                lo_k = np.max(h[g < 0] / g[g < 0])
                hi_k = np.min(h[g > 0] / g[g > 0])
                ax.axvspan(lo_k, hi_k, color=col)
            ax.set_xlim(self.lo[0], self.hi[0])
        else:
            ax.hist(np.log10(self.radii), bins=30)
            ax.set_xlabel("log10 inradius")
        ax.set_title(f"{self.count} activation regions in the box")
        return ax


_ETA = 2.0**-1074  # >= the absolute error of a float64 product or ldexp that underflows (2^-1075)


def _frame_exp(lo: np.ndarray, hi: np.ndarray) -> int:
    """``k`` with the box's largest side in ``[2^k, 2^(k+1))``: the box engines work in ``y' = y / 2^k``
    (exact), so that their decisions never depend on the box's scale."""
    side = float(np.max(hi * 0.5 - lo * 0.5))  # (halves: hi - lo may overflow)
    return math.frexp(side)[1] if side > 0 else -1074


def _scaled_box(lo: np.ndarray, hi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    lo_s, hi_s = np.ldexp(lo, -k), np.ldexp(hi, -k)
    for name, v, v_s in (("lo", lo, lo_s), ("hi", hi, hi_s)):
        bad = np.nonzero(np.ldexp(v_s, k) != v)[0]
        if len(bad):
            raise ValueError(
                f"regions_in_box: {name}[{bad[0]}] = {v[bad[0]]!r} is below float64's normal range relative "
                f"to the box's size 2^{k}, so the box cannot be scaled to unit size exactly; shift or shrink "
                "the box"
            )
    return lo_s, hi_s


def _may_underflow(wmin: float, *xs) -> bool:
    """Whether the product of a nonzero weight (smallest magnitude ``wmin``) and a nonzero entry of ``xs``
    can fall below float64's normal range (its rounding error is then absolute, up to 2^-1075)."""
    if wmin == 0.0:
        return False
    for x in xs:
        ax = np.abs(x)
        nz = ax[ax > 0]
        if nz.size and float(nz.min()) * wmin < 2.0**-1020:
            return True
    return False


def _push_bounds(P, Q, eP, eQ, W, b, wmin, live_w):
    """``A = P W^T + b``, ``B = Q W^T`` with elementwise absolute error bounds: for each dot product of
    length n, ``|fl(sum) - sum| <= gamma_{n+1} (sum |p_i w_i| + |b|)`` plus ``(n + 2) 2^-1074`` when a product
    may underflow, plus the propagated input errors ``sum e_i |w_i|`` (the bounds' own rounding is covered by
    the factor ``1 + gamma``). ``P (..., n_in)``, ``Q (..., d, n_in)``; ``wmin`` the smallest nonzero
    ``|W|``, ``live_w`` the rows of ``W`` with a nonzero entry."""
    n_in = W.shape[1]
    WT = W.T
    aWT = np.abs(WT)
    gam = 1.01 * (n_in + 2) * _U
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        A = P @ WT + b
        B = Q @ WT
        eA = (gam * (np.abs(P) @ aWT + np.abs(b)) + eP @ aWT) * (1 + gam)
        eB = (gam * (np.abs(Q) @ aWT) + eQ @ aWT) * (1 + gam)
    if _may_underflow(wmin, P, Q, eP, eQ):
        extra = (n_in + 2) * 2 * _ETA * live_w
        eA = eA + extra
        eB = eB + extra
    _slice.check_finite("regions_in_box (affine maps of a piece)", A, B, eA, eB)
    return A, B, eA, eB


@dataclass
class _Units:
    """Units ``An + y' @ Bn`` in the box's scaled frame, each scaled by its own power of two, with bounds
    ``eA (n,)``, ``eB (d, n)`` on the errors of the computed coefficients: at a point ``y'`` the computed
    value is within ``eA + |y'| @ eB`` (plus the evaluation's rounding) of the exact one, so error bounds are
    local (a unit through the origin is exact there however large the box)."""

    An: np.ndarray
    Bn: np.ndarray
    eA: np.ndarray
    eB: np.ndarray
    live: np.ndarray  # False: identically zero (exactly zero map and bounds)

    def __post_init__(self):
        with np.errstate(under="ignore"):
            self.gn = np.sqrt((self.Bn * self.Bn).sum(0))
            # the slope's direction is known to 1/8 or better; else the unit's hyperplane is unknown
            self.sure = self.gn > 8 * self.eB.sum(0)

    def sub(self, idx) -> _Units:
        return _Units(self.An[idx], self.Bn[:, idx], self.eA[idx], self.eB[:, idx], self.live[idx])

    def z_at(self, Y: np.ndarray):
        """Computed values at the points ``Y (m, d)`` and bounds on their errors."""
        d = self.Bn.shape[0]
        with np.errstate(under="ignore"):
            aY = np.abs(Y)
            z = self.An + Y @ self.Bn
            err = (self.eA + aY @ self.eB) + 1.01 * (d + 2) * _U * (np.abs(self.An) + aY @ np.abs(self.Bn))
        return z, err * (1 + 1e-9) + (d + 2) * _ETA * self.live

    def box_range(self, lo: np.ndarray, hi: np.ndarray):
        """Computed minimum and maximum over the box and a bound on their errors."""
        d = self.Bn.shape[0]
        ym = np.maximum(np.abs(lo), np.abs(hi))
        with np.errstate(under="ignore"):
            zmin = self.An + np.minimum(self.Bn * lo[:, None], self.Bn * hi[:, None]).sum(0)
            zmax = self.An + np.maximum(self.Bn * lo[:, None], self.Bn * hi[:, None]).sum(0)
            err = (self.eA + ym @ self.eB) + 1.01 * (d + 2) * _U * (np.abs(self.An) + ym @ np.abs(self.Bn))
        return zmin, zmax, err * (1 + 1e-9) + (d + 2) * _ETA * self.live

    def delta(self, j: int, c: np.ndarray, rad: float) -> float:
        """Distance within which unit ``j``'s exact zero set lies from its computed hyperplane in the ball
        ``(c, rad)`` (inf when the slope is not certain): the value's error there over the slope's norm, plus
        the rounding of the normalised hyperplane and of a signed distance."""
        if not self.sure[j]:
            return math.inf
        d = self.Bn.shape[0]
        a = np.abs(c) + rad
        g = float(self.gn[j])
        with np.errstate(under="ignore"):
            e = float(self.eA[j] + a @ self.eB[:, j]) / g * (1 + 1e-9)
            return e + 4 * (d + 2) * _U * (abs(float(self.An[j])) / g + float(a.sum())) + _ETA


    def wall_bounds(self, ym: np.ndarray) -> np.ndarray:
        """:meth:`delta` of every unit over the whole box (``|y'| ≤ ym``): a wall's bound that holds
        wherever a later cut's LP may place a ball (inf where the slope is not certain)."""
        d = self.Bn.shape[0]
        with np.errstate(under="ignore", divide="ignore", invalid="ignore"):
            e = (self.eA + ym @ self.eB) / self.gn * (1 + 1e-9)
            e = e + 4 * (d + 2) * _U * (np.abs(self.An) / self.gn + float(ym.sum())) + _ETA
        return np.where(self.sure, e, math.inf)


def _unit_frame(A, B, eA, eB, k: int) -> _Units:
    """Units ``z = A + y @ B`` (``y`` the box's coordinates; errors ``eA (n,)``, ``eB (d, n)``) in the frame
    ``y' = y / 2^k``, each divided by a power of two so that its slope's largest entry (or error) is in
    ``[0.5, 1)``. Scaling by powers of two never changes a sign, and no product of tiny numbers is formed,
    so nothing underflows. Units with a huge constant next to their slope get ``An = ±2^900`` (their sign
    on the box is certain) instead of overflowing."""
    d = B.shape[0]
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        m = np.maximum(np.abs(B).max(0), eB.max(0)) if d else np.zeros(len(A))
        mc = np.maximum(np.abs(A), eA)
        e = np.where(m > 0, np.frexp(m)[1], np.frexp(mc)[1] - k).astype(np.int64)
        live = (m > 0) | (mc > 0)
        An = np.ldexp(A, -(e + k))
        Bn = np.ldexp(B, -e)
        # (+ 2^-1074 per entry: ldexp rounds where it lands among the subnormals)
        eAn = np.ldexp(eA, -(e + k)) * (1 + 2 * _U) + _ETA * live
        eBn = np.ldexp(eB, -e) * (1 + 2 * _U) + _ETA * live
    huge = ~np.isfinite(An) | (np.abs(An) > 2.0**900) | ~np.isfinite(eAn)
    if huge.any():
        sign_sure = huge & (np.abs(A) > 2 * eA)
        An[sign_sure] = np.sign(A[sign_sure]) * 2.0**900  # |y' @ Bn| <= d 2^54 here: the sign is certain
        eAn[sign_sure] = 0.0
        eBn[:, sign_sure] = 0.0
        # The others' error bounds dwarf their variation over the box (e.g. an underflow allowance of
        # 2^-1074 next to slopes of 2^-1040 in a box 2^-1040 wide): not certain, so the callers recompute
        # them exactly (a max-pool difference then raises an error naming the cause).
        unsure = huge & ~sign_sure
        An[unsure] = 0.0
        eAn[unsure] = 0.0
        eBn[:, unsure] = 2.0**900  # (not inf: 0 * inf would be nan in the bounds at a point)
    return _Units(An, Bn, eAn, eBn, live)


def _int_rows(M: list, rhs: list) -> list:
    """The augmented rows ``[M | rhs]`` (Fractions) times their denominators' lcm: integers, same
    solutions."""
    out = []
    for row, v in zip(M, rhs):
        vals = list(row) + [v]
        L = math.lcm(*(x.denominator for x in vals))
        out.append([x.numerator * (L // x.denominator) for x in vals])
    return out


def _solve_exact(M: list, rhs: list):
    """``x`` with ``M x = rhs`` (``M`` square, Fractions), or None when ``M`` is singular: Bareiss's
    fraction-free elimination on integers (exact divisions, no gcds), then one division per entry."""
    n = len(M)
    A = _int_rows(M, rhs)
    prev = 1
    for k in range(n):
        piv = next((i for i in range(k, n) if A[i][k] != 0), None)
        if piv is None:
            return None
        A[k], A[piv] = A[piv], A[k]
        pk = A[k]
        akk = pk[k]
        for i in range(k + 1, n):
            ai = A[i]
            aik = ai[k]
            ai[k] = 0
            for j in range(k + 1, n + 1):
                ai[j] = (ai[j] * akk - aik * pk[j]) // prev
        prev = akk
    x = [Fraction(0)] * n
    for i in range(n - 1, -1, -1):
        s = Fraction(A[i][n]) - sum((A[i][j] * x[j] for j in range(i + 1, n)), Fraction(0))
        x[i] = s / A[i][i]
    return x


def _solve_overdetermined(M: list, rhs: list):
    """The unique ``x`` with ``M x = rhs`` (``M`` of shape ``(m, n)``, ``m ≥ n``, Fractions), or None when
    there is none or more than one."""
    m, n = len(M), len(M[0]) if M else 0
    A = [list(row) + [v] for row, v in zip(M, rhs)]
    r = 0
    for col in range(n):
        piv = next((i for i in range(r, m) if A[i][col] != 0), None)
        if piv is None:
            return None  # rank < n: not unique
        A[r], A[piv] = A[piv], A[r]
        p = A[r]
        for i in range(m):
            if i != r and A[i][col]:
                f = A[i][col] / p[col]
                A[i] = [a - f * b for a, b in zip(A[i], p)]
        r += 1
    if any(A[i][n] != 0 for i in range(r, m)):
        return None  # inconsistent
    return [A[i][n] / A[i][i] for i in range(n)]


def _exact_depth_lp(rows: list, ncol: list, start: list, warm=None):
    """``max t : a_i·y + n_i t ≤ b_i`` in rationals (``rows`` of ``(a, b)``, ``n_i > 0``; bounded: the box's
    rows are among them), as ``(t, y)``. The simplex runs on the dual ``min b·λ : Σ λ_i (a_i, n_i) =
    (0, 1), λ ≥ 0`` with Bland's rule (no cycling), from HiGHS's optimal basis ``warm`` when it is a
    feasible one here (usually optimal at once), else from ``start`` (box rows, feasible). At the end
    every reduced cost ``b_j - a_j·y - n_j t`` is ≥ 0, i.e. ``(y, t)`` satisfies every row exactly."""
    d = len(rows[0][0])
    cols = [list(a) + [n] for (a, _), n in zip(rows, ncol)]
    bs = [b for _, b in rows]
    e_last = [Fraction(0)] * d + [Fraction(1)]

    def lam_of(B):
        MB = [[cols[i][q] for i in B] for q in range(d + 1)]
        lam = _solve_exact(MB, e_last)
        return (lam, MB) if lam is not None and all(v >= 0 for v in lam) else (None, MB)

    B, lam = None, None
    if warm is not None and len(set(warm)) == d + 1:
        B = list(warm)
        lam, MB = lam_of(B)
    if lam is None:
        B = list(start)
        lam, MB = lam_of(B)
        if lam is None:
            raise AssertionError("internal error: the box rows are not a feasible basis of the exact LP")
    for _ in range(100_000):
        pi = _solve_exact([cols[i] for i in B], [bs[i] for i in B])
        inB = set(B)
        enter = None
        for j in range(len(rows)):
            if j not in inB and bs[j] - sum((c * p for c, p in zip(cols[j], pi)), Fraction(0)) < 0:
                enter = j  # Bland: the first improving column
                break
        if enter is None:
            return pi[d], pi[:d]
        w = _solve_exact(MB, cols[enter])
        best = None
        for q in range(d + 1):
            if w[q] > 0:
                ratio = lam[q] / w[q]
                if best is None or ratio < best[0] or (ratio == best[0] and B[q] < B[best[1]]):
                    best = (ratio, q)
        if best is None:
            raise AssertionError("internal error: the exact depth LP is unbounded (the box bounds it)")
        theta, q = best
        lam = [v - theta * wv for v, wv in zip(lam, w)]
        lam[q] = theta
        B[q] = enter
        MB = [[cols[i][r] for i in B] for r in range(d + 1)]
    raise RuntimeError("regions_in_box: the exact simplex did not finish in 100 000 pivots")


def _sqrt_bounds(s: Fraction, bits: int = 64) -> tuple[Fraction, Fraction]:
    """Rationals ``lo ≤ sqrt(s) ≤ hi`` within ``2^-bits`` relative (``s > 0``)."""
    p, q = s.numerator, s.denominator
    sh = 2 * bits + max(0, q.bit_length() - p.bit_length())
    sh += sh % 2
    r = math.isqrt((p * q) << sh)
    den = q << (sh // 2)
    return Fraction(r, den), Fraction(r + 1, den)


def _pow2_normalised(a: list, b: Fraction):
    """The row ``a·y ≤ b`` times a power of two making its largest ``|a_i|`` about 1 (same halfspace,
    smaller integers), or None when ``a`` is zero."""
    big = max((abs(v) for v in a), default=Fraction(0))
    if big == 0:
        return None
    e = big.numerator.bit_length() - big.denominator.bit_length()
    s = Fraction(1, 1 << e) if e >= 0 else Fraction(1 << -e)
    return [v * s for v in a], b * s


def _exact_side(rows: list, d: int, r_min: float, support=None, points=()):
    """Decide in rationals whether the polytope ``{a_i·y' < b_i}`` (exact rows, box rows first: ``+e_i`` for
    ``i < d`` then ``-e_i``) holds a ball of radius ``> r_min``. Returns a ball ``(centre, radius)`` (floats)
    certified inside it, or None. With ``n_i ≥ |a_i|``, a point ``y`` whose exact slacks are all ``≥ n_i t``
    is the centre of a ball of radius ``t`` inside; the exact LP ``max t : a_i·y + n_i t ≤ b_i`` has a
    nonpositive optimum exactly when the polytope has no interior (with ``min_radius > 0``, ``n_i ≤ |a_i|``
    gives an upper bound on the inradius too). Cheap certificates first: the float ``points`` (HiGHS's
    answer, the parent's centre) checked exactly, and for "empty" a Farkas certificate on the rows of
    HiGHS's nonzero duals (``support``): ``λ ≥ 0``, ``Σ λ_i (a_i, n_i) = (0, 1)`` exactly and
    ``Σ λ_i b_i ≤ 0``. Only when both fail does the exact simplex run (warm-started from that basis)."""
    norm_rows, keep_idx = [], []
    for i, (a, b) in enumerate(rows):
        nr = _pow2_normalised(a, b)
        if nr is None:
            if b <= 0:
                return None  # 0 ≤ b ≤ 0 has no interior
            continue
        norm_rows.append(nr)
        keep_idx.append(i)
    pos = {i: q for q, i in enumerate(keep_idx)}
    start = [pos[0], pos[d]] + [pos[i] for i in range(1, d)]
    sup = [pos[i] for i in support if i in pos] if support is not None else []
    bounds = [_sqrt_bounds(sum((v * v for v in a), Fraction(0))) for a, _ in norm_rows]
    n_up = [hi for _, hi in bounds]
    rq = Fraction(r_min)
    for p in points:
        yq = [Fraction(float(v)) for v in p]
        t = min((b - sum((av * yv for av, yv in zip(a, yq) if av), Fraction(0))) / n
                for (a, b), n in zip(norm_rows, n_up))
        if t > rq:
            r = float(t)
            if Fraction(r) > t:
                r = math.nextafter(r, -math.inf)
            if r > 0:
                return np.array([float(v) for v in p]), r
    if rq == 0 and 0 < len(sup) <= d + 1:
        lam = _solve_overdetermined(
            [[(norm_rows[i][0][q] if q < d else n_up[i]) for i in sup] for q in range(d + 1)],
            [Fraction(0)] * d + [Fraction(1)],
        )
        if lam is not None and all(v >= 0 for v in lam):
            if sum((v * norm_rows[i][1] for v, i in zip(lam, sup)), Fraction(0)) <= 0:
                return None
    warm_n = sup if len(sup) == d + 1 else None
    t, y = _exact_depth_lp(norm_rows, n_up, start, warm_n)
    if t <= rq:
        if rq == 0:
            return None
        t_hi, _ = _exact_depth_lp(norm_rows, [lo for lo, _ in bounds], start, warm_n)
        if t_hi <= rq:
            return None
        raise RuntimeError(
            "regions_in_box: a side's largest inscribed ball is within 2^-64 (relative) of min_radius, so "
            "whether it counts is undecided; use another min_radius (0 is exact)"
        )
    centre = np.array([float(v) for v in y])
    rad = t - sum((abs(Fraction(float(c)) - v) for c, v in zip(centre, y)), Fraction(0))
    r = float(rad)
    if rad > 0 and Fraction(r) > rad:
        r = math.nextafter(r, -math.inf)
    if not r > 0:
        raise RuntimeError(
            "regions_in_box: a region exists (decided exactly) whose inscribed ball is below float64's "
            "resolution at its position, so its interior point cannot be given in float64; use a smaller box "
            "around it or regions_on_slice (exact) on a 2-D slice"
        )
    return centre, r


_LP_REL = 1e-6  # HiGHS's feasibility and optimality tolerances (~1e-7) in the LP's own units, ten times over
_ZOOM = 2.0**-16  # the unit shrinks at least this much when a side's depth is within the LP's band


def _pow2_floor(x: float) -> float:
    return math.ldexp(1.0, math.frexp(x)[1] - 1)


def _depth_lp(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float, list | None]:
    """Point ``t`` and signed depth ``rho`` of ``max rho : G t + rho |g_i| ≤ b`` (rows of G unit or zero):
    the radius of the largest ball in ``{G t ≤ b}`` when it is nonempty, else minus how far the least
    violated point is from satisfying every row. Always feasible, so HiGHS never reports infeasibility
    with its absolute tolerances; any other failure raises. Also the rows of HiGHS's optimal basis (those
    with a nonzero dual): a Farkas certificate's support or a warm start for the exact LP."""
    from scipy.optimize import linprog

    d = G.shape[1]
    norms = np.linalg.norm(G, axis=1)
    cost = np.zeros(d + 1)
    cost[-1] = -1.0
    res = linprog(
        cost,
        A_ub=np.hstack([G, norms[:, None]]),
        b_ub=np.minimum(b, 1e15),  # (walls farther than 1e15 units never bound a ball near the centre)
        bounds=[(None, None)] * (d + 1),
        method="highs",
    )
    if res.status != 0:
        # Any other outcome (iteration limit, numerical trouble) would silently drop or keep a region.
        raise RuntimeError(f"HiGHS failed on a region's Chebyshev LP (status {res.status}: {res.message})")
    marg = getattr(getattr(res, "ineqlin", None), "marginals", None)
    warm = None
    if marg is not None:
        warm = np.nonzero(np.abs(marg) > 1e-12 * max(float(np.abs(marg).max()), 1e-300))[0].tolist()
    return res.x[:d], float(res.x[d]), warm


def _slack_err(G, h, c, u) -> float:
    """Bound on the rounding of ``h - G c`` over the rows that can bound a ball of size ~``u`` near ``c``
    (rows far away cannot, however their slack rounds): ``(d + 2) u (|h| + |G| |c|)`` per row."""
    d = G.shape[1]
    with np.errstate(under="ignore"):
        err = 1.01 * (d + 2) * _U * (np.abs(h) + np.abs(G) @ np.abs(c))
        near = (h - G @ c) - err <= 64 * u
    return float(err[near].max()) if near.any() else 0.0


def _shifted(h: np.ndarray, e: np.ndarray, sign: float) -> np.ndarray:
    """``h + sign e`` rounded away from ``h`` (outward for +1, inward for -1): the walls moved by their
    error bounds, so that the inner polytope lies inside the exact one and the outer one contains it."""
    with np.errstate(under="ignore"):
        return (h + sign * e) + sign * (2 * _U * (np.abs(h) + e) + _ETA * (e > 0))


def _ball_in(G, h, e, tags, c, r, r_min: float, exact_rows):
    """Decide whether the exact polytope whose walls are ``{G y' ≤ h}`` (frame ``y'``), each within ``e`` of
    its exact position, holds a ball of radius ``> r_min``: ``((centre, radius), n_lp, n_exact)`` with a ball
    inside the exact polytope, or ``(None, ...)``.

    The Chebyshev LP is solved on the inner polytope ``{G y' ≤ h - e}`` (inside the exact one, so its ball
    is certified) in local units: centred at ``c`` (a ball ``(c, r)`` of the exact parent piece, whose
    radius sets the unit, a power of two), so HiGHS's absolute tolerances are relative to the piece, never
    to the box. The outer polytope ``{G y' ≤ h + e}`` contains the exact one and is at most ``2 max e``
    deeper than the inner one: a depth below ``-2 max e`` proves the side empty. When the depth lies within
    the LP's tolerance band of a decision, the LP is solved again centred at its own point in a unit 2^16
    times smaller, down to the precision of the walls (their rounding and bounds). A side still undecided
    there is decided in rational arithmetic on the exact walls (``exact_rows(tags, c, r)``,
    :func:`_exact_side`: HiGHS's point or dual checked exactly, else an exact LP), never dropped."""
    emax = float(e.max()) if len(e) else 0.0
    hin = _shifted(h, e, -1.0)
    c0, r0 = c, r
    u = _pow2_floor(r) if r > 0 else 1.0
    n = 0
    warm, point = None, c
    for _ in range(80):
        with np.errstate(under="ignore", over="ignore"):
            b = (hin - G @ c) / u
        if not b.min() >= -1e15:
            # The walls' bounds over the box dwarf this piece (a tiny region far inside a huge box): the
            # inner polytope cannot hold its ball; only the outer one may still prove the side empty.
            with np.errstate(under="ignore", over="ignore"):
                hout = _shifted(h, e, 1.0)
                b = (hout - G @ c) / u
            if b.min() >= -1e15:
                t, rho, warm = _depth_lp(G, b)
                n += 1
                depth = rho * u
                point = c + u * t
                if depth + _LP_REL * u + _slack_err(G, hout, point, max(abs(depth), u)) < r_min:
                    return None, n, 0
            break
        t, rho, warm = _depth_lp(G, b)
        n += 1
        depth = rho * u
        point = c + u * t
        base = _slack_err(G, hin, point, max(abs(depth), u))
        band = _LP_REL * u + base
        if depth > r_min + band:
            return (point, depth - band), n, 0
        if depth + 2 * emax + band < r_min:
            return None, n, 0
        u_new = _pow2_floor(max(4 * abs(depth - r_min), _ZOOM * u))
        # The walls' precision (their positions' rounding and bounds) bounds the zoom
        if u_new * _LP_REL <= 4 * (base + emax) or u_new <= 2.0**-1000:
            break
        tight = (hin - G @ point) <= 2 * band
        if tight.any() and not h[tight].any() and float(np.abs(point).max()) <= 2 * u:
            # a cone at 0 (all of a bias-free net's hyperplanes meet there, exactly) looks the same at
            # every scale: zooms cannot help
            break
        c, u = point, u_new
    ball = _exact_side(exact_rows(tags, c0, r0), G.shape[1], r_min, warm, (point, c0))
    return ball, n, 1


def _vertices(G, h, c):
    """The vertices of the piece ``{G y ≤ h}`` (``c`` interior) by qhull, or None when qhull fails. The frame
    is the box's scaled one (coordinates of order 1 or less), where qhull's absolute tolerances hold."""
    from scipy.spatial import HalfspaceIntersection, QhullError

    keep = np.linalg.norm(G, axis=1) > 0
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            verts = HalfspaceIntersection(np.hstack([G[keep], -h[keep, None]]), c).intersections
    except (QhullError, ValueError):
        return None
    # (a centre on a wall makes qhull divide by zero: inf vertices would screen units out)
    return verts if np.isfinite(verts).all() else None


def _crossing_units(G, h, c, U: _Units) -> np.ndarray:
    """Which of the units ``U`` (frame ``y'``) may cross the polytope ``{G y' ≤ h}`` (callers pass the
    outer polytope, which contains the exact piece; ``c`` interior): a unit is dropped only when its
    values at every vertex share one sign by more than their error bound and a margin for the vertices'
    own rounding; when qhull cannot list the vertices, every unit is kept."""
    verts = _vertices(G, h, c)
    if verts is None:
        return np.ones(len(U.An), dtype=bool)
    z, err = U.z_at(verts)
    # qhull's vertices are exact up to ~1e-12 of their size here; the margin covers that many times over.
    scale = 1.0 + float(np.abs(verts).max())
    with np.errstate(under="ignore"):
        margin = err.max(axis=0) + 1e-8 * scale * U.gn
    return (z.max(axis=0) > -margin) & (z.min(axis=0) < margin)


def _active_units(G, h, e, c, U: _Units, lo, hi) -> np.ndarray:
    """The units ``U`` that may change sign inside the exact piece whose walls are ``{G y' ≤ h}`` within
    ``e`` (box ``[lo, hi]``, frame ``y'``): units of certain constant sign on the whole box never do, and in
    up to 6 dimensions the vertices of the outer polytope ``{G y' ≤ h + e}`` rule out more."""
    zmin, zmax, err = U.box_range(lo, hi)
    active = np.nonzero(U.live & (zmin < err) & (zmax > -err))[0]
    if len(active) and len(lo) <= 6:
        active = active[_crossing_units(G, _shifted(h, e, 1.0), c, U.sub(active))]
    return active


def _too_many(max_regions: int) -> TooManyRegionsError:
    return TooManyRegionsError(
        f"more than max_regions={max_regions} regions met in the box; shrink the box, use a "
        "lower-dimensional subspace, or raise max_regions"
    )


def _box_tags(d: int) -> list:
    """Tags of the box's rows ``+e_i ≤ hi_i`` then ``-e_i ≤ -lo_i`` (see :func:`_exact_rows`)."""
    return [("b", i, 1) for i in range(d)] + [("b", i, -1) for i in range(d)]


def _exact_rows(tags, k: int, lo_s, hi_s, unit) -> list:
    """The exact rows ``(a, b)`` (``a·y' ≤ b``, Fractions, frame ``y' = y / 2^k``) of a piece's walls from
    their tags: ``("b", i, ±1)`` a box row; ``("u", key, j, s)`` the side ``s z_j ≥ 0`` of unit ``j`` of the
    map ``key``; ``("p", key, q, p)`` the side ``z_q ≤ z_p`` (a max-pool wall). ``unit(key, j)`` gives unit
    ``j``'s exact map ``(A_j, [B_1j, ..., B_dj])`` on the piece in the box's coordinates ``y``."""
    d = len(lo_s)
    two_k = Fraction(2) ** k
    rows = []
    for t in tags:
        if t[0] == "b":
            _, i, s = t
            a = [Fraction(0)] * d
            a[i] = Fraction(s)
            rows.append((a, Fraction(float(hi_s[i])) if s > 0 else -Fraction(float(lo_s[i]))))
        elif t[0] == "u":
            _, key, j, s = t
            A, B = unit(key, j)
            rows.append(([-s * two_k * v for v in B], s * A))
        else:
            _, key, q, p = t
            (Aq, Bq), (Ap, Bp) = unit(key, q), unit(key, p)
            rows.append(([two_k * (vq - vp) for vq, vp in zip(Bq, Bp)], Ap - Aq))
    return rows


def _cut_by_units(
    piece, U: _Units, active, r_min, room, max_regions, bar, ym, key, exact_rows
) -> tuple[list, int, int]:
    """Split the piece ``(G, h, e, tags, c, r)`` (walls ``{G y' ≤ h}`` in frame ``y'``, each within ``e`` of
    its exact position and named by its tag for :func:`_exact_rows`; a ball ``(c, r)`` inside the exact
    piece) by the zero sets of the units ``U`` listed in ``active`` (their exact maps are ``key``'s), keeping
    a cut only when both exact sides hold a ball of radius ``> r_min``: near a ball the computed hyperplane
    is within ``U.delta`` of the exact zero set, so balls are shrunk by it, and LPs respect every wall's
    bound (:func:`_ball_in`, exact where floats cannot decide). Every piece's ball lies inside its exact
    piece. Returns the pieces ``(G, h, e, tags, centre, radius)``, the number of LPs solved and of sides
    decided in rationals; raises :class:`TooManyRegionsError` when more than ``room`` pieces are in
    progress (``room``: what ``max_regions`` leaves after the caller's other regions)."""
    G, h, e, tags, c, r = piece
    d = G.shape[1]
    n_lp = n_ex = 0
    if not U.sure[active].all():  # the callers settle these first (exactly, or with an error)
        raise _UncertainSlope(int(active[~U.sure[active]][0]))
    An, Bn, gn = U.An, U.Bn, U.gn
    ew = U.wall_bounds(ym)
    # Depth first: a unit that leaves no ball of radius > r_min on one side of a piece leaves none
    # in any sub-piece either, so each piece tests only the units that cut its parent, and the
    # candidates shrink as the pieces do (one LP per unit the inscribed ball cannot decide).
    pieces = []
    # A piece: (G, h, e, tags, ball centre, radius, candidate units, witnesses). witnesses[j] = two balls of
    # radius > r_min inside the exact piece, one on each exact side of unit j: proof that j cuts it, no LP.
    stack = [(G, h, e, tags, c, r, active, {})]
    while stack:
        G_, h_, e_, t_, c_, r_, cu, wit = stack.pop()
        cuts = []  # (|sigma|, j, sigma)
        new_wit = {}
        outer = None
        for j in cu:
            gj, hj, dj = Bn[:, j] / gn[j], -An[j] / gn[j], U.delta(j, c_, r_)
            sigma = float(c_ @ gj - hj)  # signed distance of the centre, > 0 on the positive side
            if abs(sigma) + 2 * dj < r_ - 2 * r_min:
                # the hyperplane cuts the inscribed ball: both sides hold half-balls
                new_wit[j] = (
                    (c_ + gj * (r_ - sigma) / 2, (r_ + sigma) / 2 - dj),
                    (c_ - gj * (r_ + sigma) / 2, (r_ - sigma) / 2 - dj),
                )
                cuts.append((abs(sigma), j, sigma))
                continue
            if j in wit:
                new_wit[j] = wit[j]
                cuts.append((abs(sigma), j, sigma))
                continue
            if d <= 6:
                if outer is None:
                    outer = _shifted(h_, e_, 1.0)
                if not _crossing_units(G_, outer, c_, U.sub(slice(j, j + 1)))[0]:
                    continue  # a qhull call is several times cheaper than the LP it saves
            # +1 selects the negative side (gj·y ≤ hj): the side that does not hold the centre.
            other = 1.0 if sigma > 0 else -1.0
            G2, h2 = np.vstack([G_, other * gj]), np.append(h_, other * hj)
            e2, t2 = np.append(e_, ew[j]), t_ + [("u", key, int(j), -int(other))]
            far, n, ex = _ball_in(G2, h2, e2, t2, c_, r_, r_min, exact_rows)
            n_lp += n
            n_ex += ex
            if far is None:
                continue
            own = (c_, min(r_, abs(sigma)) - dj)
            if own[1] <= r_min:  # the centre is too near the hyperplane to vouch for its side
                G2, h2 = np.vstack([G_, -other * gj]), np.append(h_, -other * hj)
                t2 = t_ + [("u", key, int(j), int(other))]
                own, n, ex = _ball_in(G2, h2, e2, t2, c_, r_, r_min, exact_rows)
                n_lp += n
                n_ex += ex
                if own is None:
                    continue
            new_wit[j] = (own, far) if sigma > 0 else (far, own)
            cuts.append((abs(sigma), j, sigma))
        if not cuts:
            pieces.append((G_, h_, e_, t_, c_, r_))
            bar.update(1)
            continue
        # Split by the unit passing closest to the centre (balanced pieces), keep the others.
        cuts.sort(key=lambda t: t[0])
        _, j, sigma = cuts[0]
        rest = np.array([t[1] for t in cuts[1:]], dtype=np.int64)
        gj, hj = Bn[:, j] / gn[j], -An[j] / gn[j]
        (pc, pr), (nc, nr) = new_wit[j]
        for side, (cc_, rr_) in ((1.0, (pc, pr)), (-1.0, (nc, nr))):
            # witnesses of the other units that lie wholly on this exact side of unit j stay proofs
            kept = {}
            for k in rest.tolist():
                (b1c, b1r), (b2c, b2r) = new_wit[k]
                if side * float(b1c @ gj - hj) >= b1r + U.delta(j, b1c, b1r) and side * float(
                    b2c @ gj - hj
                ) >= b2r + U.delta(j, b2c, b2r):
                    kept[k] = new_wit[k]
            # this side: side * (gj·y - hj) >= 0, i.e. (-side gj)·y <= -side hj
            G2, h2 = np.vstack([G_, -side * gj]), np.append(h_, -side * hj)
            e2, t2 = np.append(e_, ew[j]), t_ + [("u", key, int(j), int(side))]
            stack.append((G2, h2, e2, t2, cc_, rr_, rest, kept))
        if len(pieces) + len(stack) > room:
            raise _too_many(max_regions)
    return pieces, n_lp, n_ex


class _UncertainSlope(RuntimeError):
    """A unit's slope on a piece is within its float error bound of zero (the chain engine then recomputes
    the piece's maps exactly)."""

    def __init__(self, unit: int):
        super().__init__(
            f"regions_in_box: unit {unit}'s slope on a piece is within its float64 rounding bound of zero "
            "and could not be decided exactly"
        )
        self.unit = unit


def _box_frame(n0: int, lo, hi, subspace):
    """Checked ``(lo, hi, origin, basis)`` of :func:`regions_in_box`."""
    lo = check_array(lo, "lo", ndim=1)
    hi = check_array(hi, "hi", ndim=1)
    if subspace is None:
        origin, basis = np.zeros(n0), np.eye(n0)
    else:
        if not isinstance(subspace, (tuple, list)) or len(subspace) != 2:
            raise TypeError("subspace must be a pair (origin, basis) with basis of shape (d, n_0)")
        origin = _flat_point(subspace[0], "subspace origin", n0)
        basis = check_array(subspace[1], "subspace basis", ndim=2)
        if basis.shape[1] != n0:
            raise ValueError(f"subspace basis must have shape (d, {n0}), got {basis.shape}")
        if np.linalg.matrix_rank(basis) < basis.shape[0]:
            raise ValueError(
                "subspace basis rows are linearly dependent, so they do not span a subspace of dim d"
            )
    d = basis.shape[0]
    if lo.shape != (d,) or hi.shape != (d,):
        raise ValueError(
            f"lo and hi must have {d} entries (the box's dimension), got {lo.shape} and {hi.shape}"
        )
    if not np.all(lo < hi):
        i = int(np.argmin(hi - lo))
        raise ValueError(f"box is empty: lo[{i}] = {lo[i]} must be < hi[{i}] = {hi[i]}")
    return lo, hi, origin, basis


def _box_result(regions, lo, hi, origin, basis, n_lp, n_bits, k: int, n_exact: int) -> BoxRegionsResult:
    """The result from final regions ``(G, h, centre, radius, ..., bits: list of bool arrays)`` in the frame
    ``y' = y / 2^k`` (given back in the box's own coordinates ``y``)."""
    m = len(regions)
    patterns = (
        np.array([np.concatenate(reg[-1]) for reg in regions]) if n_bits else np.zeros((m, 0), dtype=bool)
    )
    if n_bits and len(np.unique(np.packbits(patterns, axis=1), axis=0)) < m:
        # An activation region is convex (so is its part in the box): two pieces with one pattern would
        # mean a piece's ball lay across an exact wall, which the walls' bounds and exact sides rule out
        raise AssertionError(
            "internal error in regions_in_box: two pieces got the same activation pattern (a piece's ball "
            "lies across an exact wall); please report the network and box"
        )
    with np.errstate(under="ignore"):
        coords = np.ldexp(np.array([reg[2] for reg in regions]), k)
        radii = np.ldexp(np.array([reg[3] for reg in regions], dtype=np.float64), k)
        halfspaces = [(reg[0], np.ldexp(reg[1], k)) for reg in regions]
    return BoxRegionsResult(
        count=m,
        n_bits=n_bits,
        dim=basis.shape[0],
        n_lp=n_lp,
        lo=lo,
        hi=hi,
        patterns=patterns,
        points=origin[None, :] + coords @ basis,
        coords=coords,
        radii=radii,
        halfspaces=halfspaces,
        n_exact=n_exact,
    )


def _frac(i: int, e: int) -> Fraction:
    return Fraction(i << e) if e >= 0 else Fraction(i, 1 << -e)


def _exact_float(x: Fraction) -> float:
    """``x`` correctly rounded to float64, with a value beyond 2^900 given as ±2^900 (its sign is all the
    box engine reads from such a value)."""
    if abs(x) >= 2**900:
        return math.copysign(2.0**900, x)
    return float(x)


def _exact_unit_frame(z: list, k: int):
    """:func:`_unit_frame` of exact pre-activations ``z = [const, dir_1, ..., dir_d]`` (each ``(ints, exp)``,
    directions in the box's coordinates ``y``): each unit is scaled exactly before it is rounded, so its
    slope is rounded relative to itself (a slope of 2^-1200 survives). Also the float maps ``A, B`` (rounded
    to nearest, errors ``eA, eB``) for the next layer."""
    (ci, ce), dirs = z[0], z[1:]
    n, d = len(ci), len(dirs)
    A = np.array([_exact_float(_frac(int(v), ce)) for v in ci], dtype=np.float64).reshape(n)
    B = np.array(
        [[_exact_float(_frac(int(v), de)) for v in di] for di, de in dirs], dtype=np.float64
    ).reshape(d, n)
    eA = _U * np.abs(A) + _ETA * (np.array([int(v) != 0 for v in ci]) if n else 0)
    eB = _U * np.abs(B) + _ETA
    An, Bn = np.zeros(n), np.zeros((d, n))
    live = np.zeros(n, dtype=bool)
    for j in range(n):
        tops = [abs(int(di[j])).bit_length() + de for di, de in dirs if di[j] != 0]
        if tops:
            E = max(tops)
        elif ci[j] != 0:
            E = abs(int(ci[j])).bit_length() + ce - k
        else:
            continue  # identically zero
        live[j] = True
        An[j] = _exact_float(_frac(int(ci[j]), ce - E - k))
        for i, (di, de) in enumerate(dirs):
            Bn[i, j] = _exact_float(_frac(int(di[j]), de - E))
    with np.errstate(under="ignore"):
        U = _Units(An, Bn, (2 * _U * np.abs(An) + _ETA) * live, (2 * _U * np.abs(Bn) + _ETA) * live, live)
    return A, B, eA, eB, U


def _fraction_unit_frame(Aq: list, Bq: list, k: int):
    """:func:`_exact_unit_frame` of exact maps given as Fractions: ``Aq (n)``, ``Bq (d lists of n)``."""
    n, d = len(Aq), len(Bq)
    A = np.array([_exact_float(v) for v in Aq], dtype=np.float64).reshape(n)
    B = np.array([[_exact_float(v) for v in row] for row in Bq], dtype=np.float64).reshape(d, n)
    eA = _U * np.abs(A) + _ETA * np.array([v != 0 for v in Aq], dtype=bool)
    eB = _U * np.abs(B) + _ETA * np.array([[v != 0 for v in row] for row in Bq], dtype=bool).reshape(d, n)
    An, Bn = np.zeros(n), np.zeros((d, n))
    live = np.zeros(n, dtype=bool)
    two_k = Fraction(2) ** k
    for j in range(n):
        # |x| < 2^E for x = num / den with num < 2^bits(num), den >= 2^(bits(den) - 1)
        tops = [abs(Bq[i][j].numerator).bit_length() - Bq[i][j].denominator.bit_length() + 1
                for i in range(d) if Bq[i][j] != 0]
        if tops:
            E = max(tops)
            scale = Fraction(2) ** -E
            An[j] = _exact_float(Aq[j] * scale / two_k)
            for i in range(d):
                Bn[i, j] = _exact_float(Bq[i][j] * scale)
        elif Aq[j] != 0:
            An[j] = math.copysign(1.0, Aq[j])  # a constant: its sign is all that matters
        else:
            continue  # identically zero
        live[j] = True
    with np.errstate(under="ignore"):
        U = _Units(An, Bn, (2 * _U * np.abs(An) + _ETA) * live, (2 * _U * np.abs(Bn) + _ETA) * live, live)
    return A, B, eA, eB, U


def _exact_values_at(z: list, point: list[Fraction], units: np.ndarray) -> list[Fraction]:
    """Exact values of ``units`` of the exact pre-activations ``z`` at ``point`` (coordinates ``y``)."""
    (ci, ce), dirs = z[0], z[1:]
    out = []
    for j in units.tolist():
        v = _frac(int(ci[j]), ce)
        for (di, de), p in zip(dirs, point):
            if di[j] != 0:
                v += _frac(int(di[j]), de) * p
        out.append(v)
    return out


def regions_in_box(
    model: torch.nn.Module,
    lo,
    hi,
    masks=None,
    *,
    max_regions: int = 100_000,
    subspace=None,
    min_radius: float = 0.0,
    input_shape=None,
    verbose: bool = True,
) -> BoxRegionsResult:
    """Enumerate the activation regions of positive volume in the box ``lo ≤ y ≤ hi``.

    ``y`` is the input itself, or the coordinates in ``subspace = (origin, basis)`` (``basis`` of shape
    ``(d, n_0)``, input ``x = origin + y @ basis``). Regions are split layer by layer; a unit splits a
    piece when both sides hold a ball of positive radius, decided by the piece's inscribed ball (no LP when
    the unit's hyperplane cuts it), by two witness balls inherited from the parent piece, or else by a
    HiGHS LP (``scipy.optimize.linprog``) for the largest ball on the far side. Pieces are split depth
    first: a unit that does not split a piece cannot split its sub-pieces, so each piece tests only the
    units that split its parent, and the piece is cut by the unit passing closest to its centre. Units
    whose sign is constant on the whole box are skipped, and in up to ``6`` dimensions the vertices of a
    piece (qhull, from its Chebyshev centre) rule out units whose hyperplane clearly misses it without an
    LP. A tqdm bar counts the regions found in each layer (``verbose=False`` hides it).
    Raises :class:`TooManyRegionsError` when more than ``max_regions`` regions appear. ``input_shape`` (one
    sample's shape, for conv nets) is passed to :func:`netgeom.nets.trace`.

    Exactness: nothing depends on the box's scale. The geometry is in the box scaled to unit size by a
    power of two (exact); every unit's map carries a rigorous float error bound (products that may
    underflow included) and is scaled by its own power of two, so a slope is never rounded to zero and a
    hyperplane is placed within a certified distance of the exact one (local to the ball at hand: balls
    are shrunk by it), and every wall keeps its bound over the box for all later cuts: each piece's ball
    lies inside the exact piece. The LPs are solved on the walls moved inward by their bounds (so their
    balls are certified) in units of the piece at hand (a power of two near its ball's radius, centred at
    its ball), and their result is trusted only beyond HiGHS's tolerance band (relative to those units)
    and, for "empty", beyond the walls' bounds; a side whose largest ball lies inside the band is solved
    again in a unit 2^16 times smaller around the LP's point, down to float64's precision for the walls'
    positions there. A side still undecided (thinner than that precision, e.g. hyperplanes meeting exactly
    at a vertex, as all of a bias-free net's do at 0, or a wall within another's error bound) is decided
    in rational arithmetic on the exact walls: HiGHS's point checked exactly, or its duals as an exact
    Farkas certificate, else an exact simplex (``n_exact`` counts these sides), so no region is dropped.
    A unit's bit is ``z > 0`` at its piece's ball centre, decided in float when ``|z|`` exceeds its bound
    and otherwise exactly (rational arithmetic on the float64 weights and box: an exactly zero value there
    means a unit identically zero on the piece, bit False as in torch). A unit whose slope is within its
    bound of zero is recomputed exactly on the piece (a max-pool difference in that case raises an error
    naming the cause).

    ``min_radius`` (default 0: exact) is an explicit opt-in to skip regions thinner than an absolute
    radius, in the units of ``y``: a cut is kept only when both sides hold a ball of radius ``> min_radius``.

    Any traced network (:func:`netgeom.nets.trace`: residual additions, concatenations, max-pooling,
    LeakyReLU) is answered too, by :mod:`netgeom.regions._graph_box`: nodes are read in topological order,
    on every piece each node's value is affine in ``y``, ReLU nodes split pieces by their units as above,
    and each max-pool window splits a piece into the cells where its argmax is constant (ties to the first
    position, as torch), a cell kept when it holds a ball as a side of a cut does. The pattern is then, in
    node order, the ReLU bits and each window's argmax position in binary, as in
    :func:`netgeom.regions.count_patterns`.

    Example
    -------
    >>> from netgeom import mlp
    >>> res = regions_in_box(mlp(2, [3], 1, seed=0), [-5, -5], [5, 5])
    >>> res.count <= 7
    True

    A residual block (a graph, not a chain):

    >>> import torch
    >>> class Res(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         torch.manual_seed(0)
    ...         self.a, self.b = torch.nn.Linear(2, 4), torch.nn.Linear(4, 2)
    ...     def forward(self, x):
    ...         return torch.relu(x + self.b(torch.relu(self.a(x))))
    >>> res = regions_in_box(Res(), [-3, -3], [3, 3], verbose=False)
    >>> res.n_bits, res.count == len(res.patterns)  # 4 + 2 ReLU bits
    (6, True)
    """
    verbose = check_bool(verbose, "verbose")
    max_regions = check_int(max_regions, "max_regions", minimum=1)
    min_radius = float(min_radius)
    if not (math.isfinite(min_radius) and min_radius >= 0):
        raise ValueError(f"min_radius must be a finite radius >= 0 (0: exact), got {min_radius}")
    from ..nets import trace

    # One trace: its chain view (what affine_layers reads) when it is a chain, else the graph engine.
    g = trace(model, masks, input_shape=input_shape)
    if not g.is_chain:
        from ._graph_box import box_graph_regions

        lo, hi, origin, basis = _box_frame(g.n_in, lo, hi, subspace)
        res = box_graph_regions(g, lo, hi, origin, basis, max_regions, min_radius, verbose)
    else:
        layers, plan = _plan(g.layers())
        res = _box_layers(layers, plan, lo, hi, max_regions, subspace, min_radius, verbose)
    return res


def _box_layers(layers, plan, lo, hi, max_regions, subspace, min_radius, verbose) -> BoxRegionsResult:
    """:func:`regions_in_box` on a chain: the layers and plan of :func:`_plan`."""
    from tqdm.auto import tqdm

    n0 = layers[0].n_in
    lo, hi, origin, basis = _box_frame(n0, lo, hi, subspace)
    d = basis.shape[0]
    k = _frame_exp(lo, hi)
    lo_s, hi_s = _scaled_box(lo, hi, k)
    with np.errstate(under="ignore"):
        r_min = math.ldexp(min_radius, -k)
    G0 = np.vstack([np.eye(d), -np.eye(d)])
    h0 = np.concatenate([hi_s, -lo_s])
    exact = []  # the exact network, built on first need

    def exact_z(li, bits):
        if not exact:
            exact.append(_exact.ExactNet(plan, [origin, *basis]))
        prefix = np.concatenate(bits) if bits else np.zeros(0, dtype=bool)
        return exact[0].pre_activations(li, prefix)

    def rows_of(bits):
        """The exact rows of a region's walls (tags ``("u", layer, j, s)``) from its bits."""
        maps = {}

        def unit(li_, j):
            if li_ not in maps:
                maps[li_] = exact_z(li_, bits)
            (ci, ce), dirs = maps[li_][0], maps[li_][1:]
            return _frac(int(ci[j]), ce), [_frac(int(di[j]), de) for di, de in dirs]

        return lambda tags, c, r: _exact_rows(tags, k, lo_s, hi_s, unit)

    ym = np.maximum(np.abs(lo_s), np.abs(hi_s))
    n_lp = n_ex = 0
    # A region: ((G, h, e, tags, centre, radius), P, Q, eP, eQ, bits) in the frame y' = y / 2^k, with layer
    # input P + y @ Q (errors eP, eQ) in the box's coordinates y.
    c0 = 0.5 * (lo_s + hi_s)
    r0 = 0.5 * float(np.min(hi_s - lo_s))
    piece0 = (G0, h0, np.zeros(2 * d), _box_tags(d), c0, r0)
    regions = [(piece0, origin[None, :], basis, np.zeros((1, n0)), np.zeros_like(basis), [])]
    n_bit_layers = sum(step[2] for step in plan)
    for li, (W, bias, has_bits, slope) in enumerate(plan):
        aW = np.abs(W)
        wmin = float(aW[aW > 0].min()) if (aW > 0).any() else 0.0
        live_w = (aW > 0).any(axis=1)
        new_regions = []
        # The bar counts the pieces found in this layer (its final value is the layer's region count).
        bar = tqdm(
            desc=f"regions_in_box layer {li + 1}/{len(plan)}",
            unit="region",
            disable=not verbose or not has_bits,
            leave=li == len(plan) - 1 or n_bit_layers == 1,
        )
        for k_reg, (piece, P, Q, eP, eQ, bits) in enumerate(regions):
            A, Bm, eA, eB = _push_bounds(P, Q, eP, eQ, W, bias, wmin, live_w)
            if not has_bits:
                new_regions.append((piece, A, Bm, eA, eB, bits))
                continue
            G, h, e, _, c, r = piece
            A, eA = A[0], eA[0]
            U = _unit_frame(A, Bm, eA, eB, k)
            active = _active_units(G, h, e, c, U, lo_s, hi_s)
            z_ex = None
            if not U.sure[active].all():
                # a slope within its rounding bound of zero: this piece's layer exactly, then rounded
                z_ex = exact_z(li, bits)
                A, Bm, eA, eB, U = _exact_unit_frame(z_ex, k)
                active = _active_units(G, h, e, c, U, lo_s, hi_s)
            room = max_regions - (len(new_regions) + len(regions) - k_reg - 1)
            pieces, n, ex = _cut_by_units(
                piece, U, active, r_min, room, max_regions, bar, ym, li, rows_of(bits)
            )
            n_lp += n
            n_ex += ex
            # No fresh Chebyshev LP per piece: it costs one LP per new region and saves fewer later.
            for new_piece in pieces:
                c_ = new_piece[4]
                z, err = U.z_at(c_[None, :])
                b_new = z[0] > 0
                und = np.nonzero(U.live & (np.abs(z[0]) <= err[0]))[0]
                if len(und):
                    if z_ex is None:
                        z_ex = exact_z(li, bits)
                    point = [Fraction(float(v)) * Fraction(2) ** k for v in c_]
                    b_new[und] = [v > 0 for v in _exact_values_at(z_ex, point, und)]
                b_new &= U.live
                if slope == 0.0:
                    s_ = np.where(b_new, 1.0, 0.0)
                    Pn, Qn, ePn, eQn = A * s_, Bm * s_, eA * s_, eB * s_
                else:
                    s_ = np.where(b_new, 1.0, slope)
                    with np.errstate(under="ignore"):
                        Pn, Qn = A * s_, Bm * s_
                        ePn = np.abs(s_) * eA + np.where(b_new, 0.0, _U * np.abs(Pn) + _ETA)
                        eQn = np.abs(s_) * eB + np.where(b_new, 0.0, _U * np.abs(Qn) + _ETA)
                new_regions.append((new_piece, Pn[None, :], Qn, ePn[None, :], eQn, bits + [b_new]))
        bar.close()
        regions = new_regions
    n_bits = sum(len(b) for b in regions[0][-1]) if regions[0][-1] else 0
    final = [(reg[0][0], reg[0][1], reg[0][4], reg[0][5], reg[-1]) for reg in regions]
    return _box_result(final, lo, hi, origin, basis, n_lp, n_bits, k, n_ex)


# ================================================================================================= demo
def demo_section(ctx) -> str:
    """Report section: the regions on the plane through three training inputs, dense vs pruned net."""
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .patterns import count_patterns

    X = ctx.data.X_train.reshape(len(ctx.data.X_train), -1).numpy().astype(np.float64)
    y = ctx.data.y_train.numpy()
    # Three affinely independent inputs (a plane), of different classes where the data have them, so that
    # the plane crosses decision boundaries: the first input of each class in turn, then any other input.
    # Greedy is complete: if no input leaves the line through the first two distinct ones, all are on it.
    firsts = sorted(int(np.argmax(y == c)) for c in np.unique(y))
    picks: list[int] = []
    for i in firsts + [i for i in range(len(y)) if i not in set(firsts)]:
        if not picks or (len(picks) == 1 and (X[i] != X[picks[0]]).any()):
            picks.append(i)
        elif len(picks) == 2:
            try:
                _check_plane(X[picks[1]] - X[picks[0]], X[i] - X[picks[0]])
            except ValueError:
                continue
            picks.append(i)
            break
    if len(picks) < 3:
        raise ValueError(
            f"the {len(y)} training inputs span no plane (they are all equal or on one line), so the regions "
            "section has no 2-D slice through three of them"
        )
    different = len(set(y[picks].tolist())) == 3
    x0, d1, d2, box = plane_through(*X[picks], margin=0.25)
    marks = {
        f"x{k + 1} (class {int(y[i])})": uv for k, (i, uv) in enumerate(zip(picks, [(0, 0), (1, 0), (0, 1)]))
    }
    # the first slice of a process compiles (or loads from numba's cache) the slice kernels: seconds on a
    # fresh checkout, which the table's times would otherwise show as the dense net's
    from ..nets import mlp

    t0 = time.perf_counter()
    regions_on_slice(mlp(X.shape[1], [4, 4], 1, seed=0), x0, d1, d2, box)
    t_first = time.perf_counter() - t0
    rows, results = [], []
    for label, model, masks in (("dense", ctx.model, None), ("pruned", ctx.pruned_model, ctx.masks)):
        t0 = time.perf_counter()
        res = regions_on_slice(model, x0, d1, d2, box, masks=masks)
        t_slice = time.perf_counter() - t0
        res.marks = marks
        pats = count_patterns(model, ctx.data.X_test, masks, verbose=ctx.verbose)
        layers = affine_layers(model, masks)
        dens = [f"{layer.density:.3f}" for layer in layers]
        rows.append(
            f"| {label} | {', '.join(dens)} | {res.count} | {t_slice:.2f} s "
            f"| {pats.count} / {pats.n_samples} "
            f"| {pats.n_singletons}{' (saturated)' if pats.saturated else ''} |"
        )
        results.append((label, res))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, (label, res) in zip(axes, results):
        res.plot(ax=ax, seed=ctx.seed)
        ax.set_title(f"{label}: {res.count} activation regions")
        ax.set_xlabel("u")
        ax.set_ylabel("v")
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "regions_slice.png", dpi=110)
    plt.close(fig)
    widths = [layer.n_out for layer, f in zip(layers, pattern_layers(layers)) if f]
    n0 = layers[0].n_in
    log_b = int_log10(serra_bound(n0, widths))
    arch = f"{n0}-{'-'.join(map(str, widths))}"
    bound = (
        f"For scale: the Serra et al. (2018) upper bound for {arch} is ~10^{log_b:.1f} regions in the "
        "whole input space (a slice meets a tiny fraction of them)."
    )
    lines = [
        "## Linear regions on a 2-D slice",
        "",
        "Exact activation regions met by the plane through three training inputs "
        f"{'of different classes' if different else '(the data have fewer than three classes)'} "
        "(Cai et al. 2023: `x0 = x1`, `d1 = x2 - x1`, `d2 = x3 - x1`, box widened by 0.25), cut layer by "
        "layer "
        "(`regions_on_slice`), and the number of distinct activation patterns on the test set "
        "(`count_patterns`, exact bit-packed comparison). Counts are activation regions (distinct patterns).",
        "",
        f"| net | layer densities | regions on slice | time (kernels compiled or loaded first: "
        f"{t_first:.2f} s) | test patterns / inputs | seen once |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        bound,
        "",
        "![regions on the slice](regions_slice.png)",
        "",
    ]
    return "\n".join(lines)
