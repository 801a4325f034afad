"""Exact engines at the bottom of float64's range, and inputs no float holds: no silent wrong answer.

A float64 product whose exact value is below 2^-1022 errs by up to 2^-1075 however small its operands, which
no error bound relative to ``|w|·|x|`` covers: weights of 2^-500 on a plane of 2^-600 gave products that
underflow to exactly 0, so every unit read as identically zero (1 region instead of 6), and subnormal
directions gave breakpoints of no precision (6-10 pieces instead of 2). Positive homogeneity gives the answer
without a reference: a bias-free ReLU network meets the same regions on a plane or segment scaled by 2^k.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from netgeom import count_patterns, magnitude_prune, mlp, regions_on_segment, regions_on_slice
from netgeom._validation import check_array


def _three_lines(residual: bool, slope: float = 0.0):
    """Units x, y, x + y with weights 2^-500 and no bias: 6 regions around the origin at every scale."""
    act = nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(2, 3), nn.Linear(3, 2), nn.Linear(2, 1)
            self.act = act

        def forward(self, x):
            return self.c(x + self.b(self.act(self.a(x))))

    net = Res() if residual else nn.Sequential(nn.Linear(2, 3), act, nn.Linear(3, 1))
    net = net.double()
    first = net.a if residual else net[0]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]], dtype=torch.float64) * 2.0**-500)
        first.bias.zero_()
    return net


@pytest.mark.parametrize("residual", [False, True], ids=["chain", "graph"])
@pytest.mark.parametrize("slope", [0.0, 0.375])
def test_underflowing_products_keep_their_lines(residual, slope):
    net = _three_lines(residual, slope)
    s = 2.0**-600
    assert regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-s, s, -s, s)).count == 6
    assert regions_on_slice(net, [0, 0], [s, 0], [0, s], box=(-1, 1, -1, 1)).count == 6
    assert regions_on_segment(net, [-s, -s / 2], [s, s / 2]).count == 2
    assert regions_on_segment(net, [-s, s / 4], [s, s / 4]).count == 3  # crosses x + y = 0, then x = 0


def _bias_free(seed: int, slope: float = 0.0):
    net = mlp(2, [6, 6], 1, seed=seed).double()
    layers = []
    for m in net:
        if isinstance(m, nn.Linear):
            m.bias = None
        layers.append(nn.LeakyReLU(slope) if isinstance(m, nn.ReLU) and slope else m)
    return nn.Sequential(*layers)


@pytest.mark.parametrize("slope", [0.0, 0.375])
def test_subnormal_planes_and_segments_meet_the_regions_of_scale_one(slope):
    net = _bias_free(0, slope)
    a, b = np.array([-0.75, 0.5]), np.array([1.25, 2.0])
    want_slice = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-1, 2, -1, 3)).count
    want_seg = regions_on_segment(net, a, b).count
    through = regions_on_segment(net, [-1.0, -0.5], [1.0, 0.5]).count  # through the origin: 2 pieces
    assert through == 2
    for k in (-1030, -1050, -1066):
        s = 2.0**k
        assert regions_on_slice(net, [0, 0], [s, 0], [0, s], box=(-1, 2, -1, 3)).count == want_slice, k
        assert regions_on_segment(net, a * s, b * s).count == want_seg, k
        assert regions_on_segment(net, [-s, -s / 2], [s, s / 2]).count == through, k


def test_integer_inputs_are_exact_or_refused():
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        net[0].bias.zero_()
    for X in (torch.tensor([[2**52 + 1, 2**52]]), torch.tensor([[2**24 + 1, 2**24]], dtype=torch.int32),
              torch.tensor([[2**62 + 4096, 2**62]])):
        for precision in ("float32", "float64"):
            res = count_patterns(net, X, verbose=False, precision=precision)
            assert res.patterns[0, 0] >> 7 == 1, (X, precision)  # x1 - x2 > 0 exactly
    with pytest.raises(ValueError, match="4611686018427387905"):
        count_patterns(net, torch.tensor([[2**62 + 1, 2**62]]), verbose=False)
    with pytest.raises(ValueError, match="9007199254740993"):
        check_array([2**53 + 1, 0])
    assert check_array(np.array([2**62, -(2**63)])).tolist() == [2.0**62, -(2.0**63)]


def test_batchnorm_without_a_positive_variance_is_refused_by_name():
    net = nn.Sequential(nn.Conv1d(1, 2, 2), nn.BatchNorm1d(2, eps=0.0), nn.ReLU(), nn.Flatten(),
                        nn.Linear(6, 1))
    with torch.no_grad():
        net[1].running_var.fill_(0.0)
    net.eval()
    with pytest.raises(ValueError, match="BatchNorm1d.*running_var"):
        count_patterns(net, torch.randn(5, 1, 4), verbose=False)
    with pytest.raises(ValueError, match="BatchNorm1d.*running_var"):
        regions_on_segment(net, [0, 0, 0, 0], [1, 2, 3, 4], input_shape=(1, 4))


def test_non_finite_values_under_a_mask_are_absent():
    net = mlp(20, [16, 16], 3, seed=0)
    masks = magnitude_prune(net, 0.7)
    X = torch.rand(300, 20, generator=torch.Generator().manual_seed(1))
    want = count_patterns(masks.apply(copy.deepcopy(net)), X, verbose=False)
    for junk in (float("nan"), float("inf")):
        bad = copy.deepcopy(net)
        params = dict(bad.named_parameters())
        with torch.no_grad():
            for name, m in masks.items():
                params[name][~m.bool()] = junk
        got = count_patterns(bad, X, masks, verbose=False)
        assert np.array_equal(got.patterns, want.patterns) and np.array_equal(got.multiplicities,
                                                                                want.multiplicities)
        with pytest.raises(ValueError, match="non-finite"):
            count_patterns(bad, X, verbose=False)  # without the masks they are read
