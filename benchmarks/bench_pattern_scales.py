"""Benchmark: ``count_patterns`` on rescalings that leave every ReLU sign as it was, against the same count at
scale 1 (the fastest way to the identical pattern set). Cases on 784-100-100-2: the input by ``2^e`` against
the first weights by ``2^-e``; the second layer (weights and bias) by ``2^e`` against the third weights by
``2^-e``; without biases, the input alone by ``2^e``. One row per case: both times, the ratio, whether the
pattern sets and multiplicities agree, and how many inputs went to rational arithmetic (``n_exact``; before
the any-scale norms every input of the ``2^+-600`` cases did, ~0.5-1 s each).

    python benchmarks/bench_pattern_scales.py --quick    # < 1 minute (8192 points per case)
    python benchmarks/bench_pattern_scales.py            # 65 536 points per case
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch

from netgeom import count_patterns, mlp


def _net(bias: bool):
    net = mlp(784, [100, 100], 2, seed=0).double()
    if not bias:
        with torch.no_grad():
            for mod in net:
                if isinstance(mod, torch.nn.Linear):
                    mod.bias.zero_()
    return net


def _case(net, kind: str, e: int, X: torch.Tensor):
    s = copy.deepcopy(net)
    with torch.no_grad():
        if kind == "first":
            s[0].weight.mul_(2.0**-e)
            return s, X * 2.0**e
        if kind == "middle":
            s[2].weight.mul_(2.0**e)
            s[2].bias.mul_(2.0**e)
            s[4].weight.mul_(2.0**-e)
            return s, X
    return s, X * 2.0**e  # "input": a net without biases is positively homogeneous


def _best(pairs, repeat: int):
    """Results and best-of-``repeat`` wall-clock times of each ``(net, X)``, the runs interleaved so that
    load from other jobs on a shared machine falls on both sides alike (after a warm-up: compiled kernels,
    int8 checks)."""
    for net, X in pairs:
        count_patterns(net, X[:512], verbose=False)
    best = [math.inf] * len(pairs)
    res = [None] * len(pairs)
    for _ in range(repeat):
        for i, (net, X) in enumerate(pairs):
            t = time.perf_counter()
            res[i] = count_patterns(net, X, verbose=False)
            best[i] = min(best[i], time.perf_counter() - t)
    return res, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timed runs per case")
    args = ap.parse_args()
    n = 8192 if args.quick else 65536
    X = torch.rand(n, 784, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cases = [
        (True, "first", -600), (True, "first", 600), (True, "first", -900), (True, "first", 900),
        (True, "middle", 600), (True, "middle", -600), (False, "input", -600), (False, "input", -1000),
        (False, "input", 900),
    ]
    print(f"{'case':34s} {'ours s':>8s} {'scale 1 s':>9s} {'ratio':>6s} {'agree':>6s} {'n_exact':>7s}")
    for bias, kind, e in cases:
        net = _net(bias)
        s, x = _case(net, kind, e, X)
        (res, ref), (t, t_ref) = _best([(s, x), (net, X)], args.repeat)
        agree = np.array_equal(res.patterns, ref.patterns)
        agree = agree and np.array_equal(res.multiplicities, ref.multiplicities)
        name = f"{kind} 2^{e}" + ("" if bias else " (no bias)")
        row = f"{name:34s} {t:8.3f} {t_ref:9.3f} {t / t_ref:6.2f} {str(agree):>6s} {res.n_exact:7d}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
