"""Tracer QA: F.linear with the model's parameters, empty batches, weights shared by two calls."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from netgeom import Masks, msf_retention, neural_persistence, topology_bound
from netgeom.nets import UnsupportedLayerError, affine_layers, lenet5, mlp, resnet20, trace


class FunctionalMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight, self.bias = nn.Parameter(torch.randn(5, 3)), nn.Parameter(torch.randn(5))
        self.w_out = nn.Parameter(torch.randn(2, 5))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.weight, self.bias)), self.w_out)


def test_functional_linear_with_parameters_is_an_affine_node_and_masks_apply_to_its_name():
    net = FunctionalMLP().double()
    g = trace(net)
    assert [n.op for n in g.nodes] == ["input", "affine", "relu", "affine", "output"]
    assert [n.param_name for n in g.nodes if n.op == "affine"] == ["weight", "w_out"]
    assert g.input_shape == (3,)  # from the weight, as for an nn.Linear
    x = torch.randn(9, 3, dtype=torch.float64)
    torch.testing.assert_close(g(x), net(x).detach(), rtol=0, atol=1e-12)
    mask = torch.rand(5, 3, generator=torch.Generator().manual_seed(1)) > 0.5
    layer = affine_layers(net, {"weight": mask})[0]
    torch.testing.assert_close(layer.weight, net.weight.detach() * mask)
    assert torch.equal(layer.mask, mask)
    # the same network written with nn.Linear gives the same layers
    ref = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2, bias=False)).double()
    with torch.no_grad():
        ref[0].weight.copy_(net.weight)
        ref[0].bias.copy_(net.bias)
        ref[2].weight.copy_(net.w_out)
    for a, b in zip(affine_layers(net), affine_layers(ref)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    with pytest.raises(KeyError, match="names no parameter"):
        trace(net, {"nope": torch.ones(2, dtype=torch.bool)})


def test_functional_linear_masks_and_other_parameter_uses():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.extra = nn.Parameter(torch.randn(4, 4))  # not read in forward

        def forward(self, x):
            return self.fc(x)

    # a mask on a parameter that no F.linear reads is refused, never ignored
    with pytest.raises(ValueError, match="'extra'"):
        trace(Mixed(), {"extra": torch.ones(4, 4, dtype=torch.bool)})

    class MatMul(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(5, 3))

        def forward(self, x):
            return torch.relu(x @ self.weight.T)

    class TorchMatmul(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 5))

        def forward(self, x):
            return torch.matmul(x, self.weight)

    # refused naming the node, its operation and the user's line (not "no Linear or Conv layer")
    with pytest.raises(UnsupportedLayerError, match=r"MatMul: function getattr .*qa.py:\d+ .*'weight'"):
        trace(MatMul())
    with pytest.raises(UnsupportedLayerError, match=r"function matmul .*test_graph_qa.py:\d+ .*F\.linear"):
        trace(TorchMatmul())


@pytest.mark.parametrize(
    "net",
    [mlp(3, [4], 2, seed=0), lenet5(), resnet20(width=2, blocks=1, image_size=8, seed=0)],
    ids=["mlp", "lenet5", "resnet"],
)
def test_empty_batch_gives_empty_outputs_of_the_right_shape(net):
    g = trace(net)
    for x in (torch.zeros(0, *g.input_shape), torch.zeros(0, g.n_in)):
        assert tuple(g.forward(x).shape) == (0, g.n_out)
        assert [tuple(v.shape) for v in g.values(x)] == [(0, n.size) for n in g.nodes]
    layers = affine_layers(net) if g.is_chain else None
    if layers is not None:
        from netgeom.nets import forward_affine

        assert tuple(forward_affine(layers, torch.zeros(0, g.n_in)).shape) == (0, g.n_out)


class Shared(nn.Module):
    """fc2 applied twice: one weight tensor, two affine nodes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.out = nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.out(torch.relu(self.fc2(h)))


class Unshared(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.out = s.fc1, s.fc2, copy.deepcopy(s.fc2), s.out

    def forward(self, x):
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.out(torch.relu(self.fc3(h)))


def test_a_shared_weight_is_one_weight_graph_in_per_layer_measures():
    s = Shared()
    u = Unshared(s)
    assert [n.param_name for n in trace(s).nodes if n.op == "affine"] == [
        "fc1.weight",
        "fc2.weight",
        "fc2.weight",
        "out.weight",
    ]
    a, b = neural_persistence(s), neural_persistence(u)
    assert a.layer_names == ["fc1", "fc2", "out"]
    # the unshared copy has the same graphs, fc2's twice: the shared net counts it once
    assert a.layer_np == [b.layer_np[0], b.layer_np[1], b.layer_np[3]]
    assert b.layer_np[1] == b.layer_np[2]
    assert a.network_np == pytest.approx(np.mean(a.layer_np_normalized))
    assert a.network_np != pytest.approx(b.network_np)
    tb, tu = topology_bound(s), topology_bound(u)
    assert tb.layer_names == ["fc1", "fc2", "out"]
    assert tb.n_possible == [15, 25, 10] and tu.n_possible == [15, 25, 25, 10]
    m = Masks.ones(s)
    m["fc2.weight"] = torch.rand(5, 5, generator=torch.Generator().manual_seed(0)) > 0.3
    r = msf_retention(s, m)
    assert r.layer_names == ["fc1", "fc2", "out"]
    assert r.retention[0] == 1.0 and r.retention[2] == 1.0


# ------------------------------------------------------------------------ the Sequential walk == fx tracing
def _fx_trace(net, **kw):
    import netgeom.nets.graph as graph_mod

    with pytest.MonkeyPatch.context() as m:
        m.setattr(graph_mod, "_sequential_graph", lambda model: None)
        return trace(net, **kw)


def _assert_same_graph(a, b):
    assert (a.input_shape, a.model_name, a.output, a.named) == (
        b.input_shape,
        b.model_name,
        b.output,
        b.named,
    )
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes):
        for f in (
            "index",
            "name",
            "op",
            "inputs",
            "shape",
            "source",
            "module",
            "param_name",
            "kind",
            "negative_slope",
            "in_shape",
            "_first_name",
            "_max_entries",
        ):
            assert getattr(x, f) == getattr(y, f), (f, x, y)
        for f in ("kernel", "mask", "windows"):
            u, v = getattr(x, f), getattr(y, f)
            assert (u is None and v is None) or torch.equal(u, v), (f, x)
        assert (
            x._pool == y._pool
            if x._pool is None
            else (
                {k: v for k, v in x._pool.items() if k != "starts"}
                == {k: v for k, v in y._pool.items() if k != "starts"}
            )
        )
        assert len(x._ops) == len(y._ops)
        for p, q in zip(x._ops, y._ops):
            assert (p.name, p.type_name, p.in_shape, p.out_shape, p.fan_in, p.weighted, p.param_name) == (
                q.name,
                q.type_name,
                q.in_shape,
                q.out_shape,
                q.fan_in,
                q.weighted,
                q.param_name,
            )
            assert p.params.keys() == q.params.keys()
            assert all(torch.equal(p.params[k], q.params[k]) for k in p.params)
            assert p.module is q.module
        if x.op == "affine":
            assert torch.equal(x.bias_vector, y.bias_vector)
            if x.size * x.in_size <= 2**20:
                assert torch.equal(x.matrix(), y.matrix())
            z = torch.randn(3, x.in_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
            assert torch.equal(x.apply(z), y.apply(z))


def test_sequential_walk_builds_the_traced_graph_of_every_built_in_model():
    from netgeom.nets import lenet_300_100, small_convnet, vgg
    from netgeom.nets.graph import _sequential_graph

    models = [
        mlp(2, [32, 32], 1, seed=0),
        mlp(3, [5], 2, seed=1, activation="leaky_relu"),
        lenet_300_100(),
        lenet5(),
        small_convnet(),
        vgg([4, "M", 8, "M"], image_size=8, seed=0),
    ]
    for net in models:
        assert _sequential_graph(net) is not None
        masks = {
            k: torch.rand(v.shape, generator=torch.Generator().manual_seed(0)) > 0.5
            for k, v in net.named_parameters()
            if v.ndim > 1
        }
        _assert_same_graph(trace(net, masks), _fx_trace(net, masks=masks))
    # not a plain Sequential: fx traces it
    assert _sequential_graph(resnet20(width=2, blocks=1, image_size=8)) is None
    net = mlp(2, [3], 1)
    net[0].register_forward_hook(lambda *a: None)
    assert _sequential_graph(net) is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_FLAT = st.sampled_from(["linear", "relu", "leaky", "bn", "drop", "identity", "flatten", "nest", "shared"])


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(_FLAT, min_size=1, max_size=8),
    widths=st.lists(st.integers(1, 6), min_size=9, max_size=9),
    conv=st.booleans(),
    seed=st.integers(0, 100),
)
def test_sequential_walk_equals_fx_on_random_sequentials(kinds, widths, conv, seed):
    torch.manual_seed(seed)
    mods = []
    if conv:
        mods += [
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AvgPool2d(1),
            nn.Flatten(),
        ]
        width = 3 * 3 * 3
    else:
        width = 4
    shared = None
    for kind, w in zip(kinds, widths):
        if kind == "linear":
            mods.append(nn.Linear(width, w))
            width = w
        elif kind == "relu":
            mods.append(nn.ReLU())
        elif kind == "leaky":
            mods.append(nn.LeakyReLU(0.1))
        elif kind == "bn":
            bn = nn.BatchNorm1d(width).eval()
            bn.running_mean.uniform_(-1, 1)
            mods.append(bn)
        elif kind == "drop":
            mods.append(nn.Dropout(0.5))
        elif kind == "identity":
            mods.append(nn.Identity())
        elif kind == "flatten":
            mods.append(nn.Flatten())
        elif kind == "nest":
            mods.append(nn.Sequential(nn.Linear(width, w), nn.ReLU(), nn.Sequential(nn.Identity())))
            width = w
        elif kind == "shared":
            # the same module instance twice: fx calls it by its first path both times
            shared = nn.Linear(width, width)
            mods += [shared, nn.ReLU(), shared]
    mods.append(nn.Linear(width, 2))
    net = nn.Sequential(*mods).eval()
    kw = {"input_shape": (2, 6, 6)} if conv else {}
    _assert_same_graph(trace(net, **kw), _fx_trace(net, **kw))
    x = torch.randn(5, 2, 6, 6) if conv else torch.randn(5, 4)
    torch.testing.assert_close(trace(net, **kw)(x), net.double()(x.double()), rtol=0, atol=1e-10)


def test_functional_linear_weights_are_pruned_like_module_weights():
    from netgeom import count_patterns, magnitude_prune, prunable_parameters

    net = FunctionalMLP().double()
    assert prunable_parameters(net) == ["weight", "w_out"]
    assert prunable_parameters(net, include_output=False) == ["weight"]
    masks = magnitude_prune(net, 0.5)
    assert set(masks) == {"weight", "w_out"} and 0 < masks.density() < 1
    # pruned = zero: the masked network and the network with those weights zeroed read the same
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        zeroed.weight.mul_(masks["weight"])
        zeroed.w_out.mul_(masks["w_out"])
    X = torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert count_patterns(net, X, masks).count == count_patterns(zeroed, X).count
    assert neural_persistence(net, masks) == pytest.approx(neural_persistence(zeroed), abs=1e-12)
    # models without loose matrices are not traced, and their list is unchanged
    assert prunable_parameters(mlp(3, [4], 2, seed=0)) == ["0.weight", "2.weight"]
