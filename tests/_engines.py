"""The graph pattern engine's four engines (float32 / float64, full / crude convolution bounds) with the
compiled kernels on or off, for tests that run ``graph_patterns`` on every path."""

from __future__ import annotations

import torch

from netgeom.nets import certified


def engines(g, kernels: bool) -> dict:
    out: dict = {}
    for key, dtype, crude in (
        (torch.float32, torch.float32, False),
        ((torch.float32, "crude"), torch.float32, True),
        (torch.float64, torch.float64, False),
        ((torch.float64, "crude"), torch.float64, True),
    ):
        out[key] = certified._Engine(g, dtype, "cpu", crude=crude)
        out[key].kernels = kernels
    return out


def exact_pattern_rows(g, X):
    """Every input's pattern bits (the graph's pattern nodes, concatenated) from the rational forward."""
    import numpy as np

    from netgeom.nets.certified import pattern_nodes

    keep = {n.index for n in g.nodes if n.op != "output"}
    rows = []
    for x in X.double():
        ex = certified._exact_patterns(g, x, keep)
        rows.append(np.concatenate([np.asarray(ex[n.index]) for n in pattern_nodes(g)]))
    return np.array(rows)
