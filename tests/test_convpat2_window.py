"""The float32 graph engine's windowed Cauchy-Schwarz bound of a Conv2d (netgeom.nets.certified._window_bound:
``||W_f||_2`` times the window's ``||e + g |x^|||_2``, plus ``g |b_f|`` and the underflow allowance) and the
float64 redo through two affine nodes from the exact input (``_Engine._redo``,
``_graph_kernel.refine_pairs2``): window norms against exact rationals and an independent convolution; the
bound above the exact error of every pre-activation (kernels on and off) on a strided, padded, dilated net,
with each of its terms shown necessary (dropping it leaves some error above the bound); the two-level redo
against rationals where the one-level one cannot decide; patterns near boundaries equal to rational ones."""

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _boundary import boundary_points
from _engines import exact_pattern_rows
from torch import nn

from netgeom import count_patterns, trace
from netgeom.nets import _graph_kernel, certified
from netgeom.nets.certified import _Exact, _Outer, graph_patterns, pattern_nodes


@pytest.fixture(autouse=True)
def _windowed_everywhere(monkeypatch):
    """The windowed bound for every Conv2d of these small nets (by default only from fan-in 128 on)."""
    monkeypatch.setattr(certified, "_CS_MIN_FAN_IN", 0)


class _Net(nn.Module):
    """conv 2->3 (3x3, stride 2, padding 1) -> relu -> conv 3->2 (2x2, padding 1, dilation 2) -> relu, on
    2x7x7 inputs: 3x4x4 then 2x4x4."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(3, 2, 2, padding=1, dilation=2)

    def forward(self, x):
        return F.relu(self.c2(F.relu(self.c1(x)))).flatten(1)


SHAPE = (2, 7, 7)


def _cancelling(seed: int) -> _Net:
    """Filter 0 of the first convolution is zero (exact zero outputs); filters 1 and 2 read channel 1 with
    the weights of channel 0 times ``-(1 + 2^-20)``, so on inputs whose two channels are equal their exact
    outputs are ~1e-6 of their terms while float32 (weights rounded, products and sums rounded) errs by
    ~1e-7 of them: the error carried into the second convolution dwarfs that convolution's own rounding."""
    net = _Net(seed).eval()
    with torch.no_grad():
        w = net.c1.weight.double()
        w[0] = 0.0
        w[1:, 1] = -w[1:, 0] * (1 + 2.0**-20)
        net.c1.weight.copy_(w.float())
        net.c1.bias.zero_()
        net.c2.bias.copy_(torch.tensor([1 / 3, -2 / 7]) * 1e-4)  # (small: the carried errors dominate)
    return net


def _graph64(net):
    """The traced graph with the first convolution's weights given exactly in float64 (``-(1 + 2^-20) w``
    is not a float32 number, nor are the second convolution's biases 1e-4 / 3 and -2e-4 / 7): the exact map
    whose float32 evaluation the engine bounds."""
    g = trace(net, input_shape=SHAPE)
    a, c = [n for n in g.nodes if n.op == "affine"]
    w = a._ops[0].params["weight"]
    w[1:, 1] = -w[1:, 0] * (1 + 2.0**-20)
    c._ops[0].params["bias"].copy_(torch.tensor([1 / 3, -2 / 7], dtype=torch.float64) * 1e-4)  # (not float32)
    for n in (a, c):
        n._matrix = n._bias = None
        n._ops[0]._cache.clear()
    return g


def _rational(g, x: torch.Tensor) -> dict[int, list[Fraction]]:
    """Every node's values on ``x`` (one flat float64 row) in exact rational arithmetic on the dense
    float64 maps (max-pool windows too)."""
    vals = {0: [Fraction(float(v)) for v in x.tolist()]}
    for node in g.nodes[1:]:
        if node.op == "output":
            continue
        xin = vals[node.inputs[0]]
        if node.op == "affine":
            M, b = node.matrix().tolist(), node.bias_vector.tolist()
            nz = [(j, a) for j, a in enumerate(xin) if a != 0]
            v = [
                Fraction(bi) + sum((Fraction(row[j]) * a for j, a in nz if row[j] != 0), Fraction(0))
                for row, bi in zip(M, b)
            ]
        elif node.op == "relu":
            v = [max(a, Fraction(0)) for a in xin]
        else:  # maxpool
            v = [max(xin[i] for i in w if i >= 0) for w in node.windows.tolist()]
        vals[node.index] = v
    return vals


def _inputs(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 7, 7, generator=gen).expand(n, 2, 7, 7).clone()  # equal channels: cancellation
    x[0] = 0.0  # biases only
    x[1, 0] = torch.rand(7, 7, generator=gen)  # unequal channels: large first-layer outputs
    return x.reshape(n, -1)


# ------------------------------------------------------------------------------ window norms
def _window_ref(x: torch.Tensor, C: int, H: int, W: int, conv: nn.Conv2d) -> torch.Tensor:
    """Per output position, the sum of squares over the window of every channel, by a convolution of the
    channels' summed squares with a ones kernel (float64, the convolution's own geometry)."""
    sq = (x.double().reshape(len(x), C, H, W) ** 2).sum(1, keepdim=True)
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=torch.float64)
    return F.conv2d(sq, ones, None, conv.stride, conv.padding, conv.dilation).flatten(1)


@pytest.mark.parametrize("geometry", [(3, 2, 1, 1), (2, 1, 1, 2), (3, 3, 2, 1)])
def test_window_norms_bound_the_window_two_norms_exactly(geometry):
    k, stride, pad, dil = geometry
    conv = nn.Conv2d(3, 4, k, stride=stride, padding=pad, dilation=dil)
    g = trace(nn.Sequential(conv, nn.ReLU()), input_shape=(3, 9, 8))
    op = [n for n in g.nodes if n.op == "affine"][0]._ops[0]
    C, HW, win = certified._window_table(op)
    assert (C, HW) == (3, 72) and win.shape[0] == op.out_shape[1] * op.out_shape[2]
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(9, 3 * 72, generator=gen) * torch.logspace(-30, 30, 9)[:, None]
    x[2] = 0.0
    x[3, ::5] = 0.0
    x[4] = torch.randn(216, generator=gen) * 1e-44  # subnormal entries and results
    ref = _window_ref(x, 3, 9, 8, conv)
    for scale in (1.0, 3e-7 * 1.001):
        for fn in (_graph_kernel.window_norms, certified._window_norms_torch):
            R, nz = fn(x, C, HW, win, scale)
            assert R.dtype == torch.float32 and R.shape == ref.shape
            assert torch.equal(nz, (x != 0).any(1))
            for r in range(len(x)):
                for p in range(R.shape[1]):
                    # R >= scale ||x_w||, exactly: R^2 >= scale^2 sum x^2 (rationals)
                    s = sum(
                        Fraction(float(x[r, c * HW + i])) ** 2
                        for c in range(C)
                        for i in win[p].tolist()
                        if i >= 0
                    )
                    assert Fraction(float(R[r, p])) ** 2 >= Fraction(scale) ** 2 * s, (fn, r, p)
            tight = scale * ref.sqrt() * (1 + 1e-6) + 2.0**-149
            assert bool((R.double() <= tight).all())  # not loose: within float32 rounding of the value
    # a NaN entry makes its row's windows NaN (undecided downstream), and the row counts as nonzero
    x[5, 0] = float("nan")
    R, nz = _graph_kernel.window_norms(x, C, HW, win, 1.0)
    assert bool(nz[5]) and bool(R[5].isnan().any())


# ------------------------------------------------------------------------------ the bound against rationals
def _spy(g, x, kernels: bool, mutate=None):
    """Both convolutions' float32 values and materialised windowed bounds in one run of the float32
    windowed engine; ``mutate(engine)`` alters it first."""
    eng = certified._Engine(g, torch.float32, "cpu", crude=True)
    eng.kernels = kernels
    assert eng.cs
    if mutate is not None:
        mutate(eng)
    seen = {}
    orig = eng.affine

    def spy(node, xin, err, *, need_err):
        y, e = orig(node, xin, err, need_err=need_err)
        seen[node.index] = (y.clone(), e.elem().clone(), type(e))
        return y, e

    eng.affine = spy
    eng.run(x, True, {n.index for n in g.nodes if n.op != "output"})
    return seen


def _violations(g, x, exact, seen) -> tuple[list[int], list[float]]:
    """Per convolution: entries whose exact error exceeds the bound, and the largest error / bound."""
    convs = [n.index for n in g.nodes if n.op == "affine"]
    bad, worst = [0] * len(convs), [0.0] * len(convs)
    for c, i in enumerate(convs):
        y, bound, _ = seen[i]
        for r in range(len(x)):
            for j, v in enumerate(exact[r][i]):
                err, bd = abs(Fraction(float(y[r, j])) - v), Fraction(float(bound[r, j]))
                bad[c] += err > bd
                if bd > 0:
                    worst[c] = max(worst[c], float(err / bd))
    return bad, worst


def _drop_carried(monkeypatch):
    """The mutation "no carried error": the second convolution's windows of ``g |x^|`` only."""
    orig = certified._window_bound

    def bound(err, flat, info, kernels=True):
        if not isinstance(err, _Exact):
            err = certified._Elem(torch.zeros_like(flat))
        return orig(err, flat, info, kernels)

    monkeypatch.setattr(certified, "_window_bound", bound)


def _conv_info(eng, k):
    return eng.ops[[n.index for n in eng.g.nodes if n.op == "affine"][k]][0]


MUTATIONS = {
    # g |b_f|: rows of zeros, where the second convolution's only error is its bias's rounding
    "bias": lambda eng: [_conv_info(eng, k)["absbias"].zero_() for k in (0, 1)],
    # ||W_f||_2 ||g x_w||_2 of the first convolution (its own rounding on an exact input)
    "input": lambda eng: _conv_info(eng, 0)["cs"][3].zero_(),
    # the window over one channel only: the second convolution's errors come from channels 1 and 2
    "channels": lambda eng: _conv_info(eng, 1).__setitem__("cs", (1, *_conv_info(eng, 1)["cs"][1:])),
}


@pytest.mark.parametrize("kernels", [True, False])
def test_windowed_bound_holds_against_rationals_and_each_term_is_needed(kernels, monkeypatch):
    net = _cancelling(0)
    g = _graph64(net)
    x = _inputs(6, 1)
    exact = [_rational(g, x[r].double()) for r in range(len(x))]
    seen = _spy(g, x, kernels)
    assert all(seen[i][2] is _Outer for i in seen)
    bad, worst = _violations(g, x, exact, seen)
    assert bad == [0, 0]
    assert worst[0] > 1e-3 and worst[1] > 1e-3, worst  # (not vacuous)
    for name, mutate in MUTATIONS.items():
        bad, _ = _violations(g, x, exact, _spy(g, x, kernels, mutate))
        assert sum(bad) > 0, name
    with monkeypatch.context() as m:
        _drop_carried(m)
        if kernels:  # (the ReLU's compiled pass hands the windows over: the mutation needs the torch path)
            m.setattr(certified._Engine, "_plan", _plan_without_windows)
        bad, _ = _violations(g, x, exact, _spy(g, x, kernels))
        assert bad[1] > 0, "carried"


_PLAN = certified._Engine._plan


def _plan_without_windows(self, keep):
    pattern, last_use, fused, modes, _ = _PLAN(self, keep)
    return pattern, last_use, fused, {i: (1, 0.0) if m == 3 else (m, gn) for i, (m, gn) in modes.items()}, {}


@pytest.mark.parametrize("kernels", [True, False])
def test_windowed_bound_covers_gradual_underflow(kernels):
    """Products below float32's smallest normal number (weights ~1e-10 on inputs ~1e-30) lose up to half its
    smallest subnormal each, outside the relative model: the allowance covers them, and without it some
    error is above the bound."""
    net = _Net(3).eval()
    with torch.no_grad():
        net.c1.weight.mul_(1e-10)
        net.c1.bias.zero_()
    g = trace(net, input_shape=SHAPE)
    x = torch.rand(5, 98, generator=torch.Generator().manual_seed(2)) * 1e-30
    exact = [_rational(g, x[r].double()) for r in range(len(x))]
    bad, _ = _violations(g, x, exact, _spy(g, x, kernels))
    assert bad[0] == 0
    drop = lambda eng: _conv_info(eng, 0)["under_vec"].zero_()  # noqa: E731
    bad, _ = _violations(g, x, exact, _spy(g, x, kernels, drop))
    assert bad[0] > 0


# ------------------------------------------------------------------------------ the two-level redo
def test_two_level_redo_against_rationals():
    """Units of the second convolution on the cancelling net, recomputed through both convolutions from the
    exact input: every one within its bound of the rational value, the bound ~1e-16 of the terms, all
    decided with the rational sign, also where the redo from the float32 input cannot decide any."""
    net = _cancelling(1)
    g = _graph64(net)
    x = _inputs(8, 4)
    c1, c2 = [n.index for n in g.nodes if n.op == "affine"]
    eng = certified._Engine(g, torch.float32, "cpu", crude=True)
    vals, errs = {}, {}
    orig = eng.affine

    def spy(node, xin, err, *, need_err):
        y, e = orig(node, xin, err, need_err=need_err)
        vals[node.index], errs[node.index] = y, e
        return y, e

    eng.affine = spy
    keep = {n.index for n in g.nodes if n.op != "output"}
    eng.run(x, True, keep)
    relu1 = g.nodes[c2].inputs[0]
    B, N = len(x), g.nodes[c2].size
    rows = torch.arange(B).repeat_interleave(N)
    units = torch.arange(N).repeat(B)
    v1 = torch.relu(vals[c1])
    # the float32 input's error as carried in, made far wider than the engine's (a deeper net's): the
    # redo from the float32 input then decides nothing
    e1 = certified._Elem(certified._ReluErr(vals[c1], errs[c1]).elem() * 1e6 + 1e-3)
    z_one, b_one = eng._refine(c2, v1, e1, rows, units)
    assert not bool(((z_one.abs() > b_one) | (b_one == 0)).any())
    lvl2, lvl1 = eng.refine[c2](), eng.refine[c1]()
    z2, b2 = _graph_kernel.refine_pairs2(x, rows, units, lvl2, lvl1, g.nodes[c1].size, certified._SAFETY)
    exact = [_rational(g, x[r].double()) for r in range(B)]
    n_dec = 0
    for k in range(len(rows)):
        ex = exact[int(rows[k])][c2][int(units[k])]
        err = abs(Fraction(float(z2[k])) - ex)
        assert err <= Fraction(float(b2[k])), k
        assert float(b2[k]) < 1e-12
        if abs(float(z2[k])) > float(b2[k]):
            n_dec += 1
            assert (z2[k] > 0) == (ex > 0)
    assert n_dec == len(rows)  # (no exact ties here)
    # the engine's redo: one level, then two for what is left open: all decided, with the rational signs
    z, ok = eng._redo(c2, {0: x, relu1: v1}, {0: _Exact(x), relu1: e1}, rows, units)
    assert bool(ok.all())
    assert torch.equal(z > 0, torch.tensor([e > 0 for r in range(B) for e in exact[r][c2]]))
    # ... but not from an inexact input (the network's input given in float64): those stay open
    z, ok = eng._redo(c2, {0: x, relu1: v1}, {0: certified._Elem(x.abs()), relu1: e1}, rows, units)
    assert not bool(ok.any())


# ------------------------------------------------------------------------------ patterns
@pytest.mark.parametrize("seed", [0, 1])
def test_windowed_engine_near_boundaries_equals_rationals(seed, monkeypatch):
    """The windowed float32 engine with the two-level redo, kernels on or off, in one block or several, on
    inputs within float64 precision of a pattern boundary: the patterns of rational arithmetic, with (kernels
    on) almost no row left to the float64 pass."""
    net = _Net(seed).eval()
    g = trace(net, input_shape=SHAPE)
    gen = torch.Generator().manual_seed(seed)

    def end():
        return torch.rand(98, generator=gen, dtype=torch.float64) * 2

    pts = boundary_points(g, lambda: (end(), end()), 5)
    X = torch.stack(pts + [end() for _ in range(6)]).float()
    ref = exact_pattern_rows(g, X)
    for kernels, blocks in ((True, 1 << 22), (True, 600), (False, 1 << 22)):
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
            dec, st = graph_patterns(g, X, _engines=engines)
        got = np.concatenate([dec[n.index].numpy() for n in pattern_nodes(g)], 1)
        assert np.array_equal(got, ref), (kernels, blocks)
        assert st["float64"] <= len(X) // 2


def test_bench_shaped_net_counts_equal_the_full_bounds_without_float64_rows():
    """conv 3-32-64 (3x3, stride 2) on 3x32x32 images, as bench_patterns: the windowed engine (chosen by
    the trial) gives the patterns of the full float32 bounds, and its two-level redo leaves no row to the
    float64 pass (17% of them went there before)."""
    torch.manual_seed(0)
    wide = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(), nn.Flatten()
    ).eval()
    X = torch.rand(300, 3 * 32 * 32, generator=torch.Generator().manual_seed(5))
    g = trace(wide, input_shape=(3, 32, 32))
    engines: dict = {}
    dec, st = graph_patterns(g, X, _engines=engines)
    assert engines["crude32"] is True and st["float64"] == 0
    full, st_full = graph_patterns(g, X, _engines={"crude32": False})
    for i in dec:
        assert torch.equal(dec[i], full[i])
    res = count_patterns(wide, X.reshape(-1, 3, 32, 32), verbose=False)
    assert res.n_float64 == 0 and res.n_samples == 300
