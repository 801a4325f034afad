"""regions_in_box on traced graphs (residual add, cat, max-pool, LeakyReLU).

Checked against the exact slice engine (regions_on_slice: positive-area regions of a 2-D box, certified
then exact), against dense sampling through count_patterns (the certified forward pass, same pattern
encoding), against the chain engine (the graph engine run on chains), and by nesting boxes.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from netgeom import mlp
from netgeom.nets import trace
from netgeom.regions import count_patterns
from netgeom.regions._graph_box import box_graph_regions
from netgeom.regions.exact import regions_in_box, regions_on_slice
from netgeom.regions.patterns import pack_patterns


class Res(nn.Module):
    """h = relu(x + b(relu(a x))), then a ReLU head (LeakyReLU in the block when ``slope``)."""

    def __init__(self, n0: int, w: int, seed: int, slope: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.c = nn.Linear(n0, w), nn.Linear(w, n0), nn.Linear(n0, 4)
        self.slope = slope

    def forward(self, x):
        h = torch.relu(x + self.b(F.leaky_relu(self.a(x), self.slope)))
        return torch.relu(self.c(h))


class Pool1d(nn.Module):
    """relu(Linear) -> max-pool of width 3 (stride 2, padded) -> relu(Linear)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Linear(2, 8), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.a(x)).view(-1, 1, 8)
        h = F.max_pool1d(h, 3, stride=2, padding=1).flatten(1)
        return torch.relu(self.b(h))


class Cat(nn.Module):
    """cat(relu(a x), leaky_relu(b x)) -> relu(c .)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.c = nn.Linear(2, 4), nn.Linear(2, 3), nn.Linear(7, 4)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), F.leaky_relu(self.b(x), 0.1)], 1)
        return torch.relu(self.c(h))


class ConvPool(nn.Module):
    """conv 1->2 (3x3, pad 1) on 4x4, relu, 2x2 max-pool, then a residual 1x1 conv: a 2-D net on 16 inputs."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.mix = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.conv(x)), 2)
        return torch.relu(h + self.mix(h))


NETS_2D = [Res(2, 6, 0), Res(2, 5, 1, slope=0.2), Pool1d(0), Pool1d(3), Cat(0), Cat(2)]


def _sample_patterns(net, res, lo, hi, n, seed, **kw):
    rng = np.random.default_rng(seed)
    Y = rng.uniform(lo, hi, (n, len(lo)))
    X = Y if "subspace" not in kw else kw["subspace"][0] + Y @ kw["subspace"][1]
    shape = kw.get("input_shape")
    X = torch.tensor(X if shape is None else X.reshape(-1, *shape))
    cp = count_patterns(net, X, input_shape=shape, precision="float64")
    return {bytes(r) for r in cp.patterns}


@pytest.mark.parametrize("k", range(len(NETS_2D)))
def test_2d_equals_exact_slice_and_covers_samples(k):
    net = NETS_2D[k]
    lo, hi = np.array([-2.0, -1.5]), np.array([1.5, 2.0])
    res = regions_in_box(net, lo, hi, verbose=False)
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(lo[0], hi[0], lo[1], hi[1]))
    assert res.count == sl.count > 5
    mine = {bytes(r) for r in pack_patterns(res.patterns)}
    assert len(mine) == res.count  # distinct patterns, one per region
    # every pattern met by 20 000 uniform samples is enumerated
    assert _sample_patterns(net, res, lo, hi, 20_000, k) <= mine
    # each region's ball centre has the region's own pattern (count_patterns' encoding, same bit order)
    at_points = count_patterns(net, torch.tensor(res.points), precision="float64")
    assert at_points.n_bits == res.n_bits
    assert at_points.count == res.count and {bytes(r) for r in at_points.patterns} == mine


def test_conv_maxpool_in_a_plane_of_16_inputs():
    net = ConvPool(0)
    rng = np.random.default_rng(1)
    x0, basis = rng.normal(size=16), rng.normal(size=(2, 16))
    lo, hi = np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    kw = {"subspace": (x0, basis), "input_shape": (1, 4, 4)}
    res = regions_in_box(net, lo, hi, verbose=False, **kw)
    sl = regions_on_slice(net, x0, basis[0], basis[1], box=(-1, 1, -1, 1), input_shape=(1, 4, 4))
    assert res.count == sl.count > 5
    mine = {bytes(r) for r in pack_patterns(res.patterns)}
    assert _sample_patterns(net, res, lo, hi, 20_000, 0, **kw) <= mine


def test_3d_residual_covers_samples_and_points_match():
    net = Res(3, 6, 4)
    lo, hi = -np.ones(3), np.ones(3)
    res = regions_in_box(net, lo, hi, verbose=False)
    mine = {bytes(r) for r in pack_patterns(res.patterns)}
    assert len(mine) == res.count > 10
    assert _sample_patterns(net, res, lo, hi, 30_000, 5) <= mine
    at_points = count_patterns(net, torch.tensor(res.points), precision="float64")
    assert {bytes(r) for r in at_points.patterns} == mine
    # every centre is inside its box and its piece
    for (G, h), c in zip(res.halfspaces, res.coords):
        assert np.all(G @ c <= h + 1e-9)


@pytest.mark.parametrize("n0, seed", [(2, 0), (3, 1)])
def test_chain_graph_engine_equals_chain_engine(n0, seed):
    net = mlp(n0, [6, 5], 2, seed=seed)
    lo, hi = -1.5 * np.ones(n0), 1.5 * np.ones(n0)
    chain = regions_in_box(net, lo, hi, verbose=False)
    g = trace(net)
    assert g.is_chain
    graph = box_graph_regions(g, lo, hi, np.zeros(n0), np.eye(n0), 10**5, 1e-7, False)
    assert graph.count == chain.count > 5
    rows = [{bytes(r) for r in pack_patterns(res.patterns)} for res in (graph, chain)]
    assert rows[0] == rows[1]


@pytest.mark.parametrize("net", [Res(2, 6, 7), Pool1d(5), Cat(4)])
def test_nested_boxes_never_fewer(net):
    counts = [regions_in_box(net, [-r, -r], [r, r * 0.8], verbose=False).count for r in (0.3, 0.9, 2.5)]
    assert counts == sorted(counts) and counts[0] >= 1


def test_graph_too_many_regions():
    from netgeom.regions import TooManyRegionsError

    with pytest.raises(TooManyRegionsError, match="max_regions=3"):
        regions_in_box(Res(2, 6, 0), [-3, -3], [3, 3], max_regions=3, verbose=False)
