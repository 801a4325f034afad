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


# ---------------------------------------------------------------------------------- hostile / corrupt files
class _Payload:
    """Unpickling this runs a shell command that creates a marker file (the attack of issue 13)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _cifar_dir(tmp_path, n=20, protocol=2, payload=None):
    import pickle

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = {
            b"batch_label": b"batch",
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, size=(n, 3072)).astype(np.uint8),
            b"filenames": [b"img%d.png" % j for j in range(n)],
        }
        if payload is not None and i == 2:
            batch[b"labels"] = payload
        (base / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return base


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_batches_read_through_the_restricted_unpickler(tmp_path, protocol):
    from netgeom.data.datasets import load_cifar10

    _cifar_dir(tmp_path, protocol=protocol)
    ds = load_cifar10(tmp_path, normalize=False)
    assert ds.X_train.shape == (100, 3, 32, 32) and ds.X_test.shape == (20, 3, 32, 32)
    assert 0 <= float(ds.X_train.min()) and float(ds.X_train.max()) <= 1


@pytest.mark.parametrize("entry", ["cifar10", "cli", "load_dataset"])
def test_crafted_cifar_batch_cannot_run_code(tmp_path, entry):
    from netgeom.cli import main
    from netgeom.data.datasets import DataFileError, load_cifar10

    marker = tmp_path / "pwned"
    base = _cifar_dir(tmp_path, payload=_Payload(marker))
    # the file really is an attack: plain pickle would run it
    import pickle

    with open(base / "data_batch_3", "rb") as f:
        pickle.load(f)
    assert marker.exists()
    marker.unlink()
    if entry == "cli":
        assert main(["id", "cifar10", "--root", str(tmp_path)]) == 2
    else:
        with pytest.raises(DataFileError, match=r"data_batch_3 is not a plain-data pickle.*posix\.system"):
            if entry == "cifar10":
                load_cifar10(tmp_path)
            else:
                load_dataset({"name": "cifar10", "root": str(tmp_path)})
    assert not marker.exists()


def test_pickled_objects_other_than_plain_data_are_refused(tmp_path):
    import pickle

    from netgeom.data.datasets import DataFileError, read_plain_pickle

    p = tmp_path / "batch"
    for obj, why in [
        (np.array([object(), 1], dtype=object), "object"),
        (np.ma.masked_array([1, 2]), "MaskedArray|_mareconstruct"),
        (Dataset, "datasets.Dataset"),
    ]:
        try:
            p.write_bytes(pickle.dumps(obj, protocol=2))
        except (pickle.PicklingError, TypeError, AttributeError):
            continue
        with pytest.raises(DataFileError, match=why):
            read_plain_pickle(p)
    p.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00")  # truncated
    with pytest.raises(DataFileError, match="batch is not a plain-data pickle"):
        read_plain_pickle(p)


def _mnist_dir(tmp_path, images=None, labels=None, gz=True):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    suffix = ".gz" if gz else ""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 28, 28)) if images is None else images
    labels = np.arange(30) % 10 if labels is None else labels
    for stem, arr in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
        data += arr.astype(np.uint8).tobytes()
        (raw / (stem + suffix)).write_bytes(gzip.compress(data) if gz else data)
    return raw


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-5], "cannot be read as gzip: Compressed file ended"),
        (lambda b: b"garbage" * 3, "cannot be read as gzip"),
        (lambda b: gzip.compress(b"\x00\x00"), "shorter than the 4-byte magic"),
        (lambda b: gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 20), "not an unsigned-byte IDX file"),
        (lambda b: gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8), "has 1 dimension"),
        (lambda b: gzip.compress(b"\x00\x00\x08\x03\x00\x00"), "shorter than its 16-byte header"),
        (lambda b: gzip.compress(gzip.decompress(b)[:-100]), "truncated"),
        (lambda b: gzip.compress(gzip.decompress(b) + b"xx"), "trailing bytes"),
        (lambda b: gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 2**31, 28, 28)), "header says shape"),
    ],
)
def test_corrupt_idx_images_are_named(tmp_path, damage, message):
    from netgeom.data.datasets import DataFileError

    raw = _mnist_dir(tmp_path)
    f = raw / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(DataFileError, match=message) as err:
        load_mnist(tmp_path)
    assert str(f) in str(err.value)


def test_idx_labels_checked_against_images(tmp_path):
    from netgeom.data.datasets import DataFileError

    _mnist_dir(tmp_path, labels=np.arange(20) % 10, gz=False)
    with pytest.raises(DataFileError, match="holds 20 labels but .*t10k-images-idx3-ubyte holds 30 images"):
        load_mnist(tmp_path)
    _mnist_dir(tmp_path / "b", labels=np.full(30, 12), gz=False)
    with pytest.raises(DataFileError, match="label 12"):
        load_mnist(tmp_path / "b")
    _mnist_dir(tmp_path / "c", images=np.zeros((30, 14, 14)), gz=False)
    with pytest.raises(DataFileError, match="dimension 1 is 14"):
        load_mnist(tmp_path / "c")


def test_dataset_refuses_complex_inputs_and_bad_labels():
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(TypeError, match="real floating-point"):
        Dataset("bad", torch.zeros(4, 2, dtype=torch.complex64), y, torch.zeros(4, 2), y, 2, (2,))
    with pytest.raises(TypeError, match="integer tensor"):
        Dataset("bad", torch.zeros(4, 2), y.float(), torch.zeros(4, 2), y, 2, (2,))
    with pytest.raises(ValueError, match="outside"):
        Dataset("bad", torch.zeros(4, 2), y + 5, torch.zeros(4, 2), y, 2, (2,))
