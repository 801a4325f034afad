"""regions_in_box is exact at every scale: metamorphic checks that need no reference.

A bias-free ReLU net is positively homogeneous, so scaling the box by 2^k (exact) never changes its regions;
rebalancing two layers by reciprocal powers of two (exact) never changes them either. The reviewer's cases
(a slope of 2^-40 from cancellation, products that underflow, boxes of size 2^600 and more) are
regressions: each failed on the engine with a relative tolerance and raw-coordinate qhull screens.
"""

import numpy as np
import pytest
import torch
from torch import nn

from netgeom import mlp
from netgeom.regions import count_patterns
from netgeom.regions.exact import regions_in_box, regions_on_slice
from netgeom.regions.patterns import pack_patterns


def _bias_free(net):
    for m in net:
        if isinstance(m, nn.Linear):
            m.bias = None
    return net


class PoolRes(nn.Module):
    """Bias-free max-pool + residual graph (positively homogeneous)."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(2, 8, bias=False)
        self.b = nn.Linear(4, 4, bias=False)
        self.c = nn.Linear(4, 1, bias=False)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.nn.functional.max_pool1d(h.unsqueeze(1), 2).flatten(1)
        return self.c(h + torch.relu(self.b(h)))


def _patterns(res):
    return {bytes(r) for r in pack_patterns(res.patterns)}


def _box(net, s):
    return regions_in_box(net, [-s, -s], [2 * s, 3 * s], verbose=False)


@pytest.mark.parametrize("seed", [0, 6])
def test_chain_count_unchanged_by_box_scale(seed):
    net = _bias_free(mlp(2, [8, 8], 1, seed=seed).double())
    ref = _box(net, 1.0)
    for k in (-1000, 560, 1000):
        res = _box(net, 2.0**k)
        assert res.count == ref.count, k
        assert _patterns(res) == _patterns(ref), k


def test_graph_count_unchanged_by_box_scale():
    net = PoolRes(5).double()
    ref = _box(net, 1.0)
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-1, 2, -1, 3)).count
    assert ref.count == sl
    for k in (-1000, 1010):
        res = _box(net, 2.0**k)
        assert res.count == ref.count, k
        assert _patterns(res) == _patterns(ref), k


def test_layer_rebalancing_changes_nothing():
    net = mlp(2, [8, 8], 1, seed=3).double()
    ref = regions_in_box(net, [-2, -2], [2, 2], verbose=False)
    for a in (-500, 500):
        m = mlp(2, [8, 8], 1, seed=3).double()
        with torch.no_grad():
            m[0].weight.mul_(2.0**a)
            m[0].bias.mul_(2.0**a)
            m[2].weight.mul_(2.0**-a)
        res = regions_in_box(m, [-2, -2], [2, 2], verbose=False)
        assert res.count == ref.count and _patterns(res) == _patterns(ref), a


def _cancel_net(d, constant):
    """2-2-1-1: z2 = relu(x1 + 10) - relu((1 + d) x1 + 10) = -d x1 (or the constant 10 d)."""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        if constant:
            net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
            net[0].bias.copy_(torch.tensor([10.0 + 10 * d, 10.0], dtype=torch.float64))
        else:
            net[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0 + d, 0.0]], dtype=torch.float64))
            net[0].bias.fill_(10.0)
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]], dtype=torch.float64))
        net[2].bias.fill_(0.0)
        net[4].weight.fill_(1.0)
        net[4].bias.fill_(0.0)
    return net


def test_tiny_slope_from_cancellation_is_a_real_cut():
    net = _cancel_net(2.0**-40, constant=False)
    res = regions_in_box(net, [-1, -1], [1, 1], verbose=False)
    assert res.count == 2
    X = torch.tensor([[-0.5, 0.0], [0.5, 0.0]], dtype=torch.float64)
    assert _patterns(res) == {bytes(r) for r in count_patterns(net, X, verbose=False).patterns}


def test_tiny_constant_unit_gets_its_exact_bit():
    net = _cancel_net(2.0**-40, constant=True)
    res = regions_in_box(net, [-1, -1], [1, 1], verbose=False)
    assert res.count == 1 and res.patterns.tolist() == [[True, True, True]]


def test_slope_below_its_rounding_bound_is_recomputed_exactly():
    # z2 = relu(x1 + 2^-60 x2 + 10) - relu(x1 + 10) = 2^-60 x2: the float slope's error bound (~2^-50 from
    # the x1 terms) exceeds it, so only the exact map shows the cut x2 = 0
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 2.0**-60], [1.0, 0.0]], dtype=torch.float64))
        net[0].bias.fill_(10.0)
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]], dtype=torch.float64))
        net[2].bias.fill_(0.0)
    res = regions_in_box(net, [-1, -1], [1, 1], verbose=False)
    assert res.count == 2
    assert sorted(np.sign(res.coords[:, 1]).tolist()) == [-1.0, 1.0]


class _Tiny3(nn.Module):
    def __init__(self, residual):
        super().__init__()
        torch.manual_seed(0)
        f64 = {"dtype": torch.float64}
        self.a, self.b, self.c = nn.Linear(2, 3, **f64), nn.Linear(3, 2, **f64), nn.Linear(2, 1, **f64)
        self.residual = residual
        with torch.no_grad():
            w = torch.tensor([[1.0, 0], [0, 1], [1, 1]], dtype=torch.float64) * 2.0**-500
            self.a.weight.copy_(w)
            self.a.bias.zero_()

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(x + self.b(h)) if self.residual else self.c(self.b(h))


@pytest.mark.parametrize("residual", [False, True])
def test_underflowing_products_keep_their_hyperplanes(residual):
    net = _Tiny3(residual)
    s = 2.0**-600
    assert regions_in_box(net, [-s, -s], [s, s], verbose=False).count == 6


def test_polygons_at_huge_scale_tile_the_box():
    net = _bias_free(mlp(2, [8, 8], 1, seed=6).double())
    for k in (0, 600):
        s = 2.0**k
        res = _box(net, s)
        area = 0.0
        for P in res.polygons():
            x, y = P[:, 0] / s, P[:, 1] / s
            area += 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
        assert area == pytest.approx(12.0, rel=1e-9)


def test_small_regions_in_a_huge_box_are_kept():
    # a 2-8-8-1 net's 156 regions lie within a few units of 0: they were dropped once the box's size
    # times a relative radius exceeded them (154 at 2^16, 31 at 2^24); the slice engine sees 156 always
    net = mlp(2, [8, 8], 1, seed=0).double()
    counts = []
    for e in (14, 24, 48):
        s = 2.0**e
        res = regions_in_box(net, [-s, -s], [s, s], verbose=False)
        counts.append(res.count)
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-(2.0**48), 2.0**48, -(2.0**48), 2.0**48))
    assert counts == [sl.count] * 3


def test_nested_boxes_never_fewer_chain():
    net = mlp(2, [6, 6], 1, seed=2).double()
    counts = [regions_in_box(net, [-r, -r], [r, 0.7 * r], verbose=False).count for r in (0.5, 4.0, 2.0**30)]
    assert counts == sorted(counts) and counts[0] >= 1


def test_min_radius_is_an_absolute_opt_in():
    net = mlp(2, [8, 8], 1, seed=0).double()
    s = 2.0**10
    exact = regions_in_box(net, [-s, -s], [s, s], verbose=False)
    coarse = regions_in_box(net, [-s, -s], [s, s], verbose=False, min_radius=0.05)
    assert coarse.count < exact.count
    assert _patterns(coarse) <= _patterns(exact)
    with pytest.raises(ValueError, match="min_radius"):
        regions_in_box(net, [-s, -s], [s, s], verbose=False, min_radius=-1.0)


def test_regions_2_to_minus_300_of_the_box_are_resolved():
    net = mlp(2, [4, 4], 1, seed=0).double()
    s = 2.0**300
    res = regions_in_box(net, [-s, -s], [s, s], verbose=False)
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-s, s, -s, s))
    assert res.count == sl.count > 5
    assert _patterns(res) == _patterns(sl)


class _CatCancel(nn.Module):
    """cat(relu(a1 x), relu(a2 x)) -> relu(c .) with c = (1, -1): a graph whose second unit is a difference
    of two nearly equal paths."""

    def __init__(self, w1, w2):
        super().__init__()
        f64 = {"dtype": torch.float64}
        self.a1, self.a2, self.c = nn.Linear(2, 1, **f64), nn.Linear(2, 1, **f64), nn.Linear(2, 1, **f64)
        with torch.no_grad():
            self.a1.weight.copy_(torch.tensor([w1], dtype=torch.float64))
            self.a2.weight.copy_(torch.tensor([w2], dtype=torch.float64))
            self.a1.bias.fill_(10.0)
            self.a2.bias.fill_(10.0)
            self.c.weight.copy_(torch.tensor([[1.0, -1.0]], dtype=torch.float64))
            self.c.bias.fill_(0.0)

    def forward(self, x):
        return torch.relu(self.c(torch.cat([torch.relu(self.a1(x)), torch.relu(self.a2(x))], 1)))


@pytest.mark.parametrize("graph", [False, True])
def test_slope_below_its_bound_exact_on_graph_and_chain(graph):
    # 2^-60 x2 (a real cut at x2 = 0) and an exactly zero unit (no cut, bit False)
    for w1, count in (([1.0, 2.0**-60], 2), ([1.0, 0.0], 1)):
        net = _CatCancel(w1, [1.0, 0.0])
        if not graph:
            seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1), nn.ReLU()).double()
            with torch.no_grad():
                seq[0].weight.copy_(torch.tensor([w1, [1.0, 0.0]], dtype=torch.float64))
                seq[0].bias.fill_(10.0)
                seq[2].weight.copy_(net.c.weight)
                seq[2].bias.fill_(0.0)
            net = seq
        res = regions_in_box(net, [-1, -1], [1, 1], verbose=False)
        assert res.count == count, (w1, graph)
        if count == 1:
            assert not res.patterns[0, -1]
