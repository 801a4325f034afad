"""Intrinsic dimension: exact shared kNN, MLE (Levina–Bickel, MacKay–Ghahramani), TwoNN, hidden layers."""

from .estimators import MLE, DimensionResult, TwoNN, intrinsic_dimension, mle_dimension_pw
from .neighbors import NeighborGraph, deduplicate, nearest_neighbors
from .representations import RepresentationDimensionResult, demo_section, representation_dimension

__all__ = [
    "NeighborGraph",
    "nearest_neighbors",
    "deduplicate",
    "MLE",
    "TwoNN",
    "DimensionResult",
    "intrinsic_dimension",
    "mle_dimension_pw",
    "representation_dimension",
    "RepresentationDimensionResult",
    "demo_section",
]
