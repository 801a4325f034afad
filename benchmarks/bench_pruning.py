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

Thread counts (``--section threads``): one epoch of training on a small MLP, LeNet-300-100, LeNet-5 and
a wider residual conv net, with torch's intra-op threads at 1, 2, torch's default and netgeom's
``threads="auto"`` (:func:`netgeom.training.choose_threads`). Each row: the rule's pick, the times, the
speed-up of the rule over torch's default (dflt/auto), the fastest fixed count (the rule's pick should be
it), and whether the trained weights agree across counts (max |difference|; the same count repeated is
bitwise). On shared cores the times of one setting vary run to run; the minimum over repeats is shown.

    python benchmarks/bench_pruning.py --quick
    python benchmarks/bench_pruning.py --quick --section threads
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as tprune

from netgeom.data.datasets import load_mnist1d
from netgeom.nets import mlp
from netgeom.pruning import magnitude_prune
from netgeom.training import TrainConfig, Trainer, available_cores, choose_threads, evaluate, forward_work

MNIST_ROOT = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


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


class WideResNet(nn.Module):
    """A residual conv net on 28x28 images: 32 channels at full resolution, 1.9e9 multiply-adds per step of
    128 (the rule's threshold for a second thread is 2e9)."""

    def __init__(self, width=32):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = x.reshape(x.shape[0], 1, 28, 28)
        h = F.relu(self.stem(x))
        h = F.relu(h + self.c2(F.relu(self.c1(h))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.max_pool2d(h, 2), 1), 1))


def threads_section(quick: bool, repeats: int) -> None:
    from netgeom.data.datasets import load_mnist
    from netgeom.nets import lenet5, lenet_300_100

    n = 256 if quick else 2000
    mnist = load_mnist(MNIST_ROOT, n_train=n)
    # evaluation of a 1000-image test split each epoch, not the remaining 10 000 - n
    mnist = dataclasses.replace(mnist, X_test=mnist.X_test[:1000], y_test=mnist.y_test[:1000])
    m = 128 if quick else n  # the wide net's quick epoch is one step
    small = dataclasses.replace(mnist, X_train=mnist.X_train[:m], y_train=mnist.y_train[:m],
                                X_test=mnist.X_test[:m], y_test=mnist.y_test[:m])
    cases = [
        ("MLP 40-100-100-10, MNIST-1D, batch 64", lambda: mlp(40, [100, 100], 10, seed=0),
         load_mnist1d(seed=0, num_samples=2 * n), 64),
        ("LeNet-300-100, MNIST, batch 128", lambda: lenet_300_100(seed=0), mnist, 128),
        ("LeNet-5, MNIST, batch 128", lambda: lenet5(seed=0), mnist, 128),
        ("residual conv (32 ch), MNIST, batch 128", WideResNet, small, 128),
    ]
    default = torch.get_num_threads()
    print(f"\none epoch per count; {available_cores()} core(s) available, torch default {default} thread(s); "
          f"min of {repeats} interleaved runs; load average {os.getloadavg()[0]:.1f}")
    print(f"{'case':<42} {'work/step':>9} {'auto':>4} {'t_auto':>7} {'t_1':>7} {'t_2':>7} {'t_dflt':>7} "
          f"{'dflt/auto':>9} {'fastest':>7}  agreement")
    for name, make, data, bs in cases:
        cfg = TrainConfig(epochs=1, batch_size=bs, lr=0.05, seed=0, eval_train=False)
        probe = make()
        work = forward_work(probe, data.X_train[:1]) * bs
        counts = {"auto": "auto", "1": 1, "2": 2, "dflt": default}

        def run(th, make=make, data=data, cfg=cfg):
            torch.manual_seed(0)
            m = make()
            Trainer(m, data, cfg, verbose=False, threads=th).run()
            return [p.detach().clone() for p in m.parameters()]

        run(1)  # warm-up: first-call costs (allocator, kernels) land on no candidate
        res = timed_interleaved([lambda th=th: run(th) for th in counts.values()], repeats)
        t = {k: r[0] for k, r in zip(counts, res)}
        w = {k: r[2] for k, r in zip(counts, res)}
        pick = choose_threads(work)
        again = run(pick)
        bitwise = all(torch.equal(a, b) for a, b in zip(w["auto"], again))
        diff = max(float((a - b).abs().max()) for k in counts for a, b in zip(w["1"], w[k]))
        fastest = min(("1", "2"), key=t.get)
        ok = bitwise and diff < 1e-4
        print(f"{name:<42} {work:>9.1e} {pick:>4} {t['auto']:>7.3f} {t['1']:>7.3f} {t['2']:>7.3f} "
              f"{t['dflt']:>7.3f} {t['dflt'] / t['auto']:>9.2f} {fastest:>7}  "
              f"max|dw| {diff:.1e}, same count bitwise {bitwise} -> {'AGREE' if ok else 'DIFFER'}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer epochs and repeats (< 1 minute)")
    p.add_argument("--section", choices=["masks", "threads", "all"], default="all")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--level", type=int, default=3, help="IMP level whose density 0.8^level is used")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the masks section "
                   "(1: fair on shared cores)")
    args = p.parse_args(argv)
    if args.section in ("threads", "all"):
        threads_section(args.quick, args.repeats or (2 if args.quick else 5))
    if args.section == "threads":
        return 0
    epochs = args.epochs or (10 if args.quick else 30)
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(args.threads)

    data = load_mnist1d(seed=0, num_samples=5000)
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=0.1, schedule="cosine", seed=0)
    dense = mlp(40, [100, 100], 10, seed=0)
    Trainer(dense, data, cfg, verbose=False, threads=None).run()
    init = mlp(40, [100, 100], 10, seed=0).state_dict()
    sparsity = 1 - 0.8**args.level

    def plain():
        m = mlp(40, [100, 100], 10, seed=0)
        Trainer(m, data, cfg, verbose=False, threads=None).run()
        return m

    def imp_level():
        masks = magnitude_prune(dense, sparsity, relative_to="all")
        m = mlp(40, [100, 100], 10, seed=0)
        m.load_state_dict(init)  # rewind to initialisation
        Trainer(m, data, cfg, masks=masks, verbose=False, threads=None).run()
        return m, masks

    def torch_prune():
        masks = magnitude_prune(dense, sparsity, relative_to="all")
        m = mlp(40, [100, 100], 10, seed=0)
        m.load_state_dict(init)
        mods = dict(m.named_modules())
        for name, mk in masks.items():
            tprune.custom_from_mask(mods[name.rsplit(".", 1)[0]], "weight", mk)
        Trainer(m, data, cfg, verbose=False, threads=None).run()
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
