"""The two-level float64 redo of a convolution's units computed per input patch for all the first
convolution's filters (``netgeom.nets._graph_kernel.refine_pairs2_conv``, ``certified._Engine._deep_conv``),
which the float32 engine now runs before the one-level redo: the same values and bounds as
``refine_pairs2`` bit for bit, each value within its bound of the rational one, each error term needed
(dropping it leaves some value outside its bound), and the engine's redo deciding every unit with the
rational sign, also where the one-level redo from the float32 input decides none."""

import inspect
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch
from test_convpat2_window import SHAPE, _cancelling, _graph64, _inputs, _Net, _rational
from torch import nn

from netgeom import trace
from netgeom.nets import _graph_kernel, certified
from netgeom.nets.certified import _Exact


@pytest.fixture(autouse=True)
def _windowed_everywhere(monkeypatch):
    monkeypatch.setattr(certified, "_CS_MIN_FAN_IN", 0)


def _setup(seed: int = 1, n: int = 8):
    g = _graph64(_cancelling(seed))
    x = _inputs(n, seed + 3)
    c1, c2 = [n.index for n in g.nodes if n.op == "affine"]
    eng = certified._Engine(g, torch.float32, "cpu", crude=True)
    B, N = len(x), g.nodes[c2].size
    rows, units = torch.arange(B).repeat_interleave(N), torch.arange(N).repeat(B)
    return g, x, eng, c1, c2, rows, units


_KERNELS = {
    k: getattr(_graph_kernel, k) for k in ("_patch_times_filters", "_relu_of_patch", "_refine_pairs2_conv")
}


def _mutated(old: str, new: str):
    """``_refine_pairs2_conv`` in pure Python with one line of its source, or of the patch product it
    calls, replaced (a mutation)."""
    ns = dict(vars(_graph_kernel))
    hits = 0
    for fn in _KERNELS.values():
        src = textwrap.dedent(inspect.getsource(fn.py_func))
        src = src[src.index("def ") :]  # (without the decorator)
        hits += old in src
        exec(src.replace(old, new), ns)
    assert hits == 1, old
    return ns["_refine_pairs2_conv"]


def _violations(z, b, exact) -> int:
    return sum(abs(Fraction(float(z[k])) - exact[k]) > Fraction(float(b[k])) for k in range(len(z)))


def test_patch_redo_equals_the_unit_redo_and_rationals_and_each_term_is_needed(monkeypatch):
    g, x, eng, c1, c2, rows, units = _setup()
    lvl2, lvl1 = eng.refine[c2](), eng.refine[c1]()
    n0, n1 = g.nodes[0].size, g.nodes[c1].size
    tab = _graph_kernel.conv2_table(lvl2, lvl1, n0, n1)
    # (padding in both convolutions: the second reads padding columns, the first padded input entries)
    assert bool((tab["Q"] < 0).any()) and bool((lvl1["T"] >= n0).any())
    for q, t in enumerate(lvl2["T"]):  # S: the distinct first-level positions each output position reads
        pos = np.unique(t[t < n1].numpy() % lvl1["L"])
        assert np.array_equal(tab["S"][q][tab["S"][q] >= 0], pos)
    z, b, ok = _graph_kernel.refine_pairs2_conv(x, rows, units, tab, certified._SAFETY)
    z0, b0 = _graph_kernel.refine_pairs2(x, rows, units, lvl2, lvl1, n1, certified._SAFETY)
    # the same values; bounds from ||W1_f||_1 max |a| instead of |W1_f| |a| for the first level: never
    # below the unit redo's, and as tight for deciding (~1e-16 of the terms)
    assert torch.equal(z, z0) and bool((b >= b0).all()) and float(b.max()) < 1e-12
    assert torch.equal(ok, ((z.abs() > b) | (b == 0)) & torch.isfinite(z))
    # ... the pairs in reverse row order (the kernel keeps a row's first-level patches) and in one pair
    # per call give the same numbers
    flip = torch.arange(len(rows) - 1, -1, -1)
    z_r, b_r, _ = _graph_kernel.refine_pairs2_conv(x, rows[flip], units[flip], tab, certified._SAFETY)
    assert torch.equal(z_r, z[flip]) and torch.equal(b_r, b[flip])
    for k in (0, len(rows) // 2, len(rows) - 1):
        z_k, b_k, _ = _graph_kernel.refine_pairs2_conv(
            x, rows[k : k + 1], units[k : k + 1], tab, certified._SAFETY
        )
        assert float(z_k[0]) == float(z[k]) and float(b_k[0]) == float(b[k])
    # a NaN input entry leaves every unit reading it undecided (and only those)
    xn = x.clone()
    xn[2, 10] = float("nan")
    zn, bn, okn = _graph_kernel.refine_pairs2_conv(xn, rows, units, tab, certified._SAFETY)
    reads = torch.isnan(zn) | torch.isnan(bn)
    assert bool(reads.any()) and not bool(okn[reads].any()) and torch.equal(okn[~reads], ok[~reads])
    assert bool((rows[reads] == 2).all())
    ex = [_rational(g, x[r].double()) for r in range(len(x))]
    exact = [ex[int(r)][c2][int(u)] for r, u in zip(rows, units)]
    assert _violations(z, b, exact) == 0
    assert float(b.max()) < 1e-12
    worst = max(float(abs(Fraction(float(z[k])) - exact[k]) / Fraction(float(b[k]))) for k in range(len(z)))
    assert worst > 1e-4  # (not vacuous)
    mutations = {
        # the first convolution's own rounding
        "level 1": ("e1 = (g1 * (l1[f] * amax", "e1 = (0.0 * (l1[f] * amax"),
        # ... with the patch's last entry for its largest
        "max": ("amax = max(amax, abs(a))", "amax = abs(a)"),
        # its bound not carried into the second convolution
        "carried": ("E[f] = 0.0 if neg else e1", "E[f] = 0.0"),
        # the second convolution's own rounding
        "level 2": ("g2 * (s_x + absb2[u])", "0.0 * (s_x + absb2[u])"),
    }
    # the second convolution's own rounding shows where the first level is exact: biases only (x = 0,
    # the first convolution's outputs its float64 biases), on a net whose biases are not zero
    # and the parameters are not float32 numbers (float32 x float32 products, and their sums here, are
    # exact in float64)
    gb = trace(_Net(3).eval(), input_shape=SHAPE)
    b1, b2 = [n.index for n in gb.nodes if n.op == "affine"]
    for i, name in ((b1, "bias"), (b2, "weight")):
        gb.nodes[i]._ops[0].params[name].div_(3.0)
        gb.nodes[i]._matrix = gb.nodes[i]._bias = None
        gb.nodes[i]._ops[0]._cache.clear()
    xb = torch.zeros(2, x.shape[1])
    engb = certified._Engine(gb, torch.float32, "cpu", crude=True)
    rb, ub = torch.arange(2).repeat_interleave(gb.nodes[b2].size), torch.arange(gb.nodes[b2].size).repeat(2)
    tab_b = _graph_kernel.conv2_table(engb.refine[b2](), engb.refine[b1](), n0, gb.nodes[b1].size)
    exb = _rational(gb, xb[0].double())[b2] * 2
    zb, bb, _ = _graph_kernel.refine_pairs2_conv(xb, rb, ub, tab_b, certified._SAFETY)
    assert _violations(zb, bb, exb) == 0
    for name, (old, new) in mutations.items():
        monkeypatch.setattr(_graph_kernel, "_refine_pairs2_conv", _mutated(old, new))
        zm, bm, _ = _graph_kernel.refine_pairs2_conv(x, rows, units, tab, certified._SAFETY)
        assert torch.equal(zm, z), name  # (the values are the kernel's)
        zbm, bbm, _ = _graph_kernel.refine_pairs2_conv(xb, rb, ub, tab_b, certified._SAFETY)
        assert _violations(zm, bm, exact) + _violations(zbm, bbm, exb) > 0, name


def test_engine_redo_goes_through_both_convolutions_first():
    """The engine's redo on every unit of the second convolution with the float32 input's error made far
    wider than the engine's (the one-level redo then decides nothing): every unit decided, with the
    rational sign, by the two-level redo alone; from an inexact input (the network's input given in
    float64) it does not apply and nothing is decided."""
    g, x, eng, c1, c2, rows, units = _setup(seed=2)
    relu1 = g.nodes[c2].inputs[0]
    y1 = g.nodes[c1].apply(x.double()).float()
    v1 = torch.relu(y1)
    e1 = certified._Elem(torch.full_like(v1, 1e-3) + v1 * 1e6)
    z_one, b_one = eng._refine(c2, v1, e1, rows, units)
    assert not bool(((z_one.abs() > b_one) | (b_one == 0)).any())
    calls = []
    orig = eng._refine
    eng._refine = lambda *a: calls.append(len(a[3])) or orig(*a)
    z, ok = eng._redo(c2, {0: x, relu1: v1}, {0: _Exact(x), relu1: e1}, rows, units)
    assert bool(ok.all()) and calls == []
    ex = [_rational(g, x[r].double()) for r in range(len(x))]
    assert torch.equal(z > 0, torch.tensor([e > 0 for r in range(len(x)) for e in ex[r][c2]]))
    assert eng._deep_conv(c2, {0: x}, {0: certified._Elem(x.abs())}) is None
    z, ok = eng._redo(c2, {0: x, relu1: v1}, {0: certified._Elem(x.abs()), relu1: e1}, rows, units)
    assert not bool(ok.any())


def test_patch_redo_only_where_cheap(monkeypatch):
    """The two-level redo goes first only while its first level costs at most ``_DEEP_FIRST`` times the
    one-level redo's terms (a wide first convolution: the one-level redo first, as before)."""
    g, x, eng, c1, c2, rows, units = _setup()
    assert eng._deep_conv(c2, {0: x}, {0: _Exact(x)}) is not None
    monkeypatch.setattr(certified, "_DEEP_FIRST", 1)
    eng2 = certified._Engine(g, torch.float32, "cpu", crude=True)
    assert eng2._deep_conv(c2, {0: x}, {0: _Exact(x)}) is None
    # a dense layer after the convolutions: no convolution pair, no table
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(75, 4), nn.ReLU()).eval()
    gd = trace(net, input_shape=SHAPE)
    lin = [n.index for n in gd.nodes if n.op == "affine"][1]
    engd = certified._Engine(gd, torch.float32, "cpu", crude=True)
    xd = torch.rand(2, 98)
    assert engd._deep_conv(lin, {0: xd}, {0: _Exact(xd)}) is None
