"""Seeded use of torch's global random generator, safe across threads.

PyTorch's default initialisers (``nn.Linear``, ``nn.Conv2d``, ...) draw from the process-wide generator and
take no ``generator`` argument. Forking and seeding it is only reproducible if no other thread draws from
it meanwhile: two models built at once in a threaded sweep got each other's numbers. Every netgeom block
that seeds the global generator holds this lock for as long as it draws.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_GLOBAL_RNG_LOCK = threading.RLock()


@contextlib.contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """Run the block with torch's global generator seeded to ``seed``, restored afterwards.

    >>> with seeded_global_rng(3):
    ...     a = torch.rand(2)
    >>> with seeded_global_rng(3):
    ...     b = torch.rand(2)
    >>> bool((a == b).all())
    True
    """
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
