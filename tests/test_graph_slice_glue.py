"""Per-call work the graph slice no longer does, checked to change nothing.

* Origins (the ReLU line an entry vanishes on) are kept only when a max-pool node can read a ReLU output: a
  max-pool after an affine node reads none. Forcing them on everywhere (what every graph with a max-pool did
  before) must change no region and no pattern, on the compiled path and on the numpy path (which settles
  ties exactly, reading the origins it is given).
* A ReLU node's working rows, sized for every piece or grown while cutting, give the same pieces.
* An affine node's arrays are read without torch's copy of the bias: the same numbers as matrix() and
  bias_vector.
"""

import numpy as np
import pytest
import torch
from test_graph_slice import (
    BOX,
    GlobalMax,
    ResPoolCat,
    _check_against_sampling,
    _keys_list,
    _plane,
    conv_pool_1d,
)
from torch import nn
from torch.nn import functional as F

from netgeom.nets import trace
from netgeom.regions import _graph_slice as gs
from netgeom.regions._graph_slice import GraphSliceCtx, slice_graph_regions


class _PoolOfCat(nn.Module):
    """A max-pool over a concatenation of a ReLU output and an affine output: origins are needed."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 3), nn.Linear(2, 3), nn.Linear(3, 2)

    def forward(self, x):
        z = torch.cat([F.relu(self.fc1(x)), self.fc2(x)], dim=1)
        return self.fc3(F.max_pool1d(z.unsqueeze(1), 2).flatten(1))


def _tied_global_max(seed: int) -> nn.Module:
    """GlobalMax with two identical pooled candidates: every sign of their difference is settled exactly."""
    net = GlobalMax(2, 6, 4, 3, seed)
    with torch.no_grad():
        net.fc2.weight[1], net.fc2.bias[1] = net.fc2.weight[0], net.fc2.bias[0]
    return net.double().eval()


def _origins(net) -> bool:
    return GraphSliceCtx(g=trace(net.double().eval()), base=[None] * 3, frame_lines=[]).origins


def test_origins_kept_only_where_a_max_pool_reads_a_relu_output():
    assert not _origins(GlobalMax(2, 6, 4, 3, 0))  # max-pool of an affine node
    assert _origins(ResPoolCat(2, 6, 0))  # max-pool of a ReLU node
    assert _origins(conv_pool_1d(5, 2, 0))
    assert _origins(_PoolOfCat(0))  # through a concatenation
    assert not _origins(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))  # no max-pool


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("kind", ["global", "tied", "cat"])
def test_forcing_origins_on_changes_nothing(monkeypatch, kind, compiled):
    seed = 3
    make = {
        "global": lambda: GlobalMax(2, 8, 5, 3, seed).double().eval(),
        "tied": lambda: _tied_global_max(seed),
        "cat": lambda: _PoolOfCat(seed).double().eval(),
    }
    net = make[kind]()
    g = trace(net)
    x0, d1, d2 = _plane(2, seed)
    got = slice_graph_regions(g, x0, d1, d2, BOX, 10**6, 2**28, compiled=compiled)
    post = gs.GraphSliceCtx.__post_init__

    def forced(self):
        post(self)
        self.origins = True

    monkeypatch.setattr(gs.GraphSliceCtx, "__post_init__", forced)
    ref = slice_graph_regions(g, x0, d1, d2, BOX, 10**6, 2**28, compiled=compiled)
    assert len(got[3]) == len(ref[3])
    assert _keys_list(got[3]) == _keys_list(ref[3])  # the same pieces in the same order
    # the same vertices, bit for bit (the records hold line ids as float bit patterns: compared as such)
    assert np.array_equal(got[2], ref[2]) and np.array_equal(got[1].view(np.int64), ref[1].view(np.int64))
    assert got[4] == ref[4]  # the same exact decisions


def test_tied_pool_of_an_affine_node_against_sampling():
    """The tie of two identical candidates (no origins kept) goes to the first position, as torch's."""
    net = _tied_global_max(1)
    res = _check_against_sampling(net, *_plane(2, 1))
    onehot = res.patterns[:, 6:10]
    assert not onehot[:, 1].any()  # position 1 equals position 0 everywhere: never the argmax


@pytest.mark.parametrize("whole", [False, True])
def test_relu_working_rows_grown_in_the_cut_change_nothing(monkeypatch, whole):
    """A ReLU node's working rows sized for every piece its lines can make, or (``_CAP_ROWS = 0``) for four
    pieces a polygon and grown (doubled, the pieces so far copied) while one polygon is cut into hundreds,
    with vertex slots grown too: the same pieces, bit for bit, and the numpy path's patterns."""
    net = GlobalMax(2, 40, 8, 6, 5).double().eval()
    g = trace(net)
    x0, d1, d2 = _plane(2, 5)
    box = None if whole else (-3.0, 3.0, -3.0, 3.0)
    sized = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28)
    monkeypatch.setattr(gs, "_CAP_ROWS", 0)
    grown = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28)
    ref = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=False)
    assert len(sized[3]) > 200  # (many more than the 68 rows the grown run starts with)
    assert _keys_list(sized[3]) == _keys_list(grown[3])
    assert np.array_equal(sized[2], grown[2])
    K = min(sized[1].shape[1], grown[1].shape[1])  # (slots past every vertex count repeat vertex 0)
    assert np.array_equal(sized[1][:, :K].view(np.int64), grown[1][:, :K].view(np.int64))
    assert sorted(_keys_list(sized[3])) == sorted(_keys_list(ref[3]))


class _Folded(nn.Module):
    """Linear nodes with and without a bias, a Linear folded with a BatchNorm, a 1-D convolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3, bias=False)
        self.c, self.bn = nn.Linear(3, 4), nn.BatchNorm1d(4)
        self.conv = nn.Conv1d(1, 2, 3)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = self.bn(self.c(F.relu(self.b(F.relu(self.a(x))))))
        return self.conv(F.relu(h).unsqueeze(1)).flatten(1)


@pytest.mark.parametrize("masked", [False, True])
def test_affine_arrays_equal_matrix_and_bias_vector(masked):
    net = _Folded().double().eval()
    keep = torch.rand(5, 4, generator=torch.Generator().manual_seed(1)) > 0.5
    masks = {"a.weight": keep} if masked else None
    g = trace(net, masks)
    affine = [n for n in g.nodes if n.op == "affine"]
    assert len(affine) == 4
    for node in affine:
        M, b = node._arrays()
        assert M.dtype == b.dtype == np.float64
        assert np.array_equal(M, node.matrix().numpy()) and np.array_equal(b, node.bias_vector.numpy())
    if masked:
        assert np.all(affine[0]._arrays()[0][~masks["a.weight"].numpy()] == 0)
    # asked again once matrix() and bias_vector are cached: the cached ones
    for node in affine:
        M, b = node._arrays()
        assert np.shares_memory(M, node.matrix().numpy()) and np.shares_memory(b, node.bias_vector.numpy())


@pytest.mark.parametrize("as_array", [False, True])
def test_plane_checks_the_same_for_float64_arrays_and_lists(as_array):
    """x0, d1, d2 given as float64 arrays skip check_array (the slice's per-call validation) but are refused
    with the same messages as lists; the plane's parallel test decides near-parallel and overflowing
    directions exactly, with a caller's floating-point errors raised (no warning or error of its own)."""
    from netgeom import mlp
    from netgeom.regions.exact import regions_on_slice

    net = mlp(3, [4], 1, seed=0)

    def f(v):
        return np.array(v, dtype=np.float64) if as_array else list(v)

    bad = [
        ([0, np.nan, 0], [1, 0, 0], [0, 1, 0], r"x0 contains 1 non-finite value\(s\)"),
        ([0, 0, 0], [1, np.inf, -np.inf], [0, 1, 0], r"d1 contains 2 non-finite value\(s\)"),
        ([0, 0, 0], [1, 0, 0], [0, 1], "d2 has 2 entries"),
        ([0, 0, 0], [1, 2, 0], [-2, -4, 0], "parallel"),
        ([0, 0, 0], [0, 0, 0], [1, 0, 0], "zero"),
        ([0, 0, 0], [1e300, 1e300, 0], [-1e300, -1e300, 0], "parallel"),  # every product overflows
    ]
    for x0, d1, d2, match in bad:
        with pytest.raises(ValueError, match=match), np.errstate(all="raise"):
            regions_on_slice(net, f(x0), f(d1), f(d2))
    eps = 2.0**-52
    ok = [
        ([0, 0, 0], [1, 1 + eps, 0], [1, 1, 0]),  # a minor below its float bound: not parallel, exactly
        ([0, 0, 0], [1e300, 1e300, 0], [1e300, -1e300, 0]),
        ([0, 0, 0], [1e-300, 0, 0], [0, 1e-300, 0]),
    ]
    for x0, d1, d2 in ok:
        with np.errstate(all="raise"):
            res = regions_on_slice(net, f(x0), f(d1), f(d2), box=(-1, 1, -1, 1))
        assert res.count >= 1
    x = np.array([0.5, -0.25, 1.0])
    res = regions_on_slice(net, x, np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
    assert np.array_equal(x, [0.5, -0.25, 1.0])  # the caller's arrays are not written
