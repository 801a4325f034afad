"""Worker threads whose torch operations each run on one OpenMP thread: chunk-level parallelism for batched
work that mixes torch products with compiled (numba, ``nogil``) passes and a little Python.

Why: torch's CPU wheels parallelise each operation with OpenMP, and after every parallel operation its
worker threads keep spinning for milliseconds. Work that alternates torch products with other compiled
passes then either leaves those passes on one core (run on the calling thread) or makes them compete with
spinning workers (run on threads of their own). Handing whole chunks to ``n`` threads instead, each of whose
torch operations run on that thread alone, keeps every core busy with no spinning and no barrier per
operation: on 2 cores, a single-threaded int8 product runs at 1.66x the wall time of a two-threaded one,
where two chunks side by side take 1.0x.

The number of OpenMP threads is a per-thread setting of the OpenMP runtime (``omp_set_num_threads`` sets the
calling thread's ``nthreads-var``; torch's ``at::get_num_threads`` reads it), so the caller's threads and
the process's other threads keep theirs; torch's own ``set_num_threads`` would also change the value that
threads created later start from. Where torch's OpenMP runtime cannot be found (another parallel backend,
another platform), :func:`chunk_pool` returns ``None`` and callers run their chunks one after another, with
the same results.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["chunk_pool", "map_ordered"]


@functools.lru_cache(maxsize=1)
def _openmp() -> ctypes.CDLL | None:
    """torch's OpenMP runtime (the library its operations parallelise with), or ``None``."""
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    names = [f for f in os.listdir(libdir) if f.startswith(("libgomp", "libiomp", "libomp"))]
    if not names:
        # a torch linked against the system's runtime: the one already loaded into this process
        try:
            with open("/proc/self/maps") as fh:
                maps = fh.read().split()
        except OSError:
            return None
        paths = {p for p in maps if os.path.basename(p).startswith(("libgomp", "libiomp", "libomp"))}
        if len(paths) != 1:  # none, or several runtimes: which one torch uses is not known
            return None
        names, libdir = [os.path.basename(p) for p in paths], os.path.dirname(paths.pop())
    try:
        lib = ctypes.CDLL(os.path.join(libdir, sorted(names)[0]))
        lib.omp_set_num_threads.argtypes = [ctypes.c_int]
    except (OSError, AttributeError):
        return None
    # check on a thread of its own that torch follows the setting (it would not if this were another
    # runtime than torch's); the caller's thread keeps its own
    seen = []
    t = threading.Thread(target=lambda: seen.append(_one_openmp_thread(lib)))
    t.start()
    t.join()
    return lib if seen == [1] else None


@functools.lru_cache(maxsize=1)
def _mkl_local() -> Callable | None:
    """MKL's per-thread ``mkl_set_num_threads_local`` as torch's CPU library exports it, or ``None``. (The C
    entry point is ``MKL_Set_Num_Threads_Local``; the lower-case export is the Fortran one, by reference.)"""
    if not torch.backends.mkl.is_available():
        return None
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    for name in sorted(os.listdir(libdir)):
        if name.startswith("libtorch_cpu."):
            try:
                fn = ctypes.CDLL(os.path.join(libdir, name)).MKL_Set_Num_Threads_Local
            except (OSError, AttributeError):
                return None
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


def _one_openmp_thread(lib: ctypes.CDLL) -> int:
    """Run the calling thread's torch operations on one OpenMP thread; torch's thread count after that."""
    # torch sets a new thread's OpenMP thread count (to the process-wide torch.set_num_threads value) the
    # first time the thread asks for it: make that happen first, then override it for this thread only
    torch.get_num_threads()
    lib.omp_set_num_threads(1)
    # once torch.set_num_threads(n) has run anywhere in the process, that first ask also sets MKL's
    # per-thread count to n, which MKL's products follow over the OpenMP one (a team of n per worker)
    mkl = _mkl_local()
    if mkl is not None:
        mkl(1)
    return torch.get_num_threads()


def chunk_pool(n: int | None = None) -> ThreadPoolExecutor | None:
    """A pool of ``n`` threads (default: torch's intra-op thread count) whose torch operations run on one
    OpenMP thread each, or ``None`` when that is not worth it (``n <= 1``) or not possible here.

    >>> pool = chunk_pool(2)
    >>> if pool is not None:
    ...     with pool:
    ...         print(list(map_ordered(pool, lambda x: torch.get_num_threads() * x, range(3), 2)))
    ... else:
    ...     print([0, 1, 2])
    [0, 1, 2]
    """
    n = torch.get_num_threads() if n is None else n
    lib = _openmp() if n > 1 else None
    if lib is None:
        return None
    return ThreadPoolExecutor(
        n, thread_name_prefix="netgeom-chunk", initializer=_one_openmp_thread, initargs=(lib,)
    )


def map_ordered(pool: ThreadPoolExecutor | None, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``fn(item)`` for each item, in order, computed by ``pool`` with at most ``ahead`` items in flight
    (items are drawn from ``items`` lazily, on the calling thread); without a pool, one after another."""
    if pool is None:
        for item in items:
            yield fn(item)
        return
    queue: deque = deque()
    try:
        for item in items:
            queue.append(pool.submit(fn, item))
            if len(queue) >= ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()
    finally:
        for f in queue:  # the caller stopped early or an item failed: drop what has not started
            f.cancel()
