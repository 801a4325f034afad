"""Zeroth-order persistence of weight graphs and their maximum spanning forests.

Conventions (superlevel filtration of ``w̃ = |w| / max|w|``): every vertex is born at ``1``; an edge enters
when the threshold falls to its ``w̃``; when it joins two components one of them dies, giving the pair
``(birth = 1, death = w̃_e)``. The merging edges form a maximum spanning forest (MSF), so the finite diagram
is the multiset ``{(1, w̃_e) : e ∈ MSF}`` with ``|V| − #components`` pairs. Each connected component (an
isolated vertex included) also carries one *essential* class that never dies: we report its death as
``-inf`` in the superlevel convention (``+inf`` in the sublevel one) and give the graph's lowest ``w̃``
separately (``min_value``) for those who prefer to close essential bars there.

The same diagram in the sublevel convention of ``1 − w̃`` (births ``0``, deaths ``1 − w̃_e``) is what gudhi
and ripser compute; :meth:`ZerothDiagram.to_gudhi` returns it in gudhi's ``[(0, (birth, death)), ...]``
format.

Ties are broken by a fixed total order on edges, *heavier first, then smaller edge index* (the flat index
``j * n_in + i`` in the ``(n_out, n_in)`` matrix), i.e. Kruskal on a stable descending sort. The MSF is
unique under that order, so the returned MSF mask is deterministic; the diagram does not depend on the
tie-break at all.

Zero weights are absent edges, like pruned ones (see :mod:`netgeom.topology.graphs`): the filtration runs
over ``w̃ ∈ (0, 1]`` and an all-zero or fully pruned layer has no finite pair and one essential class per
vertex. ``total_persistence`` sums the finite pairs only; measures that need every class closed (neural
persistence) close essential classes at ``w̃ = 0`` (persistence 1), the limit of a pair ``(1, ε)``.

Native algorithms (ours), picked by ``method="auto"`` from the edge count:

* ``"kruskal"`` for sparse graphs: one sort of the edges (numpy's fast unstable sort; a stable one only
  when equal weights occur) and one union-find pass, compiled with numba (:mod:`._kruskal_kernel`). Large
  graphs go in prefix rounds: the forest of the heaviest ``~2 |V|`` edges (one ``np.partition``) usually
  spans already, and the remaining edges are only those between different components. No dense temporary.
* ``"prim"`` for dense matrices: vectorised Prim, each of the ``|V|`` steps a few numpy passes over one
  row or column (about one pass over the weights in total).
* ``"boruvka"``: vectorised Borůvka on the edge list (one stable sort, ``O(log |V|)`` rounds), kept as an
  independent cross-check.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from .._validation import check_array, check_choice
from ..nets import AffineLayer
from ..results import Result, new_axes
from .graphs import _UNSET, LayerGraph, NetworkGraph, layer_graph

__all__ = [
    "ZerothDiagram",
    "NetworkZerothDiagram",
    "zeroth_persistence",
    "spanning_forest_mask",
    "BACKENDS",
    "METHODS",
    "NETWORK_METHODS",
]

BACKENDS = ("native", "gudhi", "ripser")
METHODS = ("auto", "prim", "kruskal", "boruvka")
#: network graphs: a per-layer method then a merge of the layer forests, or Kruskal on all edges at once.
NETWORK_METHODS = METHODS + ("global",)
#: ripser stores float32 distances and drops stored zeros: it gets the rank of each edge's weight among
#: the distinct weights (exact in float32 up to 2**24 of them), else ``1 − w̃ + _RIPSER_OFFSET``.
_RIPSER_OFFSET = 1.0
_RIPSER_MAX_RANKS = 2**24
_TINY = float(np.nextafter(0.0, 1.0))


# ------------------------------------------------------------------------------------------- algorithms
def _prim_dense(weights: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MSF of the bipartite graph of a dense ``(n_out, n_in)`` matrix; returns the edges' ``(j, i)``.

    Keys of vertices already in the forest are NaN so that no comparison ever updates them (saving a
    mask pass per step); ``fmax`` skips them when picking the next vertex.
    """
    n_out, n_in = weights.shape
    n_v = n_in + n_out
    A = np.where(present, weights, -1.0)  # -1: absent edge, below every real w̃ >= 0
    AT = np.ascontiguousarray(A.T)
    key = np.full(n_v, -1.0)
    partner = np.full(n_v, n_v, dtype=np.int64)  # other end of the key edge (an output j or an input i)
    key_in, key_out = key[:n_in], key[n_in:]
    partner_in, partner_out = partner[:n_in], partner[n_in:]
    done = np.zeros(n_v, dtype=bool)
    edge_j = np.empty(n_v, dtype=np.int64)
    edge_i = np.empty(n_v, dtype=np.int64)
    n_edges = 0
    for _ in range(n_v):
        m = np.fmax.reduce(key)
        if not m >= 0:  # no present edge leaves the forest: start a new component at the first free vertex
            v = int(np.argmin(done))
        else:
            cand = np.flatnonzero(key == m)
            if cand.size == 1:
                v = int(cand[0])
            else:  # equal weights: the smallest edge index wins (the global tie-break)
                is_in = cand < n_in
                j = np.where(is_in, partner[cand], cand - n_in)
                i = np.where(is_in, cand, partner[cand])
                v = int(cand[np.argmin(j * n_in + i)])
            if v < n_in:
                edge_j[n_edges], edge_i[n_edges] = partner[v], v
            else:
                edge_j[n_edges], edge_i[n_edges] = v - n_in, partner[v]
            n_edges += 1
        done[v] = True
        key[v] = np.nan
        if v < n_in:
            # Both the offered edge (j, v) and output j's current key edge share row j, so their edge
            # indices j*n_in + i compare as the inputs do.
            col = AT[v]
            better = (col > key_out) | ((col == key_out) & (v < partner_out))
            np.copyto(key_out, col, where=better)
            np.copyto(partner_out, v, where=better)
        else:
            j = v - n_in  # offered (j, i) vs key (partner, i): same column, indices compare as rows
            row = A[j]
            better = (row > key_in) | ((row == key_in) & (j < partner_in))
            np.copyto(key_in, row, where=better)
            np.copyto(partner_in, j, where=better)
    return edge_j[:n_edges], edge_i[:n_edges]


def _boruvka(n_vertices: int, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Positions (into ``u, v, w``) of the MSF edges, ties broken by position (edges must come in
    increasing edge-index order). Edges are ranked once by a stable descending sort, so every comparison
    afterwards is between distinct ranks and Borůvka's rounds cannot create cycles."""
    order = np.argsort(-w, kind="stable")
    u, v, eid = u[order], v[order], order
    comp = np.arange(n_vertices)
    chosen = []
    while u.size:
        cu, cv = comp[u], comp[v]
        keep = cu != cv
        if not keep.all():
            u, v, eid, cu, cv = u[keep], v[keep], eid[keep], cu[keep], cv[keep]
        n = u.size
        if n == 0:
            break
        # Positions are ranks (the arrays stay in rank order), so the minimum position touching a
        # component is its heaviest outgoing edge.
        best = np.full(n_vertices, n, dtype=np.int64)
        pos = np.arange(n)
        np.minimum.at(best, cu, pos)
        np.minimum.at(best, cv, pos)
        sel = np.unique(best[best < n])
        chosen.append(eid[sel])
        g = sparse.coo_matrix((np.ones(sel.size, dtype=np.int8), (cu[sel], cv[sel])), shape=(n_vertices,) * 2)
        _, labels = connected_components(g, directed=False)
        comp = labels[comp]
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)

#: Kruskal runs first on the heaviest ``_PREFIX_PER_VERTEX * |V|`` edges when there are at least
#: ``_PREFIX_MIN_RATIO`` times as many; the few vertices such a prefix leaves unjoined cost a pass over the
#: remaining edges, much less than sorting them. Tuned with benchmarks/bench_persistence.py.
_PREFIX_PER_VERTEX = 2.0
_PREFIX_MIN_RATIO = 1.5
#: below this many candidate edges one sort of all of them is faster than another round's fixed costs
#: (a partition and a filtering pass)
_PREFIX_MIN_EDGES = 30_000


def _edge_order(w: np.ndarray) -> np.ndarray:
    """Positions sorted by (weight descending, position ascending): numpy's fast unstable sort, then the
    runs of equal weights (common for weights that were float32) put back in position order. Small
    arrays take the stable sort at once (the run repair costs more than the sort saves)."""
    if w.size < 4096:
        return np.argsort(-w, kind="stable")
    order = np.argsort(-w)
    ws = w[order]
    eq = ws[1:] == ws[:-1]
    if eq.any():
        tied = np.zeros(w.size, dtype=bool)
        tied[1:] = eq
        tied[:-1] |= eq
        slots = np.flatnonzero(tied)
        group = np.concatenate([[0], np.cumsum(~eq)])[slots]
        sub = order[slots]
        order[slots] = sub[np.lexsort((sub, group))]
    return order


def _kruskal(n: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Positions of the maximum spanning forest of edges ``(a, b, w)`` (``w > 0``) under the order (weight
    descending, position ascending), *in that order* (the order of the diagram's deaths).

    Kruskal with a compiled union-find (:mod:`._kruskal_kernel`) on prefixes of the edge order: with ``F``
    the forest so far and ``C`` the edges not yet considered that join two different components of ``F``
    (every other later edge closes a cycle of heavier edges), the forest of the whole graph is ``F`` plus
    the forest Kruskal continues to grow from ``C``. Each round takes the heaviest ``~2 × #components``
    edges of ``C`` (a ``partition``, ties at the threshold included, so it is a prefix of the order), sorts
    only those, continues the union-find over them, and drops from the rest the edges inside the new
    components. A random graph spans after one round; hub-dominated weights need a few more. Small graphs
    take one round: one sort and one union-find pass.
    """
    from . import _kruskal_kernel as kern

    a = a.astype(np.int64, copy=False)
    b = b.astype(np.int64, copy=False)
    parent = np.arange(n, dtype=np.int64)
    parts = []
    cand = None  # None: every edge, in position order
    n_comp = n
    while True:
        size = w.size if cand is None else cand.size
        k = int(_PREFIX_PER_VERTEX * n_comp)
        cw = w if cand is None else w[cand]
        if size < max(_PREFIX_MIN_RATIO * k, _PREFIX_MIN_EDGES) or k < 1:
            order = _edge_order(cw) if cand is None else cand[_edge_order(cw)]
            rest = None
        else:
            t = np.partition(cw, size - k)[size - k]
            top = cw >= t
            if cand is None:
                head = np.flatnonzero(top)
                rest = np.flatnonzero(~top)
            else:
                head, rest = cand[top], cand[~top]
            order = head[_edge_order(w[head])]
        sel = kern.union_pass(parent, a, b, order, n_comp - 1)
        parts.append(sel)
        n_comp -= sel.size
        if rest is None or n_comp == 1:
            break
        cand = kern.crossing(parent, a, b, rest)
        if cand.size == 0:
            break
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _kruskal_cost(n_vertices: int, n_edges: int) -> float:
    # Pessimistic: one sort of every edge and a union-find pass over twice as many half-edges. The prefix
    # rounds usually sort far fewer, but how many depends on the weights (hub-dominated ones need several
    # rounds), while Prim's cost does not. Constants measured on this machine (bench_persistence.py).
    return 5e-5 + 3e-8 * n_edges


def _pick_method(g: LayerGraph) -> str:
    # Prim costs ~|V| numpy steps of O(n_in + n_out) each plus a fixed overhead per step, whatever the
    # sparsity; Kruskal costs a (partial) sort of the present edges.
    n_out, n_in = g.weights.shape
    n_v = n_in + n_out
    prim = n_v * (10e-6 + 1.5e-9 * n_v) + 4e-9 * (n_in * n_out)
    return "prim" if prim <= _kruskal_cost(n_v, g.edges()[3].size) else "kruskal"


def _native_forest(g: LayerGraph, method: str) -> np.ndarray:
    """Flat edge indices (increasing) of the maximum spanning forest; ``method`` already resolved."""
    if method == "prim":
        j, i = _prim_dense(g.weights, g.mask)
        return np.sort(j * g.n_in + i)
    u, v, w, idx = g.edges()
    sel = _kruskal(g.n_vertices, u, v, w) if method == "kruskal" else _boruvka(g.n_vertices, u, v, w)
    return idx[np.sort(sel)]


def _forest_mask(g: LayerGraph, flat: np.ndarray) -> np.ndarray:
    mask = np.zeros(g.weights.shape, dtype=bool)
    mask.ravel()[flat] = True
    return mask


def _native_msf(g: LayerGraph, method: str) -> np.ndarray:
    """Boolean MSF mask ``(n_out, n_in)``."""
    return _forest_mask(g, _native_forest(g, _pick_method(g) if method == "auto" else method))


def _gudhi_edges(
    n_vertices: int, u: np.ndarray, v: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, int, np.ndarray]:
    """gudhi on an edge list: finite deaths ``w̃``, essential count, merging edges ``(k, 2)``, low id first."""
    import gudhi

    st = gudhi.SimplexTree()
    st.insert_batch(np.arange(n_vertices, dtype=np.int64)[None, :], np.zeros(n_vertices))
    st.insert_batch(np.vstack([u, v]), 1.0 - w)
    # min_persistence=-1 keeps the zero-length pairs (vertices killed by a w̃ = 1 edge, at filtration 0);
    # persistence_dim_max makes gudhi report H0 of a complex without edges (else it returns nothing).
    st.compute_persistence(min_persistence=-1.0, persistence_dim_max=True)
    iv = st.persistence_intervals_in_dimension(0).reshape(-1, 2)
    finite = np.isfinite(iv[:, 1])
    # gudhi returns which edge killed each class only as a Python list; converting it is bounded by |V|.
    pairs = st.persistence_pairs()
    edges = np.array([p[1] for p in pairs if len(p[0]) == 1 and len(p[1]) == 2], dtype=np.int64)
    edges = np.sort(edges.reshape(-1, 2), axis=1)
    return 1.0 - iv[finite, 1], int((~finite).sum()), edges


def _gudhi_diagram(g: LayerGraph) -> tuple[np.ndarray, int, np.ndarray]:
    u, v, w, _ = g.edges()
    deaths, n_ess, edges = _gudhi_edges(g.n_vertices, u, v, w)
    mask = np.zeros(g.weights.shape, dtype=bool)
    mask[edges[:, 1] - g.n_in, edges[:, 0]] = True
    return deaths, n_ess, mask


def _ripser_edges(n_vertices: int, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, int]:
    from ripser import ripser

    # ripser reads a stored 0 as "no edge" and computes in float32, which would round a death w̃ below
    # ~6e-8 to 0 (outside (0, 1], so the diagram's own from_json refused it). H0 pairs depend only on the
    # order of the edges, so ripser gets each edge's rank among the distinct weights, heaviest first,
    # plus 1 (no stored 0): integers up to 2**24 are exact in float32, and each death's rank maps back to
    # its float64 w̃ exactly. Vertex births stay 0 (empty diagonal).
    uniq, inv = np.unique(w, return_inverse=True)
    if uniq.size <= _RIPSER_MAX_RANKS:
        d = (uniq.size - inv).astype(np.float64)  # heaviest -> 1
    else:  # more distinct weights than float32 integers: shifted distances (see _RIPSER_OFFSET)
        d = (1.0 - w) + _RIPSER_OFFSET
    D = sparse.coo_matrix((np.concatenate([d, d]), (np.concatenate([u, v]), np.concatenate([v, u]))),
                          shape=(n_vertices,) * 2)
    dgm = ripser(D, maxdim=0, distance_matrix=True)["dgms"][0]
    finite = np.isfinite(dgm[:, 1])
    if uniq.size <= _RIPSER_MAX_RANKS:
        deaths = uniq[uniq.size - np.rint(dgm[finite, 1]).astype(np.int64)]
    else:
        # float32 rounding leaves ~1e-7: a death below that reads as 0, which no edge (w̃ > 0) has, so it
        # is clipped to the smallest positive float (within ripser's precision of the true w̃)
        deaths = np.clip(1.0 - (dgm[finite, 1].astype(np.float64) - _RIPSER_OFFSET), _TINY, 1.0)
    return deaths, int((~finite).sum())


def _ripser_diagram(g: LayerGraph) -> tuple[np.ndarray, int]:
    u, v, w, _ = g.edges()
    return _ripser_edges(g.n_vertices, u, v, w)


# ----------------------------------------------------------------------------------------------- result
class _H0Diagram:
    """Conventions shared by layer and network diagrams (needs ``deaths`` and ``n_essential``)."""

    deaths: np.ndarray
    n_essential: int

    @property
    def births(self) -> np.ndarray:
        return np.ones_like(self.deaths)

    @property
    def persistence(self) -> np.ndarray:
        """Lifetimes ``1 − w̃_e`` of the finite pairs."""
        return 1.0 - self.deaths

    def pairs(self, convention: str = "superlevel", *, essential: bool = False) -> np.ndarray:
        """``(n, 2)`` array of (birth, death): superlevel ``(1, w̃_e)`` or sublevel ``(0, 1 − w̃_e)``;
        with ``essential=True`` the essential classes are appended as ``(1, -inf)`` / ``(0, inf)``."""
        check_choice(convention, "convention", ("superlevel", "sublevel"))
        if convention == "superlevel":
            out = np.column_stack([self.births, self.deaths])
            ess = np.tile([1.0, -np.inf], (self.n_essential, 1))
        else:
            out = np.column_stack([np.zeros_like(self.deaths), 1.0 - self.deaths])
            ess = np.tile([0.0, np.inf], (self.n_essential, 1))
        return np.vstack([out, ess]) if essential else out

    def to_gudhi(self) -> list[tuple[int, tuple[float, float]]]:
        """gudhi's ``persistence()`` format (sublevel of ``1 − w̃``), essential classes last."""
        return [(0, (float(b), float(d))) for b, d in self.pairs("sublevel", essential=True)]

    #: fields too large for JSON (one bool per weight); to_dict says how to recompute them instead
    _UNSAVED: tuple[str, ...] = ()
    _UNSAVED_NOTE = ""

    def to_dict(self) -> dict[str, Any]:
        """Summary fields plus the pairs: ``births`` (all 1, superlevel) and ``deaths`` of the finite
        pairs and ``n_essential`` (death ``-inf``); for a network also ``death_layers``. The forest masks
        are left out (too large); ``msf_mask_note`` says how to recompute them. :meth:`from_dict` /
        :meth:`from_json` rebuild the diagram."""
        out = super().to_dict()
        out["births"] = self.births.tolist()
        out["deaths"] = self.deaths.tolist()
        if getattr(self, "death_layers", None) is not None:
            out["death_layers"] = self.death_layers.tolist()
        out["msf_mask_note"] = self._UNSAVED_NOTE
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """The diagram saved by :meth:`to_dict` (forest masks None: see ``msf_mask_note``)."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict from to_dict(), got {type(data).__name__}")
        births = np.asarray(data.get("births", []), dtype=np.float64)
        if not np.all(births == 1.0):
            raise ValueError("births must all be 1 (superlevel filtration of w̃): not a netgeom H0 diagram")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in cls._UNSAVED:
                kwargs[f.name] = None
            elif f.name in data:
                v = data[f.name]
                kwargs[f.name] = float(v) if isinstance(v, str) and v in ("inf", "-inf", "nan") else v
            elif f.name != "death_layers":
                raise ValueError(f"data has no field {f.name!r}: not from {cls.__name__}.to_dict()")
        deaths = check_array(data["deaths"], "deaths", ndim=1, dtype=np.float64)
        if births.size != deaths.size:
            raise ValueError(f"{births.size} births but {deaths.size} deaths")
        # a file is not trusted: every count and value must be one a diagram of w̃ in (0, 1] can have
        if deaths.size and not ((deaths > 0) & (deaths <= 1)).all():
            raise ValueError("deaths must lie in (0, 1] (values of w̃): not a netgeom H0 diagram")
        for key in ("n_vertices", "n_edges", "n_pairs", "n_essential", "n_in", "n_out"):
            if key in kwargs:
                v = kwargs[key]
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"{key} must be a non-negative integer, got {v!r}")
        if kwargs.get("n_pairs") != deaths.size:
            raise ValueError(f"n_pairs = {kwargs.get('n_pairs')!r} but the diagram has {deaths.size} deaths")
        if kwargs["n_pairs"] + kwargs["n_essential"] != kwargs["n_vertices"]:
            raise ValueError("n_pairs + n_essential must equal n_vertices (every vertex is born once)")
        total = kwargs.get("total_persistence")
        if not isinstance(total, (int, float)) or isinstance(total, bool) or not math.isclose(
            float(total), float((1.0 - deaths).sum()), rel_tol=1e-9, abs_tol=1e-12
        ):
            raise ValueError(f"total_persistence = {total!r} is not the sum of 1 − death over the deaths")
        kwargs["deaths"] = deaths
        if "death_layers" in kwargs:
            dl = kwargs["death_layers"]
            if dl is not None:
                a = np.asarray(dl)
                if a.size and a.dtype.kind not in "iu":
                    raise ValueError(f"death_layers must be integer layer numbers, got dtype {a.dtype}")
                dl = a.astype(np.int64)
            kwargs["death_layers"] = dl
        if {"n_in", "n_out"} <= kwargs.keys() and kwargs["n_in"] + kwargs["n_out"] != kwargs["n_vertices"]:
            raise ValueError("n_in + n_out must equal n_vertices (a layer graph's vertices)")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, source: Any):
        """:meth:`from_dict` of a JSON text (as returned by ``to_json()``) or of a file path."""
        import json
        from pathlib import Path

        inline = isinstance(source, str) and source.lstrip().startswith("{")
        text = source if inline else Path(source).read_text()
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("not a diagram: the JSON is nested too deeply to parse") from None
        return cls.from_dict(data)

    def equals(self, other: _H0Diagram, atol: float = 1e-12) -> bool:
        """Same essential count and the same finite deaths as multisets, within ``atol``."""
        return (
            self.n_essential == other.n_essential
            and self.deaths.shape == other.deaths.shape
            and bool(np.allclose(np.sort(self.deaths), np.sort(other.deaths), rtol=0.0, atol=atol))
        )


@dataclasses.dataclass
class ZerothDiagram(_H0Diagram, Result):
    """The 0-dimensional persistence diagram of a weight graph (superlevel filtration of ``w̃``).

    ``deaths`` (sorted, descending) are the ``w̃`` of the merging (MSF) edges; every finite pair is
    ``(1, death)``. ``n_essential`` classes (one per connected component) never die: their death is
    ``essential_death = -inf`` here (``+inf`` in the sublevel/gudhi form); ``min_value`` is the graph's
    lowest ``w̃``. ``msf_mask`` (``(n_out, n_in)`` bool) marks the forest; None for the ripser backend,
    which does not report the merging edges.
    """

    name: str | None
    backend: str
    method: str | None
    normalize: str
    kind: str
    aggregate: str | None
    n_in: int
    n_out: int
    n_vertices: int
    n_edges: int
    n_pairs: int
    n_essential: int
    essential_death: float
    min_value: float
    total_persistence: float
    deaths: np.ndarray = dataclasses.field(repr=False)
    msf_mask: np.ndarray | None = dataclasses.field(default=None, repr=False)

    _UNSAVED = ("msf_mask",)
    _UNSAVED_NOTE = (
        "the forest mask (n_out x n_in bool) is not saved: recompute it with "
        "zeroth_persistence(weights, mask).msf_mask or spanning_forest_mask(weights, mask)"
    )

    def plot(self, ax=None, kind: str = "diagram"):
        """``kind="diagram"``: sublevel diagram (0, 1 − w̃) with essential classes on an ∞ line;
        ``kind="barcode"``: one bar per class from 1 down to its death (essential bars to ``min_value``)."""
        check_choice(kind, "kind", ("diagram", "barcode"))
        _, ax = new_axes(ax)
        if kind == "diagram":
            d = 1.0 - self.deaths
            top = 1.05 * max(1.0, float(d.max()) if d.size else 1.0)
            ax.scatter(np.zeros_like(d), d, s=12, alpha=0.6, label=f"finite ({self.n_pairs})")
            if self.n_essential:
                ax.scatter([0.0], [top], marker="^", color="C3", label=f"essential ({self.n_essential}, ∞)")
            ax.plot([0, top], [0, top], "k--", lw=0.8)
            ax.set_xlabel("birth (1 − w̃)")
            ax.set_ylabel("death (1 − w̃)")
            ax.set_xlim(-0.05, top)
            ax.legend(loc="lower right", fontsize=8)
        else:
            deaths = np.concatenate([np.sort(self.deaths)[::-1], np.full(self.n_essential, self.min_value)])
            y = np.arange(deaths.size)
            ax.hlines(y, deaths, 1.0, lw=1.0, color=["C0"] * self.n_pairs + ["C3"] * self.n_essential)
            ax.set_xlim(1.02, min(0.0, self.min_value) - 0.02)
            ax.set_xlabel("threshold w̃ (superlevel, decreasing)")
            ax.set_ylabel("class")
        ax.set_title(f"H0 of {self.name or 'weight graph'} ({self.backend})")
        return ax


@dataclasses.dataclass
class NetworkZerothDiagram(_H0Diagram, Result):
    """The 0-dimensional diagram of a whole chained network graph (superlevel filtration of ``w̃``).

    Vertices are all neurons of all layers (layer ``l``'s outputs are layer ``l + 1``'s inputs), edges all
    unmasked weights with ``w̃`` normalised per layer or over the network (``normalize``). As for a layer,
    ``deaths`` (descending) are the ``w̃`` of the maximum-spanning-forest edges, ``n_essential`` the number of
    connected components (essential death ``-inf``), ``min_value`` the lowest ``w̃`` in the network.
    ``death_layers[k]`` is the layer whose edge merged at ``deaths[k]`` and ``msf_masks`` the forest as one
    ``(n_out, n_in)`` bool array per weight, keyed by ``param_name`` (:meth:`as_masks` gives a ``Masks``): a
    weight applied several times in ``forward`` is several layers here, and its mask is the union of their
    forests, which keeps the network diagram when everything else is pruned. Both are None for the
    ripser backend, which does not report merging edges.
    """

    backend: str
    method: str | None
    normalize: str
    widths: list[int]
    layer_names: list[str | None]
    param_names: list[str | None]
    layer_kinds: list[str]
    aggregate: str | None
    n_vertices: int
    n_edges: int
    n_pairs: int
    n_essential: int
    essential_death: float
    min_value: float
    total_persistence: float
    layer_n_pairs: list[int] | None
    deaths: np.ndarray = dataclasses.field(repr=False)
    death_layers: np.ndarray | None = dataclasses.field(default=None, repr=False)
    msf_masks: dict[str, np.ndarray] | None = dataclasses.field(default=None, repr=False)

    _UNSAVED = ("msf_masks",)
    _UNSAVED_NOTE = (
        "the forest masks (one n_out x n_in bool array per layer) are not saved: recompute them with "
        "zeroth_persistence(network_graph(model, masks, ...)).msf_masks (spanning_forest_mask for one layer)"
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkZerothDiagram:
        """The diagram saved by :meth:`to_dict` (forest masks None: see ``msf_mask_note``); the per-layer
        fields are checked against each other and against the pairs (a file is not trusted)."""
        d = super().from_dict(data)
        widths = d.widths
        if (not isinstance(widths, list) or len(widths) < 2
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in widths)):
            raise ValueError(f"widths must be a list of at least 2 positive integers, got {widths!r}")
        if sum(widths) != d.n_vertices:
            raise ValueError(f"widths {widths} sum to {sum(widths)}, but n_vertices = {d.n_vertices}")
        n_layers = len(widths) - 1
        for key in ("layer_names", "param_names", "layer_kinds"):
            v = getattr(d, key)
            if not isinstance(v, list) or len(v) != n_layers:
                raise ValueError(f"{key} must be a list of {n_layers} entries (one per layer), got {v!r}")
        if d.n_pairs > d.n_edges:
            raise ValueError(f"n_pairs = {d.n_pairs} > n_edges = {d.n_edges}: a forest is a set of edges")
        lp = d.layer_n_pairs
        if lp is not None:
            cap = [a + b - 1 for a, b in zip(widths[:-1], widths[1:])]
            if (not isinstance(lp, list) or len(lp) != n_layers
                    or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= c
                           for x, c in zip(lp, cap))
                    or sum(lp) != d.n_pairs):
                raise ValueError(
                    f"layer_n_pairs must be {n_layers} integers, layer l's within 0..n_in + n_out - 1 "
                    f"({cap}), summing to n_pairs = {d.n_pairs}; got {lp!r}"
                )
        dl = d.death_layers
        if dl is not None:
            if dl.ndim != 1 or dl.size != d.n_pairs:
                raise ValueError(
                    f"death_layers must have one entry per finite pair ({d.n_pairs}), got {dl.size}"
                )
            if dl.size and (dl.min() < 0 or dl.max() >= n_layers):
                bad = sorted({int(x) for x in dl if not 0 <= x < n_layers})
                raise ValueError(f"death_layers must be layer numbers 0..{n_layers - 1}, got {bad}")
            counts = np.bincount(dl, minlength=n_layers).tolist()
            if lp is not None and counts != lp:
                raise ValueError(f"death_layers count {counts} pairs per layer but layer_n_pairs says {lp}")
        return d

    def as_masks(self):
        """The forest as a :class:`~netgeom.pruning.masks.Masks` (torch bool, one tensor per weight).

        Only for graphs whose edges are the weights themselves (``"linear"``/``"matrix"`` layers); the
        forest of a channel graph is per channel pair: use ``spanning_forest_protect(scope="network")``.
        """
        from ..pruning.masks import Masks

        if self.msf_masks is None:
            raise ValueError(f"the {self.backend} backend does not report the forest; use backend='native'")
        bad = [k for k in self.layer_kinds if k not in ("linear", "matrix")]
        if bad:
            raise ValueError(
                f"layers of kind {sorted(set(bad))} have graph edges that are not single weights; "
                "use spanning_forest_protect(model, masks, scope='network') for kernel-shaped masks"
            )
        return Masks({k: torch.from_numpy(v.copy()) for k, v in self.msf_masks.items()})

    def plot(self, ax=None, kind: str = "barcode"):
        """Diagram or barcode with each finite class coloured by the layer of its merging edge.

        ``kind="barcode"``: one bar per class from 1 down to its death ``w̃_e`` (superlevel, threshold
        decreasing to the right); essential bars (grey) run to ``min_value``. ``kind="diagram"``: the
        sublevel diagram ``(0, 1 − w̃_e)``, one colour per layer, essential classes on an ∞ line.
        """
        check_choice(kind, "kind", ("diagram", "barcode"))
        if self.death_layers is None:
            raise ValueError(f"the {self.backend} backend does not report merging edges: no layer colours")
        _, ax = new_axes(ax)
        names = [f"layer {n if n is not None else k}" for k, n in enumerate(self.layer_names)]
        if kind == "barcode":
            y0 = 0
            for k, name in enumerate(names):
                d = self.deaths[self.death_layers == k]
                if d.size:
                    ax.hlines(y0 + np.arange(d.size), d, 1.0, lw=1.0, color=f"C{k}",
                              label=f"{name} ({d.size})")
                y0 += d.size
            if self.n_essential:
                ax.hlines(y0 + np.arange(self.n_essential), self.min_value, 1.0, lw=1.0, color="0.5",
                          label=f"essential ({self.n_essential})")
            ax.set_xlim(1.02, min(0.0, self.min_value) - 0.02)
            ax.set_xlabel("threshold w̃ (superlevel, decreasing)")
            ax.set_ylabel("class (grouped by layer of the merging edge)")
        else:
            top = 1.05 * max(1.0, float((1.0 - self.deaths).max()) if self.deaths.size else 1.0)
            for k, name in enumerate(names):
                d = 1.0 - self.deaths[self.death_layers == k]
                if d.size:
                    ax.scatter(np.zeros_like(d), d, s=14, alpha=0.5, color=f"C{k}",
                               label=f"{name} ({d.size})")
            if self.n_essential:
                ax.scatter([0.0], [top], marker="^", color="0.5", label=f"essential ({self.n_essential}, ∞)")
            ax.plot([0, top], [0, top], "k--", lw=0.8)
            ax.set_xlim(-0.05, top)
            ax.set_xlabel("birth (1 − w̃)")
            ax.set_ylabel("death (1 − w̃)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"H0 of the network graph {'-'.join(map(str, self.widths))} ({self.normalize} w̃, "
                     f"{self.backend})")
        return ax


# ---------------------------------------------------------------------------------------------- network
def _check_network(G: NetworkGraph) -> None:
    if not G.layers:
        raise ValueError("the network graph has no layer")
    bad = [g for g in G.layers if not isinstance(g, LayerGraph)]
    if bad:
        raise TypeError(f"the network graph's layers must be LayerGraphs, got {type(bad[0]).__name__}")
    if not G.chained:
        G.global_edges()  # raises the explanatory "do not chain" error


def _network_native(G: NetworkGraph, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The chained graph's MSF under the network order (weight descending, then layer, then flat index):
    its ``w̃`` in that order (the deaths), the layer of each, its edges as flat indices into the layers'
    weight matrices laid end to end, and the lowest ``w̃`` of the network (NaN without edges).

    Per-layer methods use the cycle property: an edge that is the lightest on a cycle of its own layer
    graph is the lightest on that cycle in the network too, so the network MSF lies inside the union of
    the layer MSFs; a Kruskal pass over that union (``~|V|`` edges) finishes. ``"global"`` runs Kruskal on
    every edge of the network at once. Edges are listed layer by layer in flat-index order, which is CSR
    order by (output vertex, input vertex), the order Kruskal's tie-break needs.
    """
    if method == "global":
        n, u, v, w, flat, bases = G._network_edges()
        low = float(w.min()) if w.size else math.nan
    else:
        offsets, bases = [0], [0]
        for g in G:
            offsets.append(offsets[-1] + g.n_in)
            bases.append(bases[-1] + g.n_possible)
        n = offsets[-1] + G.layers[-1].n_out
        lists = []
        for g in G:
            cand = _native_forest(g, _pick_method(g) if method == "auto" else method)
            j, i = np.divmod(cand, g.n_in)
            lists.append((i, j + g.n_in, g.weights.ravel()[cand], cand))
        u = np.concatenate([e[0] + off for e, off in zip(lists, offsets)])
        v = np.concatenate([e[1] + off for e, off in zip(lists, offsets)])
        w = np.concatenate([e[2] for e in lists])
        flat = np.concatenate([e[3] + base for e, base in zip(lists, bases)])
        mins = [float(g.edges()[2].min()) for g in G if g.n_edges]
        low = min(mins) if mins else math.nan
    sel = _kruskal(n, u, v, w)
    flat = flat[sel]
    lay = np.searchsorted(bases, flat, side="right") - 1
    return w[sel], lay, flat, low


def _network_persistence(G: NetworkGraph, backend: str, method: str) -> NetworkZerothDiagram:
    check_choice(method, "method", NETWORK_METHODS)
    _check_network(G)
    used_method = None
    forests = masks = death_layers = None
    layers = G.layers
    shapes = [g.weights.shape for g in layers]
    n_vertices = sum(s[1] for s in shapes) + shapes[-1][0]
    if backend == "native":
        if method == "auto":
            layer_methods = [_pick_method(g) for g in layers]
        else:
            layer_methods = [method] * len(layers)
        # When every layer would run Kruskal anyway, one Kruskal over all edges saves the merge pass and
        # the per-layer fixed costs.
        if method == "global" or (method == "auto" and all(m == "kruskal" for m in layer_methods)):
            used_method = "global"
        else:
            used_method = f"layers({','.join(layer_methods)})+merge"
        deaths, death_layers, flat, min_value = _network_native(
            G, "global" if used_method == "global" else method
        )
        n_ess = n_vertices - deaths.size
        # one buffer for all layers' forest masks, each layer's mask a view of its part
        sizes = [a * b for a, b in shapes]
        buf = np.zeros(sum(sizes), dtype=bool)
        buf[flat] = True
        masks, b0 = [], 0
        for shape, size in zip(shapes, sizes):
            masks.append(buf[b0 : b0 + size].reshape(shape))
            b0 += size
        layer_n_pairs = np.bincount(death_layers, minlength=len(layers)).tolist()
    elif backend == "gudhi":
        deaths, n_ess, edges = _gudhi_edges(*G.global_edges())
        offsets = G.vertex_offsets
        # the low end of an edge is an input of its layer: the layer whose input block holds it
        lay = np.searchsorted(offsets, edges[:, 0], side="right") - 1
        forests = []
        for k, g in enumerate(G):
            e = edges[lay == k]
            forests.append(np.sort((e[:, 1] - offsets[k + 1]) * g.n_in + (e[:, 0] - offsets[k])))
        masks = [_forest_mask(g, f) for g, f in zip(G, forests)]
        # the layers of gudhi's merging edges, in the order of its deaths (sorted like the native ones)
        w = np.concatenate([g.weights.ravel()[f] for g, f in zip(G, forests)])
        lay = np.concatenate([np.full(f.size, k, dtype=np.int64) for k, f in enumerate(forests)])
        death_layers = lay[_edge_order(w)]
        deaths = -np.sort(-deaths)
    else:
        deaths, n_ess = _ripser_edges(*G.global_edges())
        deaths = -np.sort(-deaths)
    if backend != "native":
        mins = [float(g.edges()[2].min()) for g in G if g.n_edges]
        min_value = min(mins) if mins else math.nan
        layer_n_pairs = None if forests is None else [int(f.size) for f in forests]
    return NetworkZerothDiagram(
        backend=backend,
        method=used_method,
        normalize=G.normalize,
        widths=[shapes[0][1]] + [s[0] for s in shapes],
        layer_names=[g.name for g in layers],
        param_names=[g.param_name for g in layers],
        layer_kinds=[g.kind for g in layers],
        aggregate=next((g.aggregate for g in layers if g.aggregate is not None), None),
        n_vertices=n_vertices,
        n_edges=sum(g.edges()[3].size for g in layers),
        n_pairs=int(deaths.size),
        n_essential=int(n_ess),
        essential_death=-math.inf,
        min_value=min_value,
        total_persistence=float((1.0 - deaths).sum()),
        layer_n_pairs=layer_n_pairs,
        deaths=deaths,
        death_layers=death_layers,
        msf_masks=None if masks is None else _masks_per_weight(layers, masks),
    )


def _masks_per_weight(layers: list[LayerGraph], masks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The forest as one mask per weight: a weight applied several times in ``forward`` is several layers
    of the network graph but one tensor, so its mask is the union (OR) of its uses' forests. Keeping that
    union and pruning the rest keeps the network forest: every dropped weight is a non-forest edge in every
    use, and removing non-forest edges changes neither the maximum spanning forest nor the scale (the
    heaviest edge is in the forest)."""
    out: dict[str, np.ndarray] = {}
    for k, (g, m) in enumerate(zip(layers, masks)):
        key = g.param_name if g.param_name is not None else f"layer{k}"
        prev = out.get(key)
        if prev is None:
            out[key] = m
        elif prev.shape != m.shape:
            raise ValueError(
                f"weight {key!r} is applied to inputs of different shapes, so its unrolled graphs differ and "
                "no one mask per weight describes its forest; use conv='channel'"
            )
        else:
            out[key] = prev | m
    return out


# ----------------------------------------------------------------------------------------------- public
def _check_given(graphs: list[LayerGraph], what: str, normalize: Any, conv: Any, aggregate: Any) -> None:
    """Options given with an already built graph must describe it: the graph is not rebuilt, so any other
    value would be ignored."""
    if normalize is not _UNSET:
        check_choice(normalize, "normalize", ("layer", "network"))
        have = graphs[0].normalize
        if normalize != have:
            raise ValueError(
                f"normalize={normalize!r} but the {what} is normalised by {have!r}: it is not renormalised "
                f"here (that would be ignored); build it with normalize={normalize!r} instead"
            )
    if conv is not _UNSET:
        check_choice(conv, "conv", ("channel", "unrolled"))
        kinds = {g.kind for g in graphs if g.kind in ("channel", "unrolled")}
        if kinds != {conv}:
            shown = f"{sorted(kinds)} graphs" if kinds else "no convolution graph"
            raise ValueError(
                f"conv={conv!r} does not describe the {what} ({shown}) and would be ignored: the graph is "
                "already built, leave conv= out (or build it with that conv)"
            )
    if aggregate is not _UNSET:
        check_choice(aggregate, "aggregate", ("l1", "l2", "max"))
        aggs = {g.aggregate for g in graphs if g.kind == "channel"}
        if aggs != {aggregate}:
            shown = f"channel graphs aggregated by {sorted(aggs)}" if aggs else "no channel graph"
            raise ValueError(
                f"aggregate={aggregate!r} does not describe the {what} ({shown}) and would be ignored: the "
                "graph is already built, leave aggregate= out (or build it with that aggregate)"
            )


def _as_graph(graph_or_weights: Any, mask: Any, normalize: Any, conv: Any, aggregate: Any) -> LayerGraph:
    if isinstance(graph_or_weights, LayerGraph):
        if mask is not None:
            raise ValueError("mask= cannot be combined with a LayerGraph (its mask is already set)")
        _check_given([graph_or_weights], "LayerGraph", normalize, conv, aggregate)
        return graph_or_weights  # validated and frozen when it was built
    single = (AffineLayer, torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    if not isinstance(graph_or_weights, single) and hasattr(graph_or_weights, "named_parameters"):
        raise TypeError(
            "zeroth_persistence takes a layer or a graph; for a model pass network_graph(model, masks)"
        )
    return layer_graph(graph_or_weights, mask, normalize="layer" if normalize is _UNSET else normalize,
                       conv=conv, aggregate=aggregate)


def zeroth_persistence(
    graph_or_weights: Any,
    mask: Any = None,
    *,
    backend: str = "native",
    method: str = "auto",
    normalize: str = _UNSET,
    conv: str = _UNSET,
    aggregate: str = _UNSET,
) -> ZerothDiagram:
    """The 0-dimensional persistence diagram of a weight graph and its maximum spanning forest.

    Parameters
    ----------
    graph_or_weights : a :class:`LayerGraph`, an ``AffineLayer``, a bare ``nn.Linear``/``nn.Conv*``
        module (channel graph for a convolution) or a ``(n_out, n_in)`` weight matrix
        (-> :class:`ZerothDiagram`), or a chained :class:`NetworkGraph` from ``network_graph`` (->
        :class:`NetworkZerothDiagram`: the diagram of the whole network graph, forest per layer).
    mask : boolean mask for a matrix or layer (True = kept; False = absent edge).
    backend : ``"native"`` (ours), ``"gudhi"`` (SimplexTree, float64) or ``"ripser"`` (run on the ranks
        of the distinct weights, exact up to 2**24 of them; beyond, float32 distances, ~1e-7, deaths
        clipped to the smallest positive float).
    method : native algorithm: ``"prim"`` (dense), ``"kruskal"``, ``"boruvka"`` (sparse) or ``"auto"``;
        for a network graph it is used per layer and the layer forests are merged, or ``"global"``:
        Kruskal on all edges. Only ``"auto"`` with the gudhi/ripser backends (anything else is refused).
    normalize, conv, aggregate : as in :func:`~netgeom.topology.layer_graph` (defaults ``"layer"``,
        ``"channel"``, ``"l1"``) when given a matrix or a layer. With a built ``LayerGraph`` /
        ``NetworkGraph`` they may only restate how it was built (a different value would be ignored, and
        is refused); ``conv`` and ``aggregate`` are refused for a graph or layer they do not apply to.

    Example
    -------
    >>> d = zeroth_persistence(np.array([[4.0, 1.0], [2.0, 3.0]]))
    >>> d.deaths.tolist(), d.n_essential, d.msf_mask.tolist()
    ([1.0, 0.75, 0.5], 1, [[True, False], [True, True]])
    >>> from netgeom.nets import mlp
    >>> from netgeom.topology import network_graph
    >>> D = zeroth_persistence(network_graph(mlp(4, [6], 3, seed=0), normalize="network"))
    >>> D.n_vertices, D.n_pairs, D.n_essential, {k: int(m.sum()) for k, m in D.msf_masks.items()}
    (13, 12, 1, {'0.weight': 8, '2.weight': 4})
    """
    check_choice(backend, "backend", BACKENDS)
    if backend != "native" and method != "auto":
        raise ValueError(
            f"method={method!r} chooses a native algorithm and would be ignored by backend={backend!r}: "
            "leave it out (or use backend='native')"
        )
    if isinstance(graph_or_weights, NetworkGraph):
        if mask is not None:
            raise ValueError("mask= cannot be combined with a NetworkGraph (give masks to network_graph)")
        if graph_or_weights.layers:
            _check_given(graph_or_weights.layers, "NetworkGraph", normalize, conv, aggregate)
        return _network_persistence(graph_or_weights, backend, method)
    check_choice(method, "method", METHODS)
    g = _as_graph(graph_or_weights, mask, normalize, conv, aggregate)
    msf = None
    used_method = None
    u, v, w, idx = g.edges()
    if backend == "native":
        used_method = _pick_method(g) if method == "auto" else method
        if used_method == "kruskal":  # the forest comes in the order of the deaths
            sel = _kruskal(g.n_vertices, u, v, w)
            flat, deaths = idx[sel], w[sel]
        else:
            flat = _native_forest(g, used_method)
            deaths = -np.sort(-g.weights.ravel()[flat])
        msf = _forest_mask(g, flat)
        n_ess = g.n_vertices - deaths.size
    elif backend == "gudhi":
        deaths, n_ess, msf = _gudhi_diagram(g)
        deaths = -np.sort(-deaths)
    else:
        deaths, n_ess = _ripser_diagram(g)
        deaths = -np.sort(-deaths)
    return ZerothDiagram(
        name=g.name,
        backend=backend,
        method=used_method,
        normalize=g.normalize,
        kind=g.kind,
        aggregate=g.aggregate,
        n_in=g.n_in,
        n_out=g.n_out,
        n_vertices=g.n_vertices,
        n_edges=g.n_edges,
        n_pairs=int(deaths.size),
        n_essential=int(n_ess),
        essential_death=-math.inf,
        min_value=float(w.min()) if w.size else math.nan,
        total_persistence=float((1.0 - deaths).sum()),
        deaths=deaths,
        msf_mask=msf,
    )


def spanning_forest_mask(weights: Any, mask: Any = None, *, method: str = "auto") -> np.ndarray:
    """Boolean mask (same shape as ``weights``) of the maximum spanning forest of ``|weights|``.

    ``weights`` may also be an ``AffineLayer`` (channel graph for convolutions) or a ``LayerGraph``.

    >>> spanning_forest_mask(np.array([[4.0, -1.0], [2.0, 3.0]])).tolist()
    [[True, False], [True, True]]
    """
    check_choice(method, "method", METHODS)
    g = _as_graph(weights, mask, _UNSET, _UNSET, _UNSET)
    return _native_msf(g, method)
