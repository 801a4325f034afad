"""Benchmark: Serra bound by dynamic program vs enumeration of J; timings of the bounds at MNIST widths;
time and peak memory on wide layers against the previous full-width programs.

    python benchmarks/bench_bounds.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
import tracemalloc

import numpy as np
from scipy.special import gammaln, logsumexp

from netgeom.regions.allocation import allocate_densities
from netgeom.regions.bounds import (
    BoundTooLargeError,
    int_log10,
    serra_bound,
    serra_bound_log10,
    sparse_bound,
)


def serra_enumerate(n0, widths):
    """The reference: list every j in the box, keep those in J, sum the products of binomials."""
    total = 0
    for j in itertools.product(*[range(w + 1) for w in widths]):
        cap, ok = n0, True
        for jl, nl in zip(j, widths):
            if jl > min(cap, nl):
                ok = False
                break
            cap = min(cap, nl - jl)
        if ok:
            total += math.prod(math.comb(n, x) for n, x in zip(widths, j))
    return total


def serra_full_row(n0, widths):
    """The previous Serra program: the whole binomial row of every layer, all n0 + 1 states."""
    count = [0] * n0 + [1]
    for n in widths:
        top = len(count) - 1
        row = [1] * (n + 1)
        for j in range(n):
            row[j + 1] = row[j] * (n - j) // (j + 1)
        partial = list(itertools.accumulate(row))
        suffix = list(itertools.accumulate(count[::-1]))[::-1] + [0]
        new = []
        for m in range(min(top, n) + 1):
            lo = max(m + 1, n - m)
            new.append(count[m] * partial[min(m, n - m)] + (row[n - m] * suffix[lo] if lo <= top else 0))
        count = new
    return sum(count)


def log_recursion_dense(n0, widths, log_probs):
    """The previous sparse recursion: dense (d, k) and (m, j) tables over the full widths."""
    ins = [n0, *widths[:-1]]
    log_next = np.zeros(widths[-1] + 1)
    for l in range(len(widths) - 1, -1, -1):
        n, lp = widths[l], np.asarray(log_probs[l], float)
        kmax, dmax = len(lp) - 1, ins[l]
        mmax = min(kmax, dmax, n)
        m, j = np.arange(mmax + 1)[:, None], np.arange(mmax + 1)[None, :]
        logc = gammaln(n + 1) - gammaln(j + 1) - gammaln(n - j + 1)
        terms = np.where(j <= m, logc + log_next[np.clip(np.minimum(n - j, m), 0, None)], -np.inf)
        log_g = logsumexp(terms, axis=1)
        d = np.arange(dmax + 1)[:, None] if l > 0 else np.array([[n0]])
        idx = np.minimum(np.minimum(np.arange(kmax + 1)[None, :], d), mmax)
        log_next = logsumexp(lp[None, :] + log_g[idx], axis=1)
    return float(log_next[0])


def measured(fn):
    """(seconds, peak traced bytes, result or the exception's class name) of one call."""
    t = time.perf_counter()
    try:
        out = fn()
    except (MemoryError, BoundTooLargeError) as exc:
        out = type(exc).__name__
    sec = time.perf_counter() - t
    tracemalloc.start()
    try:
        fn()
    except (MemoryError, BoundTooLargeError):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return sec, peak, out


def best_time(fn, repeat=5):
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller enumeration sizes (< 1 minute)")
    args = ap.parse_args()

    print("Serra bound: DP vs enumeration of J (n0 = 4, four hidden layers of width w)")
    print(f"{'w':>4} {'|box|':>10} {'enum s':>10} {'DP s':>10} {'ratio':>10} {'equal':>6}")
    limit = 10.0 if args.quick else 60.0
    for w in (2, 4, 8, 12, 16, 24, 32, 48, 64, 96):
        widths = [w] * 4
        t_dp, dp = best_time(lambda widths=widths: serra_bound(4, widths))
        t_en, en = best_time(lambda widths=widths: serra_enumerate(4, widths), repeat=1)
        ratio = t_en / t_dp
        print(f"{w:>4} {(w + 1) ** 4:>10} {t_en:>10.4f} {t_dp:>10.6f} {ratio:>10.0f} {str(dp == en):>6}")
        if t_en * ((1.5 * w + 1) / (w + 1)) ** 4 > limit:
            print(f"     (next size would take > {limit:.0f} s by enumeration; stopping)")
            break

    print("\nTimings at 784-400-400-10 (target: bounds < 50 ms, allocation < 1 s)")
    t, s = best_time(lambda: serra_bound(784, [400, 400]))
    print(f"serra_bound(784, [400, 400])            {t * 1e3:8.2f} ms   log10 = {int_log10(s):.4f}")
    t, s = best_time(lambda: serra_bound(784, [400, 400, 10]))
    print(f"serra_bound(784, [400, 400, 10])        {t * 1e3:8.2f} ms   log10 = {int_log10(s):.4f}")
    t, r = best_time(lambda: sparse_bound(784, [400, 400], [0.01, 0.01]))
    print(f"sparse_bound closed form, hidden only   {t * 1e3:8.2f} ms   log10 = {r.log10:.4f}")
    t, r = best_time(lambda: sparse_bound(784, [400, 400], [0.01, 0.01], include_output=True, n_out=10))
    print(f"sparse_bound closed form, with output   {t * 1e3:8.2f} ms   ln    = {r.ln:.4f}")
    t, r = best_time(lambda: sparse_bound(784, [400, 400], 1.0))
    same = r.exact == serra_bound(784, [400, 400])
    print(f"sparse_bound at density 1 (== Serra)    {t * 1e3:8.2f} ms   equal = {same}")
    n = 4 if args.quick else 32
    t, r = best_time(
        lambda: sparse_bound(784, [400, 400], [0.01, 0.01], rank_model="monte_carlo", n_samples=n, seed=0), 1
    )
    print(f"sparse_bound Monte Carlo ({n} samples)   {t * 1e3:8.0f} ms   log10 = {r.log10:.4f}")
    for td in (1e-2, 1e-3, 1e-4):
        t, a = best_time(
            lambda td=td: allocate_densities(784, [400, 400], td, include_output=True, n_out=10), 2
        )
        print(
            f"allocate_densities total {td:g}: {t:6.3f} s, {a.n_evaluated} evaluations, p = "
            f"{[round(p, 6) for p in a.densities]}, ln bound {a.log10 * math.log(10):.3f} vs uniform "
            f"{a.uniform_log10 * math.log(10):.3f}, authors' rule {a.authors_log10 * math.log(10):.3f}"
        )

    print("\nWide layers: time and peak traced memory, ours vs the previous full-width program")
    print("(previous = whole binomial rows / dense (d, k) tables; 'skipped' = would need > 4 GB)")
    print(f"{'case':<48} {'ours s':>8} {'ours MB':>9} {'prev s':>8} {'prev MB':>9} {'ratio':>7} {'equal':>6}")

    def sparse_prev(n0, widths, p):
        r = sparse_bound(n0, widths, p, verbose=False)
        with np.errstate(divide="ignore"):
            return log_recursion_dense(n0, widths, [np.log(q) for q in r.rank_probabilities])

    cases = [
        ("serra_bound(784, [10^4]*2)", lambda: serra_bound(784, [10**4] * 2),
         lambda: serra_full_row(784, [10**4] * 2)),
        ("serra_bound(784, [10^6]*2)", lambda: serra_bound(784, [10**6] * 2), None),
        ("serra_bound(10^4, [10^4]*2)", lambda: serra_bound(10**4, [10**4] * 2),
         lambda: serra_full_row(10**4, [10**4] * 2)),
        ("serra_bound(10^6, [10^6]*2) (refused)", lambda: serra_bound(10**6, [10**6] * 2), None),
        ("serra_bound_log10(10^6, [10^6]*2, exact=False)",
         lambda: serra_bound_log10(10**6, [10**6] * 2, exact=False), None),
        ("sparse_bound(784, [3000]*2, 0.01).ln", lambda: sparse_bound(784, [3000] * 2, 0.01).ln,
         lambda: sparse_prev(784, [3000] * 2, 0.01)),
        ("sparse_bound(784, [30000]*2, 0.1)", lambda: sparse_bound(784, [30000] * 2, 0.1).log10, None),
        ("sparse_bound(784, [30000]*2, 1e-4)", lambda: sparse_bound(784, [30000] * 2, 1e-4).log10, None),
        ("sparse_bound(10^6, [10^6]*2, 0.01)", lambda: sparse_bound(10**6, [10**6] * 2, 0.01).log10, None),
        ("allocate_densities(784, [2000]*2, 0.01)",
         lambda: allocate_densities(784, [2000] * 2, 0.01, n_out=10).densities, None),
    ]
    if not args.quick:
        cases.insert(3, ("serra_bound(3*10^4, [3*10^4]*2)", lambda: serra_bound(30000, [30000] * 2), None))
    for name, ours, prev in cases:
        t1, m1, v1 = measured(ours)
        if prev is None:
            print(f"{name:<48} {t1:>8.3f} {m1 / 1e6:>9.1f} {'skipped':>8} {'':>9} {'':>7} {'':>6}")
            continue
        t2, m2, v2 = measured(prev)
        same = v1 == v2 if isinstance(v1, int) else abs(v1 - v2) <= 1e-12 * abs(v2)
        print(
            f"{name:<48} {t1:>8.3f} {m1 / 1e6:>9.1f} {t2:>8.3f} {m2 / 1e6:>9.1f} {t2 / t1:>7.1f} "
            f"{str(same):>6}"
        )


if __name__ == "__main__":
    main()
