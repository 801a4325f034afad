"""count_patterns on traced graphs (not chains) with chunks on worker threads (netgeom.regions.patterns: one
thread per torch thread, each running the graph engine on one OpenMP thread, the engines shared): the same
patterns as rational arithmetic near the pattern boundaries, whichever thread decides which chunk, with the
float32 trial sending the rest to float64 or not, and the precision switched to float64 between chunks."""

import threading

import numpy as np
import pytest
import torch
from _platform import OPENMP, X86_LINUX, unavailable
from test_gpat import _near, _ResConv, _resconv_bits, _ResMLP, _resmlp_bits

from netgeom import count_patterns, trace
from netgeom.nets import certified
from netgeom.regions import patterns
from netgeom.regions.patterns import pack_patterns, unique_rows


def _spy(monkeypatch):
    """Records (thread name, rows, dtype) of every graph_patterns call count_patterns makes."""
    calls = []
    orig = certified.graph_patterns

    def spy(g, x, **kw):
        calls.append((threading.current_thread().name, x.shape[0], kw.get("dtype")))
        return orig(g, x, **kw)

    monkeypatch.setattr(certified, "graph_patterns", spy)
    return calls


def _pool_or_skip():
    from netgeom.nets._workers import _openmp

    if _openmp() is None:
        unavailable("torch's OpenMP runtime is not reachable here", expected=X86_LINUX and OPENMP)


def _count(net, X, ref, threads: int, **kw):
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        res = count_patterns(net, X, verbose=False, **kw)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(n0)
    u, c = unique_rows(pack_patterns(ref))
    assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)
    assert res.n_samples == len(X)
    return res


@pytest.mark.parametrize("redo64", [2.0, -1.0])
def test_graph_chunks_on_worker_threads_equal_rationals(redo64, monkeypatch):
    """A residual MLP near its boundaries, 2 torch threads: chunks of 7 rows on the pool's threads give the
    rational patterns, with the trial keeping float32 (2: no fraction goes over) or sending everything to
    float64 (-1: any trial goes over), and the same with torch on one thread (no pool: the calling thread)."""
    _pool_or_skip()
    net = _ResMLP(2).eval()
    g = trace(net)
    X0 = _near(g, 6, 2, 5).float()
    reps = 600 // len(X0) + 1  # past the 512-row trial
    X, ref = X0.repeat(reps, 1), np.tile(_resmlp_bits(net, X0), (reps, 1))
    monkeypatch.setattr(patterns, "_GRAPH_ROWS", 7)
    monkeypatch.setattr(patterns, "_REDO64", redo64)
    calls = _spy(monkeypatch)
    res = _count(net, X, ref, 2, batch_size=1000)
    names = {c[0] for c in calls[1:]}
    assert calls[0][0] == threading.current_thread().name and calls[0][1] == min(512, len(X))  # the trial
    assert all(n.startswith("netgeom-chunk") for n in names)
    assert all(c[1] <= 7 for c in calls[1:]) and sum(c[1] for c in calls) == len(X)
    want = torch.float64 if redo64 < 0 else torch.float32
    assert all(c[2] == want for c in calls[1:])
    if redo64 < 0:
        assert res.n_float64 >= len(X) - 512  # every row after the trial
    calls.clear()
    _count(net, X, ref, 1, batch_size=1000)
    assert {c[0] for c in calls} == {threading.current_thread().name}  # one torch thread: no pool


def test_graph_precision_switches_to_float64_between_chunks(monkeypatch):
    """When a chunk leaves more than _REDO64 of its rows to float64, later chunks start in float64; the
    chunks already handed out keep float32; every pattern stays exact (a residual conv net on images)."""
    _pool_or_skip()
    net = _ResConv(3).eval()
    g = trace(net, input_shape=(1, 5, 5))
    X = _near(g, 25, 3, 4).clamp_min(0.0).float()
    X = torch.cat([X, X.flip(0), X, X.flip(0)]).reshape(-1, 1, 5, 5)
    ref = _resconv_bits(net, X)
    monkeypatch.setattr(patterns, "_GRAPH_ROWS", 5)
    calls = _spy(monkeypatch)
    monkeypatch.setattr(patterns, "_REDO64", 0.0)
    # a trial of 3 far-from-boundary rows decides everything in float32: the switch comes from a chunk
    far = torch.full((3, 1, 5, 5), 0.5)
    X = torch.cat([far, X])
    ref = np.concatenate([_resconv_bits(net, far), ref])
    _count(net, X, ref, 2, batch_size=3)
    dts = [c[2] for c in calls]
    assert dts[0] == torch.float32
    assert torch.float64 in dts[1:]  # switched
    i = dts.index(torch.float64)
    assert all(d == torch.float64 for d in dts[i + 4 :])  # once switched (up to the chunks in flight)
