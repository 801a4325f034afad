"""count_patterns at extreme scales: rescalings that leave every ReLU sign unchanged must change no pattern
and must not send the rows to rational arithmetic; parameters float32 cannot carry must not give wrong
signs."""

import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import count_patterns, mlp, trace
from netgeom.nets.certified import (
    _homogeneous_rows,
    _spectral_bound,
    chain_decide,
    chain_patterns,
    chain_plan,
    graph_patterns,
)


def _exact_signs(net: nn.Sequential, x: torch.Tensor) -> list[list[bool]]:
    """Every ReLU sign of one input, in rational arithmetic on the network's float64 parameters."""
    h = [Fraction(float(v)) for v in x.tolist()]
    signs = []
    for mod in net:
        if isinstance(mod, nn.Linear):
            W = [[Fraction(float(w)) for w in row] for row in mod.weight.double().tolist()]
            b = [Fraction(float(v)) for v in mod.bias.double().tolist()]
            h = [sum((w * a for w, a in zip(row, h)), Fraction(0)) + bj for row, bj in zip(W, b)]
        else:
            signs.append([v > 0 for v in h])
            h = [max(v, Fraction(0)) for v in h]
    return signs


def _subnormal_net() -> nn.Sequential:
    # w1 = 1.4 * 2^-148 rounds to 1.5 * 2^-148 in float32 (a subnormal with spacing 2^-149): 4% off
    net = nn.Sequential(nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.4 * 2.0**-148, -(2.0**-148)]], dtype=torch.float64))
        net[0].bias.zero_()
        net[2].weight.fill_(1.0)
        net[2].bias.fill_(-0.5)
    return net


def test_weights_below_float32s_normal_range_never_give_a_wrong_sign():
    # exactly z = 2^-88 (1.4 - 1.45) < 0; with float32's copy of w1, 2^-88 (1.5 - 1.45) > 0. The float32
    # bound charges the cast of w1 relatively (u32 |w1|), far below the 2^-150 it lost, and used to decide
    # the wrong sign (chain path at m = 0 and the float32 graph engine alike)
    net = _subnormal_net()
    x = torch.tensor([[2.0**60, 1.45 * 2.0**60]], dtype=torch.float32)
    ref = _exact_signs(net, x[0])
    assert ref == [[False], [False]]
    g = trace(net)
    plan = chain_plan(g, "cpu")
    for m in (0, 1, 2):
        dec, _ = chain_decide(g, plan, x, m)
        assert [dec[i][0].tolist() for i in sorted(dec)] == ref, m
    dec, stats = graph_patterns(g, x, dtype=torch.float32)
    assert [dec[i][0].tolist() for i in sorted(dec)] == ref
    assert stats["float64"] == 1  # the float32 engine is not used for these parameters
    _, redo, _, _ = chain_patterns(plan, x, 0, 0)
    assert redo.all()  # a float32 first layer cannot certify them: the rows are redone
    assert count_patterns(net, x).patterns.tolist() == [[0]]


def _mlp(bias: bool) -> nn.Sequential:
    net = mlp(784, [100, 100], 2, seed=0).double()
    if not bias:
        with torch.no_grad():
            for mod in net:
                if isinstance(mod, nn.Linear):
                    mod.bias.zero_()
    return net


def _must(ok: bool) -> None:
    assert ok


def _scaled(net: nn.Sequential, kind: str, e: int, check=_must) -> nn.Sequential:
    """``"first"``: W1 -> 2^-e W1 (the input is to be scaled by 2^e); ``"middle"``: (W2, b2) -> 2^e (W2, b2)
    and W3 -> 2^-e W3 (relu(c z) = c relu(z) for c > 0). Either leaves every pre-activation's sign as it
    was, as long as the powers of two are exact (checked: scaling back gives the parameters again)."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        if kind == "first":
            scale = {"0.weight": -e}
        else:
            scale = {"2.weight": e, "2.bias": e, "4.weight": -e}
        params = dict(out.named_parameters())
        for name, k in scale.items():
            params[name].mul_(2.0**k)
            check(torch.equal(params[name] * 2.0**-k, dict(net.named_parameters())[name]))
    return out


_X = torch.rand(100, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def refs():
    return {bias: count_patterns(_mlp(bias), _X, precision="float64") for bias in (True, False)}


def _same(a, b) -> bool:
    return np.array_equal(a.patterns, b.patterns) and np.array_equal(a.multiplicities, b.multiplicities)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["first", "middle"])
@pytest.mark.parametrize("e", [-900, -600, 600, 900, 1000])
def test_extreme_scales_that_keep_every_sign_keep_the_patterns_and_stay_in_floats(refs, bias, kind, e):
    # e = -600 (inputs ~1e-180 against first weights ~1e+180) used to send every row to rational arithmetic
    # (~1 s a row): the weights' row norms overflowed to inf in vector_norm (and the inputs' norms
    # underflowed), so every bound was inf. Every product here is O(1): floats decide all but a handful.
    # (Without biases, at e = 1000, scaling the inputs 2^1000 x back to ~1 would make the products ~2^-1000:
    # _homogeneous_rows scales by the products' order, not the inputs')
    net = _scaled(_mlp(bias), kind, e)
    x = _X * 2.0**e if kind == "first" else _X
    res = count_patterns(net, x)
    assert _same(res, refs[bias])
    assert res.n_exact <= 2


@pytest.mark.parametrize("kind, e", [("first", -600), ("first", 600), ("middle", -600), ("middle", 900)])
def test_the_graph_engine_decides_extreme_scales_in_floats(kind, e):
    # the per-row graph engine (the path of non-chain graphs and of rows the chain path hands back) had the
    # same inf row norms
    net = _mlp(True)
    ref, _ = graph_patterns(trace(net), _X[:40], dtype=torch.float64)
    x = _X[:40] * 2.0**e if kind == "first" else _X[:40]
    for dtype in (torch.float32, torch.float64):
        dec, stats = graph_patterns(trace(_scaled(net, kind, e)), x, dtype=dtype)
        assert all(torch.equal(dec[i], ref[i]) for i in ref)
        assert stats["exact"] <= 1


@pytest.mark.parametrize("kind", ["first", "middle"])
@pytest.mark.parametrize("e", [-120, -100, 100, 120])
def test_float32_inputs_at_the_ends_of_float32s_range(kind, e):
    # first weights 2^-120 W1 are subnormal in float32 (their layer runs in float64), 2^+-120 x stays a
    # normal float32 number where x > 2^-6; the reference reads the very same float32 inputs, scaled back
    net = _mlp(True)
    x = _X if kind == "middle" else _X * 2.0**e
    x32 = x.to(torch.float32)
    back = x32.double() * (2.0**-e if kind == "first" else 1.0)
    res = count_patterns(_scaled(net, kind, e), x32)
    assert _same(res, count_patterns(net, back, precision="float64"))
    assert res.n_exact <= 2


@pytest.mark.parametrize("e", [-1000, -600, -520, 0, 520, 600, 1000])
def test_the_spectral_certificate_holds_and_stays_tight_at_any_scale(e):
    # w^T w over- or underflowed past ~2^+-510: the certificate gave up (inf: the graph engine then kept the
    # Frobenius norm, ~sqrt(rank) looser); entries 2^-60 below the largest have squares below the smallest
    # normal number, which the bound now charges
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 30, generator=g, dtype=torch.float64)
    w[::3] *= 2.0**-60
    true = float(torch.linalg.matrix_norm(w, 2))
    bound = _spectral_bound(w * 2.0**e)
    assert true * 2.0**e * (1 + 1e-12) <= bound <= true * 2.0**e * 1.001


def _no_bias(net: nn.Sequential) -> nn.Sequential:
    net = copy.deepcopy(net)
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, nn.Linear):
                mod.bias.zero_()
    return net


@pytest.mark.parametrize("e", [-1060, -1000, -600, 600, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_without_biases_scaling_the_input_alone_keeps_the_patterns(e, dtype):
    # a chain without biases is positively homogeneous: 2^e x has the pattern of x. At 2^-600 the products
    # were ~1e-180 (float32 holds none of them; the int8 layer rejects rows beyond 2^+-400) and at 2^-1000
    # they underflowed in float64 (165 of 300 rows went to rational arithmetic); the rows are now scaled
    # back near 1 first. For e = -1060 the inputs are subnormal and rounded: the reference reads them back
    # scaled up, exactly
    net = _no_bias(_mlp(True))
    if dtype == torch.float32:
        e = max(min(e, 100), -140)  # float32's range: 2^-140 x is partly subnormal
    x = (_X * 2.0**e).to(dtype)
    back = x.double() * 2.0 ** (-e // 2) * 2.0 ** (-e - (-e // 2))  # (2^1060 is beyond float64)
    assert torch.equal(back * 2.0**e, x.double())  # the reference holds the very same inputs, scaled
    res = count_patterns(net, x)
    assert _same(res, count_patterns(net, back, precision="float64"))
    assert res.n_exact <= 2
    if abs(e) > 100:  # rescaled to the very rows of `back`: the same float work as at scale 1
        at_one = count_patterns(net, back.to(dtype))
        assert (res.n_float64, res.n_exact) == (at_one.n_float64, at_one.n_exact)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(-990, 990),
    st.sampled_from(["first", "middle"]),
    st.booleans(),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_any_sign_preserving_scale_keeps_the_patterns(seed, e, kind, bias, dtype):
    net = mlp(12, [10, 8], 2, seed=seed).double()
    if not bias:
        net = _no_bias(net)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 12, dtype=torch.float64, generator=g) * (1 - 2.0**-10) + 2.0**-10  # in [2^-10, 1)
    if dtype == torch.float32:
        x = x.float().double()
        if kind == "first":
            e = max(-110, min(e, 110))  # 2^e x stays a normal float32 number
    xs = (x * 2.0**e if kind == "first" else x).to(dtype)
    assert torch.equal(xs.double() * 2.0 ** (-e if kind == "first" else 0), x)
    ref = count_patterns(net, x, precision="float64")
    res = count_patterns(_scaled(net, kind, e, check=assume), xs)
    assert _same(res, ref)
    assert res.n_exact <= ref.n_exact + 1


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind, e", [("first", -600), ("first", 900), ("middle", 600), ("middle", -600)])
def test_a_conv_net_at_extreme_scales(bias, kind, e):
    # a graph (conv, max-pool) goes through the per-row engine: its dense Linear after a 2^600 scaling had an
    # inf row norm, and every row went to rational arithmetic (20 of 20 before)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(100, 16), nn.ReLU(), nn.Linear(16, 3),
    ).double()
    if not bias:
        with torch.no_grad():
            for mod in net:
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
    x = torch.rand(60, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = count_patterns(net, x, precision="float64")
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        if kind == "first":
            scaled[0].weight.mul_(2.0**-e)
            x = x * 2.0**e
        else:
            scaled[4].weight.mul_(2.0**e)
            scaled[4].bias.mul_(2.0**e)
            scaled[6].weight.mul_(2.0**-e)
    res = count_patterns(scaled, x)
    assert _same(res, ref)
    assert res.n_exact <= 1


def test_rows_are_rescaled_only_by_exact_powers_of_two():
    # each row comes back unchanged or as exactly 2^-k times itself (every entry, zeros kept): a row whose
    # small entries would fall below the smallest normal number, or whose largest would overflow, is kept
    net = _no_bias(mlp(3, [4], 2, seed=0).double())
    plan = chain_plan(trace(net), "cpu")
    tiny64 = 2.0**-1074
    rows64 = [
        [tiny64, 1e-300, 0.0],  # scaled up ~2^996: the subnormal entry is exact too
        [2.0**1000, 2.0**-1000, 1.0],  # scaled down 2^1000 would flush 2^-1000: kept
        [2.0**1000, -(2.0**990), 0.0],  # scaled down: exact
        [1.0, 0.5, -0.25],  # near 1: kept
        [0.0, 0.0, 0.0],
    ]
    rows32 = [[2.0**-140, 2.0**-130, 0.0], [2.0**120, 2.0**-120, 1.0], [3.0, 1.0, 0.0]]
    for rows, dtype in ((rows64, torch.float64), (rows32, torch.float32)):
        x = torch.tensor(rows, dtype=dtype)
        out = _homogeneous_rows(plan, x)
        assert out.dtype == x.dtype
        moved = []
        for a, b in zip(x.tolist(), out.tolist()):
            ratios = {Fraction(v) / Fraction(u) for u, v in zip(a, b) if u != 0}
            assert all((u == 0) == (v == 0) for u, v in zip(a, b))
            assert len(ratios) <= 1
            c = ratios.pop() if ratios else Fraction(1)
            assert c > 0 and (c.numerator == 1 or c.denominator == 1)
            assert bin(c.numerator).count("1") == 1 and bin(c.denominator).count("1") == 1
            moved.append(c != 1)
            assert _exact_signs(net, torch.tensor(b, dtype=torch.float64)) == _exact_signs(
                net, torch.tensor(a, dtype=torch.float64)
            )
        expect = [True, False, True, False, False] if dtype == torch.float64 else [True, False, False]
        assert moved == expect
