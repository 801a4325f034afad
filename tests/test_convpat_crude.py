"""The float32 graph engine's crude convolution bounds (netgeom.nets.certified._Outer): ``||M_j||_1`` times
the row's largest ``e + g |x^|`` plus ``g |b_j|`` and the underflow allowance, used when the first rows show
them tight enough. The ReLU pass computing that bound entry by entry against the materialised bound (bit for
bit), the bound against exact rational arithmetic (above every error, and not so loose that a dropped term
would go unnoticed), patterns near boundaries equal to rational ones on conv nets with and without pooling,
and the choice between crude and full bounds."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _boundary import boundary_points
from _engines import exact_pattern_rows
from test_convrow import _ConvConv, _near_boundary, _rational_values
from torch import nn

from netgeom import count_patterns, trace
from netgeom.nets import certified
from netgeom.nets._graph_kernel import relu_fused, relu_outer, row_absmax
from netgeom.nets.certified import _Outer, graph_patterns, pattern_nodes


# ------------------------------------------------------------------------------ compiled passes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", [0, 1, 3])
def test_relu_outer_equals_the_fused_pass_on_the_materialised_bound_bit_for_bit(dtype, mode):
    g = torch.Generator().manual_seed(mode)
    B, N = 29, 47
    z = torch.randn(B, N, generator=g).to(dtype) * 1e-3
    t = (torch.rand(B, generator=g) * 1e-5).to(dtype)
    risk = torch.rand(B, generator=g) < 0.7
    t[2], t[3], t[5] = math.nan, math.inf, 0.0
    z[4, 4], z[6, :3] = math.nan, t[6] * 0.5  # inside the bound
    info = {
        "l1": (torch.rand(N, generator=g) * 3).to(dtype),
        "absbias": (torch.rand(1, N, generator=g) * 1e-6).to(dtype),
        "under_vec": torch.full((1, N), 1e-30, dtype=dtype),
    }
    s, gn = 1.0000003, 1e-6
    o = _Outer(t, risk, info, s)
    L, A, U = o.vectors()
    dest = torch.zeros(B + 2, N, dtype=torch.bool)[1 : 1 + B]
    pairs, pairs1 = [], []
    bits, und, v, e = relu_outer(z, t, risk, L, A, U, s, gn, mode, dest, pairs=pairs)
    assert bits.data_ptr() == dest.data_ptr()
    d = o.elem()  # the torch operations of the materialised bound
    assert torch.equal(o.elem_rows(torch.tensor([7, 1])), d[[7, 1]])
    bits1, und1, v1, e1 = relu_fused(z, d, 1.0, gn, 1, pairs=pairs1)
    assert torch.equal(bits, bits1) and torch.equal(und, und1)
    # the ambiguous (row, unit) pairs both passes hand out: those of the per-entry test in torch
    amb = ((z.abs() <= d) & (d > 0)) | z.isnan() | d.isnan()
    for p in (pairs, pairs1):
        rr, uu = torch.nonzero(amb, as_tuple=True)
        assert torch.equal(p[0][0], rr) and torch.equal(p[0][1], uu)
    assert bool(und[2]) and bool(und[3]) and bool(und[4]) and bool(und[6])
    ok = ~(z.isnan().any(1) | d.isnan().any(1))  # (a NaN's row is redone whole)
    if mode == 0:
        assert v is None and e is None
        return
    assert torch.equal(v[ok], v1[ok])
    if mode == 1:
        assert torch.equal(e[ok], e1[ok])
        return
    m, nz = e
    q = e1 + v1 * gn  # (two roundings, as the kernel: no fused multiply-add)
    assert torch.equal(m[ok], q.amax(1)[ok])
    assert torch.equal(nz[ok], ((v1 != 0) | (e1 != 0)).any(1)[ok])
    assert bool(m[3].isinf()) or not bool(ok[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_absmax(dtype):
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(0)).to(dtype)
    x[1, 2], x[2], x[3, 4], x[4] = math.nan, 0.0, -math.inf, -0.0
    x[5, 7] = -5.0
    got = row_absmax(x)
    ref = x.abs().amax(1)
    assert torch.equal(got.isnan(), ref.isnan()) and torch.equal(got[~ref.isnan()], ref[~ref.isnan()])
    assert float(got[5]) == 5.0 and float(got[2]) == 0.0
    assert row_absmax(x[:, :0]).shape == (6,)


# ------------------------------------------------------------------------------ the bound against rationals
def _spy_bounds(g, x, kernels: bool):
    """Every convolution's float32 value and materialised crude bound in one run of the crude engine."""
    eng = certified._Engine(g, torch.float32, "cpu", crude=True)
    eng.kernels = kernels
    seen = {}
    orig = eng.affine

    def spy(node, xin, err, *, need_err):
        y, e = orig(node, xin, err, need_err=need_err)
        seen[node.index] = (y.clone(), e.elem().clone(), type(e))
        return y, e

    eng.affine = spy
    eng.run(x, True, {n.index for n in g.nodes if n.op != "output"})
    return seen


def test_crude_bound_holds_against_rationals_and_is_not_loose():
    """Above the distance of the float32 pre-activations to the exact ones for both convolutions (the
    second reads a ReLU's output and its error: the row maxima from the compiled pass), the same with the
    kernels on or off; and within ~50x of the largest actual error on rows built so that one term
    dominates: dropping the bias term, the input term or the carried error would leave it below."""
    net = _ConvConv(0, 4, 3).eval()
    with torch.no_grad():
        net.c1.bias.copy_(torch.tensor([1 / 3, -1e4 / 7, 2 / 7, 0.1]))
        net.c1.weight.mul_(7.3)
        net.c1.weight[1].mul_(1e-4)  # filter 1: its sums rounded at |b| ~ 1e3, far above |W| x
    g = trace(net, input_shape=(1, 7, 7))
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(8, 49, generator=gen) * 3
    x[0] = 0.0  # bias only: the bound is g |b| (+ allowance)
    x[1] = 1 / 3  # constant rows: every window's input term is its maximum
    x[2, ::2] = 1e-20  # tiny inputs: the allowance's rows
    convs = [n.index for n in g.nodes if n.op == "affine"][:2]
    exact = [_rational_values(net, x[r].tolist()) for r in range(len(x))]
    for kernels in (True, False):  # (the row maxima from the compiled passes, or from torch's)
        seen = _spy_bounds(g, x, kernels)
        assert all(seen[i][2] is _Outer for i in convs)
        worst = [Fraction(0)] * 2
        for r in range(len(x)):
            for c, (i, ex) in enumerate(zip(convs, exact[r])):
                y, bound = seen[i][0][r], seen[i][1][r]
                for j, v in enumerate(ex):
                    err, bd = abs(Fraction(float(y[j])) - v), Fraction(float(bound[j]))
                    assert err <= bd, (kernels, r, c, j)
                    if bd > 0:
                        worst[c] = max(worst[c], err / bd)
        # (not vacuous: the bound is within a modest factor of an actual error on both layers)
        assert worst[0] > Fraction(1, 50) and worst[1] > Fraction(1, 2000), [float(w) for w in worst]


# ------------------------------------------------------------------------------ patterns near boundaries
class _ConvPoolConv(nn.Module):
    """conv -> relu -> max-pool -> conv -> conv (no relu between the last two: a crude bound read by a
    convolution) -> relu."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 4, 2, stride=1)
        self.c3 = nn.Conv2d(4, 2, 2)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.c1(x)), 2)
        return F.relu(self.c3(self.c2(h))).flatten(1)


def _near(g, n_in, seed, n_seg, scale=2.0):
    gen = torch.Generator().manual_seed(seed)

    def end():
        return torch.rand(n_in, generator=gen, dtype=torch.float64) * scale

    pts = boundary_points(g, lambda: (end(), end()), n_seg)
    assert pts
    return torch.stack(pts + [end() for _ in range(6)])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("net_kind", ["convconv", "poolconv"])
def test_crude_float32_near_boundaries_equals_rationals(net_kind, seed, monkeypatch):
    """The crude float32 engine (forced) on inputs within float64 precision of a pattern boundary, kernels
    on or off, in one row block or many: the patterns of rational arithmetic; and the float32 pass decides
    most rows itself (the crude bound is what decided them)."""
    if net_kind == "convconv":
        net, shape = _ConvConv(seed).eval(), (1, 7, 7)
        X = _near_boundary(net, seed).float()
    else:
        net, shape = _ConvPoolConv(seed).eval(), (2, 8, 8)
        X = _near(trace(net, input_shape=shape), 128, seed, 4).float()
    g = trace(net, input_shape=shape)
    X = X.reshape(len(X), -1)
    ref = exact_pattern_rows(g, X)
    from netgeom.nets import _graph_kernel

    for kernels, blocks, full in (
        (True, 1 << 22, False),
        (True, 384, False),
        (False, 1 << 22, False),
        (True, 384, True),
    ):
        engines = {"crude32": True}
        for key, d, crude in (
            ((torch.float32, "crude"), torch.float32, True),
            ((torch.float64, "crude"), torch.float64, True),
            (torch.float64, torch.float64, False),
        ):
            engines[key] = certified._Engine(g, d, "cpu", crude=crude)
            engines[key].kernels = kernels
        with monkeypatch.context() as m:
            m.setattr(certified, "_CHUNK_BYTES", blocks)
            if full:  # as when a block's ambiguous pairs overflow their arrays: the engine finds them
                m.setattr(_graph_kernel, "_give_pairs", lambda p, sink: sink.append(None))
            dec, st = graph_patterns(g, X, _engines=engines)
        got = np.concatenate([dec[n.index].numpy() for n in pattern_nodes(g)], 1)
        assert np.array_equal(got, ref), (kernels, blocks)
        assert torch.float32 not in engines  # the full float32 engine never ran
        assert st["float64"] < len(X)


def test_the_choice_of_bounds_changes_no_count():
    """count_patterns keeps the crude / windowed bounds on a small conv net and on conv 3-32-64 on 3x32x32
    images, as in bench_patterns (few rows left to float64 since the redo through both convolutions): the
    same patterns as the full bounds alone in both cases."""
    small = _ConvConv(0).eval()
    X = torch.rand(600, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    wide = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(), nn.Flatten()
    ).eval()
    Xw = torch.rand(400, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for net, data, shape, crude in ((small, X, (1, 7, 7), True), (wide, Xw, (3, 32, 32), True)):
        g = trace(net, input_shape=shape)
        flat = data.reshape(len(data), -1)
        engines: dict = {}
        dec, _ = graph_patterns(g, flat, _engines=engines)
        assert engines["crude32"] is crude
        full, _ = graph_patterns(g, flat, _engines={"crude32": False})
        for i in dec:
            assert torch.equal(dec[i], full[i])
        res = count_patterns(net, data, input_shape=shape)
        assert res.n_samples == len(data)


def test_crude_bound_covers_gradual_underflow():
    """Products below float32's smallest normal number lose up to half its smallest subnormal each, outside
    the relative model: the underflow allowance of rows with a nonzero input covers them (weights ~1e-10 on
    inputs ~1e-30: products ~1e-40, where ``g max|x| ||W||_1`` is below the smallest subnormal)."""
    net = _ConvConv(1, 4, 3).eval()
    with torch.no_grad():
        net.c1.weight.mul_(1e-10)
        net.c1.bias.zero_()
    g = trace(net, input_shape=(1, 7, 7))
    x = torch.rand(6, 49, generator=torch.Generator().manual_seed(2)) * 1e-30
    conv1 = [n.index for n in g.nodes if n.op == "affine"][0]
    for kernels in (True, False):
        y, bound, _ = _spy_bounds(g, x, kernels)[conv1]
        hit = 0
        for r in range(len(x)):
            ex = _rational_values(net, x[r].tolist())[0]
            for j, v in enumerate(ex):
                err = abs(Fraction(float(y[r, j])) - v)
                assert err <= Fraction(float(bound[r, j])), (kernels, r, j)
                hit += err > 0
        assert hit > 0  # (the underflow did round)


def test_ambiguous_pairs_past_the_capacity_are_left_to_the_caller():
    """More ambiguous entries than the pair arrays hold: no pairs handed out (None), the rows still are."""
    B, N = 3, 2000
    z = torch.zeros(B, N)
    d = torch.full((B, N), 1e-3)
    pairs: list = []
    _, und, _, _ = relu_fused(z, d, 1.0, 0.0, 0, pairs=pairs)
    assert pairs == [None] and bool(und.all())
