"""Benchmark: exact kNN vs faiss's exact flat index (``IndexFlatL2``, float32) and the float32 matmul floor,
MLE(k = 5…20) + TwoNN vs scikit-dimension, and local PCA (k = 20, every rule) vs scikit-dimension's
``lPCA.fit_pw`` on the same neighbourhoods.

    python benchmarks/bench_dimension.py --quick      # < 1 minute
    python benchmarks/bench_dimension.py              # MNIST test split 10,000 × 784 + synthetic 20,000 × 784
    python benchmarks/bench_dimension.py --full       # adds a synthetic 70,000 × 784
    python benchmarks/bench_dimension.py --knn-only   # only the kNN table (MNIST 1000 ... 10,000, synthetic)
    python benchmarks/bench_dimension.py --knn-only --sizes 500,1000,1500,2000 --no-large --repeat 30
                                                      # small MNIST subsets only, best of 30
    python benchmarks/bench_dimension.py --knn-only --threads 1   # both libraries on one thread

faiss-cpu ships its own OpenBLAS (0.3.15 in faiss-cpu 1.15), too old to recognise recent AMD processors: left
alone it takes a generic SSE kernel there, and ``OPENBLAS_CORETYPE`` picks another. For faiss's fastest
products on an AVX-512 machine run ``OPENBLAS_CORETYPE=SkylakeX python benchmarks/bench_dimension.py ...``
(numpy's OpenBLAS then runs the kernel it picks by itself on such a machine). The header prints the kernel
each loaded BLAS runs.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path


def _check_coretype() -> None:
    """``OPENBLAS_CORETYPE`` naming an AVX-512 kernel (SkylakeX, for faiss's fastest products) on a machine
    without AVX-512 makes every OpenBLAS of the process die of an illegal instruction as numpy loads: say
    so instead (checked before numpy is imported)."""
    kernel = os.environ.get("OPENBLAS_CORETYPE", "").lower()
    if kernel not in ("skylakex", "cooperlake", "sapphirerapids"):
        return
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return  # (not Linux: nothing to check against)
    if "avx512f" not in flags:
        raise SystemExit(f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} needs AVX-512, which this "
                         "CPU lacks (OpenBLAS would die of an illegal instruction): run without it")


_check_coretype()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from netgeom.dimension import (  # noqa: E402
    MLE,
    LocalPCA,
    TwoNN,
    local_pca_spectra,
    nearest_neighbors,
    pca_rule_dimension,
)

K1, K2 = 5, 20


def matmul_floor(X: np.ndarray, chunk: int) -> float:
    """One float32 X @ X.T of the same size, in the same row chunks (bounded memory), by numpy's BLAS
    (faster than torch's on this machine, and the one netgeom's kNN uses on the CPU)."""
    X32 = X.astype(np.float32)
    t = time.perf_counter()
    for a in range(0, len(X32), chunk):
        X32[a : a + chunk] @ X32.T
    return time.perf_counter() - t


def _blas_kernels() -> list[str]:
    """Which kernel each BLAS library in the process runs (faiss's own OpenBLAS is loaded first)."""
    from threadpoolctl import threadpool_info

    try:
        import faiss  # noqa: F401
    except ImportError:
        pass
    return [f"{Path(i['filepath']).name.split('-')[0]} {i.get('version')}: {i.get('architecture', '?')}"
            for i in threadpool_info() if i.get("user_api") == "blas"] or ["none found"]


def faiss_knn(X: np.ndarray, k: int):
    """faiss's exact flat L2 index (float32, fused top-k): time and the k neighbour indices, self removed."""
    import faiss

    X32 = np.ascontiguousarray(X.astype(np.float32))
    t = time.perf_counter()
    index = faiss.IndexFlatL2(X32.shape[1])
    index.add(X32)
    _, idx = index.search(X32, k + 1)
    sec = time.perf_counter() - t
    # drop the point itself (first in its list unless an exact tie moved it)
    own = idx == np.arange(len(X))[:, None]
    own[~own.any(axis=1), -1] = True
    return sec, idx[~own].reshape(len(X), k)


def brute_kth(X: np.ndarray, r: int, k: int) -> tuple[np.ndarray, float]:
    """float64 direct distances from point ``r`` (self at inf) and the k-th smallest."""
    d = np.sqrt(np.einsum("ij,ij->i", X - X[r], X - X[r]))
    d[r] = np.inf
    return d, np.partition(d, k - 1)[k - 1]


def knn_row(name: str, X: np.ndarray, repeat: int) -> None:
    """One table row: exact kNN (k = K2) by netgeom and by faiss, best of ``repeat`` interleaved runs.

    Each run is preceded by a 0.1 s pause: BLAS and OpenMP worker threads spin for a while after a call,
    and the next library would otherwise share the cores with the previous one's idle spinners."""
    runs_ours, runs_faiss, cpu_ours, cpu_faiss = [], [], [], []
    for _ in range(repeat):
        time.sleep(0.1)
        t, c = time.perf_counter(), time.process_time()
        g = nearest_neighbors(X, K2, duplicates="keep")
        runs_ours.append(time.perf_counter() - t)
        cpu_ours.append(time.process_time() - c)
        time.sleep(0.1)
        c = time.process_time()
        t_f, idx_f = faiss_knn(X, K2)
        cpu_faiss.append(time.process_time() - c)
        runs_faiss.append(t_f)
    t_ours, t_faiss = min(runs_ours), min(runs_faiss)
    ratio_med = float(np.median(runs_faiss) / np.median(runs_ours))
    # CPU time (all threads) is what a loaded machine shares out: its ratio is steadier than wall time's
    cpu_ratio = float(np.median(cpu_faiss) / np.median(cpu_ours))
    same = np.array([set(a) == set(b) for a, b in zip(g.indices, idx_f)])
    # where the sets differ, float64 brute force on those rows says who is right (a set is right when all
    # its members lie within the k-th float64 distance and one lies at it)
    rows = np.flatnonzero(~same)
    ours_right = faiss_right = 0
    for r in rows:
        d, kth = brute_kth(X, r, K2)
        ours_right += bool(np.max(d[g.indices[r]]) == kth)
        faiss_right += bool(np.max(d[idx_f[r]]) == kth)
    load = os.getloadavg()[0]
    ok_ours, ok_faiss = f"{ours_right}/{len(rows)}", f"{faiss_right}/{len(rows)}"
    print(f"{name:>24} {len(X):>6} {t_ours:>9.4f} {t_faiss:>9.4f} {t_faiss / t_ours:>6.2f}x "
          f"{ratio_med:>6.2f}x {1e3 * np.median(cpu_ours):>7.1f} {1e3 * np.median(cpu_faiss):>7.1f} "
          f"{cpu_ratio:>6.2f}x "
          f"{int(same.sum()):>6}/{len(same):<6} {ok_ours:>9} {ok_faiss:>9} {g.n_fallback:>5} {load:>5.1f}",
          flush=True)


KNN_HEADER = (f"{'exact kNN k=20':>24} {'n':>6} {'netgeom':>9} {'faiss':>9} {'ratio':>7} {'median':>7} "
              f"{'cpu ms':>7} {'faiss':>7} {'cpu r.':>7} "
              f"{'sets equal':>13} "
              f"{'ours ok':>9} {'faiss ok':>9} {'fallb':>5} {'load':>5}")


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


# our rule name -> skdim's ver
LPCA_RULES = dict(fo="FO", fan="Fan", maxgap="maxgap", kaiser="Kaiser", broken_stick="broken_stick")


def lpca(X: np.ndarray, g, n_ref: int, rules: dict[str, str]):
    """lPCA at k = K2: rule FO on all points, and ours vs skdim's ``fit_pw`` on the first ``n_ref`` points.

    skdim fits one scikit-learn PCA (an SVD) per point; on this 2-core machine one 20 x 784 fit takes from 2
    to 30 ms depending on load (BLAS threads), hence the small ``n_ref``.
    """
    t = time.perf_counter()
    fo_all = LocalPCA(k=K2).fit(X, neighbors=g).dimension_
    t_all = time.perf_counter() - t
    idx = g.indices[:n_ref, :K2]
    t = time.perf_counter()
    spectra = local_pca_spectra(X, idx)
    ours = {r: pca_rule_dimension(spectra, r) for r in rules}
    t_ours = time.perf_counter() - t
    import skdim

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {
            r: skdim.id.lPCA(ver=v).fit_pw(X, precomputed_knn=idx, n_neighbors=K2).dimension_pw_
            for r, v in rules.items()
        }
    t_ref = time.perf_counter() - t
    same = {r: float(np.mean(ours[r] == ref[r])) for r in rules}
    print(f"  lPCA k={K2} rule FO, all {len(X)} points (with graph check): {t_all:6.2f} s   d = {fo_all:.3f}")
    print(f"  lPCA {len(rules)} rule(s) on {n_ref} points: ours {t_ours:6.2f} s, scikit-dimension "
          f"{t_ref:6.2f} s, speed-up {t_ref / t_ours:6.1f}x")
    print("  lPCA fraction of points with identical estimates: "
          + ", ".join(f"{r} {v:.4f}" for r, v in same.items()) + f"  agree: {min(same.values()) == 1.0}")


def run(name: str, X: np.ndarray, skip_reference: bool, n_lpca: int = 0, rules=LPCA_RULES):
    n = len(X)
    chunk = int(min(max(2**25 // n, 16), n))
    print(f"\n{name}: {X.shape[0]} x {X.shape[1]}")
    floor = matmul_floor(X, chunk)
    t_all, t_knn, mle, two, g = ours(X)
    print(f"  {name}", end="  ")
    print(f"({g.n_dropped} duplicates dropped, {g.n_fallback} fallback rows)")
    print(f"  float32 X @ X.T floor : {floor:8.2f} s")
    print(f"  exact kNN (k={K2})      : {t_knn:8.2f} s   ratio to floor {t_knn / floor:5.2f}")
    print(f"  ours MLE k={K1}..{K2} + TwoNN (incl. kNN): {t_all:8.2f} s")
    if skip_reference:
        return
    Xr = X[g.kept]
    t_ref, mle_ref, two_ref = reference(Xr)
    err = max(max(abs(mle[k] / mle_ref[k] - 1) for k in mle), abs(two / two_ref - 1))
    print(f"  scikit-dimension same : {t_ref:8.2f} s   speed-up {t_ref / t_all:5.1f}x  (target >= 5)")
    print(f"  max relative difference of the 17 estimates: {err:.2e}  agree(1e-6): {err < 1e-6}")
    print(f"  MLE(k=20) {mle[K2]:.3f} vs {mle_ref[K2]:.3f};  TwoNN {two:.3f} vs {two_ref:.3f}")
    if n_lpca:
        lpca(Xr, g, min(n_lpca, len(Xr)), rules)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer points (< 1 minute)")
    p.add_argument("--full", action="store_true", help="add a synthetic 70,000 x 784 (kNN and floor only)")
    p.add_argument("--knn-only", action="store_true", help="only the kNN table (no estimators, no lPCA)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved runs per kNN row (best of)")
    p.add_argument("--sizes", default=None,
                   help="comma-separated MNIST subset sizes of the kNN table (default 1000,2000,5000; "
                        "--quick 1000,2000)")
    p.add_argument("--no-large", action="store_true",
                   help="leave out the kNN table's large rows (the MNIST test split, the synthetic set)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for both libraries (torch.set_num_threads, faiss.omp_set_num_threads)")
    p.add_argument("--mnist", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(a.threads)
        except ImportError:
            pass
    print(f"torch threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, load average at start: "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print("BLAS kernels: " + ", ".join(_blas_kernels()))
    n_syn = 2000 if a.quick else 20000
    n_lpca = 60 if a.quick else 2000  # skdim's lPCA.fit_pw fits one sklearn PCA per point: slow
    rules = {r: LPCA_RULES[r] for r in ("fo", "fan")} if a.quick else LPCA_RULES
    # a curved 16-D manifold in 784-D with mild noise: realistic neighbour structure
    from netgeom.data.synthetic import make_curved_manifold

    syn = make_curved_manifold(16, 784, n_train=n_syn, n_test=1, noise=0.05, seed=a.seed)
    syn = syn.X_train.double().numpy()
    mn = None
    try:
        from netgeom.data.datasets import load_mnist

        m = load_mnist(a.mnist)
        mn = torch.cat([m.X_train, m.X_test]).reshape(-1, 784).double().numpy()
    except FileNotFoundError as exc:
        print(f"MNIST skipped: {exc}")
    faiss_knn(syn[:50], K2)  # first calls pay for imports
    nearest_neighbors(syn[:50], K2)
    print(f"\n# times in s, best of {a.repeat} interleaved runs; ratio = faiss / netgeom (> 1: netgeom "
          "faster); median = the same ratio of the median times; cpu ms = median CPU time of all threads "
          "(ms; process time) and cpu r. its ratio; sets equal = rows whose k-sets agree; "
          "where they differ, 'ok' = rows where that side's "
          "set is the float64 brute-force kNN; load = 1-min load average after the row (2 cores)")
    print(KNN_HEADER)
    if mn is not None:
        sizes = (1000, 2000) if a.quick else (1000, 2000, 5000)
        if a.sizes:
            sizes = [int(x) for x in a.sizes.split(",")]
        for size in sizes:  # small sets: random subsets of the test split
            knn_row("MNIST subset", mn[np.sort(rng.permutation(len(mn))[:size])], a.repeat)
        if not (a.quick or a.no_large):
            knn_row("MNIST test split", mn, a.repeat)
    if not a.no_large:
        knn_row("synthetic curved", syn, a.repeat)
    if a.full:
        big = make_curved_manifold(16, 784, n_train=70000, n_test=1, noise=0.05, seed=a.seed)
        knn_row("synthetic curved (full)", big.X_train.double().numpy(), 1)
    if a.knn_only:
        return
    if mn is not None:
        if a.quick:
            mn = mn[rng.permutation(len(mn))[:2000]]
        run("MNIST test split", mn, False, n_lpca=n_lpca, rules=rules)
    run("synthetic curved", syn, skip_reference=False, n_lpca=n_lpca, rules=rules)


if __name__ == "__main__":
    main()
