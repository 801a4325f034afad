"""Data of controlled intrinsic dimension (after Ankner et al.): the ambient dimension ``D`` and the task stay
fixed while the intrinsic dimension ``d`` varies.

* :func:`make_linear_manifold` — ``x = A z + noise``, ``z ~ N(0, I_d)``, ``A`` with orthonormal columns.
* :func:`make_curved_manifold` — ``x = g(z)``, ``g`` random Fourier features ``cos(W z + b)`` (a fixed smooth
  map ``R^d → R^D``), each ambient coordinate standardised to unit variance (train statistics).
* :func:`make_reduced` — a real data set projected on its top-``d`` principal components and mapped back.

Labels of the synthetic sets come from a fixed random teacher on the latent ``z`` (a one-hidden-layer tanh
net with a scalar score, pre-activations scaled by ``1/√d`` so the task's difficulty does not drift with
``d``), cut into ``n_classes`` balanced classes at the score's quantiles. Also plain manifold samplers
(:func:`sample_sphere`, :func:`sample_swiss_roll`) for tests.
"""

from __future__ import annotations

import numpy as np

from .._validation import as_generator, check_fraction, check_int
from .datasets import Dataset, _make, load_digits, load_mnist1d

__all__ = [
    "make_linear_manifold",
    "make_curved_manifold",
    "make_reduced",
    "sample_sphere",
    "sample_swiss_roll",
    "GENERATORS",
]

_TEACHER_WIDTH = 64


def _check_dims(d, D, n_train, n_test, n_classes, noise):
    d = check_int(d, "d", minimum=1)
    D = check_int(D, "D", minimum=1)
    if d > D:
        raise ValueError(f"intrinsic dimension d={d} exceeds the ambient dimension D={D}")
    n_train = check_int(n_train, "n_train", minimum=2)
    n_test = check_int(n_test, "n_test", minimum=1)
    n_classes = check_int(n_classes, "n_classes", minimum=2)
    if n_train < n_classes:
        raise ValueError(f"n_train={n_train} is smaller than n_classes={n_classes}")
    noise = check_fraction(noise, "noise", high=np.inf)
    return d, D, n_train, n_test, n_classes, noise


def _teacher_labels(z_tr: np.ndarray, z_te: np.ndarray, n_classes: int, rng: np.random.Generator):
    """Balanced labels from a fixed random tanh teacher; thresholds at the training score's quantiles."""
    d = z_tr.shape[1]
    W = rng.normal(size=(d, _TEACHER_WIDTH)) / np.sqrt(d)
    b = rng.normal(size=_TEACHER_WIDTH) * 0.5
    v = rng.normal(size=_TEACHER_WIDTH) / np.sqrt(_TEACHER_WIDTH)

    def score(z):
        return np.tanh(z @ W + b) @ v

    s_tr, s_te = score(z_tr), score(z_te)
    cuts = np.quantile(s_tr, np.arange(1, n_classes) / n_classes)
    return np.searchsorted(cuts, s_tr), np.searchsorted(cuts, s_te)


def make_linear_manifold(
    d: int,
    D: int = 100,
    n_train: int = 2000,
    n_test: int = 500,
    n_classes: int = 2,
    noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    """Points on a random ``d``-dimensional linear subspace of ``R^D``, Gaussian within it.

    ``noise`` is the standard deviation of isotropic Gaussian noise added in all ``D`` directions.

    >>> ds = make_linear_manifold(3, 20, n_train=100, n_test=10, seed=0)
    >>> ds.X_train.shape, ds.intrinsic_dim
    (torch.Size([100, 20]), 3)
    """
    d, D, n_train, n_test, n_classes, noise = _check_dims(d, D, n_train, n_test, n_classes, noise)
    rng = as_generator(seed)
    A, _ = np.linalg.qr(rng.normal(size=(D, d)))
    z = rng.normal(size=(n_train + n_test, d))
    X = z @ A.T + noise * rng.normal(size=(n_train + n_test, D))
    ytr, yte = _teacher_labels(z[:n_train], z[n_train:], n_classes, rng)
    ds = _make(
        "synthetic_linear", X[:n_train], ytr, X[n_train:], yte, (D,), n_classes,
    )
    # (the loader's arguments: name and meta reload it through load_dataset)
    ds.meta = dict(d=d, D=D, n_train=n_train, n_test=n_test, n_classes=n_classes, noise=noise, seed=seed)
    ds.intrinsic_dim = d
    return ds


def make_curved_manifold(
    d: int,
    D: int = 100,
    n_train: int = 2000,
    n_test: int = 500,
    n_classes: int = 2,
    noise: float = 0.0,
    seed: int = 0,
    frequency: float = 1.0,
) -> Dataset:
    """A curved ``d``-manifold in ``R^D``: ``x_i = cos(w_i · z + b_i)``, ``z ~ N(0, I_d)``,
    ``w_i ~ N(0, frequency² I_d / d)``, ``b_i ~ U[0, 2π)``; every coordinate then standardised to unit
    variance (with the training statistics), and Gaussian ``noise`` added.

    ``frequency`` sets the curvature: the phase ``w·z`` has standard deviation ``≈ frequency`` radians.

    >>> ds = make_curved_manifold(2, 30, n_train=100, n_test=10, seed=0)
    >>> ds.X_train.shape, ds.intrinsic_dim
    (torch.Size([100, 30]), 2)
    """
    d, D, n_train, n_test, n_classes, noise = _check_dims(d, D, n_train, n_test, n_classes, noise)
    frequency = check_fraction(frequency, "frequency", high=np.inf, low_inclusive=False)
    rng = as_generator(seed)
    W = rng.normal(size=(d, D)) * frequency / np.sqrt(d)
    b = rng.uniform(0, 2 * np.pi, size=D)
    z = rng.normal(size=(n_train + n_test, d))
    X = np.cos(z @ W + b)
    mu, sd = X[:n_train].mean(0), X[:n_train].std(0)
    X = (X - mu) / np.where(sd > 0, sd, 1.0)
    X = X + noise * rng.normal(size=X.shape)
    ytr, yte = _teacher_labels(z[:n_train], z[n_train:], n_classes, rng)
    ds = _make(
        "synthetic_curved", X[:n_train], ytr, X[n_train:], yte, (D,), n_classes,
    )
    ds.meta = dict(
        d=d, D=D, n_train=n_train, n_test=n_test, n_classes=n_classes, noise=noise, seed=seed,
        frequency=frequency,
    )
    ds.intrinsic_dim = d
    return ds


def make_reduced(
    dataset: str | Dataset = "digits", d: int = 8, *, seed: int | None = None, **load_kw
) -> Dataset:
    """A real data set projected onto its top-``d`` principal components (fitted on the training split) and
    mapped back, so the ambient dimension and the labels are unchanged and the data span a ``d``-dimensional
    affine subspace.

    ``dataset`` is ``"digits"``, ``"mnist1d"`` (loaded with ``seed``, default 0, and ``load_kw``) or a
    :class:`Dataset` (used as it is: ``seed`` and loader arguments are refused, they would not apply). The
    result is named ``"reduced"``, its ``meta`` the arguments that :func:`~netgeom.data.load_dataset`
    reloads it from (``dataset``, ``d``, ``seed``, the loader's own) or, from a Dataset in hand, that set's
    name and ``meta`` under ``dataset`` and ``base_meta``.

    >>> ds = make_reduced("digits", 5, seed=0)
    >>> ds.input_shape, ds.intrinsic_dim, ds.meta
    ((64,), 5, {'dataset': 'digits', 'd': 5, 'seed': 0})
    """
    if isinstance(dataset, str):
        loaders = {"digits": load_digits, "mnist1d": load_mnist1d}
        if dataset not in loaders:
            raise ValueError(f"make_reduced knows the data sets {sorted(loaders)}, got {dataset!r}")
        seed = 0 if seed is None else seed
        base = loaders[dataset](seed=seed, **load_kw)
        provenance = {"dataset": dataset, "seed": seed, **load_kw}
    elif isinstance(dataset, Dataset):
        given = (["seed"] if seed is not None else []) + sorted(load_kw)
        if given:
            raise TypeError(
                f"make_reduced got {', '.join(given)} with a Dataset in hand: they apply only when it loads "
                "a data set by name; reduce the Dataset as it is, or pass its name"
            )
        base = dataset
        provenance = {"dataset": base.name, "base_meta": dict(base.meta)}
    else:
        raise TypeError(f"dataset must be a name or a Dataset, got {type(dataset).__name__}")
    flat = base.flat()
    Xtr = flat.X_train.double().numpy()
    Xte = flat.X_test.double().numpy()
    d = check_int(d, "d", minimum=1, maximum=min(Xtr.shape))
    mu = Xtr.mean(0)
    _, sv, Vt = np.linalg.svd(Xtr - mu, full_matrices=False)
    rank = int((sv > sv[0] * max(Xtr.shape) * np.finfo(np.float64).eps).sum())
    if d > rank:
        # directions of zero variance (e.g. digits' always-blank pixels) add nothing: the data would span
        # fewer than d dimensions while intrinsic_dim claimed d
        raise ValueError(f"d={d} exceeds the rank {rank} of the centred {base.name} training data")
    P = Vt[:d].T @ Vt[:d]

    def proj(X):
        return (X - mu) @ P + mu

    meta = {"dataset": provenance.pop("dataset"), "d": d, **provenance}
    ds = _make(
        "reduced", proj(Xtr), base.y_train.numpy(), proj(Xte), base.y_test.numpy(), base.input_shape,
        base.n_classes, **meta,
    )
    ds.intrinsic_dim = d
    return ds


def sample_sphere(n: int, d: int, *, seed: int, radius: float = 1.0) -> np.ndarray:
    """``n`` points uniform on the sphere ``S^d ⊂ R^{d+1}``."""
    n, d = check_int(n, "n", minimum=1), check_int(d, "d", minimum=1)
    g = as_generator(seed).normal(size=(n, d + 1))
    return radius * g / np.linalg.norm(g, axis=1, keepdims=True)


def sample_swiss_roll(n: int, *, seed: int, noise: float = 0.0) -> np.ndarray:
    """``n`` points on the Swiss roll (a 2-manifold in ``R^3``): ``t ~ U[1.5π, 4.5π]``, height ``U[0, 21]``.

    >>> sample_swiss_roll(10, seed=0).shape
    (10, 3)
    """
    n = check_int(n, "n", minimum=1)
    rng = as_generator(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    h = 21 * rng.uniform(size=n)
    X = np.stack([t * np.cos(t), h, t * np.sin(t)], axis=1)
    return X + noise * rng.normal(size=X.shape)


GENERATORS = {
    "synthetic_linear": make_linear_manifold,
    "synthetic_curved": make_curved_manifold,
    "reduced": make_reduced,
}
