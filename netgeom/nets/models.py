"""Model builders: seeded, returned in eval mode (training sets its own mode), all traceable."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._seeding import seeded_global_rng
from .._validation import check_bool, check_int, check_memory, check_widths, mlp_bytes

__all__ = [
    "mlp",
    "lenet_300_100",
    "lenet5",
    "small_convnet",
    "resnet20",
    "vgg",
    "VGG_CONFIGS",
    "build_model",
    "MODEL_NAMES",
]


# ----------------------------------------------------------------------------------------------- models
@contextlib.contextmanager
def _seeded(seed: int | None):
    """Build under torch's global generator seeded to ``seed`` and float32 as the default dtype: the same
    seed gives the same float32 weights whatever default dtype the caller set (a float64 default draws
    other numbers: weights differed by up to 0.72). The caller's default comes back after."""
    if seed is None:
        raise ValueError("a seed is required to build a model, so that its initialisation is reproducible")
    with seeded_global_rng(seed):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


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
    # refused before allocating: a too-wide MLP would otherwise be killed by the OS (or swap the machine)
    check_memory(mlp_bytes(n_in, widths, n_out, copies=1), f"mlp({n_in}, {widths}, {n_out})",
                 hint="choose smaller widths")
    with _seeded(seed):
        mods: list[nn.Module] = []
        prev = n_in
        for w in widths:
            mods += [nn.Linear(prev, w), act()]
            prev = w
        mods.append(nn.Linear(prev, n_out))
        net = nn.Sequential(*mods)
    net.input_shape = (n_in,)
    return net.eval()


def lenet_300_100(n_in: int = 784, n_out: int = 10, *, seed: int = 0) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998), the MLP of the lottery-ticket papers."""
    return mlp(n_in, [300, 100], n_out, seed=seed)


def lenet5(in_shape: Sequence[int] = (1, 28, 28), n_out: int = 10, *, seed: int = 0) -> nn.Sequential:
    """LeNet-5 with ReLU and average pooling (piecewise-affine, so every analysis applies)."""
    c, h, w = (check_int(s, "in_shape entry", minimum=1) for s in in_shape)
    with _seeded(seed):
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
    return net.eval()


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
        with torch.no_grad():
            n_flat = feats.eval()(torch.zeros(1, *shape)).shape[1]
        net = nn.Sequential(*feats, nn.Linear(n_flat, n_out))
    net.input_shape = shape
    return net.eval()


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and pad new channels with zeros.

    Weight-free and linear; :func:`netgeom.nets.trace` reads it as one affine operation.
    """

    netgeom_linear = True  # the tracer's marker for a weight-free linear module

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c_in, self.c_out, self.stride = c_in, c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.c_out - self.c_in))

    def extra_repr(self) -> str:
        return f"{self.c_in}->{self.c_out}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(c_in, c_out, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.functional.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """He et al.'s CIFAR ResNet: a 3x3 stem, three stages of basic blocks, global average pooling, a linear
    classifier. Built by :func:`resnet20`."""

    def __init__(self, in_channels: int, num_classes: int, width: int, blocks: int, shortcut: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        layers, c = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(c, c_out, 2 if (stage > 0 and b == 0) else 1, shortcut))
                c = c_out
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu(self.bn(self.conv(x)))
        x = self.pool(self.blocks(x))
        return self.fc(torch.flatten(x, 1))


def resnet20(
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    width: int = 16,
    blocks: int = 3,
    shortcut: str = "B",
    seed: int = 0,
) -> ResNet:
    """He et al.'s (2016) CIFAR-10 ResNet-20: 3 stages of ``blocks`` basic blocks with ``width``, ``2 width``,
    ``4 width`` channels (16/32/64 by default; depth ``6 blocks + 2``), global average pooling, a linear
    classifier.

    ``shortcut="B"`` (default) projects with a 1x1 convolution + BatchNorm where a block changes shape (the
    variant of open_lth, which the lottery-ticket and pruning papers use); ``"A"`` is the paper's
    parameter-free option (subsample, pad channels with zeros). Seeded default initialisation; returned in
    eval mode. ``width=2, blocks=1, image_size=8`` gives a tiny variant for tests.

    >>> net = resnet20(width=4, blocks=1, image_size=8, seed=0)
    >>> net.input_shape, net(torch.zeros(2, 3, 8, 8)).shape
    ((3, 8, 8), torch.Size([2, 10]))
    """
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    in_channels = check_int(in_channels, "in_channels", minimum=1)
    image_size = check_int(image_size, "image_size", minimum=1)
    width = check_int(width, "width", minimum=1)
    blocks = check_int(blocks, "blocks", minimum=1)
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
    with _seeded(seed):
        torch.manual_seed(seed)
        net = ResNet(in_channels, num_classes, width, blocks, shortcut)
    net.input_shape = (in_channels, image_size, image_size)
    return net.eval()


VGG_CONFIGS: dict[str, list] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


def vgg(
    config: str | Sequence[int | str] = "vgg11",
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    batch_norm: bool = True,
    seed: int = 0,
) -> nn.Sequential:
    """A VGG network (Simonyan & Zisserman 2015) in its CIFAR form: 3x3 convolutions (padding 1, optional
    BatchNorm, ReLU), ``"M"`` = 2x2 max-pooling, then one linear classifier on the flattened features.

    ``config`` is a name in :data:`VGG_CONFIGS` or a list of channel counts and ``"M"``. Seeded default
    initialisation; returned in eval mode.

    >>> net = vgg([8, "M", 16, "M"], in_channels=1, image_size=8, seed=0)
    >>> net.input_shape, net(torch.zeros(2, 1, 8, 8)).shape
    ((1, 8, 8), torch.Size([2, 10]))
    """
    batch_norm = check_bool(batch_norm, "batch_norm")
    if isinstance(config, str):
        if config not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG config {config!r}; known: {sorted(VGG_CONFIGS)} or a list")
        config = VGG_CONFIGS[config]
    if not isinstance(config, Sequence) or not config:
        raise TypeError(f"config must be a VGG name or a non-empty list of channels and 'M', got {config!r}")
    num_classes = check_int(num_classes, "num_classes", minimum=1)
    in_channels = check_int(in_channels, "in_channels", minimum=1)
    image_size = check_int(image_size, "image_size", minimum=1)
    size, c = image_size, in_channels
    with _seeded(seed):
        torch.manual_seed(seed)
        mods: list[nn.Module] = []
        for i, v in enumerate(config):
            if v == "M":
                if size < 2:
                    raise ValueError(
                        f"config entry {i} ('M') pools a {size}x{size} map: image_size is too small"
                    )
                mods.append(nn.MaxPool2d(2))
                size //= 2
                continue
            v = check_int(v, f"config[{i}]", minimum=1)
            mods += (
                [nn.Conv2d(c, v, 3, padding=1)] + ([nn.BatchNorm2d(v)] if batch_norm else []) + [nn.ReLU()]
            )
            c = v
        net = nn.Sequential(*mods, nn.Flatten(), nn.Linear(c * size * size, num_classes))
    net.input_shape = (in_channels, image_size, image_size)
    return net.eval()


MODEL_NAMES = ("mlp", "lenet_300_100", "lenet5", "small_convnet", "resnet20", "vgg")


def build_model(description: Mapping[str, Any]) -> nn.Module:
    """Build a model from a JSON-able description, e.g. ``{"name": "mlp", "n_in": 40, "widths": [100, 100],
    "n_out": 10, "seed": 0}``. The description is what run directories record and hash."""
    desc = dict(description)
    name = desc.pop("name", None)
    builders = {
        "mlp": mlp,
        "lenet_300_100": lenet_300_100,
        "lenet5": lenet5,
        "small_convnet": small_convnet,
        "resnet20": resnet20,
        "vgg": vgg,
    }
    if name not in builders:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(builders)}")
    try:
        return builders[name](**desc)
    except TypeError as exc:
        raise TypeError(f"bad arguments for model {name!r}: {exc}") from None
