"""Exact slice counts: netgeom vs regioncam side by side, and vs grid sampling.

Main table (default): the same plane and the same centred square box for netgeom's ``regions_on_slice``
(exact: certified float64 decisions with an exact integer fallback) and regioncam (float32 region tracer),
on random MLPs from 2-32-32-1 to 2-D slices of 784-400-400-10. Prints both counts, whether they agree, both
times and the ratio regioncam time / netgeom time (> 1: netgeom faster), also without the model's trace
(``t_ng-tr``: on the model traced beforehand; the trace is paid once per call). Each time is the best
of ``--repeat`` runs.
regioncam's float32 drifts on boxes far larger than the arrangement (``r = 1e6`` rows), where netgeom's
count is the exact one (it equals its ``box=None`` whole-plane count).

Second table (default and ``--quick``): traced graphs through the same call, pruned residual MLPs
(magnitude masks per hidden matrix) and a global max-pool net (the max-pooling regioncam can express),
against regioncam on the same plane and box, also without the model's trace (``t_ng-tr``: on the graph
traced beforehand) and the trace alone (``t_tr``, each right after a slice, as inside the ``t_ng`` calls);
the four are timed in turn, round after round (``--repeat`` rounds), so that both sides meet the same load;
``med`` is regioncam's median time over netgeom's (whole call), next to the ratio of
the best times. regioncam's float32 loses slivers on large slices (a 106 214-region residual slice has
pieces of area ~1e-15, each certified by its own float64 witness point).

    python benchmarks/bench_regions.py --quick           # < 1 minute
    python benchmarks/bench_regions.py                   # all rows
    python benchmarks/bench_regions.py --quick --graphs-only --repeat 15   # the traced-graph rows only
    python benchmarks/bench_regions.py --vs-grid         # the older exact-vs-grid-sampling table
    python benchmarks/bench_regions.py --segments-only --threads 1   # the conv-net segment rows only

Third table (default, not ``--graphs-only``): ``regions_on_segment`` through conv nets (a pruned ResNet-20
of width 4 as a traced graph, a small conv chain) against the same call with every affine node's matrix
probed by pushing the identity basis through it (the code before ``PLNode.sparse_matrix``): CPU times of
interleaved rounds, and whether edges, patterns and outputs agree bit for bit.

For MLPs ``n0 -> w -> w -> 10`` (w in 100, 200, 400) on a 40-D (MNIST-1D) and a 64-D (digits) input, the
plane through three training inputs (Cai et al. 2023) is cut into its activation regions exactly
(``regions_on_slice``) and sampled on a ``grid × grid`` lattice (``count_patterns``, streamed). Prints both
times, their ratio, both counts, whether every grid pattern is an exact region (it must be), and how many
exact regions the grid misses.

    python benchmarks/bench_regions.py            # 1000 x 1000 grid, widths 100, 200, 400
    python benchmarks/bench_regions.py --quick    # 300 x 300 grid, width 100 only
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from netgeom.data.datasets import load_digits, load_mnist1d
from netgeom.nets import mlp
from netgeom.regions.exact import plane_through, regions_on_slice
from netgeom.regions.patterns import count_patterns, pack_patterns


def _train(net, X, y, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (128,))
        loss = torch.nn.functional.cross_entropy(net(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()


def _grid_batches(x0, d1, d2, box, n: int, rows_per_batch: int):
    u = np.linspace(box[0], box[1], n)
    v = np.linspace(box[2], box[3], n)
    base = torch.as_tensor(x0)
    D = torch.as_tensor(np.stack([d1, d2]))
    for i in range(0, n, rows_per_batch):
        vv = v[i : i + rows_per_batch]
        uv = torch.as_tensor(np.stack(np.meshgrid(u, vv), axis=-1).reshape(-1, 2))
        yield base + uv @ D


def _rc_count(net, x0, d1, d2, r: float) -> int:
    import regioncam

    rc = regioncam.Regioncam(size=r)
    rc.linear(np.stack([d1, d2]).astype(np.float32), np.asarray(x0, dtype=np.float32))
    mods = list(net)
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Linear) and i < len(mods) - 1:
            rc.linear(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
        elif isinstance(m, torch.nn.ReLU):
            rc.relu()
    return rc.num_faces


def _best(fn, repeat: int):
    out, times = _times(fn, repeat)
    return out, min(times)


def _times(fn, repeat: int):
    """The last result and the wall times of ``repeat`` calls."""
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _interleaved(fns: dict, repeat: int) -> tuple[dict, dict]:
    """The results and wall times of ``repeat`` rounds, each round calling every function of ``fns`` once in
    turn: on a shared machine every side meets the same load (one side timed in a burst of its own can meet
    a quiet or a busy minute the other never sees)."""
    out, times = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out[k].append(fn())
            times[k].append(time.perf_counter() - t0)
    return out, times


def _trace_after(before, fn) -> float:
    """Wall time of ``fn()`` right after an untimed ``before()``."""
    before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _faults(fn, repeat: int) -> float:
    """Median minor page faults of one call (-1 where the platform has no getrusage): fresh memory that
    the allocator hands back to the system between calls costs one fault per page touched again."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return -1.0
    out = []
    for _ in range(repeat):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return float(np.median(out))


def vs_regioncam(quick: bool, repeat: int) -> None:
    from netgeom.nets import affine_layers
    from netgeom.regions.exact import _hidden, _slice_layers

    rows = [(2, [32, 32], 1, 1.0), (2, [32, 32], 1, 10.0), (2, [32, 32], 1, 1e6), (2, [100, 100], 10, 1.0),
            (2, [100, 100], 10, 3.0), (784, [400, 400], 10, 0.5)]
    if not quick:
        rows += [(2, [100, 100], 10, 1e6), (64, [200, 200], 10, 2.0), (784, [400, 400], 10, 2.0)]
    # The slice kernel is compiled once per installation (cache on disk) and loaded once per process.
    warm = mlp(2, [2], 1, seed=0)
    affine_layers(warm)  # torch.fx's own first-use cost is not the kernel's
    t0 = time.perf_counter()
    regions_on_slice(warm, [0, 0], [1, 0], [0, 1])
    t_load = time.perf_counter() - t0
    print("netgeom regions_on_slice vs regioncam, same plane and box [-r, r]^2 (random init, seed 0)")
    print(f"first slice of this process (numba kernel loaded from its cache, or compiled): {t_load:.2f} s")
    print("t_ng-tr: netgeom on the traced model (the trace, affine_layers, paid once per call, excluded)")
    print("flt: median minor page faults of one t_ng-tr call")
    print(
        f"{'net':>16} {'r':>7} {'netgeom':>8} {'regioncam':>9} {'equal':>5} {'t_ng':>8} {'t_ng-tr':>8} "
        f"{'t_rc':>8} {'rc/ng':>6} {'rc/(ng-tr)':>10} {'flt':>6}"
    )
    for n0, widths, n_out, r in rows:
        net = mlp(n0, widths, n_out, seed=0)
        rng = np.random.default_rng(0)
        if n0 == 2:
            x0, d1, d2 = np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
        else:  # a plane through three image-like points in [0, 1]^n0
            x1, x2, x3 = rng.uniform(0, 1, size=(3, n0)).astype(np.float32).astype(np.float64)
            x0, d1, d2 = x1, x2 - x1, x3 - x1
        x0, d1, d2 = (v.astype(np.float32).astype(np.float64) for v in (x0, d1, d2))
        args = (net, x0, d1, d2)
        ours, t_ng = _best(lambda a=args, r=r: regions_on_slice(*a, box=(-r, r, -r, r)).count, repeat)
        traced, box = _hidden(net, None), (-r, r, -r, r)
        run = lambda a=args, t=traced, b=box: _slice_layers(*t, *a[1:], b, 10**6, 2**28)  # noqa: E731
        _, t_nt = _best(run, repeat)
        flt = _faults(run, repeat)
        theirs, t_rc = _best(lambda a=args, r=r: _rc_count(*a, r), repeat)
        arch = f"{n0}-{'-'.join(map(str, widths))}-{n_out}"
        print(
            f"{arch:>16} {r:>7.3g} {ours:>8} {theirs:>9} {str(ours == theirs):>5} {t_ng:>8.4f} {t_nt:>8.4f} "
            f"{t_rc:>8.4f} {t_rc / t_ng:>6.2f} {t_rc / t_nt:>10.2f} {flt:>6.0f}",
            flush=True,
        )


class _ResMLP(torch.nn.Module):
    """relu(inp x), then residual blocks h <- relu(h + fc_b(relu(fc_a h))), then a classifier."""

    def __init__(self, n0: int, w: int, blocks: int, n_out: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        nn = torch.nn
        self.inp = nn.Linear(n0, w)
        self.blocks = nn.ModuleList(
            [nn.Sequential(nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w)) for _ in range(blocks)]
        )
        self.out = nn.Linear(w, n_out)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        for b in self.blocks:
            h = torch.relu(h + b(h))
        return self.out(h)


class _GlobalMax(torch.nn.Module):
    """fc2(relu(fc1 x)) max-pooled over all its units (regioncam's max_pool), then relu(fc3 m), fc4."""

    def __init__(self, n0: int, w: int, c: int, h: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        nn = torch.nn
        self.fc1, self.fc2 = nn.Linear(n0, w), nn.Linear(w, c)
        self.fc3, self.fc4 = nn.Linear(1, h), nn.Linear(h, 1)
        self.c = c

    def forward(self, x):
        z = self.fc2(torch.relu(self.fc1(x)))
        m = torch.nn.functional.max_pool1d(z.unsqueeze(1), self.c).flatten(1)
        return self.fc4(torch.relu(self.fc3(m)))


def _magnitude_masks(net, density: float) -> dict:
    """Per-matrix magnitude masks keeping ``density`` of every hidden weight (the classifier stays dense)."""
    masks = {}
    for name, p in net.named_parameters():
        if name.endswith("weight") and not name.startswith(("out.", "fc4.")):
            k = max(1, int(round(density * p.numel())))
            thr = p.detach().abs().flatten().kthvalue(p.numel() - k + 1).values
            masks[name] = p.detach().abs() >= thr
    return masks


def _rc_graph_count(net, masks, x0, d1, d2, r: float) -> int:
    import regioncam
    from regioncam import nn as rn

    sd = {k: (v * masks[k] if k in masks else v).float() for k, v in net.state_dict().items()}

    def lin(rc, prefix):
        rc.linear(sd[prefix + ".weight"].numpy().T.copy(), sd[prefix + ".bias"].numpy().copy())

    rc = regioncam.Regioncam(size=r)
    rc.linear(np.stack([d1, d2]).astype(np.float32), np.asarray(x0, dtype=np.float32))
    if isinstance(net, _ResMLP):
        lin(rc, "inp")
        rc.relu()
        for i in range(len(net.blocks)):
            a, b = f"blocks.{i}.0", f"blocks.{i}.2"
            block = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.ReLU(), torch.nn.Linear(1, 1))
            block[0].weight.data, block[0].bias.data = sd[a + ".weight"], sd[a + ".bias"]
            block[2].weight.data, block[2].bias.data = sd[b + ".weight"], sd[b + ".bias"]
            rc.add(rn.Residual(rn.convert(block)))
            rc.relu()
    else:
        lin(rc, "fc1")
        rc.relu()
        lin(rc, "fc2")
        rc.max_pool()
        lin(rc, "fc3")
        rc.relu()
    return rc.num_faces


def vs_regioncam_graphs(quick: bool, repeat: int) -> None:
    """Traced graphs (``regions_on_slice``'s graph engine) against regioncam: pruned residual MLPs (magnitude
    masks per hidden matrix) and a global max-pool net, float32 weights, same plane and box [-r, r]^2."""
    # (kind, n0, width, blocks or pooled units, n_out, density, r)
    rows = [("res", 2, 32, 2, 1, 0.5, 1.0), ("res", 2, 100, 2, 10, 0.3, 1.0),
            ("res", 64, 100, 2, 10, 0.3, 0.5), ("max", 2, 64, 16, 1, 1.0, 2.0)]
    if not quick:
        rows += [("res", 2, 100, 3, 10, 0.3, 3.0), ("res", 784, 200, 2, 10, 0.1, 1.0),
                 ("max", 64, 100, 32, 1, 1.0, 1.0)]
    from netgeom.nets import trace
    from netgeom.regions.exact import _slice_on_graph

    # The graph engine's numba kernels are compiled once per installation (cache on disk), loaded once per
    # process: paid here, on a tiny graph, not in the first row.
    warm = _ResMLP(2, 3, 1, 1, seed=0).double().eval()
    trace(warm)  # torch.fx's own first-use cost is not the kernels'
    t0 = time.perf_counter()
    regions_on_slice(warm, [0, 0], [1, 0], [0, 1], box=(-1, 1, -1, 1))
    t_load = time.perf_counter() - t0
    print("\nnetgeom regions_on_slice (traced graph) vs regioncam, same plane and box [-r, r]^2 (seed 0)")
    print(f"first graph slice of this process (numba kernels loaded from cache, or compiled): {t_load:.2f} s")
    print("t_ng-tr: netgeom on the graph traced beforehand (the trace, paid once per call, excluded)")
    print("flt: median minor page faults of one t_ng-tr call; med: rc/ng of the median times")
    print("t_tr: the trace alone, each right after an untimed slice of the graph (as in the t_ng calls)")
    print(
        f"{'net':>26} {'r':>5} {'netgeom':>8} {'regioncam':>9} {'equal':>5} {'t_ng':>8} {'t_ng-tr':>8} "
        f"{'t_tr':>7} {'t_rc':>8} {'rc/ng':>6} {'med':>6} {'rc/(ng-tr)':>10} {'flt':>6}"
    )
    for kind, n0, w, k, n_out, density, r in rows:
        if kind == "res":
            net = _ResMLP(n0, w, k, n_out, seed=0)
            arch = f"res {n0}-{w}x(1+{k} blocks) p={density:g}"
        else:
            net = _GlobalMax(n0, w, k, 16, seed=0)
            arch = f"maxpool {n0}-{w}-max{k}-16"
        net = net.float().double().eval()
        masks = _magnitude_masks(net, density) if density < 1 else None
        rng = np.random.default_rng(0)
        if n0 == 2:
            x0, d1, d2 = np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0])
        else:
            x1, x2, x3 = rng.uniform(0, 1, size=(3, n0))
            x0, d1, d2 = x1, x2 - x1, x3 - x1
        x0, d1, d2 = (v.astype(np.float32).astype(np.float64) for v in (x0, d1, d2))
        args = (net, x0, d1, d2)
        g, box = trace(net, masks), (-r, r, -r, r)
        run = lambda a=args, g=g, b=box: _slice_on_graph(g, *a[1:], b, 10**6, 2**28).count  # noqa: E731
        # the whole call, the call on the graph traced beforehand, the trace right after a slice and
        # regioncam, in turn, round after round
        got, ts = _interleaved(
            {
                "ng": lambda a=args, r=r, m=masks: regions_on_slice(*a, box=(-r, r, -r, r), masks=m).count,
                "nt": run,
                "tr": lambda a=args, m=masks, f=run: _trace_after(f, lambda: trace(a[0], m)),
                "rc": lambda a=args, r=r, m=masks: _rc_graph_count(a[0], m or {}, *a[1:], r),
            },
            repeat,
        )
        ours, traced, theirs = got["ng"][-1], got["nt"][-1], got["rc"][-1]
        ts_ng, ts_rc = ts["ng"], ts["rc"]
        t_nt, t_tr = min(ts["nt"]), min(got["tr"])  # (the trace's own time, returned by _trace_after)
        flt = _faults(run, repeat)
        t_ng, t_rc = min(ts_ng), min(ts_rc)
        med = float(np.median(ts_rc) / np.median(ts_ng))
        print(
            f"{arch:>26} {r:>5.3g} {ours:>8} {theirs:>9} {str(ours == theirs == traced):>5} {t_ng:>8.4f} "
            f"{t_nt:>8.4f} {t_tr:>7.4f} {t_rc:>8.4f} {t_rc / t_ng:>6.2f} {med:>6.2f} {t_rc / t_nt:>10.2f} "
            f"{flt:>6.0f}",
            flush=True,
        )


@contextlib.contextmanager
def _probed_matrices():
    """Every affine node's matrix by pushing the identity basis through its ops (the code before
    ``PLNode.sparse_matrix`` read a convolution's matrix off its kernel): the same floats, the old cost."""
    from netgeom.nets.graph import PLNode

    direct = PLNode._direct
    PLNode._direct = lambda self: None
    try:
        yield
    finally:
        PLNode._direct = direct


def _conv_chain(size: int) -> torch.nn.Module:
    """conv 3x3 -> relu -> conv 3x3 stride 2 + BatchNorm -> relu -> linear: a chain (the segment engine on
    dense AffineLayer weights), seeded, with BatchNorm statistics that are not the identity."""
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
        nn.ReLU(), nn.Flatten(), nn.Linear(8 * ((size + 1) // 2) ** 2, 10),
    )
    with torch.no_grad():
        net[3].weight.uniform_(-2, 2)
        net[3].running_var.uniform_(0.5, 2)
    net.input_shape = (1, size, size)
    return net.eval()


def segment_rows(quick: bool, repeat: int) -> None:
    """regions_on_segment through convolutional nets (a pruned ResNet-20 of width 4, read as a traced graph;
    a conv chain without pooling, read as dense layers) against the same call with every affine node's matrix
    probed by the identity basis (the code before): CPU time, interleaved round by round, and whether edges,
    patterns and outputs agree bit for bit."""
    from netgeom.nets import resnet20
    from netgeom.pruning import magnitude_prune
    from netgeom.regions.exact import regions_on_segment

    size = 16 if quick else 28
    nets = [
        (f"resnet20 w4 1x{size}x{size} p=.75", resnet20(in_channels=1, image_size=size, width=4, seed=0),
         0.75, 0.02),
        (f"conv chain 1-8-8bn 1x{size}x{size} p=.5", _conv_chain(size), 0.5, 0.2),
    ]
    print("\nregions_on_segment through conv nets: matrices off the kernels vs probed by the identity basis")
    print(f"{'net':>30} {'t':>5} {'regions':>7} {'cpu_new':>8} {'cpu_probe':>9} {'ratio':>6} "
          f"{'wall_new':>8} {'wall_probe':>10} {'same':>5}")
    for name, net, sparsity, t1 in nets:
        masks = magnitude_prune(net, sparsity, scope="layer")
        gen = torch.Generator().manual_seed(0)
        a, b = torch.rand(2, 1, size, size, generator=gen, dtype=torch.float64)

        def run(probe: bool, net=net, masks=masks, a=a, b=b, t1=t1):
            with _probed_matrices() if probe else contextlib.nullcontext():
                c0, w0 = time.process_time(), time.perf_counter()
                res = regions_on_segment(net, a, b, masks=masks, t_range=(0.0, t1))
                return res, time.process_time() - c0, time.perf_counter() - w0

        got, _ = _interleaved({"new": lambda: run(False), "probe": lambda: run(True)}, repeat)
        new, old = got["new"][-1][0], got["probe"][-1][0]
        same = (
            new.count == old.count
            and np.array_equal(new.edges, old.edges)
            and np.array_equal(new.patterns, old.patterns)
            and np.array_equal(new.outputs, old.outputs)
        )
        cn, co = (min(r[1] for r in got[k]) for k in ("new", "probe"))
        wn, wo = (min(r[2] for r in got[k]) for k in ("new", "probe"))
        print(f"{name:>30} {t1:>5g} {new.count:>7} {cn:>8.2f} {co:>9.2f} {co / cn:>6.1f} {wn:>8.2f} "
              f"{wo:>10.2f} {str(same):>5}", flush=True)


def box_rows(quick: bool) -> None:
    """regions_in_box on a 10-16-16-3 MLP in [-r, r]^10: regions, LPs, regions/s, and agreement with
    dense sampling (every sampled pattern must be an enumerated region). relucent's search needs Gurobi
    (its facet LPs), so it is not run here; its qhull path only computes geometry after a search."""
    from netgeom.regions.exact import regions_in_box

    net = mlp(10, [16, 16], 3, seed=0)
    radii = [0.1, 0.2] if quick else [0.1, 0.2, 0.35]
    print("\nregions_in_box, 10-16-16-3 MLP (seed 0) in [-r, r]^10; relucent: needs Gurobi, not run")
    print(f"{'r':>6} {'regions':>8} {'LPs':>7} {'LP/reg':>6} {'time':>8} {'reg/s':>7} {'sampled ⊆':>10}")
    for r in radii:
        t0 = time.perf_counter()
        res = regions_in_box(net, -r * np.ones(10), r * np.ones(10), verbose=False, max_regions=10**6)
        dt = time.perf_counter() - t0
        X = np.random.default_rng(0).uniform(-r, r, size=(200_000, 10))
        smp = count_patterns(net, X)
        ok = {q.tobytes() for q in smp.patterns} <= {q.tobytes() for q in pack_patterns(res.patterns)}
        print(
            f"{r:>6} {res.count:>8} {res.n_lp:>7} {res.n_lp / res.count:>6.2f} {dt:>8.1f} "
            f"{res.count / dt:>7.1f} {str(ok):>10}",
            flush=True,
        )
    graph_box_rows(quick)


def graph_box_rows(quick: bool) -> None:
    """regions_in_box on traced graphs (a residual MLP, a global-max-pool net): in 2-D its count against
    the exact slice engine (regions_on_slice on the same box, positive-area regions), in 4-D against dense
    sampling (every sampled pattern must be an enumerated region)."""
    from netgeom.regions.exact import regions_in_box, regions_on_slice

    cases = [
        ("ResMLP 2-8x2blk-3", _ResMLP(2, 8, 2, 3, seed=0), 2, 2.0),
        ("GlobalMax 2-8-6-4", _GlobalMax(2, 8, 6, 4, seed=0), 2, 2.0),
        ("ResMLP 4-8x2blk-3", _ResMLP(4, 8, 2, 3, seed=0), 4, 0.5),
    ]
    if not quick:
        cases.append(("ResMLP 4-12x2blk-3", _ResMLP(4, 12, 2, 3, seed=0), 4, 0.5))
    # warm-up (imports, numba compilation of the slice kernels) outside the timings
    regions_in_box(cases[1][1], [-1, -1], [1, 1], verbose=False)
    regions_on_slice(cases[1][1], [0, 0], [1, 0], [0, 1], box=(-1, 1, -1, 1))
    print("\nregions_in_box on traced graphs in [-r, r]^d: 2-D vs regions_on_slice, else vs 200k samples")
    print(
        f"{'net':>20} {'d':>2} {'r':>4} {'regions':>8} {'LPs':>7} {'time':>7} {'reference':>10} "
        f"{'t_ref':>7} {'agree':>5}"
    )
    for name, net, d, r in cases:
        lo, hi = -r * np.ones(d), r * np.ones(d)
        t0 = time.perf_counter()
        res = regions_in_box(net, lo, hi, verbose=False, max_regions=10**6)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        if d == 2:
            ref = regions_on_slice(net, [0, 0], [1, 0], [0, 1], box=(-r, r, -r, r)).count
            ok = ref == res.count
        else:
            X = np.random.default_rng(0).uniform(-r, r, size=(200_000, d))
            smp = count_patterns(net, X)
            ref = smp.count
            ok = {q.tobytes() for q in smp.patterns} <= {q.tobytes() for q in pack_patterns(res.patterns)}
        t_ref = time.perf_counter() - t0
        print(
            f"{name:>20} {d:>2} {r:>4} {res.count:>8} {res.n_lp:>7} {dt:>7.2f} {ref:>10} {t_ref:>7.2f} "
            f"{str(ok):>5}",
            flush=True,
        )


def _load() -> str:
    import os

    try:
        return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    except (AttributeError, OSError):  # pragma: no cover - not on Unix
        return "unknown"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-box", action="store_true", help="skip the regions_in_box rows")
    ap.add_argument(
        "--graphs-only", action="store_true", help="only the traced-graph rows (residual, max-pool)"
    )
    ap.add_argument("--vs-grid", action="store_true", help="exact count vs grid sampling (trained nets)")
    ap.add_argument(
        "--segments-only", action="store_true", help="only the conv-net regions_on_segment rows"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per timing")
    ap.add_argument("--quick", action="store_true", help="300x300 grid and width 100 only (< 1 minute)")
    ap.add_argument("--grid", type=int, default=None, help="grid points per side (default 1000, quick 300)")
    ap.add_argument("--widths", type=int, nargs="*", default=None)
    ap.add_argument(
        "--train-steps", type=int, default=300, help="Adam steps before counting (0 = random init)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.segments_only:
        print(f"load average (1 min) at the start: {_load()}")
        segment_rows(args.quick, args.repeat)
        print(f"load average (1 min) at the end: {_load()}")
        return
    if not args.vs_grid:
        # every time here is wall clock: on a shared machine the others' load is part of it
        print(f"load average (1 min) at the start: {_load()}")
        if not args.graphs_only:
            vs_regioncam(args.quick, args.repeat)
        vs_regioncam_graphs(args.quick, args.repeat)
        if not args.graphs_only:
            segment_rows(args.quick, args.repeat)
        if not args.no_box and not args.graphs_only:
            box_rows(args.quick)
        print(f"load average (1 min) at the end: {_load()}")
        return
    grid = args.grid or (300 if args.quick else 1000)
    widths = args.widths or ([100] if args.quick else [100, 200, 400])
    datasets = [load_mnist1d(seed=args.seed, num_samples=2000).flat(), load_digits(seed=args.seed).flat()]
    print(f"grid {grid}x{grid} = {grid * grid} points; nets trained {args.train_steps} Adam steps")
    header = (
        f"{'data':>8} {'n0':>3} {'width':>6} {'exact':>8} {'grid':>8} {'missed':>7} {'t_exact':>8} "
        f"{'t_grid':>8} {'ratio':>6}  grid ⊆ exact"
    )
    print(header)
    for ds in datasets:
        n0 = ds.X_train.shape[1]
        X = ds.X_train.reshape(len(ds.X_train), -1).numpy().astype(np.float64)
        x0, d1, d2, box = plane_through(X[0], X[1], X[2], margin=0.25)
        for w in widths:
            net = mlp(n0, [w, w], ds.n_classes, seed=args.seed)
            if args.train_steps:
                _train(net, ds.X_train, ds.y_train, args.train_steps, args.seed)
            t0 = time.perf_counter()
            ex = regions_on_slice(net, x0, d1, d2, box)
            t_ex = time.perf_counter() - t0
            t0 = time.perf_counter()
            gr = count_patterns(net, _grid_batches(x0, d1, d2, box, grid, max(1, 20_000 // grid)))
            t_gr = time.perf_counter() - t0
            exact_set = {r.tobytes() for r in pack_patterns(ex.patterns)}
            grid_set = {r.tobytes() for r in gr.patterns}
            subset = grid_set <= exact_set
            missed = len(exact_set - grid_set)
            print(
                f"{ds.name:>8} {n0:>3} {w:>6} {ex.count:>8} {gr.count:>8} {missed:>7} {t_ex:>8.2f} "
                f"{t_gr:>8.2f} {t_ex / t_gr:>6.2f}  {subset and ex.count >= gr.count}",
                flush=True,
            )


if __name__ == "__main__":
    main()
