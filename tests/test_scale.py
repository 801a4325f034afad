import json
import warnings

import matplotlib
import numpy as np
import pytest

from netgeom.dimension import MLE, LocalPCA, ScaleSweepResult, TwoNN, id_scale_sweep, nearest_neighbors

matplotlib.use("Agg")


def _curved(D, seed=0, n=800, d=4):
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(n, d)) @ rng.normal(size=(d, D)))


@pytest.mark.parametrize("D", [8, 30])  # k-d tree and torch kNN back-ends
@pytest.mark.parametrize("variant,unbiased", [("levina_bickel", False), ("mackay_ghahramani", True)])
def test_k_sweep_equals_separate_fits_exactly(D, variant, unbiased):
    X = _curved(D)
    ks = (3, 7, 12, 25)
    r = id_scale_sweep(X, ks=ks, methods=("mle", "lpca"), variant=variant, unbiased=unbiased,
                       lpca_kw={"rule": "kaiser"})
    assert r.ks == list(ks)
    for i, k in enumerate(ks):
        assert r.mle[i] == MLE(k=k, variant=variant, unbiased=unbiased).fit(X).dimension_
        assert r.lpca[i] == LocalPCA(k=k, rule="kaiser").fit(X).dimension_
        assert r.k_scale[i] == np.median(nearest_neighbors(X, k).distances[:, -1])
    assert r.twonn is None and r.twonn_n is None


def test_decimation_levels():
    X = _curved(20, seed=1, n=640)
    r = id_scale_sweep(X, methods="twonn", halvings=3, seed=5, discard_fraction=0.2)
    assert r.ks is None and r.mle is None
    assert r.twonn_n == [640, 320, 160, 80]
    # level 0 is TwoNN on all points
    assert r.twonn[0] == TwoNN(discard_fraction=0.2).fit(X).dimension_ and r.twonn_std[0] == 0
    # the subsets are a seeded partition: rebuild them and fit each with scikit-dimension's TwoNN
    import skdim
    rng = np.random.default_rng(5)
    for j in (1, 2, 3):
        parts = rng.permutation(640)[: 2**j * (640 // 2**j)].reshape(2**j, -1)
        assert np.unique(parts).size == parts.size  # disjoint
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = [skdim.id.TwoNN(discard_fraction=0.2).fit(X[p]).dimension_ for p in parts]
        np.testing.assert_allclose(r.twonn[j], np.mean(ref), rtol=1e-6)
        np.testing.assert_allclose(r.twonn_std[j], np.std(ref), rtol=1e-5, atol=1e-9)
    # fewer points per subset: larger neighbour distances
    assert np.all(np.diff(r.twonn_scale) > 0)
    again = id_scale_sweep(X, methods="twonn", halvings=3, seed=5, discard_fraction=0.2)
    assert again.twonn == r.twonn
    other = id_scale_sweep(X, methods="twonn", halvings=3, seed=6, discard_fraction=0.2)
    assert other.twonn[0] == r.twonn[0] and other.twonn[1:] != r.twonn[1:]


@pytest.mark.parametrize("d", [2, 5])
def test_linear_subspace_is_flat_at_d(d):
    # Gaussian on a d-dim subspace of R^30, n = 3000, in float64 (make_linear_manifold's float32 rounding
    # lifts the points ~1e-7 off the subspace, which "maxgap" rightly sees). Tolerances from the estimators'
    # spread: unbiased MLE within 0.25 of d for k = 5…40; TwoNN level means within 0.35 down to 187 points
    rng = np.random.default_rng(d)
    A = np.linalg.qr(rng.normal(size=(30, d)))[0]
    X = rng.normal(size=(3000, d)) @ A.T + 3.0
    ks = (5, 10, 20, 40)
    r = id_scale_sweep(X, ks=ks, methods=("mle", "twonn", "lpca"), unbiased=True, halvings=4,
                       lpca_kw={"rule": "maxgap"})
    assert np.all(np.abs(np.array(r.mle) - d) < 0.25), r.mle
    assert np.ptp(r.mle) < 0.25
    assert np.all(np.abs(np.array(r.twonn) - d) < 0.35), r.twonn
    # maxgap on an exact subspace: d at every point once the neighbourhood has more than d points
    assert r.lpca == [float(d) if k > d else float(k - 1) for k in ks]


def test_shared_graph_duplicates_result_and_plot():
    X = _curved(20, seed=2, n=400)
    Xd = np.concatenate([X, X[:11]])
    g = nearest_neighbors(Xd, 30)
    a = id_scale_sweep(Xd, ks=(5, 30), methods=("mle", "twonn"), halvings=2, neighbors=g)
    b = id_scale_sweep(X, ks=(5, 30), methods=("mle", "twonn"), halvings=2)
    assert a.n_dropped == 11 and a.n_used == 400 and b.n_dropped == 0
    assert a.mle == b.mle and a.twonn == b.twonn
    assert isinstance(a, ScaleSweepResult)
    d = json.loads(a.to_json())
    assert d["ks"] == [5, 30] and len(d["twonn"]) == 3 and d["methods"] == ["mle", "twonn"]
    for x in ("scale", "k", "n"):
        ax = a.plot(x=x)
        assert ax.get_ylabel() == "intrinsic dimension" and ax.lines
    matplotlib.pyplot.close("all")
    with pytest.raises(ValueError, match="duplicate"):
        id_scale_sweep(Xd, ks=(5,), duplicates="error")


def test_errors():
    X = _curved(12, seed=3, n=200)
    with pytest.raises(ValueError, match="halvings=4 leaves subsets of 12"):
        id_scale_sweep(X, methods="twonn", halvings=4)
    with pytest.raises(ValueError, match="methods"):
        id_scale_sweep(X, methods=("mle", "gride"))
    with pytest.raises(ValueError, match="at least one"):
        id_scale_sweep(X, methods=())
    with pytest.raises(ValueError, match="ks is empty"):
        id_scale_sweep(X, ks=(), methods="mle")
    with pytest.raises(ValueError, match=r"ks\[i\] must be >= 2"):
        id_scale_sweep(X, ks=(1, 5), methods="mle")
    with pytest.raises(TypeError, match="ks must be an iterable"):
        id_scale_sweep(X, ks=5, methods="mle")
    with pytest.raises(ValueError, match="k - 2"):
        id_scale_sweep(X, ks=(2, 5), methods="mle", unbiased=True)
    with pytest.raises(ValueError, match="must not set k"):
        id_scale_sweep(X, methods="lpca", lpca_kw={"k": 5})
    with pytest.raises(ValueError, match="'lpca' is not in methods"):
        id_scale_sweep(X, methods="mle", lpca_kw={"rule": "fan"})
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        id_scale_sweep(X, ks=(5, 20), methods="mle", neighbors=nearest_neighbors(X, 10))
    with pytest.raises(ValueError, match="not built from this X"):
        id_scale_sweep(1.01 * X, ks=(5,), methods="mle", neighbors=nearest_neighbors(X, 10))
    with pytest.raises(ValueError, match="seed"):
        id_scale_sweep(X, ks=(5,), seed=-1)
    with pytest.raises(ValueError, match="non-finite"):
        id_scale_sweep(np.full((50, 3), np.inf))
    with pytest.raises(ValueError, match="x must be one of"):
        id_scale_sweep(X, ks=(5,), halvings=1).plot(x="radius")
