"""Benchmark: cost of masking in IMP against plain training, and against torch.nn.utils.prune.

On the same data (MNIST-1D), model (40-100-100-10 MLP), schedule and masks (IMP level ``r`` density
``0.8^r``), times:

- plain: dense training of the same epochs, no masks;
- imp level: one IMP level = magnitude pruning + rewinding + masked training (our Trainer: masked gradients
  and weights zeroed in place with one fused ``_foreach_mul_`` each per step);
- torch prune: the same masks through ``torch.nn.utils.prune.custom_from_mask`` (a forward pre-hook
  recomputes ``weight = weight_orig * mask`` every forward), same trainer, no netgeom masks.

Times are the minimum (and median) over interleaved repeats. Prints the ratios (target: imp level / plain
<= 1.15) and whether the masked networks agree (same masks, effective weights equal up to float rounding,
same accuracy).

    python benchmarks/bench_pruning.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils import prune as tprune

from netgeom.data.datasets import load_mnist1d
from netgeom.nets import mlp
from netgeom.pruning import magnitude_prune
from netgeom.training import TrainConfig, Trainer, evaluate


def timed_interleaved(fns, repeats):
    """Run the candidates in turn, ``repeats`` rounds; return per candidate (min, median, last output).

    Interleaving exposes every candidate to the same background load; the minimum is the least disturbed
    measurement on shared cores (the median is printed too)."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [(min(t), statistics.median(t), o) for t, o in zip(times, outs)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs and repeats (< 1 minute)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--level", type=int, default=3, help="IMP level whose density 0.8^level is used")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: fair on shared cores)")
    args = p.parse_args(argv)
    epochs = args.epochs or (10 if args.quick else 30)
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)

    data = load_mnist1d(seed=0, num_samples=5000)
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=0.1, schedule="cosine", seed=0)
    dense = mlp(40, [100, 100], 10, seed=0)
    Trainer(dense, data, cfg, verbose=False).run()
    init = mlp(40, [100, 100], 10, seed=0).state_dict()
    sparsity = 1 - 0.8**args.level

    def plain():
        m = mlp(40, [100, 100], 10, seed=0)
        Trainer(m, data, cfg, verbose=False).run()
        return m

    def imp_level():
        masks = magnitude_prune(dense, sparsity, relative_to="all")
        m = mlp(40, [100, 100], 10, seed=0)
        m.load_state_dict(init)  # rewind to initialisation
        Trainer(m, data, cfg, masks=masks, verbose=False).run()
        return m, masks

    def torch_prune():
        masks = magnitude_prune(dense, sparsity, relative_to="all")
        m = mlp(40, [100, 100], 10, seed=0)
        m.load_state_dict(init)
        mods = dict(m.named_modules())
        for name, mk in masks.items():
            tprune.custom_from_mask(mods[name.rsplit(".", 1)[0]], "weight", mk)
        Trainer(m, data, cfg, verbose=False).run()
        return m, masks

    plain()  # warm-up
    (t_plain, md_plain, _), (t_imp, md_imp, (m_imp, masks)), (t_tp, md_tp, (m_tp, _)) = timed_interleaved(
        [plain, imp_level, torch_prune], repeats
    )

    w_imp = {k: v for k, v in m_imp.state_dict().items()}
    w_tp = {k.replace("_orig", ""): v for k, v in m_tp.state_dict().items() if not k.endswith("_mask")}
    diff = 0.0
    for k, v in w_imp.items():
        other = w_tp[k] * masks[k] if k in masks else w_tp[k]
        diff = max(diff, float((v - other).abs().max()))
    acc_imp = evaluate(m_imp, data.X_test, data.y_test)[1]
    acc_tp = evaluate(m_tp, data.X_test, data.y_test)[1]
    agree = diff < 1e-4 and abs(acc_imp - acc_tp) <= 0.005

    print(f"MNIST-1D 40-100-100-10 MLP, {epochs} epochs, batch {args.batch_size}, "
          f"density {0.8 ** args.level:.4f} (IMP level {args.level}), {args.threads} thread(s), "
          f"min (median) of {repeats} interleaved runs")
    print(f"{'plain training':>26}: {t_plain:8.3f} s ({md_plain:.3f})")
    ratio = t_imp / t_plain
    print(f"{'IMP level (netgeom masks)':>26}: {t_imp:8.3f} s ({md_imp:.3f})   ratio to plain {ratio:5.3f} "
          "(target <= 1.15)")
    print(f"{'torch.nn.utils.prune':>26}: {t_tp:8.3f} s ({md_tp:.3f})   ratio to plain {t_tp / t_plain:5.3f}")
    print(f"{'netgeom / torch prune':>26}: {t_imp / t_tp:5.3f}")
    print(f"agreement: max |weight difference| {diff:.2e}, test acc {acc_imp:.4f} vs {acc_tp:.4f} -> "
          f"{'AGREE' if agree else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
