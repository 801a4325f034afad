"""Offline data sets: shapes, seeds, and clear errors for missing directories."""

import gzip
import struct

import numpy as np
import pytest
import torch

from netgeom.data.datasets import Dataset, load_dataset, load_digits, load_idx, load_mnist, load_mnist1d


def test_digits_shapes_and_seed():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert a.input_shape == (64,) and a.n_classes == 10
    assert a.n_train + a.n_test == 1797
    assert torch.equal(a.X_train, b.X_train) and not torch.equal(a.X_train, c.X_train)
    assert a.X_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    # standardised with train statistics
    assert a.X_train.mean().abs() < 1e-5


def test_mnist1d_offline_and_seeded():
    a = load_mnist1d(seed=3, num_samples=400)
    b = load_mnist1d(seed=3, num_samples=400)
    assert a.input_shape == (40,) and a.n_train == 320 and a.n_test == 80
    assert torch.equal(a.X_test, b.X_test)
    assert set(a.y_train.unique().tolist()) <= set(range(10))


def test_shared_mnist_split(mnist_dir):
    ds = load_mnist(mnist_dir, n_train=8000, seed=0)
    assert ds.X_train.shape == (8000, 1, 28, 28) and ds.X_test.shape == (2000, 1, 28, 28)
    assert ds.flat().X_train.shape == (8000, 784)
    assert sorted(ds.y_test.unique().tolist()) == list(range(10))


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_idx_reader_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(50, 28, 28))
    labels = np.arange(50) % 10
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", labels)
    ds = load_idx(tmp_path, n_train=40, normalize=False)
    assert ds.n_train == 40 and ds.n_test == 10
    # the pixels are the ones written, scaled to [0, 1]
    got = np.sort(np.concatenate([ds.X_train.numpy().ravel(), ds.X_test.numpy().ravel()]))
    np.testing.assert_allclose(got, np.sort(imgs.ravel() / 255.0), rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_idx(tmp_path, split="full")


def test_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="CIFAR-10 files missing"):
        load_dataset({"name": "cifar10", "root": str(tmp_path)})


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load_dataset({"name": "imagenet"})
    with pytest.raises(ValueError, match="test_size"):
        load_digits(test_size=1.5)
    x = torch.zeros(4, 2)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Dataset("bad", x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long), 2, (2,))
    with pytest.raises(ValueError, match="differ in length"):
        y = torch.zeros(3, dtype=torch.long)
        Dataset("bad", torch.zeros(4, 2), y, torch.zeros(4, 2), y, 2, (2,))


def test_load_dataset_description_and_to_dict():
    ds = load_dataset({"name": "digits", "seed": 2, "flat": True})
    d = ds.to_dict()
    assert d["name"] == "digits" and d["n_train"] == ds.n_train and "X_train" not in d


def test_reshape_is_a_row_major_view_and_checks_the_size():
    ds = load_digits(seed=0)
    r = ds.reshape((1, 8, 8))
    assert r.input_shape == (1, 8, 8) and r.X_train.shape == (ds.n_train, 1, 8, 8)
    assert torch.equal(r.X_train[:, 0, 2, 3], ds.X_train[:, 2 * 8 + 3])
    assert torch.equal(r.flat().X_test, ds.X_test) and r.n_features == ds.n_features
    assert ds.reshape(64).input_shape == (64,)
    with pytest.raises(ValueError, match=r"\(64,\).*\(1, 9, 9\)"):
        ds.reshape((1, 9, 9))
    with pytest.raises(ValueError, match="shape entry"):
        ds.reshape((0, 64))


def test_load_dataset_flat_key():
    assert load_dataset({"name": "mnist1d", "num_samples": 50}).input_shape == (40,)
    ds = load_dataset({"name": "digits", "flat": False}).reshape((1, 8, 8))
    assert ds.flat().input_shape == (64,)
    with pytest.raises(TypeError, match="'flat' must be true or false"):
        load_dataset({"name": "digits", "flat": "false"})
