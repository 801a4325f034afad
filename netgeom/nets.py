"""Networks as sequences of affine maps with ReLU-type activations between them.

:func:`affine_layers` is the one path by which every analysis in netgeom reads a network. It walks a
``torch.nn.Sequential`` (nested containers allowed) in forward order and groups the modules between two
activations into one affine map ``x -> W x + b`` on the flattened input, in float64:

* ``Linear``, ``Conv1d``, ``Conv2d`` carry weights (the *parametrised* module of a group; masks apply here);
* ``BatchNorm1d/2d`` (eval), ``AvgPool1d/2d``, ``Flatten``, ``Unflatten`` are affine and are folded into the
  group that contains them;
* ``Dropout`` and ``Identity`` are skipped (eval semantics);
* ``ReLU`` and ``LeakyReLU`` close a group and are recorded as its activation.

Two parametrised modules with no activation between them become two layers, the first with the identity
activation, so that each weight tensor corresponds to exactly one :class:`AffineLayer`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._validation import check_int, check_masks, check_tensor, check_widths

__all__ = [
    "AffineLayer",
    "affine_layers",
    "forward_affine",
    "layer_widths",
    "mlp",
    "lenet_300_100",
    "lenet5",
    "small_convnet",
    "build_model",
    "MODEL_NAMES",
    "SUPPORTED_LAYERS",
    "UnsupportedLayerError",
]

_PARAMETRISED = (nn.Linear, nn.Conv1d, nn.Conv2d)
_FOLDED = (nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool1d, nn.AvgPool2d, nn.Flatten, nn.Unflatten)
_SKIPPED = (nn.Dropout, nn.Identity)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)
_MODE_DEPENDENT = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)
SUPPORTED_LAYERS: tuple[str, ...] = tuple(
    c.__name__ for c in _PARAMETRISED + _FOLDED + _SKIPPED + _ACTIVATIONS + (nn.Sequential,)
)


class UnsupportedLayerError(TypeError):
    """A module that is not piecewise-affine (or whose forward order is unknown)."""


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
    kernel : the masked parameter tensor in its own shape (``(out, in)`` or ``(C_out, C_in, *k)``), with a
        following BatchNorm's scale folded in. For a ``Linear`` without pooling before it this is ``weight``.
    mask : boolean tensor of ``kernel``'s shape, or ``None`` when the parameter is unmasked.
    kind : ``"linear"``, ``"conv1d"``, ``"conv2d"`` or ``"affine"``.
    in_shape, out_shape : shapes of one sample before and after the map (no batch axis).
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


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Modules in forward order; only containers whose forward is ``Sequential.forward`` are opened."""
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedLayerError(
                f"module '{prefix or '<root>'}' ({type(module).__name__}) overrides Sequential.forward, so "
                "its "
                "order of operations is unknown; express it as a plain nn.Sequential of supported layers: "
                + ", ".join(SUPPORTED_LAYERS)
            )
        out: list[tuple[str, nn.Module]] = []
        for child_name, child in module.named_children():
            out.extend(_leaves(child, f"{prefix}.{child_name}" if prefix else child_name))
        return out
    supported = _PARAMETRISED + _FOLDED + _SKIPPED + _ACTIVATIONS
    if type(module) not in supported:
        why = "is not piecewise-affine" if not list(module.children()) else "has its own forward"
        raise UnsupportedLayerError(
            f"layer '{prefix or '<root>'}' ({type(module).__name__}) {why}; supported: "
            + ", ".join(SUPPORTED_LAYERS)
        )
    return [(prefix, module)]


def _masked_weight(name: str, module: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> tuple:
    pname = f"{name}.weight" if name else "weight"
    w = module.weight.detach().to(torch.float64)
    mask = None
    if masks is not None and pname in masks:
        mask = torch.as_tensor(masks[pname]).to(torch.bool).cpu()
        if mask.shape != w.shape:
            raise ValueError(
                f"mask for '{pname}' has shape {tuple(mask.shape)}, but the weight has shape {tuple(w.shape)}"
            )
        w = w * mask.to(w.device)
    return pname, w, mask


def _apply_module(
    m: nn.Module, x: torch.Tensor, weight: torch.Tensor | None, with_bias: bool
) -> torch.Tensor:
    """Apply one affine module in float64 to a batch ``x`` (bias dropped when ``with_bias`` is False)."""
    F = torch.nn.functional
    if isinstance(m, nn.Linear):
        return F.linear(x, weight, m.bias.detach().double() if (with_bias and m.bias is not None) else None)
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            raise UnsupportedLayerError(
                f"{type(m).__name__} with padding_mode={m.padding_mode!r} is not supported; use 'zeros'"
            )
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        b = m.bias.detach().double() if (with_bias and m.bias is not None) else None
        return conv(x, weight, b, m.stride, m.padding, m.dilation, m.groups)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None:
            raise UnsupportedLayerError(f"{type(m).__name__} without running statistics cannot be folded")
        scale = (m.weight.detach().double() if m.affine else 1.0) / torch.sqrt(m.running_var.double() + m.eps)
        shift = (m.bias.detach().double() if m.affine else 0.0) - m.running_mean.double() * scale
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = scale.reshape(shape) if torch.is_tensor(scale) else scale
        out = x * scale
        if with_bias:
            out = out + (shift.reshape(shape) if torch.is_tensor(shift) else shift)
        return out
    return m.double()(x) if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.Flatten, nn.Unflatten)) else x


def _sample_shape(
    modules: list[tuple[str, nn.Module]], input_shape: tuple[int, ...] | None
) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(check_int(s, "input_shape entry", minimum=1) for s in input_shape)
    for _, m in modules:
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.AvgPool1d, nn.AvgPool2d, nn.Unflatten)):
            break
    raise ValueError(
        "the model starts with a convolution or pooling layer, so the input shape is needed: pass "
        "input_shape=(C, H, W) (or set model.input_shape)"
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
    >>> net = mlp(4, [8, 8], 3, seed=0)
    >>> [(l.n_in, l.n_out, l.activation) for l in affine_layers(net)]
    [(4, 8, 'relu'), (8, 8, 'relu'), (8, 3, 'identity')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modules = _leaves(model)
    if not any(isinstance(m, _PARAMETRISED) for _, m in modules):
        raise ValueError(f"model ({type(model).__name__}) has no Linear or Conv layer: nothing to analyse")
    masks = check_masks(masks, model, allow_empty=True)  # one validation path for every mask form
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    shape = _sample_shape(modules, tuple(input_shape) if input_shape is not None else None)

    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"model has non-finite values (NaN or inf) in '{pname}'")
    modal = [n for n, m in modules if m.training and isinstance(m, _MODE_DEPENDENT)]
    if modal:
        warnings.warn(
            f"model is in training mode; {modal} are read with eval semantics (BatchNorm running "
            "statistics, no dropout), so the affine maps are those of model.eval()",
            stacklevel=2,
        )
    max_entries = check_int(max_entries, "max_entries", minimum=1)

    groups: list[dict[str, Any]] = []
    current: dict[str, Any] = {"ops": [], "param": None}
    for name, m in modules:
        if isinstance(m, _SKIPPED):
            continue
        if isinstance(m, _ACTIVATIONS):
            if not current["ops"]:
                raise UnsupportedLayerError(
                    f"activation '{name}' ({type(m).__name__}) follows another activation or starts the "
                    "network; netgeom expects affine maps between activations"
                )
            current["act"] = m
            groups.append(current)
            current = {"ops": [], "param": None}
            continue
        if isinstance(m, _PARAMETRISED) and current["param"] is not None:
            groups.append(current)
            current = {"ops": [], "param": None}
        if isinstance(m, _PARAMETRISED):
            current["param"] = (name, m, len(current["ops"]))
        current.setdefault("first", name)
        current["ops"].append((name, m))
    if current["ops"]:
        groups.append(current)

    layers = []
    with torch.no_grad():
        for g in groups:
            layer = _group_to_layer(g, shape, masks, max_entries)
            layers.append(layer)
            shape = layer.out_shape
    return layers


def _group_to_layer(g: dict[str, Any], in_shape: tuple[int, ...], masks, max_entries: int) -> AffineLayer:
    ops = g["ops"]
    act = g.get("act")
    if act is None:
        activation, slope = "identity", 1.0
    elif isinstance(act, nn.LeakyReLU):
        activation, slope = "leaky_relu", float(act.negative_slope)
    else:
        activation, slope = "relu", 0.0
    weights: dict[int, torch.Tensor] = {}
    pname = mask = kernel = None
    kind = "affine"
    if g["param"] is not None:
        pname_name, pm, idx = g["param"]
        pname, w, mask = _masked_weight(pname_name, pm, masks)
        weights[idx] = w
        kind = type(pm).__name__.lower()
        kind = "linear" if kind == "linear" else kind
    n_in = math.prod(in_shape)

    def run(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        for i, (name, m) in enumerate(ops):
            try:
                x = _apply_module(m, x, weights.get(i), with_bias)
            except RuntimeError as exc:
                raise ValueError(
                    f"layer '{name}' ({type(m).__name__}) cannot take an input of shape "
                    f"{tuple(x.shape[1:])}: "
                    f"{exc}"
                ) from None
        return x

    only_linear = len(ops) == 1 and isinstance(ops[0][1], nn.Linear) and len(in_shape) == 1
    if only_linear:
        m = ops[0][1]
        W = weights[0]
        if W.shape[1] != n_in:
            raise ValueError(f"layer '{ops[0][0]}' (Linear) expects {W.shape[1]} inputs but receives {n_in}")
        b = m.bias.detach().double() if m.bias is not None else torch.zeros(W.shape[0], dtype=torch.float64)
        out_shape: tuple[int, ...] = (W.shape[0],)
    else:
        dev = next(iter(weights.values())).device if weights else torch.device("cpu")
        zero = torch.zeros((1, *in_shape), dtype=torch.float64, device=dev)
        b_out = run(zero, True)
        out_shape = tuple(b_out.shape[1:])
        n_out = math.prod(out_shape)
        if n_in * n_out > max_entries:
            raise ValueError(
                f"layer '{g['first']}' unrolls to a dense {n_out} x {n_in} matrix ({n_in * n_out:,} entries, "
                f"over max_entries={max_entries:,}); analyse a smaller input (crop or downsample) or raise "
                "max_entries if the memory is there"
            )
        # push the identity basis through the group in chunks, so the intermediate activations of a
        # convolution stay within about the size of the result
        W = torch.empty((n_out, n_in), dtype=torch.float64, device=dev)
        chunk = max(1, min(n_in, max_entries // max(n_out, 1), 4096))
        for i in range(0, n_in, chunk):
            j = min(n_in, i + chunk)
            basis = torch.zeros((j - i, n_in), dtype=torch.float64, device=dev)
            basis[torch.arange(j - i), torch.arange(i, j)] = 1.0
            W[:, i:j] = run(basis.reshape(j - i, *in_shape), False).reshape(j - i, -1).T
        b = b_out.reshape(-1)
    if g["param"] is not None:
        # The kernel with the scale of a BatchNorm that directly follows it folded in (channel graphs use it).
        kernel = weights[g["param"][2]]
        nxt = ops[g["param"][2] + 1][1] if g["param"][2] + 1 < len(ops) else None
        if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = (nxt.weight.detach().double() if nxt.affine else 1.0) / torch.sqrt(
                nxt.running_var.double() + nxt.eps
            )
            kernel = kernel * scale.reshape((-1,) + (1,) * (kernel.ndim - 1))
        if only_linear:
            W = kernel
    return AffineLayer(
        name=g["param"][0] if g["param"] is not None else g["first"],
        param_name=pname,
        weight=W.cpu(),
        bias=b.cpu(),
        activation=activation,
        negative_slope=slope,
        kernel=kernel.cpu() if kernel is not None else None,
        mask=mask,
        kind=kind,
        in_shape=tuple(in_shape),
        out_shape=out_shape,
    )


def forward_affine(layers: Sequence[AffineLayer], x: torch.Tensor, *, return_pre: bool = False):
    """Evaluate the network given by ``layers`` on a batch ``x`` (flattened per sample), in float64.

    With ``return_pre=True`` also returns the list of pre-activations of every layer.
    """
    x = check_tensor(x, "x", dtype=torch.float64)
    x = x.reshape(x.shape[0], -1)
    pres = []
    for layer in layers:
        z = layer.pre_activation(x)
        pres.append(z)
        x = layer.activate(z)
    return (x, pres) if return_pre else x


def layer_widths(layers: Sequence[AffineLayer]) -> list[int]:
    """``[n_0, n_1, …, n_L]``: input dimension followed by each layer's output dimension."""
    return [layers[0].n_in] + [layer.n_out for layer in layers]


# ----------------------------------------------------------------------------------------------- models
def _seeded(seed: int | None):
    if seed is None:
        raise ValueError("a seed is required to build a model, so that its initialisation is reproducible")
    return torch.random.fork_rng(devices=[])


def mlp(
    n_in: int, widths: Sequence[int], n_out: int, *, seed: int = 0, activation: str = "relu"
) -> nn.Sequential:
    """A fully connected ReLU network ``n_in -> widths... -> n_out`` with seeded default initialisation.

    >>> net = mlp(40, [100, 100], 10, seed=0)
    >>> net[0]
    Linear(in_features=40, out_features=100, bias=True)
    """
    n_in = check_int(n_in, "n_in", minimum=1)
    n_out = check_int(n_out, "n_out", minimum=1)
    widths = check_widths(widths, "widths", min_len=0)
    act = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU}.get(activation)
    if act is None:
        raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {activation!r}")
    with _seeded(seed):
        torch.manual_seed(seed)
        mods: list[nn.Module] = []
        prev = n_in
        for w in widths:
            mods += [nn.Linear(prev, w), act()]
            prev = w
        mods.append(nn.Linear(prev, n_out))
        net = nn.Sequential(*mods)
    net.input_shape = (n_in,)
    return net


def lenet_300_100(n_in: int = 784, n_out: int = 10, *, seed: int = 0) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of the lottery-ticket papers."""
    return mlp(n_in, [300, 100], n_out, seed=seed)


def lenet5(in_shape: Sequence[int] = (1, 28, 28), n_out: int = 10, *, seed: int = 0) -> nn.Sequential:
    """LeNet-5 with ReLU and average pooling (piecewise-affine, so every analysis applies)."""
    c, h, w = (check_int(s, "in_shape entry", minimum=1) for s in in_shape)
    with _seeded(seed):
        torch.manual_seed(seed)
        hh, ww = (h - 4) // 2, (w - 4) // 2
        hh, ww = (hh - 4) // 2, (ww - 4) // 2
        if hh < 1 or ww < 1:
            raise ValueError(f"in_shape {tuple(in_shape)} is too small for LeNet-5 (needs at least 16x16)")
        net = nn.Sequential(
            nn.Conv2d(c, 6, 5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * hh * ww, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, n_out),
        )
    net.input_shape = (c, h, w)
    return net


def small_convnet(
    in_shape: Sequence[int] = (1, 40), n_out: int = 10, *, channels: int = 8, seed: int = 0
) -> nn.Sequential:
    """A small conv net: two convolutions (the second with BatchNorm), average pooling, a linear classifier.

    ``in_shape`` is ``(C, L)`` for 1-D signals (e.g. MNIST-1D) or ``(C, H, W)`` for images.
    """
    shape = tuple(check_int(s, "in_shape entry", minimum=1) for s in in_shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"in_shape must be (C, L) or (C, H, W), got {shape}")
    conv, bn, pool = (
        (nn.Conv1d, nn.BatchNorm1d, nn.AvgPool1d)
        if len(shape) == 2
        else (nn.Conv2d, nn.BatchNorm2d, nn.AvgPool2d)
    )
    with _seeded(seed):
        torch.manual_seed(seed)
        feats = nn.Sequential(
            conv(shape[0], channels, 3, padding=1),
            nn.ReLU(),
            pool(2),
            conv(channels, channels, 3, padding=1),
            bn(channels),
            nn.ReLU(),
            pool(2),
            nn.Flatten(),
        )
        with torch.no_grad():  # eval only for this probe: the returned net is in training mode
            n_flat = feats.eval()(torch.zeros(1, *shape)).shape[1]
        feats.train()
        net = nn.Sequential(*feats, nn.Linear(n_flat, n_out))
    net.input_shape = shape
    return net


MODEL_NAMES = ("mlp", "lenet_300_100", "lenet5", "small_convnet")


def build_model(description: Mapping[str, Any]) -> nn.Module:
    """Build a model from a JSON-able description, e.g. ``{"name": "mlp", "n_in": 40, "widths": [100, 100],
    "n_out": 10, "seed": 0}``. The description is what run directories record and hash."""
    desc = dict(description)
    name = desc.pop("name", None)
    builders = {"mlp": mlp, "lenet_300_100": lenet_300_100, "lenet5": lenet5, "small_convnet": small_convnet}
    if name not in builders:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(builders)}")
    try:
        return builders[name](**desc)
    except TypeError as exc:
        raise TypeError(f"bad arguments for model {name!r}: {exc}") from None
