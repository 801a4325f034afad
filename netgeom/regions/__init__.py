"""Linear regions: activation patterns, exact counts (segment, slice, box), bounds, density allocation."""

from ._graph_segment import CloseCallError
from .allocation import AllocationResult, allocate_densities
from .bounds import (
    RANK_MODELS,
    BoundsResult,
    BoundTooLargeError,
    SparseBoundResult,
    bounded_layers,
    bounds,
    int_log10,
    montufar_lower_bound,
    product_bound,
    rank_distribution,
    serra_bound,
    serra_bound_log10,
    sparse_bound,
    zaslavsky_bound,
)
from .exact import (
    BoxRegionsResult,
    SegmentRegionsResult,
    SliceRegionsResult,
    TooManyRegionsError,
    plane_through,
    regions_in_box,
    regions_on_segment,
    regions_on_slice,
)
from .patterns import PatternCountResult, count_patterns, pattern_layers

__all__ = [
    "BoxRegionsResult",
    "PatternCountResult",
    "SegmentRegionsResult",
    "SliceRegionsResult",
    "TooManyRegionsError",
    "CloseCallError",
    "count_patterns",
    "pattern_layers",
    "plane_through",
    "regions_in_box",
    "regions_on_segment",
    "regions_on_slice",
    "RANK_MODELS",
    "AllocationResult",
    "BoundsResult",
    "BoundTooLargeError",
    "bounded_layers",
    "serra_bound_log10",
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
