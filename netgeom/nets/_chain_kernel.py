"""Compiled passes of the per-(row, unit) pattern engine (:func:`netgeom.nets.certified.chain_patterns`).

Why compiled: after each float32 product the engine reads every pre-activation a few times (signs, the
screen of each row against its largest bound, the per-unit test on the rows the screen cannot clear); as
torch operations those are ~10 passes over a (rows, width) array, as costly as the product of a 400-wide
layer. One pass here gives the signs and the number of undecided units per row.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

__all__ = ["decide_rows", "run_rows"]


def _chunks(n: int, threads: int, minimum: int = 256) -> list[tuple[int, int]]:
    k = max(1, min(threads, n // minimum))
    edges = np.linspace(0, n, k + 1).astype(int)
    return [(int(a), int(c)) for a, c in zip(edges[:-1], edges[1:]) if c > a]


def run_rows(fn, n: int, first, *rest) -> None:
    """``fn(first, lo, hi, *rest)`` over row ranges covering ``0:n``, one thread per range (the kernels
    release the GIL), as many as torch's intra-op threads."""
    parts = _chunks(n, max(1, torch.get_num_threads()))
    if len(parts) == 1:
        fn(first, 0, n, *rest)
        return
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(lambda p: fn(first, p[0], p[1], *rest), parts))


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
