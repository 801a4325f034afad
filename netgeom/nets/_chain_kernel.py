"""Compiled passes of the per-(row, unit) pattern engine (:func:`netgeom.nets.certified.chain_patterns`).

Why compiled: after each float32 product the engine reads every pre-activation a few times (signs, the
screen of each row against its largest bound, the per-unit test on the rows the screen cannot clear); as
torch operations those are ~10 passes over a (rows, width) array, as costly as the product of a 400-wide
layer. One pass here gives the signs and the number of undecided units per row.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["decide_rows", "pair_dots", "run_rows"]


def run_rows(fn, n: int, first, *rest) -> None:
    """``fn(first, 0, n, *rest)``: the kernels take a row range, and run on the calling thread.

    Why not a thread per range: torch's OpenMP workers keep spinning for milliseconds after each parallel
    product, so threads started right after one compete with them for the cores. Measured on 2 cores,
    784-400-400-10, 4096 rows: 41.8 ms per batch with two kernel threads, 34.5 ms with the calling thread
    alone (the kernels are ~15 % of the work; the products keep torch's threads)."""
    fn(first, 0, n, *rest)


@numba.njit(cache=True, nogil=True)
def _decide(z, lo, hi, A, G, T, r, c, bits, n_und):
    """Rows ``lo:hi``: ``bits = z > 0`` and the count of units with ``|z_j| <= A r_j + G c_j + T`` (bound
    evaluated in float64, at least as accurate as the float32 one it replaces) and a nonzero bound."""
    N = z.shape[1]
    for i in range(lo, hi):
        a = np.float64(A[i])
        t = np.float64(T[i])
        cnt = 0
        for j in range(N):
            v = z[i, j]
            bits[i, j] = v > 0
            bound = a * r[j] + G * c[j] + t
            cnt += (abs(np.float64(v)) <= bound) & (bound > 0.0)
        n_und[i] = cnt


def decide_rows(z: torch.Tensor, A: torch.Tensor, G: float, T: torch.Tensor, r: np.ndarray, c: np.ndarray):
    """``(bits, n_und)`` for a CPU (rows, width) pre-activation ``z`` with per-unit bounds
    ``A_i r_j + G c_j + T_i``: the signs (bool, as ``z > 0``) and per row how many units the bound leaves
    undecided (a zero bound decides even ``z == 0``: the value is exact)."""
    zn = z.detach().contiguous().numpy()
    B, N = zn.shape
    bits = np.empty((B, N), dtype=np.bool_)
    n_und = np.zeros(B, dtype=np.int64)
    if B:
        a = np.ascontiguousarray(A.detach().numpy())
        t = np.ascontiguousarray(T.detach().numpy())
        run_rows(_decide, B, zn, a, float(G), t, r, c, bits, n_und)
    return torch.from_numpy(bits), torch.from_numpy(n_und)


# The dot products carry a bound of gamma_K for any summation order, so reassociation (vectorised sums) is
# harmless; no contraction (a fused multiply-add is also covered, but the bound is stated without it).
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _pair_dots(W, b, H, which, units, z):
    for k in range(len(units)):
        j = units[k]
        h = H[which[k]]
        w = W[j]
        acc = 0.0
        for i in range(w.shape[0]):
            acc += w[i] * h[i]
        z[k] = acc + b[j]


def pair_dots(W: torch.Tensor, b: torch.Tensor, H: torch.Tensor, which: torch.Tensor, units: torch.Tensor):
    """``z_k = W[units_k] . H[which_k] + b[units_k]`` in float64 for CPU tensors, without gathering the
    (pairs, K) operands (a few thousand pairs of 400-wide rows: 14 ms as torch gathers, ~1 ms here)."""
    z = np.empty(len(units))
    if len(units):
        _pair_dots(
            W.numpy(), b.numpy(), np.ascontiguousarray(H.numpy()),
            np.ascontiguousarray(which.numpy(), dtype=np.int64),
            np.ascontiguousarray(units.numpy(), dtype=np.int64), z,
        )
    return torch.from_numpy(z)
