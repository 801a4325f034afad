"""Exact regions on a 2-D slice through traced graphs (residual add, max-pool, cat, LeakyReLU).

Checked against the chain engine (the graph engine run directly on chains), against regioncam (an
independent float32 tracer, on residual MLPs and global-max-pool nets it can express, on small boxes where
it resolves every region), against dense grid sampling of the graph's own forward pass, and by metamorphic
laws (nested boxes, permuted hidden units, pruned = zero weight, scaled plane).
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_regions_graph import _patterns_at as _reference_patterns  # the hand-written reference
from torch import nn
from torch.nn import functional as F

from netgeom.nets import trace
from netgeom.regions._graph_slice import slice_graph_regions
from netgeom.regions.exact import regions_on_slice

BOX = (-2.0, 2.0, -2.0, 2.0)


# ------------------------------------------------------------------------------------------- networks
class ResMLP(nn.Module):
    """relu(inp x), then ``blocks`` residual blocks h <- act(h + fc_b(act(fc_a h))), then a classifier."""

    def __init__(self, n0: int, w: int, blocks: int, seed: int, slope: float = 0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Linear(n0, w)
        act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
        self.act = act
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(w, w), act, nn.Linear(w, w)) for _ in range(blocks)]
        )
        self.out = nn.Linear(w, 1)

    def forward(self, x):
        h = self.act(self.inp(x))
        for b in self.blocks:
            h = self.act(h + b(h))
        return self.out(h)


class GlobalMax(nn.Module):
    """fc2(relu(fc1 x)) max-pooled over all its c units (one window), then fc4(relu(fc3 m))."""

    def __init__(self, n0: int, w: int, c: int, h: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(n0, w), nn.Linear(w, c)
        self.fc3, self.fc4 = nn.Linear(1, h), nn.Linear(h, 1)
        self.c = c

    def forward(self, x):
        z = self.fc2(F.relu(self.fc1(x)))
        m = F.max_pool1d(z.unsqueeze(1), self.c).flatten(1)
        return self.fc4(F.relu(self.fc3(m)))


class ResPoolCat(nn.Module):
    """relu(fc1 x) -> relu(fc2 h + h) -> max-pool pairs -> cat with x -> relu(fc3) -> fc4."""

    def __init__(self, n0: int, w: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(n0, w), nn.Linear(w, w)
        self.fc3, self.fc4 = nn.Linear(w // 2 + n0, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.relu(self.fc2(h) + h)
        p = F.max_pool1d(h.unsqueeze(1), 2).flatten(1)
        return self.fc4(F.relu(self.fc3(torch.cat([p, x], dim=1))))


def conv_pool_1d(length: int, channels: int, seed: int) -> nn.Module:
    """Conv1d -> ReLU -> MaxPool1d(3, stride 2, padding 1) (windows with padding entries) -> MLP head."""
    torch.manual_seed(seed)
    pooled = (length + 2 - 3) // 2 + 1
    net = nn.Sequential(
        nn.Conv1d(1, channels, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool1d(3, stride=2, padding=1),
        nn.Flatten(),
        nn.Linear(channels * pooled, 4),
        nn.ReLU(),
        nn.Linear(4, 1),
    )
    net.input_shape = (1, length)
    return net


def conv_pool_2d(seed: int) -> nn.Module:
    """Conv2d on 4x4 -> ReLU -> MaxPool2d(2, stride 1): 2x2 windows of 4 candidates, overlapping."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.ReLU(), nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(8, 3), nn.ReLU(),
        nn.Linear(3, 1),
    )
    net.input_shape = (1, 4, 4)
    return net


def _f32(net):
    """The net with float32-representable weights, in float64 (regioncam sees the same numbers)."""
    return net.float().double().eval()


def _plane(n0: int, seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return [(scale * v).astype(np.float32).astype(np.float64) for v in rng.normal(size=(3, n0))]


# ------------------------------------------------------------------------------------------- sampling
def _patterns_at(g, X) -> np.ndarray:
    """Patterns (ReLU bits ``z > 0``, one-hot torch argmaxes) of the graph at the inputs ``X``."""
    return _reference_patterns(g, torch.as_tensor(X))[0]


def _keys(P) -> set:
    return set(_keys_list(P))


def _keys_list(P) -> list:
    return [p.tobytes() for p in np.packbits(P, axis=1)]


def _check_against_sampling(net, x0, d1, d2, box=BOX, n_grid=201):
    """Every sampled pattern is an exact region's, every exact piece's centroid has its claimed pattern, the
    pieces tile the box and are all distinct. Returns the result."""
    res = regions_on_slice(net, x0, d1, d2, box=box)
    g = trace(net)
    u = np.linspace(box[0], box[1], n_grid)
    v = np.linspace(box[2], box[3], n_grid)
    U, V = np.meshgrid(u, v)
    X = x0 + U.reshape(-1, 1) * d1 + V.reshape(-1, 1) * d2
    exact = _keys(res.patterns)
    assert _keys(_patterns_at(g, X)) <= exact
    assert len(exact) == res.count  # one piece per pattern: regions are convex
    cents = np.array([p.mean(axis=0) for p in res.polygons])
    Xc = x0 + cents[:, :1] * d1 + cents[:, 1:] * d2
    assert np.array_equal(_patterns_at(g, Xc), res.patterns)
    area = (box[1] - box[0]) * (box[3] - box[2])
    assert abs(res.areas.sum() - area) < 1e-9 * area
    assert np.all(res.areas > 0)
    return res


# ------------------------------------------------------------------------------------- (a) chains
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_graph_engine_on_chains_equals_chain_engine(seed, slope):
    torch.manual_seed(seed)
    act = nn.ReLU() if slope == 0 else nn.LeakyReLU(slope)
    net = nn.Sequential(nn.Linear(4, 10), act, nn.Linear(10, 8), act, nn.Linear(8, 1)).double().eval()
    masks = {"2.weight": torch.rand(8, 10, generator=torch.Generator().manual_seed(seed)) > 0.5}
    x0, d1, d2 = _plane(4, seed)
    g = trace(net, masks)
    assert g.is_chain
    for box in (BOX, None):
        chain = regions_on_slice(net, x0, d1, d2, box=box, masks=masks)
        _, _, _, pats, _ = slice_graph_regions(
            g, x0, d1, d2, chain.box if box is None else box, 10**6, 2**28
        )
        assert len(pats) == chain.count
        assert _keys(pats) == _keys(chain.patterns)  # same layout: ReLU bits layer by layer
        if box is None:
            _, _, _, whole, _ = slice_graph_regions(g, x0, d1, d2, None, 10**6, 2**28)
            assert len(whole) == chain.count


# ---------------------------------------------------------------------------------- (b) regioncam
def _rc_linear(rc, m):
    rc.linear(m.weight.detach().float().numpy().T.copy(), m.bias.detach().float().numpy().copy())


def _rc_res(net, masks, x0, d1, d2, r):
    import regioncam
    from regioncam import nn as rn

    w32 = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for k, m in (masks or {}).items():
        w32[k] = w32[k] * m
    clone = ResMLP(net.inp.in_features, net.inp.out_features, len(net.blocks), 0, slope=_slope(net))
    clone.load_state_dict(w32)
    clone.float()
    rc = regioncam.Regioncam(size=r)
    rc.linear(np.stack([d1, d2]).astype(np.float32), x0.astype(np.float32))

    def act():
        if _slope(net):
            rc.leaky_relu(_slope(net))
        else:
            rc.relu()

    _rc_linear(rc, clone.inp)
    act()
    for b in clone.blocks:
        rc.add(rn.Residual(rn.convert(b)))
        act()
    return rc.num_faces


def _slope(net) -> float:
    return float(getattr(net.act, "negative_slope", 0.0))


def _rc_max(net, x0, d1, d2, r):
    import regioncam
    rc = regioncam.Regioncam(size=r)
    rc.linear(np.stack([d1, d2]).astype(np.float32), x0.astype(np.float32))
    _rc_linear(rc, net.fc1)
    rc.relu()
    _rc_linear(rc, net.fc2)
    rc.max_pool()
    _rc_linear(rc, net.fc3)
    rc.relu()
    return rc.num_faces


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_residual_mlp_matches_regioncam(seed, slope):
    """Same float32 weights (a quarter pruned), plane and square [-r, r]^2: equal face counts."""
    net = _f32(ResMLP(4, 8, 2, seed, slope))
    gen = torch.Generator().manual_seed(seed)
    masks = {"blocks.0.0.weight": torch.rand(8, 8, generator=gen) > 0.25}
    x0, d1, d2 = _plane(4, seed)
    res = regions_on_slice(net, x0, d1, d2, box=(-2, 2, -2, 2), masks=masks)
    assert res.count == _rc_res(net, masks, x0, d1, d2, 2.0)
    assert res.count > 20


@pytest.mark.parametrize("seed", range(4))
def test_global_max_pool_net_matches_regioncam(seed):
    net = _f32(GlobalMax(4, 8, 5, 6, seed))
    x0, d1, d2 = _plane(4, seed)
    res = regions_on_slice(net, x0, d1, d2, box=(-2, 2, -2, 2))
    assert res.count == _rc_max(net, x0, d1, d2, 2.0)
    assert res.patterns.shape[1] == 8 + 5 + 6  # ReLU bits, one-hot argmax of the window, ReLU bits


# ------------------------------------------------------------------------------ (c) brute force
@pytest.mark.parametrize("seed", range(3))
def test_res_pool_cat_against_grid_sampling(seed):
    net = ResPoolCat(3, 6, seed).double().eval()
    x0, d1, d2 = _plane(3, seed)
    res = _check_against_sampling(net, x0, d1, d2)
    assert res.count > 10
    if seed == 0:
        ax = res.plot()
        assert len(ax.collections[0].get_paths()) == res.count


@pytest.mark.parametrize("seed", range(2))
def test_conv_max_pool_with_padding_against_grid_sampling(seed):
    net = conv_pool_1d(6, 3, seed).double().eval()
    assert (trace(net).nodes[3].windows < 0).any()  # padding entries in the windows
    x0, d1, d2 = _plane(6, seed)
    _check_against_sampling(net, x0, d1, d2)


def test_conv2d_overlapping_max_pool_against_grid_sampling():
    net = conv_pool_2d(0).double().eval()
    x0, d1, d2 = _plane(16, 0)
    res = _check_against_sampling(net, x0, d1, d2)
    assert res.count > 10


def test_small_vgg_against_grid_sampling():
    """Conv -> ReLU -> 2x2 max-pool twice: candidates that are ReLU outputs vanish on their own cut lines
    (which the engine knows without exact arithmetic)."""
    from netgeom.nets.models import vgg

    net = vgg([3, "M", 4, "M"], in_channels=1, image_size=4, seed=0).double().eval()
    x0, d1, d2 = _plane(16, 3)
    res = _check_against_sampling(net, x0, d1, d2)
    assert res.count > 20


def test_tied_candidates_take_the_first_position_like_torch():
    """Two identical units in one window (and ReLU outputs both exactly 0): the argmax is the first one."""
    torch.manual_seed(0)
    fc = nn.Linear(3, 6)
    with torch.no_grad():
        fc.weight[1] = fc.weight[0]
        fc.bias[1] = fc.bias[0]
    net = nn.Sequential(
        fc, nn.ReLU(), nn.Unflatten(1, (1, 6)), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(3, 4), nn.ReLU(),
        nn.Linear(4, 1),
    )
    net = net.double().eval()
    x0, d1, d2 = _plane(3, 1)
    res = _check_against_sampling(net, x0, d1, d2, box=(-3, 3, -3, 3))
    onehot = res.patterns[:, 6:12].reshape(-1, 3, 2)
    assert np.all(onehot[:, 0, 0])  # window 0 = units (0, 1), identical: always position 0


def test_whole_plane_on_a_graph():
    net = ResPoolCat(3, 6, 0).double().eval()
    x0, d1, d2 = _plane(3, 0)
    whole = regions_on_slice(net, x0, d1, d2, box=None)
    assert whole.whole_plane
    inner = regions_on_slice(net, x0, d1, d2, box=BOX)
    assert whole.count >= inner.count
    # the box it reports holds every region: a larger one has no more
    u0, u1, v0, v1 = whole.box
    assert regions_on_slice(net, x0, d1, d2, box=(2 * u0, 2 * u1, 2 * v0, 2 * v1)).count == whole.count


# -------------------------------------------------------------------------------- (d) metamorphic
def test_nested_boxes_never_fewer_regions():
    net = ResPoolCat(3, 6, 1).double().eval()
    x0, d1, d2 = _plane(3, 1)
    counts = [regions_on_slice(net, x0, d1, d2, box=(-r, r, -r, r)).count for r in (0.25, 0.5, 1, 2, 4)]
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_permuting_a_residual_blocks_inner_units_changes_nothing():
    net = ResMLP(4, 8, 1, 3).double().eval()
    x0, d1, d2 = _plane(4, 3)
    base = regions_on_slice(net, x0, d1, d2, box=BOX)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = net.blocks[0][0], net.blocks[0][2]
        a.weight.copy_(a.weight[perm])
        a.bias.copy_(a.bias[perm])
        b.weight.copy_(b.weight[:, perm])
    res = regions_on_slice(net, x0, d1, d2, box=BOX)
    assert res.count == base.count
    # the same regions: patterns equal once the inner layer's bits are permuted back
    cols = np.arange(res.patterns.shape[1])
    cols[8:16] = 8 + np.argsort(perm.numpy())
    assert _keys(res.patterns[:, cols]) == _keys(base.patterns)


def test_pruned_weight_equals_zero_weight():
    net = ResPoolCat(3, 6, 2).double().eval()
    x0, d1, d2 = _plane(3, 2)
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    pruned = regions_on_slice(net, x0, d1, d2, box=BOX, masks={"fc2.weight": mask})
    with torch.no_grad():
        net.fc2.weight.mul_(mask)
    zeroed = regions_on_slice(net, x0, d1, d2, box=BOX)
    assert pruned.count == zeroed.count
    assert _keys(pruned.patterns) == _keys(zeroed.patterns)


@pytest.mark.parametrize("c", [2.0**-660, 2.0**-30, 3.0, 2.0**40])
def test_scaling_the_plane_against_the_box_changes_nothing(c):
    """Also with a box 1e199 wide, where float crossing points underflow (their position is then exact)."""
    net = ResPoolCat(3, 6, 0).double().eval()
    x0, d1, d2 = _plane(3, 0)
    base = regions_on_slice(net, x0, d1, d2, box=BOX)
    res = regions_on_slice(net, x0, c * d1, c * d2, box=tuple(b / c for b in BOX))
    assert res.count == base.count
    assert _keys(res.patterns) == _keys(base.patterns)
    order = [np.argsort(_keys_list(r.patterns)) for r in (res, base)]
    for i, j in zip(*order):
        assert np.allclose(res.polygons[i] * c, base.polygons[j], rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------- (e) hypothesis
class CatBranches(nn.Module):
    """Two branches relu(fa x), leaky(fb x) concatenated, max-pooled pairwise, residual-added to a
    projection, then a head."""

    def __init__(self, n0: int, w: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fa, self.fb, self.proj = nn.Linear(n0, w), nn.Linear(n0, w), nn.Linear(n0, w)
        self.head = nn.Linear(w, 3)
        self.out = nn.Linear(3, 1)

    def forward(self, x):
        h = torch.cat([F.relu(self.fa(x)), F.leaky_relu(self.fb(x), 0.1)], dim=1)
        p = F.max_pool1d(h.unsqueeze(1), 2).flatten(1)
        return self.out(F.relu(self.head(p + self.proj(x))))


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(["res", "conv", "cat"]),
    seed=st.integers(0, 10_000),
    n0=st.integers(2, 5),
    scale=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_random_graphs_against_sampling(kind, seed, n0, scale):
    if kind == "res":
        net = ResMLP(n0, 6, 2, seed).double().eval()
    elif kind == "conv":
        net = conv_pool_1d(n0 + 2, 2, seed).double().eval()
        n0 += 2
    else:
        net = CatBranches(n0, 4, seed).double().eval()
    x0, d1, d2 = _plane(n0, seed, scale)
    _check_against_sampling(net, x0, d1, d2, n_grid=121)


# ------------------------------------------------------------------------- exact fallback, budgets
def test_plane_inside_a_units_hyperplane_is_settled_exactly():
    """A unit identically zero on the plane (within float error, never certainly): every sign there goes to
    exact arithmetic, which finds it zero (bit False, as the forward pass has it)."""
    net = ResPoolCat(3, 6, 0).double().eval()
    with torch.no_grad():
        net.fc1.weight[0] = torch.tensor([1.0, 0.0, 0.0])
        net.fc1.bias[0] = 0.0
    x0, d1, d2 = np.array([0.0, 0.3, -0.2]), np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])
    res = _check_against_sampling(net, x0, d1, d2)
    assert res.n_exact > 0
    assert not res.patterns[:, 0].any()


def test_chunked_memory_budget_and_max_regions():
    from netgeom.regions.exact import TooManyRegionsError

    net = ResPoolCat(3, 6, 1).double().eval()
    x0, d1, d2 = _plane(3, 1)
    full = regions_on_slice(net, x0, d1, d2, box=BOX)
    small = regions_on_slice(net, x0, d1, d2, box=BOX, memory_budget=2048)
    assert small.count == full.count and _keys(small.patterns) == _keys(full.patterns)
    with pytest.raises(TooManyRegionsError, match="node"):
        regions_on_slice(net, x0, d1, d2, box=BOX, max_regions=5)


# ------------------------------------------------------------------- compiled kernels vs numpy path
@settings(max_examples=10, deadline=None)
@given(
    kind=st.sampled_from(["res", "leaky", "conv", "cat", "flat", "vgg", "tied"]),
    seed=st.integers(0, 10_000),
    n0=st.integers(2, 5),
    whole=st.booleans(),
)
def test_compiled_kernels_equal_the_numpy_path(kind, seed, n0, whole):
    """The numba kernels (affine maps, ReLU cuts, max-pool pruning and cells) give the numpy path's regions,
    also where they give polygons back to it (a unit's hyperplane containing the plane, tied candidates)."""
    if kind in ("res", "leaky"):
        net = ResMLP(n0, 6, 2, seed, slope=0.1 if kind == "leaky" else 0.0)
    elif kind == "conv":
        net = conv_pool_1d(n0 + 2, 2, seed)
        n0 += 2
    elif kind == "cat":
        net = CatBranches(n0, 4, seed)
    elif kind == "vgg":
        from netgeom.nets.models import vgg

        net = vgg([2, "M", 3, "M"], in_channels=1, image_size=4, seed=seed % 100)
        n0 = 16
    elif kind == "tied":  # two identical candidates: their difference is within its bound everywhere
        net = ResPoolCat(n0, 6, seed)
        with torch.no_grad():
            net.fc2.weight[1], net.fc2.bias[1] = net.fc2.weight[0], net.fc2.bias[0]
            net.fc1.weight[1], net.fc1.bias[1] = net.fc1.weight[0], net.fc1.bias[0]
    else:
        net = ResPoolCat(n0, 6, seed)
        with torch.no_grad():
            net.fc1.weight[0] = 0.0
            net.fc1.weight[0, 0] = 1.0
            net.fc1.bias[0] = 0.0
    g = trace(net.double().eval())
    x0, d1, d2 = _plane(n0, seed)
    if kind == "flat":
        x0[0], d1[0], d2[0] = 0.0, 0.0, 0.0
    box = None if whole else BOX
    fast = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=True)
    ref = slice_graph_regions(g, x0, d1, d2, box, 10**6, 2**28, compiled=False)
    # (the whole plane's box is twice the farthest vertex, a float that depends on the order of sums)
    assert np.allclose(fast[0], ref[0], rtol=1e-6)
    assert len(fast[3]) == len(ref[3])
    assert _keys(fast[3]) == _keys(ref[3])
    if kind == "flat":
        assert ref[4] > 0 and fast[4] > 0


def test_max_regions_stops_the_compiled_max_pool_cut():
    """Some max_regions is enough for every node before a max-pool and too few for its cells: the compiled
    cut raises, naming the pool node."""
    from netgeom.regions.exact import TooManyRegionsError

    net = conv_pool_1d(6, 2, 0).double().eval()
    g = trace(net)
    x0, d1, d2 = _plane(6, 0)
    n = len(slice_graph_regions(g, x0, d1, d2, BOX, 10**6, 2**28)[3])
    pool = next(node for node in g.nodes if node.op == "maxpool")
    named = set()
    for mr in range(n - 1, 0, -1):
        with pytest.raises(TooManyRegionsError) as err:
            slice_graph_regions(g, x0, d1, d2, BOX, mr, 2**28)
        named.add(int(str(err.value).split(" by node ")[1].split()[0]))
        if pool.index in named:
            break
    assert pool.index in named


# ------------------------------------------------------------------------ kernels on their own inputs
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_affine_kernel_per_polygon_table_gives_the_same_floats(slope):
    """affine_maps on a ReLU output read in place: pieces of one polygon in a run (its products with the
    weights made once, in a table) and the same pieces interleaved with other polygons' (products made per
    piece) give the same floats, row for row; and every value is within its error bound of float64 math."""
    from netgeom.regions import _graph_slice_kernel as kern

    rng = np.random.default_rng(0)
    n_poly, n_in, n_out, per = 3, 24, 12, 6
    A = rng.normal(size=(n_poly, n_in))
    B = rng.normal(size=(n_poly, 2, n_in))
    E = np.abs(rng.normal(size=(n_poly, n_in))) * 1e-15
    A[:, 3], B[:, :, 3], E[:, 3] = 0.0, 0.0, 0.0  # an input exactly zero on every polygon
    M = rng.normal(size=(n_out, n_in))
    M[:, 5] = 0.0
    bias = rng.normal(size=n_out)
    parent = np.repeat(np.arange(n_poly), per)  # runs: the table path
    bits = rng.random((len(parent), n_in)) < 0.5
    gam = 1.01 * (n_in + 2) * 2.0**-53

    def run(par, bt):
        m = len(par)
        return kern.affine_maps(
            A, B, E, par, np.ascontiguousarray(bt), slope, True, np.ascontiguousarray(M.T),
            np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0), bias, gam, 1e-300,
            np.empty((m, n_out)), np.empty((m, 2, n_out)), np.empty((m, n_out)),
        )

    runs = run(parent, bits)
    order = np.argsort(np.arange(len(parent)) % per, kind="stable")  # no two neighbours share a polygon
    assert np.all(parent[order][1:] != parent[order][:-1])
    mixed = run(parent[order], bits[order])
    for a, b in zip(runs, mixed):
        assert a[order].tobytes() == b.tobytes()
    gain = np.where(bits, 1.0, slope)
    x = np.stack([A[parent], B[parent, 0], B[parent, 1]]) * gain  # (3, pieces, n_in)
    ref = x @ M.T
    ref[0] += bias
    got = np.stack([runs[0], runs[1][:, 0], runs[1][:, 1]])
    assert np.all(np.abs(got - ref) <= runs[2][None] + 1e-12 * np.abs(ref))


def test_relu_kernel_grows_its_buffers_and_cuts_the_same_pieces():
    """relu_split given one-row working arrays (grown as it goes, the cut resuming with the piece at hand)
    gives the pieces, parents and bits it gives with ample arrays; a max_regions it cannot meet stops it
    with the same lower bound either way."""
    from netgeom.regions import _graph_slice_kernel as kern
    from netgeom.regions._graph_slice import initial_polygon

    rng = np.random.default_rng(1)
    n = 40
    rec, nv = initial_polygon(
        [[1.0, -1.0, -1.0], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0], [1.0, -1.0, 1.0]],
        [[1.0, 0.0, 1.0], [-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [1.0, 1.0, 0.0]],
    )
    A = rng.uniform(-0.5, 0.5, size=(1, n))
    B = rng.normal(size=(1, 2, n))
    E = np.full((1, n), 1e-16)

    def run(cap, K, max_regions=10**6):
        return kern.relu_split(
            rec, nv.astype(np.int64), A, B, E, False, 1.0, 1.0, 0, 0, max_regions, np.empty((cap, K, 9)),
            np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty((cap, n), np.bool_),
        )

    big, small = run(4096, 64), run(1, 6)
    assert big[0] == small[0] == 0 and len(big[3]) > 200
    for a, b in zip(big[3:], small[3:]):
        assert np.array_equal(a, b)
    for q in range(len(big[3])):
        assert big[2][q, : big[3][q]].tobytes() == small[2][q, : small[3][q]].tobytes()
    stop_big, stop_small = run(4096, 64, 100), run(1, 6, 100)
    assert stop_big[0] == stop_small[0] == 1 and stop_big[1] == stop_small[1] > 100


def test_pool_and_relu_kernels_with_one_row_buffers_cut_the_same_cells(monkeypatch):
    """On a global-max-pool net's real inputs, the ReLU and max-pool kernels given one-row working arrays
    (grown as they go) return what they return with the caller's ample arrays."""
    from netgeom.regions import _graph_slice_kernel as kern

    calls = []

    def twice(fn, n_tail):
        def run(*args):
            got = fn(*args)
            tiny = [np.empty((1, *a.shape[1:]), dtype=a.dtype) for a in args[-n_tail:]]
            again = fn(*args[:-n_tail], *tiny)
            assert got[:2] == again[:2]
            for a, b in zip(got[3:], again[3:]):
                assert np.array_equal(a, b)
            for q in range(len(got[3])):  # real vertices (the grown arrays may have more padding slots)
                assert got[2][q, : got[3][q]].tobytes() == again[2][q, : again[3][q]].tobytes()
            calls.append(fn.__name__)
            return got

        return run

    monkeypatch.setattr(kern, "relu_split", twice(kern.relu_split, 4))
    monkeypatch.setattr(kern, "pool_split", twice(kern.pool_split, 4))
    net = GlobalMax(2, 12, 6, 5, seed=3).double().eval()
    res = regions_on_slice(net, [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], box=BOX)
    assert res.count > 20 and sorted(set(calls)) == ["pool_split", "relu_split"]


def test_branch_free_line_is_the_scalar_line():
    """_line_soa (the ReLU kernel's vectorised line construction) gives _line's floats, zero flag and
    finiteness, or flags the rare scalings it leaves to _line: over magnitudes from subnormal to overflow,
    exact zeros, infinities and NaNs, with and without the quadrant map."""
    from netgeom.regions import _graph_slice_kernel as kern

    rng = np.random.default_rng(2)
    mags = np.array([0.0, 5e-324, 1e-310, 1e-300, 1e-20, 1.0, 3.5, 1e20, 1e300, 2.0**1021, 1.7e308])
    specials = np.array([np.inf, -np.inf, np.nan])
    seen_rare = seen_bad = 0
    for _ in range(3000):
        vals = rng.choice(mags, 4) * rng.choice([-1.0, 1.0], 4) * rng.uniform(0.5, 1.0, 4)
        if rng.random() < 0.05:
            vals[rng.integers(4)] = rng.choice(specials)
        if rng.random() < 0.2:
            vals[rng.integers(4)] = 0.0
        vals[3] = abs(vals[3])
        quadrant = bool(rng.random() < 0.5)
        su, sv = rng.choice([-1.0, 1.0], 2)
        out = np.empty(4)
        f = kern._line(*vals, quadrant, su, sv, out)
        fin, zero, rare, *line = kern._line_soa(*vals, quadrant, su, sv)
        assert fin == (f >= 0)
        if not fin:
            seen_bad += 1
            continue
        assert zero == (f == 1)
        if rare:
            seen_rare += 1
            continue
        assert np.array(line).tobytes() == out.tobytes()
    assert seen_rare > 0 and seen_bad > 0
