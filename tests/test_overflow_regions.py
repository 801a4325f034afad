"""Exact region counts at the edges of float64's range. Rebalancing two consecutive layers by reciprocal
powers of two (W1, b1 times 2**k, W2 times 2**-k) changes no region (exact: every scaled number is still
a normal float64), so every engine must give the unscaled count or refuse with an error naming the
overflow; before, the chain slice squared weights near 1e300 to inf and counted one region."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgeom as ng


class _Wrapped(nn.Module):
    """The same chain with its own ``forward``: traced as a graph (the graph engines)."""

    def __init__(self, seq: nn.Sequential):
        super().__init__()
        self.a, self.b, self.c = seq[0], seq[2], seq[4]

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x)))))


def _net(k: int) -> nn.Sequential:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 1)).double()
    with torch.no_grad():
        net[0].weight.mul_(2.0**k)
        net[0].bias.mul_(2.0**k)
        net[2].weight.mul_(2.0**-k)
    return net


def _counts(net) -> tuple[int, int]:
    x0, d1, d2 = np.array([0.1, -0.2]), np.array([1.0, 0.0]), np.array([0.0, 1.0])
    s = ng.regions_on_slice(net, x0, d1, d2, box=(-1.5, 1.5, -1.5, 1.5)).count
    t = ng.regions_on_segment(net, np.array([-1.5, -1.0]), np.array([1.5, 1.25])).count
    return s, t


@pytest.mark.parametrize("wrap", [False, True])
def test_power_of_two_rebalancing_leaves_every_count(wrap):
    ref = _counts(_Wrapped(_net(0)) if wrap else _net(0))
    assert ref[0] > 20 and ref[1] > 3  # (a slice with something to cut)
    for k in (-990, -500, 500, 990):
        net = _net(k)
        assert _counts(_Wrapped(net) if wrap else net) == ref, k


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("wrap", [False, True])
def test_values_beyond_float64_are_refused_not_counted(wrap):
    net = _net(1023)  # first-layer values near 2**1023: a sum of two overflows
    net = copy.deepcopy(_Wrapped(net) if wrap else net)
    with pytest.raises(OverflowError, match="float64's range"):
        ng.regions_on_segment(net, np.array([-1.5, -1.0]), np.array([1.5, 1.25]))


@pytest.mark.parametrize("wrap", [False, True])
def test_box_counts_survive_rebalancing_near_float64_limits(wrap):
    def count(k):
        net = _net(k)
        return ng.regions_in_box(_Wrapped(net) if wrap else net, -np.ones(2), np.ones(2), verbose=False).count

    ref = count(0)
    assert ref > 10
    for k in (-1000, -600, 600, 1000):  # (2**520 squared overflows: plain norms of the maps gave inf)
        assert count(k) == ref, k


def test_box_count_does_not_depend_on_the_box_scale():
    # a bias-free net is positively homogeneous: [-s, s]^2 has the same regions for every s. HiGHS's absolute
    # tolerances made pieces a tolerance thick pass as regions in boxes of size ~1e-6 (154 against 30)
    torch.manual_seed(0)
    lin = [nn.Linear(2, 8, bias=False), nn.Linear(8, 8, bias=False), nn.Linear(8, 1, bias=False)]
    net = nn.Sequential(lin[0], nn.ReLU(), lin[1], nn.ReLU(), lin[2]).double()
    counts = []
    for k in (0, -18, -22, -40, -1000):
        s = 2.0**k
        box = (-np.ones(2) * s, np.ones(2) * s)
        counts.append(ng.regions_in_box(net, *box, verbose=False, max_regions=500).count)
    assert counts == [counts[0]] * 5 and counts[0] > 10
