"""Exact slice and segment counts against regioncam (an independent 2-D region tracer) and metamorphic laws.

regioncam counts the faces of its partition of a centred square ``[-r, r]^2``, cut unit by unit along the
zero lines of every ReLU/LeakyReLU layer: one face per activation region met, the quantity netgeom's
``regions_on_slice`` counts. It computes in float32 by interpolating vertex values along edges, so it is
exact in practice while the square is within a few decades of the arrangement's own scale; on a
``10^6`` square its vertices move by ~``10^6 * 2^-24`` and its count drifts (more or fewer faces). The tests
feed both the same plane (float32 values, so the float64 plane is the same) and the same float32 net, and
compare at boxes where regioncam is reliable; at huge boxes they compare netgeom's count with regioncam's on
the box that netgeom finds holds the whole arrangement (``box=None``).
"""

import numpy as np
import pytest
import regioncam
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netgeom import mlp
from netgeom.regions.exact import regions_on_segment, regions_on_slice


def _rc_count(net, x0, d1, d2, r: float) -> int:
    """regioncam's face count on the square [-r, r]^2 of the plane x0 + u d1 + v d2 (hidden layers only)."""
    rc = regioncam.Regioncam(size=r)
    rc.linear(np.stack([d1, d2]).astype(np.float32), np.asarray(x0, dtype=np.float32))
    mods = list(net)
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Linear):
            if i == len(mods) - 1:
                break  # the classifier adds no region
            rc.linear(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
        elif isinstance(m, torch.nn.LeakyReLU):
            rc.leaky_relu(m.negative_slope)
        elif isinstance(m, torch.nn.ReLU):
            rc.relu()
    return rc.num_faces


def _plane(n0: int, seed: int, data: bool):
    """A float32-representable plane: through three digits images (64-D) or random."""
    rng = np.random.default_rng(seed)
    if data:
        from sklearn.datasets import load_digits

        X = load_digits().data / 16.0
        i, j, k = rng.choice(len(X), 3, replace=False)
        x0, d1, d2 = X[i], X[j] - X[i], X[k] - X[i]
    else:
        x0, d1, d2 = rng.normal(size=(3, n0))
    return [v.astype(np.float32).astype(np.float64) for v in (x0, d1, d2)]


def test_regioncam_float32_misses_a_sliver_that_exact_arithmetic_keeps():
    """Three nearly concurrent lines leave a triangle ~1e-4 wide near the origin: on a 1e3 square regioncam's
    float32 vertices (resolution ~1e3 * 2^-24) collapse it, while the exact count keeps all 16 regions of 5
    lines in general position (every pairwise intersection lies inside the square)."""
    net = mlp(5, [5], 1, seed=0)
    x0, d1, d2 = _plane(5, 0, False)
    W, b = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    A, c = np.stack([W @ d1, W @ d2], axis=1), W @ x0 + b
    pts = [np.linalg.solve(A[[i, j]], -c[[i, j]]) for i in range(5) for j in range(i + 1, 5)]
    assert max(np.abs(p).max() for p in pts) < 1.0
    for r in (1.0, 1e2, 1e3, 1e6):
        assert regions_on_slice(net, x0, d1, d2, box=_square(r)).count == 16
    assert _rc_count(net, x0, d1, d2, 1e2) == 16
    assert _rc_count(net, x0, d1, d2, 1e3) == 15  # regioncam's float32 limit, not ours


def _resolved_in_float32(result, r: float) -> bool:
    """Every region is wide enough for float32 vertices on a square of half-width r: regioncam can only be
    compared where its rounding (about r * 2^-24 per coordinate) cannot collapse a region."""
    return bool(np.min(result.areas) > (r * 2.0**-14) ** 2)


def _square(r):
    return (-r, r, -r, r)


nets = st.fixed_dictionaries(
    {
        "n0": st.integers(2, 64),
        "widths": st.lists(st.integers(2, 12), min_size=1, max_size=3),
        "leaky": st.booleans(),
        "seed": st.integers(0, 10_000),
        "data": st.booleans(),
    }
)


def _net(case):
    n0 = 64 if case["data"] else case["n0"]
    act = "leaky_relu" if case["leaky"] else "relu"
    return n0, mlp(n0, case["widths"], 1, seed=case["seed"], activation=act)


@settings(max_examples=30, deadline=None)
@given(case=nets, log_r=st.integers(-3, 4))
def test_slice_count_equals_regioncam(case, log_r):
    n0, net = _net(case)
    x0, d1, d2 = _plane(n0, case["seed"], case["data"])
    r = 10.0**log_r
    ours = regions_on_slice(net, x0, d1, d2, box=_square(r))
    assume(_resolved_in_float32(ours, r))
    assert ours.count == _rc_count(net, x0, d1, d2, r)
    assert len({p.tobytes() for p in np.packbits(ours.patterns, axis=1)}) == ours.count


@settings(max_examples=15, deadline=None)
@given(case=nets)
def test_huge_boxes_and_whole_plane_equal_regioncam_on_the_arrangement_box(case):
    n0, net = _net(case)
    x0, d1, d2 = _plane(n0, case["seed"], case["data"])
    whole = regions_on_slice(net, x0, d1, d2, box=None)
    R = whole.box[1]
    for r in (1e6, 1e100, 1e300):
        if r >= R:
            assert regions_on_slice(net, x0, d1, d2, box=_square(r)).count == whole.count
    assume(R <= 1e4 and _resolved_in_float32(whole, R))  # where regioncam's float32 is reliable
    assert whole.count == _rc_count(net, x0, d1, d2, R)


def test_the_issue_example_never_falls_as_the_box_grows():
    net = mlp(10, [16, 16], 3, seed=0)
    e = np.eye(10)
    counts = [regions_on_slice(net, np.zeros(10), e[0], e[1], box=_square(r)).count for r in
              (10, 1e3, 1e4, 1e6, 1e100, 1e300)]
    whole = regions_on_slice(net, np.zeros(10), e[0], e[1], box=None)
    assert counts == sorted(counts) and counts[-1] == whole.count and counts[0] < counts[-1]
    assert whole.areas.sum() == pytest.approx((2 * whole.box[1]) ** 2, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(case=nets, radii=st.lists(st.floats(1e-3, 1e6), min_size=3, max_size=3, unique=True))
def test_nested_boxes_never_have_more_regions(case, radii):
    n0, net = _net(case)
    x0, d1, d2 = _plane(n0, case["seed"], case["data"])
    radii = sorted(radii)
    counts = [regions_on_slice(net, x0, d1, d2, box=(-r, r, -0.5 * r, r)).count for r in radii]
    assert counts == sorted(counts)
    assert counts[-1] <= regions_on_slice(net, x0, d1, d2, box=None).count


@settings(max_examples=15, deadline=None)
@given(case=nets, log_c=st.floats(-3, 3), log_r=st.integers(-2, 6))
def test_scaling_directions_and_box_inversely_changes_nothing(case, log_c, log_r):
    n0, net = _net(case)
    x0, d1, d2 = _plane(n0, case["seed"], case["data"])
    c, r = 10.0**log_c, 10.0**log_r
    a = regions_on_slice(net, x0, d1, d2, box=(-r, r, -r, 0.5 * r))
    # a power of two keeps the float plane identical: the same regions, areas scaled by c^2 exactly
    p = regions_on_slice(net, x0, 4 * d1, 4 * d2, box=(-r / 4, r / 4, -r / 4, r / 8))
    assert p.count == a.count
    np.testing.assert_allclose(np.sort(p.areas) * 16, np.sort(a.areas), rtol=1e-9)
    # any other factor rounds d1, d2 (a different plane by ~1e-16): the count is unchanged on a generic net
    b = regions_on_slice(net, x0, c * d1, c * d2, box=(-r / c, r / c, -r / c, 0.5 * r / c))
    assert b.count == a.count


@settings(max_examples=10, deadline=None)
@given(case=nets, log_r=st.sampled_from([0, 3, 100, 300]))
def test_permuting_inputs_or_swapping_directions_gives_the_same_exact_answer(case, log_r):
    # The exact partition does not depend on the order of float sums: permuting the input coordinates (and
    # the first layer's columns with them) or swapping d1 and d2 (and the box's axes) changes nothing, even
    # on boxes where every float sum is dominated by rounding.
    n0, net = _net(case)
    x0, d1, d2 = _plane(n0, case["seed"], case["data"])
    r = 10.0**log_r
    a = regions_on_slice(net, x0, d1, d2, box=(-r, r, -r, 0.5 * r))
    perm = np.random.default_rng(case["seed"]).permutation(n0)
    pnet = mlp(n0, case["widths"], 1, seed=case["seed"], activation="leaky_relu" if case["leaky"] else "relu")
    with torch.no_grad():
        pnet[0].weight.copy_(net[0].weight[:, perm])
    b = regions_on_slice(pnet, x0[perm], d1[perm], d2[perm], box=(-r, r, -r, 0.5 * r))
    c = regions_on_slice(net, x0, d2, d1, box=(-r, 0.5 * r, -r, r))
    assert a.count == b.count == c.count
    key = sorted(p.tobytes() for p in np.packbits(a.patterns, axis=1))
    assert key == sorted(p.tobytes() for p in np.packbits(b.patterns, axis=1))
    assert key == sorted(p.tobytes() for p in np.packbits(c.patterns, axis=1))


@settings(max_examples=15, deadline=None)
@given(case=nets)
def test_segment_at_every_scale_and_the_whole_line(case):
    n0, net = _net(case)
    rng = np.random.default_rng(case["seed"])
    a = rng.normal(size=n0)
    whole = regions_on_segment(net, -a, a, t_range=None)
    counts = [regions_on_segment(net, -s * a, s * a).count for s in (1e-3, 1.0, 1e3, 1e100, 1e300)]
    assert counts == sorted(counts)
    lo, hi = whole.t_range
    # the whole line's breakpoints lie in its t_range; a segment covering it meets every region
    span = max(abs(lo), abs(hi))
    assert regions_on_segment(net, -a, a, t_range=(-2 * span, 2 * span)).count == whole.count
    assert counts[-1] == whole.count
    # the segment is the 1-D slice of the plane through it: its patterns are among the plane's
    sl = regions_on_slice(net, np.zeros(n0), a, rng.normal(size=n0), box=(-span, span, -1e-3, 1e-3))
    seg = regions_on_segment(net, -span * a, span * a)
    assert {p.tobytes() for p in np.packbits(seg.patterns, axis=1)} <= {
        p.tobytes() for p in np.packbits(sl.patterns, axis=1)
    }
