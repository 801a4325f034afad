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

__all__ = ["decide_rows", "pair_dots", "pair_dots_entrywise", "run_rows"]


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


@numba.njit(cache=True, nogil=True)
def _undecided(z, cand, A, G, T, r, c, rows, units):
    """The (row, unit) pairs of rows ``cand`` that :func:`_decide` counted, in row-major order (the same
    float64 test)."""
    k = 0
    for i in cand:
        a = np.float64(A[i])
        t = np.float64(T[i])
        for j in range(z.shape[1]):
            bound = a * r[j] + G * c[j] + t
            if (abs(np.float64(z[i, j])) <= bound) & (bound > 0.0):
                if k == len(rows):  # (never: the same test counted them; no write out of bounds)
                    return k + 1
                rows[k] = i
                units[k] = j
                k += 1
    return k


def decide_rows(z: torch.Tensor, A: torch.Tensor, G: float, T: torch.Tensor, r: np.ndarray, c: np.ndarray):
    """``(bits, (rows, units))`` for a CPU (rows, width) pre-activation ``z`` with per-unit bounds
    ``A_i r_j + G c_j + T_i``: the signs (bool, as ``z > 0``) and the (row, unit) pairs the bound leaves
    undecided, row-major (a zero bound decides even ``z == 0``: the value is exact)."""
    zn = z.detach().contiguous().numpy()
    B, N = zn.shape
    bits = np.empty((B, N), dtype=np.bool_)
    n_und = np.zeros(B, dtype=np.int64)
    rows = units = np.zeros(0, dtype=np.int64)
    if B:
        a = np.ascontiguousarray(A.detach().numpy())
        t = np.ascontiguousarray(T.detach().numpy())
        run_rows(_decide, B, zn, a, float(G), t, r, c, bits, n_und)
        cand = np.flatnonzero(n_und)
        if len(cand):
            # a second pass over the few rows with a candidate (instead of gathering them as torch arrays
            # and testing them again: five passes over ~half the batch when an int8 first layer's three
            # diagonals leave wide bounds)
            total = int(n_und[cand].sum())
            rows, units = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
            if _undecided(zn, cand, a, float(G), t, r, c, rows, units) != total:
                raise RuntimeError("the undecided units' second pass disagrees with their count")
    return torch.from_numpy(bits), (torch.from_numpy(rows), torch.from_numpy(units))


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


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _pair_dots_entrywise(W, b, H, Z, which, units, alpha, beta, p, q, dead, z, s_abs, s_err):
    shrink = 1.0 - 2.0**-51
    for k in range(len(units)):
        j = units[k]
        r = which[k]
        h = H[r]
        zr = Z[r]
        w = W[j]
        a = alpha[r]
        c = beta[r]
        acc = 0.0
        sa = 0.0
        se = 0.0
        for i in range(w.shape[0]):
            prod = w[i] * h[i]
            acc += prod
            sa += abs(prod)
            e = a * p[i] + c * q[i]
            zi = zr[i]
            # a ReLU input certainly below zero gives exactly 0, as the exact one: no error
            ei = 0.0 if dead and zi < 0.0 and -zi * shrink > e else e + 2.0**-51 * abs(zi)
            se += abs(w[i]) * ei
        z[k] = acc + b[j]
        s_abs[k] = sa
        s_err[k] = se


def pair_dots_entrywise(W, b, H, Z, which, units, alpha, beta, p, q, dead: bool):
    """For (row, unit) pairs of a layer whose input rows ``H`` come from an int8 first layer
    (:class:`netgeom.nets._int8.Int8Layer`: entry ``i`` of row ``r`` within ``alpha_r p_i + beta_r q_i +
    2^-51 |Z_ri|`` of the exact one, ``Z`` the first layer's float64 pre-activations): the float64 value
    ``z_k = W[units_k] . H[which_k] + b[units_k]``, ``sum_i |W_ji H_ri|`` (for the rounding bound) and
    ``sum_i |W_ji| err_ri``, the input's error carried entry by entry (``dead``: the activation is a ReLU,
    whose certainly negative inputs are exact zeros). All float64 CPU arrays; sums in any order."""
    n = len(units)
    z, s_abs, s_err = np.empty(n), np.empty(n), np.empty(n)
    if n:
        f = np.ascontiguousarray
        _pair_dots_entrywise(
            f(W.numpy()), f(b.numpy()), f(H.numpy()), f(Z.numpy()),
            f(which.numpy(), dtype=np.int64), f(units.numpy(), dtype=np.int64),
            f(alpha.numpy()), f(beta.numpy()), f(p.numpy()), f(q.numpy()), bool(dead), z, s_abs, s_err,
        )
    return torch.from_numpy(z), torch.from_numpy(s_abs), torch.from_numpy(s_err)
