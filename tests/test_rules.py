import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from netgeom.nets import mlp, small_convnet
from netgeom.pruning import Masks, magnitude_prune, random_prune
from netgeom.pruning.rules import UnreachableSparsityError

RULES = [magnitude_prune, lambda *a, **k: random_prune(*a, seed=5, **k)]


def flat_weights(model, names):
    p = dict(model.named_parameters())
    return np.concatenate([p[n].detach().numpy().ravel() for n in names])


def brute_force_global(model, names, n_remove, kept=None):
    """Reference: numpy stable argsort of |w| over the still-present weights."""
    w = np.abs(flat_weights(model, names)).astype(np.float64)
    kept = np.ones_like(w, bool) if kept is None else kept
    idx = np.flatnonzero(kept)
    drop = idx[np.argsort(w[idx], kind="stable")[:n_remove]]
    out = kept.copy()
    out[drop] = False
    return out


def flat_mask(masks, names):
    return np.concatenate([masks[n].numpy().ravel() for n in names])


# random widths and sparsities empty whole layers now and then; the warning is tested elsewhere
@pytest.mark.filterwarnings("ignore:.*removes every weight:UserWarning")
@settings(max_examples=30, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    sparsity=st.floats(0, 0.99),
    seed=st.integers(0, 100),
)
def test_global_magnitude_matches_brute_force(widths, sparsity, seed):
    m = mlp(5, widths, 3, seed=seed)
    names = [n for n, _ in m.named_parameters() if n.endswith("weight")]
    n = sum(p.numel() for k, p in m.named_parameters() if k in names)
    masks = magnitude_prune(m, sparsity)
    assert masks.n_kept() == n - round(sparsity * n)
    np.testing.assert_array_equal(flat_mask(masks, names), brute_force_global(m, names, round(sparsity * n)))
    # second round: fraction of the remaining weights, nested, read through the masks
    m2 = magnitude_prune(m, sparsity, masks=masks)
    c = masks.n_kept()
    assert m2.n_kept() == c - round(sparsity * c)
    assert m2.is_nested_in(masks)
    ref = brute_force_global(m, names, round(sparsity * c), kept=flat_mask(masks, names))
    np.testing.assert_array_equal(flat_mask(m2, names), ref)


@settings(max_examples=20, deadline=None)
@given(sparsity=st.floats(0, 0.95), seed=st.integers(0, 50))
def test_layer_scope_prunes_each_layer_by_magnitude(sparsity, seed):
    m = mlp(6, [9, 7], 4, seed=seed)
    masks = magnitude_prune(m, sparsity, scope="layer")
    for name, p in m.named_parameters():
        if not name.endswith("weight"):
            assert name not in masks  # biases are never masked
            continue
        k = p.numel() - round(sparsity * p.numel())
        mk = masks[name]
        assert int(mk.sum()) == k
        if 0 < k < p.numel():
            assert p.detach().abs()[mk].min() >= p.detach().abs()[~mk].max()


def test_imp_density_is_exact_over_rounds():
    m = mlp(10, [30, 20], 5, seed=0)
    n = Masks.ones(m).n_total()
    masks = None
    for r in range(1, 9):
        masks = magnitude_prune(m, 1 - 0.8**r, masks=masks, relative_to="all")
        assert abs(masks.n_kept() - 0.8**r * n) <= 0.5 + 1e-9
    with pytest.raises(ValueError, match="cannot come back"):
        magnitude_prune(m, 0.1, masks=masks, relative_to="all")


def test_already_pruned_stay_pruned_even_when_large():
    m = mlp(4, [6], 2, seed=0)
    masks = Masks.ones(m)
    big = m[0].weight.detach().abs().argmax()
    masks["0.weight"].view(-1)[big] = False
    out = magnitude_prune(m, 0.3, masks=masks)
    assert not out["0.weight"].view(-1)[big]
    assert out.is_nested_in(masks)


def test_ties_broken_by_position():
    m = mlp(3, [4], 2, seed=0)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(1.0)
    masks = magnitude_prune(m, 0.25)  # 20 weights, 5 removed: the first five in forward order
    flat = flat_mask(masks, ["0.weight", "2.weight"])
    assert not flat[:5].any() and flat[5:].all()


def test_per_layer_dict_list_and_errors():
    m = mlp(8, [10], 4, seed=0)
    d = magnitude_prune(m, per_layer={"0.weight": 0.5})
    assert d.layer_densities() == {"0.weight": 0.5, "2.weight": 1.0}
    lst = magnitude_prune(m, per_layer=[0.5, 0.25])
    assert lst.layer_densities() == {"0.weight": 0.5, "2.weight": 0.75}
    with pytest.raises(KeyError, match="not a prunable"):
        magnitude_prune(m, per_layer={"0.bias": 0.5})
    with pytest.raises(ValueError, match="one sparsity per prunable layer"):
        magnitude_prune(m, per_layer=[0.5])
    with pytest.raises(ValueError, match="include_output=False"):
        magnitude_prune(m, per_layer={"2.weight": 0.5}, include_output=False)
    with pytest.raises(ValueError, match="not both"):
        magnitude_prune(m, 0.5, per_layer=[0.5, 0.5])
    with pytest.raises(ValueError, match="per_layer\\['0.weight'\\]"):
        magnitude_prune(m, per_layer={"0.weight": 1.0})


def test_per_layer_from_an_allocation_like_object():
    """The region-bound allocation hands over {param_name: sparsity} (numpy floats allowed)."""
    m = mlp(8, [10, 6], 4, seed=0)
    alloc = {"0.weight": np.float64(0.75), "2.weight": np.float64(0.5), "4.weight": np.float64(0.0)}
    out = random_prune(m, per_layer=alloc, relative_to="all", seed=1)
    assert out.layer_densities() == {"0.weight": 0.25, "2.weight": 0.5, "4.weight": 1.0}


def test_include_output_false_leaves_classifier_dense():
    m = mlp(8, [10], 4, seed=0)
    out = magnitude_prune(m, 0.5, include_output=False)
    assert set(out) == {"0.weight"} and out.density() == 0.5


@pytest.mark.parametrize("rule", RULES)
def test_protected_weights_never_pruned_and_unreachable_error(rule):
    m = mlp(6, [8], 3, seed=0)
    gen = torch.Generator().manual_seed(0)
    prot = {"0.weight": torch.rand(8, 6, generator=gen) < 0.3}
    prot["2.weight"] = torch.zeros(3, 8, dtype=torch.bool)
    # protect the smallest output weights: magnitude pruning would remove them first
    prot["2.weight"].view(-1)[m[2].weight.detach().abs().view(-1).argsort()[:5]] = True
    calls = []

    def protect(model, masks):
        calls.append(masks.density())
        return prot

    n_prot = int(sum(v.sum() for v in prot.values()))
    n = 8 * 6 + 3 * 8
    s = (n - n_prot) / n * 0.9
    out = rule(m, s, protect=protect)
    assert calls == [1.0]
    for k, v in prot.items():
        assert out[k][v].all()
    assert out.n_kept() == n - round(s * n)
    with pytest.raises(UnreachableSparsityError, match="unprotected"):
        rule(m, (n - n_prot + 1) / n, protect=protect)


def test_protect_bad_returns():
    m = mlp(4, [5], 2, seed=0)
    with pytest.raises(ValueError, match="shape"):
        magnitude_prune(m, 0.5, protect=lambda mo, ma: {"0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(KeyError, match="does not have"):
        magnitude_prune(m, 0.5, protect=lambda mo, ma: {"x": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="boolean"):
        magnitude_prune(m, 0.5, protect=lambda mo, ma: {"0.weight": torch.ones(5, 4)})
    with pytest.raises(TypeError, match="callable"):
        magnitude_prune(m, 0.5, protect=3)


def test_random_prune_seeded_and_uniform():
    m = mlp(20, [50], 10, seed=0)
    a, b = random_prune(m, 0.5, seed=1), random_prune(m, 0.5, seed=1)
    c = random_prune(m, 0.5, seed=2)
    assert a.equals(b) and not a.equals(c)
    # uniform choice: over many seeds every weight is removed about half the time (binomial check)
    kept = np.mean([random_prune(m, 0.5, seed=s)["0.weight"].numpy() for s in range(200)], axis=0)
    assert abs(kept.mean() - 0.5) < 0.01
    assert np.abs(kept - 0.5).max() < 5 * np.sqrt(0.25 / 200) + 0.05
    # unlike magnitude pruning it ignores the weights' size
    assert not a.equals(magnitude_prune(m, 0.5))


def test_conv_model_prunes_kernels():
    m = small_convnet((1, 16), 3, channels=4, seed=0)
    out = magnitude_prune(m, 0.5, scope="layer")
    for k, v in out.items():
        assert v.shape == dict(m.named_parameters())[k].shape
        assert abs(out.layer_densities()[k] - 0.5) <= 0.5 / v.numel() + 1e-12


@pytest.mark.parametrize("rule", RULES)
def test_bad_inputs(rule):
    m = mlp(4, [5], 2, seed=0)
    for s in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            rule(m, s)
    with pytest.raises(TypeError):
        rule(m, "half")
    with pytest.raises(ValueError, match="shape"):
        rule(m, 0.5, masks={"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(KeyError, match="no parameter"):
        rule(m, 0.5, masks={"5.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no Linear or Conv"):
        rule(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="scope"):
        rule(m, 0.5, scope="neuron")
    with pytest.raises(ValueError, match="relative_to"):
        rule(m, 0.5, relative_to="some")
    bad = mlp(4, [5], 2, seed=0)
    with torch.no_grad():
        bad[0].weight[1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        rule(bad, 0.5)
    with pytest.raises(TypeError, match="nn.Module"):
        rule("model", 0.5)


def test_accepts_the_region_bound_allocation():
    from netgeom.regions.allocation import allocate_densities

    m = mlp(40, [100, 100], 10, seed=0)
    alloc = allocate_densities(model=m, total_density=0.2)
    per_layer = alloc.per_layer(m)
    for include_output in (True, False):
        out = magnitude_prune(m, per_layer=per_layer, include_output=include_output, relative_to="all")
        for k, d in zip(["0.weight", "2.weight"], alloc.densities):
            assert abs(out.layer_densities()[k] - d) <= 0.5 / out[k].numel() + 1e-12
        assert out.layer_densities().get("4.weight", 1.0) == 1.0


def test_pruning_a_whole_layer_away_warns():
    net = mlp(2, [2], 1, seed=0)
    with torch.no_grad():
        net[0].weight.fill_(1e-3)  # the four smallest weights of the network: global pruning takes them all
        net[2].weight.fill_(1.0)
    with pytest.warns(UserWarning, match="pruning removes every weight of '0.weight'"):
        masks = magnitude_prune(net, 4 / 6)
    assert not masks["0.weight"].any() and masks["2.weight"].all()


@pytest.mark.parametrize("rule", RULES)
def test_rules_leave_the_weights_unless_apply_is_true(rule):
    from netgeom.data.datasets import load_digits
    from netgeom.training import evaluate

    data = load_digits(seed=0)
    m = mlp(64, [16], 10, seed=0)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    dense = evaluate(m, data)
    masks = rule(m, 0.9)
    # the default returns masks only: the network (and so its accuracy) is still the dense one
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert evaluate(m, data) == dense
    m2 = mlp(64, [16], 10, seed=0)
    masks2 = rule(m2, 0.9, apply=True)
    assert masks2.equals(masks)
    ref = masks.apply(mlp(64, [16], 10, seed=0))
    for k, v in m2.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k])
        if k in masks:
            assert torch.equal(v != 0, masks[k] & (before[k] != 0))  # exactly the pruned weights zeroed
    with pytest.raises(TypeError, match="apply"):
        rule(m, 0.5, apply="yes")


def test_per_layer_with_a_global_scope_is_refused():
    # per_layer sets each layer's own fraction; a global ranking would silently be another rule
    m = mlp(6, [5], 3, seed=0)
    for rule in (magnitude_prune, random_prune):
        with pytest.raises(ValueError, match="scope='global' ranks all layers together"):
            rule(m, per_layer={"0.weight": 0.5}, scope="global")
        a = rule(m, per_layer={"0.weight": 0.5}, scope="layer")
        assert a.equals(rule(m, per_layer={"0.weight": 0.5}))
