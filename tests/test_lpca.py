import warnings

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netgeom.dimension import (
    DimensionResult,
    LocalPCA,
    intrinsic_dimension,
    local_pca_spectra,
    nearest_neighbors,
    pca_rule_dimension,
)

matplotlib.use("Agg")
import skdim  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402  (skdim brings scikit-learn)

# ours -> (skdim ver, our keyword arguments, skdim keyword arguments)
RULES = {
    "fo": ("FO", {}, {}),
    "fo_0.2": ("FO", {"alpha_fo": 0.2}, {"alphaFO": 0.2}),
    "fan": ("Fan", {}, {}),
    "maxgap": ("maxgap", {}, {}),
    "ratio_0.9": ("ratio", {"alpha_ratio": 0.9}, {"alphaRatio": 0.9}),
    "ratio_0.05": ("ratio", {"alpha_ratio": 0.05}, {}),  # skdim's default threshold
    "participation_ratio": ("participation_ratio", {}, {}),
    "kaiser": ("Kaiser", {}, {}),
    "broken_stick": ("broken_stick", {}, {}),
}


def _rule(name):
    return name.split("_0")[0]


def _data(D, seed=0, n=250, d=5, noise=0.02):
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(n, d)) @ rng.normal(size=(d, D))) + noise * rng.normal(size=(n, D))


def _skdim_pw(X, knn, ver, skw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = skdim.id.lPCA(ver=ver, **skw)
        return est.fit_pw(X, precomputed_knn=knn, n_neighbors=knn.shape[1]).dimension_pw_


def _assert_same(ours, ref, name):
    if name == "participation_ratio":  # real-valued: equal up to eigen-solver rounding
        np.testing.assert_allclose(ours, ref, rtol=1e-9)
    else:
        np.testing.assert_array_equal(ours, ref)


# ------------------------------------------------------------------ agreement with scikit-dimension
@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("D,k", [(30, 20), (8, 20)])  # Gram path (k <= D) and scatter path (k > D)
def test_pointwise_matches_skdim(name, D, k):
    X = _data(D)
    g = nearest_neighbors(X, k)
    ver, kw, skw = RULES[name]
    ours = LocalPCA(k=k, rule=_rule(name), **kw).fit(X, neighbors=g)
    ref = _skdim_pw(X, g.indices, ver, skw)
    _assert_same(ours.dimension_pw_, ref, name)
    assert ours.dimension_ == pytest.approx(ref.mean(), rel=1e-12)


@pytest.mark.parametrize("name", ["fo", "kaiser", "broken_stick", "participation_ratio"])
def test_include_self_matches_skdim_neighbourhood_with_the_point(name):
    X = _data(25, seed=3)
    g = nearest_neighbors(X, 12)
    ver, kw, skw = RULES[name]
    ours = LocalPCA(k=12, rule=name, include_self=True, **kw).fit(X, neighbors=g)
    knn = np.concatenate([np.arange(len(X))[:, None], g.indices], axis=1)
    _assert_same(ours.dimension_pw_, _skdim_pw(X, knn, ver, skw), name)
    assert ours.spectra_.shape == (len(X), 13)


def test_skdim_own_knn_excludes_self_like_ours():
    # skdim's fit_pw without precomputed neighbours uses scikit-learn's kneighbors(): self excluded
    X = _data(30, seed=4, n=200)
    ours = LocalPCA(k=15).fit(X).dimension_pw_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = skdim.id.lPCA().fit_pw(X, n_neighbors=15).dimension_pw_
    np.testing.assert_array_equal(ours, ref)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(list(RULES)), D=st.integers(3, 40))
def test_global_rule_matches_skdim(seed, name, D):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, D + 1))
    n = int(rng.integers(D // 2 + 3, 120))
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, D)) * rng.uniform(0.5, 3, size=D)
    X += 0.05 * rng.normal(size=X.shape)
    ver, kw, skw = RULES[name]
    ref = skdim.id.lPCA(ver=ver, **skw).fit(X).dimension_
    ours = pca_rule_dimension(PCA().fit(X).explained_variance_, _rule(name), **kw)
    _assert_same(ours, ref, name)


def test_spectra_equal_sklearn_pca_per_neighbourhood():
    X = _data(30, seed=5, n=120) + 1e3  # far from the origin: centring must not lose the spread
    g = nearest_neighbors(X, 10)
    S = local_pca_spectra(X, g.indices, chunk_size=7)
    for i in (0, 17, 63, 119):
        ref = PCA().fit(X[g.indices[i]]).explained_variance_
        np.testing.assert_allclose(S[i], ref, rtol=0, atol=1e-10 * ref[0])
    np.testing.assert_array_equal(S, local_pca_spectra(X, g.indices))


# ------------------------------------------------------------------ closed forms and known subspaces
def test_rules_by_hand():
    ev = np.array([10.0, 1.0, 1.0, 1.0])
    # broken stick for m = 4: (1/4)·[25/12, 13/12, 7/12, 1/4] = [.521, .271, .146, .0625]; normalised
    # eigenvalues [.769, .077, .077, .077]: only the first is above -> 1
    assert pca_rule_dimension(ev, "broken_stick") == 1
    assert pca_rule_dimension(ev, "fo", alpha_fo=0.09) == 4
    assert pca_rule_dimension(ev, "fo", alpha_fo=0.1) == 1  # strictly above alpha·λ_max
    assert pca_rule_dimension(ev, "kaiser") == 1  # mean 3.25
    assert pca_rule_dimension(ev, "participation_ratio") == pytest.approx(13**2 / 103)
    assert pca_rule_dimension(ev, "ratio", alpha_ratio=10 / 13) == 1
    assert pca_rule_dimension(ev, "ratio", alpha_ratio=10 / 13 + 1e-9) == 2
    assert pca_rule_dimension(np.array([4.0, 3.0, 0.3, 0.2]), "maxgap") == 2
    # batched: rows are independent
    batch = np.array([[5.0, 4.0, 0.0], [5.0, 0.0, 0.0], [3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(pca_rule_dimension(batch, "maxgap"), [2, 1, 2])  # gaps 1.5, 2


@settings(max_examples=20, deadline=None)
@given(
    d=st.integers(1, 6),
    D=st.integers(7, 30),
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-100, 100),
)
def test_linear_subspace_exact(d, D, seed, scale, shift):
    rng = np.random.default_rng(seed)
    A = np.linalg.qr(rng.normal(size=(D, d)))[0]
    X = scale * rng.uniform(-1, 1, size=(150, d)) @ A.T + shift
    est = LocalPCA(k=d + 8, rule="maxgap").fit(X)
    np.testing.assert_array_equal(est.dimension_pw_, d)
    assert est.result_.dimension == d
    # every rule says at most d: the other eigenvalues are numerically zero
    fo = LocalPCA(k=d + 8, rule="fo", alpha_fo=1e-9).fit(X, neighbors=nearest_neighbors(X, d + 8))
    np.testing.assert_array_equal(fo.dimension_pw_, d)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-2, 1e2), shift=st.floats(-50, 50))
def test_rotation_translation_scale_invariance(seed, scale, shift):
    X = _data(12, seed=seed, n=150)
    Q = np.linalg.qr(np.random.default_rng(seed + 1).normal(size=(12, 12)))[0]
    a = LocalPCA(k=12, rule="fo").fit(X)
    b = LocalPCA(k=12, rule="fo").fit(scale * X @ Q + shift)
    np.testing.assert_allclose(b.spectra_, scale**2 * a.spectra_, rtol=1e-7, atol=1e-9 * scale**2)
    # FO is a comparison with 5% of the top eigenvalue; ties within 1e-7 would be a coincidence
    assert np.mean(a.dimension_pw_ == b.dimension_pw_) == 1.0


# ------------------------------------------------------------------ shared graph, duplicates, API
def test_shared_graph_and_function_form():
    X = _data(30, seed=6, n=200)
    g = nearest_neighbors(X, 25)
    a = LocalPCA(k=10, rule="kaiser").fit(X)
    b = LocalPCA(k=10, rule="kaiser").fit(X, neighbors=g)
    np.testing.assert_array_equal(a.dimension_pw_, b.dimension_pw_)
    r = intrinsic_dimension(X, "lpca", k=10, rule="kaiser", neighbors=g)
    assert isinstance(r, DimensionResult) and r.method == "lpca" and r.variant == "kaiser"
    assert r.dimension == a.dimension_ and r.k == 10 and r.n_used == 200
    med = LocalPCA(k=10, rule="kaiser", aggregate="median").fit(X)
    assert med.dimension_ == np.median(a.dimension_pw_)
    ax = r.plot()
    assert ax.get_xlabel() == "local intrinsic dimension"
    matplotlib.pyplot.close("all")


def test_duplicates_drop_and_error():
    X = _data(20, seed=7, n=150)
    Xd = np.concatenate([X, X[:9]])
    a = LocalPCA(k=10).fit(Xd)
    assert a.result_.n_dropped == 9 and a.result_.n_used == 150
    np.testing.assert_array_equal(a.dimension_pw_, LocalPCA(k=10).fit(X).dimension_pw_)
    with pytest.raises(ValueError, match="duplicate"):
        LocalPCA(k=10, duplicates="error").fit(Xd)
    # a graph with duplicates dropped is used with the original X (its `kept` maps back)
    g = nearest_neighbors(Xd, 10)
    np.testing.assert_array_equal(LocalPCA(k=10).fit(Xd, neighbors=g).dimension_pw_, a.dimension_pw_)


def test_errors():
    X = _data(10, seed=8, n=60)
    g = nearest_neighbors(X, 5)
    with pytest.raises(TypeError, match="coordinates X"):
        LocalPCA(k=5).fit(neighbors=g)
    with pytest.raises(TypeError, match="coordinates X"):
        intrinsic_dimension(method="lpca", k=5, neighbors=g)
    with pytest.raises(ValueError, match="not built from this X"):
        LocalPCA(k=5).fit(X[::-1].copy(), neighbors=g)
    with pytest.raises(ValueError, match="does not match X"):
        LocalPCA(k=5).fit(X[:30], neighbors=g)
    with pytest.raises(ValueError, match="needed"):
        LocalPCA(k=8).fit(X, neighbors=g)
    with pytest.raises(TypeError, match="NeighborGraph"):
        LocalPCA(k=5).fit(X, neighbors=(g.distances, g.indices))
    with pytest.raises(ValueError, match="k must be >= 2"):
        LocalPCA(k=1).fit(X)
    with pytest.raises(ValueError, match="rule"):
        LocalPCA(rule="MP").fit(X)
    with pytest.raises(ValueError, match="alpha_fo"):
        LocalPCA(k=5, alpha_fo=1.5).fit(X)
    with pytest.raises(ValueError, match="aggregate"):
        LocalPCA(k=5, aggregate="max").fit(X)
    with pytest.raises(TypeError, match="include_self"):
        LocalPCA(k=5, include_self="yes").fit(X)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        LocalPCA(k=5).fit(bad)
    with pytest.raises(ValueError, match="2-D"):
        LocalPCA(k=5).fit(X[0])
    with pytest.raises(ValueError, match="decreasing"):
        pca_rule_dimension(np.array([1.0, 2.0, 0.5]))
    with pytest.raises(ValueError, match="no positive eigenvalue"):
        pca_rule_dimension(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        pca_rule_dimension(np.array([1.0]))
    with pytest.raises(ValueError, match="'fan' is undefined"):
        pca_rule_dimension(np.ones(5), "fan")
    assert LocalPCA(rule="FO").fit(X).result_.variant == "fo"  # skdim's spelling accepted
