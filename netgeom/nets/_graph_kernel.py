"""Compiled passes of the graph pattern engine (:class:`netgeom.nets.certified._Engine`) on the CPU.

Why compiled: a ReLU fed by a convolution reads its pre-activation and elementwise error bound for the
signs, the undecided test, the activation and the activation's error bound (seven torch passes over a
(rows, width) array, as costly as the convolution of a LeNet's first layer); a max-pool runs a dozen
passes over its window slots for the running maximum, its position, the second largest entry, the largest
error and the top-two test. One pass each here. Both run on the calling thread (see
:func:`netgeom.nets._chain_kernel.run_rows`), on row blocks the engine keeps at ~4 MB per value.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

__all__ = ["pool_top2", "relu_elem"]


@numba.njit(cache=True, nogil=True)
def _relu_elem(z, d, v, e, bits, n_und):
    """Per entry: ``bits = z > 0``; ambiguous when ``|z| <= d`` with ``d > 0`` or when ``z`` or ``d`` is NaN
    (counted per row in ``n_und``); ``v = relu(z)``; ``e = 0`` where ``z + d <= 0`` (the input is certainly
    negative: the output is an exact 0), else ``d``. The comparisons are those of the torch version, in the
    arrays' own precision; selects and bitwise operations, no branches (so that the loop vectorises). A NaN
    ``z`` gives ``v = 0``: its row is undecided, so redone, whatever follows."""
    B, N = z.shape
    zero = v.dtype.type(0)
    for r in range(B):
        zr = z[r]
        dr = d[r]
        vr = v[r]
        er = e[r]
        br = bits[r]
        cnt = 0
        for j in range(N):
            a = zr[j]
            b = dr[j]
            pos = a > 0
            br[j] = pos
            cnt += ((abs(a) <= b) & (b > 0)) | (a != a) | (b != b)
            vr[j] = a if pos else zero
            er[j] = zero if a + b <= 0 else b
        n_und[r] = cnt


def relu_elem(z: torch.Tensor, d: torch.Tensor):
    """``(bits, rows with an ambiguous unit (bool (B,)), relu(z), error bound of relu(z))`` for a CPU
    pre-activation ``z`` with elementwise error bound ``d`` (same dtype and shape, float32 or float64)."""
    zn, dn = z.contiguous().numpy(), d.contiguous().numpy()
    v, e = np.empty_like(zn), np.empty_like(dn)
    bits = np.empty(zn.shape, dtype=np.bool_)
    n_und = np.empty(zn.shape[0], dtype=np.int64)
    _relu_elem(zn, dn, v, e, bits, n_und)
    t = torch.from_numpy
    return t(bits), t(n_und > 0), t(v), t(e)


@numba.njit(cache=True, nogil=True)
def _pool_top2(x, err, idx, scale, tiny, m1, pos, emax, sure):
    """Per row and window (slot ``j`` of window ``w`` reads entry ``idx[j, w]``): the first maximal entry
    ``m1`` and its slot ``pos``, the largest error ``emax``, and ``sure`` when the top-two test
    ``m1 - m2 > scale emax + tiny`` holds (``m2`` the largest other entry, ties included; ``scale`` =
    ``2 (1 + 4u)``) or every entry is exact (``emax == 0``). A NaN anywhere in a row's values or errors makes
    all its windows unsure. Slot by slot over all windows of a row, with selects and an integer maximum for
    the position (a branch, or a select on the position, keeps the loop from vectorising: 5x slower)."""
    B, n = x.shape
    k, W = idx.shape
    m2 = np.empty(W, dtype=x.dtype)
    for r in range(B):
        xr = x[r]
        er = err[r]
        b1 = m1[r]
        bp = pos[r]
        be = emax[r]
        i0 = idx[0]
        for w in range(W):
            b1[w] = xr[i0[w]]
            m2[w] = -np.inf
            bp[w] = 0
            be[w] = er[i0[w]]
        for j in range(1, k):
            ij = idx[j]
            jj = np.int32(j)
            for w in range(W):
                a = xr[ij[w]]
                best = b1[w]
                gt = a > best
                bp[w] = max(bp[w], jj * np.int32(gt))  # j > every earlier slot: the last strict improvement
                m2[w] = max(m2[w], min(best, a))
                b1[w] = a if gt else best
                be[w] = max(be[w], er[ij[w]])
        nan = False
        for i in range(n):
            nan |= (xr[i] != xr[i]) | (er[i] != er[i])
        ss = sure[r]
        for w in range(W):
            em = be[w]
            ss[w] = (em == 0) | (b1[w] - m2[w] > em * scale + tiny)
            ss[w] &= not nan


def pool_top2(x: torch.Tensor, err: torch.Tensor, windows: torch.Tensor, u: float):
    """``(m1, pos (long), emax, sure)`` of every (row, window) of a max-pool on CPU values ``x`` with
    elementwise error bounds ``err`` ((B, n), float32 or float64) and windows ``(size, k)`` of entry indices,
    ``-1`` for padding (read as ``-inf`` with error 0: never the max), see :func:`_pool_top2`."""
    xn, en = x.contiguous().numpy(), err.contiguous().numpy()
    B, n = xn.shape
    W = windows.shape[0]
    slots = windows.numpy().T
    if (slots < 0).any():
        xn = np.concatenate([xn, np.full((B, 1), -np.inf, dtype=xn.dtype)], 1)
        en = np.concatenate([en, np.zeros((B, 1), dtype=en.dtype)], 1)
        slots = np.where(slots < 0, n, slots)
    idx = np.ascontiguousarray(slots.astype(np.uint32))
    m1 = np.empty((B, W), dtype=xn.dtype)
    emax = np.empty((B, W), dtype=en.dtype)
    pos = np.empty((B, W), dtype=np.int32)
    sure = np.empty((B, W), dtype=np.bool_)
    dt = xn.dtype.type
    _pool_top2(xn, en, idx, dt(2 * (1 + 4 * u)), dt(np.finfo(xn.dtype).tiny), m1, pos, emax, sure)
    t = torch.from_numpy
    return t(m1), t(pos).long(), t(emax), t(sure)
