"""Benchmark: exact kNN vs the float32 matmul floor, and MLE(k = 5…20) + TwoNN vs scikit-dimension.

    python benchmarks/bench_dimension.py --quick      # < 1 minute
    python benchmarks/bench_dimension.py              # MNIST test split 10,000 × 784 + synthetic 20,000 × 784
    python benchmarks/bench_dimension.py --full       # adds a synthetic 70,000 × 784
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from netgeom.dimension import MLE, TwoNN, nearest_neighbors

K1, K2 = 5, 20


def matmul_floor(X: np.ndarray, chunk: int) -> float:
    """One float32 X @ X.T of the same size, in the same row chunks (bounded memory)."""
    X32 = torch.from_numpy(X.astype(np.float32))
    t = time.perf_counter()
    for a in range(0, len(X32), chunk):
        X32[a : a + chunk] @ X32.T
    return time.perf_counter() - t


def ours(X: np.ndarray):
    t = time.perf_counter()
    g = nearest_neighbors(X, K2)
    t_knn = time.perf_counter() - t
    mle = {k: MLE(k=k, variant="mackay_ghahramani").fit(neighbors=g).dimension_ for k in range(K1, K2 + 1)}
    two = TwoNN().fit(neighbors=g).dimension_
    return time.perf_counter() - t, t_knn, mle, two, g


def reference(X: np.ndarray):
    import skdim

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mle = {k: skdim.id.MLE().fit(X, n_neighbors=k).dimension_ for k in range(K1, K2 + 1)}
        two = skdim.id.TwoNN().fit(X).dimension_
    return time.perf_counter() - t, mle, two


def run(name: str, X: np.ndarray, skip_reference: bool):
    n = len(X)
    chunk = int(min(max(2**25 // n, 16), n))
    floor = matmul_floor(X, chunk)
    t_all, t_knn, mle, two, g = ours(X)
    print(f"\n{name}: {X.shape[0]} x {X.shape[1]}", end="  ")
    print(f"({g.n_dropped} duplicates dropped, {g.n_fallback} fallback rows)")
    print(f"  float32 X @ X.T floor : {floor:8.2f} s")
    print(f"  exact kNN (k={K2})      : {t_knn:8.2f} s   ratio to floor {t_knn / floor:5.2f}  (target <= 2)")
    print(f"  ours MLE k={K1}..{K2} + TwoNN (incl. kNN): {t_all:8.2f} s")
    if skip_reference:
        return
    Xr = X[g.kept]
    t_ref, mle_ref, two_ref = reference(Xr)
    err = max(max(abs(mle[k] / mle_ref[k] - 1) for k in mle), abs(two / two_ref - 1))
    print(f"  scikit-dimension same : {t_ref:8.2f} s   speed-up {t_ref / t_all:5.1f}x  (target >= 5)")
    print(f"  max relative difference of the 17 estimates: {err:.2e}  agree(1e-6): {err < 1e-6}")
    print(f"  MLE(k=20) {mle[K2]:.3f} vs {mle_ref[K2]:.3f};  TwoNN {two:.3f} vs {two_ref:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer points (< 1 minute)")
    p.add_argument("--full", action="store_true", help="add a synthetic 70,000 x 784 (kNN and floor only)")
    p.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    print(f"torch threads: {torch.get_num_threads()}")
    n_syn = 4000 if a.quick else 20000
    # a curved 16-D manifold in 784-D with mild noise: realistic neighbour structure
    from netgeom.data.synthetic import make_curved_manifold

    syn = make_curved_manifold(16, 784, n_train=n_syn, n_test=1, noise=0.05, seed=a.seed)
    syn = syn.X_train.double().numpy()
    try:
        from netgeom.data.datasets import load_mnist

        m = load_mnist(a.mnist)
        mn = torch.cat([m.X_train, m.X_test]).reshape(-1, 784).double().numpy()
        if a.quick:
            mn = mn[rng.permutation(len(mn))[:3000]]
        run("MNIST test split", mn, skip_reference=False)
    except FileNotFoundError as exc:
        print(f"MNIST skipped: {exc}")
    run("synthetic curved", syn, skip_reference=False)
    if a.full:
        big = make_curved_manifold(16, 784, n_train=70000, n_test=1, noise=0.05, seed=a.seed)
        run("synthetic curved (full)", big.X_train.double().numpy(), skip_reference=True)


if __name__ == "__main__":
    main()
