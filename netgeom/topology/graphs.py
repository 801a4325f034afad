"""Bipartite weight graphs of affine layers (the objects whose zeroth-order persistence we compute).

A layer with ``n_in`` inputs and ``n_out`` outputs is a bipartite graph on ``n_in + n_out`` vertices:
vertex ``i < n_in`` is input ``i``, vertex ``n_in + j`` is output ``j``. Every *unmasked, non-zero* weight
``W[j, i]`` is an edge ``(i, n_in + j)`` of normalised weight ``w̃ = |W[j, i]| / scale > 0``. ``scale`` is the
largest ``|w|`` of the layer (``normalize="layer"``, Balwani & Krzyston) or of the whole network
(``"network"``, Rieck et al.).

**Zero weights are absent edges**, exactly like masked (pruned) ones: a weight of 0 (or one whose ``w̃``
underflows to 0 in float64) never enters the superlevel filtration, which runs over ``w̃ ∈ (0, 1]``. This
is the limit of a tiny weight: an edge of weight ``ε`` gives the pair ``(1, ε)``, which tends to
``(1, 0)``, where every class that never dies is closed by the measures (persistence 1, the convention of
Rieck et al.'s code). An all-zero or fully pruned layer is a valid graph with no edge: every vertex is its
own essential class. (Under ``normalize="layer"``, ``ε · A`` normalises to ``A / max|A|`` for every
``ε > 0``: per-layer normalisation has no limit at the zero layer, which is one more reason the default
neural persistence normalises over the network.)

The *edge index* of ``W[j, i]`` is its flat position ``j * n_in + i`` in the ``(n_out, n_in)`` matrix; it
breaks ties between equal weights so that spanning forests are deterministic.

Convolutions become channel graphs (one vertex per channel, edge weight an aggregate of the kernel slice
``W[o, i, ...]``: ``"l1"`` (default), ``"l2"`` or ``"max"`` of its unmasked entries; a slice is an edge when
at least one of its weights is unmasked) or, for small inputs, the unrolled pixel graph of the effective
matrix ``AffineLayer.weight``. In unrolled mode a Linear that follows pooling is read through its
effective matrix too (pooling folded in, one input vertex per pre-pooling unit), so the unrolled graphs of
a conv net chain from the input to the classifier. Channel graphs chain from convolution to convolution
but not into a Linear after Flatten (channels vs flattened features) unless global average pooling
leaves one feature per channel: the network graph then refuses ``global_edges`` with an error saying so.

Any network that :func:`netgeom.nets.trace` reads has layer graphs (one per Linear/convolution, in
topological order; grouped convolutions connect each output channel to its group's inputs only). Layers
chain where one feeds the next through activations (and, for channel graphs, pooling or BatchNorm);
:attr:`NetworkGraph.chain_breaks` names the residual addition, concatenation, branch or max-pooling that
breaks the chain elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .._matmul import gradual_underflow
from .._validation import UNSET, check_array, check_choice
from ..nets import AffineLayer, PLNode, affine_layers, trace
from ..nets.graph import _kernel_in_shape

__all__ = ["LayerGraph", "NetworkGraph", "layer_graph", "network_graph", "AGGREGATES", "MAX_UNROLLED_EDGES"]

AGGREGATES = ("l1", "l2", "max")
NORMALIZATIONS = ("layer", "network")
CONV_MODES = ("channel", "unrolled")
#: Beyond this many entries the unrolled (Toeplitz) graph of a convolution is refused: use channel graphs.
MAX_UNROLLED_EDGES = 20_000_000


_UNSET: Any = UNSET


@dataclasses.dataclass(eq=False)
class LayerGraph:
    """A bipartite weight graph of one layer.

    Attributes
    ----------
    weights : ``(n_out, n_in)`` float64 normalised weights ``w̃`` in ``[0, 1]``; 0 where absent.
    mask : ``(n_out, n_in)`` bool, True where an edge is present (unmasked and ``w̃ > 0``).
    scale : the ``max |w|`` divided out (0 when the layer has no non-zero weight, i.e. no edge).

    The arrays are made read-only: the edge list, the edge count and the validation are computed once and
    cached, so the persistence of a graph costs no dense pass over its matrix. Constructing a
    ``LayerGraph`` directly validates the arrays (finite, ``[0, 1]``, ``mask`` = ``weights > 0``) and copies
    writeable ones.
    normalize : ``"layer"`` or ``"network"``.
    kind : ``"matrix"`` (raw array), ``"linear"``, ``"channel"`` (conv channel graph) or ``"unrolled"``.
    aggregate : ``"l1"``/``"l2"``/``"max"`` for channel graphs, else None.
    name, param_name : the layer's name and weight parameter (``"0.weight"``), None for raw matrices.
    """

    weights: np.ndarray
    mask: np.ndarray
    scale: float
    normalize: str
    kind: str
    aggregate: str | None = None
    name: str | None = None
    param_name: str | None = None
    #: set by layer_graph, whose arrays are fresh, valid and already read-only
    _trusted: dataclasses.InitVar[bool] = False

    def __post_init__(self, _trusted: bool) -> None:
        w, m = self.weights, self.mask
        if not (isinstance(w, np.ndarray) and isinstance(m, np.ndarray)):
            raise TypeError("LayerGraph weights and mask must be numpy arrays (use layer_graph to build one)")
        if w.dtype != np.float64 or m.dtype != bool or w.ndim != 2 or m.shape != w.shape:
            raise ValueError(
                f"LayerGraph needs float64 weights and a bool mask of one 2-D shape, got {w.dtype} {w.shape} "
                f"and {m.dtype} {m.shape}"
            )
        if not _trusted:
            # A user-built graph: check it once, then freeze copies so the cached edges stay true.
            if not np.isfinite(w).all() or (w < 0).any() or (w > 1).any():
                raise ValueError("LayerGraph weights must be finite normalised values w̃ in [0, 1]")
            if not np.array_equal(m, w > 0):
                raise ValueError(
                    "LayerGraph mask must be exactly weights > 0 (absent edges, pruned or zero, have w̃ = 0)"
                )
            w, m = w.copy(), m.copy()
            w.flags.writeable = m.flags.writeable = False
            self.weights, self.mask = w, m
        self._edges = None

    @property
    def n_out(self) -> int:
        return self.weights.shape[0]

    @property
    def n_in(self) -> int:
        return self.weights.shape[1]

    @property
    def n_vertices(self) -> int:
        return self.n_in + self.n_out

    @property
    def n_edges(self) -> int:
        return int(self.edges()[3].size)

    @property
    def n_possible(self) -> int:
        """Edges of the complete bipartite graph, ``n_in * n_out`` (for an unrolled convolution most of
        them are structurally impossible: ``topology_bound(model, conv="unrolled")`` counts the
        receptive-field edges)."""
        return self.n_in * self.n_out

    @property
    def density(self) -> float:
        return self.n_edges / self.n_possible

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(u, v, w, index)`` of the present edges in increasing flat edge index: input vertex, output
        vertex, ``w̃``, flat edge index (read-only arrays, computed once)."""
        if self._edges is None:
            idx = np.flatnonzero(self.mask.ravel())
            j, i = np.divmod(idx, self.n_in)
            out = (i, j + self.n_in, self.weights.ravel()[idx], idx)
            for a in out:
                a.flags.writeable = False
            self._edges = out
        return self._edges

    def __repr__(self) -> str:
        return (
            f"LayerGraph(name={self.name!r}, kind={self.kind}, {self.n_in}->{self.n_out}, "
            f"edges={self.n_edges}/{self.n_possible}, normalize={self.normalize}, aggregate={self.aggregate})"
        )


@dataclasses.dataclass(eq=False)
class NetworkGraph:
    """The layer graphs of a network in forward order, sharing one normalisation convention.

    The outputs of layer ``l`` are the inputs of layer ``l + 1`` when ``chained`` is True (the widths
    match); :meth:`global_edges` then gives the edges of the whole network on global vertex ids.
    """

    layers: list[LayerGraph]
    normalize: str
    scale: float
    #: per consecutive pair of layers, None when the first feeds the second directly (through activations,
    #: and for channel graphs pooling or BatchNorm), else why not: a residual addition, a concatenation, a
    #: branch (read from the traced graph by ``network_graph``; None everywhere for a hand-built list)
    links: list[str | None] | None = None

    @property
    def chained(self) -> bool:
        if self.links is not None and any(r is not None for r in self.links):
            return False
        return all(a.n_out == b.n_in for a, b in zip(self.layers[:-1], self.layers[1:]))

    @property
    def chain_breaks(self) -> list[tuple[int, str]]:
        """``(k, reason)`` for every pair of layers ``k, k + 1`` that do not chain (empty for a chain)."""
        out = []
        for k, (a, b) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            why = self.links[k] if self.links is not None else None
            if why is None and a.n_out != b.n_in:
                why = f"{a.n_out} output vertices of {a.name!r} vs {b.n_in} input vertices of {b.name!r}"
            if why is not None:
                out.append((k, why))
        return out

    @property
    def widths(self) -> list[int]:
        return [self.layers[0].n_in] + [g.n_out for g in self.layers]

    @property
    def vertex_offsets(self) -> np.ndarray:
        """Global id of each layer's first input vertex, then the total vertex count (``len(layers) + 1``
        entries): layer ``l``'s inputs are ``offsets[l] .. offsets[l+1]-1``, its outputs the next block."""
        return np.cumsum([0] + [g.n_in for g in self.layers] + [self.layers[-1].n_out])

    def global_edges(
        self, *, with_layers: bool = False
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray] | tuple[int, np.ndarray, np.ndarray, np.ndarray,
                                                                  np.ndarray, np.ndarray]:
        """``(n_vertices, u, v, w)`` of the chained network graph; vertex ids run layer by layer.

        Edges come layer by layer, each layer in increasing flat edge index, so an edge's position is its
        network-wide tie-break rank (layer first, then ``j * n_in + i``). With ``with_layers=True`` the
        layer number of every edge and its flat index within that layer are appended.
        """
        if not self.chained:
            raise ValueError(self._chain_error())
        us, vs, ws, ls, idxs = [], [], [], [], []
        offsets = self.vertex_offsets
        for k, g in enumerate(self.layers):
            u, v, w, idx = g.edges()
            us.append(u + offsets[k])
            vs.append(v + offsets[k])
            ws.append(w)
            if with_layers:
                ls.append(np.full(idx.size, k, dtype=np.int64))
                idxs.append(idx)
        out = (int(offsets[-1]), np.concatenate(us), np.concatenate(vs), np.concatenate(ws))
        if with_layers:
            out = out + (np.concatenate(ls), np.concatenate(idxs))
        return out

    def _network_edges(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
        """``(n_vertices, u, v, w, flat, bases)`` of the chained graph, cached (read-only arrays): ``u, v,
        w`` as :meth:`global_edges` (int64 vertex ids), ``flat`` each edge's flat index in the layers'
        weight matrices laid end to end, ``bases[k]`` where layer ``k``'s block starts (``len + 1``
        entries). The cache is keyed on the layer objects, whose arrays are frozen, so replacing a layer
        in ``layers`` recomputes it. The caller checks that the graph chains."""
        key = tuple(self.layers)
        cached = getattr(self, "_edges_cache", None)
        if cached is not None and len(cached[0]) == len(key) and all(a is b for a, b in zip(cached[0], key)):
            return cached[1]
        us, vs, ws, fs = [], [], [], []
        off, bases = 0, [0]
        for g in self.layers:
            u, v, w, idx = g.edges()
            us.append(u + off)
            vs.append(v + off)
            ws.append(w)
            fs.append(idx + bases[-1])
            off += g.n_in
            bases.append(bases[-1] + g.n_possible)
        out = (off + self.layers[-1].n_out, np.concatenate(us), np.concatenate(vs), np.concatenate(ws),
               np.concatenate(fs), bases)
        for a in out[1:5]:
            a.flags.writeable = False
        self._edges_cache = (key, out)
        return out

    def _chain_error(self) -> str:
        k, why = self.chain_breaks[0]
        a, b = self.layers[k], self.layers[k + 1]
        if self.links is not None and self.links[k] is not None:
            return (
                f"the layer graphs do not chain: layer {a.name!r} does not feed layer {b.name!r} directly "
                f"({why}), so the two graphs share no vertex set; per-layer diagrams, neural persistence "
                "and the topology bound still apply layer by layer"
            )
        msg = (
            f"the layer graphs do not chain: layer {a.name!r} has {a.n_out} output vertices but the next "
            f"layer {b.name!r} has {b.n_in} input vertices "
            f"(widths {[(g.n_in, g.n_out) for g in self.layers]})"
        )
        if a.kind == "channel" and b.kind != "channel":
            msg += (
                f". In conv='channel' mode a convolution's vertices are its {a.n_out} channels, while the "
                f"{b.kind} layer after Flatten has one input vertex per flattened feature ({b.n_in}), so the "
                "two graphs share no vertex set. Use network_graph(..., conv='unrolled') (one vertex per "
                "unit, pooling folded into the next layer; small inputs only) for the whole network, or "
                "analyse the layers one by one"
            )
        return msg

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i: int) -> LayerGraph:
        return self.layers[i]


# ------------------------------------------------------------------------------------------------ builders
def _as_bool_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
            raise TypeError(f"{name} must be boolean (or 0/1), got dtype {m.dtype}")
        m = m.astype(bool)
    if m.shape != tuple(shape):
        raise ValueError(f"{name} has shape {m.shape}, but the weights have shape {tuple(shape)}")
    return m


def _module_layer(module: nn.Module, mask: Any, conv: str, input_shape: Any) -> AffineLayer:
    """A bare Linear/Conv module read as a one-layer network; the mask goes in as that network's mask."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and input_shape is None:
        if conv == "unrolled":
            raise ValueError(
                f"the unrolled graph of a {type(module).__name__} depends on the input size: pass "
                "input_shape=(C, L) or (C, H, W), or give a layer of affine_layers(model, input_shape=...)"
            )
        # A channel graph reads only the kernel; the smallest input the kernel fits yields that kernel.
        k, d = module.kernel_size, module.dilation
        input_shape = (module.in_channels, *(di * (ki - 1) + 1 for ki, di in zip(k, d)))
    masks = None
    if mask is not None:
        masks = {"0.weight": torch.as_tensor(_as_bool_mask(mask, tuple(module.weight.shape), "mask"))}
    lay = affine_layers(nn.Sequential(module), masks, input_shape=input_shape)[0]
    return dataclasses.replace(lay, name=None, param_name="weight")


@dataclasses.dataclass
class _Weighted:
    """What a layer graph reads of an ``AffineLayer`` or of a traced affine ``PLNode``."""

    name: str | None
    param_name: str | None
    kernel: torch.Tensor | None
    mask: torch.Tensor | None
    kind: str
    shape: tuple[int, int]  # (n_out, n_in) of the effective matrix on the flattened input
    in_shape: tuple[int, ...]  # the weighted module's own input (see _kernel_input)
    matrix: Any  # () -> the effective (n_out, n_in) matrix (a convolution unrolls only when asked)


def _weighted(obj: Any) -> _Weighted | None:
    if isinstance(obj, AffineLayer):
        return _Weighted(obj.name, obj.param_name, obj.kernel, obj.mask, obj.kind, tuple(obj.weight.shape),
                         _kernel_input(obj), lambda: obj.weight)
    if isinstance(obj, PLNode) and obj.op == "affine":
        return _Weighted(obj._first_name or obj.name, obj.param_name, obj.kernel, obj.mask, obj.kind,
                         (obj.size, obj.in_size), _kernel_input(obj), obj.matrix)
    return None


def _kernel_input(obj: Any) -> tuple[int, ...]:
    """One sample's shape as the weighted module of a layer or traced affine node receives it: not the
    layer's ``in_shape`` when weight-free operations and a reshape are folded in front of the module (a
    BatchNorm1d on a flat input, then Unflatten, then the convolution)."""
    own = obj.kernel_in_shape if isinstance(obj, AffineLayer) else _kernel_in_shape(obj)
    return tuple(own if own is not None else obj.in_shape)


def _kernel_in_channels(obj: Any) -> int:
    """A convolution layer's (or traced node's) input channels, for its channel graph."""
    return int(_kernel_input(obj)[0])


def _channel_slices(kernel: np.ndarray, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """For a (possibly grouped) convolution kernel ``(C_out, C_in / groups, *k)``: the input channel of
    every kernel slice ``(C_out, C_in / groups)`` (output channel ``o`` of group ``g`` reads input channels
    ``g * C_in / groups + c``) and the group count."""
    c_out, per_group = kernel.shape[:2]
    groups = in_channels // per_group
    if groups * per_group != in_channels or c_out % groups:
        raise ValueError(f"kernel {kernel.shape} does not fit {in_channels} input channels")
    g = np.arange(c_out) // (c_out // groups)
    return g[:, None] * per_group + np.arange(per_group)[None, :], groups


def _aggregate(a: np.ndarray, aggregate: str) -> tuple[np.ndarray, int]:
    """The ``aggregate`` of every kernel slice ``a[o, c, :]`` (``|w|``, masked entries 0) as ``(values, e)``
    with the true aggregates ``values * 2**e``.

    Summing or squaring raw float64 weights over/underflows (an l2 of slices of 1e-170, an l1 of 9 entries
    of 1e308), so the layer is first divided by the power of two ``2**e`` just above its largest ``|w|``
    (exact: only the exponent changes) and, for l2, every slice again by its own power of two before
    squaring. The values are then at most the slice length, and since scaling all weights by ``2**k`` only
    shifts ``e``, the normalised graph is bitwise the same for every such ``k``, as for ``"max"``.
    """
    top = float(a.max()) if a.size else 0.0
    if top == 0.0:
        return np.zeros(a.shape[:2]), 0
    e = int(np.frexp(top)[1])
    a = np.ldexp(a, -e)
    if aggregate == "l1":
        return a.sum(-1), e
    if aggregate == "max":
        return a.max(-1), e
    es = np.frexp(a.max(-1))[1]  # 0 for an all-zero slice, which stays 0
    b = np.ldexp(a, -es[..., None])
    return np.ldexp(np.sqrt((b * b).sum(-1)), es), e


@gradual_underflow()  # every weight graph's magnitudes: a float32 weight of 1e-40 must not read as 0
def _magnitudes(layer_or_weight: Any, mask: Any, conv: str, aggregate: str) -> dict[str, Any]:
    """Absolute edge weights ``(n_out, n_in)`` and presence mask, before normalisation: the true
    magnitudes are ``absw * 2**exp`` (``exp`` is 0 but for channel graphs, see :func:`_aggregate`)."""
    layer = _weighted(layer_or_weight)
    if layer is not None:
        if layer.kernel is None or layer.param_name is None:
            raise ValueError(f"layer {layer.name!r} has no weight parameter (kind {layer.kind!r}): no graph")
        base = dict(name=layer.name, param_name=layer.param_name)
        kernel = layer.kernel.detach().cpu().numpy().astype(np.float64)
        kmask = np.ones(kernel.shape, bool) if layer.mask is None else layer.mask.cpu().numpy().astype(bool)
        if mask is not None:
            kmask = kmask & _as_bool_mask(mask, kernel.shape, "mask")
        if not np.isfinite(kernel).all():
            raise ValueError(f"layer {layer.name!r} has non-finite weights (NaN or inf)")
        # A Linear after pooling reads pooled features, so its effective matrix (pooling folded in) has
        # more inputs than its kernel; only that matrix chains with an unrolled convolution before it.
        folded = tuple(layer.shape) != tuple(kernel.shape)
        if kernel.ndim == 2 and not (conv == "unrolled" and folded):
            return dict(base, absw=np.abs(kernel), present=kmask, kind="linear", aggregate=None)
        if conv == "unrolled":
            if layer.shape[0] * layer.shape[1] > MAX_UNROLLED_EDGES:
                raise ValueError(
                    f"the unrolled graph of layer {layer.name!r} has {layer.shape[0] * layer.shape[1]} "
                    f"entries (> {MAX_UNROLLED_EDGES}); use conv='channel'"
                )
            W = layer.matrix().detach().cpu().numpy()
            if W.size > MAX_UNROLLED_EDGES:
                raise ValueError(
                    f"the unrolled graph of layer {layer.name!r} has {W.size} entries "
                    f"(> {MAX_UNROLLED_EDGES}); use conv='channel'"
                )
            if mask is not None:
                raise ValueError(
                    f"mask= cannot be applied to the unrolled graph of layer {layer.name!r}: its edges are "
                    "entries of the effective matrix, not weights; pass the masks to affine_layers instead"
                )
            # The effective matrix has pooling/BatchNorm folded in, so no mask maps onto it one to one:
            # its edges are its non-zero entries (structural zeros and pruned weights are both absent).
            return dict(base, absw=np.abs(W), present=W != 0, kind="unrolled", aggregate=None)
        a = np.where(kmask, np.abs(kernel), 0.0).reshape(kernel.shape[0], kernel.shape[1], -1)
        absw, exp = _aggregate(a, aggregate)
        present = kmask.reshape(a.shape).any(-1)
        cols, groups = _channel_slices(kernel, int(layer.in_shape[0]))  # (the module's own input)
        if groups > 1:  # a grouped convolution: an output channel sees only its group's input channels
            rows = np.arange(kernel.shape[0])[:, None]
            full_w = np.zeros((kernel.shape[0], layer.in_shape[0]))
            full_p = np.zeros(full_w.shape, dtype=bool)
            full_w[rows, cols], full_p[rows, cols] = absw, present
            absw, present = full_w, full_p
        return dict(base, absw=absw, exp=exp, present=present, kind="channel", aggregate=aggregate)
    if isinstance(layer_or_weight, nn.Module):
        raise TypeError(
            f"layer_graph takes one Linear/Conv1d/Conv2d module, an AffineLayer or a matrix, got "
            f"{type(layer_or_weight).__name__}: for a whole model use network_graph(model, masks), or read "
            "its layers with affine_layers(model, masks, input_shape=...)"
        )
    W = check_array(layer_or_weight, "weights", dtype=np.float64)
    if W.ndim != 2:
        raise ValueError(
            f"weights must be a 2-D (n_out, n_in) matrix, got shape {W.shape}; for a convolution kernel pass "
            "its AffineLayer (channel graph) instead"
        )
    present = np.ones(W.shape, bool) if mask is None else _as_bool_mask(mask, W.shape, "mask")
    return dict(absw=np.abs(W), present=present, kind="matrix", aggregate=None, name=None, param_name=None)


def _conv_applies(obj: Any) -> bool:
    """Whether ``conv=`` changes the graph of ``obj``: a convolution, or a Linear read after pooling (its
    unrolled graph folds the pooling in)."""
    if isinstance(obj, (nn.Conv1d, nn.Conv2d)):
        return True
    lay = _weighted(obj)
    return lay is not None and lay.kernel is not None and (
        lay.kernel.ndim > 2 or tuple(lay.shape) != tuple(lay.kernel.shape))


def _parts(layer_or_weight: Any, mask: Any, conv: str, aggregate: str) -> dict[str, Any]:
    parts = _magnitudes(layer_or_weight, mask, conv, aggregate)
    parts.setdefault("exp", 0)
    if parts["absw"].size == 0:
        raise ValueError(
            f"the weight matrix is empty (shape {parts['absw'].shape}): a layer graph needs n_in, n_out >= 1"
        )
    # A zero weight is an absent edge, like a pruned one (see the module docstring).
    parts["present"] = parts["present"] & (parts["absw"] > 0)
    return parts


def _top(parts: dict[str, Any]) -> tuple[float, int]:
    """The largest true magnitude of a layer as ``(m, e)``, value ``m * 2**e`` with ``0.5 <= m < 1``
    (``(0.0, 0)`` without edges): comparable across layers, and finite where the value is not."""
    absw, present = parts["absw"], parts["present"]
    if not present.any():
        return 0.0, 0
    m, e = np.frexp(float(absw[present].max()))
    return float(m), int(e) + parts["exp"]


def _from_parts(parts: dict[str, Any], normalize: str, ref: tuple[float, int] | None,
                scale: float | None = None) -> LayerGraph:
    """The layer graph of ``_parts`` normalised by its own largest magnitude (``ref`` None) or by
    ``ref = (m, e)``, the scale ``m * 2**e`` (``0.5 <= m < 1``) at least the layer's largest magnitude."""
    parts = dict(parts)
    absw, present, exp = parts.pop("absw"), parts.pop("present"), parts.pop("exp")
    if ref is None:
        top = float(absw[present].max()) if present.any() else 0.0
        with np.errstate(over="ignore"):  # an l1 aggregate of weights near 1e308 exceeds float64: inf
            scale = float(np.ldexp(top, exp))
        weights = np.where(present, absw / top, 0.0) if top > 0 else np.zeros(absw.shape)
    elif ref[0] > 0 and present.any():
        m, e = np.frexp(absw[present].max())
        # the layer's weights with their maximum shifted into [0.5, 1) (exact), over the scale's mantissa:
        # at most 2, then shifted back to the ratio of the true values
        q = np.where(present, np.ldexp(absw, -int(e)), 0.0) / ref[0]
        shift = int(e) + exp - ref[1]
        weights = np.ldexp(q, shift) if shift else q
    else:
        weights = np.zeros(absw.shape)
    if scale is None:
        with np.errstate(over="ignore"):
            scale = float(np.ldexp(ref[0], ref[1]))
    present = weights > 0  # w̃ that underflows to 0 is a zero weight: absent
    weights = np.where(present, weights, 0.0)
    weights.flags.writeable = present.flags.writeable = False
    return LayerGraph(weights=weights, mask=present, scale=scale, normalize=normalize, **parts, _trusted=True)


def layer_graph(
    layer_or_weight: Any,
    mask: Any = None,
    *,
    normalize: str = "layer",
    scale: float | None = None,
    conv: str = _UNSET,
    aggregate: str = _UNSET,
    input_shape: Any = None,
) -> LayerGraph:
    """The bipartite weight graph of one layer.

    Parameters
    ----------
    layer_or_weight : an :class:`~netgeom.nets.AffineLayer` (from ``affine_layers``), an ``nn.Linear`` /
        ``nn.Conv1d`` / ``nn.Conv2d`` module (read as ``affine_layers(nn.Sequential(module))``; its graph has
        ``param_name="weight"``) or a ``(n_out, n_in)`` matrix (numpy or torch).
    mask : optional boolean array of the weight's (kernel's) shape, True = kept; combined with the layer's
        own mask. Masked weights are absent edges.
    normalize : ``"layer"`` divides by this layer's ``max |w|``; ``"network"`` divides by ``scale``, which
        must then be given (``network_graph`` computes it).
    conv : ``"channel"`` (default) or ``"unrolled"``, for convolution layers (and a Linear read after
        pooling) only: given for another layer it would be ignored, and is refused.
    aggregate : ``"l1"`` (default), ``"l2"`` or ``"max"`` of a kernel slice, for channel graphs only (refused
        for any other graph). Computed without over/underflow for any float64 weights (see
        :func:`_aggregate`): the normalised graph does not change when all weights are scaled by ``2**k``.
    input_shape : the input shape of a bare convolution module, needed for ``conv="unrolled"``.

    Example
    -------
    >>> g = layer_graph(np.array([[2.0, -1.0], [0.0, 4.0]]), mask=np.array([[1, 1], [0, 1]]))
    >>> g.weights.tolist(), g.n_edges
    ([[0.5, 0.25], [0.0, 1.0]], 3)
    """
    check_choice(normalize, "normalize", NORMALIZATIONS)
    if conv is not _UNSET:
        check_choice(conv, "conv", CONV_MODES)
        if not _conv_applies(layer_or_weight):
            raise ValueError(
                f"conv={conv!r} does not apply to a {type(layer_or_weight).__name__} (it chooses the graph "
                "of a convolution) and would be ignored: leave it out"
            )
    if aggregate is not _UNSET:
        check_choice(aggregate, "aggregate", AGGREGATES)
    g = _layer_graph(layer_or_weight, mask, normalize=normalize, scale=scale,
                     conv="channel" if conv is _UNSET else conv,
                     aggregate="l1" if aggregate is _UNSET else aggregate, input_shape=input_shape)
    if aggregate is not _UNSET and g.kind != "channel":
        raise ValueError(
            f"aggregate={aggregate!r} only applies to the channel graph of a convolution, and this is a "
            f"{g.kind!r} graph: it would be ignored, leave it out"
        )
    return g


def _layer_graph(layer_or_weight: Any, mask: Any, *, normalize: str, scale: float | None, conv: str,
                 aggregate: str, input_shape: Any) -> LayerGraph:
    check_choice(conv, "conv", CONV_MODES)
    check_choice(aggregate, "aggregate", AGGREGATES)
    if isinstance(layer_or_weight, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        layer_or_weight, mask = _module_layer(layer_or_weight, mask, conv, input_shape), None
    elif isinstance(layer_or_weight, PLNode) and layer_or_weight.op != "affine":
        raise ValueError(f"node {layer_or_weight.source} is a {layer_or_weight.op} node, not an affine layer")
    elif input_shape is not None:
        raise ValueError("input_shape= only applies to a bare Linear/Conv module")
    parts = _parts(layer_or_weight, mask, conv, aggregate)
    if normalize == "layer":
        if scale is not None:
            raise ValueError("scale= is only used with normalize='network'")
        return _from_parts(parts, "layer", None)
    if scale is None:
        raise ValueError("normalize='network' needs scale= (the network's max |w|); use network_graph")
    scale = float(scale)
    top = _top(parts)
    with np.errstate(over="ignore"):
        layer_max = float(np.ldexp(*top))
    ref = (0.0, 0) if scale == 0 else tuple(int(x) if k else float(x) for k, x in enumerate(np.frexp(scale)))
    if not np.isfinite(scale) or scale < 0 or (top[0] > 0 and (ref[1], ref[0]) < (top[1], top[0])):
        raise ValueError(f"scale must be finite and >= this layer's max |w| = {layer_max}, got {scale}")
    return _from_parts(parts, "network", ref, scale)


def _is_diagonal(node: PLNode) -> bool:
    """Whether a weight-free affine node maps every unit to itself only (a per-unit scale, as a lone
    BatchNorm): then a unit's vertex is the same before and after it. A same-size average pooling (3 x 3,
    stride 1, padding 1) keeps the size but mixes neighbouring units, so it is not."""
    if node.size != node.in_size:
        return False
    S = node.sparse_matrix()  # (nonzeros only: no dense square of the layer's size)
    return S.nnz == int(np.count_nonzero(S.diagonal()))


def _chain_links(pl, nodes: list[PLNode], conv: str) -> list[str | None]:
    """Why each weighted node does not feed the next one directly in the traced graph (None if it does).

    Between the two, only activations may sit, and for channel graphs also the channel-preserving ops
    (max/average pooling, a lone BatchNorm); every node on the way must have no other user."""
    out = []
    for a, b in zip(nodes[:-1], nodes[1:]):
        why, cur = None, b
        while why is None:
            if len(cur.inputs) != 1:
                break
            prev = pl.nodes[cur.inputs[0]]
            if len(pl.users[prev.index]) != 1:
                others = [pl.nodes[i].source for i in pl.users[prev.index] if i != cur.index]
                why = f"a branch: the output of {prev.source} is also read by {', '.join(others)}"
            elif prev is a:
                break
            elif prev.op == "relu" or (prev.op in ("maxpool", "affine") and conv == "channel"
                                         and prev.param_name is None):
                cur = prev
                continue
            elif prev.op == "affine" and prev.param_name is None and _is_diagonal(prev):
                cur = prev  # a per-unit scale (a lone BatchNorm) keeps the units
                continue
            else:
                what = {"add": "a residual addition", "cat": "a concatenation", "input": "the network input",
                        "maxpool": "a max-pooling (its units are not the layer's units)",
                        "affine": "a weighted layer or pooling" if prev.param_name is not None
                        or prev.size != prev.in_size else "a weight-free affine map that mixes units (e.g. a "
                        "same-size average pooling)"}.get(prev.op, prev.op)
                why = f"{what} at {prev.source} lies between them"
        if why is None and len(cur.inputs) != 1:
            kinds = {"add": "a residual addition", "cat": "a concatenation"}
            why = f"{kinds.get(cur.op, cur.op)} at {cur.source} lies between them"
        out.append(why)
    return out


def network_graph(
    model: torch.nn.Module,
    masks: Mapping[str, Any] | None = None,
    *,
    normalize: str = "layer",
    conv: str = "channel",
    aggregate: str = "l1",
    input_shape: Any = None,
) -> NetworkGraph:
    """Layer graphs of every weighted layer of ``model``, read through the traced graph
    (:func:`netgeom.nets.trace`): any traceable network, residual and concatenating ones included.

    ``normalize="layer"`` normalises each layer by its own ``max |w|``; ``"network"`` by the largest ``|w|``
    over all layers (of the aggregated edge weights, for channel graphs). Zero and masked weights are
    absent edges; a layer may have none (all zero or all pruned). Layers come in the trace's topological
    order; consecutive layers chain (layer ``l``'s outputs are layer ``l + 1``'s inputs) when the first
    feeds the second through activations only (for channel graphs also pooling and BatchNorm, which keep
    the channels) and the widths agree. ``chain_breaks`` says where a residual addition, a concatenation, a
    branch or a width change breaks the chain; whole-network diagrams need a chain, per-layer measures do
    not. For a conv net whose features end in Flatten + Linear, only ``conv="unrolled"`` (or global
    average pooling to 1 x 1) gives graphs that chain (see the module docstring).

    Example
    -------
    >>> from netgeom import mlp
    >>> G = network_graph(mlp(4, [6], 3, seed=0))
    >>> G.widths, G.chained
    ([4, 6, 3], True)
    """
    check_choice(normalize, "normalize", NORMALIZATIONS)
    check_choice(conv, "conv", CONV_MODES)
    check_choice(aggregate, "aggregate", AGGREGATES)
    pl = trace(model, masks, input_shape=input_shape)
    nodes = [n for n in pl.nodes if n.op == "affine" and n.param_name is not None]
    if not nodes:
        raise ValueError(f"{pl.model_name} has no weighted layer (Linear or convolution): no weight graph")
    links = _chain_links(pl, nodes, conv)
    parts = [_parts(n, None, conv, aggregate) for n in nodes]
    if normalize == "layer":
        graphs = [_from_parts(q, "layer", None) for q in parts]
        return NetworkGraph(layers=graphs, normalize="layer", scale=float("nan"), links=links)
    # the largest magnitude over the network, compared as (exponent, mantissa): an aggregate may exceed
    # float64 (then scale is inf) while every w̃ is still exact
    ref = max((_top(q) for q in parts), key=lambda t: (t[0] > 0, t[1], t[0]))  # an edgeless layer is least
    graphs = [_from_parts(q, "network", ref) for q in parts]
    return NetworkGraph(layers=graphs, normalize="network", scale=graphs[0].scale, links=links)
