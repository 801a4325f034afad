"""Forward order (review 17, F1): lists matched to weights and "the output layer" follow the order in which
``forward`` uses the weights, not the order the modules were registered in."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import netgeom as ng
from netgeom._validation import check_masks
from netgeom.nets import UnsupportedLayerError


class HeadFirst(nn.Module):
    """The classifier registered first and called last (square layers: shapes cannot tell them apart)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


FORWARD = ["fc1.weight", "fc2.weight", "head.weight"]


def _net():
    torch.manual_seed(0)
    return HeadFirst().eval()


def _densities(masks):
    return {k: float(v.float().mean()) for k, v in masks.items()}


def test_prunable_parameters_follow_forward_not_registration():
    net = _net()
    assert [n for n, _ in net.named_parameters() if n.endswith("weight")][0] == "head.weight"
    assert ng.prunable_parameters(net) == FORWARD == [la.param_name for la in ng.affine_layers(net)]
    assert ng.prunable_parameters(net, include_output=False) == FORWARD[:2]
    assert list(ng.Masks.ones(net, include_output=False)) == FORWARD[:2]


@pytest.mark.parametrize("rule", [ng.magnitude_prune, ng.random_prune])
def test_include_output_false_keeps_the_classifier_dense(rule):
    net = _net()
    m = rule(net, 0.5, scope="layer", include_output=False)  # pruned head.weight and fc1.weight on main
    assert _densities(m) == {"fc1.weight": 0.5, "fc2.weight": 0.5}
    with pytest.raises(ValueError, match="head.weight', the output layer"):
        rule(net, per_layer={"head.weight": 0.5}, include_output=False)


def test_list_masks_are_read_in_forward_order():
    net = _net()
    one, zero = torch.ones(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    got = {la.param_name: la.density for la in ng.affine_layers(net, [one, zero, one])}
    assert got == {"fc1.weight": 1.0, "fc2.weight": 0.0, "head.weight": 1.0}  # fc1 read empty on main
    x = torch.randn(50, 8, dtype=torch.float64)
    want = ng.trace(net, {"fc2.weight": zero}).forward(x)
    assert torch.equal(ng.trace(net, [one, zero, one]).forward(x), want)


def test_per_layer_list_lands_on_the_layer_forward_uses_in_that_place():
    net = _net()
    m = ng.magnitude_prune(net, per_layer=[0.0, 0.9, 0.0])  # pruned fc1 on main
    d = _densities(m)
    assert d["fc1.weight"] == 1.0 == d["head.weight"] and d["fc2.weight"] == pytest.approx(6 / 64)


def test_allocation_list_prunes_the_hidden_layers_and_keeps_the_classifier():
    net = _net()
    a = ng.allocate_densities(8, [8, 8], 0.3, n_out=8, verbose=False)
    m = ng.magnitude_prune(net, per_layer=a.per_layer())  # on main: head at 31 %, fc2 dense
    d = _densities(m)
    assert d["head.weight"] == 1.0
    assert [d["fc1.weight"], d["fc2.weight"]] == pytest.approx(a.densities, abs=1 / 64)
    # the same allocation read from the model names the layers and agrees
    b = ng.allocate_densities(model=net, total_density=0.3, verbose=False)
    assert b.per_layer(net) == b.per_layer() and list(b.per_layer()) == FORWARD


def test_global_ties_are_broken_in_forward_order():
    # every weight has the same magnitude: the 32 removed are the first in forward order (fc1's)
    net = _net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    m = ng.magnitude_prune(net, 32 / 192)
    assert _densities(m) == {"fc1.weight": 0.5, "fc2.weight": 1.0, "head.weight": 1.0}


def test_shared_weight_and_functional_weight_take_their_first_use():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(6, 2)
            self.shared = nn.Linear(6, 6)
            self.w_in = nn.Parameter(torch.randn(6, 3))
            self.tied = nn.Linear(6, 6)
            self.tied.weight = self.shared.weight

        def forward(self, x):
            h = F.relu(F.linear(x, self.w_in))
            h = F.relu(self.tied(h))  # the shared weight's first use, by its second name
            return self.out(F.relu(self.shared(h)))

    net = Net()
    assert ng.prunable_parameters(net) == ["w_in", "shared.weight", "out.weight"]
    assert ng.prunable_parameters(net, include_output=False) == ["w_in", "shared.weight"]
    assert [la.param_name for la in ng.affine_layers(net)] == ["w_in", "shared.weight", "shared.weight",
                                                                "out.weight"]


def test_unused_weights_come_last_and_are_not_the_output_layer():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.fc = nn.Linear(3, 4)
            self.spare = nn.Linear(5, 5)  # never called

        def forward(self, x):
            return self.head(F.relu(self.fc(x)))

    net = Net()
    assert ng.prunable_parameters(net) == ["fc.weight", "head.weight", "spare.weight"]
    assert ng.prunable_parameters(net, include_output=False) == ["fc.weight", "spare.weight"]
    assert set(ng.magnitude_prune(net, 0.5, include_output=False)) == {"fc.weight", "spare.weight"}


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.head(F.relu(self.fc(x)))


def test_untraceable_model_refuses_what_needs_the_order_and_keeps_the_named_forms():
    torch.manual_seed(0)
    net = Untraceable()
    with pytest.raises(UnsupportedLayerError, match="order.*torch.fx cannot trace it"):
        ng.prunable_parameters(net)
    with pytest.raises(UnsupportedLayerError, match="include_output=False needs the output layer"):
        ng.magnitude_prune(net, 0.5, include_output=False)
    with pytest.raises(UnsupportedLayerError, match="include_output=False"):
        ng.Masks.ones(net, include_output=False)
    with pytest.raises(UnsupportedLayerError, match="per_layer as a list"):
        ng.magnitude_prune(net, per_layer=[0.5, 0.0])
    with pytest.raises(UnsupportedLayerError, match="masks given as a list"):
        check_masks([torch.ones(4, 3), torch.ones(2, 4)], net)
    # the forms keyed by name need no order
    assert set(ng.Masks.ones(net)) == {"head.weight", "fc.weight"}
    m = ng.magnitude_prune(net, per_layer={"fc.weight": 0.5})
    assert _densities(m) == {"head.weight": 1.0, "fc.weight": 0.5}
    assert ng.random_prune(net, 0.5).n_kept() == 10
