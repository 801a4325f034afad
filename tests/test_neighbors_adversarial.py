"""The torch back-end of ``nearest_neighbors`` against brute-force float64 on adversarial inputs: exact
duplicates, exact ties, near-ties a few ulps apart, huge and tiny scales, many Gram blocks (several
threads' candidate stores). The answer must be *the* float64 answer: the same distances to the last bit
(``sqrt(einsum(d, d))`` of the float64 differences ``d``) and the same indices under (distance, index)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netgeom.dimension.neighbors import deduplicate, nearest_neighbors


def reference(X, k):
    """Brute force: float64 direct differences, rows ordered by (distance, index). Data below 2^-100 are
    scaled by a power of two first, as documented (their squared differences would underflow)."""
    amax = float(np.abs(X).max())
    shift = -math.frexp(amax)[1] if 0 < amax < 2.0**-100 else 0
    Xs = np.ldexp(X, shift)
    n = len(X)
    D = np.empty((n, n))
    for a in range(0, n, 16):
        diff = Xs[None, :, :] - Xs[a : a + 16, None, :]
        D[a : a + 16] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    np.fill_diagonal(D, np.inf)
    i = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.ldexp(np.take_along_axis(D, i, 1), -shift), i


def adversarial(rng, kind, n, D):
    if kind == "grid":  # small integers: many exact ties
        return rng.integers(-2, 3, size=(n, D)).astype(float)
    if kind == "signs":  # a centre plus sign patterns of one dyadic vector: exact ties in every row
        c = rng.integers(-8, 9, size=D).astype(float)
        v = np.ldexp(rng.integers(1, 64, size=D).astype(float), -3)
        return c + v * rng.choice([-1.0, 1.0], size=(n, D))
    if kind == "ulp":  # copies of a few points moved by 1-3 ulps in one coordinate: near-ties everywhere
        base = rng.normal(size=(max(1, n // 6), D)) * 4
        X = base[rng.integers(0, len(base), size=n)]
        j = rng.integers(0, D, size=n)
        steps = rng.integers(-3, 4, size=n)
        X[np.arange(n), j] += steps * np.spacing(X[np.arange(n), j])
        return X
    if kind == "constant":  # features equal for every point (left out of the float32 scores), one of them
        X = rng.normal(size=(n, D))  # broken by a single point (it must be kept)
        const = rng.random(D) < 0.6
        X[:, const] = rng.integers(-3, 4, size=const.sum())
        j = rng.integers(0, D)
        X[:, j] = X[0, j]
        X[rng.integers(0, n), j] += rng.choice([1.0, np.spacing(X[0, j] + 1.0)])
        return X
    return rng.normal(size=(n, D))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["normal", "grid", "signs", "ulp", "constant"]),
    n=st.integers(4, 70),
    D=st.integers(1, 24),
    k=st.integers(1, 8),
    n_dup=st.integers(0, 6),
    log2_scale=st.sampled_from([-1060, -600, -140, -60, 0, 60, 140, 400]),
    offset=st.sampled_from([0.0, 1.0, 2.0**30]),
    chunk=st.sampled_from([None, 1, 3, 8, 64]),
    n_extra=st.sampled_from([0, 2, 10]),
)
def test_equals_bruteforce_float64(seed, kind, n, D, k, n_dup, log2_scale, offset, chunk, n_extra):
    rng = np.random.default_rng(seed)
    X = adversarial(rng, kind, n, D) + offset
    if n_dup:  # exact duplicates, and one with -0.0 where a coordinate is 0
        X = np.concatenate([X, X[rng.integers(0, n, size=n_dup)]])
    X = np.ldexp(X, log2_scale)  # exact: powers of two keep every tie and ulp step
    keep = deduplicate(X)
    if k >= len(keep):
        return
    g = nearest_neighbors(X, k, method="torch", chunk_size=chunk, n_extra=n_extra)
    np.testing.assert_array_equal(g.kept, keep)
    d, i = reference(X[keep], k)
    np.testing.assert_array_equal(g.distances, d)
    np.testing.assert_array_equal(g.indices, i)


def test_tiny_scale_has_no_false_duplicates():
    # at 2^-560 every squared difference underflows float64: unscaled, all distances would be 0 and the
    # estimators' log-ratios infinite; scaled by a power of two they are the distances of the data
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 20))
    for method in ("torch", "kdtree"):
        g = nearest_neighbors(np.ldexp(X, -560), 4, method=method)
        ref = nearest_neighbors(X, 4, method=method)
        assert g.n_dropped == 0 and (g.distances > 0).all()
        np.testing.assert_array_equal(g.indices, ref.indices)
        np.testing.assert_allclose(np.ldexp(g.distances, 560), ref.distances, rtol=1e-15)


@pytest.mark.parametrize("chunk", [50, None])
def test_threads_do_not_change_the_answer(chunk):
    # several Gram blocks shared by threads (each with its own candidate store) or done by one thread;
    # chunk None: the whole Gram matrix, its blocks shared by the threads, then per-row selections
    rng = np.random.default_rng(1)
    X = np.round(rng.normal(size=(700, 30)) * 3)  # integer data: exact ties
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out.append(nearest_neighbors(X, 9, method="torch", chunk_size=chunk, duplicates="keep"))
    finally:
        torch.set_num_threads(before)
    for g in out[1:]:
        np.testing.assert_array_equal(g.distances, out[0].distances)
        np.testing.assert_array_equal(g.indices, out[0].indices)
    d, i = reference(X, 9)
    np.testing.assert_array_equal(out[0].distances, d)
    np.testing.assert_array_equal(out[0].indices, i)


def test_concurrent_calls_restore_the_blas_threads():
    # the float32 products hold numpy's BLAS to one thread per worker; calls from several threads at once
    # must leave the process's setting as it was
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info

    before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    X = np.random.default_rng(2).normal(size=(600, 40))
    with ThreadPoolExecutor(3) as pool:
        graphs = list(pool.map(lambda _: nearest_neighbors(X, 5, method="torch", chunk_size=100), range(6)))
    after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert after == before
    for g in graphs[1:]:
        np.testing.assert_array_equal(g.indices, graphs[0].indices)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), n_const=st.integers(1, 40), value=st.sampled_from([0.0, -3.5, 1e6]))
def test_constant_features_change_nothing(seed, n_const, value):
    """Metamorphic: features with one value for every point add 0 to every distance, so appending them
    (the border pixels of images) leaves the neighbours unchanged; the float64 distances are still the
    brute-force ones over every feature."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(120, 30))
    Xc = np.concatenate([np.full((120, n_const), value), X], axis=1)[:, rng.permutation(30 + n_const)]
    # (C order: the reference's einsum sums a strided layout in another order, a last-bit difference)
    Xc = np.ascontiguousarray(Xc)
    g, gc = nearest_neighbors(X, 7, method="torch"), nearest_neighbors(Xc, 7, method="torch")
    np.testing.assert_array_equal(gc.indices, g.indices)
    np.testing.assert_allclose(gc.distances, g.distances, rtol=1e-14, atol=0)
    d, i = reference(Xc, 7)
    np.testing.assert_array_equal(gc.distances, d)
    np.testing.assert_array_equal(gc.indices, i)


@pytest.mark.parametrize("D", [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 784, 8193, 20001])
def test_compiled_distance_sums_in_einsums_order(D):
    # the re-rank's float64 sums of squares are defined as the reference's (np.einsum of the differences):
    # data spanning many binades make every change of summation order show in the last bits
    from netgeom.dimension import _knn_kernel as kern

    rng = np.random.default_rng(D)
    n = max(4, min(300, 200000 // D))
    X = rng.normal(size=(n, D)) * np.exp2(rng.integers(-30, 30, size=(n, D)))
    Y = rng.normal(size=(n, D)) * np.exp2(rng.integers(-30, 30, size=(n, D)))
    d = (Y - X)[None]
    want = np.einsum("ijk,ijk->ij", d, d)[0]
    got = np.array([kern.sq_dist(X[r], Y[r]) for r in range(n)])
    np.testing.assert_array_equal(got, want)
    # the re-rank kernel (four candidates at a time, in pairs of lanes; float64 or exact float32 gathers),
    # from rows in its layout: every feature, or a subset (the others constant: they add 0 * 0)
    Z = np.concatenate([X, Y])
    cand = np.arange(n, 2 * n)[:, None] + np.zeros(9, dtype=np.int64)
    out = np.empty((n, 9))
    n_keep = np.arange(n) % 10
    slots = np.arange(9)[None, :]
    for features in (np.arange(D), np.flatnonzero(rng.random(D) < 0.7)):
        if features.size == 0:
            continue
        Zs = np.zeros_like(Z)
        Zs[:, features] = Z[:, features]
        d = (Zs[n:] - Zs[:n])[None]
        want = np.sqrt(np.einsum("ijk,ijk->ij", d, d)[0])
        pos, pad, width = kern.pair_layout(D, features)
        assert np.intersect1d(pos, pad).size == 0 and pos.size + pad.size == width
        P = np.full((2 * n, width), np.nan)
        P[:, pos], P[:, pad] = Z[:, features], 0.0
        kern.direct_distances(P, 0, cand, n_keep, 1.0, out)
        np.testing.assert_array_equal(out, np.where(slots < n_keep[:, None], want[:, None], np.inf))
        Z32 = Zs.astype(np.float32)
        d32 = (Z32[n:].astype(np.float64) - Z32[:n])[None]
        want32 = np.sqrt(np.einsum("ijk,ijk->ij", d32, d32)[0])
        P32 = P.astype(np.float32)
        kern.direct_distances(P32, 0, cand, n_keep, 1.0, out)
        np.testing.assert_array_equal(out, np.where(slots < n_keep[:, None], want32[:, None], np.inf))
        # the rows are read at any offset and stride (a row of a larger array)
        P2 = np.zeros((2 * n + 3, width), dtype=np.float32)
        P2[3:] = P32
        kern.direct_distances(P2[3:], 0, cand, n_keep, 1.0, out)
        np.testing.assert_array_equal(out, np.where(slots < n_keep[:, None], want32[:, None], np.inf))


@pytest.mark.parametrize("gather_bytes", [0, 1 << 24])
@pytest.mark.parametrize("n_const", [0, 37])
def test_float32_data_gathered_from_either_copy(monkeypatch, gather_bytes, n_const):
    # images-like data: float32 values (gathered from a float32 copy once the input outgrows the caches,
    # forced here by a zero threshold) with constant borders; coarse levels give exact ties
    import netgeom.dimension.neighbors as nb

    monkeypatch.setattr(nb, "_GATHER_FLOAT64_BYTES", gather_bytes)
    rng = np.random.default_rng(n_const)
    X = (rng.integers(0, 4, size=(150, 61)) / 3).astype(np.float32).astype(np.float64)
    X = np.concatenate([X, np.full((150, n_const), 0.25)], axis=1)[:, rng.permutation(61 + n_const)]
    X = np.ascontiguousarray(X)
    g = nearest_neighbors(X, 6, method="torch", duplicates="keep")
    d, i = reference(X, 6)
    np.testing.assert_array_equal(g.distances, d)
    np.testing.assert_array_equal(g.indices, i)


@pytest.mark.parametrize("n, D, k", [(300, 1, 1), (401, 20, 2)])
def test_kept_duplicates_come_in_index_order(n, D, k):
    # a k-th distance of 0 certifies nothing about which of the tied duplicates come first: the answer must
    # still be the smallest indices (regression: row 0 got [196] instead of [1])
    X = np.ones((n, D))
    g = nearest_neighbors(X, k, method="torch", duplicates="keep")
    d, i = reference(X, k)
    np.testing.assert_array_equal(g.distances, d)
    np.testing.assert_array_equal(g.indices, i)


@pytest.mark.parametrize("kind", ["grid", "ulp", "signs"])
def test_whole_gram_matrix_and_streamed_blocks_agree(monkeypatch, kind):
    """Up to _DENSE_MAX_POINTS points (no chunk_size) the whole Gram matrix is kept and each row selected
    at once; above, or with a chunk_size, its blocks are streamed through per-row heaps. Both are the
    float64 answer, bit for bit."""
    import netgeom.dimension.neighbors as nb

    X = adversarial(np.random.default_rng(7), kind, 400, 12)
    X = X[deduplicate(X)]
    whole = nearest_neighbors(X, 7, method="torch")
    monkeypatch.setattr(nb, "_DENSE_MAX_POINTS", 100)
    streamed = nearest_neighbors(X, 7, method="torch")
    d, i = reference(X, 7)
    for g in (whole, streamed):
        np.testing.assert_array_equal(g.distances, d)
        np.testing.assert_array_equal(g.indices, i)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), rows=st.integers(1, 9), cols=st.integers(1, 90), m=st.integers(1, 40),
       levels=st.sampled_from([2, 5, 1000]), ascending=st.booleans(), on_diagonal=st.booleans())
def test_row_selection_keeps_the_m_smallest(seed, rows, cols, m, levels, ascending, on_diagonal):
    """The compiled per-row selection against a sort: the m smallest scores of each row (its own column
    excluded when the block is on the diagonal), ordered, inf slots where the row has fewer than m, and
    the threshold lowered to the m-th. Few levels: many exact ties at the threshold."""
    from netgeom.dimension import _knn_kernel as kern

    rng = np.random.default_rng(seed)
    n = rows + cols + 3
    sq = rng.integers(0, levels, size=n) / levels
    a = rng.integers(0, n - rows + 1)
    c0 = max(0, min(a - rng.integers(0, rows), n - cols)) if on_diagonal else rng.integers(0, n - cols + 1)
    G = (rng.integers(0, levels, size=(rows, cols)) / (4 * levels)).astype(np.float32)
    hv = np.full((n, m), -7.0)
    hi = np.full((n, m), -7, dtype=np.int64)
    tau = np.full(n, np.inf)
    kern.smallest_in_rows(G, a, c0, sq, hv, hi, tau, ascending)
    for i in range(rows):
        r = a + i
        cols_r = np.arange(c0, c0 + cols)
        s = (sq[r] + sq[cols_r]) - 2.0 * G[i].astype(np.float64)
        keep = cols_r != r
        s, cols_r = s[keep], cols_r[keep]
        w = min(m, s.size)
        got_v, got_i = (hv[r], hi[r]) if ascending else (hv[r, ::-1], hi[r, ::-1])
        np.testing.assert_array_equal(got_v[:w], np.sort(s)[:w])
        assert (got_v[w:] == np.inf).all()
        # the columns hold those scores, each column once
        np.testing.assert_array_equal(s[np.searchsorted(cols_r, got_i[:w])], got_v[:w])
        assert np.unique(got_i[:w]).size == w
        assert tau[r] == (np.sort(s)[m - 1] if w == m else np.inf)
