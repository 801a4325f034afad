"""The float32 graph engine's float64 redo through a max-pool (LeNet-5's shape: conv -> relu -> max-pool ->
conv -> relu -> max-pool -> linear): units of the second convolution recomputed from the exact input through
the first convolution, the ReLU and the pool (``netgeom.nets._graph_kernel.refine_pairs_pool``,
``certified._Engine._deep_pairs``). Each redone value within its bound of the rational one (ties in the pool
windows included), the bound ~1e-16 of the terms; removing an error term (the pooled entries' error, the
first convolution's rounding) leaves some value outside it; patterns on inputs near pattern
boundaries and with tied windows equal rational ones on every engine, with fewer rows left to the float64
pass than without the redo."""

import inspect
import textwrap
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _boundary import boundary_points
from _engines import engines as all_engines
from _engines import exact_pattern_rows
from test_convpat2_window import _rational
from torch import nn

from netgeom import trace
from netgeom.nets import _graph_kernel, certified
from netgeom.nets.certified import graph_patterns, pattern_nodes


class _PoolNet(nn.Module):
    """conv 2->3 (3x3, padding 1) -> relu -> max-pool 2 (padding ``pad``) -> conv 3->2 (2x2) -> relu ->
    max-pool 2 (stride 1) -> linear -> relu, on 2x8x8 inputs."""

    def __init__(self, seed: int, pad: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(2, 3, 3, padding=1)
        self.p1 = nn.MaxPool2d(2, padding=pad)
        self.c2 = nn.Conv2d(3, 2, 2)
        self.fc = nn.Linear(2 * (2 + pad) ** 2, 3)  # (8x8 -> 8x8 -> 4x4 or 5x5 -> 3x3 or 4x4 -> 2x2 or 3x3)

    def forward(self, x):
        x = self.p1(F.relu(self.c1(x)))
        x = F.max_pool2d(F.relu(self.c2(x)), 2, stride=1)
        return F.relu(self.fc(x.flatten(1)))


SHAPE = (2, 8, 8)


def _net(seed: int, pad: int = 0):
    """The traced net with the first convolution's filters 1 and 2 reading channel 1 with the weights of
    channel 0 times ``-(1 + 2^-20)`` (exactly, in float64: not a float32 number) and zero biases: on inputs
    with equal channels their outputs are ~1e-6 of their terms, while float32 errs by ~1e-7 of them, so the
    error carried into the second convolution dwarfs that convolution's own rounding."""
    net = _PoolNet(seed, pad).eval()
    with torch.no_grad():
        net.c1.bias.zero_()
        net.c2.bias.mul_(1e-6)  # (about the cancelling outputs: the signs depend on them)
    g = trace(net, input_shape=SHAPE)
    a = [n for n in g.nodes if n.op == "affine"][0]
    w = a._ops[0].params["weight"]
    w[1:, 1] = -w[1:, 0] * (1 + 2.0**-20)
    a._matrix = a._bias = None
    a._ops[0]._cache.clear()
    return g


def _inputs(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=gen).expand(n, 2, 8, 8).clone()  # equal channels: cancellation
    x[0] = 0.0  # biases only: all windows tied at the first convolution
    x[1] = 0.375  # a constant image: interior windows tied exactly
    x[2, :, :4] = 0.5  # half constant
    x[3, 0] = torch.rand(8, 8, generator=gen)  # unequal channels: large first-layer outputs
    return x.reshape(n, -1)




def _mutated(old: str, new: str):
    """``_refine_pairs_pool`` in pure Python with one line of its source, or of the first-level helper it
    calls, replaced (a mutation)."""
    ns = dict(vars(_graph_kernel))
    hits = 0
    for name in ("_relu_from_input", "_unit_weights", "_refine_pairs_pool"):
        src = textwrap.dedent(inspect.getsource(getattr(_graph_kernel, name).py_func))
        src = src[src.index("def ") :]  # (without the decorator)
        hits += old in src
        exec(src.replace(old, new), ns)  # (pure Python, calling the other pure-Python ones)
    assert hits == 1
    return ns["_refine_pairs_pool"]


def _violations(z, b, exact) -> int:
    return sum(abs(Fraction(float(z[k])) - exact[k]) > Fraction(float(b[k])) for k in range(len(z)))


@pytest.mark.parametrize("pad", [0, 1])
def test_pool_redo_against_rationals_and_each_error_term_is_needed(pad, monkeypatch):
    g = _net(0, pad)
    x = _inputs(8, pad)
    c1, c2 = [n.index for n in g.nodes if n.op == "affine"][:2]
    pool = g.nodes[g.nodes[c2].inputs[0]]
    assert pool.op == "maxpool" and bool((pool.windows < 0).any()) == (pad == 1)
    eng = certified._Engine(g, torch.float32, "cpu")
    assert eng._deep(c2)[:2] == (c1, 0)
    B, N = len(x), g.nodes[c2].size
    rows, units = torch.arange(B).repeat_interleave(N), torch.arange(N).repeat(B)
    lvl2, lvl1 = eng.refine[c2](), eng.refine[c1]()
    ex = [_rational(g, x[r].double()) for r in range(B)]
    exact = [ex[int(r)][c2][int(u)] for r, u in zip(rows, units)]
    z, b = _graph_kernel.refine_pairs_pool(x, rows, units, lvl2, pool.windows, lvl1, certified._SAFETY)
    assert _violations(z, b, exact) == 0
    assert float(b.max()) < 1e-12 * (1 + float(z.abs().max()))  # float64-tight
    for k in range(len(z)):  # every sign decided (no exact zeros here), as the rationals
        assert abs(float(z[k])) > float(b[k]) and (z[k] > 0) == (exact[k] > 0), k
    # ... the rows in reverse order (the kernel's per-row cache of pooled entries) give the same numbers
    flip = torch.arange(len(rows) - 1, -1, -1)
    z_r, b_r = _graph_kernel.refine_pairs_pool(
        x, rows[flip], units[flip], lvl2, pool.windows, lvl1, certified._SAFETY
    )
    assert torch.equal(z_r, z[flip]) and torch.equal(b_r, b[flip])
    mutations = {
        # the pooled entry's error: the first convolution's rounding carried through the pool dropped
        "pool error": _mutated("if es != es or es > e:", "if False:"),
        # the first convolution's own rounding
        "level 1": _mutated("e1 = (g1 * (sx1 + absb1[c])", "e1 = (0.0 * (sx1 + absb1[c])"),
    }
    # (the second convolution's own rounding term is _refine_pairs2's, tested with it; here the first
    # one's carried bound, ~K u of its terms, always covers it)
    for name, fn in mutations.items():
        monkeypatch.setattr(_graph_kernel, "_refine_pairs_pool", fn)
        zm, bm = _graph_kernel.refine_pairs_pool(x, rows, units, lvl2, pool.windows, lvl1, certified._SAFETY)
        assert torch.equal(zm, z), name  # (the values are the kernel's)
        assert _violations(zm, bm, exact) > 0, name




def _patterns(g, X, kernels: bool):
    dec, st = graph_patterns(g, X, _engines=all_engines(g, kernels))
    return np.concatenate([dec[n.index].numpy().reshape(len(X), -1) for n in pattern_nodes(g)], 1), st


@pytest.mark.parametrize("seed", [0, 1])
def test_patterns_near_boundaries_and_ties_equal_rationals(seed, monkeypatch):
    """Every engine, kernels on or off, on cancelling inputs (tied windows among them) and inputs within
    float64 precision of a pattern boundary: the rational patterns; with the kernels (the redo through the
    pool) fewer rows go to the float64 pass than without that redo, and it is used."""
    g = _net(seed, pad=seed)
    gen = torch.Generator().manual_seed(seed)

    def end():
        return torch.rand(1, 8, 8, generator=gen, dtype=torch.float64).expand(2, 8, 8).reshape(-1) * 2

    pts = boundary_points(g, lambda: (end(), end()), 4)
    X = torch.cat([torch.stack(pts).float(), _inputs(16, seed + 7)])
    ref = exact_pattern_rows(g, X)
    calls = {"relu": 0, "window": 0}
    where = ["relu"]
    orig, orig_win = _graph_kernel.refine_pairs_pool, certified._Engine._refine_windows

    def spy(*a, **k):
        calls[where[-1]] += len(a[1])
        return orig(*a, **k)

    def spy_win(self, *a):
        where.append("window")
        try:
            return orig_win(self, *a)
        finally:
            where.pop()

    monkeypatch.setattr(_graph_kernel, "refine_pairs_pool", spy)
    monkeypatch.setattr(certified._Engine, "_refine_windows", spy_win)
    got, st = _patterns(g, X, kernels=True)
    assert np.array_equal(got, ref)
    assert calls["relu"] > 0 and calls["window"] > 0, calls  # (both paths: the unit's relu, the pool after)
    got, st_torch = _patterns(g, X, kernels=False)
    assert np.array_equal(got, ref)
    with monkeypatch.context() as m:
        m.setattr(certified._Engine, "_deep_pairs", lambda self, *a: None)
        got, st_off = _patterns(g, X, kernels=True)
    assert np.array_equal(got, ref)
    assert st["float64"] < st_off["float64"], (st, st_off)


# ------------------------------------------------------------------------------ the convolution in halves
def test_convolution_in_halves_bound_against_rationals():
    """The full float32 engine computes a Conv2d of several input channels on a computed input as two half
    convolutions and bounds its rounding by ``gamma_{K_A + 3}`` (``K_A`` the larger half's fan-in,
    ``_Engine._halves``) instead of ``gamma_{K + 2}``: the bound holds against rationals on ``relu`` of a
    signed exact input (no carried error: the convolution's own rounding is all there is), is not vacuous,
    and without its rounding term (``g`` / 1000) some error is above it. A convolution reading the graph's
    input is left whole."""
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 3, 3, padding=1)
    g = trace(nn.Sequential(nn.ReLU(), conv, nn.ReLU()), input_shape=(4, 6, 6))
    whole = certified._Engine(trace(nn.Sequential(conv), input_shape=(4, 6, 6)), torch.float32, "cpu")
    assert "split" not in whole.ops[1][0]
    c = [n.index for n in g.nodes if n.op == "affine"][0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4 * 36, generator=gen) * torch.logspace(-3, 3, 6)[:, None]
    exact = [_rational(g, x[r].double())[c] for r in range(len(x))]
    assert g.nodes[c].inputs[0] != 0

    def run(scale=1.0):
        eng = certified._Engine(g, torch.float32, "cpu")
        info = eng.ops[c][0]
        assert "split" in info and info["g"] < 0.6 * info["g_bound"]  # (gamma_21 against gamma_38)
        info["g"] *= scale
        info["bound_p"]["bias"] *= scale
        seen = {}
        orig = eng.affine

        def spy(node, xin, err, *, need_err):
            y, e = orig(node, xin, err, need_err=need_err)
            seen[node.index] = (y.clone(), e.elem().clone())
            return y, e

        eng.affine = spy
        eng.run(x, True, {n.index for n in g.nodes if n.op != "output"})
        y, bound = seen[c]
        bad, worst = 0, 0.0
        for r in range(len(x)):
            for j, v in enumerate(exact[r]):
                err, bd = abs(Fraction(float(y[r, j])) - v), Fraction(float(bound[r, j]))
                bad += err > bd
                worst = max(worst, float(err / bd)) if bd > 0 else worst
        return bad, worst

    bad, worst = run()
    assert bad == 0 and worst > 1e-3, worst
    bad, _ = run(1e-3)
    assert bad > 0
