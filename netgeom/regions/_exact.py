"""Exact arithmetic on float64 inputs, for the few region decisions that floats cannot settle.

Every float64 is a dyadic rational ``m 2^e``, and a network's pre-activations on a region are sums of
products of such numbers, so they are dyadic rationals too. An exact vector is stored as Python integers
times one power of two (``ints * 2**exp``); dot products, sums and the activation gains stay in that form
without rounding. The predicates built on it (the sign of an affine function at the crossing point of two
lines) decide exactly what the float path could only decide up to its error bound.

The float path calls in here only when a value lies within its certified error bound of zero, so the cost
(Python integers, ~0.1 µs an operation) matters only for degenerate inputs (duplicated units, a plane lying
in a unit's hyperplane, a vertex of three concurrent lines).
"""

from __future__ import annotations

import numpy as np


def to_exact(x) -> tuple[np.ndarray, int]:
    """``x`` (float64, any shape) as ``(ints, exp)``, ``x == ints * 2**exp`` exactly (ints: object array)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("exact arithmetic needs finite float64 values")
    m, e = np.frexp(x)
    mi = (m * 2.0**53).astype(np.int64)  # exact: |m| < 1 has at most 53 significant bits
    ei = e.astype(np.int64) - 53
    nz = mi != 0
    out = np.empty(x.shape, dtype=object)
    if not nz.any():
        out.fill(0)
        return out, 0
    emin = int(ei[nz].min())
    shift = np.where(nz, ei - emin, 0)
    out.reshape(-1)[:] = [a << s for a, s in zip(mi.reshape(-1).tolist(), shift.reshape(-1).tolist())]
    return out, emin


def _align(a: tuple[np.ndarray, int], b: tuple[np.ndarray, int]) -> tuple[np.ndarray, np.ndarray, int]:
    (ia, ea), (ib, eb) = a, b
    e = min(ea, eb)
    return ia * (1 << (ea - e)), ib * (1 << (eb - e)), e


def exact_add(a, b) -> tuple[np.ndarray, int]:
    ia, ib, e = _align(a, b)
    return ia + ib, e


class ExactNet:
    """Exact affine maps of each layer's input over one region of a line or plane.

    ``plan`` holds ``(W, b, has_bits, slope)`` per layer (float64, as the float path uses them), ``base`` the
    float64 vectors of the parametrisation (``[x0, d1, d2]`` for a plane: input ``= x0 + u d1 + v d2``).
    Maps are cached by the pattern prefix that selects them.
    """

    def __init__(self, plan, base):
        self.plan = plan
        self.base = [
            v if isinstance(v, tuple) else to_exact(np.asarray(v, dtype=np.float64).reshape(-1)) for v in base
        ]
        self._W: dict[int, tuple] = {}
        self._b: dict[int, tuple] = {}
        self._slope: dict[int, tuple] = {}
        self._maps: dict[tuple[int, bytes], list] = {}
        self.offsets = np.cumsum([0] + [W.shape[0] if has else 0 for W, _, has, _ in plan])

    def _layer(self, li: int):
        if li not in self._W:
            W, b, _, slope = self.plan[li]
            self._W[li] = to_exact(W)
            self._b[li] = to_exact(b)
            self._slope[li] = to_exact(np.array(slope))
        return self._W[li], self._b[li], self._slope[li]

    def pre_activations(self, li: int, prefix: np.ndarray) -> list:
        """Layer ``li``'s pre-activations on the region with bits ``prefix`` (layers before ``li``), as
        exact vectors: the constant term first, then one per direction."""
        inp = self.map_at(li, prefix)
        (Wi, We), bias, _ = self._layer(li)
        out = []
        for k, (vi, ve) in enumerate(inp):
            z = (Wi.dot(vi), We + ve)
            out.append(exact_add(z, bias) if k == 0 else z)
        return out

    def map_at(self, li: int, prefix: np.ndarray) -> list:
        """Layer ``li``'s input on the region with bits ``prefix`` (all layers before ``li``)."""
        if li == 0:
            return self.base
        prefix = np.asarray(prefix, dtype=bool)[: self.offsets[li]]
        key = (li, np.packbits(prefix).tobytes() + bytes([len(prefix) % 8]))
        if key in self._maps:
            return self._maps[key]
        z = self.pre_activations(li - 1, prefix)
        _, _, has, slope = self.plan[li - 1]
        if has:
            bits = prefix[self.offsets[li - 1] : self.offsets[li]]
            _, _, (si, se) = self._layer(li - 1)
            s_int = int(si.item())
            e = min(0, se)
            gain = np.where(bits, 1 << (0 - e), 0).astype(object)
            if slope != 0:
                gain[~bits] = s_int << (se - e)
            z = [(zi * gain, ze + e) for zi, ze in z]
        elif slope != 1:
            raise AssertionError("a layer without pattern bits must have the identity activation")
        if len(self._maps) > 4096:  # a bounded cache: exact maps of wide layers are large
            self._maps = {}
        self._maps[key] = z
        return z

    def line(self, li: int, prefix: np.ndarray, j: int) -> list[int]:
        """Coefficients of unit ``j`` of layer ``li`` on a region, as integers with one common scale."""
        z = self.pre_activations(li, prefix)
        vals = [(int(zi[j]), ze) for zi, ze in z]
        return _common(vals)


def _common(vals: list[tuple[int, int]]) -> list[int]:
    """Integers ``i_k 2^{e_k}`` as integers over one common positive scale (signs and ratios preserved)."""
    e = min(ev for _, ev in vals)
    return [iv << (ev - e) for iv, ev in vals]


def float_line(coeffs) -> list[int]:
    """Float64 line coefficients (exact values) as integers over one common positive scale."""
    ints, e = to_exact(np.asarray(coeffs, dtype=np.float64))
    return [int(v) for v in ints]


def cross(l1: list[int], l2: list[int]) -> list[int]:
    """The crossing point of two lines ``a + b u + c v = 0`` in homogeneous coordinates ``(D, X, Y)``
    (the point is ``(X / D, Y / D)``; ``D == 0`` for parallel lines)."""
    a1, b1, c1 = l1
    a2, b2, c2 = l2
    return [b1 * c2 - c1 * b2, c1 * a2 - a1 * c2, a1 * b2 - b1 * a2]


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


def sign_at(line: list[int], point: list[int]) -> int:
    """Sign of the affine function ``line`` at the homogeneous point ``point`` (its ``D`` taken as > 0)."""
    s = sum(a * b for a, b in zip(line, point))
    return sign(s) * sign(point[0])
