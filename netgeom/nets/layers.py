"""The chain view of a traced network: a list of affine maps with ReLU-type activations between them.

:func:`affine_layers` is :func:`netgeom.nets.trace` followed by :meth:`PLGraph.layers`: the network read as
``x -> W x + b`` maps on the flattened input, in float64, one per weight tensor:

* ``Linear``, ``Conv1d``, ``Conv2d`` carry weights (the *parametrised* module of a group; masks apply here);
* ``BatchNorm1d/2d`` (eval), ``AvgPool1d/2d``, ``AdaptiveAvgPool1d/2d`` are affine and are folded into the
  group that contains them; ``Flatten``/``view``/``reshape``, ``Dropout`` and ``Identity`` change nothing;
* ``ReLU`` and ``LeakyReLU`` close a group and are recorded as its activation; one on the input or on
  another activation gets a weight-free identity group of its own (``param_name`` None).

Two parametrised modules with no activation between them become two layers, the first with the identity
activation, so that each weight tensor corresponds to exactly one :class:`AffineLayer`. A network with a
max-pooling, a residual addition or a concatenation is not a chain: read it with :func:`netgeom.nets.trace`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._validation import check_bool, check_tensor
from .graph import trace

__all__ = ["AffineLayer", "affine_layers", "forward_affine", "layer_widths"]


@dataclasses.dataclass(eq=False)
class AffineLayer:
    """One affine map ``z = W x + b`` followed by an activation, in float64.

    Attributes
    ----------
    name : module path of the parametrised module (``"0"``, ``"features.3"``), or of the first module of
        a group without weights.
    param_name : name of the weight parameter in the model (``"0.weight"``), the key used by ``Masks``;
        ``None`` for a weight-free group (e.g. a lone BatchNorm).
    weight : ``(n_out, n_in)`` effective matrix on the flattened input, masked and with BatchNorm/pooling
        folded in.
    bias : ``(n_out,)``.
    activation : ``"relu"``, ``"leaky_relu"`` or ``"identity"``; ``negative_slope`` is 0, the leak, or 1.
    kernel : the masked parameter tensor in its own shape (``(out, in)`` or ``(C_out, C_in / groups, *k)``),
        with the scale of a BatchNorm that directly follows it folded in when that BatchNorm's channels are
        the layer's output features (a convolution's output channels, a Linear's outputs on a flat input);
        otherwise (a reshape between them, a BatchNorm1d(C) after a Linear on the last axis of ``(C, L)``
        samples) the parameter unscaled, the BatchNorm being only in ``weight``. For a ``Linear`` on a flat
        input without pooling before it or a BatchNorm after it this is ``weight``.
    mask : boolean tensor of ``kernel``'s shape, or ``None`` when the parameter is unmasked.
    kind : ``"linear"``, ``"conv1d"``, ``"conv2d"`` or ``"affine"``.
    in_shape, out_shape : shapes of one sample before and after the map (no batch axis).
    kernel_in_shape : shape of one sample as the parametrised module itself receives it (after the
        weight-free operations folded in front of it and a reshape); ``in_shape`` when nothing comes before
        it, ``None`` for a weight-free group. A convolution's input channels are ``kernel_in_shape[0]``.
    """

    name: str
    param_name: str | None
    weight: torch.Tensor
    bias: torch.Tensor
    activation: str
    negative_slope: float
    kernel: torch.Tensor | None
    mask: torch.Tensor | None
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_in_shape: tuple[int, ...] | None = None

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]

    @property
    def density(self) -> float:
        """Fraction of the parameter's weights kept by the mask (1.0 when unmasked)."""
        if self.mask is None:
            return 1.0
        return float(self.mask.sum()) / self.mask.numel()

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        if self.activation == "identity":
            return z
        return torch.where(z > 0, z, z * self.negative_slope)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.pre_activation(x))

    def __repr__(self) -> str:
        return (
            f"AffineLayer(name={self.name!r}, kind={self.kind}, {self.n_in}->{self.n_out}, "
            f"activation={self.activation}, density={self.density:.4g})"
        )


def affine_layers(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None = None,
    *,
    input_shape: Sequence[int] | None = None,
    max_entries: int = 2**27,
) -> list[AffineLayer]:
    """Read a piecewise-affine network as a list of :class:`AffineLayer` in forward order.

    BatchNorm and Dropout are read with eval semantics (running statistics, no dropout) whatever the
    model's mode; a model in training mode that has such modules gets a warning saying so.

    Parameters
    ----------
    model : an ``nn.Sequential`` (possibly nested) of supported layers; see :data:`SUPPORTED_LAYERS`.
    masks : a ``Masks`` (or any mapping parameter name -> boolean tensor); masked weights are removed.
    input_shape : shape of one input sample without the batch axis; needed when the model starts with a
        convolution. Defaults to ``model.input_shape`` when the model has that attribute.
    max_entries : largest dense matrix (``n_out * n_in`` entries, float64) one layer may unroll to; a
        convolution on a large input exceeds it and raises instead of exhausting memory.

    Example
    -------
    >>> from netgeom.nets import mlp
    >>> net = mlp(4, [8, 8], 3, seed=0)
    >>> [(l.n_in, l.n_out, l.activation) for l in affine_layers(net)]
    [(4, 8, 'relu'), (8, 8, 'relu'), (8, 3, 'identity')]
    """
    return trace(model, masks, input_shape=input_shape, max_entries=max_entries).layers()


def forward_affine(layers: Sequence[AffineLayer], x: torch.Tensor, *, return_pre: bool = False):
    """Evaluate the network given by ``layers`` on a batch ``x`` (flattened per sample), in float64.

    With ``return_pre=True`` also returns the list of pre-activations of every layer.
    """
    return_pre = check_bool(return_pre, "return_pre")
    x = check_tensor(x, "x", dtype=torch.float64)
    x = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # (an empty batch has no -1 to infer)
    pres = []
    for layer in layers:
        z = layer.pre_activation(x)
        pres.append(z)
        x = layer.activate(z)
    return (x, pres) if return_pre else x


def layer_widths(layers: Sequence[AffineLayer]) -> list[int]:
    """``[n_0, n_1, …, n_L]``: input dimension followed by each layer's output dimension."""
    return [layers[0].n_in] + [layer.n_out for layer in layers]
