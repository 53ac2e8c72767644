"""Structured pruning on the graph IR: dependency groups from use-def chains, importance,
selection to a FLOPs target, rewriting, and recovery without retraining.

Modules: atoms (union-find of channel atoms), trace (per-op propagation rules), groups
(units and groups), importance, select, apply, activations (calibration statistics), recovery,
prune (the pass and `prune_graph`).
"""

from passes.pruning.prune import PruningConfig, StructuredPruning, prune_graph

__all__ = ["PruningConfig", "StructuredPruning", "prune_graph"]
