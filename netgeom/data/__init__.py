"""Data sets: offline real data (digits, MNIST-1D, IDX directories, CIFAR-10) and controlled-ID generators."""

from .datasets import (
    DATASET_NAMES,
    DataFileError,
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_mnist,
    load_mnist1d,
    read_plain_pickle,
)
from .synthetic import (
    GENERATORS,
    make_curved_manifold,
    make_linear_manifold,
    make_reduced,
    sample_sphere,
    sample_swiss_roll,
)

__all__ = [
    "DATASET_NAMES",
    "DataFileError",
    "Dataset",
    "GENERATORS",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx",
    "load_mnist",
    "load_mnist1d",
    "make_curved_manifold",
    "make_linear_manifold",
    "make_reduced",
    "read_plain_pickle",
    "sample_sphere",
    "sample_swiss_roll",
]
