"""Regression tests for the review of the region bounds (review 12): layers without an activation between
them, Monte Carlo masks that keep no weight, nets pruned by zeroing, ignored arguments, bounds below one
region. Each test failed on the code before the fix."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import netgeom as ng
from netgeom.regions.bounds import (
    bounded_layers,
    rank_distribution,
    serra_bound,
    serra_bound_log10,
    sparse_bound,
    zaslavsky_bound,
)


def _plane_count(net) -> int:
    """Exact activation regions of the whole input plane (2-D input nets)."""
    return ng.regions_on_slice(net, [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], box=None).count


def _stacked_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 1)).eval()


# ------------------------------------------------------------------------ 1. layers without an activation
def test_stacked_linear_layers_are_one_layer_for_every_bound():
    net = _stacked_net()
    b = ng.bounds(net)
    # 3 ReLU lines in the plane: Zaslavsky 7 is the most, and the exact count of this net
    assert _plane_count(net) == 7 == zaslavsky_bound(3, 2)
    assert b.widths == [3] and b.layer_parts == [["0", "1"]]
    assert b.montufar == 7  # was 112 (the 8-3 net's construction): a "lower bound" above the maximum
    assert b.serra == b.product == b.sparse_masks == 7  # were 259
    assert any("['0', '1'] have no activation between them" in n for n in b.notes)
    # the random-mask rank models do not describe a product of masked matrices: refused, naming the layers
    for rm, extra in (("closed_form", {}), ("monte_carlo", {"seed": 0})):
        with pytest.raises(ValueError, match=r"layers \['0', '1'\] have no activation between them"):
            sparse_bound(model=net, rank_model=rm, **extra)
    r = sparse_bound(model=net, rank_model="masks")
    assert r.layer_widths == [3] and r.exact == 7
    with pytest.raises(ValueError, match=r"layers \['0', '1'\] have no activation between them"):
        ng.allocate_densities(model=net, total_density=0.5)
    alloc = ng.allocate_densities(2, [8, 3], 0.5, n_out=1)
    with pytest.raises(ValueError, match="no activation between them"):
        alloc.per_layer(net)


def test_a_narrow_stack_gets_no_montufar_bound_and_its_rank_caps_the_upper_bounds():
    torch.manual_seed(1)
    # Linear(2, 1) then Linear(1, 8): 8 parallel lines, 9 regions, not the 37 of 8 lines in general position
    net = nn.Sequential(nn.Linear(2, 1), nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).eval()
    b = ng.bounds(net)
    assert _plane_count(net) == 9
    assert b.montufar is None and any("Montúfar lower bound not given" in n for n in b.notes)
    assert b.ranks == [1] and b.sparse_masks == 9 and b.serra == 37
    from netgeom.regions.bounds import ComposedLayer

    (la,) = [x for x in bounded_layers(net, compose=True) if isinstance(x, ComposedLayer)]
    assert la.bottleneck == 1 and la.part_names == ["0", "1"]


def _composed_copy(net):
    """The same function with every run of layers composed into one nn.Linear (dense weights)."""
    mods: list[nn.Module] = []
    for la in bounded_layers(net, compose=True):
        lin = nn.Linear(la.n_in, la.n_out).double()
        with torch.no_grad():
            lin.weight.copy_(la.weight)
            lin.bias.copy_(la.bias)
        mods.append(lin)
        if la.activation == "relu":
            mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


@st.composite
def _nets(draw):
    """2-D input nets whose hidden blocks are 1-3 Linear layers followed by a ReLU, some weights masked."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    width, masked, relu_widths = 2, [], []
    for _ in range(draw(st.integers(1, 2))):
        for _ in range(draw(st.integers(1, 3))):
            out = draw(st.integers(1, 5))
            lin = nn.Linear(width, out).double()
            with torch.no_grad():
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=torch.float64))
                lin.bias.copy_(torch.randn(out, generator=gen, dtype=torch.float64))
                if draw(st.booleans()):
                    lin.weight.mul_(torch.rand(lin.weight.shape, generator=gen) < 0.6)
                    masked.append(True)
            mods.append(lin)
            width = out
        mods.append(nn.ReLU())
        relu_widths.append(width)
    head = nn.Linear(width, 1).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen, dtype=torch.float64))
    mods.append(head)
    return nn.Sequential(*mods).eval(), bool(masked), relu_widths


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_nets())
def test_exact_counts_against_the_bounds_on_random_nets_with_stacks(case):
    net, masked, relu_widths = case
    count = _plane_count(net)
    b = ng.bounds(net)
    # the bounded layers are the ReLU layers (each block of Linear maps is one affine map)
    assert b.widths == relu_widths
    # every upper bound holds for this network
    assert count <= b.sparse_masks <= b.serra <= b.product
    # the lower bound is about the architecture's maximum: never above what a net of these ReLU widths
    # can reach (Serra's bound on them)
    if b.montufar is not None:
        assert b.montufar <= serra_bound(2, relu_widths)
        if len(b.widths) == 1:
            # one ReLU layer in the plane: the most regions are Zaslavsky's, and a generic net reaches them
            assert b.montufar == zaslavsky_bound(b.widths[0], 2)
            layer = bounded_layers(net, compose=True)[0]
            if not masked and int(torch.linalg.matrix_rank(layer.weight)) == min(2, layer.n_out):
                assert count == b.montufar
    # composing the runs by hand changes none of the upper bounds (nor Montúfar's where it is given: a
    # narrow run restricts the architecture, the hand-composed layer does not)
    c = ng.bounds(_composed_copy(net))
    assert (c.widths, c.serra, c.product, c.ranks, c.sparse_masks) == (
        b.widths, b.serra, b.product, b.ranks, b.sparse_masks
    )
    assert b.montufar is None or c.montufar == b.montufar


# --------------------------------------------------------------------------- 2. Monte Carlo keeps nothing
def test_monte_carlo_exact_masks_keep_round_p_times_size_weights():
    # 100 x 784 = 78400 weights: p = 1e-6 and 5e-6 keep round(0.08) = round(0.39) = 0 (rank 0), 1e-5 keeps 1
    ranks = {}
    for p in (1e-6, 5e-6, 1e-5):
        r = sparse_bound(784, [100, 100], p, rank_model="monte_carlo", seed=0, n_samples=8, verbose=False)
        ranks[p] = r.expected_ranks
        if p < 6e-6:
            # rank 0 in the first layer: its units are constant, the network has exactly one region
            assert r.expected_ranks[0] == 0.0 and r.exact == 1 and r.log10 == 0.0
    assert ranks[1e-5][0] == 1.0
    assert rank_distribution(100, 784, 1e-6, rank_model="monte_carlo", seed=0, n_samples=8)[0] == 1.0
    # one kept weight of a 3 x 5 matrix: 1/15 rounds to 1 weight, 1/40 to none
    def mc(p):
        return rank_distribution(3, 5, p, rank_model="monte_carlo", seed=0, n_samples=4).tolist()

    assert mc(1 / 15) == [0, 1, 0, 0] and mc(1 / 40) == [1, 0, 0, 0]


# ---------------------------------------------------------------------------- 3. pruned by zeroing
def test_zero_weights_are_pruned_when_no_masks_are_given():
    net = ng.mlp(10, [12, 12], 3, seed=0)
    masks = ng.magnitude_prune(net, 0.9, scope="layer")
    zeroed = ng.mlp(10, [12, 12], 3, seed=0)
    masks.apply(zeroed)  # what IMPResult.model_at returns: zeros, no masks
    with_masks, from_zeros = ng.bounds(net, masks), ng.bounds(zeroed)
    assert from_zeros.densities == with_masks.densities
    assert from_zeros.densities[0] == pytest.approx(0.1, abs=0.01)
    assert from_zeros.sparse_closed_form_log10 == with_masks.sparse_closed_form_log10
    assert from_zeros.sparse_masks == with_masks.sparse_masks
    assert sparse_bound(model=zeroed).densities == sparse_bound(model=net, masks=masks).densities
    # consistent with the topology reader, which counts the zeros as pruned
    hidden_sizes = [10 * 12, 12 * 12]
    out_kept = 12 * 3 * masks.layer_densities()["4.weight"]
    kept = sum(p * s for p, s in zip(from_zeros.densities, hidden_sizes)) + out_kept
    assert 1 - kept / (sum(hidden_sizes) + 36) == pytest.approx(ng.topology_bound(zeroed).sparsity)
    # an explicit mask wins: kept zeros are kept
    ones = ng.Masks.ones(zeroed)
    assert ng.bounds(zeroed, ones).densities == [1.0, 1.0]


# ---------------------------------------------------------------------------- 4. ignored arguments
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sparse_bound(3, [4], 0.5, n_out=7), "n_out .* include_output=True"),
        (lambda: sparse_bound(3, [4], 0.5, seed=3), "seed does not apply to rank_model=\"closed_form\""),
        (lambda: sparse_bound(3, [4], 0.5, n_samples=5), "n_samples does not apply"),
        (lambda: sparse_bound(3, [4], 0.5, mask_kind="bogus"), "mask_kind must be one of"),
        (lambda: sparse_bound(3, [4], 0.5, mask_kind="exact"), "mask_kind does not apply"),
        (lambda: sparse_bound(3, [4], 0.5, n_samples=0), "n_samples must be"),
        (lambda: sparse_bound(3, [4], 0.5, rank_model="monte_carlo", seed=0, include_zero_rank=False),
         "include_zero_rank does not apply"),
        (lambda: sparse_bound(3, [4], rank_model=[[0, 0, 0, 1]], seed=1), "seed does not apply to given"),
        (lambda: sparse_bound(model=ng.mlp(3, [4, 4], 2, seed=0), densities=[0.1, 0.1], rank_model="masks"),
         "densities do not enter"),
        (lambda: sparse_bound(model=ng.mlp(3, [4, 4], 2, seed=0), rank_model="masks", include_zero_rank=True),
         "include_zero_rank does not apply"),
        (lambda: sparse_bound(3, [4], 0.5, input_shape=(3,)), "input_shape is read only with a model"),
        (lambda: rank_distribution(3, 5, 0.5, seed=1), "seed does not apply"),
        (lambda: ng.allocate_densities(5, [4, 4], 0.3, seed=5, n_samples=3), "n_samples, seed do not apply"),
        (lambda: ng.allocate_densities(5, [4, 4], 0.3, max_iter=1, tol=0.9), "max_iter, tol do not apply"),
        (lambda: ng.allocate_densities(5, [4, 4, 4], 0.3, n_grid=4, refine_steps=0),
         "n_grid, refine_steps do not apply"),
        (lambda: ng.allocate_densities(5, [4], 0.3, n_grid=5), "n_grid does not apply with 1 pruned"),
        (lambda: ng.allocate_densities(5, [4, 4], 0.3, rank_model="monte_carlo", seed=0,
                                       include_zero_rank=True), "include_zero_rank does not apply"),
        (lambda: ng.allocate_densities(5, [4, 4], 0.3, input_shape=(5,)), "input_shape is read only"),
    ],
)
def test_arguments_that_would_be_ignored_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_options_that_apply_are_used_and_recorded():
    assert sparse_bound(3, [4], 0.5, include_zero_rank=True).include_zero_rank is True
    assert sparse_bound(3, [4], 0.5).include_zero_rank is False
    # ... and used: at low density the k = 0 term adds to the recursion (1.963 against 1.700 on 784-100-100)
    kept = sparse_bound(784, [100, 100], 1e-6, include_zero_rank=True)
    dropped = sparse_bound(784, [100, 100], 1e-6)
    assert kept.unclamped_log10 == pytest.approx(1.9632, abs=1e-3)
    assert dropped.unclamped_log10 == pytest.approx(1.7004, abs=1e-3)
    # Monte Carlo keeps k = 0 (an observed outcome), and says so
    mc = sparse_bound(3, [4], 0.5, rank_model="monte_carlo", seed=0, n_samples=5, mask_kind="bernoulli")
    assert mc.include_zero_rank is True
    # a mask keeping round(0.01 * 12) = 0 weights: rank 0 every time, one region, not an empty sum
    empty = sparse_bound(3, [4], 0.01, rank_model="monte_carlo", seed=0, n_samples=5)
    assert empty.rank_probabilities[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert empty.unclamped_log10 == 0.0 and not empty.clamped
    assert sparse_bound(model=ng.mlp(3, [4, 4], 2, seed=0), rank_model="masks").include_zero_rank is True
    # the search settings of the search that runs are used
    coarse = ng.allocate_densities(20, [10, 10], 0.2, n_grid=4, refine_steps=0)
    fine = ng.allocate_densities(20, [10, 10], 0.2, n_grid=21, refine_steps=0)
    assert coarse.n_evaluated < fine.n_evaluated
    short = ng.allocate_densities(20, [10, 10, 10], 0.2, max_iter=1)
    long = ng.allocate_densities(20, [10, 10, 10], 0.2, max_iter=50)
    assert short.n_evaluated < long.n_evaluated


# ---------------------------------------------------------------------------- 5. at least one region
def test_the_sparse_bound_is_never_below_one_region():
    r = sparse_bound(784, [100, 100], 1e-300)
    assert r.log10 == 0.0 and r.ln == 0.0 and r.value == 1.0 and r.clamped
    assert r.unclamped_log10 == pytest.approx(-587.097, abs=1e-3)
    # with the k = 0 term kept (a proper distribution) the recursion is at least 1 by itself
    full = sparse_bound(784, [100, 100], 1e-300, include_zero_rank=True)
    assert not full.clamped and full.log10 >= 0.0


@settings(max_examples=40, deadline=None)
@given(
    n0=st.integers(1, 60),
    widths=st.lists(st.integers(1, 60), min_size=1, max_size=3),
    log_p=st.floats(-300, 0),
)
def test_sparse_bound_between_one_region_and_the_full_binomial(n0, widths, log_p):
    p = 10.0**log_p
    dropped = sparse_bound(n0, widths, p)
    kept = sparse_bound(n0, widths, p, include_zero_rank=True)
    assert dropped.log10 >= 0.0 and kept.log10 >= 0.0 and not kept.clamped
    assert dropped.clamped == (dropped.unclamped_log10 < 0)
    assert max(dropped.unclamped_log10, 0.0) == dropped.log10
    # dropping k = 0 lowers the expectation; clamping never lifts it above the full binomial's
    assert dropped.log10 <= kept.log10 + 1e-9 * max(1.0, abs(kept.log10))
    assert kept.log10 <= serra_bound_log10(n0, widths) + 1e-9 and math.isfinite(dropped.log10)


def test_allocation_at_densities_so_low_the_bound_is_one_region():
    r = ng.allocate_densities(784, [100, 100], 1e-250, n_out=10)
    assert r.uniform_log10 == 0.0 and r.log10 == 0.0
    assert r.densities == pytest.approx([1e-250, 1e-250], rel=1e-12)
    assert np.all(np.asarray(r.evaluated_log10) >= 0.0)
