"""count_patterns at extreme scales: rescalings that leave every ReLU sign unchanged must change no pattern,
must not send the rows to rational arithmetic, and parameters float32 cannot carry must not give wrong signs."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from netgeom import count_patterns, mlp, trace
from netgeom.nets.certified import chain_decide, chain_patterns, chain_plan, graph_patterns


def _exact_signs(net: nn.Sequential, x: torch.Tensor) -> list[list[bool]]:
    """Every ReLU sign of one input, in rational arithmetic on the network's float64 parameters."""
    h = [Fraction(float(v)) for v in x.tolist()]
    signs = []
    for mod in net:
        if isinstance(mod, nn.Linear):
            W = [[Fraction(float(w)) for w in row] for row in mod.weight.double().tolist()]
            b = [Fraction(float(v)) for v in mod.bias.double().tolist()]
            h = [sum((w * a for w, a in zip(row, h)), Fraction(0)) + bj for row, bj in zip(W, b)]
        else:
            signs.append([v > 0 for v in h])
            h = [max(v, Fraction(0)) for v in h]
    return signs


def _subnormal_net() -> nn.Sequential:
    # w1 = 1.4 * 2^-148 rounds to 1.5 * 2^-148 in float32 (a subnormal with spacing 2^-149): 4% off
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.4 * 2.0**-148, -(2.0**-148)]], dtype=torch.float64))
        net[0].bias.zero_()
        net[2].weight.fill_(1.0)
        net[2].bias.fill_(-0.5)
    return net


def test_weights_below_float32s_normal_range_never_give_a_wrong_sign():
    # exactly z = 2^-88 (1.4 - 1.45) < 0; with float32's copy of w1, 2^-88 (1.5 - 1.45) > 0. The float32
    # bound charges the cast of w1 relatively (u32 |w1|), far below the 2^-150 it lost, and used to decide
    # the wrong sign (chain path at m = 0 and the float32 graph engine alike)
    net = _subnormal_net()
    x = torch.tensor([[2.0**60, 1.45 * 2.0**60]], dtype=torch.float32)
    ref = _exact_signs(net, x[0])
    assert ref == [[False], [False]]
    g = trace(net)
    plan = chain_plan(g, "cpu")
    for m in (0, 1, 2):
        dec, _ = chain_decide(g, plan, x, m)
        assert [dec[i][0].tolist() for i in sorted(dec)] == ref, m
    dec, st = graph_patterns(g, x, dtype=torch.float32)
    assert [dec[i][0].tolist() for i in sorted(dec)] == ref
    assert st["float64"] == 1  # the float32 engine is not used for these parameters
    _, redo, _, _ = chain_patterns(plan, x, 0, 0)
    assert redo.all()  # a float32 first layer cannot certify them: the rows are redone
    assert count_patterns(net, x).patterns.tolist() == [[0]]
