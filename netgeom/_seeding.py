"""Seeded use of torch's global random generator, safe across threads.

PyTorch's default initialisers (``nn.Linear``, ``nn.Conv2d``, ...) draw from the process-wide generator and
take no ``generator`` argument. Forking and seeding it is only reproducible if no other thread draws from
it meanwhile: two models built at once in a threaded sweep got each other's numbers. Every netgeom block
that seeds the global generator holds this lock for as long as it draws.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch


class _ForkSafeRLock:
    """A re-entrant lock that a forked child gets free unless the thread that forked holds it: a child keeps
    only that thread, so a lock held by any other thread of the parent would be held there for good (the
    child's first seeded build or training would wait forever)."""

    def __init__(self):
        self._lock = threading.RLock()
        self._owner: int | None = None  # (set and cleared while the lock is held)
        self._depth = 0

    def __enter__(self) -> bool:
        self._lock.acquire()
        self._owner = threading.get_ident()
        self._depth += 1
        return True

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if not self._depth:
            self._owner = None
        self._lock.release()

    def after_fork(self) -> None:
        if self._owner != threading.get_ident():
            self._lock, self._owner, self._depth = threading.RLock(), None, 0


_GLOBAL_RNG_LOCK = _ForkSafeRLock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_GLOBAL_RNG_LOCK.after_fork)


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
