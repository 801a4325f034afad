"""Benchmark: Serra bound by dynamic program vs enumeration of J; timings of the bounds at MNIST widths.

    python benchmarks/bench_bounds.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

from netgeom.regions.allocation import allocate_densities
from netgeom.regions.bounds import int_log10, serra_bound, sparse_bound


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
    n = 8 if args.quick else 32
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


if __name__ == "__main__":
    main()
