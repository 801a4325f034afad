"""Weight graphs of traced networks (issue 14): residual additions, max-pooling, grouped convolutions,
global average pooling; per-layer diagrams, neural persistence and the topology bound on any of them, and
network graphs that chain where the layers chain and say where they do not."""

import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from torch import nn

from netgeom.pruning.masks import Masks
from netgeom.topology import (
    layer_graph,
    network_graph,
    neural_persistence,
    spanning_forest_protect,
    topology_bound,
    zeroth_persistence,
)


class ResMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h)) + h
        return self.fc3(h)


class ResCNN(nn.Module):
    """conv -> relu -> max-pool -> [grouped conv -> relu] + skip -> 1x1 conv -> relu -> global avg -> fc."""

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.conv3 = nn.Conv2d(4, 6, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv1(x)))
        h = torch.relu(self.conv2(h)) + h
        h = self.gap(torch.relu(self.conv3(h)))
        return self.fc(torch.flatten(h, 1))


class PoolChain(nn.Module):
    """A chain in channel graphs (max-pooling keeps the channels), broken by the max-pool when unrolled."""

    input_shape = (2, 6, 6)

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.conv2, self.fc = nn.Conv2d(2, 5, 3), nn.Conv2d(5, 4, 2), nn.Linear(4, 3)

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        h = torch.relu(self.conv2(h))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _rieck(mats):
    """Rieck et al.'s NP from scipy's MST (on -w̃, CSR) and connected components: independent of netgeom's
    forest code. ``mats`` are the (n_out, n_in) edge-weight matrices, absent edges 0."""
    top = max(np.abs(W).max() for W in mats)
    vals = []
    for W in mats:
        n_out, n_in = W.shape
        w = np.abs(W) / top
        j, i = np.nonzero(w)
        A = sparse.csr_matrix((-w[j, i], (n_in + j, i)), shape=(n_in + n_out,) * 2)
        pers = 1.0 + minimum_spanning_tree(A).data
        comps = connected_components(A, directed=False)[0]
        vals.append(np.sqrt((pers**2).sum() + comps) / np.sqrt(n_in + n_out - 1))
    return float(np.mean(vals)), vals


def test_residual_mlp_layers_and_where_the_chain_breaks():
    net = ResMLP()
    G = network_graph(net)
    assert [(g.n_in, g.n_out) for g in G] == [(8, 8), (8, 8), (8, 3)]
    assert [g.param_name for g in G] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert not G.chained and [k for k, _ in G.chain_breaks] == [0, 1]
    assert "branch" in G.chain_breaks[0][1] and "add" in G.chain_breaks[0][1]
    assert "residual addition" in G.chain_breaks[1][1]
    with pytest.raises(ValueError, match="do not chain.*residual addition|do not chain.*branch"):
        zeroth_persistence(G)
    # per layer everything applies: diagrams equal those of the bare matrices
    for g, lin in zip(G, (net.fc1, net.fc2, net.fc3)):
        d = zeroth_persistence(g)
        assert d.equals(zeroth_persistence(lin.weight.detach().double().numpy()), atol=0.0)
    r = neural_persistence(net)
    ref, layers = _rieck([lin.weight.detach().double().numpy() for lin in (net.fc1, net.fc2, net.fc3)])
    assert abs(r.network_np - ref) <= 1e-12 and np.allclose(r.layer_np_normalized, layers, rtol=0, atol=1e-12)
    b = topology_bound(net)
    assert b.widths is None and b.n_possible == [64, 64, 24] and b.n_tree == [15, 15, 10] == b.n_msf
    prot = spanning_forest_protect(net)
    assert {k: int(v.sum()) for k, v in prot.items()} == {"fc1.weight": 15, "fc2.weight": 15,
                                                          "fc3.weight": 10}


def test_residual_conv_net_grouped_channels_and_pooling():
    net = ResCNN().eval()
    G = network_graph(net)
    assert [g.param_name for g in G] == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    assert [(g.n_in, g.n_out) for g in G] == [(1, 4), (4, 4), (4, 6), (6, 3)]
    # grouped convolution (2 groups): output channels 0-1 read inputs 0-1 only, 2-3 read 2-3
    g2 = G[1]
    block = np.kron(np.eye(2, dtype=bool), np.ones((2, 2), bool))
    assert np.array_equal(g2.mask, block)
    k = net.conv2.weight.detach().double().abs().numpy().sum((2, 3))  # (4 out, 2 per group)
    l1 = np.zeros((4, 4))
    l1[:2, :2], l1[2:, 2:] = k[:2], k[2:]
    np.testing.assert_allclose(g2.weights * g2.scale, l1, rtol=1e-15)
    # the chain: max-pool keeps channels but its output also feeds the skip; the add breaks conv2 -> conv3;
    # conv3 -> global average pool -> flatten -> fc chains (6 channels = 6 features)
    breaks = dict(G.chain_breaks)
    assert set(breaks) == {0, 1} and "branch" in breaks[0] and "residual addition" in breaks[1]
    assert G.links[2] is None
    # unrolled: the max-pool itself breaks conv1 -> conv2 too
    Gu = network_graph(net, conv="unrolled")
    assert [g.kind for g in Gu] == ["unrolled"] * 4 and not Gu.chained
    # per-layer measures and the bound work; NP equals the reference on the channel-graph matrices
    mats = [g.weights * g.scale for g in network_graph(net)]
    r = neural_persistence(net)
    assert abs(r.network_np - _rieck(mats)[0]) <= 1e-12
    b = topology_bound(net)
    # grouped layer: 2 x 2 x 2 in-group channel pairs, 2 components (a dense net: sparsity 0)
    assert b.n_possible == [4, 8, 24, 18] and b.n_msf == b.n_tree == [4, 6, 9, 8] and b.sparsity == 0.0
    bu = topology_bound(net, conv="unrolled")
    # conv1, 3x3 with padding 1 on 8x8: (2 + 3 * 6 + 2) valid taps per row and column, per output channel
    assert bu.n_possible[0] == 4 * 22**2 and bu.sparsity == 0.0
    # protecting the forest of a grouped convolution names kernel weights inside the groups
    prot = spanning_forest_protect(net)
    assert int(prot["conv2.weight"].sum()) == 6 * 9 and prot["conv2.weight"].shape == net.conv2.weight.shape
    chan = zeroth_persistence(G[1]).msf_mask  # (4 out, 4 in) channel forest
    slices = prot["conv2.weight"][:, :, 0, 0].numpy()  # (4 out, 2 per group)
    assert np.array_equal(slices, np.stack([chan[o, 2 * (o // 2): 2 * (o // 2) + 2] for o in range(4)]))


def test_pool_chain_channel_graphs_chain_and_match_gudhi():
    import gudhi

    net = PoolChain().eval()
    m = Masks.ones(net)
    m["conv2.weight"][0] = False  # prune output channel 0 of conv2 entirely
    G = network_graph(net, m, normalize="network")
    assert G.chained and G.widths == [2, 5, 4, 3] and G.chain_breaks == []
    D = zeroth_persistence(G)
    n, u, v, w = G.global_edges()
    st = gudhi.SimplexTree()
    st.insert_batch(np.arange(n)[None, :], np.zeros(n))
    st.insert_batch(np.vstack([u, v]), 1.0 - w)
    st.compute_persistence(min_persistence=-1.0, persistence_dim_max=True)
    iv = st.persistence_intervals_in_dimension(0)
    fin = np.isfinite(iv[:, 1])
    np.testing.assert_allclose(np.sort(1.0 - iv[fin, 1]), np.sort(D.deaths), rtol=0, atol=1e-12)
    assert D.n_essential == int((~fin).sum())
    Gu = network_graph(net, m, conv="unrolled")
    assert not Gu.chained and "max-pooling" in Gu.chain_breaks[0][1]
    with pytest.raises(ValueError, match="max-pooling"):
        zeroth_persistence(Gu)


def test_layer_graph_of_traced_nodes():
    from netgeom.nets import trace

    net = ResCNN().eval()
    nodes = [n for n in trace(net).nodes if n.op == "affine" and n.param_name is not None]
    assert np.array_equal(layer_graph(nodes[1]).mask, network_graph(net)[1].mask)
    relu = next(n for n in trace(net).nodes if n.op == "relu")
    with pytest.raises(ValueError, match="not an affine layer"):
        layer_graph(relu)
