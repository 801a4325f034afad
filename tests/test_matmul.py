"""IEEE float32 products (netgeom._matmul): torch's precision switches held and restored, oneDNN products
inside the float32 error model, and the analyses relying on it unaffected by a caller's bf16/TF32 setting."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _platform import X86_LINUX, unavailable
from hypothesis import given, settings
from hypothesis import strategies as st

from netgeom import count_patterns, mlp, nearest_neighbors
from netgeom._matmul import _SWITCHES, _backend, _onednn_linear, ieee_float32, linear32

U32 = 2.0**-24


def _switches() -> dict[str, str]:
    return {
        path: getattr(_backend(path), attr)
        for path, attr in _SWITCHES
        if _backend(path) is not None and hasattr(_backend(path), attr)
    }


@pytest.fixture
def bf16_matmul():
    """The caller asked for bfloat16 products (torch's new per-backend API), restored after the test."""
    saved = _switches()
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    yield
    for path, attr in _SWITCHES:
        if path in saved:
            setattr(_backend(path), attr, saved[path])


def test_switches_held_and_restored_even_on_error():
    before = _switches()
    assert before, "torch 2.13 has per-backend fp32_precision switches"
    torch.backends.mkldnn.matmul.fp32_precision = "tf32"
    try:
        with pytest.raises(KeyError):
            with ieee_float32():
                assert set(_switches().values()) == {"ieee"}
                raise KeyError("inside")
        assert torch.backends.mkldnn.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before["mkldnn.matmul"]
    assert _switches() == before
    # the legacy getter still reads the untouched default state (it raises after a mix of both APIs)
    assert torch.get_float32_matmul_precision() == "highest"


def test_bf16_setting_changes_products_and_the_block_undoes_it(bf16_matmul):
    g = torch.Generator().manual_seed(0)
    x, w = torch.rand(1024, 784, generator=g), torch.randn(400, 784, generator=g)
    ref = (x.double() @ w.double().T)
    loose = F.linear(x, w)
    with ieee_float32():
        strict = F.linear(x, w)
    bound = 784 * U32 * (x.double() @ w.double().abs().T)
    assert float(((strict.double() - ref).abs() / bound).max()) <= 1.0
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # the setting is real: outside the block the products are not IEEE float32 ones
        assert not torch.equal(loose, strict)
    else:
        # a CPU without bf16 instructions (AVX2-only) runs the same float32 products either way
        assert torch.equal(loose, strict)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 700),
    k=st.integers(1, 300),
    n=st.integers(1, 200),
    bias=st.booleans(),
    scale=st.sampled_from([2.0**-60, 1.0, 2.0**50]),
    seed=st.integers(0, 2**16),
)
def test_linear32_within_the_float32_error_model(m, k, n, bias, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(m, k, generator=g) - 0.3) * scale
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) * scale if bias else None
    with ieee_float32():
        y = linear32(x, w, b)
    assert y.shape == (m, n) and y.dtype == torch.float32
    x64, w64 = x.double(), w.double()
    ref = x64 @ w64.T + (b.double() if bias else 0)
    mag = x64.abs() @ w64.abs().T + (b.double().abs() if bias else 0)
    bound = (k + 1) * U32 / (1 - (k + 1) * U32) * mag + (k + 2) * torch.finfo(torch.float32).tiny
    assert bool(((y.double() - ref).abs() <= bound).all())


def test_linear32_large_products_use_onednn_and_small_ones_f_linear():
    if _onednn_linear() is None:
        unavailable("torch built without oneDNN's linear operator", expected=X86_LINUX)
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.rand(600, 300, generator=g), torch.randn(100, 300, generator=g), torch.randn(100)
    assert 600 * 300 * 100 >= 1 << 24
    big = linear32(x, w, b)
    assert torch.equal(big, _onednn_linear()(x, w, b, "none", [], ""))
    small = linear32(x[:5], w, b)
    assert torch.equal(small, F.linear(x[:5], w, b))
    # float64 and autograd inputs keep torch's own path
    assert torch.equal(linear32(x.double(), w.double()), F.linear(x.double(), w.double()))
    wg = w.clone().requires_grad_(True)
    assert linear32(x, wg, b).requires_grad


def test_count_patterns_exact_and_settings_kept_under_medium_precision():
    net = mlp(300, [200, 100], 10, seed=0)
    X = torch.rand(3000, 300, generator=torch.Generator().manual_seed(2))
    ref = count_patterns(net, X)
    torch.set_float32_matmul_precision("medium")
    try:
        got = count_patterns(net, X)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert np.array_equal(got.patterns, ref.patterns)
    assert np.array_equal(got.multiplicities, ref.multiplicities)


def test_knn_runs_and_agrees_under_the_new_precision_api(bf16_matmul):
    """The legacy getter ``torch.get_float32_matmul_precision`` raises once the new per-backend API is used:
    the kNN read it and crashed; now it holds IEEE float32 through :func:`ieee_float32`."""
    X = np.random.default_rng(3).normal(size=(400, 30))
    got = nearest_neighbors(X, 8, method="torch")
    assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    d = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    want = np.sort(d, axis=1)[:, :8]
    assert np.allclose(got.distances, want, rtol=1e-12, atol=0)


def _subnormal_net_and_inputs():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        net[0].bias.zero_()
    # float32 subnormal inputs, made with gradual underflow on (the fixture comes after)
    X = torch.from_numpy(np.array([[1e-40, 0.0], [-1e-40, 1e-41], [0.0, -3e-42]], dtype=np.float32))
    return net, X


def test_count_patterns_keeps_subnormal_inputs_when_the_caller_flushes():
    net, X = _subnormal_net_and_inputs()
    assert int((X != 0).sum()) == 4  # subnormal, not zero
    ref = count_patterns(net, X)
    assert ref.count == 3  # signs (1,0,0), (0,1,1), (0,0,0)
    torch.set_flush_denormal(True)
    try:
        got = count_patterns(net, X)
        still = (torch.tensor([2.0**-127], dtype=torch.float32) * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
    assert got.count == 3 and np.array_equal(got.patterns, ref.patterns)
    assert still, "the caller's flush-to-zero setting is restored"


@pytest.mark.parametrize("method", ["torch", "kdtree"])
def test_knn_of_subnormal_points_when_the_caller_flushes(method):
    """Flushed, the 120 distinct points below all read as 0: the search said "1 distinct point"."""
    X = np.random.default_rng(4).normal(size=(120, 6)) * 1e-310  # float64 subnormals, made unflushed
    want = nearest_neighbors(X, 4, method=method)
    if not torch.set_flush_denormal(True):
        unavailable("this CPU cannot flush subnormals (no SSE3)", expected=X86_LINUX)
    try:
        got = nearest_neighbors(X, 4, method=method)
    finally:
        torch.set_flush_denormal(False)
    assert got.n_dropped == 0
    assert np.array_equal(got.indices, want.indices) and np.array_equal(got.distances, want.distances)


def test_trace_keeps_subnormal_weights_when_the_caller_flushes():
    """Read under flushing, the weights 1e-40 became 0 and count_patterns saw 1 pattern for 2."""
    from netgeom import network_graph, trace, zeroth_persistence

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(np.array([[1e-40, 0.0], [-1e-40, 1.0]], dtype=np.float32)))
        net[0].bias.zero_()
    X = torch.from_numpy(np.array([[1e30, 0.0], [-1e30, 0.0]], dtype=np.float32))

    def read():
        diagram = zeroth_persistence(network_graph(net))
        return trace(net).nodes[1].kernel, count_patterns(net, X).count, diagram

    want = read()
    assert want[0][0, 0] != 0 and want[1] == 2
    if not torch.set_flush_denormal(True):
        unavailable("this CPU cannot flush subnormals (no SSE3)", expected=X86_LINUX)
    try:
        got = read()
    finally:
        torch.set_flush_denormal(False)
    assert torch.equal(got[0], want[0]) and got[1] == 2
    assert got[2].to_dict() == want[2].to_dict()


@pytest.mark.parametrize("as_tensor", [True, False])
def test_layer_persistence_keeps_subnormal_weights_when_the_caller_flushes(as_tensor):
    """Flushed, the two weights below read as 0: 18 edges instead of 20, another forest."""
    from netgeom import spanning_forest_mask, zeroth_persistence

    W = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    W[0, 0], W[1, 2] = np.float32(1e-40), np.float32(2e-41)
    layer = torch.from_numpy(W) if as_tensor else W
    want = zeroth_persistence(layer).to_dict(), spanning_forest_mask(layer)
    assert want[0]["n_edges"] == 20
    if not torch.set_flush_denormal(True):
        unavailable("this CPU cannot flush subnormals (no SSE3)", expected=X86_LINUX)
    try:
        got = zeroth_persistence(layer).to_dict(), spanning_forest_mask(layer)
    finally:
        torch.set_flush_denormal(False)
    assert got[0] == want[0] and np.array_equal(got[1], want[1])


def test_overlapping_blocks_in_two_threads_restore_only_at_the_last_exit():
    """Thread A leaves while thread B still counts: B's products must stay IEEE float32 until B leaves."""
    import threading

    saved = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    a_in, b_in, a_out, b_checked = (threading.Event() for _ in range(4))
    seen = {}

    def a():
        with ieee_float32():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with ieee_float32():
            b_in.set()
            a_out.wait(5)
            seen["b after a left"] = torch.backends.mkldnn.matmul.fp32_precision
        b_checked.set()

    try:
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert b_checked.is_set()
        assert seen["b after a left"] == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = saved


def test_linear32_strided_operands():
    """oneDNN's operator read a strided bias as dense (errors of ~4 on this product)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(300, 600, generator=g).T  # (600, 300), column-major
    w = torch.randn(300, 100, generator=g).T  # (100, 300), a transposed view
    b = torch.randn(200, generator=g)[::2]  # stride 2
    assert 600 * 300 * 100 >= 1 << 24 and not (x.is_contiguous() or w.is_contiguous() or b.is_contiguous())
    got = linear32(x, w, b)
    ref = x.double() @ w.double().T + b.double()
    bound = 301 * U32 * (x.double().abs() @ w.double().abs().T + b.double().abs())
    assert bool(((got.double() - ref).abs() <= bound).all())


def test_linear32_respects_onednn_switched_off():
    g = torch.Generator().manual_seed(6)
    x, w = torch.rand(600, 300, generator=g), torch.randn(100, 300, generator=g)
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        assert torch.equal(linear32(x, w), F.linear(x, w))
    finally:
        torch.backends.mkldnn.enabled = saved


def test_knn_leaves_torch_threads_alone(monkeypatch):
    """The kNN runs no parallel torch operation on the CPU: it does not wake torch's threads to check them
    (their spinning afterwards took a core from the search), while count_patterns does."""
    import netgeom._matmul as M

    calls = []
    monkeypatch.setattr(M, "_workers_flush", lambda: calls.append(1) or False)
    nearest_neighbors(np.random.default_rng(0).normal(size=(300, 40)), 5, method="torch")
    assert calls == []
    count_patterns(mlp(4, [5], 1, seed=0), torch.rand(50, 4))
    assert calls


def _precision_in_child():
    before = torch.backends.mkldnn.matmul.fp32_precision
    with ieee_float32():
        inside = torch.backends.mkldnn.matmul.fp32_precision
    return before, inside, torch.backends.mkldnn.matmul.fp32_precision


def test_a_child_forked_while_another_thread_holds_ieee_gets_the_callers_setting_back():
    # a fork while another thread of the parent is inside ieee_float32: the child has no such thread, so
    # the caller's setting must come back there at once, and the child's own blocks hold and restore it
    import multiprocessing
    import threading

    if "fork" not in multiprocessing.get_all_start_methods():
        unavailable("no fork start method on this platform", expected=X86_LINUX)
    saved = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    inside, leave = threading.Event(), threading.Event()

    def hold():
        with ieee_float32():
            inside.set()
            leave.wait(60)

    t = threading.Thread(target=hold)
    try:
        t.start()
        assert inside.wait(10) and torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        with multiprocessing.get_context("fork").Pool(1) as child:
            got = child.apply_async(_precision_in_child).get(timeout=60)
        assert got == ("bf16", "ieee", "bf16")
        assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"  # the parent's thread still holds it
    finally:
        leave.set()
        t.join(10)
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
        torch.backends.mkldnn.matmul.fp32_precision = saved
