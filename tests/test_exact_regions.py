"""Exact regions (segment, slice, box) against brute force, against each other and against sampling."""

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from torch import nn

from netgeom import Masks, affine_layers, mlp, small_convnet
from netgeom.regions.bounds import serra_bound
from netgeom.regions.exact import (
    TooManyRegionsError,
    plane_through,
    regions_in_box,
    regions_on_segment,
    regions_on_slice,
)
from netgeom.regions.patterns import count_patterns, pack_patterns


def _pset(patterns: np.ndarray) -> set:
    return {r.tobytes() for r in pack_patterns(patterns)}


def _brute_force(net, lo, hi, min_radius=1e-7):
    """Every sign pattern, tested by one Chebyshev LP: the independent reference for the box method."""
    layers = affine_layers(net)
    hidden = [(l_.weight.numpy(), l_.bias.numpy(), l_.negative_slope) for l_ in layers[:-1]]
    n_bits = sum(W.shape[0] for W, _, _ in hidden)
    d = len(lo)
    size = float(np.max(hi - lo))
    found = set()
    for pat in itertools.product([False, True], repeat=n_bits):
        M, c = np.eye(d), np.zeros(d)  # layer input = M.T-free form: x = y @ M + c
        rows, rhs, feasible, k = [np.eye(d), -np.eye(d)], [hi, -lo], True, 0
        for W, b, slope in hidden:
            Mz, cz = M @ W.T, c @ W.T + b
            bits = np.array(pat[k : k + W.shape[0]])
            k += W.shape[0]
            for j, bit in enumerate(bits):
                g = Mz[:, j]
                if np.linalg.norm(g) < 1e-12:  # constant unit: its bit is fixed by z > 0
                    if bit != (cz[j] > 1e-12):
                        feasible = False
                    continue
                sign = -1.0 if bit else 1.0  # bit True: z >= 0  <=>  -g.y <= cz
                rows.append(sign * g[None, :] / np.linalg.norm(g))
                rhs.append(np.array([-sign * cz[j] / np.linalg.norm(g)]))
            gain = np.where(bits, 1.0, slope)
            M, c = Mz * gain, cz * gain
        if not feasible:
            continue
        G, h = np.vstack(rows), np.concatenate(rhs)
        res = linprog(
            np.r_[np.zeros(d), -1.0],
            A_ub=np.hstack([G, np.ones((len(G), 1))]),
            b_ub=h,
            bounds=[(None, None)] * d + [(0, size)],
            method="highs",
        )
        if res.status == 0 and res.x[-1] > min_radius * size:
            found.add(np.packbits(np.array(pat, dtype=bool)).tobytes() if n_bits else b"\x00")
    return found


def _grid(lo, hi, n):
    axes = [np.linspace(a, b, n) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes), -1).reshape(-1, len(lo))


# ------------------------------------------------------------------------------------ brute force
@pytest.mark.parametrize("n0,widths,seed", [(1, [3, 4], 0), (2, [3, 3], 1), (2, [4, 2], 5), (3, [3, 3], 2)])
def test_box_equals_exhaustive_lp_enumeration(n0, widths, seed):
    net = mlp(n0, widths, 1, seed=seed)
    lo, hi = -2.0 * np.ones(n0), 2.0 * np.ones(n0)
    res = regions_in_box(net, lo, hi)
    ref = _brute_force(net, lo, hi)
    assert res.count == len(ref) == len(_pset(res.patterns))
    assert _pset(res.patterns) == ref
    assert res.count <= serra_bound(n0, widths)
    # Interior points really have the reported patterns, with the reported ball inside the box.
    assert np.all(res.coords - res.radii[:, None] >= lo - 1e-9) and np.all(
        res.coords + res.radii[:, None] <= hi + 1e-9
    )
    assert _pset(res.patterns) == {r.tobytes() for r in count_patterns(net, res.points).patterns}
    assert count_patterns(net, res.points).count == res.count


# --------------------------------------------------------------------------- methods agree, properties
nets_1d_2d = st.tuples(
    st.integers(1, 2), st.lists(st.integers(1, 5), min_size=1, max_size=3), st.integers(0, 10_000)
)


@settings(max_examples=40, deadline=None)
@given(nets_1d_2d)
def test_methods_agree_and_sampling_is_a_lower_bound(case):
    n0, widths, seed = case
    net = mlp(n0, widths, 1, seed=seed)
    lo, hi = -1.5 * np.ones(n0), 1.5 * np.ones(n0)
    box = regions_in_box(net, lo, hi)
    if n0 == 1:
        other = regions_on_segment(net, lo, hi)
        assert len(other.breakpoints) == other.count - 1
    else:
        other = regions_on_slice(net, [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], box=(-1.5, 1.5, -1.5, 1.5))
        assert other.areas.sum() == pytest.approx(9.0, rel=1e-9)
    assert other.count == box.count == len(_pset(other.patterns))
    assert _pset(other.patterns) == _pset(box.patterns)
    assert box.count <= serra_bound(n0, widths)
    sampled = count_patterns(net, _grid(lo, hi, 2000 if n0 == 1 else 150))
    assert sampled.count <= box.count
    assert {r.tobytes() for r in sampled.patterns} <= _pset(box.patterns)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 4), st.lists(st.integers(2, 6), min_size=1, max_size=3), st.integers(0, 10_000))
def test_slice_of_higher_dim_input_equals_box_on_subspace(n0, widths, seed):
    net = mlp(n0, widths, 1, seed=seed)
    rng = np.random.default_rng(seed)
    x0, d1, d2 = rng.normal(size=(3, n0))
    sl = regions_on_slice(net, x0, d1, d2, box=(-1, 1, -0.5, 1.5))
    bx = regions_in_box(net, [-1, -0.5], [1, 1.5], subspace=(x0, np.stack([d1, d2])))
    assert sl.count == bx.count and _pset(sl.patterns) == _pset(bx.patterns)
    # Each polygon's centroid lies in the region whose pattern it reports.
    cents = np.array([p.mean(0) for p in sl.polygons])
    pts = x0 + cents[:, :1] * d1 + cents[:, 1:] * d2
    B = count_patterns(net, pts)
    assert B.count == sl.count


def test_segment_pieces_and_breakpoints_match_forward_pass():
    net = mlp(3, [6, 6, 5], 2, seed=7)
    a, b = np.array([-1.0, 0.5, 2.0]), np.array([1.5, -1.0, -0.5])
    seg = regions_on_segment(net, a, b)
    mids = 0.5 * (seg.edges[:-1] + seg.edges[1:])
    pts = a + mids[:, None] * (b - a)
    X = torch.as_tensor(pts)
    ref = []
    with torch.no_grad():
        x = X.double()
        for m in net.double():
            if isinstance(m, nn.ReLU):
                ref.append((x > 0).numpy())
            x = m(x)
    net.float()
    assert np.array_equal(np.concatenate(ref, 1), seg.patterns)
    assert np.all(np.any(seg.patterns[1:] != seg.patterns[:-1], axis=1))
    # The output is affine between breakpoints: checking at a point inside each piece.
    t_in = seg.edges[:-1] + 0.3 * np.diff(seg.edges)
    with torch.no_grad():
        out = net.double()(torch.as_tensor(a + t_in[:, None] * (b - a))).numpy()
    net.float()
    lin = seg.outputs[:-1] + 0.3 * (seg.outputs[1:] - seg.outputs[:-1])
    np.testing.assert_allclose(out, lin, atol=1e-9)
    dense = count_patterns(net, a + np.linspace(0, 1, 200_001)[:, None] * (b - a))
    assert dense.count <= seg.count


# ------------------------------------------------------------------------------------ degenerate cases
def _net_from(weights, biases, n_out=1):
    """A ReLU net with the given hidden layers and a zero classifier."""
    mods = []
    for W, b in zip(weights, biases):
        lin = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            lin.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        mods += [lin, nn.ReLU()]
    mods.append(nn.Linear(weights[-1].shape[0], n_out))
    return nn.Sequential(*mods)


def _all_counts(net, lo=(-2.0, -2.0), hi=(2.0, 2.0)):
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(lo[0], hi[0], lo[1], hi[1]))
    bx = regions_in_box(net, lo, hi)
    assert _pset(sl.patterns) == _pset(bx.patterns)
    return sl.count


def test_parallel_and_identical_hyperplanes():
    # Three vertical lines x = -1, 0, 1 and two horizontal y = -0.5, 0.5: a 4 x 3 grid of cells.
    W = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1]], float)
    b = np.array([1, 0, -1, 0.5, -0.5])
    assert _all_counts(_net_from([W], [b])) == 12
    # The same lines again, scaled (identical hyperplanes): no new region.
    W2, b2 = np.vstack([W, 2 * W[:2], -W[3:4]]), np.r_[b, 2 * b[:2], -b[3:4]]
    assert _all_counts(_net_from([W2], [b2])) == 12
    seg = regions_on_segment(_net_from([W2], [b2]), [-2, 0.1], [2, 0.1])
    np.testing.assert_allclose(seg.breakpoints, [0.25, 0.5, 0.75], atol=1e-12)


def test_dead_and_zero_weight_units():
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(4, 2)), rng.normal(size=4) * 0.3
    base = _all_counts(_net_from([W], [b]))
    # A zero row with positive bias (always on), one with negative bias (always off), one with zero bias
    # (z == 0: off), and a unit that is negative on the whole box (dead there).
    Wd = np.vstack([W, np.zeros((3, 2)), [[0.1, 0.1]]])
    bd = np.r_[b, 0.7, -0.7, 0.0, -5.0]
    net = _net_from([Wd], [bd])
    assert _all_counts(net) == base
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-2, 2, -2, 2))
    assert np.all(sl.patterns[:, 4]) and not np.any(sl.patterns[:, 5:])
    seg = regions_on_segment(net, [-2, -2], [2, 2])
    assert np.all(seg.patterns[:, 4]) and not np.any(seg.patterns[:, 5:])


def _exact_bits(net, X):
    """Patterns of the points ``X`` (rows of Fractions), exact rational arithmetic on the float64 weights."""
    layers = affine_layers(net)
    out = []
    for x in X:
        bits = []
        for layer in layers:
            W = [[Fraction(float(v)) for v in row] for row in layer.weight.numpy()]
            bias = [Fraction(float(bb)) for bb in layer.bias.numpy()]
            z = [sum(w * xi for w, xi in zip(row, x)) + bb for row, bb in zip(W, bias)]
            if layer.activation == "identity":
                x = z
                continue
            slope = Fraction(float(layer.negative_slope))
            bits += [v > 0 for v in z]
            x = [v if v > 0 else slope * v for v in z]
        out.append(bits)
    return np.array(out, dtype=bool)


def test_segment_and_slice_exactly_inside_a_hyperplane():
    # Unit 0 is z = x3 - x1 / 4; the segment and the plane lie exactly in z = 0 (dyadic numbers, no rounding):
    # no split, bit False throughout, decided by the exact fallback.
    W = np.array([[-0.25, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, -1.0, 0.2], [0.5, 0.0, -0.4]])
    b = np.array([0.0, 0.1, -0.2, 0.05])
    net = _net_from([W, np.array([[1.0, -1, 1, 1], [0.3, 0.2, -1, 1]])], [b, np.array([0.1, -0.1])])
    a, c = np.array([1.5, -1.0, 0.375]), np.array([-2.5, 1.5, -0.625])
    seg = regions_on_segment(net, a, c)
    assert not seg.patterns[:, 0].any() and seg.n_exact > 0
    other = _net_from([W[1:], np.array([[-1, 1, 1], [0.2, -1, 1]])], [b[1:], np.array([0.1, -0.1])])
    assert seg.count == regions_on_segment(other, a, c).count
    d1 = [0.75, 0, 0.1875]
    sl = regions_on_slice(net, [0, 0, 0], d1, [0, 1, 0], box=(-1, 1, -1, 1))
    assert not sl.patterns[:, 0].any() and sl.n_exact > 0
    sl2 = regions_on_slice(other, [0, 0, 0], d1, [0, 1, 0], box=(-1, 1, -1, 1))
    assert sl.count == sl2.count


def test_segment_nearly_inside_a_hyperplane_is_decided_exactly():
    # w = -0.3 in float32 and a3 = fl(-1.3 w): the segment is off the hyperplane z = x3 + w x1 by rounding
    # only. Every piece's bits equal exact rational arithmetic at the piece's midpoint.
    w = float(np.float32(-0.3))
    W = np.array([[w, 0.0, 1.0], [1.0, 1.0, 0.0], [1.0, -1.0, 0.2], [0.5, 0.0, -0.4]])
    b = np.array([0.0, 0.1, -0.2, 0.05])
    net = _net_from([W, np.array([[1.0, -1, 1, 1], [0.3, 0.2, -1, 1]])], [b, np.array([0.1, -0.1])])
    a, c = np.array([1.3, -1.0, -1.3 * w]), np.array([-2.1, 1.5, 2.1 * w])
    seg = regions_on_segment(net, a, c)
    edges = [Fraction(float(t)) for t in seg.edges]
    fa, fd = [Fraction(float(v)) for v in a], [Fraction(float(v)) - Fraction(float(u)) for u, v in zip(a, c)]
    mids = [(edges[k] + edges[k + 1]) / 2 for k in range(seg.count)]
    X = [[ai + t * di for ai, di in zip(fa, fd)] for t in mids]
    assert np.array_equal(_exact_bits(net, X), seg.patterns)


def test_masked_weights_are_absent():
    net = mlp(2, [5, 4], 1, seed=3)
    masks = Masks.ones(net)
    m0 = torch.rand(5, 2, generator=torch.Generator().manual_seed(0)) < 0.5
    masks["0.weight"] = m0
    masks["2.weight"] = torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    pruned = mlp(2, [5, 4], 1, seed=3)
    masks.apply(pruned)
    a = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-2, 2, -2, 2), masks=masks)
    b = regions_on_slice(pruned, [0, 0], [1, 0], [0, 1], box=(-2, 2, -2, 2))
    c = regions_in_box(net, [-2, -2], [2, 2], masks=masks)
    assert a.count == b.count == c.count and _pset(a.patterns) == _pset(c.patterns)
    assert _pset(c.patterns) == _brute_force(pruned, np.array([-2.0, -2]), np.array([2.0, 2]))


# ----------------------------------------------------------------------- conv / BN / pooling / leaky
def test_conv_bn_avgpool_net():
    net = small_convnet(in_shape=(1, 6), channels=2, seed=0)
    net[4].running_mean.uniform_(-0.3, 0.3)
    net[4].running_var.uniform_(0.5, 2.0)
    net.eval()
    rng = np.random.default_rng(0)
    x0, d1, d2 = rng.normal(size=(3, 1, 6))
    sl = regions_on_slice(net, x0, d1, d2, box=(-1, 1, -1, 1))
    bx = regions_in_box(net, [-1, -1], [1, 1], subspace=(x0.ravel(), np.stack([d1.ravel(), d2.ravel()])))
    assert sl.count == bx.count and _pset(sl.patterns) == _pset(bx.patterns)
    uv = _grid([-1, -1], [1, 1], 300)
    X = torch.as_tensor(x0.ravel() + uv[:, :1] * d1.ravel() + uv[:, 1:] * d2.ravel()).reshape(-1, 1, 6)
    sampled = count_patterns(net, X)
    assert {r.tobytes() for r in sampled.patterns} <= _pset(sl.patterns)
    assert sampled.count >= 0.9 * sl.count  # the grid finds almost all of them on so small a net


def test_leaky_relu_net():
    net = mlp(2, [5, 4], 1, seed=11, activation="leaky_relu")
    lo, hi = np.array([-2.0, -2.0]), np.array([2.0, 2.0])
    sl = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-2, 2, -2, 2))
    bx = regions_in_box(net, lo, hi)
    assert _pset(sl.patterns) == _pset(bx.patterns) == _brute_force(net, lo, hi)
    sampled = count_patterns(net, _grid(lo, hi, 200))
    assert {r.tobytes() for r in sampled.patterns} <= _pset(sl.patterns)


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    net = mlp(3, [4], 1, seed=0)
    with pytest.raises(ValueError, match="x0 has 2 entries"):
        regions_on_slice(net, [0, 0], [1, 0, 0], [0, 1, 0])
    with pytest.raises(ValueError, match="d2 has 4 entries"):
        regions_on_slice(net, [0, 0, 0], [1, 0, 0], [0, 1, 0, 0])
    with pytest.raises(ValueError, match="parallel"):
        regions_on_slice(net, [0, 0, 0], [1, 2, 0], [-2, -4, 0])
    with pytest.raises(ValueError, match="zero"):
        regions_on_slice(net, [0, 0, 0], [0, 0, 0], [1, 0, 0])
    with pytest.raises(ValueError, match="empty"):
        regions_on_slice(net, [0, 0, 0], [1, 0, 0], [0, 1, 0], box=(1, 1, 0, 1))
    with pytest.raises(ValueError, match="empty"):
        regions_on_slice(net, [0, 0, 0], [1, 0, 0], [0, 1, 0], box=(0, 1, 2, -1))
    with pytest.raises(ValueError, match="box must be"):
        regions_on_slice(net, [0, 0, 0], [1, 0, 0], [0, 1, 0], box=(0, 1, 2))
    with pytest.raises(ValueError, match="coincide"):
        regions_on_segment(net, [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="b has 2 entries"):
        regions_on_segment(net, [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="empty"):
        regions_in_box(net, [0, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="3 entries"):
        regions_in_box(net, [0, 0], [1, 1])
    with pytest.raises(ValueError, match="dependent"):
        regions_in_box(net, [0, 0], [1, 1], subspace=(np.zeros(3), np.array([[1.0, 0, 0], [2, 0, 0]])))
    with pytest.raises(ValueError, match="parallel"):
        plane_through([0, 0], [1, 1], [2, 2])
    with pytest.raises(TypeError, match="Sigmoid"):
        regions_on_slice(
            nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1)), [0, 0], [1, 0], [0, 1]
        )
    with pytest.raises(TooManyRegionsError, match="max_regions=5"):
        regions_in_box(mlp(2, [8, 8], 1, seed=0), [-3, -3], [3, 3], max_regions=5)


def test_plane_through_and_plots():
    rng = np.random.default_rng(0)
    x1, x2, x3 = rng.normal(size=(3, 5))
    x0, d1, d2, box = plane_through(x1, x2, x3, margin=0.1)
    np.testing.assert_allclose(x0 + d1, x2)
    np.testing.assert_allclose(x0 + d2, x3)
    assert box == (-0.1, 1.1, -0.1, 1.1)
    net = mlp(5, [6, 6], 2, seed=0)
    sl = regions_on_slice(net, x0, d1, d2, box)
    import matplotlib.pyplot as plt

    assert "activation regions" in sl.plot().get_title()
    assert regions_on_segment(net, x1, x2).plot().get_title()
    bx = regions_in_box(net, [-0.1, -0.1], [1.1, 1.1], subspace=(x0, np.stack([d1, d2])))
    assert bx.count == sl.count
    areas = [
        0.5 * abs(np.sum(p[:, 0] * np.roll(p[:, 1], -1) - np.roll(p[:, 0], -1) * p[:, 1]))
        for p in bx.polygons()
    ]
    np.testing.assert_allclose(sorted(areas), sorted(sl.areas), rtol=1e-6, atol=1e-9)
    bx.plot()
    regions_in_box(mlp(1, [3], 1, seed=0), [-2], [2]).plot()
    assert sl.to_dict()["count"] == sl.count
    plt.close("all")


def test_network_ending_with_an_activation():
    # f(x) = relu(x - c) for c = -2, -1, 0, 1: four kinks on [-3, 3], so five pieces, all from the last layer.
    lin = nn.Linear(1, 4)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.copy_(torch.tensor([2.0, 1.0, 0.0, -1.0]))
    net = nn.Sequential(lin, nn.ReLU())
    seg = regions_on_segment(net, [-3.0], [3.0])
    assert seg.count == 5
    np.testing.assert_allclose(seg.breakpoints, [1 / 6, 2 / 6, 3 / 6, 4 / 6], atol=1e-12)
    box = regions_in_box(net, [-3.0], [3.0])
    assert box.count == 5 and _pset(box.patterns) == _pset(seg.patterns)
    deep = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU())
    torch.manual_seed(1)
    for m in deep:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    sl = regions_on_slice(deep, [0, 0], [1, 0], [0, 1], box=(-2, 2, -2, 2))
    bx = regions_in_box(deep, [-2, -2], [2, 2])
    assert sl.n_bits == 6 and _pset(sl.patterns) == _pset(bx.patterns)
    sampled = count_patterns(deep, _grid(np.array([-2, -2]), np.array([2, 2]), 200))
    assert sampled.n_bits == 6 and {r.tobytes() for r in sampled.patterns} <= _pset(sl.patterns)


def test_box_lp_failure_is_an_error_not_a_missing_region(monkeypatch):
    import scipy.optimize
    from scipy.optimize import OptimizeResult

    def failing(*args, **kwargs):
        return OptimizeResult(status=4, message="numerical difficulties", x=None, success=False)

    monkeypatch.setattr(scipy.optimize, "linprog", failing)
    with pytest.raises(RuntimeError, match="status 4"):
        regions_in_box(mlp(2, [4, 4], 1, seed=0), [-3, -3], [3, 3])


def _region_key(res):
    """Regions as a sorted list of (pattern bytes, rounded area): order-free comparison of two slices."""
    return sorted(zip((r.tobytes() for r in pack_patterns(res.patterns)), np.round(res.areas, 9)))


def test_slice_max_regions_guard_names_layer_and_count():
    net = mlp(2, [20, 20], 1, seed=0)
    full = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-3, 3, -3, 3))
    assert full.count > 30
    with pytest.raises(
        TooManyRegionsError, match=r"at least \d+ pieces by layer \d .*max_regions=30.*smaller box"
    ):
        regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-3, 3, -3, 3), max_regions=30)
    # The count of the full run is allowed exactly: the guard only fires above it.
    again = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-3, 3, -3, 3), max_regions=full.count)
    assert again.count == full.count


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.sampled_from([1, 500, 5_000, 50_000]))
def test_slice_chunked_equals_unchunked(seed, budget):
    # A tiny memory budget forces depth-first processing in chunks (down to one polygon at a time); the
    # regions (patterns and areas) must be exactly those of the one-chunk run.
    net = mlp(3, [7, 6, 5], 2, seed=seed)
    rng = np.random.default_rng(seed)
    x0, d1, d2 = rng.normal(size=(3, 3))
    a = regions_on_slice(net, x0, d1, d2, box=(-2, 2, -2, 2))
    b = regions_on_slice(net, x0, d1, d2, box=(-2, 2, -2, 2), memory_budget=budget)
    assert a.count == b.count
    assert _region_key(a) == _region_key(b)
    for poly, area in zip(b.polygons, b.areas):
        assert (
            abs(
                0.5 * abs(np.sum(poly[:, 0] * np.roll(poly[:, 1], -1) - np.roll(poly[:, 0], -1) * poly[:, 1]))
                - area
            )
            < 1e-9
        )


def test_input_shape_is_passed_for_conv_nets_without_the_attribute():
    net = small_convnet((1, 10), n_out=2, channels=2, seed=0).eval()
    shape = net.input_shape
    bare = small_convnet((1, 10), n_out=2, channels=2, seed=0).eval()
    del bare.input_shape
    with pytest.raises(ValueError, match="input_shape"):
        regions_on_segment(bare, np.zeros(10), np.ones(10))
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(size=(3, 10))
    assert regions_on_segment(bare, a, b, input_shape=shape).count == regions_on_segment(net, a, b).count
    s1 = regions_on_slice(bare, a, b - a, c - a, box=(-0.2, 0.4, -0.2, 0.4), input_shape=shape)
    s2 = regions_on_slice(net, a, b - a, c - a, box=(-0.2, 0.4, -0.2, 0.4))
    assert _region_key(s1) == _region_key(s2)
    sub = (a, np.stack([b - a, c - a]))
    b1 = regions_in_box(bare, [-0.2, -0.2], [0.4, 0.4], subspace=sub, input_shape=shape)
    assert b1.count == regions_in_box(net, [-0.2, -0.2], [0.4, 0.4], subspace=sub).count == s2.count > 1
    X = torch.as_tensor(rng.normal(size=(200, *shape)))
    # count_patterns reads the per-sample shape from X when it has more than 2 axes.
    assert count_patterns(bare, X).count == count_patterns(net, X).count
    assert count_patterns(bare, X.reshape(200, -1), input_shape=shape).count == count_patterns(net, X).count


def test_box_progress_bar_and_verbose_false(capsys):
    net = mlp(2, [6, 6], 1, seed=0)
    quiet = regions_in_box(net, [-2, -2], [2, 2], verbose=False)
    assert capsys.readouterr().err == ""
    loud = regions_in_box(net, [-2, -2], [2, 2], verbose=True)
    assert "regions_in_box layer" in capsys.readouterr().err
    assert loud.count == quiet.count
    assert _pset(loud.patterns) == _pset(quiet.patterns)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_box_3d_subspace_matches_slices_of_it(seed):
    # The vertex filter skips units that miss a region: every 2-D face slice of a 3-D box run must find
    # only patterns that the 3-D run found (a pattern met on a face of the box is met in the box).
    net = mlp(6, [8, 8], 2, seed=seed)
    rng = np.random.default_rng(seed)
    origin, basis = rng.normal(size=6), rng.normal(size=(3, 6))
    box = regions_in_box(net, [-1, -1, -1], [1, 1, 1], subspace=(origin, basis), verbose=False)
    inner = regions_on_slice(net, origin, basis[0], basis[1], box=(-1, 1, -1, 1))
    assert _pset(inner.patterns) <= _pset(box.patterns)
    # and every interior point really has its pattern
    assert count_patterns(net, box.points).count == box.count


def test_cli_regions_radius_and_whole_plane(capsys):
    import json

    from netgeom.cli import main

    counts = []
    for r in ("10", "1e6", "1e300", "inf"):
        assert main(["regions", "6", "8", "8", "--radius", r]) == 0
        out = json.loads(capsys.readouterr().out)
        counts.append(out["regions_on_slice"])
    assert counts == sorted(counts) and counts[-1] == counts[-2] and out["whole_plane"]


def test_whole_plane_and_line_degenerate_arrangements():
    # no hidden layer: one region; lines all through the origin; parallel lines only (strips, no vertex)
    affine = nn.Sequential(nn.Linear(3, 2))
    assert regions_on_slice(affine, np.zeros(3), [1, 0, 0], [0, 1, 0], box=None).count == 1
    assert regions_on_segment(affine, np.zeros(3), np.ones(3), t_range=None).count == 1
    star = _net_from([np.array([[1.0, 0], [0, 1], [1, 1]])], [np.zeros(3)])
    whole = regions_on_slice(star, [0, 0], [1, 0], [0, 1], box=None)
    assert whole.count == 6 and whole.n_exact > 0  # every vertex is the origin: decided exactly
    seg = regions_on_segment(star, [-1.0, -0.5], [1.0, 0.5], t_range=None)
    assert seg.count == 2 and seg.breakpoints == pytest.approx([0.5], abs=1e-15)
    strips = _net_from([np.array([[1.0, 0], [2, 0], [-1, 0]])], [np.array([5.0, -300, 1e4])])
    whole = regions_on_slice(strips, [0, 0], [1, 0], [0, 1], box=None)
    assert whole.count == 4 and whole.box[1] >= 1e4
    assert regions_on_slice(strips, [0, 0], [1, 0], [0, 1], box=(-1e3, 1e3, -1, 1)).count == 3


def test_plane_directions_near_overflow_give_the_same_count():
    # norms of 1e200-long directions overflow in float64: the error bounds become NaN and those decisions
    # must go to exact arithmetic, not to a float sign
    import warnings

    net = mlp(10, [16, 16], 3, seed=0)
    e = np.eye(10)
    base = regions_on_slice(net, np.zeros(10), e[0], e[1], box=(-10, 10, -10, 10)).count
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for c in (1e200, 2.0**-1000):
            box = (-10 / c, 10 / c, -10 / c, 10 / c)
            res = regions_on_slice(net, np.zeros(10), c * e[0], c * e[1], box=box)
            assert res.count == base
