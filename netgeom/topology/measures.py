"""Network-level zeroth-order quantities: neural persistence, the prunability bound, MSF retention and the
protected-weights callback for topology-preserving IMP.

* Neural persistence (Rieck et al. 2019, as their reference code computes it): every ``|w|`` divided by
  the largest ``|w|`` of the whole network; per layer, the 0-dimensional superlevel diagram of its
  bipartite graph, each merging edge a point of persistence ``1 − w̃_e`` and each component that never
  merges a point of persistence 1; ``NP(G_l) = ‖persistences‖_p`` (``p = 2``), normalised by
  ``(|V_l| − 1)^{1/p}``; the network NP is the mean of the normalised layer values.
  :func:`neural_persistence_layer_max` keeps the older per-layer-max variant without component points.
* Bound (Balwani & Krzyston): keeping a layer's maximum spanning forest and nothing else leaves its
  diagram unchanged, so a dense ``n_in × n_out`` layer survives sparsity
  ``1 − (n_in + n_out − 1)/(n_in n_out)``; for a network ``η = Σ n_in n_out / Σ (n_in + n_out − 1)`` and
  the largest sparsity is ``1 − 1/η``.
* Retention: the fraction of a dense network's MSF edges still present in a pruned version (random pruning
  at density ``p`` keeps a fraction ``p`` of them in expectation). With tied weights the MSF is not unique;
  the count is then the most any maximum spanning forest keeps, which no renumbering of neurons changes.

Per-layer lists and their network means run over weight tensors: a module (or an ``F.linear`` weight)
called several times in ``forward`` is one weight graph, counted once, so sharing a weight never changes
these values (the whole-network graph of :func:`~netgeom.topology.graphs.network_graph` follows the
computation and holds it once per call).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from torch import nn

from .._validation import check_choice, check_masks, check_widths
from ..nets import trace
from ..pruning.masks import Masks, _prunable_names
from ..results import Result, new_axes
from .graphs import _UNSET, NetworkGraph, _channel_slices, _kernel_in_channels, _layer_graph, network_graph
from .persistence import _kruskal, zeroth_persistence

__all__ = [
    "NeuralPersistenceResult",
    "TopologyBoundResult",
    "RetentionResult",
    "RetentionCurveResult",
    "neural_persistence",
    "neural_persistence_layer_max",
    "topology_bound",
    "msf_retention",
    "msf_retention_curve",
    "spanning_forest_protect",
    "msf_protect",
    "network_forest_protect",
    "demo_section",
]


def _check_p(p: Any) -> float:
    if isinstance(p, (bool, np.bool_, str, bytes)):  # float(True) == 1.0 would give the 1-norm silently
        raise TypeError(f"p must be a number >= 1 (or inf), got {p!r} ({type(p).__name__})")
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise TypeError(f"p must be a number >= 1 (or inf), got {p!r}") from None
    if math.isnan(p) or p < 1:
        raise ValueError(f"p must be >= 1 (or inf) for a norm, got {p}")
    return p


# -------------------------------------------------------------------------------------- neural persistence
@dataclasses.dataclass
class NeuralPersistenceResult(Result):
    """Neural persistence per layer (raw and normalised) and for the network (mean of normalised).

    ``definition`` says which measure: ``"rieck"`` (:func:`neural_persistence`: network normalisation,
    components that never merge count as points of persistence 1) or ``"layer_max"``
    (:func:`neural_persistence_layer_max`: forest edges only, ``normalize`` as given). ``n_components``
    is the number of connected components of each layer graph (zero and pruned weights are absent edges).
    """

    layer_names: list[str]
    n_vertices: list[int]
    layer_np: list[float]
    layer_np_normalized: list[float]
    network_np: float
    p: float
    normalize: str
    aggregate: str
    definition: str = "rieck"
    n_components: list[int] | None = None

    def plot(self, ax=None, *, label: str | None = None, shift: float = 0.0, width: float = 0.8):
        """Bars of the normalised NP per layer (``shift``/``width`` let two results share an axis)."""
        _, ax = new_axes(ax)
        x = np.arange(len(self.layer_names))
        ax.bar(x + shift, self.layer_np_normalized, width=width, label=label)
        ax.set_xticks(x, self.layer_names)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"normalised neural persistence (p={self.p:g})")
        what = "Neural persistence" if self.definition == "rieck" else "Per-layer-max forest persistence"
        ax.set_title(f"{what} (network {self.network_np:.3f})")
        if label is not None:
            ax.legend()
        return ax


def _graphs(model, masks, normalize, conv, aggregate, input_shape) -> NetworkGraph:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return network_graph(
        model, masks, normalize=normalize, conv=conv, aggregate=aggregate, input_shape=input_shape
    )


def _per_weight(G) -> list:
    """The layer graphs of ``G`` one per weight parameter, in forward order.

    A module (or ``F.linear`` weight) applied several times shares one weight tensor, hence one weight
    graph: per-layer measures and their network means count it once (at its first application), so
    sharing a weight never changes them. Only the whole-network graph, which follows the computation,
    holds it once per application. An unrolled convolution applied to inputs of different sizes has
    different unrolled graphs for one weight tensor, which no single per-weight value describes: refused.
    """
    seen: dict[str, Any] = {}
    out = []
    for g in G:
        key = g.param_name
        if key is None:
            out.append(g)
            continue
        first = seen.get(key)
        if first is None:
            seen[key] = g
            out.append(g)
        elif first.weights.shape != g.weights.shape or not np.array_equal(first.weights, g.weights):
            raise ValueError(
                f"weight '{key}' is applied to inputs of different shapes, so its unrolled graphs differ "
                "and no one per-weight value describes it; use conv='channel'"
            )
    return out


def _persistence_norms(G: NetworkGraph, p: float, with_components: bool, definition: str,
                       aggregate: str) -> NeuralPersistenceResult:
    names, nv, raw, normed, comps = [], [], [], [], []
    for g in _per_weight(G):
        d = zeroth_persistence(g)
        pers = 1.0 - d.deaths
        if with_components:  # each essential class closes at w̃ = 0: a point of persistence 1
            pers = np.concatenate([pers, np.ones(d.n_essential)])
        value = float(np.linalg.norm(pers, ord=p)) if pers.size else 0.0
        names.append(g.name)
        nv.append(g.n_vertices)
        comps.append(d.n_essential)
        raw.append(value)
        normed.append(value / (g.n_vertices - 1) ** (1.0 / p) if math.isfinite(p) else value)
    return NeuralPersistenceResult(
        layer_names=names, n_vertices=nv, layer_np=raw, layer_np_normalized=normed,
        network_np=float(np.mean(normed)), p=p, normalize=G.normalize, aggregate=aggregate,
        definition=definition, n_components=comps,
    )


def neural_persistence(
    model: nn.Module,
    masks: Mapping[str, Any] | None = None,
    *,
    p: float = 2,
    conv: str = "channel",
    aggregate: str = "l1",
    input_shape: Any = None,
) -> NeuralPersistenceResult:
    """Neural persistence (Rieck et al., ICLR 2019) of every weighted layer and of the network.

    The definition of the authors' reference code: every ``|w|`` is divided by the largest ``|w|`` of the
    whole network (unmasked weights; for convolutions, of the aggregated channel-graph edge weights);
    each layer's bipartite graph is filtered by that ``w̃`` (superlevel); every merging edge is a point of
    persistence ``1 − w̃_e`` and every component that never merges a point of persistence 1 (the authors
    close unpaired classes at 0); ``NP = ‖points‖_p`` with ``p = 2``; the normalised value divides by
    ``(|V| − 1)^{1/p}``; the network value is the mean of the normalised layer values. A layer therefore
    always has ``|V|`` points, and a pruned (absent) weight and a zero weight give the same value. With the
    component points the normalised value can exceed 1 slightly (an edgeless layer gives
    ``sqrt(|V| / (|V| − 1))``), as in the authors' code. The paper bounds NP over the ``|V| − 1`` forest
    points by ``(max w̃ − min w̃)(|V| − 1)^{1/p}``; the code, followed here, divides by
    ``(|V| − 1)^{1/p}`` only.

    For the older per-layer normalisation without component points use
    :func:`neural_persistence_layer_max`.

    Example
    -------
    >>> from netgeom import mlp
    >>> r = neural_persistence(mlp(5, [7], 3, seed=0))
    >>> len(r.layer_np), r.definition, r.n_components
    (2, 'rieck', [1, 1])
    """
    p = _check_p(p)
    G = _graphs(model, masks, "network", conv, aggregate, input_shape)
    return _persistence_norms(G, p, True, "rieck", aggregate)


def neural_persistence_layer_max(
    model: nn.Module,
    masks: Mapping[str, Any] | None = None,
    *,
    p: float = 2,
    normalize: str = "layer",
    conv: str = "channel",
    aggregate: str = "l1",
    input_shape: Any = None,
) -> NeuralPersistenceResult:
    """The per-layer-max variant of neural persistence (netgeom 0.1's ``neural_persistence``): *not*
    Rieck et al.'s measure.

    Each layer's ``|w|`` is divided by that layer's own maximum (``normalize="layer"``, Balwani &
    Krzyston's normalisation; ``"network"`` divides by the network's), and only the maximum-spanning-forest
    edges count: ``‖(1 − w̃_e)_{e ∈ MSF}‖_p``, normalised by ``(|V| − 1)^{1/p}``; components that never
    merge are left out. It stays within ``[0, 1]`` and ignores how many components pruning leaves.

    Example
    -------
    >>> from netgeom import mlp
    >>> r = neural_persistence_layer_max(mlp(5, [7], 3, seed=0))
    >>> r.definition, r.normalize, all(0 <= v <= 1 for v in r.layer_np_normalized)
    ('layer_max', 'layer', True)
    """
    p = _check_p(p)
    check_choice(normalize, "normalize", ("layer", "network"))
    G = _graphs(model, masks, normalize, conv, aggregate, input_shape)
    return _persistence_norms(G, p, False, "layer_max", aggregate)


# ------------------------------------------------------------------------------------------------- bound
def _forest_size(pattern: sparse.coo_matrix) -> int:
    """``|V| − #components`` of the bipartite graph of an ``(n_out, n_in)`` pattern of possible edges."""
    n_out, n_in = pattern.shape
    A = sparse.coo_matrix(
        (np.ones(pattern.nnz, np.int8), (pattern.col, n_in + pattern.row)), shape=(n_in + n_out,) * 2
    )
    return n_in + n_out - int(connected_components(A, directed=False)[0])


def _structural_counts(model: nn.Module, input_shape: Any, conv: str) -> tuple[list[int], list[int]]:
    """Possible edges and spanning-forest sizes of the layer graphs, weights aside (one per weight).

    Channel graphs: an output channel reads the input channels of its group only, so a grouped convolution
    has ``C_out · C_in / groups`` possible edges and one component per group. Unrolled graphs: a unit pair
    is a possible edge when some kernel weight connects them (its receptive field, through the pooling
    folded into the layer): the non-zero pattern of the effective matrices of the same network with every
    weight 1 and every BatchNorm scale positive. All coefficients are then >= 0, so no sum cancels and the
    pattern is exactly the reachable pairs. The forest size is always ``|V| − #components`` of the
    pattern (padding, a stride larger than the kernel or groups can leave the graph disconnected).
    """
    if conv == "unrolled":
        model = copy.deepcopy(model).eval()
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                    m.weight.fill_(1.0)
                elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    if m.affine:
                        m.weight.fill_(1.0)
                    m.running_var.fill_(1.0)
    n_possible, n_tree = [], []
    seen = set()
    for lay in trace(model, input_shape=input_shape).nodes:
        if lay.op != "affine" or lay.param_name is None or lay.param_name in seen:
            continue  # a shared weight counts once (see _per_weight)
        seen.add(lay.param_name)
        if conv == "unrolled":
            pattern = lay.sparse_matrix().tocoo()  # (its nonzeros: no dense unrolled convolution)
        elif lay.kernel.ndim > 2:
            c_in = _kernel_in_channels(lay)  # (the conv's own input, not the node's: see _kernel_input)
            cols, _ = _channel_slices(lay.kernel, c_in)
            rows = np.broadcast_to(np.arange(cols.shape[0])[:, None], cols.shape)
            pattern = sparse.coo_matrix((np.ones(cols.size, bool), (rows.ravel(), cols.ravel())),
                                        shape=(lay.kernel.shape[0], c_in))
        else:
            n_out, n_in = lay.kernel.shape
            n_possible.append(n_in * n_out)
            n_tree.append(n_in + n_out - 1)
            continue
        n_possible.append(int(pattern.nnz))
        n_tree.append(_forest_size(pattern))
    return n_possible, n_tree


@dataclasses.dataclass
class TopologyBoundResult(Result):
    """Compression ``η`` and the largest sparsity that keeps every layer's zeroth-order diagram.

    ``n_possible`` counts the edges of the complete bipartite graphs (``n_in n_out``) and ``n_tree`` the
    spanning-tree sizes (``n_in + n_out − 1``); for a grouped convolution's channel graph only the pairs
    within a group are possible (``C_out · C_in / groups``) and ``n_tree = C_in + C_out − groups`` (one
    component per group). For unrolled convolutions (``conv="unrolled"``) a unit
    pair is possible only inside a receptive field, so ``n_possible`` counts the structurally possible
    edges (the non-zero pattern of the effective matrix with an all-ones kernel, pooling folded in) and
    ``n_tree`` the forest size ``|V| − #components`` of that pattern. For a given (possibly sparse)
    model, ``n_unmasked`` (edges present: unmasked, non-zero weights — a zero weight counts as pruned) and
    ``n_msf`` (actual forest sizes, ``|V| − #components``) are filled in as well, with
    ``msf_over_unmasked`` (nan for a layer without edges) and
    ``max_sparsity_actual = 1 − Σ n_msf / Σ n_possible``.
    """

    widths: list[int] | None
    layer_names: list[str]
    n_possible: list[int]
    n_tree: list[int]
    layer_eta: list[float]
    layer_max_sparsity: list[float]
    eta: float
    max_sparsity: float
    n_unmasked: list[int] | None = None
    n_msf: list[int] | None = None
    layer_msf_over_unmasked: list[float] | None = None
    msf_over_unmasked: float | None = None
    sparsity: float | None = None
    max_sparsity_actual: float | None = None

    def plot(self, ax=None):
        """Bound per layer and for the network, in % sparsity; the current sparsity as a dotted line.

        A dense model's 0% would squash the bars (all near 100%) into a thin band, so it is named in the
        legend instead of drawn; any other current sparsity is drawn and the axis extended to show it."""
        _, ax = new_axes(ax)
        x = np.arange(len(self.layer_names))
        bounds = 100 * np.asarray(self.layer_max_sparsity)
        ax.bar(x, bounds, label="bound per layer")
        ax.axhline(100 * self.max_sparsity, color="C3", ls="--",
                   label=f"network bound {100 * self.max_sparsity:.2f}%")
        lo = float(bounds.min())
        if self.sparsity is not None:
            label = f"current sparsity {100 * self.sparsity:.2f}%"
            if self.sparsity > 0:
                ax.axhline(100 * self.sparsity, color="k", ls=":", label=label)
                lo = min(lo, 100 * self.sparsity)
            else:
                ax.plot([], [], color="k", ls=":", label=label + " (dense, not drawn)")
        ax.set_xticks(x, self.layer_names)
        ax.set_ylim(lo - 0.05 * max(100 - lo, 1.0), 100.0)
        ax.set_ylabel("largest sparsity keeping the H0 diagram (%)")
        ax.set_title(f"Topology bound (η = {self.eta:.1f})")
        ax.legend(fontsize=8)
        return ax


def topology_bound(
    widths_or_model: Sequence[int] | nn.Module,
    masks: Mapping[str, Any] | None = None,
    *,
    conv: str = _UNSET,
    aggregate: str = _UNSET,
    input_shape: Any = _UNSET,
) -> TopologyBoundResult:
    """The prunability bound of Balwani & Krzyston from layer widths, or from a (sparse) model.

    Linear layers count every input-output pair as a possible edge, channel graphs every pair of an output
    channel and an input channel of its group (a grouped convolution has ``C_out · C_in / groups`` and one
    component per group). With ``conv="unrolled"`` only receptive-field pairs are possible (a pixel graph
    is far from complete). ``n_possible``, the bound and the current sparsity are all relative to the
    structurally possible edges, and ``n_tree`` is ``|V| − #components`` of the possible-edge graph.
    ``conv``, ``aggregate`` (channel graphs only) and ``input_shape`` apply to a model and are refused
    with a list of widths.

    Example
    -------
    >>> b = topology_bound([784, 300, 100, 10])
    >>> sum(b.n_tree), sum(b.n_possible), round(100 * b.max_sparsity, 2)
    (1591, 266200, 99.4)
    """
    conv_given = conv
    if isinstance(widths_or_model, nn.Module):
        if conv == "unrolled" and aggregate is not _UNSET:
            raise ValueError(
                "aggregate= only applies to channel graphs (conv='channel'): it would be ignored"
            )
        conv = "channel" if conv is _UNSET else conv
        aggregate = "l1" if aggregate is _UNSET else aggregate
        input_shape = None if input_shape is _UNSET else input_shape
        NG = _graphs(widths_or_model, masks, "layer", conv, aggregate, input_shape)
        G = _per_weight(NG)
        shapes = [(g.n_in, g.n_out) for g in G]
        names = [g.name for g in G]
        widths = NG.widths if NG.chained and len(G) == len(NG) else None
        n_possible, n_tree = _structural_counts(widths_or_model, input_shape, conv)
    else:
        if masks is not None:
            raise ValueError("masks= only applies to a model, not to a list of widths")
        given = [k for k, v in (("conv", conv_given), ("aggregate", aggregate), ("input_shape", input_shape))
                 if v is not _UNSET]
        if given:
            raise ValueError(
                f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} to a model, not to a "
                "list of widths (dense complete bipartite layers): it would be ignored"
            )
        widths = check_widths(widths_or_model, "widths", min_len=2)
        shapes = list(zip(widths[:-1], widths[1:]))
        names = [f"layer{i}" for i in range(len(shapes))]
        G = None
        n_possible = [a * b for a, b in shapes]
        n_tree = [a + b - 1 for a, b in shapes]
    eta = sum(n_possible) / sum(n_tree)
    res = TopologyBoundResult(
        widths=widths, layer_names=names, n_possible=n_possible, n_tree=n_tree,
        layer_eta=[e / t for e, t in zip(n_possible, n_tree)],
        layer_max_sparsity=[1.0 - t / e for e, t in zip(n_possible, n_tree)],
        eta=eta, max_sparsity=1.0 - 1.0 / eta,
    )
    if G is not None:
        n_unmasked = [g.n_edges for g in G]
        n_msf = [zeroth_persistence(g).n_pairs for g in G]
        res.n_unmasked = n_unmasked
        res.n_msf = n_msf
        # a layer without edges (all pruned or zero) has no forest share: nan, not a made-up 0 or 1
        res.layer_msf_over_unmasked = [m / u if u else math.nan for m, u in zip(n_msf, n_unmasked)]
        res.msf_over_unmasked = sum(n_msf) / sum(n_unmasked) if sum(n_unmasked) else math.nan
        res.sparsity = 1.0 - sum(n_unmasked) / sum(n_possible)
        res.max_sparsity_actual = 1.0 - sum(n_msf) / sum(n_possible)
    return res


# --------------------------------------------------------------------------------------------- retention
@dataclasses.dataclass
class RetentionResult(Result):
    """How many of a dense network's MSF edges survive in a pruned version, per layer and overall.

    ``expected`` is the layer's density in the pruned network relative to the dense one (the fraction a
    random pruning would keep); ``diagram_unchanged`` compares each layer's diagram after renormalisation.
    """

    layer_names: list[str]
    n_msf: list[int]
    n_retained: list[int]
    retention: list[float]
    expected: list[float]
    diagram_unchanged: list[bool]
    retention_total: float
    expected_total: float
    all_unchanged: bool
    sparsity: float
    masks_source: str

    def plot(self, ax=None):
        _, ax = new_axes(ax)
        x = np.arange(len(self.layer_names))
        ax.bar(x - 0.2, self.retention, width=0.4, label="MSF edges retained")
        ax.bar(x + 0.2, self.expected, width=0.4, label="random expectation (density)")
        ax.set_xticks(x, self.layer_names)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction")
        ax.set_title(f"MSF retention at sparsity {100 * self.sparsity:.1f}%")
        ax.legend(fontsize=8)
        return ax


def _pruned_graphs(dense_model, pruned, pruned_masks, normalize, conv, aggregate, input_shape):
    if isinstance(pruned, (Mapping, list, tuple)):  # masks in any form (check_masks reads them)
        if pruned_masks is not None:
            raise ValueError("give the pruned network as masks or as a model with pruned_masks=, not both")
        G = _graphs(dense_model, pruned, normalize, conv, aggregate, input_shape)
        return G, "masks on the dense weights"
    if not isinstance(pruned, nn.Module):
        raise TypeError(f"pruned must be a model or a Masks mapping, got {type(pruned).__name__}")
    if pruned_masks is None:
        # Without masks a pruned weight is just a zero, which would be read as a present edge of weight 0.
        pruned_masks = Masks.from_model_zeros(pruned)
        source = "zeros of the pruned model"
    else:
        source = "given masks on the pruned model's weights"
    return _graphs(pruned, pruned_masks, normalize, conv, aggregate, input_shape), source


def msf_retention(
    dense_model: nn.Module,
    pruned: nn.Module | Mapping[str, Any],
    *,
    dense_masks: Mapping[str, Any] | None = None,
    pruned_masks: Mapping[str, Any] | None = None,
    normalize: str = "layer",
    conv: str = "channel",
    aggregate: str = "l1",
    input_shape: Any = None,
    atol: float = 1e-12,
) -> RetentionResult:
    """Fraction of ``dense_model``'s MSF edges that survive in ``pruned``.

    ``pruned`` is either masks (applied to the dense weights) or a pruned model; a pruned model without
    ``pruned_masks`` has its zero weights taken as pruned (recorded in ``masks_source``).

    With equal weights a layer has several maximum spanning forests, and which one a tie-break picks
    depends on how the neurons are numbered. ``n_retained`` is therefore the largest number of edges that
    *some* maximum spanning forest of the dense layer shares with the pruned one, a property of the two
    graphs alone, hence the same under any renumbering of the neurons. It is computed exactly by Kruskal
    with ties broken in favour of the pruned network's edges: all maximum spanning forests pick, within
    each weight class, a basis of the same graphic matroid (the graph of that class with the heavier
    components contracted), so the classes are independent and the matroid greedy algorithm, taking the
    kept edges first, maximises the kept count of each. Without ties this is the unique forest's count.
    (With ties random pruning keeps at least a fraction ``expected`` of it on average.)

    Example
    -------
    >>> from netgeom import mlp, Masks
    >>> net = mlp(6, [8], 3, seed=0)
    >>> r = msf_retention(net, Masks.ones(net))
    >>> r.retention_total, r.all_unchanged
    (1.0, True)
    """
    A = _per_weight(_graphs(dense_model, dense_masks, normalize, conv, aggregate, input_shape))
    B, source = _pruned_graphs(dense_model, pruned, pruned_masks, normalize, conv, aggregate, input_shape)
    B = _per_weight(B)
    if [(g.param_name, g.weights.shape) for g in A] != [(g.param_name, g.weights.shape) for g in B]:
        raise ValueError("the dense and pruned networks have different layers or layer shapes")
    names, n_msf, n_ret, ret, exp, same = [], [], [], [], [], []
    for ga, gb in zip(A, B):
        da, db = zeroth_persistence(ga), zeroth_persistence(gb)
        k = da.n_pairs
        r = _max_kept(ga, gb.mask)
        names.append(ga.name)
        n_msf.append(k)
        n_ret.append(r)
        ret.append(r / k if k else 1.0)
        # nothing to keep in an edgeless dense layer: everything (nothing) is retained, as expected
        exp.append(int((gb.mask & ga.mask).sum()) / ga.n_edges if ga.n_edges else 1.0)
        same.append(da.equals(db, atol=atol))
    total_possible = sum(g.n_possible for g in B)
    return RetentionResult(
        layer_names=names, n_msf=n_msf, n_retained=n_ret, retention=ret, expected=exp,
        diagram_unchanged=same,
        retention_total=sum(n_ret) / max(sum(n_msf), 1),
        expected_total=float(np.dot(exp, n_msf) / max(sum(n_msf), 1)),
        all_unchanged=all(same),
        sparsity=1.0 - sum(g.n_edges for g in B) / total_possible,
        masks_source=source,
    )


def _max_kept(g, kept: np.ndarray) -> int:
    """The most edges of ``kept`` in any maximum spanning forest of ``g`` (see :func:`msf_retention`):
    Kruskal under (weight descending, kept first, edge index)."""
    u, v, w, idx = g.edges()
    k = kept.ravel()[idx]
    order = np.argsort(~k, kind="stable")  # kept edges first, each part in edge-index order
    sel = _kruskal(g.n_vertices, u[order], v[order], w[order])
    return int(k[order][sel].sum())


@dataclasses.dataclass
class RetentionCurveResult(Result):
    """MSF retention of the dense network along a sequence of masks (e.g. IMP levels)."""

    layer_names: list[str]
    sparsity: list[float]
    retention: list[list[float]]  # [level][layer]
    expected: list[list[float]]
    retention_total: list[float]
    expected_total: list[float]
    diagram_unchanged: list[list[bool]]

    def plot(self, ax=None):
        _, ax = new_axes(ax)
        s = 100 * np.asarray(self.sparsity)
        ret = np.asarray(self.retention)
        ex = np.asarray(self.expected)
        for k, name in enumerate(self.layer_names):
            ax.plot(s, ret[:, k], "o-", color=f"C{k}", label=f"{name}: MSF retained")
            ax.plot(s, ex[:, k], ":", color=f"C{k}", label=f"{name}: random expectation")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("fraction of dense MSF edges kept")
        ax.set_ylim(0, 1.05)
        ax.set_title("MSF retention vs sparsity")
        ax.legend(fontsize=7)
        return ax


def msf_retention_curve(
    dense_model: nn.Module, masks_sequence: Sequence[Mapping[str, Any]], **kwargs: Any
) -> RetentionCurveResult:
    """:func:`msf_retention` of ``dense_model`` for every masks in ``masks_sequence`` (dense weights)."""
    seq = list(masks_sequence)
    if not seq:
        raise ValueError("masks_sequence is empty: give at least one Masks")
    rs = [msf_retention(dense_model, m, **kwargs) for m in seq]
    return RetentionCurveResult(
        layer_names=rs[0].layer_names, sparsity=[r.sparsity for r in rs],
        retention=[r.retention for r in rs], expected=[r.expected for r in rs],
        retention_total=[r.retention_total for r in rs], expected_total=[r.expected_total for r in rs],
        diagram_unchanged=[r.diagram_unchanged for r in rs],
    )


# ------------------------------------------------------------------------------------- protected weights
def spanning_forest_protect(
    model: nn.Module,
    masks: Mapping[str, Any] | None = None,
    *,
    aggregate: str = "l1",
    scope: str = "layer",
    normalize: str = "layer",
) -> Masks:
    """Protected-weights callback for topology-preserving IMP: the current maximum-spanning-forest weights.

    The forest is computed on the masked weights (``affine_layers(model, masks)``); True = must stay.
    ``scope="layer"`` (default) protects each prunable layer's own MSF: removing any other weight leaves
    every layer's MSF, hence its diagram, unchanged. ``scope="network"`` protects the MSF of the chained
    network graph (``zeroth_persistence(network_graph(model, masks, normalize=normalize))``), a subset of
    the layer forests (``|V| − #components`` weights for the whole network) that keeps the *network*
    diagram unchanged: each layer's heaviest weight is always in it, so neither normalisation moves.
    ``normalize`` (default ``"layer"``, as in the rest of the package) only matters for
    ``scope="network"``: a layer's forest depends only on the order of its own weights, which any positive
    scale keeps, while the network forest compares weights across layers.
    Convolutions protect the unmasked weights of every kernel slice on the channel graph's forest. Use it as
    ``magnitude_prune(model, s, protect=spanning_forest_protect, masks=m)``, or
    ``protect=network_forest_protect`` for the network scope.

    Example
    -------
    >>> from netgeom import mlp
    >>> net = mlp(4, [5], 3, seed=0)
    >>> prot = spanning_forest_protect(net)
    >>> {k: int(v.sum()) for k, v in prot.items()}  # |V| - 1 per connected layer
    {'0.weight': 8, '2.weight': 7}
    >>> sum(int(v.sum()) for v in spanning_forest_protect(net, scope="network").values())  # 12 neurons
    11
    """
    check_choice(aggregate, "aggregate", ("l1", "l2", "max"))
    check_choice(scope, "scope", ("layer", "network"))
    check_choice(normalize, "normalize", ("layer", "network"))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # masks in any form (a per-layer list too): validated, then keyed by parameter name
    masks = check_masks(masks, model, allow_empty=True)
    names = list(masks) if masks else _prunable_names(model)  # (a set of names: no order needed)
    layers = [n for n in trace(model, masks).nodes if n.op == "affine" and n.param_name is not None]
    forests: dict[str, np.ndarray] = {}
    if scope == "network":
        # Every layer enters the network graph (a layer outside ``names`` is never pruned but still links
        # its neighbours); a fully pruned layer cuts the network and is refused by network_graph.
        G = network_graph(model, masks, normalize=normalize, aggregate=aggregate)
        if not G.chained:
            # The unrolled graph would chain, but its edges are entries of effective matrices (several
            # kernel weights each), so its forest names no weights to protect.
            raise ValueError(
                G._chain_error() + ". Network-scope protection needs weight-level or channel graphs that "
                "chain, which a conv net with a Linear after Flatten does not have: use scope='layer' "
                "(spanning_forest_protect) to keep every layer's own diagram"
            )
        forests = zeroth_persistence(G).msf_masks
    out = {}
    for lay in layers:
        if lay.param_name not in names:
            continue
        present = torch.ones(lay.kernel.shape, dtype=torch.bool) if lay.mask is None else lay.mask.cpu()
        if scope == "network":
            msf = torch.from_numpy(forests[lay.param_name].copy())
        elif not present.any():
            out[lay.param_name] = torch.zeros_like(present)
            continue
        else:
            g = _layer_graph(lay, None, normalize="layer", scale=None, conv="channel", aggregate=aggregate,
                             input_shape=None)
            msf = torch.from_numpy(zeroth_persistence(g).msf_mask)
        if lay.kernel.ndim > 2:
            # channel-graph edge (o, input channel) -> kernel slice (o, c); grouped: c within o's group
            cols, _ = _channel_slices(lay.kernel, _kernel_in_channels(lay))
            msf = msf[torch.arange(msf.shape[0])[:, None], torch.from_numpy(cols)]
            msf = msf.reshape(msf.shape + (1,) * (lay.kernel.ndim - 2)) & present
        out[lay.param_name] = msf
    missing = set(names) - set(out)
    if missing:
        raise ValueError(f"masks name parameters that are not layer weights: {sorted(missing)}")
    return Masks(out)


def network_forest_protect(model: nn.Module, masks: Mapping[str, Any] | None = None) -> Masks:
    """``spanning_forest_protect(model, masks, scope="network", normalize="network")`` as a module-level
    callback (a stable name for IMP's run description): protects the maximum spanning forest of the whole
    network graph (w̃ normalised over the network, Rieck et al.), keeping the network's zeroth-order diagram.

    >>> from netgeom import mlp
    >>> sum(int(v.sum()) for v in network_forest_protect(mlp(4, [5], 3, seed=0)).values())
    11
    """
    return spanning_forest_protect(model, masks, scope="network", normalize="network")


msf_protect = spanning_forest_protect


# ------------------------------------------------------------------------------------------------- demo
def _save(ctx, fig, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(ctx.out_dir / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"![{name.rsplit('.', 1)[0]}]({name})"


def _level_masks(rec: Any) -> Any:
    m = rec.get("masks") if isinstance(rec, Mapping) else getattr(rec, "masks", None)
    return m


def demo_section(ctx) -> str:
    """Report section: NP per layer (dense vs pruned), MSF retention, the topology bound."""
    np_dense = neural_persistence(ctx.model)
    np_pruned = neural_persistence(ctx.pruned_model, ctx.masks)
    fig, ax = new_axes(None)
    np_dense.plot(ax, label=f"dense (network {np_dense.network_np:.3f})", shift=-0.2, width=0.4)
    np_pruned.plot(ax, label=f"pruned (network {np_pruned.network_np:.3f})", shift=0.2, width=0.4)
    ax.set_title("Normalised neural persistence per layer")
    link_np = _save(ctx, fig, "topology_np.png")

    ret = msf_retention(ctx.model, ctx.pruned_model, pruned_masks=ctx.masks)
    G = network_graph(ctx.model)
    bound = topology_bound(G.widths if G.chained else ctx.model)
    widths = G.widths if G.chained else [(g.n_in, g.n_out) for g in G]
    actual = topology_bound(ctx.pruned_model, ctx.masks)

    lines = [
        "## Zeroth-order topology of the weight graphs",
        "",
        "Each layer is a bipartite graph with edge weights w̃ = |w| / max|w|; pruned and zero weights are "
        "absent edges. Its 0-dimensional superlevel diagram is given by the maximum spanning forest (MSF). "
        "Neural persistence is Rieck et al.'s (ICLR 2019, as their code computes it): w̃ normalised over the "
        "whole network, every component that never merges a point of persistence 1, the 2-norm over a "
        "layer's points divided by sqrt(|V| − 1), averaged over layers. The forest columns normalise per "
        "layer (the forest itself does not depend on the scale).",
        "",
        link_np,
        "",
        "| layer | NP dense | NP pruned | dense MSF edges | kept in pruned | random expectation "
        "| diagram unchanged |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, name in enumerate(ret.layer_names):
        lines.append(
            f"| {name} | {np_dense.layer_np_normalized[k]:.4f} | {np_pruned.layer_np_normalized[k]:.4f} | "
            f"{ret.n_msf[k]} | {ret.retention[k]:.3f} | {ret.expected[k]:.3f} | {ret.diagram_unchanged[k]} |"
        )
    lines += [
        "",
        f"Network NP (mean of normalised layer NPs): dense {np_dense.network_np:.4f}, pruned "
        f"{np_pruned.network_np:.4f}. Overall {ret.retention_total:.3f} of the dense MSF edges survive "
        f"pruning (sparsity {100 * ret.sparsity:.1f}%) against {ret.expected_total:.3f} expected under "
        "random pruning.",
        "",
        f"**Topology bound** for widths {widths}: η = {bound.eta:.2f}, so up to "
        f"{100 * bound.max_sparsity:.2f}% sparsity can keep every layer's zeroth-order diagram "
        f"(per layer: {', '.join(f'{100 * s:.2f}%' for s in bound.layer_max_sparsity)}). The pruned network "
        f"has {sum(actual.n_unmasked)} weights, of which {sum(actual.n_msf)} "
        f"({100 * actual.msf_over_unmasked:.1f}%) form its spanning forests.",
    ]
    levels = list(ctx.imp_levels or [])
    masks_seq = [_level_masks(r) for r in levels]
    if levels and all(m is not None for m in masks_seq):
        curve = msf_retention_curve(ctx.model, masks_seq)
        fig, ax = new_axes(None)
        curve.plot(ax)
        lines += [
            "",
            "MSF retention along the IMP levels (the dense network's forest, each level's mask applied to "
            "the dense weights):",
            "",
            _save(ctx, fig, "topology_retention.png"),
            "",
            "| sparsity (%) | MSF retained | random expectation |",
            "|---|---|---|",
        ]
        lines += [
            f"| {100 * s:.1f} | {r:.3f} | {e:.3f} |"
            for s, r, e in zip(curve.sparsity, curve.retention_total, curve.expected_total)
        ]
    return "\n".join(lines) + "\n"
