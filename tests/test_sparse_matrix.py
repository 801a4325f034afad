"""``PLNode.sparse_matrix`` and the fast ``matrix``: a convolution's (or Linear's) matrix read off its kernel
by index arithmetic, with the BatchNorm scales after it, is the matrix the identity-basis probe gives, bit for
bit (each zero's sign included in the dense form); and the engines that read it give the answers they gave
with the probe."""

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from netgeom.nets import trace
from netgeom.nets.certified import _exact_patterns
from netgeom.nets.graph import PLNode
from netgeom.regions._graph_segment import segment_graph
from netgeom.regions.exact import regions_on_segment


def _probe(node) -> np.ndarray:
    """The reference: the identity basis pushed through the node's ops (the code ``matrix()`` ran before)."""
    n_in = node.in_size
    W = torch.empty((node.size, n_in), dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, n_in, 64):
            j = min(n_in, i + 64)
            basis = torch.zeros((j - i, n_in), dtype=torch.float64)
            basis[torch.arange(j - i), torch.arange(i, j)] = 1.0
            W[:, i:j] = node.apply(basis, bias=False).T
    return W.numpy()


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float64).view(np.int64)


def _check_node(node) -> None:
    ref = _probe(node)
    S = node.sparse_matrix()
    R = scipy.sparse.csr_matrix(ref)  # what the engines built from the dense matrix before
    assert S.shape == ref.shape
    assert np.array_equal(S.indptr, R.indptr)
    assert np.array_equal(S.indices, R.indices)
    assert np.array_equal(_bits(S.data), _bits(R.data))
    assert S.has_sorted_indices and not np.any(S.data == 0)
    D = node.matrix().numpy()
    assert np.array_equal(_bits(D), _bits(ref))  # -0.0 where the probe has it (BatchNorm of a zero)


class ConvBN(nn.Module):
    def __init__(self, dim, ci, co, k, stride, pad, dil, groups, bias, n_bn, flat_bn):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.c = conv(ci, co, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias)
        self.bns = nn.ModuleList(bn(co) for _ in range(n_bn))
        self.flat_bn = flat_bn
        if flat_bn:
            self.fbn = nn.BatchNorm1d(co)

    def forward(self, x):
        x = self.c(x)
        for b in self.bns:
            x = b(x)
        if self.flat_bn:
            x = self.fbn(torch.flatten(x, 2))  # folded into the node after a reshape: (C, H, W) -> (C, H W)
        return torch.relu(x)


def _randomize_bn(m: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = b.num_features
                b.weight.copy_(torch.randn(n, generator=gen))  # negative scales too
                b.bias.copy_(torch.randn(n, generator=gen))
                b.running_mean.copy_(torch.randn(n, generator=gen))
                b.running_var.copy_(torch.rand(n, generator=gen) * 3 + 0.1)


def _affine_nodes(g):
    return [n for n in g.nodes if n.op == "affine"]


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    dim=st.sampled_from([1, 2]),
    k=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pad=st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.sampled_from(["same", "valid"])),
    dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    groups=st.sampled_from([1, 2, 4]),
    bias=st.booleans(),
    n_bn=st.integers(0, 2),
    flat=st.booleans(),
    keep=st.floats(0.2, 1.0),
    seed=st.integers(0, 2**16),
)
def test_conv_nodes_equal_the_probe(dim, k, stride, pad, dil, groups, bias, n_bn, flat, keep, seed):
    """Per-axis kernel sizes, strides, paddings and dilations (conv1d takes the first of each)."""
    if dim == 1:
        k, stride, dil = k[:1], stride[:1], dil[:1]
        pad = pad if isinstance(pad, str) else pad[:1]
    if pad == "same":
        stride = (1,) * dim  # (torch refuses 'same' with a stride)
    gen = torch.Generator().manual_seed(seed)
    ci, co = 4, 8
    shape = (ci, 9) if dim == 1 else (ci, 7, 6)
    p = (0,) * dim if isinstance(pad, str) else pad
    size = [(n + 2 * q - d * (kk - 1) - 1) // s + 1 for n, q, d, kk, s in zip(shape[1:], p, dil, k, stride)]
    if pad != "same" and min(size) < 1:
        return
    net = ConvBN(dim, ci, co, k, stride, pad, dil, groups, bias, n_bn, flat and dim == 2)
    _randomize_bn(net, gen)
    net.eval()
    mask = (torch.rand(net.c.weight.shape, generator=gen) < keep).float()
    with torch.no_grad():
        net.c.weight[mask == 0] = float("nan")  # pruned = absent, whatever is stored there
        net.c.weight.view(-1)[::7] = -0.0  # a stored negative zero is an absent entry too
    g = trace(net, {"c.weight": mask}, input_shape=shape)
    (node,) = _affine_nodes(g)
    assert node._direct() is not None  # the index arithmetic, not the probe
    _check_node(node)


@pytest.mark.parametrize("dim", [1, 2])
def test_one_input_channel_per_group_and_unit_kernel(dim):
    """A 1x1 convolution with one input channel per group: torch's probe gives 0 * w (a signed zero) where
    others give +0.0; the dense form keeps the probe's zeros, the sparse one its nonzeros."""
    conv = (nn.Conv1d if dim == 1 else nn.Conv2d)(4, 8, 1, stride=2, padding=1, groups=4)
    net = nn.Sequential(conv, nn.BatchNorm1d(8) if dim == 1 else nn.BatchNorm2d(8), nn.ReLU())
    _randomize_bn(net, torch.Generator().manual_seed(1))
    net.eval()
    g = trace(net, input_shape=(4, 7) if dim == 1 else (4, 5, 6))
    _check_node(_affine_nodes(g)[0])


def test_linear_bn_lone_bn_and_fallbacks():
    gen = torch.Generator().manual_seed(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 3, 3, padding=1)
            self.bn0 = nn.BatchNorm2d(3)
            self.c2 = nn.Conv2d(3, 3, 3)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(3, 5)
            self.bn1 = nn.BatchNorm1d(5)
            self.fc2 = nn.Linear(5, 4)

        def forward(self, x):
            x = self.bn0(torch.relu(self.c(x)))  # a BatchNorm alone in its node
            x = self.pool(self.c2(torch.relu(x)))  # conv + avg-pool: the probe
            x = torch.relu(self.bn1(self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))))
            return self.fc2(x)

    net = Net()
    _randomize_bn(net, gen)
    net.eval()
    g = trace(net, input_shape=(2, 6, 6))
    nodes = _affine_nodes(g)
    kinds = [(len(n._ops), n._direct() is not None) for n in nodes]
    # conv | lone BatchNorm | conv + avg-pool + mean (probed) | Linear + BatchNorm | Linear
    assert kinds == [(1, True), (1, True), (3, False), (2, True), (1, True)], kinds
    for n in nodes:
        _check_node(n)
    net = nn.Sequential(nn.Conv1d(2, 3, 2), nn.ReLU(), nn.BatchNorm1d(3), nn.Conv1d(3, 2, 3), nn.ReLU())
    _randomize_bn(net, gen)
    nodes = _affine_nodes(trace(net.eval(), input_shape=(2, 7)))
    assert [(len(n._ops), n._direct() is not None) for n in nodes] == [(1, True), (2, False)]  # BN -> conv
    _check_node(nodes[1])


def test_nan_weight_and_underflow():
    """Products that underflow, and a zero scale, give zeros the sparse form leaves out. A NaN weight (trace
    refuses one in a kept weight; here put in afterwards) spreads over every entry its kernel touches in the
    probe (nan * 0): such a node is probed."""
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    net = nn.Sequential(conv, nn.BatchNorm2d(2), nn.ReLU()).double().eval()  # (1e-200 in float64)
    with torch.no_grad():
        conv.weight.fill_(1e-200)
        conv.weight[0, 0, 1, 1] = 1.0
        net[1].weight.copy_(torch.tensor([1e-200, 0.0], dtype=torch.float64))
    node = _affine_nodes(trace(net, input_shape=(1, 4, 4)))[0]
    _check_node(node)
    assert node.sparse_matrix().nnz == 16  # only the centre weight of channel 0 survives the scale
    node = _affine_nodes(trace(net, input_shape=(1, 4, 4)))[0]
    node._ops[0].params["weight"][1, 0, 0, 0] = float("nan")
    assert node._direct() is None
    _check_node(node)


def test_matrix_still_refuses_over_max_entries_but_sparse_does_not():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 2))
    g = trace(net.eval(), input_shape=(1, 10, 10), max_entries=10_000)
    with pytest.raises(ValueError, match="unrolls to a dense 400 x 100"):
        g.nodes[1].matrix()
    S = g.nodes[1].sparse_matrix()
    ref = trace(net, input_shape=(1, 10, 10)).nodes[1].matrix().numpy()
    assert np.array_equal(_bits(S.toarray()), _bits(ref + 0.0))


class Block(nn.Module):
    """A ResNet basic block with a strided 1x1 shortcut, then max-pooling and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.short = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))
        self.fc = nn.Linear(6 * 2 * 2, 3)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)) + self.short(x))
        return self.fc(torch.flatten(F.max_pool2d(out, 2), 1))


def _block_case():
    net = Block()
    _randomize_bn(net, torch.Generator().manual_seed(5))
    net.eval()
    gen = torch.Generator().manual_seed(6)
    masks = {
        n: (torch.rand(p.shape, generator=gen) < 0.6).float()
        for n, p in net.named_parameters()
        if n.endswith("weight") and p.ndim > 1
    }
    a = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    b = torch.randn(1, 8, 8, generator=gen, dtype=torch.float64)
    return net, masks, a, b


def _probe_only(monkeypatch):
    """main's code path: every matrix probed (sparse_matrix converts the probed dense matrix)."""
    monkeypatch.setattr(PLNode, "_direct", lambda self: None)


def test_segment_through_a_residual_block_is_unchanged(monkeypatch):
    net, masks, a, b = _block_case()
    new = regions_on_segment(net, a, b, masks=masks)
    _probe_only(monkeypatch)
    old = regions_on_segment(net, a, b, masks=masks)
    assert new.count == old.count and new.count > 20
    assert new.n_exact == old.n_exact
    assert np.array_equal(_bits(new.edges), _bits(old.edges))
    assert np.array_equal(new.patterns, old.patterns)
    assert np.array_equal(_bits(new.outputs), _bits(old.outputs))


def test_exact_paths_read_the_same_numbers(monkeypatch):
    """Every piece split in exact arithmetic (the sparse exact maps); the certified exact pattern reader."""
    net, masks, a, b = _block_case()
    a, d = a.reshape(-1).numpy(), (b - a).reshape(-1).numpy()
    x = torch.from_numpy(a + 0.3 * d)[None]
    runs = []
    for probe in (False, True):
        if probe:
            _probe_only(monkeypatch)
        g = trace(net, masks)
        info = {}
        edges, pats = segment_graph(g, a, d, 0.0, 0.2, exact="always", info=info)
        keep = {n.index for n in g.nodes}
        runs.append((edges, pats, info["n_exact"], _exact_patterns(g, x[0], keep)))
    (e1, p1, n1, x1), (e2, p2, n2, x2) = runs
    assert n1 == n2 > 0 and len(e1) > 3
    assert np.array_equal(_bits(e1), _bits(e2)) and np.array_equal(p1, p2)
    assert x1.keys() == x2.keys() and all(np.array_equal(x1[k], x2[k]) for k in x1)
