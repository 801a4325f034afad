"""The trace's fixed cost without changing what it reads: torch's worker threads are checked for subnormal
flushing only where they compute numbers the graph keeps (issue 15, the max-pool slice row)."""


import numpy as np
import pytest
import torch
from _platform import OPENMP, X86_LINUX, in_fresh_thread, unavailable
from torch import nn

import netgeom as ng
import netgeom._matmul as M
from netgeom.nets import graph as G


class _Pool(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(2, 3 * k), nn.Linear(3, 1)
        self.k = k

    def forward(self, x):
        m = nn.functional.max_pool1d(torch.relu(self.fc1(x)).unsqueeze(1), self.k).flatten(1)
        return self.fc2(m)


def _calls(monkeypatch):
    calls = []
    real = M._workers_flush
    monkeypatch.setattr(M, "_workers_flush", lambda: calls.append(1) or real())
    return calls


def test_small_net_trace_leaves_torch_threads_alone(monkeypatch):
    calls = _calls(monkeypatch)
    net = nn.Sequential(nn.Linear(64, 63), nn.ReLU(), nn.Linear(63, 1))  # 4032 weights: one thread
    ng.trace(net)
    assert calls == []
    ng.trace(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)))  # 4096: checked
    assert len(calls) == 1


@pytest.mark.parametrize("form", ["tensor", "array", "list"])
def test_large_masks_check_torch_threads(monkeypatch, form):
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 1))
    net[0].weight.data[:] = 0.5  # (the weights alone would be checked too: a float64 copy of them)
    small = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 1))
    for model, big in ((net, True), (small, False)):
        shape = model[0].weight.shape
        m = torch.ones(shape, dtype=torch.bool)
        mask = {"tensor": m, "array": m.numpy(), "list": m.tolist()}[form]
        calls = _calls(monkeypatch)
        g = ng.trace(model, {"0.weight": mask})
        assert g.nodes[1].mask is not None
        # a list's size is not at hand without reading it: counted as large
        assert bool(calls) == (big or form == "list")


def test_first_max_pool_of_a_shape_checks_torch_threads(monkeypatch):
    G._CHECKED_POOLS.clear()
    calls = _calls(monkeypatch)
    net = _Pool(5)
    ng.trace(net)
    assert len(calls) == 1  # torch's max-pooling ran, on its threads
    ng.trace(net)
    assert len(calls) == 1  # the windows were checked: their gather, on this thread
    a, b = (ng.trace(net).nodes for _ in range(2))
    assert [n.op for n in a] == [n.op for n in b] and torch.equal(a[3].windows, b[3].windows)


def test_small_subnormal_weights_exact_when_worker_threads_flush(two_threads):
    """Without the check, a small layer is converted on the calling thread, which keeps subnormals: its
    float32 weights of 1e-40 read exactly (as under the check), and so does a max-pooled net."""
    w = (np.random.default_rng(2).uniform(1, 2, (60, 60)) * 1e-40).astype(np.float32)
    net = nn.Sequential(nn.Linear(60, 60), nn.ReLU(), nn.Linear(60, 1))
    pool = _Pool(7)
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w))
        pool.fc1.weight.mul_(1e-39)
    G._CHECKED_POOLS.clear()

    def caller():
        if not torch.set_flush_denormal(True):
            return None
        try:
            _ = torch.ones(1 << 20) * 2  # the thread's OpenMP team starts flushing
            flushing = M._workers_flush()
            return flushing, ng.trace(net).nodes[1].kernel, ng.trace(pool).nodes[1].kernel
        finally:
            torch.set_flush_denormal(False)

    got = in_fresh_thread(caller)
    if got is None:
        unavailable("this CPU cannot flush subnormals", expected=X86_LINUX)
    flushing, kernel, pool_kernel = got
    if not flushing:
        unavailable(
            "this OpenMP runtime does not hand the caller's flush state to its threads (nothing to test)",
            expected=X86_LINUX and OPENMP,
        )
    assert torch.equal(kernel, torch.from_numpy(w).double())
    assert torch.equal(pool_kernel, pool.fc1.weight.detach().double())
    assert bool((pool_kernel != 0).all())


def test_a_tensor_constant_in_forward_leaves_no_attribute_on_the_model():
    # fx records a tensor made inside forward as an attribute of the model it traces; netgeom refuses such
    # a constant, and the model must come back as it was
    class WithConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)

        def forward(self, x):
            return torch.relu(self.lin(x) + torch.tensor([1.0, 2.0, 3.0, 4.0]))

    m = WithConstant()
    before = dict(vars(m))
    with pytest.raises(ng.UnsupportedLayerError, match="_tensor_constant0"):
        ng.trace(m)
    assert dict(vars(m)) == before and not hasattr(m, "_tensor_constant0")
