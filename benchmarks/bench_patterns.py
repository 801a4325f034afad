"""Benchmark: ``count_patterns`` (exact: certified float32; MLPs per (row, unit) with a float64-accurate first
layer from exact int8 products when float32's propagated error is too wide, other graphs per row; float64 /
rationals where undecided) vs the plain float32 forward with sign packing a user would write (uncertified),
and (MLP rows) the same forward with its float32 products through oneDNN, the fastest float32 products torch
has on AMD processors (where ``F.linear``'s MKL sgemm runs its AVX2 code path),
counted with the same exact deduplication. One row per network: both times, the ratio, both counts, whether
netgeom's pattern set and the plain float32 one equal those of a float64 forward (untimed reference), and how
many inputs had float64 work / exact arithmetic, and the ratio of the CPU times (process time, all threads:
less sensitive to other jobs on a shared machine than the wall-clock ratio). ``--threads 1`` is the steadier
comparison there.

The graph rows (not chains: residual MLP, LeNet-5 with max-pooling, two strided convolutions, the same
wider on 3x32x32 images) run n / 5 and n / 50 points. On several torch threads the graph engine decides
chunks of 2048 inputs on one worker thread each, each running torch on one OpenMP thread (its many small
operations would each be a barrier of torch's OpenMP team); on a machine shared with other jobs,
``--threads 1`` is the steadier comparison. The plain forward of the two convolutional rows runs in blocks
of 256 images: on whole 8192-image batches its convolution outputs (44-113 MB, past glibc's largest mmap
threshold) were mapped and unmapped batch after batch, and it ran ~3x slower at one thread.

    python benchmarks/bench_patterns.py --quick      # < 1 minute (5 x 10^4 points)
    python benchmarks/bench_patterns.py              # 10^6 points through 784-400-400-10
    python benchmarks/bench_patterns.py --only "LeNet|conv"   # only the rows whose name matches
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netgeom import count_patterns, magnitude_prune, mlp, trace
from netgeom.regions.patterns import _Counter, pack_patterns

BATCH = 8192


def make_pool(n_in, seed: int, pool_size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand((BATCH, *n_in), generator=g) for _ in range(pool_size)]


def batches(n: int, pool: list[torch.Tensor]):
    """``n`` distinct inputs in batches: the pool's batches, each reuse scaled differently (cheap)."""
    done, i = 0, 0
    while done < n:
        b = min(BATCH, n - done)
        scale = 1.0 + 0.01 * (i // len(pool))
        yield pool[i % len(pool)][:b] * scale
        done += b
        i += 1


def _count(packed_batches) -> tuple[np.ndarray, np.ndarray]:
    counter = None
    for packed in packed_batches:
        counter = counter or _Counter(packed.shape[1])
        counter.add(packed)
    return counter.result()


def _onednn_linear(x, w, b):
    """torch's oneDNN float32 linear (what ``torch.compile`` / ``to_mkldnn`` inference reaches): on AMD
    processors 2-2.4x faster than ``F.linear``, whose MKL sgemm runs its AVX2 code path there."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def plain_mlp(net: nn.Sequential, data, dtype=torch.float32, onednn: bool = False):
    """What a user writes: a forward pass, signs of every hidden pre-activation, packbits, exact unique.
    ``onednn``: the float32 products through oneDNN instead of torch's default (MKL) sgemm."""
    lins = [m for m in net if isinstance(m, nn.Linear)][:-1]
    params = [(m.weight.detach().to(dtype).contiguous(), m.bias.detach().to(dtype)) for m in lins]
    lin = _onednn_linear if onednn else F.linear

    def packed():
        with torch.no_grad():
            for x in data:
                x = x.reshape(len(x), -1).to(dtype)
                bits = []
                for w, b in params:
                    z = lin(x, w, b)
                    bits.append(z > 0)
                    x = torch.relu(z)
                yield pack_patterns(torch.cat(bits, 1).numpy())

    return _count(packed())


class ResMLP(nn.Module):
    def __init__(self, n_in: int, width: int, depth: int, n_out: int):
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, n_out)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for b in self.blocks:
            h = h + F.relu(b(h))
        return self.out(h)


def plain_resmlp(net: ResMLP, data, dtype=torch.float32, onednn: bool = False):
    net = copy.deepcopy(net).to(dtype)

    def lin(m, x):
        return _onednn_linear(x, m.weight, m.bias) if onednn else m(x)

    def packed():
        with torch.no_grad():
            for x in data:
                x = x.to(dtype)
                bits = []
                z = lin(net.inp, x)
                bits.append(z > 0)
                h = torch.relu(z)
                for b in net.blocks:
                    z = lin(b, h)
                    bits.append(z > 0)
                    h = h + torch.relu(z)
                yield pack_patterns(torch.cat(bits, 1).numpy())

    return _count(packed())


class PoolNet(nn.Module):
    """LeNet-style: conv -> relu -> max-pool -> conv -> relu -> max-pool -> linear -> relu -> linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc, self.out = nn.Linear(16 * 4 * 4, 120), nn.Linear(120, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.out(F.relu(self.fc(torch.flatten(x, 1))))


def plain_poolnet(net: PoolNet, data, dtype=torch.float32, rows: int = 256):
    """As :func:`plain_convnet`: blocks of ``rows`` images (on whole batches the convolution outputs are
    paged in and out)."""
    net = copy.deepcopy(net).to(dtype)

    def pos_bits(idx, W):  # torch's flat index -> position in the 2x2 window, 2 bits
        h, w = idx // W, idx % W
        p = (h % 2) * 2 + (w % 2)
        return torch.stack([(p >> 1) & 1, p & 1], -1).bool().reshape(len(idx), -1)

    def packed():
        with torch.no_grad():
            for xs in data:
                out = []
                for a in range(0, len(xs), rows):
                    x = xs[a : a + rows].to(dtype)
                    z1 = net.c1(x)
                    v1, i1 = F.max_pool2d(torch.relu(z1), 2, return_indices=True)
                    z2 = net.c2(v1)
                    v2, i2 = F.max_pool2d(torch.relu(z2), 2, return_indices=True)
                    z3 = net.fc(v2.flatten(1))
                    bits = [z1 > 0, pos_bits(i1, z1.shape[-1]), z2 > 0, pos_bits(i2, z2.shape[-1]), z3 > 0]
                    out.append(pack_patterns(torch.cat([b.reshape(len(x), -1) for b in bits], 1).numpy()))
                yield np.concatenate(out)

    return _count(packed())


class ConvNet(nn.Module):
    """Two strided convolutions, no pooling: conv 3x3/2 -> relu -> conv 3x3/2 -> relu -> linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, stride=2), nn.Conv2d(8, 16, 3, stride=2)
        self.out = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        return self.out(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


class WideConvNet(ConvNet):
    """CIFAR-sized: conv 3->32 3x3/2 -> relu -> conv 32->64 3x3/2 -> relu -> linear, on 3x32x32 images."""

    def __init__(self):
        nn.Module.__init__(self)
        self.c1, self.c2 = nn.Conv2d(3, 32, 3, stride=2), nn.Conv2d(32, 64, 3, stride=2)
        self.out = nn.Linear(64 * 7 * 7, 10)


def plain_convnet(net: ConvNet, data, dtype=torch.float32, rows: int = 256):
    """The forward a careful user writes: blocks of ``rows`` images (their convolution outputs stay in the
    caches and in memory malloc recycles: on the whole 8192-image batch, 44-113 MB outputs, the same
    forward ran ~3x slower at one thread, mostly page faults and cache misses), signs, packbits per block."""
    net = copy.deepcopy(net).to(dtype)

    def packed():
        with torch.no_grad():
            for x in data:
                out = []
                for a in range(0, len(x), rows):
                    xb = x[a : a + rows].to(dtype)
                    z1 = net.c1(xb)
                    z2 = net.c2(torch.relu(z1))
                    bits = torch.cat([z1.reshape(len(xb), -1) > 0, z2.reshape(len(xb), -1) > 0], 1)
                    out.append(pack_patterns(bits.numpy()))
                yield np.concatenate(out)

    return _count(packed())


def _same(a, b) -> bool:
    return len(a[0]) == len(b[0]) and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def row(name, n, net, n_in, plain, repeats, masks=None, onednn: bool = False, only=None):
    """One table row (skipped unless its name matches the regular expression ``only``). ``onednn``:
    ``plain`` also takes ``onednn=True`` (its float32 products through oneDNN), timed as a second
    alternative; otherwise torch's default kernels are already oneDNN's (convolutions) or the products are
    too small to matter."""
    if only is not None and not re.search(only, name):
        return
    t_ours, t_plain, c_ours, c_plain, t_dnn = [], [], [], [], []
    # (only as many pooled batches as the row reads: 16 CIFAR-sized ones would take 1.6 GB)
    pool = make_pool(n_in, 0, min(16, -(-max(n, BATCH) // BATCH)))
    # warm-up (first-call costs), untimed, both sides
    count_patterns(net, batches(BATCH, pool), masks, verbose=False)
    plain(net, batches(BATCH, pool))
    if onednn:
        plain(net, batches(BATCH, pool), onednn=True)
    for _ in range(repeats):  # interleaved, best of: the machine is shared
        t, c = time.perf_counter(), time.process_time()
        res = count_patterns(net, batches(n, pool), masks, batch_size=BATCH, verbose=False)
        t_ours.append(time.perf_counter() - t)
        c_ours.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        fp32 = plain(net, batches(n, pool))
        t_plain.append(time.perf_counter() - t)
        c_plain.append(time.process_time() - c)
        if onednn:
            t = time.perf_counter()
            dnn = plain(net, batches(n, pool), onednn=True)
            t_dnn.append(time.perf_counter() - t)
    f64 = plain(net, batches(n, pool), torch.float64)  # untimed reference
    ours = (res.patterns, res.multiplicities)
    a, b = min(t_ours), min(t_plain)
    d = f"{min(t_dnn):.2f} s, {min(t_dnn) / a:.2f}x ({'=' if _same(dnn, f64) else '≠'})" if onednn else "—"
    print(
        f"| {name} | {n:,} | {a:.2f} s | {b:.2f} s | {b / a:.2f}x | {d} | {res.count:,} / {len(fp32[0]):,} | "
        f"{'yes' if _same(ours, f64) else 'NO'} | {'yes' if _same(fp32, f64) else 'NO'} | "
        f"{res.n_float64:,} / {res.n_exact} | {min(c_plain) / min(c_ours):.2f}x |",
        flush=True,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5x10^4 points, one repeat (< 1 minute)")
    ap.add_argument("--n", type=int, default=None, help="points through the MLP (default 10^6, quick 5x10^4)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed repeats, best taken (default 3, quick 1)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--only", default=None, help="run only the rows whose network name matches this regular expression"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (50_000 if args.quick else 1_000_000)
    repeats = args.repeats or (1 if args.quick else 3)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, best of {repeats}; "
        f"load average {load} on {os.cpu_count()} cores at the start"
    )
    print(
        "| network | points | netgeom (exact) | plain fp32 + packbits | ratio (plain/ours) "
        "| plain fp32 through oneDNN, ratio (= float64?) "
        "| patterns ours / fp32 | ours = float64 forward | fp32 = float64 forward "
        "| inputs with float64 work / exact | ratio in CPU time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    net = mlp(784, [400, 400], 10, seed=0)
    row("MLP 784-400-400-10", n, net, (784,), plain_mlp, repeats, onednn=True, only=args.only)
    masks = magnitude_prune(net, scope="layer", per_layer=[0.9, 0.9, 0.0])
    pruned = copy.deepcopy(net)
    masks.apply(pruned)
    row(
        "same, 90% pruned per layer",
        n,
        pruned,
        (784,),
        plain_mlp,
        repeats,
        masks,
        onednn=True,
        only=args.only,
    )
    torch.manual_seed(0)
    res = ResMLP(64, 128, 3, 10).eval()
    trace(res)
    row("residual MLP 64-128x4-10", n // 5, res, (64,), plain_resmlp, repeats, onednn=True, only=args.only)
    torch.manual_seed(0)
    pool = PoolNet().eval()
    pool.input_shape = (1, 28, 28)
    row("LeNet-5 with max-pool, 28x28", n // 50, pool, (1, 28, 28), plain_poolnet, repeats, only=args.only)
    torch.manual_seed(0)
    conv = ConvNet().eval()
    conv.input_shape = (1, 28, 28)
    row(
        "conv 1-8-16 stride 2, no pooling, 28x28",
        n // 50,
        conv,
        (1, 28, 28),
        plain_convnet,
        repeats,
        only=args.only,
    )
    torch.manual_seed(0)
    wide = WideConvNet().eval()
    wide.input_shape = (3, 32, 32)
    row(
        "conv 3-32-64 stride 2, no pooling, 3x32x32",
        n // 50,
        wide,
        (3, 32, 32),
        plain_convnet,
        repeats,
        only=args.only,
    )
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
