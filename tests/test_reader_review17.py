"""Review 17: how netgeom reads user networks (aliasing, BatchNorm folding, conv channels, copies of weights,
subclasses of supported modules, the root's __call__, the first trace and other threads, errors)."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgeom as ng
from netgeom.nets.graph import UnsupportedLayerError


def _model_out(model, X):
    with torch.no_grad():
        return copy.deepcopy(model).double()(X.double())


def _gap(model, X, input_shape=None):
    g = ng.trace(model, input_shape=input_shape)
    y = _model_out(model, X).reshape(len(X), -1)
    return float((g.forward(X.double().reshape(len(X), -1)) - y).abs().max())


# ------------------------------------------------------------------- F2: copies are not aliases
class _CatOne(nn.Module):
    """torch.cat of one tensor is a copy: the in-place ReLU on h afterwards leaves feats as it was."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(2, 6), nn.Linear(6, 6), nn.Linear(6, 2)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.a(x)
        feats = torch.cat([h], 1)
        h = self.act(h)
        return self.c(F.relu(self.b(h) + feats))


def test_cat_of_one_tensor_is_a_copy_for_in_place_ops():
    torch.manual_seed(0)
    net = _CatOne().eval()
    X = torch.randn(500, 2, dtype=torch.float64) * 2
    assert _gap(net, X) < 1e-12
    md = copy.deepcopy(net).double()
    with torch.no_grad():
        z1 = md.a(X)
        z2 = md.b(F.relu(z1)) + z1
    ref = len({bytes(r) for r in torch.cat([z1 > 0, z2 > 0], 1).numpy().astype(np.int8)})
    assert ng.count_patterns(net, X, verbose=False).count == ref


class _CatOneFold(nn.Module):
    """A BatchNorm on a one-tensor cat must not fold into the Linear's node another reader of the cat uses."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.c = nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)
        with torch.no_grad():
            self.bn.running_var.fill_(4.0)
            self.bn.running_mean.fill_(1.0)

    def forward(self, x):
        f = torch.cat([self.a(x)], 1)
        return self.c(F.relu(self.bn(f)) + F.relu(f))


def test_cat_of_one_tensor_counts_its_readers_before_folding():
    torch.manual_seed(0)
    assert _gap(_CatOneFold().eval(), torch.randn(50, 3)) < 1e-12


class _FlattenThenInplace(nn.Module):
    def __init__(self, merge=True, keep=True):
        super().__init__()
        self.c, self.o = nn.Conv2d(2, 3, 3), nn.Linear(12, 2)
        self.merge, self.keep = merge, keep

    def forward(self, x):
        h = self.c(x)
        f = torch.flatten(h, 1) if self.merge else h.view(h.shape[0], 3, 2, 2)
        h.relu_()
        if not self.keep:
            return self.o(torch.flatten(h, 1))
        return self.o(torch.flatten(f, 1) + torch.flatten(h, 1))


def test_flatten_that_views_or_copies_then_in_place_is_refused():
    # torch.flatten views a contiguous conv output and copies a channels_last one: the value of f after
    # h.relu_() depends on the memory format, which the reader cannot see
    torch.manual_seed(0)
    net = _FlattenThenInplace().eval()
    with pytest.raises(UnsupportedLayerError, match="memory format"):
        ng.trace(net, input_shape=(2, 4, 4))
    X = torch.randn(20, 2, 4, 4)
    # a view (splitting axes) sees the in-place change in every layout: read exactly
    assert _gap(_FlattenThenInplace(merge=False).eval(), X, (2, 4, 4)) < 1e-12
    # nothing reads the flatten after the in-place op: nothing to refuse
    assert _gap(_FlattenThenInplace(keep=False).eval(), X, (2, 4, 4)) < 1e-12


# ------------------------------------------------------------------- F4: BatchNorm folded into the kernel
def _bn_stats(bn, lo=0.25, hi=16.0):
    with torch.no_grad():
        bn.running_var.copy_(torch.linspace(lo, hi, bn.num_features))
        bn.running_mean.copy_(torch.linspace(-1, 1, bn.num_features))
    return bn


@pytest.mark.parametrize("C", [3, 5])
def test_bn_on_another_axis_than_the_linear_outputs_leaves_the_kernel_unscaled(C):
    # Linear(4, 3) maps the last axis of a (C, 4) sample; BatchNorm1d(C) scales the C axis: no scale of it
    # belongs to the kernel's rows (C == 3 silently scaled them, C == 5 crashed every analysis)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), _bn_stats(nn.BatchNorm1d(C)), nn.ReLU(), nn.Flatten(),
                      nn.Linear(C * 3, 2)).eval()
    lay = ng.affine_layers(m, input_shape=(C, 4))[0]
    assert torch.equal(lay.kernel, m[0].weight.detach().double())
    assert _gap(m, torch.randn(30, C, 4), (C, 4)) < 1e-12
    m.input_shape = (C, 4)
    assert np.isfinite(ng.neural_persistence(m).layer_np).all()


@pytest.mark.parametrize("case", ["linear-unflatten-bn2d", "conv-flatten-bn1d"])
def test_bn_after_a_reshape_leaves_the_kernel_unscaled(case):
    torch.manual_seed(0)
    if case == "linear-unflatten-bn2d":
        m = nn.Sequential(nn.Linear(4, 18), nn.Unflatten(1, (2, 3, 3)), _bn_stats(nn.BatchNorm2d(2)),
                          nn.ReLU(), nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2)).eval()
        shape = (4,)
    else:
        m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), _bn_stats(nn.BatchNorm1d(8)), nn.ReLU(),
                          nn.Linear(8, 2)).eval()
        shape = (1, 4, 4)
    X = torch.randn(40, *shape)
    assert _gap(m, X, shape) < 1e-12
    assert torch.equal(ng.affine_layers(m, input_shape=shape)[0].kernel, m[0].weight.detach().double())
    assert ng.count_patterns(m, X, verbose=False, input_shape=shape).count >= 1
    assert np.isfinite(ng.neural_persistence(m, input_shape=shape).layer_np).all()


def test_bn_on_the_output_features_still_scales_the_kernel():
    torch.manual_seed(0)
    for m, shape in ((nn.Sequential(nn.Linear(4, 3), _bn_stats(nn.BatchNorm1d(3)), nn.ReLU(),
                                    nn.Linear(3, 2)).eval(), (4,)),
                     (nn.Sequential(nn.Conv2d(1, 3, 2), _bn_stats(nn.BatchNorm2d(3)), nn.ReLU(), nn.Flatten(),
                                    nn.Linear(27, 2)).eval(), (1, 4, 4))):
        bn = m[1]
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        want = m[0].weight.detach().double() * scale.reshape((-1,) + (1,) * (m[0].weight.ndim - 1))
        torch.testing.assert_close(ng.affine_layers(m, input_shape=shape)[0].kernel, want, rtol=1e-15, atol=0)


# ------------------------------------------------------------------- F3: a conv's own input channels
def test_conv_channels_come_from_the_conv_input_not_the_folded_node_input():
    # BatchNorm1d on the flat input, Unflatten, then a 1-in-channel conv: the affine node's in_shape is the
    # flat (16,), the conv's input is (1, 4, 4); read before as a depthwise conv over 16 channels
    torch.manual_seed(0)
    m = nn.Sequential(_bn_stats(nn.BatchNorm1d(16)), nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 16, 3),
                      nn.ReLU(), nn.Flatten(), nn.Linear(64, 2)).eval()
    ref = nn.Sequential(nn.Unflatten(1, (1, 4, 4)), m[2], nn.ReLU(), nn.Flatten(), m[5]).eval()
    m.input_shape = ref.input_shape = (16,)
    lg = ng.layer_graph(ng.affine_layers(m)[0])
    assert (lg.n_in, lg.n_out) == (1, 16)
    assert ng.network_graph(m).layers[0].n_in == 1
    a, b = ng.neural_persistence(m), ng.neural_persistence(ref)
    assert list(a.n_vertices) == list(b.n_vertices) == [17, 66]
    np.testing.assert_allclose(a.layer_np, b.layer_np, rtol=1e-12)
    ta, tb = ng.topology_bound(m), ng.topology_bound(ref)
    assert (list(ta.n_possible), list(ta.n_tree)) == (list(tb.n_possible), list(tb.n_tree))
    pa, pb = ng.spanning_forest_protect(m), ng.spanning_forest_protect(ref)
    assert torch.equal(pa["2.weight"], pb["1.weight"])
    assert ng.affine_layers(m)[0].kernel_in_shape == (1, 4, 4)


# ------------------------------------------------------------------- F5: float64 layers are copies
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_never_share_memory_with_the_model(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).to(dtype).eval()
    dense = ng.affine_layers(net)
    g = ng.trace(net)
    X = torch.randn(50, 3, dtype=torch.float64)
    y = g.forward(X)
    params = [p.data_ptr() for p in net.parameters()]
    for lay in dense:
        for t in (lay.kernel, lay.weight, lay.bias):
            assert t.data_ptr() not in params
    ng.magnitude_prune(net, 0.5).apply(net)  # pruning the model afterwards changes no reading made before
    assert float((dense[0].weight != 0).double().mean()) == 1.0
    assert torch.equal(g.forward(X), y)
    w = net[0].weight.detach().clone()
    ng.affine_layers(net)[0].kernel.mul_(2.0)  # nor does writing into a layer change the model
    assert torch.equal(net[0].weight.detach(), w)


# ------------------------------------------------------------------- F6: subclasses with their own forward
def _qat_model(kind):
    import torch.ao.nn.qat as nnqat
    from torch.ao.quantization import get_default_qat_qconfig

    qc = get_default_qat_qconfig("fbgemm")
    torch.manual_seed(0)
    if kind == "linear":
        m = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nnqat.Linear(6, 6, qconfig=qc), nn.ReLU(),
                          nn.Linear(6, 2))
        X = torch.randn(64, 3)
    else:
        m = nn.Sequential(nnqat.Conv2d(1, 2, 3, qconfig=qc), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        X = torch.randn(64, 1, 4, 4)
    with torch.no_grad():
        m.train()(X)  # the observers calibrate: the fake quantization is active
    return m.eval(), X


@pytest.mark.filterwarnings("ignore")
# (torch's own quantization modules call the deprecated torch.jit.script_method when they are built)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_qat_layers_are_refused_not_read_as_float_layers(kind):
    m, X = _qat_model(kind)
    with pytest.raises(UnsupportedLayerError, match="forward of its own"):
        ng.trace(m, input_shape=tuple(X.shape[1:]))


def test_a_torch_subclass_that_keeps_the_forward_is_read():
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear  # (nn.Linear, forward not overridden)

    torch.manual_seed(0)
    m = nn.Sequential(NonDynamicallyQuantizableLinear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    assert _gap(m, torch.randn(20, 3)) < 1e-12


# ------------------------------------------------------------------- F7: a root that overrides __call__
class _CallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(3, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.c(F.relu(self.a(x)))

    def __call__(self, x):
        return super().__call__(F.relu(x))  # preprocessing in __call__


class _Wrap(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def test_root_call_override_is_refused_and_a_wrapped_one_read():
    torch.manual_seed(0)
    net = _CallNet().eval()
    with pytest.raises(UnsupportedLayerError, match="own __call__"):
        ng.trace(net)
    X = torch.randn(100, 3, dtype=torch.float64)
    g = ng.trace(_Wrap(net))  # as a submodule its __call__ is traced
    assert float((g.forward(X) - _model_out(net, X)).abs().max()) < 1e-12


# ------------------------------------------------------------------- F9: errors that name the cause
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).eval()


# (torch.compile imports torch._dynamo, whose modules call the deprecated torch.jit.script_method)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("case, err, match", [
    ("meta", ValueError, "meta device"),
    ("compile", UnsupportedLayerError, "_orig_mod"),
    ("dataparallel", UnsupportedLayerError, "model.module"),
    ("lazy", ValueError, "lazy"),
])
def test_unreadable_model_objects_are_refused_naming_the_cause(case, err, match):
    if case == "meta":
        m = _mlp().to("meta")
    elif case == "compile":
        m = torch.compile(_mlp())
    elif case == "dataparallel":
        m = nn.DataParallel(_mlp())
    else:
        with warnings.catch_warnings():  # (torch: lazy modules are a new feature)
            warnings.simplefilter("ignore")
            m = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(err, match=match):
        ng.count_patterns(m, torch.randn(10, 3), verbose=False, input_shape=(3,))


# ------------------------------------------------------------------- F11: the first trace and other threads
_FIRST_TRACE = r"""
import threading, torch, torch.nn as nn
import netgeom as ng
from netgeom.nets import graph as G
assert G._HOOKS_WORK[0] is None and G._FAST_NODES[0] is None  # (the probes run in this process's first trace)
torch.set_num_threads(1)
other = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
class Net(nn.Module):
    def __init__(self):
        super().__init__(); self.a = nn.Linear(3, 4); self.b = nn.Linear(4, 2)
    def forward(self, x): return self.b(torch.relu(self.a(x)))
X = torch.randn(16, 3)
errs, n, stop, started = [], [0], threading.Event(), threading.Event()
def worker():
    while not stop.is_set():
        try:
            with torch.no_grad(): other(X)
        except Exception as e:
            errs.append(f"{type(e).__name__}: {e}")
        n[0] += 1
        started.set()
t = threading.Thread(target=worker); t.start(); started.wait()
ng.trace(Net().eval())
stop.set(); t.join()
assert G._HOOKS_WORK[0] is True, "the dispatchers are not used on this torch"
print(n[0], len(errs), sorted(set(errs))[:1])
"""


def test_first_trace_leaves_other_threads_module_calls_alone():
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _FIRST_TRACE], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n, n_err, _ = out.stdout.split(maxsplit=2)
    assert int(n) > 0 and int(n_err) == 0, out.stdout


def test_probe_reference_is_the_graph_fx_traces():
    import torch.fx as fx

    from netgeom.nets import graph as G

    assert G._probe_signature(fx.Tracer().trace(G._HookProbe())) == G._probe_signature(G._probe_reference())


# ------------------------------------------------------------------- F10: an activation on the input
class _InputRelu(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.a, self.c = nn.Linear(2, 5), nn.Linear(5, 2)
        self.eye = nn.Linear(2, 2) if how == "eye" else None
        if self.eye is not None:
            with torch.no_grad():
                self.eye.weight.copy_(torch.eye(2))
                self.eye.bias.zero_()
        self.how = how

    def forward(self, x):
        if self.how == "twice":
            return self.c(F.relu(F.relu(self.a(x))))
        if self.how == "once":
            return self.c(F.relu(self.a(x)))
        if self.eye is not None:
            x = self.eye(x)
        return self.c(F.relu(self.a(F.relu(x))))


def _region_counts(m):
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    X = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    return (ng.count_patterns(m, X, verbose=False).count, ng.regions_on_segment(m, -e1 - e2, e1 + e2).count,
            ng.regions_on_slice(m, torch.zeros(2), e1, e2).count,
            ng.regions_in_box(m, [-1, -1], [1, 1], verbose=False).count)


def test_an_activation_on_the_input_or_on_an_activation_is_read_by_every_analysis():
    # count_patterns read these; the chain analyses refused them. The chain view now puts an identity layer
    # before such an activation: the counts equal those of the same net with an explicit identity Linear
    # (relu(x)) and of the net with one ReLU (relu(relu(z)) == relu(z))
    torch.manual_seed(0)
    nets = {how: _InputRelu(how).eval() for how in ("input", "eye", "twice", "once")}
    for m in nets.values():
        m.a.load_state_dict(nets["input"].a.state_dict())
        m.c.load_state_dict(nets["input"].c.state_dict())
    assert _region_counts(nets["input"]) == _region_counts(nets["eye"])
    assert _region_counts(nets["twice"])[1:] == _region_counts(nets["once"])[1:]
    assert ng.bounds(nets["input"]).serra == ng.bounds(nets["eye"]).serra
    lay = ng.affine_layers(nets["input"])[0]
    assert lay.param_name is None and torch.equal(lay.weight, torch.eye(2, dtype=torch.float64))


# ------------------------------------------------------------------- minor: fan-in of adaptive pooling
class _AdaPool(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.d = d
        self.a = nn.Linear(3, 64) if d == 1 else nn.Conv1d(1, 4, 1)
        self.c = nn.Linear(2 if d == 1 else 6, 2)

    def forward(self, x):
        h = F.relu(self.a(x))
        if self.d == 1:
            return self.c(F.adaptive_avg_pool1d(h, 2))  # a flat (64,) sample: torch pools its one axis
        return self.c(F.adaptive_avg_pool2d(h, (2, 3)).flatten(1))  # a (4, 16) sample: both axes pooled


@pytest.mark.parametrize("d, shape", [(1, (3,)), (2, (1, 16))])
def test_adaptive_pool_fan_in_bounds_the_inputs_an_output_reads(d, shape):
    torch.manual_seed(0)
    g = ng.trace(_AdaPool(d).eval(), input_shape=shape)
    node = next(n for n in g.nodes if n.op == "affine" and n.param_name == "c.weight")
    pool = node._ops[0]
    assert pool.type_name.startswith("adaptive")
    n_in = math.prod(pool.in_shape)
    with torch.no_grad():
        M = pool(torch.eye(n_in, dtype=torch.float64).reshape(n_in, *pool.in_shape), bias=False)
    reads = int((M.reshape(n_in, -1) != 0).sum(0).max())  # inputs per output, brute force
    assert reads == (32 if d == 1 else 2 * 6)
    assert pool.fan_in - 1 >= reads


# ------------------------------------------------------------------- minor: half models warn
def test_low_precision_model_warns_once(monkeypatch):
    from netgeom.nets import graph as G

    monkeypatch.setattr(G, "_WARNED_LOW", set())
    m = _mlp().to(torch.float16)
    with pytest.warns(UserWarning, match="float16 parameters.*float64"):
        ng.trace(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ng.trace(m)  # once per process
        ng.trace(_mlp())  # float32: no warning


def test_an_fx_graph_module_root_is_read():
    # (its generated class has a __call__ of fx's that only calls nn.Module.__call__)
    import torch.fx as fx

    torch.manual_seed(0)
    gm = fx.symbolic_trace(_CallNet().eval())  # (fx traces forward only: the GraphModule is that network)
    X = torch.randn(50, 3, dtype=torch.float64)
    g = ng.trace(gm)
    assert float((g.forward(X) - _model_out(gm, X)).abs().max()) < 1e-12
