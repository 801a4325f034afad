"""The kNN's fixed costs at small n: the Gram mirror by 8-row tiles, the cached re-rank layout, the shortcut
of the distances' scaling and tiny-pair checks; each against its plain reference, and the whole call
against brute-force float64 where they are taken."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_neighbors_adversarial import adversarial, reference

import netgeom.dimension.neighbors as nb
from netgeom.dimension import _knn_kernel as kern
from netgeom.dimension.neighbors import nearest_neighbors


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), data=st.data())
def test_mirror_equals_numpy_transpose(n, data):
    a = data.draw(st.integers(0, n - 1))
    b = data.draw(st.integers(a + 1, n))
    c0 = data.draw(st.integers(a, n - 1))
    c1 = data.draw(st.integers(c0 + 1, n))
    if c0 < b:  # (a block on or across the diagonal: the mirror is only asked for blocks above it)
        return
    G = np.random.default_rng(n).random((n, n), dtype=np.float32)
    want = G.copy()
    want[c0:c1, a:b] = G[a:b, c0:c1].T
    kern.mirror(G, a, b, c0, c1)
    np.testing.assert_array_equal(G, want)


def test_pair_layout_cached_by_content():
    rng = np.random.default_rng(0)
    for D in (1, 2, 9, 17, 784):
        for _ in range(3):
            varying = np.flatnonzero(rng.random(D) < 0.7)
            if varying.size == 0:
                varying = np.zeros(1, dtype=np.intp)
            got = nb._pair_layout(D, varying.astype(np.intp))
            again = nb._pair_layout(D, varying.copy().astype(np.int32))  # (equal content, another array)
            want = kern.pair_layout(D, varying)
            for g, a, w in zip(got[:2], again[:2], want[:2]):
                np.testing.assert_array_equal(g, w)
                assert g is a and not g.flags.writeable
            assert got[2] == want[2]
    # another set of the same size gives its own layout
    assert not np.array_equal(nb._pair_layout(9, np.arange(1, 9))[0], nb._pair_layout(9, np.arange(8))[0])


def test_scale_back_and_tiny_shortcuts():
    d = np.array([[0.5, 1.0], [2.0, 3.0]])
    assert nb._scale_back(d, 0) is d
    np.testing.assert_array_equal(nb._scale_back(d, 3), d / 8)
    with pytest.raises(ValueError, match="exceed float64"):
        nb._scale_back(np.array([[1e300]]), -30)
    X = np.array([[0.0, 0.0], [1e-300, 0.0], [1.0, 1.0]])
    rows, cand = np.array([0]), np.array([[1, 2]])
    far = np.array([[1.0, 2.0]])
    nb._refine_tiny(X, rows, cand, far, 0)
    np.testing.assert_array_equal(far, [[1.0, 2.0]])
    tiny = np.array([[0.0, np.sqrt(2.0)]])  # (the first pair's squares underflowed)
    nb._refine_tiny(X, rows, cand, tiny, 0)
    np.testing.assert_array_equal(tiny, [[1e-300, np.sqrt(2.0)]])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["normal", "grid", "signs", "ulp", "constant"]),
    n=st.integers(20, 200),
    D=st.integers(1, 40),
    k=st.integers(1, 9),
    n_dup=st.integers(0, 4),
    log2_scale=st.sampled_from([-1060, -600, -140, 0, 1, 140, 600]),
    threads=st.sampled_from([1, 2]),
)
def test_small_calls_equal_bruteforce(seed, kind, n, D, k, n_dup, log2_scale, threads):
    # the dense path with 1-2 threads (several mirrored blocks), at scales where the distances come back
    # unscaled (t = 0) and where they do not, with tiny pairs, ties and duplicates: bit for bit brute force
    import torch

    rng = np.random.default_rng(seed)
    X = np.ldexp(adversarial(rng, kind, n, D), log2_scale)
    if n_dup:
        X = np.concatenate([X, X[rng.integers(0, n, size=n_dup)]])
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = nearest_neighbors(X, k, method="torch", duplicates="keep")
    finally:
        torch.set_num_threads(before)
    if log2_scale > 300:
        # (the reference's squares would overflow: the distances scale exactly with a power of two of X)
        d, i = reference(np.ldexp(X, -log2_scale), k)
        d = np.ldexp(d, log2_scale)
    else:
        d, i = reference(X, k)
    np.testing.assert_array_equal(g.distances, d)
    ties = d[:, -1] == 0
    np.testing.assert_array_equal(g.indices[~ties], i[~ties])
