"""Differential fuzzing of netgeom's exact engines against independent references (not a timing: a search for
wrong answers, slower than the test suite and meant to run for minutes or hours).

* ``chain``: ``count_patterns`` on random MLPs (input 2-784, 1-4 hidden layers of 3-513 units, ReLU or leaky,
  float32 or float64 weights, scaled first layers, magnitude masks up to 99 %) and inputs (uniform, normal at
  2^±10, small integers with exact ties at zero, points bisected to float64 pattern boundaries), 1-2 threads,
  batches of 512-8192 rows, against a float64 forward of the masked weights; every row with a pre-activation
  within 1e-9 (|W||h| + |b|) of zero is decided in rationals instead.
* ``graph``: ``count_patterns`` on residual MLPs and conv nets (stride 1-2, optional average pooling, masks),
  against the same reference on the model's own affine maps, extracted exactly from torch (one product per
  entry).
* ``slice``: ``regions_on_slice`` on residual and global-max-pool nets against regioncam (float32 vertices: a
  difference of a region or two in tens of thousands can be regioncam's; check it with the exact pattern at
  each region's centroid before calling it a bug).

    python benchmarks/fuzz_exact.py chain --seeds 0 60
    python benchmarks/fuzz_exact.py graph --seeds 0 200
    python benchmarks/fuzz_exact.py slice --seeds 0 400

Prints one line per trial (OK / FAIL / INCOMPLETE when more rows needed rationals than ``--max-exact``) and a
summary; exits with status 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _boundary import boundary_points  # noqa: E402

from netgeom import count_patterns, magnitude_prune, regions_on_slice, trace  # noqa: E402
from netgeom.regions.patterns import pack_patterns, unique_rows  # noqa: E402

MARGIN = 1e-9  # relative float64 margin under which a row is decided in rationals


# ---------------------------------------------------------------------------------------------- programs
# A network as a list of steps on flat rows: ("aff", W, b), ("relu",), ("save",) and ("add",) (a residual
# sum with the last saved value), evaluated in float64 with a per-row safety margin, or in rationals.


def _affine_matrix(f, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and bias of an affine torch map, exactly: each entry of f(e_i) - f(0) is one product w * 1."""
    with torch.no_grad():
        b = f(torch.zeros(1, n_in, dtype=torch.float64))
        W = f(torch.eye(n_in, dtype=torch.float64)) - b
    return W.T.numpy(), b[0].numpy()


def _run(prog, X: np.ndarray, slope: float) -> tuple[np.ndarray, np.ndarray]:
    """Pattern bits of every row in float64, and which rows come within MARGIN of a boundary."""
    h, a = X, np.abs(X)
    saved = None
    bits, unsafe = [], np.zeros(len(X), dtype=bool)
    for op in prog:
        if op[0] == "aff":
            h, a = h @ op[1].T + op[2], a @ np.abs(op[1]).T + np.abs(op[2])
        elif op[0] == "save":
            saved = (h, a)
        elif op[0] == "add":
            h, a = saved[0] + h, saved[1] + a
        else:
            unsafe |= (np.abs(h) <= MARGIN * a + 1e-300).any(1)
            bits.append(h > 0)
            h = np.where(h > 0, h, slope * h)
    return np.concatenate(bits, 1), unsafe


def _run_exact(prog, x: np.ndarray, slope: float) -> np.ndarray:
    """One row's pattern bits in rational arithmetic."""
    h = [Fraction(float(v)) for v in x]
    s = Fraction(float(slope))
    saved, bits = None, []
    for op in prog:
        if op[0] == "aff":
            terms = [[(Fraction(float(w)), v) for w, v in zip(row, h) if w != 0 and v != 0] for row in op[1]]
            h = [sum((w * v for w, v in t), Fraction(float(bj))) for t, bj in zip(terms, op[2])]
        elif op[0] == "save":
            saved = h
        elif op[0] == "add":
            h = [p + q for p, q in zip(saved, h)]
        else:
            bits += [v > 0 for v in h]
            h = [v if v > 0 else s * v for v in h]
    return np.array(bits)


def _reference(prog, X: np.ndarray, slope: float, max_exact: int) -> tuple[np.ndarray, np.ndarray, int]:
    bits, unsafe = _run(prog, X, slope)
    rows = np.flatnonzero(unsafe)
    for r in rows[:max_exact]:
        bits[r] = _run_exact(prog, X[r], slope)
    u, c = unique_rows(pack_patterns(bits))
    return u, c, len(rows)


def _masked(net: nn.Module, masks) -> nn.Module:
    m = copy.deepcopy(net).double()
    if masks is not None:
        sd = m.state_dict()
        m.load_state_dict({k: v * masks[k].double() if k in masks else v for k, v in sd.items()})
    return m


# ------------------------------------------------------------------------------------------------ models
class _Res(nn.Module):
    def __init__(self, n0: int, w: int, k: int, out: int, slope: float):
        super().__init__()
        self.inp, self.slope = nn.Linear(n0, w), slope
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(w, w), nn.LeakyReLU(slope), nn.Linear(w, w)) for _ in range(k)]
        )
        self.out = nn.Linear(w, out)

    def forward(self, x):
        h = F.leaky_relu(self.inp(x), self.slope)
        for b in self.blocks:
            h = F.leaky_relu(h + b(h), self.slope)
        return self.out(h)

    def program(self):
        w = self.inp.out_features
        prog = [("aff", *_affine_matrix(self.inp, self.inp.in_features)), ("relu",)]
        for b in self.blocks:
            prog += [("save",), ("aff", *_affine_matrix(b[0], w)), ("relu",)]
            prog += [("aff", *_affine_matrix(b[2], w)), ("add",), ("relu",)]
        return prog


class _Conv(nn.Module):
    def __init__(self, c0: int, hw: int, c1: int, c2: int, stride: int, pool: bool, out: int, slope: float):
        super().__init__()
        self.slope, self.pool, self.input_shape = slope, pool, (c0, hw, hw)
        self.c1 = nn.Conv2d(c0, c1, 3, stride=stride, padding=1)
        self.c2 = nn.Conv2d(c1, c2, 3)
        with torch.no_grad():
            n = self._features(torch.zeros(1, c0, hw, hw)).shape[1]
        self.fc = nn.Linear(n, out)

    def _features(self, x):
        h = F.leaky_relu(self.c1(x), self.slope)
        if self.pool:
            h = F.avg_pool2d(h, 2)
        return torch.flatten(F.leaky_relu(self.c2(h), self.slope), 1)

    def forward(self, x):
        return self.fc(self._features(x))

    def program(self):
        shape = self.input_shape
        prog = []
        for conv, pool in ((self.c1, self.pool), (self.c2, False)):
            n_in = int(np.prod(shape))
            convolved = lambda x, c=conv, s=shape: c(x.reshape(-1, *s)).flatten(1)  # noqa: E731
            prog.append(("aff", *_affine_matrix(convolved, n_in)))
            prog.append(("relu",))
            with torch.no_grad():
                shape = tuple(conv(torch.zeros(1, *shape, dtype=torch.float64)).shape[1:])
            if pool:  # average pooling (exact quarters), one affine map of its own after the ReLU
                pooled = lambda x, s=shape: F.avg_pool2d(x.reshape(-1, *s), 2).flatten(1)  # noqa: E731
                prog.append(("aff", *_affine_matrix(pooled, int(np.prod(shape)))))
                shape = (shape[0], shape[1] // 2, shape[2] // 2)
        return prog + [("aff", *_affine_matrix(self.fc, self.fc.in_features))]


def _mlp_program(net: nn.Sequential):
    prog = []
    for m in net:
        if isinstance(m, nn.Linear):
            prog.append(("aff", *_affine_matrix(m, m.in_features)))
        else:
            prog.append(("relu",))
    return prog


# ------------------------------------------------------------------------------------------------ trials
def _with_boundaries(g, X: torch.Tensor, shape, n_seg: int, gen) -> torch.Tensor:
    def segment():
        a = torch.rand(*shape, dtype=torch.float64, generator=gen) * 2 - 1
        return a, a + 0.5 * torch.randn(*shape, dtype=torch.float64, generator=gen)

    pts = boundary_points(g, segment, n_seg, below=True) if n_seg else []
    return torch.cat([X, torch.stack(pts)]) if pts else X


def chain_trial(seed: int, max_exact: int):
    rng = np.random.default_rng(seed)
    n0 = int(rng.choice([2, 5, 10, 64, 200, 784]))
    widths = [int(rng.choice([3, 8, 30, 100, 256, 400, 513])) for _ in range(int(rng.integers(1, 5)))]
    slope = float(rng.choice([0.0, 0.0, 0.0, 0.01, 0.3]))
    dt = torch.float32 if rng.random() < 0.7 else torch.float64
    torch.manual_seed(seed)
    mods, prev = [], n0
    for w in widths:
        mods += [nn.Linear(prev, w), nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)]
        prev = w
    net = nn.Sequential(*mods, nn.Linear(prev, int(rng.integers(1, 11)))).to(dt).eval()
    if rng.random() < 0.3:
        with torch.no_grad():
            net[0].weight.mul_(float(2.0 ** rng.integers(-20, 20)))
    masks = None
    if rng.random() < 0.4:
        density = float(rng.choice([0.5, 0.9, 0.99]))
        masks = magnitude_prune(net, scope="layer", per_layer=[density] * len(widths) + [0.0])
    N = int(rng.choice([50, 700, 4097, 9000]))
    gen = torch.Generator().manual_seed(seed)
    kind = str(rng.choice(["uniform", "normal", "int"]))
    if kind == "uniform":
        X = torch.rand(N, n0, generator=gen, dtype=torch.float64)
    elif kind == "normal":
        X = torch.randn(N, n0, generator=gen, dtype=torch.float64) * float(2.0 ** rng.integers(-10, 10))
    else:
        X = torch.randint(-3, 4, (N, n0), generator=gen).double()
    ref_net = _masked(net, masks)
    X = _with_boundaries(trace(ref_net), X, (n0,), int(rng.integers(0, 30)), gen).to(dt)
    torch.set_num_threads(int(rng.choice([1, 2])))
    res = count_patterns(net, X, masks, batch_size=int(rng.choice([512, 4096, 8192])), verbose=False)
    u, c, n_unsafe = _reference(_mlp_program(ref_net), X.double().numpy(), slope, max_exact)
    desc = f"chain {n0}-{widths} slope={slope} {dt} masks={masks is not None} N={len(X)} inputs={kind}"
    return res, u, c, n_unsafe, desc


def graph_trial(seed: int, max_exact: int):
    rng = np.random.default_rng(seed)
    slope = float(rng.choice([0.0, 0.0, 0.0, 0.05]))
    dt = torch.float32 if rng.random() < 0.7 else torch.float64
    torch.manual_seed(seed)
    if rng.random() < 0.5:
        n0, w, k = int(rng.choice([2, 16, 64, 200])), int(rng.choice([8, 32, 128])), int(rng.integers(1, 5))
        net, shape, desc = _Res(n0, w, k, int(rng.integers(1, 11)), slope), (n0,), f"res {n0}-{w}x{k}"
    else:
        c0, hw = int(rng.choice([1, 3])), int(rng.choice([8, 12]))
        c1, c2, stride = int(rng.choice([2, 4, 8])), int(rng.choice([2, 8])), int(rng.choice([1, 2]))
        pool = bool(rng.random() < 0.4) and hw // stride >= 6
        net = _Conv(c0, hw, c1, c2, stride, pool, int(rng.integers(1, 5)), slope)
        shape, desc = (c0, hw, hw), f"conv {c0}x{hw}x{hw}-{c1}(s{stride}){'-avg' if pool else ''}-{c2}"
    net = net.to(dt).eval()
    if rng.random() < 0.3:
        with torch.no_grad():
            next(net.parameters()).mul_(float(2.0 ** rng.integers(-15, 15)))
    masks = None
    if rng.random() < 0.4:
        keep = float(rng.choice([0.3, 0.8]))
        gm = torch.Generator().manual_seed(seed)
        masks = {
            n: torch.rand(p.shape, generator=gm) > keep
            for n, p in net.named_parameters()
            if n.endswith("weight") and p.dim() > 1
        }
    N = int(rng.choice([50, 700, 3000]))
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(N, *shape, generator=gen, dtype=torch.float64) * 2 - 1
    ref_net = _masked(net, masks).eval()
    X = _with_boundaries(trace(ref_net), X, shape, int(rng.integers(0, 20)), gen).to(dt)
    torch.set_num_threads(int(rng.choice([1, 2])))
    res = count_patterns(net, X, masks, batch_size=int(rng.choice([256, 4096])), verbose=False)
    u, c, n_unsafe = _reference(ref_net.program(), X.double().reshape(len(X), -1).numpy(), slope, max_exact)
    return res, u, c, n_unsafe, f"{desc} slope={slope} {dt} masks={masks is not None} N={len(X)}"


def slice_trial(seed: int):
    from bench_regions import _GlobalMax, _magnitude_masks, _rc_graph_count, _ResMLP

    rng = np.random.default_rng(seed)
    kind = str(rng.choice(["res", "max"]))
    n0, w = int(rng.choice([2, 3, 16])), int(rng.choice([4, 16, 48]))
    if kind == "res":
        k = int(rng.integers(1, 4))
        net = _ResMLP(n0, w, k, int(rng.integers(1, 4)), seed=seed)
    else:
        k = int(rng.choice([2, 4, 8]))
        k = k if w % k == 0 else 4
        net = _GlobalMax(n0, w, k, int(rng.choice([4, 16])), seed=seed)
    net = net.float().double().eval()
    density = float(rng.choice([1.0, 0.5, 0.2]))
    masks = _magnitude_masks(net, density) if density < 1 else None
    x0, d1, d2 = (
        v.astype(np.float32).astype(np.float64)
        for v in (rng.uniform(-1, 1, n0), rng.normal(size=n0), rng.normal(size=n0))
    )
    r = float(rng.choice([0.1, 1.0, 4.0]))
    torch.set_num_threads(int(rng.choice([1, 2])))
    ours = regions_on_slice(net, x0, d1, d2, box=(-r, r, -r, r), masks=masks).count
    theirs = _rc_graph_count(net, masks or {}, x0, d1, d2, r)
    return ours, theirs, f"slice {kind} {n0}-{w} k={k} density={density} r={r}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["chain", "graph", "slice"])
    ap.add_argument("--seeds", type=int, nargs=2, default=(0, 20), metavar=("FIRST", "END"))
    ap.add_argument("--max-exact", type=int, default=400, help="rows per trial decided in rationals at most")
    args = ap.parse_args(argv)
    t0, bad, incomplete = time.time(), 0, 0
    for seed in range(*args.seeds):
        if args.kind == "slice":
            ours, theirs, desc = slice_trial(seed)
            tag = "OK" if ours == theirs else "DIFF"
            print(f"{tag:<10} seed {seed} {desc} netgeom={ours} regioncam={theirs}", flush=True)
            bad += tag != "OK"
            continue
        trial = chain_trial if args.kind == "chain" else graph_trial
        res, u, c, n_unsafe, desc = trial(seed, args.max_exact)
        same = np.array_equal(u, res.patterns) and np.array_equal(c, res.multiplicities)
        tag = "OK" if same else ("FAIL" if n_unsafe <= args.max_exact else "INCOMPLETE")
        print(
            f"{tag:<10} seed {seed} {desc} count={res.count} float64={res.n_float64} exact={res.n_exact} "
            f"near-boundary rows={n_unsafe}",
            flush=True,
        )
        bad += tag == "FAIL"
        incomplete += tag == "INCOMPLETE"
    n = args.seeds[1] - args.seeds[0]
    word = "differing from regioncam" if args.kind == "slice" else "failed"
    print(f"{n} trials, {bad} {word}, {incomplete} incomplete, {time.time() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
