"""netgeom: geometry and topology of pruned ReLU networks."""

from .nets import (
    MODEL_NAMES,
    SUPPORTED_LAYERS,
    AffineLayer,
    UnsupportedLayerError,
    affine_layers,
    build_model,
    forward_affine,
    layer_widths,
    lenet5,
    lenet_300_100,
    mlp,
    small_convnet,
)
from .pruning import Masks, prunable_parameters
from .results import Result

__version__ = "0.1.0"

__all__ = [
    "AffineLayer",
    "MODEL_NAMES",
    "Masks",
    "Result",
    "SUPPORTED_LAYERS",
    "UnsupportedLayerError",
    "affine_layers",
    "build_model",
    "forward_affine",
    "layer_widths",
    "lenet5",
    "lenet_300_100",
    "mlp",
    "prunable_parameters",
    "small_convnet",
]
