"""count_patterns: exact distinct-pattern counting, checked against Python sets of tuples."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom import Masks, mlp, resnet20, small_convnet, vgg
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
    with pytest.raises(TypeError, match=r"'2' \(Sigmoid\)"):
        count_patterns(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sigmoid()), torch.randn(2, 3))
    with pytest.raises(ValueError, match="CUDA is not available|only"):
        if torch.cuda.is_available():
            count_patterns(net, torch.randn(2, 3), device=f"cuda:{torch.cuda.device_count()}")
        count_patterns(net, torch.randn(2, 3), device="cuda")
    with pytest.raises(ValueError, match="device"):
        count_patterns(net, torch.randn(2, 3), device="banana")
    with pytest.raises(ValueError, match="precision"):
        count_patterns(net, torch.randn(2, 3), precision="float16")


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


class _ResPool(nn.Module):
    """conv -> relu -> max-pool -> residual block (functional relus) -> linear -> relu -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c1 = nn.Conv2d(3, 3, 3, padding=1)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x)))
        h = F.relu(self.c2(self.c1(h).relu()) + h)
        return self.out(F.relu(self.fc(torch.flatten(h, 1))))


def _reference_respool(net, X):
    """Patterns written out by hand in float64: relu signs and 2x2 window argmaxes (first maximum)."""
    net = net.double()
    x = X.double()
    bits = []
    with torch.no_grad():
        z = net.conv(x)
        bits.append(z > 0)
        h = torch.relu(z)
        B, C, H, W = h.shape
        win = h.reshape(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H // 2, W // 2, 4)
        pos = torch.argmax(win, dim=-1)
        bits.append(torch.stack([(pos >> 1) & 1, pos & 1], -1).bool())
        h = win.amax(-1)
        z1 = net.c1(h)
        bits.append(z1 > 0)
        z2 = net.c2(torch.relu(z1)) + h
        bits.append(z2 > 0)
        z3 = net.fc(torch.relu(z2).flatten(1))
        bits.append(z3 > 0)
    net.float()
    return torch.cat([b.reshape(B, -1) for b in bits], 1).numpy()


def test_residual_maxpool_patterns_equal_a_hand_written_reference():
    torch.manual_seed(0)
    net = _ResPool().eval()
    X = torch.randn(600, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    X[:50, :, :4] = 0.0  # zero patches: relu zeros tie inside max-pool windows
    res = count_patterns(net, X, per_layer=True)
    ref = _reference_respool(net, X)
    assert res.n_bits == ref.shape[1] == 3 * 64 + 3 * 16 * 2 + 48 + 48 + 6
    assert res.count == _set_count(ref)
    ref_rows, ref_mult = unique_rows(pack_patterns(ref))
    assert np.array_equal(res.patterns, ref_rows) and np.array_equal(res.multiplicities, ref_mult)
    assert res.layer_names == ["conv", "pool", "c1", "relu_2", "fc"]
    assert res.per_layer[1] == _set_count(ref[:, 192:288])
    # float64 from the start gives the same patterns
    same = count_patterns(net, X, precision="float64")
    assert np.array_equal(same.patterns, res.patterns)


def test_tiny_resnet_and_vgg_patterns_match_float64_sampling():
    for net, shape in [
        (resnet20(3, in_channels=1, image_size=6, width=2, blocks=1, seed=0), (1, 6, 6)),
        (vgg([3, "M", 4, "M"], 3, in_channels=1, image_size=6, seed=0), (1, 6, 6)),
    ]:
        X = torch.randn(300, *shape, generator=torch.Generator().manual_seed(2))
        a = count_patterns(net, X)
        b = count_patterns(net, X.double(), precision="float64")
        assert a.count == b.count and np.array_equal(a.patterns, b.patterns)


def _single_pattern_bits(res, n_bits):
    assert res.count == 1
    return np.unpackbits(res.patterns[0])[:n_bits].astype(bool)


def test_undecidable_in_float32_or_float64_is_decided_exactly():
    lin = nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0]]))
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.ReLU()).double()
    cases = [
        ([1.0, -1.0 + 1e-9, 0.0], True, 1, 0),  # float32 cannot tell, float64 can
        ([0.1, -0.1, 0.0], False, 1, 1),  # exactly 0 in rationals: nobody rounds it to a side
        ([1e16, 1.0, -1e16], True, 1, 1),  # float64 sums this to 0; the exact sum is 1
        ([0.0, 0.0, 0.0], False, 0, 0),  # exact input, zero bias: the bound is 0 and decides z == 0
    ]
    for x, bit, n64, nex in cases:
        X = torch.tensor([x], dtype=torch.float64)
        res = count_patterns(net, X)
        assert _single_pattern_bits(res, 1).tolist() == [bit], x
        assert (res.n_float64, res.n_exact) == (n64, nex), x
    naive = (net[0](torch.tensor([[1e16, 1.0, -1e16]], dtype=torch.float64)) > 0).item()
    assert naive is False  # what a plain float64 forward would have said


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["relu", "leaky_relu"]))
def test_float32_certified_equals_float64_on_random_mlps(seed, act):
    net = mlp(5, [12, 9], 2, seed=seed, activation=act)
    X = torch.randn(400, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    X[::7] *= 1e-6  # near the origin, where signs are fragile
    a = count_patterns(net, X)
    ref = _reference_patterns(net, X)
    assert a.count == _set_count(ref)
    assert np.array_equal(a.patterns, unique_rows(pack_patterns(ref))[0])


def test_padded_overlapping_maxpool_patterns():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.Flatten())
    net = nn.Sequential(*net, nn.Linear(2 * 4 * 4, 2)).eval()
    X = torch.randn(400, 1, 9, 9, generator=torch.Generator().manual_seed(5))
    X[:40] = 0.0
    a = count_patterns(net, X)
    b = count_patterns(net, X.double(), precision="float64")
    assert np.array_equal(a.patterns, b.patterns) and np.array_equal(a.multiplicities, b.multiplicities)
    # reference: relu signs and torch's own max-pool argmax (first maximum) in float64, written out
    from netgeom import trace

    g = trace(net, input_shape=(1, 9, 9))
    with torch.no_grad():
        z = net[0].double()(X.double())
        pool = g.nodes[3]
        _, pos = pool.pool(torch.relu(z).reshape(400, -1), return_indices=True)
    net.float()
    bits = [
        (z > 0).reshape(400, -1),
        torch.stack([(pos >> s) & 1 for s in (3, 2, 1, 0)], -1).reshape(400, -1),
    ]
    ref = torch.cat(bits, 1).bool().numpy()
    assert a.n_bits == ref.shape[1] and a.count == _set_count(ref)
    assert np.array_equal(a.patterns, unique_rows(pack_patterns(ref))[0])


def _rational_bits(net: nn.Sequential, X: torch.Tensor) -> np.ndarray:
    """Relu signs in exact rational arithmetic on the float64 parameters and inputs (independent of
    netgeom's graph code: it reads the torch modules)."""
    from fractions import Fraction

    layers = []
    for m in net:
        if isinstance(m, nn.Linear):
            W = [[Fraction(v) for v in row] for row in m.weight.detach().double().tolist()]
            b = [Fraction(v) for v in m.bias.detach().double().tolist()]
            layers.append([W, b, None])
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            layers[-1][2] = Fraction(getattr(m, "negative_slope", 0.0))
    rows = []
    for x in X.double().tolist():
        h = [Fraction(v) for v in x]
        bits = []
        for W, b, slope in layers:
            z = [sum((w * a for w, a in zip(row, h)), bi) for row, bi in zip(W, b)]
            if slope is not None:
                bits += [v > 0 for v in z]
                h = [v if v > 0 else v * slope for v in z]
            else:
                h = z
        rows.append(bits)
    return np.array(rows, dtype=bool)


def _near_boundary_inputs(net: nn.Sequential, n: int, seed: int) -> torch.Tensor:
    """Random inputs, a third of them moved so that a first-layer unit's pre-activation is ~1e-17: float32
    and float64 cannot decide those, only exact arithmetic can."""
    g = torch.Generator().manual_seed(seed)
    lin = net[0]
    X = torch.randn(n, lin.in_features, generator=g, dtype=torch.float64)
    W, b = lin.weight.detach().double(), lin.bias.detach().double()
    for i in range(0, n, 3):
        j = int(torch.randint(lin.out_features, (1,), generator=g))
        k = int(W[j].abs().argmax())
        if W[j, k] != 0:  # (a pruned-away row has nothing to move)
            X[i, k] -= (W[j] @ X[i] + b[j]) / W[j, k]
    X[1::5] *= 1e-7  # near the origin, where every layer's signs are fragile
    return X


@settings(max_examples=10, deadline=None)
@given(
    st.integers(0, 10_000),
    st.lists(st.integers(1, 6), min_size=1, max_size=3),
    st.sampled_from(["relu", "leaky_relu"]),
    st.booleans(),
)
def test_chain_path_equals_rational_reference_for_every_float64_prefix(seed, widths, act, prune):
    from netgeom import trace
    from netgeom.nets.certified import chain_decide, chain_plan

    net = mlp(4, widths, 2, seed=seed, activation=act)
    if prune:
        with torch.no_grad():
            lin = net[0]
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=torch.Generator().manual_seed(seed)) > 0.5)
    X = _near_boundary_inputs(net, 18, seed)
    ref = _rational_bits(net, X)
    ref32 = _rational_bits(net, X.float())
    g = trace(net)
    plan = chain_plan(g, "cpu")
    assert plan is not None and len(plan.layers) == len(widths)
    relus = [n.index for n in g.nodes if n.op == "relu"]
    for m in range(len(widths) + 1):  # how much runs in float64 (or int8) changes the cost, never the answer
        for lv in (0, 1, 2, 4) if m else (0,):
            for x in (X, X.float()):
                r = ref if x.dtype == torch.float64 else ref32
                dec, _ = chain_decide(g, plan, x, m, int8=lv)
                bits = torch.cat([dec[i] for i in relus], 1).numpy()
                assert np.array_equal(bits, r), (m, lv, x.dtype)
    res = count_patterns(net, X)
    assert np.array_equal(res.patterns, unique_rows(pack_patterns(ref))[0])


def test_chain_path_decides_per_unit_and_redoes_rows_only_when_the_input_is_too_inexact():
    from netgeom import trace
    from netgeom.nets.certified import chain_patterns, chain_plan

    net = mlp(300, [200, 200], 2, seed=0)
    X = torch.rand(256, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = trace(net)
    plan = chain_plan(g, "cpu")
    ref = _reference_patterns(net, X)  # float64: agrees with exact here (margins >> 1e-12)
    for m in range(3):
        out, redo, exact, fixed = chain_patterns(plan, X, m)
        bits = torch.cat([out[n.index] for n in g.nodes if n.op == "relu"], 1).numpy()
        ok = ~redo.numpy()
        assert np.array_equal(bits[ok], ref[ok]) and not exact.any()
        if m >= 1:  # the second layer reads a float64-accurate input: per-unit fix-ups decide everything
            assert not redo.any()
    # a float32 prefix leaves some pairs to float64 dot products, not whole rows
    _, redo, _, fixed = chain_patterns(plan, X, 3)
    assert not fixed.any()
    net_res = count_patterns(net, X)
    assert np.array_equal(net_res.patterns, unique_rows(pack_patterns(ref))[0])


def test_chain_path_sends_pre_activations_near_zero_to_exact_arithmetic():
    net = mlp(4, [5, 4], 2, seed=0)
    X = _near_boundary_inputs(net, 18, 0)
    res = count_patterns(net, X)
    assert res.n_exact >= 3 and res.n_float64 >= res.n_exact
    assert np.array_equal(res.patterns, unique_rows(pack_patterns(_rational_bits(net, X)))[0])


def test_chain_path_is_exact_for_inputs_float32_underflows_or_overflows():
    net = mlp(3, [4, 3], 1, seed=3)
    with torch.no_grad():
        net[0].bias.zero_()  # the first layer's signs then depend on the tiny inputs alone
    g = torch.Generator().manual_seed(0)
    X = torch.cat(
        [
            torch.randn(6, 3, generator=g, dtype=torch.float64) * 1e-300,  # 0 in float32
            torch.randn(6, 3, generator=g, dtype=torch.float64) * 1e-40,  # float32 subnormals
            torch.randn(6, 3, generator=g, dtype=torch.float64) * 1e60,  # inf in float32
        ]
    )
    res = count_patterns(net, X)
    ref = _rational_bits(net, X)
    assert np.array_equal(res.patterns, unique_rows(pack_patterns(ref))[0])
    assert np.array_equal(res.multiplicities, unique_rows(pack_patterns(ref))[1])


def _on_plane_inputs(net: nn.Sequential, seed: int):
    """Inputs exactly on a first-layer unit's hyperplane and one float64 / float32 ulp to either side, and
    (after setting that unit's bias) exactly on a second-layer unit's zero set and one ulp off it. The net's
    parameters are made dyadic (multiples of 1/16) so that the exact zeros are representable."""
    import math
    from fractions import Fraction

    rng = np.random.default_rng(seed)
    lins = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin in lins:
            lin.weight.copy_(torch.round(lin.weight * 16) / 16)
            lin.bias.copy_(torch.round(lin.bias * 16) / 16)
    W1 = lins[0].weight.detach().double()
    n_in, n1 = W1.shape[1], W1.shape[0]
    j, k = int(rng.integers(n1)), int(rng.integers(n_in))
    with torch.no_grad():
        lins[0].weight[j, k] = 0.5  # a power of two: the exact crossing coordinate is dyadic
    W1 = [[Fraction(v) for v in r] for r in lins[0].weight.detach().double().tolist()]
    b1 = [Fraction(v) for v in lins[0].bias.detach().double().tolist()]
    rows64, rows32 = [], []
    for _ in range(2):
        x = [Fraction(int(v), 32) for v in rng.integers(-64, 65, n_in)]
        x[k] = -(sum(W1[j][i] * x[i] for i in range(n_in) if i != k) + b1[j]) / W1[j][k]
        xs = [float(v) for v in x]
        assert Fraction(xs[k]) == x[k]
        for d in (-math.inf, 0.0, math.inf):
            y = list(xs)
            y[k] = math.nextafter(y[k], d) if d else y[k]
            rows64.append(y)
            y32 = np.array(xs, dtype=np.float32)
            if d:
                y32[k] = np.nextafter(y32[k], np.float32(d))
            rows32.append(y32.tolist())
    # a second-layer unit exactly at zero for a base point: its bias is minus the rest, exactly
    if len(lins) > 2:
        slope = Fraction(getattr(net[1], "negative_slope", 0.0))
        x = [Fraction(int(v), 32) for v in rng.integers(-64, 65, n_in)]
        z1 = [sum((w * a for w, a in zip(r, x)), bb) for r, bb in zip(W1, b1)]
        h1 = [a if a > 0 else a * slope for a in z1]
        W2 = [[Fraction(v) for v in r] for r in lins[1].weight.detach().double().tolist()]
        j2 = int(rng.integers(len(W2)))
        b2 = -sum(w * a for w, a in zip(W2[j2], h1))
        if Fraction(float(b2)) == b2:
            with torch.no_grad():
                lins[1].bias[j2] = float(b2)
            xs = [float(v) for v in x]
            for d in (-math.inf, 0.0, math.inf):
                y = list(xs)
                y[0] = math.nextafter(y[0], d) if d else y[0]
                rows64.append(y)
    return torch.tensor(rows64, dtype=torch.float64), torch.tensor(rows32, dtype=torch.float32)


@settings(max_examples=20, deadline=None)
@given(
    st.integers(0, 10_000),
    st.lists(st.integers(1, 6), min_size=1, max_size=3),
    st.integers(1, 5),
    st.sampled_from(["relu", "leaky_relu"]),
)
def test_inputs_on_a_hyperplane_or_one_ulp_off_get_the_exact_pattern(seed, widths, n_in, act):
    from netgeom import trace
    from netgeom.nets.certified import chain_decide, chain_plan, graph_patterns

    net = mlp(n_in, widths, 2, seed=seed, activation=act).double()
    X64, X32 = _on_plane_inputs(net, seed)
    g = trace(net)
    plan = chain_plan(g, "cpu")
    relus = [n.index for n in g.nodes if n.op == "relu"]
    # the rows exactly on the plane need rational arithmetic (without biases, rows are first scaled by powers
    # of two, _homogeneous_rows: one input on the plane x = 0 and one subnormal ulp off it are then decided)
    if any(bool((m.bias != 0).any()) for m in [m for m in net if isinstance(m, nn.Linear)][:-1]):
        assert count_patterns(net, X64).n_exact >= 2
    for X in (X64, X32):
        ref = _rational_bits(net, X)
        for res in (count_patterns(net, X), count_patterns(net, X, precision="float64", batch_size=4)):
            u, c = unique_rows(pack_patterns(ref))
            assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c)
        # row by row: the per-unit chain path for every float64 prefix, and the per-row graph path
        for m in range(len(widths) + 1):
            for lv in (0, 1, 4) if m else (0,):
                dec, _ = chain_decide(g, plan, X, m, int8=lv)
                assert np.array_equal(torch.cat([dec[i] for i in relus], 1).numpy(), ref), (m, lv)
        for dt in (torch.float32, torch.float64):
            dec, _ = graph_patterns(g, X, dtype=dt)
            assert np.array_equal(torch.cat([dec[i] for i in relus], 1).numpy(), ref), dt


@pytest.mark.parametrize("scale", [5e-324, 1e-310, 1e-170, 1e-40])
def test_underflowing_products_are_never_decided_by_their_float_value(scale):
    """w x below the normal range rounds to 0 (or loses digits) outside the standard model of rounding;
    the sign must still be the exact one (regression: a float32 underflow allowance of 0 and norms that
    squared to 0 decided 0.5 * 5e-324 as exactly 0)."""
    from netgeom import trace
    from netgeom.nets.certified import graph_patterns

    net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)).double()
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[0].bias.zero_()
    X = torch.tensor([[-scale], [0.0], [scale]], dtype=torch.float64)
    want = np.array([[False], [False], [True]])
    assert np.array_equal(_rational_bits(net, X), want)
    g = trace(net)
    for dt in (torch.float32, torch.float64):
        dec, _ = graph_patterns(g, X, dtype=dt)
        assert np.array_equal(dec[2].numpy(), want), dt
    for precision in ("float32", "float64"):
        res = count_patterns(net, X, precision=precision)
        u, c = unique_rows(pack_patterns(want))
        assert np.array_equal(res.patterns, u) and np.array_equal(res.multiplicities, c), precision


def test_count_patterns_quiet_and_progress(capsys):
    """``verbose=False`` writes nothing; with ``verbose=True`` the bar counts every input once it shows (a
    zero delay here, as if counting had been slow)."""
    from unittest import mock

    import tqdm.auto

    from netgeom.regions import patterns as mod

    net = mlp(3, [5], 1, seed=0)
    X = torch.rand(700, 3, generator=torch.Generator().manual_seed(0))
    ref = count_patterns(net, X, verbose=False, batch_size=100)
    assert capsys.readouterr().err == ""
    seen = []

    def eager(*a, **kw):
        kw["delay"] = 0
        bar = tqdm.auto.tqdm(*a, **kw)
        seen.append(bar)
        return bar

    with mock.patch.object(mod, "tqdm", eager):
        got = count_patterns(net, X, verbose=True, batch_size=100)
    assert got.count == ref.count
    assert seen and seen[0].n == 700 and seen[0].total == 700
    assert "count_patterns" in capsys.readouterr().err


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 20), st.integers(0, 40), st.integers(1, 9), st.integers(0, 2**31 - 1))
def test_pool_position_bits_are_the_binary_positions(nb, rows, size, seed):
    """The argmax position of every window, written in nb bits, most significant first (as the compiled
    byte-plane path and the former int64 shifts both give)."""
    from types import SimpleNamespace

    from netgeom.regions.patterns import _bits_of

    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 2**nb, (rows, size), generator=g)
    relu = torch.rand(rows, 3, generator=g) > 0.5
    nodes = [SimpleNamespace(index=0, op="relu", size=3), SimpleNamespace(index=1, op="maxpool", size=size)]
    got = _bits_of({0: relu, 1: pos}, nodes, [3, size * nb])
    want = np.array(
        [list(relu[r].numpy()) + [bool((int(p) >> (nb - 1 - j)) & 1) for p in pos[r] for j in range(nb)]
         for r in range(rows)],
        dtype=bool,
    ).reshape(rows, 3 + size * nb)
    assert got.dtype == np.bool_ and np.array_equal(got, want)
