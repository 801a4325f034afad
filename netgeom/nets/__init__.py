"""Reading networks: the traced piecewise-linear graph, its chain view, and netgeom's model builders."""

from .graph import SUPPORTED_LAYERS, PLGraph, PLNode, UnsupportedLayerError, trace
from .layers import AffineLayer, affine_layers, forward_affine, layer_widths
from .models import (
    MODEL_NAMES,
    VGG_CONFIGS,
    build_model,
    lenet5,
    lenet_300_100,
    mlp,
    resnet20,
    small_convnet,
    vgg,
)

__all__ = [
    "AffineLayer",
    "MODEL_NAMES",
    "PLGraph",
    "PLNode",
    "SUPPORTED_LAYERS",
    "UnsupportedLayerError",
    "affine_layers",
    "build_model",
    "forward_affine",
    "layer_widths",
    "lenet5",
    "lenet_300_100",
    "mlp",
    "small_convnet",
    "trace",
    "resnet20",
    "vgg",
    "VGG_CONFIGS",
]
