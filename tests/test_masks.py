"""Masks: combination, files, densities and errors."""

import pytest
import torch

from netgeom import Masks, mlp


def test_combination_keeps_forward_order_and_values():
    net = mlp(3, [4], 2, seed=0)
    a = Masks.ones(net)
    b = Masks.ones(net)
    a["0.weight"][0] = False
    b["0.weight"][:, 0] = False
    both, either = a & b, a | b
    assert list(both) == ["0.weight", "2.weight"] == list(either)
    assert torch.equal(both["0.weight"], a["0.weight"] & b["0.weight"])
    assert torch.equal(either["0.weight"], a["0.weight"] | b["0.weight"])
    assert both.is_nested_in(a) and both.is_nested_in(b) and a.is_nested_in(either)
    assert not a.is_nested_in(b)


def test_save_load_roundtrip_and_densities(tmp_path):
    net = mlp(5, [6, 6], 3, seed=1)
    m = Masks.ones(net, include_output=False)
    m["2.weight"][:3] = False
    path = m.save(tmp_path / "m.npz")
    back = Masks.load(path)
    assert back.equals(m)
    assert back.layer_densities() == {"0.weight": 1.0, "2.weight": 0.5}
    assert m.n_kept() == 30 + 18 and m.n_total() == 66
    assert m.density() == pytest.approx(48 / 66)


def test_apply_zeroes_masked_weights_only():
    net = mlp(3, [4], 2, seed=0)
    m = Masks.ones(net)
    m["0.weight"][1, 2] = False
    before = net[0].weight.detach().clone()
    m.apply(net)
    assert net[0].weight[1, 2] == 0
    keep = m["0.weight"]
    assert torch.equal(net[0].weight[keep], before[keep])


def test_errors():
    net = mlp(3, [4], 2, seed=0)
    with pytest.raises(KeyError, match="nope"):
        Masks({"nope": torch.ones(2, 2, dtype=torch.bool)}).validate(net)
    with pytest.raises(ValueError, match="shape"):
        Masks({"0.weight": torch.ones(2, 2, dtype=torch.bool)}).validate(net)
    with pytest.raises(ValueError, match="empty"):
        Masks().validate(net)
    with pytest.raises(ValueError, match="boolean"):
        Masks({"0.weight": torch.full((4, 3), 0.5)})
    with pytest.warns(UserWarning, match="removes every weight"):
        Masks({"0.weight": torch.zeros(4, 3, dtype=torch.bool)}).validate(net)
    with pytest.raises(FileNotFoundError):
        Masks.load("/nonexistent/masks.npz")
