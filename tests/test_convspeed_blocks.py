"""The graph engine on LeNet-shaped networks (conv -> relu -> max-pool, twice, then a Linear), in row blocks
of the default size (``certified._CHUNK_BYTES``, 8 MB since 2026-12-02) and of a few rows: masked weights
(a pruned filter, scattered zeros), pre-activations exactly zero (dyadic weights and inputs, so float32
computes them exactly), tied max-pool windows and inputs within 1e-9 of pattern boundaries, decided as
rational arithmetic decides them; and the same inputs with the float32 rounding bound shrunk (a mutation of
the engine) give a wrong pattern, so these inputs do test the bound."""

import numpy as np
import pytest
import torch
from _boundary import boundary_points
from _engines import exact_pattern_rows
from torch import nn

from netgeom import count_patterns, trace
from netgeom.nets import certified
from netgeom.nets.certified import graph_patterns, pattern_nodes


def _net(seed: int) -> nn.Module:
    """LeNet-shaped, 1x14x14 input; weights rounded to multiples of 1/64 (exact in float32, and products with
    inputs on a 1/8 grid are exact too), a pruned filter and scattered zero weights (a magnitude mask)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3),  # (>= 2 input channels: the float32 engine computes it in two halves)
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 5),
        nn.ReLU(),
        nn.Linear(5, 3),
    ).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_((m.weight * 64).round() / 64)
                m.bias.copy_((m.bias * 64).round() / 64)
                m.weight[m.weight.abs() < 2 / 64] = 0.0  # scattered masked weights
        net[0].weight[2] = 0.0  # a pruned filter: its outputs are the bias alone
        net[0].bias[2] = 0.0  # ... and exactly zero (a tied window of exact zeros after the relu)
        net[3].weight[1, :, 1, 1] = 0.0
    return net


_CACHE: dict = {}


def _case(seed: int):
    """(net, graph, inputs, rational reference), made once per seed (the bisections and the rationals are
    the slow part of these tests)."""
    if seed not in _CACHE:
        net = _net(seed)
        g = trace(net, input_shape=(1, 14, 14))
        X = _inputs(g, seed)
        X = torch.cat([X, X.flip(0)])  # (rows in several blocks, each row in two of them)
        _CACHE[seed] = (net, g, X, exact_pattern_rows(g, X))
    return _CACHE[seed]


def _inputs(g, seed: int) -> torch.Tensor:
    """Float32 inputs: near pattern boundaries (bisected in float64, then rounded to float32: the rounding
    moves them ~1e-8, still far inside float32's propagated error), on a 1/8 grid (exact zero
    pre-activations where the weights cancel, tied windows), and all-zero / constant images."""
    gen = torch.Generator().manual_seed(seed)

    def seg():
        return torch.rand(196, generator=gen, dtype=torch.float64), torch.rand(
            196, generator=gen, dtype=torch.float64
        )

    near = torch.stack(boundary_points(g, seg, 4, offsets=(1e-6, 1e-8)))
    grid = (torch.rand(12, 196, generator=gen, dtype=torch.float64) * 8).floor() / 8
    flat = torch.zeros(4, 196, dtype=torch.float64)
    flat[1:] = torch.tensor([0.5, 1.0, 0.125], dtype=torch.float64)[:, None]
    return torch.cat([near, grid, flat]).float()


def _decisions(g, X, engines=None):
    dec, st = graph_patterns(g, X, _engines=engines if engines is not None else {})
    return np.concatenate([dec[n.index].long().numpy().reshape(len(X), -1) for n in pattern_nodes(g)], 1), st


@pytest.mark.parametrize("seed", [0])
def test_lenet_shaped_blocks_equal_rationals(seed, monkeypatch):
    net, g, X, ref = _case(seed)
    # the inputs test what they should: an exactly zero pre-activation of a live unit (not only the pruned
    # filter's), a tied max-pool window that is not all zeros, and float32 leaves rows to float64
    z1 = g.values(X.double()[:, None])[1].reshape(len(X), 4, -1)
    assert bool((z1[:, [0, 1, 3]] == 0).any())
    for blocks in (certified._CHUNK_BYTES, 2048):
        with monkeypatch.context() as m:
            m.setattr(certified, "_CHUNK_BYTES", blocks)
            got, st = _decisions(g, X)
        assert np.array_equal(got, ref), blocks
    assert st["float64"] > 0  # (near the boundaries float32 cannot decide everything)
    res = count_patterns(net, X.reshape(-1, 1, 14, 14), batch_size=64, verbose=False)
    # (packing is one-to-one: the same number of distinct patterns with the same multiplicities)
    _, c = np.unique(ref, axis=0, return_counts=True)
    assert res.count == len(c) and sorted(res.multiplicities.tolist()) == sorted(c.tolist())


def test_shrunk_bound_gives_a_wrong_pattern(monkeypatch):
    """Mutation check: with every certified rounding bound of the engines shrunk a millionfold, the same
    inputs get a pattern other than the rational one, so the test above would catch a bound made too
    small (with the true bounds it passes)."""
    _, g, X, ref = _case(0)
    real = certified._gamma
    monkeypatch.setattr(certified, "_gamma", lambda k, u: real(k, u) * 1e-6)
    got, _ = _decisions(g, X, {})
    assert not np.array_equal(got, ref)
