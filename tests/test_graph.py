"""trace: any traceable network as a piecewise-linear graph that reproduces model(x) exactly."""

import copy
import math
from math import floor

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import Masks, PLGraph, UnsupportedLayerError, affine_layers, mlp, trace


def _act(x, kind):
    if kind == "F.relu":
        return F.relu(x)
    if kind == "torch.relu":
        return torch.relu(x)
    if kind == "method":
        return x.relu()
    if kind == "leaky":
        return F.leaky_relu(x, 0.1)
    raise AssertionError(kind)


_ACTS = ["F.relu", "torch.relu", "method", "leaky", "module", "module_inplace", "leaky_module"]


class _Act(nn.Module):
    """An activation chosen by name; module kinds hold a real nn.ReLU/LeakyReLU submodule."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        mods = {
            "module": nn.ReLU(),
            "module_inplace": nn.ReLU(inplace=True),
            "leaky_module": nn.LeakyReLU(0.2),
        }
        self.m = mods.get(kind)

    def forward(self, x):
        return self.m(x) if self.m is not None else _act(x, self.kind)


class _Block(nn.Module):
    """A basic residual block with its own forward (BN folded, functional or module activations)."""

    def __init__(self, c, dim, act, groups):
        super().__init__()
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
        self.conv1 = conv(c, c, 3, padding=1, groups=groups, bias=False)
        self.bn1 = bn(c)
        self.conv2 = conv(c, c, 3, padding=1)
        self.act = _Act(act)

    def forward(self, x):
        h = self.act(self.bn1(self.conv1(x)))
        out = self.conv2(h)
        out += x
        return F.relu(out)


class _ConvNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        dim, c_in, c = cfg["dim"], cfg["c_in"], cfg["c"]
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        self.stem = conv(
            c_in, c, cfg["k"], stride=cfg["stride"], padding=cfg["padding"], dilation=cfg["dilation"]
        )
        self.bn = (nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d)(c) if cfg["bn"] else nn.Identity()
        self.act = _Act(cfg["act"])
        if cfg["maxpool"]:
            mk, ms, mp, ceil = cfg["maxpool"]
            self.pool = (nn.MaxPool1d if dim == 1 else nn.MaxPool2d)(mk, ms, mp, ceil_mode=ceil)
        self.block = _Block(c, dim, cfg["act2"], cfg["groups"]) if cfg["block"] else None
        if cfg["cat"]:
            self.left = conv(c, 2, 1)
            self.right = conv(c, 3, 1, groups=1)
            c = 5
        self.drop = nn.Dropout(0.3)
        self.head = None
        self.c_out = c

    def features(self, x):
        x = self.act(self.bn(self.stem(x)))
        if self.cfg["maxpool"]:
            x = self.pool(x) if self.cfg["pool_module"] else self._fpool(x)
        if self.block is not None:
            x = self.block(x)
        if self.cfg["cat"]:
            x = torch.cat([self.left(x), F.relu(self.right(x))], dim=1)
        x = self.drop(x)
        if self.cfg["avg"] == "adaptive":
            x = F.adaptive_avg_pool1d(x, 2) if self.cfg["dim"] == 1 else F.adaptive_avg_pool2d(x, (2, 1))
        elif self.cfg["avg"] == "mean":
            x = x.mean(dim=-1, keepdim=True)
        return x

    def _fpool(self, x):
        mk, ms, mp, ceil = self.cfg["maxpool"]
        f = F.max_pool1d if self.cfg["dim"] == 1 else F.max_pool2d
        return f(x, mk, ms, mp, ceil_mode=ceil)

    def forward(self, x):
        x = self.features(x)
        flat = self.cfg["flatten"]
        if flat == "torch":
            x = torch.flatten(x, 1)
        elif flat == "view":
            x = x.view(x.size(0), -1)
        else:
            x = x.reshape(x.shape[0], -1)
        return self.head(x)


@st.composite
def _conv_cfg(draw):
    dim = draw(st.sampled_from([1, 2]))
    k = draw(st.integers(1, 3))
    cfg = {
        "dim": dim,
        "c_in": draw(st.integers(1, 2)),
        "c": draw(st.sampled_from([2, 4])),
        "k": k,
        "stride": draw(st.integers(1, 2)),
        "padding": draw(st.integers(0, k // 2 + 1)),
        "dilation": draw(st.integers(1, 2)),
        "bn": draw(st.booleans()),
        "act": draw(st.sampled_from(_ACTS)),
        "act2": draw(st.sampled_from(_ACTS)),
        "groups": draw(st.sampled_from([1, 2])),
        "block": draw(st.booleans()),
        "cat": draw(st.booleans()),
        "avg": draw(st.sampled_from(["none", "adaptive", "mean"])),
        "flatten": draw(st.sampled_from(["torch", "view", "reshape"])),
        "pool_module": draw(st.booleans()),
        "seed": draw(st.integers(0, 10_000)),
    }
    mk = draw(st.integers(2, 3))
    pool = st.tuples(st.just(mk), st.integers(1, 3), st.integers(0, mk // 2), st.booleans())
    cfg["maxpool"] = draw(st.one_of(st.none(), pool))
    return cfg


def _build(cfg, size=9):
    torch.manual_seed(cfg["seed"])
    net = _ConvNet(cfg)
    shape = (cfg["c_in"],) + (size,) * cfg["dim"]
    with torch.no_grad():
        n_flat = net.eval().features(torch.zeros(1, *shape)).numel()
    net.head = nn.Linear(n_flat, 3)
    _randomise_bn(net, cfg["seed"])
    return net.eval(), shape


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.3)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def _max_err(model, g, shape, n=6, seed=0):
    x = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = copy.deepcopy(model).double().eval()(x).reshape(n, -1)
    return (g.forward(x) - ref).abs().max().item()


@given(_conv_cfg())
@settings(max_examples=40, deadline=None)
def test_random_conv_graphs_reproduce_the_model(cfg):
    net, shape = _build(cfg)
    g = trace(net, input_shape=shape)
    assert _max_err(net, g, shape, seed=cfg["seed"]) <= 1e-10
    ops = [n.op for n in g.nodes]
    assert ops.count("maxpool") == (cfg["maxpool"] is not None)
    assert ops.count("add") == cfg["block"]
    assert ops.count("cat") == cfg["cat"]
    # one weight tensor per affine node, and every conv/linear weight is there
    params = [n.param_name for n in g.nodes if n.op == "affine" and n.param_name]
    expected = [k for k, p in net.named_parameters() if k.endswith("weight") and p.ndim > 1]
    assert sorted(params) == sorted(expected)
    for n in g.nodes:  # every node's dense matrix agrees with its torch application
        if n.op == "affine":
            x = torch.randn(3, n.in_size, dtype=torch.float64)
            assert torch.allclose(x @ n.matrix().T + n.bias_vector, n.apply(x), atol=1e-12)


class _ResMLP(nn.Module):
    def __init__(self, n, width, depth, acts):
        super().__init__()
        self.inp = nn.Linear(n, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), _Act(a)) for a in acts[:depth])
        self.side = nn.Linear(width, 2)
        self.out = nn.Linear(width + 2, 2)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for b in self.blocks:
            h = h + b(h)
        return self.out(torch.cat((h, self.side(h)), 1))


@given(
    st.integers(1, 5),
    st.integers(1, 6),
    st.integers(0, 3),
    st.lists(st.sampled_from(_ACTS), min_size=3, max_size=3),
    st.integers(0, 1000),
)
@settings(max_examples=30, deadline=None)
def test_random_residual_mlps_reproduce_the_model(n, width, depth, acts, seed):
    torch.manual_seed(seed)
    net = _ResMLP(n, width, depth, acts).eval()
    g = trace(net)
    assert g.input_shape == (n,)
    assert _max_err(net, g, (n,), seed=seed) <= 1e-10
    assert [x.op for x in g.nodes].count("add") == depth
    assert not g.is_chain
    with pytest.raises(UnsupportedLayerError, match="residual addition|concatenation|starts a branch"):
        g.layers()


def test_sequential_is_a_chain_and_layers_equal_affine_layers():
    net = mlp(4, [6, 5], 3, seed=0)
    g = trace(net)
    assert isinstance(g, PLGraph) and g.is_chain
    assert [n.op for n in g.nodes] == ["input", "affine", "relu", "affine", "relu", "affine", "output"]
    assert [n.param_name for n in g.nodes if n.op == "affine"] == ["0.weight", "2.weight", "4.weight"]
    for a, b in zip(g.layers(), affine_layers(net)):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    x = torch.randn(5, 4, dtype=torch.float64)
    vals = g.values(x)
    assert len(vals) == len(g.nodes) and torch.equal(vals[-1], g.forward(x))
    assert torch.equal(vals[2], torch.relu(vals[1]))


def test_masks_apply_to_the_weights_they_name_in_a_residual_net():
    torch.manual_seed(0)
    net = _ResMLP(3, 5, 2, ["module", "F.relu", "method"]).eval()
    masks = Masks.ones(net)
    masks["blocks.1.0.weight"][:, ::2] = False
    masks["inp.weight"][0] = False
    pruned = copy.deepcopy(net)
    masks.apply(pruned)
    g = trace(net, {k: v.int() for k, v in masks.items()})  # a plain dict of 0/1 ints is a mapping too
    assert _max_err(pruned, g, (3,)) <= 1e-10
    node = next(n for n in g.nodes if n.param_name == "blocks.1.0.weight")
    assert node.mask is not None and (node.kernel[:, ::2] == 0).all()
    assert (net.blocks[1][0].weight[:, ::2] != 0).all()  # the user's model is untouched
    with pytest.raises(ValueError, match="not Linear/Conv weights.*inp.bias"):
        trace(net, {"inp.bias": torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="0 and 1"):
        trace(net, {"inp.weight": torch.full((5, 3), 0.5)})
    with pytest.raises(ValueError, match=r"'inp.weight' has shape \(3, 5\)"):
        trace(net, {"inp.weight": torch.ones(3, 5, dtype=torch.bool)})


def test_maxpool_windows_and_argmax_positions():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    net = nn.Sequential(*net, nn.Flatten(), nn.Linear(2 * 4 * 4, 2)).eval()
    g = trace(net, input_shape=(1, 7, 7))
    pool = next(n for n in g.nodes if n.op == "maxpool")
    assert pool.windows.shape == (2 * 4 * 4, 9) and pool.in_shape == (2, 7, 7)
    # window of output (c=1, 0, 0): rows -1..1 x cols -1..1 -> the valid 2x2 corner of channel 1
    w = pool.windows[16].tolist()
    assert sorted(i for i in w if i >= 0) == [49, 50, 56, 57] and w.count(-1) == 5
    x = torch.randn(4, 2 * 49, dtype=torch.float64)
    vals, pos = pool.pool(x, return_indices=True)
    chosen = torch.gather(pool.windows.expand(4, -1, -1), 2, pos.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(torch.gather(x, 1, chosen), vals)
    with pytest.raises(UnsupportedLayerError, match=r"'2' \(MaxPool2d\) is a max-pooling"):
        g.layers()


def test_unsupported_operations_name_node_op_and_source_line():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

    with pytest.raises(UnsupportedLayerError, match=r"Gate: function sigmoid .*test_graph.py:\d+ \(`return"):
        trace(Gate())

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return x

    with pytest.raises(UnsupportedLayerError, match=r"trace Branchy.forward .*test_graph.py:\d+ \(`if x"):
        trace(Branchy())

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.att = nn.MultiheadAttention(4, 1)

        def forward(self, x):
            return self.att(self.fc(x), x, x)[0]

    with pytest.raises(UnsupportedLayerError, match=r"'att' \(MultiheadAttention\)"):
        trace(Attn())

    class Const(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.register_buffer("c", torch.ones(3))

        def forward(self, x):
            return self.fc(x) + self.c

    with pytest.raises(UnsupportedLayerError, match=r"reads the tensor attribute 'c'"):
        trace(Const())
    with pytest.raises(UnsupportedLayerError, match=r"dim 0"):
        trace(_CatBatch())


class _CatBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return torch.cat([self.fc(x), x], 0)


def test_inplace_activation_changes_what_later_code_sees():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            F.relu(h, inplace=True)  # result unused: h itself is rectified
            h += self.a(x)
            return self.b(h)

    torch.manual_seed(0)
    net = InPlace().eval()
    g = trace(net)
    assert _max_err(net, g, (3,)) <= 1e-10
    assert [n.op for n in g.nodes] == ["input", "affine", "relu", "affine", "add", "affine", "output"]


def test_unused_operations_are_dropped_and_sources_point_at_user_code():
    class Dead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x):
            _unused = self.b(F.relu(self.a(x)))
            return self.b(torch.relu(self.a(x)))

    g = trace(Dead())
    assert [n.op for n in g.nodes] == ["input", "affine", "relu", "affine", "output"]
    assert "test_graph.py" in g.nodes[2].source and "torch.relu" in g.nodes[2].source
    assert g.nodes[1].module == "a" and g.nodes[1].kind == "linear"


def test_matrix_guard_and_input_shape_errors():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
    net = nn.Sequential(*net, nn.Flatten(), nn.Linear(64, 2))
    g = trace(net, input_shape=(1, 8, 8), max_entries=1000)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert _max_err(net, g, (1, 8, 8)) <= 1e-10  # apply needs no dense matrix
    with pytest.raises(ValueError, match="unrolls to a dense 256 x 64"):
        g.nodes[1].matrix()
    with pytest.raises(ValueError, match="input_shape"):
        trace(net)
    with pytest.raises(ValueError, match="features per sample"):
        g.forward(x[:, :, :4])


class _TorchvisionBlock(nn.Module):
    """torchvision's BasicBlock idiom: one in-place ReLU module called twice, `out += identity`."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 2)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        out = self.relu(out)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.fc(out.view(out.size(0), -1))


def test_torchvision_style_block():
    torch.manual_seed(0)
    net = _randomise_bn(_TorchvisionBlock(3)).eval()
    g = trace(net, input_shape=(3, 5, 5))
    assert _max_err(net, g, (3, 5, 5)) <= 1e-10
    assert [n.op for n in g.nodes] == ["input", "affine", "relu", "affine", "add", "relu", "affine", "output"]
    assert len(g.named["relu"]) == 2  # one module, two calls
    assert g.nodes[6].kind == "linear" and [op.type_name for op in g.nodes[6]._ops] == [
        "adaptive_avg_pool2d",
        "Linear",
    ]


def test_input_shape_is_inferred_through_a_leading_flatten():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.ReLU(), nn.Linear(3, 2))
    assert trace(net).input_shape == (12,)
    g = trace(net, input_shape=(3, 4))
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    assert (g.forward(x) - net.double()(x)).abs().max() <= 1e-10


def test_a_dropout_active_in_eval_mode_is_refused_not_read_as_identity():
    # F.dropout's training flag defaults to True: model(x) stays random after eval(), so reading the dropout
    # as the identity would be silently wrong
    class AlwaysDrops(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.dropout(F.relu(self.a(x)), 0.5))

    class Flagged(AlwaysDrops):
        def forward(self, x):
            return self.b(F.dropout(F.relu(self.a(x)), 0.5, self.training))

    with pytest.raises(UnsupportedLayerError, match="stays active in eval mode"):
        trace(AlwaysDrops().eval())
    m = Flagged().eval().double()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.equal(trace(m).forward(x), m(x))


class _PoolNet(nn.Module):
    def __init__(self, k):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3, 12)
        self.k = k

    def forward(self, x):
        return F.max_pool1d(self.fc(x).unsqueeze(1), self.k).flatten(1)


def test_max_pool_windows_checked_against_torch_once_per_pooling(monkeypatch):
    """A max-pooling's windows are checked against torch the first time its input shape and arguments are
    seen; later traces of the same pooling take the probe from those windows (no torch max-pool call), and
    another kernel size is checked again. Every trace still reproduces the model."""
    from netgeom.nets import graph as G

    calls = []

    class _CountingF:
        def __getattr__(self, name):
            return getattr(F, name)

        def max_pool1d(self, *a, **k):
            calls.append(a[1:])
            return F.max_pool1d(*a, **k)

    monkeypatch.setattr(G, "F", _CountingF())
    monkeypatch.setattr(G, "_CHECKED_POOLS", {})
    net = _PoolNet(4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    g1 = trace(net)
    n_first = len(calls)
    assert n_first >= 1 and len(G._CHECKED_POOLS) == 1
    g2 = trace(net)
    assert len(calls) == n_first  # the checked windows, not torch
    w1, w2 = (next(n for n in g.nodes if n.op == "maxpool").windows for g in (g1, g2))
    assert torch.equal(w1, w2) and w1.shape == (3, 4)
    assert torch.equal(g2.forward(x), net(x))
    net.k = 3  # another pooling of the same input: checked again, other windows
    g3 = trace(net)
    assert len(calls) > n_first and len(G._CHECKED_POOLS) == 2
    assert next(n for n in g3.nodes if n.op == "maxpool").windows.shape == (4, 3)
    assert torch.equal(g3.forward(x), net(x))


def test_every_trace_reads_the_model_as_it_is_now():
    """No trace is reused across calls: in-place edits, `.data` assignments, module replacement, appended
    layers and mask changes all show in the next trace (of a Sequential, whose fx graph is memoised by its
    leaves' paths, and of a module with its own forward)."""
    x = torch.randn(4, 3, dtype=torch.float64)
    net = mlp(3, [4], 2, seed=0)
    g = trace(net)
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    assert not torch.equal(trace(net).forward(x), g.forward(x))
    assert torch.allclose(trace(net).forward(x), net(x.float()).double(), atol=1e-6)
    net[0].weight.data.add_(1.0)  # bypasses autograd's version counter
    assert torch.allclose(trace(net).forward(x), net(x.float()).double(), atol=1e-6)
    net[0].weight.data = torch.zeros(4, 3)
    assert torch.equal(trace(net).nodes[1].kernel, torch.zeros(4, 3, dtype=torch.float64))
    net[0] = nn.Linear(3, 4)
    assert torch.allclose(trace(net).forward(x), net(x.float()).double(), atol=1e-6)
    net[1] = nn.LeakyReLU(0.25)
    assert trace(net).nodes[2].negative_slope == 0.25
    net.append(nn.ReLU())
    net.append(nn.Linear(2, 1))
    g = trace(net)
    assert g.n_out == 1 and torch.allclose(g.forward(x), net(x.float()).double(), atol=1e-6)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0] = False
    assert torch.equal(trace(net, {"0.weight": mask}).nodes[1].kernel[0], torch.zeros(3, dtype=torch.float64))
    assert torch.count_nonzero(trace(net).nodes[1].kernel[0]) == 3
    pool = _PoolNet(4).double()
    g = trace(pool)
    pool.fc = nn.Linear(3, 8).double()
    assert trace(pool).nodes[-2].shape != g.nodes[-2].shape
    assert torch.equal(trace(pool).forward(x), pool(x))


class _MathShapes(nn.Module):
    """Shape arithmetic through ``math`` (called as ``math.prod`` and as an imported name): fx records
    these calls only through the wrappers it patches in for the trace."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        n = math.prod(x.shape[1:])
        h = torch.relu(self.fc1(x.reshape(-1, n)))
        return self.fc2(h.view(-1, floor(math.sqrt(n * n))))


def test_math_calls_on_traced_shapes_are_recorded_in_every_trace():
    """fx's wrappers of math functions are made once and reused (one per function), and the set of math
    functions to wrap is collected once: every trace records the same calls as fx's own tracer, reproduces
    the model, and leaves ``math`` as it was."""
    import torch.fx as fx

    from netgeom.nets.graph import _Tracer

    net = _MathShapes().double()
    before = (math.prod, math.sqrt, floor)
    for _ in range(2):  # the autowrap set collected once is fx's default one
        ours, fxs = _Tracer(), fx.Tracer()
        assert ours._autowrap_function_ids == fxs._autowrap_function_ids
        assert ours._autowrap_search == fxs._autowrap_search == [math]
    ref = [(n.op, n.target) for n in fx.Tracer().trace(net).nodes]
    assert (("call_function", math.prod) in ref) and (("call_function", floor) in ref)
    x = torch.randn(5, 6, dtype=torch.float64)
    for _ in range(3):
        assert [(n.op, n.target) for n in _Tracer().trace(net).nodes] == ref
        g = trace(net, input_shape=(6,))
        assert torch.equal(g.forward(x), net(x))
    assert (math.prod, math.sqrt, floor) == before
    assert not hasattr(math.prod, "__fx_already_patched")
