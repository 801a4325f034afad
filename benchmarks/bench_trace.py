"""The tracer's fixed cost: ``trace`` and ``affine_layers`` on small networks, netgeom's Sequential walk vs
torch.fx symbolic tracing (the path every other model takes).

For a plain ``nn.Sequential`` netgeom builds the fx graph by walking the children and converts it like a
traced one, so both columns produce the same ``PLGraph`` (checked node by node: ``same``). Times are the
best of ``--repeat`` rounds of ``--number`` calls, wall clock and the calling thread's CPU time (on a busy
machine the thread time is the steadier figure). ``fx/walk`` > 1: the walk is faster.

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


if __name__ == "__main__":
    main()
