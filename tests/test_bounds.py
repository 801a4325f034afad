"""Region bounds: cross-checked against brute-force enumeration, closed forms and structural rank."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from netgeom import Masks, affine_layers, mlp, small_convnet
from netgeom.regions.allocation import allocate_densities
from netgeom.regions.bounds import (
    bounds,
    int_log10,
    montufar_lower_bound,
    product_bound,
    rank_distribution,
    serra_bound,
    serra_bound_log10,
    sparse_bound,
    zaslavsky_bound,
)


def serra_enumerate(n0, widths, ranks=None):
    """Serra et al.'s sum, by listing every vector j in the box and testing the definition of J."""
    ranks = ranks or [min(a, b) for a, b in zip([n0, *widths[:-1]], widths)]
    total = 0
    for j in itertools.product(*[range(w + 1) for w in widths]):
        ok, cap = True, n0
        for l, (jl, nl) in enumerate(zip(j, widths)):
            cap = min(cap, ranks[l])
            if jl > min(cap, nl):
                ok = False
                break
            cap = min(cap, nl - jl)
        if ok:
            total += math.prod(math.comb(n, x) for n, x in zip(widths, j))
    return total


# ------------------------------------------------------------------------------------------- dense
def test_serra_equals_enumeration_small():
    for n0 in range(1, 5):
        for L in range(1, 5):
            sizes = range(1, 7) if L <= 2 else (1, 3, 6)
            for widths in itertools.product(sizes, repeat=L):
                assert serra_bound(n0, widths) == serra_enumerate(n0, list(widths)), (n0, widths)


def test_serra_one_layer_is_zaslavsky_and_known_values():
    for n0 in range(1, 8):
        for n in range(1, 12):
            assert serra_bound(n0, [n]) == zaslavsky_bound(n, n0)
    assert zaslavsky_bound(3, 2) == 7 and zaslavsky_bound(5, 10) == 32
    # n0 = 1: two breakpoints per layer on a line, each of the 3 pieces cut again into 3: 3 · 3
    assert serra_bound(1, [2, 2]) == serra_enumerate(1, [2, 2]) == 9


@settings(max_examples=40, deadline=None)
@given(n0=st.integers(1, 6), widths=st.lists(st.integers(1, 12), min_size=1, max_size=4))
def test_montufar_le_serra_le_product(n0, widths):
    s, p = serra_bound(n0, widths), product_bound(n0, widths)
    assert s <= p
    if all(w >= n0 for w in widths[:-1]):
        assert montufar_lower_bound(n0, widths) <= s
    else:
        with pytest.raises(ValueError, match="Montúfar"):
            montufar_lower_bound(n0, widths)


def test_serra_fast_for_large_widths_and_log10():
    b = serra_bound(784, [400, 400])
    assert b <= product_bound(784, [400, 400])
    assert int_log10(b) == pytest.approx(math.log10(b))
    assert int_log10(0) == -math.inf
    # with n0 <= every width the dimension never drops below n_l - j >= n0... product and Serra coincide
    assert serra_bound(3, [10, 10]) == product_bound(3, [10, 10])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: serra_bound(0, [3]), "n0 must be >= 1"),
        (lambda: serra_bound(2, [3, 0]), r"widths\[1\] must be >= 1"),
        (lambda: serra_bound(2, [3, -1]), r"widths\[1\] must be >= 1"),
        (lambda: serra_bound(2, []), "widths must have at least 1"),
        (lambda: serra_bound(2, [3], ranks=[1, 2]), "ranks needs one entry per hidden layer"),
        (lambda: sparse_bound(2, [3, 3], [0.5]), "one density per hidden layer"),
        (lambda: sparse_bound(2, [3, 3], [0.5, 0.0]), r"densities\[1\] must lie in \(0.0, 1.0\]"),
        (lambda: sparse_bound(2, [3, 3], [0.5, 1.5]), r"densities\[1\] must lie in"),
        (lambda: sparse_bound(2, [3], [0.5], include_output=True), "needs n_out"),
        (lambda: sparse_bound(2, [3], rank_model="masks"), "needs the pruned model"),
        (lambda: sparse_bound(2, [3], [0.5], rank_model="nope"), "rank_model must be one of"),
        (lambda: sparse_bound(2, [3], [0.5], rank_model="monte_carlo"), "seed is required"),
        (lambda: sparse_bound(2, [3], rank_model=[[0.5, 0.9]]), "summing to <= 1"),
        (lambda: sparse_bound(2, [3], rank_model=[[0.0, 0.0, 0.0]]), "positive mass"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------- sparse
def recursion_enumerate(n0, widths, dists):
    """Exact E over independent ranks of the fixed-rank count (the recursion is linear in each layer)."""
    total = Fraction(0)
    supports = [[k for k, p in enumerate(d) if p > 0] for d in dists]
    for ks in itertools.product(*supports):
        w = math.prod(Fraction(dists[l][k]) for l, k in enumerate(ks))
        total += w * serra_enumerate(n0, widths, list(ks))
    return total


def test_sparse_full_density_equals_serra():
    for n0, widths in [(3, [4, 5]), (2, [3, 3, 3]), (5, [3, 6]), (784, [100, 100])]:
        r = sparse_bound(n0, widths, 1.0)
        assert r.exact == serra_bound(n0, widths)
        assert r.log10 == pytest.approx(r.dense_log10, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    n0=st.integers(1, 4),
    widths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    data=st.data(),
)
def test_sparse_recursion_matches_enumeration(n0, widths, data):
    fulls = [min(a, b) for a, b in zip([n0, *widths[:-1]], widths)]
    ranks = [data.draw(st.integers(0, f)) for f in fulls]
    point = [[1.0 if k == r else 0.0 for k in range(f + 1)] for r, f in zip(ranks, fulls)]
    r = sparse_bound(n0, widths, rank_model=point)
    assert r.exact == serra_enumerate(n0, widths, ranks) == serra_bound(n0, widths, ranks=ranks)
    # random distributions (with dyadic weights, so that floats are exact rationals)
    dists = []
    for f in fulls:
        w = np.array([data.draw(st.integers(0, 4)) for _ in range(f + 1)], float)
        w[-1] += 1
        dists.append((w / w.sum()).tolist())
    r = sparse_bound(n0, widths, rank_model=dists)
    want = recursion_enumerate(n0, widths, dists)
    assert r.ln == pytest.approx(math.log(want), rel=1e-9, abs=1e-9)


def test_closed_form_matches_enumeration_with_binomials():
    n0, widths, dens = 3, [4, 3], [0.3, 0.6]
    dists = [rank_distribution(n, i, p) for n, i, p in zip(widths, [n0, 4], dens)]
    # the authors' omission of k = 0
    assert all(d[0] == 0 for d in dists)
    want = recursion_enumerate(n0, widths, [d.tolist() for d in dists])
    assert sparse_bound(n0, widths, dens).ln == pytest.approx(math.log(want), rel=1e-9)
    with_zero = sparse_bound(n0, widths, dens, include_zero_rank=True)
    assert with_zero.log10 > sparse_bound(n0, widths, dens).log10
    # Binomial(R, Q) with Q = 1 - (1 - p)^C, by hand for the 4 x 3 layer (C = 3 < R = 4: columns)
    Q = 1 - (1 - 0.3) ** 4
    np.testing.assert_allclose(dists[0][1:], [math.comb(3, k) * Q**k * (1 - Q) ** (3 - k) for k in (1, 2, 3)])


@settings(max_examples=30, deadline=None)
@given(
    n0=st.integers(1, 30),
    widths=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    data=st.data(),
)
def test_sparse_monotone_in_density_and_below_dense(n0, widths, data):
    dens = [data.draw(st.floats(0.01, 1.0)) for _ in widths]
    base = sparse_bound(n0, widths, dens)
    assert base.log10 <= base.dense_log10 + 1e-9
    i = data.draw(st.integers(0, len(widths) - 1))
    lower = list(dens)
    lower[i] *= data.draw(st.floats(0.05, 0.99))
    assert sparse_bound(n0, widths, lower).log10 <= base.log10 + 1e-9
    # the same holds for the full binomial (k = 0 kept)
    assert (
        sparse_bound(n0, widths, lower, include_zero_rank=True).log10
        <= sparse_bound(n0, widths, dens, include_zero_rank=True).log10 + 1e-9
    )


def test_include_output_adds_the_output_layer():
    hidden = sparse_bound(784, [100, 100], [0.01, 0.02])
    with_out = sparse_bound(784, [100, 100], [0.01, 0.02], include_output=True, n_out=10)
    assert with_out.layer_widths == [100, 100, 10]
    assert with_out.densities[-1] == 1.0
    assert with_out.log10 > hidden.log10
    dense = sparse_bound(784, [100, 100], 1.0, include_output=True, n_out=10)
    assert dense.exact == serra_bound(784, [100, 100, 10])


# ------------------------------------------------------------------------------------------- ranks
def structural_rank(mask: np.ndarray) -> int:
    """Generic rank of a matrix with this zero pattern = size of a maximum bipartite matching."""
    match = maximum_bipartite_matching(csr_matrix(mask.astype(np.int8)), perm_type="column")
    return int((match >= 0).sum())


def test_monte_carlo_ranks_equal_structural_ranks_of_random_masks():
    R, C, p, m = 30, 40, 0.04, 300
    mc = rank_distribution(R, C, p, rank_model="monte_carlo", n_samples=m, seed=1, mask_kind="bernoulli")
    assert mc.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(123)
    emp = np.array([structural_rank(rng.random((R, C)) < p) for _ in range(m)])
    mc_mean = float(np.dot(np.arange(len(mc)), mc))
    # two independent samples of the same distribution: means agree within a few standard errors
    se = emp.std(ddof=1) * math.sqrt(2 / m)
    assert abs(mc_mean - emp.mean()) < 4 * se + 1e-9
    # exact-count masks keep exactly round(p R C) entries
    ex = rank_distribution(R, C, p, rank_model="monte_carlo", n_samples=50, seed=2)
    assert float(np.dot(np.arange(len(ex)), ex)) <= round(p * R * C)
    # seeded: same seed, same answer
    np.testing.assert_array_equal(
        ex, rank_distribution(R, C, p, rank_model="monte_carlo", n_samples=50, seed=2)
    )


def test_closed_form_vs_monte_carlo():
    R = C = 60

    def means(p):
        cf = rank_distribution(R, C, p, include_zero_rank=True)
        mc = rank_distribution(R, C, p, rank_model="monte_carlo", n_samples=60, seed=0, mask_kind="bernoulli")
        return float(np.dot(np.arange(R + 1), cf)), float(np.dot(np.arange(R + 1), mc))

    # dense enough: every row full, the matrix full rank; very sparse: entries in distinct rows/columns
    for p in (0.3, 0.002):
        cf, mc = means(p)
        assert abs(cf - mc) <= 0.03 * R + 0.5, (p, cf, mc)
    # near the threshold (about 2 entries per row) rows are non-empty but the matrix is rank deficient:
    # the closed form (non-empty rows) overestimates the rank, as it must (rank <= non-empty rows)
    cf, mc = means(2.0 / C)
    assert cf > mc + 0.05 * R


# ------------------------------------------------------------------------------------------- models
def test_masks_rank_model_hand_computation():
    net = mlp(2, [3, 3], 1, seed=0)
    masks = Masks.ones(net)
    masks["0.weight"] = torch.tensor([[1, 0], [1, 0], [1, 0]], dtype=torch.bool)  # rank 1: only x_1 is read
    masks["2.weight"] = torch.eye(3, dtype=torch.bool)  # rank 3
    masks.apply(net)
    r = sparse_bound(model=net, masks=masks, rank_model="masks")
    # Rank 1: the input reaches layer 1 as a line, and 3 parallel hyperplanes cut it into j = 0 or 1 sides
    # (C(3,0) + C(3,1) = 4 patterns); each piece carries a 1-D image into layer 2: again at most 1 + 3 = 4.
    assert r.exact == 16 and r.value == 16.0
    assert r.densities == pytest.approx([3 / 6, 3 / 9])
    b = bounds(net, masks)
    assert b.ranks == [1, 3] and b.sparse_masks == 16 and b.serra == 40
    # a dense model: masks ranks are full, so the bound is Serra's
    dense = mlp(4, [6, 5], 2, seed=1)
    assert sparse_bound(model=dense, rank_model="masks").exact == serra_bound(4, [6, 5])
    out = sparse_bound(model=dense, rank_model="masks", include_output=True)
    assert out.exact == serra_bound(4, [6, 5, 2])


def test_bounds_result_and_plot(tmp_path):
    net = mlp(5, [8, 6], 3, seed=0)
    b = bounds(net)
    assert b.widths == [8, 6] and b.n_out == 3
    assert b.montufar == 1 * (2**6 - 1) and not b.notes  # ⌊8/5⌋^5 · Σ_{j≤5} C(6, j)
    narrow = bounds(mlp(5, [3, 6], 2, seed=0))
    assert narrow.montufar is None and "Montúfar" in narrow.notes[0]
    assert b.product >= b.serra >= b.sparse_masks
    assert b.sparse_closed_form_log10 == pytest.approx(b.serra_log10)
    assert "Serra" in b.table()
    b.to_json(tmp_path / "b.json")
    ax = b.plot()
    ax.figure.savefig(tmp_path / "b.png")
    r = sparse_bound(5, [8, 6], [0.5, 0.5])
    r.plot().figure.savefig(tmp_path / "r.png")
    assert r.to_dict()["log10"] == pytest.approx(r.log10)


def test_model_ending_with_an_activation_counts_its_last_layer():
    from torch import nn

    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU())
    b = bounds(net)
    assert b.widths == [5, 3] and b.serra == serra_bound(2, [5, 3])
    assert bounds(nn.Sequential(nn.Linear(2, 3), nn.ReLU())).serra == zaslavsky_bound(3, 2) == 7
    with pytest.raises(ValueError, match="already counted as a hidden layer"):
        sparse_bound(model=net, rank_model="masks", include_output=True)


def test_conv_layers_refuse_the_random_mask_rank_models():
    net = small_convnet((1, 12), n_out=3, channels=2, seed=0).eval()
    layers = affine_layers(net)
    conv = next(la for la in layers if la.kind != "linear")
    for rm in ("closed_form", "monte_carlo"):
        with pytest.raises(ValueError, match=rf"'{conv.name}' is a {conv.kind} layer.*rank_model=\"masks\""):
            sparse_bound(model=net, rank_model=rm, **({"seed": 0} if rm == "monte_carlo" else {}))
    # The actual ranks of the unrolled matrices stay valid, and give Serra's bound at those ranks.
    hidden = layers[:-1]
    ranks = [int(torch.linalg.matrix_rank(la.weight)) for la in hidden]
    r = sparse_bound(model=net, rank_model="masks")
    assert r.exact == serra_bound(hidden[0].n_in, [la.n_out for la in hidden], ranks=ranks)


def test_bounds_take_input_shape_for_conv_nets():
    net = small_convnet((1, 10), n_out=2, channels=2, seed=0).eval()
    bare = small_convnet((1, 10), n_out=2, channels=2, seed=0).eval()
    shape = net.input_shape
    del bare.input_shape
    with pytest.raises(ValueError, match="input_shape"):
        bounds(bare)
    assert bounds(bare, input_shape=shape).to_dict() == bounds(net).to_dict()
    a = sparse_bound(model=bare, rank_model="masks", input_shape=shape)
    assert a.exact == sparse_bound(model=net, rank_model="masks").exact


def test_fully_masked_layer_is_named_and_bounded_as_disconnected():
    net = mlp(3, [4, 4], 2, seed=0)
    masks = Masks.ones(net)
    masks["2.weight"][:] = False
    b = bounds(net, masks)
    assert b.sparse_closed_form_log10 is None
    assert any("'2' (2.weight) removes every weight" in n and "disconnected" in n for n in b.notes)
    # Layer 2's pre-activations are constant, so the bound is that of the first layer alone.
    assert b.sparse_masks == serra_bound(3, [4]) == 15
    with pytest.raises(ValueError, match=r"2.weight.*disconnected.*rank_model=\"masks\""):
        sparse_bound(model=net, masks=masks)
    assert sparse_bound(model=net, masks=masks, rank_model="masks").exact == 15


def test_bounds_plot_equal_bounds_stay_distinguishable():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = bounds(mlp(2, [3, 3], 1, seed=0))  # n0 = 2 < widths: Serra = actual ranks = closed form
    ax = b.plot()
    styles = {(ln.get_marker(), str(ln.get_linestyle())) for ln in ax.lines}
    assert len(styles) == len(ax.lines) == len(b.prefix_log10)
    note = " ".join(t.get_text() for t in ax.texts)
    assert "overlapping" in note and "sparse (actual ranks) = Serra" in note
    plt.close("all")


# ------------------------------------------------------------------------------------------- scale (12.4)
def serra_full_row(n0, widths, ranks=None):
    """The previous implementation of the Serra program: the whole binomial row C(n, j), j = 0..n, of every
    layer and all n0 + 1 states (correct, but memory that grows with the widths)."""
    count = [0] * n0 + [1]
    for l, n in enumerate(widths):
        if ranks is not None and ranks[l] < len(count) - 1:
            count = count[: ranks[l]] + [sum(count[ranks[l] :])]
        top = len(count) - 1
        row = [1] * (n + 1)
        for j in range(n):
            row[j + 1] = row[j] * (n - j) // (j + 1)
        partial = list(itertools.accumulate(row))
        suffix = list(itertools.accumulate(count[::-1]))[::-1] + [0]
        new = []
        for m in range(min(top, n) + 1):
            lo = max(m + 1, n - m)
            new.append(count[m] * partial[min(m, n - m)] + (row[n - m] * suffix[lo] if lo <= top else 0))
        count = new
    return sum(count)


def log_recursion_dense(n0, widths, log_probs):
    """The previous sparse recursion: dense (d, k) and (m, j) tables over the full widths, O(n^2) memory."""
    from scipy.special import gammaln, logsumexp

    ins = [n0, *widths[:-1]]
    log_next = np.zeros(widths[-1] + 1)
    for l in range(len(widths) - 1, -1, -1):
        n, lp = widths[l], np.asarray(log_probs[l], float)
        kmax = len(lp) - 1
        dmax = ins[l]
        mmax = min(kmax, dmax, n)
        m, j = np.arange(mmax + 1)[:, None], np.arange(mmax + 1)[None, :]
        logc = gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1)
        terms = np.where(j <= m, logc + log_next[np.clip(np.minimum(n - j, m), 0, None)], -np.inf)
        log_g = logsumexp(terms, axis=1)
        d = np.arange(dmax + 1)[:, None] if l > 0 else np.array([[n0]])
        idx = np.minimum(np.minimum(np.arange(kmax + 1)[None, :], d), mmax)
        log_next = logsumexp(lp[None, :] + log_g[idx], axis=1)
    return float(log_next[0])


@settings(max_examples=60, deadline=None)
@given(
    n0=st.integers(1, 60),
    widths=st.lists(st.integers(1, 80), min_size=1, max_size=4),
    data=st.data(),
)
def test_serra_equals_the_full_row_program(n0, widths, data):
    assert serra_bound(n0, widths) == serra_full_row(n0, widths)
    fulls = [min(a, b) for a, b in zip([n0, *widths[:-1]], widths)]
    ranks = [data.draw(st.integers(0, f)) for f in fulls]
    assert serra_bound(n0, widths, ranks=ranks) == serra_full_row(n0, widths, ranks)
    # the float program behind the memory estimate and serra_bound_log10(exact=False)
    exact = int_log10(serra_bound(n0, widths))
    assert serra_bound_log10(n0, widths, exact=False) == pytest.approx(exact, rel=1e-13, abs=1e-13)


@settings(max_examples=40, deadline=None)
@given(
    n0=st.integers(1, 120),
    widths=st.lists(st.integers(1, 150), min_size=1, max_size=3),
    data=st.data(),
)
def test_sparse_recursion_equals_the_dense_tables(n0, widths, data):
    dens = [data.draw(st.floats(1e-3, 1.0)) for _ in widths]
    zero = data.draw(st.booleans())
    r = sparse_bound(n0, widths, dens, include_zero_rank=zero)
    fulls = [min(a, b) for a, b in zip([n0, *widths[:-1]], widths)]
    with np.errstate(divide="ignore"):
        lps = [np.log(p) for p in r.rank_probabilities]
    assert [len(p) - 1 for p in lps] == fulls
    dense = log_recursion_dense(n0, widths, lps)
    assert r.unclamped_log10 * math.log(10) == pytest.approx(dense, rel=1e-12, abs=1e-12)
    # the reported bound never goes below one region
    assert r.ln == pytest.approx(max(dense, 0.0), rel=1e-12, abs=1e-12)
    assert r.clamped == (dense < -1e-12) or abs(dense) <= 1e-12


def test_wide_layers_in_small_memory():
    import tracemalloc

    tracemalloc.start()
    s = serra_bound(784, [10**6, 10**6])
    # every j <= 784 leaves n_l - j >= 784 = n0 dimensions: Serra's sum factorises into the product bound
    assert s == product_bound(784, [10**6, 10**6]) == zaslavsky_bound(10**6, 784) ** 2
    r = sparse_bound(784, [30000, 30000], 0.1)
    low = sparse_bound(784, [30000, 30000], 1e-5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6  # was a MemoryError / a 6.7 GiB array
    # density 0.1: every row of a 784 x 30000 mask is non-empty (Q = 1 in float64): full rank, Serra's bound
    assert r.exact == product_bound(784, [30000, 30000])
    assert r.log10 == pytest.approx(r.dense_log10, rel=1e-12)
    # at a density where the ranks spread the bound falls; wider than n0 the dense tables agree too
    assert low.log10 < r.log10
    narrow = sparse_bound(30, [200, 150], 0.01)
    with np.errstate(divide="ignore"):
        lps = [np.log(p) for p in narrow.rank_probabilities]
    assert narrow.ln == pytest.approx(log_recursion_dense(30, [200, 150], lps), rel=1e-12)


def test_oversize_exact_programs_are_refused_up_front():
    from netgeom.regions.bounds import BoundTooLargeError

    # refused before any big-integer work (was an OOM kill at 18.5 GB)
    with pytest.raises(BoundTooLargeError, match=r"refused: its exact dynamic program would hold .* GB") as e:
        serra_bound(10**6, [10**6, 10**6])
    msg = str(e.value)
    assert "602060 digits" in msg and "exact=False" in msg
    assert serra_bound_log10(10**6, [10**6, 10**6], exact=False) == pytest.approx(602059.690543, abs=1e-5)
    # a small budget refuses a moderate problem; the refusal is a ValueError (the CLI reports it as such)
    with pytest.raises(ValueError, match="max_bytes"):
        serra_bound(2000, [2000, 2000], max_bytes=10**6)
    assert serra_bound(2000, [2000, 2000], max_bytes=10**8) == serra_full_row(2000, [2000, 2000])
    # fixed ranks in the sparse bound: log10 from the recursion; the integer only within the budget
    big = sparse_bound(2000, [2000, 2000], 1.0, max_bytes=10**6)
    assert big.exact is None
    assert big.log10 == pytest.approx(serra_bound_log10(2000, [2000, 2000]), rel=1e-13)
    # Monte Carlo ranks of a layer whose sampled matrix would not fit
    with pytest.raises(BoundTooLargeError, match="30000 x 30000 layer are refused"):
        rank_distribution(30000, 30000, 0.1, rank_model="monte_carlo", seed=0)
    with pytest.raises(BoundTooLargeError, match="closed_form"):
        sparse_bound(784, [30000, 30000], 0.1, rank_model="monte_carlo", seed=0)


def test_zaslavsky_complement_and_power_of_two():
    for n in range(0, 25):
        for d in range(0, 28):
            assert zaslavsky_bound(n, d) == sum(math.comb(n, j) for j in range(min(n, d) + 1))
    assert zaslavsky_bound(10**6, 10**6 - 3) == 2**10**6 - 1 - 10**6 - math.comb(10**6, 2)


# ------------------------------------------------------------------------------------------- traced (14.3)
class _FunctionalChain(torch.nn.Module):
    """The same chain as mlp(3, [5, 4], 2), written with its own forward and functional ReLUs."""

    def __init__(self, seq):
        super().__init__()
        self.a, self.b, self.c = seq[0], seq[2], seq[4]

    def forward(self, x):
        return self.c(torch.nn.functional.relu(self.b(torch.relu(self.a(x)))))


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.block, self.out = torch.nn.Linear(3, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        return self.out(torch.relu(h + self.block(h)))


class _Concat(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.out = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.out(torch.cat([torch.relu(self.l1(x)), torch.relu(self.l2(x))], dim=1))


def test_chains_with_their_own_forward_are_bounded_like_sequentials():
    seq = mlp(3, [5, 4], 2, seed=0)
    masks = Masks.ones(seq)
    masks["2.weight"][:, :3] = False
    masks.apply(seq)
    own = _FunctionalChain(seq)
    own_masks = {"b.weight": masks["2.weight"]}
    a, b = bounds(seq, masks), bounds(own, own_masks)
    assert (a.serra, a.sparse_masks, a.ranks) == (b.serra, b.sparse_masks, b.ranks)
    assert sparse_bound(model=own, masks=own_masks, rank_model="masks").exact == a.sparse_masks


@pytest.mark.parametrize(
    "net,what",
    [
        (_Residual(), "a residual addition"),
        (_Concat(), "a concatenation"),
        (torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
                             torch.nn.Flatten(), torch.nn.Linear(12, 2)), "a max-pooling"),
    ],
)
def test_residual_concat_maxpool_are_refused_saying_what_is_bounded(net, what):
    from netgeom.nets import UnsupportedLayerError

    kw = {"input_shape": (1, 14)} if isinstance(net, torch.nn.Sequential) else {}
    for call in (
        lambda: bounds(net, **kw),
        lambda: sparse_bound(model=net, rank_model="masks", **kw),
        lambda: allocate_densities(model=net, total_density=0.5, **kw),
    ):
        with pytest.raises(UnsupportedLayerError, match=rf"not defined .* is {what}.*not guess.*Bounded"):
            call()


def test_leaky_relu_chains_get_no_serra_or_cai_bound():
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.LeakyReLU(0.1), torch.nn.Linear(3, 3), torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(3, 1),
    )
    for call in (
        lambda: bounds(net),
        lambda: sparse_bound(model=net, rank_model="masks"),
        lambda: allocate_densities(model=net, total_density=0.5),
    ):
        with pytest.raises(ValueError, match=r"assume ReLU.*LeakyReLU \(slope 0.1\).*product_bound"):
            call()
