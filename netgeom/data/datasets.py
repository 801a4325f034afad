"""Data sets as whole tensors: real data available offline and torchvision directories.

Every loader returns a :class:`Dataset`: train/test tensors (float32 inputs, int64 labels) and metadata.
Nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import check_pickle_expansion
from .._validation import check_bool, check_fraction, check_int, check_memory
from ..results import Result

__all__ = [
    "Dataset",
    "load_digits",
    "load_mnist1d",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_idx",
    "load_dataset",
    "read_plain_pickle",
    "DataFileError",
    "DATASET_NAMES",
]


@dataclasses.dataclass
class Dataset(Result):
    """A supervised data set held as tensors.

    ``X_*`` are float32 of shape ``(n, *input_shape)``; ``y_*`` int64 class labels in ``[0, n_classes)``.
    ``intrinsic_dim`` is the true intrinsic dimension where it is known by construction, else ``None``.
    """

    name: str
    X_train: torch.Tensor = dataclasses.field(repr=False)
    y_train: torch.Tensor = dataclasses.field(repr=False)
    X_test: torch.Tensor = dataclasses.field(repr=False)
    y_test: torch.Tensor = dataclasses.field(repr=False)
    n_classes: int
    input_shape: tuple[int, ...]
    intrinsic_dim: int | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for nm in ("X_train", "X_test"):
            x = getattr(self, nm)
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
                raise TypeError(f"{self.name}: {nm} must be a real floating-point tensor, got {what}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{self.name}: {nm} contains NaN or inf")
        if self.X_train.shape[0] != self.y_train.shape[0] or self.X_test.shape[0] != self.y_test.shape[0]:
            raise ValueError(f"{self.name}: inputs and labels differ in length")
        for nm in ("y_train", "y_test"):
            y = getattr(self, nm)
            if not isinstance(y, torch.Tensor) or y.dtype not in _LABEL_DTYPES:
                raise TypeError(f"{self.name}: {nm} must be an integer tensor of class labels")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
                raise ValueError(
                    f"{self.name}: {nm} holds labels in [{int(y.min())}, {int(y.max())}], outside "
                    f"[0, n_classes={self.n_classes})"
                )
        self.input_shape = tuple(int(s) for s in self.input_shape)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.input_shape))

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.X_test.shape[0])

    def flat(self) -> Dataset:
        """The same data with every sample flattened to a vector (for MLPs)."""
        return dataclasses.replace(
            self,
            X_train=self.X_train.reshape(self.n_train, -1),
            X_test=self.X_test.reshape(self.n_test, -1),
            input_shape=(self.n_features,),
        )

    def reshape(self, shape) -> Dataset:
        """The same data with every sample viewed in ``shape`` (same number of features, row-major order),
        e.g. MNIST-1D's ``(40,)`` as ``(1, 40)`` for a 1-D conv net.

        >>> ds = load_digits(seed=0).reshape((1, 8, 8))
        >>> ds.input_shape, tuple(ds.X_train.shape[1:])
        ((1, 8, 8), (1, 8, 8))
        """
        if isinstance(shape, int) or not isinstance(shape, (tuple, list, torch.Size)):
            shape = (shape,)
        shape = tuple(check_int(s, "shape entry", minimum=1) for s in shape)
        if not shape:
            raise ValueError("shape must have at least one entry")
        if int(np.prod(shape)) != self.n_features:
            raise ValueError(
                f"{self.name}: cannot view samples of shape {self.input_shape} ({self.n_features} features) "
                f"as {shape} ({int(np.prod(shape))} features)"
            )
        return dataclasses.replace(
            self,
            X_train=self.X_train.reshape(self.n_train, *shape),
            X_test=self.X_test.reshape(self.n_test, *shape),
            input_shape=shape,
        )

    def to(self, device: str | torch.device) -> Dataset:
        return dataclasses.replace(
            self,
            X_train=self.X_train.to(device),
            y_train=self.y_train.to(device),
            X_test=self.X_test.to(device),
            y_test=self.y_test.to(device),
        )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d.update(n_train=self.n_train, n_test=self.n_test, n_features=self.n_features)
        return d

    def plot(self, ax=None, n: int = 16):
        """A few training samples (images, or 1-D signals as lines)."""
        from ..results import new_axes

        fig, ax = new_axes(ax)
        x = self.X_train[:n].cpu().numpy()
        if len(self.input_shape) >= 2 and self.input_shape[-1] > 1 and len(self.input_shape) != 2:
            imgs = x.reshape(len(x), *self.input_shape)[:, 0]
            ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray")
            ax.set_axis_off()
        else:
            ax.plot(x.reshape(len(x), -1).T, lw=0.8)
            ax.set_xlabel("feature")
        ax.set_title(f"{self.name}: {self.n_train} train / {self.n_test} test")
        return ax


def _split(X: np.ndarray, y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    n_test = int(round(test_size * len(X)))
    if n_test < 1 or n_test >= len(X):
        raise ValueError(f"test_size={test_size} leaves an empty split of {len(X)} samples")
    te, tr = perm[:n_test], perm[n_test:]
    return X[tr], y[tr], X[te], y[te]


def _make(name, Xtr, ytr, Xte, yte, input_shape, n_classes, **meta) -> Dataset:
    t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
    n = len(Xtr)
    return Dataset(
        name=name,
        X_train=t(Xtr, torch.float32).reshape(n, *input_shape),
        y_train=t(ytr, torch.int64),
        X_test=t(Xte, torch.float32).reshape(len(Xte), *input_shape),
        y_test=t(yte, torch.int64),
        n_classes=int(n_classes),
        input_shape=tuple(input_shape),
        meta=meta,
    )


def load_digits(*, seed: int = 0, test_size: float = 0.25, standardize: bool = True) -> Dataset:
    """scikit-learn's 8×8 digits (1,797 samples, 64-D), split with a seeded permutation.

    >>> ds = load_digits(seed=0)
    >>> ds.input_shape, ds.n_classes
    ((64,), 10)
    """
    from sklearn.datasets import load_digits as _ld

    standardize = check_bool(standardize, "standardize")
    seed = check_int(seed, "seed", minimum=0)
    test_size = check_fraction(test_size, "test_size", low_inclusive=False, high_inclusive=False)
    d = _ld()
    X = d.data.astype(np.float64) / 16.0
    Xtr, ytr, Xte, yte = _split(X, d.target, test_size, seed)
    if standardize:
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    return _make(
        "digits", Xtr, ytr, Xte, yte, (64,), 10, seed=seed, test_size=test_size, standardize=standardize
    )


def load_mnist1d(*, seed: int = 0, num_samples: int = 5000, train_split: float = 0.8) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated offline by ``mnist1d.data.make_dataset`` (40-D signals).

    Never calls ``mnist1d``'s ``get_dataset``, which downloads.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    seed = check_int(seed, "seed", minimum=0)
    num_samples = check_int(num_samples, "num_samples", minimum=20)
    train_split = check_fraction(train_split, "train_split", low_inclusive=False, high_inclusive=False)
    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    args.train_split = train_split
    d = make_dataset(args)
    return _make(
        "mnist1d",
        d["x"],
        d["y"],
        d["x_test"],
        d["y_test"],
        (d["x"].shape[1],),
        10,
        seed=seed,
        num_samples=num_samples,
        train_split=train_split,
    )


class DataFileError(ValueError):
    """A data file that is missing parts, truncated or not in the expected format; the message names it."""


_IDX_DTYPES = {0x08: np.uint8}
_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _read_idx(path: Path, *, ndim: int, dims: tuple[int | None, ...] | None = None) -> np.ndarray:
    """An unsigned-byte IDX file (optionally gzipped) as an array, every field of its header checked against
    the file's length before anything is allocated; any defect raises :class:`DataFileError` naming the
    file."""
    try:
        # Read no more than the header declares (plus one byte to detect trailing data): a gzip file of a few
        # megabytes can inflate to terabytes, and reading it whole would exhaust memory.
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read(4 + 4 * 255)
            if data[:3] == b"\x00\x00\x08" and len(data) >= 4 + 4 * ndim and data[3] == ndim:
                declared_shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
                declared = int(np.prod(declared_shape, dtype=object))
                try:
                    check_memory(declared, "its data")
                except MemoryError as exc:
                    raise DataFileError(
                        f"{path}: header says shape {declared_shape} ({declared} values): {exc}"
                    ) from None
                data += f.read(max(0, 4 + 4 * ndim + declared + 1 - len(data)))
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError; corrupt data zlib.error
        raise DataFileError(f"{path} cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: "
                            f"{exc}") from None
    if len(data) < 4:
        raise DataFileError(f"{path} is not an IDX file: {len(data)} byte(s), shorter than the 4-byte magic")
    zero, code, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise DataFileError(f"{path} is not an unsigned-byte IDX file (magic {data[:4].hex()}, expected "
                            f"0000080{ndim})")
    if nd != ndim:
        raise DataFileError(
            f"{path} has {nd} dimension(s) in its header; an MNIST file of this kind has {ndim}"
        )
    head = 4 + 4 * nd
    if len(data) < head:
        raise DataFileError(f"{path} is truncated: {len(data)} bytes, shorter than its {head}-byte header")
    shape = struct.unpack(">" + "I" * nd, data[4:head])
    if dims is not None:
        for i, (got, want) in enumerate(zip(shape, dims)):
            if want is not None and got != want:
                raise DataFileError(f"{path}: dimension {i} is {got} in the header, expected {want}")
    n_values = int(np.prod(shape, dtype=object))
    if len(data) - head != n_values:
        raise DataFileError(
            f"{path}: header says shape {shape} ({n_values} values) but the file holds "
            + (f"{len(data) - head} bytes of data (truncated)" if len(data) - head < n_values
               else "more data than that (trailing bytes)")
        )
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(shape)


def _read_idx_pair(img_path: Path, lab_path: Path | None, n_classes: int = 10) -> tuple[np.ndarray, ...]:
    """Images ``(n, 28, 28)`` and labels ``(n,)`` from a pair of IDX files, checked against each other."""
    if lab_path is None:
        want = img_path.name.replace("images-idx3", "labels-idx1").removesuffix(".gz")
        raise FileNotFoundError(f"the labels for {img_path} are missing (expected {want}[.gz] beside it)")
    X = _read_idx(img_path, ndim=3, dims=(None, 28, 28))
    y = _read_idx(lab_path, ndim=1)
    if len(y) != len(X):
        raise DataFileError(f"{lab_path} holds {len(y)} labels but {img_path} holds {len(X)} images")
    if len(y) and int(y.max()) >= n_classes:
        raise DataFileError(f"{lab_path} holds label {int(y.max())}; labels must lie in [0, {n_classes})")
    return X, y


def _find_idx(root: Path, stem: str) -> Path | None:
    for cand in (root / stem, root / f"{stem}.gz", root / "raw" / stem, root / "raw" / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def load_idx(
    root: str | Path,
    *,
    split: str = "test",
    name: str = "mnist",
    n_train: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> Dataset:
    """MNIST-format IDX files from a directory (``t10k-images-idx3-ubyte[.gz]`` …, or torchvision's
    ``MNIST/raw`` layout).

    ``split="test"`` reads only the 10,000-image test split and divides it into train/test with a seeded
    permutation (``n_train`` images for training, default 8,000); ``split="full"`` reads the official
    60,000/10,000 split. ``normalize`` scales to [0, 1] and standardises with the train mean/std.
    """
    normalize = check_bool(normalize, "normalize")
    root = Path(root)
    for cand in (root, root / "MNIST", root / "FashionMNIST"):
        if _find_idx(cand, "t10k-images-idx3-ubyte") is not None:
            root = cand
            break
    else:
        raise FileNotFoundError(
            f"no MNIST-format IDX files (t10k-images-idx3-ubyte[.gz]) in {root} or its MNIST/raw, "
            "FashionMNIST/raw subfolders; download them once (e.g. torchvision.datasets.MNIST(root, "
            "download=True) on a machine with network access) and pass that directory"
        )
    te_x, te_y = _read_idx_pair(
        _find_idx(root, "t10k-images-idx3-ubyte"), _find_idx(root, "t10k-labels-idx1-ubyte")
    )
    te_x, te_y = te_x.astype(np.float64) / 255.0, te_y.astype(np.int64)
    if split == "test":
        n_train = 8000 if n_train is None else check_int(n_train, "n_train", minimum=1, maximum=len(te_x) - 1)
        Xtr, ytr, Xte, yte = _split(te_x, te_y, 1 - n_train / len(te_x), seed)
    elif split == "full":
        p_img, p_lab = _find_idx(root, "train-images-idx3-ubyte"), _find_idx(root, "train-labels-idx1-ubyte")
        if p_img is None or p_lab is None:
            raise FileNotFoundError(
                f"split='full' needs train-images-idx3-ubyte[.gz] in {root}; only the test split is there"
            )
        Xtr, ytr = _read_idx_pair(p_img, p_lab)
        Xtr, ytr = Xtr.astype(np.float64) / 255.0, ytr.astype(np.int64)
        Xte, yte = te_x, te_y
    else:
        raise ValueError(f"split must be 'test' or 'full', got {split!r}")
    if normalize:
        mu, sd = Xtr.mean(), Xtr.std()
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    return _make(name, Xtr, ytr, Xte, yte, (1, 28, 28), 10, root=str(root), split=split, seed=seed)


def load_mnist(root: str | Path, **kwargs) -> Dataset:
    """MNIST from a local directory of IDX files (see :func:`load_idx`)."""
    return load_idx(root, name="mnist", **kwargs)


def load_fashion_mnist(root: str | Path, **kwargs) -> Dataset:
    """Fashion-MNIST from a local directory of IDX files (see :func:`load_idx`)."""
    return load_idx(root, name="fashion_mnist", **kwargs)


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array subtype {subtype!r} refused: only plain numpy arrays are read")
    return np.ndarray.__new__(np.ndarray, shape, _np_dtype(dtype))


def _np_dtype(spec, *args):
    dt = np.dtype(spec, *args[:2])
    if dt.hasobject:
        raise pickle.UnpicklingError("object dtype refused: only numeric arrays are read")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("object scalar refused: only numeric scalars are read")
    return np.frombuffer(data if isinstance(data, bytes) else str(data).encode("latin1"), dtype=dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
    # Python 3 pickles bytes for protocol < 3 as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') (bytes) is read")
    return text.encode("latin1")


# Every global a CIFAR-10 batch needs, each mapped to a function that builds only plain data. Anything else
# (os.system, builtins.eval, ...) is refused before it is looked up, so no file can run code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _np_dtype,
    ("_codecs", "encode"): _codecs_encode,
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits plain containers, strings, bytes, numbers and numeric numpy arrays; nothing else."""

    def find_class(self, module: str, name: str):
        fn = _PICKLE_ALLOWED.get((module, name))
        if fn is None:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}, which a data file has no reason to contain (only numpy arrays, "
                "containers, strings and numbers are read; nothing is executed)"
            )
        return fn

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent references are refused")


def read_plain_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` admitting only plain data (see :class:`_PlainDataUnpickler`); any other content,
    and any malformed stream, raises :class:`DataFileError` naming the file. Never executes code from it."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            check_pickle_expansion(fh)
            fh.seek(0)
            return _PlainDataUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, struct.error, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise DataFileError(f"{path} is not a plain-data pickle (refused: {exc})") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = read_plain_pickle(path)
    if not isinstance(d, dict):
        raise DataFileError(f"{path} is not a CIFAR-10 batch: it holds a {type(d).__name__}, not a dict")
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataFileError(
            f"{path} is not a CIFAR-10 batch: its keys {sorted(map(str, d))} lack 'data' or 'labels'"
        )
    X, y = d["data"], d["labels"]
    if not isinstance(X, np.ndarray) or X.dtype != np.uint8 or X.ndim != 2 or X.shape[1] != 3 * 32 * 32:
        what = f"{X.dtype} array of shape {X.shape}" if isinstance(X, np.ndarray) else type(X).__name__
        raise DataFileError(f"{path}: 'data' must be a uint8 array of shape (n, 3072), got a {what}")
    if isinstance(y, np.ndarray):
        y = y.tolist()
    if not isinstance(y, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in y):
        raise DataFileError(f"{path}: 'labels' must be a list of integers")
    y = np.asarray(y, dtype=np.int64)
    if len(y) != len(X):
        raise DataFileError(f"{path} holds {len(y)} labels for {len(X)} images")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataFileError(f"{path} holds labels outside 0..9 (min {y.min()}, max {y.max()})")
    return X.astype(np.float64) / 255.0, y


def load_cifar10(root: str | Path, *, normalize: bool = True) -> Dataset:
    """CIFAR-10 from a local copy of the python version (``cifar-10-batches-py``).

    The batches are pickles; they are read by a restricted unpickler that builds only numeric arrays, lists,
    dicts, strings and numbers, so a crafted file cannot run code: it is refused, naming the file.
    """
    normalize = check_bool(normalize, "normalize")
    root = Path(root)
    base = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").exists() else root
    files = [base / f"data_batch_{i}" for i in range(1, 6)] + [base / "test_batch"]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 files missing in {base}: {missing[:2]}…; get cifar-10-python.tar.gz (e.g. "
            "torchvision.datasets.CIFAR10(root, download=True) on a machine with network access) and "
            "unpack it there"
        )
    parts = [_cifar_batch(f) for f in files[:5]]
    Xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    Xte, yte = _cifar_batch(files[5])
    if normalize:
        mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
        Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    return _make("cifar10", Xtr, ytr, Xte, yte, (3, 32, 32), 10, root=str(base))


DATASET_NAMES = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10")


def load_dataset(description: dict[str, Any]) -> Dataset:
    """Load a data set from a JSON-able description, e.g. ``{"name": "digits", "seed": 0}`` or
    ``{"name": "mnist", "root": "../shared/data/mnist"}``. Synthetic generators are named
    ``"synthetic_linear"``, ``"synthetic_curved"``, ``"reduced"`` (see :mod:`netgeom.data.synthetic`).

    The key ``"flat": true`` (default false) returns :meth:`Dataset.flat` of the loaded set, every sample a
    vector (e.g. MNIST as ``(784,)`` instead of ``(1, 28, 28)``); the other keys are the loader's arguments.
    Training does not need it for netgeom models, whose ``input_shape`` the data are viewed in (see
    :mod:`netgeom.training`).

    >>> load_dataset({"name": "digits", "seed": 0, "flat": True}).input_shape
    (64,)
    """
    desc = dict(description)
    name = desc.pop("name", None)
    flat = desc.pop("flat", False)
    if not isinstance(flat, bool):
        # a string such as "false" is truthy: it would flatten when asked not to
        raise TypeError(f"'flat' must be true or false, got {flat!r}")
    loaders = {
        "digits": load_digits,
        "mnist1d": load_mnist1d,
        "mnist": load_mnist,
        "fashion_mnist": load_fashion_mnist,
        "cifar10": load_cifar10,
    }
    from . import synthetic  # imported here: synthetic builds on this module

    loaders.update(synthetic.GENERATORS)
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(loaders)}")
    try:
        ds = loaders[name](**desc)
    except TypeError as exc:
        raise TypeError(f"bad arguments for data set {name!r}: {exc}") from None
    return ds.flat() if flat else ds
