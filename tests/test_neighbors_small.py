"""The dense path of the kNN's torch back-end (up to ``_DENSE_MAX_POINTS`` points): its Gram blocks by torch's
oneDNN, each thread's products on that thread alone, against brute-force float64, faiss and the OpenBLAS
blocks it replaces; and the row selection on full rows (a sampled first threshold) against a sort."""

import numpy as np
import pytest
import torch
from _avx512 import as_on_avx512  # noqa: F401 (autouse fixture)
from _platform import OPENMP, X86_LINUX, unavailable
from hypothesis import given, settings
from hypothesis import strategies as st
from test_neighbors_adversarial import adversarial, reference

import netgeom._matmul as mm
import netgeom.dimension.neighbors as nb
from netgeom.dimension.neighbors import nearest_neighbors

_AVX512_KERNELS = nb._avx512_kernels




def _need_onednn() -> None:
    """oneDNN and torch's OpenMP runtime, which CI's machines have (there a missing one fails the test)."""
    if mm._onednn_linear() is None or nb._openmp_runtime() is None:
        unavailable("torch without oneDNN or without its OpenMP runtime: the Gram blocks stay with numpy",
                    expected=X86_LINUX and OPENMP)


def _spy(mp):
    """Record the shape of every Gram block oneDNN computes."""
    calls = []
    real = nb._onednn_gram

    def spy(block, d):
        op = real(block, d)
        if op is None:
            return None

        def counted(*args):
            calls.append(tuple(args[0].shape))
            return op(*args)

        return counted

    mp.setattr(nb, "_onednn_gram", spy)
    return calls


def _images(rng, n, D, n_const):
    """Image-like float32 data: levels k/255 (exact float32 values, many exact ties), constant borders,
    and near-copies of a few images (one pixel moved by one level)."""
    X = rng.integers(0, 256, size=(n, D)) / 255.0
    X[:, rng.permutation(D)[:n_const]] = 0.0
    copies = rng.integers(0, n, size=n // 20)
    X[: n // 20] = X[copies]
    X[np.arange(n // 20), rng.integers(0, D, size=n // 20)] += 1 / 255
    return X.astype(np.float32).astype(np.float64)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["normal", "grid", "signs", "ulp", "constant"]),
    n=st.integers(5, 90),
    D=st.integers(1, 24),
    k=st.integers(1, 8),
    n_dup=st.integers(0, 4),
    log2_scale=st.sampled_from([-1060, -140, 0, 140]),
    threads=st.sampled_from([1, 2, 3]),
    chunk=st.sampled_from([None, None, 4, 16]),
)
def test_onednn_blocks_equal_bruteforce_float64(seed, kind, n, D, k, n_dup, log2_scale, threads, chunk):
    _need_onednn()
    # every size forced through oneDNN (no threshold), 1-3 threads: the whole Gram matrix (blocks padded
    # to one shape) or, with a chunk_size, blocks streamed through the candidate heaps
    rng = np.random.default_rng(seed)
    X = adversarial(rng, kind, n, D)
    if n_dup:
        X = np.concatenate([X, X[rng.integers(0, n, size=n_dup)]])
    X = np.ldexp(X, log2_scale)
    if k >= len(X):
        return
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mm, "_ONEDNN_MIN_MACS", 0)
        calls = _spy(mp)
        torch.set_num_threads(threads)
        try:
            g = nearest_neighbors(X, k, method="torch", duplicates="keep", chunk_size=chunk)
        finally:
            torch.set_num_threads(before)
    assert calls and (chunk is not None or len(set(calls)) == 1)  # (dense: one shape for every block)
    d, i = reference(X, k)
    np.testing.assert_array_equal(g.distances, d)
    # (more than k exact copies of a point: any k of them, at distance 0)
    ties = d[:, -1] == 0
    np.testing.assert_array_equal(g.indices[~ties], i[~ties])


@pytest.mark.parametrize("n, chunk", [(1000, None), (1003, None), (1003, 300)])
def test_onednn_blocks_on_images_equal_bruteforce_faiss_and_openblas(monkeypatch, n, chunk):
    _need_onednn()
    # the benchmark's case in small: oneDNN by its own threshold, rows padded to whole blocks (n = 1003),
    # or blocks streamed through the candidate heaps (chunk_size)
    import faiss

    X = _images(np.random.default_rng(n), n, 360, 40)
    calls = _spy(monkeypatch)
    g = nearest_neighbors(X, 10, duplicates="keep", chunk_size=chunk)
    assert len(calls) >= 7  # (4 diagonal blocks and 3 panels when streamed)
    d11, i11 = reference(X, 11)
    d, i = d11[:, :10], i11[:, :10]
    np.testing.assert_array_equal(g.distances, d)
    ties = d[:, -1] == 0
    np.testing.assert_array_equal(g.indices[~ties], i[~ties])
    # the same answer from OpenBLAS's blocks
    monkeypatch.setattr(nb, "_onednn_gram", lambda block, d: None)
    h = nearest_neighbors(X, 10, duplicates="keep", chunk_size=chunk)
    np.testing.assert_array_equal(h.distances, g.distances)
    np.testing.assert_array_equal(h.indices, g.indices)
    # faiss (float32) agrees where the k-th neighbour is not tied with the next one
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X.astype(np.float32))
    _, If = index.search(X.astype(np.float32), 12)
    clear = d11[:, 9] < d11[:, 10] * (1 - 1e-6)
    assert clear.sum() > n // 2
    for r in np.flatnonzero(clear):
        assert set(g.indices[r]) == set(If[r][If[r] != r][:10])


def test_callers_openmp_threads_restored():
    _need_onednn()
    # the caller's products run on it alone during the call; its torch thread count comes back after
    X = _images(np.random.default_rng(3), 1000, 300, 0)
    before = torch.get_num_threads()
    nearest_neighbors(X, 5)
    assert torch.get_num_threads() == before


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), cols=st.integers(100, 3000), m=st.sampled_from([1, 7, 30, 40]),
       levels=st.sampled_from([2, 5, 50, 10**6]), ascending=st.booleans())
def test_row_selection_on_long_rows(seed, cols, m, levels, ascending):
    """The selection over full rows (a sampled threshold first, then a bisection over the compacted
    scores, a rank sort) against a sort, on rows long enough to be sampled with a stride; few levels give
    many exact ties at the threshold (then a mergesort)."""
    from netgeom.dimension import _knn_kernel as kern

    rng = np.random.default_rng(seed)
    rows = 3
    n = cols
    a = int(rng.integers(0, n - rows + 1))
    sq = rng.integers(0, levels, size=n) / levels
    G = (rng.integers(0, levels, size=(rows, cols)) / (4 * levels)).astype(np.float32)
    hv = np.full((n, m), -7.0)
    hi = np.full((n, m), -7, dtype=np.int64)
    tau = np.full(n, np.inf)
    kern.smallest_in_rows(G, a, 0, sq, hv, hi, tau, ascending)
    for i in range(rows):
        r = a + i
        s = (sq[r] + sq) - 2.0 * G[i].astype(np.float64)
        s[r] = np.inf
        order = np.argsort(s, kind="stable")[:m]
        got_v, got_i = (hv[r], hi[r]) if ascending else (hv[r, ::-1], hi[r, ::-1])
        np.testing.assert_array_equal(got_v, s[order])
        # equal scores in column order, as a stable sort gives them (the threshold's ties may differ)
        last = s[order[-1]]
        np.testing.assert_array_equal(got_i[s[order] < last], order[s[order] < last])
        assert (s[got_i] == got_v).all() and np.unique(got_i).size == m
        assert tau[r] == last


def _knn_in_child(X):
    return nearest_neighbors(X, 5).indices


def test_helpers_shared_across_calls_threads_and_a_forked_child():
    # the helper threads are kept for the process: calls from several threads share them, and a forked
    # child (which inherits no threads) starts its own
    import multiprocessing
    from concurrent.futures import ThreadPoolExecutor

    X = _images(np.random.default_rng(4), 600, 80, 5)
    want = nearest_neighbors(X, 5).indices
    with ThreadPoolExecutor(3) as pool:
        for got in pool.map(lambda _: nearest_neighbors(X, 5).indices, range(6)):
            np.testing.assert_array_equal(got, want)
    if "fork" not in multiprocessing.get_all_start_methods():
        return
    with multiprocessing.get_context("fork").Pool(1) as child:
        np.testing.assert_array_equal(child.apply_async(_knn_in_child, (X,)).get(timeout=120), want)


def test_a_child_forked_while_the_parent_holds_the_knn_locks_is_not_stuck():
    # a fork while another thread of the parent is inside a kNN (starting its helpers, or in a limited BLAS
    # section) hands the child those locks held; the child's own kNN must still run
    import multiprocessing

    from netgeom.dimension import neighbors as N

    if "fork" not in multiprocessing.get_all_start_methods():
        unavailable("no fork start method on this platform", expected=X86_LINUX)
    X = _images(np.random.default_rng(5), 300, 40, 5)
    want = nearest_neighbors(X, 5).indices
    with N._SHARED[0], N._BLAS_LOCK:
        with multiprocessing.get_context("fork").Pool(1) as child:
            got = child.apply_async(_knn_in_child, (X,))
            np.testing.assert_array_equal(got.get(timeout=20), want)


def test_no_onednn_blocks_without_avx512(monkeypatch):
    # without AVX-512 oneDNN's products are the slower ones: every block goes to numpy's BLAS, even where
    # the size threshold would take oneDNN, with the same (brute-force) answer
    _need_onednn()
    X = _images(np.random.default_rng(5), 600, 200, 20)
    monkeypatch.setattr(mm, "_ONEDNN_MIN_MACS", 0)
    calls = _spy(monkeypatch)
    g = nearest_neighbors(X, 6, duplicates="keep")
    assert calls
    monkeypatch.setattr(nb, "_avx512_kernels", lambda: False)
    del calls[:]
    for chunk in (None, 150):
        h = nearest_neighbors(X, 6, duplicates="keep", chunk_size=chunk)
        np.testing.assert_array_equal(h.distances, g.distances)
        np.testing.assert_array_equal(h.indices, g.indices)
    assert not calls
    d, i = reference(X, 6)
    np.testing.assert_array_equal(g.distances, d)


def test_avx512_kernels_follow_torch():
    # (the module's fixture replaced nb._avx512_kernels; the function itself was kept before)
    _AVX512_KERNELS.cache_clear()
    assert _AVX512_KERNELS() == torch.backends.cpu.get_cpu_capability().startswith("AVX512")
