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
