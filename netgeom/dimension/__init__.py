"""Intrinsic dimension: exact shared kNN, MLE (Levina–Bickel, MacKay–Ghahramani), TwoNN, local PCA,
scale sweeps, hidden layers."""

from .estimators import (
    MLE,
    DimensionResult,
    LocalPCA,
    TwoNN,
    intrinsic_dimension,
    local_pca_spectra,
    mle_dimension_pw,
    pca_rule_dimension,
)
from .neighbors import NeighborGraph, deduplicate, nearest_neighbors
from .representations import RepresentationDimensionResult, demo_section, representation_dimension
from .scale import ScaleSweepResult, id_scale_sweep

__all__ = [
    "NeighborGraph",
    "nearest_neighbors",
    "deduplicate",
    "MLE",
    "TwoNN",
    "LocalPCA",
    "DimensionResult",
    "intrinsic_dimension",
    "mle_dimension_pw",
    "pca_rule_dimension",
    "local_pca_spectra",
    "id_scale_sweep",
    "ScaleSweepResult",
    "representation_dimension",
    "RepresentationDimensionResult",
    "demo_section",
]
