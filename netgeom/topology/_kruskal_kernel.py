"""Compiled (numba) union-find passes of the Kruskal path of :mod:`netgeom.topology.persistence`.

The edge order (weight descending, position ascending) is computed by numpy before a pass; a pass only
walks edges in that order. The union-find state (``parent``) lives in the caller and is carried from one
prefix round to the next, so a round continues Kruskal where the previous one stopped instead of starting
over on the forest so far.

Compiled on first use and cached on disk (``cache=True``): later processes load it in well under a second.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _find(parent, x):
    # path halving: every visited vertex skips to its grandparent, keeping trees shallow without a second
    # pass or a rank array
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True, nogil=True)
def union_pass(parent, a, b, order, limit):
    """Walk the edges ``order[0], order[1], ...`` (positions into ``a, b``) and join their endpoints'
    components; return the positions of the joining edges (the forest edges of this prefix), in the order
    walked. Stops after ``limit`` joins (the forest then spans the components it can reach)."""
    out = np.empty(min(order.size, max(limit, 0)), dtype=np.int64)
    k = 0
    if out.size == 0:
        return out
    for t in range(order.size):
        e = order[t]
        x = _find(parent, a[e])
        y = _find(parent, b[e])
        if x != y:
            # the smaller root survives: any rule is correct, a fixed one keeps the state reproducible
            if x < y:
                parent[y] = x
            else:
                parent[x] = y
            out[k] = e
            k += 1
            if k == out.size:
                break
    return out[:k]


@numba.njit(cache=True, nogil=True)
def crossing(parent, a, b, cand):
    """The entries of ``cand`` (positions into ``a, b``) whose endpoints lie in different components, in
    the same order."""
    out = np.empty(cand.size, dtype=np.int64)
    k = 0
    for t in range(cand.size):
        e = cand[t]
        if _find(parent, a[e]) != _find(parent, b[e]):
            out[k] = e
            k += 1
    return out[:k]
