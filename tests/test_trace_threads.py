"""Traces in several threads at once: torch.fx patches torch's functions process-wide while it traces and
keeps its patcher in one module global, so unguarded concurrent traces reverted each other's patches and
failed ("CURRENT_PATCHER is None in finally block") or traced through another thread's patches. Users
call netgeom from thread pools (Dask's threaded workers, joblib's threading backend)."""

from __future__ import annotations

import sys
import threading

import torch
from torch import nn

import netgeom as ng


class _Functional(nn.Module):
    """A model with its own forward and functional calls: fx's patching path (no Sequential shortcut)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(14, 3)

    def forward(self, x):
        h = torch.nn.functional.relu(self.a(x))
        return torch.relu(self.b(torch.cat([h, x], 1)))


def test_concurrent_traces_give_the_graph_of_a_lone_trace():
    model = _Functional()
    want = [(n.op, n.name, n.shape, n.inputs) for n in ng.trace(model).nodes]
    x = torch.randn(5, 6, dtype=torch.float64)
    out = ng.trace(model).forward(x)
    errors, got = [], []
    start = threading.Barrier(4)

    def work():
        try:
            start.wait()
            for _ in range(40):
                g = ng.trace(model)
                got.append(([(n.op, n.name, n.shape, n.inputs) for n in g.nodes], g.forward(x)))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (a switch every few bytecodes: interleavings a quiet run rarely meets)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[:3]
    assert len(got) == 160
    assert all(nodes == want and torch.equal(y, out) for nodes, y in got)


def test_trace_lock_excludes_other_threads_is_reentrant_and_survives_a_fork():
    from netgeom.nets.graph import _TraceLock

    lock, order = _TraceLock(), []

    def other():
        with lock.exclusive():
            order.append("other")

    with lock.exclusive(), lock.exclusive():  # one thread: nested holds
        t = threading.Thread(target=other)
        t.start()
        t.join(0.2)  # (the other thread is now waiting for the hold to end)
        order.append("mine")
    t.join(30)
    assert order == ["mine", "other"]
    with lock.exclusive():  # a child forked inside a hold keeps it and releases it through the same object
        lock.after_fork()
        assert lock._owner == threading.get_ident()
    lock._owner, lock._depth = -1, 1  # (a hold of another thread, which is not in the child)
    lock.after_fork()
    with lock.exclusive():  # nothing left held
        pass
