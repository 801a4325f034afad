"""The int8 first layer of the pattern engine (netgeom.nets._int8): exact products, a certified bound."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netgeom._matmul as mm
from netgeom import count_patterns, mlp, trace
from netgeom.nets._int8 import Int8Layer, int8_products_exact
from netgeom.nets.certified import chain_decide, chain_patterns, chain_plan, choose_prefix


def _exact(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> list[list[Fraction]]:
    Wf = [[Fraction(v) for v in r] for r in W.tolist()]
    bf = [Fraction(v) for v in b.tolist()]
    rows = x.double().tolist()
    return [
        [sum((w * Fraction(v) for w, v in zip(wr, row)), Fraction(0)) + bj for wr, bj in zip(Wf, bf)]
        for row in rows
    ]


def _check_bound(lay: Int8Layer, W, b, x):
    z, alpha, beta, ok = lay(x)
    ref = _exact(W, b, x)
    bound = alpha[:, None] * lay.p[None] + beta[:, None] * lay.q[None] + 2.0**-52 * z.abs()
    for r in range(x.shape[0]):
        if not ok[r]:
            continue
        for j in range(W.shape[0]):
            err = abs(Fraction(float(z[r, j])) - ref[r][j])
            assert err <= Fraction(float(bound[r, j])), (r, j, float(err), float(bound[r, j]))
    return z, ok


def _scaled(rng, shape, lo, hi, dtype):
    """Entries with mantissas of full width and exponents spread over [lo, hi], some zero."""
    m = rng.uniform(-1, 1, shape)
    m[rng.random(shape) < 0.15] = 0.0
    return torch.tensor(m * 2.0 ** rng.integers(lo, hi + 1, shape), dtype=dtype)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 24),
    st.integers(1, 5),
    st.integers(1, 4),
    st.sampled_from([(-3, 3), (-40, 0), (-300, -250), (200, 260), (-120, 120)]),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_every_entry_is_within_its_certified_bound(seed, K, N, levels, span, dtype):
    rng = np.random.default_rng(seed)
    lo, hi = span
    if dtype == torch.float32:
        lo, hi = (min(max(v, -140), 100) for v in span)  # float32's range (subnormals included)
    W = _scaled(rng, (N, K), -20, 5, torch.float64)
    b = _scaled(rng, (N,), -10, 3, torch.float64)
    x = _scaled(rng, (7, K), lo, hi, dtype)
    x[0] = 0.0  # an all-zero row: z = b exactly
    z, ok = _check_bound(Int8Layer(W, b, levels), W, b, x)
    assert ok[0] and torch.equal(z[0], b)


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_wide_layers_stay_within_the_bound(levels):
    # wide rows meet every slice value, including the ends of the int8 range
    rng = np.random.default_rng(levels)
    W = torch.tensor(rng.normal(size=(3, 400)))
    b = torch.tensor(rng.normal(size=3))
    x = torch.tensor(rng.uniform(-1, 1, (6, 400)), dtype=torch.float32)
    _check_bound(Int8Layer(W, b, levels), W, b, x)


def test_degenerate_shapes_and_saturating_extremes_are_exact():
    rng = np.random.default_rng(1)
    for K, N, B in [(1, 1, 1), (1, 2, 3), (5, 1, 1), (1, 7, 2), (33, 3, 17)]:
        W = _scaled(rng, (N, K), -3, 3, torch.float64)
        b = _scaled(rng, (N,), -3, 3, torch.float64)
        x = _scaled(rng, (B, K), -3, 3, torch.float64)
        _check_bound(Int8Layer(W, b, 4), W, b, x)
    # every slice at +-127 / +-64 and one-ulp neighbours of powers of two
    W = torch.tensor([[127.0, -127.0, 126.5, 0.5 + 2.0**-40]] * 3, dtype=torch.float64)
    x = torch.tensor([[1.0, -1.0, np.nextafter(1.0, 2.0), 2.0**-30], [127.0, 127.0, 127.0, 127.0]])
    b = torch.zeros(3, dtype=torch.float64)
    _check_bound(Int8Layer(W, b, 4), W, b, x)


def test_rows_out_of_range_are_flagged_not_answered():
    W = torch.ones(2, 3, dtype=torch.float64)
    lay = Int8Layer(W, torch.zeros(2, dtype=torch.float64))
    x = torch.tensor([[1e300, 1.0, 0.0], [1e-300, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    _, _, _, ok = lay(x)
    assert ok.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="fan-in"):
        Int8Layer(torch.ones(2, 40_000, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))


def test_the_int8_first_layer_gives_the_float64_patterns_and_is_chosen_for_wide_layers(monkeypatch):
    # (chosen where int8 products are fast, as with VNNI: netgeom._matmul.int8_products_fast)
    monkeypatch.setattr(mm, "int8_products_fast", lambda: True)
    torch.manual_seed(0)
    net = mlp(300, [200, 200], 2, seed=0)
    X = torch.rand(512, 300, generator=torch.Generator().manual_seed(0))
    g = trace(net)
    plan = chain_plan(g, "cpu")
    assert plan.int8_layer(4) is not None
    ref, _ = chain_decide(g, plan, X, 2)  # every layer float64-accurate
    for lv in (1, 2, 3, 4):
        dec, _ = chain_decide(g, plan, X, 1, int8=lv)
        assert all(torch.equal(dec[i], ref[i]) for i in ref), lv
    _, redo, exact, _ = chain_patterns(plan, X, 1, 4)
    assert not exact.any() and redo.float().mean() < 0.05  # 4 levels: nearly every row decided at once
    m, lv = choose_prefix(plan, X)
    assert m >= 1 and lv > 0


def test_an_inexact_int8_kernel_is_detected_and_never_used(monkeypatch):
    real = torch._int_mm

    def saturating(a, b):  # pairs of products in saturating 16-bit adds, as int8 kernels without VNNI
        return real(torch.clamp(a, -60, 60), b)

    monkeypatch.setattr(torch, "_int_mm", saturating)
    assert not int8_products_exact()
    net = mlp(300, [50], 2, seed=0)
    plan = chain_plan(trace(net), "cpu")
    assert plan.int8_layer(4) is None
    monkeypatch.setattr(torch, "_int_mm", real)
    assert int8_products_exact()
    X = torch.rand(64, 300, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(torch, "_int_mm", saturating)
    res = count_patterns(net, X)
    monkeypatch.setattr(torch, "_int_mm", real)
    assert np.array_equal(res.patterns, count_patterns(net, X, precision="float64").patterns)


def test_split_and_combine_threads_give_the_one_thread_answer():
    rng = np.random.default_rng(3)
    W = _scaled(rng, (9, 40), -5, 5, torch.float64)
    b = _scaled(rng, (9,), -5, 5, torch.float64)
    x = _scaled(rng, (1000, 40), -20, 20, torch.float32)
    lay = Int8Layer(W, b)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = lay(x)
        torch.set_num_threads(2)
        two = lay(x)
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(a, c) for a, c in zip(one, two))


@pytest.mark.parametrize("e", [-300, -20, 0, 300, 500])
def test_scaling_the_input_against_the_first_weights_changes_no_pattern(e):
    # x -> 2^e x with W1 -> 2^-e W1 leaves every pre-activation exactly as it was: the patterns (decided by
    # int8 products with 3 or 4 levels, by float64 rows where the scale leaves the int8 range) must not move
    net = mlp(784, [100, 100], 2, seed=0).double()
    X = torch.rand(100, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = trace(net)
    ref, _ = chain_decide(g, chain_plan(g, "cpu"), X, 2)  # float64 products throughout
    scaled = mlp(784, [100, 100], 2, seed=0).double()
    with torch.no_grad():
        scaled[0].weight.mul_(2.0**-e)
    gs = trace(scaled)
    plan = chain_plan(gs, "cpu")
    for lv in (3, 4):
        dec, _ = chain_decide(gs, plan, X * 2.0**e, 1, int8=lv)
        assert all(torch.equal(dec[i], ref[i]) for i in ref), lv
    assert count_patterns(scaled, X * 2.0**e).count == count_patterns(net, X, precision="float64").count


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.sampled_from([torch.float32, torch.float64]))
def test_refined_rows_are_the_full_layer_bit_for_bit_and_within_their_bound(seed, first, dtype):
    # a progressive layer computes `first` anti-diagonals per batch and the rest for chosen rows: those rows
    # must be exactly what a layer computing all four gives, and every value within its own bound
    rng = np.random.default_rng(seed)
    W = _scaled(rng, (7, 30), -10, 5, torch.float64)
    b = _scaled(rng, (7,), -10, 5, torch.float64)
    x = _scaled(rng, (12, 30), -30, 30, dtype)
    full = Int8Layer(W, b, 4)
    prog = Int8Layer(W, b, 4, first)
    z, alpha, beta, ok = full(x)
    batch = prog.activate(x, 0.0)[-1]
    rows = torch.tensor([5, 0, 11, 5])
    zr, hr, ar, br = batch.rows(rows)
    assert torch.equal(zr, z[rows]) and torch.equal(ar, alpha[rows]) and torch.equal(br, beta[rows])
    assert torch.equal(hr, torch.relu(z[rows]))
    _check_bound(prog, W, b, x)  # the batch's own (first-diagonal) values
    ref = _exact(W, b, x)
    for L in range(1, 5):  # any number of diagonals, through __call__
        zl, al, bl, okl = prog(x, diagonals=L)
        bound = al[:, None] * prog.p[None] + bl[:, None] * prog.q[None] + 2.0**-52 * zl.abs()
        for r in range(x.shape[0]):
            for j in range(W.shape[0]):
                if okl[r]:
                    err = abs(Fraction(float(zl[r, j])) - ref[r][j])
                    assert err <= Fraction(float(bound[r, j])), (L, r, j)


def test_progressive_int8_refines_the_rows_its_coarse_bound_leaves_and_matches_four_levels():
    net = mlp(300, [200, 200], 2, seed=0)
    X = torch.rand(1024, 300, generator=torch.Generator().manual_seed(2))
    g = trace(net)
    plan = chain_plan(g, "cpu")
    ref, _ = chain_decide(g, plan, X, 2)  # float64 products
    stats: dict = {}
    out, redo, exact, _ = chain_patterns(plan, X, 1, 2, stats)
    assert stats.get("refined", 0) > 0  # 2 diagonals (3 products) leave some second-layer units undecided
    four = chain_patterns(plan, X, 1, 4)
    assert redo.sum() <= four[1].sum() + 5  # refining leaves about what four levels leave
    done = ~redo & ~exact
    assert all(torch.equal(out[i][done], ref[i][done]) for i in ref)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 3),
    st.sampled_from([0.0, 0.1, -0.5, 2.0]),
    st.sampled_from([(-3, 3), (-60, -40), (30, 50)]),
)
def test_second_layer_bounds_after_int8_hold_entry_by_entry_and_are_tighter(seed, L, slope, span):
    # the second layer's float64 check after an int8 first layer carries the first layer's error entry by
    # entry (dead ReLU inputs exactly 0): every bound must contain the exact value, computed in rationals
    # from the exact first layer, including second-layer units placed right at zero; and it must never be
    # looser than the norm (Cauchy-Schwarz) bound it replaces
    import torch.nn as nn

    from netgeom.nets.certified import _SAFETY, _int8_pair_bound

    rng = np.random.default_rng(seed)
    K, N1, N2, B = 24, 16, 9, 6
    W1 = _scaled(rng, (N1, K), -6, 2, torch.float64)
    b1 = _scaled(rng, (N1,), -6, 0, torch.float64)
    x = _scaled(rng, (B, K), *span, torch.float32)
    x[0] = 0  # a zero row: only the bias reaches the second layer
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    net = nn.Sequential(nn.Linear(K, N1), act, nn.Linear(N1, N2), nn.ReLU()).double()
    z1x = _exact(W1, b1, x)
    h1x = [[v if v > 0 else Fraction(slope) * v for v in row] for row in z1x]
    W2 = _scaled(rng, (N2, N1), -4, 2, torch.float64)
    # biases that put units right at zero for some rows (their exact value is ~the rounding of h1)
    b2 = torch.tensor([-float(sum(Fraction(w) * h for w, h in zip(W2[j].tolist(), h1x[j % B])))
                       for j in range(N2)], dtype=torch.float64)
    with torch.no_grad():
        net[0].weight.copy_(W1), net[0].bias.copy_(b1), net[2].weight.copy_(W2), net[2].bias.copy_(b2)
    lay = chain_plan(trace(net), "cpu").layers[1]
    i8 = Int8Layer(W1, b1, 4, L)
    z1, alpha, beta, ok = i8(x)
    h1 = torch.where(z1 > 0, z1, slope * z1)
    rows = torch.arange(B).repeat_interleave(N2)
    units = torch.arange(N2).repeat(B)
    z2, bound = _int8_pair_bound(lay, units, h1, z1, rows, alpha, beta, i8, slope)
    # the norm form: ||W_j|| ein + gamma (||W_j|| ||h|| + |b_j|), ein the int8 layer's error norm
    lip = max(1.0, abs(slope))
    ein = (alpha * torch.linalg.vector_norm(i8.p) + beta * torch.linalg.vector_norm(i8.q)
           + 2.0**-51 * torch.linalg.vector_norm(z1, dim=1)) * lip
    r, c = lay["r"][units], lay["c"][units]
    hn = torch.linalg.vector_norm(h1, dim=1)[rows]
    norm_form = (ein[rows] * r + lay["g64"] * (r * hn + c)) * _SAFETY**2 + (3 * lay["K"] + 4) * 2.0**-1022
    near = 0
    for k in range(len(units)):
        rr, j = int(rows[k]), int(units[k])
        if not ok[rr]:
            continue
        exact = sum((Fraction(w) * h for w, h in zip(W2[j].tolist(), h1x[rr])), Fraction(0)) + Fraction(
            float(b2[j]))
        err = abs(Fraction(float(z2[k])) - exact)
        assert err <= Fraction(float(bound[k])), (rr, j, float(err), float(bound[k]))
        assert float(bound[k]) <= float(norm_form[k]) * (1 + 1e-12), (rr, j)
        near += abs(exact) <= Fraction(float(bound[k]))
    assert near >= 1  # some unit was placed within its bound of zero (the test reaches the hard cases)


def test_a_relu_input_computed_negative_but_positive_counts_its_error_in_the_next_layer():
    # one live first-layer unit whose exact value is just above 0 while a one-diagonal int8 product makes
    # it negative (its ReLU output 0 instead of the tiny exact one): the second layer's bound must still
    # contain the exact value, i.e. only inputs the bound *proves* negative count as exact zeros
    import torch.nn as nn

    from netgeom.nets.certified import _int8_pair_bound

    rng = np.random.default_rng(7)
    K, N1 = 8, 4
    found = None
    for _ in range(200):
        x = torch.tensor(rng.uniform(-1, 1, (1, K)), dtype=torch.float32)
        W1 = torch.tensor(rng.uniform(-1, 1, (N1, K)))
        dot = sum(Fraction(w) * Fraction(v) for w, v in zip(W1[3].tolist(), x[0].double().tolist()))
        b1 = torch.tensor([-100.0, -100.0, -100.0, -float(dot)])  # units 0-2 dead; unit 3 at ~0
        z1x = dot + Fraction(float(b1[3]))
        i8 = Int8Layer(W1, b1, 4, 1)
        z1, alpha, beta, ok = i8(x)
        if z1x > 0 and float(z1[0, 3]) < 0:
            found = (x, W1, b1, z1x, i8, z1, alpha, beta)
            break
    assert found is not None
    x, W1, b1, z1x, i8, z1, alpha, beta = found
    net = nn.Sequential(nn.Linear(K, N1), nn.ReLU(), nn.Linear(N1, 1), nn.ReLU()).double()
    with torch.no_grad():
        net[0].weight.copy_(W1), net[0].bias.copy_(b1)
        net[2].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 1.0]])), net[2].bias.zero_()
    lay = chain_plan(trace(net), "cpu").layers[1]
    h1 = torch.relu(z1)
    z2, bound = _int8_pair_bound(lay, torch.tensor([0]), h1, z1, torch.tensor([0]), alpha, beta, i8, 0.0)
    assert float(z2[0]) == 0.0 and Fraction(float(bound[0])) >= z1x > 0  # exact z2 = z1x


def _live_norm_bound(lay: Int8Layer, x, slope):
    """The error-norm bound the pattern engine forms from ``activate``: ``alpha ||p_live|| + beta ||q_live||
    + 2^-51 ||z||`` (times ``max(1, |slope|)``), with the float64 activation rows it bounds."""
    out = lay.activate(x, slope)
    rows64, (_, zn, pn, qn), alpha, beta, ok = out[3], out[4], out[5], out[6], out[7]
    e = (alpha * pn + beta * qn + 2.0**-51 * zn) * max(1.0, abs(slope))
    return rows64[torch.arange(x.shape[0])], e, ok


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.sampled_from([0.0, 0.2]),
       st.sampled_from([(-3, 3), (-250, -200), (100, 120)]))
def test_the_live_error_norm_bounds_the_activation_error(seed, L, slope, span):
    rng = np.random.default_rng(seed)
    W = _scaled(rng, (12, 20), -8, 3, torch.float64)
    b = _scaled(rng, (12,), -8, 0, torch.float64)
    x = _scaled(rng, (8, 20), *span, torch.float32)
    lay = Int8Layer(W, b, 4, L)
    h, e, ok = _live_norm_bound(lay, x, slope)
    for r, zr in enumerate(_exact(W, b, x)):
        if ok[r]:
            hx = [v if v > 0 else Fraction(slope) * v for v in zr]
            sq = sum((Fraction(float(a)) - v) ** 2 for a, v in zip(h[r].tolist(), hx))
            assert sq <= Fraction(float(e[r])) ** 2, (r, float(e[r]))


def test_a_unit_computed_negative_but_positive_stays_in_the_live_error_norm():
    # a first-layer unit whose exact value is clearly positive while a one-diagonal int8 product makes it
    # negative, every other unit certainly dead: its ReLU output (0 against the exact value) must stay in
    # the error norm the next layer reads
    rng = np.random.default_rng(11)
    K, N1 = 8, 4
    for _ in range(500):
        x = torch.tensor(rng.uniform(-1, 1, (1, K)), dtype=torch.float32)
        W = torch.tensor(rng.uniform(-1, 1, (N1, K)))
        dot = sum(Fraction(w) * Fraction(v) for w, v in zip(W[3].tolist(), x[0].double().tolist()))
        b = torch.tensor([-100.0, -100.0, -100.0, -float(dot) + float(rng.uniform(1e-4, 5e-3))])
        lay = Int8Layer(W, b, 4, 1)
        zx = dot + Fraction(float(b[3]))
        z1, _, _, _ = lay(x)
        if zx > 0 and float(z1[0, 3]) < 0:
            break
    else:
        raise AssertionError("no unit computed negative but exactly positive")
    h, e, _ = _live_norm_bound(lay, x, 0.0)
    assert float(h[0, 3]) == 0.0 and Fraction(float(e[0])) >= zx > Fraction(1, 10**4)
