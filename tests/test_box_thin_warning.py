"""regions_in_box says so when its count is not certified: sides of cuts thinner than float64 can place
their walls are dropped and counted (``n_thin``), with a warning naming the cause, never silently."""

from __future__ import annotations

import warnings

import pytest
from torch import nn

from netgeom import mlp, regions_in_box, regions_on_slice


def _bias_free():
    net = mlp(2, [8, 8], 1, seed=0).double()
    for m in net:
        if isinstance(m, nn.Linear):
            m.bias = None
    return net


def test_an_uncertified_count_warns_and_a_certified_one_does_not():
    with pytest.warns(RuntimeWarning, match="not certified"):
        res = regions_in_box(_bias_free(), [-1, -1], [1, 1], verbose=False)  # every hyperplane meets at 0
    assert res.n_thin > 0
    assert res.count == regions_on_slice(_bias_free(), [0, 0], [1, 0], [0, 1], box=(-1, 1, -1, 1)).count
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = regions_in_box(_bias_free(), [0.25, 0.5], [1, 1], verbose=False)  # 0 outside the box
        net = mlp(2, [8, 8], 1, seed=0).double()
        res2 = regions_in_box(net, [-1, -1], [1, 1], verbose=False)
    assert res.n_thin == 0 and res2.n_thin == 0


def _cancelling(delta: float):
    """Unit k = 0.1 (u1 - u2) with u1, u2 ~ 2^27 (a large cancellation: its error bound is ~3e-7) and a
    clean unit j parallel to it, delta away: three regions, one of them a strip |delta| wide."""
    from fractions import Fraction

    import torch

    M = 2.0**27
    L1, L2 = nn.Linear(2, 3).double(), nn.Linear(3, 2).double()
    with torch.no_grad():
        L1.weight.copy_(torch.tensor([[M, 0], [M, 1], [0, 1]], dtype=torch.float64))
        L1.bias.copy_(torch.tensor([M, M - 0.3, 2.0], dtype=torch.float64))
        L2.weight.copy_(torch.tensor([[0.1, -0.1, 0], [0, 0, 1.0]], dtype=torch.float64))
        tk = float(Fraction(M) - Fraction(M - 0.3))
        L2.bias.copy_(torch.tensor([0.0, -(2 + tk + delta)], dtype=torch.float64))
    return nn.Sequential(L1, nn.ReLU(), L2, nn.ReLU()).double()


@pytest.mark.parametrize("delta", [3e-8, 3e-9, -1e-9, -3e-8])
def test_walls_within_their_error_bound_never_give_a_silent_count(delta):
    """Found by review: a side whose depth was below the unit's own error bound was dropped as empty (2
    regions, n_thin 0), and a piece straddling an earlier wall within its bound doubled a pattern. Now
    the answer is the exact slice's, or uncertified with a warning, or an error naming the cause."""
    net = _cancelling(delta)
    lo, hi = [-0.5, -1.0], [0.5, 1.0]
    want = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(lo[0], hi[0], lo[1], hi[1]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = regions_in_box(net, lo, hi, verbose=False)
    except RuntimeError as exc:
        assert "same activation pattern" in str(exc)
        return
    same = {bytes(p) for p in res.patterns} == {bytes(p) for p in want.patterns} and res.count == want.count
    assert same or (res.n_thin > 0 and any("not certified" in str(w.message) for w in caught))
