"""affine_layers reproduces the network exactly and names what it cannot read."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import (
    Masks,
    UnsupportedLayerError,
    affine_layers,
    build_model,
    forward_affine,
    layer_widths,
    mlp,
)
from netgeom.nets import MODEL_NAMES, lenet5, lenet_300_100, resnet20, small_convnet, trace, vgg


def _agree(model, shape, masks=None, n=7, seed=0):
    model = copy.deepcopy(model).double().eval()
    if masks is not None:
        masks.apply(model)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    layers = affine_layers(model, masks, input_shape=shape)
    ours = forward_affine(layers, x)
    theirs = model(x).reshape(n, -1)
    return (ours - theirs).abs().max().item(), layers


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.3)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return model


@given(
    n0=st.integers(1, 6),
    widths=st.lists(st.integers(1, 7), min_size=0, max_size=3),
    leaky=st.booleans(),
    seed=st.integers(0, 1000),
)
@settings(max_examples=30, deadline=None)
def test_mlp_matches_forward(n0, widths, leaky, seed):
    net = mlp(n0, widths, 3, seed=seed, activation="leaky_relu" if leaky else "relu")
    err, layers = _agree(net, (n0,), seed=seed)
    assert err <= 1e-10
    assert layer_widths(layers) == [n0, *widths, 3]
    assert [l.activation for l in layers][-1] == "identity"


@pytest.mark.parametrize(
    "build,shape",
    [
        (lambda: lenet5(seed=1), (1, 28, 28)),
        (lambda: small_convnet((1, 40), seed=2), (1, 40)),
        (lambda: small_convnet((2, 12, 12), seed=3), (2, 12, 12)),
    ],
)
def test_conv_nets_match_forward(build, shape):
    net = _randomise_bn(build())
    err, layers = _agree(net, shape)
    assert err <= 1e-10
    assert layers[0].kind.startswith("conv")


def test_batchnorm_linear_folding_and_dropout():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.BatchNorm1d(5),  # a lone BatchNorm at the input folds into the first Linear's group
        nn.Linear(5, 6),
        nn.BatchNorm1d(6),
        nn.Dropout(0.5),
        nn.ReLU(),
        nn.Sequential(nn.Linear(6, 4), nn.Identity(), nn.LeakyReLU(0.2)),
        nn.Linear(4, 3),
        nn.Linear(3, 2),  # two affine layers without activation between them
    )
    _randomise_bn(net, 3)
    err, layers = _agree(net, (5,))
    assert err <= 1e-10
    assert [l.activation for l in layers] == ["relu", "leaky_relu", "identity", "identity"]
    assert layers[1].negative_slope == pytest.approx(0.2)
    assert [l.param_name for l in layers] == ["1.weight", "5.0.weight", "6.weight", "7.weight"]


def test_masks_are_applied_and_recorded():
    net = mlp(4, [6], 2, seed=0)
    masks = Masks.ones(net)
    masks["0.weight"][:, :2] = False
    err, layers = _agree(net, (4,), masks=masks)
    assert err <= 1e-10
    assert (layers[0].weight[:, :2] == 0).all()
    assert layers[0].density == pytest.approx(0.5)
    assert layers[1].mask is not None and layers[1].density == 1.0
    # the user's model is not changed by reading it with masks
    assert (net[0].weight[:, :2] != 0).any()


def test_masked_conv():
    net = small_convnet((1, 16), seed=0)
    masks = Masks.ones(net)
    masks["0.weight"][::2] = False
    err, layers = _agree(net, (1, 16), masks=masks)
    assert err <= 1e-10
    assert layers[0].mask.shape == net[0].weight.shape


@pytest.mark.parametrize(
    "module,kind",
    [
        (nn.MaxPool1d(2), "MaxPool1d"),
        (nn.Sigmoid(), "Sigmoid"),
        (nn.Tanh(), "Tanh"),
        (nn.MultiheadAttention(4, 1), "MultiheadAttention"),
    ],
)
def test_unsupported_layers_are_named(module, kind):
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(module), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=rf"'2\.0' \({kind}\)"):
        affine_layers(net)


def test_custom_forward_is_rejected():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) * 2

    # a custom forward is traced; what it does that is not piecewise-linear is named with its source line
    with pytest.raises(UnsupportedLayerError, match=r"Net: function mul .*test_nets.py:\d+ \(`return self"):
        affine_layers(Net())

    class Seq(nn.Sequential):
        def forward(self, x):
            return super().forward(x) + 1

    with pytest.raises(UnsupportedLayerError, match=r"Seq: function add .* adds a constant"):
        affine_layers(Seq(nn.Linear(2, 2)))


def test_bad_inputs():
    net = mlp(3, [4], 2, seed=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        affine_layers("not a model")
    with pytest.raises(ValueError, match="no Linear or Conv"):
        affine_layers(nn.Sequential(nn.ReLU()))
    with pytest.raises(KeyError, match="nope.weight"):
        affine_layers(net, {"nope.weight": torch.ones(4, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        affine_layers(net, {"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN.*'0.weight'"):
        affine_layers(bad)
    with pytest.raises(ValueError, match="input_shape"):
        affine_layers(nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="expects 4 inputs but receives 14"):
        affine_layers(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2)), input_shape=(1, 9))


def test_build_model_and_errors():
    net = build_model({"name": "mlp", "n_in": 5, "widths": [3], "n_out": 2, "seed": 4})
    assert layer_widths(affine_layers(net)) == [5, 3, 2]
    same = build_model({"name": "mlp", "n_in": 5, "widths": [3], "n_out": 2, "seed": 4})
    assert torch.equal(net[0].weight, same[0].weight)
    other = build_model({"name": "mlp", "n_in": 5, "widths": [3], "n_out": 2, "seed": 5})
    assert not torch.equal(net[0].weight, other[0].weight)
    assert layer_widths(affine_layers(lenet_300_100(seed=0))) == [784, 300, 100, 10]
    with pytest.raises(ValueError, match="unknown model name 'resnet'"):
        build_model({"name": "resnet"})
    with pytest.raises(TypeError, match="bad arguments"):
        build_model({"name": "mlp", "n_in": 5})
    with pytest.raises(ValueError, match="n_in"):
        mlp(0, [3], 2)
    with pytest.raises(ValueError, match="seed"):
        mlp(3, [3], 2, seed=None)


def test_input_too_small_for_conv_is_named():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"layer '0' \(Conv2d\) cannot take an input of shape \(1, 2, 2\)"):
        affine_layers(net, input_shape=(1, 2, 2))


def test_training_mode_is_read_with_eval_semantics_and_says_so():
    net = _randomise_bn(small_convnet((1, 16), seed=0)).train()
    with pytest.warns(UserWarning, match=r"training mode; \['4'\]"):
        layers = affine_layers(net)
    x = torch.randn(5, 1, 16, dtype=torch.float64)
    assert net.training  # reading does not change the user's model
    ref = copy.deepcopy(net).double().eval()(x)
    assert (forward_affine(layers, x) - ref).abs().max() <= 1e-10
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        affine_layers(mlp(3, [4], 2, seed=0))  # no BatchNorm/Dropout: nothing to warn about


def test_unrolling_guard_and_chunking():
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 2)
    ).eval()
    with pytest.raises(ValueError, match=r"layer '0' unrolls to a dense 400 x 100 matrix"):
        affine_layers(net, input_shape=(1, 10, 10), max_entries=10_000)
    # a budget that forces many small chunks gives the same matrix as one pass
    small = affine_layers(net, input_shape=(1, 10, 10), max_entries=400 * 100)
    big = affine_layers(net, input_shape=(1, 10, 10))
    assert torch.equal(small[0].weight, big[0].weight)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_is_traceable_and_exact(shortcut):
    net = _randomise_bn(
        resnet20(4, in_channels=2, image_size=8, width=2, blocks=1, shortcut=shortcut, seed=3)
    )
    g = trace(net)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    ref = copy.deepcopy(net).double()(x)
    assert (g.forward(x) - ref).abs().max() <= 1e-10
    ops = [n.op for n in g.nodes]
    assert ops.count("add") == 3 and ops.count("relu") == 1 + 2 * 3
    weights = [n.param_name for n in g.nodes if n.param_name]
    # option A shortcuts carry no weights; option B adds a 1x1 projection where a stage starts
    assert len(weights) == 1 + 2 * 3 + 1 + (2 if shortcut == "B" else 0)
    assert sorted(weights) == sorted(Masks.ones(net))


def test_resnet20_matches_he_et_al():
    # He et al. (2016), Table 6: ResNet-20 has 0.27M parameters (option A: no projection weights)
    net = resnet20(shortcut="A", seed=0)
    assert sum(p.numel() for p in net.parameters()) == 269_722
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # 1 stem + 3 stages x 3 blocks x 2, so depth 19 + the classifier = 20
    assert {c.out_channels for c in convs} == {16, 32, 64}


def test_vgg_with_maxpool_is_traceable_and_exact():
    net = _randomise_bn(vgg([4, "M", 6, 6, "M"], 3, in_channels=1, image_size=8, seed=1))
    g = trace(net)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert (g.forward(x) - copy.deepcopy(net).double()(x)).abs().max() <= 1e-10
    assert [n.op for n in g.nodes].count("maxpool") == 2
    assert len(vgg("vgg16", seed=0)) == 13 * 3 + 5 + 2
    with pytest.raises(ValueError, match="too small"):
        vgg([4, "M", "M", "M", "M"], in_channels=1, image_size=8)
    with pytest.raises(ValueError, match="unknown VGG config"):
        vgg("vgg12")


def test_every_builder_is_seeded_in_eval_mode_and_in_build_model():
    descs = {
        "mlp": {"n_in": 3, "widths": [4], "n_out": 2},
        "lenet_300_100": {},
        "lenet5": {},
        "small_convnet": {},
        "resnet20": {"width": 2, "blocks": 1, "image_size": 8},
        "vgg": {"config": [2, "M"], "image_size": 4, "in_channels": 1},
    }
    assert set(descs) == set(MODEL_NAMES)
    for name, kw in descs.items():
        a = build_model({"name": name, "seed": 5, **kw})
        b = build_model({"name": name, "seed": 5, **kw})
        c = build_model({"name": name, "seed": 6, **kw})
        assert not any(m.training for m in a.modules()), name
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
        trace(a)  # traceable with its recorded input shape
