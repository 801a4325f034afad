"""The compiled slice kernel against the numpy path: the same regions, polygons (bit for bit) and patterns,
and close calls still settled exactly."""

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netgeom import mlp
from netgeom.regions import _slice, _slice_kernel
from netgeom.regions.exact import regions_on_slice
from netgeom.regions.patterns import pack_patterns


def _both(*args, **kw):
    """The slice by the kernel path (default) and by the numpy path."""
    out = [regions_on_slice(*args, **kw)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_slice, "_KERNEL", False)
        out.append(regions_on_slice(*args, **kw))
    return out


def _by_pattern(res):
    keys = [p.tobytes() for p in pack_patterns(res.patterns)]
    assert len(set(keys)) == len(keys)  # one piece per activation region
    return dict(zip(keys, zip(res.polygons, res.areas)))


def _assert_same(k, n, bitwise: bool):
    assert k.count == n.count
    if bitwise:
        assert k.box == n.box
    else:
        # box=None: the box is the hull of the vertices, which come to rounding from both paths (seed 2401,
        # n0 3, widths [8, 8, 1], prune 0.3: an extreme vertex of two nearly parallel lines, 1e-13 apart)
        np.testing.assert_allclose(k.box, n.box, rtol=1e-9)
    a, b = _by_pattern(k), _by_pattern(n)
    assert a.keys() == b.keys()
    scale = max(abs(v) for v in k.box)
    for key, (poly, area) in a.items():
        other, other_area = b[key]
        assert poly.shape == other.shape
        if bitwise:
            # every piece undergoes the same cuts in the same order: identical floats, same first vertex
            assert np.array_equal(poly, other)
        else:
            # deeper lines come from a BLAS product whose rounding depends on the row's position, and
            # the two paths order the pieces differently: vertices agree to rounding
            np.testing.assert_allclose(poly, other, rtol=1e-9, atol=1e-12 * scale)
        assert area == pytest.approx(other_area, rel=1e-6, abs=1e-12 * scale**2)
    # the kernel asks no question the numpy path does not (it skips pieces inside a side of a unit)
    assert k.n_exact <= n.n_exact


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n0=st.sampled_from([2, 3, 6]),
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    leaky=st.booleans(),
    prune=st.sampled_from([0.0, 0.3]),
    r=st.sampled_from([1e-3, 1.0, 30.0, None]),
    budget=st.sampled_from([1, 2**28]),
)
@example(seed=2401, n0=3, widths=[8, 8, 1], leaky=False, prune=0.3, r=None, budget=2**28)
def test_kernel_equals_numpy_on_random_nets(seed, n0, widths, leaky, prune, r, budget):
    net = mlp(n0, widths, 2, seed=seed, activation="leaky_relu" if leaky else "relu")
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for lin in net[::2][:-1]:
            lin.weight.mul_(torch.as_tensor(rng.uniform(size=lin.weight.shape) >= prune))
        net[0].weight[0] = 0.0  # one unit identically zero on the plane (a pruned unit): bit False
        net[0].bias[0] = 0.0
    x0, d1, d2 = rng.normal(size=(3, n0))
    box = None if r is None else (-r, r, -0.5 * r, 2 * r)
    k, n = _both(net, x0, d1, d2, box=box, memory_budget=budget)
    _assert_same(k, n, bitwise=len(widths) == 1)
    assert not k.patterns[:, 0].any()


def test_close_calls_go_exact_through_the_kernel():
    # every line through the origin: the kernel gives the polygons with the origin back to the exact path
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
        net[0].bias.zero_()
    k, n = _both(net, [0, 0], [1, 0], [0, 1], box=None)
    assert k.count == 6 and k.n_exact > 0
    _assert_same(k, n, bitwise=True)
    assert _slice._KERNEL
    # 1e200-long directions: norms of 1e200-sized maps computed without squaring them to inf (before, the
    # bounds were NaN and every decision went exact); the close calls still go exact, the count is the same
    net = mlp(10, [16, 16], 3, seed=0)
    e = np.eye(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        b = 10 / 1e200
        res = regions_on_slice(net, np.zeros(10), 1e200 * e[0], 1e200 * e[1], box=(-b, b, -b, b))
    assert res.count == 493 and 0 < res.n_exact < 15205


def test_kernel_gives_back_a_polygon_it_cannot_certify():
    # a unit's line through a vertex of the square: that polygon goes back, the other is cut
    sq = _slice.initial_polygon(
        np.array([[1.0, -1, -1], [1, 1, -1], [1, 1, 1], [1, -1, 1]]),
        np.array([[1.0, 0, 1], [-1, 1, 0], [-1, 0, 1], [1, 1, 0]]),
    )
    rec = np.concatenate([sq, sq])
    # maps a + b u + c v with error bounds: polygon 0 gets u + v = 0, through the corners (-1, 1) and (1, -1);
    # polygon 1 gets u + v = 1, through (1, 0) and (0, 1), no vertex on it
    A, B = np.array([[0.0], [-1.0]]), np.ones((2, 2, 1))
    eA, eB = np.full((2, 1), 1e-16), np.zeros((2, 2, 1))
    status, count, out, onv, par, bits, fb = _slice_kernel.split_layer(
        rec, np.array([4, 4]), A, B, eA, eB, 1.0, 1.0, False, np.int64(0), 0, 100,
        # working arrays of one row: the kernel grows them
        np.empty((1, 6, rec.shape[2])), np.empty(1, np.int64), np.empty(1, np.int64), np.empty((1, 1), bool),
    )
    assert status == _slice_kernel.OK and fb.tolist() == [True, False]
    assert par.tolist() == [1, 1] and sorted(onv.tolist()) == [3, 5] and sorted(bits[:, 0]) == [False, True]
    with pytest.raises(_slice.TooManyRegionsError, match="max_regions=1"):
        regions_on_slice(mlp(2, [4], 1, seed=0), [0, 0], [1, 0], [0, 1], box=(-9, 9, -9, 9), max_regions=1)


def test_plane_check_certifies_in_floats_and_decides_the_rest_exactly():
    net = mlp(2, [3], 1, seed=0)
    assert regions_on_slice(net, [0, 0], [1, 1e-300], [1, 0]).count >= 1  # not parallel, by 1e-300
    # 3 * d1 rounded is not exactly parallel to d1 (Fraction arithmetic says so); floats cannot tell
    d1 = np.array([0.1, 0.3])
    d2 = 3 * d1
    assert Fraction(d1[0]) * Fraction(d2[1]) != Fraction(d1[1]) * Fraction(d2[0])
    assert regions_on_slice(net, [0, 0], d1, d2, box=(-1e15, 1e15, -1e15, 1e15)).count >= 1
    # (the exact test compared d1[k] d1[i] with d2[k] d2[i] before: [1, 2], [3, 6] passed as a plane)
    cases = ([1, 2], [2, 4]), ([1, 2], [3, 6]), ([1e-310, 0], [3e-310, 0]), ([1e300, 1e300], [-1e300, -1e300])
    for a, b in cases:
        with pytest.raises(ValueError, match="parallel"):
            regions_on_slice(net, [0, 0], a, b)


def test_polygons_are_a_sequence_of_vertex_arrays():
    k, n = _both(mlp(2, [6, 6], 1, seed=3), [0, 0], [1, 0], [0, 1], box=(-2, 2, -2, 2))
    polys = k.polygons
    assert isinstance(polys, _slice.PolygonList) and isinstance(n.polygons, list)
    assert len(polys) == k.count == len(list(polys)) and polys[-1] is not None
    assert all(p.shape == (len(p), 2) and len(p) >= 3 for p in polys)
    assert [p.tolist() for p in polys[1:3]] == [polys[1].tolist(), polys[2].tolist()]
    assert np.array_equal(polys[-1], polys[len(polys) - 1])
    with pytest.raises(IndexError):
        polys[len(polys)]
    # equality is elementwise array equality, as for the list the numpy path gives
    assert polys == list(polys) and polys != list(polys)[::-1] and polys != list(polys)[1:]
    assert "polygons" not in k.to_dict()
    ax = k.plot()
    assert len(ax.collections[0].get_paths()) == k.count
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
