"""The graph engine's cheaper certified bounds (netgeom.nets.certified): the spectral-norm certificate, the
max-pool window test with rounding margins, the per-(row, unit) float64 redo and the row blocks, each
against exact rational arithmetic written here from the torch modules (not from netgeom's graph code)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from _boundary import boundary_points
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from netgeom import count_patterns, trace
from netgeom.nets import certified
from netgeom.nets.certified import _spectral_bound, _window_sure, graph_patterns
from netgeom.regions.patterns import pack_patterns, unique_rows


# ------------------------------------------------------------------------------ spectral-norm certificate
@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 7),
    st.integers(1, 7),
    st.sampled_from([1e-30, 1e-3, 1.0, 1e20]),
    st.sampled_from(["dense", "pruned", "rank1", "equal"]),
)
def test_spectral_bound_is_above_an_exact_rayleigh_quotient(seed, m, n, scale, kind):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g, dtype=torch.float64) * scale
    if kind == "pruned":
        w = w * (torch.rand(m, n, generator=g) < 0.4)
    elif kind == "rank1":
        a = torch.randn(m, generator=g, dtype=torch.float64)
        w = torch.outer(a, torch.randn(n, generator=g, dtype=torch.float64))
    elif kind == "equal":  # repeated top singular values: the estimate's eigenvector is ambiguous
        w = torch.zeros(m, n, dtype=torch.float64)
        w[range(min(m, n)), range(min(m, n))] = scale
    bound = _spectral_bound(w)
    if not bool((w != 0).any()):
        assert bound == 0.0
        return
    # ||w v||^2 / ||v||^2 <= ||w||_2^2 for every v, computed exactly: the top right singular vector of a
    # float64 SVD and a few random vectors
    _, _, vh = torch.linalg.svd(w)
    W = [[Fraction(a) for a in row] for row in w.tolist()]
    vs = [vh[0].tolist()] + [torch.randn(n, generator=g, dtype=torch.float64).tolist() for _ in range(3)]
    B2 = Fraction(bound) ** 2
    for v in vs:
        V = [Fraction(a) for a in v]
        nv = sum(a * a for a in V)
        if nv == 0:
            continue
        wv = [sum(a * b for a, b in zip(row, V)) for row in W]
        assert sum(a * a for a in wv) <= B2 * nv
    # and it is a useful bound: within a percent of the estimate (the Frobenius norm is the fallback)
    smax = float(torch.linalg.svdvals(w)[0])
    assert bound <= smax * 1.02 + 1e-300


def test_spectral_bound_beats_frobenius_on_a_square_layer():
    torch.manual_seed(0)
    w = nn.Linear(128, 128).weight.detach().double()
    assert _spectral_bound(w) < 0.25 * float(torch.linalg.matrix_norm(w))
    assert _spectral_bound(torch.zeros(600, 700, dtype=torch.float64)) == 0.0
    assert _spectral_bound(torch.ones(600, 700, dtype=torch.float64)) == math.inf  # too big to certify


# ------------------------------------------------------------------------------ max-pool window test
def _first_argmax(vals):
    best = 0
    for i, a in enumerate(vals):
        if a > vals[best]:
            best = i
    return best


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=2, max_size=4),
    st.lists(st.sampled_from([0.0, 0.3, 0.6, 1.5, 2.0, -1.0]), min_size=4, max_size=4),
    st.lists(st.sampled_from([-1, 0, 0, 1]), min_size=4, max_size=4),
    st.sampled_from([1.0, 2.0**-20, 2.0**-126, 2.0**-140, 3.0e30]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_window_sure_only_when_every_exact_window_has_that_argmax(ints, efrac, ulps, scale, dtype):
    """Windows built to sit on the decision boundary (ties, entries an ulp apart, errors a fraction of an
    ulp so that ``V -+ E`` rounds, or exactly half a gap): whenever the test says sure, every exact window
    within the errors (all corners, in rationals) has its first maximum at the computed argmax."""
    k = len(ints)
    u = torch.finfo(dtype).eps / 2
    V = torch.tensor([a * scale for a in ints], dtype=dtype)
    for i in range(k):  # move entries by an ulp: onto or across a boundary
        if ulps[i]:
            V[i] = torch.nextafter(V[i], torch.tensor(math.inf * ulps[i], dtype=dtype))
    assume(bool(torch.isfinite(V).all()))
    # errors: zero, a fraction of an ulp of the value, or (-1) half the integer gap
    E = torch.tensor([scale / 2 if f < 0 else abs(float(V[i])) * u * f for i, f in enumerate(efrac[:k])])
    E = E.to(dtype)
    t = torch.argmax(V).reshape(1)
    sure = bool(_window_sure(V[None], E[None], t[None], u)[0])
    if not sure:
        return
    Vf = [Fraction(float(a)) for a in V]
    Ef = [Fraction(float(a)) for a in E]
    for corner in range(3**k):
        signs = [(corner // 3**i) % 3 - 1 for i in range(k)]
        ex = [v + s * e for v, s, e in zip(Vf, signs, Ef)]
        assert _first_argmax(ex) == int(t), (V.tolist(), E.tolist(), signs)


def test_window_sure_decides_exact_ties_by_position_and_pads():
    V = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0], [-math.inf, 3.0, 1.0]])
    E = torch.zeros(3, 3)
    t = torch.argmax(V, 1, keepdim=True)
    assert _window_sure(V, E, t, 2.0**-24).tolist() == [True, True, True]
    E[1, 2] = 1e-30  # the later tie is not exact: could be above
    assert _window_sure(V, E, t, 2.0**-24).tolist() == [True, False, True]


# ------------------------------------------------------------------------------ nets near boundaries
class _ConvPoolRes(nn.Module):
    """conv -> relu -> max-pool 2x2 -> flatten -> fc (residual, relu) -> fc -> relu -> out."""

    def __init__(self, seed: int, c: int = 2, leak: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, c, 3)
        self.fc1 = nn.Linear(c * 4, c * 4)
        self.fc2 = nn.Linear(c * 4, 3)
        self.out = nn.Linear(3, 2)
        self.leak = leak

    def forward(self, x):
        h = F.max_pool2d(F.leaky_relu(self.conv(x), self.leak), 2).flatten(1)
        h = h + F.relu(self.fc1(h))
        return self.out(F.relu(self.fc2(h)))


def _frac_params(m):
    w = m.weight.detach().double().reshape(m.weight.shape[0], -1)
    return [[Fraction(v) for v in row] for row in w.tolist()], [Fraction(v) for v in m.bias.detach().tolist()]


def _rational_pattern(net: _ConvPoolRes, x: list[float]) -> list[bool]:
    """Relu signs and 2x2 argmax bits (first maximum, row-major in the window) in exact rationals."""
    Wc, bc = _frac_params(net.conv)
    W1, b1 = _frac_params(net.fc1)
    W2, b2 = _frac_params(net.fc2)
    leak = Fraction(net.leak)
    img = [[Fraction(x[r * 6 + c]) for c in range(6)] for r in range(6)]
    C = len(bc)

    def conv(f, r, c):
        return sum(Wc[f][i * 3 + j] * img[r + i][c + j] for i in range(3) for j in range(3)) + bc[f]

    z = [[[conv(f, r, c) for c in range(4)] for r in range(4)] for f in range(C)]
    bits = [z[f][r][c] > 0 for f in range(C) for r in range(4) for c in range(4)]
    a = [[[v if v > 0 else v * leak for v in row] for row in zf] for zf in z]
    h, posbits = [], []
    for f in range(C):
        for R in range(2):
            for Cc in range(2):
                win = [a[f][2 * R + i][2 * Cc + j] for i in range(2) for j in range(2)]
                p = _first_argmax(win)
                h.append(win[p])
                posbits += [bool(p >> 1 & 1), bool(p & 1)]
    z1 = [sum(w * v for w, v in zip(row, h)) + b for row, b in zip(W1, b1)]
    h = [v + max(q, Fraction(0)) for v, q in zip(h, z1)]
    z2 = [sum(w * v for w, v in zip(row, h)) + b for row, b in zip(W2, b2)]
    return bits + posbits + [q > 0 for q in z1] + [q > 0 for q in z2]


def _near_boundary_inputs(net, seed: int, n_seg: int = 6) -> torch.Tensor:
    """Points within float64 precision of pattern boundaries: bisection along random segments (on the
    float64 forward), the crossing point and its float64 neighbours, plus zero patches (relu ties in the
    max-pool windows)."""
    g = trace(net.double(), input_shape=(1, 6, 6))
    gen = torch.Generator().manual_seed(seed)

    def segment():
        return torch.randn(36, generator=gen, dtype=torch.float64), torch.randn(36, generator=gen).double()

    # (the far points: float32 cannot tell, a float64 unit redo or row pass can)
    pts = boundary_points(
        g,
        segment,
        n_seg,
        offsets=(1e-5, 1e-7, 1e-9, 1e-12),
        below=True,
    )
    z = torch.randn(6, 36, generator=gen, dtype=torch.float64)
    z[:, :18] = 0.0
    pts += list(z)
    net.float()
    return torch.stack(pts)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.1]))
def test_graph_patterns_near_boundaries_equal_rational_arithmetic(seed, leak):
    net = _ConvPoolRes(seed, leak=leak).eval()
    X = _near_boundary_inputs(net, seed)
    ref = np.array([_rational_pattern(net, x) for x in X.tolist()])
    g = trace(net, input_shape=(1, 6, 6))
    nodes = certified.pattern_nodes(g)
    for dt in (torch.float32, torch.float64):
        for engines in ({}, None):
            dec, _ = graph_patterns(g, X, dtype=dt, _engines=engines)
            cols = []
            for node in nodes:
                d = dec[node.index]
                if node.op == "relu":
                    cols.append(d.numpy())
                else:
                    cols.append(torch.stack([(d >> 1) & 1, d & 1], -1).reshape(len(X), -1).bool().numpy())
            got = np.concatenate([cols[0], cols[1], cols[2], cols[3]], 1)
            assert np.array_equal(got, ref), dt
    res = count_patterns(net, X, input_shape=(1, 6, 6))
    u, c = unique_rows(pack_patterns(ref))
    assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)


def test_row_blocks_and_unit_redo_change_nothing(monkeypatch):
    """Tiny row blocks (every block boundary exercised) and the per-unit float64 redo on or off give the
    same decisions; the redo decides some units the float32 pass could not (it is exercised)."""
    net = _ConvPoolRes(3).eval()
    X = _near_boundary_inputs(net, 3, n_seg=10).float()
    X = torch.cat([X, torch.rand(300, 36, generator=torch.Generator().manual_seed(0))])
    g = trace(net, input_shape=(1, 6, 6))
    engines: dict = {}
    base, st0 = graph_patterns(g, X, _engines=engines)
    e32 = engines[(torch.float32, "crude") if engines.get("crude32") else torch.float32]  # (the one used)
    assert sum(ok for _, ok in e32.tally.values()) > 0
    monkeypatch.setattr(certified, "_CHUNK_BYTES", 64)
    small, _ = graph_patterns(g, X)
    monkeypatch.setattr(certified._Engine, "_worth_refining", lambda self, src: False)
    off, st1 = graph_patterns(g, X)
    for i in base:
        assert torch.equal(base[i], small[i]) and torch.equal(base[i], off[i])
    assert st1["float64"] >= st0["float64"]


def test_pruned_filter_outputs_stay_exact_zeros():
    """A conv filter pruned to zero (and zero bias) gives exact zeros: decided in float32 without any
    float64 or rational work, also with the underflow allowance on every nonzero row."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16, 2))
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[0].bias[1] = 0.0
    X = torch.rand(200, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    res = count_patterns(net, X)
    assert res.n_exact == 0
    bits = np.unpackbits(res.patterns, axis=1)[:, :32]
    assert not bits[:, 16:].any()


def test_conv_unit_redo_table_matches_the_convolution():
    """The im2col table of the conv unit redo (padding, stride, dilation, several channels) reproduces the
    convolution unit by unit, with a bound that holds against float64 values of an exact float32 input."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)), nn.ReLU())
    g = trace(net, input_shape=(2, 7, 6))
    eng = certified._Engine(g, torch.float32, "cpu")
    node = g.nodes[1]
    assert eng.refine[node.index]()["T"] is not None  # the table path, not the dense rows
    x = torch.randn(5, g.n_in, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(5).repeat_interleave(node.size)
    units = torch.arange(node.size).repeat(5)
    z, bd = eng._refine(node.index, x, certified._Exact(x), rows, units)
    # exact values from the module's own weights (each output reads its window, written out here)
    w = net[0].weight.detach().double()
    b = net[0].bias.detach().double()
    X = x.double().reshape(5, 2, 7, 6)
    assert node.shape == (3, 4, 8)
    out = torch.zeros(5, 3, 4, 8, dtype=torch.float64)
    k = 0
    for r in range(5):
        for f in range(3):
            for i in range(4):
                for j in range(8):
                    acc = Fraction(float(b[f]))
                    for c in range(2):
                        for a in range(3):
                            for q in range(2):
                                hi, wi = 2 * i - 1 + a, j - 2 + 2 * q
                                if 0 <= hi < 7 and 0 <= wi < 6:
                                    acc += Fraction(float(w[f, c, a, q])) * Fraction(float(X[r, c, hi, wi]))
                    assert abs(Fraction(float(z[k])) - acc) <= Fraction(float(bd[k])), (r, f, i, j)
                    out[r, f, i, j] = float(acc)
                    k += 1
    assert torch.allclose(out.reshape(5, -1), node.apply(x.double()), rtol=0, atol=1e-12)
    assert float(bd.max()) < 1e-12


@pytest.mark.parametrize("scale", [1e39, 1e100, 1e160, 1e200])
def test_weights_beyond_float32_or_near_float64_range_keep_exact_patterns(scale):
    """Weights above float32's range round to inf in the float32 engine (no certified bound: the graph then
    runs in float64), and above ~1e154 the spectral certificate's w^T w overflows (the Frobenius bound
    serves instead of an error). Regression: 28 of 42 patterns, and a LinAlgError."""
    from test_graph_slice import ResMLP

    net = ResMLP(4, 8, 1, seed=0).double()
    with torch.no_grad():
        net.blocks[0][0].weight.mul_(scale)
        net.blocks[0][0].bias.mul_(scale)
    X = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def lin(layer, h):
        W = [[Fraction(v) for v in r] for r in layer.weight.double().tolist()]
        b = [Fraction(v) for v in layer.bias.double().tolist()]
        return [sum(w * v for w, v in zip(r, h)) + bj for r, bj in zip(W, b)]

    pats = set()
    for x in X.tolist():
        z0 = lin(net.inp, [Fraction(v) for v in x])
        h = [max(q, 0) for q in z0]
        z1 = lin(net.blocks[0][0], h)
        z2 = [a + c for a, c in zip(h, lin(net.blocks[0][2], [max(q, 0) for q in z1]))]
        pats.add(tuple(q > 0 for q in z0 + z1 + z2))
    for precision in ("float32", "float64"):
        assert count_patterns(net, X, precision=precision).count == len(pats), precision
