"""Pruning rules on weights computed on access (review 17, F8): a ``torch.nn.utils.parametrize`` weight is
masked and ranked as the module computes it, keyed by the computed weight's name (as the analyses read it);
zeroing it in place is impossible, so applying a mask that removes any of it is refused; a weight that
``torch.nn.utils.prune`` still masks is refused, as the tracer refuses it."""

import copy

import pytest
import torch
import torch.nn.utils.parametrize as parametrize
import torch.nn.utils.prune as tprune
from torch import nn

import netgeom as ng
from netgeom._validation import UnknownNameError


class _Scale(nn.Module):
    def forward(self, w):
        return w * torch.linspace(-2.0, 3.0, w.shape[1])  # reorders the magnitudes within each row


def _pair():
    """The same network twice: its middle weight computed by a parametrization, and stored computed."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    plain = copy.deepcopy(net)
    parametrize.register_parametrization(net[2], "weight", _Scale())
    with torch.no_grad():
        plain[2].weight.copy_(net[2].weight)
    return net, plain


def test_masks_ones_keys_the_computed_weight():
    net, _ = _pair()
    m = ng.Masks.ones(net)  # KeyError '2.weight' on main
    assert list(m) == ["0.weight", "2.weight", "4.weight"] and m["2.weight"].shape == (6, 6)
    assert m.density() == 1


@pytest.mark.parametrize("rule", [ng.magnitude_prune, ng.random_prune])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_rules_rank_the_weight_forward_computes(rule, scope):
    net, plain = _pair()
    got = rule(net, 0.5, scope=scope)  # KeyError '2.weight' on main
    want = rule(plain, 0.5, scope=scope)
    assert got.equals(want) and 0 < got["2.weight"].float().mean() < 1
    # again from those masks (the IMP step): a mask of the computed weight is accepted as current masks
    again, again_plain = rule(net, 0.5, scope=scope, masks=got), rule(plain, 0.5, scope=scope, masks=want)
    assert again.equals(again_plain) and again.is_nested_in(got)


def test_pruned_parametrized_net_reads_as_the_zeroed_one():
    net, plain = _pair()
    m = ng.magnitude_prune(net, 0.6)
    m.apply(plain)
    x = torch.randn(400, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ng.trace(net, m).forward(x), plain(x), rtol=0, atol=1e-12)
    want = ng.count_patterns(plain, x, verbose=False).count
    assert ng.count_patterns(net, x, m, verbose=False).count == want > 1


def test_applying_a_mask_to_a_computed_weight_is_refused_before_any_change():
    net, _ = _pair()
    m = ng.magnitude_prune(net, 0.5)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(ValueError, match=r"'2.weight' is computed on access by torch.nn.utils.parametrize.*"
                                         r"remove_parametrizations\(module, 'weight'\)"):
        m.apply(net)
    with pytest.raises(ValueError, match="zeroing it in place is impossible"):
        ng.magnitude_prune(net, 0.5, apply=True)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # not even '0.weight' zeroed
    # a mask that keeps the computed weight whole changes nothing there, exactly: accepted
    keep = ng.magnitude_prune(net, per_layer={"0.weight": 0.5}, apply=True)
    assert keep["2.weight"].all() and int((net[0].weight == 0).sum()) == 9
    # the analyses' own check still refuses such a mask where it would be applied in place (training)
    with pytest.raises(UnknownNameError, match="computed from other tensors"):
        m.validate(net)


def test_torch_prune_leftovers_are_refused_like_the_tracer_refuses_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    tprune.l1_unstructured(net[0], "weight", amount=0.5)
    assert ng.prunable_parameters(net) == ["0.weight", "2.weight"]
    hint = r"torch.nn.utils.prune.*masks=\{'0.weight': module.weight_mask\}.*prune.remove\(module, 'weight'\)"
    for call in (lambda: ng.Masks.ones(net), lambda: ng.magnitude_prune(net, 0.5),
                 lambda: ng.random_prune(net, 0.5), lambda: ng.trace(net)):
        with pytest.raises(ng.UnsupportedLayerError, match=hint):  # bare KeyError on main
            call()
    # the way out the message gives
    mask = net[0].weight_mask.bool()
    tprune.remove(net[0], "weight")
    m = ng.magnitude_prune(net, 0.5, masks={"0.weight": mask})
    assert m.is_nested_in({"0.weight": mask}) and m.n_kept() == 21 - round(0.5 * 21)
