"""Exact kNN at the data's spread: distances from the float64 differences, scaled by a power of two chosen
from the spread (not from max|x|), so tiny spreads next to large coordinates neither underflow to 0 nor change
under a translation; one tie rule, (distance, index), on both back-ends; torch-only arguments refused by the
k-d tree; every estimator answers for data whose squares would overflow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import netgeom as ng
from netgeom.dimension import LocalPCA, id_scale_sweep, nearest_neighbors
from netgeom.dimension.neighbors import deduplicate


def spread_brute(X: np.ndarray, k: int):
    """The defined answer, pair by pair: the differences ``x_j − x_i`` scaled by ``2^t`` (the largest feature
    range brought to [0.5, 1), or left alone where it lies in [0.5, 2^400)), squares summed by
    ``np.einsum``; a pair whose scaled distance lies below 2^-480 is recomputed with its own power of two
    (its largest difference to [0.5, 1)); rows ordered by (distance, index), self excluded."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    R = float((X.max(0) - X.min(0)).max())
    t = -math.frexp(R)[1] if R > 0 else 0
    t = 0 if -400 < t < 0 else t  # (spreads in [0.5, 2^400) are left unscaled)
    D = np.empty((n, n))
    for i in range(n):
        d = X - X[i]
        s = np.ldexp(d, t)
        v = np.sqrt(np.einsum("ij,ij->i", s, s))
        for j in np.flatnonzero(v < 2.0**-480):
            m = float(np.abs(d[j]).max())
            if m == 0:
                v[j] = 0.0
                continue
            e = math.frexp(m)[1]
            w = np.ldexp(d[j : j + 1], -e)
            v[j] = math.ldexp(math.sqrt(np.einsum("ij,ij->i", w, w)[0]), e + t)
        D[i] = v
    np.fill_diagonal(D, np.inf)
    idx = np.array([np.lexsort((np.arange(n), D[i]))[:k] for i in range(n)], dtype=np.int64)
    with np.errstate(under="ignore"):
        return np.ldexp(np.take_along_axis(D, idx, 1), -t), idx


def _both(X, k, chunk=None, **kw):
    yield nearest_neighbors(X, k, method="kdtree", **kw)
    yield nearest_neighbors(X, k, method="torch", chunk_size=chunk, **kw)


def _tiny_cloud():
    rng = np.random.default_rng(0)
    Z = np.zeros((300, 20))
    Z[:, 17:] = rng.normal(size=(300, 3)) * 1e-160
    Zt = Z.copy()
    Zt[:, :17] += 1.0  # every pairwise difference bit-identical
    return Z, Zt


@pytest.mark.parametrize("method", ["kdtree", "torch"])
def test_translation_leaving_differences_identical_changes_nothing(method):
    # 1e-160 spreads: squares of the differences underflowed when the scale came from max|x| = 1 (2.4 %
    # distance changes, 11 rows with other neighbours)
    Z, Zt = _tiny_cloud()
    g0, g1 = nearest_neighbors(Z, 10, method=method), nearest_neighbors(Zt, 10, method=method)
    np.testing.assert_array_equal(g0.distances, g1.distances)
    np.testing.assert_array_equal(g0.indices, g1.indices)
    d, i = spread_brute(Zt, 10)
    np.testing.assert_array_equal(g1.distances, d)
    np.testing.assert_array_equal(g1.indices, i)


def test_estimators_translation_invariant_at_tiny_spread():
    Z, Zt = _tiny_cloud()
    for est in (ng.MLE(k=10), ng.TwoNN(), ng.TwoNN(fit="mle")):
        assert est.fit(Z).dimension_ == est.fit(Zt).dimension_


def _near_copies():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 20))
    X[0, 3] = 0.0
    for j, delta in ((1, 3e-170), (2, 1e-170), (3, 2e-165)):
        X[j] = X[0]
        X[j, 3] += delta
    return X


@pytest.mark.parametrize("method", ["kdtree", "torch"])
@pytest.mark.parametrize("duplicates", ["drop", "error", "keep"])
def test_distinct_rows_1e170_apart_are_not_duplicates(method, duplicates):
    # they came out at distance 0, ordered by index, and duplicates="error" reported "0 exact duplicate rows"
    X = _near_copies()
    g = nearest_neighbors(X, 3, method=method, duplicates=duplicates)
    assert g.n_dropped == 0
    np.testing.assert_array_equal(g.indices[0], [2, 1, 3])
    np.testing.assert_array_equal(g.distances[0], [1e-170, 3e-170, 2e-165])  # one differing feature: exact
    d, i = spread_brute(X, 3)
    np.testing.assert_array_equal(g.distances, d)
    np.testing.assert_array_equal(g.indices, i)


def test_estimators_accept_near_copies_and_name_real_duplicates():
    X = _near_copies()
    assert np.isfinite(ng.MLE(k=3).fit(X).dimension_) and np.isfinite(ng.TwoNN().fit(X).dimension_)
    Xd = np.vstack([X, X[5:7]])
    for method in ("kdtree", "torch"):
        with pytest.raises(ValueError, match="2 exact duplicate row"):
            nearest_neighbors(Xd, 3, method=method, duplicates="error")
    g = nearest_neighbors(Xd, 3, duplicates="keep")
    with pytest.raises(ValueError, match="exact duplicate rows, kept by duplicates='keep'"):
        ng.MLE(k=3).fit(neighbors=g)


def _lattice(sides):
    return np.stack(np.meshgrid(*[np.arange(s) for s in sides], indexing="ij"), -1).reshape(-1, len(sides))


@pytest.mark.parametrize("k", [3, 6, 9])
def test_backends_agree_on_lattice_ties(k):
    # the k-d tree returned other indices among tied neighbours (65 of 144 rows of a 12 x 12 grid, k = 3)
    for G in (_lattice((12, 12)).astype(float), _lattice((6, 6, 6)).astype(float)):
        d, i = spread_brute(G, k)
        for g in _both(G, k):
            np.testing.assert_array_equal(g.distances, d)
            np.testing.assert_array_equal(g.indices, i)


def test_local_pca_maxgap_same_on_both_backends():
    G = _lattice((6, 6, 6)).astype(float)
    a, b = (LocalPCA(k=9, rule="maxgap", knn_method=m).fit(G).dimension_ for m in ("kdtree", "torch"))
    assert a == b == 2.0


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["lattice", "integer", "binary", "tiny"]),
    seed=st.integers(0, 10_000),
    k=st.integers(1, 8),
    chunk=st.sampled_from([None, 7, 33]),
    log2_scale=st.sampled_from([-1060, -600, 0, 600, 1000]),
    keep=st.booleans(),
)
def test_both_backends_equal_bruteforce(kind, seed, k, chunk, log2_scale, keep):
    rng = np.random.default_rng(seed)
    if kind == "lattice":
        X = _lattice(rng.integers(2, 6, size=rng.integers(1, 4))).astype(float)
    elif kind == "integer":
        X = rng.integers(-3, 4, size=(rng.integers(5, 70), rng.integers(1, 30))).astype(float)
    elif kind == "binary":
        X = rng.integers(0, 2, size=(rng.integers(5, 70), rng.integers(1, 40))).astype(float)
    else:  # spreads far below large, partly constant coordinates
        X = rng.normal(size=(rng.integers(5, 70), rng.integers(2, 25)))
        X = np.round(X * 4) * 2.0**-700 + (rng.random(X.shape[1]) < 0.5)
    X = X[rng.permutation(len(X))]
    if kind != "tiny":
        # powers of two: exact, ties stay ties (down to subnormal spreads and up to 2^1000)
        X = np.ldexp(X, log2_scale)
    n_distinct = len(deduplicate(X))
    n = len(X) if keep else n_distinct
    if k >= n or (log2_scale > 0 and kind != "tiny" and np.abs(X).max() * math.sqrt(X.shape[1]) > 1e307):
        return
    Xr = X if keep else X[deduplicate(X)]
    d, i = spread_brute(Xr, k)
    for g in _both(X, k, chunk, duplicates="keep" if keep else "drop"):
        assert g.n_dropped == len(X) - n
        np.testing.assert_array_equal(g.distances, d)
        np.testing.assert_array_equal(g.indices, i)


def test_torch_only_arguments_refused_by_the_kdtree():
    X = np.random.default_rng(0).normal(size=(50, 3))
    for kw in ({"chunk_size": 7}, {"n_extra": 3}, {"chunk_size": 7, "n_extra": 0}):
        with pytest.raises(ValueError, match="torch back-end only"):
            nearest_neighbors(X, 5, method="kdtree", **kw)
        with pytest.raises(ValueError, match="chosen by method='auto'"):
            nearest_neighbors(X, 5, **kw)
        g = nearest_neighbors(X, 5, method="torch", **kw)
        np.testing.assert_array_equal(g.indices, nearest_neighbors(X, 5).indices)


def test_every_estimator_answers_for_huge_data():
    # ×2^510 (~3e153): squares of the coordinates overflow float64; LocalPCA, the scale sweep and the
    # representation dimension refused such data ("rescale X"), MLE and TwoNN did not
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3)) @ rng.normal(size=(3, 12)) + 0.05 * rng.normal(size=(300, 12))
    Xb = np.ldexp(X, 510)
    for rule in ("fo", "maxgap", "participation_ratio"):
        a, b = LocalPCA(k=20, rule=rule).fit(X), LocalPCA(k=20, rule=rule).fit(Xb)
        np.testing.assert_array_equal(a.dimension_pw_, b.dimension_pw_)
        np.testing.assert_array_equal(np.ldexp(a.spectra_, 1020), b.spectra_)
    r0, r1 = (id_scale_sweep(Y, ks=(5, 10), halvings=1, methods=("mle", "twonn", "lpca")) for Y in (X, Xb))
    assert r0.mle == r1.mle and r0.twonn == r1.twonn and r0.lpca == r1.lpca
    net = torch.nn.Sequential(torch.nn.Linear(12, 16, bias=False), torch.nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.ldexp(torch.round(net[0].weight * 8), torch.tensor(-3)))
    X8 = np.round(X * 8) / 8
    a, b = (ng.representation_dimension(net, torch.from_numpy(Y), method=("mle", "twonn"), k=5)
            for Y in (X8, np.ldexp(X8, 510)))
    assert a.dimensions == b.dimensions
