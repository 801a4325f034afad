"""Zeroth persistence of layer graphs: native (Prim / Borůvka) vs gudhi vs ripser vs scipy's MST.

Square-ish layers from 10^4 to ~1.5e7 edges, dense and 90%-pruned. Then whole chained network graphs of
MLPs (784-300-100-10, 784-100-100-10, 784-1000-1000-10; 784-2500-2500-10 in full mode; w̃ normalised over
the network): native (layer forests + merge, or one global Borůvka when every layer is sparse; the
"global" column always runs Borůvka on all edges) vs gudhi and ripser on the network's edge list.

Every backend gets the same normalised graph (graph construction is not timed); "agree" compares diagrams
as multisets (gudhi to 1e-12, ripser to 1e-6) and the scipy forest weight to ours (for networks also the
native per-layer+merge forest to the global Borůvka one, edge for edge). The target: native >= 10x faster
than the faster of gudhi and ripser on every dense layer of >= 1e6 edges.

    python benchmarks/bench_persistence.py --quick
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import minimum_spanning_tree

from netgeom.nets import mlp
from netgeom.pruning.masks import Masks
from netgeom.topology import layer_graph, network_graph, zeroth_persistence

SHAPES = [(100, 100), (300, 334), (1000, 1000), (2000, 2500), (3000, 3334), (3873, 3873)]
NETWORKS = [[784, 300, 100, 10], [784, 100, 100, 10], [784, 1000, 1000, 10], [784, 2500, 2500, 10]]


def timed(fn, *args, repeat=1, **kwargs):
    best, out = np.inf, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return best, out


def scipy_msf_weight(g):
    u, v, w, _ = g.edges()
    # 2 - w̃ in [1, 2]: no stored zeros, and a minimum tree of it is a maximum tree of w̃
    D = sparse.coo_matrix((2.0 - w, (u, v)), shape=(g.n_vertices,) * 2).tocsr()
    T = minimum_spanning_tree(D)
    return 2.0 * T.nnz - T.sum()


def scipy_forest_weight(n, u, v, w):
    T = minimum_spanning_tree(sparse.coo_matrix((2.0 - w, (u, v)), shape=(n, n)).tocsr())
    return 2.0 * T.nnz - T.sum()


def bench_networks(args, limit, rng):
    """Rows for whole network graphs; returns whether every row agreed."""
    print(f"\n{'network':>18} {'density':>7} {'edges':>9} {'native':>8} {'global':>8} {'gudhi':>8} "
          f"{'ripser':>8} {'scipy':>8} {'x best':>7} {'agree':>5}  method")
    ok_all = True
    for widths in NETWORKS:
        n_possible = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        if n_possible > limit:
            continue
        net = mlp(widths[0], widths[1:-1], widths[-1], seed=args.seed)
        for density in (1.0, 0.1):
            masks = Masks.ones(net)
            if density < 1.0:
                for k in masks:
                    masks[k] = torch.from_numpy(rng.random(tuple(masks[k].shape)) < density)
            G = network_graph(net, masks, normalize="network")
            edges = G.global_edges()
            repeat = 3 if n_possible < 2e6 else 1
            t_nat, d_nat = timed(zeroth_persistence, G, repeat=repeat)
            t_glo, d_glo = timed(zeroth_persistence, G, method="global")
            t_gud, d_gud = timed(zeroth_persistence, G, backend="gudhi")
            t_rip, d_rip = timed(zeroth_persistence, G, backend="ripser")
            t_sci, w_sci = timed(scipy_forest_weight, *edges)
            w_nat = sum(g.weights[d_nat.msf_masks[g.param_name]].sum() for g in G)
            agree = (
                all(np.array_equal(d_nat.msf_masks[k], d_glo.msf_masks[k]) for k in d_nat.msf_masks)
                and d_nat.equals(d_gud, atol=1e-12)
                and d_nat.equals(d_rip, atol=1e-6)
                and abs(w_sci - w_nat) < 1e-6 * max(1.0, w_sci)
            )
            ok_all &= agree
            ratio = min(t_gud, t_rip) / t_nat
            name = "-".join(map(str, widths))
            print(f"{name:>18} {density:>7.1f} {d_nat.n_edges:>9} {t_nat:>8.3f} {t_glo:>8.3f} {t_gud:>8.3f} "
                  f"{t_rip:>8.3f} {t_sci:>8.3f} {ratio:>7.1f} {str(agree):>5}  {d_nat.method}", flush=True)
    return ok_all


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="stop at ~1e6 edges (< 1 minute)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-edges", type=float, default=None, help="skip larger layers")
    ap.add_argument("--skip-ripser-above", type=float, default=2e7, help="ripser only up to this many edges")
    args = ap.parse_args(argv)
    limit = args.max_edges or (1.1e6 if args.quick else 2e7)
    rng = np.random.default_rng(args.seed)
    hdr = (f"{'shape':>12} {'density':>7} {'edges':>10} {'native':>8} {'method':>7} {'gudhi':>8} "
           f"{'ripser':>8} {'scipy':>8} {'x best':>7} {'agree':>5}")
    warm = layer_graph(rng.normal(size=(5, 5)))
    for b in ("native", "gudhi", "ripser"):  # first calls pay for imports; keep that out of the timings
        zeroth_persistence(warm, backend=b)
    print(hdr)
    ok_all = True
    for n_out, n_in in SHAPES:
        if n_out * n_in > limit:
            break
        W = rng.normal(size=(n_out, n_in))
        for density in (1.0, 0.1):
            mask = None if density == 1.0 else rng.random(W.shape) < density
            g = layer_graph(W, mask)
            repeat = 3 if g.n_edges < 2e6 else 1
            t_nat, d_nat = timed(zeroth_persistence, g, repeat=repeat)
            t_gud, d_gud = timed(zeroth_persistence, g, backend="gudhi")
            if g.n_edges <= args.skip_ripser_above:
                t_rip, d_rip = timed(zeroth_persistence, g, backend="ripser")
            else:
                t_rip, d_rip = np.inf, None
            t_sci, w_sci = timed(scipy_msf_weight, g)
            agree = (
                d_nat.equals(d_gud, atol=1e-12)
                and (d_rip is None or d_nat.equals(d_rip, atol=1e-6))
                and abs(w_sci - g.weights[d_nat.msf_mask].sum()) < 1e-6 * max(1.0, w_sci)
            )
            ratio = min(t_gud, t_rip) / t_nat
            ok_all &= agree
            target = density == 1.0 and g.n_edges >= 1e6
            flag = ("" if ratio >= 10 else " <10x") if target else ""
            print(f"{n_out:>5}x{n_in:<6} {density:>7.1f} {g.n_edges:>10} {t_nat:>8.3f} {d_nat.method:>7} "
                  f"{t_gud:>8.3f} {t_rip:>8.3f} {t_sci:>8.3f} {ratio:>7.1f} {str(agree):>5}{flag}",
                  flush=True)
    ok_all &= bench_networks(args, 2e6 if args.quick else (args.max_edges or 2e7), rng)
    print("all agree:", ok_all)


if __name__ == "__main__":
    main()
