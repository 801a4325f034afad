"""Exact regions on a segment through traced graphs (residual add, max-pool, cat) against dense sampling."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from netgeom.nets import trace
from netgeom.regions.exact import regions_on_segment


class ResPoolCat(nn.Module):
    """relu(fc1 x) -> relu(fc2 h + h) (residual) -> max-pool pairs -> cat with x -> fc3."""

    def __init__(self, n0: int, w: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(n0, w), nn.Linear(w, w)
        self.fc3 = nn.Linear(w // 2 + n0, 4)
        self.fc4 = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h) + h)
        p = F.max_pool1d(h.unsqueeze(1), 2).flatten(1)
        return self.fc4(F.relu(self.fc3(torch.cat([p, x], dim=1))))


def _sampled_runs(g, a, b, n):
    """Patterns (ReLU bits, one-hot argmaxes) at n points along the segment, and the number of runs."""
    t = np.linspace(0, 1, n)
    return _patterns_at(g, torch.as_tensor(a[None, :] + t[:, None] * (b - a)[None, :]))


def _patterns_at(g, X):
    n = len(X)
    vals = g.values(X)
    cols = []
    for node in g.nodes:
        if node.op == "relu":
            cols.append((vals[node.inputs[0]] > 0).numpy())
        elif node.op == "maxpool":
            _, pos = node.pool(vals[node.inputs[0]], return_indices=True)
            k = node.windows.shape[1]
            onehot = np.zeros((n, node.windows.shape[0] * k), dtype=bool)
            onehot[np.arange(n)[:, None], np.arange(node.windows.shape[0])[None, :] * k + pos.numpy()] = True
            cols.append(onehot)
    P = np.concatenate(cols, axis=1)
    runs = 1 + int(np.any(P[1:] != P[:-1], axis=1).sum())
    return P, runs


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n0=st.integers(2, 6), w=st.sampled_from([4, 6, 8]))
def test_graph_segment_equals_dense_sampling(seed, n0, w):
    net = ResPoolCat(n0, w, seed).double().eval()
    g = trace(net)
    assert not g.is_chain
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, n0)) * 2
    res = regions_on_segment(net, a, b)
    P, runs = _sampled_runs(g, a, b, 100_001)
    exact = {p.tobytes() for p in np.packbits(res.patterns, axis=1)}
    assert {p.tobytes() for p in np.packbits(P, axis=1)} <= exact
    assert runs <= res.count
    # consecutive pieces differ, and each piece's midpoint has the piece's pattern
    assert np.all(np.any(res.patterns[1:] != res.patterns[:-1], axis=1))
    mids = 0.5 * (res.edges[:-1] + res.edges[1:])
    X = torch.as_tensor(a[None, :] + mids[:, None] * (b - a)[None, :])
    P_mid, _ = _patterns_at(g, X)
    assert np.array_equal(P_mid, res.patterns)
    # dense sampling finds every piece longer than the grid step
    short = np.diff(res.edges) < 2e-5
    assert runs >= res.count - int(short.sum())


def test_graph_whole_line_is_refused():
    # (graph slices are exact now: tests/test_graph_slice.py)
    net = ResPoolCat(3, 4, 0).double().eval()
    with pytest.raises(ValueError, match="chain"):
        regions_on_segment(net, np.zeros(3), np.ones(3), t_range=None)


def test_graph_segment_refuses_before_outgrowing_its_memory_budget():
    from netgeom.regions._graph_segment import segment_graph
    from netgeom.regions.exact import TooManyRegionsError

    g = trace(ResPoolCat(4, 8, 0).double().eval())
    rng = np.random.default_rng(0)
    a, d = rng.normal(size=4), rng.normal(size=4)
    edges, patterns = segment_graph(g, a, 50 * d, 0.0, 1.0)
    assert len(patterns) > 2
    with pytest.raises(TooManyRegionsError, match="memory_budget") as err:
        segment_graph(g, a, 50 * d, 0.0, 1.0, memory_budget=1024)
    assert "relu" in str(err.value) or "max" in str(err.value)
    # a budget that fits gives the same pieces: freeing values after their last reader changes nothing
    again, pat2 = segment_graph(g, a, 50 * d, 0.0, 1.0, memory_budget=2**24)
    assert np.array_equal(edges, again) and np.array_equal(patterns, pat2)
