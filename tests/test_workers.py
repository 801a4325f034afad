"""Chunk workers (netgeom.nets._workers): one OpenMP thread per worker, ordered results, same answers."""

import threading

import numpy as np
import pytest
import torch

import netgeom.nets._workers as workers
from netgeom import count_patterns, magnitude_prune, mlp
from netgeom.nets._workers import chunk_pool, map_ordered


def test_workers_run_torch_on_one_thread_and_leave_the_callers_count_alone(pool_runtime):
    before = torch.get_num_threads()
    pool = chunk_pool(2)
    with pool:
        who = lambda _: (threading.get_ident(), torch.get_num_threads())  # noqa: E731
        seen = list(map_ordered(pool, who, range(8), 4))
    assert {n for _, n in seen} == {1}
    assert threading.get_ident() not in {t for t, _ in seen}
    assert torch.get_num_threads() == before
    # a thread started afterwards still starts from the process-wide count
    out = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert out == [before]


def test_map_ordered_keeps_order_bounds_the_work_in_flight_and_raises_the_first_error(pool_runtime):
    pool = chunk_pool(2)
    drawn = []

    def items():
        for i in range(20):
            drawn.append(i)
            yield i

    def fn(i):
        if i == 13:
            raise ValueError("item 13")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 13"):
        for k, v in enumerate(map_ordered(pool, fn, items(), 3)):
            got.append(v)
            assert len(drawn) <= k + 1 + 3  # never more than `ahead` items beyond what was consumed
    assert got == [i * i for i in range(13)]
    pool.shutdown()
    assert list(map_ordered(None, fn, range(5), 3)) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("pruned", [False, True])
def test_count_patterns_on_workers_equals_the_sequential_count(monkeypatch, pool_runtime, pruned):
    net = mlp(300, [120, 60], 3, seed=1)
    if pruned:
        magnitude_prune(net, scope="layer", per_layer=[0.8, 0.5, 0.0]).apply(net)
    X = torch.rand(5000, 300, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batches = [X[i : i + 700] for i in range(0, 5000, 700)]  # ragged batches, split into chunks of 256
    monkeypatch.setattr("netgeom.regions.patterns._CHAIN_ROWS", 256)
    made = []
    real = workers.chunk_pool
    monkeypatch.setattr(workers, "chunk_pool", lambda n=None: made.append(real(n)) or made[-1])
    par = count_patterns(net, iter(batches), per_layer=True)
    assert made and made[0] is not None  # the workers really counted
    monkeypatch.setattr(workers, "chunk_pool", lambda n=None: None)
    seq = count_patterns(net, iter(batches), per_layer=True)
    assert par.count == seq.count and par.n_samples == seq.n_samples == 5000
    assert np.array_equal(par.patterns, seq.patterns)
    assert np.array_equal(par.multiplicities, seq.multiplicities)
    assert par.per_layer == seq.per_layer and par.cumulative == seq.cumulative
    assert (par.n_float64, par.n_exact) == (seq.n_float64, seq.n_exact)
    ref = count_patterns(net, X, precision="float64")
    assert np.array_equal(par.patterns, ref.patterns)


def test_a_callers_autocast_does_not_reach_the_certified_products(monkeypatch, pool_runtime):
    # several chunks: the caller's thread (trial batch, counting) and the workers both run under it
    monkeypatch.setattr("netgeom.regions.patterns._CHAIN_ROWS", 512)
    net = mlp(50, [30, 20], 2, seed=3)
    X = torch.rand(3000, 50, generator=torch.Generator().manual_seed(4))
    ref = count_patterns(net, X)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = count_patterns(net, X)
    assert np.array_equal(got.patterns, ref.patterns) and got.count == ref.count
