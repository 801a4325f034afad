"""Compiled passes of the graph pattern engine (:class:`netgeom.nets.certified._Engine`) on the CPU.

Why compiled: a ReLU fed by a convolution reads its pre-activation and elementwise error bound for the signs,
the undecided test, the activation and the activation's error bound (seven torch passes over a (rows, width)
array, as costly as the convolution of a LeNet's first layer); a max-pool runs a dozen passes over its window
slots for the running maximum, its position, the second largest entry, the largest error and the top-two test.
One pass each here (for a max-pool whose windows are a regular grid, its slots read at a stride rather than
through an index table, :func:`pool_grid`). The ReLU pass also reads a stacked first convolution's two halves
in place (value, |W| bound) and scales the bound as it reads it, and before a convolution writes that
convolution's bound input ``e + g relu(z)`` (four torch passes fewer per block), or computes a convolution's
crude bound entry by entry as it reads (:func:`relu_outer`) and hands the next convolution its row maxima;
both list the ambiguous (row, unit) pairs. The float64 redo of undecided (row, unit) pairs is one pass too (a
dozen small gathers and reductions per block in torch), one kernel for gathered rows and for the block's
arrays read in place. All run on the calling thread, on row blocks the engine keeps at ~4 MB per value.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

__all__ = [
    "pool_grid",
    "pool_top2",
    "refine_pairs",
    "refine_pairs2",
    "refine_pairs2_conv",
    "refine_pairs_pool",
    "relu_elem",
    "relu_fused",
    "relu_outer",
    "relu_screen",
    "row_absmax",
    "window_norms",
    "window_sure_pairs",
]


@numba.njit(cache=True, nogil=True, inline="always")
def _relu_row(zr, zo, dr, do, dscale, gnext, mode, br, vr, er, qr, qi, peak=True):
    """One row of :func:`_relu_fused`; returns ``(ambiguous entries, entries with a nonzero output or
    bound, the largest q as an integer)`` (the last two in mode 3 only)."""
    N = br.shape[0]
    zero = zr.dtype.type(0)
    # a value that overflowed (inf) says nothing about the exact sign, whatever its bound: ambiguous, as NaN
    inf = zr.dtype.type(np.inf)
    cnt = 0
    live = 0
    if mode == 0:
        for j in range(N):
            a = zr[np.uintp(zo + j)]  # (unsigned: no negative-index wraparound, so it vectorises)
            b = dr[np.uintp(do + j)] * dscale
            br[j] = a > 0
            cnt += ((abs(a) <= b) & (b > 0)) | (a != a) | (b != b) | (abs(a) == inf)
    elif mode == 1:
        for j in range(N):
            a = zr[np.uintp(zo + j)]
            b = dr[np.uintp(do + j)] * dscale
            pos = a > 0
            br[j] = pos
            cnt += ((abs(a) <= b) & (b > 0)) | (a != a) | (b != b) | (abs(a) == inf)
            vr[j] = a if pos else zero
            er[j] = zero if a + b <= 0 else b
    elif mode == 2:
        for j in range(N):
            a = zr[np.uintp(zo + j)]
            b = dr[np.uintp(do + j)] * dscale
            pos = a > 0
            br[j] = pos
            cnt += ((abs(a) <= b) & (b > 0)) | (a != a) | (b != b) | (abs(a) == inf)
            va = a if pos else zero
            vr[j] = va
            er[j] = (zero if a + b <= 0 else b) + gnext * va
    else:
        for j in range(N):
            a = zr[np.uintp(zo + j)]
            b = dr[np.uintp(do + j)] * dscale
            pos = a > 0
            br[j] = pos
            cnt += ((abs(a) <= b) & (b > 0)) | (a != a) | (b != b) | (abs(a) == inf)
            va = a if pos else zero
            vr[j] = va
            ej = zero if a + b <= 0 else b
            qr[j] = ej + gnext * va
            live += (va != zero) | (ej != zero)
    mx = qi[0]
    if mode == 3 and peak:
        # the largest q through its bit pattern: q >= 0, where the order of the bits as integers is that
        # of the numbers (a float maximum does not vectorise; an integer one does). A NaN q (only where
        # a or b is NaN: the row is ambiguous, so redone whole) may be negative as an integer and skipped.
        for j in range(N):
            mx = max(mx, qi[j])
    return cnt, live, mx


@numba.njit(cache=True, nogil=True, inline="always")
def _emit(zr, zo, dr, do, dscale, N, r, pr, pu, npairs):
    """The ambiguous entries of row ``r`` (the test of :func:`_relu_row`) as (row, unit) pairs, up to the
    capacity of ``pr`` / ``pu`` (``npairs[0]`` counts them all: past the capacity the caller finds them
    itself). A second, scalar pass, only over rows with an ambiguous entry."""
    cap = pr.shape[0]
    inf = zr.dtype.type(np.inf)
    for j in range(N):
        a = zr[np.uintp(zo + j)]
        b = dr[np.uintp(do + j)] * dscale
        if ((abs(a) <= b) & (b > 0)) | (a != a) | (b != b) | (abs(a) == inf):
            k = npairs[0]
            if k < cap:
                pr[k] = r
                pu[k] = j
            npairs[0] = k + 1


@numba.njit(cache=True, nogil=True)
def _relu_fused(zs, zo, ds, do, dscale, gnext, mode, bits, n_und, v, e, q, qi, m, nz, pr, pu, npairs, cs):
    """Per entry of row ``r``, with ``z = zs[r, zo + j]`` and the bound ``d = ds[r, do + j] * dscale``
    (rounded as torch's multiplication by a scalar; ``zs``, ``ds`` C-contiguous, possibly one array holding
    both side by side, as a stacked convolution's output): ``bits = z > 0``; ambiguous when ``|z| <= d``
    with ``d > 0`` or when ``z`` or ``d`` is NaN (counted per row in ``n_und``). ``mode`` 1 also writes
    ``v = relu(z)`` and ``e = 0`` where ``z + d <= 0`` (the input is certainly negative: the output is an
    exact 0), else ``d``; mode 2 writes ``e + gnext v`` in place of ``e`` (the input ``e + g |x^|`` of the
    next convolution's bound, the same two roundings as the torch passes it replaces); mode 3 writes ``v``
    and, per row, ``m`` = the largest ``fl(e + gnext v)`` (as the integer of its bits, through ``q`` /
    ``qi``, one row of scratch space viewed as floats / integers of the same width) and ``nz`` whether any
    ``v`` or ``e`` is nonzero (the crude bound of the next convolution, :class:`netgeom.nets.certified.
    _Outer`, without writing ``e``); mode 0 only the bits. The comparisons are those of the torch version,
    in the arrays' own precision; selects and bitwise operations, no branches (so that the loop
    vectorises). A NaN ``z`` gives ``v = 0``: its row is undecided, so redone, whatever follows. The
    ambiguous entries also go to ``pr`` / ``pu`` as (row, unit) pairs (:func:`_emit`). ``cs`` (mode 3
    only): ``(C, HW, windows, Q, R, scale)``, the next convolution's window norms of ``fl(e + gnext v)``
    into ``R`` (:func:`_window_norms_row`)."""
    B, N = bits.shape
    C, HW, win, Q, R, scale = cs
    for r in range(B):
        cnt, live, mx = _relu_row(
            zs[r], zo, ds[r], do, dscale, gnext, mode, bits[r], v[r], e[r], q, qi, C == 0
        )
        n_und[r] = cnt
        if cnt:
            _emit(zs[r], zo, ds[r], do, dscale, N, r, pr, pu, npairs)
        if mode == 3:
            m[r] = mx
            nz[r] = live > 0
            if C > 0:
                _window_norms_row(q, C, HW, win, Q, R[r], scale)


@numba.njit(cache=True, nogil=True)
def _relu_outer(
    z, t, risk, L, A, U, s, gnext, mode, bits, n_und, v, e, q, qi, m, nz, drow, pr, pu, npairs, cs
):
    """:func:`_relu_fused` with the windowed or crude bound of a convolution's output (``dscale`` 1), entry
    ``j = b P + p`` of row ``r`` (``t`` (B, P); ``P`` 1 for the crude bound, the output positions for a
    window bound) computed as read: ``((t_rp L_j + A_j) + k_r U_j) s`` (``k_r`` = 1 where ``risk``, else 0),
    in the arrays' precision and in the order of the torch operations of
    :meth:`netgeom.nets.certified._Outer.elem` (so the same numbers), into one row of scratch space."""
    B, N = bits.shape
    P = t.shape[1]
    one = z.dtype.type(1)
    zero = z.dtype.type(0)
    C, HW, win, Q, R, scale = cs
    for r in range(B):
        tr = t[r]
        kr = one if risk[r] else zero
        if P == 1:  # (the crude bound: one t per row, a loop that vectorises)
            t0 = tr[0]
            for j in range(N):
                drow[j] = ((t0 * L[j] + A[j]) + kr * U[j]) * s
        else:
            for b in range(N // P):
                o = b * P
                for p in range(P):
                    j = o + p
                    drow[j] = ((tr[p] * L[j] + A[j]) + kr * U[j]) * s
        cnt, live, mx = _relu_row(z[r], 0, drow, 0, one, gnext, mode, bits[r], v[r], e[r], q, qi, C == 0)
        n_und[r] = cnt
        if cnt:
            _emit(z[r], 0, drow, 0, one, N, r, pr, pu, npairs)
        if mode == 3:
            m[r] = mx
            nz[r] = live > 0
            if C > 0:
                _window_norms_row(q, C, HW, win, Q, R[r], scale)


@numba.njit(cache=True, nogil=True, inline="always")
def _window_norms_row(q, C, HW, win, Q, R, scale):
    """``R[p]`` >= ``scale ||q_w(p)||_2``, rounded up to ``R``'s precision: the 2-norm of the entries of
    ``q`` (laid out channel by channel, ``HW`` positions each, ``C`` channels) in the window ``w(p)`` of
    output position ``p`` (``win[p]``: the input positions it reads, -1 for padding), over every channel.
    Squares and sums in float64 (``q`` float32: no square under- or overflows; float64 roundings ~1e-16
    relative, far inside the callers' ``scale``), then the square root times ``scale``, rounded up to
    ``R``'s precision."""
    for h in range(HW):
        Q[h] = 0.0
    for c in range(C):
        o = c * HW
        for h in range(HW):
            a = np.float64(q[o + h])
            Q[h] += a * a
    P, k = win.shape
    inf = R.dtype.type(np.inf)
    # rounded up: a cast rounds to nearest, within half a unit in the last place relative (``2^-24`` in
    # float32), so ``val (1 + 2^-22)`` cast is above ``val`` wherever the result is a normal number; near
    # underflow (rare) the next number up where the cast rounded down
    up = 1.0 + 2.0**-22
    small = 4.0 * np.float64(np.finfo(R.dtype).tiny)
    for p in range(P):
        acc = 0.0
        for i in range(k):
            w = win[p, i]
            if w >= 0:
                acc += Q[w]
        val = np.sqrt(acc) * scale
        rv = R.dtype.type(val * up)
        if val < small and np.float64(rv) < val:
            rv = np.nextafter(rv, inf)
        R[p] = rv


@numba.njit(cache=True, nogil=True)
def _window_norms(x, C, HW, win, Q, R, nz, scale):
    """:func:`_window_norms_row` of every row of ``x``; ``nz[r]``: whether row ``r`` has a nonzero entry."""
    for r in range(x.shape[0]):
        _window_norms_row(x[r], C, HW, win, Q, R[r], scale)
        # (a nonzero float32 entry has a nonzero float64 square; a NaN's square is NaN, also != 0)
        live = False
        for h in range(HW):
            live |= Q[h] != 0
        nz[r] = live


def window_norms(x: torch.Tensor, C: int, HW: int, win: torch.Tensor, scale: float):
    """``(R, nz)``: per row of a CPU float32 ``x`` ((B, C HW), channel by channel), ``R`` (B, P) float32
    with ``R[r, p] >= scale ||x_r restricted to window p||_2`` (``win`` (P, k) input positions of one
    channel, -1 for padding, see :func:`_window_norms_row`) and ``nz`` whether the row has a nonzero entry
    (a NaN is nonzero, and its norm NaN)."""
    xn = x.contiguous().numpy()
    B = xn.shape[0]
    wn = win.numpy()
    R = np.empty((B, wn.shape[0]), dtype=xn.dtype)
    nz = np.empty(B, dtype=np.bool_)
    _window_norms(xn, C, HW, wn, np.empty(max(HW, 1), dtype=np.float64), R, nz, float(scale))
    return torch.from_numpy(R), torch.from_numpy(nz)


_NO_CS_WIN = np.full((1, 1), -1, dtype=np.int64)


def _cs_args(cs, B: int, dtype):
    """The ``cs`` tuple of the ReLU kernels: ``(C, HW, windows, scratch, R (B, P), scale)``, or a tuple
    that switches the window norms off (``C = 0``)."""
    if cs is None:
        return (0, 0, _NO_CS_WIN, np.empty(1, dtype=np.float64), np.empty((1, 1), dtype=dtype), 1.0)
    C, HW, win, scale = cs
    wn = win.numpy()
    return (C, HW, wn, np.empty(max(HW, 1), dtype=np.float64), np.empty((B, wn.shape[0]), dtype=dtype), scale)


@numba.njit(cache=True, nogil=True)
def _row_absmax(xi, mask, m):
    """Per row of ``xi`` (floats viewed as integers of their width): the largest ``|x|`` as the integer of
    its bits (``mask`` clears the sign bit; the order of those integers is that of the magnitudes, and a NaN
    lies above every number, so it propagates). An integer maximum vectorises; a float one does not."""
    B, N = xi.shape
    for r in range(B):
        xr = xi[r]
        mx = xr[0] & mask if N else mask & 0
        for j in range(N):
            mx = max(mx, xr[j] & mask)
        m[r] = mx


def row_absmax(x: torch.Tensor) -> torch.Tensor:
    """Per row of a CPU (B, N) float32 / float64 tensor, the largest ``|x|`` (NaN when the row holds one);
    one pass (torch's ``aminmax`` along rows took ~1.2 ms per 775 x 784 block; ``abs().amax(1)``: two)."""
    xn = x.contiguous().numpy()
    it = np.int32 if xn.dtype.itemsize == 4 else np.int64
    m = np.empty(xn.shape[0], dtype=it)
    _row_absmax(xn.view(it), it(np.iinfo(it).max), m)
    return torch.from_numpy(m.view(xn.dtype))


def _rows(t: torch.Tensor):
    """``(C-contiguous 2-D array, column offset)`` reading ``t`` (B, N): a column block of a C-contiguous
    (B, S) tensor (a stacked convolution's halves) is read in place, anything else made contiguous."""
    if t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.shape[1] and t.shape[0] > 0:
        S = t.stride(0)
        off = t.storage_offset()
        base_off = off - off % S
        n_storage = t.untyped_storage().nbytes() // t.element_size()
        if off % S + t.shape[1] <= S and base_off + t.shape[0] * S <= n_storage:
            base = t.as_strided((t.shape[0], S), (S, 1), base_off)
            return base.numpy(), off % S
    return t.contiguous().numpy(), 0


def _relu_outputs(B: int, N: int, dtype, mode: int, bits, out):
    """The output arrays of the two ReLU passes: bits, per-row counts, value, bound, the mode-3 scratch row
    (as floats and as integers of the same width) and per-row maximum (integers) and nonzero flag."""
    if bits is None:
        bits = torch.empty((B, N), dtype=torch.bool)
    n_und = np.empty(B, dtype=np.int64)
    if mode and out is not None:
        v = out[0].numpy()
        e = out[1].numpy() if mode in (1, 2) else np.empty((B, 1), dtype=dtype)
    elif mode:
        v = np.empty((B, N), dtype=dtype)
        e = np.empty((B, N) if mode in (1, 2) else (B, 1), dtype=dtype)
    else:
        v = e = np.empty((B, 1), dtype=dtype)
    q = np.zeros(max(N, 1), dtype=dtype)
    qi = q.view(np.int32 if q.dtype.itemsize == 4 else np.int64)
    m = np.zeros(B, dtype=qi.dtype)
    nz = np.zeros(B, dtype=np.bool_)
    cap = 4 * B + 256  # ambiguous pairs kept (a few per block: most rows have none)
    pairs = (np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64), np.zeros(1, dtype=np.int64))
    return bits, n_und, v, e, q, qi, m, nz, pairs


def _give_pairs(pairs, sink):
    """Into ``sink`` (a list, when given): the (row, unit) pairs as two long tensors, or ``None`` when there
    were more than the arrays hold (the caller then finds them itself)."""
    if sink is not None:
        pr, pu, npairs = pairs
        k = int(npairs[0])
        sink.append((torch.from_numpy(pr[:k]), torch.from_numpy(pu[:k])) if k <= len(pr) else None)


def _relu_result(mode, bits, n_und, v, e, m, nz, dtype, csa=None):
    t = torch.from_numpy
    if mode == 3:
        if csa is not None and csa[0] > 0:  # (with the window norms)
            return bits, t(n_und > 0), t(v), (t(m.view(dtype)), t(nz), t(csa[4]))
        return bits, t(n_und > 0), t(v), (t(m.view(dtype)), t(nz))
    return bits, t(n_und > 0), (t(v) if mode else None), (t(e) if mode else None)


def relu_fused(
    z: torch.Tensor,
    d: torch.Tensor,
    dscale: float = 1.0,
    gnext: float = 0.0,
    mode: int = 1,
    bits: torch.Tensor | None = None,
    out: tuple | None = None,
    pairs: list | None = None,
    cs: tuple | None = None,
):
    """``(bits, rows with an ambiguous unit (bool (B,)), relu(z) or None, error bound (plus ``gnext``
    relu(z) in mode 2) or None)`` for a CPU pre-activation ``z`` with elementwise error bound
    ``d * dscale`` (same dtype and shape (B, N), float32 or float64), see :func:`_relu_fused`; in mode 3
    the last is ``(m, nz)``, per row the largest ``fl(e + gnext relu(z))`` and whether any output or its
    bound is nonzero, and with ``cs = (C, HW, windows, scale)`` a third entry, the next convolution's
    window norms of ``fl(e + gnext relu(z))`` times ``scale`` ((B, P), :func:`_window_norms_row`). ``bits``: a
    C-contiguous bool (B, N) tensor to write the signs into (else a new one); ``out``: C-contiguous (B, N)
    tensors of ``z``'s dtype to write the value and (modes 1, 2) the bound into (else new ones); ``pairs``:
    a list to append the ambiguous (row, unit) pairs to (:func:`_give_pairs`)."""
    zn, zo = _rows(z)
    dn, do = _rows(d)
    B, N = z.shape
    bits, n_und, v, e, q, qi, m, nz, pp = _relu_outputs(B, N, zn.dtype, mode, bits, out)
    dt = zn.dtype.type
    csa = _cs_args(cs if mode == 3 else None, B, zn.dtype)
    _relu_fused(
        zn, zo, dn, do, dt(dscale), dt(gnext), mode, bits.numpy(), n_und, v, e, q, qi, m, nz, *pp, csa
    )
    _give_pairs(pp, pairs)
    return _relu_result(mode, bits, n_und, v, e, m, nz, zn.dtype, csa)


def relu_outer(
    z, t, risk, L, A, U, s: float, gnext: float = 0.0, mode: int = 1, bits=None, out=None, pairs=None, cs=None
):
    """:func:`relu_fused` for a pre-activation ``z`` ((B, N) CPU) whose bound is the windowed or crude one
    of a convolution, ``((t_rp L_j + A_j) + [risk_r] U_j) s`` (``t``: (B, P), or (B,) for ``P = 1``;
    ``risk``: (B,); ``L``, ``A``, ``U``: (N,) of ``z``'s dtype; unit ``j = b P + p``), see
    :func:`_relu_outer`. Modes 0, 1, 3; ``pairs``, ``cs`` as for :func:`relu_fused`."""
    zn = z.contiguous().numpy()
    B, N = zn.shape
    bits, n_und, v, e, q, qi, m, nz, pp = _relu_outputs(B, N, zn.dtype, mode, bits, out)
    dt = zn.dtype.type
    tn = t.reshape(B, -1).contiguous().numpy()
    if N % tn.shape[1]:
        raise ValueError(f"{N} units are not a multiple of the bound's {tn.shape[1]} positions")
    args = (tn, risk.contiguous().numpy(), L.numpy(), A.contiguous().numpy())
    drow = np.empty(max(N, 1), dtype=zn.dtype)
    csa = _cs_args(cs if mode == 3 else None, B, zn.dtype)
    _relu_outer(
        zn,
        *args,
        U.contiguous().numpy(),
        dt(s),
        dt(gnext),
        mode,
        bits.numpy(),
        n_und,
        v,
        e,
        q,
        qi,
        m,
        nz,
        drow,
        *pp,
        csa,
    )
    _give_pairs(pp, pairs)
    return _relu_result(mode, bits, n_und, v, e, m, nz, zn.dtype, csa)


@numba.njit(cache=True, nogil=True)
def _relu_screen(z, thr, bits, v, n_und):
    """Per entry of row ``r``: ``bits = z > 0``, ``v = relu(z)`` (0 for a NaN ``z``: its row is undecided),
    and ``n_und[r]`` counts the entries with ``not |z| > thr[r]`` (a NaN ``z`` or ``thr`` counts, and so does
    an infinite ``z``: an overflow): the
    one-pass screen of a ReLU fed by a dense Linear, whose per-row bound is below ``thr[r]`` for every unit
    (:meth:`netgeom.nets.certified._Rank1.screen`). Replaces five torch passes (``z > 0``, ``|z|``, its row
    minimum, the comparison, ``relu(z)``)."""
    B, N = bits.shape
    zero = z.dtype.type(0)
    inf = z.dtype.type(np.inf)  # (an overflowed z is ambiguous: see _relu_row)
    for r in range(B):
        zr = z[r]
        br = bits[r]
        vr = v[r]
        t = thr[r]
        cnt = 0
        for j in range(N):
            a = zr[j]
            pos = a > 0
            br[j] = pos
            vr[j] = a if pos else zero
            cnt += (not (abs(a) > t)) | (abs(a) == inf)
        n_und[r] = cnt


def relu_screen(z: torch.Tensor, thr: torch.Tensor, bits: torch.Tensor | None = None, out=None):
    """``(bits, rows with some ``not |z| > thr`` (bool (B,)), relu(z))`` for a CPU pre-activation ``z``
    ((B, N) float32 or float64) and per-row thresholds ``thr`` ((B,), same dtype), see
    :func:`_relu_screen`. ``bits``: a C-contiguous bool (B, N) tensor to write the signs into (else a new
    one); ``out``: a C-contiguous (B, N) tensor of ``z``'s dtype for ``relu(z)`` (else a new one)."""
    zn = z.contiguous().numpy()
    B, N = zn.shape
    if bits is None:
        bits = torch.empty((B, N), dtype=torch.bool)
    v = out.numpy() if out is not None else np.empty((B, N), dtype=zn.dtype)
    n_und = np.empty(B, dtype=np.int64)
    _relu_screen(zn, thr.to(z.dtype).contiguous().numpy(), bits.numpy(), v, n_und)
    return bits, torch.from_numpy(n_und > 0), torch.from_numpy(v)


def relu_elem(z: torch.Tensor, d: torch.Tensor):
    """``(bits, rows with an ambiguous unit (bool (B,)), relu(z), error bound of relu(z))`` for a CPU
    pre-activation ``z`` with elementwise error bound ``d`` (same dtype and shape, float32 or float64)."""
    return relu_fused(z, d)


@numba.njit(cache=True, nogil=True)
def _pool_top2(x, err, idx, scale, tiny, m1, pos, emax, sure, n_in):
    """Per row and window (slot ``j`` of window ``w`` reads entry ``idx[j, w]``): the first maximal entry
    ``m1`` and its slot ``pos``, the largest error ``emax``, and ``sure`` when the top-two test
    ``m1 - m2 > scale emax + tiny`` holds (``m2`` the largest other entry, ties included; ``scale`` =
    ``2 (1 + 4u)``) or every entry is exact (``emax == 0``). A NaN anywhere in a row's values or errors makes
    all its windows unsure, and so does an infinite value among the first ``n_in`` entries (an overflow: only
    the padding column past them is an exact ``-inf``); such a row's ``emax`` is inf. Slot by slot over all
    windows of a row, with selects and an integer maximum for the position (a branch, or a select on the
    position, keeps the loop from vectorising: 5x slower)."""
    B, n = x.shape
    k, W = idx.shape
    m2 = np.empty(W, dtype=x.dtype)
    for r in range(B):
        xr = x[r]
        er = err[r]
        b1 = m1[r]
        bp = pos[r]
        be = emax[r]
        i0 = idx[0]
        for w in range(W):
            b1[w] = xr[i0[w]]
            m2[w] = -np.inf
            bp[w] = 0
            be[w] = er[i0[w]]
        for j in range(1, k):
            ij = idx[j]
            jj = np.int32(j)
            for w in range(W):
                a = xr[ij[w]]
                best = b1[w]
                gt = a > best
                bp[w] = max(bp[w], jj * np.int32(gt))  # j > every earlier slot: the last strict improvement
                m2[w] = max(m2[w], min(best, a))
                b1[w] = a if gt else best
                be[w] = max(be[w], er[ij[w]])
        ss = sure[r]
        for w in range(W):
            em = be[w]
            ss[w] = (em == 0) | (b1[w] - m2[w] > em * scale + tiny)
        # (an overflowed entry: the window's exact maximum is unknown, so is the output's error)
        _pool_row_end(xr, er, n_in, b1, ss, be)


def pool_top2(x: torch.Tensor, err: torch.Tensor, windows: torch.Tensor, u: float):
    """``(m1, pos (long), emax, sure)`` of every (row, window) of a max-pool on CPU values ``x`` with
    elementwise error bounds ``err`` ((B, n), float32 or float64) and windows ``(size, k)`` of entry indices,
    ``-1`` for padding (read as ``-inf`` with error 0: never the max), see :func:`_pool_top2`."""
    xn, en = x.contiguous().numpy(), err.contiguous().numpy()
    B, n = xn.shape
    W = windows.shape[0]
    slots = windows.numpy().T
    if (slots < 0).any():
        xn = np.concatenate([xn, np.full((B, 1), -np.inf, dtype=xn.dtype)], 1)
        en = np.concatenate([en, np.zeros((B, 1), dtype=en.dtype)], 1)
        slots = np.where(slots < 0, n, slots)
    idx = np.ascontiguousarray(slots.astype(np.uint32))
    m1 = np.empty((B, W), dtype=xn.dtype)
    emax = np.empty((B, W), dtype=en.dtype)
    pos = np.empty((B, W), dtype=np.int32)
    sure = np.empty((B, W), dtype=np.bool_)
    dt = xn.dtype.type
    _pool_top2(xn, en, idx, dt(2 * (1 + 4 * u)), dt(np.finfo(xn.dtype).tiny), m1, pos, emax, sure, n)
    t = torch.from_numpy
    return t(m1), t(pos).long(), t(emax), t(sure)


@numba.njit(cache=True, nogil=True, inline="always")
def _pool_row_end(xr, er, n_in, b1r, ssr, ber) -> bool:
    """The end of a row of :func:`_pool_top2` / :func:`_pool_grid`: a NaN anywhere in the row's values or
    errors, or an infinite value (an overflow), makes every window of the row unsure with error ``inf``;
    returns whether it did."""
    nan = False
    for i in range(n_in):
        nan |= (xr[i] - xr[i] != 0) | (er[i] != er[i])  # (x - x: NaN for an inf or NaN x)
    if nan:
        for w in range(b1r.shape[0]):
            ssr[w] = False
            ber[w] = np.inf
    return nan


@numba.njit(cache=True, nogil=True)
def _pool_grid(x, err, C, H, W, Ho, Wo, dh, dw, sh, sw, scale, tiny, m1, pos, emax, sure, bad, m2):
    """:func:`_pool_top2` for windows on a regular grid without padding: window ``(c, ho, wo)`` (flat
    ``(c Ho + ho) Wo + wo``) has slot ``j`` at input entry ``c H W + (ho sh + dh_j) W + wo sw + dw_j``. The
    same arithmetic, comparisons and slot order as :func:`_pool_top2` (so the same outputs, bit for bit),
    with the window's slots read at a fixed stride along an output row instead of through an index table
    (a gather per entry: ~4x slower). ``bad[r]``: the row has a NaN or an overflowed value (all its windows
    unsure). ``m2``: scratch of ``Wo`` entries. The 2x2 windows of stride 2 (LeNet's pools) take
    :func:`_pool_22`, ~2x faster still."""
    B = x.shape[0]
    k = dh.shape[0]
    n_in = C * H * W
    for r in range(B):
        xr = x[r]
        er = err[r]
        b1r = m1[r]
        bpr = pos[r]
        ber = emax[r]
        ssr = sure[r]
        for c in range(C):
            for ho in range(Ho):
                o = (c * Ho + ho) * Wo
                base = c * H * W + ho * sh * W
                i0 = base + dh[0] * W + dw[0]
                # (unsigned indices: no negative-index wraparound, so the loops vectorise)
                for wo in range(Wo):
                    i = np.uintp(i0 + wo * sw)
                    q = np.uintp(o + wo)
                    b1r[q] = xr[i]
                    m2[np.uintp(wo)] = -np.inf
                    bpr[q] = 0
                    ber[q] = er[i]
                for j in range(1, k):
                    ij = base + dh[j] * W + dw[j]
                    jj = bpr.dtype.type(j)
                    for wo in range(Wo):
                        i = np.uintp(ij + wo * sw)
                        q = np.uintp(o + wo)
                        a = xr[i]
                        best = b1r[q]
                        gt = a > best
                        # (the last strict improvement: j > every earlier slot)
                        bpr[q] = max(bpr[q], jj * bpr.dtype.type(gt))
                        m2[np.uintp(wo)] = max(m2[np.uintp(wo)], min(best, a))
                        b1r[q] = a if gt else best
                        ber[q] = max(ber[q], er[i])
                for wo in range(Wo):
                    q = np.uintp(o + wo)
                    em = ber[q]
                    ssr[q] = (em == 0) | (b1r[q] - m2[np.uintp(wo)] > em * scale + tiny)
        bad[r] = _pool_row_end(xr, er, n_in, b1r, ssr, ber)


@numba.njit(cache=True, nogil=True)
def _pool_22(x, err, C, H, W, Ho, Wo, scale, tiny, m1, pos, emax, sure, bad):
    """:func:`_pool_grid` for 2x2 windows of stride 2 (slots (0, 0), (0, 1), (1, 0), (1, 1)): the four
    entries of a window in registers, the running maximum, position and second largest entry as
    :func:`_pool_top2` computes them, slot after slot (the same outputs, bit for bit)."""
    B = x.shape[0]
    n_in = C * H * W
    one = np.uintp(1)
    for r in range(B):
        xr = x[r]
        er = err[r]
        b1r = m1[r]
        bpr = pos[r]
        ber = emax[r]
        ssr = sure[r]
        for c in range(C):
            for ho in range(Ho):
                o = (c * Ho + ho) * Wo
                i0 = c * H * W + 2 * ho * W
                i1 = i0 + W
                for wo in range(Wo):
                    # (unsigned indices: no negative-index wraparound, so the loop vectorises: ~3.5x)
                    a = np.uintp(i0 + 2 * wo)
                    b = np.uintp(i1 + 2 * wo)
                    q = np.uintp(o + wo)
                    best = xr[a]
                    e = max(max(er[a], er[a + one]), max(er[b], er[b + one]))
                    p = np.uint8(0)
                    m2 = xr.dtype.type(-np.inf)
                    v = xr[a + one]
                    gt = v > best
                    p = max(p, np.uint8(1) * np.uint8(gt))
                    m2 = max(m2, min(best, v))
                    best = v if gt else best
                    v = xr[b]
                    gt = v > best
                    p = max(p, np.uint8(2) * np.uint8(gt))
                    m2 = max(m2, min(best, v))
                    best = v if gt else best
                    v = xr[b + one]
                    gt = v > best
                    p = max(p, np.uint8(3) * np.uint8(gt))
                    m2 = max(m2, min(best, v))
                    best = v if gt else best
                    b1r[q] = best
                    bpr[q] = p
                    ber[q] = e
                    ssr[q] = (e == 0) | (best - m2 > e * scale + tiny)
        bad[r] = _pool_row_end(xr, er, n_in, b1r, ssr, ber)


def pool_grid(x: torch.Tensor, err: torch.Tensor, grid: tuple, u: float, out: tuple | None = None):
    """``(m1, pos, emax, sure, bad rows)`` of a max-pool whose windows are a regular grid without padding,
    ``grid = ((C, H, W), [(row, column) offset of slot j], (stride_h, stride_w), (H_out, W_out))`` (as
    :func:`netgeom.nets.certified._strided_slots` gives it), on CPU values ``x`` with elementwise error
    bounds ``err`` ((B, C H W), float32 or float64): :func:`pool_top2`'s outputs, bit for bit, with the
    positions as uint8 (int32 past 256 slots), and per row whether it holds a NaN or an overflowed value
    (every window of such a row is unsure). ``out``: (B, windows) arrays for the four outputs (a block's
    buffers, reused)."""
    (C, H, W), offs, (sh, sw), (Ho, Wo) = grid
    xn, en = x.contiguous().numpy(), err.contiguous().numpy()
    B = xn.shape[0]
    k = len(offs)
    P = C * Ho * Wo
    if out is None:
        pdt = torch.uint8 if k <= 256 else torch.int32
        out = (
            torch.empty((B, P), dtype=x.dtype),
            torch.empty((B, P), dtype=pdt),
            torch.empty((B, P), dtype=err.dtype),
            torch.empty((B, P), dtype=torch.bool),
        )
    m1, pos, emax, sure = (t.numpy() for t in out)
    bad = np.empty(B, dtype=np.bool_)
    dt = xn.dtype.type
    args = (dt(2 * (1 + 4 * u)), dt(np.finfo(xn.dtype).tiny), m1, pos, emax, sure, bad)
    if (
        [tuple(o) for o in offs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        and (sh, sw) == (2, 2)
        and pos.dtype == np.uint8
    ):
        _pool_22(xn, en, C, H, W, Ho, Wo, *args)
    else:
        dh = np.array([o[0] for o in offs], dtype=np.int64)
        dw = np.array([o[1] for o in offs], dtype=np.int64)
        _pool_grid(xn, en, C, H, W, Ho, Wo, dh, dw, sh, sw, *args, np.empty(max(Wo, 1), dtype=xn.dtype))
    return (*out, torch.from_numpy(bad))


@numba.njit(cache=True, nogil=True, inline="always")
def _entry_margin(xr, er, q, c4u, tiny):
    """``(V, margin)`` of input entry ``q`` of a window as :func:`netgeom.nets.certified._window_sure`
    computes them (the same operations in the same precision): padding (``q`` past the row) reads ``-inf``
    with margin 0; an exact entry (``E == 0``) has margin 0; else ``E + (|V| + E) 4u + tiny``; a ``-inf``
    value has margin 0."""
    if q >= xr.shape[0]:
        return xr.dtype.type(-np.inf), xr.dtype.type(0)
    v = xr[q]
    e = er[q]
    m = e if e == 0 else e + (abs(v) + e) * c4u + tiny
    if v == -np.inf:
        m = xr.dtype.type(0)
    return v, m


@numba.njit(cache=True, nogil=True)
def _window_sure_pairs(x, err, win, rr, ww, pos, c4u, tiny, out):
    """Per pair ``p``: :func:`netgeom.nets.certified._window_sure` of window ``ww[p]`` of row ``rr[p]``
    (entries ``win[ww[p]]``, indices past the row's end are padding) with top position ``pos[rr[p], ww[p]]``,
    read in place: the top entry's ``lo = V_t - margin_t`` above ``hi = V_i + margin_i`` for the entries
    before it, at least ``hi`` after it."""
    k = win.shape[1]
    for p in range(rr.shape[0]):
        r = rr[p]
        w = ww[p]
        t = np.int64(pos[r, w])
        xr = x[r]
        er = err[r]
        vt, mt = _entry_margin(xr, er, win[w, t], c4u, tiny)
        lo = vt - mt
        ok = True
        for i in range(k):
            if i == t:
                continue
            v, m = _entry_margin(xr, er, win[w, i], c4u, tiny)
            hi = v + m
            ok &= (hi < lo) if i < t else (hi <= lo)
        out[p] = ok


def window_sure_pairs(x, err, windows, rr, ww, pos, u: float) -> torch.Tensor:
    """:func:`netgeom.nets.certified._window_sure` of the (row, window) pairs ``(rr, ww)`` of a max-pool
    on CPU values ``x`` with error bounds ``err`` ((B, n), float32 or float64, read in place: no gathered
    (pairs, k) blocks), windows ``(size, k)`` of entry indices (``>= n`` or negative: padding) and the rows'
    top positions ``pos`` ((B, size), any integer type); bool (pairs,), the same decisions bit for bit."""
    xn, en = x.contiguous().numpy(), err.contiguous().numpy()
    win = windows.to(torch.int64).numpy()
    win = np.where(win < 0, xn.shape[1], win).astype(np.uint64)
    out = np.empty(len(rr), dtype=np.bool_)
    dt = xn.dtype.type
    _window_sure_pairs(
        xn,
        en,
        win,
        rr.contiguous().numpy(),
        ww.contiguous().numpy(),
        pos.numpy(),
        dt(4 * u),
        dt(np.finfo(xn.dtype).tiny),
        out,
    )
    return torch.from_numpy(out)


@numba.njit(cache=True, nogil=True)
def _refine_pairs(
    X,
    xo,
    Z,
    zo,
    D,
    do,
    dscale,
    kind,
    drop,
    n,
    outer,
    r,
    j,
    W,
    T,
    L,
    dense,
    b,
    absb,
    gam,
    under,
    safety,
    z,
    bound,
):
    """Per pair ``p``: row ``r[p]`` through unit ``j[p]``: a dense row ``W[j]`` over every column, or (a
    convolution) filter ``W[j // L]`` over the columns ``T[j % L]``; a column ``c >= n`` is padding (a zero
    with no error: no term). Entry ``c`` of the row is ``a = X[row, xo + c]`` widened to float64 (exactly),
    with the error bound ``d``, by ``kind``: 0, ``D[row, do + c]`` (float64 rows gathered from any error
    object); 1, ``D[row, do + c] * dscale`` (in the arrays' precision, as the torch passes round it); 2, a
    convolution's windowed or crude bound ``((t_p L_c + A_c) + k U_c) s`` with ``(t, k, L, A, U, s) =
    outer`` (``t`` (B, P) per row and output position ``p = c mod P``, ``k`` per row; as
    :class:`netgeom.nets.certified._Outer` computes it); and with ``drop`` (the row is a ReLU's
    output, ``Z`` its input), ``0`` where ``Z[row, zo + c] + d <= 0`` (certainly negative). So the block's
    arrays are read in place: no gathered rows, no float64 copies, no padding column.
    ``z = sum w a + b_j``; ``bound = (sum |w| e + gam (sum |w| |a| + |b_j|) + under [any a, e or b_j
    nonzero]) * safety`` (any summation order: the float64 rounding of these sums of nonnegative terms is
    inside ``safety``, as for the torch sums this replaces)."""
    ot, ok, oL, oA, oU, os, opos = outer
    one = ot.dtype.type(1)
    zero = ot.dtype.type(0)
    for p in range(r.shape[0]):
        row = r[p]
        u = j[p]
        xr = X[row]
        zr = Z[row]
        dr = D[row]
        tr = ot[row] if kind == 2 else ot[0]
        kr = (one if ok[row] else zero) if kind == 2 else zero
        if dense:
            w = W[u]
        else:
            w = W[u // L]
            t = T[u % L]
        acc = 0.0
        s_e = 0.0
        s_x = 0.0
        live = b[u] != 0
        for k in range(w.shape[0]):
            c = k if dense else t[k]
            if c >= n:
                continue
            a = np.float64(xr[xo + c])
            if kind == 0:
                dd = dr[do + c]
            elif kind == 1:
                dd = dr[do + c] * dscale
            else:
                dd = ((tr[opos[c]] * oL[c] + oA[c]) + kr * oU[c]) * os
            e = np.float64(0.0) if drop and zr[zo + c] + dd <= 0 else np.float64(dd)
            wk = w[k]
            aw = abs(wk)
            acc += wk * a
            s_e += aw * e
            s_x += aw * abs(a)
            live |= (a != 0) | (e != 0)
        z[p] = acc + b[u]
        bound[p] = (s_e + gam * (s_x + absb[u]) + (under if live else 0.0)) * safety


@numba.njit(cache=True, nogil=True)
def _refine_outer_conv(X, xo, Z, zo, n, outer, r, j, W, T, L, b, absb, gam, under, safety, z, bound):
    """:func:`_refine_pairs` for its hot case, a convolution reading a ReLU's output whose input's bound is
    a windowed or crude one (``kind`` 2 with ``drop``), the same numbers, branch-free: a padding column
    reads column 0 with zero weight and no error, a certainly negative entry (``Z + d <= 0``) error 0
    through a select (a branch on the ReLU's sign is mispredicted half the time)."""
    ot, ok, oL, oA, oU, os, opos = outer
    one = ot.dtype.type(1)
    zero = ot.dtype.type(0)
    for p in range(r.shape[0]):
        row = r[p]
        u = j[p]
        xr = X[row]
        zr = Z[row]
        tr = ot[row]
        kr = one if ok[row] else zero
        w = W[u // L]
        t = T[u % L]
        acc = 0.0
        s_e = 0.0
        s_x = 0.0
        live = b[u] != 0
        for k in range(w.shape[0]):
            c = t[k]
            pad = c >= n
            cc = 0 if pad else c
            a = np.float64(xr[xo + cc])
            dd = ((tr[opos[cc]] * oL[cc] + oA[cc]) + kr * oU[cc]) * os
            neg = (zr[zo + cc] + dd <= 0) | pad
            e = 0.0 if neg else np.float64(dd)
            a = 0.0 if pad else a
            wk = w[k]
            aw = abs(wk)
            acc += wk * a
            s_e += aw * e
            s_x += aw * abs(a)
            live |= (a != 0) | (e != 0)
        z[p] = acc + b[u]
        bound[p] = (s_e + gam * (s_x + absb[u]) + (under if live else 0.0)) * safety


@functools.lru_cache(maxsize=16)
def _positions(n: int, P: int) -> np.ndarray:
    """``c mod P`` for the columns ``c < n`` (the output position of a convolution's unit ``c``)."""
    return (np.arange(max(n, 1)) % P).astype(np.int32)


def refine_pairs(
    x,
    d,
    r,
    j,
    W,
    T,
    L: int,
    b,
    absb,
    gam: float,
    under: float,
    safety: float,
    *,
    zin=None,
    dscale: float = 1.0,
    outer=None,
    gathered: bool = False,
):
    """``(z, bound)`` float64 of the (row, unit) pairs ``(r, j)`` (``T`` None: dense rows), see
    :func:`_refine_pairs`. ``x`` (B, n) CPU: the rows of the node's input; its error bound is ``d``
    ((B, n): float64 rows gathered when ``gathered``, else the block's array of ``x``'s dtype times
    ``dscale``, both read in place (column blocks of C-contiguous arrays)) or, ``d`` None, the crude bound
    ``outer = (t, k, L, A, U, s)`` (:class:`netgeom.nets.certified._Outer`). ``zin``: ``x`` is a ReLU's
    output and ``zin`` its input (then the bound is 0 where ``zin`` is certainly negative)."""
    xn, xo = _rows(x)
    B, n = x.shape
    f = xn.dtype.type
    if d is not None:
        dn, do = _rows(d)
        kind = 0 if gathered else 1
        nothing = np.zeros(max(1, n), dtype=dn.dtype)  # (no crude bound: placeholders, never read)
        oargs = (
            np.zeros((max(1, B), 1), dtype=dn.dtype),
            np.zeros(max(1, B), dtype=np.bool_),
            nothing,
            nothing,
            nothing,
            dn.dtype.type(1),
            np.zeros(1, dtype=np.int32),
        )
    else:
        dn, do, kind = np.zeros((max(1, B), 1), dtype=xn.dtype), 0, 2
        t, k, oL, oA, oU, s = outer
        tn = t.reshape(t.shape[0], -1).contiguous().numpy()
        oargs = (
            tn,
            k.contiguous().numpy(),
            oL.contiguous().numpy(),
            oA.contiguous().numpy(),
            oU.contiguous().numpy(),
            f(s),
            _positions(n, tn.shape[1]),  # (a table: an integer modulo per term cost more than the rest)
        )
    zn, zo = _rows(zin) if zin is not None else (np.zeros((max(1, B), 1), dtype=xn.dtype), 0)
    m = len(r)
    z = np.empty(m, dtype=np.float64)
    bound = np.empty(m, dtype=np.float64)
    dense = T is None
    Tn = np.zeros((1, 1), dtype=np.int64) if dense else T.numpy()
    rn, jn, Wn = r.contiguous().numpy(), j.contiguous().numpy(), W.contiguous().numpy()
    ds = dn.dtype.type(dscale)
    if kind == 2 and not dense and zin is not None and n > 0:
        args = (rn, jn, Wn, Tn, max(1, int(L)), b.numpy(), absb.numpy(), float(gam), float(under))
        _refine_outer_conv(xn, xo, zn, zo, n, oargs, *args, float(safety), z, bound)
        return torch.from_numpy(z), torch.from_numpy(bound)
    _refine_pairs(
        xn,
        xo,
        zn,
        zo,
        dn,
        do,
        ds,
        kind,
        zin is not None,
        n,
        oargs,
        rn,
        jn,
        Wn,
        Tn,
        max(1, int(L)),
        dense,
        b.numpy(),
        absb.numpy(),
        float(gam),
        float(under),
        float(safety),
        z,
        bound,
    )
    return torch.from_numpy(z), torch.from_numpy(bound)


@numba.njit(cache=True, nogil=True, inline="always")
def _relu_from_input(xr, xo, n0, W1, T1, L1, dense1, b1, absb1, g1, under1, safety, c):
    """ReLU of the first convolution's unit ``c`` in float64 from the exact input row ``xr`` (columns past
    ``n0`` are padding) and its error bound, shared by the two-level redos: an entry certainly negative is
    exactly 0, with no error."""
    w1, t1, d1 = _unit_weights(W1, T1, L1, dense1, c)
    a1 = 0.0
    sx1 = 0.0
    live1 = b1[c] != 0
    for i in range(w1.shape[0]):
        # (unsigned indices: no negative-index wraparound test per read, ~30 % faster)
        c0 = np.uintp(i) if d1 else np.uintp(t1[i])
        if c0 >= n0:
            continue
        a = np.float64(xr[np.uintp(xo) + c0])
        wi = w1[i]
        a1 += wi * a
        sx1 += abs(wi) * abs(a)
        live1 |= a != 0
    z1 = a1 + b1[c]
    e1 = (g1 * (sx1 + absb1[c]) + (under1 if live1 else 0.0)) * safety
    neg = z1 + e1 <= 0
    return (0.0 if neg or not (z1 > 0) else z1), (0.0 if neg else e1)


@numba.njit(cache=True, nogil=True, inline="always")
def _unit_weights(W, T, L, dense, u):
    """The weights of unit ``u`` and the input columns they read (a dense row: every column; a
    convolution: filter ``u // L`` over the columns ``T[u % L]``)."""
    if dense:
        return W[u], T[0], True
    return W[u // L], T[u % L], False


@numba.njit(cache=True, nogil=True)
def _refine_pairs2(
    X,
    xo,
    n0,
    r,
    j,
    W2,
    T2,
    L2,
    dense2,
    b2,
    absb2,
    g2,
    under2,
    W1,
    T1,
    L1,
    dense1,
    b1,
    absb1,
    g1,
    under1,
    n1,
    safety,
    z,
    bound,
):
    """Per pair ``p`` (row ``r[p]`` through unit ``j[p]`` of an affine node fed by a ReLU of another affine
    node, whose input ``X`` (``n0`` columns from ``xo``) is exact): every input entry of the unit recomputed
    in float64 from ``X`` (``z1 = sum w a + b``, within ``e1 = (g1 (sum |w| |a| + |b|) + under1 [live])
    safety`` of the exact value), through the ReLU (``v = max(z1, 0)``; ``e = 0`` where ``z1 + e1 <= 0``:
    certainly negative, so ``v`` is the exact 0; else ``e1``, the ReLU being 1-Lipschitz), then the unit's
    float64 value and bound as :func:`_refine_pairs` (``g2``, ``under2``). Columns past ``n1`` (level 2) or
    ``n0`` (level 1) are padding: no term."""
    for p in range(r.shape[0]):
        row = r[p]
        u = j[p]
        xr = X[row]
        w2, t2, d2 = _unit_weights(W2, T2, L2, dense2, u)
        acc = 0.0
        s_e = 0.0
        s_x = 0.0
        live = b2[u] != 0
        for k in range(w2.shape[0]):
            c = k if d2 else t2[k]
            if c >= n1:
                continue
            v, e = _relu_from_input(xr, xo, n0, W1, T1, L1, dense1, b1, absb1, g1, under1, safety, c)
            wk = w2[k]
            aw = abs(wk)
            acc += wk * v
            s_e += aw * e
            s_x += aw * v
            live |= (v != 0) | (e != 0)
        z[p] = acc + b2[u]
        bound[p] = (s_e + g2 * (s_x + absb2[u]) + (under2 if live else 0.0)) * safety


def _redo_parts(t):
    """The kernel arguments of a node's redo table (:meth:`netgeom.nets.certified._Engine._refine_prep`)."""
    dense = t["T"] is None
    T = np.zeros((1, 1), dtype=np.int64) if dense else t["T"].numpy()
    W = t["W"].contiguous().numpy()
    return (
        W,
        T,
        max(1, int(t.get("L", 1))),
        dense,
        t["b"].numpy(),
        t["absb"].numpy(),
        float(t["g"]),
        float(t["under"]),
    )


def refine_pairs2(x0, r, j, lvl2: dict, lvl1: dict, n1: int, safety: float):
    """``(z, bound)`` float64 of the (row, unit) pairs ``(r, j)`` of an affine node whose input is
    ``relu(`` another affine node ``)`` whose input ``x0`` ((B, n0) CPU, read in place) is exact, both
    nodes recomputed in float64 (:func:`_refine_pairs2`). ``lvl2``, ``lvl1``: the nodes' redo tables
    (``W``, ``T`` (None: dense), ``L``, ``b``, ``absb``, ``g``, ``under``)."""
    xn, xo = _rows(x0)
    m = len(r)
    z = np.empty(m, dtype=np.float64)
    bound = np.empty(m, dtype=np.float64)

    _refine_pairs2(
        xn,
        xo,
        x0.shape[1],
        r.contiguous().numpy(),
        j.contiguous().numpy(),
        *_redo_parts(lvl2),
        *_redo_parts(lvl1),
        int(n1),
        float(safety),
        z,
        bound,
    )
    return torch.from_numpy(z), torch.from_numpy(bound)


def conv2_table(lvl2: dict, lvl1: dict, n0: int, n1: int):
    """The tables of :func:`_refine_pairs2_conv` for a convolution (``lvl2``) reading ``relu`` of another
    convolution (``lvl1``, ``n1 = F1 L1`` units, filter ``f`` at position ``p`` being unit ``f L1 + p``) that
    reads an exact input of ``n0`` columns; ``None`` when either redo table is not a convolution's.
    ``S`` (L2, M): per output position of ``lvl2``, the distinct positions of ``lvl1`` its window reads
    (``-1`` past them); ``Q`` (L2, K2): per weight of ``lvl2``'s filters, ``p F1 + f`` for the column
    ``f L1 + p`` it reads, ``-1`` for padding."""
    if lvl2["T"] is None or lvl1["T"] is None:
        return None
    W1 = lvl1["W"].contiguous().numpy()
    F1, L1 = W1.shape[0], int(lvl1["L"])
    if F1 * L1 != n1 or int(lvl2["W"].shape[0]) * int(lvl2["L"]) == 0:
        return None
    T2 = lvl2["T"].numpy()
    L2, K2 = T2.shape
    live = T2 < n1
    # per row of T2, its distinct positions (sorted; padding sorts last as L1), first ones kept in order
    srt = np.sort(np.where(live, T2 % L1, L1), axis=1)
    first = srt < L1
    first[:, 1:] &= srt[:, 1:] != srt[:, :-1]
    rank = np.cumsum(first, axis=1) - 1
    M = max(1, int(first.sum(1).max(initial=0)))
    S = np.full((L2, M), -1, dtype=np.int64)
    S[np.nonzero(first)[0], rank[first]] = srt[first]
    Q = np.where(live, (T2 % L1) * F1 + T2 // L1, -1).astype(np.int64)
    W1T = np.ascontiguousarray(W1.T)
    # ||W1_f||_1 rounded up: a float64 sum of K1 nonnegative terms is within gamma_K1 of the exact one
    K1 = W1.shape[1]
    l1 = np.abs(W1).sum(1) * (1 + 2 * (K1 + 1) * 2.0**-53 / (1 - (K1 + 1) * 2.0**-53))
    parts2 = _redo_parts(lvl2)
    bt, abt = (np.ascontiguousarray(lvl1[k].numpy().reshape(F1, L1).T) for k in ("b", "absb"))
    return {
        "S": S,
        "Q": Q,
        "lvl2": (parts2[0], parts2[4], parts2[5], parts2[6], parts2[7], parts2[2]),
        "lvl1": (W1T, l1, lvl1["T"].numpy(), L1, bt, abt),
        "g1": (float(lvl1["g"]), float(lvl1["under"])),
        "n0": n0,
        "cost": M * W1.shape[1] * F1,  # (multiply-adds of the first level per pair)
    }


@numba.njit(cache=True, nogil=True, inline="never")
def _patch_times_filters(xp, W1T, acc):
    """``acc = W1 xp`` (``W1T`` (K1, F1) = ``W1`` transposed), summed over ``i`` in order per filter; a loop
    of its own, so that LLVM vectorises it over the filters (inside the pair loop it did not)."""
    K1, F1 = W1T.shape
    for f in range(F1):
        acc[f] = 0.0
    for i in range(K1):
        a = xp[i]
        for f in range(F1):
            acc[f] += W1T[i, f] * a


@numba.njit(cache=True, nogil=True, inline="never")
def _relu_of_patch(acc, l1, amax, bt, abt, live_in, g1, under1, safety, V, E):
    """``(V, E)`` per filter ``f`` of one position of the first convolution from its float64 dot products
    ``acc`` (:func:`_refine_pairs2_conv`); ``bt``, ``abt``: that position's biases and their absolute
    values per filter. Branch-free, so that it vectorises."""
    for f in range(acc.shape[0]):
        z1 = acc[f] + bt[f]
        live1 = live_in | (bt[f] != 0)
        e1 = (g1 * (l1[f] * amax + abt[f]) + (under1 if live1 else 0.0)) * safety
        neg = z1 + e1 <= 0
        V[f] = z1 if (z1 > 0) & ~neg else 0.0
        E[f] = 0.0 if neg else e1


@numba.njit(cache=True, nogil=True)
def _refine_pairs2_conv(
    X,
    xo,
    n0,
    r,
    j,
    S,
    Q,
    W2,
    b2,
    absb2,
    g2,
    under2,
    L2,
    W1T,
    l1,
    T1,
    L1,
    bt,
    abt,
    g1,
    under1,
    safety,
    z,
    bound,
    ok,
):
    """:func:`_refine_pairs2` for two convolutions: the same values (the same float64 sums in the same
    order), with the first level computed per input patch for all its filters and a cheaper bound for it.
    Each position ``p`` of the first convolution that the unit's window reads (``S``) has its input patch
    (``K1`` entries ``a_i`` of ``X``, padding 0) gathered once and multiplied by every filter in a loop over
    the filters (``W1T`` (K1, F1): contiguous per input entry, so it vectorises; :func:`_patch_times_filters`)
    instead of one dot product per (filter, position) with its own gather, and kept for the next pairs of
    the same row (a row's ambiguous units are often neighbours).

    Unit ``c = f L1 + p`` of the first convolution: ``z1 = fl(sum_i W1[f, i] a_i + b1[c])`` (the float64
    parameters, the exact input widened exactly). Its error bound: by the standard model (Higham, Lemma 3.3,
    any summation order) ``|z1 - exact| <= gamma_K1 (sum_i |W1[f, i]| |a_i| + |b1[c]|)`` (plus, under gradual
    underflow, up to ``K1 + 2`` smallest normal numbers where any term is nonzero: ``under1``), and
    ``sum_i |W1[f, i]| |a_i| <= ||W1_f||_1 max_i |a_i|`` as every ``|a_i| <= max_i |a_i|``. So with ``l1[f]
    >= ||W1_f||_1`` (rounded up in :func:`conv2_table`) ``e1 = (g1 (l1[f] amax + |b1[c]|) + under1 [amax or
    b1[c] nonzero]) safety`` bounds it (``g1 >= gamma_K1``; the four roundings of this arithmetic on
    nonnegative numbers, ~4u relative, lie far inside ``safety``; a NaN entry makes ``amax`` NaN, so the
    bound NaN and the unit undecided). ~K1 times the rounding's usual size, ~1e-15 relative: far below the
    float32 bounds that sent the unit here, and it saves the second product over the patch (``|W1| |a|``,
    ~20 % of the time per pair). ``v = z1`` where ``z1 > 0`` and ``z1 + e1 > 0`` else 0 (certainly
    negative: exactly 0), ``e = 0`` where ``z1 + e1 <= 0`` else ``e1`` (the ReLU is 1-Lipschitz;
    :func:`_relu_of_patch`).

    The unit of the second convolution reads ``(v, e)`` at ``Q`` (``p F1 + f``; ``-1`` padding, no term) and
    gets ``z = sum w v + b2``, ``bound = (sum |w| e + g2 (sum |w| v + |b2|) + under2 [any v, e or b2
    nonzero]) safety``, as :func:`_refine_pairs2`; ``ok``: decided (``|z| > bound`` or a zero bound, and
    ``z`` finite)."""
    M = S.shape[1]
    K1, F1 = W1T.shape
    V = np.empty(L1 * F1, dtype=np.float64)
    E = np.empty(L1 * F1, dtype=np.float64)
    stamp = np.full(L1, -1, dtype=np.int64)  # (the row whose position p is held: rows in any order)
    xp = np.empty(K1, dtype=np.float64)
    acc1 = np.empty(F1, dtype=np.float64)
    for p in range(r.shape[0]):
        row = r[p]
        u = j[p]
        xr = X[row]
        q2 = u % L2
        for s in range(M):
            p1 = S[q2, s]
            if p1 < 0:
                break
            if stamp[p1] == row:
                continue
            stamp[p1] = row
            t1 = T1[p1]
            amax = 0.0
            nan = False
            for i in range(K1):
                c0 = t1[i]
                a = np.float64(xr[xo + c0]) if c0 < n0 else 0.0
                xp[i] = a
                amax = max(amax, abs(a))
                nan |= a != a
            if nan:  # (max may skip a NaN: the bound then is NaN, so the unit undecided)
                amax = np.nan
            _patch_times_filters(xp, W1T, acc1)
            o = p1 * F1
            Vo, Eo = V[o : o + F1], E[o : o + F1]
            _relu_of_patch(acc1, l1, amax, bt[p1], abt[p1], amax != 0, g1, under1, safety, Vo, Eo)
        w2 = W2[u // L2]
        qq = Q[q2]
        acc = 0.0
        s_e = 0.0
        s_x = 0.0
        live = b2[u] != 0
        for k in range(w2.shape[0]):
            qk = qq[k]
            if qk < 0:
                continue
            v = V[qk]
            e = E[qk]
            wk = w2[k]
            aw = abs(wk)
            acc += wk * v
            s_e += aw * e
            s_x += aw * v
            live |= (v != 0) | (e != 0)
        zp = acc + b2[u]
        bp = (s_e + g2 * (s_x + absb2[u]) + (under2 if live else 0.0)) * safety
        z[p] = zp
        bound[p] = bp
        ok[p] = ((abs(zp) > bp) | (bp == 0)) & (abs(zp) < np.inf)


def refine_pairs2_conv(x0, r, j, tab: dict, safety: float):
    """``(z, bound, decided)`` as :func:`refine_pairs2` (and ``|z| > bound`` or ``bound == 0`` with ``z``
    finite) for two convolutions, through :func:`_refine_pairs2_conv` (``tab`` from :func:`conv2_table`)."""
    xn, xo = _rows(x0)
    m = len(r)
    z = np.empty(m, dtype=np.float64)
    bound = np.empty(m, dtype=np.float64)
    ok = np.empty(m, dtype=np.bool_)
    rn, jn = r.contiguous().numpy(), j.contiguous().numpy()
    W2, b2, absb2, g2, under2, L2 = tab["lvl2"]
    W1T, l1, T1, L1, bt, abt = tab["lvl1"]
    g1, under1 = tab["g1"]
    args2 = (W2, b2, absb2, float(g2), float(under2), int(L2))
    args1 = (W1T, l1, T1, int(L1), bt, abt, g1, under1)
    _refine_pairs2_conv(
        xn, xo, int(tab["n0"]), rn, jn, tab["S"], tab["Q"], *args2, *args1, safety, z, bound, ok
    )
    t = torch.from_numpy
    return t(z), t(bound), t(ok)


@numba.njit(cache=True, nogil=True)
def _refine_pairs_pool(
    X,
    xo,
    n0,
    r,
    j,
    W2,
    T2,
    L2,
    dense2,
    b2,
    absb2,
    g2,
    under2,
    P,
    n1,
    W1,
    T1,
    L1,
    dense1,
    b1,
    absb1,
    g1,
    under1,
    safety,
    z,
    bound,
):
    """:func:`_refine_pairs2` with a max-pool between the ReLU and the unit: per pair ``p`` (row ``r[p]``
    through unit ``j[p]`` of an affine node reading ``maxpool(relu(`` an affine node ``))`` whose input
    ``X`` is exact), entry ``c`` of the unit's input (a pool output, ``n1`` of them; columns from ``n1`` on
    are the unit's padding: no term) is the maximum over its window ``P[c]`` (indices of level-1 units,
    ``-1`` for the pool's padding, never the max) of ``v_s = relu(z1_s)``, each ``z1_s`` recomputed in
    float64 from ``X`` within ``e1_s`` of the exact value, ``v_s`` within ``e_s`` (``e1_s``, or 0 where
    ``z1_s + e1_s <= 0``: certainly negative, ``v_s`` the exact 0) of the exact ``relu``.

    The pooled value is ``v = max_s v_s`` (comparisons and the max are exact in floating point) and the
    exact one ``max_s relu(z1_s exact)``; as ``|max_s a_s - max_s b_s| <= max_s |a_s - b_s|`` (if the first
    maximum is ``a_t``: ``a_t - max b <= a_t - b_t``, and symmetrically), ``|v - v exact| <= e = max_s e_s``
    whichever position is the argmax: no argmax needs deciding here. A NaN bound stays NaN (then the pair is
    undecided). The unit's value and bound are then those of :func:`_refine_pairs` on ``(v, e)``."""
    K1 = P.shape[1]
    # the pooled entries of the current row, each computed once for all its pairs (the pairs of a row come
    # one after another: a window's entries, and units of one row, read overlapping inputs)
    cv = np.zeros(max(1, n1), dtype=np.float64)
    ce = np.zeros(max(1, n1), dtype=np.float64)
    stamp = np.full(max(1, n1), -1, dtype=np.int64)  # (the row whose entry c is held: rows in any order)
    for p in range(r.shape[0]):
        row = r[p]
        u = j[p]
        xr = X[row]
        w2, t2, d2 = _unit_weights(W2, T2, L2, dense2, u)
        acc = 0.0
        s_e = 0.0
        s_x = 0.0
        live = b2[u] != 0
        for k in range(w2.shape[0]):
            c = k if d2 else t2[k]
            if c >= n1:
                continue
            if stamp[c] == row:
                v = cv[c]
                e = ce[c]
                wk = w2[k]
                aw = abs(wk)
                acc += wk * v
                s_e += aw * e
                s_x += aw * v
                live |= (v != 0) | (e != 0)
                continue
            v = -np.inf
            e = 0.0
            for s in range(K1):
                q = P[c, s]
                if q < 0:
                    continue
                vs, es = _relu_from_input(xr, xo, n0, W1, T1, L1, dense1, b1, absb1, g1, under1, safety, q)
                if vs > v:
                    v = vs
                if es != es or es > e:  # (a NaN, once in, stays: NaN > e is False, e != e keeps it)
                    e = es
            if v == -np.inf:  # (a window of padding only: not a max-pool torch makes)
                e = np.nan
                v = 0.0
            cv[c] = v
            ce[c] = e
            stamp[c] = row
            wk = w2[k]
            aw = abs(wk)
            acc += wk * v
            s_e += aw * e
            s_x += aw * v
            live |= (v != 0) | (e != 0)
        z[p] = acc + b2[u]
        bound[p] = (s_e + g2 * (s_x + absb2[u]) + (under2 if live else 0.0)) * safety


def refine_pairs_pool(x0, r, j, lvl2: dict, windows: torch.Tensor, lvl1: dict, safety: float):
    """``(z, bound)`` float64 of the (row, unit) pairs ``(r, j)`` of an affine node whose input is
    ``maxpool(relu(`` another affine node ``))`` whose input ``x0`` ((B, n0) CPU, read in place) is exact:
    both nodes and the pool recomputed in float64 (:func:`_refine_pairs_pool`). ``windows``: the max-pool's
    (size, k) table of level-1 unit indices, ``-1`` for padding; ``lvl2``, ``lvl1`` as
    :func:`refine_pairs2`."""
    xn, xo = _rows(x0)
    m = len(r)
    z = np.empty(m, dtype=np.float64)
    bound = np.empty(m, dtype=np.float64)
    P = windows.to(torch.int64).contiguous().numpy()
    _refine_pairs_pool(
        xn,
        xo,
        x0.shape[1],
        r.contiguous().numpy(),
        j.contiguous().numpy(),
        *_redo_parts(lvl2),
        P,
        int(P.shape[0]),
        *_redo_parts(lvl1),
        float(safety),
        z,
        bound,
    )
    return torch.from_numpy(z), torch.from_numpy(bound)
