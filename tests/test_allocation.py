"""Allocation of per-layer densities by the sparse region bound."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netgeom import mlp
from netgeom.pruning.masks import prunable_parameters
from netgeom.pruning.rules import magnitude_prune
from netgeom.regions.allocation import allocate_densities
from netgeom.regions.bounds import sparse_bound


def _used(r):
    return sum(p * s for p, s in zip(r.densities, r.layer_sizes))


@settings(max_examples=15, deadline=None)
@given(
    widths=st.lists(st.integers(3, 40), min_size=2, max_size=3),
    n0=st.integers(2, 30),
    total=st.floats(0.01, 0.9),
)
def test_budget_and_beats_uniform(widths, n0, total):
    r = allocate_densities(n0, widths, total, n_grid=11, refine_steps=1, max_iter=15)
    assert abs(_used(r) - r.budget) <= 1e-9 * r.budget
    assert all(0 < p <= 1 for p in r.densities)
    assert r.log10 >= r.uniform_log10 - 1e-12
    # the reported bound is the bound at the reported densities
    assert r.log10 == pytest.approx(sparse_bound(n0, widths, r.densities).log10, abs=1e-9)
    assert r.uniform_log10 == pytest.approx(sparse_bound(n0, widths, total).log10, abs=1e-9)
    assert np.max(r.evaluated_log10) == pytest.approx(r.log10, abs=1e-9) or len(widths) > 2


def test_two_layers_grid_is_exhaustive_and_authors_rule():
    r = allocate_densities(784, [200, 100], 1e-3, include_output=True, n_out=10)
    # every evaluated point is feasible and the chosen one is the best of them
    assert np.all(r.evaluated > 0) and np.all(r.evaluated <= 1)
    assert r.log10 == pytest.approx(np.max(r.evaluated_log10))
    assert r.log10 > r.uniform_log10 + 1  # at density 1e-3 the uniform split is far from best
    assert r.authors_densities is not None and r.authors_log10 <= r.log10 + 1e-9
    # independent check: a brute scan of p_1 on a fine grid does not beat the search by more than a hair
    s1, s2 = r.layer_sizes
    lo, hi = max(0, (r.budget - s2) / s1), min(1, r.budget / s1)
    scan = [
        sparse_bound(784, [200, 100], [p, (r.budget - p * s1) / s2], include_output=True, n_out=10).log10
        for p in np.linspace(lo, hi, 400)[1:-1]
    ]
    assert r.log10 >= max(scan) - 1e-3
    r.plot().figure.savefig("/dev/null", format="png")


def test_three_layers_coordinate_search():
    r = allocate_densities(40, [30, 30, 30], 0.05)
    assert abs(_used(r) - r.budget) <= 1e-9 * r.budget
    assert r.log10 >= r.uniform_log10
    assert r.authors_densities is None
    r.plot()


def test_per_layer_for_pruning_harness():
    net = mlp(10, [12, 8], 3, seed=0)
    r = allocate_densities(model=net, total_density=0.3)
    d = r.per_layer()
    assert list(d) == prunable_parameters(net)
    assert d["4.weight"] == 0.0
    assert d == r.per_layer(net)
    assert d["0.weight"] == pytest.approx(1 - r.densities[0])
    plain = allocate_densities(10, [12, 8], 0.3)
    assert plain.per_layer() == pytest.approx(plain.sparsities) and len(plain.per_layer()) == 2
    with pytest.raises(ValueError, match="widths"):
        plain.per_layer(mlp(10, [12, 9], 3, seed=0))
    masks = magnitude_prune(net, per_layer=r.per_layer(net), scope="layer")
    kept = masks.layer_densities()
    assert kept["0.weight"] == pytest.approx(r.densities[0], abs=1 / 120 + 1e-9)
    assert kept["4.weight"] == 1.0


def test_prune_output_and_errors():
    r = allocate_densities(20, [10, 10], 0.2, n_out=5, prune_output=True, n_grid=11, max_iter=20)
    assert len(r.densities) == 3 and abs(_used(r) - r.budget) <= 1e-9 * r.budget
    for bad in (
        lambda: allocate_densities(20, [10, 10], 0.0),
        lambda: allocate_densities(20, [10, 10], 1.5),
        lambda: allocate_densities(20, [10, 0], 0.5),
        lambda: allocate_densities(20, [10, 10], 0.5, prune_output=True),
        lambda: allocate_densities(20, None, 0.5),
    ):
        with pytest.raises((ValueError, TypeError)):
            bad()
    from torch import nn

    no_classifier = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU())
    with pytest.raises(ValueError, match="affine output layer"):
        allocate_densities(model=no_classifier, total_density=0.5)
    assert allocate_densities(20, [10, 10], 1.0).densities == [1.0, 1.0]


def test_conv_model_is_refused_with_a_clear_message():
    from netgeom import affine_layers, lenet5, small_convnet

    net = lenet5(seed=0).eval()
    # Before: the unrolled 3456 x 784 matrix was counted as 2709504 weights of a 150-weight kernel.
    with pytest.raises(
        ValueError, match=r"Linear layers only; layer '.*' is a conv2d layer whose kernel has 150"
    ):
        allocate_densities(model=net, total_density=0.1)
    small = small_convnet((1, 10), n_out=2, channels=2, seed=0).eval()
    layers = affine_layers(small)
    r = allocate_densities(layers[0].n_in, [la.n_out for la in layers[:-1]], 0.5, n_grid=4, max_iter=3)
    with pytest.raises(ValueError, match="conv1d"):
        r.per_layer(small)


def test_allocate_densities_passes_input_shape():
    from netgeom import small_convnet

    bare = small_convnet((1, 10), n_out=2, channels=2, seed=0).eval()
    del bare.input_shape
    with pytest.raises(ValueError, match="input_shape"):
        allocate_densities(model=bare)
    # With the shape the network is read, and its conv layer is then refused for what it is.
    with pytest.raises(ValueError, match="conv1d"):
        allocate_densities(model=bare, input_shape=(1, 10))


def test_flat_bound_plot_has_no_offset_label():
    import dataclasses

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = allocate_densities(784, [100, 100], 0.5, n_grid=5, refine_steps=0)
    flat = 120.41199 + np.linspace(0, 5e-7, len(r.evaluated_log10))
    r = dataclasses.replace(r, evaluated_log10=flat, uniform_log10=120.41199, log10=float(flat.max()))
    # The same values on default axes do get an offset label: the data reproduce the problem.
    fig, ax0 = plt.subplots()
    ax0.plot(np.arange(len(flat)), flat)
    fig.canvas.draw()
    assert ax0.yaxis.get_major_formatter().get_offset() != ""
    ax = r.plot()
    ax.figure.canvas.draw()
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    assert all("e" not in t.get_text() for t in ax.get_yticklabels())
    plt.close("all")
