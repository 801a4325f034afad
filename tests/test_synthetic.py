import numpy as np
import pytest
import torch

from netgeom.data.datasets import Dataset, load_dataset
from netgeom.data.synthetic import (
    GENERATORS,
    make_curved_manifold,
    make_linear_manifold,
    make_reduced,
    sample_sphere,
    sample_swiss_roll,
)
from netgeom.dimension import MLE, TwoNN, nearest_neighbors


@pytest.mark.parametrize("make", [make_linear_manifold, make_curved_manifold])
def test_shapes_seeds_balance(make):
    ds = make(3, 40, n_train=300, n_test=60, n_classes=3, seed=1)
    assert isinstance(ds, Dataset) and ds.intrinsic_dim == 3
    assert ds.X_train.shape == (300, 40) and ds.X_test.shape == (60, 40) and ds.X_train.dtype == torch.float32
    assert set(ds.y_train.tolist()) == {0, 1, 2}
    assert np.bincount(ds.y_train.numpy()).min() >= 99  # quantile thresholds: balanced classes
    again = make(3, 40, n_train=300, n_test=60, n_classes=3, seed=1)
    assert torch.equal(ds.X_train, again.X_train) and torch.equal(ds.y_test, again.y_test)
    other = make(3, 40, n_train=300, n_test=60, n_classes=3, seed=2)
    assert not torch.equal(ds.X_train, other.X_train)


def test_linear_is_exactly_rank_d_and_curved_has_unit_variance():
    ds = make_linear_manifold(5, 30, n_train=200, n_test=10, seed=0)
    s = np.linalg.svd(ds.X_train.double().numpy(), compute_uv=False)
    assert s[4] > 1 and s[5] < 1e-4
    c = make_curved_manifold(5, 30, n_train=500, n_test=10, seed=0).X_train.double().numpy()
    np.testing.assert_allclose(c.std(0), 1, atol=1e-4)
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-4)


@pytest.mark.parametrize("make", [make_linear_manifold, make_curved_manifold])
def test_measured_id_tracks_nominal_d(make):
    est = []
    for d in (2, 4, 8):
        X = make(d, 60, n_train=1500, n_test=1, seed=0).X_train.double().numpy()
        g = nearest_neighbors(X, 20)
        m, t = MLE(k=20).fit(neighbors=g).dimension_, TwoNN().fit(neighbors=g).dimension_
        assert m == pytest.approx(d, rel=0.15) and t == pytest.approx(d, rel=0.15)
        est.append(m)
    assert est[0] < est[1] < est[2]


def test_reduced_digits():
    base = load_dataset({"name": "digits", "seed": 0})
    ests = []
    for d in (2, 6):
        ds = make_reduced("digits", d, seed=0)
        assert ds.input_shape == (64,) and ds.intrinsic_dim == d
        assert torch.equal(ds.y_train, base.y_train)
        Xc = ds.X_train.double().numpy()
        s = np.linalg.svd(Xc - Xc.mean(0), compute_uv=False)
        assert s[d - 1] > 1 and s[d] < 1e-3
        ests.append(MLE(k=20).fit(Xc).dimension_)
    assert ests[0] == pytest.approx(2, rel=0.15) and ests[0] < ests[1] <= 6.5
    ds = make_reduced(base, 3)
    assert ds.name == "reduced"
    assert ds.meta == {"dataset": "digits", "d": 3, "base_meta": base.meta}


@pytest.mark.parametrize(
    "make",
    [
        lambda: make_linear_manifold(3, 12, n_train=40, n_test=7, n_classes=3, noise=0.1, seed=2),
        lambda: make_curved_manifold(2, 9, n_train=30, n_test=6, n_classes=4, seed=5, frequency=2.0),
        lambda: make_reduced("digits", 4, seed=1, test_size=0.5),
    ],
)
def test_meta_reloads_the_same_data(make):
    # a data set's name and meta are the load_dataset description of it (demo_imp names its run by them)
    ds = make()
    again = load_dataset({"name": ds.name, **ds.meta})
    for k in ("X_train", "y_train", "X_test", "y_test"):
        assert torch.equal(getattr(ds, k), getattr(again, k))


def test_reduced_refuses_loader_arguments_with_a_dataset():
    base = load_dataset({"name": "digits", "seed": 0})
    for kw in ({"seed": 3}, {"bogus": 1}, {"seed": 0, "test_size": 0.5}):
        with pytest.raises(TypeError, match="with a Dataset in hand"):
            make_reduced(base, 3, **kw)


def test_generators_registered_for_load_dataset():
    assert set(GENERATORS) == {"synthetic_linear", "synthetic_curved", "reduced"}
    ds = load_dataset({"name": "synthetic_curved", "d": 2, "D": 10, "n_train": 50, "n_test": 5, "seed": 3})
    assert ds.intrinsic_dim == 2 and ds.X_train.shape == (50, 10)


def test_samplers():
    S = sample_sphere(500, 3, seed=0)
    np.testing.assert_allclose(np.linalg.norm(S, axis=1), 1)
    assert S.shape == (500, 4)
    R = sample_swiss_roll(300, seed=0)
    assert R.shape == (300, 3) and np.array_equal(R, sample_swiss_roll(300, seed=0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="exceeds"):
        make_linear_manifold(50, 10)
    with pytest.raises(ValueError, match="seed"):
        make_curved_manifold(2, 10, seed=None)
    with pytest.raises(ValueError, match="noise"):
        make_linear_manifold(2, 10, noise=-1)
    with pytest.raises(ValueError, match="knows"):
        make_reduced("cifar", 3)
    with pytest.raises(ValueError, match="d must be"):
        make_reduced("digits", 1000)
    with pytest.raises(ValueError, match="rank 61"):  # digits has 3 always-blank pixels
        make_reduced("digits", 63)
