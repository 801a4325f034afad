"""A caller's process-wide settings must not change an exact answer nor crash an analysis with a confusing
error: subnormal flushing on torch's worker threads, the default dtype, numpy's error state, grad and
inference modes, autocast, warnings as errors (adversarial review of netgeom._matmul and its users)."""

import warnings

import numpy as np
import pytest
import torch
from _platform import OPENMP, X86_LINUX, in_fresh_thread, unavailable

import netgeom as ng
from netgeom._matmul import _onednn_linear, gradual_underflow

_SUB = np.zeros(1 << 20, dtype=np.int32)
_SUB[:] = 0x00400000  # 2^-127 (a subnormal float32) everywhere, written as bits


def _workers_flush() -> bool:
    """Whether some slice of a product over the calling thread's torch threads read 2^-127 as 0."""
    x = torch.from_numpy(_SUB).view(torch.float32)
    return bool((torch.mul(x, 1.0).view(torch.int32) == 0).any())


def _subnormal_identity_net(d: int):
    net = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(d))
        net[0].bias.zero_()
    return net


def test_count_patterns_when_torch_worker_threads_were_started_flushing(two_threads):
    """torch.set_flush_denormal sets the calling thread only; OpenMP's pool threads copy the state of the
    thread whose first parallel operation starts them. Started under flushing, they kept reading subnormal
    inputs as 0 inside count_patterns: 2049 patterns for 4096 (the half of each product they computed)."""
    d, n = 64, 4096  # one chunk (no chunk pool): torch's own threads do the products
    X = torch.from_numpy((np.random.default_rng(0).standard_normal((n, d)) * 1e-39).astype(np.float32))
    net = _subnormal_identity_net(d)
    want = ng.count_patterns(net, X, verbose=False)
    assert want.count == n  # the signs of 64 independent coordinates: all distinct

    def caller():
        if not torch.set_flush_denormal(True):
            return None  # no SSE3: nothing flushes
        try:
            _ = torch.ones(1 << 20) * 2  # this thread's OpenMP team starts here, flushing
            started_flushing = _workers_flush()
            got = ng.count_patterns(net, X, verbose=False)
            return started_flushing, got, _workers_flush()
        finally:
            torch.set_flush_denormal(False)

    res = in_fresh_thread(caller)
    if res is None:
        unavailable("this CPU cannot flush subnormals", expected=X86_LINUX)
    started_flushing, got, after = res
    if not started_flushing:
        # libgomp's new threads copy the flush state of the thread starting them
        unavailable(
            "this OpenMP runtime hands the caller's flush state to its threads (nothing to test)",
            expected=X86_LINUX and OPENMP,
        )
    assert got.count == n and np.array_equal(got.patterns, want.patterns)
    assert after, "the caller's worker threads are handed back as they were (flushing)"


def test_gradual_underflow_reaches_worker_threads_and_nests(two_threads):
    x = torch.from_numpy(_SUB).view(torch.float32)

    def caller():
        if not torch.set_flush_denormal(True):
            return None
        try:
            _ = torch.ones(1 << 20) * 2
            torch.set_flush_denormal(False)  # the caller's own thread no longer flushes; its workers still do
            outside = int((torch.mul(x, 1.0).view(torch.int32) == 0).sum())
            with gradual_underflow():
                with gradual_underflow():  # nested: nothing to redo
                    inner = int((torch.mul(x, 1.0).view(torch.int32) == 0).sum())
                outer = int((torch.mul(x, 1.0).view(torch.int32) == 0).sum())
            return outside, inner, outer, _workers_flush()
        finally:
            torch.set_flush_denormal(False)

    res = in_fresh_thread(caller)
    if res is None:
        unavailable("this CPU cannot flush subnormals", expected=X86_LINUX)
    outside, inner, outer, after = res
    if outside == 0:
        # libgomp's new threads copy the flush state of the thread starting them
        unavailable(
            "this OpenMP runtime hands the caller's flush state to its threads (nothing to test)",
            expected=X86_LINUX and OPENMP,
        )
    assert inner == 0 and outer == 0
    assert after


def test_trace_reads_large_subnormal_weights_when_worker_threads_flush(two_threads):
    """A 300x300 weight layer is converted by torch's threads: half of its 1e-40 weights became 0."""
    net = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.ReLU(), torch.nn.Linear(300, 1))
    w = (np.random.default_rng(1).uniform(1, 2, (300, 300)) * 1e-40).astype(np.float32)
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(w))

    def caller():
        if not torch.set_flush_denormal(True):
            return None
        try:
            _ = torch.ones(1 << 20) * 2
            return ng.trace(net).nodes[1]._ops[0].params["weight"]
        finally:
            torch.set_flush_denormal(False)

    got = in_fresh_thread(caller)
    if got is None:
        unavailable("this CPU cannot flush subnormals", expected=X86_LINUX)
    assert torch.equal(got, torch.from_numpy(w).double())


def test_count_patterns_plan_is_built_with_gradual_underflow():
    """The chain plan (row norms, nonzero counts of the weights) was built before the guard: under the
    caller's flushing a float64 weight row of 3 * 2^-1074 had norm 0, and the result's n_exact changed."""
    a = 3 * 2.0**-1074
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.ReLU()).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[a, -a]], dtype=torch.float64))
        net[0].bias.zero_()
    t = 2.0**300
    X = torch.tensor([[t * (1 + 2.0**-52), t], [t, t * (1 + 2.0**-52)], [-1.0, 1.0]], dtype=torch.float64)
    want = ng.count_patterns(net, X, verbose=False, precision="float64")
    if not torch.set_flush_denormal(True):
        unavailable("this CPU cannot flush subnormals", expected=X86_LINUX)
    try:
        got = ng.count_patterns(net, X, verbose=False, precision="float64")
    finally:
        torch.set_flush_denormal(False)
    assert got.count == want.count == 2
    assert got.to_dict() == want.to_dict()


def test_onednn_probe_under_a_float64_default_dtype():
    """The probe built its operands with the default dtype: under float64 it failed, and None was cached for
    the process (every large float32 product on MKL after, 2x slower on AMD)."""
    _onednn_linear.cache_clear()
    want = _onednn_linear()
    _onednn_linear.cache_clear()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = _onednn_linear()
    finally:
        torch.set_default_dtype(before)
        _onednn_linear.cache_clear()
    assert (got is None) == (want is None)


_TINY6 = np.random.default_rng(4).normal(size=(120, 6)) * 1e-310  # (made here, not under np.errstate)
_TINY20 = np.random.default_rng(4).normal(size=(120, 20)) * 1e-310
_NET3 = ng.mlp(3, [8, 8], 1, seed=0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ng.sparse_bound(784, [300, 100], 0.05, verbose=False).to_dict(),
        lambda: ng.nearest_neighbors(_TINY6, 4).distances,
        lambda: ng.nearest_neighbors(_TINY20, 4, method="torch").distances,
        lambda: ng.regions_on_segment(_NET3, np.zeros(3), np.full(3, 1e-300)).to_dict(),
        lambda: ng.regions_on_slice(_NET3, np.zeros(3), *np.eye(3)[:2] / 1e300).to_dict(),
    ],
    ids=["sparse_bound", "knn_kdtree_subnormal", "knn_torch_subnormal", "segment_tiny", "slice_tiny"],
)
def test_numpy_error_state_raise(call):
    """Under np.seterr(all="raise") benign underflows (log-space probabilities, squares of tiny entries,
    distances scaled back) raised FloatingPointError from deep inside; the answers are the default ones."""
    want = call()
    with np.errstate(all="raise"):
        got = call()
    if isinstance(want, dict):
        assert got == want
    else:
        assert np.array_equal(got, want)


def test_lpca_is_scale_invariant_down_to_tiny_data():
    """Data of 1e-160 had its graph refused ("neighbors was not built from this X"), 1e-200 "no spread"
    (squares underflowed); the PCA rules compare eigenvalues with each other, so the scale cannot matter."""
    rng = np.random.default_rng(0)
    P = rng.normal(size=(400, 4)) @ rng.normal(size=(4, 12))
    want = ng.intrinsic_dimension(P, method="lpca", k=10)
    for s in (2.0**-530, 2.0**-700, 2.0**-1000):
        got = ng.intrinsic_dimension(P * s, method="lpca", k=10)  # (exact scalings: the same points)
        assert got.dimension == want.dimension
        assert np.array_equal(got.dimension_pw, want.dimension_pw)


def test_representation_dimension_with_grad_inputs_and_inference_models():
    """An X that requires grad reached .numpy() ("Can't call numpy() on Tensor that requires grad"); a model
    built under torch.inference_mode() failed its finiteness check with torch's "abs(): functions with
    out=... arguments don't support automatic differentiation"."""
    net = ng.mlp(6, [12, 10], 3, seed=0)
    X = torch.rand(300, 6, generator=torch.Generator().manual_seed(0))
    want = ng.representation_dimension(net, X, k=10).to_dict()
    assert ng.representation_dimension(net, X.clone().requires_grad_(True), k=10).to_dict() == want
    with torch.inference_mode():
        net_inf = ng.mlp(6, [12, 10], 3, seed=0)
    assert ng.representation_dimension(net_inf, X, k=10).to_dict() == want


def _analyses():
    net = ng.mlp(6, [12, 10], 3, seed=0)
    X = torch.rand(2000, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 2 - 1
    P = np.random.default_rng(0).normal(size=(300, 8)) @ np.random.default_rng(1).normal(size=(8, 40))
    return [
        lambda: ng.count_patterns(net, X, verbose=False, per_layer=True).to_dict(),
        lambda: ng.regions_on_segment(net, X[0].numpy(), X[1].numpy()).to_dict(),
        lambda: ng.regions_on_slice(net, np.zeros(6), np.eye(6)[0], np.eye(6)[1]).to_dict(),
        lambda: ng.nearest_neighbors(P, 5, method="torch").distances.tolist(),
        lambda: ng.intrinsic_dimension(P, method="mle", k=10).to_dict(),
        lambda: ng.zeroth_persistence(ng.network_graph(net)).to_dict(),
        lambda: ng.neural_persistence(net).to_dict(),
        lambda: ng.bounds(net).to_dict(),
    ]


@pytest.mark.parametrize(
    "setting", ["default_float64", "autocast_bf16", "inference_mode", "enable_grad", "warnings_error", "bf16"]
)
def test_analyses_unchanged_under_caller_settings(setting):
    """Metamorphic: the caller's mode or defaults around the call change no answer (the models and data
    are made before the setting)."""
    calls = _analyses()
    want = [c() for c in calls]
    saved = torch.get_default_dtype()
    saved_prec = torch.backends.mkldnn.matmul.fp32_precision
    try:
        with warnings.catch_warnings():
            if setting == "default_float64":
                torch.set_default_dtype(torch.float64)
            if setting == "warnings_error":
                warnings.simplefilter("error")
            if setting == "bf16":
                torch.backends.mkldnn.matmul.fp32_precision = "bf16"
            for c, w in zip(calls, want):
                if setting == "autocast_bf16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        got = c()
                elif setting == "inference_mode":
                    with torch.inference_mode():
                        got = c()
                elif setting == "enable_grad":
                    with torch.enable_grad():
                        got = c()
                else:
                    got = c()
                assert got == w
    finally:
        torch.set_default_dtype(saved)
        torch.backends.mkldnn.matmul.fp32_precision = saved_prec


class _Untraceable(torch.nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so representations come from forward hooks."""

    def __init__(self):
        super().__init__()
        self.a, self.r, self.b, self.r2 = (
            torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU()
        )

    def forward(self, x):
        if x.sum() > -1e30:
            x = self.r2(self.b(self.r(self.a(x))))
        return x


def test_hooked_representations_stay_float32_under_autocast():
    """The hooked path promises a float32 forward: under the caller's torch.autocast("cpu") its products ran
    in bfloat16 and the MLE of a layer moved (16.1738 -> 16.1743)."""
    net = _Untraceable()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    X = torch.randn(800, 20, generator=torch.Generator().manual_seed(0))
    want = ng.representation_dimension(net, X, k=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ng.representation_dimension(net, X, k=10)
    assert got.dimensions == want.dimensions


def test_builders_give_the_same_float32_weights_under_a_float64_default():
    from netgeom import lenet5, mlp, resnet20, small_convnet, vgg

    builders = [
        lambda: mlp(6, [12], 3, seed=0),
        lambda: lenet5(seed=1),
        lambda: small_convnet(seed=2),
        lambda: resnet20(seed=3),
        lambda: vgg([8, "M", 16, "M"], seed=4),
    ]
    want = [b().state_dict() for b in builders]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = [b().state_dict() for b in builders]
        assert torch.get_default_dtype() == torch.float64  # the caller's default is back
    finally:
        torch.set_default_dtype(previous)
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for k in w:
            assert g[k].dtype == w[k].dtype and torch.equal(g[k], w[k]), k


def test_trace_refuses_non_finite_parameters_of_an_inference_mode_model():
    from netgeom import trace

    with torch.inference_mode():
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        net[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        trace(net)
