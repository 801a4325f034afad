"""The tracer's fixed cost: ``trace`` and ``affine_layers`` on small networks, netgeom's Sequential walk vs
torch.fx symbolic tracing (the path every other model takes).

For a plain ``nn.Sequential`` netgeom builds the fx graph by walking the children and converts it like a
traced one, so both columns produce the same ``PLGraph`` (checked node by node: ``same``). Times are the
best of ``--repeat`` rounds of ``--number`` calls, wall clock and the calling thread's CPU time (on a busy
machine the thread time is the steadier figure). ``fx/walk`` > 1: the walk is faster.

Second table: models with a ``forward`` of their own (symbolic tracing), the global max-pool and residual nets
of ``bench_regions.py``: the whole trace and fx's symbolic trace alone, warm (traced just before) and right
after a 2-D slice of the model (``after slice``: the caches as ``regions_on_slice`` leaves them, the protocol
of ``bench_regions.py``), and how many times one trace wakes torch's threads to check their subnormal
flushing (``team``: only for weights or masks of 4096 entries or more, or a max-pooling not seen before).
The ``(fx patching)`` rows are the same calls with fx's own patching of ``nn.Module`` (and of ``math``'s
functions), which netgeom's tracer replaces by dispatchers calling fx's wrappers on the tracing thread.

    python benchmarks/bench_trace.py --quick     # a few seconds
    python benchmarks/bench_trace.py
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import torch

import netgeom.nets.graph as graph_mod
from netgeom.nets import affine_layers, lenet5, lenet_300_100, mlp, trace


def _best(fn, repeat: int, number: int) -> tuple[float, float]:
    for _ in range(number):  # warm up
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(number):
            fn()
        wall.append((time.perf_counter() - t0) / number)
        cpu.append((time.thread_time() - c0) / number)
    return min(wall), min(cpu)


def _same(a, b) -> bool:
    fields = ("name", "op", "inputs", "shape", "source", "module", "param_name", "kind", "in_shape")
    return len(a.nodes) == len(b.nodes) and all(
        all(getattr(x, f) == getattr(y, f) for f in fields) for x, y in zip(a.nodes, b.nodes)
    )


def _best_after(fn, before, repeat: int, number: int) -> tuple[float, float]:
    """Best wall and thread time of ``fn()`` timed right after an untimed ``before()``."""
    wall, cpu = [], []
    for _ in range(repeat * number):
        before()
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return min(wall), min(cpu)


def _team_checks(fn) -> int:
    """How many times ``fn()`` wakes torch's threads to check their subnormal flushing."""
    import netgeom._matmul as mm

    calls = []
    real = mm._workers_flush
    mm._workers_flush = lambda: calls.append(1) or real()
    try:
        fn()
    finally:
        mm._workers_flush = real
    return len(calls)


def _traced_rows(repeat: int, number: int) -> None:
    import os
    import sys

    import numpy as np

    from netgeom.regions.exact import _slice_on_graph

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_regions import _GlobalMax, _ResMLP

    cases = [
        ("max-pool 2-64-max16-16", _GlobalMax(2, 64, 16, 16, seed=0), 2.0),
        ("res 2-32x(1+2 blocks)", _ResMLP(2, 32, 2, 1, seed=0), 1.0),
    ]
    print(
        f"\n{'net (own forward)':>24} {'part':>19} {'warm wall':>9} {'warm cpu':>8} {'after slice wall':>16} "
        f"{'after slice cpu':>15} {'team':>4}"
    )
    for name, net, r in cases:
        net = net.float().double().eval()
        g = trace(net)
        plane = (np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]), (-r, r, -r, r), 10**6, 2**28)

        def sliced(g=g, plane=plane):
            _slice_on_graph(g, *plane)

        parts = (("trace", lambda n=net: trace(n)), ("fx", lambda n=net: graph_mod._Tracer().trace(n)))
        for own in (False, True):
            # own: fx's own patching of nn.Module (and of math's functions), which the dispatchers replace
            with mock.patch.object(graph_mod, "_HOOKS_WORK", [False] if own else graph_mod._HOOKS_WORK):
                for part, fn in parts:
                    warm = _best(fn, repeat, number)
                    cold = _best_after(fn, sliced, repeat, max(1, number // 4))
                    team = _team_checks(fn) if part == "trace" else ""
                    label = f"{part}{' (fx patching)' if own else ''}"
                    print(
                        f"{name:>24} {label:>19} {1e3 * warm[0]:>9.3f} {1e3 * warm[1]:>8.3f} "
                        f"{1e3 * cold[0]:>16.3f} {1e3 * cold[1]:>15.3f} {team:>4}",
                        flush=True,
                    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--number", type=int, default=None)
    args = ap.parse_args(argv)
    repeat = args.repeat or (5 if args.quick else 15)
    number = args.number or (20 if args.quick else 100)
    cases = [
        ("mlp 2-32-32-1", mlp(2, [32, 32], 1, seed=0)),
        ("mlp 2-100-100-10", mlp(2, [100, 100], 10, seed=0)),
    ]
    if not args.quick:
        cases += [("lenet_300_100", lenet_300_100()), ("lenet5", lenet5())]
    print(f"torch threads: {torch.get_num_threads()}; best of {repeat} x {number} calls; times in ms")
    print(
        f"{'net':>18} {'call':>13} {'walk wall':>9} {'walk cpu':>8} {'fx wall':>8} {'fx cpu':>7} "
        f"{'fx/walk':>7} {'same':>5}"
    )
    for name, net in cases:
        for call in (trace, affine_layers):
            walk = _best(lambda c=call, n=net: c(n), repeat, number)
            with mock.patch.object(graph_mod, "_sequential_graph", lambda model: None):
                fx = _best(lambda c=call, n=net: c(n), repeat, number)
                ref = trace(net)
            same = _same(trace(net), ref)
            print(
                f"{name:>18} {call.__name__:>13} {1e3 * walk[0]:>9.3f} {1e3 * walk[1]:>8.3f} "
                f"{1e3 * fx[0]:>8.3f} {1e3 * fx[1]:>7.3f} {fx[0] / walk[0]:>7.1f} {str(same):>5}",
                flush=True,
            )
    _traced_rows(repeat, number)
    print(f"load average (1 min) at the end: {__import__('os').getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
