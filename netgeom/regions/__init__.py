"""Linear regions: activation patterns, exact counts (segment, slice, box), bounds, density allocation."""

from .allocation import AllocationResult, allocate_densities
from .bounds import (
    RANK_MODELS,
    BoundsResult,
    SparseBoundResult,
    bounds,
    int_log10,
    montufar_lower_bound,
    product_bound,
    rank_distribution,
    serra_bound,
    sparse_bound,
    zaslavsky_bound,
)

__all__ = [
    "RANK_MODELS",
    "AllocationResult",
    "BoundsResult",
    "SparseBoundResult",
    "allocate_densities",
    "bounds",
    "int_log10",
    "montufar_lower_bound",
    "product_bound",
    "rank_distribution",
    "serra_bound",
    "sparse_bound",
    "zaslavsky_bound",
]
