"""Networks written the way a user writes them (own forward, functional ReLUs, residual adds, max-pooling),
imported by the tests through the factory path ``"tests._user_models:..."``."""

import torch
import torch.nn.functional as F
from torch import nn


class TinyResNet(nn.Module):
    """conv stem -> one residual block (two 3x3 convs, BatchNorm, ``x + block(x)``) -> max-pool ->
    global average pool -> linear classifier; takes flat 64-pixel digits (8x8)."""

    def __init__(self, width: int = 4, num_classes: int = 10, side: int = 8):
        super().__init__()
        self.side = side
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = x.view(x.shape[0], 1, self.side, self.side)
        h = F.relu(self.stem(x))
        h = F.relu(h + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(h))))))
        h = self.pool(h)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def tiny_resnet(width: int = 4, num_classes: int = 10) -> nn.Module:
    """Draws its initialisation from torch's global RNG (netgeom seeds it)."""
    return TinyResNet(width, num_classes)


def seeded_mlp(width: int = 8, *, seed: int = 0) -> nn.Module:
    """Takes a ``seed`` argument, as netgeom's own builders do."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def fixed_init() -> nn.Module:
    """Ignores the seed: seeds torch itself, so every run seed gives the same network."""
    torch.manual_seed(0)
    return TinyResNet()


_calls = [0]


def unseeded() -> nn.Module:
    """A different network at every call whatever the seed (its own, clock-like state)."""
    _calls[0] += 1
    g = torch.Generator().manual_seed(_calls[0])
    net = nn.Linear(64, 10)
    with torch.no_grad():
        net.weight.copy_(torch.randn(net.weight.shape, generator=g))
    return net


def not_a_module():
    return "a string"


NOT_CALLABLE = 3
