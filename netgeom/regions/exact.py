"""Exact activation regions on a segment, on a 2-D slice and in a low-dimensional box.

All three pass a set of inputs through the network layer by layer. Inside a piece (interval, polygon,
polyhedron) on which the earlier layers' pattern is fixed, the current layer's input is affine in the piece's
coordinates, so each pre-activation is affine there and the piece is split along the zero set of every unit
that changes sign inside it. The final pieces are exactly the activation regions met by the set (each region
is convex, so it meets a segment, plane or box in one connected piece: counting pieces counts patterns).

They count *activation* regions (distinct patterns), which can exceed the number of linear regions (maximal
sets where the network is affine) when e.g. a unit changes sign without changing the map.

Numerical conventions, shared by all three: a pre-activation is taken as zero where it is below
``rel_tol`` times the size of the terms it sums (so a unit with an all-zero weight row, or a segment lying in
a unit's hyperplane, has a constant sign and causes no split); a unit's pattern bit is ``z > 0``, so an
identically zero pre-activation has bit False, as in :func:`netgeom.regions.count_patterns`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .._validation import check_array, check_fraction, check_int
from ..nets import AffineLayer, affine_layers
from ..results import Result, new_axes
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


class TooManyRegionsError(RuntimeError):
    """The enumeration met more regions than the caller's ``max_regions`` allows."""


def _hidden(
    model, masks, input_shape=None
) -> tuple[list[AffineLayer], list[tuple[np.ndarray, np.ndarray, bool, float]]]:
    """The layers and, for each layer up to the last one with pattern bits, ``(W, b, has_bits, slope)``."""
    layers = affine_layers(model, masks, input_shape=input_shape)
    flags = pattern_layers(layers)
    plan = []
    for layer, flag in zip(layers[: _last_pattern_layer(flags) + 1], flags):
        slope = 1.0 if layer.activation == "identity" else float(layer.negative_slope)
        plan.append((layer.weight.numpy(), layer.bias.numpy(), flag, slope))
    return layers, plan


def _flat_point(x, name: str, n0: int) -> np.ndarray:
    arr = check_array(x, name)
    if arr.size != n0:
        raise ValueError(
            f"{name} has {arr.size} entries (shape {arr.shape}), but the network takes {n0} inputs"
        )
    return arr.reshape(-1)


# ============================================================================================== segment
@dataclass
class SegmentRegionsResult(Result):
    """Activation regions along the segment ``x(t) = a + t (b - a)``, ``t ∈ [0, 1]``.

    ``breakpoints`` are the interior points where the pattern changes (sorted, ``count - 1`` of them) and
    ``patterns[k]`` the pattern on the k-th piece. ``outputs`` holds the network output at ``edges``
    (0, the breakpoints, 1); the network is affine in between, so that is its whole graph along the segment.
    """

    count: int
    n_bits: int
    breakpoints: np.ndarray
    patterns: np.ndarray = field(repr=False)
    outputs: np.ndarray = field(repr=False)
    length: float = 0.0

    @property
    def edges(self) -> np.ndarray:
        return np.concatenate([[0.0], self.breakpoints, [1.0]])

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


def regions_on_segment(
    model: torch.nn.Module, a, b, masks=None, *, rel_tol: float = _REL_TOL, input_shape=None
) -> SegmentRegionsResult:
    """Exact activation regions met by the segment from ``a`` to ``b``; ``input_shape`` (one sample's
    shape, for conv nets) is passed to :func:`netgeom.nets.affine_layers`.

    Example
    -------
    >>> from netgeom import mlp
    >>> res = regions_on_segment(mlp(1, [5], 1, seed=0), [-3.0], [3.0])
    >>> res.count == len(res.breakpoints) + 1 <= 6
    True
    """
    rel_tol = check_fraction(rel_tol, "rel_tol", low_inclusive=False)
    layers, plan = _hidden(model, masks, input_shape)
    n0 = layers[0].n_in
    a = _flat_point(a, "a", n0)
    b = _flat_point(b, "b", n0)
    if np.array_equal(a, b):
        raise ValueError("a and b coincide: the segment is a single point")
    t_tol = 1e-12
    ts = np.array([0.0, 1.0])
    P, Q = a[None, :], (b - a)[None, :]
    bits_hist: list[np.ndarray] = []
    for W, bias, has_bits, slope in plan:
        A, B = P @ W.T + bias, Q @ W.T
        SA = np.abs(P) @ np.abs(W).T + np.abs(bias)
        SB = np.abs(Q) @ np.abs(W).T
        B = np.where(np.abs(B) <= rel_tol * SB, 0.0, B)
        T = rel_tol * (SA + SB)
        if not has_bits:
            P, Q = A, B
            continue
        z_lo, z_hi = A + B * ts[:-1, None], A + B * ts[1:, None]
        cut = (np.maximum(z_lo, z_hi) > T) & (np.minimum(z_lo, z_hi) < -T)
        piece, _ = np.nonzero(cut)
        roots = -A[cut] / B[cut]
        inside = (roots > ts[piece] + t_tol) & (roots < ts[piece + 1] - t_tol)
        roots = np.sort(roots[inside])
        if len(roots):
            # Roots of different units equal up to rounding (identical hyperplanes) are one breakpoint.
            roots = roots[np.concatenate([[True], np.diff(roots) > t_tol])]
        old = ts
        ts = np.union1d(ts, roots)
        mid = 0.5 * (ts[:-1] + ts[1:])
        parent = np.searchsorted(old, mid, side="right") - 1
        A, B, T = A[parent], B[parent], T[parent]
        z = A + B * mid[:, None]
        bits = z > T
        bits_hist = [h[parent] for h in bits_hist] + [bits]
        P, Q = np.where(bits, A, slope * A), np.where(bits, B, slope * B)
    n_pieces = len(ts) - 1
    patterns = np.concatenate(bits_hist, axis=1) if bits_hist else np.zeros((n_pieces, 0), dtype=bool)
    with torch.no_grad():
        pts = torch.as_tensor(a[None, :] + ts[:, None] * (b - a)[None, :])
        out = pts
        for layer in layers:
            out = layer(out)
    return SegmentRegionsResult(
        count=n_pieces,
        n_bits=patterns.shape[1],
        breakpoints=ts[1:-1],
        patterns=patterns,
        outputs=out.numpy(),
        length=float(np.linalg.norm(b - a)),
    )


# ================================================================================================ slice
@dataclass
class SliceRegionsResult(Result):
    """Activation regions met by the 2-D slice ``x(u, v) = x0 + u d1 + v d2`` over ``box``.

    ``polygons[k]`` is a convex ``(n_k, 2)`` array of ``(u, v)`` vertices (counter-clockwise) of the k-th
    region's piece, ``patterns[k]`` its activation pattern and ``areas[k]`` its area.
    """

    count: int
    n_bits: int
    box: tuple[float, float, float, float]
    polygons: list = field(repr=False)
    patterns: np.ndarray = field(repr=False)
    areas: np.ndarray = field(repr=False)
    marks: dict = field(default_factory=dict, repr=False)

    def plot(self, ax=None, *, seed: int = 0, edgecolor: str = "k", linewidth: float = 0.1):
        """The regions as polygons in random colours (seeded), like Hanin & Rolnick (2019, Fig. 1).

        ``marks`` (name -> (u, v)) are drawn as points, e.g. the three inputs a plane was put through.
        """
        from matplotlib.collections import PolyCollection

        fig, ax = new_axes(ax)
        rng = np.random.default_rng(seed)
        colours = rng.uniform(0.15, 1.0, size=(self.count, 3))
        coll = PolyCollection(self.polygons, facecolors=colours, edgecolors=edgecolor, linewidths=linewidth)
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
    n1, n2 = float(d1 @ d1), float(d2 @ d2)
    if n1 == 0 or n2 == 0:
        raise ValueError("a direction of the plane is zero (d1 or d2), so the plane is degenerate")
    det = n1 * n2 - float(d1 @ d2) ** 2
    if det <= 1e-12 * n1 * n2:
        raise ValueError("d1 and d2 are parallel, so they do not span a plane; choose independent directions")


def _check_box(box, names=("u", "v")) -> tuple[float, ...]:
    vals = check_array(box, "box", ndim=1)
    if vals.size != 2 * len(names):
        raise ValueError(f"box must be ({', '.join(f'{n}0, {n}1' for n in names)}), got {vals.tolist()}")
    for i, n in enumerate(names):
        if not vals[2 * i] < vals[2 * i + 1]:
            raise ValueError(f"box is empty: {n}0 = {vals[2 * i]} must be < {n}1 = {vals[2 * i + 1]}")
    return tuple(float(v) for v in vals)


def _vertex_values(V: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Values of the affine functions ``a + b·(u, v)`` (one per row) at the rows' vertices ``V (r, K, 2)``."""
    return a[:, None] + V[..., 0] * b[:, 0, None] + V[..., 1] * b[:, 1, None]


def _shoelace(V: np.ndarray) -> np.ndarray:
    # Rows are padded with copies of their first vertex, whose extra terms cancel.
    Vn = np.roll(V, -1, axis=1)
    return 0.5 * (V[..., 0] * Vn[..., 1] - Vn[..., 0] * V[..., 1]).sum(axis=1)


def _clip(V: np.ndarray, n: np.ndarray, s: np.ndarray, t: np.ndarray) -> tuple:
    """Split convex polygons ``V (r, K, 2)`` (``n`` real vertices, padded with the first) by sign of ``s``.

    Returns ``(pos, n_pos, neg, n_neg)``: the pieces with ``s ≥ 0`` and ``s ≤ 0``, in the same padded form.
    Values within ``t`` of zero count as on the line, so near-coincident lines create no slivers.
    """
    r, K = s.shape
    k = np.arange(K)
    real = k[None, :] < n[:, None]
    s = np.where(np.abs(s) <= t[:, None], 0.0, s)
    # The padding repeats the first vertex, so rolling gives every real vertex its true successor.
    Vn, sn = np.roll(V, -1, axis=1), np.roll(s, -1, axis=1)
    cross = real & (s * sn < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(cross, s / (s - sn), 0.0)
    X = V + lam[..., None] * (Vn - V)
    cand = np.empty((r, 2 * K, 2))
    cand[:, 0::2], cand[:, 1::2] = V, X
    out = []
    for keep in (real & (s >= 0), real & (s <= 0)):
        mask = np.empty((r, 2 * K), dtype=bool)
        mask[:, 0::2], mask[:, 1::2] = keep, cross
        order = np.argsort(~mask, axis=1, kind="stable")
        cnt = mask.sum(axis=1)
        width = max(int(cnt.max()), 1)
        P = np.take_along_axis(cand, order[:, :width, None], axis=1)
        pad = np.arange(width)[None, :] >= cnt[:, None]
        P = np.where(pad[..., None], P[:, :1], P)
        out += [P, cnt]
    return tuple(out)


def _pad_to(V: np.ndarray, K: int) -> np.ndarray:
    if V.shape[1] >= K:
        return V
    return np.concatenate([V, np.repeat(V[:, :1], K - V.shape[1], axis=1)], axis=1)


def regions_on_slice(
    model: torch.nn.Module,
    x0,
    d1,
    d2,
    box=(-1.0, 1.0, -1.0, 1.0),
    masks=None,
    *,
    input_shape=None,
    rel_tol: float = _REL_TOL,
    area_tol: float = 1e-12,
    max_regions: int = 1_000_000,
    memory_budget: int = 2**28,
) -> SliceRegionsResult:
    """Exact activation regions met by the plane ``x0 + u d1 + v d2`` with ``(u, v)`` in
    ``box = (u0, u1, v0, v1)``; points may come in the input's own shape (e.g. ``(C, L)``): flattened.

    Layer by layer, every current convex polygon is split along the zero line of every unit of the layer
    that changes sign inside it (the polygons of a layer are clipped by one unit at a time, all at once in
    numpy). A split that would leave a piece of area below ``area_tol`` times the box's area is not made.

    Polygons are independent of one another, so when a layer's per-polygon affine maps (``8 * 3 * n_units``
    bytes a polygon) would exceed ``memory_budget`` bytes, the polygons are processed in chunks, each carried
    through the remaining layers before the next (depth first): the working memory then stays near the
    budget whatever the number of regions. Raises :class:`TooManyRegionsError` as soon as a layer has cut the
    slice into more than ``max_regions`` pieces (a lower bound on the final count). ``input_shape`` (one
    sample's shape) is passed to :func:`netgeom.nets.affine_layers`, for conv nets without ``input_shape``.

    Example
    -------
    >>> from netgeom import mlp
    >>> res = regions_on_slice(mlp(2, [3], 1, seed=0), [0, 0], [1, 0], [0, 1], box=(-5, 5, -5, 5))
    >>> res.count <= 7  # at most 1 + 3 + 3 regions for 3 lines
    True
    """
    rel_tol = check_fraction(rel_tol, "rel_tol", low_inclusive=False)
    area_tol = check_fraction(area_tol, "area_tol", low_inclusive=False)
    max_regions = check_int(max_regions, "max_regions", minimum=1)
    memory_budget = check_int(memory_budget, "memory_budget", minimum=1)
    layers, plan = _hidden(model, masks, input_shape)
    n0 = layers[0].n_in
    x0 = _flat_point(x0, "x0", n0)
    d1 = _flat_point(d1, "d1", n0)
    d2 = _flat_point(d2, "d2", n0)
    _check_plane(d1, d2)
    u0, u1, v0, v1 = _check_box(box)
    last = max((i for i, step in enumerate(plan) if step[2]), default=-1)
    ctx = _SliceCtx(
        plan=plan[: last + 1],
        names=[layer.name for layer in layers],
        last=last,
        rel_tol=rel_tol,
        min_area=area_tol * (u1 - u0) * (v1 - v0),
        umax=max(abs(u0), abs(u1)),
        vmax=max(abs(v0), abs(v1)),
        max_regions=max_regions,
        budget=memory_budget,
        reached=[0] * max(last + 1, 0),
    )
    V = np.array([[[u0, v0], [u1, v0], [u1, v1], [u0, v1]]])
    nv = np.array([4])
    P, Q = x0[None, :], np.stack([d1, d2])[None]  # layer input = P + (u, v) @ Q, Q: (m, 2, n_in)
    if last >= 0:
        V, nv, patterns, _ = _slice_from(ctx, 0, V, nv, P, Q)
    else:
        patterns = np.zeros((1, 0), dtype=bool)
    m = len(V)
    areas = _shoelace(V)
    # Clipping keeps the orientation of the box (counter-clockwise), but make sure for the plot.
    V = np.where((areas < 0)[:, None, None], V[:, ::-1], V)
    polygons = [V[i, : nv[i]] for i in range(m)]
    return SliceRegionsResult(
        count=m,
        n_bits=patterns.shape[1],
        box=(u0, u1, v0, v1),
        polygons=polygons,
        patterns=patterns,
        areas=np.abs(areas),
    )


@dataclass
class _SliceCtx:
    plan: list
    names: list
    last: int
    rel_tol: float
    min_area: float
    umax: float
    vmax: float
    max_regions: int
    budget: int
    reached: list  # pieces made so far at each layer, over all chunks: a lower bound on the final count


def _too_many_slice(ctx: _SliceCtx, li: int, count: int) -> TooManyRegionsError:
    return TooManyRegionsError(
        f"the slice is cut into at least {count} pieces by layer {li} ({ctx.names[li]}), more than "
        f"max_regions={ctx.max_regions}; use a smaller box, fewer layers (a truncated model), or raise "
        "max_regions if the memory allows"
    )


def _slice_from(ctx: _SliceCtx, li: int, V, nv, P, Q):
    """Split polygons ``V`` (layer ``li``'s input ``P + (u, v) @ Q``) by layers ``li..last``.

    Returns ``(V, nv, patterns, origin)``: the final pieces, their bits for layers ``li..last`` and the index
    of the input polygon each lies in. Inputs are taken in chunks that keep ``(rows, n_units)`` arrays
    within the budget.
    """
    n = ctx.plan[li][0].shape[0]
    step = max(1, ctx.budget // (8 * 4 * max(n, Q.shape[2])))
    if len(V) <= step:
        return _slice_chunk(ctx, li, V, nv, P, Q)
    outs = []
    for i in range(0, len(V), step):
        Vi, nvi, pats, org = _slice_chunk(
            ctx, li, V[i : i + step], nv[i : i + step], P[i : i + step], Q[i : i + step]
        )
        outs.append((Vi, nvi, pats, org + i))
    K = max(o[0].shape[1] for o in outs)
    return (
        np.concatenate([_pad_to(o[0], K) for o in outs]),
        np.concatenate([o[1] for o in outs]),
        np.concatenate([o[2] for o in outs]),
        np.concatenate([o[3] for o in outs]),
    )


def _slice_chunk(ctx: _SliceCtx, li: int, V, nv, P, Q):
    W, bias, has_bits, slope = ctx.plan[li]
    rel_tol = ctx.rel_tol
    # One 2-D product: numpy's batched (m, 2, n_in) @ (n_in, n) matmul is far slower.
    A, B = P @ W.T + bias, (Q.reshape(-1, Q.shape[2]) @ W.T).reshape(len(Q), 2, -1)
    # Cauchy-Schwarz bounds on the summed terms' size (cheap outer products instead of |P| @ |W|.T).
    nW = np.linalg.norm(W, axis=1)
    nQ = np.linalg.norm(Q, axis=2)
    B = np.where(np.abs(B) <= rel_tol * nQ[:, :, None] * nW, 0.0, B)
    T = rel_tol * (
        (np.linalg.norm(P, axis=1) + nQ[:, 0] * ctx.umax + nQ[:, 1] * ctx.vmax)[:, None] * nW + np.abs(bias)
    )
    if not has_bits:
        return _slice_from(ctx, li + 1, V, nv, A, B)
    m, n = A.shape
    # A unit that does not cross a polygon crosses none of its pieces, so candidates come from the
    # polygons at the start of the layer (chunked so that (rows, K, n) stays small).
    cand = np.zeros((m, n), dtype=bool)
    step = max(1, 4_000_000 // max(1, V.shape[1] * n))
    for i in range(0, m, step):
        Z = (
            A[i : i + step, None, :]
            + V[i : i + step, :, :1] * B[i : i + step, None, 0]
            + (V[i : i + step, :, 1:] * B[i : i + step, None, 1])
        )
        cand[i : i + step] = (Z.max(axis=1) > T[i : i + step]) & (Z.min(axis=1) < -T[i : i + step])
    cap = max(2 * m, 64)
    CV = np.empty((cap, V.shape[1], 2))
    CV[:m] = V
    CN = np.empty(cap, dtype=np.int64)
    CN[:m] = nv
    CP = np.empty(cap, dtype=np.int64)
    CP[:m] = np.arange(m)
    cur = m
    base = ctx.reached[li]
    if base + cur > ctx.max_regions:
        raise _too_many_slice(ctx, li, base + cur)
    candT = np.ascontiguousarray(cand.T)
    for j in np.nonzero(cand.any(axis=0))[0]:
        rows = np.nonzero(candT[j][CP[:cur]])[0]
        par = CP[rows]
        s = _vertex_values(CV[rows], A[par, j], B[par, :, j])
        real = np.arange(CV.shape[1])[None, :] < CN[rows, None]
        t = T[par, j]
        crosses = (np.where(real, s, -np.inf).max(axis=1) > t) & (np.where(real, s, np.inf).min(axis=1) < -t)
        if not crosses.any():
            continue
        rows, par, s, t = rows[crosses], par[crosses], s[crosses], t[crosses]
        pos, npos, neg, nneg = _clip(CV[rows], CN[rows], s, t)
        ok = (np.abs(_shoelace(pos)) > ctx.min_area) & (np.abs(_shoelace(neg)) > ctx.min_area)
        if not ok.any():
            continue
        rows, pos, npos, neg, nneg = rows[ok], pos[ok], npos[ok], neg[ok], nneg[ok]
        K = max(CV.shape[1], pos.shape[1], neg.shape[1])
        if K > CV.shape[1]:
            CV = _pad_to(CV, K)
        k_new = len(rows)
        if base + cur + k_new > ctx.max_regions:
            raise _too_many_slice(ctx, li, base + cur + k_new)
        if cur + k_new > len(CV):
            grow = max(len(CV), k_new)
            CV = np.concatenate([CV, np.empty((grow, K, 2))])
            CN = np.concatenate([CN, np.empty(grow, dtype=np.int64)])
            CP = np.concatenate([CP, np.empty(grow, dtype=np.int64)])
        CV[rows], CN[rows] = _pad_to(pos, K), npos
        CV[cur : cur + k_new], CN[cur : cur + k_new] = _pad_to(neg, K), nneg
        CP[cur : cur + k_new] = CP[rows]
        cur += k_new
    ctx.reached[li] = base + cur
    V, nv, parent = CV[:cur], CN[:cur], CP[:cur]
    real = np.arange(V.shape[1])[None, :] < nv[:, None]
    # The vertex mean is a strictly positive combination of the vertices: an interior point.
    c = (V * real[..., None]).sum(axis=1) / nv[:, None]
    bits = np.empty((cur, n), dtype=bool)
    step = max(1, 2_000_000 // n)
    for i in range(0, cur, step):
        pa = parent[i : i + step]
        bits[i : i + step] = A[pa] + c[i : i + step, :1] * B[pa, 0] + c[i : i + step, 1:] * B[pa, 1] > T[pa]
    if li == ctx.last:
        return V, nv, bits, parent
    # The next layer's input maps, made a chunk of pieces at a time and carried to the end before the next
    # chunk, so that no (pieces, n_units) float array larger than the budget ever exists.
    step = max(1, ctx.budget // (8 * 4 * max(n, ctx.plan[li + 1][0].shape[0])))
    outs = []
    for i in range(0, cur, step):
        pa = parent[i : i + step]
        gain = np.where(bits[i : i + step], 1.0, slope)
        Vi, nvi, pats, org = _slice_from(
            ctx, li + 1, V[i : i + step], nv[i : i + step], A[pa] * gain, B[pa] * gain[:, None, :]
        )
        outs.append((Vi, nvi, np.concatenate([bits[i + org], pats], axis=1), parent[i + org]))
    if len(outs) == 1:
        return outs[0]
    K = max(o[0].shape[1] for o in outs)
    return (
        np.concatenate([_pad_to(o[0], K) for o in outs]),
        np.concatenate([o[1] for o in outs]),
        np.concatenate([o[2] for o in outs]),
        np.concatenate([o[3] for o in outs]),
    )


# ================================================================================================== box
@dataclass
class BoxRegionsResult(Result):
    """Activation regions of positive volume in a box ``lo ≤ y ≤ hi`` of the input (or of a subspace
    ``x = origin + y @ basis``).

    ``points[k]`` is an interior input of region k (``coords[k]`` its subspace coordinates), the centre of a
    ball of radius ``radii[k]`` inside the region; ``patterns[k]`` its pattern. ``halfspaces[k] = (G, h)``
    describes the region's piece as ``G y ≤ h`` (rows normalised). ``n_lp`` counts linear programs solved.
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

    def polygons(self) -> list[np.ndarray]:
        """For a 2-D box, the regions as convex polygons ``(n_k, 2)`` in subspace coordinates."""
        if self.dim != 2:
            raise ValueError(f"polygons need a 2-D box, this one is {self.dim}-D")
        from scipy.spatial import HalfspaceIntersection

        out = []
        for (G, h), c in zip(self.halfspaces, self.coords):
            keep = np.linalg.norm(G, axis=1) > 0
            hs = HalfspaceIntersection(np.hstack([G[keep], -h[keep, None]]), c)
            pts = hs.intersections
            ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
            out.append(pts[np.argsort(ang)])
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


def _chebyshev(G: np.ndarray, h: np.ndarray, cap: float) -> tuple[np.ndarray | None, float]:
    """Centre and radius of the largest ball in ``{G y ≤ h}`` (rows of G unit or zero), radius ≤ ``cap``."""
    from scipy.optimize import linprog

    d = G.shape[1]
    norms = np.linalg.norm(G, axis=1)
    cost = np.zeros(d + 1)
    cost[-1] = -1.0
    res = linprog(
        cost,
        A_ub=np.hstack([G, norms[:, None]]),
        b_ub=h,
        bounds=[(None, None)] * d + [(0.0, cap)],
        method="highs",
    )
    if res.status == 2:  # infeasible: the piece is empty
        return None, 0.0
    if res.status != 0:
        # Any other outcome (iteration limit, numerical trouble) would silently drop or keep a region.
        raise RuntimeError(f"HiGHS failed on a region's Chebyshev LP (status {res.status}: {res.message})")
    return res.x[:d], float(res.x[d])


def _crossing_units(G, h, c, A, B, T, size) -> np.ndarray:
    """Which of the units ``z = A + y @ B`` may cross the polytope ``{G y ≤ h}`` (``c`` interior): a unit is
    dropped only when its values at every vertex share one sign by a clear margin, so that rounding in the
    vertices can never hide a real split; when qhull cannot list the vertices, every unit is kept."""
    from scipy.spatial import HalfspaceIntersection, QhullError

    keep = np.linalg.norm(G, axis=1) > 0
    try:
        verts = HalfspaceIntersection(np.hstack([G[keep], -h[keep, None]]), c).intersections
    except (QhullError, ValueError):
        return np.ones(len(A), dtype=bool)
    Z = A + verts @ B
    # Vertices are exact up to ~1e-12 of the box's size; the margin covers that error many times over.
    margin = T + 1e-8 * size * np.linalg.norm(B, axis=0)
    return (Z.max(axis=0) > -margin) & (Z.min(axis=0) < margin)


def regions_in_box(
    model: torch.nn.Module,
    lo,
    hi,
    masks=None,
    *,
    max_regions: int = 100_000,
    subspace=None,
    min_radius: float = 1e-7,
    rel_tol: float = _REL_TOL,
    input_shape=None,
    verbose: bool = True,
) -> BoxRegionsResult:
    """Enumerate the activation regions of positive volume in the box ``lo ≤ y ≤ hi``.

    ``y`` is the input itself, or the coordinates in ``subspace = (origin, basis)`` (``basis`` of shape
    ``(d, n_0)``, input ``x = origin + y @ basis``). Regions are split layer by layer and unit by unit; a
    unit splits a region when both sides hold a ball of radius ``> min_radius`` (times the box's size),
    decided by the Chebyshev ball already known (no LP when the unit's hyperplane cuts it) or else by one
    HiGHS LP (``scipy.optimize.linprog``). Units whose sign is constant on the whole box are skipped, and
    in up to ``6`` dimensions the vertices of each region (qhull, from its Chebyshev centre) are listed at
    the start of a layer, so that the units whose hyperplane clearly misses the region are skipped for it
    without an LP. A tqdm bar over the regions of each layer shows progress (``verbose=False`` hides it).
    Raises :class:`TooManyRegionsError` when more than ``max_regions`` regions appear. ``input_shape`` (one
    sample's shape, for conv nets) is passed to :func:`netgeom.nets.affine_layers`.

    Example
    -------
    >>> from netgeom import mlp
    >>> res = regions_in_box(mlp(2, [3], 1, seed=0), [-5, -5], [5, 5])
    >>> res.count <= 7
    True
    """
    max_regions = check_int(max_regions, "max_regions", minimum=1)
    min_radius = check_fraction(min_radius, "min_radius", low_inclusive=False)
    rel_tol = check_fraction(rel_tol, "rel_tol", low_inclusive=False)
    layers, plan = _hidden(model, masks, input_shape)
    from tqdm.auto import tqdm

    n0 = layers[0].n_in
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
    size = float(np.max(hi - lo))
    r_min = min_radius * size
    G0 = np.vstack([np.eye(d), -np.eye(d)])
    h0 = np.concatenate([hi, -lo])
    n_lp = 0
    # A region: (G, h, centre, radius, P, Q, bits) with layer input = P + y @ Q.
    regions = [(G0, h0, 0.5 * (lo + hi), 0.5 * float(np.min(hi - lo)), origin[None, :], basis, [])]
    n_bit_layers = sum(step[2] for step in plan)
    for li, (W, bias, has_bits, slope) in enumerate(plan):
        absW = np.abs(W).T
        new_regions = []
        bar = tqdm(
            regions,
            desc=f"regions_in_box layer {li + 1}/{len(plan)}",
            unit="region",
            disable=not verbose or not has_bits,
            leave=li == len(plan) - 1 or n_bit_layers == 1,
        )
        for k_reg, (G, h, c, r, P, Q, bits) in enumerate(bar):
            A = (P @ W.T + bias)[0]
            Bm = Q @ W.T  # (d, n)
            SB = np.abs(Q) @ absW
            Bm = np.where(np.abs(Bm) <= rel_tol * SB, 0.0, Bm)
            T = rel_tol * (
                (np.abs(P) @ absW)[0] + np.abs(bias) + (SB * np.maximum(abs(lo), abs(hi))[:, None]).sum(0)
            )
            if not has_bits:
                new_regions.append((G, h, c, r, A[None, :], Bm, bits))
                continue
            # Range of each unit over the whole box: units of constant sign there never split.
            zmin = A + np.minimum(Bm * lo[:, None], Bm * hi[:, None]).sum(0)
            zmax = A + np.maximum(Bm * lo[:, None], Bm * hi[:, None]).sum(0)
            active = np.nonzero((zmin < -T) & (zmax > T))[0]
            if len(active) and d <= 6:
                active = active[_crossing_units(G, h, c, A[active], Bm[:, active], T[active], size)]
            pieces = [(G, h, c, r)]
            for j in active:
                bj = Bm[:, j]
                nb = float(np.linalg.norm(bj))
                gj, hj = bj / nb, -A[j] / nb  # z_j ≤ 0  ⇔  gj·y ≤ hj
                nxt = []
                for G_, h_, c_, r_ in pieces:
                    sigma = float(c_ @ gj - hj)  # signed distance of the centre, > 0 on the positive side
                    if abs(sigma) < r_ - 2 * r_min:
                        # The hyperplane cuts the inscribed ball: both sides hold half-balls, no LP needed.
                        pc, pr = c_ + gj * (r_ - sigma) / 2, (r_ + sigma) / 2
                        nc, nr = c_ - gj * (r_ + sigma) / 2, (r_ - sigma) / 2
                    else:
                        if d <= 6 and not _crossing_units(
                            G_, h_, c_, A[j : j + 1], Bm[:, j : j + 1], T[j : j + 1], size
                        )[0]:
                            # A qhull call is several times cheaper than the LP it saves.
                            nxt.append((G_, h_, c_, r_))
                            continue
                        # +1 selects the negative side (gj·y ≤ hj): the side that does not hold the centre.
                        other = 1.0 if sigma > 0 else -1.0
                        oc, orad = _chebyshev(np.vstack([G_, other * gj]), np.append(h_, other * hj), size)
                        n_lp += 1
                        if oc is None or orad <= r_min:
                            nxt.append((G_, h_, c_, r_))
                            continue
                        keep_r = min(r_, abs(sigma))
                        if other > 0:
                            pc, pr, nc, nr = c_, keep_r, oc, orad
                        else:
                            pc, pr, nc, nr = oc, orad, c_, keep_r
                    nxt.append((np.vstack([G_, -gj]), np.append(h_, -hj), pc, pr))
                    nxt.append((np.vstack([G_, gj]), np.append(h_, hj), nc, nr))
                pieces = nxt
                if len(new_regions) + len(pieces) + len(regions) - k_reg - 1 > max_regions:
                    raise TooManyRegionsError(
                        f"more than max_regions={max_regions} regions met in the box; shrink the box, use a "
                        "lower-dimensional subspace, or raise max_regions"
                    )
            for G_, h_, c_, r_ in pieces:
                # A fresh Chebyshev centre keeps the balls large, so the next layer needs fewer LPs.
                if len(pieces) > 1:
                    c2, r2 = _chebyshev(G_, h_, size)
                    n_lp += 1
                    if c2 is not None and r2 > r_:
                        c_, r_ = c2, r2
                z = A + c_ @ Bm
                b_new = z > T
                new_regions.append(
                    (
                        G_,
                        h_,
                        c_,
                        r_,
                        np.where(b_new, A, slope * A)[None, :],
                        np.where(b_new, Bm, slope * Bm),
                        bits + [b_new],
                    )
                )
        regions = new_regions
    m = len(regions)
    n_bits = sum(len(b) for b in regions[0][6]) if regions[0][6] else 0
    patterns = (
        np.array([np.concatenate(reg[6]) for reg in regions]) if n_bits else np.zeros((m, 0), dtype=bool)
    )
    coords = np.array([reg[2] for reg in regions])
    return BoxRegionsResult(
        count=m,
        n_bits=n_bits,
        dim=d,
        n_lp=n_lp,
        lo=lo,
        hi=hi,
        patterns=patterns,
        points=origin[None, :] + coords @ basis,
        coords=coords,
        radii=np.array([reg[3] for reg in regions]),
        halfspaces=[(reg[0], reg[1]) for reg in regions],
    )


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
    # Three inputs of different classes, so that the plane crosses decision boundaries.
    picks = [0]
    for i in range(1, len(y)):
        if y[i] not in y[picks]:
            picks.append(i)
        if len(picks) == 3:
            break
    picks = (picks + [1, 2])[:3]
    x0, d1, d2, box = plane_through(*X[picks], margin=0.25)
    marks = {
        f"x{k + 1} (class {int(y[i])})": uv for k, (i, uv) in enumerate(zip(picks, [(0, 0), (1, 0), (0, 1)]))
    }
    rows, results = [], []
    for label, model, masks in (("dense", ctx.model, None), ("pruned", ctx.pruned_model, ctx.masks)):
        t0 = time.perf_counter()
        res = regions_on_slice(model, x0, d1, d2, box, masks=masks)
        t_slice = time.perf_counter() - t0
        res.marks = marks
        pats = count_patterns(model, ctx.data.X_test, masks)
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
        "Exact activation regions met by the plane through three training inputs of different classes "
        "(Cai et al. 2023: `x0 = x1`, `d1 = x2 - x1`, `d2 = x3 - x1`, box widened by 0.25), cut layer by "
        "layer "
        "(`regions_on_slice`), and the number of distinct activation patterns on the test set "
        "(`count_patterns`, exact bit-packed comparison). Counts are activation regions (distinct patterns).",
        "",
        "| net | layer densities | regions on slice | time | test patterns / inputs | seen once |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        bound,
        "",
        "![regions on the slice](regions_slice.png)",
        "",
    ]
    return "\n".join(lines)
