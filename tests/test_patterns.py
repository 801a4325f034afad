"""count_patterns: exact distinct-pattern counting, checked against Python sets of tuples."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import Masks, mlp, small_convnet
from netgeom.regions.patterns import count_patterns, pack_patterns, pattern_layers, unique_rows


def _reference_patterns(net: nn.Sequential, X: torch.Tensor) -> np.ndarray:
    """Patterns by running the torch modules themselves and recording the input of every activation."""
    bits = []
    x = X.double()
    with torch.no_grad():
        for m in net.double():
            if isinstance(m, (nn.ReLU, nn.LeakyReLU)):
                bits.append((x > 0).reshape(len(x), -1))
            x = m(x)
    net.float()
    return torch.cat(bits, 1).numpy() if bits else np.zeros((len(X), 0), bool)


def _set_count(B: np.ndarray) -> int:
    return len({tuple(r) for r in B})


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(0, 19), st.integers(0, 10_000))
def test_unique_rows_matches_python_set(n_rows, n_bits, seed):
    rng = np.random.default_rng(seed)
    # Few distinct values so that duplicates are common.
    B = rng.random((n_rows, n_bits)) < rng.uniform(0.05, 0.95)
    u, c = unique_rows(pack_patterns(B))
    ref = {}
    for r in B:
        ref[tuple(r)] = ref.get(tuple(r), 0) + 1
    assert len(u) == len(ref)
    assert c.sum() == n_rows
    assert sorted(c.tolist()) == sorted(ref.values())


def test_packing_distinguishes_patterns_differing_in_padding_region():
    # 9 bits -> 2 bytes; patterns that differ only in bit 8 must stay apart.
    B = np.zeros((2, 9), bool)
    B[1, 8] = True
    assert len(unique_rows(pack_patterns(B))[0]) == 2


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_count_matches_reference_and_streaming(batch_size):
    net = mlp(3, [6, 5], 2, seed=1)
    X = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    res = count_patterns(net, X, batch_size=batch_size, per_layer=True)
    B = _reference_patterns(net, X)
    assert res.count == _set_count(B)
    assert res.n_samples == 300
    assert res.n_bits == 11
    assert res.per_layer == [_set_count(B[:, :6]), _set_count(B[:, 6:])]
    assert res.cumulative == [_set_count(B[:, :6]), res.count]
    assert res.multiplicities.sum() == 300


def test_iterable_of_batches_equals_array():
    net = mlp(4, [8, 8], 3, seed=2)
    X = torch.randn(500, 4, generator=torch.Generator().manual_seed(1))
    a = count_patterns(net, X)
    b = count_patterns(net, (X[i : i + 37] for i in range(0, 500, 37)))
    assert a.count == b.count and np.array_equal(a.patterns, b.patterns)


def test_singletons_and_saturation():
    net = mlp(2, [10], 1, seed=0)
    X = torch.randn(50, 2, generator=torch.Generator().manual_seed(3))
    res_once = count_patterns(net, X)
    # Each input three times: no pattern can be a singleton any more.
    res_thrice = count_patterns(net, X.repeat(3, 1))
    assert res_thrice.count == res_once.count
    assert res_thrice.n_singletons == 0 and not res_thrice.saturated
    assert res_once.n_singletons == int((res_once.multiplicities == 1).sum())
    # A wide net on few points: nearly every point has its own pattern.
    wide = count_patterns(mlp(20, [200, 200], 2, seed=0), torch.randn(30, 20))
    assert wide.saturated and wide.count == 30


def test_leaky_relu_bits_are_z_positive():
    net = mlp(3, [5, 5], 2, seed=4, activation="leaky_relu")
    X = torch.randn(400, 3, generator=torch.Generator().manual_seed(2))
    assert count_patterns(net, X).count == _set_count(_reference_patterns(net, X))


def test_conv_bn_pool_net_with_input_shape():
    net = small_convnet(in_shape=(1, 8), channels=3, seed=0)
    bn = net[4]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    X = torch.randn(400, 1, 8, generator=torch.Generator().manual_seed(0))
    res = count_patterns(net, X)
    assert res.count == _set_count(_reference_patterns(net, X))
    assert res.count == count_patterns(net, X.reshape(400, 8)).count


def test_identity_hidden_layer_has_no_bits_and_no_hidden_means_one_pattern():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    X = torch.randn(100, 3)
    res = count_patterns(net, X)
    assert res.n_bits == 5
    assert res.count == _set_count(_reference_patterns(net, X))
    lone = count_patterns(nn.Sequential(nn.Linear(3, 2)), X)
    assert lone.count == 1 and lone.n_bits == 0 and lone.n_singletons == 0


def test_masks_are_respected():
    net = mlp(3, [6], 1, seed=0)
    masks = Masks.ones(net)
    m = masks["0.weight"].clone()
    m[:3] = False  # three units lose every weight: their bit is the sign of their bias
    masks["0.weight"] = m
    X = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    res = count_patterns(net, X, masks)
    pruned = mlp(3, [6], 1, seed=0)
    masks.apply(pruned)
    assert res.count == count_patterns(pruned, X).count
    assert res.count == _set_count(_reference_patterns(pruned, X))
    assert np.all(pattern_layers(__import__("netgeom").affine_layers(net)) == np.array([True, False]))


def test_bad_input():
    net = mlp(3, [4], 1, seed=0)
    with pytest.raises(ValueError, match="3 inputs"):
        count_patterns(net, torch.randn(10, 4))
    with pytest.raises(ValueError, match="batch axis"):
        count_patterns(net, torch.randn(3))
    with pytest.raises(ValueError, match="no inputs"):
        count_patterns(net, torch.zeros(0, 3))
    with pytest.raises(ValueError, match="non-finite"):
        count_patterns(net, torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="iterable"):
        count_patterns(net, 3.0)
    with pytest.raises(TypeError, match="MaxPool1d"):
        count_patterns(
            nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Unflatten(1, (1, 4)), nn.MaxPool1d(2)),
            torch.randn(2, 3),
        )


def test_plot_and_to_dict():
    res = count_patterns(mlp(2, [5], 1, seed=0), torch.randn(200, 2))
    ax = res.plot()
    assert "patterns" in ax.get_title()
    d = res.to_dict()
    assert d["count"] == res.count and "patterns" not in d
    import matplotlib.pyplot as plt

    plt.close("all")


def test_network_ending_with_an_activation_has_bits_in_its_last_layer():
    # No affine classifier: the last ReLU's kinks cut regions like any hidden layer's.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3), nn.LeakyReLU(0.1))
    X = torch.randn(300, 2)
    res = count_patterns(net, X, per_layer=True)
    ref = _reference_patterns(net, X)
    assert ref.shape[1] == 7 and res.n_bits == 7
    assert res.count == _set_count(ref)
    assert res.per_layer[1] == _set_count(ref[:, 4:])
