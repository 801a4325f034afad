"""Upper and lower bounds on the number of linear (activation) regions of a ReLU network.

Dense bounds (exact Python integers; :func:`int_log10` gives their ``log10`` without overflow):

* :func:`zaslavsky_bound` — ``n`` hyperplanes in general position in ``R^d`` make at most ``Σ_{j≤d} C(n, j)``
  regions;
* :func:`montufar_lower_bound` — Montúfar et al. (2014): a network of these widths *can* have this many;
* :func:`product_bound` — ``Π_l Σ_{j≤d_l} C(n_l, j)`` with ``d_l = min(n_0, …, n_l)``;
* :func:`serra_bound` — Serra, Tjandraatmadja, Ramalingam (2018), Theorem 1, the sum over activation-count
  vectors ``J``, computed by a dynamic program over the running minimum (never by enumerating ``J``).

All of them count the regions of the *hidden* layers ``n_1 … n_L``: the output layer is affine, so it adds no
region. ``widths`` therefore always means hidden widths here.

Sparsity-aware bound (Cai et al., CPAIOR 2023): :func:`sparse_bound` runs the authors' backward recursion
in log space, with the rank of each masked weight matrix drawn from a closed-form binomial model, a seeded
Monte Carlo estimate, the actual ranks of a pruned model, or distributions given by the caller.
:func:`bounds` collects all of them for an actual (pruned) model.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

import numpy as np
import torch
from scipy.special import gammaln

from .._validation import (
    UNSET,
    as_generator,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_widths,
)
from ..nets import AffineLayer
from ..results import Result, new_axes

__all__ = [
    "zaslavsky_bound",
    "montufar_lower_bound",
    "product_bound",
    "serra_bound",
    "serra_bound_log10",
    "BoundTooLargeError",
    "DEFAULT_MAX_BYTES",
    "int_log10",
    "rank_distribution",
    "sparse_bound",
    "SparseBoundResult",
    "bounds",
    "BoundsResult",
    "demo_section",
    "bounded_layers",
    "ComposedLayer",
    "RANK_MODELS",
]

RANK_MODELS = ("closed_form", "monte_carlo", "masks")
_LN10 = math.log(10.0)
#: Default memory budget of the exact integer programs and of Monte Carlo rank sampling.
DEFAULT_MAX_BYTES = 2**30
# Work above this many bytes of integers takes seconds: show a progress bar.
_BAR_BYTES = 2**27


# ------------------------------------------------------------------------------------------- helpers
def int_log10(x: int) -> float:
    """``log10`` of a (possibly huge) non-negative integer; ``-inf`` for 0.

    >>> round(int_log10(10**400), 6)
    400.0
    """
    x = check_int(x, "x", minimum=0)
    return -math.inf if x == 0 else math.log10(x)


class BoundTooLargeError(ValueError):
    """An exact bound whose computation would exceed the memory budget (``max_bytes``).

    Raised before any work is done, with the estimated size and the way to get the ``log10`` instead.
    """


def _binom_prefix(n: int, upto: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``C(n, j)`` and ``Σ_{i≤j} C(n, i)`` for ``j = 0..min(n, upto)``: only the columns a recursion whose
    dimension never exceeds ``upto`` can reach, however wide the layer (``C(10**6, j)`` for ``j ≤ 784`` is
    a few MB; the whole row would be tens of GB)."""
    upto = min(n, upto)
    # Small rows are cached: allocation searches and prefix bounds reuse the same widths.
    return _binom_prefix_cached(n, upto) if upto <= 4096 else _binom_prefix_build(n, upto)


def _binom_prefix_build(n: int, upto: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    row = [1] * (upto + 1)
    for j in range(upto):
        row[j + 1] = row[j] * (n - j) // (j + 1)
    return tuple(row), tuple(itertools.accumulate(row))


_binom_prefix_cached = functools.lru_cache(maxsize=256)(_binom_prefix_build)


def _int_bytes(ln_value: np.ndarray) -> np.ndarray:
    """Bytes CPython needs for non-negative ints of natural log ``ln_value`` (-inf for 0), pointer included:
    a 24-byte header plus 4 bytes per 30-bit digit (at least one), and the list's 8-byte slot."""
    bits = np.where(np.isfinite(ln_value), ln_value, 0.0) / math.log(2.0) + 1.0
    return 32.0 + 4.0 * np.maximum(1.0, np.ceil(bits / 30.0))


def _fmt_bytes(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{b:.0f} B"


def _check_n0_widths(n0: Any, widths: Any) -> tuple[int, list[int]]:
    n0 = check_int(n0, "n0", minimum=1)
    widths = check_widths(widths, "widths", min_len=1)
    return n0, widths


def _check_densities(densities: Any, n_layers: int, name: str = "densities") -> list[float]:
    if isinstance(densities, (int, float, np.floating, np.integer)) and not isinstance(densities, bool):
        densities = [densities] * n_layers
    if not isinstance(densities, (Sequence, np.ndarray)) or isinstance(densities, str):
        raise TypeError(f"{name} must be a sequence of numbers in (0, 1], got {densities!r}")
    if len(densities) != n_layers:
        raise ValueError(f"{name} needs one density per hidden layer ({n_layers}), got {len(densities)}")
    return [
        check_fraction(p, f"{name}[{i}]", low=0.0, high=1.0, low_inclusive=False)
        for i, p in enumerate(densities)
    ]


# ------------------------------------------------------------------------------------------- dense bounds
def zaslavsky_bound(n: int, d: int, *, verbose: bool = True) -> int:
    """Most regions ``n`` hyperplanes can cut ``R^d`` into: ``Σ_{j=0}^{d} C(n, j)`` (Zaslavsky 1975).

    ``2^n`` when ``d ≥ n``; past ``d = n/2`` the shorter complement is summed. The sum holds one term at a
    time; its time grows like ``min(d, n − d) · n`` (about 5 s at ``n = 2·10^5, d = n/2``), with a progress
    bar (``verbose``) when that takes seconds.

    >>> zaslavsky_bound(3, 2)   # three lines in the plane
    7
    """
    verbose = check_bool(verbose, "verbose")
    n = check_int(n, "n", minimum=0)
    d = check_int(d, "d", minimum=0)
    if d >= n:
        return 1 << n
    # Past the middle, the complement has fewer terms: Σ_{j≤d} C(n, j) = 2^n − Σ_{j≤n−d−1} C(n, j).
    if 2 * d > n:
        return (1 << n) - _binom_sum(n, n - d - 1, verbose)
    return _binom_sum(n, d, verbose)


def _binom_sum(n: int, upto: int, verbose: bool = False) -> int:
    """``Σ_{j≤upto} C(n, j)`` holding one term at a time (``upto ≤ n``)."""
    from tqdm.auto import tqdm

    # each step multiplies and divides a number of up to n bits by a small one: ~2e-10 s per step and bit
    slow = upto * float(n) > 1e10
    bar = tqdm(total=upto + 1, desc=f"binomial sum C({n}, j)", unit="term", disable=not (verbose and slow))
    s, c = 0, 1
    for j in range(upto + 1):
        s += c
        c = c * (n - j) // (j + 1)
        if j & 1023 == 1023:
            bar.update(1024)
    bar.update((upto + 1) & 1023)
    bar.close()
    return s


def montufar_lower_bound(n0: int, widths: Sequence[int], *, verbose: bool = True) -> int:
    """Montúfar et al. (2014) lower bound ``Π_{l<L} ⌊n_l/n_0⌋^{n_0} · Σ_{j≤n_0} C(n_L, j)``.

    A network with these widths can reach this many regions. The construction folds the input with every
    hidden layer but the last, which needs ``n_l ≥ n_0`` for ``l < L``; otherwise a ``ValueError`` is raised
    (the formula would give the empty statement 0). ``verbose`` as in :func:`zaslavsky_bound`.

    >>> montufar_lower_bound(2, [4, 3])   # 2^2 folds, then 3 lines in the plane
    28
    """
    verbose = check_bool(verbose, "verbose")
    n0, widths = _check_n0_widths(n0, widths)
    narrow = [(i + 1, w) for i, w in enumerate(widths[:-1]) if w < n0]
    if narrow:
        raise ValueError(
            "the Montúfar lower bound needs every hidden layer but the last to be at least as wide as the "
            f"input (n0={n0}); layer(s) (index, width) {narrow} are narrower"
        )
    folds = 1
    for w in widths[:-1]:
        folds *= (w // n0) ** n0
    return folds * zaslavsky_bound(widths[-1], n0, verbose=verbose)


def product_bound(n0: int, widths: Sequence[int], *, verbose: bool = True) -> int:
    """``Π_{l=1}^{L} Σ_{j=0}^{d_l} C(n_l, j)``, ``d_l = min(n_0, n_1, …, n_l)`` (Montúfar 2017; Serra et al.).

    ``verbose``: progress bar on binomial sums that take seconds (:func:`zaslavsky_bound`).

    >>> product_bound(2, [3, 3])
    49
    """
    verbose = check_bool(verbose, "verbose")
    n0, widths = _check_n0_widths(n0, widths)
    out, d = 1, n0
    for w in widths:
        d = min(d, w)
        out *= zaslavsky_bound(w, d, verbose=verbose)
    return out


def _check_ranks(ranks: Any, widths: list[int]) -> list[int] | None:
    if ranks is None:
        return None
    ranks = [check_int(r, f"ranks[{i}]", minimum=0) for i, r in enumerate(_check_seq(ranks, "ranks"))]
    if len(ranks) != len(widths):
        raise ValueError(f"ranks needs one entry per hidden layer ({len(widths)}), got {len(ranks)}")
    return ranks


def _lse_all(a: np.ndarray) -> float:
    return float(np.logaddexp.reduce(a)) if len(a) else -math.inf


def _serra_ln_dp(n0: int, widths: list[int], ranks: list[int] | None) -> tuple[float, float, int]:
    """The dynamic program of :func:`serra_bound` in log space (floats, ``O(min(n_0, n_1))`` per layer).

    Returns ``(ln bound, peak bytes of the exact program, layer of the peak)``: every state's count is known
    here by its logarithm, hence the size of its exact integer, so the exact program's memory is known
    before it runs.
    """
    top = min(n0, widths[0])
    lc = np.full(top + 1, -np.inf)
    lc[top] = 0.0
    peak, peak_layer = 0.0, 0
    for l, n in enumerate(widths):
        if ranks is not None and ranks[l] < len(lc) - 1:
            lc = np.append(lc[: ranks[l]], _lse_all(lc[ranks[l] :]))
        top = len(lc) - 1
        upto = min(top, n)
        lb = _log_binom_row(n, upto)
        lpart = np.logaddexp.accumulate(lb)
        lsuf = np.append(np.logaddexp.accumulate(lc[::-1])[::-1], -np.inf)
        m = np.arange(upto + 1)
        stay = lc[m] + lpart[np.minimum(m, n - m)]
        arrive = lb + lsuf[np.minimum(np.maximum(m + 1, n - m), top + 1)]
        new = np.logaddexp(stay, arrive)
        # Live at once in the exact program: count, suffix, new, and the binomial row with its partial sums.
        size = sum(float(_int_bytes(x).sum()) for x in (lc, lsuf, new, lb, lpart))
        if size > peak:
            peak, peak_layer = size, l
        lc = new
    return _lse_all(lc), peak, peak_layer


def serra_bound(
    n0: int,
    widths: Sequence[int],
    ranks: Sequence[int] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verbose: bool = True,
) -> int:
    """Serra et al. (2018) upper bound ``Σ_{j ∈ J} Π_l C(n_l, j_l)``, exactly, over the hidden layers.

    ``J = {j : 0 ≤ j_l ≤ min(n_0, n_1 − j_1, …, n_{l−1} − j_{l−1}, n_l)}``. The sum is a dynamic program
    whose state is the running minimum ``m`` (the dimension that reaches layer ``l``, never above
    ``min(n_0, n_1)``): from ``m``, a layer with ``j`` active units leads to ``min(m, n_l − j)``. All
    ``j ≤ n_l − m`` keep the state, so their weights form one partial binomial sum; every other ``j`` leads
    to its own state ``n_l − j``, which collects a suffix sum over ``m``. Only ``C(n_l, j)`` with
    ``j ≤ min(n_0, n_1, …)`` are ever formed, so memory and time grow with the input dimension and the
    depth, not with the widths: ``serra_bound(784, [10**6, 10**6])`` takes milliseconds.

    ``ranks`` (optional, one per hidden layer) gives the rank-aware variant that the sparse bound reduces to
    for fixed ranks: the dimension passing layer ``l`` is also capped at ``ranks[l]``, and so is ``j_l``.
    Full ranks ``min(n_{l-1}, n_l)`` give the plain bound.

    When the exact program would hold more than ``max_bytes`` of integers (its size is known beforehand
    from the same program run in log space), :class:`BoundTooLargeError` says so before any work is done,
    with the bound's ``log10``; :func:`serra_bound_log10` with ``exact=False`` computes that ``log10``
    without the integer. ``verbose`` shows a progress bar on programs large enough to take seconds.

    >>> serra_bound(2, [3, 3])   # 7 + 3·7 + 3·4
    40
    >>> serra_bound(5, [4]) == zaslavsky_bound(4, 5) == 16
    True
    """
    verbose = check_bool(verbose, "verbose")
    n0, widths = _check_n0_widths(n0, widths)
    ranks = _check_ranks(ranks, widths)
    max_bytes = check_int(max_bytes, "max_bytes", minimum=1)
    top = min(n0, widths[0])
    # Every count is at most the product bound < 2^(Σ n_l): if even that fits, skip the estimate.
    crude = 5 * (top + 2) * float(_int_bytes(np.array([sum(widths) * math.log(2.0)]))[0])
    big = crude > min(max_bytes, _BAR_BYTES)
    if big:
        ln, peak, layer = _serra_ln_dp(n0, widths, ranks)
        if peak > max_bytes:
            log10 = ln / _LN10
            raise BoundTooLargeError(
                f"serra_bound(n0={n0}, widths={_short(widths)}) is refused: its exact dynamic program would "
                f"hold about {_fmt_bytes(peak)} of integers at hidden layer {layer + 1} ({top + 1} states "
                f"with up to {int(log10) + 1} digits each), over max_bytes = {_fmt_bytes(max_bytes)}. The "
                f"bound has about {int(log10) + 1} digits (log10 ≈ {log10:.6f}); serra_bound_log10(..., "
                "exact=False) computes its log10 without the integer, or raise max_bytes"
            )
        big = peak > _BAR_BYTES
    from tqdm.auto import tqdm

    sizes, t = [], top
    for l, n in enumerate(widths):
        t = min(t, ranks[l]) if ranks is not None else t
        t = min(t, n)
        sizes.append(t + 1)
    bar = tqdm(total=sum(sizes), desc="Serra bound", unit="state", disable=not (verbose and big))
    # count[m] = Σ over prefixes (j_1..j_{l-1}) whose running minimum is m of Π C(n_i, j_i).
    count = [0] * top + [1]
    for l, n in enumerate(widths):
        if ranks is not None and ranks[l] < len(count) - 1:
            count = count[: ranks[l]] + [sum(count[ranks[l] :])]
        top = len(count) - 1
        binoms, partial = _binom_prefix(n, top)
        # suffix[m] = Σ_{m' ≥ m} count[m']
        suffix = [*itertools.accumulate(reversed(count))][::-1] + [0]
        new = [0] * (min(top, n) + 1)
        for m in range(min(top, n) + 1):
            stay = count[m] * partial[min(m, n - m)]
            # arrive from any state m' > m with m' ≥ n − m by choosing j = n − m (requires j ≤ m');
            # C(n, n − m) = C(n, m).
            lo = max(m + 1, n - m)
            arrive = binoms[m] * suffix[lo] if lo <= top else 0
            new[m] = stay + arrive
            if m & 1023 == 1023:
                bar.update(1024)
        bar.update(len(new) & 1023)
        count = new
    bar.close()
    return sum(count)


def serra_bound_log10(
    n0: int,
    widths: Sequence[int],
    ranks: Sequence[int] | None = None,
    *,
    exact: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verbose: bool = True,
) -> float:
    """``log10`` of :func:`serra_bound`.

    ``exact=True`` (default) takes the log of the exact integer (refused like :func:`serra_bound` beyond
    ``max_bytes``). ``exact=False`` runs the same dynamic program in log space with floats: no integer is
    formed, any size is fine (``serra_bound_log10(10**6, [10**6] * 2, exact=False)`` in well under a second),
    and the result agrees with the exact one to about 1e-13 relative (tested).

    >>> abs(serra_bound_log10(784, [400, 400], exact=False) - serra_bound_log10(784, [400, 400])) < 1e-10
    True
    """
    exact = check_bool(exact, "exact")
    verbose = check_bool(verbose, "verbose")
    n0, widths = _check_n0_widths(n0, widths)
    if exact:
        return int_log10(serra_bound(n0, widths, ranks, max_bytes=max_bytes, verbose=verbose))
    return _serra_ln_dp(n0, widths, _check_ranks(ranks, widths))[0] / _LN10


@functools.lru_cache(maxsize=256)
def _serra_log10_float_cached(n0: int, widths: tuple[int, ...]) -> float:
    return serra_bound_log10(n0, list(widths), exact=False)


def _short(widths: list[int]) -> str:
    return str(widths) if len(widths) <= 6 else f"[{widths[0]}, {widths[1]}, …, {widths[-1]}] ({len(widths)})"


def _check_seq(x: Any, name: str) -> list:
    if not isinstance(x, (Sequence, np.ndarray)) or isinstance(x, str):
        raise TypeError(f"{name} must be a sequence, got {type(x).__name__}")
    return list(x)


# ------------------------------------------------------------------------------------------- rank models
_UNSET: Any = UNSET  # (an option that applies to some rank models only)


def _given(**options: Any) -> list[str]:
    return [name for name, v in options.items() if v is not _UNSET and v is not None]


def _rank_options(model_name: str, include_zero_rank, n_samples, seed, mask_kind) -> tuple[bool, int, str]:
    """Validate the rank-model options that were given, refuse those that do not apply to ``model_name``
    (they would be ignored), and fill in defaults: ``(include_zero_rank, n_samples, mask_kind)``.

    ``include_zero_rank`` comes back True for every model but the closed form (they keep ``k = 0``)."""
    if include_zero_rank is not _UNSET:
        include_zero_rank = check_bool(include_zero_rank, "include_zero_rank")
    if n_samples is not _UNSET:
        n_samples = check_int(n_samples, "n_samples", minimum=1)
    if mask_kind is not _UNSET:
        check_choice(mask_kind, "mask_kind", ("exact", "bernoulli"))
    if seed is not None and not isinstance(seed, np.random.Generator):
        check_int(seed, "seed", minimum=0)
    if model_name == "closed_form":
        misplaced = _given(n_samples=n_samples, seed=seed, mask_kind=mask_kind)
    elif model_name == "monte_carlo":
        misplaced = _given(include_zero_rank=include_zero_rank)
    else:
        misplaced = _given(include_zero_rank=include_zero_rank, n_samples=n_samples, seed=seed,
                           mask_kind=mask_kind)
    if misplaced:
        shown = "given distributions" if model_name == "given" else f'rank_model="{model_name}"'
        raise ValueError(
            f"{', '.join(misplaced)} {'does' if len(misplaced) == 1 else 'do'} not apply to {shown} and "
            "would be ignored: include_zero_rank is for the closed form only (the other models keep k = 0), "
            'n_samples, seed and mask_kind for "monte_carlo" only'
        )
    if model_name == "closed_form":
        include_zero_rank = False if include_zero_rank is _UNSET else bool(include_zero_rank)
    else:
        include_zero_rank = True
    n_samples = 64 if n_samples is _UNSET else n_samples
    return include_zero_rank, n_samples, "exact" if mask_kind is _UNSET else mask_kind


def _closed_form_log_probs(n_out: int, n_in: int, p: float, include_zero_rank: bool) -> np.ndarray:
    """``ln P(rank = k)``, ``k = 0..min(n_out, n_in)``, for an ``n_out × n_in`` mask of density ``p``.

    The rank is modelled by the number of non-empty lines on the smaller side: with ``C ≥ R`` a row (of
    ``C`` independent entries) is non-empty with ``Q = 1 − (1 − p)^C`` and ``k ~ Binomial(R, Q)``.
    """
    R, C = n_out, n_in
    N, other = (R, C) if C >= R else (C, R)
    # Q = 1 - (1-p)^other without the cancellation that 1 - pow() suffers for tiny p.
    Q = 1.0 if p >= 1.0 else float(-np.expm1(other * np.log1p(-p)))
    # scipy.stats is imported here, not with the module: it is a third of `import netgeom`'s time
    from scipy.stats import binom

    k = np.arange(N + 1)
    with np.errstate(divide="ignore"):
        logp = binom.logpmf(k, N, Q)
    if not include_zero_rank:
        logp[0] = -np.inf
    return logp


def _check_monte_carlo_size(n_out: int, n_in: int, max_bytes: int) -> None:
    """Refuse, before sampling, a layer whose one sampled matrix (values, uniforms and the SVD's copy, 8
    bytes each) would not fit ``max_bytes``."""
    need = 3 * 8 * n_out * n_in
    if need > max_bytes:
        raise BoundTooLargeError(
            f"Monte Carlo ranks of a {n_out} x {n_in} layer are refused: one sampled matrix with its mask "
            f"and SVD workspace needs about {_fmt_bytes(need)}, over max_bytes = {_fmt_bytes(max_bytes)}. "
            'The closed-form rank model (rank_model="closed_form") has no such limit'
        )


def _monte_carlo_log_probs(
    n_out: int, n_in: int, p: float, n_samples: int, rng: np.random.Generator, mask_kind: str,
    verbose: bool = False,
) -> np.ndarray:
    """Empirical ``ln P(rank = k)`` of Gaussian matrices under random masks of density ``p``."""
    from tqdm.auto import tqdm

    R, C = n_out, n_in
    full = min(R, C)
    size = R * C
    # Exactly round(p·size) entries, as magnitude pruning keeps: none when that rounds to 0 (rank 0).
    n_keep = int(round(p * size))
    ranks = np.empty(n_samples, dtype=np.int64)
    # Chunks keep memory near 32 MB whatever the layer size.
    chunk = max(1, min(n_samples, (4 << 20) // size))
    # An SVD costs about 4·R·C·min(R, C) flops: a bar once the layer's sampling takes seconds.
    slow = 4.0 * size * full * n_samples > 2e10
    bar = tqdm(total=n_samples, desc=f"ranks {R}x{C}", unit="matrix", disable=not (verbose and slow))
    for start in range(0, n_samples, chunk):
        m = min(chunk, n_samples - start)
        vals = rng.standard_normal((m, size))
        if p < 1.0:
            u = rng.random((m, size))
            if mask_kind == "exact" and n_keep == 0:
                vals[:] = 0.0
            elif mask_kind == "exact":
                # The n_keep smallest uniforms per sample: an exact-count mask, as pruning produces.
                kth = np.partition(u, n_keep - 1, axis=1)[:, n_keep - 1 : n_keep]
                vals *= u <= kth
            else:
                vals *= u < p
        ranks[start : start + m] = np.linalg.matrix_rank(vals.reshape(m, R, C))
        bar.update(m)
    bar.close()
    counts = np.bincount(ranks, minlength=full + 1)
    with np.errstate(divide="ignore"):
        return np.log(counts / n_samples)


# probabilities of far-off ranks (exp of very negative logs) underflow to 0, as meant: a caller's
# np.seterr(all='raise') made sparse_bound(784, [300, 100], 0.05) raise FloatingPointError
@np.errstate(under="ignore")
def rank_distribution(
    n_out: int,
    n_in: int,
    density: float,
    *,
    rank_model: str = "closed_form",
    include_zero_rank: bool = _UNSET,
    n_samples: int = _UNSET,
    seed: int | np.random.Generator | None = None,
    mask_kind: str = _UNSET,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verbose: bool = True,
) -> np.ndarray:
    """``P(rank = k)`` for ``k = 0..min(n_out, n_in)`` of an ``n_out × n_in`` weight matrix under a random
    mask of the given density.

    * ``"closed_form"``: rank ≈ number of non-empty rows (or columns, on the smaller side), binomial. As in
      Cai et al.'s code the ``k = 0`` term is left out (``include_zero_rank=False``), so the probabilities
      may sum to slightly less than 1; pass ``include_zero_rank=True`` for the full binomial.
    * ``"monte_carlo"``: ``n_samples`` Gaussian matrices under random masks (``mask_kind="exact"`` keeps
      exactly ``round(density · n_out · n_in)`` entries, as pruning does; ``"bernoulli"`` keeps each entry
      independently with probability ``density``, the model behind the closed form), seeded, their
      ``matrix_rank``. ``k = 0`` is kept: it is an observed outcome (``include_zero_rank`` is refused
      here); a density so low that ``round(density · n_out · n_in)`` is 0 keeps no entry, rank 0. A
      layer whose one sampled matrix would exceed ``max_bytes`` is refused up front
      (:class:`BoundTooLargeError`); ``verbose`` shows a progress bar when the sampling takes seconds.
      ``n_samples`` (default 64), ``seed`` (required) and ``mask_kind`` are Monte Carlo options and refused
      with the closed form; ``include_zero_rank`` is a closed-form option, refused here.

    The closed form counts non-empty lines, an upper bound on the (generic) rank; it is close to the Monte
    Carlo distribution when lines are either nearly all full (density well above ``ln(n)/n``) or nearly all
    hold at most one entry (very low density), and overestimates the rank near the threshold, where lines
    are non-empty but the matrix is still rank deficient (see ``tests/test_bounds.py``).

    >>> rank_distribution(3, 5, 1.0).tolist()
    [0.0, 0.0, 0.0, 1.0]
    """
    verbose = check_bool(verbose, "verbose")
    n_out = check_int(n_out, "n_out", minimum=1)
    n_in = check_int(n_in, "n_in", minimum=1)
    density = check_fraction(density, "density", low=0.0, high=1.0, low_inclusive=False)
    check_choice(rank_model, "rank_model", ("closed_form", "monte_carlo"))
    include_zero_rank, n_samples, mask_kind = _rank_options(
        rank_model, include_zero_rank, n_samples, seed, mask_kind
    )
    if rank_model == "closed_form":
        return np.exp(_closed_form_log_probs(n_out, n_in, density, include_zero_rank))
    rng = as_generator(seed)
    _check_monte_carlo_size(n_out, n_in, check_int(max_bytes, "max_bytes", minimum=1))
    return np.exp(_monte_carlo_log_probs(n_out, n_in, density, n_samples, rng, mask_kind, verbose))


def _log_binom_row(n: int, upto: int) -> np.ndarray:
    j = np.arange(upto + 1)
    return gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1)


def _log_recursion(n0: int, widths: Sequence[int], log_probs: Sequence[np.ndarray]) -> float:
    """``ln N_1(n_0)`` of the Cai et al. backward recursion (module docstring), in log space.

    The dimension that reaches layer ``l`` never exceeds ``D_l = min(n_0, n_1, r_1, …, n_{l-1}, r_{l-1})``
    (``r`` the largest rank with mass), so ``N_l`` is needed on ``0..D_l`` only. With ``m = min(k, d)``
    the inner sum depends on ``(k, d)`` only through ``m``: ``G(m) = Σ_{j≤m} C(n, j) N_next(min(n − j, m))``.
    Terms with ``j ≤ n − m`` share ``N_next(m)`` (a partial binomial sum); the others, ``n − m < j ≤ m``,
    form a window that only grows with ``m``, so one running ``logaddexp`` gives every ``G(m)`` without a
    subtraction. ``N(d) = Σ_{k<d'} P(k) G(k) + G(d') P(k ≥ d')`` with ``d' = min(d, D_{l+1})`` is a prefix
    and a tail sum. A layer costs ``O(n_in + D)`` operations, whatever its width.
    """
    caps = [n0]
    for n, lp in zip(widths, log_probs):
        caps.append(min(caps[-1], n, len(lp) - 1))
    log_next = np.zeros(caps[-1] + 1)  # N_{L+1} ≡ 1 for every dimension
    for l in range(len(widths) - 1, -1, -1):
        n, lp = widths[l], np.asarray(log_probs[l], dtype=np.float64)
        M = caps[l + 1]
        lb = _log_binom_row(n, M)
        m = np.arange(M + 1)
        log_g = log_next[m] + np.logaddexp.accumulate(lb)[np.minimum(m, n - m)]
        t0 = (n + 2) // 2  # j enters the window at m = max(j, n + 1 − j) ≥ ⌈(n + 1)/2⌉
        if t0 <= M:
            tau = np.arange(t0, M + 1)
            pair = n + 1 - tau  # the other j entering at the same m (the same j when n + 1 = 2·tau)
            enter = np.logaddexp(
                lb[tau] + log_next[n - tau], np.where(pair < tau, lb[pair] + log_next[n - pair], -np.inf)
            )
            log_g[t0:] = np.logaddexp(log_g[t0:], np.logaddexp.accumulate(enter))
        prefix = np.concatenate([[-np.inf], np.logaddexp.accumulate(lp[:M] + log_g[:M])])
        tail = np.logaddexp.accumulate(lp[::-1])[::-1]
        d = np.minimum(np.arange(caps[l] + 1), M) if l > 0 else np.array([M])
        log_next = np.logaddexp(prefix[d], log_g[d] + tail[d])
    return float(log_next[0])


# ------------------------------------------------------------------------------------------- sparse bound
@dataclasses.dataclass
class SparseBoundResult(Result):
    """The sparsity-aware bound of Cai et al. (2023).

    ``log10`` (and ``ln``, the authors' unit) of the bound; ``value`` as a float when it is below ~1e308;
    ``exact`` as an ``int`` when every rank is fixed (rank model ``"masks"`` or point masses) and its exact
    program fits ``max_bytes``, else None.
    ``layer_widths`` lists the layers of the recursion (hidden layers, plus the output layer when
    ``include_output``); ``densities`` and ``expected_ranks``/``full_ranks`` follow the same order.
    ``dense_log10`` is the Serra bound of the same layers, for comparison. ``include_zero_rank`` says
    whether the recursion kept the ``k = 0`` rank term (closed form: as asked; the other models always).
    ``clamped`` is True when the recursion fell below one region and ``log10`` was raised to 0 (a network
    has at least one region); ``unclamped_log10`` is the recursion's own value either way.
    """

    n0: int
    layer_widths: list[int]
    densities: list[float]
    rank_model: str
    include_output: bool
    include_zero_rank: bool
    log10: float
    ln: float
    value: float | None
    exact: int | None
    expected_ranks: list[float]
    full_ranks: list[int]
    dense_log10: float
    clamped: bool
    unclamped_log10: float
    rank_probabilities: list[np.ndarray] = field(repr=False, default_factory=list)

    def plot(self, ax=None):
        """Each layer's rank distribution against ``k / full rank``."""
        fig, ax = new_axes(ax)
        for i, (pr, full) in enumerate(zip(self.rank_probabilities, self.full_ranks)):
            k = np.arange(len(pr)) / max(full, 1)
            label = f"layer {i + 1} (n={self.layer_widths[i]}, p={self.densities[i]:.3g})"
            ax.plot(k, pr, marker=".", label=label)
        ax.set_xlabel("rank / full rank")
        ax.set_ylabel("P(rank)")
        ax.set_title(f"rank model {self.rank_model}: log10 bound = {self.log10:.4g}")
        ax.legend(fontsize="small")
        return ax


_BREAKS = {"add": "a residual addition", "cat": "a concatenation", "maxpool": "a max-pooling"}


@dataclasses.dataclass(eq=False, repr=False)
class ComposedLayer(AffineLayer):
    """Consecutive affine maps with no activation between them, read as the one affine map they compose.

    ``weight``/``bias`` are the composite ``W_k … W_1`` and its bias (float64), ``activation`` the last
    part's; ``parts`` are the original layers in forward order. ``density`` is the fraction of the parts'
    weights kept, all parts together (the composite matrix itself carries no mask). ``bottleneck`` is the
    narrowest width the composite passes through (its input, every part's output): its rank never exceeds it.
    """

    parts: tuple[AffineLayer, ...] = ()

    @property
    def density(self) -> float:
        kept = total = 0
        for la in self.parts:
            size = la.kernel.numel() if la.kernel is not None else la.weight.numel()
            total += size
            kept += size if la.mask is None else int(la.mask.sum())
        return kept / total

    @property
    def bottleneck(self) -> int:
        return min([self.parts[0].n_in, *(la.n_out for la in self.parts)])

    @property
    def part_names(self) -> list[str]:
        return [la.name for la in self.parts]

    def __repr__(self) -> str:
        return (
            f"ComposedLayer(parts={self.part_names}, {self.n_in}->{self.n_out}, "
            f"activation={self.activation}, bottleneck={self.bottleneck}, density={self.density:.4g})"
        )


def _compose(layers: list[AffineLayer]) -> list[AffineLayer]:
    """Merge every run of layers without an activation between them (identity activation, then another
    layer) into one :class:`ComposedLayer`; other layers are returned as they are."""
    out: list[AffineLayer] = []
    run: list[AffineLayer] = []
    for la in layers:
        run.append(la)
        if la.activation != "identity" or la is layers[-1]:
            if len(run) == 1:
                out.append(la)
            else:
                w, b = run[0].weight, run[0].bias
                for nxt in run[1:]:
                    w, b = nxt.weight @ w, nxt.weight @ b + nxt.bias
                last = run[-1]
                out.append(
                    ComposedLayer(
                        name="+".join(x.name for x in run), param_name=None, weight=w, bias=b,
                        activation=last.activation, negative_slope=last.negative_slope, kernel=None,
                        mask=None, kind="composed", in_shape=run[0].in_shape, out_shape=last.out_shape,
                        parts=tuple(run),
                    )
                )
            run = []
    return out


def _stacked_message(layer: ComposedLayer) -> str:
    return (
        f"layers {layer.part_names} have no activation between them, so they act as one affine map "
        f"{layer.n_in} -> {layer.n_out} (rank at most {layer.bottleneck})"
    )


def bounded_layers(model, masks=None, *, input_shape=None, compose: bool = False) -> list[AffineLayer]:
    """The model's layers, if the region bounds of this module apply to it; else an error saying why.

    Serra et al.'s and Cai et al.'s bounds (and the dense ones here) are proved for chains of affine maps
    and ReLUs: Linear and Conv layers (BatchNorm, AvgPool, flatten folded in), ReLU as a module or a
    function, in any ``forward`` that ``torch.fx`` traces (:func:`netgeom.nets.trace`). They are not
    proved, and netgeom does not guess them, for

    * residual additions, concatenations and max-pooling (the traced graph is not a chain): raises
      :class:`~netgeom.nets.UnsupportedLayerError` naming every such node;
    * LeakyReLU: an inactive ReLU outputs 0, which lowers the dimension later layers see, and the bounds
      count on it; a LeakyReLU keeps the dimension. Raises ``ValueError`` pointing to
      :func:`product_bound`, which holds for LeakyReLU chains too (Zaslavsky per layer in the dimension
      ``min(n_0, …, n_l)`` that an affine map of that rank can pass on).

    Two layers with no activation between them (``Linear(2, 8), Linear(8, 3), ReLU``) are one affine map:
    the bounds count its ReLUs, not the first layer's 8 units (which cut nothing). With ``compose=True``
    every such run is returned as one :class:`ComposedLayer` (its composite matrix and bias), which is how
    :func:`bounds` and :func:`sparse_bound` read models; ``compose=False`` (default) returns one layer per
    weight tensor, as :func:`netgeom.nets.affine_layers` does.

    The exact counts (``regions_on_slice``, ``regions_on_segment``, ``count_patterns``) handle all of these.

    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> [(la.n_in, la.n_out, la.activation) for la in bounded_layers(net, compose=True)]
    [(2, 3, 'relu'), (3, 1, 'identity')]
    """
    compose = check_bool(compose, "compose")
    from ..nets import UnsupportedLayerError, trace

    g = trace(model, masks, input_shape=input_shape)
    breaks = [nd for nd in g.nodes[1:] if nd.op in _BREAKS]
    if breaks or not g.is_chain:
        listed = "; ".join(f"{nd.source} is {_BREAKS[nd.op]}" for nd in breaks[:5])
        more = f" (and {len(breaks) - 5} more)" if len(breaks) > 5 else ""
        raise UnsupportedLayerError(
            f"region bounds are not defined for {g.model_name}: {listed or 'its graph branches'}{more}. "
            "Serra et al.'s and Cai et al.'s bounds are proved for chains of affine maps and ReLUs only; a "
            "residual addition, a concatenation or a max-pooling changes how regions compose, and netgeom "
            "does not guess a bound for it. Bounded: chains (Linear/Conv with BatchNorm, AvgPool, flatten, "
            "ReLU as modules or functions, any forward). Exact counts of this network's regions: "
            "regions_on_slice, regions_on_segment, count_patterns"
        )
    layers = g.layers()
    leaky = [la for la in layers if la.activation == "leaky_relu"]
    if leaky:
        la = leaky[0]
        raise ValueError(
            f"Serra et al.'s and Cai et al.'s region bounds assume ReLU: an inactive unit outputs 0, which "
            f"lowers the dimension later layers see. Layer '{la.name}' is followed by a LeakyReLU (slope "
            f"{la.negative_slope:g}), which keeps that dimension, so these bounds are not proved for this "
            "network and are not given. product_bound(n0, widths) (Zaslavsky per layer in dimension "
            "min(n0, n1, ..., nl)) does hold for LeakyReLU chains"
        )
    return _compose(layers) if compose else layers


def _model_layers(
    model, masks, include_output: bool, input_shape=None
) -> tuple[int, list[AffineLayer], list[AffineLayer]]:
    """``(n0, region layers, all layers)``, runs of layers without an activation composed into one
    (:func:`bounded_layers`). The region layers are all but the affine output layer; a network that ends
    with a ReLU has no affine output layer, and its last layer cuts regions too.

    Without ``masks``, a weight that is exactly zero is absent (pruned = absent = zero: a network pruned by
    zeroing, as ``IMPResult.model_at`` returns it, reads like the masked one); given masks win."""
    if masks is None:
        from ..pruning.masks import Masks

        masks = Masks.from_model_zeros(model)
    layers = bounded_layers(model, masks, input_shape=input_shape, compose=True)
    if layers[-1].activation != "identity":
        if include_output:
            raise ValueError(
                f"the model's last layer '{layers[-1].name}' has a {layers[-1].activation} activation, so it "
                "is already counted as a hidden layer; include_output=True needs an affine output layer"
            )
        return layers[0].n_in, layers, layers
    if len(layers) < 2 and not include_output:
        raise ValueError("the model has no hidden layer (only its output layer): no region bound to compute")
    return layers[0].n_in, layers[:-1], layers


def _check_distributions(dists: Any, fulls: list[int]) -> list[np.ndarray]:
    dists = _check_seq(dists, "rank_model")
    if len(dists) != len(fulls):
        raise ValueError(
            f"rank_model as distributions needs one per layer of the recursion ({len(fulls)}), "
            f"got {len(dists)}"
        )
    out = []
    for i, (d, full) in enumerate(zip(dists, fulls)):
        if isinstance(d, Mapping):
            arr = np.zeros(full + 1)
            for k, v in d.items():
                k = check_int(k, f"rank_model[{i}] key", minimum=0, maximum=full)
                arr[k] = float(v)
        else:
            arr = np.asarray(d, dtype=np.float64)
            if arr.ndim != 1 or len(arr) > full + 1:
                raise ValueError(
                    f"rank_model[{i}] must list P(rank=k) for k = 0..{full} (full rank of layer {i + 1}), "
                    f"got shape {arr.shape}"
                )
            arr = np.concatenate([arr, np.zeros(full + 1 - len(arr))])
        if not np.isfinite(arr).all() or (arr < 0).any() or arr.sum() > 1 + 1e-9:
            raise ValueError(f"rank_model[{i}] must hold probabilities (>= 0, summing to <= 1), got {arr}")
        if arr.sum() <= 0:
            # Zero mass everywhere would make the bound 0 (log10 = -inf) without saying why.
            raise ValueError(f"rank_model[{i}] gives every rank probability 0; it needs positive mass")
        out.append(arr)
    return out


# probabilities of far-off ranks (exp of very negative logs) underflow to 0, as meant: a caller's
# np.seterr(all='raise') made sparse_bound(784, [300, 100], 0.05) raise FloatingPointError
@np.errstate(under="ignore")
def sparse_bound(
    n0: int | None = None,
    widths: Sequence[int] | None = None,
    densities: Sequence[float] | float | None = None,
    *,
    rank_model: str | Sequence[Any] = "closed_form",
    include_output: bool = False,
    n_out: int | None = None,
    include_zero_rank: bool = _UNSET,
    n_samples: int = _UNSET,
    seed: int | np.random.Generator | None = None,
    mask_kind: str = _UNSET,
    model: torch.nn.Module | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verbose: bool = True,
) -> SparseBoundResult:
    """Sparsity-aware upper bound on linear regions (Cai et al., CPAIOR 2023), in log space.

    Backward recursion over the layers, ``d`` being the dimension that reaches layer ``l``::

        N_L(d) = Σ_k P(r_L = k) Σ_{j≤min(k,d)} C(n_L, j)
        N_l(d) = Σ_k P(r_l = k) Σ_{j≤min(k,d)} C(n_l, j) · N_{l+1}(min(n_l − j, d, k))
        bound  = N_1(n_0)

    Parameters
    ----------
    n0, widths : input dimension and hidden widths. Read from ``model`` when it is given.
    densities : kept fraction of each hidden layer's weights, in ``(0, 1]`` (a float means all layers), for
        the closed-form and Monte Carlo rank models. With a ``model`` and no densities, the model's actual
        densities are used. With distributions given as ``rank_model`` they are only recorded (labels of
        the result and its plot). With ``rank_model="masks"`` they are refused: the actual ranks are used,
        and the recorded densities are the model's.
    rank_model : ``"closed_form"``, ``"monte_carlo"`` (see :func:`rank_distribution`), ``"masks"`` (the
        actual ranks of ``model``'s masked weights, a point mass; needs ``model``), or a list with one
        distribution per layer of the recursion (array of ``P(rank=k)`` for ``k = 0, 1, …``, or a dict
        ``{k: P}``).
    include_output : also run the recursion through the output layer (width ``n_out``, or the model's), as
        Cai et al.'s code does, at density 1 (or the model's actual output mask). Default False: hidden
        layers only, as in Serra et al.'s statement; the output layer is affine and adds no region.
    n_out : the output width, for ``include_output=True`` only (refused otherwise: it would change nothing).
    include_zero_rank : closed form only (default False, the authors' choice: the ``k = 0`` term is
        dropped). The other models always keep ``k = 0`` (an observed Monte Carlo outcome, an actual rank,
        the caller's distribution), so it is refused with them; the result's ``include_zero_rank`` says
        which applied.
    n_samples, seed, mask_kind : Monte Carlo settings (defaults 64 samples, ``mask_kind="exact"``);
        ``seed`` is required there and all three are refused with the other rank models.
    model, masks : a (pruned) network to read ``n0``, the widths, densities and ranks from, through
        :func:`bounded_layers` with ``compose=True``: layers without an activation between them are one
        affine map, whose composite matrix gives the rank (``rank_model="masks"``); the closed-form and
        Monte Carlo models (a random mask of density ``p`` on one dense matrix) do not describe such a
        product of masked matrices and are refused for it, naming the layers. Without ``masks`` a weight
        that is exactly zero is absent (pruned = absent = zero, as :func:`netgeom.topology_bound` reads
        it: a net pruned by zeroing reads like the masked one); given masks win.
    input_shape : one sample's shape, passed to :func:`netgeom.nets.affine_layers` (conv nets; needs
        ``model``).
    max_bytes : memory budget. Monte Carlo ranks whose sampling would exceed it are refused up front
        (:class:`BoundTooLargeError`); with fixed ranks, ``exact`` is left None when the exact integer's
        program would exceed it (``log10`` comes from the recursion either way).
    verbose : progress bars on work that takes seconds (Monte Carlo sampling, large exact programs).

    **At least one region.** Leaving out ``k = 0`` (closed form, as the authors' code does) makes the rank
    probabilities sum to ``P(r ≥ 1) < 1``; at very low densities the recursion then falls below 1 (log10
    −587 at ``p = 1e-300`` on 784-100-100). Every network has at least one region, and with the ``k = 0``
    term kept every term of the recursion is at least 1, so the bound is reported as at least 1:
    ``log10 = max(recursion, 0)``, ``clamped`` says whether that happened and ``unclamped_log10`` keeps the
    recursion's own value (the authors' number).

    The recursion only visits dimensions up to ``min(n_0, n_1, …)``, so it costs ``O(n_l + n_0)`` per layer
    and memory linear in the widths: ``sparse_bound(784, [30000, 30000], 0.1)`` takes milliseconds.

    With all densities 1 every rank is full and the result equals :func:`serra_bound`.

    >>> r = sparse_bound(784, [100, 100], [0.01, 0.01])
    >>> r.log10 < sparse_bound(784, [100, 100], 1.0).log10 == serra_bound_log10(784, [100, 100])
    True
    >>> r = sparse_bound(784, [100, 100], 1e-300)
    >>> r.log10, r.clamped, round(r.unclamped_log10)
    (0.0, True, -587)
    """
    include_output = check_bool(include_output, "include_output")
    verbose = check_bool(verbose, "verbose")
    if isinstance(rank_model, str):
        check_choice(rank_model, "rank_model", RANK_MODELS)
        model_name = rank_model
    else:
        model_name = "given"
    include_zero_rank, n_samples, mask_kind = _rank_options(
        model_name, include_zero_rank, n_samples, seed, mask_kind
    )
    if n_out is not None and not include_output:
        raise ValueError(
            "n_out is the output layer's width, used only with include_output=True (the default bound is "
            "over the hidden layers); pass include_output=True or leave n_out out"
        )
    if model_name == "masks" and densities is not None:
        raise ValueError(
            'densities do not enter rank_model="masks": it uses the actual ranks of the model\'s masked '
            "weights (and records the model's densities); leave densities out, or use the closed form"
        )

    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        m_n0, hidden, all_layers = _model_layers(model, masks, include_output, input_shape)
        m_widths = [la.n_out for la in hidden]
        for given, actual, name in ((n0, m_n0, "n0"), (widths, m_widths, "widths")):
            if given is not None and (list(given) if name == "widths" else given) != actual:
                raise ValueError(f"{name}={given} disagrees with the model's {name}={actual}")
        m_out = all_layers[-1].n_out
        if n_out is not None and n_out != m_out:
            raise ValueError(f"n_out={n_out} disagrees with the model's output width {m_out}")
        n0, widths, n_out = m_n0, m_widths, m_out
        if not hidden:
            raise ValueError("the model has no hidden layer: no region bound to compute")
        if densities is None and model_name != "masks":
            densities = [la.density for la in hidden]
    else:
        if masks is not None:
            raise ValueError("masks were given without a model; pass model=... as well")
        if input_shape is not None:
            raise ValueError("input_shape is read only with a model (model=...); it would be ignored")
    if n0 is None or widths is None:
        raise ValueError("give n0 and widths (hidden layer widths), or a model")
    n0, widths = _check_n0_widths(n0, widths)
    max_bytes = check_int(max_bytes, "max_bytes", minimum=1)
    if include_output:
        if n_out is None:
            raise ValueError("include_output=True needs n_out (the output width) or a model")
        n_out = check_int(n_out, "n_out", minimum=1)
    layer_widths = widths + ([n_out] if include_output else [])
    fulls = [min(a, b) for a, b in zip([n0, *layer_widths[:-1]], layer_widths)]

    if model is not None and model_name in ("closed_form", "monte_carlo"):
        used = all_layers if include_output else hidden
        stacked = [la for la in used if isinstance(la, ComposedLayer)]
        if stacked:
            raise ValueError(
                f'rank_model="{model_name}" models each layer\'s weights as one dense matrix under a random '
                f"mask of density p, but {_stacked_message(stacked[0])}: the product of masked matrices has "
                "neither that density nor that rank distribution, so the bound is not given. "
                'rank_model="masks" (the actual rank of the composite matrix) and the dense bounds apply'
            )
        empty = [la for la in used if la.density == 0]
        if empty:
            raise ValueError(
                f'rank_model="{model_name}" needs densities in (0, 1], but {_disconnected(empty[0])}; '
                'rank_model="masks" gives that bound'
            )
        conv = [la for la in used if la.kind != "linear"]
        if conv:
            raise ValueError(
                f'rank_model="{model_name}" models a random mask on a dense Linear weight matrix, but layer '
                f"'{conv[0].name}' is a {conv[0].kind} layer (its unrolled matrix of shape "
                f"{tuple(conv[0].weight.shape)} shares a kernel of {_n_kernel(conv[0])} weights, so its "
                'density and rank do not follow that model); use rank_model="masks" (the actual ranks of the '
                "unrolled masked matrices, valid for any layer)"
            )
    if model_name == "masks":
        if model is None:
            raise ValueError('rank_model="masks" needs the pruned model (model=..., optionally masks=...)')
        used = all_layers if include_output else hidden
        ranks = [int(torch.linalg.matrix_rank(la.weight)) for la in used]
        dens = [la.density for la in used]
        log_probs = [np.where(np.arange(f + 1) == r, 0.0, -np.inf) for r, f in zip(ranks, fulls)]
    elif model_name == "given":
        probs = _check_distributions(rank_model, fulls)
        with np.errstate(divide="ignore"):
            log_probs = [np.log(p) for p in probs]
        dens = _check_densities(densities, len(widths)) if densities is not None else [math.nan] * len(widths)
        if include_output:
            dens.append(all_layers[-1].density if model is not None else 1.0)
    else:
        if densities is None:
            raise ValueError(f'rank_model="{model_name}" needs densities (one per hidden layer) or a model')
        dens = _check_densities(densities, len(widths))
        if include_output:
            dens.append(all_layers[-1].density if model is not None else 1.0)
        if model_name == "closed_form":
            log_probs = [
                _closed_form_log_probs(n, i, p, include_zero_rank)
                for n, i, p in zip(layer_widths, [n0, *layer_widths[:-1]], dens)
            ]
        else:
            rng = as_generator(seed)
            shapes = list(zip(layer_widths, [n0, *layer_widths[:-1]]))
            for n, i in shapes:
                _check_monte_carlo_size(n, i, max_bytes)
            log_probs = [
                _monte_carlo_log_probs(n, i, p, n_samples, rng, mask_kind, verbose)
                for (n, i), p in zip(shapes, dens)
            ]

    ln = _log_recursion(n0, layer_widths, log_probs)
    probs = [np.exp(lp) for lp in log_probs]
    point = [np.flatnonzero(p > 0) for p in probs]
    exact = None
    if all(len(pt) == 1 and np.isclose(p[pt[0]], 1.0, rtol=0, atol=1e-12) for pt, p in zip(point, probs)):
        try:
            exact = serra_bound(
                n0, layer_widths, ranks=[int(pt[0]) for pt in point], max_bytes=max_bytes, verbose=verbose
            )
        except BoundTooLargeError:
            exact = None  # documented: the log-space recursion gives log10; the integer is over budget
    # A fixed-rank bound is an integer: report its exact log rather than the float recursion's.
    log10 = int_log10(exact) if exact is not None else ln / _LN10
    ln = log10 * _LN10 if exact is not None else ln
    # A network has at least one region (docstring); an exact fixed-rank bound is an integer >= 1 already.
    unclamped = log10
    clamped = log10 < 0.0
    if clamped:
        log10, ln = 0.0, 0.0
    value = float(exact) if exact is not None and exact < 1e308 else (math.exp(ln) if ln < 709.0 else None)
    return SparseBoundResult(
        n0=n0,
        layer_widths=layer_widths,
        densities=[float(p) for p in dens],
        rank_model=model_name,
        include_output=bool(include_output),
        include_zero_rank=include_zero_rank,
        log10=log10,
        ln=ln,
        value=value,
        exact=exact,
        expected_ranks=[float(np.dot(np.arange(len(p)), p)) for p in probs],
        full_ranks=fulls,
        dense_log10=_serra_log10_float_cached(n0, tuple(layer_widths)),
        clamped=clamped,
        unclamped_log10=unclamped,
        rank_probabilities=probs,
    )


# ------------------------------------------------------------------------------------------- all bounds
@dataclasses.dataclass
class BoundsResult(Result):
    """Every region bound of one (pruned) model, over its hidden layers.

    Integers are exact; each has a ``*_log10`` companion. ``zaslavsky_log10[l]`` is the most regions layer
    ``l`` alone can cut its input into (``n_l`` hyperplanes in dimension ``min(n_0, …, n_{l-1})``), i.e. the
    factors of the product bound. ``montufar`` is None (with ``notes`` saying why) when a hidden layer is
    narrower than the input. ``sparse_closed_form_log10`` uses the model's actual per-layer densities,
    ``sparse_masks`` its actual ranks (exact). ``prefix_log10`` holds, for each bound, its value for the first
    ``l`` hidden layers (``l = 1..L``), which :meth:`plot` draws against the layer.

    ``montufar`` bounds the most regions a network of this *architecture* can have from below (Montúfar et
    al. construct weights that reach it); it says nothing about this network's own count, which its weights
    can leave as low as 1. The upper bounds hold for this network.

    ``layer_parts[l]`` names the model's layers that make hidden layer ``l``: one, or several with no
    activation between them, composed into one affine map (:func:`bounded_layers`); ``densities[l]`` is then
    the fraction of all their weights kept, and ``ranks[l]`` the rank of the composite matrix.
    """

    n0: int
    widths: list[int]
    n_out: int
    densities: list[float]
    ranks: list[int]
    full_ranks: list[int]
    zaslavsky_log10: list[float]
    montufar: int | None
    montufar_log10: float | None
    product: int
    product_log10: float
    serra: int
    serra_log10: float
    sparse_closed_form_log10: float | None
    sparse_masks: int
    sparse_masks_log10: float
    notes: list[str]
    prefix_log10: dict[str, list[float]] = field(repr=False, default_factory=dict)
    layer_parts: list[list[str]] = field(default_factory=list)

    def table(self) -> str:
        """The bounds as a Markdown table (log10 values)."""
        rows = [
            ("Montúfar et al. lower bound", self.montufar_log10),
            ("product bound", self.product_log10),
            ("Serra et al. upper bound", self.serra_log10),
            ("Cai et al. sparse bound, closed-form ranks", self.sparse_closed_form_log10),
            ("Cai et al. sparse bound, actual ranks", self.sparse_masks_log10),
        ]
        lines = ["| bound | log10 |", "|---|---|"]
        lines += [f"| {name} | {'n/a' if v is None else f'{v:.2f}'} |" for name, v in rows]
        return "\n".join(lines)

    def plot(self, ax=None):
        """log10 of each bound for the network truncated after hidden layer ``l``."""
        fig, ax = new_axes(ax)
        x = np.arange(1, len(self.widths) + 1)
        styles = [("o", "-"), ("s", "--"), ("^", "-."), ("x", ":"), ("D", (0, (5, 1, 1, 1)))]
        seen: dict[tuple, str] = {}
        overlaps = []
        for k, (name, vals) in enumerate(self.prefix_log10.items()):
            marker, ls = styles[k % len(styles)]
            # Equal bounds would hide all lines but the last: distinct markers (hollow, shrinking) and
            # linestyles keep each visible, and the legend says which coincide.
            ax.plot(x, vals, marker=marker, ls=ls, mfc="none", ms=9 - 1.5 * k, label=name)
            key = tuple(np.round(vals, 9))
            if key in seen:
                overlaps.append(f"{name} = {seen[key]}")
            else:
                seen[key] = name
        if overlaps:
            ax.text(
                0.02, 0.98, "overlapping: " + "; ".join(overlaps), transform=ax.transAxes, va="top",
                fontsize="small",
            )
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)
        ax.set_xticks(x)
        ax.set_xlabel("hidden layers kept (l)")
        ax.set_ylabel("log10 bound on regions")
        ax.set_title("widths " + "-".join(map(str, [self.n0, *self.widths])))
        ax.legend(fontsize="small")
        return ax


def bounds(
    model: torch.nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
) -> BoundsResult:
    """All region bounds of an actual (pruned) network, over its hidden layers.

    Widths come from the traced chain (:func:`bounded_layers`; a convolution counts its flattened output
    units, its bounds are valid but loose). Layers with no activation between them are one affine map and
    are bounded as one layer (``Linear(2, 8), Linear(8, 3), ReLU`` has 3 ReLUs in the plane: at most 7
    regions, not the 8-3 net's 259); ``notes`` name them. Residual, concatenating and max-pooling networks,
    and LeakyReLU ones, are refused with the reason: the bounds are not proved for them. The closed-form
    sparse bound models a random mask on one dense matrix, so it is only computed when every hidden layer is
    one ``Linear``; the actual-rank bound applies to any layer (a composed one through its composite
    matrix). ``input_shape`` (one sample's shape) is passed to the tracer, for conv nets.

    Without ``masks``, a weight that is exactly zero is absent (pruned = absent = zero): a network pruned by
    zeroing (``IMPResult.model_at``) gets the densities and bounds of the same network with its masks, as
    :func:`netgeom.topology_bound` reads it. Given masks win (a kept weight that happens to be 0 stays).

    >>> from netgeom.nets import mlp
    >>> b = bounds(mlp(2, [3, 3], 1, seed=0))
    >>> b.serra, b.product, b.montufar
    (40, 49, 7)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    n0, hidden, all_layers = _model_layers(model, masks, include_output=False, input_shape=input_shape)
    widths = [la.n_out for la in hidden]
    densities = [la.density for la in hidden]
    ranks = [int(torch.linalg.matrix_rank(la.weight)) for la in hidden]
    fulls = [min(a, b) for a, b in zip([n0, *widths[:-1]], widths)]
    notes: list[str] = []
    dims = np.minimum.accumulate([n0, *widths])
    zas = [int_log10(zaslavsky_bound(w, int(d))) for w, d in zip(widths, dims[:-1])]
    stacked = [la for la in all_layers if isinstance(la, ComposedLayer)]
    # Montúfar's construction needs each layer's map free; a run through a narrower layer restricts it to
    # rank <= its bottleneck, so the architecture may not reach the bound (Linear(2, 1), Linear(1, 8), ReLU:
    # 8 parallel lines, 9 regions, not Zaslavsky's 37).
    narrowed = [
        la for la in hidden if isinstance(la, ComposedLayer) and la.bottleneck < min(la.n_in, la.n_out)
    ]
    mont: int | None = None
    if narrowed:
        notes.append(
            f"Montúfar lower bound not given: {_stacked_message(narrowed[0])}, below both its sides, so "
            "the architecture cannot realise every such map and the construction is not proved for it"
        )
    else:
        try:
            mont = montufar_lower_bound(n0, widths)
        except ValueError as exc:
            notes.append(f"Montúfar lower bound not applicable: {exc}")
    for la in stacked:
        role = (
            "bounded as that one layer (the actual-rank bound with the composite matrix's rank)"
            if any(la is h for h in hidden) else "the output map, which adds no region"
        )
        notes.append(f"{_stacked_message(la)}: {role}")
    prod, serra = product_bound(n0, widths), serra_bound(n0, widths)
    linear = all(la.kind == "linear" for la in hidden)
    empty = [la for la in hidden if la.density == 0]
    closed = None
    hidden_stacked = [la for la in hidden if isinstance(la, ComposedLayer)]
    if hidden_stacked:
        linear = False
        notes.append(
            "closed-form sparse bound skipped: it models each layer as one dense matrix under a random mask, "
            f"but {_stacked_message(hidden_stacked[0])}, a product of masked matrices"
        )
    elif empty:
        linear = False
        notes.append(f"closed-form sparse bound skipped: {_disconnected(empty[0])}")
    elif linear:
        closed = sparse_bound(n0, widths, densities, rank_model="closed_form").log10
    else:
        notes.append("closed-form sparse bound skipped: it models masks of Linear layers only")
    masked = serra_bound(n0, widths, ranks=ranks)

    prefix: dict[str, list[float]] = {"product": [], "Serra": [], "sparse (actual ranks)": []}
    if linear:
        prefix["sparse (closed form)"] = []
    for l in range(1, len(widths) + 1):
        prefix["product"].append(int_log10(product_bound(n0, widths[:l])))
        prefix["Serra"].append(int_log10(serra_bound(n0, widths[:l])))
        prefix["sparse (actual ranks)"].append(int_log10(serra_bound(n0, widths[:l], ranks=ranks[:l])))
        if linear:
            prefix["sparse (closed form)"].append(sparse_bound(n0, widths[:l], densities[:l]).log10)
    return BoundsResult(
        n0=n0,
        widths=widths,
        n_out=all_layers[-1].n_out,
        densities=densities,
        ranks=ranks,
        full_ranks=fulls,
        zaslavsky_log10=zas,
        montufar=mont,
        montufar_log10=None if mont is None else int_log10(mont),
        product=prod,
        product_log10=int_log10(prod),
        serra=serra,
        serra_log10=int_log10(serra),
        sparse_closed_form_log10=closed,
        sparse_masks=masked,
        sparse_masks_log10=int_log10(masked),
        notes=notes,
        prefix_log10=prefix,
        layer_parts=[la.part_names if isinstance(la, ComposedLayer) else [la.name] for la in hidden],
    )


# ------------------------------------------------------------------------------------------- demo
def demo_section(ctx) -> str:
    """Markdown section of the demo report: bounds of the dense and pruned demo nets, and the sparse bound
    against density (uniform and bound-maximising allocations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .allocation import allocate_densities

    dense = bounds(ctx.model)
    pruned = bounds(ctx.pruned_model, ctx.masks)
    rows = [
        ("widths", "-".join(map(str, [dense.n0, *dense.widths])),
         "-".join(map(str, [pruned.n0, *pruned.widths]))),
        ("hidden-layer densities", ", ".join(f"{p:.3g}" for p in dense.densities),
         ", ".join(f"{p:.3g}" for p in pruned.densities)),
        ("ranks (full)", ", ".join(f"{r} ({f})" for r, f in zip(dense.ranks, dense.full_ranks)),
         ", ".join(f"{r} ({f})" for r, f in zip(pruned.ranks, pruned.full_ranks))),
    ]

    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"

    for name, attr in (
        ("Montúfar lower bound", "montufar_log10"),
        ("product bound", "product_log10"),
        ("Serra upper bound", "serra_log10"),
        ("sparse bound, closed-form ranks", "sparse_closed_form_log10"),
        ("sparse bound, actual ranks", "sparse_masks_log10"),
    ):
        rows.append((f"log10 {name}", fmt(getattr(dense, attr)), fmt(getattr(pruned, attr))))
    table = ["| | dense | pruned |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]

    n0, widths = dense.n0, dense.widths
    grid = np.logspace(-3, 0, 13 if ctx.quick else 25)
    uniform = [sparse_bound(n0, widths, float(p), verbose=ctx.verbose).log10 for p in grid]
    alloc_grid = grid[:: 3 if ctx.quick else 2]
    allocs = [
        allocate_densities(
            n0, widths, float(p), n_out=dense.n_out, verbose=ctx.verbose,
            # the grid over p_1 is the two-layer search; other depths take the coordinate search's defaults
            **({"n_grid": 21 if ctx.quick else 41} if len(widths) == 2 else {}),
        )
        for p in alloc_grid
    ]
    # a note that holds for both nets is said once, naming both
    notes: dict[str, list[str]] = {}
    for label, res in (("dense", dense), ("pruned", pruned)):
        for note in res.notes:
            notes.setdefault(note, []).append(label)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.semilogx(grid, uniform, "o-", label="uniform densities")
    ax1.semilogx(alloc_grid, [a.log10 for a in allocs], "s--", label="allocated (max bound)")
    ax1.axhline(dense.serra_log10, color="k", lw=0.8, label="dense Serra bound")
    hidden_sizes = [a * b for a, b in zip([n0, *widths[:-1]], widths)]
    overall = float(np.dot(pruned.densities, hidden_sizes) / sum(hidden_sizes))
    ax1.plot([overall], [pruned.sparse_masks_log10], "r*", ms=12, label="pruned demo net (actual ranks)")
    ax1.set_xlabel("density of the hidden layers' weights")
    ax1.set_ylabel("log10 sparse bound")
    ax1.set_title("sparse bound, " + "-".join(map(str, [n0, *widths])))
    ax1.legend(fontsize="small")
    mid = allocs[len(allocs) // 2]
    mid.plot(ax=ax2)
    fig.tight_layout()
    path = ctx.out_dir / "region_bounds.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    gain = max(a.log10 - a.uniform_log10 for a in allocs)
    return "\n".join(
        [
            "## Linear-region bounds",
            "",
            "Bounds on the number of activation regions over the hidden layers (the affine output layer adds "
            "none). The sparse bound is Cai et al.'s recursion (k = 0 rank term left out, as in their code); "
            "'actual ranks' uses the ranks of the masked weight matrices.",
            "",
            *table,
            "",
            *(f"- {' and '.join(labels)} net: {n}" for n, labels in notes.items()),
            "",
            "![sparse bound vs density](region_bounds.png)",
            "",
            f"Choosing per-layer densities to maximise the bound raises its log10 by at most {gain:.3g} over "
            f"uniform densities on this grid (at total density {mid.total_density:.3g} it picks "
            + ", ".join(f"{p:.3g}" for p in mid.densities)
            + (f"; the authors' three-point rule picks {', '.join(f'{p:.3g}' for p in mid.authors_densities)}"
               if mid.authors_densities is not None else "")
            + ").",
            "",
        ]
    )


def _n_kernel(layer: AffineLayer) -> int | str:
    """Number of weights in the layer's own parameter (a conv kernel), for messages."""
    return int(layer.kernel.numel()) if layer.kernel is not None else "no"


def _disconnected(layer: AffineLayer) -> str:
    return (
        f"the mask of layer '{layer.name}' ({layer.param_name}) removes every weight, so the network is "
        "disconnected there: that layer's pre-activations are constant (its bias), it and every later layer "
        "cut no region, and the regions are those of the layers before it (the actual-rank bound, rank 0 "
        "there, reduces to their bound)"
    )
