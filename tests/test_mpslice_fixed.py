"""The fixed costs of a traced slice: the trace (fx's patch of nn.Module made and undone around it, errors
naming the user's line) and the compiled kernels' rewritten loops (the same floats)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import UnsupportedLayerError, trace
from netgeom.nets import graph as G


class _Functional(nn.Module):
    """F.linear on parameters read in forward (fx's patched Module.__getattr__ makes them get_attr nodes),
    a module called twice, a nested custom module, functional max-pooling, in-place ops and math."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weight = nn.Parameter(torch.randn(8, 4))
        self.bias = nn.Parameter(torch.randn(8))
        self.inner = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.1))
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(F.linear(x, self.weight, self.bias))
        h = self.inner(h) + h
        n = math.prod(h.shape[1:])
        m = F.max_pool1d(h.view(-1, 1, n), 2).flatten(1)
        m = self.fc(m)
        m += self.fc(torch.relu(m))
        return self.out(m.relu_())


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3).eval()
        self.pool = nn.MaxPool2d(2)
        self.left, self.right = nn.Conv2d(3, 1, 1), nn.Conv2d(3, 2, 1)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        x = torch.cat([self.left(x), F.relu(self.right(x))], dim=1)
        return self.head(x.reshape(x.shape[0], -1))


class _GlobalMax(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.fc2 = nn.Linear(2, 6), nn.Linear(6, 4)
        self.fc3, self.fc4 = nn.Linear(1, 3), nn.Linear(3, 1)

    def forward(self, x):
        z = self.fc2(torch.relu(self.fc1(x)))
        m = F.max_pool1d(z.unsqueeze(1), 4).flatten(1)
        return self.fc4(torch.relu(self.fc3(m)))


def _fx_nodes(graph):
    return [
        (n.op, n.name, n.target, str(n.args), str(n.kwargs), n.meta.get("netgeom_frame")) for n in graph.nodes
    ]


def _pl_nodes(g):
    return [(n.op, n.name, n.inputs, n.shape, n.source, n.param_name, n.kind) for n in g.nodes]


MODELS = [(_Functional, None), (_Conv, (1, 4, 4)), (_GlobalMax, None)]


@pytest.mark.parametrize("make, shape", MODELS)
def test_traced_graph_is_the_model_and_the_same_every_time(make, shape):
    """The trace's shortcuts (fx's math wrappers made once, each node's source named once) leave fx's nodes
    (op, name, target, arguments, recorded user line) and the PL graph as a fresh trace's."""
    net = make().double().eval()
    first_fx, first = _fx_nodes(G._Tracer().trace(net)), trace(net, input_shape=shape)
    assert _fx_nodes(G._Tracer().trace(net)) == first_fx
    assert _pl_nodes(trace(net, input_shape=shape)) == _pl_nodes(first)
    x = torch.randn(5, *first.input_shape, dtype=torch.float64)
    assert torch.allclose(first.forward(x), net(x).reshape(5, -1), rtol=0, atol=1e-10)


def test_module_methods_are_patched_during_the_trace_and_restored_after_it():
    """Inside the trace every module class (Module's subclasses inherit the methods) calls fx's wrappers;
    after it, and after a trace that fails inside forward, Module's own functions are back and modules,
    their parameters and subclasses with their own __getattr__ work as before."""
    call, getattr_ = nn.Module.__dict__["__call__"], nn.Module.__dict__["__getattr__"]
    call_impl = nn.Module.__dict__["_call_impl"]
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            # fx's own patching replaces Module.__call__; netgeom's dispatchers Module._call_impl (which
            # Module.__call__ calls) and the traced classes' __getattr__
            rerouted = nn.Linear.__call__ is not call or nn.Linear._call_impl is not call_impl
            seen.append((rerouted, type(self).__getattr__ is not getattr_))
            return self.fc(x)

    g = trace(Spy())
    assert seen == [(True, True)] and [n.op for n in g.nodes] == ["input", "affine", "output"]
    assert nn.Module.__dict__["__call__"] is call and nn.Module.__dict__["__getattr__"] is getattr_
    assert nn.Module.__dict__["_call_impl"] is call_impl and "__getattr__" not in Spy.__dict__

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return x

    where = r"trace Branchy.forward .*test_mpslice_fixed.py:\d+ \(`if x"
    with pytest.raises(UnsupportedLayerError, match=where):
        trace(Branchy())
    assert nn.Module.__dict__["__call__"] is call and nn.Module.__dict__["__getattr__"] is getattr_

    class OwnGetattr(nn.Linear):
        def __getattr__(self, name):
            if name == "answer":
                return 42
            return super().__getattr__(name)

    m = OwnGetattr(2, 3)
    assert m.answer == 42 and m.weight.shape == (3, 2)
    assert m(torch.ones(1, 2)).shape == (1, 3)
    assert trace(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))).nodes[1].op == "affine"


def test_a_module_made_inside_forward_is_refused_as_by_fx():
    """A leaf module that is no submodule of the model: fx's patched Module.__call__ sees it and refuses it
    (it is not installed), rather than tracing through its forward."""

    class Fresh(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return nn.ReLU()(self.fc(x))

    with pytest.raises(UnsupportedLayerError, match="not installed as a submodule"):
        trace(Fresh())


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.integers(1, 16),
    st.integers(2, 4),
    st.integers(4, 9),
    st.sampled_from([0.0, 0.1, -0.5]),
)
def test_affine_table_path_gives_the_per_piece_floats(seed, n_in, n_out, n_poly, per, slope):
    """affine_maps on a ReLU output read in place: pieces in runs of one polygon (the table, its rows
    listed and added four at a time) and the same pieces interleaved (products per piece) give the same
    floats, for any widths, slopes, exactly-zero inputs and off units."""
    from netgeom.regions import _graph_slice_kernel as kern

    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_poly, n_in))
    B = rng.normal(size=(n_poly, 2, n_in))
    E = np.abs(rng.normal(size=(n_poly, n_in))) * 1e-15
    z = rng.random(n_in) < 0.2
    A[:, z], B[:, :, z], E[:, z] = 0.0, 0.0, 0.0
    M = rng.normal(size=(n_out, n_in))
    M[rng.random(M.shape) < 0.2] = 0.0
    bias = rng.normal(size=n_out)
    parent = np.repeat(np.arange(n_poly), per).astype(np.int64)
    bits = rng.random((len(parent), n_in)) < rng.random()
    gam = 1.01 * (n_in + 2) * 2.0**-53

    def run(par, bt):
        m = len(par)
        return kern.affine_maps(
            A, B, E, np.ascontiguousarray(par), np.ascontiguousarray(bt), slope, True,
            np.ascontiguousarray(M.T),
            np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), bias, gam, 1e-300,
            np.empty((m, n_out)), np.empty((m, 2, n_out)), np.empty((m, n_out)),
        )

    runs = run(parent, bits)
    order = np.argsort(np.arange(len(parent)) % per, kind="stable")
    mixed = run(parent[order], bits[order])
    assert np.all(parent[order][1:] != parent[order][:-1])  # no two neighbours share a polygon
    for a, b in zip(runs, mixed):
        assert a[order].tobytes() == b.tobytes()
    gain = np.where(bits, 1.0, slope)
    x = np.stack([A[parent], B[parent, 0], B[parent, 1]]) * gain
    ref = x @ M.T
    ref[0] += bias
    got = np.stack([runs[0], runs[1][:, 0], runs[1][:, 1]])
    assert np.all(np.abs(got - ref) <= runs[2][None] + 1e-12 * np.abs(ref))


def _dominance_reference(rec, nv, A, B, E, W, quadrant, su, sv):
    """pool_dominance's rule, candidate by candidate in Python: the reference is the valid candidate
    largest at vertex 0 (the first of equals); another is dropped when the scalar line of c_ref - c_x is
    finite, not identically zero, and above its tolerance at every vertex."""
    from netgeom.regions import _graph_slice_kernel as kern
    from netgeom.regions._slice_kernel import _tol

    m, nw, k = len(rec), *W.shape
    surv = np.zeros((m, nw, k), dtype=bool)
    L = np.empty(4)
    for p in range(m):
        for w in range(nw):
            vals = []
            for x in range(k):
                ix = W[w, x]
                if ix >= 0:
                    a, b, c = A[p, ix], B[p, 0, ix], B[p, 1, ix]
                    if quadrant:
                        b, c = su * b - a, sv * c - a
                    vals.append((x, rec[p, 0, 0] * a + rec[p, 0, 1] * b + rec[p, 0, 2] * c))
            if not vals:
                continue
            ref = vals[0][0]
            best = vals[0][1]
            for x, v in vals[1:]:
                if v > best:
                    ref, best = x, v
            surv[p, w, ref] = True
            ir = W[w, ref]
            for x, _ in vals:
                if x == ref:
                    continue
                ix = W[w, x]
                dA, dB0, dB1 = A[p, ir] - A[p, ix], B[p, 0, ir] - B[p, 0, ix], B[p, 1, ir] - B[p, 1, ix]
                eD = E[p, ir] + E[p, ix] + 2.0**-53 * max(abs(dA), abs(dB0), abs(dB1))
                if kern._line(dA, dB0, dB1, eD, quadrant, su, sv, L) != 0:
                    surv[p, w, x] = True
                    continue
                for q in range(nv[p]):
                    s = rec[p, q, 0] * L[0] + rec[p, q, 1] * L[1] + rec[p, q, 2] * L[2]
                    if not s > _tol(rec[p, q, 3], L[3]):
                        surv[p, w, x] = True
                        break
    return surv


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 9),
    st.booleans(),
    st.sampled_from(["normal", "huge", "tiny", "special", "ties"]),
)
def test_pool_dominance_branch_free_equals_the_candidate_by_candidate_rule(seed, m, nw, k, quadrant, mode):
    """The vectorised pool_dominance keeps exactly the candidates of the rule applied one at a time, on
    random values, values scaled past the normal range, NaN/inf entries and bounds, and tied candidates."""
    from netgeom.regions import _graph_slice_kernel as kern

    rng = np.random.default_rng(seed)
    K1 = 8
    nv = rng.integers(3, K1, size=m).astype(np.int64)
    rec = rng.normal(size=(m, K1, 9))
    rec[..., 0] = np.abs(rec[..., 0]) + 0.1
    rec[..., 3] = np.abs(rng.normal(size=(m, K1))) * 10.0 ** rng.integers(-17, -1)
    n = int(rng.integers(k, 3 * k + 1))
    A, B = rng.normal(size=(m, n)), rng.normal(size=(m, 2, n))
    E = np.abs(rng.normal(size=(m, n))) * 1e-16
    if mode == "huge":
        A, B = A * 1e300, B * 1e300
    elif mode == "tiny":
        A, B, E = A * 1e-300, B * 1e-300, E * 1e-300
    elif mode == "special":
        for arr in (A, B, E):
            arr.reshape(-1)[rng.integers(0, arr.size, size=2)] = rng.choice([np.nan, np.inf, -np.inf, 0.0], 2)
        rec[rng.integers(0, m), rng.integers(0, K1), 3] = rng.choice([np.nan, np.inf])
    elif mode == "ties":
        A[:, 1:], B[:, :, 1:], E[:] = A[:, :1], B[:, :, :1], 0.0
        A[:, ::2] += 1e-17 * (rng.random() < 0.5)
    W = rng.integers(-1, n, size=(nw, k)).astype(np.int64)
    su, sv = float(rng.choice([-1.0, 1.0])), float(rng.choice([-1.0, 1.0]))
    with np.errstate(all="ignore"):
        ref = _dominance_reference(rec, nv, A, B, E, W, quadrant, su, sv)
    got = kern.pool_dominance(rec, nv, A, B, E, W, quadrant, su, sv)
    assert np.array_equal(got, ref)


class _WideMax(nn.Module):
    def __init__(self, width: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(2, width), nn.Linear(width, 6)
        self.fc3, self.fc4 = nn.Linear(1, 5), nn.Linear(5, 1)

    def forward(self, x):
        z = self.fc2(torch.relu(self.fc1(x)))
        m = F.max_pool1d(z.unsqueeze(1), 6).flatten(1)
        return self.fc4(torch.relu(self.fc3(m)))


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 10_000), st.integers(12, 28), st.booleans())
def test_wide_relu_and_global_max_pool_compiled_equal_the_numpy_path(seed, width, whole):
    """A ReLU node wide enough that pieces have many cutting candidates (the ReLU cut sweeps a piece's
    vertices for all of them at once) and few, then a global max-pool (the vectorised pruning, then runs
    of single-candidate polygons): the compiled kernels find the numpy path's regions and patterns."""
    from netgeom.regions._graph_slice import slice_graph_regions

    g = trace(_WideMax(width, seed).double().eval())
    x0, d1, d2 = np.random.default_rng(seed).normal(size=(3, 2))
    box = None if whole else (-2.0, 2.0, -2.0, 2.0)
    fast = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=True)
    ref = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=False)
    assert len(fast[3]) == len(ref[3])  # (a box may meet fewer regions than the ReLU has units)

    def keys(P):
        return sorted(p.tobytes() for p in np.packbits(P, axis=1))

    assert keys(fast[3]) == keys(ref[3])
