"""regions_in_box is exact with no "not certified" case: every wall keeps its float error bound for all
later cuts (a piece's ball never straddles an earlier exact wall), and sides that floats cannot decide
are decided in rational arithmetic instead of being dropped. The exact reference is regions_on_slice on
2-D boxes; count_patterns (certified exact) checks that each reported point has its reported pattern.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import count_patterns, regions_in_box, regions_on_slice
from netgeom.regions.patterns import pack_patterns

F64 = torch.float64


def _pats(p) -> set:
    return {bytes(r) for r in pack_patterns(p)}


def _sampled(net, X, masks=None) -> set:
    """Packed patterns of ``X`` by count_patterns (exact: certified float32, else float64, else rationals)."""
    return {bytes(r) for r in count_patterns(net, torch.as_tensor(X), masks, verbose=False).patterns}


def _slice(net, lo, hi, masks=None):
    return regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(lo[0], hi[0], lo[1], hi[1]), masks=masks)


def _box_quiet(net, lo, hi, **kw):
    """regions_in_box with every warning an error: a certified answer needs none."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return regions_in_box(net, lo, hi, verbose=False, **kw)


def _same_as_slice(net, lo, hi, masks=None, pool=False):
    """The box's regions are the exact slice's. A slice encodes a max-pool window's argmax one-hot, the box
    in binary as count_patterns does: with max-pooling (``pool``) the counts are compared, and the box's
    patterns against count_patterns at its points."""
    res = _box_quiet(net, lo, hi, masks=masks)
    want = _slice(net, lo, hi, masks)
    assert res.count == want.count
    if pool:
        assert _sampled(net, res.points, masks) == _pats(res.patterns)
    else:
        assert _pats(res.patterns) == _pats(want.patterns)
    return res


# ------------------------------------------------------------------ gap 1: walls keep their error bounds
_M = 2.0**27


def _cancel_weights(delta: float):
    """Unit k = 0.1 (u1 - u2) with u1, u2 ~ 2^27 (error bound ~3e-7) and a clean unit j parallel to it,
    delta away: a strip |delta| wide between them (the reviewer's family)."""
    W1 = torch.tensor([[_M, 0], [_M, 1], [0, 1]], dtype=F64)
    b1 = torch.tensor([_M, _M - 0.3, 2.0], dtype=F64)
    W2 = torch.tensor([[0.1, -0.1, 0], [0, 0, 1.0]], dtype=F64)
    tk = float(Fraction(_M) - Fraction(_M - 0.3))
    b2 = torch.tensor([0.0, -(2 + tk + delta)], dtype=F64)
    return W1, b1, W2, b2


def _cancel_chain(delta):
    W1, b1, W2, b2 = _cancel_weights(delta)
    L1, L2 = nn.Linear(2, 3).double(), nn.Linear(3, 2).double()
    with torch.no_grad():
        L1.weight.copy_(W1)
        L1.bias.copy_(b1)
        L2.weight.copy_(W2)
        L2.bias.copy_(b2)
    return nn.Sequential(L1, nn.ReLU(), L2, nn.ReLU())


class _CancelGraph(nn.Module):
    """The same function through a concatenation (the graph engine)."""

    def __init__(self, delta):
        super().__init__()
        W1, b1, W2, b2 = _cancel_weights(delta)
        self.a, self.b = nn.Linear(2, 2).double(), nn.Linear(2, 1).double()
        self.c = nn.Linear(3, 2).double()
        with torch.no_grad():
            self.a.weight.copy_(W1[:2])
            self.a.bias.copy_(b1[:2])
            self.b.weight.copy_(W1[2:])
            self.b.bias.copy_(b1[2:])
            self.c.weight.copy_(W2)
            self.c.bias.copy_(b2)

    def forward(self, x):
        return torch.relu(self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)))


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("delta", [3e-8, 1e-8, 3e-9, 1e-9, 0.0, -1e-9, -3e-9, -1e-8, -3e-8])
def test_wall_within_an_earlier_walls_bound_gives_the_exact_regions(delta, graph):
    """Found by review: a kept piece straddled the strongly cancelling unit's exact hyperplane within its
    bound, so a pattern was doubled and another went missing (main raises or warns here)."""
    net = _CancelGraph(delta) if graph else _cancel_chain(delta)
    lo, hi = [-0.5, -1.0], [0.5, 1.0]
    res = _same_as_slice(net, lo, hi)
    assert res.count == (2 if delta == 0.0 else 3)
    # each reported point lies in the region of its pattern (count_patterns is exact)
    assert _sampled(net, res.points) == _pats(res.patterns)


def test_a_region_with_no_float64_interior_point_is_an_error_naming_the_cause():
    """Around (-1, 0.3) the family has a real region ~1e-17 wide in x (the exact slice counts it, area
    ~1e-25): no float64 input lies inside it, so the box engine cannot report its point and says so."""
    net = _cancel_chain(1e-8)
    lo, hi = [-8, -8], [8, 9]
    assert _slice(net, lo, hi).count == 11
    with pytest.raises(RuntimeError, match="below float64's resolution"):
        regions_in_box(net, lo, hi, verbose=False)


# -------------------------------------------------------------- gap 2: thin sides decided, never dropped
def _bias_free(net):
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.bias = None
    return net


class _PoolRes(nn.Module):
    def __init__(self, seed, bias=False):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(2, 8, bias=bias).double()
        self.b = nn.Linear(4, 4, bias=bias).double()
        self.c = nn.Linear(4, 1, bias=bias).double()

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = torch.nn.functional.max_pool1d(h.unsqueeze(1), 2).flatten(1)
        return self.c(h + torch.relu(self.b(h)))


def _mlp(widths, seed, slope=0.0, n_in=2):
    torch.manual_seed(seed)
    layers, n = [], n_in
    for w in widths:
        layers += [nn.Linear(n, w), nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)]
        n = w
    return nn.Sequential(*layers, nn.Linear(n, 1)).double()


@pytest.mark.parametrize("seed", [0, 3])
def test_hyperplanes_meeting_exactly_at_a_vertex_are_decided_not_dropped(seed):
    """A bias-free net's hyperplanes all meet at 0: the sides beyond that vertex are thinner than float64
    can place the walls; they were dropped with a 'not certified' warning, now decided in rationals."""
    net = _bias_free(_mlp([8, 8], seed))
    res = _same_as_slice(net, [-1, -1], [1, 1])
    assert res.n_exact > 0
    graph = _PoolRes(seed)
    res = _same_as_slice(graph, [-1, -0.5], [0.75, 1], pool=True)
    assert res.n_exact > 0


def test_concurrent_hyperplanes_in_3d_are_decided():
    """No 3-D exact reference exists here: a bias-free net's regions are cones at 0, so every box around 0
    (scaled by any power of two) has the same regions, and each reported point has its pattern."""
    net = _bias_free(_mlp([6, 5], 1, n_in=3))
    ref = _box_quiet(net, [-1, -1, -1], [1, 1, 1])
    assert ref.n_exact > 0
    for s in (2.0**-40, 2.0**30):
        res = _box_quiet(net, [-s] * 3, [s] * 3)
        assert res.count == ref.count and _pats(res.patterns) == _pats(ref.patterns)
    assert _sampled(net, ref.points) == _pats(ref.patterns)
    assert _sampled(net, np.random.default_rng(0).uniform(-1, 1, (20_000, 3))) <= _pats(ref.patterns)


# ----------------------------------------------------------------------------------------- metamorphic
def test_nested_boxes_never_fewer_regions():
    for net in (_mlp([6, 6], 2), _bias_free(_mlp([6, 6], 4)), _cancel_chain(1e-8), _PoolRes(1, bias=True)):
        prev = None
        for lo, hi in (([0.1, 0.2], [0.3, 0.35]), ([-0.2, 0.0], [0.5, 0.5]), ([-0.9, -1], [1, 1]),
                       ([-0.95, -8], [8, 9])):
            res = _box_quiet(net, lo, hi)
            if prev is not None:
                assert res.count >= prev.count and _pats(res.patterns) >= _pats(prev.patterns)
            prev = res


@pytest.mark.parametrize("k", [-600, -20, 17, 500])
def test_box_and_biases_scaled_by_a_power_of_two_change_nothing(k):
    """Scaling every bias and the box by 2^k scales every pre-activation by 2^k (ReLU and LeakyReLU are
    positively homogeneous): the same regions, exactly."""
    net = _mlp([5, 5], 7, slope=0.125)
    lo, hi = np.array([-1.0, -0.75]), np.array([1.25, 1.0])
    ref = _box_quiet(net, lo, hi)
    scaled = _mlp([5, 5], 7, slope=0.125)
    with torch.no_grad():
        for m in scaled:
            if isinstance(m, nn.Linear):
                m.bias.mul_(2.0**k)
    res = _box_quiet(scaled, np.ldexp(lo, k), np.ldexp(hi, k))
    assert res.count == ref.count and _pats(res.patterns) == _pats(ref.patterns)


def test_permuted_inputs_change_nothing():
    net = _mlp([7, 6], 5, n_in=3)
    lo, hi = np.array([-1.0, -0.5, -0.25]), np.array([0.5, 1.0, 0.75])
    ref = _box_quiet(net, lo, hi)
    perm = [2, 0, 1]
    pnet = _mlp([7, 6], 5, n_in=3)
    with torch.no_grad():
        pnet[0].weight.copy_(net[0].weight[:, perm])
    res = _box_quiet(pnet, lo[perm], hi[perm])
    assert res.count == ref.count and _pats(res.patterns) == _pats(ref.patterns)


# ---------------------------------------------------------------- property: against the exact slice
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    widths=st.lists(st.integers(2, 5), min_size=1, max_size=2),
    slope=st.sampled_from([0.0, 0.0, 0.1]),
    bias=st.booleans(),
    prune=st.sampled_from([0.0, 0.4]),
    k=st.sampled_from([-1040, -600, -1, 0, 3, 400, 900]),
)
def test_random_small_nets_match_the_exact_slice(seed, widths, slope, bias, prune, k):
    net = _mlp(widths, seed, slope)
    if not bias:
        _bias_free(net)
    else:
        with torch.no_grad():  # the arrangement scales with the box (to within the biases' rounding)
            for m in net:
                if isinstance(m, nn.Linear):
                    m.bias.mul_(2.0**k)
    masks = None
    if prune:
        rng = np.random.default_rng(seed)
        masks = {
            f"{i}.weight": torch.tensor(rng.random(tuple(m.weight.shape)) >= prune)
            for i, m in enumerate(net)
            if isinstance(m, nn.Linear)
        }
    lo = np.ldexp(np.array([-1.0, -0.625]), k)
    hi = np.ldexp(np.array([0.75, 1.0]), k)
    _same_as_slice(net, lo, hi, masks)


# ---------------------------------------------------------------------- the exact side decision itself
@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000), d=st.integers(1, 4), m=st.integers(0, 6), w=st.sampled_from([None, 0, -45])
)
def test_exact_side_without_hints_agrees_with_the_float_lp(seed, d, m, w):
    """The exact simplex (no float hints) against HiGHS on random polytopes in the unit box, and on slabs
    ``2^-40 - 2^w ≤ a·y ≤ 2^-40`` through them of zero width (no interior) or width 2^-45 (a real region
    far thinner than HiGHS's tolerances, yet wider than float64's spacing in the unit box)."""
    from scipy.optimize import linprog

    from netgeom.regions.exact import _exact_side

    rng = np.random.default_rng(seed)
    A = np.vstack([np.eye(d), -np.eye(d), rng.normal(size=(m, d))])
    b = np.concatenate([np.ones(2 * d), rng.uniform(-0.5, 1.0, m)])
    norms = np.linalg.norm(A, axis=1)
    cost, free = np.r_[np.zeros(d), -1.0], [(None, None)] * (d + 1)
    depth = linprog(cost, A_ub=np.c_[A, norms], b_ub=b, bounds=free).x[d]
    if w is not None:
        a = rng.normal(size=d)
        on_slab = linprog(cost, A_ub=np.c_[A, norms], b_ub=b, A_eq=np.r_[a, 0][None], b_eq=[2.0**-40],
                          bounds=free)
        crosses = on_slab.status == 0 and on_slab.x[d] > 1e-6
        width = 0.0 if w == 0 else 2.0**w
        A, b = np.vstack([A, a, -a]), np.concatenate([b, [2.0**-40, width - 2.0**-40]])
    rows = [([Fraction(float(v)) for v in ai], Fraction(float(bi))) for ai, bi in zip(A, b)]
    ball = _exact_side(rows, d, 0.0)
    if w is not None:
        if w == 0:
            assert ball is None
        elif crosses:
            assert ball is not None and ball[1] <= 2.0**-46 / np.linalg.norm(a) * (1 + 1e-9)
    elif depth > 1e-9:
        assert ball is not None and ball[1] > 0.5 * depth
    elif depth < -1e-9:
        assert ball is None
    if ball is not None:
        c, r = ball
        for a_, bi in rows:  # the ball lies inside every row, exactly
            slack = bi - sum((ai * Fraction(float(ci)) for ai, ci in zip(a_, c)), Fraction(0))
            assert slack >= Fraction(r) * _l2_up(a_)


def _l2_up(a) -> Fraction:
    """A rational upper bound on the Euclidean norm of ``a``."""
    from math import isqrt

    s = sum(v * v for v in a)
    return Fraction(isqrt(int(s * 2**200)) + 1, 2**100)


@pytest.mark.parametrize("bias", [0.7, -0.7, 0.0])
def test_a_pruned_filter_before_a_max_pool_ties_exactly(bias):
    # review 15: a fully pruned filter with a positive bias puts the same constant relu(0.7) in every slot
    # of its max-pool windows (argmax = the first slot everywhere); the difference's float error bound kept
    # it from reading as a tie, its zero slope counted as undecided and the box raised (_UncertainSlope)
    torch.manual_seed(3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_shape = (1, 2)
            self.c = nn.Conv1d(1, 2, 2, padding=1)
            self.p = nn.MaxPool1d(2, 1)
            self.fc = nn.Linear(4, 1)
            with torch.no_grad():
                self.c.bias[0] = bias

        def forward(self, x):
            return self.fc(self.p(torch.relu(self.c(x))).flatten(1))

    net = Net().double()
    mask = torch.ones(2, 1, 2, dtype=torch.bool)
    mask[0] = False
    res = _same_as_slice(net, [-1.0, -1.0], [1.0, 1.0], masks={"c.weight": mask}, pool=True)
    assert res.count > 1
