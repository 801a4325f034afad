"""Masks: combination, files, densities and errors."""

import numpy as np
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


def test_integer_and_float_masks_must_be_binary_and_load_names_a_bad_file(tmp_path):
    for bad in (torch.full((2,), 2), np.array([-1, 1]), np.array([0.0, np.nan])):
        with pytest.raises(ValueError, match="mask 'w' must be boolean"):
            Masks({"w": bad})
    assert Masks({"w": np.array([0, 1], dtype=np.uint8)})["w"].tolist() == [False, True]
    p = tmp_path / "m.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"{p} is not a readable masks file") as err:
        Masks.load(p)
    assert "allow_pickle" not in str(err.value)
    np.savez(p, w=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects, which are never loaded"):
        Masks.load(p)


def test_a_layer_without_a_mask_is_dense_on_either_side():
    # every analysis reads a layer missing from Masks as dense: | keeps all of it, & takes the other mask,
    # and nesting follows the same reading
    net = mlp(4, [6], 3, seed=0)
    full = Masks.ones(net)
    full["0.weight"][:, :2] = False
    full["2.weight"][0] = False
    hid = Masks({"0.weight": full["0.weight"]})  # the output layer dense
    either = hid | full
    assert torch.equal(either["2.weight"], torch.ones(3, 6, dtype=torch.bool))
    assert torch.equal((hid & full)["2.weight"], full["2.weight"])
    assert hid.is_nested_in(either) and full.is_nested_in(either)
    assert full.is_nested_in(hid) and not hid.is_nested_in(full)
    assert hid.is_nested_in(Masks({"0.weight": full["0.weight"], "2.weight": torch.ones(3, 6)}))
