"""A dense layer's pre-activations from exact int8 matrix products, with a certified error bound.

Why: deciding activation patterns exactly needs the first layer's outputs to ~2^-24 relative accuracy
(their errors propagate into every later decision), and float64 products cost twice float32's. Integer
products are exact, and int8 ones (``torch._int_mm``, VNNI on x86) run ~9x faster than float32 ones, so
the layer is computed from a few of them (the splitting of Ozaki et al., "Error-free transformations of
matrix multiplication", 2012, in integers):

* every input row is scaled by a power of two ``s_r`` so that its largest entry lies in [64, 127], then cut
  into ``L`` integer slices, ``x s_r = sum_a x_a 2^{-7(a-1)} + tau_x``: ``x_1 = rint(x s_r)`` in [-127, 127],
  later slices ``rint(128 * remainder)`` in [-64, 64], ``|tau_x| <= 2^{-7(L-1)} / 2`` per entry (every
  step is exact in the input's own floating-point type: scaling by a power of two, rint, subtracting a
  number within a factor 2, multiplying by 128);
* every weight row (one output unit) likewise with its own power of two ``t_j``, into ``W_b``;
* the products ``x_a W_b`` with ``a + b <= L + 1`` are kept, summed per anti-diagonal ``a + b = l + 2`` in one
  int8 product over the concatenated slices (int32 sums, exact while ``(l + 1) K 127^2 < 2^31``);
* ``z = (sum_l P_l 2^{-7 l}) / (s_r t_j) + b_j`` in float64: the sum is exact (integers below 2^31 on a
  grid of 2^{-7(L-1)}, at most 52 bits), the scaling too (powers of two, exponents kept in range), so the
  only rounding is the bias addition, ``<= 2^-53 |z|``.

The dropped terms are ``sum_a x_a 2^{-7(a-1)} tau_W(L+1-a) + tau_x (W t)``, each at most ``2^{-7(L-1)}/2``
times an integer slice or ``|W t|``, so per entry

    ``|z_j - exact_j| <= alpha_r p_j + beta_r q_j + 2^-52 |z_j|``,
    ``alpha_r = k S_r / s_r``, ``p_j = 1 / t_j``, ``beta_r = k / s_r``, ``q_j = ||W_j||_1``,

with ``k = 2^{-7(L-1)} / 2`` (times a small safety factor) and ``S_r`` the summed absolute integer slices of
row ``r``: a bound of rank two that costs O(width) per row.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from ._chain_kernel import run_rows

__all__ = ["Int8Batch", "Int8Layer", "int8_products_exact"]

_LEVELS = 4
_SAFETY = 1.001  # the bound's own float64 evaluation (a few roundings of 2^-53) and subnormal inputs
_MAX_EXP = 400  # rows and weights beyond 2^±400 would push the scalings out of float64's normal range


@numba.njit(cache=True, nogil=True)
def _split(x, lo, hi, levels, out, inv_s, S):
    """Rows ``lo:hi`` of ``x`` into ``levels`` int8 slices side by side in ``out`` (``(B, levels K)``);
    ``inv_s[r] = 1 / s_r``, ``S[r, a]`` the sum of slice ``a``'s absolute values (``S[r, 0] = -1``: row out
    of range)."""
    K = x.shape[1]
    v = np.empty(K, x.dtype)
    for r in range(lo, hi):
        row = x[r]
        m = 0.0
        for i in range(K):
            a = abs(float(row[i]))
            if a > m:
                m = a
        if m == 0.0:
            inv_s[r] = 1.0
            S[r, :] = 0
            out[r, :] = 0
            continue
        e = math.floor(math.log2(127.0 / m))
        if e > _MAX_EXP or e < -_MAX_EXP:
            inv_s[r] = 1.0
            S[r, :] = 0
            S[r, 0] = -1
            out[r, :] = 0
            continue
        s = 2.0**e
        if m * s > 127.0:  # log2 rounded up at a power of two
            s *= 0.5
            e -= 1
        inv_s[r] = 2.0**-e
        for i in range(K):
            v[i] = row[i] * s  # a power of two: exact (up to subnormal results, 2^-149 at most)
        for a in range(levels):
            base = a * K
            tot = 0
            for i in range(K):
                q = np.rint(v[i])
                qi = np.int32(q)
                out[r, base + i] = qi
                tot += abs(qi)
                v[i] = (v[i] - q) * 128.0
            S[r, a] = tot


# Reassociation is harmless here (the level sums and the power-of-two scalings are exact in any order, the
# sums of squares carry a bound for any order) and lets the loops vectorise: 2.3x faster. No contraction.
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _finish(P, lo, hi, inv_s, inv_t, b, alpha, beta, p, q, p2, q2, slope, h32, bits, n_und, stats):
    """``z = (sum_l P_l 2^{-7 l}) inv_s[r] inv_t[j] + b[j]`` fused with what the pattern engine reads next,
    in one pass over rows ``lo:hi``: the signs, how many units of the row have ``|z|`` within the bound
    (``n_und``), the activation in float32, and per row ``[sum h^2, max |h|, sum z^2, max |z|]`` of the
    float64 values (for norms that cannot underflow unnoticed; the maxima only where a sum is below
    ``1e-280``, the only rows whose norms read them, else 0), then ``sum p_j^2`` and ``sum q_j^2`` over the
    units that are live (all but the ReLU inputs certainly below zero, ``slope = 0``: those give exact
    zeros, so their error drops out of the next layer's). The float64 values themselves are not kept
    (memory traffic): :func:`_rows` recomputes the few rows that are read."""
    N = h32.shape[1]
    shrink = 1.0 - 2.0**-51
    relu = slope == 0.0
    acc = np.empty(N)
    for r in range(lo, hi):
        P0 = P[0]
        for j in range(N):
            acc[j] = P0[r, j]
        scale = 1.0
        for lev in range(1, len(P)):
            scale *= 0.0078125
            Pl = P[lev]
            for j in range(N):
                acc[j] += Pl[r, j] * scale
        sr = inv_s[r]
        ar = alpha[r]
        br = beta[r]
        cnt = 0
        sh = 0.0
        sz = 0.0
        sp = 0.0
        sq = 0.0
        for j in range(N):
            z = acc[j] * (sr * inv_t[j]) + b[j]
            acc[j] = z
            bound = ar * p[j] + br * q[j]
            cnt += (bound > 0.0) & (abs(z) * shrink <= bound)
            live = not (relu & (z < 0.0) & (abs(z) * shrink > bound))
            sp += p2[j] if live else 0.0
            sq += q2[j] if live else 0.0
            bits[r, j] = z > 0.0
            v = z if z > 0.0 else slope * z
            h32[r, j] = np.float32(v)
            sz += z * z
            sh += v * v
        n_und[r] = cnt
        stats[r, 0] = sh
        stats[r, 2] = sz
        stats[r, 4] = sp
        stats[r, 5] = sq
        # the maxima are read only where a sum of squares may have underflowed, and a max reduction does
        # not vectorise: a second pass for those rows only (4096 x 400, one thread: ~3 ms, ~5 ms with the
        # maxima in the main pass)
        mh = 0.0
        mz = 0.0
        if sh < 1e-280 or sz < 1e-280:
            for j in range(N):
                z = acc[j]
                v = z if z > 0.0 else slope * z
                mz = max(mz, abs(z))
                mh = max(mh, abs(v))
        stats[r, 1] = mh
        stats[r, 3] = mz


@numba.njit(cache=True, nogil=True)
def _rows(P, rows, inv_s, inv_t, b, slope, z_out, h_out):
    """The float64 pre-activations and activations of the given rows, as :func:`_finish` computes them."""
    N = z_out.shape[1]
    for k in range(len(rows)):
        r = rows[k]
        for j in range(N):
            acc = 0.0
            scale = 1.0
            for lev in range(len(P)):
                acc += P[lev][r, j] * scale
                scale *= 0.0078125
            z = acc * (inv_s[r] * inv_t[j]) + b[j]
            z_out[k, j] = z
            h_out[k, j] = z if z > 0.0 else slope * z


class _Rows64:
    """Rows of an int8 layer's float64 output on demand (``obj[rows]``), and of its pre-activation."""

    def __init__(self, P, inv_s, inv_t, b, slope):
        self.P, self.inv_s, self.inv_t, self.b, self.slope = P, inv_s, inv_t, b, slope

    def both(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.ascontiguousarray(rows.cpu().numpy(), dtype=np.int64)
        z = np.empty((len(idx), len(self.inv_t)))
        h = np.empty_like(z)
        _rows(self.P, idx, self.inv_s, self.inv_t, self.b, self.slope, z, h)
        return torch.from_numpy(z), torch.from_numpy(h)

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.both(rows)[1]


def _canonical(a: np.ndarray) -> torch.Tensor:
    """A fresh tensor with row-major strides. ``torch._int_mm`` (2.13, CPU) reads an operand with a size-1
    dimension and numpy's degenerate strides (e.g. ``(1, 1)`` for shape ``(1, 2)``) out of bounds."""
    out = torch.empty(a.shape, dtype=torch.int8)
    out.copy_(torch.from_numpy(np.ascontiguousarray(a)))
    return out


def int8_products_exact() -> bool:
    """Whether ``torch._int_mm`` returns exact int32 sums on this machine for operands in [-127, 127].

    Some int8 kernels (x86 without VNNI) pair products in saturating 16-bit adds after shifting one
    operand to unsigned; extreme operands would then be silently wrong. The worst cases (all entries at
    +-127, both signs, either operand) are checked against int64 products.
    """
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        k = 64
        cases = []
        for sa in (127, -127):
            for sb in (127, -127):
                a = torch.full((32, k), sa, dtype=torch.int8)
                cases.append((a, torch.full((k, 8), sb, dtype=torch.int8)))
        sign = torch.randint(0, 2, (32, k), generator=g, dtype=torch.int8) * 2 - 1
        cases.append((sign * 127, (sign[:8].T * 127).contiguous()))
        cases.append((torch.randint(-127, 128, (32, k), generator=g, dtype=torch.int8),
                      torch.randint(-127, 128, (k, 8), generator=g, dtype=torch.int8)))
        for a, b in cases:
            got = torch._int_mm(a, b)
            if got.dtype != torch.int32 or not torch.equal(got.long(), a.long() @ b.long()):
                return False
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return True


class Int8Layer:
    """``x -> x W^T + b`` in float64 from exact int8 products, with the rank-two error bound of the module
    docstring. Built once per layer; :meth:`__call__` / :meth:`activate` per batch.

    ``levels`` slices of each operand are cut; per batch the first ``first`` anti-diagonals are computed
    (``first (first + 1) / 2`` slice products; default all ``levels``), and :meth:`Int8Batch.rows` adds the
    others for the rows that need the finer bound (progressive precision: most rows are decided with the
    coarser one, at 6 products instead of 10 for ``first = 3, levels = 4``).

    Raises ``ValueError`` when the layer is out of its range (fan-in too large for exact int32 sums,
    weights beyond 2^±400): callers then use float64 products instead.
    """

    def __init__(self, W: torch.Tensor, b: torch.Tensor, levels: int = _LEVELS, first: int | None = None):
        W = W.detach().to(dtype=torch.float64, device="cpu").contiguous()
        N, K = W.shape
        first = levels if first is None else first
        if not 1 <= first <= levels:
            raise ValueError(f"first must be in 1..levels = {levels}, got {first}")
        if levels * K * 127 * 127 >= 2**31:
            raise ValueError(f"fan-in {K} too large for exact int32 sums of {levels} int8 slices")
        self.levels, self.first, self.K, self.N = levels, first, K, N
        Wn = W.numpy()
        ws = np.zeros((N, levels * K), dtype=np.int8)
        inv_t = np.zeros(N)
        St = np.zeros((N, levels), dtype=np.int64)
        _split(Wn, 0, N, levels, ws, inv_t, St)
        if (St[:, 0] < 0).any():
            raise ValueError("weights beyond 2^±400: out of the int8 path's range")
        # the anti-diagonal stacks: level l pairs x_a with W_{l+2-a}, a = 1..l+1, as one (K(l+1), N) operand
        sl = [ws[:, a * K : (a + 1) * K] for a in range(levels)]
        self.stacks = [
            _canonical(np.concatenate([sl[lev - a] for a in range(lev + 1)], 1).T) for lev in range(levels)
        ]
        self.inv_t = inv_t
        self.b = b.detach().to(dtype=torch.float64, device="cpu").contiguous().numpy()
        # the bound's k for L diagonals (the slices beyond them are the dropped tail)
        self.k_of = {L: 0.5 * 2.0 ** (-7 * (L - 1)) * _SAFETY for L in range(1, levels + 1)}
        self.p = torch.from_numpy(inv_t.copy())
        # ||W_j||_1 rounded up: a float64 sum of K terms is within gamma_K of the exact one
        q = W.abs().sum(1) * (1 + (K + 2) * 2.0**-52)
        self.q = q
        self.p2, self.q2 = inv_t * inv_t, (q * q).numpy()
        # rows whose |z| could reach 2^450 are left to float64 (their squares must not overflow in the bounds)
        wmax = max(float(W.abs().max()) if W.numel() else 0.0, 2.0**-400)
        self._row_limit = 2.0**450 / (128.0 * wmax * max(K, 1))

    def _levels(self, x: torch.Tensor):
        """The split of ``x`` and its first anti-diagonal int32 products: ``(X, P, inv_s, S, ok)``."""
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else torch.float64)
        xn = x.detach().cpu().contiguous().numpy()
        B, K = xn.shape
        L = self.levels
        xs = np.empty((B, L * K), dtype=np.int8)
        inv_s = np.empty(B)
        S = np.empty((B, L), dtype=np.int64)
        run_rows(_split, B, xn, L, xs, inv_s, S)
        X = torch.from_numpy(xs)
        P = tuple(torch._int_mm(X[:, : K * (lev + 1)], self.stacks[lev]).numpy() for lev in range(self.first))
        ok = (S[:, 0] >= 0) & (inv_s < self._row_limit)
        return X, P, inv_s, S, ok

    def _coefficients(self, S: np.ndarray, inv_s: np.ndarray, ok: np.ndarray, L: int):
        """Per-row ``(alpha, beta)`` of the bound after ``L`` anti-diagonals."""
        k = self.k_of[L]
        alpha = np.where(ok, S[:, :L].sum(1), 0).astype(np.float64) * inv_s * k
        return alpha, inv_s * k

    def activate(self, x: torch.Tensor, slope: float):
        """The layer followed by ``max(z, slope z)``, fused: ``(h32, bits, (rows, units), rows64, norms,
        alpha, beta, ok, batch)``. ``(rows, units)`` are the pairs whose ``|z|`` is within the bound,
        ``rows64[rows]`` recomputes the float64 activation of some rows, ``norms`` are per-row upper bounds
        ``(||h64||, ||z||, ||p_live||, ||q_live||)`` safe from underflow, the last two over the units whose
        error reaches the activation (a ReLU's certainly negative inputs give exact zeros). The float64
        activation is within ``alpha p + beta q + 2^-51 |z|`` of the exact one per entry (for
        ``|slope| <= 1``; the extra ``2^-52 |z|`` covers the float64 product ``slope z``), ``h32`` is its
        float32 rounding. ``batch`` (an :class:`Int8Batch`, or ``None`` when all diagonals were computed)
        refines rows on demand."""
        B, N = x.shape[0], self.N
        h32 = np.empty((B, N), dtype=np.float32)
        bits = np.empty((B, N), dtype=np.bool_)
        n_und = np.zeros(B, dtype=np.int64)
        stats = np.zeros((B, 6))
        if B == 0:
            alpha = beta = inv_s = np.zeros(0)
            ok = np.zeros(0, dtype=bool)
            P = tuple(np.zeros((0, N), dtype=np.int32) for _ in range(self.first))
            batch = None
        else:
            X, P, inv_s, S, ok = self._levels(x)
            alpha, beta = self._coefficients(S, inv_s, ok, self.first)
            p, q = self.p.numpy(), self.q.numpy()
            args = (inv_s, self.inv_t, self.b, alpha, beta, p, q, self.p2, self.q2, float(slope), h32, bits,
                    n_und, stats)
            run_rows(_finish, B, P, *args)
            batch = Int8Batch(self, X, P, inv_s, S, ok, float(slope)) if self.first < self.levels else None
        rows64 = _Rows64(P, inv_s, self.inv_t, self.b, float(slope))
        t = torch.from_numpy
        cand = t(np.flatnonzero(n_und))
        rows = units = cand
        if len(cand):
            z, _ = rows64.both(cand)
            bound = torch.outer(t(alpha)[cand], self.p).addcmul_(t(beta)[cand, None], self.q)
            rr, units = torch.nonzero((bound > 0) & (z.abs() * (1 - 2.0**-51) <= bound), as_tuple=True)
            rows = cand[rr]
        sq = math.sqrt(max(N, 1))
        # a sum of squares below ~1e-280 may hide underflowed terms: sqrt(N) max |.| bounds the norm instead
        # (a float64 sum of N squares in any order is within gamma_N of the exact one, the root halves that)
        grow = 1 + (N + 4) * 2.0**-53
        hn = np.where(stats[:, 0] < 1e-280, sq * stats[:, 1], np.sqrt(stats[:, 0]) * grow)
        zn = np.where(stats[:, 2] < 1e-280, sq * stats[:, 3], np.sqrt(stats[:, 2]) * grow)
        # (p_j^2, q_j^2 lie within 2^+-830: their sums neither underflow nor overflow)
        pn = np.sqrt(stats[:, 4]) * (grow * _SAFETY)
        qn = np.sqrt(stats[:, 5]) * (grow * _SAFETY)
        norms = (t(hn), t(zn), t(pn), t(qn))
        return t(h32), t(bits), (rows, units), rows64, norms, t(alpha), t(beta), t(ok), batch

    def __call__(self, x: torch.Tensor, diagonals: int | None = None):
        """``(z, alpha, beta, ok)``: float64 ``z`` (B, N), per-row bound coefficients (entry ``j`` of row
        ``r`` is within ``alpha_r p_j + beta_r q_j + 2^-52 |z_rj|`` of the exact value), and ``ok`` False
        for rows out of range (their ``z`` is meaningless; decide them another way). ``diagonals``: how many
        anti-diagonals (default ``first``; up to ``levels``, the rest computed as :meth:`Int8Batch.rows`
        does)."""
        B = x.shape[0]
        if B == 0:
            empty = torch.zeros(0, dtype=torch.float64)
            return torch.zeros((0, self.N), dtype=torch.float64), empty, empty, torch.zeros(0, dtype=bool)
        X, P, inv_s, S, ok = self._levels(x)
        L = self.first if diagonals is None else diagonals
        if L > self.first:
            z, _, alpha, beta = Int8Batch(self, X, P, inv_s, S, ok, 1.0).rows(torch.arange(B), L)
            return z, alpha, beta, torch.from_numpy(ok)
        z, _ = _Rows64(P[:L], inv_s, self.inv_t, self.b, 1.0).both(torch.arange(B))
        alpha, beta = self._coefficients(S, inv_s, ok, L)
        return z, torch.from_numpy(alpha), torch.from_numpy(beta), torch.from_numpy(ok)


class Int8Batch:
    """One batch's split and first anti-diagonals, kept to refine rows with the remaining ones."""

    def __init__(self, layer: Int8Layer, X, P, inv_s, S, ok, slope: float):
        self.layer, self.X, self.P, self.inv_s, self.S, self.ok, self.slope = layer, X, P, inv_s, S, ok, slope

    def rows(self, rows: torch.Tensor, diagonals: int | None = None):
        """``(z, h, alpha, beta)`` of ``rows`` from ``diagonals`` anti-diagonals (default: all ``levels``):
        float64 pre-activations and activations, within ``alpha p + beta q + 2^-52 |z|`` (``z``; ``h``:
        ``2^-51``, as :meth:`Int8Layer.activate`) of the exact ones."""
        lay = self.layer
        L = lay.levels if diagonals is None else diagonals
        idx = np.ascontiguousarray(rows.cpu().numpy(), dtype=np.int64)
        n, K = len(idx), lay.K
        Xr = self.X.index_select(0, torch.from_numpy(idx))  # fresh, row-major (see _canonical)
        P = [Pl[idx] for Pl in self.P[:L]]
        for lev in range(len(P), L):
            P.append(torch._int_mm(Xr[:, : K * (lev + 1)], lay.stacks[lev]).numpy() if n else
                     np.zeros((0, lay.N), dtype=np.int32))
        inv_s = self.inv_s[idx]
        z, h = _Rows64(tuple(P), inv_s, lay.inv_t, lay.b, self.slope).both(torch.arange(n))
        alpha, beta = lay._coefficients(self.S[idx], inv_s, self.ok[idx], L)
        return z, h, torch.from_numpy(alpha), torch.from_numpy(beta)
