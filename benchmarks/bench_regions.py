"""Exact slice count vs grid sampling of the same slice.

For MLPs ``n0 -> w -> w -> 10`` (w in 100, 200, 400) on a 40-D (MNIST-1D) and a 64-D (digits) input, the
plane through three training inputs (Cai et al. 2023) is cut into its activation regions exactly
(``regions_on_slice``) and sampled on a ``grid × grid`` lattice (``count_patterns``, streamed). Prints both
times, their ratio, both counts, whether every grid pattern is an exact region (it must be), and how many
exact regions the grid misses.

    python benchmarks/bench_regions.py            # 1000 x 1000 grid, widths 100, 200, 400
    python benchmarks/bench_regions.py --quick    # 300 x 300 grid, width 100 only
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from netgeom.data.datasets import load_digits, load_mnist1d
from netgeom.nets import mlp
from netgeom.regions.exact import plane_through, regions_on_slice
from netgeom.regions.patterns import count_patterns, pack_patterns


def _train(net, X, y, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (128,))
        loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _grid_batches(x0, d1, d2, box, n: int, rows_per_batch: int):
    u = np.linspace(box[0], box[1], n)
    v = np.linspace(box[2], box[3], n)
    base = torch.as_tensor(x0)
    D = torch.as_tensor(np.stack([d1, d2]))
    for i in range(0, n, rows_per_batch):
        vv = v[i : i + rows_per_batch]
        uv = torch.as_tensor(np.stack(np.meshgrid(u, vv), axis=-1).reshape(-1, 2))
        yield base + uv @ D


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300x300 grid and width 100 only (< 1 minute)")
    ap.add_argument("--grid", type=int, default=None, help="grid points per side (default 1000, quick 300)")
    ap.add_argument("--widths", type=int, nargs="*", default=None)
    ap.add_argument(
        "--train-steps", type=int, default=300, help="Adam steps before counting (0 = random init)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    grid = args.grid or (300 if args.quick else 1000)
    widths = args.widths or ([100] if args.quick else [100, 200, 400])
    torch.set_num_threads(2)
    datasets = [load_mnist1d(seed=args.seed, num_samples=2000).flat(), load_digits(seed=args.seed).flat()]
    print(f"grid {grid}x{grid} = {grid * grid} points; nets trained {args.train_steps} Adam steps")
    header = (
        f"{'data':>8} {'n0':>3} {'width':>6} {'exact':>8} {'grid':>8} {'missed':>7} {'t_exact':>8} "
        f"{'t_grid':>8} {'ratio':>6}  grid ⊆ exact"
    )
    print(header)
    for ds in datasets:
        n0 = ds.X_train.shape[1]
        X = ds.X_train.reshape(len(ds.X_train), -1).numpy().astype(np.float64)
        x0, d1, d2, box = plane_through(X[0], X[1], X[2], margin=0.25)
        for w in widths:
            net = mlp(n0, [w, w], ds.n_classes, seed=args.seed)
            if args.train_steps:
                _train(net, ds.X_train, ds.y_train, args.train_steps, args.seed)
            t0 = time.perf_counter()
            ex = regions_on_slice(net, x0, d1, d2, box)
            t_ex = time.perf_counter() - t0
            t0 = time.perf_counter()
            gr = count_patterns(net, _grid_batches(x0, d1, d2, box, grid, max(1, 20_000 // grid)))
            t_gr = time.perf_counter() - t0
            exact_set = {r.tobytes() for r in pack_patterns(ex.patterns)}
            grid_set = {r.tobytes() for r in gr.patterns}
            subset = grid_set <= exact_set
            missed = len(exact_set - grid_set)
            print(
                f"{ds.name:>8} {n0:>3} {w:>6} {ex.count:>8} {gr.count:>8} {missed:>7} {t_ex:>8.2f} "
                f"{t_gr:>8.2f} {t_ex / t_gr:>6.2f}  {subset and ex.count >= gr.count}",
                flush=True,
            )


if __name__ == "__main__":
    main()
