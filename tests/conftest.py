"""Shared small fixtures. Matplotlib runs headless in tests."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

from netgeom import mlp  # noqa: E402

# Under CI the property tests draw the same examples every run, so a red CI always means a change broke
# something; locally they draw new examples each run and keep searching.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# the MNIST test split beside the checkout (../shared/data/mnist), or wherever NETGEOM_MNIST_DIR points
MNIST_DIR = os.environ.get(
    "NETGEOM_MNIST_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
)


@pytest.fixture
def tiny_mlp():
    return mlp(3, [5, 4], 2, seed=0)


@pytest.fixture(autouse=True)
def _torch_threads():
    # Tests run on 2 shared cores; one intra-op thread keeps them predictable.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def mnist_dir():
    # the tests that read real MNIST files need the split: missing, they fail (never skip) and say where
    if not os.path.exists(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        pytest.fail(
            f"the MNIST test split (t10k-*-idx*-ubyte.gz) is not at {MNIST_DIR}: put ../shared beside the "
            "checkout or set NETGEOM_MNIST_DIR"
        )
    return MNIST_DIR


@pytest.fixture
def two_threads():
    """Two torch threads for one test (the autouse fixture above sets one): with one, count_patterns makes no
    chunk pool, so tests of the pool path need this."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def pool_runtime(two_threads):
    """Two torch threads and a real chunk pool (netgeom.nets._workers). Where torch parallelises with OpenMP
    on Linux (as on every CI machine) a missing pool is a failure, not a skip: the tests using this fixture
    would otherwise pass without ever running the pool path. Elsewhere (another backend or platform) they
    skip, naming why."""
    import sys

    from _platform import OPENMP, unavailable

    from netgeom.nets import _workers

    pool = _workers.chunk_pool(2)
    if pool is None:
        unavailable(
            f"no per-thread OpenMP control for torch here ({sys.platform}, OpenMP backend: {OPENMP})",
            expected=OPENMP and sys.platform.startswith("linux"),
        )
    pool.shutdown()
