"""trace's shorter path through fx (issue 15, the max-pool slice row): _Tracer.create_node without fx's pytree
walk of the arguments for SymInt warnings, _Tracer._fx_call_module without the scope's copy.copy, and _Proxy's
torch functions without fx's pytree walks and warnings filter. Each must give the graph fx's own steps give:
nodes, names, arguments, types, meta (nn_module_stack), scopes; and plain fx.Tracer's nodes."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from test_trace_hooks import _models
from torch import nn

import netgeom as ng
from netgeom.nets import graph as G


class _Functions(nn.Module):
    """Torch functions with keyword arguments, tuples and lists, a tensor method through __torch_function__,
    shape arithmetic, a module called twice and a module traced into."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2 + 3, 3)
        self.side = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
        self.fc2 = nn.Linear(6, 2)

    def forward(self, x):
        h = F.leaky_relu(self.c1(x), negative_slope=0.2)
        h = F.max_pool2d(h, (2, 2), stride=2, padding=0)
        h = torch.flatten(h, 1)
        h = torch.cat([h, self.side(x)], dim=1)
        h = torch.relu(torch.add(h, h, alpha=1))
        h = F.relu(self.fc(h.reshape(h.size(0), -1)))
        return self.fc2(torch.cat((h, F.relu(h, inplace=False)), 1))


class _Methods(nn.Module):
    """A tensor method reached through __torch_function__ (a Python method of torch.Tensor called unbound):
    fx records it as a call_method (fx-level only: netgeom reads no unflatten)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return torch.Tensor.unflatten(torch.relu(self.fc(x)), 1, (2, 2)).flatten(1)


def _sig(tracer, g):
    return [
        (
            n.op, str(n.target), n.name, repr((n.args, n.kwargs)), n.type, sorted(n.meta),
            repr(n.meta.get("nn_module_stack")), tracer.node_name_to_scope.get(n.name),
            n.meta.get("netgeom_frame"),
        )
        for n in g.nodes
    ]


def _ours(m):
    t = G._Tracer()
    return _sig(t, t.trace(m))


def _all_models():
    return [*_models(), _Functions(), _Methods()]


def test_the_short_paths_are_on_in_this_torch():
    G._Tracer().trace(_Functions())
    assert G._FAST_NODES[0] is True and G._TENSOR_METHODS[0] is not None and G._hooks_work()


@pytest.mark.parametrize("k", range(len(_all_models())))
def test_short_paths_give_fx_own_steps_graph(monkeypatch, k):
    fast = _ours(_all_models()[k])
    assert G._FAST_NODES[0] is True
    monkeypatch.setattr(G, "_FAST_NODES", [False])
    monkeypatch.setattr(G, "_TENSOR_METHODS", [None])
    assert fast == _ours(_all_models()[k])


@pytest.mark.parametrize("k", range(len(_all_models())))
def test_graph_is_plain_fx_tracers_graph(k):
    m = _all_models()[k]
    plain = fx.Tracer().trace(m)
    ours = G._Tracer().trace(m)
    key = [(n.op, str(n.target), n.name, repr((n.args, n.kwargs)), n.type) for n in plain.nodes]

    def iadd_as_add(text: str) -> str:
        # ours records `x += y` as operator.iadd (an in-place add: every alias of x sees the sum), where fx's
        # Proxy, which has no __iadd__, records x + y
        return text.replace("<built-in function iadd>", "<built-in function add>").replace("iadd", "add")

    got = [(n.op, str(n.target), n.name, repr((n.args, n.kwargs)), n.type) for n in ours.nodes]
    assert [tuple(iadd_as_add(v) if isinstance(v, str) else v for v in row) for row in got] == key
    stack = [repr(n.meta.get("nn_module_stack")) for n in plain.nodes]
    assert [repr(n.meta.get("nn_module_stack")) for n in ours.nodes] == stack


def test_the_model_is_traced_and_computed_the_same():
    m = _Functions().double().eval()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = ng.trace(m, input_shape=(2, 4, 4))
    torch.testing.assert_close(g.forward(x), m(x).reshape(5, -1), rtol=0, atol=1e-10)


def test_arguments_of_unknown_types_take_fx_own_create_node():
    """_no_sym passes only values fx's walk cannot find a torch.Sym* value in; with the short path on, fx's
    Graph.create_node runs for no node of a plain model, and for a node whose arguments hold another type."""
    assert G._no_sym(((1, 2.0, "a", None, True), {"k": [torch.float64, torch.device("cpu")]}))
    assert not G._no_sym((object(),)) and not G._no_sym({"k": (1, object())})
    calls = []
    orig = fx.Graph.create_node

    def spy(self, *a, **k):
        calls.append(a[0])
        return orig(self, *a, **k)

    G._Tracer().trace(_Functions())  # (the probe check, once per process, before the spy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fx.Graph, "create_node", spy)
        G._Tracer().trace(_Functions())
        assert calls == []
        t = G._Tracer()
        t.graph = fx.Graph()
        t.create_node("call_function", torch.relu, (1, object()), {})
        assert calls == ["call_function"]


def test_torch_functions_leave_warnings_filters_as_they_were():
    before = list(warnings.filters)
    G._Tracer().trace(_Functions())
    assert warnings.filters == before
    assert math.prod((2, 3)) == 6 and vars(math)["prod"] is math.prod


def test_finiteness_by_sums_never_passes_a_non_finite_entry_and_rechecks_an_overflowing_sum():
    ts = [
        torch.tensor([1e308, 1e308], dtype=torch.float64),  # finite entries, the sum overflows: not proven
        torch.tensor([3e38, 3e38, -3e38], dtype=torch.float32),  # summed in float64: proven
        torch.tensor([float("inf"), -float("inf")], dtype=torch.float64),
        torch.tensor([float("nan"), 0.0], dtype=torch.float32),
    ]
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        assert G._finite_norms(ts) == [False, True, False, False]
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        net[0].bias[:] = 1e308  # the caller's entry check passes it
    assert ng.trace(net).nodes[1].op == "affine"


_FIRST_TRACES = """
import sys, threading, torch
sys.setswitchinterval(1e-6)  # (switches every few bytecodes: the interleavings of a loaded machine)
import netgeom as ng
from netgeom.nets import graph as G
from test_mpslice3_trace import _Functions
out, errs = [], []
def run():
    try:
        g = ng.trace(_Functions(), input_shape=(2, 4, 4))
        out.append([(n.op, n.name, n.shape, n.source) for n in g.nodes])
    except Exception as exc:
        errs.append(repr(exc))
ts = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]  # (a deadlock is the subprocess's timeout; a loaded machine is slow, not wrong)
assert not errs and len(out) == 4 and all(o == out[0] for o in out), errs
assert G._FAST_NODES[0] is True and G._HOOKS_WORK[0] is True
print("ok")
"""


def test_first_traces_of_a_process_in_several_threads_agree():
    """The once-per-process checks run under their own tracers' settings: threads tracing at once on first
    use neither deadlock nor see a half-made decision."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), *sys.path]))
    cmd = [sys.executable, "-c", _FIRST_TRACES]
    for _ in range(3):  # (a fresh process each: first use; unguarded, about one run in four failed)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
