"""trace's cheaper stand-in for fx's patching of nn.Module (issue 15, the max-pool slice row): fx's own
wrappers, called from a dispatcher on nn.Module._call_impl and from __getattr__ dispatchers on the traced
model's classes, on the tracing thread only. Same graph as fx's own patching, everything undone after, other
threads untouched."""

import math
import threading

import pytest
import torch
import torch.fx._symbolic_trace as fx_st
import torch.nn.functional as F
from hypothesis import given, settings
from test_graph import _build, _conv_cfg, _MathShapes, _PoolNet, _ResMLP, _TorchvisionBlock
from torch import nn

import netgeom as ng
from netgeom.nets import graph as G

_MATH = dict(vars(math))
_FIELDS = ("name", "op", "inputs", "shape", "source", "module", "param_name", "kind", "in_shape")


def _fx_nodes(model):
    g = G._Tracer().trace(model)
    return [
        (n.op, str(n.target), n.name, repr((n.args, n.kwargs)), n.meta.get("netgeom_frame"))
        for n in g.nodes
    ]


def _pl(g):
    return [tuple(getattr(n, f) for f in _FIELDS) for n in g.nodes]


def _fx_patching(monkeypatch):
    """fx's own patching of nn.Module for the traces that follow (the reference)."""
    monkeypatch.setattr(G, "_HOOKS_WORK", [False])


def _assert_clean():
    assert nn.Module.__dict__["_call_impl"] is G._ORIG_CALL_IMPL
    assert nn.Module.__dict__["__getattr__"] is fx_st._orig_module_getattr
    assert nn.Module.__dict__["__call__"] is fx_st._orig_module_call
    assert G._HOOK_USERS == {"_call_impl": 0} and not G._FX_SWAP
    assert fx_st._new_patcher is G._FX_ORIG["_new_patcher"] and fx_st._create_wrapped_func is G._FX_WRAP[0]
    assert fx_st.CURRENT_PATCHER is None
    assert vars(math) == _MATH  # fx's wrappers of math's functions swapped back out
    tls = G._HOOK_TLS.__dict__
    assert tls.get("call") is None and tls.get("getattr") is None and not tls.get("active")
    for c in (nn.Linear, nn.Conv2d, nn.ReLU, nn.Sequential, nn.ModuleList):
        assert "__getattr__" not in c.__dict__


class _Shared(nn.Module):
    """A module called twice, a parameter read by attribute twice, math on shapes, a nested custom module
    traced into, a ModuleList loop, an in-place ReLU."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = nn.Linear(4, 4)
        self.w = nn.Parameter(torch.randn(3, 4))
        self.b = nn.Parameter(torch.randn(3))
        self.inner = _Inner()
        self.loop = nn.ModuleList([nn.Linear(4, 4), nn.ReLU(inplace=True)])

    def forward(self, x):
        h = self.fc(torch.relu(self.fc(x)))
        for m in self.loop:
            h = m(h)
        h = self.inner(h) + h
        h = h.reshape(-1, math.prod(h.shape[1:]))
        return F.linear(h, self.w, self.b) + F.linear(h, self.w)


class _Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.1))

    def forward(self, x):
        return self.seq(x)


class _GlobalMax(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 12), nn.Linear(12, 4), nn.Linear(1, 3)

    def forward(self, x):
        z = self.fc2(torch.relu(self.fc1(x)))
        return self.fc3(F.max_pool1d(z.unsqueeze(1), 4).flatten(1))


def _models():
    torch.manual_seed(0)
    return [
        _Shared(),
        _Inner(),
        _GlobalMax(),
        _PoolNet(3),
        _MathShapes().double(),
        _ResMLP(3, 4, 2, ["module_inplace", "leaky_module", "method"]).eval(),
        _TorchvisionBlock(2).eval(),
    ]


def test_hooks_trace_the_graph_fx_patching_traces(monkeypatch):
    assert G._hooks_work()  # this torch: the dispatchers reach fx's wrappers
    models = _models()
    shapes = [None, None, None, None, (6,), None, (2, 5, 5)]
    ours = [(_fx_nodes(m), _pl(ng.trace(m, input_shape=s))) for m, s in zip(models, shapes)]
    _assert_clean()
    _fx_patching(monkeypatch)
    ref = [(_fx_nodes(m), _pl(ng.trace(m, input_shape=s))) for m, s in zip(models, shapes)]
    for got, want in zip(ours, ref):
        assert got == want


@given(_conv_cfg())
@settings(max_examples=15, deadline=None)
def test_hooks_trace_the_graph_fx_patching_traces_on_random_conv_nets(cfg):
    net, shape = _build(cfg)
    got = (_fx_nodes(net), _pl(ng.trace(net, input_shape=shape)))
    G._HOOKS_WORK[0] = False
    try:
        want = (_fx_nodes(net), _pl(ng.trace(net, input_shape=shape)))
    finally:
        G._HOOKS_WORK[0] = True
    assert got == want
    _assert_clean()


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # data-dependent control flow: fx refuses it
            return y
        return -y


class _Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        self.fc(x)
        raise KeyError("inside forward")


class _Sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return torch.sigmoid(self.fc(x))


_FOREIGN = nn.Linear(2, 2)


class _CallsForeign(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return _FOREIGN(self.fc(x))  # a module that is not the model's


@pytest.mark.parametrize("model", [_Branchy, _Raises, _Sigmoid, _CallsForeign])
def test_refusals_are_fx_patchings_and_leave_nothing_patched(monkeypatch, model):
    with pytest.raises(ng.UnsupportedLayerError) as ours:
        ng.trace(model())
    _assert_clean()
    _fx_patching(monkeypatch)
    with pytest.raises(ng.UnsupportedLayerError) as ref:
        ng.trace(model())
    assert str(ours.value) == str(ref.value)
    if model is _CallsForeign:
        assert "not installed as a submodule" in str(ours.value)


class _OwnGetattr(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def __getattr__(self, name):  # shadows fx's patch of nn.Module.__getattr__ (and a dispatcher)
        return super().__getattr__(name)

    def forward(self, x):
        return self.fc(x)


class _OwnCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 3)

    def __call__(self, *args):
        return super().__call__(*args)

    def forward(self, x):
        return torch.relu(self.fc(x))


class _Holds(nn.Module):
    """A root model's own __call__ is refused (fx traces the root's forward only); a submodule's is traced."""

    def __init__(self):
        super().__init__()
        self.inner = _OwnCall()

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("model", [_OwnGetattr, _Holds])
def test_classes_with_their_own_call_or_getattr_are_traced_with_fx_patching(model):
    m = model()
    assert G._ModuleHooks.plan(m) is None
    g = ng.trace(m)
    x = torch.randn(4, 2, dtype=torch.float64)
    assert torch.allclose(g.forward(x), m.double()(x), atol=1e-12)
    _assert_clean()


class _Paused(nn.Module):
    """A forward that waits, mid-trace, until another thread has done its work."""

    def __init__(self, started, go):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(3, 5), nn.Linear(5, 2)
        self.started, self.go = started, go

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        self.started.set()
        assert self.go.wait(30)
        return self.fc2(h)


def test_other_threads_modules_and_traces_are_untouched_while_a_trace_runs():
    """fx's own patching reroutes every thread's module calls into the trace running (a module of the
    model called elsewhere returns a Proxy, any other raises NameError); the dispatchers only reroute the
    tracing thread's. Another thread's trace waits for the running one."""
    started, go = threading.Event(), threading.Event()
    paused = _Paused(started, go)
    out = {}

    def run():
        try:
            out["graph"] = ng.trace(paused)
        except BaseException as exc:  # handed to the test
            out["error"] = exc
        finally:
            started.set()

    t = threading.Thread(target=run)
    t.start()
    try:
        assert started.wait(30)
        assert G._HOOK_USERS["_call_impl"] == 1  # the trace is inside forward, dispatchers installed
        x = torch.randn(4, 3)
        y = paused.fc1(x)  # the model's own module, called here with a real tensor
        assert type(y) is torch.Tensor and torch.equal(y, F.linear(x, paused.fc1.weight, paused.fc1.bias))
        assert type(paused.fc1.weight) is nn.Parameter
        # a trace in another thread meanwhile waits for this one (traces run one at a time: fx keeps its
        # patcher in one global), then gives the model's graph
        other, got = _GlobalMax(), {}
        t2 = threading.Thread(target=lambda: got.setdefault("g", ng.trace(other)))
        t2.start()
        t2.join(0.5)
        assert "g" not in got
    finally:
        go.set()
        t.join()
    t2.join(60)
    z = torch.randn(6, 2, dtype=torch.float64)
    assert torch.allclose(got["g"].forward(z), other.double()(z), atol=1e-12)
    assert "error" not in out
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.allclose(out["graph"].forward(x), paused.double()(x), atol=1e-12)
    _assert_clean()


class _Annotated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        return self.fc(inp)


class _Default(_Annotated):
    def forward(self, inp, scale=1):
        return self.fc(inp)


class _Star(_Annotated):
    def forward(self, *inputs):
        return self.fc(inputs[0])


@pytest.mark.parametrize("model", [_Annotated, _Default, _Star, _Shared])
def test_placeholders_are_fx_own(model):
    import torch.fx as fx

    def places(g):
        return [(n.name, n.target, n.args, n.type) for n in g.nodes if n.op == "placeholder"]

    m = model()
    assert places(G._Tracer().trace(m)) == places(fx.Tracer().trace(m))


class _NoGetattrMeta(type):
    def __setattr__(cls, name, value):
        if name == "__getattr__":
            raise TypeError("this class takes no __getattr__")
        super().__setattr__(name, value)


class _Refusing(nn.Module, metaclass=_NoGetattrMeta):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(2, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_a_class_refusing_the_dispatcher_is_traced_with_fx_patching_and_nothing_is_left():
    m = _Refusing()
    assert G._ModuleHooks.plan(m) is not None  # it looks like any module, but refuses the assignment
    g = ng.trace(m)
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(g.forward(x), m.double()(x), atol=1e-12)
    _assert_clean()


def _trace_in_child():
    m = _GlobalMax()
    g = ng.trace(m)
    z = torch.randn(6, 2, dtype=torch.float64)
    ok = bool(torch.allclose(g.forward(z), m.double()(z), atol=1e-12))
    try:
        _assert_clean()
    except AssertionError as exc:
        import traceback

        return ok, traceback.format_exc(limit=-1) + str(exc)
    return ok, True


def test_a_child_forked_while_another_thread_traces_traces_and_is_left_clean():
    import multiprocessing

    from _platform import X86_LINUX, unavailable

    if "fork" not in multiprocessing.get_all_start_methods():
        unavailable("no fork start method on this platform", expected=X86_LINUX)
    started, go = threading.Event(), threading.Event()
    paused = _Paused(started, go)
    t = threading.Thread(target=lambda: ng.trace(paused))
    t.start()
    try:
        assert started.wait(30)
        with G._HOOK_LOCK:  # held at the fork, as if a trace were installing its dispatchers
            ctx = multiprocessing.get_context("fork")
            child = ctx.Pool(1)
        try:
            assert child.apply_async(_trace_in_child).get(timeout=60) == (True, True)
        finally:
            child.terminate()
    finally:
        go.set()
        t.join(30)
    _assert_clean()


def test_finite_norms_of_mixed_dtypes(monkeypatch):
    """Small CPU tensors entry by entry, others by one fused norm each (finite proves the entries finite):
    inf/NaN entries, an overflowing norm (float16) and non-float tensors answer False (the caller then checks
    the entries)."""
    ts = [
        torch.ones(3, dtype=torch.float64),
        torch.tensor([1.0, float("inf")], dtype=torch.float32),
        torch.ones(2, dtype=torch.float16),
        torch.tensor([1, 2]),
        torch.full((2,), 60000.0, dtype=torch.float16),
        torch.tensor([float("nan")], dtype=torch.float64),
    ]
    assert G._finite_norms(ts) == [True, False, True, False, True, False]  # small: entry by entry
    monkeypatch.setattr(G, "_NUMPY_CHECK", 0)  # the fused norms
    assert G._finite_norms(ts) == [True, False, True, False, False, False]
    assert G._finite_norms(ts[:1] + ts[5:]) == [True, False]  # one dtype: stacked as they are
    monkeypatch.undo()
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    net[2].register_buffer("extra", torch.tensor([float("nan")], dtype=torch.float32))
    with pytest.raises(ValueError, match="non-finite values .* '2.extra'"):
        ng.trace(net)
    big = nn.Sequential(nn.Linear(300, 300), nn.ReLU(), nn.Linear(300, 1))  # past the numpy check's size
    with torch.no_grad():
        big[0].weight[7, 9] = float("inf")
    with pytest.raises(ValueError, match="non-finite values .* '0.weight'"):
        ng.trace(big)


class _GradMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x) if torch.is_grad_enabled() else torch.relu(self.fc(x))


def test_forward_is_traced_in_the_callers_grad_mode():
    """The conversion runs without autograd; fx's trace of forward in the caller's mode, as before."""
    m = _GradMode()
    assert [n.op for n in ng.trace(m).nodes] == ["input", "affine", "output"]
    with torch.no_grad():
        assert [n.op for n in ng.trace(m).nodes] == ["input", "affine", "relu", "output"]
    assert torch.is_grad_enabled()
