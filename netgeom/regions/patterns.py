"""Sampled activation patterns: how many distinct patterns a set of inputs meets.

The activation pattern of an input is the boolean vector ``[z_i(x) > 0]`` over every unit followed by a ReLU
or LeakyReLU: all hidden layers, and the last layer too when the network ends with an activation (its kinks
cut regions like any other). Layers with the identity activation (the usual classifier, an affine layer
between two parametrised modules) have no bits.
Patterns are compared exactly: each pattern is packed into bytes (``np.packbits``) and the packed rows are
deduplicated with ``np.unique`` on a ``void`` view, so two different patterns can never be merged (no hash).
The count is a lower bound on the number of activation regions the inputs' set meets.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .._matmul import ieee_float32
from .._validation import check_bool, check_choice, check_int, check_tensor, inexact_integers
from ..nets import AffineLayer
from ..results import Result, new_axes

__all__ = ["PatternCountResult", "count_patterns", "pattern_layers", "pack_patterns", "unique_rows"]

_CHAIN_ROWS = 4096
_GRAPH_ROWS = 2048  # graphs on several threads: rows per chunk (a count of 2 * 10^4 images in ~10 chunks)
_WHOLE_DECISIONS = 1 << 24  # one CPU thread: batches of more decisions (rows x pattern bits) are chunked
_REDO64 = 0.3  # graphs: past this fraction of rows redone in float64, run float64 from the start


def pattern_layers(layers: Sequence[AffineLayer]) -> list[bool]:
    """For each layer, whether its units contribute bits to the activation pattern: exactly the layers with a
    ReLU or LeakyReLU activation, wherever they are. The usual classifier (identity activation) has none, but
    a network that ends with an activation is piecewise linear in its last layer too, so that layer counts.

    >>> from torch import nn
    >>> from netgeom.nets import affine_layers
    >>> pattern_layers(affine_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))))
    [True, False]
    >>> pattern_layers(affine_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1), nn.ReLU())))
    [True, True]
    """
    return [layer.activation != "identity" for layer in layers]


def _last_pattern_layer(flags: Sequence[bool]) -> int:
    """Index of the last layer with pattern bits (-1 if none): later layers cannot change the pattern."""
    return max((i for i, f in enumerate(flags) if f), default=-1)


def pack_patterns(bits: np.ndarray) -> np.ndarray:
    """Pack a boolean ``(N, n_bits)`` pattern array into ``(N, max(1, ceil(n_bits / 8)))`` uint8 rows.

    A network without hidden units still gets one (zero) byte per row, so that every input has one pattern.

    >>> pack_patterns(np.array([[True, False, True]])).tolist()
    [[160]]
    """
    bits = np.asarray(bits, dtype=bool)
    if bits.ndim != 2:
        raise ValueError(f"bits must be 2-D (N, n_bits), got shape {bits.shape}")
    if bits.shape[1] == 0:
        return np.zeros((bits.shape[0], 1), dtype=np.uint8)
    return np.packbits(bits, axis=1)


def unique_rows(packed: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a uint8 array (sorted) and their multiplicities, by exact byte comparison.

    ``counts`` gives each input row a weight (default 1), so partial results can be merged.

    >>> u, c = unique_rows(np.array([[1, 2], [0, 5], [1, 2]], dtype=np.uint8))
    >>> u.tolist(), c.tolist()
    ([[0, 5], [1, 2]], [1, 2])
    """
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    if packed.ndim != 2:
        raise ValueError(f"packed must be 2-D, got shape {packed.shape}")
    width = packed.shape[1]
    if packed.shape[0] == 0:
        return packed.reshape(0, width), np.zeros(0, dtype=np.int64)
    # A void view compares whole rows as byte strings: exact, and one sort instead of a lexsort per column.
    view = packed.view(np.dtype((np.void, width))).ravel()
    uniq, inverse = np.unique(view, return_inverse=True)
    if counts is None:
        mult = np.bincount(inverse.ravel(), minlength=len(uniq)).astype(np.int64)
    else:
        mult = np.bincount(inverse.ravel(), weights=counts, minlength=len(uniq)).round().astype(np.int64)
    return uniq.view(np.uint8).reshape(-1, width), mult


class _Counter:
    """Distinct packed rows with multiplicities, merged lazily so memory stays ~ the number of patterns."""

    def __init__(self, width: int):
        self.rows = np.zeros((0, width), dtype=np.uint8)
        self.counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._n_pending = 0

    def add(self, packed: np.ndarray) -> None:
        u, c = unique_rows(packed)
        self._pending.append((u, c))
        self._n_pending += len(u)
        # Merging only when the pending rows outnumber the merged ones keeps the total work O(N log N).
        if self._n_pending > max(len(self.rows), 1 << 16):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        rows = np.concatenate([self.rows] + [u for u, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self.rows, self.counts = unique_rows(rows, counts)
        self._pending, self._n_pending = [], 0

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._merge()
        return self.rows, self.counts


@dataclass
class PatternCountResult(Result):
    """Distinct activation patterns among sampled inputs.

    ``count`` is the number of distinct patterns, ``n_singletons`` how many were met by a single input;
    ``saturated`` is True when more than half the patterns are singletons — then the sample is too small for
    the count to say much about the number of regions (it mostly counts samples). ``per_layer`` holds the
    number of distinct patterns of each pattern layer alone and ``cumulative`` that of layers 1..l together
    (the last entry equals ``count``), when asked for. ``n_float64`` inputs had float64 work (a unit too
    close to a boundary to decide in float32, or all of them when the first layers run in float64);
    ``n_exact`` of those were decided in exact rational arithmetic.
    """

    count: int
    n_samples: int
    n_singletons: int
    saturated: bool
    n_bits: int
    layer_names: list[str]
    per_layer: list[int] | None = None
    cumulative: list[int] | None = None
    patterns: np.ndarray = field(default=None, repr=False)
    multiplicities: np.ndarray = field(default=None, repr=False)
    n_float64: int = 0
    n_exact: int = 0

    def plot(self, ax=None):
        """Rank-frequency plot of the patterns (log-log): a flat tail of 1s means saturation."""
        fig, ax = new_axes(ax)
        mult = np.sort(np.asarray(self.multiplicities))[::-1]
        ax.loglog(np.arange(1, len(mult) + 1), mult, ".", ms=3)
        ax.set_xlabel("pattern rank")
        ax.set_ylabel("inputs with this pattern")
        flag = " (saturated)" if self.saturated else ""
        ax.set_title(
            f"{self.count} patterns in {self.n_samples} inputs, {self.n_singletons} singletons{flag}"
        )
        return ax


def _finite_batch(x, name: str) -> torch.Tensor:
    x = check_tensor(x, name, finite=False)
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have a batch axis: shape (N, n_features) or (N, *input_shape), got {tuple(x.shape)}"
        )
    if x.is_floating_point() and x.numel():
        lo, hi = torch.aminmax(x)  # one pass; NaN and inf propagate into the extremes
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the input first")
    elif not x.is_floating_point() and not x.is_complex():
        # integers are exact in float32 up to 2^24 and in float64 up to 2^53; beyond, no float holds them
        if x.dtype == torch.bool or not x.numel() or inexact_integers(x, 24) is None:
            return x.to(torch.float32)
        bad = inexact_integers(x, 53)
        if bad is not None:
            raise ValueError(
                f"{name} holds the integer {bad}, which no float64 holds exactly, so its patterns cannot be "
                "certified; pass the inputs as floats (rounded on purpose) or rescale them"
            )
        x = x.to(torch.float64)
    return x


def _batches(X, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(X, (np.ndarray, torch.Tensor, list, tuple)):
        X = _finite_batch(X, "X")
        for i in range(0, X.shape[0], batch_size):
            yield X[i : i + batch_size]
    elif isinstance(X, Iterable):
        for i, batch in enumerate(X):
            yield _finite_batch(batch, f"X batch {i}")
    else:
        raise TypeError(
            f"X must be an array/tensor of inputs or an iterable of batches, got {type(X).__name__}"
        )


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}: {exc}") from None
    check_choice(str(dev.type), "device type", ("cpu", "cuda", "mps"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested, but MPS is not available on this machine")
    return dev


def _bits_of(decisions: dict[int, torch.Tensor], nodes, widths) -> np.ndarray:
    cols = []
    for node, w in zip(nodes, widths):
        d = decisions[node.index]
        if node.op == "relu":
            cols.append(d.numpy())
        else:  # the argmax position of every window, in binary (most significant bit first)
            # one bit plane at a time into a byte array, from the positions as bytes when they fit: int64
            # shifts of the whole (rows, windows, bits) block made temporaries of 16 bytes per bit (LeNet-5,
            # 8192 inputs: 113 MB and ~80 ms of page faults, against ~10 ms)
            nb = w // node.size
            pos = d.numpy().astype(np.uint8 if nb <= 8 else np.int64, copy=False)
            bits = np.empty((*pos.shape, nb), dtype=np.uint8)
            for j in range(nb):
                np.bitwise_and(pos >> (nb - 1 - j), 1, out=bits[..., j], casting="unsafe")
            cols.append(bits.reshape(len(pos), pos.shape[1] * nb).view(np.bool_))
    if not cols:
        return np.zeros((0, 0), dtype=bool)
    # numpy's copy, not torch.cat: this runs on the counting thread while the chunk workers compute, and a
    # torch operation there would wake torch's OpenMP team, whose threads then spin on the workers' cores
    # (784-400-400-10, 65 536 inputs, 2 threads: 0.2 s of CPU time, a quarter of the wall time)
    return np.concatenate(cols, axis=1)


# TF32 / bfloat16 pieces or flushed subnormals would void the float32 bounds: IEEE arithmetic for the whole
# count, from the plan's norms and weight casts (under a caller's flushing a float64 weight of 1e-310 counted
# as 0 there and its row's bound came out 0) to the last chunk
@ieee_float32()
def count_patterns(
    model: torch.nn.Module,
    X,
    masks=None,
    *,
    batch_size: int = 8192,
    per_layer: bool = False,
    device: str | torch.device = "cpu",
    input_shape=None,
    precision: str = "float32",
    verbose: bool = True,
) -> PatternCountResult:
    """Count the distinct activation patterns that the inputs ``X`` produce.

    The pattern of an input is every ReLU/LeakyReLU sign ``[z > 0]`` and the argmax of every max-pooling
    window (its position in the window, first maximal position on ties), over the traced graph of the
    model (:func:`netgeom.trace`: residual blocks, concatenations, max-pooling, functional activations).
    Patterns are exact: the forward pass runs in float32 with a certified bound on its rounding error.
    For chains of dense Linear layers (MLPs, pruned or not) each undecided (input, unit) pair is recomputed
    as a float64 dot product, then in exact rational arithmetic, and the first layer runs float64-accurate
    (from exact int8 products on the CPU, else in float64) when a trial batch shows that float32's propagated
    error would leave most inputs undecided further on. For other
    graphs, inputs with a pre-activation (or a window's top two entries) too close to decide are redone in
    float64, then exactly (:mod:`netgeom.nets.certified`). On the CPU with several torch threads, chunks of
    inputs are decided on one worker thread each (each thread's torch operations on one OpenMP thread).

    Parameters
    ----------
    model : any network :func:`netgeom.trace` reads (masks respected).
    X : inputs of shape ``(N, n_0)`` or ``(N, *input_shape)``, or an iterable of such batches (streamed, so
        e.g. a 10^6-point grid never has to sit in memory).
    batch_size : rows evaluated at once; memory is O(batch_size · width + number of patterns).
    per_layer : also count the patterns of each pattern node alone and of nodes 1..l together.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` for the forward pass (checked: an unavailable
        device is an error; TF32 is switched off on CUDA while counting).
    input_shape : one sample's shape, passed to :func:`netgeom.trace` (conv nets). When neither it nor
        ``model.input_shape`` is given and ``X`` is an array with more than 2 axes, ``X.shape[1:]``.
    precision : ``"float32"`` (default; certified, redone exactly where needed) or ``"float64"`` (the same
        certified procedure starting in float64). With ``"float32"``, when more than 30% of the inputs of
        a 512-input trial (or of a batch) of a non-chain graph are undecided in float32, float64 is used from
        then on (cheaper than redoing them).
    verbose : a progress bar (inputs counted) once counting has taken over a second; ``False`` keeps quiet.

    Example
    -------
    >>> from netgeom import mlp
    >>> X = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    >>> res = count_patterns(mlp(2, [4], 1, seed=0), X)
    >>> res.count <= 11  # 4 lines cut the plane into at most 11 regions
    True
    """
    per_layer = check_bool(per_layer, "per_layer")
    verbose = check_bool(verbose, "verbose")
    from ..nets import trace
    from ..nets._workers import chunk_pool, map_ordered
    from ..nets.certified import _one_thread as one_thread
    from ..nets.certified import (
        chain_decide,
        chain_plan,
        choose_prefix,
        graph_patterns,
        pattern_nodes,
        pattern_widths,
    )

    batch_size = check_int(batch_size, "batch_size", minimum=1)
    dev = _check_device(device)
    check_choice(precision, "precision", ("float32", "float64"))
    dtype = torch.float32 if precision == "float32" else torch.float64
    if dev.type == "mps" and dtype == torch.float64:
        raise ValueError("MPS has no float64: use precision='float32' (its float64 re-checks run on the CPU)")
    if (
        input_shape is None
        and getattr(model, "input_shape", None) is None
        and isinstance(X, (np.ndarray, torch.Tensor))
        and X.ndim > 2
    ):
        input_shape = tuple(X.shape[1:])
    g = trace(model, masks, input_shape=input_shape)
    nodes = pattern_nodes(g)
    widths = pattern_widths(g)
    names = [_pattern_name(g, n) for n in nodes]
    n0 = g.n_in
    n_bits = int(sum(widths))
    total = _Counter(max(1, (n_bits + 7) // 8))
    single = [_Counter(max(1, (w + 7) // 8)) for w in widths] if per_layer else []
    cumul = [_Counter(max(1, (sum(widths[: i + 1]) + 7) // 8)) for i in range(len(widths))]
    cumul = cumul if per_layer else []
    starts = np.cumsum([0] + widths)
    n_samples = 0
    engines: dict = {}
    run_dtype = dtype
    redone = {"float64": 0, "exact": 0}
    # chains of dense Linear layers (MLPs, pruned or not) are decided per (row, unit); other graphs per row
    plan = chain_plan(g, dev) if nodes and dev.type != "mps" else None
    # the per-unit chain path runs a dozen elementwise passes over (rows, width) float64 arrays: in chunks of
    # at most 4096 rows they stay small (65 536 points through 784-400-400-10 on one thread: 13% less CPU
    # time than 8192 rows at once)
    step = min(batch_size, _CHAIN_ROWS) if plan is not None and dev.type == "cpu" else batch_size

    def chunks() -> Iterator[torch.Tensor]:
        for i, batch in enumerate(_batches(X, batch_size)):
            # a sample of another shape with as many entries (channels last for channels first) would be
            # read reordered without a word
            if tuple(batch.shape[1:]) not in ((n0,), tuple(g.input_shape)):
                shapes = {(n0,), tuple(g.input_shape)}
                raise ValueError(
                    f"X batch {i} has samples of shape {tuple(batch.shape[1:])}, but the network takes {n0} "
                    f"inputs, of shape {' or '.join(map(str, sorted(shapes, key=len)))}"
                )
            x = batch.reshape(batch.shape[0], -1)
            if x.is_complex():
                raise TypeError(f"X batch {i} is complex; patterns are defined for real inputs")
            for a in range(0, x.shape[0], step):
                yield x[a : a + step]

    def count(xb: torch.Tensor, dec: dict, stats: dict) -> None:
        nonlocal n_samples
        for k in redone:
            redone[k] += stats[k]
        B = _bits_of(dec, nodes, widths) if nodes else np.zeros((xb.shape[0], 0), dtype=bool)
        total.add(pack_patterns(B))
        if per_layer:
            for l_idx in range(len(widths)):
                single[l_idx].add(pack_patterns(B[:, starts[l_idx] : starts[l_idx + 1]]))
                cumul[l_idx].add(pack_patterns(B[:, : starts[l_idx + 1]]))
        n_samples += xb.shape[0]
        bar.update(xb.shape[0])

    # the bounds are for the float32/float64 operations they describe: a caller's autocast (bfloat16 or
    # float16 products) is switched off here (the chunk workers never inherit it: it is per thread)
    size = X.shape[0] if isinstance(X, (np.ndarray, torch.Tensor)) and X.ndim else None
    bar = tqdm(total=size, desc="count_patterns", unit="input", delay=1.0, disable=not verbose)
    with bar, torch.no_grad(), torch.autocast(dev.type, enabled=False):
        stream = chunks()
        if plan is not None:
            first = next(stream, None)
            if first is not None:
                # float64 for every layer when asked; else the cheapest float64-accurate prefix (and whether
                # its first layer comes from int8 products) on a trial
                if dtype == torch.float64:
                    m, levels = len(plan.layers), 0
                else:
                    m, levels = choose_prefix(plan, first[:512])
                second = next(stream, None)
                stream = itertools.chain([first] + ([second] if second is not None else []), stream)
                # on the CPU, chunks go to one thread per torch thread, each running its torch products on
                # one OpenMP and one MKL thread (netgeom.nets._workers: no spinning workers between the
                # products and the compiled passes); the results are counted in order, on this thread, as
                # they come. A single chunk keeps torch's own threads.
                pool = chunk_pool() if dev.type == "cpu" and second is not None else None
                engines_of: dict = {}  # per thread: the float64 graph engines of redone rows

                def decide(xb):
                    engines = engines_of.setdefault(threading.get_ident(), {})
                    # grad mode is per thread: without this, an X that requires grad reached .numpy()
                    with torch.no_grad():
                        return xb, chain_decide(g, plan, xb, m, _engines=engines, int8=levels)

                ahead = 2 * torch.get_num_threads()
                with pool or contextlib.nullcontext():
                    for xb, (dec, stats) in map_ordered(pool, decide, stream, ahead):
                        count(xb, dec, stats)
        else:
            first = next(stream, None)
            if first is not None and run_dtype == torch.float32:
                # a small float32 trial first, on this thread: when float32 cannot decide many inputs (its
                # certified rounding bound is too wide next to the margins of this network), go float64 at
                # once (the float32 pass plus float64 redos of 30% of the rows cost about one float64 pass)
                with one_thread(dev):
                    head, st = graph_patterns(g, first[:512], device=dev, dtype=run_dtype, _engines=engines)
                if st["float64"] > _REDO64 * min(512, first.shape[0]):
                    run_dtype = torch.float64
                count(first[:512], head, st)
                first = first[512:]  # (the trial's rows are decided already)
            second = next(stream, None) if first is not None else None
            several = second is not None or (first is not None and first.shape[0] > _GRAPH_ROWS)
            stream = itertools.chain([b for b in (first, second) if b is not None and b.shape[0]], stream)
            # on the CPU, chunks of _GRAPH_ROWS go to one thread per torch thread, each running the graph
            # engine (products included) on one OpenMP thread, as for chains: the engine's compiled passes and
            # small operations then use every core too, not only its products (a single chunk keeps
            # torch's own threads for its products, netgeom.nets.certified._one_thread)
            pool = chunk_pool() if dev.type == "cpu" and several else None

            def items():
                for xb in stream:
                    # (on one CPU thread too, chunks of _GRAPH_ROWS once a batch's decisions are large: those
                    # of a whole 8192-row batch of a conv net, ~85 MB of bools for conv 3-32-64, and their
                    # concatenation were fresh arrays, paged in batch after batch, ~25 % of its CPU time; the
                    # 5 MB of a residual MLP's cost less than the chunks' own overhead, ~5 %)
                    if pool is None and (dev.type != "cpu" or xb.shape[0] * n_bits <= _WHOLE_DECISIONS):
                        yield xb, run_dtype
                    else:
                        for a in range(0, xb.shape[0], _GRAPH_ROWS):
                            yield xb[a : a + _GRAPH_ROWS], run_dtype  # (the dtype as of when drawn)

            def decide(item):
                xb, dt = item
                # one torch thread on the CPU for the decisions and their bookkeeping (see
                # netgeom.nets.certified._one_thread: a torch operation on torch's team here would leave its
                # threads spinning through the next graph pass); grad mode is per thread
                with torch.no_grad(), one_thread(dev):
                    # (the engines are shared: their per-run state is per thread)
                    dec, stats = graph_patterns(g, xb, device=dev, dtype=dt, _engines=engines)
                if dt == torch.float64:
                    stats["float64"] = xb.shape[0]
                return xb, dt, dec, stats

            with pool or contextlib.nullcontext():
                ahead = 2 * torch.get_num_threads()
                for xb, dt, dec, stats in map_ordered(pool, decide, items(), ahead):
                    if dt == torch.float32 and stats["float64"] > _REDO64 * xb.shape[0]:
                        # float32 cannot decide most inputs of this network (its rounding-error bound is
                        # too wide next to the margins): a float64 pass from the start is then cheaper
                        run_dtype = torch.float64
                    count(xb, dec, stats)
    if n_samples == 0:
        raise ValueError("X holds no inputs: nothing to count")
    rows, mult = total.result()
    n_single = int((mult == 1).sum())
    return PatternCountResult(
        count=len(rows),
        n_samples=n_samples,
        n_singletons=n_single,
        saturated=bool(n_single > len(rows) / 2),
        n_bits=n_bits,
        layer_names=names,
        per_layer=[len(c.result()[0]) for c in single] if per_layer else None,
        cumulative=[len(c.result()[0]) for c in cumul] if per_layer else None,
        patterns=rows,
        multiplicities=mult,
        n_float64=redone["float64"],
        n_exact=redone["exact"],
    )


def _pattern_name(g, node) -> str:
    """A relu right after an affine node is named by that node's module (``'0'``, ``'layer1.0.conv1'``), as
    the layers of :func:`affine_layers`; other pattern nodes by their module or fx node name."""
    if node.op == "relu":
        src = g.nodes[node.inputs[0]]
        if src.op == "affine":
            return src._first_name
    return node.module or node.name
