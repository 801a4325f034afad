"""Seeded model builders stay reproducible when threads build models at the same time."""

from concurrent.futures import ThreadPoolExecutor

import torch

import netgeom as ng


def _weights(seed: int) -> torch.Tensor:
    net = ng.mlp(20, [64, 64], 5, seed=seed)
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_threaded_builds_equal_serial_builds():
    seeds = list(range(8)) * 4
    serial = {s: _weights(s) for s in set(seeds)}
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(_weights, seeds))
    for s, w in zip(seeds, threaded):
        assert torch.equal(w, serial[s]), f"seed {s} built different weights under threads"
