"""The graph slice's kernels after this session's changes, checked to change no answer.

* The ReLU and max-pool cuts leave the slots past a piece's vertices unwritten: the numpy path, given the
  polygons a kernel could not settle, gets them padded (its reductions run over every slot), and so does a
  caller of ``slice_graph_regions`` unless it asks for ``padded=False`` (``regions_on_slice``, which reads
  ``nv`` vertices only, also when far vertices are rebuilt exactly).
* The affine kernel starts each piece of a polygon from the sums of the rows it shares with the piece
  before: the same floats as summing every piece from its bias, on any sharing pattern.
* The affine kernel's finiteness flag is False wherever a value it wrote is not finite.
* Metamorphic: permuting the pooled channels or the hidden units changes no count, and a larger nested box
  never has fewer regions.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_graph_slice import GlobalMax, _keys_list, _plane
from torch import nn
from torch.nn import functional as F

from netgeom.nets import trace
from netgeom.regions import _graph_slice as gs
from netgeom.regions import _graph_slice_kernel as kern
from netgeom.regions import _slice
from netgeom.regions._graph_slice import slice_graph_regions
from netgeom.regions.exact import regions_on_slice


class _PaddedPools(nn.Module):
    """LeakyReLU -> max-pool pairs -> ReLU -> max-pool of 4 with padding 1, stride 2 (windows with padding
    entries: pieces where a padded window's candidates tie are settled exactly)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b, self.c = nn.Linear(2, 24), nn.Linear(12, 12), nn.Linear(6, 3)

    def forward(self, x):
        z = F.leaky_relu(self.a(x), 0.1)
        z = F.max_pool1d(z.unsqueeze(1), 2).flatten(1)
        z = F.relu(self.b(z))
        z = F.max_pool1d(z.unsqueeze(1), 4, 2, padding=1).flatten(1)
        return self.c(z)


def _given_back(monkeypatch):
    """Record the rows the numpy path receives from the compiled nodes (after _padded_rows)."""
    seen = []
    pad = gs._padded_rows

    def spy(rec, nv, rows):
        R = pad(rec, nv, rows)
        seen.append((R.copy(), np.asarray(nv[rows]).copy()))
        return R

    monkeypatch.setattr(gs, "_padded_rows", spy)
    return seen


@pytest.mark.parametrize("seed", [2, 3])
def test_polygons_given_back_reach_the_numpy_path_padded(monkeypatch, seed):
    """The kernels give back polygons they cannot settle (exact ties of padded windows): the numpy path gets
    them with every slot past the vertices repeating vertex 0, and the pieces are the numpy path's own."""
    g = trace(_PaddedPools(seed).double().eval())
    x0, d1, d2 = np.array([0.1, -0.2]), np.array([1.0, 0.3]), np.array([0.2, 1.0])
    box = (-3.0, 3.0, -3.0, 3.0)
    seen = _given_back(monkeypatch)
    fast = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=True)
    assert seen and fast[4] > 0  # polygons given back, and decided exactly there
    for R, nv in seen:
        for q in range(len(R)):
            pad = R[q, nv[q] :]
            assert np.array_equal(pad.view(np.int64), np.broadcast_to(R[q, :1], pad.shape).view(np.int64))
    ref = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=False)
    assert sorted(_keys_list(fast[3])) == sorted(_keys_list(ref[3]))
    # the pieces handed on are padded too
    rec, nv = fast[1], fast[2]
    for q in range(len(rec)):
        pad = rec[q, nv[q] :].view(np.int64)
        assert np.array_equal(pad, np.broadcast_to(rec[q, :1], rec[q, nv[q] :].shape).view(np.int64))


def test_unpadded_pieces_are_the_padded_ones_on_their_vertices():
    g = trace(GlobalMax(2, 24, 6, 5, 1).double().eval())
    x0, d1, d2 = _plane(2, 1)
    a = slice_graph_regions(g, x0, d1, d2, (-2.0, 2.0, -2.0, 2.0), 10**6, 2**28)
    b = slice_graph_regions(g, x0, d1, d2, (-2.0, 2.0, -2.0, 2.0), 10**6, 2**28, padded=False)
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3]) and len(a[3]) > 50
    for q in range(len(a[1])):
        assert a[1][q, : a[2][q]].tobytes() == b[1][q, : b[2][q]].tobytes()


def test_far_vertices_of_unpadded_pieces_are_rebuilt_exactly(monkeypatch):
    """A plane scaled against its box (crossing points whose float D underflows): their positions are
    rebuilt exactly on the unpadded pieces regions_on_slice reads (padded first): every polygon finite, the
    unscaled slice's regions, and the same polygons, areas and patterns, bit for bit, as from padded
    pieces."""
    from netgeom.regions import _slice_kernel

    net = GlobalMax(2, 10, 4, 3, 0).double().eval()
    c = 2.0**-660  # directions this short: a box 1e199 wide, whose crossing points underflow
    plane = ([0.0, 0.0], [c, 0.0], [0.0, c])
    r = 2.0 / c
    far, calls = _slice._exact_far_vertices, []

    def spy(ctx, rec, nv):
        calls.append(bool(_slice_kernel.any_far_vertex(np.ascontiguousarray(rec), nv.astype(np.int64))))
        return far(ctx, rec, nv)

    monkeypatch.setattr(_slice, "_exact_far_vertices", spy)
    res = regions_on_slice(net, *plane, box=(-r, r, -r, r))
    assert calls == [True]  # the far-vertex path ran
    assert all(np.isfinite(p).all() for p in res.polygons)
    base = regions_on_slice(net, [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], box=(-2.0, 2.0, -2.0, 2.0))
    assert res.count == base.count and np.array_equal(np.unique(res.patterns, axis=0),
                                                      np.unique(base.patterns, axis=0))
    sgr = gs.slice_graph_regions
    monkeypatch.setattr(gs, "slice_graph_regions", lambda *a, padded=True: sgr(*a, padded=True))
    ref = regions_on_slice(net, *plane, box=(-r, r, -r, r))
    assert np.array_equal(ref.patterns, res.patterns) and ref.areas.tobytes() == res.areas.tobytes()
    assert all(p.tobytes() == q.tobytes() for p, q in zip(ref.polygons, res.polygons))


def _affine(A, B, E, parent, bits, slope, M, bias):
    n_in, n_out, m = A.shape[1], M.shape[0], len(parent)
    c = np.ascontiguousarray
    gam = 1.01 * (n_in + 2) * 2.0**-53
    return kern.affine_maps_checked(
        A, B, E, c(parent), c(bits), slope, True, c(M.T), np.zeros(1, np.int64), np.zeros(0, np.int64),
        np.zeros(0), bias, gam, 1e-300, np.empty((m, n_out)), np.empty((m, 2, n_out)), np.empty((m, n_out)),
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 40),
    st.integers(1, 16),
    st.integers(1, 3),
    st.integers(4, 12),
    st.sampled_from([0.0, 0.1, -0.5]),
)
def test_affine_prefix_reuse_gives_the_per_piece_floats(seed, n_in, n_out, n_poly, per, slope):
    """Pieces of one polygon whose bits agree up to a varying first difference (as the depth-first ReLU cut
    writes them; identical rows too), through the table path that starts from the previous piece's sums,
    give the floats of the same pieces interleaved with other polygons' (each summed from its bias)."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n_poly, n_in))
    B = rng.normal(size=(n_poly, 2, n_in))
    E = np.abs(rng.normal(size=(n_poly, n_in))) * 1e-15
    z = rng.random(n_in) < 0.15
    A[:, z], B[:, :, z], E[:, z] = 0.0, 0.0, 0.0
    M = rng.normal(size=(n_out, n_in))
    bias = rng.normal(size=n_out)
    rows = []
    for _ in range(n_poly):
        row = rng.random(n_in) < 0.5
        for _ in range(per):
            d = int(rng.integers(0, n_in + 1))  # the first bit that may differ (n_in: the same bits)
            row = row.copy()
            row[d:] = rng.random(n_in - d) < 0.5
            rows.append(row)
    bits = np.array(rows)
    parent = np.repeat(np.arange(n_poly), per).astype(np.int64)
    runs = _affine(A, B, E, parent, bits, slope, M, bias)
    assert runs[3]
    order = np.argsort(np.arange(len(parent)) % per, kind="stable")
    if n_poly > 1:
        assert np.all(parent[order][1:] != parent[order][:-1])  # no table: each piece from its bias
        mixed = _affine(A, B, E, parent[order], bits[order], slope, M, bias)
        for a, b in zip(runs[:3], mixed[:3]):
            assert a[order].tobytes() == b.tobytes()
    # one piece at a time (a fresh call each: no previous piece to start from)
    for q in range(len(parent)):
        rep = np.repeat(bits[q : q + 1], 4, axis=0)
        one = _affine(A, B, E, parent[q : q + 1].repeat(4), rep, slope, M, bias)
        for a, b in zip(runs[:3], one[:3]):
            assert a[q].tobytes() == b[0].tobytes()


def test_affine_finiteness_flag():
    rng = np.random.default_rng(0)
    n_in, n_out, m = 8, 5, 6
    A, B = rng.normal(size=(1, n_in)), rng.normal(size=(1, 2, n_in))
    E = np.full((1, n_in), 1e-16)
    M, bias = rng.normal(size=(n_out, n_in)), rng.normal(size=n_out)
    bits = np.ones((m, n_in), dtype=bool)
    parent = np.zeros(m, dtype=np.int64)
    assert _affine(A, B, E, parent, bits, 0.0, M, bias)[3]
    for where in ("A", "B", "E"):
        A2, B2, E2 = A.copy(), B.copy(), E.copy()
        {"A": A2[0], "B": B2[0, 1], "E": E2[0]}[where][3] = np.inf
        out = _affine(A2, B2, E2, parent, bits, 0.0, M, bias)
        assert not out[3]
        with pytest.raises(OverflowError):
            _slice.check_finite("x", *out[:3])
    # finite inputs whose sums overflow
    big = A * 1e307
    out = _affine(big, B * 1e307, E, parent, bits, 0.0, M * 1e3, bias)
    assert not out[3] and not all(np.isfinite(a).all() for a in out[:3])
    # off units with a slope of 0 are skipped: an infinite entry of an off unit writes nothing infinite
    A3 = A.copy()
    A3[0, 2] = np.inf
    bits3 = bits.copy()
    bits3[:, 2] = False
    out = _affine(A3, B, E, parent, bits3, 0.0, M, bias)
    assert out[3] and all(np.isfinite(a).all() for a in out[:3])


def _count(net, r=2.0, plane=None):
    x0, d1, d2 = plane if plane is not None else (np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    return regions_on_slice(net, x0, d1, d2, box=(-r, r, -r, r)).count


@pytest.mark.parametrize("seed", [0, 1])
def test_permuting_pooled_channels_or_hidden_units_changes_no_count(seed):
    """A global max-pool is symmetric in its channels, and a hidden layer in its units: permuting fc2's rows
    (the pooled channels) or fc1's units (rows of fc1, columns of fc2) leaves every count unchanged, though
    the pieces are cut in another order (other lines first, other table rows)."""
    net = GlobalMax(2, 32, 8, 6, seed).double().eval()
    base = _count(net)
    rng = np.random.default_rng(seed)
    perm_c, perm_h = rng.permutation(8), rng.permutation(32)
    a = GlobalMax(2, 32, 8, 6, seed).double().eval()
    b = GlobalMax(2, 32, 8, 6, seed).double().eval()
    with torch.no_grad():
        a.fc2.weight.copy_(net.fc2.weight[perm_c])
        a.fc2.bias.copy_(net.fc2.bias[perm_c])
        b.fc1.weight.copy_(net.fc1.weight[perm_h])
        b.fc1.bias.copy_(net.fc1.bias[perm_h])
        b.fc2.weight.copy_(net.fc2.weight[:, perm_h])
    assert _count(a) == base and _count(b) == base and base > 100


def test_nested_boxes_never_have_fewer_regions():
    net = GlobalMax(2, 24, 8, 6, 4).double().eval()
    counts = [_count(net, r) for r in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert counts[-1] <= regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=None).count
