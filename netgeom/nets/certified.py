"""Activation patterns of a :class:`PLGraph` computed fast in float32 and decided exactly.

The pattern of an input is every ReLU sign ``[z > 0]`` and every max-pool window's argmax (the first maximal
position in the window's order, as torch). :func:`graph_patterns` evaluates the graph in float32 and carries,
beside every value, a *certified* bound on its distance to the exact value (the graph's float64 parameters
and the input evaluated in real arithmetic), from the standard model of floating point (``|fl(a op b) -
(a op b)| <= u |a op b|``, a dot product of ``K`` terms within ``gamma_K = K u / (1 - K u)`` of its absolute
sum, whatever the summation order):

* an affine op ``y = M x + b`` on a computed ``x^`` with error ``e`` gets
  ``|y^ - y| <= |M| e + g (|M| |x^| + |b|)``, ``g = gamma_{K+2}`` (``K`` the fan-in; the ``+2`` covers the
  rounding of the parameters to float32 and of the bias); for a dense ``Linear`` on a vector,
  ``|M| e <= ||M_i||_2 ||e||_2`` and ``|M| |x^| <= ||M_i||_2 ||x^||_2`` (Cauchy-Schwarz), so the bound costs
  O(width) per sample instead of a second matrix product;
* ReLU and max-pooling are 1-Lipschitz; a ReLU whose input is certainly negative has error 0;
* a sum adds the errors plus its own rounding.

A sign is decided in float32 when ``|z^| > bound`` (or the bound is 0: the value is exact); a window's argmax
when its maximum minus its error exceeds every other entry plus its error (or all its entries are exact).

The graph engine (:class:`_Engine`) keeps these bounds cheap and tight: the norm of a dense ``Linear``'s
output error is ``||W||_2 ||e|| + gamma (||W||_F ||x^|| + ||b||)`` with a certified spectral bound
(:func:`_spectral_bound`; a residual stream's error then grows like ``1 + ||W||_2`` per block, not
``1 + ||W||_F``); a max-pool window is decided from its top two entries and largest error, the per-entry test
(with margins for the rounding of the comparison itself, :func:`_window_sure`) only where that fails; the
rows go through in blocks of ~4 MB per value (fresh 100 MB tensors cost more in page faults than in
arithmetic), one after another on the calling thread, its small torch operations on one thread and its
products on the caller's torch threads (:func:`_one_thread`: with torch's OpenMP team, every small operation
is a barrier and the team spins through the compiled passes; :func:`netgeom.count_patterns` on several
torch threads instead hands chunks of rows to worker threads, one OpenMP thread each, the engines shared and
their per-run state and buffers per thread), each block's tensors held
until the next block is done (so that malloc recycles them) and the compiled passes' outputs written into the
same buffers block after block. On the CPU a ReLU fed by elementwise bounds
and a max-pool's top-two test are one compiled pass each (:mod:`._graph_kernel`). A convolution's bound
``|W| (e + g |x^|) + g |b|`` is one more convolution (the bias and underflow allowance folded into its bias;
its final factor applied as the ReLU's pass reads it), whose input ``e + g relu(z^)`` the ReLU before it
writes in the same pass; the first convolution, on an exact nonnegative input (an image), gets it from the
same convolution with ``|W|`` stacked under ``W``, both halves read in place by the ReLU's pass. Undecided
relu units and max-pool windows fed by one Linear / Conv2d are first recomputed alone in float64 from the
float32 input (its error carried in, :meth:`_Engine._refine`, one compiled pass over the (row, unit) pairs
on the CPU); only what that cannot decide sends its row
to the float64 pass, which bounds convolutions crudely first (``||M_j||_1`` times the row's largest
``e + g |x^|``: no second convolution, still ~1e-13 relative on a shallow net) and only the rows that
leaves undecided with the full bounds. The float32 pass uses cheaper bounds too (:class:`_Outer`: no stacked
first convolution, no bound convolution) when its first rows show them tight enough (:func:`graph_patterns`):
a Conv2d (groups 1, fan-in from ``_CS_MIN_FAN_IN`` on) gets the windowed Cauchy-Schwarz bound ``||W_f||_2``
times the 2-norm of ``e + g |x^|`` over the window its output position reads (:func:`_window_bound`; the
ReLU's compiled pass before it computes those window norms as it reads, in float64, rounded up), other ops the
crude one; the ReLU's compiled pass after it computes each entry's bound as it reads it and hands out the
ambiguous (row, unit) pairs for the unit redo. Where the redo of a unit from its float32 input cannot decide
it (the error carried in from the layer before, ``~K u`` of its terms, is too wide) and that input is ``relu``
of another one-op affine node reading the network's exact input, the unit is recomputed through both nodes in
float64 from that input (:meth:`_Engine._redo`): conv 3-32-64 then sends no row to the float64 pass (17% of
them before). For two convolutions this two-level redo goes first (:meth:`_Engine._deep_conv`: each
first-level input patch gathered once and multiplied by all its filters in one vectorised loop, ~3 us per
unit against ~10 us for the one-level redo and the two-level one after it). The same holds through a
max-pool between them (``maxpool(relu(a))``, LeNet-5's second
convolution and the max-pool after it): each pooled entry the unit reads is the maximum of its window's
``relu`` values recomputed in float64, within the largest of their bounds of the exact maximum whichever
entry is the argmax (:func:`._graph_kernel._refine_pairs_pool`; a max-pool window left open by its entries'
one-level redo gets its entries near the top redone so). On LeNet-5 (4 000 images) that decides every
unit of the second convolution and every window of the pool after it (313 rows went to the float64 pass
for them); the 438 rows left there have a unit of the dense layer after the second pool within its bound,
whose carried error is the second convolution's own float32 rounding (``gamma_152``): only that whole
convolution in float64 removes it, and that is the float64 pass. The full float32 engine therefore
computes a Conv2d reading a computed input as two convolutions over the halves of its input channels,
whose sum's rounding is bounded by ``gamma_{K/2 + 3}`` instead of ``gamma_{K + 2}`` at about the cost of one
(:meth:`_Engine._halves`): 330 rows left.

Why residual MLPs mostly end in the float64 pass: the worst-case bounds are ~10^3 times the actual float32
errors there. A dense layer's own rounding is bounded by ``gamma_K ||W_i|| ||h||`` (``K u``, where
rounding errors typically add up to ``sqrt(K) u``), and a block ``h + relu(W h + b)`` can multiply an
incoming error by up to ``1 + ||W||_2`` (~2.2 for a default-initialised 128 x 128 layer), so the stream's
bound doubles per block. Measured on 64-128x4-10 (inputs in [0, 1]^64): bound / actual error norm 230x
after the first layer, 2600x at the last hidden layer; with each layer's input taken as exact, 2.7% of
the rows would be undecided instead of 40%. A float64-accurate stream needs float64 products (2.7x
float32's).

Chains of dense ``Linear`` layers (MLPs, pruned or not) take a per-(row, unit) path (:func:`chain_patterns`):
only the undecided (row, unit) pairs get a float64 dot product (and exact rationals when that cannot decide),
and the first layers may run in float64 when float32's propagated error would leave most rows undecided
(:func:`choose_prefix`: with worst-case bounds ``gamma_K ~ K u``, a 784-wide float32 first layer leaves ~2% of
a 400-wide second layer's units undecided, i.e. every row, and deciding those needs a float64-accurate first
layer). On the CPU that first layer comes from exact int8 products at about a float32 product's cost
(:mod:`netgeom.nets._int8`: ten products of 7-bit slices, error ~2^-21 relative with a certified bound), where
the machine's int8 kernel passes an exactness check. Gradual underflow, outside the standard model, adds an
absolute smallest-normal term per product; rows that overflow go to float64 / exact arithmetic. Other graphs
redo rows with any undecided unit in float64 with the same bounds (``u = 2^-53``), and rows still undecided (a
pre-activation within ~1e-15 of 0) in exact rational arithmetic on the dense affine maps
(:meth:`PLNode.matrix`, :attr:`PLNode.bias_vector`). So the patterns are exact.

Extreme scales: norms are taken at any scale (:func:`_scaled_norms`; ``vector_norm`` gave infinite bounds for
weights ~1e180 and zero norms for ~1e-180), layers whose weights float32 holds only as subnormals or beyond
~2^60 run in float64 (:func:`_fits_float32`), and a chain without biases has its rows scaled by powers of
two so that its first-layer products are near 1 (:func:`_homogeneous_rows`; same patterns, by positive
homogeneity).
"""

from __future__ import annotations

import contextlib
import math
import threading
from fractions import Fraction

import torch
import torch.nn.functional as F

from .._matmul import linear32
from .graph import PLGraph, PLNode, _linear_fn

__all__ = ["chain_decide", "chain_plan", "choose_prefix", "graph_patterns", "pattern_nodes", "pattern_widths"]

# rows evaluated at once by the graph engine: ~this many bytes per node value. A block costs ~2-6 ms of
# fixed work (a few hundred Python calls and small torch ops, four oneDNN convolutions on LeNet-5) besides its
# rows: 8 MB blocks (LeNet-5: 606 rows) ran 8-10 % faster than 4 MB ones on LeNet-5 and 10-25 % on conv
# 3-32-64 (in-process A/B, one thread, best of 8); 16 MB ones were no faster (the values no longer stay in
# the caches between the passes that read them)
_CHUNK_BYTES = 8 << 20
_CRUDE_TRIAL = 256  # float32 passes: rows on which the crude convolution bounds are tried (graph_patterns)
_CRUDE_MAX = 0.03  # ... and kept when at most this fraction of those rows is left to float64
_SAFETY = 1.001  # covers the rounding of the bound computations themselves (relative ~ log2(n) u)
# float32 windowed bound (:func:`_window_bound`) only for a Conv2d of at least this fan-in, the crude one
# below it: the crude bound's width grows like the fan-in K (against ~sqrt(K) for the windowed one) and
# each ambiguous unit's redo costs ~K, while the window norms cost a pass over the input whatever K
# (conv 1-8-16, K = 72: 341 against 104 ambiguous units per 4 096 images, ~1 ms of redos against ~4 ms
# of window norms; conv 3-32-64, K = 288: ~18 000 against ~4 900, the windowed bound ~2x faster)
_CS_MIN_FAN_IN = 128
# the two-level redo of a convolution's unit through the convolution before it goes first (before the
# one-level redo from the float32 input) while its first level costs at most this many multiply-adds per
# term of the one-level redo: vectorised multiply-adds on an image's patch against cache misses over a
# wide float32 row (:meth:`_Engine._deep_conv`; conv 3-32-64: 7 776 against 288 terms, 27x)
_DEEP_FIRST = 64


def pattern_nodes(g: PLGraph) -> list[PLNode]:
    """The nodes that carry pattern bits: every relu, every max-pool with windows of more than one entry."""
    return [n for n in g.nodes if n.op == "relu" or (n.op == "maxpool" and n.windows.shape[1] > 1)]


def pattern_widths(g: PLGraph) -> list[int]:
    """Bits per pattern node: a relu's size; a max-pool's ``size * ceil(log2 k)`` (the argmax in binary)."""
    out = []
    for n in pattern_nodes(g):
        out.append(n.size if n.op == "relu" else n.size * _pos_bits(n.windows.shape[1]))
    return out


def _pos_bits(k: int) -> int:
    return max(1, math.ceil(math.log2(k)))


def _gamma(k: int, u: float) -> float:
    return 1.01 * (k + 2) * u / (1 - (k + 2) * u)


# ------------------------------------------------------------------------------------- error bounds
def _drop_negative(z: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """The error bound ``d`` of a ReLU's output: 0 where its input is certainly negative (``z + d <= 0``;
    then ``d`` is finite, so the product is an exact 0; an inf or NaN bound, or a NaN ``z``, keeps ``d``).
    A product with the mask, not ``masked_fill``: that runs ~15x slower on random masks."""
    return d * ((z + d) <= 0).logical_not_()


class _Exact:
    def __init__(self, like: torch.Tensor):
        self.like = like

    def norm(self):
        return torch.zeros(self.like.shape[0], dtype=self.like.dtype, device=self.like.device)

    def elem(self):
        return torch.zeros_like(self.like)

    def elem_rows(self, rows):
        return self.like.new_zeros((len(rows), self.like.shape[1]))


class _Elem:
    def __init__(self, e: torch.Tensor):
        self.e, self._n = e, None

    def norm(self):
        if self._n is None:
            self._n = _safe_norm(self.e) * _SAFETY
        return self._n

    def elem(self):
        return self.e

    def elem_rows(self, rows):
        return self.e[rows]


class _OnDemand:
    """An elementwise error bound multiplied out on its first whole read (``_whole``), its norm on the
    first call of ``norm``; both kept."""

    _e = None
    _n = None

    def norm(self):
        if self._n is None:
            self._n = _safe_norm(self.elem()) * _SAFETY
        return self._n

    def elem(self):
        if self._e is None:
            self._e = self._whole()
        return self._e


class _Scaled(_OnDemand):
    """The elementwise bound ``src[:, off : off + n] * scale`` (``src`` (B, S)), multiplied out only when read
    whole: a ReLU's compiled pass reads ``src`` in place and scales as it goes (a stacked convolution's
    |W| half, a convolution's bound before its final factor), and the unit redo reads a few rows."""

    def __init__(self, src: torch.Tensor, off: int, n: int, scale: float):
        self.src, self.off, self.n, self.scale = src, off, n, scale

    def view(self):
        return self.src[:, self.off : self.off + self.n]

    def _whole(self):
        return torch.mul(self.view(), self.scale)  # (the same rounding as the compiled pass's d * scale)

    def elem_rows(self, rows):
        return torch.mul(self.src[rows, self.off : self.off + self.n], self.scale)


class _ReluErr(_OnDemand):
    """Error bound of a ReLU's output ``relu(z^)`` from its input's bound ``d`` (an error object): ``d``, or 0
    where ``z^ + d <= 0`` (:func:`_drop_negative`), made on demand (the unit redo reads a few rows). ``pre``:
    ``(g, e + g relu(z^))`` from the compiled pass, the input of the bound of the one convolution reading
    this output (:meth:`_Engine.affine`); ``peak``: ``(g, m, nz)`` from the compiled pass for the crude bound
    of the one convolution reading this output: per row, ``m`` at least the largest ``fl(e + g relu(z^))``
    and ``nz`` whether any output or its bound is nonzero; ``win``: ``(g, R, nz)`` from the compiled pass
    for the windowed bound of that convolution (``R`` (B, P) at least ``||fl(e + g relu(z^))_w(p)||_2``
    per output position ``p``, :func:`_window_bound`)."""

    def __init__(self, z: torch.Tensor, d, pre=None, peak=None, win=None):
        self.z, self.d, self.pre, self.peak, self.win = z, d, pre, peak, win

    def _whole(self):
        return _drop_negative(self.z, self.d.elem())

    def elem_rows(self, rows):
        return _drop_negative(self.z[rows], self.d.elem_rows(rows))


class _Outer(_OnDemand):
    """The crude or windowed bound of a convolution's output (:meth:`_Engine.affine` with ``crude``), unit
    ``j = f P + p`` (filter ``f``, output position ``p`` of ``P``) of row ``r``: ``((t_rp L_j + A_j) + k_r
    U_j) s``, ``A_j = g |b_j|`` (float32 ``|b|``: the cast is inside ``g``), ``k_r`` 1 when the row has a
    nonzero input or input error (else 0: nothing can underflow), ``U_j`` the underflow allowance and
    ``s = (1 + 2g) _SAFETY``; with ``q = e + g |x^|`` (input error ``e``, computed input ``x^``) the
    standard-model bound of the module docstring is ``|M_j| q + g |b_j|`` (plus the allowance), and

    * crude (``P = 1``): ``t_r`` at least the row's largest ``q_i`` and ``L_j`` at least ``||M_j||_1``:
      ``|M_j| q <= ||M_j||_1 max_i q_i`` (Hoelder);
    * windowed (:func:`_window_bound`): ``t_rp`` at least ``||q_w(p)||_2``, the 2-norm of ``q`` over the
      entries that output position ``p`` reads (every input channel, the filter's window), and ``L_j`` at
      least ``||W_f||_2``: ``|M_j| q = sum_i |W_fi| q_i <= ||W_f||_2 ||q_w(p)||_2`` (Cauchy-Schwarz; the
      entries outside the window have zero weight, padding reads exact zeros). About twice the full bound
      on a random 3x3 filter, against 5-8x for the crude one, at the cost of a pass over ``q``.

    The roundings of this arithmetic (t L, + A, + k U, x s and the cast of ``s``: ~5u relative, all on
    nonnegative numbers; those of ``t`` have their own factor ``_SAFETY``, ``L`` is rounded up) lie far
    inside ``s``; near underflow each loses less than half the smallest subnormal number, far inside ``U``
    (``>= 3`` smallest normal numbers), which every row with a nonzero input or input error gets (a row
    without has ``t = 0`` and an exact bound). Multiplied out only when read whole: a ReLU's compiled pass
    computes each entry as it reads it (the same operations, in the same order, so the same numbers), the
    unit redo reads a few rows."""

    def __init__(self, t: torch.Tensor, risk: torch.Tensor, info: dict, s: float, L=None):
        self.t = t.reshape(t.shape[0], -1)  # (B, P)
        self.L = info["l1"] if L is None else L  # (N,)
        self.A, self.U = info["absbias"].reshape(-1), info["under_vec"].reshape(-1)
        self.risk, self.s = risk, s

    def _make(self, t, risk):
        B, P = t.shape
        b = (t[:, None, :] * self.L.reshape(1, -1, P)).reshape(B, -1).add_(self.A)
        return b.addcmul_(risk.to(b.dtype)[:, None], self.U).mul_(self.s)

    def vectors(self):
        """``(L, A, U)`` as contiguous 1-D arrays (the compiled pass's operands)."""
        return self.L, self.A, self.U

    def _whole(self):
        return self._make(self.t, self.risk)

    def elem_rows(self, rows):
        return self._make(self.t[rows], self.risk[rows])


def _window_bound(err, flat: torch.Tensor, info: dict, kernels: bool = True) -> _Outer:
    """The windowed bound (:class:`_Outer`) of a Conv2d's output on the computed input ``flat`` ((B, n)
    float32, CPU) with error ``err``: per row and output position ``p``, ``t_p`` at least
    ``||q_w(p)||_2`` with ``q = e + g |x^|``.

    ``t`` comes from a ReLU's compiled pass (``err.win``: ``||fl(e + g relu(z^))_w(p)||_2``, the ReLU's
    error ``e`` already 0 where its input is certainly negative), or, for an exact input (``e = 0``), from
    ``g ||x^_w(p)||_2``, or from ``fl(e + g |x^|)`` made here. ``fl(e + g |x^|) >= (1 - u)^2 (e + g
    |x^|)`` up to an underflow of ``g |x^|`` (less than the smallest subnormal per entry, times ``||W_f||_1``
    far inside the allowance ``U``, which every row with a nonzero input or error gets); the window norms
    are taken in float64 and multiplied by ``_SAFETY`` before being rounded up to float32
    (:func:`._graph_kernel._window_norms_row`), which covers those ``(1 - u)^2`` with room to spare."""
    from ._graph_kernel import window_norms

    C, HW, win, l2 = info["cs"]
    g = info["g"]
    s = (1 + 2 * g) * _SAFETY
    norms = window_norms if kernels else _window_norms_torch
    w_in = getattr(err, "win", None)
    if w_in is not None and w_in[0] == g:
        return _Outer(w_in[1], w_in[2], info, s, l2)
    if isinstance(err, _Exact):
        # (float64 scaling inside: g ||x||, no float32 product g |x_i| to underflow)
        R, nz = norms(flat, C, HW, win, g * _SAFETY)
        return _Outer(R, nz, info, s, l2)
    e = err.elem()
    q = e.add(flat.abs(), alpha=g)
    R, _ = norms(q, C, HW, win, _SAFETY)
    # (from the input and its error, not from q: g |x^| may underflow to 0 where x^ is not 0)
    risk = (flat != 0).any(1) | (e != 0).any(1)
    return _Outer(R, risk, info, s, l2)


def _window_norms_torch(x: torch.Tensor, C: int, HW: int, win: torch.Tensor, scale: float):
    """:func:`._graph_kernel.window_norms` in torch operations (the engine with its kernels off): the
    squares summed over channels and windows in float64, the square root times ``scale`` rounded up to
    ``x``'s precision."""
    B = x.shape[0]
    x = x[:, : C * HW]  # (C channels of HW positions, as the kernel reads)
    x64 = x.to(torch.float64).reshape(B, C, HW)
    Q = (x64 * x64).sum(1)
    Q = torch.cat([Q, Q.new_zeros(B, 1)], 1)  # (padding, -1, reads this zero column)
    acc = Q[:, torch.where(win < 0, HW, win)].sum(2)
    val = acc.sqrt() * scale
    R = val.to(x.dtype)
    R = torch.where(R.to(torch.float64) < val, torch.nextafter(R, torch.full_like(R, math.inf)), R)
    return R, (x != 0).any(1)


class _Rank1:
    """``e_i <= scale (r_i A + G c_i)`` per sample (``A``: (B,); ``r``, ``c``: (n,); ``G`` a number);
    ``zsrc``: after a ReLU, its input ``z^``; entries with ``z^ + bound <= 0`` are exact zeros.

    ``A = E + X``: ``E`` bounds the 2-norm of the input's error, which the layer maps to an error of norm at
    most ``||W||_2 E`` (the part ``r_i E`` of each entry's bound is Cauchy-Schwarz on row ``i``); ``X``
    carries the layer's own rounding (``gamma ||x^||`` and the underflow allowance), whose vector of per-row
    bounds has norm at most ``X ||r|| + G ||c||``. So the output error's 2-norm is at most
    ``scale (E sigma + X ||r|| + G ||c||)`` with ``sigma`` a certified bound on ``||W||_2``
    (:func:`_spectral_bound`), far below ``||r|| = ||W||_F`` for a square layer (about 6x for a random
    128 x 128 one): the error of a residual stream then grows like ``(1 + ||W||_2)`` per block, not
    ``(1 + ||W||_F)``."""

    def __init__(self, E, X, G, info, scale=1.0, zsrc=None):
        self.E, self.X, self.A, self.G, self.info = E, X, E + X, G, info
        self.scale, self.zsrc, self._d = scale, zsrc, None

    def _bound(self, A):
        base = (self.info["c"] * (self.G * self.scale)).expand(A.shape[0], -1)
        return torch.addr(base, A, self.info["r"], alpha=self.scale)

    def d(self):
        if self._d is None:
            self._d = self._bound(self.A)
        return self._d

    def d_rows(self, rows):
        return self._d[rows] if self._d is not None else self._bound(self.A[rows])

    def screen(self) -> torch.Tensor:
        """Per row, a bound on every unit's bound: ``max_i r_i A + max_i G c_i``."""
        return (self.A * self.info["r_max"] + self.G * self.info["c_max"]) * self.scale

    def rows_maybe_undecided(self, z: torch.Tensor) -> torch.Tensor:
        """A one-pass per-row screen: ``min_i |z_i| >`` :meth:`screen` means every unit decided."""
        m = z.abs().amin(1)  # (NaN when a value overflowed: such a row is not cleared)
        return ~(m > self.screen())

    def norm(self):
        info = self.info
        return (self.E * info["sigma"]() + self.X * info["rn"] + self.G * info["cn"]) * (self.scale * _SAFETY)

    def elem(self):
        d = self.d()
        return d if self.zsrc is None else _drop_negative(self.zsrc, d)

    def elem_rows(self, rows):
        d = self.d_rows(rows)
        return d if self.zsrc is None else _drop_negative(self.zsrc[rows], d)


class _Lazy:
    def __init__(self, f):
        self.f, self.v = f, None

    def __call__(self):
        if self.v is None:
            self.v = self.f()
        return self.v


class _Sum:
    """Error of ``a + b`` computed in floating point: both errors plus the rounding of the sum; kept lazy so
    that a following Linear only needs norms (cheap) and a ReLU / max-pool gets elementwise bounds."""

    def __init__(self, parts, v, u, vnorm):
        self.parts, self.v, self.u, self.vnorm, self._n = parts, v, u, vnorm, None

    def norm(self):
        if self._n is None:  # cached: nested residual sums would otherwise recompute every inner norm
            s = sum(p.norm() for p in self.parts) + self.u * self.vnorm(self.v)
            self._n = s * ((1 + 2 * self.u) * _SAFETY)
        return self._n

    def elem(self):
        e = self.v.abs().mul_(self.u)
        for p in self.parts:
            e += p.elem()
        return e.mul_(1 + 2 * self.u)

    def elem_rows(self, rows):
        e = self.v[rows].abs().mul_(self.u)
        for p in self.parts:
            e += p.elem_rows(rows)
        return e.mul_(1 + 2 * self.u)


class _Cat:
    def __init__(self, parts):
        self.parts, self._n = parts, None

    def norm(self):
        if self._n is None:
            self._n = torch.sqrt(sum(p.norm() ** 2 for p in self.parts)) * _SAFETY
        return self._n

    def elem(self):
        return torch.cat([p.elem() for p in self.parts], 1)

    def elem_rows(self, rows):
        return torch.cat([p.elem_rows(rows) for p in self.parts], 1)


# ------------------------------------------------------------------------------------- the engine
def _spectral_bound(w: torch.Tensor) -> float:
    """A certified upper bound on the spectral norm ``||w||_2`` of a float64 matrix (``inf`` past 512 on
    the short side, where the factorisations below would cost more than they save).

    ``lam``, the top eigenvalue of ``M^ = fl(w^T w)`` (``k x k``, ``k`` the short side, inner dimension
    ``p``), is only an estimate; the certificate is a floating-point Cholesky factorisation of
    ``A^ = fl(s I - M^)`` with ``s`` slightly above ``lam``. When it succeeds, ``A^ + D = L^ L^T`` with
    ``|D| <= gamma_{k+1} |L^| |L^|^T`` (Higham, *Accuracy and Stability*, Thm 10.5; taken 4x for blocked
    LAPACK variants), so ``L^ L^T`` being PSD gives
    ``lambda_max(M) <= s + ||M^ - M||_2 + ||A^ - (s I - M^)||_2 + ||D||_2`` with
    ``||M^ - M||_2 <= gamma_p ||w||_F^2``, ``||A^ - (s I - M^)||_2 <= u (s + max M^_ii)``
    (only the diagonal is rounded) and ``||D||_2 <= gamma_{k+1} ||L^||_F^2``. These terms are ~1e-12
    relative; the final factor ``1 + 1e-9`` covers the rounding of this arithmetic itself.
    """
    m, n = w.shape
    if w.numel() == 0 or not bool((w != 0).any()):
        return 0.0
    k, p = min(m, n), max(m, n)
    if k > 512:
        return math.inf
    u, tiny = 2.0**-53, torch.finfo(torch.float64).tiny
    e = math.frexp(float(w.abs().max()))[1]
    if abs(e) > 100:
        # w^T w over- or underflows for |w| ~1e+-160 (then no certificate, only the Frobenius norm): bound
        # ||w 2^-e||_2 instead (largest entry in [0.5, 1), two power-of-two factors that stay in range) and
        # scale back. Scaling down rounds entries pushed below the smallest normal number by at most that
        # number each, ||.||_2 <= ||.||_F <= 2 sqrt(mn) tiny in all; scaling back is exact unless the result
        # is subnormal (then within tiny, added) or overflows (inf, the honest answer).
        e1, e2 = e // 2, e - e // 2
        sb = _spectral_bound(w * math.ldexp(1.0, -e1) * math.ldexp(1.0, -e2)) + 2 * math.sqrt(m * n) * tiny
        try:
            return math.ldexp(math.ldexp(sb, e1), e2) + tiny
        except OverflowError:
            return math.inf
    M = w.T @ w if n <= m else w @ w.T
    fro2 = float((w * w).sum())
    if not (math.isfinite(fro2) and bool(torch.isfinite(M).all())):
        return math.inf  # |w| near float64's range: the caller keeps the Frobenius norm
    try:
        lam = float(torch.linalg.eigvalsh(M)[-1])
    except RuntimeError:  # (torch.linalg.LinAlgError) no estimate, no certificate
        return math.inf
    for t in (2.0**-20, 2.0**-12, 2.0**-6):
        s = max(lam, 0.0) * (1 + t) + fro2 * t
        A = -M
        A.diagonal().add_(s)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            err = (
                _gamma(p, u) * fro2
                + k * p * tiny  # products of w^T w below the smallest normal number (gradual underflow)
                + u * (s + float(M.diagonal().max()))
                + 4 * _gamma(k + 1, u) * float((L * L).sum())
            )
            return math.sqrt((s + 2 * err) * (1 + 1e-9)) * (1 + 1e-9)
    return math.inf


def _spectral_of(op, w: torch.Tensor) -> float:
    """:func:`_spectral_bound` of an op's float64 weight, computed once per trace (the float32 and float64
    engines of a count both need it: an eigenvalue and a Cholesky factorisation, ~2 ms for 128 x 128)."""
    key = ("certified._spectral_bound",)
    hit = op._cache.get(key)
    if hit is None or hit[0] is not w or hit[1] != w._version:
        hit = (w, w._version, _spectral_bound(w))
        op._cache[key] = hit
    return hit[2]


@contextlib.contextmanager
def _threads(n: int):
    """Run the calling thread's torch operations on ``n`` OpenMP (and MKL) threads for a block, restoring its
    previous counts after. These are per-thread settings of the runtimes (:mod:`netgeom.nets._workers`): the
    process's other threads keep theirs. Without torch's OpenMP runtime, nothing changes."""
    from ._workers import _mkl_local, _openmp

    prev = torch.get_num_threads()
    lib = _openmp() if prev != n else None
    if lib is None:
        yield
        return
    mkl = _mkl_local()
    lib.omp_set_num_threads(n)
    mprev = mkl(n) if mkl is not None else None
    try:
        yield
    finally:
        lib.omp_set_num_threads(prev)
        if mkl is not None:
            mkl(mprev)


_CALLER = threading.local()  # .n: the torch thread count of the thread that entered _one_thread


@contextlib.contextmanager
def _one_thread(device):
    """The graph engine's small torch operations on one thread (CPU); its products go back to the
    caller's thread count (:func:`_products`). Its blocks alternate products with compiled passes and a few
    dozen small torch operations: with torch's OpenMP team each of those operations is a barrier of the
    team, whose threads then spin for milliseconds while the compiled passes run (on the 2-core machine
    of bench_patterns, shared with other jobs, 2 torch threads throughout against 1: conv 1-8-16 on 4 000
    images 1.6 s against 0.27 s, the residual MLP on 40 000 points 3.0 s against 0.84 s). The products,
    most of the work on a convolutional net, keep every thread the caller gave torch, so that the count
    scales with the cores of a larger machine."""
    if torch.device(device).type != "cpu" or getattr(_CALLER, "n", None) is not None:
        yield
        return
    _CALLER.n = torch.get_num_threads()
    try:
        with _threads(1):
            yield
    finally:
        _CALLER.n = None


def _products():
    """Inside :func:`_one_thread`: the caller's torch thread count for a product (else nothing changes)."""
    n = getattr(_CALLER, "n", None)
    return _threads(n) if n is not None else contextlib.nullcontext()


def _rank1_op(op) -> bool:
    """Whether an affine op's error bound is the rank-one one of a dense Linear (:class:`_Rank1`); the others
    take elementwise bounds, which the crude float64 engine bounds without a second product."""
    return op.type_name == "Linear" and len(op.in_shape) == 1


def _casts_relative(params: dict, dtype: torch.dtype) -> bool:
    """Whether every nonzero float parameter is at least ``dtype``'s smallest normal number: the bounds
    charge the cast of a parameter ``u |w|`` (relative), and a subnormal one loses up to half the smallest
    subnormal, absolutely, times inputs as large as the precision holds (weights ~2^-148 against float32
    inputs ~2^60 gave a wrong sign with a bound far below the error)."""
    tiny = torch.finfo(dtype).tiny
    for v in params.values():
        if torch.is_tensor(v) and v.is_floating_point() and v.numel():
            if bool(((v != 0) & (v.abs() < tiny)).any()):
                return False
    return True


class _Engine:
    """Per-(dtype, device) parameters for the certified evaluation of a graph."""

    def __init__(self, g: PLGraph, dtype: torch.dtype, device, crude: bool = False):
        self.g, self.dtype, self.device = g, dtype, torch.device(device)
        # crude: convolutions (and the other ops without a Cauchy-Schwarz bound) bound their output error by
        # ||M_j||_1 times the row's largest input error instead of a second convolution with |W| (see
        # :meth:`affine`); meant for float64, where that is still ~1e-13 relative on a shallow net
        self.crude = crude
        # compiled one-pass kernels for ReLUs fed by elementwise bounds and for max-pools
        # (:mod:`._graph_kernel`)
        self.kernels = self.device.type == "cpu"
        # a crude float32 engine on the CPU bounds each Conv2d (groups 1) by its window norms instead
        # (:func:`_window_bound`: Cauchy-Schwarz per output position, ~4x tighter than the crude bound)
        self.cs = crude and dtype == torch.float32 and self.device.type == "cpu"
        self.n_crude = 0  # affine ops that the crude bound applies to
        self.u = torch.finfo(dtype).eps / 2
        self.itemsize = torch.finfo(dtype).bits // 8
        # the widest value a node holds per row (a max-pool gathers its windows: size x k)
        self.widest = max(n.size * (n.windows.shape[1] if n.op == "maxpool" else 1) for n in g.nodes)
        self.ops: dict[int, list] = {}
        self._plans: dict = {}  # per set of evaluated nodes, see :meth:`_plan`
        # per-run state (row blocks run on several threads, :meth:`run_chunked`)
        self._tls = threading.local()
        # False when a parameter does not fit this precision (|w| beyond float32's range rounds to inf, and
        # inf has no certified error bound): such a graph is evaluated in float64 from the start
        self.fits = True
        # affine nodes (one Linear / Conv) feeding a relu or max-pool: undecided units get a float64 redo
        self.refine: dict[int, _Lazy] = {}
        self.tally: dict[int, tuple[int, int]] = {}  # refine attempts, successes
        if dtype != torch.float64 and self.device.type != "mps":
            for n in g.nodes:
                src = g.nodes[n.inputs[0]] if n.op in ("relu", "maxpool") else None
                if src is not None and src.op == "affine" and len(src._ops) == 1 and src._ops[0].weighted:
                    self.refine[src.index] = _Lazy(lambda src=src: self._refine_prep(src))
        # max-pools reading a refinable affine node (directly or through a relu): (affine index, relu)
        self.pool_src: dict[int, tuple] = {}
        for n in g.nodes:
            if n.op == "maxpool":
                a = g.nodes[n.inputs[0]]
                act = a if a.op == "relu" else None
                if act is not None:
                    a = g.nodes[a.inputs[0]]
                if a.index in self.refine:
                    self.pool_src[n.index] = (a.index, act)
        for n in g.nodes:
            if n.op == "affine":
                # (an op reading the graph's input: :meth:`_halves` leaves it whole)
                ops = enumerate(n._ops)
                self.ops[n.index] = [self._prep(op, i == 0, i == 0 and n.inputs[0] == 0) for i, op in ops]
            if n.op == "maxpool":
                k = n.windows.shape[1]
                w = n.windows.to(self.device)
                padded = bool((w < 0).any())
                w = torch.where(w < 0, torch.full_like(w, n.in_size), w)
                # slot j of every window, gathered with one index_select as a (B, k, size) block (advanced
                # indexing with a 2-D index is ~6x slower)
                slots = w.T.contiguous().flatten()
                self.ops[n.index] = [w, k, padded, slots, _strided_slots(g, n), n.windows.contiguous()]

    def _prep(self, op, first: bool, reads_input: bool = False) -> dict:
        p = op.cast(self.dtype, self.device)
        floats = [v for v in p.values() if torch.is_tensor(v) and v.is_floating_point()]
        if not all(bool(torch.isfinite(v).all()) for v in floats):
            self.fits = False
        if self.dtype != torch.float64 and not _casts_relative(op.params, self.dtype):
            self.fits = False
        abs_p = {k: v.abs() for k, v in p.items()}
        g = _gamma(op.fan_in, self.u)
        info = {"op": op, "p": p, "abs": abs_p, "g": g}
        # float64 Linear layers on the CPU write into a buffer (float32 ones go to oneDNN, which allocates)
        info["addmm"] = (
            self.kernels
            and self.dtype == torch.float64
            and op.fn is _linear_fn
            and len(op.in_shape) == 1
            and "bias" in p
            and p["weight"].dim() == 2
        )
        # gradual underflow is outside the standard model: a product (or a cast to this precision) below the
        # smallest normal number loses up to that number, absolutely; rows with a nonzero input or input
        # error get this allowance per output (per product: fan-in + bias + cast)
        nz = [
            t.abs().max()
            for t in op.params.values()
            if torch.is_tensor(t) and t.is_floating_point() and t.numel()
        ]
        wmax = max((float(t) for t in nz), default=0.0)
        info["under"] = (op.fan_in + 2) * torch.finfo(self.dtype).tiny * (1.0 + wmax) * _SAFETY
        if _rank1_op(op):
            w = op.params["weight"]
            r = _scaled_norms(w) * (1 + 4 * self.u)  # (vector_norm squares: |w| ~1e180 gave inf)
            c = op.params["bias"].abs() if "bias" in op.params else torch.zeros(w.shape[0], dtype=w.dtype)
            info["fast"] = True
            # exact zeros (pruned weights) add no rounding: a dot product's error bound counts only its
            # nonzero terms (+1 bias, +1 rounding of the weights to this precision)
            info["g"] = _gamma(int((w != 0).sum(1).max()) + 2, self.u)
            info["r_max"] = float(r.max()) * _SAFETY
            info["c_max"] = float(c.max()) * _SAFETY
            info["r"] = r.to(self.dtype).to(self.device)
            info["c"] = c.to(self.dtype).to(self.device)
            info["rn"] = float(_scaled_norms(r[None])[0]) * _SAFETY
            # ||W||_2 <= ||W||_F: the certified spectral bound only where it is smaller (computed when a
            # norm of this layer's error is first needed)
            info["sigma"] = _Lazy(lambda w=w, rn=info["rn"]: min(rn, _spectral_of(op, w) * (1 + 4 * self.u)))
            info["cn"] = float(_scaled_norms(c[None])[0]) * _SAFETY
            rpos = r[r > 0]
            # folded into A (bound_j = r_j A + G c_j): a unit with r_j = 0 reads no input, so cannot underflow
            info["under_r"] = info["under"] / float(rpos.min()) if rpos.numel() else 0.0
        else:
            info["fast"] = False
            self.n_crude += 1
            ones = torch.ones((1, *op.in_shape), dtype=torch.float64)
            abs64 = {k: v.abs() for k, v in op.params.items()}  # (the parameters as given, float64)
            if self.crude:
                # ||M_j||_1 per output, rounded up (a float64 sum of nonnegative terms is within gamma_K of
                # the exact one, K the fan-in)
                l1 = op(ones, False, abs64).reshape(-1)
                # (and by 2u of this precision: the cast below rounds to nearest, so may round down by u)
                l1 = l1 * (1 + 2 * _gamma(op.fan_in, 2.0**-53)) * (1 + 2 * self.u)
                info["l1"] = l1.to(device=self.device, dtype=self.dtype).contiguous()
            zero = torch.zeros((1, *op.in_shape), dtype=self.dtype, device=self.device)
            info["absbias"] = op(zero, True, abs_p).reshape(1, -1) * g
            # the underflow allowance goes only to outputs that read a nonzero weight or bias (a pruned
            # filter's outputs are exact zeros, decided without it)
            reads = op(ones, True, abs64).reshape(1, -1) > 0
            info["under_vec"] = (reads * info["under"]).to(device=self.device, dtype=self.dtype)
            m = op.module
            if self.cs and op.fan_in >= _CS_MIN_FAN_IN:
                cs = _window_table(op)
                if cs is not None:
                    C, HW, win = cs
                    w = op.params["weight"]
                    # ||W_f||_2 per filter, rounded up to this precision (as l1 above), one per output unit
                    l2 = _scaled_norms(w.reshape(w.shape[0], -1)) * (1 + 2 * self.u)
                    l2 = l2.repeat_interleave(win.shape[0]).to(device=self.device, dtype=self.dtype)
                    info["cs"] = (C, HW, win, l2.contiguous())
            if op.type_name in ("Conv1d", "Conv2d") and m is not None and set(p) <= {"weight", "bias"}:
                n_f = p["weight"].shape[0]
                uv = info["under_vec"].reshape(n_f, -1)
                if bool((uv == uv[:, :1]).all()):  # one allowance per filter (no partly pruned windows)
                    under_c = uv[:, 0]
                    babs = abs_p["bias"] if "bias" in abs_p else torch.zeros_like(under_c)
                    gs = g
                    if not self.crude and not reads_input:
                        split = self._halves(op, p)
                        if split is not None:  # (the value in two convolutions, :meth:`_halves`)
                            info["split"], info["g_bound"], gs = split[0], g, split[1]
                            info["g"] = gs
                    # |W| e + g |b| + the allowance from one convolution (the allowance then also goes to
                    # rows with no nonzero input: looser by ~1e-36 there, never tighter)
                    info["bound_p"] = {"weight": abs_p["weight"], "bias": babs * gs + under_c}
                    if first and m.groups == 1:
                        # a network's first convolution usually reads an exact, nonnegative input (an
                        # image): then its bound g (|W| x + |b|) + allowance comes out of the same
                        # convolution with |W| stacked under W (one pass over the input, its im2col shared:
                        # a 1-channel 5x5 convolution costs about as much with 12 filters as with 6)
                        b0 = p["bias"] if "bias" in p else torch.zeros_like(under_c)
                        info["stacked"] = {
                            "weight": torch.cat([p["weight"], abs_p["weight"]]),
                            "bias": torch.cat([b0, babs + under_c / g]),
                        }
        return info

    def _halves(self, op, p: dict):
        """``((h, (W_A, b), W_B, conv args), g)`` to compute a float32 Conv2d (groups 1, zero padding, at
        least 2 input channels, reading a computed input) as the sum of two convolutions over its input
        channels ``[0, h)`` and ``[h, C)``, and the rounding factor ``g`` of that sum; ``None`` otherwise.

        Why: the error bound of a dot product of ``K`` terms grows like ``K u``, whatever the order of its
        additions; summed in two halves, each product term passes through the rounding of its weight, its
        product, at most ``K_A`` additions inside its half (``K_A`` products of the larger half plus the
        bias, there) and the one addition of the halves: ``K_A + 3`` roundings, so (Higham, Lemma 3.3)
        ``|y^ - (W x^ + b)| <= gamma_{K_A + 3} (|W| |x^| + |b|)``, about half of ``gamma_{K + 2}``: on
        LeNet-5 (4 000 images), 108 of the 438 rows left to the float64 pass were there for that, and two
        half convolutions cost about as much as one. The bound convolution with ``|W|`` stays one
        convolution (:meth:`affine`; its own rounding, of nonnegative terms, stays within ``gamma_{K+2}``).
        Checked against the op on a random input (a convolution with these parameters, nothing folded). Not
        for an op reading the graph's input (``reads_input`` in :meth:`_prep`): that one usually takes the
        stacked bound, and its error is its own rounding alone, which an exact input keeps small anyway."""
        m = op.module
        if (
            self.dtype != torch.float32
            or self.device.type != "cpu"
            or op.type_name != "Conv2d"
            or m is None
            or m.groups != 1
            or isinstance(m.padding, str)
            or getattr(m, "padding_mode", "zeros") != "zeros"
            or len(op.in_shape) != 3
            or set(p) - {"weight", "bias"}
        ):
            return None
        w = p["weight"]
        C = w.shape[1]
        if C < 2 or w.dim() != 4:
            return None
        h = C // 2
        args = (m.stride, m.padding, m.dilation)
        parts = ((w[:, :h].contiguous(), p.get("bias")), w[:, h:].contiguous())
        x = torch.rand((2, *op.in_shape), generator=torch.Generator().manual_seed(0)).to(self.device, w.dtype)
        ref = op(x, True, p)
        mine = F.conv2d(x[:, :h], *parts[0], *args) + F.conv2d(x[:, h:], parts[1], None, *args)
        if mine.shape != ref.shape or not torch.allclose(
            mine, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())
        ):
            return None
        k_a = (C - h) * math.prod(w.shape[2:])  # (the larger half)
        return (h, parts, args), _gamma(k_a + 1, self.u)

    def _worth_refining(self, src) -> bool:
        """Whether the float64 redo of single units of affine node ``src`` has been deciding them: when the
        error carried in by the float32 input dominates (deep in a residual stream), it cannot, and the
        rows go to the float64 pass at once (only a matter of speed: undecided stays undecided)."""
        if src not in self.refine:
            return False
        tried, ok = self.tally.get(src, (0, 0))
        return tried < 2048 or ok >= 0.2 * tried

    def _tally(self, src, ok: torch.Tensor) -> None:
        tried, good = self.tally.get(src, (0, 0))
        self.tally[src] = (tried + len(ok), good + int(ok.sum()))

    def _refine_prep(self, node: PLNode) -> dict | None:
        """Per output unit, the weights and the input positions it reads, for a one-op Linear / Conv node:
        a Linear's rows; a Conv2d's filters and its im2col table (one row of input indices per output
        position, ``-1`` for padding), checked against the convolution on a random input. Other nodes get
        their dense rows (:meth:`PLNode.matrix`; ``None`` when too large). The weights are the float64
        parameters themselves, so the float64 products below are those of the exact map."""
        op = node._ops[0]
        b = node.bias_vector.to(self.device)
        m = op.module
        if op.type_name == "Conv2d" and m is not None and m.groups == 1 and not isinstance(m.padding, str):
            C = op.in_shape[0]
            ids = torch.arange(1, node.in_size + 1, dtype=torch.float64).reshape(1, *op.in_shape)
            T = F.unfold(ids, m.kernel_size, m.dilation, m.padding, m.stride)[0].T.round().long() - 1
            W = op.params["weight"].reshape(op.params["weight"].shape[0], -1)
            L = T.shape[0]
            if W.shape[1] == T.shape[1] == C * math.prod(m.kernel_size) and W.shape[0] * L == node.size:
                x = torch.randn(
                    1, node.in_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
                )
                xp = torch.cat([x, x.new_zeros(1, 1)], 1)[0]
                mine = (W[:, None, :] * xp[T][None]).sum(2).reshape(-1) + node.bias_vector
                ref = node.apply(x)[0]
                if torch.allclose(mine, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max() + 1)):
                    T = torch.where(T < 0, torch.full_like(T, node.in_size), T)  # padding reads a zero column
                    nnz = int((W != 0).sum(1).max()) if W.numel() else 0
                    return {
                        "W": W.to(self.device),
                        "T": T.to(self.device),
                        "L": L,
                        "b": b,
                        "absb": b.abs(),
                        "g": _gamma(nnz, 2.0**-53) * _SAFETY,
                        "K": nnz,
                        "under": (nnz + 2) * torch.finfo(torch.float64).tiny,
                    }
        try:
            M = node.matrix()
        except ValueError:
            return None
        nnz = int((M != 0).sum(1).max()) if M.numel() else 0
        return {
            "W": M.to(self.device),
            "T": None,
            "b": b,
            "absb": b.abs(),
            "g": _gamma(nnz, 2.0**-53) * _SAFETY,
            "K": nnz,
            "under": (nnz + 2) * torch.finfo(torch.float64).tiny,
        }

    def _deep(self, src: int):
        """``(a, x0, windows)`` when affine node ``src`` reads ``relu(a)`` (``windows`` None) or
        ``maxpool(relu(a))`` (``windows`` the pool's (size, k) table) with ``a`` another one-op affine node
        (both redone in float64, :meth:`_refine_prep`) reading node ``x0``: undecided units of ``src`` can
        then be recomputed from ``x0`` through both (:meth:`_deep_pairs`), where the float32 error carried
        into ``src`` is too wide for its redo alone; else ``None``."""
        key = ("deep", src)
        if key not in self._plans:
            hit = None
            g = self.g
            r = g.nodes[g.nodes[src].inputs[0]]
            windows = None
            if r.op == "maxpool":
                windows = r.windows
                r = g.nodes[r.inputs[0]]
            if self.kernels and r.op == "relu" and r.negative_slope == 0 and r.inputs[0] in self.refine:
                a = r.inputs[0]
                if self.refine[src]() is not None and self.refine[a]() is not None:
                    hit = (a, g.nodes[a].inputs[0], windows)
            self._plans[key] = hit
        return self._plans[key]

    def _deep_pairs(self, src: int, vals: dict, errs: dict, rows: torch.Tensor, units: torch.Tensor):
        """``(z64, bound)`` of the (row, unit) pairs of affine node ``src`` recomputed in float64 from the
        exact input ``x0`` two affine nodes up (:meth:`_deep`), through the ReLU and the max-pool between
        them if any (:func:`._graph_kernel.refine_pairs2`, :func:`._graph_kernel.refine_pairs_pool`: errors
        ~1e-16 relative instead of float32's carried in); ``None`` when that does not apply (no such path,
        or ``x0`` not exact: the network's input given in float32 or narrower)."""
        deep = self._deep(src)
        if deep is None or not isinstance(errs.get(deep[1]), _Exact):
            return None
        a, x0, windows = deep
        x = vals[x0]
        if not (x.device.type == "cpu" and x.dim() == 2 and x.dtype in (torch.float32, torch.float64)):
            return None
        from ._graph_kernel import refine_pairs2, refine_pairs_pool

        lv2, lv1 = self.refine[src](), self.refine[a]()
        if windows is None:
            return refine_pairs2(x, rows, units, lv2, lv1, self.g.nodes[a].size, _SAFETY)
        return refine_pairs_pool(x, rows, units, lv2, windows, lv1, _SAFETY)

    def _deep_conv(self, src: int, vals: dict, errs: dict) -> dict | None:
        """The tables of :func:`._graph_kernel.refine_pairs2_conv` (plus ``"x0"``, the exact input's node)
        when convolution ``src`` reads ``relu`` of another convolution reading the exact input ``x0`` (the
        two-level redo of :meth:`_deep_pairs`, the first level computed per input patch for all its filters
        at once) and that costs at most ``_DEEP_FIRST`` times the one-level redo's terms: then the two-level
        redo goes first. On conv 3-32-64 (20 000 images, ~28 000 ambiguous units) the one-level redo cost
        ~6.5 us per unit, mostly cache misses over the float32 rows of the first convolution's output (~190
        cache lines per unit), and left 27 % of them to the two-level one (~15 us each, one dot product and
        one gather per first-level unit): ~10 us per unit against ~3 us for both levels from the image
        (:func:`._graph_kernel.refine_pairs2_conv`: ~20 cache lines, 9 patches times 32 filters vectorised);
        as tight for deciding (the first level's error is float64's rounding from the exact input, ~1e-15
        relative, not float32's carried in). ``None`` otherwise."""
        deep = self._deep(src)
        if deep is None or deep[2] is not None or not isinstance(errs.get(deep[1]), _Exact):
            return None
        x = vals[deep[1]]
        if not (x.device.type == "cpu" and x.dim() == 2 and x.dtype in (torch.float32, torch.float64)):
            return None
        key = ("deep_conv", src)
        if key not in self._plans:
            from ._graph_kernel import conv2_table

            a = deep[0]
            lv2, lv1 = self.refine[src](), self.refine[a]()
            tab = conv2_table(lv2, lv1, self.g.nodes[deep[1]].size, self.g.nodes[a].size)
            if tab is not None and tab["cost"] > _DEEP_FIRST * lv2["W"].shape[1]:
                tab = None
            if tab is not None:
                tab["x0"] = deep[1]
            self._plans[key] = tab
        return self._plans[key]

    def _redo(self, src: int, vals: dict, errs: dict, rows: torch.Tensor, units: torch.Tensor):
        """``(z64, decided)`` for (row, unit) pairs of affine node ``src`` (feeding a relu): the float64 redo
        from its float32 input (:meth:`_refine`); the pairs that leaves open, when ``src`` reads ``relu(a)``
        or ``maxpool(relu(a))`` of an affine node ``a`` whose input is exact (the network's input, given in
        float32 or narrower), once more with both nodes (and the pool) recomputed in float64 from that input
        (:meth:`_deep_pairs`), so almost no row is left to the float64 pass; where two convolutions make
        that cheap (:meth:`_deep_conv`), the two-level redo goes first and the one-level one takes what it
        leaves open. A decided pair has ``|z64| > bound`` (or an exact value)."""
        xs = self.g.nodes[src].inputs[0]
        tab = self._deep_conv(src, vals, errs)
        if tab is not None:  # two levels first, one for what they leave open (:meth:`_deep_conv`)
            from ._graph_kernel import refine_pairs2_conv

            z64, _, ok = refine_pairs2_conv(vals[tab["x0"]], rows, units, tab, _SAFETY)
            if not bool(ok.all()):
                open_ = torch.nonzero(~ok).flatten()
                z1, bd1 = self._refine(src, vals[xs], errs[xs], rows[open_], units[open_])
                ok1 = ((z1.abs() > bd1) | (bd1 == 0)) & torch.isfinite(z1)
                z64[open_] = torch.where(ok1, z1, z64[open_])
                ok[open_] = ok1
            return z64, ok
        z64, bd = self._refine(src, vals[xs], errs[xs], rows, units)
        ok = ((z64.abs() > bd) | (bd == 0)) & torch.isfinite(z64)
        if not bool(ok.all()):
            open_ = torch.nonzero(~ok).flatten()
            hit = self._deep_pairs(src, vals, errs, rows[open_], units[open_])
            if hit is not None:
                z2, bd2 = hit
                ok2 = ((z2.abs() > bd2) | (bd2 == 0)) & torch.isfinite(z2)
                z64[open_] = torch.where(ok2, z2, z64[open_])
                ok[open_] = ok2
        return z64, ok

    def _refine(self, src: int, xin: torch.Tensor, err, rows: torch.Tensor, units: torch.Tensor):
        """Float64 pre-activations ``z64`` of the (row, unit) pairs of affine node ``src`` from its computed
        input ``xin`` (elementwise error bound ``err.elem_rows``), and a bound on their distance to the exact
        pre-activations (``inf`` when the node's dense rows are too large to form).

        ``|z64 - z| <= |M_j| e + gamma_{K+2} (|M_j| |x^| + |b_j|)`` with ``e`` the input's error bound
        (the float64 rounding of the dot product of the float32 input, ``K`` the nonzero weights of the row:
        exact zeros add no rounding), plus ``(K + 2)`` smallest normal numbers for gradual underflow unless
        every term is zero; ``_SAFETY`` covers the float64 rounding of the bound itself.
        """
        info = self.refine[src]()
        n = len(rows)
        if info is None or n == 0:
            z = torch.zeros(n, dtype=torch.float64, device=xin.device)
            return z, torch.full_like(z, math.inf)
        W, T, b, absb, gam = info["W"], info["T"], info["b"], info["absb"], info["g"]
        under = (info["K"] + 2) * torch.finfo(torch.float64).tiny
        relu_in = self._relu_in_place(xin, err)
        L = info.get("L", 1)
        if relu_in is not None:
            # a ReLU's output and its input's bound read in place, entry by entry: the rows' whole
            # values and bounds gathered, widened to float64 and padded (conv 3-32-64 on 4 000 images: ~2 000
            # rows of 7 200 entries, for 288 entries per pair) cost ~15 % of the count
            from ._graph_kernel import refine_pairs

            zin, d, dscale, outer = relu_in
            args = (rows, units, W, T, L, b, absb, gam, under, _SAFETY)
            return refine_pairs(xin, d, *args, zin=zin, dscale=dscale, outer=outer)
        urows, inv = torch.unique(rows, return_inverse=True)
        X = xin[urows].to(torch.float64)
        E = err.elem_rows(urows).to(torch.float64)
        if self.kernels and X.device.type == "cpu":  # one compiled pass over the pairs, no gathers
            from ._graph_kernel import refine_pairs

            r = inv.reshape(-1).contiguous()
            return refine_pairs(X, E, r, units, W, T, L, b, absb, gam, under, _SAFETY, gathered=True)
        if T is not None:  # padding reads the appended zero column
            X = torch.cat([X, X.new_zeros(len(X), 1)], 1)
            E = torch.cat([E, E.new_zeros(len(E), 1)], 1)
        zs, oks = [], []
        step = max(1, (1 << 21) // max(1, W.shape[1]))  # ~16 MB of gathered float64 rows at once
        for a in range(0, n, step):
            r, j = inv[a : a + step], units[a : a + step]
            if T is None:
                Mu, x64, e64 = W[j], X[r], E[r]
            else:  # unit j = filter j // L at output position j % L
                cols = T[j % info["L"]]
                Mu, x64, e64 = W[j // info["L"]], X[r[:, None], cols], E[r[:, None], cols]
            z = (Mu * x64).sum(1) + b[j]
            aM = Mu.abs()
            bound = (aM * e64).sum(1) + gam * ((aM * x64.abs()).sum(1) + absb[j])
            live = (x64 != 0).any(1) | (e64 != 0).any(1) | (b[j] != 0)
            bound = (bound + live.to(bound.dtype) * under) * _SAFETY
            zs.append(z)
            oks.append(bound)
        return torch.cat(zs), torch.cat(oks)

    def _relu_in_place(self, xin: torch.Tensor, err):
        """``(relu input or None, bound array or None, scale, crude bound or None)`` when ``err`` is an
        elementwise bound held as an array (:class:`_Elem`, :class:`_Scaled`) or a convolution's crude bound
        (:class:`_Outer`: ``(t, k, L, A, U, s)``), or a ReLU's error (:class:`_ReluErr`) over one, and
        everything is a float32 CPU array of ``xin``'s shape: the unit redo then reads them in place
        (:meth:`_refine`)."""
        if not (self.kernels and xin.device.type == "cpu" and xin.dim() == 2):
            return None
        zin, d = (err.z, err.d) if isinstance(err, _ReluErr) else (None, err)
        outer = None
        if isinstance(d, _Scaled):
            arr, scale = d.view(), d.scale
        elif isinstance(d, _Elem):
            arr, scale = d.e, 1.0
        elif isinstance(d, _Outer):
            arr, scale = None, 1.0
            outer = (d.t, d.risk, *d.vectors(), d.s)
            if not all(t.dtype == xin.dtype for t in (d.t, *outer[2:5])) or outer[2].shape[0] != xin.shape[1]:
                return None
        else:
            return None
        ts = tuple(t for t in (zin, arr) if t is not None)
        ok = xin.dtype == torch.float32 and all(t.dtype == xin.dtype and t.shape == xin.shape for t in ts)
        return (zin, arr, scale, outer) if ok else None

    def _refine_windows(self, node: PLNode, vals, errs, rows: torch.Tensor, wins: torch.Tensor):
        """Argmax positions of the (row, window) pairs of max-pool ``node`` from float64 redos of the
        window's entries (each the affine pre-activation :meth:`_refine` recomputes, through the relu
        between them if any), and whether each is certain (:func:`_window_sure`). Windows that leaves open
        get their entries recomputed from the exact input two affine nodes up where that applies
        (:meth:`_deep_pairs`); each entry then keeps whichever of its two (value, bound) pairs has the
        smaller bound (both are certified)."""
        src, act = self.pool_src[node.index]
        k = self.ops[node.index][1]
        ent = node.windows.to(rows.device)[wins]  # (P, k), -1 = padding
        valid = ent >= 0
        xs = self.g.nodes[src].inputs[0]
        pr, pu = rows[:, None].expand(-1, k)[valid], ent[valid]
        z, bd = self._refine(src, vals[xs], errs[xs], pr, pu)
        t, sure, V, E = self._windows_from(act, z, bd, valid)
        if act is not None and act.negative_slope == 0 and not bool(sure.all()):
            # (only through a relu: _deep reads a relu before the pool) the entries of the open windows
            # that are not exact and whose interval reaches the top entry's: the others are already
            # certainly below it (and an entry not redone keeps its certified value and bound)
            lo = torch.gather(V - E, 1, t[:, None])
            redo = (~sure)[:, None] & (E > 0) & (V + E >= lo)
            idx = torch.nonzero(redo[valid]).flatten()
            hit = self._deep_pairs(src, vals, errs, pr[idx], pu[idx])
            if hit is not None:
                z2, bd2 = hit
                better = (bd2 < bd[idx]) & torch.isfinite(z2)
                z[idx] = torch.where(better, z2, z[idx])
                bd[idx] = torch.where(better, bd2, bd[idx])
                t, sure, _, _ = self._windows_from(act, z, bd, valid)
        return t, sure

    @staticmethod
    def _windows_from(act, z: torch.Tensor, bd: torch.Tensor, valid: torch.Tensor):
        """``(argmax, certain, values, bounds)`` per window from float64 pre-activations ``z`` of its valid
        entries within ``bd`` of the exact ones (``valid`` (P, k)), through the relu ``act`` (None: none);
        ``values`` and ``bounds`` (P, k) as :func:`_window_sure` reads them (padding: ``-inf``, 0)."""
        if act is not None:
            slope = act.negative_slope
            if slope == 0:  # a certainly negative pre-activation gives an exact 0
                z, bd = torch.relu(z), _drop_negative(z, bd)
            else:
                z, bd = torch.where(z > 0, z, z * slope), bd * max(1.0, abs(slope))
        P, k = valid.shape
        V = torch.full((P, k), -math.inf, dtype=torch.float64, device=z.device)
        E = torch.zeros((P, k), dtype=torch.float64, device=z.device)
        V[valid], E[valid] = z, bd
        fin = torch.ones((P, k), dtype=torch.bool, device=z.device)
        # (an overflow even in float64: _window_sure would read its -inf as padding)
        fin[valid] = torch.isfinite(z)
        t = torch.argmax(V, dim=1, keepdim=True)
        sure = _window_sure(V, E, t, 2.0**-53) & torch.isfinite(E).all(1) & fin.all(1)
        return t.squeeze(1), sure, V, E

    @property
    def _norms(self) -> dict:
        """The row norms of the values of the calling thread's current :meth:`run` (see :meth:`vnorm`)."""
        return self._tls.norms

    @_norms.setter
    def _norms(self, v: dict) -> None:
        self._tls.norms = v

    def vnorm(self, t: torch.Tensor) -> torch.Tensor:
        """Row 2-norms, computed once per value (a residual sum and the Linear reading it share one)."""
        key = (t.data_ptr(), tuple(t.shape))
        hit = self._norms.get(key)
        if hit is None:
            hit = (t, _safe_norm(t))
            self._norms[key] = hit
        return hit[1]

    def affine(self, node: PLNode, x: torch.Tensor, err, *, need_err: bool):
        B = x.shape[0]
        for k, info in enumerate(self.ops[node.index]):
            op = info["op"]
            xs = x.reshape(B, *op.in_shape)
            stack = need_err and not self.crude and isinstance(err, _Exact) and info.get("stacked")
            if stack and bool(xs.amin() >= 0):  # (one reduction: a NaN fails it)
                # y and fl(|W| x + |b|) (= |W| |x| + |b| up to gamma_{K+1} relative: nonnegative terms) in one
                # convolution; g (1 + 2g) covers that rounding and the product's
                with _products():
                    both = op(xs, True, info["stacked"]).reshape(B, -1)
                half = both.shape[1] // 2
                x = both[:, :half]
                g = info.get("g_bound", info["g"])  # (one convolution: the whole fan-in's gamma)
                # (a view of the |W| half, scaled where read: a ReLU's compiled pass reads both halves in
                # place)
                err = _Scaled(both, half, half, g * (1 + 2 * g))
                continue
            if info["addmm"]:  # (into this op's buffer: a fresh 4 MB output per block costs its page faults)
                p = info["p"]
                out = self._buffers((node.index, k), (B, p["weight"].shape[0]), 1)[0]
                with _products():
                    y = torch.addmm(p["bias"], xs, p["weight"].T, out=out)
            elif "split" in info:  # two half convolutions (:meth:`_halves`)
                h, (a, bb), args = info["split"]
                with _products():
                    y = F.conv2d(xs[:, :h], *a, *args).add_(F.conv2d(xs[:, h:], bb, None, *args))
            else:
                with _products():
                    y = op(xs, True, info["p"])
            if need_err:
                g = info["g"]
                flat = x.reshape(B, -1)
                if "bound_p" in info and not self.crude:
                    # |W| (e + g |x^|) + g |b| + allowance: one convolution, one scaling (left to the
                    # reader: a ReLU's compiled pass scales as it reads)
                    pre = getattr(err, "pre", None)
                    if pre is not None and pre[0] == g:  # e + g |x^| from the ReLU's compiled pass
                        e = pre[1].reshape(xs.shape)
                    else:
                        e = xs.abs().mul_(g)
                        if not isinstance(err, _Exact):
                            e.add_(err.elem().reshape(e.shape))
                    with _products():
                        bound = op(e, True, info["bound_p"]).reshape(B, -1)
                    # (the bound convolution's own rounding: gamma_{K+2} of the whole fan-in)
                    err = _Scaled(bound, 0, bound.shape[1], 1 + 2 * info.get("g_bound", g))
                    x = y.reshape(B, -1)
                    continue
                if self.cs and "cs" in info:
                    err = _window_bound(err, flat, info, self.kernels)
                    x = y.reshape(B, -1)
                    continue
                if self.crude and not info["fast"]:
                    # the crude bound's t and risk (:class:`_Outer`) without a pass over the input's error:
                    # from the ReLU's compiled pass, or (an exact input) from the input's extremes
                    peak = getattr(err, "peak", None)
                    tr = None
                    if peak is not None and peak[0] == g:
                        tr = (peak[1] * _SAFETY, peak[2])
                    elif (
                        isinstance(err, _Exact)
                        and self.kernels
                        and flat.dtype in (torch.float32, torch.double)
                    ):
                        from ._graph_kernel import row_absmax

                        a = row_absmax(flat)  # (a NaN propagates: its row is undecided)
                        tr = (a * (g * _SAFETY), a != 0)
                    if tr is not None:
                        err = _Outer(tr[0], tr[1], info, (1 + 2 * g) * _SAFETY)
                        x = y.reshape(B, -1)
                        continue
                # gradual underflow can only touch rows with a nonzero input or input error (the norms never
                # underflow to 0, :func:`_safe_norm`): one pass instead of a search for entries below
                # tiny / min |w|, and the allowance is ~1e-36 (float32) where it is not needed
                xn, en = self.vnorm(flat), err.norm()
                risk = (xn > 0) | (en > 0)
                if info["fast"]:
                    X = g * _SAFETY * xn + risk.to(xn.dtype) * info["under_r"]
                    err = _Rank1(en, X, g, info)
                else:
                    if self.crude:
                        # |M_j| (e + g |x^|) <= ||M_j||_1 max_i (e_i + g |x^_i|): one pass over the input
                        # instead of a convolution (see :class:`_Outer`); this arithmetic's few roundings
                        # (~5u) are inside (1 + 2g)
                        t = err.elem().add(flat.abs(), alpha=g).amax(1) * _SAFETY
                        err = _Outer(t, risk, info, (1 + 2 * g) * _SAFETY)
                        x = y.reshape(B, -1)
                        continue
                    else:
                        e = err.elem().reshape(B, *op.in_shape) + g * xs.abs()
                        bound = op(e, False, info["abs"]).reshape(B, -1) + info["absbias"]
                    if bool(risk.any()):
                        bound.addcmul_(risk.to(bound.dtype)[:, None], info["under_vec"])
                    err = _Elem(bound.mul_(1 + 2 * g))
            x = y.reshape(B, -1)
        return x, err

    def maxpool(self, node: PLNode, vals, errs):
        """Values, error bounds, argmax positions and undecided rows of a max-pool node.

        Slot by slot over a ``(B, k, size)`` gather: the running maximum ``m1`` (its first position, as
        torch), the second largest entry ``m2`` and the largest error ``emax`` of each window. A window is
        sure when ``m1 - m2 > 2 emax``: every other entry is then below the maximum by more than both errors.
        In floating point ``fl(m1 - m2) <= (1 + u)(m1 - m2)`` and ``fl(2 emax (1 + 4u)) >= 2 emax (1 + 2u)``,
        so the test ``fl(m1 - m2) > fl(2 emax (1 + 4u)) + tiny`` implies the exact one (an underflowing
        product loses less than ``tiny``); a window of exact entries (``emax == 0``, ties included) is
        decided by its values.
        Ties and windows closer than that get the per-entry test (:func:`_window_sure`) on their rows,
        then a float64 redo of their entries (:meth:`_refine_windows`). The output error is ``emax`` (the max
        is 1-Lipschitz in the max-norm).
        """
        ins = node.inputs
        windows, k, padded, slots, view, raw = self.ops[node.index]
        xin, ein = vals[ins[0]], errs[ins[0]].elem()
        B, n_in = xin.shape
        if self.kernels and view is not None:  # a regular grid: its slots read at a stride, no index table
            from ._graph_kernel import pool_grid

            m1, pos, emax, sure, bad = pool_grid(xin, ein, view, self.u)
            return self._pool_pairs(node, vals, errs, xin, ein, m1, pos, emax, sure, n_in, bad)
        if self.kernels:
            from ._graph_kernel import pool_top2

            m1, pos, emax, sure = pool_top2(xin, ein, raw, self.u)
            if padded:  # the per-entry test below reads padding as -inf with error 0
                xin = torch.cat([xin, xin.new_full((B, 1), -math.inf)], 1)
                ein = torch.cat([ein, ein.new_zeros((B, 1))], 1)
            return self._pool_pairs(node, vals, errs, xin, ein, m1, pos, emax, sure, n_in)
        if view is not None:  # regular windows without padding: slot j of every window is a strided view
            shape, offs, (sh, sw), (Ho, Wo) = view
            xv, ev = xin.reshape(B, *shape), ein.reshape(B, *shape)

            def slot(t, j):
                return t[:, :, offs[j][0] :: sh, offs[j][1] :: sw][:, :, :Ho, :Wo]

            xs = [slot(xv, j) for j in range(k)]
            es = [slot(ev, j) for j in range(k)]
        else:
            if padded:  # padding positions read -inf (never the max) with error 0
                xin = torch.cat([xin, xin.new_full((B, 1), -math.inf)], 1)
                ein = torch.cat([ein, ein.new_zeros((B, 1))], 1)
            xs = xin.index_select(1, slots).view(B, k, -1).unbind(1)  # k values (B, size)
            es = ein.index_select(1, slots).view(B, k, -1).unbind(1)
        m1, m2, emax = xs[0].clone(), torch.full_like(xs[0], -math.inf), es[0].clone()
        pos = torch.zeros(m1.shape, dtype=torch.uint8 if k <= 256 else torch.long, device=m1.device)
        for j in range(1, k):
            c = xs[j]
            # the first strict improvement moves the argmax to slot j, later than any earlier position:
            # max(pos, j [c > m1]) (a masked fill is ~15x slower on random masks)
            torch.maximum(pos, (c > m1).to(pos.dtype).mul_(j), out=pos)
            torch.maximum(m2, torch.minimum(m1, c), out=m2)
            torch.maximum(m1, c, out=m1)
            torch.maximum(emax, es[j], out=emax)
        m1, m2, emax, pos = m1.reshape(B, -1), m2.reshape(B, -1), emax.reshape(B, -1), pos.reshape(B, -1)
        tiny = torch.finfo(m1.dtype).tiny
        pos = pos.long()
        thr = (emax * (2 * (1 + 4 * self.u))).add_((emax > 0).to(m1.dtype), alpha=tiny)
        sure = ((m1 - m2) > thr) | (emax == 0)  # exact entries: the computed first maximum is the exact one
        # a row with an overflowed (inf) or NaN entry has no sure window and an unknown output error (the
        # compiled pass does the same)
        finite = torch.isfinite(xin[:, :n_in]).all(1)
        sure &= finite[:, None]
        emax[~finite] = math.inf
        return self._pool_pairs(node, vals, errs, xin, ein, m1, pos, emax, sure, n_in)

    def _pool_pairs(self, node, vals, errs, xin, ein, m1, pos, emax, sure, n_in: int, bad=None):
        """The windows the top-two test left open: the per-entry test, then a float64 redo; returns the
        max-pool's ``(values, error, argmax positions, undecided rows)``. ``xin``'s first ``n_in`` columns
        are the pool's input (padding, -inf, after them); ``bad``: (B,) the rows with a NaN or infinite
        value among them, when the caller knows (else found here)."""
        windows = self.ops[node.index][0]
        undecided = torch.zeros(m1.shape[0], dtype=torch.bool, device=m1.device)
        rr, ww = torch.nonzero(~sure, as_tuple=True)
        if len(rr):  # the per-entry test on the (row, window) pairs the top-two test left open
            if self.kernels and xin.device.type == "cpu" and xin.dtype in (torch.float32, torch.float64):
                from ._graph_kernel import window_sure_pairs

                # (read in place: the same decisions without the gathered blocks and a dozen torch passes)
                sr = window_sure_pairs(xin, ein, windows, rr, ww, pos, self.u)
            else:
                cols = windows[ww]
                t = pos[rr, ww, None].long()
                sr = _window_sure(xin[rr[:, None], cols], ein[rr[:, None], cols], t, self.u)
            # (_window_sure reads every -inf as padding: only columns past the first n_in are)
            sr &= ~bad[rr] if bad is not None else torch.isfinite(xin[rr, :n_in]).all(1)
            src = self.pool_src.get(node.index, (None,))[0]
            if not sr.all() and self._worth_refining(src):
                open_ = torch.nonzero(~sr).flatten()
                p64, ok = self._refine_windows(node, vals, errs, rr[open_], ww[open_])
                self._tally(src, ok)
                pos[rr[open_[ok]], ww[open_[ok]]] = p64[ok].to(pos.dtype)
                sr[open_[ok]] = True
            undecided[rr[~sr]] = True
        return m1, _Elem(emax), pos, undecided

    def run_chunked(self, x: torch.Tensor, exact_input: bool, keep: set[int]):
        """:meth:`run` on blocks of rows; returns ({pattern node index: decisions on the CPU}, undecided
        rows as a bool (B,) CPU mask).

        Blocks of about ``_CHUNK_BYTES`` per node value: a fresh tensor larger than what malloc recycles
        (glibc hands out ~32 MB and up with mmap) costs its page faults on every allocation, which for a
        conv net's wide activations took longer than the arithmetic (LeNet-5 relu on 8192 rows: 70 ms
        fresh, 9 ms into a recycled buffer; the whole certified pass 3x faster in blocks of 256 rows).
        """
        B = x.shape[0]
        step = max(16, _CHUNK_BYTES // (self.itemsize * self.widest))
        out: dict[int, torch.Tensor] = {}
        und = torch.zeros(B, dtype=torch.bool)
        # relu signs from the compiled pass go straight into the batch's arrays
        dest = {}
        if self.kernels:
            dest = {i: torch.empty((B, self.g.nodes[i].size), dtype=torch.bool) for i in self._plan(keep)[2]}
            out.update(dest)
        # (blocks run one after another on this thread, torch on one thread: handed to chunk workers made per
        # batch, one OpenMP thread each, the residual MLP, LeNet-5 and the conv row of bench_patterns all ran
        # slower on 2 threads, the residual MLP 2x: each worker's buffers were made afresh per batch. The
        # parallelism is one level up: count_patterns hands chunks of rows to a pool that lives for the whole
        # count, whose threads keep their buffers from chunk to chunk)
        with _one_thread(self.device):
            for a in range(0, B, step):
                xb = x[a : a + step].to(device=self.device, dtype=self.dtype)
                views = {i: t[a : a + step] for i, t in dest.items()}
                for i, (d, u) in self.run(xb, exact_input, keep, views).items():
                    if i not in out:
                        out[i] = torch.empty((B, *d.shape[1:]), dtype=d.dtype)
                    if i not in views or d.data_ptr() != views[i].data_ptr():
                        out[i][a : a + step] = d
                    und[a : a + step] |= u.cpu()
        return out, und

    def _buffers(self, i, shape, n: int = 2) -> tuple[torch.Tensor, ...]:
        """Two (B, n) arrays for the value and error bound node ``i`` computes on the calling thread, the same
        ones block after block (a block's values are dropped when :meth:`run` returns; only decisions
        leave it). Fresh arrays of a few MB cost more in page faults than the pass that fills them, once
        malloc hands them out with mmap (LeNet-5's relu on 8192 rows: 70 ms fresh, 9 ms recycled)."""
        bufs = self._tls.__dict__.setdefault("bufs", {})  # (released with the thread)
        hit = bufs.get(i)
        if hit is None or len(hit) < n or hit[0].shape[0] < shape[0] or hit[0].shape[1:] != tuple(shape[1:]):
            hit = tuple(torch.empty(shape, dtype=self.dtype) for _ in range(n))
            bufs[i] = hit
        return tuple(h[: shape[0]] for h in hit[:n])

    def _plan(self, keep: set[int]):
        """Per set of evaluated nodes: (pattern node indices, {node: the last node reading its value},
        pattern relus on the compiled pass, {relu node on the compiled pass: (mode, g of the convolution
        bound it prepares)}, {relu node: the window table of the convolution whose windowed bound it
        prepares (``(C, HW, windows, scale)``, :func:`_window_bound`)}), see
        :func:`._graph_kernel._relu_fused` for the modes (a relu fed by a dense Linear keeps its rank-one
        bound and its own path)."""
        key = frozenset(keep)
        hit = self._plans.get(key)
        if hit is not None:
            return hit
        g = self.g
        pattern = {n.index for n in pattern_nodes(g)}
        last_use: dict[int, int] = {}
        readers: dict[int, list[int]] = {}
        for n in g.nodes:
            if n.index in keep and n.op != "output":
                for i in n.inputs:
                    last_use[i] = n.index
                    readers.setdefault(i, []).append(n.index)
        for n in g.nodes:  # a refined relu / max-pool reads the input of the affine node before it
            if n.index in keep and n.op == "relu" and n.inputs[0] in self.refine:
                i = g.nodes[n.inputs[0]].inputs[0]
                last_use[i] = max(last_use.get(i, -1), n.index)
                deep = self._deep(n.inputs[0])
                if deep is not None:  # (and the redo through two nodes, the input of the one before)
                    last_use[deep[1]] = max(last_use.get(deep[1], -1), n.index)
            if n.index in keep and n.index in self.pool_src:
                i = g.nodes[self.pool_src[n.index][0]].inputs[0]
                last_use[i] = max(last_use.get(i, -1), n.index)
                deep = self._deep(self.pool_src[n.index][0])
                if deep is not None:
                    last_use[deep[1]] = max(last_use.get(deep[1], -1), n.index)
        modes: dict[int, tuple[int, float]] = {}
        wins: dict[int, tuple] = {}  # relu nodes in mode 3 whose convolution takes the windowed bound
        if self.kernels:
            for n in g.nodes:
                if n.index not in keep or n.op != "relu" or n.negative_slope != 0:
                    continue
                r = readers.get(n.index, [])
                if not r:
                    modes[n.index] = (0, 0.0)  # only the signs are read
                    continue
                c = g.nodes[r[0]]
                info = self.ops[c.index][0] if c.op == "affine" else {}
                if len(r) == 1 and "bound_p" in info and not self.crude:
                    modes[n.index] = (2, info["g"])
                elif len(r) == 1 and self.cs and "cs" in info:
                    # (the window norms of the convolution's bound input, :func:`_window_bound`)
                    C, HW, win, _ = info["cs"]
                    modes[n.index] = (3, info["g"])
                    wins[n.index] = (C, HW, win, _SAFETY)
                elif len(r) == 1 and "l1" in info:
                    modes[n.index] = (3, info["g"])  # (a crude engine's convolution)
                else:
                    modes[n.index] = (1, 0.0)
        hit = (pattern, last_use, [i for i in modes if i in pattern], modes, wins)
        self._plans[key] = hit
        return hit

    def run(self, x: torch.Tensor, exact_input: bool, keep: set[int], dest: dict | None = None):
        """Evaluate the nodes in ``keep``; returns {pattern node index: (decision tensor, undecided rows)}.
        ``dest``: {relu node: bool (B, size) tensor} for the compiled pass to write the signs into."""
        g = self.g
        self._norms = {}  # holds its tensors, so no data pointer is reused within the run
        vals: dict[int, torch.Tensor] = {0: x}
        # rounding the input to this precision: u |x| per entry, plus (gradual underflow) the smallest normal
        tiny = torch.finfo(self.dtype).tiny
        errs: dict[int, object] = {0: _Exact(x) if exact_input else _Elem(x.abs() * self.u + tiny)}
        out = {}
        pattern, last_use, _, modes, wins = self._plan(keep)
        dest = dest or {}
        hold: list = []
        for node in g.nodes[1:]:
            if node.index not in keep:
                continue
            ins = node.inputs
            if node.op == "affine":
                v, e = self.affine(node, vals[ins[0]], errs[ins[0]], need_err=True)
            elif node.op == "relu":
                z, ez = vals[ins[0]], errs[ins[0]]
                fused = None
                pairs: list = []  # the ambiguous (row, unit) pairs, from a compiled pass
                if isinstance(ez, _Rank1):
                    d = None
                    if self.kernels and node.negative_slope == 0:
                        # signs, relu and the per-row screen in one compiled pass, the signs into the batch's
                        # array and the relu into this node's buffer (the residual MLP's float64 pass: five
                        # torch passes and two fresh arrays per block fewer)
                        from ._graph_kernel import relu_screen

                        vbuf = self._buffers(node.index, z.shape, 1)[0]
                        bits, undecided, v = relu_screen(z, ez.screen(), dest.get(node.index), vbuf)
                        fused = (v, _Rank1(ez.E, ez.X, ez.G, ez.info, ez.scale, z))
                    else:
                        bits = z > 0
                        undecided = ez.rows_maybe_undecided(z)
                elif node.index in modes:
                    from ._graph_kernel import relu_fused

                    mode, gnext = modes[node.index]
                    cs = wins.get(node.index)
                    bufs = self._buffers(node.index, z.shape, 1 if mode == 3 else 2) if mode else None
                    if isinstance(ez, _Outer):  # the crude bound, computed entry by entry as read
                        from ._graph_kernel import relu_outer

                        d = None
                        L, A, U = ez.vectors()
                        bits, undecided, v, e_out = relu_outer(
                            z,
                            ez.t,
                            ez.risk,
                            L,
                            A,
                            U,
                            ez.s,
                            gnext,
                            mode,
                            dest.get(node.index),
                            bufs,
                            pairs,
                            cs,
                        )
                    else:
                        if isinstance(ez, _Scaled):  # read in place, scaled as read (the same rounding)
                            d, dsrc, dscale = None, ez.view(), ez.scale
                        else:
                            d = dsrc = ez.elem()
                            dscale = 1.0
                        bits, undecided, v, e_out = relu_fused(
                            z, dsrc, dscale, gnext, mode, dest.get(node.index), bufs, pairs, cs
                        )
                    if mode == 3 and cs is not None:  # e_out: (.., any output or bound nonzero, window norms)
                        fused = (v, _ReluErr(z, ez, win=(gnext, e_out[2], e_out[1])))
                    elif mode == 3:  # e_out: (per row, the largest e + gnext v; any output or bound nonzero)
                        fused = (v, _ReluErr(z, ez, peak=(gnext, e_out[0], e_out[1])))
                    elif mode == 2:
                        fused = (v, _ReluErr(z, ez, pre=(gnext, e_out)))
                    else:  # (mode 0: nothing reads the output)
                        fused = (v, _Elem(e_out) if mode == 1 else None)
                else:
                    bits = z > 0
                    d = ez.elem()
                    # (an overflowed z, inf, says nothing of the exact sign; nor does a NaN z or bound)
                    undecided = ((z.abs() <= d) | ~torch.isfinite(z) | d.isnan()).any(1)
                kernel_pairs = pairs[0] if fused is not None and pairs and pairs[0] is not None else None
                if kernel_pairs is not None and self._worth_refining(ins[0]):
                    # the compiled pass's ambiguous pairs (the test below, entry by entry): no gathers of the
                    # rows and their bounds, no torch passes to find the pairs again
                    if len(kernel_pairs[0]):
                        rr, uu = kernel_pairs
                        z64, ok = self._redo(ins[0], vals, errs, rr, uu)
                        self._tally(ins[0], ok)
                        bits[rr[ok], uu[ok]] = z64[ok] > 0
                        undecided = torch.zeros_like(undecided)
                        undecided[rr[~ok]] = True
                elif undecided.any():  # the exact per-unit test; a zero bound decides even z == 0
                    rows = torch.nonzero(undecided).flatten()
                    zr = z[rows]
                    if d is not None:
                        dr = d[rows]
                    else:
                        dr = ez.d_rows(rows) if isinstance(ez, _Rank1) else ez.elem_rows(rows)
                    # (an inf or NaN, from an overflow in this precision, decides nothing)
                    amb = ((zr.abs() <= dr) & (dr > 0)) | ~torch.isfinite(zr) | dr.isnan()
                    src = ins[0]
                    if self._worth_refining(src):  # the undecided (row, unit) pairs once more, in float64
                        rr, uu = torch.nonzero(amb, as_tuple=True)
                        z64, ok = self._redo(src, vals, errs, rows[rr], uu)
                        self._tally(src, ok)
                        bits[rows[rr[ok]], uu[ok]] = z64[ok] > 0
                        amb[rr[ok], uu[ok]] = False
                    undecided[rows] = amb.any(1)
                slope = node.negative_slope
                scale = max(1.0, abs(slope))
                # a certainly negative input gives an exact 0 after a ReLU
                if fused is not None:
                    v, e = fused
                elif isinstance(ez, _Rank1):
                    v = torch.relu(z) if slope == 0 else F.leaky_relu(z, slope)
                    e = _Rank1(ez.E, ez.X, ez.G, ez.info, ez.scale * scale, z if slope == 0 else None)
                else:
                    v = torch.relu(z) if slope == 0 else F.leaky_relu(z, slope)
                    e = _Elem(_drop_negative(z, d) if slope == 0 else d * scale)
                if node.index in pattern:
                    out[node.index] = (bits, undecided)
            elif node.op == "maxpool":
                v, e, pos, undecided = self.maxpool(node, vals, errs)
                if node.index in pattern:
                    out[node.index] = (pos, undecided)
            elif node.op == "add":
                a, b = (vals[i] for i in ins)
                # (into this node's buffer on the CPU: a fresh 4 MB array per block costs its page faults)
                v = torch.add(a, b, out=self._buffers(node.index, a.shape, 1)[0]) if self.kernels else a + b
                e = _Sum([errs[ins[0]], errs[ins[1]]], v, self.u, self.vnorm)
            elif node.op == "cat":
                v = torch.cat([vals[i] for i in ins], 1)
                e = _Cat([errs[i] for i in ins])
            else:  # output: nothing after the last pattern node is needed
                continue
            vals[node.index], errs[node.index] = v, e
            for i in ins:  # drop what no later node reads (held until the next block is done, below)
                if last_use.get(i) == node.index:
                    hold.append((vals.pop(i, None), errs.pop(i, None)))
        # this block's values are released only after the next block on this thread has made its own: the
        # freed memory then lies below live tensors, so malloc reuses it instead of returning it to the
        # system at the end of each block and faulting it in again (4-8 MB convolution outputs: most of a
        # block's time in a process where no larger array has been freed yet)
        hold.append((vals, errs))
        self._tls.hold = hold
        return out


def _window_table(op):
    """``(C, H W, windows)`` of a ``Conv2d`` op with ``groups == 1`` (no ``"same"``-style string padding):
    per output position (row-major, ``H_out W_out`` of them), the input positions ``h W + w`` of one channel
    its filter reads, ``-1`` for padding; ``None`` for other ops. Read off ``unfold`` of the positions
    (every stride, padding and dilation as the convolution's own), checked against the output shape."""
    m = op.module
    if (
        op.type_name != "Conv2d"
        or m is None
        or m.groups != 1
        or isinstance(m.padding, str)
        or len(op.in_shape) != 3
        or len(op.out_shape) != 3
        or set(op.params) - {"weight", "bias"}
    ):
        return None
    C, H, W = op.in_shape
    ids = torch.arange(1, H * W + 1, dtype=torch.float64).reshape(1, 1, H, W)
    win = F.unfold(ids, m.kernel_size, m.dilation, m.padding, m.stride)[0].T.round().long() - 1
    if win.shape[0] != op.out_shape[1] * op.out_shape[2] or op.params["weight"].shape[1] != C:
        return None
    return C, H * W, win.contiguous()


def _strided_slots(g: PLGraph, node: PLNode):
    """For a 2-D max-pool whose windows are a regular grid inside the input (no padding): ``((C, H, W), [(row,
    column) offset of slot j], (stride_h, stride_w), (H_out, W_out))``, so that slot ``j`` of every window is
    ``x[:, :, r_j::s_h, c_j::s_w][:, :, :H_out, :W_out]`` (a view: the gather costs ~10x more). ``None`` for
    other windows. The grid is read off the first windows and checked against all of them."""
    src = g.nodes[node.inputs[0]]
    win = node.windows
    if len(src.shape) != 3 or len(node.shape) != 3 or bool((win < 0).any()) or win.shape[0] == 0:
        return None
    C, H, W = src.shape
    Ho, Wo = node.shape[1:]
    k = win.shape[1]
    first = win[0].tolist()
    offs = [(p // W, p % W) for p in first]
    sh = (int(win[Wo, 0]) - first[0]) // W if Ho > 1 else 1
    sw = int(win[1, 0]) - first[0] if Wo > 1 else 1
    if first[0] != 0 or sh < 1 or sw < 1:
        return None
    oh = torch.arange(Ho).reshape(1, Ho, 1, 1) * sh
    ow = torch.arange(Wo).reshape(1, 1, Wo, 1) * sw
    r = torch.tensor([o[0] for o in offs]).reshape(1, 1, 1, k)
    c = torch.tensor([o[1] for o in offs]).reshape(1, 1, 1, k)
    ch = torch.arange(C).reshape(C, 1, 1, 1) * (H * W)
    rows, cols = oh + r, ow + c
    if bool((rows >= H).any()) or bool((cols >= W).any()):
        return None
    grid = (ch + rows * W + cols).reshape(-1, k)
    if grid.shape != win.shape or not torch.equal(grid, win.cpu()):
        return None
    return (C, H, W), offs, (sh, sw), (Ho, Wo)


def _window_sure(V: torch.Tensor, E: torch.Tensor, t: torch.Tensor, u: float) -> torch.Tensor:
    """Whether position ``t`` (the first maximal computed entry, ``(..., 1)``) of each window is certainly the
    first maximal exact entry, from computed entries ``V`` within ``E`` of the exact ones (``(..., k)``;
    padding reads ``-inf`` with error 0). Needs ``lo = V_t - E_t`` above ``hi = V_i + E_i`` for the entries
    before ``t`` and at least ``hi`` after it (a tie goes to the first). ``lo`` and ``hi`` are computed in
    floating point, so an inexact entry's margin is widened by ``4u (|V| + E)`` plus the smallest normal
    number, which covers the rounding of ``V -+ margin`` (``u |.|``) and of the margin itself; exact entries
    (``E == 0``) compare exactly, so windows of exact values are decided by them (ties included).
    """
    tiny = torch.finfo(V.dtype).tiny
    marg = torch.where(E == 0, E, E + (V.abs() + E) * (4 * u) + tiny)
    marg = marg.masked_fill(V == -math.inf, 0.0)
    lo = torch.gather(V, -1, t) - torch.gather(marg, -1, t)
    hi = V + marg
    idx = torch.arange(V.shape[-1], device=V.device)
    ok = torch.where(idx < t, hi < lo, hi <= lo) | (idx == t)
    return ok.all(-1)


def exact_step(node: PLNode, vals: dict[int, list]) -> tuple[list, list | None]:
    """A relu, max-pool, add, cat or output node in exact rational arithmetic on its inputs' values
    ``vals``: ``(its values, its pattern decisions)`` (ReLU signs, each window's first maximal position;
    ``None`` for nodes that carry no pattern)."""
    ins = node.inputs
    if node.op == "relu":
        z = vals[ins[0]]
        slope = Fraction(float(node.negative_slope))
        return [a if a > 0 else a * slope for a in z], [a > 0 for a in z]
    if node.op == "maxpool":
        xin = vals[ins[0]]
        v, pos = [], []
        for row in node.windows.tolist():
            best, bp = None, 0
            for p, j in enumerate(row):
                if j >= 0 and (best is None or xin[j] > best):
                    best, bp = xin[j], p
            v.append(best)
            pos.append(bp)
        return v, pos
    if node.op == "add":
        return [sum(t, Fraction(0)) for t in zip(*(vals[i] for i in ins))], None
    if node.op == "cat":
        return [a for i in ins for a in vals[i]], None
    return vals[ins[0]], None  # output


def _exact_patterns(g: PLGraph, x: torch.Tensor, keep: set[int]) -> dict[int, list]:
    """Pattern decisions of one input in exact rational arithmetic on the float64 affine maps."""
    vals: dict[int, list[Fraction]] = {0: [Fraction(float(a)) for a in x.reshape(-1).tolist()]}
    out = {}
    for node in g.nodes[1:]:
        if node.index not in keep or node.op == "output":
            continue
        ins = node.inputs
        if node.op == "affine":
            # the matrix's nonzeros (a convolution's dense matrix is mostly zeros); the sums are exact, so
            # their order does not matter
            S = node.sparse_matrix()
            ind, val, ptr = S.indices.tolist(), S.data.tolist(), S.indptr.tolist()
            b = node.bias_vector.tolist()
            xin = vals[ins[0]]
            v = []
            for r, bi in enumerate(b):
                s = Fraction(bi)
                for k in range(ptr[r], ptr[r + 1]):
                    a = xin[ind[k]]
                    if a != 0:
                        s += Fraction(val[k]) * a
                v.append(s)
        else:
            v, dec = exact_step(node, vals)
            if dec is not None:
                out[node.index] = dec
        vals[node.index] = v
    return out


def graph_patterns(
    g: PLGraph, x: torch.Tensor, *, device="cpu", dtype: torch.dtype = torch.float32, _engines=None
) -> tuple[dict[int, torch.Tensor], dict[str, int]]:
    """Exact pattern decisions of a batch ``x`` (flat ``(B, n_in)``, any float dtype) through ``g``.

    Returns ``({node index: bool (B, size) signs for a relu / integer (B, size) argmax positions for a
    max-pool (uint8 from the compiled pass of windows on a regular grid, else long)}, {"float64": rows
    redone in float64, "exact": rows decided in rational arithmetic})``, on the CPU.
    ``dtype=torch.float64`` skips the float32 pass.
    """
    pnodes = pattern_nodes(g)
    keep: set[int] = set()
    stack = [n.index for n in pnodes]
    while stack:
        i = stack.pop()
        if i not in keep:
            keep.add(i)
            stack.extend(g.nodes[i].inputs)
    engines = _engines if _engines is not None else {}

    dev64 = "cpu" if torch.device(device).type == "mps" else device  # MPS has no float64

    def engine(dt, crude=False):
        key = (dt, "crude") if crude else dt
        if key not in engines:
            engines[key] = _Engine(g, dt, dev64 if dt == torch.float64 else device, crude=crude)
        return engines[key]

    def run64(xr):
        """The float64 pass: first with the crude bounds of convolutions (:meth:`_Engine.affine`), which skip
        their second convolution; the rows that leaves undecided again with the full bounds. Crude bounds
        stop being tried once they leave more than a tenth of the rows undecided (a deep network, where
        ||W||_1 max |e| outgrows the margins)."""
        tried, failed = engines.get("crude_tally", (0, 0))
        if tried >= 1024 and failed > 0.1 * tried:
            return engine(torch.float64).run_chunked(xr, True, keep)
        if not has_crude:
            # nothing to bound crudely (a residual MLP): the crude engine would be the same engine
            return engine(torch.float64).run_chunked(xr, True, keep)
        e_crude = engine(torch.float64, crude=True)
        res, und = e_crude.run_chunked(xr, True, keep)
        engines["crude_tally"] = (tried + xr.shape[0], failed + int(und.sum()))
        rr = torch.nonzero(und).flatten()
        if len(rr):  # (the full float64 engine made only when needed)
            res2, und2 = engine(torch.float64).run_chunked(xr[rr.to(xr.device)], True, keep)
            for i, d in res2.items():  # (positions as uint8 or long, per pass: see the docstring)
                res[i][rr] = d.to(res[i].dtype)
            und[rr] = und2
        return res, und

    def run32(xr):
        """The float32 pass, with the windowed / crude bounds of convolutions (no second convolution, no
        stacked first one) when its first rows show them tight enough: the rows they leave undecided after
        the unit redo (through two nodes where it applies) are few on conv 1-8-16 and conv 3-32-64 (none on
        the bench's rows), which then run ~1.5x and ~2x faster; where they leave more (LeNet-5, whose
        max-pools stop the two-level redo), the full bounds are used. Decided once per set of engines on up
        to ``_CRUDE_TRIAL`` rows (the count's trial, on its calling thread: the chunk workers then read a
        settled choice)."""
        use = engines.get("crude32")
        if not has_crude or use is False:
            return engine(dtype).run_chunked(xr, exact_in, keep)
        crude = engine(dtype, crude=True)
        if use:
            return crude.run_chunked(xr, exact_in, keep)
        n0 = min(xr.shape[0], _CRUDE_TRIAL)
        res, und = crude.run_chunked(xr[:n0], exact_in, keep)
        use = engines["crude32"] = int(und.sum()) <= _CRUDE_MAX * n0
        full = engine(dtype) if not use else None  # (the full engine made only when needed)
        if full is not None:  # the trial's rows again with the full bounds: what they leave decides
            res, und = full.run_chunked(xr[:n0], exact_in, keep)  # (float32 or 64 for the count)
        if n0 == xr.shape[0]:
            return res, und
        res2, und2 = (full or crude).run_chunked(xr[n0:], exact_in, keep)
        return {i: torch.cat([d, res2[i]]) for i, d in res.items()}, torch.cat([und, und2])

    # affine ops the crude bounds apply to (convolutions, ...; not a dense Linear's rank-one bound)
    has_crude = any(not _rank1_op(op) for n in g.nodes if n.op == "affine" for op in n._ops)
    stats = {"float64": 0, "exact": 0}
    if not pnodes:
        return {}, stats
    exact_in = x.dtype in (torch.float16, torch.bfloat16, torch.float32) or not x.is_floating_point()
    with torch.no_grad(), _one_thread(device):
        # (the engine a float32 pass starts with, for the check: crude and full ones read the same weights)
        if (
            dtype != torch.float64
            and not engine(dtype, crude=has_crude and engines.get("crude32") is not False).fits
        ):
            dtype = torch.float64
            stats["float64"] = x.shape[0]
        if dtype == torch.float64:
            out, und = run64(x)
        else:
            out, und = run32(x)
        rows = torch.nonzero(und).flatten()
        if len(rows) and dtype != torch.float64:
            stats["float64"] = len(rows)
            res64, und64 = run64(x[rows.to(x.device)])
            for i, d in res64.items():
                out[i][rows] = d.to(out[i].dtype)
            rows = rows[und64]
        if len(rows):
            stats["exact"] = len(rows)
            x64 = x.to(torch.float64).cpu()
            for r in rows.tolist():
                ex = _exact_patterns(g, x64[r], keep)
                for i, dec in ex.items():
                    out[i][r] = torch.tensor(dec, dtype=out[i].dtype)
    return out, stats


# ------------------------------------------------------------------------ the per-unit fast path (MLPs)
class _ChainPlan:
    """A chain of dense ``Linear`` layers, each followed by a (leaky) ReLU or nothing, prepared for the
    per-(row, unit) certified evaluation of :func:`chain_patterns`.

    Per layer: the float64 and float32 parameters, the row 2-norms ``r`` of ``W`` (Cauchy-Schwarz bounds),
    ``|b|``, and ``gamma_{K+2}`` for both precisions (``K`` the most nonzero weights of a row).
    """

    def __init__(self, g: PLGraph, device):
        self.layers = []
        self.device = torch.device(device)
        self._bufs: dict = {}
        self._int8: dict = {}
        self._int8_exact = None
        nodes = g.nodes[1:]
        i = 0
        while i < len(nodes) and nodes[i].op != "output":
            node = nodes[i]
            ops = node._ops if node.op == "affine" else []
            if len(ops) != 1 or ops[0].type_name != "Linear" or len(ops[0].in_shape) != 1:
                raise _NotFast(node)
            relu = nodes[i + 1] if i + 1 < len(nodes) and nodes[i + 1].op == "relu" else None
            W = ops[0].params["weight"]
            b = ops[0].params.get("bias", torch.zeros(W.shape[0], dtype=W.dtype))
            K = int((W != 0).sum(1).max()) if W.numel() else 0
            u32, u64 = 2.0**-24, 2.0**-53
            r = _scaled_norms(W) * (1 + 4 * u64)  # (vector_norm squares: W ~1e180 gave r = inf)
            layer = {
                "W64": W.to(self.device),
                "b64": b.to(self.device),
                "W32": W.to(device=self.device, dtype=torch.float32),
                "b32": b.to(device=self.device, dtype=torch.float32),
                "r": r.to(self.device),
                "c": b.abs().to(self.device),
                "rc2": torch.stack([r * r, b * b], 1).to(self.device),
                "r_max": float(r.max()) * _SAFETY if r.numel() else 0.0,
                "c_max": float(b.abs().max()) * _SAFETY if b.numel() else 0.0,
                "rn": float(_scaled_norms(r[None])[0]) * _SAFETY,
                "cn": float(_scaled_norms(b[None])[0]) * _SAFETY,
                "g32": _gamma(K, u32) * _SAFETY,
                "g64": _gamma(K, u64) * _SAFETY,
                "relu": relu,
                "macs": max(1, W.numel()),  # dense products, pruned or not
                "K": K,
                "has_bias": bool((b != 0).any()),
                "sqrt_n": math.sqrt(W.shape[0]),
            }
            layer["fits32"] = _fits_float32(W, layer["r_max"], layer["c_max"])
            self.layers.append(layer)
            i += 2 if relu is not None else 1
            if relu is not None and i < len(nodes) and nodes[i].op == "relu":
                raise _NotFast(nodes[i])
        last = max((k for k, lay in enumerate(self.layers) if lay["relu"] is not None), default=-1)
        self.layers = self.layers[: last + 1]  # nothing after the last relu changes the pattern

    def cast(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``x.to(dtype)`` into a buffer kept from batch to batch: a fresh float64 copy of a batch of wide
        inputs is larger than what malloc recycles, and its page faults cost as much as the copy itself
        (8192 x 784: 53 ms against 2.4 ms for the copy into a kept buffer, one thread)."""
        if x.dtype == dtype:
            return x
        # one set of buffers per thread: count_patterns hands chunks to worker threads
        bufs = self._bufs.setdefault(threading.get_ident(), {})
        key = (tuple(x.shape), dtype, x.device)
        buf = bufs.get(key)
        if buf is None:
            if len(bufs) > 2:
                bufs.clear()
            buf = bufs[key] = torch.empty(x.shape, dtype=dtype, device=x.device)
        return buf.copy_(x)

    def int8_layer(self, levels: int):
        """The first layer as an :class:`~netgeom.nets._int8.Int8Layer` of ``levels`` slices (built once),
        or ``None`` where that path does not apply (not on the CPU, no exact int8 products on this machine,
        a fan-in or weights out of its range)."""
        if levels not in self._int8:
            from ._int8 import Int8Layer, int8_products_exact

            if self._int8_exact is None:  # (checked once per plan, not once per level count)
                self._int8_exact = self.device.type == "cpu" and bool(self.layers) and int8_products_exact()
            lay = None
            if self._int8_exact:
                try:
                    # fewer than 4 diagonals: 4 slices cut, the rest computed for the rows that need them
                    lay = Int8Layer(self.layers[0]["W64"], self.layers[0]["b64"], max(levels, 4), levels)
                except ValueError:
                    lay = None
            self._int8[levels] = lay
        return self._int8[levels]

    def cost(self, m: int, redo: float, int8: int = 0, refined: float = 0.0) -> float:
        """Relative cost (float32 multiply-adds) of ``m`` leading float64 layers, the first one from
        ``int8`` levels of int8 products when nonzero, when a fraction ``redo`` of rows is redone and a
        fraction ``refined`` gets the remaining anti-diagonals of a progressive int8 layer."""
        macs = [lay["macs"] for lay in self.layers]
        first = 2 * macs[0] if m else 0
        if m and int8:
            # measured on AVX-512 VNNI: an int8 product runs ~9x a float32 one; the splitting and the
            # float64 recombination cost about a fifth of a float32 product more; a refined row pays the
            # remaining products, the gathers and its second layer's undecided units again. Measured on
            # 784-400-400-10 with 41-47% of the rows refined: the same CPU time as 4 levels on one thread,
            # 6% more on two; with 5-8% refined (784-100-100-10) fewer products win clearly. The constant
            # makes the progressive layer the choice below ~30% refined rows.
            rest = (10 - int8 * (int8 + 1) / 2) / 9 + 1.0
            first = macs[0] * (int8 * (int8 + 1) / 2 / 9 + 0.25 + refined * rest)
        return first + sum(2 * c for c in macs[1:m]) + sum(macs[m:]) + redo * sum(2 * c for c in macs)


class _NotFast(Exception):
    def __init__(self, node):
        self.node = node


def chain_plan(g: PLGraph, device) -> _ChainPlan | None:
    """The per-unit plan of a chain of dense Linear layers, or ``None`` when ``g`` is not one."""
    if not g.is_chain:
        return None
    try:
        return _ChainPlan(g, device)
    except _NotFast:
        return None


def _scaled_norms(h: torch.Tensor) -> torch.Tensor:
    """Row 2-norms of ``h`` at any scale, as upper bounds up to ``vector_norm``'s own rounding (relative
    ~``n u``, which the callers' ``_SAFETY`` covers as for any other norm).

    ``vector_norm`` squares the entries: a row beyond ~1e154 (float64; ~1e19 in float32) comes out ``inf``
    and a row below ~1e-154 loses its squares to underflow (an underestimate, 0 for ``~1e-180``). Here each
    row is first multiplied by ``2^-k`` (``2^(k-1) <= max |h_i| < 2^k``, as two factors that stay in range),
    so its largest entry is in [0.5, 1) and nothing overflows; squares below the smallest normal number
    ``tiny`` then lose at most ``tiny`` each, ``sqrt(n) tiny`` in norm against a norm of at least 0.5.
    Scaling down may round an entry to a subnormal number (by at most ``tiny`` per factor in the scaled
    units): ``2 sqrt(n) tiny`` more. Scaling back is exact for a normal result and loses less than ``tiny``
    for a subnormal one (added); ``(1 + 8 eps)`` covers the rounding of the scale factors themselves, were
    ``exp2`` not exact. A zero row keeps the norm 0 (callers read ``> 0`` as "something to round")."""
    fi = torch.finfo(h.dtype)
    n = h.shape[1]
    m = h.abs().amax(1) if n else h.new_zeros(h.shape[0])
    k = torch.frexp(m).exponent.to(h.dtype)
    k1 = torch.floor(k / 2)
    k2 = k - k1
    s = h * torch.exp2(-k1)[:, None] * torch.exp2(-k2)[:, None]
    ns = torch.linalg.vector_norm(s, dim=1) + 3 * math.sqrt(n) * fi.tiny
    out = ns * torch.exp2(k1) * torch.exp2(k2) * (1 + 8 * fi.eps) + fi.tiny
    return torch.where(m > 0, out, torch.zeros_like(out))


def _safe_norm(h: torch.Tensor) -> torch.Tensor:
    """Row 2-norms that neither underflow to an underestimate nor overflow: rows whose ``vector_norm`` is
    below ``1e-140`` (float64; ``1e-15`` in float32), where squares of their entries may have underflowed,
    or not finite (a square overflowed) are recomputed by :func:`_scaled_norms`. (``sqrt(n) max |h_i|``
    also bounds the first kind, but up to ``sqrt(n)`` times too loosely: a ~1e-180 input to a 784-wide
    layer then left 28x wider bounds.)"""
    n = torch.linalg.vector_norm(h, dim=1)
    ok = (n >= (1e-140 if h.dtype == torch.float64 else 1e-15)) & (n < math.inf)
    if not bool(ok.all()):
        rows = torch.nonzero(~ok).flatten()
        hr = h[rows].cpu() if h.device.type == "mps" else h[rows]  # (frexp on MPS: not relied upon)
        n[rows] = _scaled_norms(hr).to(n.device)
    return n


def _fits_float32(W: torch.Tensor, r_max: float, c_max: float) -> bool:
    """Whether a layer's float32 pass is certified by its bounds: every nonzero weight must be a normal
    float32 number, since the bounds charge the cast of a weight ``u32 |w|`` (relative) and a weight below
    float32's smallest normal number loses up to ``2^-150`` absolutely, times an input up to ``~1e38``
    (weights ~2^-148 against inputs ~2^60 had every bound far below the error, and a wrong sign came out);
    and the row norms and biases stay below ``2^60``, so the weights, ``r^2`` and ``c^2`` are finite in
    float32 (a cast to ``inf`` has no bound). A layer outside this range runs in float64."""
    return _casts_relative({"weight": W}, torch.float32) and r_max < 2.0**60 and c_max < 2.0**60


def _to_float32_bounds(e: torch.Tensor, hn64: torch.Tensor, width: int):
    """``(error, norm)`` bounds of the float32 copy of a float64 layer output ``h`` with error norm ``e`` and
    ``||h|| <= hn64``: the cast rounds each entry by u32 (and, under gradual underflow, by up to the smallest
    normal number), and ``||fl32(h)|| <= (1 + u32) ||h||``."""
    u32, tiny32 = 2.0**-24, torch.finfo(torch.float32).tiny
    under = (hn64 > 0) * (math.sqrt(width) * tiny32)
    e32 = ((e + hn64 * u32 + under) * _SAFETY).to(torch.float32)
    return e32, (hn64 * ((1 + u32) * _SAFETY)).to(torch.float32)


def _unit_check(lay: dict, units: torch.Tensor, H: torch.Tensor, which: torch.Tensor, ein: torch.Tensor):
    """Float64 dot products ``z_k = W_{units_k} . H_{which_k} + b`` for (row, unit) pairs, and whether each
    is decided: ``|z| > bound`` with ``bound = ein ||W_j|| + gamma (||W_j|| ||h|| + |b_j|)`` (plus the
    underflow allowance). ``H`` holds the distinct input rows (float64), ``ein`` bounds their error norms."""
    if H.device.type == "cpu":
        from ._chain_kernel import pair_dots

        z64 = pair_dots(lay["W64"], lay["b64"], H, which, units)
    else:
        z64 = (lay["W64"][units] * H[which]).sum(1) + lay["b64"][units]
    hn64 = _safe_norm(H)[which]
    r64 = lay["r"][units]
    b64 = (ein[which] * r64 + lay["g64"] * (r64 * hn64 + lay["c"][units])) * (_SAFETY * _SAFETY)
    live = ((hn64 > 0) | lay["has_bias"]).to(torch.float64)
    b64 += live * ((lay["K"] + 2) * torch.finfo(torch.float64).tiny)
    return z64, ((z64.abs() > b64) | (b64 == 0)) & torch.isfinite(z64)


def _unit_check_int8(lay: dict, units, H, Z, which, alpha, beta, i8, slope: float):
    """:func:`_unit_check` for the layer after an int8 first layer: ``(z64, decided)`` by
    :func:`_int8_pair_bound`'s bounds."""
    z64, bound = _int8_pair_bound(lay, units, H, Z, which, alpha, beta, i8, slope)
    return z64, (z64.abs() > bound) & torch.isfinite(z64)


def _int8_pair_bound(lay: dict, units, H, Z, which, alpha, beta, i8, slope: float):
    """Float64 values and error bounds ``(z64, bound)`` of (row, unit) pairs of the layer after an int8
    first layer (CPU), with that layer's error carried
    entry by entry instead of through norms: ``H`` (float64 rows) is within ``lip (alpha_r p_i + beta_r q_i
    + 2^-51 |Z_ri|)`` of the exact activation per entry (:meth:`~netgeom.nets._int8.Int8Layer.activate`,
    ``lip = max(1, |slope|)``), and exactly 0 where a ReLU's input ``Z_ri`` is certainly negative, so

        ``|z64_j - exact_j| <= lip sum_i |W_ji| err_ri + gamma (sum_i |W_ji H_ri| + |b_j|)``,

    each sum at most Cauchy-Schwarz's ``ein ||W_j||`` and ``||W_j|| ||h||`` of :func:`_unit_check`, and well
    below them when half the inputs are dead ReLUs (784-400-400-10 at three int8 diagonals: rows needing
    the fourth fell from 49% to 25% on uniform inputs, from 60% to 34% on MNIST; rows redone in float64 at
    four diagonals from 0.6% to 0.2%). Every sum is of non-negative float64 terms (within ``gamma_K`` of the
    exact one in any order, covered by ``_SAFETY``); each of the ``3 K`` products, error terms and sum terms
    may lose up to the smallest normal number to underflow (added)."""
    from ._chain_kernel import pair_dots_entrywise

    z64, s_abs, s_err = pair_dots_entrywise(
        lay["W64"], lay["b64"], H, Z, which, units, alpha, beta, i8.p, i8.q, slope == 0
    )
    lip = max(1.0, abs(slope))
    bound = (s_err * lip + lay["g64"] * (s_abs + lay["c"][units])) * (_SAFETY * _SAFETY)
    bound += (3 * lay["K"] + 4) * torch.finfo(torch.float64).tiny
    return z64, bound


def chain_patterns(plan: _ChainPlan, x: torch.Tensor, m: int, int8: int = 0, stats: dict | None = None):
    """Certified relu signs of a batch through a :class:`_ChainPlan`, deciding per (row, unit).

    The first ``m`` layers run in float64, the rest in float32. After each matrix product a unit is decided
    when ``|z^| > bound`` with ``bound = ||W_j|| e + gamma (||W_j|| ||h^|| + |b_j|)`` (``e`` a bound on
    ``||h^ - h||_2``, the error of the computed layer input). A one-pass screen per row (``min |z^|``
    against the largest bound of the row) leaves the exact per-unit test to few rows. Undecided (row, unit)
    pairs get a gathered float64 dot product; when the layer input is float64-accurate that decides all but
    pre-activations within ~1e-13 of zero, which go to exact arithmetic. When the input is a float32 value
    whose propagated error is too wide, the row is redone in float64 by the caller.

    With ``int8 = L > 0`` (and ``m >= 1``) the first layer's float64-accurate values come from
    ``L (L + 1) / 2`` exact int8 products instead of a float64 one (:class:`netgeom.nets._int8.Int8Layer`:
    about the cost of a float32 product, error ``~2^{-7L}`` relative, certified by a rank-two bound). For
    ``L < 4`` the rows whose second layer that error leaves undecided get the 4-slice value (the remaining
    anti-diagonals, for those rows only) before anything is redone; ``stats["refined"]`` counts them.

    Returns ``({relu node index: bool (B, n)}, redo64 rows, exact rows, rows with a float64 dot product)``,
    the rows as bool ``(B,)`` masks.
    """
    u32 = 2.0**-24
    dev = plan.device
    B = x.shape[0]
    exact_in = x.dtype in (torch.float16, torch.bfloat16, torch.float32) or not x.is_floating_point()
    x = x.to(dev)
    src, src_e = x, torch.zeros(B, dtype=torch.float64, device=dev)  # float64-accurate input, its error
    i8 = plan.int8_layer(int8) if int8 and m > 0 else None
    i8b = None  # a progressive int8 layer's batch (the rows it refines, on demand)
    # the int8 first layer reads x as it is: no float64 copy of the batch
    h = x if i8 is not None else plan.cast(x, torch.float64 if m > 0 else torch.float32)
    tiny32 = torch.finfo(torch.float32).tiny
    if m > 0 or exact_in:  # the input is exact in the working precision
        e = torch.zeros(B, dtype=h.dtype, device=dev)
    else:
        # rounding to float32: u32 |x| per entry, plus (gradual underflow) at most the smallest normal
        xn = _safe_norm(x.to(torch.float64))
        e = ((xn * u32 + (xn > 0) * (math.sqrt(x.shape[1]) * tiny32)) * _SAFETY).to(torch.float32)
    out = {}
    redo = torch.zeros(B, dtype=torch.bool, device=dev)
    exact = torch.zeros(B, dtype=torch.bool, device=dev)
    fixed = torch.zeros(B, dtype=torch.bool, device=dev)
    last = len(plan.layers) - 1
    hn_next = None
    for l_idx, lay in enumerate(plan.layers):
        if l_idx >= m and not lay["fits32"]:
            # parameters float32 cannot carry with a certified bound (:func:`_fits_float32`): every row is
            # redone in float64 by the caller (so choose_prefix prefers a float64 prefix past this layer)
            redo[:] = True
            for rest in plan.layers[l_idx:]:
                if rest["relu"] is not None:
                    out[rest["relu"].index] = torch.zeros((B, len(rest["b64"])), dtype=torch.bool, device=dev)
            break
        in64 = l_idx <= m  # the layer input is a float64-accurate value (src, src_e)
        if l_idx < m:
            W, b, gam = lay["W64"], lay["b64"], lay["g64"]
        else:
            hn, hn_next = hn_next, None  # (an int8 first layer hands over its output's norm)
            if h.dtype == torch.float64:  # leaving the float64 prefix
                e, hn = _to_float32_bounds(e, _safe_norm(h), h.shape[1])
                h = h.to(torch.float32)
            W, b, gam = lay["W32"], lay["b32"], lay["g32"]
        if l_idx == 0 and i8 is not None:
            # |z_j - exact_j| <= alpha p_j + beta q_j + 2^-52 |z_j|: decided when |z_j| (1 - 2^-51) exceeds
            # the rest (which is 0 only for an exactly computed value, then even z == 0 decides)
            slope0 = lay["relu"].negative_slope if lay["relu"] is not None else 1.0
            h32, bits, (rows, units), rows64, norms, alpha, beta, in_range, i8b = i8.activate(x, slope0)
            h64n, zn, pn_live, qn_live = norms
            rows, units = rows.to(dev), units.to(dev)
            cand = rows
            if not bool(in_range.all()):  # inputs beyond 2^+-400: the float64 path decides those rows
                redo[~in_range] = True
        else:
            if l_idx < m or hn is None:
                hn = _safe_norm(h) * _SAFETY
            z = linear32(h, W, b)
            A = (e + gam * hn) * _SAFETY  # per row: bound_j = A r_j + G c_j + T
            G = gam * _SAFETY
            # underflow: each of the K products and the bias cast may lose up to the smallest normal number
            # (absolute, outside the standard model); nothing is lost when every term is exactly zero
            # (in z's dtype: a bool tensor times a Python float is float32, where a float64 tiny is 0)
            T = ((hn > 0) | lay["has_bias"]).to(z.dtype) * ((lay["K"] + 2) * torch.finfo(z.dtype).tiny)
            bmax = A * lay["r_max"] + G * lay["c_max"] + T
            # overflow (or a row too large to bound): such rows go to float64 / exact arithmetic as a whole
            huge = ~(hn * lay["r_max"] + lay["c_max"] < torch.finfo(z.dtype).max / 8)
            if bool(huge.any()):
                (exact if l_idx < m else redo)[huge] = True
            if z.device.type == "cpu":  # signs and the undecided (row, unit) pairs in compiled passes
                from ._chain_kernel import decide_rows

                bits, (rows, units) = decide_rows(z, A, G, T, lay["r"].numpy(), lay["c"].numpy())
                cand = rows
            else:
                bits = z > 0
                cand = torch.nonzero(z.abs().amin(1) <= bmax).flatten()
                if len(cand):  # the exact per-unit test on the rows the screen could not clear
                    zc = z[cand]
                    cg = lay["c"].to(z.dtype) * G
                    bound = torch.addr(cg, A[cand], lay["r"].to(z.dtype)) + T[cand, None]
                    # a zero bound means an exact value: its sign decides even z == 0
                    rr, units = torch.nonzero((zc.abs() <= bound) & (bound > 0), as_tuple=True)
                    rows = cand[rr]
        if len(cand) and len(rows):
            fixed[rows] = True
            ur, inv = torch.unique(rows, return_inverse=True)
            if l_idx == 1 and i8 is not None:  # (then in64: the rows are the int8 layer's float64 output)
                z1, H = rows64.both(ur)
                z64, ok = _unit_check_int8(lay, units, H, z1, inv, alpha[ur], beta[ur], i8, slope0)
            else:
                H = (src if in64 else h)[ur].to(device=dev, dtype=torch.float64)
                ein = src_e[ur] if in64 else e[ur].to(torch.float64)
                z64, ok = _unit_check(lay, units, H, inv, ein)
            bits[rows[ok], units[ok]] = z64[ok] > 0
            bad = rows[~ok]
            if len(bad) and l_idx == 1 and in64 and i8b is not None:
                # progressive int8: the first layer's coarser bound (its first anti-diagonals) left these
                # units undecided; their rows get the first layer from every anti-diagonal, and a second try
                # (rows out of the int8 range are redone whole anyway)
                bu = units[~ok]
                sure = in_range.to(dev)[bad]
                bad, bu = bad[sure], bu[sure]
                ub, inv = torch.unique(bad, return_inverse=True)
                if stats is not None:
                    stats["refined"] = stats.get("refined", 0) + len(ub)
                z4, h4, a4, b4 = i8b.rows(ub.cpu())
                z64, ok = _unit_check_int8(lay, bu, h4, z4, inv, a4, b4, i8, slope0)
                bits[bad[ok], bu[ok]] = z64[ok] > 0
                bad = bad[~ok]
            if len(bad):
                # the input's error is float64's only when float64 products made it; an int8 first layer's
                # (~2^-7L) can leave a unit undecided that a whole-row float64 redo decides
                coarse = i8 is not None and l_idx >= 1
                (exact if in64 and not coarse else redo)[bad] = True
        relu = lay["relu"]
        if relu is not None:
            out[relu.index] = bits
        if l_idx == last:
            break
        # the error of this layer's output: the activation is max(1, |slope|)-Lipschitz, and a ReLU of a
        # certainly negative input is exactly 0, so those units drop out of the norm:
        # ||(A r + G c) * live|| <= A ||r * live|| + G ||c * live||
        slope = relu.negative_slope if relu is not None else 1.0
        if l_idx == 0 and i8 is not None:
            # ||alpha p + beta q + 2^-51 |z| || <= alpha ||p|| + beta ||q|| + 2^-51 ||z||, times the Lipschitz
            # constant of the activation
            lip = max(1.0, abs(slope))
            # (p and q over the live units only: a ReLU's certainly negative inputs are exact zeros)
            e = (alpha * pn_live + beta * qn_live + 2.0**-51 * zn) * (lip * _SAFETY * _SAFETY)
            if m > 1:  # the next layer runs float64 products too
                h = rows64[torch.arange(B)].to(dev)
            else:  # leaving the float64-accurate first layer through its float32 copy (the second layer's
                # unit checks recompute the float64 rows they need, :func:`_unit_check_int8`)
                e, hn_next = _to_float32_bounds(e.to(dev), h64n.to(dev), h32.shape[1])
                h = h32.to(dev)
                continue
        elif slope == 0 and l_idx >= m:  # (after a float64 layer the error is too small to be worth a pass)
            live = (z > -bmax[:, None]).to(z.dtype)
            rc = torch.sqrt(live @ lay["rc2"].to(z.dtype))
            e = (A * rc[:, 0] + G * rc[:, 1] + T * lay["sqrt_n"]) * (_SAFETY * _SAFETY)
            h = torch.relu_(z)
        else:
            lip = max(1.0, abs(slope))
            e = (A * lay["rn"] + G * lay["cn"] + T * lay["sqrt_n"]) * (lip * _SAFETY * _SAFETY)
            h = z if slope == 1.0 else torch.relu_(z) if slope == 0 else F.leaky_relu(z, slope)
        if l_idx < m:  # float64 output: it is the float64-accurate input of the next layer
            src, src_e = h, e
    return out, redo, exact, fixed


def _pow2(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``2^k`` exactly, built from its bits (``k`` integers within the normal exponents of ``dtype``)."""
    if dtype == torch.float64:
        return torch.bitwise_left_shift(k.long() + 1023, 52).view(torch.float64)
    return torch.bitwise_left_shift(k.int() + 127, 23).view(torch.float32)


def _homogeneous_rows(plan: _ChainPlan, x: torch.Tensor) -> torch.Tensor:
    """``x`` with rows whose first-layer products are far from 1 brought near it by powers of two, for a
    chain without biases.

    Such a chain is positively homogeneous (``W (c h) = c W h``, ``relu(c z) = c relu(z)``, likewise a leaky
    ReLU, for ``c > 0``), so ``c x`` has the pattern of ``x``. A row whose products with the first layer are
    of the order ``2^k`` (``k`` the exponents of ``max |x_i|`` and of the largest row norm of ``W1`` added)
    with ``|k| > 100`` gets ``c = 2^-k``: ~1e-180 pre-activations (inputs 2^-600 x) are beyond float32 and
    their float64 products underflow near 2^-1000, while the same row scaled decides as ``x`` itself.

    Multiplying by ``2^-k`` (two exact factors, each a normal number) is exact whenever every result is
    finite and, when scaling down, every nonzero result is a normal number (the significand is kept; a
    subnormal input scaled up loses nothing either). Rows where the exponents say otherwise (an entry would
    overflow, or fall below the smallest normal number) are left as they are, decided at their own scale.
    """
    if any(lay["has_bias"] for lay in plan.layers) or x.dtype not in (torch.float32, torch.float64):
        return x
    r_max = plan.layers[0]["r_max"] if plan.layers else 0.0
    if x.numel() == 0 or not 0 < r_max < math.inf:
        return x
    mx = torch.linalg.vector_norm(x, ord=math.inf, dim=1)  # max |x_i|, one pass
    ex = torch.frexp(mx).exponent  # 2^(ex - 1) <= max |x_i| < 2^ex
    k = ex + math.frexp(r_max)[1]
    far = ((k > 100) | (k < -100)) & (mx > 0)
    if not bool(far.any()):
        return x
    fi = torch.finfo(x.dtype)
    lim = 2000 if x.dtype == torch.float64 else 250  # each of the two factors a normal number
    k = k.clamp(-lim, lim)
    emax, emin = math.frexp(fi.max)[1], math.frexp(fi.tiny)[1]  # 1024 / 128, -1021 / -125
    ok = far & (ex - k <= emax)  # the largest entry stays finite
    down = ok & (k > 0)
    if bool(down.any()):  # the smallest nonzero entry must stay a normal number
        a = x.abs()
        mn = a.masked_fill_(a == 0, math.inf).amin(1)
        ok &= ~down | (torch.frexp(mn).exponent - k >= emin)
    k = torch.where(ok, k, torch.zeros_like(k))[:, None]
    k1 = torch.div(k, 2, rounding_mode="floor")
    return x * _pow2(-k1, x.dtype) * _pow2(k1 - k, x.dtype)


def choose_prefix(plan: _ChainPlan, probe: torch.Tensor) -> tuple[int, int]:
    """How many leading layers to run float64-accurate, and how (``(m, int8 levels)``, levels 0 meaning a
    float64 product): the cheapest by :meth:`_ChainPlan.cost` on a probe batch.

    Float32 rounding bounds grow with the fan-in and propagate through the layers; when they leave most rows
    of a later layer with a unit the float64 dot product of its float32 input cannot decide (the input's own
    error is too wide), a float64-accurate first layer is cheaper than redoing those rows, and int8
    products (:class:`~netgeom.nets._int8.Int8Layer`) give it at about a float32 product's cost.
    """
    from .._matmul import int8_products_fast

    best, best_cost = (0, 0), math.inf
    probe = _homogeneous_rows(plan, probe)
    # (int8 products only where they are fast: without a VNNI kernel torch's is a plain loop, ~40x slower
    # than a float32 product; 784-400-400-10 then counted 32 768 points in 2 minutes, against 0.7 s plain)
    fast8 = plan.device.type == "cpu" and int8_products_fast()
    for m in range(len(plan.layers) + 1):
        levels = [lv for lv in (3, 4) if m and fast8 and plan.int8_layer(lv) is not None]
        for lv in levels + [0]:
            st: dict = {}
            _, redo, _, _ = chain_patterns(plan, probe, m, lv, st)
            frac = float(redo.float().mean()) if len(redo) else 0.0
            cost = plan.cost(m, frac, lv, st.get("refined", 0) / max(len(redo), 1))
            if cost < best_cost:
                best, best_cost = (m, lv), cost
        if frac == 0.0:  # (of the float64 product) more float64 layers only cost more
            break
    return best


def chain_decide(g: PLGraph, plan: _ChainPlan, x: torch.Tensor, m: int, _engines=None, int8: int = 0):
    """:func:`chain_patterns` with its leftovers resolved: rows whose float32 input was too inexact are
    redone by :func:`graph_patterns` in float64, pre-activations within ~1e-13 of zero in exact arithmetic.

    Returns ``(decisions on the CPU as graph_patterns, {"float64": rows with any float64 work, "exact":
    rows decided in rational arithmetic})``.
    """
    x = _homogeneous_rows(plan, x)  # (no biases: rows far from 1 scaled back near it, same patterns)
    out, redo, exact, fixed = chain_patterns(plan, x, m, int8)
    out = {i: d.cpu() for i, d in out.items()}
    redo, exact = redo.cpu(), exact.cpu()
    fixed = fixed.cpu() & ~redo & ~exact
    whole = m > 0 and not (int8 and plan.int8_layer(int8) is not None)  # every row ran float64 products
    stats = {"float64": x.shape[0] if whole else int(fixed.sum()), "exact": 0}
    rows = torch.nonzero(redo).flatten()
    if len(rows):
        dec, st = graph_patterns(g, x.cpu()[rows], device="cpu", dtype=torch.float64, _engines=_engines)
        for i, d in dec.items():
            out[i][rows] = d
        stats["exact"] += st["exact"]
        if not whole:
            stats["float64"] += len(rows)
        exact[rows] = False  # graph_patterns decided them, exactly where needed
    rows = torch.nonzero(exact).flatten()
    if len(rows):
        stats["exact"] += len(rows)
        if not whole:
            stats["float64"] += len(rows)
        keep = {n.index for n in g.nodes}
        x64 = x.to(torch.float64).cpu()
        for r in rows.tolist():
            for i, dec in _exact_patterns(g, x64[r], keep).items():
                if i in out:
                    out[i][r] = torch.tensor(dec, dtype=out[i].dtype)
    return out, stats
