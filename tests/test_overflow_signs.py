"""A pre-activation that overflows (an inf computed from finite inputs and weights) says nothing about the
exact sign: every path of the graph pattern engine must leave it undecided and pass it on (float64, then
rational arithmetic), never read the sign of inf. Found by review: a 2x2 convolution of
[[2e38, 2e38], [-3e38, -3e38]] is exactly -2e38 but +inf in float32 (and the same at 1e308 in float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _engines import engines as _engines
from torch import nn

from netgeom import count_patterns, trace
from netgeom.nets.certified import _exact_patterns, graph_patterns, pattern_nodes


class _Conv(nn.Module):
    def __init__(self, pool: bool, relu_after: bool = True):
        super().__init__()
        self.relu_after = relu_after
        # (with pooling: windows of their own inputs, stride 4, so that one overflows alone)
        self.c = nn.Conv1d(1, 1, 4, stride=4 if pool else 1, bias=False)
        self.pool = pool
        with torch.no_grad():
            self.c.weight.fill_(1.0)

    def forward(self, x):
        y = self.c(x)
        if not self.pool:
            return F.relu(y).flatten(1)
        # (without a ReLU after it the argmax alone must be right: no ambiguous ReLU sends the row to float64)
        p = F.max_pool1d(y, 3)
        return (F.relu(p) if self.relu_after else p).flatten(1)


class _Lin(nn.Module):
    def __init__(self, res: bool):
        super().__init__()
        self.res = res
        self.l, self.o = nn.Linear(4, 4), nn.Linear(4, 1)
        with torch.no_grad():
            self.l.weight.fill_(1.0)
            self.l.bias.fill_(-1.0)
            self.o.weight.fill_(1.0)

    def forward(self, x):
        h = F.relu(self.l(x))
        return self.o(h + x if self.res else h)


def _inputs(dtype, n_in: int) -> torch.Tensor:
    """Rows whose first four entries sum exactly to a number of either sign far inside the range while
    their left-to-right partial sums overflow, next to rows near and far from the boundaries."""
    M = torch.finfo(dtype).max
    rows = [
        [0.6 * M, 0.6 * M, -0.7 * M, -0.7 * M],  # exactly -0.2 M; +inf after two terms
        [-0.6 * M, -0.6 * M, 0.7 * M, 0.7 * M],  # exactly +0.2 M; -inf after two terms
        [0.6 * M, 0.6 * M, -0.5 * M, -0.5 * M],  # exactly +0.2 M
        # (stride 4) the max-pool's first window is exactly the largest (+0.05 M) but computed -inf, which
        # the per-entry window test would read as padding; the others are -0.2 M and -0.6 M
        [-0.6 * M, -0.6 * M, 0.8 * M, 0.45 * M, -0.1 * M, -0.1 * M, 0.0, 0.0, -0.3 * M, -0.3 * M, 0.0, 0.0],
        [1.0, 1.0, 1.0, 1.0],
        [0.25, 0.25, 0.25, 0.25],  # exactly at the Linear's boundary (bias -1)
        [-1.0, 2.0, -3.0, 0.5],
    ]
    rows = [r[:n_in] + [1.0] * (n_in - len(r[:n_in])) for r in rows]
    return torch.tensor(rows, dtype=dtype)


@pytest.mark.parametrize(
    "make, n_in",
    [
        (lambda: _Conv(False), 6),
        (lambda: _Conv(True), 12),
        (lambda: _Conv(True, relu_after=False), 12),
        (lambda: _Lin(False), 4),
        (lambda: _Lin(True), 4),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_overflowed_pre_activations_are_decided_exactly_on_every_path(make, n_in, dtype):
    net = make().eval()
    shape = (1, n_in) if isinstance(net, _Conv) else (n_in,)
    g = trace(net, input_shape=shape)
    X = _inputs(dtype, n_in)
    assert torch.isfinite(X).all()
    keep = {n.index for n in g.nodes}
    pn = pattern_nodes(g)
    ref = []
    for x in X:
        got = _exact_patterns(g, x.double(), keep)
        ref.append(np.concatenate([np.asarray(got[n.index]).astype(np.int64).reshape(-1) for n in pn]))
    ref = np.stack(ref)
    for kernels in (True, False):
        for first in (torch.float32, torch.float64):
            dec, _ = graph_patterns(g, X, dtype=first, _engines=_engines(g, kernels))
            got = np.concatenate([dec[n.index].numpy().astype(np.int64).reshape(len(X), -1) for n in pn], 1)
            assert np.array_equal(got, ref), (kernels, first)
    # the whole count (chains of Linear layers go their own way: the chain engine)
    want = len(np.unique(ref, axis=0))
    for precision in ("float32", "float64"):
        net_p = net if dtype == torch.float32 or precision == "float32" else net.double()
        got = count_patterns(net_p, X.reshape(len(X), *shape), input_shape=shape, precision=precision,
                             verbose=False).count
        assert got == want, precision


def test_count_patterns_of_an_overflowing_convolution_counts_both_signs():
    # the review's case: z = -2e38 exactly (float32: +inf), next to z = 4
    net = nn.Sequential(nn.Conv2d(1, 1, 2, bias=False), nn.ReLU(), nn.Flatten()).eval()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    X = torch.tensor([[[[2e38, 2e38], [-3e38, -3e38]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    assert count_patterns(net, X, input_shape=(1, 2, 2), verbose=False).count == 2
    X64 = torch.tensor([[[[1e308, 1e308], [-1.5e308, -1.5e308]]], [[[1.0] * 2] * 2]], dtype=torch.float64)
    r = count_patterns(net.double(), X64, input_shape=(1, 2, 2), precision="float64", verbose=False)
    assert r.count == 2
