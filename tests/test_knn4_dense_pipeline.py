"""The dense path of the kNN's torch back-end as one phase (float32 rows, Gram blocks of ~256 rows, the norms'
maximum and the pieces of rows, each item waiting only for those it reads), the compiled kernels it now
uses (eight re-rank distances at a time, column statistics two rows per sweep) and the row selection's
sampled threshold: against brute-force float64 and numpy references, on both sides of every size where
the blocking changes, with one to three threads, exact ties and duplicate points."""

import functools
import math

import numpy as np
import pytest
import torch
from _avx512 import as_on_avx512  # noqa: F401 (autouse fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_neighbors_adversarial import adversarial, reference
from test_neighbors_small import _need_onednn
from test_neighbors_small import _spy as _shapes

import netgeom._matmul as mm
import netgeom.dimension.neighbors as nb
from netgeom.dimension import _knn_kernel as kern
from netgeom.dimension.neighbors import nearest_neighbors


def _with_threads(threads, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _tied_images(rng, n, D):
    """Coarse levels (exact float32 values, many exact ties) with constant features and exact duplicates."""
    X = rng.integers(0, 4, size=(n, D)) / 3.0
    X[:, rng.permutation(D)[: D // 8]] = 0.5
    X[: n // 50] = X[rng.integers(n // 50, n, size=n // 50)]
    return X


def _assert_reference(g, X, k):
    d, i = reference(X, k)
    np.testing.assert_array_equal(g.distances, d)
    ties = d[:, -1] == 0  # (more than k exact copies of a point: any k of them, at distance 0)
    np.testing.assert_array_equal(g.indices[~ties], i[~ties])


@functools.cache
def _case(n, D):
    X = _tied_images(np.random.default_rng(n), n, D)
    return X, reference(X, 7)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1024, 1025])
def test_block_rows_either_side_of_four_blocks(monkeypatch, n, threads):
    # 1024 points: four blocks a side (256 rows); 1025: five (205 rows), the blocks of ~256 rows; both
    # by oneDNN (420 varying features), with exact ties and duplicates; equal to brute force
    _need_onednn()
    X, (d, i) = _case(n, 480)
    shapes = _shapes(monkeypatch)
    g = _with_threads(threads, lambda: nearest_neighbors(X, 7, duplicates="keep"))
    sides = 4 if n == 1024 else 5
    assert set(shapes) == {(-(-n // sides), 480 - 480 // 8)}
    assert len(shapes) == sides * (sides + 1) // 2
    np.testing.assert_array_equal(g.distances, d)
    ties = d[:, -1] == 0
    np.testing.assert_array_equal(g.indices[~ties], i[~ties])


def test_small_blocks_fall_back_to_the_old_blocking(monkeypatch):
    # 1200 points of 200 features: blocks of 240 rows are too small for oneDNN (< 2^24 multiply-adds), so
    # the four-a-side blocks (300 rows) are taken, by oneDNN
    _need_onednn()
    X = _tied_images(np.random.default_rng(7), 1200, 229)
    shapes = _shapes(monkeypatch)
    g = _with_threads(2, lambda: nearest_neighbors(X, 5, duplicates="keep"))
    assert set(shapes) == {(300, 229 - 229 // 8)}
    _assert_reference(g, X, 5)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["normal", "grid", "signs", "ulp", "constant"]),
    n=st.integers(20, 160),
    D=st.integers(1, 12),
    k=st.integers(1, 9),
    n_dup=st.integers(0, 5),
    threads=st.sampled_from([1, 2, 3]),
    rows=st.sampled_from([5, 16, 40]),
    onednn=st.booleans(),
)
def test_many_blocks_and_ranges_in_one_phase(seed, kind, n, D, k, n_dup, threads, rows, onednn):
    # tiny blocks (a few rows) and many pieces: blocks wait for the float32 rows they read, pieces for
    # their blocks and the norms; by oneDNN (forced) or numpy's BLAS, 1-3 threads; equal to brute force
    if onednn:
        _need_onednn()
    rng = np.random.default_rng(seed)
    X = adversarial(rng, kind, n, D)
    if n_dup:
        X = np.concatenate([X, X[rng.integers(0, n, size=n_dup)]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nb, "_GRAM_BLOCK_ROWS", rows)
        mp.setattr(mm, "_ONEDNN_MIN_MACS", 0 if onednn else 1 << 62)
        g = _with_threads(threads, lambda: nearest_neighbors(X, k, method="torch", duplicates="keep"))
    _assert_reference(g, X, k)


def test_an_error_in_a_block_reaches_the_caller(monkeypatch):
    # an exception inside one item of the phase is raised by the call (no item waits forever for it)
    X = np.random.default_rng(0).normal(size=(300, 20))
    real = nb._gram_tasks

    def broken(*args, **kw):
        G, tasks = real(*args, **kw)

        def fail():
            raise RuntimeError("block failed")

        t = len(tasks) // 2
        a, b, c0, c1, _ = tasks[t]
        tasks[t] = (a, b, c0, c1, fail)
        return G, tasks

    monkeypatch.setattr(nb, "_gram_tasks", broken)
    for threads in (1, 2, 3):
        with pytest.raises(RuntimeError, match="block failed"):
            _with_threads(threads, lambda: nearest_neighbors(X, 5))


@pytest.mark.parametrize("D", [2, 9, 784])
def test_eight_candidate_distances_equal_einsum(D):
    # the re-rank's distances, eight candidates at a time and four for the rest: every count 0..19 of kept
    # candidates per row, float64 and exact float32 rows, bit for bit np.einsum of the differences
    rng = np.random.default_rng(D)
    n, m = 40, 20
    X = rng.normal(size=(n, D)) * np.exp2(rng.integers(-20, 20, size=(n, D)))
    X32 = X.astype(np.float32).astype(np.float64)
    cand = rng.integers(0, n, size=(n, m))
    n_keep = np.arange(n) % m
    pos, pad, width = kern.pair_layout(D, np.arange(D))
    for Z, dtype in ((X, np.float64), (X32, np.float32)):
        P = np.zeros((n, width), dtype=dtype)
        P[:, pos] = Z
        # each difference scaled by a power of two before it is squared (the spread scaling: 2^-40 sends
        # some squares below float64's normal range, where the order still decides the last bits)
        for s in (None, 0, -3, 25, -40):
            out = np.full((n, m), -1.0)
            sc = None if s is None else math.ldexp(1.0, s)
            s = s or 0
            kern.direct_distances(P, 0, cand, n_keep, sc, out)
            d = np.ldexp(Z[cand] - Z[:, None, :], s)
            want = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
            slots = np.arange(m)[None, :]
            np.testing.assert_array_equal(out, np.where(slots < n_keep[:, None], want, np.inf))
            # the same by gathered rows
            rows = rng.permutation(n)
            out2 = np.full((n, m), -1.0)
            kern.gathered_distances(P, rows, cand[rows], n_keep[rows], sc, out2)
            np.testing.assert_array_equal(out2, out[rows])


@pytest.mark.parametrize("rows", [(0, 1), (0, 2), (3, 10), (0, 57)])
def test_column_statistics_against_numpy(rows):
    # per-feature sum (in row order), minimum, maximum, float32 exactness and the count of non-finite
    # entries; a feature of huge finite values whose sum overflows has none
    rng = np.random.default_rng(sum(rows))
    X = rng.normal(size=(57, 11))
    X[:, 3] = rng.integers(0, 9, size=57) / 8  # exact float32
    X[::2, 4] = 1e308
    X[5, 6], X[7, 6], X[8, 7], X[9, 8] = np.nan, np.inf, -np.inf, np.nan
    r0, r1 = rows
    total, lo, hi, exact, bad = kern.column_stats(X, r0, r1)
    block = X[r0:r1]
    want_total = np.zeros(11)
    with np.errstate(over="ignore", invalid="ignore"):  # (the sums of 1e308 overflow, inf - inf)
        for row in block:  # row by row: numpy's sum would add pairwise
            want_total += row
        as32 = block.astype(np.float32)
    np.testing.assert_array_equal(total, want_total)
    finite = np.isfinite(block)
    for j in range(11):
        if finite[:, j].all():
            assert lo[j] == block[:, j].min() and hi[j] == block[:, j].max()
    assert bad == int((~finite).sum())
    assert exact == bool((as32 == block).all())
    Y = X[:, [3]]
    assert kern.column_stats(Y, r0, r1)[3]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), cols=st.integers(65, 2500), m=st.sampled_from([1, 20, 30, 60]),
       levels=st.sampled_from([3, 1000, 10**6]))
def test_row_selection_against_a_sort_on_full_rows(seed, cols, m, levels):
    # the dense path's selection on full rows, own column included (its score never kept), the sampled
    # first threshold aimed at 3w scores: the m smallest by (score, column), as a stable sort gives them
    rng = np.random.default_rng(seed)
    n = cols
    sq = rng.integers(0, levels, size=n) / levels
    rows = np.sort(rng.choice(n, size=min(n, 4), replace=False))
    G = (rng.integers(0, levels, size=(len(rows), cols)) / (4 * levels)).astype(np.float32)
    hv = np.empty((n, m))
    hi = np.empty((n, m), dtype=np.int64)
    tau = np.full(n, np.inf)
    for i, r in enumerate(rows):
        kern.smallest_in_rows(G[i : i + 1], int(r), 0, sq, hv, hi, tau, True)
        s = (sq[r] + sq) - 2.0 * G[i].astype(np.float64)
        s[r] = np.inf
        order = np.argsort(s, kind="stable")[:m]
        np.testing.assert_array_equal(hv[r], s[order])
        last = s[order[-1]]
        np.testing.assert_array_equal(hi[r][s[order] < last], order[s[order] < last])
        assert (s[hi[r]] == hv[r]).all() and np.unique(hi[r]).size == m and r not in hi[r]
