"""Zeroth persistence: native (Prim / Borůvka) vs gudhi vs ripser vs brute-force Kruskal vs scipy MST."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from netgeom.topology import layer_graph, spanning_forest_mask, zeroth_persistence


def random_graph(seed, n_out, n_in, kind, density):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        W = rng.normal(size=(n_out, n_in))
    elif kind == "ties":
        W = rng.integers(-3, 4, size=(n_out, n_in)).astype(float)  # many ties and zero-valued weights
    else:  # disconnected parts: two blocks with no edge between them
        W = rng.normal(size=(n_out, n_in))
        W[: n_out // 2, n_in // 2 :] = 0.0
    mask = rng.random((n_out, n_in)) < density
    if kind == "blocks":
        mask[: n_out // 2, n_in // 2 :] = False
    mask.flat[rng.integers(mask.size)] = True  # usually at least one edge (unless that weight is 0)
    return W, mask


def kruskal_deaths(W, mask):
    """Reference: plain Kruskal with a Python union-find (small graphs only); zero weights are absent."""
    n_out, n_in = W.shape
    mask = mask & (W != 0)
    w = np.abs(W) / np.abs(W[mask]).max() if mask.any() else np.zeros_like(W)
    parent = list(range(n_in + n_out))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    edges = [(w[j, i], i, n_in + j) for j in range(n_out) for i in range(n_in) if mask[j, i]]
    edges.sort(reverse=True)
    deaths = []
    for wt, a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            deaths.append(wt)
    return np.sort(deaths)


def n_components(mask):
    """Connected components of the bipartite graph of ``mask`` (vertices with no edge count)."""
    n_out, n_in = mask.shape
    j, i = np.nonzero(mask)
    A = sparse.coo_matrix((np.ones(i.size), (i, n_in + j)), shape=(n_in + n_out,) * 2)
    return connected_components(A, directed=False)[0]


graphs = st.tuples(
    st.integers(0, 10**6),
    st.integers(1, 9),
    st.integers(1, 9),
    st.sampled_from(["normal", "ties", "blocks"]),
    st.floats(0.05, 1.0),
)


@settings(max_examples=40, deadline=None)
@given(graphs)
def test_native_matches_gudhi_ripser_kruskal(params):
    W, mask = random_graph(*params)
    g = layer_graph(W, mask)
    prim = zeroth_persistence(g, method="prim")
    bor = zeroth_persistence(g, method="boruvka")
    kru = zeroth_persistence(g, method="kruskal")
    gud = zeroth_persistence(g, backend="gudhi")
    rip = zeroth_persistence(g, backend="ripser")
    # the native algorithms implement the same total order, so the same forest, not just the same diagram
    assert np.array_equal(prim.msf_mask, bor.msf_mask) and np.array_equal(prim.msf_mask, kru.msf_mask)
    assert prim.equals(gud, atol=1e-12) and prim.equals(rip, atol=1e-6)
    np.testing.assert_allclose(np.sort(prim.deaths), kruskal_deaths(W, mask), atol=1e-15)
    mask = mask & (W != 0)  # zero weights are absent edges
    assert np.array_equal(g.mask, mask)
    comps = n_components(mask)
    assert prim.n_essential == comps == gud.n_essential == rip.n_essential
    assert prim.n_pairs == g.n_vertices - comps == int(prim.msf_mask.sum())
    assert not (prim.msf_mask & ~mask).any()
    assert n_components(prim.msf_mask) == comps  # a spanning forest: same components, |V| - c edges
    # maximum weight: scipy's minimum spanning tree of 2 - w̃ (shifted so that no stored value is 0)
    j, i = np.nonzero(mask)
    D = sparse.coo_matrix((2.0 - g.weights[j, i], (i, g.n_in + j)), shape=(g.n_vertices,) * 2).tocsr()
    T = minimum_spanning_tree(D)
    assert T.nnz == prim.n_pairs
    assert np.isclose(2.0 * T.nnz - T.sum(), g.weights[prim.msf_mask].sum(), atol=1e-9)
    # gudhi's forest is a maximum one too (same total weight), possibly a different tie-break
    assert np.isclose(g.weights[gud.msf_mask].sum(), g.weights[prim.msf_mask].sum(), atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**6), st.integers(2, 8), st.integers(2, 8))
def test_diagram_invariant_under_tie_break(seed, n_out, n_in):
    rng = np.random.default_rng(seed)
    W = rng.integers(0, 3, size=(n_out, n_in)).astype(float)  # heavy ties
    mask = rng.random(W.shape) < 0.7
    mask[0, 0] = True
    base = zeroth_persistence(W, mask)
    # permuting rows and columns changes which tied edge has the smaller index
    pr, pc = rng.permutation(n_out), rng.permutation(n_in)
    perm = zeroth_persistence(W[pr][:, pc], mask[pr][:, pc])
    assert base.equals(perm, atol=0.0)
    # and the native forest is deterministic: same input, same mask
    assert np.array_equal(zeroth_persistence(W, mask).msf_mask, base.msf_mask)


def test_tie_break_rule_is_smallest_edge_index():
    # all weights equal: Kruskal on the stable order takes edges in flat-index order when they merge
    d = zeroth_persistence(np.ones((2, 3)))
    assert d.msf_mask.tolist() == [[True, True, True], [True, False, False]]
    assert d.deaths.tolist() == [1.0] * 4 and d.n_essential == 1
    assert zeroth_persistence(np.ones((2, 3)), backend="ripser").deaths.size == 4  # w̃ = 1 edges survive


def test_large_dense_and_sparse_agree():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(150, 230))
    for density in (1.0, 0.1):
        mask = rng.random(W.shape) < density
        g = layer_graph(W, mask)
        a = zeroth_persistence(g, method="prim")
        assert np.array_equal(a.msf_mask, zeroth_persistence(g, method="boruvka").msf_mask)
        assert np.array_equal(a.msf_mask, zeroth_persistence(g, method="kruskal").msf_mask)
        assert a.equals(zeroth_persistence(g, backend="gudhi"), atol=1e-12)
        assert a.equals(zeroth_persistence(g, backend="ripser"), atol=1e-6)


def test_zero_weight_is_an_absent_edge_like_a_pruned_one():
    W = np.array([[1.0, 0.0]])
    d = zeroth_persistence(W)  # 3 vertices, 1 edge: the zero weight is absent, input 1 isolated
    d2 = zeroth_persistence(W, np.array([[True, False]]))  # the same weight pruned
    for e in (d, d2, zeroth_persistence(W, backend="gudhi"), zeroth_persistence(W, backend="ripser")):
        assert e.deaths.tolist() == [1.0] and e.n_essential == 2 and e.n_edges == 1
    assert np.array_equal(d.msf_mask, d2.msf_mask) and d.min_value == 1.0
    # continuity: a tiny weight is a pair (1, ε) whose death tends to 0, where essential classes close;
    # the total with essential classes closed at 0 is continuous, the finite part loses that one pair
    for eps in (1e-3, 1e-30, 1e-300):
        t = zeroth_persistence(np.array([[1.0, eps]]))
        assert t.n_pairs == 2 and t.n_essential == 1
        closed = t.total_persistence + t.n_essential
        assert abs(closed - (d.total_persistence + d.n_essential)) <= eps
    # a w̃ that underflows to 0 in float64 is a zero weight
    u = zeroth_persistence(np.array([[1e300, 1e-300]]))
    assert u.n_edges == 1 and u.n_essential == 2


@pytest.mark.parametrize("backend", ["native", "gudhi", "ripser"])
@pytest.mark.parametrize("how", ["zeros", "pruned", "pruned zeros"])
def test_all_zero_and_all_pruned_layers_have_no_edge(backend, how):
    W = np.zeros((4, 5)) if "zeros" in how else np.ones((4, 5))
    mask = np.zeros((4, 5), bool) if "pruned" in how else None
    d = zeroth_persistence(W, mask, backend=backend)
    assert d.n_edges == 0 and d.n_pairs == 0 and d.n_essential == 9 and d.total_persistence == 0.0
    assert np.isnan(d.min_value) and d.deaths.size == 0
    if backend != "ripser":
        assert not d.msf_mask.any() and d.msf_mask.shape == (4, 5)
    # tiny uniform weights normalise to 1 per layer: every pair at death 1, nothing persists either
    assert zeroth_persistence(np.full((4, 5), 1e-30)).total_persistence == 0.0
    assert not spanning_forest_mask(W, mask).any()
    assert d.plot(kind="barcode") is not None and isinstance(d.to_json(), str)


def test_conventions_and_gudhi_format():
    import gudhi

    W = np.array([[4.0, 1.0, 0.0], [2.0, 3.0, 0.0]])
    mask = np.array([[True, True, False], [True, True, False]])  # input 2 isolated
    d = zeroth_persistence(W, mask)
    assert d.deaths.tolist() == [1.0, 0.75, 0.5] and d.n_essential == 2 and d.essential_death == -np.inf
    sup = d.pairs("superlevel", essential=True)
    assert sup[:3].tolist() == [[1.0, 1.0], [1.0, 0.75], [1.0, 0.5]] and np.isneginf(sup[3:, 1]).all()
    sub = d.pairs("sublevel")
    assert sub.tolist() == [[0.0, 0.0], [0.0, 0.25], [0.0, 0.5]]
    st_ = gudhi.SimplexTree()
    for v in range(5):
        st_.insert([v], 0.0)
    for (j, i) in zip(*np.nonzero(mask)):
        st_.insert([int(i), 3 + int(j)], 1.0 - abs(W[j, i]) / 4.0)
    ref = sorted(p for p in st_.persistence(min_persistence=-1) if p[0] == 0)
    assert sorted(d.to_gudhi()) == ref
    # the pitfall: the default min_persistence drops the zero-length pair of the w̃ = 1 edge
    assert len([p for p in st_.persistence() if p[0] == 0]) == len(ref) - 1


def test_pruning_all_but_msf_keeps_diagram_and_forest():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(30, 50))
    W[rng.random(W.shape) < 0.3] = 1.0  # ties
    mask = rng.random(W.shape) < 0.6
    d = zeroth_persistence(W, mask)
    kept = zeroth_persistence(W, d.msf_mask)
    assert kept.equals(d, atol=0.0) and np.array_equal(kept.msf_mask, d.msf_mask)
    assert np.array_equal(spanning_forest_mask(W, mask), d.msf_mask)


@pytest.mark.parametrize(
    "W, mask, msg",
    [
        (np.array([[1.0, np.nan]]), None, "non-finite"),
        (np.ones((2, 2, 2)), None, "2-D"),
        (np.ones((2, 2)), np.ones((3, 2), bool), "shape"),
        (np.ones((0, 3)), None, "empty"),
    ],
)
def test_bad_input(W, mask, msg):
    with pytest.raises(ValueError, match=msg):
        zeroth_persistence(W, mask)


def test_bad_options():
    with pytest.raises(ValueError, match="backend"):
        zeroth_persistence(np.ones((2, 2)), backend="dionysus")
    with pytest.raises(ValueError, match="method"):
        zeroth_persistence(np.ones((2, 2)), method="kruskall")
    with pytest.raises(ValueError, match="mask= cannot"):
        zeroth_persistence(layer_graph(np.ones((2, 2))), np.ones((2, 2), bool))


def test_plots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = zeroth_persistence(np.random.default_rng(0).normal(size=(5, 7)), np.eye(5, 7, dtype=bool) | True)
    for kind in ("diagram", "barcode"):
        assert d.plot(kind=kind) is not None
    plt.close("all")
    assert d.to_dict()["n_pairs"] == 11


def test_json_round_trips_the_diagram(tmp_path):
    import json

    from netgeom.topology import NetworkZerothDiagram, ZerothDiagram, network_graph

    rng = np.random.default_rng(3)
    W = rng.integers(-3, 4, size=(6, 9)).astype(float)
    m = rng.random((6, 9)) < 0.4
    m[:, 0] = False  # an isolated input: a second essential class
    d = zeroth_persistence(W, m)
    raw = json.loads(d.to_json(tmp_path / "d.json"))
    assert raw["deaths"] == d.deaths.tolist() and raw["births"] == [1.0] * d.n_pairs
    assert raw["n_essential"] == d.n_essential > 1 and "msf_mask" not in raw
    assert "spanning_forest_mask" in raw["msf_mask_note"]
    back = ZerothDiagram.from_json(tmp_path / "d.json")
    assert back.equals(d, atol=0.0) and back.msf_mask is None and back.essential_death == -np.inf
    assert back.to_gudhi() == d.to_gudhi() and back.n_pairs == d.n_pairs and back.name == d.name
    from netgeom.nets import mlp

    D = zeroth_persistence(network_graph(mlp(4, [6, 5], 3, seed=0)))
    back = NetworkZerothDiagram.from_json(D.to_json())
    assert back.equals(D, atol=0.0) and np.array_equal(back.death_layers, D.death_layers)
    assert back.msf_masks is None and back.widths == D.widths


@settings(max_examples=30, deadline=None)
@given(graphs, st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([1.0, 1.5]), st.booleans())
def test_kruskal_prefix_rounds_give_the_exact_forest(params, per_vertex, ratio, hubs):
    """Force the prefix rounds of the Kruskal path on small graphs (any number of rounds, ties at the
    thresholds, hub-dominated weights that leave many components after a round): the forest is exactly
    Prim's, edge for edge."""
    from netgeom.topology import persistence as P

    W, mask = random_graph(*params)
    if hubs:
        rng = np.random.default_rng(params[0])
        W = W * rng.lognormal(0, 2, size=(W.shape[0], 1)) * rng.lognormal(0, 2, size=(1, W.shape[1]))
    g = layer_graph(W, mask)
    saved = P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES
    try:
        P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES = per_vertex, ratio, 0
        kru = zeroth_persistence(g, method="kruskal")
    finally:
        P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES = saved
    prim = zeroth_persistence(g, method="prim")
    assert np.array_equal(kru.msf_mask, prim.msf_mask) and np.array_equal(kru.deaths, prim.deaths)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 300), st.integers(1, 6))
def test_edge_order_is_weight_then_position(seed, m, levels):
    from netgeom.topology.persistence import _edge_order

    w = np.random.default_rng(seed).integers(1, levels + 1, size=m) / levels  # many ties
    assert np.array_equal(_edge_order(w), np.lexsort((np.arange(m), -w)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 60), st.integers(0, 400), st.integers(1, 5),
       st.sampled_from([None, 0.5, 2.0]))
def test_compiled_kruskal_is_kruskal_in_the_edge_order(seed, n, m, levels, per_vertex):
    """The compiled union-find path (one round, or prefix rounds carrying the union-find state) returns
    exactly the forest of a plain Python Kruskal over edges sorted by (weight descending, position), in that
    order: on multigraphs with self-loops, heavy ties and isolated vertices."""
    from netgeom.topology import persistence as P

    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, n, size=m), rng.integers(0, n, size=m)
    w = rng.integers(1, levels + 1, size=m) / levels
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    want = []
    for e in sorted(range(m), key=lambda e: (-w[e], e)):
        ra, rb = find(a[e]), find(b[e])
        if ra != rb:
            parent[ra] = rb
            want.append(e)
    saved = P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES
    try:
        if per_vertex is not None:
            P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES = per_vertex, 1.0, 0
        got = P._kruskal(n, a, b, w)
    finally:
        P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES = saved
    assert got.tolist() == want
