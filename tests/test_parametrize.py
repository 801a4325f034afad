"""Weights computed on access by ``torch.nn.utils.parametrize`` (a mask applied as ``w * m``): the analyses
read the module's weight as it computes it, so the zeros its mask puts there count as pruned, and a mask
passed for such a weight is applied to it like to any other."""

import copy

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

import netgeom as ng


class _Mul(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.register_buffer("m", m)

    def forward(self, w):
        return w * self.m


def _pair():
    """The same network twice: its first weight masked by a parametrization, and zeroed in place."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 1)).double()
    mask = (torch.rand(6, 4) > 0.5).double()
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        zeroed[0].weight.mul_(mask)
    parametrize.register_parametrization(net[0], "weight", _Mul(mask))
    return net, zeroed, mask


def test_bounds_read_a_parametrized_mask_as_pruned():
    net, zeroed, mask = _pair()
    got, want = ng.bounds(net), ng.bounds(zeroed)  # got raised KeyError '0.weight'
    assert got.densities[0] == float(mask.mean()) < 1
    assert got.densities == want.densities and got.serra == want.serra and got.ranks == want.ranks


def test_topology_bound_reads_a_parametrized_mask_as_pruned():
    net, zeroed, mask = _pair()
    got, want = ng.topology_bound(net), ng.topology_bound(zeroed)
    assert got.n_unmasked[0] == int(mask.sum()) < mask.numel()
    assert got.to_dict() == want.to_dict()


def test_a_mask_for_a_parametrized_weight_is_applied():
    net, zeroed, _ = _pair()
    extra = torch.ones(6, 4, dtype=torch.bool)
    extra[:, 0] = False  # prunes column 0 on top of the parametrization's mask
    x = torch.randn(500, 4, dtype=torch.float64)
    got = ng.trace(net, {"0.weight": extra}).forward(x)
    with torch.no_grad():
        zeroed[0].weight[:, 0] = 0
        want = zeroed(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    a = ng.count_patterns(net, x, {"0.weight": extra}, verbose=False)
    b = ng.count_patterns(zeroed, x, verbose=False)
    assert a.count == b.count > 1


def test_count_patterns_refuses_samples_of_another_shape():
    # review 15: channels-last images of a channels-first net have as many entries per sample, and were
    # read reordered (top multiplicities 413, 488, 505 against 384, 490, 491)
    import pytest

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1))
    X = torch.randn(200, 2, 3, 3)
    assert ng.count_patterns(net, X, verbose=False).count > 1
    assert ng.count_patterns(net, X.reshape(200, -1), input_shape=(2, 3, 3), verbose=False).count > 1
    with pytest.raises(ValueError, match=r"samples of shape \(3, 3, 2\).*\(2, 3, 3\)"):
        ng.count_patterns(net, X.permute(0, 2, 3, 1), input_shape=(2, 3, 3), verbose=False)
    with pytest.raises(ValueError, match="'meta' device"):
        ng.count_patterns(net, torch.empty(4, 2, 3, 3, device="meta"), verbose=False)
