import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from netgeom.dimension.neighbors import deduplicate, nearest_neighbors


def brute_dist(X):
    D = np.empty((len(X), len(X)))
    for a in range(0, len(X), 100):  # direct differences, in blocks to bound memory
        diff = X[a : a + 100, None, :] - X[None, :, :]
        D[a : a + 100] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return D


def brute_knn(X, k):
    D = brute_dist(X)
    np.fill_diagonal(D, np.inf)
    i = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, i, 1), i


def assert_same_knn(g, X, k):
    d, i = brute_knn(X, k)
    np.testing.assert_allclose(g.distances, d, rtol=1e-12, atol=0)
    # indices may differ only where distances tie exactly
    diff = g.indices != i
    if diff.any():
        D = brute_dist(X)
        rows, cols = np.nonzero(diff)
        np.testing.assert_array_equal(D[rows, g.indices[rows, cols]], D[rows, i[rows, cols]])


@pytest.mark.parametrize("method", ["torch", "kdtree"])
def test_matches_bruteforce_with_near_duplicates(method):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 40)) * 100 + 1000
    X[1] = X[0] + 1e-6
    X[2] = X[0] - 1e-6 * rng.normal(size=40)
    X[3] = X[1] + 1e-7
    g = nearest_neighbors(X, 7, method=method, **({"chunk_size": 64} if method == "torch" else {}))
    assert_same_knn(g, X, 7)
    assert g.n_dropped == 0 and g.method == method


def test_plain_float32_expansion_is_wrong_here():
    # the case the float64 re-ranking exists for: float32 ‖x‖²+‖y‖²−2x·y cannot order these neighbours
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 30)) * 10 + 100
    X[1:6] = X[0] + 1e-5 * rng.normal(size=(5, 30))
    X32 = torch.from_numpy(X.astype(np.float32))
    G = (X32 * X32).sum(1)[:, None] + (X32 * X32).sum(1)[None, :] - 2 * X32 @ X32.T
    G.fill_diagonal_(float("inf"))
    naive = torch.topk(G, 3, largest=False).indices.numpy()
    _, i = brute_knn(X, 3)
    assert (naive[:6] != i[:6]).any()
    assert_same_knn(nearest_neighbors(X, 3, method="torch"), X, 3)


def test_uncertified_rows_fall_back_exactly():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 30)) * 10 + 100
    X[:60] = X[0] + 1e-7 * rng.normal(size=(60, 30))  # a tight cluster: float32 cannot separate it
    g = nearest_neighbors(X, 7, method="torch", n_extra=2)
    assert g.n_fallback > 0
    assert_same_knn(g, X, 7)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(10, 80),
    D=st.integers(1, 40),
    k=st.integers(1, 8),
    chunk=st.integers(1, 50),
    seed=st.integers(0, 10_000),
    grid=st.booleans(),
    log2_scale=st.sampled_from([-133, -83, 0, 83, 120]),
    offset=st.sampled_from([0.0, 2.0**20]),
)
def test_bruteforce_property(n, D, k, chunk, seed, grid, log2_scale, offset):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    if grid:  # many exact ties
        X = np.round(X * 2)
    # extreme magnitudes (float32 under/overflow, ~1e-40 … 1e36) and a large common offset: the certificate
    # must hold; powers of two keep the grid's exact ties exact
    X = np.ldexp(X + offset, log2_scale)
    keep = deduplicate(X)
    if k >= len(keep):
        return
    for method in ("torch", "kdtree"):
        g = nearest_neighbors(X, k, method=method, **({"chunk_size": chunk} if method == "torch" else {}))
        assert g.n_dropped == n - len(keep)
        np.testing.assert_array_equal(g.kept, keep)
        assert_same_knn(g, X[keep], k)


def test_duplicates_policies():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(100, 20))
    Xd = np.concatenate([X, X[:7], -0.0 * X[:1] + X[:1]])
    g = nearest_neighbors(Xd, 5)
    assert g.n_dropped == 8 and g.n == 100
    np.testing.assert_array_equal(g.kept, np.arange(100))
    np.testing.assert_array_equal(g.distances, nearest_neighbors(X, 5).distances)
    with pytest.raises(ValueError, match="duplicate"):
        nearest_neighbors(Xd, 5, duplicates="error")
    gk = nearest_neighbors(Xd, 5, duplicates="keep")
    assert gk.n == 108 and (gk.distances[:, 0] == 0).sum() == 15


def test_negative_zero_is_a_duplicate():
    X = np.array([[0.0, 1.0], [-0.0, 1.0], [2.0, 3.0], [5.0, 1.0]])
    assert list(deduplicate(X)) == [0, 2, 3]


@pytest.mark.parametrize(
    "X,k,err",
    [
        (np.array([1.0, 2.0, 3.0]), 1, ValueError),
        (np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), 1, ValueError),
        (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), 1, ValueError),
        (np.eye(3), 3, ValueError),
        (np.eye(3), 0, ValueError),
        (np.concatenate([np.eye(3)] * 3), 3, ValueError),
        (np.eye(3), 1.5, TypeError),
    ],
)
def test_bad_input(X, k, err):
    with pytest.raises(err):
        nearest_neighbors(X, k)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused_by_the_torch_backend(bad):
    # the torch back-end checks X in its first (parallel) pass over it: every row range, any position
    X = np.random.default_rng(3).normal(size=(40, 30))
    for r, c in [(0, 0), (39, 29), (21, 7)]:
        Y = X.copy()
        Y[r, c] = bad
        with pytest.raises(ValueError, match="1 non-finite"):
            nearest_neighbors(Y, 3, method="torch")


def test_bad_options():
    X = np.eye(5)
    with pytest.raises(ValueError, match="method"):
        nearest_neighbors(X, 2, method="ball")
    with pytest.raises(ValueError, match="duplicates"):
        nearest_neighbors(X, 2, duplicates="ignore")


def test_truncate_and_input_not_mutated():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(60, 25))
    X0 = X.copy()
    g = nearest_neighbors(torch.from_numpy(X), 6)
    np.testing.assert_array_equal(X, X0)
    g3 = g.truncate(3)
    np.testing.assert_array_equal(g3.distances, g.distances[:, :3])
    assert g.to_dict()["k"] == 6


# ---------------------------------------------------------------- adversarial scales for the certificate
@pytest.mark.parametrize("scale", [1e-25, 1e-40, 1e30, 1e36])
def test_certificate_sound_at_extreme_scales(scale):
    # float32 squares/products underflow (1e-25, 1e-40) or overflow to inf/NaN (1e30, 1e36): the scores are
    # then meaningless, and the certificate must not vouch for them
    rng = np.random.default_rng(0)
    X = scale * rng.normal(size=(1000, 17))
    g = nearest_neighbors(X, 5, method="torch")
    assert_same_knn(g, X, 5)


def test_certificate_sound_with_mixed_magnitudes():
    # two nearly equal points of norm 3e19 (‖x‖² overflows float32 → NaN scores) among points of norm 1e16
    rng = np.random.default_rng(6)
    p = np.full(17, 3e19 / np.sqrt(17))
    X = np.concatenate([1e16 * rng.normal(size=(60, 17)), [p, p + 1e12 * rng.normal(size=17)]])
    g = nearest_neighbors(X, 5, method="torch")
    assert_same_knn(g, X, 5)
    assert g.indices[60, 0] == 61 and g.indices[61, 0] == 60


@pytest.mark.parametrize("method", ["torch", "kdtree"])
def test_float64_overflow_is_refused(method):
    # entries of 1e200 are answered (the differences are scaled by a power of two before they are squared),
    # exactly 2^664 times the answer for the data 2^664 times smaller
    X = np.random.default_rng(7).normal(size=(50, 20))
    g, h = nearest_neighbors(np.ldexp(X, 664), 3, method=method), nearest_neighbors(X, 3, method=method)
    np.testing.assert_array_equal(g.indices, h.indices)
    np.testing.assert_array_equal(g.distances, np.ldexp(h.distances, 664))
    # only differences (or distances) beyond float64's range are refused
    X[0, 3], X[1, 3] = 1.5e308, -1.5e308
    with pytest.raises(ValueError, match="overflow"):
        nearest_neighbors(X, 3, method=method)
    X[0, 3], X[1, 3] = 1.5e308, 0.0
    X[0, 4], X[1, 4] = 1.5e308, 0.0
    with pytest.raises(ValueError, match="exceed float64"):
        nearest_neighbors(X[:, :5] if method == "kdtree" else X, 49, method=method)


def test_many_exact_duplicates_come_in_index_order():
    # rows whose k nearest are all at distance 0: which duplicates come first is decided by index, which the
    # float32 candidates cannot certify (they may miss a smaller index), so exactly those rows are rescanned
    rng = np.random.default_rng(8)
    X = np.concatenate([np.zeros((150, 30)), 10 + rng.normal(size=(100, 30))])
    g = nearest_neighbors(X, 6, method="torch", duplicates="keep")
    assert g.n_fallback <= 150
    d, i = brute_knn(X, 6)
    np.testing.assert_array_equal(g.indices[:150], i[:150])
    assert_same_knn(g, X, 6)
    assert nearest_neighbors(X, 6, method="torch").n_dropped == 149


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_reduced_matmul_precision_is_neither_slow_nor_leaked(precision):
    # under TF32/bf16 the certificate failed every row (exact rescan of all rows); the kNN now runs its
    # matmul at full float32 and restores the caller's setting
    X = np.random.default_rng(9).normal(size=(300, 100))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        g = nearest_neighbors(X, 5, method="torch")
        assert torch.get_float32_matmul_precision() == precision
    finally:
        torch.set_float32_matmul_precision(before)
    assert g.n_fallback == 0
    assert_same_knn(g, X, 5)


# ------------------------------------------------------------------------------------------- blocked scores
@pytest.mark.parametrize("float32_data", [True, False])
def test_near_ties_equal_bruteforce_float64(float32_data):
    # neighbours of point 0 on a sphere, at radii that differ by ~1e-13 relative: float32 sees them as one
    # distance, float64 must order them exactly; with float32-representable data the gather takes the
    # float32 copy, whose values are the same
    rng = np.random.default_rng(3)
    D = 24
    X = rng.normal(size=(400, D)) * 3
    dirs = rng.normal(size=(40, D))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    X[1:41] = X[0] + dirs * (1 + 1e-13 * rng.integers(0, 5, size=(40, 1)))
    X[41:45] = X[0] + np.eye(D)[:4]  # exact ties at distance 1 (when the data are exact)
    if float32_data:
        X = X.astype(np.float32).astype(np.float64)
    for chunk in (None, 7, 64):
        g = nearest_neighbors(X, 12, method="torch", chunk_size=chunk)
        assert_same_knn(g, X, 12)


def test_panels_in_many_column_chunks(monkeypatch):
    import netgeom.dimension.neighbors as nb

    rng = np.random.default_rng(4)
    X = rng.normal(size=(500, 30))
    X[100:110] = X[5] + 1e-9 * rng.normal(size=(10, 30))
    want = nearest_neighbors(X, 9, method="torch")
    monkeypatch.setattr(nb, "_PANEL_SCORES", 64)  # forces one column chunk per block width
    for chunk in (13, 50, 499):
        g = nearest_neighbors(X, 9, method="torch", chunk_size=chunk)
        assert_same_knn(g, X, 9)
        np.testing.assert_array_equal(g.distances, want.distances)


def test_equal_to_faiss_flat_index_away_from_ties():
    import faiss
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 64)).astype(np.float32)
    index = faiss.IndexFlatL2(64)
    index.add(X)
    _, I = index.search(X, 11)
    g = nearest_neighbors(X.astype(np.float64), 10, method="torch")
    # faiss's lists include the point itself first (no exact duplicates here)
    assert (I[:, 0] == np.arange(len(X))).all()
    assert all(set(a) == set(b) for a, b in zip(g.indices, I[:, 1:]))
