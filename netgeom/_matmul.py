"""Float32 products that certified error bounds can rely on, on the fastest path torch offers for them.

Three facts about torch's CPU float32 products shape this module:

* **Precision switches.** ``torch.set_float32_matmul_precision("medium")`` (common in training scripts) or
  ``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` let torch compute large float32 products from
  bfloat16 pieces. Their errors are then outside the IEEE float32 model that netgeom's certified bounds
  (``gamma_K |W| |x|``) assume. :func:`ieee_float32` holds every such switch at IEEE float32 for a block and
  restores the caller's values after, without the legacy getter ``torch.get_float32_matmul_precision``,
  which raises once the new per-backend API has been used.
* **Subnormals.** ``torch.set_flush_denormal(True)`` (or a fast-math library) makes the CPU read and write
  subnormal numbers as zero, outside the gradual-underflow model of the bounds, and a traced network's
  tiny weights vanish: :func:`gradual_underflow` (also part of :func:`ieee_float32`) switches that off for
  a block, on the calling thread and on torch's OpenMP threads (which keep the state they were started
  with); :func:`netgeom.trace` reads networks inside it.
* **Speed.** ``F.linear`` on CPU runs MKL's sgemm. On AMD processors MKL takes its AVX2 code path: on this
  project's reference machine (AMD EPYC, AVX-512) oneDNN's float32 matmul, which torch also ships, runs
  2.0-2.4x faster for the same IEEE float32 product (4096x784 @ 784x400: 12.6 against 28.4 ms on one
  thread). :func:`linear32` uses oneDNN for products large enough to repay its per-shape set-up (~1 ms the
  first time a shape is seen), and ``F.linear`` otherwise. Both are IEEE float32 sums of exact products in
  some order, so one error bound covers either; only the rounding of individual entries may differ.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["gradual_underflow", "ieee_float32", "int8_products_fast", "linear32"]

# oneDNN creates (and caches) a primitive per shape, ~0.7-2 ms the first time: below this many
# multiply-adds MKL's sgemm (~48 GMAC/s per core on the reference machine) is done before that pays off
_ONEDNN_MIN_MACS = 1 << 24

# (object, attribute) pairs of torch's per-backend float32 precision switches (torch >= 2.9)
_SWITCHES = (
    ("mkldnn.matmul", "fp32_precision"),
    ("mkldnn.conv", "fp32_precision"),
    ("mkldnn.rnn", "fp32_precision"),
    ("cuda.matmul", "fp32_precision"),
    ("cudnn.conv", "fp32_precision"),
    ("cudnn.rnn", "fp32_precision"),
)


def _backend(path: str):
    obj = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _flushes_subnormals() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal numbers to zero (``torch.set_flush_denormal``,
    or a library built with fast-math): 2^-127 is a subnormal float32 (a C cast and product, ~0.5 us)."""
    return float(np.float32(2.0**-127) * np.float32(1.0)) == 0.0


# torch's elementwise operations give each of its n OpenMP threads one slice of a tensor of n * _GRAIN
# elements (at::internal::GRAIN_SIZE): thread t reads element t * _GRAIN
_GRAIN = 32768


@functools.lru_cache(maxsize=4)
def _probe(n: int) -> torch.Tensor:
    """float32 zeros with 2^-127 (subnormal; written as bits, no arithmetic) at the start of each slice."""
    bits = np.zeros(n * _GRAIN, dtype=np.int32)
    bits[::_GRAIN] = 0x00400000
    return torch.from_numpy(bits).view(torch.float32)


def _workers_flush() -> bool:
    """Whether one of torch's OpenMP threads (this thread's team) flushes subnormals (~10 us, 2 idle threads).

    The flush setting is a per-thread CPU state that a new thread copies from the thread starting it, and
    ``torch.set_flush_denormal`` sets the calling thread's alone: OpenMP's pool threads, started by torch's
    first parallel operation, keep flushing when that ran under ``torch.set_flush_denormal(True)`` (a
    4096-input count_patterns gave 2049 patterns for 4096, the half on the other thread read as zeros)."""
    n = torch.get_num_threads()
    if n <= 1:
        return False
    out = torch.mul(_probe(n), 1.0).view(torch.int32)[::_GRAIN]
    return not bool((out != 0).all())


@functools.lru_cache(maxsize=1)
def _libm():
    """C's math library (``fegetenv``/``fesetenv``), or ``None``: the process's own symbols first (Python is
    linked against it), else the library found by name."""
    import ctypes
    import ctypes.util

    for name in (None, ctypes.util.find_library("m")):
        try:
            lib = ctypes.CDLL(name)
            if hasattr(lib, "fesetenv") and hasattr(lib, "fegetenv"):
                return lib
        except OSError:
            pass
    return None


def _set_team_flushing(on: bool) -> None:
    """Set (or clear) flushing on every thread of this thread's OpenMP team, this one's state kept: each
    thread of an OpenMP region runs C's ``fesetenv`` on this thread's environment with the wanted flush
    bits. Raises where that is not possible (torch without a GNU-compatible OpenMP, no C ``fesetenv``)."""
    import ctypes

    from .nets._workers import _openmp

    omp, libm = _openmp(), _libm()
    if omp is None or libm is None or not hasattr(omp, "GOMP_parallel"):
        raise RuntimeError(
            "torch's worker threads flush subnormal numbers to zero (torch.set_flush_denormal(True), or a "
            "fast-math library, was in effect when they started) and netgeom cannot switch them here: "
            "their results would read tiny weights and inputs as 0. Call torch.set_flush_denormal(False) "
            "before torch's first parallel operation, or torch.set_num_threads(1)"
        )
    mine = _flushes_subnormals()
    env = ctypes.create_string_buffer(1024)  # larger than any platform's fenv_t
    torch.set_flush_denormal(on)
    try:
        libm.fegetenv(env)
        run = omp["GOMP_parallel"]
        run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        run.restype = None
        # num_threads 0: the team torch's operations use (this thread's OpenMP thread count)
        run(ctypes.cast(libm.fesetenv, ctypes.c_void_p), ctypes.cast(env, ctypes.c_void_p), 0, 0)
    finally:
        torch.set_flush_denormal(mine)


_STATE = threading.local()  # per thread: whether an enclosing block has checked torch's OpenMP threads


@contextlib.contextmanager
def gradual_underflow(torch_threads: bool = True) -> Iterator[None]:
    """Subnormal numbers kept (IEEE gradual underflow) inside the block, also usable as a decorator.

    With flushing on (``torch.set_flush_denormal(True)``), a float32 weight or input of 1e-40 reads as 0: a
    traced network loses it, a pattern's sign flips, distinct tiny points coincide. Flushing is switched off
    for the block, on this thread and on torch's OpenMP threads (which keep the state they started with,
    whatever this thread's is now), and back on after where it was on; threads started inside the block
    inherit it. Where torch's threads flush and cannot be switched, an error says so. ``torch_threads=False``
    for a block that runs no parallel torch operation on the CPU (numpy, numba and threads of its own): the
    check of torch's threads wakes them, and their spinning afterwards took a core from such a block (a
    1000-point kNN: 8 -> 12-16 ms).

    Example
    -------
    >>> import numpy as np, torch
    >>> _ = torch.set_flush_denormal(True)
    >>> with gradual_underflow():
    ...     bool(np.float32(1e-40) != 0)
    True
    >>> _ = torch.set_flush_denormal(False)
    """
    flushed = _flushes_subnormals()
    if flushed:
        torch.set_flush_denormal(False)
    checked = getattr(_STATE, "team", False)
    team = False
    try:
        # (an enclosing block on this thread has checked the team already)
        if torch_threads and not checked and _workers_flush():
            _set_team_flushing(False)
            team = True
            if _workers_flush():
                raise RuntimeError(
                    "torch's worker threads still flush subnormal numbers to zero after netgeom switched "
                    "them: call torch.set_flush_denormal(False) before torch's first parallel operation, or "
                    "torch.set_num_threads(1)"
                )
        _STATE.team = checked or torch_threads
        try:
            yield
        finally:
            _STATE.team = checked
    finally:
        if team:
            _set_team_flushing(True)
        if flushed:
            torch.set_flush_denormal(True)


class _Holds:
    """The process-wide switches, held while any thread is inside :func:`ieee_float32`: the first thread in
    saves the caller's values, the last one out restores them. (Each restoring its own would let one
    thread's exit hand the other's products back to bfloat16 mid-count, e.g. under a threaded Dask sweep.)
    Counted per thread, so that a forked child, which keeps only the thread that forked, counts only that
    thread's blocks (:meth:`after_fork`)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.inside: dict[int, int] = {}  # thread ident -> blocks it is inside
        self.saved: list[tuple[object, str, object]] = []

    def enter(self) -> None:
        me = threading.get_ident()
        with self.lock:
            if not self.inside:
                self.saved = self._hold()
            self.inside[me] = self.inside.get(me, 0) + 1

    def exit(self) -> None:
        me = threading.get_ident()
        with self.lock:
            self.inside[me] -= 1
            if not self.inside[me]:
                del self.inside[me]
            if not self.inside:
                self._restore()

    def _restore(self) -> None:
        for obj, attr, value in reversed(self.saved):
            setattr(obj, attr, value)
        self.saved = []

    def after_fork(self) -> None:
        """In a forked child: a free lock (a thread of the parent may have held it at the fork), and only the
        forking thread's blocks; when it was inside none, the caller's values come back at once (the other
        threads that held them do not exist here)."""
        self.lock = threading.Lock()
        me = threading.get_ident()
        self.inside = {me: self.inside[me]} if me in self.inside else {}
        if not self.inside and self.saved:
            self._restore()

    @staticmethod
    def _hold() -> list[tuple[object, str, object]]:
        saved = []
        for path, attr in _SWITCHES:
            obj = _backend(path)
            if obj is not None and hasattr(obj, attr):
                saved.append((obj, attr, getattr(obj, attr)))
                setattr(obj, attr, "ieee")
        if not saved:
            # a torch before the per-backend switches: its TF32 flags (whose getters, on newer torch,
            # raise once both APIs have been used, hence only here)
            for obj in (torch.backends.cuda.matmul, torch.backends.cudnn):
                saved.append((obj, "allow_tf32", obj.allow_tf32))
                obj.allow_tf32 = False
        return saved


_HOLDS = _Holds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_HOLDS.after_fork)


@contextlib.contextmanager
def ieee_float32(torch_threads: bool = True) -> Iterator[None]:
    """Hold torch's float32 products at IEEE float32 inside the block; the caller's settings come back after.

    TF32 (CUDA) and bfloat16 pieces (oneDNN on CPU) would void bounds of the form ``gamma_K |W| |x|``. The
    switches are process-wide in torch: while any thread is inside such a block, every thread's products
    run in IEEE float32; the last thread out restores the caller's values. Subnormals are kept too
    (:func:`gradual_underflow`, per thread; ``torch_threads`` as there).

    Example
    -------
    >>> import torch
    >>> with ieee_float32():
    ...     torch.backends.mkldnn.matmul.fp32_precision
    'ieee'
    """
    _HOLDS.enter()
    try:
        with gradual_underflow(torch_threads):
            yield
    finally:
        _HOLDS.exit()


@functools.lru_cache(maxsize=1)
def _onednn_linear():
    """torch's oneDNN linear operator (float32, any batch), or ``None`` where torch was built without it."""
    if not torch.backends.mkldnn.is_available():
        return None
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None:
        return None
    # float32 named: under a caller's torch.set_default_dtype(torch.float64) the probe failed, and the
    # answer is cached for the process (MKL for every product after)
    f32 = torch.float32
    try:  # an operator that exists but cannot run (unsupported CPU) is a build without it
        w = torch.ones(3, 5, dtype=f32)
        got = op(torch.ones(2, 5, dtype=f32), w, torch.ones(3, dtype=f32), "none", [], "")
    except RuntimeError:
        return None
    return op if torch.equal(got, torch.full((2, 3), 6.0, dtype=f32)) else None


def linear32(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in IEEE float32 (``F.linear``'s contract), by oneDNN on CPU when it pays.

    ``x`` is (B, K), ``weight`` (N, K), ``bias`` (N,) or ``None``, on one device. Call inside
    :func:`ieee_float32` when a bound depends on the rounding model. Other dtypes (float64), devices, small
    products and autograd inputs go to ``F.linear`` itself.

    Example
    -------
    >>> import torch
    >>> x, w = torch.ones(2, 3), torch.full((4, 3), 0.5)
    >>> linear32(x, w, torch.zeros(4)).tolist()[0]
    [1.5, 1.5, 1.5, 1.5]
    """
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and x.dim() == 2
        and x.shape[0] * x.shape[1] * weight.shape[0] >= _ONEDNN_MIN_MACS
        and not (x.requires_grad or weight.requires_grad)
        and torch.backends.mkldnn.enabled  # a caller who switched oneDNN off gets MKL
    ):
        op = _onednn_linear()
        if op is not None:
            # the operator reads a strided bias as if it were dense (a bias[::2] gave errors of ~4): every
            # operand goes in row-major (a no-op for the usual contiguous ones)
            b = None if bias is None else bias.contiguous()
            return op(x.contiguous(), weight.contiguous(), b, "none", [], "")
    return F.linear(x, weight, bias)


# int8 products count as fast when at most this many times as slow as the float32 product of the same shape
# (on AVX-512 VNNI they run at 0.1-0.5x; torch's fallback loop on CPUs without VNNI at ~50-100x)
_INT8_SLOWER = 3.0


@functools.lru_cache(maxsize=1)
def int8_products_fast() -> bool:
    """Whether ``torch._int_mm`` runs on a fast int8 kernel on this CPU, by timing it once against a float32
    product of the same shape (64 x 256 x 128, best of three each; ~0.1 ms with VNNI, ~10 ms without).

    Why a measurement: where torch has no int8 kernel for the CPU (an AMD Zen 3 without AVX-512 VNNI, say),
    ``_int_mm`` is a plain loop, ~300 M multiply-adds per second against ~40 G for float32: the int8 first
    layer of :func:`netgeom.count_patterns` then took 11.7 s per product of 4096 x 784 x 400, and a count of
    32 768 points through 784-400-400-10 2 minutes instead of 0.7 s for the plain float32 forward. Exactness
    is checked separately (:func:`netgeom.nets._int8.int8_products_exact`).
    """
    import time

    if not hasattr(torch, "_int_mm"):
        return False
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (64, 256), generator=g, dtype=torch.int8)
    b = torch.randint(-127, 128, (256, 128), generator=g, dtype=torch.int8)
    af, bf = a.to(torch.float32), b.T.to(torch.float32).contiguous()

    def best(f) -> float:
        out = math.inf
        for _ in range(3):
            t = time.perf_counter()
            f()
            out = min(out, time.perf_counter() - t)
        return out

    from .nets.certified import _threads

    # both on one thread: on a busy machine a product on torch's thread team waits for every team thread to
    # be scheduled (2 threads, load 8 on 2 cores: 36-46 ms for this float32 product, 0.2 ms on one thread)
    with _threads(1):
        try:
            torch._int_mm(a, b)  # (first call: set-up outside the timing)
            F.linear(af, bf)
            t8 = best(lambda: torch._int_mm(a, b))
        except (RuntimeError, TypeError, NotImplementedError):
            return False
        return t8 <= _INT8_SLOWER * best(lambda: F.linear(af, bf))
