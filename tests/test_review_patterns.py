"""Review of count_patterns' chunk workers and progressive int8 first layer: answers on worker threads equal
the sequential ones (with the pool really in use), progressive refinement decides signs exactly, and the
workers carry the caller's per-thread settings that matter."""

import re
import threading
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
from _platform import X86_LINUX, cpu_flags, unavailable
from hypothesis import given, settings
from hypothesis import strategies as st

import netgeom.nets._workers as workers
from netgeom import count_patterns, mlp, trace
from netgeom.nets._int8 import int8_products_exact
from netgeom.nets.certified import chain_decide, chain_patterns, chain_plan


def _spy(monkeypatch):
    """chunk_pool wrapped to record whether count_patterns got a real pool."""
    made = []
    real = workers.chunk_pool

    def spy(n=None):
        made.append(real(n))
        return made[-1]

    monkeypatch.setattr(workers, "chunk_pool", spy)
    return made


def _key(r):
    return (r.count, r.patterns.tobytes(), r.multiplicities.tobytes(), r.per_layer, r.cumulative,
            r.n_float64, r.n_exact, r.n_samples)


def test_inputs_that_require_grad_are_counted_on_the_workers(monkeypatch, pool_runtime):
    # grad mode is per thread: the workers did not inherit count_patterns' no_grad, and an X that requires
    # grad reached .numpy() there (RuntimeError) while the sequential path counted it
    made = _spy(monkeypatch)
    monkeypatch.setattr("netgeom.regions.patterns._CHAIN_ROWS", 1024)
    net = mlp(300, [120, 60], 3, seed=1)
    X = torch.rand(3000, 300, generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = count_patterns(net, X.clone().requires_grad_())
    assert any(p is not None for p in made) and got.n_float64 > 0  # (float64 dot products on the workers)
    monkeypatch.setattr(workers, "chunk_pool", lambda n=None: None)
    assert _key(got) == _key(count_patterns(net, X))


def test_worker_threads_run_mkl_on_one_thread_after_set_num_threads(pool_runtime):
    # torch.set_num_threads(n) anywhere in the process makes every new thread's lazy init call MKL's
    # per-thread mkl_set_num_threads_local(n), which MKL's products follow over the OpenMP setting: workers
    # then ran their float products on n threads each (one extra MKL thread per worker, ~30% more CPU time
    # for 784-400-400-10 on 2 cores)
    if not torch.backends.mkl.is_available():
        unavailable("torch without MKL: no MKL thread count to hold", expected=X86_LINUX)
    assert workers._mkl_local() is not None  # torch has MKL: its per-thread setter must be found
    pool = workers.chunk_pool(2)

    def mkl(_):
        return int(re.search(r"mkl_get_max_threads\(\) : (\d+)", torch.__config__.parallel_info()).group(1))

    with pool:
        assert list(workers.map_ordered(pool, mkl, range(4), 2)) == [1, 1, 1, 1]
    assert mkl(0) == 2  # the caller keeps its own


@pytest.mark.parametrize("net_seed", [0, 3])
def test_pool_one_thread_and_no_pool_give_the_same_result(monkeypatch, pool_runtime, net_seed):
    monkeypatch.setattr("netgeom.regions.patterns._CHAIN_ROWS", 1024)
    net = mlp(120, [64, 64, 32], 3, seed=net_seed)
    X = torch.rand(6000, 120, generator=torch.Generator().manual_seed(net_seed))
    made = _spy(monkeypatch)
    par = count_patterns(net, X, per_layer=True)
    assert any(p is not None for p in made)
    torch.set_num_threads(1)
    one = count_patterns(net, X, per_layer=True)
    torch.set_num_threads(2)
    monkeypatch.setattr(workers, "chunk_pool", lambda n=None: None)
    seq = count_patterns(net, X, per_layer=True)
    assert _key(par) == _key(one) == _key(seq)
    assert par.n_float64 > 0  # the float64 redo path ran on the workers


def test_an_error_in_a_later_batch_is_raised_and_no_worker_is_left(monkeypatch, pool_runtime):
    made = _spy(monkeypatch)
    net = mlp(20, [10], 1, seed=0)
    bad = [torch.rand(300, 20), torch.rand(300, 20), torch.rand(300, 20), torch.rand(300, 21)]
    monkeypatch.setattr("netgeom.regions.patterns._CHAIN_ROWS", 100)
    with pytest.raises(ValueError, match=r"X batch 3 has samples of shape \(21,\)"):
        count_patterns(net, iter(bad))
    assert any(p is not None for p in made)
    assert not [t for t in threading.enumerate() if t.name.startswith("netgeom-chunk") and t.is_alive()]


def test_concurrent_counts_from_threads_equal_the_sequential_ones(monkeypatch, pool_runtime):
    # as in a threaded sweep: each caller makes its own pool; answers must not mix
    monkeypatch.setattr("netgeom.regions.patterns._CHAIN_ROWS", 512)
    nets = [mlp(50, [40, 40], 2, seed=s) for s in range(3)]
    Xs = [torch.randn(2500, 50, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    out = [None] * 3

    def work(i):
        out[i] = count_patterns(nets[i], Xs[i], per_layer=True)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    monkeypatch.setattr(workers, "chunk_pool", lambda n=None: None)
    for i in range(3):
        assert _key(out[i]) == _key(count_patterns(nets[i], Xs[i], per_layer=True))


def _rational_bits(net: nn.Sequential, X: torch.Tensor) -> np.ndarray:
    """Signs in exact rational arithmetic, read from the torch modules (independent of netgeom)."""
    layers = []
    for m in net:
        if isinstance(m, nn.Linear):
            W = [[Fraction(v) for v in row] for row in m.weight.detach().double().tolist()]
            layers.append([W, [Fraction(v) for v in m.bias.detach().double().tolist()], None])
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            layers[-1][2] = Fraction(getattr(m, "negative_slope", 0.0))
    rows = []
    for x in X.double().tolist():
        h, bits = [Fraction(v) for v in x], []
        for W, b, slope in layers:
            z = [sum((w * a for w, a in zip(row, h)), bi) for row, bi in zip(W, b)]
            bits += [v > 0 for v in z]
            h = [v if v > 0 else v * slope for v in z]
        rows.append(bits)
    return np.array(rows, dtype=bool)


def _near_zero_case(seed, slope, e, dtype):
    """A net whose second-layer units are all ~0 at a point x0 (their biases set from the exact first-layer
    output), and rows x0 moved by 1e-1 .. 1e-15: each first-layer precision (1, 2, 3 anti-diagonals, the
    refined four, a float64 redo, exact arithmetic) has rows only it decides."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    n0, w1, w2 = (int(v) for v in rng.integers(2, 9, 3))
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    net = nn.Sequential(nn.Linear(n0, w1), act, nn.Linear(w1, w2), nn.ReLU(), nn.Linear(w2, 2), nn.ReLU())
    net = net.double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
        x0 = ((torch.rand(n0, generator=g, dtype=torch.float64) * 2 - 1) * 2.0**e).to(dtype).double()
        W1 = [[Fraction(v) for v in r] for r in net[0].weight.tolist()]
        z1 = [sum((w * Fraction(a) for w, a in zip(r, x0.tolist())), Fraction(bj))
              for r, bj in zip(W1, net[0].bias.tolist())]
        h1 = [v if v > 0 else v * Fraction(slope) for v in z1]
        W2 = [[Fraction(v) for v in r] for r in net[2].weight.tolist()]
        b2 = [-float(sum((w * a for w, a in zip(r, h1)), Fraction(0))) for r in W2]
        net[2].bias.copy_(torch.tensor(b2))
    eps = 10.0 ** -torch.linspace(1, 15, 60, dtype=torch.float64)
    X = (x0 + eps[:, None] * torch.randn(60, n0, generator=g, dtype=torch.float64) * 2.0**e).to(dtype)
    return net, X


def _check_progressive(net, X) -> int:
    """Every (m, first diagonals) decision equals the rational one; how many rows were refined."""
    ref = _rational_bits(net, X)
    gr = trace(net)
    plan = chain_plan(gr, "cpu")
    relus = [n.index for n in gr.nodes if n.op == "relu"]
    refined = 0
    if not int8_products_exact():
        vnni = bool({"avx512_vnni", "avx_vnni"} & cpu_flags())
        unavailable("torch._int_mm is not exact on this CPU (no VNNI): the int8 path is never used here",
                    expected=vnni)
    for m in (1, 2):
        for lv in (1, 2, 3):
            assert plan.int8_layer(lv) is not None
            dec, _ = chain_decide(gr, plan, X, m, int8=lv)
            assert np.array_equal(np.concatenate([dec[i].numpy() for i in relus], 1), ref), (m, lv)
            stats: dict = {}
            chain_patterns(plan, X, m, lv, stats)
            refined += stats.get("refined", 0)
    return refined


@settings(max_examples=12, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from([0.0, 0.1, -0.5, -1.0, 2.0]),
    st.integers(-30, 30),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_progressive_int8_decides_second_layer_units_at_every_distance_from_zero(seed, slope, e, dtype):
    _check_progressive(*_near_zero_case(seed, slope, e, dtype))


@pytest.mark.parametrize("slope", [0.0, -0.5])
def test_progressive_int8_refined_rows_get_the_rational_signs(slope):
    assert _check_progressive(*_near_zero_case(1, slope, 0, torch.float64)) > 0  # the refinement ran
