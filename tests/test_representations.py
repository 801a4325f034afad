import copy
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
    with pytest.raises(ValueError, match="no ReLU"):
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


def test_shared_relu_module_is_ambiguous_by_name_but_its_calls_are_not():
    act = torch.nn.ReLU()
    lin = torch.nn.Linear
    model = torch.nn.Sequential(lin(10, 16), act, lin(16, 16), act, lin(16, 2))
    X = torch.randn(100, 10, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="more than once"):
        representation_dimension(model, X, layers=["1"], k=5)
    # by default each call is recorded under its own traced name
    r = representation_dimension(model, X, method="twonn", include_input=False)
    assert len(r.layers) == 2 and len(set(r.layers)) == 2 and r.widths == [16, 16]
    h1 = torch.relu(model[0](X))
    h2 = torch.relu(model[2](h1))
    for i, A in enumerate([h1, h2]):
        assert r.dimensions["twonn"][i] == pytest.approx(
            TwoNN().fit(A.detach().double().numpy()).dimension_, rel=1e-6
        )


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


class _Res(torch.nn.Module):
    """Functional ReLUs, a residual add and a conv + BatchNorm folded into one affine node."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(3)
        self.fc1 = torch.nn.Linear(24, 24)
        self.out = torch.nn.Linear(24, 2)

    def forward(self, x):
        h = torch.flatten(torch.nn.functional.relu(self.bn(self.conv(x))), 1)
        h = h + self.fc1(h).relu()
        return self.out(h)


def test_traced_nodes_functional_relus_prelogits_and_dict_masks():
    torch.manual_seed(0)
    model = _Res().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    X = torch.randn(300, 1, 8, generator=torch.Generator().manual_seed(3))
    r = representation_dimension(model, X, method="twonn")
    # both ReLUs (functional, so named by their fx nodes) and the pre-logits (the residual sum)
    assert r.layers == ["input", "relu", "relu_1", "add"] and r.widths == [8, 24, 24, 24]
    with torch.no_grad():
        h1 = torch.relu(model.bn(model.conv(X))).flatten(1)
        h2 = torch.relu(model.fc1(h1))
        pre = h1 + h2
    for i, A in enumerate([X.reshape(300, -1), h1, h2, pre]):
        assert r.dimensions["twonn"][i] == pytest.approx(TwoNN().fit(A.double().numpy()).dimension_, rel=1e-6)
    # a module folded inside an affine node (the conv before its BatchNorm) can be recorded too
    c = representation_dimension(model, X, layers=["conv"], include_input=False, method="twonn")
    conv_out = model.conv(X).detach().reshape(300, -1).double().numpy()
    assert c.dimensions["twonn"][0] == pytest.approx(TwoNN().fit(conv_out).dimension_, rel=1e-6)
    # masks as a plain dict of 0/1 tensors (no .apply): the same as the pruned model
    m = {"fc1.weight": (torch.rand(24, 24, generator=torch.Generator().manual_seed(4)) < 0.3).int()}
    a = representation_dimension(model, X, masks=m, method="twonn")
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        pruned.fc1.weight.mul_(m["fc1.weight"])
    b = representation_dimension(pruned, X, method="twonn")
    assert a.dimensions == b.dimensions
    assert (model.fc1.weight != 0).all()
    with pytest.raises(ValueError, match="0 and 1"):
        representation_dimension(model, X, masks={"fc1.weight": torch.full((24, 24), 0.5)})
    with pytest.raises(ValueError, match="one mask per Linear/Conv"):
        representation_dimension(model, X, masks=[torch.ones(24, 24)])
