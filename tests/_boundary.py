"""Inputs within float64 precision of activation-pattern boundaries, shared by the exactness tests of
``count_patterns``'s engines: bisection on the float64 forward of a traced graph along random segments."""

from collections.abc import Callable

import torch


def pattern_of(g) -> Callable[[torch.Tensor], torch.Tensor]:
    """One input's pattern on the float64 forward of ``g``: every relu's signs, every max-pool's argmax."""

    def pat(x: torch.Tensor) -> torch.Tensor:
        vals = g.values(x[None])
        out = []
        for node in g.nodes:
            if node.op == "relu":
                out.append((vals[node.inputs[0]][0] > 0).double())
            elif node.op == "maxpool":
                out.append(node.pool(vals[node.inputs[0]], return_indices=True)[1][0].double())
        return torch.cat(out)

    return pat


def boundary_points(
    g,
    segment: Callable[[], tuple[torch.Tensor, torch.Tensor]],
    n_seg: int,
    offsets=(1e-5, 1e-7, 1e-9),
    below: bool = False,
) -> list[torch.Tensor]:
    """For each of ``n_seg`` segments ``segment()`` whose ends have different patterns: the first point
    past the boundary found by 60 bisection steps, its next float64 neighbour upwards (and downwards with
    ``below``), the last point before it, and points ``offsets`` away on either side along the segment."""
    pat = pattern_of(g)
    pts = []
    for _ in range(n_seg):
        a, b = segment()
        pa = pat(a)
        if torch.equal(pa, pat(b)):
            continue
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if torch.equal(pat(a + mid * (b - a)), pa):
                lo = mid
            else:
                hi = mid
        x = a + hi * (b - a)
        pts += [x, torch.nextafter(x, x + 1)] + ([torch.nextafter(x, x - 1)] if below else [])
        pts += [a + lo * (b - a)]
        pts += [a + (hi + s * d) * (b - a) for d in offsets for s in (-1, 1)]
    return pts
