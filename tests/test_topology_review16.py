"""Regression tests for review 16 of the topology part: shared weights in network forests, grouped-conv
bounds, unrolled chaining across unit-mixing maps, scale-safe kernel aggregates, permutation-invariant
retention, refused ignored options, exact ripser deaths and validated saved network diagrams."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.sparse.csgraph import connected_components
from torch import nn

from netgeom import Masks, mlp
from netgeom.topology import (
    NetworkZerothDiagram,
    ZerothDiagram,
    layer_graph,
    msf_retention,
    network_forest_protect,
    network_graph,
    spanning_forest_protect,
    topology_bound,
    zeroth_persistence,
)
from netgeom.topology import persistence as persistence_mod


def _kruskal_ref(n, u, v, w):
    """Positions of the maximum spanning forest under (weight descending, position ascending)."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    out = []
    for e in sorted(range(len(w)), key=lambda e: (-w[e], e)):
        a, b = find(int(u[e])), find(int(v[e]))
        if a != b:
            parent[max(a, b)] = min(a, b)
            out.append(e)
    return out


# ------------------------------------------------------------------------- 1. shared weights, network forest
class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc, self.out = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.relu(self.fc(x))
        x = F.relu(self.fc(x))
        return self.out(x)


@pytest.mark.parametrize("normalize", ["layer", "network"])
def test_shared_weight_forest_mask_is_the_union_of_its_uses(normalize):
    torch.manual_seed(0)
    net = _Twice().double()
    G = network_graph(net, normalize=normalize)
    assert [g.param_name for g in G] == ["a.weight", "fc.weight", "fc.weight", "out.weight"]
    D = zeroth_persistence(G)
    # independent reference: Kruskal over the global edge list, then each use's forest OR-ed per weight
    n, u, v, w, lay, idx = G.global_edges(with_layers=True)
    ref = {}
    for e in _kruskal_ref(n, u, v, w):
        g = G[int(lay[e])]
        m = ref.setdefault(g.param_name, np.zeros(g.weights.shape, bool))
        m.ravel()[idx[e]] = True
    assert set(D.msf_masks) == set(ref)
    assert all(np.array_equal(D.msf_masks[k], ref[k]) for k in ref)
    # the promise: keep the protected weights, prune the rest, and the network diagram is unchanged
    prot = spanning_forest_protect(net, scope="network", normalize=normalize)
    assert all(np.array_equal(prot[k].numpy(), ref[k]) for k in ref)
    kept = zeroth_persistence(network_graph(net, Masks({k: v.clone() for k, v in prot.items()}),
                                            normalize=normalize))
    assert kept.equals(D, atol=0.0) and kept.n_pairs == D.n_pairs == 16


def test_shared_weight_network_forest_protect_and_as_masks_keep_the_diagram():
    torch.manual_seed(1)
    net = _Twice().double()
    D = zeroth_persistence(network_graph(net, normalize="network"))
    for masks in (network_forest_protect(net), D.as_masks()):
        kept = zeroth_persistence(network_graph(net, masks, normalize="network"))
        assert kept.equals(D, atol=0.0) and kept.n_essential == D.n_essential == 1


# ------------------------------------------------------------------------------- 2. grouped-conv bound
def _dense_counts(G):
    """(possible, forest size) of each dense layer graph, from its own edges: every weight non-zero."""
    out = []
    for g in G:
        n_comp = connected_components(
            np.block([[np.zeros((g.n_in, g.n_in)), g.mask.T], [g.mask, np.zeros((g.n_out, g.n_out))]]),
            directed=False,
        )[0]
        out.append((g.n_edges, g.n_vertices - n_comp))
    return out


@pytest.mark.parametrize("groups,c_in,c_out", [(4, 4, 8), (2, 4, 6), (1, 3, 5)])
def test_topology_bound_grouped_conv_channel_graph(groups, c_in, c_out):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(c_in, c_out, 3, groups=groups), nn.ReLU(), nn.Conv2d(c_out, 2, 1)).eval()
    b = topology_bound(net, input_shape=(c_in, 6, 6))
    per_group_in, per_group_out = c_in // groups, c_out // groups
    assert b.n_possible[0] == c_out * per_group_in
    assert b.n_tree[0] == groups * (per_group_in + per_group_out - 1) == c_in + c_out - groups
    # a dense net: nothing pruned, and its forests span every possible component
    assert b.sparsity == 0.0 and b.n_msf == b.n_tree
    assert [(p, t) for p, t in zip(b.n_possible, b.n_tree)] == _dense_counts(
        network_graph(net, input_shape=(c_in, 6, 6)))


# ------------------------------------------------------------ 3. unrolled chain across a same-size pool
class _PoolNet(nn.Module):
    def __init__(self, mid):
        super().__init__()
        self.c1, self.mid, self.c2 = nn.Conv2d(1, 2, 3, padding=1), mid, nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        # a ReLU after the middle map keeps it a node of its own (else it folds into c2's affine node)
        return self.c2(F.relu(self.mid(F.relu(self.c1(x)))))


def test_unrolled_chain_breaks_at_same_size_average_pooling():
    net = _PoolNet(nn.AvgPool2d(3, stride=1, padding=1)).eval()
    G = network_graph(net, conv="unrolled", input_shape=(1, 5, 5))
    assert G.widths == [25, 50, 25] and not G.chained
    (k, why), = G.chain_breaks
    assert k == 0 and "mixes units" in why
    with pytest.raises(ValueError, match="do not chain"):
        zeroth_persistence(G)
    # channel graphs: pooling keeps the channels, the chain holds
    assert network_graph(net, input_shape=(1, 5, 5)).chained


def test_unrolled_chain_holds_across_a_lone_batchnorm():
    net = _PoolNet(nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        net.mid.weight.copy_(torch.tensor([2.0, -0.5]))
        net.mid.running_var.copy_(torch.tensor([0.5, 3.0]))
    G = network_graph(net, conv="unrolled", input_shape=(1, 5, 5))
    assert G.chained and G.widths == [25, 50, 25]


# --------------------------------------------------------------------------- 4. scale-safe aggregates
def _conv(seed, c_in=2, c_out=3):
    rng = np.random.default_rng(seed)
    c = nn.Conv2d(c_in, c_out, 3).double()
    # magnitudes in [0.5, 2]: every scaled weight stays a normal float64 for |k| <= 1000
    w = rng.uniform(0.5, 2.0, c.weight.shape) * rng.choice([-1.0, 1.0], c.weight.shape)
    with torch.no_grad():
        c.weight.copy_(torch.from_numpy(w))
    return c


@settings(max_examples=40, deadline=None)
@given(k=st.integers(-1000, 1000), seed=st.integers(0, 3), aggregate=st.sampled_from(["l1", "l2", "max"]))
@example(k=-1000, seed=0, aggregate="l2")
@example(k=1000, seed=0, aggregate="l2")
@example(k=-600, seed=1, aggregate="l2")
@example(k=1020, seed=2, aggregate="l1")
def test_aggregate_is_scale_invariant(k, seed, aggregate):
    c = _conv(seed)
    base = c.weight.detach().clone()
    g0 = layer_graph(c, aggregate=aggregate)
    # independent reference on the unscaled kernel (values of order 1: no range problem)
    a = base.abs().reshape(3, 2, -1).numpy()
    ref = {"l1": a.sum(-1), "l2": np.sqrt((a * a).sum(-1)), "max": a.max(-1)}[aggregate]
    np.testing.assert_allclose(g0.weights, ref / ref.max(), rtol=1e-15, atol=0)
    with torch.no_grad():
        c.weight.copy_(base * 2.0**k)
    g = layer_graph(c, aggregate=aggregate)
    assert g.n_edges == 6 and np.array_equal(g.weights, g0.weights) and np.array_equal(g.mask, g0.mask)
    expect = math.ldexp(g0.scale, k) if k < 1020 else None
    if expect is not None:
        assert g.scale == expect
    assert zeroth_persistence(g).equals(zeroth_persistence(g0), atol=0.0)


@settings(max_examples=20, deadline=None)
@given(k=st.integers(-1000, 1000), aggregate=st.sampled_from(["l1", "l2", "max"]))
@example(k=-800, aggregate="l2")
@example(k=900, aggregate="l2")
def test_network_normalised_aggregate_is_scale_invariant(k, aggregate):
    net = nn.Sequential(_conv(0), nn.ReLU(), _conv(1, 3, 2)).eval()
    G0 = network_graph(net, normalize="network", aggregate=aggregate, input_shape=(2, 5, 5))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(2.0**k)
                m.bias.zero_()
    G = network_graph(net, normalize="network", aggregate=aggregate, input_shape=(2, 5, 5))
    assert all(np.array_equal(a.weights, b.weights) for a, b in zip(G, G0))
    assert sum(g.n_edges for g in G) == 12


def test_l1_aggregate_beyond_float64_keeps_every_edge():
    c = _conv(0)
    with torch.no_grad():
        c.weight.copy_(torch.sign(c.weight) * 1e308)
    g = layer_graph(c, aggregate="l1")  # each slice sums to 9e308, beyond float64
    assert g.n_edges == 6 and np.all(g.weights == 1.0) and g.scale == math.inf
    d = zeroth_persistence(c, aggregate="l1")
    assert d.n_pairs == 4 and d.n_essential == 1


# ---------------------------------------------------------------------- 5. retention under permutations
def _net(W1, W2):
    net = nn.Sequential(nn.Linear(W1.shape[1], W1.shape[0]), nn.ReLU(), nn.Linear(W2.shape[1], W2.shape[0]))
    with torch.no_grad():
        net[0].weight.copy_(W1)
        net[2].weight.copy_(W2)
    return net


def test_retention_review_example_is_numbering_invariant():
    W1, W2 = torch.ones(2, 2), torch.tensor([[1.0, 1.0]])
    m1 = torch.tensor([[True, False], [True, True]])
    r = msf_retention(_net(W1, W2), Masks({"0.weight": m1, "2.weight": torch.ones(1, 2, dtype=torch.bool)}))
    p = torch.tensor([1, 0])
    r2 = msf_retention(_net(W1[p], W2[:, p]),
                       Masks({"0.weight": m1[p], "2.weight": torch.ones(1, 2, dtype=torch.bool)}))
    # the pruned layer 0 (3 of 4 equal edges) is itself a maximum spanning tree of the dense one
    assert r.n_retained == r2.n_retained == [3, 2] and r.retention == r2.retention == [1.0, 1.0]


def _max_kept_brute(W, kept):
    """Most kept edges over all maximum spanning forests of |W| (edges: non-zero entries), by enumeration."""
    n_out, n_in = W.shape
    edges = [(i, n_in + j, abs(W[j, i]), bool(kept[j, i]))
             for j in range(n_out) for i in range(n_in) if W[j, i]]
    n = n_in + n_out
    size = len(_kruskal_ref(n, [e[0] for e in edges], [e[1] for e in edges], [e[2] for e in edges]))
    best_w, best = -1.0, -1
    def find(parent, x):
        while parent[x] != x:
            x = parent[x]
        return x

    for sub in itertools.combinations(edges, size):
        parent = list(range(n))
        ok = True
        for a, b, _, _ in sub:
            ra, rb = find(parent, a), find(parent, b)
            if ra == rb:
                ok = False
                break
            parent[ra] = rb
        if not ok:
            continue
        tot = sum(e[2] for e in sub)
        cnt = sum(e[3] for e in sub)
        if tot > best_w + 1e-12:
            best_w, best = tot, cnt
        elif abs(tot - best_w) <= 1e-12:
            best = max(best, cnt)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_retention_is_permutation_invariant_and_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    W1 = torch.from_numpy(rng.integers(1, 3, (3, 2)).astype(np.float32))  # many ties
    W2 = torch.from_numpy(rng.integers(1, 3, (2, 3)).astype(np.float32))
    masks = {"0.weight": torch.from_numpy(rng.random((3, 2)) < 0.6),
             "2.weight": torch.from_numpy(rng.random((2, 3)) < 0.6)}
    r = msf_retention(_net(W1, W2), Masks(masks))
    ref = [_max_kept_brute(W1.numpy(), masks["0.weight"].numpy()),
           _max_kept_brute(W2.numpy(), masks["2.weight"].numpy())]
    assert r.n_retained == ref
    for _ in range(5):
        p = torch.from_numpy(rng.permutation(3))
        q = torch.from_numpy(rng.permutation(2))  # inputs of layer 0 and outputs of layer 1 too
        r2 = msf_retention(
            _net(W1[p][:, q], W2[:, p]),
            Masks({"0.weight": masks["0.weight"][p][:, q], "2.weight": masks["2.weight"][:, p]}),
        )
        assert r2.n_retained == r.n_retained and r2.n_msf == r.n_msf
        assert r2.diagram_unchanged == r.diagram_unchanged


def test_retention_is_permutation_invariant_on_wider_tied_nets():
    rng = np.random.default_rng(7)
    for t in range(8):
        net = mlp(5, [7, 6], 3, seed=t)
        names = ["0.weight", "2.weight", "4.weight"]
        with torch.no_grad():
            for n in names:
                w = net.get_parameter(n)
                w.copy_(torch.from_numpy(rng.integers(-2, 3, tuple(w.shape))).float())
        masks = Masks({n: torch.from_numpy(rng.random(tuple(net.get_parameter(n).shape)) < 0.6)
                       for n in names})
        r = msf_retention(net, masks)
        lin = [net[0], net[2], net[4]]
        perms = [torch.from_numpy(rng.permutation(7)), torch.from_numpy(rng.permutation(6))]
        net2 = mlp(5, [7, 6], 3, seed=t)
        m2 = {}
        with torch.no_grad():
            W = [m.weight.detach().clone() for m in lin]
            M = [masks[n].clone() for n in names]
            W[0], M[0] = W[0][perms[0]], M[0][perms[0]]
            W[1], M[1] = W[1][perms[1]][:, perms[0]], M[1][perms[1]][:, perms[0]]
            W[2], M[2] = W[2][:, perms[1]], M[2][:, perms[1]]
            for m, w, n, mk in zip([net2[0], net2[2], net2[4]], W, names, M):
                m.weight.copy_(w)
                m2[n] = mk
        r2 = msf_retention(net2, Masks(m2))
        assert r2.n_retained == r.n_retained and r2.n_msf == r.n_msf


# --------------------------------------------------------------------------------- 6. ignored options
def test_options_that_would_be_ignored_are_refused():
    net = mlp(4, [6], 3, seed=0)
    G = network_graph(net)
    with pytest.raises(ValueError, match="normalize"):
        zeroth_persistence(G, normalize="network")
    assert zeroth_persistence(G, normalize="layer").equals(zeroth_persistence(G), atol=0.0)
    with pytest.raises(ValueError, match="conv"):
        zeroth_persistence(G, conv="channel")
    conv = nn.Conv2d(2, 3, 3)
    g = layer_graph(conv)
    with pytest.raises(ValueError, match="aggregate"):
        zeroth_persistence(g, aggregate="max")
    assert zeroth_persistence(g, aggregate="l1", conv="channel").equals(zeroth_persistence(g), atol=0.0)
    with pytest.raises(ValueError, match="conv"):
        zeroth_persistence(g, conv="unrolled")
    W = np.random.default_rng(0).normal(size=(3, 4))
    for kw in ({"conv": "unrolled"}, {"conv": "channel"}, {"aggregate": "max"}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            zeroth_persistence(W, **kw)
        with pytest.raises(ValueError, match=next(iter(kw))):
            layer_graph(W, **kw)
    with pytest.raises(ValueError, match="aggregate"):
        layer_graph(nn.Linear(3, 2), aggregate="l2")
    for backend in ("gudhi", "ripser"):
        with pytest.raises(ValueError, match="method"):
            zeroth_persistence(W, backend=backend, method="prim")
        with pytest.raises(ValueError, match="method"):
            zeroth_persistence(G, backend=backend, method="global")
    for kw in ({"conv": "unrolled"}, {"aggregate": "max"}, {"input_shape": (1, 2, 2)}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            topology_bound([4, 6, 3], **kw)
    one_conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="aggregate"):
        topology_bound(one_conv, conv="unrolled", aggregate="max", input_shape=(1, 4, 4))
    # what still applies is accepted
    assert zeroth_persistence(conv, aggregate="max").aggregate == "max"
    assert topology_bound(one_conv, aggregate="max", input_shape=(1, 4, 4)).n_possible == [2]


# ------------------------------------------------------------------------------- 7. ripser tiny deaths
def test_ripser_tiny_weight_round_trips():
    W = np.array([[1.0, 1e-9], [0.5, 0.0]])
    nat, rip = zeroth_persistence(W), zeroth_persistence(W, backend="ripser")
    assert np.array_equal(rip.deaths, nat.deaths) and rip.deaths.min() == 1e-9
    back = ZerothDiagram.from_json(rip.to_json())
    assert back.equals(rip, atol=0.0)
    G = network_graph(mlp(3, [4], 2, seed=0))
    Dn, Dr = zeroth_persistence(G), zeroth_persistence(G, backend="ripser")
    assert np.array_equal(Dr.deaths, Dn.deaths)
    assert NetworkZerothDiagram.from_json(Dr.to_json()).equals(Dr, atol=0.0)


def test_ripser_float_fallback_keeps_deaths_positive(monkeypatch):
    monkeypatch.setattr(persistence_mod, "_RIPSER_MAX_RANKS", 1)  # force the float32 distance path
    W = np.array([[1.0, 1e-9], [0.5, 0.0]])
    rip = zeroth_persistence(W, backend="ripser")
    assert (rip.deaths > 0).all() and rip.deaths.min() < 1e-7
    assert np.allclose(rip.deaths, zeroth_persistence(W).deaths, rtol=0, atol=1e-6)
    assert ZerothDiagram.from_json(rip.to_json()).equals(rip, atol=0.0)


# --------------------------------------------------------------------------- 8. from_dict validation
@pytest.mark.parametrize("field,value", [
    ("death_layers", [0]),
    ("death_layers", "seven"),
    ("layer_n_pairs", [100, 100]),
    ("layer_n_pairs", [0, 11]),
    ("widths", [1, 1]),
    ("widths", [4, 5]),
    ("layer_names", ["0"]),
])
def test_network_from_dict_validates_per_layer_fields(field, value):
    D = zeroth_persistence(network_graph(mlp(4, [5], 3, seed=0)))
    d = json.loads(D.to_json())
    assert NetworkZerothDiagram.from_dict(d).equals(D, atol=0.0)
    if value == "seven":
        value = [7] * D.n_pairs
    with pytest.raises(ValueError, match=field):
        NetworkZerothDiagram.from_dict({**d, field: value})
