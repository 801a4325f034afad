"""Zeroth-order persistence of weight graphs: diagrams, spanning forests, neural persistence, the
prunability bound and topology-preserving pruning."""

from .graphs import AGGREGATES, LayerGraph, NetworkGraph, layer_graph, network_graph
from .measures import (
    NeuralPersistenceResult,
    RetentionCurveResult,
    RetentionResult,
    TopologyBoundResult,
    msf_protect,
    msf_retention,
    msf_retention_curve,
    network_forest_protect,
    neural_persistence,
    neural_persistence_layer_max,
    spanning_forest_protect,
    topology_bound,
)
from .persistence import (
    BACKENDS,
    NETWORK_METHODS,
    NetworkZerothDiagram,
    ZerothDiagram,
    spanning_forest_mask,
    zeroth_persistence,
)

__all__ = [
    "AGGREGATES",
    "BACKENDS",
    "NETWORK_METHODS",
    "LayerGraph",
    "NetworkGraph",
    "NetworkZerothDiagram",
    "NeuralPersistenceResult",
    "RetentionCurveResult",
    "RetentionResult",
    "TopologyBoundResult",
    "ZerothDiagram",
    "layer_graph",
    "msf_protect",
    "msf_retention",
    "msf_retention_curve",
    "network_forest_protect",
    "network_graph",
    "neural_persistence",
    "neural_persistence_layer_max",
    "spanning_forest_mask",
    "spanning_forest_protect",
    "topology_bound",
    "zeroth_persistence",
]
