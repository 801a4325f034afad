import types

import matplotlib
import numpy as np
import pytest
import torch

from netgeom.dimension import MLE, TwoNN, representation_dimension
from netgeom.dimension.representations import demo_section
from netgeom.nets import mlp
from netgeom.pruning.masks import Masks

matplotlib.use("Agg")


def _model_and_data():
    torch.manual_seed(0)
    return mlp(10, [32, 24], 3, seed=0), torch.randn(400, 10)


def test_layers_match_manual_activations():
    model, X = _model_and_data()
    r = representation_dimension(model, X, method=["mle", "twonn"], k=10)
    assert r.layers == ["input", "1", "3"] and r.widths == [10, 32, 24]
    h1 = torch.relu(model[0](X))
    h2 = torch.relu(model[2](h1))
    for i, A in enumerate([X, h1, h2]):
        A = A.detach().double().numpy()
        assert r.dimensions["mle"][i] == pytest.approx(MLE(k=10).fit(A).dimension_, rel=1e-6)
        assert r.dimensions["twonn"][i] == pytest.approx(TwoNN().fit(A).dimension_, rel=1e-6)
    ax = r.plot()
    assert len(ax.lines) == 2
    matplotlib.pyplot.close("all")


def test_masks_applied_to_a_copy_only():
    model, X = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = Masks.ones(model)
    masks["0.weight"] = torch.rand(32, 10, generator=torch.Generator().manual_seed(1)) < 0.3
    r = representation_dimension(model, X, masks=masks, k=10)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    pruned = mlp(10, [32, 24], 3, seed=0)
    with torch.no_grad():
        masks.apply(pruned)
    r2 = representation_dimension(pruned, X, k=10)
    assert r.dimensions == r2.dimensions


def test_explicit_layers_and_errors():
    model, X = _model_and_data()
    r = representation_dimension(
        model, X, layers=["0"], include_input=False, k=8, mle_variant="mackay_ghahramani"
    )
    assert r.layers == ["0"] and r.widths == [32]
    with pytest.raises(ValueError, match="unknown layer"):
        representation_dimension(model, X, layers=["nope"])
    with pytest.raises(ValueError, match="method"):
        representation_dimension(model, X, method="pca")
    with pytest.raises(TypeError, match="prefix"):
        representation_dimension(model, X, variant="x")
    with pytest.raises(TypeError, match="shared kNN"):
        representation_dimension(model, X, mle_duplicates="error")
    with pytest.raises(ValueError, match="no nn.ReLU"):
        representation_dimension(torch.nn.Sequential(torch.nn.Linear(10, 5)), X)
    with pytest.raises(ValueError, match="non-finite"):
        representation_dimension(model, X.masked_fill(X > 2, float("nan")))


def test_dead_units_duplicates_are_dropped_and_reported():
    model, X = _model_and_data()
    with torch.no_grad():
        model[2].bias.fill_(-100.0)  # second hidden layer all zero: every activation identical
    with pytest.raises(ValueError, match="distinct"):
        representation_dimension(model, X, k=10)


def test_demo_section(tmp_path):
    model, _ = _model_and_data()
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(500, 10)).astype(np.float32))
    data = types.SimpleNamespace(X_train=X, name="toy")
    pruned = mlp(10, [32, 24], 3, seed=0)
    ctx = types.SimpleNamespace(
        data=data, model=model, pruned_model=pruned, out_dir=tmp_path, quick=True, seed=0
    )
    md = demo_section(ctx)
    assert md.startswith("## ") and "id_layers.png" in md and (tmp_path / "id_layers.png").exists()
    assert md.count("\n| ") == 4  # header row + input + 2 hidden layers


def test_shared_relu_module_is_refused():
    act = torch.nn.ReLU()
    lin = torch.nn.Linear
    model = torch.nn.Sequential(lin(10, 16), act, lin(16, 16), act, lin(16, 2))
    with pytest.raises(ValueError, match="more than once"):
        representation_dimension(model, torch.randn(100, 10), k=5)


class _InplaceAfterRelu(torch.nn.Module):
    """Residual-style forward that modifies the ReLU's output in place after the hook has seen it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(10, 16)
        self.act = torch.nn.ReLU()
        self.out = torch.nn.Linear(16, 2)

    def forward(self, x):
        h = self.act(self.fc(x))
        h.mul_(0.0)  # e.g. an in-place residual add or re-scaling
        return self.out(h)


def test_recorded_activations_are_not_overwritten_in_place():
    torch.manual_seed(1)
    model, X = _InplaceAfterRelu(), torch.randn(300, 10)
    r = representation_dimension(model, X, include_input=False, k=8)
    H = torch.relu(model.fc(X)).detach().double().numpy()
    assert r.dimensions["mle"][0] == pytest.approx(MLE(k=8).fit(H).dimension_, rel=1e-6)


def test_conv_net_layers_flattened_per_sample():
    from netgeom.nets import small_convnet

    model = small_convnet((1, 16), n_out=3, channels=4, seed=0)
    X = torch.randn(250, 1, 16, generator=torch.Generator().manual_seed(2))
    r = representation_dimension(model, X, method="twonn")
    assert r.layers == ["input", "1", "5"] and r.widths == [16, 4 * 16, 4 * 8]
    net = model.eval()
    h1 = net[1](net[0](X))
    h2 = net[5](net[4](net[3](net[2](h1))))
    for i, A in enumerate([X, h1, h2]):
        A = A.detach().reshape(len(X), -1).double().numpy()
        assert r.dimensions["twonn"][i] == pytest.approx(TwoNN().fit(A).dimension_, rel=1e-6)
