"""Compiled (numba) gather of float64 differences for the re-rank of :mod:`netgeom.dimension.neighbors`.

Only the differences are computed here: each is one correctly rounded float64 subtraction, so they are
bit for bit numpy's. The sums of squares stay with ``np.einsum`` (whose summation order, SIMD-dependent,
defines the float64 distances the results are compared with).

Compiled on first use and cached on disk (``cache=True``): later processes load it in well under a second.
"""

from __future__ import annotations

import numba


@numba.njit(cache=True, nogil=True)
def gather_diff(X, Xg, a0, cand, n_keep, out):
    """``out[i, j] = Xg[cand[i, j]] − X[a0 + i]`` in float64 for ``j < n_keep[i]``; the other slots of
    ``out[i]`` (up to ``out.shape[1]``) are zeroed. ``Xg`` holds the values of ``X`` (``X`` itself or an
    exact float32 copy), so the differences are those of ``X``; one pass, no float32 temporary."""
    D = X.shape[1]
    for i in range(out.shape[0]):
        x = X[a0 + i]
        for j in range(out.shape[1]):
            o = out[i, j]
            if j < n_keep[i]:
                y = Xg[cand[i, j]]
                for t in range(D):
                    o[t] = y[t] - x[t]
            else:
                for t in range(D):
                    o[t] = 0.0
