"""Zeroth persistence of the chained network graph: native (per-layer forests + merge, or global Kruskal)
vs gudhi vs ripser vs brute-force Kruskal vs scipy's MST; the network-scope protect callback."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from torch import nn

from netgeom.nets import affine_layers, lenet5, mlp, small_convnet
from netgeom.pruning.masks import Masks
from netgeom.pruning.rules import UnreachableSparsityError, magnitude_prune
from netgeom.topology import (
    NetworkZerothDiagram,
    network_forest_protect,
    network_graph,
    spanning_forest_protect,
    zeroth_persistence,
)


def random_net(seed, widths, kind, density):
    """An MLP with chosen weights and masks (a layer may end up without edges: all pruned or zero)."""
    rng = np.random.default_rng(seed)
    net = mlp(widths[0], widths[1:-1], widths[-1], seed=0)
    masks = Masks.ones(net)
    for name, p in ((n, p) for n, p in net.named_parameters() if n.endswith("weight")):
        shape = tuple(p.shape)
        if kind == "normal":
            W = rng.normal(size=shape)
        elif kind == "ties":  # many equal |w| within and across layers, and zero-valued weights
            W = rng.integers(-2, 3, size=shape).astype(float)
        else:  # "blocks": no edges between the two halves of each layer -> disconnected parts
            W = rng.normal(size=shape)
        m = rng.random(shape) < density
        W[rng.random(shape) < 0.15] = 0.0  # unmasked zero weights: absent edges, like pruned ones
        if kind == "blocks":
            m[: shape[0] // 2, shape[1] // 2:] = False
            m[shape[0] // 2:, : shape[1] // 2] = False
        m.flat[rng.integers(m.size)] = True
        with torch.no_grad():
            p.copy_(torch.from_numpy(W))
        masks[name] = torch.from_numpy(m)
    return net, masks


def reference(G):
    """Global edge list, scipy component count and plain Python Kruskal deaths (small graphs only)."""
    n, u, v, w = G.global_edges()
    A = sparse.coo_matrix((np.ones(u.size), (u, v)), shape=(n, n))
    comps = connected_components(A, directed=False)[0]
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    deaths = []
    for wt, a, b in sorted(zip(w.tolist(), u.tolist(), v.tolist()), key=lambda e: -e[0]):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
            deaths.append(wt)
    return n, u, v, w, comps, np.sort(deaths)


def forest_components(G, msf_masks):
    offs = G.vertex_offsets
    us, vs = [], []
    for k, g in enumerate(G):
        j, i = np.nonzero(msf_masks[g.param_name])
        us.append(i + offs[k])
        vs.append(j + offs[k + 1])
    u, v = np.concatenate(us), np.concatenate(vs)
    n = int(offs[-1])
    return connected_components(sparse.coo_matrix((np.ones(u.size), (u, v)), shape=(n, n)), directed=False)[0]


nets = st.tuples(
    st.integers(0, 10**6),
    st.lists(st.integers(1, 7), min_size=2, max_size=5),
    st.sampled_from(["normal", "ties", "blocks"]),
    st.floats(0.1, 1.0),
    st.sampled_from(["layer", "network"]),
)


@settings(max_examples=40, deadline=None)
@given(nets)
def test_network_diagram_matches_references(params):
    seed, widths, kind, density, normalize = params
    net, masks = random_net(seed, widths, kind, density)
    G = network_graph(net, masks, normalize=normalize)
    nat = zeroth_persistence(G)
    assert isinstance(nat, NetworkZerothDiagram)
    # every native route implements the same total order (weight desc, layer, flat index): same forest
    from netgeom.topology import persistence as P

    saved = P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES
    forced = []
    try:  # Kruskal's prefix rounds on the network's edge list, forced on these small graphs
        P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES = 0.5, 1.0, 0
        forced = [zeroth_persistence(G, method="global")]
    finally:
        P._PREFIX_PER_VERTEX, P._PREFIX_MIN_RATIO, P._PREFIX_MIN_EDGES = saved
    for other in forced + [zeroth_persistence(G, method=m) for m in ("prim", "kruskal", "boruvka", "global")]:
        assert all(np.array_equal(other.msf_masks[k], nat.msf_masks[k]) for k in nat.msf_masks)
        assert np.array_equal(other.deaths, nat.deaths)
    gud = zeroth_persistence(G, backend="gudhi")
    rip = zeroth_persistence(G, backend="ripser")
    assert nat.equals(gud, atol=1e-12) and nat.equals(rip, atol=1e-6)
    n, u, v, w, comps, kruskal = reference(G)
    np.testing.assert_allclose(np.sort(nat.deaths), kruskal, atol=1e-15)
    assert nat.n_vertices == n == sum(widths) and nat.n_edges == u.size
    assert nat.n_essential == comps == gud.n_essential == rip.n_essential
    assert nat.n_pairs == n - comps == sum(int(m.sum()) for m in nat.msf_masks.values())
    assert nat.min_value == w.min() if w.size else np.isnan(nat.min_value)
    assert (w > 0).all()  # zero weights never become edges
    # the forest: inside the graph, spanning (same components), maximum (scipy's MST of 2 - w̃)
    for g in G:
        assert not (nat.msf_masks[g.param_name] & ~g.mask).any()
    assert forest_components(G, nat.msf_masks) == comps
    T = minimum_spanning_tree(sparse.coo_matrix((2.0 - w, (u, v)), shape=(n, n)).tocsr())
    total = sum(g.weights[nat.msf_masks[g.param_name]].sum() for g in G)
    assert T.nnz == nat.n_pairs and np.isclose(2.0 * T.nnz - T.sum(), total, rtol=0, atol=1e-9)
    assert np.isclose(sum(g.weights[gud.msf_masks[g.param_name]].sum() for g in G), total, rtol=0, atol=1e-12)
    # death_layers: the deaths attributed to layer k are exactly the w̃ of layer k's forest edges
    for k, g in enumerate(G):
        np.testing.assert_array_equal(np.sort(nat.deaths[nat.death_layers == k]),
                                      np.sort(g.weights[nat.msf_masks[g.param_name]]))
    assert nat.layer_n_pairs == [int((nat.death_layers == k).sum()) for k in range(len(G))]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10**6), st.lists(st.integers(2, 6), min_size=3, max_size=4),
       st.sampled_from(["layer", "network"]))
def test_network_diagram_invariant_under_tie_break(seed, widths, normalize):
    net, masks = random_net(seed, widths, "ties", 0.8)
    base = zeroth_persistence(network_graph(net, masks, normalize=normalize))
    # permuting hidden neurons (rows of W_l with the columns of W_{l+1}) reorders tied edge indices
    rng = np.random.default_rng(seed)
    lin = [m for m in net if isinstance(m, nn.Linear)]
    names = [n for n, _ in net.named_parameters() if n.endswith("weight")]
    for k in range(len(lin) - 1):
        perm = torch.from_numpy(rng.permutation(lin[k].out_features))
        with torch.no_grad():
            lin[k].weight.copy_(lin[k].weight[perm])
            lin[k + 1].weight.copy_(lin[k + 1].weight[:, perm])
        masks[names[k]] = masks[names[k]][perm]
        masks[names[k + 1]] = masks[names[k + 1]][:, perm]
    permuted = zeroth_persistence(network_graph(net, masks, normalize=normalize))
    assert base.equals(permuted, atol=0.0)
    np.testing.assert_array_equal(np.sort(base.death_layers), np.sort(permuted.death_layers))


@pytest.mark.parametrize("normalize", ["layer", "network"])
def test_network_forest_alone_keeps_the_network_diagram(normalize):
    net, masks = random_net(5, [12, 20, 15, 4], "ties", 0.7)
    G = network_graph(net, masks, normalize=normalize)
    d = zeroth_persistence(G)
    forest = d.as_masks()
    kept = zeroth_persistence(network_graph(net, forest, normalize=normalize))
    assert kept.equals(d, atol=0.0) and all(np.array_equal(kept.msf_masks[k], d.msf_masks[k]) for k in forest)
    # it lies inside the union of the layer forests and is smaller (the chain adds cycles across layers)
    layer_forests = {g.param_name: zeroth_persistence(g).msf_mask for g in G}
    assert all(not (d.msf_masks[k] & ~layer_forests[k]).any() for k in forest)
    n_layer_forests = sum(int(m.sum()) for m in layer_forests.values())
    assert d.n_pairs == G.vertex_offsets[-1] - d.n_essential < n_layer_forests


def test_protect_scope_network_equals_forest_and_pruning_keeps_diagram():
    net = mlp(10, [20, 16], 5, seed=3)
    masks = Masks.ones(net)
    with pytest.raises(ValueError, match="scope"):
        spanning_forest_protect(net, scope="global")
    n_possible = masks.n_total()
    n_vertices = 10 + 20 + 16 + 5
    for _ in range(40):
        G = network_graph(net, masks, normalize="network")
        before = zeroth_persistence(G)
        prot = network_forest_protect(net, masks)
        assert prot.equals(spanning_forest_protect(net, masks, scope="network", normalize="network"))
        assert all(np.array_equal(prot[k].numpy(), before.msf_masks[k]) for k in prot)
        try:
            masks = magnitude_prune(net, 0.4, protect=network_forest_protect, masks=masks)
        except UnreachableSparsityError:
            break
        after = zeroth_persistence(network_graph(net, masks, normalize="network"))
        assert after.equals(before, atol=0.0)
        assert all(np.array_equal(after.msf_masks[k], before.msf_masks[k]) for k in prot)
        assert masks.sparsity() <= 1 - (n_vertices - 1) / n_possible + 1e-12
    else:
        pytest.fail("protected pruning never stopped")
    # the end point: exactly the network forest, one connected tree on all neurons
    prot = network_forest_protect(net, masks)
    s = (masks.n_kept() - prot.n_kept()) / masks.n_kept()
    if s > 0:
        masks = magnitude_prune(net, s, protect=network_forest_protect, masks=masks)
    assert masks.equals(prot) and masks.n_kept() == n_vertices - 1
    # the per-layer callback keeps more: every layer's own forest
    assert spanning_forest_protect(net).n_kept() == sum(a + b - 1 for a, b in [(10, 20), (20, 16), (16, 5)])


def test_protect_network_scope_subset_of_names_and_conv():
    net = mlp(6, [8], 3, seed=1)
    m = Masks.ones(net, include_output=False)
    prot = spanning_forest_protect(net, m, scope="network", normalize="network")
    assert list(prot) == ["0.weight"]  # the output layer still shapes the forest but is not protected
    full = network_forest_protect(net)
    assert torch.equal(prot["0.weight"], full["0.weight"])
    conv = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Conv1d(4, 3, 3))
    G = network_graph(conv, normalize="network", input_shape=(2, 10))
    d = zeroth_persistence(G)
    assert G.chained and d.equals(zeroth_persistence(G, backend="gudhi"), atol=1e-12)
    assert d.n_pairs == 2 + 4 + 3 - 1 and d.aggregate == "l1"
    with pytest.raises(ValueError, match="spanning_forest_protect"):
        d.as_masks()


def test_unchained_and_bad_input():
    from netgeom.nets import small_convnet

    G = network_graph(small_convnet((1, 12), channels=2, seed=0).eval())
    with pytest.raises(ValueError, match="do not chain"):
        zeroth_persistence(G)
    net = mlp(3, [4], 2, seed=0)
    G = network_graph(net)
    with pytest.raises(ValueError, match="mask= cannot"):
        zeroth_persistence(G, np.ones((4, 3), bool))
    with pytest.raises(ValueError, match="method"):
        zeroth_persistence(G, method="kruskall")
    with pytest.raises(ValueError, match="method"):
        zeroth_persistence(G[0], method="global")  # network-only method
    with pytest.raises(TypeError, match="network_graph"):
        zeroth_persistence(net)
    rip = zeroth_persistence(G, backend="ripser")
    assert rip.msf_masks is None and rip.death_layers is None
    with pytest.raises(ValueError, match="ripser"):
        rip.as_masks()
    with pytest.raises(ValueError, match="ripser"):
        rip.plot()
    with pytest.raises(ValueError, match="read-only"):  # frozen: the cached edge lists stay true
        G.layers[1].weights[0, 0] = np.nan
    from netgeom.topology import LayerGraph

    with pytest.raises(ValueError, match="finite"):
        LayerGraph(np.array([[np.nan]]), np.array([[True]]), 1.0, "layer", "matrix")
    with pytest.raises(ValueError, match="weights > 0"):
        LayerGraph(np.array([[0.5, 0.0]]), np.array([[True, True]]), 1.0, "layer", "matrix")


def test_single_layer_network_equals_layer_diagram():
    net = nn.Sequential(nn.Linear(7, 5))
    G = network_graph(net)
    d, dl = zeroth_persistence(G), zeroth_persistence(G[0])
    assert d.equals(dl, atol=0.0) and np.array_equal(d.msf_masks["0.weight"], dl.msf_mask)


def test_plot_and_dict():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net, masks = random_net(0, [6, 9, 7, 3], "blocks", 0.6)
    d = zeroth_persistence(network_graph(net, masks, normalize="network"))
    for kind in ("barcode", "diagram"):
        ax = d.plot(kind=kind)
        labels = ax.get_legend_handles_labels()[1]
        assert any(lab.startswith("essential") for lab in labels) and len(labels) >= 2
    plt.close("all")
    out = d.to_dict()
    assert out["n_pairs"] == d.n_pairs and out["deaths"] == d.deaths.tolist()
    assert out["widths"] == [6, 9, 7, 3]
    assert "msf_masks" not in out and "msf_masks" in out["msf_mask_note"]


def gudhi_chained_deaths(layers):
    """Reference: the chained graph built straight from the effective matrices, diagram by gudhi."""
    import gudhi

    offset, us, vs, ws = 0, [], [], []
    for lay in layers:
        W = np.abs(lay.weight.numpy())
        j, i = np.nonzero(W)
        us.append(i + offset)
        vs.append(j + offset + lay.n_in)
        ws.append(W[j, i] / W.max())
        offset += lay.n_in
    n = offset + layers[-1].n_out
    st_ = gudhi.SimplexTree()
    st_.insert_batch(np.arange(n)[None, :], np.zeros(n))
    st_.insert_batch(np.vstack([np.concatenate(us), np.concatenate(vs)]), 1.0 - np.concatenate(ws))
    st_.compute_persistence(min_persistence=-1.0)
    iv = st_.persistence_intervals_in_dimension(0)
    fin = np.isfinite(iv[:, 1])
    return n, np.sort(1.0 - iv[fin, 1]), int((~fin).sum())


@pytest.mark.parametrize("make", [
    lambda: (lenet5((1, 16, 16), seed=0), None),
    lambda: (small_convnet((1, 12), channels=3, seed=1).eval(), None),
    lambda: (small_convnet((2, 6, 6), channels=3, seed=2).eval(), (2, 6, 6)),
])
def test_conv_nets_chain_unrolled(make):
    net, shape = make()
    masks = Masks.ones(net)
    first = next(k for k in masks)
    masks[first] = torch.rand(masks[first].shape, generator=torch.Generator().manual_seed(0)) < 0.6
    G = network_graph(net, masks, conv="unrolled", input_shape=shape)
    layers = [lay for lay in affine_layers(net, masks, input_shape=shape) if lay.param_name is not None]
    assert G.chained and G.widths == [layers[0].n_in] + [lay.n_out for lay in layers]
    d = zeroth_persistence(G)
    n, deaths, n_ess = gudhi_chained_deaths(layers)
    assert d.n_vertices == n and d.n_essential == n_ess
    np.testing.assert_allclose(np.sort(d.deaths), deaths, atol=1e-12)
    assert d.equals(zeroth_persistence(G, backend="gudhi"), atol=1e-12)
    # the Linear after pooling + Flatten reads its effective matrix (pooling folded), not its kernel
    assert G[-1].n_in == layers[-1].n_in and G[len(layers) - 1].kind in ("unrolled", "linear")


@pytest.mark.parametrize("net", [lenet5(seed=0), small_convnet((1, 12), channels=2, seed=0).eval()])
def test_conv_channel_graphs_to_linear_explain_the_break(net):
    G = network_graph(net)
    with pytest.raises(ValueError, match=r"(?s)channel.*Flatten.*conv='unrolled'"):
        zeroth_persistence(G)
    with pytest.raises(ValueError, match=r"(?s)channel.*Flatten.*conv='unrolled'"):
        network_forest_protect(net)


def test_protect_default_normalisation_is_layer_and_layer_scope_is_scale_invariant():
    net = mlp(5, [7, 6], 3, seed=2)
    with torch.no_grad():
        net[2].weight.mul_(40.0)  # very different layer scales: the two normalisations rank edges apart
    G_layer, G_net = network_graph(net), network_graph(net, normalize="network")
    f_layer, f_net = zeroth_persistence(G_layer).msf_masks, zeroth_persistence(G_net).msf_masks
    assert any(not np.array_equal(f_layer[k], f_net[k]) for k in f_layer)  # the test can tell them apart
    prot = spanning_forest_protect(net, scope="network")  # default normalize: "layer", as everywhere
    assert all(np.array_equal(prot[k].numpy(), f_layer[k]) for k in f_layer)
    # the named network callback keeps its documented network-wide normalisation (Rieck et al.)
    assert all(np.array_equal(network_forest_protect(net)[k].numpy(), f_net[k]) for k in f_net)
    # per-layer scope: each layer's forest ignores any global or per-layer scale
    base = spanning_forest_protect(net)
    assert base.equals(spanning_forest_protect(net, normalize="network"))
    with torch.no_grad():
        for lin in (net[0], net[4]):
            lin.weight.mul_(1e-3)
    assert base.equals(spanning_forest_protect(net))
