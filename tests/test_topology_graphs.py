"""Layer and network weight graphs."""

import numpy as np
import pytest
import torch

from netgeom import Masks, affine_layers, mlp, small_convnet
from netgeom.topology import layer_graph, network_graph, zeroth_persistence


def test_layer_graph_normalisation_and_mask():
    W = np.array([[2.0, -1.0], [0.0, 4.0]])
    g = layer_graph(W, mask=np.array([[1, 1], [0, 1]]))
    assert g.weights.tolist() == [[0.5, 0.25], [0.0, 1.0]] and g.n_edges == 3 and g.scale == 4.0
    u, v, w, idx = g.edges()
    assert u.tolist() == [0, 1, 1] and v.tolist() == [2, 2, 3] and w.tolist() == [0.5, 0.25, 1.0]
    assert idx.tolist() == [0, 1, 3]
    # the masked entry is not used for the scale
    assert layer_graph(np.array([[9.0, 1.0]]), mask=np.array([[False, True]])).scale == 1.0


def test_linear_layer_reads_kernel_and_mask():
    net = mlp(6, [5], 3, seed=0)
    m = Masks.ones(net)
    m["0.weight"][0, :3] = False
    lay = affine_layers(net, m)[0]
    g = layer_graph(lay)
    W = net[0].weight.detach().double().numpy()
    assert g.kind == "linear" and g.param_name == "0.weight" and g.n_edges == 27
    np.testing.assert_allclose(g.weights[g.mask], np.abs(W)[g.mask] / np.abs(W)[g.mask].max())
    assert not g.mask[0, :3].any()


def test_network_normalisation():
    net = mlp(6, [5], 3, seed=1)
    with torch.no_grad():
        net[2].weight.mul_(10)
    Gl = network_graph(net, normalize="layer")
    Gn = network_graph(net, normalize="network")
    assert all(np.isclose(g.weights.max(), 1.0) for g in Gl)
    assert np.isclose(Gn.scale, np.abs(net[2].weight.detach().double().numpy()).max())
    assert np.isclose(Gn[1].weights.max(), 1.0) and Gn[0].weights.max() < 0.5
    # the diagram scales with the normalisation, the forest does not
    a, b = zeroth_persistence(Gl[0]), zeroth_persistence(Gn[0])
    assert np.array_equal(a.msf_mask, b.msf_mask)
    np.testing.assert_allclose(a.deaths * Gl[0].scale / Gn.scale, b.deaths)
    assert Gl.chained and Gl.widths == [6, 5, 3]
    n, u, v, w = Gl.global_edges()
    assert n == 14 and u.size == 30 + 15 and v.max() == 13 and (u < v).all()


@pytest.mark.parametrize("aggregate", ["l1", "l2", "max"])
def test_conv_channel_graph(aggregate):
    net = small_convnet((1, 16), channels=4, seed=0).eval()
    m = Masks.ones(net)
    m["3.weight"][0, 1] = False  # a whole slice pruned: absent channel edge
    m["3.weight"][1, 2, 0] = False  # part of a slice pruned
    lay = [l for l in affine_layers(net, m) if l.param_name == "3.weight"][0]
    g = layer_graph(lay, aggregate=aggregate)
    assert g.kind == "channel" and g.aggregate == aggregate and g.weights.shape == (4, 4)
    k = lay.kernel.numpy() * m["3.weight"].numpy()
    a = np.abs(k)
    ref = {"l1": a.sum(-1), "l2": np.sqrt((a**2).sum(-1)), "max": a.max(-1)}[aggregate]
    assert not g.mask[0, 1] and g.mask.sum() == 15
    np.testing.assert_allclose(g.weights[g.mask], ref[g.mask] / ref[g.mask].max())


def test_conv_unrolled_graph():
    net = small_convnet((1, 12), channels=2, seed=0).eval()
    lay = affine_layers(net)[0]
    g = layer_graph(lay, conv="unrolled")
    assert g.kind == "unrolled" and g.n_in == 12 and g.n_out == lay.n_out
    assert g.n_edges == int((lay.weight != 0).sum())
    G = network_graph(net)
    assert not G.chained
    with pytest.raises(ValueError, match="do not chain"):
        G.global_edges()


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        layer_graph(np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        layer_graph(torch.tensor([[1.0, float("nan")]]))
    assert layer_graph(np.ones((2, 2)), np.zeros((2, 2))).n_edges == 0  # all pruned: a graph, no edge
    with pytest.raises(TypeError, match="boolean"):
        layer_graph(np.ones((2, 2)), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="needs scale"):
        layer_graph(np.ones((2, 2)), normalize="network")
    with pytest.raises(ValueError, match=">= this layer"):
        layer_graph(np.ones((2, 2)) * 3, normalize="network", scale=1.0)
    with pytest.raises(ValueError, match="aggregate"):
        layer_graph(np.ones((2, 2)), aggregate="mean")
    net = mlp(3, [2], 2, seed=0)
    m = Masks.ones(net)
    m["0.weight"][:] = False
    G = network_graph(net, m)  # a fully pruned layer is a layer without edges
    assert G[0].n_edges == 0 and G[0].scale == 0.0 and G[1].n_edges == 4


def test_layer_graph_of_modules():
    from torch import nn

    net = mlp(6, [5], 3, seed=0)
    mask = np.random.default_rng(0).random((5, 6)) < 0.7
    g = layer_graph(net[0], mask)
    ref = layer_graph(net[0].weight.detach().numpy(), mask)
    assert g.kind == "linear" and g.n_edges == int(mask.sum()) and g.param_name == "weight"
    np.testing.assert_array_equal(g.weights, ref.weights)
    d = zeroth_persistence(net[0], mask)
    assert d.equals(zeroth_persistence(ref), atol=0.0) and d.msf_mask.shape == (5, 6)
    conv = small_convnet((2, 10), channels=3, seed=1)[3]
    lay = affine_layers(nn.Sequential(conv), input_shape=(3, 5))[0]
    gc = layer_graph(conv)  # channel graph: the kernel alone
    np.testing.assert_allclose(gc.weights, layer_graph(lay).weights, rtol=0, atol=1e-15)
    gu = layer_graph(conv, conv="unrolled", input_shape=(3, 5))
    np.testing.assert_allclose(gu.weights, layer_graph(lay, conv="unrolled").weights, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="input_shape"):
        layer_graph(conv, conv="unrolled")
    with pytest.raises(TypeError, match="network_graph"):
        layer_graph(net)
    with pytest.raises(TypeError, match="affine_layers"):
        layer_graph(nn.ReLU())
    # a kernel mask cannot be laid on the effective matrix of an AffineLayer (it used to be ignored) ...
    with pytest.raises(ValueError, match="affine_layers"):
        layer_graph(lay, np.zeros(tuple(conv.weight.shape), bool), conv="unrolled")
    # ... but a bare module takes it through affine_layers
    km = np.ones(tuple(conv.weight.shape), bool)
    km[0] = False
    gm = layer_graph(conv, km, conv="unrolled", input_shape=(3, 5))
    assert not gm.mask[:5].any() and gm.mask[5:].any()  # output channel 0 (first 5 units) has no edge
