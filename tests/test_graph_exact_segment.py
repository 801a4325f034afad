"""The exact path of segments through traced graphs: ties that float error bounds cannot settle, checked
against a hand computation and against Fraction brute force; a pruned ResNet-20 against dense sampling."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_regions_graph import ResPoolCat  # the same residual + max-pool + cat net
from torch import nn
from torch.nn import functional as F

from netgeom.nets import resnet20, trace
from netgeom.regions._graph_segment import CloseCallError, segment_graph
from netgeom.regions.exact import regions_on_segment


class TieNet(nn.Module):
    """relu(fc1 x) -> relu(fc2 h + h) (residual) -> max-pool pairs -> fc3."""

    def __init__(self, w1, b1, w2, b2, slope=0.0):
        super().__init__()
        self.slope = slope
        n = len(b1)
        self.fc1, self.fc2, self.fc3 = nn.Linear(len(w1[0]), n), nn.Linear(n, n), nn.Linear(n // 2, 1)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor(w1))
            self.fc1.bias.copy_(torch.tensor(b1))
            self.fc2.weight.copy_(torch.tensor(w2))
            self.fc2.bias.copy_(torch.tensor(b2))
            self.fc3.weight.fill_(1.0)

    def forward(self, x):
        h = F.leaky_relu(self.fc1(x), self.slope)
        r = F.leaky_relu(self.fc2(h) + h, self.slope)
        return self.fc3(F.max_pool1d(r.unsqueeze(1), 2).flatten(1))


def _exact_patterns(g, a, d, t: Fraction):
    """ReLU bits and max-pool argmaxes of the float64 network at ``a + t d``, in Fraction arithmetic."""
    vals = []
    bits = []
    for node in g.nodes:
        if node.op == "input":
            v = [Fraction(x) + t * Fraction(y) for x, y in zip(a.tolist(), d.tolist())]
        elif node.op == "affine":
            M, b = node.matrix().numpy(), node.bias_vector.numpy()
            x = vals[node.inputs[0]]
            v = [
                Fraction(b[i]) + sum(Fraction(M[i, j]) * x[j] for j in np.nonzero(M[i])[0])
                for i in range(len(b))
            ]
        elif node.op == "relu":
            x = vals[node.inputs[0]]
            bits += [z > 0 for z in x]
            v = [z if z > 0 else Fraction(node.negative_slope) * z for z in x]
        elif node.op == "add":
            v = [p + q for p, q in zip(vals[node.inputs[0]], vals[node.inputs[1]])]
        elif node.op == "maxpool":
            x = vals[node.inputs[0]]
            v = []
            for win in node.windows.tolist():
                c = [x[i] if i >= 0 else None for i in win]
                # the first maximal position (padding never wins), as torch takes
                best = max((k for k in range(len(win)) if c[k] is not None), key=lambda k: (c[k], -k))
                bits += [k == best for k in range(len(win))]
                v.append(c[best])
        else:
            v = vals[node.inputs[0]]
        vals.append(v)
    return np.array(bits, dtype=bool)


def test_coinciding_breakpoints_are_settled_exactly():
    # units: t - 1/2 and 3t - 3/2 vanish at the same t = 1/2 (different lines), 1/4 - t and 2t - 1/2 at
    # t = 1/4 with opposite slopes; the max-pool candidates cross exactly at those ends too
    w1 = [[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0], [2.0, 0.0]]
    b1 = [-0.5, -1.5, 0.25, -0.5]
    net = TieNet(w1, b1, [[0.0] * 4] * 4, [0.0] * 4).double().eval()
    g = trace(net)
    assert not g.is_chain
    a, b = np.array([0.0, 1.0]), np.array([1.0, -2.0])
    with pytest.raises(CloseCallError, match="within the float64 error bound"):
        segment_graph(g, a, b - a, 0.0, 1.0, exact="never")
    res = regions_on_segment(net, a, b)
    # by hand: pieces [0, 1/4], [1/4, 1/2], [1/2, 1]
    assert res.breakpoints.tolist() == [0.25, 0.5]
    assert res.n_exact > 0
    relu = [[0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 0, 1]]
    # argmax of (r0, r1), (r2, r3): a tie (both exactly 0) takes the first position, as torch does
    pool = [[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 1]]
    expect = np.array([r + r + p for r, p in zip(relu, pool)], dtype=bool)
    assert np.array_equal(res.patterns, expect)


def _check_against_fractions(net, a, b, n_grid):
    g = trace(net)
    d = b - a
    res = regions_on_segment(net, a, b)
    edges = res.edges
    # non-decreasing: a piece shorter than one ulp (two exact breakpoints rounding to one float) is real
    assert np.all(np.diff(edges) >= 0)
    assert np.all(np.any(res.patterns[1:] != res.patterns[:-1], axis=1))
    # grid points and points just beside every edge (the float breakpoints are certified to ~1e-15, so
    # only points within that of an edge could sit on the other side of the exact breakpoint)
    ts = set(np.linspace(0.0, 1.0, n_grid).tolist())
    for e in edges[1:-1]:
        ts |= {e - 1e-9, e + 1e-9}
    for t in sorted(ts):
        k = int(np.searchsorted(edges, t, side="right")) - 1
        if np.min(np.abs(edges - t)) < 1e-12 or not 0 < t < 1:  # patterns hold on open pieces
            continue
        k = min(k, len(res.patterns) - 1)
        assert np.array_equal(_exact_patterns(g, a, d, Fraction(t)), res.patterns[k]), t
    return res


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), slope=st.sampled_from([0.0, 0.25, 0.1]))
def test_quantised_graphs_with_many_ties_match_fraction_brute_force(seed, slope):
    # weights on a coarse dyadic grid make coinciding roots and identical candidates common
    rng = np.random.default_rng(seed)
    w1 = (rng.integers(-4, 5, size=(6, 2)) / 4).tolist()
    b1 = (rng.integers(-4, 5, size=6) / 8).tolist()
    w2 = (rng.integers(-2, 3, size=(6, 6)) / 2 * (rng.random((6, 6)) < 0.4)).tolist()
    b2 = (rng.integers(-2, 3, size=6) / 8).tolist()
    net = TieNet(w1, b1, w2, b2, slope).double().eval()
    a = rng.integers(-4, 5, size=2) / 2
    b = a + rng.integers(1, 5, size=2) / 2 * rng.choice([-1, 1], size=2)
    _check_against_fractions(net, a, b, 65)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), n0=st.integers(2, 5), w=st.sampled_from([4, 6, 8]))
def test_exact_path_everywhere_equals_the_certified_floats_with_cat(seed, n0, w):
    g = trace(ResPoolCat(n0, w, seed).double().eval())
    rng = np.random.default_rng(seed)
    a, d = rng.normal(size=(2, n0)) * 3
    info = {}
    edges, patterns = segment_graph(g, a, d, 0.0, 1.0, exact="never")
    forced = segment_graph(g, a, d, 0.0, 1.0, exact="always", info=info)
    assert np.array_equal(forced[1], patterns)
    np.testing.assert_allclose(forced[0], edges, rtol=0, atol=1e-12)
    assert info["n_exact"] >= len(patterns) - 1


def _patterns_by_sampling(g, X):
    vals = g.values(X)
    cols = []
    n = len(X)
    for node in g.nodes:
        if node.op == "relu":
            cols.append((vals[node.inputs[0]] > 0).numpy())
        elif node.op == "maxpool":
            _, pos = node.pool(vals[node.inputs[0]], return_indices=True)
            k = node.windows.shape[1]
            onehot = np.zeros((n, node.windows.shape[0] * k), dtype=bool)
            onehot[np.arange(n)[:, None], np.arange(node.windows.shape[0])[None, :] * k + pos.numpy()] = True
            cols.append(onehot)
    return np.concatenate(cols, axis=1)


def test_pruned_resnet20_segment_exact_path_against_sampling():
    torch.manual_seed(1)
    net = resnet20(in_channels=1, image_size=8, width=2, seed=0)
    masks = {n: torch.rand_like(p) > 0.5 for n, p in net.named_parameters() if p.ndim > 1}
    g = trace(net, masks)
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 64))
    res = regions_on_segment(net, a, b, masks=masks)
    assert res.count > 50
    assert res.n_exact > 0  # 20 layers: some decisions are beyond the float bounds and settled exactly
    # every piece settled in exact arithmetic gives the same pieces as the floats where they are certain
    part = segment_graph(g, a, b - a, 0.0, 0.25)
    forced = segment_graph(g, a, b - a, 0.0, 0.25, exact="always")
    assert np.array_equal(forced[1], part[1])
    np.testing.assert_allclose(forced[0], part[0], rtol=0, atol=1e-12)
    t = np.linspace(0, 1, 4001)
    P = _patterns_by_sampling(g, torch.as_tensor(a[None, :] + t[:, None] * (b - a)[None, :]))
    exact = {p.tobytes() for p in np.packbits(res.patterns, axis=1)}
    assert {p.tobytes() for p in np.packbits(P, axis=1)} <= exact
    # sampled points lie in the piece of their pattern
    k = np.searchsorted(res.edges, t, side="right") - 1
    inside = (t > res.edges[k]) & (t < res.edges[np.minimum(k + 1, len(res.edges) - 1)])
    assert np.array_equal(P[inside], res.patterns[k[inside]])
    assert np.all(np.any(res.patterns[1:] != res.patterns[:-1], axis=1))


def test_a_piece_shorter_than_one_ulp_is_found():
    # quantised weights with a 0.1 leak (not dyadic): two breakpoints 1e-19 apart near t = 14/27
    rng = np.random.default_rng(48)
    w1 = (rng.integers(-4, 5, size=(6, 2)) / 4).tolist()
    b1 = (rng.integers(-4, 5, size=6) / 8).tolist()
    w2 = (rng.integers(-2, 3, size=(6, 6)) / 2 * (rng.random((6, 6)) < 0.4)).tolist()
    b2 = (rng.integers(-2, 3, size=6) / 8).tolist()
    net = TieNet(w1, b1, w2, b2, 0.1).double().eval()
    a = rng.integers(-4, 5, size=2) / 2
    b = a + rng.integers(1, 5, size=2) / 2 * rng.choice([-1, 1], size=2)
    res = regions_on_segment(net, a, b)
    k = int(
        np.nonzero(np.diff(res.edges) == 0)[0][0]
    )  # the piece [edges[k], edges[k+1]] of zero float length
    g = trace(net)
    c = Fraction(res.edges[k])
    # brute force: the pattern just right of t = 14/27 (within 1e-19) is that piece's, and differs from both
    # neighbours' (seen at +-1e-17)
    inside = _exact_patterns(g, a, b - a, Fraction(14, 27) + Fraction(1, 10**20))
    assert c == Fraction(res.edges[k + 1])
    assert np.array_equal(inside, res.patterns[k])
    assert np.array_equal(
        _exact_patterns(g, a, b - a, Fraction(14, 27) - Fraction(1, 10**17)), res.patterns[k - 1]
    )
    assert np.array_equal(
        _exact_patterns(g, a, b - a, Fraction(14, 27) + Fraction(1, 10**17)), res.patterns[k + 1]
    )
