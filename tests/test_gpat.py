"""The graph engine's one-thread passes and buffers (netgeom.nets.certified, netgeom.nets._graph_kernel): the
screen kernel of a ReLU fed by a dense Linear against the torch passes it replaces (bit for bit), the
per-thread torch thread count set and restored, and residual networks (dense and convolutional) near their
pattern boundaries decided as rational arithmetic decides them, in float32 or float64, in one row block or
many (the buffers reused block after block), with torch on one thread or two."""

import math
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _boundary import boundary_points
from _engines import engines as _engines
from _platform import OPENMP, X86_LINUX, unavailable
from torch import nn

from netgeom import count_patterns, trace
from netgeom.nets import certified
from netgeom.nets._graph_kernel import relu_screen
from netgeom.nets.certified import graph_patterns, pattern_nodes
from netgeom.regions.patterns import pack_patterns, unique_rows


# ------------------------------------------------------------------------------ the screen kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_screen_equals_the_torch_passes_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(1)
    B, N = 41, 37
    z = torch.randn(B, N, generator=g).to(dtype)
    thr = (torch.rand(B, generator=g) * 0.3).to(dtype)
    z[2, 5], thr[3], z[4, 0], z[9, 2] = math.nan, math.nan, -math.inf, math.inf
    z[6] = 0.0  # zeros are never above a nonnegative threshold
    thr[6] = 0.0
    z[7] = thr[7] + 1e-3  # every entry just above: cleared
    z[8] = -thr[8]  # equal: not cleared
    dest = torch.zeros(B + 3, N, dtype=torch.bool)[1 : 1 + B]
    out = torch.full((B, N), 7.0, dtype=dtype)
    bits, und, v = relu_screen(z, thr, dest, out)
    assert bits.data_ptr() == dest.data_ptr() and v.data_ptr() == out.data_ptr()
    assert torch.equal(bits, z > 0)
    # the replaced passes: ~(min |z| > thr) per row (NaN in either: not cleared)
    assert torch.equal(und, ~(z.abs().amin(1) > thr))
    assert bool(und[2]) and bool(und[3]) and bool(und[6]) and bool(und[8]) and not bool(und[7])
    ok = ~z.isnan()
    assert torch.equal(v[ok], torch.relu(z)[ok])
    assert bool((v[~ok] == 0).all())
    # fresh outputs when none are given, the same values
    b2, u2, v2 = relu_screen(z, thr)
    assert torch.equal(b2, bits) and torch.equal(u2, und) and torch.equal(v2, v)


# ------------------------------------------------------------------------------ per-thread thread count
def test_threads_sets_the_calling_thread_only_and_restores_it():
    n0 = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(2)
        with certified._threads(1):
            assert torch.get_num_threads() == 1
            t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            t.start()
            t.join()
        assert torch.get_num_threads() == 2
        assert seen == [2]  # another thread keeps the process's count
        with pytest.raises(RuntimeError, match="boom"):
            with certified._threads(1):
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n0)


def test_graph_passes_run_on_one_thread_and_their_products_on_the_callers():
    from netgeom.nets._workers import _openmp

    if _openmp() is None:
        unavailable("torch's OpenMP runtime is not reachable here", expected=X86_LINUX and OPENMP)
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with certified._one_thread("cpu"):
            assert torch.get_num_threads() == 1
            with certified._one_thread("cpu"):  # nested: still one, and the caller's count remembered
                assert torch.get_num_threads() == 1
                with certified._products():
                    assert torch.get_num_threads() == 2
            with certified._products():
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with certified._products():  # outside a graph pass: nothing changes
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(n0)


# ------------------------------------------------------------------------------ residual MLP
class _ResMLP(nn.Module):
    def __init__(self, seed: int, n_in=6, width=10, depth=3):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, 2)

    def forward(self, x):
        h = F.relu(self.inp(x))
        for b in self.blocks:
            h = h + F.relu(b(h))
        return self.out(h)


def _frac(t: torch.Tensor):
    return [[Fraction(float(a)) for a in row] for row in t.detach().double().reshape(t.shape[0], -1).tolist()]


def _affine(W, b, x):
    return [sum((w * a for w, a in zip(row, x)), Fraction(bi)) for row, bi in zip(W, b)]


def _resmlp_bits(net: _ResMLP, X: torch.Tensor) -> np.ndarray:
    """Every relu sign of the residual MLP, in rational arithmetic from its parameters (not the trace)."""
    mods = [net.inp, *net.blocks]
    layers = [(_frac(m.weight), [Fraction(float(v)) for v in m.bias.tolist()]) for m in mods]
    out = []
    for x in X.double().tolist():
        x = [Fraction(a) for a in x]
        z = _affine(*layers[0], x)
        bits = [v > 0 for v in z]
        h = [max(v, Fraction(0)) for v in z]
        for W, b in layers[1:]:
            z = _affine(W, b, h)
            bits += [v > 0 for v in z]
            h = [a + max(v, Fraction(0)) for a, v in zip(h, z)]
        out.append(bits)
    return np.array(out)


def _near(g, n_in: int, seed: int, n_seg: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)

    def end():
        return torch.rand(n_in, generator=gen, dtype=torch.float64)

    pts = boundary_points(g, lambda: (end(), end()), n_seg)
    return torch.stack(pts + [end() for _ in range(8)])


def _check_paths(g, X, ref, monkeypatch, threads=(1, 2)):
    """graph_patterns on every path (kernels on or off, float32 or float64 first, blocks of a few rows or
    one, torch on one or two threads) equals ``ref``; returns the rows float32 could not decide."""
    n0 = torch.get_num_threads()
    redone = 0
    try:
        for nt in threads:
            torch.set_num_threads(nt)
            for kernels, dt, blocks in (
                (True, torch.float32, 1 << 22),
                (True, torch.float32, 512),  # blocks of a few rows: the buffers reused, the last one shorter
                (False, torch.float32, 1 << 22),
                (True, torch.float64, 512),
                (True, torch.float64, 1 << 22),
            ):
                with monkeypatch.context() as m:
                    m.setattr(certified, "_CHUNK_BYTES", blocks)
                    dec, st = graph_patterns(g, X, dtype=dt, _engines=_engines(g, kernels))
                got = np.concatenate([dec[n.index].numpy() for n in pattern_nodes(g)], 1)
                assert np.array_equal(got, ref), (nt, kernels, dt, blocks, X.dtype)
                assert torch.get_num_threads() == nt  # the caller's count, restored
                if dt == torch.float32:
                    redone = max(redone, st["float64"])
    finally:
        torch.set_num_threads(n0)
    return redone


@pytest.mark.parametrize("seed", [0, 1])
def test_residual_mlp_near_boundaries_equals_rationals_on_every_path(seed, monkeypatch):
    net = _ResMLP(seed).eval()
    g = trace(net)
    X64 = _near(g, 6, seed, 6)
    redone = 0
    for X in (X64, X64.float()):
        X = torch.cat([X, X.flip(0)])
        ref = _resmlp_bits(net, X)
        redone = max(redone, _check_paths(g, X, ref, monkeypatch))
        n0 = torch.get_num_threads()
        try:
            torch.set_num_threads(2)
            for precision in ("float32", "float64"):
                res = count_patterns(net, X, batch_size=37, precision=precision, verbose=False)
                u, c = unique_rows(pack_patterns(ref))
                assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)
                assert torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(n0)
    assert redone > 0  # float32 could not decide every input: the float64 redo ran


# ------------------------------------------------------------------------------ residual conv net
class _ResConv(nn.Module):
    """conv -> relu -> conv, plus the first relu (a residual sum of convolution values) -> relu -> linear."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.c1, self.c2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(h + self.c2(h))
        return self.fc(h.flatten(1))


def _conv_rational(W, b, img, C, H):
    """A 3x3 convolution with zero padding 1 on a (C, H, H) image of Fractions, stride 1."""
    out = []
    for f in range(len(W)):
        for i in range(H):
            for j in range(H):
                s = Fraction(b[f])
                for c in range(C):
                    for di in range(3):
                        for dj in range(3):
                            ii, jj = i + di - 1, j + dj - 1
                            if 0 <= ii < H and 0 <= jj < H:
                                s += W[f][c][di][dj] * img[c * H * H + ii * H + jj]
                out.append(s)
    return out


def _resconv_bits(net: _ResConv, X: torch.Tensor) -> np.ndarray:
    def w4(m):
        w = m.weight.double().tolist()
        return [[[[Fraction(float(a)) for a in r] for r in ch] for ch in f] for f in w]

    W1, W2 = w4(net.c1), w4(net.c2)
    b1, b2 = net.c1.bias.double().tolist(), net.c2.bias.double().tolist()
    out = []
    for x in X.double().reshape(len(X), -1).tolist():
        x = [Fraction(a) for a in x]
        z1 = _conv_rational(W1, b1, x, 1, 5)
        h = [max(v, Fraction(0)) for v in z1]
        z2 = [a + v for a, v in zip(h, _conv_rational(W2, b2, h, 3, 5))]
        out.append([v > 0 for v in z1] + [v > 0 for v in z2])
    return np.array(out)


def test_residual_conv_near_boundaries_equals_rationals_on_every_path(monkeypatch):
    net = _ResConv(3).eval()
    g = trace(net, input_shape=(1, 5, 5))
    assert [n.op for n in pattern_nodes(g)] == ["relu", "relu"]  # the classifier has no activation
    X64 = _near(g, 25, 3, 4).clamp_min(0.0)  # (an image: a nonnegative input, the stacked first convolution)
    X64[-2:, :10] = 0.0  # exact zeros: rows of exactly zero pre-activations in places
    for X in (X64, X64.float()):
        X = torch.cat([X, X.flip(0)]).reshape(-1, 1, 5, 5)
        ref = _resconv_bits(net, X)
        _check_paths(g, X.reshape(len(X), -1), ref, monkeypatch, threads=(2,))
        res = count_patterns(net, X, batch_size=29, verbose=False)
        u, c = unique_rows(pack_patterns(ref))
        assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)


# ------------------------------------------------------------------------------ the unit redo in place
class _ConvPool(nn.Module):
    """conv -> relu -> conv (its redo reads a ReLU's output) and conv -> relu -> max-pool -> conv (a
    max-pool's output, its own bound)."""

    def __init__(self, seed: int, pool: bool):
        super().__init__()
        torch.manual_seed(seed)
        self.pool = pool
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, stride=1), nn.Conv2d(4, 5, 3, stride=1)

    def forward(self, x):
        h = F.relu(self.c1(x))
        if self.pool:
            h = F.max_pool2d(h, 2)
        return F.relu(self.c2(h)).flatten(1)


@pytest.mark.parametrize("crude", [False, True])
@pytest.mark.parametrize("pool", [False, True])
def test_unit_redo_in_place_equals_the_gathered_one_bit_for_bit(pool, crude, monkeypatch):
    """The float64 redo of undecided (row, unit) pairs reading the block's float32 arrays in place gives the
    same values and bounds, to the bit, as gathering the rows, widening them and padding them; and it runs
    (inputs near boundaries leave pairs undecided in float32). ``crude``: the float32 engine with the crude
    convolution bounds, whose ReLU output's bound the redo computes entry by entry."""
    net = _ConvPool(5, pool).eval()
    shape = (2, 10, 10) if pool else (2, 7, 7)
    g = trace(net, input_shape=shape)
    n_in = math.prod(shape)
    X = _near(g, n_in, 5, 4).float()
    seen = []
    orig = certified._Engine._refine

    def both(self, src, xin, err, rows, units):
        a = orig(self, src, xin, err, rows, units)
        with monkeypatch.context() as m:
            m.setattr(certified._Engine, "_relu_in_place", lambda *_: None)
            b = orig(self, src, xin, err, rows, units)
        seen.append(self._relu_in_place(xin, err) is not None and len(rows) > 0)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        return a

    monkeypatch.setattr(certified._Engine, "_refine", both)
    # (the one-level redo first: two convolutions otherwise go through both first, and _refine only
    # sees what that leaves open, test_convpat3_redo)
    monkeypatch.setattr(certified, "_DEEP_FIRST", 0)
    for blocks in (1 << 22, 2048):
        monkeypatch.setattr(certified, "_CHUNK_BYTES", blocks)
        graph_patterns(g, X, _engines={"crude32": crude})
    assert any(seen)
