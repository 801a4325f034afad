"""The graph engine's compiled passes and cheaper bounds (netgeom.nets._graph_kernel, netgeom.nets.certified):
the max-pool top-two kernel and the fused ReLU kernel against plain per-window / per-entry references, the
strided max-pool slots against the window table, the stacked first convolution and the crude float64
convolution bounds against exact rational arithmetic, and patterns near boundaries with every path on or
off (the rational reference is written from the torch modules in test_patterns_graph_speed)."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from _boundary import boundary_points
from hypothesis import given, settings
from hypothesis import strategies as st
from test_patterns_graph_speed import _ConvPoolRes, _first_argmax, _rational_pattern
from torch import nn
from torch.nn import functional as F

from netgeom import count_patterns, trace
from netgeom.nets import certified
from netgeom.nets._graph_kernel import pool_top2, relu_elem
from netgeom.nets.certified import _strided_slots, graph_patterns
from netgeom.regions.patterns import pack_patterns, unique_rows


# ------------------------------------------------------------------------------ max-pool kernel
@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 5),
    st.integers(1, 6),
    st.sampled_from([torch.float32, torch.float64]),
    st.booleans(),
)
def test_pool_kernel_equals_a_window_by_window_reference(seed, k, n_win, dtype, pad):
    """Values from a few levels (ties), errors zero or not, padding slots, a NaN row: first maximum and
    its slot, largest error, and the top-two test written out per window."""
    g = torch.Generator().manual_seed(seed)
    B, n = 4, 7
    x = torch.randint(-2, 3, (B, n), generator=g).to(dtype) * 0.5
    x += (torch.rand(B, n, generator=g) < 0.3).to(dtype) * 1e-3
    e = torch.rand(B, n, generator=g).to(dtype) * 1e-3 * (torch.rand(B, n, generator=g) < 0.5)
    win = torch.randint(0, n, (n_win, k), generator=g)
    if pad:
        win[:, 0] = -1  # a padding slot first: never the max
        if k == 1:
            win = torch.cat([win, torch.zeros(n_win, 1, dtype=torch.long)], 1)
    x[3, 2] = math.nan
    u = torch.finfo(dtype).eps / 2
    m1, pos, emax, sure = pool_top2(x, e, win, u)
    tiny = torch.finfo(dtype).tiny
    for r in range(B):
        for w in range(win.shape[0]):
            ids = win[w].tolist()
            vals = [float(x[r, i]) if i >= 0 else -math.inf for i in ids]
            errs = [float(e[r, i]) if i >= 0 else 0.0 for i in ids]
            if r == 3:  # the NaN row: nothing sure
                assert not bool(sure[r, w])
                continue
            p = _first_argmax(vals)
            assert int(pos[r, w]) == p and float(m1[r, w]) == vals[p]
            assert float(emax[r, w]) == max(errs)
            others = [v for i, v in enumerate(vals) if i != p]
            m2 = max(others) if others else -math.inf
            em = max(errs)
            # the same test in the same precision
            gap = (torch.tensor(vals[p], dtype=dtype) - torch.tensor(m2, dtype=dtype)).item()
            thr = (torch.tensor(em, dtype=dtype) * (2 * (1 + 4 * u)) + tiny).item()
            assert bool(sure[r, w]) == (em == 0 or gap > thr), (vals, errs)


def test_relu_kernel_equals_the_torch_passes():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        z = torch.randn(50, 40, generator=g).to(dtype)
        d = torch.rand(50, 40, generator=g).to(dtype) * 0.05 * (torch.rand(50, 40, generator=g) < 0.7)
        z[3, 3], d[4, 4], d[5, 5] = math.nan, math.nan, math.inf
        z[6, :] = 0.0
        d[6, :] = 0.0  # exact zeros: decided (not positive)
        bits, und, v, e = relu_elem(z, d)
        assert torch.equal(bits, z > 0)
        amb = ((z.abs() <= d) & (d > 0)) | z.isnan() | d.isnan()
        assert torch.equal(und, amb.any(1))
        assert bool(und[3]) and bool(und[4]) and bool(und[5]) and not bool(und[6])
        assert torch.equal(v[~z.isnan()], torch.relu(z)[~z.isnan()])  # (a NaN's row is redone anyway)
        keep = ~((z + d) <= 0)
        assert torch.equal(e.isnan(), d.isnan() & keep)
        ok = ~e.isnan()
        assert torch.equal(e[ok], (d * keep)[ok])


# ------------------------------------------------------------------------------ strided max-pool slots
@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, shape, viewed",
    [
        (2, 2, 0, 1, (3, 8, 8), True),
        (3, 2, 0, 1, (2, 9, 7), True),  # overlapping windows, a leftover column
        (2, 1, 0, 2, (1, 6, 6), True),  # dilation
        ((2, 3), (1, 3), 0, 1, (2, 5, 9), True),
        (3, 2, 1, 1, (2, 6, 6), False),  # padding: the gather path
    ],
)
def test_strided_slots_read_the_window_table(kernel, stride, padding, dilation, shape, viewed):
    net = nn.Sequential(
        nn.Conv2d(shape[0], shape[0], 1), nn.ReLU(), nn.MaxPool2d(kernel, stride, padding, dilation)
    )
    g = trace(net, input_shape=shape)
    node = next(n for n in g.nodes if n.op == "maxpool")
    view = _strided_slots(g, node)
    assert (view is not None) == viewed
    x = torch.randn(3, g.nodes[node.inputs[0]].size, generator=torch.Generator().manual_seed(0))
    if view is not None:
        sh, offs, (s1, s2), (Ho, Wo) = view
        xv = x.reshape(3, *sh)
        for j, (a, b) in enumerate(offs):
            got = xv[:, :, a::s1, b::s2][:, :, :Ho, :Wo].reshape(3, -1)
            assert torch.equal(got, x[:, node.windows[:, j]])
    # every maxpool path gives torch's values and argmax positions
    ref_v, ref_i = F.max_pool2d(x.reshape(3, *shape), kernel, stride, padding, dilation, return_indices=True)
    for kernels in (True, False):
        eng = certified._Engine(g, torch.float32, "cpu")
        eng.kernels = kernels
        err = certified._Elem(torch.zeros_like(x))
        m1, _, pos, und = eng.maxpool(node, {node.inputs[0]: x}, {node.inputs[0]: err})
        assert torch.equal(m1, ref_v.reshape(3, -1)) and not bool(und.any())
        chosen = torch.gather(node.windows.expand(3, -1, -1), 2, pos.long().unsqueeze(-1)).squeeze(-1)
        plane = shape[1] * shape[2]
        assert torch.equal(chosen % plane, ref_i.reshape(3, -1))


# ------------------------------------------------------------------------- stacked and crude convolutions
def _exact_conv(conv: nn.Conv2d, x: torch.Tensor) -> list[list[Fraction]]:
    """Valid (no padding, stride 1) convolution of each row in rationals, from the module's parameters."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double()
    F_, C, kh, kw = w.shape
    out = []
    for img in x.double():
        H, W = img.shape[1:]
        row = []
        for f in range(F_):
            for i in range(H - kh + 1):
                for j in range(W - kw + 1):
                    acc = Fraction(float(b[f]))
                    for c in range(C):
                        for a in range(kh):
                            for q in range(kw):
                                acc += Fraction(float(w[f, c, a, q])) * Fraction(float(img[c, i + a, j + q]))
                    row.append(acc)
        out.append(row)
    return out


@pytest.mark.parametrize(
    "crude, dtype", [(False, torch.float32), (True, torch.float64), (False, torch.float64)]
)
def test_conv_bounds_hold_against_rationals(crude, dtype):
    """The first convolution's error bound (stacked |W| channels on a nonnegative exact input, the crude
    ||M_j||_1 max bound, or the full one) is above the distance of the computed values to the exact ones;
    the stacked bound equals the two-convolution one up to rounding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        conv.weight.mul_(torch.where(torch.rand_like(conv.weight) < 0.3, 1e-3, 1.0))
    net = nn.Sequential(conv, nn.ReLU())
    g = trace(net, input_shape=(2, 5, 5))
    x = torch.rand(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    x[0, :7] = 0.0
    eng = certified._Engine(g, dtype, "cpu", crude=crude)
    eng._norms = {}  # (run() sets this per block)
    node = g.nodes[1]
    y, err = eng.affine(node, x.to(dtype), certified._Exact(x.to(dtype)), need_err=True)
    bound = err.elem()
    ex = _exact_conv(conv, x.reshape(4, 2, 5, 5))
    for r in range(4):
        for j in range(node.size):
            assert abs(Fraction(float(y[r, j])) - ex[r][j]) <= Fraction(float(bound[r, j]))
    if dtype == torch.float32:
        assert eng.ops[node.index][0]["stacked"] is not None
        eng.ops[node.index][0]["stacked"] = None  # the two-convolution bound
        y2, err2 = eng.affine(node, x, certified._Exact(x), need_err=True)
        assert torch.allclose(y, y2, rtol=1e-6, atol=1e-6)  # (the same products; blocking may differ)
        assert torch.allclose(bound, err2.elem(), rtol=1e-5, atol=0)
    if crude:  # looser than the full bound, never tighter
        full = certified._Engine(g, dtype, "cpu")
        full._norms = {}
        _, err_full = full.affine(node, x.to(dtype), certified._Exact(x.to(dtype)), need_err=True)
        assert bool((bound >= err_full.elem()).all())


def _near_boundary_nonneg(net, seed: int, n_seg: int = 6) -> torch.Tensor:
    """Points within float64 precision of pattern boundaries on segments between nonnegative images (so
    that the first convolution takes its stacked bound), their float64 neighbours and a few offsets."""
    g = trace(net.double(), input_shape=(1, 6, 6))
    gen = torch.Generator().manual_seed(seed)
    def end():
        return torch.rand(36, generator=gen, dtype=torch.float64) * 2

    pts = boundary_points(g, lambda: (end(), end()), n_seg)
    z = torch.rand(4, 36, generator=gen, dtype=torch.float64)
    z[:, :18] = 0.0  # relu ties (zeros) inside the max-pool windows
    pts += list(z)
    net.float()
    return torch.stack(pts).clamp_min(0.0)


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000))
def test_nonnegative_images_near_boundaries_equal_rational_arithmetic_on_every_path(seed):
    """Kernels on or off, crude float64 bounds on or off, float32 or float64 first: the same exact
    patterns as rational arithmetic on inputs where the stacked first convolution applies."""
    net = _ConvPoolRes(seed).eval()
    X64 = _near_boundary_nonneg(net, seed)
    g = trace(net, input_shape=(1, 6, 6))
    nodes = certified.pattern_nodes(g)
    stacked = []
    orig = certified._Engine.affine

    def spy(self, node, x, err, *, need_err):
        stacked.append(isinstance(err, certified._Exact) and bool((x >= 0).all()) and not self.crude)
        return orig(self, node, x, err, need_err=need_err)

    # float32 inputs (exact in float32: the stacked first convolution) are still within ~1e-7 of the
    # boundaries; float64 ones within ~1e-16
    for X in (X64.float(), X64):
        ref = np.array([_rational_pattern(net, x) for x in X.double().tolist()])
        for kernels in (True, False):
            for dt in (torch.float32, torch.float64):
                engines: dict = {}
                if not kernels:
                    engines["crude32"] = False  # (the full float32 bounds: the stacked convolution)
                    for key, d, crude in (
                        (torch.float32, torch.float32, False),
                        (torch.float64, torch.float64, False),
                        ((torch.float64, "crude"), torch.float64, True),
                    ):
                        engines[key] = certified._Engine(g, d, "cpu", crude=crude)
                        engines[key].kernels = False
                certified._Engine.affine = spy
                try:
                    dec, _ = graph_patterns(g, X, dtype=dt, _engines=engines)
                finally:
                    certified._Engine.affine = orig
                cols = []
                for node in nodes:
                    d = dec[node.index]
                    if node.op == "relu":
                        cols.append(d.numpy())
                    else:
                        cols.append(torch.stack([(d >> 1) & 1, d & 1], -1).reshape(len(X), -1).bool().numpy())
                assert np.array_equal(np.concatenate(cols, 1), ref), (kernels, dt, X.dtype)
        res = count_patterns(net, X, input_shape=(1, 6, 6))
        u, c = unique_rows(pack_patterns(ref))
        assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)
    assert any(stacked)  # the stacked convolution was exercised


def test_crude_float64_pass_hands_undecided_rows_to_the_full_bounds(monkeypatch):
    """When the crude bounds leave rows undecided (forced here: every crude bound inflated), the full
    float64 bounds decide them, with the same answer; once crude bounds keep failing they stop being
    tried."""
    net = _ConvPoolRes(1).eval()
    g = trace(net, input_shape=(1, 6, 6))
    X = torch.rand(300, 36, generator=torch.Generator().manual_seed(0))
    base, _ = graph_patterns(g, X, dtype=torch.float64, _engines={})
    orig = certified._Engine.__init__

    def inflated(self, *a, crude=False, **k):
        orig(self, *a, crude=crude, **k)
        if crude:
            for ops in self.ops.values():
                for info in ops:
                    if isinstance(info, dict) and "l1" in info:
                        info["l1"] = info["l1"] * 1e12

    monkeypatch.setattr(certified._Engine, "__init__", inflated)
    engines: dict = {}
    for _ in range(5):
        dec, st = graph_patterns(g, X, dtype=torch.float64, _engines=engines)
        assert st["exact"] == 0
        for i in base:
            assert torch.equal(dec[i], base[i])
    tried, failed = engines["crude_tally"]
    assert failed > 0.1 * tried and tried < 5 * len(X)  # stopped trying after the first blocks
