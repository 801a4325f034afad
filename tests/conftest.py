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

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


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
    if not os.path.exists(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
        # CI always has ../shared beside the clone: a missing split there is an error, not a reason to skip;
        # a user's checkout without it skips the few tests that read real MNIST files
        if os.environ.get("CI"):
            pytest.fail(f"CI run without the shared MNIST test split at {MNIST_DIR}")
        pytest.skip("the shared MNIST test split is not beside this checkout")
    return MNIST_DIR
