"""A module-scoped autouse fixture for kNN tests that drive oneDNN's Gram blocks: the kNN takes them only on
machines with AVX-512 (:func:`netgeom.dimension.neighbors._avx512_kernels`); a test module that imports
``as_on_avx512`` runs as if every machine had it."""

import pytest

import netgeom.dimension.neighbors as nb


@pytest.fixture(autouse=True, scope="module")
def as_on_avx512():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nb, "_avx512_kernels", lambda: True)
        yield
