"""The graph slice's glue made shorter (issue 15, the max-pool slice row): the starting polygon built in
Python floats, pooled buffers handed out as arrays over the pool's memory, PolygonList's offsets made on
first use. The pieces stay bit for bit what they were: the starting polygon equals numpy's scaling, and on
max-pool and residual graphs the regions equal regioncam's count and each polygon's pattern is the
network's pattern at an interior point (brute force through the traced graph)."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netgeom as ng
from netgeom.regions import _slice
from netgeom.regions._slice import _H, _ID, _POOL, PolygonList, _buffer, initial_polygon


def _numpy_initial_polygon(corners_h, edges):
    """The former construction (numpy's frexp/ldexp scaling), the reference."""
    n = len(corners_h)
    rec = np.zeros((1, n + 1, 9))
    for src, sl in ((corners_h, slice(0, 3)), (edges, slice(4, 7))):
        X = np.asarray(src, float)
        _, e = np.frexp(np.abs(X).max(axis=-1))
        rec[0, :n, sl] = np.ldexp(X, -e[:, None])
    rec[0, :n, _ID] = (-1 - np.arange(n)).astype(np.int64).view(np.float64)
    rec[0, n] = rec[0, 0]
    return rec


_F = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300)


@given(st.lists(_F, min_size=4, max_size=4))
@settings(max_examples=60, deadline=None)
def test_starting_box_is_numpys_scaling_bit_for_bit(v):
    u0, u1, v0, v1 = v
    corners = [[1.0, u0, v0], [1.0, u1, v0], [1.0, u1, v1], [1.0, u0, v1]]
    edges = [[-v0, 0.0, 1.0], [-u1, 1.0, 0.0], [-v1, 0.0, 1.0], [-u0, 1.0, 0.0]]
    got, want = initial_polygon(corners, edges), _numpy_initial_polygon(corners, edges)
    assert got.shape == want.shape and got.view(np.int64).tolist() == want.view(np.int64).tolist()


def test_starting_triangle_and_tiny_values_are_numpys_scaling_bit_for_bit():
    tri_h = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    tri_l = [[0.0, 0.0, 1.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]
    tiny = [[1.0, 5e-324, -3e-310], [1.0, 1e-300, 0.0], [2.0, 0.0, -7e-320]]
    for h, e in ((tri_h, tri_l), (np.array(tri_h), np.array(tri_l)), (tiny, tri_l), (tri_h, tiny)):
        got, want = initial_polygon(h, e), _numpy_initial_polygon(h, e)
        assert got.view(np.int64).tolist() == want.view(np.int64).tolist()
    assert initial_polygon(tri_h, tri_l)[0, :, _H].max() < 1


def test_pooled_buffers_of_any_dtype_and_shape_never_alias_live_ones():
    live = []
    rng = np.random.default_rng(0)
    for step in range(60):
        shape = (int(rng.integers(1, 300)), np.int64(rng.integers(30, 90)))
        dtype = [np.float64, np.int64, np.bool_, np.dtype(np.float64), np.int32][step % 5]
        a = _buffer(shape, dtype)
        assert a.shape == tuple(int(s) for s in shape) and a.dtype == np.dtype(dtype) and a.flags.c_contiguous
        assert a.flags.writeable
        assert not any(np.shares_memory(a, b) for b in live)
        a[...] = step % 2
        live.append(a[: max(1, len(a) // 2)])  # a view keeps its buffer in use
        if len(live) > 5:
            live.pop(int(rng.integers(0, len(live))))
    del live, a
    b = _buffer(100_000)  # a pooled size: once released, handed out again (the pool does not grow)
    n = len(_POOL.bufs)
    del b
    c = _buffer(90_000)
    assert len(_POOL.bufs) == n and any(c.base is x for x in _POOL.bufs)
    _slice.pool_trim(0)
    assert [x for x in _POOL.bufs] == [c.base]  # only the buffer in use is kept


def test_polygon_list_offsets_on_first_use():
    V = np.arange(20.0).reshape(10, 2)
    nv = np.array([3, 3, 4])
    p = PolygonList(V, nv)
    nv[0] = 9  # the list keeps its own counts
    assert len(p) == 3 and p._ends_list is None  # a count needs no offsets
    assert [q.shape for q in p] == [(3, 2), (3, 2), (4, 2)] and np.array_equal(p[-1], V[6:])
    assert p[0:2][1].tolist() == V[3:6].tolist()
    q = pickle.loads(pickle.dumps(p))
    assert q == p and len(q) == 3
    with pytest.raises(IndexError):
        p[3]


class _GlobalMax(nn.Module):
    def __init__(self, w, c, h, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(2, w), nn.Linear(w, c)
        self.fc3, self.fc4 = nn.Linear(1, h), nn.Linear(h, 1)
        self.c = c

    def forward(self, x):
        z = self.fc2(torch.relu(self.fc1(x)))
        m = nn.functional.max_pool1d(z.unsqueeze(1), self.c).flatten(1)
        return self.fc4(torch.relu(self.fc3(m)))


class _Res(nn.Module):
    def __init__(self, w, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.a = nn.Linear(2, w), nn.Linear(w, w)
        self.b, self.out = nn.Linear(w, w), nn.Linear(w, 1)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = torch.relu(h + self.b(torch.relu(self.a(h))))
        return self.out(h)


def _rc_count(net, r):
    import regioncam

    sd = {k: v.float() for k, v in net.state_dict().items()}
    rc = regioncam.Regioncam(size=r)
    rc.linear(np.eye(2, dtype=np.float32), np.zeros(2, dtype=np.float32))
    for name in ("fc1", "fc2"):
        rc.linear(sd[name + ".weight"].numpy().T.copy(), sd[name + ".bias"].numpy().copy())
        if name == "fc1":
            rc.relu()
    rc.max_pool()
    rc.linear(sd["fc3.weight"].numpy().T.copy(), sd["fc3.bias"].numpy().copy())
    rc.relu()
    return rc.num_faces


def _patterns_at(g, X):
    """The pattern (ReLU bits, one-hot argmax per max-pool window, in node order) of each point of ``X``."""
    vals = [v.numpy() for v in g.values(torch.as_tensor(X))]
    cols = []
    for node in g.nodes:
        z = vals[node.inputs[0]] if node.inputs else None
        if node.op == "relu":
            cols.append(z > 0)
        elif node.op == "maxpool":
            W = node.windows.numpy()
            c = np.where(W[None] >= 0, z[:, np.maximum(W, 0)], -np.inf)
            cols.append(np.eye(W.shape[1], dtype=bool)[np.argmax(c, axis=2)].reshape(len(X), -1))
    return np.concatenate(cols, axis=1)


@pytest.mark.parametrize(
    "make, r",
    [
        (lambda: _GlobalMax(12, 6, 5, 0), 2.0),
        (lambda: _GlobalMax(20, 8, 6, 1), 0.7),
        (lambda: _Res(8, 2), 1.5),
    ],
)
def test_graph_slices_are_the_networks_regions(make, r):
    net = make().float().double().eval()
    res = ng.regions_on_slice(net, [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], box=(-r, r, -r, r))
    if isinstance(net, _GlobalMax):  # (regioncam's float32 agrees on these small boxes)
        assert res.count == _rc_count(net, r)
    assert np.isclose(res.areas.sum(), 4 * r * r, rtol=1e-9)
    assert len({p.tobytes() for p in np.packbits(res.patterns, axis=1)}) == res.count  # one piece a pattern
    # each piece's pattern is the network's at its vertex centroid (convex: interior), wherever the point is
    # clear of the piece's edges
    g = ng.trace(net)
    C = np.array([p.mean(axis=0) for p in res.polygons])
    assert np.array_equal(_patterns_at(g, C), res.patterns)
    # the same pieces, bit for bit, on the numpy path (in its own order: pieces keyed by pattern)
    from netgeom.regions._graph_slice import slice_graph_regions

    x0, d1, d2 = np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
    pieces = []
    for compiled in (True, False):
        box = (-r, r, -r, r)
        _, rec, nv, pats, _ = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=compiled)
        keys = [p.tobytes() for p in np.packbits(pats, axis=1)]
        pieces.append({k: np.array(sorted(map(tuple, rec[q, : nv[q], :3]))) for q, k in enumerate(keys)})
    assert pieces[0].keys() == pieces[1].keys() and len(pieces[0]) == res.count
    if isinstance(net, _GlobalMax):  # bit for bit
        assert all(pieces[0][k].tobytes() == pieces[1][k].tobytes() for k in pieces[0])
    else:  # an add node's sums are BLAS's on the numpy path: the same decisions, vertices to the last bits
        assert all(np.allclose(pieces[0][k], pieces[1][k], rtol=0, atol=1e-14) for k in pieces[0])


def _verdict(fn, *args):
    try:
        fn(*args)
    except ValueError as exc:
        return str(exc)
    return None


_SMALL = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e200, max_value=1e200)


@given(st.lists(_SMALL, min_size=2, max_size=6), st.integers(-3, 3), st.booleans())
@settings(max_examples=80, deadline=None)
def test_plane_check_of_few_entries_is_the_numpy_checks_verdict(v, c, parallel):
    """_check_plane's Python-float test of small directions (exact.py): the same verdict as its numpy test,
    reached by padding the directions with zeros past 16 entries (zero entries change no minor)."""
    from netgeom.regions.exact import _check_plane

    d1 = np.array(v)
    d2 = d1 * 2.0**c if parallel else np.roll(d1, 1) + np.arange(len(d1)) * 1e-3
    pad = np.zeros(20 - len(d1))
    assert _verdict(_check_plane, d1, d2) == _verdict(_check_plane, np.r_[d1, pad], np.r_[d2, pad])
    assert _verdict(_check_plane, d1, np.zeros_like(d1)) is not None


def test_box_check_keeps_its_refusals():
    from netgeom.regions.exact import _check_box

    assert _check_box((-1.0, 2.0, -3.0, 4.0)) == (-1.0, 2.0, -3.0, 4.0) == _check_box([-1, 2, -3, 4])
    nan, inf = float("nan"), float("inf")
    bads = [(1.0, -1.0, 0.0, 1.0), (0.0, 1.0, nan, 1.0), (0.0, inf, 0.0, 1.0), (0.0, 1.0)]
    bads.append((0.0, 0.0, 0.0, 1.0))
    for bad in bads:
        want = _verdict(_check_box, list(bad))
        assert want is not None and _verdict(_check_box, bad) == want
