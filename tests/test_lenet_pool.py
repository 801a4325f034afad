"""The compiled max-pool pass over windows on a regular grid (``_graph_kernel.pool_grid``, its 2x2 stride-2
specialisation ``_pool_22``) against the index-table pass (``pool_top2``): the same outputs, bit for bit,
including ties, exact (zero-error) entries, NaN / overflowed rows, overlapping windows and leftover
columns; and the engine's patterns through it equal the rational ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _engines import exact_pattern_rows
from torch import nn

from netgeom import trace
from netgeom.nets import certified
from netgeom.nets._graph_kernel import pool_grid, pool_top2
from netgeom.nets.certified import pattern_nodes


def _grid(C, H, W, kh, kw, sh, sw):
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    offs = [(a, b) for a in range(kh) for b in range(kw)]
    win = torch.tensor(
        [
            [c * H * W + (ho * sh + a) * W + wo * sw + b for a, b in offs]
            for c in range(C)
            for ho in range(Ho)
            for wo in range(Wo)
        ]
    )
    return ((C, H, W), offs, (sh, sw), (Ho, Wo)), win


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "geom",
    [
        (6, 24, 24, 2, 2, 2, 2),  # LeNet's first pool: _pool_22
        (3, 7, 9, 3, 3, 2, 2),  # overlapping windows, a leftover row and column
        (2, 8, 8, 2, 2, 1, 1),  # stride 1
        (4, 9, 11, 3, 2, 3, 2),
        (1, 6, 6, 1, 1, 1, 1),  # one slot
    ],
)
def test_pool_grid_equals_the_index_table_pass(geom, dtype):
    grid, win = _grid(*geom)
    C, H, W = grid[0]
    g = torch.Generator().manual_seed(sum(geom))
    B, n = 12, C * H * W
    x = torch.randn(B, n, generator=g, dtype=dtype).relu()
    x[:4] = (x[:4] * 4).round() / 4  # ties, and windows of equal entries
    e = torch.rand(B, n, generator=g, dtype=dtype) * 1e-3 * (torch.rand(B, n, generator=g) < 0.7)
    e[4] = 0  # a row of exact entries: decided by its values, ties included
    x[5, n // 2], x[6, 0], x[7, n - 1] = float("nan"), float("inf"), -float("inf")
    e[8, 3] = float("nan")
    x[9] = -x[9]  # negative entries (a pool that does not read a relu)
    u = torch.finfo(dtype).eps / 2
    ref = pool_top2(x, e, win, u)
    got = pool_grid(x, e, grid, u)
    assert got[1].dtype == torch.uint8
    for a, b in zip(ref, got[:4]):
        assert (
            torch.equal(a.long(), b.long())
            if not a.is_floating_point()
            else torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
        )
    # the row flags: NaN or infinite values, NaN errors (-inf too: not padding here)
    assert got[4].tolist() == [False] * 5 + [True] * 4 + [False] * 3
    assert not bool(got[3][5:9].any()) and bool(torch.isinf(got[2][5:9]).all())
    # the test decides something (not vacuous) and, past one slot, leaves ties open
    assert bool(got[3].any()) and (len(grid[1]) == 1 or not bool(got[3][:4].all()))


def test_pool_grid_patterns_equal_rational_ones():
    """A LeNet-shaped net on coarse inputs (tied windows: zeros after the relu, equal values) and random
    ones: the engine with the grid pass (both pools 2x2 stride 2), the engine with the index-table pass and
    the rational reference give the same patterns."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 3),
        nn.ReLU(),
    ).eval()
    g = trace(net, input_shape=(1, 10, 10))
    x = torch.rand(40, 100, generator=torch.Generator().manual_seed(0))
    x[:16] = (x[:16] * 2).round() / 2
    x[16:20] = 0.0
    ref = exact_pattern_rows(g, x)
    for grid in (True, False):
        engines = {"crude32": False}
        if not grid:  # (the same graph through the index-table pass: no grid views)
            for dt in (torch.float32, torch.float64):
                eng = engines[dt] = certified._Engine(g, dt, "cpu")
                for i, ops in eng.ops.items():
                    if g.nodes[i].op == "maxpool":
                        assert ops[4] is not None
                        ops[4] = None
        dec, _ = certified.graph_patterns(g, x, _engines=engines)
        got = np.concatenate([dec[n.index].long().numpy().reshape(len(x), -1) for n in pattern_nodes(g)], 1)
        assert np.array_equal(got, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_window_sure_pairs_equals_the_torch_test(dtype):
    """The compiled per-entry window test reads the pairs in place and decides exactly as ``_window_sure``
    on gathered blocks: ties (first maximal wins), exact entries, padding, NaN / inf entries and errors."""
    from netgeom.nets._graph_kernel import window_sure_pairs

    g = torch.Generator().manual_seed(1)
    B, n, size, k = 7, 40, 30, 4
    x = (torch.randn(B, n, generator=g, dtype=dtype) * 4).round() / 4  # many ties
    e = torch.rand(B, n, generator=g, dtype=dtype) * 0.3 * (torch.rand(B, n, generator=g) < 0.6)
    x[0, 3], x[1, 5], x[2, 7], e[3, 9] = float("nan"), float("inf"), -float("inf"), float("nan")
    e[4, 11] = float("inf")
    windows = torch.randint(-1, n, (size, k), generator=g)  # -1: padding
    windows[:, 0] = torch.randint(0, n, (size,), generator=g)  # (a window has a real entry)
    # the first maximal position of each window, as the pool passes give it (padding never the max)
    xp = torch.cat([x, x.new_full((B, 1), -float("inf"))], 1)
    ep = torch.cat([e, e.new_zeros((B, 1))], 1)
    cols = torch.where(windows < 0, n, windows)
    pos = torch.argmax(xp[:, cols], dim=2).to(torch.uint8)  # (B, size); NaN rows: any position
    rr, ww = torch.meshgrid(torch.arange(B), torch.arange(size), indexing="ij")
    rr, ww = rr.flatten(), ww.flatten()
    u = torch.finfo(dtype).eps / 2
    ref = certified._window_sure(
        xp[rr[:, None], cols[ww]], ep[rr[:, None], cols[ww]], pos[rr, ww, None].long(), u
    )
    got = window_sure_pairs(x, e, windows, rr, ww, pos, u)
    assert torch.equal(got, ref)
    assert 0 < int(ref.sum()) < len(ref)  # (both outcomes occur)
