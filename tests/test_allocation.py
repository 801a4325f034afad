"""Allocation of per-layer densities by the sparse region bound."""

import decimal
import math
from functools import cache

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
    # each search takes only its own settings (the others would be ignored, and are refused)
    opts = {"n_grid": 11, "refine_steps": 1} if len(widths) == 2 else {"max_iter": 15}
    r = allocate_densities(n0, widths, total, **opts)
    assert abs(_used(r) - r.budget) <= 1e-9 * r.budget
    assert all(0 < p <= 1 for p in r.densities)
    assert r.log10 >= r.uniform_log10 - 1e-12
    # the reported bound is the bound at the reported densities
    assert r.log10 == pytest.approx(sparse_bound(n0, widths, r.densities).log10, abs=1e-9)
    assert r.uniform_log10 == pytest.approx(sparse_bound(n0, widths, total).log10, abs=1e-9)
    margin = math.log10(1 + r.gain_rtol)
    if r.densities != pytest.approx([total] * len(widths), rel=1e-12):
        # moved away from uniform only for a gain beyond the tolerance
        assert r.log10 > r.uniform_log10 + margin
        assert np.max(r.evaluated_log10) == pytest.approx(r.log10, abs=1e-9) or len(widths) > 2
    elif len(widths) == 2:
        # kept uniform: nothing evaluated beats it by more than the tolerance
        assert np.max(r.evaluated_log10) <= r.uniform_log10 + margin + 1e-12


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
    # one sparsity per prunable layer, the classifier dense: the list form magnitude_prune takes
    assert plain.per_layer() == pytest.approx([*plain.sparsities, 0.0]) and len(plain.per_layer()) == 3
    listed = magnitude_prune(mlp(10, [12, 8], 3, seed=0), per_layer=plain.per_layer(), relative_to="all")
    assert listed.layer_densities()["4.weight"] == 1.0
    with pytest.raises(ValueError, match="widths"):
        plain.per_layer(mlp(10, [12, 9], 3, seed=0))
    masks = magnitude_prune(net, per_layer=r.per_layer(net), scope="layer")
    kept = masks.layer_densities()
    assert kept["0.weight"] == pytest.approx(r.densities[0], abs=1 / 120 + 1e-9)
    assert kept["4.weight"] == 1.0


def test_prune_output_and_errors():
    r = allocate_densities(20, [10, 10], 0.2, n_out=5, prune_output=True, max_iter=20)
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
    hidden = [la.n_out for la in layers[:-1]]
    opts = {"n_grid": 4} if len(hidden) == 2 else {"max_iter": 3}
    r = allocate_densities(layers[0].n_in, hidden, 0.5, **opts)
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


# ------------------------------------------------------------------------------------------- tolerance (12.6)
@pytest.mark.parametrize("n0,widths,total", [(784, [100, 100], 0.2), (784, [200, 200], 0.01)])
def test_flat_bound_keeps_uniform(n0, widths, total):
    # Before: [0.098, 1.0] and [0.0060, 0.0258] for log10 gains of 6e-14 and 3e-14 (rounding noise).
    r = allocate_densities(n0, widths, total, n_out=10)
    assert r.densities == [total, total] and r.log10 == r.uniform_log10
    assert "uniform kept" in r.method
    # the gain that was on offer is below the tolerance (and at rounding level)
    assert np.max(r.evaluated_log10) - r.uniform_log10 < 1e-12 * r.uniform_log10
    # a flat bound with 3 layers: the coordinate search does not walk on noise either
    r3 = allocate_densities(n0, [100, 100, 100], 0.3, max_iter=20)
    assert r3.densities == [0.3] * 3


def test_gain_rtol_is_respected():
    kw = dict(n_out=10, include_output=True, n_grid=11, refine_steps=1)
    r = allocate_densities(784, [200, 100], 1e-3, **kw)
    gain = r.log10 - r.uniform_log10  # log10 units; a real gain here (~1.2)
    assert gain > 1
    # a tolerance just below the gain keeps the allocation, one just above returns uniform
    below = allocate_densities(784, [200, 100], 1e-3, gain_rtol=10 ** (0.9 * gain) - 1, **kw)
    above = allocate_densities(784, [200, 100], 1e-3, gain_rtol=10 ** (1.1 * gain) - 1, **kw)
    assert below.densities == r.densities
    assert above.densities == [1e-3, 1e-3] and "uniform kept" in above.method
    assert above.gain_rtol == pytest.approx(10 ** (1.1 * gain) - 1)
    for bad in (-1e-3, math.nan, math.inf):
        with pytest.raises(ValueError, match="gain_rtol"):
            allocate_densities(784, [200, 100], 1e-3, gain_rtol=bad)


# ------------------------------------------------------------------------------------------- authors' rule
def _authors_ln(n, p_sep):
    """ln of the bound as Cai et al.'s binomial_formula.py computes it: memoised recursion over (layer,
    dimension) in exact decimals, rank k ~ Binomial on the smaller side with k = 0 left out, every layer of
    ``n`` (output included) in the recursion."""
    D = decimal.Decimal
    L = len(n) - 1

    def prob(k, C, R, p):
        N, other = (R, C) if C >= R else (C, R)
        if k == 0 or k > N:
            return D(0)
        Q = D(1) - D(1 - p) ** D(other)
        return Q**k if k == N else D(math.comb(N, k)) * Q**k * (D(1) - Q) ** (N - k)

    @cache
    def num(l, d):
        total = D(0)
        for k in range(1, n[l] + 1):
            pk = prob(k, n[l - 1], n[l], p_sep[l - 1])
            if pk:
                terms = (
                    D(math.comb(n[l], j)) * (1 if l == L else num(l + 1, min(n[l] - j, d, k)))
                    for j in range(min(k, d) + 1)
                )
                total += pk * sum(terms)
        return total

    return float(num(1, n[0]).ln())


def _authors_rule(n, p, through_output=True):
    """Their three-point rule, step by step: 12-point grid, Lagrange parabola (scipy), root strictly inside
    the second and second-to-last grid points, taken if its ln bound beats uniform."""

    def ln(p1, p2):
        return _authors_ln(n, [p1, p2, 1]) if through_output else _authors_ln(n[:3], [p1, p2])

    from scipy.interpolate import lagrange

    dims = [n[0] * n[1], n[1] * n[2]]
    keep = sum(dims) * p
    min_p0 = max(keep - dims[1], 0) / dims[0]
    max_p1 = max(keep - dims[0], 0) / dims[1]
    max_p0 = (keep - max_p1 * dims[1]) / dims[0]
    g = np.linspace(min_p0, max_p0, num=12)
    xs = [g[1], p, g[-2]]
    ys = [ln(x, (keep - x * dims[0]) / dims[1]) for x in xs]
    roots = lagrange(xs, ys).deriv().roots
    if len(roots) and roots[0] != 0.0 and xs[0] < roots[0] < xs[-1]:
        x = float(np.real(roots[0]))
        v = ln(x, (keep - x * dims[0]) / dims[1])
        if v > ys[1]:
            return [x, (keep - x * dims[0]) / dims[1]], v
    return [p, p], ys[1]


@pytest.mark.parametrize(
    "n,total",
    [([40, 20, 10, 10], 0.005), ([40, 20, 10, 10], 0.1), ([40, 12, 12, 3], 0.01), ([24, 30, 8, 4], 0.03)],
)
def test_authors_rule_matches_their_recursion_through_the_output_layer(n, total):
    want, want_ln = _authors_rule(n, total)
    for include_output in (False, True):  # netgeom's own search setting must not change the authors' rule
        r = allocate_densities(n[0], n[1:3], total, n_out=n[3], include_output=include_output, n_grid=5)
        assert r.authors_densities == pytest.approx(want, rel=1e-9)
        assert r.authors_ln == pytest.approx(want_ln, rel=1e-9)
        # authors_log10 is this search's bound at their densities, comparable with log10
        assert r.authors_log10 == pytest.approx(
            sparse_bound(
                n[0], n[1:3], r.authors_densities, include_output=include_output,
                n_out=n[3] if include_output else None,
            ).log10,
            rel=1e-12,
        )
    if n[:3] == [40, 20, 10]:
        # the same rule run through the hidden layers only (what netgeom did with include_output=False)
        # picks other densities here: the output layer matters
        hidden_only, _ = _authors_rule(n, total, through_output=False)
        assert abs(hidden_only[0] - want[0]) > 1e-4


def test_authors_rule_needs_the_output_width():
    r = allocate_densities(40, [20, 10], 0.01, n_grid=5)
    assert r.authors_densities is None and r.authors_ln is None
    assert any("output layer" in note and "n_out" in note for note in r.notes)
