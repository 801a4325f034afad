"""Model builders: seeded, returned in eval mode (training sets its own mode), all traceable."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._validation import check_int, check_widths

__all__ = ["mlp", "lenet_300_100", "lenet5", "small_convnet", "build_model", "MODEL_NAMES"]


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
