"""count_patterns on MLPs (the per-(row, unit) chain path, whichever first layer the host's speed picks:
int8 or float64) against a rational forward written here: inputs within float64 precision of pattern
boundaries, huge and tiny scales, masked weights; and a mutation check: with the rounding bounds set to zero
the same comparison fails."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from _boundary import boundary_points

import netgeom._matmul as mm
from netgeom import count_patterns, magnitude_prune, mlp, trace
from netgeom.nets import certified
from netgeom.regions.patterns import pack_patterns, unique_rows


def _rational_bits(net, X: torch.Tensor) -> np.ndarray:
    lins = [m for m in net if isinstance(m, torch.nn.Linear)][:-1]
    layers = [
        ([[Fraction(float(w)) for w in row] for row in m.weight.detach().double().tolist()],
         [Fraction(float(b)) for b in m.bias.detach().double().tolist()])
        for m in lins
    ]
    out = []
    for x in X.double().tolist():
        h = [Fraction(a) for a in x]
        bits = []
        for W, b in layers:
            z = [sum((w * a for w, a in zip(row, h)), bi) for row, bi in zip(W, b)]
            bits += [v > 0 for v in z]
            h = [max(v, Fraction(0)) for v in z]
        out.append(bits)
    return np.array(out)


def _near(net, n_in, seed, scale=1.0):
    g = trace(net)
    gen = torch.Generator().manual_seed(seed)

    def end():
        return (torch.rand(n_in, generator=gen, dtype=torch.float64) - 0.4) * scale

    return torch.stack(boundary_points(g, lambda: (end(), end()), 4) + [end() for _ in range(4)])


def _same(res, ref) -> bool:
    u, c = unique_rows(pack_patterns(ref))
    return np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)


@pytest.mark.parametrize("fast8", [True, False])
@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30])
def test_mlp_patterns_near_boundaries_equal_rationals(fast8, scale, monkeypatch):
    monkeypatch.setattr(mm, "int8_products_fast", lambda: fast8)  # (both first-layer choices)
    net = mlp(140, [24, 24], 3, seed=1)
    X = _near(net, 140, 1, scale)
    for x in (X, X.float()):
        res = count_patterns(net, x, batch_size=5, verbose=False)
        assert _same(res, _rational_bits(net, x)), (fast8, scale, x.dtype)


def test_masked_mlp_near_boundaries_equals_rationals():
    net = mlp(140, [24, 24], 3, seed=2)
    masks = magnitude_prune(net, scope="layer", per_layer=[0.8, 0.5, 0.0])
    masks.apply(net)
    X = _near(net, 140, 2).float()
    assert _same(count_patterns(net, X, masks, verbose=False), _rational_bits(net, X))


def test_bounds_set_to_zero_are_caught(monkeypatch):
    """Mutation check: the comparison above fails once the rounding bounds are zero (gamma = 0)."""
    net = mlp(140, [24, 24], 3, seed=1)
    X = _near(net, 140, 1).float()
    ref = _rational_bits(net, X)
    assert _same(count_patterns(net, X, verbose=False), ref)
    monkeypatch.setattr(certified, "_gamma", lambda k, u: 0.0)
    monkeypatch.setattr(mm, "int8_products_fast", lambda: False)  # (the float32 / float64 products' bounds)
    assert not _same(count_patterns(net, X, verbose=False), ref)
