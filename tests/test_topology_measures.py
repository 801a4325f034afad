"""Neural persistence, the topology bound, MSF retention, the protect callback and the demo section."""

import copy
import types

import numpy as np
import pytest
import torch
from scipy import sparse
from scipy.sparse.csgraph import minimum_spanning_tree

from netgeom import Masks, affine_layers, mlp, small_convnet
from netgeom.topology import (
    msf_retention,
    msf_retention_curve,
    network_graph,
    neural_persistence,
    neural_persistence_layer_max,
    spanning_forest_protect,
    topology_bound,
    zeroth_persistence,
)
from netgeom.topology.measures import demo_section


def test_topology_bound_worked_values():
    # by hand: 784*300 + 300*100 + 100*10 = 266200 edges; (1083) + (399) + (109) = 1591 tree edges
    b = topology_bound([784, 300, 100, 10])
    assert sum(b.n_possible) == 266200 and sum(b.n_tree) == 1591
    assert np.isclose(b.max_sparsity, 1 - 1591 / 266200) and round(100 * b.max_sparsity, 2) == 99.40
    assert np.isclose(b.eta, 266200 / 1591)
    # 78400 + 10000 + 1000 = 89400 edges; 883 + 199 + 109 = 1191 tree edges
    b2 = topology_bound([784, 100, 100, 10])
    assert sum(b2.n_possible) == 89400 and sum(b2.n_tree) == 1191
    assert round(100 * b2.max_sparsity, 2) == 98.67
    assert np.allclose(b.layer_max_sparsity, [1 - 1083 / 235200, 1 - 399 / 30000, 1 - 109 / 1000])


def test_topology_bound_of_models():
    net = mlp(20, [30], 5, seed=0)
    dense = topology_bound(net)
    assert dense.n_msf == dense.n_tree and dense.sparsity == 0.0
    assert np.isclose(dense.max_sparsity_actual, dense.max_sparsity)
    assert np.isclose(dense.max_sparsity, topology_bound([20, 30, 5]).max_sparsity)
    m = Masks.ones(net)
    m["0.weight"][:, 0] = False  # input 0 isolated: one fewer forest edge
    sp = topology_bound(net, m)
    assert sp.n_msf[0] == 20 + 30 - 2 and sp.n_unmasked[0] == 570
    assert np.isclose(sp.msf_over_unmasked, (48 + 34) / (570 + 150))
    with pytest.raises(ValueError):
        topology_bound([10])
    with pytest.raises(ValueError, match="only applies to a model"):
        topology_bound([3, 4], masks=m)


def _np_reference(W, mask, p):
    """Per-layer-max forest NP from scipy's minimum spanning tree of 2 - w̃ (independent of our code)."""
    n_out, n_in = W.shape
    mask = mask & (W != 0)
    a = np.abs(W) * mask
    w = a / a.max()
    j, i = np.nonzero(mask)
    T = minimum_spanning_tree(sparse.coo_matrix((2 - w[j, i], (i, n_in + j)), shape=(n_in + n_out,) * 2))
    pers = 1 - (2 - T.data)
    return np.sum(pers**p) ** (1 / p), np.sum(pers**p) ** (1 / p) / (n_in + n_out - 1) ** (1 / p)


def _rieck_reference(weights, p=2.0):
    """Rieck et al.'s neural persistence written out plainly: weights (n_out, n_in) with pruned entries set
    to 0, divided by the network's largest |w|; per layer a Python Kruskal over *all* n_in * n_out entries
    (zeros included, entering last at w̃ = 0), unpaired components closed at 0; p-norm over all |V|
    points / (|V| - 1)^(1/p); mean over layers. Returns (mean, per-layer normalised values)."""
    top = max(float(np.abs(W).max()) for W in weights)
    normed = []
    for W in weights:
        n_out, n_in = W.shape
        w = np.abs(W) / top if top > 0 else np.zeros(W.shape)
        parent = list(range(n_in + n_out))

        def find(a, parent=parent):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        points = []
        for k in sorted(range(W.size), key=lambda k: -w.flat[k]):
            j, i = divmod(k, n_in)
            ra, rb = find(i), find(n_in + j)
            if ra != rb:
                parent[ra] = rb
                points.append(1.0 - w.flat[k])
        roots = len({find(x) for x in range(n_in + n_out)})
        points += [1.0] * roots  # never merges: persistence 1 (death at 0)
        assert len(points) == n_in + n_out
        normed.append(np.sum(np.asarray(points) ** p) ** (1 / p) / (n_in + n_out - 1) ** (1 / p))
    return float(np.mean(normed)), normed


def _pruned_copy(net, masks):
    out = copy.deepcopy(net)
    masks.apply(out)
    return out


@pytest.mark.parametrize("density", [1.0, 0.3, 0.02])
@pytest.mark.parametrize("widths", [[12, 15, 9, 4], [30, 20, 3]])
def test_neural_persistence_is_rieck_et_al(widths, density):
    net = mlp(widths[0], widths[1:-1], widths[-1], seed=1)
    m = Masks.ones(net)
    rng = np.random.default_rng(int(100 * density))
    for k in m:
        m[k] = torch.from_numpy(rng.random(tuple(m[k].shape)) < density)
    r = neural_persistence(net, m)
    # independent reference on the pruned weights (pruned entries zero)
    Ws = [(lay.kernel.numpy() * m[lay.param_name].numpy()) for lay in affine_layers(net)]
    ref, layers = _rieck_reference(Ws)
    assert abs(r.network_np - ref) <= 1e-12 and np.allclose(r.layer_np_normalized, layers, rtol=0, atol=1e-12)
    assert r.definition == "rieck" and r.normalize == "network" and r.p == 2.0
    # pruned as absent edges (masks) == pruned as zero weights (no masks) == both
    pruned = _pruned_copy(net, m)
    for other in (neural_persistence(pruned), neural_persistence(pruned, m)):
        assert other.network_np == r.network_np and other.layer_np == r.layer_np
    # invariant under a global rescaling of all weights and under permuting hidden units
    scaled = copy.deepcopy(pruned)
    with torch.no_grad():
        for prm in scaled.parameters():
            prm.mul_(8.0)  # a power of two: exact in float32
    assert abs(neural_persistence(scaled).network_np - r.network_np) <= 1e-12
    perm = copy.deepcopy(pruned)
    idx = torch.from_numpy(rng.permutation(widths[1]))
    with torch.no_grad():
        perm[0].weight.copy_(perm[0].weight[idx])
        perm[2].weight.copy_(perm[2].weight[:, idx])
    assert abs(neural_persistence(perm).network_np - r.network_np) <= 1e-12


def test_neural_persistence_matches_gudhi_on_784_100_100_10():
    """The issue's case: Rieck's definition vs gudhi on the raw matrices (network max), dense and pruned;
    the per-layer-max variant is the much smaller number that was reported as NP before."""
    import gudhi

    net = mlp(784, [100, 100], 10, seed=0)
    Ws = [lay.kernel.numpy() for lay in affine_layers(net)]
    for density in (1.0, 0.02):
        rng = np.random.default_rng(0)
        m = Masks({k: torch.from_numpy(rng.random(tuple(v.shape)) < density)
                   for k, v in Masks.ones(net).items()})
        Wp = [W * m[f"{2 * k}.weight"].numpy() for k, W in enumerate(Ws)]
        top = max(np.abs(W).max() for W in Wp)
        vals = []
        for W in Wp:
            n_out, n_in = W.shape
            st_ = gudhi.SimplexTree()
            st_.insert_batch(np.arange(n_in + n_out)[None, :], np.zeros(n_in + n_out))
            j, i = np.nonzero(np.ones(W.shape, bool))  # every entry, zeros included (as the authors do)
            st_.insert_batch(np.vstack([i, n_in + j]), 1.0 - np.abs(W[j, i]) / top)
            st_.compute_persistence(min_persistence=-1.0)
            iv = st_.persistence_intervals_in_dimension(0)
            pers = np.where(np.isinf(iv[:, 1]), 1.0, iv[:, 1] - iv[:, 0])  # essential closed at w̃ = 0
            vals.append(np.sqrt((pers**2).sum()) / np.sqrt(n_in + n_out - 1))
        r = neural_persistence(net, m)
        assert abs(r.network_np - np.mean(vals)) <= 1e-12
        if density == 1.0:
            lm = neural_persistence_layer_max(net)
            assert 0.25 < r.network_np < 0.35 and lm.network_np < 0.1  # issue 12: 0.2932 vs 0.0515


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_neural_persistence_layer_max_matches_reference(p):
    net = mlp(12, [15, 9], 4, seed=2)
    m = Masks.ones(net)
    rng = np.random.default_rng(0)
    for k in m:
        m[k] = torch.from_numpy(rng.random(tuple(m[k].shape)) < 0.6)
    r = neural_persistence_layer_max(net, m, p=p)
    refs = []
    for lay in affine_layers(net, m):
        raw, normed = _np_reference(lay.kernel.numpy(), m[lay.param_name].numpy(), p)
        refs.append(normed)
        assert np.isclose(r.layer_np[len(refs) - 1], raw)
    assert np.allclose(r.layer_np_normalized, refs) and np.isclose(r.network_np, np.mean(refs))
    assert all(0 <= v <= 1 for v in r.layer_np_normalized) and r.definition == "layer_max"
    rn = neural_persistence_layer_max(net, m, p=p, normalize="network")
    assert rn.normalize == "network" and not np.allclose(rn.layer_np, r.layer_np)
    with pytest.raises(ValueError, match="p must be"):
        neural_persistence_layer_max(net, p=0.5)
    with pytest.raises(ValueError, match="p must be"):
        neural_persistence(net, p=0.5)
    # the default measure counts every vertex (|V| points), the variant only forest edges
    full = neural_persistence(net, m, p=p)
    assert all(c >= 1 for c in full.n_components) and full.n_components == r.n_components


def test_all_zero_and_all_pruned_layers():
    """A zero weight is an absent edge: an all-zero layer and a fully pruned one are the same graph, with
    every vertex its own component, in the diagram, the forest, NP, the bound and the retention."""
    net = mlp(6, [5], 4, seed=0)
    m = Masks.ones(net)
    m["2.weight"][:] = False  # all pruned
    zero = copy.deepcopy(net)
    with torch.no_grad():
        zero[2].weight.zero_()  # all zero, unmasked
    tiny = copy.deepcopy(net)
    with torch.no_grad():
        tiny[2].weight.mul_(1e-30)  # tiny (float32): w̃ ~ 1e-30 under network normalisation
    a, b, c = neural_persistence(net, m), neural_persistence(zero), neural_persistence(tiny)
    nv = 5 + 4
    assert a.n_components[1] == b.n_components[1] == nv and c.n_components[1] == 1
    for r in (a, b):
        assert r.layer_np[1] == np.sqrt(nv) and r.layer_np_normalized[1] == np.sqrt(nv / (nv - 1))
        assert r.layer_np_normalized[0] == a.layer_np_normalized[0]
    # continuous: tiny weights give pairs of persistence ~1, the same total as the absent edges
    assert abs(c.layer_np[1] - a.layer_np[1]) < 1e-12
    assert neural_persistence_layer_max(zero).layer_np[1] == 0.0
    for model, masks in ((net, m), (zero, None)):
        G = network_graph(model, masks)
        d = zeroth_persistence(G[1])
        assert d.n_edges == 0 and d.n_pairs == 0 and d.n_essential == nv and not d.msf_mask.any()
        b_ = topology_bound(model, masks)
        assert b_.n_unmasked[1] == 0 and b_.n_msf[1] == 0 and np.isnan(b_.layer_msf_over_unmasked[1])
        assert b_.n_msf[0] == 6 + 5 - 1 and b_.sparsity == 20 / (30 + 20)
        prot = spanning_forest_protect(model, masks)
        assert not prot["2.weight"].any() and int(prot["0.weight"].sum()) == 10
    ret = msf_retention(net, m)
    assert ret.n_msf == [10, 8] and ret.retention == [1.0, 0.0] and ret.expected == [1.0, 0.0]
    r0 = msf_retention(zero, Masks.ones(zero))  # the dense network itself has an edgeless layer
    assert r0.n_msf[1] == 0 and r0.retention[1] == 1.0 and r0.expected[1] == 1.0
    assert msf_retention(net, zero).retention == ret.retention  # zeros of a pruned model read as pruned


def test_retention():
    net = mlp(40, [100], 10, seed=0)
    full = msf_retention(net, Masks.ones(net))
    assert full.retention_total == 1.0 and full.all_unchanged and full.sparsity == 0.0
    # keep the forest plus a random half of the rest: everything retained, diagrams unchanged
    prot = spanning_forest_protect(net)
    rng = np.random.default_rng(1)
    keep = Masks({k: v | torch.from_numpy(rng.random(tuple(v.shape)) < 0.5) for k, v in prot.items()})
    r = msf_retention(net, keep)
    assert r.retention == [1.0, 1.0] and r.all_unchanged
    # random pruning at density 0.5 keeps about half of the forest and breaks the diagram
    rand = Masks({k: torch.from_numpy(rng.random(tuple(v.shape)) < 0.5) for k, v in prot.items()})
    r2 = msf_retention(net, rand)
    assert abs(r2.retention_total - r2.expected_total) < 0.15 and abs(r2.expected_total - 0.5) < 0.05
    assert not any(r2.diagram_unchanged)
    # a pruned model with masks applied: zeros read as pruned unless masks are given
    pruned = mlp(40, [100], 10, seed=0)
    keep.apply(pruned)
    r3 = msf_retention(net, pruned)
    assert r3.masks_source.startswith("zeros") and r3.retention == [1.0, 1.0] and r3.all_unchanged
    curve = msf_retention_curve(net, [Masks.ones(net), keep, rand])
    assert curve.retention_total[0] == 1.0 and curve.sparsity == sorted(curve.sparsity)
    with pytest.raises(ValueError, match="different layers"):
        msf_retention(net, mlp(40, [50], 10, seed=0))


def test_protect_equals_forest_and_keeps_diagram():
    net = mlp(10, [20, 20], 5, seed=3)
    m = Masks.ones(net)
    rng = np.random.default_rng(0)
    for k in m:
        m[k] = torch.from_numpy(rng.random(tuple(m[k].shape)) < 0.5)
    prot = spanning_forest_protect(net, m)
    G = network_graph(net, m)
    for g in G:
        d = zeroth_persistence(g)
        assert np.array_equal(prot[g.param_name].numpy(), d.msf_mask)
        only = zeroth_persistence(g.weights, prot[g.param_name].numpy())  # prune all but the protected
        assert only.equals(d, atol=0.0)


def test_protect_with_magnitude_prune():
    from netgeom.pruning.rules import UnreachableSparsityError, magnitude_prune

    net = mlp(8, [16, 12], 4, seed=0)
    masks = Masks.ones(net)
    bound = topology_bound(net).max_sparsity
    for _ in range(30):
        before = [zeroth_persistence(g) for g in network_graph(net, masks)]
        try:
            masks = magnitude_prune(net, 0.3, protect=spanning_forest_protect, masks=masks)
        except UnreachableSparsityError:
            break
        after = [zeroth_persistence(g) for g in network_graph(net, masks)]
        for a, b in zip(before, after):
            assert a.equals(b, atol=0.0) and np.array_equal(a.msf_mask, b.msf_mask)
        assert masks.sparsity() <= bound + 1e-12
    else:
        pytest.fail("protected pruning never stopped")
    # the last step removes every unprotected weight: exactly the forests remain, at the bound
    prot = spanning_forest_protect(net, masks)
    s = (masks.n_kept() - prot.n_kept()) / masks.n_kept()
    masks = magnitude_prune(net, s, protect=spanning_forest_protect, masks=masks)
    assert masks.equals(prot) and np.isclose(masks.sparsity(), bound, rtol=0, atol=1e-15)
    with pytest.raises(UnreachableSparsityError):
        magnitude_prune(net, 0.1, protect=spanning_forest_protect, masks=masks)


def test_protect_conv():
    net = small_convnet((1, 16), channels=4, seed=0).eval()
    prot = spanning_forest_protect(net)
    params = dict(net.named_parameters())
    assert all(prot[k].shape == params[k].shape for k in prot)
    assert int(prot["3.weight"][:, :, 0].sum()) == 4 + 4 - 1  # one channel-forest edge = a whole slice
    assert bool(prot["3.weight"][:, :, 0].eq(prot["3.weight"][:, :, 1]).all())


def test_results_plot_and_demo(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = mlp(40, [30, 30], 10, seed=0).eval()
    rng = np.random.default_rng(0)
    levels = []
    m = Masks.ones(net)
    for _ in range(2):
        m = Masks({k: v & torch.from_numpy(rng.random(tuple(v.shape)) < 0.7) for k, v in m.items()})
        levels.append({"masks": m})
    pruned = mlp(40, [30, 30], 10, seed=0).eval()
    m.apply(pruned)
    for r in (neural_persistence(net), topology_bound(net, m), msf_retention(net, m),
              msf_retention_curve(net, [lv["masks"] for lv in levels])):
        assert r.plot() is not None and isinstance(r.to_json(), str)
    plt.close("all")
    ctx = types.SimpleNamespace(model=net, pruned_model=pruned, masks=m, imp_levels=levels, out_dir=tmp_path,
                                seed=0, quick=True)
    text = demo_section(ctx)
    assert text.startswith("## ") and "(topology_np.png)" in text and "(topology_retention.png)" in text
    assert (tmp_path / "topology_np.png").exists() and (tmp_path / "topology_retention.png").exists()


def test_topology_preserving_imp_keeps_each_diagram_at_pruning_time():
    """The protect callback through the real IMP harness (not a copy of it): at every pruning step, each
    layer's diagram of the trained weights is the same before and after the step."""
    from netgeom.data.datasets import load_digits
    from netgeom.pruning import IMP, IMPConfig
    from netgeom.training import TrainConfig

    cfg = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10},
                    data={"name": "digits", "seed": 0}, train=TrainConfig(epochs=1, batch_size=64, lr=0.05),
                    rounds=3, q=0.5)
    res = IMP(cfg, verbose=False, data=load_digits(seed=0), protect=spanning_forest_protect).run()
    bound = topology_bound([64, 16, 10]).max_sparsity
    for r in range(1, len(res.levels)):
        trained = res.model_at(r - 1)  # the weights that level r's masks were chosen on
        before = network_graph(trained, res.levels[r - 1].masks)
        after = network_graph(trained, res.levels[r].masks)
        for gb, ga in zip(before, after):
            db, da = zeroth_persistence(gb), zeroth_persistence(ga)
            assert da.equals(db, atol=0.0) and np.array_equal(da.msf_mask, db.msf_mask)
        assert abs(res.levels[r].density - 0.5**r) < 1e-3 and res.levels[r].sparsity <= bound
    assert res.config["protect"].endswith("spanning_forest_protect")


def test_topology_bound_unrolled_counts_receptive_field_edges():
    from netgeom import lenet5

    b = topology_bound(lenet5(seed=0), conv="unrolled")
    # conv1: 6*24*24 outputs x 5*5 inputs; conv2 (pool folded): 16*8*8 outputs x 6 channels x 10*10
    # pre-pooling inputs; fc1 (pool folded): 120 x 16*8*8; then the dense layers
    assert b.n_possible == [6 * 576 * 25, 1024 * 600, 120 * 1024, 120 * 84, 84 * 10]
    assert b.n_tree[0] == 784 + 3456 - 1 and b.sparsity == 0.0 and b.n_msf == b.n_tree
    # 1-D, padding 1, kernel 3 on length L: (3L - 2) pairs per channel pair; one pooled input is 2 units
    net = small_convnet((1, 12), channels=3, seed=0).eval()
    b = topology_bound(net, conv="unrolled")
    assert b.n_possible == [3 * (3 * 12 - 2), 3 * 3 * 2 * (3 * 6 - 2), 10 * 18]
    # against the structural zeros of the layers' own effective matrices (generic weights: no cancellation)
    eff = [int((lay.weight != 0).sum()) for lay in affine_layers(net)]
    assert b.n_possible == eff == b.n_unmasked
    # a pruned conv: sparsity is measured against the possible edges only
    m = Masks.ones(net)
    m["0.weight"][0] = False
    sp = topology_bound(net, m, conv="unrolled")
    assert sp.n_possible == b.n_possible and np.isclose(sp.sparsity, (3 * 12 - 2) / sum(b.n_possible))


def test_topology_bound_unrolled_tree_counts_components():
    from torch import nn

    # stride 2, kernel 1: odd inputs feed no output, so they are isolated vertices of the possible graph
    net = nn.Sequential(nn.Conv1d(1, 2, 1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    b = topology_bound(net, conv="unrolled", input_shape=(1, 8))
    assert b.n_possible == [2 * 4, 3 * 8]
    # layer 0: 4 stars (input 2t, outputs (0, t), (1, t)) + 4 isolated inputs = 8 components of 16 vertices
    assert b.n_tree == [16 - 8, 8 + 3 - 1] and b.layer_max_sparsity[0] == 0.0


def test_plots_show_sparsity_in_percent_and_keep_the_current_level_visible():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = mlp(20, [30], 5, seed=0)
    m = Masks.ones(net)
    m["0.weight"][:, :4] = False
    for r in (topology_bound(net), topology_bound(net, m)):
        ax = r.plot()
        lo, hi = ax.get_ylim()
        assert "%" in ax.get_ylabel() and hi >= 100 * max(r.layer_max_sparsity)
        labels = ax.get_legend_handles_labels()[1]
        cur = [lab for lab in labels if lab.startswith("current")]
        assert len(cur) == 1 and f"{100 * r.sparsity:.2f}%" in cur[0]
        if r.sparsity > 0:  # drawn, inside the axis
            line = next(ln for ln in ax.get_lines() if ln.get_label() == cur[0])
            assert lo <= line.get_ydata()[0] == 100 * r.sparsity <= hi
        else:  # dense: not drawn (it would squash the bars), said in the legend
            assert "dense" in cur[0] and lo > 50
    levels = [m, Masks({k: v & (torch.rand(v.shape, generator=torch.Generator().manual_seed(1)) < 0.5)
                        for k, v in m.items()})]
    curve = msf_retention_curve(net, levels)
    ax = curve.plot()
    assert "%" in ax.get_xlabel()
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), 100 * np.asarray(curve.sparsity))
    r = msf_retention(net, m)
    assert f"{100 * r.sparsity:.1f}%" in r.plot().get_title()
    plt.close("all")
